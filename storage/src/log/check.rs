//! A read-only check of one partition directory: what `strongbox-broker
//! verify` runs for every partition.
//!
//! [`PartitionLog::open`](super::PartitionLog::open) *recovers*: it removes
//! temporary files, finishes interrupted deletions, cuts a torn tail off
//! the newest segment and seals it. A verifier must do none of that (it
//! would repair, and so hide, what it was asked to report), and it should
//! not stop at the first problem either. [`check_dir`] applies the checks
//! of recovery (docs/STORAGE.md, "Recovery") and of
//! [`PartitionLog::verify`](super::PartitionLog::verify) to the files as
//! they are: it opens every file read-only, writes nothing, and goes on
//! after a damaged segment, so that one report lists every problem of the
//! partition.
//!
//! Per segment it checks the header (magic, version, CRC, topic, partition,
//! base offset against the file name, the encryption flag), the key
//! envelope (present, non-empty, decodes, bound to the header, under the
//! topic's KEK scope), the data key (unwrapped through the caller's
//! [`SegmentKeys`]), the seal (position, MAC under the segment's key, frame
//! count, end offset and largest timestamp against the frames) and every
//! frame (length, offset in sequence, AES-GCM authentication with the AAD
//! of its place, batch framing and CRC). Across segments it checks that
//! they join, or that a gap marker accepts the gap between them. It reports
//! the quarantine files recovery left (torn tails kept as evidence). Files
//! the log does not own are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strongbox_protocol::batch::RecordBatch;

use crate::io::{IoFile, OpenMode, StorageIo, default_io};
use crate::keys::{KekId, SegmentKeys};

use super::config::{LogConfig, SystemClock};
use super::error::LogError;
use super::files;
use super::format::{
    LogFile, SEGMENT_HEADER_LEN, Seal, deleted_file_name, gap_file_name, index_file_name,
    key_file_name, parse_file_name,
};
use super::gap::GapMarker;
use super::offline::{found_segment, read_header, seal_before_base, walk_frames};
use super::quarantine::{self, QuarantineHeader};
use super::recovery::{check_header, load_envelope, read_seal};
use super::segment::{FrameFault, LogCtx, Segment, SegmentCrypto};

/// What [`check_dir`] found in one partition directory.
#[derive(Debug, Default)]
pub struct DirCheck {
    /// Every segment file, oldest first, damaged ones included (an empty
    /// newest file, which only records the next offset, is not listed).
    pub segments: Vec<SegmentCheck>,
    /// Everything worth reporting, in the order found. See
    /// [`Finding::is_problem`].
    pub findings: Vec<Finding>,
    /// The offset after the last intact record, when the newest segment is
    /// intact enough to tell.
    pub end_offset: Option<u64>,
    /// The newest segment file when it holds no frames (a crash while it
    /// was being created, or a tail that was torn entirely): it only
    /// records the next offset.
    pub empty_newest: Option<PathBuf>,
}

impl DirCheck {
    /// True when no finding is a problem.
    pub fn is_intact(&self) -> bool {
        !self.findings.iter().any(Finding::is_problem)
    }
}

/// One segment file, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCheck {
    /// The segment file.
    pub path: PathBuf,
    /// Its base offset (from its name).
    pub base_offset: u64,
    /// Its id, when the header decodes.
    pub segment_id: Option<[u8; 16]>,
    /// The KEK version its envelope names, when the envelope decodes.
    pub kek: Option<KekId>,
    /// True when it ends with a seal whose MAC verified.
    pub sealed: bool,
    /// That seal's MAC, when `sealed`: what a signed checkpoint records
    /// of a partition's last rolled segment.
    pub seal_mac: Option<[u8; 32]>,
    /// Frames authenticated.
    pub frames: u64,
    /// Records in those frames.
    pub records: u64,
    /// Plaintext bytes of those frames' batches.
    pub batch_bytes: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// True when nothing about it is a problem.
    pub intact: bool,
}

/// Something [`check_dir`] reports. Problems mean data is damaged, missing
/// or unreadable; the other findings are states a crash leaves behind,
/// which the broker's next start resolves.
#[non_exhaustive]
#[derive(Debug)]
pub enum Finding {
    /// A segment, its envelope, its key or its seal fails a check; the
    /// error names the file. A problem.
    Damaged(LogError),
    /// The newest segment is not sealed and ends in bytes that are not
    /// intact frames: a crash tore its tail, or it was altered. The
    /// broker's next start cuts them off. A problem.
    TornTail {
        /// The segment file.
        segment: PathBuf,
        /// File position of the first byte that is not an intact frame.
        position: u64,
        /// Bytes from there to the end of the file.
        dropped_bytes: u64,
        /// Why the bytes there are not an intact frame.
        reason: String,
        /// Intact frames before it.
        frames: u64,
    },
    /// A key envelope whose segment file is gone (retention and deletion
    /// remove the envelope first). A problem.
    OrphanEnvelope {
        /// The envelope file.
        envelope: PathBuf,
    },
    /// The newest segment is not sealed (the broker did not stop cleanly)
    /// but every byte of it is an intact frame. Sealed at the next start.
    Unsealed {
        /// The segment file.
        segment: PathBuf,
        /// Its frames, all intact.
        frames: u64,
    },
    /// A segment deletion that a crash interrupted; the next start finishes
    /// it, envelope first.
    PendingDeletion {
        /// The `.log.deleted` file.
        segment: PathBuf,
        /// Its envelope, when it is still there.
        envelope: Option<PathBuf>,
    },
    /// A file left by an interrupted envelope write; removed at the next
    /// start.
    TemporaryFile {
        /// The file.
        path: PathBuf,
    },
    /// An index whose segment is gone; removed at the next start.
    OrphanIndex {
        /// The index file.
        path: PathBuf,
    },
    /// Bytes recovery cut from a torn tail and kept as evidence. A problem
    /// until an operator has looked at them and removed the file.
    Quarantined {
        /// The quarantine file.
        path: PathBuf,
        /// Where the bytes came from, when the file's header decodes.
        header: Option<QuarantineHeader>,
        /// What is wrong with the file, when its header does not decode
        /// or its length does not match.
        problem: Option<String>,
    },
    /// Offsets an operator (or a failed sync under `interval` durability)
    /// accepted as lost: a gap marker names them.
    AcceptedGap {
        /// The gap marker.
        marker: PathBuf,
        /// Where the log ended before the gap.
        from: u64,
        /// Where it goes on.
        to: u64,
    },
    /// A gap marker with no segment after it (a move past lost offsets
    /// that stopped before its segment was made); removed at the next
    /// start.
    OrphanGap {
        /// The gap marker.
        path: PathBuf,
    },
}

impl Finding {
    /// True for findings that mean data is damaged, missing or cannot be
    /// read; false for states the next start resolves by itself.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            Self::Damaged(_)
                | Self::TornTail { .. }
                | Self::OrphanEnvelope { .. }
                | Self::Quarantined { .. }
        )
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged(e) => write!(f, "{e}"),
            Self::TornTail {
                segment,
                position,
                dropped_bytes,
                reason,
                frames,
            } => write!(
                f,
                "newest segment {} is not sealed and its last {dropped_bytes} bytes, from byte \
                 {position}, are not an intact frame ({reason}); the {frames} frames before \
                 them authenticate",
                segment.display()
            ),
            Self::OrphanEnvelope { envelope } => {
                write!(f, "key envelope {} has no segment file", envelope.display())
            }
            Self::Unsealed { segment, frames } => write!(
                f,
                "newest segment {} is not sealed (the broker did not stop cleanly); all its \
                 {frames} frames authenticate",
                segment.display()
            ),
            Self::PendingDeletion { segment, envelope } => match envelope {
                Some(env) => write!(
                    f,
                    "the deletion of {} was interrupted; its key envelope {} is still there",
                    segment.display(),
                    env.display()
                ),
                None => write!(
                    f,
                    "the deletion of {} was interrupted after its key envelope was removed",
                    segment.display()
                ),
            },
            Self::TemporaryFile { path } => write!(
                f,
                "{} was left by an interrupted envelope write",
                path.display()
            ),
            Self::OrphanIndex { path } => {
                write!(f, "index {} has no segment file", path.display())
            }
            Self::Quarantined {
                path,
                header: Some(h),
                ..
            } => write!(
                f,
                "{} holds {} bytes that recovery cut from the torn tail of segment {:020}.log \
                 (from byte {}, where offset {} would have started)",
                path.display(),
                h.bytes,
                h.base_offset,
                h.position,
                h.first_offset
            ),
            Self::Quarantined { path, problem, .. } => write!(
                f,
                "quarantine file {} cannot be read as one: {}",
                path.display(),
                problem.as_deref().unwrap_or("unknown")
            ),
            Self::AcceptedGap { marker, from, to } => write!(
                f,
                "offsets {from}..{to} were accepted as lost ({})",
                marker.display()
            ),
            Self::OrphanGap { path } => {
                write!(f, "gap marker {} has no segment after it", path.display())
            }
        }
    }
}

/// How far [`check_dir`] has got; reported after every frame and segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckProgress {
    /// Segments finished.
    pub segments_done: usize,
    /// Segment files in the directory.
    pub segments: usize,
    /// Frames authenticated so far.
    pub frames: u64,
    /// Plaintext batch bytes authenticated so far.
    pub batch_bytes: u64,
}

/// Checks the partition directory `dir` without changing anything in it.
///
/// `config` is the partition's log configuration (its topic id, partition
/// and KEK scope are what the files must match); `keys` unwraps the data
/// keys and is never asked to create or forget one. Every problem is in the
/// returned [`DirCheck`]: this function does not fail and does not panic on
/// damaged files.
pub fn check_dir(
    dir: &Path,
    config: &LogConfig,
    keys: Arc<dyn SegmentKeys>,
    progress: &mut dyn FnMut(CheckProgress),
) -> DirCheck {
    let mut out = DirCheck::default();
    let config = match config.clone().validate() {
        Ok(c) => c,
        Err(e) => {
            out.findings.push(Finding::Damaged(e));
            return out;
        }
    };
    let ctx = LogCtx {
        dir: Arc::new(dir.to_path_buf()),
        config,
        keys,
        encrypted: true,
        clock: Arc::new(SystemClock),
        io: default_io(),
        indexes: super::index::IndexCache::default(),
    };
    let listing = match list(ctx.io.as_ref(), dir) {
        Ok(l) => l,
        Err(e) => {
            out.findings.push(Finding::Damaged(e));
            return out;
        }
    };
    for path in listing.temporaries {
        out.findings.push(Finding::TemporaryFile { path });
    }
    for path in listing.quarantined {
        let (header, problem) = match quarantine::inspect(ctx.io.as_ref(), &path) {
            Ok(h) => (Some(h), None),
            Err(p) => (None, Some(p)),
        };
        out.findings.push(Finding::Quarantined {
            path,
            header,
            problem,
        });
    }
    for (&base, n) in &listing.names {
        if n.deleted {
            out.findings.push(Finding::PendingDeletion {
                segment: dir.join(deleted_file_name(base)),
                envelope: n.key.then(|| dir.join(key_file_name(base))),
            });
        } else if !n.log {
            if n.key {
                out.findings.push(Finding::OrphanEnvelope {
                    envelope: dir.join(key_file_name(base)),
                });
            }
            if n.index {
                out.findings.push(Finding::OrphanIndex {
                    path: dir.join(index_file_name(base)),
                });
            }
            if n.gap {
                out.findings.push(Finding::OrphanGap {
                    path: dir.join(gap_file_name(base)),
                });
            }
        }
    }

    let bases: Vec<u64> = listing
        .names
        .iter()
        .filter(|(_, n)| n.log && !n.deleted)
        .map(|(b, _)| *b)
        .collect();
    let mut state = CheckProgress {
        segments: bases.len(),
        ..CheckProgress::default()
    };
    // The end offset of the previous segment, when it can be trusted.
    let mut previous: Option<(PathBuf, u64)> = None;
    let mut end_offset = Some(0);
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i.saturating_add(1) == bases.len();
        let checked = check_segment(&ctx, base, is_last, &mut state, progress);
        if let Some((prev, end)) = &previous
            && *end != base
        {
            let accepted = GapMarker::read(ctx.io.as_ref(), dir, base).and_then(Result::ok);
            match accepted {
                Some(m)
                    if m.topic_id == ctx.config.topic_id
                        && m.partition == ctx.config.partition
                        && m.from_offset == *end
                        && m.to_offset == base =>
                {
                    out.findings.push(Finding::AcceptedGap {
                        marker: dir.join(gap_file_name(base)),
                        from: *end,
                        to: base,
                    });
                }
                _ => out.findings.push(Finding::Damaged(LogError::Gap {
                    segment: prev.clone(),
                    end: *end,
                    next: ctx.segment_path(base),
                    next_base: base,
                })),
            }
        }
        end_offset = checked.end;
        previous = checked.end.map(|e| (ctx.segment_path(base), e));
        match checked.segment {
            Some(mut seg) => {
                seg.intact = !checked.findings.iter().any(Finding::is_problem);
                out.segments.push(seg);
            }
            None => out.empty_newest = Some(ctx.segment_path(base)),
        }
        out.findings.extend(checked.findings);
        state.segments_done = state.segments_done.saturating_add(1);
        progress(state);
    }
    out.end_offset = end_offset;
    out
}

#[derive(Debug, Default)]
struct Names {
    log: bool,
    index: bool,
    key: bool,
    deleted: bool,
    gap: bool,
}

#[derive(Debug, Default)]
struct Listing {
    names: BTreeMap<u64, Names>,
    temporaries: Vec<PathBuf>,
    quarantined: Vec<PathBuf>,
}

fn list(io: &dyn StorageIo, dir: &Path) -> Result<Listing, LogError> {
    let mut listing = Listing::default();
    for name in files::list(io, dir)? {
        match parse_file_name(&name) {
            Some(LogFile::Temporary) => listing.temporaries.push(dir.join(&name)),
            Some(LogFile::Segment(b)) => listing.names.entry(b).or_default().log = true,
            Some(LogFile::Index(b)) => listing.names.entry(b).or_default().index = true,
            Some(LogFile::Key(b)) => listing.names.entry(b).or_default().key = true,
            Some(LogFile::Deleted(b)) => listing.names.entry(b).or_default().deleted = true,
            Some(LogFile::Gap(b)) => listing.names.entry(b).or_default().gap = true,
            Some(LogFile::Quarantine(_)) => listing.quarantined.push(dir.join(&name)),
            None => {}
        }
    }
    listing.temporaries.sort();
    listing.quarantined.sort();
    Ok(listing)
}

/// What checking one segment file found.
struct Checked {
    /// `None` for an empty newest file (it only records the next offset).
    segment: Option<SegmentCheck>,
    findings: Vec<Finding>,
    /// Where the segment ends, when that can be trusted (a seal whose MAC
    /// and facts verified, or the intact frames of the newest segment).
    end: Option<u64>,
}

fn check_segment(
    ctx: &LogCtx,
    base: u64,
    is_last: bool,
    state: &mut CheckProgress,
    progress: &mut dyn FnMut(CheckProgress),
) -> Checked {
    let path = ctx.segment_path(base);
    let mut seg = SegmentCheck {
        path: path.clone(),
        base_offset: base,
        segment_id: None,
        kek: None,
        sealed: false,
        seal_mac: None,
        frames: 0,
        records: 0,
        batch_bytes: 0,
        size_bytes: 0,
        intact: false,
    };
    let mut checked = Checked {
        segment: None,
        findings: Vec::new(),
        end: None,
    };
    let file = match files::open(ctx.io.as_ref(), &path, OpenMode::Read, "opening") {
        Ok(f) => f,
        Err(e) => {
            checked.findings.push(Finding::Damaged(e));
            checked.segment = Some(seg);
            return checked;
        }
    };
    let file = file.as_ref();
    let len = match files::file_len(file, &path) {
        Ok(l) => l,
        Err(e) => {
            checked.findings.push(Finding::Damaged(e));
            checked.segment = Some(seg);
            return checked;
        }
    };
    seg.size_bytes = len;
    let header_len = SEGMENT_HEADER_LEN as u64;

    if len <= header_len {
        if !is_last {
            checked
                .findings
                .push(Finding::Damaged(LogError::SealMissing {
                    segment: path,
                    reason: format!(
                        "it holds no frames ({len} bytes) but is not the newest segment"
                    ),
                }));
            checked.segment = Some(seg);
            return checked;
        }
        // The newest file without frames records the next offset. A full
        // header must still belong here (as recovery checks).
        if len == header_len
            && let Ok(h) = read_header(file, &path)
            && let Err(e) = check_header(ctx, &h, base, &path)
        {
            checked.findings.push(Finding::Damaged(e));
            checked.segment = Some(seg);
            return checked;
        }
        checked.end = Some(base);
        return checked;
    }

    let damaged = |e: LogError, checked: &mut Checked| {
        checked.findings.push(Finding::Damaged(e));
    };
    let header = match read_header(file, &path).and_then(|h| {
        check_header(ctx, &h, base, &path)?;
        Ok(h)
    }) {
        Ok(h) => h,
        Err(e) => {
            damaged(e, &mut checked);
            checked.segment = Some(seg);
            return checked;
        }
    };
    seg.segment_id = Some(header.segment_id);
    let envelope = match load_envelope(ctx, &header) {
        Ok(env) => env,
        Err(e) => {
            damaged(e, &mut checked);
            checked.segment = Some(seg);
            return checked;
        }
    };
    seg.kek = Some(envelope.wrapped.kek.clone());
    let seal = match read_seal(file, len, &path) {
        Ok(s) => s,
        Err(e) => {
            damaged(e, &mut checked);
            checked.segment = Some(seg);
            return checked;
        }
    };
    let crypto = match ctx.keys.open(&envelope.context(), &envelope.wrapped) {
        Ok(dek) => SegmentCrypto::new(&dek, &header.segment_id),
        Err(source) => {
            damaged(
                LogError::Key {
                    segment: path,
                    source,
                },
                &mut checked,
            );
            checked.segment = Some(seg);
            return checked;
        }
    };

    match seal {
        Ok(seal) if seal.next_offset > base => {
            let segment = found_segment(&ctx.io, &ctx.dir, header, envelope, Some(seal));
            let mac_ok = match segment.verify_seal(&crypto) {
                Ok(()) => true,
                Err(e) => {
                    damaged(e, &mut checked);
                    false
                }
            };
            let walk = walk(&segment, &crypto, file, seal.frames_end, state, progress);
            walk.record(&mut seg);
            match walk.fault {
                Some(fault) => damaged(fault.into_error(&path), &mut checked),
                None => match seal_facts_problem(&seal, &walk) {
                    Some(reason) => damaged(
                        LogError::SealInvalid {
                            segment: path,
                            reason,
                        },
                        &mut checked,
                    ),
                    None if mac_ok => {
                        seg.sealed = true;
                        seg.seal_mac = Some(seal.mac);
                        checked.end = Some(seal.next_offset);
                    }
                    None => {}
                },
            }
        }
        Ok(seal) => damaged(seal_before_base(path, &seal, base), &mut checked),
        Err(reason) => {
            let segment = found_segment(&ctx.io, &ctx.dir, header, envelope, None);
            let walk = walk(&segment, &crypto, file, len, state, progress);
            walk.record(&mut seg);
            if !is_last {
                damaged(
                    LogError::SealMissing {
                        segment: path,
                        reason: format!(
                            "it has no valid seal at its end ({reason}); its first {} frames \
                             (to byte {}, offset {}) authenticate",
                            walk.frames, walk.position, walk.next
                        ),
                    },
                    &mut checked,
                );
            } else {
                match walk.fault {
                    Some(FrameFault::Io(e)) => damaged(e, &mut checked),
                    Some(FrameFault::Invalid { position, reason }) => {
                        checked.findings.push(Finding::TornTail {
                            segment: path,
                            position,
                            dropped_bytes: len.saturating_sub(position),
                            reason,
                            frames: walk.frames,
                        });
                        checked.end = Some(walk.next);
                    }
                    None => {
                        checked.findings.push(Finding::Unsealed {
                            segment: path,
                            frames: walk.frames,
                        });
                        checked.end = Some(walk.next);
                    }
                }
            }
        }
    }
    checked.segment = Some(seg);
    checked
}

/// The frames of a segment read from its start.
struct Walk {
    frames: u64,
    records: u64,
    batch_bytes: u64,
    max_ts: i64,
    /// Offset after the last intact frame.
    next: u64,
    /// File position after the last intact frame.
    position: u64,
    /// Why reading stopped before the end, if it did.
    fault: Option<FrameFault>,
}

impl Walk {
    fn record(&self, seg: &mut SegmentCheck) {
        seg.frames = self.frames;
        seg.records = self.records;
        seg.batch_bytes = self.batch_bytes;
    }
}

/// Reads and authenticates every frame of `seg` from its start up to file
/// position `end`, stopping at the first that is not intact.
fn walk(
    seg: &Segment,
    crypto: &SegmentCrypto,
    file: &dyn IoFile,
    end: u64,
    state: &mut CheckProgress,
    progress: &mut dyn FnMut(CheckProgress),
) -> Walk {
    let mut frames = 0u64;
    let mut records = 0u64;
    let mut batch_bytes = 0u64;
    let mut max_ts = i64::MIN;
    let walked = walk_frames(seg, crypto, file, end, |frame, _| {
        let batch = match RecordBatch::parse(frame.batch.clone()) {
            Ok(b) => b,
            Err(e) => {
                return ControlFlow::Break(FrameFault::Invalid {
                    position: frame.position,
                    reason: format!("decrypted batch does not parse: {e}"),
                });
            }
        };
        max_ts = max_ts.max(batch.max_timestamp());
        frames = frames.saturating_add(1);
        records = records.saturating_add(u64::from(frame.header.record_count));
        let len = frame.batch.len() as u64;
        batch_bytes = batch_bytes.saturating_add(len);
        state.frames = state.frames.saturating_add(1);
        state.batch_bytes = state.batch_bytes.saturating_add(len);
        progress(*state);
        ControlFlow::Continue(())
    });
    Walk {
        frames,
        records,
        batch_bytes,
        max_ts,
        next: walked.next,
        position: walked.position,
        fault: walked.fault.or(walked.stopped),
    }
}

/// What the seal claims that the frames contradict, if anything.
fn seal_facts_problem(seal: &Seal, walk: &Walk) -> Option<String> {
    if seal.frame_count != walk.frames {
        Some(format!(
            "says {} frames, the segment holds {}",
            seal.frame_count, walk.frames
        ))
    } else if seal.next_offset != walk.next {
        Some(format!(
            "says the segment ends at offset {}, its frames end at {}",
            seal.next_offset, walk.next
        ))
    } else if seal.max_timestamp != walk.max_ts {
        Some("records a largest timestamp its frames do not have".to_owned())
    } else {
        None
    }
}
