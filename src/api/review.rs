//! After the rollout: the baseline recorded when a phase's soak ends, the per-workload
//! regression alerts rendered against it, and the scheduled review of coverage and overhead —
//! their spec (`spec.review`, `spec.alerting`) and status (`status.baseline`, `status.review`).

use super::quantity::Duration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the operator looks at coverage and overhead again after the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewSpec {
    /// How often coverage is reviewed; a review also runs whenever the set of workloads changes.
    /// A workload whose agents received no span for a whole interval counts as gone silent.
    /// At least `10s`. Default: `24h`.
    #[serde(default = "default_review_interval")]
    #[schemars(default = "default_review_interval")]
    pub interval: Duration,
    /// Bound on an agent's CPU, in millicores (its average since the previous review, per pod):
    /// above it the review reports `OverheadAboveBound`. Default: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_agent_cpu_millicores: Option<u32>,
    /// Bound on an agent's resident memory, in MiB: above it the review reports
    /// `OverheadAboveBound`. Default: no bound.
    #[serde(default, rename = "maxAgentMemoryMiB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_agent_memory_mib: Option<u32>,
}

impl Default for ReviewSpec {
    fn default() -> Self {
        ReviewSpec { interval: default_review_interval(), max_agent_cpu_millicores: None, max_agent_memory_mib: None }
    }
}

pub fn default_review_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Shortest review interval accepted.
pub const MIN_REVIEW_INTERVAL_SECS: u64 = 10;

/// Alerts the operator renders for this policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertingSpec {
    /// Render per-workload regression alerts (latency and error rate against `status.baseline`)
    /// as a `PrometheusRule` (monitoring.coreos.com/v1) named `tracelight-baseline-<policy>` in
    /// the operator's namespace, owned by this policy. Needs the Prometheus Operator's CRDs: without
    /// them nothing is written and the operator logs why. Default: `false`.
    #[serde(default)]
    pub regression_rules: bool,
    /// The latency alert fires when a workload's p99 duration exceeds its baseline p99 times this
    /// factor. Default: `2`.
    #[serde(default = "default_latency_factor")]
    #[schemars(default = "default_latency_factor", range(min = 1.0, max = 1000.0))]
    pub latency_factor: f64,
    /// The error-rate alert fires when a workload's share of failed requests exceeds its baseline
    /// share by more than this (0.05: five percentage points). Default: `0.05`.
    #[serde(default = "default_error_rate_increase")]
    #[schemars(default = "default_error_rate_increase", range(min = 0.0, max = 1.0))]
    pub error_rate_increase: f64,
    /// How long a condition must hold before an alert fires. Default: `10m`.
    #[serde(default = "default_alert_for", rename = "for")]
    #[schemars(default = "default_alert_for")]
    pub for_: Duration,
    /// Labels of the `PrometheusRule` object, for the Prometheus `ruleSelector` that should load
    /// it (for example `release: kube-prometheus-stack`). Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_labels: BTreeMap<String, String>,
}

impl Default for AlertingSpec {
    fn default() -> Self {
        AlertingSpec {
            regression_rules: false,
            latency_factor: default_latency_factor(),
            error_rate_increase: default_error_rate_increase(),
            for_: default_alert_for(),
            rule_labels: BTreeMap::new(),
        }
    }
}

pub fn default_latency_factor() -> f64 {
    2.0
}
pub fn default_error_rate_increase() -> f64 {
    0.05
}
pub fn default_alert_for() -> Duration {
    Duration::from_secs(600)
}

/// What "normal" looked like when tracing went live: per workload, measured by its agents
/// (before sampling) over the soak of a rollout phase.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineStatus {
    /// The rollout phase whose soak end recorded the latest figures.
    pub phase: String,
    /// The soak the latest figures cover.
    pub window_start: Time,
    pub window_end: Time,
    /// Per workload (at most 200), each with the window it was measured over: a workload not
    /// measured at the latest soak end keeps its earlier figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadBaseline>,
}

impl Default for BaselineStatus {
    /// An empty baseline over an empty window at the epoch.
    fn default() -> Self {
        BaselineStatus { phase: String::new(), window_start: epoch(), window_end: epoch(), workloads: Vec::new() }
    }
}

impl Default for WorkloadBaseline {
    /// No figures, over an empty window at the epoch.
    fn default() -> Self {
        WorkloadBaseline {
            namespace: String::new(),
            kind: String::new(),
            name: String::new(),
            services: Vec::new(),
            window_start: epoch(),
            window_end: epoch(),
            pods: 0,
            requests_per_second: 0.0,
            error_rate: 0.0,
            duration_p50_seconds: None,
            duration_p95_seconds: None,
            duration_p99_seconds: None,
            agent_cpu_millicores: None,
            agent_memory_bytes: None,
        }
    }
}

fn epoch() -> Time {
    Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Most workloads in `status.baseline`.
pub const MAX_BASELINE_WORKLOADS: usize = 200;

/// One workload's baseline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadBaseline {
    pub namespace: String,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    pub name: String,
    /// Its `service.name`s, as its agents reported them (the alerts select on them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The window measured.
    pub window_start: Time,
    pub window_end: Time,
    /// Pods whose agents' counters cover the window.
    pub pods: u32,
    /// Requests (server and consumer spans) per second, all its pods together.
    pub requests_per_second: f64,
    /// Share of requests that failed (span status `ERROR`), 0 to 1.
    pub error_rate: f64,
    /// Duration percentiles in seconds, interpolated within the agents' histogram buckets as
    /// Prometheus's `histogram_quantile` does; absent without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_p50_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_p95_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_p99_seconds: Option<f64>,
    /// The agent's CPU per pod over the window, in millicores (average over pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_cpu_millicores: Option<f64>,
    /// The agent's resident memory per pod at the window's end, in bytes (average over pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_memory_bytes: Option<u64>,
}

/// The last review of coverage and overhead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewStatus {
    pub last_review_time: Time,
    /// When the next scheduled review is due (a change of workloads brings it forward).
    pub next_review_time: Time,
    /// Hash of the governed workloads reviewed: another set of workloads triggers a review.
    #[serde(default)]
    pub workloads_hash: String,
    /// What the review found (at most 50; condition `Regression` sums them up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<ReviewFinding>,
}

/// Most findings kept in the status.
pub const MAX_FINDINGS: usize = 50;

/// One regression found by a review.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewFinding {
    pub kind: FindingKind,
    pub namespace: String,
    /// `Kind/name` of the workload.
    pub workload: String,
    pub message: String,
}

/// What a review can find.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum FindingKind {
    /// A workload of an active namespace whose pods carry no agent (not opted out, not excluded).
    NotInstrumented,
    /// A workload whose agents report but received no span for a whole review interval, after
    /// receiving spans before.
    WentSilent,
    /// A workload whose agents dropped spans since the previous review.
    SpansDropped,
    /// A workload whose agents use more CPU or memory than `spec.review` allows.
    OverheadAboveBound,
    /// A workload at one end of a broken trace link (from the probe traces: its calls do not
    /// continue the caller's trace).
    TracesBroken,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::NotInstrumented => "NotInstrumented",
            FindingKind::WentSilent => "WentSilent",
            FindingKind::SpansDropped => "SpansDropped",
            FindingKind::OverheadAboveBound => "OverheadAboveBound",
            FindingKind::TracesBroken => "TracesBroken",
        }
    }
}
