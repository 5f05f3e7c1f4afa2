//! Collector faults: down then back, queue overflow, 503 with hints, 400, partial success,
//! shutdown flush.

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use std::time::{Duration, Instant};
use tracelight_agent::metrics::DropReason;

async fn send_http(agent: &tracelight_agent::RunningAgent, spans: usize) {
    let url = format!("http://{}/v1/traces", agent.http_addr);
    let (status, _, _) =
        post(&url, &[("content-type", "application/x-protobuf")], request(spans, "svc").encode_to_vec()).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_then_back_loses_nothing() {
    let down = down_port();
    let addr = down.addr;
    let dir = temp_dir("down");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    let agent = agent(&cfg).await;
    for _ in 0..10 {
        send_http(&agent, 10).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(agent.shared.metrics.exported.get(), 0);
    assert!(wait_until(Duration::from_secs(5), || agent.shared.queue_spans() == 100).await, "everything still queued");
    let (_, collector, _task) = down.fake_collector();
    assert!(wait_until(Duration::from_secs(40), || collector.spans() == 100).await, "got {}", collector.spans());
    // The collector counts a request before its answer reaches the agent's counters.
    assert!(wait_until(Duration::from_secs(5), || agent.shared.metrics.exported.get() == 100).await);
    assert_eq!(agent.shared.metrics.dropped_count(DropReason::QueueFull), 0);
    agent.shutdown().await;
}

/// A collector that answers, slowly: senders are paced to the exporter (they wait), so the queue
/// stays near its pace mark and nothing is evicted; with pacing off the same sends pile up.
async fn queue_peak_behind_a_slow_collector(pace: bool) -> (usize, usize, u64) {
    let (addr, collector, _task) = fake_collector(ANY_PORT).await;
    *collector.delay.lock().expect("lock") = Duration::from_millis(150);
    let dir = temp_dir(if pace { "paced" } else { "unpaced" });
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    let one_request = tracelight_agent::queue::Batch::new(request(10, "svc").resource_spans).bytes;
    let mut a = args(&cfg);
    a.batch_bytes = one_request * 2;
    a.batch_linger_ms = 10;
    a.export_concurrency = 1;
    a.pace_above_bytes = if pace { one_request * 2 } else { 0 };
    let agent = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    // Pacing starts once an export has succeeded: the collector is there, only slow.
    send_http(&agent, 10).await;
    assert!(wait_until(Duration::from_secs(5), || collector.spans() == 10).await);
    let mut peak = 0;
    for _ in 0..16 {
        send_http(&agent, 10).await;
        peak = peak.max(agent.shared.metrics.queue_bytes.get() as usize);
    }
    assert!(wait_until(Duration::from_secs(20), || collector.spans() == 170).await, "got {}", collector.spans());
    assert_eq!(agent.shared.metrics.dropped_count(DropReason::QueueFull), 0);
    let paced = agent.shared.metrics.paced_requests.get();
    agent.shutdown().await;
    (peak, one_request, paced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_paces_senders_instead_of_growing_the_queue() {
    let (peak, one, paced) = queue_peak_behind_a_slow_collector(true).await;
    assert!(paced > 0, "no request waited");
    // The mark, plus the one request that found the queue at the mark and was taken.
    assert!(peak <= one * 3, "queue peaked at {peak} bytes, {:.1} requests", peak as f64 / one as f64);
    let (peak, one, paced) = queue_peak_behind_a_slow_collector(false).await;
    assert_eq!(paced, 0);
    assert!(peak > one * 6, "without pacing the sends pile up: peak {peak} bytes ({one} per request)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_drops_oldest_and_counts_exactly() {
    let down = down_port();
    let addr = down.addr;
    let dir = temp_dir("overflow");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    let one_request = tracelight_agent::queue::Batch::new(request(10, "svc").resource_spans).bytes;
    let mut a = args(&cfg);
    a.queue_bytes = one_request * 5 + one_request / 2;
    let agent = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    let url = format!("http://{}/v1/traces", agent.http_addr);
    for i in 0..12 {
        let body = request(10, &format!("svc-{i:02}")).encode_to_vec();
        assert_eq!(post(&url, &[("content-type", "application/x-protobuf")], body).await.0, 200);
    }
    // A batch out for a (failing) export attempt is neither queued nor dropped until it is
    // requeued, so wait for the accounting to settle rather than reading it mid-flight.
    let queued_or_dropped = || agent.shared.queue_spans() + agent.shared.metrics.dropped_count(DropReason::QueueFull);
    assert!(
        wait_until(Duration::from_secs(5), || queued_or_dropped() == 120).await,
        "every span is queued or counted as dropped"
    );
    let queued = agent.shared.queue_spans();
    let dropped = agent.shared.metrics.dropped_count(DropReason::QueueFull);
    // Enrichment makes stored batches larger than the bare requests, so fewer than 5 fit.
    assert!(queued > 0 && queued % 10 == 0 && queued < 60, "queued {queued}");
    let (_, collector, _task) = down.fake_collector();
    assert!(wait_until(Duration::from_secs(40), || collector.spans() as u64 == queued).await);
    assert!(wait_until(Duration::from_secs(5), || agent.shared.metrics.exported.get() == queued).await);
    // The oldest were dropped: what is exported is the newest requests, in order.
    let services: Vec<String> = collector
        .requests
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|(_, r)| r.resource_spans.clone())
        .filter_map(|r| r.resource.and_then(|res| attr(&res, "service.name").map(str::to_string)))
        .collect();
    let expected: Vec<String> = (12 - queued as usize / 10..12).map(|i| format!("svc-{i:02}")).collect();
    assert_eq!(services, expected);
    assert_eq!(agent.shared.metrics.dropped_count(DropReason::QueueFull), dropped, "no more drops once back");
    assert_eq!(agent.shared.metrics.exported.get() + dropped, 120, "exported + dropped = received");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_503_after_the_hint_and_never_retries_400_or_partial_success() {
    let (addr, collector, _task) = fake_collector(ANY_PORT).await;
    collector.script.lock().expect("lock").extend([
        (503, vec![("retry-after", "1".to_string())], vec![]),
        (400, vec![], b"bad".to_vec()),
        (
            200,
            vec![],
            ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess { rejected_spans: 2, error_message: "too old".into() }),
            }
            .encode_to_vec(),
        ),
    ]);
    let dir = temp_dir("503");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    let agent = agent(&cfg).await;
    let started = Instant::now();
    send_http(&agent, 5).await;
    // 503 -> retried after >= 1 s -> 400 -> dropped, not retried.
    assert!(
        wait_until(Duration::from_secs(10), || agent.shared.metrics.dropped_count(DropReason::ExportRejected) == 5)
            .await
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    assert_eq!(collector.request_count(), 2);
    send_http(&agent, 5).await;
    assert!(wait_until(Duration::from_secs(10), || collector.request_count() == 3).await);
    assert!(wait_until(Duration::from_secs(5), || agent.shared.metrics.exported.get() == 3).await);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(collector.request_count(), 3, "a partial success is not retried");
    assert_eq!(agent.shared.metrics.dropped_count(DropReason::ExportRejected), 7);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_and_counts_what_it_cannot_send() {
    let (addr, collector, _task) = fake_collector(ANY_PORT).await;
    let dir = temp_dir("flush");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    let mut a = args(&cfg);
    a.batch_linger_ms = 60_000;
    a.batch_bytes = 64 << 20;
    let agent = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    send_http(&agent, 7).await;
    let metrics = agent.shared.metrics.clone();
    agent.shutdown().await;
    assert_eq!(collector.spans(), 7, "queued spans flushed on shutdown");
    assert_eq!(metrics.exported.get(), 7);

    let down = down_port();
    write_atomic(&cfg, &config_yaml(1, &format!("http://{}", down.addr), "http/protobuf", 1.0, ""));
    let mut a = args(&cfg);
    a.shutdown_timeout_secs = 1;
    let agent = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    send_http(&agent, 4).await;
    let metrics = agent.shared.metrics.clone();
    // Without the deadline the flush would retry the down collector forever; the generous
    // bound only catches that, it does not measure the deadline.
    tokio::time::timeout(Duration::from_secs(60), agent.shutdown())
        .await
        .expect("shutdown ends at its deadline although the collector is down");
    assert_eq!(metrics.dropped_count(DropReason::Shutdown), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_until_the_collector_is_back() {
    let down = down_port();
    let addr = down.addr;
    let dir = temp_dir("grpc-down");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "grpc", 1.0, ""));
    let agent = agent(&cfg).await;
    send_http(&agent, 6).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(agent.shared.metrics.exported.get(), 0);
    // A sink on the same port: the agent's own gRPC receiver.
    let mut sink_args = args(&dir.join("absent.yaml"));
    sink_args.otlp_grpc_port = down.release().port();
    let sink = tracelight_agent::start_with_identity(sink_args, Default::default()).await.expect("sink");
    assert_eq!(collect(&sink, 6, Duration::from_secs(40)).await.len(), 6);
    assert_eq!(agent.shared.metrics.dropped_count(DropReason::QueueFull), 0);
    agent.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_counts_batches_stuck_in_flight_at_the_deadline() {
    // A collector that accepts connections and never answers: the export requests hang.
    let listener = tokio::net::TcpListener::bind(ANY_PORT).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            h.lock().expect("lock").push(conn);
        }
    });
    let dir = temp_dir("stuck");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    let mut a = args(&cfg);
    a.shutdown_timeout_secs = 1;
    a.export_timeout_secs = 600;
    let agent = tracelight_agent::start_with_identity(a, identity()).await.expect("start");
    send_http(&agent, 6).await;
    assert!(wait_until(Duration::from_secs(10), || agent.shared.queue_spans() == 0).await, "taken for export");
    let metrics = agent.shared.metrics.clone();
    tokio::time::timeout(Duration::from_secs(60), agent.shutdown()).await.expect("shutdown ends at its deadline");
    assert_eq!(metrics.exported.get(), 0);
    assert_eq!(metrics.dropped_count(DropReason::Shutdown), 6, "abandoned in flight, counted");
    assert!(!held.lock().expect("lock").is_empty(), "the export did reach the collector");
}
