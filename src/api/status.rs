//! Status of a `TracingPolicy`: what the controller observed and decided. Written only by the
//! controller, through server-side apply.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
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
}

/// Sampling in effect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamplingStatus {
    /// Ratio the agents apply (lower than `spec.sampling.ratio` when a budget applies).
    pub effective_ratio: f64,
    /// Observed exported spans per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans_per_second: Option<f64>,
}

impl TracingPolicyStatus {
    /// Rollout state of `namespace`, if the controller has recorded one.
    pub fn namespace_state(&self, namespace: &str) -> Option<NamespaceState> {
        self.namespaces.iter().find(|n| n.name == namespace).map(|n| n.state)
    }
}
