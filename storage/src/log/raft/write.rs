//! Changing a [`RaftLog`]: appending (with segment rolls and creation),
//! truncating, purging, and writing the state file.

use std::sync::Arc;

use ring::rand::SecureRandom;
use strongbox_protocol::batch::RecordBatch;

use crate::io::OpenMode;
use crate::keys::{KeyError, SegmentKeyContext};

use super::super::durability::Durable;
use super::super::envelope::{KeyEnvelope, write_envelope};
use super::super::error::LogError;
use super::super::files;
use super::super::format::{SEAL_LEN, SEGMENT_HEADER_LEN, SegmentHeader};
use super::super::health::WriteFault;
use super::super::raft_format::{
    FLAG_RAFT_FRAMES, RAFT_STATE_FILE, RaftFrameHeader, RaftFrameKind, RaftLogId, RaftVote,
};
use super::super::recovery::put_seal;
use super::super::segment::{Segment, SegmentCrypto};
use super::{Active, Inner, Loc, RaftEntry, RaftLog, SegFrames, delete_segment, frames};

impl RaftLog {
    /// Appends `entries`, which must continue the log: the first takes the
    /// index after the last entry (or, when the log holds none, any index
    /// above the last purged one) and each the index after the one before.
    /// A record entry's payload must be a record batch; its records get
    /// the offsets after the log's last record.
    ///
    /// When this returns the entries are readable; the returned [`Durable`]
    /// resolves after the fdatasync that covers all of them (group commit
    /// with every other append).
    ///
    /// # Errors
    ///
    /// [`LogError::InvalidRaftAppend`] for an entry out of place or a
    /// payload its kind does not allow (nothing of that entry or after it
    /// is written); [`LogError::KeyCreate`] when a new segment needs a key
    /// and the provider fails; [`LogError::Failed`] after a failed write or
    /// sync; [`LogError::Closed`]; I/O errors.
    pub fn append(&self, entries: Vec<RaftEntry>) -> Result<Durable, LogError> {
        let mut inner = self.lock();
        self.ensure_writable(&inner)?;
        let mut written = None;
        for entry in entries {
            let position = self.append_one(&mut inner, entry)?;
            written = Some(position);
        }
        let next_index = inner
            .last_entry()
            .or(inner.state.last_purged)
            .map_or(0, |l| l.index.saturating_add(1));
        Ok(match written {
            Some(position) => self.sync.register_fsync(next_index, position),
            None => Durable::ready(),
        })
    }

    fn append_one(&self, inner: &mut Inner, entry: RaftEntry) -> Result<u64, LogError> {
        let index = entry.log_id.index;
        let refuse = |reason: String| LogError::InvalidRaftAppend { index, reason };
        match (inner.last_entry(), inner.state.last_purged) {
            (Some(last), _) if last.index.checked_add(1) != Some(index) => {
                return Err(refuse(format!(
                    "the log's last entry is index {}",
                    last.index
                )));
            }
            (None, Some(purged)) if index <= purged.index => {
                return Err(refuse(format!(
                    "entries up to index {} are purged",
                    purged.index
                )));
            }
            _ => {}
        }
        let (record_count, max_ts) = match entry.kind {
            RaftFrameKind::Records => {
                let batch = RecordBatch::parse(entry.payload.clone())
                    .map_err(|e| refuse(format!("the payload is not a record batch: {e}")))?;
                (batch.record_count(), batch.max_timestamp())
            }
            RaftFrameKind::Blank | RaftFrameKind::Membership => (0, i64::MIN),
        };
        let header = RaftFrameHeader::new(
            entry.kind,
            entry.payload.len(),
            entry.log_id,
            inner.next_offset,
            record_count,
        )
        .map_err(|e| refuse(e.to_string()))?;
        let next_offset = header
            .next_offset()
            .ok_or_else(|| refuse("its offsets would overflow".into()))?;

        let full = inner.active.as_ref().is_some_and(|a| {
            a.position > SEGMENT_HEADER_LEN as u64
                && a.position
                    .saturating_add(header.frame_len())
                    .saturating_add(SEAL_LEN as u64)
                    > self.ctx.config.segment_bytes
        });
        if full {
            self.roll_locked(inner)?;
        }
        if inner.active.is_none() {
            self.create_segment(inner, index)?;
        }
        let Inner {
            segs,
            active,
            scratch,
            ..
        } = inner;
        let (Some(a), Some(current)) = (active.as_mut(), segs.last_mut()) else {
            return Err(self.closed_error());
        };
        frames::seal_into(&current.seg, &a.crypto, &header, &entry.payload, scratch)?;
        let position = a.position;
        if let Err(e) =
            files::write_all_at(a.file.as_ref(), scratch, position, &current.seg.log_path)
        {
            // The frame may be partly on disk: nothing more is written
            // here; the next open cuts it.
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        a.position = position.saturating_add(header.frame_len());
        a.max_ts = a.max_ts.max(max_ts);
        current
            .seg
            .frames_end
            .store(a.position, std::sync::atomic::Ordering::Release);
        current
            .seg
            .max_timestamp
            .store(a.max_ts, std::sync::atomic::Ordering::Release);
        current.frames.push(Loc { header, position });
        let end = a.position;
        inner.next_offset = next_offset;
        Ok(end)
    }

    fn ensure_writable(&self, inner: &Inner) -> Result<(), LogError> {
        if inner.closed {
            return Err(self.closed_error());
        }
        if let Some(reason) = &inner.failed {
            return Err(LogError::Failed {
                dir: self.ctx.dir.as_ref().clone(),
                reason: reason.clone(),
            });
        }
        if let Some(f) = self.sync.failure() {
            return Err(f.fault.error(self.ctx.dir.as_ref().clone(), f.reason));
        }
        Ok(())
    }

    fn closed_error(&self) -> LogError {
        LogError::Closed {
            dir: self.ctx.dir.as_ref().clone(),
        }
    }

    /// Creates the active segment, whose first frame will be `index`:
    /// header synced and its name made durable, a fresh data key, its
    /// envelope written atomically, all before any frame.
    fn create_segment(&self, inner: &mut Inner, index: u64) -> Result<(), LogError> {
        let ctx = &self.ctx;
        let path = ctx.segment_path(index);
        let mut segment_id = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut segment_id)
            .map_err(|_| LogError::KeyCreate {
                segment: path.clone(),
                source: KeyError::Random,
            })?;
        let header = SegmentHeader {
            flags: FLAG_RAFT_FRAMES,
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            base_offset: index,
            created_at_ms: ctx.clock.now_ms(),
        };
        // A file of that name can only be one that held no frame (recovery
        // removes those) or one deleted by a truncation: replace it.
        let file = files::open(ctx.io.as_ref(), &path, OpenMode::Truncate, "creating")?;
        files::write_all_at(file.as_ref(), &header.encode(), 0, &path)?;
        crate::observe::timed_fsync(|| file.sync_data())
            .map_err(files::io_err("syncing", &path))?;
        files::sync_dir(ctx.io.as_ref(), &ctx.dir)?;
        let key_ctx = SegmentKeyContext {
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            scope: ctx.config.kek_scope.clone(),
        };
        let (dek, wrapped) = ctx
            .keys
            .create(&key_ctx)
            .map_err(|source| LogError::KeyCreate {
                segment: path.clone(),
                source,
            })?;
        let envelope = KeyEnvelope {
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            base_offset: index,
            wrapped,
        };
        if let Err(e) = write_envelope(ctx.io.as_ref(), &ctx.dir, &envelope) {
            let _ = ctx.keys.forget(&key_ctx);
            return Err(e);
        }
        let crypto = Arc::new(SegmentCrypto::new(&dek, &segment_id));
        let seg = Arc::new(Segment::new(
            &ctx.io,
            &ctx.dir,
            header,
            Some(envelope),
            SEGMENT_HEADER_LEN as u64,
            i64::MIN,
        ));
        seg.set_active(Arc::clone(&file), Arc::clone(&crypto));
        self.sync
            .start_file(Arc::clone(&file), SEGMENT_HEADER_LEN as u64);
        inner.segs.push(SegFrames {
            seg,
            frames: Vec::new(),
        });
        inner.active = Some(Active {
            file,
            crypto,
            position: SEGMENT_HEADER_LEN as u64,
            max_ts: i64::MIN,
        });
        tracing::debug!(segment = %path.display(), "created Raft segment");
        Ok(())
    }

    /// Seals the active segment (its seal fsynced, which makes every frame
    /// in it durable) and writes the state file.
    fn roll_locked(&self, inner: &mut Inner) -> Result<(), LogError> {
        let Some(a) = inner.active.take() else {
            return Ok(());
        };
        let Some(current) = inner.segs.last_mut() else {
            return Ok(());
        };
        if let Some(f) = self.sync.detach_file() {
            inner.failed = Some(f.reason.clone());
            return Err(f.fault.error(self.ctx.dir.as_ref().clone(), f.reason));
        }
        let next_index = current
            .last_index()
            .and_then(|i| i.checked_add(1))
            .unwrap_or(current.seg.base);
        let seal = put_seal(
            &self.ctx,
            &current.seg,
            &a.crypto,
            a.file.as_ref(),
            a.position,
            next_index,
            current.frames.len() as u64,
            a.max_ts,
        )
        .and_then(|seal| {
            crate::observe::timed_fsync(|| a.file.sync_data())
                .map_err(files::io_err("syncing", &current.seg.log_path))
                .map(|()| seal)
        });
        let seal = match seal {
            Ok(seal) => seal,
            Err(e) => {
                let fault = WriteFault::of_error(&e).unwrap_or(WriteFault::StorageFailed);
                self.sync
                    .fail(fault, format!("sealing a Raft segment: {e}"));
                inner.failed = Some(e.to_string());
                return Err(e);
            }
        };
        current.seg.set_sealed(seal, true);
        self.sync.stop_file();
        self.sync.all_durable();
        self.write_state(inner)
    }

    /// Makes everything appended so far durable (before a vote or a
    /// truncation, which must not overtake earlier appends).
    fn sync_active(&self, inner: &mut Inner) -> Result<(), LogError> {
        let Some(a) = inner.active.as_ref() else {
            return Ok(());
        };
        if let Some(f) = self.sync.detach_file() {
            inner.failed = Some(f.reason.clone());
            return Err(f.fault.error(self.ctx.dir.as_ref().clone(), f.reason));
        }
        if let Err(e) = crate::observe::timed_fsync(|| a.file.sync_data()) {
            let fault = WriteFault::of(&e);
            self.sync.fail(fault, format!("fdatasync: {e}"));
            inner.failed = Some(e.to_string());
            return Err(files::io_err("syncing", &self.ctx.dir)(e));
        }
        self.sync.all_durable();
        self.sync.reattach_file(Arc::clone(&a.file));
        Ok(())
    }

    /// Writes the state file atomically with the vote, the last purged
    /// log id, the log start and the committed log id as far as it is
    /// durable here.
    fn write_state(&self, inner: &mut Inner) -> Result<(), LogError> {
        let durable_next = self.sync.durable_end();
        if inner.committed.is_some_and(|c| c.index < durable_next) {
            inner.state.committed = inner.committed;
        }
        inner.state.written_at_ms = self.ctx.clock.now_ms();
        let bytes = inner.state.encode().map_err(|e| LogError::CorruptHeader {
            segment: self.ctx.dir.join(RAFT_STATE_FILE),
            reason: e.to_string(),
        })?;
        files::write_atomic(self.ctx.io.as_ref(), &self.ctx.dir, RAFT_STATE_FILE, &bytes)
    }

    /// Saves the vote: everything appended before it is made durable
    /// first, then the state file is written.
    ///
    /// # Errors
    ///
    /// I/O errors (the vote is then not saved).
    pub fn save_vote(&self, vote: RaftVote) -> Result<(), LogError> {
        let mut inner = self.lock();
        self.ensure_writable(&inner)?;
        self.sync_active(&mut inner)?;
        let old = inner.state.vote.replace(vote);
        let result = self.write_state(&mut inner);
        if result.is_err() {
            inner.state.vote = old;
        }
        result
    }

    /// Keeps `meta` (the caller's encoding of its snapshot: last log id
    /// and membership) in the state file.
    ///
    /// # Errors
    ///
    /// A meta over 64 KiB, or I/O errors.
    pub fn save_snapshot_meta(&self, meta: Vec<u8>) -> Result<(), LogError> {
        let mut inner = self.lock();
        self.ensure_writable(&inner)?;
        let old = std::mem::replace(&mut inner.state.snapshot_meta, meta);
        let result = self.write_state(&mut inner);
        if result.is_err() {
            inner.state.snapshot_meta = old;
        }
        result
    }

    /// Removes every entry after index `keep` (all of them for `None`):
    /// openraft's `truncate_after`. The segment holding the first removed
    /// entry is cut and sealed (or deleted when nothing of it stays), later
    /// segments are deleted, and the next append starts a new segment with
    /// a new key. Everything appended before is made durable first.
    ///
    /// # Errors
    ///
    /// I/O errors (the log is then failed; opening it again recovers).
    pub fn truncate_after(&self, keep: Option<u64>) -> Result<(), LogError> {
        let _shape = self.write_shape();
        let mut inner = self.lock();
        self.ensure_writable(&inner)?;
        let from = match keep {
            Some(k) => match k.checked_add(1) {
                Some(f) => f,
                None => return Ok(()),
            },
            None => 0,
        };
        if inner.last_entry().is_none_or(|l| l.index < from) {
            return Ok(());
        }
        self.sync_active(&mut inner)?;
        inner.active = None;
        self.sync.stop_file();
        let result = self.truncate_locked(&mut inner, from);
        if let Err(e) = &result {
            inner.failed = Some(e.to_string());
        }
        result
    }

    fn truncate_locked(&self, inner: &mut Inner, from: u64) -> Result<(), LogError> {
        while let Some(last) = inner.segs.last() {
            let Some(k) = last
                .frames
                .iter()
                .position(|l| l.header.log_id.index >= from)
            else {
                break;
            };
            let Some(cut) = last.frames.get(k).copied() else {
                break;
            };
            if k == 0 {
                if let Some(seg) = inner.segs.pop() {
                    delete_segment(&self.ctx, &seg.seg)?;
                }
                continue;
            }
            let seg = Arc::clone(&last.seg);
            let crypto = seg.crypto(&self.ctx)?;
            let file = files::open(
                self.ctx.io.as_ref(),
                &seg.log_path,
                OpenMode::ReadWrite,
                "opening",
            )?;
            file.set_len(cut.position)
                .map_err(files::io_err("truncating", &seg.log_path))?;
            let max_ts = seg.max_timestamp.load(std::sync::atomic::Ordering::Acquire);
            let seal = put_seal(
                &self.ctx,
                &seg,
                &crypto,
                file.as_ref(),
                cut.position,
                from,
                k as u64,
                max_ts,
            )?;
            crate::observe::timed_fsync(|| file.sync_data())
                .map_err(files::io_err("syncing", &seg.log_path))?;
            let replacement = Arc::new(Segment::new(
                &self.ctx.io,
                &self.ctx.dir,
                seg.header,
                seg.envelope(),
                cut.position,
                max_ts,
            ));
            replacement.set_sealed(seal, true);
            if let Some(last) = inner.segs.last_mut() {
                last.seg = replacement;
                last.frames.truncate(k);
            }
            break;
        }
        // The next record follows the last frame kept; with none kept, it
        // takes the log start (where the purged entries, or a snapshot,
        // end), never a removed frame's offset, which may come from a
        // history the snapshot replaced.
        inner.next_offset = inner
            .segs
            .iter()
            .rev()
            .find_map(|s| s.frames.last())
            .and_then(|l| l.header.next_offset())
            .unwrap_or(inner.state.log_start_offset);
        self.sync.truncated(from);
        tracing::info!(dir = %self.ctx.dir.display(), from, "truncated Raft log");
        Ok(())
    }

    /// Purges every entry up to and including `log_id` (openraft's
    /// `purge`): the state file records it first, then every segment whose
    /// entries are all purged is deleted. Entries still in a segment that
    /// is partly purged are no longer read. A purge past the last entry
    /// (a follower reset to its leader's log start) removes every segment;
    /// the next record then gets `log_start_offset`, or the log's next
    /// offset when that is `None`. Given a `log_start_offset` (a snapshot
    /// is being installed), entries that contradict the snapshot (another
    /// entry at `log_id`'s index, or later entries whose offsets do not
    /// start at `log_start_offset`) are removed first: they belong to a
    /// history the committed snapshot replaced.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn purge(&self, log_id: RaftLogId, log_start_offset: Option<u64>) -> Result<(), LogError> {
        let _shape = self.write_shape();
        let mut inner = self.lock();
        self.ensure_writable(&inner)?;
        if inner
            .state
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let find = |inner: &Inner, pred: &dyn Fn(&Loc) -> bool| {
            inner
                .segs
                .iter()
                .flat_map(|s| s.frames.iter())
                .find(|l| pred(l))
                .copied()
        };
        let mut after = find(&inner, &|l| l.header.log_id.index > log_id.index);
        if let Some(start) = log_start_offset {
            // A snapshot's end is committed. Entries here that contradict it
            // (another entry at its last index, or entries after it whose
            // offsets do not start at its log start) come from a history it
            // replaced, were never committed, and go.
            let at = find(&inner, &|l| l.header.log_id.index == log_id.index);
            let diverged = at.is_some_and(|l| l.header.log_id != log_id)
                || after.is_some_and(|l| l.header.base_offset != start);
            if diverged {
                self.sync_active(&mut inner)?;
                inner.active = None;
                self.sync.stop_file();
                self.truncate_locked(&mut inner, log_id.index.saturating_add(1))?;
                after = None;
            }
        }
        let past_end = inner.last_entry().is_none_or(|l| l.index <= log_id.index);
        let start = match after {
            Some(loc) => loc.header.base_offset,
            None => log_start_offset.unwrap_or(inner.next_offset),
        };
        if past_end {
            self.sync_active(&mut inner)?;
            inner.active = None;
            self.sync.stop_file();
            inner.next_offset = start;
        }
        inner.state.last_purged = Some(log_id);
        inner.state.log_start_offset = start;
        self.write_state(&mut inner)?;
        while inner
            .segs
            .first()
            .and_then(SegFrames::last_index)
            .is_some_and(|last| last <= log_id.index)
        {
            let seg = inner.segs.remove(0);
            delete_segment(&self.ctx, &seg.seg)?;
        }
        if past_end {
            self.sync.truncated(log_id.index.saturating_add(1));
        }
        Ok(())
    }

    /// Seals the active segment, writes the state file, waits for pending
    /// fsyncs and stops the flusher.
    ///
    /// # Errors
    ///
    /// I/O errors sealing the segment or writing the state.
    pub fn close(self) -> Result<(), LogError> {
        let result = {
            let mut inner = self.lock();
            let r = if inner.closed || inner.failed.is_some() {
                Ok(())
            } else if inner.active.is_some() {
                self.roll_locked(&mut inner)
            } else {
                self.write_state(&mut inner)
            };
            inner.closed = true;
            r
        };
        self.stop_flusher();
        result
    }
}
