//! The order of the reconciler's API requests, without a cluster: a scripted stand-in for the API
//! server records every request and answers it (echoing what was written), and each test asserts
//! the exact sequence for one key reconcile. The e2e suite proves the same against a real API
//! server; these run in `make unit` in milliseconds and name the broken rule when the order
//! changes.

use super::reconcile::{error_policy, reconcile, Context, Error};
use super::{events, metrics::ControllerMetrics};
use crate::api::{NamespaceState, NamespaceStatus, TracingPolicy, TracingPolicySpec, TracingPolicyStatus};
use crate::inject::InjectOptions;
use crate::rollout::pod::PodSummary;
use crate::telemetry::Metrics;
use crate::webhook::reports::ReportStore;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the reconciler sent: method and path (query left out).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    method: Method,
    path: String,
}

impl Sent {
    fn new(method: Method, path: &str) -> Sent {
        Sent { method, path: path.to_string() }
    }
}

/// The stand-in API server: records requests, fails the ones whose path contains a configured
/// fragment with 500, and otherwise answers as a real server would for what the reconciler reads.
#[derive(Clone, Default)]
struct ApiServer {
    sent: Arc<Mutex<Vec<(Sent, Value)>>>,
    failing: Arc<Mutex<Vec<String>>>,
    policy: Arc<Mutex<Value>>,
}

impl ApiServer {
    fn client(&self) -> Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(server.answer(request).await) }
        });
        Client::new(service, "default")
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        use http_body_util::BodyExt as _;
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_string();
        self.sent.lock().unwrap().push((Sent::new(parts.method.clone(), &path), body.clone()));
        if self.failing.lock().unwrap().iter().any(|f| path.contains(f.as_str())) {
            return respond(StatusCode::INTERNAL_SERVER_ERROR, &status_body(500, "injected failure"));
        }
        if parts.method == Method::DELETE {
            return respond(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}),
            );
        }
        let answer = if path.contains("/tracingpolicies/") {
            // The policy as it is after the write (the reconciler reads nothing else from it).
            self.policy.lock().unwrap().clone()
        } else if path.contains("/secrets/") && parts.method == Method::GET {
            return respond(StatusCode::NOT_FOUND, &status_body(404, "not found"));
        } else {
            echo(&body, &path)
        };
        respond(StatusCode::OK, &answer)
    }

    fn fail(&self, path_fragment: &str) {
        self.failing.lock().unwrap().push(path_fragment.to_string());
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().iter().map(|(s, _)| s.clone()).collect()
    }

    fn body_of(&self, method: Method, path: &str) -> Value {
        let sent = self.sent.lock().unwrap();
        sent.iter().find(|(s, _)| s.method == method && s.path == path).map(|(_, b)| b.clone()).unwrap_or(Value::Null)
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

fn status_body(code: u16, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "message": message, "reason": ""})
}

/// What the server would return for a write: the object written (server-side apply and create
/// send whole objects), or a minimal object of the path's kind for a patch.
fn echo(body: &Value, path: &str) -> Value {
    if body.get("kind").is_some() {
        return body.clone();
    }
    let name = path.rsplit('/').next().unwrap_or_default();
    let (api_version, kind) =
        if path.contains("/deployments/") { ("apps/v1", "Deployment") } else { ("v1", "ConfigMap") };
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}})
}

/// A policy named `default` governing namespaces labelled `tracelight.io/enabled=true`, in one
/// phase, with or without its finalizer and status.
fn policy(finalizer: bool, status: Option<TracingPolicyStatus>) -> TracingPolicy {
    let spec: TracingPolicySpec = serde_json::from_value(json!({
        "collector": {"endpoint": "http://collector.observability:4317", "protocol": "grpc"},
        "rollout": {"phases": [{"name": "all", "batchSize": 5, "soakDuration": "1s", "healthDeadline": "60s"}]}
    }))
    .unwrap();
    let mut p = TracingPolicy::new("default", spec);
    p.metadata.uid = Some("policy-uid".into());
    p.metadata.generation = Some(1);
    p.metadata.resource_version = Some("1".into());
    p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
    if finalizer {
        p.metadata.finalizers = Some(vec!["tracelight.io/cleanup".into()]);
    }
    p.status = status;
    p
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("{name}-uid"), "labels": {"tracelight.io/enabled": "true"}}
    }))
    .unwrap()
}

/// A Deployment of 1 replica whose pod has not been injected (created before the policy).
fn uninjected_deployment(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": format!("{name}-uid"), "generation": 1, "resourceVersion": "5"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        },
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    })
}

/// The running pod of Deployment `name` (through its ReplicaSet), injected or not.
fn pod_of(ns: &str, name: &str, injected: bool) -> PodSummary {
    let mut labels = json!({"app": name, "pod-template-hash": "7d9c5b8f4"});
    let mut annotations = json!({});
    if injected {
        labels["tracelight.io/injected"] = json!("true");
        annotations["tracelight.io/manifest-hash"] = json!("0123456789abcdef");
    }
    let pod: super::cache::WatchedPod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{name}-7d9c5b8f4-x2k4p"), "namespace": ns, "uid": format!("{name}-pod-uid"),
            "creationTimestamp": "2027-01-15T08:00:00Z", "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-7d9c5b8f4"), "uid": "rs", "controller": true}]
        },
        "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "app:1", "imageID": "", "ready": true, "restartCount": 0}]}
    }))
    .unwrap();
    pod.pod
}

fn ready<K>(mut writer: Writer<K>, objects: Vec<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// A context whose caches hold `namespaces` and `deployments` (filled), on the stand-in server.
fn context(
    server: &ApiServer,
    policy: &TracingPolicy,
    namespaces: &[&str],
    deployments: Vec<Value>,
    running: Vec<PodSummary>,
) -> Arc<Context> {
    context_owning(server, policy, namespaces, deployments, running, &[])
}

/// [`context`], with the policy's agent ConfigMap cached in each of `owned_in`.
fn context_owning(
    server: &ApiServer,
    policy: &TracingPolicy,
    namespaces: &[&str],
    deployments: Vec<Value>,
    running: Vec<PodSummary>,
    owned_in: &[&str],
) -> Arc<Context> {
    let client = server.client();
    *server.policy.lock().unwrap() = serde_json::to_value(policy).unwrap();
    let (policies, w) = reflector::store::<TracingPolicy>();
    ready(w, vec![policy.clone()]);
    let (ns_store, w) = reflector::store::<Namespace>();
    ready(w, namespaces.iter().map(|n| namespace(n)).collect());
    let (pods, w) = reflector::store::<PodSummary>();
    ready(w, running);
    let (owned_configmaps, w) = reflector::store();
    let owned: Vec<kube::core::PartialObjectMeta<ConfigMap>> = owned_in
        .iter()
        .map(|ns| {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "tracelight-agent", "namespace": ns, "resourceVersion": "7",
                    "labels": {"app.kubernetes.io/managed-by": "tracelight", "tracelight.io/policy": "default"}
                }
            }))
            .unwrap()
        })
        .collect();
    ready(w, owned);
    let (owned_secrets, w) = reflector::store();
    ready(w, Vec::new());
    let (deployment_store, w) = reflector::store::<super::cache::CachedWorkload<Deployment>>();
    ready(w, deployments.into_iter().map(|d| serde_json::from_value(d).unwrap()).collect());
    let (statefulsets, w) = reflector::store();
    ready(w, Vec::new());
    let (daemonsets, w) = reflector::store();
    ready(w, Vec::new());
    let (reconcile_all, _) = futures::channel::mpsc::unbounded();
    Arc::new(Context {
        events: events::Publisher::new(client.clone(), "tracelight-controller", Some("test".into())),
        client,
        metrics: ControllerMetrics::register(&Metrics::default()),
        policies,
        namespaces: ns_store,
        pods,
        owned_configmaps,
        owned_secrets,
        deployments: deployment_store,
        statefulsets,
        daemonsets,
        inject_options: InjectOptions::default(),
        secret_sources: crate::decision::agent_objects::SecretSources::new("tracelight-system", &[]),
        requested: Default::default(),
        written: Default::default(),
        reports: ReportStore::default(),
        serving_ca: Arc::new(crate::webhook::certs::CertResolver::new()),
        continuity: Default::default(),
        reconcile_all,
        after_rollout: super::after_rollout::State::new("tracelight-system"),
    })
}

const POLICY: &str = "/apis/tracelight.io/v1alpha1/tracingpolicies/default";
const STATUS: &str = "/apis/tracelight.io/v1alpha1/tracingpolicies/default/status";

fn configmap(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps/tracelight-agent")
}

fn events(ns: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")
}

fn deployment(ns: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}")
}

fn active(ns: &str) -> TracingPolicyStatus {
    TracingPolicyStatus {
        namespaces: vec![NamespaceStatus { name: ns.into(), state: NamespaceState::Active, ..Default::default() }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_new_policy_gets_its_finalizer_and_nothing_else() {
    let server = ApiServer::default();
    let p = policy(false, None);
    let ctx = context(&server, &p, &["shop"], Vec::new(), Vec::new());
    let action = reconcile(Arc::new(p), ctx).await.unwrap();
    assert_eq!(server.sent(), [Sent::new(Method::PATCH, POLICY)]);
    let patch = server.body_of(Method::PATCH, POLICY);
    assert_eq!(patch[1]["value"], json!(["tracelight.io/cleanup"]), "a JSON patch adding the finalizer: {patch}");
    assert_eq!(action, Action::await_change(), "the finalizer's write wakes the next reconcile");
}

#[tokio::test]
async fn activation_writes_the_agent_config_then_the_status_then_the_event() {
    let server = ApiServer::default();
    let p = policy(true, None);
    let ctx = context(&server, &p, &["shop"], Vec::new(), Vec::new());
    reconcile(Arc::new(p), ctx).await.unwrap();
    assert_eq!(
        server.sent(),
        [
            // The webhook injects only where the agent's config exists: it is written first.
            Sent::new(Method::PATCH, &configmap("shop")),
            // "Active" is recorded once the config is there...
            Sent::new(Method::PATCH, STATUS),
            // ...and announced after the status says so (Events about a cluster-scoped policy live
            // in `default`; the namespace is the Event's related object).
            Sent::new(Method::POST, &events("default")),
        ]
    );
    let status = server.body_of(Method::PATCH, STATUS);
    assert_eq!(status["status"]["namespaces"][0]["state"], "Active", "{status}");
    let event = server.body_of(Method::POST, &events("default"));
    assert_eq!(
        (&event["reason"], &event["related"]["name"]),
        (&json!("NamespaceActivated"), &json!("shop")),
        "{event}"
    );
}

#[tokio::test]
async fn restarts_come_after_the_status_that_records_them() {
    let server = ApiServer::default();
    let p = policy(true, Some(active("shop")));
    let ctx =
        context(&server, &p, &["shop"], vec![uninjected_deployment("shop", "web")], vec![pod_of("shop", "web", false)]);
    reconcile(Arc::new(p), ctx).await.unwrap();
    let sent = server.sent();
    let status_at = sent.iter().position(|s| s.path == STATUS).expect("a status write");
    let restart_at = sent
        .iter()
        .position(|s| s.method == Method::PATCH && s.path == deployment("shop", "web"))
        .unwrap_or_else(|| panic!("no restart of shop/web in {sent:?}"));
    assert!(status_at < restart_at, "the restart was sent before the status that records it: {sent:?}");
    let restart = server.body_of(Method::PATCH, &deployment("shop", "web"));
    let annotations = &restart["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations.get("tracelight.io/restart-hash").is_some(), "the restart carries its hash: {restart}");
}

#[tokio::test]
async fn a_failed_config_write_is_recorded_in_the_status_and_fails_the_reconcile() {
    let server = ApiServer::default();
    server.fail("/configmaps/");
    let p = policy(true, None);
    let ctx = context(&server, &p, &["shop"], Vec::new(), Vec::new());
    let error = reconcile(Arc::new(p.clone()), ctx.clone()).await.unwrap_err();
    assert!(matches!(&error, Error::Finalizer(inner) if inner.to_string().contains("writing agent objects failed")));
    assert_eq!(server.sent(), [Sent::new(Method::PATCH, &configmap("shop")), Sent::new(Method::PATCH, STATUS)]);
    let status = server.body_of(Method::PATCH, STATUS);
    assert_ne!(status["status"]["namespaces"][0]["state"], "Active", "not Active without its config: {status}");
    assert!(!status.to_string().contains("NamespaceActivated"));
    assert_eq!(error_policy(Arc::new(p), &error, ctx), Action::requeue(crate::decision::RETRY_AFTER));
}

#[tokio::test]
async fn a_deleted_policy_keeps_its_finalizer_while_workloads_lose_injection() {
    let server = ApiServer::default();
    let mut p = policy(true, Some(active("shop")));
    p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_800_000_100).unwrap()));
    // An injected Deployment: its template carries the restart hash of an earlier rollout.
    let mut web = uninjected_deployment("shop", "web");
    web["spec"]["template"]["metadata"]["annotations"] =
        json!({"tracelight.io/restart-hash": "0123456789abcdef", "tracelight.io/restarted-at": "2027-01-15T08:00:00Z"});
    let ctx = context(&server, &p, &["shop"], vec![web], vec![pod_of("shop", "web", true)]);
    let result = reconcile(Arc::new(p.clone()), ctx.clone()).await;
    let sent = server.sent();
    assert!(
        !sent.iter().any(|s| s.path == POLICY),
        "the finalizer must stay while a workload still carries injection: {sent:?}"
    );
    assert!(
        sent.iter().any(|s| s.method == Method::PATCH && s.path == deployment("shop", "web")),
        "the workload is restarted without injection: {sent:?}"
    );
    let error = result.expect_err("a leaving policy waits");
    assert!(error.is_waiting(), "{error}");
    assert_eq!(error_policy(Arc::new(p), &error, ctx), Action::requeue(Duration::from_secs(2)), "looks again soon");
}

#[tokio::test]
async fn a_secret_outside_the_allowed_namespaces_is_never_read_nor_copied() {
    let server = ApiServer::default();
    let mut p = policy(true, None);
    p.spec.collector.api_key_secret_ref =
        Some(serde_json::from_value(json!({"namespace": "kube-system", "name": "cloud-credentials"})).unwrap());
    let ctx = context(&server, &p, &["shop"], Vec::new(), Vec::new());
    let _ = reconcile(Arc::new(p), ctx).await;
    let sent = server.sent();
    assert!(!sent.iter().any(|s| s.path.contains("/secrets")), "a Secret was read or written: {sent:?}");
    let status = server.body_of(Method::PATCH, STATUS);
    let reasons: Vec<&Value> =
        status["status"]["conditions"].as_array().into_iter().flatten().map(|c| &c["reason"]).collect();
    assert!(reasons.contains(&&json!("SecretNotAllowed")), "conditions: {status}");
}

#[tokio::test]
async fn stale_agent_objects_go_after_the_writes_and_before_the_status() {
    let server = ApiServer::default();
    let p = policy(true, None);
    // `old` is no longer governed (its label went) and was never active: nothing waits there.
    let ctx = context_owning(&server, &p, &["shop"], Vec::new(), Vec::new(), &["old"]);
    reconcile(Arc::new(p), ctx).await.unwrap();
    assert_eq!(
        server.sent(),
        [
            Sent::new(Method::PATCH, &configmap("shop")),
            Sent::new(Method::DELETE, &configmap("old")),
            Sent::new(Method::PATCH, STATUS),
            Sent::new(Method::POST, &events("default")),
        ]
    );
    let delete = server.body_of(Method::DELETE, &configmap("old"));
    assert_eq!(delete["preconditions"]["resourceVersion"], "7", "guarded by the version the cache saw: {delete}");
}
