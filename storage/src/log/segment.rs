//! One segment in memory: where its files are, its header and seal, its
//! key, and reading and authenticating its frames.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use bytes::Bytes;

use crate::aead::{Aes256Gcm, KEY_LEN, SealKey, TAG_LEN};
use crate::io::{IoFile, OpenMode, StorageIo};
use crate::keys::{Dek, SegmentKeys};

use super::config::{Clock, LogConfig};
use super::envelope::KeyEnvelope;
use super::error::LogError;
use super::files;
use super::format::{
    FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN, Seal, SegmentHeader, frame_aad, frame_nonce,
    index_file_name, segment_file_name,
};
use super::index::{IndexCache, LiveIndex};

/// What every segment of one log shares.
#[derive(Debug)]
pub(crate) struct LogCtx {
    pub(crate) dir: Arc<PathBuf>,
    pub(crate) config: LogConfig,
    pub(crate) keys: Arc<dyn SegmentKeys>,
    /// False only for the benchmark-only plaintext mode.
    pub(crate) encrypted: bool,
    pub(crate) clock: Arc<dyn Clock>,
    /// Every file-system operation of the log goes through it.
    pub(crate) io: Arc<dyn StorageIo>,
    /// The indexes of sealed segments that readers looked up lately.
    pub(crate) indexes: IndexCache,
}

impl LogCtx {
    pub(crate) fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_file_name(base))
    }
}

/// A segment's keys, ready to use: the frame AEAD and the seal MAC key.
#[derive(Debug)]
pub(crate) struct SegmentCrypto {
    cipher: Option<Aes256Gcm>,
    seal_key: SealKey,
}

impl SegmentCrypto {
    pub(crate) fn new(dek: &Dek, segment_id: &[u8; 16]) -> Self {
        Self {
            cipher: Some(Aes256Gcm::new(dek.expose())),
            seal_key: SealKey::derive(dek.expose(), segment_id),
        }
    }

    /// The benchmark-only plaintext mode: frames are copied, not sealed; the
    /// seal's MAC uses an all-zero key (it proves nothing, and such segments
    /// are refused by `PartitionLog::open`).
    pub(crate) fn plaintext(segment_id: &[u8; 16]) -> Self {
        Self {
            cipher: None,
            seal_key: SealKey::derive(&[0u8; KEY_LEN], segment_id),
        }
    }

    pub(crate) fn seal_key(&self) -> &SealKey {
        &self.seal_key
    }

    /// Seals `buf` in place and returns the tag.
    pub(crate) fn seal_frame(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], crate::aead::AeadError> {
        match &self.cipher {
            Some(c) => {
                let tag = c.seal_in_place(nonce, aad, buf)?;
                crate::observe::aead(crate::observe::AeadOp::Seal, buf.len());
                Ok(tag)
            }
            None => Ok([0u8; TAG_LEN]),
        }
    }

    pub(crate) fn open_frame(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, crate::aead::AeadError> {
        match &self.cipher {
            Some(c) => {
                let len = c.open_in_place(nonce, aad, buf).map(|p| p.len())?;
                crate::observe::aead(crate::observe::AeadOp::Open, len);
                Ok(len)
            }
            None => buf
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(crate::aead::AeadError::Length),
        }
    }
}

/// Bytes read past the batches a read wants, for the frame headers and
/// tags around them: without it the last frame that fits the budget would
/// be cut and need a read of its own.
const READ_AHEAD_SLACK: u64 = 4096;

/// A frame read back and authenticated.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) position: u64,
    pub(crate) header: FrameHeader,
    pub(crate) batch: Bytes,
}

impl Frame {
    pub(crate) fn end(&self) -> u64 {
        self.position.saturating_add(self.header.frame_len())
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameFault {
    /// The file could not be read: not a statement about its contents.
    Io(LogError),
    /// The bytes at this position are not an authentic frame in its place.
    Invalid { position: u64, reason: String },
}

impl FrameFault {
    pub(crate) fn into_error(self, segment: &Path) -> LogError {
        match self {
            Self::Io(e) => e,
            Self::Invalid { position, reason } => LogError::CorruptFrame {
                segment: segment.to_path_buf(),
                position,
                reason,
            },
        }
    }
}

/// One segment of a partition log.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) header: SegmentHeader,
    pub(crate) header_bytes: [u8; SEGMENT_HEADER_LEN],
    /// `None` in the plaintext benchmark mode. Replaced when the data key
    /// is rewrapped.
    envelope: RwLock<Option<KeyEnvelope>>,
    pub(crate) log_path: PathBuf,
    pub(crate) index_path: PathBuf,
    io: Arc<dyn StorageIo>,
    file: Mutex<Option<Arc<dyn IoFile>>>,
    /// The position after the last complete frame readers may look at.
    pub(crate) frames_end: AtomicU64,
    pub(crate) max_timestamp: AtomicI64,
    pub(crate) seal: OnceLock<Seal>,
    seal_verified: AtomicBool,
    /// The keys of the active segment, held while it takes appends.
    active_crypto: Mutex<Option<Arc<SegmentCrypto>>>,
    /// The index entries of the active segment, which its writer appends
    /// to; moved to the log's [`IndexCache`] when the segment is sealed.
    live_index: Mutex<Option<Arc<LiveIndex>>>,
}

impl Segment {
    pub(crate) fn new(
        io: &Arc<dyn StorageIo>,
        dir: &Path,
        header: SegmentHeader,
        envelope: Option<KeyEnvelope>,
        frames_end: u64,
        max_timestamp: i64,
    ) -> Self {
        let base = header.base_offset;
        Self {
            base,
            header,
            header_bytes: header.encode(),
            envelope: RwLock::new(envelope),
            log_path: dir.join(segment_file_name(base)),
            index_path: dir.join(index_file_name(base)),
            io: Arc::clone(io),
            file: Mutex::new(None),
            frames_end: AtomicU64::new(frames_end),
            max_timestamp: AtomicI64::new(max_timestamp),
            seal: OnceLock::new(),
            seal_verified: AtomicBool::new(false),
            active_crypto: Mutex::new(None),
            live_index: Mutex::new(None),
        }
    }

    /// Readers search `index`, which the active segment's writer fills,
    /// until the segment is sealed.
    pub(crate) fn set_live_index(&self, index: Arc<LiveIndex>) {
        *self
            .live_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(index);
    }

    /// The active segment's index entries in memory, if this is it.
    pub(crate) fn live_index(&self) -> Option<Arc<LiveIndex>> {
        self.live_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops readers from using the entries in memory (the segment was
    /// sealed or its index rewritten) and returns them.
    pub(crate) fn take_live_index(&self) -> Option<Arc<LiveIndex>> {
        self.live_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Marks the segment active: it holds its keys and its open file.
    pub(crate) fn set_active(&self, file: Arc<dyn IoFile>, crypto: Arc<SegmentCrypto>) {
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
        *self
            .active_crypto
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(crypto);
    }

    /// Records the seal. `verified` when this process wrote it or checked
    /// its MAC. The active keys are dropped: later reads unwrap again
    /// (through the key manager's cache).
    pub(crate) fn set_sealed(&self, seal: Seal, verified: bool) {
        let _ = self.seal.set(seal);
        self.frames_end.store(seal.frames_end, Ordering::Release);
        self.max_timestamp
            .store(seal.max_timestamp, Ordering::Release);
        self.seal_verified.store(verified, Ordering::Release);
        *self
            .active_crypto
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The segment's current key envelope.
    pub(crate) fn envelope(&self) -> Option<KeyEnvelope> {
        self.envelope
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Uses `envelope` from now on (after it was written to disk).
    pub(crate) fn set_envelope(&self, envelope: KeyEnvelope) {
        *self
            .envelope
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(envelope);
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.seal.get().is_some()
    }

    /// The offset after the segment's last record, if sealed.
    pub(crate) fn sealed_next_offset(&self) -> Option<u64> {
        self.seal.get().map(|s| s.next_offset)
    }

    /// Bytes on disk (header, frames, seal).
    pub(crate) fn size(&self) -> u64 {
        let end = self.frames_end.load(Ordering::Acquire);
        if self.is_sealed() {
            end.saturating_add(super::format::SEAL_LEN as u64)
        } else {
            end
        }
    }

    /// The open file, opened read-only on first use.
    pub(crate) fn file(&self) -> Result<Arc<dyn IoFile>, LogError> {
        let mut slot = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = slot.as_ref() {
            return Ok(Arc::clone(f));
        }
        let f = files::open(self.io.as_ref(), &self.log_path, OpenMode::Read, "opening")?;
        *slot = Some(Arc::clone(&f));
        Ok(f)
    }

    /// Reads through `file` from now on (a handle opened anew after the
    /// writer's failed).
    pub(crate) fn replace_file(&self, file: Arc<dyn IoFile>) {
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
    }

    /// The segment's keys: the active ones, or unwrapped from its envelope.
    /// The first time a sealed segment's keys are fetched its seal is
    /// verified.
    pub(crate) fn crypto(&self, ctx: &LogCtx) -> Result<Arc<SegmentCrypto>, LogError> {
        if let Some(c) = self
            .active_crypto
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Arc::clone(c));
        }
        let crypto = match self.envelope() {
            None => Arc::new(SegmentCrypto::plaintext(&self.header.segment_id)),
            Some(env) => {
                let key_ctx = env.context();
                let dek =
                    ctx.keys
                        .open(&key_ctx, &env.wrapped)
                        .map_err(|source| LogError::Key {
                            segment: self.log_path.clone(),
                            source,
                        })?;
                Arc::new(SegmentCrypto::new(&dek, &self.header.segment_id))
            }
        };
        self.verify_seal(&crypto)?;
        Ok(crypto)
    }

    /// Checks the seal's MAC, once per process.
    pub(crate) fn verify_seal(&self, crypto: &SegmentCrypto) -> Result<(), LogError> {
        let Some(seal) = self.seal.get() else {
            return Ok(());
        };
        if self.seal_verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let signed = seal.signed_bytes();
        if !crypto
            .seal_key()
            .verify(&[&self.header_bytes, &signed], &seal.mac)
        {
            return Err(LogError::SealInvalid {
                segment: self.log_path.clone(),
                reason: "MAC does not match its header and facts".into(),
            });
        }
        self.seal_verified.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads the frame at `pos`, which must end by `end`, and authenticates
    /// it. `expected_base`, when given, is the base offset the frame must
    /// have to be in its place.
    pub(crate) fn read_frame(
        &self,
        file: &dyn IoFile,
        crypto: &SegmentCrypto,
        pos: u64,
        end: u64,
        expected_base: Option<u64>,
    ) -> Result<Frame, FrameFault> {
        let mut out = VecDeque::with_capacity(1);
        self.read_frames(file, crypto, pos, end, expected_base, 0, &mut out)?;
        out.pop_front().ok_or_else(|| FrameFault::Invalid {
            position: pos,
            reason: "no frame at this position".into(),
        })
    }

    /// Reads the frame at `pos` (which must end by `end`) and, in the same
    /// positional read, the frames after it up to about `want` bytes of
    /// batches in all, authenticates them and appends them to `out` in
    /// order. The frame at `pos` is always read (whatever `want`), so `out`
    /// grows by at least one frame unless it is invalid; a later frame that
    /// is invalid, or does not lie wholly within what was read, ends the
    /// call quietly (the next call, starting there, reads or reports it).
    /// `expected_base`, when given, is the base offset the frame at `pos`
    /// must have to be in its place; each later frame must follow the one
    /// before it.
    ///
    /// The frames are decrypted in place in one reused buffer (see
    /// `read_buffer.rs`) and handed out as slices of it: no frame is
    /// copied or zero-filled on its way from the file to the caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_frames(
        &self,
        file: &dyn IoFile,
        crypto: &SegmentCrypto,
        pos: u64,
        end: u64,
        expected_base: Option<u64>,
        want: usize,
        out: &mut VecDeque<Frame>,
    ) -> Result<(), FrameFault> {
        let invalid = |reason: String| FrameFault::Invalid {
            position: pos,
            reason,
        };
        pos.checked_add(FRAME_HEADER_LEN as u64)
            .filter(|p| *p <= end)
            .ok_or_else(|| invalid("a frame header runs past the end of the data".into()))?;
        let mut head = [0u8; FRAME_HEADER_LEN];
        files::read_exact_at(file, &mut head, pos, &self.log_path).map_err(FrameFault::Io)?;
        let header =
            FrameHeader::decode(&head).map_err(|e| invalid(format!("frame header: {e}")))?;
        // The whole frame must lie within the data before anything is
        // allocated for it.
        let first_end = pos
            .checked_add(header.frame_len())
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                invalid(format!(
                    "a frame of {} bytes runs past the end of the data",
                    header.len
                ))
            })?;
        let first_len = first_end.saturating_sub(pos);
        // Room for the frame headers and tags of the frames that make up
        // `want` bytes of batches, so that the last of them is not cut.
        let span = first_len
            .max((want as u64).saturating_add(READ_AHEAD_SLACK))
            .min(end.saturating_sub(pos));
        let span = usize::try_from(span).map_err(|_| invalid("frame too long".into()))?;
        let mut buf = super::read_buffer::take(span);
        let chunk = buf
            .get_mut(..span)
            .ok_or_else(|| invalid("read buffer too short".into()))?;
        files::read_exact_at(file, chunk, pos, &self.log_path).map_err(FrameFault::Io)?;
        let mut opened = Vec::new();
        let mut at = 0usize;
        let mut expected = expected_base;
        let mut batches = 0usize;
        while at < span {
            let position = pos.saturating_add(at as u64);
            let rest = chunk.get_mut(at..).unwrap_or_default();
            match self.open_in_place(rest, crypto, position, end, expected) {
                Ok(Some((header, plain_len))) => {
                    let body = at.saturating_add(FRAME_HEADER_LEN);
                    opened.push((position, header, body..body.saturating_add(plain_len)));
                    at = at
                        .saturating_add(usize::try_from(header.frame_len()).unwrap_or(usize::MAX));
                    expected = header.next_offset();
                    batches = batches.saturating_add(plain_len);
                    if batches >= want {
                        break;
                    }
                }
                Err(reason) if opened.is_empty() => {
                    return Err(FrameFault::Invalid { position, reason });
                }
                // Past what was read, or damaged: left to the next call.
                Ok(None) | Err(_) => break,
            }
        }
        let buf = buf.freeze();
        super::read_buffer::give_back(&buf);
        out.extend(opened.into_iter().map(|(position, header, range)| Frame {
            position,
            header,
            batch: buf.slice(range),
        }));
        Ok(())
    }

    /// Checks and decrypts in place the frame at the start of `bytes`
    /// (found at file position `position`). `Ok(None)` when the frame does
    /// not lie wholly within `bytes`; the error says why it is not an
    /// authentic frame in its place.
    fn open_in_place(
        &self,
        bytes: &mut [u8],
        crypto: &SegmentCrypto,
        position: u64,
        end: u64,
        expected_base: Option<u64>,
    ) -> Result<Option<(FrameHeader, usize)>, String> {
        let Some(head) = bytes.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let header = FrameHeader::decode(head).map_err(|e| format!("frame header: {e}"))?;
        position
            .checked_add(header.frame_len())
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                format!(
                    "a frame of {} bytes runs past the end of the data",
                    header.len
                )
            })?;
        if let Some(expected) = expected_base
            && header.base_offset != expected
        {
            return Err(format!(
                "frame holds offset {} where offset {expected} belongs (frames moved or removed)",
                header.base_offset
            ));
        }
        if header.base_offset < self.base || header.next_offset().is_none() {
            return Err(format!(
                "frame offset {} is outside this segment",
                header.base_offset
            ));
        }
        let len = usize::try_from(header.len).map_err(|_| "frame too long".to_owned())?;
        let Some(sealed) = FRAME_HEADER_LEN
            .checked_add(len)
            .and_then(|e| bytes.get_mut(FRAME_HEADER_LEN..e))
        else {
            return Ok(None);
        };
        let aad = frame_aad(
            &self.header.topic_id,
            self.header.partition,
            &self.header.segment_id,
            header.base_offset,
            header.record_count,
        );
        let plain_len = crypto
            .open_frame(&frame_nonce(header.base_offset), &aad, sealed)
            .map_err(|_| {
                format!(
                    "frame at offset {} fails authentication (altered, or sealed under another key or place)",
                    header.base_offset
                )
            })?;
        let plain = sealed.get(..plain_len).unwrap_or_default();
        let batch = strongbox_protocol::batch::parse_header(plain)
            .map_err(|e| format!("decrypted batch is malformed: {e}"))?;
        if batch.record_count != header.record_count {
            return Err("record counts of frame and batch differ".into());
        }
        Ok(Some((header, plain_len)))
    }

    /// The position after the last complete frame readers may look at.
    pub(crate) fn readable_end(&self) -> u64 {
        self.frames_end.load(Ordering::Acquire)
    }

    /// The seal (if any) and the end of the frames, taken together: a
    /// reader that finds a seal reads exactly to it; one that finds none
    /// reads what was published, and does not check a seal written after.
    pub(crate) fn extent(&self) -> (Option<Seal>, u64) {
        let seal = self.seal.get().copied();
        let end = seal.map_or_else(|| self.readable_end(), |s| s.frames_end);
        (seal, end)
    }
}
