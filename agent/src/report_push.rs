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
    #[error("operator answered HTTP {status}")]
    Status { status: u16, retry_after: Option<Duration> },
}

impl PushError {
    /// The wait the operator asked for (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PushError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Waits between failed pushes: exponential from `base`, with jitter, at most `cap`; a
/// `Retry-After` from the operator is honoured (also capped, so a bad header cannot silence an
/// agent for good).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushBackoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for PushBackoff {
    fn default() -> Self {
        PushBackoff { base: Duration::from_secs(1), cap: Duration::from_secs(300) }
    }
}

impl PushBackoff {
    /// The wait after `failures` failed pushes in a row (at least 1); `jitter` in [0, 1) takes
    /// up to half of the computed wait off, so agents that failed together do not retry together.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.cap);
        }
        let exp = self.base.saturating_mul(1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX));
        exp.min(self.cap).mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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
    pub backoff: PushBackoff,
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
        ReportPusher { url, token_file, ca_file, interval, backoff: PushBackoff::default(), shared, client: None }
    }

    /// Push every `interval`, and at once when the config generation changes; after a failure,
    /// nothing before the backoff's wait has passed.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut pushed_generation = None;
        let mut last_push: Option<Instant> = None;
        let mut failures = 0u32;
        let mut not_before = Instant::now();
        loop {
            let generation = self.shared.metrics.config_generation.get();
            let due = last_push.is_none_or(|t| t.elapsed() >= self.interval);
            if Instant::now() >= not_before && (due || pushed_generation != Some(generation)) {
                match self.push_once().await {
                    Ok(()) => {
                        pushed_generation = Some(generation);
                        failures = 0;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let wait = self.backoff.delay(failures, e.retry_after(), fastrand::f64());
                        not_before = Instant::now() + wait;
                        tracing::warn!(error = %e, url = %self.url, failures, retry_in = ?wait, "report push failed");
                    }
                }
                last_push = Some(Instant::now());
            }
            let tick = Duration::from_secs(1).min(self.backoff.base).max(Duration::from_millis(10));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
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
        let mut report = build_report(&self.shared);
        // Probes go with pushed reports only (never with `GET /report`), and come back on failure.
        report.probes = self.shared.pipeline.probes.take();
        let unsent = report.probes.clone();
        let result = self.send(client, auth, report).await;
        if let (Err(_), Some(unsent)) = (&result, unsent) {
            self.shared.pipeline.probes.restore(unsent);
        }
        result
    }

    async fn send(
        &self,
        client: HttpsClient,
        auth: HeaderValue,
        report: super::report::Report,
    ) -> Result<(), PushError> {
        let body = super::report::bounded_json(report);
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
            status => {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                Err(PushError::Status { status, retry_after })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn waits_grow_exponentially_with_jitter_up_to_the_cap() {
        let b = PushBackoff { base: Duration::from_secs(1), cap: Duration::from_secs(60) };
        let waits: Vec<u64> = (1..=8).map(|n| b.delay(n, None, 0.0).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(3, None, 1.0), Duration::from_secs(2), "jitter takes at most half");
        assert_eq!(b.delay(u32::MAX, None, 0.0), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_honoured_in_seconds_or_as_a_date_and_capped() {
        let b = PushBackoff { base: Duration::from_secs(1), cap: Duration::from_secs(60) };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(b.delay(1, Some(Duration::from_secs(7)), 0.9), Duration::from_secs(7));
        assert_eq!(b.delay(1, Some(Duration::from_secs(86_400)), 0.0), Duration::from_secs(60));
    }
}
