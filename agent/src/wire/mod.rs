//! The ingest path on protobuf bytes: validate, sample and enrich an `ExportTraceServiceRequest`
//! without decoding it into structs, writing the kept spans straight into the queue's encoding.
//!
//! Decoding every span into owned strings and vectors, then encoding the survivors again, was
//! about half of the agent's CPU under load (`perf record` at maximum rate: varint and string
//! decoding, allocation, `encoded_len`). Here a span costs one walk over its bytes: its fields
//! are checked against the OTLP schema (`schema`: what prost would refuse is refused, with the
//! same 400 / INVALID_ARGUMENT), its ids and tracestate are read in place, and a kept span is
//! copied as it came, or with its tracestate replaced when sampling records a threshold.
//! A resource gets the missing `k8s.*`/policy attributes appended to its own.
//!
//! Fields this schema does not know (a newer OTLP) are forwarded untouched instead of dropped;
//! unknown fields of the request itself are not (a batch is a run of `resource_spans`).
//! A request is all or nothing: on any error nothing is written and the sender gets the error.

pub mod probe;
pub mod reader;
pub mod schema;

use super::enrich;
use super::red::{self, Red, RedKind};
use super::rules::{RuleSet, SpanFacts};
use super::sampler::{self, Decision, Threshold};
use super::tracestate;
use reader::{put_len_field, put_len_header, varint_len, wrap_len_field, Field, Fields, Value};
use schema::{check_field, enter, utf8, Message};
use tracelight_contract::sampling::SpanKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid protobuf ExportTraceServiceRequest: {0}")]
    Malformed(&'static str),
}

/// What processing one request did with its spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingested {
    pub received: usize,
    pub rejected: usize,
    pub sampled_out: usize,
    pub queued: usize,
}

impl Ingested {
    /// The partial-success message to return, when spans were rejected.
    pub fn rejection_message(&self) -> Option<String> {
        (self.rejected > 0).then(|| {
            format!("{} spans rejected: trace id must be 16 bytes and span id 8 bytes, not all zero", self.rejected)
        })
    }

    fn add(&mut self, other: Ingested) {
        self.received += other.received;
        self.rejected += other.rejected;
        self.sampled_out += other.sampled_out;
        self.queued += other.queued;
    }
}

/// The rules one request is processed with (the live settings of the moment).
#[derive(Debug, Clone, Copy)]
pub struct Rules<'s> {
    /// The ratio's threshold when there are no sampling rules (`sampling` is `None`).
    pub threshold: Threshold,
    /// Resource attributes added where the application did not set them (first of a key wins).
    pub attributes: &'s [(String, String)],
    /// Sampling rules, `keepErrors` and caps; `None`: every span at `threshold`.
    pub sampling: Option<&'s RuleSet>,
    /// Spans of traces whose randomness is below this are probes (0: probes off); see
    /// `tracelight_contract::probe`.
    pub probe_below: u64,
}

/// The outcome of a valid request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Processed<'a> {
    pub counts: Ingested,
    /// Per resource that carried spans: its `service.name` (as queued) and how many it carried.
    pub services: Vec<(Option<&'a str>, usize)>,
    /// With sampling rules: per rule (the fallback last), spans decided, kept, capped.
    pub rules: Vec<RuleTally>,
    /// The request's spans of probe traces, whatever sampling decided.
    pub probes: Vec<tracelight_contract::probe::ProbeSpan>,
}

/// What one rule did with a request's spans.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RuleTally {
    pub received: u64,
    pub kept: u64,
    pub capped: u64,
    pub kept_errors: u64,
}

/// Process one encoded request: the kept spans are appended to `out` as `resource_spans`
/// entries (a valid request on their own). On error `out` is left as it was.
pub fn process<'a>(request: &'a [u8], rules: Rules<'a>, out: &mut Vec<u8>) -> Result<Processed<'a>, WireError> {
    process_with_red(request, rules, None, out)
}

/// [`process`], counting the request's server and consumer spans in `red` (before sampling) when
/// given. Counts are merged once the request is known valid, except that a request with more
/// than a few dozen distinct routes merges them as it goes (see [`red::Batch`]).
pub fn process_with_red<'a>(
    request: &'a [u8],
    rules: Rules<'a>,
    red: Option<&'a Red>,
    out: &mut Vec<u8>,
) -> Result<Processed<'a>, WireError> {
    let start = out.len();
    let mut ingest = Ingest {
        red: red.filter(|r| r.enabled()),
        red_batch: red::Batch::default(),
        red_service: "unknown_service",
        rules,
        fresh_state: fresh_state(rules.threshold),
        attr_state: Vec::new(),
        services_ok: Vec::new(),
        tally: rules.sampling.map(|s| vec![RuleTally::default(); s.len() + 1]).unwrap_or_default(),
        memo: Vec::new(),
        service: None,
        probes: Vec::new(),
    };
    let result = ingest.request(request, out).map(|mut processed| {
        processed.rules = std::mem::take(&mut ingest.tally);
        processed.probes = std::mem::take(&mut ingest.probes);
        processed
    });
    match &result {
        Err(_) => out.truncate(start),
        Ok(_) => {
            if let Some(red) = ingest.red {
                red.merge(&mut ingest.red_batch);
            }
        }
    }
    result
}

/// The tracestate of a span that had none, once kept at `threshold` (the common case, built once).
fn fresh_state(threshold: Threshold) -> Option<String> {
    match threshold {
        Threshold::Keep(t) if t > 0 => Some(tracestate::with_threshold("", t)),
        _ => None,
    }
}

/// Whether an enrichment attribute was found on the resource being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttrState {
    Missing,
    Present,
    /// Present as an unexpanded `$(VAR)` and replaced by the agent's value.
    Replaced,
}

struct Ingest<'a> {
    rules: Rules<'a>,
    fresh_state: Option<String>,
    attr_state: Vec<AttrState>,
    /// Per rule, whether the current resource's `service.name` lets it match.
    services_ok: Vec<bool>,
    tally: Vec<RuleTally>,
    /// The last decisions of this resource (span facts -> rule): spans of one service repeat a
    /// few routes, and comparing facts is cheaper than trying every rule again.
    memo: Vec<(SpanFacts<'a>, usize)>,
    /// Where RED observations are counted (none: `--red-metrics=false`).
    red: Option<&'a Red>,
    red_batch: red::Batch<'a>,
    /// The `service.name` the current resource's spans count under.
    red_service: &'a str,
    /// The `service.name` of the resource being processed, as its spans leave (for probes).
    service: Option<&'a str>,
    probes: Vec<tracelight_contract::probe::ProbeSpan>,
}

/// Decisions remembered per resource.
const MEMO: usize = 8;

/// The body of a length-delimited field (`check_field` has verified the wire type).
fn body<'a>(field: &Field<'a>) -> &'a [u8] {
    match field.value {
        Value::Len(bytes) => bytes,
        _ => &[],
    }
}

impl<'a> Ingest<'a> {
    fn request(&mut self, request: &'a [u8], out: &mut Vec<u8>) -> Result<Processed<'a>, WireError> {
        let depth = enter(schema::REQUEST_DEPTH)?;
        let mut processed = Processed::default();
        let mut fields = Fields::new(request);
        while let Some(field) = fields.next_field()? {
            if check_field(Message::Request, &field, depth, true)?.is_some() {
                let (counts, service) = self.resource_spans(body(&field), depth, out)?;
                if counts.received > 0 {
                    processed.services.push((service, counts.received));
                }
                processed.counts.add(counts);
            }
        }
        Ok(processed)
    }

    /// One `ResourceSpans`: its resource (merged and enriched) first, then its scopes with the
    /// kept spans, then its other fields as they came. Nothing is written when no span is kept.
    fn resource_spans(
        &mut self,
        body_: &'a [u8],
        depth: u32,
        out: &mut Vec<u8>,
    ) -> Result<(Ingested, Option<&'a str>), WireError> {
        let depth = enter(depth)?;
        let start = out.len();
        let resource_start = out.len();
        let mut service = ServiceName::default();
        self.attr_state.clear();
        self.attr_state.resize(self.rules.attributes.len(), AttrState::Missing);
        let mut fields = Fields::new(body_);
        while let Some(field) = fields.next_field()? {
            if field.number == 1 && check_field(Message::ResourceSpans, &field, depth, true)?.is_some() {
                // Several occurrences of a message field merge: their bodies are concatenated.
                self.resource_body(body(&field), depth, out, &mut service)?;
            }
        }
        self.append_missing_attributes(out);
        wrap_len_field(out, resource_start, 1);
        // The name the spans leave with: the application's, else the one the agent adds.
        let ours =
            self.rules.attributes.iter().zip(&self.attr_state).find_map(|((k, v), state)| {
                (k == "service.name" && *state != AttrState::Present).then_some(v.as_str())
            });
        self.service = ours.or(service.value);
        self.red_service = self.service.unwrap_or("unknown_service");
        if let Some(set) = self.rules.sampling {
            set.service_matches(ours.or(service.value), &mut self.services_ok);
            self.memo.clear();
        }

        let mut counts = Ingested::default();
        let mut fields = Fields::new(body_);
        while let Some(field) = fields.next_field()? {
            if field.number == 1 {
                continue; // the resource, written above
            }
            match check_field(Message::ResourceSpans, &field, depth, field.number == 2)? {
                Some(_) if field.number == 2 => counts.add(self.scope_spans(body(&field), depth, out)?),
                _ => out.extend_from_slice(&body_[field.start..field.end]),
            }
        }
        if counts.queued == 0 {
            out.truncate(start);
        } else {
            wrap_len_field(out, start, 1);
        }
        let replaced =
            self.rules.attributes.iter().zip(&self.attr_state).find_map(|((k, v), state)| {
                (k == "service.name" && *state != AttrState::Present).then_some(v.as_str())
            });
        // The name as queued: the agent's only when it filled in the attribute (spans kept).
        let name = match (counts.queued > 0, replaced) {
            (true, Some(ours)) => Some(ours),
            _ => service.value,
        };
        Ok((counts, name))
    }

    /// The fields of one `Resource` occurrence, copied, with each enrichment attribute noted as
    /// present or, when the application left an unexpanded `$(VAR)`, replaced in place.
    fn resource_body(
        &mut self,
        resource: &'a [u8],
        depth: u32,
        out: &mut Vec<u8>,
        service: &mut ServiceName<'a>,
    ) -> Result<(), WireError> {
        let depth = enter(depth)?;
        let mut fields = Fields::new(resource);
        while let Some(field) = fields.next_field()? {
            let is_attribute = field.number == 1;
            check_field(Message::Resource, &field, depth, is_attribute)?;
            if is_attribute {
                let (key, value) = key_value(body(&field), depth)?;
                service.see(key, value);
                if let Some(replacement) = self.note_attribute(key, value) {
                    put_string_attribute(out, key, replacement);
                    continue;
                }
            }
            out.extend_from_slice(&resource[field.start..field.end]);
        }
        Ok(())
    }

    /// Records an application attribute; returns the agent's value when it replaces it.
    fn note_attribute(&mut self, key: &str, value: Option<&str>) -> Option<&'a str> {
        let i = self.rules.attributes.iter().position(|(k, _)| k == key)?;
        if self.attr_state[i] != AttrState::Missing {
            return None;
        }
        if value.is_some_and(enrich::is_unexpanded_reference) {
            self.attr_state[i] = AttrState::Replaced;
            Some(self.rules.attributes[i].1.as_str())
        } else {
            self.attr_state[i] = AttrState::Present;
            None
        }
    }

    fn append_missing_attributes(&mut self, out: &mut Vec<u8>) {
        for ((key, value), state) in self.rules.attributes.iter().zip(&self.attr_state) {
            if *state == AttrState::Missing {
                put_string_attribute(out, key, value);
            }
        }
    }

    /// One `ScopeSpans`, with only its kept spans; nothing when none is kept.
    fn scope_spans(&mut self, scope: &'a [u8], depth: u32, out: &mut Vec<u8>) -> Result<Ingested, WireError> {
        let depth = enter(depth)?;
        let start = out.len();
        let mut counts = Ingested::default();
        let mut fields = Fields::new(scope);
        while let Some(field) = fields.next_field()? {
            let is_span = field.number == 2;
            check_field(Message::ScopeSpans, &field, depth, is_span)?;
            if is_span {
                counts.add(self.span(body(&field), depth, out)?);
            } else {
                out.extend_from_slice(&scope[field.start..field.end]);
            }
        }
        if counts.queued == 0 {
            out.truncate(start);
        } else {
            wrap_len_field(out, start, 2);
        }
        Ok(counts)
    }

    /// One span: validated, then dropped, copied, or copied with a new tracestate.
    fn span(&mut self, span: &'a [u8], depth: u32, out: &mut Vec<u8>) -> Result<Ingested, WireError> {
        let depth = enter(depth)?;
        let sampling = self.rules.sampling;
        // What the rules read of a span; without rules the span's other fields are only checked.
        let keys: &[&str] = sampling.map_or(&[], |s| s.keys.as_slice());
        let counting = self.red.is_some();
        let read_status = counting || sampling.is_some_and(|s| s.keep_errors);
        let mut facts = SpanFacts::default();
        let mut is_error = false;
        let mut span_red = SpanRed::default();
        let (mut trace_id, mut span_id, mut trace_state): (&[u8], &[u8], &str) = (&[], &[], "");
        let mut fields = Fields::new(span);
        while let Some(field) = fields.next_field()? {
            // The tracestate is checked here, the rest (nested attributes too) by the schema.
            let read_attribute = field.number == 9 && !keys.is_empty();
            if read_attribute {
                // The common shape is checked and read in one look (the schema's fast path).
                if let Some((slot, value)) = plain_wanted_attribute(&field, keys)? {
                    if let Some(slot) = slot {
                        if facts.values[slot].is_none() {
                            facts.values[slot] = Some(value);
                        }
                    }
                    // RED reads the route from the same attributes (skipping this left RED with
                    // the span's name as route whenever rules read attributes).
                    if counting {
                        span_red.attribute(body(&field))?;
                    }
                    continue;
                }
            }
            check_field(Message::Span, &field, depth, field.number == 3)?;
            match field.number {
                1 => trace_id = body(&field),
                2 => span_id = body(&field),
                3 => trace_state = utf8(body(&field))?,
                5 if counting => span_red.name = body(&field),
                6 if sampling.is_some() || counting => {
                    if let Value::Varint(kind) = field.value {
                        facts.kind = SpanKind::from_otlp(kind);
                        span_red.kind = RedKind::from_otlp(kind);
                        span_red.kind_seen = true;
                    }
                }
                7 | 8 if counting => span_red.time(field.number, field.value),
                9 if read_attribute || counting => {
                    if read_attribute {
                        if let Some((slot, value)) = wanted_attribute(body(&field), keys)? {
                            if facts.values[slot].is_none() {
                                facts.values[slot] = value;
                            }
                        }
                    }
                    if counting {
                        span_red.attribute(body(&field))?;
                    }
                }
                15 if read_status => is_error = status_is_error(body(&field))?,
                _ => {}
            }
        }
        let mut counts = Ingested { received: 1, ..Ingested::default() };
        if !valid_ids(trace_id, span_id) {
            counts.rejected = 1;
            return Ok(counts);
        }
        if let (Some(red), Some(observation)) = (self.red, span_red.observation(is_error)) {
            if self.red_batch.observe(self.red_service, observation) {
                red.merge(&mut self.red_batch);
            }
        }
        // Before sampling, and only the trace id's randomness: every agent picks the same traces.
        if self.rules.probe_below > 0 && sampler::trace_randomness(trace_id).is_some_and(|r| r < self.rules.probe_below)
        {
            self.probes.push(probe::probe_span(span, self.service.unwrap_or("unknown_service"))?);
        }
        let kept = match sampling {
            None => sample(self.rules.threshold, self.fresh_state.as_deref(), trace_id, trace_state),
            Some(set) => {
                let rule = match self.memo.iter().find(|(f, _)| *f == facts) {
                    Some((_, rule)) => *rule,
                    None => {
                        let rule = set.decide(&self.services_ok, &facts);
                        if self.memo.len() == MEMO {
                            self.memo.remove(0);
                        }
                        self.memo.push((facts, rule));
                        rule
                    }
                };
                let outcome = set.outcome(rule);
                let tally = &mut self.tally[rule];
                tally.received += 1;
                let mut kept = sample(outcome.threshold, outcome.fresh_state.as_deref(), trace_id, trace_state);
                if matches!(kept, Kept::Dropped) {
                    if set.keep_errors && is_error {
                        // Kept whatever the ratio: possibly part of a trace dropped elsewhere.
                        kept = Kept::AsIs;
                        tally.kept_errors += 1;
                    }
                } else if !outcome.admit() {
                    tally.capped += 1;
                    kept = Kept::Dropped;
                }
                if !matches!(kept, Kept::Dropped) {
                    tally.kept += 1;
                }
                kept
            }
        };
        match kept {
            Kept::Dropped => counts.sampled_out = 1,
            Kept::AsIs => {
                put_len_field(out, 2, span);
                counts.queued = 1;
            }
            Kept::NewState(state) => {
                write_with_state(span, state, out)?;
                counts.queued = 1;
            }
            Kept::Rewritten(state) => {
                write_with_state(span, &state, out)?;
                counts.queued = 1;
            }
        }
        Ok(counts)
    }
}

/// The sampling decision at `threshold` (`fresh`: the tracestate of a span without one kept at it).
fn sample<'s>(threshold: Threshold, fresh: Option<&'s str>, trace_id: &[u8], trace_state: &str) -> Kept<'s> {
    match (fresh, threshold) {
        // The common case without an allocation: no tracestate, a threshold to record.
        (Some(fresh), Threshold::Keep(t)) if trace_state.is_empty() => match sampler::trace_randomness(trace_id) {
            Some(r) if r >= t => Kept::NewState(fresh),
            _ => Kept::Dropped,
        },
        (_, threshold) => match sampler::decide(threshold, trace_id, trace_state) {
            Decision::Drop => Kept::Dropped,
            Decision::Keep(None) => Kept::AsIs,
            Decision::Keep(Some(state)) => Kept::Rewritten(state),
        },
    }
}

/// A span attribute (field 9) of the shape every SDK writes a string attribute in
/// ([`schema::plain_attribute_parts`]), validated as the schema would: `Some((slot, value))`,
/// the slot of its key among `keys` if any; `None` when it has another shape (then the general
/// path checks and reads it).
#[inline]
fn plain_wanted_attribute<'a>(field: &Field<'a>, keys: &[&str]) -> Result<Option<(Option<usize>, &'a str)>, WireError> {
    let Value::Len(kv) = field.value else { return Ok(None) };
    let Some((key, value)) = schema::plain_attribute_parts(kv) else { return Ok(None) };
    if !key.is_ascii() {
        return Ok(None);
    }
    match key_slot(keys, key) {
        Some(slot) => Ok(Some((Some(slot), utf8(value)?))),
        None if schema::valid_utf8(value) => Ok(Some((None, ""))),
        None => Err(WireError::Malformed("string field is not valid UTF-8")),
    }
}

/// The index of `key` in `keys` (a handful of known keys: compared by length and first byte
/// before their bytes).
#[inline]
fn key_slot(keys: &[&str], key: &[u8]) -> Option<usize> {
    keys.iter().position(|k| {
        let k = k.as_bytes();
        k.len() == key.len() && k.first() == key.first() && k == key
    })
}

/// A (validated) `KeyValue` whose key is one of `keys`: the key's index and the value when it
/// is a string. Other attributes cost a look at their key only.
fn wanted_attribute<'a>(kv: &'a [u8], keys: &[&str]) -> Result<Option<(usize, Option<&'a str>)>, WireError> {
    let mut slot = None;
    let mut value = None;
    let mut fields = Fields::new(kv);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.value) {
            (1, Value::Len(key)) => {
                slot = key_slot(keys, key);
                if slot.is_none() {
                    return Ok(None);
                }
            }
            (2, Value::Len(any)) => {
                // The last member of the oneof wins, as in `any_value_string`.
                let mut inner = Fields::new(any);
                let mut v = None;
                while let Some(f) = inner.next_field()? {
                    v = match (f.number, f.value) {
                        (1, Value::Len(s)) => Some(utf8(s)?),
                        _ => None,
                    };
                }
                if !any.is_empty() {
                    value = v;
                }
            }
            _ => {}
        }
    }
    Ok(slot.map(|s| (s, value)))
}

/// Whether a (validated) `Status` says `STATUS_CODE_ERROR` (2); the last occurrence wins.
pub(crate) fn status_is_error(status: &[u8]) -> Result<bool, WireError> {
    let mut error = false;
    let mut fields = Fields::new(status);
    while let Some(field) = fields.next_field()? {
        if let (3, Value::Varint(code)) = (field.number, field.value) {
            error = code == 2;
        }
    }
    Ok(error)
}

/// What RED reads of one span while it is walked.
#[derive(Default)]
struct SpanRed<'a> {
    kind: Option<RedKind>,
    /// Whether the kind field came (before it, every attribute is looked at).
    kind_seen: bool,
    name: &'a [u8],
    start: u64,
    end: u64,
    route: Option<&'a [u8]>,
}

impl<'a> SpanRed<'a> {
    fn time(&mut self, number: u32, value: Value<'_>) {
        if let Value::I64(t) = value {
            if number == 7 {
                self.start = t;
            } else {
                self.end = t;
            }
        }
    }

    /// Notes the route attribute of the span's kind; other attributes cost a look at their key.
    #[inline]
    fn attribute(&mut self, kv: &'a [u8]) -> Result<(), WireError> {
        if self.route.is_some() || (self.kind_seen && self.kind.is_none()) {
            return Ok(());
        }
        const KEYS: [&str; 2] = ["http.route", "messaging.destination.name"];
        // Fast path: a key written first with a one-byte length (what every SDK writes) is read
        // in place, and the other attributes are dismissed without walking them.
        if let [0x0a, len, rest @ ..] = kv {
            if let Some(key) = rest.get(..*len as usize).filter(|_| *len < 0x80) {
                let Some(slot) = KEYS.iter().position(|k| k.as_bytes() == key) else { return Ok(()) };
                // `value: AnyValue { string_value }` right after, with one-byte lengths, and
                // nothing else in the attribute: read in place (the schema validated the UTF-8).
                if let [0x12, any_len, 0x0a, str_len, value @ ..] = &rest[key.len()..] {
                    if *any_len < 0x80 && *str_len as usize + 2 == *any_len as usize && value.len() == *str_len as usize
                    {
                        if self.kind.is_none_or(|k| k.route_attribute() == KEYS[slot]) {
                            self.route = Some(value);
                        }
                        return Ok(());
                    }
                }
            }
        }
        if let Some((slot, Some(value))) = wanted_attribute(kv, &KEYS)? {
            // Before the kind is known (an encoder that writes attributes first), either counts.
            if self.kind.is_none_or(|k| k.route_attribute() == KEYS[slot]) {
                self.route = Some(value.as_bytes());
            }
        }
        Ok(())
    }

    /// The span's observation, when it is a server or consumer span.
    fn observation(&self, error: bool) -> Option<red::Observation<'a>> {
        let kind = self.kind?;
        // The name is a string field the schema checked, like the route attribute.
        let route = self.route.unwrap_or(self.name);
        // A span ending before it starts (clock skew) took no measurable time.
        let nanos = self.end.saturating_sub(self.start);
        Some(red::Observation { kind, route, error, nanos })
    }
}

enum Kept<'s> {
    Dropped,
    AsIs,
    NewState(&'s str),
    Rewritten(String),
}

/// The first `service.name` attribute of a resource, as prost would give it after a merge.
#[derive(Default)]
struct ServiceName<'a> {
    seen: bool,
    value: Option<&'a str>,
}

impl<'a> ServiceName<'a> {
    fn see(&mut self, key: &str, value: Option<&'a str>) {
        if !self.seen && key == "service.name" {
            self.seen = true;
            self.value = value;
        }
    }
}

/// Trace id of 16 bytes and span id of 8, neither all zero.
pub fn valid_ids(trace_id: &[u8], span_id: &[u8]) -> bool {
    trace_id.len() == 16 && span_id.len() == 8 && trace_id.iter().any(|&b| b != 0) && span_id.iter().any(|&b| b != 0)
}

/// A `KeyValue`, validated: its key, and its value when that is a string.
fn key_value(kv: &[u8], depth: u32) -> Result<(&str, Option<&str>), WireError> {
    let depth = enter(depth)?;
    let (mut key, mut value) = ("", None);
    let mut fields = Fields::new(kv);
    while let Some(field) = fields.next_field()? {
        match check_field(Message::KeyValue, &field, depth, field.number <= 2)? {
            Some(_) if field.number == 1 => key = utf8(body(&field))?,
            // A repeated message field merges: an empty occurrence keeps the earlier value.
            Some(_) if field.number == 2 => {
                if let Some(set) = any_value_string(body(&field), depth)? {
                    value = set;
                }
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// An `AnyValue`, validated: `None` when no value is set, `Some(string or None)` otherwise
/// (the last member of the oneof wins).
fn any_value_string(any: &[u8], depth: u32) -> Result<Option<Option<&str>>, WireError> {
    let depth = enter(depth)?;
    let mut value = None;
    let mut fields = Fields::new(any);
    while let Some(field) = fields.next_field()? {
        let string = field.number == 1;
        if check_field(Message::AnyValue, &field, depth, string)?.is_some() {
            value = Some(if string { Some(utf8(body(&field))?) } else { None });
        }
    }
    Ok(value)
}

/// `KeyValue { key, value: AnyValue { string_value } }` as resource field 1.
fn put_string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    let any_len = 1 + varint_len(value.len() as u64) + value.len();
    let kv_len = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    put_len_header(out, 1, kv_len);
    put_len_field(out, 1, key.as_bytes());
    put_len_header(out, 2, any_len);
    put_len_field(out, 1, value.as_bytes());
}

/// A span (as `ScopeSpans` field 2) with every tracestate field removed and `state` written
/// where the first one was, or at the end.
fn write_with_state(span: &[u8], state: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    let new_field = 1 + varint_len(state.len() as u64) + state.len();
    let mut old = 0;
    let mut fields = Fields::new(span);
    while let Some(field) = fields.next_field()? {
        if field.number == 3 {
            old += field.end - field.start;
        }
    }
    put_len_header(out, 2, span.len() - old + new_field);
    let mut written = false;
    let mut fields = Fields::new(span);
    while let Some(field) = fields.next_field()? {
        if field.number == 3 {
            if !written {
                put_len_field(out, 3, state.as_bytes());
                written = true;
            }
        } else {
            out.extend_from_slice(&span[field.start..field.end]);
        }
    }
    if !written {
        put_len_field(out, 3, state.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod tests;
