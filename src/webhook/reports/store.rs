//! The accepted reports, one per pod (by the uid its token was bound to), kept in memory. The
//! controller reads them at every reconcile; a change that can flip a workload's coverage (a new
//! pod, a first span, a new config generation, another agent version) wakes it through
//! [`ReportStore::subscribe`].

use super::review::ReviewedPod;
use crate::rollout::coverage::{agent_version_key, PodReport, MAX_SERVICES, REPORT_STALE_AFTER};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tracelight_contract::report::AgentReport;

#[derive(Clone)]
pub struct ReportStore {
    /// By pod uid (from the reviewed token).
    reports: Arc<RwLock<HashMap<String, PodReport>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for ReportStore {
    fn default() -> Self {
        ReportStore { reports: Arc::default(), changed: Arc::new(watch::channel(0).0) }
    }
}

impl ReportStore {
    /// Records `report` for the reviewed `pod`, received `now`. Returns whether it changed
    /// something coverage depends on (and then notifies subscribers).
    pub fn accept(&self, pod: &ReviewedPod, report: &AgentReport, now: Timestamp) -> bool {
        let last_span_at = report
            .last_span_age_seconds
            .and_then(|age| now.checked_sub(SignedDuration::from_secs(i64::try_from(age).unwrap_or(i64::MAX))).ok());
        let mut services: Vec<String> = report.services.keys().take(MAX_SERVICES).cloned().collect();
        services.sort();
        let mut new = PodReport {
            received_at: now,
            last_span_at,
            services,
            config_generation: report.config_generation,
            agent_version: agent_version_key(report.contract_version, report.agent_version.as_deref()),
            sampling: Default::default(),
        };
        let mut reports = self.reports.write().unwrap_or_else(|p| p.into_inner());
        // Rates need the previous counters of the same pod.
        let before = reports.get(&pod.pod_uid).map(|old| &old.sampling).cloned().unwrap_or_default();
        new.sampling = before.next(&report.sampling_rules, report.kept_bytes, now);
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
            last_span_age_seconds: last_span_age,
            sampling_rules: BTreeMap::new(),
            kept_bytes: 0,
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
    fn prune_forgets_pods_that_went_quiet() {
        let store = ReportStore::default();
        store.accept(&pod("old"), &report(None, 1), at(0));
        store.accept(&pod("new"), &report(None, 1), at(1000));
        store.prune(at(1000));
        assert_eq!((store.get("old"), store.get("new").is_some()), (None, true));
    }
}
