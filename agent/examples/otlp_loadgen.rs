//! OTLP/gRPC load generator for `make bench-agent-compare`: sends requests of `--batch` spans
//! (random trace ids) to `--target` at `--rate` spans/s (0 = as fast as `--concurrency` senders
//! go) for `--seconds`, then prints one JSON line: spans sent, errors, and request latencies.
//!
//! With `--sink PORT` it is instead the pipelines' destination: an OTLP/gRPC endpoint on
//! loopback that reads each request's bytes and accepts it without decoding, so that on a
//! small machine the sink takes as little CPU as possible from the process being measured.
//! With `--sink-stats FILE` it keeps the number of request body bytes received so far (gRPC
//! frames as sent, compressed) in FILE, so that a benchmark can compare what each pipeline
//! sends for the same spans.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, required_unless_present = "sink")]
    target: Option<String>,
    /// Serve as the sink on this loopback port (until killed) instead of sending.
    #[arg(long, conflicts_with = "target")]
    sink: Option<u16>,
    /// With `--sink`: file the total of body bytes received is written to (every 100 ms).
    #[arg(long, requires = "sink")]
    sink_stats: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn request(rng: &mut fastrand::Rng, batch: usize) -> ExportTraceServiceRequest {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let spans = (0..batch)
        .map(|i| Span {
            trace_id: rng.u128(1..).to_be_bytes().to_vec(),
            span_id: rng.u64(1..).to_be_bytes().to_vec(),
            name: format!("GET /api/items/{i}"),
            kind: 2,
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000_000,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/api/items/{id}"),
                kv("url.scheme", "http"),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", "loadgen")], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

struct Stats {
    sent: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

async fn sender(
    target: String,
    args: Arc<Args>,
    stats: Arc<Stats>,
    interval: Option<Duration>,
    deadline: Instant,
    seed: u64,
) {
    let Ok(mut client) = TraceServiceClient::connect(format!("http://{target}")).await else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ticker = interval.map(tokio::time::interval);
    while Instant::now() < deadline {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let req = request(&mut rng, args.batch);
        let started = Instant::now();
        match client.export(req).await {
            Ok(_) => {
                stats.sent.fetch_add(args.batch as u64, Ordering::Relaxed);
                stats.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).push(started.elapsed().as_micros() as u64);
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The sink's answer to every export: an empty `ExportTraceServiceResponse` (a gRPC message
/// frame of length 0) and `grpc-status: 0`.
async fn accept(
    req: http::Request<hyper::body::Incoming>,
    received: Arc<AtomicU64>,
) -> Result<http::Response<SinkBody>, hyper::Error> {
    // Read the whole request (the exporter waits for its flow-control window), decode nothing.
    let body = req.into_body().collect().await?;
    received.fetch_add(body.to_bytes().len() as u64, Ordering::Relaxed);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])), Frame::trailers(trailers)];
    let body = StreamBody::new(futures::stream::iter(frames.map(Ok::<_, std::convert::Infallible>)));
    Ok(http::Response::builder().header("content-type", "application/grpc").body(body).expect("static response"))
}

type SinkBody =
    StreamBody<futures::stream::Iter<std::array::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>, 2>>>;

async fn sink(port: u16, stats: Option<std::path::PathBuf>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let received = Arc::new(AtomicU64::new(0));
    if let Some(path) = stats {
        let received = received.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = received.load(Ordering::Relaxed);
                if last != Some(now) {
                    // Written aside and renamed: a reader never sees a half-written number.
                    let tmp = path.with_extension("tmp");
                    if std::fs::write(&tmp, now.to_string()).and_then(|_| std::fs::rename(&tmp, &path)).is_ok() {
                        last = Some(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let received = received.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| accept(req, received.clone()));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            // A pipeline stopped at the end of its run drops its connection mid-stream: not news.
            let _ = conn.await;
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = Arc::new(Args::parse());
    if let Some(port) = args.sink {
        if let Err(e) = sink(port, args.sink_stats.clone()).await {
            eprintln!("sink on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let target = args.target.clone().expect("clap requires --target without --sink");
    let stats =
        Arc::new(Stats { sent: AtomicU64::new(0), errors: AtomicU64::new(0), latencies_us: Mutex::new(Vec::new()) });
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let senders = args.concurrency.max(1);
    // At a fixed rate each sender sends one request every `interval`.
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.batch as f64 * senders as f64 / args.rate as f64));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|i| tokio::spawn(sender(target.clone(), args.clone(), stats.clone(), interval, deadline, i as u64 + 1)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = stats.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lat.sort_unstable();
    println!(
        "{{\"sent\":{},\"errors\":{},\"seconds\":{:.3},\"p50_us\":{},\"p99_us\":{}}}",
        stats.sent.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}
