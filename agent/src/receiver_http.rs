//! OTLP/HTTP receiver: `POST /v1/traces`, protobuf or JSON, optionally gzip.

use super::admission::{Admission, Charge};
use super::decode::{self, DecodeError, Encoding, Payload};
use super::metrics::Transport;
use super::pipeline::Pipeline;
use super::server::{BodyError, BoxError, Guard, ServerLimits};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use std::borrow::Cow;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Seconds a refused sender is asked to wait before retrying.
pub const RETRY_AFTER_SECS: u64 = 1;

pub struct HttpReceiver {
    pub pipeline: Arc<Pipeline>,
    pub admission: Admission,
    /// Limit on the request body, compressed and inflated.
    pub max_body: usize,
}

/// google.rpc.Status, the OTLP error body.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

pub fn router(receiver: Arc<HttpReceiver>) -> Router {
    Router::new().route("/v1/traces", post(export_traces)).with_state(receiver)
}

/// Serve OTLP/HTTP under `limits` (see `crate::server`), the byte budget charged as bodies arrive.
pub async fn serve(listener: TcpListener, receiver: Arc<HttpReceiver>, limits: ServerLimits, stop: CancellationToken) {
    let refused = receiver.pipeline.metrics.refused_requests.clone();
    let guard = Guard::new(limits, Some((receiver.admission.clone(), refused)));
    super::server::serve(listener, router(receiver), guard, stop).await
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tracing::instrument(level = "debug", skip_all)]
async fn export_traces(State(rx): State<Arc<HttpReceiver>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let encoding = decode::encoding_of(header_str(headers, header::CONTENT_TYPE)).unwrap_or(Encoding::Protobuf);
    let declared = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > rx.max_body) {
        return malformed(&rx, DecodeError::TooLarge { limit: rx.max_body }, encoding);
    }
    // Charged to the byte budget by the server as the body arrives (`crate::server`); a router
    // served some other way charges the whole body once read.
    let charge = parts.extensions.get::<Arc<Charge>>().cloned();
    let bytes = match axum::body::to_bytes(body, rx.max_body).await {
        Ok(b) => b,
        Err(e) => return body_failed(&rx, e.into_inner(), encoding),
    };
    let _permit = match &charge {
        Some(_) => None,
        None => match rx.admission.try_admit(bytes.len()) {
            Some(permit) => Some(permit),
            None => return refused(&rx, encoding),
        },
    };
    // A healthy exporter that is behind gets the CPU first (`crate::queue`).
    rx.pipeline.queue.pace(super::queue::PACE_MAX_WAIT).await;
    let content_encoding = header_str(headers, header::CONTENT_ENCODING);
    let content_type = header_str(headers, header::CONTENT_TYPE);
    let ingested = match decode::decode_request(content_type, content_encoding, &bytes, rx.max_body) {
        Ok((payload, _)) => {
            // An inflated body is a second buffer: paid for too.
            let inflated = match &payload {
                Payload::Protobuf(Cow::Owned(b)) => b.len(),
                _ => 0,
            };
            if charge.as_ref().is_some_and(|c| c.reserve(inflated).is_err()) {
                return refused(&rx, encoding);
            }
            match payload {
                Payload::Protobuf(body) => rx.pipeline.ingest(&body, Transport::Http),
                Payload::Json(request) => rx.pipeline.ingest_request(&request, Transport::Http),
            }
        }
        Err(e) => return malformed(&rx, e, encoding),
    };
    let ingested = match ingested {
        Ok(ingested) => ingested,
        // Counted by the pipeline.
        Err(e) => return error_response(DecodeError::from(e), encoding),
    };
    let partial_success = ingested
        .rejection_message()
        .map(|error_message| ExportTracePartialSuccess { rejected_spans: ingested.rejected as i64, error_message });
    let response = ExportTraceServiceResponse { partial_success };
    match (encoding, &response.partial_success) {
        // OTLP/JSON omits unset fields: a full success is `{}`, not `{"partialSuccess":null}`.
        (Encoding::Json, None) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, encoding.content_type())], "{}").into_response()
        }
        _ => encoded(StatusCode::OK, encoding, &response),
    }
}

/// A body that could not be read whole: too large, cut short by the server's limits, or broken.
fn body_failed(rx: &HttpReceiver, e: BoxError, encoding: Encoding) -> Response {
    match BodyError::find(&*e) {
        // Counted by the server.
        Some(BodyError::Overloaded) => overloaded(encoding),
        Some(timed_out @ BodyError::TimedOut(_)) => {
            tracing::debug!(error = %timed_out, "OTLP/HTTP request body too slow");
            let body = RpcStatus { code: 4, message: timed_out.to_string() };
            encoded(StatusCode::REQUEST_TIMEOUT, encoding, &body)
        }
        None if is_length_limit(&*e) => malformed(rx, DecodeError::TooLarge { limit: rx.max_body }, encoding),
        None => {
            tracing::debug!(error = %e, "reading an OTLP/HTTP request body failed");
            rx.pipeline.metrics.malformed_requests.inc();
            encoded(
                StatusCode::BAD_REQUEST,
                encoding,
                &RpcStatus { code: 3, message: format!("reading the body: {e}") },
            )
        }
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn refused(rx: &HttpReceiver, encoding: Encoding) -> Response {
    rx.pipeline.metrics.refused_requests.inc();
    overloaded(encoding)
}

fn malformed(rx: &HttpReceiver, e: DecodeError, encoding: Encoding) -> Response {
    rx.pipeline.metrics.malformed_requests.inc();
    error_response(e, encoding)
}

fn error_response(e: DecodeError, encoding: Encoding) -> Response {
    tracing::debug!(error = %e, "rejected OTLP/HTTP request");
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    // gRPC code INVALID_ARGUMENT (3) in the Status body.
    encoded(status, encoding, &RpcStatus { code: 3, message: e.to_string() })
}

fn overloaded(encoding: Encoding) -> Response {
    let body = RpcStatus { code: 8, message: "agent overloaded, retry later".into() };
    let mut resp = encoded(StatusCode::SERVICE_UNAVAILABLE, encoding, &body);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    resp
}

fn encoded<M: Message + serde::Serialize>(status: StatusCode, encoding: Encoding, msg: &M) -> Response {
    let body = match encoding {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).unwrap_or_default(),
    };
    (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}
