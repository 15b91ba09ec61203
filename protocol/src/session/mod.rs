//! Sans-IO session state machines, one per stream kind and side.
//!
//! Each machine is fed decoded frames (and, where time matters, `now`) and
//! answers with frames to send and events for the application; it never
//! touches a socket or reads a clock. The async broker and client only pump
//! bytes between QUIC streams and these machines, so every protocol rule
//! lives here, once, and is tested without a network.
//!
//! | stream        | client side                         | broker side                         |
//! |---------------|-------------------------------------|-------------------------------------|
//! | control       | [`control::ClientControl`]          | [`control::BrokerControl`]          |
//! | producer      | [`produce::ProducerSession`]        | [`produce::BrokerProducerStream`]   |
//! | subscription  | [`subscribe::SubscriberSession`]    | [`subscribe::BrokerSubscription`]   |
//! | admin         | [`admin::AdminCall`]                | [`admin::BrokerAdminStream`]        |
//!
//! When a machine returns a [`Violation`], the stream (or, for the control
//! stream, the connection) is over: the caller sends the violation as an
//! `Error` frame when the peer should learn why, then resets the stream.

use crate::error::ErrorCode;
use crate::frame::Frame;
use crate::frames::control::ErrorFrame;

pub mod admin;
pub mod control;
pub mod produce;
pub mod subscribe;

/// A breach of the protocol by the peer (or a frame that cannot be
/// processed): the stream ends with this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Violation {
    /// The code sent to the peer.
    pub code: ErrorCode,
    /// Detail for the peer and the log.
    pub message: String,
}

impl Violation {
    /// A violation with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `Error` frame (correlation id 0) that tells the peer.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(ErrorFrame::new(0, self.code, self.message.clone()))
    }

    pub(crate) fn unexpected(frame: &Frame, state: &str) -> Self {
        Self::new(
            ErrorCode::UnexpectedFrame,
            format!("{} is not expected {state}", frame.frame_type().name()),
        )
    }

    pub(crate) fn wrong_stream(frame: &Frame, stream: &str) -> Self {
        Self::new(
            ErrorCode::ProtocolViolation,
            format!(
                "{} does not belong on a {stream} stream",
                frame.frame_type().name()
            ),
        )
    }
}

impl From<crate::error::DecodeError> for Violation {
    fn from(e: crate::error::DecodeError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests;
