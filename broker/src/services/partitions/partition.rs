//! One partition of a topic: its encrypted log, its idempotent-producer
//! table, and what subscribers wait on.
//!
//! Every storage call from async code goes through the gateway
//! (`gateway.rs`): appends through the partition's writer queue, drained
//! on the blocking pool, which checks sequences and writes under the
//! producer table (so a retry can never race its original); reads and
//! lookups on the blocking pool. The wait for durability is not part of
//! the write: while one batch waits for its fsync the next is already
//! being written, and one fsync covers both (group commit in the log).
//!
//! The high watermark is the log's own: subscribers read below
//! [`PartitionLog::readable_end`] and wait on the log's watermark
//! subscription, which only moves past a batch once that batch is durable
//! under the topic's policy, so a subscriber never sees a record that a
//! crash could take back.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::model::PartitionState;
use strongbox_storage::keys::KeyError;
use strongbox_storage::log::{Durable, LogError, LogHealth, PartitionLog, WatermarkSubscription};

use crate::error::BrokerError;
use crate::services::partitions::gateway::{
    self, AppendDone, AppendJob, AppendQueue, QueuedAppend,
};
use crate::services::partitions::producers::{ProducerTable, SequenceCheck};

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
    /// Only the writer (a drain task, or the partition watch's resync)
    /// takes it, on the blocking pool.
    producers: std::sync::Mutex<ProducerTable>,
    /// Appends waiting for the writer.
    appends: AppendQueue,
    closed: std::sync::atomic::AtomicBool,
    /// Why the partition refuses writes until an operator recovers it
    /// (see `integrity.rs`); `None` when it takes writes.
    read_only: std::sync::RwLock<Option<String>>,
    /// The log's truncation count the producer table was built for: a
    /// log that cut records after a failed sync needs the table rebuilt.
    producers_built_at: AtomicU64,
}

/// A batch the writer handled: written (durable later), or a retry of one
/// already written.
#[derive(Debug)]
pub struct Written {
    base_offset: u64,
    state: PendingState,
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
    Written { durable: Durable },
    Duplicate,
}

/// An append queued for a partition's writer: resolves to the
/// [`PendingAppend`] once the batch is written (or refused).
#[derive(Debug)]
pub struct QueuedWrite {
    partition: Arc<Partition>,
    rx: QueuedAppend,
}

impl QueuedWrite {
    /// Waits for the writer.
    ///
    /// # Errors
    ///
    /// As [`Partition::begin_append`].
    pub async fn written(self) -> Result<PendingAppend, BrokerError> {
        let w = self.rx.await.map_err(|_| gateway::dropped())??;
        Ok(PendingAppend {
            partition: self.partition,
            base_offset: w.base_offset,
            state: w.state,
        })
    }
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
            PendingState::Written { durable } => {
                // The log publishes the high watermark itself, before it
                // resolves the waiter.
                durable.await.map_err(|e| p.storage_error(&e))?;
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
        let built_at = log.truncations();
        Arc::new(Self {
            topic,
            index,
            dir,
            log,
            producers_built_at: AtomicU64::new(built_at),
            producers: std::sync::Mutex::new(producers),
            appends: AppendQueue::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            read_only: std::sync::RwLock::new(None),
        })
    }

    /// Why the partition is read-only, when it is.
    pub fn read_only_reason(&self) -> Option<String> {
        self.read_only
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the partition read-only for `reason`, or writable again.
    pub fn set_read_only(&self, reason: Option<String>) {
        *self
            .read_only
            .write()
            .unwrap_or_else(PoisonError::into_inner) = reason;
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

    /// The underlying log. Its methods block: from async code, go through
    /// the methods of this type (the gateway) instead.
    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// Gives up the partition for its log (to close it at shutdown).
    pub fn into_log(self) -> PartitionLog {
        self.log
    }

    /// Offset after the last durable record that can be read: subscribers
    /// read below it.
    pub fn high_watermark(&self) -> u64 {
        self.log.readable_end()
    }

    /// Oldest retained offset.
    pub fn log_start_offset(&self) -> u64 {
        self.log.log_start_offset()
    }

    /// A subscription that wakes whenever the log's high watermark moves,
    /// and ends when the partition is closed.
    pub fn watch_high_watermark(&self) -> WatermarkSubscription {
        self.log.subscribe_watermark()
    }

    pub(crate) fn appends(&self) -> &AppendQueue {
        &self.appends
    }

    /// Writes a validated batch, deduplicating idempotent retries, and
    /// returns what to wait on before acknowledging it.
    ///
    /// Callers issue `begin_append` in the order batches arrived on a
    /// stream (the partition's writer checks sequences in the order
    /// appends were queued) and may then wait on several
    /// [`PendingAppend`]s at once: one fsync covers every batch written
    /// meanwhile.
    ///
    /// `min_epoch` is the producer's current epoch from the producer
    /// registry (0 for batches without a producer stamp).
    ///
    /// # Errors
    ///
    /// `partition_read_only`, `out_of_order_sequence`, `producer_fenced`,
    /// or a storage failure (`partition_unavailable`, `key_unavailable`).
    pub async fn begin_append(
        self: &Arc<Self>,
        batch: &RecordBatch,
        min_epoch: u16,
    ) -> Result<PendingAppend, BrokerError> {
        self.queue_append(batch.clone(), min_epoch).written().await
    }

    /// Queues `batch` for the partition's writer and returns at once: the
    /// producer stream queues batch after batch in arrival order and waits
    /// for each answer in that order. Must be called from within a tokio
    /// runtime.
    pub fn queue_append(self: &Arc<Self>, batch: RecordBatch, min_epoch: u16) -> QueuedWrite {
        QueuedWrite {
            partition: Arc::clone(self),
            rx: gateway::submit_append(self, batch, min_epoch),
        }
    }

    /// The writer's round: every queued append, in order, under the
    /// producer table. Blocking; runs on the gateway's drain task.
    pub(crate) fn write_appends(&self, jobs: Vec<AppendJob>) -> Vec<AppendDone> {
        let mut producers = self
            .producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        jobs.into_iter()
            .map(|job| {
                let written = self.write_locked(&mut producers, &job.batch, job.min_epoch);
                (job.reply, written)
            })
            .collect()
    }

    fn write_locked(
        &self,
        producers: &mut ProducerTable,
        batch: &RecordBatch,
        min_epoch: u16,
    ) -> Result<Written, BrokerError> {
        let header = *batch.header();
        if let Some(reason) = self.read_only_reason() {
            return Err(BrokerError::new(
                ErrorCode::PartitionReadOnly,
                format!("{}/{} is {reason}", self.topic, self.index),
            ));
        }
        if !matches!(self.log.health(), LogHealth::Ok) {
            // A fenced log resumes first, so the sequence check below sees
            // what the log holds after it.
            self.log
                .prepare_append()
                .map_err(|e| self.storage_error(&e))?;
        }
        self.resync_locked(producers)?;
        if let Some(stamp) = header.producer {
            match producers.check(&stamp, header.record_count, min_epoch) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate { base_offset } => {
                    return Ok(Written {
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
        Ok(Written {
            base_offset: appended.base_offset,
            state: PendingState::Written {
                durable: appended.durable,
            },
        })
    }

    /// Rebuilds the producer table when the log cut records (after a
    /// failed sync), so retries of the cut batches are appended again
    /// rather than taken as duplicates of records that are gone. (Readers
    /// need nothing: the log lowered its high watermark itself, and
    /// [`PartitionLog::readable_end`] stops at the last stored record.)
    /// Blocking (the watch's pass).
    pub fn resync(&self) {
        if self
            .producers_built_at
            .load(std::sync::atomic::Ordering::Acquire)
            == self.log.truncations()
        {
            return;
        }
        let mut producers = self
            .producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        *producers = crate::services::partitions::topics::rebuild_producers(&self.log)
            .map_err(|e| self.storage_error(&e))?;
        self.producers_built_at
            .store(truncations, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Marks the partition closed (its topic was deleted): live
    /// subscribers wake up and end.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.log.end_subscriptions();
    }

    /// True once the partition's topic was deleted.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn wait_durable(&self, offset: u64) -> Result<(), BrokerError> {
        let mut sub = self.log.subscribe_watermark();
        loop {
            sub.mark_seen();
            if self.log.high_watermark() > offset {
                return Ok(());
            }
            sub.changed().await.map_err(|_| {
                BrokerError::new(
                    ErrorCode::ShuttingDown,
                    "partition closed while waiting for durability",
                )
            })?;
        }
    }

    /// Whole batches starting with the one that holds `from`, below the
    /// high watermark, up to about `max_bytes`. Blocking: call it from a
    /// blocking context.
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
    /// Blocking: from async code use [`Partition::deliver`].
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
    /// or the high watermark when there is none. Blocking: from async code
    /// use [`Partition::find_timestamp`].
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

    /// [`Partition::read_for_delivery`] on the blocking pool; data keys it
    /// unwraps are audited as `principal`'s.
    ///
    /// # Errors
    ///
    /// As [`Partition::read_for_delivery`].
    pub async fn deliver(
        self: &Arc<Self>,
        principal: &str,
        from: u64,
        max_bytes: usize,
    ) -> Result<Delivery, BrokerError> {
        let (p, principal) = (Arc::clone(self), principal.to_owned());
        gateway::blocking(move || {
            crate::audit::with_principal(&principal, || p.read_for_delivery(from, max_bytes))
        })
        .await?
    }

    /// [`Partition::offset_for_timestamp`] on the blocking pool; data keys
    /// it unwraps are audited as `principal`'s.
    ///
    /// # Errors
    ///
    /// As [`Partition::read`].
    pub async fn find_timestamp(
        self: &Arc<Self>,
        principal: &str,
        timestamp: i64,
    ) -> Result<u64, BrokerError> {
        let (p, principal) = (Arc::clone(self), principal.to_owned());
        gateway::blocking(move || {
            crate::audit::with_principal(&principal, || p.offset_for_timestamp(timestamp))
        })
        .await?
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
