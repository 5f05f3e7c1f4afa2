//! The Rust OpenTelemetry SDK exporting to the agent over gRPC and HTTP; the agent exporting to
//! a sink over gRPC and HTTP.

use crate::support::*;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::time::Duration;

pub fn provider(exporter: SpanExporter, service: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(opentelemetry::KeyValue::new("k8s.pod.name", "set-by-app"))
                .build(),
        )
        .build()
}

/// One trace: a parent with two children. Runs on a blocking thread: the simple processor
/// blocks on each export.
pub async fn emit_trace(provider: SdkTracerProvider) {
    tokio::task::spawn_blocking(move || {
        let tracer = provider.tracer("it");
        tracer.in_span("parent", |cx| {
            let _ = cx.span().span_context().trace_id();
            tracer.in_span("child-1", |_| {});
            tracer.in_span("child-2", |_| {});
        });
        provider.force_flush().expect("flush");
        provider.shutdown().expect("shutdown");
    })
    .await
    .expect("sdk thread");
}

/// An SDK exporter to an agent's gRPC or HTTP receiver.
pub fn exporter_to(protocol: &str, agent: &tracelight_agent::RunningAgent) -> SpanExporter {
    match protocol {
        "grpc" => SpanExporter::builder().with_tonic().with_endpoint(format!("http://{}", agent.grpc_addr)).build(),
        _ => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/traces", agent.http_addr))
            .build(),
    }
    .expect("exporter")
}

async fn sdk_to_agent_to_sink(sdk_protocol: &str, agent_protocol: &str) {
    let sink = sink().await;
    let dir = temp_dir("sdk");
    let cfg = dir.join("config.yaml");
    let endpoint = match agent_protocol {
        "grpc" => format!("http://{}", sink.grpc_addr),
        _ => format!("http://{}", sink.http_addr),
    };
    write_atomic(&cfg, &config_yaml(4, &endpoint, agent_protocol, 1.0, ""));
    let agent = agent(&cfg).await;
    let exporter = exporter_to(sdk_protocol, &agent);
    emit_trace(provider(exporter, "checkout")).await;

    let spans = collect(&sink, 3, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 3, "all spans reach the sink");
    let parent = spans.iter().find(|(_, s)| s.name == "parent").expect("parent");
    for (resource, span) in &spans {
        assert_eq!(span.trace_id, parent.1.trace_id, "one trace");
        assert_eq!(attr(resource, "service.name"), Some("checkout"));
        assert_eq!(attr(resource, "k8s.pod.name"), Some("set-by-app"), "the app's value wins");
        assert_eq!(attr(resource, "k8s.namespace.name"), Some("shop"));
        assert_eq!(attr(resource, "k8s.deployment.name"), Some("shop-frontend"));
        assert_eq!(attr(resource, "team"), Some("shop"));
        if span.name.starts_with("child") {
            assert_eq!(span.parent_span_id, parent.1.span_id, "child links to parent");
        }
    }
    let report = agent.report();
    assert_eq!(report.config_generation, 4);
    assert_eq!(report.services.get("checkout"), Some(&3));
    assert!(wait_until(Duration::from_secs(5), || agent.shared.metrics.exported.get() == 3).await);
    agent.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_grpc_in_grpc_out() {
    sdk_to_agent_to_sink("grpc", "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_http_in_http_out() {
    sdk_to_agent_to_sink("http", "http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_http_in_grpc_out() {
    sdk_to_agent_to_sink("http", "grpc").await;
}
