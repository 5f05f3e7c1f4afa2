//! The demo shop's inventory service (Rust): `GET /stock?sku=SKU` answers the stock of an item
//! from a SQLite database. Rust has no auto-instrumentation, so the service creates its spans
//! with the `opentelemetry` crates; everything else — where to export, the protocol, the service
//! name, resource attributes, sampler, propagators — comes from the standard `OTEL_*` variables
//! the Tracelight injector sets. Nothing here names a collector or an agent.
//!
//! Env: `PORT` (default 8080), `INVENTORY_DB` (SQLite file, created and seeded if missing).

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{FutureExt, Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::{runtime, Resource};
use std::sync::{Arc, Mutex};

const SEED: &[(&str, i64)] = &[("book", 12), ("lamp", 3), ("mug", 40)];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = tracer_provider()?;
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(propagator_from_env());

    let db = std::env::var("INVENTORY_DB").unwrap_or_else(|_| "inventory.db".into());
    let conn = Arc::new(Mutex::new(open_db(&db)?));
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    eprintln!("inventory: listening on :{port}, database {db}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let conn = conn.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, conn.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("inventory: stopping, flushing spans");
    provider.shutdown()?;
    Ok(())
}

/// The exporter the standard variables ask for: `OTEL_EXPORTER_OTLP_PROTOCOL` picks gRPC or
/// HTTP; the endpoint (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`), the service name and resource
/// attributes (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) and the sampler
/// (`OTEL_TRACES_SAMPLER[_ARG]`) are read by the SDK itself.
fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    let exporter = match protocol.as_str() {
        "grpc" => SpanExporter::builder().with_tonic().build()?,
        "http/protobuf" => SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary).build()?,
        other => anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported by this service"),
    };
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(Resource::builder().build()).build())
}

/// `OTEL_PROPAGATORS` (the Rust SDK does not read it): tracecontext and baggage are supported.
fn propagator_from_env() -> TextMapCompositePropagator {
    let names = std::env::var("OTEL_PROPAGATORS").unwrap_or_else(|_| "tracecontext,baggage".into());
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in names.split(',').map(str::trim) {
        match name {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            other => eprintln!("inventory: propagator {other:?} is not supported here; ignored"),
        }
    }
    TextMapCompositePropagator::new(propagators)
}

fn open_db(path: &str) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, quantity INTEGER NOT NULL)", [])?;
    for (sku, quantity) in SEED {
        conn.execute("INSERT OR IGNORE INTO stock (sku, quantity) VALUES (?1, ?2)", (sku, quantity))?;
    }
    Ok(conn)
}

struct HeaderExtractor<'a>(&'a hyper::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

async fn handle(
    req: Request<Incoming>,
    conn: Arc<Mutex<rusqlite::Connection>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let tracer = global::tracer("shop-inventory");
    let route = req.uri().path().to_string();
    let span = tracer
        .span_builder(format!("{} {route}", req.method()))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", req.method().to_string()),
            KeyValue::new("http.route", route.clone()),
            KeyValue::new("url.path", route.clone()),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let response = respond(&req, &conn).with_context(cx.clone()).await;
    let span = cx.span();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(response.status().as_u16())));
    if response.status().is_server_error() {
        span.set_status(Status::error("server error"));
    }
    span.end();
    Ok(response)
}

async fn respond(req: &Request<Incoming>, conn: &Mutex<rusqlite::Connection>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/stock" {
        return reply(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}".into());
    }
    let sku = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sku=")))
        .unwrap_or_default()
        .to_string();
    match stock_of(conn, &sku) {
        Ok(Some(quantity)) => reply(StatusCode::OK, format!("{{\"sku\":\"{sku}\",\"quantity\":{quantity}}}")),
        Ok(None) => reply(StatusCode::NOT_FOUND, format!("{{\"sku\":\"{sku}\",\"error\":\"unknown item\"}}")),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{{\"error\":\"{e}\"}}")),
    }
}

/// The database call, as a client span with the database semantic conventions.
fn stock_of(conn: &Mutex<rusqlite::Connection>, sku: &str) -> rusqlite::Result<Option<i64>> {
    const QUERY: &str = "SELECT quantity FROM stock WHERE sku = ?1";
    let tracer = global::tracer("shop-inventory");
    let mut span = tracer
        .span_builder("SELECT stock")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("db.system.name", "sqlite"),
            KeyValue::new("db.operation.name", "SELECT"),
            KeyValue::new("db.collection.name", "stock"),
            KeyValue::new("db.query.text", QUERY),
        ])
        .start_with_context(&tracer, &Context::current());
    let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = conn.query_row(QUERY, [sku], |row| row.get(0));
    let result = match result {
        Ok(q) => Ok(Some(q)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => {
            span.set_status(Status::error(e.to_string()));
            Err(e)
        }
    };
    span.end();
    result
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}
