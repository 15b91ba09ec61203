//! The transport's errors.

use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::{ErrorCode, FrameError};
use crate::identity::{IdentityError, NodeId};

/// A failed peer call or endpoint operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The address book has no address for the node.
    #[error("no peer address known for node {0}; add it to the cluster membership first")]
    UnknownNode(NodeId),
    /// The node could not be reached (no answer, connection refused).
    #[error("node {node} at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The node dialed.
        node: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The TLS handshake with the node failed: its certificate was refused
    /// here (wrong node, foreign CA, expired), or ours was refused there.
    #[error("handshake with node {node} at {addr} failed: {reason}")]
    Handshake {
        /// The node dialed.
        node: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No answer within the call timeout. The request may or may not have
    /// been handled.
    #[error("call to node {node} timed out after {after:?}; its outcome is unknown")]
    Timeout {
        /// The node called.
        node: NodeId,
        /// The timeout.
        after: Duration,
    },
    /// The remote refused the call with a transport error code (see
    /// [`ErrorCode`]); refusals of identity or membership also closed the
    /// connection.
    #[error("node {node} refused the call with code {code}: {message}")]
    Refused {
        /// The node called.
        node: NodeId,
        /// The peer protocol error code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The remote's handler failed or does not know the method.
    #[error("node {node} failed the call (code {code}): {message}")]
    Remote {
        /// The node called.
        node: NodeId,
        /// [`ErrorCode::HandlerFailed`] or [`ErrorCode::UnknownMethod`].
        code: u16,
        /// The handler's message.
        message: String,
    },
    /// The connection was lost during the call.
    #[error("connection to node {node} lost: {reason}")]
    ConnectionLost {
        /// The node called.
        node: NodeId,
        /// What happened.
        reason: String,
    },
    /// The remote answered with something that is not a valid response.
    #[error("node {node} sent an invalid response: {reason}")]
    Protocol {
        /// The node called.
        node: NodeId,
        /// What is wrong with it.
        reason: String,
    },
    /// A payload is larger than the configured maximum; nothing was sent.
    #[error("payload of {len} bytes exceeds the peer maximum of {max} bytes")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: u32,
    },
    /// A typed call's request could not be encoded or its response decoded.
    #[error("cannot {what} a peer message: {source}")]
    Codec {
        /// `encode` or `decode`.
        what: &'static str,
        /// The postcard error.
        source: postcard::Error,
    },
    /// This node's own certificate is not a usable node certificate.
    #[error("this node's certificate is not usable on the peer listener: {0}")]
    OwnIdentity(#[from] IdentityError),
    /// rustls or quinn refused the TLS configuration.
    #[error("peer TLS configuration refused: {0}")]
    Tls(String),
    /// The peer listener's socket could not be opened.
    #[error("cannot open the peer listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A frame could not be built.
    #[error("peer frame: {0}")]
    Frame(#[from] FrameError),
}

impl PeerError {
    /// The peer protocol error code of a refusal or remote failure.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { code, .. } | Self::Remote { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }
}

/// What a [`PeerHandler`](crate::PeerHandler) returns when it cannot
/// answer; sent to the caller as an error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    code: ErrorCode,
    message: String,
}

impl HandlerError {
    /// The handler does not know `method`.
    pub fn unknown_method(method: u16) -> Self {
        Self {
            code: ErrorCode::UnknownMethod,
            message: format!("unknown peer method {method}"),
        }
    }

    /// The handler failed; `message` goes to the caller (no secrets in it).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::HandlerFailed,
            message: message.into(),
        }
    }

    /// The error code sent.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}
