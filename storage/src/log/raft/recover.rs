//! Opening a replicated partition's directory: the state file, finishing
//! interrupted deletions and purges, checking every segment's structure,
//! and recovering the newest segment's tail.
//!
//! 1. `*.tmp` files are removed; a `{first}.log.deleted` (a deletion a
//!    crash interrupted) loses its envelope (the key is forgotten), then
//!    its data.
//! 2. Every segment must be a Raft segment of this topic and partition
//!    whose name is its first index; all but the newest must be sealed,
//!    with a seal at the very end (the newest seal's MAC is verified now,
//!    the others' when their key is first used). Their frame headers are walked (they
//!    are plaintext): indexes follow each other from the first, offsets
//!    follow each other, and the seal's frame count and next index agree.
//!    Frames are authenticated when they are read.
//! 3. The newest segment, if not sealed, was active when its process
//!    stopped: its frames are read and authenticated from the first, the
//!    first that is incomplete, fails authentication or is out of place
//!    starts the torn tail, which is cut (it was never reported flushed,
//!    since a flush is reported after the fsync that covers it), and the
//!    rest is sealed. Nothing is ever appended to it again. A newest
//!    segment left with no frame is removed with its key.
//! 4. Consecutive segments must join: each starts at the index after the
//!    previous one's last, and its first offset is the previous one's end.
//! 5. Segments whose every entry is at or below the recorded last purged
//!    log id (a purge a crash interrupted) are deleted.

use std::sync::Arc;

use crate::io::{IoFile, OpenMode};

use super::super::error::LogError;
use super::super::files;
use super::super::format::{
    LogFile, SEAL_LEN, SEGMENT_HEADER_LEN, Seal, deleted_file_name, index_file_name,
    parse_file_name,
};
use super::super::raft_format::{RAFT_STATE_FILE, RaftState};
use super::super::recovery::{load_envelope, put_seal, shred_envelope};
use super::super::segment::{FrameFault, LogCtx, Segment};
use super::frames::{self, MIN_RAFT_FRAME_LEN};
use super::{Loc, SegFrames, delete_segment};

/// What opening the directory found.
pub(super) struct Recovered {
    pub(super) segs: Vec<SegFrames>,
    pub(super) state: RaftState,
}

/// Opens and recovers the replicated log in `ctx.dir`.
pub(super) fn recover(ctx: &LogCtx) -> Result<Recovered, LogError> {
    let dir = ctx.dir.as_path();
    let io = ctx.io.as_ref();
    let state = read_state(ctx)?;
    let mut bases = Vec::new();
    let mut changed = false;
    for name in files::list(io, dir)? {
        match parse_file_name(&name) {
            Some(LogFile::Temporary) => {
                files::remove_if_exists(io, &dir.join(&name))?;
            }
            Some(LogFile::Deleted(base)) => {
                let deleted = dir.join(deleted_file_name(base));
                let id = io
                    .open(&deleted, OpenMode::Read)
                    .ok()
                    .and_then(|f| super::super::offline::read_header(f.as_ref(), &deleted).ok())
                    .map(|h| h.segment_id);
                shred_envelope(ctx, base, id)?;
                files::remove_if_exists(io, &deleted)?;
                changed = true;
            }
            Some(LogFile::Segment(base)) => bases.push(base),
            _ => {}
        }
    }
    if changed {
        files::sync_dir(io, dir)?;
    }
    bases.sort_unstable();
    bases.dedup();

    let mut segs: Vec<SegFrames> = Vec::with_capacity(bases.len());
    let last = bases.len().checked_sub(1);
    for (i, &base) in bases.iter().enumerate() {
        if let Some(found) = open_segment(ctx, base, Some(i) == last)? {
            segs.push(found);
        }
    }
    for pair in segs.windows(2) {
        if let [a, b] = pair {
            check_join(a, b)?;
        }
    }
    // A purge that stopped after recording its log id.
    if let Some(purged) = state.last_purged {
        while segs
            .first()
            .and_then(SegFrames::last_index)
            .is_some_and(|last| last <= purged.index)
        {
            let seg = segs.remove(0);
            delete_segment(ctx, &seg.seg)?;
        }
    }
    Ok(Recovered { segs, state })
}

/// The state file, or an empty state when there is none.
fn read_state(ctx: &LogCtx) -> Result<RaftState, LogError> {
    let path = ctx.dir.join(RAFT_STATE_FILE);
    let empty = RaftState {
        topic_id: ctx.config.topic_id,
        partition: ctx.config.partition,
        vote: None,
        committed: None,
        last_purged: None,
        log_start_offset: 0,
        written_at_ms: 0,
        snapshot_meta: Vec::new(),
    };
    let file = match ctx.io.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(empty),
        Err(e) => return Err(files::io_err("opening", &path)(e)),
    };
    let len = files::file_len(file.as_ref(), &path)?;
    let corrupt = |reason: String| LogError::CorruptHeader {
        segment: path.clone(),
        reason,
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= 2 * super::super::raft_format::MAX_CONTROL_LEN)
        .ok_or_else(|| corrupt(format!("{len} bytes is too long for a state file")))?;
    let mut buf = vec![0u8; len];
    files::read_exact_at(file.as_ref(), &mut buf, 0, &path)?;
    let state = RaftState::decode(&buf).map_err(|e| corrupt(e.to_string()))?;
    if state.topic_id != ctx.config.topic_id || state.partition != ctx.config.partition {
        return Err(corrupt("it belongs to another topic or partition".into()));
    }
    Ok(state)
}

fn open_segment(ctx: &LogCtx, base: u64, is_last: bool) -> Result<Option<SegFrames>, LogError> {
    let path = ctx.segment_path(base);
    let mode = if is_last {
        OpenMode::ReadWrite
    } else {
        OpenMode::Read
    };
    let file = files::open(ctx.io.as_ref(), &path, mode, "opening")?;
    let len = files::file_len(file.as_ref(), &path)?;
    let header_len = SEGMENT_HEADER_LEN as u64;
    if len < header_len && is_last {
        // A crash while the segment was being created: nothing was ever
        // written under a key.
        drop(file);
        remove_newest(ctx, base, None)?;
        return Ok(None);
    }
    let header = super::super::offline::read_header(file.as_ref(), &path)?;
    if header.topic_id != ctx.config.topic_id
        || header.partition != ctx.config.partition
        || header.base_offset != base
        || !header.raft_frames()
    {
        return Err(LogError::CorruptHeader {
            segment: path,
            reason: format!(
                "it is not the Raft segment at index {base} of this topic and partition \
                 (flags {:#06x}, first index {})",
                header.flags, header.base_offset
            ),
        });
    }
    let envelope = match load_envelope(ctx, &header) {
        Ok(env) => env,
        Err(LogError::EnvelopeMissing { .. }) if is_last && len == header_len => {
            // Created, but its key never reached the disk: no frame.
            drop(file);
            remove_newest(ctx, base, Some(header.segment_id))?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let seal = read_seal(file.as_ref(), len, &path)?;
    match seal {
        Ok(seal) => {
            let seg = Segment::new(
                &ctx.io,
                &ctx.dir,
                header,
                Some(envelope),
                seal.frames_end,
                seal.max_timestamp,
            );
            seg.set_sealed(seal, false);
            if is_last {
                // The newest seal says where the log ends, which Raft relies
                // on before it reads anything: its MAC is checked now. Older
                // seals are checked when their key is first used (as in a
                // single-node log, so a segment under a destroyed KEK does
                // not stop the log from opening).
                seg.crypto(ctx)?;
            }
            let frames = walk_headers(&seg, file.as_ref(), seal.frames_end)?;
            let count = frames.len() as u64;
            let next = frames
                .last()
                .and_then(|l| l.header.log_id.index.checked_add(1));
            if count != seal.frame_count || next != Some(seal.next_offset) {
                return Err(LogError::SealInvalid {
                    segment: path,
                    reason: format!(
                        "it says {} frames up to index {}, the segment holds {count} frames up to {next:?}",
                        seal.frame_count, seal.next_offset
                    ),
                });
            }
            Ok(Some(SegFrames {
                seg: Arc::new(seg),
                frames,
            }))
        }
        Err(reason) if !is_last => Err(LogError::SealMissing {
            segment: path,
            reason: format!("it has no valid seal at its end ({reason})"),
        }),
        Err(_) => recover_tail(ctx, header, envelope, file, len),
    }
}

/// Reads a Raft segment's trailer: the outer error is I/O, the inner one
/// says why the trailer is not a seal.
fn read_seal(
    file: &dyn IoFile,
    len: u64,
    path: &std::path::Path,
) -> Result<Result<Seal, String>, LogError> {
    let Some(at) = len
        .checked_sub(SEAL_LEN as u64)
        .filter(|at| *at >= SEGMENT_HEADER_LEN as u64)
    else {
        return Ok(Err(format!("{len} bytes is too short for a seal")));
    };
    let mut buf = [0u8; SEAL_LEN];
    files::read_exact_at(file, &mut buf, at, path)?;
    Ok(
        match Seal::decode_with_min_frame(&buf, MIN_RAFT_FRAME_LEN) {
            Ok(seal) if seal.frames_end == at => Ok(seal),
            Ok(seal) => Err(format!(
                "the seal says the frames end at byte {}, but it sits at byte {at}",
                seal.frames_end
            )),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// Walks the frame headers of a sealed segment up to `end`.
fn walk_headers(seg: &Segment, file: &dyn IoFile, end: u64) -> Result<Vec<Loc>, LogError> {
    let mut out: Vec<Loc> = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN as u64;
    while pos < end {
        let header =
            frames::read_header(seg, file, pos, end).map_err(|f| f.into_error(&seg.log_path))?;
        let loc = Loc {
            header,
            position: pos,
        };
        check_follows(seg, out.last(), &loc)?;
        pos = pos.saturating_add(header.frame_len());
        out.push(loc);
    }
    Ok(out)
}

/// Checks that `loc` is the frame after `prev` (or the segment's first).
fn check_follows(seg: &Segment, prev: Option<&Loc>, loc: &Loc) -> Result<(), LogError> {
    let (index, offset) = match prev {
        Some(p) => (p.header.log_id.index.checked_add(1), p.header.next_offset()),
        None => (Some(seg.base), None),
    };
    let h = &loc.header;
    if index != Some(h.log_id.index) || offset.is_some_and(|o| o != h.base_offset) {
        return Err(LogError::CorruptFrame {
            segment: seg.log_path.clone(),
            position: loc.position,
            reason: format!(
                "frame holds index {} at offset {} where index {index:?} at offset {offset:?} belongs",
                h.log_id.index, h.base_offset
            ),
        });
    }
    Ok(())
}

/// Recovers the newest segment, which has no seal: keeps the frames that
/// authenticate in order, cuts the rest, seals it.
fn recover_tail(
    ctx: &LogCtx,
    header: super::super::format::SegmentHeader,
    envelope: super::super::envelope::KeyEnvelope,
    file: Arc<dyn IoFile>,
    len: u64,
) -> Result<Option<SegFrames>, LogError> {
    let base = header.base_offset;
    let seg = Segment::new(&ctx.io, &ctx.dir, header, Some(envelope), len, i64::MIN);
    let crypto = seg.crypto(ctx)?;
    let mut frames_found: Vec<Loc> = Vec::new();
    let mut max_ts = i64::MIN;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut cut_reason = String::new();
    while pos < len {
        let expected = frames_found
            .last()
            .map_or(Some(base), |l| l.header.log_id.index.checked_add(1));
        let Some(expected) = expected else { break };
        let (h, payload) =
            match frames::read_frame(&seg, file.as_ref(), &crypto, pos, len, Some(expected)) {
                Ok(frame) => frame,
                // A failed read says nothing about the bytes: never cut on it.
                Err(FrameFault::Io(e)) => return Err(e),
                Err(FrameFault::Invalid { reason, .. }) => {
                    cut_reason = reason;
                    break;
                }
            };
        let loc = Loc {
            header: h,
            position: pos,
        };
        if let Err(e) = check_follows(&seg, frames_found.last(), &loc) {
            cut_reason = e.to_string();
            break;
        }
        if h.kind == super::super::raft_format::RaftFrameKind::Records
            && let Ok(batch) = strongbox_protocol::batch::RecordBatch::parse(payload)
        {
            max_ts = max_ts.max(batch.max_timestamp());
        }
        pos = pos.saturating_add(h.frame_len());
        frames_found.push(loc);
    }
    if pos < len {
        tracing::warn!(
            segment = %seg.log_path.display(),
            position = pos,
            bytes = len.saturating_sub(pos),
            reason = %cut_reason,
            "cutting the torn tail of a Raft segment (entries never reported flushed)"
        );
    }
    if frames_found.is_empty() {
        drop(file);
        remove_newest(ctx, base, Some(seg.header.segment_id))?;
        return Ok(None);
    }
    let next_index = frames_found
        .last()
        .and_then(|l| l.header.log_id.index.checked_add(1))
        .unwrap_or(u64::MAX);
    let seal = put_seal(
        ctx,
        &seg,
        &crypto,
        file.as_ref(),
        pos,
        next_index,
        frames_found.len() as u64,
        max_ts,
    )?;
    crate::observe::timed_fsync(|| file.sync_data())
        .map_err(files::io_err("syncing", &seg.log_path))?;
    let sealed = Segment::new(&ctx.io, &ctx.dir, seg.header, seg.envelope(), pos, max_ts);
    sealed.set_sealed(seal, true);
    Ok(Some(SegFrames {
        seg: Arc::new(sealed),
        frames: frames_found,
    }))
}

/// Removes the newest segment file, which holds no frame, with its key.
fn remove_newest(ctx: &LogCtx, base: u64, segment_id: Option<[u8; 16]>) -> Result<(), LogError> {
    shred_envelope(ctx, base, segment_id)?;
    let io = ctx.io.as_ref();
    files::remove_if_exists(io, &ctx.segment_path(base))?;
    files::remove_if_exists(io, &ctx.dir.join(index_file_name(base)))?;
    files::sync_dir(io, &ctx.dir)
}

/// Checks that segment `b` starts where `a` ends, in indexes and offsets.
fn check_join(a: &SegFrames, b: &SegFrames) -> Result<(), LogError> {
    let next_index = a.last_index().and_then(|i| i.checked_add(1));
    let next_offset = a.frames.last().and_then(|l| l.header.next_offset());
    let first_offset = b.frames.first().map(|l| l.header.base_offset);
    if next_index != Some(b.seg.base) || next_offset != first_offset {
        return Err(LogError::CorruptHeader {
            segment: b.seg.log_path.clone(),
            reason: format!(
                "it starts at index {} offset {first_offset:?}, the segment before it ends before \
                 index {next_index:?} offset {next_offset:?} (a segment is missing)",
                b.seg.base
            ),
        });
    }
    Ok(())
}
