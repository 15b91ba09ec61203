//! A full or failing disk under the partition log, through the
//! fault-injecting I/O backend: `ENOSPC` and `EIO` on writes, `EIO` on
//! fsync, short writes. The log must answer with the fault's error, fence
//! itself, resume by itself once the disk works (without a restart and
//! without retrying an fsync on a descriptor whose fsync failed), continue
//! in a new segment with a new data key, and keep every record it
//! acknowledged. A model-based test drives random sequences of appends,
//! faults and reopens and checks exactly that.

mod log_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use strongbox_storage::io::{Fault, FaultRule, FaultyIo, IoOp, PathMatch, StorageIo};
use strongbox_storage::log::{
    Durability, LogEnv, LogError, LogEvent, LogHealth, PartitionLog, WriteFault,
};

use log_support::{TestKeys, batch, config};

const T0: i64 = 1_700_000_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    keys: Arc<TestKeys>,
    io: FaultyIo,
    durability: Durability,
    segment_bytes: u64,
}

impl Fixture {
    fn new(durability: Durability) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            keys: TestKeys::new(),
            io: FaultyIo::new(),
            durability,
            segment_bytes: 64 * 1024,
        }
    }

    fn open(&self) -> PartitionLog {
        let env = LogEnv {
            io: Arc::new(self.io.clone()) as Arc<dyn StorageIo>,
            ..LogEnv::default()
        };
        PartitionLog::open_with_env(
            self.dir.path().join("p0"),
            config(0, self.segment_bytes, self.durability),
            self.keys.clone(),
            env,
        )
        .expect("open")
    }

    fn log_files(&self) -> PathMatch {
        PathMatch::Suffix(".log".into())
    }
}

fn value(i: u64) -> Vec<u8> {
    format!("record-{i:06}").into_bytes()
}

/// Appends one record; `Ok(offset)` only when it is acknowledged (written
/// and, under `fsync`, durable).
fn append(log: &PartitionLog, i: u64) -> Result<u64, LogError> {
    let v = value(i);
    let appended = log.append(&batch(&[(T0 + i as i64, &v)]))?;
    appended.durable.wait()?;
    Ok(appended.base_offset)
}

/// Every record of the log, by offset.
fn contents(log: &PartitionLog) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut next = log.log_start_offset();
    let hw = log.high_watermark();
    while next < hw {
        let batches = log.read(next, 1 << 20).expect("read");
        let Some((last_base, _)) = batches.last().cloned() else {
            break;
        };
        for (base, bytes) in batches {
            let b = strongbox_protocol::batch::RecordBatch::parse(bytes).expect("parse");
            for r in b.records() {
                out.insert(base + u64::from(r.index), r.value.to_vec());
            }
        }
        next = out.keys().next_back().map_or(last_base + 1, |o| o + 1);
    }
    out
}

fn segment_ids(log: &PartitionLog) -> Vec<[u8; 16]> {
    log.segments().iter().map(|s| s.segment_id).collect()
}

#[test]
fn enospc_on_a_frame_write_is_storage_full_then_resumes_in_a_new_segment() {
    let fx = Fixture::new(Durability::Fsync);
    let log = fx.open();
    for i in 0..5 {
        assert_eq!(append(&log, i).expect("append"), i);
    }
    let before = segment_ids(&log);
    fx.io
        .arm(FaultRule::new(IoOp::Write, fx.log_files(), Fault::Enospc));
    let e = append(&log, 5).expect_err("the disk is full");
    assert!(matches!(e, LogError::StorageFull { .. }), "{e}");
    assert!(
        matches!(
            log.health(),
            LogHealth::Fenced {
                fault: WriteFault::StorageFull,
                ..
            }
        ),
        "{:?}",
        log.health()
    );
    // Refused at once while the disk is full, and still after a resume
    // attempt that cannot write.
    assert!(matches!(append(&log, 5), Err(LogError::StorageFull { .. })));
    assert!(matches!(
        log.resume().expect("resume"),
        LogHealth::Fenced { .. }
    ));

    fx.io.clear();
    assert_eq!(log.resume().expect("resume"), LogHealth::Ok);
    assert_eq!(
        append(&log, 5).expect("space again"),
        5,
        "no offset skipped"
    );
    let after = segment_ids(&log);
    assert!(after.len() > before.len(), "a new segment: {after:?}");
    assert!(
        !before.contains(after.last().expect("segment")),
        "with a new id (and so a new data key)"
    );
    let expected: BTreeMap<u64, Vec<u8>> = (0..6).map(|i| (i, value(i))).collect();
    assert_eq!(contents(&log), expected);
    let events = log.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            LogEvent::Fenced {
                fault: WriteFault::StorageFull,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            LogEvent::Resumed {
                cut: None,
                next_offset: 5
            }
        )),
        "{events:?}"
    );
    log.close().expect("a resumed log closes cleanly");
    let reopened = fx.open();
    assert_eq!(contents(&reopened), expected);
    assert_eq!(fx.io.syncs_after_failure(), 0);
}

#[test]
fn eio_on_fsync_fails_the_waiting_appends_and_resumes_from_the_last_durable_point() {
    let fx = Fixture::new(Durability::Fsync);
    let log = fx.open();
    for i in 0..3 {
        append(&log, i).expect("append");
    }
    fx.io
        .arm(FaultRule::new(IoOp::Sync, fx.log_files(), Fault::Eio).times(1));
    let e = append(&log, 3).expect_err("its fsync failed");
    assert!(matches!(e, LogError::Failed { .. }), "{e}");
    assert!(matches!(
        log.health(),
        LogHealth::Fenced {
            fault: WriteFault::StorageFailed,
            ..
        }
    ));
    let truncations = log.truncations();
    // The disk works again: the log reopens the segment on a new
    // descriptor, cuts the record no fsync confirmed, and goes on.
    assert_eq!(log.resume().expect("resume"), LogHealth::Ok);
    assert_eq!(log.truncations(), truncations + 1, "records were cut");
    assert_eq!(
        append(&log, 3).expect("retry"),
        3,
        "the unacknowledged offset is taken again"
    );
    let expected: BTreeMap<u64, Vec<u8>> = (0..4).map(|i| (i, value(i))).collect();
    assert_eq!(contents(&log), expected);
    let cut = log.take_events().into_iter().find_map(|e| match e {
        LogEvent::Resumed { cut, .. } => Some(cut),
        _ => None,
    });
    let cut = cut.flatten().expect("the resume reports the cut");
    assert_eq!((cut.from_offset, cut.to_offset), (3, 4));
    assert_eq!(
        fx.io.syncs_after_failure(),
        0,
        "no fsync retried on the descriptor that failed"
    );
    log.close().expect("close");
    assert_eq!(contents(&fx.open()), expected);
}

#[test]
fn a_short_write_leaves_no_partial_frame_behind() {
    let fx = Fixture::new(Durability::Fsync);
    let log = fx.open();
    append(&log, 0).expect("append");
    fx.io
        .arm(FaultRule::new(IoOp::Write, fx.log_files(), Fault::ShortWrite).times(1));
    let e = append(&log, 1).expect_err("short write then full");
    assert!(matches!(e, LogError::StorageFull { .. }), "{e}");
    fx.io.clear();
    assert_eq!(log.resume().expect("resume"), LogHealth::Ok);
    assert_eq!(append(&log, 1).expect("again"), 1);
    drop(log);
    // An unclean stop: recovery finds every segment intact, so nothing is
    // quarantined (the partial frame was cut by the seal).
    let reopened = fx.open();
    assert!(
        reopened.take_events().is_empty(),
        "no torn tail after a short write"
    );
    let expected: BTreeMap<u64, Vec<u8>> = (0..2).map(|i| (i, value(i))).collect();
    assert_eq!(contents(&reopened), expected);
    reopened.verify().expect("verifies");
}

#[test]
fn eio_on_a_write_is_storage_failed() {
    let fx = Fixture::new(Durability::Fsync);
    let log = fx.open();
    append(&log, 0).expect("append");
    fx.io
        .arm(FaultRule::new(IoOp::Write, fx.log_files(), Fault::Eio).times(1));
    let e = append(&log, 1).expect_err("EIO");
    assert!(matches!(e, LogError::Failed { .. }), "{e}");
    assert_eq!(log.resume().expect("resume"), LogHealth::Ok);
    assert_eq!(append(&log, 1).expect("again"), 1);
    log.close().expect("close");
}

#[test]
fn a_full_disk_while_creating_a_segment_is_retried() {
    let fx = Fixture::new(Durability::Fsync);
    let log = fx.open();
    append(&log, 0).expect("append");
    log.roll().expect("roll");
    fx.io
        .arm(FaultRule::new(IoOp::Create, PathMatch::Any, Fault::Enospc));
    assert!(matches!(append(&log, 1), Err(LogError::StorageFull { .. })));
    fx.io.clear();
    assert_eq!(log.resume().expect("resume"), LogHealth::Ok);
    assert_eq!(append(&log, 1).expect("again"), 1);
    log.close().expect("close");
    assert_eq!(contents(&fx.open()).len(), 2);
}

#[test]
fn a_failed_sync_under_interval_durability_never_reuses_an_offset() {
    let fx = Fixture::new(Durability::Interval(std::time::Duration::from_secs(3600)));
    let log = fx.open();
    for i in 0..3 {
        append(&log, i).expect("append");
    }
    log.roll().expect("roll: 0..3 durable");
    for i in 3..6 {
        append(&log, i).expect("acknowledged before it is durable");
    }
    // The sync of the seal fails: records 3..6 were acknowledged (and may
    // have been read) but no sync confirmed them.
    fx.io
        .arm(FaultRule::new(IoOp::Sync, fx.log_files(), Fault::Eio).times(1));
    assert!(log.roll().is_err());
    assert_eq!(log.resume().expect("resume"), LogHealth::Ok);
    let next = append(&log, 6).expect("append");
    assert_eq!(next, 6, "writing continues after every offset handed out");
    assert_eq!(log.gaps(), vec![(3, 6)]);
    let c = contents(&log);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 6]);
    log.close().expect("close");
    let reopened = fx.open();
    assert_eq!(reopened.gaps(), vec![(3, 6)], "the gap is recorded durably");
    assert_eq!(contents(&reopened), c);
    reopened.verify().expect("verifies across the gap");
    assert_eq!(fx.io.syncs_after_failure(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Fault(IoOp, Fault, u64),
    Clear,
    Resume,
    Roll,
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        Just(Fault::Enospc),
        Just(Fault::Eio),
        Just(Fault::ShortWrite)
    ];
    let io_op = prop_oneof![
        3 => Just(IoOp::Write),
        2 => Just(IoOp::Sync),
        1 => Just(IoOp::Create),
        1 => Just(IoOp::SyncDir),
        1 => Just(IoOp::SetLen),
        1 => Just(IoOp::Rename),
    ];
    prop_oneof![
        12 => (1u8..4).prop_map(Op::Append),
        2 => (io_op, fault, 1u64..4).prop_map(|(o, f, n)| Op::Fault(o, f, n)),
        2 => Just(Op::Clear),
        2 => Just(Op::Resume),
        1 => Just(Op::Roll),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// Runs `ops`; after each step every acknowledged record must be readable
/// with its value at its offset, and offsets must only grow. Under
/// `interval` durability a failed sync may lose records acknowledged before
/// they were durable (as a power cut would): then only what is read must be
/// what was acknowledged at that offset, and no offset is handed out twice.
fn run(ops: Vec<Op>, durability: Durability) {
    let strict = durability == Durability::Fsync;
    let mut fx = Fixture::new(durability);
    fx.segment_bytes = 2048;
    let mut log = Some(fx.open());
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next_value = 0u64;
    for op in ops {
        let Some(l) = log.as_ref() else { break };
        match op {
            Op::Append(n) => {
                let values: Vec<Vec<u8>> =
                    (0..u64::from(n)).map(|k| value(next_value + k)).collect();
                next_value += u64::from(n);
                let records: Vec<(i64, &[u8])> =
                    values.iter().map(|v| (T0, v.as_slice())).collect();
                if let Ok(a) = l.append(&batch(&records)) {
                    // Only offsets never acknowledged may be handed out again.
                    if let Some(max) = acked.keys().next_back() {
                        assert!(
                            a.base_offset > *max,
                            "offset {} handed out again at or below the acknowledged {max}",
                            a.base_offset
                        );
                    }
                    if a.durable.wait().is_ok() {
                        for (k, v) in values.into_iter().enumerate() {
                            acked.insert(a.base_offset + k as u64, v);
                        }
                    }
                }
            }
            Op::Fault(o, f, n) => {
                fx.io
                    .arm(FaultRule::new(o, PathMatch::Under(fx.dir.path().into()), f).times(n));
            }
            Op::Clear => fx.io.clear(),
            Op::Resume => {
                let _ = l.resume();
            }
            Op::Roll => {
                let _ = l.roll();
            }
            Op::Reopen { clean } => {
                let old = log.take().expect("open");
                if clean {
                    let _ = old.close();
                } else {
                    drop(old);
                }
                fx.io.clear();
                log = Some(fx.open());
            }
        }
        let l = log.as_ref().expect("open");
        check(&contents(l), &acked, strict);
    }
    fx.io.clear();
    if let Some(l) = log.take() {
        let _ = l.close();
    }
    let reopened = fx.open();
    check(&contents(&reopened), &acked, strict);
    reopened.verify().expect("the log verifies");
    assert_eq!(
        fx.io.syncs_after_failure(),
        0,
        "an fsync was retried on a descriptor whose fsync failed"
    );
}

/// What the log holds against what it acknowledged.
fn check(held: &BTreeMap<u64, Vec<u8>>, acked: &BTreeMap<u64, Vec<u8>>, strict: bool) {
    for (offset, v) in acked {
        match held.get(offset) {
            Some(h) => assert_eq!(h, v, "offset {offset} holds another record"),
            None => assert!(!strict, "acknowledged offset {offset} lost"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_acknowledged_record_is_lost_to_a_failing_disk(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, Durability::Fsync);
    }

    #[test]
    fn no_offset_is_reused_after_a_failing_disk_under_interval_durability(
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(ops, Durability::Interval(std::time::Duration::from_millis(5)));
    }
}
