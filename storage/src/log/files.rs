//! Small file-system steps with the durability rules the log relies on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::LogError;

/// Wraps an I/O error with what was being done and to which file.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Writes `bytes` to `dir/name` atomically: `name.tmp`, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    file.write_all(bytes).map_err(io_err("writing", &tmp))?;
    file.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &dst).map_err(io_err("renaming into place", &dst))?;
    sync_dir(dir)
}

/// Removes `path`; a file that is already gone is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, LogError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Reads exactly `buf.len()` bytes at `pos`.
pub(crate) fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    pos: u64,
    path: &Path,
) -> Result<(), LogError> {
    file.read_exact_at(buf, pos)
        .map_err(io_err("reading", path))
}

/// Writes all of `buf` at `pos`.
pub(crate) fn write_all_at(file: &File, buf: &[u8], pos: u64, path: &Path) -> Result<(), LogError> {
    file.write_all_at(buf, pos).map_err(io_err("writing", path))
}

/// The length of an open file.
pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64, LogError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(io_err("reading the size of", path))
}
