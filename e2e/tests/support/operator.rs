//! `tracelight controller` as a local process, with the chart's ServiceAccount identity.

use super::cluster::{checked, Cluster};
use anyhow::{bail, Context as _};
use kube::config::Kubeconfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The operator binary: `TRACELIGHT_BIN`, else the one cargo built for this test.
pub fn binary() -> PathBuf {
    std::env::var_os("TRACELIGHT_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tracelight")), PathBuf::from)
}

/// Writes a kubeconfig at `path` that authenticates as ServiceAccount `namespace/name` (a token
/// from the TokenRequest API) against the cluster's API server, trusting the cluster CA.
pub fn service_account_kubeconfig(cluster: &Cluster, namespace: &str, name: &str, path: &Path) -> anyhow::Result<()> {
    let token = cluster.kubectl(["create", "token", name, "-n", namespace, "--duration=2h"])?;
    let admin = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let server = admin.clusters.first().and_then(|c| c.cluster.as_ref()).context("admin kubeconfig has no cluster")?;
    let url = server.server.clone().context("admin kubeconfig has no server")?;
    let ca = server.certificate_authority_data.clone().context("admin kubeconfig has no CA data")?;
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: {namespace}-{name}
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: {namespace}-{name}
    namespace: {namespace}
current-context: e2e
",
        token = token.trim()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A running operator process. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Operator {
    child: Option<Child>,
    /// Its `POD_NAME`: the Events' reporting instance and the start of its Lease identity.
    pub name: String,
    pub admin_port: u16,
    pub log: PathBuf,
    pid: u32,
}

impl Operator {
    /// Starts `binary() controller ARGS` with `KUBECONFIG=kubeconfig` and `POD_NAMESPACE=namespace`,
    /// stdout and stderr to `log`. `args` must put the admin server on `admin_port`.
    pub fn start(
        kubeconfig: &Path,
        namespace: &str,
        args: &[String],
        admin_port: u16,
        log: PathBuf,
    ) -> anyhow::Result<Operator> {
        Self::start_with_env(kubeconfig, namespace, args, admin_port, log, &[])
    }

    /// [`Operator::start`] with extra environment variables (set last: they win).
    pub fn start_with_env(
        kubeconfig: &Path,
        namespace: &str,
        args: &[String],
        admin_port: u16,
        log: PathBuf,
        env: &[(String, String)],
    ) -> anyhow::Result<Operator> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let bin = binary();
        let name = format!("e2e-operator-{}", super::suffix());
        let mut cmd = Command::new(&bin);
        cmd.arg("controller")
            .args(args)
            // Only what the operator needs: nothing from the developer's environment leaks in.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", &name)
            .env("RUST_LOG", std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()))
            // Plain text: the log is read by people and scanned by the suite.
            .env("NO_COLOR", "1")
            // The allocator's options (e.g. MIMALLOC_SHOW_STATS=1), for memory measurements.
            .envs(std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("MIMALLOC_")))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        eprintln!(
            "[e2e]    operator pid {pid}: {} controller {}  (log: {})",
            bin.display(),
            args.join(" "),
            log.display()
        );
        Ok(Operator { child: Some(child), name, admin_port, log, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Still running (not exited since it was started).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Fails with the log attached if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!("the operator (pid {}) exited; {}", self.pid, self.log_excerpt());
        }
        Ok(())
    }

    /// Waits until `/readyz` on the admin port answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            let last = match http_get(self.admin_port, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the operator's /readyz on 127.0.0.1:{} did not answer 200 within {}s (last: {last}); {}",
                    self.admin_port,
                    timeout.as_secs(),
                    self.log_excerpt()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the process: SIGTERM (graceful: it releases its Lease), SIGKILL after 20s.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("operator already stopped") };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        let mut kill = Command::new("kill");
        kill.args(["-TERM", &self.pid.to_string()]);
        checked(kill)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        let status = child.wait()?;
        bail!("the operator (pid {}) ignored SIGTERM for 20s and was killed ({status})", self.pid)
    }

    /// Kills the process without warning (SIGKILL): no graceful shutdown, its Lease is not
    /// released, in-flight work is cut off.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("operator already stopped") };
        child.kill().with_context(|| format!("killing the operator (pid {})", self.pid))?;
        Ok(child.wait()?)
    }

    /// The value of an unlabelled metric on its `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (status, body) = http_get(self.admin_port, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics on 127.0.0.1:{} answered {status}", self.admin_port);
        let value = body
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        Ok(value)
    }

    /// The whole log (to look for patterns).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_excerpt(&self) -> String {
        log_tail(&self.log, 60)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop() {
                eprintln!("[e2e] stopping the operator: {e:#}");
            }
        }
    }
}

/// The last `lines` lines of the log at `path`, framed for a failure message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("operator log {} (last {lines} lines):\n{tail}\n---- end of operator log", path.display())
}

/// A plain HTTP GET on 127.0.0.1:`port`; the status code and body.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), io).await.context("timed out")??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
