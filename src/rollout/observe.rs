//! From Kubernetes objects to the engine's [`WorkloadObservation`], and from the engine's
//! decisions back to the patches that carry them out. Pure: the controller fetches the objects
//! and applies the patches.
//!
//! Restarts work like `kubectl rollout restart`: an annotation on the pod template changes, so
//! the workload controller replaces its pods, which the webhook injects at creation. The
//! annotations also record what was requested, so a restarted operator knows what is in flight.

use super::model::{Health, PodCounts, RestartMark, WorkloadId, WorkloadObservation};
use super::pod::PodSummary;
use super::workload::{Template, Workload};
use crate::api::keys::INJECT_LABEL;
use crate::api::TracingPolicy;
use crate::inject::{expected_manifest_hash, InjectOptions};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

/// Pod-template annotation: when the operator last restarted the workload.
pub const RESTARTED_AT_ANNOTATION: &str = "tracelight.io/restarted-at";
/// Pod-template annotation: the manifest hash that restart was for ("" when removing injection).
pub const RESTART_HASH_ANNOTATION: &str = "tracelight.io/restart-hash";
/// Pod-template annotation: why the operator rolled the workload back. With the label
/// `tracelight.io/inject: "false"` it excludes the workload; removing the label retries.
pub const EXCLUDED_ANNOTATION: &str = "tracelight.io/excluded";

fn template_annotation<'a>(template: &'a Template, key: &str) -> Option<&'a str> {
    template.annotations.get(key)
}

fn template_label<'a>(template: &'a Template, key: &str) -> Option<&'a str> {
    template.labels.get(key)
}

/// The restart the operator last requested, read from the template.
pub fn restart_mark(template: &Template) -> Option<RestartMark> {
    let at: Timestamp = template_annotation(template, RESTARTED_AT_ANNOTATION)?.parse().ok()?;
    let hash = template_annotation(template, RESTART_HASH_ANNOTATION).unwrap_or_default().to_string();
    Some(RestartMark { hash, at })
}

/// The rollback reason, while the operator's exclusion stands.
pub fn exclusion(template: &Template) -> Option<String> {
    let opted_out = template_label(template, INJECT_LABEL) == Some("false");
    template_annotation(template, EXCLUDED_ANNOTATION).filter(|_| opted_out).map(str::to_string)
}

/// The workload opts out of injection on purpose (the label without a rollback's annotation).
pub fn opted_out(template: &Template) -> bool {
    template_label(template, INJECT_LABEL) == Some("false") && exclusion(template).is_none()
}

/// Whether a pod belongs to `id` (its owner was resolved by the injector's owner walk).
pub fn pod_belongs_to(pod: &PodSummary, id: &WorkloadId) -> bool {
    *pod.namespace == *id.namespace && pod.owner.as_ref().is_some_and(|o| o.kind == id.kind && *o.name == *id.name)
}

/// Counts of a workload's live pods against the hash they should carry (`None`: they should not
/// be injected at all).
pub fn pod_counts(pods: &[&PodSummary], desired_hash: Option<&str>, ready: u32) -> PodCounts {
    let mut counts = PodCounts { ready, ..Default::default() };
    for pod in pods.iter().filter(|p| !p.deleting) {
        counts.total += 1;
        match (pod.injected(), desired_hash) {
            (true, Some(want)) if pod.manifest_hash.as_deref() == Some(want) => counts.current += 1,
            (true, _) => counts.outdated += 1,
            (false, Some(_)) => counts.missed += 1,
            (false, None) => {}
        }
    }
    counts.ready = counts.ready.min(counts.total);
    counts
}

/// Creation time of the newest live pod without injection (for a workload whose pods should
/// all be injected: the newest missed pod).
pub fn newest_uninjected(pods: &[&PodSummary]) -> Option<Timestamp> {
    pods.iter().filter(|p| !p.deleting && !p.injected()).filter_map(|p| p.created).max()
}

/// Health of a restarted workload's pods: failing when a container is in CrashLoopBackOff or has
/// restarted since the restart was requested.
pub fn health(pods: &[&PodSummary], since: Timestamp) -> Health {
    // Creation timestamps have whole seconds: a pod created in the restart's second is new.
    let since = Timestamp::from_second(since.as_second()).unwrap_or(since);
    for pod in pods {
        if pod.created.is_some_and(|c| c < since) {
            continue; // an old pod: its history is not the restart's fault
        }
        for c in &pod.containers {
            let waiting = c.waiting.as_deref();
            if waiting == Some("CrashLoopBackOff") || c.restart_count >= 3 {
                return Health::Failing(format!(
                    "pod {} container {} restarted {} times ({})",
                    if pod.name.is_empty() { "?" } else { &pod.name },
                    c.name,
                    c.restart_count,
                    waiting.unwrap_or("restarting")
                ));
            }
        }
    }
    Health::Healthy
}

/// The engine's view of one workload. `governed`: its namespace is governed by `policy`.
pub fn observe(
    workload: &Workload,
    pods: &[&PodSummary],
    failing: Health,
    reporting: Option<bool>,
    policy: &TracingPolicy,
    options: &InjectOptions,
    governed: bool,
) -> WorkloadObservation {
    let template = &workload.template;
    let desired_hash = governed.then(|| expected_manifest_hash(&workload.template_pod(), policy, options)).flatten();
    WorkloadObservation {
        id: workload.id(),
        pods: pod_counts(pods, desired_hash.as_deref(), workload.ready),
        newest_missed: desired_hash.as_ref().and_then(|_| newest_uninjected(pods)),
        desired_hash,
        restart: restart_mark(template),
        rolled_out: workload.rolled_out,
        health: failing,
        reporting,
        excluded: exclusion(template),
    }
}

/// Merge patch requesting a restart for `hash` ("" removes injection) at `now`.
pub fn restart_patch(hash: &str, now: Timestamp) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: now.to_string(),
        RESTART_HASH_ANNOTATION: hash,
    }}}}})
}

/// Merge patch excluding a workload after a failed rollout (its pods are recreated uninjected).
pub fn rollback_patch(reason: &str, now: Timestamp) -> Value {
    json!({"spec": {"template": {"metadata": {
        "labels": {INJECT_LABEL: "false"},
        "annotations": {EXCLUDED_ANNOTATION: reason, RESTARTED_AT_ANNOTATION: now.to_string(), RESTART_HASH_ANNOTATION: ""},
    }}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::keys::{INJECTED_LABEL, MANIFEST_HASH_ANNOTATION};
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateWaiting, ContainerStatus, PodSpec, PodStatus,
    };
    use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use std::collections::BTreeMap;

    fn policy() -> TracingPolicy {
        serde_yaml::from_str(include_str!("../../config/samples/tracingpolicy.yaml")).unwrap()
    }

    fn deployment(replicas: i32, annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> Deployment {
        let map = |pairs: &[(&str, &str)]| {
            Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
        };
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: map(annotations),
                        labels: map(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container { name: "web".into(), ..Default::default() }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(replicas),
                updated_replicas: Some(replicas),
                available_replicas: Some(replicas),
                ready_replicas: Some(replicas),
                ..Default::default()
            }),
        }
    }

    fn summary(meta: &ObjectMeta) -> PodSummary {
        PodSummary::from_meta(meta, Box::default())
    }

    fn pod_meta(injected: bool, hash: &str) -> ObjectMeta {
        let mut labels = BTreeMap::from([("pod-template-hash".to_string(), "abc12".to_string())]);
        let mut annotations = BTreeMap::new();
        if injected {
            labels.insert(INJECTED_LABEL.into(), "true".into());
            annotations.insert(MANIFEST_HASH_ANNOTATION.to_string(), hash.to_string());
        }
        ObjectMeta {
            namespace: Some("shop".into()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web-abc12".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn restart_patch_round_trips_through_the_template() {
        let now: Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let mut d = serde_json::to_value(deployment(1, &[], &[])).unwrap();
        json_patch::merge(&mut d, &restart_patch("h1", now));
        let d: Deployment = serde_json::from_value(d).unwrap();
        assert_eq!(restart_mark(&Workload::from(&d).template), Some(RestartMark { hash: "h1".into(), at: now }));
    }

    #[test]
    fn rollback_excludes_until_the_label_is_removed() {
        let now: Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let mut v = serde_json::to_value(deployment(1, &[], &[])).unwrap();
        json_patch::merge(&mut v, &rollback_patch("crash loop", now));
        let d: Deployment = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(exclusion(&Workload::from(&d).template).as_deref(), Some("crash loop"));
        // The injector then skips its pods: no desired hash.
        let pod = Workload::from(&d).template_pod();
        assert_eq!(expected_manifest_hash(&pod, &policy(), &InjectOptions::default()), None);
        v["spec"]["template"]["metadata"]["labels"].as_object_mut().unwrap().remove(INJECT_LABEL);
        let d: Deployment = serde_json::from_value(v).unwrap();
        assert_eq!(exclusion(&Workload::from(&d).template), None, "cleared by removing the label");
    }

    #[test]
    fn pods_are_counted_against_the_desired_hash() {
        let a = summary(&pod_meta(true, "h1"));
        let b = summary(&pod_meta(true, "h0"));
        let c = summary(&pod_meta(false, ""));
        let counts = pod_counts(&[&a, &b, &c], Some("h1"), 3);
        assert_eq!(counts, PodCounts { total: 3, current: 1, outdated: 1, missed: 1, ready: 3 });
        let counts = pod_counts(&[&a, &c], None, 2);
        assert_eq!(counts, PodCounts { total: 2, current: 0, outdated: 1, missed: 0, ready: 2 });
    }

    #[test]
    fn the_newest_missed_pod_is_found_and_terminating_or_injected_pods_are_not() {
        let at = |s: &str| Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().unwrap()));
        let mut old = pod_meta(false, "");
        old.creation_timestamp = at("2026-11-24T09:00:00Z");
        let mut new = pod_meta(false, "");
        new.creation_timestamp = at("2026-11-24T10:00:00Z");
        let mut injected = pod_meta(true, "h1");
        injected.creation_timestamp = at("2026-11-24T11:00:00Z");
        let mut leaving = pod_meta(false, "");
        leaving.creation_timestamp = at("2026-11-24T12:00:00Z");
        leaving.deletion_timestamp = at("2026-11-24T12:00:01Z");
        let want: Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let [old, new, injected, leaving] = [old, new, injected, leaving].map(|m| summary(&m));
        assert_eq!(newest_uninjected(&[&old, &new, &injected, &leaving]), Some(want));
        assert_eq!(newest_uninjected(&[&injected]), None);
        let d = deployment(2, &[], &[]);
        let observed = |governed| {
            let (p, options) = (policy(), InjectOptions::default());
            observe(&Workload::from(&d), &[&old, &new], Health::Healthy, None, &p, &options, governed)
        };
        assert_eq!(observed(true).newest_missed, Some(want));
        assert_eq!(
            observed(false).newest_missed,
            None,
            "pods of a workload that should not be injected are not missed"
        );
    }

    #[test]
    fn observe_derives_hash_from_the_template_and_pods_through_owners() {
        let d = deployment(2, &[], &[]);
        let w = Workload::from(&d);
        let id = w.id();
        let p = summary(&pod_meta(false, ""));
        assert!(pod_belongs_to(&p, &id));
        let o = observe(&w, &[&p], Health::Healthy, None, &policy(), &InjectOptions::default(), true);
        assert!(o.desired_hash.is_some());
        assert_eq!(o.pods.missed, 1);
        assert!(o.rolled_out);
        let not_governed = observe(&w, &[&p], Health::Healthy, None, &policy(), &InjectOptions::default(), false);
        assert_eq!(not_governed.desired_hash, None);
        assert_eq!(not_governed.pods.missed, 0);
    }

    #[test]
    fn deployment_mid_rollout_is_not_rolled_out() {
        let mut d = deployment(3, &[], &[]);
        d.status.as_mut().unwrap().updated_replicas = Some(1);
        assert!(!Workload::from(&d).rolled_out);
        let mut d = deployment(3, &[], &[]);
        d.status.as_mut().unwrap().observed_generation = Some(1);
        assert!(!Workload::from(&d).rolled_out);
    }

    #[test]
    fn crash_looping_new_pods_fail_old_ones_do_not() {
        let since: Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let pod = |created: &str| Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                creation_timestamp: Some(Time(created.parse().unwrap())),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "web".into(),
                    restart_count: 4,
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting { reason: Some("CrashLoopBackOff".into()), message: None }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let pod = |created: &str| PodSummary::from_pod(&pod(created));
        let old = pod("2026-11-24T09:00:00Z");
        let new = pod("2026-11-24T10:01:00Z");
        assert_eq!(health(&[&old], since), Health::Healthy);
        assert!(matches!(health(&[&old, &new], since), Health::Failing(r) if r.contains("CrashLoopBackOff")));
        // The API server keeps whole seconds: created in the restart's second is after it.
        let same_second = pod("2026-11-24T10:00:00Z");
        let restarted_mid_second: Timestamp = "2026-11-24T10:00:00.4Z".parse().unwrap();
        assert!(matches!(health(&[&same_second], restarted_mid_second), Health::Failing(_)));
    }
}
