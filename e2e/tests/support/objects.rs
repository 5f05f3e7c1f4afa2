//! Test objects (namespaces, workloads, pods) and what an injected or untouched pod looks like.

use super::cluster::Cluster;
use super::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tracelight::api::TracingPolicy;
use tracelight::inject::{expected_manifest_hash, InjectOptions};

/// Label on every namespace the suite creates, so a crashed run's leftovers can be found.
pub const SUITE_LABEL: &str = "e2e.tracelight.io/suite";
/// Namespace label that opts in (the default policy selector and the chart's webhook selector).
pub const ENABLED: (&str, &str) = ("tracelight.io/enabled", "true");
pub const AGENT: &str = "tracelight-agent";
/// Image of every test container; kwok never pulls it.
pub const IMAGE: &str = "registry.example/e2e/app:1";

/// The namespaces a run creates; all deleted by [`Namespaces::delete_all`] (waiting) or, if the
/// suite panics first, on drop (without waiting).
pub struct Namespaces {
    cluster: Cluster,
    created: Vec<String>,
}

impl Namespaces {
    pub fn new(cluster: &Cluster) -> Self {
        Namespaces { cluster: cluster.clone(), created: Vec::new() }
    }

    /// Creates namespace `e2e-<prefix>-<random>` with `labels`; returns its name.
    pub async fn create(&mut self, prefix: &str, labels: &[(&str, &str)]) -> anyhow::Result<String> {
        let name = format!("e2e-{prefix}-{}", super::suffix());
        let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
        all.insert(SUITE_LABEL, "true");
        let ns: Namespace = from_json(json!({"metadata": {"name": name, "labels": all}}))?;
        Api::<Namespace>::all(self.cluster.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        self.created.push(name.clone());
        Ok(name)
    }

    /// Deletes every namespace this run created and waits until they are gone.
    pub async fn delete_all(&mut self) -> anyhow::Result<()> {
        let names = std::mem::take(&mut self.created);
        delete_namespaces(&self.cluster.client, &names).await
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if !self.created.is_empty() {
            let mut args = vec!["delete".to_string(), "namespace".into(), "--wait=false".into()];
            args.extend(self.created.iter().cloned());
            if let Err(e) = self.cluster.kubectl(&args) {
                eprintln!("[e2e] deleting namespaces {:?}: {e:#}", self.created);
            }
        }
    }
}

/// Deletes namespaces `names` and waits until they are gone.
pub async fn delete_namespaces(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
        }
    }
    for name in names {
        wait::until(&format!("namespace {name} to be deleted"), Duration::from_secs(90), || async {
            match api.get_opt(name).await? {
                None => Ok(()),
                Some(ns) => anyhow::bail!("still there, phase {:?}", ns.status.and_then(|s| s.phase)),
            }
        })
        .await?;
    }
    Ok(())
}

pub fn from_json<T: DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).context("building a test object")
}

/// A pod template for workload `app`: one container, fast deletion.
pub fn template(app: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels: BTreeMap<&str, &str> = extra_labels.iter().copied().collect();
    labels.insert("app", app);
    json!({
        "metadata": {"labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": IMAGE}]
        }
    })
}

pub fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template(name, &[])}
    })
}

pub fn statefulset(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                 "template": template(name, &[])}
    })
}

fn job_template(app: &str) -> Value {
    let mut t = template(app, &[]);
    t["spec"]["restartPolicy"] = json!("Never");
    t
}

pub fn job(name: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": job_template(name)}
    })
}

pub fn cronjob(name: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": job_template(name)}}
        }
    })
}

/// A bare pod named `name` with label `app=name` plus `labels`.
pub fn pod(name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Pod> {
    let mut p = template(name, labels);
    p["metadata"]["name"] = json!(name);
    from_json(p)
}

/// Creates a bare pod in `ns` and returns it as admitted (after every webhook).
pub async fn create_pod(client: &Client, ns: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod(name, labels)?)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))
}

/// Waits for at least one pod labelled `app=<app>` in `ns` and returns the first one.
pub async fn first_pod_of(client: &Client, ns: &str, app: &str, timeout: Duration) -> anyhow::Result<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={app}"));
    wait::until(&format!("a pod of {ns}/{app}"), timeout, || async {
        let pods = api.list(&lp).await?;
        pods.items.into_iter().next().with_context(|| format!("no pod labelled app={app} yet"))
    })
    .await
}

/// Environment of the pod's first regular container, literal values only.
pub fn app_env(pod: &Pod) -> BTreeMap<String, String> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .first()
        .and_then(|c| c.env.as_ref())
        .map(|env| env.iter().filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v))).collect())
        .unwrap_or_default()
}

fn init_container_names(pod: &Pod) -> Vec<String> {
    let init = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref());
    init.map(|cs| cs.iter().map(|c| c.name.clone()).collect()).unwrap_or_default()
}

/// The injector settings of the operator the suites run (the chart's flags): agents report to
/// the chart's webhook Service.
pub fn operator_inject_options() -> InjectOptions {
    let url =
        format!("https://tracelight-webhook.tracelight-system.svc:443{}", tracelight_contract::report::REPORT_PATH);
    InjectOptions { report_url: Some(url), ..InjectOptions::default() }
}

/// Asserts that `pod` was injected by `policy` (as it is in the cluster), for service `service`.
/// The manifest hash must be the policy status' one or, while the controller does not publish
/// it, the one the injector computes for this pod and policy.
pub fn assert_injected(pod: &Pod, service: &str, policy: &TracingPolicy) -> anyhow::Result<()> {
    assert_injected_with(pod, service, policy, &operator_inject_options())
}

/// [`assert_injected`] by an operator with the injector settings `options`.
pub fn assert_injected_with(
    pod: &Pod,
    service: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
) -> anyhow::Result<()> {
    let manifest_hash = policy
        .status
        .as_ref()
        .and_then(|s| s.manifest_hash.clone())
        .or_else(|| expected_manifest_hash(pod, policy, options))
        .context("the injector would not inject this pod at all")?;
    let policy = policy.name_any();
    let policy = policy.as_str();
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let agent = init.first().with_context(|| format!("{name}: no init containers, so no agent sidecar"))?;
    ensure!(agent.name == AGENT, "{name}: first init container is {:?}, not {AGENT}", agent.name);
    ensure!(
        agent.restart_policy.as_deref() == Some("Always"),
        "{name}: the agent is not a native sidecar (restartPolicy {:?})",
        agent.restart_policy
    );
    ensure!(
        agent.command.as_deref() == Some(&[tracelight::inject::AGENT_BINARY.to_string()][..]),
        "{name}: agent container does not run the agent binary: {:?}",
        agent.command
    );
    let env = app_env(pod);
    let expect = |key: &str, want: &str| -> anyhow::Result<()> {
        let got = env.get(key).map(String::as_str);
        ensure!(got == Some(want), "{name}: env {key} is {got:?}, expected {want:?} (env: {env:?})");
        Ok(())
    };
    expect("OTEL_SERVICE_NAME", service)?;
    expect("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")?;
    let attributes = env.get("OTEL_RESOURCE_ATTRIBUTES").map(String::as_str).unwrap_or_default();
    let ns_attr = format!("k8s.namespace.name={}", pod.namespace().unwrap_or_default());
    ensure!(
        attributes.split(',').any(|a| a == ns_attr),
        "{name}: OTEL_RESOURCE_ATTRIBUTES lacks {ns_attr}: {attributes}"
    );
    let labels = pod.labels();
    ensure!(
        labels.get("tracelight.io/injected").map(String::as_str) == Some("true"),
        "{name}: no tracelight.io/injected=true label: {labels:?}"
    );
    let annotations = pod.annotations();
    let got_policy = annotations.get("tracelight.io/policy").map(String::as_str);
    ensure!(got_policy == Some(policy), "{name}: tracelight.io/policy is {got_policy:?}, expected {policy:?}");
    let got_hash = annotations.get("tracelight.io/manifest-hash").map(String::as_str);
    ensure!(
        got_hash == Some(manifest_hash.as_str()),
        "{name}: tracelight.io/manifest-hash is {got_hash:?}, expected {manifest_hash:?}"
    );
    Ok(())
}

/// Asserts that `pod` carries nothing of Tracelight's.
pub fn assert_untouched(pod: &Pod) -> anyhow::Result<()> {
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let init = init_container_names(pod);
    ensure!(!init.iter().any(|c| c == AGENT), "{name}: has the agent sidecar (init containers {init:?})");
    let containers: Vec<&str> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.as_str())).collect();
    ensure!(!containers.contains(&AGENT), "{name}: has the agent container ({containers:?})");
    let otel: Vec<String> = app_env(pod).into_keys().filter(|k| k.starts_with("OTEL_")).collect();
    ensure!(otel.is_empty(), "{name}: has OTEL env {otel:?}");
    ensure!(!pod.labels().contains_key("tracelight.io/injected"), "{name}: has the injected label");
    ensure!(!pod.annotations().contains_key("tracelight.io/policy"), "{name}: has the policy annotation");
    Ok(())
}

/// Waits until the webhook injects pods in `ns`, probing with server-side dry-run creations
/// (which run the admission webhooks but store nothing). The controller marks a namespace
/// Active in the policy status; the webhook learns it through its watch a moment later.
pub async fn wait_injecting(client: &Client, ns: &str, timeout: Duration) -> anyhow::Result<()> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    wait::until(&format!("the webhook to inject pods in {ns} (dry-run probe)"), timeout, || async {
        let probe = api.create(&dry_run, &pod("probe", &[])?).await?;
        ensure!(probe.labels().get("tracelight.io/injected").is_some_and(|v| v == "true"), "probe pod not injected");
        Ok(())
    })
    .await
}
