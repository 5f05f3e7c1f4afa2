//! Admin server: `/healthz` (kubelet probes), `/metrics` (Prometheus text), `/report` (JSON).
//!
//! Two listeners on the same port, so the probes keep the port the pod spec names:
//!
//! - the **admin** listener, on the pod's loopback by default (`--admin-host`): everything. Only
//!   the pod's own containers (and `kubectl port-forward`, which connects through the pod's
//!   loopback) reach it; `--admin-host=0.0.0.0` exposes it to the network on purpose;
//! - the **health** listener, on the pod IP (`--health-host`): `/healthz` only (plus `/metrics`
//!   with `--health-metrics`, for a PodMonitor). The kubelet probes the pod IP, not the
//!   pod's loopback, so probes need it; an `exec` probe would start a process every period.
//!
//! Binding one address each (not `0.0.0.0` for health) is what lets both share the port.

use super::report::{self, Report};
use super::server::{Guard, ServerLimits};
use super::Shared;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct AdminState {
    shared: Arc<Shared>,
    registry: Registry,
}

pub fn router(shared: Arc<Shared>) -> Router {
    let mut registry = shared.metrics.registry();
    registry.register_collector(Box::new(super::red::RedCollector(shared.pipeline.red.clone())));
    registry.register_collector(Box::new(super::usage::UsageCollector));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/report", get(report))
        .with_state(Arc::new(AdminState { shared, registry }))
}

/// The routes of the health listener: `/healthz`, and `/metrics` when `with_metrics`. Nothing
/// else of the agent (its report, its config) is reachable from the network through it.
pub fn health_router(shared: Arc<Shared>, with_metrics: bool) -> Router {
    if !with_metrics {
        return Router::new().route("/healthz", get(healthz));
    }
    let registry = shared.metrics.registry();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(AdminState { shared, registry }))
}

/// Serve `router` (the admin or the health routes) under `limits` (see `crate::server`); bodies
/// are not charged. Each listener has its own connection cap, so a flood on the network side
/// never locks the pod's own containers out of the loopback admin.
pub async fn serve(listener: TcpListener, router: Router, limits: ServerLimits, stop: CancellationToken) {
    super::server::serve(listener, router, Guard::new(limits, None), stop).await
}

/// Liveness only: the agent serves even before a valid config arrives (it then queues).
async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    tracelight_process::metrics::response(&s.registry)
}

async fn report(State(s): State<Arc<AdminState>>) -> Response {
    let body = report::bounded_json(build_report(&s.shared));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub fn build_report(shared: &Shared) -> Report {
    // Read first: the counters below are at least as recent as this clock reading.
    let uptime = shared.started.elapsed();
    let config = shared.config.read().unwrap_or_else(|p| p.into_inner()).clone();
    Report {
        contract_version: tracelight_contract::CONTRACT_VERSION,
        agent_version: Some(tracelight_contract::VERSION.to_string()),
        pod: (&shared.pipeline.identity).into(),
        policy: config.as_ref().map(|c| c.policy.clone()),
        config_generation: config.as_ref().map_or(0, |c| c.generation),
        sampling_ratio: config.as_ref().map(|c| c.sampling.ratio.get()),
        services: shared.pipeline.services.snapshot(),
        spans: report::span_counts(&shared.metrics),
        uptime_seconds: uptime.as_secs(),
        uptime_ms: Some(u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX)),
        last_span_age_seconds: shared.pipeline.services.last_span_age().map(|age| age.as_secs()),
        truncated: shared.pipeline.services.truncation(),
        sampling_rules: shared.metrics.rule_counts(),
        kept_bytes: shared.metrics.kept_bytes.get(),
        red: shared.pipeline.red.report(),
        usage: super::usage::current(),
        // Taken by the report pusher only (see `report_push`).
        probes: None,
    }
}
