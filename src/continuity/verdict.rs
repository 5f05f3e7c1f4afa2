//! The graph as the status shows it: a verdict per workload and the edges of a policy's
//! namespaces.

use super::join::{Graph, Node};
use super::{WorkloadKey, MIN_PROBE_TRACES, SKEW_BOUND_MS};
use crate::api::{BrokenLink, ContinuityState, GraphEdge, ServiceGraph, TraceContinuity};
use std::collections::BTreeSet;

/// Most edges in a policy's status (broken ones first).
pub const MAX_EDGES: usize = 200;
/// Most findings per workload.
const MAX_FINDINGS: usize = 4;

fn trace_id(trace: u128) -> String {
    format!("{trace:032x}")
}

/// The continuity of `workload`; `None` when no probe trace involves it.
pub fn workload_continuity(graph: &Graph, workload: &WorkloadKey) -> Option<TraceContinuity> {
    let facts = graph.workloads.get(workload)?;
    let node = Node::Workload(std::sync::Arc::new(workload.clone()));
    let touches = |(from, to, _): &(Node, Node, _)| *from == node || *to == node;
    let broken =
        graph.edges.iter().find(|(key, e)| touches(key) && e.broken > 0).map(|((from, to, _), e)| BrokenLink {
            edge: format!("{from} -> {to}"),
            reason: e.reason.unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            example_trace_id: e.example.map(trace_id).unwrap_or_default(),
        });
    let mut findings = Vec::new();
    if let Some(trace) = facts.double_instrumented {
        findings.push(format!(
            "double instrumentation: one request made two server spans in one pod (trace {})",
            trace_id(trace)
        ));
    }
    for ((from, to, _), e) in graph.edges.iter().filter(|(key, e)| touches(key) && e.max_skew_ms > SKEW_BOUND_MS) {
        findings.push(format!("clock skew of at least {} ms between {from} and {to}", e.max_skew_ms));
    }
    findings.truncate(MAX_FINDINGS);
    let state = match (&broken, facts.probe_traces >= MIN_PROBE_TRACES) {
        (Some(_), _) => ContinuityState::Broken,
        (None, true) => ContinuityState::Connected,
        (None, false) => ContinuityState::Unknown,
    };
    Some(TraceContinuity { state, probe_traces: facts.probe_traces, broken, findings })
}

/// The edges with an end in `namespaces`, broken ones first, at most [`MAX_EDGES`]; `None` when
/// no probe trace went through them.
pub fn service_graph(graph: &Graph, namespaces: &BTreeSet<String>) -> Option<ServiceGraph> {
    let probe_traces: u32 = namespaces.iter().filter_map(|ns| graph.namespace_traces.get(ns)).sum();
    let inside = |n: &Node| n.workload().is_some_and(|w| namespaces.contains(&w.namespace));
    let mut edges: Vec<GraphEdge> = graph
        .edges
        .iter()
        .filter(|((from, to, _), _)| inside(from) || inside(to))
        .map(|((from, to, kind), e)| GraphEdge {
            from: from.to_string(),
            to: to.to_string(),
            kind: *kind,
            calls: e.calls,
            broken: e.broken,
            reason: e.reason,
            example_trace_id: e.example.map(trace_id),
        })
        .collect();
    if probe_traces == 0 && edges.is_empty() {
        return None;
    }
    edges.sort_by(|a, b| (b.broken > 0).cmp(&(a.broken > 0)).then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to))));
    edges.truncate(MAX_EDGES);
    Some(ServiceGraph { probe_traces, edges })
}
