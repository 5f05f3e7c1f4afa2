//! Spans per second per rule, from an agent's successive reports (pure). Agents report counters
//! since they started (skew-proof, nothing lost when a report is); the operator keeps the last
//! counters of each pod and turns the difference into rates.

use crate::api::RuleRate;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use tracelight_contract::sampling::RuleCounts;

/// Reports closer together than this do not make a rate (too noisy); the earlier baseline stays.
pub const MIN_WINDOW_SECS: f64 = 5.0;
/// Most rules kept per pod: a report is the agent's word, the operator's memory stays bounded.
pub const MAX_RULES: usize = 64;
/// Longest rule name kept (the policy's names are at most 63 characters).
pub const MAX_RULE_NAME: usize = 63;

/// What the operator keeps of a pod's sampling counters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodSampling {
    /// The counters of the baseline report.
    pub counts: BTreeMap<String, RuleCounts>,
    /// When the baseline was received.
    pub counted_at: Option<Timestamp>,
    /// Spans per second between the two last baselines, by rule.
    pub rates: BTreeMap<String, RuleRate>,
    /// Kept bytes of the baseline report.
    pub kept_bytes: u64,
    /// Kept bytes per second between the two last baselines (`None`: not measured).
    pub kept_bytes_rate: Option<f64>,
}

impl PodSampling {
    /// The state after a report with `counts` received at `now`.
    pub fn next(&self, counts: &BTreeMap<String, RuleCounts>, kept_bytes: u64, now: Timestamp) -> PodSampling {
        let counts: BTreeMap<String, RuleCounts> = counts
            .iter()
            .filter(|(name, _)| name.len() <= MAX_RULE_NAME)
            .take(MAX_RULES)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let Some(before) = self.counted_at else {
            return PodSampling { counts, counted_at: Some(now), kept_bytes, ..Default::default() };
        };
        let window = now.duration_since(before).as_secs_f64();
        if window < MIN_WINDOW_SECS {
            return self.clone();
        }
        let rates = counts
            .iter()
            .filter_map(|(name, c)| {
                let old = self.counts.get(name).cloned().unwrap_or_default();
                // A counter that went down: the agent restarted; no rate for this window.
                let received = c.received.checked_sub(old.received)?;
                let kept = c.kept.checked_sub(old.kept)?;
                let errors = c.kept_errors.checked_sub(old.kept_errors)?;
                let rate = |n: u64| n as f64 / window;
                Some((name.clone(), RuleRate { received: rate(received), kept: rate(kept), kept_errors: rate(errors) }))
            })
            .collect();
        let kept_bytes_rate = kept_bytes.checked_sub(self.kept_bytes).map(|b| b as f64 / window);
        PodSampling { counts, counted_at: Some(now), rates, kept_bytes, kept_bytes_rate }
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

    #[test]
    fn rates_come_from_the_difference_of_two_reports() {
        let first = PodSampling::default().next(&counts(&[("default", 100, 50)]), 1000, at(0));
        assert!(first.rates.is_empty(), "one report makes no rate");
        let second = first.next(&counts(&[("default", 400, 80), ("api", 30, 30)]), 4000, at(30));
        assert_eq!(second.kept_bytes_rate, Some(100.0));
        assert_eq!(second.rates["default"], RuleRate { received: 10.0, kept: 1.0, kept_errors: 0.0 });
        assert_eq!(second.rates["api"], RuleRate { received: 1.0, kept: 1.0, kept_errors: 0.0 });
        let early = second.next(&counts(&[("default", 500, 90)]), 5000, at(32));
        assert_eq!(early, second, "a report 2 s later changes nothing");
        let restarted = second.next(&counts(&[("default", 3, 1)]), 10, at(60));
        assert!(restarted.rates.is_empty());
    }

    #[test]
    fn what_an_agent_reports_is_bounded() {
        let many: Vec<(String, u64, u64)> = (0..200).map(|i| (format!("r{i}"), 1, 1)).collect();
        let refs: Vec<(&str, u64, u64)> = many.iter().map(|(n, r, k)| (n.as_str(), *r, *k)).collect();
        let mut c = counts(&refs);
        c.insert("x".repeat(300), RuleCounts::default());
        let s = PodSampling::default().next(&c, 0, at(0));
        assert_eq!(s.counts.len(), MAX_RULES);
        assert!(s.counts.keys().all(|k| k.len() <= MAX_RULE_NAME));
    }
}
