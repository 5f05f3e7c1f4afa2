//! The HTTP server under every listener of the agent (OTLP/gRPC, OTLP/HTTP, admin, health):
//! hyper's HTTP/1 and HTTP/2 with limits that hold under slow, idle or flooding clients.
//!
//! - **Connections per listener** are capped ([`ServerLimits::max_connections`]). At the cap, a
//!   new connection takes the place of the *oldest idle* one (no request in progress: a keep-alive
//!   connection between requests, or one still sending its headers), which is closed; when every
//!   connection has a request in progress the new one is closed at once. So a flood of idle
//!   connections never keeps a prober or an application out, and file descriptors stay bounded.
//! - **Timeouts.** Request headers must arrive within [`ServerLimits::header_timeout`] (HTTP/1;
//!   this also bounds an HTTP/1 keep-alive between requests); a request body within
//!   [`ServerLimits::body_timeout`] of its headers; a connection with no request in progress for
//!   [`ServerLimits::idle_timeout`] is closed (HTTP/2, and clients that never send a byte).
//! - **HTTP/2**: at most [`ServerLimits::max_streams`] concurrent streams per connection, 256 KiB
//!   stream and 1 MiB connection flow-control windows, 16 KiB frames, 16 KiB of headers.
//! - **Bytes in flight** ([`crate::admission`]): a request body is charged to the agent's budget
//!   up front from its `Content-Length`, or frame by frame as it arrives when its length is not
//!   declared (HTTP/2, chunked). A body that does not fit fails at once (the handler answers
//!   HTTP 503 / gRPC `RESOURCE_EXHAUSTED`, both retryable), so unfinished bodies cannot hold more
//!   than the budget. The charge, shared with the handler through the request's extensions,
//!   is held until the request is answered.
//! - **Shutdown**: the listener is closed (new connections are refused), open connections are
//!   asked to finish (HTTP/2 GOAWAY, HTTP/1 close after the response) and are dropped after
//!   [`ServerLimits::drain_timeout`] whatever their clients do.

use super::admission::{Admission, Charge};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(3),
            max_streams: 32,
        }
    }
}

/// Why a request body was cut short by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body not received within {0:?}")]
    TimedOut(Duration),
    #[error("agent overloaded: too many request bytes in flight, retry later")]
    Overloaded,
}

impl BodyError {
    /// The [`BodyError`] behind a body error seen by a handler, if the server caused it.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(*b);
            }
            cur = e.source();
        }
        None
    }
}

/// What a listener serves besides its service: the byte budget bodies are charged to (none for
/// the admin and health listeners), and how a [`BodyError`] is handed to the service (a gRPC
/// service wants a `tonic::Status`).
#[derive(Clone)]
pub struct Guard {
    pub limits: ServerLimits,
    /// The byte budget, and the counter of requests refused over it.
    pub admission: Option<(Admission, Counter)>,
    pub body_error: fn(BodyError) -> BoxError,
}

impl Guard {
    pub fn new(limits: ServerLimits, admission: Option<(Admission, Counter)>) -> Guard {
        Guard { limits, admission, body_error: |e| Box::new(e) }
    }
}

/// A request body under the server's limits: a deadline, and charged to the byte budget.
pub struct GuardedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    charge: Option<(Arc<Charge>, Counter)>,
    /// `Content-Length`, charged at the first poll.
    declared: Option<usize>,
    failed: bool,
    body_error: fn(BodyError) -> BoxError,
}

impl GuardedBody {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        if let (BodyError::Overloaded, Some((_, refused))) = (e, &self.charge) {
            refused.inc();
        }
        Poll::Ready(Some(Err((self.body_error)(e))))
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if let (Some((charge, _)), Some(declared)) = (&this.charge, this.declared.take()) {
            if charge.reserve(declared).is_err() {
                return this.fail(BodyError::Overloaded);
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some((charge, _)), Some(data)) = (&this.charge, frame.data_ref()) {
                    // Within a declared length this is already paid for.
                    if charge.consume(data.len()).is_err() {
                        return this.fail(BodyError::Overloaded);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let timeout = this.timeout;
                    return this.fail(BodyError::TimedOut(timeout));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Requests in progress on one connection, and since when it has had none.
struct ConnState {
    busy: Mutex<(usize, Instant)>,
    evict: CancellationToken,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState { busy: Mutex::new((0, Instant::now())), evict: CancellationToken::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Since when the connection has had no request in progress; `None` while it has one.
    fn idle_since(&self) -> Option<Instant> {
        let g = self.lock();
        (g.0 == 0).then_some(g.1)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.lock().0 += 1;
        Busy(self.clone())
    }
}

/// A request in progress (until its response head is ready).
struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.0 -= 1;
        if g.0 == 0 {
            g.1 = Instant::now();
        }
    }
}

/// The open connections of one listener, oldest first.
#[derive(Default)]
struct Table {
    conns: Mutex<(u64, BTreeMap<u64, Arc<ConnState>>)>,
}

impl Table {
    /// Room for one more connection: evicts the oldest idle one at the cap; `None` when all are busy.
    fn admit(&self, max: usize) -> Option<(u64, Arc<ConnState>)> {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.len() >= max.max(1) {
            let idle = g.1.iter().find(|(_, c)| c.idle_since().is_some()).map(|(id, _)| *id)?;
            if let Some(old) = g.1.remove(&idle) {
                tracing::debug!(connection = idle, "connection cap reached: closing the oldest idle connection");
                old.evict.cancel();
            }
        }
        g.0 += 1;
        let id = g.0;
        let state = Arc::new(ConnState::new());
        g.1.insert(id, state.clone());
        Some((id, state))
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&id);
    }

    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).1.len()
    }
}

/// The service of one connection: marks it busy while a request is in progress, wraps the body.
struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
    conn: Arc<ConnState>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Guarded<S>
where
    S: tower::Service<Request<GuardedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.conn.begin();
        let guard = &self.guard;
        let (mut parts, inner) = req.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let charge = guard.admission.as_ref().map(|(a, refused)| (Arc::new(Charge::new(a.clone())), refused.clone()));
        if let Some((charge, _)) = &charge {
            parts.extensions.insert(charge.clone());
        }
        let timeout = guard.limits.body_timeout;
        let body = GuardedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            charge,
            declared,
            failed: false,
            body_error: guard.body_error,
        };
        let svc = self.inner.clone();
        Box::pin(async move {
            let _busy = busy;
            tower::ServiceExt::oneshot(svc, Request::from_parts(parts, body)).await.map_err(Into::into)
        })
    }
}

fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 << 10);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .initial_stream_window_size(256 << 10)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buf_size(256 << 10);
    b
}

/// Serve `service` on `listener` until `stop`, then drain (see the module docs).
pub async fn serve<S, B>(listener: TcpListener, service: S, guard: Guard, stop: CancellationToken)
where
    S: tower::Service<Request<GuardedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let guard = Arc::new(guard);
    let builder = Arc::new(builder(&guard.limits));
    let table = Arc::new(Table::default());
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait for connections to close.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, conn)) = table.admit(guard.limits.max_connections) else {
            tracing::debug!(open = table.len(), "connection cap reached and every connection busy: refusing one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = Guarded { inner: service.clone(), guard: guard.clone(), conn: conn.clone() };
        let (builder, table, stop, limits) = (builder.clone(), table.clone(), stop.clone(), guard.limits);
        conns.spawn(async move {
            let served = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(served);
            let grace = tokio::select! {
                _ = served.as_mut() => {
                    table.remove(id);
                    return;
                }
                _ = conn.evict.cancelled() => Duration::from_millis(200),
                _ = idle_for(&conn, limits.idle_timeout) => Duration::from_millis(200),
                _ = stop.cancelled() => limits.drain_timeout,
            };
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, served).await;
            table.remove(id);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once the connection has had no request in progress for `timeout`.
async fn idle_for(conn: &ConnState, timeout: Duration) {
    loop {
        match conn.idle_since() {
            Some(since) if since.elapsed() >= timeout => return,
            Some(since) => tokio::time::sleep_until(since + timeout).await,
            None => tokio::time::sleep(timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_evicts_the_oldest_idle_connection_or_refuses() {
        let t = Table::default();
        let (a, ca) = t.admit(2).expect("room");
        let (_, cb) = t.admit(2).expect("room");
        let busy_a = ca.begin();
        let _busy_b = cb.begin();
        assert!(t.admit(2).is_none(), "all busy: the new connection is refused");
        drop(busy_a);
        let (c, _) = t.admit(2).expect("a is idle now and makes room");
        assert!(ca.evict.is_cancelled());
        assert!(!cb.evict.is_cancelled());
        assert_eq!(t.len(), 2);
        t.remove(a);
        t.remove(c);
        assert_eq!(t.len(), 1);
    }
}
