//! Proof that traces flow (`make e2e-traces`): the demo shop (`e2e/apps/`) deployed to the real
//! control plane in an opted-in namespace, its pods injected by the real webhook, then run on
//! this host by the pod runner ([`runner`]) exactly as the API server stored them; requests sent
//! to the frontend; what a real OpenTelemetry Collector received checked trace by trace
//! ([`check`]).
//!
//! It reuses the cluster suite's setup (`e2e/tests/suite/setup.rs`, see [`harness`]: chart in URL mode, operator
//! as a local process with the chart's ServiceAccount) and so owns the cluster's Tracelight
//! objects while it runs, like `make e2e`: both hold the lock file [`cluster_lock`] for their whole
//! run, so they never interleave on the shared cluster. Needs root (network namespaces), the
//! collector (`TRACELIGHT_OTELCOL`, from e2e/collector/build.sh) and the shop's prepared content
//! (e2e/apps/prepare.sh); without them it fails, never skips.

mod check;
mod collector;
mod harness;
mod runner;
mod shop;

// The cluster suite's support code, shared rather than copied; this binary uses part of it.
#[allow(dead_code, unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{ensure, Context as _};
use check::{PodIdentity, Topology};
use collector::Collector;
use collector::Span;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::api::{Patch, PatchParams};
use kube::{Client, ResourceExt};
use runner::env::PodInputs;
use runner::net::Network;
use runner::pod::RunningPod;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::objects::{assert_injected, assert_untouched, from_json, wait_injecting, ENABLED};
use support::{wait, StepLog};
use tracelight::api::agent_config::{AgentConfig, AGENT_CONFIGMAP, AGENT_CONFIG_KEY};
use tracelight::api::TracingPolicy;

/// Requests sent to the frontend; the collector must hold exactly this many traces.
const REQUESTS: usize = 5;
const POLICY: &str = "e2e-traces";
/// Label selecting the shop namespace for the test's policy (besides the webhook's opt-in label).
const SHOP_LABEL: (&str, &str) = ("e2e.tracelight.io/traces", "true");
/// The second phase: the policy's ratio lowered to this, then this many requests; the number of
/// complete traces kept must be within [`check::sampling_bound`], and none may be partial.
const SAMPLED_RATIO: f64 = 0.25;
const SAMPLED_REQUESTS: usize = 200;
/// How long spans may take to reach the collector (SDK batch delays are 5s).
const SPANS_DEADLINE: Duration = Duration::from_secs(90);

/// The lock that serializes the suites sharing the local cluster (`make e2e` takes it with
/// `flock`). Held until dropped.
fn cluster_lock() -> anyhow::Result<std::fs::File> {
    let dir = match std::env::var_os("TRACELIGHT_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/tracelight"),
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("e2e-cluster.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    if file.try_lock().is_err() {
        eprintln!("[traces] waiting for {} (another e2e run holds the cluster)", path.display());
        file.lock()?;
    }
    Ok(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_flow_through_injected_pods() {
    let _lock = cluster_lock().expect("the e2e cluster lock");
    let log = StepLog::new();
    let result = run(&log).await;
    eprintln!("\n[traces] finished in {:.1}s", log.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("traces e2e failed: {e:#}");
    }
}

fn required_path(var: &str, hint: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).with_context(|| format!("{var} is not set: {hint}"))?;
    ensure!(path.exists(), "{var}={} does not exist: {hint}", path.display());
    Ok(path)
}

async fn run(log: &StepLog) -> anyhow::Result<()> {
    let otelcol = required_path("TRACELIGHT_OTELCOL", "run `make e2e-traces` (it builds the collector)")?;
    shop::cache_dir()?;
    log.step("cluster: e2e/cluster/up.sh");
    let cluster = support::cluster::Cluster::up().await?;
    harness::setup::refuse_if_demo_running()?;
    log.step("clean slate: remove what an earlier run or demo may have left");
    harness::setup::clean_slate(&cluster).await?;
    let mut suite = match harness::setup::install(cluster.clone(), log).await {
        Ok(suite) => suite,
        Err(e) => {
            if let Err(cleanup) = harness::setup::clean_slate(&cluster).await {
                eprintln!("[traces] cleanup after the failed install: {cleanup:#}");
            }
            return Err(e);
        }
    };
    let result = async {
        log.step("operator: a local process as the chart's ServiceAccount");
        suite.start_operator().await?;
        traces(&mut suite, &otelcol).await
    }
    .await;
    let cleanup = harness::setup::teardown(&mut suite).await;
    match (result, cleanup) {
        (Ok(()), cleanup) => cleanup,
        (Err(e), Ok(())) => Err(anyhow::anyhow!("{e:#}\n\n{}", suite.operator_log_excerpt())),
        (Err(e), Err(c)) => {
            Err(anyhow::anyhow!("{e:#}\n(cleanup failed too: {c:#})\n\n{}", suite.operator_log_excerpt()))
        }
    }
}

async fn traces(suite: &mut harness::Suite, otelcol: &std::path::Path) -> anyhow::Result<()> {
    let log = suite.log.clone();
    let client = suite.cluster.client.clone();
    // Under the cluster lock no other run is going on: anything of ours on the host is stale.
    Network::remove_leftovers()?;
    let mut network = Network::create()?;
    let dir = support::work_dir().join(format!("traces-{}", network.id));
    log.step(&format!(
        "collector: {} on the pods' bridge {} (files in {})",
        otelcol.display(),
        network.host_ip(),
        dir.display()
    ));
    let grpc = SocketAddr::from((network.host_ip(), support::free_port()));
    let collector = Collector::start(otelcol, &dir.join("collector"), grpc).await?;

    log.step("policy and opted-in namespace");
    let ns = suite.namespaces.create("shop", &[ENABLED, SHOP_LABEL]).await?;
    let policy: TracingPolicy = from_json(serde_json::json!({
        "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {SHOP_LABEL.0: SHOP_LABEL.1}},
            "collector": {"endpoint": format!("http://{grpc}"), "protocol": "grpc"},
            "sampling": {"ratio": 1},
            "resourceAttributes": {"deployment.environment": "e2e"}
        }
    }))?;
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    let policy = harness::wait_active(&client, POLICY, &ns).await?;
    wait_injecting(&client, &ns, Duration::from_secs(30)).await?;
    log.note(&format!("policy {POLICY}: namespace {ns} Active; collector endpoint http://{grpc}"));

    log.step("the shop's workloads");
    let workloads = shop::workloads();
    for w in &workloads {
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &from_json(w.deployment.clone())?)
            .await?;
        if let Some(service) = &w.service {
            Api::<Service>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &from_json(service.clone())?)
                .await?;
        }
    }
    let mut pods = Vec::new();
    for w in &workloads {
        let pod = scheduled_pod(&client, &ns, w.name).await?;
        if w.traced {
            assert_injected(&pod, w.name, &policy)?;
            log.note(&format!("{}: pod {} injected, on node {}", w.name, pod.name_any(), node_of(&pod)));
        } else {
            assert_untouched(&pod)?;
            log.note(&format!("{}: pod {} opted out, untouched", w.name, pod.name_any()));
        }
        pods.push(pod);
    }

    log.step("run the injected pods on this host");
    let images = shop::images(&policy, &support::operator::binary())?;
    let inputs = PodInputs::from_objects(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
        &Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
    );
    let inputs = PodInputs { host_ip: Some(network.host_ip()), ..inputs };
    let nets: Vec<_> = pods.iter().map(|_| network.add_pod()).collect::<anyhow::Result<_>>()?;
    let services = Api::<Service>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let hosts = hosts_entries(&ns, &pods, &nets.iter().map(|n| n.ip).collect::<Vec<_>>(), &services)?;
    for net in &nets {
        network.write_hosts(net, &hosts)?;
    }
    let mut running: Vec<RunningPod> = Vec::new();
    for (pod, net) in pods.iter().zip(nets) {
        let pod_dir = dir.join(pod.name_any());
        let inputs = PodInputs { tokens: runner::token::projected_tokens(&client, pod).await?, ..inputs.clone() };
        running.push(runner::pod::start(pod, &images, net, &inputs, &pod_dir).await?);
        log.note(&format!("{}: running, ready (logs in {})", pod.name_any(), pod_dir.join("logs").display()));
    }

    let topology = shop::topology(&policy);
    let identities: Vec<PodIdentity> = pods
        .iter()
        .zip(&workloads)
        .filter(|(_, w)| w.traced)
        .map(|(p, w)| PodIdentity {
            service: w.name.into(),
            namespace: p.namespace().unwrap_or_default(),
            pod: p.name_any(),
            uid: p.uid().unwrap_or_default(),
            node: node_of(p),
            container: w.container.into(),
            deployment: w.name.into(),
        })
        .collect();
    let mut collector = collector;
    let result = async {
        exercise(&log, &collector, &mut running, &workloads, &topology, &identities).await?;
        let first: BTreeSet<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
        resample(&log, &client, &ns, &mut running, &workloads, &policy).await?;
        // Then everything is flushed and stopped (apps, agents, collector, in that order) and the
        // final output checked: nothing arrived late, twice, or split.
        log.step("stop the pods (SIGTERM: SDKs and agents flush) and the collector; check the final output");
        for pod in &mut running {
            pod.stop();
        }
        collector.stop()?;
        let (all_at_once, sampled): (Vec<Span>, Vec<Span>) =
            collector.spans().into_iter().partition(|s| first.contains(&s.trace_id));
        check::check(&all_at_once, REQUESTS, &topology, &identities)
            .with_context(|| format!("ratio 1, after shutdown, in {}", collector.output.display()))?;
        let traces = check::by_trace(&all_at_once);
        log.note(&format!(
            "ratio 1: {} spans in {} traces, each complete; the first one:",
            all_at_once.len(),
            traces.len()
        ));
        if let Some(first) = traces.values().next() {
            eprint!("{}", check::dump(first));
        }
        let kept = check::check_complete(&sampled, &topology, &identities)
            .with_context(|| format!("ratio {SAMPLED_RATIO}: a kept trace is incomplete (split by sampling?)"))?;
        let (lo, hi) = check::sampling_bound(SAMPLED_REQUESTS, SAMPLED_RATIO);
        ensure!(
            (lo..=hi).contains(&kept),
            "ratio {SAMPLED_RATIO}: {kept} of {SAMPLED_REQUESTS} traces kept, outside [{lo}, {hi}] (mean ± 5 sd)"
        );
        log.note(&format!(
            "ratio {SAMPLED_RATIO}: {kept} of {SAMPLED_REQUESTS} traces kept (bound [{lo}, {hi}]), every one complete \
             ({} spans)",
            sampled.len()
        ));
        anyhow::Ok(())
    }
    .await;
    let logs: String = running.iter().map(|p| p.log_tails(30)).collect();
    drop(running);
    drop(collector);
    drop(network);
    // The failure first, then what the containers printed.
    result.map_err(|e| anyhow::anyhow!("{e:#}\n\ncontainer logs (last lines):\n{logs}"))
}

async fn exercise(
    log: &StepLog,
    collector: &Collector,
    running: &mut [RunningPod],
    workloads: &[shop::Workload],
    topology: &Topology,
    identities: &[PodIdentity],
) -> anyhow::Result<()> {
    let at = workloads.iter().position(|w| w.name == "frontend").context("no frontend")?;
    let (frontend, port) = (&running[at], workloads[at].port.context("the frontend has no port")?);
    log.step(&format!("{REQUESTS} requests to the frontend at {}:{port}", frontend.net.ip));
    for i in 0..REQUESTS {
        let sku = ["book", "lamp", "mug"][i % 3];
        let (status, body) = http_get(frontend.net.ip, port, &format!("/checkout?sku={sku}")).await?;
        ensure!(status == 200, "GET /checkout?sku={sku}: HTTP {status}: {body}");
        ensure!(body.contains("\"quantity\""), "GET /checkout?sku={sku}: no quantity in {body}");
    }
    log.step("the collector's output: one complete trace per request");
    let deadline = Instant::now() + SPANS_DEADLINE;
    loop {
        let spans = collector.spans();
        match check::check(&spans, REQUESTS, topology, identities) {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "{} spans in {} after {SPANS_DEADLINE:?}",
                    spans.len(),
                    collector.output.display()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    for pod in running.iter_mut() {
        let exited = pod.exited();
        ensure!(exited.is_empty(), "pod {}: containers exited: {exited:?}", pod.name);
    }
    Ok(())
}

/// Lowers the policy's sampling ratio, waits until every agent runs the new config (the
/// controller rewrites the namespace's ConfigMap, the runner syncs it into the pods' volumes like
/// the kubelet, the agents reload it live), then sends [`SAMPLED_REQUESTS`] requests.
async fn resample(
    log: &StepLog,
    client: &Client,
    ns: &str,
    running: &mut [RunningPod],
    workloads: &[shop::Workload],
    policy: &TracingPolicy,
) -> anyhow::Result<()> {
    log.step(&format!("sampling: the policy's ratio set to {SAMPLED_RATIO}; agents reload it live"));
    let patch = serde_json::json!({"spec": {"sampling": {"ratio": SAMPLED_RATIO}}});
    Api::<TracingPolicy>::all(client.clone()).patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    wait::until(
        &format!("the agent ConfigMap in {ns} to carry ratio {SAMPLED_RATIO}"),
        Duration::from_secs(60),
        || async {
            let cm = configmaps.get(AGENT_CONFIGMAP).await?;
            let text = cm.data.as_ref().and_then(|d| d.get(AGENT_CONFIG_KEY)).context("no config.yaml")?;
            let config = AgentConfig::from_yaml(text)?;
            ensure!(config.sampling.ratio.get() == SAMPLED_RATIO, "ratio {}", config.sampling.ratio.get());
            Ok(())
        },
    )
    .await?;
    let inputs = PodInputs::from_objects(
        &configmaps.list(&ListParams::default()).await?.items,
        &Api::<Secret>::namespaced(client.clone(), ns).list(&ListParams::default()).await?.items,
    );
    let admin = policy.spec.agent.ports.admin;
    for (pod, w) in running.iter_mut().zip(workloads) {
        pod.sync_volumes(&inputs)?;
        if !w.traced {
            continue;
        }
        let ip = pod.net.ip;
        wait::until(
            &format!("the agent of {} to apply ratio {SAMPLED_RATIO}", pod.name),
            Duration::from_secs(30),
            || async {
                let (status, body) = http_get(ip, admin, "/report").await?;
                ensure!(status == 200, "GET /report: HTTP {status}");
                let report: serde_json::Value = serde_json::from_str(&body)?;
                ensure!(report["samplingRatio"].as_f64() == Some(SAMPLED_RATIO), "report {report}");
                Ok(())
            },
        )
        .await?;
    }
    let now: BTreeSet<String> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let ran: BTreeSet<String> = running.iter().map(|p| p.name.clone()).collect();
    ensure!(now == ran, "the sampling change replaced pods: they are {now:?}, were {ran:?}");
    log.note(&format!("every agent reports ratio {SAMPLED_RATIO}; no pod was replaced"));
    let at = workloads.iter().position(|w| w.name == "frontend").context("no frontend")?;
    let (ip, port) = (running[at].net.ip, workloads[at].port.context("the frontend has no port")?);
    log.step(&format!("{SAMPLED_REQUESTS} requests to the frontend"));
    for i in 0..SAMPLED_REQUESTS {
        let sku = ["book", "lamp", "mug"][i % 3];
        let (status, body) = http_get(ip, port, &format!("/checkout?sku={sku}")).await?;
        ensure!(status == 200, "GET /checkout?sku={sku}: HTTP {status}: {body}");
    }
    // The agents did the sampling (the SDKs sample parent-based always-on) and lost nothing.
    for (pod, _) in running.iter().zip(workloads).filter(|(_, w)| w.traced) {
        let (status, body) = http_get(pod.net.ip, admin, "/report").await?;
        ensure!(status == 200, "{}: GET /report: HTTP {status}", pod.name);
        let report: serde_json::Value = serde_json::from_str(&body)?;
        let spans = &report["spans"];
        let dropped: u64 = spans["dropped"].as_object().into_iter().flatten().filter_map(|(_, n)| n.as_u64()).sum();
        ensure!(dropped == 0, "{}: the agent dropped spans: {spans}", pod.name);
        ensure!(spans["sampledOut"].as_u64() > Some(0), "{}: the agent sampled nothing out: {spans}", pod.name);
        log.note(&format!("{}: agent report {spans}", pod.name));
    }
    Ok(())
}

/// Waits for the one pod of Deployment `app` to be scheduled; returns it as stored.
async fn scheduled_pod(client: &Client, ns: &str, app: &str) -> anyhow::Result<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={app}"));
    wait::until(&format!("the pod of {ns}/{app} to be scheduled"), Duration::from_secs(60), || async {
        let pods = api.list(&lp).await?.items;
        ensure!(pods.len() == 1, "{} pods", pods.len());
        let pod = pods.into_iter().next().expect("one pod");
        ensure!(pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(), "not scheduled");
        Ok(pod)
    })
    .await
}

fn node_of(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

/// `/etc/hosts` lines: each pod's own name, and each Service's names for its pod. A Service's
/// port must equal its target port (an address in a hosts file cannot remap ports).
fn hosts_entries(
    ns: &str,
    pods: &[Pod],
    ips: &[Ipv4Addr],
    services: &[Service],
) -> anyhow::Result<Vec<(Ipv4Addr, Vec<String>)>> {
    let mut entries: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for (pod, ip) in pods.iter().zip(ips) {
        entries.entry(*ip).or_default().push(pod.name_any());
    }
    for svc in services {
        let name = svc.name_any();
        let spec = svc.spec.as_ref().context("service without spec")?;
        for port in spec.ports.iter().flatten() {
            let target = port.target_port.as_ref();
            ensure!(
                target.is_none()
                    || target == Some(&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.port)),
                "service {name}: port {} -> {target:?}; the runner needs port == targetPort",
                port.port
            );
        }
        let selector = spec.selector.clone().unwrap_or_default();
        let matching = pods.iter().zip(ips).filter(|(p, _)| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)));
        for (_, ip) in matching.take(1) {
            let names = entries.entry(*ip).or_default();
            names.extend([
                name.clone(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ]);
        }
    }
    Ok(entries.into_iter().collect())
}

/// A plain HTTP GET (the load a user sends); status and body.
async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(30), io).await.context("timed out")??;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not an HTTP response")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
