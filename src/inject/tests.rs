//! Golden-file and property tests of the injector.
//!
//! Each `testdata/cases/<name>.yaml` holds a pod (plus optional policy overrides and options);
//! `testdata/cases/<name>.golden.json` holds the outcome: the injected pod, the patch and the
//! warnings, so a reviewer can read exactly what the webhook does. `UPDATE_GOLDEN=1 cargo test`
//! rewrites the golden files.

use super::*;
use crate::api::keys::LANGUAGE_ANNOTATION;
use k8s_openapi::api::core::v1::EnvVar;
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
    // The patch turns the admitted pod into the injected one.
    let mut doc = serde_json::to_value(original).unwrap();
    json_patch::patch(&mut doc, &mutation.patch).expect("patch applies to the admitted pod");
    assert_eq!(doc, serde_json::to_value(&mutation.pod).unwrap(), "patch does not produce the injected pod");
    // Injecting again changes nothing.
    match inject(&mutation.pod, "shop", policy, options).unwrap() {
        Outcome::Injected(again) => {
            assert!(again.patch.0.is_empty(), "re-injection patched: {:?}", again.patch);
            assert_eq!(again.pod, mutation.pod);
        }
        other => panic!("re-injection gave {other:?}"),
    }
    assert_user_env_kept(original, &mutation.pod);
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

fn injected(outcome: Outcome) -> Mutation {
    match outcome {
        Outcome::Injected(m) => *m,
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
fn host_network_pods_use_alternate_ports() {
    let m = injected(
        inject(&case_pod("daemonset-hostnetwork"), "monitoring", &base_policy(), &InjectOptions::default()).unwrap(),
    );
    assert_eq!(
        env_value(container(&m.pod, "exporter"), "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://127.0.0.1:14318")
    );
    let args = container(&m.pod, AGENT_CONTAINER).args.clone().unwrap();
    assert!(args.contains(&"--otlp-grpc-port=14317".to_string()), "{args:?}");
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

fn arb_pod() -> impl Strategy<Value = Pod> {
    let container_name =
        prop_oneof![Just("app"), Just("web"), Just("worker"), Just("istio-proxy"), Just("linkerd-proxy")];
    let containers = proptest::collection::vec((container_name, arb_env()), 1..4);
    let language = prop_oneof![
        Just(None),
        Just(Some("java")),
        Just(Some("nodejs")),
        Just(Some("python")),
        Just(Some("dotnet")),
        Just(Some("app=java,web=python")),
        Just(Some("ruby")),
    ];
    (containers, language, any::<bool>(), any::<bool>()).prop_map(|(containers, language, host_network, has_init)| {
        let mut seen = std::collections::HashSet::new();
        let containers: Vec<Container> = containers
            .into_iter()
            .filter(|(n, _)| seen.insert(*n))
            .map(|(name, env)| Container {
                name: name.into(),
                image: Some("img".into()),
                env: Some(env),
                ..Default::default()
            })
            .collect();
        let mut pod = Pod::default();
        pod.metadata.generate_name = Some("p-".into());
        if let Some(l) = language {
            pod.annotations_mut().insert(LANGUAGE_ANNOTATION.into(), l.into());
        }
        pod.spec = Some(PodSpec {
            containers,
            host_network: Some(host_network),
            init_containers: has_init.then(|| vec![Container { name: "init".into(), ..Default::default() }]),
            ..Default::default()
        });
        pod
    })
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
}
