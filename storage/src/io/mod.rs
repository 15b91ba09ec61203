//! The file-system operations of the storage engine, behind a small trait.
//!
//! Everything the partition log does to its directory goes through a
//! [`StorageIo`]: creating and opening files, positional reads and writes,
//! `set_len`, `fdatasync`/`fsync`, renames, removals, creating and syncing
//! directories, listing them and reading sizes. Production uses
//! [`FileIo`], a thin layer over `std::fs` (one virtual call per operation,
//! no copies); tests put [`FaultyIo`] in its place to make chosen
//! operations fail the way a full or failing disk does (`ENOSPC`, `EIO`,
//! short writes), and [`PowerLossIo`] to cut the power and keep only what
//! was made durable. [`durable`] is the one place that creates, renames
//! and removes the names the engine relies on, each made durable before it
//! returns.
//!
//! # To ensure correctness
//!
//! An implementation must give the POSIX meanings the log relies on:
//!
//! - [`IoFile::sync_data`] returns only once the file's data written so
//!   far (and its size) is durable; [`IoFile::sync_all`] also its metadata.
//! - A new name (create, rename) or a removed one is durable only after
//!   [`StorageIo::sync_dir`] of its parent directory returns.
//! - [`StorageIo::rename`] replaces the target atomically.
//! - After a failed `sync_data` the log never calls `sync_data` on the same
//!   [`IoFile`] again (the kernel may have dropped the dirty pages and
//!   would report success for a retry); it opens the file anew.
//!
//! ```
//! use std::sync::Arc;
//! use strongbox_storage::io::{FileIo, OpenMode, StorageIo};
//!
//! let dir = tempfile::tempdir()?;
//! let io: Arc<dyn StorageIo> = Arc::new(FileIo);
//! let path = dir.path().join("f");
//! let file = io.open(&path, OpenMode::CreateNew)?;
//! file.write_all_at(b"hello", 0)?;
//! file.sync_data()?;
//! io.sync_dir(dir.path())?;
//! let mut buf = [0u8; 5];
//! file.read_exact_at(&mut buf, 0)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod durable;
mod faulty;
mod file;
mod power_loss;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use faulty::{Fault, FaultRule, FaultyIo, IoOp, PathMatch, RuleId};
pub use file::FileIo;
pub use power_loss::PowerLossIo;

/// How [`StorageIo::open`] opens a file. Every mode but `Read` opens it
/// for reading and writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read-only.
    Read,
    /// An existing file, to read and write.
    ReadWrite,
    /// A new file; fails when the name exists.
    CreateNew,
    /// A file emptied first, created when missing.
    Truncate,
}

/// What kind of entry a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else (a link to nowhere, a device, ...).
    Other,
}

/// Size and kind of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// What it is.
    pub kind: EntryKind,
    /// Its length in bytes.
    pub len: u64,
}

/// An open file.
pub trait IoFile: Send + Sync + fmt::Debug {
    /// Reads into `buf` from position `pos`; returns the bytes read (0 at
    /// the end of the file).
    ///
    /// # Errors
    ///
    /// The read failed.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;

    /// Writes `buf` at position `pos`; returns the bytes written, which
    /// may be fewer than asked (a short write).
    ///
    /// # Errors
    ///
    /// The write failed (`ENOSPC` when the disk is full).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize>;

    /// Cuts or extends the file to `len` bytes.
    ///
    /// # Errors
    ///
    /// The change failed.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// `fdatasync`: the data and size written so far are durable.
    ///
    /// # Errors
    ///
    /// The sync failed: what was written since the last successful sync may
    /// be lost, and a later sync of this handle proves nothing.
    fn sync_data(&self) -> io::Result<()>;

    /// `fsync`: data and metadata are durable.
    ///
    /// # Errors
    ///
    /// As [`IoFile::sync_data`].
    fn sync_all(&self) -> io::Result<()>;

    /// The file's length.
    ///
    /// # Errors
    ///
    /// It cannot be read.
    fn len(&self) -> io::Result<u64>;

    /// True when the file holds no bytes.
    ///
    /// # Errors
    ///
    /// As [`IoFile::len`].
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `pos`.
    ///
    /// # Errors
    ///
    /// A read error, or `UnexpectedEof` when the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ends before the bytes asked for",
                    ));
                }
                Ok(n) => {
                    buf = buf.get_mut(n..).unwrap_or_default();
                    pos = pos.saturating_add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `pos`, continuing after short writes.
    ///
    /// # Errors
    ///
    /// The first write that fails, or `WriteZero` when one writes nothing.
    fn write_all_at(&self, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file system accepted no bytes",
                    ));
                }
                Ok(n) => {
                    buf = buf.get(n..).unwrap_or_default();
                    pos = pos.saturating_add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The file system the storage engine works on. See the module docs for
/// the rules an implementation keeps.
pub trait StorageIo: Send + Sync + fmt::Debug {
    /// Opens (or creates) the file at `path`.
    ///
    /// # Errors
    ///
    /// `NotFound` for a missing file in `Read`/`ReadWrite` mode,
    /// `AlreadyExists` for an existing one in `CreateNew` mode, and any
    /// other failure.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>>;

    /// Renames `from` to `to`, replacing `to` atomically.
    ///
    /// # Errors
    ///
    /// The rename failed.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`.
    ///
    /// # Errors
    ///
    /// `NotFound` when it does not exist, or any other failure.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Creates the directory `path`, whose parent must exist. Its name is
    /// durable only once its parent is synced: code that relies on the
    /// directory uses [`durable::create_dir_all`].
    ///
    /// # Errors
    ///
    /// `AlreadyExists`, or any other failure.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// Creates the directory `path`, readable, writable and searchable by
    /// its owner only (mode `0700`); its parent must exist.
    ///
    /// # Errors
    ///
    /// As [`StorageIo::create_dir`].
    fn create_private_dir(&self, path: &Path) -> io::Result<()>;

    /// Removes the empty directory `path`.
    ///
    /// # Errors
    ///
    /// `NotFound`, a directory that is not empty, or any other failure.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;

    /// Makes the entries of directory `path` (names created, renamed or
    /// removed in it) durable.
    ///
    /// # Errors
    ///
    /// The sync failed.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// The names in directory `path`, in no particular order.
    ///
    /// # Errors
    ///
    /// It cannot be listed.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;

    /// The kind and length of `path` (following symbolic links).
    ///
    /// # Errors
    ///
    /// `NotFound`, or any other failure.
    fn metadata(&self, path: &Path) -> io::Result<EntryMeta>;

    /// Reads the whole file at `path`.
    ///
    /// # Errors
    ///
    /// As [`StorageIo::open`] and [`IoFile::read_exact_at`].
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, OpenMode::Read)?;
        let len = usize::try_from(file.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// The I/O backend every log uses unless told otherwise.
pub fn default_io() -> Arc<dyn StorageIo> {
    Arc::new(FileIo)
}

/// True for the errors of a full disk (`ENOSPC`, `EDQUOT`).
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
