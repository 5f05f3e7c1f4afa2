//! The OTLP/HTTP receive path on arbitrary input: headers -> gzip -> protobuf bytes or JSON
//! decode, then what the receiver does with them (validate on the wire, sample with tracestate
//! parsing, enrich, write into the queue). Nothing may panic, a protobuf body is refused exactly
//! when prost refuses it, and what is queued must decode again.
//!
//! Input layout: byte 0 picks the content type and encoding, byte 1 the sampling ratio, the rest
//! is the body (compressed by the harness in one mode, so the decoder sees valid gzip of fuzzed
//! content as well as fuzzed gzip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::sync::Arc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracelight_agent::decode::{decode_request, Payload};
use tracelight_agent::enrich::PodIdentity;
use tracelight_agent::metrics::{Metrics, Transport};
use tracelight_agent::pipeline::{LiveSettings, Pipeline};
use tracelight_agent::queue::Queue;
use tracelight_agent::sampler::Threshold;

const CONTENT_TYPES: [&str; 6] = [
    "application/x-protobuf",
    "application/json",
    "application/protobuf",
    "Application/JSON; charset=utf-8",
    "text/plain",
    "",
];
const LIMIT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let [mode, ratio, body @ ..] = data else { return };
    let content_type = CONTENT_TYPES[(*mode & 0x0f) as usize % CONTENT_TYPES.len()];
    let gzipped;
    let (content_encoding, body) = match mode >> 4 & 0x3 {
        0 => (None, body),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(body);
            gzipped = e.finish().unwrap_or_default();
            (Some("gzip"), &gzipped[..])
        }
        2 => (Some("gzip"), body),
        _ => (Some("br"), body),
    };
    let content_type = (!content_type.is_empty()).then_some(content_type);
    let Ok((payload, _)) = decode_request(content_type, content_encoding, body, LIMIT) else { return };

    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(1 << 20, metrics.clone()));
    let identity = PodIdentity { pod_name: Some("p".into()), namespace: Some("ns".into()), ..Default::default() };
    let pipeline = Pipeline::new(identity, queue.clone(), metrics);
    // An odd ratio byte: the rules path too (span kind, attributes and status read on the bytes).
    let with_rules = *ratio % 2 == 1;
    let ratio = f64::from(*ratio) / 255.0;
    let rules = with_rules.then(|| {
        let sampling = tracelight_contract::config::AgentSampling {
            keep_errors: true,
            rules: tracelight_contract::sampling::health_check_rules(),
            ..tracelight_contract::config::AgentSampling::ratio(tracelight_contract::Ratio::new(ratio).expect("in range"))
        };
        Arc::new(
            tracelight_agent::rules::RuleSet::compile(&sampling, &pipeline.identity, &pipeline.metrics)
                .expect("built-in rules compile"),
        )
    });
    pipeline.set_live(LiveSettings {
        threshold: Threshold::for_ratio(ratio),
        attributes: vec![("k8s.pod.name".into(), "p".into())],
        generation: 1,
        rules,
        // Every trace a probe: the probe reader sees every input too.
        probe_below: 1 << 56,
    });
    let ingested = match payload {
        Payload::Protobuf(bytes) => {
            let ingested = pipeline.ingest(&bytes, Transport::Http);
            // The wire path refuses exactly what prost refuses.
            let decoded = ExportTraceServiceRequest::decode(&bytes[..]);
            assert_eq!(ingested.is_ok(), decoded.is_ok(), "wire {ingested:?} vs prost {decoded:?}");
            ingested
        }
        Payload::Json(request) => pipeline.ingest_request(&request, Transport::Http),
    };
    let Ok(ingested) = ingested else { return };
    let _ = ingested.rejection_message();
    if let Some(batch) = queue.take(usize::MAX) {
        let spans = batch.decode().expect("a queued batch is valid protobuf");
        let n: usize = spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        assert_eq!(n, ingested.queued, "what was counted as queued is what the queue holds");
    }
});
