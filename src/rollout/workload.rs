//! What the rollout reads of a workload (Deployment, StatefulSet, DaemonSet), whatever its kind:
//! its identity, the parts of its pod template that decide injection and record restarts, and
//! whether it has rolled out. The controller caches thousands of these; a full Deployment costs
//! ~6 KiB (k8s-openapi's `Container` alone is 2.3 KiB inline), a [`Workload`] a few hundred bytes.

use super::model::{WorkloadId, WorkloadKind};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

/// A workload as the rollout sees it. Built from the full object with [`Workload::from`].
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// Name, namespace, uid, generation and deletion timestamp; nothing else is kept.
    pub metadata: ObjectMeta,
    pub template: Template,
    /// The workload controller has observed the current template and replaced every pod.
    pub rolled_out: bool,
    /// Ready pods according to the workload's status.
    pub ready: u32,
}

/// What injection and the restart marks read of a pod template.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Template {
    pub labels: Pairs,
    pub annotations: Pairs,
    pub containers: Vec<ContainerShape>,
    pub host_network: bool,
}

/// A container as the injector's plan reads it: its name, and which of its variables come from
/// `valueFrom` (those cannot be extended with a language agent's options).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerShape {
    pub name: String,
    pub value_from_env: Vec<String>,
}

/// String pairs sorted by key: a label or annotation map in one allocation (a `BTreeMap` takes a
/// ~540-byte node for even one entry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(String, String)]>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The pairs as the map k8s-openapi objects carry (`None` when empty).
    pub fn to_map(&self) -> Option<BTreeMap<String, String>> {
        (!self.0.is_empty()).then(|| self.0.iter().cloned().collect())
    }
}

impl From<BTreeMap<String, String>> for Pairs {
    /// A `BTreeMap` iterates in key order: the pairs come out sorted.
    fn from(map: BTreeMap<String, String>) -> Pairs {
        Pairs(map.into_iter().collect())
    }
}

impl Workload {
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            kind: self.kind,
            name: self.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// The pod the webhook will see when the workload creates one: owned by the workload (so the
    /// service name and hash are derived as for real pods), with the template's labels,
    /// annotations and containers (names and `valueFrom` variables only).
    pub fn template_pod(&self) -> Pod {
        let t = &self.template;
        let metadata = ObjectMeta {
            namespace: self.metadata.namespace.clone(),
            labels: t.labels.to_map(),
            annotations: t.annotations.to_map(),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: self.kind.as_str().into(),
                name: self.metadata.name.clone().unwrap_or_default(),
                uid: self.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let containers = t.containers.iter().map(ContainerShape::to_container).collect();
        let spec = PodSpec { containers, host_network: t.host_network.then_some(true), ..Default::default() };
        Pod { metadata, spec: Some(spec), status: None }
    }

    fn new(
        kind: WorkloadKind,
        metadata: &ObjectMeta,
        template: &PodTemplateSpec,
        rolled_out: bool,
        ready: i32,
    ) -> Self {
        Workload {
            kind,
            metadata: ObjectMeta {
                name: metadata.name.clone(),
                namespace: metadata.namespace.clone(),
                uid: metadata.uid.clone(),
                // kube's watcher resumes from the last object's resource version: a cached
                // summary without one fails the watch ("no metadata.resourceVersion").
                resource_version: metadata.resource_version.clone(),
                generation: metadata.generation,
                deletion_timestamp: metadata.deletion_timestamp.clone(),
                ..Default::default()
            },
            template: Template::from(template),
            rolled_out,
            ready: u32::try_from(ready).unwrap_or_default(),
        }
    }
}

impl From<&PodTemplateSpec> for Template {
    fn from(template: &PodTemplateSpec) -> Template {
        let meta = template.metadata.as_ref();
        let pairs = |map: Option<&BTreeMap<String, String>>| Pairs::from(map.cloned().unwrap_or_default());
        let spec = template.spec.as_ref();
        Template {
            labels: pairs(meta.and_then(|m| m.labels.as_ref())),
            annotations: pairs(meta.and_then(|m| m.annotations.as_ref())),
            containers: spec.map(|s| s.containers.iter().map(ContainerShape::from).collect()).unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        }
    }
}

impl From<&Container> for ContainerShape {
    fn from(c: &Container) -> ContainerShape {
        let value_from = c.env.iter().flatten().filter(|e| e.value_from.is_some()).map(|e| e.name.clone());
        ContainerShape { name: c.name.clone(), value_from_env: value_from.collect() }
    }
}

impl ContainerShape {
    fn to_container(&self) -> Container {
        let env = self
            .value_from_env
            .iter()
            .map(|name| EnvVar { name: name.clone(), value: None, value_from: Some(EnvVarSource::default()) })
            .collect::<Vec<_>>();
        Container { name: self.name.clone(), env: (!env.is_empty()).then_some(env), ..Default::default() }
    }
}

impl From<&Deployment> for Workload {
    fn from(d: &Deployment) -> Workload {
        let generation = d.metadata.generation.unwrap_or_default();
        let want = d.spec.replicas.unwrap_or(1);
        let rolled_out = d.status.as_ref().is_some_and(|s| {
            s.observed_generation.unwrap_or_default() >= generation
                && s.updated_replicas.unwrap_or_default() >= want
                && s.replicas.unwrap_or_default() == want
                && s.available_replicas.unwrap_or_default() >= want
        });
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or_default();
        Workload::new(WorkloadKind::Deployment, &d.metadata, &d.spec.template, rolled_out, ready)
    }
}

impl From<&StatefulSet> for Workload {
    fn from(st: &StatefulSet) -> Workload {
        let generation = st.metadata.generation.unwrap_or_default();
        let want = st.spec.replicas.unwrap_or(1);
        let rolled_out = st.status.as_ref().is_some_and(|s| {
            s.observed_generation.unwrap_or_default() >= generation
                && s.update_revision.is_some()
                && s.current_revision == s.update_revision
                && s.updated_replicas.unwrap_or_default() >= want
                && s.ready_replicas.unwrap_or_default() >= want
        });
        let ready = st.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or_default();
        Workload::new(WorkloadKind::StatefulSet, &st.metadata, &st.spec.template, rolled_out, ready)
    }
}

impl From<&DaemonSet> for Workload {
    fn from(ds: &DaemonSet) -> Workload {
        let generation = ds.metadata.generation.unwrap_or_default();
        let rolled_out = ds.status.as_ref().is_some_and(|s| {
            s.observed_generation.unwrap_or_default() >= generation
                && s.updated_number_scheduled.unwrap_or_default() >= s.desired_number_scheduled
                && s.number_available.unwrap_or_default() >= s.desired_number_scheduled
        });
        let ready = ds.status.as_ref().map(|s| s.number_ready).unwrap_or_default();
        Workload::new(WorkloadKind::DaemonSet, &ds.metadata, &ds.spec.template, rolled_out, ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::keys::{CONTAINER_NAMES_ANNOTATION, LANGUAGE_ANNOTATION};
    use crate::api::TracingPolicy;
    use crate::inject::{expected_manifest_hash, InjectOptions};
    use serde_json::json;

    fn policy() -> TracingPolicy {
        serde_yaml::from_str(include_str!("../../config/samples/tracingpolicy.yaml")).unwrap()
    }

    /// A Deployment with everything a real one carries: images, probes, resources, ports,
    /// volumes, literal and `valueFrom` variables, a proxy container.
    fn rich_deployment(host_network: bool, language: &str) -> Deployment {
        let container = |name: &str, env: serde_json::Value| {
            json!({
                "name": name, "image": format!("shop/{name}:1.2.3"), "env": env,
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            })
        };
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "d1", "generation": 4, "resourceVersion": "77",
                "labels": {"team": "shop"}, "annotations": {"deployment.kubernetes.io/revision": "3"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "web", "tier": "front"},
                        "annotations": {LANGUAGE_ANNOTATION: language, CONTAINER_NAMES_ANNOTATION: "app,side"}
                    },
                    "spec": {
                        "hostNetwork": host_network,
                        "containers": [
                            container("app", json!([
                                {"name": "JAVA_TOOL_OPTIONS", "valueFrom": {"configMapKeyRef": {"name": "jvm", "key": "opts"}}},
                                {"name": "MODE", "value": "prod"}
                            ])),
                            container("side", json!([{"name": "NODE_OPTIONS", "value": "--max-old-space-size=100"}])),
                            container("istio-proxy", json!([]))
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}]
                    }
                }
            },
            "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "readyReplicas": 2}
        }))
        .unwrap()
    }

    /// The pod the webhook would see from the full template (what the summary stands in for).
    fn full_template_pod(d: &Deployment) -> Pod {
        let mut pod = Workload::from(d).template_pod();
        pod.spec = d.spec.template.spec.clone();
        pod
    }

    #[test]
    fn the_summary_gives_the_manifest_hash_of_the_full_template() {
        let options = InjectOptions::default();
        let mut seen = std::collections::BTreeSet::new();
        for host_network in [false, true] {
            for language in ["java", "app=java,side=nodejs", "side=python", ""] {
                let d = rich_deployment(host_network, language);
                let full = expected_manifest_hash(&full_template_pod(&d), &policy(), &options);
                let summary = expected_manifest_hash(&Workload::from(&d).template_pod(), &policy(), &options);
                assert!(full.is_some());
                assert_eq!(summary, full, "hostNetwork {host_network}, languages {language:?}");
                seen.insert(full);
            }
        }
        // The cases differ in what the hash reads (ports with hostNetwork, languages, a Java
        // agent skipped for its valueFrom variable): the comparison covers distinct hashes.
        assert!(seen.len() >= 4, "only {} distinct hashes", seen.len());
    }

    #[test]
    fn the_summary_keeps_identity_template_marks_and_shapes_only() {
        let w = Workload::from(&rich_deployment(false, "java"));
        assert_eq!(w.id(), WorkloadId { namespace: "shop".into(), kind: WorkloadKind::Deployment, name: "web".into() });
        let meta = &w.metadata;
        assert_eq!((meta.uid.as_deref(), meta.generation), (Some("d1"), Some(4)));
        assert_eq!(meta.resource_version.as_deref(), Some("77"), "kube's watcher resumes from it");
        assert_eq!((&meta.labels, &meta.annotations, &meta.managed_fields), (&None, &None, &None));
        assert_eq!(w.template.labels.iter().collect::<Vec<_>>(), vec![("app", "web"), ("tier", "front")]);
        assert_eq!(w.template.annotations.get(LANGUAGE_ANNOTATION), Some("java"));
        assert_eq!(w.template.labels.get("missing"), None);
        let shapes: Vec<(&str, &[String])> =
            w.template.containers.iter().map(|c| (c.name.as_str(), c.value_from_env.as_slice())).collect();
        assert_eq!(
            shapes,
            vec![("app", &["JAVA_TOOL_OPTIONS".to_string()][..]), ("side", &[][..]), ("istio-proxy", &[][..])]
        );
        assert!((w.rolled_out, w.ready) == (true, 2));
    }

    #[test]
    fn rolled_out_follows_each_kinds_status() {
        let mut d = rich_deployment(false, "");
        d.status.as_mut().unwrap().updated_replicas = Some(1);
        assert!(!Workload::from(&d).rolled_out, "a Deployment with an old pod left");
        let st: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "serviceName": "db", "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                       "currentRevision": "db-1", "updateRevision": "db-2"}
        }))
        .unwrap();
        let w = Workload::from(&st);
        assert_eq!((w.kind, w.rolled_out, w.ready), (WorkloadKind::StatefulSet, false, 2), "revisions differ");
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "node", "namespace": "ops", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                       "numberAvailable": 3, "numberReady": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0}
        }))
        .unwrap();
        let w = Workload::from(&ds);
        assert_eq!((w.kind, w.rolled_out, w.ready), (WorkloadKind::DaemonSet, true, 3));
    }

    /// Bytes a summary holds: inline plus what its strings and slices allocate.
    fn footprint(w: &Workload) -> usize {
        let s = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        let pairs = |p: &Pairs| {
            p.0.len() * std::mem::size_of::<(String, String)>()
                + p.0.iter().map(|(k, v)| k.capacity() + v.capacity()).sum::<usize>()
        };
        let containers = w.template.containers.capacity() * std::mem::size_of::<ContainerShape>()
            + w.template.containers.iter().map(|c| c.name.capacity() + c.value_from_env.capacity() * 24).sum::<usize>()
            + w.template.containers.iter().flat_map(|c| &c.value_from_env).map(String::capacity).sum::<usize>();
        std::mem::size_of::<Workload>()
            + s(&w.metadata.name)
            + s(&w.metadata.namespace)
            + s(&w.metadata.uid)
            + s(&w.metadata.resource_version)
            + pairs(&w.template.labels)
            + pairs(&w.template.annotations)
            + containers
    }

    #[test]
    fn a_summary_costs_a_fraction_of_the_object() {
        let d = rich_deployment(false, "java");
        let bytes = footprint(&Workload::from(&d));
        // The Deployment's inline size alone is ~2.5 KiB, and each of its 3 containers ~2.3 KiB.
        let object_inline = std::mem::size_of::<Deployment>() + 3 * std::mem::size_of::<Container>();
        assert!(bytes < 1024, "{bytes} bytes");
        assert!(bytes * 8 < object_inline, "{bytes} bytes against {object_inline} inline in the object");
    }
}
