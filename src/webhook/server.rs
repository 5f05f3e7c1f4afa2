//! The two listeners: HTTPS for the API server's admission calls (certificate resolved per
//! handshake, so rotation needs no restart), and plain HTTP for `/metrics`, `/readyz`, `/livez`.
//!
//! The HTTPS port is reachable from every pod (agents push their reports there), so it holds
//! under abuse ([`ServerLimits`]): a TLS handshake must finish within 10 s; a request's headers
//! within the idle timeout (hyper's header-read timeout, which also bounds a kept-alive idle
//! connection and must exceed the API server's own 90 s); a whole request, body included,
//! within 30 s (the API server never waits longer for a webhook), else 408 and the connection
//! closes; request heads are buffered up to 64 KiB; bodies are bounded by each route while they
//! stream (`Content-Length` checked first). At most 1024 connections are open at once: beyond,
//! a new connection is closed as soon as it is accepted, so a flood cannot exhaust the process's
//! file descriptors, and the admission review after it is answered. Only HTTP/1.1 is offered
//! (ALPN), so there are no HTTP/2 streams to multiply a connection's cost.

use super::certs::CertResolver;
use crate::cluster_view::ClusterView;
use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::crypto::ring;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A client that opens a connection and never finishes the TLS handshake is cut off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's header-read timeout also bounds how long a kept-alive connection may sit idle. It must
/// exceed the API server's own idle timeout (Go's 90s): if the server closed first, a review sent
/// on the closing connection would fail (POST is not retried) and the pod would miss injection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long in-flight admissions may take to finish after shutdown was requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request, body included, must arrive and be answered within this (the API server's
/// longest webhook timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest request head (request line and headers) buffered.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What one client may hold of the HTTPS server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    pub handshake_timeout: Duration,
    /// Header-read timeout, also the longest idle time of a kept-alive connection.
    pub idle_timeout: Duration,
    /// A whole request, body included.
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// TLS settings of the admission server: ring provider, TLS 1.2/1.3, HTTP/1.1, and a certificate
/// chosen by `resolver` at every handshake.
pub fn tls_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets open requests finish (up to
/// `DRAIN_TIMEOUT`). Per-connection failures are logged, never fatal.
pub async fn serve_https(listener: TcpListener, tls: Arc<ServerConfig>, app: Router, shutdown: CancellationToken) {
    serve_https_with(listener, tls, app, ServerLimits::default(), shutdown).await;
}

/// [`serve_https`] with explicit limits.
pub async fn serve_https_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => (StatusCode::REQUEST_TIMEOUT, "the request did not arrive in time").into_response(),
            }
        },
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Closed at once: an open socket per refused client would exhaust the fds.
                        drop(stream);
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, refused, max = limits.max_connections, "webhook connection limit reached: closing new connections");
                        }
                        continue;
                    };
                    let connection = serve_connection(acceptor.clone(), stream, peer, app.clone(), limits, shutdown.clone());
                    connections.spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accepting a webhook connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drain(connections).await;
}

async fn drain(mut connections: JoinSet<()>) {
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, all_done).await.is_err() {
        tracing::warn!("webhook connections still open after the drain timeout; closing them");
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    // The report endpoint limits per remote address.
    let service = TowerToHyperService::new(app.layer(axum::Extension(axum::extract::ConnectInfo(peer))));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "webhook connection ended with an error");
    }
}

/// What the admin endpoints report on.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub metrics: Metrics,
    pub view: ClusterView,
    pub resolver: Arc<CertResolver>,
}

/// `/metrics` (OpenMetrics text), `/readyz` (cluster view synced and a certificate loaded), `/livez`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/livez", get(|| async { "ok" }))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.metrics.with_registry(|registry| tracelight_process::metrics::response(registry))
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    match (state.view.ready(), state.resolver.is_loaded()) {
        (true, true) => (StatusCode::OK, "ok"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "namespace/policy view not synced yet"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "no serving certificate loaded yet"),
    }
}

/// Serves the admin endpoints over plain HTTP until `shutdown`.
pub async fn serve_admin(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
