//! `RaftLog` against a model: random sequences of appends (record and
//! control entries), truncations, purges (inside the log and past its end)
//! and restarts (with and without a clean close) on real files; after each
//! step the log's entries, offsets and state equal the model's.

mod log_support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use strongbox_storage::log::raft::{RaftEntry, RaftLog};
use strongbox_storage::log::raft_format::{RaftFrameKind, RaftLogId};
use strongbox_storage::log::{Durability, LogEnv};

use log_support::{TestKeys, config, sized_batch};

#[derive(Debug, Clone)]
enum Op {
    /// Append this many entries (kinds chosen by the seed) in a new term
    /// or the current one.
    Append {
        count: usize,
        seed: u8,
        new_term: bool,
    },
    /// Keep this fraction (in 1/16) of the entries held.
    Truncate {
        keep_sixteenths: u8,
    },
    /// Purge this fraction (in 1/16) of the entries held, or past the end.
    Purge {
        sixteenths: u8,
        past_end: bool,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..5, any::<u8>(), any::<bool>())
            .prop_map(|(count, seed, new_term)| Op::Append { count, seed, new_term }),
        1 => (0u8..17).prop_map(|keep_sixteenths| Op::Truncate { keep_sixteenths }),
        1 => (0u8..17, proptest::bool::weighted(0.2))
            .prop_map(|(sixteenths, past_end)| Op::Purge { sixteenths, past_end }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelEntry {
    log_id: RaftLogId,
    kind: RaftFrameKind,
    base_offset: u64,
    record_count: u32,
    payload: Bytes,
}

#[derive(Debug, Default)]
struct Model {
    entries: Vec<ModelEntry>,
    last_purged: Option<RaftLogId>,
    next_offset: u64,
    term: u64,
}

impl Model {
    fn next_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.log_id)
            .or(self.last_purged)
            .map_or(0, |l| l.index + 1)
    }
}

fn open(dir: &Path, keys: &Arc<TestKeys>) -> RaftLog {
    RaftLog::open(
        dir,
        config(0, 700, Durability::Fsync),
        keys.clone(),
        LogEnv::default(),
    )
    .expect("open")
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let mut log = Some(open(dir.path(), &keys));
    let mut model = Model {
        term: 1,
        ..Model::default()
    };
    for op in ops {
        let l = log.as_ref().expect("open log");
        match op {
            Op::Append {
                count,
                seed,
                new_term,
            } => {
                if new_term {
                    model.term += 1;
                }
                let mut batch = Vec::new();
                for i in 0..count {
                    let index = model.next_index();
                    let log_id = RaftLogId {
                        term: model.term,
                        node_id: 1,
                        index,
                    };
                    let (kind, payload, records) = match (usize::from(seed) + i) % 4 {
                        0 => (RaftFrameKind::Blank, Bytes::new(), 0),
                        1 => (
                            RaftFrameKind::Membership,
                            Bytes::from(format!("members-{index}")),
                            0,
                        ),
                        n => {
                            let b = sized_batch(1_700_000_000_000, n, 20 + i, seed);
                            (RaftFrameKind::Records, b.as_bytes().clone(), n as u32)
                        }
                    };
                    batch.push(RaftEntry {
                        log_id,
                        kind,
                        payload: payload.clone(),
                    });
                    let base_offset = model.next_offset;
                    model.next_offset += u64::from(records);
                    model.entries.push(ModelEntry {
                        log_id,
                        kind,
                        base_offset,
                        record_count: records,
                        payload,
                    });
                }
                l.append(batch).expect("append").wait().expect("durable");
            }
            Op::Truncate { keep_sixteenths } => {
                let keep = model.entries.len() * usize::from(keep_sixteenths) / 16;
                let keep_id = match keep {
                    0 => model.last_purged.map(|p| p.index),
                    k => model.entries.get(k - 1).map(|e| e.log_id.index),
                };
                if let Some(first_removed) = model.entries.get(keep) {
                    model.next_offset = first_removed.base_offset;
                }
                model.entries.truncate(keep);
                l.truncate_after(keep_id).expect("truncate");
            }
            Op::Purge {
                sixteenths,
                past_end,
            } => {
                if past_end {
                    let log_id = RaftLogId {
                        term: model.term,
                        node_id: 2,
                        index: model.next_index() + 3,
                    };
                    let start = model.next_offset + 100;
                    l.purge(log_id, Some(start)).expect("purge past the end");
                    model.entries.clear();
                    model.last_purged = Some(log_id);
                    model.next_offset = start;
                } else {
                    let n = model.entries.len() * usize::from(sixteenths) / 16;
                    if n > 0 {
                        let log_id = model.entries[n - 1].log_id;
                        l.purge(log_id, None).expect("purge");
                        model.entries.drain(..n);
                        model.last_purged = Some(log_id);
                    }
                }
            }
            Op::Reopen { clean } => {
                let old = log.take().expect("log");
                if clean {
                    old.close().expect("close");
                } else {
                    drop(old);
                }
                log = Some(open(dir.path(), &keys));
            }
        }
        let l = log.as_ref().expect("open log");
        let got: Vec<ModelEntry> = l
            .entries(0..u64::MAX)
            .expect("read")
            .into_iter()
            .map(|e| ModelEntry {
                log_id: e.log_id,
                kind: e.kind,
                base_offset: e.base_offset,
                record_count: e.record_count,
                payload: e.payload,
            })
            .collect();
        prop_assert_eq!(&got, &model.entries);
        let state = l.state();
        prop_assert_eq!(state.last_purged, model.last_purged);
        prop_assert_eq!(state.next_offset, model.next_offset);
        prop_assert_eq!(
            state.last_log_id(),
            model.entries.last().map(|e| e.log_id).or(model.last_purged)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_log_follows_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
