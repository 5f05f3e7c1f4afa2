//! End-to-end suite: the real chart, installed with the real `helm` into a real control plane
//! (etcd, kube-apiserver, controller-manager, scheduler; kwok nodes; see e2e/cluster), and the
//! real operator binary running as a local process with the chart's ServiceAccount identity.
//!
//! `make e2e` runs it (`cargo test --features e2e --test e2e`). It starts the cluster if needed
//! (`e2e/cluster/up.sh`) and leaves nothing of its own behind. It owns that cluster's Tracelight
//! objects: it first removes any `tracelight` release, every TracingPolicy and the CRD (helm never
//! upgrades a CRD), and refuses to run while `make demo`'s operator is running.
//!
//! `E2E_ONLY=rollout make e2e` runs only the phased-rollout steps (after the certificate
//! bootstrap), for a quicker loop while working on the rollout; `E2E_ONLY=resilience` only its
//! crash-loop, missed-pod and two-replica steps; `E2E_ONLY=injection` only the injection steps; `E2E_ONLY=secrets` only the Secret least-privilege step; `E2E_ONLY=coverage` only the two-replica coverage step; `E2E_ONLY=baseline` only the baseline and regression-rule step.
//!
//! Steps that stop or restart the operator cannot interleave with the others, so the cluster
//! part is one test, [`operator_on_a_real_cluster`], running its steps in order and logging each.
//! [`invalid_chart_values_are_rejected_by_the_schema`] and
//! [`injected_golden_pods_are_accepted_by_the_api_server`] need no operator and run beside it;
//! [`monitoring_objects_install_when_their_crds_exist`] takes the cluster lock too (it installs
//! and removes the Prometheus Operator CRDs), so it runs before or after the suite.

mod scale;
mod suite;
mod support;

use support::cluster::Cluster;
use support::StepLog;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_on_a_real_cluster() {
    let _lock = support::cluster_lock().expect("the e2e cluster lock");
    let log = StepLog::new();
    let result = suite::run(&log).await;
    eprintln!("\n[e2e] suite finished in {:.1}s", log.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("end-to-end suite failed: {e:#}");
    }
}

#[tokio::test]
async fn invalid_chart_values_are_rejected_by_the_schema() {
    let cluster = Cluster::up().await.expect("cluster");
    suite::chart_values::rejected_by_schema(&cluster).await.expect("chart values schema");
}

/// Holds the cluster lock like the suite: it installs and removes the Prometheus Operator CRDs,
/// which the suite's default install must not see.
#[tokio::test]
async fn monitoring_objects_install_when_their_crds_exist() {
    let _lock = support::cluster_lock().expect("the e2e cluster lock");
    let cluster = Cluster::up().await.expect("cluster");
    suite::monitoring::objects_install_when_their_crds_exist(&cluster).await.expect("monitoring objects");
}

#[tokio::test]
async fn injected_golden_pods_are_accepted_by_the_api_server() {
    let cluster = Cluster::up().await.expect("cluster");
    suite::golden_dry_run::accepted_without_warnings(&cluster).await.expect("golden pods in a server-side dry run");
}
