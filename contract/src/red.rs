//! What an agent reports of the RED figures (rate, errors, duration) it derives from every span it
//! receives, before sampling, and of its own CPU and memory. Contract 3, optional: an operator
//! that does not know these fields ignores them, and an agent that does not send them leaves the
//! operator without a baseline, nothing more.
//!
//! Counters are totals since the agent started (as for the sampling rules): the operator turns
//! the difference between two reports into rates and percentiles, so a lost report loses
//! nothing and an agent restart is recognised by a counter going down.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds, in seconds, of the duration buckets the agent counts requests in: the
/// OpenTelemetry semantic conventions' advisory buckets for `http.server.request.duration`,
/// with three more below 5 ms (sidecar-local and in-memory handlers are often that fast, and a
/// percentile inside the first bucket would say nothing). The last bucket, +Inf, is implied.
pub const DURATION_BOUNDS_SECONDS: [f64; 17] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// The RED summary of one agent: per `service.name`, the server and consumer spans received
/// since it started. Routes are on the agent's `/metrics`, not here: the report stays small.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedReport {
    /// Upper bounds of the duration buckets, in seconds ([`DURATION_BOUNDS_SECONDS`] for agents
    /// of this version); the reader uses the ones sent, so the buckets may change.
    #[serde(default)]
    pub bounds: Vec<f64>,
    /// By `service.name` (cut and capped as the report's `services`).
    #[serde(default)]
    pub services: BTreeMap<String, RedCounts>,
}

/// Requests (server and consumer spans) of one service since the agent started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedCounts {
    pub requests: u64,
    /// Of `requests`, the spans with status `ERROR`.
    #[serde(default)]
    pub errors: u64,
    /// Sum of the durations, in seconds.
    #[serde(default)]
    pub duration_seconds_sum: f64,
    /// Requests per duration bucket (not cumulative): one entry per bound, then the +Inf bucket.
    #[serde(default)]
    pub buckets: Vec<u64>,
}

/// The agent's own resource use, read from `/proc/self` when the report is built.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentUsage {
    /// CPU time (user and system) since the agent started, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

impl RedCounts {
    /// Adds `other` (same bounds) to these counts.
    pub fn add(&mut self, other: &RedCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.duration_seconds_sum += other.duration_seconds_sum;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }
}
