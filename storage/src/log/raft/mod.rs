//! [`RaftLog`]: a replicated partition's log, which is its Raft group's
//! log (docs/ARCHITECTURE.md, "Replicated partitions"; the format is
//! [`raft_format`](super::raft_format) and docs/STORAGE.md, "Replicated
//! segments").
//!
//! Every Raft entry is one frame of the partition's encrypted segments: a
//! record batch, or a control entry (blank, membership) that holds no
//! record. Segments are named by the Raft index of their first frame; each
//! has its own data key, made by [`SegmentKeys`] and kept in its envelope,
//! exactly like a single-node log's. The vote, the last purged log id and
//! a lower bound of the committed log id live in the state file
//! (`raft.state`), written only when they change, never per entry.
//!
//! Appends are group-committed: [`RaftLog::append`] writes the frames,
//! makes them readable, and returns one [`Durable`] that resolves after the
//! flusher's `fdatasync` that covers them, shared with every append made
//! meanwhile. Truncating ([`RaftLog::truncate_after`]) cuts and seals the
//! segment holding the cut and deletes the later ones; the next append
//! starts a new segment with a new key, so no (key, nonce) pair repeats.
//!
//! Reading for consumers (records by offset) and the sparse index file are
//! not part of this type yet: openraft's readers find a frame through the
//! frame table kept in memory, rebuilt at open from the plaintext frame
//! headers.
//!
//! ```
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
//! use strongbox_storage::log::raft::{RaftEntry, RaftLog};
//! use strongbox_storage::log::raft_format::{RaftFrameKind, RaftLogId};
//! use strongbox_storage::log::{LogConfig, LogEnv};
//! use strongbox_storage::meta::MetaStore;
//!
//! let dir = tempfile::tempdir()?;
//! let provider = FileKeyProvider::open(dir.path().join("keys"))?;
//! let meta = MetaStore::open(dir.path().join("meta.redb"))?;
//! let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 1024));
//! let config = LogConfig::new([7; 16], 0, KekScope::Broker);
//! let log = RaftLog::open(dir.path().join("orders-0"), config, keys, LogEnv::default())?;
//!
//! let blank = RaftEntry {
//!     log_id: RaftLogId { term: 1, node_id: 1, index: 0 },
//!     kind: RaftFrameKind::Blank,
//!     payload: Bytes::new(),
//! };
//! log.append(vec![blank])?.wait()?; // fsynced
//! let read = log.entries(0..1)?;
//! assert_eq!(read[0].log_id.index, 0);
//! log.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod frames;
mod recover;
mod write;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::io::{IoFile, durable};
use crate::keys::SegmentKeys;

use super::config::LogConfig;
use super::durability::{SyncShared, run_flusher};
use super::error::LogError;
use super::files;
use super::format::deleted_file_name;
use super::partition::LogEnv;
use super::raft_format::{RaftFrameHeader, RaftFrameKind, RaftLogId, RaftState, RaftVote};
use super::recovery::shred_envelope;
use super::segment::{LogCtx, Segment, SegmentCrypto};

/// One entry to append. Its `Debug` shows the payload's length only:
/// records never reach a log.
#[derive(Clone)]
pub struct RaftEntry {
    /// Its log id.
    pub log_id: RaftLogId,
    /// What it holds.
    pub kind: RaftFrameKind,
    /// Records: the record batch's bytes; blank: empty; membership: the
    /// membership as the caller encodes it.
    pub payload: Bytes,
}

/// One entry read back, authenticated. Its `Debug` shows the payload's
/// length only.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its log id.
    pub log_id: RaftLogId,
    /// What it holds.
    pub kind: RaftFrameKind,
    /// Records: the batch's first offset; control: the next record's.
    pub base_offset: u64,
    /// Records in the batch (0 for a control entry).
    pub record_count: u32,
    /// The plaintext payload, as appended.
    pub payload: Bytes,
}

impl std::fmt::Debug for RaftEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEntry")
            .field("log_id", &self.log_id)
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl std::fmt::Debug for StoredEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEntry")
            .field("log_id", &self.log_id)
            .field("kind", &self.kind)
            .field("base_offset", &self.base_offset)
            .field("record_count", &self.record_count)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Where the log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftLogState {
    /// The last purged log id.
    pub last_purged: Option<RaftLogId>,
    /// The log id of the last entry held, if any.
    pub last_entry: Option<RaftLogId>,
    /// The offset of the first record after the purged entries.
    pub log_start_offset: u64,
    /// The offset the next record gets.
    pub next_offset: u64,
}

impl RaftLogState {
    /// The last log id in openraft's sense: the last entry's, or the last
    /// purged one when the log holds no entry.
    pub fn last_log_id(&self) -> Option<RaftLogId> {
        self.last_entry.or(self.last_purged)
    }
}

/// A replicated partition's log. `Send + Sync`: share it in an `Arc`.
/// Every method blocks on file I/O.
#[derive(Debug)]
pub struct RaftLog {
    ctx: Arc<LogCtx>,
    inner: Mutex<Inner>,
    /// Held shared by readers for a whole read and exclusively by what
    /// removes frames (truncation, purge), so a read never sees a frame
    /// cut or deleted under it: openraft requires reads to be atomic.
    /// Appends only add frames and do not take it.
    shape: RwLock<()>,
    sync: Arc<SyncShared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// The frame of one entry: its header and where it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc {
    pub(crate) header: RaftFrameHeader,
    pub(crate) position: u64,
}

/// A segment and the frames it holds.
#[derive(Debug)]
pub(crate) struct SegFrames {
    pub(crate) seg: Arc<Segment>,
    pub(crate) frames: Vec<Loc>,
}

impl SegFrames {
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.frames.last().map(|l| l.header.log_id.index)
    }
}

/// The segment taking appends (always the newest, made by this process).
#[derive(Debug)]
struct Active {
    file: Arc<dyn IoFile>,
    crypto: Arc<SegmentCrypto>,
    position: u64,
    max_ts: i64,
}

#[derive(Debug)]
struct Inner {
    segs: Vec<SegFrames>,
    active: Option<Active>,
    /// The offset the next record gets.
    next_offset: u64,
    /// What the state file holds.
    state: RaftState,
    /// The newest committed log id openraft reported (kept in memory,
    /// written with the state file when it is written for another reason).
    committed: Option<RaftLogId>,
    scratch: Vec<u8>,
    /// Set when a write failed: appends are refused until the log is
    /// opened again (recovery cuts what was not durable).
    failed: Option<String>,
    closed: bool,
}

impl Inner {
    fn last_entry(&self) -> Option<RaftLogId> {
        self.segs
            .iter()
            .rev()
            .find_map(|s| s.frames.last().map(|l| l.header.log_id))
    }
}

impl RaftLog {
    /// Opens (creating it if needed) the replicated log in `dir`,
    /// recovering from an unclean stop.
    ///
    /// # Errors
    ///
    /// A [`LogError`] for this partition: an unreadable directory, a state
    /// file or segment that does not decode or belongs elsewhere, a
    /// segment that is not a Raft segment, a missing or corrupt envelope,
    /// a sealed segment whose frames contradict its seal, segments that do
    /// not join, a key that cannot be unwrapped.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
        env: LogEnv,
    ) -> Result<Self, LogError> {
        let dir = dir.into();
        let config = config.validate()?;
        durable::create_dir_all(env.io.as_ref(), &dir).map_err(files::step_err)?;
        let ctx = Arc::new(LogCtx {
            dir: Arc::new(dir),
            config,
            keys,
            encrypted: true,
            clock: env.clock,
            io: env.io,
            indexes: super::index::IndexCache::default(),
        });
        let recovered = recover::recover(&ctx)?;
        let next_offset = recovered
            .segs
            .last()
            .and_then(|s| s.frames.last())
            .and_then(|l| l.header.next_offset())
            .unwrap_or(recovered.state.log_start_offset);
        let inner = Inner {
            segs: recovered.segs,
            active: None,
            next_offset,
            committed: recovered.state.committed,
            state: recovered.state,
            scratch: Vec::new(),
            failed: None,
            closed: false,
        };
        let next_index = inner
            .last_entry()
            .or(inner.state.last_purged)
            .map_or(0, |l| l.index.saturating_add(1));
        let sync = Arc::new(SyncShared::new(Arc::clone(&ctx.dir), next_index));
        let shared = Arc::clone(&sync);
        let flusher = std::thread::Builder::new()
            .name("strongbox-raft-flush".into())
            .spawn(move || run_flusher(shared, None))
            .map_err(files::io_err("starting the flusher thread of", &ctx.dir))?;
        Ok(Self {
            ctx,
            inner: Mutex::new(inner),
            shape: RwLock::new(()),
            sync,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.ctx.dir
    }

    /// Where the log stands.
    pub fn state(&self) -> RaftLogState {
        let inner = self.lock();
        RaftLogState {
            last_purged: inner.state.last_purged,
            last_entry: inner.last_entry(),
            log_start_offset: inner.state.log_start_offset,
            next_offset: inner.next_offset,
        }
    }

    /// The last saved vote.
    pub fn vote(&self) -> Option<RaftVote> {
        self.lock().state.vote
    }

    /// The committed log id: the newest reported in this process, or the
    /// one the state file kept (a lower bound of what was committed).
    pub fn committed(&self) -> Option<RaftLogId> {
        self.lock().committed
    }

    /// Records the committed log id in memory; it reaches the state file
    /// with the next write made for another reason (a vote, a purge, a
    /// segment roll, closing), so committing costs no fsync.
    pub fn set_committed(&self, committed: Option<RaftLogId>) {
        let mut inner = self.lock();
        if committed > inner.committed {
            inner.committed = committed;
        }
    }

    /// The opaque bytes the caller stored with [`RaftLog::save_snapshot_meta`]
    /// (empty when none).
    pub fn snapshot_meta(&self) -> Vec<u8> {
        self.lock().state.snapshot_meta.clone()
    }

    /// The records' offsets the log has handed out end here: the offset the
    /// next record gets.
    pub fn next_offset(&self) -> u64 {
        self.lock().next_offset
    }

    /// The record offsets of the entry at `index` (`base_offset`,
    /// `record_count`), from the frame table in memory: no I/O. `None` when
    /// the log does not hold that index.
    pub fn offsets_of(&self, index: u64) -> Option<(u64, u32)> {
        let inner = self.lock();
        let seg = inner.segs.iter().rev().find(|s| s.seg.base <= index)?;
        let first = seg.frames.first()?.header.log_id.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        let loc = seg.frames.get(at)?;
        (loc.header.log_id.index == index)
            .then_some((loc.header.base_offset, loc.header.record_count))
    }

    /// The entries whose indexes are in `range`, above the last purged one
    /// and up to the last written one (written, not necessarily durable),
    /// in order. Indexes the log does not hold are left out.
    ///
    /// # Errors
    ///
    /// A frame that does not authenticate, or I/O errors.
    pub fn entries(&self, range: Range<u64>) -> Result<Vec<StoredEntry>, LogError> {
        let _shape = self.read_shape();
        let wanted: Vec<(Arc<Segment>, Vec<Loc>)> = {
            let inner = self.lock();
            let floor = inner
                .state
                .last_purged
                .map_or(0, |p| p.index.saturating_add(1));
            let start = range.start.max(floor);
            inner
                .segs
                .iter()
                .filter_map(|s| {
                    // A segment's frames hold consecutive indexes from its
                    // first: the wanted ones are one slice of them.
                    let first = s.frames.first()?.header.log_id.index;
                    let from = usize::try_from(start.saturating_sub(first)).ok()?;
                    let to = usize::try_from(range.end.saturating_sub(first))
                        .unwrap_or(usize::MAX)
                        .min(s.frames.len());
                    let locs = s.frames.get(from..to)?;
                    (!locs.is_empty()).then(|| (Arc::clone(&s.seg), locs.to_vec()))
                })
                .collect()
        };
        let mut out = Vec::new();
        for (seg, locs) in wanted {
            let crypto = seg.crypto(&self.ctx)?;
            let file = seg.file()?;
            for loc in locs {
                let end = loc.position.saturating_add(loc.header.frame_len());
                let (header, payload) = frames::read_frame(
                    &seg,
                    file.as_ref(),
                    &crypto,
                    loc.position,
                    end,
                    Some(loc.header.log_id.index),
                )
                .map_err(|f| f.into_error(&seg.log_path))?;
                out.push(StoredEntry {
                    log_id: header.log_id,
                    kind: header.kind,
                    base_offset: header.base_offset,
                    record_count: header.record_count,
                    payload,
                });
            }
        }
        Ok(out)
    }

    /// What a consumer reads from offset `from`: the record batch holding
    /// `from` and the batches after it, as `(base_offset, batch)`, in order,
    /// stopping before the first batch at or past offset `end` (for a
    /// replicated partition, the committed offset: a batch is committed
    /// whole or not at all) and once about `max_bytes` of frames are taken
    /// (always at least one batch). Control frames are skipped; entries at
    /// or below the last purged one are not read. Empty when `from` is at or
    /// past `end` or past the last batch.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::entries`].
    pub fn records(
        &self,
        from: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, LogError> {
        if from >= end {
            return Ok(Vec::new());
        }
        let range = {
            let inner = self.lock();
            let floor = inner
                .state
                .last_purged
                .map_or(0, |p| p.index.saturating_add(1));
            let (mut first, mut last, mut taken) = (None, None, 0usize);
            'segments: for s in &inner.segs {
                // Frames end at non-decreasing offsets (a control frame ends
                // where it starts): skip those that end at or before `from`.
                let skip = s.frames.partition_point(|l| {
                    l.header
                        .base_offset
                        .saturating_add(u64::from(l.header.record_count))
                        <= from
                });
                for loc in s.frames.get(skip..).unwrap_or_default() {
                    let h = &loc.header;
                    if h.record_count == 0 || h.log_id.index < floor {
                        continue;
                    }
                    if h.base_offset >= end {
                        break 'segments;
                    }
                    first.get_or_insert(h.log_id.index);
                    last = Some(h.log_id.index);
                    taken = taken.saturating_add(usize::try_from(h.len).unwrap_or(usize::MAX));
                    if taken >= max_bytes {
                        break 'segments;
                    }
                }
            }
            match (first, last) {
                (Some(a), Some(b)) => a..b.saturating_add(1),
                _ => return Ok(Vec::new()),
            }
        };
        Ok(self
            .entries(range)?
            .into_iter()
            .filter(|e| e.kind == RaftFrameKind::Records)
            .map(|e| (e.base_offset, e.payload))
            .collect())
    }

    /// The segments' files, oldest first (for describe output and tests).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.lock()
            .segs
            .iter()
            .map(|s| s.seg.log_path.clone())
            .collect()
    }

    fn read_shape(&self) -> RwLockReadGuard<'_, ()> {
        self.shape.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_shape(&self) -> RwLockWriteGuard<'_, ()> {
        self.shape.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while appending leaves at worst an unsynced frame that
        // recovery cuts; keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_flusher(&self) {
        self.sync.shutdown();
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!(dir = %self.ctx.dir.display(), "the flusher thread panicked");
        }
    }
}

impl Drop for RaftLog {
    /// Stops the flusher after it syncs what is pending. Does not seal the
    /// active segment: the next open recovers it as after a crash.
    fn drop(&mut self) {
        self.stop_flusher();
        self.sync.watermark().end();
    }
}

/// Deletes a segment's files: renamed aside first (so a crash leaves a
/// deletion that the next open finishes), then the envelope shredded and
/// the key forgotten, then the data.
pub(crate) fn delete_segment(ctx: &LogCtx, seg: &Segment) -> Result<(), LogError> {
    let dir = ctx.dir.as_path();
    let io = ctx.io.as_ref();
    let aside = dir.join(deleted_file_name(seg.base));
    io.rename(&seg.log_path, &aside)
        .map_err(files::io_err("renaming for deletion", &seg.log_path))?;
    files::sync_dir(io, dir)?;
    shred_envelope(ctx, seg.base, Some(seg.header.segment_id))?;
    files::remove_if_exists(io, &aside)?;
    files::remove_if_exists(io, &seg.index_path)?;
    // Durable before the name can be taken again by a new segment.
    files::sync_dir(io, dir)?;
    tracing::info!(segment = %seg.log_path.display(), "deleted Raft segment");
    Ok(())
}

// Shared between the tasks of a Raft group.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<RaftLog>();
};
