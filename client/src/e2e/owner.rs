//! The topic owner's Ed25519 key, which signs recipient entries, and its
//! public half, which producers pin.
//!
//! The signing key file is the PKCS#8 document `ring` generates (DER,
//! mode 0600). The public key file is 64 hex digits and a newline.

use std::fmt;
use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::E2eError;
use super::secret_file;

/// Bytes in an Ed25519 public key.
pub(crate) const OWNER_KEY_LEN: usize = 32;
/// Bytes in an Ed25519 signature.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// A topic owner's signing key.
///
/// `ring` keeps the key pair in its own type; the PKCS#8 bytes read from
/// the file are zeroized once parsed. `Debug` shows only the public key.
pub struct OwnerKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerKey")
            .field("public_key", &self.public_key().to_string())
            .finish_non_exhaustive()
    }
}

impl OwnerKey {
    /// Generates a key and writes it to `path` (PKCS#8, mode 0600;
    /// refuses to overwrite).
    ///
    /// # Errors
    ///
    /// [`E2eError::File`], [`E2eError::Random`].
    pub fn create(path: impl AsRef<Path>) -> Result<Self, E2eError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| E2eError::Random)?;
        let pkcs8 = zeroize::Zeroizing::new(pkcs8.as_ref().to_vec());
        let key = Self::from_pkcs8(&pkcs8)?;
        secret_file::create_secret(path.as_ref(), "owner key", &pkcs8)?;
        Ok(key)
    }

    /// Reads a PKCS#8 owner key file; it must not be readable by group or
    /// others.
    ///
    /// # Errors
    ///
    /// [`E2eError::File`], [`E2eError::Permissions`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, E2eError> {
        let path = path.as_ref();
        let bytes = secret_file::read_secret(path, "owner key")?;
        Self::from_pkcs8(&bytes).map_err(|_| E2eError::File {
            action: "read",
            what: "owner key",
            path: path.to_path_buf(),
            message: "not an Ed25519 PKCS#8 key".into(),
        })
    }

    /// The key from a PKCS#8 (v1 or v2) document.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] when it is not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, E2eError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map(|pair| Self { pair })
            .map_err(|_| E2eError::invalid("not an Ed25519 PKCS#8 key"))
    }

    /// The public key producers pin.
    pub fn public_key(&self) -> OwnerPublicKey {
        let mut out = [0u8; OWNER_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        OwnerPublicKey(out)
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// A topic owner's Ed25519 public key, as producers pin it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerPublicKey([u8; OWNER_KEY_LEN]);

impl fmt::Debug for OwnerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerPublicKey({})", hex::encode(self.0))
    }
}

impl fmt::Display for OwnerPublicKey {
    /// The key as 64 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl OwnerPublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; OWNER_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key from 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for anything else.
    pub fn from_hex(text: &str) -> Result<Self, E2eError> {
        let mut out = [0u8; OWNER_KEY_LEN];
        hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
            E2eError::invalid(format!(
                "an Ed25519 public key is {} hex digits",
                OWNER_KEY_LEN * 2
            ))
        })?;
        Ok(Self(out))
    }

    /// Reads a public key file (64 hex digits).
    ///
    /// # Errors
    ///
    /// [`E2eError::File`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, E2eError> {
        let path = path.as_ref();
        let bytes = secret_file::read_public(path, "owner public key")?;
        let text = std::str::from_utf8(&bytes).unwrap_or("");
        Self::from_hex(text).map_err(|e| E2eError::File {
            action: "read",
            what: "owner public key",
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Writes the key to a new file (64 hex digits and a newline, mode
    /// 0644; refuses to overwrite).
    ///
    /// # Errors
    ///
    /// [`E2eError::File`].
    pub fn create(&self, path: impl AsRef<Path>) -> Result<(), E2eError> {
        secret_file::create_public(
            path.as_ref(),
            "owner public key",
            format!("{self}\n").as_bytes(),
        )
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; OWNER_KEY_LEN] {
        &self.0
    }

    /// The first 8 bytes of SHA-256 of the key, as 16 hex digits.
    pub fn fingerprint_hex(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        hex::encode(&digest.as_ref()[..8])
    }

    /// True when `signature` is this key's Ed25519 signature of `message`.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}
