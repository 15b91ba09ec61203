//! A closed batch on its way to the broker, and the records waiting on it.

use std::sync::Arc;

use bytes::Bytes;
use strongbox_protocol::batch::{BatchBuilder, ProducerStamp, RecordBatch};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::producer::RecordMetadata;

/// The sender side of one record's delivery future.
pub(crate) type Completion = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// Identifies a partition of a topic.
pub(crate) type TopicPartition = (String, u32);

/// The encoded records of a batch.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Not yet stamped with a sequence: finished when first sent.
    Open(BatchBuilder),
    /// Finished, with the stamp it carries (`None` when not idempotent).
    Sealed {
        bytes: Bytes,
        stamp: Option<ProducerStamp>,
    },
}

/// A batch that left the accumulator: ready, in flight, or waiting to be
/// retried.
#[derive(Debug)]
pub(crate) struct ReadyBatch {
    /// Creation order; per partition it is also the order of sequences.
    pub(crate) id: u64,
    /// Shared with the records' [`RecordMetadata`]: one allocation per
    /// batch, not per record.
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) records: u32,
    pub(crate) payload: Payload,
    pub(crate) completions: Vec<Completion>,
    /// Buffer memory held until the batch completes; released on drop.
    #[expect(dead_code, reason = "held only for its Drop")]
    pub(crate) permits: Vec<OwnedSemaphorePermit>,
    pub(crate) created: Instant,
    /// Not to be sent before this (retry backoff).
    pub(crate) not_before: Option<Instant>,
    pub(crate) attempts: u32,
}

impl ReadyBatch {
    pub(crate) fn topic_partition(&self) -> TopicPartition {
        (self.topic.to_string(), self.partition)
    }

    /// The sequence this batch was last stamped with.
    pub(crate) fn base_sequence(&self) -> Option<u32> {
        match &self.payload {
            Payload::Sealed {
                stamp: Some(stamp), ..
            } => Some(stamp.base_sequence),
            _ => None,
        }
    }

    /// Makes the batch carry `stamp` (or none) and returns its bytes.
    /// A batch that already carries exactly this stamp is not rebuilt, so
    /// a retry sends identical bytes.
    pub(crate) fn seal(&mut self, stamp: Option<ProducerStamp>) -> Result<Bytes, ClientError> {
        let payload = std::mem::replace(
            &mut self.payload,
            Payload::Sealed {
                bytes: Bytes::new(),
                stamp: None,
            },
        );
        let bytes = match payload {
            Payload::Open(mut builder) => {
                if let Some(stamp) = stamp {
                    builder.producer(stamp);
                }
                builder
                    .finish()
                    .map_err(|e| ClientError::InvalidRecord(e.to_string()))?
            }
            Payload::Sealed { bytes, stamp: old } if old == stamp => bytes,
            Payload::Sealed { bytes, .. } => restamp(&bytes, stamp)?,
        };
        self.payload = Payload::Sealed {
            bytes: bytes.clone(),
            stamp,
        };
        Ok(bytes)
    }

    /// Resolves every record with its offset.
    pub(crate) fn complete(self, base_offset: u64) {
        for (i, completion) in self.completions.into_iter().enumerate() {
            let _ = completion.send(Ok(RecordMetadata {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: base_offset.saturating_add(i as u64),
            }));
        }
    }

    /// Fails every record with `error`.
    pub(crate) fn fail(self, error: &ClientError) {
        for completion in self.completions {
            let _ = completion.send(Err(error.clone()));
        }
    }
}

/// Rebuilds an encoded batch with another producer stamp. Only needed on
/// the rare path where sequences had to be rolled back after a refused
/// batch; the record bytes are copied once.
pub(crate) fn restamp(bytes: &Bytes, stamp: Option<ProducerStamp>) -> Result<Bytes, ClientError> {
    let batch = RecordBatch::parse(bytes.clone())
        .map_err(|e| ClientError::InvalidRecord(format!("cannot re-read a batch: {e}")))?;
    let mut builder = BatchBuilder::with_capacity(batch.header().base_timestamp, bytes.len());
    if let Some(stamp) = stamp {
        builder.producer(stamp);
    }
    for record in batch.records() {
        let headers: Vec<(String, Bytes)> = record.headers.iter().collect();
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
            .collect();
        builder
            .push(
                record.timestamp,
                record.key.as_deref(),
                &headers,
                &record.value,
            )
            .map_err(|e| ClientError::InvalidRecord(e.to_string()))?;
    }
    builder
        .finish()
        .map_err(|e| ClientError::InvalidRecord(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restamp_keeps_records_and_changes_only_the_stamp() {
        let mut b = BatchBuilder::new(1_000);
        b.producer(ProducerStamp {
            producer_id: 7,
            epoch: 1,
            base_sequence: 40,
        });
        b.push(1_001, Some(b"k"), &[("h", b"v")], b"one")
            .expect("push");
        b.push(1_002, None, &[], b"two").expect("push");
        let original = b.finish().expect("finish");
        let stamp = ProducerStamp {
            producer_id: 7,
            epoch: 1,
            base_sequence: 10,
        };
        let rebuilt = restamp(&original, Some(stamp)).expect("restamp");
        let parsed = RecordBatch::parse(rebuilt).expect("valid");
        assert_eq!(parsed.header().producer, Some(stamp));
        let records: Vec<_> = parsed.records().collect();
        assert_eq!(records.len(), 2);
        assert_eq!(&records[0].value[..], b"one");
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[0].headers.get("h").as_deref(), Some(&b"v"[..]));
        assert_eq!(records[1].timestamp, 1_002);
    }
}
