//! The `sampling` section of one namespace's agent config (pure): the policy's rules with what
//! the operator can resolve resolved (namespace selector, workloads by name) and the ratios and
//! caps of the [`SamplingPlan`] written in.

use super::SamplingPlan;
use crate::api::{selector, MatchedWorkloadKind, SamplingMode, SamplingSpec};
use std::collections::BTreeMap;
use tracelight_contract::config::AgentSampling;
use tracelight_contract::sampling::{health_check_rules, AgentRule, AttributeMatch, FALLBACK_RULE};
use tracelight_contract::Ratio;

/// The agent's sampling settings in `namespace` (with `labels`) under `plan`.
pub fn agent_sampling(
    spec: &SamplingSpec,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    plan: &SamplingPlan,
) -> AgentSampling {
    if spec.mode == SamplingMode::Sdk {
        // The SDKs sample: the agent keeps everything it gets.
        return AgentSampling::ratio(Ratio::ALWAYS);
    }
    let ratio = |scope: &str, base: Ratio| Ratio::new(plan.ratio(scope, base.get())).unwrap_or(base);
    let mut rules = if spec.drop_health_checks { health_check_rules() } else { Vec::new() };
    for rule in &spec.rules {
        let m = &rule.matches;
        // An invalid selector never gets here (validation); treat it as not matching anyway.
        if let Some(sel) = &m.namespace_selector {
            if !selector::matches(sel, labels).unwrap_or(false) {
                continue;
            }
        }
        let workloads = m
            .workloads
            .iter()
            .flat_map(|w| {
                let kinds: Vec<MatchedWorkloadKind> = w.kind.map_or(MatchedWorkloadKind::ALL.to_vec(), |k| vec![k]);
                kinds.into_iter().map(move |k| format!("{}/{}", k.as_str(), w.name))
            })
            .collect();
        rules.push(AgentRule {
            name: rule.name.clone(),
            workloads,
            services: m.services.iter().map(|s| s.to_contract()).collect(),
            span_kinds: m.span_kinds.clone(),
            attributes: m
                .attributes
                .iter()
                .map(|a| AttributeMatch { key: a.key.as_str().to_string(), value: a.value().to_contract() })
                .collect(),
            ratio: ratio(&rule.name, rule.base_ratio()),
            spans_per_second: plan.cap(namespace, &rule.name),
        });
    }
    AgentSampling {
        ratio: ratio(FALLBACK_RULE, spec.ratio),
        keep_errors: spec.keep_errors,
        rules,
        spans_per_second: plan.cap(namespace, FALLBACK_RULE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SamplingRule, SpanMatch, WorkloadMatch};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn spec() -> SamplingSpec {
        let team = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_string(), "shop".to_string())])),
            ..Default::default()
        };
        SamplingSpec {
            ratio: Ratio::new(0.5).unwrap(),
            rules: vec![SamplingRule {
                name: "checkout".into(),
                matches: SpanMatch {
                    namespace_selector: Some(team),
                    workloads: vec![WorkloadMatch { kind: None, name: "checkout".into() }],
                    ..Default::default()
                },
                ratio: Some(Ratio::new(1.0).unwrap()),
                spans_per_second: Some(50),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rules_are_resolved_per_namespace_with_the_plan_written_in() {
        let labels = BTreeMap::from([("team".to_string(), "shop".to_string())]);
        let plan = SamplingPlan {
            ratios: BTreeMap::from([("checkout".to_string(), 0.2)]),
            caps: BTreeMap::from([("shop".to_string(), BTreeMap::from([("checkout".to_string(), 30.0)]))]),
            ..Default::default()
        };
        let s = agent_sampling(&spec(), "shop", &labels, &plan);
        assert_eq!(s.rules.len(), 5, "4 health-check rules, then checkout");
        let checkout = &s.rules[4];
        assert_eq!(checkout.ratio.get(), 0.2);
        assert_eq!(checkout.spans_per_second, Some(30.0));
        assert_eq!(checkout.workloads, ["Deployment/checkout", "StatefulSet/checkout", "DaemonSet/checkout"]);
        assert_eq!(s.ratio.get(), 0.5);
        assert!(s.keep_errors);

        let other = agent_sampling(&spec(), "billing", &BTreeMap::new(), &plan);
        assert_eq!(other.rules.len(), 4, "the namespace selector leaves the rule out");
    }

    #[test]
    fn health_checks_can_be_turned_off_and_sdk_mode_keeps_all() {
        let mut s = spec();
        s.drop_health_checks = false;
        s.rules.clear();
        assert!(agent_sampling(&s, "shop", &BTreeMap::new(), &SamplingPlan::default()).rules.is_empty());
        s.mode = SamplingMode::Sdk;
        assert_eq!(
            agent_sampling(&s, "shop", &BTreeMap::new(), &SamplingPlan::default()),
            AgentSampling::ratio(Ratio::ALWAYS)
        );
    }
}
