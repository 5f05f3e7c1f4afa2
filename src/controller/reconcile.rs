//! The TracingPolicy reconciler (I/O only): gathers the cached state and the source Secrets,
//! asks [`crate::decision`] what to do ([`decide`]), and carries the intent out in order: agent
//! objects, stale objects, status (computed again by the pure side where a write failed),
//! follow-up, restarts and rollbacks, Events. It decides nothing itself.

use super::cache::CachedWorkload;
use super::metrics::ControllerMetrics;
use super::trace;
use crate::api::keys::FIELD_MANAGER;
use crate::api::validate::validate;
use crate::api::{TracingPolicy, TracingPolicyStatus};
use crate::decision::agent_objects::{self, is_owned_by, owned_selector, SourceKind, WriteMemo};
use crate::decision::governance::{OwnedKind, OwnedObject};
use crate::decision::status::reason;
use crate::decision::workloads::{restart_note, workload_restart_note, Requested, RolloutInputs};
use crate::decision::{
    cleaned_up_note, decide, decide_departure, decide_invalid_spec, AgentObjects, DepartureIntent, ReconcileInputs,
    ReconcileIntent, SourceSecrets, MIN_REQUEUE, RETRY_AFTER,
};
use crate::inject::InjectOptions;
use crate::rollout::pod::PodSummary;
use crate::rollout::workload::Workload;
use crate::rollout::{observe, Plan, Restart, RestartMark, Rollback, WorkloadId, WorkloadKind};
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
/// How often a deleted policy looks at the workloads it waits for.
const LEAVING_POLL: Duration = Duration::from_secs(2);
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
    pub secret_sources: agent_objects::SecretSources,
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

/// Gathers the cached state, decides, and carries the intent out in order: agent objects,
/// deletions, status, follow-up, restarts, Events.
async fn apply(policy: &TracingPolicy, ctx: &Context) -> Result<Action, Error> {
    ctx.wait_for_caches().await?;
    if let Err(errors) = validate(&policy.spec) {
        Span::current().record("waiting", "invalid_spec");
        return reject_invalid(policy, &errors.to_string(), ctx).await;
    }
    let secrets = read_source_secrets(policy, ctx).await?;
    let now = Timestamp::now();
    let intent = ctx.decide(policy, secrets, now);
    trace::record_plan(&Span::current(), &intent.engine, intent.gates);
    ctx.requested().forget(&intent.seen_requests);

    let failures = write_agent_objects(policy, &intent.writes, ctx).await;
    // The second pure step: the status (and what follows) where writing failed.
    let intent = intent.after_writes(policy, &failures);
    for object in &intent.deletes {
        delete_owned(object, ctx).await?;
        tracing::info!(namespace = %object.namespace, kind = ?object.kind, "removed agent object the policy no longer needs");
    }
    if let Some(status) = &intent.status {
        patch_status(policy, status, ctx).await?;
    }
    super::after_rollout::apply_follow_up(policy, intent.follow_up, ctx).await;
    // Restarts after the status write: the namespaces they inject into are recorded Active.
    let restart_failures = request_restarts(policy, &intent.restarts, &intent.engine, ctx, now).await;
    let rollback_failures = request_rollbacks(policy, &intent.rollbacks, ctx, now).await;
    if intent.reconcile_all {
        ctx.request_reconcile_all();
    }
    // Events after the status write: "activated" means the webhook now injects there.
    for event in intent.events {
        tracing::info!(reason = %event.reason, note = %event.note, "event");
        ctx.publish(policy, event.type_, &event.reason, event.action, event.note, event.related).await;
    }
    if !intent.write_failures.is_empty() {
        return Err(Error::WriteFailed(intent.write_failures.len()));
    }
    if let Some(e) = restart_failures.into_iter().chain(rollback_failures).next() {
        return Err(e);
    }
    Ok(Action::requeue(intent.requeue))
}

/// Requests the restarts, a few at a time, each with its Event on the workload, then one Event on
/// the policy naming those requested (`engine`: the plan they come from, for the note). Failures
/// are returned (the reconcile is retried); the other restarts still happen.
async fn request_restarts(
    policy: &TracingPolicy,
    restarts: &[Restart],
    engine: &Plan,
    ctx: &Context,
    now: Timestamp,
) -> Vec<Error> {
    let policy_name = &policy.name_any();
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    // A batch of restarts is sent a few at a time: one by one, a batch of 50 took seconds.
    for chunk in restarts.chunks(CONCURRENT_RESTARTS) {
        let requests: Vec<_> = chunk.iter().map(|r| request_restart(r, policy_name, ctx, now)).collect();
        for (r, result) in futures::future::join_all(requests).await {
            match result {
                Ok(()) => done.push(r),
                Err(e) => failures.push(e),
            }
        }
    }
    if !done.is_empty() {
        let note = restart_note(&done, engine);
        ctx.publish(policy, EventType::Normal, reason::RESTARTING, "Restart", note, None).await;
    }
    failures
}

/// Rolls the workloads back (each with its Events). Failures are returned; the other rollbacks
/// still happen.
async fn request_rollbacks(
    policy: &TracingPolicy,
    rollbacks: &[Rollback],
    ctx: &Context,
    now: Timestamp,
) -> Vec<Error> {
    let mut failures = Vec::new();
    for rb in rollbacks {
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
    r: &'a Restart,
    policy_name: &str,
    ctx: &Context,
    now: Timestamp,
) -> (&'a Restart, Result<(), Error>) {
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

/// Reports an invalid spec in the status (once per generation as an Event) and changes nothing else.
async fn reject_invalid(policy: &TracingPolicy, message: &str, ctx: &Context) -> Result<Action, Error> {
    let intent = decide_invalid_spec(policy, message, Timestamp::now());
    patch_status(policy, &intent.status, ctx).await?;
    match intent.event {
        Some(event) => {
            tracing::warn!(error = %message, "invalid spec");
            ctx.publish(policy, event.type_, &event.reason, event.action, event.note, event.related).await;
        }
        None => tracing::debug!(error = %message, "invalid spec (already reported)"),
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
    let departure = ctx.decide_departure(policy, now);
    trace::record_plan(&Span::current(), &departure.engine, departure.gates);
    ctx.requested().forget(&departure.seen_requests);
    let restart_failures = request_restarts(policy, &departure.restarts, &departure.engine, ctx, now).await;
    let rollback_failures = request_rollbacks(policy, &departure.rollbacks, ctx, now).await;
    if let Some(e) = restart_failures.into_iter().chain(rollback_failures).next() {
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
    let note = cleaned_up_note(namespaces.len(), &departure.given_up);
    ctx.publish(policy, EventType::Normal, "CleanedUp", "Cleanup", note, None).await;
    // Namespaces this policy shadowed may now belong to another one.
    ctx.request_reconcile_all();
    Ok(Action::await_change())
}

/// Reads the source Secrets: the values found, and a description of each one missing. Secrets
/// outside the allowed namespaces are refused before anything is read.
async fn read_source_secrets(policy: &TracingPolicy, ctx: &Context) -> Result<SourceSecrets, Error> {
    let refused = ctx.secret_sources.refusals(policy);
    if !refused.is_empty() {
        return Ok(SourceSecrets { refused, ..Default::default() });
    }
    let mut secrets = SourceSecrets::default();
    for (kind, r) in agent_objects::source_secret_refs(policy) {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &r.namespace);
        let secret =
            api.get_opt(&r.name).await.map_err(Error::kube("reading", format!("Secret {}/{}", r.namespace, r.name)))?;
        match agent_objects::pick_key(secret.as_ref(), kind, &r) {
            Ok(value) => match kind {
                SourceKind::ApiKey => secrets.values.api_key = Some(value),
                SourceKind::Ca => secrets.values.ca = Some(value),
            },
            Err(description) => secrets.missing.push(description),
        }
    }
    Ok(secrets)
}

/// Applies the agent objects of every namespace in turn; returns the namespaces where it failed,
/// with the error (the others go on).
async fn write_agent_objects(
    policy: &TracingPolicy,
    writes: &[AgentObjects],
    ctx: &Context,
) -> BTreeMap<String, String> {
    let mut failures = BTreeMap::new();
    for objects in writes {
        if let Err(e) = write_namespace_objects(policy, objects, ctx).await {
            tracing::warn!(namespace = %objects.namespace, error = %e, "writing agent objects failed");
            failures.insert(objects.namespace.clone(), e.to_string());
        }
    }
    failures
}

/// Server-side applies the agent ConfigMap (and Secret, when the policy needs one) in one
/// namespace, unless the same objects were applied there recently and are still there.
// The span keeps the name the README documents for the operator's traces.
#[tracing::instrument(name = "write_agent_objects", skip_all, fields(namespace = %objects.namespace, skipped = Empty, error = Empty, otel.status_code = Empty))]
async fn write_namespace_objects(policy: &TracingPolicy, objects: &AgentObjects, ctx: &Context) -> Result<(), Error> {
    let key = (policy.name_any(), objects.namespace.clone(), objects.namespace_uid.clone());
    let now = std::time::Instant::now();
    // One deleted by hand is missing from the cache: written again at once.
    if objects.present && ctx.written().is_fresh(&key, &objects.digest, now) {
        // Unchanged since the last apply: no API call.
        Span::current().record("skipped", true);
        return Ok(());
    }
    traced(apply_agent_objects(&objects.namespace, &objects.configmap, objects.secret.as_ref(), ctx).await)?;
    ctx.written().record(key, objects.digest.clone(), now);
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
        .list_metadata(&lp.clone().fields(&agent_objects::owned_name_selector(AGENT_CONFIGMAP)))
        .await
        .map_err(Error::kube("listing", "owned ConfigMaps"))?;
    let secrets = Api::<Secret>::all(ctx.client.clone())
        .list_metadata(&lp.fields(&agent_objects::owned_name_selector(AGENT_SECRET)))
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

/// The workloads of the three cached kinds, as the rollout's summaries.
fn cached_workloads<'a>(
    deployments: &'a [Arc<CachedWorkload<Deployment>>],
    statefulsets: &'a [Arc<CachedWorkload<StatefulSet>>],
    daemonsets: &'a [Arc<CachedWorkload<DaemonSet>>],
) -> Vec<&'a Workload> {
    deployments
        .iter()
        .map(|d| &d.workload)
        .chain(statefulsets.iter().map(|s| &s.workload))
        .chain(daemonsets.iter().map(|d| &d.workload))
        .collect()
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

    /// Runs `decide` on the rollout inputs, made from snapshots of the caches at `now`.
    fn with_rollout_inputs<R>(&self, now: Timestamp, decide: impl FnOnce(RolloutInputs<'_>) -> R) -> R {
        let policies = self.policies.state();
        let namespaces = self.namespaces.state();
        let pods = self.pods.state();
        let (deployments, statefulsets, daemonsets) =
            (self.deployments.state(), self.statefulsets.state(), self.daemonsets.state());
        let workloads = cached_workloads(&deployments, &statefulsets, &daemonsets);
        self.reports.prune(now);
        let requested = self.requested().clone();
        let report_of = |uid: &str| self.reports.get(uid);
        decide(RolloutInputs {
            policies: &policies,
            namespaces: &namespaces,
            workloads: &workloads,
            pods: &pods,
            requested: &requested,
            report_of: &report_of,
            inject_options: &self.inject_options,
            now,
        })
    }

    /// Decides what the reconcile of a live policy does, from snapshots of the caches.
    fn decide(&self, policy: &TracingPolicy, secrets: SourceSecrets, now: Timestamp) -> ReconcileIntent {
        self.with_rollout_inputs(now, |rollout| {
            let present = |namespace: &str, with_secret: bool| {
                self.owned_configmaps.get(&ObjectRef::new(AGENT_CONFIGMAP).within(namespace)).is_some()
                    && (!with_secret
                        || self.owned_secrets.get(&ObjectRef::new(AGENT_SECRET).within(namespace)).is_some())
            };
            let service_graph = self.continuity.enabled().then(|| {
                let inventory =
                    || crate::decision::continuity::inventory(rollout.workloads.iter().copied(), rollout.policies);
                self.continuity.graph(&self.reports, inventory, now)
            });
            decide(&ReconcileInputs {
                policy,
                rollout,
                owned: cached_owned(policy, self),
                agent_objects_present: &present,
                secrets,
                holds_coverage: self.reports.holds_coverage(now),
                report_ca: self.serving_ca.ca_bundle(),
                probes: &self.continuity.probes,
                service_graph,
            })
        })
    }

    /// Decides what the reconcile of a deleted policy does, from snapshots of the caches.
    fn decide_departure(&self, policy: &TracingPolicy, now: Timestamp) -> DepartureIntent {
        self.with_rollout_inputs(now, |rollout| decide_departure(policy, &rollout))
    }

    fn requested(&self) -> std::sync::MutexGuard<'_, Requested> {
        self.requested.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn written(&self) -> std::sync::MutexGuard<'_, WriteMemo> {
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a patch until the workload cache shows it.
    fn remember(&self, id: &WorkloadId, hash: &str, excluded: Option<&str>, at: Timestamp) {
        let mark = RestartMark { hash: hash.to_string(), at };
        self.requested().record(id.clone(), mark, excluded.map(str::to_string));
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
