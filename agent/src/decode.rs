//! OTLP/HTTP request decoding: content type, gzip, size limits, then protobuf bytes (processed
//! as they are by `super::wire`) or a JSON request decoded into structs. Pure, and never panics
//! on any input (see the proptest below and `fuzz/`).

use flate2::read::GzDecoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::borrow::Cow;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}: use gzip or none")]
    UnsupportedContentEncoding(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid gzip body: {0}")]
    Gzip(String),
    #[error(transparent)]
    Protobuf(#[from] super::wire::WireError),
    #[error("invalid JSON ExportTraceServiceRequest: {0}")]
    Json(String),
}

impl DecodeError {
    /// The HTTP status the OTLP spec asks for.
    pub fn http_status(&self) -> u16 {
        match self {
            DecodeError::UnsupportedContentType(_) | DecodeError::UnsupportedContentEncoding(_) => 415,
            DecodeError::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// The encoding named by a `Content-Type` header (parameters such as `charset` ignored).
pub fn encoding_of(content_type: Option<&str>) -> Result<Encoding, DecodeError> {
    let raw = content_type.unwrap_or("");
    let essence = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(DecodeError::UnsupportedContentType(raw.chars().take(100).collect())),
    }
}

/// The body after `Content-Encoding`, at most `limit` bytes once inflated (zip-bomb guard).
pub fn decompress<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            Ok(Cow::Borrowed(body))
        }
        Some("gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            let mut reader = GzDecoder::new(body).take(limit as u64 + 1);
            reader.read_to_end(&mut out).map_err(|e| DecodeError::Gzip(e.to_string()))?;
            if out.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            Ok(Cow::Owned(out))
        }
        Some(other) => Err(DecodeError::UnsupportedContentEncoding(other.chars().take(50).collect())),
    }
}

/// A request body once its content encoding is undone.
#[derive(Debug, PartialEq)]
pub enum Payload<'a> {
    /// An encoded `ExportTraceServiceRequest`, not yet validated (`super::wire` does that).
    Protobuf(Cow<'a, [u8]>),
    /// OTLP/JSON, decoded (and so validated).
    Json(ExportTraceServiceRequest),
}

/// Headers + body -> payload.
pub fn decode_request<'a>(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &'a [u8],
    limit: usize,
) -> Result<(Payload<'a>, Encoding), DecodeError> {
    let encoding = encoding_of(content_type)?;
    let raw = decompress(body, content_encoding, limit)?;
    let payload = match encoding {
        Encoding::Protobuf => Payload::Protobuf(raw),
        Encoding::Json => Payload::Json(serde_json::from_slice(&raw).map_err(|e| DecodeError::Json(e.to_string()))?),
    };
    Ok((payload, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;
    use std::io::Write;

    /// The protobuf step after decoding: validate, sample, enrich.
    fn process(bytes: &[u8]) -> Result<usize, crate::wire::WireError> {
        let rules = crate::wire::Rules {
            threshold: crate::sampler::Threshold::for_ratio(0.5),
            attributes: &[],
            sampling: None,
            // Every trace a probe: the probe reader sees every input too.
            probe_below: 1 << 56,
        };
        let mut out = Vec::new();
        crate::wire::process(bytes, rules, &mut out).map(|p| p.counts.queued)
    }

    /// The whole receive path on a body; never panics.
    fn receive(content_type: &str, content_encoding: Option<&str>, body: &[u8]) {
        if let Ok((Payload::Protobuf(bytes), _)) = decode_request(Some(content_type), content_encoding, body, 4096) {
            let _ = process(&bytes);
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("in-memory write");
        e.finish().expect("in-memory gzip")
    }

    #[test]
    fn content_types() {
        assert_eq!(encoding_of(Some("application/x-protobuf")), Ok(Encoding::Protobuf));
        assert_eq!(encoding_of(Some("application/json; charset=utf-8")), Ok(Encoding::Json));
        assert_eq!(encoding_of(Some("text/plain")).map_err(|e| e.http_status()), Err(415));
        assert_eq!(encoding_of(None).map_err(|e| e.http_status()), Err(415));
    }

    #[test]
    fn json_with_hex_ids_decodes() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","kind":2}]}]}]}"#;
        let (payload, enc) = decode_request(Some("application/json"), None, json, 1 << 20).expect("valid");
        assert_eq!(enc, Encoding::Json);
        let Payload::Json(req) = payload else { panic!("JSON decodes to a request") };
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id.len(), 8);
    }

    #[test]
    fn gzip_protobuf_round_trips() {
        let req = crate::pipeline::tests::request(vec![crate::pipeline::tests::span([3; 16])]);
        let encoded = prost::Message::encode_to_vec(&req);
        let body = gzip(&encoded);
        let (got, _) = decode_request(Some("application/x-protobuf"), Some("gzip"), &body, 1 << 20).expect("valid");
        assert_eq!(got, Payload::Protobuf(Cow::Owned(encoded)));
    }

    #[test]
    fn gzip_bomb_is_too_large() {
        let body = gzip(&vec![0u8; 1 << 20]);
        let err = decode_request(Some("application/x-protobuf"), Some("gzip"), &body, 1024).expect_err("too large");
        assert_eq!(err.http_status(), 413);
    }

    #[test]
    fn malformed_payloads_are_400_with_a_message() {
        let (payload, _) =
            decode_request(Some("application/x-protobuf"), None, &[0xff, 0xff, 0xff], 1024).expect("framing");
        let Payload::Protobuf(bytes) = payload else { panic!("protobuf stays bytes") };
        let err = DecodeError::from(process(&bytes).expect_err("bad"));
        assert_eq!(err.http_status(), 400);
        assert!(err.to_string().contains("protobuf"), "{err}");
        let err = decode_request(Some("application/json"), None, b"{\"resourceSpans\": 3}", 1024).expect_err("bad");
        assert_eq!(err.http_status(), 400);
        let err = decode_request(Some("application/json"), Some("gzip"), b"not gzip", 1024).expect_err("bad");
        assert_eq!(err.http_status(), 400);
        let err = decode_request(Some("application/json"), Some("br"), b"{}", 1024).expect_err("bad");
        assert_eq!(err.http_status(), 415);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), json in any::<bool>(), gz in any::<bool>()) {
            let ct = if json { "application/json" } else { "application/x-protobuf" };
            receive(ct, gz.then_some("gzip"), &body);
            receive(ct, Some("gzip"), &gzip(&body));
        }

        #[test]
        fn mutated_valid_messages_never_panic(flip in 0usize..4096, val in any::<u8>()) {
            let req = crate::pipeline::tests::request(vec![crate::pipeline::tests::span([3; 16])]);
            let mut body = prost::Message::encode_to_vec(&req);
            let i = flip % body.len();
            body[i] = val;
            receive("application/x-protobuf", None, &body);
        }
    }
}
