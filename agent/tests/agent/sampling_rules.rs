//! Sampling rules on the wire path: the agent matches span attributes in the protobuf bytes,
//! drops health checks, keeps error spans, caps a rule locally, counts per rule, and takes a
//! ratio change live.

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use std::time::Duration;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// `n` server spans with `attributes`, random trace ids; `error`: status ERROR.
fn spans(n: usize, attributes: &[(&str, &str)], error: bool) -> Vec<Span> {
    (0..n)
        .map(|i| Span {
            trace_id: fastrand::u128(1..).to_be_bytes().to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: "GET".into(),
            kind: SpanKind::Server as i32,
            attributes: attributes.iter().map(|(k, v)| kv(k, v)).collect(),
            status: error.then(|| Status { code: StatusCode::Error as i32, ..Default::default() }),
            ..Default::default()
        })
        .collect()
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut r = crate::support::request(0, "shop-frontend");
    r.resource_spans = vec![ResourceSpans {
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..r.resource_spans.remove(0)
    }];
    r
}

async fn send(agent: &tracelight_agent::RunningAgent, req: &ExportTraceServiceRequest) {
    let url = format!("http://{}/v1/traces", agent.http_addr);
    let (status, _, _) = post(&url, &[("content-type", "application/x-protobuf")], req.encode_to_vec()).await;
    assert_eq!(status, 200);
}

const RULES: &str = r#"  keepErrors: true
  rules:
    - name: health-checks
      spanKinds: [server]
      attributes: [{key: http.route, regex: "/(healthz|readyz|metrics)"}]
      ratio: 0
    - name: grpc-health
      attributes: [{key: rpc.service, exact: grpc.health.v1.Health}]
      ratio: 0
    - name: checkout
      workloads: [Deployment/shop-frontend]
      attributes: [{key: url.path, prefix: /checkout}]
      ratio: RATIO
    - name: other-workload
      workloads: [Deployment/someone-else]
      ratio: 0
    - name: noisy
      services: [{exact: shop-frontend}]
      attributes: [{key: http.route, exact: /noisy}]
      ratio: 1
      spansPerSecond: 5
"#;

fn config(generation: i64, collector: &str, checkout_ratio: f64) -> String {
    let base = config_yaml(generation, collector, "http/protobuf", 0.5, "");
    base.replace("  ratio: 0.5\n", &format!("  ratio: 0.5\n{}", RULES.replace("RATIO", &checkout_ratio.to_string())))
}

fn rule_counts(agent: &tracelight_agent::RunningAgent, rule: &str) -> (u64, u64, u64) {
    let c = agent.report().sampling_rules.get(rule).cloned().unwrap_or_default();
    (c.received, c.kept, c.capped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_decide_on_the_wire_health_dropped_errors_kept_noisy_capped() {
    let sink = sink().await;
    let dir = temp_dir("rules");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config(1, &format!("http://{}", sink.http_addr), 1.0));
    let agent = agent(&cfg).await;
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 1).await);

    let mut all = Vec::new();
    all.extend(spans(50, &[("http.route", "/healthz")], false));
    all.extend(spans(10, &[("http.route", "/readyz")], true)); // failing probes: kept (keepErrors)
    all.extend(spans(20, &[("rpc.service", "grpc.health.v1.Health"), ("rpc.method", "Check")], false));
    all.extend(spans(40, &[("url.path", "/checkout/pay"), ("http.route", "/checkout/{step}")], false));
    all.extend(spans(400, &[("http.route", "/other")], false));
    send(&agent, &request(all)).await;

    assert_eq!(rule_counts(&agent, "health-checks"), (60, 10, 0));
    assert_eq!(rule_counts(&agent, "grpc-health"), (20, 0, 0));
    assert_eq!(rule_counts(&agent, "checkout"), (40, 40, 0), "ratio 1 for this workload's rule");
    assert_eq!(rule_counts(&agent, "other-workload"), (0, 0, 0), "a rule of another workload never applies");
    let (received, kept, _) = rule_counts(&agent, "default");
    assert_eq!(received, 400);
    assert!((140..=260).contains(&kept), "fallback 0.5 kept {kept} of 400");

    let got = collect(&sink, 50 + kept as usize, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 50 + kept as usize);
    let route = |s: &Span| {
        s.attributes.iter().find(|a| a.key == "http.route").and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some(v.clone()),
            _ => None,
        })
    };
    assert!(got.iter().all(|(_, s)| route(s).as_deref() != Some("/healthz")), "health checks dropped");
    let probes: Vec<&Span> = got.iter().map(|(_, s)| s).filter(|s| route(s).as_deref() == Some("/readyz")).collect();
    assert_eq!(probes.len(), 10, "error spans kept whatever the ratio");
    assert!(probes.iter().all(|s| s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32)));

    // The local cap: 5 spans/s (a burst of CAP_BURST_SECS' worth, 50) on the noisy rule.
    send(&agent, &request(spans(100, &[("http.route", "/noisy")], false))).await;
    let (received, kept, capped) = rule_counts(&agent, "noisy");
    assert_eq!(received, 100);
    let burst = (5.0 * tracelight_agent::rules::CAP_BURST_SECS) as u64;
    assert!((burst..=burst + 2).contains(&kept), "cap let {kept} through");
    assert_eq!(kept + capped, 100);

    // Per-rule metrics on /metrics.
    let text = metrics_once(
        agent.admin_addr,
        "tracelight_agent_rule_spans_received_total{rule=\"noisy\"} 100",
        Duration::from_secs(2),
    )
    .await;
    assert!(text.contains("tracelight_agent_rule_spans_received_total{rule=\"noisy\"} 100"), "{text}");
    assert!(text.contains("tracelight_agent_rule_spans_kept_total{rule=\"health-checks\"} 10"), "{text}");

    // Lowering a rule's ratio live: the next request is sampled at it, nothing restarts.
    write_atomic(&cfg, &config(2, &format!("http://{}", sink.http_addr), 0.0));
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 2).await);
    send(&agent, &request(spans(30, &[("url.path", "/checkout")], false))).await;
    assert_eq!(rule_counts(&agent, "checkout"), (70, 40, 0));
    agent.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_a_bad_rule_is_rejected_and_the_previous_one_stays() {
    let dir = temp_dir("bad-rule");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config(1, "http://127.0.0.1:9", 1.0));
    let agent = agent(&cfg).await;
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 1).await);
    let bad = config(2, "http://127.0.0.1:9", 1.0).replace("prefix: /checkout", "regex: \"(unclosed\"");
    write_atomic(&cfg, &bad);
    let rejected = || {
        agent
            .shared
            .metrics
            .config_reloads
            .get_or_create(&tracelight_agent::metrics::ReloadLabel {
                result: tracelight_agent::metrics::ReloadResult::Rejected,
            })
            .get()
    };
    assert!(wait_until(Duration::from_secs(5), || rejected() == 1).await);
    assert_eq!(agent.report().config_generation, 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_rule_decides_per_resource_even_for_identical_spans() {
    let dir = temp_dir("service-rule");
    let cfg = dir.join("config.yaml");
    let yaml = config_yaml(1, "http://127.0.0.1:9", "http/protobuf", 1.0, "").replace(
        "  ratio: 1\n",
        "  ratio: 1\n  rules:\n    - name: batch\n      services: [{exact: shop-batch}]\n      attributes: [{key: http.route, exact: /jobs}]\n      ratio: 0\n",
    );
    write_atomic(&cfg, &yaml);
    let agent = agent(&cfg).await;
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 1).await);
    let mut req = request(spans(10, &[("http.route", "/jobs")], false));
    let mut batch = req.resource_spans[0].clone();
    batch.resource = Some(opentelemetry_proto::tonic::resource::v1::Resource {
        attributes: vec![kv("service.name", "shop-batch")],
        ..Default::default()
    });
    // Frontend, batch, frontend: the same span facts in each, decided by the resource's service.
    req.resource_spans = vec![req.resource_spans[0].clone(), batch, req.resource_spans[0].clone()];
    send(&agent, &req).await;
    assert_eq!(rule_counts(&agent, "batch"), (10, 0, 0));
    assert_eq!(rule_counts(&agent, "default"), (20, 20, 0));
    agent.shutdown().await;
}
