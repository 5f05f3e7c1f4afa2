//! The whole admission path for a realistic Deployment-created pod: decode the AdmissionReview,
//! look up the cluster view, decide, build the JSON patch, encode the response.
//!
//! After criterion's report, prints `RESULT admission_us=<median µs> ungoverned_us=<median µs>`
//! as the last line, measured separately over a fixed number of timed iterations: the injected
//! Deployment pod first, then the same pod in a namespace no policy governs (the webhook's own
//! cost, paid by most pods of a cluster).

use criterion::{criterion_group, Criterion, Throughput};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Instant;
use tracelight::cluster_view::ClusterView;
use tracelight::inject::InjectOptions;
use tracelight::webhook::handler::review;
use tracelight::webhook::metrics::AdmissionMetrics;

// The same allocator as the `tracelight` binary, so the figure is the one production sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAMESPACE: &str = "shop";
const TIMED_ITERATIONS: usize = 2000;

fn namespaces() -> Vec<k8s_openapi::api::core::v1::Namespace> {
    ["shop", "payments", "kube-system", "default"]
        .iter()
        .map(|name| {
            let labels = if *name == "kube-system" || *name == "default" {
                json!({ "kubernetes.io/metadata.name": name })
            } else {
                json!({ "kubernetes.io/metadata.name": name, "tracelight.io/enabled": "true" })
            };
            serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).expect("namespace")
        })
        .collect()
}

fn policy() -> tracelight::api::TracingPolicy {
    serde_json::from_value(json!({
        "apiVersion": "tracelight.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": { "name": "default", "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3 },
        "spec": {
            "collector": { "endpoint": "http://otel-collector.observability:4317", "protocol": "grpc" },
            "sampling": { "ratio": 0.1 },
            "resourceAttributes": { "deployment.environment": "prod" },
        },
        "status": {
            "observedGeneration": 3,
            "namespaces": [
                { "name": "shop", "state": "Active" },
                { "name": "payments", "state": "Pending" },
            ],
        },
    }))
    .expect("policy")
}

/// A pod as the ReplicaSet controller submits it (before defaulting by later admission plugins).
fn pod(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8c6b5-",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "checkout",
                "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": "7d9f8c6b5",
            },
            "annotations": { "prometheus.io/scrape": "true", "prometheus.io/port": "9090" },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "checkout-7d9f8c6b5",
                "uid": "3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "serviceAccountName": "checkout",
            "terminationGracePeriodSeconds": 30,
            "securityContext": { "runAsNonRoot": true, "fsGroup": 2000 },
            "containers": [
                {
                    "name": "checkout",
                    "image": "registry.example/shop/checkout:1.14.2",
                    "ports": [{ "name": "http", "containerPort": 8080 }, { "name": "metrics", "containerPort": 9090 }],
                    "env": [
                        { "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": "checkout-db", "key": "url" } } },
                        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                        { "name": "LOG_LEVEL", "value": "info" },
                        { "name": "OTEL_SERVICE_NAME", "value": "checkout-api" },
                    ],
                    "envFrom": [{ "configMapRef": { "name": "checkout-config" } }],
                    "resources": {
                        "requests": { "cpu": "250m", "memory": "256Mi" },
                        "limits": { "memory": "512Mi" },
                    },
                    "readinessProbe": { "httpGet": { "path": "/ready", "port": "http" }, "periodSeconds": 5 },
                    "livenessProbe": { "httpGet": { "path": "/live", "port": "http" }, "initialDelaySeconds": 10 },
                    "volumeMounts": [
                        { "name": "config", "mountPath": "/etc/checkout", "readOnly": true },
                        { "name": "tmp", "mountPath": "/tmp" },
                    ],
                },
                {
                    "name": "envoy",
                    "image": "envoyproxy/envoy:v1.31.0",
                    "args": ["-c", "/etc/envoy/envoy.yaml"],
                    "ports": [{ "name": "proxy", "containerPort": 15001 }],
                    "env": [{ "name": "ENVOY_UID", "value": "0" }],
                    "resources": { "requests": { "cpu": "50m", "memory": "64Mi" } },
                    "volumeMounts": [{ "name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": true }],
                },
            ],
            "volumes": [
                { "name": "config", "configMap": { "name": "checkout-config" } },
                { "name": "envoy-config", "configMap": { "name": "checkout-envoy" } },
                { "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } },
            ],
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
            ],
        },
    })
}

fn review_body(namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b8d3a1f2-6c4e-4d5a-9f0b-1e2d3c4b5a69",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "name": "",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod(namespace),
            "oldObject": null,
            "dryRun": false,
            "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
        },
    }))
    .expect("review")
}

struct Fixture {
    body: Vec<u8>,
    view: ClusterView,
    options: InjectOptions,
    metrics: AdmissionMetrics,
}

impl Fixture {
    fn new(namespace: &str) -> Self {
        Fixture {
            body: review_body(namespace),
            view: ClusterView::from_objects(namespaces(), vec![policy()]),
            options: InjectOptions::default(),
            metrics: AdmissionMetrics::unregistered(),
        }
    }

    fn admit(&self) -> Vec<u8> {
        let (status, body) = review(black_box(&self.body), &self.view, &self.options, &self.metrics);
        assert_eq!(status, 200);
        body
    }
}

fn bench_admission(c: &mut Criterion) {
    let injected = Fixture::new(NAMESPACE);
    // Same pod in a namespace no policy governs: the webhook's own cost (decode, look up, encode).
    let ungoverned = Fixture::new("default");
    let mut group = c.benchmark_group("admission");
    group.throughput(Throughput::Bytes(injected.body.len() as u64));
    group.bench_function("deployment_pod_injected", |b| b.iter(|| injected.admit()));
    group.bench_function("deployment_pod_ungoverned_namespace", |b| b.iter(|| ungoverned.admit()));
    group.finish();
}

criterion_group!(benches, bench_admission);

/// Median of `TIMED_ITERATIONS` individually timed admissions, after a warm-up, in microseconds.
fn median_admission_us(fixture: &Fixture) -> f64 {
    for _ in 0..200 {
        black_box(fixture.admit());
    }
    let mut samples: Vec<f64> = (0..TIMED_ITERATIONS)
        .map(|_| {
            let start = Instant::now();
            black_box(fixture.admit());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let fixture = Fixture::new(NAMESPACE);
    let response: Value = serde_json::from_slice(&fixture.admit()).expect("response is JSON");
    let patched = response["response"]["patch"].is_string();
    // A figure for a pod that was not injected would measure the wrong path.
    assert!(patched, "the benchmark pod was not injected (no patch): {}", response["response"]);
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --all-targets` runs benches once, unoptimized and without `--bench`: a figure
    // from that run would be meaningless, so the RESULT line is printed by `cargo bench` only.
    if std::env::args().any(|a| a == "--bench") {
        let ungoverned = Fixture::new("default");
        let response: Value = serde_json::from_slice(&ungoverned.admit()).expect("response is JSON");
        assert!(response["response"]["patch"].is_null(), "the ungoverned pod was patched: {}", response["response"]);
        println!(
            "RESULT admission_us={:.1} ungoverned_us={:.1}",
            median_admission_us(&fixture),
            median_admission_us(&ungoverned)
        );
    }
}
