//! The error every request handler returns: a wire code and a message for
//! the client.

use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::control::ErrorFrame;

/// A request failed with `code`; `message` is shown to the client, so it
/// never contains key material, payload bytes or internal paths beyond
/// topic and partition names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BrokerError {
    /// The wire code.
    pub code: ErrorCode,
    /// The client-facing message.
    pub message: String,
}

impl BrokerError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An internal failure: logged in full, reported to the client briefly.
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{context}");
        Self::new(
            ErrorCode::Internal,
            format!("{context} failed; see the broker log"),
        )
    }

    /// The `Error` frame answering `correlation_id`.
    pub fn to_frame(&self, correlation_id: u64) -> ErrorFrame {
        ErrorFrame::new(correlation_id, self.code, self.message.clone())
    }
}
