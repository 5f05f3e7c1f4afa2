//! After the rollout, on the real cluster: when a phase's soak ends the operator records a
//! baseline per workload from its agents' RED counters (here pushed by stand-in agents with
//! real, pod-bound report tokens, the pods being kwok's), and with `alerting.regressionRules`
//! it writes a `PrometheusRule` whose thresholds follow that baseline and the policy's factors,
//! and removes it when the field is turned off. The Prometheus Operator's PrometheusRule CRD is
//! installed for this step (as ServiceAccount the operator writes it with the chart's Role) and
//! removed again afterwards.

use super::rollout::{patch_policy, policy_json, running_deployments, wait_all_injected, GROUP};
use super::{Suite, NAMESPACE};
use crate::support::objects::ENABLED;
use crate::support::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracelight::api::TracingPolicy;

const POLICY: &str = "e2e-baseline";
const CRD: &str = "prometheusrules.monitoring.coreos.com";
/// Requests per second each stand-in agent reports, all between 10 and 100 ms.
const RPS: f64 = 10.0;
/// Pushes closer than 5 s apart are answered 429.
const PUSH_EVERY: Duration = Duration::from_secs(6);
/// The pilot phase's soak, the baseline's window (checked as 59-61 s).
const SOAK: &str = "60s";

/// The CA bundle the webhook configuration publishes now.
async fn webhook_ca(configs: &Api<MutatingWebhookConfiguration>) -> anyhow::Result<Vec<u8>> {
    let config = configs.get(super::WEBHOOK_CONFIG).await?;
    let ca = config.webhooks.and_then(|w| w.into_iter().next()).and_then(|w| w.client_config.ca_bundle);
    Ok(ca.context("no caBundle published")?.0)
}

fn rules_api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule");
    Api::namespaced_with(client.clone(), NAMESPACE, &ApiResource::from_gvk_with_plural(&gvk, "prometheusrules"))
}

/// The report of a stand-in agent `secs` after it started: RED counters at [`RPS`], 1% errors.
fn report(pod: &k8s_openapi::api::core::v1::Pod, ns: &str, service: &str, secs: f64) -> serde_json::Value {
    let requests = (RPS * secs) as u64;
    json!({
        "contractVersion": tracelight_contract::CONTRACT_VERSION, "agentVersion": "0.2.0",
        "pod": {"podName": pod.name_any(), "namespace": ns, "podUid": pod.metadata.uid},
        "configGeneration": 1, "services": {service: requests}, "spans": {"received": requests},
        "uptimeSeconds": secs as u64, "lastSpanAgeSeconds": 0,
        "red": {"bounds": [0.01, 0.1, 1.0], "services": {service: {
            "requests": requests, "errors": requests / 100, "durationSecondsSum": requests as f64 * 0.05,
            "buckets": [0, requests, 0, 0]}}},
        "usage": {"cpuSeconds": 0.002 * secs, "rssBytes": 5_000_000}
    })
}

pub async fn prometheus_rule_follows_the_baseline(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("baseline: recorded at the soak's end; the operator's PrometheusRule follows it");
    let crds = super::monitoring::crd_dir()?;
    let file = crds.join("monitoring.coreos.com_prometheusrules.yaml").display().to_string();
    suite.cluster.kubectl(["apply", "--server-side", "--force-conflicts", "-f", &file])?;
    suite.cluster.kubectl(["wait", "--for", "condition=Established", "--timeout", "60s", &format!("crd/{CRD}")])?;
    let stop = Arc::new(AtomicBool::new(false));
    let result = steps(suite, stop.clone()).await;
    stop.store(true, Ordering::Release);
    let client = suite.cluster.client.clone();
    let _ = Api::<TracingPolicy>::all(client).delete(POLICY, &Default::default()).await;
    let removed = suite.cluster.kubectl(["delete", "crd", CRD, "--ignore-not-found", "--wait=true"]);
    result.and(removed.map(|_| ()))
}

async fn steps(suite: &mut Suite, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let client = suite.cluster.client.clone();
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let ns = suite.namespaces.create("baseline", &[ENABLED, (GROUP, "baseline")]).await?;
    running_deployments(&client, &ns, &["web", "api"]).await?;
    // The soak is the baseline's window: long enough that the stand-in agents, which start pushing
    // once both pods are injected and their tokens made, cover the 10 s a window needs on a busy
    // machine (a CI run on 40 s once recorded no workload).
    let rollout = json!({"phases": [{"name": "pilot", "batchSize": 2, "soakDuration": SOAK}]});
    let mut policy = policy_json(POLICY, "baseline", rollout, None)?;
    policy.spec.alerting.regression_rules = true;
    policy.spec.alerting.rule_labels.insert("release".into(), "prometheus".into());
    Api::<TracingPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await?;
    wait_all_injected(&client, &ns, POLICY).await?;
    let injected_at = Instant::now();

    // Stand-in agents: one per pod, pushing counters that grow at RPS from now on.
    let pods: Vec<_> = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    ensure!(pods.len() == 2, "{} pods, expected 2", pods.len());
    let mut agents = Vec::new();
    for pod in pods {
        let service = pod.labels().get("app").cloned().unwrap_or_default();
        agents.push((super::rollout_resilience::report_token(suite, &ns, &pod)?, pod, service));
    }
    let (port, ns2) = (suite.webhook_port, ns.clone());
    let started = Instant::now();
    let running = stop.clone();
    // Refusals are shared so that a wait below that times out says why (a report refused is a
    // baseline without that pod).
    let refused = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refusals = refused.clone();
    let pusher = tokio::spawn(async move {
        let stop = running;
        let mut accepted = 0usize;
        while !stop.load(Ordering::Acquire) {
            for (token, pod, service) in &agents {
                let body = serde_json::to_vec(&report(pod, &ns2, service, started.elapsed().as_secs_f64()))
                    .unwrap_or_default();
                // As an agent re-reads its mounted CA: the bundle changes when the certificates
                // rotate (the earlier steps of the suite run them on a 90 s validity).
                let pushed = match webhook_ca(&configs).await {
                    Ok(ca) => crate::support::tls::post_with_token(port, &ca, "/v1/agent-reports", token, &body).await,
                    Err(e) => Err(e),
                };
                match pushed {
                    Ok(204) => accepted += 1,
                    other => refusals.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                        "{:.0}s {}: {}",
                        started.elapsed().as_secs_f64(),
                        pod.name_any(),
                        other.map_or_else(|e| format!("{e:#}"), |status| format!("HTTP {status}"))
                    )),
                }
            }
            tokio::time::sleep(PUSH_EVERY).await;
        }
        accepted
    });
    let refused_so_far = || {
        let r = refused.lock().unwrap_or_else(|p| p.into_inner());
        format!("{} report(s) refused{}", r.len(), r.last().map(|l| format!(", last: {l}")).unwrap_or_default())
    };

    let policies = Api::<TracingPolicy>::all(client.clone());
    let baseline = wait::until("a baseline in the policy status", Duration::from_secs(180), || async {
        let p = policies.get(POLICY).await?;
        let b = p.status.and_then(|s| s.baseline).context("no baseline yet")?;
        ensure!(
            b.workloads.len() == 2,
            "{} workloads in the baseline over {}..{}; pushes began {:.0}s after all pods were injected; {}",
            b.workloads.len(),
            b.window_start.0,
            b.window_end.0,
            started.duration_since(injected_at).as_secs_f64(),
            refused_so_far()
        );
        Ok(b)
    })
    .await?;
    let web = baseline.workloads.iter().find(|w| w.name == "web").context("web has no baseline")?;
    let window = web.window_end.0.duration_since(web.window_start.0).as_secs_f64();
    ensure!(baseline.phase == "pilot" && (59.0..=61.0).contains(&window), "phase {} over {window}s", baseline.phase);
    ensure!(
        (web.requests_per_second - RPS).abs() <= RPS * 0.1,
        "web: {} requests/s, pushed {RPS}",
        web.requests_per_second
    );
    ensure!((web.error_rate - 0.01).abs() < 0.005, "web: error rate {}", web.error_rate);
    let p99 = web.duration_p99_seconds.context("no p99")?;
    ensure!((p99 - 0.0991).abs() < 1e-3, "web: p99 {p99}, expected 0.0991 (99% of the way through 10-100 ms)");
    ensure!(web.agent_memory_bytes == Some(5_000_000), "web: agent memory {:?}", web.agent_memory_bytes);
    let cpu = web.agent_cpu_millicores.context("no agent CPU")?;
    ensure!((cpu - 2.0).abs() < 0.3, "web: agent CPU {cpu}m, pushed 2m");
    suite.log.note(&format!(
        "baseline of web over {window:.0}s: {:.2} req/s, error rate {:.3}, p99 {p99}s, agent {cpu:.2}m",
        web.requests_per_second, web.error_rate
    ));

    let rules = rules_api(&client);
    let name = format!("tracelight-baseline-{POLICY}");
    let threshold = |factor: f64| format!("> {}", (p99 * factor * 1e6).round() / 1e6);
    let expect = |want: String| {
        let (rules, name) = (rules.clone(), name.clone());
        async move {
            let rule = rules.get(&name).await?;
            ensure!(rule.labels().get("release").map(String::as_str) == Some("prometheus"), "ruleLabels not applied");
            ensure!(
                rule.metadata.owner_references.iter().flatten().any(|o| o.name == POLICY),
                "not owned by the policy"
            );
            let text = serde_json::to_string(&rule.data["spec"])?;
            let latency = rule.data["spec"]["groups"][0]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["alert"] == "TracelightWorkloadLatencyRegression" && r["labels"]["workload"] == "web")
                .with_context(|| format!("no latency alert for web in {text}"))?;
            let expr = latency["expr"].as_str().unwrap_or_default();
            ensure!(expr.ends_with(&want), "latency expr {expr:?} does not end with {want:?}");
            Ok(())
        }
    };
    wait::until("the PrometheusRule at 2 x the baseline p99", Duration::from_secs(60), || expect(threshold(2.0)))
        .await?;
    patch_policy(&client, POLICY, json!({"spec": {"alerting": {"latencyFactor": 3}}})).await?;
    wait::until("the PrometheusRule at 3 x the baseline p99", Duration::from_secs(60), || expect(threshold(3.0)))
        .await?;
    let p = policies.get(POLICY).await?;
    let review = p.status.and_then(|s| s.review).context("no review after the rollout completed")?;
    suite
        .log
        .note(&format!("rule follows the baseline and latencyFactor; review: {} finding(s)", review.findings.len()));
    patch_policy(&client, POLICY, json!({"spec": {"alerting": {"regressionRules": false}}})).await?;
    wait::until("the PrometheusRule removed", Duration::from_secs(60), || async {
        ensure!(rules.get_opt(&name).await?.is_none(), "still there");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Release);
    let accepted = pusher.await.unwrap_or_default();
    let refused = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(refused.is_empty(), "{} report(s) accepted, refused: {refused:?}", accepted);
    Ok(())
}
