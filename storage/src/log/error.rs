//! Errors of the partition log.
//!
//! Every error is scoped to one partition: the broker reports it for that
//! partition and keeps serving the others. Messages name the file and say
//! what to do; they never contain key bytes or record contents.

use std::path::PathBuf;

use crate::keys::KeyError;

/// The advice appended to errors about damaged files.
const RESTORE: &str = "restore it from backup or run strongbox-broker verify";

/// `first..end`, or `first..` with a note when the end is unknown.
fn range_text(first: u64, end: Option<u64>) -> String {
    match end {
        Some(end) => format!("{first}..{end}"),
        None => format!("{first}.. (end unknown)"),
    }
}

/// An error of one partition's log.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"reading"`, `"syncing"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A segment's key envelope file does not exist.
    #[error("cannot open segment {}: key envelope missing ({RESTORE})", segment.display())]
    EnvelopeMissing {
        /// The segment file.
        segment: PathBuf,
    },

    /// A segment's key envelope file is empty.
    #[error("cannot open segment {}: key envelope {} is empty ({RESTORE})",
            segment.display(), envelope.display())]
    EnvelopeEmpty {
        /// The segment file.
        segment: PathBuf,
        /// The envelope file.
        envelope: PathBuf,
    },

    /// A segment's key envelope fails its checks (magic, version, CRC,
    /// lengths).
    #[error("cannot open segment {}: key envelope {} is corrupt: {reason} ({RESTORE})",
            segment.display(), envelope.display())]
    EnvelopeCorrupt {
        /// The segment file.
        segment: PathBuf,
        /// The envelope file.
        envelope: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A well-formed envelope that belongs to another segment, partition or
    /// key scope.
    #[error("cannot open segment {}: key envelope {} does not belong to it: {reason} ({RESTORE})",
            segment.display(), envelope.display())]
    EnvelopeMismatch {
        /// The segment file.
        segment: PathBuf,
        /// The envelope file.
        envelope: PathBuf,
        /// Which field differs.
        reason: String,
    },

    /// The key provider could not unwrap a segment's data key (wrong or
    /// destroyed KEK, tampered wrapped key, provider down).
    #[error("cannot unwrap the data key of segment {}: {source}", segment.display())]
    Key {
        /// The segment file.
        segment: PathBuf,
        /// The key provider's error.
        #[source]
        source: KeyError,
    },

    /// No data key could be made for a new segment; appends fail closed.
    #[error("cannot create a data key for new segment {}: {source} (appends to this partition \
             fail until the key provider is available)", segment.display())]
    KeyCreate {
        /// The segment file that was being created.
        segment: PathBuf,
        /// The key provider's error.
        #[source]
        source: KeyError,
    },

    /// A segment's header fails its checks.
    #[error("cannot open segment {}: header is corrupt: {reason} ({RESTORE})", segment.display())]
    CorruptHeader {
        /// The segment file.
        segment: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A segment that belongs to another topic or partition.
    #[error("cannot open segment {}: it belongs to topic {found_topic} partition {found_partition}, \
             not topic {topic} partition {partition} (was it copied here? remove it, or {RESTORE})",
            segment.display())]
    ForeignSegment {
        /// The segment file.
        segment: PathBuf,
        /// Topic id (hex) this log belongs to.
        topic: String,
        /// Partition this log belongs to.
        partition: u32,
        /// Topic id (hex) in the segment header.
        found_topic: String,
        /// Partition in the segment header.
        found_partition: u32,
    },

    /// A segment that is not the newest has no valid seal: it was cut short
    /// or its end was damaged.
    #[error("cannot open segment {}: {reason}; it was truncated or damaged ({RESTORE})",
            segment.display())]
    SealMissing {
        /// The segment file.
        segment: PathBuf,
        /// What was found instead of a seal.
        reason: String,
    },

    /// A seal whose MAC or facts do not verify: the segment was altered.
    #[error("segment {} failed verification: its seal {reason} ({RESTORE})", segment.display())]
    SealInvalid {
        /// The segment file.
        segment: PathBuf,
        /// What does not verify.
        reason: String,
    },

    /// A frame that fails authentication or is out of place.
    #[error("segment {} is corrupt at byte {position}: {reason} ({RESTORE})", segment.display())]
    CorruptFrame {
        /// The segment file.
        segment: PathBuf,
        /// File position of the bad frame.
        position: u64,
        /// What is wrong.
        reason: String,
    },

    /// Records that cannot be read because the frames holding them are
    /// damaged: offsets `first..end` (`end` exclusive, `None` when no later
    /// readable frame is known). Reads before `first` and from `end` on
    /// still work.
    #[error("segment {} is damaged at byte {position}: offsets {} cannot be read: {reason} \
             ({RESTORE})", segment.display(), range_text(*first, *end))]
    Damaged {
        /// The segment file.
        segment: PathBuf,
        /// File position of the first damaged byte range (the bad frame).
        position: u64,
        /// The first offset that cannot be read.
        first: u64,
        /// The next offset that can be read again, when known.
        end: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// Two consecutive segments do not join up: a segment is missing or was
    /// altered.
    #[error("segment {} ends at offset {end} but the next segment {} starts at {next_base}; \
             a segment is missing or was altered ({RESTORE})", segment.display(), next.display())]
    Gap {
        /// The earlier segment.
        segment: PathBuf,
        /// Its end offset.
        end: u64,
        /// The later segment.
        next: PathBuf,
        /// Its base offset.
        next_base: u64,
    },

    /// The requested offset is not in the log.
    #[error(
        "offset {requested} is out of range: the log holds offsets {log_start}..{high_watermark}"
    )]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The first offset held.
        log_start: u64,
        /// The offset after the last readable record.
        high_watermark: u64,
    },

    /// `truncate` was given an offset it cannot cut at.
    #[error("cannot truncate to offset {offset}: {reason}")]
    InvalidTruncation {
        /// The offset asked for.
        offset: u64,
        /// Why not.
        reason: String,
    },

    /// `append_at` was given an offset other than the log's next offset.
    #[error("append expected at offset {expected}, but the log's next offset is {next}")]
    OffsetMismatch {
        /// The offset the caller expected.
        expected: u64,
        /// The log's next offset.
        next: u64,
    },

    /// A batch outside the sizes a frame can hold.
    #[error("batch of {len} bytes cannot be stored: {reason}")]
    BatchRejected {
        /// The batch length.
        len: usize,
        /// Why.
        reason: String,
    },

    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    Config(String),

    /// A write or fsync failed (`EIO` and the like); the log refuses writes
    /// until it has resumed from its last durable point, which it tries by
    /// itself.
    #[error("log {} refuses writes after a failed write or sync: {reason} (it resumes by \
             itself once the disk accepts writes again; check the disk and the system log)",
            dir.display())]
    Failed {
        /// The partition directory.
        dir: PathBuf,
        /// The original failure.
        reason: String,
    },

    /// The disk (or quota) is full; the log refuses writes until it can
    /// write again, which it tries by itself.
    #[error("log {} refuses writes: the disk is full: {reason} (free space or grow the volume; \
             writes resume by themselves)", dir.display())]
    StorageFull {
        /// The partition directory.
        dir: PathBuf,
        /// The original failure.
        reason: String,
    },

    /// Recovery would cut a torn tail but cannot keep the cut bytes as
    /// evidence.
    #[error("cannot open segment {}: its last {bytes} bytes are not intact frames and must be \
             cut, but they cannot be kept in {}: {source} (free space and open it again)",
            segment.display(), quarantine.display())]
    Quarantine {
        /// The segment.
        segment: PathBuf,
        /// The quarantine file that could not be written.
        quarantine: PathBuf,
        /// Bytes to cut.
        bytes: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The log was closed or dropped before the operation finished.
    #[error("log {} was closed before the operation finished", dir.display())]
    Closed {
        /// The partition directory.
        dir: PathBuf,
    },

    /// The partition directory was missing at open although the caller's
    /// records say the partition holds data; it was not created again, and
    /// nothing is appended until the loss is accepted
    /// ([`PartitionLog::skip_to`](super::PartitionLog::skip_to)).
    #[error("partition directory {} is missing although records of its segments exist: it \
             was not created again, so no offset is handed out twice (restore the directory \
             from backup, or accept the loss)", dir.display())]
    DirectoryMissing {
        /// The partition directory.
        dir: PathBuf,
    },

    /// The directory holds a segment of a replicated partition (Raft
    /// frames), which a single-node log does not read.
    #[error("cannot open segment {} as a single-node log: it belongs to a replicated partition \
             (its frames are Raft entries); open it through the partition's Raft group", segment.display())]
    RaftSegment {
        /// The segment file.
        segment: PathBuf,
    },

    /// An entry appended to a replicated log does not continue it, or its
    /// payload does not fit its kind.
    #[error("cannot append Raft entry {index}: {reason}")]
    InvalidRaftAppend {
        /// The entry's index.
        index: u64,
        /// Why it does not fit.
        reason: String,
    },
}

impl LogError {
    /// True when the error says stored data is damaged (altered, cut short,
    /// missing, or a key envelope lost or altered), as opposed to an
    /// operation that failed for now (I/O, a key provider that is down) or
    /// a request the log refuses. Damage does not heal by retrying: the
    /// data has to be restored. A wrapped key the provider rejects is not
    /// counted: it cannot be told apart from a provider holding the wrong
    /// key-encryption key.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::Damaged { .. }
                | Self::CorruptFrame { .. }
                | Self::CorruptHeader { .. }
                | Self::ForeignSegment { .. }
                | Self::SealMissing { .. }
                | Self::SealInvalid { .. }
                | Self::Gap { .. }
                | Self::EnvelopeMissing { .. }
                | Self::EnvelopeEmpty { .. }
                | Self::EnvelopeCorrupt { .. }
                | Self::EnvelopeMismatch { .. }
                | Self::DirectoryMissing { .. }
        )
    }

    /// The offsets `(first, end)` a [`LogError::Damaged`] names.
    pub fn damaged_range(&self) -> Option<(u64, Option<u64>)> {
        match self {
            Self::Damaged { first, end, .. } => Some((*first, *end)),
            _ => None,
        }
    }
}
