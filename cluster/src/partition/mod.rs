//! Replicated partitions: one openraft group per partition whose Raft log
//! is the partition's own encrypted log (docs/ARCHITECTURE.md,
//! "Replicated partitions").
//!
//! - [`PartitionConfig`]: the group's openraft types; a normal entry's
//!   payload is a record batch's bytes ([`BatchBytes`]), applying it
//!   answers its offsets ([`Appended`]).
//! - [`PartitionLogStore`]: openraft's `RaftLogStorage` and
//!   `RaftLogReader` over a [`RaftLog`](strongbox_storage::log::raft::RaftLog):
//!   each entry is one frame, written and fsynced once; the flush callback
//!   runs after the log's group commit covers the entry.
//! - [`PartitionStateMachine`]: the committed offset; a snapshot is "the
//!   log starts here".
//!
//! The group's network over the peer link is [`crate::groups`], a node's
//! replicas are run by [`crate::partition_groups`]. Not here yet: their
//! place in the broker's partition service, consumer reads up to the
//! committed offset.

mod log_store;
mod state_machine;
mod types;

pub use log_store::PartitionLogStore;
pub use state_machine::{PartitionSnapshot, PartitionSnapshotData, PartitionStateMachine};
pub use types::{
    Appended, BatchBytes, PartitionConfig, PartitionEntry, PartitionLogId, PartitionMembership,
    PartitionSnapshotMeta, PartitionVote,
};
