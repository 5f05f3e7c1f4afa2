//! The `TracingPolicy` API: types, defaults, validation and the pure questions the other
//! components ask about a policy (which namespaces it governs, whether a namespace is active).

pub mod agent_config;
pub mod continuity;
pub mod keys;
pub mod legacy;
pub mod policy;
pub mod quantity;
pub mod review;
pub mod selector;
pub mod status;
pub mod validate;

pub use continuity::*;
pub use policy::*;
pub use quantity::Duration;
pub use review::*;
pub use status::*;
pub use tracelight_contract::Ratio;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;

impl TracingPolicy {
    /// Whether this policy governs `namespace` (its `namespaceSelector` matches the labels).
    /// An unparseable selector governs nothing; validation reports it.
    pub fn governs(&self, namespace: &Namespace) -> bool {
        selector::matches(&self.spec.namespace_selector, namespace.labels()).unwrap_or(false)
    }

    /// Whether the rollout has reached `namespace`: the controller has written the agent config
    /// there and recorded the namespace as `Active`. Only then may pods be injected.
    pub fn is_active_in(&self, namespace: &str) -> bool {
        self.status.as_ref().and_then(|s| s.namespace_state(namespace)).is_some_and(|s| s == NamespaceState::Active)
    }
}

/// The policy governing `namespace` among `policies`. When several match, the oldest wins (then
/// the alphabetically first name) so the choice is stable; the controller reports the overlap.
pub fn governing_policy<'a, I>(policies: I, namespace: &Namespace) -> Option<&'a TracingPolicy>
where
    I: IntoIterator<Item = &'a TracingPolicy>,
{
    policies.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none() && p.governs(namespace)).min_by(|a, b| {
        let age = |p: &TracingPolicy| p.metadata.creation_timestamp.clone().map(|t| t.0);
        age(a).cmp(&age(b)).then_with(|| a.name_any().cmp(&b.name_any()))
    })
}
