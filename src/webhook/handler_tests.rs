use super::*;
use crate::api::keys::NAMESPACE_ENABLED_LABEL;
use crate::inject::SkipReason;
use serde_json::{json, Value};

fn namespace(name: &str, enabled: bool) -> Namespace {
    let labels = if enabled { json!({ NAMESPACE_ENABLED_LABEL: "true" }) } else { json!({}) };
    serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap()
}

/// The sample policy, with `active` namespaces recorded as Active in its status.
fn policy(active: &[&str]) -> TracingPolicy {
    let namespaces: Vec<Value> = active.iter().map(|n| json!({ "name": n, "state": "Active" })).collect();
    serde_json::from_value(json!({
        "apiVersion": "tracelight.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": { "name": "default", "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "collector": { "endpoint": "http://otel-collector.observability:4317", "protocol": "grpc" } },
        "status": { "namespaces": namespaces },
    }))
    .unwrap()
}

fn pod_object() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "checkout-7d9f8-", "labels": { "app": "checkout" } },
        "spec": { "containers": [{ "name": "app", "image": "registry.example/checkout:1.2" }] },
    })
}

fn review_body(kind: &str, operation: &str, namespace: &str, object: Option<Value>) -> Vec<u8> {
    let mut request = json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": { "group": "", "version": "v1", "kind": kind },
        "resource": { "group": "", "version": "v1", "resource": "pods" },
        "name": "",
        "namespace": namespace,
        "operation": operation,
        "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
        "dryRun": false,
    });
    if let Some(object) = object {
        request["object"] = object;
    }
    serde_json::to_vec(&json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request }))
        .unwrap()
}

fn view() -> ClusterView {
    ClusterView::from_objects(
        vec![namespace("shop", true), namespace("pending", true), namespace("plain", false)],
        vec![policy(&["shop"])],
    )
}

/// Runs a review through `decide` and returns the HTTP status and the parsed response.
fn run(body: &[u8], decide: &DecideFn<'_>) -> (StatusCode, Value, AdmissionMetrics) {
    let metrics = AdmissionMetrics::unregistered();
    let (status, bytes) = review_with(body, &view(), &InjectOptions::default(), &metrics, decide);
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, metrics)
}

fn never_called(_: &Pod, _: &Namespace, _: &[Arc<TracingPolicy>], _: &InjectOptions) -> Result<Outcome, InjectError> {
    panic!("decide must not be called for this request")
}

fn warnings(response: &Value) -> Vec<String> {
    response["response"]["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(String::from))
        .collect()
}

fn assert_allowed_unchanged(response: &Value) {
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none(), "unexpected patch in {response}");
}

#[test]
fn malformed_json_is_rejected_with_400_naming_the_problem() {
    let (status, body, metrics) = run(b"{\"kind\": \"AdmissionReview\", ", &never_called);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body.as_str().unwrap();
    assert!(message.contains("not a valid admission.k8s.io/v1 AdmissionReview"), "{message}");
    assert!(message.contains("EOF"), "serde's position should be in the message: {message}");
    assert_eq!(metrics.count(AdmissionResult::Invalid, "malformed_body"), 1);
}

#[test]
fn review_without_request_is_rejected_with_400() {
    let (status, body, _) = run(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, &never_called);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.as_str().unwrap().contains("no `request`"), "{body}");
}

#[test]
fn wrong_kind_is_allowed_unchanged_with_warning() {
    let deployment = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" } });
    let (status, response, metrics) =
        run(&review_body("Deployment", "CREATE", "shop", Some(deployment)), &never_called);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("only handles core/v1 Pod, got /v1 Deployment"), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Invalid, "wrong_kind"), 1);
}

#[test]
fn missing_object_is_allowed_unchanged_with_warning() {
    let (status, response, _) = run(&review_body("Pod", "CREATE", "shop", None), &never_called);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("carries no object"), "{response}");
}

#[test]
fn update_is_allowed_unchanged_with_warning() {
    let (status, response, _) = run(&review_body("Pod", "UPDATE", "shop", Some(pod_object())), &never_called);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("only handles CREATE, got UPDATE"), "{response}");
}

#[test]
fn unknown_namespace_is_allowed_unchanged_with_warning() {
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "nowhere", Some(pod_object())), &never_called);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("namespace nowhere is not known"), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Error, "namespace_unknown"), 1);
}

#[test]
fn panic_in_decision_is_allowed_unchanged_with_warning() {
    let exploding =
        |_: &Pod, _: &Namespace, _: &[Arc<TracingPolicy>], _: &InjectOptions| -> Result<Outcome, InjectError> {
            panic!("boom in the injector")
        };
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "shop", Some(pod_object())), &exploding);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("internal error in the injector (boom in the injector)"), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Error, "panic"), 1);
}

#[test]
fn injector_error_is_allowed_unchanged_with_warning() {
    let failing =
        |_: &Pod, _: &Namespace, _: &[Arc<TracingPolicy>], _: &InjectOptions| -> Result<Outcome, InjectError> {
            Err(InjectError::Serialize(serde_json::from_str::<Value>("{").unwrap_err()))
        };
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "shop", Some(pod_object())), &failing);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("injection failed"), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Error, "inject_error"), 1);
}

#[test]
fn decision_receives_pod_namespace_and_policies_from_the_cluster_view() {
    let checking = |pod: &Pod, ns: &Namespace, policies: &[Arc<TracingPolicy>], _: &InjectOptions| {
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("checkout-7d9f8-"));
        assert_eq!(ns.metadata.name.as_deref(), Some("shop"));
        assert_eq!(policies.len(), 1);
        Ok(Outcome::Skipped(SkipReason::OptedOut))
    };
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "shop", Some(pod_object())), &checking);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(response["response"].get("warnings").is_none(), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Skipped, "opted_out"), 1);
}

#[test]
fn dry_run_is_answered_like_a_real_request() {
    let skip = |_: &Pod, _: &Namespace, _: &[Arc<TracingPolicy>], _: &InjectOptions| {
        Ok(Outcome::Skipped(SkipReason::NotSelected))
    };
    let mut review: Value = serde_json::from_slice(&review_body("Pod", "CREATE", "shop", Some(pod_object()))).unwrap();
    review["request"]["dryRun"] = json!(true);
    let (status, response, metrics) = run(&serde_json::to_vec(&review).unwrap(), &skip);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert_eq!(metrics.count(AdmissionResult::Skipped, "not_selected"), 1);
}

#[test]
fn pod_decoded_generically_when_the_typed_decode_fails() {
    // A Pod the typed decode rejects: the generic path still answers, and says why.
    let mut object = pod_object();
    object["spec"]["containers"] = json!("not a list");
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "shop", Some(object)), &never_called);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert!(warnings(&response)[0].contains("object is not a valid Pod"), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Invalid, "pod_decode"), 1);
}

#[test]
fn injected_outcome_becomes_a_json_patch_with_warnings() {
    let injecting = |pod: &Pod, _: &Namespace, _: &[Arc<TracingPolicy>], _: &InjectOptions| {
        let patch: json_patch::Patch = serde_json::from_value(
            json!([{ "op": "add", "path": "/metadata/labels/tracelight.io~1injected", "value": "true" }]),
        )
        .unwrap();
        Ok(Outcome::Injected(Box::new(inject::Mutation {
            pod: Some(pod.clone()),
            patch: inject::Patch::from(&patch),
            manifest_hash: "abc".into(),
            warnings: vec!["language annotation names no container".into()],
        })))
    };
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "shop", Some(pod_object())), &injecting);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let patch = base64_decode(response["response"]["patch"].as_str().unwrap());
    assert_eq!(patch[0]["path"], "/metadata/labels/tracelight.io~1injected");
    assert_eq!(warnings(&response), vec!["tracelight: language annotation names no container".to_string()]);
    assert_eq!(metrics.count(AdmissionResult::Injected, "none"), 1);
}

fn base64_decode(text: &str) -> Value {
    use base64::Engine;
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
}

/// With the real injector: the paths that must never inject.
mod with_injector {
    use super::*;

    fn real(body: &[u8]) -> (StatusCode, Value, AdmissionMetrics) {
        run(body, &decide_with_injector)
    }

    #[test]
    fn ungoverned_namespace_is_allowed_without_patch() {
        let (status, response, metrics) = real(&review_body("Pod", "CREATE", "plain", Some(pod_object())));
        assert_eq!(status, StatusCode::OK);
        assert_allowed_unchanged(&response);
        assert_eq!(metrics.count(AdmissionResult::Skipped, "namespace_not_governed"), 1);
    }

    #[test]
    fn namespace_not_active_in_policy_status_is_allowed_without_patch() {
        let (status, response, metrics) = real(&review_body("Pod", "CREATE", "pending", Some(pod_object())));
        assert_eq!(status, StatusCode::OK);
        assert_allowed_unchanged(&response);
        assert_eq!(metrics.count(AdmissionResult::Skipped, "namespace_not_active"), 1);
    }

    #[test]
    fn active_namespace_gets_a_patch() {
        let (status, response, metrics) = real(&review_body("Pod", "CREATE", "shop", Some(pod_object())));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response["response"]["allowed"], true);
        assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
        let patch = base64_decode(response["response"]["patch"].as_str().unwrap());
        assert!(!patch.as_array().unwrap().is_empty());
        assert_eq!(metrics.count(AdmissionResult::Injected, "none"), 1);
    }
}

/// The namespace is decided before the pod is decoded: a pod of a namespace no policy injects is
/// never read (an object the typed decode would reject shows it).
#[test]
fn ungoverned_namespace_is_decided_without_decoding_the_pod() {
    let mut object = pod_object();
    object["spec"]["containers"] = json!("not a list");
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "plain", Some(object)), &never_called);
    assert_eq!(status, StatusCode::OK);
    assert_allowed_unchanged(&response);
    assert_eq!(metrics.count(AdmissionResult::Skipped, "namespace_not_governed"), 1);
    assert_eq!(metrics.count(AdmissionResult::Invalid, "pod_decode"), 0);
}

/// A pod the namespace wants traced but that cannot be injected is told so and marked.
#[test]
fn conflict_skip_is_recorded_on_the_pod_and_warned() {
    let conflicting = |_: &Pod, _: &Namespace, _: &[Arc<TracingPolicy>], _: &InjectOptions| {
        Ok(Outcome::Skipped(SkipReason::PortConflict("no free port for the agent's admin listener near 13133".into())))
    };
    let (status, response, metrics) = run(&review_body("Pod", "CREATE", "shop", Some(pod_object())), &conflicting);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["response"]["allowed"], true);
    let patch = base64_decode(response["response"]["patch"].as_str().unwrap());
    assert_eq!(patch[0]["path"], "/metadata/annotations");
    let status_value = &patch[0]["value"]["tracelight.io/injection-status"];
    assert_eq!(status_value, "skipped: port_conflict: no free port for the agent's admin listener near 13133");
    assert!(warnings(&response)[0].contains("pod not injected: skipped: port_conflict"), "{response}");
    assert_eq!(metrics.count(AdmissionResult::Skipped, "port_conflict"), 1);
}
