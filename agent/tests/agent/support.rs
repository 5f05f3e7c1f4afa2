//! Helpers: agents on random loopback ports, config files, a scripted fake collector, a sink.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracelight_agent::enrich::PodIdentity;
use tracelight_agent::{AgentArgs, RunningAgent};

pub fn temp_dir(tag: &str) -> PathBuf {
    let d =
        std::env::temp_dir().join(format!("tracelight-agent-it-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Write atomically, as the kubelet swaps ConfigMap contents.
pub fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn config_yaml(generation: i64, endpoint: &str, protocol: &str, ratio: f64, extra_collector: &str) -> String {
    format!(
        "generation: {generation}\npolicy: default\ncollector:\n  endpoint: {endpoint}\n  protocol: {protocol}\n  compression: gzip\n{extra_collector}sampling:\n  ratio: {ratio}\nresourceAttributes:\n  team: shop\n"
    )
}

pub fn identity() -> PodIdentity {
    PodIdentity {
        pod_name: Some("web-7d9f".into()),
        namespace: Some("shop".into()),
        node_name: Some("node-a".into()),
        pod_uid: Some("1234".into()),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("shop-frontend".into()),
    }
}

pub fn args(config: &Path) -> AgentArgs {
    AgentArgs {
        config: config.to_path_buf(),
        otlp_grpc_port: 0,
        otlp_http_port: 0,
        admin_host: "127.0.0.1".parse().expect("ip"),
        admin_port: 0,
        batch_linger_ms: 50,
        config_poll_ms: 50,
        shutdown_timeout_secs: 3,
        export_timeout_secs: 2,
        ..AgentArgs::default()
    }
}

pub async fn agent(config: &Path) -> RunningAgent {
    tracelight_agent::start_with_identity(args(config), identity()).await.expect("agent starts")
}

/// An agent without a valid config: it receives and keeps everything in its queue, which makes
/// it a capture sink built from the agent's own receivers.
pub async fn sink() -> RunningAgent {
    let dir = temp_dir("sink");
    tracelight_agent::start_with_identity(args(&dir.join("absent.yaml")), PodIdentity::default())
        .await
        .expect("sink starts")
}

/// Spans captured by a sink so far (drained).
pub fn drain(sink: &RunningAgent) -> Vec<(opentelemetry_proto::tonic::resource::v1::Resource, Span)> {
    let mut out = Vec::new();
    while let Some(batch) = sink.shared.pipeline.queue.take(usize::MAX) {
        for rs in batch.decode().expect("sink holds valid protobuf") {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push((rs.resource.clone().unwrap_or_default(), s));
                }
            }
        }
    }
    out
}

/// Collect from a sink until `n` spans arrived or `timeout` passed.
pub async fn collect(
    sink: &RunningAgent,
    n: usize,
    timeout: Duration,
) -> Vec<(opentelemetry_proto::tonic::resource::v1::Resource, Span)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(drain(sink));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// The agent's `/metrics` text once it contains `needle`, or the last text read when `timeout` ends
/// first. The sink sees a batch before the agent has read the answer and counted the export.
pub async fn metrics_once(admin: SocketAddr, needle: &str, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (_, text) = get(&format!("http://{admin}/metrics")).await;
        if text.contains(needle) || tokio::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn attr<'a>(r: &'a opentelemetry_proto::tonic::resource::v1::Resource, key: &str) -> Option<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

/// `n` spans with distinct random trace ids, in one request.
pub fn request(n: usize, service: &str) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    let spans = (0..n)
        .map(|i| Span {
            trace_id: fastrand::u128(1..).to_be_bytes().to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("op-{i}"),
            ..Default::default()
        })
        .collect();
    let service = KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![service], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// A minimal HTTP/1.1 POST; returns status, headers and body.
pub async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, HeaderMap, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    let client: Client<_, Full<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut req = http::Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body))).expect("request")).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, headers, body)
}

pub async fn get(url: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    let client: Client<_, Empty<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = client.get(url.parse().expect("uri")).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A scripted answer: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

/// A scripted OTLP/HTTP collector: answers from `script` in order (then 200), records requests.
#[derive(Default)]
pub struct FakeCollector {
    pub script: Mutex<VecDeque<Answer>>,
    pub requests: Mutex<Vec<(HeaderMap, ExportTraceServiceRequest)>>,
    /// How long each answer takes (a slow collector).
    pub delay: Mutex<Duration>,
}

impl FakeCollector {
    pub fn spans(&self) -> usize {
        let reqs = self.requests.lock().expect("lock");
        reqs.iter().flat_map(|(_, r)| &r.resource_spans).flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

async fn fake_export(State(fc): State<Arc<FakeCollector>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).expect("gzip from agent");
        out
    } else {
        body.to_vec()
    };
    let req = ExportTraceServiceRequest::decode(&raw[..]).expect("protobuf from agent");
    let delay = *fc.delay.lock().expect("lock");
    tokio::time::sleep(delay).await;
    fc.requests.lock().expect("lock").push((headers, req));
    let next = fc.script.lock().expect("lock").pop_front();
    let (status, hdrs, body) = next.unwrap_or((200, vec![], ExportTraceServiceResponse::default().encode_to_vec()));
    let mut resp = (StatusCode::from_u16(status).expect("status"), body).into_response();
    for (k, v) in hdrs {
        resp.headers_mut().insert(k, v.parse().expect("header"));
    }
    resp
}

pub fn fake_router(fc: Arc<FakeCollector>) -> axum::Router {
    axum::Router::new().route("/v1/traces", axum::routing::post(fake_export)).with_state(fc)
}

/// Any free loopback port, chosen at bind time.
pub const ANY_PORT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0));

pub type Served = (SocketAddr, Arc<FakeCollector>, tokio::task::JoinHandle<()>);

pub async fn fake_collector(addr: SocketAddr) -> Served {
    serve_fake(tokio::net::TcpListener::bind(addr).await.expect("bind fake collector"))
}

fn serve_fake(listener: tokio::net::TcpListener) -> Served {
    let fc = Arc::new(FakeCollector::default());
    let addr = listener.local_addr().expect("addr");
    let app = fake_router(fc.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, fc, task)
}

/// A loopback port that nothing listens on (bound, then released).
pub async fn free_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A loopback port for a collector that is down: bound but not listening, so connections are
/// refused, and no other test (or agent) can take the port until the collector comes up on it.
pub struct DownPort {
    pub addr: SocketAddr,
    socket: tokio::net::TcpSocket,
}

pub fn down_port() -> DownPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(ANY_PORT).expect("bind");
    DownPort { addr: socket.local_addr().expect("addr"), socket }
}

impl DownPort {
    /// The fake collector comes up on the reserved port.
    pub fn fake_collector(self) -> Served {
        serve_fake(self.socket.listen(1024).expect("listen on the reserved port"))
    }

    /// Give the port up, for a peer that binds it itself (a small window remains).
    pub fn release(self) -> SocketAddr {
        self.addr
    }
}
