//! Sampling rules and budgets on live agents (issue 17), with the shop's real SDKs, the real
//! control plane and a real collector:
//!
//! 1. **A budget holds.** The inventory service (Rust SDK) is made noisy — requests sent to it
//!    directly at [`NOISY_RPS`], two spans each — under a rule with a `spansPerSecond` budget of
//!    [`BUDGET`]. The operator measures the rule's pre-sampling rate from the agents' reports
//!    and pushes the rule's effective ratio through the namespace's ConfigMap. The kept rate (the
//!    agent's own per-rule counter, what the budget limits) must be within ±10% of the budget
//!    over the window ending [`CONVERGED_BY`] after the load started, and over every window
//!    after it; no pod is replaced and no container or agent restarts.
//! 2. **A ratio lowered live takes effect.** A rule keeping the pricing and tax services' spans
//!    at ratio 1 is set to [`LOWERED_RATIO`]; their agents must drop spans of the rule within
//!    [`RATIO_DEADLINE`] of the patch, and keep a fraction within the binomial bound after.
//! 3. **Whole traces at the lowest ratio.** Checkout traces cross every service; the inventory's
//!    budgeted ratio is the lowest on their path. Every checkout trace the collector holds an
//!    inventory span of must be complete (consistent sampling: a trace kept at the lowest ratio
//!    is kept by every agent on its path).
//!
//! The report interval is shortened to [`REPORT_INTERVAL_SECS`] with the operator's
//! `--agent-report-interval` (the budget loop follows it), and the runner syncs ConfigMap volumes
//! every [`VOLUME_SYNC`] (the kubelet's sync, shortened the same way): the arithmetic does not
//! depend on the interval, and the suite stays short.

use crate::collector::{Collector, Span};
use crate::runner::env::PodInputs;
use crate::runner::net::Network;
use crate::{check, coverage, harness, http_get, runner, shop, support, Shop};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::StepLog;
use tracelight::api::TracingPolicy;
use tracelight_contract::report::AgentReport;

const POLICY: &str = "e2e-sampling";
/// The shop namespace's `e2e.tracelight.io/traces` label value.
const MODE: &str = "sampling";
const REPORT_INTERVAL_SECS: u64 = 10;
const VOLUME_SYNC: Duration = Duration::from_secs(2);
/// The budgeted rule, on the inventory workload.
const NOISY_RULE: &str = "inventory-budget";
/// Kept spans per second allowed for the inventory.
const BUDGET: f64 = 75.0;
/// Requests per second sent to the inventory directly (a server and a SQLite span each).
const NOISY_RPS: u32 = 150;
/// Checkout requests per second through the frontend (a trace across every service).
const CHECKOUT_RPS: u32 = 4;
/// The kept rate is measured over windows of this length: at the budget, ~1450 inventory
/// traces each, so the sampling noise is ~2.3% (one sd) against the ±10% allowed.
const WINDOW: Duration = Duration::from_secs(40);
/// The first window must end by then (from the load's start).
const CONVERGED_BY: Duration = Duration::from_secs(90);
/// How long the budget is watched in all (windows of [`WINDOW`] after [`CONVERGED_BY`]).
const BUDGET_WATCH: Duration = Duration::from_secs(130);
/// The rule on pricing and tax, lowered live from 1 to [`LOWERED_RATIO`].
const PRICING_RULE: &str = "checkout-pricing";
/// Above the inventory's budgeted ratio (~0.24), so the inventory stays the lowest on the path.
const LOWERED_RATIO: f64 = 0.5;
const RATIO_DEADLINE: Duration = Duration::from_secs(30);
/// How long the lowered ratio is watched after it took effect.
const LOWERED_WATCH: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_and_rules_hold_on_live_agents() {
    let _lock = support::cluster_lock().expect("the e2e cluster lock");
    let log = StepLog::new();
    let result = run(&log).await;
    eprintln!("\n[sampling] finished in {:.1}s", log.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("sampling e2e failed: {e:#}");
    }
}

async fn run(log: &StepLog) -> anyhow::Result<()> {
    let otelcol = crate::required_path("TRACELIGHT_OTELCOL", "run `make e2e-traces` (it builds the collector)")?;
    shop::cache_dir()?;
    let mut suite = harness::setup::fresh_suite(log).await?;
    let result = async {
        log.step(&format!("operator: a local process, agents reporting every {REPORT_INTERVAL_SECS}s"));
        suite.operator_args.push(format!("--agent-report-interval={REPORT_INTERVAL_SECS}s"));
        suite.start_operator().await?;
        sampling(&mut suite, &otelcol).await
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

/// The policy's sampling with the pricing rule at `pricing_ratio`.
fn policy_sampling(pricing_ratio: f64) -> serde_json::Value {
    json!({
        "ratio": 1,
        "rules": [
            {
                "name": NOISY_RULE,
                "match": {"workloads": [{"kind": "Deployment", "name": "inventory"}]},
                "spansPerSecond": BUDGET as u32
            },
            {
                "name": PRICING_RULE,
                "match": {"workloads": [{"name": "pricing"}, {"name": "tax"}]},
                "ratio": pricing_ratio
            }
        ]
    })
}

async fn sampling(suite: &mut harness::Suite, otelcol: &std::path::Path) -> anyhow::Result<()> {
    let log = suite.log.clone();
    let client = suite.cluster.client.clone();
    Network::remove_leftovers()?;
    let mut network = Network::create()?;
    let dir = support::work_dir().join(format!("sampling-{}", network.id));
    log.step(&format!("collector: {} on the pods' bridge (files in {})", otelcol.display(), dir.display()));
    let grpc = SocketAddr::from((network.host_ip(), support::free_port()));
    let mut collector = Collector::start(otelcol, &dir.join("collector"), grpc).await?;
    let endpoint = format!("http://{grpc}");
    let mut shop = crate::deploy_shop(suite, POLICY, MODE, policy_sampling(1.0), &endpoint).await?;
    let workloads = shop::workloads();
    check_report_interval(&shop, &workloads)?;
    let images = shop::images(&shop.policy)?;
    let report_service = runner::forward::Forwarder::start(
        SocketAddr::from((network.host_ip(), 443)),
        SocketAddr::from(([127, 0, 0, 1], suite.webhook_port)),
    )
    .await?;
    let extra_hosts = [coverage::operator_hosts_entry(network.host_ip(), harness::NAMESPACE, "tracelight-webhook")];
    let result = async {
        crate::run_shop(&mut shop, &client, &mut network, &images, &dir, &extra_hosts, &log).await?;
        let pods_before = pod_names(&client, &shop.ns).await?;
        let load = Load::start(&shop, &workloads)?;
        let mut watch = Watch::new(&client, &shop, &workloads);

        budget_holds(&log, &mut watch, &mut shop, &load).await?;
        ratio_lowered_live(&log, &client, &mut watch, &mut shop).await?;

        log.step("stop the load; no pod replaced, no container or agent restarted");
        let (load_started, load_wall) = (load.started, load.started_wall);
        let (sent, failed, failed_checkouts) = load.stop().await;
        ensure!(
            failed * 100 <= sent && failed_checkouts == 0,
            "{failed} of {sent} requests failed, checkouts {failed_checkouts}"
        );
        // The worker's last tasks, before the pods stop.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pods_after = pod_names(&client, &shop.ns).await?;
        ensure!(pods_after == pods_before, "pods replaced: {pods_before:?} -> {pods_after:?}");
        for pod in shop.running.iter_mut() {
            let exited = pod.exited();
            ensure!(exited.is_empty(), "pod {}: containers exited: {exited:?}", pod.name);
        }
        log.note(&format!(
            "{sent} requests ({failed} failed); pods {pods_after:?} unchanged; agents' uptime never went back"
        ));
        budget_status(&log, &client).await?;

        // From the first measured window on, the budget holds by the ratio alone: the local cap,
        // which is not consistent across pods and so cuts traces, must not have acted.
        let settled = CONVERGED_BY - WINDOW;
        let inventory = watch.samples("inventory");
        let capped_from = nearest(inventory, load_started + settled).map_or(0, |s| s.capped);
        let capped = inventory.last().map_or(0, |s| s.capped) - capped_from;
        ensure!(capped == 0, "the inventory's local cap dropped {capped} spans after the ratio had settled");

        log.step("stop the pods (SDKs and agents flush) and the collector; check the kept checkout traces");
        for pod in shop.running.iter_mut() {
            pod.stop();
        }
        collector.stop()?;
        let from = load_wall + settled;
        let from = from.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
        whole_traces(&log, &shop, &workloads, &collector.spans(), from)
    }
    .await;
    let logs: String = shop.running.iter().map(|p| p.log_tails(30)).collect();
    drop(shop);
    drop(report_service);
    drop(collector);
    drop(network);
    result.map_err(|e| anyhow::anyhow!("{e:#}\n\ncontainer logs (last lines):\n{logs}"))
}

/// The injected agents carry the operator's report interval.
fn check_report_interval(shop: &Shop, workloads: &[shop::Workload]) -> anyhow::Result<()> {
    let flag = format!("--report-interval-secs={REPORT_INTERVAL_SECS}");
    for (pod, _) in shop.pods.iter().zip(workloads).filter(|(_, w)| w.traced) {
        let spec = pod.spec.as_ref().context("pod without spec")?;
        let agent = spec.init_containers.iter().flatten().find(|c| c.name == tracelight::inject::AGENT_CONTAINER);
        let args = agent.and_then(|c| c.args.clone()).unwrap_or_default();
        ensure!(args.contains(&flag), "{}: agent args {args:?} lack {flag}", pod.name_any());
    }
    Ok(())
}

async fn pod_names(client: &Client, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await?.items;
    Ok(pods.iter().map(|p| format!("{} (uid {})", p.name_any(), p.uid().unwrap_or_default())).collect())
}

/// Requests sent in the background: the inventory directly (the noisy workload), and checkouts
/// through the frontend.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Failed checkouts: their traces would be incomplete, so there must be none.
    failed_checkouts: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    started_wall: std::time::SystemTime,
}

impl Load {
    fn start(shop: &Shop, workloads: &[shop::Workload]) -> anyhow::Result<Load> {
        let address = |name: &str| -> anyhow::Result<(Ipv4Addr, u16)> {
            let at = workloads.iter().position(|w| w.name == name).with_context(|| format!("no {name}"))?;
            Ok((shop.running[at].net.ip, workloads[at].port.with_context(|| format!("{name} has no port"))?))
        };
        let mut load = Load {
            stop: Arc::default(),
            sent: Arc::default(),
            failed: Arc::default(),
            failed_checkouts: Arc::default(),
            tasks: Vec::new(),
            started: Instant::now(),
            started_wall: std::time::SystemTime::now(),
        };
        // Several senders, each at its share of the rate, so one slow answer does not stall it.
        const NOISY_SENDERS: u32 = 10;
        let inventory = address("inventory")?;
        for i in 0..NOISY_SENDERS {
            let sku = ["book", "lamp", "mug"][i as usize % 3];
            let failed = load.failed.clone();
            load.spawn(inventory, format!("/stock?sku={sku}"), NOISY_RPS / NOISY_SENDERS, failed);
        }
        let failed = load.failed_checkouts.clone();
        load.spawn(address("frontend")?, "/checkout?sku=mug".into(), CHECKOUT_RPS, failed);
        Ok(load)
    }

    fn spawn(&mut self, (ip, port): (Ipv4Addr, u16), path: String, rps: u32, failed: Arc<AtomicU64>) {
        let (stop, sent) = (self.stop.clone(), self.sent.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(http_get(ip, port, &path).await, Ok((200, _))) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    /// Stops the senders; requests sent, failed, and failed checkouts.
    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (load(&self.sent), load(&self.failed), load(&self.failed_checkouts))
    }
}

/// One look at an agent's report.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    /// `(received, kept)` of the rules, by name.
    rules: BTreeMap<String, (u64, u64)>,
    /// Spans the local caps dropped, all rules.
    capped: u64,
    generation: i64,
}

/// The agents' reports, polled: the counters behind every measurement here, and the check that
/// no agent restarted (its uptime never goes back) and that the ConfigMap reaches the pods.
struct Watch {
    client: Client,
    ns: String,
    /// Agents by workload name: the pod's index in the shop's running pods, and the admin port
    /// (`/report` answers on the pod's loopback only).
    agents: BTreeMap<String, (usize, u16)>,
    samples: BTreeMap<String, Vec<Sample>>,
    uptime: BTreeMap<String, u64>,
    synced: Instant,
}

impl Watch {
    fn new(client: &Client, shop: &Shop, workloads: &[shop::Workload]) -> Watch {
        let admin = shop.policy.spec.agent.ports.admin;
        let agents = shop
            .running
            .iter()
            .zip(workloads)
            .enumerate()
            .filter(|(_, (_, w))| w.traced)
            .map(|(i, (_, w))| (w.name.to_string(), (i, admin)))
            .collect();
        Watch {
            client: client.clone(),
            ns: shop.ns.clone(),
            agents,
            samples: BTreeMap::new(),
            uptime: BTreeMap::new(),
            synced: Instant::now(),
        }
    }

    /// Polls `workloads`' agents every `every` for `for_`, syncing the pods' volumes like the
    /// kubelet in between; stops early when `done` says so.
    async fn poll(
        &mut self,
        shop: &mut Shop,
        workloads: &[&str],
        every: Duration,
        for_: Duration,
        mut done: impl FnMut(&Watch) -> bool,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + for_;
        while Instant::now() < end {
            let next = Instant::now() + every;
            for name in workloads {
                let sample = self.sample(shop, name).await?;
                self.samples.entry(name.to_string()).or_default().push(sample);
            }
            if self.synced.elapsed() >= VOLUME_SYNC {
                self.sync_volumes(shop).await?;
            }
            if done(self) {
                return Ok(());
            }
            tokio::time::sleep_until(next.into()).await;
        }
        Ok(())
    }

    async fn sample(&mut self, shop: &Shop, name: &str) -> anyhow::Result<Sample> {
        let (pod, port) = self.agents[name];
        let (status, body) = shop.running[pod].loopback_get(port, "/report").await?;
        let at = Instant::now();
        ensure!(status == 200, "{name}: GET /report: HTTP {status}");
        let report: AgentReport = serde_json::from_str(&body).with_context(|| format!("{name}: report {body}"))?;
        let before = self.uptime.insert(name.to_string(), report.uptime_seconds).unwrap_or(0);
        ensure!(
            report.uptime_seconds >= before,
            "{name}: the agent restarted (uptime {before}s, then {}s)",
            report.uptime_seconds
        );
        let rules = report.sampling_rules.iter().map(|(rule, c)| (rule.clone(), (c.received, c.kept))).collect();
        let capped = report.sampling_rules.values().map(|c| c.capped).sum();
        Ok(Sample { at, rules, capped, generation: report.config_generation })
    }

    /// The namespace's ConfigMaps and Secrets written into the pods' volumes, as the kubelet does.
    async fn sync_volumes(&mut self, shop: &mut Shop) -> anyhow::Result<()> {
        let inputs = PodInputs::from_objects(
            &Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns).list(&ListParams::default()).await?.items,
            &Api::<Secret>::namespaced(self.client.clone(), &self.ns).list(&ListParams::default()).await?.items,
        );
        for pod in shop.running.iter_mut() {
            pod.sync_volumes(&inputs)?;
        }
        self.synced = Instant::now();
        Ok(())
    }

    fn samples(&self, workload: &str) -> &[Sample] {
        self.samples.get(workload).map_or(&[], Vec::as_slice)
    }
}

/// `(received, kept)` of `rule` in `sample`.
fn counts(sample: &Sample, rule: &str) -> (u64, u64) {
    sample.rules.get(rule).copied().unwrap_or_default()
}

/// The sample taken closest to `at`.
fn nearest(samples: &[Sample], at: Instant) -> Option<&Sample> {
    samples.iter().min_by_key(|s| if s.at > at { s.at - at } else { at - s.at })
}

/// `(received, kept)` spans per second of `rule` between the samples nearest to `from` and `to`.
fn rates(samples: &[Sample], rule: &str, from: Instant, to: Instant) -> Option<(f64, f64)> {
    let (a, b) = (nearest(samples, from)?, nearest(samples, to)?);
    let secs = b.at.checked_duration_since(a.at)?.as_secs_f64();
    let ((received_a, kept_a), (received_b, kept_b)) = (counts(a, rule), counts(b, rule));
    (secs > 0.0).then(|| ((received_b - received_a) as f64 / secs, (kept_b - kept_a) as f64 / secs))
}

/// Step 1: the inventory's kept rate reaches its budget within ±10% by [`CONVERGED_BY`] and stays.
async fn budget_holds(log: &StepLog, watch: &mut Watch, shop: &mut Shop, load: &Load) -> anyhow::Result<()> {
    log.step(&format!(
        "budget: {NOISY_RPS} requests/s to the inventory (2 spans each) and {CHECKOUT_RPS} checkouts/s; \
         rule {NOISY_RULE} keeps at most {BUDGET} spans/s"
    ));
    let since_start = load.started.elapsed();
    watch
        .poll(shop, &["inventory"], Duration::from_secs(2), BUDGET_WATCH.saturating_sub(since_start), |_| false)
        .await?;
    let samples = watch.samples("inventory");
    let start = load.started;
    let first_generation = samples.first().map(|s| s.generation).unwrap_or_default();
    if let Some(changed) = samples.iter().find(|s| s.generation != first_generation) {
        log.note(&format!(
            "the inventory's agent ran a new config (generation {}) {:.0}s after the load started",
            changed.generation,
            (changed.at - start).as_secs_f64()
        ));
    }
    let mut windows = Vec::new();
    let mut end = CONVERGED_BY;
    while end <= BUDGET_WATCH {
        let (received, kept) = rates(samples, NOISY_RULE, start + end - WINDOW, start + end).context("no samples")?;
        windows.push((end, kept, received));
        end += WINDOW;
    }
    let received = {
        let (a, b) = (samples.first().context("no samples")?, samples.last().context("no samples")?);
        (counts(b, NOISY_RULE).0 - counts(a, NOISY_RULE).0) as f64 / (b.at - a.at).as_secs_f64()
    };
    // Each window's received rate too: a kept rate off the budget in a window whose load was
    // off as well is the load generator's doing, not the budget loop's; the message tells which.
    let described: Vec<String> = windows
        .iter()
        .map(|(end, rate, received)| {
            format!(
                "{:.0}-{:.0}s: kept {rate:.1}/s of {received:.0}/s",
                (*end - WINDOW).as_secs_f64(),
                end.as_secs_f64()
            )
        })
        .collect();
    log.note(&format!("inventory received {received:.0} spans/s; {}", described.join(", ")));
    for (end, rate, _) in &windows {
        ensure!(
            (rate - BUDGET).abs() <= 0.1 * BUDGET,
            "kept {rate:.1} spans/s over the {WINDOW:?} ending {end:?} after the load started, not within 10% of \
             the budget {BUDGET} (all windows: {described:?}; received {received:.0}/s)"
        );
    }
    Ok(())
}

/// Step 2: the pricing rule's ratio lowered live; pricing's and tax's agents drop its spans within
/// [`RATIO_DEADLINE`], and keep a fraction near [`LOWERED_RATIO`].
async fn ratio_lowered_live(log: &StepLog, client: &Client, watch: &mut Watch, shop: &mut Shop) -> anyhow::Result<()> {
    let agents = ["pricing", "tax"];
    log.step(&format!("rule {PRICING_RULE} (pricing, tax) lowered from ratio 1 to {LOWERED_RATIO} live"));
    watch.poll(shop, &agents, Duration::from_secs(1), Duration::from_secs(1), |_| false).await?;
    let before: Vec<Sample> =
        agents.iter().map(|a| watch.samples(a).last().cloned()).collect::<Option<_>>().context("no samples")?;
    for (agent, s) in agents.iter().zip(&before) {
        let (received, kept) = counts(s, PRICING_RULE);
        ensure!(received > 0 && kept == received, "{agent}: at ratio 1 the rule kept {kept} of {received}");
    }
    let patch = json!({"spec": {"sampling": policy_sampling(LOWERED_RATIO)}});
    let patched = Instant::now();
    Api::<TracingPolicy>::all(client.clone()).patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    // Effect: the first report after the patch in which the rule kept fewer spans than it got.
    let dropped = |w: &Watch, agent: &str, base: &Sample| {
        w.samples(agent)
            .iter()
            .find(|s| {
                s.at > patched && {
                    let ((r0, k0), (r1, k1)) = (counts(base, PRICING_RULE), counts(s, PRICING_RULE));
                    k1 - k0 < r1 - r0
                }
            })
            .map(|s| s.at)
    };
    let base = before.clone();
    watch
        .poll(shop, &agents, Duration::from_secs(1), RATIO_DEADLINE + Duration::from_secs(5), |w| {
            agents.iter().zip(&base).all(|(a, b)| dropped(w, a, b).is_some())
        })
        .await?;
    let mut effective = Vec::new();
    for (agent, b) in agents.iter().zip(&before) {
        let at = dropped(watch, agent, b).with_context(|| {
            format!("{agent}: no span of {PRICING_RULE} dropped {RATIO_DEADLINE:?} after the patch")
        })?;
        let after = at - patched;
        ensure!(after <= RATIO_DEADLINE, "{agent}: the lowered ratio took effect after {after:?}");
        effective.push(format!("{agent} after {:.1}s", after.as_secs_f64()));
    }
    log.note(&format!("the lowered ratio took effect: {}", effective.join(", ")));
    // Then what it keeps: near the ratio (spans come in pairs of one trace: counted as traces).
    let from: Vec<Sample> =
        agents.iter().map(|a| watch.samples(a).last().cloned()).collect::<Option<_>>().context("no samples")?;
    watch.poll(shop, &agents, Duration::from_secs(2), LOWERED_WATCH, |_| false).await?;
    for (agent, from) in agents.iter().zip(&from) {
        let to = watch.samples(agent).last().context("no samples")?;
        let ((r0, k0), (r1, k1)) = (counts(from, PRICING_RULE), counts(to, PRICING_RULE));
        let (received, kept) = (r1 - r0, k1 - k0);
        let fraction = kept as f64 / received.max(1) as f64;
        let traces = (received / 2).max(1) as usize;
        let (lo, hi) = check::sampling_bound(traces, LOWERED_RATIO);
        let (lo, hi) = (lo as f64 / traces as f64, hi as f64 / traces as f64);
        ensure!(
            received >= 40 && (lo..=hi).contains(&fraction),
            "{agent}: kept {kept} of {received} spans of {PRICING_RULE} at ratio {LOWERED_RATIO} (bound {lo:.2}-{hi:.2})"
        );
        log.note(&format!("{agent}: then kept {kept} of {received} spans ({fraction:.2}; bound {lo:.2}-{hi:.2})"));
    }
    Ok(())
}

/// The policy status: the rule's effective ratio lowered by the budget, `BudgetMet` true.
async fn budget_status(log: &StepLog, client: &Client) -> anyhow::Result<()> {
    let policy = Api::<TracingPolicy>::all(client.clone()).get(POLICY).await?;
    let status = policy.status.context("no status")?;
    let sampling = status.sampling.context("no sampling status")?;
    let rule = sampling.rules.iter().find(|r| r.name == NOISY_RULE).context("no status for the budgeted rule")?;
    ensure!(rule.effective_ratio < 0.5 && rule.budget == Some(BUDGET as u32), "status of {NOISY_RULE}: {rule:?}");
    let met = status.conditions.iter().find(|c| c.type_ == "BudgetMet").context("no BudgetMet condition")?;
    ensure!(met.status == "True", "BudgetMet: {met:?}");
    log.note(&format!(
        "status: {NOISY_RULE} at ratio {} ({} received, {} kept spans/s), BudgetMet {}",
        rule.effective_ratio, rule.received_spans_per_second, rule.kept_spans_per_second, met.reason
    ));
    Ok(())
}

/// Step 3: every checkout trace with an inventory span (the lowest ratio on its path) is whole: those
/// started from `from_unix_nano` on (before, the local cap was allowed to act).
fn whole_traces(
    log: &StepLog,
    shop: &Shop,
    workloads: &[shop::Workload],
    spans: &[Span],
    from_unix_nano: u64,
) -> anyhow::Result<()> {
    let spans = shop.spans_of(spans);
    let mut traces = check::by_trace(&spans);
    traces.retain(|_, t| t.iter().all(|s| s.start_unix_nano >= from_unix_nano));
    let through_frontend = |t: &[&Span]| t.iter().any(|s| s.service() == "frontend");
    let with_inventory = |t: &[&Span]| t.iter().any(|s| s.service() == "inventory");
    let checkouts = traces.values().filter(|t| through_frontend(t)).count();
    let kept: BTreeSet<&str> =
        traces.iter().filter(|(_, t)| through_frontend(t) && with_inventory(t)).map(|(id, _)| *id).collect();
    let kept_spans: Vec<Span> = spans.iter().filter(|s| kept.contains(s.trace_id.as_str())).cloned().collect();
    let complete = check::check_complete(&kept_spans, &shop::topology(&shop.policy), &shop.identities(workloads))
        .context("a checkout trace kept at the inventory's ratio is incomplete")?;
    ensure!(complete >= 20, "only {complete} checkout traces kept at the inventory's ratio");
    log.note(&format!(
        "{complete} of {checkouts} checkout traces in the collector hold inventory spans, each complete ({} spans)",
        kept_spans.len()
    ));
    Ok(())
}
