//! Retry policy: which failures are worth another attempt, and capped exponential
//! backoff with jitter, bounded in attempts and total time. No I/O but sleeping.

use crate::store::StoreError;
use rand::Rng;
use std::time::{Duration, Instant};

/// How hard the client tries before it reports a failure.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest single backoff.
    pub cap: Duration,
    /// No new attempt starts after this much time since the first.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            total: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (attempt counts from 1): full jitter
    /// over half to all of `min(cap, base × 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(self.cap);
        let jitter = rand::rng().random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }

    /// Whether another attempt may start, given how it went so far; sleeps the backoff.
    pub fn wait_before_retry(&self, attempt: u32, started: Instant) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        let pause = self.backoff(attempt);
        if started.elapsed() + pause > self.total {
            return false;
        }
        std::thread::sleep(pause);
        true
    }
}

/// Failures another attempt may cure: transport trouble, broken answers, 5xx,
/// and the 409s that mean "busy, retry later".
pub fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Transport { .. } | StoreError::BadAnswer { .. } => true,
        StoreError::Service { code, status, .. } => code.is_transient() || *status >= 500,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            total: Duration::from_secs(10),
        };
        assert!(p.backoff(1) <= Duration::from_millis(100));
        assert!(p.backoff(1) >= Duration::from_millis(50));
        assert!(p.backoff(10) <= Duration::from_millis(400));
        assert!(p.backoff(10) >= Duration::from_millis(200));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let svc = |code: ErrorCode| StoreError::Service {
            op: "x",
            key: String::new(),
            status: code.status(),
            code,
            message: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
        };
        assert!(is_retryable(&svc(ErrorCode::ServiceUnavailable)));
        assert!(is_retryable(&svc(ErrorCode::DataSynchronization)));
        assert!(is_retryable(&svc(ErrorCode::AlreadyLock)));
        assert!(is_retryable(&svc(ErrorCode::IncompleteBody)));
        assert!(!is_retryable(&svc(ErrorCode::EntityTooSmall)));
        assert!(!is_retryable(&svc(ErrorCode::ObjectAlreadyExists)));
    }
}
