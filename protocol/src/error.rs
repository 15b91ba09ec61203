//! Error codes carried on the wire and the errors of this crate.

use thiserror::Error;

/// Stable error codes carried by the `Error` and `Goodbye` frames.
///
/// A code is never renumbered and a retired code is never reused: peers of
/// other versions and other languages match on these numbers. Codes are
/// grouped by range: `1..=15` protocol, `16..=31` identity and
/// authorization, `32..=47` topics, `48..=63` produce, `64..=79`
/// subscriptions, `80..=95` storage and keys, `96..=111` admin requests,
/// `112..=127` broker state, `128..=135` clusters.
#[repr(u16)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// A frame that is not valid in the stream's current state.
    ProtocolViolation = 1,
    /// A frame whose body does not decode.
    MalformedFrame = 2,
    /// A frame longer than the negotiated maximum.
    FrameTooLarge = 3,
    /// A frame type this peer does not know.
    UnknownFrameType = 4,
    /// No protocol version in common.
    UnsupportedVersion = 5,
    /// A frame arrived out of order, for example a second `Hello`.
    UnexpectedFrame = 6,
    /// The broker sent `Records` to a subscription that had no credit left.
    CreditExceeded = 7,
    /// A limit (streams, in-flight requests, connections) was exceeded.
    LimitExceeded = 8,
    /// The peer did not answer in time (handshake or keep-alive).
    Timeout = 9,
    /// The client's `Hello.max_frame_size` is smaller than the largest frame
    /// the broker may have to send it (its `max_batch_size` plus the framing
    /// of a `Records` frame).
    FrameSizeTooSmall = 10,

    /// The principal may not perform the operation on the resource.
    NotAuthorized = 16,
    /// The client certificate was missing, invalid, expired or revoked.
    AuthenticationFailed = 17,

    /// The topic does not exist.
    UnknownTopic = 32,
    /// The partition does not exist in the topic.
    UnknownPartition = 33,
    /// A topic with that name already exists.
    TopicExists = 34,
    /// The topic name breaks the naming rules.
    InvalidTopicName = 35,
    /// A topic configuration value is out of range.
    InvalidConfig = 36,

    /// A record batch whose CRC-32C does not match its contents.
    CorruptBatch = 48,
    /// A record batch whose framing is invalid (lengths, counts, flags).
    InvalidBatch = 49,
    /// An idempotent producer skipped sequence numbers.
    OutOfOrderSequence = 50,
    /// An idempotent producer used an epoch older than the current one.
    ProducerFenced = 51,
    /// The producer id is unknown to the broker.
    UnknownProducer = 52,
    /// The batch uses a compression codec the broker does not accept.
    UnsupportedCodec = 53,
    /// An idempotent batch carries an epoch that `InitProducer` never issued
    /// for its producer id (newer than the current one).
    InvalidProducerEpoch = 54,
    /// The producer id was issued to another principal.
    ProducerNotOwned = 55,

    /// The requested offset is outside the partition's range.
    OffsetOutOfRange = 64,
    /// A commit for a partition not assigned to this group member.
    NotAssigned = 65,
    /// The consumer group name breaks the naming rules.
    InvalidGroup = 66,

    /// The partition's log cannot be read or written right now (I/O, a
    /// partition that could not be opened); damaged data is
    /// [`ErrorCode::DataDamaged`].
    PartitionUnavailable = 80,
    /// The key provider (HSM) could not wrap or unwrap a key.
    KeyUnavailable = 81,
    /// The key that protects the data has been destroyed.
    KeyDestroyed = 82,
    /// A key version is still needed by some envelopes.
    KeyInUse = 83,
    /// The partition's disk is full; the broker refuses writes until it can
    /// write again, then resumes by itself. Retry later.
    StorageFull = 84,
    /// A write or sync of the partition's log failed; the broker refuses
    /// writes until the log has resumed from its last durable point, which
    /// it does by itself. Retry later.
    StorageFailed = 85,
    /// Stored data failed its integrity checks (a frame that does not
    /// authenticate, a segment cut short or missing, a lost key envelope):
    /// those records cannot be read until the data is restored.
    DataDamaged = 86,
    /// The partition is read-only: its log is shorter than the offsets it
    /// acknowledged, or misses a segment the broker knows of. Writes are
    /// refused until an operator accepts the loss (`strongbox topic
    /// recover`). Not retriable.
    PartitionReadOnly = 87,

    /// The request names something that does not exist.
    NotFound = 96,
    /// The request is well formed but its values are not acceptable.
    InvalidRequest = 97,
    /// The request conflicts with the current state (already decided, exists).
    Conflict = 98,

    /// The broker is shutting down; retry against it later.
    ShuttingDown = 112,
    /// An internal error; the broker log has the details.
    Internal = 113,

    /// The node is not the leader of what the request needs (the metadata
    /// group, or the partition); the `Error` frame may carry a leader hint.
    /// Retry at the leader.
    NotLeader = 128,
    /// No leader is elected right now (an election is under way, or most
    /// nodes are unreachable). Retry later.
    NoLeader = 129,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: &'static [ErrorCode] = &[
        Self::ProtocolViolation,
        Self::MalformedFrame,
        Self::FrameTooLarge,
        Self::UnknownFrameType,
        Self::UnsupportedVersion,
        Self::UnexpectedFrame,
        Self::CreditExceeded,
        Self::LimitExceeded,
        Self::Timeout,
        Self::FrameSizeTooSmall,
        Self::NotAuthorized,
        Self::AuthenticationFailed,
        Self::UnknownTopic,
        Self::UnknownPartition,
        Self::TopicExists,
        Self::InvalidTopicName,
        Self::InvalidConfig,
        Self::CorruptBatch,
        Self::InvalidBatch,
        Self::OutOfOrderSequence,
        Self::ProducerFenced,
        Self::UnknownProducer,
        Self::UnsupportedCodec,
        Self::InvalidProducerEpoch,
        Self::ProducerNotOwned,
        Self::OffsetOutOfRange,
        Self::NotAssigned,
        Self::InvalidGroup,
        Self::PartitionUnavailable,
        Self::KeyUnavailable,
        Self::KeyDestroyed,
        Self::KeyInUse,
        Self::StorageFull,
        Self::StorageFailed,
        Self::DataDamaged,
        Self::PartitionReadOnly,
        Self::NotFound,
        Self::InvalidRequest,
        Self::Conflict,
        Self::ShuttingDown,
        Self::Internal,
        Self::NotLeader,
        Self::NoLeader,
    ];

    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for `value`, if it is one this version knows.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_u16() == value)
    }

    /// The code's name as written in docs/PROTOCOL.md, in snake case.
    pub fn name(self) -> &'static str {
        match self {
            Self::ProtocolViolation => "protocol_violation",
            Self::MalformedFrame => "malformed_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnknownFrameType => "unknown_frame_type",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::CreditExceeded => "credit_exceeded",
            Self::LimitExceeded => "limit_exceeded",
            Self::Timeout => "timeout",
            Self::FrameSizeTooSmall => "frame_size_too_small",
            Self::NotAuthorized => "not_authorized",
            Self::AuthenticationFailed => "authentication_failed",
            Self::UnknownTopic => "unknown_topic",
            Self::UnknownPartition => "unknown_partition",
            Self::TopicExists => "topic_exists",
            Self::InvalidTopicName => "invalid_topic_name",
            Self::InvalidConfig => "invalid_config",
            Self::CorruptBatch => "corrupt_batch",
            Self::InvalidBatch => "invalid_batch",
            Self::OutOfOrderSequence => "out_of_order_sequence",
            Self::ProducerFenced => "producer_fenced",
            Self::UnknownProducer => "unknown_producer",
            Self::UnsupportedCodec => "unsupported_codec",
            Self::InvalidProducerEpoch => "invalid_producer_epoch",
            Self::ProducerNotOwned => "producer_not_owned",
            Self::OffsetOutOfRange => "offset_out_of_range",
            Self::NotAssigned => "not_assigned",
            Self::InvalidGroup => "invalid_group",
            Self::PartitionUnavailable => "partition_unavailable",
            Self::KeyUnavailable => "key_unavailable",
            Self::KeyDestroyed => "key_destroyed",
            Self::KeyInUse => "key_in_use",
            Self::StorageFull => "storage_full",
            Self::StorageFailed => "storage_failed",
            Self::DataDamaged => "data_damaged",
            Self::PartitionReadOnly => "partition_read_only",
            Self::NotFound => "not_found",
            Self::InvalidRequest => "invalid_request",
            Self::Conflict => "conflict",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::NotLeader => "not_leader",
            Self::NoLeader => "no_leader",
        }
    }

    /// Whether a client may retry the same request unchanged later.
    ///
    /// This is the one place clients classify broker errors: a retriable
    /// code is retried within the caller's time budget (a producer's
    /// delivery timeout, a consumer's subscribe timeout); any other code
    /// fails the operation at once. Codes this version does not know are
    /// not retriable. A new transient condition is one more arm here.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            Self::PartitionUnavailable
                | Self::KeyUnavailable
                | Self::StorageFull
                | Self::StorageFailed
                | Self::ShuttingDown
                | Self::Timeout
                | Self::LimitExceeded
                | Self::NotLeader
                | Self::NoLeader
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// Why a [`Reader`](crate::codec::Reader) could not read: the input ended,
/// was left over, or held bytes outside a primitive's domain.
///
/// Offsets count from the start of the reader's input. Callers map it into
/// their own error: [`DecodeError`] here, the storage and client crates'
/// format errors there.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The input ended before the value did.
    #[error("truncated at byte {offset}: need {need} bytes, have {have}")]
    Truncated {
        /// Where the short read started.
        offset: usize,
        /// Bytes the value needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// Bytes were left after a complete value.
    #[error("{remaining} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where the unread bytes start.
        offset: usize,
        /// How many bytes were not read.
        remaining: usize,
    },
    /// A string was not UTF-8.
    #[error("invalid UTF-8 in string at byte {offset}")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// A field held a value outside its domain (a `bool` other than 0 or 1).
    #[error("invalid value for {field} at byte {offset}")]
    InvalidValue {
        /// The field's name.
        field: &'static str,
        /// Where the field starts.
        offset: usize,
    },
}

/// Why bytes could not be decoded.
///
/// Offsets count from the start of the value being decoded (the frame body
/// or the record batch).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated at byte {offset}: need {need} bytes, have {have}")]
    Truncated {
        /// Where the short read started.
        offset: usize,
        /// Bytes the value needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// Bytes were left after a complete value.
    #[error("{remaining} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where the unread bytes start.
        offset: usize,
        /// How many bytes were not read.
        remaining: usize,
    },
    /// A string field was not UTF-8.
    #[error("invalid UTF-8 in string at byte {offset}")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// A field held a value outside its domain (an unknown enum tag, a
    /// reserved bit set).
    #[error("invalid value for {field} at byte {offset}")]
    InvalidValue {
        /// The field's name as in docs/PROTOCOL.md.
        field: &'static str,
        /// Where the field starts.
        offset: usize,
    },
    /// A frame type this version does not know.
    #[error("unknown frame type 0x{0:04x}")]
    UnknownFrameType(u16),
    /// A frame length over the negotiated maximum, refused before reading it.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The declared length.
        len: usize,
        /// The negotiated maximum.
        max: usize,
    },
    /// A frame length too small to hold the frame type.
    #[error("frame length {0} is shorter than the 2-byte type")]
    FrameTooShort(usize),
    /// A record batch whose CRC-32C does not match.
    #[error("record batch CRC-32C mismatch: stored {stored:08x}, computed {computed:08x}")]
    CrcMismatch {
        /// The CRC in the batch header.
        stored: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// A record batch that uses a compression codec this version rejects.
    #[error("record batch uses unsupported compression codec {0}")]
    UnsupportedCodec(u8),
}

impl DecodeError {
    /// The wire error code a peer reports for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::CrcMismatch { .. } => ErrorCode::CorruptBatch,
            Self::UnsupportedCodec(_) => ErrorCode::UnsupportedCodec,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

impl From<ReadError> for DecodeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Truncated { offset, need, have } => Self::Truncated { offset, need, have },
            ReadError::TrailingBytes { offset, remaining } => {
                Self::TrailingBytes { offset, remaining }
            }
            ReadError::InvalidUtf8 { offset } => Self::InvalidUtf8 { offset },
            ReadError::InvalidValue { field, offset } => Self::InvalidValue { field, offset },
        }
    }
}

/// Why a value could not be encoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A field is longer than its length prefix can express.
    #[error("{field} is {len} bytes long; the maximum is {max}")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest length the prefix can hold.
        max: usize,
    },
    /// The encoded frame would exceed the negotiated maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The frame's encoded length.
        len: usize,
        /// The negotiated maximum.
        max: usize,
    },
    /// A value is outside the range its field can encode.
    #[error("{field} is out of range: {detail}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}
