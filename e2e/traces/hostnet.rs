//! Two `hostNetwork` pods on one node (issue 15): the agents of two DaemonSets share the node's
//! ports, so each takes its workload's slot in the reserved range (`tracelight::inject::ports`),
//! declared as host ports. Both pods run in the node's one network namespace
//! ([`Network::node_net`]): both agents must start and both applications' spans must reach the
//! collector. A third workload whose slot is the first one's, pinned to the same node, must be
//! refused by the real scheduler (Pending, "didn't have free ports") rather than start an agent
//! that cannot bind.

use super::{http_get, scheduled_pod, Shop, SHOP_LABEL, SPANS_DEADLINE};
use crate::collector::Collector;
use crate::runner::env::PodInputs;
use crate::runner::images::Images;
use crate::runner::net::Network;
use crate::shop;
use crate::support::objects::{from_json, wait_injecting, ENABLED};
use crate::support::{wait, StepLog};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use tracelight::api::{AgentPorts, TracingPolicy};
use tracelight::inject::ports::{host_slot, host_slot_key, HostPortRange};
use tracelight::inject::AGENT_CONTAINER;

pub const POLICY_HOSTNET: &str = "e2e-traces-hostnet";
const WORKLOADS: [&str; 2] = ["node-agent-a", "node-agent-b"];

/// Deploys two `hostNetwork` workloads on one node, runs them and checks their spans arrive;
/// checks that a third one needing the first one's slot is not scheduled there. Returns the two
/// running pods (stopped with the others at the end).
pub async fn run(
    suite: &mut crate::harness::Suite,
    network: &mut Network,
    images: &Images,
    dir: &Path,
    extra_hosts: &[(Ipv4Addr, Vec<String>)],
    collector: &Collector,
    endpoint: &str,
) -> anyhow::Result<Shop> {
    let (log, client) = (suite.log.clone(), suite.cluster.client.clone());
    log.step("two hostNetwork workloads on one node: distinct agent port slots, both traced");
    let ns = suite.namespaces.create("hostnet", &[ENABLED, (SHOP_LABEL, "hostnet")]).await?;
    let policy: TracingPolicy = from_json(serde_json::json!({
        "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
        "metadata": {"name": POLICY_HOSTNET},
        "spec": {
            "namespaceSelector": {"matchLabels": {SHOP_LABEL: "hostnet"}},
            "collector": {"endpoint": endpoint, "protocol": "grpc"},
            "sampling": {"ratio": 1}
        }
    }))?;
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    let policy = crate::harness::wait_active(&client, POLICY_HOSTNET, &ns).await?;
    wait_injecting(&client, &ns, Duration::from_secs(30)).await?;
    let node = kwok_node(&client).await?;

    let app_ports = [crate::support::free_port(), crate::support::free_port()];
    ensure!(app_ports[0] != app_ports[1], "got the same free port twice");
    let mut pods = Vec::new();
    for (name, port) in WORKLOADS.into_iter().zip(app_ports) {
        create(&client, &ns, shop::host_network_inventory(name, port, &node)).await?;
        let pod = scheduled_pod(&client, &ns, name).await?;
        ensure!(super::node_of(&pod) == node, "{name}: scheduled on {}, not {node}", super::node_of(&pod));
        let ports = agent_ports(&pod)?;
        let want = HostPortRange::DEFAULT.slot_ports(host_slot(&slot_key(&ns, name), HostPortRange::DEFAULT));
        ensure!(ports == want, "{name}: agent ports {ports:?}, want its workload's slot {want:?}");
        let endpoint = crate::support::objects::app_env(&pod).get("OTEL_EXPORTER_OTLP_ENDPOINT").cloned();
        ensure!(
            endpoint == Some(format!("http://127.0.0.1:{}", ports.otlp_http)),
            "{name}: the app exports to {endpoint:?}, not its agent's slot {ports:?}"
        );
        log.note(&format!("{ns}/{name}: pod {} on {node}, agent on host ports {ports:?}", pod.name_any()));
        pods.push(pod);
    }
    let (a, b) = (agent_ports(&pods[0])?, agent_ports(&pods[1])?);
    let (a_set, b_set) = ([a.otlp_grpc, a.otlp_http, a.admin], [b.otlp_grpc, b.otlp_http, b.admin]);
    ensure!(a_set.iter().all(|p| !b_set.contains(p)), "the two workloads share agent ports: {a:?} and {b:?}");

    colliding_workload_is_not_scheduled(&log, &client, &ns, &node, &a).await?;

    let node_net = network.node_net(&node)?;
    network.write_hosts(&node_net, extra_hosts)?;
    let namespace_inputs = PodInputs::from_objects(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
        &Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
    );
    let mut hostnet = Shop { ns: ns.clone(), policy, pods: pods.clone(), running: Vec::new() };
    for pod in &pods {
        let inputs = PodInputs {
            host_ip: Some(network.host_ip()),
            tokens: crate::runner::token::projected_tokens(&client, pod).await?,
            ..namespace_inputs.clone()
        };
        let pod_dir = dir.join(&ns).join(pod.name_any());
        hostnet.running.push(crate::runner::pod::start(pod, images, node_net.clone(), &inputs, &pod_dir).await?);
        log.note(&format!("{ns}/{}: running in the network of {node} ({})", pod.name_any(), node_net.ip));
    }

    for (name, port) in WORKLOADS.into_iter().zip(app_ports) {
        let (status, body) = http_get(node_net.ip, port, "/stock?sku=book").await?;
        ensure!(status == 200, "{name}: GET /stock on {}:{port}: HTTP {status}: {body}", node_net.ip);
    }
    let deadline = Instant::now() + SPANS_DEADLINE;
    loop {
        let services: BTreeSet<String> = collector
            .spans()
            .iter()
            .filter(|s| s.resource.get("k8s.namespace.name") == Some(&ns))
            .filter_map(|s| s.resource.get("service.name").cloned())
            .collect();
        if WORKLOADS.iter().all(|w| services.contains(*w)) {
            break;
        }
        ensure!(Instant::now() < deadline, "spans from {ns} after {SPANS_DEADLINE:?}: services {services:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for pod in hostnet.running.iter_mut() {
        let exited = pod.exited();
        ensure!(exited.is_empty(), "pod {}: containers exited: {exited:?}", pod.name);
    }
    log.note(&format!(
        "both hostNetwork agents run side by side on {node}; spans of {WORKLOADS:?} reached the collector"
    ));
    Ok(hostnet)
}

fn slot_key(ns: &str, daemonset: &str) -> String {
    host_slot_key(ns, Some(("DaemonSet", daemonset)), "")
}

/// The first kwok node (the e2e cluster's nodes run no kubelet; the runner plays it).
async fn kwok_node(client: &Client) -> anyhow::Result<String> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default().labels("type=kwok")).await?;
    let mut names: Vec<String> = nodes.items.iter().map(ResourceExt::name_any).collect();
    names.sort();
    names.into_iter().next().context("no kwok node")
}

async fn create(client: &Client, ns: &str, w: shop::Workload) -> anyhow::Result<()> {
    Api::<DaemonSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &from_json(w.deployment)?)
        .await
        .with_context(|| format!("creating DaemonSet {ns}/{}", w.name))?;
    Ok(())
}

/// The agent's ports, from its flags, each declared as a host port.
fn agent_ports(pod: &Pod) -> anyhow::Result<AgentPorts> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let agent = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == AGENT_CONTAINER)
        .with_context(|| format!("{}: no agent", pod.name_any()))?;
    let args = agent.args.clone().unwrap_or_default();
    let flag = |name: &str| -> anyhow::Result<u16> {
        let prefix = format!("--{name}=");
        let value = args.iter().find_map(|a| a.strip_prefix(&prefix)).with_context(|| format!("no {prefix}"))?;
        Ok(value.parse()?)
    };
    let ports = AgentPorts {
        otlp_grpc: flag("otlp-grpc-port")?,
        otlp_http: flag("otlp-http-port")?,
        admin: flag("admin-port")?,
    };
    let declared: Vec<(i32, Option<i32>)> =
        agent.ports.iter().flatten().map(|p| (p.container_port, p.host_port)).collect();
    for port in [ports.otlp_grpc, ports.otlp_http, ports.admin] {
        let port = i32::from(port);
        ensure!(declared.contains(&(port, Some(port))), "agent port {port} not declared as a host port: {declared:?}");
    }
    Ok(ports)
}

/// A third workload whose slot is `taken`'s, pinned to `node`: the scheduler must leave its pod
/// Pending for want of free ports (the agent never starts where it could not bind).
async fn colliding_workload_is_not_scheduled(
    log: &StepLog,
    client: &Client,
    ns: &str,
    node: &str,
    taken: &AgentPorts,
) -> anyhow::Result<()> {
    let range = HostPortRange::DEFAULT;
    let name = (0..100_000)
        .map(|i| format!("node-agent-c{i}"))
        .find(|n| range.slot_ports(host_slot(&slot_key(ns, n), range)) == *taken)
        .context("no workload name hashing to the taken slot")?;
    // Workload names are &'static in the shop's tables; this one lives until the test ends.
    let name: &'static str = Box::leak(name.into_boxed_str());
    create(client, ns, shop::host_network_inventory(name, crate::support::free_port(), node)).await?;
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={name}"));
    let message = wait::until(
        &format!("the pod of {ns}/{name} to be refused by the scheduler"),
        Duration::from_secs(60),
        || async {
            let pods = api.list(&lp).await?.items;
            let pod = pods.first().context("no pod yet")?;
            ensure!(
                pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none(),
                "scheduled: {:?}",
                pod.spec.as_ref().and_then(|s| s.node_name.clone())
            );
            let condition = pod
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .context("no PodScheduled=False condition yet")?;
            let message = condition.message.clone().unwrap_or_default();
            ensure!(message.contains("free ports"), "PodScheduled=False: {message}");
            Ok(message)
        },
    )
    .await?;
    log.note(&format!("{ns}/{name} needs the slot of {}: Pending ({message})", WORKLOADS[0]));
    Api::<DaemonSet>::namespaced(client.clone(), ns).delete(name, &Default::default()).await?;
    Ok(())
}
