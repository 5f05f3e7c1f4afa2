//! Service-account tokens for a pod's projected volumes, requested from the API server's
//! TokenRequest API and bound to the pod, as the kubelet does.

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;

/// One token per `serviceAccountToken` source, keyed `volume/path`.
pub async fn projected_tokens(client: &Client, pod: &Pod) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut tokens = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else { return Ok(tokens) };
    let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let api = Api::<ServiceAccount>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    for volume in spec.volumes.iter().flatten() {
        let sources = volume.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for source in sources.filter_map(|s| s.service_account_token.as_ref()) {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    // Empty: the API server's own audiences, as for `kube-api-access-*`.
                    audiences: source.audience.clone().map(|a| vec![a]),
                    expiration_seconds: source.expiration_seconds,
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.name_any()),
                        uid: pod.uid(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let answer = api
                .create_token_request(&account, &PostParams::default(), &request)
                .await
                .with_context(|| format!("requesting a token of ServiceAccount {account} for {}", pod.name_any()))?;
            let token = answer.status.and_then(|s| s.token).context("TokenRequest answered no token")?;
            tokens.insert(format!("{}/{}", volume.name, source.path), token.into_bytes());
        }
    }
    Ok(tokens)
}
