//! A scripted gRPC collector: RESOURCE_EXHAUSTED with and without RetryInfo, INVALID_ARGUMENT,
//! and the API key as metadata.

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracelight_agent::metrics::DropReason;

#[derive(Default)]
struct Scripted {
    answers: Mutex<VecDeque<Status>>,
    keys: Mutex<Vec<String>>,
}

struct Handle(Arc<Scripted>);

#[tonic::async_trait]
impl TraceService for Handle {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let key = req.metadata().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        self.0.keys.lock().expect("lock").push(key);
        match self.0.answers.lock().expect("lock").pop_front() {
            Some(status) => Err(status),
            None => Ok(Response::new(ExportTraceServiceResponse::default())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_retry_info_is_honoured_and_permanent_codes_are_not_retried() {
    let scripted = Arc::new(Scripted::default());
    scripted.answers.lock().expect("lock").extend([
        Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        ),
        Status::invalid_argument("bad span"),
        Status::resource_exhausted("quota gone, no retry info"),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc =
        TraceServiceServer::new(Handle(scripted.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
    });

    let dir = temp_dir("grpc-script");
    let key = dir.join("api-key");
    std::fs::write(&key, "grpc-key").expect("key");
    let cfg = dir.join("config.yaml");
    let auth = format!("  apiKeyHeader: x-api-key\n  apiKeyFile: {}\n", key.display());
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "grpc", 1.0, &auth));
    let agent = agent(&cfg).await;
    let url = format!("http://{}/v1/traces", agent.http_addr);
    let started = Instant::now();
    post(&url, &[("content-type", "application/x-protobuf")], request(3, "s").encode_to_vec()).await;
    // RESOURCE_EXHAUSTED + RetryInfo(1s) -> retried after >= 1 s -> INVALID_ARGUMENT -> dropped.
    assert!(
        wait_until(Duration::from_secs(10), || agent.shared.metrics.dropped_count(DropReason::ExportRejected) == 3)
            .await
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(scripted.keys.lock().expect("lock").len(), 2);
    post(&url, &[("content-type", "application/x-protobuf")], request(2, "s").encode_to_vec()).await;
    // RESOURCE_EXHAUSTED without RetryInfo is permanent.
    assert!(
        wait_until(Duration::from_secs(10), || agent.shared.metrics.dropped_count(DropReason::ExportRejected) == 5)
            .await
    );
    post(&url, &[("content-type", "application/x-protobuf")], request(4, "s").encode_to_vec()).await;
    assert!(wait_until(Duration::from_secs(10), || agent.shared.metrics.exported.get() == 4).await);
    let keys = scripted.keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 4, "no extra retries");
    assert!(keys.iter().all(|k| k == "grpc-key"), "API key sent as metadata");
    agent.shutdown().await;
}

/// Without compression the gRPC exporter sends the queued segments as they are, not a merged
/// copy: requests queued apart arrive whole, in one export request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_without_compression_sends_the_segments_as_one_message() {
    let sink = sink().await;
    let dir = temp_dir("grpc-plain");
    let cfg = dir.join("config.yaml");
    // No config yet: the agent queues, so the three requests end up in one batch of three segments.
    let agent = agent(&cfg).await;
    let url = format!("http://{}/v1/traces", agent.http_addr);
    for n in [5, 6, 7] {
        post(&url, &[("content-type", "application/x-protobuf")], request(n, "plain").encode_to_vec()).await;
    }
    let config = config_yaml(1, &format!("http://{}", sink.grpc_addr), "grpc", 1.0, "");
    write_atomic(&cfg, &config.replace("compression: gzip", "compression: none"));
    let got = collect(&sink, 18, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 18);
    assert!(got.iter().all(|(r, _)| attr(r, "service.name") == Some("plain")));
    let metrics =
        metrics_once(agent.admin_addr, "tracelight_agent_spans_exported_total 18\n", Duration::from_secs(5)).await;
    assert!(
        metrics.contains("tracelight_agent_export_duration_seconds_count{outcome=\"Success\"} 1\n"),
        "one request: {metrics}"
    );
    agent.shutdown().await;
    sink.shutdown().await;
}
