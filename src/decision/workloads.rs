//! The workloads of a policy's namespaces, as the rollout engine (`crate::rollout`) sees them, as
//! pure functions: the engine's [`Observation`](rollout::Observation) assembled from cache
//! snapshots, the coverage from the agents' reports, and the engine's [`Plan`] turned into what
//! the reconcile requests (which restarts, which status, a deleted policy's departure).
//! [`Requested`] is the memo of restarts requested that the caches do not show yet.

use super::after_rollout::WorkloadPods;
use super::governance::Governance;
use crate::api::{
    governing_policy, CoverageState, ExcludedWorkload, NamespaceState, NamespaceStatus, RolloutStatus, TracingPolicy,
    TracingPolicyStatus, WorkloadCoverage,
};
use crate::inject::InjectOptions;
use crate::rollout::coverage::{self, PodReport};
use crate::rollout::observe;
use crate::rollout::pod::PodSummary;
use crate::rollout::workload::Workload;
use crate::rollout::{
    self, Health, NamespaceObservation, PhaseSettings, Plan, Progress, Rerun, Restart, RestartMark, RestartReason,
    WorkloadId, WorkloadObservation,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{self as jiff, Timestamp};
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The engine's pacing settings from `spec.rollout.phases` (empty: the engine's single default phase).
pub fn phase_settings(policy: &TracingPolicy) -> Vec<PhaseSettings> {
    policy
        .spec
        .rollout
        .phases
        .iter()
        .map(|p| PhaseSettings {
            name: p.name.clone(),
            batch_size: p.batch_size.max(1),
            soak: p.soak_duration.get(),
            health_deadline: p.health_deadline.get(),
        })
        .collect()
}

/// Index of the phase named `name` in `spec.rollout.phases` (0 when the policy has no phases).
pub fn phase_index(policy: &TracingPolicy, name: &str) -> usize {
    policy.spec.rollout.phases.iter().position(|p| p.name == name).unwrap_or(0)
}

/// The progress recorded in the status (the start, for a policy never rolled out).
pub fn progress_from(status: Option<&TracingPolicyStatus>) -> Progress {
    let Some(r) = status.and_then(|s| s.rollout.as_ref()) else {
        return Progress::default();
    };
    Progress {
        phase: r.phase_index as usize,
        soak_started: r.soak_started_at.as_ref().map(|t| t.0),
        rerun: r
            .rerun_phase_index
            .map(|phase| Rerun { phase: phase as usize, soak_started: r.rerun_soak_started_at.as_ref().map(|t| t.0) }),
    }
}

/// Namespaces the policy governed (per its previous status) and no longer does, where no other
/// policy took over: their injected workloads are restarted without injection.
/// `unclaimed`: existing namespaces no policy governs.
pub fn leaving_namespaces(
    previous: Option<&TracingPolicyStatus>,
    governance: &Governance,
    unclaimed: &BTreeSet<String>,
) -> Vec<String> {
    let Some(previous) = previous else { return Vec::new() };
    let mut leaving: Vec<String> = previous
        .namespaces
        .iter()
        .filter(|n| matches!(n.state, NamespaceState::Active | NamespaceState::Leaving))
        .filter(|n| !governance.governs(&n.name) && unclaimed.contains(&n.name))
        .map(|n| n.name.clone())
        .collect();
    leaving.sort();
    leaving.dedup();
    leaving
}

/// Existing namespaces no policy but (perhaps, through a stale cache) `me` governs.
pub fn unclaimed_namespaces<'a>(
    me: &str,
    policies: &[&'a TracingPolicy],
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> BTreeSet<String> {
    namespaces
        .into_iter()
        .filter(|ns| governing_policy(policies.iter().copied(), ns).is_none_or(|p| p.name_any() == me))
        .map(|ns| ns.name_any())
        .collect()
}

/// A snapshot of the caches the observation is built from.
pub struct Snapshot<'a> {
    pub workloads: Vec<&'a Workload>,
    /// The cached pods (any namespace; only those of relevant namespaces are used).
    pub pods: Vec<&'a PodSummary>,
}

impl<'a> Snapshot<'a> {
    /// The live workloads of the namespaces `relevant` accepts, with their ids and pods.
    fn workloads_with_pods(
        &self,
        relevant: impl Fn(&str) -> bool,
    ) -> Vec<(&'a Workload, WorkloadId, Vec<&'a PodSummary>)> {
        let mut pods_by_ns: BTreeMap<&str, Vec<&'a PodSummary>> = BTreeMap::new();
        for &pod in &self.pods {
            let ns: &'a str = &pod.namespace;
            if relevant(ns) {
                pods_by_ns.entry(ns).or_default().push(pod);
            }
        }
        self.workloads
            .iter()
            .copied()
            .filter(|w| w.metadata.deletion_timestamp.is_none())
            .filter_map(|w| {
                let id = w.id();
                if !relevant(&id.namespace) {
                    return None;
                }
                let pods: Vec<&PodSummary> = pods_by_ns
                    .get(id.namespace.as_str())
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|p| observe::pod_belongs_to(p, &id))
                    .collect();
                Some((w, id, pods))
            })
            .collect()
    }
}

/// The engine's view of every workload in a governed or leaving namespace. Health is `Healthy`
/// and reporting unknown: the reconciler fills in health for restarts in flight (see
/// [`health_check_since`]) and reporting from the agents' reports (see [`coverage`](fn@coverage)).
pub fn observe_workloads(
    policy: &TracingPolicy,
    governance: &Governance,
    leaving: &[String],
    snapshot: &Snapshot,
    options: &InjectOptions,
) -> Vec<WorkloadObservation> {
    let relevant = |ns: &str| governance.governs(ns) || leaving.iter().any(|l| l == ns);
    let mut observed: Vec<WorkloadObservation> = snapshot
        .workloads_with_pods(relevant)
        .into_iter()
        .map(|(w, id, pods)| {
            let governed = governance.governs(&id.namespace);
            observe::observe(w, &pods, Health::Healthy, None, policy, options, governed)
        })
        .collect();
    observed.sort_by(|a, b| a.id.cmp(&b.id));
    observed
}

/// Coverage of every workload in the governed namespaces, by namespace, from the agents' reports
/// (looked up by pod uid). `generation`: the policy generation of the current agent config.
pub fn coverage(
    governance: &Governance,
    snapshot: &Snapshot,
    report_of: &dyn Fn(&str) -> Option<PodReport>,
    generation: i64,
    now: Timestamp,
) -> BTreeMap<String, Vec<(WorkloadId, WorkloadCoverage)>> {
    let mut by_ns: BTreeMap<String, Vec<(WorkloadId, WorkloadCoverage)>> = BTreeMap::new();
    for (w, id, pods) in snapshot.workloads_with_pods(|ns| governance.governs(ns)) {
        let reports: BTreeMap<&str, PodReport> = pods
            .iter()
            .map(|p| &*p.uid)
            .filter(|uid| !uid.is_empty())
            .filter_map(|uid| Some((uid, report_of(uid)?)))
            .collect();
        let mut c =
            coverage::workload_coverage(id.kind.as_str(), &id.name, &pods, |uid| reports.get(uid), generation, now);
        if c.state == CoverageState::NotInjected && observe::opted_out(&w.template) {
            c.state = CoverageState::OptedOut;
        }
        by_ns.entry(id.namespace.clone()).or_default().push((id, c));
    }
    by_ns
}

/// Pod uids of every workload in the governed namespaces (for the baseline and the review).
pub fn workload_pods(governance: &Governance, snapshot: &Snapshot) -> WorkloadPods {
    snapshot
        .workloads_with_pods(|ns| governance.governs(ns))
        .into_iter()
        .map(|(_, id, pods)| (id, pods.iter().map(|p| p.uid.to_string()).filter(|uid| !uid.is_empty()).collect()))
        .collect()
}

/// Sets each workload's span gate input from its coverage.
pub fn apply_reporting(
    workloads: &mut [WorkloadObservation],
    coverage_by_ns: &BTreeMap<String, Vec<(WorkloadId, WorkloadCoverage)>>,
) {
    for w in workloads.iter_mut() {
        let found = coverage_by_ns.get(&w.id.namespace).and_then(|all| all.iter().find(|(id, _)| id == &w.id));
        w.reporting = found.and_then(|(_, c)| coverage::reporting(c));
    }
}

/// A namespace's status entry filled with its workloads' coverage: the `reporting` and `silent`
/// pod counts, the agent versions (of every workload, listed or not) and the listed workloads.
pub fn add_coverage(ns: &mut NamespaceStatus, coverage: &[(WorkloadId, WorkloadCoverage)]) {
    ns.counts.reporting = coverage.iter().map(|(_, c)| c.reporting).sum();
    ns.counts.silent = coverage.iter().map(|(_, c)| coverage::silent_pods(c)).sum();
    ns.counts.agent_versions = crate::api::AgentVersions::sum(coverage.iter().map(|(_, c)| &c.agent_versions));
    ns.workloads =
        coverage::listed(coverage.iter().map(|(_, c)| c.clone()).collect(), crate::api::MAX_WORKLOADS_PER_NAMESPACE);
}

/// While this replica has just started leading (see
/// [`ReportStore::holds_coverage`](crate::webhook::reports::ReportStore::holds_coverage)), a
/// namespace whose reports show fewer reporting or silent pods than its previous status keeps the
/// previous coverage: the reports the previous leader counted reach this one within a report
/// interval, and until then a drop would be an artefact of the handover, not news.
pub fn hold_coverage(ns: &mut NamespaceStatus, previous: Option<&NamespaceStatus>) {
    let Some(previous) = previous else { return };
    if ns.counts.reporting < previous.counts.reporting || ns.counts.silent < previous.counts.silent {
        ns.counts.reporting = previous.counts.reporting;
        ns.counts.silent = previous.counts.silent;
        ns.counts.agent_versions = previous.counts.agent_versions.clone();
        ns.workloads = previous.workloads.clone();
    }
}

/// When a workload's restart is still settling, the time since which its pods' health matters
/// (the reconciler then reads its full pods). `None` for every other workload, so only the few
/// restarts in flight cost a request.
pub fn health_check_since(w: &WorkloadObservation) -> Option<Timestamp> {
    let mark = w.restart.as_ref()?;
    let desired = w.desired_hash.as_ref()?;
    let settled = w.rolled_out && w.pods.outdated == 0 && w.pods.missed == 0 && w.pods.ready == w.pods.total;
    (&mark.hash == desired && w.excluded.is_none() && !settled).then_some(mark.at)
}

/// The engine's observation.
pub fn observation(
    policy: &TracingPolicy,
    governance: &Governance,
    workloads: Vec<WorkloadObservation>,
    previous: Option<&TracingPolicyStatus>,
    now: Timestamp,
) -> rollout::Observation {
    rollout::Observation {
        phases: phase_settings(policy),
        namespaces: governance
            .governed
            .iter()
            .map(|g| NamespaceObservation { name: g.name.clone(), phase: phase_index(policy, &g.rollout_phase) })
            .collect(),
        workloads,
        progress: progress_from(previous),
        paused: policy.spec.rollout.paused,
        repair_missed: policy.spec.rollout.repair_missed,
        now,
    }
}

/// The restarts to request now: none in a dry run; removing injection anywhere; injecting only in
/// namespaces that were already `Active` before this reconcile, so the webhook (which follows the
/// status through a watch) injects the new pods for sure. The others wait for the next reconcile.
pub fn restarts_to_request<'a>(
    plan: &'a Plan,
    previously_active: &BTreeSet<String>,
    dry_run: bool,
) -> Vec<&'a Restart> {
    if dry_run {
        return Vec::new();
    }
    plan.restarts
        .iter()
        .filter(|r| r.reason == RestartReason::Leave || previously_active.contains(&r.workload.namespace))
        .collect()
}

/// Namespaces still leaving after this plan: some workload there has injected pods or a restart
/// removing injection in flight.
pub fn still_leaving(leaving: &[String], workloads: &[WorkloadObservation], plan: &Plan) -> Vec<String> {
    leaving
        .iter()
        .filter(|ns| {
            let in_ns = |id: &WorkloadId| &id.namespace == *ns;
            workloads.iter().any(|w| in_ns(&w.id) && w.pods.current + w.pods.outdated > 0)
                || plan.in_flight.iter().any(in_ns)
                || plan.restarts.iter().any(|r| in_ns(&r.workload))
        })
        .cloned()
        .collect()
}

/// The rollout engine's plan for a policy, with what it was computed from.
#[derive(Clone, Debug)]
pub struct RolloutView {
    pub engine: Plan,
    pub workloads: Vec<WorkloadObservation>,
    /// Namespaces the policy left whose workloads still carry (or are losing) injection.
    pub leaving: Vec<String>,
    /// Coverage of the governed namespaces' workloads, from the agents' reports.
    pub coverage: BTreeMap<String, Vec<(WorkloadId, WorkloadCoverage)>>,
    /// Pod uids of the governed workloads (baseline and review).
    pub workload_pods: WorkloadPods,
    /// Requests the memo no longer needs to remember (see [`Requested::forgotten_in`]).
    pub seen_requests: Vec<(WorkloadId, Timestamp)>,
}

/// What the rollout view is computed from: snapshots of the caches.
#[derive(Clone, Copy)]
pub struct RolloutInputs<'a> {
    pub policies: &'a [Arc<TracingPolicy>],
    pub namespaces: &'a [Arc<Namespace>],
    pub workloads: &'a [&'a Workload],
    pub pods: &'a [Arc<PodSummary>],
    /// The restarts and rollbacks requested that the caches may not show yet.
    pub requested: &'a Requested,
    /// The agents' reports, by pod uid.
    pub report_of: &'a dyn Fn(&str) -> Option<PodReport>,
    pub inject_options: &'a InjectOptions,
    pub now: Timestamp,
}

/// Observes the workloads of governed and leaving namespaces and asks the engine what to do.
pub fn view_rollout(policy: &TracingPolicy, governance: &Governance, inputs: &RolloutInputs) -> RolloutView {
    let now = inputs.now;
    let previous = policy.status.as_ref();
    let policy_refs: Vec<&TracingPolicy> = inputs.policies.iter().map(Arc::as_ref).collect();
    let unclaimed = unclaimed_namespaces(&policy.name_any(), &policy_refs, inputs.namespaces.iter().map(Arc::as_ref));
    let leaving = leaving_namespaces(previous, governance, &unclaimed);
    let snapshot =
        Snapshot { workloads: inputs.workloads.to_vec(), pods: inputs.pods.iter().map(Arc::as_ref).collect() };
    let mut workloads = observe_workloads(policy, governance, &leaving, &snapshot, inputs.inject_options);
    let generation = policy.metadata.generation.unwrap_or_default();
    let coverage = coverage(governance, &snapshot, inputs.report_of, generation, now);
    apply_reporting(&mut workloads, &coverage);
    let workload_pods = workload_pods(governance, &snapshot);
    let mut requested = inputs.requested.clone();
    requested.overlay(&mut workloads, now);
    let seen_requests = inputs.requested.forgotten_in(&requested);
    fill_health(&mut workloads, &snapshot.pods);
    let observation = observation(policy, governance, workloads.clone(), previous, now);
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
    RolloutView { engine, workloads, leaving, coverage, workload_pods, seen_requests }
}

/// Health of the restarts in flight (only where a restart is settling), from the cached pods.
fn fill_health(workloads: &mut [WorkloadObservation], pods: &[&PodSummary]) {
    for w in workloads.iter_mut() {
        let Some(since) = health_check_since(w) else { continue };
        let mine: Vec<&PodSummary> = pods.iter().copied().filter(|p| observe::pod_belongs_to(p, &w.id)).collect();
        w.health = observe::health(&mine, since);
    }
}

/// Restarts and rollbacks this operator requested, remembered until the workload cache shows
/// them: a reconcile that runs before the cache has caught up with a patch must neither request
/// the same restart again nor count the workload as settled.
#[derive(Clone, Debug, Default)]
pub struct Requested(BTreeMap<WorkloadId, Expectation>);

/// What a patch set on a workload's template.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expectation {
    mark: RestartMark,
    excluded: Option<String>,
}

/// How long a request is remembered at most (its workload may have been deleted meanwhile).
const EXPECTATION_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl Requested {
    /// Remembers a patch that set `mark` (and, for a rollback, the exclusion reason).
    pub fn record(&mut self, id: WorkloadId, mark: RestartMark, excluded: Option<String>) {
        self.0.insert(id, Expectation { mark, excluded });
    }

    /// Shows the remembered patches the cache does not reflect yet in `workloads`, and forgets
    /// those it reflects (or that are too old to matter).
    pub fn overlay(&mut self, workloads: &mut [WorkloadObservation], now: Timestamp) {
        let ttl = jiff::SignedDuration::try_from(EXPECTATION_TTL).unwrap_or(jiff::SignedDuration::MAX);
        self.0.retain(|_, e| e.mark.at.checked_add(ttl).is_ok_and(|end| now < end));
        for w in workloads.iter_mut() {
            let Some(e) = self.0.get(&w.id) else { continue };
            if w.restart.as_ref().is_some_and(|m| m.at >= e.mark.at) {
                self.0.remove(&w.id);
                continue;
            }
            w.restart = Some(e.mark.clone());
            // The cached object predates the patch: its rollout has not even started.
            w.rolled_out = false;
            if e.excluded.is_some() {
                w.excluded.clone_from(&e.excluded);
            }
        }
    }

    /// The requests `self` remembers that `overlaid` (a copy after [`overlay`](Self::overlay)) no
    /// longer does: the cache shows them, or they are too old to matter.
    pub fn forgotten_in(&self, overlaid: &Requested) -> Vec<(WorkloadId, Timestamp)> {
        self.0.iter().filter(|(id, _)| !overlaid.0.contains_key(*id)).map(|(id, e)| (id.clone(), e.mark.at)).collect()
    }

    /// Forgets the requests [`forgotten_in`](Self::forgotten_in) listed, unless one was requested
    /// again since.
    pub fn forget(&mut self, forgotten: &[(WorkloadId, Timestamp)]) {
        for (id, at) in forgotten {
            if self.0.get(id).is_some_and(|e| e.mark.at == *at) {
                self.0.remove(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a policy's deletion does in the namespaces it leaves: the restarts still to request and
/// the workloads it waits for before its finalizer goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Departure<'a> {
    pub restarts: Vec<&'a Restart>,
    /// Workloads whose pods still carry (or are losing) injection.
    pub waiting: Vec<WorkloadId>,
    /// Workloads restarted without injection longer than `deadline` ago that still run injected
    /// pods (their new pods never became ready): not waited for, so deletion cannot hang.
    pub given_up: Vec<WorkloadId>,
}

/// The departure of a deleted policy from the namespaces it leaves (`workloads`: those of the
/// leaving namespaces; `plan`: the engine's plan for them), given the longest health deadline.
pub fn departure<'a>(
    workloads: &[WorkloadObservation],
    plan: &'a Plan,
    deadline: std::time::Duration,
    now: Timestamp,
) -> Departure<'a> {
    let gave_up = |w: &WorkloadObservation| {
        let injected = w.pods.current + w.pods.outdated > 0;
        let overdue = w.restart.as_ref().is_some_and(|m| {
            let deadline = jiff::SignedDuration::try_from(deadline).unwrap_or(jiff::SignedDuration::MAX);
            m.hash.is_empty() && m.at.checked_add(deadline).is_ok_and(|end| now >= end)
        });
        injected && overdue
    };
    let given_up: Vec<WorkloadId> = workloads.iter().filter(|w| gave_up(w)).map(|w| w.id.clone()).collect();
    let waiting = workloads
        .iter()
        .filter(|w| !given_up.contains(&w.id))
        .filter(|w| {
            w.pods.current + w.pods.outdated > 0
                || plan.in_flight.contains(&w.id)
                || plan.restarts.iter().any(|r| r.workload == w.id)
        })
        .map(|w| w.id.clone())
        .collect();
    let restarts =
        plan.restarts.iter().filter(|r| r.reason == RestartReason::Leave && !given_up.contains(&r.workload)).collect();
    Departure { restarts, waiting, given_up }
}

/// The longest health deadline of the policy's phases (the engine's default without phases).
pub fn longest_health_deadline(policy: &TracingPolicy) -> std::time::Duration {
    let phases = phase_settings(policy);
    phases.iter().map(|p| p.health_deadline).max().unwrap_or(rollout::engine::DEFAULT_HEALTH_DEADLINE)
}

/// Outdated pods (injected with another manifest hash) per namespace.
pub fn outdated_by_namespace(workloads: &[WorkloadObservation]) -> BTreeMap<String, u32> {
    let mut outdated = BTreeMap::new();
    for w in workloads {
        *outdated.entry(w.id.namespace.clone()).or_insert(0) += w.pods.outdated;
    }
    outdated
}

/// What the status records of the rollout. `requested`: the restarts actually requested (in a
/// dry run, or while a namespace waits for activation, fewer than the plan holds). A dry run
/// keeps the previous progress: nothing advanced.
pub fn rollout_status(
    plan: &Plan,
    workloads: &[WorkloadObservation],
    requested: &[&Restart],
    previous: Option<&TracingPolicyStatus>,
    dry_run: bool,
) -> RolloutStatus {
    let progress = if dry_run { progress_from(previous) } else { plan.progress.clone() };
    let skipped: BTreeSet<&WorkloadId> =
        plan.restarts.iter().map(|r| &r.workload).filter(|id| !requested.iter().any(|r| &r.workload == *id)).collect();
    let mut excluded: Vec<ExcludedWorkload> = workloads
        .iter()
        .filter_map(|w| w.excluded.as_ref().map(|reason| excluded_workload(&w.id, reason)))
        .chain(plan.rollbacks.iter().filter(|_| !dry_run).map(|r| excluded_workload(&r.workload, &r.reason)))
        .collect();
    excluded.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    excluded.dedup_by(|a, b| (&a.namespace, &a.kind, &a.name) == (&b.namespace, &b.kind, &b.name));
    RolloutStatus {
        phase_index: u32::try_from(progress.phase).unwrap_or(u32::MAX),
        soak_started_at: progress.soak_started.map(whole_second_after).map(Time),
        rerun_phase_index: progress.rerun.map(|r| u32::try_from(r.phase).unwrap_or(u32::MAX)),
        rerun_soak_started_at: progress.rerun.and_then(|r| r.soak_started).map(whole_second_after).map(Time),
        in_flight: plan.in_flight.iter().filter(|id| !skipped.contains(id)).map(ToString::to_string).collect(),
        excluded,
    }
}

/// `t` rounded up to a whole second: the status keeps timestamps in whole seconds, and rounding
/// down would shorten a soak.
fn whole_second_after(t: Timestamp) -> Timestamp {
    let up = i64::from(t.subsec_nanosecond() > 0);
    Timestamp::from_second(t.as_second().saturating_add(up)).unwrap_or(t)
}

fn excluded_workload(id: &WorkloadId, reason: &str) -> ExcludedWorkload {
    ExcludedWorkload {
        namespace: id.namespace.clone(),
        kind: id.kind.as_str().to_string(),
        name: id.name.clone(),
        reason: reason.to_string(),
    }
}

/// The Event note on a restarted workload.
pub fn workload_restart_note(policy: &str, reason: RestartReason) -> String {
    match reason {
        RestartReason::Inject => format!("restarted by TracingPolicy {policy} so its new pods get the tracing agent"),
        RestartReason::Repair => format!("restarted by TracingPolicy {policy}: some pods missed injection"),
        RestartReason::Leave => {
            format!("restarted by TracingPolicy {policy} so its new pods run without the tracing agent")
        }
    }
}

/// Longest Event note the API server accepts (a longer one is rejected, the Event lost).
pub const MAX_EVENT_NOTE: usize = 1024;

/// The Event note for a batch of restarts: the workloads by name while they fit in an Event
/// note, then how many more.
pub fn restart_note(restarts: &[&Restart], plan: &Plan) -> String {
    let names: Vec<String> = restarts
        .iter()
        .map(|r| match r.reason {
            RestartReason::Inject => format!("{}", r.workload),
            RestartReason::Repair => format!("{} (missed injection)", r.workload),
            RestartReason::Leave => format!("{} (removing injection)", r.workload),
        })
        .collect();
    let tail = format!("; {}", plan.message);
    // Room for ", and 9999 more" after the last name that fits.
    let budget = MAX_EVENT_NOTE.saturating_sub(tail.len() + 32);
    let mut listed = String::from("restarting ");
    let mut shown = 0;
    for name in &names {
        let sep = if shown == 0 { "" } else { ", " };
        if listed.len() + sep.len() + name.len() > budget {
            break;
        }
        listed.push_str(sep);
        listed.push_str(name);
        shown += 1;
    }
    if shown < names.len() {
        listed.push_str(&format!("{}and {} more", if shown == 0 { "" } else { ", " }, names.len() - shown));
    }
    let mut note = listed + &tail;
    truncate_at_char(&mut note, MAX_EVENT_NOTE);
    note
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(end);
    }
}

#[cfg(test)]
#[path = "workloads_tests.rs"]
mod tests;
