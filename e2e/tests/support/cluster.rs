//! The cluster from `e2e/cluster/` and the tools built with it.

use anyhow::{bail, Context as _};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A running cluster: its admin kubeconfig, the directory of kubectl/helm, an admin client.
#[derive(Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
    pub client: Client,
}

impl Cluster {
    /// Starts the cluster with `e2e/cluster/up.sh` (idempotent: a no-op when it is already up)
    /// and connects to it as admin.
    pub async fn up() -> anyhow::Result<Cluster> {
        // Once per test process: tests running in parallel must not start two clusters. Only the
        // paths are shared; a client belongs to the runtime (test) that created it.
        static PATHS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
        let paths = PATHS.get_or_init(|| {
            let scripts = super::repo_root().join("e2e/cluster");
            let start = || -> anyhow::Result<(PathBuf, PathBuf)> {
                let bin_dir = PathBuf::from(last_line(&script(&scripts.join("build.sh"))?));
                let kubeconfig = PathBuf::from(last_line(&script(&scripts.join("up.sh"))?));
                Ok((kubeconfig, bin_dir))
            };
            start().map_err(|e| format!("{e:#}"))
        });
        let (kubeconfig, bin_dir) = paths.clone().map_err(|e| anyhow::anyhow!("starting the cluster: {e}"))?;
        let client = client_from(&kubeconfig).await?;
        Ok(Cluster { kubeconfig, bin_dir, client })
    }

    pub fn kubectl_path(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    pub fn helm_path(&self) -> PathBuf {
        self.bin_dir.join("helm")
    }

    /// `kubectl ARGS` as admin; its stdout, or an error with its stderr.
    pub fn kubectl<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.kubectl_path());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        checked(cmd)
    }

    /// `helm ARGS` as admin, with the raw output (callers that expect failure look at it).
    pub fn helm_output<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.helm_path());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        // Keep helm's own state (repository cache, plugins) out of the user's home.
        let home = super::work_dir().join("helm-home");
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        let shown = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).output().with_context(|| format!("running {shown}"))
    }

    /// `helm ARGS`; its stdout, or an error with its stderr.
    pub fn helm<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.helm_output(args)?;
        if !out.status.success() {
            bail!("helm failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A client for `kubeconfig` (admin, or the operator's ServiceAccount).
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// Runs a script whose progress goes to stderr (passed through) and whose result is on stdout.
fn script(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!("{} failed ({}); see its output above", path.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn last_line(s: &str) -> String {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string()
}

/// Runs `cmd`; its stdout, or an error naming the command with its stderr.
pub fn checked(mut cmd: Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
