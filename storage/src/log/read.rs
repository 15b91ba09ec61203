//! Reading a partition log: by offset, by timestamp, and a full
//! verification pass.
//!
//! Every frame returned has been authenticated (AES-GCM under its
//! segment's key, with the AAD of its place) and checked to follow the
//! frame before it (its base offset is the previous frame's next offset).
//! A read starts at an index entry only after the frame there has been
//! authenticated and found to have the entry's offset; otherwise it starts
//! at the beginning of the segment.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strongbox_protocol::batch::RecordBatch;

use crate::io::IoFile;

use super::error::LogError;
use super::files;
use super::format::{FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN, Seal};
use super::index::{self, Lookup};
use super::partition::PartitionLog;
use super::segment::{Frame, FrameFault, LogCtx, Segment, SegmentCrypto};

/// What [`PartitionLog::verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: u64,
    /// Frames authenticated.
    pub frames: u64,
    /// Bytes of plaintext batches.
    pub batch_bytes: u64,
}

/// One call of [`PartitionLog::read`], as each segment sees it.
struct ReadRequest {
    from: u64,
    hw: u64,
    max_bytes: usize,
    /// Base offset of the segment after the one being read, if any.
    next_base: Option<u64>,
}

/// How many index entries past a damaged frame are tried before giving
/// up on finding where the segment becomes readable again.
const RESYNC_ENTRIES: usize = 64;

/// Where to start reading a segment.
struct Anchor {
    position: u64,
    expected: u64,
    /// Frames from `position` on, already read (while checking the anchor,
    /// or ahead of where the read is).
    pending: VecDeque<Frame>,
}

impl PartitionLog {
    /// Reads whole batches starting with the one that holds `from_offset`,
    /// up to about `max_bytes` of batches (always at least one batch when
    /// any is readable, so a batch larger than `max_bytes` still gets
    /// through). Returns `(base offset, plaintext batch)` pairs in order;
    /// the caller skips the records of the first batch before
    /// `from_offset`. Reading at the high watermark returns nothing.
    ///
    /// Damage is reported only where a read *starts*: a read that meets a
    /// damaged frame after reading intact batches returns those batches,
    /// and the next read (from the damaged offset) returns
    /// [`LogError::Damaged`] naming the range that cannot be read. Its end
    /// is the next offset that can be read again: the frame right after
    /// the damaged one when it authenticates in sequence, else the next
    /// index entry whose frame does, else the segment's end (the next
    /// segment's base offset); unknown (`None`) when the damage is in the
    /// active segment and nothing after it can be located yet. A read that
    /// starts past a damaged range reads on normally.
    ///
    /// # Errors
    ///
    /// [`LogError::OffsetOutOfRange`] below the log start or above the high
    /// watermark; [`LogError::Damaged`] when the read starts in damaged
    /// data; [`LogError::Key`] when a segment's key cannot be unwrapped;
    /// I/O errors.
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<Vec<(u64, Bytes)>, LogError> {
        // The high watermark first: every offset below it lies in a segment
        // that already exists, so the snapshot taken next contains it. (The
        // other order can miss a segment created in between.)
        let hw = self.high_watermark();
        let start = self.log_start_offset();
        let segs = self.read_segments().clone();
        if from_offset == hw {
            return Ok(Vec::new());
        }
        let first = segs
            .partition_point(|s| s.base <= from_offset)
            .checked_sub(1)
            .filter(|_| from_offset >= start && from_offset < hw);
        let Some(first) = first else {
            return Err(LogError::OffsetOutOfRange {
                requested: from_offset,
                log_start: start,
                high_watermark: hw,
            });
        };
        let mut out = Vec::new();
        let mut total = 0usize;
        for (i, seg) in segs.iter().enumerate().skip(first) {
            if seg.base >= hw {
                break;
            }
            if i > first
                && let Some(lost) = self.missing_before(&segs, i, from_offset)
            {
                // What was read before the missing offsets is returned;
                // the next read, which starts there, reports them.
                if !out.is_empty() {
                    break;
                }
                return Err(lost);
            }
            let next_base = segs.get(i + 1).map(|s| s.base);
            let read = ReadRequest {
                from: from_offset,
                hw,
                max_bytes,
                next_base,
            };
            match self.read_segment(seg, &read, &mut out, &mut total) {
                Ok(true) => break,
                Ok(false) => {}
                // What was read before the failure is returned; the next
                // read, which starts there, reports it.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(self.out_of_range_if_deleted(seg, from_offset, e)),
            }
        }
        Ok(out)
    }

    /// Reads batches of `seg`; true when the read is complete. Stops
    /// without error at damage when `out` already holds batches.
    fn read_segment(
        &self,
        seg: &Segment,
        req: &ReadRequest,
        out: &mut Vec<(u64, Bytes)>,
        total: &mut usize,
    ) -> Result<bool, LogError> {
        let crypto = seg
            .crypto(&self.ctx)
            .map_err(|e| whole_segment(seg, req, e))?;
        let file = seg.file()?;
        let (seal, end) = seg.extent();
        let lookup = (req.from > seg.base).then_some(Lookup::Offset(req.from));
        let want = req.max_bytes.saturating_sub(*total);
        let Anchor {
            mut position,
            mut expected,
            mut pending,
        } = self.anchor(seg, file.as_ref(), &crypto, lookup, end, want)?;
        loop {
            if position >= end {
                if let Err(e) = check_end(seg, seal.as_ref(), expected) {
                    if !out.is_empty() {
                        return Ok(true);
                    }
                    let seal_end = seal.map(|s| s.next_offset).filter(|n| *n > expected);
                    return Err(LogError::Damaged {
                        segment: seg.log_path.clone(),
                        position,
                        first: expected,
                        end: seal_end.or(req.next_base),
                        reason: e.to_string(),
                    });
                }
                return Ok(false);
            }
            if expected >= req.hw {
                return Ok(true);
            }
            if pending.is_empty() {
                // Frames before `from` are read too (from the anchor on),
                // but only what is returned counts against the budget.
                let want = req.max_bytes.saturating_sub(*total);
                match seg.read_frames(
                    file.as_ref(),
                    &crypto,
                    position,
                    end,
                    Some(expected),
                    want,
                    &mut pending,
                ) {
                    Ok(()) => {}
                    Err(FrameFault::Io(e)) => return Err(e),
                    Err(FrameFault::Invalid { .. }) if !out.is_empty() => return Ok(true),
                    Err(FrameFault::Invalid {
                        position: bad,
                        reason,
                    }) => {
                        let resume = resume_after(
                            &self.ctx,
                            seg,
                            file.as_ref(),
                            &crypto,
                            bad,
                            expected,
                            end,
                        );
                        match resume {
                            // The damage lies wholly before the offset
                            // asked for: read on from where it ends.
                            Some(anchor) if anchor.expected <= req.from => {
                                Anchor {
                                    position,
                                    expected,
                                    pending,
                                } = anchor;
                                continue;
                            }
                            resume => {
                                let end_offset = resume
                                    .map(|a| a.expected)
                                    .or_else(|| seal.map(|s| s.next_offset))
                                    .or(req.next_base);
                                tracing::warn!(
                                    segment = %seg.log_path.display(),
                                    position = bad,
                                    first = expected,
                                    end = ?end_offset,
                                    %reason,
                                    "damaged frame; records in this range cannot be read"
                                );
                                return Err(LogError::Damaged {
                                    segment: seg.log_path.clone(),
                                    position: bad,
                                    first: expected,
                                    end: end_offset,
                                    reason,
                                });
                            }
                        }
                    }
                }
            }
            // `read_frames` returns at least one frame when it succeeds.
            let Some(frame) = pending.pop_front() else {
                return Ok(true);
            };
            let next = frame.header.next_offset().unwrap_or(u64::MAX);
            position = frame.end();
            expected = next;
            if next <= req.from {
                continue;
            }
            let len = frame.batch.len();
            if !out.is_empty() && total.saturating_add(len) > req.max_bytes {
                return Ok(true);
            }
            *total = total.saturating_add(len);
            out.push((frame.header.base_offset, frame.batch));
            if *total >= req.max_bytes {
                return Ok(true);
            }
        }
    }

    /// The first offset whose record timestamp is at or after `ts_ms`, or
    /// `None` when no readable record is that recent.
    ///
    /// # Errors
    ///
    /// As [`PartitionLog::read`].
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<u64>, LogError> {
        // High watermark before the segment snapshot, as in `read`.
        let hw = self.high_watermark();
        let segs = self.read_segments().clone();
        for seg in &segs {
            if seg.base >= hw {
                break;
            }
            let found = self
                .time_in_segment(seg, ts_ms, hw)
                .map_err(|e| self.out_of_range_if_deleted(seg, seg.base, e))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn time_in_segment(&self, seg: &Segment, ts: i64, hw: u64) -> Result<Option<u64>, LogError> {
        if seg.is_sealed() {
            // The seal's facts are trusted only once its MAC is checked.
            seg.crypto(&self.ctx)?;
        }
        if seg.max_timestamp.load(Ordering::Acquire) < ts {
            return Ok(None);
        }
        let crypto = seg.crypto(&self.ctx)?;
        let file = seg.file()?;
        let end = seg.readable_end();
        let Anchor {
            mut position,
            mut expected,
            mut pending,
        } = self.anchor(seg, file.as_ref(), &crypto, Some(Lookup::Time(ts)), end, 0)?;
        while position < end && expected < hw {
            let frame = match pending.pop_front() {
                Some(f) => f,
                None => seg
                    .read_frame(file.as_ref(), &crypto, position, end, Some(expected))
                    .map_err(|f| f.into_error(&seg.log_path))?,
            };
            let batch = parse_batch(seg, &frame)?;
            if batch.max_timestamp() >= ts
                && let Some(r) = batch.records().find(|r| r.timestamp >= ts)
            {
                return Ok(frame.header.base_offset.checked_add(u64::from(r.index)));
            }
            position = frame.end();
            expected = frame.header.next_offset().unwrap_or(u64::MAX);
        }
        Ok(None)
    }

    /// Reads and authenticates every frame of every segment, checks that
    /// segments join, that each batch's CRC holds, and that every seal's
    /// MAC and facts (frame count, end offset, largest timestamp) match
    /// what is there. `strongbox-broker verify` runs the same checks on a
    /// stopped broker's files, without opening (and so recovering) the log:
    /// [`check_dir`](super::check_dir).
    ///
    /// # Errors
    ///
    /// The first problem found, naming its file.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let segs = self.read_segments().clone();
        let mut report = VerifyReport::default();
        let mut prev: Option<(Arc<Segment>, u64)> = None;
        for seg in &segs {
            if let Some((p, end)) = &prev
                && !self.joins(*end, seg.base)
            {
                return Err(LogError::Gap {
                    segment: p.log_path.clone(),
                    end: *end,
                    next: seg.log_path.clone(),
                    next_base: seg.base,
                });
            }
            let crypto = seg.crypto(&self.ctx)?;
            let file = seg.file()?;
            let (seal, end) = seg.extent();
            let mut position = SEGMENT_HEADER_LEN as u64;
            let mut expected = seg.base;
            let mut frames = 0u64;
            let mut max_ts = i64::MIN;
            while position < end {
                let frame = seg
                    .read_frame(file.as_ref(), &crypto, position, end, Some(expected))
                    .map_err(|f| f.into_error(&seg.log_path))?;
                let batch = parse_batch(seg, &frame)?;
                max_ts = max_ts.max(batch.max_timestamp());
                frames += 1;
                report.batch_bytes = report.batch_bytes.saturating_add(frame.batch.len() as u64);
                position = frame.end();
                expected = frame.header.next_offset().unwrap_or(u64::MAX);
            }
            if let Some(seal) = seal {
                let problem = if seal.frame_count != frames {
                    Some(format!(
                        "says {} frames, the segment holds {frames}",
                        seal.frame_count
                    ))
                } else if seal.next_offset != expected {
                    Some(format!(
                        "says the segment ends at offset {}, its frames end at {expected}",
                        seal.next_offset
                    ))
                } else if seal.max_timestamp != max_ts {
                    Some("records a largest timestamp its frames do not have".to_owned())
                } else {
                    None
                };
                if let Some(reason) = problem {
                    return Err(LogError::SealInvalid {
                        segment: seg.log_path.clone(),
                        reason,
                    });
                }
            }
            report.segments += 1;
            report.frames += frames;
            prev = Some((Arc::clone(seg), expected));
        }
        Ok(report)
    }

    /// Picks where to start reading `seg`: an index entry whose frame
    /// authenticates with the entry's offset (read together with the
    /// frames after it, up to about `want` bytes of batches), or the
    /// segment start.
    fn anchor(
        &self,
        seg: &Segment,
        file: &dyn IoFile,
        crypto: &SegmentCrypto,
        lookup: Option<Lookup>,
        end: u64,
        want: usize,
    ) -> Result<Anchor, LogError> {
        let start = Anchor {
            position: SEGMENT_HEADER_LEN as u64,
            expected: seg.base,
            pending: VecDeque::new(),
        };
        let Some(entry) = lookup.and_then(|l| index::lookup(&self.ctx, seg, l)) else {
            return Ok(start);
        };
        if entry.position <= SEGMENT_HEADER_LEN as u64
            || entry.position >= end
            || entry.offset <= seg.base
        {
            return Ok(start);
        }
        let mut pending = VecDeque::new();
        let read = seg.read_frames(
            file,
            crypto,
            entry.position,
            end,
            Some(entry.offset),
            want,
            &mut pending,
        );
        match read {
            Ok(()) => Ok(Anchor {
                position: entry.position,
                expected: entry.offset,
                pending,
            }),
            Err(FrameFault::Io(e)) => Err(e),
            Err(FrameFault::Invalid { reason, .. }) => {
                tracing::warn!(
                    index = %seg.index_path.display(),
                    %reason,
                    "index entry does not match its segment; reading from the segment start"
                );
                Ok(start)
            }
        }
    }

    /// A reader that raced retention or truncation gets "out of range"
    /// rather than an error about a file that is gone.
    fn out_of_range_if_deleted(&self, seg: &Segment, requested: u64, e: LogError) -> LogError {
        let still_there = self
            .read_segments()
            .iter()
            .any(|s| std::ptr::eq(Arc::as_ptr(s), seg));
        if still_there {
            e
        } else {
            LogError::OffsetOutOfRange {
                requested,
                log_start: self.log_start_offset(),
                high_watermark: self.high_watermark(),
            }
        }
    }
}

/// A segment whose keys cannot be used because its seal fails its MAC is
/// damaged as a whole: `[its base, the next segment's base)`. Other key
/// errors (a destroyed or unavailable key) are passed on as they are.
fn whole_segment(seg: &Segment, req: &ReadRequest, e: LogError) -> LogError {
    match e {
        LogError::SealInvalid { reason, .. } => LogError::Damaged {
            segment: seg.log_path.clone(),
            position: 0,
            first: seg.base,
            end: req.next_base,
            reason: format!("its seal {reason}"),
        },
        other => other,
    }
}

/// Where reading `seg` can go on after the damaged frame at `bad`, which
/// should have held offset `expected`: the frame its header says comes
/// next, when that frame authenticates with a later offset; otherwise the
/// first index entry past the damage whose frame does. The frame found
/// was authenticated under the segment's key in its place, so the damaged
/// header is trusted for nothing but a guess of where to look.
fn resume_after(
    ctx: &LogCtx,
    seg: &Segment,
    file: &dyn IoFile,
    crypto: &SegmentCrypto,
    bad: u64,
    expected: u64,
    end: u64,
) -> Option<Anchor> {
    let found = |position: u64| -> Option<Anchor> {
        if position <= bad || position >= end {
            return None;
        }
        let frame = seg.read_frame(file, crypto, position, end, None).ok()?;
        (frame.header.base_offset > expected).then(|| Anchor {
            position,
            expected: frame.header.base_offset,
            pending: VecDeque::from([frame]),
        })
    };
    let mut head = [0u8; FRAME_HEADER_LEN];
    let claimed = files::read_exact_at(file, &mut head, bad, &seg.log_path)
        .ok()
        .and_then(|()| FrameHeader::decode(&head).ok())
        .and_then(|h| bad.checked_add(h.frame_len()));
    if let Some(anchor) = claimed.and_then(found) {
        return Some(anchor);
    }
    index::entries_after(ctx, seg, expected, RESYNC_ENTRIES)
        .into_iter()
        .find_map(|entry| found(entry.position))
}

/// At the end of a sealed segment the frames must have reached its seal's
/// end offset. `seal` is the seal as it was when the read of the segment
/// began (a segment sealed during the read is checked next time).
fn check_end(seg: &Segment, seal: Option<&Seal>, expected: u64) -> Result<(), LogError> {
    match seal {
        Some(seal) if seal.next_offset != expected => Err(LogError::SealInvalid {
            segment: seg.log_path.clone(),
            reason: format!(
                "says the segment ends at offset {}, its frames end at {expected}",
                seal.next_offset
            ),
        }),
        _ => Ok(()),
    }
}

fn parse_batch(seg: &Segment, frame: &Frame) -> Result<RecordBatch, LogError> {
    RecordBatch::parse(frame.batch.clone()).map_err(|e| LogError::CorruptFrame {
        segment: seg.log_path.clone(),
        position: frame.position,
        reason: format!("decrypted batch does not parse: {e}"),
    })
}
