//! The wire encoding of the cluster values: `NodeAddress`,
//! `PartitionPlacement`, `TopicPlacement`, `ClusterMetadata`, `NodeRole`,
//! `NodeStatus`, `ClusterStatusInfo` and the `Error` frame's `LeaderHint`.
//! docs/PROTOCOL.md ("Cluster values") has the same layouts.

use bytes::{BufMut, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError};
use crate::frames::fields::{Field, get_list, get_opt_u64, put_list, put_opt_u64};
use crate::model::{
    ClusterMetadata, ClusterStatusInfo, LeaderHint, NodeAddress, NodeRole, NodeStatus,
    PartitionPlacement, TopicPlacement,
};

/// Smallest encoding of a `NodeAddress`: id and an empty string.
pub(crate) const NODE_ADDRESS_MIN: usize = 8 + 2;
/// Smallest encoding of a `PartitionPlacement`.
pub(crate) const PARTITION_PLACEMENT_MIN: usize = 4 + 1 + 4;
/// Smallest encoding of a `TopicPlacement`.
pub(crate) const TOPIC_PLACEMENT_MIN: usize = 2 + 4;
/// Smallest encoding of a `NodeStatus`.
pub(crate) const NODE_STATUS_MIN: usize = 8 + 2 + 2 + 1 + 8 + 1 + 1;

impl Field for NodeAddress {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.id);
        dst.put_string("client_addr", &self.client_addr)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64()?,
            client_addr: r.string()?,
        })
    }
}

/// A node id inside a `list<u64>`.
impl Field for u64 {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(*self);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(r.u64()?)
    }
}

impl Field for PartitionPlacement {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partition);
        put_opt_u64(dst, self.leader);
        put_list(dst, "replicas", &self.replicas)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            partition: r.u32()?,
            leader: get_opt_u64(r, "leader")?,
            replicas: get_list(r, 8)?,
        })
    }
}

impl Field for TopicPlacement {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_string("name", &self.name)?;
        put_list(dst, "partitions", &self.partitions)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string()?,
            partitions: get_list(r, PARTITION_PLACEMENT_MIN)?,
        })
    }
}

impl Field for ClusterMetadata {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_list(dst, "nodes", &self.nodes)?;
        put_list(dst, "topics", &self.topics)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            nodes: get_list(r, NODE_ADDRESS_MIN)?,
            topics: get_list(r, TOPIC_PLACEMENT_MIN)?,
        })
    }
}

impl Field for NodeRole {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u8(match self {
            Self::Unknown => 0,
            Self::Leader => 1,
            Self::Follower => 2,
            Self::Candidate => 3,
            Self::Learner => 4,
        });
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        match r.u8()? {
            0 => Ok(Self::Unknown),
            1 => Ok(Self::Leader),
            2 => Ok(Self::Follower),
            3 => Ok(Self::Candidate),
            4 => Ok(Self::Learner),
            _ => Err(DecodeError::InvalidValue {
                field: "role",
                offset,
            }),
        }
    }
}

impl Field for NodeStatus {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.id);
        dst.put_string("peer_addr", &self.peer_addr)?;
        dst.put_string("client_addr", &self.client_addr)?;
        self.role.put(dst)?;
        dst.put_u64(self.term);
        put_opt_u64(dst, self.last_contact_ms);
        put_opt_u64(dst, self.lag);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64()?,
            peer_addr: r.string()?,
            client_addr: r.string()?,
            role: NodeRole::get(r)?,
            term: r.u64()?,
            last_contact_ms: get_opt_u64(r, "last_contact_ms")?,
            lag: get_opt_u64(r, "lag")?,
        })
    }
}

impl Field for ClusterStatusInfo {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.node_id);
        put_opt_u64(dst, self.leader);
        dst.put_u64(self.term);
        put_list(dst, "nodes", &self.nodes)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            node_id: r.u64()?,
            leader: get_opt_u64(r, "leader")?,
            term: r.u64()?,
            nodes: get_list(r, NODE_STATUS_MIN)?,
        })
    }
}

/// The `Error` frame's leader hint: `u8` 0 (no leader known) or 1 followed
/// by a `NodeAddress`.
impl Field for LeaderHint {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match &self.leader {
            Some(node) => {
                dst.put_u8(1);
                node.put(dst)
            }
            None => {
                dst.put_u8(0);
                Ok(())
            }
        }
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            leader: if r.present("leader")? {
                Some(NodeAddress::get(r)?)
            } else {
                None
            },
        })
    }
}
