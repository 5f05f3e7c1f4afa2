//! Sampling (pure): from the agents' measured rates and the policy's rules and budgets, the
//! ratios and local caps written into each namespace's agent config, and the status that
//! shows them.
//!
//! The controller feeds it the per-workload rates (from [`rates`], summed by the coverage) and
//! the previous status (the ratios in effect), and writes what [`plan`] returns; the arithmetic
//! of budgets is [`budget`]'s.
//!
//! Local caps: a budget is cluster-wide, but between two reports (30 s) a burst could exceed it
//! many times over. Each agent therefore gets a cap on its own kept spans per second for each
//! budgeted rule: the rule's allowance (its budget, or its share of the policy's) times the
//! namespace's share of the rule's traffic, split evenly over the namespace's reporting pods,
//! times [`LOCAL_CAP_FACTOR`] so that ordinary imbalance between pods is not cut. Spans the cap
//! drops are counted (`capped`) by the agent; unlike the ratio, the cap is not consistent across
//! pods, so it only ever acts on bursts.

pub mod budget;
pub mod projection;
pub mod rates;
pub mod render;

use crate::api::RuleRate;
use crate::api::{RuleSamplingStatus, SamplingMode, SamplingSpec, SamplingStatus, WorkloadCoverage, WorkloadSampling};
use budget::{effective_ratios, Scope};
use std::collections::BTreeMap;
use tracelight_contract::sampling::{FALLBACK_RULE, HEALTH_CHECK_RULE};

/// How far above its share a pod may go before its local cap drops spans.
pub const LOCAL_CAP_FACTOR: f64 = 1.5;
/// How often a policy with a budget is reconciled: the agents' report interval, by default 30 s
/// (`--agent-report-interval` sets both).
pub const BUDGET_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// No local cap below this many spans per second (a cap of 0.3/s would cut a quiet pod's
/// every other span for nothing).
pub const MIN_LOCAL_CAP: f64 = 1.0;

/// What the operator decided for a policy's sampling.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamplingPlan {
    /// Effective ratio by scope (the policy's rules by name, and [`FALLBACK_RULE`]).
    pub ratios: BTreeMap<String, f64>,
    /// Per namespace and scope: each pod's local cap in kept spans per second.
    pub caps: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per namespace and workload (`Kind/name`): its sampling for the status.
    pub workloads: BTreeMap<(String, String), WorkloadSampling>,
    pub status: SamplingStatus,
    /// Budgets that cannot be met even at `minRatio`, described for the condition.
    pub unmet: Vec<String>,
}

impl SamplingPlan {
    /// The effective ratio of `scope`, or `base` when the plan has none.
    pub fn ratio(&self, scope: &str, base: f64) -> f64 {
        self.ratios.get(scope).copied().unwrap_or(base)
    }

    /// The local cap of `scope` in `namespace`, if it has one.
    pub fn cap(&self, namespace: &str, scope: &str) -> Option<f64> {
        self.caps.get(namespace).and_then(|c| c.get(scope)).copied()
    }

    /// Whether a budget applies at all (the `BudgetMet` condition is shown only then).
    pub fn has_budget(spec: &SamplingSpec) -> bool {
        spec.mode == SamplingMode::Agent
            && (spec.spans_per_second_budget.is_some() || spec.rules.iter().any(|r| r.spans_per_second.is_some()))
    }
}

/// The sampling plan for `spec` from the workloads' coverage by namespace (with their rule
/// rates) and the previous status (the ratios in effect).
pub fn plan(
    spec: &SamplingSpec,
    coverage: &BTreeMap<String, Vec<(String, &WorkloadCoverage)>>,
    previous: Option<&SamplingStatus>,
) -> SamplingPlan {
    if spec.mode == SamplingMode::Sdk {
        // The SDKs sample; the agents keep what they get.
        let status = SamplingStatus { effective_ratio: spec.ratio.get(), ..Default::default() };
        return SamplingPlan { status, ..Default::default() };
    }
    // Rates by scope, all namespaces, and by namespace.
    let mut total: BTreeMap<&str, RuleRate> = BTreeMap::new();
    let mut by_ns: BTreeMap<&str, BTreeMap<&str, (RuleRate, u32)>> = BTreeMap::new();
    for (ns, workloads) in coverage {
        for (_, w) in workloads {
            for (rule, rate) in &w.rule_rates {
                total.entry(rule).or_default().add(*rate);
                let e = by_ns.entry(ns).or_default().entry(rule).or_default();
                e.0.add(*rate);
                if rate.received > 0.0 {
                    e.1 += w.reporting.max(1);
                }
            }
        }
    }
    let measured = !total.is_empty();
    let previous_ratio = |name: &str| -> Option<f64> {
        let p = previous?;
        if name == FALLBACK_RULE {
            Some(p.effective_ratio)
        } else {
            p.rules.iter().find(|r| r.name == name).map(|r| r.effective_ratio)
        }
    };
    let scope = |name: &str, ratio: f64, budget: Option<u32>| Scope {
        name: name.to_string(),
        received: if measured { Some(total.get(name).map_or(0.0, |r| r.received)) } else { None },
        ratio,
        budget: budget.map(f64::from),
        current: previous_ratio(name),
        kept_errors: if measured { Some(total.get(name).map_or(0.0, |r| r.kept_errors)) } else { None },
    };
    let mut scopes: Vec<Scope> =
        spec.rules.iter().map(|r| scope(&r.name, r.base_ratio().get(), r.spans_per_second)).collect();
    scopes.push(scope(FALLBACK_RULE, spec.ratio.get(), None));
    let policy_budget = spec.spans_per_second_budget.map(f64::from);
    let decided = effective_ratios(&scopes, policy_budget, spec.min_ratio.get());

    let mut plan = SamplingPlan::default();
    let expected_total: f64 = decided.scopes.iter().filter_map(|d| d.expected).sum();
    for (s, d) in scopes.iter().zip(&decided.scopes) {
        plan.ratios.insert(d.name.clone(), d.ratio);
        if d.unmet {
            plan.unmet.push(format!(
                "rule {} keeps more than its budget of {} spans/s even at minRatio {}",
                d.name,
                s.budget.unwrap_or_default(),
                spec.min_ratio
            ));
        }
        // The scope's allowance: its own budget, or its share of the policy's, the lower.
        let policy_share = policy_budget.map(|b| match (d.expected, expected_total > 0.0) {
            (Some(e), true) => b * e / expected_total,
            _ => b,
        });
        let allowance = match (s.budget, policy_share) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(allowance) = allowance else { continue };
        let scope_total = total.get(s.name.as_str()).map_or(0.0, |r| r.received);
        for ns in coverage.keys() {
            let cap = match by_ns.get(ns.as_str()).and_then(|m| m.get(s.name.as_str())) {
                Some((rate, pods)) if scope_total > 0.0 && *pods > 0 => {
                    allowance * (rate.received / scope_total) / f64::from(*pods)
                }
                // Not measured here (yet): an even split over the policy's reporting pods.
                _ => allowance / f64::from(reporting_pods(coverage).max(1)),
            };
            plan.caps
                .entry(ns.clone())
                .or_default()
                .insert(s.name.clone(), quantize((LOCAL_CAP_FACTOR * cap).max(MIN_LOCAL_CAP)));
        }
    }
    if decided.policy_unmet {
        plan.unmet.push(format!(
            "the policy keeps more than its budget of {} spans/s even with every ratio at minRatio {}",
            spec.spans_per_second_budget.unwrap_or_default(),
            spec.min_ratio
        ));
    }

    // Status: the policy's totals, per rule (health checks included), per workload.
    let rule_status = |name: &str, ratio: f64, budget: Option<u32>| {
        let rate = total.get(name).copied().unwrap_or_default();
        RuleSamplingStatus {
            name: name.to_string(),
            effective_ratio: round(ratio),
            received_spans_per_second: round(rate.received),
            kept_spans_per_second: round(rate.kept),
            budget,
        }
    };
    let mut rules = Vec::new();
    if spec.drop_health_checks {
        rules.push(rule_status(HEALTH_CHECK_RULE, 0.0, None));
    }
    for r in &spec.rules {
        rules.push(rule_status(&r.name, plan.ratio(&r.name, r.base_ratio().get()), r.spans_per_second));
    }
    rules.push(rule_status(FALLBACK_RULE, plan.ratio(FALLBACK_RULE, spec.ratio.get()), None));
    let sum = total.values().fold(RuleRate::default(), |mut a, r| {
        a.add(*r);
        a
    });
    plan.status = SamplingStatus {
        effective_ratio: round(plan.ratio(FALLBACK_RULE, spec.ratio.get())),
        spans_per_second: measured.then(|| round(sum.kept)),
        received_spans_per_second: measured.then(|| round(sum.received)),
        budget: spec.spans_per_second_budget,
        rules,
    };
    for (ns, workloads) in coverage {
        for (id, w) in workloads {
            if let Some(s) = workload_sampling(w, &plan, spec) {
                plan.workloads.insert((ns.clone(), id.clone()), s);
            }
        }
    }
    plan
}

/// Fills the listed workloads' `sampling` in the namespaces' status from the plan.
pub fn annotate_workloads(namespaces: &mut [crate::api::NamespaceStatus], plan: &SamplingPlan) {
    for ns in namespaces {
        for w in &mut ns.workloads {
            // The budgets' input, not part of the status (it would never compare equal to the stored one).
            w.rule_rates.clear();
            w.kept_bytes_rate = None;
            w.sampling = plan.workloads.get(&(ns.name.clone(), format!("{}/{}", w.kind, w.name))).cloned();
        }
    }
}

/// A workload's status line: its totals, and the rule that decided most of its spans.
fn workload_sampling(w: &WorkloadCoverage, plan: &SamplingPlan, spec: &SamplingSpec) -> Option<WorkloadSampling> {
    let (rule, _) = w.rule_rates.iter().max_by(|a, b| a.1.received.total_cmp(&b.1.received))?;
    let sum = w.rule_rates.values().fold(RuleRate::default(), |mut a, r| {
        a.add(*r);
        a
    });
    let ratio = if rule == HEALTH_CHECK_RULE {
        0.0
    } else {
        let base = spec.rules.iter().find(|r| &r.name == rule).map_or(spec.ratio.get(), |r| r.base_ratio().get());
        plan.ratio(rule, base)
    };
    Some(WorkloadSampling {
        received_spans_per_second: round(sum.received),
        kept_spans_per_second: round(sum.kept),
        effective_ratio: round(ratio),
        rule: rule.clone(),
        kept_bytes_per_second: w.kept_bytes_rate.map(round),
        pods: w.reporting.max(1),
    })
}

fn reporting_pods(coverage: &BTreeMap<String, Vec<(String, &WorkloadCoverage)>>) -> u32 {
    coverage.values().flatten().map(|(_, w)| w.reporting.max(w.injected)).sum()
}

/// Three significant digits: the status and the ConfigMaps do not change with every report's noise.
pub fn round(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return 0.0;
    }
    let digits = 3 - 1 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// Caps on a coarse scale (steps of about 10%): a ConfigMap is not rewritten for a small
/// change of a namespace's share.
fn quantize(cap: f64) -> f64 {
    let step = 1.1f64;
    round(step.powf((cap.ln() / step.ln()).round()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SamplingRule, SpanMatch};
    use tracelight_contract::Ratio;

    fn workload(rates: &[(&str, f64, f64)], reporting: u32) -> WorkloadCoverage {
        WorkloadCoverage {
            reporting,
            injected: reporting,
            rule_rates: rates
                .iter()
                .map(|(n, r, k)| (n.to_string(), RuleRate { received: *r, kept: *k, kept_errors: 0.0 }))
                .collect(),
            ..Default::default()
        }
    }

    fn rule(name: &str, ratio: Option<f64>, budget: Option<u32>) -> SamplingRule {
        SamplingRule {
            name: name.into(),
            matches: SpanMatch::default(),
            ratio: ratio.map(|r| Ratio::new(r).unwrap()),
            spans_per_second: budget,
        }
    }

    #[test]
    fn a_rule_budget_sets_the_rule_ratio_caps_and_status() {
        let spec = SamplingSpec { rules: vec![rule("noisy", None, Some(100))], ..Default::default() };
        let a = workload(&[("noisy", 900.0, 900.0), ("default", 10.0, 10.0)], 3);
        let b = workload(&[("noisy", 100.0, 100.0)], 1);
        let coverage = BTreeMap::from([
            ("a".to_string(), vec![("Deployment/a".to_string(), &a)]),
            ("b".to_string(), vec![("Deployment/b".to_string(), &b)]),
        ]);
        let p = plan(&spec, &coverage, None);
        assert!((p.ratio("noisy", 1.0) - 0.097).abs() < 1e-9);
        assert_eq!(p.ratio(FALLBACK_RULE, 0.0), 1.0);
        // Namespace a has 90% of the noisy traffic over 3 pods: 1.5 * 100 * 0.9 / 3 = 45.
        assert!((p.cap("a", "noisy").unwrap() - 45.0).abs() / 45.0 < 0.06, "{:?}", p.caps);
        assert!((p.cap("b", "noisy").unwrap() - 15.0).abs() / 15.0 < 0.06);
        assert_eq!(p.cap("a", FALLBACK_RULE), None, "no budget, no cap");
        assert_eq!(p.status.spans_per_second, Some(1010.0));
        assert_eq!(
            p.status.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["health-checks", "noisy", "default"]
        );
        let w = &p.workloads[&("a".to_string(), "Deployment/a".to_string())];
        assert_eq!((w.rule.as_str(), w.effective_ratio), ("noisy", 0.097));
        assert!(p.unmet.is_empty());
    }

    #[test]
    fn the_previous_status_is_the_ratio_in_effect() {
        let spec = SamplingSpec { spans_per_second_budget: Some(100), ..Default::default() };
        let w = workload(&[("default", 1000.0, 100.0)], 1);
        let coverage = BTreeMap::from([("a".to_string(), vec![("Deployment/a".to_string(), &w)])]);
        let first = plan(&spec, &coverage, None);
        assert!((first.status.effective_ratio - 0.097).abs() < 1e-9);
        // A little more traffic, inside the hysteresis and under budget at 0.097: unchanged.
        let w2 = workload(&[("default", 1020.0, 99.0)], 1);
        let coverage2 = BTreeMap::from([("a".to_string(), vec![("Deployment/a".to_string(), &w2)])]);
        let second = plan(&spec, &coverage2, Some(&first.status));
        assert_eq!(second.status.effective_ratio, first.status.effective_ratio);
    }

    #[test]
    fn sdk_mode_has_no_rules_or_budgets() {
        let spec = SamplingSpec { mode: SamplingMode::Sdk, ratio: Ratio::new(0.3).unwrap(), ..Default::default() };
        let p = plan(&spec, &BTreeMap::new(), None);
        assert_eq!(p.status.effective_ratio, 0.3);
        assert!(p.ratios.is_empty() && p.caps.is_empty());
    }

    #[test]
    fn rounding_and_quantizing() {
        assert_eq!(round(0.0970001), 0.097);
        assert_eq!(round(1234.5), 1230.0);
        assert_eq!(quantize(45.0), quantize(45.5));
    }
}
