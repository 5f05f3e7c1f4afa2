//! Trace continuity in the reconcile (state): the probe settings the agent config carries, and
//! the service graph joined from the report store's probe window, cached. `crate::continuity`
//! joins; [`crate::decision::continuity`] puts the verdicts into the status.
//!
//! The join reads every probe span of the window, so it runs at most every [`JOIN_EVERY`] and
//! every reconcile in between (of any policy) reads the cached graph: its verdicts change at the
//! pace of the agents' reports, not of the reconciles.

use crate::continuity::{self, Graph, Inventory};
use crate::webhook::reports::ReportStore;
use k8s_openapi::jiff::Timestamp;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracelight_contract::probe::ProbeSettings;

/// Longest a joined graph is reused.
pub const JOIN_EVERY: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuity::Inventory;

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
