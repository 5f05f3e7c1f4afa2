//! The operator traces itself: run with the OTEL_* environment the chart renders for
//! `telemetry.otlpEndpoint`, it sends its reconciles and admissions as spans to a real
//! OpenTelemetry Collector. A policy with a long soak rolls out to a namespace holding a
//! Deployment; the collector must hold reconcile spans that say what the rollout decided (the
//! restart, as a child span) and why it waits (the soak, with the time left), and admission spans
//! for the pods created, injected or skipped with the reason. The last admissions happen just
//! before SIGTERM, well within the exporter's 5s batch delay: their spans arrive through the
//! flush at shutdown.

use crate::collector::{Collector, Span};
use crate::harness::{self, NAMESPACE, RELEASE};
use crate::support::objects::{create_pod, deployment, from_json, wait_injecting, ENABLED};
use crate::support::operator::{http_get, Operator};
use crate::support::{self, free_port, repo_root, wait, StepLog};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tracelight::api::TracingPolicy;

const POLICY: &str = "e2e-operator-traces";
/// Selects the test's namespace for [`POLICY`], besides the webhook's opt-in label.
const LABEL: &str = "e2e.tracelight.io/operator-traces";
/// The operator's pod name (downward API in the chart), expected as `k8s.pod.name`.
const POD_NAME: &str = "tracelight-e2e-self-traced";
/// Long enough that the rollout is still soaking when the test looks.
const SOAK: &str = "10m";
const SPANS_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_traces_its_reconciles_and_admissions() {
    let _lock = support::cluster_lock().expect("the e2e cluster lock");
    let log = StepLog::new();
    if let Err(e) = run(&log).await {
        panic!("operator traces e2e failed: {e:#}");
    }
}

async fn run(log: &StepLog) -> anyhow::Result<()> {
    let otelcol = crate::required_path("TRACELIGHT_OTELCOL", "run `make e2e-traces` (it builds the collector)")?;
    let mut suite = harness::setup::fresh_suite(log).await?;
    let dir = support::work_dir().join(format!("operator-spans-{}", support::suffix()));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    log.step(&format!("collector: {} on {grpc} (files in {})", otelcol.display(), dir.display()));
    let result = async {
        let mut collector = Collector::start(&otelcol, &dir, grpc).await?;
        let checked = traced(&mut suite, &collector, &format!("http://{grpc}")).await;
        collector.stop()?;
        checked
    }
    .await;
    // Teardown needs an operator to honour the policy's finalizer: a plain one, untraced.
    let restarted = match suite.operator {
        None => suite.start_operator().await,
        Some(_) => Ok(()),
    };
    let cleanup = harness::setup::teardown(&mut suite).await;
    match (result.and(restarted), cleanup) {
        (Ok(()), cleanup) => cleanup,
        (Err(e), cleanup) => Err(anyhow::anyhow!(
            "{e:#}\n(cleanup: {:?})\n\n{}",
            cleanup.err().map(|c| format!("{c:#}")),
            suite.operator_log_excerpt()
        )),
    }
}

/// The `OTEL_*` variables the chart gives the operator for these values.
fn chart_trace_env(suite: &harness::Suite, endpoint: &str) -> anyhow::Result<Vec<(String, String)>> {
    let chart = repo_root().join("charts/tracelight").display().to_string();
    let rendered = suite.cluster.helm([
        "template",
        RELEASE,
        &chart,
        "-n",
        NAMESPACE,
        "--show-only",
        "templates/deployment.yaml",
        "--set",
        "operator.enabled=true",
        "--set",
        &format!("telemetry.otlpEndpoint={endpoint}"),
        "--set",
        "telemetry.samplingRatio=1",
    ])?;
    let deployment: serde_json::Value = serde_yaml::from_str(&rendered).context("parsing the rendered Deployment")?;
    let env =
        deployment.pointer("/spec/template/spec/containers/0/env").context("no env in the rendered Deployment")?;
    let otel: Vec<(String, String)> = env
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .filter(|(name, _)| name.starts_with("OTEL_"))
        .collect();
    let names: BTreeSet<&str> = otel.iter().map(|(n, _)| n.as_str()).collect();
    let expected = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ];
    ensure!(expected.iter().all(|n| names.contains(n)), "the chart renders {otel:?}");
    let downward: Vec<&str> = env
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.pointer("/valueFrom/fieldRef/fieldPath").is_some())
        .filter_map(|e| e["name"].as_str())
        .collect();
    ensure!(downward.contains(&"POD_NAME") && downward.contains(&"POD_NAMESPACE"), "downward API env: {downward:?}");
    Ok(otel)
}

async fn traced(suite: &mut harness::Suite, collector: &Collector, endpoint: &str) -> anyhow::Result<()> {
    let log = suite.log.clone();
    let client = suite.cluster.client.clone();
    log.step(&format!("operator with the chart's telemetry env (telemetry.otlpEndpoint={endpoint})"));
    let mut env = chart_trace_env(suite, endpoint)?;
    log.note(&format!("env {env:?}"));
    env.push(("POD_NAME".into(), POD_NAME.into()));
    let log_path = support::work_dir().join(format!("{}-operator-self-traced.log", env!("CARGO_CRATE_NAME")));
    suite.operator_logs.push(log_path.clone());
    let operator = Operator::start_with_env(
        &suite.sa_kubeconfig,
        NAMESPACE,
        &suite.operator_args,
        suite.admin_port,
        log_path,
        &env,
    )?;
    suite.operator.insert(operator).wait_ready(Duration::from_secs(60)).await?;

    log.step(&format!("a Deployment, then policy {POLICY} (soak {SOAK}) rolling out to its namespace"));
    let ns = suite.namespaces.create("optrace", &[ENABLED, (LABEL, "on")]).await?;
    // Opted in but governed by no policy: its pods are skipped. Created now, so the webhook
    // knows it by the time its pod comes.
    let off = suite.namespaces.create("optrace-off", &[ENABLED]).await?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &from_json(deployment("web"))?)
        .await?;
    // The pod must exist before the policy does: created after the namespace is active, it would
    // be injected at creation and the rollout would have nothing to restart (seen under load).
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    wait::until("the Deployment's pod, before any policy", Duration::from_secs(60), || async {
        ensure!(!pods.list(&ListParams::default()).await?.items.is_empty(), "no pod yet");
        Ok(())
    })
    .await?;
    let policy: TracingPolicy = from_json(serde_json::json!({
        "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {LABEL: "on"}},
            "collector": {"endpoint": "http://127.0.0.1:4317", "protocol": "grpc"},
            "rollout": {"phases": [{"name": "only", "batchSize": 1, "soakDuration": SOAK, "healthDeadline": "60s"}]}
        }
    }))?;
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    harness::wait_active(&client, POLICY, &ns).await?;
    wait_injecting(&client, &ns, Duration::from_secs(30)).await?;

    log.step("the collector: reconcile spans say the rollout restarted web and now waits for the soak");
    let restart = format!("{ns}/Deployment/web");
    let spans = wait::until("reconcile spans of the soaking rollout", SPANS_DEADLINE, || async {
        let spans = collector.spans();
        check_reconciles(&spans, &ns, &restart)?;
        Ok(spans)
    })
    .await?;
    check_resource(&spans)?;
    let web = find(&spans, "admission", &[("namespace", &ns), ("decision", "injected")])
        .into_iter()
        .find(|s| s.attr("workload").is_some_and(|w| w.starts_with("ReplicaSet/web-")))
        .with_context(|| format!("no admission span for the restarted web pods: {}", describe(&spans, "admission")))?;
    log.note(&format!("restarted web pod admitted: {}", web.describe()));
    let (status, metrics) = http_get(suite.admin_port, "/metrics").await?;
    ensure!(status == 200, "GET /metrics: HTTP {status}");
    let exported = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tracelight_trace_spans_total{outcome=\"exported\"} "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .with_context(|| format!("no exported span count in /metrics:\n{metrics}"))?;
    ensure!(
        exported as usize >= spans.len(),
        "/metrics counts {exported} exported spans, the collector has {}",
        spans.len()
    );
    log.note(&format!("/metrics: {exported} spans exported"));

    log.step("pods created just before SIGTERM: injected, and skipped (namespace not governed)");
    create_pod(&client, &ns, "self-traced", &[]).await?;
    create_pod(&client, &off, "stray", &[]).await?;
    suite.stop_operator()?;
    wait::until("admission spans of self-traced and stray (flushed at shutdown)", Duration::from_secs(30), || async {
        let spans = collector.spans();
        let probe = find(&spans, "admission", &[("namespace", &ns), ("pod", "self-traced"), ("dry_run", "false")])
            .first()
            .copied()
            .with_context(|| format!("no span for self-traced: {}", describe(&spans, "admission")))?;
        ensure!(
            probe.attr("decision") == Some("injected") && probe.attr("reason") == Some("none"),
            "{}",
            probe.describe()
        );
        let bytes: u64 = probe.attr("patch_bytes").unwrap_or("0").parse()?;
        ensure!(bytes > 0, "self-traced injected with an empty patch: {}", probe.describe());
        let stray = find(&spans, "admission", &[("namespace", &off), ("pod", "stray"), ("dry_run", "false")])
            .first()
            .copied()
            .with_context(|| format!("no span for stray: {}", describe(&spans, "admission")))?;
        ensure!(stray.attr("decision") == Some("skipped"), "{}", stray.describe());
        ensure!(stray.attr("reason").is_some_and(|r| !r.is_empty() && r != "none"), "{}", stray.describe());
        ensure!(stray.attr("patch_bytes") == Some("0"), "{}", stray.describe());
        eprintln!("[traces]    {}\n[traces]    {}", probe.describe(), stray.describe());
        Ok(())
    })
    .await
}

/// Spans named `name` whose attributes include every pair of `attrs`.
fn find<'a>(spans: &'a [Span], name: &str, attrs: &[(&str, &str)]) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name && attrs.iter().all(|(k, v)| s.attr(k) == Some(v))).collect()
}

fn describe(spans: &[Span], name: &str) -> String {
    let named: Vec<String> = spans.iter().filter(|s| s.name == name).map(Span::describe).collect();
    format!("{} {name} span(s) of {}: {named:#?}", named.len(), spans.len())
}

/// The policy's reconciles: one that restarted `restart` (a child span), one waiting for that
/// batch, one waiting for the soak (with the time left); status patches and agent-object applies
/// as children.
fn check_reconciles(spans: &[Span], ns: &str, restart: &str) -> anyhow::Result<()> {
    let reconciles = find(spans, "reconcile", &[("policy", POLICY)]);
    ensure!(!reconciles.is_empty(), "no reconcile span for {POLICY}: {}", describe(spans, "reconcile"));
    for r in &reconciles {
        for field in ["generation", "phase_before", "result"] {
            ensure!(r.attr(field).is_some(), "reconcile span without {field}: {}", r.describe());
        }
        ensure!(r.scope == "tracelight", "scope {:?}", r.scope);
    }
    let soaking = reconciles
        .iter()
        .find(|r| r.attr("waiting") == Some("soak"))
        .with_context(|| format!("no reconcile waiting for the soak yet: {}", describe(spans, "reconcile")))?;
    ensure!(soaking.attr("phase_after") == Some("Soaking"), "{}", soaking.describe());
    let left: u64 = soaking.attr("soak_remaining_s").context("no soak_remaining_s")?.parse()?;
    ensure!(left > 0 && left <= 600, "soak_remaining_s {left}: {}", soaking.describe());
    ensure!(soaking.attr("decision").is_some_and(|d| d.contains("soaking")), "{}", soaking.describe());

    let in_flight = reconciles.iter().find(|r| r.attr("waiting") == Some("batch_in_flight"));
    ensure!(in_flight.is_some(), "no reconcile waited for the batch in flight: {}", describe(spans, "reconcile"));

    let ids: BTreeSet<&str> = reconciles.iter().map(|r| r.span_id.as_str()).collect();
    let child = |name: &str, attrs: &[(&str, &str)]| {
        find(spans, name, attrs).into_iter().any(|s| ids.contains(s.parent_span_id.as_str()))
    };
    ensure!(
        child("patch_workload", &[("action", "restart"), ("workload", restart)]),
        "no restart of {restart} under a reconcile: {}",
        describe(spans, "patch_workload")
    );
    ensure!(child("patch_status", &[]), "no status patch under a reconcile: {}", describe(spans, "patch_status"));
    ensure!(
        child("write_agent_objects", &[("namespace", ns)]),
        "no agent-object apply in {ns} under a reconcile: {}",
        describe(spans, "write_agent_objects")
    );
    let restarting = reconciles.iter().find(|r| r.attr("restarts") == Some("1"));
    ensure!(restarting.is_some(), "no reconcile recorded its restart: {}", describe(spans, "reconcile"));
    Ok(())
}

/// Every span of the operator says who sent it.
fn check_resource(spans: &[Span]) -> anyhow::Result<()> {
    let expected = [
        ("service.name", "tracelight-operator"),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("k8s.pod.name", POD_NAME),
        ("k8s.namespace.name", NAMESPACE),
    ];
    for span in spans {
        for (key, value) in expected {
            ensure!(
                span.resource.get(key).map(String::as_str) == Some(value),
                "{key} of {}: {:?}",
                span.describe(),
                span.resource
            );
        }
    }
    Ok(())
}
