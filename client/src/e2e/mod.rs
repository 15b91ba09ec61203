//! End-to-end encryption of record values: producers seal values before
//! they leave the process, and only readers holding the right key open
//! them. The broker stores and forwards ciphertext it cannot read.
//!
//! # Model
//!
//! Every sealed record carries a `strongbox-e2e` header (a compact binary
//! format, see `header.rs` and `docs/SECURITY.md`) and a value that is the
//! AES-256-GCM ciphertext of the plaintext under a random *data key*. The
//! AAD binds the topic, the record key and the exact header bytes, so a
//! record moved to another topic or key, or with an edited header, fails
//! authentication. The data key is wrapped for the readers by one of two
//! key sources:
//!
//! - a [`Keyring`]: versioned AES-256 topic keys in a local file shared by
//!   producers and readers; the header names the key id and version, so a
//!   reader holding the old versions reads across every rotation;
//! - recipients: HPKE (RFC 9180, HKDF-SHA256, AES-256-GCM) to each
//!   reader's public key, so a producer writes for readers whose secret
//!   keys it never holds. A reader's key is X25519 (DHKEM(X25519,
//!   HKDF-SHA256)) or X-Wing (X25519 + ML-KEM-768, hybrid post-quantum;
//!   [`RecipientKem`]), and one topic may have readers of both kinds. The readers come from
//!   the topic's recipient directory on the broker, as entries signed by
//!   the topic owner's Ed25519 key ([`RecipientGrant`],
//!   [`SignedRecipientEntry`]); producers accept only entries that verify
//!   under the owner key they pinned ([`RecipientSet::fetch`]), so the
//!   broker cannot add a reader.
//!
//! [`E2eSealer`] plugs into producers as their
//! [`ValueSealer`](crate::ValueSealer), [`E2eOpener`] into consumers as their
//! [`ValueOpener`](crate::ValueOpener). A record the opener
//! cannot read is handled by its [`UnreadablePolicy`]: an error naming the
//! key (`record demo.x/0@17: e2e key orders-key v3 is not in the keyring`),
//! a counted skip, or the ciphertext marked with a `strongbox-e2e-error`
//! header; never a hang, never a silent drop.
//!
//! # Example
//!
//! ```
//! use strongbox_client::e2e::{E2eOpener, E2eSealer, Keyring, UnreadablePolicy};
//!
//! let mut writer_keys = Keyring::generate("orders-key")?;
//! let reader_keys = writer_keys.export("orders-key", None)?;
//! let sealer = E2eSealer::keyring(writer_keys, None)?;
//! let opener = E2eOpener::new(UnreadablePolicy::Fail).with_keyring(reader_keys);
//!
//! let (header, sealed) = sealer.seal_value("demo.orders", Some(b"customer-7"), b"{\"total\":12}")?;
//! let plain = opener.open_value("demo.orders", Some(b"customer-7"), &header, &sealed)?;
//! assert_eq!(plain, b"{\"total\":12}");
//! // Moved to another topic, it no longer opens.
//! assert!(opener.open_value("demo.other", Some(b"customer-7"), &header, &sealed).is_err());
//! # Ok::<(), strongbox_client::e2e::E2eError>(())
//! ```

mod cipher;
mod entry;
mod error;
mod header;
mod identity;
mod keyring;
mod opener;
mod owner;
mod recipients;
mod sealer;
mod secret_file;

pub use entry::{RecipientGrant, SignedRecipientEntry, verify_entry};
pub use error::{E2eError, EntryProblem};
pub use identity::{Identity, RecipientKem, RecipientKey};
pub use keyring::{KeyInfo, Keyring};
pub use opener::{E2eOpener, UnreadablePolicy};
pub use owner::{OwnerKey, OwnerPublicKey};
pub use recipients::{Recipient, RecipientSet, VerifiedRecipients};
pub use sealer::{DataKeyLimits, E2eSealer};

/// The record header that carries the envelope.
pub const HEADER: &str = "strongbox-e2e";
/// The header an [`E2eOpener`] adds, under
/// [`UnreadablePolicy::DeliverCiphertext`], to a record it could not open;
/// its value says why.
pub const ERROR_HEADER: &str = "strongbox-e2e-error";
/// Header names starting with this are reserved: a sealer refuses records
/// that already carry one.
pub const RESERVED_PREFIX: &str = "strongbox-e2e";

/// Domain label of the value's AAD.
const VALUE_LABEL: &[u8] = b"strongbox-e2e/1 value";

/// The key a sealed record names, read from its `strongbox-e2e` header.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedWith {
    /// A keyring key.
    Keyring {
        /// The key id.
        id: String,
        /// The key version.
        version: u32,
    },
    /// HPKE to these recipients: (recipient id, key fingerprint in hex).
    Recipients(Vec<(String, String)>),
}

/// Reads which key sealed a record from its `strongbox-e2e` header value.
///
/// # Errors
///
/// [`E2eError::MalformedHeader`] or [`E2eError::UnsupportedHeader`].
pub fn sealed_with(header: &[u8]) -> Result<SealedWith, E2eError> {
    Ok(match header::Envelope::decode(header)?.source {
        header::Source::Keyring(k) => SealedWith::Keyring {
            id: k.key_id,
            version: k.version,
        },
        header::Source::Recipients(slots) => SealedWith::Recipients(
            slots
                .into_iter()
                .map(|s| (s.recipient, hex::encode(s.fingerprint)))
                .collect(),
        ),
    })
}

/// Parses a `strongbox-e2e` header and encodes what it read again.
///
/// A header has one encoding, so for every header this client accepts the
/// result equals the input. The fuzz tests (`client/tests/fuzz_e2e_header.rs`
/// and the cargo-fuzz target `e2e_header`) rely on that to show the reader
/// accepts nothing the writer would not write. Applications do not need it.
///
/// # Errors
///
/// As [`sealed_with`]; [`E2eError::Invalid`] if the header was accepted but
/// cannot be written again (a reader bug the fuzz tests look for).
#[doc(hidden)]
pub fn reencode_header(header: &[u8]) -> Result<Vec<u8>, E2eError> {
    header::Envelope::decode(header)?.encode()
}

/// The value's AAD: a label, then the topic, the record key (with a
/// presence byte, so no key and an empty key differ) and the whole
/// `strongbox-e2e` header, each length-prefixed.
pub(crate) fn value_aad(
    topic: &str,
    key: Option<&[u8]>,
    header: &[u8],
) -> Result<Vec<u8>, E2eError> {
    let topic_len = u16::try_from(topic.len())
        .map_err(|_| E2eError::invalid("a topic name is at most 65535 bytes"))?;
    let len32 = |n: usize| {
        u32::try_from(n).map_err(|_| E2eError::invalid("a record part is larger than 4 GiB"))
    };
    let mut aad = Vec::with_capacity(
        VALUE_LABEL.len() + 11 + topic.len() + key.map_or(0, <[u8]>::len) + header.len(),
    );
    aad.extend_from_slice(VALUE_LABEL);
    aad.extend_from_slice(&topic_len.to_be_bytes());
    aad.extend_from_slice(topic.as_bytes());
    match key {
        Some(k) => {
            aad.push(1);
            aad.extend_from_slice(&len32(k.len())?.to_be_bytes());
            aad.extend_from_slice(k);
        }
        None => aad.push(0),
    }
    aad.extend_from_slice(&len32(header.len())?.to_be_bytes());
    aad.extend_from_slice(header);
    Ok(aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_separates_no_key_from_an_empty_key() {
        let none = value_aad("t", None, b"h").expect("aad");
        let empty = value_aad("t", Some(b""), b"h").expect("aad");
        assert_ne!(none, empty);
        assert_ne!(
            value_aad("ab", Some(b"c"), b"h").expect("aad"),
            value_aad("a", Some(b"bc"), b"h").expect("aad")
        );
    }
}
