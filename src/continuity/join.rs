//! The join: probe spans of every agent -> the service graph, its broken edges with their likely
//! cause, and per-workload findings (see the module docs of [`super`]).

use super::window::{PodInfo, ProbeWindow, Span};
use super::{BreakReason, EdgeKind, WorkloadKey, SETTLE_SECS};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tracelight_contract::sampling::SpanKind;

/// What the join knows besides the probes: the cluster's workloads (instrumented or not, so a
/// call to one without an agent can be named) and each policy's injected propagators.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub workloads: BTreeSet<WorkloadKey>,
    /// `spec.propagators` by policy name.
    pub propagators: BTreeMap<String, Vec<String>>,
}

/// An end of an edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Workload(Arc<WorkloadKey>),
    /// A host (or destination) that is no known workload.
    External(String),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Workload(w) => w.fmt(f),
            Node::External(host) => f.write_str(host),
        }
    }
}

impl Node {
    pub fn workload(&self) -> Option<&WorkloadKey> {
        match self {
            Node::Workload(w) => Some(w),
            Node::External(_) => None,
        }
    }
}

/// Calls along one edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edge {
    pub calls: u64,
    /// Calls the callee did not continue.
    pub broken: u64,
    pub reason: Option<BreakReason>,
    pub message: Option<String>,
    /// A probe trace with a broken call.
    pub example: Option<u128>,
    /// Largest clock skew seen between the two ends, in milliseconds.
    pub max_skew_ms: u64,
}

impl Edge {
    /// One more call the callee did not continue; the first one's cause and trace are kept.
    fn count_broken(&mut self, reason: BreakReason, message: String, trace: u128) {
        self.calls += 1;
        self.broken += 1;
        if self.reason.is_none() {
            self.reason = Some(reason);
            self.message = Some(message);
            self.example = Some(trace);
        }
    }
}

/// What the probes say about one workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFacts {
    /// Probe traces with one of its spans.
    pub probe_traces: u32,
    /// Server or consumer spans of it that started a trace.
    pub new_traces: u32,
    /// A probe trace where one request made two server spans in one of its pods.
    pub double_instrumented: Option<u128>,
}

/// The join's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    pub edges: BTreeMap<(Node, Node, EdgeKind), Edge>,
    pub workloads: BTreeMap<Arc<WorkloadKey>, WorkloadFacts>,
    /// Probe traces per namespace (a trace through two namespaces counts in both).
    pub namespace_traces: BTreeMap<String, u32>,
    /// Calls without a child not judged yet (younger than [`SETTLE_SECS`]).
    pub unsettled: u64,
}

/// A call without a child, judged once every trace has been read.
struct Orphan<'w> {
    trace: u128,
    span: &'w Span,
}

/// A server span that started a trace for a request from another instrumented pod (named by the
/// address the request came from), judged once every trace has been read.
struct Restart<'w> {
    trace: u128,
    span: &'w Span,
    caller: &'w Arc<PodInfo>,
}

/// The randomness of a trace id (its low 56 bits).
pub fn randomness(trace: u128) -> u64 {
    (trace as u64) & ((1 << 56) - 1)
}

fn edge_kind(span: &Span) -> EdgeKind {
    match span.kind {
        Some(SpanKind::Producer | SpanKind::Consumer) => EdgeKind::Message,
        _ if span.db => EdgeKind::Database,
        _ => EdgeKind::Request,
    }
}

fn is_caller(span: &Span) -> bool {
    matches!(span.kind, Some(SpanKind::Client | SpanKind::Producer))
}

fn is_callee(span: &Span) -> bool {
    matches!(span.kind, Some(SpanKind::Server | SpanKind::Consumer))
}

/// Assembles the graph from the window at `now` (Unix seconds).
pub fn join(window: &ProbeWindow, inventory: &Inventory, now: i64) -> Graph {
    let mut j = Join {
        graph: Graph::default(),
        learned: HashMap::new(),
        consumers: HashMap::new(),
        linked: HashSet::new(),
        pods_by_ip: pods_by_ip(window, now),
        restarts: Vec::new(),
    };
    let mut orphans = Vec::new();
    for (&trace, spans) in &window.traces {
        j.trace(window, trace, spans, &mut orphans);
    }
    let reporting: HashSet<&WorkloadKey> = window.pods(now).map(|p| &*p.workload).collect();
    let names = Names::new(window, inventory, now);
    for orphan in orphans {
        j.judge(&orphan, window, inventory, &reporting, &names, now);
    }
    for restart in std::mem::take(&mut j.restarts) {
        j.judge_restart(&restart, inventory);
    }
    j.graph
}

/// The reporting pods by IP; an IP two workloads' pods reported (an address reused within the
/// window) names neither.
fn pods_by_ip(window: &ProbeWindow, now: i64) -> HashMap<&str, Option<&Arc<PodInfo>>> {
    let mut by_ip: HashMap<&str, Option<&Arc<PodInfo>>> = HashMap::new();
    for pod in window.pods(now) {
        let Some(ip) = pod.ip.as_deref() else { continue };
        by_ip
            .entry(ip)
            .and_modify(|seen| {
                if seen.is_some_and(|p| p.workload != pod.workload) {
                    *seen = None;
                }
            })
            .or_insert(Some(pod));
    }
    by_ip
}

struct Join<'w> {
    graph: Graph,
    /// (caller's namespace, peer) -> the workload that served it in a connected call.
    learned: HashMap<(&'w str, &'w str), &'w Arc<WorkloadKey>>,
    /// Destination -> the workloads consuming it.
    consumers: HashMap<&'w str, BTreeSet<&'w Arc<WorkloadKey>>>,
    /// Producer spans a consumer links to (`trace`, `span`): connected, not orphans.
    linked: HashSet<(u128, u64)>,
    /// The reporting pods by IP (see [`pods_by_ip`]).
    pods_by_ip: HashMap<&'w str, Option<&'w Arc<PodInfo>>>,
    /// Server spans that started a trace for an instrumented caller.
    restarts: Vec<Restart<'w>>,
}

impl<'w> Join<'w> {
    fn facts(&mut self, w: &Arc<WorkloadKey>) -> &mut WorkloadFacts {
        self.graph.workloads.entry(w.clone()).or_default()
    }

    fn edge(&mut self, from: &Arc<WorkloadKey>, to: Node, kind: EdgeKind) -> &mut Edge {
        self.graph.edges.entry((Node::Workload(from.clone()), to, kind)).or_default()
    }

    fn trace(&mut self, window: &'w ProbeWindow, trace: u128, spans: &'w [Span], orphans: &mut Vec<Orphan<'w>>) {
        let mut workloads: Vec<&Arc<WorkloadKey>> = spans.iter().map(|s| &s.pod.workload).collect();
        workloads.sort();
        workloads.dedup();
        let mut namespaces: Vec<&str> = workloads.iter().map(|w| w.namespace.as_str()).collect();
        namespaces.dedup();
        for w in workloads {
            self.facts(w).probe_traces += 1;
        }
        for ns in namespaces {
            *self.graph.namespace_traces.entry(ns.to_string()).or_default() += 1;
        }
        for span in spans {
            if is_caller(span) {
                self.caller(trace, span, spans, orphans);
            } else if is_callee(span) {
                self.callee(window, trace, span, spans);
            }
        }
    }

    fn caller(&mut self, trace: u128, span: &'w Span, spans: &'w [Span], orphans: &mut Vec<Orphan<'w>>) {
        let from = &span.pod.workload;
        if span.db {
            let to = Node::External(span.peer.as_deref().map_or("database", host_of).to_string());
            self.edge(from, to, EdgeKind::Database).calls += 1;
            return;
        }
        let kids: Vec<&'w Span> = spans.iter().filter(|k| k.parent == span.id && k.id != span.id).collect();
        let served: Vec<&'w Span> = kids.iter().copied().filter(|k| is_callee(k)).collect();
        if served.is_empty() {
            // A client span around another of the same pod is judged through the inner one.
            if kids.iter().any(|k| is_caller(k) && Arc::ptr_eq(&k.pod, &span.pod)) {
                return;
            }
            if kids.is_empty() {
                orphans.push(Orphan { trace, span });
            }
            return;
        }
        for (i, kid) in served.iter().enumerate() {
            let to = &kid.pod.workload;
            let skew = skew_ms(span, kid);
            let edge = self.edge(from, Node::Workload(to.clone()), edge_kind(span));
            edge.calls += 1;
            if !Arc::ptr_eq(&span.pod, &kid.pod) {
                edge.max_skew_ms = edge.max_skew_ms.max(skew);
            }
            if let Some(peer) = span.peer.as_deref() {
                self.learned.insert((from.namespace.as_str(), peer), to);
            }
            // Two server spans of one pod for one call: the request was traced twice.
            if kind_is(kid, SpanKind::Server) && served[..i].iter().any(|o| Arc::ptr_eq(&o.pod, &kid.pod)) {
                self.facts(to).double_instrumented.get_or_insert(trace);
            }
        }
    }

    fn callee(&mut self, window: &'w ProbeWindow, trace: u128, span: &'w Span, spans: &'w [Span]) {
        let me = &span.pod.workload;
        if let (Some(SpanKind::Consumer), Some(dest)) = (span.kind, span.peer.as_deref()) {
            self.consumers.entry(dest).or_default().insert(me);
        }
        if span.parent == 0 {
            // A consumer that links to its producer instead of taking it as parent.
            if let Some(&(t, s)) = span.link.as_deref() {
                if let Some(producer) = window.trace(t).and_then(|spans| spans.iter().find(|p| p.id == s)) {
                    if is_caller(producer) {
                        self.linked.insert((t, s));
                        let from = producer.pod.workload.clone();
                        self.edge(&from, Node::Workload(me.clone()), EdgeKind::Message).calls += 1;
                        return;
                    }
                }
            }
            self.facts(me).new_traces += 1;
            // A server span's peer is the address its request came from.
            let from_ip = span.peer.as_deref().filter(|_| kind_is(span, SpanKind::Server));
            let caller = from_ip.and_then(|ip| self.pods_by_ip.get(ip).copied().flatten());
            if let Some(caller) = caller.filter(|c| c.workload != *me) {
                self.restarts.push(Restart { trace, span, caller });
            }
            return;
        }
        let parent = spans.iter().find(|p| p.id == span.parent);
        if let Some(parent) = parent {
            if kind_is(span, SpanKind::Server)
                && kind_is(parent, SpanKind::Server)
                && Arc::ptr_eq(&parent.pod, &span.pod)
            {
                self.facts(me).double_instrumented.get_or_insert(trace);
            }
        }
    }

    fn judge(
        &mut self,
        orphan: &Orphan<'w>,
        window: &ProbeWindow,
        inventory: &Inventory,
        reporting: &HashSet<&WorkloadKey>,
        names: &Names,
        now: i64,
    ) {
        let span = orphan.span;
        if span.error || self.linked.contains(&(orphan.trace, span.id)) {
            return;
        }
        if now - span.received < SETTLE_SECS {
            self.graph.unsettled += 1;
            return;
        }
        let from = &span.pod.workload;
        let kind = edge_kind(span);
        let Some(callee) = self.callee_of(span, names) else {
            // A host that is no workload: an edge out of the cluster, nothing to continue.
            let to = span.peer.as_deref().map_or("unknown", host_of).to_string();
            self.edge(from, Node::External(to), kind).calls += 1;
            return;
        };
        let (reason, message) = if !reporting.contains(&*callee) {
            let m = format!("{callee} has no reporting agent: it cannot continue the trace");
            (BreakReason::CalleeNotInstrumented, m)
        } else {
            // Expected only if every agent of the callee kept this trace.
            let covered = window.workload_threshold(&callee, now).is_some_and(|t| randomness(orphan.trace) < t);
            if !covered {
                self.edge(from, Node::Workload(callee), kind).calls += 1;
                return;
            }
            let caller_pod = &span.pod;
            let callee_pod = window.pods(now).find(|p| p.workload == callee).cloned();
            let new_traces = self.graph.workloads.get(&callee).map_or(0, |f| f.new_traces);
            cause(caller_pod, callee_pod.as_deref(), &callee, inventory, new_traces)
        };
        self.edge(from, Node::Workload(callee.clone()), kind).count_broken(reason, message, orphan.trace);
        self.facts(&callee);
    }

    /// A server span that started a new trace although the request came from a pod whose
    /// application sends spans: a broken call on the edge caller -> callee, whether or not the
    /// caller's own client span is among the probes (its trace id is another one, and a client
    /// library the instrumentation does not cover makes no client span at all).
    fn judge_restart(&mut self, restart: &Restart<'w>, inventory: &Inventory) {
        let (span, caller) = (restart.span, restart.caller);
        // An agent that reports no spans (a pod whose application is not instrumented, such as
        // a scraper in an injected namespace) sends requests without context by design.
        if self.graph.workloads.get(&caller.workload).is_none_or(|f| f.probe_traces == 0) {
            return;
        }
        let callee = &span.pod.workload;
        let new_traces = self.graph.workloads.get(callee).map_or(0, |f| f.new_traces);
        let (reason, message) = match cause(caller, Some(&span.pod), callee, inventory, new_traces) {
            (BreakReason::ContextDropped, _) => (
                BreakReason::ContextDropped,
                format!(
                    "{callee} started a new trace at a request from {} ({}), whose application is \
                     instrumented: its client sent no context {callee} reads (a client library the \
                     instrumentation does not cover, or a proxy in between that drops the headers)",
                    caller.workload,
                    caller.ip.as_deref().unwrap_or_default()
                ),
            ),
            other => other,
        };
        let edge = self.edge(&caller.workload, Node::Workload(callee.clone()), EdgeKind::Request);
        edge.count_broken(reason, message, restart.trace);
    }

    /// The workload a call was meant for, if the join can tell.
    fn callee_of(&self, span: &Span, names: &Names) -> Option<Arc<WorkloadKey>> {
        let from = &span.pod.workload;
        let peer = span.peer.as_deref()?;
        if kind_is(span, SpanKind::Producer) {
            let consumers = self.consumers.get(peer)?;
            // The consumers of the caller's namespace first, then any.
            let pick = consumers.iter().find(|w| w.namespace == from.namespace).or_else(|| consumers.iter().next());
            return pick.map(|w| (*w).clone());
        }
        if let Some(w) = self.learned.get(&(from.namespace.as_str(), peer)) {
            return Some((*w).clone());
        }
        names.resolve(&from.namespace, host_of(peer))
    }
}

fn kind_is(span: &Span, kind: SpanKind) -> bool {
    span.kind == Some(kind)
}

/// How far apart the two ends' clocks must be at least, in milliseconds: a server span cannot
/// start before its client span nor end after it; a consumer cannot start before its producer.
fn skew_ms(caller: &Span, callee: &Span) -> u64 {
    let early = caller.start.saturating_sub(callee.start);
    let late = if kind_is(caller, SpanKind::Client) {
        (callee.start + callee.duration).saturating_sub(caller.start + caller.duration)
    } else {
        0
    };
    early.max(late) / 1_000_000
}

/// `host` of `host:port` (an IPv6 literal keeps its colons).
fn host_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') => host,
        _ => peer,
    }
}

/// Workloads by name, to resolve a host to one.
struct Names {
    /// (namespace, workload name or `service.name`) -> the workload.
    by_name: HashMap<(String, String), Arc<WorkloadKey>>,
    namespaces: HashSet<String>,
}

impl Names {
    fn new(window: &ProbeWindow, inventory: &Inventory, now: i64) -> Names {
        let mut by_name = HashMap::new();
        for w in &inventory.workloads {
            by_name.insert((w.namespace.clone(), w.name.clone()), Arc::new(w.clone()));
        }
        for p in window.pods(now) {
            by_name
                .entry((p.workload.namespace.clone(), p.workload.name.clone()))
                .or_insert_with(|| p.workload.clone());
        }
        let mut names = Names { namespaces: by_name.keys().map(|(ns, _)| ns.clone()).collect(), by_name };
        // A service whose `service.name` differs from its workload's name.
        let mut services = Vec::new();
        for spans in window.traces.values() {
            for s in spans.iter().filter(|s| is_callee(s)) {
                services.push(((s.pod.workload.namespace.clone(), s.service.to_string()), s.pod.workload.clone()));
            }
        }
        for (key, w) in services {
            names.by_name.entry(key).or_insert(w);
        }
        names
    }

    /// `name`, `name.namespace`, `name.namespace.svc...`: the workload of that name, in the
    /// caller's namespace for a bare name. An IP address names nothing.
    fn resolve(&self, caller_ns: &str, host: &str) -> Option<Arc<WorkloadKey>> {
        if host.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        let mut labels = host.split('.');
        let name = labels.next()?;
        let ns = labels.next().filter(|ns| self.namespaces.contains(*ns)).unwrap_or(caller_ns);
        self.by_name.get(&(ns.to_string(), name.to_string())).cloned()
    }
}

/// The context formats of a propagators list (`baggage` and `none` carry no context; the two B3
/// encodings are read by every B3 propagator).
fn formats(list: &str) -> BTreeSet<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "baggage" && *p != "none")
        .map(|p| if p == "b3multi" { "b3" } else { p })
        .collect()
}

/// The propagators a pod's application uses: a container's own `OTEL_PROPAGATORS` when one sets
/// it (with the container's name), else its policy's.
fn effective(pod: &PodInfo, inventory: &Inventory) -> (String, Option<String>) {
    if let Some((container, value)) = pod.overrides.iter().next() {
        return (value.clone(), Some(container.clone()));
    }
    let policy = pod.policy.as_deref().and_then(|p| inventory.propagators.get(p));
    (policy.map(|p| p.join(",")).unwrap_or_else(|| "tracecontext,baggage".into()), None)
}

/// The likely cause of a call `callee` did not continue.
fn cause(
    caller: &PodInfo,
    callee_pod: Option<&PodInfo>,
    callee: &WorkloadKey,
    inventory: &Inventory,
    new_traces: u32,
) -> (BreakReason, String) {
    let from = &caller.workload;
    let (sends, caller_container) = effective(caller, inventory);
    let Some(callee_pod) = callee_pod else {
        return (BreakReason::ContextDropped, format!("{callee} did not continue the trace {from} sent"));
    };
    let (reads, callee_container) = effective(callee_pod, inventory);
    let unreadable =
        [&caller_container, &callee_container].iter().zip([&sends, &reads]).any(|(c, v)| c.is_some() && v.is_empty());
    if !unreadable && formats(&sends).is_disjoint(&formats(&reads)) {
        let side = |w: &WorkloadKey, container: &Option<String>, value: &str, verb: &str| match container {
            Some(c) => format!("{w}'s container {c} sets OTEL_PROPAGATORS={value} itself and {verb} {value}"),
            None => format!("{w} {verb} {value}"),
        };
        let message = format!(
            "{}; {}: no context format in common",
            side(from, &caller_container, &sends, "sends"),
            side(callee, &callee_container, &reads, "reads")
        );
        let reason = if caller_container.is_some() || callee_container.is_some() {
            BreakReason::PropagatorOverride
        } else {
            BreakReason::PropagatorMismatch
        };
        return (reason, message);
    }
    let message = format!(
        "{from} sends {sends} and {callee} reads {reads}, yet {callee} did not continue the trace \
         ({new_traces} traces started at its server spans): a proxy in between drops the headers, \
         or its framework is not instrumented"
    );
    (BreakReason::ContextDropped, message)
}
