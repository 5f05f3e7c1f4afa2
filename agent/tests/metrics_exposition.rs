//! The agent's /metrics text with every family populated (every transport, drop reason, export
//! outcome and reload result), rendered from the registry the admin server serves
//! (`Metrics::registry` with the RED and process collectors, encoded as `admin.rs` does). With `TRACELIGHT_METRICS_DUMP=<dir>` it is
//! written to `<dir>/agent.txt`: `make test-alerts` checks that every metric and label value the
//! alert rules and the Grafana dashboard use is one the agent exports.

use tracelight_agent::metrics::{
    DropReason, Metrics, Outcome, OutcomeLabel, ReloadLabel, ReloadResult, Transport, TransportLabel,
};
use tracelight_agent::red::{Batch, Observation, Red, RedCollector, RedKind};

#[test]
fn exposition_for_the_alert_checks() {
    let m = Metrics::default();
    for transport in [Transport::Grpc, Transport::Http] {
        m.received.get_or_create(&TransportLabel { transport }).inc_by(10);
    }
    m.sampled_out.inc_by(5);
    m.exported.inc_by(4);
    for reason in [DropReason::QueueFull, DropReason::ExportRejected, DropReason::Shutdown, DropReason::Invalid] {
        m.drop_spans(reason, 1);
    }
    m.refused_requests.inc();
    m.malformed_requests.inc();
    m.queue_bytes.set(1024);
    m.queue_spans.set(3);
    for outcome in [Outcome::Success, Outcome::Retryable, Outcome::Permanent] {
        m.export_duration.get_or_create(&OutcomeLabel { outcome }).observe(0.01);
    }
    m.config_generation.set(2);
    for result in [ReloadResult::Applied, ReloadResult::Rejected] {
        m.config_reloads.get_or_create(&ReloadLabel { result }).inc();
    }

    // The RED histograms (both kinds, failed and not) and the process metrics, as the admin
    // server registers them beside the agent's own.
    let red = std::sync::Arc::new(Red::new(true));
    let mut batch = Batch::default();
    for (kind, error) in [(RedKind::Server, false), (RedKind::Server, true), (RedKind::Consumer, false)] {
        batch.observe("frontend", Observation { kind, route: b"/items/{id}", error, nanos: 10_000_000 });
    }
    red.merge(&mut batch);
    let mut registry = m.registry();
    registry.register_collector(Box::new(RedCollector(red)));
    registry.register_collector(Box::new(tracelight_agent::usage::UsageCollector));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"tracelight_agent_spans_dropped_total{reason="QueueFull"} 1"#,
        r#"tracelight_agent_export_duration_seconds_count{outcome="Retryable"} 1"#,
        "tracelight_agent_spans_exported_total 4",
        "tracelight_agent_queue_bytes 1024",
        r#"http_server_request_duration_seconds_count{service_name="frontend",http_route="/items/{id}",error_type="_OTHER"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    if let Some(dir) = std::env::var_os("TRACELIGHT_METRICS_DUMP") {
        let path = std::path::Path::new(&dir).join("agent.txt");
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}
