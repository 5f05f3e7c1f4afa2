//! Export: take batches from the queue, send them to the collector (a few requests in flight),
//! retry what is retryable, count everything. The client is swapped live when the config
//! changes; a batch that failed with a retryable error goes back to the head of the queue, so
//! nothing is lost while the queue has room.

pub mod grpc;
pub mod gzip;
pub mod http;
pub mod retry;
pub mod tls;

use super::metrics::{DropReason, Metrics, Outcome, OutcomeLabel};
use super::queue::{Batch, Queue};
use super::settings::ExportSettings;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use retry::{Backoff, ExportError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracelight_contract::CollectorProtocol;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("API key header is not valid gRPC metadata")]
    Header,
}

/// What the collector accepted: the spans it rejected in a partial success.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    pub rejected: u64,
    pub message: String,
}

impl Accepted {
    pub fn from_response(resp: &ExportTraceServiceResponse) -> Accepted {
        resp.partial_success
            .as_ref()
            .map(|p| Accepted { rejected: p.rejected_spans.max(0) as u64, message: p.error_message.clone() })
            .unwrap_or_default()
    }
}

/// A client for the configured collector.
pub enum Client {
    Http(Box<http::HttpExporter>),
    Grpc(Box<grpc::GrpcExporter>),
}

impl Client {
    pub fn build(s: &ExportSettings, timeout: Duration) -> Result<Client, BuildError> {
        Ok(match s.protocol {
            CollectorProtocol::HttpProtobuf => Client::Http(Box::new(http::HttpExporter::new(s, timeout)?)),
            CollectorProtocol::Grpc => Client::Grpc(Box::new(grpc::GrpcExporter::new(s, timeout)?)),
        })
    }

    pub async fn export(&self, batch: &Batch) -> Result<Accepted, ExportError> {
        match self {
            Client::Http(c) => c.export(batch).await,
            Client::Grpc(c) => c.export(batch).await,
        }
    }
}

/// Batching and shutdown knobs.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    pub batch_bytes: usize,
    /// Largest request sent: a larger batch (one large incoming request) is split. Under gRPC's
    /// default 4 MiB receive limit by default.
    pub max_message_bytes: usize,
    pub linger: Duration,
    pub backoff: Backoff,
    pub shutdown_deadline: Duration,
    /// Export requests in flight at once: a collector's round trip does not cap throughput.
    pub max_in_flight: usize,
}

pub struct ExportLoop {
    pub queue: Arc<Queue>,
    /// When the flush after `stop` must end; set before `stop` by a shutdown that has already
    /// spent part of its time draining the receivers. Unset: `shutdown_deadline` after `stop`.
    pub flush_by: Arc<std::sync::OnceLock<Instant>>,
    pub metrics: Arc<Metrics>,
    /// `None` until a valid config has been loaded.
    pub clients: watch::Receiver<Option<Arc<Client>>>,
    pub options: LoopOptions,
}

enum Sent {
    Done,
    Retry(Option<Duration>),
}

/// What one export task needs: the queue to requeue into and the counters.
struct Sender {
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// Send one batch and account for it; a retryable failure requeues it.
    #[tracing::instrument(level = "debug", skip_all, fields(spans = batch.spans, bytes = batch.bytes))]
    async fn send(&self, client: &Client, batch: Batch) -> Sent {
        let started = Instant::now();
        let result = client.export(&batch).await;
        // A collector that answers (even a refusal) is no outage: receivers pace to it.
        self.queue.set_exporting(!matches!(result, Err(ExportError::Retryable { .. })));
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(ExportError::Retryable { .. }) => Outcome::Retryable,
            Err(ExportError::Permanent { .. }) => Outcome::Permanent,
        };
        self.metrics.export_duration.get_or_create(&OutcomeLabel { outcome }).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(accepted) => {
                let rejected = accepted.rejected.min(batch.spans as u64);
                if rejected > 0 {
                    tracing::warn!(rejected, message = %accepted.message, "collector rejected part of a batch");
                }
                self.metrics.exported.inc_by(batch.spans as u64 - rejected);
                self.metrics.drop_spans(DropReason::ExportRejected, rejected as usize);
                Sent::Done
            }
            Err(ExportError::Permanent { reason }) => {
                tracing::warn!(%reason, spans = batch.spans, "collector refused a batch; dropping it");
                self.metrics.drop_spans(DropReason::ExportRejected, batch.spans);
                Sent::Done
            }
            Err(ExportError::Retryable { reason, retry_after }) => {
                tracing::info!(%reason, ?retry_after, spans = batch.spans, "export failed; will retry");
                self.queue.requeue(batch);
                Sent::Retry(retry_after)
            }
        }
    }
}

impl ExportLoop {
    /// Run until `stop`, then flush what is queued within the shutdown deadline.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut attempt = 0u32;
        let mut in_flight: JoinSet<Sent> = JoinSet::new();
        // Spans in batches being sent: counted as dropped if shutdown has to abandon them.
        let flying = Arc::new(AtomicUsize::new(0));
        let max_in_flight = self.options.max_in_flight.max(1);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let Ok(Sent::Retry(hint)) = done else {
                        attempt = 0;
                        continue;
                    };
                    // The batch is back at the head of the queue; pause new sends.
                    let delay = self.options.backoff.delay(attempt, hint, fastrand::f64());
                    attempt = attempt.saturating_add(1);
                    tracing::debug!(?delay, attempt, "export backoff");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                        // A new endpoint or key may fix it: try at once.
                        _ = self.clients.changed() => attempt = 0,
                    }
                    continue;
                }
                _ = self.queue.wait_batch(self.options.batch_bytes, self.options.linger),
                    if in_flight.len() < max_in_flight => {}
            }
            let Some(client) = self.clients.borrow_and_update().clone() else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.clients.changed() => continue,
                }
            };
            let Some(batch) = self.queue.take_limited(self.options.batch_bytes, self.options.max_message_bytes) else {
                continue;
            };
            let sender = Sender { queue: self.queue.clone(), metrics: self.metrics.clone() };
            let flying = flying.clone();
            flying.fetch_add(batch.spans, Ordering::Relaxed);
            in_flight.spawn(async move {
                let spans = batch.spans;
                let sent = sender.send(&client, batch).await;
                flying.fetch_sub(spans, Ordering::Relaxed);
                sent
            });
        }
        // Sends in flight finish (each bounded by the export timeout) or are abandoned at the deadline.
        let deadline = self.flush_by.get().copied().unwrap_or_else(|| Instant::now() + self.options.shutdown_deadline);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, in_flight.join_next()).await {}
        in_flight.shutdown().await;
        self.metrics.drop_spans(DropReason::Shutdown, flying.load(Ordering::Relaxed));
        self.flush(deadline).await;
    }

    async fn send(&self, client: &Client, batch: Batch) -> Sent {
        Sender { queue: self.queue.clone(), metrics: self.metrics.clone() }.send(client, batch).await
    }

    /// Export what is left until the deadline; count the rest as dropped at shutdown.
    async fn flush(&mut self, deadline: Instant) {
        let Some(client) = self.clients.borrow().clone() else {
            self.drop_rest();
            return;
        };
        let mut attempt = 0;
        while Instant::now() < deadline {
            let Some(batch) = self.queue.take_limited(self.options.batch_bytes, self.options.max_message_bytes) else {
                break;
            };
            let spans = batch.spans;
            match tokio::time::timeout_at(deadline, self.send(&client, batch)).await {
                Ok(Sent::Done) => {}
                Ok(Sent::Retry(hint)) => {
                    let delay = self.options.backoff.delay(attempt, hint, fastrand::f64());
                    attempt += 1;
                    tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
                }
                Err(_) => {
                    self.metrics.drop_spans(DropReason::Shutdown, spans);
                    break;
                }
            }
        }
        self.drop_rest();
    }

    fn drop_rest(&self) {
        if let Some(rest) = self.queue.drain_all() {
            tracing::warn!(spans = rest.spans, "shutdown deadline passed with spans still queued");
            self.metrics.drop_spans(DropReason::Shutdown, rest.spans);
        }
    }
}
