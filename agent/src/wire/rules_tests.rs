//! The rules as the wire path applies them (compiled patterns, alternatives by binary search,
//! regex prefilters, service matches decided once per resource, attributes read in the span's
//! single walk, the per-resource memo of decisions) checked against the plainest reading of the
//! contract: the request decoded by prost, every rule tried in order on every span with
//! `==`, `starts_with` and the anchored regex, the first match deciding.

use super::*;
use crate::enrich::{is_unexpanded_reference, PodIdentity};
use crate::metrics::Metrics;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message as _;
use tracelight_contract::config::AgentSampling;
use tracelight_contract::sampling::{health_check_rules, AgentRule, AttributeMatch, StringMatch, MATCHABLE_ATTRIBUTES};
use tracelight_contract::Ratio;

const WORKLOAD: (&str, &str) = ("Deployment", "a");

/// The straightforward matcher: no compilation beyond the regex, nothing remembered.
mod reference {
    use super::*;

    fn string_value(kv: &KeyValue) -> Option<&str> {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    fn matches(m: &StringMatch, value: &str) -> bool {
        match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), None, None) => value == e,
            (None, Some(p), None) => value.starts_with(p.as_str()),
            (None, None, Some(r)) => regex_lite::Regex::new(&format!("^(?:{r})$")).expect("valid").is_match(value),
            _ => panic!("generated patterns set exactly one"),
        }
    }

    /// The service name a resource's spans are matched on: the application's first
    /// `service.name` (a non-string value: none), or the agent's when the application has none
    /// or left an unexpanded `$(VAR)`.
    pub fn service<'a>(resource: Option<&'a Resource>, ours: Option<&'a str>) -> Option<&'a str> {
        let kv = resource.and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"));
        match kv {
            None => ours,
            Some(kv) => match string_value(kv) {
                Some(v) if is_unexpanded_reference(v) => ours,
                v => v,
            },
        }
    }

    /// The first string value of `key` among the span's attributes.
    fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
        span.attributes.iter().filter(|kv| kv.key == key).find_map(string_value)
    }

    /// The rules that apply to the workload, in order.
    pub fn applicable(sampling: &AgentSampling) -> Vec<&AgentRule> {
        let workload = format!("{}/{}", WORKLOAD.0, WORKLOAD.1);
        sampling.rules.iter().filter(|r| r.workloads.is_empty() || r.workloads.contains(&workload)).collect()
    }

    /// The index of the first applicable rule matching the span (their count: the fallback).
    pub fn decide(rules: &[&AgentRule], service: Option<&str>, span: &Span) -> usize {
        rules
            .iter()
            .position(|r| {
                let service_ok =
                    r.services.is_empty() || service.is_some_and(|s| r.services.iter().any(|m| matches(m, s)));
                let kind = tracelight_contract::sampling::SpanKind::from_otlp(span.kind as u64);
                let kind_ok = r.span_kinds.is_empty() || kind.is_some_and(|k| r.span_kinds.contains(&k));
                let attributes_ok = r.attributes.iter().all(|a| {
                    // Entries with the same key are alternatives: one of them must match.
                    attribute(span, &a.key)
                        .is_some_and(|v| r.attributes.iter().filter(|b| b.key == a.key).any(|b| matches(&b.value, v)))
                });
                service_ok && kind_ok && attributes_ok
            })
            .unwrap_or(rules.len())
    }
}

/// Per rule (fallback last) what was received, kept and kept for its error; and the kept spans
/// in order, with their tracestate as queued.
type Result_ = (Vec<RuleTally>, Vec<Span>);

fn reference_outcome(request: &ExportTraceServiceRequest, sampling: &AgentSampling, ours: Option<&str>) -> Result_ {
    let rules = reference::applicable(sampling);
    let mut tally = vec![RuleTally::default(); rules.len() + 1];
    let mut kept = Vec::new();
    for rs in &request.resource_spans {
        let service = reference::service(rs.resource.as_ref(), ours);
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            if !valid_ids(&span.trace_id, &span.span_id) {
                continue;
            }
            let rule = reference::decide(&rules, service, span);
            let ratio = rules.get(rule).map_or(sampling.ratio, |r| r.ratio);
            let t = &mut tally[rule];
            t.received += 1;
            let error = span.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32);
            match sampler::decide(Threshold::for_ratio(ratio.get()), &span.trace_id, &span.trace_state) {
                Decision::Keep(state) => {
                    t.kept += 1;
                    kept.push(Span { trace_state: state.unwrap_or_else(|| span.trace_state.clone()), ..span.clone() });
                }
                Decision::Drop if sampling.keep_errors && error => {
                    t.kept += 1;
                    t.kept_errors += 1;
                    kept.push(span.clone());
                }
                Decision::Drop => {}
            }
        }
    }
    (tally, kept)
}

fn wire_outcome(
    request: &ExportTraceServiceRequest,
    sampling: &AgentSampling,
    identity: &PodIdentity,
    attributes: &[(String, String)],
) -> Result_ {
    let set = crate::rules::RuleSet::compile(sampling, identity, &Metrics::default()).expect("generated rules compile");
    let rules = Rules {
        threshold: Threshold::for_ratio(sampling.ratio.get()),
        attributes,
        sampling: Some(&set),
        probe_below: 0,
    };
    let (bytes, mut out) = (request.encode_to_vec(), Vec::new());
    let processed = process(&bytes, rules, &mut out).expect("a valid request is accepted");
    let queued = ExportTraceServiceRequest::decode(&out[..]).expect("valid protobuf");
    let kept = queued.resource_spans.into_iter().flat_map(|rs| rs.scope_spans).flat_map(|s| s.spans).collect();
    (processed.rules, kept)
}

// Generators: few values from a small alphabet, so that rules match often and spans of one
// resource repeat their facts (the memo is hit, and evicted when more than it holds differ).

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "/(a|b|c){0,3}",
        1 => prop::sample::select(vec!["/healthz", "/metrics", "/health/live", "grpc.health.v1.Health", "/a/b/c/a"])
            .prop_map(str::to_string),
    ]
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    let regexes = vec!["/a.*", "/(a|b)+", "/[ab]c?", "(/a)?/b", ".*c", "/a{1,2}b?", "/ab?/?c*", "\\/b(/a)*", "/a|/c"];
    prop_oneof![
        3 => value().prop_map(|v| StringMatch::exact(&v)),
        2 => "/(a|b|c){0,2}".prop_map(|v| StringMatch::prefix(&v)),
        2 => prop::sample::select(regexes).prop_map(StringMatch::regex),
    ]
}

fn rule() -> impl Strategy<Value = AgentRule> {
    let key = prop::sample::select(MATCHABLE_ATTRIBUTES.to_vec());
    let attribute = (key, string_match()).prop_map(|(key, value)| AttributeMatch { key: key.into(), value });
    let kinds = prop::collection::vec(
        (1u64..=5).prop_map(|k| tracelight_contract::sampling::SpanKind::from_otlp(k).expect("1-5")),
        0..3,
    );
    let workloads = prop_oneof![
        3 => Just(Vec::new()),
        1 => Just(vec!["Deployment/a".to_string()]),
        1 => Just(vec!["StatefulSet/b".to_string()]),
    ];
    let services = prop::collection::vec(
        prop_oneof![
            2 => prop::sample::select(vec!["shop", "cart", "ours"]).prop_map(StringMatch::exact),
            1 => Just(StringMatch::prefix("ca")),
            1 => Just(StringMatch::regex("s.*p")),
        ],
        0..2,
    );
    let ratio = prop_oneof![Just(0.0), Just(0.25), Just(1.0), 0.0f64..=1.0];
    (prop::collection::vec(attribute, 0..4), kinds, workloads, services, ratio).prop_map(
        |(attributes, span_kinds, workloads, services, ratio)| AgentRule {
            name: "r".into(),
            workloads,
            services,
            span_kinds,
            attributes,
            ratio: Ratio::new(ratio).expect("in range"),
            spans_per_second: None,
        },
    )
}

fn sampling() -> impl Strategy<Value = AgentSampling> {
    (prop::collection::vec(rule(), 0..10), any::<bool>(), any::<bool>(), prop_oneof![Just(0.5), 0.0f64..=1.0]).prop_map(
        |(mut rules, health, keep_errors, ratio)| {
            if health {
                rules.splice(0..0, health_check_rules());
            }
            for (i, r) in rules.iter_mut().enumerate() {
                r.name = format!("{}-{i}", r.name);
            }
            AgentSampling { ratio: Ratio::new(ratio).expect("in range"), keep_errors, rules, spans_per_second: None }
        },
    )
}

fn kv(key: &str, value: Option<any_value::Value>) -> KeyValue {
    KeyValue { key: key.into(), value: value.map(|v| AnyValue { value: Some(v) }), ..Default::default() }
}

fn span() -> impl Strategy<Value = Span> {
    let key = prop_oneof![
        4 => prop::sample::select(MATCHABLE_ATTRIBUTES.to_vec()),
        1 => prop::sample::select(vec!["http.request.method", "url.scheme", "server.address"]),
    ];
    let attribute_value = prop_oneof![
        8 => value().prop_map(|v| Some(any_value::Value::StringValue(v))),
        1 => "[é/a]{0,3}".prop_map(|v| Some(any_value::Value::StringValue(v))),
        1 => any::<i64>().prop_map(|n| Some(any_value::Value::IntValue(n))),
        1 => Just(None),
    ];
    let attributes = prop::collection::vec((key, attribute_value).prop_map(|(k, v)| kv(k, v)), 0..5);
    let state = prop_oneof![4 => Just(String::new()), 1 => Just("ot=th:c".to_string()), 1 => Just("a=b".to_string())];
    (any::<[u8; 16]>(), 0i32..=6, attributes, state, 0u8..20).prop_map(
        |(trace_id, kind, attributes, trace_state, status)| Span {
            trace_id: trace_id.to_vec(),
            span_id: vec![3; 8],
            trace_state,
            name: "op".into(),
            kind,
            attributes,
            status: match status {
                0..=2 => Some(Status { code: StatusCode::Error as i32, ..Default::default() }),
                3..=5 => Some(Status { code: StatusCode::Ok as i32, ..Default::default() }),
                _ => None,
            },
            ..Default::default()
        },
    )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let service = prop_oneof![
        1 => Just(None),
        3 => prop::sample::select(vec!["shop", "cart", "$(X)"]).prop_map(|s| Some(kv("service.name", Some(any_value::Value::StringValue(s.into()))))),
        1 => Just(Some(kv("service.name", Some(any_value::Value::BoolValue(true))))),
    ];
    let resource = (service, any::<bool>()).prop_map(|(service, bare)| {
        (!bare || service.is_some())
            .then(|| Resource { attributes: service.into_iter().collect(), ..Default::default() })
    });
    let rs =
        (resource, prop::collection::vec(prop::collection::vec(span(), 0..24), 1..3)).prop_map(|(resource, scopes)| {
            ResourceSpans {
                resource,
                scope_spans: scopes.into_iter().map(|spans| ScopeSpans { spans, ..Default::default() }).collect(),
                ..Default::default()
            }
        });
    prop::collection::vec(rs, 1..4).prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Every span goes to the rule the straightforward matcher picks, is kept or dropped as it
    /// says, and the counts per rule agree.
    #[test]
    fn the_wire_path_decides_like_the_straightforward_matcher(
        sampling in sampling(),
        request in request(),
        ours in prop_oneof![Just(None), Just(Some("ours"))],
    ) {
        let identity = PodIdentity {
            workload_kind: Some(WORKLOAD.0.into()),
            workload_name: Some(WORKLOAD.1.into()),
            ..Default::default()
        };
        // The agent adds a service.name when the policy's resource attributes name one.
        let mut attributes = identity.attributes();
        attributes.extend(ours.map(|o| ("service.name".to_string(), o.to_string())));
        let want = reference_outcome(&request, &sampling, ours);
        let got = wire_outcome(&request, &sampling, &identity, &attributes);
        prop_assert_eq!(got.0, want.0, "tallies per rule");
        prop_assert_eq!(got.1, want.1, "kept spans");
    }
}
