//! `k8s.*` and policy resource attributes added to every resource that lacks them.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
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

/// Add each attribute the resource does not already have; what the application set wins,
/// except a value that is an unexpanded Kubernetes `$(VAR)` reference: the kubelet leaves those
/// as they are when `VAR` is not defined before them, and `k8s.pod.name=$(TRACELIGHT_POD_NAME)`
/// would otherwise reach the backend as it is.
pub fn enrich(resource: &mut Option<Resource>, attributes: &[(String, String)]) {
    let resource = resource.get_or_insert_with(Resource::default);
    for (key, value) in attributes {
        match resource.attributes.iter_mut().find(|kv| &kv.key == key) {
            None => resource.attributes.push(string_kv(key, value)),
            Some(kv) if is_unexpanded_reference(kv) => *kv = string_kv(key, value),
            Some(_) => {}
        }
    }
}

/// The value is exactly `$(NAME)`, as the kubelet leaves a reference it cannot resolve.
fn is_unexpanded_reference(kv: &KeyValue) -> bool {
    let Some(any_value::Value::StringValue(s)) = kv.value.as_ref().and_then(|v| v.value.as_ref()) else {
        return false;
    };
    s.strip_prefix("$(")
        .and_then(|rest| rest.strip_suffix(')'))
        .is_some_and(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

/// The `service.name` of a resource, if it is a string.
pub fn service_name(resource: Option<&Resource>) -> Option<&str> {
    let kv = resource?.attributes.iter().find(|kv| kv.key == "service.name")?;
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
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

    fn value_of<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn adds_k8s_attributes_to_a_bare_resource() {
        let mut r = None;
        enrich(&mut r, &identity().attributes());
        let r = r.expect("resource created");
        assert_eq!(value_of(&r, "k8s.pod.name"), Some("web-1"));
        assert_eq!(value_of(&r, "k8s.namespace.name"), Some("shop"));
        assert_eq!(value_of(&r, "k8s.node.name"), Some("node-a"));
        assert_eq!(value_of(&r, "k8s.pod.uid"), Some("uid-1"));
        assert_eq!(value_of(&r, "k8s.deployment.name"), Some("shop-frontend"));
    }

    #[test]
    fn application_values_win() {
        let mut r = Some(Resource { attributes: vec![string_kv("k8s.pod.name", "from-sdk")], ..Default::default() });
        enrich(&mut r, &identity().attributes());
        let r = r.expect("resource");
        assert_eq!(value_of(&r, "k8s.pod.name"), Some("from-sdk"));
        assert_eq!(r.attributes.iter().filter(|kv| kv.key == "k8s.pod.name").count(), 1);
    }

    #[test]
    fn unexpanded_references_are_replaced_but_other_application_values_win() {
        let mut r = Some(Resource {
            attributes: vec![
                string_kv("k8s.pod.name", "$(TRACELIGHT_POD_NAME)"),
                string_kv("k8s.node.name", "node-$(X)"),
            ],
            ..Default::default()
        });
        let id = identity();
        enrich(&mut r, &id.attributes());
        let r = r.expect("resource");
        let expected = id.attributes().into_iter().find(|(k, _)| k == "k8s.pod.name").expect("pod name").1;
        assert_eq!(value_of(&r, "k8s.pod.name"), Some(expected.as_str()));
        assert_eq!(value_of(&r, "k8s.node.name"), Some("node-$(X)"), "not a whole reference: the application's");
        assert_eq!(r.attributes.iter().filter(|kv| kv.key == "k8s.pod.name").count(), 1);
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

    #[test]
    fn service_name_is_read() {
        let r = Resource { attributes: vec![string_kv("service.name", "cart")], ..Default::default() };
        assert_eq!(service_name(Some(&r)), Some("cart"));
        assert_eq!(service_name(None), None);
    }
}
