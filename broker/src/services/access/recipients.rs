//! A topic's end-to-end recipient directory: the readers' public keys
//! (X25519, or X-Wing: X25519 + ML-KEM-768), each in an entry signed by the
//! topic owner, stored and served as opaque bytes.
//!
//! The broker is not trusted with the directory's integrity: producers
//! accept only entries that verify under the owner key they pinned, so a
//! broker (or a principal with `grant`) that adds an entry of its own gains
//! nothing but a producer's refusal. What the broker checks on a put is
//! what keeps the directory tidy and the listing honest: the bytes are an
//! entry at all, for this topic, under the recipient id it is stored as.
//!
//! # Why a structural check here, not a shared decoder
//!
//! The entry format belongs to the client's end-to-end layer
//! (`strongbox_client::e2e`, `entry.rs`, which documents it byte by byte);
//! on the wire it is just bytes. Moving its decoder into
//! `strongbox-protocol` would put an end-to-end format, which the broker
//! must never be trusted to interpret, into the crate that defines what the
//! broker does interpret, and the client would still need its own types
//! and the signature check on top. So [`EntryFacts::parse`] re-reads only
//! the fields the broker compares (no signature check: the broker has no
//! owner key and must not pretend to). The workspace tests sign entries with
//! the client library and check that this parser reads them alike and
//! refuses what the client refuses as malformed, so the two cannot drift
//! apart unnoticed.
//!
//! Permissions: listing needs `describe` or `subscribe` on the topic
//! (`publish` implies `describe`, so producers sealing to the directory can
//! read it); changing it needs `grant`.

use bytes::Bytes;
use strongbox_cluster::{MetaCommand, MetaResponse};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::codec::Reader;
use strongbox_protocol::error::ReadError;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::{Operations, RecipientEntry};
use strongbox_storage::meta::MetaError;

use crate::audit::{AuditAction, AuditEvent, topic_resource};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;
use crate::services::caller::blocking;

/// The first bytes of a signed recipient entry.
const MAGIC: &[u8; 4] = b"SBRE";
/// The entry format version the client writes.
const VERSION: u8 = 1;
/// Bytes of an X25519 public key, and of an Ed25519 one.
pub const KEY_LEN: usize = 32;
/// Bytes of an X-Wing public key.
pub const XWING_KEY_LEN: usize = 1216;

/// The kind of a recipient key, by its RFC 9180 KEM id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientKeyKind {
    /// DHKEM(X25519, HKDF-SHA256), 0x0020.
    X25519,
    /// X-Wing (X25519 + ML-KEM-768), 0x647a.
    XWing,
}

impl RecipientKeyKind {
    /// The kind of KEM id `id`.
    pub fn of_kem_id(id: u16) -> Option<Self> {
        match id {
            0x0020 => Some(Self::X25519),
            0x647a => Some(Self::XWing),
            _ => None,
        }
    }

    /// The kind whose public keys are `len` bytes (access requests carry
    /// the key alone).
    pub fn of_len(len: usize) -> Option<Self> {
        match len {
            KEY_LEN => Some(Self::X25519),
            XWING_KEY_LEN => Some(Self::XWing),
            _ => None,
        }
    }

    /// Bytes of its public keys.
    pub fn key_len(self) -> usize {
        match self {
            Self::X25519 => KEY_LEN,
            Self::XWing => XWING_KEY_LEN,
        }
    }

    /// `x25519` or `x-wing`.
    pub fn name(self) -> &'static str {
        match self {
            Self::X25519 => "x25519",
            Self::XWing => "x-wing",
        }
    }
}
/// Bytes of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// What a signed recipient entry states, as far as the broker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    /// The topic it grants.
    pub topic: String,
    /// The recipient id it names.
    pub recipient: String,
    /// The kind of the recipient's key.
    pub kind: RecipientKeyKind,
    /// The recipient's public key (32 bytes for X25519, 1216 for X-Wing).
    pub public_key: Vec<u8>,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When producers stop sealing to it.
    pub expires_at: Option<i64>,
    /// The Ed25519 key it says signed it (not verified here).
    pub signer: [u8; KEY_LEN],
}

impl EntryFacts {
    /// Reads the fields of a signed recipient entry and checks its framing
    /// (magic, version, key type, lengths, UTF-8, no trailing bytes). The
    /// signature is not checked.
    ///
    /// # Errors
    ///
    /// What is malformed, for the client.
    pub fn parse(bytes: &[u8]) -> Result<Self, MalformedEntry> {
        let mut r = Reader::new(bytes);
        if r.take(4)? != MAGIC {
            return Err("it does not start with the SBRE magic".into());
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(format!("entry format version {version} is not 1").into());
        }
        let kem = r.u16()?;
        let kind = RecipientKeyKind::of_kem_id(kem).ok_or_else(|| {
            format!("key type {kem:#06x} is neither X25519 (0x0020) nor X-Wing (0x647a)")
        })?;
        let topic_len = usize::from(r.u16()?);
        let topic = text(&mut r, topic_len, "topic")?;
        let recipient_len = usize::from(r.u8()?);
        let recipient = text(&mut r, recipient_len, "recipient id")?;
        let public_key = r.take(kind.key_len())?.to_vec();
        let created_at = r.i64()?;
        let expires_at = match r.u8()? {
            0 => None,
            1 => Some(r.i64()?),
            other => return Err(format!("has_expiry is {other}, not 0 or 1").into()),
        };
        let signer = r.array()?;
        r.take(SIGNATURE_LEN)?;
        r.finish()
            .map_err(|e| MalformedEntry(format!("bytes follow the signature ({e})")))?;
        Ok(Self {
            topic,
            recipient,
            kind,
            public_key,
            created_at,
            expires_at,
            signer,
        })
    }
}

/// Why bytes are not a recipient entry, in words for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedEntry(pub String);

impl From<String> for MalformedEntry {
    fn from(why: String) -> Self {
        Self(why)
    }
}

impl From<&str> for MalformedEntry {
    fn from(why: &str) -> Self {
        Self(why.to_owned())
    }
}

impl From<ReadError> for MalformedEntry {
    fn from(e: ReadError) -> Self {
        Self(format!("it is cut short ({e})"))
    }
}

/// `n` bytes of UTF-8 naming `what`, not empty.
fn text(r: &mut Reader<&[u8]>, n: usize, what: &str) -> Result<String, MalformedEntry> {
    if n == 0 {
        return Err(format!("its {what} is empty").into());
    }
    r.utf8(n).map_err(|e| match e {
        ReadError::InvalidUtf8 { .. } => format!("its {what} is not UTF-8").into(),
        e => e.into(),
    })
}

/// Checks that `entry` is a recipient entry for `topic` naming `recipient`.
///
/// # Errors
///
/// `invalid_request` naming what is wrong.
pub fn check_entry(entry: &[u8], topic: &str, recipient: &str) -> Result<EntryFacts, BrokerError> {
    let invalid = |why: String| {
        BrokerError::new(
            ErrorCode::InvalidRequest,
            format!("the recipient entry for {recipient} is refused: {why}"),
        )
    };
    let facts = EntryFacts::parse(entry).map_err(|e| invalid(format!("malformed ({e})")))?;
    if facts.topic != topic {
        return Err(invalid(format!(
            "it is signed for topic {}, not {topic}",
            facts.topic
        )));
    }
    if facts.recipient != recipient {
        return Err(invalid(format!(
            "it names recipient {}, not {recipient}",
            facts.recipient
        )));
    }
    Ok(facts)
}

/// The first 8 bytes of SHA-256 of a public key, as 16 hex digits: how
/// the client and the record headers name a recipient key.
pub fn key_fingerprint(key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    hex::encode(digest.as_ref().get(..8).unwrap_or_default())
}

/// `RecipientList`: needs `describe` or `subscribe` on the topic.
pub(crate) async fn list(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    topic: String,
) -> Result<AdminResponse, BrokerError> {
    if !authz.allows(Operations::SUBSCRIBE, &topic) {
        authz.check(Operations::DESCRIBE, &topic)?;
    }
    ctx.state.partitions.topics().require(&topic)?;
    Ok(AdminResponse::Recipients(read(&ctx.state, topic).await?))
}

/// `RecipientPut`: needs `grant`; the entry must be one for this topic and
/// recipient.
pub(crate) async fn put(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    topic: String,
    entry: RecipientEntry,
) -> Result<AdminResponse, BrokerError> {
    authz.check(Operations::GRANT, &topic)?;
    ctx.state.partitions.topics().require(&topic)?;
    let facts = check_entry(&entry.entry, &topic, &entry.recipient)?;
    let state = &ctx.state;
    let replaced = {
        let _guard = state.admin_lock.lock().await;
        let answer = state
            .metadata
            .submit(MetaCommand::PutRecipient {
                topic: topic.clone(),
                recipient: entry.recipient.clone(),
                entry: entry.entry.to_vec(),
            })
            .await?;
        existed(answer, "storing the recipient entry")?
    };
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, topic = %topic, recipient = %entry.recipient, key = %key_fingerprint(&facts.public_key), replaced, "recipient entry stored");
    state.audit.record(
        put_event(&topic, &facts, None)
            .principal(&ctx.principal)
            .detail("replaced", replaced),
    );
    Ok(AdminResponse::Recipients(read(state, topic).await?))
}

/// The `existed` flag of a put or a remove.
fn existed(answer: MetaResponse, what: &str) -> Result<bool, BrokerError> {
    match answer {
        MetaResponse::Existed { existed } => Ok(existed),
        other => Err(BrokerError::internal(
            what,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// `RecipientRemove`: needs `grant`.
pub(crate) async fn remove(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    topic: String,
    recipient: String,
) -> Result<AdminResponse, BrokerError> {
    authz.check(Operations::GRANT, &topic)?;
    let state = &ctx.state;
    let removed = {
        let _guard = state.admin_lock.lock().await;
        let answer = state
            .metadata
            .submit(MetaCommand::RemoveRecipient {
                topic: topic.clone(),
                recipient: recipient.clone(),
            })
            .await?;
        existed(answer, "removing the recipient entry")?
    };
    if !removed {
        return Err(BrokerError::new(
            ErrorCode::NotFound,
            format!("topic {topic} has no recipient {recipient}"),
        ));
    }
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, topic = %topic, recipient = %recipient, "recipient entry removed");
    state
        .audit
        .record(remove_event(&topic, &recipient, None, "removed").principal(&ctx.principal));
    Ok(AdminResponse::Recipients(read(state, topic).await?))
}

/// The `recipient.put` event of a stored entry; `request` when an access
/// approval stored it.
pub(crate) fn put_event(topic: &str, facts: &EntryFacts, request: Option<u64>) -> AuditEvent {
    let mut event = AuditEvent::success(AuditAction::RecipientPut, topic_resource(topic))
        .detail("recipient", facts.recipient.clone())
        .detail("key_fingerprint", key_fingerprint(&facts.public_key))
        .detail("key_kind", facts.kind.name())
        .detail("signer_fingerprint", key_fingerprint(&facts.signer))
        .detail("expires_at", facts.expires_at);
    if let Some(id) = request {
        event = event.detail("request_id", id);
    }
    event
}

/// The `recipient.remove` event; `why` is `removed` or `expired`.
pub(crate) fn remove_event(
    topic: &str,
    recipient: &str,
    request: Option<u64>,
    why: &str,
) -> AuditEvent {
    let mut event = AuditEvent::success(AuditAction::RecipientRemove, topic_resource(topic))
        .detail("recipient", recipient.to_owned())
        .detail("reason", why.to_owned());
    if let Some(id) = request {
        event = event.detail("request_id", id);
    }
    event
}

async fn read(
    state: &std::sync::Arc<BrokerState>,
    topic: String,
) -> Result<Vec<RecipientEntry>, BrokerError> {
    let meta = state.meta.clone();
    blocking(move || meta.read(|r| r.recipients(&topic)))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("reading the recipient directory", e))
}

/// The public key a stored entry names, when it parses (for expiry).
pub(crate) fn stored_key(entry: &Bytes) -> Option<Vec<u8>> {
    EntryFacts::parse(entry).ok().map(|f| f.public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry laid out as the client's format documents it, with a dummy
    /// signature.
    fn entry(topic: &str, recipient: &str, expires: Option<i64>) -> Vec<u8> {
        entry_of(0x0020, 32, topic, recipient, expires)
    }

    fn entry_of(
        kem: u16,
        key_len: usize,
        topic: &str,
        recipient: &str,
        expires: Option<i64>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"SBRE");
        out.push(1);
        out.extend_from_slice(&kem.to_be_bytes());
        out.extend_from_slice(&u16::try_from(topic.len()).expect("short").to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.push(u8::try_from(recipient.len()).expect("short"));
        out.extend_from_slice(recipient.as_bytes());
        out.extend(std::iter::repeat_n(9u8, key_len));
        out.extend_from_slice(&1_769_850_000_000i64.to_be_bytes());
        match expires {
            Some(at) => {
                out.push(1);
                out.extend_from_slice(&at.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&[7; 32]);
        out.extend_from_slice(&[0; 64]);
        out
    }

    #[test]
    fn reads_the_fields_and_checks_topic_and_recipient() {
        let bytes = entry("demo.x", "bob", Some(5));
        let facts = check_entry(&bytes, "demo.x", "bob").expect("accepted");
        assert_eq!(facts.public_key, [9; 32]);
        assert_eq!(facts.kind, RecipientKeyKind::X25519);
        assert_eq!(facts.signer, [7; 32]);
        assert_eq!(facts.expires_at, Some(5));
        assert_eq!(facts.created_at, 1_769_850_000_000);
        let other_topic = check_entry(&bytes, "demo.y", "bob").expect_err("topic");
        assert_eq!(other_topic.code, ErrorCode::InvalidRequest);
        assert!(other_topic.message.contains("signed for topic demo.x"));
        let other_recipient = check_entry(&bytes, "demo.x", "carol").expect_err("recipient");
        assert!(other_recipient.message.contains("names recipient bob"));
        assert_eq!(
            EntryFacts::parse(&entry("t", "r", None))
                .expect("no expiry")
                .expires_at,
            None
        );
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = entry("demo.x", "bob", None);
        for n in 0..bytes.len() {
            let cut = bytes.get(..n).expect("prefix");
            assert!(EntryFacts::parse(cut).is_err(), "{n} bytes accepted");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(EntryFacts::parse(&long).is_err());
        let mut bad_magic = bytes.clone();
        bad_magic[0] = b'X';
        assert!(EntryFacts::parse(&bad_magic).is_err());
        let mut bad_kem = bytes;
        bad_kem[6] = 0x21;
        assert!(EntryFacts::parse(&bad_kem).is_err());
        assert!(EntryFacts::parse(b"not an entry at all").is_err());
    }

    #[test]
    fn x_wing_entries_are_read_with_their_whole_key() {
        let bytes = entry_of(0x647a, XWING_KEY_LEN, "demo.x", "bob", None);
        let facts = check_entry(&bytes, "demo.x", "bob").expect("accepted");
        assert_eq!(facts.kind, RecipientKeyKind::XWing);
        assert_eq!(facts.public_key, vec![9; XWING_KEY_LEN]);
        assert_eq!(facts.signer, [7; 32]);
        // An X-Wing id with an X25519-sized key does not parse, and back.
        assert!(EntryFacts::parse(&entry_of(0x647a, 32, "t", "r", None)).is_err());
        assert!(EntryFacts::parse(&entry_of(0x0020, XWING_KEY_LEN, "t", "r", None)).is_err());
        assert_eq!(
            RecipientKeyKind::of_len(XWING_KEY_LEN),
            Some(RecipientKeyKind::XWing)
        );
        assert_eq!(RecipientKeyKind::of_len(33), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = EntryFacts::parse(&bytes);
        }
    }
}
