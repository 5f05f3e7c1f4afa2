//! A policy governs only the namespaces its selector picks: a namespace carrying the chart's
//! opt-in label (so the API server calls the webhook) but outside every policy's selector is
//! left alone. Deleting a policy removes its agent objects (finalizer).

use super::wait_active;
use super::{Active, Suite};
use crate::support::objects::{assert_injected, assert_untouched, create_pod, from_json, wait_injecting, ENABLED};
use crate::support::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;
use tracelight::api::TracingPolicy;
use tracelight_contract::config::AGENT_CONFIGMAP;

const POLICY: &str = "e2e-selective";
const TIER: &str = "e2e.tracelight.io/tier";

pub async fn policy_namespace_selection_is_honoured(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("selection: a policy governs only the namespaces its selector picks");
    let client = suite.cluster.client.clone();
    let policies = Api::<TracingPolicy>::all(client.clone());
    let previous = suite.active.clone().context("no active namespace set up by an earlier step")?;

    let previous_name = previous.policy.name_any();
    policies.delete(&previous_name, &DeleteParams::default()).await?;
    wait::until(&format!("policy {previous_name} to be deleted (finalizer)"), Duration::from_secs(60), || async {
        ensure!(policies.get_opt(&previous_name).await?.is_none(), "still there");
        Ok(())
    })
    .await?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &previous.namespace);
    ensure!(
        configmaps.get_opt(AGENT_CONFIGMAP).await?.is_none(),
        "the agent ConfigMap is still in {} after its policy was deleted",
        previous.namespace
    );
    suite.log.note(&format!("policy {previous_name} deleted; its agent ConfigMap in {} removed", previous.namespace));

    let policy: TracingPolicy = from_json(json!({
        "apiVersion": "tracelight.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {ENABLED.0: ENABLED.1, TIER: "traced"}},
            "collector": {"endpoint": "http://collector.e2e:4318", "protocol": "http/protobuf"},
            "sampling": {"ratio": 0.5}
        }
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    // `other` first: once the webhook has seen `traced`, it has seen `other` too.
    let other = suite.namespaces.create("other", &[ENABLED, (TIER, "other")]).await?;
    let traced = suite.namespaces.create("traced", &[ENABLED, (TIER, "traced")]).await?;
    let selective = wait_active(&client, POLICY, &traced).await?;
    let status = selective.status.clone().unwrap_or_default();
    let governed: Vec<&str> = status.namespaces.iter().map(|n| n.name.as_str()).collect();
    ensure!(governed == [traced.as_str()], "{POLICY} governs {governed:?}, expected only {traced}");
    wait_injecting(&client, &traced, Duration::from_secs(30)).await?;
    suite
        .log
        .note(&format!("{POLICY} governs [{traced}] only; {other} (same opt-in label, tier=other) is not governed"));

    let pod = create_pod(&client, &traced, "picked", &[]).await?;
    assert_injected(&pod, "picked", &selective)?;
    assert_untouched(&create_pod(&client, &other, "not-picked", &[]).await?)
        .context("a pod in a labelled namespace that no policy governs")?;
    assert_untouched(&create_pod(&client, &previous.namespace, "policy-gone", &[]).await?)
        .context("a pod in a namespace whose policy was deleted")?;
    suite.log.note(&format!(
        "pod in {traced}: injected by {POLICY}; pods in {other} and {} (policy deleted): untouched",
        previous.namespace
    ));
    suite.active = Some(Active { namespace: traced, policy: selective });
    Ok(())
}
