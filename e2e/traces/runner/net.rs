//! Pod networking on the host: one network namespace per pod (each pod has its own loopback, so
//! every agent can listen on 127.0.0.1:4317/4318 as in a cluster), attached by a veth pair to a
//! bridge owned by the run. The host side of the bridge is the "node": the collector listens
//! there. Names resolve through `/etc/netns/<netns>/hosts`, which `ip netns exec` mounts over
//! `/etc/hosts` for the pod's processes. Needs root (`ip netns`).
//!
//! `hostNetwork` pods run in their node's network namespace ([`Network::node_net`]): one per
//! node name, made like a pod's and shared by every `hostNetwork` pod scheduled there, so two
//! of them really share one set of ports, as on a node.

use anyhow::{bail, Context as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The bridge of one run and the pod namespaces attached to it; removed on drop.
pub struct Network {
    /// Short random id in every name the run creates.
    pub id: String,
    bridge: String,
    subnet: [u8; 3],
    next_host: u8,
    namespaces: Vec<String>,
    /// The network namespace of each node that runs `hostNetwork` pods.
    nodes: std::collections::BTreeMap<String, PodNet>,
}

/// One pod's place on the network.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// Runs `ip ARGS`; an error with its stderr when it fails.
pub fn ip<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(args: I) -> anyhow::Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Network {
    /// Removes what an interrupted run left: its pods' processes (found by network namespace),
    /// namespaces, hosts files and bridges. Only call it while no other run can be going on (the
    /// e2e cluster lock is held).
    pub fn remove_leftovers() -> anyhow::Result<()> {
        let listed = Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
        let names = String::from_utf8_lossy(&listed.stdout).into_owned();
        for ns in names.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| is_ours(n, "tl-")) {
            let pids = Command::new("ip").args(["netns", "pids", ns]).output().context("ip netns pids")?;
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                eprintln!("[traces] killing pid {pid}, left running in network namespace {ns} by an earlier run");
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            eprintln!("[traces] deleting network namespace {ns} left by an earlier run");
            ip(["netns", "delete", ns])?;
            let _ = std::fs::remove_dir_all(hosts_dir(ns));
        }
        let links = Command::new("ip").args(["-o", "link", "show", "type", "bridge"]).output().context("ip link")?;
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else { continue };
            if is_ours(name, "tlbr-") {
                eprintln!("[traces] deleting bridge {name} left by an earlier run");
                ip(["link", "delete", name])?;
            }
        }
        Ok(())
    }

    /// Creates bridge `tlbr-<id>` with a /24 of 10.213.0.0/16 not yet routed on the host.
    pub fn create() -> anyhow::Result<Network> {
        let id = format!("{:04x}", fastrand::u16(..));
        let routes = Command::new("ip").args(["-4", "route"]).output().context("ip route")?;
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        let third = (0..50)
            .map(|_| fastrand::u8(1..=254))
            .find(|n| !routes.contains(&format!("10.213.{n}.")))
            .context("no free 10.213.x.0/24 subnet")?;
        let net = Network {
            bridge: format!("tlbr-{id}"),
            id,
            subnet: [10, 213, third],
            next_host: 2,
            namespaces: Vec::new(),
            nodes: Default::default(),
        };
        ip(["link", "add", &net.bridge, "type", "bridge"])?;
        ip(["addr", "add", &format!("{}/24", net.host_ip()), "dev", &net.bridge])?;
        ip(["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// The host's address on the bridge (the "node" IP).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1)
    }

    /// A new network namespace with `eth0` on the bridge and `lo` up.
    pub fn add_pod(&mut self) -> anyhow::Result<PodNet> {
        let n = self.next_host;
        anyhow::ensure!(n < 250, "too many pods on one bridge");
        self.next_host += 1;
        let netns = format!("tl-{}-{n}", self.id);
        let (host_end, pod_end) = (format!("tlh{}{n}", self.id), format!("tlp{}{n}", self.id));
        let ipaddr = Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], n);
        ip(["netns", "add", &netns])?;
        self.namespaces.push(netns.clone());
        ip(["link", "add", &host_end, "type", "veth", "peer", "name", &pod_end])?;
        ip(["link", "set", &host_end, "master", &self.bridge])?;
        ip(["link", "set", &host_end, "up"])?;
        ip(["link", "set", &pod_end, "netns", &netns])?;
        ip(["-n", &netns, "link", "set", &pod_end, "name", "eth0"])?;
        ip(["-n", &netns, "addr", "add", &format!("{ipaddr}/24"), "dev", "eth0"])?;
        ip(["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(["-n", &netns, "link", "set", "lo", "up"])?;
        ip(["-n", &netns, "route", "add", "default", "via", &self.host_ip().to_string()])?;
        Ok(PodNet { netns, ip: ipaddr })
    }

    /// The network of node `node`, shared by its `hostNetwork` pods (made on first use).
    pub fn node_net(&mut self, node: &str) -> anyhow::Result<PodNet> {
        if let Some(net) = self.nodes.get(node) {
            return Ok(net.clone());
        }
        let net = self.add_pod()?;
        self.nodes.insert(node.to_string(), net.clone());
        Ok(net)
    }

    /// Writes the pod's `/etc/hosts` (seen by processes started with `ip netns exec`).
    pub fn write_hosts(&self, pod: &PodNet, entries: &[(Ipv4Addr, Vec<String>)]) -> anyhow::Result<()> {
        let dir = hosts_dir(&pod.netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for (addr, names) in entries {
            text.push_str(&format!("{addr}\t{}\n", names.join(" ")));
        }
        std::fs::write(dir.join("hosts"), text).context("writing the pod's hosts file")
    }
}

/// A name this module makes: `prefix` + 4 hex digits (+ `-<n>` for namespaces).
fn is_ours(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else { return false };
    let (id, n) = rest.split_once('-').unwrap_or((rest, ""));
    id.len() == 4
        && id.chars().all(|c| c.is_ascii_hexdigit())
        && (prefix == "tlbr-" && n.is_empty()
            || prefix == "tl-" && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn hosts_dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..) {
            // Deleting the namespace deletes its end of the veth pair, and so the pair.
            if let Err(e) = ip(["netns", "delete", &ns]) {
                eprintln!("[traces] {e:#}");
            }
            let _ = std::fs::remove_dir_all(hosts_dir(&ns));
        }
        if let Err(e) = ip(["link", "delete", &self.bridge]) {
            eprintln!("[traces] {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_ours;

    #[test]
    fn only_names_of_this_module_are_leftovers() {
        assert!(is_ours("tl-0a9f-3", "tl-"));
        assert!(is_ours("tlbr-0a9f", "tlbr-"));
        assert!(!is_ours("tl-0a9f", "tl-"));
        assert!(!is_ours("tl-prod-3", "tl-"));
        assert!(!is_ours("tlbr-0a9f-1", "tlbr-"));
        assert!(!is_ours("docker0", "tlbr-"));
    }
}
