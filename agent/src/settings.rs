//! The config file plus the Secret files it names, turned into what the agent applies.
//! Loading validates everything, so a bad reload can be refused before anything changes.

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use std::fmt;
use std::path::{Path, PathBuf};
use tracelight_contract::AgentConfig;
use tracelight_contract::{CollectorProtocol, Compression};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
    #[error("invalid collector endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("invalid API key header name {0:?}")]
    HeaderName(String),
    #[error("API key in {0} is not a valid header value")]
    HeaderValue(PathBuf),
    #[error("apiKeyHeader and apiKeyFile must be set together")]
    HalfApiKey,
    #[error("CA file {0} holds no PEM certificate")]
    EmptyCa(PathBuf),
}

/// A header value that never shows up in logs or `Debug` output.
#[derive(Clone, PartialEq)]
pub struct SecretHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

/// Where and how to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Full URL: for OTLP/HTTP including the `/v1/traces` path.
    pub endpoint: Uri,
    pub protocol: CollectorProtocol,
    pub gzip: bool,
    pub api_key: Option<SecretHeader>,
    /// PEM bundle to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config: AgentConfig,
    pub export: ExportSettings,
    /// Fields of the file this build does not know (from a newer operator), ignored.
    pub unknown_fields: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path).map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })
}

/// Read and validate the config file and the files it references.
pub fn load(config_path: &Path) -> Result<Settings, SettingsError> {
    let text = read(config_path)?;
    let parsed =
        AgentConfig::parse(&text).map_err(|source| SettingsError::Parse { path: config_path.to_path_buf(), source })?;
    let export = export_settings(&parsed.config)?;
    Ok(Settings { config: parsed.config, export, unknown_fields: parsed.unknown_fields })
}

pub fn export_settings(config: &AgentConfig) -> Result<ExportSettings, SettingsError> {
    let c = &config.collector;
    let api_key = match (&c.api_key_header, &c.api_key_file) {
        (Some(name), Some(file)) => Some(api_key_header(name, Path::new(file))?),
        (None, None) => None,
        _ => return Err(SettingsError::HalfApiKey),
    };
    let ca_pem = match &c.ca_file {
        Some(file) => Some(ca_bundle(Path::new(file))?),
        None => None,
    };
    Ok(ExportSettings {
        endpoint: endpoint_uri(&c.endpoint, c.protocol)?,
        protocol: c.protocol,
        gzip: c.compression == Compression::Gzip,
        api_key,
        ca_pem,
        insecure_skip_verify: c.insecure_skip_verify,
    })
}

fn api_key_header(name: &str, file: &Path) -> Result<SecretHeader, SettingsError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| SettingsError::HeaderName(name.to_string()))?;
    let raw = read(file)?;
    // Secrets are often written with a trailing newline.
    let trimmed = raw.trim_ascii();
    let mut value = HeaderValue::from_bytes(trimmed).map_err(|_| SettingsError::HeaderValue(file.to_path_buf()))?;
    value.set_sensitive(true);
    Ok(SecretHeader { name, value })
}

fn ca_bundle(file: &Path) -> Result<Vec<u8>, SettingsError> {
    let pem = read(file)?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SettingsError::EmptyCa(file.to_path_buf()));
    }
    Ok(pem)
}

/// The URL exported to: OTLP/HTTP gets `/v1/traces` appended to a base URL (as the SDKs do
/// with `OTEL_EXPORTER_OTLP_ENDPOINT`); gRPC uses the URL as given.
pub fn endpoint_uri(endpoint: &str, protocol: CollectorProtocol) -> Result<Uri, SettingsError> {
    let bad = |reason: &str| SettingsError::Endpoint { endpoint: endpoint.to_string(), reason: reason.to_string() };
    let uri: Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if protocol == CollectorProtocol::Grpc {
        return Ok(uri);
    }
    let path = uri.path().trim_end_matches('/');
    if path.ends_with("/v1/traces") {
        return Ok(uri);
    }
    let full = format!(
        "{}://{}{}/v1/traces",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        path
    );
    full.parse().map_err(|_| bad("cannot append /v1/traces"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write test file");
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tracelight-settings-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    #[test]
    fn http_endpoints_get_the_traces_path() {
        let u = endpoint_uri("http://c:4318", CollectorProtocol::HttpProtobuf).expect("ok");
        assert_eq!(u.to_string(), "http://c:4318/v1/traces");
        let u = endpoint_uri("https://api.example.com/otlp/", CollectorProtocol::HttpProtobuf).expect("ok");
        assert_eq!(u.to_string(), "https://api.example.com/otlp/v1/traces");
        let u = endpoint_uri("http://c:4318/v1/traces", CollectorProtocol::HttpProtobuf).expect("ok");
        assert_eq!(u.path(), "/v1/traces");
        assert_eq!(endpoint_uri("http://c:4317", CollectorProtocol::Grpc).expect("ok").to_string(), "http://c:4317/");
        assert!(endpoint_uri("grpc://c:4317", CollectorProtocol::Grpc).is_err());
        assert!(endpoint_uri("c:4317", CollectorProtocol::Grpc).is_err());
    }

    #[test]
    fn loads_config_with_api_key_and_redacts_it() {
        let d = tempdir("key");
        let key = write(&d, "api-key", "s3cr3t\n");
        let cfg = write(
            &d,
            "config.yaml",
            &format!(
                "generation: 3\npolicy: default\ncollector:\n  endpoint: http://c:4318\n  protocol: http/protobuf\n  compression: gzip\n  apiKeyHeader: x-api-key\n  apiKeyFile: {}\nsampling:\n  ratio: 0.5\n",
                key.display()
            ),
        );
        let s = load(&cfg).expect("valid");
        assert_eq!(s.config.generation, 3);
        let h = s.export.api_key.as_ref().expect("api key");
        assert_eq!(h.value, "s3cr3t");
        assert!(!format!("{:?}", s).contains("s3cr3t"));
    }

    #[test]
    fn invalid_configs_are_errors() {
        let d = tempdir("bad");
        let bad_ratio = write(&d, "r.yaml", "generation: 1\npolicy: p\ncollector: {endpoint: 'http://c', protocol: grpc, compression: none}\nsampling: {ratio: 2}\n");
        assert!(matches!(load(&bad_ratio), Err(SettingsError::Parse { .. })));
        let missing_key = write(&d, "k.yaml", "generation: 1\npolicy: p\ncollector: {endpoint: 'http://c', protocol: grpc, compression: none, apiKeyHeader: x, apiKeyFile: /nonexistent/key}\nsampling: {ratio: 1}\n");
        assert!(matches!(load(&missing_key), Err(SettingsError::Read { .. })));
        assert!(matches!(load(&d.join("absent.yaml")), Err(SettingsError::Read { .. })));
    }
}
