//! A read-only reader of one partition directory: the decrypted record
//! batches of a stopped broker's log, for `strongbox-broker inspect`.
//!
//! [`PartitionLog::open`](super::PartitionLog::open) recovers the directory
//! (cuts a torn tail, seals the newest segment, may make a new one) and so
//! writes to it. An operator looking at what the broker stored must not
//! change it, so [`scan_dir`] opens every file read-only and applies the
//! same checks as a read of the live log: each segment's header belongs to
//! this topic and partition, its key envelope belongs to the segment and
//! the topic's key scope, a rolled segment's seal verifies under its data
//! key, and every frame authenticates with the AAD of its place. A segment
//! that ends before the first wanted offset is skipped without unwrapping
//! its key.
//!
//! The newest segment may end in a torn tail (a crash mid-append): the scan
//! stops there and says so in [`Scanned::torn_tail`], as the broker's next
//! start would cut it off. Any other damage is an error naming the file.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use strongbox_protocol::batch::RecordBatch;

use crate::io::{OpenMode, default_io};
use crate::keys::SegmentKeys;

use super::config::{LogConfig, SystemClock};
use super::error::LogError;
use super::files;
use super::format::{LogFile, SEGMENT_HEADER_LEN, parse_file_name};
use super::offline::{found_segment, read_header, seal_before_base, walk_frames};
use super::recovery::{check_header, load_envelope, read_seal};
use super::segment::{FrameFault, LogCtx, SegmentCrypto};

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Batches handed to the visitor.
    pub batches: u64,
    /// The offset after the last intact record read (where the scan would
    /// go on).
    pub next_offset: u64,
    /// True when the visitor asked to stop before the end.
    pub stopped_early: bool,
    /// Why the newest segment's last bytes are not a frame, when they are
    /// not: a torn tail the broker's next start cuts off.
    pub torn_tail: Option<String>,
}

/// Reads the batches of the partition directory `dir` that hold offsets at
/// or after `from_offset`, oldest first, and hands each to `visit` with its
/// base offset; `visit` returns false to stop. Nothing in `dir` is
/// changed, and `keys` is only asked to open data keys.
///
/// `config` is the partition's log configuration (its topic id, partition
/// and key scope are what the files must match).
///
/// # Errors
///
/// The first damaged segment, envelope, seal or frame, a data key that
/// cannot be unwrapped, or an I/O error, each naming the file.
pub fn scan_dir(
    dir: &Path,
    config: &LogConfig,
    keys: Arc<dyn SegmentKeys>,
    from_offset: u64,
    visit: &mut dyn FnMut(u64, RecordBatch) -> bool,
) -> Result<Scanned, LogError> {
    let ctx = LogCtx {
        dir: Arc::new(dir.to_path_buf()),
        config: config.clone().validate()?,
        keys,
        encrypted: true,
        clock: Arc::new(SystemClock),
        io: default_io(),
        indexes: super::index::IndexCache::default(),
    };
    let bases = segment_bases(&ctx)?;
    let mut out = Scanned {
        batches: 0,
        next_offset: bases.first().copied().unwrap_or(0),
        stopped_early: false,
        torn_tail: None,
    };
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i.saturating_add(1)).copied();
        // Everything in this segment is before what was asked for.
        if next_base.is_some_and(|n| n <= from_offset) {
            out.next_offset = next_base.unwrap_or(base);
            continue;
        }
        let keep_going = scan_segment(
            &ctx,
            base,
            next_base.is_none(),
            from_offset,
            &mut out,
            visit,
        )?;
        if !keep_going {
            out.stopped_early = true;
            break;
        }
    }
    Ok(out)
}

/// The base offsets of the segment files in `dir`, oldest first; segments
/// whose deletion is under way are left out.
fn segment_bases(ctx: &LogCtx) -> Result<Vec<u64>, LogError> {
    let mut segments = std::collections::BTreeSet::new();
    let mut deleted = std::collections::BTreeSet::new();
    for name in files::list(ctx.io.as_ref(), &ctx.dir)? {
        match parse_file_name(&name) {
            Some(LogFile::Segment(b)) => {
                segments.insert(b);
            }
            Some(LogFile::Deleted(b)) => {
                deleted.insert(b);
            }
            _ => {}
        }
    }
    Ok(segments.difference(&deleted).copied().collect())
}

/// Reads one segment; returns false when the visitor asked to stop.
fn scan_segment(
    ctx: &LogCtx,
    base: u64,
    is_last: bool,
    from_offset: u64,
    out: &mut Scanned,
    visit: &mut dyn FnMut(u64, RecordBatch) -> bool,
) -> Result<bool, LogError> {
    let path = ctx.segment_path(base);
    let file = files::open(ctx.io.as_ref(), &path, OpenMode::Read, "opening")?;
    let file = file.as_ref();
    let len = files::file_len(file, &path)?;
    let header_len = SEGMENT_HEADER_LEN as u64;
    if len <= header_len {
        if is_last {
            // The newest file without frames only records the next offset.
            out.next_offset = base;
            return Ok(true);
        }
        return Err(LogError::SealMissing {
            segment: path,
            reason: format!("it holds no frames ({len} bytes) but is not the newest segment"),
        });
    }
    let header = read_header(file, &path)?;
    check_header(ctx, &header, base, &path)?;
    let envelope = load_envelope(ctx, &header)?;
    let dek = ctx
        .keys
        .open(&envelope.context(), &envelope.wrapped)
        .map_err(|source| LogError::Key {
            segment: path.clone(),
            source,
        })?;
    let crypto = SegmentCrypto::new(&dek, &header.segment_id);
    drop(dek);

    let (segment, end) = match read_seal(file, len, &path)? {
        Ok(seal) if seal.next_offset > base => {
            let segment = found_segment(&ctx.io, &ctx.dir, header, envelope, Some(seal));
            segment.verify_seal(&crypto)?;
            (segment, seal.frames_end)
        }
        Ok(seal) => return Err(seal_before_base(path, &seal, base)),
        Err(reason) if !is_last => {
            return Err(LogError::SealMissing {
                segment: path,
                reason: format!("it has no valid seal at its end ({reason})"),
            });
        }
        Err(_) => (
            found_segment(&ctx.io, &ctx.dir, header, envelope, None),
            len,
        ),
    };

    let walk = walk_frames(&segment, &crypto, file, end, |frame, next| {
        out.next_offset = next;
        if next <= from_offset {
            return ControlFlow::Continue(());
        }
        let batch = match RecordBatch::parse(frame.batch) {
            Ok(b) => b,
            Err(e) => {
                return ControlFlow::Break(Err(LogError::CorruptFrame {
                    segment: path.clone(),
                    position: frame.position,
                    reason: format!("decrypted batch does not parse: {e}"),
                }));
            }
        };
        out.batches = out.batches.saturating_add(1);
        if visit(frame.header.base_offset, batch) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(Ok(false))
        }
    });
    if let Some(stopped) = walk.stopped {
        return stopped;
    }
    match walk.fault {
        None => Ok(true),
        Some(FrameFault::Invalid { position, reason })
            if is_last && segment.seal.get().is_none() =>
        {
            out.torn_tail = Some(format!(
                "{} bytes at byte {position} of {} are not an intact frame ({reason})",
                end.saturating_sub(position),
                path.display()
            ));
            Ok(true)
        }
        Some(fault) => Err(fault.into_error(&path)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use strongbox_protocol::batch::BatchBuilder;

    use super::*;
    use crate::keys::{FileKeyProvider, KekScope, KeyManager};
    use crate::log::{Durability, PartitionLog};
    use crate::meta::MetaStore;

    fn batch(first: u32, n: u32) -> RecordBatch {
        let mut b = BatchBuilder::new(1_700_000_000_000);
        for i in first..first + n {
            b.push(
                1_700_000_000_000 + i64::from(i),
                None,
                &[],
                format!("value-{i}").as_bytes(),
            )
            .expect("push");
        }
        RecordBatch::parse(b.finish().expect("finish")).expect("parse")
    }

    /// Keys under `root`, and the directory and configuration of partition
    /// 0 of topic `[topic; 16]`, synced on every append.
    fn partition(root: &Path, topic: u8) -> (Arc<KeyManager>, PathBuf, LogConfig) {
        let provider = FileKeyProvider::open(root.join("keys")).expect("provider");
        let meta = MetaStore::open(root.join("meta.redb")).expect("meta");
        let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 16));
        let mut config = LogConfig::new([topic; 16], 0, KekScope::Broker);
        config.durability = Durability::Fsync;
        (keys, root.join("p0"), config)
    }

    fn append(log: &PartitionLog, b: &RecordBatch) {
        log.append(b)
            .expect("append")
            .durable
            .wait()
            .expect("durable");
    }

    /// Every file of `dir` with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read"),
                )
            })
            .collect()
    }

    fn values(batches: &[(u64, RecordBatch)]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|(_, b)| {
                b.records()
                    .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn reads_every_segment_read_only_and_from_an_offset() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (keys, dir, config) = partition(tmp.path(), 3);
        let log = PartitionLog::open(&dir, config.clone(), keys.clone()).expect("open");
        append(&log, &batch(0, 2));
        log.roll().expect("roll");
        append(&log, &batch(2, 3));
        append(&log, &batch(5, 1));
        drop(log);

        let before = snapshot(&dir);
        let mut seen = Vec::new();
        let all = scan_dir(&dir, &config, keys.clone(), 0, &mut |base, b| {
            seen.push((base, b));
            true
        })
        .expect("scan");
        assert_eq!(all.batches, 3);
        assert_eq!(all.next_offset, 6);
        assert_eq!(all.torn_tail, None);
        assert_eq!(
            values(&seen),
            (0..6).map(|i| format!("value-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(snapshot(&dir), before, "the scan changed the directory");

        // From offset 3: the first segment is skipped, the batch holding 3
        // (base 2) is the first one seen.
        let mut seen = Vec::new();
        scan_dir(&dir, &config, keys.clone(), 3, &mut |base, b| {
            seen.push((base, b));
            true
        })
        .expect("scan");
        assert_eq!(seen.iter().map(|(b, _)| *b).collect::<Vec<_>>(), vec![2, 5]);

        // The visitor can stop.
        let stopped = scan_dir(&dir, &config, keys, 0, &mut |_, _| false).expect("scan");
        assert!(stopped.stopped_early);
        assert_eq!(stopped.batches, 1);
    }

    #[test]
    fn an_altered_frame_is_an_error_and_a_torn_tail_is_reported() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (keys, dir, config) = partition(tmp.path(), 4);
        let log = PartitionLog::open(&dir, config.clone(), keys.clone()).expect("open");
        append(&log, &batch(0, 2));
        append(&log, &batch(2, 2));
        drop(log);
        let segment = dir.join(super::super::format::segment_file_name(0));
        let original = std::fs::read(&segment).expect("read");

        // A torn tail on the newest, unsealed segment: the intact frames
        // are read and the tail is reported.
        let mut torn = original.clone();
        torn.extend_from_slice(&[0xAB; 7]);
        std::fs::write(&segment, &torn).expect("write");
        let mut n = 0;
        let scanned = scan_dir(&dir, &config, keys.clone(), 0, &mut |_, _| {
            n += 1;
            true
        })
        .expect("scan");
        assert_eq!(n, 2);
        assert!(scanned.torn_tail.is_some(), "{scanned:?}");

        // A flipped byte in a frame of a sealed segment is damage, not a
        // tail.
        std::fs::write(&segment, &original).expect("write");
        let log = PartitionLog::open(&dir, config.clone(), keys.clone()).expect("open");
        log.roll().expect("roll");
        append(&log, &batch(4, 1));
        drop(log);
        let mut flipped = std::fs::read(&segment).expect("read");
        let at = SEGMENT_HEADER_LEN + 40;
        flipped[at] ^= 1;
        std::fs::write(&segment, &flipped).expect("write");
        let err = scan_dir(&dir, &config, keys, 0, &mut |_, _| true).expect_err("damaged");
        assert!(matches!(err, LogError::CorruptFrame { .. }), "{err}");
        assert!(
            err.to_string().contains("00000000000000000000.log"),
            "{err}"
        );
    }
}
