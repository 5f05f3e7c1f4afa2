//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order, each
//! literal value `$(VAR)`-expanded against the variables defined before it; `valueFrom` read from
//! the downward API (the pod as stored by the API server, with the runner's pod IP), ConfigMaps
//! and Secrets. The image's own env comes underneath (the container's wins). Command and args are
//! expanded against the container's env.
//!
//! Not emulated: the Service link variables (`FOO_SERVICE_HOST`, ...) and `resourceFieldRef`
//! (an error, not a guess).

use super::expand::expand;
use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, ObjectFieldSelector, Pod, Secret};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What a pod's env and volumes can read: the namespace's ConfigMaps and Secrets, and the
/// addresses the runner gave the pod.
#[derive(Clone, Debug, Default)]
pub struct PodInputs {
    pub configmaps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Option<Ipv4Addr>,
    /// Service-account tokens of projected volumes, by `volume/path` (see [`super::token`]).
    pub tokens: BTreeMap<String, Vec<u8>>,
}

impl PodInputs {
    pub fn from_objects(configmaps: &[ConfigMap], secrets: &[Secret]) -> PodInputs {
        let cms = configmaps
            .iter()
            .map(|cm| {
                let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for (k, v) in cm.data.iter().flatten() {
                    data.insert(k.clone(), v.clone().into_bytes());
                }
                for (k, v) in cm.binary_data.iter().flatten() {
                    data.insert(k.clone(), v.0.clone());
                }
                (cm.name_any(), data)
            })
            .collect();
        let secrets = secrets
            .iter()
            .map(|s| {
                let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for (k, v) in s.data.iter().flatten() {
                    data.insert(k.clone(), v.0.clone());
                }
                for (k, v) in s.string_data.iter().flatten() {
                    data.insert(k.clone(), v.clone().into_bytes());
                }
                (s.name_any(), data)
            })
            .collect();
        PodInputs { configmaps: cms, secrets, ..Default::default() }
    }

    fn configmap_key(&self, name: &str, key: &str) -> Option<String> {
        self.configmaps.get(name)?.get(key).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn secret_key(&self, name: &str, key: &str) -> Option<String> {
        self.secrets.get(name)?.get(key).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// The container's env, in definition order (a later definition of a name replaces the earlier
/// value in place, as in the kubelet's map).
pub fn container_env(pod: &Pod, container: &Container, inputs: &PodInputs) -> anyhow::Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set =
        |env: &mut Vec<(String, String)>, name: String, value: String| match env.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => env.push((name, value)),
        };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &source.config_map_ref {
            (inputs.configmaps.get(&r.name), r.optional == Some(true), format!("ConfigMap {}", r.name))
        } else if let Some(r) = &source.secret_ref {
            (inputs.secrets.get(&r.name), r.optional == Some(true), format!("Secret {}", r.name))
        } else {
            bail!("container {}: envFrom without a source", container.name);
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(v).into_owned());
                }
            }
            None if optional => {}
            None => bail!("container {}: envFrom {what} does not exist", container.name),
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(pod, container, var, inputs, &env)? {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

/// One variable's value; `None` for an optional reference that does not resolve.
fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    inputs: &PodInputs,
    defined: &[(String, String)],
) -> anyhow::Result<Option<String>> {
    let Some(from) = &var.value_from else {
        let raw = var.value.clone().unwrap_or_default();
        return Ok(Some(expand(&raw, |name| defined.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))));
    };
    let what = || format!("container {}: env {}", container.name, var.name);
    if let Some(field) = &from.field_ref {
        return field_value(pod, field, inputs).map(Some).with_context(what);
    }
    if let Some(r) = &from.config_map_key_ref {
        return match inputs.configmap_key(&r.name, &r.key) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => bail!("{}: ConfigMap {} has no key {}", what(), r.name, r.key),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        return match inputs.secret_key(&r.name, &r.key) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => bail!("{}: Secret {} has no key {}", what(), r.name, r.key),
        };
    }
    bail!("{}: unsupported valueFrom {from:?}", what())
}

/// A downward-API field of the pod.
pub fn field_value(pod: &Pod, field: &ObjectFieldSelector, inputs: &PodInputs) -> anyhow::Result<String> {
    let path = field.field_path.as_str();
    let spec = pod.spec.as_ref();
    let indexed = |prefix: &str, map: &BTreeMap<String, String>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    if let Some(v) = indexed("metadata.labels['", pod.labels()) {
        return Ok(v);
    }
    if let Some(v) = indexed("metadata.annotations['", pod.annotations()) {
        return Ok(v);
    }
    let value = match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => pod.namespace(),
        "metadata.uid" => pod.uid(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => inputs.pod_ip.map(|ip| ip.to_string()),
        "status.hostIP" | "status.hostIPs" => inputs.host_ip.map(|ip| ip.to_string()),
        other => bail!("downward-API field {other} is not supported by the runner"),
    };
    value.with_context(|| format!("downward-API field {path} has no value yet (is the pod scheduled?)"))
}

/// The container's full process environment: the image's env overridden by the container's.
pub fn process_env(image_env: &[(String, String)], container_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        image_env.iter().filter(|(k, _)| !container_env.iter().any(|(n, _)| n == k)).cloned().collect();
    out.extend(container_env.iter().cloned());
    out
}

/// Command and args after `$(VAR)` expansion against the container's env.
pub fn expand_all(words: &[String], env: &[(String, String)]) -> Vec<String> {
    words.iter().map(|w| expand(w, |name| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "kwok-node-0", "containers": [{
                "name": "app",
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "ATTRS", "value": "k8s.pod.name=$(POD),ip=$(IP),app=$(APP),cfg=$(CFG_mode)"},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}},
                    {"name": "ESCAPED", "value": "$$(POD)"}
                ]
            }]}
        }))
        .unwrap()
    }

    fn inputs() -> PodInputs {
        let mut i = PodInputs::default();
        i.configmaps.insert("settings".into(), BTreeMap::from([("mode".to_string(), b"fast".to_vec())]));
        i.secrets.insert("creds".into(), BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]));
        i.pod_ip = Some(Ipv4Addr::new(10, 0, 0, 7));
        i
    }

    #[test]
    fn env_is_resolved_in_order_like_the_kubelet() {
        let pod = pod();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let env: BTreeMap<String, String> = container_env(&pod, c, &inputs()).unwrap().into_iter().collect();
        assert_eq!(env["CFG_mode"], "fast");
        assert_eq!(env["POD"], "web-1");
        // IP and APP are defined after ATTRS, so they are not expanded in it.
        assert_eq!(env["ATTRS"], "k8s.pod.name=web-1,ip=$(IP),app=$(APP),cfg=fast");
        assert_eq!(env["IP"], "10.0.0.7");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["KEY"], "s3cret");
        assert!(!env.contains_key("MISSING"));
        assert_eq!(env["ESCAPED"], "$(POD)");
    }

    #[test]
    fn a_missing_required_reference_is_an_error() {
        let pod = pod();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let mut i = inputs();
        i.secrets.clear();
        let err = container_env(&pod, c, &i).unwrap_err().to_string();
        assert!(err.contains("Secret creds has no key token"), "{err}");
    }

    #[test]
    fn unscheduled_pod_has_no_node_name() {
        let mut pod = pod();
        pod.spec.as_mut().unwrap().node_name = None;
        let field = ObjectFieldSelector { field_path: "spec.nodeName".into(), api_version: None };
        assert!(field_value(&pod, &field, &inputs()).is_err());
    }

    #[test]
    fn container_env_wins_over_image_env() {
        let image = vec![("PATH".to_string(), "/img".to_string()), ("LANG".to_string(), "C".to_string())];
        let mine = vec![("PATH".to_string(), "/mine".to_string())];
        assert_eq!(
            process_env(&image, &mine),
            vec![("LANG".to_string(), "C".to_string()), ("PATH".to_string(), "/mine".to_string())]
        );
    }
}
