//! The OpenTelemetry environment of an instrumented container, and how it is merged with the
//! container's own: the container's values always win, language variables are joined with the
//! user's, and `$(VAR)` references always come after the variable they reference.
//!
//! # Export settings are a unit
//!
//! Endpoint, protocol, headers, their per-signal variants and the `OTEL_*_EXPORTER` selectors
//! only make sense together: an SDK given the user's gRPC endpoint and an injected
//! `http/protobuf` protocol loses every span. So the injector never mixes the two. Per
//! container, [`Export`] decides who owns the whole unit:
//!
//! - [`Export::Agent`]: the container sets none of it, and every source of its environment is
//!   visible: the injector sets the whole unit (endpoint of the local agent, `http/protobuf`,
//!   traces through OTLP, metrics and logs off since the agent takes traces only) and the
//!   sampler.
//! - [`Export::SelfExported`]: the container sets any export variable itself: none of the unit
//!   and no sampler is injected, so its traces, metrics and logs keep going where it sends them.
//!   The pod is marked with the `tracelight.io/self-exported` annotation (read by coverage).
//! - [`Export::Unseen`]: the container has `envFrom` sources whose keys the injector cannot see
//!   (the webhook reads no ConfigMap or Secret at admission): any of them may hold export
//!   settings, so the unit and the sampler are left out as for a self-exported container, and
//!   the pod is marked with `tracelight.io/env-from-unseen`. The SDK's defaults
//!   (`localhost:4317` for gRPC, `:4318` for HTTP) still reach the agent on its default ports.
//!
//! A unit that is exactly what the injector would set is the injector's (an injected pod is
//! recognised as such, so injection stays idempotent).
//!
//! The identity variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_PROPAGATORS`)
//! are injected in every mode: per-pod values that need `$(VAR)` expansion, which only `env`
//! has. The container's own `env` entries always win; a key of an unseen `envFrom` source of
//! the same name loses to them, as Kubernetes gives `env` precedence (documented in the README).
//! Keys of sources the caller can see (the offline `tracelight inject` resolves ConfigMaps and
//! Secrets of the same input) count as the container's own, exactly like its `env`.

use super::language::EnvEdit;
use super::workload::WorkloadRef;
use crate::api::{AgentPorts, SamplingMode, TracingPolicy};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Downward-API variables the injected values refer to as `$(...)`.
pub const POD_NAME_VAR: &str = "TRACELIGHT_POD_NAME";
pub const POD_UID_VAR: &str = "TRACELIGHT_POD_UID";
pub const NODE_NAME_VAR: &str = "TRACELIGHT_NODE_NAME";
pub const POD_NAMESPACE_VAR: &str = "TRACELIGHT_POD_NAMESPACE";
pub const WORKLOAD_KIND_VAR: &str = "TRACELIGHT_WORKLOAD_KIND";
pub const WORKLOAD_NAME_VAR: &str = "TRACELIGHT_WORKLOAD_NAME";

/// What an application container's injected environment depends on.
pub struct AppEnv<'a> {
    pub policy: &'a TracingPolicy,
    pub namespace: &'a str,
    pub container: &'a str,
    pub workload: Option<&'a WorkloadRef>,
    pub service_name: &'a str,
    pub ports: AgentPorts,
    /// Who owns the container's export settings.
    pub export: Export,
}

/// Who owns a container's export settings (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// The injector sets the whole unit, pointing at the local agent.
    Agent,
    /// The container configures its own export: the unit is left alone.
    SelfExported,
    /// The container has `envFrom` sources the injector cannot see: the unit is left alone.
    Unseen,
}

/// `OTEL_*_EXPORTER` selectors: part of the export unit.
const EXPORTER_SELECTORS: [&str; 3] = ["OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"];

/// Whether `name` belongs to the export unit: any `OTEL_EXPORTER_*` (OTLP endpoint, protocol,
/// headers, compression, certificates, timeouts and their per-signal variants; Zipkin, Jaeger,
/// Prometheus exporters) or an exporter selector.
pub fn is_export_setting(name: &str) -> bool {
    name.starts_with("OTEL_EXPORTER_") || EXPORTER_SELECTORS.contains(&name)
}

/// Who owns the export unit of a container whose visible variables are `own` (its `env`, plus
/// the keys of the `envFrom` sources that could be resolved), given the unit the injector
/// would set (`ours`) and whether some `envFrom` source could not be seen.
pub fn export_owner<'a>(
    own: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ours: &[EnvVar],
    unseen_sources: bool,
) -> Export {
    let mut sets_unit = false;
    for (name, value) in own.into_iter().filter(|(name, _)| is_export_setting(name)) {
        let same_as_ours = ours.iter().any(|o| o.name == name && value.is_some() && o.value.as_deref() == value);
        if !same_as_ours {
            return Export::SelfExported;
        }
        sets_unit = true;
    }
    match (unseen_sources, sets_unit) {
        // Our unit already in env (an injected pod): env wins over every source, so it is ours.
        (true, false) => Export::Unseen,
        _ => Export::Agent,
    }
}

/// The export unit and sampler the injector sets for an [`Export::Agent`] container.
pub fn agent_export_env(policy: &TracingPolicy, ports: AgentPorts) -> Vec<EnvVar> {
    let spec = &policy.spec;
    let mut env = Vec::with_capacity(7);
    match spec.sampling.mode {
        // The agent samples consistently; a second, SDK-side ratio would split traces.
        SamplingMode::Agent => env.push(literal("OTEL_TRACES_SAMPLER", "parentbased_always_on")),
        SamplingMode::Sdk => {
            env.push(literal("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"));
            env.push(literal("OTEL_TRACES_SAMPLER_ARG", spec.sampling.ratio.to_string()));
        }
    }
    // 127.0.0.1, not localhost: some runtimes resolve localhost to ::1 first, where the agent
    // does not listen. Every SDK speaks OTLP/HTTP; the agent converts for the collector.
    env.push(literal("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", ports.otlp_http)));
    env.push(literal("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"));
    env.push(literal("OTEL_TRACES_EXPORTER", "otlp"));
    // The agent handles traces only: keep SDKs from exporting metrics and logs into it. Only
    // ever set for a container that configures no export of its own.
    env.push(literal("OTEL_METRICS_EXPORTER", "none"));
    env.push(literal("OTEL_LOGS_EXPORTER", "none"));
    env
}

pub fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), value_from: None }
}

pub fn field_ref(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.to_string(), api_version: None }),
            ..Default::default()
        }),
    }
}

/// The downward-API variables shared by the agent and the application containers.
pub fn downward_env() -> Vec<EnvVar> {
    vec![
        field_ref(POD_NAME_VAR, "metadata.name"),
        field_ref(POD_UID_VAR, "metadata.uid"),
        field_ref(NODE_NAME_VAR, "spec.nodeName"),
    ]
}

/// The injected variables of an application container, in dependency order: identity always,
/// the export unit and sampler only when the agent owns the container's export.
pub fn app_env(ctx: &AppEnv) -> Vec<EnvVar> {
    let spec = &ctx.policy.spec;
    let mut env = downward_env();
    env.push(literal("OTEL_SERVICE_NAME", escape_dollar(ctx.service_name)));
    env.push(literal("OTEL_RESOURCE_ATTRIBUTES", resource_attributes(ctx)));
    let propagators: Vec<&str> = spec.propagators.iter().map(|p| p.as_str()).collect();
    env.push(literal("OTEL_PROPAGATORS", propagators.join(",")));
    if ctx.export == Export::Agent {
        env.extend(agent_export_env(ctx.policy, ctx.ports));
    }
    env
}

/// The instrumented containers that set `OTEL_PROPAGATORS` themselves, for the agent's
/// `TRACELIGHT_PROPAGATOR_OVERRIDES` (`container=value;...`; see `tracelight_contract::probe`):
/// the operator's broken-link check then knows what the application really propagates with.
/// A value that is not a literal (`valueFrom`, or a key of a visible `envFrom` source) is
/// reported empty: set, but unknown. `None` when no container overrides the injected value.
pub fn propagator_overrides<'a>(
    containers: impl IntoIterator<Item = (&'a str, &'a [EnvVar], bool)>,
    policy: &TracingPolicy,
) -> Option<String> {
    let injected: Vec<&str> = policy.spec.propagators.iter().map(|p| p.as_str()).collect();
    let injected = injected.join(",");
    let overrides: Vec<String> = containers
        .into_iter()
        .filter_map(|(name, env, sourced)| {
            let own = env.iter().rfind(|e| e.name == "OTEL_PROPAGATORS");
            let value = match own {
                Some(EnvVar { value: Some(v), value_from: None, .. }) if *v == injected => return None,
                Some(EnvVar { value: Some(v), value_from: None, .. }) => v.replace(';', ",").replace('$', "$$"),
                Some(_) => String::new(),
                None if sourced => String::new(),
                None => return None,
            };
            Some(format!("{name}={value}"))
        })
        .collect();
    (!overrides.is_empty()).then(|| overrides.join(";"))
}

/// `OTEL_RESOURCE_ATTRIBUTES`: the `k8s.*` semantic-convention attributes, then the policy's.
fn resource_attributes(ctx: &AppEnv) -> String {
    let mut attrs: Vec<(String, String)> = vec![
        ("k8s.namespace.name".into(), ctx.namespace.into()),
        ("k8s.pod.name".into(), format!("$({POD_NAME_VAR})")),
        ("k8s.pod.uid".into(), format!("$({POD_UID_VAR})")),
        ("k8s.node.name".into(), format!("$({NODE_NAME_VAR})")),
        ("k8s.container.name".into(), ctx.container.into()),
    ];
    if let Some(w) = ctx.workload {
        if let Some(key) = w.attribute_key() {
            attrs.push((key.into(), w.name.clone()));
        }
    }
    for (k, v) in &ctx.policy.spec.resource_attributes {
        attrs.push((k.clone(), escape_dollar(&percent_encode(v))));
    }
    attrs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Values in `OTEL_RESOURCE_ATTRIBUTES` are percent-encoded (W3C baggage octets).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/@!$&'()*+;".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The kubelet expands `$(NAME)` in literal values; `$$` keeps a user-supplied `$` literal.
fn escape_dollar(value: &str) -> String {
    value.replace('$', "$$")
}

/// Names referenced as `$(NAME)` in a value (`$$(NAME)` is an escaped literal).
pub fn references(value: &str) -> Vec<&str> {
    let bytes = value.as_bytes();
    let mut refs = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'$', b'$') => i += 2,
            (b'$', b'(') => match value[i + 2..].find(')') {
                Some(end) => {
                    refs.push(&value[i + 2..i + 2 + end]);
                    i += end + 3;
                }
                None => break,
            },
            _ => i += 1,
        }
    }
    refs
}

/// A language edit that could not be applied: the language is skipped for the container.
#[derive(Debug, PartialEq)]
pub struct JoinConflict {
    pub name: &'static str,
}

/// Whether every `Join` of `edits` can be applied to `user` (no `valueFrom` values to join).
pub fn check_joins(user: &[EnvVar], edits: &[EnvEdit]) -> Result<(), JoinConflict> {
    for edit in edits {
        if let EnvEdit::Join { name, .. } = edit {
            if user.iter().any(|e| e.name == *name && e.value_from.is_some()) {
                return Err(JoinConflict { name });
            }
        }
    }
    Ok(())
}

/// How a container's env changes: variables placed before the user's (those the user's values
/// reference as `$(VAR)`), user values joined in place, variables placed after.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvChange {
    pub front: Vec<EnvVar>,
    /// Index in the user's env and its new value.
    pub joined: Vec<(usize, String)>,
    pub back: Vec<EnvVar>,
}

impl EnvChange {
    pub fn is_empty(&self) -> bool {
        self.front.is_empty() && self.joined.is_empty() && self.back.is_empty()
    }

    /// The resulting env of a container whose env is `user`.
    pub fn apply(&self, user: &[EnvVar]) -> Vec<EnvVar> {
        let mut result = Vec::with_capacity(self.front.len() + user.len() + self.back.len());
        result.extend(self.front.iter().cloned());
        result.extend(user.iter().cloned());
        for (index, value) in &self.joined {
            result[self.front.len() + index].value = Some(value.clone());
        }
        result.extend(self.back.iter().cloned());
        result
    }
}

/// Merges the injected variables into the container's `user` env.
///
/// - a variable the container already defines, in `user` or in `sourced` (keys of its visible
///   `envFrom` sources), is kept as it is (the user wins);
/// - `Join` edits extend the user's literal value in place (idempotently);
/// - injected variables that user values reference are placed first, so that `$(VAR)` resolves;
///   all others are appended after the user's.
pub fn merge(user: &[EnvVar], injected: Vec<EnvVar>, edits: &[EnvEdit], sourced: &BTreeSet<String>) -> Vec<EnvVar> {
    env_change(user, injected, edits, sourced).apply(user)
}

/// What [`merge`] changes in `user`.
pub fn env_change(user: &[EnvVar], injected: Vec<EnvVar>, edits: &[EnvEdit], sourced: &BTreeSet<String>) -> EnvChange {
    let mut to_add: Vec<EnvVar> = Vec::new();
    let mut joined: Vec<(usize, String)> = Vec::new();
    let defined: HashSet<&str> =
        user.iter().map(|e| e.name.as_str()).chain(sourced.iter().map(String::as_str)).collect();
    for var in injected {
        if !defined.contains(var.name.as_str()) {
            to_add.push(var);
        }
    }
    for edit in edits {
        match edit {
            EnvEdit::Set(name, value) => {
                if !defined.contains(name) && !to_add.iter().any(|e| e.name == *name) {
                    to_add.push(literal(name, value.clone()));
                }
            }
            EnvEdit::Join { name, value, separator, prepend } => {
                // The last definition is the effective one.
                match user.iter().rposition(|e| e.name == *name) {
                    Some(index) => {
                        let current = user[index].value.as_deref().unwrap_or_default();
                        if !current.contains(value.as_str()) {
                            joined.push((index, join(current, value, separator, *prepend)));
                        }
                    }
                    None => to_add.push(literal(name, value.clone())),
                }
            }
        }
    }
    joined.sort_by_key(|(index, _)| *index);
    let values = user
        .iter()
        .enumerate()
        .filter_map(|(i, e)| joined.iter().find(|(j, _)| *j == i).map(|(_, v)| v.as_str()).or(e.value.as_deref()));
    let first = referenced_by(values, &to_add);
    let (front, back): (Vec<EnvVar>, Vec<EnvVar>) = to_add.into_iter().partition(|e| first.contains(&e.name));
    EnvChange { front, joined, back }
}

fn join(current: &str, ours: &str, separator: &str, prepend: bool) -> String {
    match (current.is_empty(), prepend) {
        (true, _) => ours.to_string(),
        (false, true) => format!("{ours}{separator}{current}"),
        (false, false) => format!("{current}{separator}{ours}"),
    }
}

/// Names of `candidates` that the user's `values` reference, directly or through other candidates.
fn referenced_by<'a>(values: impl Iterator<Item = &'a str>, candidates: &'a [EnvVar]) -> HashSet<String> {
    let by_name: BTreeMap<&str, &EnvVar> = candidates.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut found: HashSet<String> = HashSet::new();
    let mut stack: Vec<&str> = values.flat_map(references).filter(|r| by_name.contains_key(r)).collect();
    while let Some(name) = stack.pop() {
        if found.insert(name.to_string()) {
            if let Some(value) = by_name.get(name).and_then(|e| e.value.as_deref()) {
                stack.extend(references(value).into_iter().filter(|r| by_name.contains_key(r)));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(env: &[EnvVar]) -> Vec<&str> {
        env.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn propagator_overrides_name_containers_whose_own_value_differs_from_the_policys() {
        let spec = serde_json::json!({"collector": {"endpoint": "http://c:4317", "protocol": "grpc"}});
        let policy = TracingPolicy::new("p", serde_json::from_value(spec).unwrap());
        let from_secret =
            EnvVar { name: "OTEL_PROPAGATORS".into(), value: None, value_from: Some(EnvVarSource::default()) };
        let same = [literal("OTEL_PROPAGATORS", "tracecontext,baggage")];
        let b3 = [literal("OTEL_PROPAGATORS", "b3;x$y")];
        let none: [EnvVar; 0] = [];
        let overrides = propagator_overrides(
            [
                ("same", &same[..], false),
                ("api", &b3[..], false),
                ("secret", std::slice::from_ref(&from_secret), false),
                ("sourced", &none[..], true),
                ("plain", &none[..], false),
            ],
            &policy,
        );
        assert_eq!(overrides.as_deref(), Some("api=b3,x$$y;secret=;sourced="));
        assert_eq!(propagator_overrides([("same", &same[..], false)], &policy), None);
    }

    #[test]
    fn references_skip_escaped_dollars() {
        assert_eq!(references("a=$(X),b=$$(Y),c=$(Z)"), vec!["X", "Z"]);
        assert_eq!(references("$(unterminated"), Vec::<&str>::new());
    }

    #[test]
    fn user_value_wins_over_injected_value() {
        let user = vec![literal("OTEL_SERVICE_NAME", "mine")];
        let merged = merge(&user, vec![literal("OTEL_SERVICE_NAME", "ours"), literal("B", "b")], &[], &BTreeSet::new());
        assert_eq!(merged, vec![literal("OTEL_SERVICE_NAME", "mine"), literal("B", "b")]);
    }

    #[test]
    fn injected_vars_referenced_by_user_come_first() {
        let user = vec![literal("GREETING", "pod $(TRACELIGHT_POD_NAME)")];
        let injected = vec![field_ref(POD_NAME_VAR, "metadata.name"), literal("OTHER", "x")];
        let merged = merge(&user, injected, &[], &BTreeSet::new());
        assert_eq!(names(&merged), vec!["TRACELIGHT_POD_NAME", "GREETING", "OTHER"]);
    }

    #[test]
    fn transitive_references_are_hoisted_in_order() {
        let user = vec![literal("U", "$(B)")];
        let injected = vec![literal("A", "a"), literal("B", "$(A)"), literal("C", "c")];
        assert_eq!(names(&merge(&user, injected, &[], &BTreeSet::new())), vec!["A", "B", "U", "C"]);
    }

    #[test]
    fn join_appends_once_and_keeps_user_value() {
        let edit = EnvEdit::Join {
            name: "JAVA_TOOL_OPTIONS",
            value: "-javaagent:/a.jar".into(),
            separator: " ",
            prepend: false,
        };
        let user = vec![literal("JAVA_TOOL_OPTIONS", "-Xmx1g")];
        let once = merge(&user, vec![], std::slice::from_ref(&edit), &BTreeSet::new());
        assert_eq!(once, vec![literal("JAVA_TOOL_OPTIONS", "-Xmx1g -javaagent:/a.jar")]);
        assert_eq!(merge(&once, vec![], &[edit], &BTreeSet::new()), once);
    }

    #[test]
    fn join_prepends_for_pythonpath() {
        let edit = EnvEdit::Join { name: "PYTHONPATH", value: "/otel".into(), separator: ":", prepend: true };
        let merged = merge(&[literal("PYTHONPATH", "/app")], vec![], &[edit], &BTreeSet::new());
        assert_eq!(merged, vec![literal("PYTHONPATH", "/otel:/app")]);
    }

    #[test]
    fn join_refuses_value_from() {
        let user = vec![EnvVar { name: "NODE_OPTIONS".into(), value: None, value_from: Some(Default::default()) }];
        let edit = EnvEdit::Join { name: "NODE_OPTIONS", value: "--require x".into(), separator: " ", prepend: false };
        assert_eq!(check_joins(&user, &[edit]), Err(JoinConflict { name: "NODE_OPTIONS" }));
    }

    #[test]
    fn attribute_values_are_percent_encoded() {
        assert_eq!(percent_encode("a,b=c d%"), "a%2Cb%3Dc%20d%25");
    }
}
