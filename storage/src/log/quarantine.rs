//! Quarantine files: the bytes recovery cuts from a torn tail, kept as
//! evidence next to the segment instead of being thrown away.
//!
//! When the newest segment ends in bytes that are not intact frames (a
//! crash in the middle of a write, a power cut, or damage), recovery cuts
//! them off so that appends can go on. Before it cuts anything it copies
//! those bytes, exactly as they were, into
//! `{base:020}.{segment_id:032x}.quarantine` (unique: every segment has a
//! new random id), behind a header that says where they came from:
//!
//! ```text
//! offset size field
//!      0    4 magic           "SBQT"
//!      4    2 version         1
//!      6    2 reserved        0
//!      8   16 topic_id
//!     24    4 partition
//!     28   16 segment_id      the segment the bytes were cut from
//!     44    8 base_offset     its base offset
//!     52    8 first_offset    the offset the first cut byte would have held
//!     60    8 position        file position in the segment where the cut began
//!     68    8 bytes           number of cut bytes that follow the header
//!     76    8 quarantined_at  i64, ms since the Unix epoch
//!     84    4 crc32c          CRC-32C of bytes 0..84
//!     88    n                 the cut bytes (encrypted frames as on disk)
//! ```
//!
//! The file is written and synced (and its name made durable) before the
//! segment is cut, so a crash never loses the bytes. Nothing ever reads it
//! back as data and nothing deletes it: `strongbox-broker verify` reports
//! it until an operator has looked at it and removed it.

use std::path::{Path, PathBuf};

use crate::io::{IoFile, OpenMode, StorageIo};

use super::error::LogError;
use super::files;
use super::format::{FORMAT_VERSION, FormatError, Reader, quarantine_file_name};

/// First four bytes of a quarantine file.
pub const QUARANTINE_MAGIC: [u8; 4] = *b"SBQT";
/// Length of a quarantine file's header.
pub const QUARANTINE_HEADER_LEN: usize = 88;

/// Bytes copied per read and write.
const CHUNK: usize = 1 << 20;

/// Where the bytes of a quarantine file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineHeader {
    /// The topic's id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The segment's id.
    pub segment_id: [u8; 16],
    /// The segment's base offset.
    pub base_offset: u64,
    /// The offset the first cut byte would have held.
    pub first_offset: u64,
    /// File position in the segment where the cut began.
    pub position: u64,
    /// Number of cut bytes after the header.
    pub bytes: u64,
    /// When, ms since the Unix epoch.
    pub quarantined_at_ms: i64,
}

impl QuarantineHeader {
    /// The header's 88 bytes.
    pub fn encode(&self) -> [u8; QUARANTINE_HEADER_LEN] {
        let mut body = Vec::with_capacity(QUARANTINE_HEADER_LEN);
        body.extend_from_slice(&QUARANTINE_MAGIC);
        body.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&self.topic_id);
        body.extend_from_slice(&self.partition.to_be_bytes());
        body.extend_from_slice(&self.segment_id);
        body.extend_from_slice(&self.base_offset.to_be_bytes());
        body.extend_from_slice(&self.first_offset.to_be_bytes());
        body.extend_from_slice(&self.position.to_be_bytes());
        body.extend_from_slice(&self.bytes.to_be_bytes());
        body.extend_from_slice(&self.quarantined_at_ms.to_be_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        let mut out = [0u8; QUARANTINE_HEADER_LEN];
        for (o, b) in out.iter_mut().zip(body) {
            *o = b;
        }
        out
    }

    /// Decodes and checks a header (the first 88 bytes of the file).
    ///
    /// # Errors
    ///
    /// [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>()?;
        if magic != QUARANTINE_MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let reserved = r.u16()?;
        if reserved != 0 {
            return Err(FormatError::UnknownFlags(reserved));
        }
        let header = Self {
            topic_id: r.array()?,
            partition: r.u32()?,
            segment_id: r.array()?,
            base_offset: r.u64()?,
            first_offset: r.u64()?,
            position: r.u64()?,
            bytes: r.u64()?,
            quarantined_at_ms: r.i64()?,
        };
        let stored = r.u32()?;
        let computed = crc32c::crc32c(bytes.get(..QUARANTINE_HEADER_LEN - 4).unwrap_or_default());
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        Ok(header)
    }
}

/// Copies bytes `header.position..header.position + header.bytes` of the
/// segment `file` into the quarantine file in `dir`, durably (temporary
/// file, fsync, rename, fsync of the directory). Returns its path.
pub(crate) fn keep(
    io: &dyn StorageIo,
    dir: &Path,
    file: &dyn IoFile,
    header: &QuarantineHeader,
) -> Result<PathBuf, QuarantineFailed> {
    let name = quarantine_file_name(header.base_offset, &header.segment_id);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let copied = (|| {
        let out = io.open(&tmp, OpenMode::Truncate)?;
        out.write_all_at(&header.encode(), 0)?;
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < header.bytes {
            let n = usize::try_from((header.bytes - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            let chunk = buf.get_mut(..n).unwrap_or_default();
            file.read_exact_at(chunk, header.position.saturating_add(done))?;
            out.write_all_at(chunk, (QUARANTINE_HEADER_LEN as u64).saturating_add(done))?;
            done = done.saturating_add(n as u64);
        }
        out.sync_all()?;
        drop(out);
        io.rename(&tmp, &path)?;
        io.sync_dir(dir)
    })();
    match copied {
        Ok(()) => Ok(path),
        Err(source) => {
            let _ = io.remove_file(&tmp);
            Err(QuarantineFailed { path, source })
        }
    }
}

/// The quarantine file that could not be written, and why.
#[derive(Debug)]
pub(crate) struct QuarantineFailed {
    pub(crate) path: PathBuf,
    pub(crate) source: std::io::Error,
}

/// Reads the header of the quarantine file at `path` and checks the file
/// holds the bytes it announces.
pub(crate) fn inspect(io: &dyn StorageIo, path: &Path) -> Result<QuarantineHeader, String> {
    let file = files::open(io, path, OpenMode::Read, "opening").map_err(|e| e.to_string())?;
    let len = file
        .len()
        .map_err(|e| format!("cannot read its size: {e}"))?;
    let mut buf = [0u8; QUARANTINE_HEADER_LEN];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| format!("its header cannot be read: {e}"))?;
    let header = QuarantineHeader::decode(&buf).map_err(|e| format!("its header: {e}"))?;
    let expected = (QUARANTINE_HEADER_LEN as u64).saturating_add(header.bytes);
    if len != expected {
        return Err(format!(
            "it announces {} bytes but holds {}",
            header.bytes,
            len.saturating_sub(QUARANTINE_HEADER_LEN as u64)
        ));
    }
    Ok(header)
}

/// The error recovery reports when the evidence cannot be kept.
pub(crate) fn failed(segment: &Path, bytes: u64, q: QuarantineFailed) -> LogError {
    LogError::Quarantine {
        segment: segment.to_path_buf(),
        quarantine: q.path,
        bytes,
        source: q.source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> QuarantineHeader {
        QuarantineHeader {
            topic_id: [1; 16],
            partition: 2,
            segment_id: [3; 16],
            base_offset: 4_096,
            first_offset: 4_200,
            position: 9_000,
            bytes: 123,
            quarantined_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn golden_layout_and_damage() {
        let bytes = sample().encode();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"SBQT");
        expected.extend_from_slice(&[0, 1, 0, 0]);
        expected.extend_from_slice(&[1; 16]);
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(&[3; 16]);
        for v in [4_096u64, 4_200, 9_000, 123] {
            expected.extend_from_slice(&v.to_be_bytes());
        }
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(bytes.as_slice(), expected.as_slice());
        assert_eq!(QuarantineHeader::decode(&bytes).expect("decode"), sample());
        for i in 0..QUARANTINE_HEADER_LEN {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert!(QuarantineHeader::decode(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn keeps_the_bytes_durably_and_inspects_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = crate::io::FileIo;
        let seg_path = dir.path().join("seg");
        let data: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&seg_path, &data).expect("write");
        let seg = io.open(&seg_path, OpenMode::Read).expect("open");
        let header = QuarantineHeader {
            position: 1_000,
            bytes: 2_000,
            ..sample()
        };
        let path = keep(&io, dir.path(), seg.as_ref(), &header).expect("keep");
        let kept = std::fs::read(&path).expect("read");
        assert_eq!(&kept[QUARANTINE_HEADER_LEN..], &data[1_000..]);
        assert_eq!(inspect(&io, &path).expect("inspect"), header);
        std::fs::write(&path, &kept[..kept.len() - 1]).expect("cut");
        assert!(inspect(&io, &path).expect_err("short").contains("holds"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = QuarantineHeader::decode(&bytes);
        }
    }
}
