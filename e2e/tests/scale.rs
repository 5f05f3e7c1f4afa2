//! `make bench-scale`: a phased rollout at scale on the local control plane (kwok nodes). Creates
//! `SCALE_NAMESPACES` x `SCALE_DEPLOYMENTS` Deployments of `SCALE_REPLICAS` replicas (defaults
//! 200 x 10 x 3: 2000 workloads, 6000 pods), waits until they run, applies a policy with one
//! phase of `SCALE_BATCH` workloads per batch, and measures the time to `Complete`, the operator's
//! peak RSS (VmHWM), its API requests per restarted workload and reconcile latency. The last
//! line it prints is
//! `RESULT workloads=<n> complete_s=<s> peak_rss_mib=<m> api_calls_per_restart=<k>`.
//!
//! The e2e cluster's 3 nodes hold 330 pods, so the run registers its own kwok nodes (tainted:
//! only its pods land there) and deletes them afterwards.

use crate::suite::{setup, Suite};
use crate::support::cluster::Cluster;
use crate::support::objects::{from_json, template, ENABLED};
use crate::support::operator::http_get;
use crate::support::{wait, StepLog};
use anyhow::{ensure, Context as _};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};
use tracelight::api::{PolicyPhase, TracingPolicy};

const POLICY: &str = "e2e-scale";
const SCALE_LABEL: &str = "e2e.tracelight.io/scale";
const PARALLEL: usize = 16;
const SCALE_NODE_TYPE: &str = "kwok-scale";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a scale benchmark (minutes, thousands of pods): make bench-scale"]
async fn bench_scale() {
    let _lock = crate::support::cluster_lock().expect("the e2e cluster lock");
    let log = StepLog::new();
    let cluster = Cluster::up().await.expect("cluster");
    setup::refuse_if_demo_running().expect("demo check");
    setup::clean_slate(&cluster).await.expect("clean slate");
    let mut suite = setup::install(cluster, &log).await.expect("install");
    let nodes = add_scale_nodes(&suite).await;
    let result = match &nodes {
        Ok(_) => run(&mut suite).await,
        Err(e) => Err(anyhow::anyhow!("adding the scale nodes: {e:#}")),
    };
    // Without the operator the finalizers are dropped: deleting at scale would roll everything back.
    if suite.operator.is_some() {
        if let Err(e) = suite.stop_operator() {
            eprintln!("[scale] stopping the operator: {e:#}");
        }
    }
    let cleanup = setup::teardown(&mut suite).await;
    // After the namespaces: their pods are gone, nothing is left on these nodes.
    let nodes_api = Api::<Node>::all(suite.cluster.client.clone());
    for node in nodes.iter().flatten() {
        if let Err(e) = nodes_api.delete(node, &DeleteParams::default()).await {
            eprintln!("[scale] deleting node {node}: {e:#}");
        }
    }
    let line = result.unwrap_or_else(|e| panic!("scale run failed: {e:#}\n{}", suite.operator_log_excerpt()));
    cleanup.expect("cleanup");
    println!("{line}");
}

async fn run(suite: &mut Suite) -> anyhow::Result<String> {
    let (namespaces, per_ns, replicas, batch) = (
        env_or("SCALE_NAMESPACES", 200),
        env_or("SCALE_DEPLOYMENTS", 10),
        env_or("SCALE_REPLICAS", 3),
        env_or("SCALE_BATCH", 50),
    );
    let workloads = namespaces * per_ns;
    let client = suite.cluster.client.clone();
    suite
        .log
        .step(&format!("scale: {namespaces} namespaces x {per_ns} Deployments x {replicas} replicas, batch {batch}"));
    suite.start_operator().await?;

    let mut names = Vec::new();
    for i in 0..namespaces {
        names.push(suite.namespaces.create(&format!("scale{i}"), &[]).await?);
    }
    let creations = names.iter().flat_map(|ns| (0..per_ns).map(move |i| (ns.clone(), format!("w{i}"))));
    futures::stream::iter(creations)
        .map(|(ns, name)| {
            let client = client.clone();
            async move {
                let mut pod = template(&name, &[]);
                pod["spec"]["nodeSelector"] = json!({"type": SCALE_NODE_TYPE});
                pod["spec"]["tolerations"] =
                    json!([{"key": SCALE_LABEL, "operator": "Exists", "effect": "NoSchedule"}]);
                let d: Deployment = from_json(json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "labels": {SCALE_LABEL: "true"}},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": pod}
                }))?;
                Api::<Deployment>::namespaced(client, &ns).create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    let all = Api::<Deployment>::all(client.clone());
    let lp = ListParams::default().labels(&format!("{SCALE_LABEL}=true"));
    let timeout = Duration::from_secs(60 + workloads as u64);
    wait::until(&format!("{workloads} Deployments to run"), timeout, || async {
        let list = all.list_metadata(&lp).await?;
        ensure!(list.items.len() == workloads, "{} created", list.items.len());
        let running = all.list(&lp).await?.items.iter().filter(|d| available(d)).count();
        ensure!(running == workloads, "{running} of {workloads} running");
        Ok(())
    })
    .await?;
    suite.log.note(&format!("{workloads} Deployments running uninjected"));

    let namespaces_api = Api::<Namespace>::all(client.clone());
    let labels = json!({"metadata": {"labels": {ENABLED.0: ENABLED.1, SCALE_LABEL: "true"}}});
    for ns in &names {
        namespaces_api.patch(ns, &PatchParams::default(), &Patch::Merge(&labels)).await?;
    }
    let before = scrape(suite).await?;
    let policy: TracingPolicy = from_json(json!({
        "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {ENABLED.0: ENABLED.1, SCALE_LABEL: "true"}},
            "collector": {"endpoint": "http://collector.e2e:4317", "protocol": "grpc"},
            "rollout": {"phases": [{"name": "all", "batchSize": batch, "soakDuration": "0s", "healthDeadline": "10m"}]}
        }
    }))?;
    let policies = Api::<TracingPolicy>::all(client.clone());
    let started = Instant::now();
    policies.create(&PostParams::default(), &policy).await?;
    let timeout = Duration::from_secs(120 + 2 * workloads as u64);
    wait::until(&format!("policy {POLICY} to be Complete"), timeout, || async {
        let p = policies.get(POLICY).await?;
        let status = p.status.unwrap_or_default();
        ensure!(status.phase == Some(PolicyPhase::Complete), "phase {:?}", status.phase);
        let restarted = all.list_metadata(&lp).await?.items.iter().filter(|d| d.metadata.generation == Some(2)).count();
        ensure!(restarted == workloads, "{restarted} of {workloads} restarted");
        Ok(())
    })
    .await?;
    let complete_s = started.elapsed().as_secs_f64();
    let after = scrape(suite).await?;
    let restarts = after.restarts - before.restarts;
    let calls = after.requests - before.requests;
    let peak_rss_mib = peak_rss_kib(suite.operator()?.pid())? as f64 / 1024.0;
    suite.log.note(&format!(
        "Complete after {complete_s:.1}s; {restarts} restarts, {calls} API requests; reconcile p50 {:.3}s p99 {:.3}s ({} reconciles)",
        after.percentile(0.5),
        after.percentile(0.99),
        after.reconciles
    ));
    ensure!(restarts >= workloads as u64, "only {restarts} restarts counted for {workloads} workloads");
    Ok(format!(
        "RESULT workloads={workloads} complete_s={complete_s:.1} peak_rss_mib={peak_rss_mib:.1} api_calls_per_restart={:.2}",
        calls as f64 / restarts as f64
    ))
}

/// Pods per scale node (the 3 nodes of the e2e cluster allow 110 each, 330 in all).
const PODS_PER_NODE: usize = 1000;

/// Registers extra kwok nodes for the run's pods (old and new ones during restarts), tainted so
/// that only the run's pods land there; returns their names.
async fn add_scale_nodes(suite: &Suite) -> anyhow::Result<Vec<String>> {
    let pods = env_or("SCALE_NAMESPACES", 200) * env_or("SCALE_DEPLOYMENTS", 10) * env_or("SCALE_REPLICAS", 3);
    let count = (pods * 3 / 2).div_ceil(PODS_PER_NODE).max(1);
    let api = Api::<Node>::all(suite.cluster.client.clone());
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("kwok-scale-{i}");
        let node: Node = from_json(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": SCALE_NODE_TYPE, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
            },
            "spec": {"taints": [{"key": SCALE_LABEL, "value": "true", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": PODS_PER_NODE.to_string()},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": PODS_PER_NODE.to_string()}
            }
        }))?;
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating node {name}")),
        }
        names.push(name);
    }
    wait::until(&format!("{count} scale nodes to be Ready"), Duration::from_secs(60), || async {
        for name in &names {
            let node = api.get(name).await?;
            let ready = node.status.and_then(|s| s.conditions).unwrap_or_default();
            ensure!(ready.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{name} not Ready");
        }
        Ok(())
    })
    .await?;
    suite.log.note(&format!("{count} kwok nodes for {pods} pods (tainted, {PODS_PER_NODE} pods each)"));
    Ok(names)
}

fn available(d: &Deployment) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    d.status.as_ref().is_some_and(|s| s.available_replicas.unwrap_or_default() == want)
}

/// The operator's counters and reconcile-duration histogram, from its `/metrics`.
#[derive(Debug, Default)]
struct Scrape {
    requests: u64,
    restarts: u64,
    reconciles: u64,
    /// (upper bound, cumulative count) of the reconcile duration histogram.
    buckets: Vec<(f64, u64)>,
}

impl Scrape {
    /// The bucket bound under which `q` of the reconciles finished (an upper estimate).
    fn percentile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map(|b| b.1).unwrap_or_default();
        let want = (total as f64 * q).ceil() as u64;
        self.buckets.iter().find(|(_, n)| *n >= want).map_or(f64::INFINITY, |(le, _)| *le)
    }
}

async fn scrape(suite: &mut Suite) -> anyhow::Result<Scrape> {
    let port = suite.operator()?.admin_port;
    let (status, body) = http_get(port, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    let mut s = Scrape::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let value: f64 = value.parse().unwrap_or_default();
        match name {
            "tracelight_kube_requests_total" => s.requests = value as u64,
            "tracelight_controller_workload_restarts_total" => s.restarts = value as u64,
            "tracelight_controller_reconciles_total" => s.reconciles = value as u64,
            _ if name.starts_with("tracelight_controller_reconcile_duration_seconds_bucket{le=\"") => {
                let le = name.split('"').nth(1).context("bucket without le")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
                s.buckets.push((le, value as u64));
            }
            _ => {}
        }
    }
    ensure!(s.requests > 0, "no tracelight_kube_requests_total in /metrics");
    Ok(s)
}

/// Peak resident set size of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    line.split_whitespace().nth(1).context("VmHWM without a value")?.parse().context("VmHWM")
}
