//! The agent's self-report: the contract between the agent, which pushes it, and the operator,
//! which turns the reports of all pods into coverage (who sends spans, which services, which
//! config generation is in effect).
//!
//! The channel is authenticated: the agent sends a projected ServiceAccount token of audience
//! [`REPORT_AUDIENCE`], which only the operator accepts (after a TokenReview) and which binds the
//! report to the pod it was issued for. See `webhook::reports` for the receiving side.

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

/// One agent's report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
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
    /// Seconds since the agent last received a span; none when it never has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_span_age_seconds: Option<u64>,
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

    #[test]
    fn a_report_round_trips_and_older_agents_parse() {
        let json = r#"{"pod":{"podName":"a-1","namespace":"shop","podUid":"u1"},"policy":"p","configGeneration":3,
            "samplingRatio":0.5,"services":{"frontend":12},"spans":{"received":12,"sampledOut":6,"exported":6,
            "dropped":{"queueFull":0},"queued":0},"uptimeSeconds":40}"#;
        let report: AgentReport = serde_json::from_str(json).unwrap();
        assert_eq!(report.pod.pod_name.as_deref(), Some("a-1"));
        assert_eq!(report.services["frontend"], 12);
        assert_eq!(report.last_span_age_seconds, None);
        let back: AgentReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn a_report_without_span_counts_is_rejected() {
        assert!(serde_json::from_str::<AgentReport>(r#"{"pod":{}}"#).is_err());
    }
}
