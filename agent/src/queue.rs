//! A queue of span batches bounded in bytes. When a push does not fit, the oldest batches are
//! evicted (and counted): in a backlog, fresh data is worth more than old data.
//!
//! Batches are held protobuf-encoded, so the byte bound is the memory actually used (decoded
//! spans take several times their encoded size) and export needs no re-encoding.
//!
//! **Pacing.** While exports succeed, a backlog means the exporter lacks CPU or bandwidth, not a
//! collector: the receivers then wait ([`Queue::pace`]) for the exporter to catch up before they
//! take more, so the applications' exporters slow down and the queue stays near its pace mark
//! instead of growing to its bound (and evicting). During a collector outage (exports failing)
//! nothing waits: the queue buffers up to its bound as before. A catch-up wakes every waiting
//! request, but each re-checks the queue and goes on to queue without yielding in between, so on
//! the default single-threaded runtime only as many go as fit under the mark and the rest wait
//! again: no herd (with `--worker-threads` N, up to N may pass the check together).

use super::metrics::{DropReason, Metrics};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Spans of one or more requests. Each segment is a run of `resource_spans` (field 1) entries of
/// an `ExportTraceServiceRequest`, so the concatenation of segments is a valid request.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub segments: Vec<Bytes>,
    pub spans: usize,
    pub bytes: usize,
}

impl Batch {
    pub fn new(resource_spans: Vec<ResourceSpans>) -> Batch {
        use prost::Message;
        let spans = resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        let request = ExportTraceServiceRequest { resource_spans };
        let encoded = Bytes::from(request.encode_to_vec());
        let bytes = encoded.len();
        Batch { segments: vec![encoded], spans, bytes }
    }

    /// A batch of `spans` spans already encoded as `resource_spans` entries.
    pub fn from_encoded(encoded: Bytes, spans: usize) -> Batch {
        let bytes = encoded.len();
        Batch { segments: vec![encoded], spans, bytes }
    }

    /// The batch as one encoded `ExportTraceServiceRequest`.
    pub fn encoded(&self) -> Bytes {
        match self.segments.as_slice() {
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }

    /// The spans, decoded (tests and debugging; the export path sends the bytes as they are).
    pub fn decode(&self) -> Result<Vec<ResourceSpans>, prost::DecodeError> {
        use prost::Message;
        Ok(ExportTraceServiceRequest::decode(self.encoded())?.resource_spans)
    }

    fn append(&mut self, other: Batch) {
        self.segments.extend(other.segments);
        self.spans += other.spans;
        self.bytes += other.bytes;
    }
}

/// Entries the ring keeps room for once empty (a few dozen are queued at a steady rate).
const SHRINK_ABOVE: usize = 1024;

#[derive(Default)]
struct Inner {
    items: VecDeque<Batch>,
    bytes: usize,
    spans: usize,
}

/// Longest a request waits for the exporter to catch up ([`Queue::pace`]); it is taken after
/// that, so a sender is slowed down, never refused, by pacing.
pub const PACE_MAX_WAIT: Duration = Duration::from_secs(1);

pub struct Queue {
    inner: Mutex<Inner>,
    ready: Notify,
    capacity: usize,
    metrics: Arc<Metrics>,
    /// Queued bytes above which receivers wait for a healthy exporter (`usize::MAX`: never).
    pace_above: usize,
    /// The last export succeeded: a backlog is the exporter falling behind, not an outage.
    exporting: AtomicBool,
    /// Wakes paced requests when the queue falls to the pace mark (or export starts failing).
    caught_up: Notify,
}

impl Queue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            capacity,
            metrics,
            pace_above: usize::MAX,
            exporting: AtomicBool::new(false),
            caught_up: Notify::new(),
        }
    }

    /// This queue, pacing receivers above `bytes` queued (0: never).
    pub fn with_pacing(mut self, bytes: usize) -> Queue {
        self.pace_above = if bytes == 0 { usize::MAX } else { bytes };
        self
    }

    /// The exporter's last result: pacing applies only while exports succeed.
    pub fn set_exporting(&self, ok: bool) {
        let was = self.exporting.swap(ok, Ordering::Relaxed);
        if was && !ok {
            // Export started failing: nobody waits for it any longer.
            self.caught_up.notify_waiters();
        }
    }

    fn behind(&self) -> bool {
        self.exporting.load(Ordering::Relaxed) && self.lock().bytes > self.pace_above
    }

    /// Wait, up to `max_wait`, while a healthy exporter is behind (see the module doc). Returns
    /// how long it waited.
    pub async fn pace(&self, max_wait: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + max_wait;
        let mut waited = false;
        loop {
            let caught_up = self.caught_up.notified();
            tokio::pin!(caught_up);
            // Registered before the check, so a wake-up between the two is not lost.
            caught_up.as_mut().enable();
            if !self.behind() {
                break;
            }
            waited = true;
            if tokio::time::timeout_at(deadline, caught_up).await.is_err() {
                break;
            }
        }
        if !waited {
            return Duration::ZERO;
        }
        let waited = started.elapsed();
        self.metrics.paced_requests.inc();
        self.metrics.pace_wait_seconds.inc_by(waited.as_secs_f64());
        waited
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner inconsistent (plain field updates).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// (bytes, spans) queued.
    pub fn usage(&self) -> (usize, usize) {
        let g = self.lock();
        (g.bytes, g.spans)
    }

    /// Append, evicting the oldest batches while it does not fit. Returns the spans evicted.
    /// A batch larger than the whole queue is itself dropped.
    pub fn push(&self, batch: Batch) -> usize {
        let mut g = self.lock();
        let mut evicted = 0;
        if batch.bytes > self.capacity {
            evicted = batch.spans;
        } else {
            while g.bytes + batch.bytes > self.capacity {
                let Some(old) = g.items.pop_front() else { break };
                g.bytes -= old.bytes;
                g.spans -= old.spans;
                evicted += old.spans;
            }
            g.bytes += batch.bytes;
            g.spans += batch.spans;
            g.items.push_back(batch);
        }
        self.publish(&g);
        drop(g);
        self.metrics.drop_spans(DropReason::QueueFull, evicted);
        self.ready.notify_one();
        evicted
    }

    /// Put a batch that failed to export back at the head, if it still fits; otherwise it is the
    /// oldest data and is dropped (counted). Returns whether it was kept.
    pub fn requeue(&self, batch: Batch) -> bool {
        let mut g = self.lock();
        if g.bytes + batch.bytes > self.capacity {
            drop(g);
            self.metrics.drop_spans(DropReason::QueueFull, batch.spans);
            return false;
        }
        g.bytes += batch.bytes;
        g.spans += batch.spans;
        g.items.push_front(batch);
        self.publish(&g);
        true
    }

    /// Take batches from the head up to `max_bytes` (at least one batch), merged.
    pub fn take(&self, max_bytes: usize) -> Option<Batch> {
        self.take_limited(max_bytes, usize::MAX)
    }

    /// [`Queue::take`], and never more than `max_message` bytes: a batch larger than that (one
    /// large request) is split at span boundaries; the pieces after the first stay at the head.
    pub fn take_limited(&self, max_bytes: usize, max_message: usize) -> Option<Batch> {
        let mut g = self.lock();
        let mut out = g.items.pop_front()?;
        if out.bytes > max_message {
            let mut pieces = split(&out, max_message).into_iter();
            if let Some(first) = pieces.next() {
                let (bytes, spans) = (out.bytes, out.spans);
                out = first;
                // The pieces re-encode the same spans: sizes differ by a few bytes of framing.
                let rest: Vec<Batch> = pieces.collect();
                g.bytes = g.bytes - bytes + out.bytes + rest.iter().map(|b| b.bytes).sum::<usize>();
                debug_assert_eq!(spans, out.spans + rest.iter().map(|b| b.spans).sum::<usize>());
                for piece in rest.into_iter().rev() {
                    g.items.push_front(piece);
                }
            }
            g.bytes -= out.bytes;
            g.spans -= out.spans;
            self.publish(&g);
            return Some(out);
        }
        while let Some(next) = g.items.front() {
            if out.bytes + next.bytes > max_bytes.min(max_message) {
                break;
            }
            if let Some(next) = g.items.pop_front() {
                out.append(next);
            }
        }
        g.bytes -= out.bytes;
        g.spans -= out.spans;
        // A backlog grows the ring to thousands of entries; give that back once it is drained.
        if g.items.is_empty() && g.items.capacity() > SHRINK_ABOVE {
            g.items.shrink_to(SHRINK_ABOVE / 16);
        }
        self.publish(&g);
        Some(out)
    }

    /// Everything left, for shutdown accounting.
    pub fn drain_all(&self) -> Option<Batch> {
        self.take(usize::MAX)
    }

    /// Wait until `min_bytes` are queued, or something is queued and `linger` has passed since
    /// this call saw it, or `stop` resolves. Single consumer.
    pub async fn wait_batch(&self, min_bytes: usize, linger: Duration) {
        while self.usage().0 == 0 {
            self.ready.notified().await;
        }
        let deadline = Instant::now() + linger;
        while self.usage().0 < min_bytes {
            if tokio::time::timeout_at(deadline, self.ready.notified()).await.is_err() {
                return;
            }
        }
    }

    fn publish(&self, g: &Inner) {
        self.metrics.queue_bytes.set(g.bytes as i64);
        self.metrics.queue_spans.set(g.spans as i64);
        if self.pace_above != usize::MAX && g.bytes <= self.pace_above {
            self.caught_up.notify_waiters();
        }
    }
}

/// Framing a span, scope or resource adds within a request: a tag and a length of at most 5 bytes.
const FRAMING: usize = 6;

/// `batch` as requests of at most `max_message` bytes (a span larger than that goes alone).
/// The rare path (a single request larger than a message): decoded, split, re-encoded.
pub fn split(batch: &Batch, max_message: usize) -> Vec<Batch> {
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;
    use prost::Message;
    let Ok(resource_spans) = batch.decode() else {
        // Only valid protobuf is ever queued (the pipeline validated it).
        return vec![batch.clone()];
    };
    let mut pieces = Vec::new();
    let mut piece: Vec<ResourceSpans> = Vec::new();
    let mut size = 0;
    for mut rs in resource_spans {
        let scopes = std::mem::take(&mut rs.scope_spans);
        let rs_head = FRAMING + rs.encoded_len();
        let mut rs_open = false;
        for mut ss in scopes {
            let spans = std::mem::take(&mut ss.spans);
            let ss_head = FRAMING + ss.encoded_len();
            let mut ss_open = false;
            for span in spans {
                let len = FRAMING + span.encoded_len();
                let need = len + if ss_open { 0 } else { ss_head } + if rs_open { 0 } else { rs_head };
                if size + need > max_message && size > 0 {
                    pieces.push(Batch::new(std::mem::take(&mut piece)));
                    (size, rs_open, ss_open) = (0, false, false);
                }
                if !rs_open {
                    piece.push(ResourceSpans { scope_spans: Vec::new(), ..rs.clone() });
                    (size, rs_open) = (size + rs_head, true);
                }
                let current = piece.last_mut().expect("a resource was opened");
                if !ss_open {
                    current.scope_spans.push(ScopeSpans { spans: Vec::new(), ..ss.clone() });
                    (size, ss_open) = (size + ss_head, true);
                }
                current.scope_spans.last_mut().expect("a scope was opened").spans.push(span);
                size += len;
            }
        }
    }
    if !piece.is_empty() {
        pieces.push(Batch::new(piece));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    fn batch(spans: usize) -> Batch {
        let spans = (0..spans).map(|_| Span { name: "x".repeat(100), ..Default::default() }).collect();
        Batch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }])
    }

    #[test]
    fn evicts_oldest_when_full_and_counts() {
        let m = Arc::new(Metrics::default());
        let one = batch(1).bytes;
        let q = Queue::new(one * 3, m.clone());
        for _ in 0..3 {
            assert_eq!(q.push(batch(1)), 0);
        }
        assert_eq!(q.push(batch(1)), 1);
        assert_eq!(q.usage(), (one * 3, 3));
        assert_eq!(m.dropped_count(DropReason::QueueFull), 1);
        assert_eq!(m.queue_spans.get(), 3);
    }

    #[test]
    fn oversized_batch_is_dropped_not_queued() {
        let m = Arc::new(Metrics::default());
        let q = Queue::new(10, m.clone());
        assert_eq!(q.push(batch(2)), 2);
        assert_eq!(q.usage(), (0, 0));
        assert_eq!(m.dropped_count(DropReason::QueueFull), 2);
    }

    #[test]
    fn take_merges_up_to_max_bytes() {
        let q = Queue::new(1 << 20, Arc::new(Metrics::default()));
        let one = batch(1).bytes;
        for _ in 0..5 {
            q.push(batch(1));
        }
        let b = q.take(one * 2).expect("batch");
        assert_eq!(b.spans, 2);
        assert_eq!(q.usage().1, 3);
        assert_eq!(q.take(0).expect("at least one").spans, 1);
    }

    #[test]
    fn requeue_goes_to_the_head_and_respects_capacity() {
        let m = Arc::new(Metrics::default());
        let one = batch(1).bytes;
        let q = Queue::new(one * 2, m.clone());
        q.push(batch(1));
        let head = q.take(one).expect("batch");
        q.push(batch(2));
        assert!(!q.requeue(head.clone()));
        assert_eq!(m.dropped_count(DropReason::QueueFull), 1);
        let q = Queue::new(one * 2, Arc::new(Metrics::default()));
        q.push(batch(1));
        assert!(q.requeue(head));
        assert_eq!(q.usage().1, 2);
    }

    #[test]
    fn a_drained_backlog_gives_its_room_back() {
        let q = Queue::new(1 << 30, Arc::new(Metrics::default()));
        for _ in 0..4 * SHRINK_ABOVE {
            q.push(batch(1));
        }
        while q.take(1 << 20).is_some() {}
        assert!(q.lock().items.capacity() <= SHRINK_ABOVE);
    }

    #[test]
    fn a_batch_over_the_message_size_is_taken_in_pieces_under_it() {
        let m = Arc::new(Metrics::default());
        let q = Queue::new(1 << 30, m.clone());
        // One request: two resources, the first with two scopes.
        let mut rs = ResourceSpans {
            scope_spans: vec![
                ScopeSpans {
                    spans: vec![Span { name: "x".repeat(100), ..Default::default() }; 300],
                    ..Default::default()
                };
                2
            ],
            ..Default::default()
        };
        rs.resource = Some(Default::default());
        let mut other = rs.clone();
        other.scope_spans.truncate(1);
        q.push(Batch::new(vec![rs, other]));
        let (_, spans) = q.usage();
        assert_eq!(spans, 900);
        let limit = 10_000;
        let mut taken = 0;
        let mut pieces = 0;
        while let Some(b) = q.take_limited(1 << 20, limit) {
            assert!(b.bytes <= limit, "{} bytes over {limit}", b.bytes);
            assert_eq!(b.encoded().len(), b.bytes);
            let decoded: usize =
                b.decode().expect("valid").iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            assert_eq!(decoded, b.spans);
            taken += b.spans;
            pieces += 1;
        }
        assert_eq!(taken, 900);
        assert!(pieces >= 900 * 106 / limit, "{pieces} pieces");
        assert_eq!(q.usage(), (0, 0));
        assert_eq!(m.queue_spans.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_batch_returns_after_linger() {
        let q = Arc::new(Queue::new(1 << 20, Arc::new(Metrics::default())));
        q.push(batch(1));
        let start = Instant::now();
        q.wait_batch(1 << 19, Duration::from_millis(200)).await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    fn paced_queue(marks_in_batches: usize) -> (Arc<Queue>, Arc<Metrics>, usize) {
        let m = Arc::new(Metrics::default());
        let one = batch(10).bytes;
        let q = Arc::new(Queue::new(one * 100, m.clone()).with_pacing(one * marks_in_batches));
        (q, m, one)
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_behind_a_healthy_exporter_paces_until_it_is_taken() {
        let (q, m, one) = paced_queue(2);
        for _ in 0..4 {
            q.push(batch(10));
        }
        assert_eq!(q.pace(PACE_MAX_WAIT).await, Duration::ZERO, "no export has succeeded yet: no pacing");
        q.set_exporting(true);
        let taker = {
            let q = q.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                q.take(one).expect("queued");
                tokio::time::sleep(Duration::from_millis(100)).await;
                q.take(one).expect("queued");
            })
        };
        let waited = q.pace(PACE_MAX_WAIT).await;
        assert_eq!(waited, Duration::from_millis(300), "woken when the queue fell to its mark, not before");
        assert_eq!(q.usage().0, one * 2);
        taker.await.expect("taker");
        assert_eq!(q.pace(PACE_MAX_WAIT).await, Duration::ZERO, "at the mark: no wait");
        assert_eq!(m.paced_requests.get(), 1);
        assert!((m.pace_wait_seconds.get() - 0.3).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_waits_at_most_its_bound_and_never_during_an_outage() {
        let (q, _, _) = paced_queue(1);
        for _ in 0..3 {
            q.push(batch(10));
        }
        q.set_exporting(true);
        assert_eq!(q.pace(PACE_MAX_WAIT).await, PACE_MAX_WAIT, "nobody exports: taken after the bound");
        let failing = {
            let q = q.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                q.set_exporting(false);
            })
        };
        assert_eq!(q.pace(PACE_MAX_WAIT).await, Duration::from_millis(50), "export failing: waiters released");
        failing.await.expect("task");
        assert_eq!(q.pace(PACE_MAX_WAIT).await, Duration::ZERO, "during an outage the queue buffers");
    }

    /// Several senders waiting: each catch-up releases them all, but each re-checks before it
    /// queues, so only as many go as fit under the mark (here one per batch the exporter takes);
    /// the others wait again. No herd: the queue passes its mark by one request at most.
    #[tokio::test(start_paused = true)]
    async fn waiting_senders_go_one_catch_up_at_a_time() {
        const SENDERS: usize = 5;
        let (q, m, one) = paced_queue(2);
        for _ in 0..4 {
            q.push(batch(10));
        }
        q.set_exporting(true);
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let waited = q.pace(PACE_MAX_WAIT).await;
                    q.push(batch(10));
                    waited
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(q.usage().0, one * 4, "all {SENDERS} wait while the exporter is behind");
        // The exporter takes down to the mark, then one batch at a time.
        q.take(one * 2).expect("queued");
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(q.usage().0, one * 3, "the mark (2) plus the one sender that went");
            q.take(one).expect("queued");
        }
        let mut waits = Vec::new();
        for s in senders {
            waits.push(s.await.expect("sender"));
        }
        waits.sort();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(300), PACE_MAX_WAIT, PACE_MAX_WAIT],
            "one per catch-up, then the bound"
        );
        assert_eq!(m.paced_requests.get(), SENDERS as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_off_never_waits() {
        let m = Arc::new(Metrics::default());
        let q = Queue::new(1 << 20, m.clone()).with_pacing(0);
        q.push(batch(100));
        q.set_exporting(true);
        assert_eq!(q.pace(PACE_MAX_WAIT).await, Duration::ZERO);
        assert_eq!(m.paced_requests.get(), 0);
    }
}
