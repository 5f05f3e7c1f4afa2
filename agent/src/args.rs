//! The command line of `tracelight-agent`.
//!
//! Parsed by hand, not with clap: the agent runs beside every application container, and the
//! code a process touches at start stays resident (see "Where the memory goes" in the crate
//! docs). clap's parser was the largest piece of start-up-only code in the binary.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use tracelight_process::logging::LogFormat;

/// Declares the flags once: the struct's fields, their parsing, and the help text.
macro_rules! flags {
    ($($field:ident: $ty:ty = $default:expr, $help:literal;)*) => {
        /// Flags of `tracelight-agent` (`--name=value` or `--name value`).
        #[derive(Debug, Clone)]
        pub struct AgentArgs {
            $(#[doc = $help] pub $field: $ty,)*
        }

        impl Default for AgentArgs {
            /// The flag defaults (what `tracelight-agent` with no flags runs with).
            fn default() -> Self {
                AgentArgs { $($field: $default,)* }
            }
        }

        impl AgentArgs {
            /// Every flag, as typed on the command line.
            pub fn flags() -> Vec<String> {
                vec![$(flag_of(stringify!($field)),)*]
            }

            fn set(&mut self, flag: &str, value: &str) -> Result<(), ArgsError> {
                $(if flag == flag_of(stringify!($field)) {
                    self.$field = parse_value(flag, value)?;
                    return Ok(());
                })*
                Err(ArgsError::Unknown(flag.to_string()))
            }

            /// The `--help` text, with each flag's default.
            pub fn help() -> String {
                let defaults = AgentArgs::default();
                let mut text = String::from(
                    "tracelight-agent: the Tracelight tracing agent sidecar (OTLP in on loopback, consistent sampling, export)\n\nFlags:\n",
                );
                $(text.push_str(&format!("  {:<26} {}{}\n", flag_of(stringify!($field)), $help.trim(), show_default(&defaults.$field)));)*
                text.push_str("  --help                     print this help\n  --version                  print the version\n");
                text
            }
        }
    };
}

flags! {
    config: PathBuf = tracelight_contract::ConfigFile::CURRENT.path().into(),
        " The agent config file (mounted from the namespace's ConfigMap; reloaded live).";
    listen_host: IpAddr = IpAddr::from([127, 0, 0, 1]),
        " Address the OTLP receivers bind (the pod's loopback: apps share it).";
    otlp_grpc_port: u16 = 4317, " OTLP/gRPC receiver port.";
    otlp_http_port: u16 = 4318, " OTLP/HTTP receiver port.";
    admin_host: IpAddr = IpAddr::from([127, 0, 0, 1]),
        " Address of the admin server (/healthz, /metrics, /report): the pod's loopback; 0.0.0.0 exposes it to the network.";
    admin_port: u16 = 13133, " Admin server port.";
    health_host: Option<IpAddr> = None,
        " Also answer /healthz (only) on this address, on the admin port: the pod IP, where the kubelet probes.";
    health_metrics: bool = false, " Serve /metrics on --health-host too (for Prometheus; /report stays on loopback).";
    queue_bytes: usize = 16 << 20, " Bound of the export queue, in bytes; the oldest spans are dropped beyond it.";
    pace_above_bytes: usize = 512 << 10,
        " While exports succeed, a request arriving with more than this queued waits (up to 1 s) for the exporter to catch up, so senders slow down instead of the queue growing; 0: never wait.";
    batch_bytes: usize = 256 << 10, " Target size of one export request, in bytes.";
    max_message_bytes: usize = 3584 << 10,
        " Largest export request, in bytes; larger incoming requests are split (gRPC receivers refuse over 4 MiB by default).";
    batch_linger_ms: u64 = 500, " Longest wait for a batch to fill, in milliseconds.";
    max_request_bytes: usize = 8 << 20, " Largest accepted OTLP request (after decompression), in bytes.";
    max_inflight_bytes: usize = 32 << 20,
        " Bytes of requests being received or decoded at once before senders are asked to retry later (at least twice --max-request-bytes).";
    max_connections: usize = 128,
        " Open connections per listener; at the cap a new one replaces the oldest idle one (none idle: it is closed).";
    header_timeout_secs: u64 = 10,
        " Time allowed for a request's headers (and an HTTP/1 keep-alive wait), in seconds.";
    body_timeout_secs: u64 = 30, " Time allowed for a request's body after its headers, in seconds.";
    idle_timeout_secs: u64 = 60, " A connection with no request in progress for this long is closed, in seconds.";
    max_streams_per_connection: u32 = 32, " Concurrent HTTP/2 streams (gRPC calls) per connection.";
    shutdown_timeout_secs: u64 = 10,
        " Upper bound of the whole shutdown on SIGTERM (drain, then flush queued spans), in seconds.";
    drain_timeout_secs: u64 = 3,
        " Part of the shutdown given to requests in progress before their connections are closed, in seconds.";
    config_poll_ms: u64 = 1000, " How often the config file is checked, in milliseconds.";
    export_concurrency: usize = 4, " Export requests in flight at once.";
    export_timeout_secs: u64 = 10, " Timeout of one export request, in seconds.";
    report_url: Option<http::Uri> = None,
        " Operator URL the report is pushed to (authenticated with --report-token-file).";
    report_token_file: Option<PathBuf> = None,
        " Projected ServiceAccount token (dedicated audience) sent as the bearer token of reports.";
    report_ca_file: Option<PathBuf> = None,
        " PEM CA bundle to verify the operator's report endpoint with. Default: system roots.";
    report_interval_secs: u64 = 30, " Seconds between report pushes (a new config generation is reported at once).";
    log_format: LogFormat = LogFormat::Json, " Log format: text or json.";
    worker_threads: usize = 1,
        " Threads running receivers and export; 1 runs everything on one thread, the smallest footprint.";
    red_metrics: bool = true,
        " Count rate, errors and duration of server and consumer spans before sampling (/metrics, report): true or false.";
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<AgentArgs>),
    Help,
    Version,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("unknown argument {0:?} (see --help)")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("invalid value {value:?} for {flag}: {reason}")]
    Invalid { flag: String, value: String, reason: String },
    #[error("--report-url needs --report-token-file")]
    ReportWithoutToken,
}

impl AgentArgs {
    /// Parses the arguments after the program name.
    pub fn parse_from<I, S>(args: I) -> Result<Command, ArgsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut parsed = AgentArgs::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Ok(Command::Help),
                "--version" | "-V" => return Ok(Command::Version),
                _ => {}
            }
            if !arg.starts_with("--") {
                return Err(ArgsError::Unknown(arg));
            }
            let (flag, value) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_string(), value.to_string()),
                None => {
                    let value = args.next().ok_or_else(|| ArgsError::MissingValue(arg.clone()))?;
                    (arg, value)
                }
            };
            parsed.set(&flag, &value)?;
        }
        if parsed.report_url.is_some() && parsed.report_token_file.is_none() {
            return Err(ArgsError::ReportWithoutToken);
        }
        Ok(Command::Run(Box::new(parsed)))
    }
}

fn parse_value<T: ParseFlag>(flag: &str, value: &str) -> Result<T, ArgsError> {
    T::parse_flag(value).map_err(|reason| ArgsError::Invalid {
        flag: flag.to_string(),
        value: value.to_string(),
        reason,
    })
}

/// A flag's value type.
trait ParseFlag: Sized {
    fn parse_flag(value: &str) -> Result<Self, String>;
}

macro_rules! parse_with_from_str {
    ($($ty:ty),*) => {$(
        impl ParseFlag for $ty {
            fn parse_flag(value: &str) -> Result<Self, String> {
                <$ty>::from_str(value).map_err(|e| e.to_string())
            }
        }
    )*};
}
parse_with_from_str!(u16, u32, u64, usize, bool, IpAddr, PathBuf, http::Uri);

impl ParseFlag for LogFormat {
    fn parse_flag(value: &str) -> Result<Self, String> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

impl<T: ParseFlag> ParseFlag for Option<T> {
    fn parse_flag(value: &str) -> Result<Self, String> {
        T::parse_flag(value).map(Some)
    }
}

/// The `(default: ...)` suffix of a help line.
trait ShowDefault {
    fn show(&self) -> Option<String>;
}

fn show_default<T: ShowDefault>(value: &T) -> String {
    value.show().map(|v| format!(" (default: {v})")).unwrap_or_default()
}

macro_rules! show_with_display {
    ($($ty:ty),*) => {$(
        impl ShowDefault for $ty {
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
show_with_display!(u16, u32, u64, usize, bool, IpAddr, http::Uri);

impl ShowDefault for PathBuf {
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl ShowDefault for LogFormat {
    fn show(&self) -> Option<String> {
        Some(match self {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        })
    }
}

impl<T: ShowDefault> ShowDefault for Option<T> {
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(ShowDefault::show)
    }
}

/// `field_name` -> `--field-name`.
fn flag_of(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<AgentArgs, ArgsError> {
        match AgentArgs::parse_from(args.iter().copied())? {
            Command::Run(args) => Ok(*args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_flags_run_with_the_documented_defaults() {
        let a = run(&[]).unwrap();
        assert_eq!(a.config, PathBuf::from("/etc/tracelight/agent/config.v2.yaml"));
        assert_eq!((a.otlp_grpc_port, a.otlp_http_port, a.admin_port), (4317, 4318, 13133));
        assert_eq!(a.listen_host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(a.admin_host, IpAddr::from([127, 0, 0, 1]), "admin on loopback unless asked otherwise");
        assert_eq!((a.health_host, a.health_metrics), (None, false));
        assert!(matches!(a.log_format, LogFormat::Json));
        assert!(a.report_url.is_none());
    }

    #[test]
    fn both_value_spellings_are_read() {
        let a = run(&["--otlp-grpc-port=14317", "--admin-host", "0.0.0.0", "--log-format=text"]).unwrap();
        assert_eq!(a.otlp_grpc_port, 14317);
        assert_eq!(a.admin_host, IpAddr::from([0, 0, 0, 0]));
        assert!(matches!(a.log_format, LogFormat::Text));
        let a = run(&["--health-host=fd00::7", "--health-metrics", "true"]).unwrap();
        assert_eq!((a.health_host, a.health_metrics), (Some("fd00::7".parse().unwrap()), true));
    }

    #[test]
    fn bad_input_is_an_error_naming_the_flag() {
        assert_eq!(run(&["--nope=1"]).unwrap_err(), ArgsError::Unknown("--nope".into()));
        assert_eq!(run(&["agent"]).unwrap_err(), ArgsError::Unknown("agent".into()));
        assert_eq!(run(&["--admin-port"]).unwrap_err(), ArgsError::MissingValue("--admin-port".into()));
        let err = run(&["--admin-port=70000"]).unwrap_err();
        assert!(matches!(&err, ArgsError::Invalid { flag, .. } if flag == "--admin-port"), "{err:?}");
        assert!(run(&["--log-format=xml"]).is_err());
        // An unexpanded `$(POD_IP)` (the variable missing from the container) is refused, not ignored.
        let err = run(&["--health-host=$(POD_IP)"]).unwrap_err();
        assert!(matches!(&err, ArgsError::Invalid { flag, .. } if flag == "--health-host"), "{err:?}");
        assert_eq!(run(&["--report-url=https://op:443/r"]).unwrap_err(), ArgsError::ReportWithoutToken);
    }

    #[test]
    fn help_names_every_flag_with_its_default() {
        let help = AgentArgs::help();
        for flag in AgentArgs::flags() {
            assert!(help.contains(&flag), "{flag} missing from --help");
        }
        assert!(help.contains("--otlp-grpc-port") && help.contains("(default: 4317)"));
        assert!(matches!(AgentArgs::parse_from(["--help"]), Ok(Command::Help)));
        assert!(matches!(AgentArgs::parse_from(["--version"]), Ok(Command::Version)));
    }
}
