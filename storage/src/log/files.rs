//! Small file-system steps with the durability rules the log relies on,
//! all through the log's [`StorageIo`].

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::io::durable::{self, StepError};
use crate::io::{IoFile, OpenMode, StorageIo};

use super::error::LogError;

/// Wraps an I/O error with what was being done and to which file.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

/// A failed step of [`durable`] as the log's error.
pub(crate) fn step_err(e: StepError) -> LogError {
    LogError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    }
}

/// Opens `path` in `mode`; `op` names the step in the error.
pub(crate) fn open(
    io: &dyn StorageIo,
    path: &Path,
    mode: OpenMode,
    op: &'static str,
) -> Result<Arc<dyn IoFile>, LogError> {
    io.open(path, mode).map_err(io_err(op, path))
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(io: &dyn StorageIo, dir: &Path) -> Result<(), LogError> {
    io.sync_dir(dir).map_err(io_err("syncing directory", dir))
}

/// Writes `bytes` to `dir/name` atomically: `name.tmp`, fsync, rename,
/// fsync of the directory ([`durable::write_atomic`]). A failure leaves
/// the old file (if any) in place.
pub(crate) fn write_atomic(
    io: &dyn StorageIo,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), LogError> {
    durable::write_atomic(io, dir, name, bytes).map_err(step_err)
}

/// Removes `path`; a file that is already gone is not an error.
pub(crate) fn remove_if_exists(io: &dyn StorageIo, path: &Path) -> Result<bool, LogError> {
    match io.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Reads exactly `buf.len()` bytes at `pos`.
pub(crate) fn read_exact_at(
    file: &dyn IoFile,
    buf: &mut [u8],
    pos: u64,
    path: &Path,
) -> Result<(), LogError> {
    file.read_exact_at(buf, pos)
        .map_err(io_err("reading", path))
}

/// Writes all of `buf` at `pos`.
pub(crate) fn write_all_at(
    file: &dyn IoFile,
    buf: &[u8],
    pos: u64,
    path: &Path,
) -> Result<(), LogError> {
    file.write_all_at(buf, pos).map_err(io_err("writing", path))
}

/// The length of an open file.
pub(crate) fn file_len(file: &dyn IoFile, path: &Path) -> Result<u64, LogError> {
    file.len().map_err(io_err("reading the size of", path))
}

/// The names of the files in `dir` that are UTF-8 (the log owns no other).
pub(crate) fn list(io: &dyn StorageIo, dir: &Path) -> Result<Vec<String>, LogError> {
    Ok(io
        .list_dir(dir)
        .map_err(io_err("listing", dir))?
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .collect())
}
