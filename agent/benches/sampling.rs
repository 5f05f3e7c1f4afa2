//! `make bench-sampling`: does a budget hold, and what do rules cost?
//!
//! **Budget.** One agent pipeline (in process, no network) receives a realistic mix of server
//! spans (API routes, checkout, health and readiness probes, metrics scrapes, gRPC health
//! checks, 1% errors) at a fixed rate in real time, under a policy budget well below that rate.
//! The operator's budget loop is simulated: at the end of every report interval the bench reads
//! the agent's per-rule counters (what the report carries), turns them into rates, calls the
//! operator's pure budget function (`src/sampling/budget.rs`, compiled here from its source: the
//! agent does not link the operator) and applies the resulting ratios and local cap as a config
//! reload would. The first intervals converge; the kept rate over the rest is `achieved`.
//! Report intervals are compressed (1 s instead of 30 s): the loop's arithmetic does not depend
//! on the interval, only on rates.
//!
//! **Rules' cost.** Throughput of the ingest path on one core with the same mix, with no rules
//! at all (ratio 0.5) and with 20 rules (the 4 built-in health-check rules, 16 of the kind users
//! write: exact, prefix and regex on routes, RPC and messaging attributes, services and span
//! kinds; most spans fall through all of them to the fallback) plus `keepErrors`, against no
//! rules at the ratio that keeps the same share of spans as the rules do (both then copy the
//! same volume; the loss against ratio 0.5 is printed too). `rules_cost_pct` is the median
//! loss of spans/s over 21 short rounds, each running the pipelines back to back.
//!
//! Last line: `RESULT budget=<spans/s> achieved=<spans/s> error_pct=<..> rules_cost_pct=<..>`.

#[allow(dead_code)]
#[path = "../../src/sampling/budget.rs"]
mod budget;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracelight_agent::enrich::PodIdentity;
use tracelight_agent::metrics::{Metrics, Transport};
use tracelight_agent::pipeline::{LiveSettings, Pipeline};
use tracelight_agent::queue::Queue;
use tracelight_agent::rules::RuleSet;
use tracelight_agent::sampler::Threshold;
use tracelight_contract::config::AgentSampling;
use tracelight_contract::sampling::{
    health_check_rules, AgentRule, AttributeMatch, SpanKind, StringMatch, FALLBACK_RULE,
};
use tracelight_contract::Ratio;

const SPANS_PER_REQUEST: usize = 100;
/// Offered load and budget (spans/s).
const OFFERED: f64 = 40_000.0;
const BUDGET: f64 = 2_000.0;
const INTERVAL: Duration = Duration::from_secs(1);
const CONVERGE_INTERVALS: usize = 4;
const MEASURE_INTERVALS: usize = 10;
/// As the operator (`src/sampling/mod.rs`): local cap = factor x the pod's share of the budget.
const LOCAL_CAP_FACTOR: f64 = 1.5;
const MIN_RATIO: f64 = 0.001;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// The mix: (share in %, attributes).
const MIX: &[(u32, &[(&str, &str)])] = &[
    (55, &[("http.request.method", "GET"), ("http.route", "/api/v1/items/{id}"), ("url.path", "/api/v1/items/42")]),
    (15, &[("http.request.method", "POST"), ("http.route", "/api/v1/cart"), ("url.path", "/api/v1/cart")]),
    (5, &[("http.request.method", "POST"), ("http.route", "/api/checkout"), ("url.path", "/api/checkout")]),
    (10, &[("http.request.method", "GET"), ("http.route", "/healthz"), ("url.path", "/healthz")]),
    (5, &[("http.request.method", "GET"), ("http.route", "/readyz"), ("url.path", "/readyz")]),
    (5, &[("http.request.method", "GET"), ("url.path", "/metrics")]),
    (5, &[("rpc.system", "grpc"), ("rpc.service", "grpc.health.v1.Health"), ("rpc.method", "Check")]),
];

fn request(rng: &mut fastrand::Rng) -> Vec<u8> {
    let spans = (0..SPANS_PER_REQUEST)
        .map(|_| {
            let mut pick = rng.u32(0..100);
            let (_, attrs) =
                MIX.iter().find(|(share, _)| pick.checked_sub(*share).map(|p| pick = p).is_none()).unwrap_or(&MIX[0]);
            let error = rng.u32(0..100) == 0;
            Span {
                trace_id: rng.u128(1..).to_be_bytes().to_vec(),
                span_id: rng.u64(1..).to_be_bytes().to_vec(),
                parent_span_id: rng.u64(1..).to_be_bytes().to_vec(),
                name: "GET".into(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_001_000_000,
                attributes: attrs
                    .iter()
                    .map(|(k, v)| kv(k, v))
                    .chain([kv("server.address", "shop-frontend.shop.svc"), kv("url.scheme", "https")])
                    .collect(),
                status: error.then(|| Status { code: StatusCode::Error as i32, ..Default::default() }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", "shop-frontend")], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn pipeline() -> Pipeline {
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(256 << 20, metrics.clone()));
    let identity = PodIdentity {
        pod_name: Some("shop-frontend-7d9f".into()),
        namespace: Some("shop".into()),
        workload_kind: Some("Deployment".into()),
        workload_name: Some("shop-frontend".into()),
        ..Default::default()
    };
    Pipeline::new(identity, queue, metrics)
}

fn apply(p: &Pipeline, sampling: &AgentSampling, generation: i64) {
    let rules = RuleSet::compile(sampling, &p.identity, &p.metrics).expect("bench rules compile");
    p.set_live(LiveSettings {
        threshold: Threshold::for_ratio(sampling.ratio.get()),
        attributes: p.identity.attributes(),
        generation,
        rules: (!rules.is_plain()).then(|| Arc::new(rules)),
        probe_below: 0,
    });
}

fn drain(p: &Pipeline) {
    while p.queue.take(usize::MAX).is_some() {}
}

fn rule(name: &str, attributes: Vec<AttributeMatch>, ratio: f64) -> AgentRule {
    AgentRule {
        name: name.into(),
        workloads: Vec::new(),
        services: Vec::new(),
        span_kinds: Vec::new(),
        attributes,
        ratio: Ratio::new(ratio).expect("ratio"),
        spans_per_second: None,
    }
}

fn attr(key: &str, m: StringMatch) -> AttributeMatch {
    AttributeMatch { key: key.into(), value: m }
}

/// The budget run: returns the kept spans/s over the measured intervals.
fn budget_run(requests: &[Vec<u8>]) -> f64 {
    let p = pipeline();
    let checkout = rule("checkout", vec![attr("url.path", StringMatch::prefix("/api/checkout"))], 1.0);
    let config = |checkout_ratio: f64, fallback: f64, caps: &BTreeMap<String, f64>| {
        let mut rules = health_check_rules();
        rules.push(AgentRule {
            ratio: Ratio::new(checkout_ratio).expect("ratio"),
            spans_per_second: caps.get("checkout").copied(),
            ..checkout.clone()
        });
        AgentSampling {
            ratio: Ratio::new(fallback).expect("ratio"),
            keep_errors: true,
            rules,
            spans_per_second: caps.get(FALLBACK_RULE).copied(),
        }
    };
    // The policy: checkout kept whole, the rest at 1, a policy-wide budget.
    let base = [("checkout", 1.0), (FALLBACK_RULE, 1.0)];
    apply(&p, &config(1.0, 1.0, &BTreeMap::new()), 1);
    let mut current: BTreeMap<String, f64> = BTreeMap::new();
    let mut last = p.metrics.rule_counts();
    let per_slice = (OFFERED / 100.0 / SPANS_PER_REQUEST as f64).round() as usize; // 10 ms slices
    let mut next = 0usize;
    let mut kept_measured = 0u64;
    let start = Instant::now();
    for interval in 0..CONVERGE_INTERVALS + MEASURE_INTERVALS {
        let interval_start = start + INTERVAL * interval as u32;
        for slice in 0..100u32 {
            let due = interval_start + INTERVAL / 100 * slice;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for _ in 0..per_slice {
                p.ingest(&requests[next % requests.len()], Transport::Http).expect("valid request");
                next += 1;
            }
            drain(&p);
        }
        // The report, and the operator's loop.
        let now = p.metrics.rule_counts();
        let secs = INTERVAL.as_secs_f64();
        let rate = |name: &str| {
            let (a, b) = (now.get(name).cloned().unwrap_or_default(), last.get(name).cloned().unwrap_or_default());
            ((a.received - b.received) as f64 / secs, (a.kept_errors - b.kept_errors) as f64 / secs)
        };
        let kept_now: u64 = now.values().map(|c| c.kept).sum::<u64>() - last.values().map(|c| c.kept).sum::<u64>();
        if interval >= CONVERGE_INTERVALS {
            kept_measured += kept_now;
        }
        let scopes: Vec<budget::Scope> = base
            .iter()
            .map(|(name, ratio)| {
                let (received, kept_errors) = rate(name);
                budget::Scope {
                    name: name.to_string(),
                    received: Some(received),
                    ratio: *ratio,
                    budget: None,
                    current: current.get(*name).copied(),
                    kept_errors: Some(kept_errors),
                }
            })
            .collect();
        // Health checks: kept only by keepErrors (ratio 0), in the policy's total all the same.
        let (hr, hk) = rate("health-checks");
        let mut all = scopes.clone();
        all.push(budget::Scope {
            name: "health-checks".into(),
            received: Some(hr),
            ratio: 0.0,
            budget: None,
            current: Some(0.0),
            kept_errors: Some(hk),
        });
        let decided = budget::effective_ratios(&all, Some(BUDGET), MIN_RATIO);
        let expected_total: f64 = decided.scopes.iter().filter_map(|d| d.expected).sum::<f64>().max(1.0);
        let mut caps = BTreeMap::new();
        for d in &decided.scopes {
            current.insert(d.name.clone(), d.ratio);
            let share = BUDGET * d.expected.unwrap_or(0.0) / expected_total;
            caps.insert(d.name.clone(), (LOCAL_CAP_FACTOR * share).max(1.0));
        }
        apply(&p, &config(current["checkout"], current[FALLBACK_RULE], &caps), interval as i64 + 2);
        eprintln!(
            "interval {interval:>2}: received {:>6.0}/s kept {:>6.0}/s -> ratios checkout {:.4} default {:.4}",
            now.values().map(|c| c.received).sum::<u64>() as f64
                - last.values().map(|c| c.received).sum::<u64>() as f64,
            kept_now as f64 / secs,
            current["checkout"],
            current[FALLBACK_RULE]
        );
        last = now;
    }
    kept_measured as f64 / (MEASURE_INTERVALS as f64 * INTERVAL.as_secs_f64())
}

/// The 20 rules of the cost run: the 4 built-in health-check rules and 16 of a user's.
fn twenty_rules() -> Vec<AgentRule> {
    let mut rules = health_check_rules();
    let route = |r: &str| attr("http.route", StringMatch::exact(r));
    let users: Vec<AgentRule> = vec![
        rule("checkout", vec![attr("url.path", StringMatch::prefix("/api/checkout"))], 1.0),
        rule("payments", vec![attr("rpc.service", StringMatch::prefix("shop.payments."))], 1.0),
        rule("admin", vec![attr("http.route", StringMatch::prefix("/admin/"))], 0.01),
        rule("search", vec![route("/api/v1/search")], 0.05),
        rule("reco", vec![route("/api/v1/recommendations")], 0.05),
        rule("users", vec![attr("http.route", StringMatch::regex("/api/v[0-9]+/users/.*"))], 0.2),
        rule("orders", vec![attr("url.path", StringMatch::regex("/api/v[0-9]+/orders/[0-9]+"))], 0.2),
        rule("kafka", vec![attr("messaging.destination.name", StringMatch::prefix("orders."))], 0.1),
        rule(
            "inventory-rpc",
            vec![
                attr("rpc.service", StringMatch::exact("shop.Inventory")),
                attr("rpc.method", StringMatch::exact("Reserve")),
            ],
            0.5,
        ),
        rule("static", vec![attr("url.path", StringMatch::prefix("/static/"))], 0.0),
        rule("favicon", vec![attr("url.path", StringMatch::exact("/favicon.ico"))], 0.0),
        rule("graphql", vec![route("/graphql")], 0.3),
        rule("webhooks", vec![attr("http.route", StringMatch::prefix("/hooks/"))], 1.0),
        rule("legacy", vec![attr("http.target", StringMatch::prefix("/cgi-bin/"))], 0.1),
        {
            let mut r = rule("consumers", Vec::new(), 0.2);
            r.span_kinds = vec![SpanKind::Consumer];
            r
        },
        {
            let mut r = rule("batch-service", Vec::new(), 0.1);
            r.services = vec![StringMatch::exact("shop-batch")];
            r
        },
    ];
    rules.extend(users);
    assert_eq!(rules.len(), 20);
    rules
}

/// Spans per second through `ingest` on one thread, for about `for_`.
fn throughput(p: &Pipeline, requests: &[Vec<u8>], for_: Duration) -> f64 {
    let start = Instant::now();
    let mut spans = 0usize;
    while start.elapsed() < for_ {
        for r in requests.iter().take(50) {
            spans += p.ingest(r, Transport::Http).expect("valid request").received;
        }
        drain(p);
    }
    spans as f64 / start.elapsed().as_secs_f64()
}

/// The median of `xs` (sorted in place).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(17);
    let requests: Vec<Vec<u8>> = (0..1000).map(|_| request(&mut rng)).collect();

    // Rules' cost first (the budget run then has a warm cache either way).
    let ruled = pipeline();
    let sampling = AgentSampling {
        keep_errors: true,
        rules: twenty_rules(),
        ..AgentSampling::ratio(Ratio::new(0.5).expect("ratio"))
    };
    apply(&ruled, &sampling, 1);
    // The rules drop the probes and keep checkouts whole: they keep another share of the spans
    // than ratio 0.5 alone, and copying kept spans costs too. The baseline without rules runs at
    // the share the rules keep, so the two write the same volume and only the rules differ.
    let (mut received, mut queued) = (0usize, 0usize);
    for r in &requests {
        let counts = ruled.ingest(r, Transport::Http).expect("valid request");
        (received, queued) = (received + counts.received, queued + counts.queued);
        drain(&ruled);
    }
    let kept_share = queued as f64 / received as f64;
    let plain = pipeline();
    apply(&plain, &AgentSampling::ratio(Ratio::new(kept_share).expect("ratio")), 1);
    let half = pipeline();
    apply(&half, &AgentSampling::ratio(Ratio::new(0.5).expect("ratio")), 1);
    // Many short rounds, the three pipelines back to back in each (in turn first): the machine is
    // shared, and what disturbs a round disturbs its three runs alike. The cost is the median of
    // the rounds' losses; throughputs are the rounds' medians.
    const ROUNDS: usize = 21;
    let (mut plain_t, mut ruled_t, mut half_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cost, mut cost_half) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let run = |p: &Pipeline| throughput(p, &requests, Duration::from_millis(150));
        let (pl, ru, ha) = match round % 3 {
            0 => (run(&plain), run(&ruled), run(&half)),
            1 => {
                let ru = run(&ruled);
                let ha = run(&half);
                (run(&plain), ru, ha)
            }
            _ => {
                let ha = run(&half);
                let pl = run(&plain);
                (pl, run(&ruled), ha)
            }
        };
        cost.push((pl - ru) / pl * 100.0);
        cost_half.push((ha - ru) / ha * 100.0);
        plain_t.push(pl);
        ruled_t.push(ru);
        half_t.push(ha);
    }
    let rules_cost_pct = median(&mut cost);
    let spread = (cost[ROUNDS / 4], cost[ROUNDS * 3 / 4]);
    eprintln!(
        "throughput (medians of {ROUNDS} rounds): no rules at ratio {kept_share:.3} (the share the rules keep) {:.0} \
         spans/s, 20 rules {:.0} spans/s: {rules_cost_pct:.1}% less (quartiles of the rounds {:.1}% and {:.1}%); \
         no rules at ratio 0.5 {:.0} spans/s: {:.1}% less with the rules",
        median(&mut plain_t),
        median(&mut ruled_t),
        spread.0,
        spread.1,
        median(&mut half_t),
        median(&mut cost_half),
    );

    let achieved = budget_run(&requests);
    let error_pct = (achieved - BUDGET).abs() / BUDGET * 100.0;
    println!(
        "RESULT budget={BUDGET:.0} achieved={achieved:.0} error_pct={error_pct:.1} rules_cost_pct={rules_cost_pct:.1}"
    );
}
