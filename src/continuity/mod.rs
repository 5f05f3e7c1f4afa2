//! Trace continuity (pure): are the spans of one request in one trace? The agents record the
//! shape of a small, consistent sample of traces before sampling (probe traces, see
//! `tracelight_contract::probe`); the operator files them in a bounded [`ProbeWindow`] as
//! reports arrive, and [`join()`] assembles them into the service graph and its broken links.
//! [`verdict`] turns the graph into the status of a workload and a policy.
//!
//! # What the join can tell
//!
//! Every agent keeps the same traces (those of lowest randomness), so a probe trace holds the
//! spans of every instrumented service it went through. A client or producer span with no
//! child, once every agent has had time to report (a settle delay of two report intervals), is
//! a call whose callee did not continue the trace; the join names the callee from the span's
//! peer attributes (learned from connected calls with the same peer where there are any, else
//! the host's first label as a workload of the caller's namespace, or `name.namespace`) or, for
//! a producer, from the consumers seen on the same destination, and gives the likely cause:
//!
//! - the callee has no reporting agent ([`BreakReason::CalleeNotInstrumented`]);
//! - the two sides' propagators share no context format: from their policies
//!   ([`BreakReason::PropagatorMismatch`]) or because a container sets `OTEL_PROPAGATORS` itself
//!   ([`BreakReason::PropagatorOverride`]);
//! - else the context was dropped on the way ([`BreakReason::ContextDropped`]).
//!
//! A callee is expected to have continued a trace only when its agents' reported thresholds
//! cover the trace (an agent over its cap lowers its own for the interval); database calls and
//! failed calls (error status) are never judged, and a client span wrapping another client span
//! of the same pod (a library instrumented at two levels) is judged through the inner one.
//! Calls to a host that is no known workload are edges to that host, not broken ones.
//!
//! The callee's side shows a break too: a server span that starts a trace (no parent) for a
//! request that came from an instrumented pod. Agents report their pod's IP (none in a
//! `hostNetwork` pod: the node's address names no single pod) and the address each server
//! span's request came from (the socket peer, else `client.address`); when that address is a
//! reporting pod of another workload whose application sends spans, the call on the edge
//! caller -> callee is broken, with the cause as above (the context was dropped: the caller's
//! client library is not instrumented or a proxy drops the headers, unless the propagators say
//! otherwise). This also catches a caller that makes no client span at all. An address two
//! workloads' pods reported within the window names neither.
//!
//! It also finds double instrumentation (a server span whose parent is a server span of the same
//! pod, or two server spans of one pod under one client span) and clock skew (a server span that
//! starts before its client span, or ends after it, by more than [`SKEW_BOUND_MS`]).
//!
//! # Bounded
//!
//! The window keeps [`window::WINDOW_SECS`] of probe spans and at most [`window::MAX_SPANS`]; the
//! join's own state is per edge and per workload. `make bench-join` measures both at the scale of
//! 10,000 agents.

pub mod join;
pub mod verdict;
pub mod window;

pub use join::{join, Edge, Graph, Inventory, Node, WorkloadFacts};
pub use verdict::{service_graph, workload_continuity};
pub use window::ProbeWindow;

use std::fmt;

/// Seconds after which a call without a child counts as broken: two report intervals and a margin,
/// so the callee's agent has reported the child if there was one.
pub const SETTLE_SECS: i64 = 75;
/// Probe traces a workload needs before it is called `Connected`.
pub const MIN_PROBE_TRACES: u32 = 3;
/// Clock skew reported beyond this, in milliseconds.
pub const SKEW_BOUND_MS: u64 = 500;

pub use crate::api::{BreakReason, EdgeKind};

/// A workload, as the agents name theirs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, ... (`Pod` for a pod no workload owns).
    pub kind: String,
    pub name: String,
}

impl WorkloadKey {
    pub fn new(namespace: &str, kind: &str, name: &str) -> WorkloadKey {
        WorkloadKey { namespace: namespace.into(), kind: kind.into(), name: name.into() }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests;
