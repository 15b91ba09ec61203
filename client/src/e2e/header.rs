//! The `strongbox-e2e` record header: which key sealed a value, and how to
//! get its data key back.
//!
//! A compact binary format, big-endian, documented byte by byte here and in
//! `docs/SECURITY.md`. Binary rather than JSON because the header travels
//! with every record (a recipient slot is 89 bytes and its id here, about 160 in
//! base64-in-JSON), and because the value's AAD covers these exact bytes:
//! a format with one encoding of each header needs no canonicalization
//! rules for the reader to get wrong.
//!
//! ```text
//! offset size field
//!      0    1 version        1
//!      1    1 value_aead     1 = AES-256-GCM
//!      2    1 key_source     1 = keyring, 2 = HPKE recipients
//!      3    1 flags          0 (reserved; a reader refuses anything else)
//!      4   12 value_nonce    the value's GCM nonce
//!     16    . source body
//!
//! key_source 1, keyring:
//!      u8  key_id_length     1..=255
//!      ..  key_id            UTF-8, no control characters
//!      u32 key_version       at least 1
//!      12  wrap_nonce        GCM nonce of the data key's wrap
//!      48  wrapped_key       the data key sealed with AES-256-GCM under the
//!                            keyring key (32 ciphertext, 16 tag)
//!
//! key_source 2, HPKE recipients (RFC 9180, mode base), version 1: every
//! recipient has an X25519 key
//!      u16 kem_id            0x0020 DHKEM(X25519, HKDF-SHA256)
//!      u16 kdf_id            0x0001 HKDF-SHA256
//!      u16 aead_id           0x0002 AES-256-GCM
//!      u16 recipient_count   1..=1024
//!      per recipient:
//!        u8  recipient_length 1..=255
//!        ..  recipient        UTF-8, no control characters, the recipient id
//!        8   key_fingerprint  first 8 bytes of SHA-256 of its public key
//!        32  encapsulated_key HPKE `enc`
//!        48  sealed_key       the data key sealed by HPKE (32 ciphertext, 16 tag)
//!
//! key_source 2, HPKE recipients, version 2: each recipient names its KEM
//!      u16 kdf_id            0x0001 HKDF-SHA256
//!      u16 aead_id           0x0002 AES-256-GCM
//!      u16 recipient_count   1..=1024
//!      per recipient:
//!        u16 kem_id           0x0020 DHKEM(X25519, HKDF-SHA256), or
//!                             0x647a X-Wing (X25519 + ML-KEM-768)
//!        u8  recipient_length 1..=255
//!        ..  recipient        UTF-8, the recipient id
//!        8   key_fingerprint  first 8 bytes of SHA-256 of its public key
//!        Nenc encapsulated_key HPKE `enc`: 32 bytes for 0x0020, 1120 for 0x647a
//!        48  sealed_key       the data key sealed by HPKE (32 ciphertext, 16 tag)
//! ```
//!
//! Version 2 differs from version 1 only in the recipients body (a KEM id
//! per recipient instead of one for all) and exists for key_source 2 only:
//! a version 2 header with key_source 1 is refused. A writer uses version
//! 1 whenever it can (a keyring, or recipients that all have X25519 keys),
//! so readers that know only version 1 keep reading what they could read
//! before, and version 2 as soon as one recipient has an X-Wing key. Nothing may follow the body. The record's value is the
//! AES-256-GCM ciphertext of the plaintext followed by the 16-byte tag.

use strongbox_protocol::codec::Reader;
use strongbox_protocol::error::ReadError;

use super::E2eError;
use super::cipher::{NONCE_LEN, SEALED_KEY_LEN};
use super::identity::RecipientKem;

/// Header format version 1: one KEM (X25519) for every recipient.
pub(crate) const VERSION: u8 = 1;
/// Header format version 2: a KEM id per recipient.
pub(crate) const VERSION_2: u8 = 2;
/// `value_aead`: AES-256-GCM.
pub(crate) const VALUE_AES_256_GCM: u8 = 1;
/// `key_source`: a keyring key.
pub(crate) const SOURCE_KEYRING: u8 = 1;
/// `key_source`: HPKE to recipients.
pub(crate) const SOURCE_RECIPIENTS: u8 = 2;
/// Bytes before the source body.
pub(crate) const FIXED_LEN: usize = 16;
/// Offset of the value nonce.
pub(crate) const NONCE_AT: usize = 4;
/// RFC 9180 KEM id of DHKEM(X25519, HKDF-SHA256).
pub(crate) const KEM_X25519_HKDF_SHA256: u16 = 0x0020;
/// RFC 9180 KDF id of HKDF-SHA256.
pub(crate) const KDF_HKDF_SHA256: u16 = 0x0001;
/// RFC 9180 AEAD id of AES-256-GCM.
pub(crate) const AEAD_AES_256_GCM: u16 = 0x0002;
/// Bytes of a key fingerprint.
pub(crate) const FINGERPRINT_LEN: usize = 8;
/// Most recipients one header may list.
pub(crate) const MAX_RECIPIENTS: usize = 1024;

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// The value's nonce.
    pub(crate) nonce: [u8; NONCE_LEN],
    /// Where the data key comes from.
    pub(crate) source: Source,
}

/// The key source of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A keyring key.
    Keyring(KeyringSlot),
    /// HPKE to recipients.
    Recipients(Vec<RecipientSlot>),
}

/// The data key wrapped under a keyring key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyringSlot {
    pub(crate) key_id: String,
    pub(crate) version: u32,
    pub(crate) wrap_nonce: [u8; NONCE_LEN],
    pub(crate) sealed: [u8; SEALED_KEY_LEN],
}

/// The data key sealed to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecipientSlot {
    /// The KEM of the recipient's key; `enc` is as long as it says.
    pub(crate) kem: RecipientKem,
    pub(crate) recipient: String,
    pub(crate) fingerprint: [u8; FINGERPRINT_LEN],
    pub(crate) enc: Vec<u8>,
    pub(crate) sealed: [u8; SEALED_KEY_LEN],
}

/// Checks a name that is written with a one-byte length.
pub(crate) fn check_short_name(what: &str, name: &str) -> Result<(), E2eError> {
    if name.is_empty() || name.len() > 255 {
        return Err(E2eError::invalid(format!(
            "a {what} must be 1 to 255 bytes, not {}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(E2eError::invalid(format!(
            "a {what} must not contain control characters: {name:?}"
        )));
    }
    Ok(())
}

impl Envelope {
    /// The encoded header.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a key id or recipient id outside 1..=255
    /// bytes, a version 0, or no (or too many) recipients.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, E2eError> {
        let mut out = Vec::with_capacity(128);
        match &self.source {
            Source::Keyring(k) => {
                check_short_name("key id", &k.key_id)?;
                if k.version == 0 {
                    return Err(E2eError::invalid("key versions start at 1"));
                }
                out.extend_from_slice(&[VERSION, VALUE_AES_256_GCM, SOURCE_KEYRING, 0]);
                out.extend_from_slice(&self.nonce);
                push_short(&mut out, &k.key_id);
                out.extend_from_slice(&k.version.to_be_bytes());
                out.extend_from_slice(&k.wrap_nonce);
                out.extend_from_slice(&k.sealed);
            }
            Source::Recipients(slots) => {
                if slots.is_empty() || slots.len() > MAX_RECIPIENTS {
                    return Err(E2eError::invalid(format!(
                        "a record is sealed to 1 to {MAX_RECIPIENTS} recipients, not {}",
                        slots.len()
                    )));
                }
                // Version 1 whenever it can say it, for readers that know
                // only version 1.
                let v1 = slots.iter().all(|s| s.kem == RecipientKem::X25519);
                let version = if v1 { VERSION } else { VERSION_2 };
                out.extend_from_slice(&[version, VALUE_AES_256_GCM, SOURCE_RECIPIENTS, 0]);
                out.extend_from_slice(&self.nonce);
                if v1 {
                    out.extend_from_slice(&KEM_X25519_HKDF_SHA256.to_be_bytes());
                }
                for id in [KDF_HKDF_SHA256, AEAD_AES_256_GCM] {
                    out.extend_from_slice(&id.to_be_bytes());
                }
                let count = u16::try_from(slots.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for s in slots {
                    check_short_name("recipient id", &s.recipient)?;
                    if s.enc.len() != s.kem.enc_len() {
                        return Err(E2eError::invalid(format!(
                            "an {} encapsulated key is {} bytes, not {}",
                            s.kem,
                            s.kem.enc_len(),
                            s.enc.len()
                        )));
                    }
                    if !v1 {
                        out.extend_from_slice(&s.kem.kem_id().to_be_bytes());
                    }
                    push_short(&mut out, &s.recipient);
                    out.extend_from_slice(&s.fingerprint);
                    out.extend_from_slice(&s.enc);
                    out.extend_from_slice(&s.sealed);
                }
            }
        }
        Ok(out)
    }

    /// Parses a header, refusing trailing bytes.
    ///
    /// # Errors
    ///
    /// [`E2eError::MalformedHeader`] for bytes that do not follow the
    /// format, [`E2eError::UnsupportedHeader`] for a version or algorithm
    /// this client does not know.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, E2eError> {
        let mut r = Reader::new(bytes);
        let version = field("version", r.u8())?;
        if version != VERSION && version != VERSION_2 {
            return Err(E2eError::UnsupportedHeader(format!(
                "format version {version} (this client reads versions {VERSION} and {VERSION_2})"
            )));
        }
        let aead = field("value_aead", r.u8())?;
        if aead != VALUE_AES_256_GCM {
            return Err(E2eError::UnsupportedHeader(format!(
                "value algorithm {aead}"
            )));
        }
        let source = field("key_source", r.u8())?;
        let flags = field("flags", r.u8())?;
        if flags != 0 {
            return Err(E2eError::UnsupportedHeader(format!("flags {flags:#04x}")));
        }
        let nonce = field("value_nonce", r.array())?;
        let source = match source {
            SOURCE_KEYRING if version != VERSION => {
                return Err(E2eError::UnsupportedHeader(format!(
                    "format version {version} with a keyring key source (only version 1 has one)"
                )));
            }
            SOURCE_KEYRING => {
                let key_id = short_string(&mut r, "key_id")?;
                let version = field("key_version", r.u32())?;
                if version == 0 {
                    return Err(E2eError::malformed("key_version 0 (versions start at 1)"));
                }
                Source::Keyring(KeyringSlot {
                    key_id,
                    version,
                    wrap_nonce: field("wrap_nonce", r.array())?,
                    sealed: field("wrapped_key", r.array())?,
                })
            }
            SOURCE_RECIPIENTS => Source::Recipients(recipients(&mut r, version)?),
            other => {
                return Err(E2eError::UnsupportedHeader(format!("key source {other}")));
            }
        };
        r.finish()
            .map_err(|e| E2eError::malformed(format!("after the header: {e}")))?;
        Ok(Self { nonce, source })
    }
}

/// The recipients body of a header of format `version`.
fn recipients(r: &mut Reader<&[u8]>, version: u8) -> Result<Vec<RecipientSlot>, E2eError> {
    // Version 1 names one KEM for all (always X25519); version 2 one per
    // recipient.
    let shared_kem = if version == VERSION {
        let id = field("kem_id", r.u16())?;
        if id != KEM_X25519_HKDF_SHA256 {
            return Err(E2eError::UnsupportedHeader(format!(
                "HPKE kem {id:#06x} in a version 1 header (version 1 is X25519 only)"
            )));
        }
        Some(RecipientKem::X25519)
    } else {
        None
    };
    let suite = (field("kdf_id", r.u16())?, field("aead_id", r.u16())?);
    if suite != (KDF_HKDF_SHA256, AEAD_AES_256_GCM) {
        return Err(E2eError::UnsupportedHeader(format!(
            "HPKE suite kdf {:#06x}, aead {:#06x}",
            suite.0, suite.1
        )));
    }
    let count = usize::from(field("recipient_count", r.u16())?);
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(E2eError::malformed(format!(
            "recipient_count {count} (1 to {MAX_RECIPIENTS})"
        )));
    }
    let mut slots = Vec::with_capacity(count.min(r.remaining() / 90 + 1));
    for _ in 0..count {
        let kem = match shared_kem {
            Some(k) => k,
            None => {
                let id = field("kem_id", r.u16())?;
                RecipientKem::from_kem_id(id)
                    .ok_or_else(|| E2eError::UnsupportedHeader(format!("HPKE kem {id:#06x}")))?
            }
        };
        slots.push(RecipientSlot {
            kem,
            recipient: short_string(r, "recipient")?,
            fingerprint: field("key_fingerprint", r.array())?,
            enc: field("encapsulated_key", r.take(kem.enc_len()))?.to_vec(),
            sealed: field("sealed_key", r.array())?,
        });
    }
    Ok(slots)
}

fn push_short(out: &mut Vec<u8>, s: &str) {
    // Lengths were checked to fit one byte.
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// A header field read with the protocol's reader: a short read names the
/// field, where it starts and what is missing.
fn field<T>(name: &str, read: Result<T, ReadError>) -> Result<T, E2eError> {
    read.map_err(|e| E2eError::malformed(format!("{name}: {e}")))
}

/// A name with a one-byte length: 1 to 255 bytes of UTF-8 without control
/// characters.
fn short_string(r: &mut Reader<&[u8]>, name: &str) -> Result<String, E2eError> {
    let at = r.position();
    let len = usize::from(field(name, r.u8())?);
    if len == 0 {
        return Err(E2eError::malformed(format!("empty {name} at offset {at}")));
    }
    let s = r.utf8(len).map_err(|e| match e {
        ReadError::InvalidUtf8 { .. } => {
            E2eError::malformed(format!("{name} at offset {at} is not UTF-8"))
        }
        e => E2eError::malformed(format!("{name}: {e}")),
    })?;
    // The writer refuses these (`check_short_name`): a newline or an
    // escape sequence in a name would reach error messages and logs.
    if s.chars().any(char::is_control) {
        return Err(E2eError::malformed(format!(
            "{name} at offset {at} contains control characters"
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring_envelope() -> Envelope {
        Envelope {
            nonce: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            source: Source::Keyring(KeyringSlot {
                key_id: "orders".into(),
                version: 3,
                wrap_nonce: [0xaa; NONCE_LEN],
                sealed: [0xbb; SEALED_KEY_LEN],
            }),
        }
    }

    fn recipients_envelope() -> Envelope {
        Envelope {
            nonce: [1; NONCE_LEN],
            source: Source::Recipients(vec![RecipientSlot {
                kem: RecipientKem::X25519,
                recipient: "bob".into(),
                fingerprint: [0xf0; FINGERPRINT_LEN],
                enc: vec![0xee; 32],
                sealed: [0xdd; SEALED_KEY_LEN],
            }]),
        }
    }

    /// An X-Wing recipient and an X25519 one: a version 2 header.
    fn mixed_envelope() -> Envelope {
        Envelope {
            nonce: [2; NONCE_LEN],
            source: Source::Recipients(vec![
                RecipientSlot {
                    kem: RecipientKem::XWing,
                    recipient: "al".into(),
                    fingerprint: [0xa1; FINGERPRINT_LEN],
                    enc: vec![0xe1; 1120],
                    sealed: [0xd1; SEALED_KEY_LEN],
                },
                RecipientSlot {
                    kem: RecipientKem::X25519,
                    recipient: "bo".into(),
                    fingerprint: [0xb2; FINGERPRINT_LEN],
                    enc: vec![0xe2; 32],
                    sealed: [0xd2; SEALED_KEY_LEN],
                },
            ]),
        }
    }

    #[test]
    fn keyring_header_golden_bytes() {
        let bytes = keyring_envelope().encode().expect("encodes");
        let expected = [
            "01",                       // version
            "01",                       // value_aead AES-256-GCM
            "01",                       // key_source keyring
            "00",                       // flags
            "000000000000000000000007", // value_nonce
            "06",                       // key_id_length
            "6f7264657273",             // "orders"
            "00000003",                 // key_version
            &"aa".repeat(12),           // wrap_nonce
            &"bb".repeat(48),           // wrapped_key
        ]
        .concat();
        assert_eq!(hex::encode(&bytes), expected);
        assert_eq!(bytes.len(), 16 + 1 + 6 + 4 + 12 + 48);
        assert_eq!(Envelope::decode(&bytes), Ok(keyring_envelope()));
    }

    #[test]
    fn recipients_header_golden_bytes() {
        let bytes = recipients_envelope().encode().expect("encodes");
        let expected = [
            "01",
            "01",
            "02", // key_source recipients
            "00",
            &"01".repeat(12),
            "0020", // kem_id DHKEM(X25519, HKDF-SHA256)
            "0001", // kdf_id HKDF-SHA256
            "0002", // aead_id AES-256-GCM
            "0001", // recipient_count
            "03",
            "626f62", // "bob"
            &"f0".repeat(8),
            &"ee".repeat(32),
            &"dd".repeat(48),
        ]
        .concat();
        assert_eq!(hex::encode(&bytes), expected);
        assert_eq!(Envelope::decode(&bytes), Ok(recipients_envelope()));
    }

    #[test]
    fn version_2_header_golden_bytes() {
        let bytes = mixed_envelope().encode().expect("encodes");
        let expected = [
            "02", // version 2: a KEM id per recipient
            "01", // value_aead AES-256-GCM
            "02", // key_source recipients
            "00", // flags
            &"02".repeat(12),
            "0001", // kdf_id HKDF-SHA256
            "0002", // aead_id AES-256-GCM
            "0002", // recipient_count
            "647a", // kem_id X-Wing
            "02",
            "616c", // "al"
            &"a1".repeat(8),
            &"e1".repeat(1120), // X-Wing encapsulated key
            &"d1".repeat(48),
            "0020", // kem_id DHKEM(X25519, HKDF-SHA256)
            "02",
            "626f", // "bo"
            &"b2".repeat(8),
            &"e2".repeat(32),
            &"d2".repeat(48),
        ]
        .concat();
        assert_eq!(hex::encode(&bytes), expected);
        assert_eq!(
            bytes.len(),
            16 + 6 + (2 + 3 + 8 + 1120 + 48) + (2 + 3 + 8 + 32 + 48)
        );
        assert_eq!(Envelope::decode(&bytes), Ok(mixed_envelope()));
    }

    #[test]
    fn x25519_only_recipients_keep_version_1() {
        // Earlier readers know only version 1: a sealer keeps writing it
        // for topics whose recipients all have X25519 keys.
        let bytes = recipients_envelope().encode().expect("encodes");
        assert_eq!(bytes[0], VERSION);
        // The same recipients in a version 2 header read alike.
        let mut v2 = vec![VERSION_2, 1, SOURCE_RECIPIENTS, 0];
        v2.extend_from_slice(&[1; NONCE_LEN]);
        v2.extend_from_slice(&[0, 1, 0, 2, 0, 1, 0, 0x20, 3]);
        v2.extend_from_slice(b"bob");
        v2.extend_from_slice(&[0xf0; 8]);
        v2.extend_from_slice(&[0xee; 32]);
        v2.extend_from_slice(&[0xdd; 48]);
        assert_eq!(Envelope::decode(&v2), Ok(recipients_envelope()));
        // A version 1 header cannot name X-Wing.
        let mut b = bytes.clone();
        b[16..18].copy_from_slice(&0x647au16.to_be_bytes());
        assert!(matches!(
            Envelope::decode(&b),
            Err(E2eError::UnsupportedHeader(m)) if m.contains("version 1")
        ));
    }

    #[test]
    fn version_2_refuses_unknown_kems_and_wrong_enc_lengths() {
        let bytes = mixed_envelope().encode().expect("encodes");
        let mut b = bytes.clone();
        b[22..24].copy_from_slice(&0x0021u16.to_be_bytes());
        assert!(matches!(
            Envelope::decode(&b),
            Err(E2eError::UnsupportedHeader(m)) if m.contains("0x0021")
        ));
        // An X25519 slot claiming X-Wing runs past the end.
        let e = Envelope {
            nonce: [0; NONCE_LEN],
            source: Source::Recipients(vec![RecipientSlot {
                kem: RecipientKem::XWing,
                recipient: "x".into(),
                fingerprint: [0; FINGERPRINT_LEN],
                enc: vec![0; 32],
                sealed: [0; SEALED_KEY_LEN],
            }]),
        };
        assert!(matches!(e.encode(), Err(E2eError::Invalid(_))));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        for envelope in [keyring_envelope(), recipients_envelope(), mixed_envelope()] {
            let bytes = envelope.encode().expect("encodes");
            for cut in 0..bytes.len() {
                assert!(
                    matches!(
                        Envelope::decode(&bytes[..cut]),
                        Err(E2eError::MalformedHeader(_))
                    ),
                    "cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Envelope::decode(&longer),
                Err(E2eError::MalformedHeader(m)) if m.contains("trailing")
            ));
        }
    }

    #[test]
    fn unknown_versions_algorithms_and_flags_are_unsupported() {
        let bytes = keyring_envelope().encode().expect("encodes");
        for (at, value) in [(0, 2u8), (1, 9), (2, 3), (3, 1)] {
            let mut b = bytes.clone();
            b[at] = value;
            assert!(
                matches!(Envelope::decode(&b), Err(E2eError::UnsupportedHeader(_))),
                "byte {at} = {value}"
            );
        }
        let mut b = recipients_envelope().encode().expect("encodes");
        b[17] = 0x21; // kem_id 0x0021
        assert!(matches!(
            Envelope::decode(&b),
            Err(E2eError::UnsupportedHeader(_))
        ));
        let mut b = recipients_envelope().encode().expect("encodes");
        b[0] = 3; // a version after 2
        assert!(matches!(
            Envelope::decode(&b),
            Err(E2eError::UnsupportedHeader(m)) if m.contains("format version 3")
        ));
    }

    #[test]
    fn names_are_checked_on_both_sides() {
        let mut e = keyring_envelope();
        if let Source::Keyring(k) = &mut e.source {
            k.key_id = "x".repeat(256);
        }
        assert!(matches!(e.encode(), Err(E2eError::Invalid(_))));
        let mut b = keyring_envelope().encode().expect("encodes");
        b[16] = 0; // empty key id
        assert!(matches!(
            Envelope::decode(&b),
            Err(E2eError::MalformedHeader(_))
        ));
        let mut b = keyring_envelope().encode().expect("encodes");
        b[17] = 0xff; // not UTF-8
        assert!(matches!(
            Envelope::decode(&b),
            Err(E2eError::MalformedHeader(m)) if m.contains("UTF-8")
        ));
    }

    /// Regression (found by `client/tests/fuzz_e2e_header.rs`): the reader
    /// accepted key ids and recipient ids with control characters, which
    /// the writer refuses and which reach error messages and logs.
    #[test]
    fn names_with_control_characters_are_refused() {
        let mut keyring = keyring_envelope().encode().expect("encodes");
        keyring[17] = b'\n'; // "\nrders"
        let mut recipients = recipients_envelope().encode().expect("encodes");
        recipients[25] = 0x1b; // "\x1bob"
        for bytes in [keyring, recipients] {
            assert!(matches!(
                Envelope::decode(&bytes),
                Err(E2eError::MalformedHeader(m)) if m.contains("control characters")
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn recipient_headers_round_trip(
            kems in proptest::collection::vec(proptest::bool::ANY, 1..6),
            nonce in proptest::prelude::any::<[u8; 12]>(),
            fill in proptest::prelude::any::<u8>(),
        ) {
            let slots: Vec<RecipientSlot> = kems
                .iter()
                .enumerate()
                .map(|(i, x_wing)| {
                    let kem = if *x_wing { RecipientKem::XWing } else { RecipientKem::X25519 };
                    RecipientSlot {
                        kem,
                        recipient: format!("r{i}"),
                        fingerprint: [fill; FINGERPRINT_LEN],
                        enc: vec![fill.wrapping_add(1); kem.enc_len()],
                        sealed: [fill.wrapping_add(2); SEALED_KEY_LEN],
                    }
                })
                .collect();
            let e = Envelope { nonce, source: Source::Recipients(slots) };
            let bytes = e.encode().expect("encodes");
            let want = if kems.iter().any(|x| *x) { VERSION_2 } else { VERSION };
            proptest::prop_assert_eq!(bytes[0], want);
            proptest::prop_assert_eq!(Envelope::decode(&bytes), Ok(e));
        }

        #[test]
        fn keyring_headers_round_trip(
            id in "[a-z0-9./-]{1,40}",
            version in 1u32..,
            nonce in proptest::prelude::any::<[u8; 12]>(),
        ) {
            let e = Envelope {
                nonce,
                source: Source::Keyring(KeyringSlot {
                    key_id: id,
                    version,
                    wrap_nonce: nonce,
                    sealed: [3; SEALED_KEY_LEN],
                }),
            };
            let bytes = e.encode().expect("encodes");
            proptest::prop_assert_eq!(Envelope::decode(&bytes), Ok(e));
        }
    }
}
