//! Coverage (pure): from the pods of a workload and what their agents reported, whether its
//! spans arrive. The controller keeps the accepted reports (see `webhook::reports`) and asks this
//! module for the verdict; the rollout's span gate and the policy status both use it. It also
//! counts the agent versions the reports name, so the status shows how far an agent upgrade is.

use super::pod::PodSummary;
use crate::api::{AgentVersions, CoverageState, WorkloadCoverage};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, TimestampRound, Unit};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A workload is `Reporting` while one of its agents received a span this recently.
pub const SILENT_AFTER: Duration = Duration::from_secs(10 * 60);
/// A report older than this no longer counts (the agent pushes every 30 s by default).
pub const REPORT_STALE_AFTER: Duration = Duration::from_secs(3 * 60);
/// Most services listed per workload.
pub const MAX_SERVICES: usize = 8;
/// Longest agent version kept as reported; a longer one counts as [`AgentVersions::OTHER`].
pub const MAX_AGENT_VERSION_LEN: usize = 32;

/// What the operator keeps of one pod's last accepted report.
#[derive(Clone, Debug, PartialEq)]
pub struct PodReport {
    /// When the operator accepted it.
    pub received_at: Timestamp,
    /// When the agent last received a span (its reported age subtracted from `received_at`).
    pub last_span_at: Option<Timestamp>,
    pub services: Vec<String>,
    /// Generation of the agent config in effect.
    pub config_generation: i64,
    /// The agent's version as the status counts it (see [`agent_version_key`]).
    pub agent_version: String,
    /// Its sampling counters and the rates they make (contract 3 agents; empty before).
    pub sampling: crate::sampling::rates::PodSampling,
    /// Its recent RED, drop and usage counters, for the baseline and the review.
    pub history: crate::baseline::PodHistory,
}

/// When a report's counters were read, for rates between two reports: the agent's uptime (ms)
/// when it says (so a report the operator received late does not stretch or shrink a window),
/// else when the operator received it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountedAt {
    pub received_at: Timestamp,
    pub agent_clock_ms: Option<u64>,
}

impl CountedAt {
    /// Seconds from `earlier` to this one: on the agent's clock when both carry it.
    pub fn secs_since(self, earlier: CountedAt) -> f64 {
        match (self.agent_clock_ms, earlier.agent_clock_ms) {
            (Some(now), Some(then)) => now.saturating_sub(then) as f64 / 1000.0,
            _ => self.received_at.duration_since(earlier.received_at).as_secs_f64(),
        }
    }

    /// Whether the agent's clock went back since `earlier`: a new run of the agent.
    pub fn clock_went_back(self, earlier: CountedAt) -> bool {
        matches!((self.agent_clock_ms, earlier.agent_clock_ms), (Some(now), Some(then)) if now < then)
    }
}

/// The key a report counts under in the status's `agentVersions`: the version the agent reports
/// if it looks like one (begins with a digit; letters, digits, `.`, `+`, `-`; at most
/// [`MAX_AGENT_VERSION_LEN`] characters), [`AgentVersions::unknown`] when it reports none (agents
/// of contract 1), [`AgentVersions::OTHER`] for anything else. A report is the agent's word: the
/// checks keep a broken or hostile agent from writing arbitrary text or reserved keys into the
/// status.
pub fn agent_version_key(contract_version: u32, agent_version: Option<&str>) -> String {
    let is_version = |v: &str| {
        v.len() <= MAX_AGENT_VERSION_LEN
            && v.starts_with(|c: char| c.is_ascii_digit())
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
    };
    match agent_version {
        None => AgentVersions::unknown(contract_version),
        Some(v) if is_version(v) => v.to_string(),
        Some(_) => AgentVersions::OTHER.to_string(),
    }
}

/// Coverage of the workload `kind/name` from its pods and their reports (looked up by
/// pod uid). `generation`: the policy generation the current agent config was rendered from.
pub fn workload_coverage<'r>(
    kind: &str,
    name: &str,
    pods: &[&PodSummary],
    report_of: impl Fn(&str) -> Option<&'r PodReport>,
    generation: i64,
    now: Timestamp,
) -> WorkloadCoverage {
    let mut c = WorkloadCoverage { kind: kind.into(), name: name.into(), ..Default::default() };
    let mut services = BTreeSet::new();
    let mut last_span: Option<Timestamp> = None;
    let mut fresh_reports = 0u32;
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !p.deleting) {
        c.pods += 1;
        if !pod.injected() {
            continue;
        }
        c.injected += 1;
        let uid = Some(&*pod.uid).filter(|uid| !uid.is_empty());
        let Some(report) = uid.and_then(&report_of).filter(|r| age(now, r.received_at) <= REPORT_STALE_AFTER) else {
            continue;
        };
        fresh_reports += 1;
        *versions.entry(report.agent_version.clone()).or_default() += 1;
        if report.config_generation == generation {
            c.current_config += 1;
        }
        services.extend(report.services.iter().cloned());
        for (rule, rate) in &report.sampling.rates {
            c.rule_rates.entry(rule.clone()).or_default().add(*rate);
        }
        if let Some(bytes) = report.sampling.kept_bytes_rate {
            *c.kept_bytes_rate.get_or_insert(0.0) += bytes;
        }
        if let Some(at) = report.last_span_at {
            last_span = last_span.max(Some(at));
            if age(now, at) <= SILENT_AFTER {
                c.reporting += 1;
            }
        }
    }
    c.state = match (c.injected, c.reporting, fresh_reports) {
        (0, _, _) => CoverageState::NotInjected,
        (_, 1.., _) => CoverageState::Reporting,
        (_, 0, 1..) => CoverageState::Silent,
        (_, 0, 0) => CoverageState::Unreported,
    };
    c.services = services.into_iter().take(MAX_SERVICES).collect();
    c.agent_versions = AgentVersions::from_counts(versions);
    // Minute precision: the status is not rewritten for every span.
    c.last_span_time = last_span.and_then(|t| t.round(TimestampRound::new().smallest(Unit::Minute)).ok()).map(Time);
    c
}

/// The engine's span gate input: `Some(true)` when spans arrive, `Some(false)` when agents report
/// none, `None` when there is nothing to judge by (no reports, not injected).
pub fn reporting(c: &WorkloadCoverage) -> Option<bool> {
    match c.state {
        CoverageState::Reporting => Some(true),
        CoverageState::Silent => Some(false),
        CoverageState::Unreported | CoverageState::NotInjected | CoverageState::OptedOut => None,
    }
}

/// Injected pods whose agents report but see no spans (the `silent` count of the status).
pub fn silent_pods(c: &WorkloadCoverage) -> u32 {
    if c.state == CoverageState::Silent {
        c.injected
    } else {
        0
    }
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or_default()
}

/// The workloads to list in a namespace's status: the least covered first, then by name, at most `max`.
pub fn listed(mut all: Vec<WorkloadCoverage>, max: usize) -> Vec<WorkloadCoverage> {
    all.sort_by(|a, b| a.state.cmp(&b.state).then_with(|| (&a.kind, &a.name).cmp(&(&b.kind, &b.name))));
    all.truncate(max);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::keys::INJECTED_LABEL;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pod(uid: &str, injected: bool) -> PodSummary {
        let labels = injected.then(|| BTreeMap::from([(INJECTED_LABEL.to_string(), "true".to_string())]));
        PodSummary::from_meta(&ObjectMeta { uid: Some(uid.into()), labels, ..Default::default() }, Box::default())
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn report(received: i64, last_span: Option<i64>, generation: i64) -> PodReport {
        PodReport {
            received_at: at(received),
            last_span_at: last_span.map(at),
            services: vec!["frontend".into()],
            config_generation: generation,
            agent_version: "0.2.0".into(),
            sampling: Default::default(),
            history: Default::default(),
        }
    }

    fn report_of_agent(contract_version: u32, agent_version: Option<&str>) -> PodReport {
        PodReport { agent_version: agent_version_key(contract_version, agent_version), ..report(110, None, 2) }
    }

    fn coverage(pods: &[PodSummary], reports: &BTreeMap<&str, PodReport>, now: i64) -> WorkloadCoverage {
        let pods: Vec<&PodSummary> = pods.iter().collect();
        workload_coverage("Deployment", "web", &pods, |uid| reports.get(uid), 2, at(now))
    }

    #[test]
    fn states_follow_pods_and_reports() {
        let none = BTreeMap::new();
        // (pods, reports, expected state)
        let cases: Vec<(Vec<PodSummary>, BTreeMap<&str, PodReport>, CoverageState)> = vec![
            (vec![pod("a", false)], none.clone(), CoverageState::NotInjected),
            (vec![], none.clone(), CoverageState::NotInjected),
            (vec![pod("a", true)], none.clone(), CoverageState::Unreported),
            (vec![pod("a", true)], BTreeMap::from([("a", report(100, None, 2))]), CoverageState::Silent),
            (vec![pod("a", true)], BTreeMap::from([("a", report(100, Some(90), 2))]), CoverageState::Reporting),
            // A span long ago: silent again.
            (vec![pod("a", true)], BTreeMap::from([("a", report(100, Some(-1000), 2))]), CoverageState::Silent),
            // A stale report (agent gone quiet): nothing to judge by.
            (vec![pod("a", true)], BTreeMap::from([("a", report(-500, Some(-500), 2))]), CoverageState::Unreported),
            // One reporting pod of two is enough.
            (
                vec![pod("a", true), pod("b", true)],
                BTreeMap::from([("a", report(100, None, 2)), ("b", report(100, Some(95), 1))]),
                CoverageState::Reporting,
            ),
        ];
        for (i, (pods, reports, want)) in cases.into_iter().enumerate() {
            assert_eq!(coverage(&pods, &reports, 120).state, want, "case {i}");
        }
    }

    #[test]
    fn counts_services_config_and_last_span() {
        let pods = [pod("a", true), pod("b", true), pod("c", false)];
        let mut b = report(110, Some(100), 1);
        b.services = vec!["worker".into(), "frontend".into()];
        let reports = BTreeMap::from([("a", report(110, Some(61), 2)), ("b", b)]);
        let c = coverage(&pods, &reports, 120);
        assert_eq!((c.pods, c.injected, c.reporting, c.current_config), (3, 2, 2, 1));
        assert_eq!(c.services, ["frontend", "worker"]);
        assert_eq!(c.last_span_time, Some(Time(at(100).round(Unit::Minute).unwrap())));
        assert_eq!(reporting(&c), Some(true));
        assert_eq!(silent_pods(&c), 0);
    }

    #[test]
    fn silent_workloads_count_their_injected_pods_and_gate_false() {
        let pods = [pod("a", true), pod("b", true)];
        let reports = BTreeMap::from([("a", report(110, None, 2))]);
        let c = coverage(&pods, &reports, 120);
        assert_eq!(c.state, CoverageState::Silent);
        assert_eq!((silent_pods(&c), reporting(&c)), (2, Some(false)));
    }

    #[test]
    fn counts_agent_versions_of_old_and_new_agents_with_fresh_reports() {
        let pods: Vec<PodSummary> = ["a", "b", "c", "d", "e", "f"].iter().map(|uid| pod(uid, true)).collect();
        let pods = [pods, vec![pod("g", false)]].concat();
        let stale = PodReport { received_at: at(-500), ..report_of_agent(2, Some("0.3.0")) };
        let reports = BTreeMap::from([
            ("a", report_of_agent(2, Some("0.2.0"))),
            ("b", report_of_agent(2, Some("0.2.0"))),
            // An agent of 0.1.0: no version, no contract version (read as 1).
            ("c", report_of_agent(1, None)),
            ("d", report_of_agent(3, Some("0.3.0-rc.1+g1a2b"))),
            ("e", stale),
            // f has not reported; g is not injected.
        ]);
        let c = coverage(&pods, &reports, 120);
        let versions: Vec<(&str, u32)> = c.agent_versions.iter().collect();
        assert_eq!(versions, [("0.2.0", 2), ("0.3.0-rc.1+g1a2b", 1), ("unknown (contract 1)", 1)]);
        assert_eq!(c.injected, 6, "the stale and the unreported agent are injected, but not counted");
    }

    #[test]
    fn an_agent_version_that_is_not_one_counts_as_other() {
        let key = |v: &str| agent_version_key(2, Some(v));
        assert_eq!(key("0.2.0"), "0.2.0");
        assert_eq!(key("1.0.0-beta.2+build.5"), "1.0.0-beta.2+build.5");
        for hostile in ["", "other", "unknown (contract 1)", "v0.2.0", "0.2.0:99,0.1.0", "0.2 0", "0.2.0\n", "0.２.0"]
        {
            assert_eq!(key(hostile), AgentVersions::OTHER, "{hostile:?}");
        }
        assert_eq!(key(&"9".repeat(MAX_AGENT_VERSION_LEN)).len(), MAX_AGENT_VERSION_LEN);
        assert_eq!(key(&"9".repeat(MAX_AGENT_VERSION_LEN + 1)), AgentVersions::OTHER);
        assert_eq!(agent_version_key(1, None), "unknown (contract 1)");
        assert_eq!(agent_version_key(7, None), "unknown (contract 7)");
    }

    #[test]
    fn a_workload_whose_agents_name_many_versions_keeps_the_cap() {
        let pods: Vec<PodSummary> = (0..20).map(|i| pod(&format!("p{i}"), true)).collect();
        let uids: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        // Half the pods run 0.2.0; every other pod claims a version of its own.
        let reports: BTreeMap<&str, PodReport> = uids
            .iter()
            .enumerate()
            .map(|(i, uid)| {
                let version = if i % 2 == 0 { "0.2.0".to_string() } else { format!("6.6.{i}") };
                (uid.as_str(), report_of_agent(2, Some(&version)))
            })
            .collect();
        let c = coverage(&pods, &reports, 120);
        assert_eq!(c.agent_versions.iter().count(), AgentVersions::MAX);
        assert_eq!((c.agent_versions.get("0.2.0"), c.agent_versions.get(AgentVersions::OTHER)), (10, 4));
        assert_eq!(c.agent_versions.iter().map(|(_, n)| n).sum::<u32>(), 20);
    }

    #[test]
    fn listing_puts_the_least_covered_first_and_caps() {
        let w = |name: &str, state| WorkloadCoverage {
            kind: "Deployment".into(),
            name: name.into(),
            state,
            ..Default::default()
        };
        let all = vec![
            w("a", CoverageState::Reporting),
            w("b", CoverageState::Silent),
            w("c", CoverageState::Unreported),
            w("d", CoverageState::Silent),
        ];
        let names: Vec<String> = listed(all, 3).into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["c", "b", "d"]);
    }
}
