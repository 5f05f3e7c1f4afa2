//! Certificate bootstrap (the operator creates the CA and serving certificate, and publishes the
//! CA bundle) and rotation (a renewed certificate is served by the same process).

use super::{Suite, CERT_SECRET, NAMESPACE, WEBHOOK_CONFIG};
use crate::support::objects::{assert_injected, create_pod};
use crate::support::tls::{served_certificate, Served};
use crate::support::wait;
use anyhow::{ensure, Context as _};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::time::Duration;

/// The CA bundle currently published in the chart's webhook configuration (PEM).
pub async fn published_ca_bundle(suite: &Suite) -> anyhow::Result<Vec<u8>> {
    let configs = Api::<MutatingWebhookConfiguration>::all(suite.cluster.client.clone());
    let config = configs.get(WEBHOOK_CONFIG).await?;
    let hooks = config.webhooks.unwrap_or_default();
    ensure!(!hooks.is_empty(), "no webhooks in {WEBHOOK_CONFIG}");
    let bundles: Vec<Vec<u8>> = hooks.iter().map(|h| h.client_config.ca_bundle.clone().unwrap_or_default().0).collect();
    ensure!(bundles.iter().all(|b| !b.is_empty()), "caBundle not written yet");
    ensure!(bundles.windows(2).all(|w| w[0] == w[1]), "webhooks carry different CA bundles");
    Ok(bundles.into_iter().next().unwrap_or_default())
}

/// The caBundle is written and the webhook port serves a certificate it verifies, for 127.0.0.1.
/// Returns that certificate.
pub async fn bootstrap(suite: &mut Suite) -> anyhow::Result<Served> {
    suite.log.step("certificate bootstrap: Secret, caBundle, served certificate");
    let secrets = Api::<Secret>::namespaced(suite.cluster.client.clone(), NAMESPACE);
    let secret = secrets.get(CERT_SECRET).await.with_context(|| format!("the operator's Secret {CERT_SECRET}"))?;
    let data = secret.data.unwrap_or_default();
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        ensure!(data.get(key).is_some_and(|v| !v.0.is_empty()), "Secret {CERT_SECRET} has no {key}");
    }
    let bundle = wait::until("the CA bundle in the webhook configuration", Duration::from_secs(30), || {
        published_ca_bundle(suite)
    })
    .await?;
    let served = served_certificate(suite.webhook_port, &bundle).await?;
    suite.log.note(&format!("caBundle published ({} bytes); webhook serves {served}", bundle.len()));
    Ok(served)
}

/// With `--cert-validity 90s`, the serving certificate is renewed about a minute after it was
/// issued. The same process (no restart) then serves the new one, the published bundle still
/// verifies it, and the API server still calls the webhook: a new pod is injected.
pub async fn rotated_certificate_is_served_without_restart(suite: &mut Suite, first: &Served) -> anyhow::Result<()> {
    suite.log.step("certificate rotation: a renewed certificate is served without restart");
    let pid = suite.operator()?.pid();
    let port = suite.webhook_port;
    let rotated = wait::until("the webhook to serve a renewed certificate", Duration::from_secs(150), || async {
        let bundle = published_ca_bundle(suite).await?;
        let served = served_certificate(port, &bundle).await?;
        ensure!(served.serial != first.serial, "still serving {served}");
        Ok(served)
    })
    .await?;
    let operator = suite.operator()?;
    operator.ensure_running()?;
    ensure!(operator.pid() == pid, "the operator was restarted");
    let renewals = operator.log_text().lines().filter(|l| l.contains("serving certificate loaded")).count();
    suite.log.note(&format!("was {first}; now {rotated}; same pid {pid}; {renewals} certificate loads logged"));

    let active = suite.active.clone().context("no active namespace set up by an earlier step")?;
    let pod = create_pod(&suite.cluster.client, &active.namespace, "after-rotation", &[]).await?;
    assert_injected(&pod, "after-rotation", &active.policy).context("a pod created after the rotation")?;
    suite.log.note("a pod created after the rotation is injected");
    Ok(())
}
