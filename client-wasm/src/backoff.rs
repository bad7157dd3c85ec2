//! How long to wait before the next reconnect attempt.
//!
//! The delay doubles with each failed attempt, from [`FIRST_DELAY_MS`] up to [`MAX_DELAY_MS`],
//! and is spread by a random factor so that a room full of clients dropped by the same server
//! restart does not come back in one burst. The random number is passed in, so the schedule is
//! deterministic under test.
//!
//! After a close that asks to come back later (4500–4599: the room full, too slow, rate
//! limited, no answer), the first attempt waits at least [`LATER_FIRST_DELAY_MS`].

/// The delay before the first reconnect attempt.
pub const FIRST_DELAY_MS: u64 = 500;
/// The longest delay between two attempts.
pub const MAX_DELAY_MS: u64 = 15_000;
/// The shortest nominal delay after a close that asks to reconnect later.
pub const LATER_FIRST_DELAY_MS: u64 = 5_000;

/// The reconnect schedule.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, given `random` in `[0, 1)`: between half and all of
    /// the nominal delay. Counts the attempt.
    pub fn next_delay_ms(&mut self, random: f64) -> u64 {
        self.next(random, FIRST_DELAY_MS)
    }

    /// Like [`Backoff::next_delay_ms`], for a server that asked to come back later: the
    /// schedule starts at [`LATER_FIRST_DELAY_MS`].
    pub fn next_later_delay_ms(&mut self, random: f64) -> u64 {
        self.next(random, LATER_FIRST_DELAY_MS)
    }

    fn next(&mut self, random: f64, floor_ms: u64) -> u64 {
        let nominal = floor_ms.saturating_mul(1u64 << self.failures.min(16)).min(MAX_DELAY_MS);
        self.failures = self.failures.saturating_add(1);
        let factor = 0.5 + 0.5 * random.clamp(0.0, 1.0);
        (nominal as f64 * factor) as u64
    }

    /// Attempts made since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A connection succeeded: the next drop starts the schedule over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.next_delay_ms(0.999_999)).collect();
        assert_eq!(delays[..6], [499, 999, 1999, 3999, 7999, 14_999]);
        assert!(delays.iter().all(|&d| d <= MAX_DELAY_MS));
        backoff.reset();
        assert_eq!(backoff.next_delay_ms(0.0), FIRST_DELAY_MS / 2);
    }

    #[test]
    fn later_starts_at_a_few_seconds_and_keeps_growing() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..4).map(|_| backoff.next_later_delay_ms(0.999_999)).collect();
        assert_eq!(delays, [4999, 9999, 14_999, 14_999]);
        backoff.reset();
        assert_eq!(backoff.next_later_delay_ms(0.0), LATER_FIRST_DELAY_MS / 2);
    }
}
