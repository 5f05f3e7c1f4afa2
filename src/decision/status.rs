//! The status of a policy after a reconcile, as pure functions: its phase and conditions from
//! the namespaces' states and counts, the rollout engine's verdict, the source Secrets, the
//! sampling budgets and trace continuity ([`StatusInputs`]), and the status of an invalid spec.

use super::governance::Overlap;
use crate::api::{
    AgentVersions, Coverage, NamespaceState, NamespaceStatus, PolicyPhase, RolloutStatus, SamplingStatus, ServiceGraph,
    TracingPolicy, TracingPolicyStatus,
};
use crate::rollout::RolloutPhase as EngineState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Condition types written by the controller.
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Present when the policy has a spans-per-second budget: whether every budget is met.
pub const BUDGET_MET: &str = "BudgetMet";
/// Condition type: whether the spans of one request end up in one trace (from probe traces).
pub const TRACES_CONNECTED: &str = "TracesConnected";

/// Condition reasons (also used as Event reasons where they match).
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A source Secret outside the namespaces the operator may read Secrets from.
    pub const SECRET_NOT_ALLOWED: &str = "SecretNotAllowed";
    pub const OVERLAP: &str = "Overlap";
    pub const NO_NAMESPACES: &str = "NoNamespaces";
    pub const PAUSED: &str = "Paused";
    pub const DRY_RUN: &str = "DryRun";
    pub const ACTIVATING: &str = "Activating";
    pub const COMPLETE: &str = "Complete";
    pub const PROGRESSING: &str = "Progressing";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const WRITE_FAILED: &str = "WriteFailed";
    pub const RESTARTING: &str = "Restarting";
    pub const SOAKING: &str = "Soaking";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const INJECTION_SKIPPED: &str = "InjectionSkipped";
    pub const WITHIN_BUDGET: &str = "WithinBudget";
    pub const BUDGET_UNMET: &str = "BudgetUnmet";
}

/// Namespaces where the webhook skipped more pods (a port conflict, say: the reason is in each
/// pod's `tracelight.io/injection-status` annotation) than the previous status counted, with the
/// new count. Each gets one Warning Event when the count grows, not one per reconcile.
pub fn newly_skipped(previous: Option<&TracingPolicyStatus>, next: &TracingPolicyStatus) -> Vec<(String, u32)> {
    let before =
        |ns: &str| previous.and_then(|p| p.namespaces.iter().find(|n| n.name == ns)).map_or(0, |n| n.counts.skipped);
    next.namespaces
        .iter()
        .filter(|n| n.counts.skipped > before(&n.name))
        .map(|n| (n.name.clone(), n.counts.skipped))
        .collect()
}

/// Sum of per-namespace counts, with the number of namespaces and the agent versions on one line.
pub fn total_coverage(namespaces: &[NamespaceStatus]) -> Coverage {
    let mut total = namespaces.iter().fold(
        Coverage { namespaces: u32::try_from(namespaces.len()).unwrap_or(u32::MAX), ..Default::default() },
        |mut total, ns| {
            total.selected += ns.counts.selected;
            total.injected += ns.counts.injected;
            total.outdated += ns.counts.outdated;
            total.missed += ns.counts.missed;
            total.skipped += ns.counts.skipped;
            total.reporting += ns.counts.reporting;
            total.silent += ns.counts.silent;
            total
        },
    );
    total.agent_versions = AgentVersions::sum(namespaces.iter().map(|ns| &ns.counts.agent_versions));
    total.agent_version_summary = total.agent_versions.summary();
    total
}

/// What the reconciler observed and did, as input to [`desired_status`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusInputs {
    /// Every governed namespace with its state after this reconcile and its pod counts.
    pub namespaces: Vec<NamespaceStatus>,
    pub overlaps: Vec<Overlap>,
    /// Human-readable descriptions of missing source Secrets (`ns/name` and key), never values.
    pub missing_secrets: Vec<String>,
    /// Source Secrets refused (outside the allowed namespaces: never read, nothing copied), by name.
    pub refused_secrets: Vec<String>,
    /// Namespaces where writing the agent objects failed, with the error.
    pub write_failures: Vec<String>,
    /// The rollout engine's verdict (`None`: not computed, the status follows namespace states).
    pub rollout: Option<RolloutOutcome>,
    /// Sampling in effect (`None`: the spec's ratio, nothing measured).
    pub sampling: Option<SamplingStatus>,
    /// With a budget in the policy: the budgets that cannot be met (empty: all are).
    pub budgets_unmet: Option<Vec<String>>,
    /// With probe traces on: the service graph of the policy's namespaces and the
    /// `TracesConnected` condition as `(status, reason, message)`.
    pub continuity: Option<ContinuityVerdict>,
}

/// The service graph (`None`: nothing joined yet) and the `TracesConnected` condition as
/// `(status, reason, message)`.
pub type ContinuityVerdict = (Option<ServiceGraph>, (&'static str, &'static str, String));

/// The rollout engine's verdict, as the status reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutOutcome {
    pub state: EngineState,
    /// The engine's one-line explanation.
    pub message: String,
    pub status: RolloutStatus,
}

/// The overall phase of a policy from the engine's state; `pending`: governed namespaces not
/// active yet (a rollout is not complete while one waits).
pub fn policy_phase(state: EngineState, pending: usize) -> PolicyPhase {
    match state {
        EngineState::Pending => PolicyPhase::Pending,
        EngineState::Progressing | EngineState::Soaking => PolicyPhase::Progressing,
        EngineState::Paused => PolicyPhase::Paused,
        EngineState::Degraded => PolicyPhase::Degraded,
        EngineState::Complete if pending > 0 => PolicyPhase::Progressing,
        EngineState::Complete => PolicyPhase::Complete,
    }
}

/// The `Progressing` condition (status, reason, message) of a rollout the engine drives.
fn progressing_condition(outcome: &RolloutOutcome, pending: usize) -> (bool, &'static str, String) {
    let message = outcome.message.clone();
    match outcome.state {
        EngineState::Degraded => (false, reason::ROLLED_BACK, message),
        EngineState::Soaking => (true, reason::SOAKING, message),
        EngineState::Paused => (false, reason::PAUSED, message),
        EngineState::Pending => (false, reason::NO_NAMESPACES, message),
        EngineState::Complete if pending == 0 => (false, reason::COMPLETE, message),
        EngineState::Complete => (true, reason::ACTIVATING, format!("activating {pending} namespaces")),
        EngineState::Progressing => (true, reason::RESTARTING, message),
    }
}

/// The status of a valid policy after a reconcile.
pub fn desired_status(
    policy: &TracingPolicy,
    observed: &StatusInputs,
    previous: Option<&TracingPolicyStatus>,
    now: Timestamp,
) -> TracingPolicyStatus {
    let rollout = &policy.spec.rollout;
    let generation = policy.metadata.generation;
    let prev_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let total = observed.namespaces.len();
    let active = observed.namespaces.iter().filter(|n| n.state == NamespaceState::Active).count();
    // Leaving namespaces are neither: they are being restarted without injection.
    let pending = observed.namespaces.iter().filter(|n| n.state == NamespaceState::Pending).count();
    let secrets_refused = !observed.refused_secrets.is_empty();
    let secrets_missing = secrets_refused || !observed.missing_secrets.is_empty();

    let outcome = observed.rollout.as_ref();
    let rolled_back = outcome.is_some_and(|o| o.state == EngineState::Degraded) && !rollout.dry_run;
    let phase = if rollout.paused {
        PolicyPhase::Paused
    } else if total == 0 {
        PolicyPhase::Pending
    } else if rolled_back {
        PolicyPhase::Degraded
    } else if rollout.dry_run {
        // Nothing advances in a dry run: complete only if there was nothing to do.
        let nothing_to_do = pending == 0 && outcome.is_none_or(|o| o.state == EngineState::Complete);
        if nothing_to_do {
            PolicyPhase::Complete
        } else {
            PolicyPhase::Pending
        }
    } else if let Some(o) = outcome {
        match policy_phase(o.state, pending) {
            PolicyPhase::Progressing if secrets_missing => PolicyPhase::Degraded,
            phase => phase,
        }
    } else if pending == 0 {
        PolicyPhase::Complete
    } else if secrets_missing {
        PolicyPhase::Degraded
    } else {
        PolicyPhase::Progressing
    };

    let (secret_reason, secret_message) = if secrets_refused {
        (reason::SECRET_NOT_ALLOWED, format!("source Secret refused: {}", observed.refused_secrets.join("; ")))
    } else {
        (reason::SECRET_NOT_FOUND, format!("source Secret missing: {}", observed.missing_secrets.join("; ")))
    };
    let secret_message = || secret_message.clone();
    let ready = if secrets_missing {
        (false, secret_reason, secret_message())
    } else if let Some(o) = outcome.filter(|_| rolled_back) {
        (false, reason::ROLLED_BACK, o.message.clone())
    } else if total == 0 {
        (false, reason::NO_NAMESPACES, no_namespaces_message(&observed.overlaps))
    } else if phase == PolicyPhase::Complete {
        (true, reason::COMPLETE, format!("{active} of {total} namespaces active, rollout complete"))
    } else {
        // Ready only once nothing is left to do: restarts running, a soak, a pause all say why not.
        let why = if rollout.dry_run {
            reason::DRY_RUN
        } else if rollout.paused {
            reason::PAUSED
        } else {
            match outcome.map(|o| o.state) {
                Some(EngineState::Progressing) => reason::PROGRESSING,
                Some(EngineState::Soaking) => reason::SOAKING,
                _ => reason::ACTIVATING,
            }
        };
        let engine = outcome.filter(|_| !rollout.dry_run).map(|o| format!("; {}", o.message)).unwrap_or_default();
        (false, why, format!("{active} of {total} namespaces active{engine}"))
    };

    let progressing = if total == 0 {
        (false, reason::NO_NAMESPACES, "no governed namespace".to_string())
    } else if rollout.dry_run && (pending > 0 || outcome.is_some()) {
        let plan = outcome.map(|o| format!("; plan: {}", o.message)).unwrap_or_default();
        (false, reason::DRY_RUN, format!("dry run: {pending} namespaces would be activated{plan}"))
    } else if secrets_missing && pending > 0 {
        (false, secret_reason, format!("{pending} namespaces wait for a source Secret"))
    } else if rollout.paused && (pending > 0 || outcome.is_some()) {
        let why =
            outcome.map_or_else(|| format!("rollout paused with {pending} namespaces pending"), |o| o.message.clone());
        (false, reason::PAUSED, why)
    } else if let Some(o) = outcome {
        progressing_condition(o, pending)
    } else if pending == 0 {
        (false, reason::COMPLETE, format!("all {total} namespaces active"))
    } else {
        (true, reason::ACTIVATING, format!("activating {pending} namespaces"))
    };

    let mut problems: Vec<(&str, String)> = Vec::new();
    if let Some(o) = outcome.filter(|_| rolled_back) {
        problems.push((reason::ROLLED_BACK, o.message.clone()));
    }
    if secrets_missing {
        problems.push((secret_reason, secret_message()));
    }
    if !observed.write_failures.is_empty() {
        problems.push((reason::WRITE_FAILED, observed.write_failures.join("; ")));
    }
    if !observed.overlaps.is_empty() {
        problems.push((reason::OVERLAP, overlap_message(policy, &observed.overlaps)));
    }
    let degraded = match problems.first() {
        Some((why, _)) => (true, *why, problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ")),
        None => (false, reason::AS_EXPECTED, "no problem observed".to_string()),
    };

    let budget = observed.budgets_unmet.as_ref().map(|unmet| match unmet.is_empty() {
        true => (true, reason::WITHIN_BUDGET, "every sampling budget is met or not yet measured".to_string()),
        false => (false, reason::BUDGET_UNMET, unmet.join("; ")),
    });
    let mut conditions: Vec<Condition> =
        [(READY, Some(ready)), (PROGRESSING, Some(progressing)), (DEGRADED, Some(degraded)), (BUDGET_MET, budget)]
            .into_iter()
            .filter_map(|(type_, c)| c.map(|c| (type_, c)))
            .map(|(type_, (status, why, message))| {
                condition(type_, status, why, message, generation, prev_conditions, now)
            })
            .collect();
    if let Some((_, (status, why, message))) = &observed.continuity {
        let c = condition_status(TRACES_CONNECTED, status, why, message.clone(), generation, prev_conditions, now);
        conditions.push(c);
    }

    TracingPolicyStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        active_phase: outcome
            .and_then(|o| policy.spec.rollout.phases.get(o.status.phase_index as usize))
            .map(|p| p.name.clone())
            .or_else(|| active_rollout_phase(&observed.namespaces)),
        manifest_hash: None,
        coverage: Some(total_coverage(&observed.namespaces)),
        namespaces: observed.namespaces.clone(),
        sampling: Some(observed.sampling.clone().unwrap_or_else(|| SamplingStatus {
            effective_ratio: policy.spec.sampling.ratio.get(),
            ..Default::default()
        })),
        rollout: outcome.map(|o| o.status.clone()).or_else(|| previous.and_then(|s| s.rollout.clone())),
        // Recorded at a soak's end and by the scheduled review (`super::after_rollout`): kept.
        baseline: previous.and_then(|s| s.baseline.clone()),
        review: previous.and_then(|s| s.review.clone()),
        service_graph: observed.continuity.as_ref().and_then(|(graph, _)| graph.clone()),
    }
}

/// The status of a policy whose spec failed validation: the conditions say why, and what was
/// already rolled out is reported as it was (nothing is changed while the spec is invalid).
pub fn invalid_spec_status(
    policy: &TracingPolicy,
    message: &str,
    previous: Option<&TracingPolicyStatus>,
    now: Timestamp,
) -> TracingPolicyStatus {
    let generation = policy.metadata.generation;
    let prev_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = [(READY, false), (PROGRESSING, false), (DEGRADED, true)]
        .into_iter()
        .map(|(type_, status)| {
            condition(type_, status, reason::INVALID_SPEC, message.to_string(), generation, prev_conditions, now)
        })
        .collect();
    TracingPolicyStatus {
        observed_generation: generation,
        phase: Some(PolicyPhase::Degraded),
        conditions,
        ..previous.cloned().unwrap_or_default()
    }
}

/// The rollout phase of the first pending namespace, if any is pending.
fn active_rollout_phase(namespaces: &[NamespaceStatus]) -> Option<String> {
    namespaces.iter().find(|n| n.state == NamespaceState::Pending).and_then(|n| n.rollout_phase.clone())
}

fn no_namespaces_message(overlaps: &[Overlap]) -> String {
    if overlaps.is_empty() {
        "no namespace matches spec.namespaceSelector: label one, e.g. `kubectl label namespace NAME tracelight.io/enabled=true`"
            .to_string()
    } else {
        "every matching namespace is governed by an older policy".to_string()
    }
}

fn overlap_message(policy: &TracingPolicy, overlaps: &[Overlap]) -> String {
    let me = policy.name_any();
    overlaps
        .iter()
        .map(|o| {
            format!(
                "namespace {} is selected by policies {} and {}; the older, {}, governs it",
                o.namespace, o.governed_by, me, o.governed_by
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A condition, keeping the previous transition time when its status did not change.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    condition_status(type_, if status { "True" } else { "False" }, reason, message, generation, previous, now)
}

/// [`condition`] with any status (`Unknown` too).
pub fn condition_status(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The reason of condition `type_` in `status`, if set.
pub fn condition_reason<'a>(status: Option<&'a TracingPolicyStatus>, type_: &str) -> Option<&'a str> {
    status?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RolloutPhase, TracingPolicySpec};

    #[test]
    fn skipped_pods_make_one_event_when_their_count_grows() {
        let status = |counts: &[(&str, u32)]| TracingPolicyStatus {
            namespaces: counts
                .iter()
                .map(|(name, skipped)| NamespaceStatus {
                    name: name.to_string(),
                    counts: Coverage { skipped: *skipped, ..Default::default() },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let before = status(&[("shop", 1), ("obs", 0)]);
        assert_eq!(newly_skipped(Some(&before), &status(&[("shop", 1), ("obs", 2)])), vec![("obs".to_string(), 2)]);
        assert!(newly_skipped(Some(&before), &before).is_empty(), "no event when nothing changed");
        assert!(newly_skipped(Some(&before), &status(&[("shop", 0)])).is_empty(), "fewer is no news");
        assert_eq!(newly_skipped(None, &status(&[("shop", 1)])), vec![("shop".to_string(), 1)]);
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn policy(name: &str, created: i64) -> TracingPolicy {
        let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
            "collector": {"endpoint": "http://collector:4317", "protocol": "grpc"}
        }))
        .unwrap();
        let mut p = TracingPolicy::new(name, spec);
        p.metadata.generation = Some(3);
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p
    }

    fn phase(name: &str, selector: Option<LabelSelector>) -> RolloutPhase {
        serde_json::from_value(serde_json::json!({"name": name, "namespaceSelector": selector})).unwrap()
    }

    fn ns_status(name: &str, state: NamespaceState) -> NamespaceStatus {
        NamespaceStatus {
            name: name.into(),
            rollout_phase: Some("default".into()),
            state,
            counts: Coverage::default(),
            workloads: Vec::new(),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn cond<'a>(s: &'a TracingPolicyStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn all_active_is_complete_and_ready() {
        let p = policy("p", 1);
        let mut a = ns_status("a", NamespaceState::Active);
        a.counts = Coverage { selected: 3, injected: 2, missed: 1, ..Default::default() };
        let obs = StatusInputs { namespaces: vec![a, ns_status("b", NamespaceState::Active)], ..Default::default() };
        let s = desired_status(&p, &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Complete));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("True", reason::COMPLETE));
        assert_eq!(cond(&s, PROGRESSING).reason, reason::COMPLETE);
        assert_eq!(cond(&s, DEGRADED).status, "False");
        let cov = s.coverage.unwrap();
        assert_eq!((cov.namespaces, cov.selected, cov.injected, cov.missed), (2, 3, 2, 1));
        assert_eq!(s.active_phase, None);
    }

    #[test]
    fn total_coverage_sums_agent_versions_over_namespaces_with_a_summary() {
        let versions =
            |counts: &[(&str, u32)]| AgentVersions::from_counts(counts.iter().map(|(v, n)| (v.to_string(), *n)));
        let mut a = ns_status("a", NamespaceState::Active);
        a.counts.agent_versions = versions(&[("0.2.0", 4), ("unknown (contract 1)", 3)]);
        let mut b = ns_status("b", NamespaceState::Active);
        b.counts.agent_versions = versions(&[("0.2.0", 8)]);
        let total = total_coverage(&[a, b, ns_status("c", NamespaceState::Pending)]);
        assert_eq!(total.agent_versions, versions(&[("0.2.0", 12), ("unknown (contract 1)", 3)]));
        assert_eq!(total.agent_version_summary.as_deref(), Some("0.2.0:12,unknown (contract 1):3"));
        // Nine versions over nine namespaces: still at most eight entries.
        let many: Vec<NamespaceStatus> = (0..9)
            .map(|i| {
                let mut ns = ns_status(&format!("ns{i}"), NamespaceState::Active);
                ns.counts.agent_versions = versions(&[(&format!("0.{i}.0"), 10 - i)]);
                ns
            })
            .collect();
        let total = total_coverage(&many);
        assert_eq!(total.agent_versions.iter().count(), AgentVersions::MAX);
        assert_eq!((total.agent_versions.get("0.6.0"), total.agent_versions.get(AgentVersions::OTHER)), (4, 3 + 2));
        assert_eq!(total_coverage(&[]).agent_version_summary, None);
    }

    #[test]
    fn no_namespaces_is_pending() {
        let s = desired_status(&policy("p", 1), &StatusInputs::default(), None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Pending));
        assert_eq!(cond(&s, READY).reason, reason::NO_NAMESPACES);
        assert_eq!(s.coverage.unwrap().namespaces, 0);
    }

    #[test]
    fn paused_policy_is_paused_with_pending_namespaces() {
        let mut p = policy("p", 1);
        p.spec.rollout.paused = true;
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active), ns_status("b", NamespaceState::Pending)],
            ..Default::default()
        };
        let s = desired_status(&p, &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Paused));
        assert_eq!(cond(&s, READY).reason, reason::PAUSED);
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(s.active_phase.as_deref(), Some("default"));
    }

    #[test]
    fn dry_run_stays_pending() {
        let mut p = policy("p", 1);
        p.spec.rollout.dry_run = true;
        let obs = StatusInputs { namespaces: vec![ns_status("a", NamespaceState::Pending)], ..Default::default() };
        let s = desired_status(&p, &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Pending));
        assert_eq!(cond(&s, PROGRESSING).reason, reason::DRY_RUN);
        assert_eq!(cond(&s, READY).reason, reason::DRY_RUN);
    }

    #[test]
    fn missing_secret_is_not_ready_and_degraded() {
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Pending)],
            missing_secrets: vec!["Secret ops/backend has no key api-key".into()],
            ..Default::default()
        };
        let s = desired_status(&policy("p", 1), &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Degraded));
        assert_eq!(cond(&s, READY).reason, reason::SECRET_NOT_FOUND);
        assert!(cond(&s, READY).message.contains("ops/backend"));
        assert_eq!(cond(&s, DEGRADED).status, "True");
    }

    #[test]
    fn refused_secret_is_not_ready_with_its_own_reason() {
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Pending)],
            refused_secrets: vec!["API key Secret kube-system/x is outside ...".into()],
            ..Default::default()
        };
        let s = desired_status(&policy("p", 1), &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Degraded));
        let ready = cond(&s, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::SECRET_NOT_ALLOWED));
        assert!(ready.message.contains("kube-system/x"), "{}", ready.message);
        assert_eq!(cond(&s, DEGRADED).reason, reason::SECRET_NOT_ALLOWED);
        assert_eq!(cond(&s, PROGRESSING).reason, reason::SECRET_NOT_ALLOWED);
    }

    #[test]
    fn overlap_is_reported_naming_both_policies() {
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active)],
            overlaps: vec![Overlap { namespace: "shop".into(), governed_by: "old".into() }],
            ..Default::default()
        };
        let s = desired_status(&policy("young", 1), &obs, None, now());
        let degraded = cond(&s, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reason::OVERLAP));
        assert!(degraded.message.contains("old") && degraded.message.contains("young"));
        assert!(degraded.message.contains("shop"));
        assert_eq!(s.phase, Some(PolicyPhase::Complete));
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let p = policy("p", 1);
        let obs = StatusInputs { namespaces: vec![ns_status("a", NamespaceState::Active)], ..Default::default() };
        let first = desired_status(&p, &obs, None, now());
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        let second = desired_status(&p, &obs, Some(&first), later);
        assert_eq!(cond(&second, READY).last_transition_time, Time(now()));
        let third = desired_status(&p, &StatusInputs::default(), Some(&second), later);
        assert_eq!(cond(&third, READY).last_transition_time, Time(later));
    }

    #[test]
    fn invalid_spec_keeps_rolled_out_namespaces() {
        let p = policy("p", 1);
        let obs = StatusInputs { namespaces: vec![ns_status("a", NamespaceState::Active)], ..Default::default() };
        let before = desired_status(&p, &obs, None, now());
        let s = invalid_spec_status(&p, "invalid TracingPolicy: spec.propagators: bad", Some(&before), now());
        assert_eq!(s.phase, Some(PolicyPhase::Degraded));
        assert_eq!(s.namespaces, before.namespaces);
        assert_eq!(cond(&s, READY).reason, reason::INVALID_SPEC);
        assert!(cond(&s, READY).message.contains("spec.propagators"));
        assert_eq!(condition_reason(Some(&s), READY), Some(reason::INVALID_SPEC));
    }

    fn outcome(state: EngineState, message: &str) -> RolloutOutcome {
        RolloutOutcome {
            state,
            message: message.into(),
            status: RolloutStatus { phase_index: 1, in_flight: vec!["a/Deployment/web".into()], ..Default::default() },
        }
    }

    fn with_phases(mut p: TracingPolicy) -> TracingPolicy {
        p.spec.rollout.phases = vec![phase("pilot", None), phase("expansion", None)];
        p
    }

    #[test]
    fn engine_state_maps_to_the_policy_phase() {
        assert_eq!(policy_phase(EngineState::Pending, 0), PolicyPhase::Pending);
        assert_eq!(policy_phase(EngineState::Progressing, 0), PolicyPhase::Progressing);
        assert_eq!(policy_phase(EngineState::Soaking, 0), PolicyPhase::Progressing);
        assert_eq!(policy_phase(EngineState::Paused, 0), PolicyPhase::Paused);
        assert_eq!(policy_phase(EngineState::Degraded, 0), PolicyPhase::Degraded);
        assert_eq!(policy_phase(EngineState::Complete, 0), PolicyPhase::Complete);
        assert_eq!(policy_phase(EngineState::Complete, 1), PolicyPhase::Progressing, "a namespace still waits");
    }

    #[test]
    fn restarting_is_progressing_and_the_status_records_the_rollout() {
        let p = with_phases(policy("p", 1));
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active), ns_status("b", NamespaceState::Active)],
            rollout: Some(outcome(EngineState::Progressing, "phase \"expansion\": 1 restarting")),
            ..Default::default()
        };
        let s = desired_status(&p, &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Progressing));
        let progressing = cond(&s, PROGRESSING);
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", reason::RESTARTING));
        assert!(progressing.message.contains("1 restarting"));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::PROGRESSING),
            "every namespace is active, but restarts still run"
        );
        assert!(
            ready.message.contains("2 of 2 namespaces active; phase \"expansion\": 1 restarting"),
            "{}",
            ready.message
        );
        assert_eq!(s.active_phase.as_deref(), Some("expansion"), "the engine's phase index names the phase");
        assert_eq!(s.rollout.unwrap().in_flight, vec!["a/Deployment/web"]);
    }

    #[test]
    fn soaking_is_progressing_with_its_own_reason() {
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active)],
            rollout: Some(outcome(EngineState::Soaking, "phase \"pilot\" soaking, 4s left")),
            ..Default::default()
        };
        let s = desired_status(&with_phases(policy("p", 1)), &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Progressing));
        assert_eq!(cond(&s, PROGRESSING).reason, reason::SOAKING);
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", reason::SOAKING));
    }

    #[test]
    fn a_rollback_is_degraded_and_not_ready() {
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active)],
            rollout: Some(outcome(EngineState::Degraded, "rolled back a/Deployment/web: not ready within 5s")),
            ..Default::default()
        };
        let s = desired_status(&policy("p", 1), &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Degraded));
        for type_ in [READY, PROGRESSING] {
            let c = cond(&s, type_);
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", reason::ROLLED_BACK), "{type_}");
        }
        let degraded = cond(&s, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reason::ROLLED_BACK));
        assert!(degraded.message.contains("a/Deployment/web"));
    }

    #[test]
    fn a_dry_run_shows_the_plan_and_changes_nothing() {
        let mut p = policy("p", 1);
        p.spec.rollout.dry_run = true;
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Pending)],
            rollout: Some(outcome(EngineState::Degraded, "phase \"default\": 1 restarting")),
            ..Default::default()
        };
        let s = desired_status(&p, &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Pending), "a dry run never rolls back, so it is not degraded");
        let progressing = cond(&s, PROGRESSING);
        assert_eq!(progressing.reason, reason::DRY_RUN);
        assert!(progressing.message.contains("plan: phase"), "{}", progressing.message);
        assert_eq!(cond(&s, DEGRADED).status, "False");
    }

    #[test]
    fn a_paused_rollout_explains_where_it_stopped() {
        let mut p = policy("p", 1);
        p.spec.rollout.paused = true;
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active)],
            rollout: Some(outcome(EngineState::Paused, "paused in phase \"default\"")),
            ..Default::default()
        };
        let s = desired_status(&p, &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Paused));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", reason::PAUSED));
        let progressing = cond(&s, PROGRESSING);
        assert_eq!(
            (progressing.reason.as_str(), progressing.message.as_str()),
            (reason::PAUSED, "paused in phase \"default\"")
        );
    }

    #[test]
    fn leaving_namespaces_are_not_pending() {
        let obs = StatusInputs {
            namespaces: vec![ns_status("a", NamespaceState::Active), ns_status("gone", NamespaceState::Leaving)],
            rollout: Some(outcome(EngineState::Complete, "all 1 phase(s) rolled out")),
            ..Default::default()
        };
        let s = desired_status(&policy("p", 1), &obs, None, now());
        assert_eq!(s.phase, Some(PolicyPhase::Complete));
        assert_eq!(cond(&s, READY).status, "True");
    }

    #[test]
    fn without_an_engine_verdict_the_previous_rollout_status_is_kept() {
        let previous = TracingPolicyStatus {
            rollout: Some(RolloutStatus { phase_index: 1, ..Default::default() }),
            ..Default::default()
        };
        let obs = StatusInputs { namespaces: vec![ns_status("a", NamespaceState::Active)], ..Default::default() };
        let s = desired_status(&policy("p", 1), &obs, Some(&previous), now());
        assert_eq!(s.rollout.map(|r| r.phase_index), Some(1));
    }
}
