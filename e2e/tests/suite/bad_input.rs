//! Invalid TracingPolicies never reach the operator: the API server rejects them with the CRD's
//! schema, naming the field.

use super::Suite;
use anyhow::{bail, ensure};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use tracelight::api::TracingPolicy;

fn policy(name: &str, spec: Value) -> anyhow::Result<DynamicObject> {
    let object = json!({
        "apiVersion": "tracelight.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name},
        "spec": spec,
    });
    Ok(serde_json::from_value(object)?)
}

fn collector() -> Value {
    json!({"endpoint": "http://otel-collector.observability:4317", "protocol": "grpc"})
}

pub async fn invalid_policies_are_rejected(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("bad input: invalid TracingPolicies are rejected by the API server");
    let resource = ApiResource::erase::<TracingPolicy>(&());
    let api: Api<DynamicObject> = Api::all_with(suite.cluster.client.clone(), &resource);
    let cases = [
        (
            "ratio 1.5",
            policy("e2e-bad-ratio", json!({"collector": collector(), "sampling": {"ratio": 1.5}}))?,
            &["spec.sampling.ratio", "1.5"][..],
        ),
        (
            "unknown protocol",
            policy("e2e-bad-protocol", json!({"collector": {"endpoint": "http://c:4317", "protocol": "thrift"}}))?,
            &["spec.collector.protocol", "thrift"][..],
        ),
        (
            "duplicate phase names",
            policy(
                "e2e-bad-phases",
                json!({"collector": collector(), "rollout": {"phases": [{"name": "pilot"}, {"name": "pilot"}]}}),
            )?,
            &["spec.rollout", "phase names must be unique"][..],
        ),
    ];
    for (what, object, expected) in cases {
        let name = object.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                let _ = api.delete(&name, &Default::default()).await;
                bail!("the API server accepted a policy with {what}");
            }
            Err(kube::Error::Api(status)) => {
                ensure!(status.code == 422, "{what}: expected 422 Invalid, got {}: {}", status.code, status.message);
                for needle in expected {
                    ensure!(
                        status.message.contains(needle),
                        "{what}: the rejection does not mention {needle:?}: {}",
                        status.message
                    );
                }
                suite.log.note(&format!("{what}: rejected: {}", status.message));
            }
            Err(e) => bail!("{what}: unexpected error: {e}"),
        }
    }
    Ok(())
}
