//! Frames of a subscription stream.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError, ErrorCode};
use crate::frames::Body;

/// Where a subscription starts reading a partition that has no committed
/// offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained record.
    Earliest,
    /// Only records appended after the subscription starts.
    Latest,
    /// A given offset.
    Offset(u64),
    /// The first record whose timestamp is at or after this many
    /// milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl StartPosition {
    fn encode(&self, dst: &mut BytesMut) {
        match *self {
            Self::Earliest => {
                dst.put_u8(0);
                dst.put_u64(0);
            }
            Self::Latest => {
                dst.put_u8(1);
                dst.put_u64(0);
            }
            Self::Offset(o) => {
                dst.put_u8(2);
                dst.put_u64(o);
            }
            Self::Timestamp(t) => {
                dst.put_u8(3);
                dst.put_i64(t);
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        let tag = r.u8()?;
        let value = r.u64()?;
        match tag {
            0 if value == 0 => Ok(Self::Earliest),
            1 if value == 0 => Ok(Self::Latest),
            2 => Ok(Self::Offset(value)),
            3 => Ok(Self::Timestamp(i64::from_be_bytes(value.to_be_bytes()))),
            _ => Err(DecodeError::InvalidValue {
                field: "start",
                offset,
            }),
        }
    }
}

/// What a subscription reads: one partition, or the partitions a consumer
/// group assigns to this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionTarget {
    /// One partition, read independently of any group.
    Partition(u32),
    /// Join the named consumer group; the broker assigns partitions and
    /// resumes each from the group's committed offset.
    Group(String),
}

/// Opens a subscription; the first frame of a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Topic name.
    pub topic: String,
    /// A partition, or a consumer group.
    pub target: SubscriptionTarget,
    /// Where to start when there is no committed offset.
    pub start: StartPosition,
    /// Initial credit in bytes of `Records` frames.
    pub credit: u64,
    /// Flag `SKIP_DAMAGED`: after reporting a damaged range of a partition
    /// with [`PartitionError`], the broker goes on from the range's end
    /// instead of stopping that partition.
    pub skip_damaged: bool,
}

impl Subscribe {
    /// Bit of `flags`: skip damaged ranges after reporting them.
    pub const SKIP_DAMAGED: u8 = 0x01;

    fn flags(&self) -> u8 {
        if self.skip_damaged {
            Self::SKIP_DAMAGED
        } else {
            0
        }
    }
}

impl Body for Subscribe {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_string("topic", &self.topic)?;
        match &self.target {
            SubscriptionTarget::Partition(p) => {
                dst.put_u8(0);
                dst.put_u32(*p);
            }
            SubscriptionTarget::Group(g) => {
                dst.put_u8(1);
                dst.put_string("group", g)?;
            }
        }
        self.start.encode(dst);
        dst.put_u64(self.credit);
        dst.put_u8(self.flags());
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let topic = r.string()?;
        let offset = r.position();
        let target = match r.u8()? {
            0 => SubscriptionTarget::Partition(r.u32()?),
            1 => SubscriptionTarget::Group(r.string()?),
            _ => {
                return Err(DecodeError::InvalidValue {
                    field: "target",
                    offset,
                });
            }
        };
        let start = StartPosition::decode(r)?;
        let credit = r.u64()?;
        let offset = r.position();
        let flags = r.u8()?;
        if flags & !Self::SKIP_DAMAGED != 0 {
            return Err(DecodeError::InvalidValue {
                field: "flags",
                offset,
            });
        }
        Ok(Self {
            topic,
            target,
            start,
            credit,
            skip_damaged: flags & Self::SKIP_DAMAGED != 0,
        })
    }
}

/// A partition assigned to a subscription and the offset it resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedPartition {
    /// Partition index.
    pub partition: u32,
    /// Offset of the next record the broker will send.
    pub next_offset: u64,
}

/// The partitions this subscription now reads. Sent by the broker after
/// `Subscribe` and again whenever a group rebalances; it replaces the
/// previous assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Increases with every rebalance of the group; 0 for a single-partition
    /// subscription.
    pub generation: u32,
    /// The assigned partitions.
    pub partitions: Vec<AssignedPartition>,
}

impl Body for Assignment {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.generation);
        dst.put_count("partitions", self.partitions.len())?;
        for p in &self.partitions {
            dst.put_u32(p.partition);
            dst.put_u64(p.next_offset);
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let generation = r.u32()?;
        let n = r.count(12)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            partitions.push(AssignedPartition {
                partition: r.u32()?,
                next_offset: r.u64()?,
            });
        }
        Ok(Self {
            generation,
            partitions,
        })
    }
}

/// Grants the broker more bytes of `Records` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Bytes added to the subscription's credit.
    pub bytes: u64,
}

impl Body for Credit {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.bytes);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self { bytes: r.u64()? })
    }
}

/// A record batch with the offset the broker assigned to its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetBatch {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// The batch as the producer wrote it.
    pub batch: Bytes,
}

/// Record batches of one partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// Partition index.
    pub partition: u32,
    /// The partition's end offset when the frame was sent, for lag.
    pub high_watermark: u64,
    /// One or more batches, contiguous and in offset order.
    pub batches: Vec<OffsetBatch>,
}

/// The frame `length` (type and body, as compared with a `max_frame_size`)
/// of a `Records` frame less its batches' bytes, when it carries one batch:
/// type 2, `partition` 4, `high_watermark` 8, batch count 4, then per batch
/// `base_offset` 8 and the batch's length prefix 4.
pub const RECORDS_FRAMING: u32 = 2 + 4 + 8 + 4 + RECORDS_PER_BATCH_FRAMING;

/// What each further batch adds to a `Records` frame besides its bytes:
/// `base_offset` 8 and the length prefix 4.
pub const RECORDS_PER_BATCH_FRAMING: u32 = 8 + 4;

impl Records {
    /// The frame `length` (type and body) of this frame: what must not
    /// exceed the receiver's `max_frame_size`.
    pub fn frame_length(&self) -> u64 {
        self.credit_cost()
            .saturating_sub(crate::frame::FRAME_HEADER_LEN as u64)
    }

    /// Bytes this frame consumes of the subscription's credit: the whole
    /// encoded frame, length prefix included.
    pub fn credit_cost(&self) -> u64 {
        let body: usize = 4
            + 8
            + 4
            + self
                .batches
                .iter()
                .map(|b| 8 + 4 + b.batch.len())
                .sum::<usize>();
        (crate::frame::FRAME_HEADER_LEN + crate::frame::FRAME_TYPE_LEN + body) as u64
    }
}

impl Body for Records {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partition);
        dst.put_u64(self.high_watermark);
        dst.put_count("batches", self.batches.len())?;
        for b in &self.batches {
            dst.put_u64(b.base_offset);
            dst.put_bytes32("batch", &b.batch)?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let partition = r.u32()?;
        let high_watermark = r.u64()?;
        let n = r.count(12)?;
        let mut batches = Vec::with_capacity(n);
        for _ in 0..n {
            batches.push(OffsetBatch {
                base_offset: r.u64()?,
                batch: r.bytes()?,
            });
        }
        Ok(Self {
            partition,
            high_watermark,
            batches,
        })
    }
}

/// Commits a consumer group's position in a partition: `offset` is the next
/// offset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Partition index; must be assigned to this member.
    pub partition: u32,
    /// The next offset the group should read.
    pub offset: u64,
}

impl Body for Commit {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partition);
        dst.put_u64(self.offset);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            partition: r.u32()?,
            offset: r.u64()?,
        })
    }
}

/// The broker's answer to a [`Commit`], in the order the commits were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitAck {
    /// Partition index.
    pub partition: u32,
    /// The offset of the commit answered.
    pub offset: u64,
    /// 0 when the offset is durably committed; otherwise the [`ErrorCode`]
    /// that refused it (`not_assigned`, `invalid_request`, ...). A refused
    /// commit does not end the subscription.
    pub code: u16,
}

impl CommitAck {
    /// The refusal, if the commit was refused.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl Body for CommitAck {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partition);
        dst.put_u64(self.offset);
        dst.put_u16(self.code);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            partition: r.u32()?,
            offset: r.u64()?,
            code: r.u16()?,
        })
    }
}

/// Records of one partition that the broker cannot deliver: the offsets
/// `[first_offset, end_offset)` are damaged (or the whole partition could
/// not be opened). The subscription goes on for its other partitions;
/// this partition stops, unless the client asked for
/// [`Subscribe::skip_damaged`], in which case the broker continues from
/// `end_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionError {
    /// Partition index, in the current assignment.
    pub partition: u32,
    /// The [`ErrorCode`] (`data_damaged`, ...).
    pub code: u16,
    /// First offset that cannot be read.
    pub first_offset: u64,
    /// The next offset that can be read again (exclusive end of the
    /// range); [`PartitionError::END_UNKNOWN`] when unknown.
    pub end_offset: u64,
    /// Human-readable reason.
    pub message: String,
}

impl PartitionError {
    /// `end_offset` when the end of the damaged range is unknown.
    pub const END_UNKNOWN: u64 = u64::MAX;

    /// The error code, if this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }

    /// The end of the range, when known.
    pub fn end(&self) -> Option<u64> {
        (self.end_offset != Self::END_UNKNOWN).then_some(self.end_offset)
    }
}

impl Body for PartitionError {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partition);
        dst.put_u16(self.code);
        dst.put_u64(self.first_offset);
        dst.put_u64(self.end_offset);
        dst.put_string("message", &self.message)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            partition: r.u32()?,
            code: r.u16()?,
            first_offset: r.u64()?,
            end_offset: r.u64()?,
            message: r.string()?,
        })
    }
}

/// Asks the broker to end the subscription; it answers `SubscriptionEnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe;

impl Body for Unsubscribe {
    fn encode_body(&self, _dst: &mut BytesMut) -> Result<(), EncodeError> {
        Ok(())
    }

    fn decode_body(_r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self)
    }
}

/// The last frame the broker sends on a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEnd {
    /// 0 when the client unsubscribed, otherwise an [`ErrorCode`] (the topic
    /// was deleted, the broker is shutting down, ...).
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

impl SubscriptionEnd {
    /// The error code, if the subscription did not end normally.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl Body for SubscriptionEnd {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u16(self.code);
        dst.put_string("reason", &self.reason)
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            code: r.u16()?,
            reason: r.string()?,
        })
    }
}
