//! Frames of a producer stream.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError};
use crate::frames::Body;

/// Appends one record batch to a partition.
///
/// The broker answers every `Produce` of a stream with a [`ProduceAck`] or an
/// `Error` carrying the same `correlation_id`, in the order the `Produce`
/// frames were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produce {
    /// Chosen by the client; strictly increasing on a stream.
    pub correlation_id: u64,
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// One encoded record batch (see [`crate::batch`]), not copied.
    pub batch: Bytes,
}

/// The frame `length` (type and body, as compared with a `max_frame_size`)
/// of a `Produce` frame less its topic name's and its batch's bytes: type 2,
/// `correlation_id` 8, topic length 2, `partition` 4, batch length 4.
pub const PRODUCE_FRAMING: u32 = 2 + 8 + 2 + 4 + 4;

impl Produce {
    /// The frame `length` of a `Produce` for a topic of `topic_len` bytes
    /// carrying a batch of `batch_len` bytes.
    pub const fn frame_length(topic_len: usize, batch_len: usize) -> u64 {
        (PRODUCE_FRAMING as u64)
            .saturating_add(topic_len as u64)
            .saturating_add(batch_len as u64)
    }

    /// The largest batch a `Produce` for a topic of `topic_len` bytes can
    /// carry to a receiver that accepts frames of `max_frame_size`; 0 when
    /// not even an empty batch fits.
    pub fn max_batch_len(max_frame_size: u32, topic_len: usize) -> usize {
        (max_frame_size as usize)
            .saturating_sub(PRODUCE_FRAMING as usize)
            .saturating_sub(topic_len)
    }
}

impl Body for Produce {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.correlation_id);
        dst.put_string("topic", &self.topic)?;
        dst.put_u32(self.partition);
        dst.put_bytes32("batch", &self.batch)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            correlation_id: r.u64()?,
            topic: r.string()?,
            partition: r.u32()?,
            batch: r.bytes()?,
        })
    }
}

/// The batch of a [`Produce`] is durable (per the topic's durability policy)
/// at `base_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    /// The `Produce` acknowledged.
    pub correlation_id: u64,
    /// Partition index.
    pub partition: u32,
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// True when the broker had already appended this batch (an idempotent
    /// retry); `base_offset` is where it was appended the first time.
    pub duplicate: bool,
}

impl Body for ProduceAck {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.correlation_id);
        dst.put_u32(self.partition);
        dst.put_u64(self.base_offset);
        dst.put_bool(self.duplicate);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            correlation_id: r.u64()?,
            partition: r.u32()?,
            base_offset: r.u64()?,
            duplicate: r.bool("duplicate")?,
        })
    }
}
