//! Opting in a namespace that already runs an OpenTelemetry Collector and an application with its
//! own exporter settings leaves both as they were meant to run (issue 20): the collector keeps
//! its OTLP and health ports (the agent moves off them and the injected endpoint follows), the
//! application keeps its whole export unit, and the API server accepts the injected pod without
//! a warning of its own (duplicate ports or port names).
//!
//! kwok runs no containers, so "working" is asserted on what decides it: the admitted pod specs
//! (no two listeners on one port, env as the SDKs will read it) and the Deployments' readiness.

use super::Suite;
use crate::support::objects::{first_pod_of, from_json};
use crate::support::{wait, work_dir};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const AGENT: &str = tracelight::inject::AGENT_CONTAINER;
const POD_TIMEOUT: Duration = Duration::from_secs(60);

fn collector_template() -> Value {
    json!({
        "metadata": { "labels": { "app": "otel-collector" } },
        "spec": { "containers": [{
            "name": "collector",
            "image": "otel/opentelemetry-collector-contrib:0.112.0",
            "args": ["--config=/conf/collector.yaml"],
            "ports": [
                { "name": "otlp-grpc", "containerPort": 4317 },
                { "name": "otlp-http", "containerPort": 4318 },
                { "name": "health", "containerPort": 13133 },
            ],
            "readinessProbe": { "httpGet": { "path": "/", "port": 13133 } },
        }] },
    })
}

fn reporter_template() -> Value {
    json!({
        "metadata": { "labels": { "app": "reporter" } },
        "spec": { "containers": [{
            "name": "reporter",
            "image": "shop/reporter:1",
            "env": [
                { "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4317" },
                { "name": "OTEL_METRICS_EXPORTER", "value": "otlp" },
                { "name": "OTEL_LOGS_EXPORTER", "value": "otlp" },
            ],
        }] },
    })
}

fn deployment(name: &str, template: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": name } }, "template": template },
    })
}

pub async fn collector_and_self_exporting_app_keep_working(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("real workloads: an OpenTelemetry Collector and a self-exporting app in an opted-in namespace");
    let active = suite.active.clone().context("no active namespace (the injection step runs first)")?;
    let ns = active.namespace.as_str();
    let client = suite.cluster.client.clone();
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    for (name, template) in [("otel-collector", collector_template()), ("reporter", reporter_template())] {
        let object: Deployment = from_json(deployment(name, template))?;
        deployments.create(&PostParams::default(), &object).await.with_context(|| format!("creating {name}"))?;
    }

    let collector = first_pod_of(&client, ns, "otel-collector", POD_TIMEOUT).await?;
    let agent_ports = assert_ports_apart(&collector)?;
    ensure!(agent_ports == [14317, 14318, 23133], "collector pod: agent ports {agent_ports:?}");
    let app = container(&collector, "collector")?;
    let endpoint = env(app, "OTEL_EXPORTER_OTLP_ENDPOINT");
    ensure!(endpoint.as_deref() == Some("http://127.0.0.1:14318"), "collector: injected endpoint {endpoint:?}");
    suite.log.note("collector pod: agent on 14317/14318/23133, the collector keeps 4317/4318/13133, endpoint follows");

    let reporter = first_pod_of(&client, ns, "reporter", POD_TIMEOUT).await?;
    assert_ports_apart(&reporter)?;
    let app = container(&reporter, "reporter")?;
    for (key, want) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some("http://otel-collector:4317")),
        ("OTEL_METRICS_EXPORTER", Some("otlp")),
        ("OTEL_LOGS_EXPORTER", Some("otlp")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", None),
        ("OTEL_TRACES_SAMPLER", None),
    ] {
        let got = env(app, key);
        ensure!(got.as_deref() == want, "reporter: {key} is {got:?}, expected {want:?}");
    }
    let marked = reporter.annotations().get("tracelight.io/self-exported").cloned();
    ensure!(marked.as_deref() == Some("reporter"), "reporter: self-exported annotation {marked:?}");
    suite.log.note(
        "reporter pod: its export unit intact (no protocol, metrics and logs still exported), marked self-exported",
    );

    for name in ["otel-collector", "reporter"] {
        wait::until(&format!("Deployment {name} ready"), POD_TIMEOUT, || async {
            let ready = deployments.get(name).await?.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            ensure!(ready == 1, "{ready} ready");
            Ok(())
        })
        .await?;
    }
    suite.log.note("both Deployments Ready");

    // The pod as a user creates it, through the webhook, in a server-side dry run: the API
    // server's own warnings (duplicate ports, duplicate port names) would show on stderr.
    let mut pod =
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "collector-probe", "namespace": ns } });
    pod["spec"] = collector_template()["spec"].clone();
    let file = work_dir().join("collector-probe.json");
    std::fs::write(&file, serde_json::to_vec(&pod)?)?;
    let out = std::process::Command::new(suite.cluster.kubectl_path())
        .arg("--kubeconfig")
        .arg(&suite.cluster.kubeconfig)
        .args(["create", "--dry-run=server", "-o", "json", "-f"])
        .arg(&file)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "dry-run of the collector pod failed: {stderr}");
    let admitted: Pod = serde_json::from_slice(&out.stdout)?;
    assert_ports_apart(&admitted)?;
    let foreign: Vec<&str> = stderr.lines().filter(|l| l.contains("Warning") && !l.contains("tracelight:")).collect();
    ensure!(foreign.is_empty(), "the API server warned about the injected collector pod: {foreign:?}");
    suite.log.note(&format!("dry-run collector pod: accepted; warnings: {}", stderr.trim().replace('\n', " | ")));
    Ok(())
}

fn container<'a>(pod: &'a Pod, name: &str) -> anyhow::Result<&'a Container> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .with_context(|| format!("{}: no container {name}", pod.name_any()))
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env.iter().flatten().rev().find(|e| e.name == name).and_then(|e| e.value.clone())
}

/// The pod has the agent, and no two containers declare one port number or name; returns the
/// agent's ports.
fn assert_ports_apart(pod: &Pod) -> anyhow::Result<Vec<i32>> {
    let agent = container(pod, AGENT)?;
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        for p in c.ports.iter().flatten() {
            ensure!(numbers.insert(p.container_port), "{}: port {} declared twice", pod.name_any(), p.container_port);
            if let Some(n) = &p.name {
                ensure!(names.insert(n.clone()), "{}: port name {n} declared twice", pod.name_any());
            }
        }
    }
    Ok(agent.ports.iter().flatten().map(|p| p.container_port).collect())
}
