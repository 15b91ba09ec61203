//! AES-256-GCM (from `ring`) for values and for wrapping data keys, the
//! data key type, and the random number generator.
//!
//! `ring` keeps its expanded AES key schedule in its own types and does not
//! zeroize it on drop; the raw key bytes ([`DataKey`], keyring keys) do.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::E2eError;

/// Bytes in an AES-256 key.
pub(crate) const KEY_LEN: usize = 32;
/// Bytes in a GCM nonce.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes in a GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes of a data key sealed with AES-256-GCM: ciphertext and tag.
pub(crate) const SEALED_KEY_LEN: usize = KEY_LEN + TAG_LEN;

/// `N` bytes from the operating system's CSPRNG.
///
/// # Errors
///
/// [`E2eError::Random`] when the generator fails.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], E2eError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| E2eError::Random)?;
    Ok(out)
}

/// Deserializes 64 hex digits into zeroizing key bytes, without leaving
/// copies of the text behind.
pub(crate) fn hex_key<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Zeroizing<[u8; KEY_LEN]>, D::Error> {
    use serde::Deserialize;
    let text = Zeroizing::new(String::deserialize(d)?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(text.trim().as_bytes(), key.as_mut()).map_err(|_| {
        serde::de::Error::custom(format!("a key must be {} hex digits", KEY_LEN * 2))
    })?;
    Ok(key)
}

/// 256 bits of key material that zeroize on drop and never print.
pub(crate) struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub(crate) fn random() -> Result<Self, E2eError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| E2eError::Random)?;
        Ok(Self(key))
    }

    /// Takes key bytes (copied; the caller zeroizes its own).
    pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key bytes.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Prepares the key for AES-256-GCM.
    pub(crate) fn aead(&self) -> Aead {
        Aead::new(&self.0)
    }
}

/// AES-256-GCM with its key prepared once.
pub(crate) struct Aead(LessSafeKey);

impl fmt::Debug for Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aead(<key redacted>)")
    }
}

impl Aead {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        // `UnboundKey::new` fails only for a key whose length is not the
        // algorithm's; the array type rules that out.
        #[allow(clippy::expect_used)]
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte array is an AES-256 key");
        Self(LessSafeKey::new(unbound))
    }

    /// Encrypts `plaintext` and returns ciphertext followed by the tag.
    pub(crate) fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out,
            )
            .map_err(|_| E2eError::invalid("the value is too large for AES-GCM"))?;
        Ok(out)
    }

    /// Decrypts ciphertext-and-tag; `None` when it does not authenticate.
    pub(crate) fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }

    /// Decrypts a sealed 32-byte key into zeroizing memory.
    pub(crate) fn open_key(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8; SEALED_KEY_LEN],
    ) -> Option<SecretKey> {
        let mut buf = Zeroizing::new(*sealed);
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                buf.as_mut(),
            )
            .ok()?;
        let key: &[u8; KEY_LEN] = (&*plain).try_into().ok()?;
        Some(SecretKey::from_bytes(key))
    }

    /// Encrypts a 32-byte key: ciphertext and tag.
    pub(crate) fn seal_key(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        key: &SecretKey,
    ) -> Result<[u8; SEALED_KEY_LEN], E2eError> {
        let mut buf = Zeroizing::new([0u8; KEY_LEN]);
        buf.copy_from_slice(key.bytes());
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                buf.as_mut(),
            )
            .map_err(|_| E2eError::invalid("cannot seal a data key"))?;
        let mut out = [0u8; SEALED_KEY_LEN];
        out[..KEY_LEN].copy_from_slice(buf.as_ref());
        out[KEY_LEN..].copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead as _, KeyInit, Payload};

    #[test]
    fn ring_and_rustcrypto_agree_both_ways() {
        let key = SecretKey::from_bytes(&[0x42; KEY_LEN]);
        let nonce = [7u8; NONCE_LEN];
        let aad = b"strongbox-e2e test aad";
        let sealed = key.aead().seal(nonce, aad, b"a value").expect("seals");

        let other = aes_gcm::Aes256Gcm::new_from_slice(key.bytes()).expect("key");
        let plain = other
            .decrypt((&nonce).into(), Payload { msg: &sealed, aad })
            .expect("RustCrypto opens ring's output");
        assert_eq!(plain, b"a value");

        let theirs = other
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: b"the other way",
                    aad,
                },
            )
            .expect("encrypts");
        assert_eq!(
            key.aead().open(nonce, aad, &theirs).as_deref(),
            Some(&b"the other way"[..])
        );
        assert!(key.aead().open(nonce, b"other aad", &theirs).is_none());
    }

    #[test]
    fn nist_gcm_vector_opens() {
        // NIST SP 800-38D test case 14 (AES-256, zero key, zero nonce, one
        // zero block): ciphertext cea7403d4d606b6e074ec5d3baf39d18, tag
        // d0d1c8a799996bf0265b98b5d48ab919.
        let key = SecretKey::from_bytes(&[0; KEY_LEN]);
        let sealed =
            hex::decode("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919")
                .expect("hex");
        assert_eq!(
            key.aead().open([0; NONCE_LEN], b"", &sealed),
            Some(vec![0u8; 16])
        );
    }

    #[test]
    fn sealed_keys_round_trip_and_bind_their_aad() {
        let kek = SecretKey::random().expect("rng");
        let dek = SecretKey::random().expect("rng");
        let sealed = kek
            .aead()
            .seal_key([1; NONCE_LEN], b"ctx", &dek)
            .expect("seals");
        let opened = kek
            .aead()
            .open_key([1; NONCE_LEN], b"ctx", &sealed)
            .expect("opens");
        assert_eq!(opened.bytes(), dek.bytes());
        assert!(
            kek.aead()
                .open_key([1; NONCE_LEN], b"other", &sealed)
                .is_none()
        );
        assert!(
            kek.aead()
                .open_key([2; NONCE_LEN], b"ctx", &sealed)
                .is_none()
        );
        assert_eq!(format!("{dek:?}"), "SecretKey(<redacted>)");
    }
}
