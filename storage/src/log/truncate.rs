//! Truncating a [`PartitionLog`] to an earlier offset (a follower
//! truncating to its leader).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use strongbox_protocol::batch::RecordBatch;

use crate::io::OpenMode;

use super::error::LogError;
use super::files;
use super::format::{IndexEntry, SEGMENT_HEADER_LEN};
use super::health::WriteFault;
use super::index;
use super::partition::{PartitionLog, Writer};
use super::recovery::{make_placeholder, write_seal};
use super::segment::{Segment, SegmentCrypto};

impl PartitionLog {
    /// Removes every record at or after `offset`, which must be a batch
    /// boundary between the log start and the log end (a follower
    /// truncating to its leader). The segment holding `offset` is cut and
    /// sealed; later segments are deleted; appends continue in a new
    /// segment with a new key, so no nonce is used twice.
    ///
    /// Not atomic across a crash, but idempotent: call it again after a
    /// restart.
    ///
    /// # Errors
    ///
    /// [`LogError::InvalidTruncation`] for an offset out of range or inside
    /// a batch (nothing is changed then); I/O errors (the log is then
    /// failed and a restart recovers it).
    pub fn truncate(&self, offset: u64) -> Result<(), LogError> {
        let mut w = self.lock_writer();
        self.ensure_writable(&mut w)?;
        let start = self.log_start_offset();
        if offset < start || offset > w.next_offset {
            return Err(LogError::InvalidTruncation {
                offset,
                reason: format!("the log holds offsets {start}..{}", w.next_offset),
            });
        }
        if offset == w.next_offset {
            return Ok(());
        }
        let segs = self.read_segments().clone();
        let Some(k) = segs.iter().rposition(|s| s.base <= offset) else {
            return Err(LogError::InvalidTruncation {
                offset,
                reason: "no segment holds it".into(),
            });
        };
        let Some(keep) = segs.get(k).cloned() else {
            return Err(self.closed());
        };
        let cut = if keep.base == offset {
            None
        } else {
            Some(self.find_cut(&keep, offset)?)
        };

        self.truncate_locked(&mut w, &segs, k, keep, offset, cut)
            .map_err(|e| self.fence(&mut w, e))
    }

    fn truncate_locked(
        &self,
        w: &mut Writer,
        segs: &[Arc<Segment>],
        k: usize,
        keep: Arc<Segment>,
        offset: u64,
        cut: Option<Cut>,
    ) -> Result<(), LogError> {
        // Everything written so far becomes durable, and the active
        // segment stops taking appends.
        if let Some(a) = w.active.take() {
            if let Some(f) = self.sync.detach_file() {
                let err = f.fault.error(self.ctx.dir.as_ref().clone(), f.reason);
                w.active = Some(a);
                return Err(err);
            }
            if let Err(e) = a.file.sync_data() {
                self.sync.fail(
                    WriteFault::of(&e),
                    format!("fdatasync before truncating: {e}"),
                );
                let err = files::io_err("syncing", &a.seg.log_path)(e);
                w.active = Some(a);
                return Err(err);
            }
            if let Err(e) = a.index.sync() {
                tracing::warn!(segment = %a.seg.log_path.display(), error = %e, "an index could not be synced before truncating");
            }
        }
        self.sync.stop_file();
        self.sync.all_durable();

        for seg in segs.iter().skip(k.saturating_add(1)).rev() {
            self.write_segments().retain(|s| !Arc::ptr_eq(s, seg));
            self.delete_segment_files(seg)?;
        }
        match cut {
            None if k > 0 => {
                self.write_segments().retain(|s| !Arc::ptr_eq(s, &keep));
                self.delete_segment_files(&keep)?;
            }
            None => {
                // The whole log goes: keep the file name as the record of
                // the next offset.
                self.write_segments().retain(|s| !Arc::ptr_eq(s, &keep));
                let file = files::open(
                    self.ctx.io.as_ref(),
                    &keep.log_path,
                    OpenMode::ReadWrite,
                    "opening",
                )?;
                make_placeholder(
                    &self.ctx,
                    keep.base,
                    file.as_ref(),
                    Some(keep.header.segment_id),
                )?;
                w.placeholder = Some(offset);
                self.log_start.store(offset, Ordering::Release);
            }
            Some(cut) => {
                let file = files::open(
                    self.ctx.io.as_ref(),
                    &keep.log_path,
                    OpenMode::ReadWrite,
                    "opening",
                )?;
                file.set_len(cut.position)
                    .map_err(files::io_err("truncating", &keep.log_path))?;
                index::rewrite(&self.ctx, &keep, &cut.entries)?;
                let seal = write_seal(
                    &self.ctx,
                    &keep,
                    &cut.crypto,
                    file.as_ref(),
                    cut.position,
                    offset,
                    cut.frames,
                    cut.max_ts,
                )?;
                let replacement = Arc::new(Segment::new(
                    &self.ctx.io,
                    &self.ctx.dir,
                    keep.header,
                    keep.envelope(),
                    cut.position,
                    cut.max_ts,
                ));
                replacement.set_sealed(seal, true);
                let mut all = self.write_segments();
                for s in all.iter_mut() {
                    if Arc::ptr_eq(s, &keep) {
                        *s = Arc::clone(&replacement);
                    }
                }
            }
        }
        w.next_offset = offset;
        self.end_offset.store(offset, Ordering::Release);
        self.sync.truncated(offset);
        self.truncations.fetch_add(1, Ordering::AcqRel);
        tracing::info!(dir = %self.ctx.dir.display(), offset, "truncated log");
        Ok(())
    }

    /// Finds the frame boundary at `offset` inside `seg`, authenticating
    /// every frame before it.
    fn find_cut(&self, seg: &Segment, offset: u64) -> Result<Cut, LogError> {
        let crypto = seg.crypto(&self.ctx)?;
        let file = seg.file()?;
        let end = seg.readable_end();
        let mut pos = SEGMENT_HEADER_LEN as u64;
        let mut expected = seg.base;
        let mut frames = 0u64;
        let mut max_ts = i64::MIN;
        let mut entries = Vec::new();
        let mut last_indexed: Option<u64> = None;
        while expected < offset {
            let frame = seg
                .read_frame(file.as_ref(), &crypto, pos, end, Some(expected))
                .map_err(|f| f.into_error(&seg.log_path))?;
            let batch =
                RecordBatch::parse(frame.batch.clone()).map_err(|e| LogError::CorruptFrame {
                    segment: seg.log_path.clone(),
                    position: pos,
                    reason: format!("decrypted batch does not parse: {e}"),
                })?;
            if last_indexed
                .is_none_or(|l| pos.saturating_sub(l) >= self.ctx.config.index_interval_bytes)
            {
                entries.push(IndexEntry {
                    offset: expected,
                    position: pos,
                    max_ts_before: max_ts,
                });
                last_indexed = Some(pos);
            }
            max_ts = max_ts.max(batch.max_timestamp());
            frames += 1;
            expected = frame.header.next_offset().unwrap_or(u64::MAX);
            pos = frame.end();
        }
        if expected != offset {
            return Err(LogError::InvalidTruncation {
                offset,
                reason: format!(
                    "it is inside the batch that ends before offset {expected}; truncate at a batch boundary"
                ),
            });
        }
        Ok(Cut {
            crypto,
            position: pos,
            frames,
            max_ts,
            entries,
        })
    }
}

/// Where `truncate` cuts a segment.
struct Cut {
    crypto: Arc<SegmentCrypto>,
    position: u64,
    frames: u64,
    max_ts: i64,
    entries: Vec<IndexEntry>,
}
