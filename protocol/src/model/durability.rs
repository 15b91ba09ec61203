//! How a topic makes its appends durable.

/// How a topic makes appends durable before acknowledging them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Acknowledge after `fdatasync`; concurrent appends share one sync
    /// (group commit).
    Fsync,
    /// Acknowledge after the write; sync at most every `interval_ms`.
    Interval {
        /// Milliseconds between syncs.
        interval_ms: u32,
    },
    /// Acknowledge after the write; the operating system decides when to
    /// sync.
    None,
}
