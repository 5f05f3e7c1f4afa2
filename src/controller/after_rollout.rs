//! After the rollout (I/O): once the status is written, applies (or removes) the per-workload
//! regression `PrometheusRule` and publishes the Events that
//! [`decision::after_rollout`](crate::decision::after_rollout) decided, and remembers which rule
//! it applied so an unchanged one costs no request.

use super::reconcile::Context;
use crate::api::keys::FIELD_MANAGER;
use crate::api::TracingPolicy;
use crate::baseline::rules;
use crate::decision::after_rollout::FollowUp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// What this module keeps between reconciles.
#[derive(Debug, Default)]
pub struct State {
    /// Where the regression rules are written (the operator's namespace).
    pub namespace: String,
    /// Per policy, the digest of the rule last applied (empty: deleted or never written), so an
    /// unchanged rule costs no request.
    applied: Mutex<BTreeMap<String, String>>,
}

impl State {
    pub fn new(namespace: &str) -> State {
        State { namespace: namespace.to_string(), applied: Mutex::default() }
    }
}

fn prometheus_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    )
}

/// Publishes the Events and applies (or removes) the regression rule. Failures are logged: the
/// rule and the Events never fail a reconcile.
pub async fn apply_follow_up(policy: &TracingPolicy, follow: FollowUp, ctx: &Context) {
    for (type_, reason, note) in follow.events {
        ctx.publish(policy, type_, &reason, "Review", note, None).await;
    }
    let name = policy.name_any();
    let digest =
        follow.rule.as_ref().map(|spec| format!("{spec}{:?}", policy.spec.alerting.rule_labels)).unwrap_or_default();
    let applied = ctx.after_rollout.applied.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
    // Without a baseline no rule was ever rendered: nothing to remove (unless this process wrote one).
    let never_written = follow.rule.is_none() && !follow.had_baseline && applied.is_none();
    if applied.as_ref() == Some(&digest) || never_written {
        return;
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ctx.after_rollout.namespace, &prometheus_rule_resource());
    let result = match follow.rule {
        Some(spec) => {
            let mut labels = policy.spec.alerting.rule_labels.clone();
            labels.extend(crate::decision::agent_objects::owned_labels(policy));
            let owner = serde_json::to_value(policy.controller_owner_ref(&())).unwrap_or_default();
            let object = rules::prometheus_rule(&name, &ctx.after_rollout.namespace, labels, owner, spec);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&rules::rule_name(&name), &params, &Patch::Apply(&object)).await.map(|_| "applied")
        }
        None => match api.delete(&rules::rule_name(&name), &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok("absent"),
            other => other.map(|_| "deleted"),
        },
    };
    match result {
        Ok(what) => {
            tracing::info!(policy = %name, rule = %rules::rule_name(&name), what, "regression PrometheusRule");
            ctx.after_rollout.applied.lock().unwrap_or_else(|p| p.into_inner()).insert(name, digest);
        }
        // The Prometheus Operator's CRDs are not installed: nothing to write to. Not remembered,
        // so the rule is written once they are.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!(policy = %name, "no PrometheusRule API (monitoring.coreos.com/v1): regression rules not written");
        }
        Err(e) => tracing::warn!(policy = %name, error = %e, "could not write the regression PrometheusRule"),
    }
}
