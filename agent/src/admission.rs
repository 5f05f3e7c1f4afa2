//! Load shedding at the receivers: a budget of request bytes being decoded and ingested at
//! once. Over it, a request is refused with a retryable error (HTTP 503 + `Retry-After`, gRPC
//! `RESOURCE_EXHAUSTED` + `RetryInfo`) so the SDK keeps the data and retries, instead of the
//! agent buffering without bound.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: usize = 1024;

#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    total: u32,
}

impl Admission {
    pub fn new(max_inflight_bytes: usize) -> Admission {
        let total = (max_inflight_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Admission { permits: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// A permit for a request of `bytes`, or `None` when the budget is exhausted.
    pub fn try_admit(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.total as usize) as u32;
        self.permits.clone().try_acquire_many_owned(units).ok()
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
}
