//! The peer protocol's frame: a fixed 16-byte header and an opaque
//! payload, one request and one response per QUIC stream.
//!
//! ```text
//! offset size field
//!      0    1 version         1
//!      1    1 kind            1 request, 2 response, 3 error
//!      2    2 method / code   request and response: the method;
//!                             error: the error code (ErrorCode)
//!      4    8 node id         request: the sender's claimed node id;
//!                             response and error: the responder's node id
//!     12    4 payload length  bytes that follow the header
//!     16    n payload         request/response: opaque bytes;
//!                             error: a UTF-8 message, at most 1024 bytes
//! ```
//!
//! All integers are big-endian, as in the client protocol. The decoder
//! checks the length against the configured maximum before anything is
//! allocated for the payload, rejects unknown versions and kinds, and
//! never panics on any input. Error codes are stable numbers: a retired
//! code is never reused.

use bytes::{BufMut, Bytes};

use crate::identity::NodeId;

/// The ALPN protocol of the peer listener.
pub const ALPN: &[u8] = b"strongbox-peer/1";
/// The frame format version, the header's first byte.
pub const VERSION: u8 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// The default largest payload, large enough for a snapshot chunk.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Longest message of an error frame, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A call: method, claimed sender, arguments.
    Request = 1,
    /// A successful answer.
    Response = 2,
    /// A refusal or failure, with an [`ErrorCode`] and a message.
    Error = 3,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Request),
            2 => Some(Self::Response),
            3 => Some(Self::Error),
            _ => None,
        }
    }
}

/// The error codes of error frames, stream stops and connection closes on
/// the peer protocol (their own numbering, separate from the client
/// protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame that does not decode: bad version or kind, a payload shorter
    /// or longer than its header says, or no request at all. Closes the
    /// stream.
    MalformedFrame = 1,
    /// The payload length exceeds the receiver's maximum. Closes the
    /// stream; the payload is not read.
    PayloadTooLarge = 2,
    /// The receiver has no handler for the method.
    UnknownMethod = 3,
    /// The request's claimed sender id is not the node id of the
    /// connection's certificate. Closes the connection.
    IdentityMismatch = 4,
    /// The sender is not (or no longer) a member of the cluster. Closes the
    /// connection.
    NotAMember = 5,
    /// The handler failed; the message says why.
    HandlerFailed = 6,
    /// The node is shutting down.
    ShuttingDown = 7,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [Self; 7] = [
        Self::MalformedFrame,
        Self::PayloadTooLarge,
        Self::UnknownMethod,
        Self::IdentityMismatch,
        Self::NotAMember,
        Self::HandlerFailed,
        Self::ShuttingDown,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code's name, as docs/PROTOCOL.md lists it.
    pub fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnknownMethod => "unknown_method",
            Self::IdentityMismatch => "identity_mismatch",
            Self::NotAMember => "not_a_member",
            Self::HandlerFailed => "handler_failed",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// The code of a number, `None` for one this version does not know.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }

    /// As a QUIC application error code (stream stop, connection close).
    pub fn as_varint(self) -> quinn::VarInt {
        quinn::VarInt::from(self.as_u16())
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: FrameKind,
    /// The method (request, response) or the error code (error).
    pub code: u16,
    /// The claimed sender (request) or the responder (response, error).
    pub node: NodeId,
    /// Bytes of payload after the header.
    pub len: u32,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header or the payload needs.
    #[error("truncated frame: need {need} bytes at offset {offset}, have {have}")]
    Truncated {
        /// Where the missing part starts.
        offset: usize,
        /// How many bytes it needs.
        need: usize,
        /// How many there are.
        have: usize,
    },
    /// An unknown version byte.
    #[error("unknown peer frame version {0} (this node speaks version 1)")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown peer frame kind {0}")]
    Kind(u8),
    /// The payload length is above the maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length in the header.
        len: u32,
        /// The receiver's maximum.
        max: u32,
    },
    /// Bytes after the payload.
    #[error("{0} bytes after the end of the frame")]
    Trailing(usize),
}

impl FrameError {
    /// The error code a receiver answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

impl FrameHeader {
    /// A request header.
    pub fn request(method: u16, sender: NodeId, len: u32) -> Self {
        Self {
            kind: FrameKind::Request,
            code: method,
            node: sender,
            len,
        }
    }

    /// The header's 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        w.put_u8(VERSION);
        w.put_u8(self.kind as u8);
        w.put_u16(self.code);
        w.put_u64(self.node);
        w.put_u32(self.len);
        out
    }

    /// Decodes the header at the start of `bytes` and checks its length
    /// against `max_payload`; the payload is not looked at.
    ///
    /// # Errors
    ///
    /// See [`FrameError`].
    pub fn decode(bytes: &[u8], max_payload: u32) -> Result<Self, FrameError> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Truncated {
                offset: 0,
                need: HEADER_LEN,
                have: bytes.len(),
            })?;
        let [
            version,
            kind,
            c0,
            c1,
            n0,
            n1,
            n2,
            n3,
            n4,
            n5,
            n6,
            n7,
            l0,
            l1,
            l2,
            l3,
        ] = *header;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = FrameKind::from_u8(kind).ok_or(FrameError::Kind(kind))?;
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        if len > max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: max_payload,
            });
        }
        Ok(Self {
            kind,
            code: u16::from_be_bytes([c0, c1]),
            node: u64::from_be_bytes([n0, n1, n2, n3, n4, n5, n6, n7]),
            len,
        })
    }
}

/// A whole frame: header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header; its `len` is the payload's length.
    pub header: FrameHeader,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A request frame.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] for a payload over `u32::MAX` bytes.
    pub fn request(method: u16, sender: NodeId, payload: Bytes) -> Result<Self, FrameError> {
        Self::new(FrameKind::Request, method, sender, payload)
    }

    /// A response frame.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] for a payload over `u32::MAX` bytes.
    pub fn response(method: u16, responder: NodeId, payload: Bytes) -> Result<Self, FrameError> {
        Self::new(FrameKind::Response, method, responder, payload)
    }

    /// An error frame; the message is cut to [`MAX_ERROR_MESSAGE`] bytes
    /// on a character boundary.
    pub fn error(code: ErrorCode, responder: NodeId, message: &str) -> Self {
        let mut end = message.len().min(MAX_ERROR_MESSAGE);
        while !message.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        let text = message.get(..end).unwrap_or("");
        let payload = Bytes::copy_from_slice(text.as_bytes());
        Self {
            header: FrameHeader {
                kind: FrameKind::Error,
                code: code.as_u16(),
                node: responder,
                // At most MAX_ERROR_MESSAGE bytes, so it fits.
                len: u32::try_from(payload.len()).unwrap_or(0),
            },
            payload,
        }
    }

    fn new(kind: FrameKind, code: u16, node: NodeId, payload: Bytes) -> Result<Self, FrameError> {
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
            len: u32::MAX,
            max: u32::MAX,
        })?;
        Ok(Self {
            header: FrameHeader {
                kind,
                code,
                node,
                len,
            },
            payload,
        })
    }

    /// Header and payload as one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(self.payload.len()));
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes exactly one frame from `bytes` (a whole stream's worth).
    ///
    /// # Errors
    ///
    /// See [`FrameError`]; bytes after the payload are
    /// [`FrameError::Trailing`].
    pub fn decode(bytes: &[u8], max_payload: u32) -> Result<Self, FrameError> {
        let header = FrameHeader::decode(bytes, max_payload)?;
        let rest = bytes.get(HEADER_LEN..).unwrap_or(&[]);
        let len = usize::try_from(header.len).map_err(|_| FrameError::TooLarge {
            len: header.len,
            max: max_payload,
        })?;
        let payload = rest.get(..len).ok_or(FrameError::Truncated {
            offset: HEADER_LEN,
            need: len,
            have: rest.len(),
        })?;
        let trailing = rest.len().saturating_sub(len);
        if trailing != 0 {
            return Err(FrameError::Trailing(trailing));
        }
        Ok(Self {
            header,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    /// The error code and message of an error frame, `None` for another
    /// kind. An unknown code is kept as its number.
    pub fn error_parts(&self) -> Option<(u16, String)> {
        (self.header.kind == FrameKind::Error).then(|| {
            (
                self.header.code,
                String::from_utf8_lossy(&self.payload).into_owned(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_header_layout_is_byte_exact() {
        let h = FrameHeader::request(0x0102, 0x0304_0506_0708_090A, 0x0B0C_0D0E);
        assert_eq!(
            h.encode(),
            [
                0x01, // version
                0x01, // kind: request
                0x01, 0x02, // method
                0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, // sender id
                0x0B, 0x0C, 0x0D, 0x0E, // payload length
            ]
        );
        let e = Frame::error(ErrorCode::IdentityMismatch, 2, "no");
        assert_eq!(
            e.encode(),
            [1, 3, 0, 4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, b'n', b'o']
        );
        // The example of docs/PROTOCOL.md, "Frame layout".
        let example = Frame::request(2, 1, Bytes::from_static(b"abc")).expect("small");
        assert_eq!(
            example.encode(),
            [
                1, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c'
            ]
        );
        let r = Frame::response(7, 1, Bytes::from_static(b"ok")).expect("small");
        assert_eq!(
            r.encode(),
            [1, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, b'o', b'k']
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.as_u16()).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7]);
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(8), None);
    }

    #[test]
    fn bad_headers_are_refused_before_the_payload() {
        let mut h = FrameHeader::request(1, 1, 17).encode();
        assert_eq!(
            FrameHeader::decode(&h, 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        h[0] = 2;
        assert_eq!(FrameHeader::decode(&h, 64), Err(FrameError::Version(2)));
        h[0] = 1;
        h[1] = 9;
        assert_eq!(FrameHeader::decode(&h, 64), Err(FrameError::Kind(9)));
        assert!(matches!(
            FrameHeader::decode(&h[..15], 64),
            Err(FrameError::Truncated {
                need: 16,
                have: 15,
                ..
            })
        ));
        let f = Frame::request(1, 1, Bytes::from_static(b"abc")).expect("small");
        let mut bytes = f.encode();
        bytes.push(0);
        assert_eq!(Frame::decode(&bytes, 64), Err(FrameError::Trailing(1)));
        assert!(matches!(
            Frame::decode(&bytes[..bytes.len() - 2], 64),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let f = Frame::error(ErrorCode::HandlerFailed, 1, &long);
        assert!(f.payload.len() <= MAX_ERROR_MESSAGE);
        assert!(std::str::from_utf8(&f.payload).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn frames_round_trip(
            kind in prop_oneof![Just(FrameKind::Request), Just(FrameKind::Response)],
            code: u16,
            node: u64,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let f = Frame::new(kind, code, node, Bytes::from(payload)).expect("small");
            let bytes = f.encode();
            prop_assert_eq!(Frame::decode(&bytes, 512), Ok(f.clone()));
            prop_assert_eq!(FrameHeader::decode(&bytes, 512), Ok(f.header));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            max in 0u32..64,
        ) {
            let frame = Frame::decode(&bytes, max);
            let header = FrameHeader::decode(&bytes, max);
            if let Ok(f) = frame {
                prop_assert_eq!(&f.encode(), &bytes);
                prop_assert!(f.header.len <= max);
            }
            if let Ok(h) = header {
                prop_assert_eq!(&h.encode()[..], &bytes[..HEADER_LEN]);
            }
        }
    }
}
