//! Reconnect delays: capped exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng as _;

/// Delay before reconnect attempt `n` (0-based): a uniform random value in
/// `[0, min(cap, base * 2^n)]` ("full jitter"), so a fleet that lost its coordinator does not
/// come back in lockstep. The first retry is quick (at most `base`).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at attempt 0.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^20 times any sane base is past any sane cap; saturating keeps huge ones safe.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (random up to [`Backoff::ceiling`]); moves to the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::thread_rng().gen_range(0..=micros))
    }

    /// Back to attempt 0, after a link that stayed up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn delays_stay_under_the_exponential_ceiling_and_the_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        for attempt in 0..100u32 {
            let ceiling = BASE.saturating_mul(1 << attempt.min(20)).min(CAP);
            assert_eq!(backoff.ceiling(), ceiling, "attempt {attempt}");
            let delay = backoff.next_delay();
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
        }
        assert_eq!(backoff.ceiling(), CAP);
    }

    #[test]
    fn first_retry_is_quick_and_reset_starts_over() {
        let mut backoff = Backoff::new(BASE, CAP);
        assert!(backoff.next_delay() <= BASE);
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.ceiling(), BASE);
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        // Full jitter: over many draws at the cap, both low and high delays appear.
        let mut low = false;
        let mut high = false;
        for _ in 0..1_000 {
            let mut backoff = Backoff::new(BASE, CAP);
            for _ in 0..10 {
                backoff.next_delay();
            }
            let delay = backoff.next_delay();
            low |= delay < CAP / 4;
            high |= delay > CAP * 3 / 4;
        }
        assert!(low && high);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..70 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::MAX);
    }
}
