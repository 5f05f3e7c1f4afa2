//! OTLP/HTTP request decoding: content type, gzip, size limits, protobuf or JSON. Pure, and
//! never panics on any input (see the proptest below and `fuzz/`).

use flate2::read::GzDecoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
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
    #[error("invalid protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(String),
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
pub fn decompress(body: &[u8], content_encoding: Option<&str>, limit: usize) -> Result<Vec<u8>, DecodeError> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            Ok(body.to_vec())
        }
        Some("gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            let mut reader = GzDecoder::new(body).take(limit as u64 + 1);
            reader.read_to_end(&mut out).map_err(|e| DecodeError::Gzip(e.to_string()))?;
            if out.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            Ok(out)
        }
        Some(other) => Err(DecodeError::UnsupportedContentEncoding(other.chars().take(50).collect())),
    }
}

pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<ExportTraceServiceRequest, DecodeError> {
    match encoding {
        Encoding::Protobuf => {
            ExportTraceServiceRequest::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))
        }
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string())),
    }
}

/// Headers + body -> request.
pub fn decode_request(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<(ExportTraceServiceRequest, Encoding), DecodeError> {
    let encoding = encoding_of(content_type)?;
    let raw = decompress(body, content_encoding, limit)?;
    Ok((decode(&raw, encoding)?, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;
    use std::io::Write;

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
        let (req, enc) = decode_request(Some("application/json"), None, json, 1 << 20).expect("valid");
        assert_eq!(enc, Encoding::Json);
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id.len(), 8);
    }

    #[test]
    fn gzip_protobuf_round_trips() {
        let req = crate::agent::pipeline::tests::request(vec![crate::agent::pipeline::tests::span([3; 16])]);
        let body = gzip(&req.encode_to_vec());
        let (got, _) = decode_request(Some("application/x-protobuf"), Some("gzip"), &body, 1 << 20).expect("valid");
        assert_eq!(got, req);
    }

    #[test]
    fn gzip_bomb_is_too_large() {
        let body = gzip(&vec![0u8; 1 << 20]);
        let err = decode_request(Some("application/x-protobuf"), Some("gzip"), &body, 1024).expect_err("too large");
        assert_eq!(err.http_status(), 413);
    }

    #[test]
    fn malformed_payloads_are_400_with_a_message() {
        let err = decode_request(Some("application/x-protobuf"), None, &[0xff, 0xff, 0xff], 1024).expect_err("bad");
        assert_eq!(err.http_status(), 400);
        assert!(err.to_string().contains("protobuf"));
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
            let _ = decode_request(Some(ct), gz.then_some("gzip"), &body, 4096);
            let _ = decode_request(Some(ct), Some("gzip"), &gzip(&body), 4096);
        }

        #[test]
        fn mutated_valid_messages_never_panic(flip in 0usize..4096, val in any::<u8>()) {
            let req = crate::agent::pipeline::tests::request(vec![crate::agent::pipeline::tests::span([3; 16])]);
            let mut body = req.encode_to_vec();
            let i = flip % body.len();
            body[i] = val;
            let _ = decode_request(Some("application/x-protobuf"), None, &body, 4096);
        }
    }
}
