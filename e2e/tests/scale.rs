//! `make bench-scale`: a phased rollout at scale on the local control plane (kwok nodes). Creates
//! `SCALE_NAMESPACES` x `SCALE_DEPLOYMENTS` Deployments of `SCALE_REPLICAS` replicas (defaults
//! 200 x 10 x 3: 2000 workloads, 6000 pods), waits until they run, applies a policy with one
//! phase of `SCALE_BATCH` workloads per batch, and measures the time to `Complete`, the operator's
//! peak RSS (VmHWM), its API requests per restarted workload and reconcile latency. The last
//! line it prints is
//! `RESULT workloads=<n> complete_s=<s> peak_rss_mib=<m> api_calls_per_restart=<k>`.
//!
//! `api_calls_per_restart` is every request the operator process sent to the API server (its
//! `tracelight_kube_requests_total`: controllers, webhook, lease; a watch counts once per
//! connection) from just before the policy is created until it is `Complete`, divided by the
//! restarts it requested; the breakdown by verb and resource is printed before it. The operator
//! is the binary in `TRACELIGHT_BIN` (`make bench-scale` builds it in release mode).
//!
//! The e2e cluster's 3 nodes hold 330 pods, so the run registers its own kwok nodes (tainted:
//! only its pods land there) and deletes them afterwards.

use crate::suite::{setup, Suite};
use crate::support::cluster::Cluster;
use crate::support::objects::{from_json, template, ENABLED, SUITE_LABEL};
use crate::support::operator::http_get;
use crate::support::{wait, StepLog};
use anyhow::{ensure, Context as _};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracelight::api::{PolicyPhase, TracingPolicy};

const POLICY: &str = "e2e-scale";
const SCALE_LABEL: &str = "e2e.tracelight.io/scale";
const PARALLEL: usize = 16;
const SCALE_NODE_TYPE: &str = "kwok-scale";
/// Polling thousands of objects every 250 ms would load the API server the bench measures.
const POLL: Duration = Duration::from_secs(2);

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
    // Thousands of pods take minutes to go: longer than the suite's teardown waits per namespace.
    let deleted = delete_scale_namespaces(&suite).await;
    let cleanup = setup::teardown(&mut suite).await;
    // After the namespaces: their pods are gone, nothing is left on these nodes (kwok must still
    // run them to confirm their deletion).
    let nodes_api = Api::<Node>::all(suite.cluster.client.clone());
    for node in nodes.iter().flatten() {
        if let Err(e) = nodes_api.delete(node, &DeleteParams::default()).await {
            eprintln!("[scale] deleting node {node}: {e:#}");
        }
    }
    let line = result.unwrap_or_else(|e| panic!("scale run failed: {e:#}\n{}", suite.operator_log_excerpt()));
    println!("{line}");
    deleted.expect("deleting the scale namespaces");
    cleanup.expect("cleanup");
}

/// Deletes the run's namespaces (the suite's, named `e2e-scale*`) and waits until they are gone.
async fn delete_scale_namespaces(suite: &Suite) -> anyhow::Result<()> {
    suite.log.step("cleanup: the scale namespaces");
    let api = Api::<Namespace>::all(suite.cluster.client.clone());
    let lp = ListParams::default().labels(&format!("{SUITE_LABEL}=true"));
    let scale_namespaces = || async {
        let list = api.list_metadata(&lp).await?;
        anyhow::Ok(
            list.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .filter(|n| n.starts_with("e2e-scale"))
                .collect::<Vec<_>>(),
        )
    };
    for name in scale_namespaces().await? {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
        }
    }
    let started = Instant::now();
    wait::until_every("the scale namespaces to be deleted", Duration::from_secs(1200), POLL, || async {
        let left = scale_namespaces().await?.len();
        ensure!(left == 0, "{left} namespaces left");
        Ok(())
    })
    .await?;
    suite.log.note(&format!("scale namespaces deleted in {:.0}s", started.elapsed().as_secs_f64()));
    Ok(())
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
    // The suite's short certificate lifetime and check interval exercise rotation; the bench
    // measures the operator with the chart's defaults, whose certificate work is rare.
    suite.operator_args.retain(|a| !a.starts_with("--cert-validity=") && !a.starts_with("--cert-check-interval="));
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
    wait::until_every(&format!("{workloads} Deployments to run"), timeout, POLL, || async {
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
    let idle_rss_mib = proc_status_kib(suite.operator()?.pid(), "VmRSS")? as f64 / 1024.0;
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
    // Generous: ~0.3 s per workload is typical; a stuck rollout fails with what it last saw.
    let timeout = Duration::from_secs(300 + workloads as u64);
    wait::until_every(&format!("policy {POLICY} to be Complete"), timeout, POLL, || async {
        let p = policies.get(POLICY).await?;
        let status = p.status.unwrap_or_default();
        let restarted = all.list_metadata(&lp).await?.items.iter().filter(|d| d.metadata.generation == Some(2)).count();
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").map(|c| c.message.clone());
        let in_flight = status.rollout.as_ref().map_or(0, |r| r.in_flight.len());
        ensure!(
            status.phase == Some(PolicyPhase::Complete) && restarted == workloads,
            "phase {:?}, {restarted} of {workloads} Deployments restarted, {in_flight} in flight ({})",
            status.phase,
            progressing.unwrap_or_default()
        );
        Ok(())
    })
    .await?;
    let complete_s = started.elapsed().as_secs_f64();
    let after = scrape(suite).await?;
    let restarts = after.restarts - before.restarts;
    let calls = after.total_requests() - before.total_requests();
    let pid = suite.operator()?.pid();
    let peak_rss_mib = proc_status_kib(pid, "VmHWM")? as f64 / 1024.0;
    let rss_mib = proc_status_kib(pid, "VmRSS")? as f64 / 1024.0;
    ensure!(restarts >= workloads as u64, "only {restarts} restarts counted for {workloads} workloads");
    let reconciles = after.reconciles - before.reconciles;
    suite.log.note(&format!(
        "Complete after {complete_s:.1}s; {restarts} restarts, {calls} API requests, {reconciles} reconciles; \
         operator RSS {rss_mib:.1} MiB now, {peak_rss_mib:.1} MiB peak ({idle_rss_mib:.1} MiB with the caches \
         filled, before the policy)"
    ));
    let latency = after.duration_since(&before);
    suite.log.note(&format!(
        "reconcile latency during the rollout: p50 {:.3}s p90 {:.3}s p99 {:.3}s",
        latency.percentile(0.5),
        latency.percentile(0.9),
        latency.percentile(0.99)
    ));
    for ((verb, resource), n) in after.requests_since(&before) {
        suite.log.note(&format!("  {verb:>8} {resource:<28} {n:>7}  {:>6.3} per restart", n as f64 / restarts as f64));
    }
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
    /// `tracelight_kube_requests_total` by (verb, resource).
    requests: BTreeMap<(String, String), u64>,
    restarts: u64,
    reconciles: u64,
    /// (upper bound, cumulative count) of the reconcile duration histogram.
    buckets: Vec<(f64, u64)>,
}

impl Scrape {
    fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests sent since `earlier`, by (verb, resource), most first.
    fn requests_since(&self, earlier: &Scrape) -> Vec<((String, String), u64)> {
        let mut delta: Vec<_> = self
            .requests
            .iter()
            .map(|(k, n)| (k.clone(), n - earlier.requests.get(k).copied().unwrap_or_default()))
            .filter(|(_, n)| *n > 0)
            .collect();
        delta.sort_by_key(|b| std::cmp::Reverse(b.1));
        delta
    }

    /// The histogram of the reconciles since `earlier`.
    fn duration_since(&self, earlier: &Scrape) -> Scrape {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| (*le, n - earlier.buckets.iter().find(|b| b.0 == *le).map_or(0, |b| b.1)))
            .collect();
        Scrape { buckets, ..Scrape::default() }
    }

    /// The `q` quantile of the reconcile durations, interpolated linearly within its bucket (as
    /// Prometheus' `histogram_quantile` does); the last finite bound if it falls in `+Inf`.
    fn percentile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map(|b| b.1).unwrap_or_default();
        let want = total as f64 * q;
        let mut lower = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= want && n > lower.1 {
                if le.is_infinite() {
                    return lower.0;
                }
                return lower.0 + (le - lower.0) * (want - lower.1 as f64) / (n - lower.1) as f64;
            }
            lower = (le, n);
        }
        lower.0
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
            "tracelight_controller_workload_restarts_total" => s.restarts = value as u64,
            "tracelight_controller_reconciles_total" => s.reconciles = value as u64,
            _ if name.starts_with("tracelight_kube_requests_total{") => {
                let label = |key: &str| {
                    let start = name.find(&format!("{key}=\"")).map(|i| i + key.len() + 2)?;
                    name[start..].split('"').next().map(str::to_string)
                };
                let key = (label("verb").context("no verb")?, label("resource").context("no resource")?);
                s.requests.insert(key, value as u64);
            }
            _ if name.starts_with("tracelight_controller_reconcile_duration_seconds_bucket{le=\"") => {
                let le = name.split('"').nth(1).context("bucket without le")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
                s.buckets.push((le, value as u64));
            }
            _ => {}
        }
    }
    ensure!(!s.requests.is_empty(), "no tracelight_kube_requests_total in /metrics");
    Ok(s)
}

/// A `/proc/<pid>/status` figure in KiB (`VmHWM`: peak resident set size; `VmRSS`: now).
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).with_context(|| format!("no {field}"))?;
    line.split_whitespace().nth(1).with_context(|| format!("{field} without a value"))?.parse().context("parsing it")
}

#[test]
fn percentiles_interpolate_within_buckets() {
    let s = Scrape { buckets: vec![(0.1, 0), (0.2, 50), (0.4, 100), (f64::INFINITY, 100)], ..Scrape::default() };
    assert!((s.percentile(0.5) - 0.2).abs() < 1e-9, "{}", s.percentile(0.5));
    assert!((s.percentile(0.25) - 0.15).abs() < 1e-9, "{}", s.percentile(0.25));
    assert!((s.percentile(0.99) - 0.396).abs() < 1e-9, "{}", s.percentile(0.99));
    let tail = Scrape { buckets: vec![(0.1, 1), (f64::INFINITY, 2)], ..Scrape::default() };
    assert_eq!(tail.percentile(0.99), 0.1, "beyond the last bound: the last bound");
}
