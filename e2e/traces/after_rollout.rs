//! After the rollout, with real agents (issue 18): a workload rolled out by a phase with a soak,
//! under a steady load generated here, gets a baseline in the policy status that matches that
//! load; once the load stops, the scheduled review flags it as gone silent.
//!
//! The workload (the shop's Rust inventory service) exists before its policy, so the rollout
//! restarts it into an injected pod; that pod runs on this host, its agent reports to the
//! operator, and a load of [`RPS`] requests per second runs from as soon as it is ready until
//! the baseline is recorded. The baseline must show:
//! - requests per second within 10% of the rate the generator achieved (the agents count before
//!   sampling; the policy keeps only a quarter of the traces, so a count after sampling fails);
//! - no errors (every request answered 200);
//! - p50 within the interpolation of the agent's buckets (a factor of 2.5) of the true p50 of the
//!   server spans the collector received, p99 within a factor of 10 of theirs: durations in the
//!   right order of magnitude, measured by something other than the agent.
//!
//! Then the load stops. With `spec.review.interval` at [`REVIEW`], the review that follows one
//! interval of silence must raise the condition `Regression` (reason `WentSilent`) naming the
//! workload: within two intervals of the last request (one of silence, one until that review),
//! plus the reporting delays.

use super::{http_get, run_shop, Shop, SHOP_LABEL};
use crate::collector::{Collector, KIND_SERVER};
use crate::runner::images::Images;
use crate::runner::net::Network;
use crate::shop;
use crate::support::objects::{assert_untouched, from_json, ENABLED};
use crate::support::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracelight::api::{FindingKind, TracingPolicy, WorkloadBaseline};
use tracelight::inject::AGENT_CONTAINER;

pub const POLICY_BASELINE: &str = "e2e-traces-baseline";
const WORKLOAD: &str = "inventory";
/// Requests per second the generator sends.
const RPS: u64 = 8;
/// The soak (and so the baseline's window). Agents report every 30 s: a longer window keeps the
/// few seconds between the agent's first report and the first request small against it.
const SOAK: &str = "90s";
/// The review interval (the schedule; silence is measured against it).
const REVIEW: Duration = Duration::from_secs(30);

/// What the load generator did.
struct Load {
    sent: u64,
    failed: Vec<String>,
    elapsed: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Steady load on `GET /stock` at [`RPS`] until `stop`.
fn start_load(ip: Ipv4Addr, port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Load> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RPS));
        let (mut sent, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Acquire) {
            tick.tick().await;
            sent += 1;
            match http_get(ip, port, "/stock?sku=book").await {
                Ok((200, _)) => {}
                other => failed.push(format!("{other:?}")),
            }
        }
        Load { sent, failed, elapsed: started.elapsed() }
    })
}

/// Deploys the workload, has its policy roll it out, runs it under load, checks the baseline
/// and the review. Returns the running pod (stopped with the others at the end).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    suite: &mut crate::harness::Suite,
    network: &mut Network,
    images: &Images,
    dir: &Path,
    extra_hosts: &[(Ipv4Addr, Vec<String>)],
    collector: &Collector,
    endpoint: &str,
) -> anyhow::Result<Shop> {
    let (log, client) = (suite.log.clone(), suite.cluster.client.clone());
    log.step(&format!("after the rollout: baseline of a workload under {RPS} requests/s, then silence"));
    let ns = suite.namespaces.create("baseline", &[ENABLED, (SHOP_LABEL, "baseline")]).await?;
    let w = shop::workloads().into_iter().find(|w| w.name == WORKLOAD).context("no inventory in the shop")?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &from_json(w.deployment)?)
        .await?;
    if let Some(service) = w.service {
        Api::<Service>::namespaced(client.clone(), &ns).create(&PostParams::default(), &from_json(service)?).await?;
    }
    let before = only_pod(&client, &ns, false).await?;
    assert_untouched(&before)?;

    let policy: TracingPolicy = from_json(serde_json::json!({
        "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
        "metadata": {"name": POLICY_BASELINE},
        "spec": {
            "namespaceSelector": {"matchLabels": {SHOP_LABEL: "baseline"}},
            "collector": {"endpoint": endpoint, "protocol": "grpc"},
            "sampling": {"ratio": 0.25},
            "rollout": {"phases": [{"name": "pilot", "batchSize": 1, "soakDuration": SOAK}]},
            "review": {"interval": format!("{}s", REVIEW.as_secs())}
        }
    }))?;
    let policies = Api::<TracingPolicy>::all(client.clone());
    policies.create(&PostParams::default(), &policy).await?;
    let pod = only_pod(&client, &ns, true).await?;
    log.note(&format!("{ns}/{WORKLOAD}: restarted by the rollout into pod {} (injected)", pod.name_any()));
    let mut shop = Shop { ns: ns.clone(), policy, pods: vec![pod], running: Vec::new() };
    run_shop(&mut shop, &client, network, images, dir, extra_hosts, &log).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(shop.running[0].net.ip, w.port.context("no port")?, stop.clone());
    let recorded = wait::until("the baseline of the soak", Duration::from_secs(300), || async {
        let p = policies.get(POLICY_BASELINE).await?;
        let b = p.status.as_ref().and_then(|s| s.baseline.clone()).context("no baseline yet")?;
        let w = b.workloads.into_iter().find(|w| w.namespace == ns && w.name == WORKLOAD);
        let w = w.with_context(|| format!("no baseline for {WORKLOAD} in phase {:?}", b.phase))?;
        Ok((p, w))
    })
    .await;
    stop.store(true, Ordering::Release);
    let load = load.await?;
    let stopped = Instant::now();
    let (policy, baseline) = recorded?;
    ensure!(load.failed.is_empty(), "requests failed: {:?}", load.failed);
    log.note(&format!("load: {} requests at {:.2}/s over {:.0}s", load.sent, load.rate(), load.elapsed.as_secs_f64()));
    log.note(&check_baseline(&baseline, &load, collector, &ns)?);
    let review = policy.status.as_ref().and_then(|s| s.review.clone()).context("no review once Complete")?;
    let silent = |kind: FindingKind, namespace: &str, workload: &str| {
        kind == FindingKind::WentSilent && namespace == ns && workload == format!("Deployment/{WORKLOAD}")
    };
    ensure!(
        !review.findings.iter().any(|f| silent(f.kind, &f.namespace, &f.workload)),
        "the review under load already calls it silent: {:?}",
        review.findings
    );

    // The last spans reach the agent within the SDK's batch delay (5 s); the agent reports every 30 s.
    let deadline = 2 * REVIEW + Duration::from_secs(40);
    let condition = wait::until("the review to call the workload silent", deadline, || async {
        let p = policies.get(POLICY_BASELINE).await?;
        let status = p.status.context("no status")?;
        let review = status.review.context("no review")?;
        let finding = review.findings.iter().find(|f| silent(f.kind, &f.namespace, &f.workload));
        let finding = finding.with_context(|| format!("findings {:?}", review.findings))?.clone();
        let c = status.conditions.into_iter().find(|c| c.type_ == "Regression").context("no Regression condition")?;
        ensure!(c.status == "True" && c.reason == "WentSilent", "condition {c:?}");
        ensure!(c.message.contains(&format!("WentSilent {ns}/Deployment/{WORKLOAD}")), "condition {c:?}");
        Ok((finding, c))
    })
    .await?;
    log.note(&format!(
        "{:.0}s after the last request: condition Regression {} ({}); finding: {}",
        stopped.elapsed().as_secs_f64(),
        condition.1.reason,
        condition.1.message,
        condition.0.message
    ));
    Ok(shop)
}

/// The baseline against the load and the server spans the collector received; what was compared.
fn check_baseline(b: &WorkloadBaseline, load: &Load, collector: &Collector, ns: &str) -> anyhow::Result<String> {
    let window = b.window_end.0.duration_since(b.window_start.0).as_secs_f64();
    let rate = load.rate();
    ensure!(
        (b.requests_per_second - rate).abs() <= rate * 0.1,
        "baseline {:.2} requests/s over {window:.0}s, the load ran at {rate:.2}/s: {b:?}",
        b.requests_per_second
    );
    ensure!(b.error_rate == 0.0, "baseline error rate {} without a failed request: {b:?}", b.error_rate);
    ensure!(b.pods == 1, "baseline over {} pods, want 1: {b:?}", b.pods);
    // The true percentiles of the server spans of this namespace the collector kept (a quarter
    // of them: sampled by trace id, not by duration).
    let mut durations: Vec<f64> = collector
        .spans()
        .iter()
        .filter(|s| s.kind == KIND_SERVER && s.resource.get("k8s.namespace.name").map(String::as_str) == Some(ns))
        .map(|s| s.duration_seconds)
        .collect();
    ensure!(durations.len() >= 20, "only {} server spans of {ns} in the collector", durations.len());
    durations.sort_by(f64::total_cmp);
    let true_quantile = |q: f64| durations[((durations.len() - 1) as f64 * q).round() as usize];
    // p50: within its bucket (neighbouring bounds are at most 2.5 apart; the first starts at 0).
    // p99: the right order of magnitude (the collector's tail is a sample, over a longer time).
    let mut compared = format!(
        "baseline over {window:.0}s: {:.2} requests/s (load {rate:.2}/s), error rate {}",
        b.requests_per_second, b.error_rate
    );
    for (name, q, factor, measured) in
        [("p50", 0.5, 2.5, b.duration_p50_seconds), ("p99", 0.99, 10.0, b.duration_p99_seconds)]
    {
        let measured = measured.with_context(|| format!("no {name} in the baseline: {b:?}"))?;
        let truth = true_quantile(q);
        let (lo, hi) = (truth / factor, (truth * factor).max(0.0005));
        ensure!(
            (lo..=hi).contains(&measured),
            "baseline {name} {measured}s, the collector's server spans say {truth}s (accepted {lo}..{hi})"
        );
        compared.push_str(&format!(", {name} {:.2}ms (server spans {:.2}ms)", measured * 1e3, truth * 1e3));
    }
    let ordered = [b.duration_p50_seconds, b.duration_p95_seconds, b.duration_p99_seconds];
    ensure!(ordered.windows(2).all(|p| p[0] <= p[1]), "percentiles out of order: {b:?}");
    ensure!(
        b.agent_cpu_millicores.is_some() && b.agent_memory_bytes.is_some_and(|m| m > 1 << 20),
        "agent overhead missing: {b:?}"
    );
    Ok(compared)
}

/// The one pod of the workload, once it is the only one; `injected`: carrying the agent.
async fn only_pod(client: &Client, ns: &str, injected: bool) -> anyhow::Result<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={WORKLOAD}"));
    let what = if injected { "the injected pod" } else { "the pod" };
    wait::until(&format!("{what} of {ns}/{WORKLOAD}, alone and scheduled"), Duration::from_secs(120), || async {
        let pods = api.list(&lp).await?.items;
        ensure!(pods.len() == 1, "{} pods", pods.len());
        let pod = pods.into_iter().next().expect("one pod");
        // A native sidecar (an init container) or a plain container, depending on the chart.
        let has_agent = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .any(|c| c.name == AGENT_CONTAINER);
        ensure!(has_agent == injected, "pod {}: agent container {has_agent}", pod.name_any());
        ensure!(pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(), "not scheduled");
        ensure!(pod.metadata.deletion_timestamp.is_none(), "being deleted");
        Ok(pod)
    })
    .await
}
