//! Whether a log takes writes, and what it did on its own that its owner
//! should record (audit, metrics): a torn tail moved aside at recovery,
//! a write or sync that failed, the log resuming afterwards.

use std::io;
use std::path::PathBuf;

use super::error::LogError;

/// The kind of storage failure that fenced a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteFault {
    /// The disk or quota is full (`ENOSPC`, `EDQUOT`).
    StorageFull,
    /// Any other failed write or sync (`EIO`, ...).
    StorageFailed,
}

impl WriteFault {
    /// The fault an I/O error means.
    pub fn of(e: &io::Error) -> Self {
        if crate::io::is_storage_full(e) {
            Self::StorageFull
        } else {
            Self::StorageFailed
        }
    }

    /// The fault a log error means, when it is a storage failure.
    pub fn of_error(e: &LogError) -> Option<Self> {
        match e {
            LogError::StorageFull { .. } => Some(Self::StorageFull),
            LogError::Failed { .. } => Some(Self::StorageFailed),
            LogError::Io { source, .. } => Some(Self::of(source)),
            _ => None,
        }
    }

    /// `storage_full` or `storage_failed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::StorageFull => "storage_full",
            Self::StorageFailed => "storage_failed",
        }
    }

    /// The error appends get while the log is fenced by this fault.
    pub(crate) fn error(self, dir: PathBuf, reason: String) -> LogError {
        match self {
            Self::StorageFull => LogError::StorageFull { dir, reason },
            Self::StorageFailed => LogError::Failed { dir, reason },
        }
    }
}

/// Whether a log takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogHealth {
    /// Appends go through.
    Ok,
    /// A write or sync failed: appends are refused with the fault's error
    /// until the log resumes from its last durable point, which it tries
    /// at the next append (at most every few hundred milliseconds) and
    /// whenever [`PartitionLog::resume`](super::PartitionLog::resume) is
    /// called.
    Fenced {
        /// What failed.
        fault: WriteFault,
        /// The error, for people.
        reason: String,
        /// When it failed, ms since the Unix epoch (the log's clock).
        since_ms: i64,
    },
}

/// Records cut from the end of a log that were never acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutRange {
    /// The first offset cut.
    pub from_offset: u64,
    /// The offset after the last one cut.
    pub to_offset: u64,
    /// Bytes removed from the segment file.
    pub bytes: u64,
}

/// Something a log did on its own. Take them with
/// [`PartitionLog::take_events`](super::PartitionLog::take_events).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// Recovery found bytes at the end of the newest segment that are not
    /// intact frames, moved them to a quarantine file and cut them off.
    TailQuarantined {
        /// The segment.
        segment: PathBuf,
        /// The quarantine file that holds the bytes.
        quarantine: PathBuf,
        /// The offset the first cut byte would have held.
        first_offset: u64,
        /// File position in the segment where the cut began.
        position: u64,
        /// Bytes cut.
        bytes: u64,
        /// Why they are not a frame.
        reason: String,
    },
    /// A write or sync failed; appends are refused.
    Fenced {
        /// What failed.
        fault: WriteFault,
        /// The error.
        reason: String,
    },
    /// The log resumed after a fault: the active segment was cut back to
    /// its last durable point and sealed; appends continue at
    /// `next_offset` in a new segment with a new data key.
    Resumed {
        /// Records cut that a failed sync left unconfirmed (never
        /// acknowledged under `fsync` durability).
        cut: Option<CutRange>,
        /// Where appends continue.
        next_offset: u64,
    },
}
