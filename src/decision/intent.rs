//! One reconcile of a policy, decided: [`decide`] returns the [`ReconcileIntent`] (what the
//! controller writes, deletes, restarts and publishes, in order, and when it looks again),
//! [`ReconcileIntent::after_writes`] computes the status again where a write failed;
//! [`decide_departure`] and [`decide_invalid_spec`] do the same for a deleted policy and an
//! invalid spec.

use super::agent_objects::{agent_configmap_with, agent_secret, objects_digest, SecretValues};
use super::{after_rollout, continuity, governance, status, workloads};
use crate::api::agent_config::needs_secret;
use crate::api::{NamespaceState, NamespaceStatus, TracingPolicy, TracingPolicyStatus};
use crate::continuity::Graph;
use crate::rollout::coverage::PodReport;
use crate::rollout::pod::PodSummary;
use crate::rollout::{Plan, Restart, Rollback, WorkloadId};
use after_rollout::FollowUp;
use governance::{govern, pod_counts, stale_objects, step_for, Gates, HoldReason, NamespaceStep, OwnedObject};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use status::{condition_reason, desired_status, reason, RolloutOutcome, StatusInputs, READY};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracelight_contract::probe::ProbeSettings;
use workloads::{
    add_coverage, departure, hold_coverage, longest_health_deadline, outdated_by_namespace, restarts_to_request,
    rollout_status, view_rollout, RolloutInputs, RolloutView,
};

/// Periodic re-reconcile, to refresh pod counts (pods do not trigger reconciles) and repair agent
/// objects deleted by hand.
pub const REQUEUE_AFTER: Duration = Duration::from_secs(60);
/// Shortest requeue the rollout asks for (a deadline just passed).
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// Retry delay after a failed reconcile (and while a source Secret is missing: Secrets are not
/// watched).
pub const RETRY_AFTER: Duration = Duration::from_secs(15);

/// The source Secrets of a policy, as read before deciding.
#[derive(Debug, Default)]
pub struct SourceSecrets {
    /// The values found.
    pub values: SecretValues,
    /// Human-readable descriptions of missing source Secrets (`ns/name` and key), never values.
    pub missing: Vec<String>,
    /// Source Secrets refused (outside the allowed namespaces: never read), by name.
    pub refused: Vec<String>,
}

/// Everything a reconcile of a live policy decides from: snapshots of the caches, and what was
/// read before deciding (the source Secrets).
pub struct ReconcileInputs<'a> {
    pub policy: &'a TracingPolicy,
    /// The rollout's inputs (cached policies, namespaces, workloads, pods, reports, requests).
    pub rollout: RolloutInputs<'a>,
    /// The agent objects the policy owns, as the owned-object caches show them.
    pub owned: Vec<OwnedObject>,
    /// Whether the agent ConfigMap (and, when asked for, the agent Secret) of a namespace is in
    /// the owned-object caches: one deleted by hand is written again at once.
    pub agent_objects_present: &'a dyn Fn(&str, bool) -> bool,
    pub secrets: SourceSecrets,
    /// While this replica has just started leading, coverage does not drop below the previous status.
    pub holds_coverage: bool,
    /// The CA bundle agents verify the report endpoint with, when known.
    pub report_ca: Option<String>,
    /// What the agents' config asks of probe traces.
    pub probes: &'a ProbeSettings,
    /// The service graph joined from the agents' probe traces (`None`: probes off).
    pub service_graph: Option<Arc<Graph>>,
}

/// The agent objects to apply in one namespace.
#[derive(Clone, Debug)]
pub struct AgentObjects {
    pub namespace: String,
    pub configmap: ConfigMap,
    /// Present when the policy needs one (an API key or a CA).
    pub secret: Option<Secret>,
    /// The namespace's uid (a recreated namespace is written at once).
    pub namespace_uid: String,
    /// A digest of both objects: unchanged objects are not applied again for a while.
    pub digest: String,
    /// Both objects are in the owned-object caches.
    pub present: bool,
}

/// An Event on the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyEvent {
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
    /// The object the Event is also about (a namespace).
    pub related: Option<ObjectReference>,
}

/// Everything one reconcile of a live policy does, in the order the controller carries it out:
/// apply the agent objects, delete the stale ones, write the status, the after-rollout
/// follow-up, request the restarts and rollbacks (with their Events), then publish the Events,
/// and look again after `requeue`. Computed by [`decide`]; when writes fail,
/// [`after_writes`](Self::after_writes) computes the status (and what follows from it) again.
#[derive(Debug)]
pub struct ReconcileIntent {
    /// The engine's plan (for the reconcile's trace and the restart Event's note).
    pub engine: Plan,
    pub gates: Gates,
    /// Agent objects to apply, by namespace name.
    pub writes: Vec<AgentObjects>,
    /// Owned objects to delete, sorted.
    pub deletes: Vec<OwnedObject>,
    /// The status to write (`None`: unchanged).
    pub status: Option<TracingPolicyStatus>,
    /// The regression rule and the review's Events, once the status is written.
    pub follow_up: FollowUp,
    /// Restarts to request, after the status that records their namespaces as active.
    pub restarts: Vec<Restart>,
    pub rollbacks: Vec<Rollback>,
    /// Requests the memo of requested restarts no longer needs.
    pub seen_requests: Vec<(WorkloadId, Timestamp)>,
    /// The spec changed: every policy is reconciled (namespaces may change hands).
    pub reconcile_all: bool,
    /// Events on the policy, after the status write.
    pub events: Vec<PolicyEvent>,
    /// Namespaces where writing failed, with the error (the reconcile fails).
    pub write_failures: Vec<String>,
    /// When to look again.
    pub requeue: Duration,
    /// What the status is computed from, kept for [`after_writes`](Self::after_writes).
    draft: StatusDraft,
}

/// What the status and what follows from it are computed from, with every write assumed done.
#[derive(Clone, Debug)]
struct StatusDraft {
    inputs: StatusInputs,
    /// The step of each governed namespace, by name.
    steps: Vec<(String, NamespaceStep)>,
    coverage: BTreeMap<String, Vec<(WorkloadId, crate::api::WorkloadCoverage)>>,
    workload_pods: after_rollout::WorkloadPods,
    reports: BTreeMap<String, PodReport>,
    /// Budgets follow the agents' rates: the requeue at most this.
    budget_interval: Duration,
    now: Timestamp,
}

/// What a live policy's reconcile does, from the cached state (see [`ReconcileIntent`]).
pub fn decide(inputs: &ReconcileInputs) -> ReconcileIntent {
    let policy = inputs.policy;
    let previous = policy.status.as_ref();
    let now = inputs.rollout.now;
    let r = &inputs.rollout;
    let governance = govern(policy, r.policies.iter().map(Arc::as_ref), r.namespaces.iter().map(Arc::as_ref));
    let gates = Gates {
        paused: policy.spec.rollout.paused,
        dry_run: policy.spec.rollout.dry_run,
        secrets_ready: inputs.secrets.missing.is_empty() && inputs.secrets.refused.is_empty(),
    };
    let view = view_rollout(policy, &governance, r);
    let reached: BTreeSet<&str> = view.engine.active_namespaces.iter().map(String::as_str).collect();
    let sampling = sampling_plan(policy, &view);

    // Each governed namespace's step, its agent objects, and its entry in the status.
    let mut pods_by_ns = pods_by_namespace(r.pods, &governance);
    let mut steps = Vec::new();
    let mut writes = Vec::new();
    let mut namespaces = Vec::new();
    for ns in &governance.governed {
        let step = step_for(previous.and_then(|s| s.namespace_state(&ns.name)), gates, reached.contains(&*ns.name));
        if step.writes_config() {
            writes.push(agent_objects(inputs, &ns.name, &sampling));
        }
        steps.push((ns.name.clone(), step));
        let state = step.resulting_state();
        let pods = pods_by_ns.remove(ns.name.as_str()).unwrap_or_default();
        let counts = pod_counts(pods, policy.spec.pod_selector.as_ref(), state == NamespaceState::Active);
        namespaces.push(NamespaceStatus {
            name: ns.name.clone(),
            rollout_phase: Some(ns.rollout_phase.clone()),
            state,
            counts,
            workloads: Vec::new(),
        });
    }
    add_rollout_counts(&mut namespaces, &view, r.pods);
    if inputs.holds_coverage {
        for ns in &mut namespaces {
            hold_coverage(ns, previous.and_then(|p| p.namespaces.iter().find(|n| n.name == ns.name)));
        }
    }
    crate::sampling::annotate_workloads(&mut namespaces, &sampling);
    let continuity = inputs.service_graph.as_ref().map(|graph| {
        let service_graph = continuity::annotate(&mut namespaces, graph);
        (service_graph, continuity::condition(&namespaces))
    });

    // Injected pods of leaving namespaces still mount the agent objects: they go once it has left.
    let deletes: Vec<OwnedObject> = stale_objects(&governance, needs_secret(policy), &inputs.owned)
        .into_iter()
        .filter(|o| !view.leaving.contains(&o.namespace))
        .collect();

    let previously_active: BTreeSet<String> = previous
        .map(|s| s.namespaces.iter().filter(|n| n.state == NamespaceState::Active).map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    let requested = restarts_to_request(&view.engine, &previously_active, gates.dry_run);
    let outcome = RolloutOutcome {
        state: view.engine.state,
        message: view.engine.message.clone(),
        status: rollout_status(&view.engine, &view.workloads, &requested, previous, gates.dry_run),
    };
    let restarts: Vec<Restart> = requested.into_iter().cloned().collect();
    // A dry run requests nothing.
    let rollbacks = if gates.dry_run { Vec::new() } else { view.engine.rollbacks.clone() };

    let reports: BTreeMap<String, PodReport> =
        view.workload_pods.values().flatten().filter_map(|uid| Some((uid.clone(), (r.report_of)(uid)?))).collect();
    let draft = StatusDraft {
        inputs: StatusInputs {
            namespaces,
            overlaps: governance.overlaps,
            missing_secrets: inputs.secrets.missing.clone(),
            refused_secrets: inputs.secrets.refused.clone(),
            write_failures: Vec::new(),
            rollout: Some(outcome),
            budgets_unmet: crate::sampling::SamplingPlan::has_budget(&policy.spec.sampling)
                .then(|| sampling.unmet.clone()),
            sampling: Some(sampling.status),
            continuity,
        },
        steps,
        coverage: view.coverage,
        workload_pods: view.workload_pods,
        reports,
        budget_interval: r
            .inject_options
            .report_interval_secs
            .map_or(crate::sampling::BUDGET_INTERVAL, Duration::from_secs),
        now,
    };
    let concluded = conclude(policy, &draft, &BTreeMap::new(), view.engine.requeue_after);
    ReconcileIntent {
        gates,
        writes,
        deletes,
        status: concluded.status,
        follow_up: concluded.follow_up,
        restarts,
        rollbacks,
        seen_requests: view.seen_requests,
        reconcile_all: previous.and_then(|s| s.observed_generation) != policy.metadata.generation,
        events: concluded.events,
        write_failures: concluded.write_failures,
        requeue: concluded.requeue,
        engine: view.engine,
        draft,
    }
}

impl ReconcileIntent {
    /// The intent once the writes are done: where writing failed (`failures`: namespace and
    /// error), an active namespace keeps its (older) config and a new one waits for the next try,
    /// and the status, the follow-up, the Events and the requeue say so. Unchanged without failures.
    pub fn after_writes(self, policy: &TracingPolicy, failures: &BTreeMap<String, String>) -> ReconcileIntent {
        if failures.is_empty() {
            return self;
        }
        let concluded = conclude(policy, &self.draft, failures, self.engine.requeue_after);
        ReconcileIntent {
            status: concluded.status,
            follow_up: concluded.follow_up,
            events: concluded.events,
            write_failures: concluded.write_failures,
            requeue: concluded.requeue,
            ..self
        }
    }
}

/// What follows from the writes' results.
struct Concluded {
    status: Option<TracingPolicyStatus>,
    follow_up: FollowUp,
    events: Vec<PolicyEvent>,
    write_failures: Vec<String>,
    requeue: Duration,
}

/// The status, the after-rollout follow-up, the Events and the requeue, given the namespaces
/// where writing failed.
fn conclude(
    policy: &TracingPolicy,
    draft: &StatusDraft,
    failures: &BTreeMap<String, String>,
    engine_requeue: Option<Duration>,
) -> Concluded {
    let previous = policy.status.as_ref();
    let now = draft.now;
    let mut inputs = draft.inputs.clone();
    let mut activated = Vec::new();
    for (name, step) in &draft.steps {
        let mut step = *step;
        if let Some(error) = failures.get(name) {
            inputs.write_failures.push(format!("{name}: {error}"));
            // An active namespace keeps its (older) config; a new one waits for the next try.
            step = if step == NamespaceStep::Refresh {
                NamespaceStep::Keep
            } else {
                NamespaceStep::Hold(HoldReason::WriteFailed)
            };
            if let Some(ns) = inputs.namespaces.iter_mut().find(|n| n.name == *name) {
                ns.state = step.resulting_state();
                if ns.state != NamespaceState::Active {
                    // Nothing is missed where the agent's config is not written (see `pod_counts`).
                    ns.counts.missed = 0;
                }
            }
        }
        if step == NamespaceStep::Activate {
            activated.push(name.clone());
        }
    }
    let mut status = desired_status(policy, &inputs, previous, now);
    let follow_up =
        after_rollout::decide(policy, &draft.coverage, &draft.workload_pods, &mut status, &draft.reports, now);

    // Events after the status write: "activated" means the webhook now injects there.
    let mut events: Vec<PolicyEvent> = activated
        .iter()
        .map(|ns| PolicyEvent {
            type_: EventType::Normal,
            reason: "NamespaceActivated".into(),
            action: "Activate",
            note: format!("agent config written to namespace {ns}; new pods there are injected"),
            related: Some(namespace_ref(ns)),
        })
        .collect();
    for (ns, skipped) in status::newly_skipped(previous, &status) {
        events.push(PolicyEvent {
            type_: EventType::Warning,
            reason: reason::INJECTION_SKIPPED.into(),
            action: "Inject",
            note: format!(
                "{skipped} pod(s) in namespace {ns} were not injected; the reason is in each pod's annotation tracelight.io/injection-status"
            ),
            related: Some(namespace_ref(&ns)),
        });
    }
    if !inputs.missing_secrets.is_empty() && condition_reason(previous, READY) != Some(reason::SECRET_NOT_FOUND) {
        events.push(PolicyEvent {
            type_: EventType::Warning,
            reason: reason::SECRET_NOT_FOUND.into(),
            action: "CopySecret",
            note: inputs.missing_secrets.join("; "),
            related: None,
        });
    }
    if !inputs.refused_secrets.is_empty() && condition_reason(previous, READY) != Some(reason::SECRET_NOT_ALLOWED) {
        events.push(PolicyEvent {
            type_: EventType::Warning,
            reason: reason::SECRET_NOT_ALLOWED.into(),
            action: "CopySecret",
            note: inputs.refused_secrets.join("; "),
            related: None,
        });
    }

    // Secrets are not watched: look again soon for the one that is missing.
    let requeue = if inputs.missing_secrets.is_empty() { REQUEUE_AFTER } else { RETRY_AFTER };
    // Budgets follow the agents' rates: look again at every report interval.
    let requeue = if inputs.budgets_unmet.is_some() { requeue.min(draft.budget_interval) } else { requeue };
    // Broken links surface a settle delay after their call, from reports that wake nothing.
    let requeue = if inputs.continuity.is_some() { requeue.min(continuity::REQUEUE) } else { requeue };
    // The engine asks to look again at a soak's end or a health deadline.
    let requeue = engine_requeue.map_or(requeue, |d| requeue.min(d.max(MIN_REQUEUE)));
    // The next scheduled review.
    let requeue = follow_up.requeue_after.map_or(requeue, |d| requeue.min(d.max(MIN_REQUEUE)));

    Concluded {
        // Most reconciles of a rollout in progress change nothing the status shows.
        status: (previous != Some(&status)).then_some(status),
        follow_up,
        events,
        write_failures: inputs.write_failures,
        requeue,
    }
}

/// The agent objects of `namespace`.
fn agent_objects(inputs: &ReconcileInputs, namespace: &str, sampling: &crate::sampling::SamplingPlan) -> AgentObjects {
    let policy = inputs.policy;
    let ns = inputs.rollout.namespaces.iter().find(|n| n.metadata.name.as_deref() == Some(namespace));
    let labels = ns.map(|n| n.labels().clone()).unwrap_or_default();
    let agent_sampling = crate::sampling::render::agent_sampling(&policy.spec.sampling, namespace, &labels, sampling);
    let configmap = agent_configmap_with(policy, namespace, inputs.report_ca.as_deref(), agent_sampling, inputs.probes);
    let secret = needs_secret(policy).then(|| agent_secret(policy, namespace, &inputs.secrets.values));
    let digest = objects_digest(&configmap, secret.as_ref());
    AgentObjects {
        namespace: namespace.to_string(),
        present: (inputs.agent_objects_present)(namespace, secret.is_some()),
        namespace_uid: ns.and_then(|n| n.metadata.uid.clone()).unwrap_or_default(),
        configmap,
        secret,
        digest,
    }
}

/// Sampling ratios and caps from the agents' measured rates (the coverage carries them) and the
/// ratios in effect (the previous status).
fn sampling_plan(policy: &TracingPolicy, view: &RolloutView) -> crate::sampling::SamplingPlan {
    let coverage: BTreeMap<String, Vec<(String, &crate::api::WorkloadCoverage)>> = view
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

/// The cached pods of the governed namespaces, grouped by namespace.
fn pods_by_namespace<'a>(
    pods: &'a [Arc<PodSummary>],
    governance: &'a governance::Governance,
) -> BTreeMap<&'a str, Vec<&'a PodSummary>> {
    let mut grouped: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for pod in pods {
        if let Some(g) = governance.governed.iter().find(|g| *g.name == *pod.namespace) {
            grouped.entry(g.name.as_str()).or_default().push(pod.as_ref());
        }
    }
    grouped
}

/// Per-namespace outdated counts and coverage from the workloads, and the leaving namespaces' entries.
fn add_rollout_counts(namespaces: &mut Vec<NamespaceStatus>, view: &RolloutView, pods: &[Arc<PodSummary>]) {
    let outdated = outdated_by_namespace(&view.workloads);
    for ns in namespaces.iter_mut() {
        ns.counts.outdated = outdated.get(&ns.name).copied().unwrap_or_default();
        add_coverage(ns, view.coverage.get(&ns.name).map(Vec::as_slice).unwrap_or_default());
    }
    for name in &view.leaving {
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

/// A reference to a namespace, the related object of its Events.
fn namespace_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// What the reconcile of a policy whose spec failed validation does: write the status (the
/// conditions say why; nothing else changes), and publish one Warning Event per generation.
#[derive(Debug)]
pub struct InvalidSpecIntent {
    pub status: TracingPolicyStatus,
    /// `None`: already reported for this generation.
    pub event: Option<PolicyEvent>,
}

/// What the reconcile of a policy with an invalid spec does (see [`InvalidSpecIntent`]).
pub fn decide_invalid_spec(policy: &TracingPolicy, message: &str, now: Timestamp) -> InvalidSpecIntent {
    let previous = policy.status.as_ref();
    let already_reported = condition_reason(previous, READY) == Some(reason::INVALID_SPEC)
        && previous.and_then(|s| s.observed_generation) == policy.metadata.generation;
    InvalidSpecIntent {
        status: status::invalid_spec_status(policy, message, previous, now),
        event: (!already_reported).then(|| PolicyEvent {
            type_: EventType::Warning,
            reason: reason::INVALID_SPEC.into(),
            action: "Validate",
            note: message.to_string(),
            related: None,
        }),
    }
}

/// What a deleted policy's reconcile does in the namespaces it leaves: restart their injected
/// workloads without injection (in the policy's batches), and keep the finalizer while any
/// still carries injection.
#[derive(Debug)]
pub struct DepartureIntent {
    /// The engine's plan for the leaving namespaces (for the reconcile's trace).
    pub engine: Plan,
    pub gates: Gates,
    pub restarts: Vec<Restart>,
    pub rollbacks: Vec<Rollback>,
    /// Workloads whose pods still carry (or are losing) injection: the finalizer stays.
    pub waiting: Vec<WorkloadId>,
    /// Workloads whose restart without injection never finished: not waited for.
    pub given_up: Vec<WorkloadId>,
    pub seen_requests: Vec<(WorkloadId, Timestamp)>,
}

/// What a deleted policy's reconcile does (see [`DepartureIntent`]).
pub fn decide_departure(policy: &TracingPolicy, inputs: &RolloutInputs) -> DepartureIntent {
    // Deleting a policy ends its rollout, pause included: the user asked for everything to go,
    // so its workloads leave in its batches even when it was paused.
    let mut leaving_policy = policy.clone();
    leaving_policy.spec.rollout.paused = false;
    let nothing_governed = governance::Governance::default();
    let view = view_rollout(&leaving_policy, &nothing_governed, inputs);
    let departure = departure(&view.workloads, &view.engine, longest_health_deadline(policy), inputs.now);
    let restarts = departure.restarts.into_iter().cloned().collect();
    DepartureIntent {
        gates: Gates { paused: false, dry_run: false, secrets_ready: true },
        restarts,
        rollbacks: view.engine.rollbacks.clone(),
        waiting: departure.waiting,
        given_up: departure.given_up,
        seen_requests: view.seen_requests,
        engine: view.engine,
    }
}

/// The Event note once a deleted policy's objects are removed from `namespaces` namespaces.
pub fn cleaned_up_note(namespaces: usize, given_up: &[WorkloadId]) -> String {
    let mut note = format!("removed the agent config from {namespaces} namespace(s)");
    if !given_up.is_empty() {
        let names: Vec<String> = given_up.iter().map(ToString::to_string).collect();
        note.push_str(&format!("; still running injected pods (their restart never finished): {}", names.join(", ")));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PolicyPhase, TracingPolicySpec};
    use crate::inject::InjectOptions;
    use k8s_openapi::api::core::v1::Namespace;
    use status::{DEGRADED, READY};

    fn policy(status: Option<TracingPolicyStatus>) -> TracingPolicy {
        let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
            "collector": {"endpoint": "http://collector:4317", "protocol": "grpc"}
        }))
        .unwrap();
        let mut p = TracingPolicy::new("default", spec);
        p.metadata.generation = Some(1);
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        p.status = status;
        p
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn namespace(name: &str) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "uid": format!("{name}-uid"), "labels": {"tracelight.io/enabled": "true"}}
            }))
            .unwrap(),
        )
    }

    fn active(names: &[&str]) -> TracingPolicyStatus {
        TracingPolicyStatus {
            observed_generation: Some(1),
            namespaces: names
                .iter()
                .map(|n| NamespaceStatus { name: n.to_string(), state: NamespaceState::Active, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    /// The intent for `policy` over namespaces `names` (no workloads, no pods).
    fn intent_for(policy: &TracingPolicy, names: &[&str], secrets: SourceSecrets) -> ReconcileIntent {
        let policies = vec![Arc::new(policy.clone())];
        let namespaces: Vec<Arc<Namespace>> = names.iter().map(|n| namespace(n)).collect();
        let options = InjectOptions::default();
        let probes = ProbeSettings::default();
        let requested = workloads::Requested::default();
        let inputs = ReconcileInputs {
            policy,
            rollout: RolloutInputs {
                policies: &policies,
                namespaces: &namespaces,
                workloads: &[],
                pods: &[],
                requested: &requested,
                report_of: &|_| None,
                inject_options: &options,
                now: now(),
            },
            owned: Vec::new(),
            agent_objects_present: &|_, _| false,
            secrets,
            holds_coverage: false,
            report_ca: None,
            probes: &probes,
            service_graph: None,
        };
        decide(&inputs)
    }

    fn condition_reason_of(status: &TracingPolicyStatus, type_: &str) -> String {
        status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.clone()).unwrap_or_default()
    }

    #[test]
    fn a_new_namespace_is_written_recorded_active_and_announced() {
        let p = policy(None);
        let intent = intent_for(&p, &["shop"], SourceSecrets::default());
        assert_eq!(intent.writes.iter().map(|w| w.namespace.as_str()).collect::<Vec<_>>(), ["shop"]);
        assert_eq!(intent.writes[0].namespace_uid, "shop-uid");
        let status = intent.status.as_ref().expect("a new status");
        assert_eq!(status.namespace_state("shop"), Some(NamespaceState::Active));
        assert_eq!(intent.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["NamespaceActivated"]);
        assert!(intent.write_failures.is_empty());
        assert!(intent.reconcile_all, "a generation not observed yet");
        assert_eq!(intent.requeue, REQUEUE_AFTER);
    }

    #[test]
    fn after_a_failed_write_a_new_namespace_waits_and_the_status_says_why() {
        let p = policy(None);
        let intent = intent_for(&p, &["shop", "web"], SourceSecrets::default());
        let failures = BTreeMap::from([("shop".to_string(), "injected failure".to_string())]);
        let intent = intent.after_writes(&p, &failures);
        let status = intent.status.as_ref().expect("a new status");
        assert_eq!(status.namespace_state("shop"), Some(NamespaceState::Pending), "not Active without its config");
        assert_eq!(status.namespace_state("web"), Some(NamespaceState::Active));
        assert_eq!(condition_reason_of(status, DEGRADED), reason::WRITE_FAILED);
        assert_eq!(intent.write_failures, ["shop: injected failure"]);
        let activated: Vec<_> = intent.events.iter().filter_map(|e| e.related.as_ref()?.name.as_deref()).collect();
        assert_eq!(activated, ["web"], "only the namespace whose config was written is announced");
        assert_eq!(intent.writes.len(), 2, "what was to be written is unchanged");
    }

    #[test]
    fn after_a_failed_write_an_active_namespace_stays_active() {
        let p = policy(Some(active(&["shop"])));
        let intent = intent_for(&p, &["shop"], SourceSecrets::default());
        assert_eq!(intent.writes.len(), 1, "an active namespace's config is refreshed");
        let failures = BTreeMap::from([("shop".to_string(), "injected failure".to_string())]);
        let intent = intent.after_writes(&p, &failures);
        let status = intent.status.as_ref().expect("the failure changes the status");
        assert_eq!(status.namespace_state("shop"), Some(NamespaceState::Active), "running agents keep their config");
        assert_eq!(condition_reason_of(status, DEGRADED), reason::WRITE_FAILED);
        assert!(intent.events.is_empty());
    }

    #[test]
    fn without_failures_the_intent_is_unchanged() {
        let p = policy(None);
        let intent = intent_for(&p, &["shop"], SourceSecrets::default());
        let (status, events, requeue) = (intent.status.clone(), intent.events.clone(), intent.requeue);
        let intent = intent.after_writes(&p, &BTreeMap::new());
        assert_eq!((intent.status, intent.events, intent.requeue), (status, events, requeue));
    }

    #[test]
    fn a_missing_secret_writes_nothing_new_and_looks_again_soon() {
        let p = policy(None);
        let secrets = SourceSecrets { missing: vec!["Secret ops/key has no key api-key".into()], ..Default::default() };
        let intent = intent_for(&p, &["shop"], secrets);
        assert!(intent.writes.is_empty());
        let status = intent.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(PolicyPhase::Degraded));
        assert_eq!(condition_reason_of(status, READY), reason::SECRET_NOT_FOUND);
        assert_eq!(intent.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), [reason::SECRET_NOT_FOUND]);
        assert_eq!(intent.requeue, RETRY_AFTER);
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let p = policy(None);
        let first = intent_for(&p, &["shop"], SourceSecrets::default());
        let p = policy(first.status);
        let again = intent_for(&p, &["shop"], SourceSecrets::default());
        assert_eq!(again.status, None);
        assert!(!again.reconcile_all);
        assert!(again.events.is_empty(), "activated once");
    }

    #[test]
    fn an_invalid_spec_is_reported_once_per_generation() {
        let p = policy(None);
        let first = decide_invalid_spec(&p, "spec.propagators: bad", now());
        assert_eq!(first.event.as_ref().map(|e| e.reason.as_str()), Some(reason::INVALID_SPEC));
        let p = policy(Some(first.status));
        let again = decide_invalid_spec(&p, "spec.propagators: bad", now());
        assert!(again.event.is_none(), "already reported for this generation");
        assert_eq!(condition_reason_of(&again.status, READY), reason::INVALID_SPEC);
    }

    #[test]
    fn a_dry_run_requests_no_restart_and_no_rollback() {
        let mut p = policy(Some(active(&["shop"])));
        p.spec.rollout.dry_run = true;
        let intent = intent_for(&p, &["shop"], SourceSecrets::default());
        assert!(intent.restarts.is_empty() && intent.rollbacks.is_empty());
    }
}
