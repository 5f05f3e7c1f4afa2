//! Logs: text or JSON on stderr, filtered by `RUST_LOG`.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, Registry};

/// Log format chosen with `--log-format`.
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The default: `info`, with the client libraries at `warn`.
const DEFAULT_FILTER: &str = "info,kube=warn,hyper=warn,rustls=warn";

/// `RUST_LOG` (`level` or `target=level`, comma-separated: `info,tracelight=debug`), or the
/// default. A plain target filter, not `EnvFilter`: its span and field directives need a regex
/// engine, about a tenth of the agent's code, that no one here uses.
pub fn log_filter() -> Targets {
    let from_env = std::env::var("RUST_LOG").ok().and_then(|v| match v.parse::<Targets>() {
        Ok(targets) => Some(targets),
        Err(error) => {
            eprintln!("RUST_LOG={v:?} is not `level` or `target=level,...` ({error}); using {DEFAULT_FILTER:?}");
            None
        }
    });
    from_env.unwrap_or_else(|| DEFAULT_FILTER.parse().expect("the default filter parses"))
}

/// The log lines in `format`, for a subscriber built on the registry.
pub fn log_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    match format {
        LogFormat::Text => fmt::layer().with_target(true).boxed(),
        LogFormat::Json => fmt::layer().with_target(true).json().flatten_event(true).boxed(),
    }
}

/// Installs the global subscriber for logs only (the agent; the operator adds its traces).
pub fn init_logging(format: LogFormat) {
    let _ = tracing_subscriber::registry().with(log_layer(format).with_filter(log_filter())).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_default_filter_quiets_the_client_libraries() {
        let f: Targets = DEFAULT_FILTER.parse().unwrap();
        assert!(f.would_enable("tracelight_agent::exporter", &Level::INFO));
        assert!(!f.would_enable("hyper::proto", &Level::INFO));
        assert!(f.would_enable("hyper::proto", &Level::WARN));
    }
}
