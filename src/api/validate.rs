//! Checks the API server cannot do from the schema. The controller reports failures in the
//! policy's `Ready` condition; `tracelight inject` refuses an invalid policy.

use super::policy::{Propagator, SamplingMode, TracingPolicySpec};
use super::selector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use std::fmt;

/// One problem, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems of a spec, joined for a condition message or an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid TracingPolicy: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Validates what the schema cannot express. Returns every problem, not just the first.
pub fn validate(spec: &TracingPolicySpec) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    let mut push = |field: String, message: String| errors.push(FieldError { field, message });

    check_selector("spec.namespaceSelector", &spec.namespace_selector, &mut push);
    if let Some(sel) = &spec.pod_selector {
        check_selector("spec.podSelector", sel, &mut push);
    }
    for (i, phase) in spec.rollout.phases.iter().enumerate() {
        if let Some(sel) = &phase.namespace_selector {
            check_selector(&format!("spec.rollout.phases[{i}].namespaceSelector"), sel, &mut push);
        }
        if spec.rollout.phases[..i].iter().any(|p| p.name == phase.name) {
            push(format!("spec.rollout.phases[{i}].name"), format!("duplicate phase name {:?}", phase.name));
        }
    }
    if spec.propagators.contains(&Propagator::None) && spec.propagators.len() > 1 {
        push("spec.propagators".into(), "\"none\" cannot be combined with other propagators".into());
    }
    check_attributes("spec.resourceAttributes", &spec.resource_attributes, &mut push);
    if spec.sampling.mode == SamplingMode::Sdk && spec.sampling.spans_per_second_budget.is_some() {
        push(
            "spec.sampling.spansPerSecondBudget".into(),
            "a budget needs mode \"agent\": the operator tunes the ratio in the agents".into(),
        );
    }
    check_sampling_rules(spec, &mut push);
    if spec.review.interval.get().as_secs() < crate::api::MIN_REVIEW_INTERVAL_SECS {
        push(
            "spec.review.interval".into(),
            format!(
                "{} is shorter than the shortest interval, {}s",
                spec.review.interval,
                crate::api::MIN_REVIEW_INTERVAL_SECS
            ),
        );
    }
    if let Err(e) = check_endpoint(&spec.collector.endpoint) {
        push("spec.collector.endpoint".into(), e);
    }
    for (lang, settings) in [
        ("java", &spec.instrumentation.java),
        ("nodejs", &spec.instrumentation.nodejs),
        ("python", &spec.instrumentation.python),
        ("dotnet", &spec.instrumentation.dotnet),
    ] {
        for key in settings.iter().flat_map(|s| s.env.keys()) {
            if !is_env_name(key) {
                push(
                    format!("spec.instrumentation.{lang}.env"),
                    format!("{key:?} is not a valid environment variable name"),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Rules: names unique and not reserved, a ratio or budget each, patterns that compile (with the
/// agent's regex engine), valid selectors; rules need mode `agent`.
fn check_sampling_rules(spec: &TracingPolicySpec, push: &mut impl FnMut(String, String)) {
    use tracelight_contract::sampling::{FALLBACK_RULE, HEALTH_CHECK_RULE};
    let rules = &spec.sampling.rules;
    if spec.sampling.mode == SamplingMode::Sdk && !rules.is_empty() {
        push("spec.sampling.rules".into(), "rules need mode \"agent\": the agents apply them".into());
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.sampling.rules[{i}]");
        if rule.name == FALLBACK_RULE || rule.name == HEALTH_CHECK_RULE {
            push(format!("{at}.name"), format!("{:?} is reserved", rule.name));
        }
        if rules[..i].iter().any(|r| r.name == rule.name) {
            push(format!("{at}.name"), format!("duplicate rule name {:?}", rule.name));
        }
        if rule.ratio.is_none() && rule.spans_per_second.is_none() {
            push(at.clone(), "a rule sets ratio, spansPerSecond, or both".into());
        }
        let m = &rule.matches;
        if let Some(sel) = &m.namespace_selector {
            check_selector(&format!("{at}.match.namespaceSelector"), sel, push);
        }
        for (j, s) in m.services.iter().enumerate() {
            if let Err(e) = s.to_contract().compile() {
                push(format!("{at}.match.services[{j}]"), e.to_string());
            }
        }
        for (j, a) in m.attributes.iter().enumerate() {
            if let Err(e) = a.value().to_contract().compile() {
                push(format!("{at}.match.attributes[{j}]"), e.to_string());
            }
        }
    }
}

fn check_selector(field: &str, sel: &LabelSelector, push: &mut impl FnMut(String, String)) {
    if let Err(e) = selector::matches(sel, &BTreeMap::new()) {
        push(field.to_string(), e.to_string());
    }
}

fn check_attributes(field: &str, attrs: &BTreeMap<String, String>, push: &mut impl FnMut(String, String)) {
    for key in attrs.keys() {
        if key.is_empty() || key.contains([',', '=', ' ']) {
            push(field.to_string(), format!("attribute key {key:?} must be non-empty without ',', '=' or spaces"));
        }
        if key.starts_with("k8s.") {
            push(field.to_string(), format!("attribute key {key:?}: k8s.* attributes are set by Tracelight"));
        }
    }
}

/// `scheme://host[:port][/path]` with an http(s) scheme and a valid port.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| format!("{endpoint:?} must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{endpoint:?} has no host"));
    }
    // IPv6 literals are bracketed (`[::1]:4318`); the port, if any, follows the closing bracket.
    let port = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((_, after)) => after.strip_prefix(':'),
            None => return Err(format!("{endpoint:?} has an unclosed IPv6 bracket")),
        },
        None => authority.rsplit_once(':').map(|(_, port)| port),
    };
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("{endpoint:?} has an invalid port {port:?}")),
        }
    }
    Ok(())
}

/// A C identifier, which every shell and runtime accepts as an environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::{CollectorProtocol, CollectorSpec, RolloutPhase};

    fn spec() -> TracingPolicySpec {
        serde_json::from_value(serde_json::json!({
            "collector": {"endpoint": "http://collector.observability:4317", "protocol": "grpc"}
        }))
        .unwrap()
    }

    #[test]
    fn minimal_spec_is_valid_and_defaulted() {
        let s = spec();
        assert_eq!(validate(&s), Ok(()));
        assert_eq!(s.collector.protocol, CollectorProtocol::Grpc);
        assert_eq!(s.sampling.ratio.get(), 1.0);
        assert_eq!(s.propagators, vec![Propagator::Tracecontext, Propagator::Baggage]);
        assert!(s.rollout.repair_missed);
    }

    #[test]
    fn reports_every_problem_with_its_field() {
        let mut s = spec();
        s.collector = CollectorSpec { endpoint: "collector:4317".into(), ..s.collector };
        s.propagators = vec![Propagator::None, Propagator::B3];
        s.resource_attributes.insert("k8s.pod.name".into(), "x".into());
        let phase = RolloutPhase {
            name: "pilot".into(),
            namespace_selector: None,
            batch_size: 1,
            soak_duration: crate::api::Duration::from_secs(1),
            health_deadline: crate::api::Duration::from_secs(1),
        };
        s.rollout.phases = vec![phase.clone(), phase];
        let errors = validate(&s).unwrap_err().0;
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.rollout.phases[1].name",
                "spec.propagators",
                "spec.resourceAttributes",
                "spec.collector.endpoint"
            ]
        );
    }

    #[test]
    fn bad_sampling_rules_are_reported_with_their_field() {
        let mut s = spec();
        let yaml = r#"
rules:
  - name: ok
    match:
      attributes: [{key: http.route, regex: "/api/v[0-9]+/.*"}]
    ratio: 0.5
  - name: bad-regex
    match:
      services: [{prefix: shop}]
      attributes: [{key: url.path, exact: /a}, {key: rpc.method, regex: "(Pay"}]
    spansPerSecond: 10
  - name: default
    ratio: 1
  - name: ok
    match:
      namespaceSelector: {matchExpressions: [{key: team, operator: Wrong}]}
"#;
        s.sampling = serde_yaml::from_str(yaml).unwrap();
        let errors = validate(&s).unwrap_err().0;
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.sampling.rules[1].match.attributes[1]",
                "spec.sampling.rules[2].name",
                "spec.sampling.rules[3].name",
                "spec.sampling.rules[3]",
                "spec.sampling.rules[3].match.namespaceSelector",
            ]
        );
        assert!(errors[0].message.contains("invalid regex \"(Pay\""), "{}", errors[0].message);
        assert!(s.sampling.drop_health_checks && s.sampling.keep_errors, "defaults on");
    }

    #[test]
    fn a_review_interval_under_ten_seconds_is_refused() {
        let mut s = spec();
        assert_eq!(s.review.interval.to_string(), "24h", "daily by default");
        s.review.interval = crate::api::Duration::from_secs(5);
        let errors = validate(&s).unwrap_err().0;
        assert_eq!(errors[0].field, "spec.review.interval");
        s.review.interval = crate::api::Duration::from_secs(10);
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn endpoint_check_accepts_urls_and_rejects_bad_ports() {
        assert!(check_endpoint("https://api.example.com").is_ok());
        assert!(check_endpoint("http://[::1]:4318/v1/traces").is_ok());
        assert!(check_endpoint("http://collector:99999").is_err());
        assert!(check_endpoint("http:///path").is_err());
        assert!(check_endpoint("grpc://collector:4317").is_err());
        assert!(check_endpoint("http://[::1:4318").is_err());
        assert!(check_endpoint("http://[::1]:0").is_err());
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("OTEL_X_1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }
}

#[cfg(test)]
mod sample_tests {
    use crate::api::{validate::validate, TracingPolicy};

    fn parse(text: &str) -> TracingPolicy {
        serde_yaml::from_str(text).expect("sample parses as a TracingPolicy")
    }

    #[test]
    fn minimal_sample_parses_and_validates() {
        let p = parse(include_str!("../../config/samples/tracingpolicy.yaml"));
        assert_eq!(p.metadata.name.as_deref(), Some("default"));
        assert_eq!(p.spec.sampling.ratio.get(), 0.1);
        validate(&p.spec).unwrap();
    }

    #[test]
    fn complete_sample_parses_and_validates_every_section() {
        let p = parse(include_str!("../../config/samples/tracingpolicy-complete.yaml"));
        validate(&p.spec).unwrap();
        assert_eq!(p.spec.rollout.phases.len(), 2);
        assert_eq!(p.spec.rollout.phases[1].soak_duration.to_string(), "5m");
        assert!(p.spec.instrumentation.dotnet.is_some());
        assert_eq!(p.spec.collector.api_key_header, "x-api-key");
        assert_eq!(p.spec.sampling.spans_per_second_budget, Some(5000));
    }
}
