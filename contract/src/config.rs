//! The agent's config file: written by the operator into the per-namespace ConfigMap
//! [`AGENT_CONFIGMAP`], mounted by the injector, watched by the agent.
//!
//! Only live settings live here (endpoint, protocol, sampling ratio, headers): changing them
//! rewrites the ConfigMap and never restarts a pod.
//!
//! # Versions
//!
//! The ConfigMap holds one file per config *file version* ([`ConfigFile`]); an agent reads the
//! newest file it knows (the injector passes its path). Within one file, changes are additive
//! (see the crate's skew rules), and [`AgentConfig::contract_version`] says which contract the
//! writer spoke:
//!
//! - `config.yaml` ([`ConfigFile::V1`]): Tracelight 0.1.0's agents parse it strictly (any unknown
//!   field fails), so it is written from the frozen [`v1::AgentConfig`] and never gains a field.
//!   The operator keeps writing it while such agents may run.
//! - `config.v2.yaml` ([`ConfigFile::V2`]): agents from contract 2 on ignore fields they do not
//!   know, so this file can grow. Contract 3 added the sampling rules, `keepErrors` and local
//!   caps to `sampling`; a contract-2 agent ignores them and applies `sampling.ratio` to all.

use crate::sampling::AgentRule;
use crate::{CollectorProtocol, Compression, Ratio, CONTRACT_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the per-namespace ConfigMap holding the config files.
pub const AGENT_CONFIGMAP: &str = "tracelight-agent";
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

/// The config files of the ConfigMap, one per incompatible shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigFile {
    /// `config.yaml`, read strictly by the agents of Tracelight 0.1.0 (contract 1).
    V1,
    /// `config.v2.yaml`, read tolerantly by agents from contract 2 on.
    V2,
}

impl ConfigFile {
    /// The file this build's agent reads and its injector points it at.
    pub const CURRENT: ConfigFile = ConfigFile::V2;
    /// Every file the operator writes, oldest first.
    pub const ALL: [ConfigFile; 2] = [ConfigFile::V1, ConfigFile::V2];

    /// The key in the ConfigMap (and the file name in [`AGENT_CONFIG_DIR`]).
    pub fn key(self) -> &'static str {
        match self {
            ConfigFile::V1 => "config.yaml",
            ConfigFile::V2 => "config.v2.yaml",
        }
    }

    /// The path the agent container reads it at.
    pub fn path(self) -> String {
        format!("{AGENT_CONFIG_DIR}/{}", self.key())
    }

    /// The file rendered for `config`, in the shape its readers accept.
    pub fn render(self, config: &AgentConfig) -> String {
        match self {
            ConfigFile::V1 => to_yaml(&v1::AgentConfig::from(config)),
            ConfigFile::V2 => to_yaml(config),
        }
    }
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).expect("config types always serialize to YAML")
}

/// The agent's config (the current shape, file [`ConfigFile::CURRENT`]).
///
/// Deliberately not `deny_unknown_fields`: a newer operator may add fields (see the crate's skew
/// rules); [`AgentConfig::parse`] lists the ones it ignored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Contract version of the operator that wrote the file.
    #[serde(default = "contract_v1")]
    pub contract_version: u32,
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
    /// Contract 3: probe traces (see [`crate::probe`]); absent: the agent records none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<crate::probe::ProbeSettings>,
}

fn contract_v1() -> u32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentCollector {
    pub endpoint: String,
    pub protocol: CollectorProtocol,
    #[serde(default)]
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
#[serde(rename_all = "camelCase")]
pub struct AgentSampling {
    /// Ratio the agent applies to spans no rule decides (1 when the SDKs sample); a policy
    /// budget already folded in.
    pub ratio: Ratio,
    /// Contract 3: keep spans with error status whatever the ratio or cap (absent: false, the
    /// behaviour of contract 2).
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_errors: bool,
    /// Contract 3: rules evaluated in order, first match wins (see [`crate::sampling`]).
    /// Contract-2 agents ignore them and apply `ratio` to every span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AgentRule>,
    /// Contract 3: local cap on this pod's kept spans per second for the spans no rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans_per_second: Option<f64>,
}

impl AgentSampling {
    /// Only a ratio, as contract 2 had it.
    pub fn ratio(ratio: Ratio) -> AgentSampling {
        AgentSampling { ratio, keep_errors: false, rules: Vec::new(), spans_per_second: None }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A config read by the agent, with what it did not understand.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedConfig {
    pub config: AgentConfig,
    /// Dotted paths of the fields this build does not know (`collector.newField`), ignored.
    pub unknown_fields: Vec<String>,
}

impl ParsedConfig {
    /// Whether the writer spoke a newer contract than this build.
    pub fn is_from_newer_operator(&self) -> bool {
        self.config.contract_version > CONTRACT_VERSION
    }
}

impl AgentConfig {
    /// Reads a config file, ignoring (and listing) fields this build does not know.
    pub fn parse(text: &[u8]) -> Result<ParsedConfig, serde_yaml::Error> {
        let mut unknown_fields = Vec::new();
        let de = serde_yaml::Deserializer::from_slice(text);
        let config = serde_ignored::deserialize(de, |path| unknown_fields.push(path.to_string()))?;
        Ok(ParsedConfig { config, unknown_fields })
    }

    /// The current file's YAML.
    pub fn to_yaml(&self) -> String {
        ConfigFile::CURRENT.render(self)
    }
}

/// Contract 1 (Tracelight 0.1.0), frozen: exactly the types its agents parse, unknown fields
/// refused. The operator renders [`ConfigFile::V1`] through them, so it cannot write a field
/// those agents would reject. Never change these types.
pub mod v1 {
    use crate::{CollectorProtocol, Compression, Ratio};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AgentConfig {
        pub generation: i64,
        pub policy: String,
        pub collector: AgentCollector,
        pub sampling: AgentSampling,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub resource_attributes: BTreeMap<String, String>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AgentCollector {
        pub endpoint: String,
        pub protocol: CollectorProtocol,
        pub compression: Compression,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub api_key_header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub api_key_file: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ca_file: Option<String>,
        #[serde(default)]
        pub insecure_skip_verify: bool,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AgentSampling {
        pub ratio: Ratio,
    }

    impl From<&super::AgentConfig> for AgentConfig {
        fn from(c: &super::AgentConfig) -> Self {
            let k = &c.collector;
            AgentConfig {
                generation: c.generation,
                policy: c.policy.clone(),
                collector: AgentCollector {
                    endpoint: k.endpoint.clone(),
                    protocol: k.protocol,
                    compression: k.compression,
                    api_key_header: k.api_key_header.clone(),
                    api_key_file: k.api_key_file.clone(),
                    ca_file: k.ca_file.clone(),
                    insecure_skip_verify: k.insecure_skip_verify,
                },
                sampling: AgentSampling { ratio: c.sampling.ratio },
                resource_attributes: c.resource_attributes.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_FIXTURE: &str = include_str!("../fixtures/config/v1.yaml");
    const V2_FIXTURE: &str = include_str!("../fixtures/config/v2.yaml");
    const V3_FIXTURE: &str = include_str!("../fixtures/config/v3.yaml");
    const FUTURE_FIXTURE: &str = include_str!("../fixtures/config/future.yaml");

    /// The contract-3 fixture: the contract-2 config plus rules, `keepErrors` and a cap.
    fn fixture_config_v3(contract_version: u32) -> AgentConfig {
        use crate::sampling::{health_check_rules, AttributeMatch, SpanKind, StringMatch};
        let mut c = fixture_config(contract_version);
        c.sampling.keep_errors = true;
        c.sampling.spans_per_second = Some(40.0);
        c.sampling.rules = health_check_rules();
        c.sampling.rules.truncate(1);
        c.sampling.rules.extend([AgentRule {
            name: "checkout-api".into(),
            workloads: vec!["Deployment/checkout".into()],
            services: vec![StringMatch::prefix("checkout")],
            span_kinds: vec![SpanKind::Server],
            attributes: vec![AttributeMatch { key: "http.route".into(), value: StringMatch::regex("/api/.*") }],
            ratio: Ratio::new(0.5).unwrap(),
            spans_per_second: Some(12.5),
        }]);
        c.probes = Some(crate::probe::ProbeSettings { ratio: Ratio::new(0.015625).unwrap() });
        c
    }

    /// The config the fixtures hold, built in code: a renamed or retyped field breaks the test.
    fn fixture_config(contract_version: u32) -> AgentConfig {
        AgentConfig {
            contract_version,
            generation: 7,
            policy: "default".into(),
            collector: AgentCollector {
                endpoint: "https://collector.observability:4317".into(),
                protocol: CollectorProtocol::Grpc,
                compression: Compression::Gzip,
                api_key_header: Some("x-api-key".into()),
                api_key_file: Some("/etc/tracelight/secret/api-key".into()),
                ca_file: Some("/etc/tracelight/secret/ca.crt".into()),
                insecure_skip_verify: false,
            },
            sampling: AgentSampling::ratio(Ratio::new(0.25).unwrap()),
            resource_attributes: BTreeMap::from([("deployment.environment".into(), "prod".into())]),
            probes: None,
        }
    }

    #[test]
    fn current_agent_reads_a_contract_1_config() {
        let parsed = AgentConfig::parse(V1_FIXTURE.as_bytes()).unwrap();
        assert_eq!(parsed.config, fixture_config(1));
        assert!(parsed.unknown_fields.is_empty(), "{:?}", parsed.unknown_fields);
    }

    #[test]
    fn current_agent_reads_the_released_contract_2_config_exactly() {
        let parsed = AgentConfig::parse(V2_FIXTURE.as_bytes()).unwrap();
        assert_eq!(parsed.config, fixture_config(2));
        assert!(parsed.unknown_fields.is_empty(), "{:?}", parsed.unknown_fields);
        assert!(!parsed.is_from_newer_operator());
    }

    #[test]
    fn current_agent_reads_the_contract_3_config_exactly() {
        let parsed = AgentConfig::parse(V3_FIXTURE.as_bytes()).unwrap();
        assert_eq!(parsed.config, fixture_config_v3(3));
        assert!(parsed.unknown_fields.is_empty(), "{:?}", parsed.unknown_fields);
    }

    /// A contract-2 agent's parser: the contract-2 types (no rules), unknown fields tolerated.
    mod contract2 {
        use crate::{CollectorProtocol, Ratio};
        use serde::Deserialize;

        #[derive(Deserialize, Debug)]
        #[serde(rename_all = "camelCase")]
        pub struct AgentConfig {
            pub generation: i64,
            pub collector: Collector,
            pub sampling: Sampling,
        }
        #[derive(Deserialize, Debug)]
        pub struct Collector {
            pub protocol: CollectorProtocol,
        }
        #[derive(Deserialize, Debug)]
        pub struct Sampling {
            pub ratio: Ratio,
        }
    }

    #[test]
    fn a_contract_2_agent_reads_the_contract_3_file_and_applies_the_fallback_ratio() {
        let rendered = ConfigFile::V2.render(&fixture_config_v3(CONTRACT_VERSION));
        let old: contract2::AgentConfig = serde_yaml::from_str(&rendered).unwrap();
        assert_eq!(old.sampling.ratio.get(), 0.25);
        assert_eq!((old.generation, old.collector.protocol), (7, CollectorProtocol::Grpc));
    }

    #[test]
    fn current_agent_reads_a_future_config_and_names_what_it_ignored() {
        let parsed = AgentConfig::parse(FUTURE_FIXTURE.as_bytes()).unwrap();
        let mut want = fixture_config(9);
        want.sampling.rules = crate::sampling::health_check_rules();
        want.sampling.rules.truncate(1);
        // A probe setting this build does not know: the known ones take their defaults.
        want.probes = Some(crate::probe::ProbeSettings::default());
        assert_eq!(parsed.config, want);
        assert!(parsed.is_from_newer_operator());
        assert_eq!(
            parsed.unknown_fields,
            ["collector.retry", "sampling.rules.0.priority", "sampling.adaptive", "probes.?.threshold"]
        );
    }

    #[test]
    fn the_current_file_renders_as_the_contract_3_fixture() {
        let rendered = ConfigFile::V2.render(&fixture_config_v3(CONTRACT_VERSION));
        let back: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
        let fixture: serde_yaml::Value = serde_yaml::from_str(V3_FIXTURE).unwrap();
        assert_eq!(back, fixture);
    }

    #[test]
    fn a_config_without_rules_renders_as_the_released_contract_2_fixture() {
        let rendered = ConfigFile::V2.render(&fixture_config(2));
        let back: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
        let fixture: serde_yaml::Value = serde_yaml::from_str(V2_FIXTURE).unwrap();
        assert_eq!(back, fixture);
    }

    #[test]
    fn the_v1_file_carries_the_fallback_ratio_only() {
        let rendered = ConfigFile::V1.render(&fixture_config_v3(CONTRACT_VERSION));
        let strict: v1::AgentConfig = serde_yaml::from_str(&rendered).unwrap();
        assert_eq!(strict.sampling.ratio.get(), 0.25);
    }

    #[test]
    fn the_v1_file_is_exactly_what_contract_1_agents_parse() {
        let rendered = ConfigFile::V1.render(&fixture_config(CONTRACT_VERSION));
        // The frozen strict types are the 0.1.0 agent's parser: no unknown field gets through.
        let strict: v1::AgentConfig = serde_yaml::from_str(&rendered).unwrap();
        assert_eq!(strict, v1::AgentConfig::from(&fixture_config(1)));
        let fixture: serde_yaml::Value = serde_yaml::from_str(V1_FIXTURE).unwrap();
        assert_eq!(serde_yaml::from_str::<serde_yaml::Value>(&rendered).unwrap(), fixture);
        assert!(!rendered.contains("contractVersion"));
    }

    #[test]
    fn contract_1_agents_refuse_the_v2_file_which_is_why_both_are_written() {
        let v2 = ConfigFile::V2.render(&fixture_config(CONTRACT_VERSION));
        assert!(serde_yaml::from_str::<v1::AgentConfig>(&v2).is_err());
    }

    #[test]
    fn a_config_missing_a_required_field_is_an_error_not_a_default() {
        let text = V2_FIXTURE.replace("  protocol: grpc\n", "");
        assert!(AgentConfig::parse(text.as_bytes()).is_err());
        assert!(AgentConfig::parse(b"generation: [").is_err());
    }
}
