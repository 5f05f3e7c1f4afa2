//! Agent side of the authenticated report channel (see [`super::report`] for the design): POST
//! the JSON report to the operator with the pod's projected ServiceAccount token as a bearer
//! token, periodically and as soon as a new config generation is in effect (so the operator can
//! confirm a change reached every pod quickly). The token file is re-read on every push because
//! the kubelet rotates it; the token is never logged.

use super::admin::build_report;
use super::exporter::tls;
use super::Shared;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read the report token {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("the report token is not a valid header value")]
    TokenValue,
    #[error("cannot read the report CA bundle {path}: {source}")]
    Ca { path: PathBuf, source: std::io::Error },
    #[error("report channel TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("report request failed: {0}")]
    Request(String),
    #[error("operator answered HTTP {0}")]
    Status(u16),
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct ReportPusher {
    pub url: Uri,
    pub token_file: PathBuf,
    /// PEM bundle to verify the operator with (system roots without one). Read at every push:
    /// it comes from the agent ConfigMap, which may appear after the agent starts and changes
    /// when the operator's CA rotates.
    pub ca_file: Option<PathBuf>,
    pub interval: Duration,
    pub shared: Arc<Shared>,
    /// The client, and the CA bundle it was built with.
    client: Option<(Option<Vec<u8>>, HttpsClient)>,
}

impl ReportPusher {
    pub fn new(
        url: Uri,
        token_file: PathBuf,
        ca_file: Option<PathBuf>,
        interval: Duration,
        shared: Arc<Shared>,
    ) -> ReportPusher {
        ReportPusher { url, token_file, ca_file, interval, shared, client: None }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let mut pushed_generation = None;
        let mut last_push: Option<Instant> = None;
        loop {
            let generation = self.shared.metrics.config_generation.get();
            let due = last_push.is_none_or(|t| t.elapsed() >= self.interval);
            if due || pushed_generation != Some(generation) {
                match self.push_once().await {
                    Ok(()) => pushed_generation = Some(generation),
                    Err(e) => tracing::warn!(error = %e, url = %self.url, "report push failed"),
                }
                last_push = Some(Instant::now());
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The client for the current CA bundle, rebuilt when the bundle changed.
    fn client(&mut self) -> Result<HttpsClient, PushError> {
        let ca = match &self.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| PushError::Ca { path: path.clone(), source })?),
            None => None,
        };
        if let Some((built_with, client)) = &self.client {
            if *built_with == ca {
                return Ok(client.clone());
            }
        }
        let tls = tls::client_config(ca.as_deref(), false)?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        self.client = Some((ca, client.clone()));
        Ok(client)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn push_once(&mut self) -> Result<(), PushError> {
        let client = self.client()?;
        let token = std::fs::read(&self.token_file)
            .map_err(|source| PushError::Token { path: self.token_file.clone(), source })?;
        let mut auth =
            HeaderValue::from_bytes(&[b"Bearer ", token.trim_ascii()].concat()).map_err(|_| PushError::TokenValue)?;
        auth.set_sensitive(true);
        let body = serde_json::to_vec(&build_report(&self.shared)).unwrap_or_default();
        let req = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, auth)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PushError::Request(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .map_err(|_| PushError::Request("timed out".into()))?
            .map_err(|e| PushError::Request(e.to_string()))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            s => Err(PushError::Status(s)),
        }
    }
}
