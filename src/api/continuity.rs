//! Status types of trace continuity: whether the spans of one request end up in one trace, per
//! workload and as the service graph the operator assembled from the agents' probe traces
//! (`crate::continuity` decides them).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a workload's traces are whole, from the probe traces of its agents and its peers'.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceContinuity {
    pub state: ContinuityState,
    /// Probe traces its spans were part of, within the operator's window (the last 10 minutes).
    #[serde(default)]
    pub probe_traces: u32,
    /// With `Broken`: the first broken edge it is an end of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<BrokenLink>,
    /// Other findings that do not split traces but distort them: double instrumentation, clock
    /// skew between its pods and a peer's (at most 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

/// A workload's continuity verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema)]
pub enum ContinuityState {
    /// Not enough probe traces yet to tell (fewer than 3 in the window).
    #[default]
    Unknown,
    /// Every call to or from it that probes saw kept the trace whole.
    Connected,
    /// A call between it and a peer split the trace: `broken` says which and why.
    Broken,
}

/// A broken edge, as one of its ends reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokenLink {
    /// `caller -> callee`, each `namespace/name` (or the host called, when it is not a workload).
    pub edge: String,
    pub reason: BreakReason,
    /// The reason in a sentence, with the settings that tell.
    pub message: String,
    /// A probe trace where the caller's span has no child, to look up in the tracing backend.
    pub example_trace_id: String,
}

/// Why a call did not continue its trace, as far as the operator can tell.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema)]
pub enum BreakReason {
    /// The two sides' injected `propagators` (from their policies) share no context format.
    PropagatorMismatch,
    /// A container of one side sets `OTEL_PROPAGATORS` itself, leaving no format in common.
    PropagatorOverride,
    /// The callee is a workload without a reporting agent.
    CalleeNotInstrumented,
    /// Both sides are instrumented and share a format, yet the callee did not continue the
    /// trace: a proxy that drops the headers, or a framework the instrumentation does not cover.
    #[default]
    ContextDropped,
}

/// The service graph as the operator sees it from the probe traces of the last 10 minutes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceGraph {
    /// Probe traces in the window with a span in one of the policy's namespaces.
    #[serde(default)]
    pub probe_traces: u32,
    /// Edges with an end in one of the policy's namespaces (at most 200, broken ones first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<GraphEdge>,
}

/// Calls from one workload to another (or to a host that is not a workload).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraphEdge {
    /// `namespace/name` of the calling workload.
    pub from: String,
    /// `namespace/name` of the called workload, or the host called when it is not a workload.
    pub to: String,
    pub kind: EdgeKind,
    /// Calls seen in probe traces.
    pub calls: u64,
    /// Of `calls`, those whose trace the callee did not continue.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub broken: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BreakReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_trace_id: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What kind of call an edge is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, JsonSchema)]
pub enum EdgeKind {
    /// Client -> server (HTTP, gRPC...).
    #[default]
    Request,
    /// Producer -> consumer, through a queue.
    Message,
    /// Client -> database (never expected to continue the trace).
    Database,
}

impl EdgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Request => "request",
            EdgeKind::Message => "message",
            EdgeKind::Database => "database",
        }
    }
}

impl BreakReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakReason::PropagatorMismatch => "PropagatorMismatch",
            BreakReason::PropagatorOverride => "PropagatorOverride",
            BreakReason::CalleeNotInstrumented => "CalleeNotInstrumented",
            BreakReason::ContextDropped => "ContextDropped",
        }
    }
}
