//! An operator upgrade that ships a new agent image rolls the new agent out like a first rollout:
//! pilot first, expansion only after the pilot's soak, each workload restarted exactly once, in
//! the phases' batch sizes; a policy that pins its agent image does not move; the ConfigMap the
//! new operator writes still holds the file agents of the previous contract read.
//!
//! The upgrade is the chart's: `helm upgrade --set agent.image=...`, then the operator restarted
//! with the flags the upgraded chart renders (the operator runs outside the cluster here, so its
//! Deployment's rolling update is this restart).

use super::rollout::{
    generations, policy_json, restarted_at, rolled_out, running_deployments, sample, wait_all_injected, wait_phase,
    GROUP, PILOT, ROLLOUT_TIMEOUT, SOAK,
};
use super::setup::operator_args_from_chart;
use super::{Suite, NAMESPACE, RELEASE};
use crate::support::objects::ENABLED;
use crate::support::{repo_root, wait};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracelight::api::{PolicyPhase, TracingPolicy};
use tracelight::inject::AGENT_CONTAINER;
use tracelight_contract::config::{v1, AgentConfig, ConfigFile, AGENT_CONFIGMAP};

const UPGRADED: &str = "e2e-upgrade";
const PINNED: &str = "e2e-pinned";
/// The agent image the upgraded chart ships (kwok runs no containers: any reference will do).
const IMAGE_B: &str = "registry.e2e/tracelight/tracelight:upgrade-b";
const PINNED_IMAGE: &str = "registry.e2e/tracelight/tracelight:pinned";

pub async fn agent_upgrade_rolls_out_by_phase(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("upgrade: a new agent image from helm upgrade goes pilot first, expansion after the soak");
    let client = suite.cluster.client.clone();
    let pilot = suite.namespaces.create("up-pilot", &[ENABLED, (GROUP, "upgrade"), PILOT]).await?;
    let expansion = suite.namespaces.create("up-expansion", &[ENABLED, (GROUP, "upgrade")]).await?;
    let pinned = suite.namespaces.create("up-pinned", &[ENABLED, (GROUP, "pinned")]).await?;
    running_deployments(&client, &pilot, &["p1", "p2"]).await?;
    running_deployments(&client, &expansion, &["e1", "e2", "e3", "e4"]).await?;
    running_deployments(&client, &pinned, &["k1"]).await?;
    let policies = Api::<TracingPolicy>::all(client.clone());
    let phases = json!({"phases": [
        {"name": "pilot", "namespaceSelector": {"matchLabels": {PILOT.0: PILOT.1}},
         "batchSize": 1, "soakDuration": "5s", "healthDeadline": "60s"},
        {"name": "expansion", "batchSize": 2, "soakDuration": "0s", "healthDeadline": "30s"}
    ]});
    policies.create(&PostParams::default(), &policy_json(UPGRADED, "upgrade", phases, None)?).await?;
    let pin = json!({"image": PINNED_IMAGE});
    policies.create(&PostParams::default(), &policy_json(PINNED, "pinned", json!({}), Some(pin))?).await?;
    for (ns, policy) in [(&pilot, UPGRADED), (&expansion, UPGRADED), (&pinned, PINNED)] {
        wait_all_injected(&client, ns, policy).await?;
    }
    wait_phase(&client, UPGRADED, PolicyPhase::Complete).await?;
    let image_a = agent_images(&client, &pilot).await?;
    ensure!(image_a.len() == 1 && !image_a.contains(IMAGE_B), "agent images before the upgrade: {image_a:?}");
    ensure!(
        policies.get(UPGRADED).await?.spec.agent.image.is_none(),
        "the API server stored an agent image in a policy that named none (a schema default?)"
    );
    let before = [generations(&client, &pilot).await?, generations(&client, &expansion).await?];
    let pinned_before = generations(&client, &pinned).await?;
    suite.log.note(&format!("rolled out with agent image {image_a:?}; {PINNED} pins {PINNED_IMAGE}"));

    // The upgrade. The watch starts first: the new operator restarts the first pilot workload as
    // soon as it runs.
    let upgraded_at = Timestamp::now();
    let stop = Arc::new(AtomicBool::new(false));
    let groups = vec![("pilot".to_string(), pilot.clone()), ("expansion".to_string(), expansion.clone())];
    let sampler = tokio::spawn(sample(client.clone(), groups, "pilot".into(), upgraded_at, stop.clone()));
    let result = async {
        upgrade_chart(suite, &["--set".into(), format!("agent.image={IMAGE_B}")]).await?;
        for ns in [&pilot, &expansion] {
            wait_agent_image(&client, ns, IMAGE_B, upgraded_at).await?;
        }
        wait_phase(&client, UPGRADED, PolicyPhase::Complete).await
    }
    .await;
    stop.store(true, Ordering::Release);
    let seen = sampler.await.context("the sampler panicked")?;
    result?;

    let pilot_max = seen.max_in_flight.get("pilot").copied().unwrap_or_default();
    ensure!(pilot_max == 1, "pilot (batch 1): up to {pilot_max} restarts in flight at once");
    let expansion_max = seen.max_in_flight.get("expansion").copied().unwrap_or_default();
    ensure!(expansion_max <= 2, "expansion (batch 2): up to {expansion_max} restarts in flight at once");
    ensure!(seen.early.is_empty(), "expansion restarted before the pilot was done: {:?}", seen.early);
    let pilot_done = seen.first_done_at.context("the pilot was never seen re-rolled")?;
    let first_expansion = Api::<Deployment>::namespaced(client.clone(), &expansion)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(restarted_at)
        .filter(|t| *t > upgraded_at)
        .min()
        .context("no expansion restart after the upgrade")?;
    let gap = first_expansion.duration_since(pilot_done);
    ensure!(
        gap >= SignedDuration::try_from(SOAK)? - SignedDuration::from_millis(100),
        "expansion restarted {:.2}s after the pilot was done; the pilot soaks {}s",
        gap.as_secs_f64(),
        SOAK.as_secs()
    );
    for (ns, before) in [&pilot, &expansion].into_iter().zip(before) {
        let after = generations(&client, ns).await?;
        let once: bool = after.iter().all(|(name, g)| before.get(name).is_some_and(|b| *g == b + 1));
        ensure!(once, "{ns}: each Deployment restarted exactly once by the upgrade: {before:?} -> {after:?}");
    }
    suite.log.note(&format!(
        "pilot re-rolled one at a time, expansion {:.1}s after it (soak 5s), each Deployment restarted once, agents {IMAGE_B}",
        gap.as_secs_f64()
    ));

    ensure!(generations(&client, &pinned).await? == pinned_before, "the pinned policy's workload was restarted");
    let pinned_images = agent_images(&client, &pinned).await?;
    ensure!(pinned_images.iter().all(|i| i == PINNED_IMAGE), "pinned agents run {pinned_images:?}");
    suite.log.note(&format!("{PINNED} (agent image pinned) did not move"));

    // Agents of the previous release, still running somewhere during a rollout, read the old file.
    for ns in [&pilot, &expansion] {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get(AGENT_CONFIGMAP).await?;
        let file = |f: ConfigFile| cm.data.as_ref().and_then(|d| d.get(f.key())).context(f.key());
        let current = AgentConfig::parse(file(ConfigFile::CURRENT)?.as_bytes())?;
        let old: v1::AgentConfig = serde_yaml::from_str(file(ConfigFile::V1)?)
            .context("the contract-1 agent's strict parser refuses the new operator's config.yaml")?;
        ensure!(old == v1::AgentConfig::from(&current.config), "{ns}: config.yaml and config.v2.yaml disagree");
    }
    suite.log.note("the new operator's ConfigMaps: config.v2.yaml, and config.yaml that 0.1.0 agents parse strictly");
    Ok(())
}

/// `helm upgrade --reuse-values` with `set`, then the operator restarted with the new chart's flags.
async fn upgrade_chart(suite: &mut Suite, set: &[String]) -> anyhow::Result<()> {
    let chart = repo_root().join("charts/tracelight");
    let mut upgrade: Vec<String> = ["upgrade", RELEASE].map(String::from).to_vec();
    upgrade.push(chart.display().to_string());
    upgrade.extend(["-n", NAMESPACE, "--reuse-values", "--wait", "--timeout", "60s"].map(String::from));
    upgrade.extend(set.iter().cloned());
    suite.cluster.helm(&upgrade)?;
    suite.chart_values.extend(set.iter().cloned());
    suite.operator_args =
        operator_args_from_chart(&suite.cluster, &suite.chart_values, suite.webhook_port, suite.admin_port)?;
    let flag = suite.operator_args.iter().find(|a| a.starts_with("--agent-image=")).cloned().unwrap_or_default();
    suite.log.note(&format!("helm upgrade {}; the operator restarts with {flag}", set.join(" ")));
    suite.stop_operator()?;
    suite.start_operator().await
}

/// The agent images the pods of `ns` run.
async fn agent_images(client: &Client, ns: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await?;
    Ok(pods.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).flat_map(agent_image).collect())
}

fn agent_image(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    all.filter(|c| c.name == AGENT_CONTAINER).find_map(|c| c.image.clone())
}

/// Waits until every Deployment of `ns` was restarted after `since`, rolled out, and its pods run
/// agent `image`.
async fn wait_agent_image(client: &Client, ns: &str, image: &str, since: Timestamp) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    wait::until(&format!("every Deployment in {ns} to run agent {image}"), ROLLOUT_TIMEOUT, || async {
        for d in deployments.list(&ListParams::default()).await? {
            let restarted = restarted_at(&d).is_some_and(|t| t > since);
            ensure!(restarted && rolled_out(&d), "{} not restarted since the upgrade and rolled out", d.name_any());
        }
        let images = agent_images(client, ns).await?;
        ensure!(images.len() == 1 && images.contains(image), "agent images {images:?}");
        Ok(())
    })
    .await
}
