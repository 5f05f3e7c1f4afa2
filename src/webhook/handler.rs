//! `POST /mutate-pods`: AdmissionReview in, AdmissionReview out.
//!
//! All decisions come from [`crate::inject::decide`]; this module only parses, looks up the
//! cluster view, and turns the outcome into a response. The webhook never blocks pod creation: every
//! failure past parsing the body becomes `allowed: true` with a warning (fail open).

use super::metrics::{AdmissionMetrics, AdmissionResult};
use crate::api::TracingPolicy;
use crate::cluster_view::ClusterView;
use crate::inject::{self, InjectError, InjectOptions, Outcome};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::{GroupVersionKind, TypeMeta};
use serde_json::value::RawValue;
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
    pub view: ClusterView,
    pub options: Arc<InjectOptions>,
    pub metrics: AdmissionMetrics,
}

/// The admission routes, with the body size limit (larger bodies get 413: at once when the
/// `Content-Length` says so, else as soon as the body streams past it).
pub fn router(state: AdmissionState) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .with_state(state)
}

/// 413 for a request whose `Content-Length` exceeds [`MAX_BODY_BYTES`], before its body is read
/// (axum's limit applies only as the body arrives, so a client could otherwise hold the request
/// open while sending nothing).
async fn refuse_declared_oversize(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return (StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY_BYTES} bytes"))
            .into_response();
    }
    next.run(request).await
}

async fn mutate_pods(State(state): State<AdmissionState>, body: Bytes) -> Response {
    // In-memory work measured in microseconds: no need to move it off the async worker.
    let (status, body) = review(&body, &state.view, &state.options, &state.metrics);
    let content_type = if status == StatusCode::OK { "application/json" } else { "text/plain; charset=utf-8" };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Answers one admission review. Returns 400 with a plain-text message when the body is not an
/// AdmissionReview; otherwise 200 with the response review (always `allowed: true`).
pub fn review(
    body: &[u8],
    view: &ClusterView,
    options: &InjectOptions,
    metrics: &AdmissionMetrics,
) -> (StatusCode, Vec<u8>) {
    review_with(body, view, options, metrics, &decide_with_injector)
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
    view: &ClusterView,
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
    let verdict = admit(admission, &span, view, options, decide);
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

/// The review as first read: everything the handler needs but the object, which stays raw JSON
/// until the decision needs it. Read without kube-core's `AdmissionReview`, whose flattened
/// `TypeMeta` makes serde buffer the whole review (pod included) before decoding it a second
/// time; most admissions are for namespaces no policy governs and never need the pod.
#[derive(serde::Deserialize)]
struct ReviewIn<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<RequestIn<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    operation: Operation,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

/// What the handler needs from a request.
struct Admission<'a> {
    /// `allowed: true`, uid and types copied from the request.
    base: AdmissionResponse,
    kind: GroupVersionKind,
    sub_resource: Option<String>,
    operation: Operation,
    namespace: Option<String>,
    name: String,
    dry_run: bool,
    /// The object, still undecoded (`None`: no object in the request).
    object: Option<&'a RawValue>,
}

impl<'a> Admission<'a> {
    fn new(types: TypeMeta, request: RequestIn<'a>) -> Self {
        let mut base = AdmissionResponse::invalid("");
        base.types = types;
        base.uid = request.uid;
        base.allowed = true;
        base.result = kube::core::Status::default();
        Admission {
            base,
            kind: request.kind,
            sub_resource: request.sub_resource,
            operation: request.operation,
            namespace: request.namespace,
            name: request.name,
            dry_run: request.dry_run,
            object: request.object,
        }
    }

    /// The span every admission runs in. `dryRun` requests are answered exactly like real
    /// ones: admission has no side effects, so there is nothing to suppress; the field shows it.
    /// The pod's generateName and owner are recorded once the pod is decoded.
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "admission",
            uid = %self.base.uid,
            namespace = self.namespace.as_deref().unwrap_or(""),
            pod = %self.name,
            generate_name = Empty,
            workload = Empty,
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

/// Records the decoded pod's identity on the admission span.
fn record_pod(span: &tracing::Span, pod: &Pod) {
    // Pods created by controllers have no name yet, only a generateName.
    span.record("generate_name", pod.metadata.generate_name.as_deref().unwrap_or(""));
    span.record("workload", owner(pod).unwrap_or_default());
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

/// Decodes the review, leaving the object raw.
fn parse_request(body: &[u8]) -> Result<Admission<'_>, Invalid> {
    let review: ReviewIn = serde_json::from_slice(body).map_err(|e| Invalid {
        reason: "malformed_body",
        message: format!("request body is not a valid admission.k8s.io/v1 AdmissionReview: {e}"),
    })?;
    let request = review.request.ok_or_else(|| Invalid {
        reason: "missing_request",
        message: "AdmissionReview has no `request` field: nothing to admit".to_string(),
    })?;
    Ok(Admission::new(TypeMeta { api_version: review.api_version, kind: review.kind }, request))
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

fn admit(
    admission: Admission<'_>,
    span: &tracing::Span,
    view: &ClusterView,
    options: &InjectOptions,
    decide: &DecideFn<'_>,
) -> Verdict {
    use AdmissionResult::{Error, Invalid};
    let Admission { base, kind, sub_resource, operation, namespace, object, .. } = admission;
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
    let Some(object) = object.filter(|o| o.get() != "null") else {
        let msg = format!("{WARNING_PREFIX} admission request carries no object; admitted unchanged");
        return Verdict::unchanged(base, Invalid, "missing_object", msg);
    };
    // The namespace decides first: a pod of a namespace no policy injects now is not decoded.
    let policies = view.policies();
    let gated = match namespace.as_deref().map(|ns| gate(ns, view, &policies)) {
        Some(Ok(ns)) => Some(ns),
        Some(Err(closed)) => return closed.verdict(base),
        None => None,
    };
    let pod: Pod = match serde_json::from_str(object.get()) {
        Ok(pod) => pod,
        Err(e) => {
            let msg = format!("{WARNING_PREFIX} object is not a valid Pod ({e}); admitted unchanged");
            return Verdict::unchanged(base, Invalid, "pod_decode", msg);
        }
    };
    record_pod(span, &pod);
    let ns = match gated {
        Some(ns) => ns,
        None => {
            let Some(ns_name) = pod.metadata.namespace.as_deref() else {
                let msg = format!("{WARNING_PREFIX} admission request names no namespace; admitted unchanged");
                return Verdict::unchanged(base, Invalid, "missing_namespace", msg);
            };
            match gate(ns_name, view, &policies) {
                Ok(ns) => ns,
                Err(closed) => return closed.verdict(base),
            }
        }
    };
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

/// Why the pods of a namespace are not decided now, known before a pod is decoded.
enum Closed {
    /// The cluster view does not know the namespace (just created, or still syncing).
    Unknown(String),
    /// No policy injects the namespace's pods now.
    Skip(inject::SkipReason),
}

impl Closed {
    /// The pod is admitted unchanged.
    fn verdict(self, base: AdmissionResponse) -> Verdict {
        match self {
            Closed::Unknown(ns) => {
                let msg = format!("{WARNING_PREFIX} namespace {ns} is not known yet; pod admitted without tracing");
                Verdict::unchanged(base, AdmissionResult::Error, "namespace_unknown", msg)
            }
            Closed::Skip(reason) => Verdict {
                response: base,
                result: AdmissionResult::Skipped,
                reason: reason.as_str().to_string(),
                detail: None,
            },
        }
    }
}

/// The namespace `ns_name`, when a policy injects its pods now.
fn gate(ns_name: &str, view: &ClusterView, policies: &[Arc<TracingPolicy>]) -> Result<Arc<Namespace>, Closed> {
    let ns = view.namespace(ns_name).ok_or_else(|| Closed::Unknown(ns_name.to_string()))?;
    inject::namespace_gate(&ns, policies.iter().map(Arc::as_ref)).map_err(Closed::Skip)?;
    Ok(ns)
}

fn from_outcome(base: AdmissionResponse, pod: &Pod, outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Skipped(reason) => skipped(base, pod, &reason),
        Outcome::Injected(mutation) => {
            let warnings = mutation.warnings.iter().map(|w| format!("{WARNING_PREFIX} {w}")).collect();
            let mut response = base;
            if !mutation.patch.is_empty() {
                // The patch is already JSON; `encode_review` sets patchType with it.
                response.patch = Some(mutation.patch.into_bytes());
            }
            Verdict {
                response: with_warnings(response, warnings),
                result: AdmissionResult::Injected,
                reason: "none".to_string(),
                detail: None,
            }
        }
    }
}

/// A skipped pod is admitted unchanged, except that a conflict (the namespace wants tracing, this
/// pod cannot have it) is recorded on the pod and told to the client, so its owner can act.
fn skipped(base: AdmissionResponse, pod: &Pod, reason: &inject::SkipReason) -> Verdict {
    let detail = reason.detail().map(String::from);
    let response = match inject::skip_patch(pod, reason) {
        Some(patch) => {
            let mut patched = base;
            patched.patch = Some(patch.into_bytes());
            let warning = format!("{WARNING_PREFIX} pod not injected: {}", reason.status_annotation());
            with_warnings(patched, vec![warning])
        }
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
