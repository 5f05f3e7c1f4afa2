//! Which namespaces a policy governs and what to do in each of them, as pure functions: the
//! governed namespaces and overlaps, the step of each namespace, the agent objects that must go,
//! and the pod counts of a namespace.

use crate::api::keys::INJECT_LABEL;
use crate::api::{governing_policy, selector, Coverage, NamespaceState, TracingPolicy};
use crate::rollout::pod::PodSummary;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

/// Rollout phase of a namespace when the policy declares no phases.
pub const DEFAULT_ROLLOUT_PHASE: &str = "default";

/// A namespace this policy governs (and no older policy claims), with its rollout phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovernedNamespace {
    pub name: String,
    pub rollout_phase: String,
}

/// A namespace this policy's selector matches but an older policy governs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub namespace: String,
    pub governed_by: String,
}

/// Where a policy applies, computed from every policy and namespace the controller knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Governance {
    /// Sorted by name.
    pub governed: Vec<GovernedNamespace>,
    /// Sorted by namespace name.
    pub overlaps: Vec<Overlap>,
}

impl Governance {
    pub fn governs(&self, namespace: &str) -> bool {
        self.governed.iter().any(|g| g.name == namespace)
    }
}

/// Which namespaces `policy` governs among `namespaces`, given all known `policies` (the store may
/// lag behind, so `policy` itself is taken from the argument, not from `policies`).
/// Terminating namespaces are not governed: nothing can be written there any more.
pub fn govern<'a>(
    policy: &'a TracingPolicy,
    policies: impl IntoIterator<Item = &'a TracingPolicy>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> Governance {
    let me = policy.name_any();
    let candidates: Vec<&TracingPolicy> =
        std::iter::once(policy).chain(policies.into_iter().filter(|p| p.name_any() != me)).collect();
    let mut governance = Governance::default();
    for ns in namespaces {
        if is_terminating(ns) || !policy.governs(ns) {
            continue;
        }
        match governing_policy(candidates.iter().copied(), ns) {
            Some(winner) if winner.name_any() != me => {
                governance.overlaps.push(Overlap { namespace: ns.name_any(), governed_by: winner.name_any() })
            }
            _ => governance
                .governed
                .push(GovernedNamespace { name: ns.name_any(), rollout_phase: rollout_phase_for(policy, ns) }),
        }
    }
    governance.governed.sort_by(|a, b| a.name.cmp(&b.name));
    governance.overlaps.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    governance
}

fn is_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Terminating")
}

/// The rollout phase `ns` belongs to: the first phase whose selector matches it (a phase without
/// selector takes every remaining namespace), else the last phase, else [`DEFAULT_ROLLOUT_PHASE`].
pub fn rollout_phase_for(policy: &TracingPolicy, ns: &Namespace) -> String {
    let phases = &policy.spec.rollout.phases;
    let matches =
        |sel: &Option<LabelSelector>| sel.as_ref().is_none_or(|s| selector::matches(s, ns.labels()).unwrap_or(false));
    phases
        .iter()
        .find(|p| matches(&p.namespace_selector))
        .or(phases.last())
        .map_or_else(|| DEFAULT_ROLLOUT_PHASE.to_string(), |p| p.name.clone())
}

/// Kind of an object the policy owns in a user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OwnedKind {
    ConfigMap,
    Secret,
}

/// An object the policy owns, as listed (metadata only).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedObject {
    pub kind: OwnedKind,
    pub namespace: String,
    pub name: String,
    /// Deletion is guarded by this version, so an object another policy just took over survives.
    pub resource_version: Option<String>,
}

/// Owned objects that must go: everything in namespaces the policy no longer governs, and the
/// agent Secret where the policy no longer needs one (its API key or CA reference was removed).
pub fn stale_objects(governance: &Governance, needs_secret: bool, owned: &[OwnedObject]) -> Vec<OwnedObject> {
    let mut stale: Vec<OwnedObject> = owned
        .iter()
        .filter(|o| !governance.governs(&o.namespace) || (o.kind == OwnedKind::Secret && !needs_secret))
        .cloned()
        .collect();
    stale.sort();
    stale
}

/// What gates the activation of namespaces in this reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gates {
    /// `spec.rollout.paused`: no new namespace becomes active.
    pub paused: bool,
    /// `spec.rollout.dryRun`: nothing new is written or activated.
    pub dry_run: bool,
    /// Every source Secret the policy references exists with its key.
    pub secrets_ready: bool,
}

/// What to do in one governed namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceStep {
    /// Write the agent config (and Secret) and mark the namespace `Active` for the first time.
    Activate,
    /// Already active: rewrite the agent config so live changes (sampling, endpoint) reach the agents.
    Refresh,
    /// Already active, but the config cannot be written now (a source Secret is missing): leave
    /// what is there, so running agents keep working.
    Keep,
    /// Not active, and not to be activated now.
    Hold(HoldReason),
}

/// Why a namespace stays `Pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldReason {
    Paused,
    DryRun,
    SecretNotFound,
    /// Writing the agent objects failed; retried on the next reconcile.
    WriteFailed,
    /// The namespace's rollout phase has not started yet.
    PhaseNotReached,
}

impl NamespaceStep {
    /// The namespace's state once the step is carried out.
    pub fn resulting_state(self) -> NamespaceState {
        match self {
            NamespaceStep::Activate | NamespaceStep::Refresh | NamespaceStep::Keep => NamespaceState::Active,
            NamespaceStep::Hold(_) => NamespaceState::Pending,
        }
    }

    /// Whether the step writes the agent ConfigMap (and Secret).
    pub fn writes_config(self) -> bool {
        matches!(self, NamespaceStep::Activate | NamespaceStep::Refresh)
    }
}

/// The step for a namespace previously in state `previous` (None: never recorded). `reached`:
/// the rollout engine has reached the namespace's phase. An active namespace stays active.
pub fn step_for(previous: Option<NamespaceState>, gates: Gates, reached: bool) -> NamespaceStep {
    let active = previous == Some(NamespaceState::Active);
    match (active, gates) {
        (true, Gates { secrets_ready: false, .. }) => NamespaceStep::Keep,
        (true, _) => NamespaceStep::Refresh,
        (false, Gates { secrets_ready: false, .. }) => NamespaceStep::Hold(HoldReason::SecretNotFound),
        (false, Gates { dry_run: true, .. }) => NamespaceStep::Hold(HoldReason::DryRun),
        (false, Gates { paused: true, .. }) => NamespaceStep::Hold(HoldReason::Paused),
        (false, _) if !reached => NamespaceStep::Hold(HoldReason::PhaseNotReached),
        (false, _) => NamespaceStep::Activate,
    }
}

/// Pod counts of one namespace from its cached pods.
///
/// `selected`: not terminating, not opted out, matched by `podSelector`; `injected`: selected and
/// labelled `tracelight.io/injected=true`; `skipped`: selected, not injected, and the webhook said
/// why on the pod; `missed`: selected, not injected, namespace active.
/// `outdated` is left 0 here: it needs each workload's expected manifest hash (see
/// `inject::hash`), so the reconciler fills it from the rollout's workload observations.
pub fn pod_counts<'a>(
    pods: impl IntoIterator<Item = &'a PodSummary>,
    pod_selector: Option<&LabelSelector>,
    active: bool,
) -> Coverage {
    let mut counts = Coverage::default();
    for pod in pods {
        let opted_out = pod.labels.get(INJECT_LABEL) == Some("false");
        let selected = pod_selector.is_none_or(|s| pod.selected_by(s).unwrap_or(false));
        if pod.deleting || opted_out || !selected {
            continue;
        }
        counts.selected += 1;
        if pod.injected() {
            counts.injected += 1;
        } else if pod.skipped {
            counts.skipped += 1;
        } else if active {
            counts.missed += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RolloutPhase, TracingPolicySpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

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

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        ns.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        ns
    }

    fn enabled(name: &str) -> Namespace {
        namespace(name, &[("tracelight.io/enabled", "true")])
    }

    fn phase(name: &str, selector: Option<LabelSelector>) -> RolloutPhase {
        serde_json::from_value(serde_json::json!({"name": name, "namespaceSelector": selector})).unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn governs_labelled_namespaces_only_sorted() {
        let p = policy("default", 100);
        let nss = [enabled("b"), namespace("plain", &[]), enabled("a")];
        let plan = govern(&p, [], &nss);
        let names: Vec<_> = plan.governed.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(plan.overlaps.is_empty());
        assert_eq!(plan.governed[0].rollout_phase, DEFAULT_ROLLOUT_PHASE);
    }

    #[test]
    fn older_policy_wins_an_overlap_and_the_younger_reports_it() {
        let old = policy("old", 100);
        let young = policy("young", 200);
        let nss = [enabled("shop")];
        let plan = govern(&young, [&old, &young], &nss);
        assert!(plan.governed.is_empty());
        assert_eq!(plan.overlaps, vec![Overlap { namespace: "shop".into(), governed_by: "old".into() }]);
        let plan = govern(&old, [&old, &young], &nss);
        assert_eq!(plan.governed.len(), 1);
        assert!(plan.overlaps.is_empty());
    }

    #[test]
    fn a_policy_being_deleted_does_not_win_overlaps() {
        let mut old = policy("old", 100);
        old.metadata.deletion_timestamp = Some(Time(now()));
        let young = policy("young", 200);
        let plan = govern(&young, [&old], &[enabled("shop")]);
        assert_eq!(plan.governed.len(), 1);
    }

    #[test]
    fn terminating_namespaces_are_not_governed() {
        let mut ns = enabled("gone");
        ns.metadata.deletion_timestamp = Some(Time(now()));
        let plan = govern(&policy("p", 1), [], &[ns]);
        assert!(plan.governed.is_empty());
    }

    #[test]
    fn rollout_phase_is_first_match_else_last_phase() {
        let mut p = policy("p", 1);
        let pilot = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["pilot".into()]),
            }]),
            ..Default::default()
        };
        let prod = LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".to_string(), "prod".to_string())])),
            ..Default::default()
        };
        p.spec.rollout.phases = vec![phase("pilot", Some(pilot)), phase("expansion", Some(prod))];
        assert_eq!(rollout_phase_for(&p, &namespace("a", &[("tier", "pilot")])), "pilot");
        assert_eq!(rollout_phase_for(&p, &namespace("b", &[("tier", "prod")])), "expansion");
        assert_eq!(rollout_phase_for(&p, &namespace("c", &[])), "expansion");
        p.spec.rollout.phases.push(phase("rest", None));
        assert_eq!(rollout_phase_for(&p, &namespace("c", &[])), "rest");
    }

    fn owned(kind: OwnedKind, ns: &str) -> OwnedObject {
        OwnedObject { kind, namespace: ns.into(), name: "tracelight-agent".into(), resource_version: Some("1".into()) }
    }

    #[test]
    fn stale_objects_are_those_outside_governed_namespaces_and_unneeded_secrets() {
        let plan = govern(&policy("p", 1), [], &[enabled("a")]);
        let all = [
            owned(OwnedKind::ConfigMap, "a"),
            owned(OwnedKind::Secret, "a"),
            owned(OwnedKind::ConfigMap, "gone"),
            owned(OwnedKind::Secret, "gone"),
        ];
        let stale = stale_objects(&plan, true, &all);
        assert_eq!(stale, vec![owned(OwnedKind::ConfigMap, "gone"), owned(OwnedKind::Secret, "gone")]);
        let stale = stale_objects(&plan, false, &all);
        assert_eq!(stale.len(), 3);
        assert!(stale.contains(&owned(OwnedKind::Secret, "a")));
    }

    #[test]
    fn steps_respect_pause_dry_run_and_missing_secrets() {
        let open = Gates { paused: false, dry_run: false, secrets_ready: true };
        assert_eq!(step_for(None, open, true), NamespaceStep::Activate);
        assert_eq!(step_for(Some(NamespaceState::Pending), open, true), NamespaceStep::Activate);
        assert_eq!(step_for(Some(NamespaceState::Active), open, true), NamespaceStep::Refresh);
        let paused = Gates { paused: true, ..open };
        assert_eq!(step_for(None, paused, true), NamespaceStep::Hold(HoldReason::Paused));
        assert_eq!(step_for(Some(NamespaceState::Active), paused, true), NamespaceStep::Refresh);
        let dry = Gates { dry_run: true, ..open };
        assert_eq!(step_for(None, dry, true), NamespaceStep::Hold(HoldReason::DryRun));
        let no_secret = Gates { secrets_ready: false, ..open };
        assert_eq!(step_for(None, no_secret, true), NamespaceStep::Hold(HoldReason::SecretNotFound));
        assert_eq!(step_for(Some(NamespaceState::Active), no_secret, true), NamespaceStep::Keep);
        assert_eq!(step_for(None, open, false), NamespaceStep::Hold(HoldReason::PhaseNotReached));
        assert_eq!(
            step_for(Some(NamespaceState::Pending), open, false),
            NamespaceStep::Hold(HoldReason::PhaseNotReached)
        );
        assert_eq!(step_for(Some(NamespaceState::Active), open, false), NamespaceStep::Refresh);
        assert!(!NamespaceStep::Keep.writes_config());
        assert_eq!(NamespaceStep::Keep.resulting_state(), NamespaceState::Active);
    }

    fn pod(labels: &[(&str, &str)]) -> PodSummary {
        let meta = ObjectMeta {
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        };
        PodSummary::from_meta(&meta, Box::default())
    }

    #[test]
    fn pod_counts_selected_injected_missed() {
        let mut terminating = pod(&[]);
        terminating.deleting = true;
        let pods = [
            pod(&[("tracelight.io/injected", "true")]),
            pod(&[]),
            pod(&[("tracelight.io/inject", "false")]),
            terminating,
        ];
        let counts = pod_counts(&pods, None, true);
        assert_eq!((counts.selected, counts.injected, counts.missed, counts.outdated), (2, 1, 1, 0));
        // Nothing is missed where the rollout has not arrived yet.
        assert_eq!(pod_counts(&pods, None, false).missed, 0);
        // A pod the webhook skipped with a reason is counted as skipped, not missed.
        let mut skipped = pod(&[]);
        skipped.skipped = true;
        let counts = pod_counts(&[skipped], None, true);
        assert_eq!((counts.selected, counts.skipped, counts.missed), (1, 1, 0));
    }

    #[test]
    fn pod_selector_narrows_selection() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "api".to_string())])),
            ..Default::default()
        };
        let pods = [pod(&[("app", "api")]), pod(&[("app", "db")])];
        assert_eq!(pod_counts(&pods, Some(&sel), true).selected, 1);
    }
}
