//! What the controller keeps of the pods and workloads it watches: only the fields its decisions
//! read, so caches of thousands of them stay small. Workloads are decoded whole, one at a time,
//! and kept as the rollout's [`Workload`] summary ([`CachedWorkload`]); pods as a [`PodSummary`]
//! each.
//!
//! The watch decodes each pod as a [`WatchedPod`]: its JSON goes straight into the summary
//! (the spec, the managed fields, every annotation but the manifest hash and most of the status
//! are skipped as they are read, never allocated), beside the name, namespace and resource
//! version kube's watcher reads from an `ObjectMeta`. [`summarize`] then drops that metadata
//! before the reflector stores the pod: the store keys pods by the summary's own name and
//! namespace (its [`Lookup`] impl), so a cached pod holds no `ObjectMeta` (360 bytes inline).
//!
//! A typical cached pod (3 labels, a manifest hash, a ReplicaSet owner, one container) costs 392
//! bytes: 168 inline and 224 of heap (measured by the size test below), where the `CachedPod`
//! this replaced cost ~1.8 KiB (384 inline, ~1.45 KiB of heap: two B-tree nodes for the label and
//! annotation maps, the owner reference, the container status). The store adds its key (kube's
//! `ObjectRef`: 96 bytes and a copy of the name and namespace) and the `Arc` around the pod.

use crate::api::keys::{MANIFEST_HASH_ANNOTATION, STATUS_ANNOTATION};
use crate::rollout::pod::{ContainerRestarts, Labels, Owner, PodSummary};
use crate::rollout::workload::Workload;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher::Event;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// A pod as the watch decodes it: its summary, and the metadata kube's watcher reads (name,
/// namespace, resource version; nothing else of the `ObjectMeta` is set).
#[derive(Clone, Debug)]
pub struct WatchedPod {
    pub metadata: ObjectMeta,
    pub pod: PodSummary,
}

/// The summaries of a watch event's pods, for the store.
pub fn summarize(event: Event<WatchedPod>) -> Event<PodSummary> {
    match event {
        Event::Apply(p) => Event::Apply(p.pod),
        Event::Delete(p) => Event::Delete(p.pod),
        Event::InitApply(p) => Event::InitApply(p.pod),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// Whether a pod event can change a policy's coverage counts (injected, outdated, skipped,
/// missed): a pod appearing or going away, or a change of its manifest hash, skip record, owner or
/// deletion. Container restarts and readiness move the rollout's health, which the workload
/// watches already follow; they do not need a status update of their own.
pub fn changes_counts(before: Option<&PodSummary>, event: &Event<PodSummary>) -> bool {
    match event {
        Event::Apply(pod) | Event::InitApply(pod) => before.is_none_or(|old| {
            old.uid != pod.uid
                || old.manifest_hash != pod.manifest_hash
                || old.skipped != pod.skipped
                || old.deleting != pod.deleting
                || old.owner != pod.owner
        }),
        Event::Delete(_) => true,
        Event::Init | Event::InitDone => false,
    }
}

impl k8s_openapi::Resource for WatchedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for WatchedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The store keys a pod by its name and namespace; no resource version or uid is copied into
/// the key (the store ignores them).
impl Lookup for PodSummary {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let RawPod { metadata: m, status } = RawPod::deserialize(deserializer)?;
        let labels = m.labels.map(|l| l.0).unwrap_or_default();
        let statuses = status.and_then(|s| s.container_statuses).unwrap_or_default();
        let annotations = m.annotations.unwrap_or_default();
        let pod = PodSummary {
            namespace: m.namespace.as_deref().unwrap_or_default().into(),
            name: m.name.as_deref().unwrap_or_default().into(),
            uid: m.uid.unwrap_or_default().into(),
            owner: Owner::of(&m.owner_references.unwrap_or_default(), &labels),
            labels,
            manifest_hash: annotations.0,
            created: m.creation_timestamp.map(|t| t.0),
            deleting: m.deletion_timestamp.is_some(),
            skipped: annotations.1,
            containers: statuses.into_iter().map(RawContainerStatus::into_restarts).collect(),
        };
        let metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            resource_version: m.resource_version,
            ..Default::default()
        };
        Ok(WatchedPod { metadata, pod })
    }
}

/// The fields of a pod the summary is made of; serde skips the others (spec, managed fields...).
#[derive(Deserialize)]
struct RawPod {
    metadata: RawMeta,
    #[serde(default)]
    status: Option<RawStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    labels: Option<RawLabels>,
    #[serde(default)]
    annotations: Option<ManifestHash>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    #[serde(default)]
    container_statuses: Option<Vec<RawContainerStatus>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainerStatus {
    name: String,
    #[serde(default)]
    restart_count: i32,
    #[serde(default)]
    state: Option<RawContainerState>,
}

#[derive(Deserialize)]
struct RawContainerState {
    #[serde(default)]
    waiting: Option<RawWaiting>,
}

#[derive(Deserialize)]
struct RawWaiting {
    #[serde(default)]
    reason: Option<String>,
}

impl RawContainerStatus {
    fn into_restarts(self) -> ContainerRestarts {
        let waiting = self.state.and_then(|s| s.waiting).and_then(|w| w.reason);
        ContainerRestarts {
            name: self.name.into(),
            restart_count: self.restart_count,
            waiting: waiting.map(Into::into),
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

/// The labels map, read into [`Labels`].
struct RawLabels(Labels);

impl<'de> Deserialize<'de> for RawLabels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = RawLabels;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of labels")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawLabels, A::Error> {
                let mut pairs: Vec<(Cow<'de, str>, Cow<'de, str>)> = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<CowStr, CowStr>()? {
                    pairs.push((key.0, value.0));
                }
                Ok(RawLabels(pairs.into_iter().collect()))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// Of the annotations map, the manifest hash's value and whether the injection status is set.
#[derive(Default)]
struct ManifestHash(Option<Box<str>>, bool);

impl<'de> Deserialize<'de> for ManifestHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Annotations;
        impl<'de> Visitor<'de> for Annotations {
            type Value = ManifestHash;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ManifestHash, A::Error> {
                let mut hash = None;
                let mut skipped = false;
                while let Some(key) = map.next_key::<CowStr>()? {
                    if key.0 == MANIFEST_HASH_ANNOTATION {
                        hash = Some(map.next_value::<CowStr>()?.0.into());
                    } else {
                        skipped |= key.0 == STATUS_ANNOTATION;
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ManifestHash(hash, skipped))
            }
        }
        deserializer.deserialize_map(Annotations)
    }
}

/// A string borrowed from the input where it has no escapes, copied otherwise.
struct CowStr<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = CowStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E>(self, s: String) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(Str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::keys::INJECTED_LABEL;
    use crate::rollout::{observe, Health, WorkloadKind};
    use k8s_openapi::jiff::Timestamp;

    /// A pod as the watch sends it: a Deployment's (through its ReplicaSet), injected.
    fn watched(restarts: i32, waiting: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1-7d9c5b8f4-x2k4p", "generateName": "web-1-7d9c5b8f4-", "namespace": "shop",
                "uid": "5f0c9c1e-3b5a-4d7e-9a3c-2f1e8d7c6b5a", "resourceVersion": "421337",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "7d9c5b8f4", INJECTED_LABEL: "true"},
                "annotations": {
                    MANIFEST_HASH_ANNOTATION: "0123456789abcdef", "tracelight.io/policy": "default",
                    "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1-7d9c5b8f4", "uid": "rs1",
                    "controller": true, "blockOwnerDeletion": true
                }],
                "managedFields": [{"manager": "kcm", "operation": "Update", "fieldsV1": {"f:metadata": {}}}]
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
        })
    }

    fn decoded(restarts: i32, waiting: &str) -> WatchedPod {
        // From text, as the watch reads it (strings borrowed where they can be).
        serde_json::from_str(&watched(restarts, waiting).to_string()).unwrap()
    }

    #[test]
    fn the_watch_decodes_a_pod_into_its_summary() {
        let WatchedPod { metadata, pod } = decoded(1, "ContainerCreating");
        assert_eq!(
            metadata,
            ObjectMeta {
                name: Some("web-1-7d9c5b8f4-x2k4p".into()),
                namespace: Some("shop".into()),
                resource_version: Some("421337".into()),
                ..Default::default()
            },
            "kube's watcher reads the resource version; nothing else of the metadata is kept"
        );
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let want = PodSummary {
            namespace: "shop".into(),
            name: "web-1-7d9c5b8f4-x2k4p".into(),
            uid: "5f0c9c1e-3b5a-4d7e-9a3c-2f1e8d7c6b5a".into(),
            owner: Some(Owner { kind: WorkloadKind::Deployment, name: "web-1".into() }),
            labels: [("app", "web"), ("pod-template-hash", "7d9c5b8f4"), (INJECTED_LABEL, "true")]
                .into_iter()
                .collect(),
            manifest_hash: Some("0123456789abcdef".into()),
            created: Some(created),
            deleting: false,
            skipped: false,
            containers: [ContainerRestarts {
                name: "app".into(),
                restart_count: 1,
                waiting: Some("ContainerCreating".into()),
            }]
            .into(),
        };
        assert_eq!(pod, want);
        assert_eq!(pod.labels.len(), 3, "all labels stay: a pod selector may match any");
        assert!(pod.injected());
        // The same summary as from the whole pod.
        let full: Pod = serde_json::from_value(watched(1, "ContainerCreating")).unwrap();
        assert_eq!(PodSummary::from_pod(&full), want);
    }

    #[test]
    fn a_deleted_pod_and_one_without_optional_fields_decode() {
        let mut v = watched(0, "x");
        v["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z".into();
        v["metadata"]["annotations"] = serde_json::json!({"other": "x"});
        v["metadata"]["labels"] = serde_json::Value::Null;
        v["metadata"]["ownerReferences"][0]["kind"] = "Job".into();
        v["status"] = serde_json::json!({"phase": "Pending"});
        let pod = serde_json::from_value::<WatchedPod>(v.clone()).unwrap().pod;
        assert!(pod.deleting);
        assert_eq!(pod.manifest_hash, None, "no other annotation is kept");
        assert!(!pod.skipped);
        v["metadata"]["annotations"] =
            serde_json::json!({"tracelight.io/injection-status": "skipped: port_conflict: x"});
        let skipped: WatchedPod = serde_json::from_value(v).unwrap();
        assert!(skipped.pod.skipped, "the webhook's skip record is read");
        assert!(pod.labels.is_empty());
        assert_eq!(pod.owner, None, "a Job's pod belongs to no workload the rollout restarts");
        assert!(pod.containers.is_empty());
        // Escaped strings are copied, not borrowed.
        let escaped = r#"{"metadata": {"name": "p", "labels": {"a\"b": "c\u00e9"}}}"#;
        let pod = serde_json::from_str::<WatchedPod>(escaped).unwrap().pod;
        assert_eq!(pod.labels.get("a\"b"), Some("cé"));
    }

    #[test]
    fn only_pod_events_that_move_the_counts_wake_the_policies() {
        let pod = decoded(0, "x").pod;
        let apply = |p: &PodSummary| Event::Apply(p.clone());
        assert!(changes_counts(None, &apply(&pod)), "a new pod");
        assert!(changes_counts(None, &Event::InitApply(pod.clone())), "a pod first seen in a relist");
        assert!(changes_counts(Some(&pod), &Event::Delete(pod.clone())), "a pod gone");
        let restarted = decoded(3, "CrashLoopBackOff").pod;
        assert!(!changes_counts(Some(&pod), &apply(&restarted)), "restarts are the workload watch's business");
        assert!(!changes_counts(Some(&pod), &Event::InitApply(pod.clone())), "a relist of an unchanged pod");
        for changed in [
            PodSummary { manifest_hash: None, ..pod.clone() },
            PodSummary { skipped: true, ..pod.clone() },
            PodSummary { deleting: true, ..pod.clone() },
            PodSummary { owner: None, ..pod.clone() },
            PodSummary { uid: "recreated".into(), ..pod.clone() },
        ] {
            assert!(changes_counts(Some(&pod), &apply(&changed)), "{changed:?}");
        }
        assert!(!changes_counts(None, &Event::Init) && !changes_counts(None, &Event::InitDone));
    }

    #[test]
    fn the_store_keys_pods_by_namespace_and_name() {
        let pod = decoded(0, "x").pod;
        let key = pod.to_object_ref(());
        assert_eq!((key.name.as_str(), key.namespace.as_deref()), ("web-1-7d9c5b8f4-x2k4p", Some("shop")));
        assert_eq!((key.extra.uid, key.extra.resource_version), (None, None), "not copied into the key");
        let (store, mut writer) = kube::runtime::reflector::store::<PodSummary>();
        writer.apply_watcher_event(&summarize(Event::Apply(decoded(0, "x"))));
        writer.apply_watcher_event(&summarize(Event::Apply(decoded(2, "x"))));
        let cached = store.state();
        assert_eq!(cached.len(), 1, "the same pod replaced");
        assert_eq!(cached[0].containers[0].restart_count, 2);
        writer.apply_watcher_event(&summarize(Event::Delete(decoded(2, "x"))));
        assert!(store.state().is_empty());
    }

    /// A typical pod (3 labels, a manifest hash, a ReplicaSet owner, one container) costs at
    /// most 400 bytes with its heap (392 when written): 168 inline, and 224 of heap that is only
    /// the strings' bytes, the labels' offsets (8 bytes each) and the container's entry (40).
    /// The bound leaves no room for a field holding an `ObjectMeta` (360 bytes inline) or a
    /// `BTreeMap` (a ~0.5 KiB node); the old `CachedPod` cost ~1.8 KiB.
    #[test]
    fn a_cached_pod_is_small() {
        let pod = decoded(1, "ContainerCreating").pod;
        let inline = std::mem::size_of::<PodSummary>();
        let heap = pod.heap_bytes();
        assert!(inline + heap <= 400, "a cached pod costs {inline} + {heap} bytes");
        assert!(inline <= 176, "{inline} bytes inline");
        // The heap is what the strings hold, no more: the fields of the summary add up to it.
        let strings = ["shop", "web-1-7d9c5b8f4-x2k4p", "5f0c9c1e-3b5a-4d7e-9a3c-2f1e8d7c6b5a", "web-1"];
        let labels = "appwebpod-template-hash7d9c5b8f4tracelight.io/injectedtrue".len() + 3 * 8;
        let container = std::mem::size_of::<ContainerRestarts>() + "app".len() + "ContainerCreating".len();
        let want = strings.iter().map(|s| s.len()).sum::<usize>() + labels + "0123456789abcdef".len() + container;
        assert_eq!(heap, want);
    }

    #[test]
    fn health_reads_the_cached_restart_state() {
        let since = Timestamp::UNIX_EPOCH;
        let crashing = decoded(1, "CrashLoopBackOff").pod;
        assert!(matches!(observe::health(&[&crashing], since), Health::Failing(_)));
        let restarted = decoded(3, "ContainerCreating").pod;
        assert!(matches!(observe::health(&[&restarted], since), Health::Failing(_)));
        let fine = decoded(0, "ContainerCreating").pod;
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
        // kube's watcher resumes from the last object's resource version: without it every
        // event fails the watch ("no metadata.resourceVersion in watch result") and it relists.
        assert_eq!(kube::ResourceExt::resource_version(&cached).as_deref(), Some("9"));
        assert_eq!(w.metadata.managed_fields, None);
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
