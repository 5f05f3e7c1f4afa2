//! Every injected golden pod (src/inject/testdata/cases/*.golden.json) is what the webhook would
//! admit: the real API server must accept it, with no warning (duplicate ports or port names,
//! deprecated fields...), in a server-side dry run. A golden that drifts from what Kubernetes
//! accepts fails here, not in a user's cluster.

use crate::support::cluster::Cluster;
use crate::support::{repo_root, suffix, wait, work_dir};
use anyhow::{bail, ensure, Context as _};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

pub async fn accepted_without_warnings(cluster: &Cluster) -> anyhow::Result<()> {
    let ns = format!("tl-golden-{}", suffix());
    // No opt-in label: the Tracelight webhook (if another test installed it) leaves these alone.
    cluster.kubectl(["create", "namespace", &ns])?;
    let result = dry_run_all(cluster, &ns).await;
    let cleanup = cluster.kubectl(["delete", "namespace", &ns, "--wait=false"]);
    result?;
    cleanup.map(|_| ())
}

async fn dry_run_all(cluster: &Cluster, ns: &str) -> anyhow::Result<()> {
    // The ServiceAccount admission plugin refuses pods until the namespace's default account exists.
    wait::until(&format!("the default ServiceAccount in {ns}"), Duration::from_secs(30), || async {
        cluster.kubectl(["get", "serviceaccount", "default", "-n", ns]).map(|_| ())
    })
    .await?;
    let cases = repo_root().join("src/inject/testdata/cases");
    let mut goldens: Vec<_> = std::fs::read_dir(&cases)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    goldens.retain(|p| p.to_string_lossy().ends_with(".golden.json"));
    goldens.sort();
    let mut checked = 0;
    for path in goldens {
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{}", path.display()))?;
        if golden["outcome"] != "injected" {
            continue;
        }
        let mut pod = golden["pod"].clone();
        pod["metadata"]["namespace"] = Value::String(ns.to_string());
        let name = path.file_name().unwrap_or_default().to_string_lossy().replace(".golden.json", "");
        let file = work_dir().join(format!("golden-{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&pod)?)?;
        let out = Command::new(cluster.kubectl_path())
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["create", "--dry-run=server", "-o", "name", "-f"])
            .arg(&file)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("golden {name}: the API server refused the injected pod: {stderr}");
        }
        ensure!(!stderr.contains("Warning"), "golden {name}: the API server warned: {stderr}");
        eprintln!("[e2e]    golden {name}: accepted ({})", String::from_utf8_lossy(&out.stdout).trim());
        checked += 1;
    }
    ensure!(checked >= 20, "only {checked} injected goldens found under {}", cases.display());
    Ok(())
}
