//! The on-disk formats of the partition log, byte by byte.
//!
//! docs/STORAGE.md is the same specification in prose. All integers are
//! big-endian. Every decoder here takes untrusted bytes: it checks lengths
//! before reading and returns a [`FormatError`], never panics.
//!
//! ## Segment header (64 bytes, plaintext, at the start of `{base:020}.log`)
//!
//! ```text
//! offset size field
//!      0    4 magic          "SBLG"
//!      4    2 version        1
//!      6    2 flags          bit 0: frames are NOT encrypted (benchmarks
//!                            only; refused by `PartitionLog::open`);
//!                            bit 1: the frames are Raft frames of a
//!                            replicated partition (`raft_format.rs`;
//!                            never with bit 0); other bits zero
//!      8   16 topic_id
//!     24    4 partition
//!     28   16 segment_id     128 random bits, new for every segment
//!     44    8 base_offset    offset of the first record in the segment
//!     52    8 created_at_ms  i64, milliseconds since the Unix epoch
//!     60    4 crc32c         CRC-32C of bytes 0..60
//! ```
//!
//! ## Frame (one record batch)
//!
//! ```text
//!      0    4 len            bytes of ciphertext + tag that follow the
//!                            16-byte frame header (0xFFFF_FFFF never: that
//!                            value starts a seal)
//!      4    8 base_offset    offset of the batch's first record
//!     12    4 record_count   records in the batch
//!     16  len sealed         AES-256-GCM ciphertext of the batch, then the
//!                            16-byte tag
//! ```
//!
//! Nonce (12 bytes): `00 00 00 00 ‖ base_offset (u64)`.
//! AAD (50 bytes): `version (u16) ‖ topic_id ‖ partition (u32) ‖
//! segment_id ‖ base_offset (u64) ‖ record_count (u32)`.
//!
//! ## Seal (80 bytes, after the last frame of a rolled segment)
//!
//! ```text
//!      0    4 marker         0xFFFF_FFFF
//!      4    4 magic          "SBSL"
//!      8    8 next_offset    offset after the segment's last record
//!     16    8 frame_count
//!     24    8 frames_end     file position of this seal
//!     32    8 max_timestamp  i64, largest record timestamp in the segment
//!     40    8 sealed_at_ms   i64
//!     48   32 mac            HMAC-SHA256 under the seal key (HKDF-SHA256 of
//!                            the DEK, salt segment_id, info
//!                            "strongbox/segment-seal/v1") over the 64 header
//!                            bytes followed by seal bytes 0..48
//! ```
//!
//! ## Index entry (24 bytes; `{base:020}.index` is a sequence of them)
//!
//! ```text
//!      0    8 offset         base offset of an indexed frame
//!      8    8 position       file position of that frame
//!     16    8 max_ts_before  i64, largest record timestamp of all frames
//!                            before it in the segment (i64::MIN if none)
//! ```

use std::fmt;

/// The decoders of every on-disk layout read with the protocol's reader.
pub(crate) use strongbox_protocol::codec::Reader;
use strongbox_protocol::error::ReadError;

pub use super::raft_format::FLAG_RAFT_FRAMES;
use crate::aead::{MAC_LEN, NONCE_LEN, TAG_LEN};

/// The log format version written in segment headers, AADs and envelopes.
pub const FORMAT_VERSION: u16 = 1;
/// First four bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"SBLG";
/// Bytes in the segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Segment header flag: the frames hold plaintext (benchmarks only).
pub const FLAG_UNENCRYPTED: u16 = 0x0001;
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// The `len` value that starts a seal instead of a frame.
pub const SEAL_MARKER: u32 = u32::MAX;
/// Magic of a seal, after its marker.
pub const SEAL_MAGIC: [u8; 4] = *b"SBSL";
/// Bytes in a seal.
pub const SEAL_LEN: usize = 80;
/// Bytes of a seal covered by its MAC.
pub const SEAL_SIGNED_LEN: usize = 48;
/// Bytes in an index entry.
pub const INDEX_ENTRY_LEN: usize = 24;
/// Bytes in a frame's AAD.
pub const AAD_LEN: usize = 50;
/// The largest record batch a frame may hold: 64 MiB.
///
/// This is the disk format's own limit, not the wire's: a protocol change
/// does not change what segments accept. It covers the largest batch the
/// wire can carry (asserted below), so every batch a broker accepts can be
/// stored; a protocol that carried larger batches fails this crate's build
/// until the disk format is changed on purpose.
pub const MAX_BATCH_LEN: usize = 64 * 1024 * 1024;
const _: () = assert!(
    MAX_BATCH_LEN >= strongbox_protocol::batch::MAX_WIRE_BATCH_LEN,
    "a frame on disk must hold the largest record batch the wire carries"
);
/// The smallest batch: a header and one minimal record.
pub const MIN_BATCH_LEN: usize =
    strongbox_protocol::batch::BATCH_HEADER_LEN + strongbox_protocol::batch::MIN_RECORD_LEN;

/// Why on-disk bytes did not decode.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated at byte {offset}: need {need} bytes, have {have}")]
    Truncated {
        /// Where the short read started.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The magic number is wrong: this is not that kind of structure.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// What was found.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// Reserved flag bits are set.
    #[error("unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// The checksum does not match the contents.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored CRC.
        stored: u32,
        /// Computed CRC.
        computed: u32,
    },
    /// A field holds a value that cannot be right.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A seal marker where a frame was expected.
    #[error("a seal marker where a frame was expected")]
    SealMarker,
}

impl From<ReadError> for FormatError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Truncated { offset, need, have } => Self::Truncated { offset, need, have },
            // The decoders here read fixed layouts and check their own
            // lengths; these only arise from layouts that hold text or
            // flags, reported as invalid like any other bad field.
            other => Self::Invalid {
                field: "layout",
                detail: other.to_string(),
            },
        }
    }
}

/// The plaintext header at the start of every segment file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Flags: [`FLAG_UNENCRYPTED`] and [`FLAG_RAFT_FRAMES`].
    pub flags: u16,
    /// The topic's 128-bit id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// 128 random bits naming this segment.
    pub segment_id: [u8; 16],
    /// Offset of the segment's first record.
    pub base_offset: u64,
    /// When the segment was created, ms since the Unix epoch.
    pub created_at_ms: i64,
}

impl fmt::Debug for SegmentHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentHeader")
            .field("flags", &self.flags)
            .field("topic_id", &hex::encode(self.topic_id))
            .field("partition", &self.partition)
            .field("segment_id", &hex::encode(self.segment_id))
            .field("base_offset", &self.base_offset)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

impl SegmentHeader {
    /// True unless the benchmark-only plaintext flag is set.
    pub fn encrypted(&self) -> bool {
        self.flags & FLAG_UNENCRYPTED == 0
    }

    /// True when the frames are Raft frames ([`FLAG_RAFT_FRAMES`]): the
    /// segment belongs to a replicated partition.
    pub fn raft_frames(&self) -> bool {
        self.flags & FLAG_RAFT_FRAMES != 0
    }

    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&SEGMENT_MAGIC);
        w.put(&FORMAT_VERSION.to_be_bytes());
        w.put(&self.flags.to_be_bytes());
        w.put(&self.topic_id);
        w.put(&self.partition.to_be_bytes());
        w.put(&self.segment_id);
        w.put(&self.base_offset.to_be_bytes());
        w.put(&self.created_at_ms.to_be_bytes());
        let crc = crc32c::crc32c(w.written());
        w.put(&crc.to_be_bytes());
        out
    }

    /// Decodes and checks a header: length, magic, version, flags, CRC.
    ///
    /// # Errors
    ///
    /// [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>()?;
        if magic != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = r.u16()?;
        let topic_id = r.array()?;
        let partition = r.u32()?;
        let segment_id = r.array()?;
        let base_offset = r.u64()?;
        let created_at_ms = r.i64()?;
        let stored = r.u32()?;
        let computed = crc32c::crc32c(bytes.get(..60).unwrap_or_default());
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        if flags & !(FLAG_UNENCRYPTED | FLAG_RAFT_FRAMES) != 0 {
            return Err(FormatError::UnknownFlags(flags));
        }
        if flags & FLAG_UNENCRYPTED != 0 && flags & FLAG_RAFT_FRAMES != 0 {
            return Err(FormatError::Invalid {
                field: "flags",
                detail: "a replicated partition's segment is always encrypted".into(),
            });
        }
        Ok(Self {
            flags,
            topic_id,
            partition,
            segment_id,
            base_offset,
            created_at_ms,
        })
    }
}

/// The plaintext header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of ciphertext and tag after the header.
    pub len: u32,
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
}

impl FrameHeader {
    /// The header for a batch of `batch_len` bytes.
    ///
    /// # Errors
    ///
    /// [`FormatError::Invalid`] when the batch is outside
    /// `MIN_BATCH_LEN..=MAX_BATCH_LEN` or holds no records.
    pub fn for_batch(
        batch_len: usize,
        base_offset: u64,
        record_count: u32,
    ) -> Result<Self, FormatError> {
        if !(MIN_BATCH_LEN..=MAX_BATCH_LEN).contains(&batch_len) {
            return Err(FormatError::Invalid {
                field: "batch length",
                detail: format!("{batch_len} bytes, allowed {MIN_BATCH_LEN}..={MAX_BATCH_LEN}"),
            });
        }
        if record_count == 0 {
            return Err(FormatError::Invalid {
                field: "record_count",
                detail: "zero".into(),
            });
        }
        let len = u32::try_from(batch_len + TAG_LEN).map_err(|_| FormatError::Invalid {
            field: "len",
            detail: "over 4 GiB".into(),
        })?;
        Ok(Self {
            len,
            base_offset,
            record_count,
        })
    }

    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&self.len.to_be_bytes());
        w.put(&self.base_offset.to_be_bytes());
        w.put(&self.record_count.to_be_bytes());
        out
    }

    /// Decodes a frame header and checks its length and count are
    /// plausible. Says nothing about authenticity: only decryption does.
    ///
    /// # Errors
    ///
    /// [`FormatError::SealMarker`] when the bytes start a seal;
    /// [`FormatError::Invalid`] for an impossible length or a zero count.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let len = r.u32()?;
        if len == SEAL_MARKER {
            return Err(FormatError::SealMarker);
        }
        let base_offset = r.u64()?;
        let record_count = r.u32()?;
        let plain = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_sub(TAG_LEN))
            .unwrap_or(0);
        if !(MIN_BATCH_LEN..=MAX_BATCH_LEN).contains(&plain) {
            return Err(FormatError::Invalid {
                field: "frame length",
                detail: format!("{len}"),
            });
        }
        if record_count == 0 {
            return Err(FormatError::Invalid {
                field: "record_count",
                detail: "zero".into(),
            });
        }
        Ok(Self {
            len,
            base_offset,
            record_count,
        })
    }

    /// Bytes of the whole frame, header included.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Bytes of the plaintext batch.
    pub fn batch_len(&self) -> usize {
        usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_sub(TAG_LEN)
    }

    /// The offset after the batch's last record, if it fits in a `u64`.
    pub fn next_offset(&self) -> Option<u64> {
        self.base_offset.checked_add(u64::from(self.record_count))
    }
}

/// The GCM nonce of the frame whose batch starts at `base_offset`.
///
/// Unique under a segment's key because a segment's frames have strictly
/// increasing base offsets and a segment is never appended to again once it
/// stops being the active segment of the process that created it.
pub fn frame_nonce(base_offset: u64) -> [u8; NONCE_LEN] {
    let mut out = [0u8; NONCE_LEN];
    let mut w = Writer::new(&mut out);
    w.put(&[0u8; 4]);
    w.put(&base_offset.to_be_bytes());
    out
}

/// The AAD that binds a frame to its place.
pub fn frame_aad(
    topic_id: &[u8; 16],
    partition: u32,
    segment_id: &[u8; 16],
    base_offset: u64,
    record_count: u32,
) -> [u8; AAD_LEN] {
    let mut out = [0u8; AAD_LEN];
    let mut w = Writer::new(&mut out);
    w.put(&FORMAT_VERSION.to_be_bytes());
    w.put(topic_id);
    w.put(&partition.to_be_bytes());
    w.put(segment_id);
    w.put(&base_offset.to_be_bytes());
    w.put(&record_count.to_be_bytes());
    out
}

/// The trailer of a rolled segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The offset after the segment's last record.
    pub next_offset: u64,
    /// Frames in the segment.
    pub frame_count: u64,
    /// File position of the seal (the end of the last frame).
    pub frames_end: u64,
    /// The largest record timestamp in the segment.
    pub max_timestamp: i64,
    /// When the segment was sealed, ms since the Unix epoch.
    pub sealed_at_ms: i64,
    /// HMAC-SHA256 over the segment header and seal bytes `0..48`.
    pub mac: [u8; MAC_LEN],
}

impl Seal {
    /// The seal bytes the MAC covers (all but the MAC).
    pub fn signed_bytes(&self) -> [u8; SEAL_SIGNED_LEN] {
        let mut out = [0u8; SEAL_SIGNED_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&SEAL_MARKER.to_be_bytes());
        w.put(&SEAL_MAGIC);
        w.put(&self.next_offset.to_be_bytes());
        w.put(&self.frame_count.to_be_bytes());
        w.put(&self.frames_end.to_be_bytes());
        w.put(&self.max_timestamp.to_be_bytes());
        w.put(&self.sealed_at_ms.to_be_bytes());
        out
    }

    /// The 80 seal bytes.
    pub fn encode(&self) -> [u8; SEAL_LEN] {
        let mut out = [0u8; SEAL_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&self.signed_bytes());
        w.put(&self.mac);
        out
    }

    /// Decodes a seal. The MAC is not checked here (that needs the key).
    ///
    /// # Errors
    ///
    /// [`FormatError`] for a short input, a wrong marker or magic, or
    /// facts that contradict each other.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::decode_with_min_frame(bytes, (FRAME_HEADER_LEN + MIN_BATCH_LEN + TAG_LEN) as u64)
    }

    /// [`Seal::decode`] for a segment whose smallest frame is
    /// `min_frame_len` bytes (a Raft segment's blank frame is smaller than
    /// any version-1 frame).
    ///
    /// # Errors
    ///
    /// As [`Seal::decode`].
    pub fn decode_with_min_frame(bytes: &[u8], min_frame_len: u64) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let marker = r.u32()?;
        let magic = r.array::<4>()?;
        if marker != SEAL_MARKER || magic != SEAL_MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let seal = Self {
            next_offset: r.u64()?,
            frame_count: r.u64()?,
            frames_end: r.u64()?,
            max_timestamp: r.i64()?,
            sealed_at_ms: r.i64()?,
            mac: r.array()?,
        };
        if seal.frame_count == 0 {
            return Err(FormatError::Invalid {
                field: "frame_count",
                detail: "zero".into(),
            });
        }
        let min_end = seal
            .frame_count
            .checked_mul(min_frame_len)
            .and_then(|b| b.checked_add(SEGMENT_HEADER_LEN as u64));
        if min_end.is_none_or(|m| seal.frames_end < m) {
            return Err(FormatError::Invalid {
                field: "frames_end",
                detail: format!(
                    "{} is too small for {} frames",
                    seal.frames_end, seal.frame_count
                ),
            });
        }
        Ok(seal)
    }
}

/// One entry of a sparse index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the indexed frame.
    pub offset: u64,
    /// File position of the indexed frame.
    pub position: u64,
    /// Largest record timestamp of the frames before it in its segment.
    pub max_ts_before: i64,
}

impl IndexEntry {
    /// The 24 entry bytes.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut out = [0u8; INDEX_ENTRY_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&self.offset.to_be_bytes());
        w.put(&self.position.to_be_bytes());
        w.put(&self.max_ts_before.to_be_bytes());
        out
    }

    /// Decodes an entry.
    ///
    /// # Errors
    ///
    /// [`FormatError::Truncated`] for fewer than 24 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        Ok(Self {
            offset: r.u64()?,
            position: r.u64()?,
            max_ts_before: r.i64()?,
        })
    }
}

/// Writes into a fixed buffer whose size the caller computed; excess input
/// is dropped rather than panicking (the golden tests pin every layout).
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
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

    fn written(&self) -> &[u8] {
        self.buf.get(..self.pos).unwrap_or_default()
    }
}

/// The file name of the segment whose first offset is `base`.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The file name of that segment's sparse index.
pub fn index_file_name(base: u64) -> String {
    format!("{base:020}.index")
}

/// The file name of that segment's key envelope.
pub fn key_file_name(base: u64) -> String {
    format!("{base:020}.key")
}

/// The name a segment file takes while it is being deleted.
pub fn deleted_file_name(base: u64) -> String {
    format!("{base:020}.log.deleted")
}

/// The file name of the gap marker of the segment at `base` (see
/// [`GapMarker`](super::GapMarker)).
pub fn gap_file_name(base: u64) -> String {
    format!("{base:020}.gap")
}

/// The file name of the quarantine file that keeps the torn tail of the
/// segment at `base` whose id is `segment_id` (see
/// [`QuarantineHeader`](super::QuarantineHeader)).
pub fn quarantine_file_name(base: u64, segment_id: &[u8; 16]) -> String {
    format!("{base:020}.{}.quarantine", hex::encode(segment_id))
}

/// What a file name in a log directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFile {
    Segment(u64),
    Index(u64),
    Key(u64),
    Deleted(u64),
    Gap(u64),
    Quarantine(u64),
    Temporary,
}

/// Parses a log directory file name; `None` for names the log does not own.
pub(crate) fn parse_file_name(name: &str) -> Option<LogFile> {
    if name.ends_with(".tmp") {
        return Some(LogFile::Temporary);
    }
    if let Some(rest) = name.strip_suffix(".quarantine") {
        let (stem, id) = rest.split_once('.')?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return stem.parse().ok().map(LogFile::Quarantine);
    }
    let (stem, kind): (&str, fn(u64) -> LogFile) = if let Some(s) = name.strip_suffix(".log") {
        (s, LogFile::Segment)
    } else if let Some(s) = name.strip_suffix(".index") {
        (s, LogFile::Index)
    } else if let Some(s) = name.strip_suffix(".key") {
        (s, LogFile::Key)
    } else if let Some(s) = name.strip_suffix(".log.deleted") {
        (s, LogFile::Deleted)
    } else if let Some(s) = name.strip_suffix(".gap") {
        (s, LogFile::Gap)
    } else {
        return None;
    };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(4096), "00000000000000004096.log");
        assert_eq!(
            parse_file_name("00000000000000004096.log"),
            Some(LogFile::Segment(4096))
        );
        assert_eq!(
            parse_file_name("00000000000000004096.index"),
            Some(LogFile::Index(4096))
        );
        assert_eq!(
            parse_file_name("00000000000000004096.key"),
            Some(LogFile::Key(4096))
        );
        assert_eq!(
            parse_file_name("00000000000000004096.log.deleted"),
            Some(LogFile::Deleted(4096))
        );
        assert_eq!(
            parse_file_name("00000000000000004096.key.tmp"),
            Some(LogFile::Temporary)
        );
        assert_eq!(
            parse_file_name("00000000000000004096.gap"),
            Some(LogFile::Gap(4096))
        );
        let q = quarantine_file_name(4096, &[0xAB; 16]);
        assert_eq!(
            q,
            "00000000000000004096.abababababababababababababababab.quarantine"
        );
        assert_eq!(parse_file_name(&q), Some(LogFile::Quarantine(4096)));
        assert_eq!(parse_file_name("00000000000000004096.ab.quarantine"), None);
        assert_eq!(parse_file_name("4096.log"), None);
        assert_eq!(parse_file_name("0000000000000000409x.log"), None);
        assert_eq!(parse_file_name("99999999999999999999.log"), None);
        assert_eq!(parse_file_name("notes.txt"), None);
    }

    #[test]
    fn header_rejects_each_damage() {
        let h = SegmentHeader {
            flags: 0,
            topic_id: [1; 16],
            partition: 3,
            segment_id: [2; 16],
            base_offset: 10,
            created_at_ms: 5,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        assert!(matches!(
            SegmentHeader::decode(&bytes[..63]),
            Err(FormatError::Truncated { .. })
        ));
        // The error says where the short field starts and what is missing:
        // the segment id at byte 28 needs 16 bytes, 2 are left.
        assert_eq!(
            SegmentHeader::decode(&bytes[..30]),
            Err(FormatError::Truncated {
                offset: 28,
                need: 16,
                have: 2
            })
        );
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(FormatError::BadMagic { .. })
        ));
        let mut bad = bytes;
        bad[5] = 2;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(FormatError::UnsupportedVersion(2))
        );
        let mut bad = bytes;
        bad[30] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(FormatError::Checksum { .. })
        ));
    }

    /// The disk limit is storage's own, and it holds whatever the wire can
    /// carry: the largest batch a broker could accept gets a frame that
    /// encodes and decodes.
    #[test]
    fn the_largest_wire_batch_fits_a_frame_on_disk() {
        let largest = strongbox_protocol::batch::MAX_WIRE_BATCH_LEN;
        let header = FrameHeader::for_batch(largest, 7, 1).expect("largest wire batch");
        assert_eq!(FrameHeader::decode(&header.encode()), Ok(header));
        assert_eq!(MAX_BATCH_LEN, 64 * 1024 * 1024, "a disk format change");
    }

    #[test]
    fn frame_header_limits() {
        let ok = FrameHeader::for_batch(MIN_BATCH_LEN, 7, 1).expect("min batch");
        assert_eq!(FrameHeader::decode(&ok.encode()), Ok(ok));
        assert!(FrameHeader::for_batch(MIN_BATCH_LEN - 1, 7, 1).is_err());
        assert!(FrameHeader::for_batch(MAX_BATCH_LEN + 1, 7, 1).is_err());
        assert!(FrameHeader::for_batch(MIN_BATCH_LEN, 7, 0).is_err());
        let mut marker = ok.encode();
        marker[..4].copy_from_slice(&SEAL_MARKER.to_be_bytes());
        assert_eq!(FrameHeader::decode(&marker), Err(FormatError::SealMarker));
        let mut zero_len = ok.encode();
        zero_len[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            FrameHeader::decode(&zero_len),
            Err(FormatError::Invalid { .. })
        ));
    }

    #[test]
    fn seal_rejects_impossible_facts() {
        let seal = Seal {
            next_offset: 10,
            frame_count: 1,
            frames_end: 200,
            max_timestamp: 0,
            sealed_at_ms: 0,
            mac: [0; 32],
        };
        assert_eq!(Seal::decode(&seal.encode()), Ok(seal));
        let zero = Seal {
            frame_count: 0,
            ..seal
        };
        assert!(Seal::decode(&zero.encode()).is_err());
        let short = Seal {
            frames_end: 70,
            ..seal
        };
        assert!(Seal::decode(&short.encode()).is_err());
        let huge = Seal {
            frame_count: u64::MAX,
            ..seal
        };
        assert!(Seal::decode(&huge.encode()).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = SegmentHeader::decode(&bytes);
            let _ = FrameHeader::decode(&bytes);
            let _ = Seal::decode(&bytes);
            let _ = IndexEntry::decode(&bytes);
        }

        #[test]
        fn header_round_trips(flags in 0u16..2, topic in any::<[u8; 16]>(), partition: u32,
                              id in any::<[u8; 16]>(), base: u64, at: i64) {
            let h = SegmentHeader { flags, topic_id: topic, partition, segment_id: id,
                                    base_offset: base, created_at_ms: at };
            prop_assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn index_entry_round_trips(offset: u64, position: u64, ts: i64) {
            let e = IndexEntry { offset, position, max_ts_before: ts };
            prop_assert_eq!(IndexEntry::decode(&e.encode()), Ok(e));
        }
    }
}
