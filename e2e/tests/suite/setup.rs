//! Installing the chart, starting the operator with the chart's identity and flags, and
//! removing everything afterwards.

use super::{Suite, CERT_CHECK_INTERVAL, CERT_VALIDITY, NAMESPACE, RELEASE, SERVICE_ACCOUNT, WEBHOOK_CONFIG};
use crate::support::cluster::Cluster;
use crate::support::objects::{delete_namespaces, Namespaces, SUITE_LABEL};
use crate::support::{free_port, repo_root, wait, work_dir, StepLog};
use anyhow::{bail, ensure, Context as _};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use std::time::Duration;
use tracelight::api::TracingPolicy;

const CRD_NAME: &str = "tracingpolicies.tracelight.io";

/// The demo (`make demo`) uses the same release; running both would make each break the other.
pub fn refuse_if_demo_running() -> anyhow::Result<()> {
    let cache = std::env::var_os("TRACELIGHT_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/tracelight")))
        .context("neither TRACELIGHT_CACHE nor HOME is set")?;
    let pid_file = cache.join("demo/operator.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let pid = pid.trim();
        if !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!(
                "the demo's operator is running (pid {pid}, {}); the e2e suite would replace its release. \
                 Stop it with `make demo-down` first.",
                pid_file.display()
            );
        }
    }
    Ok(())
}

/// Removes the release, policies, CRD, operator namespace and suite namespaces that an earlier
/// (interrupted) run or a demo left, so this run starts from the chart as it is now. helm never
/// upgrades CRDs, so an old CRD would otherwise shadow the current one.
pub async fn clean_slate(cluster: &Cluster) -> anyhow::Result<()> {
    uninstall_release(cluster)?;
    remove_policies_and_crd(cluster).await?;
    let namespaces = Api::<Namespace>::all(cluster.client.clone());
    let mut leftovers: Vec<String> = namespaces
        .list(&ListParams::default().labels(&format!("{SUITE_LABEL}=true")))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    if namespaces.get_opt(NAMESPACE).await?.is_some() {
        leftovers.push(NAMESPACE.to_string());
    }
    if !leftovers.is_empty() {
        eprintln!("[e2e]    deleting leftover namespaces {leftovers:?}");
    }
    delete_namespaces(&cluster.client, &leftovers).await
}

fn uninstall_release(cluster: &Cluster) -> anyhow::Result<()> {
    let status = cluster.helm_output(["status", RELEASE, "-n", NAMESPACE])?;
    if status.status.success() {
        cluster.helm(["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "60s"])?;
    }
    Ok(())
}

/// Deletes every TracingPolicy (dropping finalizers: no operator may be running to honour them)
/// and the CRD.
async fn remove_policies_and_crd(cluster: &Cluster) -> anyhow::Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(cluster.client.clone());
    if crds.get_opt(CRD_NAME).await?.is_none() {
        return Ok(());
    }
    let policies = Api::<TracingPolicy>::all(cluster.client.clone());
    for policy in policies.list(&ListParams::default()).await? {
        let name = policy.name_any();
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        policies.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let _ = policies.delete(&name, &DeleteParams::default()).await;
    }
    let _ = crds.delete(CRD_NAME, &DeleteParams::default()).await;
    wait::until("the TracingPolicy CRD to be deleted", Duration::from_secs(60), || async {
        ensure!(crds.get_opt(CRD_NAME).await?.is_none(), "still there");
        Ok(())
    })
    .await
}

/// `helm install`s the chart in URL mode (operator outside the cluster) and prepares the operator's
/// command line (the chart's own) and identity (a token of the chart's ServiceAccount).
/// The cluster up, what an earlier run or demo left removed, and the chart installed (the slate
/// cleaned again when installing fails). Every suite starts here.
pub async fn fresh_suite(log: &StepLog) -> anyhow::Result<Suite> {
    log.step("cluster: e2e/cluster/up.sh");
    let cluster = Cluster::up().await?;
    refuse_if_demo_running()?;
    log.step("clean slate: remove what an earlier run or demo may have left");
    clean_slate(&cluster).await?;
    match install(cluster.clone(), log).await {
        Ok(suite) => Ok(suite),
        Err(e) => {
            if let Err(cleanup) = clean_slate(&cluster).await {
                eprintln!("[e2e] cleanup after the failed install: {cleanup:#}");
            }
            Err(e)
        }
    }
}

pub async fn install(cluster: Cluster, log: &StepLog) -> anyhow::Result<Suite> {
    let (webhook_port, admin_port) = (free_port(), free_port());
    ensure!(webhook_port != admin_port, "got the same free port twice");
    let url = format!("https://127.0.0.1:{webhook_port}/mutate-pods");
    let chart = repo_root().join("charts/tracelight");
    let values = ["--set".to_string(), "operator.enabled=false".into(), "--set".into(), format!("webhook.url={url}")];

    log.step(&format!("helm install {RELEASE} (webhook.url={url}, operator.enabled=false)"));
    let mut install: Vec<String> = ["install", RELEASE].map(String::from).to_vec();
    install.push(chart.display().to_string());
    install.extend(["-n", NAMESPACE, "--create-namespace", "--wait", "--timeout", "60s"].map(String::from));
    install.extend(values.iter().cloned());
    cluster.helm(&install)?;

    let configs = Api::<MutatingWebhookConfiguration>::all(cluster.client.clone());
    let config = configs.get(WEBHOOK_CONFIG).await.context("the chart's MutatingWebhookConfiguration")?;
    let hook = config.webhooks.as_ref().and_then(|w| w.first()).context("no webhook in the configuration")?;
    ensure!(hook.client_config.url.as_deref() == Some(url.as_str()), "webhook url is {:?}", hook.client_config.url);
    ensure!(hook.client_config.service.is_none(), "webhook has a service reference in URL mode");
    ensure!(hook.failure_policy.as_deref() == Some("Ignore"), "failurePolicy is {:?}", hook.failure_policy);
    log.note(&format!("webhook configuration {WEBHOOK_CONFIG}: url {url}, failurePolicy Ignore"));

    let operator_args = operator_args_from_chart(&cluster, &values, webhook_port, admin_port)?;

    let sa_kubeconfig = work_dir().join("operator.kubeconfig");
    crate::support::operator::service_account_kubeconfig(&cluster, NAMESPACE, SERVICE_ACCOUNT, &sa_kubeconfig)?;
    let namespaces = Namespaces::new(&cluster);
    Ok(Suite {
        cluster,
        log: log.clone(),
        namespaces,
        webhook_port,
        admin_port,
        chart_values: values.to_vec(),
        operator_args,
        sa_kubeconfig,
        operator: None,
        operator_logs: Vec::new(),
        active: None,
    })
}

/// The operator's flags: the ones the chart gives its Deployment (rendered with `values` plus
/// operator.enabled=true), with loopback addresses and short certificates.
pub fn operator_args_from_chart(
    cluster: &Cluster,
    values: &[String],
    webhook_port: u16,
    admin_port: u16,
) -> anyhow::Result<Vec<String>> {
    let chart = repo_root().join("charts/tracelight");
    let mut render: Vec<String> = ["template", RELEASE].map(String::from).to_vec();
    render.push(chart.display().to_string());
    render.extend(["-n", NAMESPACE, "--show-only", "templates/deployment.yaml"].map(String::from));
    render.extend(values.iter().cloned());
    render.extend(["--set", "operator.enabled=true"].map(String::from));
    let deployment: serde_json::Value =
        serde_yaml::from_str(&cluster.helm(&render)?).context("parsing the rendered Deployment")?;
    let chart_args: Vec<String> = deployment
        .pointer("/spec/template/spec/containers/0/args")
        .cloned()
        .map(serde_json::from_value)
        .transpose()?
        .context("the rendered Deployment has no operator args")?;
    ensure!(chart_args.first().map(String::as_str) == Some("controller"), "chart args: {chart_args:?}");
    ensure!(
        chart_args.iter().any(|a| a == "--extra-san=127.0.0.1"),
        "the chart does not add webhook.url's host to the certificate names: {chart_args:?}"
    );
    let replaced = ["--webhook-addr=", "--admin-addr=", "--cert-validity=", "--log-format=", "--cert-check-interval="];
    let mut operator_args: Vec<String> =
        chart_args.into_iter().skip(1).filter(|a| !replaced.iter().any(|p| a.starts_with(p))).collect();
    operator_args.extend([
        format!("--webhook-addr=127.0.0.1:{webhook_port}"),
        format!("--admin-addr=127.0.0.1:{admin_port}"),
        format!("--cert-validity={CERT_VALIDITY}"),
        format!("--cert-check-interval={CERT_CHECK_INTERVAL}"),
        "--log-format=text".into(),
    ]);
    Ok(operator_args)
}

/// Deletes what the suite created; then checks the operator never hit an RBAC denial.
pub async fn teardown(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("cleanup: policies, namespaces, operator, release");
    let client = suite.cluster.client.clone();
    let policies = Api::<TracingPolicy>::all(client.clone());
    let operator_up = suite.operator.as_mut().is_some_and(|o| o.is_running());
    for policy in policies.list(&ListParams::default()).await? {
        let name = policy.name_any();
        if !operator_up {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            policies.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        let _ = policies.delete(&name, &DeleteParams::default()).await;
        // With the operator up, its finalizer removes the agent objects before the policy goes.
        wait::until(&format!("policy {name} to be deleted"), Duration::from_secs(60), || async {
            ensure!(policies.get_opt(&name).await?.is_none(), "still there");
            Ok(())
        })
        .await?;
    }
    suite.namespaces.delete_all().await?;
    if suite.operator.is_some() {
        suite.stop_operator()?;
    }
    uninstall_release(&suite.cluster)?;
    remove_policies_and_crd(&suite.cluster).await?;
    delete_namespaces(&client, &[NAMESPACE.to_string()]).await?;
    operator_log_failures(&suite.operator_logs)
}

/// Fails if any operator log mentions a request the API server forbade (the chart's RBAC must
/// cover everything the operator does) or a cache's watch broken by the operator's own types.
fn operator_log_failures(logs: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut denied = Vec::new();
    let mut broken = Vec::new();
    for path in logs {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        denied.extend(text.lines().filter(|l| l.contains("forbidden")).map(|l| format!("{}: {l}", path.display())));
        broken
            .extend(text.lines().filter(|l| is_cache_decoding_failure(l)).map(|l| format!("{}: {l}", path.display())));
        // Not failures by themselves (e.g. a watch restarting), but worth seeing.
        for line in text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")) {
            eprintln!("[e2e]    operator {}: {line}", path.file_name().unwrap_or_default().to_string_lossy());
        }
    }
    ensure!(
        denied.is_empty(),
        "the operator was denied by RBAC (the chart's roles miss a permission):\n{}",
        denied.join("\n")
    );
    ensure!(
        broken.is_empty(),
        "a cache's watch failed on what the operator decodes (its own cached types), not on the network:\n{}",
        broken.join("\n")
    );
    Ok(())
}

/// A watch failure caused by the operator's own cached types (an object they cannot decode, or a
/// summary that lost the resource version the watcher resumes from): such a watch fails on every
/// event and relists, where a network failure is retried once.
fn is_cache_decoding_failure(line: &str) -> bool {
    let line = line.to_lowercase();
    line.contains("watch failed") && (line.contains("resourceversion") || line.contains("deserializ"))
}
