//! The errors of the end-to-end layer.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::error::ClientError;

/// What went wrong in the end-to-end layer.
///
/// Per-record variants name the key the record was sealed under, so an
/// operator can tell which key a reader is missing. None of them carries
/// key bytes or plaintext.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum E2eError {
    /// The record has no `strongbox-e2e` header: it was not sealed, or the
    /// header was removed.
    #[error("record is not end-to-end encrypted (it has no strongbox-e2e header)")]
    NotSealed,
    /// The `strongbox-e2e` header cannot be parsed.
    #[error("malformed strongbox-e2e header: {0}")]
    MalformedHeader(String),
    /// The header is well formed but names a version or algorithm this
    /// client does not implement.
    #[error("unsupported strongbox-e2e header: {0} (upgrade this client)")]
    UnsupportedHeader(String),
    /// The record was sealed under a keyring key this reader does not hold.
    #[error("e2e key {id} v{version} is not in the keyring{}", holding(.held))]
    KeyNotInKeyring {
        /// The key id named in the header.
        id: String,
        /// The key version named in the header.
        version: u32,
        /// The versions of `id` the keyring holds (empty when none, or no
        /// keyring at all).
        held: Vec<u32>,
    },
    /// The keyring holds a key with the record's id and version, but it
    /// does not open the record's data key.
    #[error(
        "e2e key {id} v{version} in the keyring does not open this record's data key \
         (a different key under the same id and version, or an altered header)"
    )]
    WrongKey {
        /// The key id.
        id: String,
        /// The key version.
        version: u32,
    },
    /// The record was sealed to recipients, none of which is an identity
    /// this reader holds.
    #[error(
        "e2e record is sealed to recipients {recipients}; this reader's identity {mine} is not one of them"
    )]
    NotARecipient {
        /// The recipients in the header: `id (key fingerprint)`, comma-separated.
        recipients: String,
        /// This reader's identities, the same way (`none` when it has none).
        mine: String,
    },
    /// A recipient slot for this reader's key exists, but the data key in
    /// it does not open.
    #[error(
        "e2e data key sealed to recipient {recipient} (key {fingerprint}) does not open with \
         this identity (an altered header, or a record moved from another topic)"
    )]
    RecipientKeyMismatch {
        /// The recipient id of the slot.
        recipient: String,
        /// The fingerprint of the slot's key.
        fingerprint: String,
    },
    /// The data key opened, but the value did not authenticate.
    #[error(
        "e2e value failed authentication under {key} (its value, record key, e2e header or \
         topic changed after it was sealed)"
    )]
    Authentication {
        /// The key the record names: `orders-key v3` or `recipients bob, carol`.
        key: String,
    },
    /// A keyring or identity operation named a key id the keyring lacks.
    #[error("the keyring has no key {id}{}", ids_hint(.ids))]
    UnknownKeyId {
        /// The id asked for.
        id: String,
        /// The ids the keyring has.
        ids: Vec<String>,
    },
    /// A signed recipient entry was refused.
    #[error("recipient entry {recipient} refused: {problem}")]
    Entry {
        /// The recipient id the entry is stored under.
        recipient: String,
        /// Why it was refused.
        problem: EntryProblem,
    },
    /// No recipient is left to seal to.
    #[error("no valid end-to-end recipients for topic {topic}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    NoRecipients {
        /// The topic.
        topic: String,
        /// Why, for people (may be empty).
        detail: String,
    },
    /// A key file cannot be read or written.
    #[error("cannot {action} {what} {}: {message}", .path.display())]
    File {
        /// `read` or `write`.
        action: &'static str,
        /// `keyring`, `identity`, `owner key`, ...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A secret key file is readable by other users.
    #[error(
        "{what} {} is readable by group or others (mode {mode:o}); restrict it with chmod 600",
        .path.display()
    )]
    Permissions {
        /// `keyring`, `identity` or `owner key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A value given to the library is not acceptable (an empty key id, a
    /// record that already carries an e2e header, ...).
    #[error("{0}")]
    Invalid(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

fn holding(held: &[u32]) -> String {
    if held.is_empty() {
        String::new()
    } else {
        let v: Vec<String> = held.iter().map(|v| format!("v{v}")).collect();
        format!(" (it holds {})", v.join(", "))
    }
}

fn ids_hint(ids: &[String]) -> String {
    if ids.is_empty() {
        " (the keyring is empty)".into()
    } else {
        format!(" (it has {})", ids.join(", "))
    }
}

impl E2eError {
    /// The key a per-record error is about, for grouping counts and logs:
    /// `orders-key v3`, `recipients bob, carol`, `not sealed` or
    /// `malformed header`.
    pub fn key_label(&self) -> String {
        match self {
            Self::NotSealed => "not sealed".into(),
            Self::MalformedHeader(_) => "malformed header".into(),
            Self::UnsupportedHeader(_) => "unsupported header".into(),
            Self::KeyNotInKeyring { id, version, .. } | Self::WrongKey { id, version } => {
                format!("{id} v{version}")
            }
            Self::NotARecipient { recipients, .. } => format!("recipients {recipients}"),
            Self::RecipientKeyMismatch {
                recipient,
                fingerprint,
            } => format!("recipient {recipient} ({fingerprint})"),
            Self::Authentication { key } => key.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::MalformedHeader(message.into())
    }
}

impl From<E2eError> for ClientError {
    fn from(e: E2eError) -> Self {
        ClientError::Transform(e.to_string())
    }
}

/// Why a signed recipient entry was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryProblem {
    /// The bytes are not a signed recipient entry (unsigned, truncated, or
    /// another format).
    Malformed(String),
    /// The entry is signed by a key other than the pinned owner key.
    OtherSigner {
        /// Fingerprint of the key that signed it.
        signer: String,
        /// Fingerprint of the pinned owner key.
        pinned: String,
    },
    /// The signature does not verify under the pinned owner key.
    BadSignature,
    /// The entry is for another topic.
    OtherTopic {
        /// The topic it names.
        entry_topic: String,
        /// The topic asked for.
        expected: String,
    },
    /// The entry names another recipient than the one it is stored under.
    OtherRecipient {
        /// The recipient it names.
        named: String,
    },
    /// The entry has expired.
    Expired {
        /// When, in milliseconds since the Unix epoch.
        expires_at: i64,
    },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "not a signed recipient entry ({why})"),
            Self::OtherSigner { signer, pinned } => write!(
                f,
                "signed by key {signer}, not by the pinned owner key {pinned}"
            ),
            Self::BadSignature => {
                f.write_str("its signature does not verify under the pinned owner key")
            }
            Self::OtherTopic {
                entry_topic,
                expected,
            } => write!(f, "it is for topic {entry_topic}, not {expected}"),
            Self::OtherRecipient { named } => {
                write!(f, "it names recipient {named} instead")
            }
            Self::Expired { expires_at } => {
                match crate::protocol::rfc3339::format_ms(*expires_at) {
                    Some(at) => write!(f, "it expired at {at}"),
                    None => write!(f, "it expired at {expires_at} ms since the epoch"),
                }
            }
        }
    }
}
