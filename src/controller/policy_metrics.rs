//! Gauges of every TracingPolicy's status, for alerting and dashboards: coverage per namespace,
//! workloads by coverage state, conditions, phase, namespaces by rollout state, sampling and
//! agent versions.
//!
//! They are computed at each scrape from the controller's policy cache, so they always show what
//! the status says (a deleted policy's series go with it). Only the replica that runs the
//! controllers (the leader) has that cache: the others export none of these series. Label sets
//! are bounded by the status itself: per namespace, at most
//! [`MAX_WORKLOADS_PER_NAMESPACE`](crate::api::MAX_WORKLOADS_PER_NAMESPACE) workloads (the
//! least covered first) and at most [`AgentVersions::MAX`](crate::api::AgentVersions::MAX) agent
//! versions. docs/alerts.md lists every series and the alerts built on them.

use crate::api::{CoverageState, NamespaceState, PolicyPhase, TracingPolicy, TracingPolicyStatus};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::{Arc, PoisonError, RwLock};

/// The policy status gauges. Clones share the source; register one with
/// [`Metrics::with_registry`](crate::telemetry::Metrics::with_registry) and
/// [`register_collector`](prometheus_client::registry::Registry::register_collector).
#[derive(Clone, Default)]
pub struct PolicyMetrics {
    source: Arc<RwLock<Option<Store<TracingPolicy>>>>,
}

impl std::fmt::Debug for PolicyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let following = self.source.read().unwrap_or_else(PoisonError::into_inner).is_some();
        f.debug_struct("PolicyMetrics").field("following", &following).finish()
    }
}

impl PolicyMetrics {
    /// Exports the policies of `store` from the next scrape on (the controllers started).
    pub fn follow(&self, store: Store<TracingPolicy>) {
        *self.source.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
    }

    /// Exports nothing any more (the controllers stopped: another replica leads).
    pub fn forget(&self) {
        *self.source.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn policies(&self) -> Vec<Arc<TracingPolicy>> {
        let mut policies =
            self.source.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(Store::state).unwrap_or_default();
        policies.sort_by_key(|p| p.name_any());
        policies
    }
}

/// Pod counts of a namespace (`NamespaceStatus.counts`), one gauge each.
const POD_GAUGES: [(&str, &str); 8] = [
    ("tracelight_policy_pods_selected", "Pods the policy selects, per namespace"),
    ("tracelight_policy_pods_injected", "Selected pods carrying the agent, per namespace"),
    ("tracelight_policy_pods_missed", "Selected pods of active namespaces that are not injected, per namespace"),
    ("tracelight_policy_pods_skipped", "Selected pods the webhook could not inject safely, per namespace"),
    ("tracelight_policy_pods_outdated", "Injected pods whose manifest hash differs from the policy's, per namespace"),
    ("tracelight_policy_pods_reporting", "Injected pods whose agent received spans recently, per namespace"),
    ("tracelight_policy_pods_silent", "Injected pods whose agent reports but received no span recently, per namespace"),
    ("tracelight_policy_pods_unreported", "Injected pods whose agent sent no recent report, per namespace"),
];

const COVERAGE_STATES: [(CoverageState, &str); 5] = [
    (CoverageState::NotInjected, "not_injected"),
    (CoverageState::Unreported, "unreported"),
    (CoverageState::Silent, "silent"),
    (CoverageState::Reporting, "reporting"),
    (CoverageState::OptedOut, "opted_out"),
];

const NAMESPACE_STATES: [(NamespaceState, &str); 3] =
    [(NamespaceState::Pending, "Pending"), (NamespaceState::Active, "Active"), (NamespaceState::Leaving, "Leaving")];

const PHASES: [PolicyPhase; 5] =
    [PolicyPhase::Pending, PolicyPhase::Progressing, PolicyPhase::Paused, PolicyPhase::Degraded, PolicyPhase::Complete];

fn coverage_state_name(state: CoverageState) -> &'static str {
    COVERAGE_STATES.iter().find(|(s, _)| *s == state).map_or("unknown", |(_, name)| name)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One gauge family: its series, encoded when the family has any.
struct Family<'a, N> {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels<'a>, N)>,
}

impl<'a, N: EncodeGaugeValue + Clone + std::fmt::Debug + Send + Sync> Family<'a, N> {
    fn new(name: &'static str, help: &'static str) -> Self {
        Family { name, help, series: Vec::new() }
    }

    fn add(&mut self, labels: Labels<'a>, value: N) {
        self.series.push((labels, value));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.series.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (labels, value) in &self.series {
            ConstGauge::new(value.clone()).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

fn count(n: u32) -> i64 {
    i64::from(n)
}

/// The pod counts of one namespace, in [`POD_GAUGES`] order. Unreported pods are the injected
/// ones neither reporting nor silent.
fn pod_counts(c: &crate::api::Coverage) -> [u32; 8] {
    let unreported = c.injected.saturating_sub(c.reporting.saturating_add(c.silent));
    [c.selected, c.injected, c.missed, c.skipped, c.outdated, c.reporting, c.silent, unreported]
}

impl Collector for PolicyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let policies = self.policies();
        let empty = TracingPolicyStatus::default();
        let named: Vec<(String, &TracingPolicyStatus)> =
            policies.iter().map(|p| (p.name_any(), p.status.as_ref().unwrap_or(&empty))).collect();

        let mut pods: Vec<Family<i64>> = POD_GAUGES.iter().map(|(name, help)| Family::new(name, help)).collect();
        let mut workloads = Family::new(
            "tracelight_policy_workloads",
            "Workloads listed in the status per namespace, by coverage state",
        );
        let mut workload = Family::new(
            "tracelight_policy_workload_coverage",
            "1 for each workload listed in the status, labelled with its coverage state",
        );
        let mut conditions = Family::new(
            "tracelight_policy_condition",
            "1 for each condition of the policy status, labelled with its type, status and reason",
        );
        let mut phase = Family::new("tracelight_policy_phase", "1 for the policy's current phase, 0 for the others");
        let mut namespaces = Family::new("tracelight_policy_namespaces", "Governed namespaces by rollout state");
        let mut ratio = Family::<f64>::new(
            "tracelight_policy_sampling_ratio",
            "Sampling ratio the agents apply (status.sampling.effectiveRatio)",
        );
        let mut rate = Family::<f64>::new(
            "tracelight_policy_spans_per_second",
            "Spans kept per second by all agents, after sampling (status.sampling.spansPerSecond)",
        );
        let mut versions = Family::new(
            "tracelight_policy_agent_pods",
            "Injected pods whose agent reported recently, by agent version (at most 8 versions, the rest as other)",
        );

        for (policy, status) in &named {
            let policy = policy.as_str();
            for ns in &status.namespaces {
                let labels = || vec![("policy", policy), ("namespace", ns.name.as_str())];
                for (family, value) in pods.iter_mut().zip(pod_counts(&ns.counts)) {
                    family.add(labels(), count(value));
                }
                for (state, name) in COVERAGE_STATES {
                    let n = ns.workloads.iter().filter(|w| w.state == state).count();
                    let mut l = labels();
                    l.push(("state", name));
                    workloads.add(l, i64::try_from(n).unwrap_or(i64::MAX));
                }
                for w in &ns.workloads {
                    let mut l = labels();
                    l.extend([
                        ("kind", w.kind.as_str()),
                        ("workload", w.name.as_str()),
                        ("state", coverage_state_name(w.state)),
                    ]);
                    workload.add(l, 1i64);
                }
            }
            for c in &status.conditions {
                let l = vec![
                    ("policy", policy),
                    ("type", c.type_.as_str()),
                    ("status", c.status.as_str()),
                    ("reason", c.reason.as_str()),
                ];
                conditions.add(l, 1i64);
            }
            if let Some(current) = status.phase {
                for p in PHASES {
                    phase.add(vec![("policy", policy), ("phase", phase_name(p))], i64::from(p == current));
                }
            }
            for (state, name) in NAMESPACE_STATES {
                let n = status.namespaces.iter().filter(|ns| ns.state == state).count();
                namespaces.add(vec![("policy", policy), ("state", name)], i64::try_from(n).unwrap_or(i64::MAX));
            }
            if let Some(sampling) = &status.sampling {
                ratio.add(vec![("policy", policy)], sampling.effective_ratio);
                if let Some(sps) = sampling.spans_per_second {
                    rate.add(vec![("policy", policy)], sps);
                }
            }
            if let Some(coverage) = &status.coverage {
                for (version, n) in coverage.agent_versions.iter() {
                    versions.add(vec![("policy", policy), ("version", version)], count(n));
                }
            }
        }

        for family in &pods {
            family.encode(&mut encoder)?;
        }
        workloads.encode(&mut encoder)?;
        workload.encode(&mut encoder)?;
        conditions.encode(&mut encoder)?;
        phase.encode(&mut encoder)?;
        namespaces.encode(&mut encoder)?;
        ratio.encode(&mut encoder)?;
        rate.encode(&mut encoder)?;
        versions.encode(&mut encoder)?;
        Ok(())
    }
}

fn phase_name(phase: PolicyPhase) -> &'static str {
    match phase {
        PolicyPhase::Pending => "Pending",
        PolicyPhase::Progressing => "Progressing",
        PolicyPhase::Paused => "Paused",
        PolicyPhase::Degraded => "Degraded",
        PolicyPhase::Complete => "Complete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentVersions, Coverage, NamespaceStatus, SamplingStatus, TracingPolicySpec, WorkloadCoverage};
    use crate::telemetry::Metrics;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube::runtime::{reflector, watcher};

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(0).unwrap()),
            observed_generation: None,
        }
    }

    fn workload(name: &str, state: CoverageState) -> WorkloadCoverage {
        WorkloadCoverage { kind: "Deployment".into(), name: name.into(), state, ..Default::default() }
    }

    fn policy(name: &str, status: Option<TracingPolicyStatus>) -> TracingPolicy {
        let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
            "collector": {"endpoint": "http://collector:4317", "protocol": "grpc"}
        }))
        .unwrap();
        let mut p = TracingPolicy::new(name, spec);
        p.status = status;
        p
    }

    fn shop_status() -> TracingPolicyStatus {
        TracingPolicyStatus {
            phase: Some(PolicyPhase::Degraded),
            conditions: vec![condition("Ready", "False", "Degraded"), condition("Degraded", "True", "HealthGate")],
            namespaces: vec![
                NamespaceStatus {
                    name: "shop".into(),
                    state: NamespaceState::Active,
                    counts: Coverage {
                        selected: 10,
                        injected: 7,
                        missed: 2,
                        skipped: 1,
                        outdated: 3,
                        reporting: 4,
                        silent: 1,
                        ..Default::default()
                    },
                    workloads: vec![
                        workload("cart", CoverageState::Silent),
                        workload("checkout", CoverageState::Unreported),
                        workload("web", CoverageState::Reporting),
                        workload("ads", CoverageState::Reporting),
                    ],
                    ..Default::default()
                },
                NamespaceStatus { name: "blog".into(), state: NamespaceState::Pending, ..Default::default() },
            ],
            coverage: Some(Coverage {
                agent_versions: AgentVersions::from_counts([("0.2.0".to_string(), 4), ("0.1.0".to_string(), 1)]),
                ..Default::default()
            }),
            sampling: Some(SamplingStatus {
                effective_ratio: 0.25,
                spans_per_second: Some(12.5),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn scrape(metrics: &PolicyMetrics) -> String {
        let registry = Metrics::new();
        registry.with_registry(|r| r.register_collector(Box::new(metrics.clone())));
        registry.encode().unwrap()
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }

    #[test]
    fn the_status_of_each_policy_is_exported() {
        let (store, mut writer) = reflector::store::<TracingPolicy>();
        writer.apply_watcher_event(&watcher::Event::Apply(policy("shop", Some(shop_status()))));
        writer.apply_watcher_event(&watcher::Event::Apply(policy("fresh", None)));
        let metrics = PolicyMetrics::default();
        metrics.follow(store);
        let text = scrape(&metrics);

        let shop = r#"{policy="shop",namespace="shop"}"#;
        for (gauge, value) in [
            ("selected", 10),
            ("injected", 7),
            ("missed", 2),
            ("skipped", 1),
            ("outdated", 3),
            ("reporting", 4),
            ("silent", 1),
            ("unreported", 2),
        ] {
            has(&text, &format!("tracelight_policy_pods_{gauge}{shop} {value}"));
        }
        has(&text, r#"tracelight_policy_pods_selected{policy="shop",namespace="blog"} 0"#);
        has(&text, r#"tracelight_policy_workloads{policy="shop",namespace="shop",state="reporting"} 2"#);
        has(&text, r#"tracelight_policy_workloads{policy="shop",namespace="shop",state="silent"} 1"#);
        has(&text, r#"tracelight_policy_workloads{policy="shop",namespace="shop",state="not_injected"} 0"#);
        has(
            &text,
            r#"tracelight_policy_workload_coverage{policy="shop",namespace="shop",kind="Deployment",workload="cart",state="silent"} 1"#,
        );
        has(
            &text,
            r#"tracelight_policy_workload_coverage{policy="shop",namespace="shop",kind="Deployment",workload="checkout",state="unreported"} 1"#,
        );
        has(&text, r#"tracelight_policy_condition{policy="shop",type="Degraded",status="True",reason="HealthGate"} 1"#);
        has(&text, r#"tracelight_policy_condition{policy="shop",type="Ready",status="False",reason="Degraded"} 1"#);
        has(&text, r#"tracelight_policy_phase{policy="shop",phase="Degraded"} 1"#);
        has(&text, r#"tracelight_policy_phase{policy="shop",phase="Complete"} 0"#);
        has(&text, r#"tracelight_policy_namespaces{policy="shop",state="Active"} 1"#);
        has(&text, r#"tracelight_policy_namespaces{policy="shop",state="Pending"} 1"#);
        has(&text, r#"tracelight_policy_namespaces{policy="fresh",state="Active"} 0"#);
        has(&text, r#"tracelight_policy_sampling_ratio{policy="shop"} 0.25"#);
        has(&text, r#"tracelight_policy_spans_per_second{policy="shop"} 12.5"#);
        has(&text, r#"tracelight_policy_agent_pods{policy="shop",version="0.2.0"} 4"#);
        has(&text, "# TYPE tracelight_policy_pods_missed gauge");
        assert!(!text.contains(r#"policy="fresh",phase"#), "a policy without status has no phase: {text}");
    }

    #[test]
    fn series_follow_the_cache_and_stop_when_the_controllers_stop() {
        let (store, mut writer) = reflector::store::<TracingPolicy>();
        let shop = policy("shop", Some(shop_status()));
        writer.apply_watcher_event(&watcher::Event::Apply(shop.clone()));
        let metrics = PolicyMetrics::default();
        assert!(!scrape(&metrics).contains("tracelight_policy_"), "nothing before the controllers start");
        metrics.follow(store);

        // A workload that starts reporting moves from one state series to the other.
        let mut fixed = shop_status();
        fixed.namespaces[0].workloads[0].state = CoverageState::Reporting;
        writer.apply_watcher_event(&watcher::Event::Apply(policy("shop", Some(fixed))));
        let text = scrape(&metrics);
        has(&text, r#"tracelight_policy_workloads{policy="shop",namespace="shop",state="silent"} 0"#);
        assert!(!text.contains(r#"workload="cart",state="silent""#), "{text}");

        writer.apply_watcher_event(&watcher::Event::Delete(shop));
        assert!(!scrape(&metrics).contains(r#"policy="shop""#), "a deleted policy's series go");

        writer.apply_watcher_event(&watcher::Event::Apply(policy("shop", Some(shop_status()))));
        metrics.forget();
        assert!(!scrape(&metrics).contains("tracelight_policy_"), "a replica that stops leading exports none");
    }

    /// Renders every metric the operator exports, each family with series (every coverage state,
    /// condition type, phase and admission result), as `make test-alerts` needs it: with
    /// `TRACELIGHT_METRICS_DUMP=<dir>` the text goes to `<dir>/operator.txt`, where the alert
    /// checks read which metric names and label values rules and dashboards may use.
    #[test]
    fn exposition_for_the_alert_checks() {
        use crate::controller::metrics::ControllerMetrics;
        use crate::decision::status::{DEGRADED, PROGRESSING, READY, TRACES_CONNECTED};
        use crate::webhook::certs::{make_ca, make_leaf, CertResolver, LeafSpec};
        use crate::webhook::metrics::{AdmissionMetrics, AdmissionResult, CertificateExpiry};
        use std::time::Duration;

        let registry = Metrics::new();
        let controller = ControllerMetrics::register(&registry);
        controller.leader.set(1);
        controller.restarts.inc();
        controller.count_failure("kube");
        drop(controller.start_reconcile());
        let admissions = AdmissionMetrics::register(&registry);
        for result in
            [AdmissionResult::Injected, AdmissionResult::Skipped, AdmissionResult::Error, AdmissionResult::Invalid]
        {
            admissions.record(result, "none", Duration::from_millis(1));
        }
        crate::webhook::reports::ReportMetrics::register(&registry);
        let resolver = Arc::new(CertResolver::new());
        CertificateExpiry::register(&registry, resolver.clone());
        let now = time::OffsetDateTime::now_utc();
        let ca = make_ca(now, Duration::from_secs(3600)).unwrap();
        let spec = LeafSpec::for_service("tl-webhook", "ops", &[], Duration::from_secs(3600));
        resolver.set(&make_leaf(&ca, &spec, now).unwrap()).unwrap();

        let (store, mut writer) = reflector::store::<TracingPolicy>();
        let mut status = shop_status();
        status.conditions = [READY, PROGRESSING, DEGRADED]
            .iter()
            .flat_map(|t| [condition(t, "True", "Reason"), condition(t, "False", "Reason")])
            .chain([condition(TRACES_CONNECTED, "False", crate::decision::continuity::BROKEN_LINKS)])
            .collect();
        status.namespaces[0].workloads = COVERAGE_STATES.iter().map(|(state, name)| workload(name, *state)).collect();
        status.namespaces.push(NamespaceStatus {
            name: "old".into(),
            state: NamespaceState::Leaving,
            ..Default::default()
        });
        writer.apply_watcher_event(&watcher::Event::Apply(policy("shop", Some(status))));
        controller.policies.follow(store);

        let text = registry.encode().unwrap();
        for (name, _) in POD_GAUGES {
            assert!(text.contains(&format!(r#"{name}{{policy="shop",namespace="shop"}} "#)), "{name} missing: {text}");
        }
        for (_, state) in COVERAGE_STATES {
            assert!(text.contains(&format!(r#"state="{state}""#)), "{state} missing: {text}");
        }
        assert!(text.contains("tracelight_webhook_certificate_expiry_timestamp_seconds "), "{text}");
        assert!(text.contains(r#"tracelight_admissions_total{result="error",reason="none"} 1"#), "{text}");
        if let Some(dir) = std::env::var_os("TRACELIGHT_METRICS_DUMP") {
            let path = std::path::Path::new(&dir).join("operator.txt");
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
    }
}
