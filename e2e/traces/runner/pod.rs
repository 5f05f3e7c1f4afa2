//! Running one pod: volumes written to the pod's directory, init containers in order (a native
//! sidecar — `restartPolicy: Always` — is started and, like the kubelet does, the next container
//! waits for its startup probe), then the containers, then their startup and readiness probes.
//! Every container is a process in the pod's network namespace, with the env, command and paths
//! the pod spec says (see [`super::env`] and [`super::paths`]).

use super::env::{container_env, expand_all, field_value, process_env, PodInputs};
use super::images::Images;
use super::net::PodNet;
use super::paths::PathMap;
use super::probe;
use anyhow::{bail, ensure, Context as _};
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Probe, Volume};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a container may take to pass its startup and readiness probes (beyond what the
/// probe's own failureThreshold x periodSeconds allows, which only bounds the kubelet's restarts).
const PROBE_DEADLINE: Duration = Duration::from_secs(90);
/// How long a terminated container may take to exit before SIGKILL.
const GRACE: Duration = Duration::from_secs(15);

/// A container process.
struct Proc {
    container: String,
    child: Child,
    log: PathBuf,
    kind: Kind,
}

/// What a container is to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An init container that runs to completion.
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    App,
}

/// A pod whose containers run on the host.
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub net: PodNet,
    pub dir: PathBuf,
    procs: Vec<Proc>,
    pod: Pod,
    inputs: PodInputs,
}

/// Starts `pod` (as stored by the API server) in `net`, with files under `dir`.
pub async fn start(
    pod: &Pod,
    images: &Images,
    net: PodNet,
    inputs: &PodInputs,
    dir: &Path,
) -> anyhow::Result<RunningPod> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    ensure!(spec.node_name.is_some(), "pod {} is not scheduled (no spec.nodeName)", pod.name_any());
    let mut inputs = inputs.clone();
    inputs.pod_ip = Some(net.ip);
    if spec.host_network == Some(true) {
        // The pod's IP is its node's.
        inputs.host_ip = Some(net.ip);
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let volumes = write_volumes(pod, spec.volumes.as_deref().unwrap_or_default(), &inputs, &dir.join("volumes"))?;
    let mut running = RunningPod {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        net,
        dir: dir.to_path_buf(),
        procs: Vec::new(),
        pod: pod.clone(),
        inputs: inputs.clone(),
    };
    let result = async {
        for init in spec.init_containers.iter().flatten() {
            let sidecar = init.restart_policy.as_deref() == Some("Always");
            let kind = if sidecar { Kind::Sidecar } else { Kind::Init };
            let proc = spawn(pod, init, images, &inputs, &volumes, &running, kind)?;
            running.procs.push(proc);
            if sidecar {
                if let Some(p) = &init.startup_probe {
                    running.wait_probe(init, p, "startup").await?;
                }
            } else {
                running.wait_completed(init).await?;
            }
        }
        for c in &spec.containers {
            let proc = spawn(pod, c, images, &inputs, &volumes, &running, Kind::App)?;
            running.procs.push(proc);
        }
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            for (probe, kind) in [(&c.startup_probe, "startup"), (&c.readiness_probe, "readiness")] {
                if let (Some(p), true) = (probe, running.is_running(&c.name)) {
                    running.wait_probe(c, p, kind).await?;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(running),
        Err(e) => {
            let logs = running.log_tails(40);
            running.stop();
            Err(e.context(format!("starting pod {}/{}\n{logs}", running.namespace, running.name)))
        }
    }
}

/// Writes each volume's content: emptyDir (a directory), configMap and secret (one file per key
/// or per item), projected (service-account token, configMap, secret and downward-API sources,
/// as the ServiceAccount admission plugin's `kube-api-access-*` volume has them). Other volume
/// types are an error.
fn write_volumes(
    pod: &Pod,
    volumes: &[Volume],
    inputs: &PodInputs,
    root: &Path,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for v in volumes {
        let dir = root.join(&v.name);
        std::fs::create_dir_all(&dir)?;
        let what = |kind: &str, name: &str| format!("volume {}: {kind} {name}", v.name);
        if v.empty_dir.is_some() {
        } else if let Some(cm) = &v.config_map {
            let data = inputs.configmaps.get(&cm.name);
            write_items(&dir, data, cm.items.as_deref(), cm.optional == Some(true), &what("ConfigMap", &cm.name))?;
        } else if let Some(sv) = &v.secret {
            let name = sv.secret_name.clone().unwrap_or_default();
            let data = inputs.secrets.get(&name);
            write_items(&dir, data, sv.items.as_deref(), sv.optional == Some(true), &what("Secret", &name))?;
        } else if let Some(projected) = &v.projected {
            for source in projected.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let key = format!("{}/{}", v.name, t.path);
                    let token = inputs.tokens.get(&key).with_context(|| format!("no token requested for {key}"))?;
                    write_file(&dir, &t.path, token)?;
                } else if let Some(cm) = &source.config_map {
                    let data = inputs.configmaps.get(&cm.name);
                    write_items(
                        &dir,
                        data,
                        cm.items.as_deref(),
                        cm.optional == Some(true),
                        &what("ConfigMap", &cm.name),
                    )?;
                } else if let Some(sv) = &source.secret {
                    let data = inputs.secrets.get(&sv.name);
                    write_items(&dir, data, sv.items.as_deref(), sv.optional == Some(true), &what("Secret", &sv.name))?;
                } else if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        let field = item.field_ref.as_ref().with_context(|| {
                            format!(
                                "volume {}: downward-API item {} is not a fieldRef (not emulated)",
                                v.name, item.path
                            )
                        })?;
                        write_file(&dir, &item.path, field_value(pod, field, inputs)?.as_bytes())?;
                    }
                } else {
                    bail!("volume {}: projected source not emulated: {source:?}", v.name);
                }
            }
        } else {
            bail!("volume {}: only emptyDir, configMap, secret and projected volumes are emulated: {v:?}", v.name);
        }
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// The files of a ConfigMap or Secret: every key, or the listed items.
fn write_items(
    dir: &Path,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    what: &str,
) -> anyhow::Result<()> {
    let Some(data) = data else {
        ensure!(optional, "{what} does not exist (the kubelet would not start the pod)");
        return Ok(());
    };
    let files: Vec<(String, String)> = match items {
        Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in files {
        let content = data.get(&key).with_context(|| format!("{what} has no key {key}"))?;
        write_file(dir, &path, content)?;
    }
    Ok(())
}

/// Writes `dir/path`, replaced atomically as the kubelet does, so a reader never sees half a file.
fn write_file(dir: &Path, path: &str, content: &[u8]) -> anyhow::Result<()> {
    let file = dir.join(path);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = file.with_extension("runner-tmp");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("replacing {}", file.display()))
}

/// The absolute path of `ip` (the container's PATH may not have it).
fn ip_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("ip"))
        .find(|p| p.is_file())
        .context("the `ip` command (iproute2) is not installed")
}

fn spawn(
    pod: &Pod,
    c: &Container,
    images: &Images,
    inputs: &PodInputs,
    volumes: &BTreeMap<String, PathBuf>,
    running: &RunningPod,
    kind: Kind,
) -> anyhow::Result<Proc> {
    let image_ref = c.image.as_deref().with_context(|| format!("container {} has no image", c.name))?;
    let image = images.get(image_ref)?;
    let mut paths = PathMap::default();
    for (inside, host) in &image.files {
        paths.add(inside, host);
    }
    for m in c.volume_mounts.iter().flatten() {
        let mut host =
            volumes.get(&m.name).with_context(|| format!("container {}: no volume {}", c.name, m.name))?.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = host.join(sub);
        }
        paths.add(&m.mount_path, &host);
    }

    let env = container_env(pod, c, inputs)?;
    // Docker's rule: command replaces ENTRYPOINT (and drops CMD); args replace CMD.
    let (entry, args) = match (&c.command, &c.args) {
        (Some(cmd), args) => (cmd.clone(), args.clone().unwrap_or_default()),
        (None, Some(args)) => (image.entrypoint.clone(), args.clone()),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let entry = expand_all(&entry, &env);
    let args = expand_all(&args, &env);
    let argv: Vec<String> = entry.iter().chain(args.iter()).map(|w| paths.rewrite(w)).collect();
    ensure!(!argv.is_empty(), "container {}: no command (none in the spec, none in image {image_ref})", c.name);
    let mut env: Vec<(String, String)> = process_env(&image.env, &env);
    for (_, v) in env.iter_mut() {
        *v = paths.rewrite(v);
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), running.name.clone()));
    }

    let workdir = match c.working_dir.as_deref().or(image.working_dir.as_deref()) {
        Some(dir) => paths.host_path(dir).unwrap_or_else(|| PathBuf::from(dir)),
        None => running.dir.join("root").join(&c.name),
    };
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let log = running.dir.join("logs").join(format!("{}.log", c.name));
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(ip_binary()?);
    cmd.args(["netns", "exec", &running.net.netns])
        .args(&argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group, so that stopping the container stops what it started.
        .process_group(0);
    std::fs::write(running.dir.join("logs").join(format!("{}.cmd", c.name)), format!("{argv:?}\n{env:#?}\n"))?;
    let child = cmd.spawn().with_context(|| format!("starting container {} ({argv:?})", c.name))?;
    eprintln!("[traces]    {}/{} {}: pid {} {argv:?}", running.namespace, running.name, c.name, child.id());
    Ok(Proc { container: c.name.clone(), child, log, kind })
}

impl RunningPod {
    /// Rewrites the configMap and secret volumes from `inputs` (the namespace's objects as they
    /// are now), as the kubelet's periodic volume sync does: running processes see the change.
    pub fn sync_volumes(&mut self, inputs: &PodInputs) -> anyhow::Result<()> {
        let inputs = PodInputs {
            pod_ip: self.inputs.pod_ip,
            host_ip: self.inputs.host_ip,
            tokens: self.inputs.tokens.clone(),
            ..inputs.clone()
        };
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        write_volumes(&self.pod, &volumes, &inputs, &self.dir.join("volumes"))?;
        self.inputs = inputs;
        Ok(())
    }

    fn proc_mut(&mut self, container: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.container == container)
    }

    /// The container's process has not exited.
    pub fn is_running(&mut self, container: &str) -> bool {
        self.proc_mut(container).is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Containers that should be running but exited (or init containers that failed), with
    /// their exit status.
    pub fn exited(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) if p.kind != Kind::Init || !status.success() => {
                    Some(format!("{}: {status}", p.container))
                }
                _ => None,
            })
            .collect()
    }

    async fn wait_completed(&mut self, c: &Container) -> anyhow::Result<()> {
        let deadline = Instant::now() + PROBE_DEADLINE;
        loop {
            let proc = self.proc_mut(&c.name).context("no such process")?;
            if let Some(status) = proc.child.try_wait()? {
                ensure!(status.success(), "init container {} failed: {status}", c.name);
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "init container {} did not finish in {PROBE_DEADLINE:?}", c.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_probe(&mut self, c: &Container, p: &Probe, kind: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PROBE_DEADLINE;
        let period = Duration::from_millis(200);
        loop {
            if let Some(status) = self.proc_mut(&c.name).and_then(|p| p.child.try_wait().ok().flatten()) {
                bail!("container {} exited ({status}) before its {kind} probe passed", c.name);
            }
            let last = match probe::check(c, p, self.net.ip).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            ensure!(
                Instant::now() < deadline,
                "container {}: {kind} probe failing for {PROBE_DEADLINE:?}: {last:#}",
                c.name
            );
            tokio::time::sleep(period).await;
        }
    }

    /// `GET path` on the pod's loopback (`curl` in the pod's network namespace), as
    /// `kubectl port-forward` or a container of the pod reach it: status and body.
    pub async fn loopback_get(&self, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let mut cmd = Command::new(ip_binary()?);
        cmd.args(["netns", "exec", &self.net.netns, "curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", &url])
            .stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("running curl in the pod's network namespace")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "GET {url} in {}: {}", self.net.netns, String::from_utf8_lossy(&out.stderr));
        let (body, status) = text.rsplit_once('\n').context("no status line from curl")?;
        Ok((status.trim().parse().context("curl's status")?, body.to_string()))
    }

    /// The last `lines` lines of each container's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "---- {}/{} container {} ({}):\n{}\n",
                self.namespace,
                self.name,
                p.container,
                p.log.display(),
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        out
    }

    /// Stops the containers like the kubelet: the application containers first, then the
    /// sidecars in reverse order; SIGTERM, SIGKILL after the grace period.
    pub fn stop(&mut self) {
        let mut order: Vec<usize> = (0..self.procs.len()).filter(|i| self.procs[*i].kind != Kind::Sidecar).collect();
        order.extend((0..self.procs.len()).filter(|i| self.procs[*i].kind == Kind::Sidecar).rev());
        for i in order {
            let p = &mut self.procs[i];
            if !matches!(p.child.try_wait(), Ok(None)) {
                continue;
            }
            let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", p.child.id())]).status();
            let deadline = Instant::now() + GRACE;
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(p.child.try_wait(), Ok(None)) {
                eprintln!(
                    "[traces]    {}/{} {}: no exit {GRACE:?} after SIGTERM, killing",
                    self.namespace, self.name, p.container
                );
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", p.child.id())]).status();
                let _ = p.child.wait();
            }
        }
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stop();
    }
}
