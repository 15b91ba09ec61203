//! The domain model: the values that the wire frames carry and that storage
//! keeps, defined once.
//!
//! | concept | types |
//! |---|---|
//! | topics ([`topic`](self::TopicConfig)) | [`TopicConfig`], [`TopicInfo`] |
//! | partitions | [`PartitionInfo`], [`PartitionState`] |
//! | durability | [`Durability`] |
//! | ACLs | [`AclRule`], [`AclEffect`], [`Operations`] |
//! | keys | [`KeyState`], [`KeyVersionInfo`], [`RewrapProgress`] |
//! | access requests | [`AccessRequestInfo`], [`AccessState`] |
//! | end-to-end recipients | [`RecipientEntry`] |
//! | the cluster | [`ClusterMetadata`], [`NodeAddress`], [`TopicPlacement`], [`PartitionPlacement`], [`ClusterStatusInfo`], [`NodeStatus`], [`NodeRole`], [`LeaderHint`] |
//!
//! These types hold no encoding. The admin frames encode and decode them
//! (`frames/fields.rs`, byte by byte in docs/PROTOCOL.md); the metadata
//! store keeps them in its own records (`strongbox-storage`, `meta/`, as
//! JSON documented in docs/STORAGE.md). Either format can change without
//! the other, and neither format's module is imported by the other's crate.
//!
//! Why here and not in a crate of its own: every crate that needs the model
//! already depends on this one (storage for the record batch format, the
//! broker and the client for the frames), and the model is the vocabulary of
//! the wire, which carries every one of these values. A separate crate would
//! add a workspace member and a dependency edge to every crate without
//! separating anything: no crate needs the model without the protocol. The
//! separation that matters (storage must not depend on the wire's frame
//! layouts) is kept by module: `storage` imports `model`, never `frames`.
//!
//! ```
//! use strongbox_protocol::model::{Durability, Operations, TopicConfig};
//!
//! let config = TopicConfig {
//!     partitions: 3,
//!     durability: Durability::Fsync,
//!     retention_ms: Some(7 * 24 * 3600 * 1000),
//!     retention_bytes: None,
//!     segment_bytes: None,
//!     segment_ms: None,
//!     dedicated_kek: false,
//! };
//! assert_eq!(config.partitions, 3);
//! let ops = Operations::PUBLISH.union(Operations::SUBSCRIBE);
//! assert_eq!(ops.to_string(), "publish,subscribe");
//! ```

mod access;
mod acl;
mod cluster;
mod durability;
mod key;
mod operations;
mod partition;
mod recipient;
mod topic;

pub use access::{AccessRequestInfo, AccessState};
pub use acl::{AclEffect, AclRule};
pub use cluster::{
    ClusterMetadata, ClusterStatusInfo, LeaderHint, NodeAddress, NodeRole, NodeStatus,
    PartitionPlacement, TopicPlacement,
};
pub use durability::Durability;
pub use key::{KeyState, KeyVersionInfo, RewrapProgress};
pub use operations::Operations;
pub use partition::{PartitionInfo, PartitionState};
pub use recipient::RecipientEntry;
pub use topic::{TopicConfig, TopicInfo};
