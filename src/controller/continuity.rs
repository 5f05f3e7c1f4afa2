//! Trace continuity in the reconcile: the probe settings the agent config carries, and the
//! service graph joined from the report store's probe window (`crate::continuity` decides; this
//! only gathers its inputs, caches the join, and puts the verdicts into the status).
//!
//! The join reads every probe span of the window, so it runs at most every [`JOIN_EVERY`] and
//! every reconcile in between (of any policy) reads the cached graph: its verdicts change at the
//! pace of the agents' reports, not of the reconciles.

use crate::api::{ContinuityState, NamespaceStatus, ServiceGraph, TracingPolicy};
use crate::continuity::{self, Graph, Inventory, WorkloadKey};
use crate::rollout::workload::Workload;
use crate::webhook::reports::ReportStore;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracelight_contract::probe::ProbeSettings;

/// Longest a joined graph is reused.
pub const JOIN_EVERY: Duration = Duration::from_secs(10);
/// Reconcile at least this often while probe traces arrive (broken links surface one settle
/// delay after their call).
pub const REQUEUE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Continuity {
    /// Written into every agent config.
    pub probes: ProbeSettings,
    cache: Mutex<Option<(Instant, Arc<Graph>)>>,
}

impl Continuity {
    pub fn new(probes: ProbeSettings) -> Continuity {
        Continuity { probes, cache: Mutex::default() }
    }

    /// Whether the agents are asked for probes at all.
    pub fn enabled(&self) -> bool {
        self.probes.ratio.get() > 0.0
    }

    /// The service graph at `now`, joined again when the cached one is older than [`JOIN_EVERY`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn graph(&self, reports: &ReportStore, inventory: impl FnOnce() -> Inventory, now: Timestamp) -> Arc<Graph> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, graph)) = cache.as_ref().filter(|(at, _)| at.elapsed() < JOIN_EVERY) {
            tracing::trace!(age = ?at.elapsed(), "service graph from cache");
            return graph.clone();
        }
        let inventory = inventory();
        let graph = Arc::new(reports.with_probes(|window| continuity::join(window, &inventory, now.as_second())));
        tracing::debug!(edges = graph.edges.len(), unsettled = graph.unsettled, "service graph joined");
        *cache = Some((Instant::now(), graph.clone()));
        graph
    }
}

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

    #[test]
    fn the_join_is_cached_between_reconciles() {
        let c = Continuity::new(ProbeSettings::default());
        let reports = ReportStore::default();
        let mut joins = 0;
        for _ in 0..3 {
            c.graph(
                &reports,
                || {
                    joins += 1;
                    Inventory::default()
                },
                Timestamp::now(),
            );
        }
        assert_eq!(joins, 1);
        assert!(c.enabled());
        assert!(!Continuity::new(ProbeSettings { ratio: crate::api::Ratio::NEVER }).enabled());
    }
}
