//! Recipients' X25519 keys and the HPKE wrap of data keys.
//!
//! HPKE (RFC 9180) in mode base with DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256 and AES-256-GCM, through the `hpke` crate. Each wrap is a
//! fresh encapsulation: a new ephemeral X25519 key, so a new HPKE key and
//! base nonce every time.
//!
//! An identity file is JSON, mode 0600:
//!
//! ```json
//! {"format":"strongbox-e2e-identity","format_version":1,"recipient":"spiffe://strongbox.dev/bob",
//!  "public_key":"<64 hex digits>","secret_key":"<64 hex digits>"}
//! ```

use std::fmt;
use std::path::Path;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::E2eError;
use super::cipher::{KEY_LEN, SEALED_KEY_LEN, SecretKey, random};
use super::header::{ENC_LEN, FINGERPRINT_LEN, RecipientSlot, check_short_name};
use super::secret_file;

type X25519 = X25519HkdfSha256;

/// The `format` field of an identity file.
const FORMAT: &str = "strongbox-e2e-identity";
/// The `format_version` this client writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Domain label of the HPKE `info`.
const INFO_LABEL: &[u8] = b"strongbox-e2e/1 data-key";

/// A recipient's X25519 public key. Public: printing it is fine.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecipientKey([u8; KEY_LEN]);

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecipientKey({})", hex::encode(self.0))
    }
}

impl fmt::Display for RecipientKey {
    /// The key as 64 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl RecipientKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key from 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for anything else.
    pub fn from_hex(text: &str) -> Result<Self, E2eError> {
        let mut out = [0u8; KEY_LEN];
        hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
            E2eError::invalid(format!(
                "an X25519 public key is {} hex digits",
                KEY_LEN * 2
            ))
        })?;
        Ok(Self(out))
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The first 8 bytes of SHA-256 of the key: what a record header
    /// names the key by.
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        fingerprint(&self.0)
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
        let pk = <X25519 as Kem>::PublicKey::from_bytes(&self.0)
            .map_err(|_| E2eError::invalid(format!("recipient {recipient}: not an X25519 key")))?;
        let (enc, sealed) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519>(
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
        let enc: [u8; ENC_LEN] = enc.to_bytes().as_slice().try_into().map_err(|_| {
            E2eError::invalid("HPKE returned an encapsulated key of an unexpected size")
        })?;
        let sealed: [u8; SEALED_KEY_LEN] = sealed
            .as_slice()
            .try_into()
            .map_err(|_| E2eError::invalid("HPKE returned a sealed key of an unexpected size"))?;
        Ok(RecipientSlot {
            recipient: recipient.to_owned(),
            fingerprint: self.fingerprint(),
            enc,
            sealed,
        })
    }
}

fn fingerprint(key: &[u8; KEY_LEN]) -> [u8; FINGERPRINT_LEN] {
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

/// A reader's X25519 key pair and, optionally, its recipient id.
///
/// The secret key zeroizes on drop (the `hpke` crate's X25519 secret is
/// zeroize-on-drop) and appears in no `Debug` output.
pub struct Identity {
    recipient: Option<String>,
    secret: <X25519 as Kem>::PrivateKey,
    public: RecipientKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("recipient", &self.recipient)
            .field("fingerprint", &self.public.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    format: String,
    format_version: u32,
    recipient: Option<String>,
    public_key: String,
    #[serde(deserialize_with = "super::cipher::hex_key")]
    secret_key: Zeroizing<[u8; KEY_LEN]>,
}

impl Identity {
    /// A fresh key pair from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a bad recipient id; [`E2eError::Random`].
    pub fn generate(recipient: Option<&str>) -> Result<Self, E2eError> {
        if let Some(r) = recipient {
            check_short_name("recipient id", r)?;
        }
        let mut ikm: [u8; KEY_LEN] = random()?;
        let (secret, public) = X25519::derive_keypair(&ikm);
        ikm.zeroize();
        let public = public_bytes(&public)?;
        Ok(Self {
            recipient: recipient.map(str::to_owned),
            secret,
            public,
        })
    }

    /// The recipient id, when the identity was given one.
    pub fn recipient(&self) -> Option<&str> {
        self.recipient.as_deref()
    }

    /// The public key to hand to the topic owner.
    pub fn public_key(&self) -> RecipientKey {
        self.public
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
        let mut secret = self.secret.to_bytes();
        let secret_hex = Zeroizing::new(hex::encode(secret.as_slice()));
        secret.as_mut_slice().zeroize();
        let recipient = match &self.recipient {
            Some(r) => serde_json::Value::String(r.clone()).to_string(),
            None => "null".into(),
        };
        Zeroizing::new(format!(
            "{{\"format\":\"{FORMAT}\",\"format_version\":{FORMAT_VERSION},\"recipient\":{recipient},\n \"public_key\":\"{}\",\n \"secret_key\":\"{}\"}}\n",
            self.public,
            secret_hex.as_str()
        ))
    }

    fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: FileIdentity = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.format != FORMAT || file.format_version != FORMAT_VERSION {
            return Err(format!(
                "not an identity this client reads (format {:?} version {}; expected {FORMAT:?} version {FORMAT_VERSION})",
                file.format, file.format_version
            ));
        }
        if let Some(r) = &file.recipient {
            check_short_name("recipient id", r).map_err(|e| e.to_string())?;
        }
        let secret = <X25519 as Kem>::PrivateKey::from_bytes(file.secret_key.as_ref())
            .map_err(|_| "secret_key is not an X25519 secret key".to_owned())?;
        let public = public_bytes(&X25519::sk_to_pk(&secret)).map_err(|e| e.to_string())?;
        let stated = RecipientKey::from_hex(&file.public_key).map_err(|e| e.to_string())?;
        if stated != public {
            return Err("public_key does not belong to secret_key".into());
        }
        Ok(Self {
            recipient: file.recipient,
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
        let enc = <X25519 as Kem>::EncappedKey::from_bytes(&slot.enc).map_err(|_| mismatch())?;
        let plain = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519>(
            &OpModeR::Base,
            &self.secret,
            &enc,
            &info(topic),
            &slot.sealed,
            b"",
        )
        .map_err(|_| mismatch())?;
        let plain = Zeroizing::new(plain);
        let key: &[u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| mismatch())?;
        Ok(SecretKey::from_bytes(key))
    }
}

fn public_bytes(pk: &<X25519 as Kem>::PublicKey) -> Result<RecipientKey, E2eError> {
    let bytes: [u8; KEY_LEN] = pk
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| E2eError::invalid("X25519 public key of an unexpected size"))?;
    Ok(RecipientKey(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_binds_the_topic() {
        let bob = Identity::generate(Some("bob")).expect("generates");
        let dek = SecretKey::random().expect("rng");
        let slot = bob.public_key().seal("bob", "demo.a", &dek).expect("seals");
        assert_eq!(slot.fingerprint, bob.public_key().fingerprint());
        assert_eq!(
            bob.open("demo.a", &slot).expect("opens").bytes(),
            dek.bytes()
        );
        assert!(matches!(
            bob.open("demo.b", &slot),
            Err(E2eError::RecipientKeyMismatch { .. })
        ));
        let eve = Identity::generate(Some("eve")).expect("generates");
        assert!(eve.open("demo.a", &slot).is_err());
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
    fn file_form_round_trips_and_checks_the_pair() {
        let id = Identity::generate(Some("spiffe://strongbox.dev/bob")).expect("generates");
        let json = id.to_json();
        let back = Identity::from_json(json.as_bytes()).expect("parses");
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.recipient(), id.recipient());
        let other = Identity::generate(None).expect("generates");
        let swapped = json.replace(
            &id.public_key().to_string(),
            &other.public_key().to_string(),
        );
        assert_eq!(
            Identity::from_json(swapped.as_bytes()).err().as_deref(),
            Some("public_key does not belong to secret_key")
        );
    }
}
