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
//! form `CKM_ECDSA` returns. The public half, its PEM form and the
//! verification of checkpoints belong to the `strongbox-checkpoint` crate;
//! only what needs the private key is here.

pub use strongbox_checkpoint::{CheckpointPublicKey, POINT_LEN, PublicKeyError, SIGNATURE_LEN};

use super::KeyError;

/// The label of the checkpoint key pair in the provider.
pub const CHECKPOINT_KEY_LABEL: &str = "strongbox/checkpoint/v1";

/// The DER of the named curve prime256v1 (`CKA_EC_PARAMS`).
pub const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A public key the provider holds or made that is not a P-256 point is
/// a provider fault the operator has to look at.
impl From<PublicKeyError> for KeyError {
    fn from(e: PublicKeyError) -> Self {
        KeyError::Config(e.to_string())
    }
}

/// SHA-256 of `message`: what `CKM_ECDSA` signs.
pub(crate) fn digest(message: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, message).as_ref());
    out
}

/// Errors of a signing call, for the providers.
pub(crate) fn cannot_sign(kind: &str) -> KeyError {
    KeyError::Config(format!(
        "the {kind} key provider cannot hold a checkpoint signing key"
    ))
}
