//! The key hierarchy: key-encryption keys (KEKs) held by a [`KeyProvider`],
//! and per-segment data keys ([`Dek`]) wrapped under them.
//!
//! ```text
//! KeyProvider (PKCS#11 HSM, or a file for development)
//!   └─ KEK "strongbox/kek/<scope>/v<N>"   AES-256, never leaves the provider
//!        └─ DEK per segment               wrapped with AES key wrap with padding
//!                                         (RFC 5649); plaintext only in memory
//! ```
//!
//! - [`file::FileKeyProvider`] and [`pkcs11::Pkcs11KeyProvider`] implement
//!   [`KeyProvider`];
//! - [`registry`] holds the rules of the KEK versions' states, recorded in
//!   the metadata store ([`crate::meta`]);
//! - [`KeyManager`] joins a provider, the registry and a [`DekCache`], and is
//!   the partition log's [`SegmentKeys`].
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use strongbox_storage::keys::{
//!     FileKeyProvider, KekScope, KeyManager, SegmentKeyContext, SegmentKeys,
//! };
//! use strongbox_storage::meta::MetaStore;
//!
//! let dir = tempfile::tempdir()?;
//! let provider = Arc::new(FileKeyProvider::open(dir.path().join("keys"))?);
//! let keys = KeyManager::new(provider, MetaStore::open(dir.path().join("meta.redb"))?, 1024);
//! let ctx = SegmentKeyContext {
//!     topic_id: [1; 16],
//!     partition: 0,
//!     segment_id: [2; 16],
//!     scope: KekScope::Broker,
//! };
//! let (dek, envelope) = keys.create(&ctx)?; // v1 is created on first use
//! keys.rotate(&KekScope::Broker)?; // v2 wraps new segments from now on
//! assert_eq!(keys.open(&ctx, &envelope)?.expose(), dek.expose());
//! # Ok(()) }
//! ```

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

pub mod cache;
pub mod file;
mod manager;
pub mod pkcs11;
pub mod registry;
pub mod signing;

pub use cache::{CacheStats, DekCache};
pub use file::FileKeyProvider;
pub use manager::{DestroyOutcome, KeyManager, KeyManagerStats, UnwrapObserver};
pub use pkcs11::{PinSource, Pkcs11Config, Pkcs11KeyProvider};
pub use registry::{KekVersion, SegmentRef};
pub use signing::{CHECKPOINT_KEY_LABEL, CheckpointPublicKey};

/// Bytes in a data encryption key (AES-256).
pub const DEK_LEN: usize = 32;

/// A data encryption key: 256 bits that seal the batches of one segment.
///
/// Zeroized on drop. Deliberately not `Debug`, `Display`, `Clone` or
/// `Serialize`: the bytes can only be reached through [`Dek::expose`].
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Dek([u8; DEK_LEN]);

impl Dek {
    /// Wraps raw key bytes. The caller's copy should be zeroized.
    pub fn from_bytes(bytes: [u8; DEK_LEN]) -> Self {
        Self(bytes)
    }

    /// Draws a fresh key from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`KeyError::Random`] when the CSPRNG fails.
    pub fn generate() -> Result<Self, KeyError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; DEK_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        let dek = Self(bytes);
        bytes.zeroize();
        Ok(dek)
    }

    /// The key bytes, for the AEAD and for wrapping only.
    pub fn expose(&self) -> &[u8; DEK_LEN] {
        &self.0
    }

    /// A second handle to the same key (for the cache); both zeroize.
    pub fn duplicate(&self) -> Self {
        Self(self.0)
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// What a KEK protects: the whole broker, or one topic with a dedicated key
/// (destroyed with the topic).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KekScope {
    /// The broker-wide key.
    Broker,
    /// A topic's dedicated key, by topic id (hex) so that a recreated topic
    /// of the same name never shares it.
    Topic(String),
}

impl KekScope {
    /// The scope as written in key labels and the registry: `broker` or
    /// `topic-<id>`.
    pub fn label(&self) -> String {
        match self {
            Self::Broker => "broker".to_owned(),
            Self::Topic(id) => format!("topic-{id}"),
        }
    }
}

impl KekScope {
    /// Parses a label made by [`KekScope::label`].
    pub fn parse(label: &str) -> Option<Self> {
        if label == "broker" {
            return Some(Self::Broker);
        }
        let id = label.strip_prefix("topic-")?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(Self::Topic(id.to_owned()))
    }

    /// The scope of a topic's dedicated key.
    pub fn topic(topic_id: &[u8; 16]) -> Self {
        Self::Topic(hex::encode(topic_id))
    }
}

impl fmt::Display for KekScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// One version of a KEK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId {
    /// Its scope.
    pub scope: KekScope,
    /// Its version, from 1.
    pub version: u32,
}

impl KekId {
    /// The label the provider stores it under:
    /// `strongbox/kek/<scope>/v<version>`.
    pub fn label(&self) -> String {
        format!("strongbox/kek/{}/v{}", self.scope.label(), self.version)
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Describes a provider for status output. Contains no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// `file` or `pkcs11`.
    pub kind: &'static str,
    /// Where the keys live (a directory, or module and token label).
    pub location: String,
}

/// Errors of key providers and the key registry.
///
/// Messages never contain key bytes or PINs.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The provider has no KEK with that label.
    #[error("key {0} not found in the key provider")]
    KekNotFound(String),
    /// A KEK with that label already exists.
    #[error("key {0} already exists in the key provider")]
    KekExists(String),
    /// The wrapped key failed its integrity check, or was wrapped under
    /// another KEK.
    #[error("wrapped data key rejected by {kek}: it is corrupt or was wrapped under another key")]
    UnwrapRejected {
        /// The KEK that was tried.
        kek: String,
    },
    /// The provider could not be reached or failed (HSM down, token
    /// removed, session lost).
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// Login to the token failed.
    #[error("key provider login failed: {0}")]
    Login(String),
    /// The provider is configured wrongly (unknown token label, bad module
    /// path, unreadable key file).
    #[error("key provider configuration: {0}")]
    Config(String),
    /// The KEK version is destroyed; data under it cannot be read.
    #[error("key {0} has been destroyed")]
    Destroyed(String),
    /// The registry refused a state change.
    #[error("{0}")]
    InvalidTransition(String),
    /// The KEK version still wraps data keys; destroying it would make
    /// those segments unreadable.
    #[error(
        "key {kek} still wraps {segments} segment key(s): rewrap them first, or force the \
         destruction to make them unreadable"
    )]
    InUse {
        /// The KEK version.
        kek: String,
        /// Segments whose data key it wraps.
        segments: u64,
    },
    /// The metadata store holding the key registry failed.
    #[error("key registry: {0}")]
    Registry(#[from] crate::meta::MetaError),
    /// Reading or writing key files failed.
    #[error("key storage I/O on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Holds key-encryption keys and wraps and unwraps data keys with them.
///
/// # To ensure correctness
///
/// - A KEK never leaves the provider in plaintext: `pkcs11` creates it
///   inside the token as sensitive and non-extractable.
/// - `wrap` uses AES key wrap with padding (RFC 5649), whose integrity check
///   makes `unwrap` fail for a tampered blob or the wrong KEK: any failure is
///   reported as [`KeyError::UnwrapRejected`] or [`KeyError::Unavailable`],
///   never as a wrong key.
/// - `destroy_kek` is irreversible; every DEK wrapped only under that KEK
///   becomes unrecoverable (crypto-shredding).
/// - Implementations are `Send + Sync` and serialize access to non-thread-safe
///   handles internally.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Kind and location, for status output.
    fn info(&self) -> ProviderInfo;

    /// Creates the KEK `id` in the provider.
    ///
    /// # Errors
    ///
    /// [`KeyError::KekExists`] when it exists; provider failures.
    fn generate_kek(&self, id: &KekId) -> Result<(), KeyError>;

    /// True when the provider holds the KEK `id`.
    ///
    /// # Errors
    ///
    /// Provider failures.
    fn has_kek(&self, id: &KekId) -> Result<bool, KeyError>;

    /// Wraps `dek` under the KEK `id`.
    ///
    /// # Errors
    ///
    /// [`KeyError::KekNotFound`]; provider failures.
    fn wrap(&self, id: &KekId, dek: &Dek) -> Result<Vec<u8>, KeyError>;

    /// Unwraps a blob made by [`KeyProvider::wrap`] under the KEK `id`.
    ///
    /// # Errors
    ///
    /// [`KeyError::UnwrapRejected`] for a tampered blob or the wrong KEK;
    /// [`KeyError::KekNotFound`]; provider failures.
    fn unwrap(&self, id: &KekId, wrapped: &[u8]) -> Result<Dek, KeyError>;

    /// Destroys the KEK `id` in the provider.
    ///
    /// # Errors
    ///
    /// [`KeyError::KekNotFound`]; provider failures.
    fn destroy_kek(&self, id: &KekId) -> Result<(), KeyError>;

    /// The public key of the checkpoint signing key pair
    /// ([`signing`]), creating the pair first when `create` and it does not
    /// exist; `None` when it does not exist and `create` is false.
    ///
    /// # Errors
    ///
    /// Provider failures; a provider that cannot hold a signing key.
    fn checkpoint_key(&self, create: bool) -> Result<Option<CheckpointPublicKey>, KeyError> {
        let _ = create;
        Err(signing::cannot_sign(self.info().kind))
    }

    /// Signs `message` with the checkpoint key: ECDSA P-256 over its
    /// SHA-256, as `r || s`.
    ///
    /// # Errors
    ///
    /// [`KeyError::KekNotFound`] when the key pair does not exist (see
    /// [`checkpoint_key`](Self::checkpoint_key)); provider failures.
    fn sign_checkpoint(&self, message: &[u8]) -> Result<[u8; signing::SIGNATURE_LEN], KeyError> {
        let _ = message;
        Err(signing::cannot_sign(self.info().kind))
    }
}

/// Where a segment's data key belongs. Bound into the envelope and into the
/// registry so a key cannot be moved to another segment unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentKeyContext {
    /// The topic's 128-bit id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The segment's 128-bit random id.
    pub segment_id: [u8; 16],
    /// The KEK scope that wraps the topic's data keys.
    pub scope: KekScope,
}

/// A data key wrapped under a KEK version, as stored in a key envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDek {
    /// The KEK version that wraps it.
    pub kek: KekId,
    /// The RFC 5649 blob.
    pub wrapped: Vec<u8>,
}

/// What the partition log needs from the key hierarchy.
///
/// # To ensure correctness
///
/// - `create` returns a DEK never returned before (fresh CSPRNG bytes) and
///   its wrapping under the scope's *active* KEK version, and records the
///   segment against that version before returning.
/// - `open` returns exactly the DEK that `create` returned for that
///   envelope, or an error; it may serve it from a bounded, zeroizing cache.
/// - `forget` is called after a segment's envelope is deleted
///   (crypto-shredding); it drops cached copies and the registry entry.
pub trait SegmentKeys: Send + Sync + fmt::Debug {
    /// A fresh DEK for a new segment and its wrapped form.
    ///
    /// # Errors
    ///
    /// Provider failures (the segment cannot be created: fail closed).
    fn create(&self, ctx: &SegmentKeyContext) -> Result<(Dek, WrappedDek), KeyError>;

    /// The DEK of an existing segment.
    ///
    /// # Errors
    ///
    /// [`KeyError::UnwrapRejected`], [`KeyError::Destroyed`], provider
    /// failures.
    fn open(&self, ctx: &SegmentKeyContext, wrapped: &WrappedDek) -> Result<Dek, KeyError>;

    /// The segment is gone; forget its key.
    ///
    /// # Errors
    ///
    /// Registry failures.
    fn forget(&self, ctx: &SegmentKeyContext) -> Result<(), KeyError>;
}
