//! The agent's Prometheus metrics (`/metrics`), also read back for `/report`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Transport {
    Grpc,
    Http,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: Transport,
}

/// Why spans were lost. Every span the agent accepted and did not export is counted under one.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DropReason {
    /// The queue was full and the oldest data made room for newer data.
    QueueFull,
    /// The collector refused the data for good (400, 413, partial success, permanent gRPC code).
    ExportRejected,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
    /// Invalid trace or span id (reported back to the sender as a partial success).
    Invalid,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: DropReason,
}

/// A sampling rule's name (`default` for the fallback).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

/// One rule's counters (handles to the `/metrics` families).
#[derive(Debug, Clone, Default)]
pub struct RuleCounters {
    pub received: Counter,
    pub kept: Counter,
    pub capped: Counter,
    pub kept_errors: Counter,
}

/// Most rule names counted separately; names beyond (reload after reload of renamed rules) are
/// counted under [`OTHER_RULES`], so a config cannot grow the metrics without bound.
pub const MAX_RULE_NAMES: usize = 128;
pub const OTHER_RULES: &str = "other";

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Success,
    Retryable,
    Permanent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReloadResult {
    Applied,
    Rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    pub result: ReloadResult,
}

/// All counters and gauges; cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    pub received: Family<TransportLabel, Counter>,
    pub sampled_out: Counter,
    pub exported: Counter,
    pub dropped: Family<ReasonLabel, Counter>,
    /// Requests answered with a retryable "overloaded" error (the sender keeps the data).
    pub refused_requests: Counter,
    /// Requests answered 400/413/415 (malformed, too large, unsupported).
    pub malformed_requests: Counter,
    pub queue_bytes: Gauge,
    pub queue_spans: Gauge,
    /// Requests that waited for the exporter to catch up (`crate::queue::Queue::pace`), and
    /// how long they waited in all.
    pub paced_requests: Counter,
    pub pace_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub export_duration: Family<OutcomeLabel, Histogram>,
    pub config_generation: Gauge,
    pub config_reloads: Family<ReloadLabel, Counter>,
    /// Per sampling rule: spans it decided, kept, and kept by the ratio but dropped by the cap.
    pub rule_received: Family<RuleLabel, Counter>,
    pub rule_kept: Family<RuleLabel, Counter>,
    pub rule_capped: Family<RuleLabel, Counter>,
    pub rule_kept_errors: Family<RuleLabel, Counter>,
    /// Bytes of kept spans queued for export (protobuf, before compression).
    pub kept_bytes: Counter,
    /// The rule names counted so far (for the report; `Family` cannot be listed).
    rule_names: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            received: Family::default(),
            sampled_out: Counter::default(),
            exported: Counter::default(),
            dropped: Family::default(),
            refused_requests: Counter::default(),
            malformed_requests: Counter::default(),
            queue_bytes: Gauge::default(),
            queue_spans: Gauge::default(),
            paced_requests: Counter::default(),
            pace_wait_seconds: Counter::default(),
            export_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14))),
            config_generation: Gauge::default(),
            config_reloads: Family::default(),
            rule_received: Family::default(),
            rule_kept: Family::default(),
            rule_capped: Family::default(),
            rule_kept_errors: Family::default(),
            kept_bytes: Counter::default(),
            rule_names: Default::default(),
        }
    }
}

impl Metrics {
    pub fn drop_spans(&self, reason: DropReason, spans: usize) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc_by(spans as u64);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped.get_or_create(&ReasonLabel { reason }).get()
    }

    pub fn received_count(&self) -> u64 {
        [Transport::Grpc, Transport::Http]
            .iter()
            .map(|&t| self.received.get_or_create(&TransportLabel { transport: t }).get())
            .sum()
    }

    /// The counters of rule `name`, shared with `/metrics`.
    pub fn rule_counters(&self, name: &str) -> RuleCounters {
        let mut names = self.rule_names.lock().unwrap_or_else(|p| p.into_inner());
        let name = if names.contains(name) || names.len() < MAX_RULE_NAMES { name } else { OTHER_RULES };
        names.insert(name.to_string());
        let label = RuleLabel { rule: name.to_string() };
        RuleCounters {
            received: self.rule_received.get_or_create(&label).clone(),
            kept: self.rule_kept.get_or_create(&label).clone(),
            capped: self.rule_capped.get_or_create(&label).clone(),
            kept_errors: self.rule_kept_errors.get_or_create(&label).clone(),
        }
    }

    /// Every rule's counters since start, for the report.
    pub fn rule_counts(&self) -> std::collections::BTreeMap<String, tracelight_contract::sampling::RuleCounts> {
        let names = self.rule_names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        names
            .into_iter()
            .map(|rule| {
                let label = RuleLabel { rule };
                let counts = tracelight_contract::sampling::RuleCounts {
                    received: self.rule_received.get_or_create(&label).get(),
                    kept: self.rule_kept.get_or_create(&label).get(),
                    capped: self.rule_capped.get_or_create(&label).get(),
                    kept_errors: self.rule_kept_errors.get_or_create(&label).get(),
                };
                (label.rule, counts)
            })
            .collect()
    }

    /// A registry with every metric under the `tracelight_agent` prefix (the RED and process
    /// collectors are added beside, unprefixed, by the admin server).
    pub fn registry(&self) -> Registry {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("tracelight_agent");
        r.register("spans_received", "Spans received from applications", self.received.clone());
        r.register("spans_sampled_out", "Spans dropped by the sampler", self.sampled_out.clone());
        r.register("spans_exported", "Spans accepted by the collector", self.exported.clone());
        r.register("spans_dropped", "Spans lost, by reason", self.dropped.clone());
        r.register("requests_refused", "Requests refused as overload (sender retries)", self.refused_requests.clone());
        r.register(
            "requests_malformed",
            "Requests rejected as malformed or too large",
            self.malformed_requests.clone(),
        );
        r.register("queue_bytes", "Bytes of spans waiting for export", self.queue_bytes.clone());
        r.register("queue_spans", "Spans waiting for export", self.queue_spans.clone());
        r.register(
            "requests_paced",
            "Requests that waited for the exporter to catch up (senders slowed down)",
            self.paced_requests.clone(),
        );
        r.register(
            "pace_wait_seconds",
            "Time requests waited for the exporter, in all",
            self.pace_wait_seconds.clone(),
        );
        r.register("export_duration_seconds", "Duration of export requests", self.export_duration.clone());
        r.register("config_generation", "Policy generation of the config in effect", self.config_generation.clone());
        r.register("config_reloads", "Config reloads, by result", self.config_reloads.clone());
        r.register(
            "rule_spans_received",
            "Spans decided by a sampling rule, before sampling",
            self.rule_received.clone(),
        );
        r.register(
            "rule_spans_kept",
            "Spans a sampling rule kept (error spans kept by keepErrors included)",
            self.rule_kept.clone(),
        );
        r.register(
            "rule_spans_kept_errors",
            "Error spans a rule kept only because of keepErrors (also in rule_spans_kept)",
            self.rule_kept_errors.clone(),
        );
        r.register(
            "kept_bytes",
            "Bytes of kept spans queued for export (protobuf, uncompressed)",
            self.kept_bytes.clone(),
        );
        r.register(
            "rule_spans_capped",
            "Spans a rule's ratio kept but its local spans-per-second cap dropped",
            self.rule_capped.clone(),
        );
        root
    }
}
