//! The probe spans of the last [`WINDOW_SECS`], from every agent's reports, bounded by
//! [`MAX_SPANS`]: what [`super::join()`] reads. Adding is cheap (the report's spans are parsed and
//! filed under their trace); everything derived is left to the join.
//!
//! Deduplicated by span id within a trace, so an agent that reports the same spans twice (a push
//! retried after a lost answer, a report forwarded by another replica) counts once.

use super::WorkloadKey;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tracelight_contract::probe::{ProbeSpan, Probes};
use tracelight_contract::sampling::SpanKind;

/// How long probe spans are kept (by the time the operator received them).
pub const WINDOW_SECS: i64 = 10 * 60;
/// Most probe spans kept; the oldest traces go first beyond it. At ~100 bytes a span (plus its
/// trace's entry), some 20 MiB at most.
pub const MAX_SPANS: usize = 200_000;
/// Most thresholds remembered per pod (one per report: 20 in a window at the default interval).
const MAX_THRESHOLDS: usize = 32;

/// Who sent a span: the pod's workload and what its spans' context is propagated with.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PodInfo {
    pub uid: Box<str>,
    /// Shared with the graph's edges and entries (one allocation per workload, not per edge).
    pub workload: Arc<WorkloadKey>,
    /// The policy whose config the agent runs (its `propagators` are the injected ones).
    pub policy: Option<Box<str>>,
    /// Containers that set `OTEL_PROPAGATORS` themselves, with the value.
    pub overrides: BTreeMap<String, String>,
    /// The pod's IP, as its agent reported it (none in a `hostNetwork` pod).
    pub ip: Option<Box<str>>,
}

/// One probe span, compact.
#[derive(Debug, Clone)]
pub struct Span {
    pub id: u64,
    /// 0 for a root.
    pub parent: u64,
    pub kind: Option<SpanKind>,
    pub remote_parent: Option<bool>,
    pub db: bool,
    pub error: bool,
    pub start: u64,
    pub duration: u64,
    /// Seconds (Unix) the operator received it.
    pub received: i64,
    pub pod: Arc<PodInfo>,
    pub service: Arc<str>,
    /// The other side: the peer of a client span, the destination of a producer or consumer,
    /// the address a server span's request came from.
    pub peer: Option<Arc<str>>,
    /// The first link (`trace`, `span`).
    pub link: Option<Box<(u128, u64)>>,
}

/// What a pod's reports said lately.
#[derive(Debug)]
struct PodState {
    info: Arc<PodInfo>,
    /// (received, threshold) of its recent reports, oldest first.
    thresholds: VecDeque<(i64, u64)>,
}

#[derive(Debug, Default)]
pub struct ProbeWindow {
    pub(super) traces: HashMap<u128, Vec<Span>>,
    /// Traces by the time their first span arrived (eviction order).
    order: VecDeque<(i64, u128)>,
    pods: HashMap<Box<str>, PodState>,
    names: HashSet<Arc<str>>,
    spans: usize,
    /// Spans refused: malformed ids, or beyond the cap.
    pub rejected: u64,
}

impl ProbeWindow {
    /// Files `probes` from the pod `uid` of `workload`, received at `now` (Unix seconds).
    pub fn add(&mut self, uid: &str, workload: WorkloadKey, policy: Option<&str>, probes: &Probes, now: i64) {
        self.expire(now);
        let info = self.pod(uid, workload, policy, probes, now);
        for span in &probes.spans {
            match self.span(span, &info, now) {
                Some((trace, s)) => self.insert(trace, s, now),
                None => self.rejected += 1,
            }
        }
        while self.spans > MAX_SPANS {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    fn pod(
        &mut self,
        uid: &str,
        workload: WorkloadKey,
        policy: Option<&str>,
        probes: &Probes,
        now: i64,
    ) -> Arc<PodInfo> {
        let workload = match self.pods.get(uid) {
            Some(p) if *p.info.workload == workload => p.info.workload.clone(),
            _ => Arc::new(workload),
        };
        let info = PodInfo {
            uid: uid.into(),
            workload,
            policy: policy.map(Into::into),
            overrides: probes.propagator_overrides.iter().take(16).map(|(k, v)| (bounded(k), bounded(v))).collect(),
            ip: probes.pod_ip.as_deref().map(|ip| bounded(ip).into()),
        };
        let state = match self.pods.get_mut(uid) {
            Some(state) => {
                if *state.info != info {
                    state.info = Arc::new(info);
                }
                state
            }
            None => {
                self.pods.entry(uid.into()).or_insert(PodState { info: Arc::new(info), thresholds: VecDeque::new() })
            }
        };
        state.thresholds.push_back((now, probes.threshold));
        while state.thresholds.len() > MAX_THRESHOLDS {
            state.thresholds.pop_front();
        }
        state.info.clone()
    }

    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        // Names are shared, not owned: forgetting them all only costs the sharing.
        if self.names.len() > 50_000 {
            self.names.clear();
        }
        let n: Arc<str> = Arc::from(tracelight_contract::probe::bounded_name(name));
        self.names.insert(n.clone());
        n
    }

    fn span(&mut self, s: &ProbeSpan, pod: &Arc<PodInfo>, now: i64) -> Option<(u128, Span)> {
        let trace = parse_u128(&s.trace_id).filter(|t| *t != 0)?;
        let id = parse_u64(&s.span_id).filter(|id| *id != 0)?;
        let parent = match &s.parent_span_id {
            Some(p) => parse_u64(p)?,
            None => 0,
        };
        let link = s.link.as_deref().and_then(|l| {
            let (t, s) = l.split_once(':')?;
            Some(Box::new((parse_u128(t)?, parse_u64(s)?)))
        });
        let peer = match s.kind {
            Some(SpanKind::Server) => s.caller.as_deref(),
            _ => s.peer.as_deref().or(s.destination.as_deref()),
        };
        let peer = peer.map(|p| self.name(p));
        Some((
            trace,
            Span {
                id,
                parent,
                kind: s.kind,
                remote_parent: s.remote_parent,
                db: s.db,
                error: s.error,
                start: s.start_unix_nano,
                duration: s.duration_nanos,
                received: now,
                pod: pod.clone(),
                service: self.name(&s.service),
                peer,
                link,
            },
        ))
    }

    fn insert(&mut self, trace: u128, span: Span, now: i64) {
        let spans = self.traces.entry(trace).or_insert_with(|| {
            self.order.push_back((now, trace));
            Vec::new()
        });
        // The same span again (a report sent twice): once is enough.
        if spans.iter().any(|s| s.id == span.id) {
            return;
        }
        spans.push(span);
        self.spans += 1;
    }

    /// Forgets traces first seen before the window, and pods that stopped reporting.
    pub fn expire(&mut self, now: i64) {
        while self.order.front().is_some_and(|(at, _)| *at < now - WINDOW_SECS) {
            self.evict_oldest();
        }
        if self.pods.len() > 1024 && self.pods.len().is_power_of_two() {
            self.pods.retain(|_, p| p.thresholds.back().is_some_and(|(at, _)| *at >= now - WINDOW_SECS));
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, trace)) = self.order.pop_front() else { return false };
        if let Some(spans) = self.traces.remove(&trace) {
            self.spans -= spans.len();
        }
        true
    }

    /// Probe spans held.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The lowest threshold any pod of `workload` reported within the window: a trace whose
    /// randomness is below it has all that workload's spans here. `None`: no pod reported.
    pub fn workload_threshold(&self, workload: &WorkloadKey, now: i64) -> Option<u64> {
        self.pods
            .values()
            .filter(|p| *p.info.workload == *workload)
            .flat_map(|p| p.thresholds.iter().filter(|(at, _)| *at >= now - WINDOW_SECS).map(|(_, t)| *t))
            .min()
    }

    /// Every pod that reported within the window.
    pub fn pods(&self, now: i64) -> impl Iterator<Item = &Arc<PodInfo>> + '_ {
        self.pods
            .values()
            .filter(move |p| p.thresholds.back().is_some_and(|(at, _)| *at >= now - WINDOW_SECS))
            .map(|p| &p.info)
    }

    /// The spans of `trace`.
    pub fn trace(&self, trace: u128) -> Option<&[Span]> {
        self.traces.get(&trace).map(Vec::as_slice)
    }
}

fn bounded(s: &str) -> String {
    tracelight_contract::probe::bounded_name(s).to_string()
}

fn parse_u128(hex: &str) -> Option<u128> {
    (hex.len() == 32).then(|| u128::from_str_radix(hex, 16).ok()).flatten()
}

fn parse_u64(hex: &str) -> Option<u64> {
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}
