//! OTLP/HTTP protobuf exporter (hyper + rustls).

use super::gzip::Gzip;
use super::retry::{http_status_retryable, parse_retry_after, ExportError};
use super::tls;
use super::{Accepted, BuildError};
use crate::queue::Batch;
use crate::settings::{ExportSettings, SecretHeader};
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::time::Duration;

const MAX_RESPONSE: usize = 1 << 20;

pub struct HttpExporter {
    client: Client<tls::Connector, Full<Bytes>>,
    uri: Uri,
    /// Set when the collector gets gzip.
    gzip: Option<Gzip>,
    api_key: Option<SecretHeader>,
    timeout: Duration,
}

impl HttpExporter {
    pub fn new(s: &ExportSettings, timeout: Duration) -> Result<HttpExporter, BuildError> {
        let connector = tls::Connector::new(&s.endpoint, s.ca_pem.as_deref(), s.insecure_skip_verify, true)?;
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        let gzip = s.gzip.then(|| Gzip::new(flate2::Compression::fast()));
        Ok(HttpExporter { client, uri: s.endpoint.clone(), gzip, api_key: s.api_key.clone(), timeout })
    }

    pub async fn export(&self, batch: &Batch) -> Result<Accepted, ExportError> {
        let body =
            encode(batch, self.gzip.as_ref()).map_err(|e| ExportError::Permanent { reason: format!("encode: {e}") })?;
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::USER_AGENT, concat!("tracelight-agent/", env!("CARGO_PKG_VERSION")));
        if self.gzip.is_some() {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        if let Some(key) = &self.api_key {
            req = req.header(key.name.clone(), key.value.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| ExportError::Permanent { reason: e.to_string() })?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| retryable("request timed out"))?
            .map_err(|e| retryable(&format!("request failed: {}", error_chain(&e))))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let body =
            Limited::new(resp.into_body(), MAX_RESPONSE).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match status {
            200..=299 => Ok(accepted(&body)),
            s if http_status_retryable(s) => Err(ExportError::Retryable { reason: format!("HTTP {s}"), retry_after }),
            s => Err(ExportError::Permanent {
                reason: format!("HTTP {s}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
            }),
        }
    }
}

fn retryable(reason: &str) -> ExportError {
    ExportError::Retryable { reason: reason.to_string(), retry_after: None }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A response body's partial success (an unparsable 2xx body counts as full success).
fn accepted(body: &[u8]) -> Accepted {
    let resp = ExportTraceServiceResponse::decode(body).unwrap_or_default();
    Accepted::from_response(&resp)
}

/// The request body: the batch's encoded segments, gzipped when asked.
pub fn encode(batch: &Batch, gzip: Option<&Gzip>) -> std::io::Result<Bytes> {
    match gzip {
        Some(gzip) => super::gzip::body(gzip, &batch.segments),
        None => Ok(batch.encoded()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    #[test]
    fn merged_segments_are_one_valid_request() {
        let one = crate::pipeline::tests::request(vec![crate::pipeline::tests::span([5; 16])]);
        let two = crate::pipeline::tests::request(vec![crate::pipeline::tests::span([6; 16])]);
        let queue = crate::queue::Queue::new(1 << 20, Default::default());
        queue.push(Batch::new(one.resource_spans.clone()));
        queue.push(Batch::new(two.resource_spans.clone()));
        let batch = queue.take(usize::MAX).expect("batch");
        assert_eq!(batch.segments.len(), 2);
        let decoded = ExportTraceServiceRequest::decode(encode(&batch, None).expect("encode")).expect("decode");
        assert_eq!(decoded.resource_spans, [one.resource_spans, two.resource_spans].concat());
        let gzipped = encode(&batch, Some(&Gzip::new(flate2::Compression::fast()))).expect("gzip");
        let mut gz = flate2::read::GzDecoder::new(&gzipped[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut gz, &mut raw).expect("gunzip");
        assert_eq!(ExportTraceServiceRequest::decode(&raw[..]).expect("decode"), decoded);
    }
}
