//! Logs: text or JSON on stderr, filtered by `RUST_LOG`.

use tracing_subscriber::{fmt, EnvFilter};

/// Log format chosen with `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `RUST_LOG`, or the default `info` level with the client libraries at `warn`.
pub fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn,rustls=warn"))
}

/// Installs the global subscriber for logs only (the agent; the operator adds its traces).
pub fn init_logging(format: LogFormat) {
    let builder = fmt().with_env_filter(log_filter()).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
