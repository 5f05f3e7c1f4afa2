//! The operator's side of probe traces at scale (`make bench-join`): 10,000 agents (2,000
//! workloads of 5 pods in 100 namespaces) report the probe spans of 28,000 traces — four
//! services each, two of them called by the first, one calling the fourth; one call in a
//! hundred goes to a service that does not continue the trace — into the report store's window
//! (196,000 spans, near the window's cap of 200,000), then the join runs over all of it.
//!
//! The reports arrive in rounds of 500 traces, as agents send them over a window's worth of
//! intervals, so the input never holds more than a round. Prints, as the last line,
//! `RESULT agents=<n> join_ms=<CPU ms of the join> join_rss_mib=<peak resident growth of the
//! process over filing and join, MiB> ingest_ms=<CPU ms of filing the reports> spans=<held>
//! edges=<n> broken=<n>`. CPU from `/proc/self/stat` (10 ms ticks), memory from
//! `/proc/self/status` (VmHWM against VmRSS at start).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;
use tracelight::continuity::{join, Inventory, ProbeWindow, WorkloadKey};
use tracelight_contract::probe::{ProbeSpan, Probes};
use tracelight_contract::sampling::SpanKind;

const NAMESPACES: usize = 100;
const WORKLOADS_PER_NAMESPACE: usize = 20;
const PODS_PER_WORKLOAD: usize = 5;
const TRACES: usize = 28_000;
const ROUND: usize = 500;
const NOW: i64 = 1_800_000_000;

fn workload(ns: usize, w: usize) -> WorkloadKey {
    WorkloadKey::new(&format!("ns-{ns}"), "Deployment", &format!("svc-{w}"))
}

fn span(trace: u128, id: u64, parent: u64, kind: SpanKind, service: &str, peer: Option<String>) -> ProbeSpan {
    ProbeSpan {
        trace_id: format!("{trace:032x}"),
        span_id: format!("{id:016x}"),
        parent_span_id: (parent != 0).then(|| format!("{parent:016x}")),
        kind: Some(kind),
        service: service.to_string(),
        remote_parent: Some(parent != 0 && kind == SpanKind::Server),
        peer,
        start_unix_nano: 1_700_000_000_000_000_000 + u64::try_from(trace % 1_000_000).unwrap_or(0) * 1000,
        duration_nanos: 2_000_000,
        ..ProbeSpan::default()
    }
}

/// The spans of trace `t`, by (namespace, workload, pod).
fn trace_spans(t: usize, out: &mut HashMap<(usize, usize, usize), Vec<ProbeSpan>>) {
    let mut rng = fastrand::Rng::with_seed(t as u64);
    let trace = rng.u128(1..) & !((1u128 << 56) - 1) | (t as u128); // low randomness: a probe
    let ns = t % NAMESPACES;
    // A random entry service; each service calls the same three others in every trace (three
    // callees per workload, as in a service graph, not a random graph).
    let entry = rng.usize(..WORKLOADS_PER_NAMESPACE);
    let chain = [entry, entry + 1, entry + 2, entry + 4].map(|w| w % WORKLOADS_PER_NAMESPACE);
    let pods: [(usize, usize, usize); 4] = std::array::from_fn(|i| (ns, chain[i], rng.usize(..PODS_PER_WORKLOAD)));
    let id = |n: u64| (t as u64) << 8 | n;
    let name = |i: usize| format!("svc-{}", chain[i]);
    let mut push = |i: usize, s: ProbeSpan| out.entry(pods[i]).or_default().push(s);
    push(0, span(trace, id(1), 0, SpanKind::Server, &name(0), None));
    // The first service calls the second and third; the second calls the fourth.
    for (i, caller, client, server) in [(1, 0, 2, 3), (2, 0, 4, 5), (3, 1, 6, 7)] {
        let parent = if caller == 0 { id(1) } else { id(3) };
        push(
            caller,
            span(trace, id(client), parent, SpanKind::Client, &name(caller), Some(format!("{}:8080", name(i)))),
        );
        // One call in a hundred is not continued: the callee starts a trace of its own.
        if t % 100 == 7 && i == 3 {
            push(i, span(trace ^ (1 << 100), id(server), 0, SpanKind::Server, &name(i), None));
        } else {
            push(i, span(trace, id(server), id(client), SpanKind::Server, &name(i), None));
        }
    }
}

/// utime + stime of this process, in milliseconds.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // After the command: field 3 (state), 4, ...; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (field(14) + field(15)) * 10
}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo test --all-targets` runs benches once without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rss_start = status_kib("VmRSS:");
    let wall = Instant::now();
    let cpu_start = cpu_ms();
    let mut window = ProbeWindow::default();
    let mut agents: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    for round in 0..TRACES / ROUND {
        let mut reports: HashMap<(usize, usize, usize), Vec<ProbeSpan>> = HashMap::new();
        for t in round * ROUND..(round + 1) * ROUND {
            trace_spans(t, &mut reports);
        }
        // Rounds spread over the window, the last one settled.
        let at = NOW - 500 + (round as i64) * 400 / (TRACES / ROUND) as i64;
        for ((ns, w, p), spans) in reports {
            agents.insert((ns, w, p));
            let probes = Probes { threshold: 1 << 56, spans, ..Default::default() };
            window.add(&format!("uid-{ns}-{w}-{p}"), workload(ns, w), Some("tracing"), &probes, at);
        }
    }
    let cpu_filed = cpu_ms();
    let rss_filed = status_kib("VmRSS:");
    let inventory = Inventory {
        workloads: (0..NAMESPACES).flat_map(|ns| (0..WORKLOADS_PER_NAMESPACE).map(move |w| workload(ns, w))).collect(),
        propagators: [("tracing".to_string(), vec!["tracecontext".to_string()])].into(),
    };
    let graph = join(&window, &inventory, NOW);
    let cpu_joined = cpu_ms();
    let peak = status_kib("VmHWM:");
    let broken: u64 = graph.edges.values().map(|e| e.broken).sum();
    eprintln!(
        "{} agents reported {} spans ({} held); {} edges, {} broken calls; wall {:.0} ms; RSS MiB: {:.1} at start, {:.1} filed, {:.1} peak",
        agents.len(),
        TRACES * 7,
        window.len(),
        graph.edges.len(),
        broken,
        wall.elapsed().as_secs_f64() * 1000.0,
        rss_start as f64 / 1024.0,
        rss_filed as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "RESULT agents={} join_ms={} join_rss_mib={:.1} ingest_ms={} spans={} edges={} broken={}",
        agents.len(),
        cpu_joined - cpu_filed,
        (peak.saturating_sub(rss_start)) as f64 / 1024.0,
        cpu_filed - cpu_start,
        window.len(),
        graph.edges.len(),
        broken
    );
}
