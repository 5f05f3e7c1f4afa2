//! Pod injection (pure): `(pod, namespace, policy, options) -> Outcome`, and the JSON patch
//! that turns the admitted pod into the injected one. No I/O here: the webhook, the offline
//! `tracelight inject` command and the controller all call these functions.
//!
//! One way through: [`namespace_gate`] (needs no pod), then a plan (containers, languages, port
//! plan, export owners, manifest hash), then the edits it makes (`edits`), written as the patch
//! and, for `tracelight inject`, applied to a copy of the pod.
//!
//! What an injection never does (each has a test):
//!
//! - give the agent a port another container of the pod listens on ([`ports`]): the agent
//!   moves, and the injected endpoint follows it; with no free port the pod is skipped
//!   ([`SkipReason::PortConflict`]); `hostNetwork` pods get a slot of host ports per workload,
//!   so that two of them on one node never share a port;
//! - expose the agent's report or metrics to the network unless asked ([`AdminExposure`]);
//! - half-override a container's export settings or switch off a signal it exports ([`mod@env`]);
//! - let an injected value win over a container's own `env`, or over keys of its `envFrom`
//!   sources where the caller can see them ([`EnvSources`]);
//! - start the agent ahead of a service mesh: the native-sidecar agent comes after the mesh's
//!   init containers and proxy ([`MESH_INIT_CONTAINERS`]), so its exports leave through a ready
//!   mesh; language copiers come right after the agent.

mod agent;
mod edits;
pub mod env;
mod hash;
mod images;
mod language;
mod patch;
pub mod ports;
mod sources;
mod workload;

pub use agent::{
    AGENT_BINARY, AGENT_CONTAINER, CONFIG_VOLUME, POD_IP_VAR, REPORT_TOKEN_VOLUME, SECRET_VOLUME, TMP_VOLUME,
};
pub use env::Export;
pub use hash::manifest_hash;
pub use images::{parse_instrumentation_image, shipped_agent_image, DefaultImages};
pub use language::Language;
pub use patch::Patch;
pub use sources::{EnvSources, SourceKind};
pub use workload::{service_name_for, workload_of, workload_of_owners, WorkloadRef};

use crate::api::keys::{
    CONTAINER_NAMES_ANNOTATION, ENV_FROM_UNSEEN_ANNOTATION, INJECTED_LABEL, INJECT_LABEL, MANIFEST_HASH_ANNOTATION,
    POLICY_ANNOTATION, SELF_EXPORTED_ANNOTATION,
};
use crate::api::{agent_config, governing_policy, selector, AgentPorts, TracingPolicy};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, Namespace, Pod, PodSpec, Volume, VolumeMount,
};
use kube::ResourceExt;
use language::LanguageRequest;
use std::collections::{BTreeMap, BTreeSet};

/// Containers that are never instrumented: service-mesh proxies and the agent itself.
pub const NEVER_INSTRUMENTED: [&str; 3] = ["istio-proxy", "linkerd-proxy", AGENT_CONTAINER];

/// Init containers of service meshes (their network setup, and their proxy in its native-sidecar
/// form). The agent is placed after the last of them, so it starts once the mesh is ready.
pub const MESH_INIT_CONTAINERS: [&str; 8] = [
    "istio-init",
    "istio-validation",
    "istio-proxy",
    "linkerd-init",
    "linkerd-network-validator",
    "linkerd-proxy",
    "kuma-init",
    "kuma-sidecar",
];

/// Operator-level settings of the injector (flags of `tracelight controller`).
#[derive(Clone, Debug, PartialEq)]
pub struct InjectOptions {
    /// Inject the agent as a native sidecar (init container with `restartPolicy: Always`,
    /// Kubernetes >= 1.29). `false` injects a plain container for older clusters.
    pub native_sidecar: bool,
    /// Reserved node ports the agents of `hostNetwork` pods take their slots in ([`ports`]).
    pub host_port_range: ports::HostPortRange,
    /// What of the agent's admin port is reachable from outside the pod ([`AdminExposure`]).
    pub admin_exposure: AdminExposure,
    /// The operator's report endpoint: agents push their reports there, authenticated with a
    /// projected token the injector mounts. `None`: no report channel.
    pub report_url: Option<String>,
    /// The images a policy that names none gets.
    pub images: DefaultImages,
    /// Seconds between the agents' report pushes (`--report-interval-secs`); `None`: the
    /// agent's default, 30 s. The budget loop looks at the rates as often.
    pub report_interval_secs: Option<u64>,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            native_sidecar: true,
            host_port_range: ports::HostPortRange::DEFAULT,
            admin_exposure: AdminExposure::Health,
            report_url: None,
            images: DefaultImages::default(),
            report_interval_secs: None,
        }
    }
}

/// What of the agent's admin port (`/healthz`, `/metrics`, `/report`) is reachable from
/// outside the pod. The admin server always listens on the pod's loopback; the kubelet probes
/// the pod IP, so `/healthz` is always answered there too (see the agent's `admin` module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminExposure {
    /// Only `/healthz` on the pod IP.
    #[default]
    Health,
    /// `/healthz` and `/metrics` on the pod IP (for a PodMonitor); `/report` stays inside.
    Metrics,
    /// The whole admin server on every address of the pod (as before 0.2.0).
    All,
}

impl AdminExposure {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminExposure::Health => "health",
            AdminExposure::Metrics => "metrics",
            AdminExposure::All => "all",
        }
    }
}

/// An unknown `--agent-admin-exposure` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown admin exposure {0:?}: expected health, metrics or all")]
pub struct UnknownAdminExposure(String);

impl std::str::FromStr for AdminExposure {
    type Err = UnknownAdminExposure;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "health" => Ok(AdminExposure::Health),
            "metrics" => Ok(AdminExposure::Metrics),
            "all" => Ok(AdminExposure::All),
            other => Err(UnknownAdminExposure(other.to_string())),
        }
    }
}

/// What the injector decided for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The pod gets tracing: the mutated pod and the patch from the admitted one.
    Injected(Box<Mutation>),
    /// The pod is left unchanged, for this reason.
    Skipped(SkipReason),
}

/// The result of injecting a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    /// The pod as it should be admitted, when the caller asked for it ([`inject`] does;
    /// [`decide`], for the webhook, only needs the patch).
    pub pod: Option<Pod>,
    /// RFC 6902 patch from the admitted pod to `pod`; empty when nothing changes.
    pub patch: Patch,
    /// Manifest hash recorded on the pod.
    pub manifest_hash: String,
    /// Problems that degraded, but did not prevent, the injection (for admission warnings).
    pub warnings: Vec<String>,
}

/// Why a pod was not injected. `as_str` is the metric label and the annotation value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// No policy governs the pod's namespace.
    NamespaceNotGoverned,
    /// The policy's rollout has not reached the namespace yet.
    NamespaceNotActive,
    /// The pod carries `tracelight.io/inject: "false"`.
    OptedOut,
    /// The policy's `podSelector` does not select the pod.
    NotSelected,
    /// No container is eligible (all are proxies, or `container-names` matched none).
    NoEligibleContainers,
    /// A user volume or container already uses a name the injector needs.
    NameConflict(String),
    /// The pod's containers leave no free port for one of the agent's listeners.
    PortConflict(String),
}

impl SkipReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::NamespaceNotGoverned => "namespace_not_governed",
            SkipReason::NamespaceNotActive => "namespace_not_active",
            SkipReason::OptedOut => "opted_out",
            SkipReason::NotSelected => "not_selected",
            SkipReason::NoEligibleContainers => "no_eligible_containers",
            SkipReason::NameConflict(_) => "name_conflict",
            SkipReason::PortConflict(_) => "port_conflict",
        }
    }

    /// The detail users need to act on the skip (`None` for the ordinary ones).
    pub fn detail(&self) -> Option<&str> {
        match self {
            SkipReason::NameConflict(d) | SkipReason::PortConflict(d) => Some(d),
            _ => None,
        }
    }

    /// Skips the pod's owner must hear about: the namespace wants tracing, but this pod cannot
    /// get it. The webhook records them on the pod (`tracelight.io/injection-status`).
    pub fn is_conflict(&self) -> bool {
        matches!(self, SkipReason::NameConflict(_) | SkipReason::PortConflict(_))
    }

    /// The value of `tracelight.io/injection-status` on a pod skipped for this reason.
    pub fn status_annotation(&self) -> String {
        match self.detail() {
            Some(detail) => format!("skipped: {}: {detail}", self.as_str()),
            None => format!("skipped: {}", self.as_str()),
        }
    }
}

/// Errors that prevent a decision (the webhook then allows the pod unchanged, with a warning).
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("pod could not be serialized for patching: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The whole admission decision for `pod` in `namespace`, given every known policy.
/// Injects only when a policy governs the namespace **and** its rollout has reached it.
pub fn decide<'a>(
    pod: &Pod,
    namespace: &Namespace,
    policies: impl IntoIterator<Item = &'a TracingPolicy>,
    options: &InjectOptions,
) -> Result<Outcome, InjectError> {
    match namespace_gate(namespace, policies) {
        Ok(policy) => inject_inner(pod, &namespace.name_any(), policy, options, &EnvSources::default(), false),
        Err(reason) => Ok(Outcome::Skipped(reason)),
    }
}

/// The policy that injects pods of `namespace` now, or why none does. Needs nothing of the pod,
/// so the webhook asks it before decoding one (most pods of a cluster are in namespaces no
/// policy governs).
pub fn namespace_gate<'a>(
    namespace: &Namespace,
    policies: impl IntoIterator<Item = &'a TracingPolicy>,
) -> Result<&'a TracingPolicy, SkipReason> {
    let policy = governing_policy(policies, namespace).ok_or(SkipReason::NamespaceNotGoverned)?;
    let name = namespace.metadata.name.as_deref().unwrap_or_default();
    if !policy.is_active_in(name) {
        return Err(SkipReason::NamespaceNotActive);
    }
    Ok(policy)
}

/// Injects `pod` (in `namespace`) according to `policy`, regardless of rollout state: the
/// webhook calls it through [`decide`], `tracelight inject` directly.
///
/// Idempotent: every step adds only what is missing, so injecting an injected pod yields the
/// same pod and an empty patch.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
) -> Result<Outcome, InjectError> {
    inject_with_sources(pod, namespace, policy, options, &EnvSources::default())
}

/// [`inject`], counting the keys of the `envFrom` sources in `sources` as the containers' own
/// (the offline command resolves the ConfigMaps and Secrets of its input; the webhook sees none).
pub fn inject_with_sources(
    pod: &Pod,
    namespace: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
    sources: &EnvSources,
) -> Result<Outcome, InjectError> {
    inject_inner(pod, namespace, policy, options, sources, true)
}

/// The injection, with the injected pod only when `with_pod` (the patch is written from the
/// decided edits either way).
fn inject_inner(
    pod: &Pod,
    namespace: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
    sources: &EnvSources,
    with_pod: bool,
) -> Result<Outcome, InjectError> {
    if is_opted_out(pod) {
        return Ok(Outcome::Skipped(SkipReason::OptedOut));
    }
    if !is_selected(pod, policy) {
        return Ok(Outcome::Skipped(SkipReason::NotSelected));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Outcome::Skipped(SkipReason::NoEligibleContainers));
    };
    let mut warnings = Vec::new();
    let plan = match plan(pod, spec, namespace, policy, options, sources, &mut warnings) {
        Ok(plan) => plan,
        Err(reason) => return Ok(Outcome::Skipped(reason)),
    };
    if plan.containers.is_empty() {
        return Ok(Outcome::Skipped(SkipReason::NoEligibleContainers));
    }
    if !is_injected(pod) {
        if let Some(name) = name_conflict(spec, &plan) {
            return Ok(Outcome::Skipped(SkipReason::NameConflict(name)));
        }
    }
    let edits = edits(pod, spec, namespace, policy, options, &plan);
    let patch = edits.patch(pod)?;
    let pod = with_pod.then(|| {
        let mut mutated = pod.clone();
        edits.apply(&mut mutated);
        mutated
    });
    Ok(Outcome::Injected(Box::new(Mutation { pod, patch, manifest_hash: plan.hash, warnings })))
}

/// The patch recording on `pod` why it was skipped (`tracelight.io/injection-status`), for the
/// skips its owner must hear about ([`SkipReason::is_conflict`]); `None` for the others.
pub fn skip_patch(pod: &Pod, reason: &SkipReason) -> Option<Patch> {
    use crate::api::keys::STATUS_ANNOTATION;
    let patch = patch::annotation_patch(pod, STATUS_ANNOTATION, &reason.status_annotation());
    // A string map always serializes; without a patch the pod is still admitted unchanged.
    reason.is_conflict().then_some(patch.ok()).flatten()
}

/// The pod carries the opt-out label.
pub fn is_opted_out(pod: &Pod) -> bool {
    pod.labels().get(INJECT_LABEL).is_some_and(|v| v == "false")
}

/// The pod carries the injected label.
pub fn is_injected(pod: &Pod) -> bool {
    pod.labels().get(INJECTED_LABEL).is_some_and(|v| v == "true")
}

fn is_selected(pod: &Pod, policy: &TracingPolicy) -> bool {
    match &policy.spec.pod_selector {
        None => true,
        Some(sel) => selector::matches(sel, pod.labels()).unwrap_or(false),
    }
}

/// What will be done to one pod.
struct PodInjection {
    /// Instrumented containers, in `spec.containers` order.
    containers: Vec<ContainerInjection>,
    ports: AgentPorts,
    /// The pod shares the node's network: the agent's ports are declared as host ports.
    host_network: bool,
    /// Names of the agent's ports; `None` where a user container already uses the name.
    port_names: [Option<&'static str>; 3],
    with_secret: bool,
    workload: Option<WorkloadRef>,
    service_name: String,
    hash: String,
}

/// What will be done to one instrumented container.
struct ContainerInjection {
    /// Index in `spec.containers`.
    index: usize,
    language: Option<Language>,
    export: Export,
    /// Variables the container gets from `envFrom` sources the caller could see: its own.
    sourced: BTreeSet<String>,
}

impl PodInjection {
    fn languages(&self) -> Vec<Language> {
        let mut langs: Vec<Language> = self.containers.iter().filter_map(|c| c.language).collect();
        langs.sort();
        langs.dedup();
        langs
    }

    /// Names of the instrumented containers whose export is `export`, comma-separated.
    fn containers_with(&self, spec: &PodSpec, export: Export) -> Option<String> {
        let names: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| c.export == export)
            .map(|c| spec.containers[c.index].name.as_str())
            .collect();
        (!names.is_empty()).then(|| names.join(","))
    }
}

#[allow(clippy::too_many_arguments)]
fn plan(
    pod: &Pod,
    spec: &PodSpec,
    namespace: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
    sources: &EnvSources,
    warnings: &mut Vec<String>,
) -> Result<PodInjection, SkipReason> {
    let workload = workload_of(&pod.metadata);
    let host_network = spec.host_network == Some(true);
    let taken = ports::taken_ports(spec, AGENT_CONTAINER);
    let ports = if host_network {
        let name = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or_default();
        let key = ports::host_slot_key(namespace, workload.as_ref().map(|w| (w.kind.as_str(), w.name.as_str())), name);
        ports::plan_host_ports(&key, options.host_port_range, &taken)
    } else {
        ports::plan_ports(policy.spec.agent.ports, &taken)
    }
    .map_err(|e| SkipReason::PortConflict(e.to_string()))?;
    if !host_network && ports != policy.spec.agent.ports {
        let preferred = policy.spec.agent.ports;
        warnings.push(format!(
            "the pod already uses some of the agent's ports {}/{}/{}: the agent listens on {}/{}/{} instead",
            preferred.otlp_grpc, preferred.otlp_http, preferred.admin, ports.otlp_grpc, ports.otlp_http, ports.admin
        ));
    }
    let taken_names = ports::taken_port_names(spec, AGENT_CONTAINER);
    let port_names = ports::PORT_NAMES.map(|n| (!taken_names.contains(n)).then_some(n));
    let ours = env::agent_export_env(policy, ports);
    let requested = LanguageRequest::from_annotations(pod.metadata.annotations.as_ref(), warnings);
    let containers: Vec<ContainerInjection> = eligible_containers(pod, spec, warnings)
        .into_iter()
        .map(|index| container_plan(&spec.containers[index], index, &requested, &ours, sources, warnings))
        .collect();
    let with_secret = agent_config::needs_secret(policy);
    let service_name = service_name_for(pod, workload.as_ref());
    let by_name: BTreeMap<String, Option<Language>> =
        containers.iter().map(|c| (spec.containers[c.index].name.clone(), c.language)).collect();
    let hash = manifest_hash(policy, ports, options, with_secret, &by_name);
    Ok(PodInjection { containers, ports, host_network, port_names, with_secret, workload, service_name, hash })
}

/// The language, export owner and sourced variables of one instrumented container.
fn container_plan(
    c: &Container,
    index: usize,
    requested: &LanguageRequest,
    ours: &[EnvVar],
    sources: &EnvSources,
    warnings: &mut Vec<String>,
) -> ContainerInjection {
    let resolved = sources.resolve(c.env_from.as_deref().unwrap_or_default());
    let user_env = c.env.as_deref().unwrap_or_default();
    let own = user_env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .chain(resolved.vars.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
    let export = env::export_owner(own, ours, resolved.unseen);
    let language = requested.for_container(&c.name).filter(|lang| {
        let edits = language::env_edits(*lang);
        let conflict = env::check_joins(user_env, &edits)
            .err()
            .map(|conflict| format!("{} comes from valueFrom", conflict.name))
            .or_else(|| sourced_join(&edits, &resolved.vars).map(|name| format!("{name} comes from envFrom")));
        match conflict {
            None => true,
            Some(why) => {
                warnings.push(format!(
                    "container {:?}: {why} and cannot be extended; {} auto-instrumentation skipped",
                    c.name,
                    lang.as_str()
                ));
                false
            }
        }
    });
    let sourced = resolved.vars.into_keys().filter(|k| !user_env.iter().any(|e| e.name == *k)).collect();
    ContainerInjection { index, language, export, sourced }
}

/// A joined language variable that a visible `envFrom` source defines (and `env` does not).
fn sourced_join(edits: &[language::EnvEdit], sourced: &BTreeMap<String, Option<String>>) -> Option<&'static str> {
    edits.iter().find_map(|edit| match edit {
        language::EnvEdit::Join { name, .. } if sourced.contains_key(*name) => Some(*name),
        _ => None,
    })
}

/// Indices of the application containers to instrument: those named by
/// `tracelight.io/container-names`, or all; never proxies or the agent.
fn eligible_containers(pod: &Pod, spec: &PodSpec, warnings: &mut Vec<String>) -> Vec<usize> {
    let wanted: Option<Vec<&str>> = pod
        .annotations()
        .get(CONTAINER_NAMES_ANNOTATION)
        .map(|v| v.split(',').map(str::trim).filter(|n| !n.is_empty()).collect());
    if let Some(names) = &wanted {
        for name in names {
            if !spec.containers.iter().any(|c| c.name == *name) {
                warnings.push(format!("{CONTAINER_NAMES_ANNOTATION}: no container named {name:?}"));
            }
        }
    }
    spec.containers
        .iter()
        .enumerate()
        .filter(|(_, c)| !NEVER_INSTRUMENTED.contains(&c.name.as_str()))
        .filter(|(_, c)| wanted.as_ref().is_none_or(|names| names.contains(&c.name.as_str())))
        .map(|(i, _)| i)
        .collect()
}

/// A user container or volume already named like one the injector adds (only checked on pods
/// that were not injected before, where such a name cannot be ours).
fn name_conflict(spec: &PodSpec, plan: &PodInjection) -> Option<String> {
    let mut volumes: Vec<String> =
        vec![CONFIG_VOLUME.into(), TMP_VOLUME.into(), SECRET_VOLUME.into(), REPORT_TOKEN_VOLUME.into()];
    volumes.extend(plan.languages().iter().map(|l| l.volume_name()));
    let containers: Vec<String> =
        std::iter::once(AGENT_CONTAINER.to_string()).chain(plan.languages().iter().map(|l| l.volume_name())).collect();
    let user_volumes = spec.volumes.iter().flatten().map(|v| &v.name);
    let user_containers = spec.containers.iter().chain(spec.init_containers.iter().flatten()).map(|c| &c.name);
    user_volumes
        .filter(|n| volumes.contains(n))
        .map(|n| format!("volume {n:?}"))
        .chain(user_containers.filter(|n| containers.contains(n)).map(|n| format!("container {n:?}")))
        .next()
}

/// What `plan` adds to `pod`: only what is missing, so an injected pod gets no edit.
fn edits(
    pod: &Pod,
    spec: &PodSpec,
    namespace: &str,
    policy: &TracingPolicy,
    options: &InjectOptions,
    plan: &PodInjection,
) -> edits::Edits {
    let mut annotations = vec![(MANIFEST_HASH_ANNOTATION, plan.hash.clone()), (POLICY_ANNOTATION, policy.name_any())];
    for (key, export) in
        [(SELF_EXPORTED_ANNOTATION, Export::SelfExported), (ENV_FROM_UNSEEN_ANNOTATION, Export::Unseen)]
    {
        annotations.extend(plan.containers_with(spec, export).map(|names| (key, names)));
    }
    annotations.sort_by_key(|(key, _)| *key);
    let containers = plan
        .containers
        .iter()
        .map(|c| container_edits(&spec.containers[c.index], namespace, policy, plan, c))
        .collect();
    let agent = agent::agent_container(&agent::AgentParams {
        spec: &policy.spec.agent,
        image: options.images.agent(&policy.spec.agent),
        ports: plan.ports,
        host_network: plan.host_network,
        admin_exposure: options.admin_exposure,
        port_names: plan.port_names,
        namespace,
        workload: plan.workload.as_ref(),
        native_sidecar: options.native_sidecar,
        with_secret: plan.with_secret,
        report_url: options.report_url.as_deref(),
        report_interval_secs: options.report_interval_secs,
        termination_grace_seconds: spec.termination_grace_period_seconds,
        propagator_overrides: env::propagator_overrides(
            plan.containers.iter().map(|c| {
                let container = &spec.containers[c.index];
                let env = container.env.as_deref().unwrap_or_default();
                (container.name.as_str(), env, c.sourced.contains("OTEL_PROPAGATORS"))
            }),
            policy,
        ),
    });
    let has_agent = spec.containers.iter().any(|c| c.name == AGENT_CONTAINER);
    let (init_agent, appended_container) = match (options.native_sidecar, has_agent) {
        (true, _) => (Some(agent), None),
        (false, false) => (None, Some(agent)),
        (false, true) => (None, None),
    };
    let wanted_init = init_agent
        .into_iter()
        .chain(plan.languages().into_iter().map(|l| language_init_container(policy, l, &options.images)));
    let mut volumes = agent::agent_volumes(plan.with_secret, options.report_url.is_some());
    volumes.extend(plan.languages().into_iter().map(language_volume));
    let existing = spec.volumes.as_deref().unwrap_or_default();
    volumes.retain(|v| !existing.iter().any(|e| e.name == v.name));
    edits::Edits {
        labels: if is_injected(pod) { Vec::new() } else { vec![(INJECTED_LABEL, "true".to_string())] },
        annotations,
        containers,
        appended_container,
        init_containers: inserted_init_containers(spec.init_containers.as_deref().unwrap_or_default(), wanted_init),
        volumes,
    }
}

/// Init containers start in order. The agent comes right after a mesh's init containers and
/// proxy (its exports then leave through a ready mesh) and ahead of every other init container
/// (which may already emit spans); language copiers right after the agent. Containers already
/// there are kept where they are; returns the missing ones with their index in the result.
fn inserted_init_containers(
    existing: &[Container],
    wanted: impl Iterator<Item = Container>,
) -> Vec<(usize, Container)> {
    // The names of the list as the inserts make it.
    let mut names: Vec<String> = existing.iter().map(|c| c.name.clone()).collect();
    let mut position = after_mesh(existing);
    let mut inserted = Vec::new();
    for container in wanted {
        match names.iter().position(|n| *n == container.name) {
            Some(at) => position = position.max(at + 1),
            None => {
                names.insert(position, container.name.clone());
                inserted.push((position, container));
                position += 1;
            }
        }
    }
    inserted
}

/// The index after the last service-mesh init container (0 without a mesh).
fn after_mesh(init: &[Container]) -> usize {
    init.iter().rposition(|c| MESH_INIT_CONTAINERS.contains(&c.name.as_str())).map_or(0, |i| i + 1)
}

/// The env and mount an instrumented container gets.
fn container_edits(
    c: &Container,
    namespace: &str,
    policy: &TracingPolicy,
    plan: &PodInjection,
    cp: &ContainerInjection,
) -> edits::ContainerEdits {
    let mut injected = env::app_env(&env::AppEnv {
        policy,
        namespace,
        container: &c.name,
        workload: plan.workload.as_ref(),
        service_name: &plan.service_name,
        ports: plan.ports,
        export: cp.export,
    });
    let mut edits = Vec::new();
    let mut mount = None;
    if let Some(lang) = cp.language {
        edits = language::env_edits(lang);
        if let Some(settings) = lang.settings(&policy.spec.instrumentation) {
            injected.extend(settings.env.iter().map(|(k, v)| env::literal(k, v.replace('$', "$$"))));
        }
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        if !mounts.iter().any(|m| m.name == lang.volume_name()) {
            mount = Some(VolumeMount {
                name: lang.volume_name(),
                mount_path: lang.mount_path(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    // A visible envFrom source's value is the container's own: it wins, as in its env.
    let env = env::env_change(c.env.as_deref().unwrap_or_default(), injected, &edits, &cp.sourced);
    edits::ContainerEdits { index: cp.index, env, mount }
}

fn language_init_container(policy: &TracingPolicy, lang: Language, images: &DefaultImages) -> Container {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let q = |s: &str| Quantity(s.into());
    Container {
        name: lang.volume_name(),
        image: Some(images.instrumentation(lang, &policy.spec.instrumentation).to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(lang.copy_command()),
        volume_mounts: Some(vec![VolumeMount {
            name: lang.volume_name(),
            mount_path: lang.mount_path(),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), q("10m")), ("memory".into(), q("32Mi"))])),
            limits: Some(BTreeMap::from([("memory".into(), q("128Mi"))])),
            ..Default::default()
        }),
        security_context: Some(agent::restricted_security_context()),
        ..Default::default()
    }
}

fn language_volume(lang: Language) -> Volume {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    Volume {
        name: lang.volume_name(),
        // The Java agent is ~25 MB, the others smaller; the limit keeps a runaway copy in check.
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity("256Mi".into())), ..Default::default() }),
        ..Default::default()
    }
}

/// The manifest hash `pod` would carry if injected now (the controller compares it with the
/// pod's annotation to find outdated pods). `None` when the pod would not be injected.
pub fn expected_manifest_hash(pod: &Pod, policy: &TracingPolicy, options: &InjectOptions) -> Option<String> {
    if is_opted_out(pod) || !is_selected(pod, policy) {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let plan = plan(pod, spec, namespace, policy, options, &EnvSources::default(), &mut Vec::new()).ok()?;
    (!plan.containers.is_empty()).then_some(plan.hash)
}

#[cfg(test)]
mod tests;
