//! What the controller keeps of the pods and workloads it watches: only the fields its decisions
//! read, so caches of thousands of them stay small. Pods are decoded into [`CachedPod`], which
//! skips their spec and most of their status while the watch's JSON is read (nothing else of
//! them is ever allocated). Workloads are decoded whole, one at a time, and kept as the rollout's
//! [`Workload`] summary ([`CachedWorkload`]).

use crate::api::keys::MANIFEST_HASH_ANNOTATION;
use crate::rollout::workload::Workload;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
use std::marker::PhantomData;

/// A pod as the controller caches it: its metadata (owner, labels, injection annotations: what
/// coverage counts read) and its containers' restart state (the health of a restart in flight).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default)]
    pub container_statuses: Vec<CachedContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    pub name: String,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub state: Option<CachedContainerState>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedContainerState {
    #[serde(default)]
    pub waiting: Option<CachedWaiting>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedWaiting {
    #[serde(default)]
    pub reason: Option<String>,
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// Drops what no decision reads from the metadata, before the pod enters the cache: managed
    /// fields (most of a pod's metadata), the generated-name prefix and resource version, every
    /// annotation but the manifest hash (the webhook's and a restart's own marks), and of the
    /// owner references all but the kind, name and controller flag the owner walk reads. Labels
    /// all stay: a policy's pod selector may match any of them.
    pub fn slim(&mut self) {
        let meta = &mut self.metadata;
        meta.managed_fields = None;
        meta.generate_name = None;
        meta.resource_version = None;
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.retain(|key, _| key == MANIFEST_HASH_ANNOTATION);
        }
        for owner in meta.owner_references.iter_mut().flatten() {
            owner.api_version = String::new();
            owner.uid = String::new();
            owner.block_owner_deletion = None;
        }
    }

    /// The pod with what the cache kept of it (no spec), for the pure health check.
    pub fn to_pod(&self) -> Pod {
        let statuses = self.status.iter().flat_map(|s| &s.container_statuses);
        let container_statuses = statuses
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                restart_count: c.restart_count,
                state: c.state.as_ref().map(|s| ContainerState {
                    waiting: s
                        .waiting
                        .as_ref()
                        .map(|w| ContainerStateWaiting { reason: w.reason.clone(), message: None }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        Pod {
            metadata: self.metadata.clone(),
            spec: None,
            status: Some(PodStatus { container_statuses: Some(container_statuses), ..Default::default() }),
        }
    }
}

/// A workload of kind `K` (Deployment, StatefulSet, DaemonSet) as the controller caches it: the
/// rollout's [`Workload`] summary, decoded from the full object, which is then dropped.
#[derive(Debug)]
pub struct CachedWorkload<K> {
    pub workload: Workload,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for CachedWorkload<K> {
    fn clone(&self) -> Self {
        CachedWorkload { workload: self.workload.clone(), kind: PhantomData }
    }
}

impl<'de, K> Deserialize<'de> for CachedWorkload<K>
where
    K: Deserialize<'de>,
    for<'k> &'k K: Into<Workload>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let full = K::deserialize(deserializer)?;
        Ok(CachedWorkload { workload: (&full).into(), kind: PhantomData })
    }
}

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for CachedWorkload<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Resource> k8s_openapi::Metadata for CachedWorkload<K> {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.workload.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.workload.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{observe, Health};
    use k8s_openapi::jiff::Timestamp;

    fn decoded(restarts: i32, waiting: &str) -> CachedPod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1-7d9c5-x2k4p", "generateName": "web-1-7d9c5-", "namespace": "shop",
                "uid": "u1", "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "7d9c5"},
                "annotations": {"tracelight.io/manifest-hash": "h1", "tracelight.io/policy": "default"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1-7d9c5", "uid": "rs1",
                    "controller": true, "blockOwnerDeletion": true
                }],
                "managedFields": [{"manager": "kcm", "operation": "Update"}]
            },
            "spec": {"containers": [{"name": "app", "image": "shop/web:1"}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "app", "image": "shop/web:1", "imageID": "", "ready": false,
                    "restartCount": restarts, "state": {"waiting": {"reason": waiting}}
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_pod_keeps_metadata_and_restart_state_only() {
        let mut pod = decoded(1, "ContainerCreating");
        pod.slim();
        let meta = &pod.metadata;
        assert_eq!((&meta.managed_fields, &meta.generate_name, &meta.resource_version), (&None, &None, &None));
        assert_eq!(meta.labels.as_ref().unwrap()["app"], "web");
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.into_iter().collect::<Vec<_>>(), vec![(MANIFEST_HASH_ANNOTATION.into(), "h1".into())]);
        assert_eq!(meta.uid.as_deref(), Some("u1"), "reports are looked up by uid");
        let workload = crate::inject::workload_of(meta);
        assert_eq!(
            workload.map(|w| (w.kind, w.name)),
            Some(("Deployment".into(), "web-1".into())),
            "the owner walk still works"
        );
        let statuses = &pod.status.as_ref().unwrap().container_statuses;
        assert_eq!((statuses[0].name.as_str(), statuses[0].restart_count), ("app", 1));
    }

    #[test]
    fn health_reads_the_cached_restart_state() {
        let since = Timestamp::UNIX_EPOCH;
        let crashing = decoded(1, "CrashLoopBackOff").to_pod();
        assert!(matches!(observe::health(&[&crashing], since), Health::Failing(_)));
        let restarted = decoded(3, "ContainerCreating").to_pod();
        assert!(matches!(observe::health(&[&restarted], since), Health::Failing(_)));
        let fine = decoded(0, "ContainerCreating").to_pod();
        assert_eq!(observe::health(&[&fine], since), Health::Healthy);
    }

    #[test]
    fn a_cached_workload_is_decoded_into_the_rollout_summary() {
        use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
        let object = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "d1", "generation": 2, "resourceVersion": "9",
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"tracelight.io/restart-hash": "h1"}},
                "spec": {"containers": [{"name": "web", "image": "shop/web:1"}]}
            }},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1}
        });
        let cached: CachedWorkload<Deployment> = serde_json::from_value(object.clone()).unwrap();
        let w = &cached.workload;
        assert_eq!(kube::Resource::meta(&cached).name.as_deref(), Some("web"), "the store keys it by name");
        assert_eq!((w.metadata.resource_version.as_ref(), w.metadata.managed_fields.as_ref()), (None, None));
        assert_eq!(w.template.annotations.get("tracelight.io/restart-hash"), Some("h1"));
        assert_eq!((w.rolled_out, w.ready, w.template.containers.len()), (true, 1, 1));
        // List items come without apiVersion and kind.
        let mut item = object.clone();
        item.as_object_mut().unwrap().retain(|k, _| k != "apiVersion" && k != "kind");
        let listed: CachedWorkload<Deployment> = serde_json::from_value(item).unwrap();
        assert_eq!(listed.workload, cached.workload);
        // An object of another kind is refused, not cached under the wrong one.
        assert!(serde_json::from_value::<CachedWorkload<DaemonSet>>(object).is_err());
    }
}
