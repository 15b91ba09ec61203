//! Recipients' public keys, their key pairs (identities), and the HPKE
//! wrap of data keys.
//!
//! Two kinds of recipient key ([`RecipientKem`]), each used with HPKE (RFC
//! 9180) in mode base, HKDF-SHA256 and AES-256-GCM through the `hpke`
//! crate:
//!
//! - `x25519`: DHKEM(X25519, HKDF-SHA256), KEM id 0x0020. 32-byte public
//!   key and encapsulated key.
//! - `x-wing`: X-Wing, the hybrid of X25519 and ML-KEM-768 (FIPS 203), KEM
//!   id 0x647a. A 1216-byte public key and a 1120-byte encapsulated key;
//!   the data key stays secret as long as either X25519 or ML-KEM-768
//!   holds, so records recorded today do not open once a quantum computer
//!   breaks X25519.
//!
//! Each wrap is a fresh encapsulation (new ephemeral randomness), so a new
//! HPKE key and base nonce every time.
//!
//! An identity file is JSON, mode 0600. An X25519 identity keeps format
//! version 1, which earlier clients read:
//!
//! ```json
//! {"format":"strongbox-e2e-identity","format_version":1,"recipient":"spiffe://strongbox.dev/bob",
//!  "public_key":"<64 hex digits>","secret_key":"<64 hex digits>"}
//! ```
//!
//! An X-Wing identity is format version 2, which names its KEM (the secret
//! key is X-Wing's 32-byte seed):
//!
//! ```json
//! {"format":"strongbox-e2e-identity","format_version":2,"kem":"x-wing","recipient":"...",
//!  "public_key":"x-wing:<2432 hex digits>","secret_key":"<64 hex digits>"}
//! ```

use std::fmt;
use std::path::Path;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{X25519HkdfSha256, XWing};
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::E2eError;
use super::cipher::{KEY_LEN, SEALED_KEY_LEN, SecretKey, random};
use super::header::{FINGERPRINT_LEN, RecipientSlot, check_short_name};
use super::secret_file;

type X25519 = X25519HkdfSha256;

/// The `format` field of an identity file.
const FORMAT: &str = "strongbox-e2e-identity";
/// The identity file version of X25519 identities.
const FORMAT_VERSION_X25519: u32 = 1;
/// The identity file version that names its KEM (X-Wing identities).
const FORMAT_VERSION_KEM: u32 = 2;
/// Domain label of the HPKE `info`.
const INFO_LABEL: &[u8] = b"strongbox-e2e/1 data-key";

/// The kind of a recipient key: the HPKE KEM it is used with.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecipientKem {
    /// DHKEM(X25519, HKDF-SHA256): classical.
    X25519,
    /// X-Wing (X25519 + ML-KEM-768): hybrid post-quantum.
    XWing,
}

impl RecipientKem {
    /// Both kinds.
    pub const ALL: [Self; 2] = [Self::X25519, Self::XWing];

    /// The name in key texts, identity files and on the command line
    /// (`x25519`, `x-wing`).
    pub fn name(self) -> &'static str {
        match self {
            Self::X25519 => "x25519",
            Self::XWing => "x-wing",
        }
    }

    /// Parses a name made by [`name`](Self::name).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The RFC 9180 KEM id written in headers and recipient entries.
    pub fn kem_id(self) -> u16 {
        match self {
            Self::X25519 => <X25519 as Kem>::KEM_ID,
            Self::XWing => <XWing as Kem>::KEM_ID,
        }
    }

    /// The kind with KEM id `id`.
    pub fn from_kem_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.kem_id() == id)
    }

    /// Bytes of a public key of this kind.
    pub fn public_key_len(self) -> usize {
        match self {
            Self::X25519 => 32,
            Self::XWing => 1216,
        }
    }

    /// Bytes of an encapsulated key (HPKE `enc`) of this kind.
    pub fn enc_len(self) -> usize {
        match self {
            Self::X25519 => 32,
            Self::XWing => 1120,
        }
    }

    /// The kind whose public keys are `len` bytes long (the lengths differ).
    pub fn from_public_key_len(len: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.public_key_len() == len)
    }
}

impl fmt::Display for RecipientKem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A recipient's public key, of either [`RecipientKem`]. Public: printing
/// it is fine.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RecipientKey {
    kem: RecipientKem,
    bytes: Vec<u8>,
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecipientKey({}, {})", self.kem, self.fingerprint_hex())
    }
}

impl fmt::Display for RecipientKey {
    /// An X25519 key as 64 hex digits (as earlier clients print it); an
    /// X-Wing key as `x-wing:` and 2432 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kem {
            RecipientKem::X25519 => f.write_str(&hex::encode(&self.bytes)),
            kem => write!(f, "{}:{}", kem.name(), hex::encode(&self.bytes)),
        }
    }
}

impl RecipientKey {
    /// An X25519 key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self {
            kem: RecipientKem::X25519,
            bytes: bytes.to_vec(),
        }
    }

    /// A key of kind `kem` from its bytes.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] when `bytes` is not the length of a `kem` key.
    pub fn from_kem_bytes(kem: RecipientKem, bytes: &[u8]) -> Result<Self, E2eError> {
        if bytes.len() != kem.public_key_len() {
            return Err(E2eError::invalid(format!(
                "an {kem} public key is {} bytes, not {}",
                kem.public_key_len(),
                bytes.len()
            )));
        }
        Ok(Self {
            kem,
            bytes: bytes.to_vec(),
        })
    }

    /// A key from its bytes alone, its kind told by its length (32 bytes:
    /// X25519; 1216: X-Wing), as access requests carry it.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for any other length.
    pub fn from_raw(bytes: &[u8]) -> Result<Self, E2eError> {
        let kem = RecipientKem::from_public_key_len(bytes.len()).ok_or_else(|| {
            E2eError::invalid(format!(
                "a recipient public key is 32 bytes (X25519) or 1216 bytes (X-Wing), not {}",
                bytes.len()
            ))
        })?;
        Self::from_kem_bytes(kem, bytes)
    }

    /// The key from its text form: 64 hex digits (X25519), or a kind name,
    /// `:` and hex digits (`x25519:...`, `x-wing:...`); surrounding
    /// whitespace ignored.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for anything else.
    pub fn from_hex(text: &str) -> Result<Self, E2eError> {
        let text = text.trim();
        let (kem, digits) = match text.split_once(':') {
            Some((name, digits)) => (
                RecipientKem::parse(name).ok_or_else(|| {
                    E2eError::invalid(format!(
                        "unknown recipient key kind {name:?} (x25519 or x-wing)"
                    ))
                })?,
                digits,
            ),
            None => (RecipientKem::X25519, text),
        };
        let bytes = hex::decode(digits).map_err(|_| {
            E2eError::invalid(format!(
                "an {kem} public key is {} hex digits{}",
                kem.public_key_len() * 2,
                if kem == RecipientKem::X25519 {
                    ""
                } else {
                    " after its kind"
                }
            ))
        })?;
        Self::from_kem_bytes(kem, &bytes)
    }

    /// The kind of the key.
    pub fn kem(&self) -> RecipientKem {
        self.kem
    }

    /// The key bytes (32 for X25519, 1216 for X-Wing).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The first 8 bytes of SHA-256 of the key bytes: what a record header
    /// names the key by.
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        fingerprint(&self.bytes)
    }

    /// [`fingerprint`](Self::fingerprint) as 16 hex digits.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint())
    }

    /// Seals `dek` to this key for records of `topic`.
    pub(crate) fn seal(
        &self,
        recipient: &str,
        topic: &str,
        dek: &SecretKey,
    ) -> Result<RecipientSlot, E2eError> {
        let (enc, sealed) = match self.kem {
            RecipientKem::X25519 => seal_with::<X25519>(&self.bytes, recipient, topic, dek)?,
            RecipientKem::XWing => seal_with::<XWing>(&self.bytes, recipient, topic, dek)?,
        };
        Ok(RecipientSlot {
            kem: self.kem,
            recipient: recipient.to_owned(),
            fingerprint: self.fingerprint(),
            enc,
            sealed,
        })
    }
}

/// One HPKE single-shot seal of `dek` to the public key `pk` of KEM `K`.
fn seal_with<K: Kem>(
    pk: &[u8],
    recipient: &str,
    topic: &str,
    dek: &SecretKey,
) -> Result<(Vec<u8>, [u8; SEALED_KEY_LEN]), E2eError> {
    let pk = K::PublicKey::from_bytes(pk)
        .map_err(|_| E2eError::invalid(format!("recipient {recipient}: not a valid public key")))?;
    let (enc, sealed) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, K>(
        &OpModeS::Base,
        &pk,
        &info(topic),
        dek.bytes(),
        b"",
    )
    .map_err(|e| {
        E2eError::invalid(format!(
            "cannot seal the data key to recipient {recipient}: {e}"
        ))
    })?;
    let sealed: [u8; SEALED_KEY_LEN] = sealed
        .as_slice()
        .try_into()
        .map_err(|_| E2eError::invalid("HPKE returned a sealed key of an unexpected size"))?;
    Ok((enc.to_bytes().to_vec(), sealed))
}

fn fingerprint(key: &[u8]) -> [u8; FINGERPRINT_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&digest.as_ref()[..FINGERPRINT_LEN]);
    out
}

/// HPKE `info`: label and topic, so a data key sealed for one topic does
/// not open for another.
fn info(topic: &str) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_LABEL.len() + 4 + topic.len());
    info.extend_from_slice(INFO_LABEL);
    info.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes());
    info.extend_from_slice(topic.as_bytes());
    info
}

/// A reader's secret key, of either kind. Both of the `hpke` crate's
/// secret key types zeroize on drop. (X-Wing's holds its expanded
/// ML-KEM key, over 1.6 KB: boxed.)
enum Secret {
    X25519(<X25519 as Kem>::PrivateKey),
    XWing(Box<<XWing as Kem>::PrivateKey>),
}

impl Secret {
    fn kem(&self) -> RecipientKem {
        match self {
            Self::X25519(_) => RecipientKem::X25519,
            Self::XWing(_) => RecipientKem::XWing,
        }
    }

    /// A fresh key pair of kind `kem` derived from `ikm`.
    fn derive(kem: RecipientKem, ikm: &[u8]) -> Result<(Self, RecipientKey), E2eError> {
        Ok(match kem {
            RecipientKem::X25519 => {
                let (sk, pk) = X25519::derive_keypair(ikm);
                (Self::X25519(sk), public_key(kem, &pk)?)
            }
            RecipientKem::XWing => {
                let (sk, pk) = XWing::derive_keypair(ikm);
                (Self::XWing(Box::new(sk)), public_key(kem, &pk)?)
            }
        })
    }

    /// The secret from its stored bytes, and its public key.
    fn from_bytes(kem: RecipientKem, bytes: &[u8]) -> Result<(Self, RecipientKey), String> {
        let bad = || format!("secret_key is not an {kem} secret key");
        Ok(match kem {
            RecipientKem::X25519 => {
                let sk = <X25519 as Kem>::PrivateKey::from_bytes(bytes).map_err(|_| bad())?;
                let pk = public_key(kem, &X25519::sk_to_pk(&sk)).map_err(|e| e.to_string())?;
                (Self::X25519(sk), pk)
            }
            RecipientKem::XWing => {
                let sk = <XWing as Kem>::PrivateKey::from_bytes(bytes).map_err(|_| bad())?;
                let pk = public_key(kem, &XWing::sk_to_pk(&sk)).map_err(|e| e.to_string())?;
                (Self::XWing(Box::new(sk)), pk)
            }
        })
    }

    /// The stored bytes (zeroized when dropped).
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut raw = match self {
            Self::X25519(sk) => sk.to_bytes().to_vec(),
            Self::XWing(sk) => sk.to_bytes().to_vec(),
        };
        let out = Zeroizing::new(raw.clone());
        raw.zeroize();
        out
    }
}

/// A reader's key pair, of either [`RecipientKem`], and optionally its
/// recipient id.
///
/// The secret key zeroizes on drop and appears in no `Debug` output.
pub struct Identity {
    recipient: Option<String>,
    secret: Secret,
    public: RecipientKey,
    /// The public key's fingerprint, computed once: readers compare it
    /// with every recipient slot of every record.
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("recipient", &self.recipient)
            .field("kem", &self.public.kem())
            .field("fingerprint", &self.public.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    format: String,
    format_version: u32,
    #[serde(default)]
    kem: Option<String>,
    recipient: Option<String>,
    public_key: String,
    #[serde(deserialize_with = "super::cipher::hex_key")]
    secret_key: Zeroizing<[u8; KEY_LEN]>,
}

impl Identity {
    /// A fresh X25519 key pair from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a bad recipient id; [`E2eError::Random`].
    pub fn generate(recipient: Option<&str>) -> Result<Self, E2eError> {
        Self::generate_kem(RecipientKem::X25519, recipient)
    }

    /// A fresh key pair of kind `kem` from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a bad recipient id; [`E2eError::Random`].
    pub fn generate_kem(kem: RecipientKem, recipient: Option<&str>) -> Result<Self, E2eError> {
        if let Some(r) = recipient {
            check_short_name("recipient id", r)?;
        }
        let mut ikm: [u8; KEY_LEN] = random()?;
        let derived = Secret::derive(kem, &ikm);
        ikm.zeroize();
        let (secret, public) = derived?;
        Ok(Self {
            recipient: recipient.map(str::to_owned),
            fingerprint: public.fingerprint(),
            secret,
            public,
        })
    }

    /// The recipient id, when the identity was given one.
    pub fn recipient(&self) -> Option<&str> {
        self.recipient.as_deref()
    }

    /// The kind of the key pair.
    pub fn kem(&self) -> RecipientKem {
        self.secret.kem()
    }

    /// The public key to hand to the topic owner.
    pub fn public_key(&self) -> RecipientKey {
        self.public.clone()
    }

    /// The fingerprint of the public key, as record headers name it.
    pub(crate) fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        self.fingerprint
    }

    /// Reads an identity file; it must not be readable by group or others.
    ///
    /// # Errors
    ///
    /// [`E2eError::File`], [`E2eError::Permissions`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, E2eError> {
        let path = path.as_ref();
        let bytes = secret_file::read_secret(path, "identity")?;
        Self::from_json(&bytes).map_err(|message| E2eError::File {
            action: "read",
            what: "identity",
            path: path.to_path_buf(),
            message,
        })
    }

    /// Writes a new identity file with mode 0600; refuses to overwrite.
    ///
    /// # Errors
    ///
    /// [`E2eError::File`].
    pub fn create(&self, path: impl AsRef<Path>) -> Result<(), E2eError> {
        secret_file::create_secret(path.as_ref(), "identity", self.to_json().as_bytes())
    }

    fn to_json(&self) -> Zeroizing<String> {
        let secret = self.secret.to_bytes();
        let secret_hex = Zeroizing::new(hex::encode(secret.as_slice()));
        let recipient = match &self.recipient {
            Some(r) => serde_json::Value::String(r.clone()).to_string(),
            None => "null".into(),
        };
        let head = match self.kem() {
            RecipientKem::X25519 => {
                format!("{{\"format\":\"{FORMAT}\",\"format_version\":{FORMAT_VERSION_X25519},")
            }
            kem => format!(
                "{{\"format\":\"{FORMAT}\",\"format_version\":{FORMAT_VERSION_KEM},\"kem\":\"{}\",",
                kem.name()
            ),
        };
        Zeroizing::new(format!(
            "{head}\"recipient\":{recipient},\n \"public_key\":\"{}\",\n \"secret_key\":\"{}\"}}\n",
            self.public,
            secret_hex.as_str()
        ))
    }

    fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: FileIdentity = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let kem = match (file.format.as_str(), file.format_version, &file.kem) {
            (FORMAT, FORMAT_VERSION_X25519, None) => RecipientKem::X25519,
            (FORMAT, FORMAT_VERSION_KEM, Some(name)) => {
                RecipientKem::parse(name).ok_or_else(|| {
                    format!("kem {name:?} is not one this client reads (x25519, x-wing)")
                })?
            }
            (FORMAT, FORMAT_VERSION_KEM, None) => {
                return Err("format version 2 needs a kem field".into());
            }
            (FORMAT, FORMAT_VERSION_X25519, Some(_)) => {
                return Err("format version 1 has no kem field (it is always X25519)".into());
            }
            _ => {
                return Err(format!(
                    "not an identity this client reads (format {:?} version {}; expected \
                     {FORMAT:?} version {FORMAT_VERSION_X25519} or {FORMAT_VERSION_KEM})",
                    file.format, file.format_version
                ));
            }
        };
        if let Some(r) = &file.recipient {
            check_short_name("recipient id", r).map_err(|e| e.to_string())?;
        }
        let (secret, public) = Secret::from_bytes(kem, file.secret_key.as_ref())?;
        let stated = RecipientKey::from_hex(&file.public_key).map_err(|e| e.to_string())?;
        if stated != public {
            return Err("public_key does not belong to secret_key".into());
        }
        Ok(Self {
            recipient: file.recipient,
            fingerprint: public.fingerprint(),
            secret,
            public,
        })
    }

    /// Opens the data key in `slot` (which must be for this identity's
    /// key) for a record of `topic`.
    pub(crate) fn open(&self, topic: &str, slot: &RecipientSlot) -> Result<SecretKey, E2eError> {
        let mismatch = || E2eError::RecipientKeyMismatch {
            recipient: slot.recipient.clone(),
            fingerprint: hex::encode(slot.fingerprint),
        };
        let plain = match &self.secret {
            Secret::X25519(sk) if slot.kem == RecipientKem::X25519 => {
                open_with::<X25519>(sk, topic, slot)
            }
            Secret::XWing(sk) if slot.kem == RecipientKem::XWing => {
                open_with::<XWing>(sk, topic, slot)
            }
            _ => None,
        }
        .ok_or_else(mismatch)?;
        let key: &[u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| mismatch())?;
        Ok(SecretKey::from_bytes(key))
    }
}

/// One HPKE single-shot open of `slot` with the secret key `sk` of KEM `K`.
fn open_with<K: Kem>(
    sk: &K::PrivateKey,
    topic: &str,
    slot: &RecipientSlot,
) -> Option<Zeroizing<Vec<u8>>> {
    let enc = K::EncappedKey::from_bytes(&slot.enc).ok()?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, K>(
        &OpModeR::Base,
        sk,
        &enc,
        &info(topic),
        &slot.sealed,
        b"",
    )
    .ok()
    .map(Zeroizing::new)
}

fn public_key<P: Serializable>(kem: RecipientKem, pk: &P) -> Result<RecipientKey, E2eError> {
    RecipientKey::from_kem_bytes(kem, pk.to_bytes().as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_binds_the_topic() {
        for kem in RecipientKem::ALL {
            let bob = Identity::generate_kem(kem, Some("bob")).expect("generates");
            assert_eq!(bob.kem(), kem);
            assert_eq!(bob.public_key().as_bytes().len(), kem.public_key_len());
            let dek = SecretKey::random().expect("rng");
            let slot = bob.public_key().seal("bob", "demo.a", &dek).expect("seals");
            assert_eq!(slot.kem, kem);
            assert_eq!(slot.enc.len(), kem.enc_len());
            assert_eq!(slot.fingerprint, bob.public_key().fingerprint());
            assert_eq!(
                bob.open("demo.a", &slot).expect("opens").bytes(),
                dek.bytes()
            );
            assert!(matches!(
                bob.open("demo.b", &slot),
                Err(E2eError::RecipientKeyMismatch { .. })
            ));
            // Another key of either kind does not open it.
            for other in RecipientKem::ALL {
                let eve = Identity::generate_kem(other, Some("eve")).expect("generates");
                assert!(eve.open("demo.a", &slot).is_err(), "{kem} by {other}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_an_x_wing_slot_does_not_open() {
        let bob = Identity::generate_kem(RecipientKem::XWing, Some("bob")).expect("generates");
        let dek = SecretKey::random().expect("rng");
        let slot = bob.public_key().seal("bob", "t", &dek).expect("seals");
        // In the X25519 part, the ML-KEM part, and the sealed key.
        for at in [0usize, 40, 1119] {
            let mut bad = slot.clone();
            bad.enc[at] ^= 1;
            assert!(bob.open("t", &bad).is_err(), "enc byte {at}");
        }
        let mut bad = slot.clone();
        bad.sealed[0] ^= 1;
        assert!(bob.open("t", &bad).is_err());
    }

    #[test]
    fn a_low_order_public_key_is_refused_when_sealing() {
        let dek = SecretKey::random().expect("rng");
        let err = RecipientKey::from_bytes([0; KEY_LEN])
            .seal("zero", "demo.a", &dek)
            .expect_err("all-zero shared secret");
        assert!(err.to_string().contains("recipient zero"), "{err}");
    }

    #[test]
    fn key_texts_name_their_kind() {
        let x = Identity::generate(None).expect("generates").public_key();
        let text = x.to_string();
        assert_eq!(text.len(), 64, "X25519 keys print as before");
        assert_eq!(RecipientKey::from_hex(&text).expect("parses"), x);
        assert_eq!(
            RecipientKey::from_hex(&format!("x25519:{text}")).expect("parses"),
            x
        );
        let w = Identity::generate_kem(RecipientKem::XWing, None)
            .expect("generates")
            .public_key();
        let text = w.to_string();
        assert!(text.starts_with("x-wing:"), "{}", &text[..10]);
        assert_eq!(text.len(), 7 + 2432);
        assert_eq!(RecipientKey::from_hex(&text).expect("parses"), w);
        assert_eq!(RecipientKey::from_raw(w.as_bytes()).expect("by length"), w);
        assert!(
            RecipientKey::from_hex(&text[7..]).is_err(),
            "no kind: X25519 length"
        );
        assert!(RecipientKey::from_hex("kyber:00").is_err());
        assert!(RecipientKey::from_raw(&[0; 33]).is_err());
    }

    #[test]
    fn file_form_round_trips_and_checks_the_pair() {
        for kem in RecipientKem::ALL {
            let id =
                Identity::generate_kem(kem, Some("spiffe://strongbox.dev/bob")).expect("generates");
            let json = id.to_json();
            let version = if kem == RecipientKem::X25519 { 1 } else { 2 };
            assert!(
                json.contains(&format!("\"format_version\":{version}")),
                "{kem}"
            );
            let back = Identity::from_json(json.as_bytes()).expect("parses");
            assert_eq!(back.public_key(), id.public_key());
            assert_eq!(back.recipient(), id.recipient());
            assert_eq!(back.kem(), kem);
            let other = Identity::generate_kem(kem, None).expect("generates");
            let swapped = json.replace(
                &id.public_key().to_string(),
                &other.public_key().to_string(),
            );
            assert_eq!(
                Identity::from_json(swapped.as_bytes()).err().as_deref(),
                Some("public_key does not belong to secret_key")
            );
        }
        // A version 1 file (as earlier clients wrote it) is X25519.
        let id = Identity::generate(None).expect("generates");
        let v1 = id.to_json();
        assert!(!v1.contains("kem"));
        let with_kem = v1.replace(
            "\"format_version\":1,",
            "\"format_version\":1,\"kem\":\"x-wing\",",
        );
        assert!(Identity::from_json(with_kem.as_bytes()).is_err());
    }
}
