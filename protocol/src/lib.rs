//! The Strongbox wire protocol, without I/O.
//!
//! This crate defines everything two Strongbox peers say to each other over
//! QUIC, and nothing about how the bytes travel:
//!
//! - [`frame`]: the frame (`u32 length | u16 type | body`), the
//!   [`FrameType`](frame::FrameType) codes and a streaming
//!   [`FrameDecoder`](frame::FrameDecoder) that refuses oversized frames
//!   before allocating;
//! - [`frames`]: every frame body, by stream kind, and the wire encoding of
//!   the model values they carry;
//! - [`model`]: the domain model that frames carry and storage keeps (topic
//!   configs, ACL rules and operations, key states and versions, durability,
//!   access requests, recipients), defined once and without an encoding;
//! - [`batch`]: the record batch, the unit of append, encryption at rest and
//!   delivery, with a builder and a zero-copy reader;
//! - [`session`]: sans-IO state machines for both ends of the control stream,
//!   producer streams, subscription streams and admin streams. They take
//!   frames and the current time and hand back frames to send and events;
//!   the caller owns the sockets and the clock, so the machines are
//!   deterministic and are tested without a network;
//! - [`error`]: the stable wire [`ErrorCode`](error::ErrorCode)s;
//! - [`clock`]: the one wall clock every other crate reads (this crate's
//!   codecs and machines never do);
//! - [`rfc3339`]: the one text form of an instant (RFC 3339, UTC,
//!   milliseconds) that audit records carry and that the broker and the CLI
//!   show and read.
//!
//! docs/PROTOCOL.md specifies the same format byte by byte for
//! implementations in other languages.
//!
//! ```
//! use strongbox_protocol::frame::{decode_frame, Decoded, Frame, DEFAULT_MAX_FRAME_SIZE};
//! use strongbox_protocol::frames::control::Hello;
//!
//! let hello = Frame::Hello(Hello {
//!     versions: vec![1],
//!     client_name: "example/0.1".into(),
//!     max_frame_size: DEFAULT_MAX_FRAME_SIZE,
//!     features: 0,
//! });
//! let wire = hello.to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
//! assert_eq!(decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE)?, Decoded::Frame(hello, wire.len()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::panic
)]

pub mod batch;
pub mod clock;
pub mod codec;
pub mod error;
pub mod frame;
pub mod frames;
pub mod model;
pub mod rfc3339;
pub mod session;

/// The ALPN protocol id of this protocol on QUIC.
pub const ALPN: &[u8] = b"strongbox/1";

/// The protocol versions this crate implements.
pub const SUPPORTED_VERSIONS: &[u16] = &[1];

/// The newest protocol version this crate implements.
pub const CURRENT_VERSION: u16 = 1;

/// Optional features announced in `Hello.features` and `Welcome.features`.
pub mod features {
    /// Bit 0: the client reads a leader hint after the message of an
    /// `Error` frame (see [`ErrorFrame`](crate::frames::control::ErrorFrame)).
    /// Without it on a connection, the broker never appends one.
    pub const LEADER_HINTS: u64 = 1;

    /// Every feature this crate implements: what a client offers and what
    /// a broker accepts.
    pub const SUPPORTED: u64 = LEADER_HINTS;
}

pub use error::{DecodeError, EncodeError, ErrorCode, ReadError};
pub use frame::{Frame, FrameDecoder, FrameType};
