//! The one AEAD interface of the storage engine.
//!
//! Every byte that the partition log encrypts goes through [`Aes256Gcm`]
//! (AES-256-GCM from `aws-lc-rs`, the hot path), and every seal is
//! authenticated with a [`SealKey`] (HMAC-SHA256 from `ring`, under a key
//! derived from the segment's data key with HKDF-SHA256). Keeping both
//! behind this small module means an implementation can be swapped in, and
//! cross-checked, in one place: the tests open this module's output with
//! RustCrypto's `aes-gcm` and the other way round, and check NIST vectors
//! here.
//!
//! Why `aws-lc-rs` for AES-GCM: it is the library under rustls (and so
//! under every QUIC packet) since the post-quantum key exchange, and it
//! sealed 64 KiB batches 22% faster than `ring` on the development machine
//! (docs/BENCHMARKS.md); the API is `ring`'s, so nothing else changed.
//!
//! ```
//! use strongbox_storage::aead::{Aes256Gcm, TAG_LEN};
//!
//! let aead = Aes256Gcm::new(&[7u8; 32]);
//! let nonce = [0u8; 12];
//! let mut data = b"a record batch".to_vec();
//! let tag = aead.seal_in_place(&nonce, b"where it lives", &mut data)?;
//! data.extend_from_slice(&tag);
//! let plain = aead.open_in_place(&nonce, b"where it lives", &mut data)?;
//! assert_eq!(plain, b"a record batch");
//! assert_eq!(tag.len(), TAG_LEN);
//! # Ok::<(), strongbox_storage::aead::AeadError>(())
//! ```
//!
//! The expanded AES key schedule lives in `aws-lc-rs`'s own types, which
//! this crate cannot zeroize; the raw data key ([`crate::keys::Dek`]) does
//! zeroize.
//! An [`Aes256Gcm`] therefore lives only as long as the segment that uses it
//! is open for appends, or for one read.

use std::fmt;

use aws_lc_rs::aead;
use ring::{hkdf, hmac};

/// Bytes in an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Bytes in a GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes in a GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes in a seal MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// HKDF `info` of the seal key: a label no other use of a data key shares.
const SEAL_KEY_INFO: &[u8] = b"strongbox/segment-seal/v1";

/// Why an AEAD operation failed. Deliberately says nothing about the data.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    /// The tag did not match: the ciphertext, the AAD, the nonce or the key
    /// differ from what was sealed.
    #[error("authentication failed")]
    Authentication,
    /// The input is too short to hold a tag, or too long for GCM.
    #[error("invalid AEAD input length")]
    Length,
}

/// AES-256-GCM with a key prepared once.
///
/// No `Debug` output of the key, no `Clone`.
pub struct Aes256Gcm {
    key: aead::LessSafeKey,
}

impl fmt::Debug for Aes256Gcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aes256Gcm(<key redacted>)")
    }
}

impl Aes256Gcm {
    /// Prepares `key` for sealing and opening.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // `UnboundKey::new` fails only for a key whose length is not the
        // algorithm's, which the array type rules out.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key)
            .expect("a 32-byte array is an AES-256 key");
        Self {
            key: aead::LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `in_out` in place and returns the tag.
    ///
    /// The caller guarantees that `nonce` is never used twice with this key
    /// (see docs/STORAGE.md for how the log does).
    ///
    /// # Errors
    ///
    /// [`AeadError::Length`] when `in_out` is longer than GCM allows.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| AeadError::Length)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks and decrypts `in_out` (ciphertext followed by the tag) in
    /// place, returning the plaintext part of the buffer.
    ///
    /// # Errors
    ///
    /// [`AeadError::Authentication`] when the tag does not match;
    /// [`AeadError::Length`] when `in_out` is shorter than a tag.
    pub fn open_in_place<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8], AeadError> {
        if in_out.len() < TAG_LEN {
            return Err(AeadError::Length);
        }
        self.key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| AeadError::Authentication)
    }
}

/// The MAC key of a segment's seal.
///
/// Derived from the segment's data key with HKDF-SHA256 (salt: the segment
/// id; info: `strongbox/segment-seal/v1`). HMAC and GCM never share a key:
/// the seal can never be confused with, or collide with, a sealed batch.
pub struct SealKey {
    key: hmac::Key,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<key redacted>)")
    }
}

impl SealKey {
    /// Derives the seal key of segment `segment_id` from its data key.
    pub fn derive(data_key: &[u8; KEY_LEN], segment_id: &[u8; 16]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, segment_id).extract(data_key);
        let info = [SEAL_KEY_INFO];
        // `expand` fails only for outputs longer than 255 hash blocks; an
        // HMAC-SHA256 key is one block.
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .expect("one HKDF-SHA256 block is always available");
        Self {
            key: hmac::Key::from(okm),
        }
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// True when `mac` is the MAC of `parts`; compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let expected = self.sign(parts);
        subtle::ConstantTimeEq::ct_eq(&expected[..], mac).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HKDF-SHA256 with one output block, computed with HMAC directly (RFC 5869
    /// section 2.3, T(1) = HMAC(PRK, info || 0x01)).
    fn manual_expand(ikm: &[u8], salt: &[u8]) -> [u8; MAC_LEN] {
        let salt_key = hmac::Key::new(hmac::HMAC_SHA256, salt);
        let prk = hmac::sign(&salt_key, ikm);
        let prk_key = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
        let mut ctx = hmac::Context::with_key(&prk_key);
        ctx.update(SEAL_KEY_INFO);
        ctx.update(&[1u8]);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    #[test]
    fn seal_key_matches_rfc5869_expansion() {
        // The seal key is exactly HKDF-SHA256 as docs/STORAGE.md specifies,
        // computed here from HMAC by hand.
        let dek = [0x42u8; KEY_LEN];
        let id = [9u8; 16];
        let derived = SealKey::derive(&dek, &id);
        let manual = hmac::Key::new(hmac::HMAC_SHA256, &manual_expand(&dek, &id));
        let msg = b"seal facts";
        assert_eq!(
            derived.sign(&[msg]).as_slice(),
            hmac::sign(&manual, msg).as_ref()
        );
    }

    #[test]
    fn seal_key_depends_on_segment_and_key() {
        let a = SealKey::derive(&[1u8; KEY_LEN], &[2u8; 16]).sign(&[b"x"]);
        let b = SealKey::derive(&[1u8; KEY_LEN], &[3u8; 16]).sign(&[b"x"]);
        let c = SealKey::derive(&[4u8; KEY_LEN], &[2u8; 16]).sign(&[b"x"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        let k = SealKey::derive(&[1u8; KEY_LEN], &[2u8; 16]);
        assert!(k.verify(&[b"x"], &a));
        let mut bad = a;
        bad[0] ^= 1;
        assert!(!k.verify(&[b"x"], &bad));
        assert!(!k.verify(&[b"x"], &a[..31]));
    }

    #[test]
    fn open_rejects_short_and_tampered_input() {
        let aead = Aes256Gcm::new(&[3u8; KEY_LEN]);
        let nonce = [1u8; NONCE_LEN];
        assert_eq!(
            aead.open_in_place(&nonce, b"", &mut [0u8; 15]),
            Err(AeadError::Length)
        );
        let mut data = b"payload".to_vec();
        let tag = aead.seal_in_place(&nonce, b"aad", &mut data).expect("seal");
        data.extend_from_slice(&tag);
        let mut flipped = data.clone();
        flipped[2] ^= 0x80;
        assert_eq!(
            aead.open_in_place(&nonce, b"aad", &mut flipped),
            Err(AeadError::Authentication)
        );
        let mut other_aad = data.clone();
        assert_eq!(
            aead.open_in_place(&nonce, b"aae", &mut other_aad),
            Err(AeadError::Authentication)
        );
        let mut other_nonce = data.clone();
        assert_eq!(
            aead.open_in_place(&[2u8; NONCE_LEN], b"aad", &mut other_nonce),
            Err(AeadError::Authentication)
        );
        assert_eq!(
            aead.open_in_place(&nonce, b"aad", &mut data).expect("open"),
            b"payload"
        );
    }
}
