//! The one wall clock of Strongbox.
//!
//! Every crate that stamps or compares times reads them here: storage
//! (segment headers, ages and retention, seals, the key registry), the
//! broker (audit records, topics, ACL rules, access requests, key
//! lifecycle, backups, certificate validity) and the client (record
//! timestamps, keyring and recipient expiries). It lives in this crate
//! because it is the one all of them depend on.
//!
//! The codecs and session machines of this crate never call it: they take
//! `now` from their caller, so they stay deterministic and are tested on a
//! virtual clock. Code that must be driven by hand in tests takes an
//! `Arc<dyn Clock>` (storage's `LogConfig`, its `KeyManager`); code that
//! only stamps the present calls [`now_ms`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the time is read.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock: the real one and the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Milliseconds since the Unix epoch on the system clock; 0 for a clock set
/// before 1970, `i64::MAX` past the year 292 million.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whole seconds since the Unix epoch on the system clock (certificate
/// validity is counted in seconds).
#[must_use]
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_the_present() {
        let before = now_ms();
        let through_trait = SystemClock.now_ms();
        let secs = now_secs();
        let after = now_ms();
        // Later than 2023-11-14, the day this was written.
        assert!(before > 1_700_000_000_000, "{before}");
        assert!(before <= through_trait && through_trait <= after);
        assert!(before / 1000 <= secs && secs <= after / 1000);
    }
}
