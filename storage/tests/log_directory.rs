//! The partition directory itself: created durably (its name, and those of
//! the parents made with it, survive a power cut), and never created again
//! empty for a partition whose records say it held data.

mod log_support;

use std::path::Path;
use std::sync::Arc;

use strongbox_storage::io::{PowerLossIo, StorageIo, durable};
use strongbox_storage::log::{Durability, LogEnv, LogError, PartitionLog};

use log_support::{TestKeys, batch, config};

fn env(io: &PowerLossIo) -> LogEnv {
    LogEnv {
        io: Arc::new(io.clone()) as Arc<dyn StorageIo>,
        ..LogEnv::default()
    }
}

fn append(log: &PartitionLog, value: &[u8]) -> Result<u64, LogError> {
    let a = log.append(&batch(&[(1, value)]))?;
    a.durable.wait()?;
    Ok(a.base_offset)
}

/// The report's case: a topic created just before a power cut. Its
/// directories `log/<topic>` and `<topic>/<partition>` were made with
/// `mkdir -p` and never synced into their parents, so the whole partition
/// vanished with every acknowledged record in it.
#[test]
fn records_acknowledged_in_a_new_partition_survive_a_power_cut() {
    let io = PowerLossIo::new();
    durable::create_dir_all(&io, Path::new("/data")).expect("data dir");
    let keys = TestKeys::new();
    let dir = Path::new("/data/log/0123/0");
    let log = PartitionLog::open_with_env(
        dir,
        config(0, 1 << 20, Durability::Fsync),
        keys.clone(),
        env(&io),
    )
    .expect("open");
    for i in 0..5u8 {
        assert_eq!(
            append(&log, &[b'a' + i]).expect("acknowledged"),
            u64::from(i)
        );
    }
    // The power goes off now: no close, nothing synced afterwards.
    let after = io.restart(None);
    drop(log);
    let log = PartitionLog::open_recorded(
        dir,
        config(0, 1 << 20, Durability::Fsync),
        keys,
        env(&after),
    )
    .expect("reopen");
    assert!(!log.directory_missing(), "the partition directory survived");
    assert_eq!(
        log.log_end_offset(),
        5,
        "every acknowledged record is there"
    );
    let read = log.read(0, 1 << 20).expect("read");
    assert_eq!(read.len(), 5);
}

#[test]
fn a_partition_with_records_is_not_created_again_from_a_missing_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("log/t/0");
    let keys = TestKeys::new();
    let cfg = || config(0, 1 << 20, Durability::Fsync);
    let log = PartitionLog::open(&dir, cfg(), keys.clone()).expect("open");
    for v in [b"a", b"b", b"c"] {
        append(&log, v).expect("append");
    }
    log.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("the directory vanishes");

    let log = PartitionLog::open_recorded(&dir, cfg(), keys.clone(), LogEnv::default())
        .expect("opens, empty");
    assert!(log.directory_missing());
    assert!(!dir.exists(), "not created again");
    assert_eq!(log.log_end_offset(), 0);
    assert!(log.segments().is_empty());
    let e = append(&log, b"x").expect_err("refused");
    assert!(matches!(e, LogError::DirectoryMissing { .. }), "{e}");
    assert!(e.is_damage());
    assert!(
        e.to_string().contains("was not created again"),
        "the message says what happened: {e}"
    );
    assert!(!dir.exists(), "a refused append creates nothing");
    log.roll().expect("nothing to roll");
    log.close().expect("close");
    assert!(!dir.exists(), "closing creates nothing");

    // Still refused after another restart.
    let log = PartitionLog::open_recorded(&dir, cfg(), keys.clone(), LogEnv::default())
        .expect("opens, empty");
    assert!(log.directory_missing());

    // Accepting the loss creates the directory and moves past the offsets
    // that were handed out.
    log.skip_to(3).expect("accept the loss");
    assert!(dir.is_dir());
    assert!(!log.directory_missing());
    assert_eq!(append(&log, b"d").expect("writes again"), 3);
    log.close().expect("close");
    let log = PartitionLog::open_recorded(&dir, cfg(), keys, LogEnv::default()).expect("reopen");
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.log_start_offset(), 3);
}

#[test]
fn accepting_the_loss_at_offset_zero_still_brings_the_directory_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("p");
    let keys = TestKeys::new();
    let log = PartitionLog::open_recorded(
        &dir,
        config(0, 1 << 20, Durability::Fsync),
        keys,
        LogEnv::default(),
    )
    .expect("open");
    assert!(log.directory_missing());
    log.skip_to(0).expect("accept");
    assert!(dir.is_dir());
    assert_eq!(append(&log, b"x").expect("append"), 0);
}

/// Moving past lost offsets twice in a row: the second move makes its empty
/// segment file durable before it removes the first one, so a power cut in
/// between leaves two empty segment files. The log must open (the older one
/// is superseded), keep its records, and never end before an offset it
/// moved past; this held at no cut point before recovery knew about it.
#[test]
fn a_power_cut_between_two_moves_past_lost_offsets_leaves_a_log_that_opens() {
    let keys = TestKeys::new();
    let run = |cut: Option<u64>| -> (PowerLossIo, u64) {
        let io = PowerLossIo::new();
        durable::create_dir_all(&io, Path::new("/data")).expect("data dir");
        let log = PartitionLog::open_with_env(
            Path::new("/data/p"),
            config(0, 1 << 20, Durability::Fsync),
            keys.clone(),
            env(&io),
        )
        .expect("open");
        for v in [b"a", b"b", b"c"] {
            append(&log, v).expect("acknowledged");
        }
        log.skip_to(100).expect("first move");
        let before = io.ops();
        if let Some(n) = cut {
            io.cut_after(n);
        }
        let second = log.skip_to(200);
        if cut.is_none() {
            second.expect("second move");
        }
        drop(log);
        (io, before)
    };
    let (whole, before) = run(None);
    let total = whole.ops() - before;
    assert!(total > 2, "the second move does work: {total} operations");
    for n in 0..=total {
        let (io, _) = run(Some(n));
        let after = io.restart(None);
        let log = PartitionLog::open_with_env(
            Path::new("/data/p"),
            config(0, 1 << 20, Durability::Fsync),
            keys.clone(),
            env(&after),
        )
        .unwrap_or_else(|e| panic!("cut after {n} of {total} operations: {e}"));
        assert!(
            log.log_end_offset() >= 100,
            "cut after {n}: the log ends at {}, before the first move",
            log.log_end_offset()
        );
        assert_eq!(
            log.read(0, 1 << 20).expect("read").len(),
            3,
            "cut after {n}"
        );
    }
}
