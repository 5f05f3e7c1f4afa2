//! OTLP/HTTP receiver answers per the spec; admin endpoints.

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::io::Write;
use std::time::Duration;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[tokio::test]
async fn http_receiver_status_codes() {
    let sink = sink().await;
    let url = format!("http://{}/v1/traces", sink.http_addr);
    let pb = [("content-type", "application/x-protobuf")];

    let (status, _, body) = post(&url, &pb, request(3, "a").encode_to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(ExportTraceServiceResponse::decode(&body[..]).expect("response").partial_success, None);

    let (status, _, _) = post(
        &url,
        &[("content-type", "application/x-protobuf"), ("content-encoding", "gzip")],
        gzip(&request(2, "a").encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200);

    let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"j"}]}]}]}"#;
    let (status, headers, body) = post(&url, &[("content-type", "application/json")], json.to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").expect("ct"), "application/json");
    assert_eq!(String::from_utf8_lossy(&body), "{}");

    let (status, _, body) = post(&url, &pb, vec![0xff; 10]).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid protobuf"), "clear message");

    let (status, _, body) = post(&url, &[("content-type", "application/json")], b"{nope".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid JSON"));

    let (status, _, _) = post(&url, &[("content-type", "text/plain")], b"x".to_vec()).await;
    assert_eq!(status, 415);

    let big = vec![0u8; 9 << 20];
    let (status, _, _) = post(&url, &pb, big).await;
    assert_eq!(status, 413);

    let bomb = gzip(&vec![0u8; 64 << 20]);
    let (status, _, _) =
        post(&url, &[("content-type", "application/x-protobuf"), ("content-encoding", "gzip")], bomb).await;
    assert_eq!(status, 413);

    // Partial success: one span with a short trace id.
    let mut req = request(2, "a");
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1, 2, 3];
    let (status, _, body) = post(&url, &pb, req.encode_to_vec()).await;
    assert_eq!(status, 200);
    let partial = ExportTraceServiceResponse::decode(&body[..]).expect("response").partial_success.expect("partial");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("trace id"));

    assert_eq!(drain(&sink).len(), 3 + 2 + 1 + 1);
    assert_eq!(sink.shared.metrics.malformed_requests.get(), 5);
    sink.shutdown().await;
}

#[tokio::test]
async fn admin_serves_health_metrics_and_report() {
    let sink = sink().await;
    let url = format!("http://{}/v1/traces", sink.http_addr);
    post(&url, &[("content-type", "application/x-protobuf")], request(4, "cart").encode_to_vec()).await;
    let admin = format!("http://{}", sink.admin_addr);
    assert_eq!(get(&format!("{admin}/healthz")).await, (200, "ok\n".to_string()));
    let (status, metrics) = get(&format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("tracelight_agent_spans_received_total{transport=\"Http\"} 4"), "{metrics}");
    assert!(metrics.contains("tracelight_agent_queue_spans 4"));
    assert!(metrics.contains("tracelight_agent_config_generation 0"));
    let (status, report) = get(&format!("{admin}/report")).await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&report).expect("json report");
    assert_eq!(report["services"]["cart"], 4);
    assert_eq!(report["spans"]["received"], 4);
    assert_eq!(report["spans"]["queued"], 4);
    sink.shutdown().await;
}

#[tokio::test]
async fn grpc_receiver_accepts_gzip_and_reports_partial_success() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let sink = sink().await;
    let mut client = TraceServiceClient::connect(format!("http://{}", sink.grpc_addr))
        .await
        .expect("connect")
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let resp = client.export(request(5, "g")).await.expect("export").into_inner();
    assert_eq!(resp.partial_success, None);
    let mut req = request(2, "g");
    req.resource_spans[0].scope_spans[0].spans[1].span_id = vec![0; 8];
    let resp = client.export(req).await.expect("export").into_inner();
    assert_eq!(resp.partial_success.expect("partial").rejected_spans, 1);
    assert_eq!(drain(&sink).len(), 6);
    sink.shutdown().await;
}

#[tokio::test]
async fn overloaded_receivers_ask_senders_to_retry() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use tonic_types::StatusExt;
    let mut a = args(&temp_dir("overload").join("absent.yaml"));
    a.max_inflight_bytes = 64 << 10;
    a.max_request_bytes = 16 << 10;
    let sink = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    // Hold the whole in-flight budget, as concurrent large requests would.
    let held = sink.shared.admission.try_admit(64 << 10).expect("budget");

    let url = format!("http://{}/v1/traces", sink.http_addr);
    let (status, headers, _) =
        post(&url, &[("content-type", "application/x-protobuf")], request(1, "a").encode_to_vec()).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").expect("Retry-After"), "1");

    let mut client = TraceServiceClient::connect(format!("http://{}", sink.grpc_addr)).await.expect("connect");
    let err = client.export(request(1, "a")).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.get_details_retry_info().is_some(), "RetryInfo makes it retryable for SDKs");
    assert_eq!(sink.shared.metrics.refused_requests.get(), 2);

    drop(held);
    let (status, _, _) =
        post(&url, &[("content-type", "application/x-protobuf")], request(1, "a").encode_to_vec()).await;
    assert_eq!(status, 200);
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_pushed_with_the_rotating_bearer_token() {
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/reports",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = s2.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                seen.lock().expect("lock").push((auth, serde_json::from_slice(&body).unwrap_or_default()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let operator = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = temp_dir("report");
    let token = dir.join("token");
    std::fs::write(&token, "token-1\n").expect("token");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(3, "http://127.0.0.1:9", "grpc", 0.5, ""));
    let mut a = args(&cfg);
    a.report_url = Some(format!("http://{operator}/reports").parse().expect("uri"));
    a.report_token_file = Some(token.clone());
    a.report_interval_secs = 60;
    let agent = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    let first = || seen.lock().expect("lock").len();
    assert!(wait_until(Duration::from_secs(5), || first() >= 1).await, "pushed at start");
    {
        let s = seen.lock().expect("lock");
        assert_eq!(s[0].0, "Bearer token-1");
        assert_eq!(s[0].1["pod"]["podName"], "web-7d9f");
        assert_eq!(s[0].1["configGeneration"], 3);
        assert_eq!(s[0].1["samplingRatio"], 0.5);
    }
    // A new generation is reported at once (not after the 60 s interval), with the rotated token.
    std::fs::write(&token, "token-2").expect("token");
    write_atomic(&cfg, &config_yaml(4, "http://127.0.0.1:9", "grpc", 0.25, ""));
    assert!(
        wait_until(Duration::from_secs(5), || seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, r)| r["configGeneration"] == 4))
        .await
    );
    let s = seen.lock().expect("lock").clone();
    let (auth, _) = s.iter().find(|(_, r)| r["configGeneration"] == 4).expect("gen 4 report");
    assert_eq!(auth, "Bearer token-2");
    agent.shutdown().await;
}
