//! [`PartitionLog`]: opening, appending, rolling, retention, truncation and
//! closing. Reading lives in `read.rs`.
//!
//! Concurrency: one writer at a time (a mutex serializes appends, rolls,
//! retention and truncation); readers take a snapshot of the segment list
//! and read with positional reads, without holding any lock while they
//! read. A segment's `frames_end` only grows while it is active and is
//! published after its frame is written; the high watermark is published
//! after that, so a reader never sees a partial frame.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use ring::rand::SecureRandom;
use strongbox_protocol::batch::RecordBatch;

use crate::keys::{Dek, KekId, KeyError, SegmentKeyContext, SegmentKeys, WrappedDek};

use super::config::{Clock, Durability, LogConfig, RetentionPolicy, SystemClock, millis};
use super::durability::{Durable, SyncShared, run_flusher};
use super::envelope::{KeyEnvelope, write_envelope};
use super::error::LogError;
use super::files;
use super::format::{
    FLAG_UNENCRYPTED, FRAME_HEADER_LEN, FrameHeader, IndexEntry, SEAL_LEN, SEGMENT_HEADER_LEN,
    SegmentHeader, deleted_file_name, frame_aad, frame_nonce,
};
use super::index::{self, IndexWriter};
use super::recovery::{self, shred_envelope, write_seal};
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
    log_start: AtomicU64,
    end_offset: AtomicU64,
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
struct Writer {
    active: Option<Active>,
    /// An empty newest segment file at this base offset, to be reused.
    placeholder: Option<u64>,
    next_offset: u64,
    scratch: Vec<u8>,
    closed: bool,
}

/// The segment taking appends. Only a segment created by this process is
/// ever active: recovery never makes an existing segment writable again.
#[derive(Debug)]
struct Active {
    seg: Arc<Segment>,
    file: Arc<File>,
    index: IndexWriter,
    crypto: Arc<SegmentCrypto>,
    position: u64,
    frame_count: u64,
    max_ts: i64,
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
        Self::open_inner(dir.into(), config, keys, Arc::new(SystemClock), true)
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
        Self::open_inner(dir.into(), config, keys, clock, true)
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
            Arc::new(SystemClock),
            false,
        )
    }

    fn open_inner(
        dir: PathBuf,
        config: LogConfig,
        keys: Arc<dyn SegmentKeys>,
        clock: Arc<dyn Clock>,
        encrypted: bool,
    ) -> Result<Self, LogError> {
        let config = config.validate()?;
        std::fs::create_dir_all(&dir).map_err(files::io_err("creating", &dir))?;
        let dir = Arc::new(dir);
        let ctx = Arc::new(LogCtx {
            dir: Arc::clone(&dir),
            config,
            keys,
            encrypted,
            clock,
        });
        let recovered = recovery::recover(&ctx)?;
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
            }),
            sync,
            flusher: Mutex::new(flusher),
            log_start: AtomicU64::new(log_start),
            end_offset: AtomicU64::new(next),
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.ctx.dir
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
        self.check_writable(&w)?;
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
        if w.active.is_none() {
            self.create_active_locked(&mut w, now)?;
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
        let written =
            files::write_all_at(&a.file, scratch, position, &a.seg.log_path).and_then(|()| {
                a.index.observe(IndexEntry {
                    offset: base,
                    position,
                    max_ts_before: a.max_ts,
                })
            });
        if let Err(e) = written {
            self.sync.fail(e.to_string());
            return Err(e);
        }
        a.position = position.saturating_add(header.frame_len());
        a.frame_count = a.frame_count.saturating_add(1);
        a.max_ts = a.max_ts.max(batch.max_timestamp());
        a.seg.max_timestamp.store(a.max_ts, Ordering::Release);
        a.seg.frames_end.store(a.position, Ordering::Release);
        w.next_offset = next;
        self.end_offset.store(next, Ordering::Release);
        let durable = match self.ctx.config.durability {
            Durability::Fsync => self.sync.register_fsync(next),
            Durability::Interval(_) | Durability::None => self.sync.register_written(next),
        };
        Ok(Appended {
            base_offset: base,
            last_offset: next.saturating_sub(1),
            durable,
        })
    }

    fn is_old(&self, seg: &Segment, now: i64) -> bool {
        now.saturating_sub(seg.header.created_at_ms) >= millis(self.ctx.config.segment_age)
    }

    /// Creates the active segment at the log's next offset: header and empty
    /// index, a fresh data key from the key manager, its envelope (written
    /// atomically, which also makes the new file names durable).
    fn create_active_locked(&self, w: &mut Writer, now: i64) -> Result<(), LogError> {
        let ctx = &self.ctx;
        let base = w.next_offset;
        let path = ctx.segment_path(base);
        let segment_id = random_segment_id().map_err(|source| LogError::KeyCreate {
            segment: path.clone(),
            source,
        })?;
        let header = SegmentHeader {
            flags: if ctx.encrypted { 0 } else { FLAG_UNENCRYPTED },
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            base_offset: base,
            created_at_ms: now,
        };
        let recycling = w.placeholder == Some(base);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if recycling {
            options.truncate(true);
        } else {
            options.create_new(true);
        }
        let file = options
            .open(&path)
            .map_err(files::io_err("creating", &path))?;
        // From here until its envelope is in place, the file is an empty
        // newest segment: recovery and the next attempt reuse it. The
        // header needs no fsync of its own: the fdatasync that makes the
        // first frame durable covers it, and the envelope's directory fsync
        // makes the new names durable. A crash before a frame is durable
        // leaves a newest segment without frames, which recovery empties,
        // shredding its envelope if one was written.
        w.placeholder = Some(base);
        files::write_all_at(&file, &header.encode(), 0, &path)?;
        let index = IndexWriter::create(
            &ctx.dir.join(super::format::index_file_name(base)),
            ctx.config.index_interval_bytes,
        )?;

        let (crypto, envelope) = if ctx.encrypted {
            let key_ctx = SegmentKeyContext {
                topic_id: ctx.config.topic_id,
                partition: ctx.config.partition,
                segment_id,
                scope: ctx.config.kek_scope.clone(),
            };
            let (dek, wrapped) =
                ctx.keys
                    .create(&key_ctx)
                    .map_err(|source| LogError::KeyCreate {
                        segment: path.clone(),
                        source,
                    })?;
            let envelope = self.store_envelope(&key_ctx, &path, base, segment_id, wrapped)?;
            (
                Arc::new(SegmentCrypto::new(&dek, &segment_id)),
                Some(envelope),
            )
        } else {
            files::sync_dir(&ctx.dir)?;
            (Arc::new(SegmentCrypto::plaintext(&segment_id)), None)
        };
        w.placeholder = None;

        let seg = Arc::new(Segment::new(
            &ctx.dir,
            header,
            envelope,
            SEGMENT_HEADER_LEN as u64,
            i64::MIN,
        ));
        let file = Arc::new(file);
        seg.set_active(Arc::clone(&file), Arc::clone(&crypto));
        {
            let mut segs = self.write_segments();
            if segs.is_empty() {
                self.log_start.store(base, Ordering::Release);
            }
            segs.push(Arc::clone(&seg));
        }
        self.sync.set_file(Some(Arc::clone(&file)));
        tracing::debug!(segment = %path.display(), "created segment");
        w.active = Some(Active {
            seg,
            file,
            index,
            crypto,
            position: SEGMENT_HEADER_LEN as u64,
            frame_count: 0,
            max_ts: i64::MIN,
        });
        Ok(())
    }

    /// Writes the envelope of a new segment; on failure tells the key
    /// manager to forget the key it just made.
    fn store_envelope(
        &self,
        key_ctx: &SegmentKeyContext,
        path: &Path,
        base: u64,
        segment_id: [u8; 16],
        wrapped: WrappedDek,
    ) -> Result<KeyEnvelope, LogError> {
        let ctx = &self.ctx;
        if wrapped.kek.scope != ctx.config.kek_scope {
            let _ = ctx.keys.forget(key_ctx);
            return Err(LogError::KeyCreate {
                segment: path.to_path_buf(),
                source: KeyError::Config(format!(
                    "the key manager wrapped the key under scope {}, the topic uses {}",
                    wrapped.kek.scope, ctx.config.kek_scope
                )),
            });
        }
        let envelope = KeyEnvelope {
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id,
            base_offset: base,
            wrapped,
        };
        if let Err(e) = write_envelope(&ctx.dir, &envelope) {
            let _ = ctx.keys.forget(key_ctx);
            return Err(e);
        }
        Ok(envelope)
    }

    /// Seals the active segment now, if it holds any batch. The next append
    /// starts a new segment with a new key.
    ///
    /// # Errors
    ///
    /// I/O errors writing or syncing the seal (the log is then failed).
    pub fn roll(&self) -> Result<bool, LogError> {
        let mut w = self.lock_writer();
        self.check_writable(&w)?;
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
        self.check_writable(&w)?;
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
        self.sync.set_file(None);
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
        self.check_writable(&w)?;
        let now = self.ctx.clock.now_ms();
        if w.active.as_ref().is_some_and(|a| self.is_old(&a.seg, now)) {
            self.roll_locked(&mut w)
        } else {
            Ok(false)
        }
    }

    fn roll_locked(&self, w: &mut Writer) -> Result<bool, LogError> {
        let Some(a) = w.active.take() else {
            return Ok(false);
        };
        if a.frame_count == 0 {
            w.active = Some(a);
            return Ok(false);
        }
        let sealed = write_seal(
            &self.ctx,
            &a.seg,
            &a.crypto,
            &a.file,
            a.position,
            w.next_offset,
            a.frame_count,
            a.max_ts,
        )
        .and_then(|seal| a.index.sync().map(|()| seal));
        match sealed {
            Ok(seal) => {
                a.seg.set_sealed(seal, true);
                // The seal's fdatasync covered every frame: all waiters of
                // this segment are durable.
                self.sync.set_file(None);
                self.sync.all_durable();
                tracing::debug!(segment = %a.seg.log_path.display(), frames = a.frame_count, "rolled segment");
                Ok(true)
            }
            Err(e) => {
                self.sync.fail(e.to_string());
                Err(e)
            }
        }
    }

    /// Deletes whole sealed segments, oldest first, that `policy` no longer
    /// keeps. The newest segment is never deleted (it records the next
    /// offset). Each deletion shreds the envelope first (then tells the key
    /// manager to forget the key), then removes the data.
    ///
    /// Returns the base offsets of the deleted segments.
    ///
    /// # Errors
    ///
    /// I/O errors; segments deleted before the error stay deleted.
    pub fn apply_retention(&self, policy: &RetentionPolicy) -> Result<Vec<u64>, LogError> {
        let w = self.lock_writer();
        let now = self.ctx.clock.now_ms();
        let mut deleted = Vec::new();
        loop {
            let victim = {
                let segs = self.read_segments();
                let total: u64 = segs.iter().map(|s| s.size()).sum();
                match segs.first() {
                    Some(oldest) if segs.len() > 1 && oldest.is_sealed() => {
                        let by_size = policy.max_bytes.is_some_and(|m| total > m);
                        let by_age = policy.max_age.is_some_and(|age| {
                            now.saturating_sub(oldest.max_timestamp.load(Ordering::Acquire))
                                > millis(age)
                        });
                        (by_size || by_age).then(|| Arc::clone(oldest))
                    }
                    _ => None,
                }
            };
            let Some(victim) = victim else { break };
            {
                let mut segs = self.write_segments();
                segs.retain(|s| !Arc::ptr_eq(s, &victim));
                let start = segs.first().map_or(w.next_offset, |s| s.base);
                self.log_start.store(start, Ordering::Release);
            }
            self.delete_segment_files(&victim)?;
            deleted.push(victim.base);
        }
        drop(w);
        Ok(deleted)
    }

    /// Re-wraps the data keys of the segments whose envelope names KEK
    /// version `from` (after a rotation; the rewrap job calls this for each
    /// partition). For each such segment `rewrap` returns its key wrapped
    /// under the scope's active version, the envelope is replaced
    /// atomically and used from then on, and `commit` records the change in
    /// the key registry. Only envelopes change: no data is read or written.
    ///
    /// Returns how many segments were rewrapped.
    ///
    /// # Errors
    ///
    /// [`LogError::Key`] when `rewrap` or `commit` fails or returns a key
    /// under another scope (segments done before stay done, the others keep
    /// their envelope); I/O errors writing an envelope.
    pub fn rewrap_envelopes(
        &self,
        from: &KekId,
        mut rewrap: impl FnMut(&SegmentKeyContext, &WrappedDek) -> Result<WrappedDek, KeyError>,
        mut commit: impl FnMut(&SegmentKeyContext, &WrappedDek) -> Result<(), KeyError>,
    ) -> Result<u64, LogError> {
        let segs = self.read_segments().clone();
        let mut done = 0;
        for seg in segs {
            // One segment at a time under the writer lock, so retention and
            // truncation cannot delete it halfway, and appends wait only for
            // one unwrap and one envelope write.
            let _w = self.lock_writer();
            if !self.read_segments().iter().any(|s| Arc::ptr_eq(s, &seg)) {
                continue;
            }
            let Some(mut env) = seg.envelope() else {
                continue;
            };
            if env.wrapped.kek != *from {
                continue;
            }
            let key_ctx = env.context();
            let key_err = |source| LogError::Key {
                segment: seg.log_path.clone(),
                source,
            };
            let wrapped = rewrap(&key_ctx, &env.wrapped).map_err(key_err)?;
            if wrapped.kek.scope != self.ctx.config.kek_scope {
                return Err(key_err(KeyError::Config(format!(
                    "the key was rewrapped under scope {}, the topic uses {}",
                    wrapped.kek.scope, self.ctx.config.kek_scope
                ))));
            }
            env.wrapped = wrapped;
            write_envelope(&self.ctx.dir, &env)?;
            seg.set_envelope(env.clone());
            commit(&key_ctx, &env.wrapped).map_err(key_err)?;
            done += 1;
        }
        Ok(done)
    }

    /// Removes a segment's files: rename the data aside (so a crash
    /// finishes the job on restart), shred the envelope, remove the data.
    fn delete_segment_files(&self, seg: &Segment) -> Result<(), LogError> {
        let dir = self.ctx.dir.as_path();
        let aside = dir.join(deleted_file_name(seg.base));
        std::fs::rename(&seg.log_path, &aside)
            .map_err(files::io_err("renaming for deletion", &seg.log_path))?;
        files::sync_dir(dir)?;
        shred_envelope(&self.ctx, seg.base)?;
        files::remove_if_exists(&aside)?;
        files::remove_if_exists(&seg.index_path)?;
        files::sync_dir(dir)?;
        tracing::info!(segment = %seg.log_path.display(), "deleted segment");
        Ok(())
    }

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
        self.check_writable(&w)?;
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

        let result = self.truncate_locked(&mut w, &segs, k, keep, offset, cut);
        if let Err(e) = &result {
            self.sync.fail(e.to_string());
        }
        result
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
            a.file
                .sync_data()
                .map_err(files::io_err("syncing", &a.seg.log_path))?;
            a.index.sync()?;
        }
        self.sync.set_file(None);
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
                shred_envelope(&self.ctx, keep.base)?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&keep.log_path)
                    .map_err(files::io_err("opening", &keep.log_path))?;
                file.set_len(0)
                    .map_err(files::io_err("emptying", &keep.log_path))?;
                file.sync_all()
                    .map_err(files::io_err("syncing", &keep.log_path))?;
                files::remove_if_exists(&keep.index_path)?;
                files::sync_dir(&self.ctx.dir)?;
                w.placeholder = Some(offset);
                self.log_start.store(offset, Ordering::Release);
            }
            Some(cut) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&keep.log_path)
                    .map_err(files::io_err("opening", &keep.log_path))?;
                file.set_len(cut.position)
                    .map_err(files::io_err("truncating", &keep.log_path))?;
                index::rewrite(&keep.index_path, &cut.entries)?;
                let seal = write_seal(
                    &self.ctx,
                    &keep,
                    &cut.crypto,
                    &file,
                    cut.position,
                    offset,
                    cut.frames,
                    cut.max_ts,
                )?;
                let replacement = Arc::new(Segment::new(
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
                .read_frame(&file, &crypto, pos, end, Some(expected))
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

    /// Seals the active segment, waits for every pending fsync and stops
    /// the flusher. The next open starts a new segment.
    ///
    /// # Errors
    ///
    /// I/O errors sealing the segment; [`LogError::Failed`] when an earlier
    /// write or fsync failed.
    pub fn close(self) -> Result<(), LogError> {
        let result = {
            let mut w = self.lock_writer();
            let r = if w.closed {
                Ok(())
            } else {
                self.roll_locked(&mut w).map(|_| ())
            };
            w.closed = true;
            r
        };
        self.stop_flusher();
        match (result, self.sync.failure()) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(reason)) => Err(LogError::Failed {
                dir: self.ctx.dir.as_ref().clone(),
                reason,
            }),
            (Ok(()), None) => Ok(()),
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

    fn check_writable(&self, w: &Writer) -> Result<(), LogError> {
        if w.closed {
            return Err(self.closed());
        }
        if let Some(reason) = self.sync.failure() {
            return Err(LogError::Failed {
                dir: self.ctx.dir.as_ref().clone(),
                reason,
            });
        }
        Ok(())
    }

    fn closed(&self) -> LogError {
        LogError::Closed {
            dir: self.ctx.dir.as_ref().clone(),
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A panic in a writer leaves at worst an unsynced frame behind the
        // published end, which recovery handles; keep going.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn read_segments(&self) -> RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_segments(&self) -> RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
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

/// Where `truncate` cuts a segment.
struct Cut {
    crypto: Arc<SegmentCrypto>,
    position: u64,
    frames: u64,
    max_ts: i64,
    entries: Vec<IndexEntry>,
}

fn random_segment_id() -> Result<[u8; 16], KeyError> {
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| KeyError::Random)?;
    Ok(id)
}

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
