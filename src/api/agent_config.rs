//! The agent's configuration file: the contract between the controller, which writes it into a
//! per-namespace ConfigMap, the injector, which mounts it, and the agent, which watches it.
//!
//! Only live settings live here (endpoint, protocol, sampling ratio, headers): changing them
//! rewrites the ConfigMap and never restarts a pod.

use super::policy::{CollectorProtocol, Compression, TracingPolicy};
use super::quantity::Ratio;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the per-namespace ConfigMap holding [`AgentConfig`].
pub const AGENT_CONFIGMAP: &str = "tracelight-agent";
/// Key of the config file inside the ConfigMap.
pub const AGENT_CONFIG_KEY: &str = "config.yaml";
/// Name of the per-namespace Secret holding the copied API key (and CA bundle, when set).
pub const AGENT_SECRET: &str = "tracelight-agent";
/// Key of the API key inside [`AGENT_SECRET`].
pub const AGENT_SECRET_API_KEY: &str = "api-key";
/// Key of the collector CA bundle inside [`AGENT_SECRET`].
pub const AGENT_SECRET_CA: &str = "ca.crt";
/// Where the agent container sees the ConfigMap.
pub const AGENT_CONFIG_DIR: &str = "/etc/tracelight/agent";
/// Where the agent container sees the Secret.
pub const AGENT_SECRET_DIR: &str = "/etc/tracelight/secret";

/// The agent's config file (`config.yaml`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// Policy generation this config was rendered from; agents report it back so the operator
    /// can tell when a change has reached every pod.
    pub generation: i64,
    /// Name of the policy.
    pub policy: String,
    pub collector: AgentCollector,
    pub sampling: AgentSampling,
    /// Resource attributes the agent adds to spans that lack them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentCollector {
    pub endpoint: String,
    pub protocol: CollectorProtocol,
    pub compression: Compression,
    /// Header carrying the API key, when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_header: Option<String>,
    /// File holding the API key (mounted Secret), when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    /// File holding a PEM CA bundle to trust, when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSampling {
    /// Ratio the agent applies (1 when the SDKs sample).
    pub ratio: Ratio,
}

impl AgentConfig {
    /// The config a policy asks for, with `effective_ratio` (the spec's ratio, or lower under a
    /// spans-per-second budget).
    pub fn for_policy(policy: &TracingPolicy, effective_ratio: Ratio) -> AgentConfig {
        let spec = &policy.spec;
        let collector = &spec.collector;
        let tls = collector.tls.clone().unwrap_or_default();
        let agent_ratio = match spec.sampling.mode {
            super::policy::SamplingMode::Agent => effective_ratio,
            super::policy::SamplingMode::Sdk => Ratio::ALWAYS,
        };
        AgentConfig {
            generation: policy.metadata.generation.unwrap_or_default(),
            policy: policy.metadata.name.clone().unwrap_or_default(),
            collector: AgentCollector {
                endpoint: collector.endpoint.clone(),
                protocol: collector.protocol,
                compression: collector.compression,
                api_key_header: collector.api_key_secret_ref.as_ref().map(|_| collector.api_key_header.clone()),
                api_key_file: collector
                    .api_key_secret_ref
                    .as_ref()
                    .map(|_| format!("{AGENT_SECRET_DIR}/{AGENT_SECRET_API_KEY}")),
                ca_file: tls.ca_secret_ref.as_ref().map(|_| format!("{AGENT_SECRET_DIR}/{AGENT_SECRET_CA}")),
                insecure_skip_verify: tls.insecure_skip_verify,
            },
            sampling: AgentSampling { ratio: agent_ratio },
            resource_attributes: spec.resource_attributes.clone(),
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("AgentConfig always serializes")
    }

    pub fn from_yaml(text: &str) -> Result<AgentConfig, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }
}

/// Whether the agent needs the per-namespace Secret mounted.
pub fn needs_secret(policy: &TracingPolicy) -> bool {
    let c = &policy.spec.collector;
    c.api_key_secret_ref.is_some() || c.tls.as_ref().is_some_and(|t| t.ca_secret_ref.is_some())
}
