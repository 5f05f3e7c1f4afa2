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

/// Head sampling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SamplingSpec {
    /// Fraction of traces kept, between 0 and 1. Parent-based and consistent across services:
    /// every pod keeps or drops a trace as a whole. Default: `1` (keep everything).
    #[serde(default)]
    #[schemars(default = "Ratio::default")]
    pub ratio: Ratio,

    /// Where the ratio is applied. `agent` (default): SDKs keep everything
    /// (`parentbased_always_on`) and the agent samples, so a ratio change reaches running pods
    /// live. `sdk`: SDKs sample with `parentbased_traceidratio`; a ratio change then restarts
    /// workloads.
    #[serde(default)]
    pub mode: SamplingMode,

    /// Optional budget of exported spans per second across the policy; the operator lowers the
    /// effective ratio to stay under it. Default: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub spans_per_second_budget: Option<u32>,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        SamplingSpec { ratio: Ratio::ALWAYS, mode: SamplingMode::Agent, spans_per_second_budget: None }
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
