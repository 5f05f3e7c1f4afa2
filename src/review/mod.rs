//! Continuous review (pure): after the rollout, the operator looks again at every governed
//! workload on the policy's schedule (`spec.review.interval`, daily by default) and whenever the
//! set of workloads changes, and reports regressions in `status.review`, the condition
//! `Regression` and a Warning Event per new finding.
//!
//! Decisions that are easy to get wrong, and why:
//!
//! - **Only after the rollout.** While phases are still rolling out, workloads waiting for their
//!   batch are uninstrumented on purpose; a review then would report the plan as a regression.
//!   Reviews run once the rollout is `Complete`.
//! - **Silence is measured against the interval, not the coverage state.** Coverage calls a
//!   workload silent after 10 minutes without spans, which is noise for a nightly batch job and
//!   too slow for a short interval. A workload has gone silent when its agents still report but
//!   none received a span for a whole review interval, having received spans before.
//! - **Drops are new drops.** A counter that grew since the previous review is a regression;
//!   drops before it were reported then.
//! - **Broken trace links come from the join.** A workload the join calls `Broken` (its
//!   `status...workloads[].traces`, see `crate::continuity`) is a finding; `Unknown` (too few
//!   probe traces) is not.
//! - **Findings are facts at review time.** Between reviews the status keeps the last verdict;
//!   a fix shows at the next review (a workload change brings it forward).

use crate::api::{
    BrokenLink, CoverageState, FindingKind, ReviewFinding, ReviewSpec, ReviewStatus, WorkloadCoverage, MAX_FINDINGS,
};
use crate::baseline::PodHistory;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::hash::{Hash, Hasher};

/// Condition type the review sets.
pub const REGRESSION: &str = "Regression";
/// Its reason when nothing was found.
pub const NO_REGRESSION: &str = "NoRegression";
/// Most Events published for new findings in one review (the status lists them all).
pub const MAX_EVENTS: usize = 10;

/// What the review reads of one workload.
pub struct WorkloadInput<'h> {
    pub namespace: String,
    pub coverage: &'h WorkloadCoverage,
    /// Whether its namespace is active (the webhook injects there).
    pub active: bool,
    /// Rolled back by the rollout and waiting for the user (not a regression of coverage).
    pub excluded: bool,
    /// When one of its agents last received a span (exact, from the reports).
    pub last_span_at: Option<Timestamp>,
    /// Its pods' counter histories.
    pub pods: Vec<&'h PodHistory>,
    /// The broken trace link it is an end of, when the join calls it `Broken`.
    pub broken_link: Option<BrokenLink>,
}

/// A hash of the set of workloads (namespace, kind, name): another set triggers a review.
pub fn workloads_hash<'a>(workloads: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> String {
    let mut all: Vec<_> = workloads.into_iter().collect();
    all.sort();
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    all.hash(&mut h);
    format!("{:016x}", h.finish())
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Whether a review is due: none yet, the workloads changed, or the schedule says so.
pub fn due(previous: Option<&ReviewStatus>, hash: &str, now: Timestamp) -> bool {
    match previous {
        None => true,
        Some(p) => p.workloads_hash != hash || now >= p.next_review_time.0,
    }
}

/// The review at `now` of `workloads` (the policy's governed ones).
pub fn review(
    spec: &ReviewSpec,
    previous: Option<&ReviewStatus>,
    hash: String,
    workloads: &[WorkloadInput<'_>],
    now: Timestamp,
) -> ReviewStatus {
    // Validation refuses shorter intervals; the floor keeps a review from running every reconcile.
    let interval = spec.interval.get().max(std::time::Duration::from_secs(crate::api::MIN_REVIEW_INTERVAL_SECS));
    let interval = SignedDuration::try_from(interval).unwrap_or(SignedDuration::from_hours(24));
    let since = previous.map(|p| p.last_review_time.0);
    let mut findings: Vec<ReviewFinding> =
        workloads.iter().flat_map(|w| findings_of(spec, w, since, interval, now)).collect();
    findings.sort();
    findings.truncate(MAX_FINDINGS);
    ReviewStatus {
        last_review_time: Time(now),
        next_review_time: Time(now.checked_add(interval).unwrap_or(now)),
        workloads_hash: hash,
        findings,
    }
}

fn findings_of(
    spec: &ReviewSpec,
    w: &WorkloadInput<'_>,
    since: Option<Timestamp>,
    interval: SignedDuration,
    now: Timestamp,
) -> Vec<ReviewFinding> {
    let c = w.coverage;
    let finding = |kind: FindingKind, message: String| ReviewFinding {
        kind,
        namespace: w.namespace.clone(),
        workload: format!("{}/{}", c.kind, c.name),
        message,
    };
    let mut out = Vec::new();
    if w.active && !w.excluded && c.pods > 0 && c.state == CoverageState::NotInjected {
        out.push(finding(
            FindingKind::NotInstrumented,
            format!("{} pod(s), none carries the agent: restart the workload (or opt it out with tracelight.io/inject=false)", c.pods),
        ));
    }
    let agents_report = matches!(c.state, CoverageState::Reporting | CoverageState::Silent);
    if let (true, Some(last)) = (agents_report, w.last_span_at) {
        if now.duration_since(last) >= interval {
            out.push(finding(
                FindingKind::WentSilent,
                format!("its agents report but received no span since {last} (one review interval or more)"),
            ));
        }
    }
    if let Some(since) = since {
        let dropped: u64 = w.pods.iter().filter_map(|p| p.dropped_since(since)).sum();
        if dropped > 0 {
            out.push(finding(FindingKind::SpansDropped, format!("its agents dropped {dropped} span(s) since {since}")));
        }
    }
    let window_start = since.unwrap_or_else(|| now.checked_sub(interval).unwrap_or(now));
    let cpu = w
        .pods
        .iter()
        .filter_map(|p| p.cpu_cores_since(window_start))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let rss = w.pods.iter().filter_map(|p| p.latest()?.rss_bytes).max();
    let mut over = Vec::new();
    if let (Some(max), Some(cpu)) = (spec.max_agent_cpu_millicores, cpu) {
        if cpu * 1000.0 > max as f64 {
            over.push(format!("CPU {:.1}m above the bound of {max}m", cpu * 1000.0));
        }
    }
    if let (Some(max), Some(rss)) = (spec.max_agent_memory_mib, rss) {
        if rss > max as u64 * 1024 * 1024 {
            over.push(format!("memory {:.1} MiB above the bound of {max} MiB", rss as f64 / 1048576.0));
        }
    }
    if !over.is_empty() {
        out.push(finding(
            FindingKind::OverheadAboveBound,
            format!("an agent of this workload uses {}", over.join(", ")),
        ));
    }
    if let Some(link) = &w.broken_link {
        out.push(finding(
            FindingKind::TracesBroken,
            format!(
                "broken trace link {}: {} ({}; example trace {})",
                link.edge,
                link.reason.as_str(),
                link.message,
                link.example_trace_id
            ),
        ));
    }
    out
}

/// The condition `Regression`: `(status, reason, message)`.
pub fn condition(review: &ReviewStatus) -> (bool, String, String) {
    let Some(first) = review.findings.first() else {
        return (false, NO_REGRESSION.into(), format!("review at {}: no regression", review.last_review_time.0));
    };
    let listed: Vec<String> =
        review.findings.iter().take(5).map(|f| format!("{} {}/{}", f.kind.as_str(), f.namespace, f.workload)).collect();
    let more = review.findings.len().saturating_sub(listed.len());
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    (
        true,
        first.kind.as_str().to_string(),
        format!("review at {}: {}{more} (see status.review)", review.last_review_time.0, listed.join("; ")),
    )
}

/// The findings of `next` that `previous` did not have (same kind and workload): each gets an
/// Event, at most [`MAX_EVENTS`].
pub fn new_findings<'a>(previous: Option<&ReviewStatus>, next: &'a ReviewStatus) -> Vec<&'a ReviewFinding> {
    let known = |f: &ReviewFinding| {
        previous.is_some_and(|p| {
            p.findings.iter().any(|o| o.kind == f.kind && o.namespace == f.namespace && o.workload == f.workload)
        })
    };
    next.findings.iter().filter(|f| !known(f)).take(MAX_EVENTS).collect()
}

#[cfg(test)]
mod tests;
