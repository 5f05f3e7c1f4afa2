//! OTLP/gRPC exporter: one unary call per batch over a tonic [`Channel`] (rustls connector).
//!
//! The request is framed here rather than by tonic's client codec, so that a request in flight
//! holds only its batch and the compressed body (see [`super::gzip`]); an uncompressed body is
//! the batch's segments themselves, not a copy. The response goes through tonic's decoder
//! ([`Streaming`]): status in headers or trailers, `grpc-status-details-bin`, gzip.

use super::gzip::Gzip;
use super::retry::{grpc_code_retryable, ExportError};
use super::tls;
use super::{Accepted, BuildError};
use crate::queue::Batch;
use crate::settings::{ExportSettings, SecretHeader};
use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, TE};
use http_body_util::StreamBody;
use hyper::body::Frame;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::convert::Infallible;
use std::time::Duration;
use tonic::codec::{CompressionEncoding, DecodeBuf, Decoder, Streaming};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tonic_types::StatusExt;
use tower::ServiceExt;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const MAX_RESPONSE: usize = 1 << 20;
/// gRPC message prefix: compressed flag and big-endian length.
const PREFIX: usize = 5;

pub struct GrpcExporter {
    channel: Channel,
    /// Set when the collector gets gzip.
    gzip: Option<Gzip>,
    /// Validated as ASCII gRPC metadata; marked sensitive.
    api_key: Option<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl GrpcExporter {
    pub fn new(s: &ExportSettings, timeout: Duration) -> Result<GrpcExporter, BuildError> {
        let connector = tls::Connector::new(&s.endpoint, s.ca_pem.as_deref(), s.insecure_skip_verify, false)?;
        let endpoint = Endpoint::from(s.endpoint.clone()).connect_timeout(Duration::from_secs(5)).timeout(timeout);
        let channel = endpoint.connect_with_connector_lazy(connector);
        // Level 6, as tonic (and the OpenTelemetry Collector's gRPC exporter) compress.
        let gzip = s.gzip.then(|| Gzip::new(flate2::Compression::new(6)));
        let api_key = s.api_key.as_ref().map(metadata).transpose()?;
        Ok(GrpcExporter { channel, gzip, api_key, timeout })
    }

    pub async fn export(&self, batch: &Batch) -> Result<Accepted, ExportError> {
        let body = self.body(batch).map_err(|e| ExportError::Permanent { reason: format!("encode: {e}") })?;
        let mut req = http::Request::new(body);
        *req.method_mut() = http::Method::POST;
        *req.version_mut() = http::Version::HTTP_2;
        // The channel adds the endpoint's scheme and authority, and its user agent.
        *req.uri_mut() = http::Uri::from_static(EXPORT_PATH);
        let headers = req.headers_mut();
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if self.gzip.is_some() {
            headers.insert(HeaderName::from_static("grpc-encoding"), HeaderValue::from_static("gzip"));
            headers.insert(HeaderName::from_static("grpc-accept-encoding"), HeaderValue::from_static("gzip"));
        }
        headers.insert(HeaderName::from_static("grpc-timeout"), grpc_timeout(self.timeout));
        if let Some((name, value)) = &self.api_key {
            headers.insert(name.clone(), value.clone());
        }
        let channel = self
            .channel
            .clone()
            .ready_oneshot()
            .await
            .map_err(|e| ExportError::Retryable { reason: format!("gRPC channel: {e}"), retry_after: None })?;
        let response = channel.oneshot(req).await.map_err(|e| classify(&Status::from_error(Box::new(e))))?;
        let message = read_response(response).await.map_err(|status| classify(&status))?;
        Ok(Accepted::from_response(&message))
    }

    /// The framed request: one gRPC message, gzipped in one buffer, or the segments as they are.
    fn body(&self, batch: &Batch) -> std::io::Result<tonic::body::Body> {
        if let Some(gzip) = &self.gzip {
            let mut framed = gzip.compress(&batch.segments, PREFIX)?;
            let len = u32::try_from(framed.len() - PREFIX).map_err(std::io::Error::other)?;
            framed[0] = 1;
            framed[1..PREFIX].copy_from_slice(&len.to_be_bytes());
            return Ok(tonic::body::Body::new(http_body_util::Full::new(Bytes::from(framed))));
        }
        let len = u32::try_from(batch.bytes).map_err(std::io::Error::other)?;
        let mut prefix = [0u8; PREFIX];
        prefix[1..].copy_from_slice(&len.to_be_bytes());
        let chunks = std::iter::once(Bytes::copy_from_slice(&prefix)).chain(batch.segments.clone());
        let frames = futures::stream::iter(chunks.map(|b| Ok::<_, Infallible>(Frame::data(b))));
        Ok(tonic::body::Body::new(StreamBody::new(frames)))
    }
}

/// What tonic's unary client does with a response: a status in the headers (trailers-only
/// response), else one message followed by the status in the trailers.
async fn read_response(response: http::Response<tonic::body::Body>) -> Result<ExportTraceServiceResponse, Status> {
    let (parts, body) = response.into_parts();
    let encoding = match parts.headers.get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => None,
        Some(b"gzip") => Some(CompressionEncoding::Gzip),
        Some(other) => {
            return Err(Status::unimplemented(format!(
                "collector answered with unsupported grpc-encoding {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let mut stream = match Status::from_header_map(&parts.headers) {
        Some(status) if status.code() != tonic::Code::Ok => return Err(status),
        Some(_) => Streaming::new_empty(ResponseDecoder, body),
        None => Streaming::new_response(ResponseDecoder, body, parts.status, encoding, Some(MAX_RESPONSE)),
    };
    let message = stream.message().await?.ok_or_else(|| Status::internal("Missing response message."))?;
    stream.trailers().await?;
    Ok(message)
}

/// `grpc-timeout` in milliseconds, or seconds when that takes more than the 8 digits allowed.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let ms = timeout.as_millis();
    let value = if ms <= 99_999_999 { format!("{ms}m") } else { format!("{}S", timeout.as_secs().min(99_999_999)) };
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("10S"))
}

/// Decodes the collector's `ExportTraceServiceResponse` with prost.
struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let len = src.remaining();
        ExportTraceServiceResponse::decode(src.copy_to_bytes(len))
            .map(Some)
            .map_err(|e| Status::internal(format!("invalid ExportTraceServiceResponse: {e}")))
    }
}

/// The API key header, if it is valid ASCII gRPC metadata (not a `-bin` key).
fn metadata(h: &SecretHeader) -> Result<(HeaderName, HeaderValue), BuildError> {
    AsciiMetadataKey::from_bytes(h.name.as_str().as_bytes()).map_err(|_| BuildError::Header)?;
    AsciiMetadataValue::try_from(h.value.as_bytes()).map_err(|_| BuildError::Header)?;
    let mut value = h.value.clone();
    value.set_sensitive(true);
    Ok((h.name.clone(), value))
}

fn classify(status: &tonic::Status) -> ExportError {
    let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let reason = format!("gRPC {:?}: {}", status.code(), status.message());
    if grpc_code_retryable(status.code(), retry_after.is_some()) {
        ExportError::Retryable { reason, retry_after }
    } else {
        ExportError::Permanent { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn retry_info_makes_resource_exhausted_retryable() {
        let with = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        assert_eq!(
            classify(&with),
            ExportError::Retryable {
                reason: "gRPC ResourceExhausted: slow down".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(classify(&tonic::Status::resource_exhausted("x")), ExportError::Permanent { .. }));
        assert!(matches!(classify(&tonic::Status::unavailable("x")), ExportError::Retryable { retry_after: None, .. }));
    }
}
