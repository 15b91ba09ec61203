//! Fencing a log after a failed write or sync, and resuming it once the
//! disk accepts writes again, without a restart and without losing an
//! acknowledged record.
//!
//! - **A write fails** (`ENOSPC`, `EIO`, a short write; of a frame, an
//!   index entry, a seal, or a new segment's files): the append gets the
//!   fault's error and the log is fenced. Frames written before are intact
//!   and their descriptor has never failed a sync, so the flusher goes on
//!   syncing them. To resume, the active segment is sealed at the end of
//!   its last complete frame (the seal overwrites and cuts whatever the
//!   failed write left), which syncs it through the same descriptor.
//! - **A sync fails**: the kernel may have dropped the dirty pages and a
//!   retry on the same descriptor could report success for data that is
//!   not on disk, so the descriptor is never synced again. Every append not
//!   yet durable fails with the fault. To resume, the segment file is
//!   opened anew, cut back to the last position an fsync confirmed, its
//!   frames up to there authenticated again and sealed, and synced through
//!   the new descriptor. Under `fsync` durability nothing past that point
//!   was acknowledged or visible, so appends continue right after it; under
//!   `interval` and `none` records past it were acknowledged (and possibly
//!   read) before they were durable, so appends continue after the highest
//!   offset ever handed out, and the offsets in between become an accepted
//!   gap (`gap.rs`): an offset is never reused.
//!
//! Either way appends continue in a new segment with a new data key, so no
//! (key, nonce) pair is ever used twice. The log tries to resume at the
//! next append (at most every [`RESUME_RETRY`], so a producer retrying in a
//! tight loop gets the fault's error at once rather than a disk operation
//! each time) and whenever [`PartitionLog::resume`] is called; the fence is
//! lifted when an append, or the new segment `resume` creates, goes
//! through.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::io::OpenMode;

use super::config::Durability;
use super::error::LogError;
use super::files;
use super::format::{SEGMENT_HEADER_LEN, gap_file_name, index_file_name};
use super::gap::GapMarker;
use super::health::{CutRange, LogEvent, LogHealth, WriteFault};
use super::index;
use super::partition::{Active, PartitionLog, Writer};
use super::recovery::{make_placeholder, put_seal, scan_prefix};

/// The shortest time between two attempts to resume a fenced log from the
/// append path.
pub const RESUME_RETRY: Duration = Duration::from_millis(250);

/// Why and since when a log refuses appends.
#[derive(Debug)]
pub(super) struct Fence {
    fault: WriteFault,
    reason: String,
    since_ms: i64,
    /// When the log last tried to resume.
    tried: Option<Instant>,
    /// What resuming cut, reported when the fence is lifted.
    cut: Option<CutRange>,
}

impl PartitionLog {
    /// Whether the log takes appends now.
    pub fn health(&self) -> LogHealth {
        let health = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match (&health, self.sync.failure()) {
            // The flusher failed a sync the writer has not seen yet.
            (LogHealth::Ok, Some(f)) => LogHealth::Fenced {
                fault: f.fault,
                reason: f.reason,
                since_ms: self.ctx.clock.now_ms(),
            },
            _ => health,
        }
    }

    /// Tries to lift a fence now: resumes from the last durable point and
    /// creates the next segment, so a partition nobody writes to also
    /// comes back once the disk works. Returns the health afterwards. A
    /// log that is not fenced is left as it is.
    ///
    /// # Errors
    ///
    /// [`LogError::Closed`].
    pub fn resume(&self) -> Result<LogHealth, LogError> {
        let mut w = self.lock_writer();
        if w.closed {
            return Err(self.closed());
        }
        self.notice_sync_failure(&mut w);
        if w.fence.is_none() {
            return Ok(LogHealth::Ok);
        }
        let resumed = self.heal_now(&mut w).and_then(|()| {
            if w.active.is_none() {
                let now = self.ctx.clock.now_ms();
                self.create_active_locked(&mut w, now)?;
            }
            Ok(())
        });
        match resumed {
            Ok(()) => self.unfence(&mut w),
            Err(e) => {
                let _ = self.fence(&mut w, e);
            }
        }
        drop(w);
        Ok(self.health())
    }

    /// Resumes a fenced log if the retry pacing allows, as an append would
    /// first; returns the fault's error when it stays fenced. For callers
    /// that check something against the newest records before appending
    /// (see [`PartitionLog::truncations`]).
    ///
    /// # Errors
    ///
    /// [`LogError::StorageFull`], [`LogError::Failed`], [`LogError::Closed`].
    pub fn prepare_append(&self) -> Result<(), LogError> {
        let mut w = self.lock_writer();
        self.ensure_writable(&mut w)
    }

    /// Before an append (or roll, or truncation): refuses a closed log, and
    /// tries to resume a fenced one (paced by [`RESUME_RETRY`]).
    pub(super) fn ensure_writable(&self, w: &mut Writer) -> Result<(), LogError> {
        if w.closed {
            return Err(self.closed());
        }
        self.notice_sync_failure(w);
        let Some(fence) = w.fence.as_mut() else {
            return Ok(());
        };
        if fence.tried.is_some_and(|t| t.elapsed() < RESUME_RETRY) {
            return Err(fence
                .fault
                .error(self.ctx.dir.as_ref().clone(), fence.reason.clone()));
        }
        fence.tried = Some(Instant::now());
        self.heal_locked(w).map_err(|e| self.fence(w, e))
    }

    /// Resumes now, whatever the pacing (at close).
    pub(super) fn heal_now(&self, w: &mut Writer) -> Result<(), LogError> {
        self.notice_sync_failure(w);
        if w.fence.is_none() {
            return Ok(());
        }
        self.heal_locked(w).map_err(|e| self.fence(w, e))
    }

    /// Fences the log for `e` when it is a storage failure, and returns the
    /// error appends get: the fault's error for storage failures, `e`
    /// itself otherwise (a key provider error fences nothing).
    pub(super) fn fence(&self, w: &mut Writer, e: LogError) -> LogError {
        let Some(fault) = WriteFault::of_error(&e) else {
            return e;
        };
        let reason = match &e {
            LogError::StorageFull { reason, .. } | LogError::Failed { reason, .. } => {
                reason.clone()
            }
            other => other.to_string(),
        };
        match w.fence.as_mut() {
            Some(fence) => {
                fence.fault = fault;
                fence.reason.clone_from(&reason);
            }
            None => {
                tracing::error!(dir = %self.ctx.dir.display(), fault = fault.name(), %reason, "partition log fenced: appends are refused until it resumes");
                w.fence = Some(Fence {
                    fault,
                    reason: reason.clone(),
                    since_ms: self.ctx.clock.now_ms(),
                    tried: Some(Instant::now()),
                    cut: None,
                });
                self.push_event(LogEvent::Fenced {
                    fault,
                    reason: reason.clone(),
                });
            }
        }
        if let Some(fence) = &w.fence {
            *self.health.lock().unwrap_or_else(PoisonError::into_inner) = LogHealth::Fenced {
                fault: fence.fault,
                reason: fence.reason.clone(),
                since_ms: fence.since_ms,
            };
        }
        fault.error(self.ctx.dir.as_ref().clone(), reason)
    }

    /// An append went through again: the fence is lifted.
    pub(super) fn unfence(&self, w: &mut Writer) {
        let Some(fence) = w.fence.take() else { return };
        tracing::info!(dir = %self.ctx.dir.display(), next_offset = w.next_offset, cut = ?fence.cut, "partition log resumed after a storage fault");
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = LogHealth::Ok;
        self.push_event(LogEvent::Resumed {
            cut: fence.cut,
            next_offset: w.next_offset,
        });
    }

    /// Takes over a sync failure the flusher reported.
    fn notice_sync_failure(&self, w: &mut Writer) {
        if w.fence.is_none()
            && let Some(f) = self.sync.failure()
        {
            let _ = self.fence(w, f.fault.error(self.ctx.dir.as_ref().clone(), f.reason));
        }
    }

    /// Brings the active segment (if any) to a sealed state that holds only
    /// durable, intact frames. See the module docs.
    fn heal_locked(&self, w: &mut Writer) -> Result<(), LogError> {
        let Some(a) = w.active.take() else {
            // The failure was creating a segment: the next append tries
            // again. A sync failure can only concern the active segment's
            // descriptor (the writer detaches it before sealing), so with
            // none active it is over.
            self.sync.clear_failure();
            return Ok(());
        };
        if self.sync.failure().is_none() {
            if a.frame_count == 0 {
                // Nothing was written to it: only its name is kept. Through
                // a new descriptor, so that a sync that fails here is never
                // retried on the same one.
                let emptied = files::open(
                    self.ctx.io.as_ref(),
                    &a.seg.log_path,
                    OpenMode::ReadWrite,
                    "reopening",
                )
                .and_then(|f| make_placeholder(&self.ctx, a.seg.base, f.as_ref(), None));
                return match emptied {
                    Ok(()) => {
                        self.drop_segment(w, &a);
                        Ok(())
                    }
                    Err(e) => {
                        w.active = Some(a);
                        Err(e)
                    }
                };
            }
            match self.seal_active(&a, w.next_offset) {
                Ok(()) => return Ok(()),
                Err(e) if self.sync.failure().is_none() => {
                    w.active = Some(a);
                    return Err(e);
                }
                // The seal's own sync failed: cut back as for any failed sync.
                Err(_) => {}
            }
        }
        match self.cut_to_durable(w, &a) {
            Ok(()) => Ok(()),
            Err(e) => {
                w.active = Some(a);
                Err(e)
            }
        }
    }

    /// After a failed sync: cuts the active segment back to the last
    /// position an fsync confirmed, through a new descriptor, and seals it
    /// (or empties it when nothing in it is durable).
    fn cut_to_durable(&self, w: &mut Writer, a: &Active) -> Result<(), LogError> {
        let ctx = &self.ctx;
        let path = &a.seg.log_path;
        let old_next = w.next_offset;
        let (_, durable_pos) = self.sync.durable_point();
        let file = files::open(ctx.io.as_ref(), path, OpenMode::ReadWrite, "reopening")?;
        let old_len = files::file_len(file.as_ref(), path)?;
        // Confirmed by an fsync: the same on disk as in the page cache.
        // Authenticated again all the same, and cut at the first frame
        // that is not intact.
        let limit = durable_pos.max(SEGMENT_HEADER_LEN as u64).min(old_len);
        let prefix = scan_prefix(ctx, &a.seg, &a.crypto, file.as_ref(), limit)?;
        if let Some(reason) = &prefix.fault {
            tracing::error!(segment = %path.display(), position = prefix.position, %reason, "frames confirmed durable do not authenticate; cutting there");
        }
        let durable_next = prefix.next_offset;
        // Under `fsync` nothing past the durable point was acknowledged or
        // read; otherwise it may have been, and its offsets stay used.
        let next = match ctx.config.durability {
            Durability::Fsync => durable_next,
            Durability::Interval(_) | Durability::None => old_next.max(durable_next),
        };
        if next > durable_next {
            // Reserve the offsets before cutting anything: should the cut
            // stop halfway (or the broker stop), the next open still
            // continues after them (see recovery).
            GapMarker {
                topic_id: ctx.config.topic_id,
                partition: ctx.config.partition,
                from_offset: durable_next,
                to_offset: next,
                created_at_ms: ctx.clock.now_ms(),
            }
            .write(ctx.io.as_ref(), &ctx.dir)?;
        }
        if prefix.frames == 0 {
            // Readers find nothing in it from now on, even if emptying it
            // fails and is tried again later.
            a.seg
                .frames_end
                .store(SEGMENT_HEADER_LEN as u64, Ordering::Release);
            make_placeholder(ctx, a.seg.base, file.as_ref(), None)?;
            self.drop_segment(w, a);
        } else {
            file.set_len(prefix.position)
                .map_err(files::io_err("truncating", path))?;
            // Readers stop at the cut from now on, even if sealing fails
            // and is tried again later.
            a.seg.frames_end.store(prefix.position, Ordering::Release);
            index::rewrite(ctx, &a.seg, &prefix.entries)?;
            let seal = put_seal(
                ctx,
                &a.seg,
                &a.crypto,
                file.as_ref(),
                prefix.position,
                durable_next,
                prefix.frames,
                prefix.max_ts,
            )?;
            crate::observe::timed_fsync(|| file.sync_data())
                .map_err(files::io_err("syncing", path))?;
            a.seg.replace_file(file);
            a.seg.set_sealed(seal, true);
        }
        if next > durable_next {
            self.open_gap(w, durable_next, next)?;
        }
        let cut = (durable_next < old_next).then(|| CutRange {
            from_offset: durable_next,
            to_offset: old_next,
            bytes: old_len.saturating_sub(prefix.position),
        });
        if cut.is_some() {
            self.truncations.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(c) = &cut {
            tracing::warn!(segment = %path.display(), from = c.from_offset, to = c.to_offset, bytes = c.bytes, "records not confirmed by a sync were cut");
        }
        if let Some(fence) = w.fence.as_mut() {
            fence.cut = cut;
        }
        w.next_offset = next;
        self.end_offset.store(next, Ordering::Release);
        self.sync.truncated(next);
        Ok(())
    }

    /// Forgets the active segment `a`, whose file is now an empty
    /// placeholder: the next segment reuses its name.
    fn drop_segment(&self, w: &mut Writer, a: &Active) {
        let mut segs = self.write_segments();
        segs.retain(|s| !std::sync::Arc::ptr_eq(s, &a.seg));
        self.log_start.store(
            segs.first().map_or(a.seg.base, |s| s.base),
            Ordering::Release,
        );
        drop(segs);
        w.placeholder = Some(a.seg.base);
        w.next_offset = a.seg.base;
        self.end_offset.store(a.seg.base, Ordering::Release);
        self.sync.truncated(a.seg.base);
    }

    /// Makes `to` the next offset, leaving the offsets between the end of
    /// the last segment (`from` when there is none) and `to` as an accepted
    /// gap: a gap marker, then an empty newest segment file at `to`, then
    /// the old placeholder (if any) removed, each made durable in that
    /// order.
    pub(super) fn open_gap(&self, w: &mut Writer, from: u64, to: u64) -> Result<(), LogError> {
        let ctx = &self.ctx;
        let io = ctx.io.as_ref();
        // A segment dropped after an earlier gap leaves that gap and this
        // one as one: the marker names where the records before it end.
        let last_end = self
            .read_segments()
            .last()
            .map(|s| s.sealed_next_offset().unwrap_or(s.base));
        let has_segments = last_end.is_some();
        let from = last_end.unwrap_or(from);
        if has_segments {
            GapMarker {
                topic_id: ctx.config.topic_id,
                partition: ctx.config.partition,
                from_offset: from,
                to_offset: to,
                created_at_ms: ctx.clock.now_ms(),
            }
            .write(io, &ctx.dir)?;
        }
        let path = ctx.segment_path(to);
        drop(files::open(io, &path, OpenMode::Truncate, "creating")?);
        files::remove_if_exists(io, &ctx.dir.join(index_file_name(to)))?;
        files::sync_dir(io, &ctx.dir)?;
        if let Some(old) = w.placeholder.take().filter(|p| *p != to) {
            files::remove_if_exists(io, &ctx.segment_path(old))?;
            files::remove_if_exists(io, &ctx.dir.join(gap_file_name(old)))?;
            files::sync_dir(io, &ctx.dir)?;
            self.gaps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&old);
        }
        w.placeholder = Some(to);
        if has_segments {
            self.gaps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(to, from);
        } else {
            self.log_start.store(to, Ordering::Release);
        }
        Ok(())
    }
}
