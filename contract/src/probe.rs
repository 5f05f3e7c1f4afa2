//! Probe traces: the small, consistent sample of traces every agent records the shape of, so the
//! operator can check that the spans of one request end up in one trace (the service graph and
//! its broken links, `src/continuity` in the operator).
//!
//! # Which traces
//!
//! A trace is a probe when the randomness of its trace id (its low 56 bits, as the sampler reads
//! it) is below the probe threshold: every agent picks the same traces without talking to the
//! others, whatever its sampling ratio, and before it samples. The threshold comes from the
//! config ([`ProbeSettings::ratio`]; the operator writes one for every namespace). Only the trace
//! id's randomness counts, never an `rv` in the tracestate: a service that drops the context has
//! no tracestate either, and its spans must still be picked by the same rule.
//!
//! # What is recorded
//!
//! Identity and shape only ([`ProbeSpan`]): ids, kind, the resource's `service.name`, the
//! remote-parent flag, the few peer attributes that name the other side of a call (cut to
//! [`MAX_PROBE_NAME_BYTES`]), timestamps, whether it failed. No other attribute value leaves the
//! pod this way.
//!
//! # Bounded
//!
//! At most [`MAX_PROBE_SPANS`] spans per report. When more arrive within one report interval,
//! the agent lowers its threshold for that interval to keep the traces of lowest randomness
//! (so what it keeps is still a consistent sample: every trace below the lowered threshold, none
//! above) and reports that threshold in [`Probes::threshold`]; the operator expects a span from
//! an agent only for traces below the threshold that agent reported. With spans of about 200
//! bytes of JSON, the probes add at most ~16 KiB to a report (typically a few hundred bytes).

use crate::sampling::SpanKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most probe spans in one report.
pub const MAX_PROBE_SPANS: usize = 64;
/// Longest `service.name`, peer or destination in a probe span, in bytes (cut at a character
/// boundary).
pub const MAX_PROBE_NAME_BYTES: usize = 128;
/// The probe ratio the operator writes unless told otherwise: 1 trace in 64.
pub const DEFAULT_PROBE_RATIO: f64 = 1.0 / 64.0;
/// Number of bits of randomness and of the threshold (as in the sampler).
pub const RANDOMNESS_BITS: u32 = 56;
/// Name of the agent's environment variable listing the application containers that set
/// `OTEL_PROPAGATORS` themselves (`container=value;...`; set by the injector, only when one does).
pub const PROPAGATOR_OVERRIDES_ENV: &str = "TRACELIGHT_PROPAGATOR_OVERRIDES";
/// Name of the agent's environment variable holding the pod's IP (downward API `status.podIP`).
pub const POD_IP_ENV: &str = "TRACELIGHT_POD_IP";
/// Name of the agent's environment variable set to `true` in a `hostNetwork` pod, whose IP is
/// its node's and so names no single pod.
pub const HOST_NETWORK_ENV: &str = "TRACELIGHT_HOST_NETWORK";

/// Probe settings in the agent config (contract 3; absent: no probes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSettings {
    /// Fraction of traces recorded as probes (0 turns probes off; absent: [`DEFAULT_PROBE_RATIO`]).
    #[serde(default = "default_ratio")]
    pub ratio: crate::Ratio,
}

fn default_ratio() -> crate::Ratio {
    crate::Ratio::new(DEFAULT_PROBE_RATIO).unwrap_or(crate::Ratio::ALWAYS)
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings { ratio: default_ratio() }
    }
}

/// The randomness of a trace id: its low 56 bits (bytes 9..16); `None` unless 16 bytes.
pub fn trace_randomness(trace_id: &[u8]) -> Option<u64> {
    let bytes: &[u8; 16] = trace_id.try_into().ok()?;
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&bytes[9..16]);
    Some(u64::from_be_bytes(low))
}

/// The probe threshold of a ratio: traces whose randomness is below it are probes.
pub fn threshold_for_ratio(ratio: f64) -> u64 {
    let max = 1u64 << RANDOMNESS_BITS;
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return max;
    }
    ((ratio * max as f64).round() as u64).min(max)
}

/// One report's probe spans (contract 3, optional: operators that do not know it ignore it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// The threshold the spans were kept under during this interval: a trace whose randomness is
    /// below it has all its spans here (or in an earlier report). Lower than the configured one
    /// when the interval's spans were more than [`MAX_PROBE_SPANS`].
    #[serde(with = "hex_u64")]
    pub threshold: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<ProbeSpan>,
    /// Probe spans left out to stay under the cap: those recorded before the threshold was
    /// lowered (spans above a lowered threshold are not looked at, so not counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub left_out: u64,
    /// The pod's application containers that set `OTEL_PROPAGATORS` in their own environment,
    /// with its value (empty when it comes from a source the injector could not read); the
    /// container's value wins over the policy's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub propagator_overrides: BTreeMap<String, String>,
    /// The pod's own IP (none in a `hostNetwork` pod): the operator names the caller of a
    /// server span by the address its request came from ([`ProbeSpan::caller`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The identity and shape of one span.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// Absent for a root span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Absent when the SDK left it unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SpanKind>,
    /// The resource's `service.name`.
    #[serde(default)]
    pub service: String,
    /// Whether the parent came from another process, where the SDK says (OTLP span flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_parent: Option<bool>,
    /// The server a client span called: `server.address`/`net.peer.name` or the URL's host, with
    /// the port when known (`tax:8090`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The address a server span's request came from: the socket peer
    /// (`network.peer.address`, `net.sock.peer.addr`, `net.peer.ip`), else `client.address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The messaging destination of a producer or consumer span (`messaging.destination.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// A database call (`db.system` set): never expected to have a child span.
    #[serde(default, skip_serializing_if = "is_false")]
    pub db: bool,
    /// The span ended with an error status (a failed call may never have reached its callee).
    #[serde(default, skip_serializing_if = "is_false")]
    pub error: bool,
    /// The first link's trace and span ids (`trace:span`), for consumers that link to the
    /// producer instead of taking it as parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default)]
    pub start_unix_nano: u64,
    #[serde(default)]
    pub duration_nanos: u64,
}

/// `u64` as 14 lowercase hex digits (a 56-bit threshold; JSON numbers above 2^53 are not safe
/// in every reader); `2^56` itself (everything is a probe) as `100000000000000`.
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{value:014x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() || text.len() > 15 {
            return Err(serde::de::Error::custom("a probe threshold has 1 to 15 hex digits"));
        }
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// `name` cut to [`MAX_PROBE_NAME_BYTES`] at a character boundary.
pub fn bounded_name(name: &str) -> &str {
    if name.len() <= MAX_PROBE_NAME_BYTES {
        return name;
    }
    let end = (0..=MAX_PROBE_NAME_BYTES).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_of_ratios_and_randomness_of_trace_ids() {
        assert_eq!(threshold_for_ratio(1.0), 1 << 56);
        assert_eq!(threshold_for_ratio(0.0), 0);
        assert_eq!(threshold_for_ratio(f64::NAN), 0);
        assert_eq!(threshold_for_ratio(DEFAULT_PROBE_RATIO), 1 << 50);
        let mut id = [0xffu8; 16];
        id[9..].copy_from_slice(&[0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(trace_randomness(&id), Some(7));
        assert_eq!(trace_randomness(&[1; 8]), None);
    }

    #[test]
    fn the_threshold_travels_as_hex_and_bad_ones_are_refused() {
        let p = Probes { threshold: 1 << 56, ..Default::default() };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json, serde_json::json!({"threshold": "100000000000000"}));
        assert_eq!(serde_json::from_value::<Probes>(json).unwrap(), p);
        assert!(serde_json::from_str::<Probes>(r#"{"threshold":"xyz"}"#).is_err());
        assert!(serde_json::from_str::<Probes>(r#"{"threshold":""}"#).is_err());
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_name(&"é".repeat(100)).len(), 128);
        assert_eq!(bounded_name("tax:8090"), "tax:8090");
        assert_eq!(to_hex(&[0x0a, 0xff]), "0aff");
    }
}
