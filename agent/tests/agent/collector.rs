//! Interop through a REAL OpenTelemetry Collector (built by `e2e/collector/build.sh` with the
//! official builder) and the real Python SDK (`e2e/collector/python-env.sh`): Rust and Python
//! SDKs -> agent (gRPC and HTTP in, gRPC and HTTP out) -> collector -> file exporter; the test
//! reads the file and checks span counts, attributes and parent/child links.
//!
//! Ignored by default (it needs those two builds); `make e2e-agent` builds them and runs it with
//! `TRACELIGHT_OTELCOL` and `TRACELIGHT_PYTHON` set. Without them it fails, never skips.

use crate::sdk::{emit_trace, exporter_to, provider};
use crate::support::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn required_env(name: &str, hint: &str) -> PathBuf {
    match std::env::var(name) {
        Ok(v) if Path::new(&v).exists() => PathBuf::from(v),
        _ => panic!("{name} must point to {hint}: run `make e2e-agent`"),
    }
}

async fn start_collector(bin: &Path, dir: &Path, grpc: SocketAddr, http: SocketAddr, out: &Path) -> Collector {
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {grpc}\n      http:\n        endpoint: {http}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
             \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            out.display()
        ),
    )
    .expect("collector config");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("collector starts");
    let collector = Collector(child);
    for addr in [grpc, http] {
        assert!(
            wait_until_async(
                Duration::from_secs(30),
                || async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            )
            .await,
            "collector listens on {addr}"
        );
    }
    collector
}

async fn wait_until_async<F, Fut>(timeout: Duration, f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// One span as the collector's file exporter wrote it (OTLP/JSON).
#[derive(Debug, Clone)]
struct Written {
    resource: BTreeMap<String, String>,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

fn string_attrs(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), kv["value"]["stringValue"].as_str()?.to_string())))
        .collect()
}

fn read_spans(out: &Path) -> Vec<Written> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            let resource = string_attrs(&rs["resource"]["attributes"]);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let field = |k: &str| s[k].as_str().unwrap_or("").to_string();
                    spans.push(Written {
                        resource: resource.clone(),
                        trace_id: field("traceId"),
                        span_id: field("spanId"),
                        parent_span_id: field("parentSpanId"),
                        name: field("name"),
                        attributes: string_attrs(&s["attributes"]),
                    });
                }
            }
        }
    }
    spans
}

fn python_emit(python: &Path, script: &Path, protocol: &str, endpoint: &str, service: &str) {
    let status = Command::new(python).arg(script).args([protocol, endpoint, service]).status().expect("python runs");
    assert!(status.success(), "python SDK exporting over {protocol} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the collector and Python SDK builds: run with `make e2e-agent`"]
async fn sdks_through_agent_into_real_collector() {
    let otelcol = required_env("TRACELIGHT_OTELCOL", "the collector built by e2e/collector/build.sh");
    let python = required_env("TRACELIGHT_PYTHON", "the python of e2e/collector/python-env.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/collector/emit.py");
    let dir = temp_dir("otelcol");
    let out = dir.join("traces.json");
    let (grpc, http) = (free_port().await, free_port().await);
    let _collector = start_collector(&otelcol, &dir, grpc, http, &out).await;

    // Agent A exports over gRPC, agent B over HTTP.
    let (cfg_a, cfg_b) = (dir.join("a.yaml"), dir.join("b.yaml"));
    write_atomic(&cfg_a, &config_yaml(1, &format!("http://{grpc}"), "grpc", 1.0, ""));
    write_atomic(&cfg_b, &config_yaml(1, &format!("http://{http}"), "http/protobuf", 1.0, ""));
    let (a, b) = (agent(&cfg_a).await, agent(&cfg_b).await);

    emit_trace(provider(exporter_to("grpc", &a), "rust-grpc")).await;
    emit_trace(provider(exporter_to("http", &b), "rust-http")).await;
    let (py, a_grpc, b_http) = (python.clone(), a.grpc_addr, b.http_addr);
    let script2 = script.clone();
    tokio::task::spawn_blocking(move || {
        python_emit(&py, &script2, "grpc", &format!("http://{a_grpc}"), "py-grpc");
        python_emit(&py, &script2, "http", &format!("http://{b_http}/v1/traces"), "py-http");
    })
    .await
    .expect("python thread");

    let expected = 12;
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = read_spans(&out);
        if spans.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(spans.len(), expected, "4 traces of 3 spans in the collector's file");
    for service in ["rust-grpc", "rust-http", "py-grpc", "py-http"] {
        let mine: Vec<&Written> =
            spans.iter().filter(|s| s.resource.get("service.name").map(String::as_str) == Some(service)).collect();
        assert_eq!(mine.len(), 3, "{service}: 3 spans");
        let parent =
            mine.iter().find(|s| s.parent_span_id.is_empty()).unwrap_or_else(|| panic!("{service}: root span"));
        for s in &mine {
            assert_eq!(s.trace_id, parent.trace_id, "{service}: one trace");
            assert_eq!(s.resource.get("k8s.namespace.name").map(String::as_str), Some("shop"), "{service}: enriched");
            assert_eq!(s.resource.get("k8s.deployment.name").map(String::as_str), Some("shop-frontend"));
            assert_eq!(s.resource.get("team").map(String::as_str), Some("shop"));
            if s.span_id != parent.span_id {
                assert_eq!(s.parent_span_id, parent.span_id, "{service}: child {} links to its parent", s.name);
            }
        }
        if service.starts_with("py") {
            assert_eq!(parent.attributes.get("http.route").map(String::as_str), Some("/checkout"));
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the collector build: run with `make e2e-agent`"]
async fn a_5_mb_request_reaches_a_collector_with_grpcs_4_mib_limit_whole() {
    use prost::Message;
    let otelcol = required_env("TRACELIGHT_OTELCOL", "the collector built by e2e/collector/build.sh");
    let dir = temp_dir("otelcol-big");
    let out = dir.join("traces.json");
    let (grpc, http) = (free_port().await, free_port().await);
    // The collector's gRPC receiver keeps its default 4 MiB `max_recv_msg_size_mib`.
    let _collector = start_collector(&otelcol, &dir, grpc, http, &out).await;
    let cfg = dir.join("a.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{grpc}"), "grpc", 1.0, ""));
    let a = agent(&cfg).await;

    let n = 40_000;
    let mut req = request(n, "big");
    for s in &mut req.resource_spans[0].scope_spans[0].spans {
        s.name.push_str(&"x".repeat(100));
    }
    let body = req.encode_to_vec();
    assert!(body.len() > 5_000_000, "{} bytes", body.len());
    let (status, _, _) =
        post(&format!("http://{}/v1/traces", a.http_addr), &[("content-type", "application/x-protobuf")], body).await;
    assert_eq!(status, 200);

    let mut written = 0;
    for _ in 0..300 {
        written = read_spans(&out).len();
        if written >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(written, n, "every span of the 5 MB request in the collector's file");
    let report = a.report();
    assert_eq!(report.spans.dropped.values().sum::<u64>(), 0, "{:?}", report.spans);
    a.shutdown().await;
}
