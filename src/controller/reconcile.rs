//! The TracingPolicy reconciler: gathers what the pure [`plan`](mod@super::plan) functions need,
//! carries out what they decide (agent ConfigMaps and Secrets, status, Events) and nothing more.

use super::cache::CachedWorkload;
use super::metrics::ControllerMetrics;
use super::plan::{
    self, condition_reason, desired_status, invalid_spec_status, plan_namespaces, pod_counts, reason, stale_objects,
    step_for, Gates, Observation, OwnedKind, OwnedObject, RolloutOutcome, Step, READY,
};
use super::resources::{
    self, agent_configmap_with, agent_secret, is_owned_by, objects_digest, owned_selector, SecretValues, SourceKind,
    WriteMemo,
};
use super::rollout::{
    add_coverage, apply_reporting, coverage as rollout_coverage, departure, health_check_since, hold_coverage,
    leaving_namespaces, longest_health_deadline, observation as rollout_observation, observe_workloads,
    outdated_by_namespace, restart_note, restarts_to_request, rollout_status, still_leaving, unclaimed_namespaces,
    workload_restart_note, Requested, Snapshot,
};
use super::trace;
use crate::api::agent_config::needs_secret;
use crate::api::keys::FIELD_MANAGER;
use crate::api::validate::validate;
use crate::api::{NamespaceState, NamespaceStatus, TracingPolicy, TracingPolicyStatus, WorkloadCoverage};
use crate::inject::InjectOptions;
use crate::rollout::pod::PodSummary;
use crate::rollout::{self, observe, RestartMark, WorkloadId, WorkloadKind, WorkloadObservation};
use crate::webhook::reports::ReportStore;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracelight_contract::config::{AGENT_CONFIGMAP, AGENT_SECRET};
use tracing::field::Empty;
use tracing::Span;

/// Finalizer that keeps a policy until the objects it owns in user namespaces are removed.
pub const FINALIZER: &str = "tracelight.io/cleanup";
/// Periodic re-reconcile, to refresh pod counts (pods do not trigger reconciles) and repair agent
/// objects deleted by hand.
pub const REQUEUE_AFTER: Duration = Duration::from_secs(60);
/// Shortest requeue the rollout asks for (a deadline just passed).
const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// How often a deleted policy looks at the workloads it waits for.
const LEAVING_POLL: Duration = Duration::from_secs(2);
/// Retry delay after a failed reconcile.
pub const RETRY_AFTER: Duration = Duration::from_secs(15);
/// Restart requests (a patch and an Event each) in flight at once within a reconcile.
const CONCURRENT_RESTARTS: usize = 8;
/// How long a reconcile waits for the namespace and pod caches to fill at start-up.
const CACHE_WAIT: Duration = Duration::from_secs(60);

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub events: super::events::Publisher,
    pub metrics: ControllerMetrics,
    /// All policies (the controller's own cache).
    pub policies: Store<TracingPolicy>,
    pub namespaces: Store<Namespace>,
    /// Pods, as much of them as the decisions read.
    pub pods: Store<PodSummary>,
    /// The agent objects the policies own (metadata only).
    pub owned_configmaps: Store<PartialObjectMeta<ConfigMap>>,
    pub owned_secrets: Store<PartialObjectMeta<Secret>>,
    /// The workloads the rollout restarts.
    pub deployments: Store<CachedWorkload<Deployment>>,
    pub statefulsets: Store<CachedWorkload<StatefulSet>>,
    pub daemonsets: Store<CachedWorkload<DaemonSet>>,
    /// The webhook's injection options, so expected manifest hashes match what it injects.
    pub inject_options: InjectOptions,
    /// The namespaces source Secrets may come from.
    pub secret_sources: resources::SecretSources,
    /// Restarts and rollbacks requested and not yet seen in the workload caches.
    pub requested: std::sync::Mutex<Requested>,
    /// Agent objects applied recently, not applied again while unchanged.
    pub written: std::sync::Mutex<WriteMemo>,
    /// The agents' reports (filled by the webhook's report endpoint), for coverage.
    pub reports: ReportStore,
    /// Holds the CA that signs the webhook's certificate, copied into the agent ConfigMaps so
    /// agents can verify the report endpoint.
    pub serving_ca: Arc<crate::webhook::certs::CertResolver>,
    /// Probe settings for the agents, and the service graph joined from their probe traces.
    pub continuity: super::continuity::Continuity,
    /// Asks for every policy to be reconciled: a policy that changes its selectors or goes away
    /// can hand namespaces over to (or take them from) another one.
    pub reconcile_all: UnboundedSender<()>,
    /// The baseline, review and regression rules' own state (`super::after_rollout`).
    pub after_rollout: super::after_rollout::State,
}

/// Why a reconcile failed. `kind` labels the failure metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {what}: {source}")]
    Kube { action: &'static str, what: String, source: kube::Error },
    #[error("the {0} cache did not fill within {CACHE_WAIT:?}")]
    CacheNotReady(&'static str),
    #[error("writing agent objects failed in {0} namespace(s)")]
    WriteFailed(usize),
    /// Not a failure: a deleted policy waits for its workloads to lose injection.
    #[error("{0} workload(s) still losing injection")]
    Leaving(usize),
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    /// Short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::CacheNotReady(_) => "cache_not_ready",
            Error::WriteFailed(_) => "write_failed",
            Error::Leaving(_) => "leaving",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
        }
    }

    /// Not a failure: a deleted policy waiting for its workloads to lose injection.
    pub fn is_waiting(&self) -> bool {
        matches!(self, Error::Leaving(_))
            || matches!(self, Error::Finalizer(inner) if matches!(inner.as_ref(), finalizer::Error::CleanupFailed(e) if e.is_waiting()))
    }

    fn kube(action: &'static str, what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { action, what, source }
    }
}

/// Reconciles one policy: apply while it lives, clean up once it is deleted.
///
/// Its span (one of the operator's own traces) says what the rollout decided and why it waits:
/// the empty fields are filled by `trace::record_plan` and `trace::record_result`.
#[tracing::instrument(skip_all, fields(
    policy = %policy.name_any(),
    generation = policy.metadata.generation,
    deleting = policy.metadata.deletion_timestamp.is_some(),
    phase_before = %trace::phase_name(policy.status.as_ref().and_then(|s| s.phase.as_ref())),
    phase_after = Empty,
    decision = Empty,
    waiting = Empty,
    soak_remaining_s = Empty,
    restarts = Empty,
    rollbacks = Empty,
    in_flight = Empty,
    active_namespaces = Empty,
    result = Empty,
    error = Empty,
    otel.status_code = Empty,
))]
pub async fn reconcile(policy: Arc<TracingPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start_reconcile();
    let api: Api<TracingPolicy> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            finalizer::Event::Apply(p) => apply(&p, &ctx).await,
            finalizer::Event::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .or_else(|e| match e {
        // Removing our finalizer from a policy that is already gone: the cleanup ran twice.
        finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.is_not_found() => Ok(Action::await_change()),
        e if lost_finalizer_race(&e) => {
            tracing::debug!("the cached policy is behind a finalizer just added: looking again shortly");
            Ok(Action::requeue(MIN_REQUEUE))
        }
        e => Err(Error::Finalizer(Box::new(e))),
    });
    trace::record_result(&Span::current(), &result);
    result
}

/// Whether adding the finalizer failed only because the cached policy was behind the server: the
/// finalizer patch tests that the finalizers are what the cache says, and a reconcile queued
/// right after the one that added it (before the watch delivered that write) fails the test
/// with 422 Invalid. Not a failure: the next look sees the finalizer.
fn lost_finalizer_race(e: &finalizer::Error<Error>) -> bool {
    matches!(e, finalizer::Error::AddFinalizer(kube::Error::Api(s)) if s.code == 422)
}

/// Counts the failure and retries after a short delay. A deleted policy waiting for its
/// workloads is no failure: it looks again soon (workload changes also wake it).
pub fn error_policy(policy: Arc<TracingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        return Action::requeue(LEAVING_POLL);
    }
    tracing::warn!(policy = %policy.name_any(), error = %error, "reconcile failed");
    ctx.metrics.count_failure(error.kind());
    Action::requeue(RETRY_AFTER)
}

async fn apply(policy: &TracingPolicy, ctx: &Context) -> Result<Action, Error> {
    ctx.wait_for_caches().await?;
    let previous = policy.status.as_ref();
    if let Err(errors) = validate(&policy.spec) {
        Span::current().record("waiting", "invalid_spec");
        return reject_invalid(policy, &errors.to_string(), ctx).await;
    }

    let policies = ctx.policies.state();
    let namespaces = ctx.namespaces.state();
    let plan = plan_namespaces(policy, policies.iter().map(Arc::as_ref), namespaces.iter().map(Arc::as_ref));
    // Secrets outside the allowed namespaces are refused before anything is read.
    let refused_secrets = ctx.secret_sources.refusals(policy);
    let (secret_values, missing_secrets) = if refused_secrets.is_empty() {
        read_source_secrets(policy, ctx).await?
    } else {
        (SecretValues::default(), Vec::new())
    };
    let gates = Gates {
        paused: policy.spec.rollout.paused,
        dry_run: policy.spec.rollout.dry_run,
        secrets_ready: missing_secrets.is_empty() && refused_secrets.is_empty(),
    };
    let now = Timestamp::now();
    let engine = plan_rollout(policy, &plan, &policies, &namespaces, ctx, now);
    trace::record_plan(&Span::current(), &engine.plan, gates);
    let reached: BTreeSet<String> = engine.plan.active_namespaces.iter().cloned().collect();
    let sampling = sampling_plan(policy, &engine);
    let mut rollout = roll_out(policy, &plan, gates, &reached, &secret_values, &sampling, ctx).await;
    add_rollout_counts(&mut rollout.namespaces, &engine, ctx);
    if ctx.reports.holds_coverage(now) {
        for ns in &mut rollout.namespaces {
            hold_coverage(ns, previous.and_then(|p| p.namespaces.iter().find(|n| n.name == ns.name)));
        }
    }
    crate::sampling::annotate_workloads(&mut rollout.namespaces, &sampling);
    let continuity = traces_continuity(&mut rollout.namespaces, &policies, ctx, now);

    let owned = cached_owned(policy, ctx);
    // Injected pods of leaving namespaces still mount the agent objects: they go once it has left.
    let stale = stale_objects(&plan, needs_secret(policy), &owned);
    for object in stale.iter().filter(|o| !engine.leaving.contains(&o.namespace)) {
        delete_owned(object, ctx).await?;
        tracing::info!(namespace = %object.namespace, kind = ?object.kind, "removed agent object the policy no longer needs");
    }

    let previously_active: BTreeSet<String> = previous
        .map(|s| s.namespaces.iter().filter(|n| n.state == NamespaceState::Active).map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    let requested = restarts_to_request(&engine.plan, &previously_active, gates.dry_run);
    let outcome = RolloutOutcome {
        state: engine.plan.state,
        message: engine.plan.message.clone(),
        status: rollout_status(&engine.plan, &engine.workloads, &requested, previous, gates.dry_run),
    };
    let observation = Observation {
        namespaces: rollout.namespaces,
        overlaps: plan.overlaps,
        missing_secrets,
        refused_secrets,
        write_failures: rollout.write_failures,
        rollout: Some(outcome),
        budgets_unmet: crate::sampling::SamplingPlan::has_budget(&policy.spec.sampling).then(|| sampling.unmet.clone()),
        sampling: Some(sampling.status),
        continuity,
    };
    let mut status = desired_status(policy, &observation, previous, now);
    let after = super::after_rollout::decide(policy, &engine.coverage, &engine.workload_pods, &mut status, ctx, now);
    // Most reconciles of a rollout in progress change nothing the status shows.
    if previous != Some(&status) {
        patch_status(policy, &status, ctx).await?;
    }
    let review_requeue = after.requeue_after;
    super::after_rollout::carry_out(policy, after, ctx).await;
    // Restarts after the status write: the namespaces they inject into are recorded Active.
    let restart_failures = carry_out(policy, &engine.plan, &requested, gates.dry_run, ctx, now).await;
    if previous.and_then(|s| s.observed_generation) != policy.metadata.generation {
        ctx.request_reconcile_all();
    }
    // Events after the status write: "activated" means the webhook now injects there.
    for ns in &rollout.activated {
        tracing::info!(namespace = %ns, "namespace activated");
        let note = format!("agent config written to namespace {ns}; new pods there are injected");
        ctx.publish(policy, EventType::Normal, "NamespaceActivated", "Activate", note, Some(namespace_ref(ns))).await;
    }
    for (ns, skipped) in crate::controller::plan::newly_skipped(previous, &status) {
        let note = format!(
            "{skipped} pod(s) in namespace {ns} were not injected; the reason is in each pod's annotation tracelight.io/injection-status"
        );
        ctx.publish(policy, EventType::Warning, reason::INJECTION_SKIPPED, "Inject", note, Some(namespace_ref(&ns)))
            .await;
    }
    if !observation.missing_secrets.is_empty() && condition_reason(previous, READY) != Some(reason::SECRET_NOT_FOUND) {
        let note = observation.missing_secrets.join("; ");
        ctx.publish(policy, EventType::Warning, reason::SECRET_NOT_FOUND, "CopySecret", note, None).await;
    }
    if !observation.refused_secrets.is_empty() && condition_reason(previous, READY) != Some(reason::SECRET_NOT_ALLOWED)
    {
        tracing::warn!(refused = ?observation.refused_secrets, "policy names a Secret outside the allowed namespaces");
        let note = observation.refused_secrets.join("; ");
        ctx.publish(policy, EventType::Warning, reason::SECRET_NOT_ALLOWED, "CopySecret", note, None).await;
    }
    if !observation.write_failures.is_empty() {
        return Err(Error::WriteFailed(observation.write_failures.len()));
    }
    if let Some(e) = restart_failures.into_iter().next() {
        return Err(e);
    }
    // Secrets are not watched: look again soon for the one that is missing.
    let requeue = if observation.missing_secrets.is_empty() { REQUEUE_AFTER } else { RETRY_AFTER };
    // Budgets follow the agents' rates: look again at every report interval.
    let budget_interval = ctx
        .inject_options
        .report_interval_secs
        .map_or(crate::sampling::BUDGET_INTERVAL, std::time::Duration::from_secs);
    let requeue = if observation.budgets_unmet.is_some() { requeue.min(budget_interval) } else { requeue };
    // Broken links surface a settle delay after their call, from reports that wake nothing.
    let requeue = if observation.continuity.is_some() { requeue.min(super::continuity::REQUEUE) } else { requeue };
    // The engine asks to look again at a soak's end or a health deadline.
    let requeue = engine.plan.requeue_after.map_or(requeue, |d| requeue.min(d.max(MIN_REQUEUE)));
    // The next scheduled review.
    let requeue = review_requeue.map_or(requeue, |d| requeue.min(d.max(MIN_REQUEUE)));
    Ok(Action::requeue(requeue))
}

/// Each workload's trace continuity and the policy's service graph and condition, from the
/// (cached) join of the agents' probe traces; `None` with probes off.
fn traces_continuity(
    namespaces: &mut [NamespaceStatus],
    policies: &[Arc<TracingPolicy>],
    ctx: &Context,
    now: Timestamp,
) -> Option<super::plan::ContinuityObservation> {
    if !ctx.continuity.enabled() {
        return None;
    }
    let inventory = || {
        let (deployments, statefulsets, daemonsets) =
            (ctx.deployments.state(), ctx.statefulsets.state(), ctx.daemonsets.state());
        let workloads = deployments
            .iter()
            .map(|d| &d.workload)
            .chain(statefulsets.iter().map(|s| &s.workload))
            .chain(daemonsets.iter().map(|d| &d.workload));
        super::continuity::inventory(workloads, policies)
    };
    let graph = ctx.continuity.graph(&ctx.reports, inventory, now);
    let service_graph = super::continuity::annotate(namespaces, &graph);
    Some((service_graph, super::continuity::condition(namespaces)))
}

/// Sampling ratios and caps from the agents' measured rates (the coverage carries them) and the
/// ratios in effect (the previous status).
fn sampling_plan(policy: &TracingPolicy, engine: &EnginePlan) -> crate::sampling::SamplingPlan {
    let coverage: BTreeMap<String, Vec<(String, &WorkloadCoverage)>> = engine
        .coverage
        .iter()
        .map(|(ns, all)| {
            (ns.clone(), all.iter().map(|(id, c)| (format!("{}/{}", id.kind.as_str(), id.name), c)).collect())
        })
        .collect();
    let previous = policy.status.as_ref().and_then(|s| s.sampling.as_ref());
    let sampling = crate::sampling::plan(&policy.spec.sampling, &coverage, previous);
    tracing::debug!(ratios = ?sampling.ratios, unmet = sampling.unmet.len(), "sampling plan");
    sampling
}

/// The rollout engine's plan, with what it was computed from.
struct EnginePlan {
    plan: rollout::Plan,
    workloads: Vec<WorkloadObservation>,
    /// Namespaces the policy left whose workloads still carry (or are losing) injection.
    leaving: Vec<String>,
    /// Coverage of the governed namespaces' workloads, from the agents' reports.
    coverage: BTreeMap<String, Vec<(WorkloadId, WorkloadCoverage)>>,
    /// Pod uids of the governed workloads (baseline and review).
    workload_pods: super::after_rollout::WorkloadPods,
}

/// Observes the workloads of governed and leaving namespaces and asks the engine what to do.
fn plan_rollout(
    policy: &TracingPolicy,
    plan: &plan::NamespacePlan,
    policies: &[Arc<TracingPolicy>],
    namespaces: &[Arc<Namespace>],
    ctx: &Context,
    now: Timestamp,
) -> EnginePlan {
    let previous = policy.status.as_ref();
    let policy_refs: Vec<&TracingPolicy> = policies.iter().map(Arc::as_ref).collect();
    let unclaimed = unclaimed_namespaces(&policy.name_any(), &policy_refs, namespaces.iter().map(Arc::as_ref));
    let leaving = leaving_namespaces(previous, plan, &unclaimed);
    let (deployments, statefulsets, daemonsets) =
        (ctx.deployments.state(), ctx.statefulsets.state(), ctx.daemonsets.state());
    let pods = ctx.pods.state();
    let snapshot = Snapshot {
        workloads: deployments
            .iter()
            .map(|d| &d.workload)
            .chain(statefulsets.iter().map(|s| &s.workload))
            .chain(daemonsets.iter().map(|d| &d.workload))
            .collect(),
        pods: pods.iter().map(Arc::as_ref).collect(),
    };
    let mut workloads = observe_workloads(policy, plan, &leaving, &snapshot, &ctx.inject_options);
    ctx.reports.prune(now);
    let generation = policy.metadata.generation.unwrap_or_default();
    let coverage = rollout_coverage(plan, &snapshot, &|uid| ctx.reports.get(uid), generation, now);
    apply_reporting(&mut workloads, &coverage);
    let workload_pods = super::rollout::workload_pods(plan, &snapshot);
    drop(snapshot);
    ctx.requested.lock().unwrap_or_else(std::sync::PoisonError::into_inner).overlay(&mut workloads, now);
    fill_health(&mut workloads, &pods);
    let observation = rollout_observation(policy, plan, workloads.clone(), previous, now);
    let engine = rollout::plan(&observation);
    tracing::debug!(
        state = ?engine.state,
        message = %engine.message,
        restarts = engine.restarts.len(),
        in_flight = engine.in_flight.len(),
        phase = engine.progress.phase,
        soak_started = ?engine.progress.soak_started,
        workloads = ?workloads.iter().map(|w| (w.id.to_string(), w.pods, w.rolled_out, w.restart.as_ref().map(|m| m.at))).collect::<Vec<_>>(),
        "rollout plan"
    );
    let leaving = still_leaving(&leaving, &workloads, &engine);
    EnginePlan { plan: engine, workloads, leaving, coverage, workload_pods }
}

/// Health of the restarts in flight (only where a restart is settling), from the pod cache.
fn fill_health(workloads: &mut [WorkloadObservation], pods: &[Arc<PodSummary>]) {
    for w in workloads.iter_mut() {
        let Some(since) = health_check_since(w) else { continue };
        let mine: Vec<&PodSummary> =
            pods.iter().map(Arc::as_ref).filter(|p| observe::pod_belongs_to(p, &w.id)).collect();
        w.health = observe::health(&mine, since);
    }
}

/// Per-namespace outdated counts from the workloads, and the leaving namespaces' entries.
fn add_rollout_counts(namespaces: &mut Vec<NamespaceStatus>, engine: &EnginePlan, ctx: &Context) {
    let outdated = outdated_by_namespace(&engine.workloads);
    for ns in namespaces.iter_mut() {
        ns.counts.outdated = outdated.get(&ns.name).copied().unwrap_or_default();
        add_coverage(ns, engine.coverage.get(&ns.name).map(Vec::as_slice).unwrap_or_default());
    }
    let pods = ctx.pods.state();
    for name in &engine.leaving {
        let in_ns = pods.iter().map(Arc::as_ref).filter(|p| *p.namespace == **name);
        let mut counts = pod_counts(in_ns, None, false);
        counts.outdated = outdated.get(name).copied().unwrap_or_default();
        namespaces.push(NamespaceStatus {
            name: name.clone(),
            rollout_phase: None,
            state: NamespaceState::Leaving,
            counts,
            workloads: Vec::new(),
        });
    }
}

/// Requests the restarts and rollbacks of the plan, with their Events. Failures are returned
/// (the reconcile is retried); the other actions still happen.
async fn carry_out(
    policy: &TracingPolicy,
    plan: &rollout::Plan,
    requested: &[&rollout::Restart],
    dry_run: bool,
    ctx: &Context,
    now: Timestamp,
) -> Vec<Error> {
    let mut failures = Vec::new();
    if dry_run {
        return failures;
    }
    let policy_name = &policy.name_any();
    // A batch of restarts is sent a few at a time: one by one, a batch of 50 took seconds.
    let mut restarted = Vec::new();
    for chunk in requested.chunks(CONCURRENT_RESTARTS) {
        let requests: Vec<_> = chunk.iter().map(|r| request_restart(r, policy_name, ctx, now)).collect();
        for (r, result) in futures::future::join_all(requests).await {
            match result {
                Ok(()) => restarted.push(r),
                Err(e) => failures.push(e),
            }
        }
    }
    if !restarted.is_empty() {
        let note = restart_note(&restarted, plan);
        ctx.publish(policy, EventType::Normal, reason::RESTARTING, "Restart", note, None).await;
    }
    for rb in &plan.rollbacks {
        if let Err(e) = patch_workload(&rb.workload, "rollback", &observe::rollback_patch(&rb.reason, now), ctx).await {
            failures.push(e);
            continue;
        }
        ctx.remember(&rb.workload, "", Some(&rb.reason), now);
        tracing::warn!(workload = %rb.workload, reason = %rb.reason, "rolled back");
        let note = format!("rolled back {}: {}", rb.workload, rb.reason);
        let workload_ref = workload_ref(&rb.workload);
        ctx.publish(
            policy,
            EventType::Warning,
            reason::ROLLED_BACK,
            "Rollback",
            note.clone(),
            Some(workload_ref.clone()),
        )
        .await;
        ctx.publish_on(&workload_ref, EventType::Warning, reason::ROLLED_BACK, "Rollback", note).await;
    }
    failures
}

/// Restarts one workload, with its Event.
async fn request_restart<'a>(
    r: &'a rollout::Restart,
    policy_name: &str,
    ctx: &Context,
    now: Timestamp,
) -> (&'a rollout::Restart, Result<(), Error>) {
    let result = patch_workload(&r.workload, "restart", &observe::restart_patch(&r.hash, now), ctx).await;
    if result.is_ok() {
        ctx.remember(&r.workload, &r.hash, None, now);
        tracing::info!(workload = %r.workload, reason = ?r.reason, "restart requested");
        ctx.metrics.restarts.inc();
        let note = workload_restart_note(policy_name, r.reason);
        ctx.publish_on(&workload_ref(&r.workload), EventType::Normal, reason::RESTARTING, "Restart", note).await;
    }
    (r, result)
}

/// Merge-patches a workload's pod template (a restart or a rollback).
#[tracing::instrument(skip_all, fields(%action, workload = %id, error = Empty, otel.status_code = Empty))]
async fn patch_workload(
    id: &WorkloadId,
    action: &'static str,
    patch: &serde_json::Value,
    ctx: &Context,
) -> Result<(), Error> {
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patch = Patch::Merge(patch);
    let client = ctx.client.clone();
    let result = match id.kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client, &id.namespace).patch(&id.name, &pp, &patch).await.map(|_| ())
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client, &id.namespace).patch(&id.name, &pp, &patch).await.map(|_| ())
        }
        WorkloadKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client, &id.namespace).patch(&id.name, &pp, &patch).await.map(|_| ())
        }
    };
    traced(result.map_err(Error::kube("patching", id.to_string())))
}

fn workload_ref(id: &WorkloadId) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(id.kind.as_str().into()),
        namespace: Some(id.namespace.clone()),
        name: Some(id.name.clone()),
        ..Default::default()
    }
}

/// What happened in the governed namespaces during one reconcile.
struct Rollout {
    namespaces: Vec<NamespaceStatus>,
    write_failures: Vec<String>,
    activated: Vec<String>,
}

/// Carries out the step of every governed namespace (activating those the rollout reached) and
/// counts its pods. A namespace where
/// writing fails keeps its previous state; the others go on.
async fn roll_out(
    policy: &TracingPolicy,
    plan: &plan::NamespacePlan,
    gates: Gates,
    reached: &BTreeSet<String>,
    secrets: &SecretValues,
    sampling: &crate::sampling::SamplingPlan,
    ctx: &Context,
) -> Rollout {
    let previous = policy.status.as_ref();
    let mut pods_by_ns = pods_by_namespace(&ctx.pods, plan);
    let mut rollout = Rollout { namespaces: Vec::new(), write_failures: Vec::new(), activated: Vec::new() };
    for ns in &plan.governed {
        let mut step = step_for(previous.and_then(|s| s.namespace_state(&ns.name)), gates, reached.contains(&ns.name));
        if step.writes_config() {
            if let Err(e) = write_agent_objects(policy, &ns.name, secrets, sampling, ctx).await {
                tracing::warn!(namespace = %ns.name, error = %e, "writing agent objects failed");
                rollout.write_failures.push(format!("{}: {e}", ns.name));
                // An active namespace keeps its (older) config; a new one waits for the next try.
                step = if step == Step::Refresh { Step::Keep } else { Step::Hold(plan::HoldReason::WriteFailed) };
            }
        }
        if step == Step::Activate {
            rollout.activated.push(ns.name.clone());
        }
        let state = step.resulting_state();
        let pods = pods_by_ns.remove(ns.name.as_str()).unwrap_or_default();
        let active = state == NamespaceState::Active;
        let counts = pod_counts(pods.iter().map(Arc::as_ref), policy.spec.pod_selector.as_ref(), active);
        rollout.namespaces.push(NamespaceStatus {
            name: ns.name.clone(),
            rollout_phase: Some(ns.rollout_phase.clone()),
            state,
            counts,
            workloads: Vec::new(),
        });
    }
    rollout
}

/// Reports an invalid spec in the status (once per generation as an Event) and changes nothing else.
async fn reject_invalid(policy: &TracingPolicy, message: &str, ctx: &Context) -> Result<Action, Error> {
    let previous = policy.status.as_ref();
    let already_reported = condition_reason(previous, READY) == Some(reason::INVALID_SPEC)
        && previous.and_then(|s| s.observed_generation) == policy.metadata.generation;
    patch_status(policy, &invalid_spec_status(policy, message, previous, Timestamp::now()), ctx).await?;
    if already_reported {
        tracing::debug!(error = %message, "invalid spec (already reported)");
    } else {
        tracing::warn!(error = %message, previous_reason = ?condition_reason(previous, READY), "invalid spec");
        ctx.publish(policy, EventType::Warning, reason::INVALID_SPEC, "Validate", message.to_string(), None).await;
    }
    // A spec change triggers the next reconcile.
    Ok(Action::await_change())
}

/// Leaves every namespace of a deleted policy: restarts their injected workloads without injection
/// (in the policy's batches; the webhook no longer injects for a policy being deleted), waits for
/// them, then removes every object the policy owns. Until then the finalizer stays.
async fn cleanup(policy: &TracingPolicy, ctx: &Context) -> Result<Action, Error> {
    ctx.wait_for_caches().await?;
    let now = Timestamp::now();
    // Deleting a policy ends its rollout, pause included: the user asked for everything to go,
    // so its workloads leave in its batches even when it was paused.
    let mut leaving_policy = policy.clone();
    leaving_policy.spec.rollout.paused = false;
    let policies = ctx.policies.state();
    let namespaces = ctx.namespaces.state();
    let nothing_governed = plan::NamespacePlan::default();
    let engine = plan_rollout(&leaving_policy, &nothing_governed, &policies, &namespaces, ctx, now);
    let open = Gates { paused: false, dry_run: false, secrets_ready: true };
    trace::record_plan(&Span::current(), &engine.plan, open);
    let departure = departure(&engine.workloads, &engine.plan, longest_health_deadline(policy), now);
    let failures = carry_out(policy, &engine.plan, &departure.restarts, false, ctx, now).await;
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    for id in &departure.given_up {
        tracing::warn!(workload = %id, "still runs injected pods after its restart without injection; not waiting");
    }
    if !departure.waiting.is_empty() {
        tracing::info!(waiting = departure.waiting.len(), "policy deleted: waiting for workloads to lose injection");
        return Err(Error::Leaving(departure.waiting.len()));
    }

    let owned = list_owned(policy, ctx).await?;
    for object in &owned {
        delete_owned(object, ctx).await?;
    }
    let namespaces: BTreeSet<&str> = owned.iter().map(|o| o.namespace.as_str()).collect();
    tracing::info!(
        namespaces = namespaces.len(),
        "policy deleted: workloads restarted without injection, agent objects removed"
    );
    let mut note = format!("removed the agent config from {} namespace(s)", namespaces.len());
    if !departure.given_up.is_empty() {
        let names: Vec<String> = departure.given_up.iter().map(ToString::to_string).collect();
        note.push_str(&format!("; still running injected pods (their restart never finished): {}", names.join(", ")));
    }
    ctx.publish(policy, EventType::Normal, "CleanedUp", "Cleanup", note, None).await;
    // Namespaces this policy shadowed may now belong to another one.
    ctx.request_reconcile_all();
    Ok(Action::await_change())
}

/// Reads the source Secrets: the values found, and a description of each one missing.
async fn read_source_secrets(policy: &TracingPolicy, ctx: &Context) -> Result<(SecretValues, Vec<String>), Error> {
    let mut values = SecretValues::default();
    let mut missing = Vec::new();
    for (kind, r) in resources::source_secret_refs(policy) {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &r.namespace);
        let secret =
            api.get_opt(&r.name).await.map_err(Error::kube("reading", format!("Secret {}/{}", r.namespace, r.name)))?;
        match resources::pick_key(secret.as_ref(), kind, &r) {
            Ok(value) => match kind {
                SourceKind::ApiKey => values.api_key = Some(value),
                SourceKind::Ca => values.ca = Some(value),
            },
            Err(description) => missing.push(description),
        }
    }
    Ok((values, missing))
}

/// Server-side applies the agent ConfigMap (and Secret, when the policy needs one) in `namespace`.
#[tracing::instrument(skip_all, fields(%namespace, skipped = Empty, error = Empty, otel.status_code = Empty))]
async fn write_agent_objects(
    policy: &TracingPolicy,
    namespace: &str,
    secrets: &SecretValues,
    sampling: &crate::sampling::SamplingPlan,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = ctx.namespaces.get(&ObjectRef::new(namespace));
    let labels = ns.as_ref().map(|n| n.labels().clone()).unwrap_or_default();
    let agent_sampling = crate::sampling::render::agent_sampling(&policy.spec.sampling, namespace, &labels, sampling);
    let report_ca = ctx.serving_ca.ca_bundle();
    let cm = agent_configmap_with(policy, namespace, report_ca.as_deref(), agent_sampling, &ctx.continuity.probes);
    let secret = needs_secret(policy).then(|| agent_secret(policy, namespace, secrets));
    let uid = ctx.namespaces.get(&ObjectRef::new(namespace)).and_then(|ns| ns.metadata.uid.clone());
    let key = (policy.name_any(), namespace.to_string(), uid.unwrap_or_default());
    let digest = objects_digest(&cm, secret.as_ref());
    let now = std::time::Instant::now();
    // One deleted by hand is missing from the cache: written again at once.
    let present = ctx.owned_configmaps.get(&ObjectRef::new(AGENT_CONFIGMAP).within(namespace)).is_some()
        && (secret.is_none() || ctx.owned_secrets.get(&ObjectRef::new(AGENT_SECRET).within(namespace)).is_some());
    if present && ctx.written().is_fresh(&key, &digest, now) {
        // Unchanged since the last apply: no API call.
        Span::current().record("skipped", true);
        return Ok(());
    }
    traced(apply_agent_objects(namespace, &cm, secret.as_ref(), ctx).await)?;
    ctx.written().record(key, digest, now);
    Ok(())
}

async fn apply_agent_objects(
    namespace: &str,
    cm: &ConfigMap,
    secret: Option<&Secret>,
    ctx: &Context,
) -> Result<(), Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .patch(AGENT_CONFIGMAP, &pp, &Patch::Apply(cm))
        .await
        .map_err(Error::kube("applying", format!("ConfigMap {namespace}/{AGENT_CONFIGMAP}")))?;
    if let Some(secret) = secret {
        Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .patch(AGENT_SECRET, &pp, &Patch::Apply(secret))
            .await
            .map_err(Error::kube("applying", format!("Secret {namespace}/{AGENT_SECRET}")))?;
    }
    Ok(())
}

/// Every ConfigMap and Secret the policy owns, as the owned-object caches show them (they may lag a
/// write by a moment: an object missed now is removed on a later reconcile).
fn cached_owned(policy: &TracingPolicy, ctx: &Context) -> Vec<OwnedObject> {
    let configmaps = ctx.owned_configmaps.state();
    let secrets = ctx.owned_secrets.state();
    let mine = |meta: &&kube::core::ObjectMeta| meta.labels.as_ref().is_some_and(|l| is_owned_by(policy, l));
    configmaps
        .iter()
        .map(|o| &o.metadata)
        .filter(mine)
        .map(|m| owned_object(OwnedKind::ConfigMap, m))
        .chain(secrets.iter().map(|o| &o.metadata).filter(mine).map(|m| owned_object(OwnedKind::Secret, m)))
        .collect()
}

fn owned_object(kind: OwnedKind, meta: &kube::core::ObjectMeta) -> OwnedObject {
    OwnedObject {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
    }
}

/// Every ConfigMap and Secret the policy owns, cluster-wide, listed (metadata only: no Secret
/// values; by their one name, which is all RBAC lets the operator list): the final cleanup must
/// not miss one the cache has not seen yet.
async fn list_owned(policy: &TracingPolicy, ctx: &Context) -> Result<Vec<OwnedObject>, Error> {
    let lp = ListParams::default().labels(&owned_selector(policy));
    let cms = Api::<ConfigMap>::all(ctx.client.clone())
        .list_metadata(&lp.clone().fields(&resources::owned_name_selector(AGENT_CONFIGMAP)))
        .await
        .map_err(Error::kube("listing", "owned ConfigMaps"))?;
    let secrets = Api::<Secret>::all(ctx.client.clone())
        .list_metadata(&lp.fields(&resources::owned_name_selector(AGENT_SECRET)))
        .await
        .map_err(Error::kube("listing", "owned Secrets"))?;
    Ok(cms
        .items
        .iter()
        .map(|o| owned_object(OwnedKind::ConfigMap, &o.metadata))
        .chain(secrets.items.iter().map(|o| owned_object(OwnedKind::Secret, &o.metadata)))
        .collect())
}

/// Deletes one owned object, unless it changed since it was listed (e.g. another policy took the
/// namespace over). Already gone is fine.
#[tracing::instrument(skip_all, fields(namespace = %object.namespace, kind = ?object.kind, error = Empty, otel.status_code = Empty))]
async fn delete_owned(object: &OwnedObject, ctx: &Context) -> Result<(), Error> {
    // Whichever policy wrote there, its objects must be applied again before they are trusted.
    ctx.written().forget(&object.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions { resource_version: object.resource_version.clone(), uid: None }),
        ..Default::default()
    };
    let what = format!("{:?} {}/{}", object.kind, object.namespace, object.name);
    let result = match object.kind {
        OwnedKind::ConfigMap => Api::<ConfigMap>::namespaced(ctx.client.clone(), &object.namespace)
            .delete(&object.name, &dp)
            .await
            .map(|_| ()),
        OwnedKind::Secret => {
            Api::<Secret>::namespaced(ctx.client.clone(), &object.namespace).delete(&object.name, &dp).await.map(|_| ())
        }
    };
    traced(match result {
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        other => other.map_err(Error::kube("deleting", what)),
    })
}

/// Writes the whole status with server-side apply, as its only owner.
#[tracing::instrument(skip_all, fields(phase = %trace::phase_name(status.phase.as_ref()), error = Empty, otel.status_code = Empty))]
async fn patch_status(policy: &TracingPolicy, status: &TracingPolicyStatus, ctx: &Context) -> Result<(), Error> {
    let api: Api<TracingPolicy> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": TracingPolicy::api_version(&()),
        "kind": TracingPolicy::kind(&()),
        "status": status,
    });
    let result = api
        .patch_status(&policy.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(Error::kube("patching", format!("status of TracingPolicy {}", policy.name_any())));
    traced(result)
}

/// Marks the current (API write) span as failed when `result` is an error.
fn traced<T>(result: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &result {
        let span = Span::current();
        span.record("error", e.to_string());
        span.record("otel.status_code", "error");
    }
    result
}

/// How often a reconcile looks again whether a cache has filled.
const CACHE_POLL: Duration = Duration::from_millis(100);

/// Waits (at most [`CACHE_WAIT`]) until `store` holds its first full list. kube-runtime's
/// readiness future keeps a single waker, so of several reconciles waiting at start-up only the
/// last would be woken and the others would sleep until their timeout: it is polled instead.
async fn cache_ready<K>(store: &Store<K>, what: &'static str) -> Result<(), Error>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = tokio::time::Instant::now() + CACHE_WAIT;
    loop {
        if let Ok(ready) = tokio::time::timeout(CACHE_POLL, store.wait_until_ready()).await {
            return ready.map_err(|_| Error::CacheNotReady(what));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::CacheNotReady(what));
        }
    }
}

/// The cached pods of the governed namespaces, grouped by namespace.
fn pods_by_namespace<'a>(
    pods: &Store<PodSummary>,
    plan: &'a plan::NamespacePlan,
) -> BTreeMap<&'a str, Vec<Arc<PodSummary>>> {
    let mut grouped: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for pod in pods.state() {
        if let Some(g) = plan.governed.iter().find(|g| *g.name == *pod.namespace) {
            grouped.entry(g.name.as_str()).or_default().push(pod);
        }
    }
    grouped
}

fn namespace_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

impl Context {
    /// Waits until the namespace, pod and workload caches hold a full list: deciding on an empty
    /// cache would remove the agent config from every namespace.
    async fn wait_for_caches(&self) -> Result<(), Error> {
        cache_ready(&self.namespaces, "namespace").await?;
        cache_ready(&self.pods, "pod").await?;
        cache_ready(&self.owned_configmaps, "owned configmap").await?;
        cache_ready(&self.owned_secrets, "owned secret").await?;
        cache_ready(&self.deployments, "deployment").await?;
        cache_ready(&self.statefulsets, "statefulset").await?;
        cache_ready(&self.daemonsets, "daemonset").await
    }

    fn written(&self) -> std::sync::MutexGuard<'_, WriteMemo> {
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a patch until the workload cache shows it.
    fn remember(&self, id: &WorkloadId, hash: &str, excluded: Option<&str>, at: Timestamp) {
        let mark = RestartMark { hash: hash.to_string(), at };
        let mut requested = self.requested.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        requested.record(id.clone(), mark, excluded.map(str::to_string));
    }

    fn request_reconcile_all(&self) {
        // Fails only when the controller is stopping; nothing to do then.
        let _ = self.reconcile_all.unbounded_send(());
    }

    /// Publishes an Event on the policy; a failure is logged, never fails the reconcile.
    pub(super) async fn publish(
        &self,
        policy: &TracingPolicy,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        secondary: Option<ObjectReference>,
    ) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary };
        if let Err(e) = self.events.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "could not publish event");
        }
    }

    /// Publishes an Event on another object (a workload); a failure is logged only.
    async fn publish_on(&self, object: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.events.publish(&event, object).await {
            tracing::warn!(reason, error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }))
    }

    #[test]
    fn a_finalizer_patch_refused_by_its_test_is_a_race_not_a_failure() {
        assert!(lost_finalizer_race(&finalizer::Error::AddFinalizer(api_error(422))));
        assert!(!lost_finalizer_race(&finalizer::Error::AddFinalizer(api_error(403))), "RBAC is a real failure");
        assert!(!lost_finalizer_race(&finalizer::Error::RemoveFinalizer(api_error(422))));
    }

    #[test]
    fn a_leaving_policy_is_waiting_wrapped_or_not() {
        assert!(Error::Leaving(2).is_waiting());
        assert!(Error::Finalizer(Box::new(finalizer::Error::CleanupFailed(Error::Leaving(1)))).is_waiting());
        assert!(!Error::WriteFailed(1).is_waiting());
        assert!(!Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(Error::WriteFailed(1)))).is_waiting());
    }

    #[tokio::test]
    async fn every_reconcile_waiting_for_a_cache_wakes_when_it_fills() {
        let (store, mut writer) = kube::runtime::reflector::store::<Namespace>();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { cache_ready(&store, "namespace").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let all = tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(waiters)).await;
        let results = all.expect("a waiter was not woken when the cache filled");
        assert!(results.into_iter().all(|r| r.is_ok_and(|r| r.is_ok())));
    }
}
