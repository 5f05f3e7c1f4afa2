//! The webhook alone (no controllers) against a real API server: certificate bootstrap through
//! the Secret, CA bundle publication, the API server calling the webhook, and rotation of the
//! serving certificate and then of the CA without a restart.
//!
//! Ignored by default: `TRACELIGHT_LIVE_KUBECONFIG=<admin kubeconfig> cargo test --lib -- --ignored live_`
//! (e.g. `~/.cache/tracelight/cluster/kubeconfig` after `make cluster-up`). Everything it creates
//! has a unique name, is confined to its own namespace, and is deleted at the end.

use super::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::time::{Duration as StdDuration, Instant};

async fn client() -> kube::Client {
    let path = std::env::var("TRACELIGHT_LIVE_KUBECONFIG").expect("TRACELIGHT_LIVE_KUBECONFIG");
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` every 500ms until it returns `Some`, or panics after `timeout`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, timeout: u64, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + StdDuration::from_secs(timeout);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout}s waiting for {what}");
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
}

async fn published_bundle(client: &kube::Client, name: &str) -> Option<String> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(name).await.ok()?;
    let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
    String::from_utf8(bundle.0).ok()
}

/// The leaf certificate served on `port`, verified against `bundle`.
async fn served(port: u16, bundle: &str) -> Option<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(ca.ok()?).ok()?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.clone().into_owned())
}

/// Creates a pod; with `failurePolicy: Fail` this only succeeds if the API server reached the webhook.
async fn create_pod(client: &kube::Client, namespace: &str, name: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "automountServiceAccountToken": false, "containers": [{ "name": "app", "image": "example/app:1" }] },
    }))
    .unwrap();
    let mut last_error = String::new();
    for _ in 0..20 {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => return,
            // The namespace's default ServiceAccount may not exist yet.
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
    panic!("creating pod {name} failed: {last_error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: set TRACELIGHT_LIVE_KUBECONFIG"]
async fn live_certificates_bootstrap_publish_and_rotate_without_restart() {
    let client = client().await;
    let id = format!("tl-webhook-live-{}", std::process::id());
    let port = free_port();
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": id, "labels": { "tl-webhook-live": id } } })).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": { "name": id },
        "webhooks": [{
            "name": "pods.live.tracelight.io",
            "clientConfig": { "url": format!("https://127.0.0.1:{port}/mutate-pods") },
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"] }],
            "namespaceSelector": { "matchLabels": { "tl-webhook-live": id } },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }))
    .unwrap();
    configs.create(&PostParams::default(), &config).await.unwrap();

    let args = WebhookArgs {
        webhook_addr: ([127, 0, 0, 1], port).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        cert_mode: CertMode::SelfSigned,
        cert_dir: PathBuf::new(),
        cert_secret: id.clone(),
        webhook_config: id.clone(),
        service_name: "tracelight-webhook".into(),
        extra_sans: vec!["127.0.0.1".into()],
        cert_validity: Duration::from_secs(60),
        cert_check_interval: Duration::from_secs(2),
        native_sidecar: true,
        namespace: id.clone(),
        agent_reports: true,
        agent_report_url: None,
        agent_report_interval: None,
        agent_image: crate::inject::shipped_agent_image(),
        instrumentation_images: Vec::new(),
        agent_admin_exposure: Default::default(),
        agent_host_port_range: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let resolver = Arc::new(CertResolver::new());
    let (view, view_driver) = crate::cluster_view::ClusterView::watch(client.clone());
    let view_task = tokio::spawn(view_driver);
    let server = tokio::spawn(run(
        args,
        crate::cluster_view::Cluster { client: client.clone(), view },
        Metrics::new(),
        reports::ReportStore::default(),
        tokio::sync::watch::channel(None).1,
        resolver.clone(),
        shutdown.clone(),
    ));

    let bundle = until("the CA bundle", 30, || published_bundle(&client, &id)).await;
    assert_eq!(resolver.ca_bundle().as_deref(), Some(bundle.as_str()), "the agents get the published CA");
    let first = until("the served certificate", 30, || served(port, &bundle)).await;
    create_pod(&client, &id, "before-rotation").await;

    // Leaf lifetime 66s (6s back-dated), renewed when < 22s remain: ~44s after issuance.
    let second = until("a renewed serving certificate", 75, || async {
        let bundle = published_bundle(&client, &id).await?;
        served(port, &bundle).await.filter(|c| *c != first)
    })
    .await;
    create_pod(&client, &id, "after-leaf-rotation").await;

    // CA lifetime 264s, renewed when < 88s remain: ~176s after issuance; old CA stays in the bundle.
    let secrets = Api::<Secret>::namespaced(client.clone(), &id);
    until("a renewed CA", 200, || async {
        let secret = secrets.get(&id).await.ok()?;
        secret.data?.contains_key("ca-previous.crt").then_some(())
    })
    .await;
    let bundle = until("a bundle with two CAs", 30, || async {
        let bundle = published_bundle(&client, &id).await?;
        (bundle.matches("BEGIN CERTIFICATE").count() == 2).then_some(bundle)
    })
    .await;
    let third = until("a certificate from the new CA", 30, || served(port, &bundle)).await;
    assert_ne!(third, second);
    create_pod(&client, &id, "after-ca-rotation").await;

    shutdown.cancel();
    tokio::time::timeout(StdDuration::from_secs(15), server).await.unwrap().unwrap().unwrap();
    view_task.abort();
    configs.delete(&id, &DeleteParams::default()).await.unwrap();
    namespaces.delete(&id, &DeleteParams::default()).await.unwrap();
}
