//! Segment files read as they are, for the two readers of a stopped
//! broker's log: [`check_dir`](super::check_dir) (`strongbox-broker
//! verify`) and [`scan_dir`](super::scan_dir) (`strongbox-broker inspect`).
//!
//! Neither opens the log, which would recover it, so both build each
//! segment from the header, envelope and seal found in its files and walk
//! its frames here, with the checks a read of the live log makes: every
//! frame authenticates with the AAD of its place and holds the offset that
//! follows the frame before it. What to do with a frame, and with one that
//! is not intact, is up to the caller.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{IoFile, StorageIo};

use super::envelope::KeyEnvelope;
use super::error::LogError;
use super::files;
use super::format::{SEGMENT_HEADER_LEN, Seal, SegmentHeader};
use super::segment::{Frame, FrameFault, Segment, SegmentCrypto};

/// Reads and decodes the header of the segment file `file` at `path`.
pub(super) fn read_header(file: &dyn IoFile, path: &Path) -> Result<SegmentHeader, LogError> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    files::read_exact_at(file, &mut buf, 0, path)?;
    SegmentHeader::decode(&buf).map_err(|e| LogError::CorruptHeader {
        segment: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The segment as its files are: sealed by `seal` (its MAC not verified
/// yet), or without one, its frames to be read from its first.
pub(super) fn found_segment(
    io: &Arc<dyn StorageIo>,
    dir: &Path,
    header: SegmentHeader,
    envelope: KeyEnvelope,
    seal: Option<Seal>,
) -> Segment {
    match seal {
        Some(seal) => {
            let segment = Segment::new(
                io,
                dir,
                header,
                Some(envelope),
                seal.frames_end,
                seal.max_timestamp,
            );
            segment.set_sealed(seal, false);
            segment
        }
        None => Segment::new(
            io,
            dir,
            header,
            Some(envelope),
            SEGMENT_HEADER_LEN as u64,
            i64::MIN,
        ),
    }
}

/// The error for a seal that ends the segment before it starts.
pub(super) fn seal_before_base(segment: PathBuf, seal: &Seal, base: u64) -> LogError {
    LogError::SealMissing {
        segment,
        reason: format!(
            "its seal ends at offset {} before its base offset {base}",
            seal.next_offset
        ),
    }
}

/// How [`walk_frames`] ended.
pub(super) struct FrameWalk<B> {
    /// The offset after the last frame the visitor took.
    pub(super) next: u64,
    /// The file position after the last frame the visitor took.
    pub(super) position: u64,
    /// The frame that is not intact, when reading stopped at one.
    pub(super) fault: Option<FrameFault>,
    /// What the visitor stopped with, when it did.
    pub(super) stopped: Option<B>,
}

/// Reads and authenticates the frames of `segment` in order from its first
/// up to file position `end`, and hands each to `visit` with the offset
/// after it. Stops at the first frame that is not intact or when `visit`
/// breaks; a frame `visit` breaks on is not counted as taken.
pub(super) fn walk_frames<B>(
    segment: &Segment,
    crypto: &SegmentCrypto,
    file: &dyn IoFile,
    end: u64,
    mut visit: impl FnMut(Frame, u64) -> ControlFlow<B>,
) -> FrameWalk<B> {
    let mut walk = FrameWalk {
        next: segment.base,
        position: SEGMENT_HEADER_LEN as u64,
        fault: None,
        stopped: None,
    };
    while walk.position < end {
        let frame = match segment.read_frame(file, crypto, walk.position, end, Some(walk.next)) {
            Ok(f) => f,
            Err(fault) => {
                walk.fault = Some(fault);
                break;
            }
        };
        // `read_frame` refuses a frame whose offsets overflow; checked again
        // so the walk always moves forward.
        let frame_end = frame.end();
        let Some(next) = frame
            .header
            .next_offset()
            .filter(|_| frame_end > walk.position)
        else {
            walk.fault = Some(FrameFault::Invalid {
                position: walk.position,
                reason: "frame offsets overflow".into(),
            });
            break;
        };
        if let ControlFlow::Break(b) = visit(frame, next) {
            walk.stopped = Some(b);
            break;
        }
        walk.next = next;
        walk.position = frame_end;
    }
    walk
}
