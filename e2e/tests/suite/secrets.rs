//! Least privilege for Secrets: the operator's ServiceAccount, as the chart binds it, reads no
//! Secret outside its namespace (bar the agent copies it owns, by name), and a policy naming a
//! Secret elsewhere is refused with a condition and an Event, and nothing is copied. A Secret in
//! the operator's namespace is still copied into the governed namespaces.

use super::{Suite, NAMESPACE, SERVICE_ACCOUNT};
use crate::support::objects::from_json;
use crate::support::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracelight::api::TracingPolicy;
use tracelight_contract::config::{AGENT_CONFIGMAP, AGENT_SECRET, AGENT_SECRET_API_KEY};

const POLICY: &str = "e2e-secrets";
const SELECT: (&str, &str) = ("e2e.tracelight.io/secrets", "governed");
/// What the "exfiltrated" Secret holds: it must never appear in a governed namespace.
const STOLEN_VALUE: &str = "kube-system-grade-secret";

/// `kubectl auth can-i VERB RESOURCE ARGS` as the operator's ServiceAccount: "yes" or "no".
fn can_i(suite: &Suite, verb: &str, resource: &str, args: &[&str]) -> anyhow::Result<String> {
    let user = format!("--as=system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let out = Command::new(suite.cluster.kubectl_path())
        .arg("--kubeconfig")
        .arg(&suite.cluster.kubeconfig)
        .args(["auth", "can-i", verb, resource, &user])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl auth can-i")?;
    // Exit code 1 with "no" is the answer, not a failure.
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(answer == "yes" || answer == "no", "kubectl auth can-i {verb} {resource} {args:?}: {out:?}");
    Ok(answer)
}

pub async fn secrets_outside_the_operator_namespace_are_refused(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("secrets: the operator reads no Secret elsewhere; a policy naming one is refused, nothing copied");
    let client = suite.cluster.client.clone();
    let other = suite.namespaces.create("secret-source", &[]).await?;
    let governed = suite.namespaces.create("secret-governed", &[SELECT]).await?;

    for (verb, resource, args, want) in [
        ("get", "secrets", vec!["-n", other.as_str()], "no"),
        ("list", "secrets", vec!["-n", other.as_str()], "no"),
        ("list", "secrets", vec!["--all-namespaces"], "no"),
        ("watch", "secrets", vec!["--all-namespaces"], "no"),
        ("get", "secrets", vec!["-n", "kube-system"], "no"),
        ("update", "secrets", vec!["-n", other.as_str()], "no"),
        ("list", "configmaps", vec!["--all-namespaces"], "no"),
        ("get", "secrets", vec!["-n", NAMESPACE], "yes"),
        ("patch", "secrets/tracelight-agent", vec!["-n", other.as_str()], "yes"),
    ] {
        let answer = can_i(suite, verb, resource, &args)?;
        ensure!(answer == want, "can-i {verb} {resource} {args:?} as the operator: {answer}, expected {want}");
    }
    suite.log.note(&format!(
        "kubectl auth can-i as {NAMESPACE}:{SERVICE_ACCOUNT}: get/list secrets in {other}: no, list secrets cluster-wide: no; \
         get secrets in {NAMESPACE}: yes; patch secrets/tracelight-agent: yes"
    ));

    let secret = |ns: &str, name: &str, value: &str| -> anyhow::Result<Secret> {
        from_json(json!({"metadata": {"name": name, "namespace": ns}, "stringData": {"api-key": value}}))
    };
    Api::<Secret>::namespaced(client.clone(), &other)
        .create(&PostParams::default(), &secret(&other, "backend", STOLEN_VALUE)?)
        .await?;
    let own_name = format!("e2e-backend-{}", crate::support::suffix());
    let own = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    own.create(&PostParams::default(), &secret(NAMESPACE, &own_name, "allowed-key")?).await?;

    let policies = Api::<TracingPolicy>::all(client.clone());
    let policy: TracingPolicy = from_json(json!({
        "apiVersion": "tracelight.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {SELECT.0: SELECT.1}},
            "collector": {
                "endpoint": "https://exfiltrate.example:4317", "protocol": "grpc",
                "apiKeySecretRef": {"namespace": other, "name": "backend"}
            }
        }
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    let result = async {
        let ready = wait::until(&format!("{POLICY} refused with Ready=False"), Duration::from_secs(60), || async {
            let p = policies.get(POLICY).await?;
            let status = p.status.context("no status yet")?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready").context("no Ready condition")?.clone();
            ensure!(ready.status == "False" && ready.reason == "SecretNotAllowed", "Ready {ready:?}");
            Ok(ready)
        })
        .await?;
        ensure!(
            ready.message.contains(&format!("{other}/backend")) && ready.message.contains(NAMESPACE),
            "the message names neither the Secret nor the allowed namespace: {:?}",
            ready.message
        );
        let events = Api::<Event>::namespaced(client.clone(), "default");
        let lp = ListParams::default().fields(&format!("involvedObject.name={POLICY},reason=SecretNotAllowed"));
        wait::until("a SecretNotAllowed Event on the policy", Duration::from_secs(30), || async {
            let list = events.list(&lp).await?;
            ensure!(list.items.iter().any(|e| e.type_.as_deref() == Some("Warning")), "none: {:?}", list.items);
            Ok(())
        })
        .await?;
        // Another reconcile or two: still nothing in the governed namespace.
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            Api::<Secret>::namespaced(client.clone(), &governed).get_opt(AGENT_SECRET).await?.is_none(),
            "a Secret was copied into {governed}"
        );
        ensure!(
            Api::<ConfigMap>::namespaced(client.clone(), &governed).get_opt(AGENT_CONFIGMAP).await?.is_none(),
            "the namespace {governed} was activated (agent ConfigMap written) with a refused Secret"
        );
        suite.log.note(&format!(
            "refused: Ready=False SecretNotAllowed ({:?}), a Warning Event, nothing in {governed}",
            ready.message
        ));

        // The same policy with the Secret in the operator's namespace: copied, as before.
        let patch = json!({"spec": {"collector": {"apiKeySecretRef": {"namespace": NAMESPACE, "name": own_name}}}});
        policies.patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        super::wait_active(&client, POLICY, &governed).await?;
        let copy = Api::<Secret>::namespaced(client.clone(), &governed).get(AGENT_SECRET).await?;
        let value = copy.data.unwrap_or_default().get(AGENT_SECRET_API_KEY).map(|v| v.0.clone());
        ensure!(value.as_deref() == Some(b"allowed-key".as_slice()), "copied key {value:?}");
        suite.log.note(&format!("a Secret of {NAMESPACE} is copied into {governed} (server-side apply by name)"));
        Ok(())
    }
    .await;
    policies.delete(POLICY, &DeleteParams::default()).await?;
    wait::until(&format!("policy {POLICY} to be deleted (finalizer)"), Duration::from_secs(60), || async {
        ensure!(policies.get_opt(POLICY).await?.is_none(), "still there");
        Ok(())
    })
    .await?;
    own.delete(&own_name, &DeleteParams::default()).await?;
    result?;
    ensure!(
        Api::<Secret>::namespaced(client.clone(), &governed).get_opt(AGENT_SECRET).await?.is_none(),
        "the copied Secret outlived its policy in {governed}"
    );
    suite.log.note("policy deleted: its copied Secret removed (listed by name, deleted by name)");
    Ok(())
}
