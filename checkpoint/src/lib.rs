//! Strongbox's signed checkpoints, shared by the broker (which writes them
//! and checks a data directory against them) and the client (which checks a
//! running broker against them).
//!
//! A checkpoint records, at one moment, the audit trail's head, each
//! partition's end offset and newest seal, and a digest of the key
//! registry, signed with an ECDSA P-256 key that the broker's key provider
//! holds (in the HSM with PKCS#11). Kept outside the data directory, it is
//! the anchor that a data directory restored from an older copy cannot
//! match. This crate is the one owner of:
//!
//! - [`format`]: the line's layout, its types, the key registry digest, and
//!   the writer of the unsigned body and the signed line;
//! - [`verify_line`]: the signature check and the reading of a line;
//! - [`CheckpointPublicKey`]: the public half of the signing key, its PEM
//!   `SubjectPublicKeyInfo` form and its key id;
//! - [`compare`](compare::compare): what an observed state (a data
//!   directory offline, or a broker over the network) says against a
//!   checkpoint.
//!
//! Signing is not here: it happens where the private key lives (the
//! storage crate's key providers).
//!
//! # Why ring
//!
//! Verification uses `ring`: the storage crate's key providers and the
//! client already verified with it, so it adds nothing to the build of
//! either, and its `UnparsedPublicKey` checks a fixed-size `r || s`
//! signature (the form `CKM_ECDSA` returns) directly. Verification runs a
//! few times per command; speed does not matter.
//!
//! ```
//! use strongbox_checkpoint::{CheckpointPublicKey, verify_line};
//!
//! let key = CheckpointPublicKey::from_pem("not a key");
//! assert!(key.is_err());
//! # let _ = verify_line;
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::panic
)]

mod base64;
pub mod compare;
pub mod format;
mod key;
mod verify;

pub use compare::{Finding, Observed, ObservedPartition, ObservedTopic, compare};
pub use format::{
    AuditMark, Checkpoint, FORMAT, PartitionMark, REGISTRY_DIGEST_LABEL, RegistryEntry,
    RegistryMark, SealMark, Unsigned, VERSION, registry_digest, signed_line,
};
pub use key::{CheckpointPublicKey, POINT_LEN, PublicKeyError, SIGNATURE_LEN};
pub use verify::{CheckpointError, verify_line};
