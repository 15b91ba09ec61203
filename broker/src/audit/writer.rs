//! The chain writer: appends events to `_audit` as hash-chained records and
//! anchors the head in the metadata store.
//!
//! # To ensure correctness
//!
//! - One writer per broker; it alone assigns sequence numbers, so the chain
//!   has no fork.
//! - A batch of events is one record batch: one append, one fsync.
//! - The head moves in the metadata store only after the batch is durable
//!   in the topic, so the topic always holds at least what the head
//!   anchors; a topic shorter than the head was cut.
//! - On start the chain continues from whichever is further, the anchored
//!   head or the topic's last record, after checking that the records after
//!   the head link to it. When the topic ends before the head, or its
//!   records do not match the head, the writer logs an error, raises
//!   `strongbox_audit_chain_broken` and continues from the anchored head
//!   with an `audit.chain.broken` alert naming the problem.

use std::sync::Arc;

use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_storage::meta::{AuditHead, MetaError, MetaStore};

use super::AuditMetrics;
use super::event::{AuditAction, AuditEvent, BROKER_PRINCIPAL, topic_resource};
use super::record::{GENESIS_HASH, SEQ_HEADER, StoredLink, encode, parse_link};
use super::topic::AUDIT_TOPIC;
use crate::error::BrokerError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// Bytes read per step when scanning the topic at start.
const SCAN_BYTES: usize = 256 * 1024;

/// A boxed append: resolves once the batch is durable.
pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + 'a>>;

/// The log the trail is written to: `_audit`'s one partition. The
/// partition service implements it, so the trail depends on no service.
pub trait TrailLog: fmt::Debug + Send + Sync {
    /// End of the durable records.
    fn high_watermark(&self) -> u64;
    /// Oldest retained offset.
    fn log_start_offset(&self) -> u64;
    /// Whole batches from `from`, at most about `max_bytes`.
    ///
    /// # Errors
    ///
    /// The log cannot be read.
    fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<(u64, Bytes)>, BrokerError>;
    /// Appends `batch` and waits until it is durable.
    fn append<'a>(&'a self, batch: &'a RecordBatch) -> AppendFuture<'a>;
}

/// Appends audit records.
#[derive(Debug)]
pub struct ChainWriter {
    partition: Arc<dyn TrailLog>,
    meta: MetaStore,
    last: AuditHead,
    metrics: AuditMetrics,
}

/// A writer ready to go on, and the alert to write first if the chain was
/// found broken.
#[derive(Debug)]
pub struct Recovered {
    /// The writer.
    pub writer: ChainWriter,
    /// The `audit.chain.broken` event to record first, if any.
    pub alert: Option<AuditEvent>,
}

/// What the start-up check found wrong.
#[derive(Debug)]
enum Broken {
    /// The topic ends before the anchored head.
    Truncated { last: Option<StoredLink> },
    /// The record at the head's sequence number has another hash.
    Rewritten { last: StoredLink },
    /// The records after the head do not link to it.
    Unlinked { last: StoredLink, why: String },
    /// The topic's last record does not parse or hash.
    Unreadable { offset: u64, why: String },
}

impl ChainWriter {
    /// Reads the anchored head and the end of the topic and decides where
    /// the chain goes on. Blocking: call it from a blocking context.
    ///
    /// # Errors
    ///
    /// The metadata store or the topic cannot be read.
    pub fn recover(
        partition: Arc<dyn TrailLog>,
        meta: MetaStore,
        metrics: AuditMetrics,
    ) -> Result<Recovered, BrokerError> {
        let anchored = meta
            .read(|r| r.audit_head())
            .map_err(|e: MetaError| BrokerError::internal("reading the audit head", e))?;
        let end = partition.high_watermark();
        let start = partition.log_start_offset();
        let tail = if end > start {
            last_record(partition.as_ref(), end)?
        } else {
            None
        };
        let mut writer = Self {
            partition,
            meta,
            last: AuditHead {
                sequence: 0,
                hash: GENESIS_HASH,
            },
            metrics,
        };
        let verdict = match (anchored, tail) {
            (None, None) => Ok(None),
            (_, Some((offset, value))) => match parse_link(&value) {
                Err(why) => Err(Broken::Unreadable { offset, why }),
                Ok(link) => writer.check_tail(anchored.as_ref(), offset, link).map(Some),
            },
            (Some(_), None) => Err(Broken::Truncated { last: None }),
        };
        let alert = match verdict {
            Ok(None) => None,
            Ok(Some(from)) => {
                writer.last = from;
                if anchored != Some(from) {
                    // Records after the anchored head (the broker stopped
                    // between an append and its anchor): anchor them now.
                    writer.anchor_blocking(from);
                }
                None
            }
            Err(broken) => {
                let alert = writer.broken(anchored, broken, end);
                // Without a head (only an unreadable last record gets here)
                // numbering goes on after the topic's record count; the
                // alert and `audit verify` report the break.
                writer.last = anchored.unwrap_or(AuditHead {
                    sequence: end,
                    hash: GENESIS_HASH,
                });
                Some(alert)
            }
        };
        tracing::info!(
            next_sequence = writer.last.sequence.saturating_add(1),
            records = end,
            "audit trail opened"
        );
        Ok(Recovered { writer, alert })
    }

    /// Compares the topic's last record (at `offset`) with the anchored
    /// head; returns where the chain goes on.
    fn check_tail(
        &self,
        anchored: Option<&AuditHead>,
        offset: u64,
        tail: StoredLink,
    ) -> Result<AuditHead, Broken> {
        let Some(head) = anchored else {
            tracing::warn!(
                sequence = tail.seq,
                "the audit topic has records but no head is anchored (metadata store replaced?); \
                 continuing from the topic's last record"
            );
            return Ok(tail.head());
        };
        if tail.seq < head.sequence {
            return Err(Broken::Truncated { last: Some(tail) });
        }
        if tail.seq == head.sequence {
            return if tail.hash == head.hash {
                Ok(*head)
            } else {
                Err(Broken::Rewritten { last: tail })
            };
        }
        // Ahead of the head: the records from the head's on must link.
        let behind = tail.seq - head.sequence;
        let from = offset
            .checked_sub(behind)
            .filter(|o| *o >= self.partition.log_start_offset());
        let Some(from) = from else {
            return Err(Broken::Unlinked {
                why: format!(
                    "record {} is {behind} records after the head but only {offset} records precede it",
                    tail.seq
                ),
                last: tail,
            });
        };
        let end = offset.saturating_add(1);
        let records =
            read_records(self.partition.as_ref(), from, end).map_err(|e| Broken::Unlinked {
                why: format!("cannot read records {from}..{end}: {}", e.message),
                last: tail.clone(),
            })?;
        let mut prev: Option<StoredLink> = None;
        for (at, value) in records {
            let link = parse_link(&value).map_err(|why| Broken::Unlinked {
                why: format!("offset {at}: {why}"),
                last: tail.clone(),
            })?;
            let linked = match &prev {
                None => link.seq == head.sequence && link.hash == head.hash,
                Some(p) => link.seq == p.seq + 1 && link.prev_hash == p.hash,
            };
            if !linked {
                return Err(Broken::Unlinked {
                    why: format!("record {} at offset {at} does not link", link.seq),
                    last: tail,
                });
            }
            prev = Some(link);
        }
        match prev {
            Some(p) if p.seq == tail.seq && p.hash == tail.hash => Ok(tail.head()),
            _ => Err(Broken::Unlinked {
                why: "the records after the head end elsewhere".into(),
                last: tail,
            }),
        }
    }

    /// Logs, raises the metric and builds the alert for a broken chain.
    fn broken(&mut self, anchored: Option<AuditHead>, broken: Broken, end: u64) -> AuditEvent {
        self.metrics.chain_broken.set(1);
        let mut event =
            AuditEvent::alert(AuditAction::AuditChainBroken, topic_resource(AUDIT_TOPIC))
                .principal(BROKER_PRINCIPAL)
                .detail("topic_end_offset", end);
        if let Some(head) = &anchored {
            event = event
                .detail("anchored_sequence", head.sequence)
                .detail("anchored_hash", hex::encode(head.hash));
        }
        let (reason, message) = match broken {
            Broken::Truncated { last } => {
                let last_seq = last.as_ref().map_or(0, |l| l.seq);
                event = event.detail("topic_last_sequence", last_seq);
                (
                    "truncated",
                    format!(
                        "the audit topic ends at record {last_seq} but the anchored head is record {}: \
                         records were cut off",
                        anchored.map_or(0, |h| h.sequence)
                    ),
                )
            }
            Broken::Rewritten { last } => {
                event = event
                    .detail("topic_last_sequence", last.seq)
                    .detail("topic_last_hash", hex::encode(last.hash));
                (
                    "rewritten",
                    format!(
                        "the audit topic's record {} is not the anchored one: the trail was rewritten",
                        last.seq
                    ),
                )
            }
            Broken::Unlinked { last, why } => {
                event = event
                    .detail("topic_last_sequence", last.seq)
                    .detail("error", why.clone());
                (
                    "unlinked",
                    format!("the records after the anchored head do not link to it: {why}"),
                )
            }
            Broken::Unreadable { offset, why } => {
                event = event
                    .detail("topic_last_offset", offset)
                    .detail("error", why.clone());
                (
                    "unreadable",
                    format!("the audit topic's last record (offset {offset}) is unreadable: {why}"),
                )
            }
        };
        tracing::error!(
            target: "strongbox::audit",
            reason,
            "audit chain broken: {message}; continuing from the anchored head; \
             run `strongbox audit verify` and investigate"
        );
        event.detail("reason", reason)
    }

    /// The newest record written (sequence 0 before the first).
    pub fn last(&self) -> AuditHead {
        self.last
    }

    /// Appends `events` as one record batch, waits until it is durable,
    /// then anchors the new head.
    ///
    /// # Errors
    ///
    /// The append or its sync failed; nothing was anchored and the chain
    /// did not advance.
    pub async fn append(&mut self, events: &[AuditEvent]) -> Result<AuditHead, BrokerError> {
        let Some(first) = events.first() else {
            return Ok(self.last);
        };
        let base = first.time_ms;
        let mut builder = BatchBuilder::with_capacity(base, events.len() * 320);
        let mut head = self.last;
        for event in events {
            let seq = head.sequence.checked_add(1).ok_or_else(|| {
                BrokerError::new(ErrorCode::Internal, "audit sequence numbers exhausted")
            })?;
            let record = encode(seq, &head.hash, event);
            // Keep the timestamp within the batch's delta range.
            let span = i64::from(i32::MAX);
            let ts = event
                .time_ms
                .clamp(base.saturating_sub(span), base.saturating_add(span));
            let seq_text = seq.to_string();
            builder
                .push(
                    ts,
                    Some(event.action.as_str().as_bytes()),
                    &[(SEQ_HEADER, seq_text.as_bytes())],
                    &record.value,
                )
                .map_err(|e| BrokerError::internal("encoding an audit record", e))?;
            head = AuditHead {
                sequence: seq,
                hash: record.hash,
            };
        }
        let bytes = builder
            .finish()
            .map_err(|e| BrokerError::internal("encoding an audit batch", e))?;
        let batch = RecordBatch::parse(bytes)
            .map_err(|e| BrokerError::internal("encoding an audit batch", e))?;
        self.partition.append(&batch).await?;
        self.last = head;
        self.metrics.records.inc_by(events.len() as u64);
        let meta = self.meta.clone();
        let anchored =
            tokio::task::spawn_blocking(move || meta.write(|b| b.advance_audit_head(&head))).await;
        match anchored {
            Ok(Ok(())) => {}
            // The records are durable; the next batch anchors past them.
            Ok(Err(e)) => tracing::error!(error = %e, "cannot anchor the audit head"),
            Err(e) => tracing::error!(error = %e, "cannot anchor the audit head"),
        }
        Ok(head)
    }

    fn anchor_blocking(&self, head: AuditHead) {
        if let Err(e) = self.meta.write(|b| b.advance_audit_head(&head)) {
            tracing::error!(error = %e, "cannot anchor the audit head");
        }
    }
}

/// The offset and value of the topic's last record.
fn last_record(partition: &dyn TrailLog, end: u64) -> Result<Option<(u64, Bytes)>, BrokerError> {
    let Some(last) = end.checked_sub(1) else {
        return Ok(None);
    };
    Ok(read_records(partition, last, end)?.pop())
}

/// Every record with an offset in `from..to`, in order.
fn read_records(
    partition: &dyn TrailLog,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, Bytes)>, BrokerError> {
    let mut out = Vec::new();
    let mut next = from;
    while next < to {
        let batches = partition.read(next, SCAN_BYTES)?;
        if batches.is_empty() {
            break;
        }
        let mut advanced = next;
        for (base, bytes) in batches {
            let batch = RecordBatch::parse(bytes).map_err(|e| {
                BrokerError::new(
                    ErrorCode::PartitionUnavailable,
                    format!("{AUDIT_TOPIC}: stored batch at {base} is unreadable: {e}"),
                )
            })?;
            for record in batch.records() {
                let offset = base.saturating_add(u64::from(record.index));
                if offset >= next && offset < to {
                    out.push((offset, record.value));
                }
                advanced = advanced.max(offset.saturating_add(1));
            }
        }
        if advanced <= next {
            break;
        }
        next = advanced;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
