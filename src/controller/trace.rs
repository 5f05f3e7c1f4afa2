//! What a reconcile's span says (exported with the operator's traces, see
//! [`crate::telemetry::traces`]): what the rollout plan decided and why it waits, and how the
//! reconcile ended. The field names are declared on [`super::reconcile::reconcile`]'s span.

use super::reconcile::Error;
use crate::api::PolicyPhase;
use crate::decision::governance::Gates;
use crate::rollout::{Plan, RolloutPhase};
use kube::runtime::controller::Action;
use tracing::Span;

/// Why the rollout is not restarting anything now (`none` when it is, or has nothing left to do).
/// Besides these, the reconcile records `invalid_spec` (nothing is planned) and
/// `workloads_leaving` (a deleted policy waits for its workloads to lose injection).
pub fn wait_reason(plan: &Plan, gates: Gates) -> &'static str {
    match plan.state {
        RolloutPhase::Degraded => "degraded",
        RolloutPhase::Paused => "paused",
        _ if !gates.secrets_ready => "secret_missing",
        _ if gates.dry_run => "dry_run",
        RolloutPhase::Soaking => "soak",
        RolloutPhase::Pending => "no_namespace",
        RolloutPhase::Progressing if plan.restarts.is_empty() && !plan.in_flight.is_empty() => "batch_in_flight",
        RolloutPhase::Progressing | RolloutPhase::Complete => "none",
    }
}

/// The status phase as it reads in `kubectl get tracingpolicy` (`None` before the first status).
pub fn phase_name(phase: Option<&PolicyPhase>) -> String {
    phase.map_or_else(|| "None".to_string(), |p| format!("{p:?}"))
}

/// Records the rollout plan on `span` (the reconcile's).
pub fn record_plan(span: &Span, plan: &Plan, gates: Gates) {
    span.record("phase_after", format!("{:?}", plan.state));
    span.record("decision", plan.message.as_str());
    span.record("waiting", wait_reason(plan, gates));
    if plan.state == RolloutPhase::Soaking {
        if let Some(remaining) = plan.requeue_after {
            span.record("soak_remaining_s", remaining.as_secs());
        }
    }
    span.record("restarts", plan.restarts.len());
    span.record("rollbacks", plan.rollbacks.len());
    span.record("in_flight", plan.in_flight.len());
    span.record("active_namespaces", plan.active_namespaces.len());
}

/// Records how the reconcile ended on `span`: the requeue, or the error (a span in error).
pub fn record_result(span: &Span, result: &Result<Action, Error>) {
    match result {
        Ok(action) => {
            span.record("result", format!("{action:?}"));
        }
        // A deleted policy waiting for its workloads: not a failure.
        Err(e) if e.is_waiting() => {
            span.record("result", "leaving");
            span.record("waiting", "workloads_leaving");
            span.record("error", e.to_string());
        }
        Err(e) => {
            span.record("result", e.kind());
            span.record("error", e.to_string());
            span.record("otel.status_code", "error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Progress, WorkloadId, WorkloadKind};

    fn plan(state: RolloutPhase) -> Plan {
        Plan {
            state,
            active_namespaces: vec!["shop".into()],
            restarts: Vec::new(),
            rollbacks: Vec::new(),
            in_flight: Vec::new(),
            progress: Progress::default(),
            message: String::new(),
            requeue_after: None,
        }
    }

    const OPEN: Gates = Gates { paused: false, dry_run: false, secrets_ready: true };

    #[test]
    fn a_rollout_waits_for_its_soak_its_batch_a_pause_or_a_degradation() {
        assert_eq!(wait_reason(&plan(RolloutPhase::Soaking), OPEN), "soak");
        assert_eq!(wait_reason(&plan(RolloutPhase::Paused), OPEN), "paused");
        assert_eq!(wait_reason(&plan(RolloutPhase::Degraded), OPEN), "degraded");
        assert_eq!(wait_reason(&plan(RolloutPhase::Pending), OPEN), "no_namespace");
        assert_eq!(wait_reason(&plan(RolloutPhase::Complete), OPEN), "none");
        let mut in_flight = plan(RolloutPhase::Progressing);
        in_flight.in_flight.push(WorkloadId {
            namespace: "shop".into(),
            kind: WorkloadKind::Deployment,
            name: "a".into(),
        });
        assert_eq!(wait_reason(&in_flight, OPEN), "batch_in_flight");
    }

    #[test]
    fn missing_secrets_and_dry_run_are_reasons_too_but_a_degradation_comes_first() {
        let missing = Gates { secrets_ready: false, ..OPEN };
        assert_eq!(wait_reason(&plan(RolloutPhase::Progressing), missing), "secret_missing");
        assert_eq!(wait_reason(&plan(RolloutPhase::Degraded), missing), "degraded");
        let dry = Gates { dry_run: true, ..OPEN };
        assert_eq!(wait_reason(&plan(RolloutPhase::Soaking), dry), "dry_run");
    }

    #[test]
    fn phase_names_read_as_in_the_status() {
        assert_eq!(phase_name(Some(&PolicyPhase::Progressing)), "Progressing");
        assert_eq!(phase_name(None), "None");
    }
}
