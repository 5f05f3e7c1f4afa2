//! What the webhook port actually serves, seen by a TLS client that trusts only the CA bundle
//! published in the MutatingWebhookConfiguration (as the API server does).

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// The serving certificate seen in one handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
    pub not_after: String,
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "serial {} (sha256 {}…, notAfter {})", self.serial, &self.fingerprint[..16], self.not_after)
    }
}

/// Connects to `127.0.0.1:port` with server name `127.0.0.1`, verifying the chain against
/// `ca_bundle_pem` only, and returns the certificate the server presented.
pub async fn served_certificate(port: u16, ca_bundle_pem: &[u8]) -> anyhow::Result<Served> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle_pem) {
        roots.add(cert.context("parsing the CA bundle")?).context("adding a CA of the bundle")?;
    }
    anyhow::ensure!(!roots.is_empty(), "the CA bundle holds no certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        anyhow::Ok(connector.connect(name, tcp).await?)
    };
    let stream = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake with the webhook (trusting only the published CA bundle)")?;
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).context("no peer certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).context("parsing the served certificate")?;
    Ok(Served {
        serial: cert.raw_serial_as_string(),
        fingerprint: Sha256::digest(leaf.as_ref()).iter().map(|b| format!("{b:02x}")).collect(),
        not_after: cert.validity().not_after.to_string(),
    })
}

/// POSTs `body` to `path` on `127.0.0.1:port` over a new TLS connection (server name
/// `127.0.0.1`, trusting only `ca_bundle_pem`) with a bearer token, as an agent pushes its
/// report; returns the HTTP status.
pub async fn post_with_token(
    port: u16,
    ca_bundle_pem: &[u8],
    path: &str,
    token: &str,
    body: &[u8],
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle_pem) {
        roots.add(cert.context("parsing the CA bundle")?).context("adding a CA of the bundle")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut tls = connector.connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        let mut response = Vec::new();
        // A server closing without close_notify is fine once the status line is in.
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        status.with_context(|| format!("not an HTTP response: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.context("the POST timed out")?
}
