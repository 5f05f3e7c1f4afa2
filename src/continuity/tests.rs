//! The join on synthetic probe sets: graph shapes, each broken case, late and repeated reports.

use super::*;
use crate::api::ContinuityState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tracelight_contract::probe::{ProbeSpan, Probes};
use tracelight_contract::sampling::SpanKind::{self, Client, Consumer, Producer, Server};

const ALL: u64 = 1 << 56;
const T0: i64 = 1_800_000_000;

/// A pod reporting probes.
struct Pod {
    uid: &'static str,
    workload: WorkloadKey,
    policy: &'static str,
    overrides: BTreeMap<String, String>,
    ip: Option<&'static str>,
}

fn pod(uid: &'static str, ns: &str, name: &str) -> Pod {
    Pod {
        uid,
        workload: WorkloadKey::new(ns, "Deployment", name),
        policy: "tracing",
        overrides: BTreeMap::new(),
        ip: None,
    }
}

fn span(trace: u128, id: u64, parent: u64, kind: SpanKind, peer: Option<&str>) -> ProbeSpan {
    ProbeSpan {
        trace_id: format!("{trace:032x}"),
        span_id: format!("{id:016x}"),
        parent_span_id: (parent != 0).then(|| format!("{parent:016x}")),
        kind: Some(kind),
        service: String::new(),
        remote_parent: (parent != 0).then_some(kind == Server || kind == Consumer),
        peer: peer.filter(|_| kind == Client).map(String::from),
        destination: peer.filter(|_| kind == Producer || kind == Consumer).map(String::from),
        start_unix_nano: 10_000_000_000,
        duration_nanos: 1_000_000,
        ..ProbeSpan::default()
    }
}

fn add(window: &mut ProbeWindow, pod: &Pod, spans: Vec<ProbeSpan>, at: i64) {
    add_under(window, pod, spans, ALL, at);
}

fn add_under(window: &mut ProbeWindow, pod: &Pod, mut spans: Vec<ProbeSpan>, threshold: u64, at: i64) {
    for s in &mut spans {
        s.service = pod.workload.name.clone();
    }
    let probes = Probes {
        threshold,
        spans,
        left_out: 0,
        propagator_overrides: pod.overrides.clone(),
        pod_ip: pod.ip.map(String::from),
    };
    window.add(pod.uid, pod.workload.clone(), Some(pod.policy), &probes, at);
}

fn inventory(workloads: &[&Pod], extra: &[(&str, &str)]) -> Inventory {
    let mut workloads: BTreeSet<WorkloadKey> = workloads.iter().map(|p| p.workload.clone()).collect();
    workloads.extend(extra.iter().map(|(ns, n)| WorkloadKey::new(ns, "Deployment", n)));
    Inventory {
        workloads,
        propagators: BTreeMap::from([
            ("tracing".into(), vec!["tracecontext".into(), "baggage".into()]),
            ("legacy".into(), vec!["b3".into()]),
        ]),
    }
}

/// Edges as `from -> to (kind) calls/broken`.
fn edges(graph: &Graph) -> Vec<String> {
    graph
        .edges
        .iter()
        .map(|((from, to, kind), e)| format!("{from} -> {to} ({}) {}/{}", kind.as_str(), e.calls, e.broken))
        .collect()
}

fn state(graph: &Graph, pod: &Pod) -> Option<ContinuityState> {
    workload_continuity(graph, &pod.workload).map(|c| c.state)
}

/// The shop: frontend -> inventory, frontend -> pricing -> tax over HTTP, frontend -> worker
/// through a queue; `n` requests, trace ids 1..=n.
fn shop(window: &mut ProbeWindow, n: u128, at: i64, pods: &[&Pod; 5]) {
    let [frontend, inventory, pricing, tax, worker] = pods;
    for t in 1..=n {
        let s = |i: u64| (t as u64) * 100 + i;
        add(
            window,
            frontend,
            vec![
                span(t, s(1), 0, Server, None),
                span(t, s(2), s(1), Client, Some("inventory:8080")),
                span(t, s(3), s(1), Client, Some("pricing.shop.svc.cluster.local:8070")),
                span(t, s(4), s(1), Producer, Some("celery")),
            ],
            at,
        );
        add(window, inventory, vec![span(t, s(5), s(2), Server, None)], at);
        add(
            window,
            pricing,
            vec![span(t, s(6), s(3), Server, None), span(t, s(7), s(6), Client, Some("tax:8090"))],
            at,
        );
        add(window, tax, vec![span(t, s(8), s(7), Server, None)], at);
        add(window, worker, vec![span(t, s(9), s(4), Consumer, Some("celery"))], at);
    }
}

fn shop_pods() -> [Pod; 5] {
    ["frontend", "inventory", "pricing", "tax", "worker"].map(|n| {
        let uid: &'static str = Box::leak(format!("{n}-uid").into_boxed_str());
        pod(uid, "shop", n)
    })
}

#[test]
fn the_shop_fans_out_over_http_and_a_queue_and_is_connected() {
    let pods = shop_pods();
    let refs = [&pods[0], &pods[1], &pods[2], &pods[3], &pods[4]];
    let mut w = ProbeWindow::default();
    shop(&mut w, 5, T0, &refs);
    let g = join(&w, &inventory(&refs, &[]), T0 + 600);
    assert_eq!(
        edges(&g),
        [
            "shop/frontend -> shop/inventory (request) 5/0",
            "shop/frontend -> shop/pricing (request) 5/0",
            "shop/frontend -> shop/worker (message) 5/0",
            "shop/pricing -> shop/tax (request) 5/0",
        ]
    );
    for p in &pods {
        assert_eq!(state(&g, p), Some(ContinuityState::Connected), "{}", p.workload);
    }
    let graph = service_graph(&g, &BTreeSet::from(["shop".to_string()])).unwrap();
    assert_eq!((graph.probe_traces, graph.edges.len()), (5, 4));
    assert!(service_graph(&g, &BTreeSet::from(["bank".to_string()])).is_none());
}

#[test]
fn a_container_propagator_override_breaks_exactly_its_edge_and_says_why() {
    let mut pods = shop_pods();
    pods[3].overrides.insert("api".into(), "b3".into());
    let [frontend, stock, pricing, tax, worker] = &pods;
    let mut w = ProbeWindow::default();
    // Tax reads b3 only: its server spans start traces of their own (ids 1000+).
    for t in 1..=4u128 {
        let s = |i: u64| (t as u64) * 100 + i;
        add(
            &mut w,
            frontend,
            vec![span(t, s(1), 0, Server, None), span(t, s(2), s(1), Client, Some("pricing:8070"))],
            T0,
        );
        add(
            &mut w,
            pricing,
            vec![span(t, s(6), s(2), Server, None), span(t, s(7), s(6), Client, Some("tax:8090"))],
            T0,
        );
        add(&mut w, tax, vec![span(1000 + t, s(8), 0, Server, None)], T0);
    }
    let inv = inventory(&[frontend, stock, pricing, tax, worker], &[]);
    let early = join(&w, &inv, T0 + 10);
    assert_eq!(early.unsettled, 4, "not judged before every agent could report");
    assert!(early.edges.values().all(|e| e.broken == 0));
    let g = join(&w, &inv, T0 + SETTLE_SECS);
    assert_eq!(edges(&g), ["shop/frontend -> shop/pricing (request) 4/0", "shop/pricing -> shop/tax (request) 4/4"]);
    let tax_edge = &g.edges[&(
        Node::Workload(Arc::new(pricing.workload.clone())),
        Node::Workload(Arc::new(tax.workload.clone())),
        EdgeKind::Request,
    )];
    assert_eq!(tax_edge.reason, Some(BreakReason::PropagatorOverride));
    let message = tax_edge.message.as_deref().unwrap();
    assert!(message.contains("shop/tax's container api sets OTEL_PROPAGATORS=b3"), "{message}");
    assert!(message.contains("shop/pricing sends tracecontext,baggage"), "{message}");
    let c = workload_continuity(&g, &tax.workload).unwrap();
    assert_eq!(c.state, ContinuityState::Broken);
    let broken = c.broken.unwrap();
    assert_eq!(broken.edge, "shop/pricing -> shop/tax");
    assert_eq!(broken.example_trace_id.len(), 32);
    assert_eq!(state(&g, pricing), Some(ContinuityState::Broken));
    assert_eq!(state(&g, frontend), Some(ContinuityState::Connected));
}

#[test]
fn policies_with_no_common_format_are_a_mismatch() {
    let a = pod("a", "shop", "web");
    let mut b = pod("b", "bank", "ledger");
    b.policy = "legacy";
    let mut w = ProbeWindow::default();
    add(&mut w, &a, vec![span(7, 1, 0, Server, None), span(7, 2, 1, Client, Some("ledger.bank:80"))], T0);
    add(&mut w, &b, vec![span(99, 3, 0, Server, None)], T0);
    let g = join(&w, &inventory(&[&a, &b], &[]), T0 + 100);
    let e = &g.edges[&(
        Node::Workload(Arc::new(a.workload.clone())),
        Node::Workload(Arc::new(b.workload.clone())),
        EdgeKind::Request,
    )];
    assert_eq!((e.broken, e.reason), (1, Some(BreakReason::PropagatorMismatch)));
    assert!(e.message.as_deref().unwrap().contains("bank/ledger reads b3"), "{:?}", e.message);
}

#[test]
fn a_callee_without_an_agent_and_a_dropped_context_are_told_apart() {
    let web = pod("w", "shop", "web");
    let api = pod("a", "shop", "api");
    let mut w = ProbeWindow::default();
    add(
        &mut w,
        &web,
        vec![
            span(1, 1, 0, Server, None),
            span(1, 2, 1, Client, Some("legacy:8080")),
            span(1, 3, 1, Client, Some("api:80")),
        ],
        T0,
    );
    add(&mut w, &api, vec![span(50, 4, 0, Server, None)], T0);
    let g = join(&w, &inventory(&[&web, &api], &[("shop", "legacy")]), T0 + 100);
    let reason = |to: &str| {
        g.edges[&(
            Node::Workload(Arc::new(web.workload.clone())),
            Node::Workload(Arc::new(WorkloadKey::new("shop", "Deployment", to))),
            EdgeKind::Request,
        )]
            .reason
    };
    assert_eq!(reason("legacy"), Some(BreakReason::CalleeNotInstrumented));
    assert_eq!(reason("api"), Some(BreakReason::ContextDropped));
    assert_eq!(state(&g, &web), Some(ContinuityState::Broken));
    let legacy = workload_continuity(&g, &WorkloadKey::new("shop", "Deployment", "legacy")).unwrap();
    assert_eq!(legacy.state, ContinuityState::Broken, "both ends of a broken edge say so");
}

#[test]
fn calls_out_of_the_cluster_databases_and_failed_calls_are_never_broken() {
    let web = pod("w", "shop", "web");
    let mut w = ProbeWindow::default();
    let mut db = span(1, 3, 1, Client, Some("postgres:5432"));
    db.db = true;
    let mut failed = span(1, 4, 1, Client, Some("web:80"));
    failed.error = true;
    add(
        &mut w,
        &web,
        vec![span(1, 1, 0, Server, None), span(1, 2, 1, Client, Some("api.stripe.com:443")), db, failed],
        T0,
    );
    let g = join(&w, &inventory(&[&web], &[]), T0 + 100);
    assert_eq!(edges(&g), ["shop/web -> api.stripe.com (request) 1/0", "shop/web -> postgres (database) 1/0"]);
    assert_eq!(state(&g, &web), Some(ContinuityState::Unknown), "one probe trace is not enough to say");
}

#[test]
fn retries_and_wrapped_client_spans_count_each_call_once() {
    let web = pod("w", "shop", "web");
    let api = pod("a", "shop", "api");
    let mut w = ProbeWindow::default();
    let mut first = span(1, 2, 1, Client, Some("api:80"));
    first.error = true; // connection refused: never reached the server
    add(
        &mut w,
        &web,
        vec![
            span(1, 1, 0, Server, None),
            first,
            span(1, 3, 1, Client, Some("api:80")),
            // requests -> urllib3: the outer span wraps the inner one.
            span(1, 4, 1, Client, Some("api:80")),
            span(1, 5, 4, Client, Some("api:80")),
        ],
        T0,
    );
    add(&mut w, &api, vec![span(1, 6, 3, Server, None), span(1, 7, 5, Server, None)], T0);
    let g = join(&w, &inventory(&[&web, &api], &[]), T0 + 100);
    assert_eq!(edges(&g), ["shop/web -> shop/api (request) 2/0"]);
}

#[test]
fn a_consumer_linked_to_its_producer_is_connected() {
    let web = pod("w", "shop", "web");
    let worker = pod("k", "shop", "worker");
    let mut w = ProbeWindow::default();
    add(&mut w, &web, vec![span(1, 1, 0, Server, None), span(1, 2, 1, Producer, Some("orders"))], T0);
    let mut consumer = span(2, 3, 0, Consumer, Some("orders"));
    consumer.link = Some(format!("{:032x}:{:016x}", 1, 2));
    add(&mut w, &worker, vec![consumer], T0);
    let g = join(&w, &inventory(&[&web, &worker], &[]), T0 + 100);
    assert_eq!(edges(&g), ["shop/web -> shop/worker (message) 1/0"]);
    // Without the link, the producer's message was not continued: the destination names the
    // consumer.
    let mut w = ProbeWindow::default();
    add(&mut w, &web, vec![span(1, 1, 0, Server, None), span(1, 2, 1, Producer, Some("orders"))], T0);
    add(&mut w, &worker, vec![span(2, 3, 0, Consumer, Some("orders"))], T0);
    let g = join(&w, &inventory(&[&web, &worker], &[]), T0 + 100);
    assert_eq!(edges(&g), ["shop/web -> shop/worker (message) 1/1"]);
}

#[test]
fn late_and_out_of_order_reports_and_reports_sent_twice() {
    let web = pod("w", "shop", "web");
    let api = pod("a", "shop", "api");
    let inv = inventory(&[&web, &api], &[]);
    let mut w = ProbeWindow::default();
    // The child first, the parent a report later.
    add(&mut w, &api, vec![span(1, 3, 2, Server, None)], T0);
    add(&mut w, &web, vec![span(1, 1, 0, Server, None), span(1, 2, 1, Client, Some("api:80"))], T0 + 30);
    // A parent whose child arrives 60 s later, still within the settle delay.
    add(&mut w, &web, vec![span(2, 4, 0, Server, None), span(2, 5, 4, Client, Some("api:80"))], T0 + 30);
    assert_eq!(join(&w, &inv, T0 + 60).unsettled, 1);
    add(&mut w, &api, vec![span(2, 6, 5, Server, None)], T0 + 90);
    // The same report twice.
    add(&mut w, &api, vec![span(2, 6, 5, Server, None)], T0 + 91);
    let g = join(&w, &inv, T0 + 300);
    assert_eq!(edges(&g), ["shop/web -> shop/api (request) 2/0"]);
    assert_eq!(g.workloads[&api.workload].probe_traces, 2);
}

#[test]
fn a_callee_whose_agent_lowered_its_threshold_is_not_expected_above_it() {
    let web = pod("w", "shop", "web");
    let api = pod("a", "shop", "api");
    let mut w = ProbeWindow::default();
    let high: u128 = 0x00ff_0000_0000_0000; // randomness above the callee's lowered threshold
    add(&mut w, &web, vec![span(high, 1, 0, Server, None), span(high, 2, 1, Client, Some("api:80"))], T0);
    add_under(&mut w, &api, vec![], 0x0010_0000_0000_0000, T0);
    let g = join(&w, &inventory(&[&web, &api], &[]), T0 + 100);
    assert_eq!(edges(&g), ["shop/web -> shop/api (request) 1/0"]);
}

#[test]
fn double_instrumentation_and_clock_skew_are_findings() {
    let web = pod("w", "shop", "web");
    let api = pod("a", "shop", "api");
    let mut w = ProbeWindow::default();
    let mut early = span(1, 3, 2, Server, None);
    early.start_unix_nano -= 2_000_000_000; // the server's clock is 2 s behind
    add(&mut w, &web, vec![span(1, 1, 0, Server, None), span(1, 2, 1, Client, Some("api:80"))], T0);
    // The agent's SDK and a second instrumentation both make a server span.
    add(&mut w, &api, vec![early, span(1, 4, 3, Server, None)], T0);
    let g = join(&w, &inventory(&[&web, &api], &[]), T0 + 100);
    let c = workload_continuity(&g, &api.workload).unwrap();
    assert!(c.findings.iter().any(|f| f.starts_with("double instrumentation")), "{:?}", c.findings);
    assert!(c.findings.iter().any(|f| f.contains("clock skew of at least 2000 ms")), "{:?}", c.findings);
}

#[test]
fn the_window_forgets_old_traces_and_stays_under_its_cap() {
    let web = pod("w", "shop", "web");
    let mut w = ProbeWindow::default();
    add(&mut w, &web, vec![span(1, 1, 0, Server, None)], T0);
    add(&mut w, &web, vec![span(2, 1, 0, Server, None)], T0 + window::WINDOW_SECS + 1);
    assert_eq!((w.len(), w.trace(1).is_none()), (1, true));
    let many: Vec<ProbeSpan> = (1..=2000u128).map(|t| span(t + 10, 1, 0, Server, None)).collect();
    for round in 0..110 {
        let spans = many.iter().cloned().map(|mut s| {
            s.span_id = format!("{:016x}", round + 1);
            s
        });
        add(&mut w, &web, spans.collect(), T0 + window::WINDOW_SECS + 2);
    }
    assert!(w.len() <= window::MAX_SPANS, "{}", w.len());
    // Malformed ids are refused, counted, and never crash the join.
    let mut bad = span(1, 1, 0, Server, None);
    bad.trace_id = "zz".into();
    add(&mut w, &web, vec![bad], T0 + window::WINDOW_SECS + 3);
    assert_eq!(w.rejected, 1);
}

#[test]
fn a_probe_span_in_the_window_stays_small() {
    // The window holds up to MAX_SPANS of them: its memory bound is this times the cap.
    assert!(std::mem::size_of::<window::Span>() <= 96, "{}", std::mem::size_of::<window::Span>());
}

/// A server span of `ledger` that started trace 99 for a request from `caller_ip`.
fn restarted_at_ledger(caller_ip: &str) -> ProbeSpan {
    ProbeSpan { caller: Some(caller_ip.into()), ..span(99, 3, 0, Server, None) }
}

#[test]
fn a_server_span_starting_a_trace_for_an_instrumented_caller_is_a_broken_edge() {
    // web's HTTP client makes no client span and sends no context: only its server span shows.
    let a = Pod { ip: Some("10.0.0.1"), ..pod("a", "shop", "web") };
    let b = Pod { ip: Some("10.0.0.2"), ..pod("b", "shop", "ledger") };
    let mut w = ProbeWindow::default();
    add(&mut w, &a, vec![span(7, 1, 0, Server, None)], T0);
    add(&mut w, &b, vec![restarted_at_ledger("10.0.0.1")], T0);
    let g = join(&w, &inventory(&[&a, &b], &[]), T0 + 1);
    assert_eq!(edges(&g), ["shop/web -> shop/ledger (request) 1/1"]);
    let e = g.edges.values().next().unwrap();
    assert_eq!((e.reason, e.example), (Some(BreakReason::ContextDropped), Some(99)));
    let message = e.message.as_deref().unwrap();
    assert!(message.contains("shop/ledger started a new trace at a request from shop/web (10.0.0.1)"), "{message}");
    assert_eq!(state(&g, &b), Some(ContinuityState::Broken));

    // The same with policies that share no format: the cause is the mismatch.
    let b = Pod { policy: "legacy", ..b };
    let mut w = ProbeWindow::default();
    add(&mut w, &a, vec![span(7, 1, 0, Server, None)], T0);
    add(&mut w, &b, vec![restarted_at_ledger("10.0.0.1")], T0);
    let g = join(&w, &inventory(&[&a, &b], &[]), T0 + 1);
    let e = g.edges.values().next().unwrap();
    assert_eq!((e.broken, e.reason), (1, Some(BreakReason::PropagatorMismatch)));
}

#[test]
fn a_new_trace_is_judged_only_when_its_caller_is_known_and_instrumented() {
    let web = Pod { ip: Some("10.0.0.1"), ..pod("a", "shop", "web") };
    let ledger = Pod { ip: Some("10.0.0.2"), ..pod("b", "shop", "ledger") };
    // An agent whose application sends no spans (a scraper in an injected namespace).
    let scraper = Pod { ip: Some("10.0.0.3"), ..pod("c", "monitoring", "prometheus") };
    // Two workloads' pods reported one address within the window (an IP reused).
    let old = Pod { ip: Some("10.0.0.4"), ..pod("d", "shop", "batch") };
    let new = Pod { ip: Some("10.0.0.4"), ..pod("e", "shop", "cron") };
    let mut w = ProbeWindow::default();
    add(&mut w, &web, vec![span(7, 1, 0, Server, None)], T0);
    add(&mut w, &scraper, vec![], T0);
    add(&mut w, &old, vec![span(8, 1, 0, Server, None)], T0);
    add(&mut w, &new, vec![span(9, 1, 0, Server, None)], T0);
    let spans = vec![
        ProbeSpan { caller: Some("10.0.0.3".into()), ..span(100, 3, 0, Server, None) },
        ProbeSpan { caller: Some("10.0.0.4".into()), ..span(101, 3, 0, Server, None) },
        // An address no reporting pod has: a caller outside the mesh of agents.
        ProbeSpan { caller: Some("192.0.2.1".into()), ..span(102, 3, 0, Server, None) },
        // The same workload calling itself is no edge.
        ProbeSpan { caller: Some("10.0.0.2".into()), ..span(103, 3, 0, Server, None) },
        // A server span that continued its trace was never broken.
        ProbeSpan { caller: Some("10.0.0.1".into()), ..span(7, 3, 2, Server, None) },
    ];
    add(&mut w, &ledger, spans, T0);
    let g = join(&w, &inventory(&[&web, &ledger, &scraper, &old, &new], &[]), T0 + 1);
    assert!(g.edges.values().all(|e| e.broken == 0), "{:?}", edges(&g));
    assert_eq!(g.workloads[&ledger.workload].new_traces, 4);
}
