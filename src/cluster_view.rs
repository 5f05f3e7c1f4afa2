//! The process's one watch on Namespaces and one on TracingPolicies, shared by the webhook and
//! the controllers.
//!
//! Every replica serves admission, so every replica watches both kinds; the leader's controllers
//! read the same stores and follow the same changes instead of watching a second time. Each
//! object is prepared once on its way in (legacy defaults forgotten, managed fields dropped: they
//! are large and nobody reads them).
//!
//! Changes fan out through a [`broadcast`] channel of object names rather than kube's shared
//! dispatcher: a subscriber that falls behind loses names (and catches up from the store, see
//! [`ClusterView::policy_triggers`]) instead of holding back the watch that admission depends
//! on. Tests and benchmarks build a view from plain vectors instead.

use crate::api::TracingPolicy;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Names of changed objects a subscriber may fall behind by before it resynchronizes from the
/// store (a namespace relabelled in bulk, a relist).
const CHANGE_BUFFER: usize = 1024;

/// One watched kind: its store, whether the first list arrived, and the names that change.
///
/// Readiness is our own flag, set by the one task that waits on the store's: kube's
/// `Store::wait_until_ready` wakes only the last of several concurrent waiters (its `DelayedInit`
/// keeps one waker), so the controller and the change subscribers must not wait on it together.
#[derive(Clone)]
struct Watched<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    synced: Arc<watch::Sender<bool>>,
    changes: broadcast::Sender<ObjectRef<K>>,
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(store: Store<K>, synced: bool) -> Self {
        Watched { store, synced: Arc::new(watch::Sender::new(synced)), changes: broadcast::channel(CHANGE_BUFFER).0 }
    }

    fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Returns once the first full list is in the store (never, if the watch is dropped first).
    async fn wait_synced(&self) -> bool {
        self.synced.subscribe().wait_for(|synced| *synced).await.is_ok()
    }

    /// Every object in the store once it is synced, then each object that changes (added,
    /// modified, relisted) as the store holds it. A subscriber that falls behind gets the whole
    /// store again. Deleted objects are not yielded.
    fn changed_objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static
    where
        K: Send + Sync,
    {
        // Subscribed before the store is read, so no change between the two is missed.
        let receiver = self.changes.subscribe();
        let watched = self.clone();
        futures::stream::unfold((receiver, watched, true), |(mut receiver, watched, mut resync)| async move {
            let store = watched.store.clone();
            loop {
                if resync {
                    if !watched.wait_synced().await {
                        return None;
                    }
                    return Some((futures::stream::iter(store.state()), (receiver, watched, false)));
                }
                match receiver.recv().await {
                    Ok(name) => {
                        if let Some(object) = store.get(&name) {
                            return Some((futures::stream::iter(vec![object]), (receiver, watched, false)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(kind = %K::kind(&()), missed, "change subscriber fell behind; resynchronizing");
                        resync = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .flatten()
    }
}

/// The API client and the process's view of the cluster, handed together to the webhook and the
/// controllers.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub view: ClusterView,
}

/// Synchronous lookups of the cluster's Namespaces and TracingPolicies, and their changes.
#[derive(Clone)]
pub struct ClusterView {
    namespaces: Watched<Namespace>,
    policies: Watched<TracingPolicy>,
}

impl ClusterView {
    /// A view that already holds exactly these objects and never changes (unit tests, benchmarks).
    pub fn from_objects(namespaces: Vec<Namespace>, policies: Vec<TracingPolicy>) -> Self {
        ClusterView {
            namespaces: Watched::new(filled_store(namespaces), true),
            policies: Watched::new(filled_store(policies), true),
        }
    }

    /// A view kept up to date by one watch per kind. The returned future drives the watches
    /// (retrying with backoff on errors) and must be spawned; it never completes.
    pub fn watch(client: Client) -> (ClusterView, impl Future<Output = ()> + Send + 'static) {
        let (namespace_store, namespace_writer) = reflector::store();
        let (policy_store, policy_writer) = reflector::store();
        let view = ClusterView {
            namespaces: Watched::new(namespace_store, false),
            policies: Watched::new(policy_store, false),
        };
        let namespaces =
            drive(Api::<Namespace>::all(client.clone()), namespace_writer, view.namespaces.clone(), |_| {});
        let policies = drive(
            Api::<TracingPolicy>::all(client),
            policy_writer,
            view.policies.clone(),
            // Before the managed fields go: they tell a legacy default from a pinned image.
            crate::api::legacy::forget_legacy_defaults,
        );
        let driver = async move {
            futures::future::join(namespaces, policies).await;
        };
        (view, driver)
    }

    /// The namespace called `name`, if it exists (as far as the watch has seen).
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.store.get(&ObjectRef::new(name))
    }

    /// Every known policy, in no particular order (`decide` picks the governing one).
    pub fn policies(&self) -> Vec<Arc<TracingPolicy>> {
        self.policies.store.state()
    }

    /// Both stores have received their initial list: lookups now reflect the cluster.
    pub fn ready(&self) -> bool {
        self.namespaces.is_synced() && self.policies.is_synced()
    }

    /// Returns once both stores hold their first full list.
    pub async fn wait_synced(&self) {
        self.namespaces.wait_synced().await;
        self.policies.wait_synced().await;
    }

    /// The namespace store, for the controllers' lookups.
    pub fn namespace_store(&self) -> Store<Namespace> {
        self.namespaces.store.clone()
    }

    /// The policy store, for the policy controller.
    pub fn policy_store(&self) -> Store<TracingPolicy> {
        self.policies.store.clone()
    }

    /// Every policy once the store is synced, then each policy that changes: the policy
    /// controller's trigger. A subscriber that falls behind gets the whole store again; deleted
    /// policies are not yielded.
    pub fn policy_triggers(&self) -> impl Stream<Item = Arc<TracingPolicy>> + Send + 'static {
        self.policies.changed_objects()
    }

    /// Every namespace once the store is synced, then each namespace that changes.
    pub fn namespace_changes(&self) -> impl Stream<Item = Arc<Namespace>> + Send + 'static {
        self.namespaces.changed_objects()
    }

    /// Subscribers to changes right now (tests).
    #[cfg(test)]
    fn subscribers(&self) -> usize {
        self.namespaces.changes.receiver_count() + self.policies.changes.receiver_count()
    }
}

impl Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("namespaces", &self.namespaces.store.len())
            .field("policies", &self.policies.store.len())
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

/// Tells subscribers which objects a watch event changed, once the store holds them: at once
/// for a change, and at the end of a (re)list for the objects it listed (until then the store
/// still holds the previous list). Nobody listening is fine: the send fails.
struct Announcer<K: Resource<DynamicType = ()>> {
    changes: broadcast::Sender<ObjectRef<K>>,
    listed: Vec<ObjectRef<K>>,
}

impl<K: Resource<DynamicType = ()>> Announcer<K> {
    fn new(changes: broadcast::Sender<ObjectRef<K>>) -> Self {
        Announcer { changes, listed: Vec::new() }
    }

    fn announce(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) => {
                let _ = self.changes.send(ObjectRef::from_obj(object));
            }
            watcher::Event::Init => self.listed.clear(),
            watcher::Event::InitApply(object) => self.listed.push(ObjectRef::from_obj(object)),
            watcher::Event::InitDone => {
                for name in self.listed.drain(..) {
                    let _ = self.changes.send(name);
                }
                self.listed.shrink_to_fit();
            }
            watcher::Event::Delete(_) => {}
        }
    }
}

/// Runs one watch into `writer` forever, flagging `synced` once the first full list has arrived
/// and announcing every changed object. `prepare` runs on each object before its managed fields
/// are dropped.
async fn drive<K>(api: Api<K>, writer: reflector::store::Writer<K>, watched: Watched<K>, prepare: fn(&mut K))
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = K::kind(&());
    let reader = writer.as_reader();
    let synced = watched.synced.clone();
    let mark_ready = async move {
        if reader.wait_until_ready().await.is_ok() {
            synced.send_replace(true);
            tracing::info!(%kind, objects = reader.len(), "cluster view synced");
        }
    };
    let mut announcer = Announcer::new(watched.changes);
    let events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(move |obj: &mut K| {
            prepare(obj);
            obj.meta_mut().managed_fields = None;
        })
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(event) => announcer.announce(&event),
                Err(error) => tracing::warn!(%error, kind = %K::kind(&()), "watch failed; retrying"),
            }
            std::future::ready(())
        });
    futures::future::join(mark_ready, events).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use std::time::Duration;

    fn namespace(name: &str) -> Namespace {
        Namespace { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, ..Default::default() }
    }

    fn policy(name: &str, generation: i64) -> TracingPolicy {
        let mut p: TracingPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "tracelight.io/v1alpha1", "kind": "TracingPolicy",
            "metadata": {"name": name},
            "spec": {"collector": {"endpoint": "http://collector:4318", "protocol": "http/protobuf"}},
        }))
        .unwrap();
        p.metadata.generation = Some(generation);
        p
    }

    /// Feeds the policy store by hand, as the watch would.
    struct Feed {
        writer: reflector::store::Writer<TracingPolicy>,
        announcer: Announcer<TracingPolicy>,
        synced: Arc<watch::Sender<bool>>,
    }

    impl Feed {
        fn apply_policy_event(&mut self, event: watcher::Event<TracingPolicy>) {
            self.writer.apply_watcher_event(&event);
            if matches!(event, watcher::Event::InitDone) {
                self.synced.send_replace(true);
            }
            self.announcer.announce(&event);
        }
    }

    fn live_view() -> (ClusterView, Feed) {
        let (policy_store, writer) = reflector::store();
        let view = ClusterView {
            namespaces: Watched::new(filled_store(vec![]), true),
            policies: Watched::new(policy_store, false),
        };
        let announcer = Announcer::new(view.policies.changes.clone());
        let synced = view.policies.synced.clone();
        (view, Feed { writer, announcer, synced })
    }

    async fn next(stream: &mut (impl Stream<Item = Arc<TracingPolicy>> + Unpin)) -> Option<(String, i64)> {
        let item = tokio::time::timeout(Duration::from_secs(1), stream.next()).await.ok()??;
        Some((item.metadata.name.clone()?, item.metadata.generation?))
    }

    #[test]
    fn a_view_from_objects_answers_lookups_and_is_ready() {
        let view = ClusterView::from_objects(vec![namespace("shop"), namespace("web")], vec![]);
        assert!(view.ready());
        assert_eq!(view.namespace("shop").and_then(|ns| ns.metadata.name.clone()).as_deref(), Some("shop"));
        assert!(view.namespace("missing").is_none());
        assert!(view.policies().is_empty());
    }

    #[tokio::test]
    async fn triggers_yield_the_listed_policies_then_each_change() {
        let (view, mut feed) = live_view();
        let mut triggers = Box::pin(view.policy_triggers());
        // Nothing before the first list is complete.
        feed.apply_policy_event(watcher::Event::Init);
        feed.apply_policy_event(watcher::Event::InitApply(policy("a", 1)));
        assert_eq!(next(&mut triggers).await, None);
        feed.apply_policy_event(watcher::Event::InitDone);
        // The listed policy (from the store, once ready)...
        assert_eq!(next(&mut triggers).await, Some(("a".into(), 1)));
        // ...and again as the end of the list announces it.
        assert_eq!(next(&mut triggers).await, Some(("a".into(), 1)));
        feed.apply_policy_event(watcher::Event::Apply(policy("b", 1)));
        feed.apply_policy_event(watcher::Event::Apply(policy("a", 2)));
        assert_eq!(next(&mut triggers).await, Some(("b".into(), 1)));
        assert_eq!(next(&mut triggers).await, Some(("a".into(), 2)));
        // A deleted policy is not a trigger.
        feed.apply_policy_event(watcher::Event::Delete(policy("b", 1)));
        assert_eq!(next(&mut triggers).await, None);
    }

    #[tokio::test]
    async fn a_relist_triggers_its_objects_once_the_store_holds_them() {
        let (view, mut feed) = live_view();
        feed.apply_policy_event(watcher::Event::Init);
        feed.apply_policy_event(watcher::Event::InitApply(policy("a", 1)));
        feed.apply_policy_event(watcher::Event::InitDone);
        let mut triggers = Box::pin(view.policy_triggers());
        assert_eq!(next(&mut triggers).await, Some(("a".into(), 1)));
        // The watch restarts and lists again: a changed policy is yielded in its new version,
        // not the one the store still held while the list was under way.
        feed.apply_policy_event(watcher::Event::Init);
        feed.apply_policy_event(watcher::Event::InitApply(policy("a", 2)));
        assert_eq!(next(&mut triggers).await, None);
        feed.apply_policy_event(watcher::Event::InitDone);
        assert_eq!(next(&mut triggers).await, Some(("a".into(), 2)));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_the_whole_store_and_never_blocks_the_watch() {
        let (view, mut feed) = live_view();
        feed.apply_policy_event(watcher::Event::Init);
        feed.apply_policy_event(watcher::Event::InitDone);
        let mut triggers = Box::pin(view.policy_triggers());
        // Far more changes than the buffer holds, with nobody reading: the watch side never waits.
        for generation in 1..=(CHANGE_BUFFER as i64 * 2) {
            feed.apply_policy_event(watcher::Event::Apply(policy("noisy", generation)));
        }
        feed.apply_policy_event(watcher::Event::Apply(policy("quiet", 1)));
        let mut seen = std::collections::BTreeMap::new();
        while let Some((name, generation)) = next(&mut triggers).await {
            seen.insert(name, generation);
        }
        // Whatever was lost in between, the latest state of every policy was yielded.
        assert_eq!(seen.get("noisy"), Some(&(CHANGE_BUFFER as i64 * 2)));
        assert_eq!(seen.get("quiet"), Some(&1));
    }

    #[tokio::test]
    async fn a_dropped_subscriber_unsubscribes() {
        let (view, _feed) = live_view();
        let triggers = view.policy_triggers();
        assert_eq!(view.subscribers(), 1);
        drop(triggers);
        assert_eq!(view.subscribers(), 0);
    }
}
