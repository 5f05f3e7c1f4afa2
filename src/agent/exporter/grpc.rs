//! OTLP/gRPC exporter (tonic over a rustls connector).

use super::retry::{grpc_code_retryable, ExportError};
use super::tls;
use super::{Accepted, BuildError};
use crate::agent::queue::Batch;
use crate::agent::settings::{ExportSettings, SecretHeader};
use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::time::Duration;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub struct GrpcExporter {
    client: Grpc<Channel>,
    api_key: Option<(AsciiMetadataKey, AsciiMetadataValue)>,
    timeout: Duration,
}

impl GrpcExporter {
    pub fn new(s: &ExportSettings, timeout: Duration) -> Result<GrpcExporter, BuildError> {
        let tls = tls::client_config(s.ca_pem.as_deref(), s.insecure_skip_verify)?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http2().build();
        let endpoint = Endpoint::from(s.endpoint.clone()).connect_timeout(Duration::from_secs(5)).timeout(timeout);
        let channel = endpoint.connect_with_connector_lazy(connector);
        let mut client = Grpc::new(channel).max_decoding_message_size(1 << 20);
        if s.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
        }
        let api_key = s.api_key.as_ref().map(metadata).transpose()?;
        Ok(GrpcExporter { client, api_key, timeout })
    }

    pub async fn export(&self, batch: &Batch) -> Result<Accepted, ExportError> {
        let mut req = tonic::Request::new(batch.encoded());
        req.set_timeout(self.timeout);
        if let Some((k, v)) = &self.api_key {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        let mut client = self.client.clone();
        client
            .ready()
            .await
            .map_err(|e| ExportError::Retryable { reason: format!("gRPC channel: {e}"), retry_after: None })?;
        match client.unary(req, PathAndQuery::from_static(EXPORT_PATH), PreEncoded).await {
            Ok(resp) => Ok(Accepted::from_response(resp.get_ref())),
            Err(status) => Err(classify(&status)),
        }
    }
}

/// Sends the queue's already-encoded request bytes as they are; decodes the response with prost.
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let len = src.remaining();
        ExportTraceServiceResponse::decode(src.copy_to_bytes(len))
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("invalid ExportTraceServiceResponse: {e}")))
    }
}

fn metadata(h: &SecretHeader) -> Result<(AsciiMetadataKey, AsciiMetadataValue), BuildError> {
    let key = AsciiMetadataKey::from_bytes(h.name.as_str().as_bytes()).map_err(|_| BuildError::Header)?;
    let mut value = AsciiMetadataValue::try_from(h.value.as_bytes()).map_err(|_| BuildError::Header)?;
    value.set_sensitive(true);
    Ok((key, value))
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
