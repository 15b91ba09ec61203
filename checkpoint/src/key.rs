//! The public half of the checkpoint signing key: an ECDSA P-256 point,
//! read from and written as a PEM `SubjectPublicKeyInfo` (what `openssl
//! pkey -pubin` reads), named by its key id.

use std::fmt;

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

use crate::base64;

/// Bytes of a signature: `r || s`, 32 bytes each, big-endian (the form
/// `CKM_ECDSA` returns).
pub const SIGNATURE_LEN: usize = 64;

/// Bytes of an uncompressed P-256 point (`0x04 || x || y`).
pub const POINT_LEN: usize = 65;

/// The DER of a P-256 `SubjectPublicKeyInfo` up to its point: SEQUENCE,
/// AlgorithmIdentifier (id-ecPublicKey, prime256v1), BIT STRING header.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

/// Why bytes or text are not a checkpoint public key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// The text is not a PEM `PUBLIC KEY` holding a P-256
    /// `SubjectPublicKeyInfo`.
    #[error(
        "not a P-256 PUBLIC KEY PEM: {0} (export the key with strongbox-broker checkpoint public-key)"
    )]
    Pem(&'static str),
    /// The bytes are not an uncompressed point (65 bytes starting 04).
    #[error(
        "a checkpoint public key is an uncompressed P-256 point ({POINT_LEN} bytes starting \
         04), not {0} bytes"
    )]
    PointLength(usize),
    /// The point is not on the curve: no signature could ever verify.
    #[error("the checkpoint public key is not a point on P-256")]
    OffCurve,
}

/// The public half of the checkpoint key. Public: printing it is fine.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CheckpointPublicKey([u8; POINT_LEN]);

impl fmt::Debug for CheckpointPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointPublicKey({})", self.key_id())
    }
}

impl CheckpointPublicKey {
    /// The key from its uncompressed point.
    ///
    /// # Errors
    ///
    /// [`PublicKeyError::PointLength`] or [`PublicKeyError::OffCurve`] when
    /// the bytes are not an uncompressed P-256 point on the curve.
    pub fn from_point(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        let point: [u8; POINT_LEN] = bytes
            .try_into()
            .ok()
            .filter(|p: &[u8; POINT_LEN]| p.first() == Some(&0x04))
            .ok_or(PublicKeyError::PointLength(bytes.len()))?;
        // ring checks that the point is on the curve only when it
        // verifies; a key that could never verify anything is refused here,
        // where the operator can still be told.
        if !p256_point_is_valid(&point) {
            return Err(PublicKeyError::OffCurve);
        }
        Ok(Self(point))
    }

    /// The point a PKCS#11 `CKA_EC_POINT` holds: a DER OCTET STRING around
    /// the point (as PKCS#11 specifies), or the bare point (as some tokens
    /// return it).
    ///
    /// # Errors
    ///
    /// As [`from_point`](Self::from_point).
    pub fn from_ec_point_attribute(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        match bytes {
            [0x04, 0x41, point @ ..] if point.len() == POINT_LEN => Self::from_point(point),
            _ => Self::from_point(bytes),
        }
    }

    /// The uncompressed point.
    pub fn point(&self) -> &[u8; POINT_LEN] {
        &self.0
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(SPKI_PREFIX.len() + POINT_LEN);
        der.extend_from_slice(&SPKI_PREFIX);
        der.extend_from_slice(&self.0);
        der
    }

    /// The PEM `PUBLIC KEY`, in lines of 64 characters.
    pub fn to_pem(&self) -> String {
        let b64 = base64::encode(&self.to_spki_der());
        let mut pem = format!("{PEM_BEGIN}\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        pem
    }

    /// Reads a PEM `PUBLIC KEY` made by [`to_pem`](Self::to_pem) (or by any
    /// tool, for a P-256 key).
    ///
    /// # Errors
    ///
    /// [`PublicKeyError`] for anything but one P-256 public key.
    pub fn from_pem(text: &str) -> Result<Self, PublicKeyError> {
        let body = text
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|t| t.strip_suffix(PEM_END))
            .ok_or(PublicKeyError::Pem("no BEGIN/END PUBLIC KEY lines"))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::decode(&b64).ok_or(PublicKeyError::Pem("the body is not base64"))?;
        let point = der
            .strip_prefix(SPKI_PREFIX.as_slice())
            .ok_or(PublicKeyError::Pem("not an id-ecPublicKey on prime256v1"))?;
        Self::from_point(point)
    }

    /// 16 hex digits naming the key, as a checkpoint's `key_id` does: the
    /// first 8 bytes of SHA-256 of its DER `SubjectPublicKeyInfo`.
    pub fn key_id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.to_spki_der());
        hex::encode(digest.as_ref().get(..8).unwrap_or_default())
    }

    /// True when `signature` (`r || s`) is this key's ECDSA P-256 SHA-256
    /// signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.0.as_slice())
            .verify(message, signature)
            .is_ok()
    }
}

/// True when `point` is on P-256. ring has no direct check; its ECDH
/// validates the peer's point before agreeing, so one throw-away agreement
/// answers the question.
fn p256_point_is_valid(point: &[u8; POINT_LEN]) -> bool {
    let peer =
        ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, point.as_slice());
    let rng = ring::rand::SystemRandom::new();
    ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
        .ok()
        .and_then(|mine| ring::agreement::agree_ephemeral(mine, &peer, |_| ()).ok())
        .is_some()
}

#[cfg(test)]
mod tests;
