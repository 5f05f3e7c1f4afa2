//! Values that earlier releases wrote into policies by a schema default, undone when a policy is
//! read. Tracelight 0.1.0's CRD defaulted `spec.agent.image` to its own image, so every policy
//! created under it carries `ghcr.io/tracelight/tracelight:0.1.0` as if a user had pinned it,
//! and would never follow an operator upgrade.
//!
//! A value the API server wrote by defaulting has no field manager: managed fields record only
//! what a client sent. So a legacy default that no manager owns is treated as empty; the same
//! image set by a user (`kubectl apply` with the field, a Helm chart) is owned and stays pinned.

use super::TracingPolicy;

/// `spec.agent.image` values earlier CRDs wrote by default.
const LEGACY_AGENT_IMAGE_DEFAULTS: &[&str] = &["ghcr.io/tracelight/tracelight:0.1.0"];

/// Clears what an earlier release's schema default wrote and nobody set. Call before the managed
/// fields are dropped (the caches strip them).
pub fn forget_legacy_defaults(policy: &mut TracingPolicy) {
    let image = policy.spec.agent.image.as_deref();
    if image.is_some_and(|i| LEGACY_AGENT_IMAGE_DEFAULTS.contains(&i)) && !owned(policy, &["spec", "agent", "image"]) {
        policy.spec.agent.image = None;
    }
}

/// Whether some field manager owns the field at `path` (`fieldsV1` keys are `f:<name>`).
fn owned(policy: &TracingPolicy, path: &[&str]) -> bool {
    let entries = policy.metadata.managed_fields.iter().flatten();
    entries
        .filter_map(|e| e.fields_v1.as_ref())
        .any(|fields| path.iter().try_fold(&fields.0, |node, name| node.get(format!("f:{name}"))).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn policy(image: &str, owner_fields: Option<serde_json::Value>) -> TracingPolicy {
        let mut p: TracingPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
            "metadata": {"name": "p"},
            "spec": {"collector": {"endpoint": "http://c:4317", "protocol": "grpc"}, "agent": {"image": image}},
        }))
        .unwrap();
        p.metadata.managed_fields = owner_fields.map(|f| {
            vec![ManagedFieldsEntry {
                manager: Some("kubectl-client-side-apply".into()),
                operation: Some("Update".into()),
                fields_v1: Some(FieldsV1(f)),
                ..Default::default()
            }]
        });
        p
    }

    #[test]
    fn a_defaulted_legacy_image_is_forgotten() {
        // kubectl sent the spec without agent.image; the API server defaulted it.
        let fields = serde_json::json!({"f:spec": {"f:collector": {"f:endpoint": {}}, "f:agent": {"f:resources": {}}}});
        let mut p = policy("ghcr.io/tracelight/tracelight:0.1.0", Some(fields));
        forget_legacy_defaults(&mut p);
        assert_eq!(p.spec.agent.image, None);
    }

    #[test]
    fn a_legacy_image_a_user_set_stays_pinned() {
        let fields = serde_json::json!({"f:spec": {"f:agent": {"f:image": {}}}});
        let mut p = policy("ghcr.io/tracelight/tracelight:0.1.0", Some(fields));
        forget_legacy_defaults(&mut p);
        assert_eq!(p.spec.agent.image.as_deref(), Some("ghcr.io/tracelight/tracelight:0.1.0"));
    }

    #[test]
    fn other_images_are_never_touched() {
        let mut p = policy("registry.example/agent:7", None);
        forget_legacy_defaults(&mut p);
        assert_eq!(p.spec.agent.image.as_deref(), Some("registry.example/agent:7"));
    }
}
