//! After the rollout, as pure functions: records the baseline when a phase's soak ends, runs
//! the scheduled review, and renders the per-workload regression `PrometheusRule` from the
//! baseline. The decisions are `crate::baseline` and `crate::review`'s; this module gathers
//! their inputs, writes their results into the status being built, and says what the
//! controller does once the status is written ([`FollowUp`]: the rule and the Events).

use super::status::condition;
use crate::api::{PolicyPhase, TracingPolicy, TracingPolicyStatus, WorkloadCoverage};
use crate::baseline::{self, rules, PodHistory};
use crate::review;
use crate::rollout::coverage::PodReport;
use crate::rollout::WorkloadId;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to do once the status is written.
#[derive(Debug, Default)]
pub struct FollowUp {
    /// Events on the policy: type, reason and note (action `Review`).
    pub events: Vec<(EventType, String, String)>,
    /// The rule's spec to apply, or `None` to remove it.
    pub rule: Option<serde_json::Value>,
    /// When to look again (the next review).
    pub requeue_after: Option<Duration>,
    /// Whether the policy has a baseline (a rule may exist from an earlier process).
    pub had_baseline: bool,
}

/// Pod uids per governed workload, read before the cache snapshot goes.
pub type WorkloadPods = BTreeMap<WorkloadId, Vec<String>>;

/// Records the baseline and runs the review into `status`; returns what to do after the write.
/// `reports`: the agents' reports of the workloads' pods, by pod uid.
pub fn decide(
    policy: &TracingPolicy,
    coverage: &BTreeMap<String, Vec<(WorkloadId, WorkloadCoverage)>>,
    pods: &WorkloadPods,
    status: &mut TracingPolicyStatus,
    reports: &BTreeMap<String, PodReport>,
    now: Timestamp,
) -> FollowUp {
    let previous = policy.status.as_ref();
    let histories = |id: &WorkloadId| -> Vec<&PodHistory> {
        pods.get(id).into_iter().flatten().filter_map(|uid| reports.get(uid.as_str())).map(|r| &r.history).collect()
    };
    let mut follow = FollowUp::default();

    let soaks: Vec<Duration> = policy.spec.rollout.phases.iter().map(|p| p.soak_duration.get()).collect();
    let recorded = previous.and_then(|s| s.baseline.as_ref());
    if let Some((phase, start, end)) =
        baseline::soak_ended(previous.and_then(|s| s.rollout.as_ref()), &soaks, recorded, now)
    {
        let name = policy.spec.rollout.phases.get(phase).map_or("", |p| p.name.as_str());
        let inputs = coverage.iter().flat_map(|(ns, all)| {
            all.iter().map(|(id, c)| baseline::WorkloadInput {
                namespace: ns.clone(),
                kind: c.kind.clone(),
                name: c.name.clone(),
                services: c.services.clone(),
                pods: histories(id),
            })
        });
        let next = baseline::record(status.baseline.as_ref(), name, start, end, inputs);
        let note = format!(
            "baseline of phase {name:?} recorded for {} workload(s), {start} to {end} (status.baseline)",
            next.workloads.iter().filter(|w| w.window_start.0 == start).count()
        );
        tracing::info!(phase = %name, %start, %end, workloads = next.workloads.len(), "baseline recorded");
        follow.events.push((EventType::Normal, "BaselineRecorded".into(), note));
        status.baseline = Some(next);
    }

    let hash = review::workloads_hash(
        coverage
            .iter()
            .flat_map(|(ns, all)| all.iter().map(move |(_, c)| (ns.as_str(), c.kind.as_str(), c.name.as_str()))),
    );
    let complete = status.phase == Some(PolicyPhase::Complete);
    let previous_review = previous.and_then(|s| s.review.as_ref());
    if complete && review::due(previous_review, &hash, now) {
        let excluded = |id: &WorkloadId| {
            status.rollout.as_ref().is_some_and(|r| {
                r.excluded
                    .iter()
                    .any(|e| e.namespace == id.namespace && e.kind == id.kind.as_str() && e.name == id.name)
            })
        };
        let active = |ns: &str| status.namespace_state(ns) == Some(crate::api::NamespaceState::Active);
        // The join's verdicts are in the status (`continuity::annotate`), not in the coverage.
        let broken_link = |ns: &str, id: &WorkloadId| {
            let w = status
                .namespaces
                .iter()
                .find(|n| n.name == ns)?
                .workloads
                .iter()
                .find(|w| w.kind == id.kind.as_str() && w.name == id.name)?;
            let traces = w.traces.as_ref().filter(|t| t.state == crate::api::ContinuityState::Broken)?;
            traces.broken.clone()
        };
        let inputs: Vec<review::WorkloadInput> = coverage
            .iter()
            .flat_map(|(ns, all)| {
                all.iter().map(|(id, c)| review::WorkloadInput {
                    namespace: ns.clone(),
                    coverage: c,
                    active: active(ns),
                    excluded: excluded(id),
                    last_span_at: pods
                        .get(id)
                        .into_iter()
                        .flatten()
                        .filter_map(|uid| reports.get(uid.as_str())?.last_span_at)
                        .max(),
                    pods: histories(id),
                    broken_link: broken_link(ns, id),
                })
            })
            .collect();
        let next = review::review(&policy.spec.review, previous_review, hash, &inputs, now);
        for f in review::new_findings(previous_review, &next) {
            let note = format!("{} {}/{}: {}", f.kind.as_str(), f.namespace, f.workload, f.message);
            follow.events.push((EventType::Warning, f.kind.as_str().to_string(), note));
        }
        tracing::info!(findings = next.findings.len(), "coverage reviewed");
        status.review = Some(next);
    }
    if let Some(r) = &status.review {
        let (is_regressed, reason, message) = review::condition(r);
        let prev_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
        let c = condition(
            review::REGRESSION,
            is_regressed,
            &reason,
            message,
            policy.metadata.generation,
            prev_conditions,
            now,
        );
        status.conditions.retain(|c| c.type_ != review::REGRESSION);
        status.conditions.push(c);
        let left = r.next_review_time.0.duration_since(now);
        follow.requeue_after =
            Some(Duration::try_from(left).unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1)));
    }

    follow.had_baseline = status.baseline.is_some();
    follow.rule = match (&policy.spec.alerting, &status.baseline) {
        (a, Some(b)) if a.regression_rules => Some(rules::rule_spec(&policy.name_any(), b, a)),
        _ => None,
    };
    follow
}
