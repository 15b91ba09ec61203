//! Opening a partition directory: finishing interrupted deletions, checking
//! every segment's structure, and recovering the newest segment's tail.
//!
//! The algorithm (docs/STORAGE.md, "Recovery", says the same):
//!
//! 1. Remove `*.tmp` files (envelope writes that never reached their
//!    rename). Finish every deletion that a crash interrupted: a
//!    `{base}.log.deleted` loses its envelope first (crypto-shredding),
//!    then its data and index. Remove indexes with no segment.
//! 2. Every segment but the newest must be sealed: a plaintext header that
//!    decodes and belongs to this topic and partition, an envelope that
//!    decodes and is bound to the header, and a seal at the very end whose
//!    `frames_end` matches the file length. Consecutive segments must join:
//!    a seal's `next_offset` is the next segment's base offset. Seal MACs
//!    are verified when the segment's key is first used (see
//!    [`super::segment::Segment::crypto`]), so that a log whose oldest
//!    segments are under a destroyed KEK still opens.
//! 3. The newest segment, if sealed, is only checked like the others. If
//!    it is not sealed, the process that appended to it stopped without
//!    closing: every frame is read and authenticated from the start, in
//!    order; the first frame that is incomplete, fails authentication or
//!    is out of place marks the torn tail, which is cut off. The remaining
//!    frames are sealed and the index rebuilt. **Nothing is ever appended
//!    to it again**: appends continue in a new segment with a fresh key, so
//!    no (key, nonce) pair can be used twice, whatever was lost.
//! 4. A newest segment with no frames (a crash during its creation, or a
//!    tail that was entirely torn) keeps only its name, which records the
//!    log's next offset: its envelope is shredded and the file emptied. The
//!    next append recreates it with a new segment id and a new key.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::sync::Arc;

use strongbox_protocol::batch::RecordBatch;

use super::envelope::{EnvelopeProblem, KeyEnvelope, read_envelope};
use super::error::LogError;
use super::files;
use super::format::{
    IndexEntry, LogFile, SEAL_LEN, SEGMENT_HEADER_LEN, Seal, SegmentHeader, deleted_file_name,
    index_file_name, key_file_name, parse_file_name,
};
use super::index;
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
}

#[derive(Debug, Default)]
struct Names {
    log: bool,
    index: bool,
    key: bool,
    deleted: bool,
}

/// Opens and recovers the log in `ctx.dir`.
pub(crate) fn recover(ctx: &LogCtx) -> Result<Recovered, LogError> {
    let dir = ctx.dir.as_path();
    let mut names: BTreeMap<u64, Names> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(files::io_err("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(files::io_err("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_file_name(name) {
            Some(LogFile::Temporary) => {
                files::remove_if_exists(&entry.path())?;
            }
            Some(LogFile::Segment(b)) => names.entry(b).or_default().log = true,
            Some(LogFile::Index(b)) => names.entry(b).or_default().index = true,
            Some(LogFile::Key(b)) => names.entry(b).or_default().key = true,
            Some(LogFile::Deleted(b)) => names.entry(b).or_default().deleted = true,
            None => {}
        }
    }

    let mut changed = false;
    for (&base, n) in &names {
        if n.deleted {
            finish_deletion(ctx, base, n.key)?;
            changed = true;
        }
        if !n.log && !n.deleted {
            if n.index {
                files::remove_if_exists(&dir.join(index_file_name(base)))?;
                changed = true;
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
        files::sync_dir(dir)?;
    }

    let bases: Vec<u64> = names
        .iter()
        .filter(|(_, n)| n.log && !n.deleted)
        .map(|(b, _)| *b)
        .collect();
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    let mut placeholder = None;
    let last = bases.len().checked_sub(1);
    for (i, &base) in bases.iter().enumerate() {
        match open_segment(ctx, base, Some(i) == last)? {
            Opened::Sealed(seg) => segments.push(seg),
            Opened::Empty => placeholder = Some(base),
        }
    }

    for pair in segments.windows(2) {
        if let [a, b] = pair {
            check_join(ctx, a, b.base)?;
        }
    }
    if let (Some(p), Some(prev)) = (placeholder, segments.last()) {
        check_join(ctx, prev, p)?;
    }
    let next_offset = match (placeholder, segments.last()) {
        (Some(p), _) => p,
        (None, Some(seg)) => seg.sealed_next_offset().unwrap_or(seg.base),
        (None, None) => 0,
    };
    Ok(Recovered {
        segments,
        placeholder,
        next_offset,
    })
}

fn check_join(ctx: &LogCtx, seg: &Segment, next_base: u64) -> Result<(), LogError> {
    let end = seg.sealed_next_offset().unwrap_or(seg.base);
    if end == next_base {
        Ok(())
    } else {
        Err(LogError::Gap {
            segment: seg.log_path.clone(),
            end,
            next: ctx.segment_path(next_base),
            next_base,
        })
    }
}

/// Completes a deletion interrupted by a crash: envelope, then data.
fn finish_deletion(ctx: &LogCtx, base: u64, has_key: bool) -> Result<(), LogError> {
    let dir = ctx.dir.as_path();
    tracing::info!(segment = %ctx.segment_path(base).display(), "finishing an interrupted segment deletion");
    if has_key {
        shred_envelope(ctx, base)?;
    }
    files::remove_if_exists(&dir.join(deleted_file_name(base)))?;
    files::remove_if_exists(&dir.join(index_file_name(base)))?;
    Ok(())
}

/// Deletes the envelope of `base` durably, then tells the key manager to
/// forget the key. A registry failure is logged: the wrapped key is gone
/// from disk either way.
pub(crate) fn shred_envelope(ctx: &LogCtx, base: u64) -> Result<(), LogError> {
    let dir = ctx.dir.as_path();
    let envelope = read_envelope(dir, base).ok();
    if files::remove_if_exists(&dir.join(key_file_name(base)))? {
        files::sync_dir(dir)?;
    }
    if let Some(env) = envelope
        && let Err(e) = ctx.keys.forget(&env.context())
    {
        tracing::warn!(
            segment = %ctx.segment_path(base).display(),
            error = %e,
            "the key manager could not forget a deleted segment's key"
        );
    }
    Ok(())
}

enum Opened {
    Sealed(Arc<Segment>),
    /// The newest segment file, holding no frames.
    Empty,
}

fn open_segment(ctx: &LogCtx, base: u64, is_last: bool) -> Result<Opened, LogError> {
    let path = ctx.segment_path(base);
    let file = OpenOptions::new()
        .read(true)
        .write(is_last)
        .open(&path)
        .map_err(files::io_err("opening", &path))?;
    let len = files::file_len(&file, &path)?;
    let header_len = SEGMENT_HEADER_LEN as u64;

    if len <= header_len {
        if !is_last {
            return Err(LogError::SealMissing {
                segment: path,
                reason: format!("it holds no frames ({len} bytes) but is not the newest segment"),
            });
        }
        if len == header_len {
            // A complete header must still belong here: an empty file
            // copied from elsewhere is an error, not a placeholder.
            let mut buf = [0u8; SEGMENT_HEADER_LEN];
            files::read_exact_at(&file, &mut buf, 0, &path)?;
            if let Ok(h) = SegmentHeader::decode(&buf) {
                check_header(ctx, &h, base, &path)?;
            }
        }
        make_placeholder(ctx, base, &file)?;
        return Ok(Opened::Empty);
    }

    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    files::read_exact_at(&file, &mut buf, 0, &path)?;
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

    match read_seal(&file, len, &path)? {
        Ok(seal) if seal.next_offset > base => {
            let seg = Segment::new(
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
        Err(_) => recover_tail(ctx, header, envelope, file, len),
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
    let env = read_envelope(&ctx.dir, base).map_err(|p| match p {
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
    file: &File,
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
/// is shredded and only its name (the next offset) is kept.
fn make_placeholder(ctx: &LogCtx, base: u64, file: &File) -> Result<(), LogError> {
    let path = ctx.segment_path(base);
    if ctx.encrypted {
        shred_envelope(ctx, base)?;
    }
    file.set_len(0).map_err(files::io_err("emptying", &path))?;
    file.sync_all().map_err(files::io_err("syncing", &path))?;
    files::remove_if_exists(&ctx.dir.join(index_file_name(base)))?;
    files::sync_dir(&ctx.dir)
}

/// Verifies the unsealed newest segment from its start, cuts off a torn
/// tail, and seals what remains.
fn recover_tail(
    ctx: &LogCtx,
    header: SegmentHeader,
    envelope: Option<KeyEnvelope>,
    file: File,
    len: u64,
) -> Result<Opened, LogError> {
    let base = header.base_offset;
    let seg = Segment::new(
        &ctx.dir,
        header,
        envelope,
        SEGMENT_HEADER_LEN as u64,
        i64::MIN,
    );
    let crypto = seg.crypto(ctx)?;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut expected = base;
    let mut frames = 0u64;
    let mut max_ts = i64::MIN;
    let mut entries = Vec::new();
    let mut last_indexed: Option<u64> = None;
    let mut tail_reason = None;
    while pos < len {
        let frame = match seg.read_frame(&file, &crypto, pos, len, Some(expected)) {
            Ok(f) => f,
            Err(FrameFault::Io(e)) => return Err(e),
            Err(FrameFault::Invalid { reason, .. }) => {
                tail_reason = Some(reason);
                break;
            }
        };
        let batch = match RecordBatch::parse(frame.batch.clone()) {
            Ok(b) => b,
            Err(e) => {
                tail_reason = Some(format!("batch does not parse: {e}"));
                break;
            }
        };
        if last_indexed.is_none_or(|l| pos.saturating_sub(l) >= ctx.config.index_interval_bytes) {
            entries.push(IndexEntry {
                offset: frame.header.base_offset,
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
    if let Some(reason) = &tail_reason {
        tracing::warn!(
            segment = %seg.log_path.display(),
            position = pos,
            dropped_bytes = len.saturating_sub(pos),
            %reason,
            "cutting the torn tail of the segment that was active when the broker stopped"
        );
    }
    if frames == 0 {
        make_placeholder(ctx, base, &file)?;
        return Ok(Opened::Empty);
    }
    file.set_len(pos)
        .map_err(files::io_err("truncating", &seg.log_path))?;
    index::rewrite(&seg.index_path, &entries)?;
    let seal = write_seal(ctx, &seg, &crypto, &file, pos, expected, frames, max_ts)?;
    seg.set_sealed(seal, true);
    tracing::info!(segment = %seg.log_path.display(), frames, next_offset = expected, "sealed the recovered segment");
    Ok(Opened::Sealed(Arc::new(seg)))
}

/// Writes and syncs the seal of `seg` at `frames_end`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_seal(
    ctx: &LogCtx,
    seg: &Segment,
    crypto: &SegmentCrypto,
    file: &File,
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
    crate::observe::timed_fsync(|| file.sync_data())
        .map_err(files::io_err("syncing", &seg.log_path))?;
    Ok(seal)
}
