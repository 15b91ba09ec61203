//! Frames of the control stream: handshake, keep-alive, goodbye, and the
//! `Error` frame that any stream may carry.

use bytes::{BufMut, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError, ErrorCode};
use crate::frames::Body;
use crate::frames::fields::Field;
use crate::model::{LeaderHint, NodeAddress};

/// First frame of a connection, sent by the client on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol versions the client speaks, in any order.
    pub versions: Vec<u16>,
    /// Free-form client name and version, for the broker's logs.
    pub client_name: String,
    /// Largest frame the client accepts, in bytes (type and body).
    pub max_frame_size: u32,
    /// Optional features the client supports (bit set; none are defined in
    /// version 1, so clients send 0).
    pub features: u64,
}

impl Body for Hello {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_count("versions", self.versions.len())?;
        for v in &self.versions {
            dst.put_u16(*v);
        }
        dst.put_string("client_name", &self.client_name)?;
        dst.put_u32(self.max_frame_size);
        dst.put_u64(self.features);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.count(2)?;
        let mut versions = Vec::with_capacity(n);
        for _ in 0..n {
            versions.push(r.u16()?);
        }
        Ok(Self {
            versions,
            client_name: r.string()?,
            max_frame_size: r.u32()?,
            features: r.u64()?,
        })
    }
}

/// The broker's answer to [`Hello`]: the connection is established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version both sides now speak.
    pub version: u16,
    /// The broker's stable identifier.
    pub broker_id: String,
    /// The principal the broker mapped the client certificate to.
    pub principal: String,
    /// Largest frame the broker accepts, in bytes (type and body).
    pub max_frame_size: u32,
    /// Largest record batch the broker accepts in a `Produce` frame.
    pub max_batch_size: u32,
    /// Most `Produce` frames a producer stream may have unacknowledged.
    pub max_in_flight: u32,
    /// The interval at which the client should send `Ping` when idle, in
    /// milliseconds.
    pub keepalive_ms: u32,
    /// Optional features enabled on this connection (the intersection of
    /// both sides' bits).
    pub features: u64,
}

impl Body for Welcome {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u16(self.version);
        dst.put_string("broker_id", &self.broker_id)?;
        dst.put_string("principal", &self.principal)?;
        dst.put_u32(self.max_frame_size);
        dst.put_u32(self.max_batch_size);
        dst.put_u32(self.max_in_flight);
        dst.put_u32(self.keepalive_ms);
        dst.put_u64(self.features);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            version: r.u16()?,
            broker_id: r.string()?,
            principal: r.string()?,
            max_frame_size: r.u32()?,
            max_batch_size: r.u32()?,
            max_in_flight: r.u32()?,
            keepalive_ms: r.u32()?,
            features: r.u64()?,
        })
    }
}

/// Keep-alive probe; the peer answers [`Pong`] with the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Echoed in the `Pong`.
    pub nonce: u64,
}

impl Body for Ping {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.nonce);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self { nonce: r.u64()? })
    }
}

/// Answer to [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The nonce of the `Ping` being answered.
    pub nonce: u64,
}

impl Body for Pong {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.nonce);
        Ok(())
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self { nonce: r.u64()? })
    }
}

/// Announces that the sender is closing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    /// 0 for a normal close, otherwise an [`ErrorCode`].
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

impl Goodbye {
    /// The error code, if this is not a normal close.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl Body for Goodbye {
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

/// An error answering a request, or ending a stream.
///
/// `correlation_id` names the `Produce` it answers on a producer stream; on
/// other streams it is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The request answered, or 0.
    pub correlation_id: u64,
    /// The raw code, kept as received so that codes added by newer peers
    /// survive; see [`ErrorFrame::error_code`].
    pub code: u16,
    /// Human-readable detail for the user; never contains key material or
    /// payload bytes.
    pub message: String,
    /// With `not_leader`, where the leader is: encoded after `message`, and
    /// only on connections that negotiated
    /// [`LEADER_HINTS`](crate::features::LEADER_HINTS). Absent otherwise.
    pub leader_hint: Option<LeaderHint>,
}

impl ErrorFrame {
    /// An error with `code` and `message`.
    pub fn new(correlation_id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            correlation_id,
            code: code.as_u16(),
            message: message.into(),
            leader_hint: None,
        }
    }

    /// A `not_leader` error with a hint naming the leader, when known.
    pub fn not_leader(
        correlation_id: u64,
        message: impl Into<String>,
        leader: Option<NodeAddress>,
    ) -> Self {
        Self {
            leader_hint: Some(LeaderHint { leader }),
            ..Self::new(correlation_id, ErrorCode::NotLeader, message)
        }
    }

    /// The code, when this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl std::fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error_code() {
            Some(code) => write!(f, "{}: {}", code.name(), self.message),
            None => write!(f, "error {}: {}", self.code, self.message),
        }
    }
}

impl Body for ErrorFrame {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.correlation_id);
        dst.put_u16(self.code);
        dst.put_string("message", &self.message)?;
        match &self.leader_hint {
            Some(hint) => hint.put(dst),
            None => Ok(()),
        }
    }

    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError> {
        let correlation_id = r.u64()?;
        let code = r.u16()?;
        let message = r.string()?;
        // The hint is the only field that may follow `message`; without it
        // the body ends there.
        let leader_hint = if r.remaining() > 0 {
            Some(LeaderHint::get(r)?)
        } else {
            None
        };
        Ok(Self {
            correlation_id,
            code,
            message,
            leader_hint,
        })
    }
}
