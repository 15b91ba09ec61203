//! The openraft type configuration of a partition group: record batches
//! in, their offsets out.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{NodeId, NodeInfo};

/// A normal entry's payload: one record batch's bytes, exactly as the
/// producer sent them (checked by `RecordBatch::parse` when it is stored).
///
/// Its `Debug` shows the length only: record contents never reach a log.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BatchBytes(pub Bytes);

impl std::fmt::Debug for BatchBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchBytes({} bytes)", self.0.len())
    }
}

/// openraft prints entries it traces: the length only, never the records.
impl std::fmt::Display for BatchBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record batch of {} bytes", self.0.len())
    }
}

impl Serialize for BatchBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for BatchBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = BatchBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record batch's bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(BatchBytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(BatchBytes(Bytes::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(BatchBytes(Bytes::from(out)))
            }
        }
        // Owned: a batch may be larger than a decoder's scratch buffer for
        // borrowed bytes (CBOR's is 4 KiB).
        deserializer.deserialize_byte_buf(Visit)
    }
}

/// What applying an entry answers: where its records are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The offset of the batch's first record (for a control entry, the
    /// offset the next record will get).
    pub base_offset: u64,
    /// Records in the entry (0 for a control entry).
    pub record_count: u32,
}

openraft::declare_raft_types!(
    /// A partition group's openraft type configuration: record batches
    /// ([`BatchBytes`]) in, their offsets ([`Appended`]) out; the same node
    /// ids and addresses as the metadata group, tokio.
    pub PartitionConfig:
        D = BatchBytes,
        R = Appended,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// A log id of a partition group.
pub type PartitionLogId = openraft::type_config::alias::LogIdOf<PartitionConfig>;
/// A vote of a partition group.
pub type PartitionVote = openraft::type_config::alias::VoteOf<PartitionConfig>;
/// A log entry of a partition group.
pub type PartitionEntry = openraft::type_config::alias::EntryOf<PartitionConfig>;
/// A membership with the log id that introduced it.
pub type PartitionMembership = openraft::type_config::alias::StoredMembershipOf<PartitionConfig>;
/// The meta of a partition snapshot.
pub type PartitionSnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<PartitionConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_batch_survives_cbor_as_the_group_transport_sends_it() {
        // Larger than the CBOR decoder's 4 KiB scratch buffer for borrowed
        // bytes: decoded as owned bytes.
        let b = BatchBytes(Bytes::from(vec![0xA5; 1 << 20]));
        let mut wire = Vec::new();
        ciborium::into_writer(&b, &mut wire).expect("encode");
        assert!(
            wire.len() < (1 << 20) + 16,
            "bytes, not a sequence of numbers"
        );
        let back: BatchBytes = ciborium::from_reader(&wire[..]).expect("decode");
        assert_eq!(back, b);
    }

    #[test]
    fn batch_bytes_survive_json_and_hide_their_contents() {
        let b = BatchBytes(Bytes::from_static(b"secret record"));
        let json = serde_json::to_string(&b).expect("encode");
        let back: BatchBytes = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, b);
        assert_eq!(format!("{b:?}"), "BatchBytes(13 bytes)");
    }
}
