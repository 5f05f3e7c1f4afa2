//! Admission webhook (I/O): the HTTPS server the API server calls for every new pod, the
//! certificates it serves, and the admin endpoints. Decisions come from [`crate::inject`].

pub mod certs;
pub mod handler;
pub mod metrics;
pub mod reports;
pub mod rotation;
pub mod server;

use crate::api::Duration;
use crate::cluster_view::Cluster;
use crate::inject::{DefaultImages, InjectOptions};
use crate::telemetry::Metrics;
use certs::{CertResolver, LeafSpec};
use handler::AdmissionState;
use metrics::AdmissionMetrics;
use rotation::{CertSource, SelfSigned};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the webhook gets its serving certificate.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertMode {
    /// The operator makes its own CA and certificate, shares them through a Secret, publishes
    /// the CA bundle into the MutatingWebhookConfiguration, and rotates them.
    SelfSigned,
    /// `tls.crt`/`tls.key` are read from `--cert-dir` (e.g. mounted by cert-manager) and
    /// reloaded when they change.
    Files,
}

/// `--agent-report-interval`: whole seconds from 5 s (reports closer together make no rate,
/// [`crate::sampling::rates::MIN_WINDOW_SECS`]) to 2 minutes (a pod silent for
/// [`crate::rollout::coverage::REPORT_STALE_AFTER`] stops counting).
fn parse_report_interval(text: &str) -> Result<Duration, String> {
    let d = Duration::parse(text).map_err(|e| e.to_string())?;
    let secs = d.get().as_secs_f64();
    if !(crate::sampling::rates::MIN_WINDOW_SECS..=120.0).contains(&secs) {
        return Err(format!("report interval {text} is outside 5s..2m"));
    }
    Ok(d)
}

/// Flags of the admission webhook (flattened into `tracelight controller`).
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Address of the HTTPS admission server.
    #[arg(long, env = "TRACELIGHT_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP admin server (/metrics, /readyz, /livez).
    #[arg(long, env = "TRACELIGHT_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Where the serving certificate comes from.
    #[arg(long, env = "TRACELIGHT_CERT_MODE", value_enum, default_value_t = CertMode::SelfSigned)]
    pub cert_mode: CertMode,
    /// Directory holding tls.crt and tls.key (files mode).
    #[arg(long, env = "TRACELIGHT_CERT_DIR", default_value = "/etc/tracelight/tls")]
    pub cert_dir: PathBuf,
    /// Secret, in the operator namespace, holding the CA and serving certificate (self-signed mode).
    #[arg(long, env = "TRACELIGHT_CERT_SECRET", default_value = "tracelight-webhook-tls")]
    pub cert_secret: String,
    /// MutatingWebhookConfiguration whose webhooks receive the CA bundle (self-signed mode).
    #[arg(long, env = "TRACELIGHT_WEBHOOK_CONFIG", default_value = "tracelight")]
    pub webhook_config: String,
    /// Service in front of the webhook; its DNS names go into the certificate.
    #[arg(long, env = "TRACELIGHT_SERVICE_NAME", default_value = "tracelight-webhook")]
    pub service_name: String,
    /// Extra subject alternative name (DNS name or IP address); repeatable or comma-separated.
    #[arg(long = "extra-san", env = "TRACELIGHT_EXTRA_SAN", value_delimiter = ',')]
    pub extra_sans: Vec<String>,
    /// Lifetime of the serving certificate (the CA lives 4 times longer), e.g. 2160h or 2m.
    #[arg(long, env = "TRACELIGHT_CERT_VALIDITY", default_value = "2160h", value_parser = Duration::parse)]
    pub cert_validity: Duration,
    /// How often certificates are checked for renewal and reloaded.
    #[arg(long, env = "TRACELIGHT_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = Duration::parse)]
    pub cert_check_interval: Duration,
    /// Inject the agent as a native sidecar (Kubernetes >= 1.29); `false` for a plain container.
    #[arg(long, env = "TRACELIGHT_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    /// Namespace the operator runs in (where the certificate Secret lives).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tracelight-system")]
    pub namespace: String,
    /// Let injected agents push their reports (coverage) to the operator.
    #[arg(long, env = "TRACELIGHT_AGENT_REPORTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub agent_reports: bool,
    /// URL agents push their reports to. Default: the webhook Service,
    /// `https://<service-name>.<namespace>.svc:443/v1/agent-reports`.
    #[arg(long, env = "TRACELIGHT_AGENT_REPORT_URL")]
    pub agent_report_url: Option<String>,
    /// How often injected agents push their reports (between 5s and 2m), and so how often
    /// sampling budgets are recomputed from the rates they report. Default: the agent's own,
    /// 30s. A change restarts injected workloads (it is an agent flag).
    #[arg(long, env = "TRACELIGHT_AGENT_REPORT_INTERVAL", value_parser = parse_report_interval)]
    pub agent_report_interval: Option<Duration>,
    /// The agent image injected when a policy names none (`spec.agent.image` empty). Default:
    /// the image of this operator's release, which holds both binaries.
    #[arg(
        long,
        env = "TRACELIGHT_AGENT_IMAGE",
        default_value_t = crate::inject::shipped_agent_image(),
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub agent_image: String,
    /// An auto-instrumentation image injected when a policy names none, as LANGUAGE=IMAGE
    /// (java, nodejs, python, dotnet); repeatable or comma-separated. Default: the upstream
    /// OpenTelemetry images.
    #[arg(
        long = "instrumentation-image",
        env = "TRACELIGHT_INSTRUMENTATION_IMAGES",
        value_delimiter = ',',
        value_parser = crate::inject::parse_instrumentation_image
    )]
    pub instrumentation_images: Vec<(crate::inject::Language, String)>,
    /// What of the injected agents' admin port is reachable from outside their pod: `health`
    /// (`/healthz` on the pod IP, for the kubelet), `metrics` (also `/metrics`, for a
    /// PodMonitor) or `all` (also `/report`). The rest stays on the pod's loopback.
    #[arg(long, env = "TRACELIGHT_AGENT_ADMIN_EXPOSURE", default_value = "health")]
    pub agent_admin_exposure: crate::inject::AdminExposure,
    /// Reserved node ports the agents of hostNetwork pods take a slot of three in, by a hash
    /// of their workload, declared as hostPorts (FIRST-LAST).
    #[arg(long, env = "TRACELIGHT_AGENT_HOST_PORT_RANGE", default_value = "20000-22999")]
    pub agent_host_port_range: crate::inject::ports::HostPortRange,
}

impl WebhookArgs {
    /// The injector settings these flags select.
    pub fn inject_options(&self) -> InjectOptions {
        InjectOptions {
            native_sidecar: self.native_sidecar,
            report_url: self.agent_reports.then(|| self.report_url()),
            admin_exposure: self.agent_admin_exposure,
            host_port_range: self.agent_host_port_range,
            images: DefaultImages {
                agent: self.agent_image.clone(),
                instrumentation: self.instrumentation_images.iter().cloned().collect(),
            },
            report_interval_secs: self.agent_report_interval.map(|d| d.get().as_secs()),
        }
    }

    /// Where agents push their reports.
    pub fn report_url(&self) -> String {
        self.agent_report_url.clone().unwrap_or_else(|| {
            format!(
                "https://{}.{}.svc:443{}",
                self.service_name,
                self.namespace,
                tracelight_contract::report::REPORT_PATH
            )
        })
    }

    fn cert_source(&self, client: kube::Client) -> CertSource {
        match self.cert_mode {
            CertMode::Files => CertSource::Files(self.cert_dir.clone()),
            CertMode::SelfSigned => CertSource::SelfSigned(Box::new(SelfSigned {
                client,
                namespace: self.namespace.clone(),
                secret_name: self.cert_secret.clone(),
                webhook_config: self.webhook_config.clone(),
                leaf: LeafSpec::for_service(
                    &self.service_name,
                    &self.namespace,
                    &self.extra_sans,
                    self.cert_validity.get(),
                ),
            })),
        }
    }

    fn validate(&self) -> Result<(), WebhookError> {
        let (validity, interval) = (self.cert_validity.get(), self.cert_check_interval.get());
        if validity < std::time::Duration::from_secs(60) {
            return Err(WebhookError::InvalidArgs(format!(
                "--cert-validity {} is shorter than 1m",
                self.cert_validity
            )));
        }
        if interval.is_zero() || interval * 3 > validity {
            return Err(WebhookError::InvalidArgs(format!(
                "--cert-check-interval {} must be positive and at most a third of --cert-validity {}",
                self.cert_check_interval, self.cert_validity
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook flags: {0}")]
    InvalidArgs(String),
    #[error("binding the {what} server to {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("building the webhook TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("admin server on {addr} failed: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr).await.map_err(|source| WebhookError::Bind { what, addr, source })
}

/// Runs the webhook until `shutdown` is cancelled: certificate bootstrap and rotation, the HTTPS
/// admission server and the admin server. Admission reads the cluster view (driven by the caller).
///
/// Webhook metrics are registered into `metrics`; the admin server's `/metrics` renders the
/// whole registry, so register other components' metrics into the same `Metrics`.
pub async fn run(
    args: WebhookArgs,
    cluster: Cluster,
    metrics: Metrics,
    reports: reports::ReportStore,
    leader_address: tokio::sync::watch::Receiver<Option<String>>,
    resolver: Arc<CertResolver>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    args.validate()?;
    let Cluster { client, view } = cluster;
    let tls = server::tls_config(resolver.clone())?;
    let admission = AdmissionState {
        view: view.clone(),
        options: Arc::new(args.inject_options()),
        metrics: AdmissionMetrics::register(&metrics),
    };
    let service_dns_name = format!("{}.{}.svc", args.service_name, args.namespace);
    let forward = reports::forward::Forwarder::new(leader_address, resolver.clone(), &service_dns_name, &metrics)
        .map_err(|e| WebhookError::InvalidArgs(format!("--service-name/--namespace: {e}")))?;
    metrics::CertificateExpiry::register(&metrics, resolver.clone());
    let reports = reports::ReportsState {
        reviewer: Arc::new(reports::review::TokenReviewer::new(client.clone())),
        store: reports,
        metrics: reports::ReportMetrics::register(&metrics),
        forward: Some(forward),
        limits: Arc::default(),
    };
    let admin = server::AdminState { metrics, view, resolver: resolver.clone() };
    let webhook_listener = bind("webhook", args.webhook_addr).await?;
    let admin_listener = bind("admin", args.admin_addr).await?;
    tracing::info!(webhook = %args.webhook_addr, admin = %args.admin_addr, mode = ?args.cert_mode, "webhook starting");

    // Stops everything when asked to, or when one server fails.
    let stop = shutdown.child_token();
    let interval = args.cert_check_interval.get();
    let cert_task = tokio::spawn(args.cert_source(client).run(resolver, interval, stop.clone()));
    let https = server::serve_https(
        webhook_listener,
        tls,
        handler::router(admission).merge(reports::router(reports)),
        stop.clone(),
    );
    let admin = async {
        let result = server::serve_admin(admin_listener, server::admin_router(admin), stop.clone()).await;
        stop.cancel();
        result.map_err(|source| WebhookError::Admin { addr: args.admin_addr, source })
    };
    let ((), admin_result) = tokio::join!(https, admin);
    stop.cancel();
    let _ = cert_task.await;
    tracing::info!("webhook stopped");
    admin_result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    #[test]
    fn defaults_match_the_chart() {
        let args = Cli::try_parse_from(["t"]).unwrap().webhook;
        assert_eq!(args.webhook_addr.to_string(), "0.0.0.0:8443");
        assert_eq!(args.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.cert_mode, CertMode::SelfSigned);
        assert_eq!(args.cert_secret, "tracelight-webhook-tls");
        assert_eq!(args.webhook_config, "tracelight");
        assert_eq!(args.cert_validity.get().as_secs(), 2160 * 3600);
        assert_eq!(args.cert_check_interval.get().as_secs(), 60);
        assert!(args.native_sidecar);
        assert_eq!(
            args.inject_options().report_url.as_deref(),
            Some("https://tracelight-webhook.tracelight-system.svc:443/v1/agent-reports")
        );
        args.validate().unwrap();
    }

    #[test]
    fn flags_parse_for_a_short_lived_e2e_setup() {
        let args = Cli::try_parse_from([
            "t",
            "--cert-validity",
            "2m",
            "--cert-check-interval",
            "10s",
            "--extra-san",
            "127.0.0.1",
            "--extra-san",
            "localhost,::1",
            "--native-sidecar",
            "false",
            "--cert-mode",
            "files",
            "--agent-reports",
            "false",
        ])
        .unwrap()
        .webhook;
        assert_eq!(args.extra_sans, ["127.0.0.1", "localhost", "::1"]);
        assert_eq!(args.cert_validity.get().as_secs(), 120);
        assert!(!args.inject_options().native_sidecar);
        assert_eq!(args.inject_options().report_url, None);
        assert_eq!(args.cert_mode, CertMode::Files);
        args.validate().unwrap();
    }

    #[test]
    fn the_agent_report_interval_reaches_the_injector_within_bounds() {
        let args = Cli::try_parse_from(["t"]).unwrap().webhook;
        assert_eq!(args.inject_options().report_interval_secs, None, "the agent's default");
        let args = Cli::try_parse_from(["t", "--agent-report-interval", "10s"]).unwrap().webhook;
        assert_eq!(args.inject_options().report_interval_secs, Some(10));
        for bad in ["4s", "3m", "10"] {
            let e = Cli::try_parse_from(["t", "--agent-report-interval", bad]).err().expect(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn check_interval_longer_than_a_third_of_validity_is_rejected() {
        let args = Cli::try_parse_from(["t", "--cert-validity", "2m", "--cert-check-interval", "1m"]).unwrap().webhook;
        assert!(matches!(args.validate(), Err(WebhookError::InvalidArgs(_))));
    }
}

#[cfg(test)]
mod live_tests;
