//! A key provider that keeps KEKs in files, for development and for people
//! without an HSM.
//!
//! Each KEK version is one file of exactly 32 random bytes in a directory:
//! `<dir>/<label>.kek`, the label percent-encoded so that every label maps to
//! one file name and back. Files are created `0600` in a `0700` directory,
//! and a key file that the group or others may read is refused. Data keys
//! are wrapped with AES-256 key wrap with padding (RFC 5649).
//!
//! The checkpoint signing key ([`super::signing`]) is an ECDSA P-256 key
//! pair in `<dir>/strongbox%2Fcheckpoint%2Fv1.p8` (PKCS#8, `0600`), created
//! the same way.
//!
//! The KEK sits on the same machine as the data it protects, so this
//! provider protects against nothing that can read the disk: it says so in
//! the log when it starts.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_kw::KwpAes256;
use aes_kw::cipher::KeyInit;
use zeroize::{Zeroize, Zeroizing};

use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use super::signing::{CHECKPOINT_KEY_LABEL, CheckpointPublicKey, SIGNATURE_LEN};
use super::{DEK_LEN, Dek, KekId, KeyError, KeyProvider, ProviderInfo};

/// Bytes in a KEK file (AES-256).
pub const KEK_LEN: usize = 32;

/// Bytes in a wrapped DEK: RFC 5649 adds one 64-bit block to the 32-byte key.
pub const WRAPPED_DEK_LEN: usize = DEK_LEN + 8;

/// File name suffix of KEK files.
const KEK_SUFFIX: &str = ".kek";

/// File name suffix of the checkpoint key file (PKCS#8).
const SIGNING_SUFFIX: &str = ".p8";

/// Largest checkpoint key file read (a P-256 PKCS#8 document is 138 bytes).
const MAX_SIGNING_FILE: u64 = 1024;

/// KEKs in `0600` files in one directory. Development only.
pub struct FileKeyProvider {
    dir: PathBuf,
}

impl std::fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyProvider")
            .field("dir", &self.dir)
            .finish()
    }
}

impl FileKeyProvider {
    /// Opens (creating it `0700` when missing) the key directory `dir`.
    ///
    /// Logs a warning: keys in files on the data disk are for development.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] when the directory cannot be created or read;
    /// [`KeyError::Config`] when it is not a directory, or the group or others
    /// may write to it (they could replace a key).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let dir = dir.into();
        if !dir.exists() {
            // Durably: a key directory whose name a power cut takes away
            // takes every key, and so every segment, with it.
            crate::io::durable::create_private_dir_all(&crate::io::FileIo, &dir)
                .map_err(|e| io_err(&e.path.clone(), e.into()))?;
        }
        let meta = fs::metadata(&dir).map_err(|e| io_err(&dir, e))?;
        if !meta.is_dir() {
            return Err(KeyError::Config(format!(
                "key directory {} is not a directory",
                dir.display()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(KeyError::Config(format!(
                "key directory {} is writable by group or others (mode {:o}): run chmod 700 on it",
                dir.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        tracing::warn!(
            dir = %dir.display(),
            "file key provider in use: key-encryption keys are plain files on the same \
             machine as the data they protect. This is for development only; use the \
             pkcs11 provider with an HSM in production"
        );
        Ok(Self { dir })
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the KEK `id`.
    pub fn key_path(&self, id: &KekId) -> PathBuf {
        self.dir.join(file_name(&id.label()))
    }

    /// Reads and checks a KEK file.
    fn load(&self, id: &KekId) -> Result<Zeroizing<[u8; KEK_LEN]>, KeyError> {
        let path = self.key_path(id);
        let bytes = self
            .read_private(&path, MAX_SIGNING_FILE)?
            .ok_or_else(|| self.absent(id))?;
        if bytes.len() != KEK_LEN {
            return Err(KeyError::Config(format!(
                "key file {} has {} bytes, expected {KEK_LEN}: it is truncated or not a key file",
                path.display(),
                bytes.len()
            )));
        }
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        key.copy_from_slice(&bytes);
        Ok(key)
    }

    /// Reads a private key file of at most `max` bytes after checking that
    /// it is a regular file only its owner may read; `None` when it does
    /// not exist.
    fn read_private(&self, path: &Path, max: u64) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        let link = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
        };
        if !link.file_type().is_file() {
            return Err(KeyError::Config(format!(
                "key file {} is not a regular file",
                path.display()
            )));
        }
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let meta = file.metadata().map_err(|e| io_err(path, e))?;
        // The file we opened must be the one we checked (no swap in between).
        if meta.ino() != link.ino() || meta.dev() != link.dev() {
            return Err(KeyError::Config(format!(
                "key file {} changed while it was opened",
                path.display()
            )));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Config(format!(
                "key file {} is accessible by group or others (mode {:o}): refusing to use it; \
                 run chmod 600 on it",
                path.display(),
                mode & 0o777
            )));
        }
        if meta.len() > max {
            return Err(KeyError::Config(format!(
                "key file {} has {} bytes, more than a key file holds ({max})",
                path.display(),
                meta.len()
            )));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(usize::try_from(max).unwrap_or(0)));
        file.read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
        Ok(Some(bytes))
    }

    /// Writes `bytes` to `path` (mode 0600) unless it exists: a durable
    /// temporary file, then a hard link to the name, which fails when the
    /// name exists and never leaves a short file under it. Returns false
    /// when `path` existed.
    fn create_private(&self, path: &Path, bytes: &[u8]) -> Result<bool, KeyError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(path, e)),
        }
        self.sync_dir()?;
        Ok(true)
    }

    /// The checkpoint key file.
    pub fn checkpoint_key_path(&self) -> PathBuf {
        let mut name = file_name(CHECKPOINT_KEY_LABEL);
        name.truncate(name.len().saturating_sub(KEK_SUFFIX.len()));
        name.push_str(SIGNING_SUFFIX);
        self.dir.join(name)
    }

    /// The checkpoint key pair, when its file exists.
    fn checkpoint_pair(&self) -> Result<Option<EcdsaKeyPair>, KeyError> {
        let path = self.checkpoint_key_path();
        let Some(pkcs8) = self.read_private(&path, MAX_SIGNING_FILE)? else {
            return Ok(None);
        };
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map(Some)
        .map_err(|_| {
            KeyError::Config(format!(
                "{} is not an ECDSA P-256 PKCS#8 key (restore it from backup, or move it away \
                 to have a new checkpoint key made: checkpoints signed by the old one then no \
                 longer verify with the new public key)",
                path.display()
            ))
        })
    }

    /// The error for a key file that is not there: [`KeyError::KekNotFound`]
    /// only when the directory itself is (a missing or unmounted directory
    /// must not pass for destroyed keys).
    fn absent(&self, id: &KekId) -> KeyError {
        if self.dir.is_dir() {
            KeyError::KekNotFound(id.label())
        } else {
            KeyError::Unavailable(format!(
                "key directory {} is missing (unmounted?)",
                self.dir.display()
            ))
        }
    }

    fn cipher(&self, id: &KekId) -> Result<KwpAes256, KeyError> {
        let key = self.load(id)?;
        KwpAes256::new_from_slice(key.as_ref())
            .map_err(|_| KeyError::Config(format!("key {} has the wrong length", id.label())))
    }

    /// Makes the names created and removed in the key directory durable.
    fn sync_dir(&self) -> Result<(), KeyError> {
        crate::io::durable::sync_dir(&crate::io::FileIo, &self.dir)
            .map_err(|e| io_err(&self.dir, e.into()))
    }
}

impl KeyProvider for FileKeyProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            kind: "file",
            location: self.dir.display().to_string(),
        }
    }

    fn generate_kek(&self, id: &KekId) -> Result<(), KeyError> {
        use ring::rand::SecureRandom;

        let path = self.key_path(id);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(KeyError::KekExists(id.label()));
        }
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        ring::rand::SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| KeyError::Random)?;
        if self.create_private(&path, key.as_ref())? {
            Ok(())
        } else {
            Err(KeyError::KekExists(id.label()))
        }
    }

    fn has_kek(&self, id: &KekId) -> Result<bool, KeyError> {
        match fs::symlink_metadata(self.key_path(id)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.absent(id) {
                KeyError::KekNotFound(_) => Ok(false),
                other => Err(other),
            },
            Err(e) => Err(io_err(&self.key_path(id), e)),
        }
    }

    fn wrap(&self, id: &KekId, dek: &Dek) -> Result<Vec<u8>, KeyError> {
        let kw = self.cipher(id)?;
        let mut out = vec![0u8; WRAPPED_DEK_LEN];
        let len = kw
            .wrap_key(dek.expose(), &mut out)
            .map_err(|e| KeyError::Config(format!("key wrap failed: {e}")))?
            .len();
        out.truncate(len);
        Ok(out)
    }

    fn unwrap(&self, id: &KekId, wrapped: &[u8]) -> Result<Dek, KeyError> {
        let kw = self.cipher(id)?;
        let rejected = || KeyError::UnwrapRejected { kek: id.label() };
        if wrapped.len() != WRAPPED_DEK_LEN {
            return Err(rejected());
        }
        let mut buf = Zeroizing::new([0u8; WRAPPED_DEK_LEN]);
        let plain = kw
            .unwrap_key(wrapped, buf.as_mut())
            .map_err(|_| rejected())?;
        let mut bytes: [u8; DEK_LEN] = plain.try_into().map_err(|_| rejected())?;
        let dek = Dek::from_bytes(bytes);
        bytes.zeroize();
        Ok(dek)
    }

    fn destroy_kek(&self, id: &KekId) -> Result<(), KeyError> {
        let path = self.key_path(id);
        let mut file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.absent(id));
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        // Overwrite in place and make the overwrite durable before unlinking,
        // so the old bytes are not simply left in a freed block. (On
        // copy-on-write or journalled-data file systems and SSDs this is best
        // effort; that is one reason this provider is for development.)
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        let zeros = vec![
            0u8;
            usize::try_from(len.min(4096))
                .unwrap_or(KEK_LEN)
                .max(KEK_LEN)
        ];
        file.write_all(&zeros)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err(&path, e))?;
        drop(file);
        fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        self.sync_dir()
    }

    fn checkpoint_key(&self, create: bool) -> Result<Option<CheckpointPublicKey>, KeyError> {
        if let Some(pair) = self.checkpoint_pair()? {
            return Ok(Some(CheckpointPublicKey::from_point(
                pair.public_key().as_ref(),
            )?));
        }
        if !create {
            return Ok(None);
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Random)?;
        // Another process may have made it meanwhile: either way, the file
        // now holds the key to use.
        self.create_private(&self.checkpoint_key_path(), pkcs8.as_ref())?;
        let pair = self
            .checkpoint_pair()?
            .ok_or_else(|| KeyError::KekNotFound(CHECKPOINT_KEY_LABEL.into()))?;
        Ok(Some(CheckpointPublicKey::from_point(
            pair.public_key().as_ref(),
        )?))
    }

    fn sign_checkpoint(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], KeyError> {
        let pair = self
            .checkpoint_pair()?
            .ok_or_else(|| KeyError::KekNotFound(CHECKPOINT_KEY_LABEL.into()))?;
        let sig = pair
            .sign(&ring::rand::SystemRandom::new(), message)
            .map_err(|_| KeyError::Random)?;
        sig.as_ref().try_into().map_err(|_| {
            KeyError::Config("ECDSA P-256 returned a signature of another size".into())
        })
    }
}

/// Maps a label to a file name: bytes outside `[A-Za-z0-9_-]` become
/// `%XX`, so the mapping is one-to-one and the name never contains `/`.
fn file_name(label: &str) -> String {
    let mut out = String::with_capacity(label.len() + KEK_SUFFIX.len() + 8);
    for b in label.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(KEK_SUFFIX);
    out
}

fn io_err(path: &Path, source: std::io::Error) -> KeyError {
    // Keys that cannot be reached are not keys that are gone, nor an
    // internal error: the provider is unavailable until someone fixes the
    // directory's owner or mode (or remounts it).
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        return KeyError::Unavailable(format!(
            "file key provider: {} is not accessible ({source}); check the owner and mode of \
             the key directory",
            path.display()
        ));
    }
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_is_unavailable_not_io() {
        let p = Path::new("/keys/strongbox%2Fkek%2Fbroker%2Fv1.kek");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        match io_err(p, denied) {
            KeyError::Unavailable(m) => assert!(m.contains("file key provider"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let other = std::io::Error::from(std::io::ErrorKind::InvalidData);
        assert!(matches!(io_err(p, other), KeyError::Io { .. }));
    }

    #[test]
    fn file_names_are_escaped_and_distinct() {
        assert_eq!(
            file_name("strongbox/kek/broker/v1"),
            "strongbox%2Fkek%2Fbroker%2Fv1.kek"
        );
        assert_ne!(file_name("a/b"), file_name("a%2Fb"));
        assert!(!file_name("../../etc/passwd").contains('/'));
    }
}
