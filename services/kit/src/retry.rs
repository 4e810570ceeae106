//! The one retry policy type: exponential backoff with full jitter, bounded in attempts.
//! Optimistic-lock retries in inventory and saga step retries in the orchestrator both use it.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Ceiling of the first retry's delay.
    pub initial_interval: Duration,
    /// Growth of the ceiling per retry.
    pub multiplier: f64,
    /// Largest ceiling.
    pub max_interval: Duration,
    /// Attempts in all, the first included; `None` retries for ever.
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// True when attempt number `attempt` (1 for the first) may be followed by another.
    pub fn allows_another(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }

    /// The delay ceiling after attempt number `attempt` (1 for the first).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.initial_interval.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = grown.min(self.max_interval.as_secs_f64());
        Duration::from_secs_f64(capped.max(0.0))
    }

    /// A delay drawn uniformly from zero to the ceiling ("full jitter"), so contenders that
    /// collided once spread out instead of colliding again.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        ceiling.mul_f64(rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(10),
            multiplier: 2.0,
            max_interval: Duration::from_millis(50),
            max_attempts: Some(4),
        }
    }

    #[test]
    fn ceilings_grow_then_cap() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(10));
        assert_eq!(p.ceiling(2), Duration::from_millis(20));
        assert_eq!(p.ceiling(3), Duration::from_millis(40));
        assert_eq!(p.ceiling(4), Duration::from_millis(50));
        assert_eq!(p.ceiling(40), Duration::from_millis(50));
    }

    #[test]
    fn delays_stay_under_the_ceiling_and_attempts_are_bounded() {
        let p = policy();
        for attempt in 1..10 {
            assert!(p.delay(attempt) <= p.ceiling(attempt));
        }
        assert!(p.allows_another(3));
        assert!(!p.allows_another(4));
        let forever = RetryPolicy {
            max_attempts: None,
            ..p
        };
        assert!(forever.allows_another(1_000_000));
    }
}
