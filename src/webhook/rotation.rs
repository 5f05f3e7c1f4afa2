//! Certificate I/O: keeps the [`CertResolver`] serving a valid certificate.
//!
//! - self-signed mode: the CA and serving certificate live in a Secret shared by all replicas;
//!   the CA bundle is written into the `MutatingWebhookConfiguration`; a loop renews and reloads.
//! - files mode: `tls.crt`/`tls.key` are read from a directory (cert-manager) and reloaded when
//!   they change; the CA bundle is someone else's business (cert-manager's CA injector).

use super::certs::{plan, CertError, CertResolver, KeyPairPem, LeafSpec, TlsMaterial};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PREVIOUS_CA_CRT: &str = "ca-previous.crt";

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{action} Secret {namespace}/{name}: {source}")]
    Secret { action: &'static str, namespace: String, name: String, source: kube::Error },
    #[error("{action} MutatingWebhookConfiguration {name}: {source}")]
    WebhookConfig { action: &'static str, name: String, source: kube::Error },
    #[error("reading {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("Secret {0} kept changing under us (concurrent rotation by other replicas); will retry")]
    Contended(String),
}

/// Self-signed mode settings.
#[derive(Clone)]
pub struct SelfSigned {
    pub client: Client,
    pub namespace: String,
    pub secret_name: String,
    pub webhook_config: String,
    pub leaf: LeafSpec,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned")
            .field("namespace", &self.namespace)
            .field("secret_name", &self.secret_name)
            .field("webhook_config", &self.webhook_config)
            .field("leaf", &self.leaf)
            .finish_non_exhaustive()
    }
}

impl SelfSigned {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secret_error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> RotationError + '_ {
        move |source| RotationError::Secret {
            action,
            namespace: self.namespace.clone(),
            name: self.secret_name.clone(),
            source,
        }
    }

    /// One pass: make sure the Secret holds valid material (creating or renewing it), serve its
    /// certificate, and publish its CA bundle. Retries a few times on write conflicts.
    pub async fn reconcile(&self, resolver: &CertResolver) -> Result<(), RotationError> {
        for _ in 0..3 {
            let existing = self.secrets().get_opt(&self.secret_name).await.map_err(self.secret_error("reading"))?;
            let current = existing.as_ref().and_then(|s| material_from_secret(s, &self.secret_name));
            let now = OffsetDateTime::now_utc();
            let material = match plan(current.as_ref(), &self.leaf, now)? {
                None => match current {
                    Some(current) => current,
                    None => continue, // `plan` always creates material when there is none
                },
                Some(next) => {
                    // On a CA renewal, publish the bundle (old + new CA) before the Secret, so the
                    // API server trusts the new leaf before any replica serves it. On bootstrap,
                    // publish only after winning the create, so racing replicas do not flap it.
                    if current.as_ref().is_some_and(|c| c.ca != next.ca) {
                        self.publish_ca_bundle(&next.ca_bundle(now)).await?;
                    }
                    match self.write(existing, &next).await? {
                        Written::Ok => next,
                        Written::Conflict => continue, // another replica wrote first: use theirs
                    }
                }
            };
            if resolver.set(&material.leaf)? {
                tracing::info!(secret = %self.secret_name, "serving certificate loaded");
            }
            let bundle = material.ca_bundle(now);
            resolver.set_ca_bundle(Some(bundle.clone()));
            return self.publish_ca_bundle(&bundle).await;
        }
        Err(RotationError::Contended(self.secret_name.clone()))
    }

    async fn write(&self, existing: Option<Secret>, material: &TlsMaterial) -> Result<Written, RotationError> {
        let api = self.secrets();
        let pp = PostParams { field_manager: Some(crate::api::keys::FIELD_MANAGER.to_string()), ..Default::default() };
        let result = match existing {
            None => api.create(&pp, &secret_for(&self.secret_name, &self.namespace, material, None)).await,
            Some(old) => {
                // resourceVersion makes the replace fail with 409 if another replica got there first.
                let rv = old.metadata.resource_version.clone();
                let mut secret = secret_for(&self.secret_name, &self.namespace, material, rv);
                secret.metadata.labels = old.metadata.labels.or(secret.metadata.labels);
                api.replace(&self.secret_name, &pp, &secret).await
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(secret = %self.secret_name, "webhook certificate material written");
                Ok(Written::Ok)
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                tracing::debug!(secret = %self.secret_name, "certificate Secret changed concurrently; re-reading");
                Ok(Written::Conflict)
            }
            Err(e) => Err(self.secret_error("writing")(e)),
        }
    }

    /// Writes `bundle` into every webhook of the configuration, only where it differs. A missing
    /// configuration is not an error: it may not be installed yet (or the operator runs outside).
    async fn publish_ca_bundle(&self, bundle: &str) -> Result<(), RotationError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let name = &self.webhook_config;
        let err = |action| move |source| RotationError::WebhookConfig { action, name: name.clone(), source };
        let Some(config) = api.get_opt(name).await.map_err(err("reading"))? else {
            tracing::debug!(webhook_config = %name, "MutatingWebhookConfiguration not found; CA bundle not published");
            return Ok(());
        };
        let Some(patch) = ca_bundle_patch(&config, bundle.as_bytes()) else { return Ok(()) };
        api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch)).await.map_err(err("patching"))?;
        tracing::info!(webhook_config = %name, "CA bundle published");
        Ok(())
    }
}

enum Written {
    Ok,
    Conflict,
}

/// A JSON patch setting `caBundle` on every webhook whose bundle differs; `None` if all match.
/// Guarded by a `test` of the resourceVersion so a concurrent edit cannot shift the indexes.
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, bundle: &[u8]) -> Option<json_patch::Patch> {
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    let mut ops: Vec<serde_json::Value> = webhooks
        .iter()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|(i, _)| {
            let value = serde_json::to_value(ByteString(bundle.to_vec())).unwrap_or_default();
            serde_json::json!({ "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": value })
        })
        .collect();
    if ops.is_empty() {
        return None;
    }
    if let Some(rv) = &config.metadata.resource_version {
        ops.insert(0, serde_json::json!({ "op": "test", "path": "/metadata/resourceVersion", "value": rv }));
    }
    serde_json::from_value(serde_json::Value::Array(ops)).ok()
}

fn secret_for(name: &str, namespace: &str, material: &TlsMaterial, resource_version: Option<String>) -> Secret {
    let mut data = BTreeMap::from([
        (TLS_CRT.to_string(), ByteString(material.leaf.cert.clone().into_bytes())),
        (TLS_KEY.to_string(), ByteString(material.leaf.key.clone().into_bytes())),
        (CA_CRT.to_string(), ByteString(material.ca.cert.clone().into_bytes())),
        (CA_KEY.to_string(), ByteString(material.ca.key.clone().into_bytes())),
    ]);
    if let Some(previous) = &material.previous_ca {
        data.insert(PREVIOUS_CA_CRT.to_string(), ByteString(previous.clone().into_bytes()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            resource_version,
            labels: Some(BTreeMap::from([(
                crate::api::keys::MANAGED_BY_LABEL.to_string(),
                crate::api::keys::MANAGED_BY_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The material in a Secret, or `None` (logged) when keys are missing or not UTF-8: it is then
/// regenerated and the Secret overwritten.
pub fn material_from_secret(secret: &Secret, name: &str) -> Option<TlsMaterial> {
    let data = secret.data.as_ref();
    let get = |key: &str| data.and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let pair = |cert, key| Some(KeyPairPem { cert: get(cert)?, key: get(key)? });
    let material = pair(CA_CRT, CA_KEY).zip(pair(TLS_CRT, TLS_KEY)).map(|(ca, leaf)| TlsMaterial {
        ca,
        leaf,
        previous_ca: get(PREVIOUS_CA_CRT),
    });
    if material.is_none() {
        tracing::warn!(secret = %name, "certificate Secret is incomplete; it will be regenerated");
    }
    material
}

/// Files mode: the certificate files, read whole.
pub async fn read_cert_dir(dir: &Path) -> Result<KeyPairPem, RotationError> {
    async fn read(path: PathBuf) -> Result<String, RotationError> {
        tokio::fs::read_to_string(&path).await.map_err(|source| RotationError::ReadFile { path, source })
    }
    Ok(KeyPairPem { cert: read(dir.join(TLS_CRT)).await?, key: read(dir.join(TLS_KEY)).await? })
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    SelfSigned(Box<SelfSigned>),
    /// Reload from this directory. The files are compared by content, which also catches the
    /// kubelet's atomic symlink swap of mounted Secrets (where mtimes can be misleading).
    Files(PathBuf),
}

impl CertSource {
    /// Loads (or creates) the certificate once.
    pub async fn refresh(&self, resolver: &CertResolver) -> Result<(), RotationError> {
        match self {
            CertSource::SelfSigned(s) => s.reconcile(resolver).await,
            CertSource::Files(dir) => {
                let pair = read_cert_dir(dir).await?;
                if resolver.set(&pair)? {
                    tracing::info!(dir = %dir.display(), "serving certificate loaded from files");
                }
                // cert-manager puts the issuing CA next to the pair; without it agents fall back
                // to the system roots.
                resolver.set_ca_bundle(tokio::fs::read_to_string(dir.join("ca.crt")).await.ok());
                Ok(())
            }
        }
    }

    /// Refreshes now and then every `interval` until `shutdown`; failures are logged and retried
    /// (the server keeps serving the last good certificate meanwhile).
    pub async fn run(self, resolver: Arc<CertResolver>, interval: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.refresh(&resolver).await {
                tracing::error!(%error, "certificate refresh failed; keeping the current certificate");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    fn config(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
        let webhooks = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| MutatingWebhook {
                name: format!("w{i}.tracelight.io"),
                client_config: WebhookClientConfig {
                    ca_bundle: b.map(|b| ByteString(b.as_bytes().to_vec())),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some("tracelight".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            webhooks: Some(webhooks),
        }
    }

    #[test]
    fn ca_bundle_patch_touches_only_differing_webhooks() {
        let patch = ca_bundle_patch(&config(&[Some("NEW"), None, Some("OLD")]), b"NEW").unwrap();
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(ops[0], serde_json::json!({ "op": "test", "path": "/metadata/resourceVersion", "value": "42" }));
        assert_eq!(ops[1]["path"], "/webhooks/1/clientConfig/caBundle");
        assert_eq!(ops[2]["path"], "/webhooks/2/clientConfig/caBundle");
        assert_eq!(ops[2]["value"], "TkVX", "base64 of the PEM bundle");
        assert_eq!(ops.as_array().unwrap().len(), 3);
    }

    #[test]
    fn ca_bundle_patch_is_none_when_everything_matches() {
        assert!(ca_bundle_patch(&config(&[Some("SAME"), Some("SAME")]), b"SAME").is_none());
    }

    #[test]
    fn secret_round_trips_material() {
        let spec = LeafSpec::for_service("svc", "ns", &[], Duration::from_secs(3600));
        let material = plan(None, &spec, OffsetDateTime::now_utc()).unwrap().unwrap();
        let secret = secret_for("tls", "ns", &material, Some("7".into()));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(material_from_secret(&secret, "tls"), Some(material));
        assert_eq!(material_from_secret(&Secret::default(), "tls"), None);
    }

    #[tokio::test]
    async fn files_mode_reloads_the_certificate_when_the_files_change() {
        let dir = std::env::temp_dir().join(format!("tracelight-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = LeafSpec::for_service("svc", "ns", &[], Duration::from_secs(3600));
        let write = |m: &TlsMaterial| {
            std::fs::write(dir.join(TLS_CRT), &m.leaf.cert).unwrap();
            std::fs::write(dir.join(TLS_KEY), &m.leaf.key).unwrap();
        };
        let (first, second) = (
            plan(None, &spec, OffsetDateTime::now_utc()).unwrap().unwrap(),
            plan(None, &spec, OffsetDateTime::now_utc()).unwrap().unwrap(),
        );
        let source = CertSource::Files(dir.clone());
        let resolver = CertResolver::new();
        write(&first);
        source.refresh(&resolver).await.unwrap();
        assert!(!resolver.set(&first.leaf).unwrap(), "first pair loaded");
        write(&second);
        source.refresh(&resolver).await.unwrap();
        assert!(!resolver.set(&second.leaf).unwrap(), "second pair loaded without a restart");
        std::fs::write(dir.join(TLS_KEY), "garbage").unwrap();
        assert!(source.refresh(&resolver).await.is_err(), "a broken pair is reported");
        assert!(!resolver.set(&second.leaf).unwrap(), "and the last good pair keeps being served");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn files_mode_reads_the_cert_dir() {
        let dir = std::env::temp_dir().join(format!("tracelight-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(read_cert_dir(&dir).await, Err(RotationError::ReadFile { .. })));
        std::fs::write(dir.join(TLS_CRT), "CERT").unwrap();
        std::fs::write(dir.join(TLS_KEY), "KEY").unwrap();
        assert_eq!(read_cert_dir(&dir).await.unwrap(), KeyPairPem { cert: "CERT".into(), key: "KEY".into() });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
