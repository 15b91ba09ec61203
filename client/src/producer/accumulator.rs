//! Collects records into one open batch per partition and decides when a
//! batch closes.
//!
//! A full batch closes at once. A batch that is not full closes by one of
//! two rules:
//!
//! - **Adaptive** (linger zero, the default): as soon as its partition's
//!   pipeline has room, i.e. fewer than `pipeline` batches of the
//!   partition are queued or in flight. While the pipeline is full, records
//!   join the open batch, which grows until an earlier batch is answered
//!   (or it is full). An idle producer sends a record at once; a busy one
//!   sends bigger batches, without a timer. The driver asks for the
//!   decision ([`Accumulator::close_with_room`]) after every burst of
//!   records and every answer, since only those change it.
//! - **Linger** (a nonzero linger, opt-in): `linger` after its first
//!   record, whatever the pipeline holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strongbox_protocol::batch::{self, BATCH_HEADER_LEN, BatchBuilder};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::producer::batch::{Completion, Payload, ReadyBatch, TopicPartition};

/// One record, ready to be appended.
#[derive(Debug)]
pub(crate) struct PendingRecord {
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) value: Bytes,
    pub(crate) completion: Completion,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl PendingRecord {
    /// Bytes the record adds to a batch.
    pub(crate) fn encoded_len(&self) -> usize {
        batch::record_len(
            self.key.as_ref().map_or(0, Bytes::len),
            self.headers.iter().map(|(n, v)| (n.len(), v.len())),
            self.value.len(),
        )
    }
}

#[derive(Debug)]
struct OpenBatch {
    id: u64,
    builder: BatchBuilder,
    completions: Vec<Completion>,
    permits: Vec<OwnedSemaphorePermit>,
    opened_at: Instant,
    /// The builder's base timestamp: record timestamps are `i32` deltas
    /// from it.
    base_timestamp: i64,
}

/// The open batches of a producer.
#[derive(Debug)]
pub(crate) struct Accumulator {
    open: HashMap<TopicPartition, OpenBatch>,
    /// Close a batch once it holds this many bytes.
    batch_bytes: usize,
    /// The broker's limit on one batch.
    max_batch: usize,
    linger: Duration,
    next_id: u64,
    /// Reused lookup key, so appending a record allocates no key.
    key: TopicPartition,
    /// Bytes of the last batch closed: a new batch starts with that much
    /// room, so a busy producer fills batches without growing (copying)
    /// them and an idle one does not hold full-size buffers.
    size_hint: usize,
    /// Adaptive rule only: partitions whose open batch may be closable
    /// (opened since the last decision, or whose pipeline just shrank).
    /// Looking at these instead of every open batch keeps the decision
    /// cheap with many partitions.
    candidates: Vec<TopicPartition>,
}

impl Accumulator {
    pub(crate) fn new(batch_bytes: usize, max_batch: usize, linger: Duration) -> Self {
        Self {
            open: HashMap::new(),
            batch_bytes: batch_bytes.max(1),
            max_batch,
            linger,
            next_id: 1,
            key: (String::new(), 0),
            size_hint: 0,
            candidates: Vec::new(),
        }
    }

    /// True when batches close by the adaptive rule (linger zero), false
    /// when by linger.
    pub(crate) fn adaptive(&self) -> bool {
        self.linger.is_zero()
    }

    /// Notes that the pipeline of `tp` shrank (an answer came): its open
    /// batch is looked at by the next [`Accumulator::close_with_room`].
    pub(crate) fn pipeline_shrank(&mut self, topic: &str, partition: u32) {
        if self.adaptive() {
            self.key.0.clear();
            self.key.0.push_str(topic);
            self.key.1 = partition;
            if self.open.contains_key(&self.key) {
                self.candidates.push(self.key.clone());
            }
        }
    }

    /// Adaptive rule: closes the open batches (of the candidate partitions,
    /// or of every partition when `all`) whose partition `has_room`, in the
    /// order they were opened. Nothing under the linger rule.
    pub(crate) fn close_with_room(
        &mut self,
        all: bool,
        mut has_room: impl FnMut(&str, u32) -> bool,
    ) -> Vec<ReadyBatch> {
        if !self.adaptive() {
            return Vec::new();
        }
        let look_at: Vec<TopicPartition> = if all {
            self.candidates.clear();
            self.open.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.candidates)
        };
        let mut out: Vec<ReadyBatch> = look_at
            .iter()
            .filter(|tp| has_room(&tp.0, tp.1))
            .filter_map(|tp| close(&mut self.open, tp))
            .collect();
        out.sort_by_key(|b| b.id);
        self.note_closed(&out);
        out
    }

    /// Lowers or raises the broker's limit (after a reconnect).
    pub(crate) fn set_max_batch(&mut self, max_batch: usize) {
        self.max_batch = max_batch;
    }

    /// True when no batch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The id the next batch will get; every batch opened so far has a
    /// smaller one.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Appends a record to its partition's open batch. Returns the batches
    /// this closed (the previous one when the record does not fit, and
    /// this one when it is now full).
    ///
    /// # Errors
    ///
    /// The record back with [`ClientError::InvalidRecord`] when it alone
    /// exceeds the broker's batch limit or a field is too long; nothing is
    /// appended.
    pub(crate) fn append(
        &mut self,
        topic: &str,
        partition: u32,
        record: PendingRecord,
        now: Instant,
    ) -> Result<Vec<ReadyBatch>, Box<(PendingRecord, ClientError)>> {
        let len = record.encoded_len();
        if BATCH_HEADER_LEN + len > self.max_batch {
            let max = self.max_batch;
            return Err(Box::new((
                record,
                ClientError::InvalidRecord(format!(
                    "a record of {len} bytes does not fit in the broker's batch limit of {max} bytes"
                )),
            )));
        }
        self.key.0.clear();
        self.key.0.push_str(topic);
        self.key.1 = partition;
        let tp = &self.key;
        let limit = self.batch_bytes.min(self.max_batch);
        let mut closed = Vec::new();
        // The common case, one hash lookup: the record joins the open batch.
        if let Some(open) = self.open.get_mut(tp)
            && open.builder.encoded_len() + len <= limit
            && timestamp_fits(open.base_timestamp, record.timestamp)
        {
            push_record(open, record)?;
            if open.builder.encoded_len() >= self.batch_bytes
                && let Some(batch) = close(&mut self.open, tp)
            {
                closed.push(batch);
            }
            self.note_closed(&closed);
            return Ok(closed);
        }
        // A new batch. The record goes in first, so a record that cannot
        // be encoded is refused before the open batch is closed.
        let mut batch = OpenBatch {
            id: self.next_id,
            builder: BatchBuilder::with_capacity(
                record.timestamp,
                (BATCH_HEADER_LEN + len).max(self.size_hint.min(limit)),
            ),
            completions: Vec::new(),
            permits: Vec::new(),
            opened_at: now,
            base_timestamp: record.timestamp,
        };
        push_record(&mut batch, record)?;
        self.next_id += 1;
        closed.extend(close(&mut self.open, tp));
        if batch.builder.encoded_len() >= self.batch_bytes {
            closed.push(ready(tp, batch));
        } else {
            if self.linger.is_zero() {
                self.candidates.push(tp.clone());
            }
            self.open.insert(tp.clone(), batch);
        }
        self.note_closed(&closed);
        Ok(closed)
    }

    /// Linger rule: closes the batches that have lingered long enough.
    /// Nothing under the adaptive rule.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<ReadyBatch> {
        if self.adaptive() {
            return Vec::new();
        }
        let due: Vec<TopicPartition> = self
            .open
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.opened_at) >= self.linger)
            .map(|(tp, _)| tp.clone())
            .collect();
        let mut out: Vec<ReadyBatch> = due.iter().filter_map(|tp| self.close(tp)).collect();
        out.sort_by_key(|b| b.id);
        self.note_closed(&out);
        out
    }

    /// Remembers the size of the last batch closed, for the next one.
    fn note_closed(&mut self, closed: &[ReadyBatch]) {
        if let Some(ReadyBatch {
            payload: Payload::Open(builder),
            ..
        }) = closed.last()
        {
            self.size_hint = builder.encoded_len();
        }
    }

    /// Closes every open batch (flush, close).
    pub(crate) fn drain(&mut self) -> Vec<ReadyBatch> {
        self.candidates.clear();
        let all: Vec<TopicPartition> = self.open.keys().cloned().collect();
        let mut out: Vec<ReadyBatch> = all.iter().filter_map(|tp| self.close(tp)).collect();
        out.sort_by_key(|b| b.id);
        out
    }

    /// Linger rule: when the oldest open batch will have lingered long
    /// enough. `None` under the adaptive rule, which needs no timer.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.adaptive() {
            return None;
        }
        self.open.values().map(|b| b.opened_at + self.linger).min()
    }

    fn close(&mut self, tp: &TopicPartition) -> Option<ReadyBatch> {
        close(&mut self.open, tp)
    }
}

/// Appends `record` to `open`.
///
/// # Errors
///
/// The record back when a field is too long to encode; nothing is appended.
fn push_record(
    open: &mut OpenBatch,
    record: PendingRecord,
) -> Result<(), Box<(PendingRecord, ClientError)>> {
    let headers: Vec<(&str, &[u8])> = record
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_ref()))
        .collect();
    let pushed = open.builder.push(
        record.timestamp,
        record.key.as_deref(),
        &headers,
        &record.value,
    );
    drop(headers);
    if let Err(e) = pushed {
        return Err(Box::new((
            record,
            ClientError::InvalidRecord(e.to_string()),
        )));
    }
    open.completions.push(record.completion);
    // One permit per batch: releasing it is one semaphore operation instead
    // of one per record.
    match (open.permits.last_mut(), record.permit) {
        (Some(held), Some(permit)) => held.merge(permit),
        (None, Some(permit)) => open.permits.push(permit),
        (_, None) => {}
    }
    Ok(())
}

/// Takes the open batch of `tp` out of `open`, as a batch ready to send.
fn close(open: &mut HashMap<TopicPartition, OpenBatch>, tp: &TopicPartition) -> Option<ReadyBatch> {
    Some(ready(tp, open.remove(tp)?))
}

/// A closed batch of `tp`, ready to send.
fn ready(tp: &TopicPartition, batch: OpenBatch) -> ReadyBatch {
    ReadyBatch {
        id: batch.id,
        topic: Arc::from(tp.0.as_str()),
        partition: tp.1,
        records: batch.builder.len(),
        payload: Payload::Open(batch.builder),
        completions: batch.completions,
        permits: batch.permits,
        created: batch.opened_at,
        not_before: None,
        attempts: 0,
    }
}

/// True when a record with `timestamp` can join a batch whose base is
/// `base`: the delta must fit in an `i32`.
fn timestamp_fits(base: i64, timestamp: i64) -> bool {
    timestamp
        .checked_sub(base)
        .is_some_and(|d| i32::try_from(d).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::ledger::Ledger;
    use strongbox_protocol::batch::RecordBatch;
    use tokio::sync::oneshot;

    fn record(value_len: usize, timestamp: i64) -> PendingRecord {
        let (completion, _rx) = oneshot::channel();
        PendingRecord {
            timestamp,
            key: None,
            headers: Vec::new(),
            value: Bytes::from(vec![b'x'; value_len]),
            completion,
            permit: None,
        }
    }

    fn records_in(batch: ReadyBatch) -> u32 {
        let mut batch = batch;
        let bytes = batch.seal(None).expect("seals");
        RecordBatch::parse(bytes).expect("valid").record_count()
    }

    #[test]
    fn closes_a_batch_when_the_next_record_would_overflow_it() {
        let now = Instant::now();
        // Each record: 18 bytes of framing + 100 of value.
        let mut acc = Accumulator::new(BATCH_HEADER_LEN + 3 * 118, 1 << 20, Duration::from_secs(1));
        for _ in 0..2 {
            assert!(
                acc.append("t", 0, record(100, 0), now)
                    .expect("fits")
                    .is_empty()
            );
        }
        // The third fills it exactly: closed at once.
        let closed = acc.append("t", 0, record(100, 0), now).expect("fits");
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].records, 3);
        assert!(acc.is_empty());
        // Two records, then one that does not fit: the first batch closes
        // and the big record opens the next.
        acc.append("t", 0, record(100, 0), now).expect("fits");
        acc.append("t", 0, record(100, 0), now).expect("fits");
        let closed = acc.append("t", 0, record(200, 0), now).expect("fits");
        assert_eq!(closed.len(), 1);
        assert_eq!(records_in(closed.into_iter().next().expect("one")), 2);
        assert!(!acc.is_empty());
    }

    #[test]
    fn batches_are_per_partition_and_ids_increase() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1 << 20, Duration::from_secs(1));
        acc.append("t", 1, record(1, 0), now).expect("fits");
        acc.append("t", 0, record(1, 0), now).expect("fits");
        acc.append("u", 0, record(1, 0), now).expect("fits");
        acc.append("t", 1, record(1, 0), now).expect("fits");
        let all = acc.drain();
        assert_eq!(
            all.iter()
                .map(|b| (&*b.topic, b.partition, b.id, b.records))
                .collect::<Vec<_>>(),
            vec![("t", 1, 1, 2), ("t", 0, 2, 1), ("u", 0, 3, 1)]
        );
        assert_eq!(acc.next_id(), 4);
    }

    #[test]
    fn a_record_over_the_broker_limit_is_refused() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1024, Duration::from_secs(1));
        let (_, err) = *acc
            .append("t", 0, record(2000, 0), now)
            .expect_err("too big");
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(acc.is_empty());
        // One that fits the broker but not the target size goes alone.
        let mut acc = Accumulator::new(100, 1024, Duration::from_secs(1));
        let closed = acc.append("t", 0, record(500, 0), now).expect("fits");
        assert_eq!(closed.len(), 1);
    }

    #[test]
    fn a_record_that_cannot_be_encoded_leaves_the_open_batch_alone() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1 << 20, Duration::from_secs(1));
        acc.append("t", 0, record(1, 0), now).expect("fits");
        // A header name over the u16 length prefix, with a timestamp that
        // would need a new batch.
        let mut bad = record(1, i64::from(i32::MAX) + 1);
        bad.headers.push(("h".repeat(70_000), Bytes::new()));
        let (_, err) = *acc.append("t", 0, bad, now).expect_err("unencodable");
        assert!(err.to_string().contains("header name"), "{err}");
        let open = acc.drain();
        assert_eq!(open.len(), 1, "the first batch is still open, not lost");
        assert_eq!(open[0].records, 1);
    }

    #[test]
    fn new_batches_start_as_large_as_the_last_one_closed() {
        let now = Instant::now();
        let full = BATCH_HEADER_LEN + 3 * 118;
        let mut acc = Accumulator::new(full, 1 << 20, Duration::from_millis(1));
        assert_eq!(acc.size_hint, 0);
        for _ in 0..3 {
            acc.append("t", 0, record(100, 0), now).expect("fits");
        }
        assert_eq!(acc.size_hint, full, "a full batch closed");
        // A batch closed by linger, smaller: the hint follows it down.
        acc.append("t", 0, record(100, 0), now).expect("fits");
        assert_eq!(acc.expired(now + Duration::from_millis(1)).len(), 1);
        assert_eq!(acc.size_hint, BATCH_HEADER_LEN + 118);
    }

    #[test]
    fn distant_timestamps_start_a_new_batch() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1 << 20, Duration::from_secs(1));
        acc.append("t", 0, record(1, 0), now).expect("fits");
        let closed = acc
            .append("t", 0, record(1, i64::from(i32::MAX) + 1), now)
            .expect("fits");
        assert_eq!(closed.len(), 1);
        assert_eq!(acc.drain().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn linger_closes_batches_on_time() {
        let linger = Duration::from_millis(20);
        let mut acc = Accumulator::new(1 << 20, 1 << 20, linger);
        let t0 = Instant::now();
        acc.append("t", 0, record(1, 0), t0).expect("fits");
        tokio::time::advance(Duration::from_millis(5)).await;
        acc.append("t", 1, record(1, 0), Instant::now())
            .expect("fits");
        assert_eq!(acc.next_deadline(), Some(t0 + linger));
        tokio::time::advance(Duration::from_millis(14)).await;
        assert!(acc.expired(Instant::now()).is_empty(), "19 ms: not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        let due = acc.expired(Instant::now());
        assert_eq!(due.iter().map(|b| b.partition).collect::<Vec<_>>(), vec![0]);
        assert_eq!(
            acc.next_deadline(),
            Some(t0 + Duration::from_millis(5) + linger)
        );
        tokio::time::sleep_until(acc.next_deadline().expect("one open")).await;
        assert_eq!(acc.expired(Instant::now()).len(), 1);
        assert!(acc.next_deadline().is_none());
    }

    /// The adaptive rule with the ledger's count as the pipeline, as the
    /// driver asks it.
    fn close_adaptive(acc: &mut Accumulator, ledger: &Ledger, all: bool) -> Vec<ReadyBatch> {
        acc.close_with_room(all, |t, p| ledger.pipeline(t, p, 2) < 2)
    }

    fn ledger() -> Ledger {
        Ledger::new(None, Duration::from_millis(10), Duration::from_secs(30))
    }

    /// Puts `batch` in flight under correlation id `corr`.
    fn send(ledger: &mut Ledger, batch: ReadyBatch, corr: u64) {
        ledger.push(batch);
        let (b, _) = ledger
            .next_to_send(Instant::now())
            .expect("queued")
            .expect("seals");
        ledger.sent(corr, b);
    }

    #[test]
    fn adaptive_a_record_with_an_empty_pipeline_goes_at_once() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1 << 20, Duration::ZERO);
        let ledger = ledger();
        assert!(acc.adaptive());
        assert!(
            acc.append("t", 0, record(10, 0), now)
                .expect("fits")
                .is_empty()
        );
        assert_eq!(
            acc.next_deadline(),
            None,
            "no timer under the adaptive rule"
        );
        let closed = close_adaptive(&mut acc, &ledger, false);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].records, 1);
        assert!(acc.is_empty());
    }

    #[test]
    fn adaptive_records_coalesce_while_the_pipeline_is_full_and_go_when_it_frees() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1 << 20, Duration::ZERO);
        let mut ledger = ledger();
        // Two batches of partition 0 in flight: its pipeline is full.
        for corr in 1..=2 {
            acc.append("t", 0, record(10, 0), now).expect("fits");
            let batch = close_adaptive(&mut acc, &ledger, false)
                .pop()
                .expect("room");
            send(&mut ledger, batch, corr);
        }
        // Records arriving now stay in one growing batch, across decisions.
        for _ in 0..3 {
            acc.append("t", 0, record(10, 0), now).expect("fits");
            assert!(close_adaptive(&mut acc, &ledger, false).is_empty());
        }
        // Another partition is not held up by partition 0.
        acc.append("t", 1, record(10, 0), now).expect("fits");
        let other = close_adaptive(&mut acc, &ledger, false);
        assert_eq!(
            other.iter().map(|b| b.partition).collect::<Vec<_>>(),
            vec![1]
        );
        // Nothing changes until an answer: the decision is not retried.
        acc.append("t", 0, record(10, 0), now).expect("fits");
        assert!(close_adaptive(&mut acc, &ledger, false).is_empty());
        // The oldest is acknowledged: the four waiting records go as one.
        let acked = ledger.acked(1, 0).expect("in order");
        acc.pipeline_shrank(&acked.topic, acked.partition);
        let closed = close_adaptive(&mut acc, &ledger, false);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].partition, closed[0].records), (0, 4));
        assert_eq!(records_in(closed.into_iter().next().expect("one")), 4);
        assert!(acc.is_empty());
    }

    #[test]
    fn adaptive_a_full_batch_goes_without_waiting_for_room() {
        let now = Instant::now();
        let full = BATCH_HEADER_LEN + 3 * 118;
        let mut acc = Accumulator::new(full, 1 << 20, Duration::ZERO);
        let mut ledger = ledger();
        for corr in 1..=2 {
            acc.append("t", 0, record(100, 0), now).expect("fits");
            let batch = close_adaptive(&mut acc, &ledger, false)
                .pop()
                .expect("room");
            send(&mut ledger, batch, corr);
        }
        acc.append("t", 0, record(100, 0), now).expect("fits");
        acc.append("t", 0, record(100, 0), now).expect("fits");
        assert!(close_adaptive(&mut acc, &ledger, false).is_empty());
        // The third record fills the batch: it closes on append, with the
        // pipeline still full.
        let closed = acc.append("t", 0, record(100, 0), now).expect("fits");
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].records, 3);
        assert!(acc.is_empty());
    }

    #[test]
    fn adaptive_batches_waiting_after_a_failure_are_looked_at_again() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, 1 << 20, Duration::ZERO);
        let mut ledger = ledger();
        for corr in 1..=2 {
            acc.append("t", 0, record(10, 0), now).expect("fits");
            let batch = close_adaptive(&mut acc, &ledger, false)
                .pop()
                .expect("room");
            send(&mut ledger, batch, corr);
        }
        acc.append("t", 0, record(10, 0), now).expect("fits");
        assert!(close_adaptive(&mut acc, &ledger, false).is_empty());
        // Everything in the ledger failed (no ack names the partition):
        // the driver asks for every open batch.
        drop(ledger.drain());
        assert!(close_adaptive(&mut acc, &ledger, false).is_empty());
        assert_eq!(close_adaptive(&mut acc, &ledger, true).len(), 1);
    }

    #[test]
    fn with_a_linger_batches_wait_for_it_whatever_the_pipeline() {
        let now = Instant::now();
        let linger = Duration::from_millis(5);
        let mut acc = Accumulator::new(1 << 20, 1 << 20, linger);
        let ledger = ledger();
        assert!(!acc.adaptive());
        acc.append("t", 0, record(10, 0), now).expect("fits");
        assert!(close_adaptive(&mut acc, &ledger, true).is_empty());
        assert!(acc.expired(now).is_empty());
        assert_eq!(acc.next_deadline(), Some(now + linger));
        assert_eq!(acc.expired(now + linger).len(), 1);
    }
}
