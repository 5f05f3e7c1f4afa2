//! Which export failures are retried, and after how long. Pure.

use std::time::Duration;

/// An export attempt that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// Worth retrying (connection error, 429/502/503/504, UNAVAILABLE...), maybe after a hint.
    #[error("retryable export failure: {reason}")]
    Retryable { reason: String, retry_after: Option<Duration> },
    /// Never retried (400, 413, other 4xx, permanent gRPC codes).
    #[error("permanent export failure: {reason}")]
    Permanent { reason: String },
}

/// HTTP status -> retryable? (OTLP/HTTP: only 429, 502, 503, 504).
pub fn http_status_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `Retry-After` as delay-seconds or as an HTTP-date (RFC 9110 allows both).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, std::time::SystemTime::now())
}

/// [`parse_retry_after`] relative to `now`; a date in the past means "retry now".
pub fn parse_retry_after_at(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// gRPC code -> retryable? RESOURCE_EXHAUSTED only when the server sent RetryInfo.
pub fn grpc_code_retryable(code: tonic::Code, has_retry_info: bool) -> bool {
    use tonic::Code::*;
    match code {
        Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss => true,
        ResourceExhausted => has_retry_info,
        _ => false,
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

/// Upper bound on a server's retry hint, so a bogus header cannot stall export for hours.
const MAX_HINT: Duration = Duration::from_secs(300);

impl Backoff {
    /// Delay before retry number `attempt` (0-based): initial * 2^attempt capped at max, scaled
    /// by a jitter factor in [0.5, 1.0) (`jitter` in [0, 1)), and never shorter than the hint.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>, jitter: f64) -> Duration {
        let exp = self.initial.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        let jittered = capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        match hint {
            Some(h) => jittered.max(h.min(MAX_HINT)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_otlp_retryable_http_statuses() {
        for s in [429, 502, 503, 504] {
            assert!(http_status_retryable(s));
        }
        for s in [400, 401, 403, 404, 413, 500, 501] {
            assert!(!http_status_retryable(s));
        }
    }

    #[test]
    fn resource_exhausted_needs_retry_info() {
        assert!(grpc_code_retryable(tonic::Code::Unavailable, false));
        assert!(!grpc_code_retryable(tonic::Code::ResourceExhausted, false));
        assert!(grpc_code_retryable(tonic::Code::ResourceExhausted, true));
        assert!(!grpc_code_retryable(tonic::Code::InvalidArgument, true));
        assert!(!grpc_code_retryable(tonic::Code::Unauthenticated, false));
    }

    #[test]
    fn backoff_grows_caps_and_honours_hints() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, None, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(0, None, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(b.delay(50, None, 1.0), Duration::from_secs(30));
        assert_eq!(b.delay(0, Some(Duration::from_secs(7)), 0.0), Duration::from_secs(7));
        assert_eq!(b.delay(0, Some(Duration::from_secs(9999)), 0.0), MAX_HINT);
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        assert_eq!(parse_retry_after_at("Wed, 21 Oct 2015 07:28:05 GMT", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after_at("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after_at("soon", now), None);
        assert_eq!(parse_retry_after_at("-3", now), None);
    }
}
