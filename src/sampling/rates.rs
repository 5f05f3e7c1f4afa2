//! Spans per second per rule, from an agent's successive reports (pure). Agents report counters
//! since they started (skew-proof, nothing lost when a report is); the operator keeps the last
//! few counter snapshots of each pod and turns their difference into rates.
//!
//! Two things make a rate between two reports wrong, and both are kept out:
//! - **delivery**: a report the operator takes late (a busy operator, a slow token review) and
//!   the next one on time would make a short window of a whole interval's spans. Time is read on
//!   the agent's clock (its uptime when it read the counters), the operator's clock only for
//!   agents that do not report it;
//! - **bursts**: SDKs export in batches (512 spans, or every 5 s), so one report interval holds
//!   a whole number of batches. Rates are measured over the last [`RATE_WINDOW_SECS`] (several
//!   reports when the interval is short), which the budgets need steady.

use crate::api::RuleRate;
use crate::rollout::coverage::CountedAt;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, VecDeque};
use tracelight_contract::sampling::RuleCounts;

/// Reports closer together than this do not make a rate (too noisy); the earlier snapshots stay.
pub const MIN_WINDOW_SECS: f64 = 5.0;
/// Rates are measured over about this long: from the oldest snapshot within it (or the last one
/// before it, when reports come less often).
pub const RATE_WINDOW_SECS: f64 = 30.0;
/// Most snapshots kept per pod.
pub const MAX_SNAPSHOTS: usize = 4;
/// Most rules kept per pod: a report is the agent's word, the operator's memory stays bounded.
pub const MAX_RULES: usize = 64;
/// Longest rule name kept (the policy's names are at most 63 characters).
pub const MAX_RULE_NAME: usize = 63;

/// One report's counters, as the operator keeps them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Per rule, bounded ([`MAX_RULES`], [`MAX_RULE_NAME`]).
    pub counts: BTreeMap<String, RuleCounts>,
    pub kept_bytes: u64,
    /// When the operator received the report.
    pub received_at: Timestamp,
    /// The agent's uptime when it read the counters (ms); none from agents that do not say.
    pub agent_clock_ms: Option<u64>,
}

impl Snapshot {
    pub fn new(
        counts: &BTreeMap<String, RuleCounts>,
        kept_bytes: u64,
        agent_clock_ms: Option<u64>,
        received_at: Timestamp,
    ) -> Snapshot {
        let counts = counts
            .iter()
            .filter(|(name, _)| name.len() <= MAX_RULE_NAME)
            .take(MAX_RULES)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Snapshot { counts, kept_bytes, received_at, agent_clock_ms }
    }

    fn counted_at(&self) -> CountedAt {
        CountedAt { received_at: self.received_at, agent_clock_ms: self.agent_clock_ms }
    }

    /// Seconds from `earlier` to this snapshot (see [`CountedAt::secs_since`]).
    fn secs_since(&self, earlier: &Snapshot) -> f64 {
        self.counted_at().secs_since(earlier.counted_at())
    }

    /// Whether this snapshot comes from a new run of the agent: its clock or a counter went back.
    fn restarted_since(&self, earlier: &Snapshot) -> bool {
        let clock_back = self.counted_at().clock_went_back(earlier.counted_at());
        let counter_back = self.counts.iter().any(|(name, c)| {
            earlier.counts.get(name).is_some_and(|old| c.received < old.received || c.kept < old.kept)
        });
        clock_back || counter_back || self.kept_bytes < earlier.kept_bytes
    }

    /// Rates from `earlier` to this snapshot, over `secs`.
    fn rates_since(&self, earlier: &Snapshot, secs: f64) -> BTreeMap<String, RuleRate> {
        let rate = |n: u64| n as f64 / secs;
        self.counts
            .iter()
            .filter_map(|(name, c)| {
                let old = earlier.counts.get(name).cloned().unwrap_or_default();
                let received = c.received.checked_sub(old.received)?;
                let kept = c.kept.checked_sub(old.kept)?;
                let errors = c.kept_errors.checked_sub(old.kept_errors)?;
                Some((name.clone(), RuleRate { received: rate(received), kept: rate(kept), kept_errors: rate(errors) }))
            })
            .collect()
    }
}

/// What the operator keeps of a pod's sampling counters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodSampling {
    /// Recent snapshots of one run of the agent, oldest first.
    pub snapshots: VecDeque<Snapshot>,
    /// Spans per second over the last window, by rule.
    pub rates: BTreeMap<String, RuleRate>,
    /// Kept bytes per second over the last window (`None`: not measured).
    pub kept_bytes_rate: Option<f64>,
}

impl PodSampling {
    /// The state after a report's `snapshot`.
    pub fn next(&self, snapshot: Snapshot) -> PodSampling {
        let Some(last) = self.snapshots.back() else {
            return PodSampling { snapshots: VecDeque::from([snapshot]), ..Default::default() };
        };
        if snapshot.restarted_since(last) {
            return PodSampling { snapshots: VecDeque::from([snapshot]), ..Default::default() };
        }
        if snapshot.secs_since(last) < MIN_WINDOW_SECS {
            return self.clone();
        }
        // The oldest snapshot within the window; the last one when even it is older.
        let from = self
            .snapshots
            .iter()
            .position(|s| snapshot.secs_since(s) <= RATE_WINDOW_SECS)
            .unwrap_or(self.snapshots.len() - 1);
        let base = &self.snapshots[from];
        let secs = snapshot.secs_since(base);
        let rates = snapshot.rates_since(base, secs);
        let kept_bytes_rate = snapshot.kept_bytes.checked_sub(base.kept_bytes).map(|b| b as f64 / secs);
        // What is older than the base is never a base again (the window only moves on).
        let mut snapshots: VecDeque<Snapshot> = self.snapshots.iter().skip(from).cloned().collect();
        snapshots.push_back(snapshot);
        while snapshots.len() > MAX_SNAPSHOTS {
            snapshots.pop_front();
        }
        PodSampling { snapshots, rates, kept_bytes_rate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64, u64)]) -> BTreeMap<String, RuleCounts> {
        pairs
            .iter()
            .map(|(n, r, k)| (n.to_string(), RuleCounts { received: *r, kept: *k, ..Default::default() }))
            .collect()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// A report received at `at(received)` whose agent read its counters at `clock_ms`.
    fn snap(pairs: &[(&str, u64, u64)], kept_bytes: u64, clock_ms: Option<u64>, received: i64) -> Snapshot {
        Snapshot::new(&counts(pairs), kept_bytes, clock_ms, at(received))
    }

    #[test]
    fn rates_come_from_the_difference_of_two_reports() {
        let first = PodSampling::default().next(snap(&[("default", 100, 50)], 1000, None, 0));
        assert!(first.rates.is_empty(), "one report makes no rate");
        let second = first.next(snap(&[("default", 400, 80), ("api", 30, 30)], 4000, None, 30));
        assert_eq!(second.kept_bytes_rate, Some(100.0));
        assert_eq!(second.rates["default"], RuleRate { received: 10.0, kept: 1.0, kept_errors: 0.0 });
        assert_eq!(second.rates["api"], RuleRate { received: 1.0, kept: 1.0, kept_errors: 0.0 });
        let early = second.next(snap(&[("default", 500, 90)], 5000, None, 32));
        assert_eq!(early, second, "a report 2 s later changes nothing");
        let restarted = second.next(snap(&[("default", 3, 1)], 10, None, 60));
        assert!(restarted.rates.is_empty());
        assert_eq!(restarted.snapshots.len(), 1, "a new run of the agent starts over");
    }

    #[test]
    fn a_report_taken_late_does_not_skew_the_rate_on_the_agents_clock() {
        // 100 spans/s; the report read at 10 s reaches the operator 4 s late, the next on time.
        let s = PodSampling::default().next(snap(&[("default", 0, 0)], 0, Some(0), 0));
        let s = s.next(snap(&[("default", 1000, 100)], 0, Some(10_000), 14));
        assert_eq!(s.rates["default"].received, 100.0);
        let s = s.next(snap(&[("default", 2000, 200)], 0, Some(20_000), 20));
        assert_eq!(s.rates["default"].received, 100.0, "the agent's clock says 20 s, not the 6 s between receipts");
        // Without the agent's clock, the receipts are all there is: the late report's rate is off.
        let s = PodSampling::default().next(snap(&[("default", 0, 0)], 0, None, 0));
        let s = s.next(snap(&[("default", 1000, 100)], 0, None, 14));
        let s = s.next(snap(&[("default", 2000, 200)], 0, None, 20));
        assert!((s.rates["default"].received - 2000.0 / 20.0).abs() < 1e-9, "over the window since 0 s");
    }

    #[test]
    fn rates_are_measured_over_the_window_not_the_last_interval() {
        // Reports every 10 s of a load arriving in bursts: 512 spans in some intervals, 0 in others.
        let mut s = PodSampling::default().next(snap(&[("default", 0, 0)], 0, Some(0), 0));
        let mut total = 0;
        for (i, burst) in [512u64, 0, 512, 512, 0, 512].iter().enumerate() {
            total += burst;
            let t = 10 * (i as u64 + 1);
            s = s.next(snap(&[("default", total, 0)], 0, Some(t * 1000), t as i64));
            assert!(s.snapshots.len() <= MAX_SNAPSHOTS);
        }
        // The last 30 s: 512 + 0 + 512 spans.
        assert!((s.rates["default"].received - 1024.0 / 30.0).abs() < 1e-9, "{:?}", s.rates);
        assert_eq!(s.snapshots.front().and_then(|f| f.agent_clock_ms), Some(30_000), "older ones are dropped");
    }

    #[test]
    fn reports_further_apart_than_the_window_measure_from_the_last_one() {
        let s = PodSampling::default().next(snap(&[("default", 0, 0)], 0, Some(0), 0));
        let s = s.next(snap(&[("default", 4500, 0)], 0, Some(45_000), 45));
        assert_eq!(s.rates["default"].received, 100.0);
        let s = s.next(snap(&[("default", 9000, 0)], 0, Some(90_000), 90));
        assert_eq!(s.rates["default"].received, 100.0);
        assert_eq!(s.snapshots.len(), 2);
    }

    #[test]
    fn an_agent_clock_that_went_back_is_a_restart() {
        let s = PodSampling::default().next(snap(&[("default", 0, 0)], 0, Some(50_000), 0));
        let s = s.next(snap(&[("default", 900, 0)], 0, Some(9_000), 10));
        assert!(s.rates.is_empty(), "{:?}", s.rates);
        assert_eq!(s.snapshots.len(), 1);
    }

    #[test]
    fn what_an_agent_reports_is_bounded() {
        let many: Vec<(String, u64, u64)> = (0..200).map(|i| (format!("r{i}"), 1, 1)).collect();
        let refs: Vec<(&str, u64, u64)> = many.iter().map(|(n, r, k)| (n.as_str(), *r, *k)).collect();
        let mut c = counts(&refs);
        c.insert("x".repeat(300), RuleCounts::default());
        let s = Snapshot::new(&c, 0, None, at(0));
        assert_eq!(s.counts.len(), MAX_RULES);
        assert!(s.counts.keys().all(|k| k.len() <= MAX_RULE_NAME));
    }
}
