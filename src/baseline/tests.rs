use super::*;
use std::collections::BTreeMap;
use tracelight_contract::red::{AgentUsage, RedCounts, RedReport};
use tracelight_contract::report::{ReportedPod, SpanCounts};

const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

pub(crate) fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

/// A report with `requests` (of which `errors`), spread over the buckets as given, and usage.
pub(crate) fn report(requests: u64, errors: u64, buckets: [u64; 4], cpu: f64, rss: u64) -> AgentReport {
    AgentReport {
        contract_version: 3,
        agent_version: Some("0.2.0".into()),
        pod: ReportedPod::default(),
        policy: None,
        config_generation: 1,
        sampling_ratio: None,
        services: BTreeMap::new(),
        spans: SpanCounts::default(),
        uptime_seconds: 0,
        uptime_ms: None,
        last_span_age_seconds: None,
        truncated: None,
        sampling_rules: BTreeMap::new(),
        kept_bytes: 0,
        red: Some(RedReport {
            bounds: BOUNDS.to_vec(),
            services: BTreeMap::from([(
                "web".to_string(),
                RedCounts { requests, errors, duration_seconds_sum: 0.0, buckets: buckets.to_vec() },
            )]),
        }),
        usage: Some(AgentUsage { cpu_seconds: cpu, rss_bytes: rss }),
        probes: None,
    }
}

/// A pod serving `rps` requests per second (1% errors, all between 10 and 100 ms), reporting
/// every 30 s from `from` to `to`, its agent using 5 millicores and 6 MB.
pub(crate) fn steady_pod(rps: u64, from: i64, to: i64) -> PodHistory {
    let mut h = PodHistory::default();
    let mut t = from;
    while t <= to {
        let n = rps * (t - from) as u64;
        h = h.next(&report(n, n / 100, [0, n, 0, 0], 0.005 * (t - from) as f64, 6_000_000), at(t));
        t += 30;
    }
    h
}

#[test]
fn quantiles_interpolate_like_histogram_quantile() {
    // 100 observations: 50 up to 10 ms, 40 up to 100 ms, 10 up to 1 s.
    let b = [50, 40, 10, 0];
    assert_eq!(quantile(0.5, &BOUNDS, &b), Some(0.01));
    let p95 = quantile(0.95, &BOUNDS, &b).unwrap();
    assert!((p95 - 0.55).abs() < 1e-9, "{p95}: half way through the 0.1-1 s bucket");
    assert_eq!(quantile(0.25, &BOUNDS, &b), Some(0.005), "from 0 in the first bucket");
    assert_eq!(quantile(0.99, &BOUNDS, &[0, 0, 0, 5]), Some(1.0), "+Inf: the highest bound");
    assert_eq!(quantile(0.5, &BOUNDS, &[0, 0, 0, 0]), None);
}

#[test]
fn a_workload_baseline_sums_rates_and_merges_histograms_over_the_window() {
    let a = steady_pod(10, 0, 600);
    let b = steady_pod(30, 0, 600);
    let m = measure([&a, &b], at(120), at(420)).expect("covered");
    assert_eq!(m.pods, 2);
    assert!((m.requests_per_second - 40.0).abs() < 1e-9, "{}", m.requests_per_second);
    assert!((m.error_rate - 0.01).abs() < 1e-3, "{}", m.error_rate);
    let (p50, p99) = (m.p50.unwrap(), m.p99.unwrap());
    assert!(p50 > 0.01 && p50 < 0.1 && p99 > p50 && p99 <= 0.1, "{p50} {p99}");
    assert!((m.cpu_millicores.unwrap() - 5.0).abs() < 1e-6);
    assert_eq!(m.memory_bytes, Some(6_000_000));
}

#[test]
fn a_pod_that_started_during_the_soak_counts_from_its_first_report() {
    let late = steady_pod(10, 300, 600);
    let m = measure([&late], at(0), at(600)).expect("covered from its start");
    assert!((m.requests_per_second - 10.0).abs() < 1e-9);
    let too_short = steady_pod(10, 595, 600);
    assert_eq!(measure([&too_short], at(0), at(600)), None, "under MIN_WINDOW_SECS");
}

#[test]
fn an_agent_restart_starts_a_new_history() {
    let h = steady_pod(10, 0, 300);
    assert_eq!(h.samples.len(), 11);
    let restarted = h.next(&report(5, 0, [0, 5, 0, 0], 0.1, 1), at(330));
    assert_eq!(restarted.samples.len(), 1, "counters went down");
    let other_bounds = {
        let mut r = report(4000, 0, [0, 4000, 0, 0], 2.0, 1);
        r.red.as_mut().unwrap().bounds = vec![0.5];
        r
    };
    assert_eq!(h.next(&other_bounds, at(330)).samples.len(), 1, "other buckets");
}

#[test]
fn a_long_history_is_thinned_evenly_keeping_both_ends() {
    let h = steady_pod(1, 0, 30 * 200);
    assert_eq!(h.samples.len(), MAX_SAMPLES);
    assert_eq!((h.samples[0].at, h.samples[MAX_SAMPLES - 1].at), (at(0), at(6000)));
    let gaps: Vec<i64> =
        h.samples.iter().zip(h.samples.iter().skip(1)).map(|(a, b)| (b.at - a.at).get_seconds()).collect();
    assert!(gaps.iter().all(|g| *g <= 1200), "no large hole: {gaps:?}");
    // A window early in the history is still measured (coarser).
    assert!(measure([&h], at(600), at(3000)).is_some());
}

#[test]
fn a_soak_ends_once_and_only_with_a_duration() {
    let soaks = [std::time::Duration::from_secs(300), std::time::Duration::ZERO];
    let rollout = RolloutStatus { phase_index: 0, soak_started_at: Some(Time(at(0))), ..Default::default() };
    assert_eq!(soak_ended(Some(&rollout), &soaks, None, at(299)), None, "still soaking");
    assert_eq!(soak_ended(Some(&rollout), &soaks, None, at(310)), Some((0, at(0), at(300))));
    let recorded = record(None, "pilot", at(0), at(300), []);
    assert_eq!(soak_ended(Some(&rollout), &soaks, Some(&recorded), at(400)), None, "recorded already");
    let second = RolloutStatus { phase_index: 1, soak_started_at: Some(Time(at(500))), ..Default::default() };
    assert_eq!(soak_ended(Some(&second), &soaks, Some(&recorded), at(900)), None, "no soak");
    assert_eq!(soak_ended(None, &soaks, None, at(900)), None);
}

#[test]
fn recording_replaces_measured_workloads_and_keeps_the_others() {
    let (a, b) = (steady_pod(10, 0, 600), steady_pod(20, 0, 600));
    let input = |name: &str, pods: Vec<&'static PodHistory>| WorkloadInput {
        namespace: "shop".into(),
        kind: "Deployment".into(),
        name: name.into(),
        services: vec![name.into()],
        pods,
    };
    let a: &'static PodHistory = Box::leak(Box::new(a));
    let b: &'static PodHistory = Box::leak(Box::new(b));
    let first = record(None, "pilot", at(0), at(300), [input("web", vec![a]), input("api", vec![b])]);
    assert_eq!(first.workloads.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["api", "web"]);
    assert_eq!(first.workloads[1].requests_per_second, 10.0);
    let empty = PodHistory::default();
    let empty: &'static PodHistory = Box::leak(Box::new(empty));
    let second =
        record(Some(&first), "expansion", at(300), at(600), [input("web", vec![a, b]), input("api", vec![empty])]);
    assert_eq!(second.phase, "expansion");
    let web = second.workloads.iter().find(|w| w.name == "web").unwrap();
    assert_eq!((web.requests_per_second, web.pods, web.window_start.0), (30.0, 2, at(300)));
    let api = second.workloads.iter().find(|w| w.name == "api").unwrap();
    assert_eq!(api.window_start.0, at(0), "not measured again: its earlier figures stay");
}

#[test]
fn rates_are_measured_on_the_agents_clock_when_reports_arrive_late() {
    // 10 requests/s; the agent reads its counters every 30 s, but the last report of the window
    // reaches the operator 20 s late.
    let mut h = PodHistory::default();
    for (clock, received) in [(0u64, 0i64), (30, 30), (60, 60), (90, 110)] {
        let n = 10 * clock;
        let mut r = report(n, 0, [0, n, 0, 0], 0.005 * clock as f64, 6_000_000);
        r.uptime_ms = Some(clock * 1000);
        h = h.next(&r, at(received));
    }
    let m = measure([&h], at(0), at(120)).expect("covered");
    assert!(
        (m.requests_per_second - 10.0).abs() < 1e-9,
        "{}: over 90 s, not the 110 s between receipts",
        m.requests_per_second
    );
    assert!((m.cpu_millicores.unwrap() - 5.0).abs() < 1e-6);
    // An agent whose clock went back restarted, even if its counters did not go down yet.
    let mut r = report(900, 0, [0, 900, 0, 0], 0.5, 6_000_000);
    r.uptime_ms = Some(5_000);
    assert_eq!(h.next(&r, at(140)).samples.len(), 1);
}
