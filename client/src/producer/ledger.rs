//! Sequence numbers and in-flight bookkeeping of an idempotent producer.
//!
//! Sequences are assigned per partition when a batch is first sent, in the
//! order batches were closed. The rules that keep a retry from writing
//! twice and a refusal from wedging a partition:
//!
//! - **Reconnect**: every unacknowledged batch goes back to the queue with
//!   the stamp it was sent with, and the partition's next sequence rewinds
//!   to the oldest of them. Sending them again in order assigns exactly the
//!   same sequences, so the same bytes go out and the broker acknowledges
//!   any it already appended as duplicates, with their original offsets.
//! - **Refusal**: a batch the broker refused was not appended, so its
//!   sequences are free again: the partition's next sequence rolls back to
//!   its base. Batches of that partition already sent after it carry
//!   sequences past a gap; the broker refuses them with
//!   `out_of_order_sequence`, and they are re-queued and re-stamped rather
//!   than failed. Until those answers are in, the partition sends nothing
//!   new, so order is kept.
//! - **Retriable refusal** (`shutting_down`, `partition_unavailable`, ...):
//!   as a refusal, but the batch itself is queued again after a backoff
//!   instead of failing, until the delivery timeout.
//! - **Giving up** on a batch that was sent (delivery timeout, or the
//!   connection could not be restored): the broker may have stored it, so
//!   its sequences must never carry other records. The producer takes a
//!   new epoch (`InitProducer` with its id) before it sends anything else;
//!   sequences restart at 0 in the new epoch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::ProducerStamp;
use tokio::time::Instant;

use crate::admin::ProducerIdentity;
use crate::error::ClientError;
use crate::producer::batch::{ReadyBatch, TopicPartition};

/// A batch on the wire.
#[derive(Debug)]
struct InFlight {
    correlation_id: u64,
    batch: ReadyBatch,
    /// Sent after an earlier batch of its partition was refused, so its
    /// sequence follows a gap.
    stale: bool,
}

/// What became of a refused batch.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// It will be sent again; nothing to report.
    Retrying,
    /// It failed for good: report `error` to its records.
    Failed(Box<ReadyBatch>, ClientError),
}

/// The producer's queue of closed batches and batches in flight.
#[derive(Debug)]
pub(crate) struct Ledger {
    identity: Option<ProducerIdentity>,
    next_sequence: HashMap<TopicPartition, u32>,
    ready: VecDeque<ReadyBatch>,
    in_flight: VecDeque<InFlight>,
    /// Stale batches in flight, per partition; the partition is paused
    /// while any remain.
    stale: HashMap<TopicPartition, usize>,
    retry_backoff: Duration,
    delivery_timeout: Duration,
    /// A batch that may have been stored was given up: a new epoch is
    /// needed before the next send.
    needs_new_epoch: bool,
}

impl Ledger {
    /// A ledger; `identity` is `None` for a producer that is not idempotent.
    pub(crate) fn new(
        identity: Option<ProducerIdentity>,
        retry_backoff: Duration,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            identity,
            next_sequence: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: VecDeque::new(),
            stale: HashMap::new(),
            retry_backoff,
            delivery_timeout,
            needs_new_epoch: false,
        }
    }

    /// The producer id and epoch batches are stamped with.
    pub(crate) fn identity(&self) -> Option<ProducerIdentity> {
        self.identity
    }

    /// True when batches that may have been stored were given up; call
    /// [`Ledger::new_epoch`] before sending again.
    pub(crate) fn needs_new_epoch(&self) -> bool {
        self.needs_new_epoch
    }

    /// Switches to a new epoch: every partition's sequence restarts at 0,
    /// and queued batches are re-stamped when sent.
    pub(crate) fn new_epoch(&mut self, identity: ProducerIdentity) {
        self.identity = Some(identity);
        self.next_sequence.clear();
        self.needs_new_epoch = false;
    }

    /// Notes batches being given up.
    fn giving_up(&mut self, batches: &[ReadyBatch]) {
        if self.identity.is_some() && batches.iter().any(|b| b.base_sequence().is_some()) {
            self.needs_new_epoch = true;
        }
    }

    /// Batches queued or in flight.
    pub(crate) fn len(&self) -> usize {
        self.ready.len() + self.in_flight.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Batches of one partition queued or in flight, counted up to `cap`
    /// (the caller only compares with it, so the scan stops there).
    pub(crate) fn pipeline(&self, topic: &str, partition: u32, cap: usize) -> usize {
        let of_tp = |b: &ReadyBatch| b.partition == partition && &*b.topic == topic;
        self.in_flight
            .iter()
            .rev()
            .map(|f| &f.batch)
            .chain(self.ready.iter())
            .filter(|b| of_tp(b))
            .take(cap)
            .count()
    }

    /// The smallest batch id not yet completed.
    pub(crate) fn oldest_id(&self) -> Option<u64> {
        let r = self.ready.iter().map(|b| b.id).min();
        let f = self.in_flight.iter().map(|f| f.batch.id).min();
        match (r, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues a batch, keeping creation order.
    pub(crate) fn push(&mut self, batch: ReadyBatch) {
        let at = self.ready.partition_point(|b| b.id < batch.id);
        self.ready.insert(at, batch);
    }

    /// The earliest time a queued batch waiting on a backoff may go.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.ready.iter().filter_map(|b| b.not_before).min()
    }

    /// Takes the next batch that may be sent now, stamps it with its
    /// sequence and returns it with its bytes. A partition is skipped while
    /// it is paused or its oldest queued batch waits on a backoff, so no
    /// batch ever overtakes an older one of its partition.
    ///
    /// A batch that cannot be stamped (its encoding failed) is returned as
    /// `Err` to be failed.
    pub(crate) fn next_to_send(
        &mut self,
        now: Instant,
    ) -> Option<Result<(ReadyBatch, Bytes), (ReadyBatch, ClientError)>> {
        let pick = self.first_sendable(now);
        let mut batch = self.ready.remove(pick?)?;
        batch.not_before = None;
        let stamp = match self.identity {
            None => None,
            Some(identity) => {
                let tp = batch.topic_partition();
                let next = self.next_sequence.get(&tp).copied().unwrap_or(0);
                let Some(after) = next.checked_add(batch.records) else {
                    return Some(Err((
                        batch,
                        ClientError::InvalidRecord(
                            "the partition's sequence numbers are exhausted; start a new producer"
                                .into(),
                        ),
                    )));
                };
                self.next_sequence.insert(tp, after);
                Some(ProducerStamp {
                    producer_id: identity.producer_id,
                    epoch: identity.epoch,
                    base_sequence: next,
                })
            }
        };
        Some(match batch.seal(stamp) {
            Ok(bytes) => Ok((batch, bytes)),
            Err(e) => Err((batch, e)),
        })
    }

    /// Records a sent batch. It is never stale: its partition was not
    /// paused when it was stamped.
    pub(crate) fn sent(&mut self, correlation_id: u64, batch: ReadyBatch) {
        self.in_flight.push_back(InFlight {
            correlation_id,
            batch,
            stale: false,
        });
    }

    /// A batch returned by [`Ledger::next_to_send`] could not be sent after
    /// all: its sequences are given back (it was the last stamped for its
    /// partition).
    pub(crate) fn unsent(&mut self, batch: &ReadyBatch) {
        if let (Some(base), Some(next)) = (
            batch.base_sequence(),
            self.next_sequence.get_mut(&batch.topic_partition()),
        ) {
            *next = (*next).min(base);
        }
    }

    /// True when [`Ledger::next_to_send`] would return a batch now.
    pub(crate) fn has_sendable(&self, now: Instant) -> bool {
        self.first_sendable(now).is_some()
    }

    /// The queue index of the first batch that may go now.
    fn first_sendable(&self, now: Instant) -> Option<usize> {
        let mut blocked: HashSet<TopicPartition> = HashSet::new();
        for (i, batch) in self.ready.iter().enumerate() {
            let tp = batch.topic_partition();
            if blocked.contains(&tp) {
                continue;
            }
            if self.stale.get(&tp).is_some_and(|n| *n > 0)
                || batch.not_before.is_some_and(|t| t > now)
            {
                blocked.insert(tp);
                continue;
            }
            return Some(i);
        }
        None
    }

    /// The oldest batch in flight was acknowledged.
    ///
    /// # Errors
    ///
    /// [`ClientError::Protocol`] when nothing is in flight, the correlation
    /// id is not the oldest's, or the partition does not match.
    pub(crate) fn acked(
        &mut self,
        correlation_id: u64,
        partition: u32,
    ) -> Result<ReadyBatch, ClientError> {
        let entry = self.pop(correlation_id)?;
        if entry.batch.partition != partition {
            return Err(ClientError::Protocol(format!(
                "ack for partition {partition} answers a batch for partition {}",
                entry.batch.partition
            )));
        }
        if entry.stale {
            // The broker appended a batch past a gap: it does not enforce
            // sequence order. Never reuse sequences it has seen.
            let tp = entry.batch.topic_partition();
            self.unstale(&tp);
            if let (Some(base), Some(next)) =
                (entry.batch.base_sequence(), self.next_sequence.get_mut(&tp))
            {
                *next = (*next).max(base.saturating_add(entry.batch.records));
            }
        }
        Ok(entry.batch)
    }

    /// The oldest batch in flight was refused with `error` (whose wire code
    /// is `code`, when it has one).
    ///
    /// # Errors
    ///
    /// [`ClientError::Protocol`] when the answer is out of order.
    pub(crate) fn refused(
        &mut self,
        correlation_id: u64,
        code: Option<ErrorCode>,
        error: ClientError,
        now: Instant,
    ) -> Result<Refusal, ClientError> {
        let entry = self.pop(correlation_id)?;
        let tp = entry.batch.topic_partition();
        if entry.stale {
            self.unstale(&tp);
        }
        // Its sequences are free again, and every later batch of the
        // partition in flight now follows a gap.
        if let Some(base) = entry.batch.base_sequence() {
            let next = self.next_sequence.entry(tp.clone()).or_insert(base);
            *next = (*next).min(base);
            let mut newly_stale = 0;
            for f in self.in_flight.iter_mut() {
                if f.batch.topic_partition() == tp && !f.stale {
                    f.stale = true;
                    newly_stale += 1;
                }
            }
            if newly_stale > 0 {
                *self.stale.entry(tp).or_insert(0) += newly_stale;
            }
        }
        let gap_victim = entry.stale && code == Some(ErrorCode::OutOfOrderSequence);
        let retriable = code.is_some_and(ErrorCode::is_retriable);
        let mut batch = entry.batch;
        if gap_victim {
            // Refused only because of the earlier refusal: send it again
            // with a fresh sequence, at once.
            self.push(batch);
            return Ok(Refusal::Retrying);
        }
        if retriable && now.saturating_duration_since(batch.created) < self.delivery_timeout {
            batch.attempts = batch.attempts.saturating_add(1);
            let exp = batch.attempts.min(8);
            batch.not_before = Some(now + self.retry_backoff.saturating_mul(1 << exp) / 2);
            self.push(batch);
            return Ok(Refusal::Retrying);
        }
        Ok(Refusal::Failed(Box::new(batch), error))
    }

    /// The stream or connection dropped: everything in flight goes back to
    /// the queue, to be sent again with the same sequences.
    pub(crate) fn connection_lost(&mut self) {
        self.stale.clear();
        while let Some(entry) = self.in_flight.pop_back() {
            let tp = entry.batch.topic_partition();
            if let (Some(base), Some(next)) =
                (entry.batch.base_sequence(), self.next_sequence.get_mut(&tp))
            {
                *next = (*next).min(base);
            }
            self.push(entry.batch);
        }
    }

    /// Removes and returns every batch (to fail them).
    pub(crate) fn drain(&mut self) -> Vec<ReadyBatch> {
        self.stale.clear();
        let mut out: Vec<ReadyBatch> = self.in_flight.drain(..).map(|f| f.batch).collect();
        out.extend(self.ready.drain(..));
        self.giving_up(&out);
        out
    }

    /// When the oldest batch, queued or in flight, reaches its delivery
    /// timeout.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let oldest = self
            .ready
            .iter()
            .map(|b| b.created)
            .chain(self.in_flight.iter().map(|f| f.batch.created))
            .min()?;
        Some(oldest + self.delivery_timeout)
    }

    /// True when a batch in flight has passed its delivery timeout without
    /// an answer. Answers come in order, so the stream has to be given up
    /// ([`Ledger::connection_lost`]) before such a batch can be failed.
    pub(crate) fn in_flight_expired(&self, now: Instant) -> bool {
        self.in_flight
            .iter()
            .any(|f| now.saturating_duration_since(f.batch.created) >= self.delivery_timeout)
    }

    /// The delivery timeout.
    pub(crate) fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }

    /// Removes queued batches older than the delivery timeout.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<ReadyBatch> {
        let timeout = self.delivery_timeout;
        let (old, keep): (Vec<_>, Vec<_>) = self
            .ready
            .drain(..)
            .partition(|b| now.saturating_duration_since(b.created) >= timeout);
        self.ready = keep.into();
        self.giving_up(&old);
        old
    }

    fn pop(&mut self, correlation_id: u64) -> Result<InFlight, ClientError> {
        match self.in_flight.front() {
            Some(f) if f.correlation_id == correlation_id => {}
            _ => {
                return Err(ClientError::Protocol(format!(
                    "answer for correlation id {correlation_id} is not for the oldest batch in flight"
                )));
            }
        }
        self.in_flight
            .pop_front()
            .ok_or_else(|| ClientError::Protocol("nothing in flight".into()))
    }

    fn unstale(&mut self, tp: &TopicPartition) {
        if let Some(n) = self.stale.get_mut(tp) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.stale.remove(tp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::batch::Payload;
    use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
    use tokio::sync::oneshot;

    const PID: ProducerIdentity = ProducerIdentity {
        producer_id: 9,
        epoch: 2,
    };

    fn batch(id: u64, partition: u32, records: u32, now: Instant) -> ReadyBatch {
        let mut b = BatchBuilder::new(0);
        for i in 0..records {
            b.push(0, None, &[], format!("r{id}.{i}").as_bytes())
                .expect("push");
        }
        ReadyBatch {
            id,
            topic: "t".into(),
            partition,
            records,
            payload: Payload::Open(b),
            completions: Vec::new(),
            permits: Vec::new(),
            created: now,
            not_before: None,
            attempts: 0,
        }
    }

    fn ledger() -> Ledger {
        Ledger::new(
            Some(PID),
            Duration::from_millis(100),
            Duration::from_secs(60),
        )
    }

    /// Sends everything sendable; returns (correlation id, batch id, base
    /// sequence, bytes) per batch sent.
    fn send_all(l: &mut Ledger, next_corr: &mut u64, now: Instant) -> Vec<(u64, u64, u32, Bytes)> {
        let mut sent = Vec::new();
        while let Some(r) = l.next_to_send(now) {
            let (b, bytes) = r.expect("stamps");
            let seq = RecordBatch::parse(bytes.clone())
                .expect("valid")
                .header()
                .producer
                .expect("idempotent")
                .base_sequence;
            sent.push((*next_corr, b.id, seq, bytes));
            l.sent(*next_corr, b);
            *next_corr += 1;
        }
        sent
    }

    #[test]
    fn the_pipeline_counts_a_partitions_queued_and_in_flight_batches() {
        let now = Instant::now();
        let mut l = ledger();
        l.push(batch(1, 0, 1, now));
        l.push(batch(2, 1, 1, now));
        l.push(batch(3, 0, 1, now));
        let mut corr = 1;
        let sent = send_all(&mut l, &mut corr, now);
        assert_eq!(sent.len(), 3);
        l.push(batch(4, 0, 1, now));
        assert_eq!(l.pipeline("t", 0, 10), 3, "two in flight, one queued");
        assert_eq!(l.pipeline("t", 0, 2), 2, "counted up to the cap");
        assert_eq!(l.pipeline("t", 1, 10), 1);
        assert_eq!(l.pipeline("u", 0, 10), 0, "another topic");
        l.acked(1, 0).expect("in order");
        assert_eq!(l.pipeline("t", 0, 10), 2);
    }

    #[test]
    fn sequences_are_per_partition_and_contiguous() {
        let now = Instant::now();
        let mut l = ledger();
        l.push(batch(1, 0, 3, now));
        l.push(batch(2, 1, 2, now));
        l.push(batch(3, 0, 4, now));
        let mut corr = 1;
        let sent = send_all(&mut l, &mut corr, now);
        let seqs: Vec<_> = sent.iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(seqs, vec![(1, 0), (2, 0), (3, 3)]);
        assert_eq!(l.in_flight(), 3);
    }

    #[test]
    fn reconnect_resends_unacked_batches_with_the_same_sequences_and_bytes() {
        let now = Instant::now();
        let mut l = ledger();
        for id in 1..=4 {
            l.push(batch(id, 0, 5, now));
        }
        let mut corr = 1;
        let first = send_all(&mut l, &mut corr, now);
        // The first batch is acknowledged, then the connection drops.
        let acked = l.acked(first[0].0, 0).expect("in order");
        assert_eq!(acked.id, 1);
        l.connection_lost();
        assert_eq!(l.in_flight(), 0);
        // A new batch was closed meanwhile.
        l.push(batch(5, 0, 5, now));
        let again = send_all(&mut l, &mut corr, now);
        let ids: Vec<_> = again.iter().map(|s| s.1).collect();
        assert_eq!(ids, vec![2, 3, 4, 5], "order kept, acked batch not resent");
        for (before, after) in first[1..].iter().zip(&again) {
            assert_eq!(before.2, after.2, "same sequence");
            assert_eq!(before.3, after.3, "same bytes");
        }
        assert_eq!(again[3].2, 20, "the new batch continues the sequence");
    }

    #[test]
    fn refused_batch_rolls_back_and_gap_victims_are_restamped() {
        let now = Instant::now();
        let mut l = ledger();
        for id in 1..=3 {
            l.push(batch(id, 0, 10, now));
        }
        let mut corr = 1;
        let sent = send_all(&mut l, &mut corr, now);
        assert_eq!(
            sent.iter().map(|s| s.2).collect::<Vec<_>>(),
            vec![0, 10, 20]
        );
        // Batch 1 is refused for good (say, not authorized).
        let outcome = l
            .refused(
                sent[0].0,
                Some(ErrorCode::NotAuthorized),
                ClientError::Broker {
                    code: ErrorCode::NotAuthorized,
                    message: "no".into(),
                },
                now,
            )
            .expect("in order");
        assert!(matches!(outcome, Refusal::Failed(b, _) if b.id == 1));
        // A new batch must wait: batches 2 and 3 are stale.
        l.push(batch(4, 0, 10, now));
        assert!(l.next_to_send(now).is_none(), "partition paused");
        // The broker refuses 2 and 3 for the gap.
        for s in &sent[1..] {
            let outcome = l
                .refused(
                    s.0,
                    Some(ErrorCode::OutOfOrderSequence),
                    ClientError::Broker {
                        code: ErrorCode::OutOfOrderSequence,
                        message: "gap".into(),
                    },
                    now,
                )
                .expect("in order");
            assert!(matches!(outcome, Refusal::Retrying));
        }
        let resent = send_all(&mut l, &mut corr, now);
        assert_eq!(
            resent.iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
            vec![(2, 0), (3, 10), (4, 20)],
            "restamped from the rolled-back sequence, in order"
        );
    }

    #[test]
    fn retriable_refusal_retries_after_a_backoff_and_keeps_order() {
        let now = Instant::now();
        let mut l = ledger();
        l.push(batch(1, 0, 1, now));
        l.push(batch(2, 0, 1, now));
        l.push(batch(3, 1, 1, now));
        let mut corr = 1;
        let sent = send_all(&mut l, &mut corr, now);
        let outcome = l
            .refused(
                sent[0].0,
                Some(ErrorCode::ShuttingDown),
                ClientError::Broker {
                    code: ErrorCode::ShuttingDown,
                    message: "bye".into(),
                },
                now,
            )
            .expect("in order");
        assert!(matches!(outcome, Refusal::Retrying));
        assert!(l.next_to_send(now).is_none(), "backoff");
        let later = l.next_retry().expect("retry time");
        assert!(later > now);
        // Batch 2 (stale) comes back refused for the gap.
        assert!(matches!(
            l.refused(
                sent[1].0,
                Some(ErrorCode::OutOfOrderSequence),
                ClientError::Protocol("gap".into()),
                now
            ),
            Ok(Refusal::Retrying)
        ));
        // Partition 1 is unaffected.
        assert_eq!(l.acked(sent[2].0, 1).expect("ack").id, 3);
        let resent = send_all(&mut l, &mut corr, later);
        assert_eq!(
            resent.iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
            vec![(1, 0), (2, 1)]
        );
        assert_eq!(resent[0].3, sent[0].3, "same bytes for the same sequence");
    }

    #[test]
    fn retries_stop_at_the_delivery_timeout() {
        let now = Instant::now();
        let mut l = Ledger::new(Some(PID), Duration::from_millis(1), Duration::from_secs(1));
        l.push(batch(1, 0, 1, now));
        let mut corr = 1;
        let sent = send_all(&mut l, &mut corr, now);
        let outcome = l
            .refused(
                sent[0].0,
                Some(ErrorCode::PartitionUnavailable),
                ClientError::Protocol("x".into()),
                now + Duration::from_secs(2),
            )
            .expect("in order");
        assert!(matches!(outcome, Refusal::Failed(..)));
    }

    #[test]
    fn out_of_order_answers_are_protocol_errors() {
        let now = Instant::now();
        let mut l = ledger();
        l.push(batch(1, 0, 1, now));
        l.push(batch(2, 0, 1, now));
        let mut corr = 1;
        let sent = send_all(&mut l, &mut corr, now);
        assert!(l.acked(sent[1].0, 0).is_err());
        assert!(l.acked(sent[0].0, 5).is_err(), "wrong partition");
    }

    #[test]
    fn giving_up_on_sent_batches_takes_a_new_epoch_before_reusing_sequences() {
        let now = Instant::now();
        let mut l = ledger();
        l.push(batch(1, 0, 5, now));
        l.push(batch(2, 0, 5, now));
        let mut corr = 1;
        send_all(&mut l, &mut corr, now);
        // The connection drops and cannot be restored: both batches fail,
        // though the broker may have stored them.
        l.connection_lost();
        assert_eq!(l.drain().len(), 2);
        assert!(l.needs_new_epoch());
        l.new_epoch(ProducerIdentity {
            producer_id: PID.producer_id,
            epoch: PID.epoch + 1,
        });
        assert!(!l.needs_new_epoch());
        l.push(batch(3, 0, 5, now));
        let (_, bytes) = l.next_to_send(now).expect("one").expect("ok");
        let stamp = RecordBatch::parse(bytes)
            .expect("valid")
            .header()
            .producer
            .expect("idempotent");
        assert_eq!((stamp.epoch, stamp.base_sequence), (PID.epoch + 1, 0));
    }

    #[test]
    fn giving_up_on_batches_never_sent_keeps_the_epoch() {
        let now = Instant::now();
        let mut l = ledger();
        l.push(batch(1, 0, 5, now));
        assert_eq!(l.expired(now + Duration::from_secs(61)).len(), 1);
        assert!(!l.needs_new_epoch());
    }

    #[test]
    fn not_idempotent_batches_carry_no_stamp() {
        let now = Instant::now();
        let mut l = Ledger::new(None, Duration::from_millis(1), Duration::from_secs(1));
        l.push(batch(1, 0, 2, now));
        let (b, bytes) = l.next_to_send(now).expect("one").expect("ok");
        assert_eq!(b.id, 1);
        assert_eq!(
            RecordBatch::parse(bytes).expect("valid").header().producer,
            None
        );
    }

    #[test]
    fn completion_reports_offsets_per_record() {
        let now = Instant::now();
        let mut b = batch(1, 3, 2, now);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        b.completions = vec![tx1, tx2];
        b.complete(100);
        let m1 = rx1.try_recv().expect("sent").expect("ok");
        let m2 = rx2.try_recv().expect("sent").expect("ok");
        assert_eq!((m1.partition, m1.offset), (3, 100));
        assert_eq!(m2.offset, 101);
    }

    #[test]
    fn batches_in_flight_expire_too() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Some(PID), Duration::from_millis(1), Duration::from_secs(5));
        l.push(batch(1, 0, 2, t0));
        l.push(batch(2, 0, 2, t0 + Duration::from_secs(2)));
        assert_eq!(l.next_expiry(), Some(t0 + Duration::from_secs(5)));
        let mut corr = 1;
        send_all(&mut l, &mut corr, t0 + Duration::from_secs(2));
        assert_eq!(l.in_flight(), 2);
        assert!(!l.in_flight_expired(t0 + Duration::from_millis(4999)));
        // Unanswered at its deadline: the stream is given up, and only the
        // batch that is due fails.
        let due = t0 + Duration::from_secs(5);
        assert!(l.in_flight_expired(due));
        l.connection_lost();
        let expired = l.expired(due);
        assert_eq!(expired.iter().map(|b| b.id).collect::<Vec<_>>(), vec![1]);
        assert!(l.needs_new_epoch(), "it may have been stored");
        assert_eq!(l.next_expiry(), Some(t0 + Duration::from_secs(7)));
        assert!(!l.in_flight_expired(due));
    }
}
