//! The agent's hot path per OTLP/HTTP request: gunzip (in one variant) -> validate on the wire
//! -> consistent sampling (ratio 0.5) -> enrichment -> queue, for requests of 100 realistic spans.
//! No network: this measures the CPU cost per span inside the agent.
//!
//! Every span is a server span with an `http.route`: the worst case for the RED metrics
//! (`red`), which the `red_off` variants leave out (`--red-metrics=false`).
//!
//! After criterion's report, prints `RESULT agent_spans_per_sec=<spans/s on one core, RED on,
//! probes off> red_off_spans_per_sec=<the same without RED> red_cost_pct=<how much slower with
//! RED> probes_on_spans_per_sec=<RED on, probe traces on> probe_cost_pct=<the difference, %>` as
//! the last line, measured separately in many short rounds: each round times [`ROUND_REQUESTS`]
//! requests of each setting back to back, in an order that rotates, and a cost is the median
//! over rounds of that round's ratio. This machine's speed drifts by tens of percent within a
//! minute (other tenants); a paired ratio within ~50 ms does not, where the best of a few long
//! rounds of each setting did (RED's cost read 5-11% on one build). The spans/s are the
//! medians of the rounds. Probes on: the default probe ratio, the buffer taken every 100
//! requests as a report would.

use criterion::{criterion_group, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;
use tracelight_agent::decode::{decode_request, Payload};
use tracelight_agent::enrich::PodIdentity;
use tracelight_agent::metrics::{Metrics, Transport};
use tracelight_agent::pipeline::{LiveSettings, Pipeline};
use tracelight_agent::queue::Queue;
use tracelight_agent::sampler::Threshold;

const SPANS: usize = 100;
/// Requests of each setting per round (~15 ms each).
const ROUND_REQUESTS: usize = 200;
/// Rounds for the `RESULT` line.
const ROUNDS: usize = 150;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn request(seed: u64) -> ExportTraceServiceRequest {
    let mut rng = fastrand::Rng::with_seed(seed);
    let spans = (0..SPANS)
        .map(|i| Span {
            trace_id: rng.u128(1..).to_be_bytes().to_vec(),
            span_id: rng.u64(1..).to_be_bytes().to_vec(),
            parent_span_id: rng.u64(1..).to_be_bytes().to_vec(),
            name: format!("GET /api/v1/items/{{id}} #{i}"),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            end_time_unix_nano: 1_700_000_000_001_000_000 + i as u64,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/api/v1/items/{id}"),
                kv("url.scheme", "https"),
                kv("server.address", "shop-frontend.shop.svc"),
                kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
                kv("network.protocol.version", "1.1"),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop-frontend"), kv("telemetry.sdk.language", "java")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn pipeline(red: bool, probe_below: u64) -> Pipeline {
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(64 << 20, metrics.clone()));
    let identity = PodIdentity {
        pod_name: Some("shop-frontend-7d9f8-abcde".into()),
        namespace: Some("shop".into()),
        node_name: Some("node-a".into()),
        pod_uid: Some("0f0e0d0c-0b0a-0908-0706-050403020100".into()),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("shop-frontend".into()),
    };
    let p = Pipeline::new(identity.clone(), queue, metrics).with_red(Arc::new(tracelight_agent::red::Red::new(red)));
    p.set_live(LiveSettings {
        threshold: Threshold::for_ratio(0.5),
        attributes: identity.attributes(),
        generation: 1,
        rules: None,
        probe_below,
    });
    p
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// One request through the hot path; the queue is drained as the exporter would.
fn ingest(p: &Pipeline, body: &[u8], encoding: Option<&str>) {
    let (payload, _) = decode_request(Some("application/x-protobuf"), encoding, body, 8 << 20).expect("valid request");
    let Payload::Protobuf(bytes) = payload else { unreachable!("a protobuf content type") };
    black_box(p.ingest(&bytes, Transport::Http).expect("valid request"));
    black_box(p.queue.take(usize::MAX));
}

fn bench(c: &mut Criterion) {
    let bodies: Vec<Vec<u8>> = (0..16).map(|s| request(s).encode_to_vec()).collect();
    let gzipped: Vec<Vec<u8>> = bodies.iter().map(|b| gzip(b)).collect();
    let p = pipeline(true, 0);
    let off = pipeline(false, 0);
    let mut g = c.benchmark_group("agent_ingest");
    g.throughput(Throughput::Elements(SPANS as u64));
    let mut i = 0;
    g.bench_function("protobuf_100_spans_red_off", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            ingest(&off, &bodies[i], None)
        })
    });
    g.bench_function("protobuf_100_spans", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            ingest(&p, &bodies[i], None)
        })
    });
    g.bench_function("gzip_protobuf_100_spans", |b| {
        b.iter(|| {
            i = (i + 1) % gzipped.len();
            ingest(&p, &gzipped[i], Some("gzip"))
        })
    });
    let probed = pipeline(true, probe_below());
    let mut n = 0;
    g.bench_function("gzip_protobuf_100_spans_probes_on", |b| {
        b.iter(|| {
            i = (i + 1) % gzipped.len();
            n += 1;
            if n % 100 == 0 {
                black_box(probed.probes.take());
            }
            ingest(&probed, &gzipped[i], Some("gzip"))
        })
    });
    g.finish();
}

fn probe_below() -> u64 {
    tracelight_contract::probe::threshold_for_ratio(tracelight_contract::probe::DEFAULT_PROBE_RATIO)
}

/// Seconds for [`ROUND_REQUESTS`] requests, starting at body `first`.
fn timed(p: &Pipeline, bodies: &[Vec<u8>], first: usize) -> f64 {
    let started = Instant::now();
    for i in first..first + ROUND_REQUESTS {
        if i % 100 == 99 {
            black_box(p.probes.take());
        }
        ingest(p, &bodies[i % bodies.len()], Some("gzip"));
    }
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --all-targets` runs benches once, unoptimized and without `--bench`: no figure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let bodies: Vec<Vec<u8>> = (0..16).map(|s| gzip(&request(s).encode_to_vec())).collect();
    let settings = [pipeline(true, 0), pipeline(false, 0), pipeline(true, probe_below())];
    // Seconds per round, by setting.
    let mut secs: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..settings.len() {
            let s = (round + k) % settings.len();
            secs[s].push(timed(&settings[s], &bodies, round * ROUND_REQUESTS));
        }
    }
    let per_sec = |s: &[f64]| (ROUND_REQUESTS * SPANS) as f64 / median(s.to_vec());
    // Per round: the throughput `a` lost against `b`, in percent.
    let cost = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(a, b)| (1.0 - b / a) * 100.0).collect());
    let [on, off, probes] = &secs;
    println!(
        "RESULT agent_spans_per_sec={:.0} red_off_spans_per_sec={:.0} red_cost_pct={:.1} \
         probes_on_spans_per_sec={:.0} probe_cost_pct={:.1}",
        per_sec(on),
        per_sec(off),
        cost(on, off),
        per_sec(probes),
        cost(probes, on)
    );
}
