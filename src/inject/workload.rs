//! Which workload owns a pod, and the `service.name` it should report.
//!
//! Admission sees the pod before any controller reads it, so the owner is derived from the
//! pod's own ownerReferences and the naming conventions of the built-in controllers.

use crate::api::keys::{APP_NAME_LABEL, POD_TEMPLATE_HASH_LABEL, SERVICE_NAME_ANNOTATION};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The top-level workload that owns a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub kind: String,
    pub name: String,
}

impl WorkloadRef {
    fn new(kind: &str, name: &str) -> Self {
        WorkloadRef { kind: kind.to_string(), name: name.to_string() }
    }

    /// The semantic-convention resource attribute naming this workload (`k8s.deployment.name`...),
    /// for the kinds the conventions define.
    pub fn attribute_key(&self) -> Option<&'static str> {
        match self.kind.as_str() {
            "Deployment" => Some("k8s.deployment.name"),
            "ReplicaSet" => Some("k8s.replicaset.name"),
            "StatefulSet" => Some("k8s.statefulset.name"),
            "DaemonSet" => Some("k8s.daemonset.name"),
            "Job" => Some("k8s.job.name"),
            "CronJob" => Some("k8s.cronjob.name"),
            _ => None,
        }
    }
}

/// The workload owning a pod (by its metadata), walking ReplicaSet -> Deployment and
/// Job -> CronJob by name.
pub fn workload_of(pod: &ObjectMeta) -> Option<WorkloadRef> {
    let template_hash = pod.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL)).map(String::as_str);
    workload_of_owners(pod.owner_references.as_deref().unwrap_or_default(), template_hash)
}

/// [`workload_of`] from a pod's owner references and its `pod-template-hash` label.
pub fn workload_of_owners(owners: &[OwnerReference], template_hash: Option<&str>) -> Option<WorkloadRef> {
    let owner = owners.iter().find(|o| o.controller == Some(true)).or_else(|| owners.first())?;
    let workload = match owner.kind.as_str() {
        "ReplicaSet" => deployment_of_replicaset(template_hash, &owner.name)
            .map(|d| WorkloadRef::new("Deployment", d))
            .unwrap_or_else(|| WorkloadRef::new("ReplicaSet", &owner.name)),
        "Job" => cronjob_of_job(&owner.name)
            .map(|c| WorkloadRef::new("CronJob", c))
            .unwrap_or_else(|| WorkloadRef::new("Job", &owner.name)),
        kind => WorkloadRef::new(kind, &owner.name),
    };
    Some(workload)
}

/// A Deployment names its ReplicaSets `<deployment>-<pod-template-hash>` and labels their pods
/// with that hash; trust the suffix only when the label confirms it.
fn deployment_of_replicaset<'a>(template_hash: Option<&str>, replicaset: &'a str) -> Option<&'a str> {
    replicaset.strip_suffix(template_hash?)?.strip_suffix('-').filter(|d| !d.is_empty())
}

/// A CronJob names its Jobs `<cronjob>-<scheduled time in minutes>` (8 or more digits).
fn cronjob_of_job(job: &str) -> Option<&str> {
    let (prefix, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !prefix.is_empty()).then_some(prefix)
}

/// `service.name` for a pod: the `tracelight.io/service-name` annotation, else the
/// `app.kubernetes.io/name` label, else the owning workload's name, else the pod's name (or its
/// `generateName` without the trailing dash).
pub fn service_name_for(pod: &Pod, workload: Option<&WorkloadRef>) -> String {
    let meta = &pod.metadata;
    let non_empty = |s: &&String| !s.trim().is_empty();
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_NAME_ANNOTATION))
        .filter(non_empty)
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(APP_NAME_LABEL)).filter(non_empty))
        .cloned()
        .or_else(|| workload.map(|w| w.name.clone()))
        .or_else(|| meta.name.clone().filter(|n| !n.is_empty()))
        .or_else(|| meta.generate_name.as_ref().map(|g| g.trim_end_matches('-').to_string()).filter(|g| !g.is_empty()))
        .unwrap_or_else(|| "unknown_service".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(owner: Option<(&str, &str)>, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let map = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        };
        Pod {
            metadata: ObjectMeta {
                generate_name: Some("web-7d9f8-".into()),
                labels: map(labels),
                annotations: map(annotations),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: name.into(),
                        controller: Some(true),
                        api_version: "apps/v1".into(),
                        uid: "u".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn replicaset_with_template_hash_belongs_to_deployment() {
        let p = pod(Some(("ReplicaSet", "shop-web-7d9f8")), &[("pod-template-hash", "7d9f8")], &[]);
        assert_eq!(workload_of(&p.metadata), Some(WorkloadRef::new("Deployment", "shop-web")));
    }

    #[test]
    fn replicaset_without_template_hash_stays_a_replicaset() {
        let p = pod(Some(("ReplicaSet", "shop-web-7d9f8")), &[], &[]);
        assert_eq!(workload_of(&p.metadata), Some(WorkloadRef::new("ReplicaSet", "shop-web-7d9f8")));
    }

    #[test]
    fn cronjob_spawned_job_belongs_to_cronjob() {
        let p = pod(Some(("Job", "nightly-report-29012345")), &[], &[]);
        assert_eq!(workload_of(&p.metadata), Some(WorkloadRef::new("CronJob", "nightly-report")));
        let p = pod(Some(("Job", "migrate-42")), &[], &[]);
        assert_eq!(workload_of(&p.metadata), Some(WorkloadRef::new("Job", "migrate-42")));
    }

    #[test]
    fn statefulset_and_daemonset_are_taken_as_is() {
        assert_eq!(
            workload_of(&pod(Some(("StatefulSet", "db")), &[], &[]).metadata),
            Some(WorkloadRef::new("StatefulSet", "db"))
        );
        assert_eq!(
            workload_of(&pod(Some(("DaemonSet", "agent")), &[], &[]).metadata),
            Some(WorkloadRef::new("DaemonSet", "agent"))
        );
    }

    #[test]
    fn service_name_precedence() {
        let owner = Some(("StatefulSet", "db"));
        let p = pod(owner, &[("app.kubernetes.io/name", "orders")], &[("tracelight.io/service-name", "orders-api")]);
        assert_eq!(service_name_for(&p, workload_of(&p.metadata).as_ref()), "orders-api");
        let p = pod(owner, &[("app.kubernetes.io/name", "orders")], &[]);
        assert_eq!(service_name_for(&p, workload_of(&p.metadata).as_ref()), "orders");
        let p = pod(owner, &[], &[]);
        assert_eq!(service_name_for(&p, workload_of(&p.metadata).as_ref()), "db");
        let p = pod(None, &[], &[]);
        assert_eq!(service_name_for(&p, None), "web-7d9f8");
    }
}
