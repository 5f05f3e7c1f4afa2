//! Pod injection (pure): `(pod, namespace, policy, options) -> Outcome`, and the JSON patch
//! that turns the admitted pod into the injected one. No I/O here: the webhook, the offline
//! `tracelight inject` command and the controller all call these functions.

use crate::api::{AgentPorts, TracingPolicy};
use k8s_openapi::api::core::v1::{Namespace, Pod};

/// Operator-level settings of the injector (flags of `tracelight controller`).
#[derive(Clone, Debug, PartialEq)]
pub struct InjectOptions {
    /// Inject the agent as a native sidecar (init container with `restartPolicy: Always`,
    /// Kubernetes >= 1.29). `false` injects a plain container for older clusters.
    pub native_sidecar: bool,
    /// Agent ports for `hostNetwork` pods, which share the node's ports.
    pub host_network_ports: AgentPorts,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            native_sidecar: true,
            host_network_ports: AgentPorts { otlp_grpc: 14317, otlp_http: 14318, admin: 14133 },
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
    /// The pod as it should be admitted.
    pub pod: Pod,
    /// RFC 6902 patch from the admitted pod to `pod`; empty when nothing changes.
    pub patch: json_patch::Patch,
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
    let _ = (pod, namespace, policies, options);
    unimplemented!("injector lands next")
}
