//! The on-disk formats of a replicated partition, whose segments are its
//! Raft group's log (docs/ARCHITECTURE.md, "Replicated partitions").
//!
//! docs/STORAGE.md ("Replicated segments") is the same specification in
//! prose. All integers are big-endian. Every decoder takes untrusted bytes
//! and returns a [`FormatError`], never panics.
//!
//! A replicated partition's segments set [`FLAG_RAFT_FRAMES`] in their
//! header (whose layout does not change). In such a segment the header's
//! `base_offset`, the file names, the envelope's `base_offset` and the
//! seal's `next_offset` count **Raft indexes**, not record offsets (a
//! control frame holds no record, so offsets cannot name segments); record
//! offsets live in the frames.
//!
//! ## Raft frame (one Raft entry)
//!
//! ```text
//! offset size field
//!      0    4 len            bytes of ciphertext + tag after this 44-byte
//!                            header (0xFFFF_FFFF never: it starts a seal)
//!      4    8 index          the entry's Raft log index
//!     12    8 term           \ its leader id: openraft's leader_id_adv
//!     20    8 node_id        /
//!     28    1 kind           0 records, 1 blank, 2 membership
//!     29    3 reserved       zero
//!     32    8 base_offset    records: offset of the batch's first record;
//!                            control: the offset the next record will get
//!     40    4 record_count   records: at least 1; control: 0
//!     44  len sealed         AES-256-GCM ciphertext of the payload (records:
//!                            the batch; blank: nothing; membership: the
//!                            membership as the cluster crate encodes it),
//!                            then the 16-byte tag
//! ```
//!
//! Nonce (12 bytes): `00 00 00 01 ‖ index (u64)`.
//! AAD (75 bytes): `version 2 (u16) ‖ topic_id ‖ partition (u32) ‖
//! segment_id ‖ index ‖ term ‖ node_id ‖ kind (u8) ‖ base_offset ‖
//! record_count (u32)`.
//!
//! ## State file (`raft.state`, written atomically)
//!
//! ```text
//!      0    4 magic          "SBRS"
//!      4    2 version        1
//!      6    2 flags          bit 0 vote present, bit 1 the vote is
//!                            committed, bit 2 committed present, bit 3
//!                            last_purged present; other bits zero
//!      8   16 topic_id
//!     24    4 partition
//!     28    8 vote term      \ zero when absent
//!     36    8 vote node_id   /
//!     44    8 committed term     \
//!     52    8 committed node_id   | a lower bound of the committed log id
//!     60    8 committed index    /  (zero when absent)
//!     68    8 purged term        \
//!     76    8 purged node_id      | the last purged log id (zero when absent)
//!     84    8 purged index       /
//!     92    8 log_start_offset   the offset of the first record after the
//!                                purged entries
//!    100    8 written_at_ms      i64
//!    108    4 meta_len m         0..=65536
//!    112    m snapshot_meta      the caller's snapshot meta (the cluster
//!                                crate's: its last log id, membership and
//!                                log start offset, JSON); opaque here
//!  112+m    4 crc32c             CRC-32C of every byte before it
//! ```

use super::format::{FormatError, Reader, SEAL_MARKER};
use crate::aead::{NONCE_LEN, TAG_LEN};

/// Segment header flag: the frames are Raft frames (a replicated
/// partition). Never set together with the benchmark-only plaintext flag.
pub const FLAG_RAFT_FRAMES: u16 = 0x0002;
/// Bytes in a Raft frame header.
pub const RAFT_FRAME_HEADER_LEN: usize = 44;
/// The version field at the start of a Raft frame's AAD (a version-1
/// frame's AAD starts with 1).
pub const RAFT_AAD_VERSION: u16 = 2;
/// Bytes in a Raft frame's AAD.
pub const RAFT_AAD_LEN: usize = 75;
/// The first four bytes of a Raft frame's nonce (a version-1 frame's are
/// zero).
pub const RAFT_NONCE_PREFIX: [u8; 4] = [0, 0, 0, 1];
/// The largest control payload (an encoded membership): 64 KiB.
pub const MAX_CONTROL_LEN: usize = 64 * 1024;
/// The name of a replicated partition's state file.
pub const RAFT_STATE_FILE: &str = "raft.state";
/// First four bytes of the state file.
pub const RAFT_STATE_MAGIC: [u8; 4] = *b"SBRS";
/// The state file's format version.
pub const RAFT_STATE_VERSION: u16 = 1;
/// Bytes of the state file before the snapshot meta.
pub const RAFT_STATE_FIXED_LEN: usize = 112;

const STATE_VOTE: u16 = 0x0001;
const STATE_VOTE_COMMITTED: u16 = 0x0002;
const STATE_COMMITTED: u16 = 0x0004;
const STATE_PURGED: u16 = 0x0008;
const STATE_FLAGS: u16 = STATE_VOTE | STATE_VOTE_COMMITTED | STATE_COMMITTED | STATE_PURGED;

/// A Raft log id as storage keeps it: openraft's advanced leader id (term,
/// node id) and the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RaftLogId {
    /// The leader's term.
    pub term: u64,
    /// The leader's node id.
    pub node_id: u64,
    /// The entry's index.
    pub index: u64,
}

/// What a Raft frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RaftFrameKind {
    /// A record batch (openraft's normal entry).
    Records = 0,
    /// openraft's blank entry: no payload.
    Blank = 1,
    /// openraft's membership entry: the encoded membership.
    Membership = 2,
}

impl RaftFrameKind {
    /// The kind stored as `byte`.
    ///
    /// # Errors
    ///
    /// [`FormatError::Invalid`] for a byte that names no kind.
    pub fn from_byte(byte: u8) -> Result<Self, FormatError> {
        match byte {
            0 => Ok(Self::Records),
            1 => Ok(Self::Blank),
            2 => Ok(Self::Membership),
            other => Err(FormatError::Invalid {
                field: "kind",
                detail: format!("{other} names no frame kind"),
            }),
        }
    }

    /// The payload lengths this kind allows.
    fn payload_range(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Self::Records => super::format::MIN_BATCH_LEN..=super::format::MAX_BATCH_LEN,
            Self::Blank => 0..=0,
            Self::Membership => 1..=MAX_CONTROL_LEN,
        }
    }
}

/// The plaintext header of one Raft frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftFrameHeader {
    /// Bytes of ciphertext and tag after the header.
    pub len: u32,
    /// The entry's log id.
    pub log_id: RaftLogId,
    /// What the frame holds.
    pub kind: RaftFrameKind,
    /// Records: the batch's first offset; control: the next record's.
    pub base_offset: u64,
    /// Records in the batch; 0 for a control frame.
    pub record_count: u32,
}

impl RaftFrameHeader {
    /// The header of a frame holding `payload_len` bytes of `kind`.
    ///
    /// # Errors
    ///
    /// [`FormatError::Invalid`] for a payload length the kind does not
    /// allow, a record count that does not fit the kind (a batch has at
    /// least one record, a control frame none), or offsets that overflow.
    pub fn new(
        kind: RaftFrameKind,
        payload_len: usize,
        log_id: RaftLogId,
        base_offset: u64,
        record_count: u32,
    ) -> Result<Self, FormatError> {
        let len = payload_len
            .checked_add(TAG_LEN)
            .and_then(|l| u32::try_from(l).ok())
            .ok_or_else(|| FormatError::Invalid {
                field: "len",
                detail: "over 4 GiB".into(),
            })?;
        let header = Self {
            len,
            log_id,
            kind,
            base_offset,
            record_count,
        };
        header.check()?;
        Ok(header)
    }

    /// The 44 header bytes.
    pub fn encode(&self) -> [u8; RAFT_FRAME_HEADER_LEN] {
        let mut out = [0u8; RAFT_FRAME_HEADER_LEN];
        let mut w = Put::new(&mut out);
        w.put(&self.len.to_be_bytes());
        w.put(&self.log_id.index.to_be_bytes());
        w.put(&self.log_id.term.to_be_bytes());
        w.put(&self.log_id.node_id.to_be_bytes());
        w.put(&[self.kind as u8, 0, 0, 0]);
        w.put(&self.base_offset.to_be_bytes());
        w.put(&self.record_count.to_be_bytes());
        out
    }

    /// Decodes a frame header and checks that its length, kind, count and
    /// offsets are plausible. Says nothing about authenticity: only
    /// decryption does.
    ///
    /// # Errors
    ///
    /// [`FormatError::SealMarker`] when the bytes start a seal; otherwise a
    /// [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let len = r.u32()?;
        if len == SEAL_MARKER {
            return Err(FormatError::SealMarker);
        }
        let index = r.u64()?;
        let term = r.u64()?;
        let node_id = r.u64()?;
        let kind = RaftFrameKind::from_byte(r.u8()?)?;
        let reserved = r.array::<3>()?;
        if reserved != [0; 3] {
            return Err(FormatError::Invalid {
                field: "reserved",
                detail: format!("{reserved:02x?}, must be zero"),
            });
        }
        let header = Self {
            len,
            log_id: RaftLogId {
                term,
                node_id,
                index,
            },
            kind,
            base_offset: r.u64()?,
            record_count: r.u32()?,
        };
        header.check()?;
        Ok(header)
    }

    fn check(&self) -> Result<(), FormatError> {
        let payload = usize::try_from(self.len)
            .ok()
            .and_then(|l| l.checked_sub(TAG_LEN));
        if !payload.is_some_and(|p| self.kind.payload_range().contains(&p)) {
            return Err(FormatError::Invalid {
                field: "frame length",
                detail: format!(
                    "{} bytes for a {:?} frame, allowed {:?} plus the tag",
                    self.len,
                    self.kind,
                    self.kind.payload_range()
                ),
            });
        }
        match (self.kind, self.record_count) {
            (RaftFrameKind::Records, 0) => Err(FormatError::Invalid {
                field: "record_count",
                detail: "zero in a record frame".into(),
            }),
            (RaftFrameKind::Blank | RaftFrameKind::Membership, n) if n != 0 => {
                Err(FormatError::Invalid {
                    field: "record_count",
                    detail: format!("{n} in a control frame, which holds no record"),
                })
            }
            _ if self.next_offset().is_none() => Err(FormatError::Invalid {
                field: "base_offset",
                detail: "its records would overflow the offsets".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Bytes of the whole frame, header included.
    pub fn frame_len(&self) -> u64 {
        RAFT_FRAME_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Bytes of the plaintext payload.
    pub fn payload_len(&self) -> usize {
        usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_sub(TAG_LEN)
    }

    /// The offset after the frame's records (its `base_offset` for a
    /// control frame), if it fits in a `u64`.
    pub fn next_offset(&self) -> Option<u64> {
        self.base_offset.checked_add(u64::from(self.record_count))
    }
}

/// The GCM nonce of the Raft frame at `index`.
///
/// Unique under a segment's key because a segment's frames have strictly
/// increasing Raft indexes (an append takes the index after the last; a
/// truncation or a purge past the end starts a new segment with a new key)
/// and a segment is never appended to again once it stops being active.
pub fn raft_frame_nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    let mut w = Put::new(&mut out);
    w.put(&RAFT_NONCE_PREFIX);
    w.put(&index.to_be_bytes());
    out
}

/// The AAD that binds a Raft frame's header to its topic, partition and
/// segment.
pub fn raft_frame_aad(
    topic_id: &[u8; 16],
    partition: u32,
    segment_id: &[u8; 16],
    header: &RaftFrameHeader,
) -> [u8; RAFT_AAD_LEN] {
    let mut out = [0u8; RAFT_AAD_LEN];
    let mut w = Put::new(&mut out);
    w.put(&RAFT_AAD_VERSION.to_be_bytes());
    w.put(topic_id);
    w.put(&partition.to_be_bytes());
    w.put(segment_id);
    w.put(&header.log_id.index.to_be_bytes());
    w.put(&header.log_id.term.to_be_bytes());
    w.put(&header.log_id.node_id.to_be_bytes());
    w.put(&[header.kind as u8]);
    w.put(&header.base_offset.to_be_bytes());
    w.put(&header.record_count.to_be_bytes());
    out
}

/// openraft's vote as storage keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftVote {
    /// The term voted in.
    pub term: u64,
    /// The node voted for (or the leader, once committed).
    pub node_id: u64,
    /// Whether a quorum granted it.
    pub committed: bool,
}

/// The contents of a replicated partition's state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftState {
    /// The topic's id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The last saved vote.
    pub vote: Option<RaftVote>,
    /// A committed log id known when the file was written (a lower bound).
    pub committed: Option<RaftLogId>,
    /// The last purged log id.
    pub last_purged: Option<RaftLogId>,
    /// The offset of the first record after the purged entries.
    pub log_start_offset: u64,
    /// When the file was written, ms since the Unix epoch.
    pub written_at_ms: i64,
    /// The caller's snapshot meta (its last log id, membership and log
    /// start; the cluster crate's JSON), opaque here; empty when none was
    /// stored.
    pub snapshot_meta: Vec<u8>,
}

impl RaftState {
    /// The file's bytes.
    ///
    /// # Errors
    ///
    /// [`FormatError::Invalid`] for a snapshot meta over [`MAX_CONTROL_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        if self.snapshot_meta.len() > MAX_CONTROL_LEN {
            return Err(FormatError::Invalid {
                field: "meta_len",
                detail: format!(
                    "{} bytes, at most {MAX_CONTROL_LEN}",
                    self.snapshot_meta.len()
                ),
            });
        }
        let mut flags = 0u16;
        let vote = self.vote.unwrap_or(RaftVote {
            term: 0,
            node_id: 0,
            committed: false,
        });
        if let Some(v) = self.vote {
            flags |= STATE_VOTE;
            if v.committed {
                flags |= STATE_VOTE_COMMITTED;
            }
        }
        let zero = RaftLogId {
            term: 0,
            node_id: 0,
            index: 0,
        };
        if self.committed.is_some() {
            flags |= STATE_COMMITTED;
        }
        if self.last_purged.is_some() {
            flags |= STATE_PURGED;
        }
        let committed = self.committed.unwrap_or(zero);
        let purged = self.last_purged.unwrap_or(zero);
        let mut out = Vec::with_capacity(RAFT_STATE_FIXED_LEN + self.snapshot_meta.len() + 4);
        out.extend_from_slice(&RAFT_STATE_MAGIC);
        out.extend_from_slice(&RAFT_STATE_VERSION.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&self.topic_id);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&vote.term.to_be_bytes());
        out.extend_from_slice(&vote.node_id.to_be_bytes());
        for id in [committed, purged] {
            out.extend_from_slice(&id.term.to_be_bytes());
            out.extend_from_slice(&id.node_id.to_be_bytes());
            out.extend_from_slice(&id.index.to_be_bytes());
        }
        out.extend_from_slice(&self.log_start_offset.to_be_bytes());
        out.extend_from_slice(&self.written_at_ms.to_be_bytes());
        // Checked against MAX_CONTROL_LEN above.
        let m = u32::try_from(self.snapshot_meta.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&m.to_be_bytes());
        out.extend_from_slice(&self.snapshot_meta);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Decodes and checks a state file: magic, version, flags, lengths, no
    /// trailing bytes, zero fields where absent, CRC.
    ///
    /// # Errors
    ///
    /// [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>()?;
        if magic != RAFT_STATE_MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = r.u16()?;
        if version != RAFT_STATE_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = r.u16()?;
        if flags & !STATE_FLAGS != 0
            || (flags & STATE_VOTE_COMMITTED != 0 && flags & STATE_VOTE == 0)
        {
            return Err(FormatError::UnknownFlags(flags));
        }
        let topic_id = r.array()?;
        let partition = r.u32()?;
        let vote_term = r.u64()?;
        let vote_node = r.u64()?;
        let mut ids = [(0u64, 0u64, 0u64); 2];
        for id in &mut ids {
            *id = (r.u64()?, r.u64()?, r.u64()?);
        }
        let log_start_offset = r.u64()?;
        let written_at_ms = r.i64()?;
        let m = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if m > MAX_CONTROL_LEN {
            return Err(FormatError::Invalid {
                field: "meta_len",
                detail: format!("{m} bytes, at most {MAX_CONTROL_LEN}"),
            });
        }
        let snapshot_meta = r.take(m)?.to_vec();
        let body_len = bytes.len().saturating_sub(r.remaining());
        let stored = r.u32()?;
        if r.remaining() != 0 {
            return Err(FormatError::Invalid {
                field: "length",
                detail: format!("{} bytes after the checksum", r.remaining()),
            });
        }
        let computed = crc32c::crc32c(bytes.get(..body_len).unwrap_or_default());
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let present = |bit: u16, fields: &[u64], name: &'static str| {
            if flags & bit != 0 {
                Ok(true)
            } else if fields.iter().all(|f| *f == 0) {
                Ok(false)
            } else {
                Err(FormatError::Invalid {
                    field: name,
                    detail: "absent but not zero".into(),
                })
            }
        };
        let [(ct, cn, ci), (pt, pn, pi)] = ids;
        let vote = present(STATE_VOTE, &[vote_term, vote_node], "vote")?.then_some(RaftVote {
            term: vote_term,
            node_id: vote_node,
            committed: flags & STATE_VOTE_COMMITTED != 0,
        });
        let committed =
            present(STATE_COMMITTED, &[ct, cn, ci], "committed")?.then_some(RaftLogId {
                term: ct,
                node_id: cn,
                index: ci,
            });
        let last_purged =
            present(STATE_PURGED, &[pt, pn, pi], "last_purged")?.then_some(RaftLogId {
                term: pt,
                node_id: pn,
                index: pi,
            });
        Ok(Self {
            topic_id,
            partition,
            vote,
            committed,
            last_purged,
            log_start_offset,
            written_at_ms,
            snapshot_meta,
        })
    }
}

/// Writes into a fixed buffer whose size the caller computed; the golden
/// tests pin every layout.
struct Put<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Put<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
            self.pos = end;
        } else {
            debug_assert!(false, "format writer overflow");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(term: u64, node_id: u64, index: u64) -> RaftLogId {
        RaftLogId {
            term,
            node_id,
            index,
        }
    }

    #[test]
    fn kinds_and_counts_must_agree() {
        let min = super::super::format::MIN_BATCH_LEN;
        assert!(RaftFrameHeader::new(RaftFrameKind::Records, min, id(1, 1, 1), 0, 1).is_ok());
        assert!(RaftFrameHeader::new(RaftFrameKind::Records, min, id(1, 1, 1), 0, 0).is_err());
        assert!(RaftFrameHeader::new(RaftFrameKind::Records, min - 1, id(1, 1, 1), 0, 1).is_err());
        assert!(RaftFrameHeader::new(RaftFrameKind::Blank, 0, id(1, 1, 1), 9, 0).is_ok());
        assert!(RaftFrameHeader::new(RaftFrameKind::Blank, 1, id(1, 1, 1), 9, 0).is_err());
        assert!(RaftFrameHeader::new(RaftFrameKind::Blank, 0, id(1, 1, 1), 9, 1).is_err());
        assert!(RaftFrameHeader::new(RaftFrameKind::Membership, 0, id(1, 1, 1), 9, 0).is_err());
        assert!(
            RaftFrameHeader::new(
                RaftFrameKind::Membership,
                MAX_CONTROL_LEN + 1,
                id(1, 1, 1),
                9,
                0
            )
            .is_err()
        );
        assert!(
            RaftFrameHeader::new(RaftFrameKind::Records, min, id(1, 1, 1), u64::MAX, 1).is_err()
        );
    }

    #[test]
    fn damage_to_a_frame_header_is_refused() {
        let h = RaftFrameHeader::new(RaftFrameKind::Blank, 0, id(2, 3, 4), 5, 0).expect("blank");
        let bytes = h.encode();
        assert_eq!(RaftFrameHeader::decode(&bytes), Ok(h));
        assert!(matches!(
            RaftFrameHeader::decode(&bytes[..43]),
            Err(FormatError::Truncated { .. })
        ));
        let mut bad = bytes;
        bad[28] = 3;
        assert!(RaftFrameHeader::decode(&bad).is_err(), "unknown kind");
        let mut bad = bytes;
        bad[30] = 1;
        assert!(RaftFrameHeader::decode(&bad).is_err(), "reserved byte");
        let mut bad = bytes;
        bad[..4].copy_from_slice(&SEAL_MARKER.to_be_bytes());
        assert_eq!(RaftFrameHeader::decode(&bad), Err(FormatError::SealMarker));
    }

    #[test]
    fn the_state_file_refuses_each_damage() {
        let s = RaftState {
            topic_id: [1; 16],
            partition: 2,
            vote: Some(RaftVote {
                term: 3,
                node_id: 4,
                committed: true,
            }),
            committed: None,
            last_purged: Some(id(5, 6, 7)),
            log_start_offset: 8,
            written_at_ms: 9,
            snapshot_meta: b"{}".to_vec(),
        };
        let bytes = s.encode().expect("encode");
        assert_eq!(RaftState::decode(&bytes), Ok(s.clone()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RaftState::decode(&longer).is_err(), "trailing byte");
        assert!(RaftState::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[50] ^= 1;
        assert!(matches!(
            RaftState::decode(&bad),
            Err(FormatError::Checksum { .. })
        ));
        let mut bad = bytes.clone();
        bad[7] |= 0x10;
        assert!(matches!(
            RaftState::decode(&bad),
            Err(FormatError::UnknownFlags(_))
        ));
        let mut bad = bytes;
        bad[5] = 2;
        assert_eq!(
            RaftState::decode(&bad),
            Err(FormatError::UnsupportedVersion(2))
        );
        let big = RaftState {
            snapshot_meta: vec![0; MAX_CONTROL_LEN + 1],
            ..s
        };
        assert!(big.encode().is_err());
    }

    fn any_kind() -> impl Strategy<Value = RaftFrameKind> {
        prop_oneof![
            Just(RaftFrameKind::Records),
            Just(RaftFrameKind::Blank),
            Just(RaftFrameKind::Membership)
        ]
    }

    fn any_log_id() -> impl Strategy<Value = Option<RaftLogId>> {
        proptest::option::of(
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(t, n, i)| id(t, n, i)),
        )
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RaftFrameHeader::decode(&bytes);
            let _ = RaftState::decode(&bytes);
        }

        #[test]
        fn frame_headers_round_trip(kind in any_kind(), len in 0usize..100_000, term: u64,
                                    node: u64, index: u64, base in 0u64..u64::MAX / 2,
                                    count in 0u32..10_000) {
            let count = if kind == RaftFrameKind::Records { count.max(1) } else { 0 };
            match RaftFrameHeader::new(kind, len, id(term, node, index), base, count) {
                Ok(h) => {
                    prop_assert_eq!(RaftFrameHeader::decode(&h.encode()), Ok(h));
                    prop_assert_eq!(h.payload_len(), len);
                    prop_assert_eq!(h.frame_len(), (RAFT_FRAME_HEADER_LEN + len + TAG_LEN) as u64);
                }
                Err(_) => prop_assert!(!kind.payload_range().contains(&len)),
            }
        }

        #[test]
        fn a_frame_header_decodes_only_what_new_accepts(bytes in any::<[u8; RAFT_FRAME_HEADER_LEN]>()) {
            if let Ok(h) = RaftFrameHeader::decode(&bytes) {
                prop_assert_eq!(h.encode(), bytes);
                let again = RaftFrameHeader::new(h.kind, h.payload_len(), h.log_id,
                                                 h.base_offset, h.record_count);
                prop_assert_eq!(again, Ok(h));
            }
        }

        #[test]
        fn state_files_round_trip(topic in any::<[u8; 16]>(), partition: u32,
                                  vote in proptest::option::of((any::<u64>(), any::<u64>(), any::<bool>())),
                                  committed in any_log_id(), purged in any_log_id(),
                                  start: u64, at: i64,
                                  snapshot_meta in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = RaftState {
                topic_id: topic,
                partition,
                vote: vote.map(|(term, node_id, committed)| RaftVote { term, node_id, committed }),
                committed,
                last_purged: purged,
                log_start_offset: start,
                written_at_ms: at,
                snapshot_meta,
            };
            let bytes = s.encode().expect("encode");
            prop_assert_eq!(bytes.len(), RAFT_STATE_FIXED_LEN + s.snapshot_meta.len() + 4);
            prop_assert_eq!(RaftState::decode(&bytes), Ok(s));
        }

        #[test]
        fn nonces_differ_per_index_and_from_version_one(a: u64, b: u64) {
            prop_assert_eq!(raft_frame_nonce(a) == raft_frame_nonce(b), a == b);
            prop_assert_ne!(raft_frame_nonce(a), super::super::format::frame_nonce(b));
        }
    }
}
