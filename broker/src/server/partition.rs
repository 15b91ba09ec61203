//! One partition of a topic: its encrypted log, its idempotent-producer
//! table, and the high watermark that wakes live subscribers.
//!
//! Appends to a partition are serialized by an async mutex that covers the
//! sequence check and the write (so a retry can never race its original),
//! but not the wait for durability: while one batch waits for its fsync the
//! next is already being written, and one fsync covers both (group commit
//! in the log).
//!
//! The high watermark published to subscribers only moves past a batch once
//! that batch is durable under the topic's policy, so a subscriber never
//! sees a record that a crash could take back.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::model::PartitionState;
use strongbox_storage::keys::KeyError;
use strongbox_storage::log::{Durable, LogError, LogHealth, PartitionLog};
use tokio::sync::{Mutex, watch};

use crate::server::error::BrokerError;
use crate::server::producers::{ProducerTable, SequenceCheck};

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// True when the batch had already been appended (an idempotent retry).
    pub duplicate: bool,
}

/// What a subscriber's read found.
#[derive(Debug)]
pub enum Delivery {
    /// Whole batches (none when caught up).
    Batches(Vec<(u64, Bytes)>),
    /// The read starts in damaged data, or in a segment whose data key was
    /// destroyed.
    Damaged(DamagedRange),
}

/// Offsets `[first, end)` of a partition that cannot be read.
#[derive(Debug, Clone)]
pub struct DamagedRange {
    /// The first offset that cannot be read.
    pub first: u64,
    /// The next offset that can be read again, when known.
    pub end: Option<u64>,
    /// The `data_damaged` (or `key_destroyed`) error, with the storage
    /// error's reason (not prefixed with the topic and partition).
    pub error: BrokerError,
}

/// A partition being served.
#[derive(Debug)]
pub struct Partition {
    /// Topic name, for messages.
    pub topic: String,
    /// Partition index.
    pub index: u32,
    /// The partition's directory.
    pub dir: PathBuf,
    log: PartitionLog,
    producers: Mutex<ProducerTable>,
    /// Offset after the last durable record.
    durable_end: watch::Sender<u64>,
    closed: std::sync::atomic::AtomicBool,
    /// Why the partition refuses writes until an operator recovers it
    /// (see `integrity.rs`); `None` when it takes writes.
    read_only: std::sync::RwLock<Option<String>>,
    /// The log's truncation count the producer table was built for: a
    /// log that cut records after a failed sync needs the table rebuilt.
    producers_built_at: AtomicU64,
}

/// A written batch waiting to become durable, or a retry of one.
#[derive(Debug)]
pub struct PendingAppend {
    partition: Arc<Partition>,
    base_offset: u64,
    state: PendingState,
}

#[derive(Debug)]
enum PendingState {
    Written { end: u64, durable: Durable },
    Duplicate,
}

impl PendingAppend {
    /// Waits until the batch is durable under the topic's policy.
    ///
    /// # Errors
    ///
    /// A storage failure while syncing (`partition_unavailable`).
    pub async fn complete(self) -> Result<AppendOutcome, BrokerError> {
        let p = &self.partition;
        match self.state {
            PendingState::Written { end, durable } => {
                durable.await.map_err(|e| p.storage_error(&e))?;
                p.durable_end.send_if_modified(|current| {
                    if end > *current {
                        *current = end;
                        true
                    } else {
                        false
                    }
                });
                Ok(AppendOutcome {
                    base_offset: self.base_offset,
                    duplicate: false,
                })
            }
            PendingState::Duplicate => {
                // The original may still be waiting for its fsync: ack the
                // retry only once the original is durable too.
                p.wait_durable(self.base_offset).await?;
                Ok(AppendOutcome {
                    base_offset: self.base_offset,
                    duplicate: true,
                })
            }
        }
    }
}

impl Partition {
    /// Serves an opened log. `producers` is the table rebuilt from the log.
    pub fn new(
        topic: String,
        index: u32,
        dir: PathBuf,
        log: PartitionLog,
        producers: ProducerTable,
    ) -> Arc<Self> {
        let end = log.high_watermark();
        let built_at = log.truncations();
        let (durable_end, _) = watch::channel(end);
        Arc::new(Self {
            topic,
            index,
            dir,
            log,
            producers_built_at: AtomicU64::new(built_at),
            producers: Mutex::new(producers),
            durable_end,
            closed: std::sync::atomic::AtomicBool::new(false),
            read_only: std::sync::RwLock::new(None),
        })
    }

    /// Why the partition is read-only, when it is.
    pub fn read_only_reason(&self) -> Option<String> {
        self.read_only
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes the partition read-only for `reason`, or writable again.
    pub fn set_read_only(&self, reason: Option<String>) {
        *self
            .read_only
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// The partition's state and, when it is not `ok`, why.
    pub fn state(&self) -> (PartitionState, Option<String>) {
        if let Some(reason) = self.read_only_reason() {
            return (PartitionState::ReadOnly, Some(reason));
        }
        match self.log.health() {
            LogHealth::Fenced { fault, reason, .. } => (
                PartitionState::Fenced,
                Some(format!(
                    "fenced ({}): {reason}; writes resume by themselves once the disk accepts them",
                    fault.name()
                )),
            ),
            _ => (PartitionState::Ok, None),
        }
    }

    /// The underlying log.
    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// Gives up the partition for its log (to close it at shutdown).
    pub fn into_log(self) -> PartitionLog {
        self.log
    }

    /// Offset after the last durable record: subscribers read below it.
    pub fn high_watermark(&self) -> u64 {
        *self.durable_end.borrow()
    }

    /// Oldest retained offset.
    pub fn log_start_offset(&self) -> u64 {
        self.log.log_start_offset()
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.durable_end.subscribe()
    }

    /// Writes a validated batch, deduplicating idempotent retries, and
    /// returns what to wait on before acknowledging it.
    ///
    /// Callers issue `begin_append` in the order batches arrived on a
    /// stream (it serializes on the partition, so sequences are checked in
    /// that order) and may then wait on several [`PendingAppend`]s at once:
    /// one fsync covers every batch written meanwhile.
    ///
    /// `min_epoch` is the producer's current epoch from the producer
    /// registry (0 for batches without a producer stamp).
    ///
    /// # Errors
    ///
    /// `out_of_order_sequence`, `producer_fenced`, or a storage failure
    /// (`partition_unavailable`, `key_unavailable`).
    pub async fn begin_append(
        self: &Arc<Self>,
        batch: &RecordBatch,
        min_epoch: u16,
    ) -> Result<PendingAppend, BrokerError> {
        let header = *batch.header();
        if let Some(reason) = self.read_only_reason() {
            return Err(BrokerError::new(
                ErrorCode::PartitionReadOnly,
                format!("{}/{} is {reason}", self.topic, self.index),
            ));
        }
        let mut producers = self.producers.lock().await;
        if !matches!(self.log.health(), LogHealth::Ok) {
            // A fenced log resumes first, so the sequence check below sees
            // what the log holds after it.
            self.log
                .prepare_append()
                .map_err(|e| self.storage_error(&e))?;
        }
        self.resync_locked(&mut producers)?;
        if let Some(stamp) = header.producer {
            match producers.check(&stamp, header.record_count, min_epoch) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate { base_offset } => {
                    return Ok(PendingAppend {
                        partition: self.clone(),
                        base_offset,
                        state: PendingState::Duplicate,
                    });
                }
                SequenceCheck::OutOfOrder { expected, got } => {
                    return Err(BrokerError::new(
                        ErrorCode::OutOfOrderSequence,
                        format!(
                            "producer {} on {}/{}: expected sequence {expected}, got {got}",
                            stamp.producer_id, self.topic, self.index
                        ),
                    ));
                }
                SequenceCheck::Fenced { current, got } => {
                    return Err(BrokerError::new(
                        ErrorCode::ProducerFenced,
                        format!(
                            "producer {} epoch {got} is fenced by epoch {current}",
                            stamp.producer_id
                        ),
                    ));
                }
            }
        }
        let appended = self.log.append(batch).map_err(|e| self.storage_error(&e))?;
        if let Some(stamp) = header.producer {
            producers.record(&stamp, header.record_count, appended.base_offset);
        }
        Ok(PendingAppend {
            partition: self.clone(),
            base_offset: appended.base_offset,
            state: PendingState::Written {
                end: appended.last_offset.saturating_add(1),
                durable: appended.durable,
            },
        })
    }

    /// Brings what the partition derives from its newest records in step
    /// when its log cut records (after a failed sync): the producer table
    /// is rebuilt, so retries of the cut batches are appended again rather
    /// than taken as duplicates of records that are gone, and the high
    /// watermark readers wait on is brought back to the last stored record,
    /// so a reader positioned in the cut range waits for new records rather
    /// than reading an empty range. Blocking (the watch's pass).
    pub fn resync(&self) {
        if self
            .producers_built_at
            .load(std::sync::atomic::Ordering::Acquire)
            == self.log.truncations()
        {
            return;
        }
        let mut producers = self.producers.blocking_lock();
        if let Err(e) = self.resync_locked(&mut producers) {
            tracing::error!(topic = %self.topic, partition = self.index, error = %e.message, "cannot rebuild producer state after a cut");
        }
    }

    fn resync_locked(&self, producers: &mut ProducerTable) -> Result<(), BrokerError> {
        let truncations = self.log.truncations();
        if self
            .producers_built_at
            .load(std::sync::atomic::Ordering::Acquire)
            == truncations
        {
            return Ok(());
        }
        *producers = crate::server::topics::rebuild_producers(&self.log)
            .map_err(|e| self.storage_error(&e))?;
        let stored = self.log.records_end();
        self.durable_end.send_if_modified(|hw| {
            let lower = (*hw).min(stored);
            let changed = lower != *hw;
            *hw = lower;
            changed
        });
        self.producers_built_at
            .store(truncations, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Marks the partition closed (its topic was deleted): live
    /// subscribers wake up and end.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.durable_end.send_modify(|_| {});
    }

    /// True once the partition's topic was deleted.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn wait_durable(&self, offset: u64) -> Result<(), BrokerError> {
        let mut rx = self.durable_end.subscribe();
        rx.wait_for(|end| *end > offset)
            .await
            .map(|_| ())
            .map_err(|_| {
                BrokerError::new(
                    ErrorCode::ShuttingDown,
                    "partition closed while waiting for durability",
                )
            })
    }

    /// Whole batches starting with the one that holds `from`, below the
    /// high watermark, up to about `max_bytes`.
    ///
    /// # Errors
    ///
    /// `data_damaged` when the read starts in damaged data,
    /// `partition_unavailable` or `key_unavailable` when the log cannot be
    /// read.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<(u64, Bytes)>, BrokerError> {
        let end = self.high_watermark();
        if from >= end {
            return Ok(Vec::new());
        }
        let mut batches = self
            .log
            .read(from, max_bytes)
            .map_err(|e| self.storage_error(&e))?;
        batches.retain(|(base, _)| *base < end);
        Ok(batches)
    }

    /// As [`Partition::read`], for a subscriber: a read that starts in
    /// damaged data, or in a segment whose data key was destroyed
    /// (crypto-shredded), returns the range that cannot be read instead of
    /// failing, so the subscription can report it for this partition and go
    /// on with the others. Both are permanent: retrying cannot read them.
    ///
    /// # Errors
    ///
    /// As [`Partition::read`], for failures other than damaged data and
    /// destroyed keys.
    pub fn read_for_delivery(&self, from: u64, max_bytes: usize) -> Result<Delivery, BrokerError> {
        let end = self.high_watermark();
        if from >= end {
            return Ok(Delivery::Batches(Vec::new()));
        }
        match self.log.read(from, max_bytes) {
            Ok(mut batches) => {
                batches.retain(|(base, _)| *base < end);
                Ok(Delivery::Batches(batches))
            }
            Err(e) => match e.damaged_range() {
                Some((first, end)) => {
                    // Logged with the partition's name; the subscriber's
                    // report names the partition itself.
                    let code = self.storage_error(&e).code;
                    Ok(Delivery::Damaged(DamagedRange {
                        first,
                        end,
                        error: BrokerError::redacted(code, &e.to_string()),
                    }))
                }
                None if is_key_destroyed(&e) => {
                    let code = self.storage_error(&e).code;
                    Ok(Delivery::Damaged(DamagedRange {
                        first: from,
                        end: self.shredded_end(from),
                        error: BrokerError::redacted(code, &e.to_string()),
                    }))
                }
                None => Err(self.storage_error(&e)),
            },
        }
    }

    /// Where the records of the segment holding `from` end, when that
    /// segment is sealed: a read failing for a destroyed key fails in the
    /// segment it starts in (reads stop before a failing segment once they
    /// hold batches), and the next segment was written under another key.
    fn shredded_end(&self, from: u64) -> Option<u64> {
        self.log
            .segments()
            .into_iter()
            .find(|s| s.base_offset <= from && from < s.next_offset)
            .filter(|s| s.sealed)
            .map(|s| s.next_offset)
    }

    /// The first offset whose record timestamp is at or after `timestamp`,
    /// or the high watermark when there is none.
    ///
    /// # Errors
    ///
    /// As [`Partition::read`].
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<u64, BrokerError> {
        let found = self
            .log
            .offset_for_timestamp(timestamp)
            .map_err(|e| self.storage_error(&e))?;
        Ok(found
            .unwrap_or_else(|| self.high_watermark())
            .min(self.high_watermark()))
    }

    fn storage_error(&self, e: &LogError) -> BrokerError {
        tracing::error!(topic = %self.topic, partition = self.index, error = %e, "partition storage error");
        let mapped = BrokerError::from(e);
        BrokerError::new(
            mapped.code,
            format!("{}/{}: {}", self.topic, self.index, mapped.message),
        )
    }
}

/// True when `e` says a segment's data key was destroyed.
fn is_key_destroyed(e: &LogError) -> bool {
    matches!(
        e,
        LogError::Key {
            source: KeyError::Destroyed(_),
            ..
        }
    )
}
