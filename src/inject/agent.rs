//! The agent sidecar container and the volumes it needs.

use super::env::{downward_env, field_ref, literal, POD_NAMESPACE_VAR, WORKLOAD_KIND_VAR, WORKLOAD_NAME_VAR};
use super::workload::WorkloadRef;
use super::AdminExposure;
use crate::api::{AgentPorts, AgentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tracelight_contract::config::{ConfigFile, AGENT_CONFIGMAP, AGENT_CONFIG_DIR, AGENT_SECRET, AGENT_SECRET_DIR};
use tracelight_contract::report::{REPORT_AUDIENCE, REPORT_CA_KEY, REPORT_TOKEN_DIR, REPORT_TOKEN_FILE};

pub const AGENT_CONTAINER: &str = "tracelight-agent";
pub const CONFIG_VOLUME: &str = "tracelight-agent-config";
pub const SECRET_VOLUME: &str = "tracelight-agent-secret";
pub const TMP_VOLUME: &str = "tracelight-agent-tmp";
pub const REPORT_TOKEN_VOLUME: &str = "tracelight-agent-report-token";
/// Lifetime of the report token; the kubelet renews it at 80% (600 s is the API's minimum).
const REPORT_TOKEN_SECONDS: i64 = 600;
/// The agent binary in the image (the Dockerfile puts it there, beside the operator's).
pub const AGENT_BINARY: &str = "/usr/local/bin/tracelight-agent";
/// UID the agent runs as (the distroless "nonroot" user).
const AGENT_UID: i64 = 65532;

/// Everything that shapes the agent container of one pod.
pub struct AgentParams<'a> {
    pub spec: &'a AgentSpec,
    /// The agent image, resolved (the policy's, else the operator's).
    pub image: &'a str,
    pub ports: AgentPorts,
    /// The pod shares the node's network: the ports are declared as host ports, so the
    /// scheduler never puts two pods needing one of them on the same node.
    pub host_network: bool,
    pub admin_exposure: AdminExposure,
    /// Names of the gRPC, HTTP and admin ports (`None`: left unnamed, the name is taken).
    pub port_names: [Option<&'static str>; 3],
    pub namespace: &'a str,
    pub workload: Option<&'a WorkloadRef>,
    pub native_sidecar: bool,
    pub with_secret: bool,
    /// The operator's report endpoint (`None`: the agent does not report).
    pub report_url: Option<&'a str>,
    /// `--report-interval-secs` (`None`: the agent's default).
    pub report_interval_secs: Option<u64>,
    /// The pod's `terminationGracePeriodSeconds` (`None`: Kubernetes' default, 30).
    pub termination_grace_seconds: Option<i64>,
    /// Containers that set `OTEL_PROPAGATORS` themselves (`container=value;...`), reported by the
    /// agent with its probe traces.
    pub propagator_overrides: Option<String>,
}

/// The pod IP (`status.podIP`), where the agent answers the kubelet's probes (`--health-host`)
/// and which it reports with its probe traces (callers of server spans are named by it).
pub const POD_IP_VAR: &str = tracelight_contract::probe::POD_IP_ENV;

/// Longest shutdown the agent is given (drain, then flush), in seconds.
const AGENT_SHUTDOWN_SECS: i64 = 10;
/// What the agent leaves of the pod's grace period: the kubelet's SIGKILL must come after the
/// agent has exited, not during its flush.
const GRACE_MARGIN_SECS: i64 = 2;

/// The agent's `--shutdown-timeout-secs`: 10 s, and 2 s less than the pod's grace period when
/// that is shorter (at least 1 s).
pub fn agent_shutdown_secs(termination_grace_seconds: Option<i64>) -> i64 {
    let grace = termination_grace_seconds.unwrap_or(30);
    (grace - GRACE_MARGIN_SECS).clamp(1, AGENT_SHUTDOWN_SECS)
}

/// The agent container: a native sidecar (`restartPolicy: Always` in `initContainers`) or, for
/// clusters without native sidecars, a plain container.
pub fn agent_container(p: &AgentParams) -> Container {
    let mut env = downward_env();
    env.push(literal(POD_NAMESPACE_VAR, p.namespace));
    env.push(field_ref(POD_IP_VAR, "status.podIP"));
    if p.host_network {
        // The node's address: it names no single pod, so the agent does not report it.
        env.push(literal(tracelight_contract::probe::HOST_NETWORK_ENV, "true"));
    }
    // Plain values, not fieldRefs: the owner is known at admission and ownerReferences are not
    // available through the downward API.
    if let Some(w) = p.workload {
        env.push(literal(WORKLOAD_KIND_VAR, w.kind.as_str()));
        env.push(literal(WORKLOAD_NAME_VAR, w.name.as_str()));
    }
    if let Some(overrides) = &p.propagator_overrides {
        env.push(literal(tracelight_contract::probe::PROPAGATOR_OVERRIDES_ENV, overrides.as_str()));
    }
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: AGENT_CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount { name: TMP_VOLUME.into(), mount_path: "/tmp".into(), ..Default::default() },
    ];
    if p.with_secret {
        mounts.push(VolumeMount {
            name: SECRET_VOLUME.into(),
            mount_path: AGENT_SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if p.report_url.is_some() {
        mounts.push(VolumeMount {
            name: REPORT_TOKEN_VOLUME.into(),
            mount_path: REPORT_TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // The kubelet probes the pod IP: the agent answers /healthz there on the admin port, the
    // rest of its admin server stays on the pod's loopback (`--health-host`, see agent_args).
    let health = Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(i32::from(p.ports.admin)),
            ..Default::default()
        }),
        period_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    };
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(p.image.to_string()),
        image_pull_policy: Some(p.spec.image_pull_policy.as_str().into()),
        command: Some(vec![AGENT_BINARY.into()]),
        args: Some(agent_args(p)),
        env: Some(env),
        ports: Some(vec![
            port(p.port_names[0], p.ports.otlp_grpc, p.host_network),
            port(p.port_names[1], p.ports.otlp_http, p.host_network),
            port(p.port_names[2], p.ports.admin, p.host_network),
        ]),
        resources: Some(p.spec.resources.clone()),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        // A startup probe on a native sidecar holds back the application containers until the
        // agent listens, so the first spans are not refused.
        startup_probe: p.native_sidecar.then(|| Probe {
            failure_threshold: Some(30),
            period_seconds: Some(1),
            ..health.clone()
        }),
        readiness_probe: Some(health.clone()),
        liveness_probe: Some(Probe { period_seconds: Some(10), ..health }),
        restart_policy: p.native_sidecar.then(|| "Always".to_string()),
        ..Default::default()
    }
}

fn agent_args(p: &AgentParams) -> Vec<String> {
    let mut args = vec![
        format!("--config={}", ConfigFile::CURRENT.path()),
        format!("--otlp-grpc-port={}", p.ports.otlp_grpc),
        format!("--otlp-http-port={}", p.ports.otlp_http),
        format!("--admin-port={}", p.ports.admin),
        format!("--shutdown-timeout-secs={}", agent_shutdown_secs(p.termination_grace_seconds)),
    ];
    // The admin server listens on the pod's loopback (the agent's default); health, and metrics
    // when asked, also on the pod IP; `all` puts the whole admin server on every address.
    match p.admin_exposure {
        AdminExposure::Health => args.push(format!("--health-host=$({POD_IP_VAR})")),
        AdminExposure::Metrics => {
            args.extend([format!("--health-host=$({POD_IP_VAR})"), "--health-metrics=true".into()])
        }
        AdminExposure::All => args.push("--admin-host=0.0.0.0".into()),
    }
    if let Some(url) = p.report_url {
        args.extend([
            format!("--report-url={url}"),
            format!("--report-token-file={REPORT_TOKEN_DIR}/{REPORT_TOKEN_FILE}"),
            // The operator writes its CA into the agent ConfigMap, next to the config.
            format!("--report-ca-file={AGENT_CONFIG_DIR}/{REPORT_CA_KEY}"),
        ]);
        if let Some(secs) = p.report_interval_secs {
            args.push(format!("--report-interval-secs={secs}"));
        }
    }
    args
}

fn port(name: Option<&str>, number: u16, host_network: bool) -> ContainerPort {
    ContainerPort {
        name: name.map(String::from),
        container_port: i32::from(number),
        // With hostNetwork a host port must equal the container port (the API server would
        // default it so); written out, the pod spec shows what the scheduler checks.
        host_port: host_network.then_some(i32::from(number)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// A securityContext that passes the `restricted` Pod Security Standard.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(AGENT_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }
}

/// The agent's volumes: its config (the namespace's ConfigMap), scratch space, the API key
/// Secret when the policy has one, and the report token when the agent reports.
pub fn agent_volumes(with_secret: bool, with_report: bool) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource { name: AGENT_CONFIGMAP.into(), ..Default::default() }),
            ..Default::default()
        },
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("16Mi".into())), ..Default::default() }),
            ..Default::default()
        },
    ];
    if with_secret {
        volumes.push(Volume {
            name: SECRET_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(AGENT_SECRET.into()),
                // Only the agent container mounts it; the agent runs as a non-root user, so the files must be
                // world-readable inside that one mount.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if with_report {
        volumes.push(report_token_volume());
    }
    volumes
}

/// A projected ServiceAccount token for the report audience only: the API server and every other
/// service refuse it, and it is bound to the pod, so the operator knows who reports.
fn report_token_volume() -> Volume {
    Volume {
        name: REPORT_TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(REPORT_AUDIENCE.into()),
                    expiration_seconds: Some(REPORT_TOKEN_SECONDS),
                    path: REPORT_TOKEN_FILE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            // Readable by the agent's non-root user; only the agent container mounts it.
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod shutdown_tests {
    use super::*;

    #[test]
    fn the_report_interval_is_an_agent_flag_only_with_a_report_channel() {
        let spec = AgentSpec::default();
        let params = |report_url, report_interval_secs| AgentParams {
            spec: &spec,
            image: "agent:1",
            ports: AgentPorts { otlp_grpc: 4317, otlp_http: 4318, admin: 13133 },
            host_network: false,
            admin_exposure: AdminExposure::default(),
            port_names: [None; 3],
            namespace: "ns",
            workload: None,
            native_sidecar: true,
            with_secret: false,
            report_url,
            report_interval_secs,
            termination_grace_seconds: None,
            propagator_overrides: None,
        };
        let has = |p: &AgentParams| agent_args(p).iter().any(|a| a == "--report-interval-secs=10");
        assert!(has(&params(Some("https://op/v1/agent-reports"), Some(10))));
        assert!(!has(&params(None, Some(10))), "no reports, no interval");
        let default = agent_args(&params(Some("https://op/v1/agent-reports"), None));
        assert!(!default.iter().any(|a| a.starts_with("--report-interval-secs")), "{default:?}");
    }

    #[test]
    fn the_agent_exits_before_the_pods_grace_period_ends() {
        assert_eq!(agent_shutdown_secs(None), 10, "Kubernetes' default grace of 30 s leaves the full 10 s");
        assert_eq!(agent_shutdown_secs(Some(60)), 10);
        assert_eq!(agent_shutdown_secs(Some(8)), 6);
        assert_eq!(agent_shutdown_secs(Some(2)), 1);
        assert_eq!(agent_shutdown_secs(Some(0)), 1);
    }
}
