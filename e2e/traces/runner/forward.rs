//! A Service's virtual IP, as kube-proxy provides it: connections to `listen` (on the pods'
//! bridge) are forwarded to `target` (a process on the host's loopback, like the operator). The
//! pods reach `tracelight-webhook.tracelight-system.svc:443` this way, as they would in a cluster.

use anyhow::Context as _;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards until dropped.
pub struct Forwarder {
    task: JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Forwarder> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding the forwarder to {listen}"))?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Forwarder { task })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
