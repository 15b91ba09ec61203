//! Opening a partition directory: finishing interrupted deletions, checking
//! every segment's structure, and recovering the newest segment's tail.
//!
//! The algorithm (docs/STORAGE.md, "Recovery", says the same):
//!
//! 1. Remove `*.tmp` files (envelope writes that never reached their
//!    rename). Finish every deletion that a crash interrupted: a
//!    `{base}.log.deleted` loses its envelope first (crypto-shredding),
//!    then its data and index. Remove indexes and gap markers with no
//!    segment.
//! 2. Every segment but the newest must be sealed: a plaintext header that
//!    decodes and belongs to this topic and partition, an envelope that
//!    decodes and is bound to the header, and a seal at the very end whose
//!    `frames_end` matches the file length. Consecutive segments must join:
//!    a seal's `next_offset` is the next segment's base offset, unless a
//!    gap marker records exactly that gap as accepted (`gap.rs`). Seal MACs
//!    are verified when the segment's key is first used (see
//!    [`super::segment::Segment::crypto`]), so that a log whose oldest
//!    segments are under a destroyed KEK still opens.
//! 3. The newest segment, if sealed, is only checked like the others. If
//!    it is not sealed, the process that appended to it stopped without
//!    closing: every frame is read and authenticated from the start, in
//!    order; the first frame that is incomplete, fails authentication or
//!    is out of place marks the torn tail, which is copied to a quarantine
//!    file (`quarantine.rs`) and then cut off. The remaining frames are
//!    sealed and the index rebuilt. **Nothing is ever appended
//!    to it again**: appends continue in a new segment with a fresh key, so
//!    no (key, nonce) pair can be used twice, whatever was lost.
//! 4. A newest segment with no frames (a crash during its creation, or a
//!    tail that was entirely torn) keeps only its name, which records the
//!    log's next offset: its envelope is shredded and the file emptied. The
//!    next append recreates it with a new segment id and a new key.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongbox_protocol::batch::RecordBatch;

use crate::io::{IoFile, OpenMode};
use crate::keys::SegmentKeyContext;

use super::envelope::{EnvelopeProblem, KeyEnvelope, read_envelope};
use super::error::LogError;
use super::files;
use super::format::{
    IndexEntry, LogFile, SEAL_LEN, SEGMENT_HEADER_LEN, Seal, SegmentHeader, deleted_file_name,
    gap_file_name, index_file_name, key_file_name, parse_file_name,
};
use super::gap::GapMarker;
use super::health::LogEvent;
use super::index;
use super::quarantine::{self, QuarantineHeader};
use super::segment::{FrameFault, LogCtx, Segment, SegmentCrypto};

/// What opening a directory found.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Sealed segments, oldest first.
    pub(crate) segments: Vec<Arc<Segment>>,
    /// The base offset of an empty newest segment file, to be reused by
    /// the next append.
    pub(crate) placeholder: Option<u64>,
    /// The offset the next append gets.
    pub(crate) next_offset: u64,
    /// Accepted gaps: base of the segment after the gap → end before it.
    pub(crate) gaps: BTreeMap<u64, u64>,
    /// Gaps no marker accepts (a segment in the middle is gone): base of
    /// the segment after the gap → end before it.
    pub(crate) missing: BTreeMap<u64, u64>,
    /// What recovery did that its owner should record.
    pub(crate) events: Vec<LogEvent>,
}

impl Recovered {
    /// A log with nothing in it (a directory that is not there).
    pub(crate) fn empty() -> Self {
        Self {
            segments: Vec::new(),
            placeholder: None,
            next_offset: 0,
            gaps: BTreeMap::new(),
            missing: BTreeMap::new(),
            events: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Names {
    log: bool,
    index: bool,
    key: bool,
    deleted: bool,
    gap: bool,
}

/// Opens and recovers the log in `ctx.dir`.
pub(crate) fn recover(ctx: &LogCtx) -> Result<Recovered, LogError> {
    let dir = ctx.dir.as_path();
    let io = ctx.io.as_ref();
    let mut names: BTreeMap<u64, Names> = BTreeMap::new();
    for name in files::list(io, dir)? {
        match parse_file_name(&name) {
            Some(LogFile::Temporary) => {
                files::remove_if_exists(io, &dir.join(&name))?;
            }
            Some(LogFile::Segment(b)) => names.entry(b).or_default().log = true,
            Some(LogFile::Index(b)) => names.entry(b).or_default().index = true,
            Some(LogFile::Key(b)) => names.entry(b).or_default().key = true,
            Some(LogFile::Deleted(b)) => names.entry(b).or_default().deleted = true,
            Some(LogFile::Gap(b)) => names.entry(b).or_default().gap = true,
            Some(LogFile::Quarantine(_)) | None => {}
        }
    }

    let mut changed = false;
    let mut reserved = Vec::new();
    for (&base, n) in &names {
        if n.deleted {
            finish_deletion(ctx, base, n.key)?;
            changed = true;
        }
        if !n.log && !n.deleted {
            if n.index {
                files::remove_if_exists(io, &dir.join(index_file_name(base)))?;
                changed = true;
            }
            if n.gap {
                // A move past lost offsets that stopped before its segment
                // file was made: decided below, once the end is known.
                reserved.push(base);
            }
            if n.key {
                tracing::warn!(
                    envelope = %dir.join(key_file_name(base)).display(),
                    "key envelope without a segment; leaving it in place"
                );
            }
        }
    }
    if changed {
        files::sync_dir(io, dir)?;
    }

    let mut bases: Vec<u64> = names
        .iter()
        .filter(|(_, n)| n.log && !n.deleted)
        .map(|(b, _)| *b)
        .collect();
    drop_superseded_placeholders(ctx, &names, &mut bases)?;
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    let mut placeholder = None;
    let mut events = Vec::new();
    let last = bases.len().checked_sub(1);
    for (i, &base) in bases.iter().enumerate() {
        match open_segment(ctx, base, Some(i) == last, &mut events)? {
            Opened::Sealed(seg) => segments.push(seg),
            Opened::Empty => placeholder = Some(base),
        }
    }

    let mut gaps = BTreeMap::new();
    let mut missing = BTreeMap::new();
    for pair in segments.windows(2) {
        if let [a, b] = pair {
            check_join(ctx, a, b.base, &mut gaps, &mut missing)?;
        }
    }
    if let (Some(p), Some(prev)) = (placeholder, segments.last()) {
        check_join(ctx, prev, p, &mut gaps, &mut missing)?;
    }
    let mut next_offset = match (placeholder, segments.last()) {
        (Some(p), _) => p,
        (None, Some(seg)) => seg.sealed_next_offset().unwrap_or(seg.base),
        (None, None) => 0,
    };
    if let Some(to) = honour_reservation(ctx, &reserved, next_offset, placeholder, &segments)? {
        if let Some(old) = placeholder {
            // The marker at `to` accepts everything after the last segment.
            gaps.remove(&old);
            missing.remove(&old);
        }
        if let Some(seg) = segments.last() {
            gaps.insert(to, seg.sealed_next_offset().unwrap_or(seg.base));
        }
        placeholder = Some(to);
        next_offset = to;
    }
    Ok(Recovered {
        segments,
        placeholder,
        next_offset,
        gaps,
        missing,
        events,
    })
}

/// Empty segment files only record the log's next offset (placeholders,
/// `make_placeholder`). A move past lost offsets makes the new one durable
/// before it removes the old one, so a power cut in between leaves two:
/// every empty file without an envelope that only other empty files follow
/// is superseded by the newest one, and is removed here (with its index
/// and gap marker) rather than taken for a truncated segment. A truncated
/// segment still has its envelope, or data after it, and stays an error.
fn drop_superseded_placeholders(
    ctx: &LogCtx,
    names: &BTreeMap<u64, Names>,
    bases: &mut Vec<u64>,
) -> Result<(), LogError> {
    let io = ctx.io.as_ref();
    let dir = ctx.dir.as_path();
    let Some((&newest, older)) = bases.split_last() else {
        return Ok(());
    };
    let empty = |base: u64| -> Result<bool, LogError> {
        let path = ctx.segment_path(base);
        let meta = io
            .metadata(&path)
            .map_err(files::io_err("reading the size of", &path))?;
        Ok(meta.len == 0)
    };
    if !empty(newest)? {
        return Ok(());
    }
    let mut stale = Vec::new();
    for &base in older.iter().rev() {
        let has_key = names.get(&base).is_some_and(|n| n.key);
        if has_key || !empty(base)? {
            break;
        }
        stale.push(base);
    }
    if stale.is_empty() {
        return Ok(());
    }
    for &base in &stale {
        tracing::warn!(segment = %ctx.segment_path(base).display(), newest, "removing an empty segment file a later one supersedes");
        files::remove_if_exists(io, &ctx.segment_path(base))?;
        files::remove_if_exists(io, &dir.join(index_file_name(base)))?;
        files::remove_if_exists(io, &dir.join(gap_file_name(base)))?;
    }
    // Durable before the newest file is used: the next append writes its
    // header and syncs it before it syncs the directory, and a cut in
    // between that brought an older empty file back would find it before a
    // newest segment that is no longer empty, and the log would not open.
    files::sync_dir(io, dir)?;
    bases.retain(|b| !stale.contains(b));
    Ok(())
}

/// Gap markers without a segment after them (`reserved`, by base offset)
/// are the first step of a move past lost offsets (`gap.rs`, `heal.rs`):
/// the marker is written before anything is cut, so that offsets handed
/// out are never handed out again even when the move stops halfway. When
/// one reaches past the log's end (`next`), the move is finished here as
/// `open_gap` makes it: the marker is rewritten from where the last segment
/// ends (an empty newest file, `placeholder`, holds no records: the gap
/// before it and this one become one), an empty segment file made at its
/// offset, which becomes the next offset (returned), and the old
/// placeholder with its own marker removed. Markers the log already
/// reaches are removed.
fn honour_reservation(
    ctx: &LogCtx,
    reserved: &[u64],
    next: u64,
    placeholder: Option<u64>,
    segments: &[Arc<Segment>],
) -> Result<Option<u64>, LogError> {
    let io = ctx.io.as_ref();
    let dir = ctx.dir.as_path();
    let floor = reserved
        .iter()
        .filter_map(|b| GapMarker::read(io, dir, *b)?.ok())
        .filter(|m| {
            m.topic_id == ctx.config.topic_id
                && m.partition == ctx.config.partition
                && m.to_offset > next
        })
        .map(|m| m.to_offset)
        .max();
    if let Some(to) = floor {
        tracing::warn!(dir = %dir.display(), from = next, to, "finishing a move past lost offsets that stopped halfway");
        if let Some(seg) = segments.last() {
            GapMarker {
                topic_id: ctx.config.topic_id,
                partition: ctx.config.partition,
                from_offset: seg.sealed_next_offset().unwrap_or(seg.base),
                to_offset: to,
                created_at_ms: ctx.clock.now_ms(),
            }
            .write(io, dir)?;
        }
        drop(files::open(
            io,
            &ctx.segment_path(to),
            OpenMode::Truncate,
            "creating",
        )?);
        // No sync between the new file and the removal of the old one and
        // its marker: the sync below covers them all before this returns.
        // A cut before it keeps any part of them, and the next open
        // finishes the move again: the marker at `to` is durable (found at
        // open, or rewritten atomically above), so without the new name it
        // is past the log's end; with it, an old file that came back is
        // superseded and removed. The old file back without its marker
        // only seems to follow a gap no marker records: the marker at `to`
        // reaches back to the last segment's end and covers it (`recover`
        // drops that gap from the missing ones).
        if let Some(old) = placeholder.filter(|p| *p != to) {
            files::remove_if_exists(io, &ctx.segment_path(old))?;
            files::remove_if_exists(io, &dir.join(gap_file_name(old)))?;
        }
    }
    for base in reserved.iter().filter(|b| Some(**b) != floor) {
        files::remove_if_exists(io, &dir.join(gap_file_name(*base)))?;
    }
    // Durable before the new file is used: the next append writes its
    // header and syncs it before it syncs the directory, and a cut in
    // between that kept the new name but brought the old placeholder back
    // would find it before a newest segment that is no longer empty, and
    // the log would not open.
    if floor.is_some() || !reserved.is_empty() {
        files::sync_dir(io, dir)?;
    }
    Ok(floor)
}

/// Checks that `seg` is followed by the segment at `next_base`: they join,
/// or a gap marker records exactly this gap (an accepted gap, in `gaps`).
/// A forward gap without a marker is a segment gone from the middle of the
/// log: the log still opens, so that the records on both sides stay
/// readable and no offset is handed out twice (the gap lies below the
/// log's end), and the gap goes to `missing`, which readers meet as a
/// damaged range and the log's owner reports until the loss is accepted
/// ([`PartitionLog::accept_missing`](super::PartitionLog::accept_missing)).
fn check_join(
    ctx: &LogCtx,
    seg: &Segment,
    next_base: u64,
    gaps: &mut BTreeMap<u64, u64>,
    missing: &mut BTreeMap<u64, u64>,
) -> Result<(), LogError> {
    let end = seg.sealed_next_offset().unwrap_or(seg.base);
    if end == next_base {
        return Ok(());
    }
    if let Some(Ok(marker)) = GapMarker::read(ctx.io.as_ref(), &ctx.dir, next_base)
        && marker.topic_id == ctx.config.topic_id
        && marker.partition == ctx.config.partition
        && marker.from_offset == end
        && marker.to_offset == next_base
    {
        gaps.insert(next_base, end);
        return Ok(());
    }
    if end < next_base && seg.sealed_next_offset().is_some() {
        tracing::warn!(
            segment = %seg.log_path.display(),
            next = %ctx.segment_path(next_base).display(),
            from = end,
            to = next_base,
            "offsets are missing from the middle of the log (a segment is gone)"
        );
        missing.insert(next_base, end);
        return Ok(());
    }
    Err(LogError::Gap {
        segment: seg.log_path.clone(),
        end,
        next: ctx.segment_path(next_base),
        next_base,
    })
}

/// Completes a deletion interrupted by a crash: envelope, then data. The
/// key is forgotten by the id in the segment's header when the envelope
/// went before the crash.
fn finish_deletion(ctx: &LogCtx, base: u64, has_key: bool) -> Result<(), LogError> {
    let dir = ctx.dir.as_path();
    let io = ctx.io.as_ref();
    tracing::info!(segment = %ctx.segment_path(base).display(), "finishing an interrupted segment deletion");
    let deleted = dir.join(deleted_file_name(base));
    let header_id = io
        .open(&deleted, OpenMode::Read)
        .ok()
        .and_then(|f| super::offline::read_header(f.as_ref(), &deleted).ok())
        .filter(|h| h.topic_id == ctx.config.topic_id && h.partition == ctx.config.partition)
        .map(|h| h.segment_id);
    if has_key || header_id.is_some() {
        shred_envelope(ctx, base, header_id)?;
    }
    files::remove_if_exists(io, &deleted)?;
    files::remove_if_exists(io, &dir.join(index_file_name(base)))?;
    files::remove_if_exists(io, &dir.join(gap_file_name(base)))?;
    Ok(())
}

/// Deletes the envelope of `base` durably, then tells the key manager to
/// forget the key: the one the envelope names, or `segment_id` (from the
/// segment's header) when there is no readable envelope, so a key whose
/// envelope never got written (a crash while creating the segment) is not
/// left in the registry. Callers keep something on disk that names the key
/// until this returns (the segment's header, in `.log.deleted` during
/// retention), so a crash or a registry failure in between is finished by
/// the next attempt.
///
/// # Errors
///
/// Removing or syncing failed; the key manager could not forget the key.
pub(crate) fn shred_envelope(
    ctx: &LogCtx,
    base: u64,
    segment_id: Option<[u8; 16]>,
) -> Result<(), LogError> {
    let dir = ctx.dir.as_path();
    let io = ctx.io.as_ref();
    let key_ctx = key_context(ctx, base, segment_id);
    if files::remove_if_exists(io, &dir.join(key_file_name(base)))? {
        files::sync_dir(io, dir)?;
    }
    forget(ctx, base, key_ctx)
}

/// The key of segment `base`: the one its envelope names, or `segment_id`
/// under the log's scope.
fn key_context(ctx: &LogCtx, base: u64, segment_id: Option<[u8; 16]>) -> Option<SegmentKeyContext> {
    match (
        read_envelope(ctx.io.as_ref(), &ctx.dir, base).ok(),
        segment_id,
    ) {
        (Some(env), _) => Some(env.context()),
        (None, Some(id)) => Some(SegmentKeyContext {
            topic_id: ctx.config.topic_id,
            partition: ctx.config.partition,
            segment_id: id,
            scope: ctx.config.kek_scope.clone(),
        }),
        (None, None) => None,
    }
}

fn forget(ctx: &LogCtx, base: u64, key_ctx: Option<SegmentKeyContext>) -> Result<(), LogError> {
    let Some(key_ctx) = key_ctx else {
        return Ok(());
    };
    ctx.keys.forget(&key_ctx).map_err(|source| LogError::Key {
        segment: ctx.segment_path(base),
        source,
    })
}

enum Opened {
    Sealed(Arc<Segment>),
    /// The newest segment file, holding no frames.
    Empty,
}

fn open_segment(
    ctx: &LogCtx,
    base: u64,
    is_last: bool,
    events: &mut Vec<LogEvent>,
) -> Result<Opened, LogError> {
    let path = ctx.segment_path(base);
    let mode = if is_last {
        OpenMode::ReadWrite
    } else {
        OpenMode::Read
    };
    let file = files::open(ctx.io.as_ref(), &path, mode, "opening")?;
    let len = files::file_len(file.as_ref(), &path)?;
    let header_len = SEGMENT_HEADER_LEN as u64;

    if len <= header_len {
        if !is_last {
            return Err(LogError::SealMissing {
                segment: path,
                reason: format!("it holds no frames ({len} bytes) but is not the newest segment"),
            });
        }
        let mut id = None;
        if len == header_len {
            // A complete header must still belong here: an empty file
            // copied from elsewhere is an error, not a placeholder.
            let mut buf = [0u8; SEGMENT_HEADER_LEN];
            files::read_exact_at(file.as_ref(), &mut buf, 0, &path)?;
            if let Ok(h) = SegmentHeader::decode(&buf) {
                check_header(ctx, &h, base, &path)?;
                id = Some(h.segment_id);
            }
        }
        make_placeholder(ctx, base, file.as_ref(), id)?;
        return Ok(Opened::Empty);
    }

    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    files::read_exact_at(file.as_ref(), &mut buf, 0, &path)?;
    let header = SegmentHeader::decode(&buf).map_err(|e| LogError::CorruptHeader {
        segment: path.clone(),
        reason: e.to_string(),
    })?;
    check_header(ctx, &header, base, &path)?;
    let envelope = if ctx.encrypted {
        Some(load_envelope(ctx, &header)?)
    } else {
        None
    };

    match read_seal(file.as_ref(), len, &path)? {
        Ok(seal) if seal.next_offset > base => {
            let seg = Segment::new(
                &ctx.io,
                &ctx.dir,
                header,
                envelope,
                seal.frames_end,
                seal.max_timestamp,
            );
            seg.set_sealed(seal, false);
            Ok(Opened::Sealed(Arc::new(seg)))
        }
        Ok(seal) => Err(LogError::SealMissing {
            segment: path,
            reason: format!(
                "its seal ends at offset {} before its base offset {base}",
                seal.next_offset
            ),
        }),
        Err(reason) if !is_last => Err(LogError::SealMissing {
            segment: path,
            reason: format!("it has no valid seal at its end ({reason})"),
        }),
        Err(_) => recover_tail(ctx, header, envelope, file, len, events),
    }
}

pub(crate) fn check_header(
    ctx: &LogCtx,
    header: &SegmentHeader,
    base: u64,
    path: &std::path::Path,
) -> Result<(), LogError> {
    if header.topic_id != ctx.config.topic_id || header.partition != ctx.config.partition {
        return Err(LogError::ForeignSegment {
            segment: path.to_path_buf(),
            topic: hex::encode(ctx.config.topic_id),
            partition: ctx.config.partition,
            found_topic: hex::encode(header.topic_id),
            found_partition: header.partition,
        });
    }
    if header.base_offset != base {
        return Err(LogError::CorruptHeader {
            segment: path.to_path_buf(),
            reason: format!(
                "its header says base offset {} but its name says {base}",
                header.base_offset
            ),
        });
    }
    if header.raft_frames() {
        return Err(LogError::RaftSegment {
            segment: path.to_path_buf(),
        });
    }
    if header.encrypted() != ctx.encrypted {
        return Err(LogError::CorruptHeader {
            segment: path.to_path_buf(),
            reason: if ctx.encrypted {
                "it was written without encryption by a benchmark and is never read as data".into()
            } else {
                "it is encrypted, and this log was opened in the benchmark plaintext mode".into()
            },
        });
    }
    Ok(())
}

/// Loads the envelope of the segment with `header` and checks it belongs to
/// that segment and to this topic's key scope.
pub(crate) fn load_envelope(ctx: &LogCtx, header: &SegmentHeader) -> Result<KeyEnvelope, LogError> {
    let base = header.base_offset;
    let segment = ctx.segment_path(base);
    let envelope_path = ctx.dir.join(key_file_name(base));
    let env = read_envelope(ctx.io.as_ref(), &ctx.dir, base).map_err(|p| match p {
        EnvelopeProblem::Missing => LogError::EnvelopeMissing {
            segment: segment.clone(),
        },
        EnvelopeProblem::Empty => LogError::EnvelopeEmpty {
            segment: segment.clone(),
            envelope: envelope_path.clone(),
        },
        EnvelopeProblem::Corrupt(reason) => LogError::EnvelopeCorrupt {
            segment: segment.clone(),
            envelope: envelope_path.clone(),
            reason,
        },
    })?;
    let mismatch = if env.topic_id != header.topic_id || env.partition != header.partition {
        Some("it names another topic or partition".to_owned())
    } else if env.segment_id != header.segment_id {
        Some(format!(
            "it is for segment id {}, the segment's id is {}",
            hex::encode(env.segment_id),
            hex::encode(header.segment_id)
        ))
    } else if env.base_offset != base {
        Some(format!("it is for base offset {}", env.base_offset))
    } else if env.wrapped.kek.scope != ctx.config.kek_scope {
        Some(format!(
            "its key is under scope {}, this topic uses {}",
            env.wrapped.kek.scope, ctx.config.kek_scope
        ))
    } else {
        None
    };
    match mismatch {
        Some(reason) => Err(LogError::EnvelopeMismatch {
            segment,
            envelope: envelope_path,
            reason,
        }),
        None => Ok(env),
    }
}

/// Reads the trailer. The outer error is I/O; the inner one says why the
/// trailer is not a seal.
pub(crate) fn read_seal(
    file: &dyn IoFile,
    len: u64,
    path: &std::path::Path,
) -> Result<Result<Seal, String>, LogError> {
    let seal_len = SEAL_LEN as u64;
    let Some(at) = len
        .checked_sub(seal_len)
        .filter(|at| *at >= SEGMENT_HEADER_LEN as u64)
    else {
        return Ok(Err(format!("{len} bytes is too short for a seal")));
    };
    let mut buf = [0u8; SEAL_LEN];
    files::read_exact_at(file, &mut buf, at, path)?;
    Ok(match Seal::decode(&buf) {
        Ok(seal) if seal.frames_end == at => Ok(seal),
        Ok(seal) => Err(format!(
            "the seal says the frames end at byte {}, but it sits at byte {at}",
            seal.frames_end
        )),
        Err(e) => Err(e.to_string()),
    })
}

/// Empties the newest segment file, which holds no frames: its envelope
/// is shredded (the key forgotten: the envelope's, or `segment_id`'s from
/// the header) and only its name (the next offset) is kept. The key
/// manager forgets the key first, while the header and the envelope still
/// name it: a crash after either is gone must not leave a registry entry
/// that nothing on disk names. Then the file is emptied, so a failure (or a
/// crash) before the envelope goes leaves an empty file with its envelope,
/// which the next attempt finishes, never bytes without the envelope that
/// reads them. The index's removal, last, is not synced on its own (the
/// sync that shreds the envelope comes before it): an index that a cut
/// brings back is removed again by the next open (beside the empty file,
/// which it empties again, or alone, as an index without a segment), and a
/// new segment at `base` truncates it and syncs the directory before it is
/// used.
pub(crate) fn make_placeholder(
    ctx: &LogCtx,
    base: u64,
    file: &dyn IoFile,
    segment_id: Option<[u8; 16]>,
) -> Result<(), LogError> {
    let path = ctx.segment_path(base);
    let io = ctx.io.as_ref();
    if ctx.encrypted {
        forget(ctx, base, key_context(ctx, base, segment_id))?;
    }
    file.set_len(0).map_err(files::io_err("emptying", &path))?;
    file.sync_all().map_err(files::io_err("syncing", &path))?;
    if ctx.encrypted {
        shred_envelope(ctx, base, segment_id)?;
    }
    files::remove_if_exists(io, &ctx.dir.join(index_file_name(base)))?;
    Ok(())
}

/// The intact frames at the start of a segment, read up to a limit.
#[derive(Debug)]
pub(crate) struct Prefix {
    pub(crate) frames: u64,
    pub(crate) max_ts: i64,
    pub(crate) entries: Vec<IndexEntry>,
    /// The offset after the last intact frame.
    pub(crate) next_offset: u64,
    /// The file position after it.
    pub(crate) position: u64,
    /// Why reading stopped before the limit, if it did.
    pub(crate) fault: Option<String>,
}

/// Reads and authenticates the frames of `seg` from its first, in order,
/// up to file position `limit`, and stops at the first that is incomplete,
/// fails authentication, is out of place or does not parse.
pub(crate) fn scan_prefix(
    ctx: &LogCtx,
    seg: &Segment,
    crypto: &SegmentCrypto,
    file: &dyn IoFile,
    limit: u64,
) -> Result<Prefix, LogError> {
    let mut p = Prefix {
        frames: 0,
        max_ts: i64::MIN,
        entries: Vec::new(),
        next_offset: seg.base,
        position: SEGMENT_HEADER_LEN as u64,
        fault: None,
    };
    let mut last_indexed: Option<u64> = None;
    while p.position < limit {
        let frame = match seg.read_frame(file, crypto, p.position, limit, Some(p.next_offset)) {
            Ok(f) => f,
            Err(FrameFault::Io(e)) => return Err(e),
            Err(FrameFault::Invalid { reason, .. }) => {
                p.fault = Some(reason);
                break;
            }
        };
        let batch = match RecordBatch::parse(frame.batch.clone()) {
            Ok(b) => b,
            Err(e) => {
                p.fault = Some(format!("batch does not parse: {e}"));
                break;
            }
        };
        if last_indexed
            .is_none_or(|l| p.position.saturating_sub(l) >= ctx.config.index_interval_bytes)
        {
            p.entries.push(IndexEntry {
                offset: frame.header.base_offset,
                position: p.position,
                max_ts_before: p.max_ts,
            });
            last_indexed = Some(p.position);
        }
        p.max_ts = p.max_ts.max(batch.max_timestamp());
        p.frames += 1;
        p.next_offset = frame.header.next_offset().unwrap_or(u64::MAX);
        p.position = frame.end();
    }
    Ok(p)
}

/// Verifies the unsealed newest segment from its start, keeps a torn tail
/// in a quarantine file and cuts it off, and seals what remains.
fn recover_tail(
    ctx: &LogCtx,
    header: SegmentHeader,
    envelope: Option<KeyEnvelope>,
    file: Arc<dyn IoFile>,
    len: u64,
    events: &mut Vec<LogEvent>,
) -> Result<Opened, LogError> {
    let base = header.base_offset;
    let seg = Segment::new(
        &ctx.io,
        &ctx.dir,
        header,
        envelope,
        SEGMENT_HEADER_LEN as u64,
        i64::MIN,
    );
    let crypto = seg.crypto(ctx)?;
    let prefix = scan_prefix(ctx, &seg, &crypto, file.as_ref(), len)?;
    let pos = prefix.position;
    if pos < len {
        let reason = prefix
            .fault
            .clone()
            .unwrap_or_else(|| "bytes past the last frame".into());
        let dropped = len.saturating_sub(pos);
        tracing::warn!(
            segment = %seg.log_path.display(),
            position = pos,
            dropped_bytes = dropped,
            %reason,
            "cutting the torn tail of the segment that was active when the broker stopped; the bytes are kept in a quarantine file"
        );
        let q = QuarantineHeader {
            topic_id: header.topic_id,
            partition: header.partition,
            segment_id: header.segment_id,
            base_offset: base,
            first_offset: prefix.next_offset,
            position: pos,
            bytes: dropped,
            quarantined_at_ms: ctx.clock.now_ms(),
        };
        let kept = quarantine::keep(ctx.io.as_ref(), &ctx.dir, file.as_ref(), &q)
            .map_err(|f| quarantine::failed(&seg.log_path, dropped, f))?;
        events.push(LogEvent::TailQuarantined {
            segment: seg.log_path.clone(),
            quarantine: kept,
            first_offset: prefix.next_offset,
            position: pos,
            bytes: dropped,
            reason,
        });
    }
    if prefix.frames == 0 {
        make_placeholder(ctx, base, file.as_ref(), Some(header.segment_id))?;
        return Ok(Opened::Empty);
    }
    file.set_len(pos)
        .map_err(files::io_err("truncating", &seg.log_path))?;
    index::rewrite(ctx, &seg, &prefix.entries)?;
    let seal = write_seal(
        ctx,
        &seg,
        &crypto,
        file.as_ref(),
        pos,
        prefix.next_offset,
        prefix.frames,
        prefix.max_ts,
    )?;
    seg.set_sealed(seal, true);
    tracing::info!(segment = %seg.log_path.display(), frames = prefix.frames, next_offset = prefix.next_offset, "sealed the recovered segment");
    Ok(Opened::Sealed(Arc::new(seg)))
}

/// Writes the seal of `seg` at `frames_end` and cuts the file after it,
/// without syncing (the caller syncs, through a descriptor whose syncs
/// have not failed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_seal(
    ctx: &LogCtx,
    seg: &Segment,
    crypto: &SegmentCrypto,
    file: &dyn IoFile,
    frames_end: u64,
    next_offset: u64,
    frame_count: u64,
    max_timestamp: i64,
) -> Result<Seal, LogError> {
    let mut seal = Seal {
        next_offset,
        frame_count,
        frames_end,
        max_timestamp,
        sealed_at_ms: ctx.clock.now_ms(),
        mac: [0u8; 32],
    };
    seal.mac = crypto
        .seal_key()
        .sign(&[&seg.header_bytes, &seal.signed_bytes()]);
    files::write_all_at(file, &seal.encode(), frames_end, &seg.log_path)?;
    file.set_len(frames_end.saturating_add(SEAL_LEN as u64))
        .map_err(files::io_err("truncating", &seg.log_path))?;
    Ok(seal)
}

/// Writes and syncs the seal of `seg` at `frames_end`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_seal(
    ctx: &LogCtx,
    seg: &Segment,
    crypto: &SegmentCrypto,
    file: &dyn IoFile,
    frames_end: u64,
    next_offset: u64,
    frame_count: u64,
    max_timestamp: i64,
) -> Result<Seal, LogError> {
    let seal = put_seal(
        ctx,
        seg,
        crypto,
        file,
        frames_end,
        next_offset,
        frame_count,
        max_timestamp,
    )?;
    crate::observe::timed_fsync(|| file.sync_data())
        .map_err(files::io_err("syncing", &seg.log_path))?;
    Ok(seal)
}
