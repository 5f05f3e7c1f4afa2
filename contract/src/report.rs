//! The agent's self-report: pushed by the agent, turned by the operator into coverage (who sends
//! spans, which services, which config generation and which agent version run).
//!
//! The channel is authenticated: the agent sends a projected ServiceAccount token of audience
//! [`REPORT_AUDIENCE`], which only the operator accepts (after a TokenReview) and which binds the
//! report to the pod it was issued for.
//!
//! Skew: the operator reads reports of every contract version. Fields it does not know are
//! ignored (no `deny_unknown_fields`), fields an older agent does not send get their defaults:
//! a contract-1 agent sends neither [`AgentReport::contract_version`] nor
//! [`AgentReport::agent_version`].

use crate::red::{AgentUsage, RedReport};
use crate::sampling::RuleCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Audience of the projected token agents authenticate their reports with. A token of this
/// audience is refused by the API server and every other service.
pub const REPORT_AUDIENCE: &str = "tracelight.io/agent-report";
/// Path of the operator's report endpoint (on the webhook's HTTPS server).
pub const REPORT_PATH: &str = "/v1/agent-reports";
/// Where the agent container sees its report token.
pub const REPORT_TOKEN_DIR: &str = "/var/run/secrets/tracelight.io/report";
/// File name of the token inside [`REPORT_TOKEN_DIR`].
pub const REPORT_TOKEN_FILE: &str = "token";
/// Key of the CA bundle (that signs the operator's serving certificate) in the per-namespace
/// agent ConfigMap; the agent verifies the report endpoint with it.
pub const REPORT_CA_KEY: &str = "report-ca.crt";
/// Largest report the operator accepts; real ones are a few hundred bytes (services are capped).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Longest `service.name` an agent reports, in bytes; a longer one (it is the application's to
/// choose) is cut at a character boundary and counted in [`Truncated::service_names`].
pub const MAX_SERVICE_NAME_BYTES: usize = 256;

/// One agent's report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// Contract version the agent speaks (1 when absent: agents of 0.1.0 did not send it).
    #[serde(default = "contract_v1")]
    pub contract_version: u32,
    /// The agent's release (`0.2.0`); none from agents of contract 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    pub pod: ReportedPod,
    /// Policy of the config in effect (none before the first valid config).
    #[serde(default)]
    pub policy: Option<String>,
    /// Generation of the config in effect (0 before the first valid config).
    #[serde(default)]
    pub config_generation: i64,
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    /// `service.name`s seen, with the number of spans received from each.
    #[serde(default)]
    pub services: BTreeMap<String, u64>,
    pub spans: SpanCounts,
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Contract 3: the agent's uptime in milliseconds when it read the counters of this report.
    /// The operator measures rates between two reports on this clock, so a report that reaches
    /// it late (a slow network, a busy operator) does not make a rate look high or low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Seconds since the agent last received a span; none when it never has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_span_age_seconds: Option<u64>,
    /// What the agent cut or left out to keep the report bounded; absent when nothing was.
    /// Contract 3 (optional: operators that do not know it ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
    /// Contract 3: span counters per sampling rule since the agent started, by rule name
    /// ([`crate::sampling::FALLBACK_RULE`] for spans no rule decided). The operator turns
    /// successive reports into pre-sampling rates for the budgets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sampling_rules: BTreeMap<String, RuleCounts>,
    /// Contract 3: bytes of the kept spans since the agent started, as queued for export
    /// (OTLP protobuf, before compression): with the span counters, what a pod costs the backend.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kept_bytes: u64,
    /// Contract 3: request rate, errors and durations per service from the server and consumer
    /// spans received (before sampling), for the operator's baseline. Absent from agents that
    /// count none (`--red-metrics=false`) and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub red: Option<RedReport>,
    /// Contract 3: the agent's own CPU time and resident memory (overhead in the baseline and
    /// the review). Absent where `/proc/self` cannot be read and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AgentUsage>,
    /// Contract 3: the probe traces recorded since the last report (see [`crate::probe`]);
    /// absent when probes are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<crate::probe::Probes>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts of what a report does not carry whole.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Truncated {
    /// `service.name`s longer than [`MAX_SERVICE_NAME_BYTES`], reported cut to it (since the
    /// agent started).
    #[serde(default)]
    pub service_names: u64,
    /// Services left out of this report (their spans counted under `_other`) to keep it under
    /// [`MAX_REPORT_BYTES`].
    #[serde(default)]
    pub services_left_out: u64,
}

fn contract_v1() -> u32 {
    1
}

/// Who the agent is, from the downward API (checked by the operator against the token).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportedPod {
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    #[serde(default)]
    pub workload_kind: Option<String>,
    #[serde(default)]
    pub workload_name: Option<String>,
}

/// Span counters since the agent started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpanCounts {
    pub received: u64,
    #[serde(default)]
    pub sampled_out: u64,
    #[serde(default)]
    pub exported: u64,
    /// Dropped spans by reason (`queueFull`, `exportRejected`, `shutdown`, `invalid`).
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    #[serde(default)]
    pub queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_FIXTURE: &str = include_str!("../fixtures/report/v1.json");
    const V2_FIXTURE: &str = include_str!("../fixtures/report/v2.json");
    const V3_FIXTURE: &str = include_str!("../fixtures/report/v3.json");
    const FUTURE_FIXTURE: &str = include_str!("../fixtures/report/future.json");

    fn fixture_report_v3() -> AgentReport {
        let mut r = fixture_report(3, Some("0.3.0"));
        r.sampling_rules = BTreeMap::from([
            ("default".into(), RuleCounts { received: 10, kept: 5, capped: 0, kept_errors: 0 }),
            ("health-checks".into(), RuleCounts { received: 2, kept: 1, capped: 0, kept_errors: 1 }),
            ("checkout-api".into(), RuleCounts { received: 0, kept: 0, capped: 1, kept_errors: 0 }),
        ]);
        r.kept_bytes = 2400;
        r.uptime_ms = Some(40_250);
        r.red = Some(RedReport {
            bounds: vec![0.01, 0.1],
            services: BTreeMap::from([(
                "checkout".into(),
                crate::red::RedCounts { requests: 10, errors: 1, duration_seconds_sum: 0.25, buckets: vec![6, 3, 1] },
            )]),
        });
        r.usage = Some(AgentUsage { cpu_seconds: 1.5, rss_bytes: 5_000_000 });
        r.probes = Some(crate::probe::Probes {
            threshold: 1 << 50,
            spans: vec![crate::probe::ProbeSpan {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b7".into(),
                parent_span_id: Some("b7ad6b7169203331".into()),
                kind: Some(crate::sampling::SpanKind::Client),
                service: "checkout".into(),
                remote_parent: Some(false),
                peer: Some("pricing:8070".into()),
                caller: None,
                destination: None,
                db: false,
                error: false,
                link: None,
                start_unix_nano: 1_700_000_000_000_000_000,
                duration_nanos: 1_500_000,
            }],
            left_out: 2,
            propagator_overrides: BTreeMap::from([("api".into(), "b3".into())]),
            pod_ip: None,
        });
        r
    }

    fn fixture_report(contract_version: u32, agent_version: Option<&str>) -> AgentReport {
        AgentReport {
            contract_version,
            agent_version: agent_version.map(String::from),
            pod: ReportedPod {
                pod_name: Some("checkout-7d9f-abcde".into()),
                namespace: Some("shop".into()),
                node_name: Some("node-1".into()),
                pod_uid: Some("0c7c1f2e-1111-2222-3333-444455556666".into()),
                workload_kind: Some("Deployment".into()),
                workload_name: Some("checkout".into()),
            },
            policy: Some("default".into()),
            config_generation: 3,
            sampling_ratio: Some(0.5),
            services: BTreeMap::from([("checkout".into(), 12)]),
            spans: SpanCounts {
                received: 12,
                sampled_out: 6,
                exported: 6,
                dropped: BTreeMap::from([("queueFull".into(), 0)]),
                queued: 0,
            },
            uptime_seconds: 40,
            uptime_ms: None,
            last_span_age_seconds: Some(2),
            truncated: None,
            sampling_rules: BTreeMap::new(),
            kept_bytes: 0,
            red: None,
            usage: None,
            probes: None,
        }
    }

    #[test]
    fn operator_reads_a_contract_1_report() {
        let report: AgentReport = serde_json::from_str(V1_FIXTURE).unwrap();
        assert_eq!(report, fixture_report(1, None));
    }

    #[test]
    fn operator_reads_the_released_contract_2_report() {
        let report: AgentReport = serde_json::from_str(V2_FIXTURE).unwrap();
        assert_eq!(report, fixture_report(2, Some("0.2.0")));
    }

    #[test]
    fn operator_reads_a_future_report_ignoring_what_it_does_not_know() {
        let report: AgentReport = serde_json::from_str(FUTURE_FIXTURE).unwrap();
        let mut want = fixture_report(9, Some("0.9.0"));
        want.spans.dropped.insert("budgetExceeded".into(), 4);
        want.red = Some(RedReport {
            bounds: vec![0.1],
            services: BTreeMap::from([(
                "checkout".into(),
                crate::red::RedCounts { requests: 12, errors: 1, duration_seconds_sum: 0.0, buckets: vec![11, 1] },
            )]),
        });
        want.usage = Some(AgentUsage { cpu_seconds: 2.0, rss_bytes: 4096 });
        assert_eq!(report, want);
    }

    #[test]
    fn operator_reads_the_contract_3_report_with_rule_counters() {
        let report: AgentReport = serde_json::from_str(V3_FIXTURE).unwrap();
        assert_eq!(report, fixture_report_v3());
        let json = serde_json::to_value(fixture_report_v3()).unwrap();
        assert_eq!(json, serde_json::from_str::<serde_json::Value>(V3_FIXTURE).unwrap());
    }

    #[test]
    fn the_current_report_serializes_as_the_released_fixture() {
        let json = serde_json::to_value(fixture_report(2, Some("0.2.0"))).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(V2_FIXTURE).unwrap();
        assert_eq!(json, fixture);
    }

    #[test]
    fn truncation_counts_are_optional_and_read_when_present() {
        let mut report = fixture_report(2, Some("0.2.0"));
        report.truncated = Some(Truncated { service_names: 1, services_left_out: 3 });
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["truncated"], serde_json::json!({"serviceNames": 1, "servicesLeftOut": 3}));
        assert_eq!(serde_json::from_value::<AgentReport>(json).unwrap(), report);
        let released: AgentReport = serde_json::from_str(V2_FIXTURE).unwrap();
        assert_eq!(released.truncated, None);
    }

    #[test]
    fn a_report_without_span_counts_is_rejected() {
        assert!(serde_json::from_str::<AgentReport>(r#"{"pod":{}}"#).is_err());
    }
}
