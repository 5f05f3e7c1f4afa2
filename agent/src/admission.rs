//! Load shedding at the receivers: a budget of request bytes being received, decoded and
//! ingested at once. Over it, a request is refused with a retryable error (HTTP 503 +
//! `Retry-After`, gRPC `RESOURCE_EXHAUSTED` + `RetryInfo`) so the SDK keeps the data and retries,
//! instead of the agent buffering without bound.
//!
//! A request's [`Charge`] grows as its bytes arrive (see `crate::server`): its declared
//! `Content-Length` up front, else each frame of its body as it is received, then the inflated
//! size of a compressed body. The charge is given back when the request is answered.

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: usize = 1024;

#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    total: u32,
}

/// The budget is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many request bytes in flight")]
pub struct Overloaded;

impl Admission {
    pub fn new(max_inflight_bytes: usize) -> Admission {
        let total = (max_inflight_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Admission { permits: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// A permit for a request of `bytes`, or `None` when the budget is exhausted. A request
    /// bigger than the whole budget is admitted alone.
    pub fn try_admit(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.total as usize) as u32;
        self.permits.clone().try_acquire_many_owned(units).ok()
    }

    /// Bytes of the budget not charged to any request.
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }
}

/// What one request has charged to the budget so far.
pub struct Charge {
    admission: Admission,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Bytes paid for.
    bytes: usize,
    /// Body bytes received (paid for up to `bytes`).
    received: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Charge {
    pub fn new(admission: Admission) -> Charge {
        Charge { admission, held: Mutex::new(Held::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grow(&self, held: &mut Held, total: usize) -> Result<(), Overloaded> {
        let (have, want) = (held.bytes.div_ceil(UNIT), total.div_ceil(UNIT));
        if want > have {
            let more = u32::try_from(want - have).map_err(|_| Overloaded)?;
            let permit = self.admission.permits.clone().try_acquire_many_owned(more).map_err(|_| Overloaded)?;
            match &mut held.permit {
                Some(p) => p.merge(permit),
                None => held.permit = Some(permit),
            }
        }
        held.bytes = held.bytes.max(total);
        Ok(())
    }

    /// Pay for `bytes` more (a declared `Content-Length`, an inflated body).
    pub fn reserve(&self, bytes: usize) -> Result<(), Overloaded> {
        let mut held = self.lock();
        let total = held.bytes.saturating_add(bytes);
        self.grow(&mut held, total)
    }

    /// `bytes` of body arrived: paid for unless reserved before.
    pub fn consume(&self, bytes: usize) -> Result<(), Overloaded> {
        let mut held = self.lock();
        held.received = held.received.saturating_add(bytes);
        let received = held.received;
        self.grow(&mut held, received)
    }

    /// Pay for at least `bytes` in all (a message whose decoded size is now known).
    pub fn at_least(&self, bytes: usize) -> Result<(), Overloaded> {
        let mut held = self.lock();
        self.grow(&mut held, bytes)
    }

    /// Bytes paid for.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_budget_and_recovers() {
        let a = Admission::new(4 * UNIT);
        let first = a.try_admit(3 * UNIT).expect("fits");
        assert!(a.try_admit(2 * UNIT).is_none());
        drop(first);
        assert!(a.try_admit(2 * UNIT).is_some());
        // A request bigger than the whole budget is admitted alone, never starved.
        assert!(a.try_admit(100 * UNIT).is_some());
    }

    #[test]
    fn a_charge_grows_as_bytes_arrive_and_is_given_back() {
        let a = Admission::new(8 * UNIT);
        let declared = Charge::new(a.clone());
        declared.reserve(3 * UNIT).expect("fits");
        declared.consume(3 * UNIT).expect("already paid for");
        assert_eq!(a.available(), 5 * UNIT);
        let streamed = Charge::new(a.clone());
        for _ in 0..5 {
            streamed.consume(UNIT).expect("fits");
        }
        assert_eq!(a.available(), 0);
        assert_eq!(streamed.consume(1), Err(Overloaded), "the budget is spent while the body streams");
        streamed.at_least(2 * UNIT).expect("already paid");
        drop(declared);
        drop(streamed);
        assert_eq!(a.available(), 8 * UNIT);
    }
}
