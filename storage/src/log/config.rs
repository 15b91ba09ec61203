//! Configuration of one partition log, and the clock it reads.

use std::time::Duration;

use crate::keys::KekScope;

use super::error::LogError;
use super::format::{SEAL_LEN, SEGMENT_HEADER_LEN};

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The append's waiter resolves only once its bytes are on disk. One
    /// fdatasync is in flight at a time; the next covers every batch
    /// appended meanwhile (group commit). Readers see a batch once it is
    /// durable.
    Fsync,
    /// A background thread fsyncs at most once per interval when there is
    /// something to sync. The waiter resolves when the bytes are written to
    /// the operating system; a power loss can lose up to an interval.
    Interval(Duration),
    /// No fsync except when segments roll and the log closes. The waiter
    /// resolves when the bytes are written to the operating system.
    None,
}

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The topic's 128-bit id (written in every header and AAD).
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The KEK scope that wraps this topic's data keys.
    pub kek_scope: KekScope,
    /// Roll the active segment before it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old (checked on append and
    /// by [`PartitionLog::roll_if_due`](super::PartitionLog::roll_if_due)).
    pub segment_age: Duration,
    /// Write a sparse index entry at least every this many bytes of frames.
    pub index_interval_bytes: u64,
    /// When appends count as done.
    pub durability: Durability,
}

impl LogConfig {
    /// Defaults: 1 GiB segments rolled after 7 days, an index entry every
    /// 4 KiB, `fsync` durability.
    pub fn new(topic_id: [u8; 16], partition: u32, kek_scope: KekScope) -> Self {
        Self {
            topic_id,
            partition,
            kek_scope,
            segment_bytes: 1 << 30,
            segment_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            durability: Durability::Fsync,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`LogError::Config`] naming the field that is out of range.
    pub fn validate(self) -> Result<Self, LogError> {
        let min_segment = (SEGMENT_HEADER_LEN + SEAL_LEN) as u64 * 2;
        if self.segment_bytes < min_segment {
            return Err(LogError::Config(format!(
                "segment_bytes is {}, at least {min_segment} is needed",
                self.segment_bytes
            )));
        }
        if self.segment_age.is_zero() {
            return Err(LogError::Config("segment_age must be above zero".into()));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::Config(
                "index_interval_bytes must be above zero".into(),
            ));
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return Err(LogError::Config(
                "the durability interval must be above zero".into(),
            ));
        }
        Ok(self)
    }
}

/// What retention may delete. Whole sealed segments only, oldest first,
/// never the newest segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete a segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

/// Where the log reads the time (segment ages, headers, retention): the
/// crate's one clock.
pub use strongbox_protocol::clock::{Clock, SystemClock};

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let ok = LogConfig::new([0; 16], 0, KekScope::Broker);
        assert!(ok.clone().validate().is_ok());
        let e = LogConfig {
            segment_bytes: 10,
            ..ok.clone()
        }
        .validate()
        .expect_err("tiny segments");
        assert!(e.to_string().contains("segment_bytes"));
        let e = LogConfig {
            index_interval_bytes: 0,
            ..ok.clone()
        }
        .validate()
        .expect_err("zero interval");
        assert!(e.to_string().contains("index_interval_bytes"));
        assert!(
            LogConfig {
                durability: Durability::Interval(Duration::ZERO),
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            LogConfig {
                segment_age: Duration::ZERO,
                ..ok
            }
            .validate()
            .is_err()
        );
    }
}
