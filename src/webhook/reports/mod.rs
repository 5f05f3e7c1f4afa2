//! The agents' report channel, operator side: `POST /v1/agent-reports` on the webhook's HTTPS
//! server. A report is accepted only from the pod it describes: the bearer token is a projected
//! ServiceAccount token of audience `tracelight.io/agent-report` bound to a pod, reviewed by the
//! API server ([`review`]); the body's pod name, namespace and uid must match the token's. So a
//! pod cannot report for another one, and the token is useless anywhere else.
//!
//! Every replica accepts reports; one that does not lead also sends them on to the leader, whose
//! controllers count them ([`forward`] says how and why that way).
//!
//! Answers: 204 accepted; 400 malformed body; 401 missing or rejected token; 403 the body names
//! another pod; 413 too large (from `Content-Length` before anything is read, else as soon as
//! the body streams past [`MAX_REPORT_BYTES`]: never more is buffered); 429 (with `Retry-After`)
//! over a rate limit ([`limit`]); 503 (with `Retry-After`) when the review could not be done.
//! The agent retries at its next push either way.
//!
//! What a report may cost: its size is bounded, service names are cut to
//! [`MAX_SERVICE_NAME_BYTES`](store::MAX_SERVICE_NAME_BYTES) and at most
//! [`MAX_SERVICES`](crate::rollout::coverage::MAX_SERVICES) are kept (cut names are counted in
//! `tracelight_agent_report_names_truncated_total`), a token the API server rejected is
//! remembered for a minute without asking again ([`review`]), and the rate limits bound the
//! requests per agent and per address.

pub mod forward;
pub mod limit;
pub mod review;
pub mod store;

use crate::telemetry::Metrics;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use review::{ReviewError, ReviewedPod, Reviewer};
use std::sync::Arc;
pub use store::ReportStore;
use tracelight_contract::report::{AgentReport, MAX_REPORT_BYTES, REPORT_PATH};

/// What the report endpoint needs.
#[derive(Clone)]
pub struct ReportsState {
    pub reviewer: Arc<dyn Reviewer>,
    pub store: ReportStore,
    pub metrics: ReportMetrics,
    /// Sends accepted reports on to the leader while another replica leads (`None`: single
    /// replica, or no address to reach the leader at).
    pub forward: Option<forward::Forwarder>,
    pub limits: Arc<limit::ReportLimits>,
}

/// `tracelight_agent_reports_total{result}`: accepted, and refused by reason.
#[derive(Clone, Debug, Default)]
pub struct ReportMetrics {
    reports: Family<Vec<(String, String)>, Counter>,
    truncated: Counter,
}

impl ReportMetrics {
    pub fn register(metrics: &Metrics) -> ReportMetrics {
        let m = ReportMetrics::default();
        metrics.register("tracelight_agent_reports", "Agent reports received, by result", m.reports.clone());
        metrics.register(
            "tracelight_agent_report_names_truncated",
            "Service names in accepted agent reports cut to the longest name kept",
            m.truncated.clone(),
        );
        m
    }

    fn count(&self, result: &str) {
        self.reports.get_or_create(&vec![("result".to_string(), result.to_string())]).inc();
    }
}

pub fn router(state: ReportsState) -> Router {
    Router::new().route(REPORT_PATH, post(receive)).with_state(state)
}

/// Why a report was refused; the answer and the metric label.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("missing bearer token")]
    NoToken,
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error("malformed report: {0}")]
    Malformed(serde_json::Error),
    #[error("the report describes {claimed}, but the token was issued to pod {actual}")]
    WrongPod { claimed: String, actual: String },
    #[error("the report is larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("reading the report: {0}")]
    Body(String),
    #[error("too many reports: retry in {}s", limit::retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::NoToken | Refused::Review(ReviewError::Rejected(_) | ReviewError::NotAPodToken(_)) => {
                StatusCode::UNAUTHORIZED
            }
            Refused::Review(ReviewError::Api(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Malformed(_) | Refused::Body(_) => StatusCode::BAD_REQUEST,
            Refused::WrongPod { .. } => StatusCode::FORBIDDEN,
            Refused::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `Retry-After` seconds of the answer, if any.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Refused::Review(ReviewError::Api(_)) => Some(10),
            Refused::RateLimited(wait) => Some(limit::retry_after_secs(*wait)),
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Refused::NoToken => "no_token",
            Refused::Review(ReviewError::Api(_)) => "review_failed",
            Refused::Review(_) => "unauthenticated",
            Refused::Malformed(_) | Refused::Body(_) => "malformed",
            Refused::WrongPod { .. } => "wrong_pod",
            Refused::TooLarge => "too_large",
            Refused::RateLimited(_) => "rate_limited",
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn receive(State(state): State<ReportsState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let headers = parts.headers;
    let forwarded = headers.contains_key(forward::FORWARDED_HEADER);
    let accepted = async {
        let token = bearer(&headers).ok_or(Refused::NoToken)?;
        let token_hash: [u8; 32] =
            sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), token)).into();
        state.limits.check(peer, forwarded, token_hash, std::time::Instant::now()).map_err(Refused::RateLimited)?;
        let body = read_bounded(&headers, body).await?;
        let (pod, truncated) = accept(&state, token, &body).await?;
        Ok::<_, Refused>((pod, truncated, body))
    }
    .await;
    match accepted {
        Ok((pod, truncated, body)) => {
            state.metrics.count("accepted");
            state.metrics.truncated.inc_by(truncated as u64);
            // A report another replica forwarded is never forwarded again.
            if let (Some(forward), false) = (&state.forward, forwarded) {
                if let Some(authorization) = headers.get(header::AUTHORIZATION) {
                    forward.spawn(authorization.clone(), body);
                }
            }
            tracing::debug!(namespace = %pod.namespace, pod = %pod.pod_name, "agent report accepted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(refused) => {
            state.metrics.count(refused.label());
            let status = refused.status();
            tracing::debug!(%status, error = %refused, "agent report refused");
            let mut response = (status, refused.to_string()).into_response();
            if let Some(seconds) = refused.retry_after() {
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            }
            response
        }
    }
}

/// The body, refused from its `Content-Length` before anything is read when that is too large,
/// and as soon as it streams past [`MAX_REPORT_BYTES`] otherwise.
async fn read_bounded(headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, Refused> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return Err(Refused::TooLarge);
    }
    let mut buffer = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        let chunk = chunk.map_err(|e| Refused::Body(e.to_string()))?;
        if buffer.len() + chunk.len() > MAX_REPORT_BYTES {
            return Err(Refused::TooLarge);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

async fn accept(state: &ReportsState, token: &str, body: &[u8]) -> Result<(ReviewedPod, usize), Refused> {
    // The body is parsed first (cheap, local); the review may cost an API request.
    let report: AgentReport = serde_json::from_slice(body).map_err(Refused::Malformed)?;
    let pod = state.reviewer.review(token).await?;
    check_identity(&report, &pod)?;
    state.store.accept(&pod, &report, Timestamp::now());
    Ok((pod, store::truncated_names(&report)))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The body must describe the pod the token was issued to (fields it leaves out are not checked,
/// the token's identity is what gets recorded).
fn check_identity(report: &AgentReport, pod: &ReviewedPod) -> Result<(), Refused> {
    let claimed = &report.pod;
    let matches = |claim: &Option<String>, actual: &str| claim.as_deref().is_none_or(|c| c == actual);
    if matches(&claimed.namespace, &pod.namespace)
        && matches(&claimed.pod_name, &pod.pod_name)
        && matches(&claimed.pod_uid, &pod.pod_uid)
    {
        return Ok(());
    }
    Err(Refused::WrongPod {
        claimed: format!(
            "{}/{}",
            claimed.namespace.as_deref().unwrap_or("?"),
            claimed.pod_name.as_deref().unwrap_or("?")
        ),
        actual: format!("{}/{}", pod.namespace, pod.pod_name),
    })
}

#[cfg(test)]
mod tests;
