//! The baseline (pure): what "normal" looked like when tracing went live, per workload, from
//! the RED counters and the own CPU and memory its agents report.
//!
//! Agents report counters since they started. The operator keeps, per pod, a short history of
//! them ([`PodHistory`]: at most [`MAX_SAMPLES`], thinned evenly as it grows, so a long soak is
//! covered at a coarser step). When a phase's soak ends ([`soak_ended`]), each workload's
//! baseline is the difference of its pods' counters across the soak ([`measure`]):
//!
//! - requests per second: per pod, requests over the pod's own measured span of time (on the
//!   agent's clock, so a report received late changes nothing), summed;
//! - error rate: failed requests over requests, all pods together;
//! - p50/p95/p99: from the summed bucket counts, interpolated within a bucket exactly as
//!   Prometheus's `histogram_quantile` does, so the regression alerts compare like with like;
//! - agent CPU: per pod, CPU seconds over the window, averaged over pods; memory: the pods'
//!   resident memory at the window's end, averaged.
//!
//! A pod whose counters went down (its agent restarted) starts a new history: no window spans
//! a restart. A pod that started during the soak counts from its first report.

pub mod rules;

use crate::api::{BaselineStatus, RolloutStatus, WorkloadBaseline, MAX_BASELINE_WORKLOADS};
use crate::rollout::coverage::CountedAt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::VecDeque;
use tracelight_contract::report::AgentReport;

/// Samples kept per pod.
pub const MAX_SAMPLES: usize = 16;
/// A pod's counters must cover at least this much of a window to count.
pub const MIN_WINDOW_SECS: f64 = 10.0;

/// One report's counters, all services of the pod together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// When the operator received the report: places the sample in time (the soak's window).
    pub at: Timestamp,
    /// The agent's uptime when it read its counters (ms), when it says: the divisor of rates,
    /// so that a report received late does not stretch or shrink a window.
    pub agent_clock_ms: Option<u64>,
    pub requests: u64,
    pub errors: u64,
    pub duration_sum: f64,
    /// Per bucket (not cumulative), the +Inf bucket last.
    pub buckets: Vec<u64>,
    /// Spans dropped, all reasons.
    pub dropped: u64,
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
}

impl Sample {
    fn counted_at(&self) -> CountedAt {
        CountedAt { received_at: self.at, agent_clock_ms: self.agent_clock_ms }
    }

    /// Seconds from `earlier` to this sample (see [`CountedAt::secs_since`]).
    pub fn secs_since(&self, earlier: &Sample) -> f64 {
        self.counted_at().secs_since(earlier.counted_at())
    }
}

/// A pod's recent counters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodHistory {
    /// Upper bounds of the duration buckets (as the agent reported them).
    pub bounds: Vec<f64>,
    pub samples: VecDeque<Sample>,
}

impl PodHistory {
    /// The history after `report`, received `now`.
    pub fn next(&self, report: &AgentReport, now: Timestamp) -> PodHistory {
        let mut sample = Sample {
            at: now,
            agent_clock_ms: report.uptime_ms,
            dropped: report.spans.dropped.values().sum(),
            cpu_seconds: report.usage.as_ref().map(|u| u.cpu_seconds),
            rss_bytes: report.usage.as_ref().map(|u| u.rss_bytes),
            ..Sample::default()
        };
        let bounds = report.red.as_ref().map(|r| r.bounds.clone()).unwrap_or_default();
        if let Some(red) = &report.red {
            sample.buckets = vec![0; red.bounds.len() + 1];
            for counts in red.services.values() {
                sample.requests += counts.requests;
                sample.errors += counts.errors;
                sample.duration_sum += counts.duration_seconds_sum;
                for (mine, theirs) in sample.buckets.iter_mut().zip(&counts.buckets) {
                    *mine += theirs;
                }
            }
        }
        let restarted = self.samples.back().is_some_and(|last| {
            sample.counted_at().clock_went_back(last.counted_at())
                || last.requests > sample.requests
                || last.dropped > sample.dropped
                || last.cpu_seconds.zip(sample.cpu_seconds).is_some_and(|(a, b)| a > b)
        });
        let mut next = if restarted || bounds != self.bounds {
            PodHistory { bounds, samples: VecDeque::new() }
        } else {
            self.clone()
        };
        next.samples.push_back(sample);
        if next.samples.len() > MAX_SAMPLES {
            next.thin();
        }
        next
    }

    /// Drops the inner sample whose neighbours are closest together: the samples stay evenly
    /// spread over the whole history, the first and the last always kept.
    fn thin(&mut self) {
        let gap = |i: usize| self.samples[i + 1].at.duration_since(self.samples[i - 1].at);
        if let Some(i) = (1..self.samples.len() - 1).min_by_key(|&i| gap(i)) {
            self.samples.remove(i);
        }
    }

    /// The samples that measure `[start, end]`: the last one at or before `start` (else the
    /// first after it) and the last one at or before `end`.
    fn window(&self, start: Timestamp, end: Timestamp) -> Option<(&Sample, &Sample)> {
        let first = self.samples.iter().rev().find(|s| s.at <= start).or_else(|| self.samples.front())?;
        let last = self.samples.iter().rev().find(|s| s.at <= end)?;
        (last.at.duration_since(first.at).as_secs_f64() >= MIN_WINDOW_SECS).then_some((first, last))
    }

    /// The last sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Spans dropped since `since` (none when the history does not reach back before it).
    pub fn dropped_since(&self, since: Timestamp) -> Option<u64> {
        let first = self.samples.iter().rev().find(|s| s.at <= since)?;
        Some(self.latest()?.dropped.saturating_sub(first.dropped))
    }

    /// CPU cores used since `since` (from the sample at or before it, else the first).
    pub fn cpu_cores_since(&self, since: Timestamp) -> Option<f64> {
        let first = self.samples.iter().rev().find(|s| s.at <= since).or_else(|| self.samples.front())?;
        let last = self.latest()?;
        let secs = last.secs_since(first);
        if secs < MIN_WINDOW_SECS {
            return None;
        }
        Some((last.cpu_seconds? - first.cpu_seconds?) / secs)
    }
}

/// What one workload's pods measured over a window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Measured {
    pub pods: u32,
    pub requests_per_second: f64,
    pub error_rate: f64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub cpu_millicores: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// The baseline of a workload from its pods' histories over `[start, end]`; none when no pod's
/// counters cover at least [`MIN_WINDOW_SECS`] of it.
pub fn measure<'h>(
    pods: impl IntoIterator<Item = &'h PodHistory>,
    start: Timestamp,
    end: Timestamp,
) -> Option<Measured> {
    let mut m = Measured::default();
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut buckets: Vec<u64> = Vec::new();
    let mut bounds: &[f64] = &[];
    let (mut cpu, mut cpu_pods, mut rss, mut rss_pods) = (0.0, 0u32, 0u64, 0u64);
    for history in pods {
        let Some((first, last)) = history.window(start, end) else { continue };
        let secs = last.secs_since(first);
        if secs <= 0.0 {
            continue;
        }
        m.pods += 1;
        let n = last.requests - first.requests;
        requests += n;
        errors += last.errors - first.errors;
        m.requests_per_second += n as f64 / secs;
        // Pods of agents with other buckets (a mixed-version rollout) do not mix in percentiles.
        if bounds.is_empty() || bounds == history.bounds.as_slice() {
            bounds = &history.bounds;
            buckets.resize(last.buckets.len().max(buckets.len()), 0);
            for (i, (a, b)) in last.buckets.iter().zip(&first.buckets).enumerate() {
                buckets[i] += a - b;
            }
        }
        if let (Some(a), Some(b)) = (first.cpu_seconds, last.cpu_seconds) {
            cpu += (b - a) / secs;
            cpu_pods += 1;
        }
        if let Some(r) = last.rss_bytes {
            rss += r;
            rss_pods += 1;
        }
    }
    if m.pods == 0 {
        return None;
    }
    m.error_rate = if requests > 0 { errors as f64 / requests as f64 } else { 0.0 };
    m.p50 = quantile(0.5, bounds, &buckets);
    m.p95 = quantile(0.95, bounds, &buckets);
    m.p99 = quantile(0.99, bounds, &buckets);
    m.cpu_millicores = (cpu_pods > 0).then(|| cpu / cpu_pods as f64 * 1000.0);
    m.memory_bytes = (rss_pods > 0).then(|| rss / rss_pods);
    Some(m)
}

/// The `q` quantile of a histogram (`buckets` per bucket, one more than `bounds`), as
/// Prometheus's `histogram_quantile`: linear within the bucket the rank falls in, from 0 for the
/// first; in the +Inf bucket, the highest finite bound. None without observations.
pub fn quantile(q: f64, bounds: &[f64], buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 || bounds.is_empty() {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if (below + n) as f64 >= rank && n > 0 {
            let Some(&upper) = bounds.get(i) else { return bounds.last().copied() };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
        }
        below += n;
    }
    bounds.last().copied()
}

/// The soak that ended by `now` and has no baseline yet: `(phase index, start, end)`, from the
/// rollout status the previous reconcile wrote (the engine moves on, and forgets the soak, in
/// the same reconcile that sees it end). `soaks`: each phase's soak duration.
pub fn soak_ended(
    rollout: Option<&RolloutStatus>,
    soaks: &[std::time::Duration],
    recorded: Option<&BaselineStatus>,
    now: Timestamp,
) -> Option<(usize, Timestamp, Timestamp)> {
    let rollout = rollout?;
    let phase = rollout.phase_index as usize;
    let soak = *soaks.get(phase)?;
    if soak.is_zero() {
        return None; // no soak, no window
    }
    let start = rollout.soak_started_at.as_ref()?.0;
    let end = start.checked_add(SignedDuration::try_from(soak).ok()?).ok()?;
    let done = recorded.is_some_and(|b| b.window_start.0 == start);
    (now >= end && !done).then_some((phase, start, end))
}

/// One workload to measure: its identity, services and its pods' histories.
pub struct WorkloadInput<'h> {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub services: Vec<String>,
    pub pods: Vec<&'h PodHistory>,
}

/// The baseline status after the soak of `phase` over `[start, end]`: the workloads measured now
/// replace their earlier figures, the others keep theirs; sorted, capped.
pub fn record<'h>(
    previous: Option<&BaselineStatus>,
    phase: &str,
    start: Timestamp,
    end: Timestamp,
    workloads: impl IntoIterator<Item = WorkloadInput<'h>>,
) -> BaselineStatus {
    let mut out: Vec<WorkloadBaseline> = previous.map(|b| b.workloads.clone()).unwrap_or_default();
    for w in workloads {
        let Some(m) = measure(w.pods.iter().copied(), start, end) else { continue };
        let entry = WorkloadBaseline {
            namespace: w.namespace,
            kind: w.kind,
            name: w.name,
            services: w.services,
            window_start: Time(start),
            window_end: Time(end),
            pods: m.pods,
            requests_per_second: round(m.requests_per_second, 3),
            error_rate: round(m.error_rate, 4),
            duration_p50_seconds: m.p50.map(|v| round(v, 6)),
            duration_p95_seconds: m.p95.map(|v| round(v, 6)),
            duration_p99_seconds: m.p99.map(|v| round(v, 6)),
            agent_cpu_millicores: m.cpu_millicores.map(|v| round(v, 2)),
            agent_memory_bytes: m.memory_bytes,
        };
        out.retain(|b| !(b.namespace == entry.namespace && b.kind == entry.kind && b.name == entry.name));
        out.push(entry);
    }
    out.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    out.truncate(MAX_BASELINE_WORKLOADS);
    BaselineStatus { phase: phase.to_string(), window_start: Time(start), window_end: Time(end), workloads: out }
}

/// `v` to `digits` decimals: the status is not rewritten for noise in the last bits.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
pub(crate) mod tests;
