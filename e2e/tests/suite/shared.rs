//! What the cluster suite shares with the traces test (`e2e/traces`), which includes this file:
//! the chart's names, the [`Suite`] state that `setup.rs` builds, and waiting for a policy to
//! activate a namespace. One definition, so the two binaries cannot drift apart.

use crate::support::cluster::Cluster;
use crate::support::objects::Namespaces;
use crate::support::operator::{log_tail, Operator};
use crate::support::{wait, StepLog};
use anyhow::{ensure, Context as _};
use kube::api::Api;
use kube::Client;
use std::path::PathBuf;
use std::time::Duration;
use tracelight::api::{NamespaceState, TracingPolicy};

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
    /// The `--set` values the chart was installed with.
    pub chart_values: Vec<String>,
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
    pub policy: TracingPolicy,
}

impl Suite {
    /// Starts the operator (a new process and log, named after the test binary) and waits until it
    /// is ready.
    pub async fn start_operator(&mut self) -> anyhow::Result<()> {
        ensure!(self.operator.is_none(), "the operator is already running");
        let log = crate::support::work_dir().join(format!(
            "{}-operator-{}.log",
            env!("CARGO_CRATE_NAME"),
            self.operator_logs.len() + 1
        ));
        self.operator_logs.push(log.clone());
        let operator = Operator::start(&self.sa_kubeconfig, NAMESPACE, &self.operator_args, self.admin_port, log)?;
        let operator = self.operator.insert(operator);
        operator.wait_ready(Duration::from_secs(60)).await
    }

    pub fn operator(&mut self) -> anyhow::Result<&mut Operator> {
        self.operator.as_mut().context("the operator is not running")
    }

    /// Stops the operator and checks it shut down cleanly.
    pub fn stop_operator(&mut self) -> anyhow::Result<()> {
        let mut operator = self.operator.take().context("the operator is not running")?;
        let status = operator.stop()?;
        ensure!(status.success(), "the operator exited with {status} on SIGTERM; {}", operator.log_excerpt());
        Ok(())
    }

    /// The tail of the latest operator log, if there is one.
    pub fn operator_log_excerpt(&self) -> String {
        self.operator_logs.last().map_or_else(|| "(the operator was not started)".into(), |p| log_tail(p, 80))
    }
}

/// Waits until `policy`'s status marks `namespace` Active; returns the policy as it is then.
pub async fn wait_active(client: &Client, policy: &str, namespace: &str) -> anyhow::Result<TracingPolicy> {
    let api = Api::<TracingPolicy>::all(client.clone());
    wait::until(&format!("policy {policy} to mark namespace {namespace} Active"), Duration::from_secs(60), || async {
        let p = api.get(policy).await?;
        let status = p.status.as_ref().context("no status yet")?;
        let state = status.namespace_state(namespace);
        ensure!(state == Some(NamespaceState::Active), "state {state:?}; status {status:?}");
        Ok(p)
    })
    .await
}
