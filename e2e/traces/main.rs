//! Proof that traces flow (`make e2e-traces`): the demo shop (`e2e/apps/`) deployed to the real
//! control plane in opted-in namespaces, its pods injected by the real webhook, then run on this
//! host by the pod runner ([`runner`]) exactly as the API server stored them; requests sent to
//! the frontend; what a real OpenTelemetry Collector received checked trace by trace ([`check`]).
//!
//! Two shops, one per sampling mode:
//! - policy `e2e-traces` (agent sampling): 5 requests at ratio 1 must give exactly 5 complete
//!   traces; then the ratio is lowered to 0.25 live (ConfigMap rewritten, volumes synced, agents
//!   reload, no pod replaced) and 200 requests must keep a number of whole traces within the
//!   binomial bound ([`check::sampling_bound`]);
//! - policy `e2e-traces-sdk` (`sampling.mode: sdk`, ratio 0.25): the SDKs of all four languages
//!   sample from the injected `OTEL_TRACES_SAMPLER` (parent-based), the agents sample nothing out,
//!   and 200 requests must keep whole traces within the same bound.
//!
//! Both shops' service graphs, joined by the operator from the agents' probe traces, must be
//! exactly the shop's edges; a third namespace where `tax` sets its own propagator must be
//! reported broken on exactly that edge ([`continuity`]).
//! Then the after-rollout step ([`after_rollout`]): the baseline recorded at a soak's end matches
//! the load generated, and a workload made silent raises `Regression` within one review.
//! `E2E_ONLY=baseline make e2e-traces` runs only that step.
//!
//! It reuses the cluster suite's setup (`e2e/tests/suite/setup.rs`, see [`harness`]: chart in URL
//! mode, operator as a local process with the chart's ServiceAccount) and so owns the cluster's
//! Tracelight objects while it runs, like `make e2e`: both hold the lock file [`support::cluster_lock`] for
//! their whole run, so they never interleave on the shared cluster. Needs root (network
//! namespaces), the collector (`TRACELIGHT_OTELCOL`, from e2e/collector/build.sh) and the shop's
//! prepared content (e2e/apps/prepare.sh); without them it fails, never skips.

// The baseline at a soak's end and the review after it (issue 18).
mod after_rollout;
mod check;
mod collector;
mod continuity;
mod coverage;
// `make demo`'s trace (ignored; run by e2e/demo.sh).
mod demo;
mod harness;
// Two hostNetwork pods on one node.
mod hostnet;
// The operator's own traces (a separate test, sharing the harness and the collector).
mod operator_spans;
mod runner;
// Sampling rules and budgets on live agents (a separate test, sharing the harness and the shop).
mod sampling;
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
use support::objects::{assert_injected_with, assert_untouched, from_json, wait_injecting, ENABLED};
use support::{wait, StepLog};
use tracelight::api::TracingPolicy;
use tracelight_contract::config::{AgentConfig, ConfigFile, AGENT_CONFIGMAP};

/// Requests sent to the frontend; the collector must hold exactly this many traces.
const REQUESTS: usize = 5;
const POLICY: &str = "e2e-traces";
/// The policy of the second shop, whose SDKs sample.
const POLICY_SDK: &str = "e2e-traces-sdk";
/// Label selecting a shop namespace for one of the test's policies (`agent` or `sdk`), besides the
/// webhook's opt-in label.
const SHOP_LABEL: &str = "e2e.tracelight.io/traces";
/// The second phase: the policy's ratio lowered to this, then this many requests; the number of
/// complete traces kept must be within [`check::sampling_bound`], and none may be partial.
const SAMPLED_RATIO: f64 = 0.25;
const SAMPLED_REQUESTS: usize = 200;
/// How long spans may take to reach the collector (SDK batch delays are 5s).
const SPANS_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_flow_through_injected_pods() {
    let _lock = support::cluster_lock().expect("the e2e cluster lock");
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
    let mut suite = harness::setup::fresh_suite(log).await?;
    let result = async {
        log.step("operator: a local process as the chart's ServiceAccount (every trace a probe)");
        // Every trace a probe: the shop's few requests then show every edge.
        suite.operator_args.retain(|a| !a.starts_with("--probe-ratio="));
        suite.operator_args.push("--probe-ratio=1".into());
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

/// One instance of the shop: its namespace, policy, pods as stored, and the running pods.
struct Shop {
    ns: String,
    policy: TracingPolicy,
    pods: Vec<Pod>,
    running: Vec<RunningPod>,
}

impl Shop {
    /// Where each traced service's spans must say they come from.
    fn identities(&self, workloads: &[shop::Workload]) -> Vec<PodIdentity> {
        self.pods
            .iter()
            .zip(workloads)
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
            .collect()
    }

    /// The spans that came from this shop's namespace.
    fn spans_of(&self, spans: &[Span]) -> Vec<Span> {
        spans.iter().filter(|s| s.resource.get("k8s.namespace.name") == Some(&self.ns)).cloned().collect()
    }
}

/// Creates a namespace labelled `e2e.tracelight.io/traces=<mode>`, a policy selecting it, and the
/// shop's workloads in it; checks how the webhook injected the pods.
/// The injector settings of the operator as `suite` runs it: the chart's, and the report
/// interval when a test sets `--agent-report-interval` (whole seconds).
fn inject_options(suite: &harness::Suite) -> tracelight::inject::InjectOptions {
    let interval = suite.operator_args.iter().rev().find_map(|a| {
        let secs = a.strip_prefix("--agent-report-interval=")?.strip_suffix('s')?;
        Some(secs.parse().expect("--agent-report-interval in whole seconds, like 10s"))
    });
    tracelight::inject::InjectOptions { report_interval_secs: interval, ..support::objects::operator_inject_options() }
}

async fn deploy_shop(
    suite: &mut harness::Suite,
    name: &str,
    mode: &str,
    sampling: serde_json::Value,
    endpoint: &str,
) -> anyhow::Result<Shop> {
    let (log, client) = (suite.log.clone(), suite.cluster.client.clone());
    log.step(&format!("policy {name} (sampling {sampling}) and its opted-in namespace"));
    let ns = suite.namespaces.create("shop", &[ENABLED, (SHOP_LABEL, mode)]).await?;
    let policy: TracingPolicy = from_json(serde_json::json!({
        "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {SHOP_LABEL: mode}},
            "collector": {"endpoint": endpoint, "protocol": "grpc"},
            "sampling": sampling,
            "resourceAttributes": {"deployment.environment": "e2e"}
        }
    }))?;
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    let policy = harness::wait_active(&client, name, &ns).await?;
    wait_injecting(&client, &ns, Duration::from_secs(30)).await?;
    log.note(&format!("policy {name}: namespace {ns} Active"));

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
            assert_injected_with(&pod, w.name, &policy, &inject_options(suite))?;
            log.note(&format!("{ns}/{}: pod {} injected, on node {}", w.name, pod.name_any(), node_of(&pod)));
        } else {
            assert_untouched(&pod)?;
            log.note(&format!("{ns}/{}: pod {} opted out, untouched", w.name, pod.name_any()));
        }
        pods.push(pod);
    }
    Ok(Shop { ns, policy, pods, running: Vec::new() })
}

/// Runs the shop's pods on this host: one network namespace each, Service names of the shop's
/// namespace in their hosts files.
async fn run_shop(
    shop: &mut Shop,
    client: &Client,
    network: &mut Network,
    images: &runner::images::Images,
    dir: &std::path::Path,
    extra_hosts: &[(Ipv4Addr, Vec<String>)],
    log: &StepLog,
) -> anyhow::Result<()> {
    let ns = shop.ns.clone();
    log.step(&format!("run the injected pods of {ns} on this host"));
    let inputs = PodInputs::from_objects(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
        &Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
    );
    let inputs = PodInputs { host_ip: Some(network.host_ip()), ..inputs };
    let nets: Vec<_> = shop.pods.iter().map(|_| network.add_pod()).collect::<anyhow::Result<_>>()?;
    let services = Api::<Service>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let mut hosts = hosts_entries(&ns, &shop.pods, &nets.iter().map(|n| n.ip).collect::<Vec<_>>(), &services)?;
    hosts.extend_from_slice(extra_hosts);
    for net in &nets {
        network.write_hosts(net, &hosts)?;
    }
    for (pod, net) in shop.pods.iter().zip(nets) {
        let pod_dir = dir.join(&ns).join(pod.name_any());
        let inputs = PodInputs { tokens: runner::token::projected_tokens(client, pod).await?, ..inputs.clone() };
        shop.running.push(runner::pod::start(pod, images, net, &inputs, &pod_dir).await?);
        log.note(&format!("{ns}/{}: running, ready (logs in {})", pod.name_any(), pod_dir.join("logs").display()));
    }
    Ok(())
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
    let mut collector = Collector::start(otelcol, &dir.join("collector"), grpc).await?;
    let endpoint = format!("http://{grpc}");

    // The agent samples (ratio 1, then lowered live) in one namespace; the SDKs sample at
    // SAMPLED_RATIO (the injected OTEL_TRACES_SAMPLER, parent-based) in another.
    let mut shops = vec![
        deploy_shop(suite, POLICY, "agent", serde_json::json!({"ratio": 1}), &endpoint).await?,
        deploy_shop(suite, POLICY_SDK, "sdk", serde_json::json!({"ratio": SAMPLED_RATIO, "mode": "sdk"}), &endpoint)
            .await?,
    ];
    let workloads = shop::workloads();
    for (pod, w) in shops[1].pods.iter().zip(&workloads).filter(|(_, w)| w.traced) {
        let env = support::objects::app_env(pod);
        let sampler = (env.get("OTEL_TRACES_SAMPLER").map(String::as_str), env.get("OTEL_TRACES_SAMPLER_ARG"));
        ensure!(
            sampler == (Some("parentbased_traceidratio"), Some(&SAMPLED_RATIO.to_string())),
            "{}: SDK sampling env is {sampler:?}",
            w.name
        );
    }
    let images = shop::images(&shops[0].policy)?;
    // The agents report to the operator's Service; here, a forwarder on the bridge to the operator.
    let report_service = runner::forward::Forwarder::start(
        SocketAddr::from((network.host_ip(), 443)),
        SocketAddr::from(([127, 0, 0, 1], suite.webhook_port)),
    )
    .await?;
    let extra_hosts = [coverage::operator_hosts_entry(network.host_ip(), harness::NAMESPACE, "tracelight-webhook")];
    let mut broken = None;
    let mut variant = None;
    let mut hostnet = None;
    let mut after = None;
    if std::env::var("E2E_ONLY").as_deref() == Ok("baseline") {
        // Only the after-rollout step (the shops are deployed, not run): a quicker loop.
        let after = after_rollout::run(suite, &mut network, &images, &dir, &extra_hosts, &collector, &endpoint).await;
        return after.map(|mut shop| shop.running.iter_mut().for_each(|p| p.stop()));
    }
    let result = async {
        for shop in shops.iter_mut() {
            run_shop(shop, &client, &mut network, &images, &dir, &extra_hosts, &log).await?;
        }
        let (agent, sdk) = shops.split_at_mut(1);
        let (agent, sdk) = (&mut agent[0], &mut sdk[0]);
        let topology = shop::topology(&agent.policy);
        let (agent_ids, sdk_ids) = (agent.identities(&workloads), sdk.identities(&workloads));

        exercise(&log, &collector, agent, &workloads, &topology, &agent_ids).await?;
        let first: BTreeSet<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
        resample(&log, &client, agent, &workloads).await?;
        log.step(&format!("{SAMPLED_REQUESTS} requests to the shop in {} (SDKs sample at {SAMPLED_RATIO})", sdk.ns));
        send_requests(sdk, &workloads, SAMPLED_REQUESTS).await?;
        check_reports(&log, sdk, &workloads, &sdk.policy.clone(), false).await?;

        // Coverage: a workload with its tracing broken on purpose is silent, and verify says so.
        let broken =
            broken.insert(coverage::run_broken(&log, &client, agent, &mut network, &images, &dir, &extra_hosts).await?);
        let mut want = coverage::shop_states(&workloads);
        want.insert(broken.pods[0].labels()["app"].as_str(), tracelight::api::CoverageState::Silent);
        log.step(&format!("coverage in the status of {POLICY}: shop services Reporting, tax-legacy Silent"));
        coverage::wait_coverage(&client, POLICY, &agent.ns, &want).await?;
        let covered = coverage::wait_coverage(&client, POLICY_SDK, &sdk.ns, &coverage::shop_states(&workloads)).await?;
        coverage::check_agent_versions(&covered, &sdk.ns)?;
        log.note(&format!("status: every reporting workload's agents run {}", tracelight_contract::VERSION));
        let binary = support::operator::binary();
        let (code, table) = coverage::verify(&binary, &suite.cluster.kubeconfig, POLICY, &agent.ns)?;
        eprint!("{table}");
        ensure!(code == 1, "tracelight verify exited {code} with a silent workload:\n{table}");
        ensure!(table.contains(&format!("FAIL {}/Deployment/tax-legacy ({POLICY}): silent", agent.ns)), "{table}");
        ensure!(table.contains("1 of 7 workloads send no spans"), "{table}");
        let (code, table) = coverage::verify(&binary, &suite.cluster.kubeconfig, POLICY_SDK, &sdk.ns)?;
        eprint!("{table}");
        ensure!(code == 0 && table.contains("OK: every instrumented workload sends spans"), "exit {code}:\n{table}");
        log.note("tracelight verify: exit 1 naming tax-legacy as silent; exit 0 for the fully covered shop");

        // Trace continuity: both shops' graphs are the shop's edges, connected.
        let traced: Vec<&str> = workloads.iter().filter(|w| w.traced).map(|w| w.name).collect();
        for (policy, ns) in [(POLICY, &agent.ns), (POLICY_SDK, &sdk.ns)] {
            log.step(&format!("service graph of {ns} in the status of {policy}: the shop's edges, connected"));
            let edges = continuity::wait_connected(&client, policy, ns, &traced).await?;
            let calls: Vec<String> = edges.iter().map(|e| format!("{} -> {} ({})", e.from, e.to, e.calls)).collect();
            log.note(&format!("{ns}: {}", calls.join(", ")));
        }
        let (code, table) = coverage::verify(&binary, &suite.cluster.kubeconfig, POLICY_SDK, &sdk.ns)?;
        ensure!(code == 0 && table.contains(" Connected "), "the connected shop fails verify: exit {code}:\n{table}");
        let (code, text) = continuity::graph(&binary, &suite.cluster.kubeconfig, POLICY_SDK, &sdk.ns, false)?;
        eprint!("{text}");
        ensure!(code == 0 && continuity::graph_lists(&text, &sdk.ns), "tracelight graph: exit {code}:\n{text}");
        log.note("tracelight verify passes the connected shop; tracelight graph lists its 4 edges, none broken");

        // A service whose own env sets a propagator its caller does not use.
        let shop_label = (SHOP_LABEL, "agent");
        let v = variant.insert(
            continuity::run_propagator_variant(
                suite,
                shop_label,
                &agent.policy,
                &mut network,
                &images,
                &dir,
                &extra_hosts,
            )
            .await?,
        );
        let edge = continuity::wait_broken_by_override(&client, POLICY, &v.ns).await?;
        log.note(&format!(
            "{}: {} -> {} broken ({} of {} calls), PropagatorOverride",
            v.ns, edge.from, edge.to, edge.broken, edge.calls
        ));
        let (code, table) = coverage::verify(&binary, &suite.cluster.kubeconfig, POLICY, &v.ns)?;
        eprint!("{table}");
        let named = format!("broken trace link {}/pricing -> {}/tax: PropagatorOverride", v.ns, v.ns);
        ensure!(
            code == 1 && table.contains(&named),
            "tracelight verify exited {code}, want 1 naming {named}:\n{table}"
        );
        let (_, dot) = continuity::graph(&binary, &suite.cluster.kubeconfig, POLICY, &v.ns, true)?;
        eprint!("{dot}");
        ensure!(dot.contains("PropagatorOverride\", color=red"), "tracelight graph -o dot:\n{dot}");
        log.note("tracelight verify: exit 1 naming the broken edge and its cause; graph -o dot draws it red");

        let hostnet = hostnet
            .insert(hostnet::run(suite, &mut network, &images, &dir, &extra_hosts, &collector, &endpoint).await?);
        let after = after
            .insert(after_rollout::run(suite, &mut network, &images, &dir, &extra_hosts, &collector, &endpoint).await?);

        // Then everything is flushed and stopped (apps, agents, collector, in that order) and the
        // final output checked: nothing arrived late, twice, split, or from elsewhere.
        log.step("stop the pods (SIGTERM: SDKs and agents flush) and the collector; check the final output");
        for pod in agent.running.iter_mut().chain(sdk.running.iter_mut()) {
            pod.stop();
        }
        for pod in broken
            .running
            .iter_mut()
            .chain(hostnet.running.iter_mut())
            .chain(variant.iter_mut().flat_map(|v| v.running.iter_mut()))
            .chain(after.running.iter_mut())
        {
            pod.stop();
        }
        collector.stop()?;
        let spans = collector.spans();
        let stray: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                let ns = s.resource.get("k8s.namespace.name");
                let ours = [Some(&agent.ns), Some(&sdk.ns), Some(&hostnet.ns), variant.as_ref().map(|v| &v.ns)];
                !ours.contains(&ns) && ns != Some(&after.ns)
            })
            .collect();
        ensure!(
            stray.is_empty(),
            "spans from no namespace of the test: {:?}",
            stray.iter().map(|s| s.describe()).collect::<Vec<_>>()
        );
        let (all_at_once, sampled): (Vec<Span>, Vec<Span>) =
            agent.spans_of(&spans).into_iter().partition(|s| first.contains(&s.trace_id));
        check::check(&all_at_once, REQUESTS, &topology, &agent_ids)
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
        let (lo, hi) = check::sampling_bound(SAMPLED_REQUESTS, SAMPLED_RATIO);
        for (what, spans, ids) in [("agent", sampled, &agent_ids), ("sdk", sdk.spans_of(&spans), &sdk_ids)] {
            let kept = check::check_complete(&spans, &topology, ids).with_context(|| {
                format!("{what} sampling at {SAMPLED_RATIO}: a kept trace is incomplete (split by sampling?)")
            })?;
            ensure!(
                (lo..=hi).contains(&kept),
                "{what} sampling at {SAMPLED_RATIO}: {kept} of {SAMPLED_REQUESTS} traces kept, outside [{lo}, {hi}] \
                 (mean ± 5 sd)"
            );
            log.note(&format!(
                "{what} sampling at {SAMPLED_RATIO}: {kept} of {SAMPLED_REQUESTS} traces kept (bound [{lo}, {hi}]), \
                 every one complete ({} spans)",
                spans.len()
            ));
        }
        anyhow::Ok(())
    }
    .await;
    let logs: String = shops.iter().flat_map(|s| s.running.iter()).map(|p| p.log_tails(30)).collect();
    drop(shops);
    drop(broken);
    drop(variant);
    drop(hostnet);
    drop(after);
    drop(report_service);
    drop(collector);
    drop(network);
    // The failure first, then what the containers printed.
    result.map_err(|e| anyhow::anyhow!("{e:#}\n\ncontainer logs (last lines):\n{logs}"))
}

/// Sends `n` checkout requests to the shop's frontend; each must succeed.
async fn send_requests(shop: &Shop, workloads: &[shop::Workload], n: usize) -> anyhow::Result<()> {
    let at = workloads.iter().position(|w| w.name == "frontend").context("no frontend")?;
    let (ip, port) = (shop.running[at].net.ip, workloads[at].port.context("the frontend has no port")?);
    for i in 0..n {
        let sku = ["book", "lamp", "mug"][i % 3];
        let (status, body) = http_get(ip, port, &format!("/checkout?sku={sku}")).await?;
        ensure!(status == 200, "GET /checkout?sku={sku}: HTTP {status}: {body}");
        ensure!(body.contains("\"quantity\""), "GET /checkout?sku={sku}: no quantity in {body}");
    }
    Ok(())
}

/// Every agent of the shop lost nothing; it sampled spans out when `agent_samples`, and none
/// when the SDKs sample.
async fn check_reports(
    log: &StepLog,
    shop: &Shop,
    workloads: &[shop::Workload],
    policy: &TracingPolicy,
    agent_samples: bool,
) -> anyhow::Result<()> {
    let admin = policy.spec.agent.ports.admin;
    for (pod, _) in shop.running.iter().zip(workloads).filter(|(_, w)| w.traced) {
        // The admin server is on the pod's loopback; on the pod IP only /healthz answers (the
        // runner's probes passed there).
        let (status, body) = pod.loopback_get(admin, "/report").await?;
        ensure!(status == 200, "{}: GET /report on the pod's loopback: HTTP {status}", pod.name);
        let (outside, _) = http_get(pod.net.ip, admin, "/report").await?;
        ensure!(outside == 404, "{}: GET /report on the pod IP {}: HTTP {outside}, want 404", pod.name, pod.net.ip);
        let report: serde_json::Value = serde_json::from_str(&body)?;
        let spans = &report["spans"];
        let dropped: u64 = spans["dropped"].as_object().into_iter().flatten().filter_map(|(_, n)| n.as_u64()).sum();
        ensure!(dropped == 0, "{}: the agent dropped spans: {spans}", pod.name);
        let sampled_out = spans["sampledOut"].as_u64().unwrap_or(0);
        ensure!(
            (sampled_out > 0) == agent_samples,
            "{}: the agent sampled out {sampled_out} spans (agent sampling: {agent_samples}): {spans}",
            pod.name
        );
        log.note(&format!("{}/{}: agent report {spans}", shop.ns, pod.name));
    }
    Ok(())
}

async fn exercise(
    log: &StepLog,
    collector: &Collector,
    shop: &mut Shop,
    workloads: &[shop::Workload],
    topology: &Topology,
    identities: &[PodIdentity],
) -> anyhow::Result<()> {
    log.step(&format!("{REQUESTS} requests to the shop in {} (ratio 1)", shop.ns));
    send_requests(shop, workloads, REQUESTS).await?;
    log.step("the collector's output: one complete trace per request");
    let deadline = Instant::now() + SPANS_DEADLINE;
    loop {
        let spans = shop.spans_of(&collector.spans());
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
    for pod in shop.running.iter_mut() {
        let exited = pod.exited();
        ensure!(exited.is_empty(), "pod {}: containers exited: {exited:?}", pod.name);
    }
    Ok(())
}

/// Lowers the policy's sampling ratio, waits until every agent runs the new config (the
/// controller rewrites the namespace's ConfigMap, the runner syncs it into the pods' volumes like
/// the kubelet, the agents reload it live), then sends [`SAMPLED_REQUESTS`] requests.
async fn resample(log: &StepLog, client: &Client, shop: &mut Shop, workloads: &[shop::Workload]) -> anyhow::Result<()> {
    let (ns, policy, name) = (shop.ns.clone(), shop.policy.clone(), shop.policy.name_any());
    let ns = ns.as_str();
    log.step(&format!("sampling: the policy's ratio set to {SAMPLED_RATIO}; agents reload it live"));
    let patch = serde_json::json!({"spec": {"sampling": {"ratio": SAMPLED_RATIO}}});
    Api::<TracingPolicy>::all(client.clone()).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    wait::until(
        &format!("the agent ConfigMap in {ns} to carry ratio {SAMPLED_RATIO}"),
        Duration::from_secs(60),
        || async {
            let cm = configmaps.get(AGENT_CONFIGMAP).await?;
            let file = ConfigFile::CURRENT.key();
            let text = cm.data.as_ref().and_then(|d| d.get(file)).with_context(|| format!("no {file}"))?;
            let config = AgentConfig::parse(text.as_bytes())?.config;
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
    for (pod, w) in shop.running.iter_mut().zip(workloads) {
        pod.sync_volumes(&inputs)?;
        if !w.traced {
            continue;
        }
        let pod = &*pod;
        wait::until(
            &format!("the agent of {} to apply ratio {SAMPLED_RATIO}", pod.name),
            Duration::from_secs(30),
            || async {
                let (status, body) = pod.loopback_get(admin, "/report").await?;
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
    let ran: BTreeSet<String> = shop.running.iter().map(|p| p.name.clone()).collect();
    ensure!(now == ran, "the sampling change replaced pods: they are {now:?}, were {ran:?}");
    log.note(&format!("every agent reports ratio {SAMPLED_RATIO}; no pod was replaced"));
    log.step(&format!("{SAMPLED_REQUESTS} requests to the shop in {ns}"));
    send_requests(shop, workloads, SAMPLED_REQUESTS).await?;
    // The agents did the sampling (the SDKs sample parent-based always-on) and lost nothing.
    check_reports(log, shop, workloads, &policy, true).await
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
