//! The state of one partition of a topic.

/// The state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Oldest retained offset.
    pub log_start_offset: u64,
    /// Offset the next appended record will get.
    pub high_watermark: u64,
    /// Segments on disk.
    pub segments: u32,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Present when the partition is not `ok`: what is wrong and what to
    /// do.
    pub error: Option<String>,
    /// Whether the partition serves reads and writes.
    pub state: PartitionState,
}

/// Whether a partition serves reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PartitionState {
    /// Reads and writes.
    #[default]
    Ok,
    /// Neither: its log cannot be opened (corruption, a missing key).
    Unavailable,
    /// Reads only: its log is shorter than the offsets it acknowledged, or
    /// misses a segment the broker knows of. Writes resume when an
    /// operator accepts the loss.
    ReadOnly,
    /// Reads only for now: a write or sync failed (a full disk, an I/O
    /// error). Writes resume by themselves once the disk accepts them.
    Fenced,
}

impl PartitionState {
    /// Every state, in wire order.
    pub const ALL: [Self; 4] = [Self::Ok, Self::Unavailable, Self::ReadOnly, Self::Fenced];

    /// The state's name as shown by the CLI and in metrics (`ok`,
    /// `unavailable`, `read_only`, `fenced`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unavailable => "unavailable",
            Self::ReadOnly => "read_only",
            Self::Fenced => "fenced",
        }
    }
}
