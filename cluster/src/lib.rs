//! Strongbox cluster metadata: one openraft group whose state machine is
//! each node's redb metadata store.
//!
//! The model: every metadata write the nodes must agree on is a
//! [`MetaCommand`]. A node proposes it with [`MetaRaft::propose`]; the
//! group's leader appends it to the replicated log ([`MetaLogStore`], a redb
//! file of its own); once a majority has it, every node applies it to its
//! own [`strongbox_storage::meta::MetaStore`] ([`MetaStateMachine`]), in the
//! same transaction as the log id it reached, and answers with a
//! [`MetaResponse`]. A node far behind gets a snapshot instead: the
//! replicated tables only ([`snapshot_format`]); keys, segment envelopes,
//! durable ends, the audit head and the other node-local tables never
//! leave a node.
//!
//! [`partition`] holds the storage of a partition group, the other kind of
//! group a cluster runs: its Raft log is the partition's own encrypted log.
//!
//! What is not here: the network. [`MetaRaft::start`] takes any
//! `openraft::network::RaftNetworkFactory`; the peer transport provides the
//! real one, and the receiving side calls [`MetaRaft::raft`].
//!
//! ```no_run
//! # async fn example<N>(network: N) -> Result<(), Box<dyn std::error::Error>>
//! # where
//! #     N: openraft::network::RaftNetworkFactory<strongbox_cluster::TypeConfig>,
//! #     N::Network: openraft::network::NetSnapshot<
//! #         strongbox_cluster::TypeConfig,
//! #         SnapshotData = strongbox_cluster::SnapshotData,
//! #     >,
//! # {
//! use std::collections::BTreeMap;
//! use std::path::Path;
//!
//! use strongbox_cluster::{MetaCommand, MetaRaft, MetaRaftConfig, NodeInfo, ProposeError};
//! use strongbox_storage::meta::MetaStore;
//!
//! let data = Path::new("/var/lib/strongbox");
//! let meta = MetaStore::open(data.join("meta.redb"))?;
//! let raft_dir = strongbox_cluster::raft_dir(data);
//! let node = MetaRaft::start(&MetaRaftConfig::new(1), &raft_dir, meta, network).await?;
//! node.initialize(BTreeMap::from([(
//!     1,
//!     NodeInfo { peer_addr: "10.0.0.1:7443".into(), client_addr: "10.0.0.1:4433".into() },
//! )]))
//! .await?;
//! match node.propose(MetaCommand::DeleteGroup { group: "billing".into() }).await {
//!     Ok(response) => println!("{response:?}"),
//!     Err(ProposeError::NotLeader { leader }) => println!("ask {leader:?}"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::panic
)]

/// The exact openraft this crate is built on, for the network glue (its
/// RPC types: `openraft::raft::{AppendEntriesRequest, VoteRequest, ...}`).
pub use openraft;

mod apply;
pub mod command;
mod directory;
pub mod groups;
mod local;
pub mod log_store;
pub mod net;
mod node;
pub mod partition;
pub mod partition_groups;
pub mod snapshot_format;
pub mod state_machine;
pub mod types;

pub use command::{MetaCommand, MetaResponse, ProducerOutcome, Refusal};
pub use directory::Directory;
pub use local::apply_local;
pub use log_store::MetaLogStore;
pub use node::{
    ClusterError, ClusterStatus, MAX_VOTERS, MemberStatus, MetaRaft, MetaRaftConfig, ProposeError,
    RAFT_DIR, Role, raft_dir,
};
pub use state_machine::{AppliedCommand, MetaChange, MetaStateMachine, RaftSnapshot, SnapshotData};
pub use types::{LogId, NodeId, NodeInfo, Raft, TypeConfig};
