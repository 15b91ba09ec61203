//! Model-based test of the partition log: random sequences of appends,
//! rolls, clean and unclean reopens, clock moves, reads, reads by time,
//! retention and truncation, checked after every step against an in-memory
//! model of what the log must hold.

mod log_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use strongbox_storage::log::{Durability, LogError, PartitionLog, RetentionPolicy};

use log_support::{ManualClock, TestKeys, batch, config};

const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// Records as (timestamp delta from the clock, value length).
    Append(Vec<(i64, usize)>),
    Roll,
    Reopen {
        clean: bool,
    },
    Advance(i64),
    Read {
        pick: usize,
        max_bytes: usize,
    },
    ReadOutOfRange {
        above: bool,
    },
    ReadByTime {
        pick: i64,
    },
    Retention {
        max_bytes: u64,
    },
    RetentionByAge {
        age_ms: u64,
    },
    Truncate {
        pick: usize,
        inside: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => prop::collection::vec((-40i64..400, 0usize..160), 1..5).prop_map(Op::Append),
        1 => Just(Op::Roll),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        2 => (0i64..1500).prop_map(Op::Advance),
        4 => (any::<usize>(), 1usize..2000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => any::<bool>().prop_map(|above| Op::ReadOutOfRange { above }),
        3 => any::<i64>().prop_map(|pick| Op::ReadByTime { pick }),
        1 => (0u64..6000).prop_map(|max_bytes| Op::Retention { max_bytes }),
        1 => (0u64..4000).prop_map(|age_ms| Op::RetentionByAge { age_ms }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, inside)| Op::Truncate { pick, inside }),
    ]
}

#[derive(Debug, Clone)]
struct MBatch {
    base: u64,
    bytes: Bytes,
    timestamps: Vec<i64>,
}

impl MBatch {
    fn next(&self) -> u64 {
        self.base + self.timestamps.len() as u64
    }
}

#[derive(Debug, Default)]
struct Model {
    batches: Vec<MBatch>,
    start: u64,
    next: u64,
}

impl Model {
    fn expected_read(&self, from: u64, max_bytes: usize) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for b in self.batches.iter().filter(|b| b.next() > from) {
            if !out.is_empty() && total + b.bytes.len() > max_bytes {
                break;
            }
            total += b.bytes.len();
            out.push((b.base, b.bytes.clone()));
            if total >= max_bytes {
                break;
            }
        }
        out
    }

    fn expected_time(&self, ts: i64) -> Option<u64> {
        self.batches.iter().find_map(|b| {
            b.timestamps
                .iter()
                .position(|t| *t >= ts)
                .map(|i| b.base + i as u64)
        })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    keys: Arc<TestKeys>,
    clock: Arc<ManualClock>,
    segment_bytes: u64,
    index_interval: u64,
    durability: Durability,
    log: Option<PartitionLog>,
}

impl Harness {
    fn open(&mut self) {
        let mut c = config(0, self.segment_bytes, self.durability);
        c.index_interval_bytes = self.index_interval;
        c.segment_age = Duration::from_millis(1000);
        let clock: Arc<ManualClock> = Arc::clone(&self.clock);
        self.log = Some(
            PartitionLog::open_with_clock(self.dir.path(), c, self.keys.clone(), clock)
                .expect("open"),
        );
    }

    fn log(&self) -> &PartitionLog {
        self.log.as_ref().expect("open log")
    }
}

fn check_shape(log: &PartitionLog, model: &Model) {
    assert_eq!(log.log_start_offset(), model.start, "log start");
    assert_eq!(log.log_end_offset(), model.next, "log end");
    assert_eq!(log.high_watermark(), model.next, "high watermark");
    let segs = log.segments();
    if let Some(first) = segs.first() {
        assert_eq!(first.base_offset, model.start, "first segment base");
        assert_eq!(segs.last().map(|s| s.next_offset), Some(model.next));
    }
    for pair in segs.windows(2) {
        assert_eq!(pair[0].next_offset, pair[1].base_offset, "segments join");
        assert!(pair[0].sealed, "only the newest segment may be unsealed");
    }
    for s in &segs {
        assert!(s.size_bytes >= 64, "segment has a header");
        assert!(
            model.batches.iter().any(|b| b.base == s.base_offset),
            "segment {} starts at a batch boundary",
            s.base_offset
        );
    }
    assert_eq!(
        log.size_bytes(),
        segs.iter().map(|s| s.size_bytes).sum::<u64>()
    );
}

fn run(ops: Vec<Op>, segment_bytes: u64, index_interval: u64, durability: Durability) {
    let mut h = Harness {
        dir: tempfile::tempdir().expect("tempdir"),
        keys: TestKeys::new(),
        clock: ManualClock::new(T0),
        segment_bytes,
        index_interval,
        durability,
        log: None,
    };
    h.open();
    let mut model = Model::default();
    let mut fill = 0u8;
    for op in ops {
        match op {
            Op::Append(records) => {
                fill = fill.wrapping_add(1);
                let now = h.clock.0.load(std::sync::atomic::Ordering::SeqCst);
                let values: Vec<Vec<u8>> =
                    records.iter().map(|(_, len)| vec![fill; *len]).collect();
                let recs: Vec<(i64, &[u8])> = records
                    .iter()
                    .zip(&values)
                    .map(|((d, _), v)| (now + d, &v[..]))
                    .collect();
                let b = batch(&recs);
                let appended = h.log().append(&b).expect("append");
                appended.durable.wait().expect("durable");
                assert_eq!(appended.base_offset, model.next);
                assert_eq!(appended.last_offset, model.next + records.len() as u64 - 1);
                model.batches.push(MBatch {
                    base: model.next,
                    bytes: b.as_bytes().clone(),
                    timestamps: recs.iter().map(|r| r.0).collect(),
                });
                model.next += records.len() as u64;
            }
            Op::Roll => {
                let had_active = h.log().segments().last().is_some_and(|s| !s.sealed);
                assert_eq!(h.log().roll().expect("roll"), had_active);
                assert!(h.log().segments().iter().all(|s| s.sealed));
            }
            Op::Reopen { clean } => {
                let log = h.log.take().expect("log");
                if clean {
                    log.close().expect("close");
                } else {
                    drop(log);
                }
                h.open();
                assert!(
                    h.log().segments().iter().all(|s| s.sealed),
                    "recovery seals"
                );
            }
            Op::Advance(ms) => {
                h.clock.advance(ms);
                h.log().roll_if_due().expect("roll if due");
            }
            Op::Read { pick, max_bytes } => {
                let span = model.next - model.start + 1;
                let from = model.start + (pick as u64 % span);
                let got = h.log().read(from, max_bytes).expect("read");
                assert_eq!(
                    got,
                    model.expected_read(from, max_bytes),
                    "read({from}, {max_bytes})"
                );
            }
            Op::ReadOutOfRange { above } => {
                let from = if above {
                    model.next + 1
                } else if model.start > 0 {
                    model.start - 1
                } else {
                    model.next + 5
                };
                assert!(matches!(
                    h.log().read(from, 100),
                    Err(LogError::OffsetOutOfRange { .. })
                ));
            }
            Op::ReadByTime { pick } => {
                let now = h.clock.0.load(std::sync::atomic::Ordering::SeqCst);
                let ts = T0 - 100 + pick.rem_euclid(now - T0 + 700);
                assert_eq!(
                    h.log().offset_for_timestamp(ts).expect("by time"),
                    model.expected_time(ts),
                    "offset_for_timestamp({ts})"
                );
            }
            Op::Retention { max_bytes } => {
                let before = h.log().segments();
                let deleted = h
                    .log()
                    .apply_retention(&RetentionPolicy {
                        max_age: None,
                        max_bytes: Some(max_bytes),
                    })
                    .expect("retention");
                check_retention(&h, &mut model, &before, &deleted);
                let after: u64 = h.log().segments().iter().map(|s| s.size_bytes).sum();
                assert!(after <= max_bytes || h.log().segments().len() <= 1);
                if let Some(last) = deleted.last() {
                    let last_size = before
                        .iter()
                        .find(|s| s.base_offset == *last)
                        .map(|s| s.size_bytes)
                        .unwrap_or(0);
                    assert!(after + last_size > max_bytes, "deleted no more than needed");
                }
            }
            Op::RetentionByAge { age_ms } => {
                let before = h.log().segments();
                let now = h.clock.0.load(std::sync::atomic::Ordering::SeqCst);
                let deleted = h
                    .log()
                    .apply_retention(&RetentionPolicy {
                        max_age: Some(Duration::from_millis(age_ms)),
                        max_bytes: None,
                    })
                    .expect("retention");
                for base in &deleted {
                    let s = before
                        .iter()
                        .find(|s| s.base_offset == *base)
                        .expect("known");
                    assert!(
                        now - s.max_timestamp > age_ms as i64,
                        "only old segments go"
                    );
                }
                if let Some(oldest) = h.log().segments().first()
                    && h.log().segments().len() > 1
                {
                    assert!(
                        now - oldest.max_timestamp <= age_ms as i64,
                        "old segments went"
                    );
                }
                check_retention(&h, &mut model, &before, &deleted);
            }
            Op::Truncate { pick, inside } => {
                let multi: Vec<&MBatch> = model
                    .batches
                    .iter()
                    .filter(|b| b.timestamps.len() > 1)
                    .collect();
                if inside && !multi.is_empty() {
                    let b = multi[pick % multi.len()];
                    let err = h.log().truncate(b.base + 1).expect_err("inside a batch");
                    assert!(matches!(err, LogError::InvalidTruncation { .. }), "{err}");
                } else {
                    let cut = if model.batches.is_empty() {
                        model.next
                    } else {
                        let i = pick % (model.batches.len() + 1);
                        model.batches.get(i).map_or(model.next, |b| b.base)
                    };
                    h.log().truncate(cut).expect("truncate");
                    model.batches.retain(|b| b.base < cut);
                    model.next = cut;
                    if model.batches.is_empty() {
                        model.start = cut;
                    }
                }
            }
        }
        check_shape(h.log(), &model);
    }
    // Every batch still reads back in full, and verify finds nothing wrong.
    if model.next > model.start {
        assert_eq!(
            h.log().read(model.start, usize::MAX).expect("read all"),
            model.expected_read(model.start, usize::MAX)
        );
    }
    h.log().verify().expect("verify");
    let log = h.log.take().expect("log");
    log.close().expect("close");
}

fn check_retention(
    h: &Harness,
    model: &mut Model,
    before: &[strongbox_storage::log::SegmentInfo],
    deleted: &[u64],
) {
    let start = h.log().log_start_offset();
    assert!(start >= model.start, "log start never moves back");
    assert_eq!(deleted.len(), before.len() - h.log().segments().len());
    for (d, s) in deleted.iter().zip(before) {
        assert_eq!(*d, s.base_offset, "oldest segments go first");
    }
    let forgotten = h.keys.forgotten_ids();
    for s in before.iter().filter(|s| deleted.contains(&s.base_offset)) {
        assert!(
            forgotten.contains(&s.segment_id),
            "deleted segment's key forgotten"
        );
        let key = h.dir.path().join(format!("{:020}.key", s.base_offset));
        let log = h.dir.path().join(format!("{:020}.log", s.base_offset));
        assert!(
            !key.exists() && !log.exists(),
            "files of deleted segment gone"
        );
    }
    model.batches.retain(|b| b.base >= start);
    model.start = start;
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        3 => Just(Durability::None),
        1 => Just(Durability::Fsync),
        1 => Just(Durability::Interval(Duration::from_millis(3))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 40,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(
        ops in prop::collection::vec(op(), 1..70),
        segment_bytes in prop_oneof![Just(400u64), Just(900), Just(2500), Just(1 << 20)],
        index_interval in prop_oneof![Just(1u64), Just(120), Just(700)],
        durability in durability(),
    ) {
        run(ops, segment_bytes, index_interval, durability);
    }
}

/// A fixed sequence that exercises every operation, so a regression shows
/// up even with few random cases.
#[test]
fn scripted_sequence_matches_model() {
    let ops = vec![
        Op::Append(vec![(0, 10), (5, 20)]),
        Op::Append(vec![(1, 100)]),
        Op::Read {
            pick: 1,
            max_bytes: 1,
        },
        Op::Append(vec![(2, 150), (3, 150), (4, 150)]),
        Op::Roll,
        Op::Append(vec![(300, 5)]),
        Op::Reopen { clean: false },
        Op::Append(vec![(-30, 50)]),
        Op::ReadByTime { pick: 120 },
        Op::Advance(1200),
        Op::Append(vec![(0, 1)]),
        Op::Reopen { clean: true },
        Op::Truncate {
            pick: 2,
            inside: false,
        },
        Op::Append(vec![(7, 7), (8, 8)]),
        Op::Truncate {
            pick: 0,
            inside: true,
        },
        Op::Retention { max_bytes: 600 },
        Op::Read {
            pick: 0,
            max_bytes: 10_000,
        },
        Op::RetentionByAge { age_ms: 100 },
        Op::Truncate {
            pick: 0,
            inside: false,
        },
        Op::Append(vec![(9, 9)]),
        Op::ReadOutOfRange { above: true },
    ];
    run(ops, 400, 1, Durability::None);
    run(
        vec![
            Op::Append(vec![(0, 10)]),
            Op::Append(vec![(0, 10)]),
            Op::Reopen { clean: false },
            Op::Read {
                pick: 0,
                max_bytes: 0,
            },
        ],
        400,
        120,
        Durability::Fsync,
    );
}
