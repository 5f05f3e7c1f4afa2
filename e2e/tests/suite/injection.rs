//! Pods created by the real controllers (Deployment, StatefulSet, Job, CronJob) in an opted-in,
//! active namespace carry the agent sidecar, the OpenTelemetry env and the record label and
//! annotations; pods elsewhere, or opted out, are untouched.

use super::{wait_active, Active, Suite};
use crate::support::objects::{
    self, assert_injected, assert_untouched, create_pod, first_pod_of, from_json, wait_injecting, ENABLED,
};
use crate::support::{repo_root, wait};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::{Duration, Instant};
use tracelight::api::TracingPolicy;
use tracelight_contract::config::AGENT_CONFIGMAP;

const POD_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates `object` (a namespaced resource of type `K`) in `ns`.
async fn create<K>(client: &Client, ns: &str, object: Value) -> anyhow::Result<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = from_json(object)?;
    let name = object.name_any();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {} {ns}/{name}", K::kind(&())))
}

pub async fn workloads_are_injected(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("injection: the sample policy, workloads in a labelled namespace");
    let client = suite.cluster.client.clone();
    let sample = repo_root().join("config/samples/tracingpolicy.yaml");
    suite.cluster.kubectl(["apply", "-f", &sample.display().to_string()])?;
    let on = suite.namespaces.create("on", &[ENABLED]).await?;
    let off = suite.namespaces.create("off", &[]).await?;
    let policy = wait_active(&client, "default", &on).await?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &on);
    configmaps.get(AGENT_CONFIGMAP).await.with_context(|| format!("the agent ConfigMap in {on}"))?;
    suite.log.note(&format!("policy default: namespace {on} Active, agent ConfigMap written"));
    wait_injecting(&client, &on, Duration::from_secs(30)).await?;
    suite.active = Some(Active { namespace: on.clone(), policy: policy.clone() });

    // The CronJob first: its first Job starts at the next full minute.
    let cron_created = Instant::now();
    create::<CronJob>(&client, &on, objects::cronjob("nightly")).await?;
    create::<Deployment>(&client, &on, objects::deployment("web")).await?;
    create::<StatefulSet>(&client, &on, objects::statefulset("ledger")).await?;
    create::<Job>(&client, &on, objects::job("migrate")).await?;
    create::<Deployment>(&client, &off, objects::deployment("web")).await?;
    let opted_out = create_pod(&client, &on, "opted-out", &[("tracelight.io/inject", "false")]).await?;

    let deployments = Api::<Deployment>::namespaced(client.clone(), &on);
    let web_pods = wait::until("2 pods of Deployment web", POD_TIMEOUT, || async {
        let pods = Api::<Pod>::namespaced(client.clone(), &on).list(&ListParams::default().labels("app=web")).await?;
        ensure!(pods.items.len() >= 2, "{} pods", pods.items.len());
        Ok(pods.items)
    })
    .await?;
    for pod in &web_pods {
        assert_injected(pod, "web", &policy)?;
    }
    wait::until("Deployment web to have 2 ready replicas", POD_TIMEOUT, || async {
        let d = deployments.get("web").await?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        ensure!(ready == 2, "{ready} ready");
        Ok(())
    })
    .await?;
    suite.log.note("Deployment web: 2 pods injected (service.name web) and Ready");

    assert_injected(&first_pod_of(&client, &on, "ledger", POD_TIMEOUT).await?, "ledger", &policy)?;
    suite.log.note("StatefulSet ledger: pod injected (service.name ledger)");

    assert_injected(&first_pod_of(&client, &on, "migrate", POD_TIMEOUT).await?, "migrate", &policy)?;
    let jobs = Api::<Job>::namespaced(client.clone(), &on);
    wait::until("Job migrate to complete", POD_TIMEOUT, || async {
        let job = jobs.get("migrate").await?;
        let succeeded = job.status.and_then(|s| s.succeeded).unwrap_or(0);
        ensure!(succeeded == 1, "succeeded {succeeded}");
        Ok(())
    })
    .await?;
    suite.log.note("Job migrate: pod injected (service.name migrate), Job complete despite the sidecar");

    assert_untouched(&opted_out).context("a pod labelled tracelight.io/inject=false")?;
    suite.log.note("opted-out pod (tracelight.io/inject=false): untouched");
    assert_untouched(&first_pod_of(&client, &off, "web", POD_TIMEOUT).await?).context("unlabelled namespace")?;
    suite.log.note(&format!("Deployment web in unlabelled namespace {off}: untouched"));

    suite.log.note("waiting for the CronJob's first Job (schedule * * * * *)");
    let cron_pod = first_pod_of(&client, &on, "nightly", Duration::from_secs(100)).await?;
    let owner = cron_pod.owner_references().first().map(|o| (o.kind.clone(), o.name.clone()));
    ensure!(
        owner.as_ref().is_some_and(|(kind, name)| kind == "Job" && name.starts_with("nightly-")),
        "the nightly pod is not owned by a CronJob-spawned Job: {owner:?}"
    );
    assert_injected(&cron_pod, "nightly", &policy)?;
    suite.log.note(&format!(
        "CronJob nightly: Job {} spawned after {:.0}s, its pod injected (service.name nightly)",
        owner.map(|o| o.1).unwrap_or_default(),
        cron_created.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The namespace's injected count once it settles, polled until `want` within `bound`; the time it
/// took.
async fn injected_count_reaches(client: &Client, ns: &str, want: u32, bound: Duration) -> anyhow::Result<Duration> {
    let api = Api::<TracingPolicy>::all(client.clone());
    let start = Instant::now();
    wait::until_every(
        &format!("namespace {ns}: status counts injected {want}"),
        bound,
        Duration::from_millis(250),
        || async {
            let policy = api.get("default").await?;
            let status = policy.status.context("no status")?;
            let counts = status.namespaces.iter().find(|n| n.name == ns).map(|n| n.counts.injected);
            ensure!(counts == Some(want), "injected {counts:?}");
            Ok(())
        },
    )
    .await?;
    Ok(start.elapsed())
}

/// A bare pod (no workload whose status changes would wake the controller) moves the policy's
/// injected count within seconds of its creation and of its deletion, not at the periodic
/// reconcile (a minute).
pub async fn counts_follow_pods(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("coverage counts follow pods within seconds");
    const BOUND: Duration = Duration::from_secs(10);
    let client = suite.cluster.client.clone();
    let ns = suite.namespaces.create("counts", &[ENABLED]).await?;
    wait_active(&client, "default", &ns).await?;
    wait_injecting(&client, &ns, Duration::from_secs(30)).await?;
    injected_count_reaches(&client, &ns, 0, Duration::from_secs(30)).await?;

    let pod = create_pod(&client, &ns, "bare", &[]).await?;
    ensure!(pod.labels().get("tracelight.io/injected").is_some_and(|v| v == "true"), "the bare pod was not injected");
    let took = injected_count_reaches(&client, &ns, 1, BOUND).await?;
    suite.log.note(&format!("bare pod created: injected count 1 after {:.1}s", took.as_secs_f64()));

    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.delete("bare", &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    let took = injected_count_reaches(&client, &ns, 0, BOUND).await?;
    suite.log.note(&format!("bare pod deleted: injected count 0 after {:.1}s", took.as_secs_f64()));
    Ok(())
}
