//! The compact self-report (`GET /report`): who this agent is, what it received, which config
//! generation it runs. The operator uses it for coverage and to confirm that a change reached
//! every pod.
//!
//! # Authenticated report channel (design; the operator side is a later issue)
//!
//! A report must not be forgeable by another pod. The agent therefore does not rely on the
//! network identity of whoever polls `/report`; instead it *pushes* the report to the operator:
//!
//! 1. The injector mounts a projected ServiceAccount token with a dedicated audience
//!    (`tracelight.io/agent-report`), a short expiry (e.g. 10 min; the kubelet rotates the file)
//!    into the agent container only, and passes its path with `--report-token-file` and the
//!    operator's URL with `--report-url`.
//! 2. The agent POSTs the JSON report with `Authorization: Bearer <token>`, re-reading the file
//!    for every push (rotation). The token is never logged.
//! 3. The operator calls `TokenReview` with `audiences: [tracelight.io/agent-report]`; the API
//!    server returns the authenticated ServiceAccount and, because the token is bound, the pod
//!    name and uid (`authentication.kubernetes.io/pod-name` / `pod-uid` extra fields). The
//!    operator accepts the report only for that pod: the `pod`/`namespace` fields in the body are
//!    checked against the reviewed identity, so pod A cannot report as pod B. The dedicated
//!    audience means the token is useless against the API server or any other service, and a
//!    token for any other audience is refused by the review. Reviews are cached per token hash
//!    until the token's expiry to keep API load flat.

use super::enrich::PodIdentity;
use super::metrics::{DropReason, Metrics};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
pub use tracelight_contract::report::{AgentReport as Report, ReportedPod, SpanCounts, Truncated};
use tracelight_contract::report::{MAX_REPORT_BYTES, MAX_SERVICE_NAME_BYTES};

/// Services seen so far, with span counts, and when the last span arrived. Bounded: a
/// misbehaving app cannot grow it forever.
#[derive(Default)]
pub struct ServicesSeen(Mutex<Seen>);

#[derive(Default)]
struct Seen {
    spans: BTreeMap<String, u64>,
    last: Option<Instant>,
    /// Names cut to [`MAX_SERVICE_NAME_BYTES`] when first seen.
    truncated_names: u64,
}

/// `name` cut to `max` bytes at a character boundary, and whether it was cut.
pub fn truncate_name(name: &str, max: usize) -> (&str, bool) {
    if name.len() <= max {
        return (name, false);
    }
    let end = (0..=max).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    (&name[..end], true)
}

const MAX_SERVICES: usize = 64;
const OTHER: &str = "_other";

impl ServicesSeen {
    pub fn record(&self, service: &str, spans: u64) {
        let (service, cut) = truncate_name(service, MAX_SERVICE_NAME_BYTES);
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = if seen.spans.contains_key(service) || seen.spans.len() < MAX_SERVICES { service } else { OTHER };
        if cut && key == service && !seen.spans.contains_key(key) {
            seen.truncated_names += 1;
        }
        *seen.spans.entry(key.to_string()).or_default() += spans;
        if spans > 0 {
            seen.last = Some(Instant::now());
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).spans.clone()
    }

    /// What was cut so far; none when nothing was.
    pub fn truncation(&self) -> Option<Truncated> {
        let n = self.0.lock().unwrap_or_else(|p| p.into_inner()).truncated_names;
        (n > 0).then_some(Truncated { service_names: n, services_left_out: 0 })
    }

    /// Time since the last span was recorded; none when none ever was.
    pub fn last_span_age(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).last.map(|t| t.elapsed())
    }
}

impl From<&PodIdentity> for ReportedPod {
    fn from(p: &PodIdentity) -> Self {
        ReportedPod {
            pod_name: p.pod_name.clone(),
            namespace: p.namespace.clone(),
            node_name: p.node_name.clone(),
            pod_uid: p.pod_uid.clone(),
            workload_kind: p.workload_kind.clone(),
            workload_name: p.workload_name.clone(),
        }
    }
}

/// The report as JSON, under the operator's [`MAX_REPORT_BYTES`].
pub fn bounded_json(report: Report) -> Vec<u8> {
    bounded_json_under(report, MAX_REPORT_BYTES)
}

/// The report as JSON of at most `max` bytes when leaving out services can make it so: the
/// services with the longest names go first, their spans counted under `_other` and their number
/// in [`Truncated::services_left_out`]. With names bounded and services capped this does not
/// happen in practice; it keeps a report from being refused (413) forever if it ever would.
/// Probe spans go first, all of them (threshold 0: the operator then expects none from this
/// interval, so nothing looks broken for their absence).
pub fn bounded_json_under(mut report: Report, max: usize) -> Vec<u8> {
    loop {
        let json = serde_json::to_vec(&report).unwrap_or_default();
        if json.len() <= max {
            return json;
        }
        if let Some(probes) = report.probes.as_mut().filter(|p| !p.spans.is_empty()) {
            probes.left_out += probes.spans.len() as u64;
            probes.spans.clear();
            probes.threshold = 0;
            continue;
        }
        let longest = report.services.keys().filter(|k| *k != OTHER).max_by_key(|k| k.len()).cloned();
        let Some(longest) = longest else { return json };
        let spans = report.services.remove(&longest).unwrap_or(0);
        *report.services.entry(OTHER.to_string()).or_default() += spans;
        report.truncated.get_or_insert_with(Truncated::default).services_left_out += 1;
    }
}

pub fn span_counts(metrics: &Metrics) -> SpanCounts {
    let reasons = [
        ("queueFull", DropReason::QueueFull),
        ("exportRejected", DropReason::ExportRejected),
        ("shutdown", DropReason::Shutdown),
        ("invalid", DropReason::Invalid),
    ];
    SpanCounts {
        received: metrics.received_count(),
        sampled_out: metrics.sampled_out.get(),
        exported: metrics.exported.get(),
        dropped: reasons.iter().map(|(k, r)| (k.to_string(), metrics.dropped_count(*r))).collect(),
        queued: metrics.queue_spans.get().max(0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_bounded() {
        let s = ServicesSeen::default();
        for i in 0..100 {
            s.record(&format!("svc-{i}"), 1);
        }
        s.record("svc-0", 5);
        let snap = s.snapshot();
        assert_eq!(snap.len(), MAX_SERVICES + 1);
        assert_eq!(snap.get("svc-0"), Some(&6));
        assert_eq!(snap.get(OTHER), Some(&36));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary_and_counted() {
        assert_eq!(truncate_name("abc", 2), ("ab", true));
        assert_eq!(truncate_name("é", 1), ("", true), "never in the middle of a character");
        assert_eq!(truncate_name("aé", 2), ("a", true));
        assert_eq!(truncate_name("abc", 3), ("abc", false));
        let s = ServicesSeen::default();
        let long = "é".repeat(35_000);
        s.record(&long, 1);
        s.record(&long, 1);
        let snap = s.snapshot();
        let (name, spans) = snap.iter().next().expect("recorded");
        assert_eq!((name.len(), *spans), (MAX_SERVICE_NAME_BYTES, 2));
        assert_eq!(s.truncation(), Some(Truncated { service_names: 1, services_left_out: 0 }));
    }

    #[test]
    fn an_oversized_report_leaves_services_out_and_says_so() {
        let mut report: Report = serde_json::from_str(r#"{"pod":{},"spans":{"received":9}}"#).expect("minimal");
        for i in 0..40 {
            report.services.insert(format!("{i:0>200}"), 1);
        }
        report.services.insert("short".into(), 5);
        let json = bounded_json_under(report, 4096);
        assert!(json.len() <= 4096, "{}", json.len());
        let back: Report = serde_json::from_slice(&json).expect("valid");
        let left_out = back.truncated.expect("counted").services_left_out;
        assert!(left_out > 20, "{left_out}");
        assert_eq!(back.services.get("short"), Some(&5));
        assert_eq!(back.services.values().sum::<u64>(), 45, "no span count lost");
        assert_eq!(back.services.len() as u64, 41 - left_out + 1);
    }

    #[test]
    fn last_span_age_counts_only_spans() {
        let s = ServicesSeen::default();
        assert_eq!(s.last_span_age(), None);
        s.record("idle", 0);
        assert_eq!(s.last_span_age(), None, "a resource with no spans is not a span");
        s.record("busy", 3);
        assert!(s.last_span_age().is_some_and(|age| age < Duration::from_secs(5)));
    }
}
