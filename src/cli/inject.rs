//! `tracelight inject`: prints manifests with their pod templates injected exactly as the
//! webhook would (for previews and GitOps pipelines), using the same pure injector.

use crate::api::{validate::validate, TracingPolicy};
use crate::inject::{inject, InjectOptions, Outcome};
use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// TracingPolicy manifest to inject with.
    #[arg(long)]
    pub policy: PathBuf,
    /// Manifests to inject (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Namespace for objects that do not name one.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Inject the agent as a native sidecar (Kubernetes >= 1.29); `false` for older clusters.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    /// The agent image the operator injects when a policy names none (its `--agent-image`): part
    /// of the manifest hash.
    #[arg(long, default_value_t = crate::inject::shipped_agent_image())]
    pub agent_image: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectCliError {
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
}

pub fn run(args: &InjectArgs) -> anyhow::Result<()> {
    let policy = load_policy(&args.policy)?;
    let input = read_input(&args.file)?;
    let options = InjectOptions {
        native_sidecar: args.native_sidecar,
        images: crate::inject::DefaultImages { agent: args.agent_image.clone(), ..Default::default() },
        ..Default::default()
    };
    let output = inject_manifests(&input, &policy, &options, &args.namespace, &mut std::io::stderr())?;
    std::io::stdout().write_all(output.as_bytes())?;
    Ok(())
}

pub(crate) fn load_policy(path: &PathBuf) -> anyhow::Result<TracingPolicy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
    let value: Value = serde_yaml::from_str(&text).with_context(|| format!("{}: not valid YAML", path.display()))?;
    if value.get("kind").and_then(Value::as_str) != Some("TracingPolicy") {
        bail!("{}: expected kind TracingPolicy", path.display());
    }
    let policy: TracingPolicy =
        serde_json::from_value(value).with_context(|| format!("{}: invalid TracingPolicy", path.display()))?;
    validate(&policy.spec).with_context(|| format!("{}", path.display()))?;
    Ok(policy)
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Injects every pod and pod template in the multi-document `input`; other documents pass
/// through unchanged. Warnings go to `warn`, prefixed with the document number (1-based).
pub fn inject_manifests(
    input: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
    default_namespace: &str,
    warn: &mut impl Write,
) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        let doc_err = |message: String| InjectCliError::Document { index, message };
        let yaml = serde_yaml::Value::deserialize(document).map_err(|e| doc_err(format!("invalid YAML: {e}")))?;
        if yaml.is_null() {
            continue;
        }
        let mut value: Value = serde_json::to_value(&yaml).map_err(|e| doc_err(format!("unsupported YAML: {e}")))?;
        for warning in inject_document(&mut value, policy, options, default_namespace).map_err(doc_err)? {
            writeln!(warn, "warning: document {index}: {warning}")?;
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

/// Where a kind keeps its pod template, as a JSON pointer.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn inject_document(
    doc: &mut Value,
    policy: &TracingPolicy,
    options: &InjectOptions,
    default_namespace: &str,
) -> Result<Vec<String>, String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace).to_string();
    if kind == "List" {
        let mut warnings = Vec::new();
        for item in doc.get_mut("items").and_then(Value::as_array_mut).into_iter().flatten() {
            warnings.extend(inject_document(item, policy, options, default_namespace)?);
        }
        return Ok(warnings);
    }
    if kind == "Pod" {
        let pod: Pod = serde_json::from_value(doc.clone()).map_err(|e| format!("invalid Pod {name:?}: {e}"))?;
        let (injected, warnings) = inject_pod(&pod, &namespace, policy, options)?;
        *doc = serde_json::to_value(injected).map_err(|e| e.to_string())?;
        return Ok(warnings);
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(Vec::new()); // not a workload: passes through unchanged
    };
    let Some(template) = doc.pointer_mut(pointer) else {
        return Err(format!("{kind} {name:?} has no {pointer}"));
    };
    // A pod made from the template, owned by the workload, so the service name and the
    // k8s.<kind>.name attribute are derived as they will be for the real pods.
    let mut pod_value = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(Value::Null)});
    pod_value["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "", "controller": true}]);
    let pod: Pod =
        serde_json::from_value(pod_value).map_err(|e| format!("invalid pod template in {kind} {name:?}: {e}"))?;
    let (mut injected, warnings) = inject_pod(&pod, &namespace, policy, options)?;
    injected.metadata.owner_references = None;
    let injected = serde_json::to_value(injected).map_err(|e| e.to_string())?;
    template["metadata"] = injected["metadata"].clone();
    template["spec"] = injected["spec"].clone();
    Ok(warnings)
}

fn inject_pod(
    pod: &Pod,
    namespace: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
) -> Result<(Pod, Vec<String>), String> {
    match inject(pod, namespace, policy, options).map_err(|e| e.to_string())? {
        Outcome::Injected(m) => Ok((m.pod, m.warnings)),
        Outcome::Skipped(reason) => Ok((pod.clone(), vec![format!("not injected: {}", reason.as_str())])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TracingPolicy {
        serde_yaml::from_str(include_str!("../../config/samples/tracingpolicy.yaml")).unwrap()
    }

    fn run(input: &str) -> (Vec<Value>, String) {
        let mut warnings = Vec::new();
        let out = inject_manifests(input, &policy(), &InjectOptions::default(), "default", &mut warnings).unwrap();
        let docs = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
            .collect();
        (docs, String::from_utf8(warnings).unwrap())
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: web:1}]\n";

    #[test]
    fn injects_workload_templates_and_passes_other_kinds_through() {
        let input = format!("{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n");
        let (docs, warnings) = run(&input);
        assert_eq!(docs.len(), 2, "empty documents are dropped, others kept in order");
        let template = &docs[0]["spec"]["template"];
        assert_eq!(template["metadata"]["labels"]["tracelight.io/injected"], "true");
        assert_eq!(template["spec"]["initContainers"][0]["name"], "tracelight-agent");
        assert!(template["metadata"].get("ownerReferences").is_none());
        let env = template["spec"]["containers"][0]["env"].as_array().unwrap();
        let attrs = env.iter().find(|e| e["name"] == "OTEL_RESOURCE_ATTRIBUTES").unwrap();
        let attrs: Vec<&str> = attrs["value"].as_str().unwrap().split(',').collect();
        assert!(attrs.contains(&"k8s.deployment.name=web"), "{attrs:?}");
        assert!(attrs.contains(&"k8s.namespace.name=shop"), "{attrs:?}");
        assert_eq!(docs[1]["kind"], "Service");
        assert_eq!(docs[1]["spec"]["ports"][0]["port"], 80);
        assert!(warnings.is_empty(), "{warnings}");
    }

    #[test]
    fn cronjob_templates_are_found() {
        let input = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '0 1 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{name: job, image: job:1}]\n";
        let (docs, _) = run(input);
        let env = docs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        assert!(env.iter().any(|e| e["name"] == "OTEL_SERVICE_NAME" && e["value"] == "nightly"));
    }

    #[test]
    fn skipped_pods_are_reported_and_unchanged() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {tracelight.io/inject: 'false'}}\nspec: {containers: [{name: c, image: i}]}\n";
        let (docs, warnings) = run(input);
        assert!(docs[0]["spec"].get("initContainers").is_none());
        assert_eq!(warnings.trim(), "warning: document 1: not injected: opted_out");
    }

    #[test]
    fn invalid_documents_name_the_document() {
        let mut sink = Vec::new();
        let err = inject_manifests(
            "kind: Service\n---\nkind: [unclosed\n",
            &policy(),
            &InjectOptions::default(),
            "d",
            &mut sink,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("document 2: invalid YAML"), "{err}");
        let err = inject_manifests(
            "kind: Pod\nspec: {containers: 3}\n",
            &policy(),
            &InjectOptions::default(),
            "d",
            &mut sink,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("document 1: invalid Pod"), "{err}");
    }

    #[test]
    fn invalid_policy_names_the_field() {
        let dir = std::env::temp_dir().join(format!("tl-inject-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "apiVersion: tracelight.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: x}\nspec:\n  collector: {endpoint: 'collector:4317', protocol: grpc}\n").unwrap();
        let err = load_policy(&path).unwrap_err();
        assert!(format!("{err:#}").contains("spec.collector.endpoint"), "{err:#}");
        std::fs::write(&path, "apiVersion: tracelight.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: x}\nspec:\n  collector: {endpoint: 'http://c:4317', protocol: udp}\n").unwrap();
        let err = load_policy(&path).unwrap_err();
        assert!(format!("{err:#}").contains("unknown variant `udp`"), "{err:#}");
        std::fs::remove_dir_all(dir).ok();
    }
}
