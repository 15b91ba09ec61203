//! The checkpoint signing key: an ECDSA P-256 key pair held by the key
//! provider, with which the broker signs checkpoints of its state (so a
//! data directory rolled back to an older copy can be told from the real
//! one, by anyone holding the public key).
//!
//! - `pkcs11`: the pair is generated inside the token (`CKM_EC_KEY_PAIR_GEN`
//!   on P-256); the private key is sensitive and never extractable, and
//!   signs with `CKM_ECDSA` over a SHA-256 digest computed here.
//! - `file`: the private key is a PKCS#8 file (mode 0600) next to the
//!   key-encryption keys, for development.
//!
//! Why ECDSA P-256 and not Ed25519: every PKCS#11 token signs with
//! `CKM_ECDSA` (PKCS#11 2.x), while `CKM_EDDSA` arrived with PKCS#11 3.0 and
//! is missing from many HSMs in service. SoftHSM2 2.6 has both.
//!
//! A signature is the fixed-size `r || s` (32 bytes each, big-endian), the
//! form `CKM_ECDSA` returns; the public key is exported as a PEM
//! `SubjectPublicKeyInfo`, which any tool reads.

use std::fmt;

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

use super::KeyError;

/// The label of the checkpoint key pair in the provider.
pub const CHECKPOINT_KEY_LABEL: &str = "strongbox/checkpoint/v1";

/// Bytes of a signature: `r || s`.
pub const SIGNATURE_LEN: usize = 64;

/// Bytes of an uncompressed P-256 point (`0x04 || x || y`).
pub const POINT_LEN: usize = 65;

/// The DER of a P-256 `SubjectPublicKeyInfo` up to its point: SEQUENCE,
/// AlgorithmIdentifier (id-ecPublicKey, prime256v1), BIT STRING header.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The DER of the named curve prime256v1 (`CKA_EC_PARAMS`).
pub const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

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
    /// [`KeyError::Config`] when the bytes are not an uncompressed P-256
    /// point on the curve.
    pub fn from_point(bytes: &[u8]) -> Result<Self, KeyError> {
        let point: [u8; POINT_LEN] = bytes
            .try_into()
            .ok()
            .filter(|p: &[u8; POINT_LEN]| p.first() == Some(&0x04))
            .ok_or_else(|| {
                KeyError::Config(format!(
                    "a checkpoint public key is an uncompressed P-256 point ({POINT_LEN} bytes \
                     starting 04), not {} bytes",
                    bytes.len()
                ))
            })?;
        // ring checks that the point is on the curve only when it
        // verifies; a key that could never verify anything is refused here,
        // where the operator can still be told.
        if !p256_point_is_valid(&point) {
            return Err(KeyError::Config(
                "the checkpoint public key is not a point on P-256".into(),
            ));
        }
        Ok(Self(point))
    }

    /// The point a `CKA_EC_POINT` holds: DER OCTET STRING around the
    /// point (as PKCS#11 specifies), or the bare point (as some tokens
    /// return it).
    ///
    /// # Errors
    ///
    /// As [`from_point`](Self::from_point).
    pub fn from_ec_point_attribute(bytes: &[u8]) -> Result<Self, KeyError> {
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

    /// The PEM `PUBLIC KEY` (what `openssl pkey -pubin` reads).
    pub fn to_pem(&self) -> String {
        let b64 = base64(&self.to_spki_der());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Reads a PEM `PUBLIC KEY` made by [`to_pem`](Self::to_pem) (or by any
    /// tool, for a P-256 key).
    ///
    /// # Errors
    ///
    /// [`KeyError::Config`] for anything but one P-256 public key.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let bad = |why: &str| KeyError::Config(format!("not a P-256 PUBLIC KEY PEM: {why}"));
        let body = text
            .trim()
            .strip_prefix("-----BEGIN PUBLIC KEY-----")
            .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
            .ok_or_else(|| bad("no BEGIN/END PUBLIC KEY lines"))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = unbase64(&b64).ok_or_else(|| bad("the body is not base64"))?;
        let point = der
            .strip_prefix(SPKI_PREFIX.as_slice())
            .ok_or_else(|| bad("not an id-ecPublicKey on prime256v1"))?;
        Self::from_point(point)
    }

    /// 16 hex digits naming the key: the first 8 bytes of SHA-256 of its
    /// DER `SubjectPublicKeyInfo`.
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

/// SHA-256 of `message`: what `CKM_ECDSA` signs.
pub(crate) fn digest(message: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, message).as_ref());
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                out.push(char::from(B64.get(idx).copied().unwrap_or(b'A')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0usize;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'=' if i >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return None,
                _ => u32::try_from(B64.iter().position(|&x| x == c)?).ok()?,
            };
            n = (n << 6) | v;
        }
        let three = n.to_be_bytes();
        out.extend_from_slice(three.get(1..4 - pad)?);
    }
    Some(out)
}

/// Errors of a signing call, for the providers.
pub(crate) fn cannot_sign(kind: &str) -> KeyError {
    KeyError::Config(format!(
        "the {kind} key provider cannot hold a checkpoint signing key"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generates");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("parses")
    }

    #[test]
    fn pem_round_trips_and_signatures_verify() {
        let signer = pair();
        let key = CheckpointPublicKey::from_point(signer.public_key().as_ref()).expect("point");
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(CheckpointPublicKey::from_pem(&pem).expect("parses"), key);
        let rng = SystemRandom::new();
        let sig = signer.sign(&rng, b"checkpoint").expect("signs");
        assert_eq!(sig.as_ref().len(), SIGNATURE_LEN);
        assert!(key.verifies(b"checkpoint", sig.as_ref()));
        assert!(!key.verifies(b"checkpoinT", sig.as_ref()));
        let other = CheckpointPublicKey::from_point(pair().public_key().as_ref()).expect("point");
        assert!(!other.verifies(b"checkpoint", sig.as_ref()));
        assert_ne!(key.key_id(), other.key_id());
        assert_eq!(key.key_id().len(), 16);
    }

    #[test]
    fn ec_point_attributes_in_both_forms() {
        let pair = pair();
        let point = pair.public_key().as_ref().to_vec();
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&point);
        let a = CheckpointPublicKey::from_ec_point_attribute(&der).expect("DER");
        let b = CheckpointPublicKey::from_ec_point_attribute(&point).expect("bare");
        assert_eq!(a, b);
    }

    #[test]
    fn points_off_the_curve_and_junk_are_refused() {
        let mut off = [0u8; POINT_LEN];
        off[0] = 4;
        off[1] = 1;
        assert!(CheckpointPublicKey::from_point(&off).is_err());
        assert!(CheckpointPublicKey::from_point(&[4; 64]).is_err());
        assert!(CheckpointPublicKey::from_pem("hello").is_err());
        assert!(
            CheckpointPublicKey::from_pem(
                "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----"
            )
            .is_err()
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (plain, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain), enc);
            assert_eq!(unbase64(enc).as_deref(), Some(plain));
        }
        assert_eq!(unbase64("Zm9=v"), None);
        assert_eq!(unbase64("Zm9"), None);
    }
}
