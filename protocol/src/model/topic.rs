//! A topic: its configuration, fixed at creation, and its description.

use super::{Durability, PartitionInfo};

/// Settings of a topic, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions, at least 1.
    pub partitions: u32,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while a partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Roll the active segment at this size; broker default when absent.
    pub segment_bytes: Option<u64>,
    /// Roll the active segment at this age; broker default when absent.
    pub segment_ms: Option<u64>,
    /// Wrap this topic's data keys under a key-encryption key of its own,
    /// destroyed with the topic (crypto-shredding).
    pub dedicated_kek: bool,
}

/// A topic, its configuration and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// 128-bit identifier, stable for the topic's life and never reused.
    pub topic_id: [u8; 16],
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Its configuration.
    pub config: TopicConfig,
    /// One entry per partition (empty in `TopicList`).
    pub partitions: Vec<PartitionInfo>,
}
