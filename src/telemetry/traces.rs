//! The operator's own traces: its reconciles and admissions as spans, exported over OTLP to the
//! collector the standard `OTEL_*` variables name. Off when no endpoint is set. Only
//! `tracelight controller` sets this up: the agent sidecar stays small and only logs.
//!
//! Export never holds up the work it traces: spans go through a bounded queue to a batch exporter
//! on the runtime; when the queue is full new spans are dropped (the SDK logs the first drop and
//! the total at shutdown) and failed exports are logged and counted, never retried in-line.

use crate::api::policy::CollectorProtocol;
use crate::api::Ratio;
use crate::telemetry::Metrics;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::{runtime, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "tracelight-operator";
/// Instrumentation scope of the operator's spans.
const SCOPE: &str = "tracelight";
/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which spans are kept, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(Ratio),
    /// Follows a sampled parent's decision; the inner sampler decides for root spans.
    ParentBased(Box<SamplerSetting>),
}

impl SamplerSetting {
    fn to_sdk(&self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        match self {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r.get()),
            SamplerSetting::ParentBased(root) => Sampler::ParentBased(Box::new(root.to_sdk())),
        }
    }
}

/// Where and how the operator exports its spans, from the standard environment.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// Export URL. For `http/protobuf` it includes the signal path (`/v1/traces`).
    pub endpoint: String,
    pub protocol: CollectorProtocol,
    pub sampler: SamplerSetting,
    /// Resource attributes, `service.name` and `service.version` included.
    pub resource: BTreeMap<String, String>,
    /// PEM file of CAs trusted besides the system roots for an `https://` endpoint
    /// (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or `OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca_file: Option<std::path::PathBuf>,
}

/// A variable that cannot be used as it is.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{var}={value:?}: {reason}")]
pub struct SettingsError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError { var, value: value.to_string(), reason: reason.into() }
}

impl TraceSettings {
    /// Reads the settings through `var` (the process environment in production). `Ok(None)`:
    /// tracing is off (no endpoint, `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<TraceSettings>, SettingsError> {
        // Empty means unset, as the specification asks.
        let var = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(invalid("OTEL_TRACES_EXPORTER", other, "only `otlp` and `none` are supported")),
        }
        let protocol =
            protocol(var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL")))?;
        let endpoint = match (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(url), _) => checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?,
            (None, Some(base)) => signal_url(checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?, protocol),
            (None, None) => return Ok(None),
        };
        let sampler = sampler(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?;
        let resource =
            resource(var("OTEL_RESOURCE_ATTRIBUTES"), var("OTEL_SERVICE_NAME"), var("POD_NAME"), var("POD_NAMESPACE"))?;
        let ca_file = var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
            .or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE"))
            .map(std::path::PathBuf::from);
        Ok(Some(TraceSettings { endpoint, protocol, sampler, resource, ca_file }))
    }
}

/// The transport; the specification's default is `http/protobuf`.
fn protocol(value: Option<String>) -> Result<CollectorProtocol, SettingsError> {
    match value.as_deref() {
        None | Some("http/protobuf") => Ok(CollectorProtocol::HttpProtobuf),
        Some("grpc") => Ok(CollectorProtocol::Grpc),
        Some(other) => {
            Err(invalid("OTEL_EXPORTER_OTLP_PROTOCOL", other, "supported protocols are `grpc` and `http/protobuf`"))
        }
    }
}

/// `http://` or `https://`. The exporter's crates are built without TLS (enabling tonic's TLS
/// features for them changed how the agent's own gRPC exporter connects: features are unified
/// across the workspace), so `https://` goes through the operator's own connector
/// ([`otlp_tls`](super::otlp_tls)).
fn checked_url(var: &'static str, url: String) -> Result<String, SettingsError> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    if rest.is_some_and(|r| !r.is_empty()) {
        Ok(url)
    } else {
        Err(invalid(var, &url, "must be an http:// or https:// URL"))
    }
}

/// The base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`) as the traces URL: gRPC uses it as it is,
/// HTTP appends `v1/traces` to its path.
fn signal_url(base: String, protocol: CollectorProtocol) -> String {
    match protocol {
        CollectorProtocol::Grpc => base,
        CollectorProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<SamplerSetting, SettingsError> {
    // An absent argument means ratio 1, as the specification says.
    let ratio = || -> Result<Ratio, SettingsError> {
        let Some(arg) = arg.as_deref() else { return Ok(Ratio::ALWAYS) };
        let value: f64 =
            arg.parse().map_err(|_| invalid("OTEL_TRACES_SAMPLER_ARG", arg, "must be a number between 0 and 1"))?;
        Ratio::new(value).map_err(|e| invalid("OTEL_TRACES_SAMPLER_ARG", arg, e.to_string()))
    };
    let parent_based = |root| SamplerSetting::ParentBased(Box::new(root));
    Ok(match name.as_deref().unwrap_or("parentbased_always_on") {
        "always_on" => SamplerSetting::AlwaysOn,
        "always_off" => SamplerSetting::AlwaysOff,
        "traceidratio" => SamplerSetting::TraceIdRatio(ratio()?),
        "parentbased_always_on" => parent_based(SamplerSetting::AlwaysOn),
        "parentbased_always_off" => parent_based(SamplerSetting::AlwaysOff),
        "parentbased_traceidratio" => parent_based(SamplerSetting::TraceIdRatio(ratio()?)),
        other => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                other,
                "supported samplers are always_on, always_off, traceidratio and their parentbased_ forms",
            ))
        }
    })
}

/// Resource attributes: `OTEL_RESOURCE_ATTRIBUTES`, over the pod's identity from the downward
/// API; `service.name` from `OTEL_SERVICE_NAME` first; `service.version` is the binary's own.
fn resource(
    attributes: Option<String>,
    service_name: Option<String>,
    pod_name: Option<String>,
    pod_namespace: Option<String>,
) -> Result<BTreeMap<String, String>, SettingsError> {
    let mut resource = BTreeMap::new();
    resource.extend(pod_name.map(|v| ("k8s.pod.name".to_string(), v)));
    resource.extend(pod_namespace.map(|v| ("k8s.namespace.name".to_string(), v)));
    if let Some(list) = attributes.as_deref() {
        for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| invalid("OTEL_RESOURCE_ATTRIBUTES", list, format!("{pair:?} is not key=value")))?;
            let value = percent_decode(value.trim())
                .ok_or_else(|| invalid("OTEL_RESOURCE_ATTRIBUTES", list, format!("{pair:?}: bad percent-encoding")))?;
            resource.insert(key.trim().to_string(), value);
        }
    }
    if let Some(name) = service_name {
        resource.insert("service.name".into(), name);
    }
    resource.entry("service.name".into()).or_insert_with(|| DEFAULT_SERVICE_NAME.into());
    resource.insert("service.version".into(), env!("CARGO_PKG_VERSION").into());
    Ok(resource)
}

/// `%XX` escapes decoded (W3C baggage octets, as `OTEL_RESOURCE_ATTRIBUTES` values use).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why the trace pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("OTLP span exporter for {endpoint}: {source}")]
    Exporter { endpoint: String, source: opentelemetry_otlp::ExporterBuildError },
    #[error("TLS towards {endpoint}: {source}")]
    Tls { endpoint: String, source: super::otlp_tls::TlsSetupError },
    #[error("OTLP endpoint {endpoint}: {source}")]
    Endpoint { endpoint: String, source: tonic::transport::Error },
}

/// Counts of the operator's own exported spans, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ExportStats {
    spans: Family<OutcomeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl ExportStats {
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "tracelight_trace_spans",
            "The operator's own spans sent to the OTLP collector, by outcome (exported, failed)",
            self.spans.clone(),
        );
    }

    fn count(&self, outcome: &'static str, spans: usize) {
        self.spans.get_or_create(&OutcomeLabel { outcome }).inc_by(spans as u64);
    }

    /// Spans counted with `outcome` so far.
    pub fn get(&self, outcome: &'static str) -> u64 {
        self.spans.get_or_create(&OutcomeLabel { outcome }).get()
    }
}

/// The OTLP exporter, counting what it sends and logging when exports start and stop failing
/// (not every failure: a collector that is down would flood the log).
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    stats: ExportStats,
    failing: AtomicBool,
    endpoint: String,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.stats.count("exported", spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "exporting the operator's spans works again");
                }
            }
            Err(error) => {
                self.stats.count("failed", spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, %error, spans, "exporting the operator's spans failed; they are dropped (logged once until it works again)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// How long one export over the operator's own TLS client may take (the exporter's default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running trace pipeline. [`TracePipeline::shutdown`] exports what is queued.
pub struct TracePipeline {
    provider: SdkTracerProvider,
    pub stats: ExportStats,
}

impl TracePipeline {
    /// Builds the exporter and the batch processor. Must run inside the tokio runtime, which
    /// must outlive the pipeline (the export runs on it).
    pub fn start(settings: &TraceSettings) -> Result<TracePipeline, PipelineError> {
        let exporter_error = |source| PipelineError::Exporter { endpoint: settings.endpoint.clone(), source };
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let tls = settings.endpoint.starts_with("https://");
        let connector = |alpn: &[&[u8]]| {
            let roots = super::otlp_tls::roots(settings.ca_file.as_deref())?;
            super::otlp_tls::TlsConnector::new(roots, alpn)
        };
        let tls_error = |source| PipelineError::Tls { endpoint: settings.endpoint.clone(), source };
        let exporter = match settings.protocol {
            CollectorProtocol::Grpc if tls => {
                let connector = connector(&[b"h2"]).map_err(tls_error)?;
                let channel = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
                    .map_err(|source| PipelineError::Endpoint { endpoint: settings.endpoint.clone(), source })?
                    .connect_with_connector_lazy(connector);
                builder.with_tonic().with_channel(channel).build()
            }
            CollectorProtocol::Grpc => builder.with_tonic().with_endpoint(&settings.endpoint).build(),
            CollectorProtocol::HttpProtobuf => {
                let http = builder.with_http().with_protocol(Protocol::HttpBinary).with_endpoint(&settings.endpoint);
                if tls {
                    let connector = connector(&[b"http/1.1"]).map_err(tls_error)?;
                    let client = opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
                    http.with_http_client(client).build()
                } else {
                    http.build()
                }
            }
        }
        .map_err(exporter_error)?;
        let stats = ExportStats::default();
        let exporter = CountingExporter {
            inner: exporter,
            stats: stats.clone(),
            failing: AtomicBool::new(false),
            endpoint: settings.endpoint.clone(),
        };
        // Queue size, batch size and delay come from OTEL_BSP_* (defaults 2048, 512, 5s).
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
        let attributes = settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.to_sdk())
            .with_resource(Resource::builder_empty().with_attributes(attributes).build())
            .build();
        Ok(TracePipeline { provider, stats })
    }

    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer(SCOPE)
    }

    /// Exports the queued spans (within a few seconds) and stops. Call it outside the runtime's
    /// `block_on`, while the runtime still runs: it waits for the export task.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "flushing the operator's spans at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, SettingsError> {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TraceSettings::from_env(|name| vars.get(name).cloned())
    }

    fn on(vars: &[(&str, &str)]) -> TraceSettings {
        settings(vars).unwrap().expect("tracing on")
    }

    #[test]
    fn without_an_endpoint_tracing_is_off() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        assert_eq!(settings(&[("OTEL_TRACES_SAMPLER", "always_on"), ("OTEL_SERVICE_NAME", "x")]), Ok(None));
    }

    #[test]
    fn sdk_disabled_or_exporter_none_turns_tracing_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert_eq!(settings(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert_eq!(settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
        assert!(settings(&[endpoint, ("OTEL_SDK_DISABLED", "false")]).unwrap().is_some());
        let zipkin = settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert_eq!(zipkin.var, "OTEL_TRACES_EXPORTER");
    }

    #[test]
    fn base_endpoint_gets_the_traces_path_over_http_only() {
        let http = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert_eq!(http.protocol, CollectorProtocol::HttpProtobuf, "the specification's default");
        assert_eq!(http.endpoint, "http://collector:4318/v1/traces");
        let grpc =
            on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(grpc.protocol, CollectorProtocol::Grpc);
        assert_eq!(grpc.endpoint, "http://collector:4317");
    }

    #[test]
    fn traces_endpoint_and_protocol_win_and_are_used_as_they_are() {
        let s = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces.example/custom/path"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(s.endpoint, "http://traces.example/custom/path");
        assert_eq!(s.protocol, CollectorProtocol::HttpProtobuf);
    }

    #[test]
    fn bad_endpoint_or_protocol_is_an_error_naming_the_variable() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]).unwrap_err();
        assert_eq!((e.var, e.value.as_str()), ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"));
        let tls = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ]);
        assert_eq!(tls.endpoint, "https://collector:4318/v1/traces");
        assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")]).unwrap_err();
        assert!(e.to_string().contains("must be an http:// or https:// URL"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://")]).unwrap_err();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let e =
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
                .unwrap_err();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }

    #[test]
    fn sampler_defaults_to_parent_based_always_on() {
        let s = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        assert_eq!(s.sampler, SamplerSetting::ParentBased(Box::new(SamplerSetting::AlwaysOn)));
    }

    #[test]
    fn sampler_and_ratio_are_read_and_checked() {
        let with = |name: &str, arg: Option<&str>| {
            let mut vars = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_SAMPLER", name)];
            vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
            settings(&vars)
        };
        let ratio = |r| SamplerSetting::TraceIdRatio(Ratio::new(r).unwrap());
        let parent_based = |s| SamplerSetting::ParentBased(Box::new(s));
        assert_eq!(with("parentbased_traceidratio", Some("0.25")).unwrap().unwrap().sampler, parent_based(ratio(0.25)));
        assert_eq!(with("traceidratio", None).unwrap().unwrap().sampler, ratio(1.0), "no argument: ratio 1");
        assert_eq!(with("always_off", None).unwrap().unwrap().sampler, SamplerSetting::AlwaysOff);
        assert_eq!(
            with("parentbased_always_off", None).unwrap().unwrap().sampler,
            parent_based(SamplerSetting::AlwaysOff)
        );
        assert_eq!(with("traceidratio", Some("1.5")).unwrap_err().var, "OTEL_TRACES_SAMPLER_ARG");
        assert_eq!(with("traceidratio", Some("half")).unwrap_err().var, "OTEL_TRACES_SAMPLER_ARG");
        assert_eq!(with("jaeger_remote", None).unwrap_err().var, "OTEL_TRACES_SAMPLER");
    }

    #[test]
    fn resource_has_the_default_service_name_version_and_pod_identity() {
        let s = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("POD_NAME", "tracelight-7d9f-abcde"),
            ("POD_NAMESPACE", "tracelight-system"),
        ]);
        let expected: BTreeMap<String, String> = [
            ("k8s.namespace.name", "tracelight-system"),
            ("k8s.pod.name", "tracelight-7d9f-abcde"),
            ("service.name", DEFAULT_SERVICE_NAME),
            ("service.version", env!("CARGO_PKG_VERSION")),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(s.resource, expected);
    }

    #[test]
    fn resource_attributes_are_parsed_and_service_name_variable_wins() {
        let attrs = (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attrs, deployment.environment=prod%2Ceu ,k8s.pod.name=override",
        );
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let s = on(&[endpoint, attrs, ("POD_NAME", "p")]);
        assert_eq!(s.resource["service.name"], "from-attrs");
        assert_eq!(s.resource["deployment.environment"], "prod,eu");
        assert_eq!(s.resource["k8s.pod.name"], "override", "explicit attributes win over the downward API");
        let s = on(&[endpoint, attrs, ("OTEL_SERVICE_NAME", "ops-operator")]);
        assert_eq!(s.resource["service.name"], "ops-operator");
        let e = settings(&[endpoint, ("OTEL_RESOURCE_ATTRIBUTES", "a=1,novalue")]).unwrap_err();
        assert_eq!(e.var, "OTEL_RESOURCE_ATTRIBUTES");
        let e = settings(&[endpoint, ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")]).unwrap_err();
        assert!(e.reason.contains("percent"), "{e}");
    }

    /// Accepts one HTTP request on `listener`, answers 200; returns the request line and body.
    async fn one_request(listener: tokio::net::TcpListener) -> (String, Vec<u8>) {
        let (stream, _) = listener.accept().await.unwrap();
        read_one_request(stream).await
    }

    /// [`one_request`] over TLS, serving `leaf` (refused handshakes are skipped: the exporter may
    /// probe).
    async fn one_tls_request(
        listener: tokio::net::TcpListener,
        leaf: crate::webhook::certs::KeyPairPem,
    ) -> (String, Vec<u8>) {
        let resolver = std::sync::Arc::new(crate::webhook::certs::CertResolver::new());
        resolver.set(&leaf).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::webhook::server::tls_config(resolver).unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            if let Ok(tls) = acceptor.accept(stream).await {
                return read_one_request(tls).await;
            }
        }
    }

    async fn read_one_request(
        mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ) -> (String, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let (head_len, body_len) = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-request");
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: Option<usize> =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap());
            break (end + 4, length.expect("a content-length"));
        };
        while got.len() < head_len + body_len {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            got.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let request_line = String::from_utf8_lossy(&got[..head_len]).lines().next().unwrap_or("").to_string();
        (request_line, got[head_len..head_len + body_len].to_vec())
    }

    #[test]
    fn http_export_posts_the_span_to_the_traces_path_and_shutdown_flushes_it() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = runtime.spawn(one_request(listener));
        let settings = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("POD_NAME", "op-0")]);
        let pipeline = {
            let _entered = runtime.enter();
            TracePipeline::start(&settings).unwrap()
        };
        let stats = pipeline.stats.clone();
        pipeline.provider.tracer("test").in_span("reconcile", |_| {});
        // Well before the 5s batch delay: only the flush at shutdown sends it.
        pipeline.shutdown();
        let (request_line, body) = runtime.block_on(server).unwrap();
        assert_eq!(request_line, "POST /v1/traces HTTP/1.1");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let resource = request.resource_spans[0].resource.as_ref().unwrap();
        let attr = |key: &str| {
            let kv = resource.attributes.iter().find(|kv| kv.key == key)?;
            match kv.value.as_ref()?.value.as_ref()? {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        };
        assert_eq!(attr("service.name").as_deref(), Some(DEFAULT_SERVICE_NAME));
        assert_eq!(attr("k8s.pod.name").as_deref(), Some("op-0"));
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["reconcile"]);
        assert_eq!(stats.get("exported"), 1);
    }

    /// A serving certificate for 127.0.0.1 and its CA's PEM in a file.
    fn local_tls() -> (crate::webhook::certs::KeyPairPem, std::path::PathBuf) {
        let spec =
            crate::webhook::certs::LeafSpec::for_service("c", "ns", &["127.0.0.1".into()], Duration::from_secs(3600));
        let material = crate::webhook::certs::plan(None, &spec, time::OffsetDateTime::now_utc()).unwrap().unwrap();
        let path = std::env::temp_dir().join(format!("tl-otlp-ca-{}-{}.pem", std::process::id(), fastrand::u32(..)));
        std::fs::write(&path, &material.ca.cert).unwrap();
        (material.leaf, path)
    }

    #[test]
    fn https_export_verifies_the_collector_with_the_ca_file_and_delivers_the_span() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let (leaf, ca_file) = local_tls();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("https://{}", listener.local_addr().unwrap());
        let server = runtime.spawn(one_tls_request(listener, leaf));
        let settings = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
        ]);
        let pipeline = {
            let _entered = runtime.enter();
            TracePipeline::start(&settings).unwrap()
        };
        let stats = pipeline.stats.clone();
        pipeline.provider.tracer("test").in_span("reconcile", |_| {});
        pipeline.shutdown();
        let (request_line, body) =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await }).unwrap().unwrap();
        assert_eq!(request_line, "POST /v1/traces HTTP/1.1");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(request.resource_spans[0].scope_spans[0].spans[0].name, "reconcile");
        assert_eq!(stats.get("exported"), 1);
        let _ = std::fs::remove_file(ca_file);
    }

    /// A gRPC collector over TLS (ALPN h2) for one export: answers OK, returns the request's path
    /// and protobuf message.
    async fn one_grpc_tls_export(
        listener: tokio::net::TcpListener,
        leaf: crate::webhook::certs::KeyPairPem,
    ) -> (String, Vec<u8>) {
        use http_body_util::BodyExt;
        let resolver = std::sync::Arc::new(crate::webhook::certs::CertResolver::new());
        resolver.set(&leaf).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stream, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(stream).await.unwrap();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let tx = tx.clone();
            async move {
                let path = request.uri().path().to_string();
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let _ = tx.send((path, body[5..].to_vec()));
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(&[
                        0, 0, 0, 0, 0,
                    ]))),
                    Ok(hyper::body::Frame::trailers(http::HeaderMap::from_iter([(
                        http::HeaderName::from_static("grpc-status"),
                        http::HeaderValue::from_static("0"),
                    )]))),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(
                    hyper::Response::builder().header("content-type", "application/grpc").body(body).unwrap(),
                )
            }
        });
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
        );
        rx.recv().await.unwrap()
    }

    #[test]
    fn grpc_export_over_tls_delivers_the_span() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let (leaf, ca_file) = local_tls();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("https://{}", listener.local_addr().unwrap());
        let server = runtime.spawn(one_grpc_tls_export(listener, leaf));
        let settings = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
        ]);
        let pipeline = {
            let _entered = runtime.enter();
            TracePipeline::start(&settings).unwrap()
        };
        let stats = pipeline.stats.clone();
        pipeline.provider.tracer("test").in_span("reconcile", |_| {});
        pipeline.shutdown();
        let (path, message) =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await }).unwrap().unwrap();
        assert_eq!(path, "/opentelemetry.proto.collector.trace.v1.TraceService/Export");
        let request = ExportTraceServiceRequest::decode(message.as_slice()).unwrap();
        assert_eq!(request.resource_spans[0].scope_spans[0].spans[0].name, "reconcile");
        assert_eq!(stats.get("exported"), 1);
        let _ = std::fs::remove_file(ca_file);
    }

    #[test]
    fn https_export_refuses_a_collector_it_cannot_verify() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        let (leaf, ca_file) = local_tls();
        let _ = std::fs::remove_file(ca_file);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("https://{}", listener.local_addr().unwrap());
        let _server = runtime.spawn(one_tls_request(listener, leaf));
        // System roots only: the collector's private CA is not among them.
        let settings = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
        let pipeline = {
            let _entered = runtime.enter();
            match TracePipeline::start(&settings) {
                Ok(p) => p,
                // A machine without system roots refuses to start the pipeline: also a refusal.
                Err(PipelineError::Tls { .. }) => return,
                Err(e) => panic!("{e}"),
            }
        };
        let stats = pipeline.stats.clone();
        pipeline.provider.tracer("test").in_span("reconcile", |_| {});
        pipeline.shutdown();
        assert_eq!((stats.get("exported"), stats.get("failed")), (0, 1));
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let settings = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = runtime.enter();
        let error = TracePipeline::start(&settings).err().expect("refused").to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn with_the_collector_down_spans_are_dropped_and_counted_as_failed() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        // A port nobody listens on: bound, then released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let endpoint = format!("http://{closed}");
        let settings =
            on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        let pipeline = {
            let _entered = runtime.enter();
            TracePipeline::start(&settings).unwrap()
        };
        let stats = pipeline.stats.clone();
        let tracer = pipeline.provider.tracer("test");
        // More than the queue holds (2048): ending a span never waits for the exporter.
        for _ in 0..3000 {
            tracer.in_span("admission", |_| {});
        }
        // The full batches go out (and fail) in the background.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.get("failed") == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        pipeline.shutdown();
        assert_eq!(stats.get("exported"), 0);
        let failed = stats.get("failed");
        assert!((1..=3000).contains(&failed), "{failed} spans counted as failed");
    }

    /// An exporter that always fails, as one whose collector is down.
    #[derive(Debug)]
    struct Failing;

    impl SpanExporter for Failing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("collector down".into()))
        }
    }

    #[test]
    fn failed_exports_are_counted() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        let stats = ExportStats::default();
        let exporter = CountingExporter {
            inner: Failing,
            stats: stats.clone(),
            failing: AtomicBool::new(false),
            endpoint: "http://nowhere".into(),
        };
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter).build();
        let tracer = provider.tracer("test");
        tracer.in_span("one", |_| {});
        tracer.in_span("two", |_| {});
        assert_eq!((stats.get("failed"), stats.get("exported")), (2, 0));
    }
}
