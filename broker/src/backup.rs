//! `strongbox-broker backup`: a consistent copy of a running broker's data
//! directory, without stopping it.
//!
//! The broker cooperates: it listens on a Unix socket in its data directory
//! (`control.sock`, reachable only by the broker's own user), and on a
//! backup request it freezes every partition for an instant, opens a
//! metadata snapshot, hard-links each partition's files into
//! `backup-staging/` and lets the partitions go ([`snapshot`]). The command
//! then copies the staged files at its own pace into the backup directory
//! ([`cli`]), writes `backup.json` ([`manifest`]) last, and tells the
//! broker, which removes the staging directory.
//!
//! What a backup holds: the metadata store (topics, ACLs, group offsets,
//! producer state, key registry, audit head) and every partition's
//! segments, still encrypted, with their key envelopes (data keys wrapped
//! under key-encryption keys that never leave the key provider). It holds
//! no key material: restoring needs the same key provider, and destroying a
//! KEK version also shreds the backups sealed under it.
//!
//! The socket protocol ([`control`]) is one JSON object per line.

pub mod cli;
pub mod control;
pub mod manifest;
pub mod snapshot;

use std::path::{Path, PathBuf};

use strongbox_storage::log::LogError;
use strongbox_storage::meta::MetaError;

/// The control socket's file name in the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// The staging directory's name in the data directory.
pub const STAGING_DIR: &str = "backup-staging";

/// The control socket of the broker whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_SOCKET)
}

/// Where the broker stages backups.
pub fn staging_root(data_dir: &Path) -> PathBuf {
    data_dir.join(STAGING_DIR)
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A partition could not be pinned.
    #[error("{0}")]
    Log(#[from] LogError),
    /// The metadata snapshot failed.
    #[error("metadata snapshot: {0}")]
    Meta(#[from] MetaError),
    /// No broker answers on the data directory's control socket.
    #[error(
        "no broker is running on {data_dir} (nothing answers on {}: {reason}); a stopped \
         broker's data directory can be copied as it is (docs/OPERATIONS.md, \"Backup and restore\")",
        socket.display()
    )]
    NoBroker {
        /// The data directory.
        data_dir: PathBuf,
        /// Its control socket.
        socket: PathBuf,
        /// Why connecting failed.
        reason: String,
    },
    /// The broker refused or failed the request; its reason.
    #[error("the broker refused the backup: {0}")]
    Refused(String),
    /// The exchange with the broker broke off or made no sense.
    #[error("control socket: {0}")]
    Protocol(String),
    /// The backup directory cannot be used.
    #[error("{0}")]
    Target(String),
}

impl BackupError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
