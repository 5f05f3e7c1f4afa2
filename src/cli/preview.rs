//! `tracelight preview`: the rollout a policy would run on the cluster as it is now — phases,
//! namespaces, workloads in restart order — without restarting or injecting anything. Reads the
//! cluster (read-only); decides with the same pure functions as the controller.

use crate::api::{NamespaceState, TracingPolicy, TracingPolicyStatus};
use crate::decision::governance::govern;
use crate::decision::workloads::{leaving_namespaces, observation, observe_workloads, unclaimed_namespaces, Snapshot};
use crate::inject::InjectOptions;
use crate::rollout::pod::PodSummary;
use crate::rollout::preview::{preview, Preview};
use crate::rollout::workload::Workload;
use crate::rollout::RestartReason;
use crate::sampling::projection;
use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "policy"])))]
pub struct PreviewArgs {
    /// Name of a TracingPolicy in the cluster.
    pub name: Option<String>,
    /// A TracingPolicy manifest not applied yet.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Whether the operator injects the agent as a native sidecar (its `--native-sidecar`): the
    /// manifest hash, hence which pods count as current, depends on it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    /// The agent image the operator injects when a policy names none (its `--agent-image`): part
    /// of the manifest hash.
    #[arg(long, default_value_t = crate::inject::shipped_agent_image())]
    pub agent_image: String,
}

pub fn run(args: &PreviewArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let text = runtime.block_on(preview_cluster(args))?;
    print!("{text}");
    Ok(())
}

/// Reads the cluster and renders the preview.
async fn preview_cluster(args: &PreviewArgs) -> anyhow::Result<String> {
    let client = Client::try_default().await.context("connecting to the cluster (KUBECONFIG)")?;
    let policies: Vec<TracingPolicy> = Api::<TracingPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing TracingPolicies")?
        .items
        .into_iter()
        .map(|mut p| {
            crate::api::legacy::forget_legacy_defaults(&mut p);
            p
        })
        .collect();
    let policy = match (&args.policy, &args.name) {
        (Some(path), _) => {
            // Not applied yet: it would be the youngest policy, losing overlaps to older ones.
            let mut p = super::inject::load_policy(path)?;
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
            p
        }
        (None, Some(name)) => policies
            .iter()
            .find(|p| p.name_any() == *name)
            .cloned()
            .with_context(|| format!("no TracingPolicy {name} in the cluster"))?,
        (None, None) => anyhow::bail!("name a policy, or give one with --policy"),
    };
    let namespaces = list::<Namespace>(&client).await?;
    let deployments = list::<Deployment>(&client).await?;
    let statefulsets = list::<StatefulSet>(&client).await?;
    let daemonsets = list::<DaemonSet>(&client).await?;
    let pods = Api::<Pod>::all(client.clone()).list_metadata(&ListParams::default()).await.context("listing pods")?;
    // Metadata only: no container restart state (a preview judges no restart's health).
    let pods: Vec<PodSummary> = pods.items.iter().map(|p| PodSummary::from_meta(&p.metadata, Box::default())).collect();

    let others: Vec<&TracingPolicy> = policies.iter().filter(|p| p.name_any() != policy.name_any()).collect();
    let governance = govern(&policy, others.iter().copied().chain([&policy]), namespaces.iter());
    let mut all: Vec<&TracingPolicy> = others.clone();
    all.push(&policy);
    let unclaimed = unclaimed_namespaces(&policy.name_any(), &all, namespaces.iter());
    let leaving = leaving_namespaces(policy.status.as_ref(), &governance, &unclaimed);
    let workloads: Vec<Workload> = deployments
        .iter()
        .map(Workload::from)
        .chain(statefulsets.iter().map(Workload::from))
        .chain(daemonsets.iter().map(Workload::from))
        .collect();
    let snapshot = Snapshot { workloads: workloads.iter().collect(), pods: pods.iter().collect() };
    let options = InjectOptions {
        native_sidecar: args.native_sidecar,
        images: crate::inject::DefaultImages { agent: args.agent_image.clone(), ..Default::default() },
        ..Default::default()
    };
    let workloads = observe_workloads(&policy, &governance, &leaving, &snapshot, &options);
    let obs = observation(&policy, &governance, workloads, policy.status.as_ref(), Timestamp::now());
    let mut pods_by_ns: BTreeMap<String, u32> = BTreeMap::new();
    for w in obs.workloads.iter().filter(|w| w.desired_hash.is_some()) {
        *pods_by_ns.entry(w.id.namespace.clone()).or_default() += w.pods.total;
    }
    let p = preview(&obs);
    let mut text = render(&policy.name_any(), &p, policy.spec.rollout.paused);
    text.push_str(&render_cost(&p, policy.status.as_ref(), &pods_by_ns));
    Ok(text)
}

/// Projected spans and bytes per second of the namespaces not rolled out yet, by phase (see
/// [`crate::sampling::projection`] for the method).
pub fn render_cost(p: &Preview, status: Option<&TracingPolicyStatus>, pods_by_ns: &BTreeMap<String, u32>) -> String {
    let mut out = String::new();
    let active = |ns: &str| status.and_then(|s| s.namespace_state(ns)) == Some(NamespaceState::Active);
    let Some(per_pod) = status.and_then(projection::per_pod) else {
        let _ = writeln!(out, "cost: not projected yet (no rolled-out namespace has measured rates)");
        return out;
    };
    let kib = |b: Option<f64>| b.map_or("bytes not reported".to_string(), |b| format!("{:.1} KiB/s", b / 1024.0));
    let _ = writeln!(
        out,
        "cost of what is not rolled out yet (per pod: {:.1} spans/s received, {:.1} kept, {}; the average of {} pod(s) reporting in {} active namespace(s), times each namespace's pods):",
        per_pod.received,
        per_pod.kept,
        kib(per_pod.kept_bytes),
        per_pod.pods,
        per_pod.namespaces
    );
    let mut total = (0.0, 0.0, None::<f64>);
    for phase in &p.phases {
        for ns in phase.namespaces.iter().filter(|ns| !active(ns)) {
            let pods = pods_by_ns.get(ns).copied().unwrap_or_default();
            let c = projection::project(&per_pod, pods);
            total.0 += c.received;
            total.1 += c.kept;
            if let Some(b) = c.kept_bytes {
                *total.2.get_or_insert(0.0) += b;
            }
            let _ = writeln!(
                out,
                "  phase {:?}: {ns}: {pods} pod(s): ~{:.0} spans/s received, ~{:.0} kept, ~{}",
                phase.settings.name,
                c.received,
                c.kept,
                kib(c.kept_bytes)
            );
        }
    }
    let _ = writeln!(out, "  total to come: ~{:.0} spans/s received, ~{:.0} kept, ~{}", total.0, total.1, kib(total.2));
    out
}

async fn list<K>(client: &Client) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api = Api::<K>::all(client.clone());
    Ok(api.list(&ListParams::default()).await.with_context(|| format!("listing {}", K::plural(&())))?.items)
}

/// The preview as text: one block per phase, one line per batch.
pub fn render(policy: &str, p: &Preview, paused: bool) -> String {
    let mut out = String::new();
    let phases = p.phases.len();
    let _ = writeln!(out, "TracingPolicy {policy}: {} restart(s) in {phases} phase(s)", p.restarts());
    if paused {
        let _ = writeln!(out, "  (rollout.paused is set: nothing starts until it is cleared)");
    }
    for (i, phase) in p.phases.iter().enumerate() {
        let s = &phase.settings;
        let namespaces = if phase.namespaces.is_empty() { "none".to_string() } else { phase.namespaces.join(", ") };
        let _ = writeln!(
            out,
            "phase {}/{phases} {:?}: namespaces {namespaces} (batch {}, soak {}s, health deadline {}s)",
            i + 1,
            s.name,
            s.batch_size,
            s.soak.as_secs(),
            s.health_deadline.as_secs()
        );
        if phase.batches.is_empty() {
            let _ = writeln!(out, "  nothing to restart");
        }
        for (b, batch) in phase.batches.iter().enumerate() {
            let names: Vec<String> = batch
                .iter()
                .map(|(id, reason)| match reason {
                    RestartReason::Repair => format!("{id} (missed injection)"),
                    _ => id.to_string(),
                })
                .collect();
            let _ = writeln!(out, "  batch {}: {}", b + 1, names.join(", "));
        }
        if i + 1 < phases && !s.soak.is_zero() {
            let _ = writeln!(out, "  then soak {}s", s.soak.as_secs());
        }
    }
    if !p.leaving.is_empty() {
        let names: Vec<String> = p.leaving.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "leaving (restarted without injection): {}", names.join(", "));
    }
    if !p.excluded.is_empty() {
        let names: Vec<String> = p.excluded.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "excluded after a rollback (not restarted): {}", names.join(", "));
    }
    let _ = writeln!(out, "already injected: {} workload(s); left alone: {}", p.current, p.left_alone);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::preview::PhasePreview;
    use crate::rollout::{PhaseSettings, WorkloadId, WorkloadKind};
    use std::time::Duration;

    fn id(ns: &str, name: &str) -> WorkloadId {
        WorkloadId { namespace: ns.into(), kind: WorkloadKind::Deployment, name: name.into() }
    }

    #[test]
    fn cost_is_projected_for_namespaces_not_active_from_the_per_pod_average() {
        use crate::api::{NamespaceStatus, WorkloadCoverage, WorkloadSampling};
        let settings = PhaseSettings {
            name: "expansion".into(),
            batch_size: 1,
            soak: Duration::from_secs(0),
            health_deadline: Duration::from_secs(60),
        };
        let p = Preview {
            phases: vec![PhasePreview { settings, namespaces: vec!["a".into(), "b".into()], batches: vec![] }],
            ..Default::default()
        };
        let measured = WorkloadCoverage {
            sampling: Some(WorkloadSampling {
                received_spans_per_second: 200.0,
                kept_spans_per_second: 20.0,
                kept_bytes_per_second: Some(20480.0),
                pods: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = TracingPolicyStatus {
            namespaces: vec![NamespaceStatus {
                name: "a".into(),
                state: NamespaceState::Active,
                workloads: vec![measured],
                ..Default::default()
            }],
            ..Default::default()
        };
        let pods = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 5)]);
        let text = render_cost(&p, Some(&status), &pods);
        assert!(text.contains("per pod: 100.0 spans/s received, 10.0 kept, 10.0 KiB/s; the average of 2 pod(s) reporting in 1 active namespace(s)"), "{text}");
        assert!(
            text.contains("phase \"expansion\": b: 5 pod(s): ~500 spans/s received, ~50 kept, ~50.0 KiB/s"),
            "{text}"
        );
        assert!(!text.contains(": a:"), "active namespaces are not projected: {text}");
        assert!(render_cost(&p, None, &pods).contains("not projected yet"));
    }

    #[test]
    fn render_shows_phases_batches_and_soaks() {
        let settings = |name: &str, batch: u32, soak: u64| PhaseSettings {
            name: name.into(),
            batch_size: batch,
            soak: Duration::from_secs(soak),
            health_deadline: Duration::from_secs(60),
        };
        let p = Preview {
            phases: vec![
                PhasePreview {
                    settings: settings("pilot", 1, 5),
                    namespaces: vec!["a".into()],
                    batches: vec![
                        vec![(id("a", "p1"), RestartReason::Inject)],
                        vec![(id("a", "p2"), RestartReason::Repair)],
                    ],
                },
                PhasePreview { settings: settings("expansion", 2, 0), namespaces: vec![], batches: vec![] },
            ],
            leaving: vec![id("gone", "web")],
            current: 3,
            excluded: vec![],
            left_alone: 1,
        };
        let text = render("default", &p, true);
        assert_eq!(
            text,
            "TracingPolicy default: 3 restart(s) in 2 phase(s)\n\
             \x20 (rollout.paused is set: nothing starts until it is cleared)\n\
             phase 1/2 \"pilot\": namespaces a (batch 1, soak 5s, health deadline 60s)\n\
             \x20 batch 1: a/Deployment/p1\n\
             \x20 batch 2: a/Deployment/p2 (missed injection)\n\
             \x20 then soak 5s\n\
             phase 2/2 \"expansion\": namespaces none (batch 2, soak 0s, health deadline 60s)\n\
             \x20 nothing to restart\n\
             leaving (restarted without injection): gone/Deployment/web\n\
             already injected: 3 workload(s); left alone: 1\n"
        );
    }
}
