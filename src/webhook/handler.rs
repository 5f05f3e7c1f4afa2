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
use kube::core::{DynamicObject, GroupVersionKind};
use kube::Resource;
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
    let admission = match parse_request(body) {
        Ok(admission) => admission,
        Err(invalid) => {
            tracing::warn!(reason = invalid.reason, error = %invalid.message, "rejected malformed admission request");
            metrics.record(AdmissionResult::Invalid, invalid.reason, started.elapsed());
            return (StatusCode::BAD_REQUEST, invalid.message.into_bytes());
        }
    };
    let span = admission.span();
    let _entered = span.enter();
    let verdict = admit(admission, index, options, decide);
    record_verdict(&span, &verdict);
    log_verdict(&verdict);
    metrics.record(verdict.result, &verdict.reason, started.elapsed());
    match encode_review(&verdict.response) {
        Ok(bytes) => (StatusCode::OK, bytes),
        Err(error) => {
            // Cannot happen with these types; the API server's failurePolicy (Ignore) still admits the pod.
            tracing::error!(%error, "could not serialize the admission response");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("could not serialize the admission response: {error}").into())
        }
    }
}

/// The response review on the wire. Written by hand rather than through kube-core's
/// `AdmissionReview` serializer, which writes `patch` as an array of numbers (one JSON value per
/// byte): the API server accepts that, but base64 is its own encoding of `[]byte` and is far
/// cheaper to produce.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: ResponseOut<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

fn encode_review(response: &AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    let patch = response.patch.as_deref().map(base64_json_string).transpose()?;
    let review = ReviewOut {
        api_version: &response.types.api_version,
        kind: &response.types.kind,
        response: ResponseOut {
            uid: &response.uid,
            allowed: response.allowed,
            status: &response.result,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &response.audit_annotations,
            warnings: response.warnings.as_ref(),
        },
    };
    serde_json::to_vec(&review)
}

/// `bytes` in base64 as a JSON string. Base64 needs no escaping, so the (large) patch is written
/// as it is instead of through the serializer's per-byte escaping.
fn base64_json_string(bytes: &[u8]) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
    use base64::Engine;
    let mut quoted = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
    quoted.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut quoted);
    quoted.push('"');
    serde_json::value::RawValue::from_string(quoted)
}

/// Why a body was rejected with 400.
#[derive(Debug)]
struct Invalid {
    reason: &'static str,
    message: String,
}

/// What the handler needs from a request, whatever type its object was decoded as.
struct Admission {
    /// `allowed: true`, uid and types copied from the request.
    base: AdmissionResponse,
    kind: GroupVersionKind,
    sub_resource: Option<String>,
    operation: Operation,
    namespace: Option<String>,
    name: String,
    dry_run: bool,
    /// `None`: no object in the request. `Err`: the object is not a valid Pod.
    pod: Result<Option<Pod>, String>,
}

impl Admission {
    fn new<T: Resource>(request: &AdmissionRequest<T>, pod: Result<Option<Pod>, String>) -> Self {
        Admission {
            base: AdmissionResponse::from(request),
            kind: request.kind.clone(),
            sub_resource: request.sub_resource.clone(),
            operation: request.operation.clone(),
            namespace: request.namespace.clone(),
            name: request.name.clone(),
            dry_run: request.dry_run,
            pod,
        }
    }

    fn from_pod_request(mut request: AdmissionRequest<Pod>) -> Self {
        let pod = request.object.take();
        Self::new(&request, Ok(pod))
    }

    /// Only objects that claim to be Pods are converted; others are reported by kind.
    fn from_dynamic_request(mut request: AdmissionRequest<DynamicObject>) -> Self {
        let object = if is_core_pod(&request.kind) { request.object.take() } else { None };
        let pod = object.map(|o| o.try_parse::<Pod>().map_err(|e| e.to_string())).transpose();
        Self::new(&request, pod)
    }

    /// The span every admission runs in. `dryRun` requests are answered exactly like real
    /// ones: admission has no side effects, so there is nothing to suppress; the field shows it.
    fn span(&self) -> tracing::Span {
        let pod = self.pod.as_ref().ok().and_then(Option::as_ref);
        // Pods created by controllers have no name yet, only a generateName.
        let generate_name = pod.and_then(|p| p.metadata.generate_name.as_deref());
        tracing::info_span!(
            "admission",
            uid = %self.base.uid,
            namespace = self.namespace.as_deref().unwrap_or(""),
            pod = %self.name,
            generate_name = generate_name.unwrap_or(""),
            workload = pod.and_then(owner).unwrap_or_default(),
            operation = ?self.operation,
            dry_run = self.dry_run,
            decision = Empty,
            reason = Empty,
            patch_bytes = Empty,
            error = Empty,
            otel.status_code = Empty,
        )
    }
}

/// The pod's controlling owner as `Kind/name` (e.g. `ReplicaSet/shop-7d9f`), for the span.
fn owner(pod: &Pod) -> Option<String> {
    let owners = pod.metadata.owner_references.as_ref()?;
    let owner = owners.iter().find(|o| o.controller == Some(true))?;
    Some(format!("{}/{}", owner.kind, owner.name))
}

fn is_core_pod(gvk: &GroupVersionKind) -> bool {
    gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Pod"
}

/// Decodes the review. The typed Pod path serves (almost) every request in one pass; anything
/// else is decoded generically so the response can say what it was.
fn parse_request(body: &[u8]) -> Result<Admission, Invalid> {
    if let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        if let Ok(request) = review.try_into() {
            return Ok(Admission::from_pod_request(request));
        }
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| Invalid {
        reason: "malformed_body",
        message: format!("request body is not a valid admission.k8s.io/v1 AdmissionReview: {e}"),
    })?;
    let request = review.try_into().map_err(|_| Invalid {
        reason: "missing_request",
        message: "AdmissionReview has no `request` field: nothing to admit".to_string(),
    })?;
    Ok(Admission::from_dynamic_request(request))
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
    fn unchanged(base: AdmissionResponse, result: AdmissionResult, reason: &str, warning: String) -> Self {
        let response = with_warnings(base, vec![warning.clone()]);
        Verdict { response, result, reason: reason.to_string(), detail: Some(warning) }
    }
}

/// The decision on the admission span (exported with the operator's traces).
fn record_verdict(span: &tracing::Span, verdict: &Verdict) {
    span.record("decision", verdict.result.as_str());
    span.record("reason", verdict.reason.as_str());
    span.record("patch_bytes", verdict.response.patch.as_ref().map_or(0, Vec::len));
    if verdict.result == AdmissionResult::Error {
        span.record("error", verdict.detail.as_deref().unwrap_or(""));
        span.record("otel.status_code", "error");
    }
}

fn log_verdict(verdict: &Verdict) {
    let detail = verdict.detail.as_deref().unwrap_or("");
    match verdict.result {
        AdmissionResult::Injected => tracing::info!("pod injected"),
        AdmissionResult::Skipped => tracing::debug!("pod not injected"),
        AdmissionResult::Invalid => tracing::warn!(detail, "admission request not handled; pod admitted unchanged"),
        AdmissionResult::Error => tracing::error!(detail, "injection failed; pod admitted unchanged (fail open)"),
    }
}

fn admit(admission: Admission, index: &Index, options: &InjectOptions, decide: &DecideFn<'_>) -> Verdict {
    use AdmissionResult::{Error, Invalid};
    let Admission { base, kind, sub_resource, operation, namespace, pod, .. } = admission;
    if !is_core_pod(&kind) || sub_resource.is_some() {
        let what = format!("{}/{} {}", kind.group, kind.version, kind.kind);
        let msg = format!("{WARNING_PREFIX} webhook only handles core/v1 Pod, got {what}; admitted unchanged");
        return Verdict::unchanged(base, Invalid, "wrong_kind", msg);
    }
    if operation != Operation::Create {
        let op = format!("{operation:?}").to_uppercase();
        let msg = format!("{WARNING_PREFIX} webhook only handles CREATE, got {op}; admitted unchanged");
        return Verdict::unchanged(base, Invalid, "unsupported_operation", msg);
    }
    let pod = match pod {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            let msg = format!("{WARNING_PREFIX} admission request carries no object; admitted unchanged");
            return Verdict::unchanged(base, Invalid, "missing_object", msg);
        }
        Err(e) => {
            let msg = format!("{WARNING_PREFIX} object is not a valid Pod ({e}); admitted unchanged");
            return Verdict::unchanged(base, Invalid, "pod_decode", msg);
        }
    };
    let Some(ns_name) = namespace.as_deref().or(pod.metadata.namespace.as_deref()) else {
        let msg = format!("{WARNING_PREFIX} admission request names no namespace; admitted unchanged");
        return Verdict::unchanged(base, Invalid, "missing_namespace", msg);
    };
    let Some(ns) = index.namespace(ns_name) else {
        // The watch has not seen it yet (just created, or the index is still syncing).
        let msg = format!("{WARNING_PREFIX} namespace {ns_name} is not known yet; pod admitted without tracing");
        return Verdict::unchanged(base, Error, "namespace_unknown", msg);
    };
    let policies = index.policies();
    match catch_unwind(AssertUnwindSafe(|| decide(&pod, &ns, &policies, options))) {
        Ok(Ok(outcome)) => from_outcome(base, &pod, outcome),
        Ok(Err(e)) => {
            let msg = format!("{WARNING_PREFIX} injection failed ({e}); pod admitted without tracing");
            Verdict::unchanged(base, Error, "inject_error", msg)
        }
        Err(panic) => {
            let msg = format!(
                "{WARNING_PREFIX} internal error in the injector ({}); pod admitted without tracing",
                panic_message(panic.as_ref())
            );
            Verdict::unchanged(base, Error, "panic", msg)
        }
    }
}

fn from_outcome(base: AdmissionResponse, pod: &Pod, outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Skipped(reason) => skipped(base, pod, &reason),
        Outcome::Injected(mutation) => {
            let warnings = mutation.warnings.iter().map(|w| format!("{WARNING_PREFIX} {w}")).collect();
            let response =
                if mutation.patch.0.is_empty() { Ok(base.clone()) } else { base.clone().with_patch(mutation.patch) };
            match response {
                Ok(response) => Verdict {
                    response: with_warnings(response, warnings),
                    result: AdmissionResult::Injected,
                    reason: "none".to_string(),
                    detail: None,
                },
                Err(e) => {
                    let msg =
                        format!("{WARNING_PREFIX} patch could not be encoded ({e}); pod admitted without tracing");
                    Verdict::unchanged(base, AdmissionResult::Error, "patch_encode", msg)
                }
            }
        }
    }
}

/// A skipped pod is admitted unchanged, except that a conflict (the namespace wants tracing, this
/// pod cannot have it) is recorded on the pod and told to the client, so its owner can act.
fn skipped(base: AdmissionResponse, pod: &Pod, reason: &inject::SkipReason) -> Verdict {
    let detail = reason.detail().map(String::from);
    let response = match inject::skip_patch(pod, reason) {
        Some(patch) => match base.clone().with_patch(patch) {
            Ok(patched) => {
                let warning = format!("{WARNING_PREFIX} pod not injected: {}", reason.status_annotation());
                with_warnings(patched, vec![warning])
            }
            Err(_) => base,
        },
        None => base,
    };
    Verdict { response, result: AdmissionResult::Skipped, reason: reason.as_str().to_string(), detail }
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
