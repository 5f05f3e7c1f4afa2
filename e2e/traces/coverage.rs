//! Coverage, end to end: the agents push their reports (authenticated with their projected
//! tokens, through the operator's Service as the pods see it) and the operator's policy status
//! says, per workload, whether spans arrive; `tracelight verify` turns that into a verdict.
//!
//! In the agent-sampling shop a sixth workload, `tax-legacy`, runs with its tracing broken on
//! purpose ([`shop::broken_tax`]): it is injected and serves requests, but sends no spans. The
//! status must list it `Silent` and every shop service `Reporting` (Redis `OptedOut`), and
//! `tracelight verify` must exit 1 naming it; for the SDK-sampling shop, where every service
//! sends spans, it must exit 0.

use super::{http_get, run_shop, scheduled_pod, shop, Shop};
use crate::runner::images::Images;
use crate::runner::net::Network;
use crate::support::objects::from_json;
use crate::support::{wait, StepLog};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::Client;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tracelight::api::{CoverageState, TracingPolicy};

/// The operator's Service, as the pods resolve it (the default report URL's host).
pub fn operator_hosts_entry(host_ip: Ipv4Addr, namespace: &str, service: &str) -> (Ipv4Addr, Vec<String>) {
    (host_ip, vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")])
}

/// Deploys and runs the broken workload in `shop`'s namespace and sends it a few requests.
#[allow(clippy::too_many_arguments)]
pub async fn run_broken(
    log: &StepLog,
    client: &Client,
    shop: &Shop,
    network: &mut Network,
    images: &Images,
    dir: &Path,
    extra_hosts: &[(Ipv4Addr, Vec<String>)],
) -> anyhow::Result<Shop> {
    let w = shop::broken_tax();
    log.step(&format!("{}: deploy {} (tracing broken on purpose: OTEL_TRACES_EXPORTER=none)", shop.ns, w.name));
    Api::<Deployment>::namespaced(client.clone(), &shop.ns)
        .create(&PostParams::default(), &from_json(w.deployment.clone())?)
        .await?;
    if let Some(service) = &w.service {
        Api::<Service>::namespaced(client.clone(), &shop.ns)
            .create(&PostParams::default(), &from_json(service.clone())?)
            .await?;
    }
    let pod = scheduled_pod(client, &shop.ns, w.name).await?;
    let mut broken = Shop { ns: shop.ns.clone(), policy: shop.policy.clone(), pods: vec![pod], running: Vec::new() };
    run_shop(&mut broken, client, network, images, dir, extra_hosts, log).await?;
    let (ip, port) = (broken.running[0].net.ip, w.port.context("no port")?);
    for cents in [100, 250, 999] {
        let (status, body) = http_get(ip, port, &format!("/tax?cents={cents}")).await?;
        ensure!(status == 200, "{}: GET /tax: HTTP {status}: {body}", w.name);
    }
    log.note(&format!("{}: serves requests (3 answered)", w.name));
    Ok(broken)
}

/// Waits until the policy's status shows `want` (workload name -> state) for `namespace`.
pub async fn wait_coverage(
    client: &Client,
    policy: &str,
    namespace: &str,
    want: &BTreeMap<&str, CoverageState>,
) -> anyhow::Result<TracingPolicy> {
    let api = Api::<TracingPolicy>::all(client.clone());
    // Agents push at start and every 30 s; the operator reconciles within seconds of a change.
    wait::until(&format!("coverage of {namespace} in policy {policy}"), Duration::from_secs(120), || async {
        let p = api.get(policy).await?;
        let ns =
            p.status.iter().flat_map(|s| &s.namespaces).find(|n| n.name == namespace).context("no namespace status")?;
        let have: BTreeMap<&str, CoverageState> = ns.workloads.iter().map(|w| (w.name.as_str(), w.state)).collect();
        ensure!(&have == want, "coverage {have:?}, want {want:?}");
        Ok(p)
    })
    .await
}

/// The agents' versions in the status, from their reports: every reporting workload of
/// `namespace` runs this build's agent, and the policy-wide summary says so.
pub fn check_agent_versions(policy: &TracingPolicy, namespace: &str) -> anyhow::Result<()> {
    let status = policy.status.as_ref().context("no status")?;
    let ns = status.namespaces.iter().find(|n| n.name == namespace).context("no namespace status")?;
    let version = tracelight_contract::VERSION;
    for w in ns.workloads.iter().filter(|w| w.state == CoverageState::Reporting) {
        let versions: Vec<(&str, u32)> = w.agent_versions.iter().collect();
        ensure!(
            versions.len() == 1 && versions[0].0 == version && versions[0].1 >= 1,
            "{}: agentVersions {versions:?}, want only {version}",
            w.name
        );
    }
    let summary = status.coverage.as_ref().and_then(|c| c.agent_version_summary.as_deref()).unwrap_or_default();
    ensure!(summary.starts_with(&format!("{version}:")), "agentVersionSummary {summary:?}");
    Ok(())
}

/// Runs `tracelight verify` as a user would; its exit code and output.
pub fn verify(binary: &Path, kubeconfig: &Path, policy: &str, namespace: &str) -> anyhow::Result<(i32, String)> {
    let out = Command::new(binary)
        .args(["verify", policy, "--namespace", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .context("running tracelight verify")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

/// The states the shop's workloads must reach: every traced service reporting, Redis opted out.
pub fn shop_states(workloads: &[shop::Workload]) -> BTreeMap<&'static str, CoverageState> {
    workloads
        .iter()
        .map(|w| (w.name, if w.traced { CoverageState::Reporting } else { CoverageState::OptedOut }))
        .collect()
}
