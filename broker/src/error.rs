//! The error every request handler returns: a wire code and a message for
//! the client.

pub mod storage;

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

    /// An error whose message comes from a storage or key error: absolute
    /// paths in it are cut to their last component, so the client learns
    /// which file without learning the broker's directory layout (the
    /// broker log keeps the full text).
    pub fn redacted(code: ErrorCode, message: &str) -> Self {
        Self::new(code, redact_paths(message))
    }

    /// The `Error` frame answering `correlation_id`.
    pub fn to_frame(&self, correlation_id: u64) -> ErrorFrame {
        ErrorFrame::new(correlation_id, self.code, self.message.clone())
    }
}

/// Replaces every absolute path in `text` by its last component.
pub fn redact_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('/') {
        // Only a `/` that begins a word starts a path.
        let begins_word = rest[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '(' | '"' | '\'' | '='));
        if !begins_word {
            let next = start + 1;
            out.push_str(&rest[..next]);
            rest = &rest[next..];
            continue;
        }
        out.push_str(&rest[..start]);
        let path_len = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | ',' | ';'))
            .unwrap_or(rest.len() - start);
        let path = &rest[start..start + path_len];
        // Keep a trailing ':' or '.' outside the path.
        let trimmed = path.trim_end_matches([':', '.']);
        let last = trimmed.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
        out.push_str(last);
        out.push_str(&path[trimmed.len()..]);
        rest = &rest[start + path_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_paths;

    #[test]
    fn absolute_paths_lose_their_directories() {
        assert_eq!(
            redact_paths(
                "cannot open segment /var/lib/sb/log/ab/0/00000000000000000007.log: key envelope missing"
            ),
            "cannot open segment 00000000000000000007.log: key envelope missing"
        );
        assert_eq!(
            redact_paths("key directory /etc/strongbox/keys/ is unavailable (chmod 700 it)"),
            "key directory keys is unavailable (chmod 700 it)"
        );
        assert_eq!(
            redact_paths("demo.x/0: offset 5 out of range"),
            "demo.x/0: offset 5 out of range"
        );
        assert_eq!(
            redact_paths("module (/usr/lib/softhsm/libsofthsm2.so)"),
            "module (libsofthsm2.so)"
        );
        assert_eq!(redact_paths("no paths here"), "no paths here");
    }
}
