//! `POST /mutate-pods`: AdmissionReview in, AdmissionReview out.
//!
//! All decisions come from [`crate::inject::decide`]; this module only parses, looks up the
//! index, and turns the outcome into a response. The webhook never blocks pod creation: every
//! failure past parsing the body becomes `allowed: true` with a warning (fail open).

use super::index::Index;
use super::metrics::{AdmissionMetrics, AdmissionResult};
use crate::api::TracingPolicy;
use crate::inject::{self, InjectError, InjectOptions, Outcome};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;
use tracing::field::Empty;

/// Path the `MutatingWebhookConfiguration` points at.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";

/// Largest request body accepted. The API server caps objects at ~1.5 MiB; the review wraps the
/// object (and, for updates, the old one), so 3 MiB leaves room without inviting abuse.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Prefix of every admission warning, so users can tell who is talking.
const WARNING_PREFIX: &str = "tracelight:";

/// What the admission route needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AdmissionState {
    pub index: Index,
    pub options: Arc<InjectOptions>,
    pub metrics: AdmissionMetrics,
}

/// The admission routes, with the body size limit (larger bodies get 413).
pub fn router(state: AdmissionState) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn mutate_pods(State(state): State<AdmissionState>, body: Bytes) -> Response {
    // In-memory work measured in microseconds: no need to move it off the async worker.
    let (status, body) = review(&body, &state.index, &state.options, &state.metrics);
    let content_type = if status == StatusCode::OK { "application/json" } else { "text/plain; charset=utf-8" };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Answers one admission review. Returns 400 with a plain-text message when the body is not an
/// AdmissionReview; otherwise 200 with the response review (always `allowed: true`).
pub fn review(
    body: &[u8],
    index: &Index,
    options: &InjectOptions,
    metrics: &AdmissionMetrics,
) -> (StatusCode, Vec<u8>) {
    review_with(body, index, options, metrics, &decide_with_injector)
}

/// The decision function the handler calls; a parameter so tests can inject a failing one.
pub type DecideFn<'a> =
    dyn Fn(&Pod, &Namespace, &[Arc<TracingPolicy>], &InjectOptions) -> Result<Outcome, InjectError> + 'a;

fn decide_with_injector(
    pod: &Pod,
    namespace: &Namespace,
    policies: &[Arc<TracingPolicy>],
    options: &InjectOptions,
) -> Result<Outcome, InjectError> {
    inject::decide(pod, namespace, policies.iter().map(Arc::as_ref), options)
}

/// [`review`] with the decision function as a parameter.
pub fn review_with(
    body: &[u8],
    index: &Index,
    options: &InjectOptions,
    metrics: &AdmissionMetrics,
    decide: &DecideFn<'_>,
) -> (StatusCode, Vec<u8>) {
    let started = Instant::now();
    let request = match parse_request(body) {
        Ok(request) => request,
        Err(invalid) => {
            tracing::warn!(reason = invalid.reason, error = %invalid.message, "rejected malformed admission request");
            metrics.record(AdmissionResult::invalid, invalid.reason, started.elapsed());
            return (StatusCode::BAD_REQUEST, invalid.message.into_bytes());
        }
    };
    let span = admission_span(&request);
    let _entered = span.enter();
    let verdict = admit(&request, index, options, decide);
    span.record("decision", verdict.result_str());
    span.record("reason", verdict.reason.as_str());
    log_verdict(&verdict);
    metrics.record(verdict.result, &verdict.reason, started.elapsed());
    match encode_review(verdict.response) {
        Ok(bytes) => (StatusCode::OK, bytes),
        Err(error) => {
            // Cannot happen with these types; the API server's failurePolicy (Ignore) still admits the pod.
            tracing::error!(%error, "could not serialize the admission response");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("could not serialize the admission response: {error}").into())
        }
    }
}

/// Serializes the response review. kube-core writes `patch` as an array of numbers; the API
/// server also accepts that, but its own encoding of `[]byte` is base64, so emit that instead.
fn encode_review(response: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine;
    let patch = response.patch.as_deref().map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let mut review = serde_json::to_value(response.into_review())?;
    if let (Some(patch), Some(slot)) = (patch, review.pointer_mut("/response/patch")) {
        *slot = serde_json::Value::String(patch);
    }
    serde_json::to_vec(&review)
}

/// Why a body was rejected with 400.
#[derive(Debug)]
struct Invalid {
    reason: &'static str,
    message: String,
}

fn parse_request(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, Invalid> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| Invalid {
        reason: "malformed_body",
        message: format!("request body is not a valid admission.k8s.io/v1 AdmissionReview: {e}"),
    })?;
    review.try_into().map_err(|_| Invalid {
        reason: "missing_request",
        message: "AdmissionReview has no `request` field: nothing to admit".to_string(),
    })
}

/// The span every admission runs in. `dryRun` requests are answered exactly like real ones:
/// admission has no side effects, so there is nothing to suppress; the field shows it in traces.
fn admission_span(request: &AdmissionRequest<DynamicObject>) -> tracing::Span {
    let generate_name = request.object.as_ref().and_then(|o| o.metadata.generate_name.as_deref());
    tracing::info_span!(
        "admission",
        uid = %request.uid,
        namespace = request.namespace.as_deref().unwrap_or(""),
        pod = %request.name,
        generate_name = generate_name.unwrap_or(""),
        operation = ?request.operation,
        dry_run = request.dry_run,
        decision = Empty,
        reason = Empty,
    )
}

/// The outcome of one admission: the response plus what it is counted as.
struct Verdict {
    response: AdmissionResponse,
    result: AdmissionResult,
    reason: String,
    /// Detail for the log line (errors only).
    detail: Option<String>,
}

impl Verdict {
    /// Allowed unchanged, with a warning to the client.
    fn unchanged(
        request: &AdmissionRequest<DynamicObject>,
        result: AdmissionResult,
        reason: &str,
        warning: String,
    ) -> Self {
        let response = with_warnings(AdmissionResponse::from(request), vec![warning.clone()]);
        Verdict { response, result, reason: reason.to_string(), detail: Some(warning) }
    }

    fn result_str(&self) -> &'static str {
        match self.result {
            AdmissionResult::injected => "injected",
            AdmissionResult::skipped => "skipped",
            AdmissionResult::error => "error",
            AdmissionResult::invalid => "invalid",
        }
    }
}

fn log_verdict(verdict: &Verdict) {
    let detail = verdict.detail.as_deref().unwrap_or("");
    match verdict.result {
        AdmissionResult::injected => tracing::info!("pod injected"),
        AdmissionResult::skipped => tracing::debug!("pod not injected"),
        AdmissionResult::invalid => tracing::warn!(detail, "admission request not handled; pod admitted unchanged"),
        AdmissionResult::error => tracing::error!(detail, "injection failed; pod admitted unchanged (fail open)"),
    }
}

fn admit(
    request: &AdmissionRequest<DynamicObject>,
    index: &Index,
    options: &InjectOptions,
    decide: &DecideFn<'_>,
) -> Verdict {
    use AdmissionResult::{error, invalid};
    let gvk = &request.kind;
    if !(gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod") || request.sub_resource.is_some() {
        let what = format!("{}/{} {}", gvk.group, gvk.version, gvk.kind);
        let msg = format!("{WARNING_PREFIX} webhook only handles core/v1 Pod, got {what}; admitted unchanged");
        return Verdict::unchanged(request, invalid, "wrong_kind", msg);
    }
    if request.operation != Operation::Create {
        let op = format!("{:?}", request.operation).to_uppercase();
        let msg = format!("{WARNING_PREFIX} webhook only handles CREATE, got {op}; admitted unchanged");
        return Verdict::unchanged(request, invalid, "unsupported_operation", msg);
    }
    let Some(object) = request.object.clone() else {
        let msg = format!("{WARNING_PREFIX} admission request carries no object; admitted unchanged");
        return Verdict::unchanged(request, invalid, "missing_object", msg);
    };
    let pod: Pod = match object.try_parse() {
        Ok(pod) => pod,
        Err(e) => {
            let msg = format!("{WARNING_PREFIX} object is not a valid Pod ({e}); admitted unchanged");
            return Verdict::unchanged(request, invalid, "pod_decode", msg);
        }
    };
    let Some(ns_name) = request.namespace.as_deref().or(pod.metadata.namespace.as_deref()) else {
        let msg = format!("{WARNING_PREFIX} admission request names no namespace; admitted unchanged");
        return Verdict::unchanged(request, invalid, "missing_namespace", msg);
    };
    let Some(namespace) = index.namespace(ns_name) else {
        // The watch has not seen it yet (just created, or the index is still syncing).
        let msg = format!("{WARNING_PREFIX} namespace {ns_name} is not known yet; pod admitted without tracing");
        return Verdict::unchanged(request, error, "namespace_unknown", msg);
    };
    let policies = index.policies();
    match catch_unwind(AssertUnwindSafe(|| decide(&pod, &namespace, &policies, options))) {
        Ok(Ok(outcome)) => from_outcome(request, outcome),
        Ok(Err(e)) => {
            let msg = format!("{WARNING_PREFIX} injection failed ({e}); pod admitted without tracing");
            Verdict::unchanged(request, error, "inject_error", msg)
        }
        Err(panic) => {
            let msg = format!(
                "{WARNING_PREFIX} internal error in the injector ({}); pod admitted without tracing",
                panic_message(panic.as_ref())
            );
            Verdict::unchanged(request, error, "panic", msg)
        }
    }
}

fn from_outcome(request: &AdmissionRequest<DynamicObject>, outcome: Outcome) -> Verdict {
    let response = AdmissionResponse::from(request);
    match outcome {
        Outcome::Skipped(reason) => {
            Verdict { response, result: AdmissionResult::skipped, reason: reason.as_str().to_string(), detail: None }
        }
        Outcome::Injected(mutation) => {
            let warnings = mutation.warnings.iter().map(|w| format!("{WARNING_PREFIX} {w}")).collect();
            let response = if mutation.patch.0.is_empty() { Ok(response) } else { response.with_patch(mutation.patch) };
            match response {
                Ok(response) => Verdict {
                    response: with_warnings(response, warnings),
                    result: AdmissionResult::injected,
                    reason: "none".to_string(),
                    detail: None,
                },
                Err(e) => {
                    let msg =
                        format!("{WARNING_PREFIX} patch could not be encoded ({e}); pod admitted without tracing");
                    Verdict::unchanged(request, AdmissionResult::error, "patch_encode", msg)
                }
            }
        }
    }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings.get_or_insert_with(Vec::new).extend(warnings);
    }
    response
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic with a non-string payload")
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
