//! `make demo`'s last step: requests to an injected pod become traces in a real OpenTelemetry
//! Collector, printed as a tree.
//!
//! Ignored by `make test`; `e2e/demo.sh` runs it with `--ignored` once the demo is up. It uses the
//! demo as it stands: its cluster, its namespace, the policy governing it and the operator running
//! on this host. It deploys the shop's inventory service (Rust, its own OpenTelemetry SDK, SQLite)
//! there, runs the injected pod on this host with the pod runner, starts the collector where the
//! policy's `collector.endpoint` points (its host name resolves to this host in the pod), and sends
//! requests until the agent keeps a trace at the policy's sampling ratio.

use crate::check;
use crate::collector::{Collector, KIND_SERVER};
use crate::runner::env::PodInputs;
use crate::runner::images::Images;
use crate::runner::net::Network;
use crate::{coverage, http_get, required_path, runner, scheduled_pod, shop, support};
use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tracelight::api::TracingPolicy;

/// Longest wait for a kept trace: requests are sent until then.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by `make demo` (e2e/demo.sh), on the demo's cluster and operator"]
async fn demo_request_becomes_a_trace() {
    let _lock = support::cluster_lock().expect("the e2e cluster lock");
    if let Err(e) = run().await {
        panic!("the demo's trace: {e:#}");
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The host and port of an `http(s)://host:port[/path]` endpoint.
fn host_and_port(endpoint: &str) -> anyhow::Result<(String, u16)> {
    let uri: http::Uri = endpoint.parse().with_context(|| format!("collector endpoint {endpoint:?}"))?;
    let host = uri.host().context("the collector endpoint has no host")?.to_string();
    Ok((host, uri.port_u16().unwrap_or(4317)))
}

async fn run() -> anyhow::Result<()> {
    let otelcol = required_path("TRACELIGHT_OTELCOL", "run `make demo` (it builds the collector)")?;
    let ns = env_or("TRACELIGHT_DEMO_NAMESPACE", "demo");
    let webhook_port: u16 = env_or("TRACELIGHT_DEMO_WEBHOOK_PORT", "9443").parse()?;
    let client = support::cluster::Cluster::up().await?.client;

    // The shop's inventory service, as a Deployment in the demo's namespace.
    let inventory = shop::workloads().into_iter().find(|w| w.name == "inventory").context("no inventory workload")?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    if deployments.get_opt(inventory.name).await?.is_none() {
        deployments.create(&PostParams::default(), &serde_json::from_value(inventory.deployment.clone())?).await?;
    }
    let pod = scheduled_pod(&client, &ns, inventory.name).await?;
    let policy_name = pod.annotations().get("tracelight.io/policy").cloned().context("the pod was not injected")?;
    let policy = Api::<TracingPolicy>::all(client.clone()).get(&policy_name).await?;
    support::objects::assert_injected(&pod, inventory.name, &policy)?;
    println!("deployed {ns}/{}: pod {} injected by policy {policy_name}", inventory.name, pod.name_any());

    // This host plays the node: the pod's own network namespace, the collector on the bridge.
    Network::remove_leftovers()?;
    let mut network = Network::create()?;
    let (collector_host, collector_port) = host_and_port(&policy.spec.collector.endpoint)?;
    let host_ip = network.host_ip();
    let dir = support::work_dir().join(format!("demo-trace-{}", network.id));
    let mut collector = Collector::start(&otelcol, &dir.join("collector"), SocketAddr::from((host_ip, collector_port)))
        .await
        .context("starting the collector")?;
    println!(
        "collector: {} listening where the policy exports ({collector_host}:{collector_port} -> {host_ip})",
        otelcol.display()
    );
    // The agent reports to the operator's Service: here, the demo operator's port on this host.
    let _reports = runner::forward::Forwarder::start(
        SocketAddr::from((host_ip, 443)),
        SocketAddr::from(([127, 0, 0, 1], webhook_port)),
    )
    .await?;
    let net = network.add_pod()?;
    let pod_ip = net.ip;
    network.write_hosts(
        &net,
        &[
            (pod_ip, vec![pod.name_any()]),
            (host_ip, vec![collector_host.clone()]),
            coverage::operator_hosts_entry(host_ip, "tracelight-system", "tracelight-webhook"),
        ],
    )?;
    let inputs = PodInputs::from_objects(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
        &Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items,
    );
    let inputs =
        PodInputs { host_ip: Some(host_ip), tokens: runner::token::projected_tokens(&client, &pod).await?, ..inputs };
    let mut images = Images::default();
    images.insert(agent_image_of(&pod)?, shop::agent_image()?);
    images.insert("tracelight-e2e/shop-inventory:1", shop::inventory_image()?);
    let pod_dir = dir.join(pod.name_any());
    let mut running = runner::pod::start(&pod, &images, net, &inputs, &pod_dir).await?;
    println!("pod {} running on this host at {pod_ip} (logs in {})", pod.name_any(), pod_dir.join("logs").display());

    let result = requests_until_a_trace(&collector, &ns, pod_ip, inventory.port.unwrap_or(8080), &policy).await;
    running.stop();
    collector.stop()?;
    result
}

/// The image the injector gave the agent container.
fn agent_image_of(pod: &Pod) -> anyhow::Result<String> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == "tracelight-agent")
        .and_then(|c| c.image.clone())
        .context("the pod has no tracelight-agent container")
}

/// Sends `GET /stock` until the collector holds a trace from the pod, then prints it.
async fn requests_until_a_trace(
    collector: &Collector,
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    policy: &TracingPolicy,
) -> anyhow::Result<()> {
    let ratio = policy.spec.sampling.ratio.get();
    println!("sending GET /stock?sku=book to {ip}:{port} until a trace arrives (sampling ratio {ratio})");
    let start = Instant::now();
    let mut sent = 0;
    loop {
        for _ in 0..10 {
            let (status, body) = http_get(ip, port, "/stock?sku=book").await?;
            ensure!(status == 200, "GET /stock?sku=book: HTTP {status}: {body}");
            sent += 1;
        }
        // The SDK exports every 5 s at most, the agent batches for 0.5 s.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|s| s.resource.get("k8s.namespace.name").map(String::as_str) == Some(ns))
            .collect();
        let traces = check::by_trace(&spans);
        let whole = traces.values().find(|t| t.iter().any(|s| s.kind == KIND_SERVER && s.parent_span_id.is_empty()));
        if let Some(trace) = whole {
            let server = trace.iter().find(|s| s.kind == KIND_SERVER).context("no server span")?;
            println!(
                "\n{sent} requests sent; the collector holds {} trace(s) from {ns}. Trace {}:\n{}",
                traces.len(),
                server.trace_id,
                check::dump(trace)
            );
            println!("resource of the server span (what the injection and the agent added):");
            for (k, v) in server.resource.iter().filter(|(k, _)| k.starts_with("k8s.") || k.starts_with("service.")) {
                println!("  {k} = {v}");
            }
            return Ok(());
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "no trace from {ns} after {sent} requests in {DEADLINE:?} (sampling ratio {ratio}); collector output: {}",
            collector.output.display()
        );
    }
}
