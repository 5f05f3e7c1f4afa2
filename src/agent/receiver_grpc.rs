//! OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

use super::admission::Admission;
use super::metrics::Transport;
use super::pipeline::Pipeline;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub struct GrpcReceiver {
    pub pipeline: Arc<Pipeline>,
    pub admission: Admission,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let Some(_permit) = self.admission.try_admit(request.encoded_len()) else {
            self.pipeline.metrics.refused_requests.inc();
            return Err(overloaded());
        };
        let ingested = self.pipeline.ingest(request, Transport::Grpc);
        let partial_success = ingested
            .rejection_message()
            .map(|error_message| ExportTracePartialSuccess { rejected_spans: ingested.rejected as i64, error_message });
        Ok(Response::new(ExportTraceServiceResponse { partial_success }))
    }
}

/// RESOURCE_EXHAUSTED is retryable for OTLP clients only with a RetryInfo detail.
fn overloaded() -> Status {
    let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(super::receiver_http::RETRY_AFTER_SECS)));
    Status::with_error_details(tonic::Code::ResourceExhausted, "agent overloaded, retry later", details)
}

pub fn service(receiver: GrpcReceiver, max_message: usize) -> TraceServiceServer<GrpcReceiver> {
    TraceServiceServer::new(receiver)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message)
}

/// Rewrites the codes tonic answers undecodable requests with into the ones OTLP clients treat
/// as permanent, so a bad request is dropped by its sender instead of resent forever: tonic says
/// OUT_OF_RANGE for a message over the size limit (retryable in OTLP) -> RESOURCE_EXHAUSTED
/// without RetryInfo; INTERNAL for bad protobuf, gzip or framing -> INVALID_ARGUMENT. The
/// handler itself never answers either code, so only tonic's decode errors are rewritten.
pub fn otlp_error_codes(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let code = match headers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"11") => tonic::Code::ResourceExhausted,
        Some(b"13") => tonic::Code::InvalidArgument,
        _ => return response,
    };
    headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    response
}

pub async fn serve(
    listener: TcpListener,
    receiver: GrpcReceiver,
    max_message: usize,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(otlp_error_codes as fn(_) -> _))
        .add_service(service(receiver, max_message))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
}
