//! The webhook's in-memory view of Namespaces and TracingPolicies.
//!
//! Fed by kube-runtime reflectors so that admission only does synchronous lookups and never
//! waits on the API server. Tests and benchmarks build it from plain vectors instead.

use crate::api::TracingPolicy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Synchronous lookups of the namespaces and policies admission needs.
#[derive(Clone)]
pub struct Index {
    namespaces: Store<Namespace>,
    policies: Store<TracingPolicy>,
    namespaces_synced: Arc<AtomicBool>,
    policies_synced: Arc<AtomicBool>,
}

impl Index {
    /// An index that already holds exactly these objects (unit tests, benchmarks).
    pub fn from_objects(namespaces: Vec<Namespace>, policies: Vec<TracingPolicy>) -> Self {
        Index {
            namespaces: filled_store(namespaces),
            policies: filled_store(policies),
            namespaces_synced: Arc::new(AtomicBool::new(true)),
            policies_synced: Arc::new(AtomicBool::new(true)),
        }
    }

    /// An index kept up to date by watches on the cluster. The returned future drives the
    /// watches (retrying with backoff on errors) and must be spawned; it never completes.
    pub fn watch(client: Client) -> (Index, impl Future<Output = ()> + Send + 'static) {
        let (namespaces, ns_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let index = Index {
            namespaces,
            policies,
            namespaces_synced: Arc::new(AtomicBool::new(false)),
            policies_synced: Arc::new(AtomicBool::new(false)),
        };
        let ns_driver =
            drive(Api::<Namespace>::all(client.clone()), ns_writer, index.namespaces_synced.clone(), |_| {});
        let policy_driver = drive(
            Api::<TracingPolicy>::all(client),
            policy_writer,
            index.policies_synced.clone(),
            crate::api::legacy::forget_legacy_defaults,
        );
        let driver = async move {
            futures::future::join(ns_driver, policy_driver).await;
        };
        (index, driver)
    }

    /// The namespace called `name`, if it exists (as far as the watch has seen).
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    /// Every known policy, in no particular order (`decide` picks the governing one).
    pub fn policies(&self) -> Vec<Arc<TracingPolicy>> {
        self.policies.state()
    }

    /// Both stores have received their initial list: lookups now reflect the cluster.
    pub fn ready(&self) -> bool {
        self.namespaces_synced.load(Ordering::Acquire) && self.policies_synced.load(Ordering::Acquire)
    }
}

impl Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("namespaces", &self.namespaces.len())
            .field("policies", &self.policies.len())
            .field("ready", &self.ready())
            .finish()
    }
}

fn filled_store<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// Runs one watch into `writer` forever, flagging `synced` once the first full list has arrived.
/// `prepare` runs on each object before its managed fields are dropped.
async fn drive<K>(api: Api<K>, writer: reflector::store::Writer<K>, synced: Arc<AtomicBool>, prepare: fn(&mut K))
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = K::kind(&());
    let reader = writer.as_reader();
    let mark_ready = async move {
        if reader.wait_until_ready().await.is_ok() {
            synced.store(true, Ordering::Release);
            tracing::info!(%kind, objects = reader.len(), "webhook index synced");
        }
    };
    let events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        // Managed fields are large and never read by admission.
        .modify(move |obj: &mut K| {
            prepare(obj);
            obj.meta_mut().managed_fields = None;
        })
        .reflect(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, kind = %K::kind(&()), "webhook index watch failed; retrying");
            }
        });
    futures::future::join(mark_ready, events).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn namespace(name: &str) -> Namespace {
        Namespace { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn index_from_objects_answers_lookups_and_is_ready() {
        let index = Index::from_objects(vec![namespace("shop"), namespace("web")], vec![]);
        assert!(index.ready());
        assert_eq!(index.namespace("shop").and_then(|ns| ns.metadata.name.clone()).as_deref(), Some("shop"));
        assert!(index.namespace("missing").is_none());
        assert!(index.policies().is_empty());
    }
}
