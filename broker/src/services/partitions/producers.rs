//! Idempotent-producer state of one partition.
//!
//! A producer stamps each batch with `(producer id, epoch, base sequence)`.
//! Per partition the broker remembers, for each producer, its epoch and its
//! last few batches, so that:
//!
//! - a retried batch that was already appended is acknowledged again with
//!   its original offset instead of being written twice;
//! - a batch that skips sequence numbers is refused (`out_of_order_sequence`),
//!   so nothing is silently lost between two accepted batches;
//! - a batch from an older epoch is refused (`producer_fenced`): a newer
//!   instance of the same producer has taken over.
//!
//! The table is rebuilt on start by replaying the partition's batch headers
//! (see `Partition::open`), so the guarantees survive a broker restart.

use std::collections::{HashMap, VecDeque};

use strongbox_cluster::{MetaCommand, MetaResponse};
use strongbox_protocol::batch::ProducerStamp;

use crate::error::BrokerError;
use crate::services::metadata::Metadata;

/// Batches remembered per producer and partition for answering retries: at
/// least the most a producer stream may have in flight
/// (`listener.max_in_flight` is capped at this), so every batch a producer
/// re-sends after a reconnect is recognised.
pub const RECENT_BATCHES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeqRange {
    first: u32,
    last: u32,
    base_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: u16,
    recent: VecDeque<SeqRange>,
}

/// What to do with a stamped batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// Already appended at `base_offset`: acknowledge again, do not append.
    Duplicate {
        /// Where it was appended.
        base_offset: u64,
    },
    /// The sequence does not follow the producer's last batch.
    OutOfOrder {
        /// The sequence the broker expected.
        expected: u32,
        /// The sequence received.
        got: u32,
    },
    /// The producer's epoch is older than the current one.
    Fenced {
        /// The current epoch.
        current: u16,
        /// The epoch received.
        got: u16,
    },
}

/// Producer state of one partition.
#[derive(Debug, Default, Clone)]
pub struct ProducerTable {
    entries: HashMap<u64, ProducerEntry>,
}

impl ProducerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no producer is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides what to do with a batch of `record_count` records stamped
    /// `stamp`. `min_epoch` is the producer's current epoch as registered by
    /// `InitProducer` (fencing instances that have not written here yet).
    pub fn check(&self, stamp: &ProducerStamp, record_count: u32, min_epoch: u16) -> SequenceCheck {
        let last = match last_sequence(stamp, record_count) {
            Some(last) => last,
            None => {
                return SequenceCheck::OutOfOrder {
                    expected: 0,
                    got: stamp.base_sequence,
                };
            }
        };
        let current = self
            .entries
            .get(&stamp.producer_id)
            .map_or(min_epoch, |e| e.epoch.max(min_epoch));
        if stamp.epoch < current {
            return SequenceCheck::Fenced {
                current,
                got: stamp.epoch,
            };
        }
        let Some(entry) = self.entries.get(&stamp.producer_id) else {
            // First batch this partition sees from the producer: whatever
            // came before has been retained away or was never written here.
            return SequenceCheck::Append;
        };
        if stamp.epoch > entry.epoch {
            // A new epoch starts its sequences again at zero.
            return if stamp.base_sequence == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder {
                    expected: 0,
                    got: stamp.base_sequence,
                }
            };
        }
        let expected = entry
            .recent
            .back()
            .and_then(|r| r.last.checked_add(1))
            .unwrap_or(0);
        if stamp.base_sequence == expected {
            return SequenceCheck::Append;
        }
        // Not the next batch: a retry of a recent one, or a gap.
        match entry
            .recent
            .iter()
            .rev()
            .find(|r| r.first == stamp.base_sequence && r.last == last)
        {
            Some(hit) => SequenceCheck::Duplicate {
                base_offset: hit.base_offset,
            },
            None => SequenceCheck::OutOfOrder {
                expected,
                got: stamp.base_sequence,
            },
        }
    }

    /// Records that a batch stamped `stamp` was appended at `base_offset`.
    pub fn record(&mut self, stamp: &ProducerStamp, record_count: u32, base_offset: u64) {
        let Some(last) = last_sequence(stamp, record_count) else {
            return;
        };
        let entry = self
            .entries
            .entry(stamp.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: stamp.epoch,
                recent: VecDeque::new(),
            });
        if stamp.epoch > entry.epoch {
            entry.epoch = stamp.epoch;
            entry.recent.clear();
        }
        entry.recent.push_back(SeqRange {
            first: stamp.base_sequence,
            last,
            base_offset,
        });
        while entry.recent.len() > RECENT_BATCHES {
            entry.recent.pop_front();
        }
    }
}

fn last_sequence(stamp: &ProducerStamp, record_count: u32) -> Option<u32> {
    stamp
        .base_sequence
        .checked_add(record_count.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(epoch: u16, seq: u32) -> ProducerStamp {
        ProducerStamp {
            producer_id: 7,
            epoch,
            base_sequence: seq,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut t = ProducerTable::new();
        assert_eq!(t.check(&stamp(0, 0), 3, 0), SequenceCheck::Append);
        t.record(&stamp(0, 0), 3, 100);
        assert_eq!(t.check(&stamp(0, 3), 2, 0), SequenceCheck::Append);
        t.record(&stamp(0, 3), 2, 103);
        assert_eq!(
            t.check(&stamp(0, 0), 3, 0),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            t.check(&stamp(0, 3), 2, 0),
            SequenceCheck::Duplicate { base_offset: 103 }
        );
    }

    #[test]
    fn gaps_and_overlaps_are_out_of_order() {
        let mut t = ProducerTable::new();
        t.record(&stamp(0, 0), 3, 0);
        assert_eq!(
            t.check(&stamp(0, 4), 1, 0),
            SequenceCheck::OutOfOrder {
                expected: 3,
                got: 4
            }
        );
        assert_eq!(
            t.check(&stamp(0, 1), 5, 0),
            SequenceCheck::OutOfOrder {
                expected: 3,
                got: 1
            }
        );
    }

    #[test]
    fn older_epochs_are_fenced_and_new_epochs_restart_at_zero() {
        let mut t = ProducerTable::new();
        t.record(&stamp(2, 0), 1, 0);
        assert_eq!(
            t.check(&stamp(1, 1), 1, 0),
            SequenceCheck::Fenced { current: 2, got: 1 }
        );
        // The registry knows of epoch 3 before this partition saw it.
        assert_eq!(
            t.check(&stamp(2, 1), 1, 3),
            SequenceCheck::Fenced { current: 3, got: 2 }
        );
        assert_eq!(
            t.check(&stamp(3, 5), 1, 3),
            SequenceCheck::OutOfOrder {
                expected: 0,
                got: 5
            }
        );
        assert_eq!(t.check(&stamp(3, 0), 1, 3), SequenceCheck::Append);
        t.record(&stamp(3, 0), 1, 1);
        assert_eq!(t.check(&stamp(3, 1), 1, 3), SequenceCheck::Append);
    }

    #[test]
    fn sequence_overflow_is_refused_not_wrapped() {
        let t = ProducerTable::new();
        assert!(matches!(
            t.check(&stamp(0, u32::MAX), 2, 0),
            SequenceCheck::OutOfOrder { .. }
        ));
    }

    proptest! {
        /// A producer that sends batches in order, with arbitrary retries of
        /// recent batches interleaved, gets every batch appended exactly once
        /// and every retry acknowledged with the original offset.
        #[test]
        fn retries_never_append_twice(
            sizes in proptest::collection::vec(1u32..20, 1..40),
            retries in proptest::collection::vec((any::<bool>(), 0usize..64), 40),
        ) {
            let mut t = ProducerTable::new();
            let mut next_seq = 0u32;
            let mut next_offset = 0u64;
            let mut sent: Vec<(u32, u32, u64)> = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let s = stamp(0, next_seq);
                prop_assert_eq!(t.check(&s, *size, 0), SequenceCheck::Append);
                t.record(&s, *size, next_offset);
                sent.push((next_seq, *size, next_offset));
                next_seq += size;
                next_offset += u64::from(*size);
                let (retry, back) = retries[i % retries.len()];
                if retry && back < sent.len() {
                    let (seq, n, off) = sent[sent.len() - 1 - back];
                    prop_assert_eq!(
                        t.check(&stamp(0, seq), n, 0),
                        SequenceCheck::Duplicate { base_offset: off }
                    );
                }
            }
        }
    }
}

/// A producer id as issued: its current epoch and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedProducer {
    /// The newest epoch `InitProducer` issued.
    pub epoch: u16,
    /// The principal that obtained it; `None` for an id stored before ids
    /// were bound to principals, which nobody may use.
    pub principal: Option<String>,
}

impl IssuedProducer {
    /// True when `principal` may write with this id.
    pub fn is_owned_by(&self, principal: &str) -> bool {
        self.principal.as_deref() == Some(principal)
    }
}

/// What `InitProducer` did: the answer of a [`MetaCommand::InitProducer`].
pub use strongbox_cluster::ProducerOutcome as InitOutcome;

/// Producer ids, their current epochs and owners, from the metadata store
/// with an in-memory cache (the check runs on every stamped batch).
#[derive(Debug, Default)]
pub struct ProducerEpochs {
    cache: std::sync::Mutex<HashMap<u64, IssuedProducer>>,
}

impl ProducerEpochs {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<u64, IssuedProducer>> {
        // Entries are plain values: a poisoned map is still usable.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current epoch and owner of `producer_id`, or `None` when the
    /// broker never issued that id.
    ///
    /// # Errors
    ///
    /// The metadata store cannot be read.
    pub fn current(
        &self,
        meta: &strongbox_storage::meta::MetaStore,
        producer_id: u64,
    ) -> Result<Option<IssuedProducer>, strongbox_storage::meta::MetaError> {
        if let Some(issued) = self.cache().get(&producer_id) {
            return Ok(Some(issued.clone()));
        }
        let stored = meta.read(|view| view.producer(producer_id))?;
        let issued = stored.map(|record| IssuedProducer {
            epoch: record.epoch,
            principal: record.principal,
        });
        if let Some(issued) = &issued {
            self.cache().insert(producer_id, issued.clone());
        }
        Ok(issued)
    }

    /// Issues a new producer id with epoch 0 bound to `principal`, or bumps
    /// the epoch of `existing` (fencing older instances) when `principal`
    /// owns it: a [`MetaCommand::InitProducer`]. Durable before it returns.
    /// Runs on a blocking thread.
    ///
    /// # Errors
    ///
    /// The metadata store cannot be written.
    pub fn init(
        &self,
        metadata: &Metadata,
        existing: Option<u64>,
        principal: &str,
        now_ms: i64,
    ) -> Result<InitOutcome, BrokerError> {
        let answer = metadata.submit_blocking(MetaCommand::InitProducer {
            existing,
            principal: principal.to_owned(),
            now_ms,
        })?;
        let MetaResponse::Producer(outcome) = answer else {
            return Err(BrokerError::internal(
                "issuing a producer id",
                format!("unexpected answer {answer:?}"),
            ));
        };
        if let InitOutcome::Issued { producer_id, epoch } = outcome {
            self.note_issued(producer_id, epoch, principal);
        }
        Ok(outcome)
    }

    /// Records that `producer_id` now has `epoch` and belongs to
    /// `principal` (issued here, or through another node of the cluster).
    /// An epoch older than the one known is ignored.
    pub fn note_issued(&self, producer_id: u64, epoch: u16, principal: &str) {
        let mut cache = self.cache();
        if cache
            .get(&producer_id)
            .is_some_and(|known| known.epoch > epoch)
        {
            return;
        }
        cache.insert(
            producer_id,
            IssuedProducer {
                epoch,
                principal: Some(principal.to_owned()),
            },
        );
    }
}

#[cfg(test)]
mod binding_tests {
    use super::*;
    use strongbox_storage::meta::MetaStore;

    #[test]
    fn producer_ids_stay_bound_to_the_principal_that_obtained_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.redb");
        let (id, first) = {
            let meta = MetaStore::open(&path).expect("open");
            let metadata = Metadata::local(meta.clone());
            let epochs = ProducerEpochs::new();
            let InitOutcome::Issued { producer_id, epoch } =
                epochs.init(&metadata, None, "alice", 1).expect("init")
            else {
                panic!("no id issued");
            };
            assert_eq!(epoch, 0);
            // Another principal may not resume it, and trying does not
            // fence its owner.
            assert_eq!(
                epochs
                    .init(&metadata, Some(producer_id), "mallory", 2)
                    .expect("init"),
                InitOutcome::NotOwned
            );
            let issued = epochs
                .current(&meta, producer_id)
                .expect("read")
                .expect("known");
            assert_eq!(issued.epoch, 0);
            assert!(issued.is_owned_by("alice"));
            assert!(!issued.is_owned_by("mallory"));
            // Its owner may.
            assert_eq!(
                epochs
                    .init(&metadata, Some(producer_id), "alice", 3)
                    .expect("init"),
                InitOutcome::Issued {
                    producer_id,
                    epoch: 1
                }
            );
            assert_eq!(
                epochs
                    .init(&metadata, Some(producer_id + 100), "alice", 4)
                    .expect("init"),
                InitOutcome::Unknown
            );
            (producer_id, 1)
        };
        // The binding is durable: a restarted broker (fresh cache) knows it.
        let meta = MetaStore::open(&path).expect("reopen");
        let epochs = ProducerEpochs::new();
        let issued = epochs.current(&meta, id).expect("read").expect("known");
        assert_eq!(issued.epoch, first);
        assert_eq!(issued.principal.as_deref(), Some("alice"));
        assert_eq!(
            epochs
                .init(&Metadata::local(meta.clone()), Some(id), "mallory", 5)
                .expect("init"),
            InitOutcome::NotOwned
        );
    }

    #[test]
    fn an_epoch_issued_through_another_node_fences_here_and_never_goes_back() {
        let epochs = ProducerEpochs::new();
        let meta = MetaStore::in_memory().expect("meta");
        epochs.note_issued(9, 3, "alice");
        epochs.note_issued(9, 2, "alice");
        let issued = epochs.current(&meta, 9).expect("read").expect("known");
        assert_eq!(issued.epoch, 3, "an older epoch arriving late is ignored");
        epochs.note_issued(9, 4, "alice");
        let issued = epochs.current(&meta, 9).expect("read").expect("known");
        assert_eq!(issued.epoch, 4);
        assert!(issued.is_owned_by("alice"));
    }

    #[test]
    fn an_id_stored_without_an_owner_belongs_to_nobody() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = MetaStore::open(dir.path().join("meta.redb")).expect("open");
        let id = meta
            .write(|tx| {
                let id = tx.allocate_producer_id()?;
                tx.put_producer(
                    id,
                    &strongbox_storage::meta::ProducerRecord {
                        epoch: 3,
                        updated_at: 0,
                        principal: None,
                    },
                )?;
                Ok::<_, strongbox_storage::meta::MetaError>(id)
            })
            .expect("write");
        let epochs = ProducerEpochs::new();
        let issued = epochs.current(&meta, id).expect("read").expect("known");
        assert!(!issued.is_owned_by("alice"));
        assert_eq!(
            epochs
                .init(&Metadata::local(meta.clone()), Some(id), "alice", 1)
                .expect("init"),
            InitOutcome::NotOwned
        );
    }
}
