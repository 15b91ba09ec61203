//! The frame: `u32 length | u16 type | body`, and its decoder.
//!
//! `length` counts the type and the body, not itself. A receiver checks
//! `length` against the negotiated maximum before reading or allocating the
//! rest, and rejects a body with bytes left over after its last field.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError};
use crate::frames::Body;
use crate::frames::admin::{AdminRequest, AdminResponse};
use crate::frames::control::{ErrorFrame, Goodbye, Hello, Ping, Pong, Welcome};
use crate::frames::produce::{Produce, ProduceAck};
use crate::frames::subscribe::{
    Assignment, Commit, CommitAck, Credit, PartitionError, Records, Subscribe, SubscriptionEnd,
    Unsubscribe,
};

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// Bytes of the type field.
pub const FRAME_TYPE_LEN: usize = 2;
/// The maximum frame length (type and body) a peer must accept until the
/// handshake says otherwise.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 4 * 1024 * 1024;
/// The smallest maximum a peer may announce.
pub const MIN_MAX_FRAME_SIZE: u32 = 64 * 1024;
/// The largest maximum a peer may announce.
pub const ABSOLUTE_MAX_FRAME_SIZE: u32 = 64 * 1024 * 1024;

macro_rules! frame_types {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, )*) => {
        /// Every frame type of protocol version 1, with its wire code.
        ///
        /// Codes are grouped by stream: `0x00xx` control, `0x001x` produce,
        /// `0x002x` subscriptions, `0x01xx` admin requests, `0x02xx` admin
        /// responses. A code is never reused.
        #[repr(u16)]
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum FrameType {
            $( $(#[$doc])* $name = $code, )*
        }

        impl FrameType {
            /// Every frame type, in code order.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$name,)*];

            /// The type for a wire code.
            pub fn from_u16(code: u16) -> Option<Self> {
                match code {
                    $( $code => Some(Self::$name), )*
                    _ => None,
                }
            }

            /// The type's name as written in docs/PROTOCOL.md.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$name => stringify!($name), )*
                }
            }
        }
    };
}

frame_types! {
    /// Client → broker, control stream: versions and limits.
    Hello = 0x0001,
    /// Broker → client, control stream: the chosen version, principal, limits.
    Welcome = 0x0002,
    /// Either way, control stream: keep-alive probe.
    Ping = 0x0003,
    /// Either way, control stream: keep-alive answer.
    Pong = 0x0004,
    /// Either way, control stream: the sender closes the connection.
    Goodbye = 0x0005,
    /// Broker → client, any stream: a request failed or the stream ends.
    Error = 0x0006,
    /// Client → broker, producer stream: append a batch.
    Produce = 0x0010,
    /// Broker → client, producer stream: the batch is durable.
    ProduceAck = 0x0011,
    /// Client → broker, subscription stream: open it.
    Subscribe = 0x0020,
    /// Broker → client, subscription stream: partitions and positions.
    Assignment = 0x0021,
    /// Client → broker, subscription stream: more byte credit.
    Credit = 0x0022,
    /// Broker → client, subscription stream: record batches.
    Records = 0x0023,
    /// Client → broker, subscription stream: commit a group offset.
    Commit = 0x0024,
    /// Broker → client, subscription stream: the answer to a commit.
    CommitAck = 0x0025,
    /// Client → broker, subscription stream: end it.
    Unsubscribe = 0x0026,
    /// Broker → client, subscription stream: the last frame.
    SubscriptionEnd = 0x0027,
    /// Broker → client, subscription stream: a partition's records cannot
    /// be delivered (a damaged offset range).
    PartitionError = 0x0028,
    /// Admin request: the caller's principal.
    WhoAmI = 0x0100,
    /// Admin request: create a topic.
    CreateTopic = 0x0101,
    /// Admin request: delete a topic.
    DeleteTopic = 0x0102,
    /// Admin request: describe a topic.
    DescribeTopic = 0x0103,
    /// Admin request: list topics.
    ListTopics = 0x0104,
    /// Admin request: let a read-only partition take writes again,
    /// accepting the loss.
    TopicRecover = 0x0105,
    /// Admin request: add an ACL rule.
    AclGrant = 0x0110,
    /// Admin request: remove an ACL rule.
    AclRevoke = 0x0111,
    /// Admin request: list ACL rules.
    AclList = 0x0112,
    /// Admin request: get an idempotent producer id.
    InitProducer = 0x0120,
    /// Admin request: key versions and rewrap progress.
    KeyStatus = 0x0130,
    /// Admin request: rotate a key.
    KeyRotate = 0x0131,
    /// Admin request: start a rewrap.
    KeyRewrap = 0x0132,
    /// Admin request: make a version decrypt-only.
    KeyRetire = 0x0133,
    /// Admin request: destroy a version.
    KeyDestroy = 0x0134,
    /// Admin request: mark a version compromised.
    KeyCompromised = 0x0135,
    /// Admin request: the audit chain head.
    AuditHead = 0x0140,
    /// Admin request: ask for access to a topic.
    AccessRequest = 0x0150,
    /// Admin request: list access requests.
    AccessList = 0x0151,
    /// Admin request: approve an access request.
    AccessApprove = 0x0152,
    /// Admin request: deny an access request.
    AccessDeny = 0x0153,
    /// Admin request: a topic's end-to-end recipients.
    RecipientList = 0x0160,
    /// Admin request: add or replace a recipient.
    RecipientPut = 0x0161,
    /// Admin request: remove a recipient.
    RecipientRemove = 0x0162,
    /// Admin request: the cluster's nodes and partition leaders.
    Metadata = 0x0170,
    /// Admin request: the metadata group's members and their state.
    ClusterStatus = 0x0171,
    /// Admin request: add a node to the cluster.
    ClusterAddNode = 0x0172,
    /// Admin request: remove a node from the cluster.
    ClusterRemoveNode = 0x0173,
    /// Admin response: success without data.
    AdminOk = 0x0200,
    /// Admin response to `WhoAmI`.
    WhoAmIResult = 0x0201,
    /// Admin response: one topic.
    TopicResult = 0x0202,
    /// Admin response: topics.
    TopicListResult = 0x0203,
    /// Admin response: ACL rules.
    AclListResult = 0x0204,
    /// Admin response: a producer id.
    ProducerResult = 0x0205,
    /// Admin response: key status.
    KeyStatusResult = 0x0206,
    /// Admin response: a key version after a change.
    KeyChangedResult = 0x0207,
    /// Admin response: the audit chain head.
    AuditHeadResult = 0x0208,
    /// Admin response: one access request.
    AccessResult = 0x0209,
    /// Admin response: access requests.
    AccessListResult = 0x020A,
    /// Admin response: a topic's recipients.
    RecipientListResult = 0x020B,
    /// Admin response: the cluster's nodes and partition leaders.
    MetadataResult = 0x0210,
    /// Admin response: the metadata group's members and their state.
    ClusterStatusResult = 0x0211,
}

impl FrameType {
    /// The wire code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// True for the admin request types (`0x01xx`).
    pub fn is_admin_request(self) -> bool {
        self.as_u16() & 0xFF00 == 0x0100
    }

    /// True for the admin response types (`0x02xx`).
    pub fn is_admin_response(self) -> bool {
        self.as_u16() & 0xFF00 == 0x0200
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:04x})", self.name(), self.as_u16())
    }
}

/// One decoded frame.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`Goodbye`].
    Goodbye(Goodbye),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
    /// See [`Produce`].
    Produce(Produce),
    /// See [`ProduceAck`].
    ProduceAck(ProduceAck),
    /// See [`Subscribe`].
    Subscribe(Subscribe),
    /// See [`Assignment`].
    Assignment(Assignment),
    /// See [`Credit`].
    Credit(Credit),
    /// See [`Records`].
    Records(Records),
    /// See [`Commit`].
    Commit(Commit),
    /// See [`CommitAck`].
    CommitAck(CommitAck),
    /// See [`Unsubscribe`].
    Unsubscribe(Unsubscribe),
    /// See [`SubscriptionEnd`].
    SubscriptionEnd(SubscriptionEnd),
    /// See [`PartitionError`].
    PartitionError(PartitionError),
    /// An admin request; its variant decides the frame type.
    Request(AdminRequest),
    /// An admin response; its variant decides the frame type.
    Response(AdminResponse),
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Welcome(_) => FrameType::Welcome,
            Self::Ping(_) => FrameType::Ping,
            Self::Pong(_) => FrameType::Pong,
            Self::Goodbye(_) => FrameType::Goodbye,
            Self::Error(_) => FrameType::Error,
            Self::Produce(_) => FrameType::Produce,
            Self::ProduceAck(_) => FrameType::ProduceAck,
            Self::Subscribe(_) => FrameType::Subscribe,
            Self::Assignment(_) => FrameType::Assignment,
            Self::Credit(_) => FrameType::Credit,
            Self::Records(_) => FrameType::Records,
            Self::Commit(_) => FrameType::Commit,
            Self::CommitAck(_) => FrameType::CommitAck,
            Self::Unsubscribe(_) => FrameType::Unsubscribe,
            Self::SubscriptionEnd(_) => FrameType::SubscriptionEnd,
            Self::PartitionError(_) => FrameType::PartitionError,
            Self::Request(r) => r.frame_type(),
            Self::Response(r) => r.frame_type(),
        }
    }

    /// Appends the encoded frame to `dst`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::FrameTooLarge`] when the frame would exceed
    /// `max_frame_size` (nothing is appended), or [`EncodeError::TooLong`]
    /// when a field exceeds its length prefix.
    pub fn encode(&self, dst: &mut BytesMut, max_frame_size: u32) -> Result<(), EncodeError> {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u16(self.frame_type().as_u16());
        let body = match self {
            Self::Hello(f) => f.encode_body(dst),
            Self::Welcome(f) => f.encode_body(dst),
            Self::Ping(f) => f.encode_body(dst),
            Self::Pong(f) => f.encode_body(dst),
            Self::Goodbye(f) => f.encode_body(dst),
            Self::Error(f) => f.encode_body(dst),
            Self::Produce(f) => f.encode_body(dst),
            Self::ProduceAck(f) => f.encode_body(dst),
            Self::Subscribe(f) => f.encode_body(dst),
            Self::Assignment(f) => f.encode_body(dst),
            Self::Credit(f) => f.encode_body(dst),
            Self::Records(f) => f.encode_body(dst),
            Self::Commit(f) => f.encode_body(dst),
            Self::CommitAck(f) => f.encode_body(dst),
            Self::Unsubscribe(f) => f.encode_body(dst),
            Self::SubscriptionEnd(f) => f.encode_body(dst),
            Self::PartitionError(f) => f.encode_body(dst),
            Self::Request(r) => r.encode_body(dst),
            Self::Response(r) => r.encode_body(dst),
        };
        let len = dst.len() - start - FRAME_HEADER_LEN;
        let fits = match body {
            Ok(()) if len > max_frame_size as usize => Err(EncodeError::FrameTooLarge {
                len,
                max: max_frame_size as usize,
            }),
            other => other,
        };
        match fits {
            Ok(()) => {
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                if let Some(prefix) = dst.get_mut(start..start + FRAME_HEADER_LEN) {
                    prefix.copy_from_slice(&len.to_be_bytes());
                }
                Ok(())
            }
            Err(e) => {
                dst.truncate(start);
                Err(e)
            }
        }
    }

    /// Encodes the frame into a new buffer.
    ///
    /// # Errors
    ///
    /// As [`Frame::encode`].
    pub fn to_bytes(&self, max_frame_size: u32) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf, max_frame_size)?;
        Ok(buf.freeze())
    }

    /// Encodes the frame as chunks whose concatenation is exactly what
    /// [`Frame::encode`] writes, without copying record batches: in
    /// `Produce` and `Records` frames every batch of at least
    /// [`ZERO_COPY_MIN`] bytes is a chunk of its own that shares the
    /// frame's buffer. Hand the chunks to a vectored write (quinn's
    /// `write_all_chunks`). Other frames come back as one chunk.
    ///
    /// # Errors
    ///
    /// As [`Frame::encode`].
    pub fn encode_chunks(&self, max_frame_size: u32) -> Result<Vec<Bytes>, EncodeError> {
        let mut head = BytesMut::with_capacity(64);
        let mut split = ChunkSplit::default();
        head.put_u32(0);
        head.put_u16(self.frame_type().as_u16());
        // The field order below is that of `Produce::encode_body` and
        // `Records::encode_body`; tests check the bytes are identical.
        match self {
            Self::Produce(p) => {
                head.put_u64(p.correlation_id);
                head.put_string("topic", &p.topic)?;
                head.put_u32(p.partition);
                split.put_batch(&mut head, &p.batch)?;
            }
            Self::Records(r) => {
                head.put_u32(r.partition);
                head.put_u64(r.high_watermark);
                head.put_count("batches", r.batches.len())?;
                for b in &r.batches {
                    head.put_u64(b.base_offset);
                    split.put_batch(&mut head, &b.batch)?;
                }
            }
            _ => return Ok(vec![self.to_bytes(max_frame_size)?]),
        }
        let len = (head.len() - FRAME_HEADER_LEN).saturating_add(split.external);
        if len > max_frame_size as usize {
            return Err(EncodeError::FrameTooLarge {
                len,
                max: max_frame_size as usize,
            });
        }
        let len = u32::try_from(len).map_err(|_| EncodeError::FrameTooLarge {
            len,
            max: max_frame_size as usize,
        })?;
        if let Some(prefix) = head.get_mut(..FRAME_HEADER_LEN) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        let head = head.freeze();
        let mut chunks = Vec::with_capacity(2 * split.batches.len() + 1);
        let mut start = 0;
        for (end, batch) in split.batches {
            chunks.push(head.slice(start..end));
            chunks.push(batch);
            start = end;
        }
        if start < head.len() {
            chunks.push(head.slice(start..));
        }
        Ok(chunks)
    }

    /// Decodes a frame body of type `code`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownFrameType`], or the first field that does not
    /// decode, or [`DecodeError::TrailingBytes`].
    pub fn decode_body(code: u16, body: Bytes) -> Result<Self, DecodeError> {
        let ty = FrameType::from_u16(code).ok_or(DecodeError::UnknownFrameType(code))?;
        let mut r = Reader::new(body);
        let frame = match ty {
            FrameType::Hello => Self::Hello(Hello::decode_body(&mut r)?),
            FrameType::Welcome => Self::Welcome(Welcome::decode_body(&mut r)?),
            FrameType::Ping => Self::Ping(Ping::decode_body(&mut r)?),
            FrameType::Pong => Self::Pong(Pong::decode_body(&mut r)?),
            FrameType::Goodbye => Self::Goodbye(Goodbye::decode_body(&mut r)?),
            FrameType::Error => Self::Error(ErrorFrame::decode_body(&mut r)?),
            FrameType::Produce => Self::Produce(Produce::decode_body(&mut r)?),
            FrameType::ProduceAck => Self::ProduceAck(ProduceAck::decode_body(&mut r)?),
            FrameType::Subscribe => Self::Subscribe(Subscribe::decode_body(&mut r)?),
            FrameType::Assignment => Self::Assignment(Assignment::decode_body(&mut r)?),
            FrameType::Credit => Self::Credit(Credit::decode_body(&mut r)?),
            FrameType::Records => Self::Records(Records::decode_body(&mut r)?),
            FrameType::Commit => Self::Commit(Commit::decode_body(&mut r)?),
            FrameType::CommitAck => Self::CommitAck(CommitAck::decode_body(&mut r)?),
            FrameType::Unsubscribe => Self::Unsubscribe(Unsubscribe::decode_body(&mut r)?),
            FrameType::SubscriptionEnd => {
                Self::SubscriptionEnd(SubscriptionEnd::decode_body(&mut r)?)
            }
            FrameType::PartitionError => Self::PartitionError(PartitionError::decode_body(&mut r)?),
            ty if ty.is_admin_request() => match AdminRequest::decode_body(ty, &mut r)? {
                Some(req) => Self::Request(req),
                None => return Err(DecodeError::UnknownFrameType(code)),
            },
            ty => match AdminResponse::decode_body(ty, &mut r)? {
                Some(resp) => Self::Response(resp),
                None => return Err(DecodeError::UnknownFrameType(code)),
            },
        };
        r.finish()?;
        Ok(frame)
    }
}

/// Record batches at least this long are not copied by
/// [`Frame::encode_chunks`]; shorter ones are cheaper to copy than to send
/// as chunks of their own.
pub const ZERO_COPY_MIN: usize = 2048;

/// Where [`Frame::encode_chunks`] cuts its header buffer to insert batches.
#[derive(Default)]
struct ChunkSplit {
    /// (offset in the header buffer, batch to insert there).
    batches: Vec<(usize, Bytes)>,
    /// Bytes of the batches not in the header buffer.
    external: usize,
}

impl ChunkSplit {
    /// Writes `batch` as `u32 length | bytes`, leaving long bytes out of
    /// `head` to be sent as their own chunk.
    fn put_batch(&mut self, head: &mut BytesMut, batch: &Bytes) -> Result<(), EncodeError> {
        if batch.len() < ZERO_COPY_MIN {
            return head.put_bytes32("batch", batch);
        }
        head.put_u32(crate::codec::len32("batch", batch.len())?);
        self.batches.push((head.len(), batch.clone()));
        self.external = self.external.saturating_add(batch.len());
        Ok(())
    }
}

/// The result of [`decode_frame`].
#[allow(clippy::large_enum_variant)] // moved once, straight to its consumer
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame and the bytes it took from the input.
    Frame(Frame, usize),
    /// The input holds part of a frame; at least this many more bytes are
    /// needed.
    NeedMore(usize),
}

/// Decodes one frame from the front of `src`.
///
/// The length prefix is checked against `max_frame_size` as soon as it is
/// read, before waiting for or allocating the body.
///
/// # Errors
///
/// [`DecodeError::FrameTooLarge`] or [`DecodeError::FrameTooShort`] for a bad
/// length; otherwise as [`Frame::decode_body`].
pub fn decode_frame(src: &Bytes, max_frame_size: u32) -> Result<Decoded, DecodeError> {
    let Some(len) = peek_length(src, max_frame_size)? else {
        return Ok(Decoded::NeedMore(FRAME_HEADER_LEN - src.len()));
    };
    let total = FRAME_HEADER_LEN + len;
    if src.len() < total {
        return Ok(Decoded::NeedMore(total - src.len()));
    }
    let mut frame = src.slice(FRAME_HEADER_LEN..total);
    let code = frame.get_u16();
    Ok(Decoded::Frame(Frame::decode_body(code, frame)?, total))
}

/// Reads and checks the length prefix; `None` when fewer than four bytes
/// are available.
fn peek_length(src: &[u8], max_frame_size: u32) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = src.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let mut raw = [0u8; FRAME_HEADER_LEN];
    raw.copy_from_slice(prefix);
    let len = u32::from_be_bytes(raw) as usize;
    if len > max_frame_size as usize {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame_size as usize,
        });
    }
    if len < FRAME_TYPE_LEN {
        return Err(DecodeError::FrameTooShort(len));
    }
    Ok(Some(len))
}

/// Reassembles frames from a byte stream that arrives in pieces.
///
/// ```
/// use bytes::BytesMut;
/// use strongbox_protocol::frame::{Frame, FrameDecoder, DEFAULT_MAX_FRAME_SIZE};
/// use strongbox_protocol::frames::control::Ping;
///
/// let wire = Frame::Ping(Ping { nonce: 7 }).to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
/// let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
/// decoder.extend(&wire[..3]);
/// assert_eq!(decoder.next_frame()?, None);
/// decoder.extend(&wire[3..]);
/// assert_eq!(decoder.next_frame()?, Some(Frame::Ping(Ping { nonce: 7 })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_size: u32,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_size`.
    pub fn new(max_frame_size: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_size,
        }
    }

    /// Changes the limit, for example after the handshake.
    pub fn set_max_frame_size(&mut self, max_frame_size: u32) {
        self.max_frame_size = max_frame_size;
    }

    /// The current limit.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the internal buffer. While the caller decodes every whole
    /// frame after each [`FrameDecoder::extend`], it never exceeds one
    /// maximum frame (length prefix included) plus the largest `extend`.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.make_room(data.len());
        self.buf.extend_from_slice(data);
    }

    /// Makes room for `additional` more bytes.
    ///
    /// `BytesMut::reserve` may double the whole allocation, which would let a
    /// peer make the buffer hold twice the frame limit; this grows to what is
    /// needed, or doubles only up to one maximum frame.
    fn make_room(&mut self, additional: usize) {
        let spare = self.buf.capacity().saturating_sub(self.buf.len());
        if spare >= additional || self.buf.try_reclaim(additional) {
            return;
        }
        let needed = self.buf.len().saturating_add(additional);
        let frame_max = FRAME_HEADER_LEN + self.max_frame_size as usize;
        let target = needed.max(self.buf.capacity().saturating_mul(2).min(frame_max));
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.buf);
        self.buf = grown;
    }

    /// Decodes the next whole frame, if the buffer holds one.
    ///
    /// After an error the stream is unusable: the caller closes it with the
    /// error's [`DecodeError::code`].
    ///
    /// # Errors
    ///
    /// As [`decode_frame`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(len) = peek_length(&self.buf, self.max_frame_size)? else {
            return Ok(None);
        };
        let total = FRAME_HEADER_LEN + len;
        if self.buf.len() < total {
            // Reserve for this frame only; `len` is already bounded by the
            // maximum, so a forged length cannot make us allocate more.
            self.make_room(total - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total).freeze();
        frame.advance(FRAME_HEADER_LEN);
        let code = frame.get_u16();
        Frame::decode_body(code, frame).map(Some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::cast_possible_truncation
    )]

    use super::*;
    use crate::frames::control::Ping;
    use crate::frames::subscribe::OffsetBatch;

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn batch(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    fn records(sizes: &[usize]) -> Frame {
        Frame::Records(Records {
            partition: 3,
            high_watermark: 1 << 40,
            batches: sizes
                .iter()
                .enumerate()
                .map(|(i, len)| OffsetBatch {
                    base_offset: 100 * i as u64,
                    batch: batch(*len, i as u8),
                })
                .collect(),
        })
    }

    #[test]
    fn chunks_concatenate_to_the_encoding() {
        let frames = [
            Frame::Produce(Produce {
                correlation_id: 7,
                topic: "orders".into(),
                partition: 2,
                batch: batch(10, 1),
            }),
            Frame::Produce(Produce {
                correlation_id: u64::MAX,
                topic: "t".into(),
                partition: 0,
                batch: batch(256 * 1024, 9),
            }),
            records(&[]),
            records(&[5]),
            records(&[ZERO_COPY_MIN - 1, ZERO_COPY_MIN, 70_000, 12, 300_000]),
            Frame::Ping(Ping { nonce: 1 }),
        ];
        for frame in &frames {
            let expected = frame.to_bytes(DEFAULT_MAX_FRAME_SIZE).unwrap();
            let chunks = frame.encode_chunks(DEFAULT_MAX_FRAME_SIZE).unwrap();
            assert_eq!(
                concat(&chunks),
                expected.to_vec(),
                "{:?}",
                frame.frame_type()
            );
            assert!(chunks.iter().all(|c| !c.is_empty()));
        }
    }

    #[test]
    fn large_batches_are_shared_not_copied() {
        let big = batch(100_000, 4);
        let frame = Frame::Produce(Produce {
            correlation_id: 1,
            topic: "t".into(),
            partition: 0,
            batch: big.clone(),
        });
        let chunks = frame.encode_chunks(DEFAULT_MAX_FRAME_SIZE).unwrap();
        assert_eq!(chunks.len(), 2, "the header, then the batch");
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
        let frame = records(&[100, 50_000, 60_000]);
        let chunks = frame.encode_chunks(DEFAULT_MAX_FRAME_SIZE).unwrap();
        // head (with the small batch) | batch | offset+length | batch
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].len(), 50_000);
        assert_eq!(chunks[2].len(), 12);
        assert_eq!(chunks[3].len(), 60_000);
    }

    #[test]
    fn errors_match_encode() {
        let frame = records(&[40_000, 40_000]);
        let max = 70_000;
        assert_eq!(
            frame.encode_chunks(max),
            Err(frame.to_bytes(max).unwrap_err())
        );
        let long_topic = Frame::Produce(Produce {
            correlation_id: 1,
            topic: "x".repeat(70_000),
            partition: 0,
            batch: batch(4096, 0),
        });
        assert_eq!(
            long_topic.encode_chunks(ABSOLUTE_MAX_FRAME_SIZE),
            Err(long_topic.to_bytes(ABSOLUTE_MAX_FRAME_SIZE).unwrap_err())
        );
    }
}
