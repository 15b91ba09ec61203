//! Accepted gaps in the offsets of a log, and the gap markers that record
//! them.
//!
//! A log never hands out an offset twice. When records that were
//! acknowledged are lost (an operator accepts the loss of a partition
//! found shorter than its recorded durable end; a failed sync under
//! `interval` durability) the log moves its next offset past every offset
//! ever handed out, and the offsets in between become a gap. Consecutive
//! segments must otherwise join exactly (a missing segment is an error),
//! so the gap is recorded in a small file next to the segment after it:
//!
//! ```text
//! {to:020}.gap    (56 bytes, written atomically)
//! offset size field
//!      0    4 magic          "SBGP"
//!      4    2 version        1
//!      6    2 reserved       0
//!      8   16 topic_id
//!     24    4 partition
//!     28    8 from_offset    where the log ended before the gap
//!     36    8 to_offset      base offset of the segment after it (= name)
//!     44    8 created_at_ms  i64
//!     52    4 crc32c         CRC-32C of bytes 0..52
//! ```
//!
//! Recovery accepts two segments that do not join when a valid marker for
//! exactly that gap names the later one; a reader asking for an offset in
//! the gap gets the records after it. Retention removes a segment's marker
//! with the segment.

use std::path::Path;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use crate::io::StorageIo;

use super::error::LogError;
use super::files;
use super::format::{FORMAT_VERSION, FormatError, Reader, gap_file_name};
use super::partition::PartitionLog;

/// First four bytes of a gap marker.
pub const GAP_MAGIC: [u8; 4] = *b"SBGP";
/// Length of a gap marker.
pub const GAP_LEN: usize = 56;

/// A recorded gap: no record has an offset in `from_offset..to_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapMarker {
    /// The topic's id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The offset the log ended at before the gap.
    pub from_offset: u64,
    /// The base offset of the segment after the gap.
    pub to_offset: u64,
    /// When the gap was made, ms since the Unix epoch.
    pub created_at_ms: i64,
}

impl GapMarker {
    /// The marker's 56 bytes.
    pub fn encode(&self) -> [u8; GAP_LEN] {
        let mut out = [0u8; GAP_LEN];
        let mut body = Vec::with_capacity(GAP_LEN);
        body.extend_from_slice(&GAP_MAGIC);
        body.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&self.topic_id);
        body.extend_from_slice(&self.partition.to_be_bytes());
        body.extend_from_slice(&self.from_offset.to_be_bytes());
        body.extend_from_slice(&self.to_offset.to_be_bytes());
        body.extend_from_slice(&self.created_at_ms.to_be_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        for (o, b) in out.iter_mut().zip(body) {
            *o = b;
        }
        out
    }

    /// Decodes and checks a marker: magic, version, CRC, length, and that
    /// the gap goes forward.
    ///
    /// # Errors
    ///
    /// [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != GAP_LEN {
            return Err(FormatError::Invalid {
                field: "length",
                detail: format!("{} bytes, a gap marker has {GAP_LEN}", bytes.len()),
            });
        }
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>()?;
        if magic != GAP_MAGIC {
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
        let topic_id = r.array()?;
        let partition = r.u32()?;
        let from_offset = r.u64()?;
        let to_offset = r.u64()?;
        let created_at_ms = r.i64()?;
        let stored = r.u32()?;
        let computed = crc32c::crc32c(bytes.get(..GAP_LEN - 4).unwrap_or_default());
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        if from_offset >= to_offset {
            return Err(FormatError::Invalid {
                field: "to_offset",
                detail: format!("the gap {from_offset}..{to_offset} does not go forward"),
            });
        }
        Ok(Self {
            topic_id,
            partition,
            from_offset,
            to_offset,
            created_at_ms,
        })
    }

    /// Writes the marker into `dir` atomically.
    pub(crate) fn write(&self, io: &dyn StorageIo, dir: &Path) -> Result<(), LogError> {
        files::write_atomic(io, dir, &gap_file_name(self.to_offset), &self.encode())
    }

    /// The marker in `dir` for the segment at `base`, when there is one
    /// that decodes.
    pub(crate) fn read(io: &dyn StorageIo, dir: &Path, base: u64) -> Option<Result<Self, String>> {
        match io.read(&dir.join(gap_file_name(base))) {
            Ok(bytes) => Some(Self::decode(&bytes).map_err(|e| e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("cannot be read: {e}"))),
        }
    }
}

impl PartitionLog {
    /// Moves the next offset forward to `offset`, past records that were
    /// lost: the active segment is sealed, and the next append starts a
    /// new segment at `offset`. The offsets in between become an accepted
    /// gap, recorded durably (see the module docs) so that no later open
    /// reuses them and readers read across it.
    ///
    /// A log opened on a missing directory
    /// ([`PartitionLog::open_recorded`]) gets its directory back here,
    /// created durably, even when `offset` is its next offset: calling
    /// this is how its owner accepts the loss.
    ///
    /// # Errors
    ///
    /// [`LogError::InvalidTruncation`] for an offset below the next
    /// offset; [`LogError::Closed`]; the storage errors of sealing and of
    /// writing the marker.
    pub fn skip_to(&self, offset: u64) -> Result<(), LogError> {
        let mut w = self.lock_writer();
        self.ensure_writable(&mut w)?;
        if w.dir_missing {
            crate::io::durable::create_dir_all(self.ctx.io.as_ref(), &self.ctx.dir)
                .map_err(files::step_err)?;
            w.dir_missing = false;
            tracing::warn!(dir = %self.ctx.dir.display(), "partition directory created again after its loss was accepted");
        }
        if offset < w.next_offset {
            return Err(LogError::InvalidTruncation {
                offset,
                reason: format!(
                    "the log's next offset is {}; it only moves forward",
                    w.next_offset
                ),
            });
        }
        if offset == w.next_offset {
            return Ok(());
        }
        self.roll_locked(&mut w)?;
        if let Some(a) = w.active.take() {
            // An active segment without frames: its name goes, the gap
            // follows the segment before it. (A new descriptor: a failed
            // sync is never retried on the same one.)
            let emptied = files::open(
                self.ctx.io.as_ref(),
                &a.seg.log_path,
                crate::io::OpenMode::ReadWrite,
                "reopening",
            )
            .and_then(|f| {
                super::recovery::make_placeholder(&self.ctx, a.seg.base, f.as_ref(), None)
            });
            if let Err(e) = emptied {
                w.active = Some(a);
                return Err(e);
            }
            self.write_segments()
                .retain(|s| !std::sync::Arc::ptr_eq(s, &a.seg));
            w.placeholder = Some(a.seg.base);
        }
        let from = w.next_offset;
        self.open_gap(&mut w, from, offset)?;
        w.next_offset = offset;
        self.end_offset.store(offset, Ordering::Release);
        self.sync.truncated(offset);
        tracing::warn!(dir = %self.ctx.dir.display(), from, to = offset, "the log moved past lost offsets");
        Ok(())
    }

    /// True when a segment ending at `end` may be followed by one starting
    /// at `next_base`: they join, or the gap between them was accepted.
    pub(super) fn joins(&self, end: u64, next_base: u64) -> bool {
        end == next_base
            || self
                .gaps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&next_base)
                == Some(&end)
    }

    /// Offsets missing from the middle of the log, found at open and not
    /// accepted yet, as `(from, to)` pairs, oldest first: a segment there
    /// is gone. Readers get [`LogError::Damaged`] for them.
    pub fn missing_ranges(&self) -> Vec<(u64, u64)> {
        self.missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(to, from)| (*from, *to))
            .collect()
    }

    /// Accepts the loss of the offsets missing from the middle of the log:
    /// each range gets a gap marker, durably, and becomes an accepted gap
    /// that readers read across. Returns the ranges accepted.
    ///
    /// # Errors
    ///
    /// Writing a marker failed; the ranges not yet written stay missing.
    pub fn accept_missing(&self) -> Result<Vec<(u64, u64)>, LogError> {
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut accepted = Vec::new();
        while let Some((to, from)) = missing.first_key_value().map(|(t, f)| (*t, *f)) {
            GapMarker {
                topic_id: self.ctx.config.topic_id,
                partition: self.ctx.config.partition,
                from_offset: from,
                to_offset: to,
                created_at_ms: self.ctx.clock.now_ms(),
            }
            .write(self.ctx.io.as_ref(), &self.ctx.dir)?;
            missing.remove(&to);
            self.gaps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(to, from);
            tracing::warn!(dir = %self.ctx.dir.display(), from, to, "missing offsets accepted as a gap");
            accepted.push((from, to));
        }
        Ok(accepted)
    }

    /// The error for a read that reaches segment `segs[i]` across offsets
    /// missing before it, when there are such offsets.
    pub(super) fn missing_before(
        &self,
        segs: &[std::sync::Arc<super::segment::Segment>],
        i: usize,
        from_offset: u64,
    ) -> Option<LogError> {
        let seg = segs.get(i)?;
        let from = *self
            .missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&seg.base)?;
        Some(LogError::Damaged {
            segment: seg.log_path.clone(),
            position: 0,
            first: from.max(from_offset),
            end: Some(seg.base),
            reason: format!(
                "the segment(s) holding offsets {from}..{} are missing",
                seg.base
            ),
        })
    }

    /// The accepted gaps, as `(from, to)` pairs, oldest first.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        self.gaps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(to, from)| (*from, *to))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> GapMarker {
        GapMarker {
            topic_id: [0x11; 16],
            partition: 3,
            from_offset: 1_000,
            to_offset: 5_000,
            created_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn golden_layout() {
        let bytes = sample().encode();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"SBGP");
        expected.extend_from_slice(&[0, 1, 0, 0]);
        expected.extend_from_slice(&[0x11; 16]);
        expected.extend_from_slice(&3u32.to_be_bytes());
        expected.extend_from_slice(&1_000u64.to_be_bytes());
        expected.extend_from_slice(&5_000u64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(bytes.as_slice(), expected.as_slice());
        assert_eq!(GapMarker::decode(&bytes).expect("decode"), sample());
    }

    #[test]
    fn rejects_damage_and_backward_gaps() {
        let bytes = sample().encode();
        for i in 0..GAP_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            assert!(GapMarker::decode(&bad).is_err(), "flip at {i}");
        }
        for cut in 0..GAP_LEN {
            assert!(GapMarker::decode(&bytes[..cut]).is_err());
        }
        let backwards = GapMarker {
            from_offset: 5_000,
            to_offset: 5_000,
            ..sample()
        };
        assert!(GapMarker::decode(&backwards.encode()).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = GapMarker::decode(&bytes);
        }

        #[test]
        fn round_trips(from in 0u64..u64::MAX - 1, len in 1u64..1_000_000, p: u32, t: i64) {
            let m = GapMarker {
                topic_id: [7; 16],
                partition: p,
                from_offset: from,
                to_offset: from.saturating_add(len).max(from + 1),
                created_at_ms: t,
            };
            prop_assert_eq!(GapMarker::decode(&m.encode()).expect("decode"), m);
        }
    }
}
