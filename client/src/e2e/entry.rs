//! Signed recipient entries: the topic owner's statement that a recipient
//! (an X25519 or X-Wing public key) may read a topic's end-to-end encrypted records.
//!
//! The broker stores an entry as opaque bytes
//! ([`RecipientEntry::entry`](crate::protocol::model::RecipientEntry))
//! and cannot forge one: producers accept only entries that verify under the
//! owner public key they pinned.
//!
//! ```text
//! offset size field
//!      0    4 magic          "SBRE" (0x53 0x42 0x52 0x45)
//!      4    1 version        1
//!      5    2 kem_id         the kind of the recipient key (RFC 9180 id):
//!                            0x0020 X25519, 0x647a X-Wing (X25519 + ML-KEM-768)
//!      7    2 topic_length   1..=65535
//!      9    n topic          UTF-8
//!      .    1 recipient_len  1..=255
//!      .    m recipient      UTF-8, the recipient id
//!      .    k public_key     the recipient's public key: 32 bytes for 0x0020,
//!                            1216 for 0x647a
//!      .    8 created_at     i64, milliseconds since the Unix epoch
//!      .    1 has_expiry     0 or 1
//!      .    8 expires_at     i64 milliseconds; present only when has_expiry is 1
//!      .   32 owner_key      the Ed25519 public key that signed
//!      .   64 signature      Ed25519 over "strongbox-e2e/1 recipient-entry" || 0x00
//!                            || every byte before the signature
//! ```
//!
//! Nothing may follow the signature.

use bytes::Bytes;
use strongbox_protocol::codec::Reader;
use strongbox_protocol::error::ReadError;

use super::error::EntryProblem;
use super::header::check_short_name;
use super::identity::RecipientKem;
use super::owner::{OWNER_KEY_LEN, OwnerKey, OwnerPublicKey, SIGNATURE_LEN};
use super::{E2eError, RecipientKey};
use crate::protocol::model::RecipientEntry;

/// The first four bytes of a signed recipient entry.
const MAGIC: &[u8; 4] = b"SBRE";
/// The entry format version.
const VERSION: u8 = 1;
/// Domain separation of the signed message.
const SIGNING_LABEL: &[u8] = b"strongbox-e2e/1 recipient-entry\0";

/// What a topic owner states about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientGrant {
    /// The topic the recipient may read.
    pub topic: String,
    /// The recipient id (usually its principal).
    pub recipient: String,
    /// The recipient's public key (X25519 or X-Wing).
    pub public_key: RecipientKey,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch after which producers stop
    /// sealing to this recipient; `None`: until removed.
    pub expires_at: Option<i64>,
}

/// A decoded (not yet verified) signed recipient entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecipientEntry {
    /// What it states.
    pub grant: RecipientGrant,
    /// The key it says signed it.
    pub signer: OwnerPublicKey,
    signed_len: usize,
    bytes: Bytes,
}

impl RecipientGrant {
    /// The bytes before the signature.
    fn body(&self, signer: &OwnerPublicKey) -> Result<Vec<u8>, E2eError> {
        check_short_name("recipient id", &self.recipient)?;
        let topic_len = u16::try_from(self.topic.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| E2eError::invalid("a topic name must be 1 to 65535 bytes"))?;
        let mut out = Vec::with_capacity(
            128 + self.public_key.as_bytes().len() + self.topic.len() + self.recipient.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.public_key.kem().kem_id().to_be_bytes());
        out.extend_from_slice(&topic_len.to_be_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.push(u8::try_from(self.recipient.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.recipient.as_bytes());
        out.extend_from_slice(self.public_key.as_bytes());
        out.extend_from_slice(&self.created_at.to_be_bytes());
        match self.expires_at {
            Some(at) => {
                out.push(1);
                out.extend_from_slice(&at.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(signer.as_bytes());
        Ok(out)
    }

    /// Signs the grant with the owner's key: the bytes to store in the
    /// topic's recipient directory.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a recipient id outside 1..=255 bytes or an
    /// empty or over-long topic.
    pub fn sign(&self, owner: &OwnerKey) -> Result<Bytes, E2eError> {
        let signer = owner.public_key();
        let mut bytes = self.body(&signer)?;
        let signature = owner.sign(&signing_input(&bytes));
        bytes.extend_from_slice(&signature);
        Ok(Bytes::from(bytes))
    }

    /// Signs the grant and wraps it for
    /// [`Admin::recipients_put`](crate::Admin::recipients_put).
    ///
    /// # Errors
    ///
    /// As [`RecipientGrant::sign`].
    pub fn sign_entry(&self, owner: &OwnerKey) -> Result<RecipientEntry, E2eError> {
        Ok(RecipientEntry {
            recipient: self.recipient.clone(),
            entry: self.sign(owner)?,
        })
    }
}

fn signing_input(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_LABEL.len() + body.len());
    m.extend_from_slice(SIGNING_LABEL);
    m.extend_from_slice(body);
    m
}

impl SignedRecipientEntry {
    /// Parses entry bytes without checking the signature.
    ///
    /// # Errors
    ///
    /// [`EntryProblem::Malformed`] for bytes that are not an entry.
    pub fn decode(bytes: Bytes) -> Result<Self, EntryProblem> {
        let mut r = Reader::new(bytes.as_ref());
        if r.take(4)? != MAGIC {
            return Err(EntryProblem::Malformed("no SBRE magic".into()));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(EntryProblem::Malformed(format!("entry version {version}")));
        }
        let kem_id = r.u16()?;
        let kem = RecipientKem::from_kem_id(kem_id)
            .ok_or_else(|| EntryProblem::Malformed(format!("key type {kem_id:#06x}")))?;
        let topic_len = usize::from(r.u16()?);
        let topic = text(&mut r, topic_len, "topic")?;
        let recipient_len = usize::from(r.u8()?);
        let recipient = text(&mut r, recipient_len, "recipient")?;
        let public_key = RecipientKey::from_kem_bytes(kem, r.take(kem.public_key_len())?)
            .map_err(|e| EntryProblem::Malformed(e.to_string()))?;
        let created_at = r.i64()?;
        let expires_at = match r.u8()? {
            0 => None,
            1 => Some(r.i64()?),
            other => return Err(EntryProblem::Malformed(format!("has_expiry {other}"))),
        };
        let signer = OwnerPublicKey::from_bytes(r.array::<OWNER_KEY_LEN>()?);
        let signed_len = r.position();
        r.take(SIGNATURE_LEN)?;
        r.finish()?;
        Ok(Self {
            grant: RecipientGrant {
                topic,
                recipient,
                public_key,
                created_at,
                expires_at,
            },
            signer,
            signed_len,
            bytes,
        })
    }

    /// The encoded entry.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Checks the entry as a producer must before sealing to it: signed by
    /// `pinned`, for `topic`, not expired at `now_ms`.
    ///
    /// # Errors
    ///
    /// The first [`EntryProblem`] found.
    pub fn verify(
        &self,
        pinned: &OwnerPublicKey,
        topic: &str,
        now_ms: i64,
    ) -> Result<&RecipientGrant, EntryProblem> {
        if &self.signer != pinned {
            return Err(EntryProblem::OtherSigner {
                signer: self.signer.fingerprint_hex(),
                pinned: pinned.fingerprint_hex(),
            });
        }
        let body = self.bytes.get(..self.signed_len).unwrap_or_default();
        let signature = self.bytes.get(self.signed_len..).unwrap_or_default();
        if !pinned.verifies(&signing_input(body), signature) {
            return Err(EntryProblem::BadSignature);
        }
        if self.grant.topic != topic {
            return Err(EntryProblem::OtherTopic {
                entry_topic: self.grant.topic.clone(),
                expected: topic.to_owned(),
            });
        }
        if let Some(at) = self.grant.expires_at
            && at <= now_ms
        {
            return Err(EntryProblem::Expired { expires_at: at });
        }
        Ok(&self.grant)
    }
}

/// Decodes and verifies a directory entry as stored on the broker: also
/// checks that the id it is stored under is the one it names.
///
/// # Errors
///
/// [`E2eError::Entry`] naming the entry and the problem.
pub fn verify_entry(
    entry: &RecipientEntry,
    pinned: &OwnerPublicKey,
    topic: &str,
    now_ms: i64,
) -> Result<RecipientGrant, E2eError> {
    let refuse = |problem| E2eError::Entry {
        recipient: entry.recipient.clone(),
        problem,
    };
    let signed = SignedRecipientEntry::decode(entry.entry.clone()).map_err(refuse)?;
    let grant = signed.verify(pinned, topic, now_ms).map_err(refuse)?;
    if grant.recipient != entry.recipient {
        return Err(refuse(EntryProblem::OtherRecipient {
            named: grant.recipient.clone(),
        }));
    }
    Ok(grant.clone())
}

/// A short entry, or bytes left after its signature.
impl From<ReadError> for EntryProblem {
    fn from(e: ReadError) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// `n` bytes of UTF-8 naming `what`, not empty.
fn text(r: &mut Reader<&[u8]>, n: usize, what: &str) -> Result<String, EntryProblem> {
    if n == 0 {
        return Err(EntryProblem::Malformed(format!("empty {what}")));
    }
    r.utf8(n).map_err(|e| match e {
        ReadError::InvalidUtf8 { .. } => EntryProblem::Malformed(format!("{what} is not UTF-8")),
        e => e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerKey {
        // A fixed PKCS#8 v1 Ed25519 key (seed 0x01 * 32) for golden bytes.
        let mut pkcs8 = hex::decode("302e020100300506032b657004220420").expect("hex");
        pkcs8.extend_from_slice(&[1u8; 32]);
        OwnerKey::from_pkcs8(&pkcs8).expect("a valid key")
    }

    fn grant() -> RecipientGrant {
        RecipientGrant {
            topic: "demo.x".into(),
            recipient: "bob".into(),
            public_key: RecipientKey::from_bytes([9; 32]),
            created_at: 1_769_850_000_000,
            expires_at: Some(1_772_442_000_000),
        }
    }

    #[test]
    fn golden_bytes_and_round_trip() {
        let owner = owner();
        let bytes = grant().sign(&owner).expect("signs");
        let expected_body = [
            "53425245",         // "SBRE"
            "01",               // version
            "0020",             // kem_id X25519
            "0006",             // topic_length
            "64656d6f2e78",     // "demo.x"
            "03",               // recipient_len
            "626f62",           // "bob"
            &"09".repeat(32),   // public_key
            "0000019c1347d280", // created_at 1769850000000
            "01",               // has_expiry
            "0000019cadc69a80", // expires_at 1772442000000
            &hex::encode(owner.public_key().as_bytes()),
        ]
        .concat();
        let hex_bytes = hex::encode(&bytes);
        assert_eq!(&hex_bytes[..expected_body.len()], expected_body);
        assert_eq!(bytes.len(), expected_body.len() / 2 + 64);
        // Ed25519 is deterministic: the same key and message sign alike.
        assert_eq!(grant().sign(&owner).expect("signs"), bytes);

        let decoded = SignedRecipientEntry::decode(bytes).expect("decodes");
        assert_eq!(decoded.grant, grant());
        assert_eq!(decoded.signer, owner.public_key());
        assert_eq!(
            decoded.verify(&owner.public_key(), "demo.x", 0),
            Ok(&grant())
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let owner = owner();
        let bytes = grant().sign(&owner).expect("signs").to_vec();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let ok = SignedRecipientEntry::decode(Bytes::from(b))
                .ok()
                .is_some_and(|e| e.verify(&owner.public_key(), "demo.x", 0).is_ok());
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn x_wing_entries_carry_their_kem_and_whole_key() {
        let owner = owner();
        let bob = crate::e2e::Identity::generate_kem(RecipientKem::XWing, Some("bob"))
            .expect("generates");
        let grant = RecipientGrant {
            public_key: bob.public_key(),
            ..grant()
        };
        let bytes = grant.sign(&owner).expect("signs");
        // magic, version, then kem_id 0x647a.
        assert_eq!(&bytes[..7], &[0x53, 0x42, 0x52, 0x45, 1, 0x64, 0x7a]);
        assert_eq!(
            bytes.len(),
            4 + 1 + 2 + 2 + 6 + 1 + 3 + 1216 + 8 + 1 + 8 + 32 + 64
        );
        let decoded = SignedRecipientEntry::decode(bytes.clone()).expect("decodes");
        assert_eq!(decoded.verify(&owner.public_key(), "demo.x", 0), Ok(&grant));
        assert_eq!(decoded.grant.public_key.kem(), RecipientKem::XWing);
        // The kem id decides the key's length: swapped to X25519, the
        // rest no longer parses.
        let mut b = bytes.to_vec();
        b[5..7].copy_from_slice(&[0x00, 0x20]);
        assert!(SignedRecipientEntry::decode(Bytes::from(b)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = SignedRecipientEntry::decode(Bytes::from(bytes));
        }
    }
}
