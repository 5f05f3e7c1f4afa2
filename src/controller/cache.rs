//! What the controller keeps of the pods it watches: only the fields its decisions read, so a
//! cache of thousands of pods stays small. Pods are decoded into [`CachedPod`], which skips
//! their spec and most of their status while the watch's JSON is read (nothing else of them is
//! ever allocated).

use crate::api::keys::MANIFEST_HASH_ANNOTATION;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

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
}
