//! The probe spans waiting for the next report (see `tracelight_contract::probe`): at most
//! [`MAX_PROBE_SPANS`] per report, kept consistent under the cap by lowering this interval's
//! threshold (the traces of lowest randomness stay, whole), and handed to the report pusher,
//! which gives them back when a push fails.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tracelight_contract::probe::{
    trace_randomness, ProbeSpan, Probes, HOST_NETWORK_ENV, MAX_PROBE_SPANS, POD_IP_ENV, PROPAGATOR_OVERRIDES_ENV,
};

#[derive(Default)]
pub struct ProbeBuffer {
    state: Mutex<State>,
    /// Application containers that set `OTEL_PROPAGATORS` themselves (from the injector).
    overrides: BTreeMap<String, String>,
    /// The pod's IP, unless the pod shares its node's (`hostNetwork`).
    pod_ip: Option<String>,
    /// The interval's threshold, readable without the lock: the ingest path records only the
    /// spans under it, so once the cap has lowered it the spans above cost nothing.
    current: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The configured threshold (0: probes off).
    configured: u64,
    /// This interval's threshold: the configured one, lowered when the cap was reached.
    threshold: u64,
    spans: Vec<ProbeSpan>,
    left_out: u64,
}

impl State {
    /// Keeps only the traces below `threshold`, counting the spans that go.
    fn lower_to(&mut self, threshold: u64) {
        self.threshold = threshold;
        let before = self.spans.len();
        self.spans.retain(|s| randomness(s) < threshold);
        self.left_out += (before - self.spans.len()) as u64;
    }
}

/// The randomness of a probe span's trace (its hex trace id, written by the agent).
fn randomness(span: &ProbeSpan) -> u64 {
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = span.trace_id.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0xff);
    }
    trace_randomness(&id).unwrap_or(u64::MAX)
}

impl ProbeBuffer {
    /// A buffer for a pod whose application containers override the propagators as `overrides`.
    pub fn new(overrides: BTreeMap<String, String>) -> ProbeBuffer {
        ProbeBuffer { state: Mutex::default(), overrides, pod_ip: None, current: AtomicU64::new(0) }
    }

    /// This buffer, reporting `ip` as the pod's.
    pub fn with_pod_ip(mut self, ip: Option<String>) -> ProbeBuffer {
        self.pod_ip = ip;
        self
    }

    /// Reads the overrides from [`PROPAGATOR_OVERRIDES_ENV`] (`container=value;...`) and the
    /// pod's IP from [`POD_IP_ENV`] (none with [`HOST_NETWORK_ENV`] `true`).
    pub fn from_env() -> ProbeBuffer {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        ProbeBuffer::new(parse_overrides(&var(PROPAGATOR_OVERRIDES_ENV)))
            .with_pod_ip(pod_ip(&var(POD_IP_ENV), &var(HOST_NETWORK_ENV)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new configured threshold (from a config reload); 0 turns probes off.
    pub fn configure(&self, threshold: u64) {
        let mut s = self.lock();
        if s.configured == threshold {
            return;
        }
        s.configured = threshold;
        if threshold == 0 {
            s.spans.clear();
            s.threshold = 0;
        } else if threshold < s.threshold || s.spans.is_empty() {
            s.lower_to(threshold);
        }
        self.current.store(s.threshold, Ordering::Relaxed);
    }

    /// The threshold spans are recorded under in this interval (0: none).
    pub fn threshold(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Adds a request's probe spans; over the cap, the interval's threshold drops to the
    /// randomness of the highest trace kept until the spans fit.
    pub fn record(&self, spans: Vec<ProbeSpan>) {
        let mut s = self.lock();
        for span in spans {
            if randomness(&span) >= s.threshold {
                s.left_out += 1;
                continue;
            }
            s.spans.push(span);
            while s.spans.len() > MAX_PROBE_SPANS {
                let highest = s.spans.iter().map(randomness).max().unwrap_or(0);
                s.lower_to(highest);
            }
        }
        self.current.store(s.threshold, Ordering::Relaxed);
    }

    /// This interval's probes for a report (and a new interval at the configured threshold);
    /// `None` when probes are off.
    pub fn take(&self) -> Option<Probes> {
        let mut s = self.lock();
        if s.configured == 0 {
            return None;
        }
        let probes = Probes {
            threshold: s.threshold,
            spans: std::mem::take(&mut s.spans),
            left_out: std::mem::take(&mut s.left_out),
            propagator_overrides: self.overrides.clone(),
            pod_ip: self.pod_ip.clone(),
        };
        s.threshold = s.configured;
        self.current.store(s.threshold, Ordering::Relaxed);
        Some(probes)
    }

    /// Gives back the probes of a report that could not be pushed: they join the current
    /// interval, under the lower of the two thresholds.
    pub fn restore(&self, probes: Probes) {
        let mut s = self.lock();
        if s.configured == 0 {
            return;
        }
        s.left_out += probes.left_out;
        let threshold = s.threshold.min(probes.threshold);
        s.lower_to(threshold);
        drop(s);
        self.record(probes.spans);
    }

    /// Spans waiting.
    pub fn len(&self) -> usize {
        self.lock().spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `container=value;container=value` (the injector's encoding; values never hold `;`).
pub fn parse_overrides(text: &str) -> BTreeMap<String, String> {
    text.split(';')
        .filter_map(|item| item.split_once('='))
        .filter(|(container, _)| !container.trim().is_empty())
        .map(|(c, v)| (c.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The pod IP to report: a valid address, and none in a `hostNetwork` pod (its node's address
/// would name every pod of the node that calls out).
fn pod_ip(ip: &str, host_network: &str) -> Option<String> {
    if host_network.trim() == "true" {
        return None;
    }
    ip.trim().parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracelight_contract::probe::to_hex;

    fn span(randomness: u64, n: u8) -> ProbeSpan {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&randomness.to_be_bytes());
        ProbeSpan { trace_id: to_hex(&id), span_id: to_hex(&[n; 8]), service: "s".into(), ..ProbeSpan::default() }
    }

    #[test]
    fn the_pod_ip_is_reported_unless_the_pod_shares_its_node_address() {
        assert_eq!(pod_ip("10.0.0.7", ""), Some("10.0.0.7".into()));
        assert_eq!(pod_ip(" fd00::7 ", "false"), Some("fd00::7".into()));
        assert_eq!(pod_ip("10.0.0.7", "true"), None, "hostNetwork");
        assert_eq!(pod_ip("$(TRACELIGHT_POD_IP)", ""), None, "unexpanded");
        let b = ProbeBuffer::default().with_pod_ip(pod_ip("10.0.0.7", ""));
        b.configure(1 << 55);
        assert_eq!(b.take().and_then(|p| p.pod_ip), Some("10.0.0.7".into()));
    }

    #[test]
    fn over_the_cap_the_highest_traces_go_whole_and_the_threshold_says_so() {
        let b = ProbeBuffer::default();
        b.configure(1000);
        assert_eq!(b.threshold(), 1000);
        // Two spans per trace, traces 0..40: 80 spans for a cap of 64.
        b.record((0..40u64).flat_map(|r| [span(r * 10, 1), span(r * 10, 2)]).collect());
        let lowered = b.threshold();
        assert!(lowered < 400, "the ingest path sees the lowered threshold: {lowered}");
        let p = b.take().expect("probes on");
        assert_eq!(p.threshold, lowered);
        assert_eq!(b.threshold(), 1000, "a new interval starts at the configured threshold");
        assert!(p.spans.len() <= MAX_PROBE_SPANS && p.spans.len() % 2 == 0, "{}", p.spans.len());
        assert!(p.spans.iter().all(|s| randomness(s) < p.threshold), "every span kept is under the threshold");
        assert_eq!(p.spans.len() as u64 + p.left_out, 80, "every span kept or counted");
        let kept: std::collections::BTreeSet<u64> = p.spans.iter().map(randomness).collect();
        assert_eq!(kept, (0..kept.len() as u64).map(|r| r * 10).collect(), "the lowest traces, whole");
        let next = b.take().expect("probes on");
        assert_eq!((next.threshold, next.spans.len(), next.left_out), (1000, 0, 0), "a new interval");
    }

    #[test]
    fn spans_above_the_threshold_are_not_kept_and_off_means_none() {
        let b = ProbeBuffer::default();
        assert_eq!(b.take(), None, "off until configured");
        b.configure(100);
        b.record(vec![span(5, 1), span(500, 2)]);
        let p = b.take().unwrap();
        assert_eq!((p.spans.len(), p.left_out), (1, 1));
        b.record(vec![span(5, 1)]);
        b.configure(0);
        assert_eq!((b.take(), b.len()), (None, 0));
    }

    #[test]
    fn a_failed_push_gives_its_probes_back() {
        let b = ProbeBuffer::new(parse_overrides("api=b3; web = tracecontext,baggage;bad"));
        b.configure(100);
        b.record(vec![span(1, 1), span(2, 2)]);
        let p = b.take().unwrap();
        assert_eq!(p.propagator_overrides.get("web").map(String::as_str), Some("tracecontext,baggage"));
        assert_eq!(p.propagator_overrides.len(), 2);
        b.record(vec![span(3, 3)]);
        b.restore(p);
        let again = b.take().unwrap();
        assert_eq!((again.spans.len(), again.threshold), (3, 100));
    }
}
