//! The cluster suite, step by step. Each step returns an error saying what it expected and what
//! it saw; the operator's log is attached to any failure.

pub mod bad_input;
pub mod baseline;
pub mod certificates;
pub mod chart_values;
pub mod fail_open;
pub mod golden_dry_run;
pub mod injection;
pub mod monitoring;
pub mod real_workloads;
pub mod rollout;
pub mod rollout_resilience;
pub mod secrets;
pub mod selection;
pub mod setup;
mod shared;
pub mod upgrade;

pub use shared::*;

use crate::support::StepLog;

/// Runs the whole cluster suite.
pub async fn run(log: &StepLog) -> anyhow::Result<()> {
    let mut suite = setup::fresh_suite(log).await?;
    let result = steps(&mut suite).await;
    // Cleanup runs whatever happened; a failing step's error comes first.
    let cleanup = setup::teardown(&mut suite).await;
    match (result, cleanup) {
        (Ok(()), cleanup) => cleanup,
        (Err(e), Ok(())) => Err(anyhow::anyhow!("{e:#}\n\n{}", suite.operator_log_excerpt())),
        (Err(e), Err(c)) => {
            Err(anyhow::anyhow!("{e:#}\n(cleanup failed too: {c:#})\n\n{}", suite.operator_log_excerpt()))
        }
    }
}

async fn steps(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step(&format!("operator: a local process as ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}"));
    suite.start_operator().await?;
    let started_serial = certificates::bootstrap(suite).await?;
    // E2E_ONLY=rollout runs the rollout steps alone (they need nothing from the others);
    // E2E_ONLY=resilience only the crash-loop, missed-pods and two-replica ones; E2E_ONLY=injection
    // only the injection ones; E2E_ONLY=secrets only the Secret least-privilege one.
    match std::env::var("E2E_ONLY").as_deref() {
        Ok("rollout") => return rollout_steps(suite).await,
        Ok("resilience") => return resilience_steps(suite).await,
        Ok("injection") => return injection_steps(suite).await,
        Ok("coverage") => return rollout_resilience::two_replicas_count_every_report(suite).await,
        Ok("baseline") => return baseline::prometheus_rule_follows_the_baseline(suite).await,
        Ok("secrets") => return secrets::secrets_outside_the_operator_namespace_are_refused(suite).await,
        _ => {}
    }
    bad_input::invalid_policies_are_rejected(suite).await?;
    secrets::secrets_outside_the_operator_namespace_are_refused(suite).await?;
    injection_steps(suite).await?;
    certificates::rotated_certificate_is_served_without_restart(suite, &started_serial).await?;
    selection::policy_namespace_selection_is_honoured(suite).await?;
    fail_open::pods_are_created_while_the_webhook_is_down(suite).await?;
    fail_open::injection_resumes_after_restart(suite).await?;
    rollout_steps(suite).await
}

/// Injection of workloads of every kind, and of real-world pods (a collector, a self-exporting app).
async fn injection_steps(suite: &mut Suite) -> anyhow::Result<()> {
    injection::workloads_are_injected(suite).await?;
    injection::counts_follow_pods(suite).await?;
    real_workloads::collector_and_self_exporting_app_keep_working(suite).await
}

/// The phased rollout, on workloads that exist before their policy does.
async fn rollout_steps(suite: &mut Suite) -> anyhow::Result<()> {
    let phased = rollout::pilot_first_then_expansion_after_soak(suite).await?;
    rollout::sampling_change_restarts_nothing(suite, &phased).await?;
    rollout::label_removal_restores_uninjected_pods(suite, &phased).await?;
    let paused = rollout::pause_holds_and_resume_continues(suite).await?;
    let killed = rollout::killed_operator_rollout_continues(suite).await?;
    rollout::failing_workload_is_rolled_back(suite).await?;
    resilience_steps(suite).await?;
    rollout::deleting_the_policy_restores_uninjected_pods(suite, &[phased.pilot, paused, killed]).await?;
    // Last: it leaves the operator on the upgraded chart's flags.
    upgrade::agent_upgrade_rolls_out_by_phase(suite).await
}

/// The rollout when workloads crash, the webhook misses pods, or the leading replica dies.
async fn resilience_steps(suite: &mut Suite) -> anyhow::Result<()> {
    rollout_resilience::crash_looping_workload_is_rolled_back(suite).await?;
    rollout_resilience::missed_pods_are_counted_then_repaired(suite).await?;
    rollout_resilience::two_replicas_one_leader(suite).await?;
    rollout_resilience::two_replicas_count_every_report(suite).await?;
    baseline::prometheus_rule_follows_the_baseline(suite).await
}
