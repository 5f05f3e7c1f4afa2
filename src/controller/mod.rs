//! `tracelight controller`: the operator process. Every replica serves the admission webhook;
//! the replica holding the leader Lease also runs the controllers.
//!
//! It holds I/O only: what a reconcile does is decided by [`crate::decision`] (pure), and carried
//! out here.
//!
//! - [`cache`]: what the controller keeps of the pods it watches;
//! - [`events`]: the Events it publishes;
//! - [`reconcile`](mod@reconcile): the TracingPolicy reconciler: gathers the cached state, asks
//!   [`crate::decision`], and carries out its intent in order;
//! - [`after_rollout`]: applies the regression rule and publishes the review's Events;
//! - [`continuity`]: the probe settings and the cached service graph;
//! - [`lease`]: leader election;
//! - `trace`: what the reconcile spans (the operator's own traces) say;
//! - [`metrics`]: the controller's metrics.
//!
//! # Memory
//!
//! Namespaces and TracingPolicies are watched once per process ([`ClusterView`], shared with the
//! webhook); the caches hold what the decisions read, never whole objects: pods as a [`PodSummary`] decoded
//! straight from the watch's JSON, workloads as the rollout's summary, owned agent objects as
//! metadata only, and the initial lists of the large caches come in pages (`paged_lists`). The
//! figures at scale and how they moved are in `docs/performance.md`.

pub mod after_rollout;
pub mod cache;
pub mod continuity;
pub mod events;
pub mod lease;
pub mod metrics;
pub mod policy_metrics;
pub mod reconcile;
mod trace;

#[cfg(test)]
mod io_order_tests;

use crate::cluster_view::{Cluster, ClusterView};
use crate::decision::agent_objects;
use crate::inject::InjectOptions;
use crate::rollout::pod::PodSummary;
use crate::telemetry::{self, LogFormat, Metrics};
use crate::webhook::reports::ReportStore;
use anyhow::Context as _;
use cache::{CachedWorkload, WatchedPod};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Lookup as _;
use kube::runtime::watcher::Event;
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use lease::LeaderElector;
use metrics::ControllerMetrics;
use prometheus_client::metrics::{counter::Counter, family::Family};
use reconcile::{error_policy, reconcile, Context};
use std::future::{ready, Future};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracelight_contract::config::{AGENT_CONFIGMAP, AGENT_SECRET};

/// Name under which the controller reports Events.
const REPORTER: &str = "tracelight-controller";
/// Workload and pod changes ask for all policies to be reconciled at most this often: a rollout of
/// thousands of workloads changes some workload every few milliseconds, and reconciling on each
/// change made most of the operator's CPU time and status writes.
const WORKLOAD_TRIGGER_INTERVAL: Duration = Duration::from_secs(1);

/// Flags of `tracelight controller`. The Kubernetes connection comes from `KUBECONFIG` (or
/// `~/.kube/config`, or the in-cluster service account).
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TRACELIGHT_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Run the controllers only on the replica holding the leader Lease (the webhook serves on
    /// every replica). Disable only when running a single replica.
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(long, default_value = "tracelight-controller")]
    pub lease_name: String,

    /// Namespace of the leader-election Lease. Default: the operator's namespace (`--namespace`).
    #[arg(long)]
    pub lease_namespace: Option<String>,

    /// Namespaces besides the operator's own (`--namespace`) that policies may take source
    /// Secrets from (`collector.apiKeySecretRef`, `collector.tls.caSecretRef`); repeatable or
    /// comma-separated. A policy naming a Secret anywhere else is refused (`Ready=False`, reason
    /// `SecretNotAllowed`) and nothing is copied. The operator needs `get` on Secrets there.
    #[arg(long = "secret-namespace", env = "TRACELIGHT_SECRET_NAMESPACES", value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,

    /// `host:port` where the other replicas reach this one's report endpoint while it leads
    /// (advertised on the Lease; they forward the agents' reports there). Default: `POD_IP` and
    /// the port of `--webhook-addr`. Without either, reports received by other replicas are not
    /// counted while this one leads.
    #[arg(long, env = "TRACELIGHT_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Fraction of traces every agent records the shape of (probe traces), for the service
    /// graph and the broken-link check (`tracelight graph`, `tracelight verify`). The same traces
    /// in every agent, whatever the sampling ratio; 0 turns probes off. Each agent sends at most
    /// 64 probe spans per report.
    #[arg(long, env = "TRACELIGHT_PROBE_RATIO", default_value_t = tracelight_contract::probe::DEFAULT_PROBE_RATIO, value_parser = probe_ratio)]
    pub probe_ratio: f64,
}

fn probe_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|e| format!("{e}"))?;
    tracelight_contract::Ratio::new(ratio).map(|r| r.get()).map_err(|e| e.to_string())
}

impl ControllerArgs {
    /// Where this replica's report endpoint is reached by the others.
    fn report_address(&self, pod_ip: Option<&str>) -> Option<String> {
        self.advertise_address.clone().filter(|a| !a.is_empty()).or_else(|| {
            let ip: std::net::IpAddr = pod_ip?.trim().parse().ok()?;
            Some(std::net::SocketAddr::new(ip, self.webhook.webhook_addr.port()).to_string())
        })
    }
}

/// Leader election settings: the Lease, and the report addresses it carries.
struct Election {
    namespace: String,
    name: String,
    /// Advertised while this replica leads.
    report_address: Option<String>,
    /// The leader's report address while another replica leads (the report endpoint forwards there).
    leader_address: watch::Sender<Option<String>>,
}

/// A client for the cluster (KUBECONFIG or in-cluster config) that counts its requests in the
/// metric `tracelight_kube_requests_total{verb, resource}` (a watch counts once per
/// (re)connection; the webhook's and the lease's requests count too), so the API load per
/// restarted workload can be measured and broken down.
async fn counted_client(metrics: &Metrics) -> anyhow::Result<Client> {
    let config = kube::Config::infer().await.context("loading the Kubernetes config (KUBECONFIG or in-cluster)")?;
    let requests = Family::<metrics::RequestLabels, Counter>::default();
    metrics.register("tracelight_kube_requests", "Requests sent to the Kubernetes API server", requests.clone());
    let count = tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        requests.get_or_create(&metrics::request_labels(request.method(), request.uri())).inc();
        request
    });
    let client = kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&count)
        .build();
    Ok(client)
}

/// Runs the operator until SIGTERM or SIGINT, then shuts down gracefully.
pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    tracelight_process::allocator::reexec_with_options("tracelight controller");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    // The span exporter runs on the runtime: built inside it, flushed before it stops.
    let traces = {
        let _entered = runtime.enter();
        telemetry::init_operator(args.log_format)
    };
    let result = runtime.block_on(run_async(args, traces.as_ref().map(|t| t.stats.clone())));
    if let Some(traces) = traces {
        traces.shutdown();
    }
    result
}

async fn run_async(args: ControllerArgs, trace_stats: Option<telemetry::traces::ExportStats>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    if let Some(stats) = trace_stats {
        stats.register(&metrics);
    }
    let client = counted_client(&metrics).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let report_address = args.report_address(std::env::var("POD_IP").ok().as_deref());
    let ControllerArgs {
        webhook, leader_election, lease_name, lease_namespace, secret_namespaces, probe_ratio, ..
    } = args;
    let probes = tracelight_contract::probe::ProbeSettings {
        ratio: tracelight_contract::Ratio::new(probe_ratio).unwrap_or_default(),
    };
    let secret_sources = crate::decision::agent_objects::SecretSources::new(&webhook.namespace, &secret_namespaces);
    tracing::info!(namespaces = %secret_sources.describe(), "source Secrets are read from these namespaces only");
    let (leader_address, leader_address_rx) = watch::channel(None);
    if leader_election && report_address.is_none() {
        tracing::warn!(
            "no --advertise-address and no POD_IP: while this replica leads, reports received by the others are not counted"
        );
    }
    let lease = leader_election.then(|| Election {
        namespace: lease_namespace.unwrap_or_else(|| webhook.namespace.clone()),
        name: lease_name,
        report_address,
        leader_address,
    });
    let inject_options = webhook.inject_options();
    let webhook_namespace = webhook.namespace.clone();
    // One watch per kind for Namespaces and TracingPolicies: admission and the controllers read
    // the same stores.
    let (view, view_driver) = ClusterView::watch(client.clone());
    let view_task = {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! { () = view_driver => {}, () = stop.cancelled() => {} }
        })
    };
    // The webhook's report endpoint fills it; the leader's reconciles read it.
    let reports = crate::webhook::reports::ReportStore::default();
    // The webhook loads the serving certificate; the controller hands its CA to the agents.
    let resolver = Arc::new(crate::webhook::certs::CertResolver::new());
    // Whichever half fails first stops the other: a replica without its webhook or controllers is no use.
    let webhook = cancel_on_error(
        shutdown.clone(),
        crate::webhook::run(
            webhook,
            Cluster { client: client.clone(), view: view.clone() },
            metrics.clone(),
            reports.clone(),
            leader_address_rx,
            resolver.clone(),
            shutdown.clone(),
        ),
    );
    let controllers = cancel_on_error(
        shutdown.clone(),
        run_controllers(
            Cluster { client, view },
            metrics,
            lease,
            PolicySettings { inject_options, secret_sources, operator_namespace: webhook_namespace, probes },
            reports,
            resolver,
            shutdown.clone(),
        ),
    );
    let (webhook, controllers) = tokio::join!(webhook, controllers);
    shutdown.cancel();
    let _ = view_task.await;
    webhook.context("webhook")?;
    controllers.context("controllers")?;
    tracing::info!("shut down");
    Ok(())
}

async fn cancel_on_error<T, E>(token: CancellationToken, fut: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let result = fut.await;
    if result.is_err() {
        token.cancel();
    }
    result
}

/// Cancels `token` on the first SIGTERM/SIGINT; a second signal exits at once.
async fn cancel_on_signal(token: CancellationToken) {
    tracelight_process::signal::shutdown_requested().await;
    tracing::info!("signal received: shutting down (send again to exit immediately)");
    token.cancel();
    tracelight_process::signal::shutdown_requested().await;
    std::process::exit(130);
}

/// What the policy controller is configured with, from the flags.
#[derive(Clone)]
struct PolicySettings {
    /// The webhook's injection options, so expected manifest hashes match what it injects.
    inject_options: InjectOptions,
    /// The namespaces source Secrets may come from.
    secret_sources: crate::decision::agent_objects::SecretSources,
    /// The operator's namespace (`--namespace`): where the regression rules go.
    operator_namespace: String,
    /// What the agents' config asks of probe traces (`--probe-ratio`).
    probes: tracelight_contract::probe::ProbeSettings,
}

/// Runs the controllers whenever this replica leads (always, without a `lease`), until `shutdown`.
async fn run_controllers(
    Cluster { client, view }: Cluster,
    metrics: Metrics,
    lease: Option<Election>,
    settings: PolicySettings,
    reports: ReportStore,
    serving_ca: Arc<crate::webhook::certs::CertResolver>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let controller_metrics = ControllerMetrics::register(&metrics);
    let (leader_tx, leader_rx) = watch::channel(lease.is_none());
    // The elector stops (and releases the lease) only once the controllers have stopped, so no
    // other replica starts reconciling while our last reconciles finish.
    let controllers_stopped = CancellationToken::new();
    let elector = lease.map(|Election { namespace, name, report_address, leader_address }| {
        let elector = LeaderElector::new(Api::namespaced(client.clone(), &namespace), &name, lease::default_identity())
            .with_report_address(report_address.clone(), leader_address);
        tracing::info!(lease = %name, %namespace, identity = %elector.identity(), report_address = ?report_address, "leader election enabled");
        tokio::spawn(elector.run(leader_tx.clone(), controllers_stopped.clone().cancelled_owned()))
    });

    loop {
        let mut became_leader = leader_rx.clone();
        tokio::select! {
            () = shutdown.cancelled() => break,
            r = became_leader.wait_for(|leads| *leads) => if r.is_err() { break },
        }
        tracing::info!("leading: starting controllers");
        controller_metrics.leader.set(1);
        // Reports the previous leader counted reach us within one report interval: until then
        // coverage does not drop below what the status shows.
        reports.hold_coverage_until(
            k8s_openapi::jiff::Timestamp::now() + crate::webhook::reports::store::COVERAGE_WARM_UP,
        );
        let mut lost = leader_rx.clone();
        tokio::select! {
            // Returns after a graceful shutdown: in-flight reconciles finish first.
            () = run_policy_controller(client.clone(), view.clone(), controller_metrics.clone(), settings.clone(), reports.clone(), serving_ca.clone(), shutdown.clone()) => {}
            _ = lost.wait_for(|leads| !*leads) => tracing::warn!("leadership lost: controllers stopped"),
            // A shutdown while the policy watch is still listing left kube's controller waiting
            // for a store that never fills (seen once in e2e: SIGTERM ignored until SIGKILL).
            () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers did not stop within the grace period after the shutdown: dropped");
            }
        }
        controller_metrics.leader.set(0);
        controller_metrics.policies.forget();
        if shutdown.is_cancelled() {
            break;
        }
    }
    controllers_stopped.cancel();
    drop(leader_tx);
    if let Some(elector) = elector {
        elector.await.context("leader election task")?;
    }
    Ok(())
}

/// Reconciles the policies when a report changes something coverage depends on (a pod's first
/// report or span, a new config generation), at most every [`REPORT_WAKE_INTERVAL`]: reports of a
/// whole batch of new pods arrive within seconds and one reconcile sees them all.
async fn wake_on_reports(reports: ReportStore, reconcile_all: futures::channel::mpsc::UnboundedSender<()>) {
    let mut changes = reports.subscribe();
    while changes.changed().await.is_ok() {
        tokio::time::sleep(REPORT_WAKE_INTERVAL).await;
        changes.mark_unchanged();
        if reconcile_all.unbounded_send(()).is_err() {
            return;
        }
    }
}

/// How long the controllers may take to stop after a shutdown was requested (in-flight reconciles
/// finish in well under it); then they are dropped, as a SIGKILL would, within the pod's grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Shortest interval between report-triggered reconciles.
const REPORT_WAKE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What of a namespace can change the policies' decisions: its labels, and whether it is being
/// deleted (a terminating namespace is no longer governed).
fn governance_relevant(ns: &Namespace) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (ns.labels(), ns.metadata.deletion_timestamp.is_some()).hash(&mut hasher);
    hasher.finish()
}

/// Yields once for each namespace seen for the first time or whose [`governance_relevant`] state
/// changed; other changes (annotations, status) are dropped. Names of namespaces gone from
/// `store` are forgotten once they outnumber the live ones.
fn governance_changes(
    namespaces: impl Stream<Item = Arc<Namespace>>,
    store: reflector::Store<Namespace>,
) -> impl Stream<Item = ()> {
    let mut seen = std::collections::HashMap::<String, u64>::new();
    namespaces.filter_map(move |ns| {
        let state = governance_relevant(&ns);
        let changed = seen.insert(ns.name_any(), state) != Some(state);
        if seen.len() > 2 * store.len() + 64 {
            seen.retain(|name, _| store.get(&reflector::ObjectRef::new(name)).is_some());
        }
        ready(changed.then_some(()))
    })
}

/// The TracingPolicy controller, with its namespace and pod-metadata caches, until `shutdown`
/// (in-flight reconciles finish first).
async fn run_policy_controller(
    client: Client,
    view: ClusterView,
    metrics: ControllerMetrics,
    settings: PolicySettings,
    reports: ReportStore,
    serving_ca: Arc<crate::webhook::certs::CertResolver>,
    shutdown: CancellationToken,
) {
    let (reconcile_all, reconcile_all_requests) = futures::channel::mpsc::unbounded();
    let report_trigger = wake_on_reports(reports.clone(), reconcile_all.clone());

    // The caches are driven by their own futures, not by the controller: a reconcile waits for
    // them to fill, and must never wait on a stream that only the controller itself polls.
    // Namespaces and policies come from the process's shared view (the webhook reads the same).
    let namespaces = view.namespace_store();
    // Label changes can change what every policy governs: re-reconcile them all.
    let namespace_reconcile_all = reconcile_all.clone();
    let namespace_trigger = governance_changes(view.namespace_changes(), namespaces.clone()).for_each(move |()| {
        let _ = namespace_reconcile_all.unbounded_send(());
        ready(())
    });

    // Pods are decoded into what the controller reads of them (see `cache`): the health of
    // restarts in flight comes from this cache, not from listing pods.
    let (pods, pod_writer) = reflector::store::<PodSummary>();
    // Pods created, deleted, injected or skipped move the coverage counts: they nudge the
    // policies (at most once per `WORKLOAD_TRIGGER_INTERVAL`), so `kubectl get` follows the pods
    // within seconds instead of at the next periodic reconcile.
    let (nudge, nudges) = futures::channel::mpsc::unbounded();
    let workload_trigger = throttle(nudges, reconcile_all.clone(), WORKLOAD_TRIGGER_INTERVAL);
    let (cached_pods, pod_nudge) = (pods.clone(), nudge.clone());
    let pod_events = watcher(Api::<WatchedPod>::all(client.clone()), paged_lists())
        .default_backoff()
        .map_ok(cache::summarize)
        .inspect_ok(move |event| {
            let before = match event {
                Event::Apply(p) | Event::InitApply(p) | Event::Delete(p) => cached_pods.get(&p.to_object_ref(())),
                Event::Init | Event::InitDone => None,
            };
            if cache::changes_counts(before.as_deref(), event) {
                let _ = pod_nudge.unbounded_send(());
            }
        });
    let pod_cache = reflector::reflector(pod_writer, pod_events).for_each(|r| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "pod watch failed");
        }
        ready(())
    });

    // The agent objects the policies own (metadata only): which ones to remove, and whether one
    // was deleted by hand, without listing them on every reconcile. Watched by their one name, so
    // the operator needs no read of any other Secret outside its namespace (see `crate::decision::agent_objects`).
    let (owned_configmaps, owned_configmap_cache) = owned_cache::<ConfigMap>(&client, AGENT_CONFIGMAP, "configmap");
    let (owned_secrets, owned_secret_cache) = owned_cache::<Secret>(&client, AGENT_SECRET, "secret");

    // Workload changes (a rollout progressing, a new workload) move the rollouts on, at a
    // bounded rate (the throttle the pod events share).
    let (deployments, deployment_cache) = workload_cache::<Deployment>(&client, nudge.clone(), "deployment");
    let (statefulsets, statefulset_cache) = workload_cache::<StatefulSet>(&client, nudge.clone(), "statefulset");
    let (daemonsets, daemonset_cache) = workload_cache::<DaemonSet>(&client, nudge, "daemonset");

    // Started once the view is synced, so that kube's wait for the store (see `cluster_view`)
    // finds it ready instead of waiting beside the view's own.
    tokio::select! {
        () = view.wait_synced() => {}
        () = shutdown.cancelled() => return,
    }
    let controller = Controller::for_shared_stream(view.policy_triggers(), view.policy_store());
    let ctx = Arc::new(Context {
        events: events::Publisher::new(client.clone(), REPORTER, std::env::var("POD_NAME").ok()),
        client,
        metrics,
        policies: controller.store(),
        namespaces,
        pods,
        owned_configmaps,
        owned_secrets,
        deployments,
        statefulsets,
        daemonsets,
        inject_options: settings.inject_options,
        secret_sources: settings.secret_sources,
        requested: Default::default(),
        written: Default::default(),
        reports,
        serving_ca,
        continuity: continuity::Continuity::new(settings.probes),
        reconcile_all,
        after_rollout: after_rollout::State::new(&settings.operator_namespace),
    });
    ctx.metrics.policies.follow(ctx.policies.clone());
    let policies = controller
        .reconcile_all_on(reconcile_all_requests)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((policy, _)) => tracing::debug!(policy = %policy.name, "reconciled"),
                // Reconcile failures are logged by `error_policy`.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // A policy deleted while a reconcile of it was queued.
                Err(e @ kube::runtime::controller::Error::ObjectNotFound(_)) => tracing::debug!(error = %e, "skipped"),
                Err(e) => tracing::warn!(error = %e, "policy controller"),
            }
            ready(())
        });
    tokio::select! {
        () = policies => {}
        () = namespace_trigger => {}
        () = pod_cache => {}
        () = report_trigger => {}
        () = owned_configmap_cache => {}
        () = owned_secret_cache => {}
        () = workload_trigger => {}
        () = deployment_cache => {}
        () = statefulset_cache => {}
        () = daemonset_cache => {}
    }
}

/// Watch settings for the large caches (pods, workloads): their initial lists come in pages of
/// 500. A list from the API server's cache ("any" semantic) is not paged: thousands of pods in
/// one response were the operator's peak memory.
fn paged_lists() -> watcher::Config {
    watcher::Config::default().page_size(500)
}

/// Passes the first nudge on at once, then at most one per `every` while nudges keep coming (the
/// last one is never lost: a nudge during a pause is answered after it). Ends with `nudges`.
async fn throttle(
    mut nudges: futures::channel::mpsc::UnboundedReceiver<()>,
    out: futures::channel::mpsc::UnboundedSender<()>,
    every: Duration,
) {
    while nudges.next().await.is_some() {
        loop {
            let _ = out.unbounded_send(());
            tokio::time::sleep(every).await;
            let mut more = false;
            while nudges.try_recv().is_ok() {
                more = true;
            }
            if !more {
                break;
            }
        }
    }
}

/// A cluster-wide metadata cache of the objects of kind `K` named `name` that policies own, and
/// the future that drives it.
fn owned_cache<K>(
    client: &Client,
    name: &str,
    what: &'static str,
) -> (reflector::Store<PartialObjectMeta<K>>, impl Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<PartialObjectMeta<K>>();
    let config = watcher::Config::default()
        .any_semantic()
        .labels(&agent_objects::managed_selector())
        .fields(&agent_objects::owned_name_selector(name));
    let cache = watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), config)
        .default_backoff()
        .modify(|o| o.metadata.managed_fields = None)
        .reflect(writer)
        .for_each(move |r| {
            if let Err(e) = r {
                tracing::warn!(error = %e, kind = what, "owned object watch failed");
            }
            ready(())
        });
    (store, cache)
}

/// A cluster-wide cache of one workload kind, kept as the rollout's summaries, and the future
/// that drives it: every change asks for all policies to be reconciled (the policy whose
/// namespace it is moves its rollout on).
fn workload_cache<K>(
    client: &Client,
    trigger: futures::channel::mpsc::UnboundedSender<()>,
    what: &'static str,
) -> (reflector::Store<CachedWorkload<K>>, impl Future<Output = ()>)
where
    K: k8s_openapi::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    for<'k> &'k K: Into<crate::rollout::workload::Workload>,
{
    let (store, writer) = reflector::store::<CachedWorkload<K>>();
    let cache = watcher(Api::<CachedWorkload<K>>::all(client.clone()), paged_lists())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .for_each(move |r| {
            match r {
                Ok(_) => {
                    let _ = trigger.unbounded_send(());
                }
                Err(e) => tracing::warn!(error = %e, kind = what, "workload watch failed"),
            }
            ready(())
        });
    (store, cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        controller: ControllerArgs,
    }

    fn parse(args: &[&str]) -> ControllerArgs {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap().controller
    }

    #[test]
    fn leader_election_is_on_by_default_and_can_be_turned_off() {
        let args = parse(&[]);
        assert!(args.leader_election);
        assert_eq!(args.lease_name, "tracelight-controller");
        assert_eq!(args.lease_namespace, None);
        assert!(parse(&["--leader-election"]).leader_election);
        assert!(!parse(&["--leader-election=false"]).leader_election);
        assert!(!parse(&["--leader-election", "false"]).leader_election);
    }

    #[test]
    fn namespace_label_and_deletion_changes_are_relevant_other_changes_are_not() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("shop".into());
        let base = governance_relevant(&ns);
        ns.metadata.annotations = Some([("note".to_string(), "x".to_string())].into());
        assert_eq!(governance_relevant(&ns), base);
        ns.metadata.labels = Some([("tracelight.io/enabled".to_string(), "true".to_string())].into());
        let labelled = governance_relevant(&ns);
        assert_ne!(labelled, base);
        ns.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_ne!(governance_relevant(&ns), labelled);
    }

    #[tokio::test]
    async fn only_first_sightings_and_governance_changes_trigger() {
        let ns = |name: &str, label: Option<&str>, note: &str| {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.into());
            ns.metadata.labels = label.map(|v| [("tracelight.io/enabled".to_string(), v.to_string())].into());
            ns.metadata.annotations = Some([("note".to_string(), note.to_string())].into());
            Arc::new(ns)
        };
        let seen = vec![
            ns("shop", None, "a"),
            ns("shop", None, "b"),         // annotation only: dropped
            ns("shop", Some("true"), "b"), // opted in
            ns("web", None, "a"),          // first sighting
            ns("shop", Some("true"), "c"), // annotation only: dropped
        ];
        let store = ClusterView::from_objects(vec![], vec![]).namespace_store();
        let triggers: Vec<()> = governance_changes(futures::stream::iter(seen), store).collect().await;
        assert_eq!(triggers.len(), 3);
    }

    #[test]
    fn webhook_flags_are_flattened_in() {
        let args = parse(&["--webhook-config", "tl", "--log-format", "json", "--lease-namespace", "ops"]);
        assert_eq!(args.webhook.webhook_config, "tl");
        assert!(matches!(args.log_format, LogFormat::Json));
        assert_eq!(args.lease_namespace.as_deref(), Some("ops"));
        assert!(args.secret_namespaces.is_empty());
        let args = parse(&["--secret-namespace", "ops,vault", "--secret-namespace=more"]);
        assert_eq!(args.secret_namespaces, ["ops", "vault", "more"]);
    }

    #[test]
    fn the_report_address_is_the_flag_or_the_pod_ip_with_the_webhook_port() {
        let args = parse(&["--webhook-addr", "0.0.0.0:9443"]);
        assert_eq!(args.report_address(Some("10.1.2.3")).as_deref(), Some("10.1.2.3:9443"));
        assert_eq!(args.report_address(Some("fd00::7")).as_deref(), Some("[fd00::7]:9443"));
        assert_eq!(args.report_address(None), None);
        assert_eq!(args.report_address(Some("not-an-ip")), None);
        let args = parse(&["--advertise-address", "127.0.0.1:4000"]);
        assert_eq!(args.report_address(Some("10.1.2.3")).as_deref(), Some("127.0.0.1:4000"));
    }

    fn drain(rx: &mut futures::channel::mpsc::UnboundedReceiver<()>) -> usize {
        std::iter::from_fn(|| rx.try_recv().ok()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn workload_nudges_pass_at_most_once_per_interval_and_the_last_is_not_lost() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (out_tx, mut out) = futures::channel::mpsc::unbounded();
        let task = tokio::spawn(throttle(rx, out_tx, Duration::from_secs(1)));
        for _ in 0..100 {
            tx.unbounded_send(()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain(&mut out), 1, "the first at once");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(drain(&mut out), 0, "nothing during the pause");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(drain(&mut out), 1, "the 99 others once, after the pause");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(drain(&mut out), 0, "nothing more without nudges");
        tx.unbounded_send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain(&mut out), 1, "a nudge after a quiet spell passes at once");
        drop(tx);
        task.await.unwrap();
    }
}
