//! Targeted behaviours of the partition log: failing closed when no key can
//! be made, the plaintext benchmark mode never leaking into real logs, the
//! durability waiter as a future, reads racing appends, a damaged index,
//! and follower-style appends.

mod log_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strongbox_protocol::batch::RecordBatch;
use strongbox_storage::log::{Durability, LogError, PartitionLog};

use log_support::{TestKeys, config, segment_files, sized_batch};

const T0: i64 = 1_700_000_000_000;

#[test]
fn no_key_no_segment_and_the_log_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let log = PartitionLog::open(dir.path(), config(0, 2200, Durability::Fsync), keys.clone())
        .expect("open");
    log.append(&sized_batch(T0, 2, 200, 1))
        .expect("append")
        .durable
        .wait()
        .expect("durable");
    log.roll().expect("roll");

    keys.fail_create.store(true, Ordering::SeqCst);
    let e = log
        .append(&sized_batch(T0, 2, 200, 2))
        .expect_err("no key, no append");
    assert!(matches!(e, LogError::KeyCreate { .. }), "{e}");
    assert!(e.to_string().contains("00000000000000000002.log"), "{e}");
    assert_eq!(log.log_end_offset(), 2, "nothing was appended");

    // The provider comes back: the same offset is used, in a new segment.
    keys.fail_create.store(false, Ordering::SeqCst);
    let a = log.append(&sized_batch(T0, 2, 200, 3)).expect("append");
    a.durable.wait().expect("durable");
    assert_eq!(a.base_offset, 2);
    drop(log);

    // And while it is down at a restart, nothing breaks either.
    keys.fail_create.store(true, Ordering::SeqCst);
    let log = PartitionLog::open(dir.path(), config(0, 2200, Durability::Fsync), keys.clone())
        .expect("reopen");
    assert!(log.append(&sized_batch(T0, 1, 10, 4)).is_err());
    drop(log);
    let log = PartitionLog::open(dir.path(), config(0, 2200, Durability::Fsync), keys.clone())
        .expect("reopen after a failed segment creation");
    assert_eq!(log.log_end_offset(), 4);
    keys.fail_create.store(false, Ordering::SeqCst);
    let a = log.append(&sized_batch(T0, 1, 10, 5)).expect("append");
    assert_eq!(a.base_offset, 4);
    a.durable.wait().expect("durable");
    assert_eq!(log.read(0, usize::MAX).expect("read").len(), 3);
    log.verify().expect("verify");
}

#[test]
fn benchmark_plaintext_segments_are_refused_as_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::dangerous_open_unencrypted_for_benchmarks(
        dir.path(),
        config(0, 1 << 20, Durability::None),
    )
    .expect("open");
    let b = sized_batch(T0, 2, 50, 7);
    log.append(&b).expect("append");
    assert_eq!(log.read(0, usize::MAX).expect("read")[0].1, *b.as_bytes());
    log.close().expect("close");
    assert!(
        !dir.path().join("00000000000000000000.key").exists(),
        "no key is made for plaintext"
    );

    let e = PartitionLog::open(
        dir.path(),
        config(0, 1 << 20, Durability::None),
        TestKeys::new(),
    )
    .expect_err("a real log refuses plaintext segments");
    assert!(matches!(e, LogError::CorruptHeader { .. }), "{e}");
    assert!(e.to_string().contains("benchmark"), "{e}");
}

#[test]
fn durability_waiters_are_futures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(
        dir.path(),
        config(0, 1 << 20, Durability::Fsync),
        TestKeys::new(),
    )
    .expect("open");
    let mut waiters = Vec::new();
    for i in 0..20 {
        let a = log
            .append(&sized_batch(T0 + i, 1, 100, i as u8))
            .expect("append");
        waiters.push(a.durable);
    }
    let results = futures::executor::block_on(futures::future::join_all(waiters));
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(log.high_watermark(), 20, "durable batches are visible");

    let a = log.append(&sized_batch(T0, 1, 100, 0)).expect("append");
    futures::executor::block_on(a.durable).expect("durable");
    assert_eq!(log.high_watermark(), 21);
    log.close().expect("close");
}

#[test]
fn reads_run_concurrently_with_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        PartitionLog::open(
            dir.path(),
            config(0, 6000, Durability::Fsync),
            TestKeys::new(),
        )
        .expect("open"),
    );
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = Arc::clone(&log);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0u32;
                let mut longest = 0;
                while !done.load(Ordering::SeqCst) || reads < 10 {
                    let batches = log.read(0, usize::MAX).expect("read while appending");
                    let mut next = 0;
                    for (base, bytes) in &batches {
                        assert_eq!(*base, next, "contiguous");
                        let b = RecordBatch::parse(bytes.clone()).expect("whole batch");
                        next = base + u64::from(b.record_count());
                    }
                    assert!(batches.len() >= longest, "reads never go backwards");
                    longest = batches.len();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..2u8)
        .map(|w| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..60u8 {
                    let a = log
                        .append(&sized_batch(
                            T0 + i64::from(i),
                            1 + usize::from(i % 3),
                            150,
                            w,
                        ))
                        .expect("append");
                    if i % 7 == 0 {
                        a.durable.wait().expect("durable");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    // Wait for the last fsync, then let the readers see the final state.
    log.roll().expect("roll");
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().expect("reader") >= 10);
    }
    assert_eq!(log.read(0, usize::MAX).expect("read").len(), 120);
    assert!(
        log.segments().len() > 3,
        "appends rolled segments while being read"
    );
    log.verify().expect("verify");
}

#[test]
fn a_damaged_or_missing_index_only_costs_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let mut cfg = config(0, 1 << 20, Durability::None);
    cfg.index_interval_bytes = 1;
    let log = PartitionLog::open(dir.path(), cfg.clone(), keys.clone()).expect("open");
    for i in 0..30i64 {
        log.append(&sized_batch(T0 + i * 10, 2, 40, i as u8))
            .expect("append");
    }
    let all = log.read(0, usize::MAX).expect("read");
    log.close().expect("close");
    let index = segment_files(dir.path())[0].with_extension("index");

    let check = |what: &str| {
        let log = PartitionLog::open(dir.path(), cfg.clone(), keys.clone()).expect("open");
        for from in [0u64, 1, 17, 31, 59] {
            let got = log.read(from, 1).expect("read");
            let want: Vec<_> = all
                .iter()
                .filter(|(b, _)| b + 2 > from)
                .take(1)
                .cloned()
                .collect();
            assert_eq!(got, want, "{what}: read from {from}");
        }
        assert_eq!(
            log.offset_for_timestamp(T0 + 101).expect("time"),
            Some(21),
            "{what}"
        );
        assert_eq!(
            log.offset_for_timestamp(T0 + 291).expect("time"),
            Some(59),
            "{what}"
        );
        assert_eq!(
            log.offset_for_timestamp(T0 + 292).expect("time"),
            None,
            "{what}"
        );
    };
    check("intact index");

    // Entries pointing at the wrong frames (shifted by one entry).
    let data = std::fs::read(&index).expect("index");
    let mut shifted = data[24..].to_vec();
    shifted.extend_from_slice(&data[..24]);
    std::fs::write(&index, &shifted).expect("write");
    check("shifted index");

    // Garbage.
    std::fs::write(&index, vec![0xA5; data.len() + 5]).expect("write");
    check("garbage index");

    // Gone.
    std::fs::remove_file(&index).expect("remove");
    check("missing index");
}

#[test]
fn follower_appends_at_the_leaders_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = PartitionLog::open(
        dir.path(),
        config(0, 1 << 20, Durability::None),
        TestKeys::new(),
    )
    .expect("open");
    assert_eq!(
        log.append_at(0, &sized_batch(T0, 3, 10, 1))
            .expect("append")
            .last_offset,
        2
    );
    let e = log
        .append_at(5, &sized_batch(T0, 1, 10, 2))
        .expect_err("gap");
    assert!(
        matches!(
            e,
            LogError::OffsetMismatch {
                expected: 5,
                next: 3
            }
        ),
        "{e}"
    );
    log.append_at(3, &sized_batch(T0, 1, 10, 3))
        .expect("append");
    // The leader says offset 3 onwards was never committed.
    log.truncate(3).expect("truncate");
    let replacement = sized_batch(T0, 2, 10, 4);
    log.append_at(3, &replacement)
        .expect("append the leader's batch");
    let read = log.read(3, usize::MAX).expect("read");
    assert_eq!(read, vec![(3, replacement.as_bytes().clone())]);
    assert_eq!(
        log.segments().len(),
        2,
        "the truncated segment was sealed, not reused"
    );
    log.verify().expect("verify");
}
