//! Tamper tests: each alteration of a partition's files is detected with a
//! precise error naming the file, and the other partition, sharing the same
//! key manager, opens, verifies and reads as before.

mod log_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strongbox_storage::log::format::{SEAL_LEN, Seal, SegmentHeader};
use strongbox_storage::log::{Durability, LogError, PartitionLog};

use log_support::{RawSegment, TestKeys, config, raw_segment, segment_files, sized_batch};

const SEGMENT_BYTES: u64 = 2200;
const T0: i64 = 1_700_000_000_000;

struct Fixture {
    root: tempfile::TempDir,
    keys: Arc<TestKeys>,
    expected: Vec<Vec<(u64, Bytes)>>,
}

impl Fixture {
    /// Two partitions of one topic, 12 equal-sized batches each (so frames
    /// can be swapped), 4 segments, cleanly closed.
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let keys = TestKeys::new();
        let mut expected = Vec::new();
        for p in 0..2u32 {
            let log = PartitionLog::open(root.path().join(format!("p{p}")), cfg(p), keys.clone())
                .expect("open");
            for i in 0..12u8 {
                log.append(&sized_batch(T0 + i64::from(i) * 10, 2, 200, i))
                    .expect("append");
            }
            let all = log.read(0, usize::MAX).expect("read");
            assert_eq!(all.len(), 12);
            expected.push(all);
            log.close().expect("close");
        }
        let fx = Self {
            root,
            keys,
            expected,
        };
        assert!(fx.segments(0).len() >= 4, "several segments to tamper with");
        fx
    }

    fn dir(&self, p: u32) -> PathBuf {
        self.root.path().join(format!("p{p}"))
    }

    fn open(&self, p: u32) -> Result<PartitionLog, LogError> {
        PartitionLog::open(self.dir(p), cfg(p), self.keys.clone())
    }

    fn segments(&self, p: u32) -> Vec<PathBuf> {
        segment_files(&self.dir(p))
    }

    /// The second segment of partition 0: sealed, with segments on both
    /// sides.
    fn victim(&self) -> (PathBuf, RawSegment) {
        let path = self.segments(0)[1].clone();
        let raw = raw_segment(&path).expect("raw segment");
        assert!(raw.sealed && raw.frames.len() >= 3, "{raw:?}");
        (path, raw)
    }

    /// Partition 1 is untouched by whatever happened to partition 0.
    fn other_partition_unaffected(&self) {
        let log = self.open(1).expect("partition 1 opens");
        log.verify().expect("partition 1 verifies");
        assert_eq!(
            log.read(0, usize::MAX).expect("partition 1 reads"),
            self.expected[1]
        );
        log.close().expect("close");
    }
}

fn cfg(p: u32) -> strongbox_storage::log::LogConfig {
    config(p, SEGMENT_BYTES, Durability::None)
}

fn key_path(segment: &Path) -> PathBuf {
    segment.with_extension("key")
}

fn write_at(path: &Path, pos: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).expect("read");
    data[pos..pos + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).expect("write");
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

/// The error must name `file`.
fn names(e: &LogError, file: &Path) {
    assert!(
        e.to_string().contains(&file_name(file)),
        "error does not name {}: {e}",
        file.display()
    );
}

/// Opening works, but verifying fails with `check`'s error. Reading from
/// the start returns exactly the intact batches before the damage, and a
/// read that starts at the first batch it could not return fails: with
/// [`LogError::Damaged`] starting there, or (a key that cannot be
/// unwrapped) with `check`'s error.
fn detected_on_read(fx: &Fixture, victim: &Path, base: u64, check: impl Fn(&LogError)) {
    let log = fx.open(0).expect("structure is intact, so the log opens");
    let e = log.verify().expect_err("verify detects it");
    check(&e);
    names(&e, victim);
    let before = log
        .read(0, usize::MAX)
        .expect("the batches before the damage are readable");
    let all = &fx.expected[0];
    assert!(
        !before.is_empty() && before.len() < all.len(),
        "{} of {} batches",
        before.len(),
        all.len()
    );
    assert_eq!(before[..], all[..before.len()]);
    let next = all[before.len()].0;
    assert!(next >= base, "the damage is in the victim segment");
    let e = log
        .read(next, usize::MAX)
        .expect_err("a read starting at the damage reports it");
    match &e {
        LogError::Damaged { first, .. } => assert_eq!(*first, next, "{e}"),
        other => check(other),
    }
    names(&e, victim);
    // The segment before it is still readable on its own.
    let first = log.read(0, 1).expect("first segment reads");
    assert_eq!(first[0], fx.expected[0][0]);
    drop(log);
    fx.other_partition_unaffected();
}

fn detected_on_open(fx: &Fixture, victim: &Path, check: impl Fn(&LogError)) {
    let e = fx.open(0).expect_err("opening detects it");
    check(&e);
    names(&e, victim);
    fx.other_partition_unaffected();
}

#[test]
fn flipped_byte_in_a_frame() {
    for at in [16 + 5, 16 + 300, 0x10 - 1] {
        let fx = Fixture::new();
        let (path, raw) = fx.victim();
        let frame = &raw.frames[1];
        let pos = frame.position + at.min(frame.len + 15);
        let mut byte = [std::fs::read(&path).expect("read")[pos]];
        byte[0] ^= 0x20;
        write_at(&path, pos, &byte);
        detected_on_read(&fx, &path, raw.base_offset, |e| {
            assert!(matches!(e, LogError::CorruptFrame { .. }), "{e}");
        });
    }
}

#[test]
fn two_frames_swapped() {
    for (a, b) in [(0usize, 1usize), (1, 2)] {
        let fx = Fixture::new();
        let (path, raw) = fx.victim();
        let (fa, fb) = (&raw.frames[a], &raw.frames[b]);
        assert_eq!(fa.len, fb.len, "equal frames");
        write_at(&path, fa.position, &fb.bytes);
        write_at(&path, fb.position, &fa.bytes);
        detected_on_read(&fx, &path, raw.base_offset, |e| {
            assert!(
                matches!(e, LogError::CorruptFrame { reason, .. } if reason.contains("where offset")),
                "{e}"
            );
        });
    }
}

#[test]
fn frame_moved_from_another_segment() {
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    let donor = raw_segment(&fx.segments(0)[0]).expect("donor");
    // Same length; give it the header of the frame it replaces so only
    // the cryptographic binding can tell.
    let target = &raw.frames[1];
    let mut moved = donor.frames[1].bytes.to_vec();
    assert_eq!(moved.len(), target.bytes.len());
    moved[..16].copy_from_slice(&target.bytes[..16]);
    write_at(&path, target.position, &moved);
    detected_on_read(&fx, &path, raw.base_offset, |e| {
        assert!(
            matches!(e, LogError::CorruptFrame { reason, .. } if reason.contains("authentication")),
            "{e}"
        );
    });
}

#[test]
fn frame_moved_from_another_partition() {
    // Partition 1 has the same offsets and sizes: its frame at the same
    // position has the very same plaintext header.
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    let donor = raw_segment(&fx.segments(1)[1]).expect("donor");
    let target = &raw.frames[2];
    let moved = &donor.frames[2];
    assert_eq!(moved.bytes[..16], target.bytes[..16]);
    write_at(&path, target.position, &moved.bytes);
    detected_on_read(&fx, &path, raw.base_offset, |e| {
        assert!(matches!(e, LogError::CorruptFrame { .. }), "{e}");
    });
}

#[test]
fn segment_copied_into_another_partition() {
    let fx = Fixture::new();
    let victim = fx.segments(0)[1].clone();
    let donor = fx.segments(1)[1].clone();
    std::fs::copy(&donor, &victim).expect("copy log");
    std::fs::copy(key_path(&donor), key_path(&victim)).expect("copy key");
    detected_on_open(&fx, &victim, |e| {
        assert!(
            matches!(
                e,
                LogError::ForeignSegment {
                    partition: 0,
                    found_partition: 1,
                    ..
                }
            ),
            "{e}"
        );
    });
}

#[test]
fn segment_copied_with_its_header_rewritten() {
    // The attacker also rewrites the partition in the header (with a
    // valid CRC): the envelope still names the other partition.
    let fx = Fixture::new();
    let victim = fx.segments(0)[1].clone();
    let donor = fx.segments(1)[1].clone();
    std::fs::copy(&donor, &victim).expect("copy log");
    std::fs::copy(key_path(&donor), key_path(&victim)).expect("copy key");
    rewrite_header_partition(&victim, 0);
    detected_on_open(&fx, &victim, |e| {
        assert!(matches!(e, LogError::EnvelopeMismatch { .. }), "{e}");
    });

    // ... and the envelope too (valid CRC): now the seal and every frame's
    // AAD disagree with the header.
    let fx = Fixture::new();
    let victim = fx.segments(0)[1].clone();
    let donor = fx.segments(1)[1].clone();
    let raw = raw_segment(&victim).expect("raw");
    std::fs::copy(&donor, &victim).expect("copy log");
    std::fs::copy(key_path(&donor), key_path(&victim)).expect("copy key");
    rewrite_header_partition(&victim, 0);
    let mut env = strongbox_storage::log::envelope::KeyEnvelope::decode(
        &std::fs::read(key_path(&victim)).expect("read key"),
    )
    .expect("decode");
    env.partition = 0;
    std::fs::write(key_path(&victim), env.encode().expect("encode")).expect("write key");
    detected_on_read(&fx, &victim, raw.base_offset, |e| {
        assert!(
            matches!(
                e,
                LogError::SealInvalid { .. } | LogError::CorruptFrame { .. }
            ),
            "{e}"
        );
    });
}

fn rewrite_header_partition(path: &Path, partition: u32) {
    let data = std::fs::read(path).expect("read");
    let mut h = SegmentHeader::decode(&data[..64]).expect("header");
    h.partition = partition;
    write_at(path, 0, &h.encode());
}

#[test]
fn sealed_segment_truncated() {
    // Seal removed, at a frame boundary.
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(raw.frames_end as u64))
        .expect("cut");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::SealMissing { .. }), "{e}");
    });

    // Cut in the middle of a frame.
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    let cut = raw.frames[1].position + 40;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(cut as u64))
        .expect("cut");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::SealMissing { .. }), "{e}");
    });

    // Last frame removed and the old seal put back at the new end.
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    let data = std::fs::read(&path).expect("read");
    let last = raw.frames.last().expect("frame");
    let mut cut = data[..last.position].to_vec();
    cut.extend_from_slice(&data[data.len() - SEAL_LEN..]);
    std::fs::write(&path, cut).expect("write");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::SealMissing { .. }), "{e}");
    });

    // Last frame removed and a seal forged to match the new length (the
    // attacker cannot make its MAC).
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    let data = std::fs::read(&path).expect("read");
    let last = raw.frames.last().expect("frame");
    let old = Seal::decode(&data[data.len() - SEAL_LEN..]).expect("seal");
    let forged = Seal {
        frame_count: old.frame_count - 1,
        frames_end: last.position as u64,
        ..old
    };
    let mut cut = data[..last.position].to_vec();
    cut.extend_from_slice(&forged.encode());
    std::fs::write(&path, cut).expect("write");
    detected_on_read(&fx, &path, raw.base_offset, |e| {
        assert!(matches!(e, LogError::SealInvalid { .. }), "{e}");
    });
}

#[test]
fn seal_facts_altered() {
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    let data = std::fs::read(&path).expect("read");
    let at = data.len() - SEAL_LEN;
    let mut seal = Seal::decode(&data[at..]).expect("seal");
    seal.max_timestamp -= 1_000_000;
    write_at(&path, at, &seal.encode());
    let log = fx.open(0).expect("opens");
    let e = log
        .offset_for_timestamp(T0 + 45)
        .expect_err("time lookups do not trust an unverified seal");
    assert!(matches!(e, LogError::SealInvalid { .. }), "{e}");
    names(&e, &path);
    drop(log);
    fx.other_partition_unaffected();
}

#[test]
fn segment_removed_from_the_middle() {
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    std::fs::remove_file(&path).expect("remove");
    std::fs::remove_file(key_path(&path)).expect("remove key");
    let segments = fx.segments(0);
    let base_of = |p: &Path| -> u64 {
        file_name(p)
            .trim_end_matches(".log")
            .parse()
            .expect("a segment name")
    };
    let (lost, next) = (base_of(&path), base_of(&segments[1]));
    // The log opens, so what is left stays readable; the lost offsets are
    // recorded as missing, not accepted.
    let log = fx.open(0).expect("the log opens around the gap");
    assert_eq!(log.missing_ranges(), vec![(lost, next)]);
    assert!(log.gaps().is_empty());
    let e = log.verify().expect_err("a gap is detected");
    assert!(matches!(e, LogError::Gap { .. }), "{e}");
    names(&e, &segments[0]);
    let all = &fx.expected[0];
    let before = log.read(0, usize::MAX).expect("the records before");
    assert_eq!(
        before[..],
        all.iter()
            .filter(|(o, _)| *o < lost)
            .cloned()
            .collect::<Vec<_>>()[..]
    );
    let e = log
        .read(lost, usize::MAX)
        .expect_err("a read of the lost offsets");
    assert_eq!(e.damaged_range(), Some((lost, Some(next))), "{e}");
    let after = log.read(next, usize::MAX).expect("the records after");
    assert_eq!(after.first(), all.iter().find(|(o, _)| *o == next));
    drop(log);
    fx.other_partition_unaffected();
}

#[test]
fn envelope_deleted() {
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    std::fs::remove_file(key_path(&path)).expect("remove");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::EnvelopeMissing { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot open segment ")
                && msg.ends_with(
                    ": key envelope missing (restore it from backup or run strongbox-broker verify)"
                ),
            "{msg}"
        );
    });

    // The newest segment's envelope too.
    let fx = Fixture::new();
    let newest = fx.segments(0).pop().expect("newest");
    std::fs::remove_file(key_path(&newest)).expect("remove");
    detected_on_open(&fx, &newest, |e| {
        assert!(matches!(e, LogError::EnvelopeMissing { .. }), "{e}");
    });
}

#[test]
fn envelope_emptied() {
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    std::fs::write(key_path(&path), b"").expect("empty");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::EnvelopeEmpty { .. }), "{e}");
    });
}

#[test]
fn envelope_corrupted() {
    // A flipped byte: the envelope's CRC catches it on open.
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    let key = key_path(&path);
    let mut data = std::fs::read(&key).expect("read");
    let n = data.len();
    data[n - 10] ^= 0x01;
    std::fs::write(&key, data).expect("write");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::EnvelopeCorrupt { .. }), "{e}");
    });

    // A wrapped key altered with the CRC recomputed: the key wrap's own
    // integrity check rejects it when the key is first needed.
    let fx = Fixture::new();
    let (path, raw) = fx.victim();
    let key = key_path(&path);
    let mut env =
        strongbox_storage::log::envelope::KeyEnvelope::decode(&std::fs::read(&key).expect("read"))
            .expect("decode");
    env.wrapped.wrapped[7] ^= 0x80;
    std::fs::write(&key, env.encode().expect("encode")).expect("write");
    detected_on_read(&fx, &path, raw.base_offset, |e| {
        assert!(matches!(e, LogError::Key { .. }), "{e}");
    });

    // Another segment's envelope put in its place.
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    let other = fx.segments(0)[2].clone();
    std::fs::copy(key_path(&other), key_path(&path)).expect("copy");
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::EnvelopeMismatch { .. }), "{e}");
    });
}

#[test]
fn header_damaged() {
    let fx = Fixture::new();
    let (path, _) = fx.victim();
    write_at(&path, 50, &[0xFF]);
    detected_on_open(&fx, &path, |e| {
        assert!(matches!(e, LogError::CorruptHeader { .. }), "{e}");
    });
}
