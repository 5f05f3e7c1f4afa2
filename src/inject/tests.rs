//! Golden-file and property tests of the injector.
//!
//! Each `testdata/cases/<name>.yaml` holds a pod (plus optional policy overrides and options);
//! `testdata/cases/<name>.golden.json` holds the outcome: the injected pod, the patch and the
//! warnings, so a reviewer can read exactly what the webhook does. `UPDATE_GOLDEN=1 cargo test`
//! rewrites the golden files.

use super::*;
use crate::api::keys::{ENV_FROM_UNSEEN_ANNOTATION, LANGUAGE_ANNOTATION, SELF_EXPORTED_ANNOTATION};
use k8s_openapi::api::core::v1::{ConfigMapEnvSource, ContainerPort, EnvFromSource, EnvVar};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/inject/testdata")
}

fn base_policy() -> TracingPolicy {
    serde_yaml::from_str(&std::fs::read_to_string(testdata().join("policy.yaml")).unwrap()).unwrap()
}

fn policy_with(overrides: Option<&Value>) -> TracingPolicy {
    let mut value = serde_json::to_value(base_policy()).unwrap();
    if let Some(o) = overrides {
        json_patch::merge(&mut value["spec"], o);
    }
    serde_json::from_value(value).expect("policy overrides are valid")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    #[allow(dead_code)] // documentation for the reader of the case file
    description: String,
    #[serde(default)]
    policy: Option<Value>,
    #[serde(default)]
    options: Option<CaseOptions>,
    pod: Pod,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaseOptions {
    native_sidecar: bool,
}

fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Skipped(reason) => json!({"outcome": "skipped", "reason": format!("{reason:?}")}),
        Outcome::Injected(m) => json!({
            "outcome": "injected",
            "manifestHash": m.manifest_hash,
            "warnings": m.warnings,
            "patch": m.patch,
            "pod": m.pod,
        }),
    }
}

/// Checks that hold for every injected pod, whatever the case.
fn check_invariants(original: &Pod, mutation: &Mutation, policy: &TracingPolicy, options: &InjectOptions) {
    let injected = mutation.pod.as_ref().expect("inject returns the injected pod");
    // The patch turns the admitted pod into the injected one.
    let mut doc = serde_json::to_value(original).unwrap();
    json_patch::patch(&mut doc, &mutation.patch.operations().expect("the patch is JSON"))
        .expect("patch applies to the admitted pod");
    assert_eq!(doc, serde_json::to_value(injected).unwrap(), "patch does not produce the injected pod");
    // The patch written from the edits is the diff of the two pods, operation for operation.
    assert_eq!(patch::pod_diff(original, injected).unwrap(), mutation.patch, "the patch differs from the pods' diff");
    // Injecting again changes nothing.
    match inject(injected, "shop", policy, options).unwrap() {
        Outcome::Injected(again) => {
            assert!(again.patch.is_empty(), "re-injection patched: {:?}", again.patch);
            assert_eq!(again.pod, mutation.pod);
        }
        other => panic!("re-injection gave {other:?}"),
    }
    assert_user_env_kept(original, injected);
    assert_ports_unique(injected);
    assert_endpoint_points_at_agent(injected);
    assert_own_export_untouched(original, injected);
}

/// All containers of the pod, init containers first.
fn all_containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect()
}

/// No two containers declare the same port number or name, and no other container reveals a
/// port the agent listens on.
fn assert_ports_unique(pod: &Pod) {
    let mut numbers = std::collections::BTreeMap::new();
    let mut names = std::collections::BTreeMap::new();
    for c in all_containers(pod) {
        for p in c.ports.iter().flatten() {
            if let Some(other) = numbers.insert(p.container_port, &c.name) {
                assert!(other == &c.name, "port {} declared by {other} and {}", p.container_port, c.name);
            }
            if let Some(name) = &p.name {
                if let Some(other) = names.insert(name.clone(), &c.name) {
                    panic!("port name {name} declared by {other} and {}", c.name);
                }
            }
        }
    }
    let Some(agent) = all_containers(pod).into_iter().find(|c| c.name == AGENT_CONTAINER) else { return };
    let spec = pod.spec.as_ref().unwrap();
    let taken = ports::taken_ports(spec, AGENT_CONTAINER);
    for p in agent.ports.iter().flatten() {
        assert!(!taken.contains(&(p.container_port as u16)), "agent port {} is used by the pod", p.container_port);
    }
}

/// The agent's HTTP port, from its arguments.
fn agent_http_port(pod: &Pod) -> Option<String> {
    let agent = all_containers(pod).into_iter().find(|c| c.name == AGENT_CONTAINER)?;
    agent.args.iter().flatten().find_map(|a| a.strip_prefix("--otlp-http-port=").map(String::from))
}

/// Every injected endpoint names the agent's actual HTTP port.
fn assert_endpoint_points_at_agent(pod: &Pod) {
    let Some(port) = agent_http_port(pod) else { return };
    for c in &pod.spec.as_ref().unwrap().containers {
        if let Some(endpoint) = env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT") {
            if endpoint.starts_with("http://127.0.0.1:") && env_value(c, "OTEL_EXPORTER_OTLP_PROTOCOL").is_some() {
                assert_eq!(endpoint, format!("http://127.0.0.1:{port}"), "container {}", c.name);
            }
        }
    }
}

/// A container that configured any export setting, or has envFrom sources, gets none added and
/// no sampler (the cases never set a value equal to the injector's own).
fn assert_own_export_untouched(original: &Pod, mutated: &Pod) {
    for before in &original.spec.as_ref().unwrap().containers {
        let own: Vec<&EnvVar> = before.env.iter().flatten().filter(|e| env::is_export_setting(&e.name)).collect();
        let has_env_from = before.env_from.as_ref().is_some_and(|v| !v.is_empty());
        if own.is_empty() && !has_env_from {
            continue;
        }
        let after = mutated.spec.as_ref().unwrap().containers.iter().find(|c| c.name == before.name).unwrap();
        let after_unit: Vec<&EnvVar> = after.env.iter().flatten().filter(|e| env::is_export_setting(&e.name)).collect();
        assert_eq!(after_unit, own, "container {}: export settings changed", before.name);
        let had_sampler = before.env.iter().flatten().any(|e| e.name == "OTEL_TRACES_SAMPLER");
        assert!(
            had_sampler || env_value(after, "OTEL_TRACES_SAMPLER").is_none(),
            "container {}: sampler added",
            before.name
        );
    }
}

/// Every user variable keeps its value; the language variables may only be extended.
fn assert_user_env_kept(original: &Pod, mutated: &Pod) {
    let joined = [
        "JAVA_TOOL_OPTIONS",
        "NODE_OPTIONS",
        "PYTHONPATH",
        "DOTNET_STARTUP_HOOKS",
        "DOTNET_ADDITIONAL_DEPS",
        "DOTNET_SHARED_STORE",
    ];
    let containers = |p: &Pod| p.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    for before in containers(original) {
        let after = containers(mutated).into_iter().find(|c| c.name == before.name).expect("container kept");
        let after_env: Vec<EnvVar> = after.env.unwrap_or_default();
        for var in before.env.unwrap_or_default() {
            let now = after_env.iter().rev().find(|e| e.name == var.name).expect("user variable kept");
            if joined.contains(&var.name.as_str()) && var.value.is_some() {
                assert!(now.value.as_deref().unwrap_or_default().contains(var.value.as_deref().unwrap()));
            } else {
                assert_eq!(now, &var, "user variable {} changed", var.name);
            }
        }
    }
}

#[test]
fn golden_cases() {
    let dir = testdata().join("cases");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "golden cases missing");
    let mut failures = Vec::new();
    for path in names {
        let case: Case = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let policy = policy_with(case.policy.as_ref());
        let options =
            InjectOptions { native_sidecar: case.options.is_none_or(|o| o.native_sidecar), ..Default::default() };
        let outcome = inject(&case.pod, "shop", &policy, &options).unwrap();
        if let Outcome::Injected(m) = &outcome {
            check_invariants(&case.pod, m, &policy, &options);
        }
        let actual = serde_json::to_string_pretty(&outcome_json(&outcome)).unwrap() + "\n";
        let golden = path.with_extension("golden.json");
        if update {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => {
                let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
                failures.push(format!(
                    "{}: differs from golden at line {} (UPDATE_GOLDEN=1 to accept)",
                    path.display(),
                    first + 1
                ));
            }
            Err(_) => failures.push(format!("{}: no golden file (UPDATE_GOLDEN=1 to create)", golden.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn case_pod(name: &str) -> Pod {
    let text = std::fs::read_to_string(testdata().join("cases").join(format!("{name}.yaml"))).unwrap();
    serde_yaml::from_str::<Case>(&text).unwrap().pod
}

/// An injection's result with its pod (which [`inject`] always returns).
struct Injected {
    pod: Pod,
    manifest_hash: String,
    warnings: Vec<String>,
}

fn injected(outcome: Outcome) -> Injected {
    match outcome {
        Outcome::Injected(m) => Injected {
            pod: m.pod.expect("inject returns the injected pod"),
            manifest_hash: m.manifest_hash,
            warnings: m.warnings,
        },
        other => panic!("expected an injection, got {other:?}"),
    }
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name).unwrap()
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env.iter().flatten().rev().find(|e| e.name == name).and_then(|e| e.value.clone())
}

#[test]
fn native_sidecar_is_first_init_container_and_restricted() {
    let m = injected(inject(&case_pod("container-names"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    let init = m.pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert_eq!(init[0].name, AGENT_CONTAINER);
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(init[1].name, "wait-for-db");
    let sc = init[0].security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // The log shipper was not selected.
    assert!(env_value(container(&m.pod, "log-shipper"), "OTEL_SERVICE_NAME").is_none());
    assert_eq!(m.warnings, vec!["tracelight.io/container-names: no container named \"missing\"".to_string()]);
}

#[test]
fn service_env_points_at_local_agent() {
    let m = injected(inject(&case_pod("deployment"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    let app = container(&m.pod, "app");
    assert_eq!(env_value(app, "OTEL_SERVICE_NAME").as_deref(), Some("checkout"));
    assert_eq!(env_value(app, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(), Some("http://127.0.0.1:4318"));
    assert_eq!(env_value(app, "OTEL_TRACES_SAMPLER").as_deref(), Some("parentbased_always_on"));
    let attrs = env_value(app, "OTEL_RESOURCE_ATTRIBUTES").unwrap();
    assert!(attrs.contains("k8s.deployment.name=checkout"), "{attrs}");
    assert!(attrs.contains("k8s.pod.name=$(TRACELIGHT_POD_NAME)"), "{attrs}");
    assert!(attrs.ends_with("deployment.environment=prod"), "{attrs}");
    // The referenced variable is defined before the reference.
    let names: Vec<&str> = app.env.iter().flatten().map(|e| e.name.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("TRACELIGHT_POD_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"));
}

#[test]
fn host_network_pods_get_their_workloads_slot_as_host_ports() {
    use crate::inject::ports::{host_slot, HostPortRange};
    let m = injected(
        inject(&case_pod("daemonset-hostnetwork"), "monitoring", &base_policy(), &InjectOptions::default()).unwrap(),
    );
    let slot =
        HostPortRange::DEFAULT.slot_ports(host_slot("monitoring/DaemonSet/node-exporter", HostPortRange::DEFAULT));
    assert!((20000..=22999).contains(&slot.otlp_grpc), "{slot:?}");
    assert_eq!(
        env_value(container(&m.pod, "exporter"), "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some(format!("http://127.0.0.1:{}", slot.otlp_http))
    );
    let agent = container(&m.pod, AGENT_CONTAINER);
    let args = agent.args.clone().unwrap();
    for flag in [
        format!("--otlp-grpc-port={}", slot.otlp_grpc),
        format!("--otlp-http-port={}", slot.otlp_http),
        format!("--admin-port={}", slot.admin),
    ] {
        assert!(args.contains(&flag), "{flag} not in {args:?}");
    }
    // Declared as host ports: the scheduler keeps a second pod needing the slot off the node.
    let declared: Vec<(i32, Option<i32>)> =
        agent.ports.iter().flatten().map(|p| (p.container_port, p.host_port)).collect();
    let want = [slot.otlp_grpc, slot.otlp_http, slot.admin].map(|p| (i32::from(p), Some(i32::from(p))));
    assert_eq!(declared, want);
    // Pods of other workloads get other host ports; pods without hostNetwork get none.
    let plain = injected(inject(&case_pod("deployment"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    let agent = container(&plain.pod, AGENT_CONTAINER);
    assert!(agent.ports.iter().flatten().all(|p| p.host_port.is_none()));
}

#[test]
fn two_host_network_workloads_get_different_slots_and_one_workload_one_slot() {
    let pod = |name: &str, suffix: &str| {
        let mut pod = case_pod("daemonset-hostnetwork");
        let owner = &mut pod.metadata.owner_references.as_mut().unwrap()[0];
        owner.name = name.into();
        pod.metadata.generate_name = Some(format!("{name}-"));
        pod.metadata.name = Some(format!("{name}-{suffix}"));
        pod
    };
    let ports = |pod: &Pod| {
        let m = injected(inject(pod, "monitoring", &base_policy(), &InjectOptions::default()).unwrap());
        (container(&m.pod, AGENT_CONTAINER).args.clone().unwrap(), m.manifest_hash)
    };
    let (a1, hash1) = ports(&pod("node-exporter", "x1"));
    let (a2, hash2) = ports(&pod("node-exporter", "y2"));
    assert_eq!((&a1, &hash1), (&a2, &hash2), "pods of one workload share the slot and the manifest hash");
    let (b, _) = ports(&pod("log-shipper", "x1"));
    assert_ne!(a1, b, "two workloads on one node must not want the same ports");
}

#[test]
fn the_admin_port_is_exposed_only_as_far_as_asked() {
    use crate::inject::{AdminExposure, POD_IP_VAR};
    let agent_of = |exposure| {
        let options = InjectOptions { admin_exposure: exposure, ..Default::default() };
        let m = injected(inject(&case_pod("deployment"), "shop", &base_policy(), &options).unwrap());
        (container(&m.pod, AGENT_CONTAINER).clone(), m.manifest_hash)
    };
    let (health, health_hash) = agent_of(AdminExposure::Health);
    let args = health.args.clone().unwrap();
    assert!(args.contains(&format!("--health-host=$({POD_IP_VAR})")), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--admin-host") || a.starts_with("--health-metrics")), "{args:?}");
    let pod_ip = health.env.iter().flatten().find(|e| e.name == POD_IP_VAR).expect("the pod IP variable");
    let field = pod_ip.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("status.podIP"));

    let (metrics, metrics_hash) = agent_of(AdminExposure::Metrics);
    let args = metrics.args.clone().unwrap();
    assert!(args.contains(&"--health-metrics=true".to_string()), "{args:?}");
    assert!(args.contains(&format!("--health-host=$({POD_IP_VAR})")), "{args:?}");

    let (all, all_hash) = agent_of(AdminExposure::All);
    let args = all.args.clone().unwrap();
    assert!(args.contains(&"--admin-host=0.0.0.0".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--health-host")), "{args:?}");
    // A change of exposure changes the agent's flags: workloads are restarted to get it.
    assert!(health_hash != metrics_hash && metrics_hash != all_hash && health_hash != all_hash);
    assert_eq!("metrics".parse::<AdminExposure>(), Ok(AdminExposure::Metrics));
    assert!("everything".parse::<AdminExposure>().is_err());
}

#[test]
fn manifest_hash_ignores_live_settings_but_not_the_image() {
    let pod = case_pod("bare-pod");
    let options = InjectOptions::default();
    let hash = |p: &TracingPolicy| injected(inject(&pod, "shop", p, &options).unwrap()).manifest_hash;
    let base = hash(&base_policy());
    let live =
        policy_with(Some(&json!({"sampling": {"ratio": 0.01}, "collector": {"endpoint": "https://elsewhere:443"}})));
    assert_eq!(hash(&live), base, "ratio and endpoint change live, not through the manifest");
    let image = policy_with(Some(&json!({"agent": {"image": "ghcr.io/tracelight/tracelight:0.2.0"}})));
    assert_ne!(hash(&image), base);
    let sdk = policy_with(Some(&json!({"sampling": {"mode": "sdk"}})));
    assert_ne!(hash(&sdk), base);
    assert_eq!(expected_manifest_hash(&pod, &base_policy(), &options), Some(base));
}

#[test]
fn decide_requires_governed_and_active_namespace() {
    use crate::api::{NamespaceState, NamespaceStatus, TracingPolicyStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let ns = |labels: &[(&str, &str)]| Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        ..Default::default()
    };
    let pod = case_pod("bare-pod");
    let options = InjectOptions::default();
    let mut policy = base_policy();
    let skipped = |o: Outcome| match o {
        Outcome::Skipped(r) => r,
        other => panic!("expected skip, got {other:?}"),
    };
    assert_eq!(skipped(decide(&pod, &ns(&[]), [&policy], &options).unwrap()), SkipReason::NamespaceNotGoverned);
    let enabled = ns(&[("tracelight.io/enabled", "true")]);
    assert_eq!(skipped(decide(&pod, &enabled, [&policy], &options).unwrap()), SkipReason::NamespaceNotActive);
    policy.status = Some(TracingPolicyStatus {
        namespaces: vec![NamespaceStatus { name: "shop".into(), state: NamespaceState::Active, ..Default::default() }],
        ..Default::default()
    });
    assert!(matches!(decide(&pod, &enabled, [&policy], &options).unwrap(), Outcome::Injected(_)));
}

#[test]
fn pod_selector_narrows_injection() {
    let policy = policy_with(Some(&json!({"podSelector": {"matchLabels": {"tracing": "on"}}})));
    let outcome = inject(&case_pod("bare-pod"), "shop", &policy, &InjectOptions::default()).unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::NotSelected));
}

fn init_names(pod: &Pod) -> Vec<&str> {
    pod.spec.as_ref().unwrap().init_containers.iter().flatten().map(|c| c.name.as_str()).collect()
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

#[test]
fn collector_pod_moves_the_agent_and_the_endpoint_follows() {
    let m = injected(inject(&case_pod("otel-collector"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    let agent = container(&m.pod, AGENT_CONTAINER);
    let args = agent.args.clone().unwrap();
    for flag in ["--otlp-grpc-port=14317", "--otlp-http-port=14318", "--admin-port=23133"] {
        assert!(args.contains(&flag.to_string()), "{args:?}");
    }
    let probe = agent.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(23133));
    let names: Vec<_> = agent.ports.iter().flatten().filter_map(|p| p.name.as_deref()).collect();
    assert_eq!(names, ["tl-otlp-grpc", "tl-otlp-http", "tl-admin"]);
    assert_eq!(
        env_value(container(&m.pod, "collector"), "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://127.0.0.1:14318")
    );
    assert!(m.warnings.iter().any(|w| w.contains("14317/14318/23133")), "{:?}", m.warnings);
    // The hash covers the moved ports: the controller compares it with the same pod's plan.
    assert_ne!(
        m.manifest_hash,
        injected(inject(&case_pod("bare-pod"), "shop", &base_policy(), &InjectOptions::default()).unwrap())
            .manifest_hash
    );
    assert_eq!(
        expected_manifest_hash(&m.pod, &base_policy(), &InjectOptions::default()),
        Some(m.manifest_hash.clone())
    );
}

#[test]
fn jaeger_image_ports_count_even_when_undeclared() {
    let m =
        injected(inject(&case_pod("jaeger-all-in-one"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    assert_eq!(agent_http_port(&m.pod).as_deref(), Some("14318"));
}

#[test]
fn a_pod_leaving_no_free_port_is_skipped_with_the_reason() {
    let mut pod = case_pod("bare-pod");
    let busy: Vec<String> = (1024..=65535u32).map(|p| format!("--port={p}")).collect();
    pod.spec.as_mut().unwrap().containers[0].args = Some(busy);
    match inject(&pod, "shop", &base_policy(), &InjectOptions::default()).unwrap() {
        Outcome::Skipped(reason @ SkipReason::PortConflict(_)) => {
            assert!(reason.is_conflict());
            assert_eq!(
                reason.status_annotation(),
                "skipped: port_conflict: no free port for the agent's OTLP/gRPC listener near 4317"
            );
        }
        other => panic!("expected a port conflict, got {other:?}"),
    }
    assert_eq!(expected_manifest_hash(&pod, &base_policy(), &InjectOptions::default()), None);
}

#[test]
fn own_export_settings_are_left_whole() {
    let m = injected(inject(&case_pod("self-exported"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    let grpc = container(&m.pod, "grpc-endpoint");
    assert_eq!(
        env_value(grpc, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://otel-collector.observability:4317")
    );
    assert_eq!(env_value(grpc, "OTEL_EXPORTER_OTLP_PROTOCOL"), None, "no protocol next to the user's gRPC endpoint");
    assert_eq!(env_value(grpc, "OTEL_SERVICE_NAME").as_deref(), Some("checkout"), "identity is still injected");
    let signals = container(&m.pod, "metrics-logs");
    assert_eq!(env_value(signals, "OTEL_METRICS_EXPORTER").as_deref(), Some("otlp"));
    assert_eq!(env_value(signals, "OTEL_LOGS_EXPORTER").as_deref(), Some("otlp"));
    for name in ["grpc-endpoint", "per-signal", "metrics-logs"] {
        let c = container(&m.pod, name);
        for var in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER"] {
            assert_eq!(env_value(c, var), None, "{name}: {var} injected");
        }
    }
    let plain = container(&m.pod, "plain");
    assert_eq!(env_value(plain, "OTEL_METRICS_EXPORTER").as_deref(), Some("none"));
    assert_eq!(env_value(plain, "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(), Some("http/protobuf"));
    assert_eq!(annotation(&m.pod, SELF_EXPORTED_ANNOTATION), Some("grpc-endpoint,per-signal,metrics-logs"));
}

#[test]
fn unseen_env_from_sources_keep_their_export_and_say_so() {
    let m = injected(inject(&case_pod("env-from"), "shop", &base_policy(), &InjectOptions::default()).unwrap());
    let orders = container(&m.pod, "orders");
    for var in
        ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_SAMPLER"]
    {
        assert_eq!(env_value(orders, var), None, "{var} injected over an unseen envFrom source");
    }
    assert_eq!(annotation(&m.pod, ENV_FROM_UNSEEN_ANNOTATION), Some("orders"));
    assert_eq!(env_value(container(&m.pod, "worker"), "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(), Some("http/protobuf"));
}

#[test]
fn visible_env_from_sources_win_like_env() {
    let pod = case_pod("env-from");
    let mut sources = EnvSources::default();
    sources.insert(
        SourceKind::ConfigMap,
        "orders-otel",
        BTreeMap::from([
            ("OTEL_SERVICE_NAME".into(), Some("orders-from-cm".into())),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), Some("http://collector:4317".into())),
        ]),
    );
    sources.insert(SourceKind::Secret, "orders-otel-headers", BTreeMap::new());
    let m = injected(inject_with_sources(&pod, "shop", &base_policy(), &InjectOptions::default(), &sources).unwrap());
    let orders = container(&m.pod, "orders");
    assert_eq!(env_value(orders, "OTEL_SERVICE_NAME"), None, "the ConfigMap's service name wins");
    assert_eq!(env_value(orders, "OTEL_EXPORTER_OTLP_PROTOCOL"), None, "its export unit is its own");
    assert!(env_value(orders, "OTEL_RESOURCE_ATTRIBUTES").is_some());
    assert_eq!(annotation(&m.pod, SELF_EXPORTED_ANNOTATION), Some("orders"));
    assert_eq!(annotation(&m.pod, ENV_FROM_UNSEEN_ANNOTATION), None);
    // Seen sources without export settings: the agent's unit goes in env.
    let mut quiet = EnvSources::default();
    quiet.insert(SourceKind::ConfigMap, "orders-otel", BTreeMap::from([("LOG_FORMAT".into(), Some("json".into()))]));
    quiet.insert(SourceKind::Secret, "orders-otel-headers", BTreeMap::new());
    let m = injected(inject_with_sources(&pod, "shop", &base_policy(), &InjectOptions::default(), &quiet).unwrap());
    assert_eq!(env_value(container(&m.pod, "orders"), "OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(), Some("http/protobuf"));
}

#[test]
fn agent_starts_after_the_mesh_and_before_other_init_containers() {
    let order = |case: &str| {
        let m = injected(inject(&case_pod(case), "shop", &base_policy(), &InjectOptions::default()).unwrap());
        init_names(&m.pod).into_iter().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(order("istio-proxy"), ["istio-init", AGENT_CONTAINER]);
    assert_eq!(order("istio-native"), ["istio-validation", "istio-proxy", AGENT_CONTAINER, "migrate"]);
    assert_eq!(order("linkerd-classic"), ["linkerd-init", AGENT_CONTAINER]);
    assert_eq!(order("linkerd-native"), ["linkerd-init", "linkerd-proxy", AGENT_CONTAINER]);
    let mut java = case_pod("linkerd-native");
    java.annotations_mut().insert(LANGUAGE_ANNOTATION.into(), "java".into());
    let m = injected(inject(&java, "shop", &base_policy(), &InjectOptions::default()).unwrap());
    assert_eq!(init_names(&m.pod), ["linkerd-init", "linkerd-proxy", AGENT_CONTAINER, "tracelight-auto-java"]);
}

// ---- property test ----

fn arb_env() -> impl Strategy<Value = Vec<EnvVar>> {
    let name = prop_oneof![
        Just("OTEL_SERVICE_NAME".to_string()),
        Just("OTEL_RESOURCE_ATTRIBUTES".to_string()),
        Just("JAVA_TOOL_OPTIONS".to_string()),
        Just("NODE_OPTIONS".to_string()),
        Just("PYTHONPATH".to_string()),
        "[A-Z][A-Z0-9_]{0,6}",
    ];
    let value = prop_oneof![
        "[a-z0-9 =,.-]{0,12}".prop_map(Some),
        Just(Some("$(TRACELIGHT_POD_NAME)".to_string())),
        Just(Some("x $(OTEL_SERVICE_NAME)".to_string())),
        Just(None),
    ];
    proptest::collection::vec((name, value), 0..5).prop_map(|vars| {
        let mut seen = std::collections::HashSet::new();
        vars.into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(name, value)| match value {
                Some(v) => EnvVar { name, value: Some(v), value_from: None },
                None => EnvVar { name, value: None, value_from: Some(Default::default()) },
            })
            .collect()
    })
}

/// Ports as containers declare them, including the agent's defaults and their first alternates,
/// and names collector pods use.
fn arb_ports() -> impl Strategy<Value = Vec<(i32, Option<&'static str>)>> {
    let number = prop_oneof![
        Just(4317),
        Just(4318),
        Just(13133),
        Just(14317),
        Just(14318),
        Just(23133),
        Just(8080),
        1024..65535i32
    ];
    let name = prop_oneof![
        Just(None),
        Just(Some("otlp-grpc")),
        Just(Some("tl-admin")),
        Just(Some("http")),
        Just(Some("tl-otlp-http"))
    ];
    proptest::collection::vec((number, name), 0..4)
}

/// Export settings a container may set itself (never equal to the injector's values).
fn arb_export() -> impl Strategy<Value = Vec<EnvVar>> {
    let var = prop_oneof![
        Just(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")),
        Just(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/v1/traces")),
        Just(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")),
        Just(("OTEL_METRICS_EXPORTER", "otlp")),
        Just(("OTEL_LOGS_EXPORTER", "otlp")),
        Just(("OTEL_TRACES_EXPORTER", "zipkin")),
    ];
    proptest::collection::vec(var, 0..3).prop_map(|vars| {
        let mut seen = std::collections::HashSet::new();
        vars.into_iter().filter(|(n, _)| seen.insert(*n)).map(|(n, v)| env::literal(n, v)).collect()
    })
}

fn arb_pod() -> impl Strategy<Value = Pod> {
    let container_name =
        prop_oneof![Just("app"), Just("web"), Just("worker"), Just("istio-proxy"), Just("linkerd-proxy")];
    let image =
        prop_oneof![Just("img"), Just("otel/opentelemetry-collector:0.112.0"), Just("jaegertracing/all-in-one:1")];
    let containers =
        proptest::collection::vec((container_name, arb_env(), arb_ports(), arb_export(), image, any::<bool>()), 1..4);
    let mesh = prop_oneof![
        Just(vec![]),
        Just(vec![("istio-init", false)]),
        Just(vec![("istio-validation", false), ("istio-proxy", true)]),
        Just(vec![("linkerd-init", false), ("linkerd-proxy", true)]),
    ];
    let language = prop_oneof![
        Just(None),
        Just(Some("java")),
        Just(Some("nodejs")),
        Just(Some("python")),
        Just(Some("dotnet")),
        Just(Some("app=java,web=python")),
        Just(Some("ruby")),
    ];
    (containers, language, any::<bool>(), any::<bool>(), mesh).prop_map(
        |(containers, language, host_network, has_init, mesh)| {
            let mut seen = std::collections::HashSet::new();
            // A valid pod declares each port number and name once.
            let mut numbers = std::collections::HashSet::new();
            let mut port_names = std::collections::HashSet::new();
            let containers: Vec<Container> = containers
                .into_iter()
                .filter(|(n, ..)| seen.insert(*n))
                .map(|(name, mut env, ports, export, image, env_from)| {
                    env.retain(|e| !env::is_export_setting(&e.name));
                    env.extend(export);
                    let ports: Vec<ContainerPort> = ports
                        .into_iter()
                        .filter(|(n, _)| numbers.insert(*n))
                        .map(|(n, port_name)| ContainerPort {
                            container_port: n,
                            name: port_name.filter(|p| port_names.insert(*p)).map(String::from),
                            ..Default::default()
                        })
                        .collect();
                    Container {
                        name: name.into(),
                        image: Some(image.into()),
                        env: Some(env),
                        ports: Some(ports),
                        env_from: env_from.then(|| {
                            vec![EnvFromSource {
                                config_map_ref: Some(ConfigMapEnvSource { name: "cm".into(), optional: Some(true) }),
                                ..Default::default()
                            }]
                        }),
                        ..Default::default()
                    }
                })
                .collect();
            let mut init: Vec<Container> = mesh
                .into_iter()
                .map(|(name, native)| Container {
                    name: name.into(),
                    restart_policy: native.then(|| "Always".to_string()),
                    ..Default::default()
                })
                .collect();
            if has_init {
                init.push(Container { name: "init".into(), ..Default::default() });
            }
            let mut pod = Pod::default();
            pod.metadata.generate_name = Some("p-".into());
            if let Some(l) = language {
                pod.annotations_mut().insert(LANGUAGE_ANNOTATION.into(), l.into());
            }
            pod.spec = Some(PodSpec {
                containers,
                host_network: Some(host_network),
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            });
            pod
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn patch_reproduces_injection_and_injection_is_idempotent(pod in arb_pod(), native in any::<bool>()) {
        let policy = base_policy();
        let options = InjectOptions { native_sidecar: native, ..Default::default() };
        match inject(&pod, "shop", &policy, &options).unwrap() {
            Outcome::Injected(m) => check_invariants(&pod, &m, &policy, &options),
            Outcome::Skipped(reason) => prop_assert_eq!(reason, SkipReason::NoEligibleContainers),
        }
    }

    #[test]
    fn agent_follows_the_mesh_in_init_order(pod in arb_pod()) {
        let policy = base_policy();
        if let Outcome::Injected(m) = inject(&pod, "shop", &policy, &InjectOptions::default()).unwrap() {
            let names = init_names(m.pod.as_ref().unwrap());
            let agent = names.iter().position(|n| *n == AGENT_CONTAINER).unwrap();
            let last_mesh = names.iter().rposition(|n| MESH_INIT_CONTAINERS.contains(n));
            prop_assert!(last_mesh.is_none_or(|mesh| mesh < agent), "{:?}", names);
            prop_assert!(names[..agent].iter().all(|n| MESH_INIT_CONTAINERS.contains(n)), "{:?}", names);
        }
    }
}
