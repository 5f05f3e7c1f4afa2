//! Sampling rules as the agent receives them (contract 3, inside `config.v2.yaml`'s `sampling`),
//! and the per-rule counters it reports back.
//!
//! The operator resolves everything that does not depend on a span before writing the file:
//! a rule whose namespace selector does not match the namespace is left out of that
//! namespace's file, workload matches are named (`Deployment/checkout`) for the agent to compare
//! with its own identity, and budgets are turned into the effective ratio of the moment plus a
//! local cap. The agent evaluates only span-level matches, in order, first match wins.
//!
//! Patterns are compiled by [`StringMatch::compile`] on both sides (the operator to validate a
//! policy, the agent on load) with the same engine (`regex-lite`), so a pattern the operator
//! accepts is one the agent can run.

use crate::Ratio;
use serde::{Deserialize, Serialize};

/// Name the agent counts spans that no rule matched under (the policy's `sampling.ratio`).
pub const FALLBACK_RULE: &str = "default";
/// Name of the built-in rule dropping health checks and metrics scrapes (`dropHealthChecks`).
pub const HEALTH_CHECK_RULE: &str = "health-checks";

/// A span attribute a rule can match (the OpenTelemetry semantic-convention keys, old and new).
pub const MATCHABLE_ATTRIBUTES: [&str; 6] =
    ["http.route", "url.path", "http.target", "rpc.service", "rpc.method", "messaging.destination.name"];

/// One rule as the agent applies it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentRule {
    /// The rule's name: its label in metrics and its key in the report.
    pub name: String,
    /// Workloads (`Kind/name`) the rule applies to; empty: every workload of the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<String>,
    /// The resource's `service.name` must match one of these; empty: any service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<StringMatch>,
    /// The span's kind must be one of these; empty: any kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub span_kinds: Vec<SpanKind>,
    /// Span attributes: a span matches when, for every distinct key listed, one of its entries
    /// matches (entries with the same key are alternatives). Empty: any span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttributeMatch>,
    /// Ratio applied to the spans this rule decides (a budget already folded in).
    pub ratio: Ratio,
    /// Local cap on this pod's kept spans per second for this rule, absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans_per_second: Option<f64>,
}

/// An attribute condition: the attribute `key` must be a string matching the pattern.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttributeMatch {
    pub key: String,
    #[serde(flatten)]
    pub value: StringMatch,
}

/// Exactly one of `exact`, `prefix`, `regex` (checked by [`StringMatch::compile`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A regular expression (`regex-lite` syntax, like Rust's `regex` without Unicode classes),
    /// matched against the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl StringMatch {
    pub fn exact(s: &str) -> StringMatch {
        StringMatch { exact: Some(s.into()), ..Default::default() }
    }
    pub fn prefix(s: &str) -> StringMatch {
        StringMatch { prefix: Some(s.into()), ..Default::default() }
    }
    pub fn regex(s: &str) -> StringMatch {
        StringMatch { regex: Some(s.into()), ..Default::default() }
    }

    /// The compiled matcher; an error names what is wrong (for the policy's `Ready` condition).
    pub fn compile(&self) -> Result<Pattern, PatternError> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Ok(Pattern::Exact(e.clone())),
            (None, Some(p), None) => Ok(Pattern::Prefix(p.clone())),
            (None, None, Some(r)) => Pattern::compile_regex(r),
            _ => Err(PatternError::NotExactlyOne),
        }
    }
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatternError {
    #[error("set exactly one of exact, prefix, regex")]
    NotExactlyOne,
    #[error("invalid regex {pattern:?}: {message}")]
    Regex { pattern: String, message: String },
}

/// Longest regex accepted: a policy is not the place for a program.
pub const MAX_REGEX_LEN: usize = 256;

/// A compiled string condition.
#[derive(Clone, Debug)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    /// A regex, with the literal every match starts with and the literals every match contains
    /// in order (checked first: most values fail there, without running the regex engine,
    /// which is slow in `regex-lite`).
    Regex {
        literal: String,
        required: Vec<String>,
        regex: regex_lite::Regex,
    },
}

impl Pattern {
    fn compile_regex(pattern: &str) -> Result<Pattern, PatternError> {
        let bad = |message: String| PatternError::Regex { pattern: pattern.to_string(), message };
        if pattern.len() > MAX_REGEX_LEN {
            return Err(bad(format!("longer than {MAX_REGEX_LEN} characters")));
        }
        // Anchored: a route pattern means the whole route, as users write them.
        let regex = regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| bad(e.to_string()))?;
        Ok(Pattern::Regex { literal: literal_prefix(pattern), required: required_literals(pattern), regex })
    }

    pub fn is_match(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(e) => value == e,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Regex { literal, required, regex } => {
                value.starts_with(literal.as_str()) && contains_in_order(value, required) && regex.is_match(value)
            }
        }
    }
}

/// Whether `value` contains each of `literals`, in order, without overlap.
fn contains_in_order(value: &str, literals: &[String]) -> bool {
    let mut rest = value;
    for l in literals {
        match rest.find(l.as_str()) {
            Some(i) => rest = &rest[i + l.len()..],
            None => return false,
        }
    }
    true
}

/// Runs of plain characters that every match of a simple regex contains, in order: none for a
/// pattern with an alternation or flags (conservative); groups, classes, escapes and `.` end a
/// run, and a character made optional by `?`, `*` or `{0...}` is left out.
fn required_literals(pattern: &str) -> Vec<String> {
    if pattern.contains('|') || pattern.contains("(?") {
        return Vec::new();
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut run = String::new();
    let mut i = 0;
    let end_run = |run: &mut String, out: &mut Vec<String>| {
        if !run.is_empty() {
            out.push(std::mem::take(run));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            // `x+*`, `x{2}*`: the repeated run is optional after all; rare, no prefilter.
            '*' if i > 0 && matches!(chars[i - 1], '+' | '}') => return Vec::new(),
            '*' | '?' => {
                run.pop();
                end_run(&mut run, &mut out);
            }
            '+' => end_run(&mut run, &mut out),
            '{' => {
                let close = chars[i..].iter().position(|&c| c == '}').map_or(chars.len(), |p| i + p);
                let min: String =
                    chars[i + 1..close.min(chars.len())].iter().take_while(|c| c.is_ascii_digit()).collect();
                if min.is_empty() || min.parse::<u32>().unwrap_or(0) == 0 {
                    run.pop();
                }
                end_run(&mut run, &mut out);
                i = close;
            }
            '[' | '(' => {
                end_run(&mut run, &mut out);
                // Skip to the matching close, minding escapes and nesting.
                let (open, close) = if c == '[' { ('[', ']') } else { ('(', ')') };
                let mut depth = 0;
                let mut j = i;
                while j < chars.len() {
                    match chars[j] {
                        '\\' => j += 1,
                        x if x == open => depth += 1,
                        x if x == close => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                i = j;
            }
            '\\' => {
                match chars.get(i + 1) {
                    Some(e) if e.is_ascii_punctuation() => run.push(*e),
                    Some(e) if "dDwWsSbBAz".contains(*e) => end_run(&mut run, &mut out),
                    // `\x41`, `\u{..}`, `\n`...: not worth reading; no prefilter.
                    _ => return Vec::new(),
                }
                i += 1;
            }
            '.' | '^' | '$' | ')' | ']' | '}' => end_run(&mut run, &mut out),
            plain => run.push(plain),
        }
        i += 1;
    }
    end_run(&mut run, &mut out);
    out
}

/// The plain characters a regex's every match begins with: none when it has an alternation or
/// flags anywhere (conservative), and without the last one when a quantifier follows it.
fn literal_prefix(pattern: &str) -> String {
    const META: &[char] = &['\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$'];
    if pattern.contains('|') || pattern.contains("(?") {
        return String::new();
    }
    let end = pattern.find(META).unwrap_or(pattern.len());
    let mut literal = pattern[..end].to_string();
    // `x+*`: the repeated character is optional after all.
    if pattern[end..].starts_with(['*', '?', '{']) || pattern[end..].starts_with("+*") {
        literal.pop();
    }
    literal
}

/// The OTLP span kinds (`Span.kind`, values 1 to 5).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// The kind of an OTLP `Span.kind` value (0, unspecified, has none).
    pub fn from_otlp(value: u64) -> Option<SpanKind> {
        Some(match value {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => return None,
        })
    }
}

/// Routes of health checks and metrics scrapes, matched whole.
pub const HEALTH_CHECK_ROUTES: [&str; 18] = [
    "/health",
    "/healthz",
    "/healthcheck",
    "/ready",
    "/readyz",
    "/readiness",
    "/live",
    "/livez",
    "/liveness",
    "/ping",
    "/metrics",
    "/-/healthy",
    "/-/ready",
    "/actuator/health",
    "/actuator/prometheus",
    "/_health",
    "/health/live",
    "/health/ready",
];
/// Route prefixes of health checks (Spring's `/actuator/health/liveness`, Kubernetes' verbose
/// `/livez/etcd`...).
pub const HEALTH_CHECK_PREFIXES: [&str; 5] = ["/health/", "/healthz/", "/livez/", "/readyz/", "/actuator/health/"];

/// The built-in rules of `dropHealthChecks`, all named [`HEALTH_CHECK_RULE`] (one rule per
/// attribute, as a rule's different attributes must all match): server spans whose
/// `http.route`, `url.path` or `http.target` is a probe or scrape route
/// ([`HEALTH_CHECK_ROUTES`], [`HEALTH_CHECK_PREFIXES`]), and server spans of the gRPC health
/// service, at ratio 0. Exact and prefix matches only: they run on every server span.
pub fn health_check_rules() -> Vec<AgentRule> {
    let rule = |attributes: Vec<AttributeMatch>| AgentRule {
        name: HEALTH_CHECK_RULE.into(),
        workloads: Vec::new(),
        services: Vec::new(),
        span_kinds: vec![SpanKind::Server],
        attributes,
        ratio: Ratio::NEVER,
        spans_per_second: None,
    };
    let routes = |key: &str| {
        let exact = HEALTH_CHECK_ROUTES.iter().map(|r| StringMatch::exact(r));
        let prefix = HEALTH_CHECK_PREFIXES.iter().map(|p| StringMatch::prefix(p));
        exact.chain(prefix).map(|value| AttributeMatch { key: key.into(), value }).collect()
    };
    vec![
        rule(routes("http.route")),
        rule(routes("url.path")),
        rule(routes("http.target")),
        rule(vec![AttributeMatch { key: "rpc.service".into(), value: StringMatch::exact("grpc.health.v1.Health") }]),
    ]
}

/// Per-rule span counters since the agent started (in the report).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounts {
    /// Spans the rule decided (before sampling).
    pub received: u64,
    /// Spans it kept (errors kept by `keepErrors` included).
    #[serde(default)]
    pub kept: u64,
    /// Spans the ratio kept but the local cap dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub capped: u64,
    /// Spans kept only because of `keepErrors` (the ratio dropped their trace), in `kept` too:
    /// the budget arithmetic counts them apart from what the ratio keeps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kept_errors: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_prefix_and_whole_regex() {
        assert!(StringMatch::exact("/a").compile().unwrap().is_match("/a"));
        assert!(!StringMatch::exact("/a").compile().unwrap().is_match("/ab"));
        assert!(StringMatch::prefix("/a").compile().unwrap().is_match("/ab"));
        let r = StringMatch::regex("/users/[0-9]+").compile().unwrap();
        assert!(r.is_match("/users/12"));
        assert!(!r.is_match("/api/users/12"), "anchored at both ends");
        assert!(!r.is_match("/users/12/x"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(StringMatch::default().compile().unwrap_err(), PatternError::NotExactlyOne);
        let both = StringMatch { exact: Some("a".into()), prefix: Some("b".into()), regex: None };
        assert_eq!(both.compile().unwrap_err(), PatternError::NotExactlyOne);
        let e = StringMatch::regex("(unclosed").compile().unwrap_err();
        assert!(matches!(e, PatternError::Regex { .. }), "{e}");
        assert!(StringMatch::regex(&"a".repeat(MAX_REGEX_LEN + 1)).compile().is_err());
    }

    #[test]
    fn health_check_routes() {
        let rules = health_check_rules();
        let patterns: Vec<Pattern> = rules[0].attributes.iter().map(|a| a.value.compile().unwrap()).collect();
        let hit = |v: &str| patterns.iter().any(|p| p.is_match(v));
        for route in [
            "/health",
            "/healthz",
            "/readyz",
            "/livez",
            "/metrics",
            "/actuator/health",
            "/health/live",
            "/-/ready",
            "/livez/etcd",
        ] {
            assert!(hit(route), "{route}");
        }
        for route in ["/", "/api/health-insurance", "/checkout", "/metricsx", "/users/healthz"] {
            assert!(!hit(route), "{route}");
        }
    }

    #[test]
    fn required_literals_of_simple_regexes() {
        assert_eq!(required_literals("/api/v[0-9]+/users/.*"), ["/api/v", "/users/"]);
        assert_eq!(required_literals("/users?/[0-9]+"), ["/user", "/"]);
        assert_eq!(required_literals("/a(bc)?/d"), ["/a", "/d"]);
        assert!(required_literals("/a(b|c)/d").is_empty());
        assert!(required_literals("ab(?i)cd").is_empty());
        assert!(required_literals("a\\x41").is_empty());
        assert_eq!(required_literals("x{0,2}y{2}z"), ["y", "z"]);
        assert_eq!(required_literals("\\d+\\.json"), [".json"]);
        assert!(required_literals("/a|/b").is_empty());
        assert!(required_literals("x+*.*").is_empty());
        assert!(required_literals("ab{2}*c").is_empty());
        assert_eq!(required_literals("ab+?c"), ["ab", "c"]);
        assert!(contains_in_order("/api/v1/users/7", &["/api/v".into(), "/users/".into()]));
        assert!(!contains_in_order("/users/api/v1", &["/api/v".into(), "/users/".into()]));
    }

    proptest::proptest! {
        /// The prefilters never reject a value the regex matches.
        #[test]
        fn prefilters_never_change_the_answer(
            pattern in "(/|a|b|[ab]|x\\+|\\.|\\d|\\?|\\*|\\{1,2\\}|\\(a\\)|\\[0-9\\]){1,8}",
            value in "[/ab.x0-9]{0,12}",
        ) {
            if let Ok(Pattern::Regex { regex, .. }) = StringMatch::regex(&pattern).compile() {
                let p = StringMatch::regex(&pattern).compile().unwrap();
                proptest::prop_assert_eq!(p.is_match(&value), regex.is_match(&value), "pattern {:?}", pattern);
            }
        }
    }

    #[test]
    fn regex_literal_prefixes_only_skip_what_cannot_match() {
        assert_eq!(literal_prefix("/api/v[0-9]+/.*"), "/api/v");
        assert_eq!(literal_prefix("/users?"), "/user");
        assert_eq!(literal_prefix("/a|/b"), "");
        assert_eq!(literal_prefix("(?i)/api"), "");
        assert_eq!(literal_prefix("plain"), "plain");
        assert_eq!(literal_prefix("/ax+*"), "/a");
        assert_eq!(literal_prefix("/ax+?"), "/ax");
        let p = StringMatch::regex("/users?/[0-9]+").compile().unwrap();
        assert!(p.is_match("/user/1") && p.is_match("/users/22") && !p.is_match("/items/1"));
    }
}
