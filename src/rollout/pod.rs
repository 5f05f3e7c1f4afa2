//! What the rollout and the coverage counts read of a pod, as a compact owned value: the pod
//! cache holds one per pod (thousands of them), so it keeps only those fields, in the smallest
//! form that still reads plainly. Derived from a pod's metadata here; the controller's cache
//! decodes the watch's JSON straight into it (`controller::cache`).

use super::model::WorkloadKind;
use crate::api::keys::{INJECTED_LABEL, MANIFEST_HASH_ANNOTATION, POD_TEMPLATE_HASH_LABEL, STATUS_ANNOTATION};
use crate::api::selector::{self, SelectorError};
use crate::inject::workload_of_owners;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use std::cmp::Ordering;
use std::fmt;

/// A pod as the controller keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSummary {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// Reports are looked up by pod uid.
    pub uid: Box<str>,
    /// The rollout workload owning the pod (through its ReplicaSet for a Deployment), resolved
    /// once; `None` for a pod no Deployment, StatefulSet or DaemonSet owns.
    pub owner: Option<Owner>,
    /// All its labels: a policy's pod selector may match any of them.
    pub labels: Labels,
    /// The `tracelight.io/manifest-hash` annotation the webhook wrote (the only annotation read).
    pub manifest_hash: Option<Box<str>>,
    pub created: Option<Timestamp>,
    /// Being deleted (it has a deletion timestamp).
    pub deleting: bool,
    /// The webhook recorded why it could not inject the pod (`tracelight.io/injection-status`).
    pub skipped: bool,
    /// Its containers' restart state (what the health of a restart reads).
    pub containers: Box<[ContainerRestarts]>,
}

/// The workload owning a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: WorkloadKind,
    pub name: Box<str>,
}

/// One container's restart state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRestarts {
    pub name: Box<str>,
    pub restart_count: i32,
    /// Why the container waits, while it does (`CrashLoopBackOff`...).
    pub waiting: Option<Box<str>>,
}

impl PodSummary {
    /// From a pod's metadata and its containers' restart state.
    pub fn from_meta(meta: &ObjectMeta, containers: Box<[ContainerRestarts]>) -> Self {
        let labels: Labels = meta.labels.iter().flatten().collect();
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
        PodSummary {
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
            uid: meta.uid.as_deref().unwrap_or_default().into(),
            owner: Owner::of(meta.owner_references.as_deref().unwrap_or_default(), &labels),
            manifest_hash: annotation(MANIFEST_HASH_ANNOTATION).map(|h| h.as_str().into()),
            labels,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleting: meta.deletion_timestamp.is_some(),
            skipped: annotation(STATUS_ANNOTATION).is_some(),
            containers,
        }
    }

    /// From a whole pod (its metadata and container statuses).
    pub fn from_pod(pod: &Pod) -> Self {
        let statuses = pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten());
        PodSummary::from_meta(&pod.metadata, statuses.map(ContainerRestarts::from_status).collect())
    }

    /// Labelled `tracelight.io/injected=true` by the webhook.
    pub fn injected(&self) -> bool {
        self.labels.get(INJECTED_LABEL) == Some("true")
    }

    /// Whether the pod's labels satisfy `selector`.
    pub fn selected_by(&self, selector: &LabelSelector) -> Result<bool, SelectorError> {
        selector::matches_with(selector, |key| self.labels.get(key))
    }

    /// Heap bytes the pod holds (the sum of its allocations' capacities).
    pub fn heap_bytes(&self) -> usize {
        let boxed = |s: &str| s.len();
        let owner = self.owner.as_ref().map_or(0, |o| boxed(&o.name));
        let containers = self
            .containers
            .iter()
            .map(|c| std::mem::size_of::<ContainerRestarts>() + boxed(&c.name) + c.waiting.as_deref().map_or(0, boxed));
        boxed(&self.namespace)
            + boxed(&self.name)
            + boxed(&self.uid)
            + owner
            + self.labels.heap_bytes()
            + self.manifest_hash.as_deref().map_or(0, boxed)
            + containers.sum::<usize>()
    }
}

impl Owner {
    /// The owner walk of the webhook ([`crate::inject::workload_of`]) over a pod's owner
    /// references and labels, kept when it ends at a workload the rollout restarts.
    pub fn of(owners: &[OwnerReference], labels: &Labels) -> Option<Owner> {
        let workload = workload_of_owners(owners, labels.get(POD_TEMPLATE_HASH_LABEL))?;
        let kind = match workload.kind.as_str() {
            "Deployment" => WorkloadKind::Deployment,
            "StatefulSet" => WorkloadKind::StatefulSet,
            "DaemonSet" => WorkloadKind::DaemonSet,
            _ => return None,
        };
        Some(Owner { kind, name: workload.name.into() })
    }
}

impl ContainerRestarts {
    pub fn from_status(status: &ContainerStatus) -> Self {
        let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
        ContainerRestarts {
            name: status.name.as_str().into(),
            restart_count: status.restart_count,
            waiting: waiting.map(Into::into),
        }
    }
}

/// A pod's labels, sorted by key, packed into one string (keys and values back to back) and the
/// offsets where each key and value ends: two allocations however many labels.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels {
    text: Box<str>,
    /// Per label, where its key and its value end in `text` (its key starts where the previous
    /// label's value ends).
    ends: Box<[(u32, u32)]>,
}

impl Labels {
    /// The value of the label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.key(mid).cmp(key) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return Some(self.value(mid)),
            }
        }
        None
    }

    /// The labels, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.ends.len()).map(|i| (self.key(i), self.value(i)))
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Heap bytes (the capacities of both allocations).
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + std::mem::size_of_val::<[(u32, u32)]>(&self.ends)
    }

    fn key(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |prev| self.ends[prev].1 as usize);
        &self.text[start..self.ends[i].0 as usize]
    }

    fn value(&self, i: usize) -> &str {
        let (key_end, value_end) = self.ends[i];
        &self.text[key_end as usize..value_end as usize]
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// Labels from pairs in any order; of a repeated key the last value counts.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(K, V)> = pairs.into_iter().collect();
        // Stable: of equal keys the last one stays last, and is kept by the dedup below.
        pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut kept: Vec<(K, V)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0.as_ref() == pair.0.as_ref() => *last = pair,
                _ => kept.push(pair),
            }
        }
        let len = kept.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum();
        let mut text = String::with_capacity(len);
        let mut ends = Vec::with_capacity(kept.len());
        for (k, v) in &kept {
            text.push_str(k.as_ref());
            let key_end = offset(&text);
            text.push_str(v.as_ref());
            ends.push((key_end, offset(&text)));
        }
        Labels { text: text.into_boxed_str(), ends: ends.into_boxed_slice() }
    }
}

/// An offset into the labels' text: label sets are limited to 256 KiB by the API server.
fn offset(text: &str) -> u32 {
    u32::try_from(text.len()).expect("labels longer than 4 GiB")
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::selector::tests::expr;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn labels_are_looked_up_by_key_in_any_order_given() {
        let l = labels(&[("tier", "pilot"), ("app", "web"), ("team", ""), ("app.kubernetes.io/name", "shop")]);
        assert_eq!(l.get("app"), Some("web"));
        assert_eq!(l.get("app.kubernetes.io/name"), Some("shop"));
        assert_eq!(l.get("team"), Some(""), "an empty value is a value");
        assert_eq!(l.get("tier"), Some("pilot"));
        for missing in ["", "a", "ap", "apps", "tea", "tier2", "zone"] {
            assert_eq!(l.get(missing), None, "{missing}");
        }
        let keys: Vec<&str> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["app", "app.kubernetes.io/name", "team", "tier"]);
        assert_eq!(labels(&[("a", "1"), ("b", "2"), ("a", "3")]).iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
        assert!(Labels::default().is_empty() && Labels::default().get("a").is_none());
    }

    #[test]
    fn labels_take_two_allocations_of_their_text_and_offsets() {
        let l = labels(&[("app", "web"), ("pod-template-hash", "7d9c5b8f4")]);
        assert_eq!(l.heap_bytes(), "appwebpod-template-hash7d9c5b8f4".len() + 2 * 8);
        assert_eq!(format!("{l:?}"), r#"{"app": "web", "pod-template-hash": "7d9c5b8f4"}"#);
    }

    #[test]
    fn a_pods_labels_match_selectors_as_the_api_server_does() {
        let pairs = [("team", "shop"), ("tier", "pilot"), ("app", "web")];
        let pod = PodSummary::from_meta(
            &ObjectMeta {
                labels: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            Box::default(),
        );
        let match_labels = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        };
        let cases = [
            (LabelSelector::default(), Ok(true)),
            (LabelSelector { match_labels: match_labels(&[("team", "shop")]), ..Default::default() }, Ok(true)),
            (
                LabelSelector { match_labels: match_labels(&[("team", "shop"), ("app", "db")]), ..Default::default() },
                Ok(false),
            ),
            (LabelSelector { match_labels: match_labels(&[("zone", "")]), ..Default::default() }, Ok(false)),
            (
                LabelSelector {
                    match_labels: match_labels(&[("team", "shop")]),
                    match_expressions: Some(vec![
                        expr("tier", "In", &["pilot", "canary"]),
                        expr("legacy", "DoesNotExist", &[]),
                        expr("app", "Exists", &[]),
                        expr("env", "NotIn", &["prod"]),
                    ]),
                },
                Ok(true),
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![expr("tier", "NotIn", &["pilot"])]),
                    ..Default::default()
                },
                Ok(false),
            ),
            (
                LabelSelector { match_expressions: Some(vec![expr("tier", "In", &["prod"])]), ..Default::default() },
                Ok(false),
            ),
            (
                LabelSelector { match_expressions: Some(vec![expr("app", "DoesNotExist", &[])]), ..Default::default() },
                Ok(false),
            ),
            (
                LabelSelector { match_expressions: Some(vec![expr("app", "Like", &["w"])]), ..Default::default() },
                Err(SelectorError::UnknownOperator { key: "app".into(), operator: "Like".into() }),
            ),
        ];
        let map: BTreeMap<String, String> = pod.labels.iter().map(|(k, v)| (k.into(), v.into())).collect();
        for (i, (sel, want)) in cases.into_iter().enumerate() {
            assert_eq!(pod.selected_by(&sel), want, "case {i}");
            assert_eq!(selector::matches(&sel, &map), want, "case {i}: as for the webhook's label map");
        }
    }

    #[test]
    fn the_owner_is_resolved_to_a_workload_the_rollout_restarts() {
        let owner = |kind: &str, name: &str| OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..Default::default()
        };
        let hash = labels(&[(POD_TEMPLATE_HASH_LABEL, "abc12")]);
        let deployment = Owner { kind: WorkloadKind::Deployment, name: "web".into() };
        assert_eq!(Owner::of(&[owner("ReplicaSet", "web-abc12")], &hash), Some(deployment));
        assert_eq!(Owner::of(&[owner("ReplicaSet", "web-abc12")], &Labels::default()), None, "a bare ReplicaSet");
        let db = Owner { kind: WorkloadKind::StatefulSet, name: "db".into() };
        assert_eq!(Owner::of(&[owner("StatefulSet", "db")], &Labels::default()), Some(db));
        let agent = Owner { kind: WorkloadKind::DaemonSet, name: "agent".into() };
        assert_eq!(Owner::of(&[owner("DaemonSet", "agent")], &Labels::default()), Some(agent));
        assert_eq!(Owner::of(&[owner("Job", "nightly-29012345")], &Labels::default()), None);
        assert_eq!(Owner::of(&[], &hash), None);
    }
}
