//! The chart's monitoring objects (ServiceMonitor, PodMonitor, PrometheusRule, dashboard
//! ConfigMap) on a cluster that serves the Prometheus Operator CRDs: without them, enabling one
//! fails the install clearly; with them (taken from the prometheus-operator Go module by
//! `e2e/alerts/build.sh crds`), the chart installs and the API server accepts and keeps every
//! object as rendered. The CRDs are removed again afterwards, so the rest of the suite (the
//! default install, monitoring off) runs on a cluster without them.

use crate::support::cluster::{checked, Cluster};
use crate::support::repo_root;
use anyhow::{ensure, Context};
use std::path::PathBuf;
use std::process::Command;

const RELEASE: &str = "e2e-monitoring";
const NAMESPACE: &str = "e2e-monitoring";
const CRDS: [&str; 3] = [
    "servicemonitors.monitoring.coreos.com",
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
];

/// Every monitoring value on; the release's webhook selects no namespace (a label nothing
/// carries), so it cannot touch pods of the suite running beside it.
fn values() -> Vec<String> {
    [
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboard.enabled=true",
        "monitoring.serviceMonitor.labels.release=prometheus",
        "replicas=1",
        "webhook.namespaceSelector.key=tracelight.io/e2e-monitoring-never",
    ]
    .iter()
    .flat_map(|v| ["--set".to_string(), v.to_string()])
    .collect()
}

pub(super) fn crd_dir() -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("e2e/alerts/build.sh")).arg("crds");
    let out = checked(cmd)?;
    Ok(PathBuf::from(out.lines().last().unwrap_or_default().trim()))
}

pub async fn objects_install_when_their_crds_exist(cluster: &Cluster) -> anyhow::Result<()> {
    let crds = crd_dir()?;
    remove(cluster, &crds)?;
    let result = install_and_check(cluster, &crds).await;
    let cleanup = remove(cluster, &crds);
    result.and(cleanup)
}

async fn install_and_check(cluster: &Cluster, crds: &std::path::Path) -> anyhow::Result<()> {
    let chart = repo_root().join("charts/tracelight").display().to_string();
    let mut install: Vec<String> =
        ["install", RELEASE, &chart, "-n", NAMESPACE, "--create-namespace", "--skip-crds"].map(String::from).to_vec();
    install.extend(values());

    // Without the CRDs the install stops before creating anything, naming the value.
    let mut dry_run = install.clone();
    dry_run.push("--dry-run=server".into());
    let out = cluster.helm_output(&dry_run)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "helm install with monitoring on passed on a cluster without the CRDs");
    ensure!(stderr.contains("needs the Prometheus Operator CRDs"), "unclear refusal without the CRDs: {stderr}");
    eprintln!("[e2e]    without the Prometheus Operator CRDs: refused ({})", stderr.trim().replace('\n', " "));

    for name in CRDS {
        let file = crds.join(format!("monitoring.coreos.com_{}.yaml", name.split('.').next().unwrap_or_default()));
        // Server-side: the CRDs are too large for the last-applied annotation.
        cluster.kubectl(["apply", "--server-side", "--force-conflicts", "-f", &file.display().to_string()])?;
    }
    let crd_names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
    let mut wait = vec!["wait", "--for", "condition=Established", "--timeout", "60s"];
    wait.extend(crd_names.iter().map(String::as_str));
    cluster.kubectl(wait)?;

    cluster.helm(&install).context("helm install with monitoring on")?;
    let names =
        cluster.kubectl(["get", "servicemonitors,podmonitors,prometheusrules", "-n", NAMESPACE, "-o", "name"])?;
    let mut names: Vec<&str> = names.lines().collect();
    names.sort_unstable();
    ensure!(
        names
            == [
                "podmonitor.monitoring.coreos.com/e2e-monitoring-tracelight-agents",
                "prometheusrule.monitoring.coreos.com/e2e-monitoring-tracelight",
                "servicemonitor.monitoring.coreos.com/e2e-monitoring-tracelight",
            ],
        "monitoring objects in {NAMESPACE}: {names:?}"
    );

    // The API server kept what the chart rendered (nothing pruned by the CRDs' schemas).
    let jsonpath = |kind: &str, name: &str, path: &str| {
        cluster.kubectl(["get", kind, name, "-n", NAMESPACE, "-o", &format!("jsonpath={path}")])
    };
    let alerts = jsonpath("prometheusrule", "e2e-monitoring-tracelight", "{.spec.groups[*].rules[*].alert}")?;
    let rules_file = std::fs::read_to_string(repo_root().join("charts/tracelight/files/alerts.yaml"))?;
    let expected: Vec<&str> = rules_file.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    ensure!(
        alerts.split_whitespace().collect::<Vec<_>>() == expected,
        "PrometheusRule alerts: {alerts} (expected {expected:?})"
    );
    let runbook =
        jsonpath("prometheusrule", "e2e-monitoring-tracelight", "{.spec.groups[0].rules[0].annotations.runbook_url}")?;
    ensure!(runbook.ends_with("docs/alerts.md#tracelightpodsmissedinjection"), "runbook_url: {runbook}");
    let endpoint = jsonpath(
        "servicemonitor",
        "e2e-monitoring-tracelight",
        "{.spec.endpoints[0].port} {.spec.endpoints[0].honorLabels} {.metadata.labels.release}",
    )?;
    ensure!(endpoint == "admin true prometheus", "ServiceMonitor endpoint: {endpoint}");
    let pod_endpoint = jsonpath(
        "podmonitor",
        "e2e-monitoring-tracelight-agents",
        "{.spec.podMetricsEndpoints[0].port} {.spec.podMetricsEndpoints[0].relabelings[0].targetLabel}",
    )?;
    ensure!(pod_endpoint == "tl-admin policy", "PodMonitor endpoint: {pod_endpoint}");
    // The ServiceMonitor selects the metrics Service, which targets the admin port.
    let service = jsonpath("service", "e2e-monitoring-tracelight-metrics", "{.spec.ports[0].targetPort}")?;
    ensure!(service == "admin", "metrics Service targetPort: {service}");
    let dashboards =
        cluster.kubectl(["get", "configmap", "-n", NAMESPACE, "-l", "grafana_dashboard=1", "-o", "name"])?;
    ensure!(dashboards.trim() == "configmap/e2e-monitoring-tracelight-dashboard", "dashboard ConfigMaps: {dashboards}");
    let json = jsonpath("configmap", "e2e-monitoring-tracelight-dashboard", r"{.data.tracelight\.json}")?;
    let dashboard: serde_json::Value = serde_json::from_str(&json).context("the dashboard is not JSON")?;
    ensure!(dashboard["uid"] == "tracelight", "dashboard uid: {}", dashboard["uid"]);
    eprintln!(
        "[e2e]    with the CRDs: ServiceMonitor, PodMonitor, PrometheusRule ({} alerts) and the dashboard accepted",
        expected.len()
    );
    Ok(())
}

/// Uninstalls the release and deletes its namespace and the CRDs (whatever is left of them).
fn remove(cluster: &Cluster, crds: &std::path::Path) -> anyhow::Result<()> {
    if cluster.helm_output(["status", RELEASE, "-n", NAMESPACE])?.status.success() {
        cluster.helm(["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "60s"])?;
    }
    // Waited for: the next run's install recreates it.
    cluster.kubectl(["delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s"])?;
    for name in CRDS {
        let file = crds.join(format!("monitoring.coreos.com_{}.yaml", name.split('.').next().unwrap_or_default()));
        cluster.kubectl(["delete", "--ignore-not-found", "--wait", "-f", &file.display().to_string()])?;
    }
    Ok(())
}
