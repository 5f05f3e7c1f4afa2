//! Rate limits of the report endpoint: token buckets per source, so one misbehaving agent (or a
//! flood of made-up tokens) costs neither memory nor TokenReviews beyond a bound. Answered with
//! 429 and `Retry-After`.
//!
//! Two keys per request, both checked before the token is reviewed:
//! - the bearer token (by hash): one agent pushes every 30 s and at once on a config change;
//!   [`PER_TOKEN`] leaves room for a few changes in a row;
//! - the remote address: [`PER_ADDRESS`] is generous, since pods on the host network (or behind
//!   SNAT) share one. Reports another replica forwards come from that replica's address with
//!   many pods' tokens: they draw from one shared bucket, [`FORWARDED`], instead (the header is not
//!   authenticated, so claiming it buys no more than that bucket).
//!
//! Each map holds at most [`MAX_KEYS`] buckets; a full bucket is as good as none, so those are
//! dropped first, then the whole map (a flood of distinct keys only ever resets the limits).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket's size and refill rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

/// Per agent token: 6 at once, then one every 5 s.
pub const PER_TOKEN: Rate = Rate { burst: 6.0, per_second: 0.2 };
/// Per remote address: 200 at once, then 50 a second.
pub const PER_ADDRESS: Rate = Rate { burst: 200.0, per_second: 50.0 };
/// Every forwarded report together: 1000 at once, then 400 a second (10,000 agents every 30 s,
/// with room to spare).
pub const FORWARDED: Rate = Rate { burst: 1000.0, per_second: 400.0 };
/// Most buckets per limiter.
pub const MAX_KEYS: usize = 50_000;

/// Token buckets by key.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash> Limiter<K> {
    pub fn new(rate: Rate) -> Self {
        Limiter { rate, buckets: Mutex::default() }
    }

    /// Takes one token for `key` at `now`, or says how long until one is available.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Duration> {
        let Rate { burst, per_second } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_second < burst
            });
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((burst, now));
        let available = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_second).min(burst);
        *at = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            Ok(())
        } else {
            *tokens = available;
            Err(Duration::from_secs_f64((1.0 - available) / per_second))
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The report endpoint's limiters.
#[derive(Debug)]
pub struct ReportLimits {
    pub per_token: Limiter<[u8; 32]>,
    pub per_address: Limiter<std::net::IpAddr>,
    pub forwarded: Limiter<()>,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            per_token: Limiter::new(PER_TOKEN),
            per_address: Limiter::new(PER_ADDRESS),
            forwarded: Limiter::new(FORWARDED),
        }
    }
}

impl ReportLimits {
    /// Checks a request from `address` (unknown: not limited by address) with the token hashed
    /// to `token`; `forwarded`: it says another replica forwarded it.
    pub fn check(
        &self,
        address: Option<std::net::IpAddr>,
        forwarded: bool,
        token: [u8; 32],
        now: Instant,
    ) -> Result<(), Duration> {
        match (forwarded, address) {
            (true, _) => self.forwarded.check((), now)?,
            (false, Some(address)) => self.per_address.check(address, now)?,
            (false, None) => {}
        }
        self.per_token.check(token, now)
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate_then_a_wait_to_retry() {
        let limiter = Limiter::new(Rate { burst: 3.0, per_second: 0.5 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("a", t0), Ok(()));
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2), "one token every 2 s");
        assert_eq!(limiter.check("b", t0), Ok(()), "another key has its own bucket");
        assert_eq!(limiter.check("a", t0 + Duration::from_secs(2)), Ok(()));
        assert!(limiter.check("a", t0 + Duration::from_secs(3)).is_err());
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", later), Ok(()));
        }
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let limiter = Limiter::new(PER_TOKEN);
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            let _ = limiter.check(i, t0);
        }
        assert!(limiter.len() <= MAX_KEYS, "{} buckets", limiter.len());
    }

    #[test]
    fn forwarded_reports_share_one_bucket_and_are_not_limited_by_address() {
        let limits = ReportLimits::default();
        let t0 = Instant::now();
        let follower = Some("10.0.0.2".parse().unwrap());
        // 300 pods' reports from one follower within a second: over the per-address burst.
        for i in 0..300u16 {
            let mut token = [0u8; 32];
            token[..2].copy_from_slice(&i.to_be_bytes());
            assert_eq!(limits.check(follower, true, token, t0), Ok(()), "report {i}");
        }
        let mut refused = 0;
        for i in 0..300u16 {
            let mut token = [1u8; 32];
            token[..2].copy_from_slice(&i.to_be_bytes());
            refused += usize::from(limits.check(follower, false, token, t0).is_err());
        }
        assert_eq!(refused, 100, "the same from one address, not forwarded: 200 pass");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
        assert_eq!(retry_after_secs(Duration::from_millis(5001)), 6);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
