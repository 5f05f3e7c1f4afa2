//! `k8s.*` and policy resource attributes added to every resource that lacks them (applied to
//! the encoded request by `super::wire`).

use std::collections::BTreeMap;

/// What the pod knows about itself, from the downward-API environment the injector sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub node_name: Option<String>,
    pub pod_uid: Option<String>,
    pub workload_kind: Option<String>,
    pub workload_name: Option<String>,
}

impl PodIdentity {
    /// Read from `TRACELIGHT_*` variables; empty values count as unset.
    pub fn from_env() -> PodIdentity {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        PodIdentity {
            pod_name: var("TRACELIGHT_POD_NAME"),
            namespace: var("TRACELIGHT_POD_NAMESPACE"),
            node_name: var("TRACELIGHT_NODE_NAME"),
            pod_uid: var("TRACELIGHT_POD_UID"),
            workload_kind: var("TRACELIGHT_WORKLOAD_KIND"),
            workload_name: var("TRACELIGHT_WORKLOAD_NAME"),
        }
    }

    /// The `k8s.*` resource attributes this identity provides.
    pub fn attributes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                out.push((key.to_string(), v.clone()));
            }
        };
        push("k8s.pod.name", &self.pod_name);
        push("k8s.namespace.name", &self.namespace);
        push("k8s.node.name", &self.node_name);
        push("k8s.pod.uid", &self.pod_uid);
        if let Some(key) = self.workload_kind.as_deref().and_then(workload_key) {
            push(key, &self.workload_name);
        }
        out
    }
}

/// The semantic-convention key naming a workload of this kind.
fn workload_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "k8s.deployment.name",
        "StatefulSet" => "k8s.statefulset.name",
        "DaemonSet" => "k8s.daemonset.name",
        "ReplicaSet" => "k8s.replicaset.name",
        "Job" => "k8s.job.name",
        "CronJob" => "k8s.cronjob.name",
        _ => return None,
    })
}

/// Identity attributes first, then the policy's custom attributes; the first of a key wins.
pub fn attributes_to_add(identity: &PodIdentity, custom: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = identity.attributes();
    for (k, v) in custom {
        if !out.iter().any(|(key, _)| key == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// The value is exactly `$(NAME)`, as the kubelet leaves a reference it cannot resolve. Such an
/// application value is replaced by the agent's (`k8s.pod.name=$(TRACELIGHT_POD_NAME)` would
/// otherwise reach the backend as it is); any other application value wins over the agent's.
pub fn is_unexpanded_reference(value: &str) -> bool {
    value
        .strip_prefix("$(")
        .and_then(|rest| rest.strip_suffix(')'))
        .is_some_and(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> PodIdentity {
        PodIdentity {
            pod_name: Some("web-1".into()),
            namespace: Some("shop".into()),
            node_name: Some("node-a".into()),
            pod_uid: Some("uid-1".into()),
            workload_kind: Some("Deployment".into()),
            workload_name: Some("shop-frontend".into()),
        }
    }

    #[test]
    fn only_whole_references_are_unexpanded() {
        assert!(is_unexpanded_reference("$(TRACELIGHT_POD_NAME)"));
        assert!(!is_unexpanded_reference("node-$(X)"));
        assert!(!is_unexpanded_reference("$()"));
        assert!(!is_unexpanded_reference("$(A B)"));
    }

    #[test]
    fn workload_kind_picks_the_key() {
        let mut id = identity();
        id.workload_kind = Some("CronJob".into());
        assert!(id.attributes().contains(&("k8s.cronjob.name".into(), "shop-frontend".into())));
        id.workload_kind = Some("Unknown".into());
        assert!(!id
            .attributes()
            .iter()
            .any(|(k, _)| k.ends_with(".name") && k.starts_with("k8s.") && k.contains("unknown")));
        assert_eq!(id.attributes().len(), 4);
    }

    #[test]
    fn custom_attributes_do_not_override_identity() {
        let custom =
            BTreeMap::from([("k8s.pod.name".to_string(), "x".to_string()), ("team".to_string(), "shop".to_string())]);
        let attrs = attributes_to_add(&identity(), &custom);
        assert!(attrs.contains(&("k8s.pod.name".into(), "web-1".into())));
        assert!(attrs.contains(&("team".into(), "shop".into())));
    }
}
