//! The read-only check of a partition directory (`check_dir`, what
//! `strongbox-broker verify` runs): it reports every damaged segment, not
//! just the first, goes on checking the others, and changes nothing, not
//! even where opening the log would repair.

mod log_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strongbox_storage::keys::SegmentKeys;
use strongbox_storage::log::{
    CheckProgress, DirCheck, Durability, Finding, LogError, PartitionLog, check_dir,
};

use log_support::{TestKeys, config, raw_segment, segment_files, sized_batch};

const SEGMENT_BYTES: u64 = 2200;
const T0: i64 = 1_700_000_000_000;
const BATCHES: u8 = 12;

/// A partition with 12 batches of 2 records in at least 4 segments.
/// `close`: sealed on a clean stop; otherwise dropped as in a crash, which
/// leaves the newest segment unsealed.
fn partition(dir: &Path, keys: &Arc<TestKeys>, close: bool) {
    let log = PartitionLog::open(
        dir,
        config(0, SEGMENT_BYTES, Durability::None),
        keys.clone(),
    )
    .expect("open");
    for i in 0..BATCHES {
        log.append(&sized_batch(T0 + i64::from(i) * 10, 2, 200, i))
            .expect("append");
    }
    if close {
        log.close().expect("close");
    } else {
        drop(log);
    }
    assert!(segment_files(dir).len() >= 4, "several segments");
}

fn check(dir: &Path, keys: &Arc<TestKeys>) -> (DirCheck, Vec<CheckProgress>) {
    let mut seen = Vec::new();
    let keys: Arc<dyn SegmentKeys> = keys.clone();
    let report = check_dir(
        dir,
        &config(0, SEGMENT_BYTES, Durability::None),
        keys,
        &mut |p| seen.push(p),
    );
    (report, seen)
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let p = e.expect("entry").path();
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

fn problems(report: &DirCheck) -> Vec<&Finding> {
    report.findings.iter().filter(|f| f.is_problem()).collect()
}

fn names(finding: &Finding, file: &Path) {
    let name = file.file_name().expect("name").to_string_lossy();
    assert!(
        finding.to_string().contains(name.as_ref()),
        "{finding} does not name {name}"
    );
}

#[test]
fn a_clean_log_has_no_findings() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, true);
    let (report, progress) = check(&dir, &keys);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(report.is_intact());
    assert_eq!(report.segments.len(), segment_files(&dir).len());
    assert!(report.segments.iter().all(|s| s.sealed && s.intact));
    assert_eq!(
        report.segments.iter().map(|s| s.frames).sum::<u64>(),
        u64::from(BATCHES)
    );
    assert_eq!(
        report.segments.iter().map(|s| s.records).sum::<u64>(),
        2 * u64::from(BATCHES)
    );
    assert!(report.segments.iter().all(|s| s.kek.is_some()));
    assert_eq!(report.end_offset, Some(2 * u64::from(BATCHES)));
    let last = progress.last().expect("progress reported");
    assert_eq!(last.frames, u64::from(BATCHES));
    assert_eq!(last.segments_done, report.segments.len());
}

#[test]
fn every_damaged_segment_is_reported_and_the_others_checked() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, true);
    let segs = segment_files(&dir);
    // A flipped ciphertext byte in the second segment's second frame.
    let raw = raw_segment(&segs[1]).expect("raw");
    let mut data = std::fs::read(&segs[1]).expect("read");
    data[raw.frames[1].position + 40] ^= 0x01;
    std::fs::write(&segs[1], data).expect("write");
    // The third segment's key envelope is gone.
    std::fs::remove_file(segs[2].with_extension("key")).expect("remove envelope");

    let (report, _) = check(&dir, &keys);
    let found = problems(&report);
    assert_eq!(found.len(), 2, "{:?}", report.findings);
    assert!(
        matches!(found[0], Finding::Damaged(LogError::CorruptFrame { segment, position, .. })
            if *segment == segs[1] && *position == raw.frames[1].position as u64),
        "{}",
        found[0]
    );
    names(found[0], &segs[1]);
    assert!(
        matches!(found[1], Finding::Damaged(LogError::EnvelopeMissing { segment }) if *segment == segs[2]),
        "{}",
        found[1]
    );
    // The other segments were authenticated all the same.
    for (i, s) in report.segments.iter().enumerate() {
        assert_eq!(s.intact, i != 1 && i != 2, "segment {i}: {s:?}");
    }
    assert_eq!(report.segments[1].frames, 1, "the frame before the bad one");
    assert!(report.segments[3].frames > 0 && report.segments[3].sealed);
}

#[test]
fn a_cut_sealed_segment_is_reported_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, true);
    let segs = segment_files(&dir);
    let raw = raw_segment(&segs[1]).expect("raw");
    let cut = raw.frames[1].position + 30;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .expect("open");
    file.set_len(cut as u64).expect("truncate");

    let (report, _) = check(&dir, &keys);
    let found = problems(&report);
    assert_eq!(found.len(), 1, "no gap noise: {:?}", report.findings);
    assert!(
        matches!(found[0], Finding::Damaged(LogError::SealMissing { segment, .. }) if *segment == segs[1]),
        "{}",
        found[0]
    );
    assert!(
        found[0].to_string().contains("first 1 frames"),
        "{}",
        found[0]
    );
}

#[test]
fn changes_nothing_where_opening_would_repair() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, false);
    let newest = segment_files(&dir).pop().expect("newest");
    // A torn write after the last frame, a temporary envelope and an index
    // without a segment: all things recovery cleans up.
    let mut data = std::fs::read(&newest).expect("read");
    let intact_len = data.len() as u64;
    data.extend_from_slice(&[0x00, 0x00, 0x01, 0x00, 0xAB, 0xCD]);
    std::fs::write(&newest, data).expect("write");
    std::fs::write(dir.join("00000000000000999999.key.tmp"), b"partial").expect("tmp");
    std::fs::write(dir.join("00000000000000888888.index"), [0u8; 24]).expect("index");
    let before = snapshot(&dir);

    let (report, _) = check(&dir, &keys);
    assert_eq!(snapshot(&dir), before, "the check wrote nothing");
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{:?}", report.findings);
    match found[0] {
        Finding::TornTail {
            segment,
            position,
            dropped_bytes,
            ..
        } => {
            assert_eq!(*segment, newest);
            assert_eq!(*position, intact_len);
            assert_eq!(*dropped_bytes, 6);
        }
        other => panic!("expected a torn tail, got {other}"),
    }
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::TemporaryFile { .. }))
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::OrphanIndex { .. }))
    );
    assert_eq!(report.end_offset, Some(2 * u64::from(BATCHES)));

    // Opening the log repairs what the check only reported.
    let log = PartitionLog::open(
        &dir,
        config(0, SEGMENT_BYTES, Durability::None),
        keys.clone(),
    )
    .expect("open recovers");
    drop(log);
    assert_ne!(snapshot(&dir), before);
}

#[test]
fn an_unsealed_but_intact_newest_segment_is_not_a_problem() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, false);
    let (report, _) = check(&dir, &keys);
    assert!(report.is_intact(), "{:?}", report.findings);
    assert!(
        matches!(report.findings.as_slice(), [Finding::Unsealed { frames, .. }] if *frames > 0),
        "{:?}",
        report.findings
    );
    assert_eq!(report.end_offset, Some(2 * u64::from(BATCHES)));
}

#[test]
fn an_envelope_without_its_segment_is_a_problem() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, true);
    let oldest = segment_files(&dir).remove(0);
    // The oldest segment removed as retention never would: data first.
    std::fs::remove_file(&oldest).expect("remove");
    let (report, _) = check(&dir, &keys);
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{:?}", report.findings);
    assert!(
        matches!(found[0], Finding::OrphanEnvelope { envelope } if *envelope == oldest.with_extension("key")),
        "{}",
        found[0]
    );
}

#[test]
fn segments_under_another_key_fail_to_unwrap_and_nothing_else_is_claimed() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let dir = root.path().join("p0");
    partition(&dir, &keys, true);
    let (report, _) = check(&dir, &TestKeys::new());
    let found = problems(&report);
    assert_eq!(found.len(), report.segments.len(), "{:?}", report.findings);
    assert!(
        found
            .iter()
            .all(|f| matches!(f, Finding::Damaged(LogError::Key { .. })))
    );
    assert!(report.segments.iter().all(|s| s.frames == 0 && !s.sealed));
    // Without trusted seals, no end offset and no gap is claimed.
    assert_eq!(report.end_offset, None);
}
