//! OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

use super::admission::{Admission, Charge};
use super::metrics::Transport;
use super::pipeline::Pipeline;
use super::queue::PACE_MAX_WAIT;
use super::server::{BodyError, BoxError, Guard, ServerLimits};
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The gRPC method path of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub struct GrpcReceiver {
    pub pipeline: Arc<Pipeline>,
    pub admission: Admission,
}

impl GrpcReceiver {
    /// One `Export` call, on the request's protobuf bytes (tonic has undone gzip and framing).
    /// `charge`: what the server charged to the byte budget as the message arrived (topped up
    /// here to its inflated size); without one the whole message is charged now.
    #[tracing::instrument(level = "debug", skip_all, fields(bytes = request.len()))]
    pub fn export(&self, request: &[u8], charge: Option<&Charge>) -> Result<ExportTraceServiceResponse, Status> {
        let admitted = match charge {
            Some(charge) => charge.at_least(request.len()).is_ok().then_some(None),
            None => self.admission.try_admit(request.len()).map(Some),
        };
        let Some(_permit) = admitted else {
            self.pipeline.metrics.refused_requests.inc();
            return Err(overloaded());
        };
        let ingested = self.pipeline.ingest(request, Transport::Grpc).map_err(|e| {
            tracing::debug!(error = %e, "rejected OTLP/gRPC request");
            Status::invalid_argument(e.to_string())
        })?;
        let partial_success = ingested
            .rejection_message()
            .map(|error_message| ExportTracePartialSuccess { rejected_spans: ingested.rejected as i64, error_message });
        Ok(ExportTraceServiceResponse { partial_success })
    }
}

/// The `TraceService` server. Unlike the generated one it hands the handler the request's
/// bytes instead of a decoded `ExportTraceServiceRequest`: `super::wire` works on those.
#[derive(Clone)]
pub struct TraceServer {
    receiver: Arc<GrpcReceiver>,
    max_message: usize,
}

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower::Service<http::Request<B>> for TraceServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("only trace export is served here").into_http()) });
        }
        let mut gzip = EnabledCompressionEncodings::default();
        gzip.enable(CompressionEncoding::Gzip);
        let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
            .apply_compression_config(gzip, gzip)
            .apply_max_message_size_config(Some(self.max_message), None);
        let method = ExportMethod(self.receiver.clone());
        Box::pin(async move { Ok(grpc.unary(method, req).await) })
    }
}

struct ExportMethod(Arc<GrpcReceiver>);

impl tonic::server::UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let receiver = self.0.clone();
        Box::pin(async move {
            // A healthy exporter that is behind gets the CPU first (`crate::queue`).
            receiver.pipeline.queue.pace(PACE_MAX_WAIT).await;
            let charge = request.extensions().get::<Arc<Charge>>();
            receiver.export(request.get_ref(), charge.map(|c| &**c)).map(Response::new)
        })
    }
}

/// Requests as bytes, responses encoded by prost.
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The message's own buffer, split off without a copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// RESOURCE_EXHAUSTED is retryable for OTLP clients only with a RetryInfo detail.
fn overloaded() -> Status {
    let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(super::receiver_http::RETRY_AFTER_SECS)));
    Status::with_error_details(tonic::Code::ResourceExhausted, "agent overloaded, retry later", details)
}

/// The gRPC service: gzip accepted and answered, messages up to `max_message` bytes inflated.
pub fn service(receiver: GrpcReceiver, max_message: usize) -> TraceServer {
    TraceServer { receiver: Arc::new(receiver), max_message }
}

/// Rewrites the codes tonic answers undecodable requests with into the ones OTLP clients treat
/// as permanent, so a bad request is dropped by its sender instead of resent forever: tonic says
/// OUT_OF_RANGE for a message over the size limit (retryable in OTLP) -> RESOURCE_EXHAUSTED
/// without RetryInfo; INTERNAL for bad gzip or framing -> INVALID_ARGUMENT (bad protobuf is
/// the handler's own INVALID_ARGUMENT). The handler itself never answers either code, so only
/// tonic's decode errors are rewritten.
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

/// A body cut short by the server, as the gRPC status tonic answers with: over the byte budget
/// is retryable `RESOURCE_EXHAUSTED` with `RetryInfo`, a body too slow `DEADLINE_EXCEEDED`.
fn body_status(e: BodyError) -> BoxError {
    Box::new(match e {
        BodyError::Overloaded => overloaded(),
        BodyError::TimedOut(_) => Status::deadline_exceeded(e.to_string()),
    })
}

/// Serve OTLP/gRPC under `limits` (see `crate::server`), the byte budget charged as messages arrive.
pub async fn serve(
    listener: TcpListener,
    receiver: GrpcReceiver,
    max_message: usize,
    limits: ServerLimits,
    stop: CancellationToken,
) {
    let refused = receiver.pipeline.metrics.refused_requests.clone();
    let guard = Guard { limits, admission: Some((receiver.admission.clone(), refused)), body_error: body_status };
    let service = tower::util::MapResponse::new(service(receiver, max_message), otlp_error_codes as fn(_) -> _);
    super::server::serve(listener, service, guard, stop).await
}
