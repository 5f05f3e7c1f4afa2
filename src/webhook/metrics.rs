//! Admission metrics: how many pods were injected, skipped or failed, and how long it took.

use crate::telemetry::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

/// The `result` label of `tracelight_admissions_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AdmissionResult {
    /// The pod was patched.
    Injected,
    /// The injector decided not to inject (reason: a `SkipReason`).
    Skipped,
    /// Something failed; the pod was admitted unchanged (fail open).
    Error,
    /// The request was not one the webhook handles (malformed, wrong kind or operation).
    Invalid,
}

impl AdmissionResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionResult::Injected => "injected",
            AdmissionResult::Skipped => "skipped",
            AdmissionResult::Error => "error",
            AdmissionResult::Invalid => "invalid",
        }
    }
}

impl EncodeLabelValue for AdmissionResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    result: AdmissionResult,
    reason: String,
}

/// The webhook's metrics. Clones share the same counters.
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    admissions: Family<AdmissionLabels, Counter>,
    duration: Histogram,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        AdmissionMetrics {
            admissions: Family::default(),
            // 50µs .. ~1.6s: admission is in-memory, anything near a second is a bug.
            duration: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        }
    }
}

impl AdmissionMetrics {
    /// Metrics that are not exported anywhere (tests, benchmarks, the offline CLI).
    pub fn unregistered() -> Self {
        Self::default()
    }

    /// Creates the webhook metrics and registers them in the shared registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "tracelight_admissions",
            "Pod admissions handled by the webhook, by result and reason",
            this.admissions.clone(),
        );
        metrics.register(
            "tracelight_admission_duration_seconds",
            "Time to answer one admission review",
            this.duration.clone(),
        );
        this
    }

    /// Counts one admission; `reason` is a `SkipReason::as_str`, an error kind or `"none"`.
    pub fn record(&self, result: AdmissionResult, reason: &str, elapsed: Duration) {
        self.admissions.get_or_create(&AdmissionLabels { result, reason: reason.to_string() }).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Current value of one counter (for tests).
    pub fn count(&self, result: AdmissionResult, reason: &str) -> u64 {
        self.admissions.get_or_create(&AdmissionLabels { result, reason: reason.to_string() }).get()
    }
}

/// `tracelight_webhook_certificate_expiry_timestamp_seconds`: when the serving certificate the
/// webhook presents expires (Unix seconds), read from the certificate itself at each scrape, in
/// both certificate modes (self-signed and cert-manager files). Absent until one is loaded.
#[derive(Debug)]
pub struct CertificateExpiry(pub Arc<super::certs::CertResolver>);

impl CertificateExpiry {
    /// Registers the gauge in the shared registry.
    pub fn register(metrics: &Metrics, resolver: Arc<super::certs::CertResolver>) {
        metrics.with_registry(|r| r.register_collector(Box::new(CertificateExpiry(resolver))));
    }
}

impl Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(not_after) = self.0.not_after() else { return Ok(()) };
        let gauge = ConstGauge::new(not_after.unix_timestamp());
        let metric = encoder.encode_descriptor(
            "tracelight_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry_is_exported_once_a_certificate_is_loaded() {
        use super::super::certs::{make_ca, make_leaf, CertResolver, LeafSpec};
        let registry = Metrics::new();
        let resolver = Arc::new(CertResolver::new());
        CertificateExpiry::register(&registry, resolver.clone());
        let text = registry.encode().unwrap();
        assert!(!text.contains("tracelight_webhook_certificate_expiry"), "no certificate, no series: {text}");

        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ca = make_ca(now, Duration::from_secs(4 * 3600)).unwrap();
        let spec = LeafSpec::for_service("tl-webhook", "ops", &[], Duration::from_secs(3600));
        resolver.set(&make_leaf(&ca, &spec, now).unwrap()).unwrap();
        let text = registry.encode().unwrap();
        let line = format!("tracelight_webhook_certificate_expiry_timestamp_seconds {}", 1_800_000_000 + 3600);
        assert!(text.lines().any(|l| l == line), "missing `{line}` in {text}");
    }

    #[test]
    fn admissions_are_exported_with_result_and_reason_labels() {
        let registry = Metrics::new();
        let metrics = AdmissionMetrics::register(&registry);
        metrics.record(AdmissionResult::Skipped, "opted_out", Duration::from_micros(120));
        let text = registry.encode().unwrap();
        assert!(text.contains(r#"tracelight_admissions_total{result="skipped",reason="opted_out"} 1"#), "{text}");
        assert!(text.contains("tracelight_admission_duration_seconds_count 1"), "{text}");
    }
}
