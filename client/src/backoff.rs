//! Exponential backoff with jitter, capped.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::config::ReconnectPolicy;

/// Delays between reconnection attempts.
///
/// Attempt `n` (from 0) has the nominal delay `initial * multiplier^n`,
/// capped at `max`; the delay returned is drawn uniformly from the upper
/// half of it. Randomness only spreads clients apart, so a small
/// non-cryptographic generator (SplitMix64) seeded from the standard
/// library's per-process random state is enough.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x5EED);
        Self::with_seed(policy, h.finish())
    }

    pub(crate) fn with_seed(policy: ReconnectPolicy, seed: u64) -> Self {
        Self {
            policy,
            attempt: 0,
            rng: seed,
        }
    }

    /// The nominal (unjittered) delay of the next attempt.
    pub(crate) fn nominal(&self) -> Duration {
        let initial = self.policy.initial_backoff.as_secs_f64();
        let max = self.policy.max_backoff.as_secs_f64();
        let factor = self.policy.multiplier.max(1.0);
        let exp = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let nominal = (initial * factor.powi(exp)).min(max);
        if nominal.is_finite() && nominal >= 0.0 {
            Duration::from_secs_f64(nominal)
        } else {
            self.policy.max_backoff
        }
    }

    /// The delay before the next attempt; advances the attempt count.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        let half = nominal / 2;
        // A fraction in [0, 1) from the top 53 bits.
        let fraction = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(fraction)
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            give_up_after: None,
        }
    }

    #[test]
    fn delays_grow_exponentially_within_the_jitter_band_and_are_capped() {
        for seed in 0..50 {
            let mut b = Backoff::with_seed(policy(), seed);
            let nominals = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
            for nominal in nominals {
                let nominal = Duration::from_millis(nominal);
                assert_eq!(b.nominal(), nominal);
                let d = b.next_delay();
                assert!(
                    d >= nominal / 2 && d <= nominal,
                    "{d:?} outside band of {nominal:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_clients() {
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|seed| Backoff::with_seed(policy(), seed).next_delay())
            .collect();
        assert!(delays.len() > 10, "only {} distinct delays", delays.len());
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_seed(policy(), 7);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }

    #[test]
    fn absurd_settings_do_not_panic() {
        let mut b = Backoff::with_seed(
            ReconnectPolicy {
                initial_backoff: Duration::from_secs(u64::MAX / 4),
                max_backoff: Duration::from_secs(1),
                multiplier: f64::INFINITY,
                give_up_after: None,
            },
            1,
        );
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }
}
