//! The policy controller's metrics, registered in the process-wide registry.

use crate::telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::Instant;

/// A request to the API server, by what it does: `verb` as in RBAC (`list`, `watch`, `patch`, ...)
/// and `resource` with its subresource (`pods`, `tracingpolicies/status`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: String,
}

/// What a request to the API server does, from its method and URL (a watch is a GET with
/// `watch=true`; paths outside `/api` and `/apis` count as resource `other`).
pub fn request_labels(method: &http::Method, uri: &http::Uri) -> RequestLabels {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    // namespaces/<ns>/<resource>...; a bare namespaces[/<name>] is the Namespace resource itself.
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 { &rest[2..] } else { rest };
    let resource = match rest {
        [] => "other".to_string(),
        [resource] | [resource, _] => resource.to_string(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
    };
    let named = rest.len() >= 2;
    let watch = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    };
    RequestLabels { verb, resource }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`Error::kind`](super::reconcile::Error::kind) of the failure.
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
    /// Gauges of every policy's status (coverage, conditions, phase), while the controllers run.
    pub policies: super::policy_metrics::PolicyMetrics,
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
            policies: Default::default(),
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
        registry.with_registry(|r| r.register_collector(Box::new(m.policies.clone())));
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

    #[test]
    fn requests_are_labelled_by_verb_and_resource() {
        let labels = |method: &str, uri: &str| {
            let l = request_labels(&method.parse().unwrap(), &uri.parse().unwrap());
            (l.verb, l.resource)
        };
        let own = |verb: &'static str, resource: &str| (verb, resource.to_string());
        assert_eq!(labels("GET", "/api/v1/pods?&watch=true&resourceVersion=1"), own("watch", "pods"));
        assert_eq!(labels("GET", "/api/v1/pods?limit=500"), own("list", "pods"));
        assert_eq!(labels("GET", "/api/v1/namespaces"), own("list", "namespaces"));
        assert_eq!(labels("GET", "/api/v1/namespaces/shop"), own("get", "namespaces"));
        assert_eq!(labels("GET", "/api/v1/namespaces/shop/pods"), own("list", "pods"));
        assert_eq!(labels("GET", "/api/v1/namespaces/ops/secrets/key"), own("get", "secrets"));
        assert_eq!(labels("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web"), own("patch", "deployments"));
        assert_eq!(
            labels("PATCH", "/apis/tracelight.io/v1alpha1/tracingpolicies/p/status?fieldManager=x&force=true"),
            own("patch", "tracingpolicies/status")
        );
        assert_eq!(labels("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"), own("create", "events"));
        assert_eq!(labels("PUT", "/apis/coordination.k8s.io/v1/namespaces/ops/leases/l"), own("update", "leases"));
        assert_eq!(labels("DELETE", "/api/v1/namespaces/shop/configmaps/c"), own("delete", "configmaps"));
        assert_eq!(labels("DELETE", "/api/v1/namespaces/shop/configmaps"), own("deletecollection", "configmaps"));
        assert_eq!(labels("GET", "/version"), own("list", "other"));
    }
}
