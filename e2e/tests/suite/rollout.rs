//! The phased rollout on the real cluster: workloads that ran before any policy existed are
//! restarted by the operator in paced batches, pilot namespaces first, expansion only after the
//! soak; a pause holds new batches; a live setting restarts nothing; leaving (label removed,
//! policy deleted) restores uninjected pods; a killed operator's successor continues; a workload
//! whose injected pods never become ready is rolled back with `Degraded` and an Event.
//!
//! Deployments here run one replica with `terminationGracePeriodSeconds: 1`; kwok makes their
//! pods Ready within a second, so each step is bounded by short soaks and deadlines.

use super::wait_active;
use super::Suite;
use crate::support::cluster::checked;
use crate::support::objects::{assert_injected, assert_untouched, from_json, template, ENABLED};
use crate::support::operator::binary;
use crate::support::{wait, work_dir};
use anyhow::{ensure, Context as _};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracelight::api::{NamespaceState, PolicyPhase, TracingPolicy};
use tracelight_contract::config::{v1, AgentConfig, ConfigFile, AGENT_CONFIGMAP};

/// Namespace label the rollout policies select on (with the opt-in label).
pub(super) const GROUP: &str = "e2e.tracelight.io/rollout";
/// Namespace label that puts a namespace into the pilot phase.
pub(super) const PILOT: (&str, &str) = ("e2e.tracelight.io/phase", "pilot");
const PHASED: &str = "e2e-phased";
const FAILING: &str = "e2e-rollback";
pub(super) const RESTARTED_AT: &str = "tracelight.io/restarted-at";
pub(super) const SOAK: Duration = Duration::from_secs(5);
const EXPANSION_BATCH: usize = 2;
pub(super) const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
/// Label on the suite's rollout Deployments, so one watch follows them all.
const SAMPLED: &str = "e2e.tracelight.io/sampled";

/// The namespaces of the phased policy, for the steps that follow the first one.
#[derive(Clone, Debug)]
pub struct Phased {
    pub pilot: String,
    pub expansion: String,
}

/// A one-replica Deployment whose pods are deleted fast.
pub(super) fn deployment(name: &str) -> anyhow::Result<Deployment> {
    from_json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {SAMPLED: "true"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template(name, &[])}
    }))
}

/// Creates Deployments `names` in `ns` and waits until they run (uninjected: no policy yet).
pub(super) async fn running_deployments(client: &Client, ns: &str, names: &[&str]) -> anyhow::Result<()> {
    let deployments = names.iter().map(|name| deployment(name)).collect::<anyhow::Result<Vec<_>>>()?;
    run_deployments(client, ns, deployments).await
}

/// [`running_deployments`], each counted available only `seconds` after its pods are Ready
/// (`minReadySeconds`): a restart of one stays in flight at least that long.
async fn running_slow_deployments(client: &Client, ns: &str, names: &[&str], seconds: i32) -> anyhow::Result<()> {
    let mut deployments = Vec::new();
    for name in names {
        let mut d = deployment(name)?;
        d.spec.min_ready_seconds = Some(seconds);
        deployments.push(d);
    }
    run_deployments(client, ns, deployments).await
}

async fn run_deployments(client: &Client, ns: &str, deployments: Vec<Deployment>) -> anyhow::Result<()> {
    let names: Vec<String> = deployments.iter().map(|d| d.name_any()).collect();
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    for d in &deployments {
        api.create(&PostParams::default(), d).await.with_context(|| format!("creating {ns}/{}", d.name_any()))?;
    }
    wait::until(&format!("Deployments {names:?} in {ns} to run"), ROLLOUT_TIMEOUT, || async {
        for d in api.list(&ListParams::default()).await? {
            ensure!(rolled_out(&d), "{} not rolled out: {:?}", d.name_any(), d.status);
        }
        Ok(())
    })
    .await?;
    for pod in Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await? {
        assert_untouched(&pod).context("a pod created before any policy governed its namespace")?;
    }
    Ok(())
}

/// The Deployment controller has rolled the current template out.
/// Waits until Deployment `name` (pods labelled `app=<name>`) has rolled out uninjected pods only:
/// a rollback done.
pub(super) async fn wait_rolled_back(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    wait::until(&format!("{name} to run uninjected, Ready pods again"), ROLLOUT_TIMEOUT, || async {
        let d = deployments.get(name).await?;
        ensure!(rolled_out(&d), "not rolled out: {:?}", d.status);
        for pod in pods.list(&ListParams::default().labels(&format!("app={name}"))).await? {
            if pod.metadata.deletion_timestamp.is_none() {
                assert_untouched(&pod)?;
            }
        }
        Ok(())
    })
    .await
}

pub(super) fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or_default() >= d.metadata.generation.unwrap_or_default()
            && s.updated_replicas.unwrap_or_default() == want
            && s.replicas.unwrap_or_default() == want
            && s.available_replicas.unwrap_or_default() == want
    })
}

/// When the operator last restarted `d`, from its pod template.
pub(super) fn restarted_at(d: &Deployment) -> Option<Timestamp> {
    let annotations = d.spec.template.metadata.as_ref()?.annotations.as_ref()?;
    annotations.get(RESTARTED_AT)?.parse().ok()
}

pub(super) fn policy_json(
    name: &str,
    group: &str,
    spec_rollout: Value,
    agent: Option<Value>,
) -> anyhow::Result<TracingPolicy> {
    let mut spec = json!({
        "namespaceSelector": {"matchLabels": {ENABLED.0: ENABLED.1, GROUP: group}},
        "collector": {"endpoint": "http://collector.e2e:4317", "protocol": "grpc"},
        "sampling": {"ratio": 0.25},
        "rollout": spec_rollout
    });
    if let Some(agent) = agent {
        spec["agent"] = agent;
    }
    from_json(
        json!({"apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": name}, "spec": spec}),
    )
}

/// What a sampler saw of a set of Deployments while a rollout ran.
#[derive(Debug, Default)]
pub(super) struct Sampled {
    /// Most Deployments restarted and not yet rolled out at one time, per namespace group.
    pub(super) max_in_flight: BTreeMap<String, usize>,
    /// When every Deployment of the `first` group was first seen restarted and rolled out.
    pub(super) first_done_at: Option<Timestamp>,
    /// Restarts of the other groups seen before `first_done_at`.
    pub(super) early: BTreeSet<String>,
    pub(super) events: usize,
}

/// Follows the Deployments of `groups` (group name -> namespace) through a watch until `stop`:
/// every change the API server records is seen, so no short-lived overlap of restarts escapes.
/// Only restarts after `since` count (a re-rollout's, not the first rollout's).
pub(super) async fn sample(
    client: Client,
    groups: Vec<(String, String)>,
    first: String,
    since: Timestamp,
    stop: Arc<AtomicBool>,
) -> Sampled {
    let api = Api::<Deployment>::all(client);
    let mut stream =
        watcher(api, watcher::Config::default().labels(&format!("{SAMPLED}=true"))).applied_objects().boxed();
    let mut seen = Sampled::default();
    let mut state: BTreeMap<(String, String), Deployment> = BTreeMap::new();
    while !stop.load(Ordering::Acquire) {
        let Ok(Some(Ok(d))) = tokio::time::timeout(POLL, stream.next()).await else { continue };
        let now = Timestamp::now();
        state.insert((d.namespace().unwrap_or_default(), d.name_any()), d);
        seen.events += 1;
        let mut first_done = true;
        for (group, ns) in &groups {
            let mine: Vec<&Deployment> = state.iter().filter(|((n, _), _)| n == ns).map(|(_, d)| d).collect();
            let restarted = |d: &Deployment| restarted_at(d).is_some_and(|t| t > since);
            let in_flight = mine.iter().filter(|d| restarted(d) && !rolled_out(d)).count();
            let max = seen.max_in_flight.entry(group.clone()).or_default();
            *max = (*max).max(in_flight);
            if *group == first {
                first_done &= !mine.is_empty() && mine.iter().all(|d| restarted(d) && rolled_out(d));
            } else if seen.first_done_at.is_none() {
                seen.early.extend(mine.iter().filter(|d| restarted(d)).map(|d| d.name_any()));
            }
        }
        if first_done && seen.first_done_at.is_none() {
            seen.first_done_at = Some(now);
        }
    }
    seen
}

/// Waits until every Deployment of `ns` was restarted by the operator, rolled out, and runs only
/// pods injected by `policy`.
pub(super) async fn wait_all_injected(client: &Client, ns: &str, policy: &str) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let policies = Api::<TracingPolicy>::all(client.clone());
    wait::until(&format!("every Deployment in {ns} to run injected pods"), ROLLOUT_TIMEOUT, || async {
        for d in deployments.list(&ListParams::default()).await? {
            ensure!(restarted_at(&d).is_some() && rolled_out(&d), "{} not restarted and rolled out", d.name_any());
        }
        let p = policies.get(policy).await?;
        for pod in pods.list(&ListParams::default()).await? {
            if pod.metadata.deletion_timestamp.is_none() {
                let app = pod.labels().get("app").cloned().unwrap_or_default();
                assert_injected(&pod, &app, &p)?;
            }
        }
        Ok(())
    })
    .await
}

/// Waits until every Deployment of `ns` was rolled out again and runs only uninjected pods.
async fn wait_all_untouched(client: &Client, ns: &str, min_generation: i64) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    wait::until(&format!("every Deployment in {ns} to run uninjected pods"), ROLLOUT_TIMEOUT, || async {
        for d in deployments.list(&ListParams::default()).await? {
            let generation = d.metadata.generation.unwrap_or_default();
            ensure!(generation >= min_generation && rolled_out(&d), "{} at generation {generation}", d.name_any());
        }
        for pod in pods.list(&ListParams::default()).await? {
            if pod.metadata.deletion_timestamp.is_none() {
                assert_untouched(&pod)?;
            }
        }
        Ok(())
    })
    .await
}

/// Generation of every Deployment in `ns`, by name (each operator restart adds one).
pub(super) async fn generations(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let list = Api::<Deployment>::namespaced(client.clone(), ns).list(&ListParams::default()).await?;
    Ok(list.items.iter().map(|d| (d.name_any(), d.metadata.generation.unwrap_or_default())).collect())
}

pub(super) async fn wait_phase(client: &Client, policy: &str, phase: PolicyPhase) -> anyhow::Result<TracingPolicy> {
    let api = Api::<TracingPolicy>::all(client.clone());
    wait::until(&format!("policy {policy} to be {phase:?}"), ROLLOUT_TIMEOUT, || async {
        let p = api.get(policy).await?;
        let status = p.status.clone().unwrap_or_default();
        let current = (status.observed_generation == p.metadata.generation).then_some(status.phase).flatten();
        ensure!(current == Some(phase), "phase {current:?}; status {status:?}");
        Ok(p)
    })
    .await
}

pub(super) async fn patch_policy(client: &Client, policy: &str, patch: Value) -> anyhow::Result<()> {
    let api = Api::<TracingPolicy>::all(client.clone());
    api.patch(policy, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {policy}"))?;
    Ok(())
}

async fn label_namespace(client: &Client, ns: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling namespace {ns}"))?;
    Ok(())
}

/// Pilot namespace first (batch 1), expansion only after the 5s soak, in batches of 2.
pub async fn pilot_first_then_expansion_after_soak(suite: &mut Suite) -> anyhow::Result<Phased> {
    suite.log.step("rollout: pre-existing workloads, pilot first, expansion after the soak, batch sizes");
    let client = suite.cluster.client.clone();
    let pilot = suite.namespaces.create("pilot", &[ENABLED, (GROUP, "phased"), PILOT]).await?;
    let expansion = suite.namespaces.create("expansion", &[ENABLED, (GROUP, "phased")]).await?;
    running_deployments(&client, &pilot, &["p1", "p2"]).await?;
    running_deployments(&client, &expansion, &["e1", "e2", "e3", "e4"]).await?;
    suite.log.note(&format!("Deployments running uninjected: {pilot} [p1 p2], {expansion} [e1..e4]"));

    let stop = Arc::new(AtomicBool::new(false));
    let groups = vec![("pilot".to_string(), pilot.clone()), ("expansion".to_string(), expansion.clone())];
    let sampler = tokio::spawn(sample(client.clone(), groups, "pilot".into(), Timestamp::MIN, stop.clone()));
    let policy = policy_json(
        PHASED,
        "phased",
        json!({"phases": [
            {"name": "pilot", "namespaceSelector": {"matchLabels": {PILOT.0: PILOT.1}},
             "batchSize": 1, "soakDuration": "5s", "healthDeadline": "60s"},
            {"name": "expansion", "batchSize": EXPANSION_BATCH, "soakDuration": "0s", "healthDeadline": "20s"}
        ]}),
        None,
    )?;
    preview_shows_the_plan(suite, &policy, &pilot, &expansion)?;
    let applied = Timestamp::now();
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    let result = async {
        wait_all_injected(&client, &pilot, PHASED).await?;
        wait_all_injected(&client, &expansion, PHASED).await?;
        wait_phase(&client, PHASED, PolicyPhase::Complete).await
    }
    .await;
    stop.store(true, Ordering::Release);
    let seen = sampler.await.context("the sampler panicked")?;
    let done = result?;
    suite.log.note(&format!(
        "policy {PHASED} Complete {:.1}s after it was applied ({} Deployment changes watched)",
        Timestamp::now().duration_since(applied).as_secs_f64(),
        seen.events
    ));

    let pilot_max = seen.max_in_flight.get("pilot").copied().unwrap_or_default();
    let expansion_max = seen.max_in_flight.get("expansion").copied().unwrap_or_default();
    ensure!(pilot_max == 1, "pilot (batch 1): up to {pilot_max} restarts in flight at once");
    ensure!(
        expansion_max == EXPANSION_BATCH,
        "expansion (batch {EXPANSION_BATCH}): up to {expansion_max} restarts in flight at once"
    );
    suite
        .log
        .note(&format!("restarts in flight at most: pilot {pilot_max} (batch 1), expansion {expansion_max} (batch 2)"));

    ensure!(seen.early.is_empty(), "expansion restarted before the pilot finished: {:?}", seen.early);
    let pilot_done = seen.first_done_at.context("the pilot was never seen done")?;
    let expansion_deployments =
        Api::<Deployment>::namespaced(client.clone(), &expansion).list(&ListParams::default()).await?;
    let first_expansion =
        expansion_deployments.items.iter().filter_map(restarted_at).min().context("no expansion restart recorded")?;
    let gap = first_expansion.duration_since(pilot_done);
    ensure!(
        gap >= SignedDuration::try_from(SOAK)? - SignedDuration::from_millis(100),
        "expansion started {:.2}s after the pilot was done; the soak is {}s",
        gap.as_secs_f64(),
        SOAK.as_secs()
    );
    suite.log.note(&format!("expansion's first restart {:.1}s after the pilot was done (soak 5s)", gap.as_secs_f64()));

    for ns in [&pilot, &expansion] {
        let generations = generations(&client, ns).await?;
        ensure!(generations.values().all(|g| *g == 2), "each Deployment restarted exactly once: {generations:?}");
    }
    let status = done.status.clone().unwrap_or_default();
    for ns in [&pilot, &expansion] {
        ensure!(status.namespace_state(ns) == Some(NamespaceState::Active), "{ns} not Active: {status:?}");
    }
    let coverage = status.coverage.unwrap_or_default();
    ensure!(coverage.injected == 6 && coverage.outdated == 0, "coverage {coverage:?}");
    suite.log.note("every Deployment restarted exactly once; all 6 pods injected; coverage counts them");
    let events = Api::<Event>::namespaced(client.clone(), &pilot);
    wait::until("a Restarting Event on Deployment p1", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        let found = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("Restarting")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("p1")
                && e.note.as_deref().is_some_and(|n| n.contains(PHASED))
        });
        ensure!(found, "events: {:?}", list.items.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>());
        Ok(())
    })
    .await?;
    suite.log.note("Deployment p1 carries a Normal Event Restarting naming the policy");
    Ok(Phased { pilot, expansion })
}

/// `tracelight preview --policy FILE` lays out the rollout of a policy not applied yet.
fn preview_shows_the_plan(suite: &Suite, policy: &TracingPolicy, pilot: &str, expansion: &str) -> anyhow::Result<()> {
    let file = work_dir().join("preview-policy.yaml");
    std::fs::write(&file, serde_json::to_string(policy)?)?;
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("preview").arg("--policy").arg(&file).env("KUBECONFIG", &suite.cluster.kubeconfig);
    let text = checked(cmd)?;
    let expected = [
        format!("TracingPolicy {PHASED}: 6 restart(s) in 2 phase(s)"),
        format!("phase 1/2 \"pilot\": namespaces {pilot} (batch 1, soak 5s, health deadline 60s)"),
        format!("  batch 1: {pilot}/Deployment/p1\n  batch 2: {pilot}/Deployment/p2\n  then soak 5s"),
        format!("phase 2/2 \"expansion\": namespaces {expansion} (batch 2, soak 0s, health deadline 20s)"),
        format!("  batch 1: {expansion}/Deployment/e1, {expansion}/Deployment/e2"),
        format!("  batch 2: {expansion}/Deployment/e3, {expansion}/Deployment/e4"),
    ];
    for line in &expected {
        ensure!(text.contains(line.as_str()), "tracelight preview printed:\n{text}\nexpected it to contain:\n{line}");
    }
    suite.log.note("tracelight preview (before the policy exists): pilot p1 | p2, soak, expansion e1 e2 | e3 e4");
    Ok(())
}

/// A sampling change reaches the agent ConfigMaps and restarts nothing.
pub async fn sampling_change_restarts_nothing(suite: &mut Suite, phased: &Phased) -> anyhow::Result<()> {
    suite.log.step("rollout: a sampling change rewrites the agent config and restarts nothing");
    let client = suite.cluster.client.clone();
    let namespaces = [&phased.pilot, &phased.expansion];
    let mut before = Vec::new();
    for ns in namespaces {
        let pods: BTreeSet<String> = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        before.push((generations(&client, ns).await?, pods));
    }
    patch_policy(&client, PHASED, json!({"spec": {"sampling": {"ratio": 0.75}}})).await?;
    for ns in namespaces {
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns);
        wait::until(&format!("the agent config in {ns} to carry ratio 0.75"), Duration::from_secs(30), || async {
            let cm = configmaps.get(AGENT_CONFIGMAP).await?;
            let file = |f: ConfigFile| cm.data.as_ref().and_then(|d| d.get(f.key())).context(f.key());
            let ratio = AgentConfig::parse(file(ConfigFile::CURRENT)?.as_bytes())?.config.sampling.ratio.get();
            ensure!((ratio - 0.75).abs() < 1e-9, "ratio {ratio}");
            // Agents of the previous release read `config.yaml` strictly: same settings there.
            let old: v1::AgentConfig = serde_yaml::from_str(file(ConfigFile::V1)?)?;
            ensure!((old.sampling.ratio.get() - 0.75).abs() < 1e-9, "v1 ratio {}", old.sampling.ratio.get());
            Ok(())
        })
        .await?;
    }
    // Give a (wrong) restart the time to show.
    tokio::time::sleep(SOAK).await;
    for (ns, (generations_before, pods_before)) in namespaces.iter().zip(before) {
        ensure!(generations(&client, ns).await? == generations_before, "a Deployment in {ns} was restarted");
        let pods: BTreeSet<String> = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        ensure!(pods == pods_before, "pods in {ns} were replaced: {pods_before:?} -> {pods:?}");
    }
    wait_phase(&client, PHASED, PolicyPhase::Complete).await?;
    suite.log.note("agent ConfigMaps carry ratio 0.75; same pods and generations 5s later; policy Complete");
    Ok(())
}

/// Removing the namespace's label restarts its workloads without injection and removes its config.
pub async fn label_removal_restores_uninjected_pods(suite: &mut Suite, phased: &Phased) -> anyhow::Result<()> {
    suite.log.step("rollout: removing a namespace's label restores uninjected pods");
    let client = suite.cluster.client.clone();
    let pilot_before = generations(&client, &phased.pilot).await?;
    label_namespace(&client, &phased.expansion, GROUP, None).await?;
    wait_all_untouched(&client, &phased.expansion, 3).await?;
    let generations = generations(&client, &phased.expansion).await?;
    ensure!(generations.values().all(|g| *g == 3), "each Deployment restarted exactly once more: {generations:?}");
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &phased.expansion);
    let policies = Api::<TracingPolicy>::all(client.clone());
    wait::until(&format!("{PHASED} to leave {}", phased.expansion), Duration::from_secs(30), || async {
        ensure!(configmaps.get_opt(AGENT_CONFIGMAP).await?.is_none(), "the agent ConfigMap is still there");
        let status = policies.get(PHASED).await?.status.unwrap_or_default();
        ensure!(status.namespace_state(&phased.expansion).is_none(), "still in the status: {:?}", status.namespaces);
        Ok(())
    })
    .await?;
    ensure!(self::generations(&client, &phased.pilot).await? == pilot_before, "the pilot namespace was restarted");
    suite.log.note(&format!(
        "{}: 4 Deployments restarted without injection, agent ConfigMap removed, namespace out of the status; pilot untouched",
        phased.expansion
    ));
    Ok(())
}

/// `rollout.paused` holds new batches; resuming rolls the rest out.
pub async fn pause_holds_and_resume_continues(suite: &mut Suite) -> anyhow::Result<String> {
    suite.log.step("rollout: pause holds new batches, resume continues");
    let client = suite.cluster.client.clone();
    patch_policy(&client, PHASED, json!({"spec": {"rollout": {"paused": true}}})).await?;
    wait_phase(&client, PHASED, PolicyPhase::Paused).await?;
    let ns = suite.namespaces.create("paused", &[ENABLED]).await?;
    running_deployments(&client, &ns, &["q1", "q2", "q3"]).await?;
    label_namespace(&client, &ns, GROUP, Some("phased")).await?;
    let policies = Api::<TracingPolicy>::all(client.clone());
    wait::until(&format!("{PHASED} to govern {ns}"), Duration::from_secs(30), || async {
        let status = policies.get(PHASED).await?.status.unwrap_or_default();
        ensure!(status.namespace_state(&ns).is_some(), "not in the status yet");
        Ok(())
    })
    .await?;
    tokio::time::sleep(SOAK).await;
    let held = generations(&client, &ns).await?;
    ensure!(held.values().all(|g| *g == 1), "restarted while paused: {held:?}");
    let status = policies.get(PHASED).await?.status.unwrap_or_default();
    ensure!(status.phase == Some(PolicyPhase::Paused), "phase {:?}", status.phase);
    ensure!(status.namespace_state(&ns) == Some(NamespaceState::Pending), "{ns} is {:?}", status.namespace_state(&ns));
    suite.log.note(&format!("paused: {ns} governed but Pending, no Deployment restarted in 5s"));

    patch_policy(&client, PHASED, json!({"spec": {"rollout": {"paused": false}}})).await?;
    wait_active(&client, PHASED, &ns).await?;
    wait_all_injected(&client, &ns, PHASED).await?;
    wait_phase(&client, PHASED, PolicyPhase::Complete).await?;
    let resumed = generations(&client, &ns).await?;
    ensure!(resumed.values().all(|g| *g == 2), "each Deployment restarted exactly once: {resumed:?}");
    suite.log.note(&format!("resumed: {ns} Active, q1..q3 restarted once each and injected; policy Complete"));
    Ok(ns)
}

/// The operator is killed (SIGKILL) mid-rollout; the next one takes the Lease over and finishes it
/// without restarting again what was already done.
pub async fn killed_operator_rollout_continues(suite: &mut Suite) -> anyhow::Result<String> {
    suite.log.step("rollout: the operator is killed mid-rollout; its successor continues");
    let client = suite.cluster.client.clone();
    let ns = suite.namespaces.create("killed", &[ENABLED]).await?;
    // kwok makes pods Ready at once: without a floor on each batch, all four were restarted
    // between two polls and the kill came after the rollout. 3 s per batch leaves a wide window.
    running_slow_deployments(&client, &ns, &["k1", "k2", "k3", "k4"], 3).await?;
    label_namespace(&client, &ns, GROUP, Some("phased")).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let restarted = wait::until(&format!("a first restart in {ns}"), ROLLOUT_TIMEOUT, || async {
        let list = deployments.list(&ListParams::default()).await?;
        let restarted: Vec<String> =
            list.items.iter().filter(|d| restarted_at(d).is_some()).map(|d| d.name_any()).collect();
        ensure!(!restarted.is_empty(), "none yet");
        Ok(restarted)
    })
    .await?;
    // Judged from just before the kill: pods created after it miss injection (the webhook is
    // down with the operator) and are repaired, a second restart.
    let at_kill = deployments.list(&ListParams::default()).await?;
    suite.operator()?.kill()?;
    suite.operator = None;
    let done_at_kill: Vec<String> =
        at_kill.items.iter().filter(|d| restarted_at(d).is_some() && rolled_out(d)).map(|d| d.name_any()).collect();
    let untouched_at_kill: Vec<String> =
        at_kill.items.iter().filter(|d| restarted_at(d).is_none()).map(|d| d.name_any()).collect();
    ensure!(!untouched_at_kill.is_empty(), "the rollout was over before the kill: {restarted:?}");
    suite.log.note(&format!("operator killed (SIGKILL) with {restarted:?} restarted; {untouched_at_kill:?} not yet"));

    suite.log.note("starting a new operator (it waits for the dead one's Lease to expire)");
    suite.start_operator().await?;
    wait_all_injected(&client, &ns, PHASED).await?;
    wait_phase(&client, PHASED, PolicyPhase::Complete).await?;
    let generations = generations(&client, &ns).await?;
    for name in done_at_kill.iter().chain(&untouched_at_kill) {
        // Pods created while the webhook was down miss injection and are repaired (a second
        // restart) only for workloads in flight at the kill; the others restart exactly once.
        ensure!(generations.get(name) == Some(&2), "{name} restarted more than once: {generations:?}");
    }
    ensure!(generations.values().all(|g| (2..=3).contains(g)), "generations {generations:?}");
    suite.log.note(&format!("rollout finished by the new operator; generations {generations:?}"));
    Ok(ns)
}

/// A workload whose injected pods never become ready (the agent asks for more CPU than any node
/// has) is rolled back: excluded from injection, `Degraded`, an Event; the rollout stops there.
pub async fn failing_workload_is_rolled_back(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("rollout: injected pods never Ready -> rolled back, Degraded, Event; the rollout stops");
    let client = suite.cluster.client.clone();
    let ns = suite.namespaces.create("rollback", &[ENABLED, (GROUP, "rollback")]).await?;
    running_deployments(&client, &ns, &["f1", "f2"]).await?;
    let policy = policy_json(
        FAILING,
        "rollback",
        json!({"phases": [{"name": "only", "batchSize": 1, "soakDuration": "0s", "healthDeadline": "5s"}]}),
        // More CPU than any kwok node has (32): injected pods are never scheduled.
        Some(json!({"resources": {"requests": {"cpu": "64", "memory": "32Mi"}}})),
    )?;
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    let degraded = wait_phase(&client, FAILING, PolicyPhase::Degraded).await?;
    let status = degraded.status.clone().unwrap_or_default();
    let condition = status.conditions.iter().find(|c| c.type_ == "Degraded").context("no Degraded condition")?;
    ensure!(
        condition.status == "True" && condition.reason == "RolledBack" && condition.message.contains("f1"),
        "Degraded condition {condition:?}"
    );
    let excluded = status.rollout.as_ref().map(|r| r.excluded.clone()).unwrap_or_default();
    ensure!(
        excluded.len() == 1
            && excluded[0].name == "f1"
            && excluded[0].namespace == ns
            && excluded[0].kind == "Deployment",
        "status.rollout.excluded {excluded:?}"
    );
    suite.log.note(&format!("policy {FAILING} Degraded (RolledBack): {}", condition.message));

    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let f1 = deployments.get("f1").await?;
    let labels = f1.spec.template.metadata.as_ref().and_then(|m| m.labels.clone());
    ensure!(
        labels.as_ref().and_then(|l| l.get("tracelight.io/inject")).map(String::as_str) == Some("false"),
        "f1's template is not opted out: {labels:?}"
    );
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    wait::until("a RolledBack Event on Deployment f1", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        let found = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("RolledBack")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("f1")
                && e.type_.as_deref() == Some("Warning")
        });
        ensure!(found, "events: {:?}", list.items.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>());
        Ok(())
    })
    .await?;
    suite.log.note("Deployment f1: template labelled tracelight.io/inject=false, Warning Event RolledBack on it");

    // f1 runs uninjected again; f2 was never touched, and stays so while the policy is Degraded.
    wait_rolled_back(&client, &ns, "f1").await?;
    tokio::time::sleep(SOAK).await;
    let generations = generations(&client, &ns).await?;
    ensure!(generations.get("f2") == Some(&1), "f2 was restarted after the rollback: {generations:?}");
    let still = Api::<TracingPolicy>::all(client.clone()).get(FAILING).await?;
    ensure!(still.status.and_then(|s| s.phase) == Some(PolicyPhase::Degraded), "no longer Degraded");
    suite.log.note("f1 runs uninjected again; f2 never restarted; the policy stays Degraded");
    Ok(())
}

/// Deleting the policy restarts every injected workload without injection, removes the agent
/// objects, and only then lets the policy go (finalizer).
pub async fn deleting_the_policy_restores_uninjected_pods(
    suite: &mut Suite,
    namespaces: &[String],
) -> anyhow::Result<()> {
    suite.log.step("rollout: deleting the policy restores uninjected pods, then removes its config");
    let client = suite.cluster.client.clone();
    let policies = Api::<TracingPolicy>::all(client.clone());
    policies.delete(PHASED, &DeleteParams::default()).await?;
    wait::until(&format!("policy {PHASED} to be deleted (finalizer)"), ROLLOUT_TIMEOUT, || async {
        ensure!(policies.get_opt(PHASED).await?.is_none(), "still there");
        Ok(())
    })
    .await?;
    for ns in namespaces {
        // When the finalizer is gone every workload has been restarted without injection.
        let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
        for d in deployments.list(&ListParams::default()).await? {
            let generation = d.metadata.generation.unwrap_or_default();
            ensure!(generation >= 3, "{ns}/{} was not restarted (generation {generation})", d.name_any());
        }
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns);
        ensure!(configmaps.get_opt(AGENT_CONFIGMAP).await?.is_none(), "the agent ConfigMap is still in {ns}");
        wait_all_untouched(&client, ns, 3).await?;
    }
    suite.log.note(&format!("policy {PHASED} gone; {namespaces:?} run uninjected pods, agent ConfigMaps removed"));
    Ok(())
}
