//! The manifest hash: a digest of exactly the settings that change an injected pod's manifest.
//!
//! It decides when a workload needs a restart. Live settings (collector endpoint, sampling ratio
//! in agent mode, API key) are deliberately left out: agents reload them without a restart.

use super::language::Language;
use super::{AdminExposure, InjectOptions};
use crate::api::{AgentPorts, AgentSpec, Propagator, SamplingMode, TracingPolicy};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Serialize)]
struct ManifestInputs<'a> {
    agent: &'a AgentSpec,
    /// The agent image as resolved: an operator upgrade that ships a new agent changes it.
    agent_image: &'a str,
    ports: AgentPorts,
    native_sidecar: bool,
    with_secret: bool,
    propagators: &'a [Propagator],
    resource_attributes: &'a BTreeMap<String, String>,
    sampling_mode: SamplingMode,
    /// Only in `sdk` mode, where the ratio is an env value of the application.
    sdk_ratio: Option<f64>,
    /// Per instrumented container: language, image and extra env (None: no language).
    containers: BTreeMap<&'a str, Option<LanguageInputs<'a>>>,
    /// Where the agent pushes its reports (the token volume and flags come with it). Left out
    /// when off, so hashes from before the report channel existed stay the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    report_url: Option<&'a str>,
    /// The agents' report interval, when the operator sets one (an agent flag).
    #[serde(skip_serializing_if = "Option::is_none")]
    report_interval_secs: Option<u64>,
    /// The agent's flags and env follow it. Left out at its default, like `report_url`.
    #[serde(skip_serializing_if = "is_default_exposure")]
    admin_exposure: AdminExposure,
}

fn is_default_exposure(e: &AdminExposure) -> bool {
    *e == AdminExposure::default()
}

#[derive(Serialize)]
struct LanguageInputs<'a> {
    language: Language,
    image: &'a str,
    env: Option<&'a BTreeMap<String, String>>,
}

/// Hex digest (16 characters) of the manifest-changing settings for a pod whose instrumented
/// containers and languages are `containers`.
pub fn manifest_hash(
    policy: &TracingPolicy,
    ports: AgentPorts,
    options: &InjectOptions,
    with_secret: bool,
    containers: &BTreeMap<String, Option<Language>>,
) -> String {
    let spec = &policy.spec;
    let images = &options.images;
    let inputs = ManifestInputs {
        agent: &spec.agent,
        agent_image: images.agent(&spec.agent),
        ports,
        native_sidecar: options.native_sidecar,
        with_secret,
        propagators: &spec.propagators,
        resource_attributes: &spec.resource_attributes,
        sampling_mode: spec.sampling.mode,
        sdk_ratio: (spec.sampling.mode == SamplingMode::Sdk).then(|| spec.sampling.ratio.get()),
        containers: containers
            .iter()
            .map(|(name, lang)| {
                let lang = lang.map(|l| LanguageInputs {
                    language: l,
                    image: images.instrumentation(l, &spec.instrumentation),
                    env: l.settings(&spec.instrumentation).map(|s| &s.env),
                });
                (name.as_str(), lang)
            })
            .collect(),
        report_url: options.report_url.as_deref(),
        report_interval_secs: options.report_url.as_ref().and(options.report_interval_secs),
        admin_exposure: options.admin_exposure,
    };
    let bytes = serde_json::to_vec(&inputs).expect("manifest inputs always serialize");
    let digest = Sha256::digest(&bytes);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    digest.iter().take(8).flat_map(|b| [HEX[usize::from(b >> 4)] as char, HEX[usize::from(b & 15)] as char]).collect()
}
