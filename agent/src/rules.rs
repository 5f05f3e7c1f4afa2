//! Sampling rules compiled for this pod: which rule decides a span, at which threshold, under
//! which local cap, and the per-rule counters.
//!
//! The operator has resolved namespace and workload matches already (a rule names the
//! workloads it applies to; rules for other workloads are dropped here, once, at load), so a
//! span is matched only on its resource's `service.name`, its kind and a few string
//! attributes. Rules are tried in order, the first match decides, spans no rule matches fall
//! back to the policy's ratio ([`FALLBACK_RULE`]).
//!
//! Every ratio goes through the same consistent threshold ([`Threshold`]): a trace kept at the
//! lowest ratio on its path is kept by every agent on it. Two things can still cut a trace:
//! `keepErrors` keeps an error span whose trace was dropped elsewhere (a partial trace, on
//! purpose: the error is what matters), and the local cap drops kept spans when a burst exceeds
//! this pod's share of a budget before the operator lowers the ratio.

use super::enrich::PodIdentity;
use super::metrics::{Metrics, RuleCounters};
use super::sampler::Threshold;
use super::tracestate;
use std::sync::Mutex;
use std::time::Instant;
use tracelight_contract::config::AgentSampling;
use tracelight_contract::sampling::{Pattern, PatternError, SpanKind, FALLBACK_RULE, MATCHABLE_ATTRIBUTES};

/// Why a config's rules cannot be applied (the reload is refused, the previous config stays).
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("sampling rule {rule:?}: {field}: {source}")]
    Pattern { rule: String, field: String, source: PatternError },
    #[error("sampling rule {rule:?}: attribute {key:?} cannot be matched (only {})", MATCHABLE_ATTRIBUTES.join(", "))]
    Attribute { rule: String, key: String },
    #[error("sampling rule {rule:?}: spansPerSecond must be a positive number")]
    Cap { rule: String },
}

/// How one rule (or the fallback) treats the spans it decides.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub threshold: Threshold,
    /// The tracestate of a span without one once kept at `threshold` (built once).
    pub fresh_state: Option<String>,
    pub cap: Option<Mutex<TokenBucket>>,
    pub counters: RuleCounters,
}

impl Outcome {
    fn new(name: &str, ratio: f64, cap: Option<f64>, metrics: &Metrics) -> Outcome {
        let threshold = Threshold::for_ratio(ratio);
        let fresh_state = match threshold {
            Threshold::Keep(t) if t > 0 => Some(tracestate::with_threshold("", t)),
            _ => None,
        };
        let counters = metrics.rule_counters(name);
        Outcome {
            name: name.to_string(),
            threshold,
            fresh_state,
            cap: cap.map(|rate| Mutex::new(TokenBucket::new(rate))),
            counters,
        }
    }

    /// Whether the local cap lets one more kept span through.
    pub fn admit(&self) -> bool {
        match &self.cap {
            None => true,
            Some(bucket) => bucket.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now()),
        }
    }
}

/// One rule's span conditions.
#[derive(Debug)]
struct Conditions {
    services: Alternatives,
    kinds: Vec<SpanKind>,
    /// Per distinct attribute (index into [`RuleSet::keys`]): the alternatives.
    attributes: Vec<(usize, Alternatives)>,
}

/// Patterns of which one must match, grouped so that many exact values (the health-check
/// routes) cost one binary search, not a comparison each.
#[derive(Debug, Default)]
struct Alternatives {
    exact: Vec<String>,
    others: Vec<Pattern>,
}

impl Alternatives {
    fn push(&mut self, p: Pattern) {
        match p {
            Pattern::Exact(e) => {
                if let Err(i) = self.exact.binary_search(&e) {
                    self.exact.insert(i, e);
                }
            }
            other => self.others.push(other),
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.others.is_empty()
    }

    fn is_match(&self, value: &str) -> bool {
        self.exact.binary_search_by(|e| e.as_str().cmp(value)).is_ok() || self.others.iter().any(|p| p.is_match(value))
    }
}

/// The rules in effect, swapped whole on reload.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<(Conditions, Outcome)>,
    /// Spans no rule matches.
    pub fallback: Outcome,
    pub keep_errors: bool,
    /// Attribute keys some rule reads; a span's values are collected in this order.
    pub keys: Vec<&'static str>,
}

/// What the span matcher needs to know about one span.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpanFacts<'a> {
    pub kind: Option<SpanKind>,
    /// Values of [`RuleSet::keys`] (string attributes only), by index.
    pub values: [Option<&'a str>; MATCHABLE_ATTRIBUTES.len()],
}

impl RuleSet {
    /// No rules: every span falls back to `ratio`.
    pub fn plain(ratio: f64, metrics: &Metrics) -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            fallback: Outcome::new(FALLBACK_RULE, ratio, None, metrics),
            keep_errors: false,
            keys: Vec::new(),
        }
    }

    /// The config's rules for this pod's workload, compiled.
    pub fn compile(sampling: &AgentSampling, identity: &PodIdentity, metrics: &Metrics) -> Result<RuleSet, RulesError> {
        let workload = match (&identity.workload_kind, &identity.workload_name) {
            (Some(kind), Some(name)) => Some(format!("{kind}/{name}")),
            _ => None,
        };
        let check_cap = |rule: &str, cap: Option<f64>| match cap {
            Some(c) if !(c.is_finite() && c > 0.0) => Err(RulesError::Cap { rule: rule.to_string() }),
            _ => Ok(cap),
        };
        let mut keys: Vec<&'static str> = Vec::new();
        let mut rules = Vec::new();
        for rule in &sampling.rules {
            if !rule.workloads.is_empty() && !workload.as_ref().is_some_and(|w| rule.workloads.contains(w)) {
                continue;
            }
            let pattern = |field: String, m: &tracelight_contract::sampling::StringMatch| {
                m.compile().map_err(|source| RulesError::Pattern { rule: rule.name.clone(), field, source })
            };
            let mut services = Alternatives::default();
            for (i, m) in rule.services.iter().enumerate() {
                services.push(pattern(format!("services[{i}]"), m)?);
            }
            let mut attributes: Vec<(usize, Alternatives)> = Vec::new();
            for (i, a) in rule.attributes.iter().enumerate() {
                let Some(key) = MATCHABLE_ATTRIBUTES.iter().find(|k| **k == a.key) else {
                    return Err(RulesError::Attribute { rule: rule.name.clone(), key: a.key.clone() });
                };
                let slot = keys.iter().position(|k| k == key).unwrap_or_else(|| {
                    keys.push(key);
                    keys.len() - 1
                });
                let p = pattern(format!("attributes[{i}]"), &a.value)?;
                match attributes.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, alternatives)) => alternatives.push(p),
                    None => {
                        let mut alternatives = Alternatives::default();
                        alternatives.push(p);
                        attributes.push((slot, alternatives));
                    }
                }
            }
            let conditions = Conditions { services, kinds: rule.span_kinds.clone(), attributes };
            let cap = check_cap(&rule.name, rule.spans_per_second)?;
            rules.push((conditions, Outcome::new(&rule.name, rule.ratio.get(), cap, metrics)));
        }
        let cap = check_cap(FALLBACK_RULE, sampling.spans_per_second)?;
        Ok(RuleSet {
            rules,
            fallback: Outcome::new(FALLBACK_RULE, sampling.ratio.get(), cap, metrics),
            keep_errors: sampling.keep_errors,
            keys,
        })
    }

    /// Whether spans need no more than the fallback threshold (the fast path of the wire code).
    pub fn is_plain(&self) -> bool {
        self.rules.is_empty() && !self.keep_errors && self.fallback.cap.is_none()
    }

    /// Whether a rule reads the span kind or attributes (else the span's fields are not read).
    pub fn reads_spans(&self) -> bool {
        self.rules.iter().any(|(c, _)| !c.kinds.is_empty() || !c.attributes.is_empty())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule at `index` ([`RuleSet::len`] is the fallback).
    pub fn outcome(&self, index: usize) -> &Outcome {
        self.rules.get(index).map_or(&self.fallback, |(_, o)| o)
    }

    /// Per rule, whether a resource with this `service.name` can match it (computed once per
    /// resource into `out`).
    pub fn service_matches(&self, service: Option<&str>, out: &mut Vec<bool>) {
        out.clear();
        out.extend(
            self.rules.iter().map(|(c, _)| c.services.is_empty() || service.is_some_and(|s| c.services.is_match(s))),
        );
    }

    /// The index of the first rule matching the span ([`RuleSet::len`]: none, the fallback).
    pub fn decide(&self, services_ok: &[bool], span: &SpanFacts<'_>) -> usize {
        self.rules
            .iter()
            .zip(services_ok)
            .position(|((c, _), ok)| {
                *ok && (c.kinds.is_empty() || span.kind.is_some_and(|k| c.kinds.contains(&k)))
                    && c.attributes
                        .iter()
                        .all(|(slot, alternatives)| span.values[*slot].is_some_and(|v| alternatives.is_match(v)))
            })
            .unwrap_or(self.rules.len())
    }
}

/// Seconds of its rate a local cap holds. SDKs export in batches, every 5 s by default
/// (`OTEL_BSP_SCHEDULE_DELAY`), so a pod keeping exactly its share receives 5 s of kept spans at
/// once: a bucket of one second cut every batch to a fifth and held pods far under their budget
/// (seen in the traces suite). Ten seconds also absorb a batch delayed by a retry; a burst
/// still cannot run over by more than this much before the operator's next update.
pub const CAP_BURST_SECS: f64 = 10.0;

/// A token bucket: `rate` tokens a second, holding at most [`CAP_BURST_SECS`] of them (and at
/// least one token).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64) -> TokenBucket {
        let capacity = (rate * CAP_BURST_SECS).max(1.0);
        TokenBucket { rate, capacity, tokens: capacity, last: Instant::now() }
    }

    /// Takes one token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;
    use tracelight_contract::sampling::{health_check_rules, AgentRule, AttributeMatch, StringMatch};
    use tracelight_contract::Ratio;

    fn rule(name: &str, attributes: Vec<AttributeMatch>, ratio: f64) -> AgentRule {
        AgentRule {
            name: name.into(),
            workloads: Vec::new(),
            services: Vec::new(),
            span_kinds: Vec::new(),
            attributes,
            ratio: Ratio::new(ratio).unwrap(),
            spans_per_second: None,
        }
    }

    fn attr(key: &str, m: StringMatch) -> AttributeMatch {
        AttributeMatch { key: key.into(), value: m }
    }

    fn identity(kind: &str, name: &str) -> PodIdentity {
        PodIdentity { workload_kind: Some(kind.into()), workload_name: Some(name.into()), ..Default::default() }
    }

    fn facts<'a>(set: &RuleSet, kind: Option<SpanKind>, attrs: &[(&str, &'a str)]) -> SpanFacts<'a> {
        let mut f = SpanFacts { kind, ..Default::default() };
        for (k, v) in attrs {
            if let Some(i) = set.keys.iter().position(|key| key == k) {
                f.values[i] = Some(v);
            }
        }
        f
    }

    fn sampling(rules: Vec<AgentRule>) -> AgentSampling {
        AgentSampling { rules, keep_errors: true, ..AgentSampling::ratio(Ratio::new(0.5).unwrap()) }
    }

    #[test]
    fn first_matching_rule_wins_and_the_fallback_takes_the_rest() {
        let rules = vec![
            rule("exact", vec![attr("http.route", StringMatch::exact("/checkout"))], 1.0),
            rule("prefix", vec![attr("http.route", StringMatch::prefix("/check"))], 0.2),
            rule(
                "rpc",
                vec![
                    attr("rpc.service", StringMatch::regex("shop\\..*")),
                    attr("rpc.method", StringMatch::exact("Pay")),
                ],
                0.3,
            ),
        ];
        let set = RuleSet::compile(&sampling(rules), &identity("Deployment", "a"), &Metrics::default()).unwrap();
        let ok = {
            let mut v = Vec::new();
            set.service_matches(Some("svc"), &mut v);
            v
        };
        assert_eq!(set.decide(&ok, &facts(&set, None, &[("http.route", "/checkout")])), 0);
        assert_eq!(set.decide(&ok, &facts(&set, None, &[("http.route", "/checkout/x")])), 1);
        assert_eq!(set.decide(&ok, &facts(&set, None, &[("rpc.service", "shop.Cart"), ("rpc.method", "Pay")])), 2);
        assert_eq!(set.decide(&ok, &facts(&set, None, &[("rpc.service", "shop.Cart")])), 3, "every key must match");
        assert_eq!(set.decide(&ok, &facts(&set, None, &[])), 3);
        assert_eq!(set.outcome(3).name, FALLBACK_RULE);
    }

    #[test]
    fn service_and_kind_conditions() {
        let mut r = rule("server-of-cart", Vec::new(), 0.1);
        r.services = vec![StringMatch::prefix("cart")];
        r.span_kinds = vec![SpanKind::Server, SpanKind::Consumer];
        let set = RuleSet::compile(&sampling(vec![r]), &PodIdentity::default(), &Metrics::default()).unwrap();
        let mut ok = Vec::new();
        set.service_matches(Some("cart-v2"), &mut ok);
        assert_eq!(set.decide(&ok, &facts(&set, Some(SpanKind::Server), &[])), 0);
        assert_eq!(set.decide(&ok, &facts(&set, Some(SpanKind::Client), &[])), 1);
        assert_eq!(set.decide(&ok, &facts(&set, None, &[])), 1);
        set.service_matches(Some("checkout"), &mut ok);
        assert_eq!(set.decide(&ok, &facts(&set, Some(SpanKind::Server), &[])), 1);
        set.service_matches(None, &mut ok);
        assert_eq!(set.decide(&ok, &facts(&set, Some(SpanKind::Server), &[])), 1);
    }

    #[test]
    fn rules_for_other_workloads_are_left_out() {
        let mut mine = rule("mine", Vec::new(), 0.1);
        mine.workloads = vec!["Deployment/a".into()];
        let mut theirs = rule("theirs", Vec::new(), 0.1);
        theirs.workloads = vec!["StatefulSet/a".into()];
        let set =
            RuleSet::compile(&sampling(vec![theirs, mine]), &identity("Deployment", "a"), &Metrics::default()).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.outcome(0).name, "mine");
        let unknown =
            RuleSet::compile(&sampling(vec![rule("x", Vec::new(), 1.0)]), &PodIdentity::default(), &Metrics::default());
        assert_eq!(unknown.unwrap().len(), 1, "a rule for every workload applies without an identity");
    }

    #[test]
    fn health_checks_match_http_and_grpc_server_spans_only() {
        let set =
            RuleSet::compile(&sampling(health_check_rules()), &PodIdentity::default(), &Metrics::default()).unwrap();
        let ok = vec![true; 4];
        let server = Some(SpanKind::Server);
        let health = |f: SpanFacts<'_>| set.outcome(set.decide(&ok, &f)).name.clone();
        assert_eq!(health(facts(&set, server, &[("http.route", "/healthz")])), "health-checks");
        assert_eq!(health(facts(&set, server, &[("url.path", "/metrics")])), "health-checks");
        assert_eq!(health(facts(&set, server, &[("rpc.service", "grpc.health.v1.Health")])), "health-checks");
        assert_eq!(health(facts(&set, server, &[("http.route", "/api/cart"), ("url.path", "/api/cart")])), "default");
        assert_eq!(health(facts(&set, Some(SpanKind::Client), &[("http.route", "/healthz")])), "default");
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule_named() {
        let bad = rule("bad", vec![attr("http.route", StringMatch::regex("(("))], 1.0);
        let e = RuleSet::compile(&sampling(vec![bad]), &PodIdentity::default(), &Metrics::default()).unwrap_err();
        assert!(e.to_string().contains("\"bad\": attributes[0]"), "{e}");
        let unknown = rule("u", vec![attr("db.statement", StringMatch::exact("x"))], 1.0);
        assert!(RuleSet::compile(&sampling(vec![unknown]), &PodIdentity::default(), &Metrics::default()).is_err());
        let mut capped = rule("c", Vec::new(), 1.0);
        capped.spans_per_second = Some(f64::NAN);
        assert!(RuleSet::compile(&sampling(vec![capped]), &PodIdentity::default(), &Metrics::default()).is_err());
    }

    #[test]
    fn token_bucket_holds_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket { last: start, ..TokenBucket::new(10.0) };
        let taken = (0..1000).filter(|i| b.take(start + Duration::from_millis(*i * 5))).count();
        // 5 s at 10/s plus the initial burst of CAP_BURST_SECS at 10/s.
        assert!((148..=151).contains(&taken), "{taken}");
        // Then it holds its rate: 10 s more of one attempt every 5 ms lets 100 through.
        let later = start + Duration::from_secs(5);
        let taken = (1..=2000).filter(|i| b.take(later + Duration::from_millis(*i * 5))).count();
        assert!((99..=101).contains(&taken), "{taken}");
    }

    #[test]
    fn a_batch_of_an_sdk_at_its_share_passes_the_cap() {
        // Kept spans at 20/s arriving in one batch every 5 s (the SDKs' default), capped at 1.5x.
        let start = Instant::now();
        let mut b = TokenBucket { last: start, ..TokenBucket::new(30.0) };
        let batches = (1..=12u64).map(|n| start + Duration::from_secs(5 * n));
        let passed: usize = batches.map(|at| (0..100).filter(|_| b.take(at)).count()).sum();
        assert_eq!(passed, 1200, "nothing of a batch at the share is cut");
    }

    proptest! {
        /// The decision is the first rule whose every condition holds, whatever the rules.
        #[test]
        fn decide_is_the_first_rule_that_matches(
            routes in proptest::collection::vec("/(a|b|c){0,3}", 1..6),
            value in "/(a|b|c){0,3}",
        ) {
            let rules: Vec<AgentRule> = routes
                .iter()
                .enumerate()
                .map(|(i, r)| rule(&format!("r{i}"), vec![attr("http.route", StringMatch::prefix(r))], 1.0))
                .collect();
            let set = RuleSet::compile(&sampling(rules), &PodIdentity::default(), &Metrics::default()).unwrap();
            let ok = vec![true; routes.len()];
            let want = routes.iter().position(|r| value.starts_with(r.as_str())).unwrap_or(routes.len());
            prop_assert_eq!(set.decide(&ok, &facts(&set, None, &[("http.route", value.as_str())])), want);
        }
    }
}
