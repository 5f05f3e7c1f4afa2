//! `tracelight-agent`: the sidecar. OTLP in (gRPC and HTTP on the pod's loopback), consistent
//! sampling, `k8s.*` enrichment, a byte-bounded queue, export with retries to the policy's
//! collector, live reload of its config, and a self-report on an admin port (on the pod's
//! loopback; `/healthz` also on the pod IP, see [`admin`]).
//!
//! ```text
//! receivers (grpc, http) -> admission -> pipeline (validate, sample, enrich: `wire`, on the
//!     request's protobuf bytes, never decoded into structs) -> queue
//!     -> export loop (batch, send, retry/requeue) -> collector
//! config watcher -> pipeline settings + export client (swapped live)
//! ```
//!
//! # Where the memory goes
//!
//! Resident memory has two parts that behave differently (`/proc/<pid>/smaps`):
//!
//! - **Anonymous, the agent's own.** At idle: relocated pointers, the heap (runtime, servers,
//!   config, metrics), stacks. Under load, on top: up to `--export-concurrency` requests in
//!   flight, each holding its batch (up to `--batch-bytes` of encoded spans) and its gzipped body,
//!   one reused deflate state, and requests being decoded. While exports succeed, the queue
//!   stays near `--pace-above-bytes` (receivers wait for the exporter: [`queue`]); it fills
//!   towards `--queue-bytes` only while the collector fails. Freed memory goes back to the OS
//!   after 100 ms (`tracelight_process::allocator`).
//! - **File-backed: the pages of this binary and libc that ran.** The kernel maps code around
//!   each page executed (fault-around, or a whole large folio of the page cache), so this part
//!   follows the size of the binary's code more than the size of the agent's hot path. The agent
//!   is therefore its own binary, linking no Kubernetes client, no operator code and no
//!   OpenTelemetry SDK; `make bench-agent-compare` measures both parts against the OpenTelemetry
//!   Collector (figures in `docs/performance.md`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod args;
pub mod config_watch;
pub mod decode;
pub mod enrich;
pub mod exporter;
pub mod metrics;
pub mod pipeline;
pub mod probes;
pub mod queue;
pub mod receiver_grpc;
pub mod receiver_http;
pub mod red;
pub mod report;
pub mod report_push;
pub mod rules;
pub mod sampler;
pub mod server;
pub mod settings;
pub mod tracestate;
pub mod usage;
pub mod wire;

use anyhow::Context as _;
pub use args::AgentArgs;
use exporter::retry::Backoff;
use exporter::{ExportLoop, LoopOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracelight_contract::AgentConfig;

/// State shared by the servers and the watcher.
pub struct Shared {
    pub pipeline: Arc<pipeline::Pipeline>,
    pub metrics: Arc<metrics::Metrics>,
    /// The config in effect, once one was valid.
    pub config: RwLock<Option<AgentConfig>>,
    /// Budget of request bytes in flight at the receivers.
    pub admission: admission::Admission,
    pub started: Instant,
}

/// A started agent: its bound addresses and how to stop it.
pub struct RunningAgent {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The health listener (`--health-host`, on the admin port), when there is one.
    pub health_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    receivers_stop: CancellationToken,
    export_stop: CancellationToken,
    flush_by: Arc<std::sync::OnceLock<tokio::time::Instant>>,
    shutdown_timeout: Duration,
    receivers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    /// The admin server, and the health server when there is one.
    admin: Vec<JoinHandle<()>>,
    admin_stop: CancellationToken,
}

/// Entry point of `tracelight-agent`: runs until SIGTERM or SIGINT.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    tracelight_process::allocator::reexec_with_options("tracelight-agent");
    tracelight_process::logging::init_logging(args.log_format);
    let mut runtime = match args.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = runtime.enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let agent = start(args).await?;
        tracelight_process::signal::shutdown_requested().await;
        tracing::info!("stopping: no longer receiving, flushing the queue");
        agent.shutdown().await;
        anyhow::Ok(())
    });
    // Tasks still running (a connection being closed) are dropped, not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn bind(host: IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).await.with_context(|| format!("binding the {what} port {host}:{port}"))
}

/// Bind every port, load the config, and spawn the servers, the exporter and the watcher.
pub async fn start(args: AgentArgs) -> anyhow::Result<RunningAgent> {
    start_with_identity(args, enrich::PodIdentity::from_env()).await
}

/// [`start`] with an explicit pod identity instead of the downward-API environment.
pub async fn start_with_identity(args: AgentArgs, identity: enrich::PodIdentity) -> anyhow::Result<RunningAgent> {
    let metrics = Arc::new(metrics::Metrics::default());
    let queue = Arc::new(queue::Queue::new(args.queue_bytes, metrics.clone()).with_pacing(args.pace_above_bytes));
    let red = Arc::new(red::Red::new(args.red_metrics));
    let pipeline = Arc::new(pipeline::Pipeline::new(identity, queue.clone(), metrics.clone()).with_red(red));
    // A request as large as allowed is never refused for being alone (its wire bytes and its
    // inflated copy are both charged).
    let admission = admission::Admission::new(args.max_inflight_bytes.max(args.max_request_bytes.saturating_mul(2)));
    let shared = Arc::new(Shared {
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        config: RwLock::new(None),
        admission: admission.clone(),
        started: Instant::now(),
    });

    let grpc_listener = bind(args.listen_host, args.otlp_grpc_port, "OTLP/gRPC").await?;
    let http_listener = bind(args.listen_host, args.otlp_http_port, "OTLP/HTTP").await?;
    let admin_listener = bind(args.admin_host, args.admin_port, "admin").await?;
    let (grpc_addr, http_addr, admin_addr) =
        (grpc_listener.local_addr()?, http_listener.local_addr()?, admin_listener.local_addr()?);
    let health_listener = match health_host(&args) {
        Some(host) => Some(bind(host, admin_addr.port(), "health").await?),
        None => None,
    };
    let health_addr = health_listener.as_ref().map(TcpListener::local_addr).transpose()?;

    let (clients_tx, clients_rx) = watch::channel(None);
    let mut watcher = config_watch::ConfigWatcher::new(args.config.clone(), shared.clone(), clients_tx);
    watcher.interval = Duration::from_millis(args.config_poll_ms.max(50));
    watcher.export_timeout = Duration::from_secs(args.export_timeout_secs.max(1));
    if !watcher.poll() {
        tracing::warn!(path = %args.config.display(), "no valid config yet: receiving and queueing until one appears");
    }

    let receivers_stop = CancellationToken::new();
    let export_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let receivers = spawn_receivers(&args, &pipeline, &admission, grpc_listener, http_listener, &receivers_stop);

    let flush_by = Arc::new(std::sync::OnceLock::new());
    let export = ExportLoop {
        flush_by: flush_by.clone(),
        queue,
        metrics,
        clients: clients_rx,
        options: LoopOptions {
            batch_bytes: args.batch_bytes.max(1),
            max_message_bytes: args.max_message_bytes.max(1024),
            linger: Duration::from_millis(args.batch_linger_ms),
            backoff: Backoff::default(),
            shutdown_deadline: Duration::from_secs(args.shutdown_timeout_secs),
            max_in_flight: args.export_concurrency.max(1),
        },
    };
    let mut background =
        vec![tokio::spawn(export.run(export_stop.clone())), tokio::spawn(watcher.run(receivers_stop.clone()))];
    if let Some(pusher) = report_pusher(&args, &shared) {
        background.push(tokio::spawn(pusher.run(receivers_stop.clone())));
    }
    let limits = server_limits(&args);
    let mut admin =
        vec![tokio::spawn(admin::serve(admin_listener, admin::router(shared.clone()), limits, admin_stop.clone()))];
    if let Some(listener) = health_listener {
        let router = admin::health_router(shared.clone(), args.health_metrics);
        admin.push(tokio::spawn(admin::serve(listener, router, limits, admin_stop.clone())));
    }
    tracing::info!(%grpc_addr, %http_addr, %admin_addr, health_addr = ?health_addr, "agent started");
    Ok(RunningAgent {
        grpc_addr,
        http_addr,
        admin_addr,
        health_addr,
        shared,
        receivers_stop,
        export_stop,
        flush_by,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        receivers,
        background,
        admin,
        admin_stop,
    })
}

/// Where the health listener binds: `--health-host`, unless the admin server already listens
/// there (or everywhere, when exposed on purpose with `--admin-host=0.0.0.0`).
fn health_host(args: &AgentArgs) -> Option<IpAddr> {
    let host = args.health_host?;
    if args.admin_host.is_unspecified() || host == args.admin_host {
        tracing::info!(%host, admin_host = %args.admin_host, "the admin server already answers health checks there");
        return None;
    }
    Some(host)
}

fn report_pusher(args: &AgentArgs, shared: &Arc<Shared>) -> Option<report_push::ReportPusher> {
    let (Some(url), Some(token)) = (&args.report_url, &args.report_token_file) else { return None };
    let interval = Duration::from_secs(args.report_interval_secs.max(1));
    // The token and CA files are read at every push: a missing file is a failed push (logged and
    // retried), never a failed agent.
    Some(report_push::ReportPusher::new(
        url.clone(),
        token.clone(),
        args.report_ca_file.clone(),
        interval,
        shared.clone(),
    ))
}

fn spawn_receivers(
    args: &AgentArgs,
    pipeline: &Arc<pipeline::Pipeline>,
    admission: &admission::Admission,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let grpc = receiver_grpc::GrpcReceiver { pipeline: pipeline.clone(), admission: admission.clone() };
    let http = Arc::new(receiver_http::HttpReceiver {
        pipeline: pipeline.clone(),
        admission: admission.clone(),
        max_body: args.max_request_bytes,
    });
    let limits = server_limits(args);
    vec![
        tokio::spawn(receiver_grpc::serve(grpc_listener, grpc, args.max_request_bytes, limits, stop.clone())),
        tokio::spawn(receiver_http::serve(http_listener, http, limits, stop.clone())),
    ]
}

/// The limits every listener is served with (see [`server`]).
pub fn server_limits(args: &AgentArgs) -> server::ServerLimits {
    let secs = |s: u64| Duration::from_secs(s.max(1));
    server::ServerLimits {
        max_connections: args.max_connections.max(1),
        header_timeout: secs(args.header_timeout_secs),
        body_timeout: secs(args.body_timeout_secs),
        idle_timeout: secs(args.idle_timeout_secs),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs.min(args.shutdown_timeout_secs)),
        max_streams: args.max_streams_per_connection.max(1),
    }
}

/// Time past the shutdown deadline for the exporter to abort its sends and count them as dropped
/// (under load the count otherwise raced the deadline and was lost). The injector leaves the pod's
/// grace period well beyond `--shutdown-timeout-secs`.
const SHUTDOWN_WRAP_UP: Duration = Duration::from_millis(250);

impl RunningAgent {
    /// Stop within `--shutdown-timeout-secs` (plus a wrap-up of 250 ms, `SHUTDOWN_WRAP_UP`), whatever clients do: stop accepting connections,
    /// give requests in progress `--drain-timeout-secs` (then their connections are closed),
    /// flush the queue in the time left, then stop the admin server. Exports keep running while
    /// the receivers drain.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        self.receivers_stop.cancel();
        for r in self.receivers {
            // Each server ends after its drain timeout; this only guards the whole bound.
            let _ = tokio::time::timeout_at(deadline, r).await;
        }
        let _ = self.flush_by.set(deadline);
        self.export_stop.cancel();
        for b in self.background {
            // A report push in progress is abandoned at the deadline; the exporter, which stops
            // its sends at the deadline itself, gets a moment beyond it to count what it abandoned.
            if tokio::time::timeout_at(deadline + SHUTDOWN_WRAP_UP, b).await.is_err() {
                tracing::warn!("shutdown deadline reached with a background task still running");
            }
        }
        self.admin_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_millis(200), wait_all(self.admin)).await;
        tracing::info!("agent stopped");
    }

    pub fn report(&self) -> report::Report {
        admin::build_report(&self.shared)
    }
}

/// Waits for every handle (their results are not needed).
async fn wait_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

impl Shared {
    /// Spans waiting in the export queue.
    pub fn queue_spans(&self) -> u64 {
        self.pipeline.queue.usage().1 as u64
    }
}
