//! Reports reach the leader, whichever replica receives them.
//!
//! Every replica serves the report endpoint behind one Service, so an agent's report lands on any
//! of them, while only the leader's controllers turn reports into coverage. A replica that does
//! not lead accepts the report (reviewed and checked as always, and kept in its own store), then
//! replays the agent's request — the same body and the same bearer token — to the leader's report
//! endpoint. The leader reviews the token again (its review cache makes that one TokenReview per
//! token per ten minutes), so a replica cannot vouch for a report and no secret is shared between
//! replicas: a compromised follower can forward only what an agent signed.
//!
//! Where the leader is: its Lease carries the annotation [`REPORT_ADDRESS_ANNOTATION`] (the pod
//! IP and webhook port, from `--advertise-address` or `POD_IP`), and every replica reads the Lease
//! every few seconds for the election anyway ([`crate::controller::lease`]). The connection
//! trusts only the operator's serving CA and checks the certificate for the webhook Service's DNS
//! name, which every replica's certificate carries.
//!
//! A forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again (no loops while
//! leadership moves). Forwarding is best effort: at most [`MAX_IN_FLIGHT`] at once, each bounded
//! by [`FORWARD_TIMEOUT`]; a report that cannot be forwarded is counted
//! (`tracelight_agent_reports_forwarded_total{result}`) and the agent's next push (every 30 s)
//! tries again. The agent is answered at once, whatever the forward does.

use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tracelight_contract::report::REPORT_PATH;

/// Annotation of the leader's Lease: `host:port` of its report endpoint.
pub const REPORT_ADDRESS_ANNOTATION: &str = "tracelight.io/report-address";
/// Marks a request one replica forwarded to another.
pub const FORWARDED_HEADER: &str = "x-tracelight-forwarded";
/// Forwards in flight at once; beyond, reports are kept locally only (counted as `dropped`).
pub const MAX_IN_FLIGHT: usize = 64;
/// Connect, handshake and answer, together.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no serving CA known yet")]
    NoCa,
    #[error("the serving CA bundle is unusable: {0}")]
    Ca(String),
    #[error("connecting to the leader at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP to the leader: {0}")]
    Http(#[from] hyper::Error),
    #[error("the leader answered {0}")]
    Status(hyper::StatusCode),
    #[error("timed out after {FORWARD_TIMEOUT:?}")]
    Timeout,
}

/// Sends reports on to the leader; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    /// The leader's report address while another replica leads; `None` while this one leads or
    /// no leader is known.
    leader: watch::Receiver<Option<String>>,
    ca: Arc<crate::webhook::certs::CertResolver>,
    /// DNS name checked in the leader's certificate: the webhook Service's.
    server_name: ServerName<'static>,
    in_flight: Arc<Semaphore>,
    /// The TLS client for the CA bundle it was built from.
    tls: Arc<Mutex<Option<(String, tokio_rustls::TlsConnector)>>>,
    results: Family<Vec<(String, String)>, Counter>,
}

impl Forwarder {
    pub fn new(
        leader: watch::Receiver<Option<String>>,
        ca: Arc<crate::webhook::certs::CertResolver>,
        service_dns_name: &str,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Forwarder, ForwardError> {
        let server_name =
            ServerName::try_from(service_dns_name.to_string()).map_err(|e| ForwardError::Ca(e.to_string()))?;
        let results = Family::default();
        metrics.register(
            "tracelight_agent_reports_forwarded",
            "Agent reports forwarded to the leading replica, by result",
            results.clone(),
        );
        Ok(Forwarder {
            leader,
            ca,
            server_name,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            tls: Arc::default(),
            results,
        })
    }

    /// Where reports go now: `None` while this replica leads (or no leader is known).
    pub fn leader(&self) -> Option<String> {
        self.leader.borrow().clone()
    }

    fn count(&self, result: &str) {
        self.results.get_or_create(&vec![("result".to_string(), result.to_string())]).inc();
    }

    /// Replays the agent's report to the leader in the background, if another replica leads.
    pub fn spawn(&self, authorization: hyper::header::HeaderValue, body: Bytes) {
        let Some(addr) = self.leader() else { return };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.count("dropped");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(FORWARD_TIMEOUT, this.forward(&addr, authorization, body)).await {
                Ok(Ok(())) => this.count("forwarded"),
                Ok(Err(e)) => {
                    this.count("failed");
                    tracing::debug!(leader = %addr, error = %e, "could not forward an agent report");
                }
                Err(_) => {
                    this.count("failed");
                    tracing::debug!(leader = %addr, error = %ForwardError::Timeout, "could not forward an agent report");
                }
            }
        });
    }

    fn connector(&self) -> Result<tokio_rustls::TlsConnector, ForwardError> {
        let bundle = self.ca.ca_bundle().ok_or(ForwardError::NoCa)?;
        let mut cached = self.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((pem, connector)) = cached.as_ref() {
            if *pem == bundle {
                return Ok(connector.clone());
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            let cert = cert.map_err(|e| ForwardError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| ForwardError::Ca(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ForwardError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        *cached = Some((bundle, connector.clone()));
        Ok(connector)
    }

    async fn forward(
        &self,
        addr: &str,
        authorization: hyper::header::HeaderValue,
        body: Bytes,
    ) -> Result<(), ForwardError> {
        let connector = self.connector()?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ForwardError::Connect { addr: addr.to_string(), source })?;
        let tls = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ForwardError::Connect { addr: addr.to_string(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::post(REPORT_PATH)
            .header(hyper::header::HOST, self.server_name.to_str().as_ref())
            .header(hyper::header::AUTHORIZATION, authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, "1")
            .body(axum::body::Body::from(body))
            .expect("a request from valid parts");
        let response = sender.send_request(request).await?;
        let status = response.status();
        // The leader's answer is short (204, or an error line); at most 4 KiB is read.
        let _ = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 4096).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(ForwardError::Status(status))
        }
    }
}
