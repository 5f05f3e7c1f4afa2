//! The wire path checked against a reference: the same rules applied to the request decoded by
//! prost (what the agent did before it worked on bytes). Both must accept the same requests
//! and queue the same spans, counts and services.

use super::*;
use crate::enrich::is_unexpanded_reference;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message as _;

/// What the reference queues and reports for one request.
#[derive(Debug, PartialEq)]
struct Outcome {
    queued: ExportTraceServiceRequest,
    counts: Ingested,
    services: Vec<(Option<String>, usize)>,
}

mod reference {
    use super::*;

    fn string_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
            ..Default::default()
        }
    }

    fn string_value(kv: &KeyValue) -> Option<&str> {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    fn enrich(resource: &mut Option<Resource>, attributes: &[(String, String)]) {
        let resource = resource.get_or_insert_with(Resource::default);
        for (key, value) in attributes {
            match resource.attributes.iter_mut().find(|kv| &kv.key == key) {
                None => resource.attributes.push(string_kv(key, value)),
                Some(kv) if string_value(kv).is_some_and(is_unexpanded_reference) => *kv = string_kv(key, value),
                Some(_) => {}
            }
        }
    }

    fn service_name(resource: Option<&Resource>) -> Option<String> {
        let kv = resource?.attributes.iter().find(|kv| kv.key == "service.name")?;
        string_value(kv).map(str::to_string)
    }

    pub fn process(request: ExportTraceServiceRequest, rules: Rules<'_>) -> Outcome {
        let mut counts = Ingested::default();
        let mut services = Vec::new();
        let mut kept = Vec::new();
        for mut rs in request.resource_spans {
            let mut n = Ingested::default();
            for scope in &mut rs.scope_spans {
                n.received += scope.spans.len();
                scope.spans.retain_mut(|span| {
                    if !valid_ids(&span.trace_id, &span.span_id) {
                        n.rejected += 1;
                        return false;
                    }
                    match sampler::decide(rules.threshold, &span.trace_id, &span.trace_state) {
                        Decision::Drop => {
                            n.sampled_out += 1;
                            false
                        }
                        Decision::Keep(state) => {
                            if let Some(state) = state {
                                span.trace_state = state;
                            }
                            n.queued += 1;
                            true
                        }
                    }
                });
            }
            rs.scope_spans.retain(|s| !s.spans.is_empty());
            if n.queued > 0 {
                enrich(&mut rs.resource, rules.attributes);
            }
            if n.received > 0 {
                services.push((service_name(rs.resource.as_ref()), n.received));
            }
            if !rs.scope_spans.is_empty() {
                kept.push(rs);
            }
            counts.add(n);
        }
        Outcome { queued: ExportTraceServiceRequest { resource_spans: kept }, counts, services }
    }
}

/// The wire path's outcome, its queued bytes decoded for comparison.
fn wire_outcome(bytes: &[u8], rules: Rules<'_>) -> Result<(Outcome, Vec<u8>), WireError> {
    let mut out = Vec::new();
    let processed = process(bytes, rules, &mut out)?;
    let queued = ExportTraceServiceRequest::decode(&out[..]).expect("the wire path writes valid protobuf");
    let services = processed.services.iter().map(|(s, n)| (s.map(str::to_string), *n)).collect();
    Ok((Outcome { queued, counts: processed.counts, services }, out))
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn identity_attributes() -> Vec<(String, String)> {
    vec![
        ("k8s.pod.name".into(), "web-1".into()),
        ("k8s.namespace.name".into(), "shop".into()),
        ("service.name".into(), "from-policy".into()),
    ]
}

fn span_with(trace_id: [u8; 16], trace_state: &str) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: vec![7; 8],
        trace_state: trace_state.into(),
        name: "GET /".into(),
        kind: 2,
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: vec![kv("http.route", "/")],
        status: Some(Status { message: "ok".into(), code: 1 }),
        ..Default::default()
    }
}

fn one_resource(resource: Option<Resource>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource,
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "lib".into(), ..Default::default() }),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn value_of<'r>(r: &'r Resource, key: &str) -> Option<&'r str> {
    r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

const KEEP_ALL: Rules<'static> =
    Rules { threshold: Threshold::Keep(0), attributes: &[], sampling: None, probe_below: 0 };

#[test]
fn a_bare_resource_gets_the_attributes() {
    let attrs = identity_attributes();
    let rules = Rules { threshold: Threshold::Keep(0), attributes: &attrs, sampling: None, probe_below: 0 };
    let req = one_resource(None, vec![span_with([1; 16], "")]);
    let (outcome, _) = wire_outcome(&req.encode_to_vec(), rules).expect("valid");
    let resource = outcome.queued.resource_spans[0].resource.clone().expect("resource written");
    assert_eq!(value_of(&resource, "k8s.pod.name"), Some("web-1"));
    assert_eq!(value_of(&resource, "k8s.namespace.name"), Some("shop"));
    assert_eq!(outcome.services, vec![(Some("from-policy".to_string()), 1)]);
}

#[test]
fn application_values_win_but_unexpanded_references_are_replaced() {
    let attrs = identity_attributes();
    let rules = Rules { threshold: Threshold::Keep(0), attributes: &attrs, sampling: None, probe_below: 0 };
    let resource = Resource {
        attributes: vec![
            kv("service.name", "cart"),
            kv("k8s.pod.name", "$(TRACELIGHT_POD_NAME)"),
            kv("k8s.namespace.name", "ns-$(X)"),
        ],
        ..Default::default()
    };
    let req = one_resource(Some(resource), vec![span_with([1; 16], "")]);
    let (outcome, _) = wire_outcome(&req.encode_to_vec(), rules).expect("valid");
    let resource = outcome.queued.resource_spans[0].resource.clone().expect("resource");
    assert_eq!(value_of(&resource, "service.name"), Some("cart"));
    assert_eq!(value_of(&resource, "k8s.pod.name"), Some("web-1"));
    assert_eq!(value_of(&resource, "k8s.namespace.name"), Some("ns-$(X)"));
    assert_eq!(resource.attributes.len(), 3, "replaced in place, nothing appended twice");
    assert_eq!(outcome.services, vec![(Some("cart".to_string()), 1)]);
}

#[test]
fn kept_spans_are_copied_byte_for_byte() {
    let req = one_resource(None, vec![span_with([1; 16], "vendor=x"), span_with([2; 16], "")]);
    let mut out = Vec::new();
    process(&req.encode_to_vec(), KEEP_ALL, &mut out).expect("valid");
    for span in &req.resource_spans[0].scope_spans[0].spans {
        let encoded = span.encode_to_vec();
        assert!(out.windows(encoded.len()).any(|w| w == encoded), "span bytes found unchanged in the output");
    }
}

#[test]
fn a_threshold_replaces_every_tracestate_field_once() {
    // A span with its tracestate given twice (the last wins) and a field after it.
    let mut bytes = Vec::new();
    let span = span_with(trace_id_with_randomness(0xff_ffff_ffff_ffff), "a=1");
    let mut encoded = span.encode_to_vec();
    reader::put_len_field(&mut encoded, 3, b"ot=rv:ffffffffffffff,b=2");
    let mut scope = Vec::new();
    reader::put_len_field(&mut scope, 2, &encoded);
    let mut rs = Vec::new();
    reader::put_len_field(&mut rs, 2, &scope);
    reader::put_len_field(&mut bytes, 1, &rs);
    let rules = Rules { threshold: Threshold::for_ratio(0.5), attributes: &[], sampling: None, probe_below: 0 };
    let (outcome, out) = wire_outcome(&bytes, rules).expect("valid");
    let kept = &outcome.queued.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(kept.trace_state, "ot=th:8;rv:ffffffffffffff,b=2");
    assert_eq!(kept.name, "GET /");
    assert_eq!(out.windows(3).filter(|w| w == b"a=1").count(), 0, "the overridden tracestate is gone");
}

#[test]
fn unknown_fields_are_forwarded_inside_resource_spans() {
    let req = one_resource(None, vec![span_with([1; 16], "")]);
    let mut bytes = req.encode_to_vec();
    // Append an unknown field 99 to the span (inside its ScopeSpans, inside the ResourceSpans):
    // simplest from a rebuilt request.
    let mut span = req.resource_spans[0].scope_spans[0].spans[0].encode_to_vec();
    reader::put_len_field(&mut span, 99, b"future");
    let mut scope = Vec::new();
    reader::put_len_field(&mut scope, 2, &span);
    let mut rs = Vec::new();
    reader::put_len_field(&mut rs, 2, &scope);
    bytes.clear();
    reader::put_len_field(&mut bytes, 1, &rs);
    let mut out = Vec::new();
    process(&bytes, KEEP_ALL, &mut out).expect("valid");
    assert!(out.windows(6).any(|w| w == b"future"));
}

#[test]
fn an_error_leaves_the_output_as_it_was() {
    let mut out = b"earlier".to_vec();
    let mut bytes = one_resource(None, vec![span_with([1; 16], "")]).encode_to_vec();
    bytes.extend_from_slice(&[0x0a, 0x05, 0x01]); // a second ResourceSpans cut short
    assert!(process(&bytes, KEEP_ALL, &mut out).is_err());
    assert_eq!(out, b"earlier");
}

fn trace_id_with_randomness(r: u64) -> [u8; 16] {
    let mut id = [0xab; 16];
    id[8..].copy_from_slice(&r.to_be_bytes());
    id
}

// Generators of requests that exercise every rule: invalid ids, tracestates with and without
// `ot`, resources with service names, duplicate and unexpanded attributes, several resources
// and scopes, nested attribute values.

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        "[a-z$()_]{0,8}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(any_value::Value::BytesValue),
    ];
    leaf.prop_recursive(3, 8, 3, |inner| {
        proptest::collection::vec(inner.prop_map(|v| AnyValue { value: Some(v) }), 0..3).prop_map(|values| {
            any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue { values })
        })
    })
    .prop_map(|v| AnyValue { value: Some(v) })
}

fn attribute() -> impl Strategy<Value = KeyValue> {
    let key = prop_oneof!["service.name", "k8s.pod.name", "k8s.namespace.name", "other", "[a-z.]{1,6}"];
    let value = prop_oneof![
        3 => "[a-z-]{1,6}|\\$\\(TRACELIGHT_POD_NAME\\)|\\$\\(X\\)".prop_map(|s| Some(AnyValue { value: Some(any_value::Value::StringValue(s)) })),
        1 => any_value().prop_map(Some),
        1 => Just(None),
    ];
    (key, value).prop_map(|(key, value)| KeyValue { key: key.to_string(), value, ..Default::default() })
}

fn span_strategy() -> impl Strategy<Value = Span> {
    let trace_id = prop_oneof![
        8 => any::<[u8; 16]>().prop_map(|b| b.to_vec()),
        1 => Just(vec![0; 16]),
        1 => proptest::collection::vec(any::<u8>(), 0..20),
    ];
    let span_id = prop_oneof![8 => Just(vec![3; 8]), 1 => Just(vec![0; 8]), 1 => Just(vec![1; 3])];
    let state = prop_oneof![
        4 => Just(String::new()),
        1 => Just("ot=th:c".to_string()),
        1 => Just("ot=rv:ffffffffffffff".to_string()),
        1 => Just("ot=th:4;rv:00000000000001,a=1".to_string()),
        1 => Just("vendor=x,ot=th:zz".to_string()),
    ];
    (trace_id, span_id, state, proptest::collection::vec(attribute(), 0..3)).prop_map(
        |(trace_id, span_id, trace_state, attributes)| Span {
            trace_id,
            span_id,
            trace_state,
            name: "op".into(),
            attributes,
            events: vec![span::Event { name: "e".into(), ..Default::default() }],
            ..Default::default()
        },
    )
}

fn request_strategy() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let resource = prop_oneof![
        1 => Just(None),
        4 => proptest::collection::vec(attribute(), 0..5).prop_map(|attributes| Some(Resource { attributes, ..Default::default() })),
    ];
    let scope = proptest::collection::vec(span_strategy(), 0..6).prop_map(|spans| ScopeSpans {
        scope: Some(InstrumentationScope { name: "s".into(), ..Default::default() }),
        spans,
        schema_url: String::new(),
    });
    let rs = (resource, proptest::collection::vec(scope, 0..3)).prop_map(|(resource, scope_spans)| ResourceSpans {
        resource,
        scope_spans,
        schema_url: "u".into(),
    });
    proptest::collection::vec(rs, 0..4).prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn threshold_strategy() -> impl Strategy<Value = Threshold> {
    prop_oneof![
        Just(Threshold::Keep(0)),
        Just(Threshold::Never),
        Just(Threshold::for_ratio(0.5)),
        Just(Threshold::for_ratio(0.1)),
        (0.0f64..1.0).prop_map(Threshold::for_ratio),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn same_outcome_as_the_decoded_reference(req in request_strategy(), threshold in threshold_strategy()) {
        let attrs = identity_attributes();
        let rules = Rules { threshold, attributes: &attrs, sampling: None, probe_below: 0 };
        let (got, _) = wire_outcome(&req.encode_to_vec(), rules).expect("a valid request is accepted");
        prop_assert_eq!(got, reference::process(req, rules));
    }

    /// A corrupted request is refused exactly when prost refuses it, and when accepted it is
    /// processed as prost reads it.
    #[test]
    fn mutated_requests_are_judged_like_prost(
        req in request_strategy(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = req.encode_to_vec();
        prop_assume!(!bytes.is_empty());
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let attrs = identity_attributes();
        let rules = Rules { threshold: Threshold::for_ratio(0.5), attributes: &attrs, sampling: None, probe_below: 0 };
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]);
        match wire_outcome(&bytes, rules) {
            Ok((got, _)) => {
                let decoded = decoded.map_err(|e| TestCaseError::fail(format!("prost refused what the wire path took: {e}")))?;
                prop_assert_eq!(got, reference::process(decoded, rules));
            }
            Err(e) => prop_assert!(decoded.is_err(), "the wire path refused what prost took: {}", e),
        }
    }
}
