//! The demo shop (`e2e/apps/`) as Kubernetes objects, and the images the runner maps them to.
//!
//! ```text
//! client -> frontend (Python/Flask) --HTTP--> inventory (Rust) --> SQLite
//! ```

use crate::runner::images::{base_env, Image, Images};
use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tracelight::api::TracingPolicy;
use tracelight::inject::Language;

pub const FRONTEND_IMAGE: &str = "tracelight-e2e/shop-frontend:1";
pub const INVENTORY_IMAGE: &str = "tracelight-e2e/shop-inventory:1";

/// A shop service: its Deployment and Service.
pub struct Workload {
    pub name: &'static str,
    pub container: &'static str,
    pub port: u16,
    pub deployment: Value,
    pub service: Value,
}

fn deployment(name: &str, annotations: Value, container: Value, volumes: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    // The runner does not emulate projected service-account volumes.
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                    "volumes": volumes
                }
            }
        }
    })
}

fn service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": port}]}
    })
}

/// The shop's workloads. Only the frontend asks for auto-instrumentation (the annotation); the
/// Rust service uses the SDK and only needs the injected env.
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "frontend",
            container: "web",
            port: 8000,
            deployment: deployment(
                "frontend",
                json!({"tracelight.io/language": "python"}),
                json!({
                    "name": "web", "image": FRONTEND_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "env": [
                        {"name": "PORT", "value": "8000"},
                        {"name": "INVENTORY_URL", "value": "http://inventory:8080"}
                    ],
                    "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}
                }),
                json!([]),
            ),
            service: service("frontend", 8000),
        },
        Workload {
            name: "inventory",
            container: "api",
            port: 8080,
            deployment: deployment(
                "inventory",
                json!({}),
                json!({
                    "name": "api", "image": INVENTORY_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "PORT", "value": "8080"},
                        {"name": "INVENTORY_DB", "value": "/data/inventory.db"}
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}
                }),
                json!([{"name": "data", "emptyDir": {}}]),
            ),
            service: service("inventory", 8080),
        },
    ]
}

/// The prepared content (`e2e/apps/prepare.sh`): `TRACELIGHT_SHOP_CACHE` or its default.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("TRACELIGHT_SHOP_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/tracelight/shop"),
    };
    for part in ["python-app.stamp", "auto-python.stamp"] {
        ensure!(
            dir.join(part).is_file(),
            "{} is missing: run e2e/apps/prepare.sh (`make e2e-traces` does)",
            dir.join(part).display()
        );
    }
    Ok(dir)
}

/// The cargo target directory (CARGO_TARGET_TMPDIR is `<target>/tmp`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("CARGO_TARGET_TMPDIR has a parent").to_path_buf()
}

/// Every image the shop's injected pods use, for the policy as the API server stored it.
pub fn images(policy: &TracingPolicy, tracelight_bin: &Path) -> anyhow::Result<Images> {
    let cache = cache_dir()?;
    let apps = crate::support::repo_root().join("e2e/apps");
    let inventory = target_dir().join("debug/examples/shop-inventory");
    ensure!(inventory.is_file(), "{} is missing: `cargo build --example shop-inventory`", inventory.display());
    let mut images = Images::default();
    images.insert(
        policy.spec.agent.image.clone(),
        Image { entrypoint: vec![tracelight_bin.display().to_string()], env: base_env(), ..Default::default() },
    );
    // The Python auto-instrumentation image: the OpenTelemetry distro at /autoinstrumentation.
    images.insert(
        Language::Python.image(&policy.spec.instrumentation),
        Image {
            env: base_env(),
            files: vec![("/autoinstrumentation".into(), cache.join("auto-python"))],
            ..Default::default()
        },
    );
    let venv = cache.join("python-app");
    let mut python_env = base_env();
    python_env[0].1 = format!("{}:{}", venv.join("bin").display(), python_env[0].1);
    python_env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    python_env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    images.insert(
        FRONTEND_IMAGE,
        Image {
            entrypoint: vec![venv.join("bin/python").display().to_string(), "/app/app.py".into()],
            env: python_env,
            files: vec![("/app".into(), apps.join("frontend"))],
            working_dir: Some("/app".into()),
            ..Default::default()
        },
    );
    images.insert(
        INVENTORY_IMAGE,
        Image { entrypoint: vec![inventory.display().to_string()], env: base_env(), ..Default::default() },
    );
    Ok(images)
}
