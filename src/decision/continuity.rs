//! Trace continuity in the status, as pure functions: the join's inventory, each workload's
//! verdict, the service graph and the `TracesConnected` condition (`crate::continuity` joins;
//! the graph comes cached from the controller's `continuity` state).

use crate::api::{ContinuityState, NamespaceStatus, ServiceGraph, TracingPolicy};
use crate::continuity::{self, Graph, Inventory, WorkloadKey};
use crate::rollout::workload::Workload;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Reconcile at least this often while probe traces arrive (broken links surface one settle
/// delay after their call).
pub const REQUEUE: Duration = Duration::from_secs(30);

/// The join's inventory: every cached workload, and each policy's propagators.
pub fn inventory<'a>(workloads: impl Iterator<Item = &'a Workload>, policies: &[Arc<TracingPolicy>]) -> Inventory {
    Inventory {
        workloads: workloads
            .map(|w| {
                WorkloadKey::new(
                    w.metadata.namespace.as_deref().unwrap_or_default(),
                    w.kind.as_str(),
                    w.metadata.name.as_deref().unwrap_or_default(),
                )
            })
            .collect(),
        propagators: policies
            .iter()
            .map(|p| (p.name_any(), p.spec.propagators.iter().map(|p| p.as_str().to_string()).collect()))
            .collect(),
    }
}

/// Each listed workload's continuity, and the graph of the namespaces' edges.
pub fn annotate(namespaces: &mut [NamespaceStatus], graph: &Graph) -> Option<ServiceGraph> {
    for ns in namespaces.iter_mut() {
        for w in &mut ns.workloads {
            w.traces = continuity::workload_continuity(graph, &WorkloadKey::new(&ns.name, &w.kind, &w.name));
        }
    }
    let names: BTreeSet<String> = namespaces.iter().map(|n| n.name.clone()).collect();
    continuity::service_graph(graph, &names)
}

/// The `TracesConnected` condition's reason when a link is broken (the alert
/// `TracelightTraceLinksBroken` matches it).
pub const BROKEN_LINKS: &str = "BrokenLinks";

/// The `TracesConnected` condition: `(status, reason, message)`.
pub fn condition(namespaces: &[NamespaceStatus]) -> (&'static str, &'static str, String) {
    let workloads = || namespaces.iter().flat_map(|ns| ns.workloads.iter().map(move |w| (ns, w)));
    let mut broken: Vec<String> = workloads()
        .filter_map(|(_, w)| w.traces.as_ref()?.broken.as_ref())
        .map(|b| format!("{} ({}: {})", b.edge, b.reason.as_str(), b.message))
        .collect();
    broken.sort();
    broken.dedup();
    let state =
        |s: ContinuityState| workloads().filter(|(_, w)| w.traces.as_ref().is_some_and(|t| t.state == s)).count();
    if !broken.is_empty() {
        let n = broken.len();
        return ("False", BROKEN_LINKS, format!("{n} broken edge(s): {}", broken.join("; ")));
    }
    match state(ContinuityState::Connected) {
        0 => ("Unknown", "NotEnoughProbes", "not enough probe traces yet to tell whether traces are whole".into()),
        n => (
            "True",
            "Connected",
            format!("{n} workload(s) connected, {} without enough probe traces yet", state(ContinuityState::Unknown)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BreakReason, BrokenLink, TraceContinuity, WorkloadCoverage};

    fn ns(workloads: Vec<(&str, Option<ContinuityState>)>) -> NamespaceStatus {
        NamespaceStatus {
            name: "shop".into(),
            workloads: workloads
                .into_iter()
                .map(|(name, state)| WorkloadCoverage {
                    kind: "Deployment".into(),
                    name: name.into(),
                    traces: state.map(|state| TraceContinuity {
                        state,
                        broken: (state == ContinuityState::Broken).then(|| BrokenLink {
                            edge: "shop/pricing -> shop/tax".into(),
                            reason: BreakReason::PropagatorOverride,
                            message: "no context format in common".into(),
                            example_trace_id: "ab".repeat(16),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_condition_names_each_broken_edge_once_and_is_unknown_without_probes() {
        let broken = ns(vec![
            ("pricing", Some(ContinuityState::Broken)),
            ("tax", Some(ContinuityState::Broken)),
            ("frontend", Some(ContinuityState::Connected)),
        ]);
        let (status, reason, message) = condition(&[broken]);
        assert_eq!((status, reason), ("False", "BrokenLinks"));
        assert_eq!(
            message,
            "1 broken edge(s): shop/pricing -> shop/tax (PropagatorOverride: no context format in common)"
        );
        let fine = ns(vec![("frontend", Some(ContinuityState::Connected)), ("tax", Some(ContinuityState::Unknown))]);
        assert_eq!(condition(&[fine]).0, "True");
        assert_eq!(condition(&[ns(vec![("frontend", None)])]).1, "NotEnoughProbes");
    }
}
