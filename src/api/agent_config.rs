//! The agent config a policy asks for. The file's types, names and versions are the contract's
//! (`tracelight_contract::config`); here the policy is turned into one.

use super::policy::{SamplingMode, TracingPolicy};
use tracelight_contract::config::{
    AgentCollector, AgentConfig, AgentSampling, AGENT_SECRET_API_KEY, AGENT_SECRET_CA, AGENT_SECRET_DIR,
};
use tracelight_contract::{Ratio, CONTRACT_VERSION};

/// The config a policy asks for with only a ratio, `effective_ratio` (no rules: what
/// `tracelight inject` and tests render; the controller renders each namespace's rules with
/// [`agent_config_with`]).
pub fn agent_config_for(policy: &TracingPolicy, effective_ratio: Ratio) -> AgentConfig {
    let sampling = match policy.spec.sampling.mode {
        SamplingMode::Agent => AgentSampling::ratio(effective_ratio),
        SamplingMode::Sdk => AgentSampling::ratio(Ratio::ALWAYS),
    };
    agent_config_with(policy, sampling)
}

/// The config a policy asks for, with the namespace's sampling settings.
pub fn agent_config_with(policy: &TracingPolicy, sampling: AgentSampling) -> AgentConfig {
    let spec = &policy.spec;
    let collector = &spec.collector;
    let tls = collector.tls.clone().unwrap_or_default();
    AgentConfig {
        contract_version: CONTRACT_VERSION,
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
        sampling,
        resource_attributes: spec.resource_attributes.clone(),
        // The controller writes the ratio of its `--probe-ratio` (see `resources`).
        probes: Some(tracelight_contract::probe::ProbeSettings::default()),
    }
}

/// Whether the agent needs the per-namespace Secret mounted.
pub fn needs_secret(policy: &TracingPolicy) -> bool {
    let c = &policy.spec.collector;
    c.api_key_secret_ref.is_some() || c.tls.as_ref().is_some_and(|t| t.ca_secret_ref.is_some())
}
