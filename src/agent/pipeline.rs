//! Receive -> validate -> enrich -> sample -> queue: what both receivers call.

use super::enrich::{self, PodIdentity};
use super::metrics::{DropReason, Metrics, Transport, TransportLabel};
use super::queue::{Batch, Queue};
use super::report::ServicesSeen;
use super::sampler::{self, Decision, Threshold};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use std::sync::{Arc, RwLock};

/// The part of the config that the ingest path applies; swapped whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub threshold: Threshold,
    pub attributes: Vec<(String, String)>,
    pub generation: i64,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings { threshold: Threshold::Keep(0), attributes: Vec::new(), generation: 0 }
    }
}

/// Result of ingesting one request: how many spans were rejected as invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingested {
    pub received: usize,
    pub rejected: usize,
    pub sampled_out: usize,
    pub queued: usize,
}

impl Ingested {
    /// The partial-success message to return, when spans were rejected.
    pub fn rejection_message(&self) -> Option<String> {
        (self.rejected > 0).then(|| {
            format!("{} spans rejected: trace id must be 16 bytes and span id 8 bytes, not all zero", self.rejected)
        })
    }
}

pub struct Pipeline {
    live: RwLock<Arc<LiveSettings>>,
    pub identity: PodIdentity,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub services: ServicesSeen,
}

impl Pipeline {
    pub fn new(identity: PodIdentity, queue: Arc<Queue>, metrics: Arc<Metrics>) -> Pipeline {
        let live = LiveSettings { attributes: identity.attributes(), ..LiveSettings::default() };
        Pipeline { live: RwLock::new(Arc::new(live)), identity, queue, metrics, services: ServicesSeen::default() }
    }

    pub fn live(&self) -> Arc<LiveSettings> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_live(&self, settings: LiveSettings) {
        self.metrics.config_generation.set(settings.generation);
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    #[tracing::instrument(level = "debug", skip_all, fields(transport = ?transport))]
    pub fn ingest(&self, request: ExportTraceServiceRequest, transport: Transport) -> Ingested {
        let live = self.live();
        let mut out = Ingested::default();
        let mut kept = Vec::with_capacity(request.resource_spans.len());
        for mut rs in request.resource_spans {
            let n = process_resource(&mut rs, &live, &mut out);
            if n.received > 0 {
                let service = enrich::service_name(rs.resource.as_ref()).unwrap_or("unknown_service");
                self.services.record(service, n.received as u64);
            }
            if rs.scope_spans.iter().any(|s| !s.spans.is_empty()) {
                kept.push(rs);
            }
        }
        self.metrics.received.get_or_create(&TransportLabel { transport }).inc_by(out.received as u64);
        self.metrics.sampled_out.inc_by(out.sampled_out as u64);
        self.metrics.drop_spans(DropReason::Invalid, out.rejected);
        if !kept.is_empty() {
            self.queue.push(Batch::new(kept));
        }
        out
    }
}

/// Validate, sample and enrich one resource's spans in place; adds to `total` and returns this
/// resource's own counts.
fn process_resource(rs: &mut ResourceSpans, live: &LiveSettings, total: &mut Ingested) -> Ingested {
    let mut n = Ingested::default();
    for scope in &mut rs.scope_spans {
        n.received += scope.spans.len();
        scope.spans.retain_mut(|span| match keep_span(span, live.threshold) {
            SpanFate::Keep => true,
            SpanFate::Invalid => {
                n.rejected += 1;
                false
            }
            SpanFate::SampledOut => {
                n.sampled_out += 1;
                false
            }
        });
        n.queued += scope.spans.len();
    }
    rs.scope_spans.retain(|s| !s.spans.is_empty());
    if n.queued > 0 {
        enrich::enrich(&mut rs.resource, &live.attributes);
    }
    total.received += n.received;
    total.rejected += n.rejected;
    total.sampled_out += n.sampled_out;
    total.queued += n.queued;
    n
}

enum SpanFate {
    Keep,
    Invalid,
    SampledOut,
}

fn valid_ids(span: &Span) -> bool {
    span.trace_id.len() == 16
        && span.span_id.len() == 8
        && span.trace_id.iter().any(|&b| b != 0)
        && span.span_id.iter().any(|&b| b != 0)
}

fn keep_span(span: &mut Span, threshold: Threshold) -> SpanFate {
    if !valid_ids(span) {
        return SpanFate::Invalid;
    }
    match sampler::decide(threshold, &span.trace_id, &span.trace_state) {
        Decision::Drop => SpanFate::SampledOut,
        Decision::Keep(Some(ts)) => {
            span.trace_state = ts;
            SpanFate::Keep
        }
        Decision::Keep(None) => SpanFate::Keep,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;

    pub(crate) fn span(trace_id: [u8; 16]) -> Span {
        Span { trace_id: trace_id.to_vec(), span_id: vec![1; 8], name: "op".into(), ..Default::default() }
    }

    pub(crate) fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn pipeline() -> Pipeline {
        let metrics = Arc::new(Metrics::default());
        let queue = Arc::new(Queue::new(1 << 20, metrics.clone()));
        let identity = PodIdentity { pod_name: Some("p".into()), ..Default::default() };
        Pipeline::new(identity, queue, metrics)
    }

    #[test]
    fn invalid_ids_are_rejected_and_counted() {
        let p = pipeline();
        let mut bad = span([1; 16]);
        bad.span_id = vec![1; 3];
        let out = p.ingest(request(vec![span([1; 16]), bad, span([0; 16])]), Transport::Http);
        assert_eq!(out, Ingested { received: 3, rejected: 2, sampled_out: 0, queued: 1 });
        assert!(out.rejection_message().is_some());
        assert_eq!(p.metrics.dropped_count(DropReason::Invalid), 2);
        assert_eq!(p.queue.usage().1, 1);
    }

    #[test]
    fn sampled_spans_are_counted_and_enriched() {
        let p = pipeline();
        p.set_live(LiveSettings {
            threshold: Threshold::for_ratio(0.5),
            attributes: vec![("k8s.pod.name".into(), "p".into())],
            generation: 7,
        });
        let mut high = [0u8; 16];
        high[9] = 0xff;
        let mut low = [0u8; 16];
        low[0] = 1;
        let out = p.ingest(request(vec![span(high), span(low)]), Transport::Grpc);
        assert_eq!((out.queued, out.sampled_out), (1, 1));
        assert_eq!(p.metrics.sampled_out.get(), 1);
        assert_eq!(p.metrics.config_generation.get(), 7);
        let batch = p.queue.take(usize::MAX).expect("queued").decode().expect("valid protobuf");
        let rs = &batch[0];
        assert_eq!(rs.scope_spans[0].spans[0].trace_state, "ot=th:8");
        assert_eq!(enrich::service_name(rs.resource.as_ref()), None);
        assert!(rs.resource.as_ref().is_some_and(|r| r.attributes.iter().any(|kv| kv.key == "k8s.pod.name")));
    }

    #[test]
    fn fully_sampled_out_request_queues_nothing() {
        let p = pipeline();
        p.set_live(LiveSettings { threshold: Threshold::Never, ..LiveSettings::default() });
        p.ingest(request(vec![span([1; 16])]), Transport::Http);
        assert_eq!(p.queue.usage(), (0, 0));
        assert_eq!(p.services.snapshot().get("unknown_service"), Some(&1));
    }
}
