//! The metadata snapshot's bytes: what a leader sends a node that is too
//! far behind, and what each node keeps as `<data dir>/raft/snapshot.v1`.
//!
//! ```text
//! offset  size      field
//! 0       8         magic "SBXMSNAP"
//! 8       2         format version, u16 little-endian: 1
//! 10      2         flags, u16 LE: 0 (anything else is refused)
//! 12      4         meta length M, u32 LE
//! 16      8         body length B, u64 LE
//! 24      M         meta: openraft's SnapshotMeta as JSON
//!                   {last_log_id, last_membership: {log_id, membership}, snapshot_id: ""}
//! 24+M    B         body: the replicated tables as JSON
//!                   (strongbox_storage::meta::ReplicatedTables)
//! 24+M+B  4         CRC-32C of every byte before it, u32 LE
//! ```
//!
//! Only the replicated tables are in it (see `strongbox_storage::meta`,
//! "What a cluster replicates"); the node-local ones never leave a node.
//! Decoding checks every length against the input with checked arithmetic
//! and the checksum before it parses anything, and refuses trailing bytes.

use serde::{Deserialize, Serialize};
use strongbox_storage::meta::ReplicatedTables;

use crate::types::SnapshotMeta;

/// The first eight bytes of a snapshot.
pub const MAGIC: [u8; 8] = *b"SBXMSNAP";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before the meta.
pub const HEADER_LEN: usize = 24;
const CRC_LEN: usize = 4;

/// Why snapshot bytes were refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    /// Shorter than a header and a checksum, or than its lengths say.
    #[error("metadata snapshot is truncated: {have} bytes, {need} needed")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// Longer than its lengths say.
    #[error("metadata snapshot has {0} bytes after its checksum")]
    TrailingBytes(u64),
    /// Not a metadata snapshot.
    #[error("not a metadata snapshot (bad magic)")]
    BadMagic,
    /// A version or flags this build does not know.
    #[error(
        "metadata snapshot format version {version} flags {flags:#x} is not supported \
         (this build reads version {VERSION}, flags 0): upgrade this node"
    )]
    Unsupported {
        /// The version.
        version: u16,
        /// The flags.
        flags: u16,
    },
    /// The checksum does not match.
    #[error(
        "metadata snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    Checksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// The meta or body is not what it should be.
    #[error("metadata snapshot {part} does not decode: {reason}")]
    Decode {
        /// `meta` or `body`.
        part: &'static str,
        /// Why.
        reason: String,
    },
    /// The meta or body could not be encoded.
    #[error("cannot encode the metadata snapshot: {0}")]
    Encode(String),
}

/// The body of a snapshot: the replicated tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The replicated tables.
    pub tables: ReplicatedTables,
}

/// Encodes a snapshot.
///
/// # Errors
///
/// [`SnapshotFormatError::Encode`].
pub fn encode(meta: &SnapshotMeta, body: &SnapshotBody) -> Result<Vec<u8>, SnapshotFormatError> {
    let m = serde_json::to_vec(meta).map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    let b = serde_json::to_vec(body).map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    let m_len = u32::try_from(m.len()).map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    let b_len = u64::try_from(b.len()).map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + m.len() + b.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&m_len.to_le_bytes());
    out.extend_from_slice(&b_len.to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(&b);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], SnapshotFormatError> {
    bytes
        .get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(SnapshotFormatError::Truncated {
            need: (at as u64).saturating_add(N as u64),
            have: bytes.len() as u64,
        })
}

/// Decodes only the meta of a snapshot (checksum included).
///
/// # Errors
///
/// Any [`SnapshotFormatError`].
pub fn decode_meta(bytes: &[u8]) -> Result<SnapshotMeta, SnapshotFormatError> {
    let (meta, _) = split(bytes)?;
    serde_json::from_slice(meta).map_err(|e| SnapshotFormatError::Decode {
        part: "meta",
        reason: e.to_string(),
    })
}

/// Decodes a whole snapshot.
///
/// # Errors
///
/// Any [`SnapshotFormatError`].
pub fn decode(bytes: &[u8]) -> Result<(SnapshotMeta, SnapshotBody), SnapshotFormatError> {
    let (meta, body) = split(bytes)?;
    let meta = serde_json::from_slice(meta).map_err(|e| SnapshotFormatError::Decode {
        part: "meta",
        reason: e.to_string(),
    })?;
    let body = serde_json::from_slice(body).map_err(|e| SnapshotFormatError::Decode {
        part: "body",
        reason: e.to_string(),
    })?;
    Ok((meta, body))
}

/// Checks the framing and the checksum; returns the meta and body bytes.
fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), SnapshotFormatError> {
    let have = bytes.len() as u64;
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(SnapshotFormatError::Truncated {
            need: (HEADER_LEN + CRC_LEN) as u64,
            have,
        });
    }
    if take::<8>(bytes, 0)? != MAGIC {
        return Err(SnapshotFormatError::BadMagic);
    }
    let version = u16::from_le_bytes(take(bytes, 8)?);
    let flags = u16::from_le_bytes(take(bytes, 10)?);
    if version != VERSION || flags != 0 {
        return Err(SnapshotFormatError::Unsupported { version, flags });
    }
    let m_len = u64::from(u32::from_le_bytes(take(bytes, 12)?));
    let b_len = u64::from_le_bytes(take(bytes, 16)?);
    let need = (HEADER_LEN as u64)
        .checked_add(m_len)
        .and_then(|n| n.checked_add(b_len))
        .and_then(|n| n.checked_add(CRC_LEN as u64))
        .ok_or(SnapshotFormatError::Truncated {
            need: u64::MAX,
            have,
        })?;
    if have < need {
        return Err(SnapshotFormatError::Truncated { need, have });
    }
    if have > need {
        return Err(SnapshotFormatError::TrailingBytes(have - need));
    }
    // `need == have` fits in usize from here on.
    let m_end = HEADER_LEN.saturating_add(usize::try_from(m_len).unwrap_or(usize::MAX));
    let crc_at = bytes.len().saturating_sub(CRC_LEN);
    let stored = u32::from_le_bytes(take(bytes, crc_at)?);
    let covered = bytes.get(..crc_at).unwrap_or_default();
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(SnapshotFormatError::Checksum { stored, computed });
    }
    let meta = bytes.get(HEADER_LEN..m_end).unwrap_or_default();
    let body = bytes.get(m_end..crc_at).unwrap_or_default();
    Ok((meta, body))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{Membership, StoredMembership};

    use super::*;
    use crate::types::{NodeInfo, TypeConfig};

    fn meta() -> SnapshotMeta {
        let log_id = openraft::testing::log_id::<TypeConfig>(2, 1, 7);
        let nodes = BTreeMap::from([(
            1u64,
            NodeInfo {
                peer_addr: "127.0.0.1:7001".into(),
                client_addr: "127.0.0.1:9001".into(),
            },
        )]);
        let membership = Membership::new(vec![BTreeSet::from([1u64])], nodes).expect("membership");
        SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(
                Some(openraft::testing::log_id::<TypeConfig>(1, 1, 1)),
                membership,
            ),
        }
    }

    /// The exact bytes of a snapshot with an empty body: a change to any
    /// of them is a format change (a new version).
    #[test]
    fn golden_header_and_meta() {
        let bytes = encode(&meta(), &SnapshotBody::default()).expect("encode");
        let expected_meta = concat!(
            r#"{"last_log_id":{"leader_id":{"term":2,"node_id":1},"index":7},"#,
            r#""last_membership":{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"#,
            r#""membership":{"configs":[[1]],"nodes":{"1":{"peer_addr":"127.0.0.1:7001","#,
            r#""client_addr":"127.0.0.1:9001"}}}},"snapshot_id":""}"#
        );
        let expected_body = concat!(
            r#"{"tables":{"topics":[],"partition_assignments":[],"group_offsets":[],"#,
            r#""producers":[],"acls":[],"access_requests":[],"recipients":[],"#,
            r#""key_policies":[],"counters":[]}}"#
        );
        let mut header = Vec::new();
        header.extend_from_slice(b"SBXMSNAP");
        header.extend_from_slice(&[1, 0, 0, 0]);
        header.extend_from_slice(
            &u32::try_from(expected_meta.len())
                .expect("len")
                .to_le_bytes(),
        );
        header.extend_from_slice(
            &u64::try_from(expected_body.len())
                .expect("len")
                .to_le_bytes(),
        );
        assert_eq!(bytes.get(..HEADER_LEN), Some(header.as_slice()));
        let meta_end = HEADER_LEN + expected_meta.len();
        assert_eq!(
            std::str::from_utf8(bytes.get(HEADER_LEN..meta_end).expect("meta")).expect("utf8"),
            expected_meta
        );
        let body_end = meta_end + expected_body.len();
        assert_eq!(
            std::str::from_utf8(bytes.get(meta_end..body_end).expect("body")).expect("utf8"),
            expected_body
        );
        assert_eq!(bytes.len(), body_end + 4);
        let (m, b) = decode(&bytes).expect("decode");
        assert_eq!(m, meta());
        assert_eq!(b, SnapshotBody::default());
    }

    #[test]
    fn damaged_snapshots_are_refused_without_panicking() {
        let bytes = encode(&meta(), &SnapshotBody::default()).expect("encode");
        // Every truncation.
        for n in 0..bytes.len() {
            assert!(
                decode(bytes.get(..n).expect("prefix")).is_err(),
                "prefix {n}"
            );
        }
        // Every single-bit flip.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            if let Some(b) = bad.get_mut(i) {
                *b ^= 0x10;
            }
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(SnapshotFormatError::TrailingBytes(1))
        ));
        // Lengths that overflow.
        let mut huge = bytes;
        if let Some(len) = huge.get_mut(16..24) {
            len.copy_from_slice(&u64::MAX.to_le_bytes());
        }
        assert!(matches!(
            decode(&huge),
            Err(SnapshotFormatError::Truncated { .. })
        ));
    }
}
