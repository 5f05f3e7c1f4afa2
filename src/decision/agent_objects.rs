//! The objects the controller owns in governed namespaces, built as pure values: the agent
//! ConfigMap and the copied API-key / CA Secret.

use crate::api::keys::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::api::{SecretKeyRef, TracingPolicy};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tracelight_contract::config::{ConfigFile, AGENT_CONFIGMAP, AGENT_SECRET, AGENT_SECRET_API_KEY, AGENT_SECRET_CA};
use tracelight_contract::report::REPORT_CA_KEY;

pub use crate::api::keys::POLICY_LABEL;

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// The `tracelight.io/policy` label value for a policy name. Names longer than a label value
/// allows are shortened with a hash suffix, so the value stays unique and valid.
pub fn policy_label_value(name: &str) -> String {
    if name.len() <= MAX_LABEL_VALUE {
        return name.to_string();
    }
    let digest: String = Sha256::digest(name.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let prefix = name[..MAX_LABEL_VALUE - digest.len() - 1].trim_end_matches(['-', '.']);
    format!("{prefix}-{digest}")
}

/// Labels on every object the policy owns.
pub fn owned_labels(policy: &TracingPolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (POLICY_LABEL.to_string(), policy_label_value(&policy.name_any())),
    ])
}

/// Label selector finding every object any policy owns, in any namespace (the owned-object caches).
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// Field selector of the owned-object lists and watches: the agent objects' one name. The API
/// server authorizes a cluster-wide list or watch with `metadata.name=<name>` against RBAC's
/// `resourceNames`, so the chart grants reads of Secrets named `tracelight-agent` and of no other
/// Secret outside the operator's namespace.
pub fn owned_name_selector(name: &str) -> String {
    format!("metadata.name={name}")
}

/// Whether an object with these labels belongs to `policy` (see [`owned_labels`]).
pub fn is_owned_by(policy: &TracingPolicy, labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_BY_LABEL).is_some_and(|v| v == MANAGED_BY_VALUE)
        && labels.get(POLICY_LABEL).is_some_and(|v| *v == policy_label_value(&policy.name_any()))
}

/// Label selector finding every object the policy owns, in any namespace.
pub fn owned_selector(policy: &TracingPolicy) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{POLICY_LABEL}={}", policy_label_value(&policy.name_any()))
}

fn owned_meta(policy: &TracingPolicy, name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(owned_labels(policy)),
        ..Default::default()
    }
}

/// The agent ConfigMap for `namespace`: the live settings the agent reloads without a restart.
/// `report_ca`: the CA bundle agents verify the operator's report endpoint with, when known.
pub fn agent_configmap(policy: &TracingPolicy, namespace: &str, report_ca: Option<&str>) -> ConfigMap {
    let sampling = crate::sampling::render::agent_sampling(
        &policy.spec.sampling,
        namespace,
        &BTreeMap::new(),
        &crate::sampling::SamplingPlan::default(),
    );
    agent_configmap_with(policy, namespace, report_ca, sampling, &Default::default())
}

/// [`agent_configmap`] with the namespace's sampling settings (rules resolved, ratios and caps
/// of the moment) and the operator's probe settings (`--probe-ratio`).
pub fn agent_configmap_with(
    policy: &TracingPolicy,
    namespace: &str,
    report_ca: Option<&str>,
    sampling: tracelight_contract::config::AgentSampling,
    probes: &tracelight_contract::probe::ProbeSettings,
) -> ConfigMap {
    let mut config = crate::api::agent_config::agent_config_with(policy, sampling);
    config.probes = Some(probes.clone());
    // Every file version, so agents of the previous release keep reading theirs during an upgrade.
    let mut data: BTreeMap<String, String> =
        ConfigFile::ALL.iter().map(|file| (file.key().to_string(), file.render(&config))).collect();
    if let Some(ca) = report_ca {
        data.insert(REPORT_CA_KEY.to_string(), ca.to_string());
    }
    ConfigMap { metadata: owned_meta(policy, AGENT_CONFIGMAP, namespace), data: Some(data), ..Default::default() }
}

/// Secret values read from the policy's source Secrets. Debug never prints them.
#[derive(Clone, Default, PartialEq)]
pub struct SecretValues {
    pub api_key: Option<ByteString>,
    pub ca: Option<ByteString>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The per-namespace agent Secret holding copies of the source keys.
pub fn agent_secret(policy: &TracingPolicy, namespace: &str, values: &SecretValues) -> Secret {
    let data: BTreeMap<String, ByteString> = [(AGENT_SECRET_API_KEY, &values.api_key), (AGENT_SECRET_CA, &values.ca)]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key.to_string(), v)))
        .collect();
    Secret {
        metadata: owned_meta(policy, AGENT_SECRET, namespace),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The source Secret references of a policy: (what for, reference).
pub fn source_secret_refs(policy: &TracingPolicy) -> Vec<(SourceKind, SecretKeyRef)> {
    let collector = &policy.spec.collector;
    let ca = collector.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()).map(SecretKeyRef::from);
    [(SourceKind::ApiKey, collector.api_key_secret_ref.clone()), (SourceKind::Ca, ca)]
        .into_iter()
        .filter_map(|(kind, r)| r.map(|r| (kind, r)))
        .collect()
}

/// Where the controller may read source Secrets from: the operator's own namespace and the
/// namespaces the installation allows (`--secret-namespaces`, chart value
/// `secrets.sourceNamespaces`). A policy is cluster-scoped and whoever may write one could
/// otherwise name any Secret of the cluster and have it copied into every governed namespace and
/// sent to an endpoint of their choice; the chart grants reads of Secrets only in these namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSources {
    namespaces: std::collections::BTreeSet<String>,
}

impl SecretSources {
    /// The operator's namespace and `extra` (empty names ignored).
    pub fn new(operator_namespace: &str, extra: &[String]) -> Self {
        let namespaces = std::iter::once(operator_namespace)
            .chain(extra.iter().map(String::as_str))
            .map(str::trim)
            .filter(|ns| !ns.is_empty())
            .map(str::to_string)
            .collect();
        SecretSources { namespaces }
    }

    pub fn allows(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }

    /// The allowed namespaces, for messages.
    pub fn describe(&self) -> String {
        self.namespaces.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
    }

    /// Refusals of the policy's source Secret references outside the allowed namespaces, one
    /// description each (names only): such a Secret is never read nor copied.
    pub fn refusals(&self, policy: &TracingPolicy) -> Vec<String> {
        source_secret_refs(policy)
            .into_iter()
            .filter(|(_, r)| !self.allows(&r.namespace))
            .map(|(kind, r)| {
                format!(
                    "{} Secret {}/{} is outside the namespaces the operator reads Secrets from ({}): \
                     move it there, or add its namespace to the chart value secrets.sourceNamespaces",
                    kind.describe(),
                    r.namespace,
                    r.name,
                    self.describe()
                )
            })
            .collect()
    }
}

/// What a source Secret provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    ApiKey,
    Ca,
}

impl SourceKind {
    pub fn describe(self) -> &'static str {
        match self {
            SourceKind::ApiKey => "API key",
            SourceKind::Ca => "collector CA bundle",
        }
    }
}

/// Picks the referenced key out of a fetched source Secret (`None`: Secret missing). Returns
/// the value, or a description of what is missing (names only, never values).
pub fn pick_key(source: Option<&Secret>, kind: SourceKind, r: &SecretKeyRef) -> Result<ByteString, String> {
    let Some(secret) = source else {
        return Err(format!("{} Secret {}/{} not found", kind.describe(), r.namespace, r.name));
    };
    let from_data = secret.data.as_ref().and_then(|d| d.get(&r.key)).cloned();
    let from_string = || secret.string_data.as_ref().and_then(|d| d.get(&r.key)).map(|s| ByteString(s.clone().into()));
    from_data
        .or_else(from_string)
        .ok_or_else(|| format!("{} Secret {}/{} has no key {:?}", kind.describe(), r.namespace, r.name, r.key))
}

/// How long an unchanged agent object is trusted before it is applied again, which repairs one
/// edited by hand (one deleted is written again as soon as the owned-object cache misses it).
/// Every active namespace is applied again this often: at a few hundred namespaces, a minute
/// made it a large part of the operator's API requests.
pub const REWRITE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// The agent objects last applied per (policy, namespace): a rollout reconciles on every workload
/// change, and re-applying unchanged objects in every active namespace each time made most of the
/// operator's API requests. Keyed by the namespace's uid too, so a recreated namespace is
/// written at once.
#[derive(Debug, Default)]
pub struct WriteMemo(std::collections::HashMap<WriteKey, (String, std::time::Instant)>);

/// (policy, namespace, namespace uid).
type WriteKey = (String, String, String);

impl WriteMemo {
    /// Whether `digest` was applied to this namespace less than [`REWRITE_AFTER`] ago.
    pub fn is_fresh(&self, key: &(String, String, String), digest: &str, now: std::time::Instant) -> bool {
        self.0.get(key).is_some_and(|(d, at)| d == digest && now.saturating_duration_since(*at) < REWRITE_AFTER)
    }

    pub fn record(&mut self, key: (String, String, String), digest: String, now: std::time::Instant) {
        self.0.insert(key, (digest, now));
    }

    /// Forgets a namespace whose objects were deleted.
    pub fn forget(&mut self, namespace: &str) {
        self.0.retain(|(_, ns, _), _| ns != namespace);
    }
}

/// A digest of the objects to apply (the Secret's values included: in memory only).
pub fn objects_digest(cm: &ConfigMap, secret: Option<&Secret>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(cm).unwrap_or_default());
    if let Some(secret) = secret {
        hasher.update(serde_json::to_vec(secret).unwrap_or_default());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TracingPolicySpec;
    use tracelight_contract::config::{v1, AgentConfig};

    #[test]
    fn owned_objects_are_told_apart_by_policy() {
        let mine = owned_labels(&policy("shop"));
        assert!(is_owned_by(&policy("shop"), &mine));
        assert!(!is_owned_by(&policy("other"), &mine));
        let mut by_someone_else = mine.clone();
        by_someone_else.remove(MANAGED_BY_LABEL);
        assert!(!is_owned_by(&policy("shop"), &by_someone_else));
        assert!(managed_selector().starts_with(&format!("{MANAGED_BY_LABEL}=")));
    }

    fn policy(name: &str) -> TracingPolicy {
        let spec: TracingPolicySpec = serde_json::from_value(serde_json::json!({
            "collector": {
                "endpoint": "https://collector:4317", "protocol": "grpc",
                "apiKeySecretRef": {"namespace": "ops", "name": "backend"},
                "tls": {"caSecretRef": {"namespace": "ops", "name": "ca", "key": "ca.crt"}}
            },
            "sampling": {"ratio": 0.25}
        }))
        .unwrap();
        let mut p = TracingPolicy::new(name, spec);
        p.metadata.generation = Some(7);
        p
    }

    #[test]
    fn configmap_carries_agent_config_and_ownership_labels() {
        let cm = agent_configmap(&policy("default"), "shop", Some("PEM"));
        assert_eq!(cm.data.as_ref().unwrap()[REPORT_CA_KEY], "PEM");
        assert_eq!(cm.metadata.name.as_deref(), Some(AGENT_CONFIGMAP));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
        let labels = cm.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "tracelight");
        assert_eq!(labels[POLICY_LABEL], "default");
        let data = cm.data.as_ref().unwrap();
        let config = AgentConfig::parse(data[ConfigFile::CURRENT.key()].as_bytes()).unwrap().config;
        assert_eq!(config.generation, 7);
        assert_eq!(config.contract_version, tracelight_contract::CONTRACT_VERSION);
        // The previous release's agents parse `config.yaml` strictly, and get the same settings.
        let v1: v1::AgentConfig = serde_yaml::from_str(&data[ConfigFile::V1.key()]).unwrap();
        assert_eq!(v1, v1::AgentConfig::from(&config));
        assert_eq!(config.sampling.ratio.get(), 0.25);
        assert_eq!(config.policy, "default");
    }

    #[test]
    fn secret_copies_only_present_keys_and_debug_hides_values() {
        let values = SecretValues { api_key: Some(ByteString(b"s3cr3t".to_vec())), ca: None };
        let s = agent_secret(&policy("default"), "shop", &values);
        let data = s.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec![AGENT_SECRET_API_KEY]);
        assert!(!format!("{values:?}").contains("s3cr3t"));
    }

    #[test]
    fn source_refs_and_missing_keys_are_described_without_values() {
        let p = policy("default");
        let refs = source_secret_refs(&p);
        assert_eq!(refs.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![SourceKind::ApiKey, SourceKind::Ca]);
        let (kind, r) = refs[0].clone();
        assert_eq!(pick_key(None, kind, &r).unwrap_err(), "API key Secret ops/backend not found");
        let mut secret = Secret {
            data: Some(BTreeMap::from([("other".to_string(), ByteString(b"x".to_vec()))])),
            ..Default::default()
        };
        assert!(pick_key(Some(&secret), kind, &r).unwrap_err().contains("has no key \"api-key\""));
        secret.data.as_mut().unwrap().insert("api-key".into(), ByteString(b"k".to_vec()));
        assert_eq!(pick_key(Some(&secret), kind, &r).unwrap(), ByteString(b"k".to_vec()));
    }

    #[test]
    fn secrets_outside_the_allowed_namespaces_are_refused_by_name() {
        let p = policy("default");
        let only_operator = SecretSources::new("tracelight-system", &[]);
        let refused = only_operator.refusals(&p);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].starts_with("API key Secret ops/backend is outside"), "{}", refused[0]);
        assert!(refused[0].contains("(tracelight-system)"), "{}", refused[0]);
        assert!(refused[1].starts_with("collector CA bundle Secret ops/ca is outside"), "{}", refused[1]);
        let with_ops = SecretSources::new("tracelight-system", &["ops".into(), " ".into()]);
        assert!(with_ops.refusals(&p).is_empty());
        assert_eq!(with_ops.describe(), "ops, tracelight-system");
        assert!(!with_ops.allows("kube-system") && !with_ops.allows(""));
        let mut no_secrets = p.clone();
        no_secrets.spec.collector.api_key_secret_ref = None;
        no_secrets.spec.collector.tls = None;
        assert!(only_operator.refusals(&no_secrets).is_empty(), "a policy without Secrets copies nothing");
    }

    #[test]
    fn long_policy_names_give_valid_unique_label_values() {
        let long_a = format!("{}-a", "x".repeat(80));
        let long_b = format!("{}-b", "x".repeat(80));
        let (a, b) = (policy_label_value(&long_a), policy_label_value(&long_b));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert!(a.chars().last().unwrap().is_ascii_alphanumeric());
        assert_eq!(policy_label_value("short"), "short");
        assert_eq!(owned_selector(&policy("p")), "app.kubernetes.io/managed-by=tracelight,tracelight.io/policy=p");
    }

    #[test]
    fn unchanged_objects_are_not_reapplied_until_the_memo_expires() {
        use std::time::{Duration, Instant};
        let mut memo = WriteMemo::default();
        let key = ("p".to_string(), "shop".to_string(), "uid-1".to_string());
        let t0 = Instant::now();
        assert!(!memo.is_fresh(&key, "d1", t0), "never written");
        memo.record(key.clone(), "d1".into(), t0);
        assert!(memo.is_fresh(&key, "d1", t0 + Duration::from_secs(59)));
        assert!(!memo.is_fresh(&key, "d2", t0 + Duration::from_secs(1)), "a changed object is applied at once");
        assert!(!memo.is_fresh(&key, "d1", t0 + REWRITE_AFTER), "applied again now and then");
        let recreated = ("p".to_string(), "shop".to_string(), "uid-2".to_string());
        assert!(!memo.is_fresh(&recreated, "d1", t0), "a recreated namespace gets its objects at once");
        memo.forget("shop");
        assert!(!memo.is_fresh(&key, "d1", t0), "forgotten once deleted");
    }

    #[test]
    fn the_digest_changes_with_the_objects() {
        let mut policy: TracingPolicy =
            serde_yaml::from_str(include_str!("../../config/samples/tracingpolicy.yaml")).unwrap();
        let a = objects_digest(&agent_configmap(&policy, "shop", None), None);
        assert_eq!(a, objects_digest(&agent_configmap(&policy, "shop", None), None));
        policy.spec.sampling.ratio = crate::api::Ratio::new(0.5).unwrap();
        assert_ne!(a, objects_digest(&agent_configmap(&policy, "shop", None), None));
    }
}
