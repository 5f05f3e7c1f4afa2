//! The demo shop (`e2e/apps/`) as Kubernetes objects, the shape its traces must have, and the
//! images the runner maps its containers to.
//!
//! ```text
//! client -> frontend (Python/Flask) --HTTP--> inventory (Rust) --> SQLite
//!                                   --HTTP--> pricing (Node.js) --HTTP--> tax (Java)
//!                                   --queue (Celery over Redis)--> worker (Python/Celery)
//! ```
//!
//! The queue (Redis) opts out of injection (`tracelight.io/inject: "false"`), like infrastructure
//! pods do; every other pod is injected, and only Python, Node.js and Java ask for a language.

use crate::check::Topology;
use crate::runner::images::{base_env, Image, Images};
use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tracelight::api::TracingPolicy;
use tracelight::inject::Language;

/// A shop service: its Deployment and, when it listens, its Service.
pub struct Workload {
    pub name: &'static str,
    pub container: &'static str,
    /// Injected (and so expected in every trace).
    pub traced: bool,
    pub port: Option<u16>,
    pub deployment: Value,
    pub service: Option<Value>,
}

struct Spec {
    name: &'static str,
    container: &'static str,
    image: &'static str,
    language: Option<&'static str>,
    port: Option<u16>,
    env: Vec<(&'static str, &'static str)>,
    args: Option<Vec<&'static str>>,
    extra: Value,
    traced: bool,
}

fn workload(s: Spec) -> Workload {
    let mut env: Vec<Value> = s.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let mut container = json!({"name": s.container, "image": s.image});
    if let Some(port) = s.port {
        env.insert(0, json!({"name": "PORT", "value": port.to_string()}));
        container["ports"] = json!([{"name": "http", "containerPort": port}]);
        container["readinessProbe"] = json!({"tcpSocket": {"port": "http"}, "periodSeconds": 1});
    }
    container["env"] = json!(env);
    if let Some(args) = &s.args {
        container["args"] = json!(args);
    }
    if let Some(mounts) = s.extra.get("volumeMounts") {
        container["volumeMounts"] = mounts.clone();
    }
    let mut labels = json!({"app": s.name});
    if !s.traced {
        labels["tracelight.io/inject"] = json!("false");
    }
    let annotations = match s.language {
        Some(l) => json!({"tracelight.io/language": l}),
        None => json!({}),
    };
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": s.name}},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                    "volumes": s.extra.get("volumes").cloned().unwrap_or(json!([]))
                }
            }
        }
    });
    let service = s.port.map(|port| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name},
            "spec": {"selector": {"app": s.name}, "ports": [{"name": "http", "port": port, "targetPort": port}]}
        })
    });
    Workload { name: s.name, container: s.container, traced: s.traced, port: s.port, deployment, service }
}

/// The shop's workloads, in start order (servers before their clients; the frontend last).
pub fn workloads() -> Vec<Workload> {
    let none = json!({});
    vec![
        workload(Spec {
            name: "queue",
            container: "redis",
            image: "tracelight-e2e/shop-queue:1",
            language: None,
            port: Some(6379),
            env: vec![],
            args: Some(vec!["--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]),
            extra: none.clone(),
            traced: false,
        }),
        workload(Spec {
            name: "tax",
            container: "api",
            image: "tracelight-e2e/shop-tax:1",
            language: Some("java"),
            port: Some(8090),
            env: vec![],
            args: None,
            extra: none.clone(),
            traced: true,
        }),
        workload(Spec {
            name: "pricing",
            container: "api",
            image: "tracelight-e2e/shop-pricing:1",
            language: Some("nodejs"),
            port: Some(8070),
            env: vec![("TAX_URL", "http://tax:8090")],
            args: None,
            extra: none.clone(),
            traced: true,
        }),
        workload(Spec {
            name: "inventory",
            container: "api",
            image: "tracelight-e2e/shop-inventory:1",
            language: None,
            port: Some(8080),
            env: vec![("INVENTORY_DB", "/data/inventory.db")],
            args: None,
            extra: json!({
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }),
            traced: true,
        }),
        workload(Spec {
            name: "worker",
            container: "worker",
            image: "tracelight-e2e/shop-worker:1",
            language: Some("python"),
            port: None,
            env: vec![("BROKER_URL", "redis://queue:6379/0")],
            args: None,
            extra: none.clone(),
            traced: true,
        }),
        workload(Spec {
            name: "frontend",
            container: "web",
            image: "tracelight-e2e/shop-frontend:1",
            language: Some("python"),
            port: Some(8000),
            env: vec![
                ("INVENTORY_URL", "http://inventory:8080"),
                ("PRICING_URL", "http://pricing:8070"),
                ("BROKER_URL", "redis://queue:6379/0"),
            ],
            args: None,
            extra: none,
            traced: true,
        }),
    ]
}

/// A tax service whose tracing is broken on purpose: its own env turns the SDK's exporter off
/// (`OTEL_TRACES_EXPORTER=none`; the injector never overrides what the application sets). It is
/// injected and serves requests, but its agent receives nothing: coverage must call it silent.
pub fn broken_tax() -> Workload {
    workload(Spec {
        name: "tax-legacy",
        container: "api",
        image: "tracelight-e2e/shop-tax:1",
        language: Some("java"),
        port: Some(8090),
        env: vec![("OTEL_TRACES_EXPORTER", "none")],
        args: None,
        extra: json!({}),
        traced: true,
    })
}

/// An inventory service on the node's network (`hostNetwork`): a DaemonSet (in `deployment`)
/// pinned to `node`, serving on `port` of the node; no Service (a hosts file cannot name a node
/// port). A DaemonSet replaces a pod by deleting it first, so a restart never needs the node's
/// ports twice (a Deployment's surge pod would wait for its own application port).
pub fn host_network_inventory(name: &'static str, port: u16, node: &str) -> Workload {
    let mut w = workload(Spec {
        name,
        container: "api",
        image: "tracelight-e2e/shop-inventory:1",
        language: None,
        port: Some(port),
        env: vec![("INVENTORY_DB", "/data/inventory.db")],
        args: None,
        extra: json!({
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }),
        traced: true,
    });
    w.deployment["kind"] = json!("DaemonSet");
    if let Some(spec) = w.deployment["spec"].as_object_mut() {
        spec.remove("replicas");
    }
    let spec = &mut w.deployment["spec"]["template"]["spec"];
    spec["hostNetwork"] = json!(true);
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    w.service = None;
    w
}

/// The shape of every request's trace.
pub fn topology(policy: &TracingPolicy) -> Topology {
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    Topology {
        root: "frontend".into(),
        services: ["frontend", "inventory", "pricing", "tax", "worker"].map(String::from).into(),
        http_calls: vec![pair("frontend", "inventory"), pair("frontend", "pricing"), pair("pricing", "tax")],
        messages: vec![pair("frontend", "worker")],
        db_calls: vec![pair("inventory", "sqlite")],
        resource_attributes: policy.spec.resource_attributes.clone(),
    }
}

/// The prepared content (`e2e/apps/prepare.sh`): `TRACELIGHT_SHOP_CACHE` or its default.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("TRACELIGHT_SHOP_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/tracelight/shop"),
    };
    for part in ["python-app", "auto-python", "auto-nodejs", "auto-java"] {
        let stamp = dir.join(format!("{part}.stamp"));
        ensure!(stamp.is_file(), "{} is missing: run e2e/apps/prepare.sh (`make e2e-traces` does)", stamp.display());
    }
    Ok(dir)
}

/// The cargo target directory (CARGO_TARGET_TMPDIR is `<target>/tmp`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("CARGO_TARGET_TMPDIR has a parent").to_path_buf()
}

/// A host program on the runner's PATH, as an absolute path.
fn host_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed (needed by the shop's images)"))
}

fn with_path(mut env: Vec<(String, String)>, dir: &Path) -> Vec<(String, String)> {
    env[0].1 = format!("{}:{}", dir.display(), env[0].1);
    env
}

/// The agent image: the agent binary where the injector's `command` names it.
pub fn agent_image() -> anyhow::Result<Image> {
    let agent = target_dir().join("debug/tracelight-agent");
    ensure!(agent.is_file(), "{} is missing: `cargo build -p tracelight-agent`", agent.display());
    Ok(Image {
        env: base_env(),
        files: vec![(tracelight::inject::AGENT_BINARY.to_string(), agent)],
        ..Default::default()
    })
}

/// The inventory service's image (Rust, its own OpenTelemetry SDK; SQLite).
pub fn inventory_image() -> anyhow::Result<Image> {
    let inventory = target_dir().join("debug/examples/shop-inventory");
    ensure!(inventory.is_file(), "{} is missing: `cargo build --example shop-inventory`", inventory.display());
    Ok(Image { entrypoint: vec![inventory.display().to_string()], env: base_env(), ..Default::default() })
}

/// Every image the shop's injected pods use, for the policy as the API server stored it.
pub fn images(policy: &TracingPolicy) -> anyhow::Result<Images> {
    let cache = cache_dir()?;
    let apps = crate::support::repo_root().join("e2e/apps");
    let java = std::fs::canonicalize(host_program("java")?)?;
    let java_bin = java.parent().context("java has no directory")?.to_path_buf();
    let node = host_program("node")?;
    let redis = host_program("redis-server")?;
    // The images as the operator the suite runs resolves them (the chart's flags).
    let defaults = crate::support::objects::operator_inject_options().images;
    let mut images = Images::default();
    images.insert(defaults.agent(&policy.spec.agent).to_string(), agent_image()?);

    // Auto-instrumentation images: the content the upstream images carry, at the same paths.
    let instrumentation = &policy.spec.instrumentation;
    let content = |files: Vec<(&str, PathBuf)>| Image {
        env: base_env(),
        files: files.into_iter().map(|(inside, host)| (inside.to_string(), host)).collect(),
        ..Default::default()
    };
    images.insert(
        defaults.instrumentation(Language::Python, instrumentation).to_string(),
        content(vec![("/autoinstrumentation", cache.join("auto-python"))]),
    );
    images.insert(
        defaults.instrumentation(Language::Nodejs, instrumentation).to_string(),
        content(vec![("/autoinstrumentation", cache.join("auto-nodejs"))]),
    );
    images.insert(
        defaults.instrumentation(Language::Java, instrumentation).to_string(),
        content(vec![("/javaagent.jar", cache.join("auto-java/javaagent.jar"))]),
    );

    // The shop's own images.
    let venv = cache.join("python-app");
    let mut python_env = with_path(base_env(), &venv.join("bin"));
    python_env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    python_env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    let python = |entrypoint: Vec<String>, dir: &str| Image {
        entrypoint,
        env: python_env.clone(),
        files: vec![("/app".into(), apps.join(dir))],
        working_dir: Some("/app".into()),
        ..Default::default()
    };
    images.insert(
        "tracelight-e2e/shop-frontend:1",
        python(vec![venv.join("bin/python").display().to_string(), "/app/app.py".into()], "frontend"),
    );
    let celery = venv.join("bin/celery").display().to_string();
    let worker_cmd =
        ["-A", "tasks", "worker", "--pool=solo", "--loglevel=INFO", "--without-gossip", "--without-mingle"];
    images.insert(
        "tracelight-e2e/shop-worker:1",
        python(std::iter::once(celery).chain(worker_cmd.iter().map(|s| s.to_string())).collect(), "worker"),
    );
    images.insert("tracelight-e2e/shop-inventory:1", inventory_image()?);
    images.insert(
        "tracelight-e2e/shop-pricing:1",
        Image {
            entrypoint: vec![node.display().to_string(), "/app/server.js".into()],
            env: base_env(),
            files: vec![("/app".into(), apps.join("pricing"))],
            working_dir: Some("/app".into()),
            ..Default::default()
        },
    );
    let mut java_env = with_path(base_env(), &java_bin);
    java_env.push(("JAVA_HOME".into(), java_bin.parent().unwrap_or(&java_bin).display().to_string()));
    images.insert(
        "tracelight-e2e/shop-tax:1",
        Image {
            entrypoint: vec![java.display().to_string(), "/app/Tax.java".into()],
            env: java_env,
            files: vec![("/app".into(), apps.join("tax"))],
            working_dir: Some("/app".into()),
            ..Default::default()
        },
    );
    images.insert(
        "tracelight-e2e/shop-queue:1",
        Image { entrypoint: vec![redis.display().to_string()], env: base_env(), ..Default::default() },
    );
    Ok(images)
}
