//! OTLP/gRPC exporter (tonic over a rustls connector).

use super::retry::{grpc_code_retryable, ExportError};
use super::tls;
use super::{Accepted, BuildError};
use crate::agent::queue::Batch;
use crate::agent::settings::{ExportSettings, SecretHeader};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::time::Duration;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

pub struct GrpcExporter {
    client: TraceServiceClient<Channel>,
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
        let mut client = TraceServiceClient::new(channel).max_decoding_message_size(1 << 20);
        if s.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
        }
        let api_key = s.api_key.as_ref().map(metadata).transpose()?;
        Ok(GrpcExporter { client, api_key, timeout })
    }

    pub async fn export(&self, batch: &Batch) -> Result<Accepted, ExportError> {
        let mut req = tonic::Request::new(ExportTraceServiceRequest { resource_spans: batch.resource_spans.clone() });
        req.set_timeout(self.timeout);
        if let Some((k, v)) = &self.api_key {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        match self.client.clone().export(req).await {
            Ok(resp) => Ok(Accepted::from_response(resp.get_ref())),
            Err(status) => Err(classify(&status)),
        }
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
