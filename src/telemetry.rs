//! The operator's own logs, metrics and traces ([`traces`]).

pub mod otlp_tls;
pub mod traces;

use prometheus_client::encoding::text;
use prometheus_client::registry::{Metric, Registry};
use std::sync::{Arc, Mutex, PoisonError};
pub use tracelight_process::logging::{log_filter, LogFormat};
use traces::{TracePipeline, TraceSettings};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// Installs the operator's subscriber: logs as `tracelight_process::logging::init_logging`, plus its own spans exported
/// over OTLP when the `OTEL_*` environment names an endpoint (see [`traces`]). Must be called
/// inside the tokio runtime, which must outlive the returned pipeline; shut that down last.
///
/// A bad tracing setting is logged and leaves tracing off: the webhook and the controllers
/// must run whatever happens to their own telemetry.
pub fn init_operator(format: LogFormat) -> Option<TracePipeline> {
    let settings = TraceSettings::from_env(|name| std::env::var(name).ok());
    let pipeline = match &settings {
        Ok(Some(settings)) => Some(TracePipeline::start(settings)),
        _ => None,
    };
    let tracer = pipeline.as_ref().and_then(|p| p.as_ref().ok()).map(TracePipeline::tracer);
    let logs = tracelight_process::logging::log_layer(format);
    // Only the operator's own spans: the HTTP and gRPC clients' spans (the exporter's included)
    // would be noise, or a loop.
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("tracelight", LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry().with(logs.with_filter(log_filter())).with(traces).try_init();
    match (settings, pipeline) {
        (Ok(Some(s)), Some(Ok(pipeline))) => {
            tracing::info!(endpoint = %s.endpoint, protocol = s.protocol.as_str(), sampler = ?s.sampler, resource = ?s.resource, "exporting the operator's traces");
            Some(pipeline)
        }
        (Ok(Some(_)), Some(Err(error))) => {
            tracing::error!(%error, "the operator's traces are off");
            None
        }
        (Err(error), _) => {
            tracing::error!(%error, "the operator's traces are off: invalid OTEL_* setting");
            None
        }
        _ => {
            tracing::debug!("the operator's traces are off (no OTEL_EXPORTER_OTLP_ENDPOINT)");
            None
        }
    }
}

/// The process-wide Prometheus registry, shared by every component (webhook, controllers, agent).
///
/// Cheap to clone: all clones share one registry. Components register their metrics once at
/// start-up with [`Metrics::register`]; the admin server answers scrapes with
/// [`tracelight_process::metrics::response`], as the agent does, and [`Metrics::encode`] gives the text.
/// Names are registered as given (no prefix is added): use the `tracelight_` prefix yourself, and
/// leave the `_total` suffix of counters to the encoder.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` under `name`. Registering the same name twice is a programming error
    /// that shows up as a duplicate family in the output, so call this once per metric.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        // A panic while holding the lock cannot leave a registry half-written, so poison is harmless.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner).register(name, help, metric);
    }

    /// Gives direct access to the registry, e.g. to register a collector or a sub-registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Renders every registered metric in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry.lock().unwrap_or_else(PoisonError::into_inner))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn registered_counter_is_rendered_with_total_suffix() {
        let metrics = Metrics::new();
        let counter: Counter = Counter::default();
        metrics.register("tracelight_test_things", "Things counted by the test", counter.clone());
        counter.inc();
        let text = metrics.encode().unwrap();
        assert!(text.contains("tracelight_test_things_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
