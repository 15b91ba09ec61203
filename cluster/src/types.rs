//! The types the metadata group is made of: node ids, node addresses, and
//! openraft's type configuration.

use serde::{Deserialize, Serialize};

use crate::command::{MetaCommand, MetaResponse};

/// A node's id. Ids are never reused: a node that leaves for good takes its
/// id with it, and a replacement gets a new one (reusing an id can lose
/// committed entries).
pub type NodeId = u64;

/// Where a node is reached: the value openraft keeps for every member in the
/// group's membership, so every node knows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The peer listener (`host:port`), where other nodes send consensus
    /// and replication traffic.
    pub peer_addr: String,
    /// The client listener (`host:port`), handed to clients that must
    /// follow a leader hint.
    pub client_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer {} client {}", self.peer_addr, self.client_addr)
    }
}

openraft::declare_raft_types!(
    /// The metadata group's openraft type configuration: [`MetaCommand`]s
    /// in, [`MetaResponse`]s out, `u64` node ids and terms, [`NodeInfo`]
    /// addresses, tokio.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// A log id of the metadata group.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote of the metadata group.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A log entry of the metadata group.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// The metadata of a snapshot.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// The openraft handle of the metadata group.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::MetaStateMachine>;
