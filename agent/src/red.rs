//! RED metrics before sampling: request rate, errors and a duration histogram per service and
//! route, from every server and consumer span the agent receives — exact whatever the sampling
//! ratio, since they are counted before the sampler drops anything.
//!
//! # Names: OpenTelemetry semantic conventions, mapped to Prometheus
//!
//! | spans | OpenTelemetry metric | on `/metrics` | route label (from) |
//! |---|---|---|---|
//! | `SERVER` | `http.server.request.duration` (s) | `http_server_request_duration_seconds` | `http_route` (`http.route`, else the span name) |
//! | `CONSUMER` | `messaging.process.duration` (s) | `messaging_process_duration_seconds` | `messaging_destination_name` (`messaging.destination.name`, else the span name) |
//!
//! Both also carry `service_name` (`service.name`) and `error_type` (`_OTHER` for a span with
//! status `ERROR`, empty — that is, absent to Prometheus — otherwise), as the conventions have
//! `error.type` set only on failed operations. The names follow the OpenTelemetry-to-Prometheus
//! mapping (dots to underscores, the unit as a suffix), without the `tracelight_agent` prefix of
//! the agent's own metrics: dashboards and alerts written for SDK-exported metrics work on them.
//! A `SERVER` span of another protocol (gRPC's are HTTP/2 too) counts under the HTTP name, with
//! its span name as route: one family per span kind keeps each series' meaning simple.
//!
//! # Bounded
//!
//! Services and routes are the application's to choose. At most [`MAX_SERIES`] (service, kind,
//! route) keys are counted separately; spans of a new key beyond that count under service and
//! route [`OTHER`] (one more key per kind), and names are cut to
//! [`MAX_SERVICE_NAME_BYTES`] bytes. The summary in the report is per service only.
//!
//! # Cost
//!
//! The wire walk reads kind, times, status and the route attribute of each span it already
//! visits, and collects a request's observations locally ([`Batch`], in integer nanoseconds, the
//! route as wire bytes); the shared table is locked once per request. `make bench-agent`
//! measures the path with and without (docs/performance.md).

use crate::report::truncate_name;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tracelight_contract::red::{RedCounts, RedReport, DURATION_BOUNDS_SECONDS};
use tracelight_contract::report::MAX_SERVICE_NAME_BYTES;

/// Most (service, kind, route) keys counted separately.
pub const MAX_SERIES: usize = 200;
/// The service and route of spans beyond [`MAX_SERIES`]; also the `error_type` of failed spans
/// (the conventions' value for an error of no more specific type).
pub const OTHER: &str = "_OTHER";
/// Distinct keys a request collects before it merges them into the shared table.
const BATCH_KEYS: usize = 32;
const BUCKETS: usize = DURATION_BOUNDS_SECONDS.len() + 1;

/// OTLP span kinds that are requests to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedKind {
    Server,
    Consumer,
}

impl RedKind {
    /// From OTLP's `Span.kind` (`SPAN_KIND_SERVER` = 2, `SPAN_KIND_CONSUMER` = 5).
    pub fn from_otlp(kind: u64) -> Option<RedKind> {
        match kind {
            2 => Some(RedKind::Server),
            5 => Some(RedKind::Consumer),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            RedKind::Server => 0,
            RedKind::Consumer => 1,
        }
    }

    /// The span attribute naming the route of this kind.
    pub fn route_attribute(self) -> &'static str {
        match self {
            RedKind::Server => "http.route",
            RedKind::Consumer => "messaging.destination.name",
        }
    }

    fn metric(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RedKind::Server => (
                "http_server_request_duration_seconds",
                "Duration of server spans received (before sampling), OpenTelemetry http.server.request.duration",
                "http_route",
            ),
            RedKind::Consumer => (
                "messaging_process_duration_seconds",
                "Duration of consumer spans received (before sampling), OpenTelemetry messaging.process.duration",
                "messaging_destination_name",
            ),
        }
    }
}

/// A duration histogram over [`DURATION_BOUNDS_SECONDS`] (buckets not cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        // The first bound not below `seconds` (binary search; past the last: the +Inf bucket).
        let i = DURATION_BOUNDS_SECONDS.partition_point(|&b| b < seconds);
        self.buckets[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Successful and failed requests of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pair {
    pub ok: Histogram,
    pub error: Histogram,
}

impl Pair {
    fn merge(&mut self, other: &Pair) {
        self.ok.merge(&other.ok);
        self.error.merge(&other.error);
    }
}

/// One span's RED facts.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub kind: RedKind,
    /// The route (or the span's name), as on the wire: the schema validated it as UTF-8, and it
    /// is read as a string once per key of a request, not once per span.
    pub route: &'a [u8],
    pub error: bool,
    /// Duration (end minus start; 0 for a span that ends before it starts).
    pub nanos: u64,
}

/// [`DURATION_BOUNDS_SECONDS`] in nanoseconds.
const BOUNDS_NANOS: [u64; BUCKETS - 1] = bounds_nanos();
/// Per bit length `n` of a duration in nanoseconds, the bounds below its range
/// `[2^(n-1), 2^n)`: the bucket search starts there and steps past at most the bounds inside
/// that range (two for these bounds). Replaces a binary search over floats on every span.
const FIRST_CANDIDATE: [u8; 65] = first_candidates();

const fn bounds_nanos() -> [u64; BUCKETS - 1] {
    let mut out = [0; BUCKETS - 1];
    let mut i = 0;
    while i < out.len() {
        out[i] = (DURATION_BOUNDS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    out
}

const fn first_candidates() -> [u8; 65] {
    let mut out = [0; 65];
    let mut bits = 1;
    while bits <= 64 {
        let low = 1u64 << (bits - 1);
        let mut n = 0;
        while n < BOUNDS_NANOS.len() && BOUNDS_NANOS[n] < low {
            n += 1;
        }
        out[bits] = n as u8;
        bits += 1;
    }
    out
}

/// The bucket of a duration: the first bound not below it (past the last: the +Inf bucket).
#[inline]
fn bucket(nanos: u64) -> usize {
    let mut i = FIRST_CANDIDATE[(u64::BITS - nanos.leading_zeros()) as usize] as usize;
    while i < BOUNDS_NANOS.len() && BOUNDS_NANOS[i] < nanos {
        i += 1;
    }
    i
}

/// A request's histogram of one key, in integer nanoseconds (cheaper per span than floats).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct NanosHistogram {
    buckets: [u64; BUCKETS],
    /// Saturates only past 584 years of summed durations (a forged span's).
    sum_nanos: u64,
    count: u64,
}

impl NanosHistogram {
    #[inline]
    fn observe(&mut self, nanos: u64) {
        self.buckets[bucket(nanos)] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
        self.count += 1;
    }

    fn seconds(&self) -> Histogram {
        Histogram { buckets: self.buckets, sum: self.sum_nanos as f64 * 1e-9, count: self.count }
    }
}

/// `a == b`, without a call to `memcmp` for the short strings routes mostly are: each span
/// compares its route with the last one's.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or_default());
    match a.len() {
        // Two overlapping words cover the whole of 8 to 16 bytes.
        n @ 8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=32 => {
            let n = a.len();
            word(a, 0) == word(b, 0)
                && word(a, 8) == word(b, 8)
                && word(a, n - 16) == word(b, n - 16)
                && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

/// One key of a request.
#[derive(Debug)]
struct BatchEntry<'a> {
    service: &'a str,
    kind: RedKind,
    route: &'a [u8],
    ok: NanosHistogram,
    error: NanosHistogram,
}

/// A request's observations, per key, before they are merged into [`Red`].
#[derive(Debug, Default)]
pub struct Batch<'a> {
    entries: Vec<BatchEntry<'a>>,
    /// The entry the last observation went to (spans of a request mostly repeat one route).
    last: usize,
}

impl<'a> Batch<'a> {
    /// Counts one span of `service`; returns whether the batch is full and should be merged.
    #[inline]
    pub fn observe(&mut self, service: &'a str, o: Observation<'a>) -> bool {
        // The service is the same slice for a resource's spans: pointers first, then bytes.
        let hit = |e: &BatchEntry| {
            e.kind == o.kind
                && same_bytes(e.route, o.route)
                && (std::ptr::eq(e.service, service) || e.service == service)
        };
        let i = match self.entries.get(self.last) {
            Some(e) if hit(e) => self.last,
            _ => match self.entries.iter().position(hit) {
                Some(i) => i,
                None => {
                    self.entries.push(BatchEntry {
                        service,
                        kind: o.kind,
                        route: o.route,
                        ok: NanosHistogram::default(),
                        error: NanosHistogram::default(),
                    });
                    self.entries.len() - 1
                }
            },
        };
        self.last = i;
        let entry = &mut self.entries[i];
        if o.error { &mut entry.error } else { &mut entry.ok }.observe(o.nanos);
        self.entries.len() >= BATCH_KEYS
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug, Default)]
struct Table {
    /// By service, then by kind ([`RedKind::index`]), then by route.
    services: HashMap<Box<str>, [HashMap<Box<str>, Pair>; 2]>,
    keys: usize,
}

impl Table {
    fn add(&mut self, service: &str, kind: RedKind, route: &str, pair: &Pair) {
        if let Some(p) = self.services.get_mut(service).and_then(|kinds| kinds[kind.index()].get_mut(route)) {
            p.merge(pair);
            return;
        }
        let (service, route) = if self.keys < MAX_SERIES {
            (truncate_name(service, MAX_SERVICE_NAME_BYTES).0, truncate_name(route, MAX_SERVICE_NAME_BYTES).0)
        } else {
            (OTHER, OTHER)
        };
        let kinds = self.services.entry(service.into()).or_default();
        let entry = kinds[kind.index()].entry(route.into()).or_insert_with(|| {
            self.keys += 1;
            Pair::default()
        });
        entry.merge(pair);
    }

    fn each(&self) -> impl Iterator<Item = (&str, RedKind, &str, &Pair)> {
        self.services.iter().flat_map(|(s, kinds)| {
            [RedKind::Server, RedKind::Consumer]
                .into_iter()
                .flat_map(move |k| kinds[k.index()].iter().map(move |(r, p)| (&**s, k, &**r, p)))
        })
    }
}

/// The agent's RED counters since it started.
#[derive(Debug)]
pub struct Red {
    enabled: bool,
    table: Mutex<Table>,
}

impl Red {
    pub fn new(enabled: bool) -> Red {
        Red { enabled, table: Mutex::default() }
    }

    /// Whether spans are counted (`--red-metrics`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Adds a request's observations (one lock) and empties the batch.
    pub fn merge(&self, batch: &mut Batch<'_>) {
        if batch.entries.is_empty() {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for e in batch.entries.drain(..) {
            // Validated by the schema; a route that is not UTF-8 all the same counts as `_OTHER`.
            let route = std::str::from_utf8(e.route).unwrap_or(OTHER);
            table.add(e.service, e.kind, route, &Pair { ok: e.ok.seconds(), error: e.error.seconds() });
        }
        batch.last = 0;
    }

    /// The summary per service for the report; none when disabled.
    pub fn report(&self) -> Option<RedReport> {
        if !self.enabled {
            return None;
        }
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut services: BTreeMap<String, RedCounts> = BTreeMap::new();
        for (service, _, _, pair) in table.each() {
            let mut all = pair.ok;
            all.merge(&pair.error);
            services.entry(service.to_string()).or_default().add(&RedCounts {
                requests: all.count,
                errors: pair.error.count,
                duration_seconds_sum: all.sum,
                buckets: all.buckets.to_vec(),
            });
        }
        Some(RedReport { bounds: DURATION_BOUNDS_SECONDS.to_vec(), services })
    }

    /// A copy of every key's counts, for `/metrics` (the lock is not held while encoding).
    fn snapshot(&self) -> Vec<(String, RedKind, String, Pair)> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = table.each().map(|(s, k, r, p)| (s.to_string(), k, r.to_string(), *p)).collect();
        all.sort_by(|a, b| (a.0.as_str(), a.2.as_str()).cmp(&(b.0.as_str(), b.2.as_str())));
        all
    }
}

/// The `/metrics` side of [`Red`].
#[derive(Debug)]
pub struct RedCollector(pub std::sync::Arc<Red>);

impl Collector for RedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.0.enabled {
            return Ok(());
        }
        let snapshot = self.0.snapshot();
        for kind in [RedKind::Server, RedKind::Consumer] {
            let (name, help, route_label) = kind.metric();
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (service, _, route, pair) in snapshot.iter().filter(|s| s.1 == kind) {
                for (error_type, h) in [("", &pair.ok), (OTHER, &pair.error)] {
                    if h.count == 0 {
                        continue;
                    }
                    let labels =
                        [("service_name", service.as_str()), (route_label, route.as_str()), ("error_type", error_type)];
                    let buckets: Vec<(f64, u64)> = DURATION_BOUNDS_SECONDS
                        .iter()
                        .copied()
                        .chain([f64::INFINITY])
                        .zip(h.buckets.iter().copied())
                        .collect();
                    let metric = Const { sum: h.sum, count: h.count, buckets: &buckets };
                    metric.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// A histogram of fixed values, encoded as prometheus-client's own.
struct Const<'b> {
    sum: f64,
    count: u64,
    buckets: &'b [(f64, u64)],
}

impl prometheus_client::encoding::EncodeMetric for Const<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.sum, self.count, self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    fn obs(kind: RedKind, route: &str, error: bool, seconds: f64) -> Observation<'_> {
        Observation { kind, route: route.as_bytes(), error, nanos: (seconds * 1e9).round() as u64 }
    }

    #[test]
    fn same_bytes_is_equality() {
        let samples: Vec<Vec<u8>> = (0..40)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
                // The same, and one byte changed at each position.
                let mut all = vec![base.clone()];
                all.extend((0..n).map(|i| {
                    let mut v = base.clone();
                    v[i] ^= 1;
                    v
                }));
                all
            })
            .collect();
        for a in &samples {
            for b in &samples {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn the_bucket_of_a_duration_is_the_first_bound_not_below_it() {
        // Against the plain search over the float bounds: every bound, its neighbours, and
        // every power of two (the edges of the lookup table).
        let mut durations: Vec<u64> = vec![0, 1, u64::MAX];
        for b in BOUNDS_NANOS {
            durations.extend([b - 1, b, b + 1]);
        }
        durations.extend((0..64).flat_map(|k| [(1u64 << k) - 1, 1 << k, (1 << k) + 1]));
        for nanos in durations {
            let want = DURATION_BOUNDS_SECONDS.partition_point(|&b| ((b * 1e9).round() as u64) < nanos);
            assert_eq!(bucket(nanos), want, "{nanos} ns");
        }
        assert_eq!(bucket(2_000_000), 2, "2 ms: up to 2.5 ms");
        assert_eq!(bucket(20_000_000_000), BUCKETS - 1, "20 s: +Inf");
    }

    #[test]
    fn a_request_is_aggregated_per_service_kind_and_route() {
        let red = Red::new(true);
        let mut batch = Batch::default();
        batch.observe("shop", obs(RedKind::Server, "/a", false, 0.002));
        batch.observe("shop", obs(RedKind::Server, "/a", true, 0.3));
        batch.observe("shop", obs(RedKind::Consumer, "/a", false, 20.0));
        batch.observe("cart", obs(RedKind::Server, "/a", false, 0.0001));
        red.merge(&mut batch);
        assert!(batch.is_empty());
        let report = red.report().expect("enabled");
        assert_eq!(report.bounds, DURATION_BOUNDS_SECONDS.to_vec());
        let shop = &report.services["shop"];
        assert_eq!((shop.requests, shop.errors), (3, 1));
        assert!((shop.duration_seconds_sum - 20.302).abs() < 1e-9);
        assert_eq!(shop.buckets[2], 1, "2 ms is in the bucket up to 2.5 ms");
        assert_eq!(shop.buckets[10], 1, "300 ms is in the bucket up to 0.5 s");
        assert_eq!(shop.buckets[BUCKETS - 1], 1, "20 s is beyond the last bound");
        assert_eq!(report.services["cart"].buckets[0], 1);
    }

    #[test]
    fn keys_beyond_the_cap_count_under_other() {
        let red = Red::new(true);
        let routes: Vec<String> = (0..MAX_SERIES + 50).map(|i| format!("/r{i}")).collect();
        for r in &routes {
            let mut batch = Batch::default();
            batch.observe("svc", obs(RedKind::Server, r, false, 0.01));
            red.merge(&mut batch);
        }
        let snapshot = red.snapshot();
        assert_eq!(snapshot.len(), MAX_SERIES + 1);
        let other = snapshot.iter().find(|s| s.0 == OTHER && s.2 == OTHER).expect("overflow key");
        assert_eq!(other.3.ok.count, 50);
        let report = red.report().unwrap();
        assert_eq!(report.services.values().map(|c| c.requests).sum::<u64>(), (MAX_SERIES + 50) as u64, "none lost");
        // A known key keeps counting as itself.
        let mut batch = Batch::default();
        batch.observe("svc", obs(RedKind::Server, "/r0", false, 0.01));
        red.merge(&mut batch);
        assert_eq!(red.snapshot().iter().find(|s| s.2 == "/r0").unwrap().3.ok.count, 2);
    }

    #[test]
    fn a_batch_asks_to_be_merged_when_it_holds_many_keys() {
        let routes: Vec<String> = (0..BATCH_KEYS).map(|i| format!("/r{i}")).collect();
        let mut batch = Batch::default();
        let full: Vec<bool> = routes.iter().map(|r| batch.observe("s", obs(RedKind::Server, r, false, 0.1))).collect();
        assert_eq!(full.iter().filter(|f| **f).count(), 1);
        assert!(full[BATCH_KEYS - 1]);
    }

    #[test]
    fn long_names_are_cut() {
        let red = Red::new(true);
        let long = "é".repeat(400);
        let mut batch = Batch::default();
        batch.observe(&long, obs(RedKind::Server, &long, false, 0.1));
        red.merge(&mut batch);
        let s = red.snapshot();
        assert_eq!((s[0].0.len(), s[0].2.len()), (MAX_SERVICE_NAME_BYTES, MAX_SERVICE_NAME_BYTES));
    }

    #[test]
    fn exposition_uses_the_semantic_convention_names() {
        let red = Arc::new(Red::new(true));
        let mut batch = Batch::default();
        batch.observe("shop", obs(RedKind::Server, "/items/{id}", false, 0.02));
        batch.observe("shop", obs(RedKind::Server, "/items/{id}", true, 0.02));
        batch.observe("worker", obs(RedKind::Consumer, "orders", false, 1.0));
        red.merge(&mut batch);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RedCollector(red)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE http_server_request_duration_seconds histogram",
            r#"http_server_request_duration_seconds_count{service_name="shop",http_route="/items/{id}",error_type=""} 1"#,
            r#"http_server_request_duration_seconds_bucket{le="0.025",service_name="shop",http_route="/items/{id}",error_type="_OTHER"} 1"#,
            r#"messaging_process_duration_seconds_bucket{le="+Inf",service_name="worker",messaging_destination_name="orders",error_type=""} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }

    /// Through the pipeline: every server and consumer span counts, before sampling drops them.
    #[test]
    fn the_route_is_read_when_sampling_rules_read_attributes_too() {
        use crate::metrics::{Metrics, Transport};
        use crate::pipeline::tests::{request, span};
        use crate::pipeline::{LiveSettings, Pipeline};
        use crate::rules::RuleSet;
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use tracelight_contract::config::AgentSampling;
        use tracelight_contract::sampling::{AgentRule, AttributeMatch, StringMatch};
        use tracelight_contract::Ratio;
        let metrics = Arc::new(Metrics::default());
        let queue = Arc::new(crate::queue::Queue::new(1 << 20, metrics.clone()));
        let p = Pipeline::new(Default::default(), queue, metrics.clone());
        // A rule that reads an attribute: the wire path then takes its attribute fast path.
        let rule = AgentRule {
            name: "checkout".into(),
            workloads: Vec::new(),
            services: Vec::new(),
            span_kinds: Vec::new(),
            attributes: vec![AttributeMatch { key: "http.route".into(), value: StringMatch::exact("/checkout") }],
            ratio: Ratio::new(1.0).unwrap(),
            spans_per_second: None,
        };
        let sampling = AgentSampling { rules: vec![rule], ..AgentSampling::ratio(Ratio::new(0.5).unwrap()) };
        let set = RuleSet::compile(&sampling, &Default::default(), &metrics).expect("rules compile");
        p.set_live(LiveSettings { rules: Some(Arc::new(set)), ..LiveSettings::default() });
        let mut s = span([1; 16]);
        s.kind = 2;
        s.name = "GET".into();
        s.attributes = vec![KeyValue {
            key: "http.route".into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue("/items/{id}".into())) }),
            ..Default::default()
        }];
        p.ingest_request(&request(vec![s]), Transport::Http).expect("valid");
        let snapshot = p.red.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].2, "/items/{id}", "the route attribute, not the span name");
    }

    #[test]
    fn spans_count_before_sampling_with_their_route_status_and_duration() {
        use crate::metrics::{Metrics, Transport};
        use crate::pipeline::tests::{request, span};
        use crate::pipeline::{LiveSettings, Pipeline};
        use crate::sampler::Threshold;
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};
        let metrics = Arc::new(Metrics::default());
        let queue = Arc::new(crate::queue::Queue::new(1 << 20, metrics.clone()));
        let p = Pipeline::new(Default::default(), queue, metrics);
        p.set_live(LiveSettings { threshold: Threshold::Never, ..LiveSettings::default() });
        let attr = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        };
        let mut spans = Vec::new();
        for i in 0..10u8 {
            let mut s = span([i + 1; 16]);
            s.kind = 2;
            s.start_time_unix_nano = 1_000_000_000;
            s.end_time_unix_nano = 1_000_000_000 + 3_000_000; // 3 ms
            s.attributes = vec![attr("http.request.method", "GET"), attr("http.route", "/items/{id}")];
            if i == 0 {
                s.status = Some(Status { code: StatusCode::Error as i32, ..Default::default() });
            }
            spans.push(s);
        }
        let mut client = span([99; 16]);
        client.kind = 3;
        spans.push(client);
        let mut consumer = span([98; 16]);
        consumer.kind = 5;
        consumer.name = "orders process".into();
        spans.push(consumer);
        let out = p.ingest_request(&request(spans), Transport::Http).expect("valid");
        assert_eq!(out.sampled_out, 12, "the sampler dropped every span");
        let snapshot = p.red.snapshot();
        let server = snapshot.iter().find(|s| s.1 == RedKind::Server).expect("server key");
        assert_eq!((server.0.as_str(), server.2.as_str()), ("unknown_service", "/items/{id}"));
        assert_eq!((server.3.ok.count, server.3.error.count), (9, 1));
        assert_eq!(server.3.ok.buckets[3], 9, "3 ms is in the bucket up to 5 ms");
        let consumer = snapshot.iter().find(|s| s.1 == RedKind::Consumer).expect("consumer key");
        assert_eq!(consumer.2, "orders process", "no destination attribute: the span name");
        assert_eq!(snapshot.len(), 2, "client spans are not requests");
        // Off: nothing is counted.
        let metrics = Arc::new(Metrics::default());
        let queue = Arc::new(crate::queue::Queue::new(1 << 20, metrics.clone()));
        let off = Pipeline::new(Default::default(), queue, metrics).with_red(Arc::new(Red::new(false)));
        let mut s = span([1; 16]);
        s.kind = 2;
        off.ingest_request(&request(vec![s]), Transport::Http).expect("valid");
        assert!(off.red.snapshot().is_empty());
    }

    #[test]
    fn disabled_counts_nothing_and_reports_nothing() {
        let red = Arc::new(Red::new(false));
        assert_eq!(red.report(), None);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RedCollector(red)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("http_server"), "{text}");
    }
}
