//! The cluster suite's chart installation and cleanup (`e2e/tests/suite/setup.rs`), shared
//! rather than copied: this module gives `setup.rs` the parent it expects (the constants and the
//! [`Suite`] state of `e2e/tests/suite/mod.rs`), without compiling the suite's own steps.
//! When the suite's `Suite` changes, this copy of it must follow (the compiler says so).

use crate::support::cluster::Cluster;
use crate::support::objects::Namespaces;
use crate::support::operator::{log_tail, Operator};
use crate::support::StepLog;
use anyhow::{ensure, Context as _};
use kube::api::Api;
use kube::Client;
use std::path::PathBuf;
use std::time::Duration;
use tracelight::api::{NamespaceState, TracingPolicy};

#[allow(dead_code)]
#[path = "../tests/suite/setup.rs"]
pub mod setup;

pub const RELEASE: &str = "tracelight";
pub const NAMESPACE: &str = "tracelight-system";
pub const SERVICE_ACCOUNT: &str = "tracelight";
pub const WEBHOOK_CONFIG: &str = "tracelight";
pub const CERT_VALIDITY: &str = "90s";
pub const CERT_CHECK_INTERVAL: &str = "3s";

/// The suite's state (as `e2e/tests/suite/mod.rs` defines it; `setup::install` builds it).
#[allow(dead_code)]
pub struct Suite {
    pub cluster: Cluster,
    pub log: StepLog,
    pub namespaces: Namespaces,
    pub webhook_port: u16,
    pub admin_port: u16,
    pub operator_args: Vec<String>,
    pub sa_kubeconfig: PathBuf,
    pub operator: Option<Operator>,
    pub operator_logs: Vec<PathBuf>,
    pub active: Option<Active>,
}

#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct Active {
    pub namespace: String,
    pub policy: TracingPolicy,
}

impl Suite {
    /// Starts the operator (a new process and log) and waits until it is ready.
    pub async fn start_operator(&mut self) -> anyhow::Result<()> {
        ensure!(self.operator.is_none(), "the operator is already running");
        let log = crate::support::work_dir().join(format!("traces-operator-{}.log", self.operator_logs.len() + 1));
        self.operator_logs.push(log.clone());
        let operator = Operator::start(&self.sa_kubeconfig, NAMESPACE, &self.operator_args, self.admin_port, log)?;
        let operator = self.operator.insert(operator);
        operator.wait_ready(Duration::from_secs(60)).await
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
    crate::support::wait::until(
        &format!("policy {policy} to mark namespace {namespace} Active"),
        Duration::from_secs(60),
        || async {
            let p = api.get(policy).await?;
            let status = p.status.as_ref().context("no status yet")?;
            let state = status.namespace_state(namespace);
            ensure!(state == Some(NamespaceState::Active), "state {state:?}; status {status:?}");
            Ok(p)
        },
    )
    .await
}
