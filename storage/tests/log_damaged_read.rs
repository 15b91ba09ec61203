//! Reading around damaged frames: the batches before a damaged frame are
//! returned, a read that starts at it names the offsets that cannot be
//! read, and reading goes on from where the data is readable again.

mod log_support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strongbox_storage::log::{Durability, LogError, PartitionLog};

use log_support::{RawSegment, TestKeys, config, raw_segment, segment_files, sized_batch};

const SEGMENT_BYTES: u64 = 2200;
const T0: i64 = 1_700_000_000_000;
const BATCHES: u8 = 12;

/// A partition of [`BATCHES`] equal batches of two records each, spread
/// over several segments.
struct Fixture {
    root: tempfile::TempDir,
    keys: Arc<TestKeys>,
    expected: Vec<(u64, Bytes)>,
}

impl Fixture {
    /// Written and closed (every segment sealed).
    fn sealed() -> Self {
        let (fx, log) = Self::open_new();
        log.close().expect("close");
        fx
    }

    /// Written and left open: the newest segment is active.
    fn open_new() -> (Self, PartitionLog) {
        let root = tempfile::tempdir().expect("tempdir");
        let keys = TestKeys::new();
        let log = PartitionLog::open(root.path().join("p0"), cfg(), keys.clone()).expect("open");
        for i in 0..BATCHES {
            log.append(&sized_batch(T0 + i64::from(i) * 10, 2, 200, i))
                .expect("append");
        }
        let expected = log.read(0, usize::MAX).expect("read");
        assert_eq!(expected.len(), usize::from(BATCHES));
        let fx = Self {
            root,
            keys,
            expected,
        };
        assert!(fx.segments().len() >= 3, "several segments");
        (fx, log)
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("p0")
    }

    fn open(&self) -> PartitionLog {
        PartitionLog::open(self.dir(), cfg(), self.keys.clone()).expect("the log opens")
    }

    fn segments(&self) -> Vec<PathBuf> {
        segment_files(&self.dir())
    }

    /// The segment at `index` and its raw layout.
    fn segment(&self, index: usize) -> (PathBuf, RawSegment) {
        let path = self.segments()[index].clone();
        let raw = raw_segment(&path).expect("raw segment");
        (path, raw)
    }

    /// The batches from index `from` on.
    fn batches_from(&self, from: usize) -> &[(u64, Bytes)] {
        &self.expected[from..]
    }

    /// Index in `expected` of the batch based at `offset`.
    fn batch_at(&self, offset: u64) -> usize {
        self.expected
            .iter()
            .position(|(base, _)| *base == offset)
            .expect("a batch starts there")
    }
}

fn cfg() -> strongbox_storage::log::LogConfig {
    config(0, SEGMENT_BYTES, Durability::None)
}

/// Flips one bit of the byte at `pos` in place (no truncation, so a log
/// holding the file open sees the change).
fn flip(path: &Path, pos: usize) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, pos as u64).expect("read");
    byte[0] ^= 0x20;
    file.write_all_at(&byte, pos as u64).expect("write");
}

/// Position of a byte in the middle of a frame's ciphertext.
fn ciphertext_byte(raw: &RawSegment, frame: usize) -> usize {
    let f = &raw.frames[frame];
    f.position + 16 + f.len / 2
}

/// Reads from `from` to the end, all in one go.
fn read_all(log: &PartitionLog, from: u64) -> Result<Vec<(u64, Bytes)>, LogError> {
    log.read(from, usize::MAX)
}

fn damaged(e: &LogError) -> (u64, Option<u64>) {
    match e {
        LogError::Damaged { .. } => e.damaged_range().expect("a range"),
        other => panic!("expected a damaged range, got {other}"),
    }
}

#[test]
fn records_before_a_damaged_frame_stay_readable() {
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(1);
    assert!(raw.sealed && raw.frames.len() >= 3, "{raw:?}");
    flip(&path, ciphertext_byte(&raw, 1));
    let bad = raw.frames[1].base_offset;
    let after = raw.frames[2].base_offset;
    let log = fx.open();

    // From the start: every batch before the damaged frame, nothing else.
    let before = read_all(&log, 0).expect("the intact prefix");
    assert_eq!(before[..], fx.expected[..fx.batch_at(bad)]);
    // Small reads get there too, one batch at a time.
    let mut next = 0;
    let mut got = Vec::new();
    while next < bad {
        let batch = log.read(next, 1).expect("one batch");
        next = batch[0].0 + 2;
        got.extend(batch);
    }
    assert_eq!(got, before);

    // Starting at the damaged frame, or inside it: the range is named.
    for from in [bad, bad + 1] {
        let e = read_all(&log, from).expect_err("damaged");
        assert_eq!(damaged(&e), (bad, Some(after)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("offsets {bad}..{after} cannot be read"))
                && text.contains(
                    &path
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .to_string()
                ),
            "{text}"
        );
        assert!(e.is_damage());
    }

    // From the end of the range on, everything else is there, across the
    // following segments.
    let rest = read_all(&log, after).expect("readable again");
    assert_eq!(rest[..], *fx.batches_from(fx.batch_at(after)));
}

#[test]
fn first_frame_of_a_segment_damaged() {
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(1);
    flip(&path, ciphertext_byte(&raw, 0));
    let log = fx.open();
    let base = raw.base_offset;
    let before = read_all(&log, 0).expect("the first segment");
    assert_eq!(before[..], fx.expected[..fx.batch_at(base)]);
    let e = read_all(&log, base).expect_err("damaged");
    assert_eq!(damaged(&e), (base, Some(raw.frames[1].base_offset)));

    // The first frame of the whole log: nothing can be returned before it.
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(0);
    flip(&path, ciphertext_byte(&raw, 0));
    let log = fx.open();
    let e = read_all(&log, 0).expect_err("damaged at once");
    assert_eq!(damaged(&e), (0, Some(raw.frames[1].base_offset)));
    let rest = read_all(&log, raw.frames[1].base_offset).expect("the rest");
    assert_eq!(rest[..], *fx.batches_from(1));
}

#[test]
fn last_frame_of_a_sealed_segment_ends_at_the_next_segment() {
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(1);
    let last = raw.frames.last().expect("frames");
    flip(&path, last.position + 20);
    let (_, next_segment) = fx.segment(2);
    let log = fx.open();
    let e = read_all(&log, last.base_offset).expect_err("damaged");
    assert_eq!(
        damaged(&e),
        (last.base_offset, Some(next_segment.base_offset))
    );
    let rest = read_all(&log, next_segment.base_offset).expect("next segment");
    assert_eq!(
        rest[..],
        *fx.batches_from(fx.batch_at(next_segment.base_offset))
    );
}

#[test]
fn a_damaged_frame_header_is_skipped_with_the_index() {
    // The length field itself is altered: the next frame cannot be found
    // from it, so the next index entry says where reading resumes.
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(1);
    flip(&path, raw.frames[1].position + 2);
    let log = fx.open();
    let bad = raw.frames[1].base_offset;
    let e = read_all(&log, bad).expect_err("damaged");
    let (first, end) = damaged(&e);
    assert_eq!(first, bad);
    let end = end.expect("an index entry after it");
    assert!(
        raw.frames.iter().any(|f| f.base_offset == end) && end > bad,
        "{end} is a frame of the segment after the damage"
    );
    let rest = read_all(&log, end).expect("readable from there");
    assert_eq!(rest[..], *fx.batches_from(fx.batch_at(end)));
    drop(log);

    // Without an index, the range runs to the end of the segment.
    std::fs::remove_file(path.with_extension("index")).expect("remove index");
    let (_, next_segment) = fx.segment(2);
    let log = fx.open();
    let e = read_all(&log, bad).expect_err("damaged");
    assert_eq!(damaged(&e), (bad, Some(next_segment.base_offset)));
}

#[test]
fn a_read_starting_past_the_damage_reads_on() {
    // No index: a read of a later frame scans from the segment start,
    // meets the damage before the offset asked for, and steps over it.
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(1);
    flip(&path, ciphertext_byte(&raw, 1));
    std::fs::remove_file(path.with_extension("index")).expect("remove index");
    let log = fx.open();
    let later = raw.frames[2].base_offset;
    let rest = read_all(&log, later).expect("past the damage");
    assert_eq!(rest[..], *fx.batches_from(fx.batch_at(later)));
    // Inside the batch after the damage, too.
    let rest = read_all(&log, later + 1).expect("past the damage");
    assert_eq!(rest[0].0, later);
}

#[test]
fn damage_in_the_active_segment() {
    let (fx, log) = Fixture::open_new();
    let (path, raw) = fx
        .segments()
        .pop()
        .map(|p| {
            let raw = raw_segment(&p).expect("raw");
            (p, raw)
        })
        .expect("active segment");
    assert!(!raw.sealed && raw.frames.len() >= 2, "{raw:?}");
    // A frame in the middle: the one after it authenticates in place.
    flip(&path, ciphertext_byte(&raw, 0));
    let bad = raw.frames[0].base_offset;
    let after = raw.frames[1].base_offset;
    let before = read_all(&log, 0).expect("the sealed segments");
    assert_eq!(before[..], fx.expected[..fx.batch_at(bad)]);
    let e = read_all(&log, bad).expect_err("damaged");
    assert_eq!(damaged(&e), (bad, Some(after)));
    assert_eq!(
        read_all(&log, after).expect("after it")[..],
        *fx.batches_from(fx.batch_at(after))
    );

    // The newest frame: nothing after it can be located yet.
    let last = raw.frames.last().expect("frames");
    flip(&path, last.position + 16 + last.len / 2);
    let e = read_all(&log, last.base_offset).expect_err("damaged");
    assert_eq!(damaged(&e), (last.base_offset, None));
    assert!(e.to_string().contains("(end unknown)"), "{e}");
    // Writing goes on; a read from before the damage stops at it.
    log.append(&sized_batch(T0 + 1000, 2, 200, 99))
        .expect("append");
    let e = read_all(&log, last.base_offset).expect_err("still damaged");
    assert_eq!(damaged(&e).0, last.base_offset);
    log.close().expect("close");
}

#[test]
fn a_segment_whose_seal_fails_is_damaged_as_a_whole() {
    let fx = Fixture::sealed();
    let (path, raw) = fx.segment(1);
    // Alter the seal's MAC: the segment's keys are refused on first use.
    flip(&path, raw.file_len - 1);
    let (_, next_segment) = fx.segment(2);
    let log = fx.open();
    let before = read_all(&log, 0).expect("the first segment");
    assert_eq!(before[..], fx.expected[..fx.batch_at(raw.base_offset)]);
    let e = read_all(&log, raw.base_offset + 1).expect_err("damaged");
    assert_eq!(
        damaged(&e),
        (raw.base_offset, Some(next_segment.base_offset))
    );
    let rest = read_all(&log, next_segment.base_offset).expect("next segment");
    assert_eq!(
        rest[..],
        *fx.batches_from(fx.batch_at(next_segment.base_offset))
    );
}
