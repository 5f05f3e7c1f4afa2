//! `envFrom` sources whose keys the caller can see.
//!
//! Kubernetes resolves a container's environment as: every `envFrom` source in order (a later
//! source wins a key), then `env` (which wins over all of them). A variable a source defines is
//! the container's own, exactly like one in `env`. The webhook sees no ConfigMap or Secret at
//! admission (no I/O per admission, no Secret read), so for it every source is unseen; the
//! offline `tracelight inject` passes the ConfigMaps and Secrets found in its input.

use k8s_openapi::api::core::v1::EnvFromSource;
use std::collections::BTreeMap;

/// Which kind of object an `envFrom` entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

/// Known sources of one namespace: kind and name to their keys and values (`None`: a value
/// that is not UTF-8).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvSources {
    sources: BTreeMap<(SourceKind, String), BTreeMap<String, Option<String>>>,
}

/// A container's `envFrom` as far as it could be resolved.
#[derive(Debug, Default, PartialEq)]
pub struct Resolved {
    /// Variables from the sources that could be seen, with their values (later sources win).
    pub vars: BTreeMap<String, Option<String>>,
    /// At least one source could not be seen: its keys are unknown.
    pub unseen: bool,
}

impl EnvSources {
    /// Records the keys of a ConfigMap or Secret.
    pub fn insert(&mut self, kind: SourceKind, name: &str, data: BTreeMap<String, Option<String>>) {
        self.sources.insert((kind, name.to_string()), data);
    }

    /// Resolves `env_from` as the kubelet would, as far as the sources are known.
    pub fn resolve(&self, env_from: &[EnvFromSource]) -> Resolved {
        let mut resolved = Resolved::default();
        for entry in env_from {
            let key = match (&entry.config_map_ref, &entry.secret_ref) {
                (Some(cm), _) => (SourceKind::ConfigMap, cm.name.clone()),
                (None, Some(secret)) => (SourceKind::Secret, secret.name.clone()),
                (None, None) => continue, // rejected by the API server; nothing to read
            };
            match self.sources.get(&key) {
                Some(data) => {
                    let prefix = entry.prefix.as_deref().unwrap_or_default();
                    for (k, v) in data {
                        resolved.vars.insert(format!("{prefix}{k}"), v.clone());
                    }
                }
                None => resolved.unseen = true,
            }
        }
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMapEnvSource, SecretEnvSource};

    fn cm(name: &str, prefix: Option<&str>) -> EnvFromSource {
        EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource { name: name.into(), optional: None }),
            prefix: prefix.map(String::from),
            secret_ref: None,
        }
    }

    #[test]
    fn known_sources_resolve_in_order_with_prefixes_and_unknown_ones_are_flagged() {
        let mut sources = EnvSources::default();
        sources.insert(SourceKind::ConfigMap, "a", BTreeMap::from([("X".into(), Some("1".into()))]));
        sources.insert(SourceKind::Secret, "s", BTreeMap::from([("X".into(), Some("2".into()))]));
        let secret = EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: "s".into(), optional: None }),
            ..Default::default()
        };
        let resolved = sources.resolve(&[cm("a", None), secret, cm("a", Some("P_"))]);
        assert_eq!(resolved.vars.get("X"), Some(&Some("2".to_string())), "the later source wins");
        assert_eq!(resolved.vars.get("P_X"), Some(&Some("1".to_string())));
        assert!(!resolved.unseen);
        assert!(sources.resolve(&[cm("a", None), cm("other", None)]).unseen);
    }
}
