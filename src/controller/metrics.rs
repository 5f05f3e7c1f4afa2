//! The policy controller's metrics, registered in the process-wide registry.

use crate::telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`super::Error::kind`] of the failure.
    pub kind: &'static str,
}

/// Counters and histograms of the reconcile loop.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Workload restarts requested by the rollout.
    pub restarts: Counter,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`. Call once per process.
    pub fn register(registry: &Metrics) -> Self {
        let m = ControllerMetrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            // 1ms .. ~16s
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            leader: Gauge::default(),
            restarts: Counter::default(),
        };
        registry.register("tracelight_controller_reconciles", "TracingPolicy reconciles started", m.reconciles.clone());
        registry.register(
            "tracelight_controller_reconcile_errors",
            "TracingPolicy reconciles that failed, by error kind",
            m.failures.clone(),
        );
        registry.register(
            "tracelight_controller_reconcile_duration_seconds",
            "Duration of TracingPolicy reconciles",
            m.duration.clone(),
        );
        registry.register(
            "tracelight_controller_leader",
            "1 while this replica runs the controllers (holds the leader lease)",
            m.leader.clone(),
        );
        registry.register(
            "tracelight_controller_workload_restarts",
            "Workload restarts requested by the rollout",
            m.restarts.clone(),
        );
        m
    }

    /// Counts a reconcile and returns a guard that observes its duration when dropped.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { histogram: &self.duration, start: Instant::now() }
    }

    pub fn count_failure(&self, kind: &'static str) {
        self.failures.get_or_create(&ErrorLabels { kind }).inc();
    }
}

/// Observes the elapsed time into the duration histogram on drop.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_failures_and_durations_are_exported() {
        let registry = Metrics::new();
        let m = ControllerMetrics::register(&registry);
        drop(m.start_reconcile());
        m.count_failure("kube");
        m.restarts.inc();
        let text = registry.encode().unwrap();
        assert!(text.contains("tracelight_controller_reconciles_total 1"), "{text}");
        assert!(text.contains("tracelight_controller_reconcile_errors_total{kind=\"kube\"} 1"), "{text}");
        assert!(text.contains("tracelight_controller_reconcile_duration_seconds_count 1"), "{text}");
        assert!(text.contains("tracelight_controller_workload_restarts_total 1"), "{text}");
    }
}
