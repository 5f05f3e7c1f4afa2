//! The phased rollout when things go wrong, on the real cluster: an injected workload that
//! crash-loops (kwok's `pod-crash-loop` stage, see e2e/cluster/kwok-stages-e2e.yaml) is rolled
//! back; pods created while the webhook was down are counted as missed and, once the policy
//! allows it, repaired through the paced batches; two operator replicas share one webhook address
//! and one Lease, and the follower finishes the leader's rollout when the leader is killed.

use super::rollout::{
    deployment, generations, patch_policy, policy_json, restarted_at, rolled_out, running_deployments, sample,
    wait_all_injected, wait_phase, GROUP, ROLLOUT_TIMEOUT, SOAK,
};
use super::{Suite, NAMESPACE};
use crate::support::forward::Forwarder;
use crate::support::objects::{from_json, template, ENABLED};
use crate::support::operator::Operator;
use crate::support::{free_port, wait, work_dir};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracelight::api::{PolicyPhase, TracingPolicy};

/// Template label that makes kwok crash-loop the pod once it is injected.
const CRASH_LOOP: (&str, &str) = ("e2e.tracelight.io/crash-loop", "true");
const CRASHING: &str = "e2e-crashloop";
const MISSED: &str = "e2e-missed";
const HA: &str = "e2e-ha";
/// The leader-election Lease (the chart's default name, in the operator's namespace).
const LEASE: &str = "tracelight-controller";

/// A single phase of batch 1, no soak, and a health deadline long enough that nothing in these
/// steps can pass or fail by it.
fn one_phase(health_deadline: &str) -> serde_json::Value {
    json!([{"name": "only", "batchSize": 1, "soakDuration": "0s", "healthDeadline": health_deadline}])
}

/// Events of `reason` on the Deployments of `ns`, by Deployment name: (reporting instance, note).
async fn workload_events(client: &Client, ns: &str, reason: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let events = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Deployment"))
        .map(|e| {
            let name = e.regarding.and_then(|r| r.name).unwrap_or_default();
            (name, e.reporting_instance.unwrap_or_default(), e.note.unwrap_or_default())
        })
        .collect())
}

/// A workload whose injected pods crash-loop (never Ready, restart count rising) is rolled back
/// because of the crash, long before its health deadline: uninjected pods again, an exclusion in
/// the status, a Warning Event naming CrashLoopBackOff, `Degraded`, and nothing else restarted.
pub async fn crash_looping_workload_is_rolled_back(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("rollout: injected pods in CrashLoopBackOff -> rolled back, Degraded, Event naming the cause");
    let client = suite.cluster.client.clone();
    let ns = suite.namespaces.create("crashloop", &[ENABLED, (GROUP, "crashloop")]).await?;
    let mut crashing = deployment("c1")?;
    crashing.spec.template = from_json(template("c1", &[CRASH_LOOP]))?;
    Api::<Deployment>::namespaced(client.clone(), &ns).create(&PostParams::default(), &crashing).await?;
    // Both run normally before injection: kwok crash-loops only injected pods.
    running_deployments(&client, &ns, &["c2"]).await?;
    let policy = policy_json(CRASHING, "crashloop", json!({"phases": one_phase("300s")}), None)?;
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;

    let degraded = wait_phase(&client, CRASHING, PolicyPhase::Degraded).await?;
    let status = degraded.status.clone().unwrap_or_default();
    let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t).cloned();
    let degraded_condition = condition("Degraded").context("no Degraded condition")?;
    ensure!(
        degraded_condition.status == "True"
            && degraded_condition.reason == "RolledBack"
            && degraded_condition.message.contains("c1")
            && degraded_condition.message.contains("CrashLoopBackOff"),
        "Degraded condition {degraded_condition:?}"
    );
    let ready = condition("Ready").context("no Ready condition")?;
    ensure!(ready.status == "False" && ready.reason == "RolledBack", "Ready condition {ready:?}");
    let excluded = status.rollout.as_ref().map(|r| r.excluded.clone()).unwrap_or_default();
    ensure!(
        excluded.len() == 1 && excluded[0].name == "c1" && excluded[0].reason.contains("CrashLoopBackOff"),
        "status.rollout.excluded {excluded:?}"
    );
    suite.log.note(&format!("policy {CRASHING} Degraded (RolledBack): {}", degraded_condition.message));

    wait::until("a Warning Event on c1 naming CrashLoopBackOff", Duration::from_secs(30), || async {
        let events = workload_events(&client, &ns, "RolledBack").await?;
        let found = events.iter().any(|(name, _, note)| name == "c1" && note.contains("CrashLoopBackOff"));
        ensure!(found, "RolledBack events: {events:?}");
        Ok(())
    })
    .await?;
    super::rollout::wait_rolled_back(&client, &ns, "c1").await?;
    tokio::time::sleep(SOAK).await;
    let generations = generations(&client, &ns).await?;
    ensure!(generations.get("c2") == Some(&1), "c2 was restarted after the rollback: {generations:?}");
    suite.log.note("c1 rolled back (Event names CrashLoopBackOff), runs uninjected Ready pods; c2 never restarted");
    Ok(())
}

/// Pods created while the operator (and so the webhook) is down are counted as missed; with
/// `repairMissed: false` that is all; once allowed, their workloads are restarted one batch at a
/// time until none is missed. The health deadline (300s) is far away: repair must not wait for it.
pub async fn missed_pods_are_counted_then_repaired(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("rollout: pods created while the webhook is down are counted as missed, then repaired in batches");
    let client = suite.cluster.client.clone();
    let ns = suite.namespaces.create("missed", &[ENABLED, (GROUP, "missed")]).await?;
    let names = ["m1", "m2", "m3"];
    running_deployments(&client, &ns, &names).await?;
    let rollout = json!({"phases": one_phase("300s"), "repairMissed": false});
    Api::<TracingPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy_json(MISSED, "missed", rollout, None)?)
        .await?;
    wait_all_injected(&client, &ns, MISSED).await?;
    wait_phase(&client, MISSED, PolicyPhase::Complete).await?;

    suite.stop_operator()?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let scale = json!({"spec": {"replicas": 2}});
    for name in names {
        deployments.patch(name, &PatchParams::default(), &Patch::Merge(&scale)).await?;
    }
    wait::until("the scaled-up Deployments to run 2 pods each", ROLLOUT_TIMEOUT, || async {
        for d in deployments.list(&ListParams::default()).await? {
            ensure!(rolled_out(&d), "{} not rolled out: {:?}", d.name_any(), d.status);
        }
        Ok(())
    })
    .await?;
    suite.log.note("operator stopped; m1..m3 scaled to 2 replicas: each has one pod the webhook never saw");
    suite.start_operator().await?;

    let policies = Api::<TracingPolicy>::all(client.clone());
    let counted = wait::until("the policy to count 3 missed pods", Duration::from_secs(60), || async {
        let p = policies.get(MISSED).await?;
        let status = p.status.clone().unwrap_or_default();
        let missed = status.namespaces.iter().find(|n| n.name == ns).map(|n| n.counts.missed);
        let total = status.coverage.as_ref().map(|c| c.missed);
        ensure!(missed == Some(3) && total == Some(3), "missed in {ns}: {missed:?}, in all: {total:?}");
        Ok(p)
    })
    .await?;
    let status = counted.status.unwrap_or_default();
    ensure!(status.phase == Some(PolicyPhase::Complete), "repair is off: nothing to do, yet {:?}", status.phase);
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").context("no Ready condition")?;
    ensure!(ready.status == "True" && ready.reason == "Complete", "Ready condition {ready:?}");
    let before = generations(&client, &ns).await?;
    tokio::time::sleep(SOAK).await;
    ensure!(generations(&client, &ns).await? == before, "restarted although repairMissed is false: {before:?}");
    suite.log.note(&format!("status counts 3 missed pods in {ns}; repairMissed false: nothing restarted in 5s"));

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(
        client.clone(),
        vec![("missed".into(), ns.clone())],
        "missed".into(),
        k8s_openapi::jiff::Timestamp::MIN,
        stop.clone(),
    ));
    patch_policy(&client, MISSED, json!({"spec": {"rollout": {"repairMissed": true}}})).await?;
    let result = async {
        wait::until("every pod to be injected and none missed", ROLLOUT_TIMEOUT, || async {
            let status = policies.get(MISSED).await?.status.unwrap_or_default();
            let counts = status.namespaces.iter().find(|n| n.name == ns).map(|n| n.counts.clone());
            ensure!(counts.as_ref().is_some_and(|c| c.missed == 0 && c.injected == 6), "counts {counts:?}");
            Ok(())
        })
        .await?;
        wait_all_injected(&client, &ns, MISSED).await?;
        wait_phase(&client, MISSED, PolicyPhase::Complete).await
    }
    .await;
    stop.store(true, Ordering::Release);
    let seen = sampler.await.context("the sampler panicked")?;
    result?;
    let after = generations(&client, &ns).await?;
    ensure!(
        after.iter().all(|(name, g)| before.get(name).is_some_and(|b| *g == b + 1)),
        "each Deployment restarted exactly once to repair: {before:?} -> {after:?}"
    );
    let max = seen.max_in_flight.get("missed").copied().unwrap_or_default();
    ensure!(max == 1, "batch 1: up to {max} repairs in flight at once");
    let events = workload_events(&client, &ns, "Restarting").await?;
    let repaired: Vec<&String> =
        events.iter().filter(|(_, _, note)| note.contains("missed injection")).map(|(name, _, _)| name).collect();
    ensure!(repaired.len() >= names.len(), "Events of repair restarts: {events:?}");
    suite.log.note(&format!(
        "repairMissed true: m1..m3 restarted once each, one at a time (max in flight {max}); 6 pods injected, 0 missed"
    ));
    Ok(())
}

/// `tracelight controller` args for another replica: the suite's, on its own ports.
fn replica_args(suite: &Suite, webhook_port: u16, admin_port: u16) -> Vec<String> {
    let mut args: Vec<String> = suite
        .operator_args
        .iter()
        .filter(|a| !a.starts_with("--webhook-addr=") && !a.starts_with("--admin-addr="))
        .cloned()
        .collect();
    args.push(format!("--webhook-addr=127.0.0.1:{webhook_port}"));
    args.push(format!("--admin-addr=127.0.0.1:{admin_port}"));
    // What POD_IP gives a replica in the cluster: where the others forward reports while it leads.
    args.push(format!("--advertise-address=127.0.0.1:{webhook_port}"));
    args
}

/// Starts one more operator replica, logging to its own file, and waits until its webhook serves.
async fn start_replica(suite: &mut Suite, which: &str) -> anyhow::Result<(Operator, u16)> {
    let (webhook_port, admin_port) = (free_port(), free_port());
    let log = work_dir().join(format!("{}-operator-replica-{which}.log", env!("CARGO_CRATE_NAME")));
    suite.operator_logs.push(log.clone());
    let args = replica_args(suite, webhook_port, admin_port);
    let mut operator = Operator::start(&suite.sa_kubeconfig, NAMESPACE, &args, admin_port, log)?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    Ok((operator, webhook_port))
}

async fn lease_holder(client: &Client) -> anyhow::Result<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), NAMESPACE).get(LEASE).await?;
    Ok(lease.spec.and_then(|s| s.holder_identity).unwrap_or_default())
}

async fn wait_leader(client: &Client, operator: &Operator) -> anyhow::Result<()> {
    let prefix = format!("{}_", operator.name);
    wait::until(&format!("{} to hold the Lease", operator.name), Duration::from_secs(60), || async {
        let holder = lease_holder(client).await?;
        ensure!(holder.starts_with(&prefix), "held by {holder:?}");
        ensure!(operator.metric("tracelight_controller_leader").await? == 1.0, "its leader gauge is not 1");
        Ok(())
    })
    .await
}

/// Two replicas behind one webhook address (a forwarder, as a Service would be): exactly one
/// holds the Lease and restarts workloads; killed (SIGKILL, its Lease not released), the other
/// takes over and finishes the rollout without restarting anything twice.
pub async fn two_replicas_one_leader(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("rollout: two operator replicas, one leader; the leader killed mid-rollout, the other finishes");
    let client = suite.cluster.client.clone();
    suite.stop_operator()?;
    let (mut leader, leader_hook) = start_replica(suite, "a").await?;
    wait_leader(&client, &leader).await?;
    let (mut follower, follower_hook) = start_replica(suite, "b").await?;
    // The API server calls the webhook address of the chart; both replicas sit behind it.
    let forwarder = Forwarder::start(suite.webhook_port, vec![leader_hook, follower_hook]).await?;
    let result = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(lease_holder(&client).await?.starts_with(&format!("{}_", leader.name)), "the Lease changed hands");
        ensure!(follower.metric("tracelight_controller_leader").await? == 0.0, "the follower says it leads");
        suite.log.note(&format!("replicas {} (leader) and {} (follower, webhook ready)", leader.name, follower.name));

        let ns = suite.namespaces.create("ha", &[ENABLED, (GROUP, "ha")]).await?;
        let names = ["h1", "h2", "h3", "h4"];
        running_deployments(&client, &ns, &names).await?;
        let policy = policy_json(HA, "ha", json!({"phases": one_phase("120s")}), None)?;
        Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        wait::until(&format!("a first restart in {ns}"), ROLLOUT_TIMEOUT, || async {
            let list = deployments.list(&ListParams::default()).await?;
            ensure!(list.items.iter().any(|d| restarted_at(d).is_some()), "none yet");
            Ok(())
        })
        .await?;
        // Restarts are still running: not Ready, and the condition says why.
        let status = Api::<TracingPolicy>::all(client.clone()).get(HA).await?.status.unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").context("no Ready condition")?;
        ensure!(ready.status == "False" && ready.reason == "Progressing", "mid-rollout Ready condition {ready:?}");
        const RESTARTS: &str = "tracelight_controller_workload_restarts_total";
        let (by_leader, by_follower) = (leader.metric(RESTARTS).await?, follower.metric(RESTARTS).await?);
        ensure!(by_leader >= 1.0 && by_follower == 0.0, "restarts: leader {by_leader}, follower {by_follower}");
        let at_kill = deployments.list(&ListParams::default()).await?;
        let untouched: Vec<String> =
            at_kill.items.iter().filter(|d| restarted_at(d).is_none()).map(|d| d.name_any()).collect();
        leader.kill()?;
        ensure!(!untouched.is_empty(), "the rollout was over before the kill");
        suite
            .log
            .note(&format!("leader killed (SIGKILL) after {by_leader} restart(s); {untouched:?} not restarted yet"));

        wait_leader(&client, &follower).await?;
        wait_all_injected(&client, &ns, HA).await?;
        wait_phase(&client, HA, PolicyPhase::Complete).await?;
        let generations = generations(&client, &ns).await?;
        ensure!(generations.values().all(|g| *g == 2), "each Deployment restarted exactly once: {generations:?}");
        let events = workload_events(&client, &ns, "Restarting").await?;
        let mut by_workload: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, instance, _) in &events {
            by_workload.entry(name).or_default().push(instance);
        }
        ensure!(
            names.iter().all(|n| by_workload.get(n).is_some_and(|i| i.len() == 1)),
            "one Restarting Event per Deployment: {events:?}"
        );
        for name in &untouched {
            let instance = by_workload.get(name.as_str()).and_then(|i| i.first()).copied().unwrap_or_default();
            ensure!(
                instance == follower.name,
                "{name} restarted by {instance:?}, not the new leader {}",
                follower.name
            );
        }
        ensure!(
            events.iter().all(|(_, i, _)| *i == leader.name || *i == follower.name),
            "restarted by someone else: {events:?}"
        );
        ensure!(forwarder.forwarded(1) > 0, "no webhook call reached the follower");
        suite.log.note(&format!(
            "{} took the Lease over and finished: each Deployment restarted once (generations {generations:?}); \
             Events name the instance that restarted it",
            follower.name
        ));
        Ok(())
    }
    .await;
    // Back to the suite's single operator on the webhook's own port, whatever happened.
    let stopped = follower.stop();
    forwarder.stop().await;
    drop(leader);
    suite.start_operator().await?;
    result?;
    let status = stopped?;
    ensure!(status.success(), "the follower exited with {status} on SIGTERM");
    Ok(())
}

const COVERED: &str = "e2e-coverage-ha";
/// How often the stand-in agents push (the real ones: every 30 s; more than one every 5 s per
/// agent is answered 429).
const PUSH_EVERY: Duration = Duration::from_secs(6);

/// A projected token of the report audience bound to `pod`, as the agent container gets it.
pub(super) fn report_token(suite: &Suite, ns: &str, pod: &k8s_openapi::api::core::v1::Pod) -> anyhow::Result<String> {
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let (name, uid) = (pod.name_any(), pod.metadata.uid.clone().unwrap_or_default());
    let token = suite.cluster.kubectl([
        "create",
        "token",
        &sa,
        "-n",
        ns,
        "--audience",
        tracelight_contract::report::REPORT_AUDIENCE,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        &name,
        "--bound-object-uid",
        &uid,
        "--duration",
        "1h",
    ])?;
    Ok(token.trim().to_string())
}

/// The `reporting` count of `ns` in the policy's status.
async fn reporting(client: &Client, ns: &str) -> anyhow::Result<u32> {
    let p = Api::<TracingPolicy>::all(client.clone()).get(COVERED).await?;
    let status = p.status.unwrap_or_default();
    Ok(status.namespaces.iter().find(|n| n.name == ns).map_or(0, |n| n.counts.reporting))
}

/// Two replicas behind one address, reports landing on either: the policy status counts every
/// reporting pod, as one replica receiving them all would (the follower forwards its reports to
/// the leader). The leader killed, the count never drops and is complete within one report
/// interval of the takeover.
pub async fn two_replicas_count_every_report(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("coverage: two replicas, reports land on either; every report counts, also after the leader dies");
    let client = suite.cluster.client.clone();
    let configs = Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(client.clone());
    let config = configs.get(super::WEBHOOK_CONFIG).await?;
    let ca = config
        .webhooks
        .and_then(|w| w.into_iter().next())
        .and_then(|w| w.client_config.ca_bundle)
        .context("no caBundle published")?
        .0;
    suite.stop_operator()?;
    let (mut leader, leader_hook) = start_replica(suite, "cov-a").await?;
    wait_leader(&client, &leader).await?;
    let (mut follower, follower_hook) = start_replica(suite, "cov-b").await?;
    let forwarder = Forwarder::start(suite.webhook_port, vec![leader_hook, follower_hook]).await?;
    let stop_pushing = Arc::new(AtomicBool::new(false));
    let mut pusher = None;
    let result = async {
        let ns = suite.namespaces.create("coverage", &[ENABLED, (GROUP, "coverage")]).await?;
        let names = ["k1", "k2", "k3", "k4", "k5", "k6"];
        running_deployments(&client, &ns, &names).await?;
        let rollout = json!({"phases": [{"name": "all", "batchSize": 6, "soakDuration": "5s"}]});
        let policy = policy_json(COVERED, "coverage", rollout, None)?;
        Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
        wait_all_injected(&client, &ns, COVERED).await?;
        let pods: Vec<_> = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        ensure!(pods.len() == names.len(), "{} pods, expected {}", pods.len(), names.len());
        let mut agents = Vec::new();
        for pod in &pods {
            let report = json!({
                "contractVersion": tracelight_contract::CONTRACT_VERSION, "agentVersion": "0.2.0",
                "pod": {"podName": pod.name_any(), "namespace": ns, "podUid": pod.metadata.uid},
                "configGeneration": 1, "services": {"svc": 1}, "spans": {"received": 1},
                "uptimeSeconds": 5, "lastSpanAgeSeconds": 1
            });
            agents.push((report_token(suite, &ns, pod)?, serde_json::to_vec(&report)?));
        }
        // Stand-ins for the agents: each push a new connection, so the forwarder alternates.
        let (port, stop, ca) = (suite.webhook_port, stop_pushing.clone(), ca.clone());
        pusher = Some(tokio::spawn(async move {
            let mut refused = Vec::new();
            while !stop.load(Ordering::Acquire) {
                for (token, body) in &agents {
                    match crate::support::tls::post_with_token(port, &ca, "/v1/agent-reports", token, body).await {
                        Ok(204) => {}
                        other => refused.push(format!("{other:?}")),
                    }
                }
                tokio::time::sleep(PUSH_EVERY).await;
            }
            refused
        }));
        let want = u32::try_from(pods.len())?;
        wait::until(&format!("{want} reporting pods in {ns} with two replicas"), Duration::from_secs(60), || async {
            let n = reporting(&client, &ns).await?;
            ensure!(n == want, "{n} reporting");
            Ok(())
        })
        .await?;
        ensure!(forwarder.forwarded(0) > 0 && forwarder.forwarded(1) > 0, "reports did not reach both replicas");
        let (_, metrics) = crate::support::operator::http_get(follower.admin_port, "/metrics").await?;
        let forwarded = metrics
            .lines()
            .find(|l| l.starts_with("tracelight_agent_reports_forwarded_total{result=\"forwarded\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_default();
        ensure!(forwarded > 0.0, "the follower forwarded no report to the leader");
        suite.log.note(&format!(
            "{want} of {want} pods reporting (what one replica receiving every report counts); \
             connections: leader {}, follower {}; the follower forwarded {forwarded}",
            forwarder.forwarded(0),
            forwarder.forwarded(1)
        ));

        leader.kill()?;
        let killed = std::time::Instant::now();
        let mut lowest = want;
        let mut took_over = None;
        let interval = tracelight::webhook::reports::store::REPORT_INTERVAL;
        loop {
            lowest = lowest.min(reporting(&client, &ns).await?);
            if took_over.is_none() && follower.metric("tracelight_controller_leader").await? == 1.0 {
                took_over = Some(std::time::Instant::now());
            }
            if let Some(at) = took_over {
                if at.elapsed() > interval {
                    break;
                }
            }
            ensure!(killed.elapsed() < Duration::from_secs(90), "the follower did not take over within 90s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let after = reporting(&client, &ns).await?;
        ensure!(lowest == want, "the reporting count dropped to {lowest} after the leader was killed");
        ensure!(after == want, "{after} of {want} reporting one report interval after the takeover");
        suite.log.note(&format!(
            "leader killed: {} took over after {:.0}s; {want} of {want} reporting throughout and one report interval later",
            follower.name,
            took_over.map(|t| (t - killed).as_secs_f64()).unwrap_or_default()
        ));
        Ok(())
    }
    .await;
    stop_pushing.store(true, Ordering::Release);
    let refused = match pusher {
        Some(p) => p.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let _ = Api::<TracingPolicy>::all(client.clone()).delete(COVERED, &Default::default()).await;
    let stopped = follower.stop();
    forwarder.stop().await;
    drop(leader);
    suite.start_operator().await?;
    result?;
    // Pushes to the killed leader's port fail over in the forwarder; none may be refused.
    ensure!(refused.is_empty(), "reports refused: {refused:?}");
    let status = stopped?;
    ensure!(status.success(), "the follower exited with {status} on SIGTERM");
    Ok(())
}
