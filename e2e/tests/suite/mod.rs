//! The cluster suite, step by step. Each step returns an error saying what it expected and what
//! it saw; the operator's log is attached to any failure.

pub mod bad_input;
pub mod certificates;
pub mod chart_values;
pub mod fail_open;
pub mod injection;
pub mod rollout;
pub mod selection;
pub mod setup;

use crate::support::cluster::Cluster;
use crate::support::objects::Namespaces;
use crate::support::operator::{log_tail, Operator};
use crate::support::StepLog;
use anyhow::Context as _;
use std::path::PathBuf;

/// Chart release, its namespace and the names the chart derives from them.
pub const RELEASE: &str = "tracelight";
pub const NAMESPACE: &str = "tracelight-system";
pub const SERVICE_ACCOUNT: &str = "tracelight";
pub const WEBHOOK_CONFIG: &str = "tracelight";
pub const CERT_SECRET: &str = "tracelight-webhook-tls";
/// The chart's default `webhook.timeoutSeconds`.
pub const WEBHOOK_TIMEOUT_SECONDS: u64 = 5;
/// A short certificate lifetime, so that a renewal happens during the suite (due when a third
/// of the lifetime is left: about 60s after issuance).
pub const CERT_VALIDITY: &str = "90s";
pub const CERT_CHECK_INTERVAL: &str = "3s";

/// State shared by the steps.
pub struct Suite {
    pub cluster: Cluster,
    pub log: StepLog,
    pub namespaces: Namespaces,
    pub webhook_port: u16,
    pub admin_port: u16,
    /// `tracelight controller` flags: the chart's own, with loopback addresses and short
    /// certificate lifetimes.
    pub operator_args: Vec<String>,
    /// Kubeconfig with the chart ServiceAccount's token.
    pub sa_kubeconfig: PathBuf,
    pub operator: Option<Operator>,
    /// Logs of every operator run, for the RBAC check and failure reports.
    pub operator_logs: Vec<PathBuf>,
    /// A namespace where injection is on, once a step has set one up.
    pub active: Option<Active>,
}

/// A namespace a policy has made active, and what injected pods there must carry.
#[derive(Clone, Debug)]
pub struct Active {
    pub namespace: String,
    /// The policy, as it was when it marked the namespace Active.
    pub policy: tracelight::api::TracingPolicy,
}

impl Suite {
    /// Starts the operator (a new process and log) and waits until it is ready.
    pub async fn start_operator(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.operator.is_none(), "the operator is already running");
        let log = crate::support::work_dir().join(format!("operator-{}.log", self.operator_logs.len() + 1));
        self.operator_logs.push(log.clone());
        let operator = Operator::start(&self.sa_kubeconfig, NAMESPACE, &self.operator_args, self.admin_port, log)?;
        let operator = self.operator.insert(operator);
        operator.wait_ready(std::time::Duration::from_secs(60)).await
    }

    pub fn operator(&mut self) -> anyhow::Result<&mut Operator> {
        self.operator.as_mut().context("the operator is not running")
    }

    /// Stops the operator and checks it shut down cleanly.
    pub fn stop_operator(&mut self) -> anyhow::Result<()> {
        let mut operator = self.operator.take().context("the operator is not running")?;
        let status = operator.stop()?;
        anyhow::ensure!(status.success(), "the operator exited with {status} on SIGTERM; {}", operator.log_excerpt());
        Ok(())
    }

    /// The tail of the latest operator log, if there is one.
    pub fn operator_log_excerpt(&self) -> String {
        self.operator_logs.last().map_or_else(|| "(the operator was not started)".into(), |p| log_tail(p, 80))
    }
}

/// Runs the whole cluster suite.
pub async fn run(log: &StepLog) -> anyhow::Result<()> {
    log.step("cluster: e2e/cluster/up.sh");
    let cluster = Cluster::up().await?;
    setup::refuse_if_demo_running()?;
    log.step("clean slate: remove what an earlier run or demo may have left");
    setup::clean_slate(&cluster).await?;

    let mut suite = match setup::install(cluster.clone(), log).await {
        Ok(suite) => suite,
        Err(e) => {
            if let Err(cleanup) = setup::clean_slate(&cluster).await {
                eprintln!("[e2e] cleanup after the failed install: {cleanup:#}");
            }
            return Err(e);
        }
    };
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
    // E2E_ONLY=rollout runs the rollout steps alone (they need nothing from the others).
    if std::env::var("E2E_ONLY").is_ok_and(|v| v == "rollout") {
        return rollout_steps(suite).await;
    }
    bad_input::invalid_policies_are_rejected(suite).await?;
    injection::workloads_are_injected(suite).await?;
    certificates::rotated_certificate_is_served_without_restart(suite, &started_serial).await?;
    selection::policy_namespace_selection_is_honoured(suite).await?;
    fail_open::pods_are_created_while_the_webhook_is_down(suite).await?;
    fail_open::injection_resumes_after_restart(suite).await?;
    rollout_steps(suite).await
}

/// The phased rollout, on workloads that exist before their policy does.
async fn rollout_steps(suite: &mut Suite) -> anyhow::Result<()> {
    let phased = rollout::pilot_first_then_expansion_after_soak(suite).await?;
    rollout::sampling_change_restarts_nothing(suite, &phased).await?;
    rollout::label_removal_restores_uninjected_pods(suite, &phased).await?;
    let paused = rollout::pause_holds_and_resume_continues(suite).await?;
    let killed = rollout::killed_operator_rollout_continues(suite).await?;
    rollout::failing_workload_is_rolled_back(suite).await?;
    rollout::deleting_the_policy_restores_uninjected_pods(suite, &[phased.pilot, paused, killed]).await?;
    Ok(())
}
