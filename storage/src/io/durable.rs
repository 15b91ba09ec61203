//! Making new, renamed and removed names durable: the one place that
//! creates the directories and files the storage engine and the broker rely
//! on after a power cut.
//!
//! POSIX makes a file's *data* durable with `fdatasync`/`fsync` of the
//! file, but a *name* (the directory entry a create, a rename or an unlink
//! changes) only with an `fsync` of the directory that holds it. A
//! directory made with `mkdir -p` whose parent is never synced can vanish
//! in a power cut together with everything inside it, however carefully its
//! files were synced; a file renamed into place can come back under its old
//! name. Page caches survive a killed process, so only a power cut (or the
//! simulation of one, [`PowerLossIo`](super::PowerLossIo)) shows these
//! bugs.
//!
//! Every function here returns only once the change it made is durable:
//!
//! | function | changes | then syncs |
//! | --- | --- | --- |
//! | [`create_dir_all`], [`create_private_dir_all`] | each missing level, top down | the parent of each level it created, top down |
//! | [`create_file`] | a new, empty file | its directory |
//! | [`create_file_if_missing`] | a new, empty file unless the name exists | its directory, when it created the file |
//! | [`write_atomic`] | `name.tmp` written and synced, renamed over `name` | the directory |
//! | [`rename`] | a name | the target's directory (and the source's, when another) |
//! | [`remove_file`] | a name | its directory, when it removed something |
//! | [`remove_dir_all`] | a whole tree | the tree's parent directory |
//!
//! Where several names change in one directory the caller may make the
//! changes first and call [`sync_dir`] once: one directory `fsync` covers
//! every change made in that directory before it.
//!
//! ```
//! use strongbox_storage::io::{FileIo, durable};
//!
//! let root = tempfile::tempdir()?;
//! let partition = root.path().join("log/0a1b/0");
//! // `log`, `log/0a1b` and `log/0a1b/0` are created, and the parent of
//! // each is synced, before this returns.
//! assert!(durable::create_dir_all(&FileIo, &partition)?);
//! assert!(!durable::create_dir_all(&FileIo, &partition)?, "already there");
//! durable::write_atomic(&FileIo, &partition, "marker", b"hello")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{EntryKind, IoFile, OpenMode, StorageIo};

/// A step of a durable change failed: what was being done, to which path,
/// and the I/O error.
#[derive(Debug)]
pub struct StepError {
    /// What was being done ("creating", "syncing directory", ...).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<StepError> for io::Error {
    fn from(e: StepError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

fn step(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StepError {
    let path = path.to_path_buf();
    move |source| StepError { op, path, source }
}

/// The directory that holds `path`'s name (`.` for a bare relative name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the names created, renamed or removed in `dir` so far durable.
///
/// # Errors
///
/// The directory cannot be opened or synced.
pub fn sync_dir(io: &dyn StorageIo, dir: &Path) -> Result<(), StepError> {
    io.sync_dir(dir).map_err(step("syncing directory", dir))
}

/// Makes `path`'s own name durable: syncs the directory that holds it.
///
/// # Errors
///
/// As [`sync_dir`].
pub fn sync_parent(io: &dyn StorageIo, path: &Path) -> Result<(), StepError> {
    sync_dir(io, parent_of(path))
}

/// Creates directory `path` and every missing parent, then makes each new
/// name durable (an `fsync` of the parent of every level it created, from
/// the top down, so the top-most one lands in the directory that already
/// existed). Returns whether `path` was created.
///
/// # Errors
///
/// `path` or one of its parents exists and is not a directory; a level
/// cannot be created; a sync fails (the directories then exist but their
/// names may not be durable: call again).
pub fn create_dir_all(io: &dyn StorageIo, path: &Path) -> Result<bool, StepError> {
    create_levels(io, path, false)
}

/// [`create_dir_all`] with every directory it creates readable, writable
/// and searchable by its owner only (mode `0700`). Directories that exist
/// keep their mode.
///
/// # Errors
///
/// As [`create_dir_all`].
pub fn create_private_dir_all(io: &dyn StorageIo, path: &Path) -> Result<bool, StepError> {
    create_levels(io, path, true)
}

fn create_levels(io: &dyn StorageIo, path: &Path, private: bool) -> Result<bool, StepError> {
    // The missing levels, deepest first.
    let mut missing = Vec::new();
    let mut cursor = Some(path);
    while let Some(p) = cursor.filter(|p| !p.as_os_str().is_empty()) {
        match io.metadata(p) {
            Ok(m) if m.kind == EntryKind::Dir => break,
            Ok(_) => {
                return Err(StepError {
                    op: "creating directory",
                    path: p.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "the path exists and is not a directory",
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(step("reading the metadata of", p)(e)),
        }
        cursor = p.parent();
    }
    if missing.is_empty() {
        return Ok(false);
    }
    let mut created = Vec::with_capacity(missing.len());
    for level in missing.iter().rev() {
        let made = if private {
            io.create_private_dir(level)
        } else {
            io.create_dir(level)
        };
        match made {
            Ok(()) => created.push(*level),
            // Someone else made it meanwhile: theirs to make durable, but
            // syncing its parent too costs little and keeps ours honest.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => created.push(*level),
            Err(e) => return Err(step("creating directory", level)(e)),
        }
    }
    for level in &created {
        sync_parent(io, level)?;
    }
    Ok(true)
}

/// Creates the new, empty file `path` (which must not exist) and makes its
/// name durable before returning it open for reading and writing. Its data
/// is the caller's to sync.
///
/// # Errors
///
/// `AlreadyExists`; the file cannot be created; the directory sync fails.
pub fn create_file(io: &dyn StorageIo, path: &Path) -> Result<Arc<dyn IoFile>, StepError> {
    let file = io
        .open(path, OpenMode::CreateNew)
        .map_err(step("creating", path))?;
    sync_parent(io, path)?;
    Ok(file)
}

/// Creates the empty file `path` unless the name exists, making a new name
/// durable. Returns whether it created the file.
///
/// # Errors
///
/// The file cannot be created; the directory sync fails.
pub fn create_file_if_missing(io: &dyn StorageIo, path: &Path) -> Result<bool, StepError> {
    match io.open(path, OpenMode::CreateNew) {
        Ok(file) => {
            drop(file);
            sync_parent(io, path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(step("creating", path)(e)),
    }
}

/// Writes `bytes` to `dir/name` atomically and durably: `name.tmp` is
/// written and synced, renamed over `name`, and `dir` is synced. A crash
/// leaves the old file or the new one, never a mix; a failure leaves the
/// old one (the temporary is removed).
///
/// # Errors
///
/// The step that failed.
pub fn write_atomic(
    io: &dyn StorageIo,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StepError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let written = (|| {
        let file = io
            .open(&tmp, OpenMode::Truncate)
            .map_err(step("creating", &tmp))?;
        file.write_all_at(bytes, 0).map_err(step("writing", &tmp))?;
        file.sync_all().map_err(step("syncing", &tmp))?;
        drop(file);
        io.rename(&tmp, &dst)
            .map_err(step("renaming into place", &dst))
    })();
    if let Err(e) = written {
        // A full disk must not also keep the half-written temporary.
        let _ = io.remove_file(&tmp);
        return Err(e);
    }
    sync_dir(io, dir)
}

/// Renames `from` to `to` (replacing `to`) and makes both names durable.
///
/// # Errors
///
/// The rename or a directory sync failed.
pub fn rename(io: &dyn StorageIo, from: &Path, to: &Path) -> Result<(), StepError> {
    io.rename(from, to).map_err(step("renaming", from))?;
    sync_parent(io, to)?;
    if parent_of(from) != parent_of(to) {
        sync_parent(io, from)?;
    }
    Ok(())
}

/// Removes the file `path` and makes the removal durable. A file that is
/// already gone is not an error (returns `false`).
///
/// # Errors
///
/// The removal or the directory sync failed.
pub fn remove_file(io: &dyn StorageIo, path: &Path) -> Result<bool, StepError> {
    match io.remove_file(path) {
        Ok(()) => {
            sync_parent(io, path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(step("removing", path)(e)),
    }
}

/// Removes the directory `path` with everything in it, then makes the
/// removal durable (its parent is synced). A crash before that may leave
/// any part of the tree: callers that must destroy something first (key
/// envelopes) remove it, and sync, before calling this. A tree that is
/// already gone is not an error (returns `false`).
///
/// # Errors
///
/// A listing, removal or the final sync failed.
pub fn remove_dir_all(io: &dyn StorageIo, path: &Path) -> Result<bool, StepError> {
    match io.metadata(path) {
        Ok(m) if m.kind == EntryKind::Dir => {}
        Ok(_) => return remove_file(io, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(step("reading the metadata of", path)(e)),
    }
    remove_tree(io, path)?;
    sync_parent(io, path)?;
    Ok(true)
}

fn remove_tree(io: &dyn StorageIo, dir: &Path) -> Result<(), StepError> {
    for name in io.list_dir(dir).map_err(step("listing", dir))? {
        let path = dir.join(name);
        let is_dir = io
            .metadata(&path)
            .map_err(step("reading the metadata of", &path))?
            .kind
            == EntryKind::Dir;
        if is_dir {
            remove_tree(io, &path)?;
        } else {
            io.remove_file(&path).map_err(step("removing", &path))?;
        }
    }
    io.remove_dir(dir).map_err(step("removing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FaultyIo, IoOp, PowerLossIo};

    #[test]
    fn each_created_level_is_made_durable_in_its_parent() {
        let io = PowerLossIo::new();
        io.create_dir(Path::new("/data")).expect("mkdir");
        io.sync_dir(Path::new("/")).expect("sync");
        let partition = Path::new("/data/log/t1/0");
        assert!(create_dir_all(&io, partition).expect("create"));
        let after = io.restart(None);
        assert_eq!(
            after.metadata(partition).expect("survives").kind,
            EntryKind::Dir
        );
        assert!(!create_dir_all(&after, partition).expect("exists"));
    }

    #[test]
    fn a_path_through_a_file_is_refused() {
        let io = PowerLossIo::new();
        drop(io.open(Path::new("/f"), OpenMode::CreateNew).expect("file"));
        let e = create_dir_all(&io, Path::new("/f")).expect_err("a file");
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("/f"), "{e}");
        let e = create_dir_all(&io, Path::new("/f/g")).expect_err("through a file");
        assert_eq!(e.source.kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn files_renames_and_removals_survive_a_power_cut() {
        let io = PowerLossIo::new();
        let dir = Path::new("/d");
        create_dir_all(&io, dir).expect("dir");
        let f = create_file(&io, &dir.join("a")).expect("create");
        f.write_all_at(b"abc", 0).expect("write");
        f.sync_data().expect("sync");
        assert!(create_file_if_missing(&io, &dir.join("b")).expect("b"));
        assert!(!create_file_if_missing(&io, &dir.join("b")).expect("again"));
        write_atomic(&io, dir, "c", b"atomic").expect("atomic");
        rename(&io, &dir.join("a"), &dir.join("a2")).expect("rename");
        assert!(remove_file(&io, &dir.join("b")).expect("remove"));
        assert!(!remove_file(&io, &dir.join("b")).expect("gone"));

        let after = io.restart(None);
        assert_eq!(after.read(&dir.join("a2")).expect("renamed"), b"abc");
        assert_eq!(after.read(&dir.join("c")).expect("atomic"), b"atomic");
        let mut names = after.list_dir(dir).expect("list");
        names.sort();
        assert_eq!(names, vec!["a2", "c"]);
    }

    #[test]
    fn a_removed_tree_stays_removed() {
        let io = PowerLossIo::new();
        let top = Path::new("/t");
        create_dir_all(&io, &top.join("x/y")).expect("tree");
        create_file(&io, &top.join("x/y/f")).expect("file");
        create_file(&io, &top.join("x/g")).expect("file");
        assert!(remove_dir_all(&io, top).expect("remove"));
        assert!(!remove_dir_all(&io, top).expect("gone"));
        let after = io.restart(None);
        assert_eq!(
            after.metadata(top).expect_err("gone").kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_failed_sync_is_reported_with_its_path() {
        let io = FaultyIo::new();
        let dir = tempfile::tempdir().expect("tempdir");
        io.arm(crate::io::FaultRule::new(
            IoOp::SyncDir,
            crate::io::PathMatch::Any,
            crate::io::Fault::Eio,
        ));
        let e = create_dir_all(&io, &dir.path().join("x")).expect_err("sync fails");
        assert_eq!(e.op, "syncing directory");
        assert_eq!(e.path, dir.path());
    }
}
