//! Live reconfiguration: ratio, endpoint, API key; bad configs rejected.

use crate::support::*;
use prost::Message;
use std::time::Duration;
use tracelight_agent::metrics::{ReloadLabel, ReloadResult};

async fn send(agent: &tracelight_agent::RunningAgent, spans: usize) {
    let url = format!("http://{}/v1/traces", agent.http_addr);
    let (status, _, _) =
        post(&url, &[("content-type", "application/x-protobuf")], request(spans, "svc").encode_to_vec()).await;
    assert_eq!(status, 200);
}

fn reloads(agent: &tracelight_agent::RunningAgent, result: ReloadResult) -> u64 {
    agent.shared.metrics.config_reloads.get_or_create(&ReloadLabel { result }).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_endpoint_and_key_change_live_and_bad_config_is_rejected() {
    let (addr1, c1, _t1) = fake_collector(ANY_PORT).await;
    let (addr2, c2, _t2) = fake_collector(ANY_PORT).await;
    let dir = temp_dir("reload");
    let key = dir.join("api-key");
    std::fs::write(&key, "key-one\n").expect("key");
    let auth = format!("  apiKeyHeader: x-api-key\n  apiKeyFile: {}\n", key.display());
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{addr1}"), "http/protobuf", 1.0, &auth));
    let agent = agent(&cfg).await;

    send(&agent, 20).await;
    assert!(wait_until(Duration::from_secs(5), || c1.spans() == 20).await);
    assert_eq!(c1.requests.lock().expect("lock")[0].0.get("x-api-key").expect("key header"), "key-one");

    // Ratio 0 -> everything sampled out, without a restart.
    write_atomic(&cfg, &config_yaml(2, &format!("http://{addr1}"), "http/protobuf", 0.0, &auth));
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 2).await);
    send(&agent, 20).await;
    assert_eq!(agent.shared.metrics.sampled_out.get(), 20);

    // Invalid config: rejected, generation 2 kept.
    write_atomic(&cfg, "generation: 3\npolicy: default\ncollector: {endpoint: 'ftp://x', protocol: grpc, compression: gzip}\nsampling: {ratio: 1}\n");
    assert!(wait_until(Duration::from_secs(5), || reloads(&agent, ReloadResult::Rejected) == 1).await);
    write_atomic(&cfg, "generation: 3\nsampling: [oops\n");
    assert!(wait_until(Duration::from_secs(5), || reloads(&agent, ReloadResult::Rejected) == 2).await);
    assert_eq!(agent.report().config_generation, 2);
    assert_eq!(agent.shared.metrics.config_generation.get(), 2);

    // New endpoint and a rotated key: queued spans are not lost, new ones go to collector 2.
    std::fs::write(&key, "key-two").expect("key");
    write_atomic(&cfg, &config_yaml(4, &format!("http://{addr2}"), "http/protobuf", 1.0, &auth));
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 4).await);
    send(&agent, 10).await;
    assert!(wait_until(Duration::from_secs(5), || c2.spans() == 10).await);
    assert_eq!(c2.requests.lock().expect("lock")[0].0.get("x-api-key").expect("key header"), "key-two");
    assert_eq!(c1.spans(), 20);

    // Key rotation alone (same config file) is picked up too.
    std::fs::write(&key, "key-three").expect("key");
    assert!(wait_until(Duration::from_secs(5), || reloads(&agent, ReloadResult::Applied) == 4).await);
    send(&agent, 1).await;
    assert!(wait_until(Duration::from_secs(5), || c2.spans() == 11).await);
    assert_eq!(c2.requests.lock().expect("lock").last().expect("req").0.get("x-api-key").expect("key"), "key-three");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_at_different_ratios_keep_nested_sets() {
    // Same trace ids through agents at 0.1 and 0.5: each keeps about its ratio; 0.1 ⊂ 0.5.
    let sink = sink().await;
    let dir = temp_dir("ratios");
    let (c01, c05) = (dir.join("a.yaml"), dir.join("b.yaml"));
    write_atomic(&c01, &config_yaml(1, &format!("http://{}", sink.grpc_addr), "grpc", 0.1, ""));
    write_atomic(&c05, &config_yaml(1, &format!("http://{}", sink.http_addr), "http/protobuf", 0.5, ""));
    let (a, b) = (agent(&c01).await, agent(&c05).await);
    let n = 4000;
    let req = request(n, "svc");
    for (agent, port) in [(&a, a.http_addr), (&b, b.http_addr)] {
        let url = format!("http://{port}/v1/traces");
        let (status, _, _) = post(&url, &[("content-type", "application/x-protobuf")], req.encode_to_vec()).await;
        assert_eq!(status, 200);
        let _ = agent;
    }
    let kept_a = n as u64 - a.shared.metrics.sampled_out.get();
    let kept_b = n as u64 - b.shared.metrics.sampled_out.get();
    let spans = collect(&sink, (kept_a + kept_b) as usize, Duration::from_secs(10)).await;
    assert_eq!(spans.len() as u64, kept_a + kept_b);
    // Binomial bounds at 5 standard deviations: sd(0.1) = 19, sd(0.5) = 32 spans of 4000.
    assert!((kept_a as i64 - 400).abs() < 95, "0.1 kept {kept_a}");
    assert!((kept_b as i64 - 2000).abs() < 160, "0.5 kept {kept_b}");
    let th = |s: &opentelemetry_proto::tonic::trace::v1::Span| s.trace_state.clone();
    let set_a: std::collections::HashSet<Vec<u8>> =
        spans.iter().filter(|(_, s)| th(s) == "ot=th:e6666666666666").map(|(_, s)| s.trace_id.clone()).collect();
    let set_b: std::collections::HashSet<Vec<u8>> =
        spans.iter().filter(|(_, s)| th(s) == "ot=th:8").map(|(_, s)| s.trace_id.clone()).collect();
    assert_eq!(set_a.len() as u64, kept_a, "0.1 agent records th:e6666666666666 (exact 56-bit threshold)");
    assert_eq!(set_b.len() as u64, kept_b);
    assert!(set_a.is_subset(&set_b), "traces kept at 0.1 are kept at 0.5");
    a.shutdown().await;
    b.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_keep_the_running_config_and_every_queued_span() {
    use tracelight_agent::metrics::DropReason;
    // The collector is down at first, so spans wait in the queue through every bad reload.
    let down_port = down_port();
    let down = down_port.addr;
    let dir = temp_dir("bad-reloads");
    let cfg = dir.join("config.yaml");
    write_atomic(&cfg, &config_yaml(1, &format!("http://{down}"), "http/protobuf", 1.0, ""));
    let agent = agent(&cfg).await;
    send(&agent, 15).await;

    let missing_key = format!("  apiKeyHeader: x-api-key\n  apiKeyFile: {}\n", dir.join("no-such-key").display());
    let bad_header = format!("  apiKeyHeader: 'bad header'\n  apiKeyFile: {}\n", cfg.display());
    let bad: Vec<(&str, Option<String>)> = vec![
        ("ratio above 1", Some(config_yaml(2, &format!("http://{down}"), "http/protobuf", 1.5, ""))),
        ("API key file missing", Some(config_yaml(3, &format!("http://{down}"), "http/protobuf", 1.0, &missing_key))),
        ("invalid header name", Some(config_yaml(4, &format!("http://{down}"), "http/protobuf", 1.0, &bad_header))),
        ("unknown protocol", Some(config_yaml(5, &format!("http://{down}"), "thrift", 1.0, ""))),
        ("misspelt field", Some("generation: 6\npolicy: p\ncolector: {}\nsampling: {ratio: 1}\n".into())),
        ("empty file", Some(String::new())),
        ("file removed", None),
    ];
    for (i, (what, content)) in bad.into_iter().enumerate() {
        match content {
            Some(c) => write_atomic(&cfg, &c),
            None => std::fs::remove_file(&cfg).expect("remove config"),
        }
        assert!(
            wait_until(Duration::from_secs(5), || reloads(&agent, ReloadResult::Rejected) == i as u64 + 1).await,
            "{what}: rejected"
        );
        assert_eq!(agent.report().config_generation, 1, "{what}: generation 1 kept");
    }
    assert_eq!(reloads(&agent, ReloadResult::Applied), 1);
    // Still sampling at 1.0 (not at a rejected ratio), and nothing was dropped.
    send(&agent, 5).await;
    assert_eq!(agent.shared.metrics.sampled_out.get(), 0);
    for reason in [DropReason::QueueFull, DropReason::ExportRejected, DropReason::Shutdown, DropReason::Invalid] {
        assert_eq!(agent.shared.metrics.dropped_count(reason), 0, "{reason:?}");
    }

    // A good config pointing at a live collector delivers everything queued meanwhile.
    let (addr, collector, _task) = fake_collector(ANY_PORT).await;
    drop(down_port);
    write_atomic(&cfg, &config_yaml(7, &format!("http://{addr}"), "http/protobuf", 1.0, ""));
    assert!(wait_until(Duration::from_secs(20), || collector.spans() == 20).await, "got {}", collector.spans());
    assert_eq!(agent.report().config_generation, 7);
    assert_eq!(agent.shared.metrics.exported.get(), 20);
    agent.shutdown().await;
}

/// Skew: a config from a newer operator (fields this agent does not know, a higher contract
/// version) is applied, not rejected; the agent's report names its own version and contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_from_a_newer_operator_is_applied_and_its_unknown_fields_ignored() {
    let (addr, collector, _t) = fake_collector(ANY_PORT).await;
    let dir = temp_dir("skew");
    let cfg = dir.join("config.v2.yaml");
    let future = format!(
        "contractVersion: 9\ngeneration: 5\npolicy: default\nprobes: {{threshold: 0.001}}\ncollector:\n  endpoint: http://{addr}\n  protocol: http/protobuf\n  compression: gzip\n  retry: {{maxElapsed: 60s}}\nsampling:\n  ratio: 1\n  adaptive: true\n  rules: [{{name: probes, attributes: [{{key: http.route, exact: /healthz}}], ratio: 0, priority: 3}}]\n"
    );
    write_atomic(&cfg, &future);
    let agent = agent(&cfg).await;
    assert!(wait_until(Duration::from_secs(5), || agent.report().config_generation == 5).await);
    assert_eq!(reloads(&agent, ReloadResult::Rejected), 0);
    send(&agent, 3).await;
    assert!(wait_until(Duration::from_secs(5), || collector.spans() == 3).await);
    let report = agent.report();
    assert_eq!(report.contract_version, tracelight_contract::CONTRACT_VERSION);
    assert_eq!(report.agent_version.as_deref(), Some(tracelight_contract::VERSION));
    agent.shutdown().await;
}
