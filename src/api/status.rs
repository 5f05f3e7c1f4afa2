//! Status of a `TracingPolicy`: what the controller observed and decided. Written only by the
//! controller, through server-side apply.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Overall rollout phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PolicyPhase>,
    /// `Ready`, `Progressing`, `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Name of the rollout phase currently being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_phase: Option<String>,
    /// Hash of the settings that change pod manifests; pods injected with another hash are outdated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_hash: Option<String>,
    /// Per-namespace rollout state and counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceStatus>,
    /// Totals over all governed namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// Sampling actually in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingStatus>,
    /// Where the phased rollout stands; the operator continues from here after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Per workload, what "normal" looked like at the end of a phase's soak (rate, errors,
    /// durations, agent overhead); `tracelight verify --baseline` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<super::review::BaselineStatus>,
    /// The last scheduled review of coverage and overhead, and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<super::review::ReviewStatus>,
    /// The service graph from the agents' probe traces (`tracelight graph` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_graph: Option<super::continuity::ServiceGraph>,
}

/// Progress of the phased rollout, and what it is waiting for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Index into `spec.rollout.phases` of the phase being rolled out (0 without phases).
    #[serde(default)]
    pub phase_index: u32,
    /// When the current phase's last batch finished and its soak started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_started_at: Option<Time>,
    /// Set while phases already rolled out are rolled out again (an operator upgrade shipped a new
    /// agent image, an instrumentation image changed): the index of the earlier phase being
    /// restarted, or soaking before the next phase starts. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_phase_index: Option<u32>,
    /// When the re-rolled phase's last restart passed its gate and its soak started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_soak_started_at: Option<Time>,
    /// Workloads restarted and not yet past their health gate (`namespace/Kind/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<String>,
    /// Workloads rolled back after a failed rollout. Remove the label `tracelight.io/inject: "false"`
    /// from a workload's pod template to retry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<ExcludedWorkload>,
}

/// A workload the rollout rolled back and excluded from injection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExcludedWorkload {
    pub namespace: String,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    pub name: String,
    /// Why it was rolled back.
    pub reason: String,
}

/// Overall phase of a policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PolicyPhase {
    Pending,
    Progressing,
    Paused,
    Degraded,
    Complete,
}

/// Rollout state of one governed namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    pub name: String,
    /// Rollout phase the namespace belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_phase: Option<String>,
    /// `Pending` (not reached yet), `Active` (agent config written; new pods are injected),
    /// `Leaving` (being restarted without injection).
    pub state: NamespaceState,
    #[serde(default)]
    pub counts: Coverage,
    /// Per-workload coverage from the agents' reports (at most [`MAX_WORKLOADS_PER_NAMESPACE`],
    /// the least covered first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadCoverage>,
}

/// Most workloads listed per namespace in the status, to keep the object small; the counts
/// cover all of them.
pub const MAX_WORKLOADS_PER_NAMESPACE: usize = 100;

/// Whether a workload's spans arrive, from its agents' reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCoverage {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    pub name: String,
    pub state: CoverageState,
    /// Pods of the workload.
    #[serde(default)]
    pub pods: u32,
    /// Pods carrying the agent.
    #[serde(default)]
    pub injected: u32,
    /// Injected pods whose agent received spans recently.
    #[serde(default)]
    pub reporting: u32,
    /// Injected pods whose agent runs the policy's current config (sampling, endpoint).
    #[serde(default)]
    pub current_config: u32,
    /// `service.name`s the agents saw (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// When one of its agents last received a span (minute precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_span_time: Option<Time>,
    /// Pods by the version of the agent they run, from the agents' recent reports, e.g.
    /// `{"0.2.0": 3, "unknown (contract 1)": 1}`. Agents of Tracelight 0.1.0 do not report their
    /// version and count as `unknown (contract 1)`; `other` sums the agents of versions not
    /// listed or not spelled like a version (the map keeps at most 8 entries: when agents run more
    /// versions, the least common are summed under `other`). Injected pods whose agent has not
    /// reported recently are not counted.
    #[serde(default, skip_serializing_if = "AgentVersions::is_empty")]
    pub agent_versions: AgentVersions,
    /// Spans received and kept per second, the ratio in effect and the rule deciding it; absent
    /// until two reports of one of its agents have arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<WorkloadSampling>,
    /// Whether the spans of its requests end up in one trace, from the probe traces; absent
    /// until its agents or its peers' sent some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<super::continuity::TraceContinuity>,
    /// Per rule, spans per second its agents received and kept (the budgets' input; not
    /// shown in the status).
    #[serde(skip)]
    #[schemars(skip)]
    pub rule_rates: BTreeMap<String, RuleRate>,
    /// Bytes of kept spans per second, its agents summed (not shown: `sampling` has it).
    #[serde(skip)]
    #[schemars(skip)]
    pub kept_bytes_rate: Option<f64>,
}

/// Spans per second of one rule: received (before sampling) and kept.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct RuleRate {
    pub received: f64,
    pub kept: f64,
    /// Of `kept`, the error spans kept only because of `keepErrors`.
    pub kept_errors: f64,
}

impl RuleRate {
    pub fn add(&mut self, other: RuleRate) {
        self.received += other.received;
        self.kept += other.kept;
        self.kept_errors += other.kept_errors;
    }
}

/// Coverage state of one workload.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema)]
pub enum CoverageState {
    /// No pod carries the agent (not rolled out yet, excluded, or opted out).
    #[default]
    NotInjected,
    /// Injected, but no agent report arrived (the agent cannot reach the operator, or just started).
    Unreported,
    /// Agents report, but none received a span recently: the application sends no traces.
    Silent,
    /// Spans are arriving.
    Reporting,
    /// Its pod template opts out of injection (`tracelight.io/inject: "false"`), on purpose.
    OptedOut,
}

/// Rollout state of a namespace. The webhook injects only into `Active` namespaces.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum NamespaceState {
    #[default]
    Pending,
    Active,
    Leaving,
}

/// Pod counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// Governed namespaces (totals only).
    #[serde(default)]
    pub namespaces: u32,
    /// Pods the policy selects.
    #[serde(default)]
    pub selected: u32,
    /// Selected pods carrying the agent.
    #[serde(default)]
    pub injected: u32,
    /// Injected pods whose manifest hash differs from the policy's.
    #[serde(default)]
    pub outdated: u32,
    /// Selected pods in active namespaces that are not injected.
    #[serde(default)]
    pub missed: u32,
    /// Selected pods the webhook could not inject safely (a port or name conflict); each says why
    /// in its `tracelight.io/injection-status` annotation. Not counted as missed: restarting them
    /// would not help.
    #[serde(default)]
    pub skipped: u32,
    /// Injected pods whose agent received spans recently.
    #[serde(default)]
    pub reporting: u32,
    /// Injected pods whose agent reports but received no span recently.
    #[serde(default)]
    pub silent: u32,
    /// Injected pods by the version of the agent they run, from the agents' recent reports, e.g.
    /// `{"0.2.0": 12, "unknown (contract 1)": 3}`: during an agent upgrade, how many pods still run
    /// the old agent. Agents of Tracelight 0.1.0 do not report their version and count as
    /// `unknown (contract 1)`; `other` sums the agents of versions not listed or not spelled like a
    /// version (the map keeps at most 8 entries: when agents run more versions, the least common
    /// are summed under `other`). Injected pods whose agent has not reported recently are not
    /// counted.
    #[serde(default, skip_serializing_if = "AgentVersions::is_empty")]
    pub agent_versions: AgentVersions,
    /// `agentVersions` on one line, the most common version first, e.g.
    /// `0.2.0:12,unknown (contract 1):3` (totals only; the `Agents` column of `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version_summary: Option<String>,
}

/// Pods by agent version: at most [`AgentVersions::MAX`] entries, the most common versions, and
/// the rest summed under [`AgentVersions::OTHER`]. Agents choose what they report, so the map is
/// capped to keep the status small whatever they send.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(transparent)]
pub struct AgentVersions(BTreeMap<String, u32>);

impl AgentVersions {
    /// Most entries in the map, [`OTHER`](Self::OTHER) included.
    pub const MAX: usize = 8;
    /// Agents of the versions beyond the [`MAX`](Self::MAX) most common, or of a version that is
    /// not spelled like one. A version begins with a digit, so no agent can report this key.
    pub const OTHER: &'static str = "other";

    /// The key of agents that do not report their version (agents of contract 1, Tracelight
    /// 0.1.0): `unknown (contract 1)`. Spaces and parentheses are never part of a version.
    pub fn unknown(contract_version: u32) -> String {
        format!("unknown (contract {contract_version})")
    }

    /// `counts` capped at [`MAX`](Self::MAX) entries: when there are more, the most common
    /// versions (then the alphabetically first) and [`OTHER`](Self::OTHER) with the rest.
    pub fn from_counts(counts: impl IntoIterator<Item = (String, u32)>) -> AgentVersions {
        let mut all: BTreeMap<String, u32> = BTreeMap::new();
        for (version, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
            let entry = all.entry(version).or_default();
            *entry = entry.saturating_add(n);
        }
        if all.len() <= Self::MAX {
            return AgentVersions(all);
        }
        let mut other = all.remove(Self::OTHER).unwrap_or_default();
        let mut ranked: Vec<(String, u32)> = all.into_iter().collect();
        ranked.sort_by(|(a, n), (b, m)| m.cmp(n).then_with(|| a.cmp(b)));
        for (_, n) in ranked.drain(Self::MAX - 1..) {
            other = other.saturating_add(n);
        }
        let mut kept: BTreeMap<String, u32> = ranked.into_iter().collect();
        kept.insert(Self::OTHER.to_string(), other);
        AgentVersions(kept)
    }

    /// The sum of several maps (a namespace's workloads, the policy's namespaces), capped again.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a AgentVersions>) -> AgentVersions {
        Self::from_counts(all.into_iter().flat_map(|v| v.iter()).map(|(version, n)| (version.to_string(), n)))
    }

    /// Pods running `version`.
    pub fn get(&self, version: &str) -> u32 {
        self.0.get(version).copied().unwrap_or_default()
    }

    /// Versions and their pods, alphabetically.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0.iter().map(|(version, n)| (version.as_str(), *n))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One line, the most common version first and [`OTHER`](Self::OTHER) last:
    /// `0.2.0:12,unknown (contract 1):3`. `None` when no agent reported.
    pub fn summary(&self) -> Option<String> {
        let mut ranked: Vec<(&str, u32)> = self.iter().collect();
        ranked.sort_by_key(|(version, n)| (*version == Self::OTHER, std::cmp::Reverse(*n), *version));
        let parts: Vec<String> = ranked.iter().map(|(version, n)| format!("{version}:{n}")).collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// Sampling in effect, from the agents' recent reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamplingStatus {
    /// Ratio the agents apply to spans no rule decides: `spec.sampling.ratio`, lowered when the
    /// policy's budget requires it.
    pub effective_ratio: f64,
    /// Spans kept per second by all agents (after sampling, rules and caps); absent before two
    /// reports of an agent have arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans_per_second: Option<f64>,
    /// Spans received per second by all agents, before sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_spans_per_second: Option<f64>,
    /// `spec.sampling.spansPerSecondBudget`, for comparison with `spansPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u32>,
    /// Per rule, the built-in `health-checks` and the fallback `default` included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSamplingStatus>,
}

/// One rule's sampling, summed over all agents.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleSamplingStatus {
    pub name: String,
    /// Ratio the agents apply for this rule now (its `ratio`, lowered by a budget).
    pub effective_ratio: f64,
    /// Spans the rule decided per second, before sampling.
    #[serde(default)]
    pub received_spans_per_second: f64,
    /// Spans it kept per second.
    #[serde(default)]
    pub kept_spans_per_second: f64,
    /// The rule's `spansPerSecond`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u32>,
}

/// A workload's sampling, from its agents' recent reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSampling {
    /// Spans its agents received per second, before sampling.
    pub received_spans_per_second: f64,
    /// Spans its agents kept per second.
    pub kept_spans_per_second: f64,
    /// The ratio applied to most of its spans: that of `rule`.
    pub effective_ratio: f64,
    /// The rule that decided most of its spans (`default`: no rule matched them).
    pub rule: String,
    /// Bytes per second of the kept spans (OTLP protobuf before compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_bytes_per_second: Option<f64>,
    /// Pods whose agents' rates are summed here.
    #[serde(default)]
    pub pods: u32,
}

impl TracingPolicyStatus {
    /// Rollout state of `namespace`, if the controller has recorded one.
    pub fn namespace_state(&self, namespace: &str) -> Option<NamespaceState> {
        self.namespaces.iter().find(|n| n.name == namespace).map(|n| n.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(counts: &[(&str, u32)]) -> AgentVersions {
        AgentVersions::from_counts(counts.iter().map(|(v, n)| (v.to_string(), *n)))
    }

    fn entries(v: &AgentVersions) -> Vec<(String, u32)> {
        v.iter().map(|(v, n)| (v.to_string(), n)).collect()
    }

    #[test]
    fn agent_versions_up_to_the_cap_are_kept_as_they_are() {
        let eight: Vec<(String, u32)> = (0..8).map(|i| (format!("0.{i}.0"), 1)).collect();
        assert_eq!(entries(&AgentVersions::from_counts(eight.clone())), eight);
    }

    #[test]
    fn agent_versions_beyond_the_cap_fold_the_least_common_into_other() {
        // Nine versions: the six with many pods are kept; of the three with one pod each,
        // 9.0.0-a wins the tie alphabetically and the other two are summed under `other`.
        let v = versions(&[
            ("9.0.0-c", 1),
            ("0.1.0", 50),
            ("9.0.0-a", 1),
            ("0.2.0", 9),
            ("0.3.0", 8),
            ("0.4.0", 7),
            ("9.0.0-b", 1),
            ("0.5.0", 6),
            ("0.6.0", 5),
        ]);
        assert_eq!(
            entries(&v),
            [
                ("0.1.0".into(), 50),
                ("0.2.0".into(), 9),
                ("0.3.0".into(), 8),
                ("0.4.0".into(), 7),
                ("0.5.0".into(), 6),
                ("0.6.0".into(), 5),
                ("9.0.0-a".into(), 1),
                ("other".into(), 2),
            ]
        );
    }

    #[test]
    fn sums_add_up_versions_and_fold_other_again() {
        let a = versions(&[("0.2.0", 3), (&AgentVersions::unknown(1), 1)]);
        let b = versions(&[("0.2.0", 2), ("0.3.0", 1), (AgentVersions::OTHER, 4)]);
        let sum = AgentVersions::sum([&a, &b, &AgentVersions::default()]);
        assert_eq!(
            entries(&sum),
            [("0.2.0".into(), 5), ("0.3.0".into(), 1), ("other".into(), 4), ("unknown (contract 1)".into(), 1)]
        );
        // Beyond the cap, an `other` from the parts stays `other` even when it is the largest.
        let many: Vec<AgentVersions> = (0..10).map(|i| versions(&[(&format!("1.{i}.0"), 2)])).collect();
        let sum = AgentVersions::sum(many.iter().chain([&b]));
        assert_eq!(sum.iter().count(), AgentVersions::MAX);
        assert_eq!(sum.iter().map(|(_, n)| n).sum::<u32>(), 10 * 2 + 2 + 1 + 4);
        assert_eq!(sum.get(AgentVersions::OTHER), 4 + 1 + 2 * 4, "0.3.0 and 1.6.0 to 1.9.0 folded");
        assert_eq!(sum.get("0.2.0"), 2);
    }

    #[test]
    fn summary_puts_the_most_common_first_and_other_last() {
        let v = versions(&[("0.1.0", 3), (AgentVersions::OTHER, 20), ("0.2.0", 12), (&AgentVersions::unknown(1), 3)]);
        assert_eq!(v.summary().as_deref(), Some("0.2.0:12,0.1.0:3,unknown (contract 1):3,other:20"));
        assert_eq!(AgentVersions::default().summary(), None);
    }

    #[test]
    fn agent_versions_serialize_as_a_plain_map() {
        let w = WorkloadCoverage { agent_versions: versions(&[("0.2.0", 3)]), ..Default::default() };
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["agentVersions"], serde_json::json!({"0.2.0": 3}));
        assert!(serde_json::to_value(WorkloadCoverage::default()).unwrap().get("agentVersions").is_none());
    }
}
