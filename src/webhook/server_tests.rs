use super::*;
use crate::inject::InjectOptions;
use crate::webhook::certs::{plan, KeyPairPem, LeafSpec, TlsMaterial};
use crate::webhook::handler::{self, AdmissionState};
use crate::webhook::metrics::AdmissionMetrics;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

fn material() -> TlsMaterial {
    let spec = LeafSpec::for_service("tracelight-webhook", "tracelight-system", &["127.0.0.1".into()], HOUR);
    plan(None, &spec, time::OffsetDateTime::now_utc()).unwrap().unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

fn admission_state() -> AdmissionState {
    AdmissionState {
        view: ClusterView::from_objects(vec![], vec![]),
        options: Arc::new(InjectOptions::default()),
        metrics: AdmissionMetrics::unregistered(),
    }
}

fn client_trusting(cas: &[&KeyPairPem]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A resumed session would skip the certificate exchange we want to observe.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// Sends one HTTP/1.1 request and returns the status code and body.
async fn exchange(mut io: impl AsyncRead + AsyncWrite + Unpin, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading the whole body; a failed write is fine then.
    let _ = io.write_all(body).await;
    let mut response = Vec::new();
    let _ = io.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Opens a TLS connection, returns the leaf certificate the server presented and the response.
async fn https_request(
    addr: SocketAddr,
    connector: &TlsConnector,
    body: &[u8],
) -> (CertificateDer<'static>, u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(server_name, tcp).await.expect("TLS handshake with the served certificate");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let (status, body) = exchange(tls, "POST", handler::MUTATE_PODS_PATH, body).await;
    (presented, status, body)
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn https_server_serves_a_swapped_certificate_without_restart() {
    let (first, second) = (material(), material());
    let resolver = Arc::new(CertResolver::new());
    resolver.set(&first.leaf).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_https(
        listener,
        tls_config(resolver.clone()).unwrap(),
        handler::router(admission_state()),
        shutdown.clone(),
    ));
    let connector = client_trusting(&[&first.ca, &second.ca]);

    let (presented, status, body) = https_request(addr, &connector, b"{not json").await;
    assert_eq!(presented, der(&first.leaf.cert));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a valid admission.k8s.io/v1 AdmissionReview"), "{body}");

    resolver.set(&second.leaf).unwrap();
    let (presented, status, _) = https_request(addr, &connector, b"{}").await;
    assert_eq!(presented, der(&second.leaf.cert), "the next connection gets the new certificate");
    assert_eq!(status, 400);

    // A client that trusts only the first CA now fails the handshake.
    let old_client = client_trusting(&[&first.ca]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(old_client.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.is_err());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops on shutdown").unwrap();
}

#[tokio::test]
async fn oversized_admission_body_gets_413() {
    let tls = material();
    let resolver = Arc::new(CertResolver::new());
    resolver.set(&tls.leaf).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let app = handler::router(admission_state());
    tokio::spawn(serve_https(listener, tls_config(resolver).unwrap(), app, shutdown.clone()));
    let body = vec![b' '; handler::MAX_BODY_BYTES + 1];
    let (_, status, _) = https_request(addr, &client_trusting(&[&tls.ca]), &body).await;
    assert_eq!(status, 413);
    shutdown.cancel();
}

#[tokio::test]
async fn admin_server_reports_readiness_liveness_and_metrics() {
    let registry = Metrics::new();
    let admission = AdmissionMetrics::register(&registry);
    admission.record(crate::webhook::metrics::AdmissionResult::Injected, "none", Duration::from_micros(80));
    let resolver = Arc::new(CertResolver::new());
    let state =
        AdminState { metrics: registry, view: ClusterView::from_objects(vec![], vec![]), resolver: resolver.clone() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_admin(listener, admin_router(state), shutdown.clone()));
    let get =
        |path: &'static str| async move { exchange(TcpStream::connect(addr).await.unwrap(), "GET", path, b"").await };

    assert_eq!(get("/livez").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!((status, body.as_str()), (503, "no serving certificate loaded yet"));
    resolver.set(&material().leaf).unwrap();
    assert_eq!(get("/readyz").await.0, 200);
    let (status, body) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"tracelight_admissions_total{result="injected",reason="none"} 1"#), "{body}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

/// An HTTPS server with the admission router and `limits`; its address, CA and shutdown token.
async fn limited_server(limits: ServerLimits) -> (SocketAddr, TlsMaterial, CancellationToken) {
    let tls = material();
    let resolver = Arc::new(CertResolver::new());
    resolver.set(&tls.leaf).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let app = handler::router(admission_state());
    tokio::spawn(serve_https_with(listener, tls_config(resolver).unwrap(), app, limits, shutdown.clone()));
    (addr, tls, shutdown)
}

async fn tls_connect(addr: SocketAddr, connector: &TlsConnector) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
}

/// Reads until the server closes the connection; what it sent.
async fn until_closed(io: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<String> {
    let mut response = Vec::new();
    tokio::time::timeout(within, io.read_to_end(&mut response))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test]
async fn a_client_sending_its_headers_slowly_is_cut_off() {
    let limits = ServerLimits { idle_timeout: Duration::from_secs(1), ..ServerLimits::default() };
    let (addr, tls, shutdown) = limited_server(limits).await;
    let mut slow = tls_connect(addr, &client_trusting(&[&tls.ca])).await;
    let started = std::time::Instant::now();
    slow.write_all(b"POST /mutate-pods HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // One header byte every 200 ms, never the blank line.
    let drip = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drip).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "the slow client was still connected after {elapsed:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn an_unfinished_body_is_answered_408_and_closed() {
    let limits = ServerLimits { request_timeout: Duration::from_secs(1), ..ServerLimits::default() };
    let (addr, tls, shutdown) = limited_server(limits).await;
    let mut io = tls_connect(addr, &client_trusting(&[&tls.ca])).await;
    let head =
        "POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    io.write_all(head.as_bytes()).await.unwrap();
    io.write_all(b"{\"apiVersion\":").await.unwrap();
    let response = until_closed(&mut io, Duration::from_secs(5)).await.expect("the server never gave up on the body");
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_connection_flood_is_refused_and_an_admission_review_still_answers() {
    let limits =
        ServerLimits { max_connections: 64, handshake_timeout: Duration::from_secs(1), ..ServerLimits::default() };
    let (addr, tls, shutdown) = limited_server(limits).await;
    // 300 connections that never start TLS, all held open by the client.
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    // The server keeps at most 64: the others are closed at once (EOF), holding no descriptor.
    let mut closed = 0;
    for stream in &mut flood {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert!(closed >= 300 - 64, "only {closed} of 300 flood connections were closed");
    // Those held time out in the handshake; then a review is answered although the flood's
    // sockets are still open on the client's side.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, status, body) = https_request(addr, &client_trusting(&[&tls.ca]), b"{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("AdmissionReview"), "the handler answered: {body}");
    drop(flood);
    shutdown.cancel();
}

#[test]
fn only_http1_is_offered() {
    let config = tls_config(Arc::new(CertResolver::new())).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()], "no h2: no stream multiplexing to bound");
}

#[tokio::test]
async fn a_body_declared_too_large_is_refused_before_it_is_sent() {
    let (addr, tls, shutdown) = limited_server(ServerLimits::default()).await;
    let mut io = tls_connect(addr, &client_trusting(&[&tls.ca])).await;
    let head = format!(
        "POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        handler::MAX_BODY_BYTES + 1
    );
    io.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), io.read(&mut response))
        .await
        .expect("answered from the Content-Length, without waiting for the body")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    shutdown.cancel();
}
