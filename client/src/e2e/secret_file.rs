//! Reading and writing key files: secret ones are created with mode 0600,
//! replaced atomically, and refused when other users can read them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::E2eError;

/// Largest key file read (a keyring of a few thousand versions).
const MAX_FILE: u64 = 4 * 1024 * 1024;

fn file_error(action: &'static str, what: &'static str, path: &Path, e: impl ToString) -> E2eError {
    E2eError::File {
        action,
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn options(mode: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`,
/// then syncs the file.
fn create(path: &Path, what: &'static str, mode: u32, bytes: &[u8]) -> Result<(), E2eError> {
    let mut file = options(mode).create_new(true).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            file_error(
                "write",
                what,
                path,
                "the file already exists (refusing to overwrite a key)",
            )
        } else {
            file_error("write", what, path, e)
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error("write", what, path, e))
}

/// Creates a new secret file (mode 0600).
///
/// # Errors
///
/// [`E2eError::File`] when it exists or cannot be written.
pub(crate) fn create_secret(path: &Path, what: &'static str, bytes: &[u8]) -> Result<(), E2eError> {
    create(path, what, 0o600, bytes)
}

/// Creates a new public file (mode 0644).
///
/// # Errors
///
/// [`E2eError::File`] when it exists or cannot be written.
pub(crate) fn create_public(path: &Path, what: &'static str, bytes: &[u8]) -> Result<(), E2eError> {
    create(path, what, 0o644, bytes)
}

/// Replaces (or creates) a secret file atomically: a temporary file with
/// mode 0600 in the same folder, written and synced, renamed over `path`,
/// then the folder synced. A crash leaves the old file or the new one.
///
/// # Errors
///
/// [`E2eError::File`].
pub(crate) fn replace_secret(
    path: &Path,
    what: &'static str,
    bytes: &[u8],
) -> Result<(), E2eError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| file_error("write", what, path, "not a file name"))?;
    let suffix: [u8; 6] = super::cipher::random()?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let written = create(&tmp, what, 0o600, bytes)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| file_error("write", what, path, e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // Make the rename durable; a folder that cannot be opened for sync
    // (some filesystems) does not undo the write.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a secret file, refusing one that group or others may read.
///
/// # Errors
///
/// [`E2eError::Permissions`], or [`E2eError::File`] when it cannot be read
/// or is implausibly large.
pub(crate) fn read_secret(path: &Path, what: &'static str) -> Result<Zeroizing<Vec<u8>>, E2eError> {
    let mut file = File::open(path).map_err(|e| file_error("read", what, path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| file_error("read", what, path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(E2eError::Permissions {
                what,
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    read_all(&mut file, meta.len(), path, what)
}

/// Reads a public file (no permission check).
///
/// # Errors
///
/// [`E2eError::File`].
pub(crate) fn read_public(path: &Path, what: &'static str) -> Result<Zeroizing<Vec<u8>>, E2eError> {
    let mut file = File::open(path).map_err(|e| file_error("read", what, path, e))?;
    let len = file
        .metadata()
        .map_err(|e| file_error("read", what, path, e))?
        .len();
    read_all(&mut file, len, path, what)
}

fn read_all(
    file: &mut File,
    len: u64,
    path: &Path,
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, E2eError> {
    if len > MAX_FILE {
        return Err(file_error(
            "read",
            what,
            path,
            format!("{len} bytes is larger than any key file ({MAX_FILE} bytes at most)"),
        ));
    }
    // Reserve the whole file up front so the buffer never reallocates and
    // leaves unzeroized copies behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(usize::try_from(len).unwrap_or(0) + 1));
    file.take(MAX_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| file_error("read", what, path, e))?;
    Ok(buf)
}
