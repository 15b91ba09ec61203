//! [`PartitionLog`]: opening, appending, rolling and closing. Reading lives
//! in `read.rs`, retention and rewrap in `maintain.rs`, truncation in
//! `truncate.rs`, fencing and resuming after a failed write or sync in
//! `heal.rs`, moving past lost offsets in `gap.rs`.
//!
//! Concurrency: one writer at a time (a mutex serializes appends, rolls,
//! retention and truncation); readers take a snapshot of the segment list
//! and read with positional reads, without holding any lock while they
//! read. A segment's `frames_end` only grows while it is active and is
//! published after its frame is written; the high watermark is published
//! after that, so a reader never sees a partial frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use strongbox_protocol::batch::RecordBatch;

use crate::io::{IoFile, StorageIo, default_io, durable};
use crate::keys::{Dek, KekId, KeyError, SegmentKeyContext, SegmentKeys, WrappedDek};

use super::config::{Clock, Durability, LogConfig, SystemClock, millis};
use super::durability::{Durable, SyncShared, run_flusher};
use super::error::LogError;
use super::files;
use super::format::{FRAME_HEADER_LEN, FrameHeader, IndexEntry, SEAL_LEN, frame_aad, frame_nonce};
use super::heal::Fence;
use super::health::{LogEvent, LogHealth};
use super::index::IndexWriter;
use super::recovery::{self, put_seal};
use super::segment::{LogCtx, Segment, SegmentCrypto};

/// The encrypted, append-only log of one topic partition.
///
/// `Send + Sync`: share it in an `Arc`; appends are serialized inside,
/// reads run concurrently with appends and with each other. All methods
/// block on file I/O; call them from a blocking context in async code and
/// `.await` the [`Durable`] an append returns.
#[derive(Debug)]
pub struct PartitionLog {
    pub(super) ctx: Arc<LogCtx>,
    pub(super) segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    pub(super) sync: Arc<SyncShared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    pub(super) log_start: AtomicU64,
    pub(super) end_offset: AtomicU64,
    /// Accepted gaps: base offset of the segment after a gap → the offset
    /// the log ended at before it (see `gap.rs`).
    pub(super) gaps: Mutex<BTreeMap<u64, u64>>,
    /// Gaps no marker accepts, found at open (a segment gone from the
    /// middle): base offset of the segment after it → the offset the log
    /// ended at before it (see `gap.rs`).
    pub(super) missing: Mutex<BTreeMap<u64, u64>>,
    /// What the log did on its own, until its owner takes it.
    events: Mutex<Vec<LogEvent>>,
    /// Whether appends go through (the writer's view; a failed sync the
    /// writer has not seen yet is added by `health()`).
    pub(super) health: Mutex<LogHealth>,
    on_roll: Option<RollHook>,
    /// Bumped whenever records leave the end of the log (a truncation, a
    /// heal that cut records no sync confirmed).
    pub(super) truncations: AtomicU64,
}

/// What a log uses from its surroundings: the clock and the file system.
#[derive(Debug, Clone)]
pub struct LogEnv {
    /// Where segment ages, headers and retention read the time.
    pub clock: Arc<dyn Clock>,
    /// The file system.
    pub io: Arc<dyn StorageIo>,
    /// Called with the log's new durable end after each segment roll (the
    /// broker records it); must not block.
    pub on_roll: Option<RollHook>,
}

/// A callback run after each segment roll with the log's durable end.
#[derive(Clone)]
pub struct RollHook(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for RollHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RollHook")
    }
}

impl Default for LogEnv {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            io: default_io(),
            on_roll: None,
        }
    }
}

/// The result of an append.
#[derive(Debug)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
    /// Resolves when the batch is as durable as the log's durability mode
    /// promises.
    pub durable: Durable,
}

/// One segment, for describe output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset after its last record (for the active segment: the log end).
    pub next_offset: u64,
    /// Bytes on disk, header and seal included.
    pub size_bytes: u64,
    /// True once rolled.
    pub sealed: bool,
    /// The MAC of its seal, once rolled (what a signed checkpoint records
    /// of a partition's last rolled segment).
    pub seal_mac: Option<[u8; 32]>,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Its largest record timestamp (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Its random 128-bit id.
    pub segment_id: [u8; 16],
}

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) active: Option<Active>,
    /// An empty newest segment file at this base offset, to be reused.
    pub(super) placeholder: Option<u64>,
    pub(super) next_offset: u64,
    scratch: Vec<u8>,
    pub(super) closed: bool,
    /// Set when a write or sync failed; cleared when an append goes through
    /// again.
    pub(super) fence: Option<Fence>,
    /// The directory was missing at open and was not created again
    /// ([`PartitionLog::open_recorded`]); cleared by `skip_to`.
    pub(super) dir_missing: bool,
}

/// The segment taking appends. Only a segment created by this process is
/// ever active: recovery never makes an existing segment writable again.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) seg: Arc<Segment>,
    pub(super) file: Arc<dyn IoFile>,
    pub(super) index: IndexWriter,
    pub(super) crypto: Arc<SegmentCrypto>,
    pub(super) position: u64,
    pub(super) frame_count: u64,
    pub(super) max_ts: i64,
}

impl PartitionLog {
    /// Opens (creating it if needed) the log in directory `dir`, recovering
    /// from an unclean stop. See `recovery.rs` and docs/STORAGE.md.
    ///
    /// # Errors
    ///
    /// A [`LogError`] for this partition only: an unreadable directory, a
    /// damaged or foreign segment, a missing, empty or corrupt envelope, a
    /// segment cut short, a key that cannot be unwrapped.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
    ) -> Result<Self, LogError> {
        Self::open_inner(dir.into(), config, keys, LogEnv::default(), true, true)
    }

    /// [`PartitionLog::open`] with a given clock.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::open`].
    pub fn open_with_clock(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LogError> {
        let env = LogEnv {
            clock,
            ..LogEnv::default()
        };
        Self::open_inner(dir.into(), config, keys, env, true, true)
    }

    /// [`PartitionLog::open`] with a given clock, file system and roll
    /// callback. A missing directory is created, and its name made durable
    /// up to the first directory that existed, before the log opens.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::open`].
    pub fn open_with_env(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
        env: LogEnv,
    ) -> Result<Self, LogError> {
        Self::open_inner(dir.into(), config, keys, env, true, true)
    }

    /// Opens the log of a partition that the caller's records say holds
    /// data (the key registry knows segments of it, or a durable end was
    /// recorded). Unlike [`PartitionLog::open_with_env`], a missing
    /// directory is **not** created: a partition that lost its directory
    /// must not start again empty and hand out its offsets a second time.
    /// The log then opens with no segment,
    /// [`PartitionLog::directory_missing`] is true, reads find nothing, and
    /// appends fail with [`LogError::DirectoryMissing`] until
    /// [`PartitionLog::skip_to`] accepts the loss (it creates the directory
    /// durably and moves the next offset past the lost ones).
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::open`].
    pub fn open_recorded(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
        env: LogEnv,
    ) -> Result<Self, LogError> {
        Self::open_inner(dir.into(), config, keys, env, true, false)
    }

    /// **Benchmarks only.** Opens a log that stores batches *unencrypted*,
    /// to measure what encryption costs. Its segments are flagged as
    /// plaintext and [`PartitionLog::open`] refuses them. Nothing in the
    /// broker's configuration can reach this.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::open`].
    #[doc(hidden)]
    pub fn dangerous_open_unencrypted_for_benchmarks(
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<Self, LogError> {
        Self::open_inner(
            dir.into(),
            config,
            Arc::new(NoKeys),
            LogEnv::default(),
            false,
            true,
        )
    }

    fn open_inner(
        dir: PathBuf,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
        env: LogEnv,
        encrypted: bool,
        create_missing: bool,
    ) -> Result<Self, LogError> {
        let config = config.validate()?;
        let dir_missing = if create_missing {
            // The directory's name, and those of the parents made with it,
            // must be durable before any record in it is acknowledged.
            durable::create_dir_all(env.io.as_ref(), &dir).map_err(files::step_err)?;
            false
        } else {
            match env.io.metadata(&dir) {
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(files::io_err("reading the metadata of", &dir)(e)),
            }
        };
        let dir = Arc::new(dir);
        let ctx = Arc::new(LogCtx {
            dir: Arc::clone(&dir),
            config,
            keys,
            encrypted,
            clock: env.clock,
            io: env.io,
            indexes: super::index::IndexCache::default(),
        });
        let recovered = if dir_missing {
            tracing::error!(dir = %dir.display(), "partition directory missing; not creating it again");
            recovery::Recovered::empty()
        } else {
            recovery::recover(&ctx)?
        };
        let next = recovered.next_offset;
        let log_start = recovered.segments.first().map_or(next, |s| s.base);
        let sync = Arc::new(SyncShared::new(Arc::clone(&dir), next));
        let flusher = match ctx.config.durability {
            Durability::Fsync => Some(None),
            Durability::Interval(period) => Some(Some(period)),
            Durability::None => None,
        }
        .map(|interval| {
            let shared = Arc::clone(&sync);
            std::thread::Builder::new()
                .name("strongbox-log-flush".into())
                .spawn(move || run_flusher(shared, interval))
                .map_err(files::io_err("starting the flusher thread of", &dir))
        })
        .transpose()?;
        tracing::debug!(dir = %dir.display(), segments = recovered.segments.len(), next_offset = next, "partition log opened");
        Ok(Self {
            ctx,
            segments: RwLock::new(recovered.segments),
            writer: Mutex::new(Writer {
                active: None,
                placeholder: recovered.placeholder,
                next_offset: next,
                scratch: Vec::new(),
                closed: false,
                fence: None,
                dir_missing,
            }),
            sync,
            flusher: Mutex::new(flusher),
            log_start: AtomicU64::new(log_start),
            end_offset: AtomicU64::new(next),
            gaps: Mutex::new(recovered.gaps),
            missing: Mutex::new(recovered.missing),
            events: Mutex::new(recovered.events),
            health: Mutex::new(LogHealth::Ok),
            on_roll: env.on_roll,
            truncations: AtomicU64::new(0),
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.ctx.dir
    }

    /// True when the log was opened with [`PartitionLog::open_recorded`]
    /// on a missing directory and no loss has been accepted since: it holds
    /// nothing and takes no appends.
    pub fn directory_missing(&self) -> bool {
        self.lock_writer().dir_missing
    }

    /// The first offset the log holds.
    pub fn log_start_offset(&self) -> u64 {
        self.log_start.load(Ordering::Acquire)
    }

    /// The offset after the last batch readers may see: under `fsync`
    /// durability, the last durable batch; otherwise the last written one.
    pub fn high_watermark(&self) -> u64 {
        self.sync.high_watermark()
    }

    /// The offset the next append gets.
    pub fn log_end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// The offset after the last record the log holds: the log end, unless
    /// the log moved past lost offsets that no record follows yet (then
    /// the end of the records before the gap).
    pub fn records_end(&self) -> u64 {
        let end = self.log_end_offset();
        let segs = self.read_segments();
        match segs.last() {
            Some(s) => s.sealed_next_offset().unwrap_or(end).min(end),
            None => self.log_start_offset().min(end),
        }
    }

    /// The offset after the last record known to be on disk: confirmed by
    /// an fsync (of the active segment, a seal, or at close). Never above
    /// [`PartitionLog::log_end_offset`]; under `fsync` durability it is the
    /// high watermark.
    pub fn durable_end_offset(&self) -> u64 {
        self.sync.durable_end()
    }

    /// How many times records have left the end of the log since it was
    /// opened (a truncation, or resuming after a failed sync cut records no
    /// sync confirmed). Whoever keeps state derived from the newest records
    /// (the broker's idempotent-producer table) rebuilds it when this
    /// changes.
    pub fn truncations(&self) -> u64 {
        self.truncations.load(Ordering::Acquire)
    }

    /// Takes what the log did on its own since the last call (a torn tail
    /// quarantined at open, a fault, resuming after one), oldest first.
    pub fn take_events(&self) -> Vec<LogEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn push_event(&self, event: LogEvent) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let end = self.log_end_offset();
        self.read_segments()
            .iter()
            .map(|s| SegmentInfo {
                base_offset: s.base,
                next_offset: s.sealed_next_offset().unwrap_or(end),
                size_bytes: s.size(),
                sealed: s.is_sealed(),
                seal_mac: s.seal.get().map(|seal| seal.mac),
                created_at_ms: s.header.created_at_ms,
                max_timestamp: s.max_timestamp.load(Ordering::Acquire),
                segment_id: s.header.segment_id,
            })
            .collect()
    }

    /// Bytes of all segments on disk.
    pub fn size_bytes(&self) -> u64 {
        self.read_segments().iter().map(|s| s.size()).sum()
    }

    /// Appends `batch` (already checked by [`RecordBatch::parse`]) at the
    /// log's next offset.
    ///
    /// # Errors
    ///
    /// [`LogError::BatchRejected`] for a batch a frame cannot hold;
    /// [`LogError::KeyCreate`] when a new segment needs a key and the key
    /// provider fails; [`LogError::Failed`] after a failed write or fsync;
    /// [`LogError::Closed`]; I/O errors.
    pub fn append(&self, batch: &RecordBatch) -> Result<Appended, LogError> {
        self.append_inner(batch, None)
    }

    /// Appends `batch` only if the log's next offset is `base_offset` (a
    /// follower applying its leader's batches).
    ///
    /// # Errors
    ///
    /// [`LogError::OffsetMismatch`] when the next offset differs; as
    /// [`PartitionLog::append`] otherwise.
    pub fn append_at(&self, base_offset: u64, batch: &RecordBatch) -> Result<Appended, LogError> {
        self.append_inner(batch, Some(base_offset))
    }

    fn append_inner(
        &self,
        batch: &RecordBatch,
        expected: Option<u64>,
    ) -> Result<Appended, LogError> {
        let mut w = self.lock_writer();
        self.ensure_writable(&mut w)?;
        let base = w.next_offset;
        if let Some(expected) = expected
            && expected != base
        {
            return Err(LogError::OffsetMismatch {
                expected,
                next: base,
            });
        }
        let header =
            FrameHeader::for_batch(batch.len(), base, batch.record_count()).map_err(|e| {
                LogError::BatchRejected {
                    len: batch.len(),
                    reason: e.to_string(),
                }
            })?;
        let next = header
            .next_offset()
            .ok_or_else(|| LogError::BatchRejected {
                len: batch.len(),
                reason: "its offsets would overflow".into(),
            })?;
        let now = self.ctx.clock.now_ms();
        if let Some(a) = &w.active
            && a.frame_count > 0
            && (a
                .position
                .saturating_add(header.frame_len())
                .saturating_add(SEAL_LEN as u64)
                > self.ctx.config.segment_bytes
                || self.is_old(&a.seg, now))
        {
            self.roll_locked(&mut w)?;
        }
        if w.active.is_none()
            && let Err(e) = self.create_active_locked(&mut w, now)
        {
            return Err(self.fence(&mut w, e));
        }

        let Writer {
            active, scratch, ..
        } = &mut *w;
        let Some(a) = active.as_mut() else {
            return Err(self.closed());
        };
        scratch.clear();
        scratch.extend_from_slice(&header.encode());
        scratch.extend_from_slice(batch.as_bytes());
        let aad = frame_aad(
            &a.seg.header.topic_id,
            a.seg.header.partition,
            &a.seg.header.segment_id,
            base,
            header.record_count,
        );
        let body = scratch.get_mut(FRAME_HEADER_LEN..).unwrap_or_default();
        let tag = a
            .crypto
            .seal_frame(&frame_nonce(base), &aad, body)
            .map_err(|e| LogError::BatchRejected {
                len: batch.len(),
                reason: e.to_string(),
            })?;
        scratch.extend_from_slice(&tag);
        let position = a.position;
        let written = files::write_all_at(a.file.as_ref(), scratch, position, &a.seg.log_path)
            .and_then(|()| {
                a.index.observe(IndexEntry {
                    offset: base,
                    position,
                    max_ts_before: a.max_ts,
                })
            });
        if let Err(e) = written {
            // The frame may be partly on disk past `position`: the heal
            // seals the segment at `position`, which drops it.
            return Err(self.fence(&mut w, e));
        }
        a.position = position.saturating_add(header.frame_len());
        a.frame_count = a.frame_count.saturating_add(1);
        a.max_ts = a.max_ts.max(batch.max_timestamp());
        a.seg.max_timestamp.store(a.max_ts, Ordering::Release);
        a.seg.frames_end.store(a.position, Ordering::Release);
        let frames_end = a.position;
        w.next_offset = next;
        self.end_offset.store(next, Ordering::Release);
        let durable = match self.ctx.config.durability {
            Durability::Fsync => self.sync.register_fsync(next, frames_end),
            Durability::Interval(_) | Durability::None => {
                self.sync.register_written(next, frames_end)
            }
        };
        if w.fence.is_some() {
            self.unfence(&mut w);
        }
        Ok(Appended {
            base_offset: base,
            last_offset: next.saturating_sub(1),
            durable,
        })
    }

    pub(super) fn is_old(&self, seg: &Segment, now: i64) -> bool {
        now.saturating_sub(seg.header.created_at_ms) >= millis(self.ctx.config.segment_age)
    }

    /// Seals the active segment now, if it holds any batch. The next append
    /// starts a new segment with a new key.
    ///
    /// # Errors
    ///
    /// I/O errors writing or syncing the seal (the log is then failed).
    pub fn roll(&self) -> Result<bool, LogError> {
        let mut w = self.lock_writer();
        self.ensure_writable(&mut w)?;
        self.roll_locked(&mut w)
    }

    /// Stops appending to the active segment if its data key is wrapped
    /// under `kek` (before that KEK version is destroyed): a segment with
    /// frames is sealed; an empty one is given up, and its key forgotten.
    /// Either way the next append starts a new segment whose key the key
    /// manager wraps under the scope's active version, and no data key
    /// wrapped under `kek` stays in this log's memory. Returns whether the
    /// active segment was under `kek`.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::roll`].
    pub fn stop_appending_under(&self, kek: &KekId) -> Result<bool, LogError> {
        let mut w = self.lock_writer();
        let under = w
            .active
            .as_ref()
            .and_then(|a| a.seg.envelope())
            .is_some_and(|env| env.wrapped.kek == *kek);
        if !under {
            return Ok(false);
        }
        self.ensure_writable(&mut w)?;
        if w.active.as_ref().is_some_and(|a| a.frame_count > 0) {
            return self.roll_locked(&mut w).map(|_| true);
        }
        // Nothing was written under that key: drop the segment, whose file
        // (a header only) the next append recreates at the same offset
        // with a new key, as after a crash during creation.
        let Some(a) = w.active.take() else {
            return Ok(false);
        };
        {
            let mut segs = self.write_segments();
            if segs.last().is_some_and(|s| Arc::ptr_eq(s, &a.seg)) {
                segs.pop();
            }
        }
        self.sync.stop_file();
        w.placeholder = Some(a.seg.base);
        if let Some(env) = a.seg.envelope() {
            let _ = self.ctx.keys.forget(&env.context());
        }
        Ok(true)
    }

    /// Seals the active segment if it is older than `segment_age` (a broker
    /// timer calls this so idle partitions roll and can be retained).
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::roll`].
    pub fn roll_if_due(&self) -> Result<bool, LogError> {
        let mut w = self.lock_writer();
        self.ensure_writable(&mut w)?;
        let now = self.ctx.clock.now_ms();
        if w.active.as_ref().is_some_and(|a| self.is_old(&a.seg, now)) {
            self.roll_locked(&mut w)
        } else {
            Ok(false)
        }
    }

    pub(super) fn roll_locked(&self, w: &mut Writer) -> Result<bool, LogError> {
        let Some(a) = w.active.take() else {
            return Ok(false);
        };
        if a.frame_count == 0 {
            w.active = Some(a);
            return Ok(false);
        }
        match self.seal_active(&a, w.next_offset) {
            Ok(()) => {
                tracing::debug!(segment = %a.seg.log_path.display(), frames = a.frame_count, "rolled segment");
                if let Some(hook) = &self.on_roll {
                    (hook.0)(self.sync.durable_end());
                }
                Ok(true)
            }
            Err(e) => {
                w.active = Some(a);
                Err(self.fence(w, e))
            }
        }
    }

    /// Writes and syncs the seal of the active segment `a` at its current
    /// position. A failed sync is reported to the flusher's state (the
    /// descriptor is never synced again); a failed write leaves the
    /// segment to be sealed again.
    pub(super) fn seal_active(&self, a: &Active, next_offset: u64) -> Result<(), LogError> {
        if let Some(f) = self.sync.detach_file() {
            // The flusher's sync of this descriptor failed: it is never
            // synced again; the caller cuts back to the durable point.
            return Err(f.fault.error(self.ctx.dir.as_ref().clone(), f.reason));
        }
        let seal = put_seal(
            &self.ctx,
            &a.seg,
            &a.crypto,
            a.file.as_ref(),
            a.position,
            next_offset,
            a.frame_count,
            a.max_ts,
        );
        let seal = match seal {
            Ok(seal) => seal,
            Err(e) => {
                self.sync.reattach_file(Arc::clone(&a.file));
                return Err(e);
            }
        };
        if let Err(e) = crate::observe::timed_fsync(|| a.file.sync_data()) {
            let fault = super::health::WriteFault::of(&e);
            self.sync.fail(fault, format!("fdatasync of the seal: {e}"));
            return Err(files::io_err("syncing", &a.seg.log_path)(e));
        }
        // The index is a hint: a lost entry costs a scan, never data.
        if let Err(e) = a.index.sync() {
            tracing::warn!(segment = %a.seg.log_path.display(), error = %e, "the index of a sealed segment could not be synced; reads fall back to scanning where it is short");
        }
        a.seg.set_sealed(seal, true);
        super::index::adopt_sealed(&self.ctx, &a.seg);
        // The seal's fdatasync covered every frame: all waiters of this
        // segment are durable.
        self.sync.stop_file();
        self.sync.all_durable();
        Ok(())
    }

    /// Seals the active segment, waits for every pending fsync and stops
    /// the flusher. The next open starts a new segment.
    ///
    /// # Errors
    ///
    /// I/O errors sealing the segment; [`LogError::Failed`] when an earlier
    /// write or fsync failed.
    pub fn close(self) -> Result<(), LogError> {
        self.close_with_end().map(|_| ())
    }

    /// [`PartitionLog::close`], returning the log's end offset: every record
    /// before it is durable.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::close`].
    pub fn close_with_end(self) -> Result<u64, LogError> {
        let result = {
            let mut w = self.lock_writer();
            let r = if w.closed {
                Ok(())
            } else {
                // A log fenced by a fault resumes first (at once, whatever
                // the retry pacing), so a disk that works again closes
                // cleanly.
                self.heal_now(&mut w)
                    .and_then(|()| self.roll_locked(&mut w).map(|_| ()))
            };
            w.closed = true;
            r.map(|()| w.next_offset)
        };
        self.stop_flusher();
        match (result, self.sync.failure()) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(failure)) => Err(failure
                .fault
                .error(self.ctx.dir.as_ref().clone(), failure.reason)),
            (Ok(end), None) => Ok(end),
        }
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

    pub(super) fn closed(&self) -> LogError {
        LogError::Closed {
            dir: self.ctx.dir.as_ref().clone(),
        }
    }

    pub(super) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A panic in a writer leaves at worst an unsynced frame behind the
        // published end, which recovery handles; keep going.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn read_segments(&self) -> RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write_segments(&self) -> RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PartitionLog {
    /// Stops the flusher after it syncs what is pending. Does not seal the
    /// active segment: the next open recovers it as after a crash.
    fn drop(&mut self) {
        self.stop_flusher();
        // Nothing publishes the high watermark any more.
        self.sync.watermark().end();
    }
}

// The broker shares a log between tasks and awaits its waiters on any
// worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<PartitionLog>();
    send::<Appended>();
    send::<Durable>();
};

/// The key source of the benchmark-only plaintext mode: it has none.
#[derive(Debug)]
struct NoKeys;

impl SegmentKeys for NoKeys {
    fn create(&self, _: &SegmentKeyContext) -> Result<(Dek, WrappedDek), KeyError> {
        Err(KeyError::Config(
            "a plaintext benchmark log has no keys".into(),
        ))
    }

    fn open(&self, _: &SegmentKeyContext, _: &WrappedDek) -> Result<Dek, KeyError> {
        Err(KeyError::Config(
            "a plaintext benchmark log has no keys".into(),
        ))
    }

    fn forget(&self, _: &SegmentKeyContext) -> Result<(), KeyError> {
        Ok(())
    }
}
