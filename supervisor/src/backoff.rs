//! Retry timing: exponential backoff with full jitter, bounded by BACKOFF_MIN_SECS and
//! BACKOFF_MAX_SECS, and the server's `Retry-After` when it sends one.
//!
//! Pure: the random draw is an argument, so the function is tested without clocks or sleeps.
//! It must never return more than `max`: a server's `Retry-After` may lengthen a pause up to
//! `max` (BACKOFF_MAX_SECS), never beyond, so one header cannot park the miner.

use std::time::Duration;

/// The pause before retry number `attempt` (0 for the first retry).
///
/// Full jitter (the AWS architecture blog's variant): draw uniformly in `[min, cap]` where
/// `cap = min(max, min * 2^attempt)`. `rand` is a uniform draw in `[0, 1)`. When the server
/// sent `Retry-After`, the pause is at least that long, up to `max`.
pub fn next_delay(
    attempt: u32,
    min: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    rand: f64,
) -> Duration {
    let max = max.max(min);
    let factor = 2f64.powi(attempt.min(62) as i32);
    let cap = min.mul_f64(factor.min(1e9)).min(max);
    let rand = if rand.is_finite() {
        rand.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let jittered = min + (cap.saturating_sub(min)).mul_f64(rand);
    match retry_after {
        Some(ra) => jittered.max(ra.min(max)),
        None => jittered,
    }
}

/// Parses a `Retry-After` header given in whole (or decimal) seconds. HTTP dates are not
/// supported (our Coordinator sends seconds) and give `None`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    if (0.0..1e9).contains(&secs) {
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    }
}

/// How long a loop waits after a call that failed (decided by `client::CallError::wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The next step of the backoff, at least `Retry-After` when the server sent one.
    Backoff(Option<Duration>),
    /// The longest pause: a refusal that only an operator can fix (a revoked key, a MINER_ID
    /// owned by another key), retried slowly in case they do.
    Longest,
}

/// A retry counter for one logical operation: `delay()` gives the next pause and counts it.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next pause, with a fresh random draw.
    pub fn delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = next_delay(
            self.attempt,
            self.min,
            self.max,
            retry_after,
            fastrand::f64(),
        );
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The longest pause (used for errors an operator must fix, such as a revoked key).
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The pause a [`Wait`] asks for: the next backoff step, or the longest pause.
    pub fn after(&mut self, wait: Wait) -> Duration {
        match wait {
            Wait::Backoff(retry_after) => self.delay(retry_after),
            Wait::Longest => self.max,
        }
    }

    /// Back to the shortest pause after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn grows_exponentially_up_to_max() {
        let (min, max) = (MS(100), MS(1000));
        let top: Vec<_> = (0..8).map(|a| next_delay(a, min, max, None, 1.0)).collect();
        assert_eq!(
            top,
            [100, 200, 400, 800, 1000, 1000, 1000, 1000]
                .map(MS)
                .to_vec()
        );
        for a in 0..100 {
            assert_eq!(next_delay(a, min, max, None, 0.0), min);
            let d = next_delay(a, min, max, None, 0.5);
            assert!(d >= min && d <= max, "{a}: {d:?}");
        }
    }

    #[test]
    fn jitter_is_spread_over_the_range() {
        assert_eq!(next_delay(3, MS(100), MS(10_000), None, 0.5), MS(450));
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let (min, max) = (MS(100), MS(1000));
        assert_eq!(next_delay(0, min, max, Some(MS(700)), 0.0), MS(700));
        for ra in [3, 3600, 999_999_999] {
            assert_eq!(
                next_delay(0, min, max, Some(Duration::from_secs(ra)), 0.0),
                max,
                "Retry-After: {ra}"
            );
        }
        // A short Retry-After never shortens the backoff.
        assert_eq!(next_delay(5, min, max, Some(MS(1)), 1.0), max);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        assert_eq!(next_delay(u32::MAX, MS(1), MS(5), None, 1.0), MS(5));
        assert_eq!(next_delay(0, MS(5), MS(1), None, 1.0), MS(5));
        assert_eq!(next_delay(2, MS(1), MS(5), None, f64::NAN), MS(1));
        assert_eq!(
            next_delay(2, Duration::ZERO, MS(5), None, 1.0),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_after_header_parsing() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(MS(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("inf"), None);
    }

    #[test]
    fn counter_resets() {
        let mut b = Backoff::new(MS(10), MS(10_000));
        for _ in 0..5 {
            b.delay(None);
        }
        assert!(b.attempt == 5);
        b.reset();
        assert!(b.delay(None) <= MS(10));
    }
}
