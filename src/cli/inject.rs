//! `tracelight inject`: prints manifests with their pod templates injected exactly as the
//! webhook would (for previews and GitOps pipelines), using the same pure injector.
//!
//! Manifests are read as kubectl reads them: kubectl converts YAML to JSON with YAML 1.1 scalar
//! rules (sigs.k8s.io/yaml on go-yaml v2), so an unquoted `defaultMode: 0400` is the octal 256,
//! `0o400` and `0x1F` are numbers too, and `yes`/`no`/`on`/`off` are booleans; quoted scalars
//! stay strings (and the API server then rejects a string where it wants a number, as here).
//! Every document the injection does not change is written back byte for byte, comments and
//! all; a changed document is re-serialized. ConfigMaps and Secrets in the same input are the
//! `envFrom` sources the injector can see, so their keys count as the containers' own.

use crate::api::{validate::validate, TracingPolicy};
use crate::inject::{inject_with_sources, EnvSources, InjectOptions, Outcome, SourceKind};
use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use std::collections::BTreeMap;
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
/// through byte for byte. Warnings go to `warn`, prefixed with the document number (1-based).
pub fn inject_manifests(
    input: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
    default_namespace: &str,
    warn: &mut impl Write,
) -> anyhow::Result<String> {
    let documents = split_documents(input);
    let mut parsed = Vec::with_capacity(documents.len());
    for (i, document) in documents.iter().enumerate() {
        let index = i + 1;
        let value = parse_document(document.text).map_err(|message| InjectCliError::Document { index, message })?;
        parsed.push(value);
    }
    let sources = env_sources(parsed.iter().flatten(), default_namespace);
    let no_sources = EnvSources::default();
    let mut out = String::with_capacity(input.len() + input.len() / 2);
    for (i, (document, value)) in documents.iter().zip(parsed).enumerate() {
        let index = i + 1;
        let Some(original) = value else {
            out.push_str(document.text);
            continue;
        };
        let mut value = original.clone();
        let namespace = namespace_of(&value, default_namespace);
        let sources = sources.get(&namespace).unwrap_or(&no_sources);
        let warnings = inject_document(&mut value, policy, options, default_namespace, sources)
            .map_err(|message| InjectCliError::Document { index, message })?;
        for warning in warnings {
            writeln!(warn, "warning: document {index}: {warning}")?;
        }
        if value == original {
            out.push_str(document.text);
        } else {
            if document.has_marker {
                out.push_str("---\n");
            }
            out.push_str(&to_yaml(&value).map_err(|e| InjectCliError::Document { index, message: e.to_string() })?);
        }
    }
    Ok(out)
}

/// A changed document as YAML that kubectl reads back as the same JSON: every string that YAML
/// 1.1 would take for something else (`yes`, `on`, `0400`, `1_000`, `~`...) is quoted.
/// (serde_yaml writes such strings plain, and kubectl would read `FEATURE: yes` as a boolean.)
fn to_yaml(value: &Value) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(value)
}

/// One document of a multi-document YAML text, with its `---` line when it has one.
struct Document<'a> {
    text: &'a str,
    has_marker: bool,
}

/// Splits at `---` lines (a document start marker at column 0). A leading part holding nothing
/// but blank or comment lines is kept with the first document, as the YAML parser does.
fn split_documents(input: &str) -> Vec<Document<'_>> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        if offset > 0 && is_marker(line) {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(input.len());
    let mut documents: Vec<Document> = starts
        .windows(2)
        .map(|w| {
            let text = &input[w[0]..w[1]];
            Document { text, has_marker: text.split_inclusive('\n').next().is_some_and(is_marker) }
        })
        .collect();
    if documents.len() > 1 && !documents[0].has_marker && !has_content(documents[0].text) {
        let second = documents.remove(1);
        let end = second.text.len() + documents[0].text.len();
        documents[0] = Document { text: &input[..end], has_marker: false };
        // The comments before the first marker now belong to a document starting with them.
    }
    documents.retain(|d| !d.text.is_empty());
    documents
}

fn is_marker(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']))
}

/// Whether a document has anything but markers, blank lines and comments.
fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.strip_prefix("---").filter(|_| is_marker(line)).unwrap_or(line).trim();
        !line.is_empty() && !line.starts_with('#') && line != "..."
    })
}

/// The document as JSON, read with YAML 1.1 scalar rules; `None` for an empty document.
fn parse_document(text: &str) -> Result<Option<Value>, String> {
    if !has_content(text) {
        return Ok(None);
    }
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    let value: Value = serde_saphyr::from_str_with_options(text, options).map_err(|e| format!("invalid YAML: {e}"))?;
    Ok((!value.is_null()).then_some(value))
}

fn namespace_of(doc: &Value, default_namespace: &str) -> String {
    doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace).to_string()
}

/// The ConfigMaps and Secrets of the input, by namespace: the `envFrom` sources the injector can
/// see. Secret `data` is base64; a value that is not UTF-8 is known by its key only.
fn env_sources<'a>(docs: impl Iterator<Item = &'a Value>, default_namespace: &str) -> BTreeMap<String, EnvSources> {
    use base64::Engine;
    let mut by_namespace: BTreeMap<String, EnvSources> = BTreeMap::new();
    for doc in docs {
        let kind = match doc.get("kind").and_then(Value::as_str) {
            Some("ConfigMap") => SourceKind::ConfigMap,
            Some("Secret") => SourceKind::Secret,
            _ => continue,
        };
        let Some(name) = doc.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let mut data: BTreeMap<String, Option<String>> = BTreeMap::new();
        let entries = |key: &str| doc.get(key).and_then(Value::as_object).into_iter().flatten();
        for (k, v) in entries("data") {
            let text = v.as_str().map(String::from);
            let value = match kind {
                SourceKind::ConfigMap => text,
                SourceKind::Secret => text
                    .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t.trim()).ok())
                    .and_then(|bytes| String::from_utf8(bytes).ok()),
            };
            data.insert(k.clone(), value);
        }
        for (k, _) in entries("binaryData") {
            data.insert(k.clone(), None);
        }
        for (k, v) in entries("stringData") {
            data.insert(k.clone(), v.as_str().map(String::from));
        }
        by_namespace.entry(namespace_of(doc, default_namespace)).or_default().insert(kind, name, data);
    }
    by_namespace
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
    sources: &EnvSources,
) -> Result<Vec<String>, String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace).to_string();
    if kind == "List" {
        let mut warnings = Vec::new();
        for item in doc.get_mut("items").and_then(Value::as_array_mut).into_iter().flatten() {
            warnings.extend(inject_document(item, policy, options, default_namespace, sources)?);
        }
        return Ok(warnings);
    }
    if kind == "Pod" {
        let pod: Pod = serde_json::from_value(doc.clone()).map_err(|e| format!("invalid Pod {name:?}: {e}"))?;
        let (injected, warnings) = inject_pod(&pod, &namespace, policy, options, sources)?;
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
    let (mut injected, warnings) = inject_pod(&pod, &namespace, policy, options, sources)?;
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
    sources: &EnvSources,
) -> Result<(Pod, Vec<String>), String> {
    match inject_with_sources(pod, namespace, policy, options, sources).map_err(|e| e.to_string())? {
        Outcome::Injected(m) => match m.pod {
            Some(injected) => Ok((injected, m.warnings)),
            None => Err("the injector returned no pod".to_string()),
        },
        Outcome::Skipped(reason) => Ok((pod.clone(), vec![format!("not injected: {}", reason.as_str())])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn policy() -> TracingPolicy {
        serde_yaml::from_str(include_str!("../../config/samples/tracingpolicy.yaml")).unwrap()
    }

    fn run(input: &str) -> (Vec<Value>, String) {
        let mut warnings = Vec::new();
        let out = inject_manifests(input, &policy(), &InjectOptions::default(), "default", &mut warnings).unwrap();
        let docs = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        (docs, String::from_utf8(warnings).unwrap())
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: web:1}]\n";

    #[test]
    fn injects_workload_templates_and_passes_other_kinds_through() {
        let input = format!("{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n");
        let (docs, warnings) = run(&input);
        assert_eq!(docs.len(), 2, "documents kept in order");
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

    fn output(input: &str) -> String {
        inject_manifests(input, &policy(), &InjectOptions::default(), "default", &mut Vec::new()).unwrap()
    }

    #[test]
    fn yaml_1_1_octal_is_read_as_kubectl_reads_it() {
        let input = format!(
            "{DEPLOYMENT}      volumes:\n        - name: key\n          secret: {{secretName: key, defaultMode: 0400}}\n        - name: cfg\n          configMap: {{name: cfg, defaultMode: 0o644}}\n"
        );
        let (docs, _) = run(&input);
        let volumes = docs[0]["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes[0]["secret"]["defaultMode"], 256);
        assert_eq!(volumes[1]["configMap"]["defaultMode"], 420);
        // Quoted, it is a string, which the API server refuses for an integer field, as here.
        let quoted = input.replace("0400", "'0400'");
        let err = inject_manifests(&quoted, &policy(), &InjectOptions::default(), "d", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("expected i32"), "{err}");
    }

    #[test]
    fn yaml_1_1_booleans_are_read_where_a_bool_is_expected() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostNetwork: yes\n  containers: [{name: c, image: i, tty: on, stdin: no}]\n";
        let (docs, _) = run(input);
        assert_eq!(docs[0]["spec"]["hostNetwork"], true);
        assert_eq!(docs[0]["spec"]["containers"][0]["tty"], true);
        assert_eq!(docs[0]["spec"]["containers"][0]["stdin"], false);
    }

    #[test]
    fn changed_documents_quote_what_yaml_1_1_would_misread() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {mode: '0400', flag: 'yes'}}\nspec:\n  containers:\n    - name: c\n      image: i\n      env: [{name: FEATURE, value: 'on'}, {name: COUNT, value: '1_000'}, {name: EMPTY, value: '~'}]\n";
        let out = output(input);
        let doc = parse_document(&out).unwrap().unwrap();
        assert_eq!(doc["metadata"]["annotations"]["mode"], "0400", "{out}");
        assert_eq!(doc["metadata"]["annotations"]["flag"], "yes", "{out}");
        let env = doc["spec"]["containers"][0]["env"].as_array().unwrap();
        let value = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
        assert_eq!(value("FEATURE"), Some(json!("on")), "{out}");
        assert_eq!(value("COUNT"), Some(json!("1_000")), "{out}");
        assert_eq!(value("EMPTY"), Some(json!("~")), "{out}");
        assert!(out.contains("tracelight-agent"), "the pod is injected: {out}");
    }

    #[test]
    fn unchanged_documents_are_kept_byte_for_byte() {
        let service = "# the shop's front door\napiVersion: v1\nkind: Service\nmetadata:   {name: web}   # odd spacing kept\nspec:\n  ports: [{port: 0x50, targetPort: \"8080\"}]\n";
        let opted_out = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {tracelight.io/inject: 'false'}}\nspec: {containers: [{name: c, image: i}]}   # keep me\n";
        let input = format!("{service}---\n{DEPLOYMENT}{opted_out}---\n# trailing comment only\n");
        let out = output(&input);
        assert!(out.starts_with(service), "{out}");
        assert!(out.ends_with(&format!("{opted_out}---\n# trailing comment only\n")), "{out}");
        assert!(out.contains("tracelight-agent"), "the Deployment is injected: {out}");
    }

    #[test]
    fn config_maps_and_secrets_of_the_input_are_visible_env_from_sources() {
        let input = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: otel, namespace: shop}\ndata: {OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317', OTEL_SERVICE_NAME: web-cm}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: shop}\ndata: {OTEL_EXPORTER_OTLP_HEADERS: YXBpLWtleT0x}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n        - name: web\n          image: web:1\n          envFrom: [{configMapRef: {name: otel}}, {secretRef: {name: creds}}]\n";
        let (docs, _) = run(input);
        let template = &docs[2]["spec"]["template"];
        assert_eq!(template["metadata"]["annotations"]["tracelight.io/self-exported"], "web");
        assert!(template["metadata"]["annotations"].get("tracelight.io/env-from-unseen").is_none());
        let env = template["spec"]["containers"][0]["env"].as_array().unwrap();
        for name in ["OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            assert!(!env.iter().any(|e| e["name"] == name), "{name} injected over the ConfigMap's");
        }
        // The same Deployment without its sources in the input: they are unseen.
        let alone = &input[input.rfind("---\n").unwrap()..];
        let (docs, _) = run(alone);
        assert_eq!(docs[0]["spec"]["template"]["metadata"]["annotations"]["tracelight.io/env-from-unseen"], "web");
    }
}
