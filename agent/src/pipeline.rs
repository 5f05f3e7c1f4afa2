//! Receive -> validate -> sample -> enrich -> queue: what both receivers call. The work on the
//! request's bytes is `super::wire`'s; this holds the live settings and does the bookkeeping
//! (metrics, services seen, the queue).

use super::enrich::PodIdentity;
use super::metrics::{DropReason, Metrics, Transport, TransportLabel};
use super::queue::{Batch, Queue};
use super::report::ServicesSeen;
use super::rules::RuleSet;
use super::sampler::Threshold;
use super::wire::{self, Rules, WireError};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::cell::RefCell;
use std::sync::{Arc, RwLock};

pub use super::wire::Ingested;

/// The part of the config that the ingest path applies; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// The ratio's threshold, for every span when there are no rules.
    pub threshold: Threshold,
    pub attributes: Vec<(String, String)>,
    pub generation: i64,
    /// Sampling rules, `keepErrors`, caps; `None` when the config has none (the fast path:
    /// spans are counted under the fallback rule in bulk).
    pub rules: Option<Arc<RuleSet>>,
    /// Spans of traces whose randomness is below this are recorded as probes (0: off).
    pub probe_below: u64,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            threshold: Threshold::Keep(0),
            attributes: Vec::new(),
            generation: 0,
            rules: None,
            probe_below: 0,
        }
    }
}

/// Capacity of the per-thread output buffer kept between requests (a larger request's is freed).
const SCRATCH_KEEP: usize = 256 << 10;

thread_local! {
    /// Where a request's kept spans are written before they are copied, at their exact size,
    /// into the queue: the queue's byte bound is then the memory it holds.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct Pipeline {
    live: RwLock<Arc<LiveSettings>>,
    pub identity: PodIdentity,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub services: ServicesSeen,
    /// Probe spans waiting for the next report.
    pub probes: super::probes::ProbeBuffer,
    /// The fallback rule's counters, for requests processed without rules.
    fallback: super::metrics::RuleCounters,
    /// RED metrics, counted from every span before sampling (`super::red`).
    pub red: Arc<super::red::Red>,
}

impl Pipeline {
    pub fn new(identity: PodIdentity, queue: Arc<Queue>, metrics: Arc<Metrics>) -> Pipeline {
        let live = LiveSettings { attributes: identity.attributes(), ..LiveSettings::default() };
        let fallback = metrics.rule_counters(tracelight_contract::sampling::FALLBACK_RULE);
        Pipeline {
            live: RwLock::new(Arc::new(live)),
            identity,
            queue,
            metrics,
            services: ServicesSeen::default(),
            probes: super::probes::ProbeBuffer::from_env(),
            fallback,
            red: Arc::new(super::red::Red::new(true)),
        }
    }

    /// This pipeline counting RED metrics in `red` (disabled: counting nothing).
    pub fn with_red(mut self, red: Arc<super::red::Red>) -> Pipeline {
        self.red = red;
        self
    }

    pub fn live(&self) -> Arc<LiveSettings> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_live(&self, settings: LiveSettings) {
        self.metrics.config_generation.set(settings.generation);
        self.probes.configure(settings.probe_below);
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Ingest one protobuf-encoded `ExportTraceServiceRequest`. A malformed request is refused
    /// whole (nothing queued or counted but `malformed_requests`); the caller answers 400.
    #[tracing::instrument(level = "debug", skip_all, fields(transport = ?transport, bytes = request.len()))]
    pub fn ingest(&self, request: &[u8], transport: Transport) -> Result<Ingested, WireError> {
        let live = self.live();
        let rules = Rules {
            threshold: live.threshold,
            attributes: &live.attributes,
            sampling: live.rules.as_deref(),
            // The interval's threshold, lowered once the cap is reached: spans above it are not
            // even read (at 1/64 of every trace, building them cost 12% of the throughput).
            probe_below: if live.probe_below > 0 { self.probes.threshold().min(live.probe_below) } else { 0 },
        };
        SCRATCH.with_borrow_mut(|out| {
            out.clear();
            let result = wire::process_with_red(request, rules, Some(&self.red), out).map(|mut processed| {
                if !processed.probes.is_empty() {
                    self.probes.record(std::mem::take(&mut processed.probes));
                }
                for (service, spans) in processed.services {
                    self.services.record(service.unwrap_or("unknown_service"), spans as u64);
                }
                let counts = processed.counts;
                self.count_rules(live.rules.as_deref(), &processed.rules, counts);
                if counts.queued > 0 {
                    self.metrics.kept_bytes.inc_by(out.len() as u64);
                    self.queue.push(Batch::from_encoded(Bytes::copy_from_slice(out), counts.queued));
                }
                self.metrics.received.get_or_create(&TransportLabel { transport }).inc_by(counts.received as u64);
                self.metrics.sampled_out.inc_by(counts.sampled_out as u64);
                self.metrics.drop_spans(DropReason::Invalid, counts.rejected);
                counts
            });
            if out.capacity() > SCRATCH_KEEP {
                *out = Vec::new();
            }
            if result.is_err() {
                self.metrics.malformed_requests.inc();
            }
            result
        })
    }

    /// Adds a request's per-rule tallies to the rules' counters; without rules, every valid span
    /// was the fallback's.
    fn count_rules(&self, rules: Option<&RuleSet>, tallies: &[wire::RuleTally], counts: Ingested) {
        match rules {
            Some(set) => {
                for (i, t) in tallies.iter().enumerate().filter(|(_, t)| t.received > 0) {
                    let outcome = set.outcome(i);
                    let c = &outcome.counters;
                    c.received.inc_by(t.received);
                    c.kept.inc_by(t.kept);
                    c.capped.inc_by(t.capped);
                    c.kept_errors.inc_by(t.kept_errors);
                }
            }
            None => {
                self.fallback.received.inc_by((counts.received - counts.rejected) as u64);
                self.fallback.kept.inc_by(counts.queued as u64);
            }
        }
    }

    /// Ingest a decoded request (OTLP/JSON, tests): encoded, then [`Pipeline::ingest`].
    pub fn ingest_request(
        &self,
        request: &ExportTraceServiceRequest,
        transport: Transport,
    ) -> Result<Ingested, WireError> {
        use prost::Message;
        self.ingest(&request.encode_to_vec(), transport)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

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
        let out = p.ingest_request(&request(vec![span([1; 16]), bad, span([0; 16])]), Transport::Http).expect("valid");
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
            rules: None,
            probe_below: 0,
        });
        let mut high = [0u8; 16];
        high[9] = 0xff;
        let mut low = [0u8; 16];
        low[0] = 1;
        let out = p.ingest_request(&request(vec![span(high), span(low)]), Transport::Grpc).expect("valid");
        assert_eq!((out.queued, out.sampled_out), (1, 1));
        assert_eq!(p.metrics.sampled_out.get(), 1);
        assert_eq!(p.metrics.config_generation.get(), 7);
        let batch = p.queue.take(usize::MAX).expect("queued").decode().expect("valid protobuf");
        let rs = &batch[0];
        assert_eq!(rs.scope_spans[0].spans[0].trace_state, "ot=th:8");
        let resource = rs.resource.as_ref().expect("enriched");
        assert!(!resource.attributes.iter().any(|kv| kv.key == "service.name"));
        assert!(rs.resource.as_ref().is_some_and(|r| r.attributes.iter().any(|kv| kv.key == "k8s.pod.name")));
    }

    #[test]
    fn fully_sampled_out_request_queues_nothing() {
        let p = pipeline();
        p.set_live(LiveSettings { threshold: Threshold::Never, ..LiveSettings::default() });
        p.ingest_request(&request(vec![span([1; 16])]), Transport::Http).expect("valid");
        assert_eq!(p.queue.usage(), (0, 0));
        assert_eq!(p.services.snapshot().get("unknown_service"), Some(&1));
    }

    #[test]
    fn probe_traces_are_recorded_before_sampling_and_only_they() {
        let p = pipeline();
        // Sampling keeps nothing; probes take the traces whose randomness is below 2^40.
        p.set_live(LiveSettings { threshold: Threshold::Never, probe_below: 1 << 40, ..LiveSettings::default() });
        let mut probe = [0xaa; 16];
        probe[9..].copy_from_slice(&[0, 0, 0, 0, 0, 1, 2]);
        let other = [0xaa; 16];
        p.ingest_request(&request(vec![span(probe), span(other)]), Transport::Http).expect("valid");
        assert_eq!(p.queue.usage(), (0, 0), "sampled out");
        let probes = p.probes.take().expect("probes on");
        assert_eq!(probes.spans.len(), 1);
        assert_eq!(probes.spans[0].trace_id, tracelight_contract::probe::to_hex(&probe));
        assert_eq!(probes.spans[0].service, "unknown_service");
        p.set_live(LiveSettings::default());
        p.ingest_request(&request(vec![span(probe)]), Transport::Http).expect("valid");
        assert_eq!(p.probes.take(), None, "probes off");
    }

    #[test]
    fn once_the_probe_cap_lowers_the_threshold_spans_above_it_are_not_recorded() {
        let p = pipeline();
        p.set_live(LiveSettings { threshold: Threshold::Never, probe_below: 1 << 56, ..LiveSettings::default() });
        // 100 traces of randomness 1..=100: over the cap of 64, the threshold drops.
        let trace = |r: u8| {
            let mut id = [0xaa; 16];
            id[9..].copy_from_slice(&[0, 0, 0, 0, 0, 0, r]);
            id
        };
        p.ingest_request(&request((1..=100).map(|r| span(trace(r))).collect()), Transport::Http).expect("valid");
        let lowered = p.probes.threshold();
        assert!(lowered <= 65, "{lowered}");
        p.ingest_request(&request(vec![span(trace(200))]), Transport::Http).expect("valid");
        let taken = p.probes.take().map(|t| (t.threshold, t.spans.len(), t.left_out));
        // Left out: the 36 recorded before the threshold dropped; the later span was never read.
        assert_eq!(taken, Some((lowered, 64, 36)), "a span above the lowered threshold is not looked at");
    }

    #[test]
    fn malformed_request_is_refused_whole_and_counted() {
        let p = pipeline();
        let mut body = prost::Message::encode_to_vec(&request(vec![span([1; 16]), span([2; 16])]));
        body.push(0xff); // a truncated varint key after the valid part
        assert!(p.ingest(&body, Transport::Http).is_err());
        assert_eq!(p.queue.usage(), (0, 0));
        assert_eq!(p.metrics.malformed_requests.get(), 1);
        assert!(p.services.snapshot().is_empty());
        assert_eq!(p.metrics.received.get_or_create(&TransportLabel { transport: Transport::Http }).get(), 0);
    }
}
