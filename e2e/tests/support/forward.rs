//! A TCP forwarder on one loopback port in front of several backends: what a Service does for
//! the replicas of a Deployment, so the API server's webhook calls reach whichever operator
//! replica is up. Connections go round-robin; a backend that refuses is skipped.

use anyhow::Context as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running forwarder. Dropping it stops accepting; [`Forwarder::stop`] also waits for the port
/// to be free again.
pub struct Forwarder {
    accept: JoinHandle<()>,
    /// Connections forwarded to each backend, in the order given.
    forwarded: Arc<Vec<AtomicUsize>>,
}

impl Forwarder {
    /// Listens on 127.0.0.1:`port` and forwards each connection to one of `backends` (ports).
    pub async fn start(port: u16, backends: Vec<u16>) -> anyhow::Result<Forwarder> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding the forwarder on 127.0.0.1:{port}"))?;
        let forwarded: Arc<Vec<AtomicUsize>> = Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = forwarded.clone();
        let next = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (backends, counts, next) = (backends.clone(), counts.clone(), next.clone());
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let index = (first + i) % backends.len();
                        let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", backends[index])).await else {
                            continue;
                        };
                        counts[index].fetch_add(1, Ordering::Relaxed);
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    // No backend up: the client sees the connection close, as with no endpoint.
                });
            }
        });
        Ok(Forwarder { accept, forwarded })
    }

    /// Connections forwarded so far to the backend at `index`.
    pub fn forwarded(&self, index: usize) -> usize {
        self.forwarded.get(index).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Stops accepting and closes the listening port (open connections are cut off).
    pub async fn stop(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
