//! The collector connection: plain TCP for `http://` endpoints, else rustls (ring provider) with
//! the system roots or a custom CA bundle, and an opt-in "skip verification" for test collectors.

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid CA bundle: {0}")]
    Ca(String),
    #[error("no usable root certificates")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How the exporters connect to the collector.
#[derive(Clone)]
pub enum Connector {
    /// A plain `http://` endpoint: TCP only. It never makes a TLS handshake, so no TLS
    /// configuration is built: loading the system's CA bundle (and running rustls' set-up code)
    /// would cost an idle agent memory for nothing.
    Plain(HttpConnector),
    /// `https://`, or a custom CA (parsed, so a bad one is rejected whatever the scheme).
    Tls(HttpsConnector<HttpConnector>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Connector {
    /// `offer_http1`: offer HTTP/1.1 besides HTTP/2 in the TLS handshake (OTLP/HTTP); gRPC
    /// offers HTTP/2 only.
    pub fn new(
        endpoint: &Uri,
        ca_pem: Option<&[u8]>,
        insecure_skip_verify: bool,
        offer_http1: bool,
    ) -> Result<Connector, TlsError> {
        if endpoint.scheme() != Some(&http::uri::Scheme::HTTPS) && ca_pem.is_none() {
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            return Ok(Connector::Plain(tcp));
        }
        let tls = client_config(ca_pem, insecure_skip_verify)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        Ok(Connector::Tls(if offer_http1 {
            builder.enable_http1().enable_http2().build()
        } else {
            builder.enable_http2().build()
        }))
    }
}

impl tower::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Plain(c) => c.poll_ready(cx).map_err(Into::into),
            Connector::Tls(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self {
            Connector::Plain(c) => {
                let connecting = c.call(uri);
                Box::pin(async move { Ok(MaybeHttpsStream::Http(connecting.await?)) })
            }
            Connector::Tls(c) => c.call(uri),
        }
    }
}

pub fn client_config(ca_pem: Option<&[u8]>, insecure_skip_verify: bool) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let config = if insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(SkipVerify(provider))).with_no_client_auth()
    } else {
        builder.with_root_certificates(roots(ca_pem)?).with_no_client_auth()
    };
    Ok(config)
}

fn roots(ca_pem: Option<&[u8]>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| TlsError::Ca(e.to_string()))?;
                store.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
            }
        }
        None => {
            // Unreadable system certs are skipped: a missing root shows up as a handshake error.
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(store)
}

/// Accepts any server certificate (signatures are still checked): `insecureSkipVerify`.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ca_is_parsed_and_garbage_is_rejected() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["collector".into()]).expect("params").self_signed(&key).expect("cert");
        assert!(client_config(Some(cert.pem().as_bytes()), false).is_ok());
        let garbage = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n";
        assert!(client_config(Some(garbage), false).is_err());
        assert!(client_config(None, true).is_ok());
    }

    #[test]
    fn plain_http_endpoints_build_no_tls() {
        let http: Uri = "http://collector:4317".parse().expect("uri");
        let https: Uri = "https://collector:4317".parse().expect("uri");
        assert!(matches!(Connector::new(&http, None, false, false), Ok(Connector::Plain(_))));
        assert!(matches!(Connector::new(&https, None, true, true), Ok(Connector::Tls(_))));
        // A configured CA is still checked on an http:// endpoint.
        let garbage = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n";
        assert!(Connector::new(&http, Some(garbage), false, false).is_err());
    }
}
