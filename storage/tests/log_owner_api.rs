//! What a partition log offers its owner so the owner needs no file name or
//! layout of it: the durable-watermark subscription, the producer-state
//! scan, and envelope reconciliation after an interrupted rewrap.

mod log_support;

use std::sync::Arc;
use std::time::Duration;

use strongbox_protocol::batch::{BatchBuilder, ProducerStamp, RecordBatch};
use strongbox_storage::keys::{KekId, KekScope, KeyError};
use strongbox_storage::log::{Durability, PartitionLog, Reconciled, WatermarkEnded};

use log_support::{TestKeys, config, sized_batch};

const T0: i64 = 1_700_000_000_000;

fn stamped(producer_id: u64, base_sequence: u32, records: usize) -> RecordBatch {
    let mut b = BatchBuilder::new(T0);
    b.producer(ProducerStamp {
        producer_id,
        epoch: 0,
        base_sequence,
    });
    for _ in 0..records {
        b.push(T0, None, &[], &[7; 300]).expect("push");
    }
    RecordBatch::parse(b.finish().expect("finish")).expect("parse")
}

#[test]
fn a_subscription_wakes_when_a_batch_becomes_durable_and_ends_with_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let log = Arc::new(
        PartitionLog::open(dir.path(), config(0, 1 << 20, Durability::Fsync), keys).expect("open"),
    );
    let mut sub = log.subscribe_watermark();
    sub.mark_seen();
    assert_eq!(log.readable_end(), 0);

    let waiter = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            futures::executor::block_on(sub.changed()).expect("published");
            // Published after the fdatasync that made the batch durable.
            let seen = log.readable_end();
            (sub, seen)
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let a = log.append(&sized_batch(T0, 3, 100, 1)).expect("append");
    a.durable.wait().expect("durable");
    let (mut sub, seen) = waiter.join().expect("waiter");
    assert_eq!(seen, 3);
    assert_eq!(sub.high_watermark(), 3);

    let log = Arc::try_unwrap(log).expect("sole owner");
    log.close().expect("close");
    assert_eq!(
        futures::executor::block_on(sub.changed()),
        Err(WatermarkEnded),
        "a closed log publishes nothing more"
    );
}

#[test]
fn the_producer_scan_visits_the_newest_two_segments_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let log =
        PartitionLog::open(dir.path(), config(0, 1 << 20, Durability::None), keys).expect("open");
    // Three segments: producer 1 only in the oldest, producer 2 after.
    log.append(&stamped(1, 0, 2)).expect("append");
    log.roll().expect("roll");
    log.append(&stamped(2, 0, 2)).expect("append");
    log.roll().expect("roll");
    log.append(&sized_batch(T0, 1, 10, 3)).expect("append");
    log.append(&stamped(2, 2, 3)).expect("append");

    let mut seen = Vec::new();
    log.scan_recent_batches(|base, header| {
        seen.push((
            base,
            header.producer.map(|p| (p.producer_id, p.base_sequence)),
            header.record_count,
        ));
    })
    .expect("scan");
    assert_eq!(
        seen,
        vec![(2, Some((2, 0)), 2), (4, None, 1), (5, Some((2, 2)), 3)],
        "the oldest segment is not scanned; the others are, in order"
    );
    log.close().expect("close");
}

#[test]
fn reconciliation_finds_an_envelope_ahead_of_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let log = PartitionLog::open(
        dir.path(),
        config(0, 1 << 20, Durability::Fsync),
        keys.clone(),
    )
    .expect("open");
    log.append(&sized_batch(T0, 2, 100, 1))
        .expect("append")
        .durable
        .wait()
        .expect("durable");
    log.roll().expect("roll");
    log.append(&sized_batch(T0, 2, 100, 2))
        .expect("append")
        .durable
        .wait()
        .expect("durable");
    let ids: Vec<[u8; 16]> = log.segments().iter().map(|s| s.segment_id).collect();
    let [first, second] = ids[..] else {
        panic!("two segments: {ids:?}");
    };
    let v1 = KekId {
        scope: KekScope::Broker,
        version: 1,
    };
    let v2 = KekId {
        scope: KekScope::Broker,
        version: 2,
    };

    // A rewrap of the first segment to v2 whose registry record fails (a
    // crash between the envelope and the registry).
    let rewrapped = log.rewrap_envelopes(
        &v1,
        |ctx, wrapped| {
            if ctx.segment_id == first {
                let mut w = wrapped.clone();
                w.kek = v2.clone();
                Ok(w)
            } else {
                Err(KeyError::Unavailable("only the first".into()))
            }
        },
        |_, _| Err(KeyError::Unavailable("the registry is gone".into())),
    );
    assert!(rewrapped.is_err(), "the commit failed");

    let mut committed = Vec::new();
    let results = log.reconcile_envelopes(&v1, &[first, second, [9; 16]], |ctx, wrapped| {
        committed.push((ctx.segment_id, wrapped.kek.clone()));
        Ok(())
    });
    assert_eq!(committed, vec![(first, v2.clone())]);
    assert!(matches!(results[0], (id, Reconciled::Corrected) if id == first));
    assert!(
        matches!(&results[1], (id, Reconciled::NotCorrected(why)) if *id == second && why.contains("still under")),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], (_, Reconciled::NotCorrected(why)) if why.contains("no such segment")),
        "{results:?}"
    );
    // The data is still readable under the envelope on disk.
    assert_eq!(log.read(0, usize::MAX).expect("read").len(), 2);
    log.close().expect("close");
}
