//! Trace continuity, end to end: the agents record probe traces (every trace, `--probe-ratio=1`
//! here) and push them with their reports; the operator joins them into the service graph of
//! each policy's status and a verdict per workload.
//!
//! - Both shops' graphs must be exactly the shop's known edges (HTTP and the queue; database
//!   calls aside), none broken, every traced service `Connected`, and `tracelight verify` must
//!   pass for the fully connected SDK-sampling shop.
//! - A variant, `pricing` calling a `tax` whose own env sets `OTEL_PROPAGATORS=b3` (pricing sends
//!   W3C `traceparent` only): the status must report exactly that edge `Broken` with cause
//!   `PropagatorOverride`, and `tracelight verify` must exit 1 naming it.

use super::{http_get, run_shop, scheduled_pod, shop, Shop};
use crate::harness::Suite;
use crate::runner::images::Images;
use crate::runner::net::Network;
use crate::support::objects::{assert_injected, from_json, ENABLED};
use crate::support::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::Client;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tracelight::api::{BreakReason, ContinuityState, EdgeKind, GraphEdge, TracingPolicy};

/// How long the graph may take: agents push every 30 s, a call without a child is judged once
/// it is older than the settle delay, the operator joins at most every 10 s.
const GRAPH_DEADLINE: Duration = Duration::from_secs(240);

/// The shop's calls between workloads of `ns` (database calls aside).
pub fn known_edges(ns: &str) -> BTreeSet<(String, String, EdgeKind)> {
    let e = |from: &str, to: &str, kind| (format!("{ns}/{from}"), format!("{ns}/{to}"), kind);
    BTreeSet::from([
        e("frontend", "inventory", EdgeKind::Request),
        e("frontend", "pricing", EdgeKind::Request),
        e("pricing", "tax", EdgeKind::Request),
        e("frontend", "worker", EdgeKind::Message),
    ])
}

/// The policy's graph edges with an end in `ns`, database calls aside.
fn edges_of(policy: &TracingPolicy, ns: &str) -> Vec<GraphEdge> {
    let prefix = format!("{ns}/");
    let graph = policy.status.as_ref().and_then(|s| s.service_graph.as_ref());
    graph
        .into_iter()
        .flat_map(|g| &g.edges)
        .filter(|e| e.kind != EdgeKind::Database && (e.from.starts_with(&prefix) || e.to.starts_with(&prefix)))
        .cloned()
        .collect()
}

/// Waits until the graph of `ns` in `policy` is exactly the shop's known edges, none broken, and
/// every one of `services` is `Connected`; returns the edges.
pub async fn wait_connected(
    client: &Client,
    policy: &str,
    ns: &str,
    services: &[&str],
) -> anyhow::Result<Vec<GraphEdge>> {
    let api = Api::<TracingPolicy>::all(client.clone());
    let want = known_edges(ns);
    wait::until(&format!("the service graph of {ns} in policy {policy}"), GRAPH_DEADLINE, || async {
        let p = api.get(policy).await?;
        let edges = edges_of(&p, ns);
        let have: BTreeSet<(String, String, EdgeKind)> =
            edges.iter().map(|e| (e.from.clone(), e.to.clone(), e.kind)).collect();
        ensure!(have == want, "edges {have:?}, want {want:?}");
        ensure!(edges.iter().all(|e| e.broken == 0), "broken edges: {edges:?}");
        let status = p.status.as_ref().context("no status")?;
        let workloads =
            status.namespaces.iter().find(|n| n.name == ns).map(|n| n.workloads.as_slice()).unwrap_or_default();
        for s in services {
            let state = workloads.iter().find(|w| w.name == *s).and_then(|w| w.traces.as_ref()).map(|t| t.state);
            ensure!(state == Some(ContinuityState::Connected), "{s}: traces {state:?}");
        }
        Ok(edges)
    })
    .await
}

/// The variant: `pricing` and a `tax` whose own env sets `OTEL_PROPAGATORS=b3`, in a new
/// namespace of the agent-sampling policy; runs them and sends `pricing` a few requests.
#[allow(clippy::too_many_arguments)]
pub async fn run_propagator_variant(
    suite: &mut Suite,
    shop_label: (&str, &str),
    policy: &TracingPolicy,
    network: &mut Network,
    images: &Images,
    dir: &Path,
    extra_hosts: &[(Ipv4Addr, Vec<String>)],
) -> anyhow::Result<Shop> {
    let (log, client) = (suite.log.clone(), suite.cluster.client.clone());
    let ns = suite.namespaces.create("shop-b3", &[ENABLED, shop_label]).await?;
    log.step(&format!("{ns}: pricing -> tax, tax's own env sets OTEL_PROPAGATORS=b3 (pricing sends tracecontext)"));
    crate::harness::wait_active(&client, &policy.metadata.name.clone().unwrap_or_default(), &ns).await?;
    crate::support::objects::wait_injecting(&client, &ns, Duration::from_secs(30)).await?;
    let mut workloads: Vec<shop::Workload> =
        shop::workloads().into_iter().filter(|w| w.name == "tax" || w.name == "pricing").collect();
    for w in workloads.iter_mut().filter(|w| w.name == "tax") {
        let env = &mut w.deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        env.as_array_mut()
            .context("tax has an env")?
            .push(serde_json::json!({"name": "OTEL_PROPAGATORS", "value": "b3"}));
    }
    let mut pods = Vec::new();
    for w in &workloads {
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &from_json(w.deployment.clone())?)
            .await?;
        if let Some(service) = &w.service {
            Api::<Service>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &from_json(service.clone())?)
                .await?;
        }
    }
    for w in &workloads {
        let pod = scheduled_pod(&client, &ns, w.name).await?;
        assert_injected(&pod, w.name, policy)?;
        pods.push(pod);
    }
    let mut variant = Shop { ns: ns.clone(), policy: policy.clone(), pods, running: Vec::new() };
    run_shop(&mut variant, &client, network, images, dir, extra_hosts, &log).await?;
    let at = workloads.iter().position(|w| w.name == "pricing").context("no pricing")?;
    let (ip, port) = (variant.running[at].net.ip, workloads[at].port.context("pricing has no port")?);
    for sku in ["book", "lamp", "mug", "book", "lamp", "mug"] {
        let (status, body) = http_get(ip, port, &format!("/price?sku={sku}")).await?;
        ensure!(status == 200, "{ns}/pricing: GET /price?sku={sku}: HTTP {status}: {body}");
    }
    log.note(&format!("{ns}/pricing: 6 requests answered (tax computed each)"));
    Ok(variant)
}

/// Waits until the variant's graph is exactly one edge, `pricing -> tax`, broken by the override.
pub async fn wait_broken_by_override(client: &Client, policy: &str, ns: &str) -> anyhow::Result<GraphEdge> {
    let api = Api::<TracingPolicy>::all(client.clone());
    let (pricing, tax) = (format!("{ns}/pricing"), format!("{ns}/tax"));
    wait::until(&format!("{ns}: the edge pricing -> tax reported broken"), GRAPH_DEADLINE, || async {
        let p = api.get(policy).await?;
        let edges = edges_of(&p, ns);
        ensure!(edges.len() == 1, "edges {edges:?}");
        let e = &edges[0];
        ensure!((&e.from, &e.to, e.kind) == (&pricing, &tax, EdgeKind::Request), "edge {e:?}");
        ensure!(e.broken > 0 && e.broken == e.calls, "edge {e:?}");
        ensure!(e.reason == Some(BreakReason::PropagatorOverride), "edge {e:?}");
        let status = p.status.as_ref().context("no status")?;
        let workloads =
            status.namespaces.iter().find(|n| n.name == ns).map(|n| n.workloads.as_slice()).unwrap_or_default();
        for name in ["pricing", "tax"] {
            let traces = workloads.iter().find(|w| w.name == name).and_then(|w| w.traces.as_ref());
            let link = traces.and_then(|t| t.broken.as_ref());
            ensure!(
                traces.map(|t| t.state) == Some(ContinuityState::Broken)
                    && link.is_some_and(|l| l.edge == format!("{pricing} -> {tax}")),
                "{name}: traces {traces:?}"
            );
        }
        let condition = status.conditions.iter().find(|c| c.type_ == "TracesConnected").context("no condition")?;
        ensure!(condition.status == "False" && condition.reason == "BrokenLinks", "{condition:?}");
        Ok(e.clone())
    })
    .await
}

/// Whether `tracelight graph`'s text lists every known edge of `ns` with no broken call, and says
/// no edge is broken (database calls may be listed too: they are calls, never judged).
pub fn graph_lists(text: &str, ns: &str) -> bool {
    let rows: BTreeSet<(String, String, String, String)> = text
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [from, "->", to, kind, _calls, broken, ..] => {
                Some((from.to_string(), to.to_string(), kind.to_string(), broken.to_string()))
            }
            _ => None,
        })
        .collect();
    let known = known_edges(ns);
    known
        .iter()
        .all(|(from, to, kind)| rows.contains(&(from.clone(), to.clone(), kind.as_str().to_string(), "0".into())))
        && rows.iter().filter(|r| r.2 != EdgeKind::Database.as_str()).count() == known.len()
        && text.contains(" edges, 0 broken, from ")
}

/// Runs `tracelight graph` as a user would; its exit code and output.
pub fn graph(
    binary: &Path,
    kubeconfig: &Path,
    policy: &str,
    namespace: &str,
    dot: bool,
) -> anyhow::Result<(i32, String)> {
    let mut args = vec!["graph", policy, "--namespace", namespace];
    if dot {
        args.extend(["-o", "dot"]);
    }
    let out =
        Command::new(binary).args(&args).env("KUBECONFIG", kubeconfig).output().context("running tracelight graph")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}
