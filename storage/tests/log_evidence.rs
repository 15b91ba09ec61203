//! Evidence is kept and offsets move only forward: a torn tail cut at
//! recovery is kept in a quarantine file (and reported by the offline
//! check); a log moved past lost offsets continues after them, reads
//! across the gap, and records the gap durably; a key registered for a
//! segment whose creation a crash interrupted is forgotten.

mod log_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strongbox_storage::io::{Fault, FaultRule, FaultyIo, IoOp, PathMatch, StorageIo};
use strongbox_storage::log::format::{SEGMENT_HEADER_LEN, SegmentHeader, segment_file_name};
use strongbox_storage::log::{
    Durability, Finding, LogEnv, LogError, LogEvent, PartitionLog, QUARANTINE_HEADER_LEN,
    QuarantineHeader, RetentionPolicy, check_dir,
};

use log_support::{TOPIC, TestKeys, batch, config, segment_files};

const T0: i64 = 1_700_000_000_000;

fn open(dir: &Path, keys: &Arc<TestKeys>) -> Result<PartitionLog, LogError> {
    PartitionLog::open(dir, config(0, 64 * 1024, Durability::Fsync), keys.clone())
}

fn append(log: &PartitionLog, i: u64) -> u64 {
    let v = format!("record-{i}");
    let a = log
        .append(&batch(&[(T0 + i as i64, v.as_bytes())]))
        .expect("append");
    a.durable.wait().expect("durable");
    a.base_offset
}

/// Every record of the log from `from`, by offset.
fn read_from(log: &PartitionLog, from: u64) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut next = from;
    while next < log.high_watermark() {
        let batches = log.read(next, 1 << 20).expect("read");
        if batches.is_empty() {
            break;
        }
        for (base, bytes) in batches {
            let b = strongbox_protocol::batch::RecordBatch::parse(bytes).expect("parse");
            for r in b.records() {
                let o = base + u64::from(r.index);
                if o >= from {
                    out.insert(o, String::from_utf8_lossy(&r.value).into_owned());
                }
                next = o + 1;
            }
        }
    }
    out
}

fn quarantine_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "quarantine"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_torn_tail_is_kept_in_a_quarantine_file_and_reported() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p0");
    let keys = TestKeys::new();
    let log = open(&dir, &keys).expect("open");
    for i in 0..4 {
        append(&log, i);
    }
    drop(log); // unclean: the segment stays unsealed
    let segment = dir.join(segment_file_name(0));
    let intact = std::fs::read(&segment).expect("read");
    let torn: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let mut damaged = intact.clone();
    damaged.extend_from_slice(&torn);
    std::fs::write(&segment, &damaged).expect("write");

    let report = check_dir(
        &dir,
        &config(0, 64 * 1024, Durability::Fsync),
        keys.clone(),
        &mut |_| {},
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::TornTail { .. })),
        "before the start the tail is reported as torn"
    );

    let log = open(&dir, &keys).expect("recovers");
    let events = log.take_events();
    let Some(LogEvent::TailQuarantined {
        quarantine,
        first_offset,
        position,
        bytes,
        ..
    }) = events.first().cloned()
    else {
        panic!("no quarantine event: {events:?}");
    };
    assert_eq!(first_offset, 4);
    assert_eq!(position, intact.len() as u64);
    assert_eq!(bytes, torn.len() as u64);
    assert_eq!(quarantine_files(&dir), vec![quarantine.clone()]);
    let kept = std::fs::read(&quarantine).expect("read quarantine");
    assert_eq!(
        &kept[QUARANTINE_HEADER_LEN..],
        torn.as_slice(),
        "the bytes, exactly"
    );
    let header = QuarantineHeader::decode(&kept[..QUARANTINE_HEADER_LEN]).expect("header");
    assert_eq!(
        (
            header.topic_id,
            header.base_offset,
            header.first_offset,
            header.position,
            header.bytes
        ),
        (TOPIC, 0, 4, intact.len() as u64, torn.len() as u64)
    );
    assert_eq!(read_from(&log, 0).len(), 4, "the intact records stay");
    log.close().expect("close");

    // The offline check reports the evidence as a problem until removed.
    let report = check_dir(
        &dir,
        &config(0, 64 * 1024, Durability::Fsync),
        keys.clone(),
        &mut |_| {},
    );
    let found = report
        .findings
        .iter()
        .find(|f| matches!(f, Finding::Quarantined { .. }))
        .expect("reported");
    assert!(found.is_problem());
    assert!(found.to_string().contains("300 bytes"), "{found}");
    assert!(!report.is_intact());
    std::fs::remove_file(&quarantine).expect("the operator removes it");
    let report = check_dir(
        &dir,
        &config(0, 64 * 1024, Durability::Fsync),
        keys,
        &mut |_| {},
    );
    assert!(report.is_intact(), "{:?}", report.findings);
}

#[test]
fn a_fully_torn_newest_segment_is_quarantined_too() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p0");
    let keys = TestKeys::new();
    let log = open(&dir, &keys).expect("open");
    append(&log, 0);
    log.roll().expect("roll");
    append(&log, 1);
    drop(log);
    let newest = segment_files(&dir).pop().expect("segment");
    let mut bytes = std::fs::read(&newest).expect("read");
    // Damage the only frame of the newest segment.
    bytes[SEGMENT_HEADER_LEN + 20] ^= 0xFF;
    std::fs::write(&newest, &bytes).expect("write");
    let log = open(&dir, &keys).expect("recovers");
    assert_eq!(quarantine_files(&dir).len(), 1);
    assert!(matches!(
        log.take_events().as_slice(),
        [LogEvent::TailQuarantined {
            first_offset: 1,
            ..
        }]
    ));
    assert_eq!(
        append(&log, 1),
        1,
        "the empty newest segment's name is reused"
    );
}

#[test]
fn recovery_cuts_nothing_when_it_cannot_keep_the_evidence() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p0");
    let keys = TestKeys::new();
    let log = open(&dir, &keys).expect("open");
    append(&log, 0);
    drop(log);
    let segment = dir.join(segment_file_name(0));
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(&[0xAA; 50]);
    std::fs::write(&segment, &bytes).expect("write");

    let io = FaultyIo::new();
    io.arm(FaultRule::new(
        IoOp::Write,
        PathMatch::Suffix(".quarantine.tmp".into()),
        Fault::Enospc,
    ));
    let env = LogEnv {
        io: Arc::new(io.clone()) as Arc<dyn StorageIo>,
        ..LogEnv::default()
    };
    let e = PartitionLog::open_with_env(
        &dir,
        config(0, 64 * 1024, Durability::Fsync),
        keys.clone(),
        env,
    )
    .expect_err("the evidence cannot be written");
    assert!(matches!(e, LogError::Quarantine { .. }), "{e}");
    assert!(e.to_string().contains("free space"), "{e}");
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        bytes,
        "nothing was cut"
    );
    assert!(
        quarantine_files(&dir).is_empty(),
        "no half-written quarantine file"
    );
    let log = open(&dir, &keys).expect("space again");
    assert_eq!(quarantine_files(&dir).len(), 1);
    assert_eq!(read_from(&log, 0).len(), 1);
}

#[test]
fn skip_to_continues_after_lost_offsets_and_reads_across_the_gap() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p0");
    let keys = TestKeys::new();
    let log = open(&dir, &keys).expect("open");
    for i in 0..5 {
        append(&log, i);
    }
    assert!(
        matches!(log.skip_to(3), Err(LogError::InvalidTruncation { .. })),
        "never backwards"
    );
    log.skip_to(100).expect("skip");
    assert_eq!(log.log_end_offset(), 100);
    assert_eq!(append(&log, 100), 100);
    assert_eq!(append(&log, 101), 101);
    let all = read_from(&log, 0);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 100, 101]
    );
    let from_gap = read_from(&log, 50);
    assert_eq!(from_gap.keys().copied().collect::<Vec<_>>(), vec![100, 101]);
    log.verify().expect("verifies across the accepted gap");
    log.close().expect("close");

    let log = open(&dir, &keys).expect("reopens with its gap");
    assert_eq!(log.gaps(), vec![(5, 100)]);
    assert_eq!(append(&log, 102), 102);
    log.close().expect("close");
    let report = check_dir(
        &dir,
        &config(0, 64 * 1024, Durability::Fsync),
        keys.clone(),
        &mut |_| {},
    );
    assert!(report.is_intact(), "{:?}", report.findings);
    assert!(report.findings.iter().any(|f| matches!(
        f,
        Finding::AcceptedGap {
            from: 5,
            to: 100,
            ..
        }
    )));

    // A gap marker that does not decode does not excuse a gap: the offsets
    // are missing, not accepted; reads into them name the range and the
    // log does not verify.
    let marker = dir.join("00000000000000000100.gap");
    let mut m = std::fs::read(&marker).expect("marker");
    m[30] ^= 1;
    std::fs::write(&marker, &m).expect("write");
    let log = open(&dir, &keys).expect("opens with the offsets missing");
    assert!(log.gaps().is_empty());
    assert_eq!(log.missing_ranges(), vec![(5, 100)]);
    match log.read(50, 1 << 20) {
        Err(e) => assert_eq!(e.damaged_range(), Some((50, Some(100))), "{e}"),
        Ok(b) => panic!("read {} batches across missing offsets", b.len()),
    }
    assert!(matches!(log.verify(), Err(LogError::Gap { .. })));
    assert_eq!(
        read_from(&log, 100).keys().copied().collect::<Vec<_>>(),
        vec![100, 101, 102]
    );
}

#[test]
fn skip_to_on_an_empty_log_starts_it_there_and_retention_takes_the_marker() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p0");
    let keys = TestKeys::new();
    let log = open(&dir, &keys).expect("open");
    log.skip_to(40).expect("skip");
    assert_eq!(log.log_start_offset(), 40);
    assert_eq!(append(&log, 40), 40);
    drop(log);
    let log = open(&dir, &keys).expect("reopen");
    assert_eq!(read_from(&log, 40).len(), 1);
    log.skip_to(90).expect("skip again");
    append(&log, 90);
    log.roll().expect("roll");
    append(&log, 91);
    assert!(dir.join("00000000000000000090.gap").exists());
    let deleted = log
        .apply_retention(&RetentionPolicy {
            max_age: None,
            max_bytes: Some(1),
        })
        .expect("retention");
    assert_eq!(deleted, vec![40, 90]);
    assert!(
        !dir.join("00000000000000000090.gap").exists(),
        "gone with its segment"
    );
    assert_eq!(log.log_start_offset(), 91);
}

#[test]
fn a_key_registered_for_a_segment_whose_creation_crashed_is_forgotten() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p0");
    let keys = TestKeys::new();
    let log = open(&dir, &keys).expect("open");
    append(&log, 0);
    log.close().expect("close");
    // A crash after the new segment's header and its key's registration,
    // before its envelope was written.
    let header = SegmentHeader {
        flags: 0,
        topic_id: TOPIC,
        partition: 0,
        segment_id: [0x5A; 16],
        base_offset: 1,
        created_at_ms: T0,
    };
    std::fs::write(dir.join(segment_file_name(1)), header.encode()).expect("write");
    let log = open(&dir, &keys).expect("open");
    assert!(
        keys.forgotten_ids().contains(&[0x5A; 16]),
        "the registry forgets the key the header names"
    );
    assert_eq!(append(&log, 1), 1);
}
