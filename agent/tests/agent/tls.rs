//! Export over TLS: custom CA (HTTP and gRPC), insecureSkipVerify, and a CA fixed live.

use crate::support::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// A CA and a leaf for 127.0.0.1 signed by it: (CA PEM, leaf chain, leaf key).
fn pki() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tracelight test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (ca.pem(), vec![leaf.der().clone()], PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into())
}

/// Serve `svc` over TLS (HTTP/1.1 and h2) on a random loopback port.
async fn serve_tls<S, B>(svc: S, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> SocketAddr
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, svc) = (acceptor.clone(), svc.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    addr
}

async fn send(agent: &tracelight_agent::RunningAgent, spans: usize) {
    let url = format!("http://{}/v1/traces", agent.http_addr);
    let (status, _, _) =
        post(&url, &[("content-type", "application/x-protobuf")], request(spans, "svc").encode_to_vec()).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_with_custom_ca_fixed_live() {
    let (ca_pem, chain, key) = pki();
    let collector = Arc::new(FakeCollector::default());
    let addr = serve_tls(fake_router(collector.clone()), chain, key).await;
    let dir = temp_dir("tls-http");
    let cfg = dir.join("config.yaml");
    // System roots do not know the test CA: export fails (retried), nothing is lost.
    write_atomic(&cfg, &config_yaml(1, &format!("https://{addr}"), "http/protobuf", 1.0, ""));
    let agent = agent(&cfg).await;
    send(&agent, 5).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(collector.spans(), 0);
    // The CA arrives with a config change: the queued spans go through.
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, &ca_pem).expect("ca");
    write_atomic(
        &cfg,
        &config_yaml(2, &format!("https://{addr}"), "http/protobuf", 1.0, &format!("  caFile: {}\n", ca.display())),
    );
    assert!(wait_until(Duration::from_secs(10), || collector.spans() == 5).await, "got {}", collector.spans());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_with_insecure_skip_verify() {
    let (_, chain, key) = pki();
    let collector = Arc::new(FakeCollector::default());
    let addr = serve_tls(fake_router(collector.clone()), chain, key).await;
    let dir = temp_dir("tls-skip");
    let cfg = dir.join("config.yaml");
    write_atomic(
        &cfg,
        &config_yaml(1, &format!("https://{addr}"), "http/protobuf", 1.0, "  insecureSkipVerify: true\n"),
    );
    let agent = agent(&cfg).await;
    send(&agent, 3).await;
    assert!(wait_until(Duration::from_secs(10), || collector.spans() == 3).await);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_with_custom_ca() {
    use tracelight_agent::admission::Admission;
    use tracelight_agent::receiver_grpc::{service, GrpcReceiver};
    let (ca_pem, chain, key) = pki();
    let sink = sink().await;
    let receiver = GrpcReceiver { pipeline: sink.shared.pipeline.clone(), admission: Admission::new(1 << 20) };
    let addr = serve_tls(service(receiver, 4 << 20), chain, key).await;
    let dir = temp_dir("tls-grpc");
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, &ca_pem).expect("ca");
    let cfg = dir.join("config.yaml");
    write_atomic(
        &cfg,
        &config_yaml(1, &format!("https://{addr}"), "grpc", 1.0, &format!("  caFile: {}\n", ca.display())),
    );
    let agent = agent(&cfg).await;
    send(&agent, 4).await;
    assert_eq!(collect(&sink, 4, Duration::from_secs(10)).await.len(), 4);
    agent.shutdown().await;
    sink.shutdown().await;
}
