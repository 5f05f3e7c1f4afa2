//! Bad input on the OTLP/gRPC receiver: malformed protobuf, bad gzip and oversized messages get
//! codes an OTLP client does NOT retry (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without RetryInfo),
//! so a bad request is dropped by its sender instead of being resent forever; the agent counts
//! them and keeps serving.

use crate::support::*;
use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt;

/// Sends arbitrary bytes as the request message.
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let n = src.remaining();
        ExportTraceServiceResponse::decode(src.copy_to_bytes(n))
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

async fn export_raw(
    addr: std::net::SocketAddr,
    body: Vec<u8>,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel);
    if gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    client.ready().await.expect("ready");
    let path = PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    client.unary(tonic::Request::new(Bytes::from(body)), path, Raw).await.map(|r| r.into_inner())
}

fn retryable_for_an_otlp_client(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    match status.code() {
        Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss => true,
        ResourceExhausted => status.get_details_retry_info().is_some(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_gets_non_retryable_codes_with_a_message() {
    let mut a = args(&temp_dir("grpc-input").join("absent.yaml"));
    a.max_request_bytes = 64 << 10;
    let sink = tracelight_agent::start_with_identity(a, identity()).await.expect("start");

    let err = export_raw(sink.grpc_addr, vec![0xff; 10], false).await.expect_err("malformed protobuf");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("protobuf") || err.message().contains("decode"), "clear message: {err:?}");

    // Oversized: a valid request above the limit.
    let big = request(2000, "big").encode_to_vec();
    assert!(big.len() > 64 << 10);
    let err = export_raw(sink.grpc_addr, big.clone(), false).await.expect_err("oversized");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(!retryable_for_an_otlp_client(&err), "an oversized request must not be resent as it is: {err:?}");
    assert!(err.message().contains("large") || err.message().contains("limit"), "clear message: {err:?}");

    // The same request compressed is small on the wire but inflates beyond the limit.
    let err = export_raw(sink.grpc_addr, big, true).await.expect_err("oversized once inflated");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(!retryable_for_an_otlp_client(&err), "{err:?}");

    // Still serving, nothing from the bad requests queued.
    let ok = export_raw(sink.grpc_addr, request(3, "ok").encode_to_vec(), true).await.expect("valid request");
    assert_eq!(ok.partial_success, None);
    assert_eq!(drain(&sink).len(), 3);
    sink.shutdown().await;
}
