//! The Events the controller publishes (`events.k8s.io/v1`), each created as it happens.
//!
//! kube-runtime's `Recorder` keeps every Event it published for six minutes (thousands during a
//! rollout at scale: one per restarted workload) and turns a later Event of the same reason,
//! action and object into a series update of the first one, which keeps the first one's note:
//! the policy's per-batch `Restarting` Events all showed the first batch. The controller's
//! Events are few per reconcile and each says something new, so each one is created and none is
//! kept.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::Client;

/// Namespace of the Events about cluster-scoped objects (a policy).
const CLUSTER_EVENTS_NAMESPACE: &str = "default";

/// Publishes Events as one controller instance.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    /// `reportingController`.
    controller: String,
    /// `reportingInstance`: the pod's name, else the controller's.
    instance: String,
}

impl Publisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Publisher { client, controller: controller.into(), instance: instance.unwrap_or_else(|| controller.into()) }
    }

    /// Creates `event` about `regarding` (in its namespace).
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let event = self.event(event, regarding, Timestamp::now());
        let namespace = event.metadata.namespace.as_deref().unwrap_or(CLUSTER_EVENTS_NAMESPACE);
        Api::<K8sEvent>::namespaced(self.client.clone(), namespace).create(&PostParams::default(), &event).await?;
        Ok(())
    }

    /// The Event object, named after the object it is about and the time (unique per object).
    fn event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let name = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(regarding.namespace.clone().unwrap_or_else(|| CLUSTER_EVENTS_NAMESPACE.into())),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_name(event.type_).into()),
            reason: Some(event.reason.clone()),
            action: Some(event.action.clone()),
            note: event.note.clone(),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

fn type_name(type_: EventType) -> &'static str {
    match type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(instance: Option<&str>) -> Publisher {
        // Never connects: the tests only build Events.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Publisher::new(Client::try_from(config).unwrap(), "tracelight-controller", instance.map(Into::into))
    }

    fn restarting(note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: "Restarting".into(),
            note: Some(note.into()),
            action: "Restart".into(),
            secondary: None,
        }
    }

    fn policy_ref() -> ObjectReference {
        ObjectReference { kind: Some("TracingPolicy".into()), name: Some("default".into()), ..Default::default() }
    }

    #[tokio::test]
    async fn each_event_keeps_its_own_note_and_name() {
        let p = publisher(Some("tracelight-7c9f"));
        let now = Timestamp::UNIX_EPOCH;
        let first = p.event(&restarting("batch 1"), &policy_ref(), now);
        let second = p.event(&restarting("batch 2"), &policy_ref(), now + std::time::Duration::from_millis(1));
        assert_eq!(first.note.as_deref(), Some("batch 1"));
        assert_eq!(second.note.as_deref(), Some("batch 2"));
        assert_ne!(first.metadata.name, second.metadata.name);
        assert_eq!(second.series, None, "a new Event, not a series of the first");
        assert_eq!(first.reporting_instance.as_deref(), Some("tracelight-7c9f"));
        assert_eq!(first.type_.as_deref(), Some("Normal"));
    }

    #[tokio::test]
    async fn events_go_to_the_namespace_of_their_object() {
        let p = publisher(None);
        let workload = ObjectReference {
            kind: Some("Deployment".into()),
            namespace: Some("shop".into()),
            name: Some("web".into()),
            ..Default::default()
        };
        let on_workload = p.event(&restarting("x"), &workload, Timestamp::UNIX_EPOCH);
        assert_eq!(on_workload.metadata.namespace.as_deref(), Some("shop"));
        assert!(on_workload.metadata.name.as_deref().is_some_and(|n| n.starts_with("web.")));
        let on_policy = p.event(&restarting("x"), &policy_ref(), Timestamp::UNIX_EPOCH);
        assert_eq!(on_policy.metadata.namespace.as_deref(), Some(CLUSTER_EVENTS_NAMESPACE));
        assert_eq!(
            on_policy.reporting_instance.as_deref(),
            Some("tracelight-controller"),
            "no pod name: the controller"
        );
    }
}
