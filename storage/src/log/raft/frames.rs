//! Sealing one Raft frame, and reading one back: its plaintext header
//! alone (to walk a segment) or the whole frame, authenticated.

use bytes::Bytes;

use crate::io::IoFile;

use super::super::error::LogError;
use super::super::files;
use super::super::format::SEGMENT_HEADER_LEN;
use super::super::raft_format::{
    RAFT_FRAME_HEADER_LEN, RaftFrameHeader, RaftFrameKind, raft_frame_aad, raft_frame_nonce,
};
use super::super::segment::{FrameFault, Segment, SegmentCrypto};

/// The smallest Raft frame: a blank entry (header and tag).
pub(crate) const MIN_RAFT_FRAME_LEN: u64 = (RAFT_FRAME_HEADER_LEN + crate::aead::TAG_LEN) as u64;

/// Builds the frame for `header` and `payload` in `out` (cleared first):
/// header, payload sealed in place, tag.
pub(crate) fn seal_into(
    seg: &Segment,
    crypto: &SegmentCrypto,
    header: &RaftFrameHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), LogError> {
    out.clear();
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    let aad = raft_frame_aad(
        &seg.header.topic_id,
        seg.header.partition,
        &seg.header.segment_id,
        header,
    );
    let body = out.get_mut(RAFT_FRAME_HEADER_LEN..).unwrap_or_default();
    let tag = crypto
        .seal_frame(&raft_frame_nonce(header.log_id.index), &aad, body)
        .map_err(|e| LogError::BatchRejected {
            len: payload.len(),
            reason: e.to_string(),
        })?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Reads the plaintext header of the frame at `pos`, which must end by
/// `end`. Not authenticated: the frame's tag covers it when it is read.
pub(crate) fn read_header(
    seg: &Segment,
    file: &dyn IoFile,
    pos: u64,
    end: u64,
) -> Result<RaftFrameHeader, FrameFault> {
    let invalid = |reason: String| FrameFault::Invalid {
        position: pos,
        reason,
    };
    if pos < SEGMENT_HEADER_LEN as u64 {
        return Err(invalid("a frame inside the segment header".into()));
    }
    pos.checked_add(RAFT_FRAME_HEADER_LEN as u64)
        .filter(|e| *e <= end)
        .ok_or_else(|| invalid("a frame header runs past the end of the frames".into()))?;
    let mut head = [0u8; RAFT_FRAME_HEADER_LEN];
    files::read_exact_at(file, &mut head, pos, &seg.log_path).map_err(FrameFault::Io)?;
    let header =
        RaftFrameHeader::decode(&head).map_err(|e| invalid(format!("frame header: {e}")))?;
    pos.checked_add(header.frame_len())
        .filter(|e| *e <= end)
        .ok_or_else(|| {
            invalid(format!(
                "a frame of {} bytes runs past the end of the frames",
                header.len
            ))
        })?;
    Ok(header)
}

/// Reads the frame at `pos` (ending by `end`), authenticates it and
/// returns its header and plaintext payload. `expected`, when given, is
/// the index the frame must hold to be in its place.
pub(crate) fn read_frame(
    seg: &Segment,
    file: &dyn IoFile,
    crypto: &SegmentCrypto,
    pos: u64,
    end: u64,
    expected: Option<u64>,
) -> Result<(RaftFrameHeader, Bytes), FrameFault> {
    let invalid = |reason: String| FrameFault::Invalid {
        position: pos,
        reason,
    };
    let header = read_header(seg, file, pos, end)?;
    if let Some(index) = expected
        && header.log_id.index != index
    {
        return Err(invalid(format!(
            "frame holds index {} where index {index} belongs (frames moved or removed)",
            header.log_id.index
        )));
    }
    let len = usize::try_from(header.len).map_err(|_| invalid("frame too long".into()))?;
    let mut body = vec![0u8; len];
    let body_pos = pos.saturating_add(RAFT_FRAME_HEADER_LEN as u64);
    files::read_exact_at(file, &mut body, body_pos, &seg.log_path).map_err(FrameFault::Io)?;
    let aad = raft_frame_aad(
        &seg.header.topic_id,
        seg.header.partition,
        &seg.header.segment_id,
        &header,
    );
    let plain_len = crypto
        .open_frame(&raft_frame_nonce(header.log_id.index), &aad, &mut body)
        .map_err(|_| {
            invalid(format!(
                "frame at index {} fails authentication (altered, or sealed under another key or place)",
                header.log_id.index
            ))
        })?;
    body.truncate(plain_len);
    if header.kind == RaftFrameKind::Records {
        let batch = strongbox_protocol::batch::parse_header(&body)
            .map_err(|e| invalid(format!("decrypted batch is malformed: {e}")))?;
        if batch.record_count != header.record_count {
            return Err(invalid("record counts of frame and batch differ".into()));
        }
    }
    Ok((header, Bytes::from(body)))
}
