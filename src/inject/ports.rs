//! The port plan: which ports the agent listens on in one pod.
//!
//! The agent shares the pod's network namespace with every other container, so a port another
//! container listens on is not available to it ("address already in use", and the API server
//! warns about duplicate port definitions). The plan collects every port the pod reveals:
//!
//! - `containerPort` (and `hostPort`) of every container and init container but the agent;
//! - ports a known image listens on by default (an OpenTelemetry Collector, a Jaeger
//!   all-in-one, Grafana Tempo...), since their manifests often declare only some of them;
//! - ports in `args`/`command` (`--port=9000`, `--grpc-port 4317`, `--listen=0.0.0.0:4317`) and
//!   in `env` (`*_PORT=4317`, listen addresses such as `0.0.0.0:4318` or `:13133`).
//!
//! Client endpoints (`http://collector:4317`) are not listen ports and are ignored, which also
//! keeps the plan stable on an injected pod: the endpoint the injector wrote into the
//! application's env never moves the agent. The agent keeps each of the policy's ports that is
//! free and moves the others to the first free candidate (`port + 10000`, then the 99 ports
//! after it, then the 99 ports after `port`). When none is free (never seen in practice: a pod
//! would have to reveal some 200 ports around each), the pod is not injected.
//!
//! # hostNetwork pods: a port slot per workload
//!
//! A `hostNetwork` pod shares the node's ports with every other `hostNetwork` pod there, and the
//! webhook sees only the pod it admits. So such a pod's agent takes a **slot** of three
//! consecutive ports (gRPC, HTTP, admin) in a reserved range ([`HostPortRange`], default
//! 20000-22999: 1,000 slots, below the NodePort range and Linux' ephemeral ports), the slot
//! chosen by a hash of the pod's namespace and workload ([`host_slot_key`]): every pod of a
//! workload gets the same slot, on every node and after every restart, so the manifest hash
//! stays stable. A slot with a port the pod itself reveals is passed over for the next one.
//!
//! The ports are declared as `hostPort`s: two pods that need the same slot never land on one
//! node, because the scheduler refuses the second there (it stays Pending, or goes elsewhere)
//! instead of its agent failing to bind. Two given workloads share a slot with probability
//! 1/1000; among n `hostNetwork` workloads on one node some two do with probability
//! 1 - (999/1000 x ... x (1000-n+1)/1000): 1% for 5, 4.4% for 10, 17% for 20. The rollout's
//! health gate rolls back a restarted workload whose pods cannot be scheduled.

use crate::api::AgentPorts;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Name prefix of the agent's port names. Port names must be unique in a pod, and plain names
/// such as `otlp-grpc` are what collector pods use for their own receivers.
pub const PORT_NAMES: [&str; 3] = ["tl-otlp-grpc", "tl-otlp-http", "tl-admin"];

/// Ports the images of well-known OTLP receivers listen on by default, matched on the image's
/// repository name (without registry or tag).
const KNOWN_IMAGES: &[(&str, &[u16])] = &[
    // OpenTelemetry Collector (core, contrib, k8s distributions and custom builds named otelcol*):
    // OTLP gRPC/HTTP, health_check, zpages, pprof, own metrics.
    ("opentelemetry-collector", &[4317, 4318, 13133, 55679, 1777, 8888]),
    ("otelcol", &[4317, 4318, 13133, 55679, 1777, 8888]),
    // Jaeger all-in-one (v1 and v2): OTLP, collector, query UI, agent, zipkin, admin.
    ("all-in-one", &[4317, 4318, 5778, 6831, 6832, 9411, 13133, 14250, 14268, 14269, 16686, 16687]),
    ("jaeger", &[4317, 4318, 5778, 9411, 13133, 14250, 14268, 14269, 16686, 16687]),
    // Grafana Tempo and Alloy / Agent: OTLP receivers and their HTTP servers.
    ("tempo", &[3200, 4317, 4318, 9095, 14250, 14268, 9411]),
    ("alloy", &[4317, 4318, 12345]),
    ("grafana/agent", &[4317, 4318, 12345]),
    // Data Prepper, Elastic APM server, Datadog agent with OTLP ingest.
    ("data-prepper", &[21890, 21891, 4900]),
    ("apm-server", &[8200, 4317, 4318]),
    ("datadog/agent", &[4317, 4318, 8126, 8125]),
];

/// Why no agent port could be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no free port for the agent's {which} listener near {preferred}")]
pub struct NoFreePort {
    pub which: &'static str,
    pub preferred: u16,
}

/// The agent's ports for a pod whose other containers reveal `taken`, starting from `preferred`.
/// A preferred port that is free is kept, so most pods get exactly the policy's ports.
pub fn plan_ports(preferred: AgentPorts, taken: &BTreeSet<u16>) -> Result<AgentPorts, NoFreePort> {
    let mut used = taken.clone();
    let mut pick = |which: &'static str, port: u16| -> Result<u16, NoFreePort> {
        let chosen = candidates(port).find(|p| !used.contains(p)).ok_or(NoFreePort { which, preferred: port })?;
        used.insert(chosen);
        Ok(chosen)
    };
    Ok(AgentPorts {
        otlp_grpc: pick("OTLP/gRPC", preferred.otlp_grpc)?,
        otlp_http: pick("OTLP/HTTP", preferred.otlp_http)?,
        admin: pick("admin", preferred.admin)?,
    })
}

/// The reserved node ports `hostNetwork` agents take their slots in (both ends included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPortRange {
    first: u16,
    last: u16,
}

/// Why a host port range was refused (flag `--agent-host-port-range`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostPortRangeError {
    #[error("expected FIRST-LAST, e.g. 20000-22999, got {0:?}")]
    Syntax(String),
    #[error("host port range {first}-{last} must lie within 1024-65535 and hold at least 3 ports (one slot)")]
    Bounds { first: u16, last: u16 },
}

impl HostPortRange {
    /// 20000-22999: 1,000 slots, above the usual service ports, below the NodePort range
    /// (30000-32767) and Linux' ephemeral ports (32768-60999), so no node service or outgoing
    /// connection takes them.
    pub const DEFAULT: HostPortRange = HostPortRange { first: 20000, last: 22999 };

    pub fn new(first: u16, last: u16) -> Result<HostPortRange, HostPortRangeError> {
        if first < 1024 || last < first || last - first < 2 {
            return Err(HostPortRangeError::Bounds { first, last });
        }
        Ok(HostPortRange { first, last })
    }

    /// Slots of three ports in the range (a remainder of one or two ports stays unused).
    pub fn slots(&self) -> u16 {
        (self.last - self.first + 1) / 3
    }

    /// The ports of slot `slot` (< [`Self::slots`]).
    pub fn slot_ports(&self, slot: u16) -> AgentPorts {
        let base = self.first + 3 * slot;
        AgentPorts { otlp_grpc: base, otlp_http: base + 1, admin: base + 2 }
    }
}

impl Default for HostPortRange {
    fn default() -> Self {
        HostPortRange::DEFAULT
    }
}

impl FromStr for HostPortRange {
    type Err = HostPortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || HostPortRangeError::Syntax(s.to_string());
        let (first, last) = s.trim().split_once('-').ok_or_else(syntax)?;
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| syntax());
        HostPortRange::new(port(first)?, port(last)?)
    }
}

impl fmt::Display for HostPortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// What a `hostNetwork` pod's slot is chosen by: its namespace and workload
/// (`shop/DaemonSet/node-agent`), or its own name for a pod no workload owns. Pods of one
/// workload share it, so they share a slot (and a manifest hash).
pub fn host_slot_key(namespace: &str, workload: Option<(&str, &str)>, pod_name: &str) -> String {
    match workload {
        Some((kind, name)) => format!("{namespace}/{kind}/{name}"),
        None => format!("{namespace}/Pod/{pod_name}"),
    }
}

/// The slot `key` hashes to: SHA-256, so it is the same on every platform and release.
pub fn host_slot(key: &str, range: HostPortRange) -> u16 {
    let digest = Sha256::digest(key.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"));
    (n % u64::from(range.slots())) as u16
}

/// The agent's ports for a `hostNetwork` pod: the slot `key` hashes to, or the next slot
/// (wrapping around) whose three ports the pod itself does not reveal in `taken`.
pub fn plan_host_ports(key: &str, range: HostPortRange, taken: &BTreeSet<u16>) -> Result<AgentPorts, NoFreePort> {
    let (start, slots) = (host_slot(key, range), range.slots());
    (0..slots)
        .map(|i| range.slot_ports((start + i) % slots))
        .find(|p| [p.otlp_grpc, p.otlp_http, p.admin].iter().all(|port| !taken.contains(port)))
        .ok_or(NoFreePort { which: "hostNetwork", preferred: range.slot_ports(start).otlp_grpc })
}

/// `port`, then `port + 10000 ..= port + 10099`, then `port + 1 ..= port + 99`, within 1024..=65535.
fn candidates(port: u16) -> impl Iterator<Item = u16> {
    let p = u32::from(port);
    std::iter::once(p)
        .chain(p + 10_000..p + 10_100)
        .chain(p + 1..p + 100)
        .filter(|c| (1024..=65535).contains(c))
        .map(|c| c as u16)
}

/// Every port the pod's containers other than `skip` (the agent) reveal.
pub fn taken_ports(spec: &PodSpec, skip: &str) -> BTreeSet<u16> {
    let mut taken = BTreeSet::new();
    let containers = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    for c in containers.filter(|c| c.name != skip) {
        container_ports(c, &mut taken);
    }
    taken
}

/// Port names already used in the pod by containers other than `skip`.
pub fn taken_port_names<'a>(spec: &'a PodSpec, skip: &str) -> BTreeSet<&'a str> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name != skip)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.as_deref())
        .collect()
}

fn container_ports(c: &Container, taken: &mut BTreeSet<u16>) {
    for p in c.ports.iter().flatten() {
        taken.extend(to_port(i64::from(p.container_port)));
        taken.extend(p.host_port.and_then(|h| to_port(i64::from(h))));
    }
    if let Some(image) = c.image.as_deref() {
        taken.extend(image_ports(image).iter().copied());
    }
    args_ports(c.command.iter().flatten().chain(c.args.iter().flatten()), taken);
    for var in c.env.iter().flatten() {
        let Some(value) = var.value.as_deref() else { continue };
        if var.name.ends_with("_PORT") {
            taken.extend(value.trim().parse::<i64>().ok().and_then(to_port));
        }
        taken.extend(listen_port(value));
    }
}

/// Default ports of a well-known image (matched on the repository path, not the registry or tag).
pub fn image_ports(image: &str) -> &'static [u16] {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag follows the last ':' only when no '/' comes after it (a registry may carry a port).
    let repo = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    };
    KNOWN_IMAGES.iter().find(|(name, _)| repo_matches(repo, name)).map_or(&[], |(_, ports)| ports)
}

/// `name` matches a path segment of `repo` (ignoring case), or the start of one followed by `-`
/// (`otelcol-contrib`, `otelcol-k8s`); a `name` with a `/` matches the last two segments so.
fn repo_matches(repo: &str, name: &str) -> bool {
    match name.split_once('/') {
        Some((owner, image)) => {
            let mut segments = repo.rsplit('/');
            let last = segments.next().unwrap_or_default();
            let previous = segments.next().unwrap_or_default();
            previous.eq_ignore_ascii_case(owner) && segment_matches(last, image)
        }
        None => repo.split('/').any(|segment| segment_matches(segment, name)),
    }
}

fn segment_matches(segment: &str, name: &str) -> bool {
    let Some(head) = segment.get(..name.len()) else { return false };
    head.eq_ignore_ascii_case(name) && matches!(segment.as_bytes().get(name.len()), None | Some(b'-'))
}

/// Ports in command-line arguments: `--port=N`, `--grpc-port N`, `-p N`, and listen addresses.
fn args_ports<'a>(args: impl Iterator<Item = &'a String>, taken: &mut BTreeSet<u16>) {
    let mut previous_names_port = false;
    for arg in args {
        if previous_names_port {
            taken.extend(arg.trim().parse::<i64>().ok().and_then(to_port));
        }
        previous_names_port = false;
        let flag = arg.trim_start_matches('-');
        if flag.len() == arg.len() {
            taken.extend(listen_port(arg));
            continue;
        }
        match flag.split_once('=') {
            Some((name, value)) => {
                if is_port_flag(name) {
                    taken.extend(value.trim().parse::<i64>().ok().and_then(to_port));
                }
                taken.extend(listen_port(value));
            }
            None => previous_names_port = is_port_flag(flag),
        }
    }
}

fn is_port_flag(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "p" || name == "port" || name.ends_with("-port") || name.ends_with("_port") || name.ends_with(".port")
}

/// The port of a listen address: `0.0.0.0:N`, `[::]:N`, `:N` (a whole value, or the last of a
/// comma-separated list). Values with a scheme (`http://host:N`) name a remote endpoint.
fn listen_port(value: &str) -> Option<u16> {
    let value = value.trim();
    if value.contains("://") {
        return None;
    }
    let value = value.rsplit(',').next().unwrap_or(value).trim();
    let (host, port) = value.rsplit_once(':')?;
    let listens_everywhere = matches!(host, "" | "0.0.0.0" | "[::]" | "::" | "*");
    if !listens_everywhere {
        return None;
    }
    port.parse::<i64>().ok().and_then(to_port)
}

fn to_port(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar};

    const DEFAULTS: AgentPorts = AgentPorts { otlp_grpc: 4317, otlp_http: 4318, admin: 13133 };

    fn ports(list: &[u16]) -> BTreeSet<u16> {
        list.iter().copied().collect()
    }

    #[test]
    fn free_preferred_ports_are_kept() {
        assert_eq!(plan_ports(DEFAULTS, &ports(&[8080, 9090])), Ok(DEFAULTS));
    }

    #[test]
    fn taken_ports_move_to_the_first_free_candidate() {
        let planned = plan_ports(DEFAULTS, &ports(&[4317, 4318, 13133, 14317])).unwrap();
        assert_eq!(planned, AgentPorts { otlp_grpc: 14318, otlp_http: 14319, admin: 23133 });
    }

    #[test]
    fn no_free_candidate_is_an_error() {
        let all: BTreeSet<u16> = (1024..=65535).collect();
        assert_eq!(plan_ports(DEFAULTS, &all), Err(NoFreePort { which: "OTLP/gRPC", preferred: 4317 }));
    }

    const RANGE: HostPortRange = HostPortRange::DEFAULT;
    const PINNED_SLOT: u16 = 480;

    #[test]
    fn host_network_slots_are_three_consecutive_ports_in_the_range() {
        assert_eq!(RANGE.slots(), 1000);
        assert_eq!(RANGE.slot_ports(0), AgentPorts { otlp_grpc: 20000, otlp_http: 20001, admin: 20002 });
        assert_eq!(RANGE.slot_ports(999), AgentPorts { otlp_grpc: 22997, otlp_http: 22998, admin: 22999 });
        for key in ["a/DaemonSet/x", "b/Deployment/y", "c/Pod/z", ""] {
            let slot = host_slot(key, RANGE);
            assert!(slot < RANGE.slots(), "{key}: slot {slot}");
            assert_eq!(plan_host_ports(key, RANGE, &BTreeSet::new()), Ok(RANGE.slot_ports(slot)));
        }
    }

    #[test]
    fn a_workload_keeps_its_slot_and_workloads_spread_over_the_slots() {
        let key = host_slot_key("monitoring", Some(("DaemonSet", "node-exporter")), "node-exporter-x7k2p");
        assert_eq!(key, "monitoring/DaemonSet/node-exporter");
        // Pinned: a new release must not move every hostNetwork agent (and restart its workload).
        assert_eq!(host_slot(&key, RANGE), PINNED_SLOT);
        assert_eq!(host_slot_key("ns", None, "debug"), "ns/Pod/debug");
        assert_ne!(host_slot("shop/DaemonSet/a", RANGE), host_slot("other/DaemonSet/a", RANGE), "namespaces count");
        // 1,000 workloads occupy about 1000 x (1 - 1/e) = 632 distinct slots when hashed evenly.
        let used: BTreeSet<u16> = (0..1000).map(|i| host_slot(&format!("ns/Deployment/w{i}"), RANGE)).collect();
        assert!((580..=680).contains(&used.len()), "{} distinct slots", used.len());
    }

    #[test]
    fn a_slot_with_a_port_the_pod_uses_is_passed_over() {
        let key = "shop/DaemonSet/agent";
        let home = host_slot(key, RANGE);
        let taken = ports(&[RANGE.slot_ports(home).otlp_http, 8080]);
        assert_eq!(plan_host_ports(key, RANGE, &taken), Ok(RANGE.slot_ports((home + 1) % RANGE.slots())));
        let last = HostPortRange::new(22994, 22999).unwrap();
        let key = (0..).map(|i| format!("k{i}")).find(|k| host_slot(k, last) == 1).unwrap();
        assert_eq!(plan_host_ports(&key, last, &ports(&[22998])), Ok(last.slot_ports(0)), "wraps around");
        let err = plan_host_ports(&key, last, &ports(&[22994, 22997])).unwrap_err();
        assert_eq!(err.to_string(), "no free port for the agent's hostNetwork listener near 22997");
    }

    #[test]
    fn host_port_ranges_are_parsed_and_checked() {
        assert_eq!("20000-22999".parse::<HostPortRange>(), Ok(RANGE));
        assert_eq!(" 21000 - 21005 ".parse::<HostPortRange>().map(|r| r.slots()), Ok(2));
        assert_eq!(RANGE.to_string(), "20000-22999");
        assert!(matches!("20000".parse::<HostPortRange>(), Err(HostPortRangeError::Syntax(_))));
        assert!(matches!("a-b".parse::<HostPortRange>(), Err(HostPortRangeError::Syntax(_))));
        assert!(matches!("80-90".parse::<HostPortRange>(), Err(HostPortRangeError::Bounds { .. })));
        assert!(matches!("20001-20000".parse::<HostPortRange>(), Err(HostPortRangeError::Bounds { .. })));
        assert!(matches!("20000-20001".parse::<HostPortRange>(), Err(HostPortRangeError::Bounds { .. })));
        assert!(matches!("65534-65536".parse::<HostPortRange>(), Err(HostPortRangeError::Syntax(_))));
    }

    #[test]
    fn known_images_are_matched_on_the_repository() {
        assert!(image_ports("otel/opentelemetry-collector-contrib:0.112.0").contains(&4317));
        assert!(image_ports("ghcr.io/open-telemetry/opentelemetry-collector-releases/otelcol-k8s:0.1").contains(&13133));
        assert!(image_ports("jaegertracing/all-in-one:1.60").contains(&16686));
        assert!(image_ports("jaegertracing/jaeger:2.1.0@sha256:abc").contains(&4318));
        assert!(image_ports("registry.local:5000/grafana/tempo:2.6").contains(&3200));
        assert!(image_ports("shop/checkout:1.0").is_empty());
        assert!(image_ports("docker.io/Grafana/Agent-Operator:0.40").contains(&12345));
        assert!(image_ports("otelcolumn/app:1").is_empty(), "a prefix counts only up to a dash");
        assert!(image_ports("registry.local:5000/shop/otel-demo-frontend").is_empty());
    }

    #[test]
    fn args_and_env_reveal_listen_ports() {
        let c = Container {
            name: "app".into(),
            args: Some(
                [
                    "--port=9000",
                    "--grpc-port",
                    "4317",
                    "--listen=0.0.0.0:13133",
                    "--upstream=http://x:4318",
                    "-p",
                    "7000",
                ]
                .map(String::from)
                .to_vec(),
            ),
            env: Some(vec![
                EnvVar { name: "ADMIN_PORT".into(), value: Some("8081".into()), value_from: None },
                EnvVar { name: "BIND".into(), value: Some(":4318".into()), value_from: None },
                EnvVar {
                    name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    value: Some("http://127.0.0.1:5555".into()),
                    value_from: None,
                },
                EnvVar { name: "DB".into(), value: Some("db:5432".into()), value_from: None },
            ]),
            ports: Some(vec![ContainerPort { container_port: 8080, host_port: Some(80), ..Default::default() }]),
            ..Default::default()
        };
        let spec = PodSpec { containers: vec![c], ..Default::default() };
        assert_eq!(taken_ports(&spec, "tracelight-agent"), ports(&[80, 4317, 4318, 7000, 8080, 8081, 9000, 13133]));
    }

    #[test]
    fn the_skipped_container_reveals_nothing() {
        let agent = Container {
            name: "tracelight-agent".into(),
            ports: Some(vec![ContainerPort { container_port: 4317, ..Default::default() }]),
            ..Default::default()
        };
        let spec = PodSpec { init_containers: Some(vec![agent]), ..Default::default() };
        assert!(taken_ports(&spec, "tracelight-agent").is_empty());
    }
}
