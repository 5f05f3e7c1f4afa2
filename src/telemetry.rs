//! The operator's own logs and metrics.

use prometheus_client::encoding::text;
use prometheus_client::registry::{Metric, Registry};
use std::sync::{Arc, Mutex, PoisonError};
use tracing_subscriber::{fmt, EnvFilter};

/// Log format chosen with `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn,rustls=warn"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus registry, shared by every component (webhook, controllers, agent).
///
/// Cheap to clone: all clones share one registry. Components register their metrics once at
/// start-up with [`Metrics::register`]; the admin server renders them with [`Metrics::encode`].
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
