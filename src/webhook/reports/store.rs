//! The accepted reports, one per pod (by the uid its token was bound to), kept in memory. The
//! controller reads them at every reconcile; a change that can flip a workload's coverage (a new
//! pod, a first span, a new config generation, another agent version) wakes it through
//! [`ReportStore::subscribe`].

use super::review::ReviewedPod;
use crate::continuity::{ProbeWindow, WorkloadKey};
use crate::rollout::coverage::{agent_version_key, PodReport, MAX_SERVICES, REPORT_STALE_AFTER};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tracelight_contract::probe::Probes;
use tracelight_contract::report::AgentReport;

/// How often agents push a report (the agent's default `--report-interval-secs`).
pub const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// After this replica starts leading, how long coverage is held at what the status shows where
/// its own reports count fewer pods: one report interval and a margin, after which every agent
/// has reported to it (directly or forwarded by another replica).
pub const COVERAGE_WARM_UP: SignedDuration = SignedDuration::from_secs(REPORT_INTERVAL.as_secs() as i64 + 10);

/// Longest service name kept from a report, in bytes: the application sets `service.name`, and
/// one unbounded name would make every status write (and the status object) as large.
pub const MAX_SERVICE_NAME_BYTES: usize = 128;

/// `name` cut to [`MAX_SERVICE_NAME_BYTES`] at a character boundary.
pub fn bounded_name(name: &str) -> &str {
    if name.len() <= MAX_SERVICE_NAME_BYTES {
        return name;
    }
    let mut end = MAX_SERVICE_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// How many of the service names a report keeps had to be cut.
pub fn truncated_names(report: &AgentReport) -> usize {
    report.services.keys().take(MAX_SERVICES).filter(|n| n.len() > MAX_SERVICE_NAME_BYTES).count()
}

#[derive(Clone)]
pub struct ReportStore {
    /// By pod uid (from the reviewed token).
    reports: Arc<RwLock<HashMap<String, PodReport>>>,
    changed: Arc<watch::Sender<u64>>,
    /// Until when coverage is held (see [`COVERAGE_WARM_UP`]).
    warm_until: Arc<RwLock<Option<Timestamp>>>,
    /// The probe spans of the reports (see `crate::continuity`).
    probes: Arc<std::sync::Mutex<ProbeWindow>>,
}

impl Default for ReportStore {
    fn default() -> Self {
        ReportStore {
            reports: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            warm_until: Arc::default(),
            probes: Arc::default(),
        }
    }
}

impl ReportStore {
    /// Holds coverage until `until`: this replica has just started leading, and reports counted
    /// by the previous leader have not all reached it yet.
    pub fn hold_coverage_until(&self, until: Timestamp) {
        *self.warm_until.write().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// Whether coverage is still held at `now`.
    pub fn holds_coverage(&self, now: Timestamp) -> bool {
        self.warm_until.read().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| now < until)
    }

    /// Records `report` for the reviewed `pod`, received `now`. Returns whether it changed
    /// something coverage depends on (and then notifies subscribers).
    pub fn accept(&self, pod: &ReviewedPod, report: &AgentReport, now: Timestamp) -> bool {
        if let Some(probes) = &report.probes {
            self.add_probes(pod, report, probes, now);
        }
        let last_span_at = report
            .last_span_age_seconds
            .and_then(|age| now.checked_sub(SignedDuration::from_secs(i64::try_from(age).unwrap_or(i64::MAX))).ok());
        let mut services: Vec<String> =
            report.services.keys().take(MAX_SERVICES).map(|name| bounded_name(name).to_string()).collect();
        services.sort();
        services.dedup();
        let mut new = PodReport {
            received_at: now,
            last_span_at,
            services,
            config_generation: report.config_generation,
            agent_version: agent_version_key(report.contract_version, report.agent_version.as_deref()),
            sampling: Default::default(),
            history: Default::default(),
        };
        let mut reports = self.reports.write().unwrap_or_else(|p| p.into_inner());
        // Rates need the previous counters of the same pod.
        let before = reports.get(&pod.pod_uid).map(|old| &old.sampling).cloned().unwrap_or_default();
        new.sampling = before.next(crate::sampling::rates::Snapshot::new(
            &report.sampling_rules,
            report.kept_bytes,
            report.uptime_ms,
            now,
        ));
        if let Some(old) = reports.get(&pod.pod_uid) {
            new.history = old.history.next(report, now);
        } else {
            new.history = crate::baseline::PodHistory::default().next(report, now);
        }
        let material = match reports.get(&pod.pod_uid) {
            None => true,
            Some(old) => {
                old.last_span_at.is_none() != new.last_span_at.is_none()
                    || old.config_generation != new.config_generation
                    || old.services != new.services
                    || old.agent_version != new.agent_version
            }
        };
        reports.insert(pod.pod_uid.clone(), new);
        drop(reports);
        if material {
            self.changed.send_modify(|n| *n += 1);
        }
        material
    }

    /// Files a report's probe spans under the reviewed pod's namespace and the workload the
    /// agent names (its pod, when it names none).
    fn add_probes(&self, pod: &ReviewedPod, report: &AgentReport, probes: &Probes, now: Timestamp) {
        let (kind, name) = match (&report.pod.workload_kind, &report.pod.workload_name) {
            (Some(kind), Some(name)) => (kind.as_str(), name.as_str()),
            _ => ("Pod", pod.pod_name.as_str()),
        };
        let workload = WorkloadKey::new(&pod.namespace, kind, name);
        let mut window = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        window.add(&pod.pod_uid, workload, report.policy.as_deref(), probes, now.as_second());
    }

    /// Runs `f` on the probe window (read only; the join is `crate::continuity::join`).
    pub fn with_probes<R>(&self, f: impl FnOnce(&ProbeWindow) -> R) -> R {
        f(&self.probes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The last report of the pod with `uid`.
    pub fn get(&self, uid: &str) -> Option<PodReport> {
        self.reports.read().unwrap_or_else(|p| p.into_inner()).get(uid).cloned()
    }

    /// Forgets reports of pods that stopped reporting long ago (deleted pods, mostly).
    pub fn prune(&self, now: Timestamp) {
        let keep_for = SignedDuration::try_from(REPORT_STALE_AFTER * 4).unwrap_or(SignedDuration::MAX);
        let mut reports = self.reports.write().unwrap_or_else(|p| p.into_inner());
        reports.retain(|_, r| now.duration_since(r.received_at) < keep_for);
    }

    /// Pods with a report.
    pub fn len(&self) -> usize {
        self.reports.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes whenever [`accept`](Self::accept) records a material change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tracelight_contract::report::{ReportedPod, SpanCounts};

    fn pod(uid: &str) -> ReviewedPod {
        ReviewedPod {
            namespace: "shop".into(),
            service_account: "default".into(),
            pod_name: "w".into(),
            pod_uid: uid.into(),
        }
    }

    fn report(last_span_age: Option<u64>, generation: i64) -> AgentReport {
        AgentReport {
            contract_version: tracelight_contract::CONTRACT_VERSION,
            agent_version: Some("0.2.0".into()),
            pod: ReportedPod::default(),
            policy: Some("p".into()),
            config_generation: generation,
            sampling_ratio: Some(1.0),
            services: BTreeMap::from([("frontend".to_string(), 3)]),
            spans: SpanCounts::default(),
            uptime_seconds: 5,
            uptime_ms: None,
            last_span_age_seconds: last_span_age,
            truncated: None,
            sampling_rules: BTreeMap::new(),
            kept_bytes: 0,
            red: None,
            usage: None,
            probes: None,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn material_changes_notify_and_span_times_are_absolute() {
        let store = ReportStore::default();
        let mut changes = store.subscribe();
        assert!(store.accept(&pod("a"), &report(None, 1), at(0)), "a new pod");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(!store.accept(&pod("a"), &report(None, 1), at(30)), "same facts, later");
        assert!(!changes.has_changed().unwrap());
        assert!(store.accept(&pod("a"), &report(Some(10), 1), at(60)), "first span");
        assert_eq!(store.get("a").unwrap().last_span_at, Some(at(50)));
        assert!(!store.accept(&pod("a"), &report(Some(0), 1), at(90)), "spans go on");
        assert!(store.accept(&pod("a"), &report(Some(0), 2), at(120)), "new config generation");
        let mut upgraded = report(Some(0), 2);
        upgraded.agent_version = Some("0.3.0".into());
        assert!(store.accept(&pod("a"), &upgraded, at(150)), "another agent version");
        assert_eq!(store.get("b"), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn agent_versions_are_kept_as_status_keys() {
        let store = ReportStore::default();
        let mut old = report(None, 1);
        (old.contract_version, old.agent_version) = (1, None);
        store.accept(&pod("old"), &old, at(0));
        store.accept(&pod("new"), &report(None, 1), at(0));
        let mut hostile = report(None, 1);
        hostile.agent_version = Some("x".repeat(60_000));
        store.accept(&pod("hostile"), &hostile, at(0));
        let version = |uid: &str| store.get(uid).unwrap().agent_version;
        assert_eq!(
            (version("old"), version("new"), version("hostile")),
            ("unknown (contract 1)".into(), "0.2.0".into(), "other".into())
        );
    }

    #[test]
    fn long_service_names_are_cut_at_a_character_boundary_and_counted() {
        let store = ReportStore::default();
        let mut long = report(Some(1), 1);
        let huge = "é".repeat(40_000);
        long.services = BTreeMap::from([(huge.clone(), 1), ("x".repeat(200), 2), ("ok".to_string(), 3)]);
        store.accept(&pod("a"), &long, at(0));
        let kept = store.get("a").unwrap().services;
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|s| s.len() <= MAX_SERVICE_NAME_BYTES), "{kept:?}");
        assert!(kept.contains(&"é".repeat(64)), "128 bytes of two-byte characters");
        assert!(kept.contains(&"ok".to_string()));
        assert_eq!(truncated_names(&long), 2);
        assert_eq!(bounded_name(&"a".repeat(129)).len(), 128);
        assert_eq!(bounded_name(&format!("{}é", "a".repeat(127))).len(), 127, "never half a character");
    }

    #[test]
    fn coverage_is_held_for_a_warm_up_after_leading_starts() {
        let store = ReportStore::default();
        assert!(!store.holds_coverage(at(0)), "not before leading");
        store.hold_coverage_until(at(0) + COVERAGE_WARM_UP);
        assert!(store.holds_coverage(at(30)));
        assert!(!store.holds_coverage(at(40)), "one report interval and a margin");
        assert!(store.clone().holds_coverage(at(1)), "shared by clones");
    }

    #[test]
    fn probe_spans_are_filed_under_the_reviewed_namespace_and_the_agents_workload() {
        let store = ReportStore::default();
        let mut r = report(Some(1), 1);
        r.pod.workload_kind = Some("Deployment".into());
        r.pod.workload_name = Some("frontend".into());
        let span: tracelight_contract::probe::ProbeSpan = serde_json::from_value(serde_json::json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "kind": "server",
            "service": "frontend"
        }))
        .unwrap();
        r.probes = Some(Probes { threshold: 1 << 56, spans: vec![span], ..Default::default() });
        store.accept(&pod("a"), &r, at(0));
        store.accept(&pod("a"), &r, at(30));
        let (spans, workload) = store.with_probes(|w| {
            let trace = w.trace(0x0af7651916cd43dd8448eb211c80319c).unwrap();
            (w.len(), (*trace[0].pod.workload).clone())
        });
        assert_eq!(
            (spans, workload),
            (1, WorkloadKey::new("shop", "Deployment", "frontend")),
            "once, though sent twice"
        );
    }

    #[test]
    fn prune_forgets_pods_that_went_quiet() {
        let store = ReportStore::default();
        store.accept(&pod("old"), &report(None, 1), at(0));
        store.accept(&pod("new"), &report(None, 1), at(1000));
        store.prune(at(1000));
        assert_eq!((store.get("old"), store.get("new").is_some()), (None, true));
    }
}
