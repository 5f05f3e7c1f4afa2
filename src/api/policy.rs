//! The `TracingPolicy` custom resource: what a platform team declares.
//!
//! Doc comments on fields are user documentation: they become `kubectl explain` text.

use super::keys::NAMESPACE_ENABLED_LABEL;
use super::quantity::Duration;
use super::status::TracingPolicyStatus;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub use tracelight_contract::sampling::SpanKind;
use tracelight_contract::Ratio;
pub use tracelight_contract::{CollectorProtocol, Compression};

/// A cluster-wide tracing policy: which namespaces get tracing, where spans go, how they are
/// sampled, and in which order the change is rolled out.
// The repeated `printcolumn(type_ = ...)` keys trip clippy's duplicated-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tracelight.io",
    version = "v1alpha1",
    kind = "TracingPolicy",
    plural = "tracingpolicies",
    shortname = "tp",
    category = "tracelight",
    status = "TracingPolicyStatus",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Rollout phase"),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.coverage.namespaces",
        description = "Governed namespaces"
    ),
    printcolumn(
        name = "Injected",
        type_ = "integer",
        json_path = ".status.coverage.injected",
        description = "Injected pods"
    ),
    printcolumn(
        name = "Reporting",
        type_ = "integer",
        json_path = ".status.coverage.reporting",
        description = "Injected pods whose agent receives spans"
    ),
    printcolumn(
        name = "Silent",
        type_ = "integer",
        json_path = ".status.coverage.silent",
        description = "Injected pods whose agent receives no spans"
    ),
    printcolumn(
        name = "Sampling",
        type_ = "number",
        json_path = ".spec.sampling.ratio",
        description = "Head sampling ratio"
    ),
    printcolumn(
        name = "Kept/s",
        type_ = "number",
        json_path = ".status.sampling.spansPerSecond",
        description = "Spans kept per second, all agents (from their reports)"
    ),
    printcolumn(
        name = "Agents",
        type_ = "string",
        json_path = ".status.coverage.agentVersionSummary",
        description = "Injected pods by agent version (version:pods, the most common first)"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TracingPolicySpec {
    /// Which namespaces this policy governs.
    /// Default: namespaces labelled `tracelight.io/enabled: "true"`.
    #[serde(default = "default_namespace_selector")]
    #[schemars(default = "default_namespace_selector")]
    pub namespace_selector: LabelSelector,

    /// Optional narrower selection of pods inside the governed namespaces.
    /// Default: every pod (except those labelled `tracelight.io/inject: "false"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// Where the agents export spans.
    pub collector: CollectorSpec,

    /// Head sampling. Default: keep every trace (`ratio: 1`).
    #[serde(default)]
    pub sampling: SamplingSpec,

    /// Context propagation formats, in order, given to the SDKs as `OTEL_PROPAGATORS`.
    /// Default: `[tracecontext, baggage]`.
    #[serde(default = "default_propagators")]
    #[schemars(default = "default_propagators", length(min = 1, max = 8))]
    pub propagators: Vec<Propagator>,

    /// Custom resource attributes added to every span (for example `deployment.environment: prod`),
    /// on top of the standard `k8s.*` attributes. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,

    /// The tracing agent sidecar. Default: the image the operator ships with, small resources.
    #[serde(default)]
    pub agent: AgentSpec,

    /// Language auto-instrumentation, used by pods that ask for it with the annotation
    /// `tracelight.io/language`. Default: the images the operator is configured with
    /// (`--instrumentation-image`), else the upstream OpenTelemetry auto-instrumentation images.
    #[serde(default)]
    pub instrumentation: InstrumentationSpec,

    /// How the change is rolled out across the governed namespaces.
    /// Default: one phase containing every governed namespace, one workload at a time.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// After the rollout: how often coverage and agent overhead are reviewed, and the overhead
    /// bounds. Default: daily, no bounds.
    #[serde(default)]
    pub review: super::review::ReviewSpec,

    /// Alerts the operator renders against the baseline it records. Default: none.
    #[serde(default)]
    pub alerting: super::review::AlertingSpec,
}

pub fn default_namespace_selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(NAMESPACE_ENABLED_LABEL.to_string(), "true".to_string())])),
        match_expressions: None,
    }
}

pub fn default_propagators() -> Vec<Propagator> {
    vec![Propagator::Tracecontext, Propagator::Baggage]
}

/// The collector (or tracing backend) the agents export to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// URL of the OTLP endpoint, with scheme: `http://otel-collector.observability:4317`,
    /// `https://api.vendor.example`. Required.
    #[schemars(pattern(r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?(/[^\s]*)?$"), length(max = 2048))]
    pub endpoint: String,

    /// OTLP transport to the collector: `grpc` (usually port 4317) or `http/protobuf` (usually 4318).
    /// Required, so gRPC and HTTP ports are never mixed up by accident.
    pub protocol: CollectorProtocol,

    /// Compression of exported batches. Default: `gzip`.
    #[serde(default)]
    pub compression: Compression,

    /// TLS settings for `https://` endpoints. Default: system roots, full verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Secret holding the backend API key. The operator copies it into each governed namespace
    /// and mounts it into the agent container only: it never appears in a pod spec, env or log.
    /// Default: no API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Header that carries the API key on every export request. Default: `api-key`.
    #[serde(default = "default_api_key_header")]
    #[schemars(default = "default_api_key_header", pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub api_key_header: String,
}

pub fn default_api_key_header() -> String {
    "api-key".to_string()
}

/// TLS towards the collector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret with a PEM CA bundle to trust instead of the system roots. Default: system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Skip certificate verification. For tests only. Default: `false`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A key of a Secret in a named namespace (the policy is cluster-scoped).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret: the operator's own, or one the installation allows (chart value
    /// `secrets.sourceNamespaces`). A Secret anywhere else is refused (`Ready=False`, reason
    /// `SecretNotAllowed`) and nothing is copied.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret. Default: `api-key`.
    #[serde(default = "default_secret_key")]
    #[schemars(default = "default_secret_key", length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret key holding a PEM CA bundle (the policy is cluster-scoped, so it names a namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Namespace of the Secret: the operator's own, or one the installation allows (chart value
    /// `secrets.sourceNamespaces`). A Secret anywhere else is refused (`Ready=False`, reason
    /// `SecretNotAllowed`) and nothing is copied.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret. Default: `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(default = "default_ca_key", length(min = 1, max = 253))]
    pub key: String,
}

impl From<&CaSecretRef> for SecretKeyRef {
    fn from(r: &CaSecretRef) -> Self {
        SecretKeyRef { namespace: r.namespace.clone(), name: r.name.clone(), key: r.key.clone() }
    }
}

pub fn default_ca_key() -> String {
    "ca.crt".to_string()
}

pub fn default_secret_key() -> String {
    "api-key".to_string()
}

/// Head sampling: a ratio, rules per workload and route, and budgets of spans per second.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rules) || self.rules.all(r, self.rules.exists_one(q, q.name == r.name))").message("sampling rule names must be unique").field_path(".rules"))]
pub struct SamplingSpec {
    /// Fraction of traces kept, between 0 and 1, for spans no rule decides. Parent-based and
    /// consistent across services: every pod keeps or drops a trace as a whole. Default: `1`
    /// (keep everything).
    #[serde(default)]
    #[schemars(default = "Ratio::default")]
    pub ratio: Ratio,

    /// Where the ratio is applied. `agent` (default): SDKs keep everything
    /// (`parentbased_always_on`) and the agent samples, so a ratio change reaches running pods
    /// live. `sdk`: SDKs sample with `parentbased_traceidratio`; a ratio change then restarts
    /// workloads. Rules, budgets, `dropHealthChecks` and `keepErrors` need `agent`.
    #[serde(default)]
    pub mode: SamplingMode,

    /// Optional budget of kept spans per second across everything the policy governs (all
    /// pods, all rules). The operator measures the spans the agents receive and lowers every
    /// ratio by the same factor to stay under it, pushing the new ratios to running agents
    /// through their ConfigMap; each agent also caps its own share locally. Default: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub spans_per_second_budget: Option<u32>,

    /// Rules tried in order for each span; the first that matches decides its ratio and budget,
    /// spans no rule matches get `ratio`. At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rules: Vec<SamplingRule>,

    /// Drop server spans of health checks and metrics scrapes: HTTP routes such as `/health`,
    /// `/healthz`, `/ready`, `/readyz`, `/live`, `/livez`, `/ping`, `/metrics` (also under
    /// `/-/`, `/actuator/`), and the gRPC health service `grpc.health.v1.Health`. Tried before
    /// your rules. Default: `true`.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub drop_health_checks: bool,

    /// Keep spans with error status whatever the ratio or budget. Such a span's trace may have
    /// been dropped by other services: you get the error span, not always its whole trace.
    /// Default: `true`.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub keep_errors: bool,

    /// The smallest ratio a budget may lower a ratio to; below it the budget is reported as
    /// not met (condition `BudgetMet` false) rather than sampling everything away.
    /// Default: `0.001`.
    #[serde(default = "default_min_ratio")]
    #[schemars(default = "default_min_ratio")]
    pub min_ratio: Ratio,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        SamplingSpec {
            ratio: Ratio::ALWAYS,
            mode: SamplingMode::Agent,
            spans_per_second_budget: None,
            rules: Vec::new(),
            drop_health_checks: true,
            keep_errors: true,
            min_ratio: default_min_ratio(),
        }
    }
}

pub fn default_min_ratio() -> Ratio {
    Ratio::new(0.001).expect("in range")
}

/// One sampling rule: which spans, and how many of them to keep.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ratio) || has(self.spansPerSecond)").message("a rule sets ratio, spansPerSecond, or both"))]
pub struct SamplingRule {
    /// Name of the rule, unique in the policy: its label in agent metrics and in the status.
    /// `default` and `health-checks` are taken.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Which spans the rule decides; every condition set must hold. Default: every span.
    #[serde(default, rename = "match")]
    pub matches: SpanMatch,

    /// Fraction of the matched traces kept. Default: `1` when only `spansPerSecond` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,

    /// Budget of kept spans per second for what the rule matches, summed over all pods. The
    /// operator lowers the rule's ratio to stay under it (never above `ratio`). With `ratio`
    /// too, the lower of the two wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub spans_per_second: Option<u32>,
}

/// The conditions of a rule. Unset conditions match everything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpanMatch {
    /// Namespaces (among those the policy governs) whose pods the rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Workloads the rule applies to (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub workloads: Vec<WorkloadMatch>,
    /// The span's `service.name` must match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub services: Vec<StringMatch>,
    /// The span's kind must be one of these: `server`, `client`, `internal`, `producer`,
    /// `consumer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub span_kinds: Vec<SpanKind>,
    /// Span attributes. For every attribute key listed, one of its entries must match (entries
    /// of the same key are alternatives); a span without the attribute does not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub attributes: Vec<AttributeMatch>,
}

/// A workload, by kind and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadMatch {
    /// `Deployment`, `StatefulSet` or `DaemonSet`. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MatchedWorkloadKind>,
    /// The workload's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kinds of workloads a rule can name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MatchedWorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl MatchedWorkloadKind {
    pub const ALL: [MatchedWorkloadKind; 3] =
        [MatchedWorkloadKind::Deployment, MatchedWorkloadKind::StatefulSet, MatchedWorkloadKind::DaemonSet];
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedWorkloadKind::Deployment => "Deployment",
            MatchedWorkloadKind::StatefulSet => "StatefulSet",
            MatchedWorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// A string condition: exactly one of `exact`, `prefix`, `regex`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() == 1").message("set exactly one of exact, prefix, regex"))]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// A regular expression matched against the whole value (Rust `regex` syntax without
    /// Unicode classes, at most 256 characters), e.g. `/api/v[0-9]+/users/.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub regex: Option<String>,
}

/// A condition on a span attribute (a string attribute of the span itself).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() == 1").message("set exactly one of exact, prefix, regex"))]
pub struct AttributeMatch {
    /// The attribute: `http.route`, `url.path`, `http.target`, `rpc.service`, `rpc.method` or
    /// `messaging.destination.name`.
    pub key: SpanAttribute,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// A regular expression matched against the whole value (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub regex: Option<String>,
}

/// The span attributes a rule can match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SpanAttribute {
    #[serde(rename = "http.route")]
    HttpRoute,
    #[serde(rename = "url.path")]
    UrlPath,
    #[serde(rename = "http.target")]
    HttpTarget,
    #[serde(rename = "rpc.service")]
    RpcService,
    #[serde(rename = "rpc.method")]
    RpcMethod,
    #[serde(rename = "messaging.destination.name")]
    MessagingDestinationName,
}

impl SpanAttribute {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanAttribute::HttpRoute => "http.route",
            SpanAttribute::UrlPath => "url.path",
            SpanAttribute::HttpTarget => "http.target",
            SpanAttribute::RpcService => "rpc.service",
            SpanAttribute::RpcMethod => "rpc.method",
            SpanAttribute::MessagingDestinationName => "messaging.destination.name",
        }
    }
}

impl StringMatch {
    /// The contract's form (what the agent reads).
    pub fn to_contract(&self) -> tracelight_contract::sampling::StringMatch {
        tracelight_contract::sampling::StringMatch {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            regex: self.regex.clone(),
        }
    }
}

impl AttributeMatch {
    pub fn value(&self) -> StringMatch {
        StringMatch { exact: self.exact.clone(), prefix: self.prefix.clone(), regex: self.regex.clone() }
    }
}

impl SamplingRule {
    /// The rule's ratio before any budget: `ratio`, else 1.
    pub fn base_ratio(&self) -> Ratio {
        self.ratio.unwrap_or(Ratio::ALWAYS)
    }
}

/// Where sampling happens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    #[default]
    Agent,
    Sdk,
}

/// A context propagation format understood by the OpenTelemetry SDKs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Propagator {
    Tracecontext,
    Baggage,
    B3,
    B3multi,
    Jaeger,
    Xray,
    Ottrace,
    None,
}

impl Propagator {
    pub fn as_str(self) -> &'static str {
        match self {
            Propagator::Tracecontext => "tracecontext",
            Propagator::Baggage => "baggage",
            Propagator::B3 => "b3",
            Propagator::B3multi => "b3multi",
            Propagator::Jaeger => "jaeger",
            Propagator::Xray => "xray",
            Propagator::Ottrace => "ottrace",
            Propagator::None => "none",
        }
    }
}

/// The tracing agent sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Agent image. Default: the image the operator ships with (its `--agent-image`, the chart's
    /// `agent.image`), resolved when a pod is injected and never stored here, so that upgrading
    /// the operator upgrades the agents through a phased rollout. Set it to pin an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Image pull policy of the agent. Default: `IfNotPresent`.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Compute resources of the agent container.
    /// Default: requests `cpu: 10m, memory: 32Mi`, limits `memory: 128Mi`.
    #[serde(default = "default_agent_resources")]
    #[schemars(default = "default_agent_resources")]
    pub resources: ResourceRequirements,

    /// Ports the agent listens on, on the pod's loopback interface.
    /// Default: OTLP gRPC 4317, OTLP HTTP 4318, admin 13133.
    #[serde(default)]
    pub ports: AgentPorts,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            image: None,
            image_pull_policy: PullPolicy::default(),
            resources: default_agent_resources(),
            ports: AgentPorts::default(),
        }
    }
}

pub fn default_agent_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q("10m")), ("memory".into(), q("32Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), q("128Mi"))])),
        ..Default::default()
    }
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Agent ports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPorts {
    /// OTLP/gRPC receiver. Default: 4317.
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub otlp_grpc: u16,
    /// OTLP/HTTP receiver. Default: 4318.
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub otlp_http: u16,
    /// Health and metrics. Default: 13133.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub admin: u16,
}

fn default_grpc_port() -> u16 {
    4317
}
fn default_http_port() -> u16 {
    4318
}
fn default_admin_port() -> u16 {
    13133
}

impl Default for AgentPorts {
    fn default() -> Self {
        AgentPorts { otlp_grpc: default_grpc_port(), otlp_http: default_http_port(), admin: default_admin_port() }
    }
}

/// Language auto-instrumentation, per language.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstrumentationSpec {
    /// Java: the OpenTelemetry Java agent, loaded through `JAVA_TOOL_OPTIONS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java: Option<LanguageSpec>,
    /// Node.js: the OpenTelemetry Node auto-instrumentation, loaded through `NODE_OPTIONS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodejs: Option<LanguageSpec>,
    /// Python: the OpenTelemetry Python distro, loaded through `PYTHONPATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<LanguageSpec>,
    /// .NET: the OpenTelemetry .NET auto-instrumentation, loaded as a CoreCLR profiler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dotnet: Option<LanguageSpec>,
}

/// Settings of one language's auto-instrumentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LanguageSpec {
    /// Image holding the auto-instrumentation files (copied into the pod by an init container).
    /// Default: the operator's image for the language (`--instrumentation-image`), else the
    /// upstream OpenTelemetry auto-instrumentation image; resolved at injection, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Extra environment variables for instrumented containers of this language (for example
    /// `OTEL_INSTRUMENTATION_JDBC_ENABLED: "false"`). A container's own value wins. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// How the change is rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.phases) || self.phases.all(p, self.phases.exists_one(q, q.name == p.name))").message("phase names must be unique").field_path(".phases"))]
pub struct RolloutSpec {
    /// Ordered phases (for example `pilot`, then `expansion`). A governed namespace belongs to the
    /// first phase whose selector matches it; namespaces no phase matches join the last phase.
    /// Default: a single phase with every governed namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub phases: Vec<RolloutPhase>,

    /// Stop starting new batches; resuming continues where the rollout stopped. Default: `false`.
    #[serde(default)]
    pub paused: bool,

    /// Compute and show the plan in status without restarting or injecting anything.
    /// Default: `false`.
    #[serde(default)]
    pub dry_run: bool,

    /// Restart workloads whose pods missed injection (for example, created while the webhook was
    /// down), through the same paced batches. Default: `true`.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub repair_missed: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec { phases: Vec::new(), paused: false, dry_run: false, repair_missed: true }
    }
}

fn default_true() -> bool {
    true
}

/// One rollout phase.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPhase {
    /// Name of the phase (`pilot`, `expansion`, ...), unique within the policy.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Namespaces of this phase, among those the policy governs. Default: all remaining ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Workloads restarted at once. Default: 1.
    #[serde(default = "default_batch_size")]
    #[schemars(default = "default_batch_size", range(min = 1, max = 1000))]
    pub batch_size: u32,
    /// Time to wait after the phase's last batch before the next phase starts. Default: `5m`.
    #[serde(default = "default_soak")]
    #[schemars(default = "default_soak")]
    pub soak_duration: Duration,
    /// How long a restarted workload may take to become healthy before it is rolled back.
    /// Default: `10m`.
    #[serde(default = "default_health_deadline")]
    #[schemars(default = "default_health_deadline")]
    pub health_deadline: Duration,
}

pub fn default_batch_size() -> u32 {
    1
}
pub fn default_soak() -> Duration {
    Duration::from_secs(300)
}
pub fn default_health_deadline() -> Duration {
    Duration::from_secs(600)
}
