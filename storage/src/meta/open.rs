//! Opening the metadata store's file, and creating it so that a power cut
//! never leaves a half-made store, or a store whose name is not durable.
//!
//! A new store is built in `meta.redb.new` (redb writes its header and the
//! tables, each commit `fdatasync`ed), then renamed to `meta.redb` and the
//! directory synced ([`durable::rename`]). A power cut before the rename
//! leaves no `meta.redb` (and a stale `.new`, removed by the next
//! creation); after it, a complete, durable store. `meta.redb` is never
//! created empty and filled in place, where a torn first write would leave
//! a file redb refuses to open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{FileIo, OpenMode, StorageIo, durable};

use super::backend::IoBackend;
use super::{MetaError, MetaStore};

/// Where a new store is built before it is renamed into place.
fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// `Some(len)` of the file at `path`, `None` when it does not exist.
fn length(io: &dyn StorageIo, path: &Path) -> Result<Option<u64>, MetaError> {
    match io.metadata(path) {
        Ok(m) => Ok(Some(m.len)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MetaError::Open {
            path: path.display().to_string(),
            source: e.into(),
        }),
    }
}

/// Builds a new store at `path` unless a non-empty file is there (see the
/// module docs). `build` makes a database with every table at the path it
/// is given and closes it.
fn create_if_missing(
    io: &dyn StorageIo,
    path: &Path,
    build: impl FnOnce(&Path) -> Result<(), MetaError>,
) -> Result<(), MetaError> {
    if length(io, path)?.is_some_and(|len| len > 0) {
        return Ok(());
    }
    let staging = staging_path(path);
    let create_err = |e: durable::StepError| MetaError::Create {
        path: path.display().to_string(),
        source: e.into(),
    };
    durable::remove_file(io, &staging).map_err(create_err)?;
    build(&staging)?;
    durable::rename(io, &staging, path).map_err(create_err)?;
    tracing::info!(path = %path.display(), "metadata store created");
    Ok(())
}

fn open_error(path: &Path) -> impl Fn(redb::DatabaseError) -> MetaError + '_ {
    move |source| MetaError::Open {
        path: path.display().to_string(),
        source,
    }
}

impl MetaStore {
    /// Opens the database file at `path`, creating it (and every table) when
    /// missing or empty. A new store is complete and its name durable
    /// before this returns (see the module docs), so a commit that returned
    /// is never lost with the file's name in a power cut.
    ///
    /// # Errors
    ///
    /// [`MetaError::Open`] when the file cannot be opened (for example it is
    /// locked by another process or not a redb file); [`MetaError::Create`];
    /// [`MetaError::Db`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        Self::open_file(path.as_ref(), true)
    }

    /// Opens the existing database file at `path`; never creates one. For
    /// tools that inspect a data directory, and for a broker whose data
    /// directory already holds partition logs: a store that went missing
    /// must be restored, not replaced by an empty one.
    ///
    /// # Errors
    ///
    /// [`MetaError::Missing`] when the file does not exist or is empty (redb
    /// would make a new database in it); otherwise as [`MetaStore::open`].
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        Self::open_file(path.as_ref(), false)
    }

    fn open_file(path: &Path, create: bool) -> Result<Self, MetaError> {
        if create {
            create_if_missing(&FileIo, path, |staging| {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(staging)
                    .map_err(|e| open_error(staging)(e.into()))?;
                let backend =
                    redb::backends::FileBackend::new(file).map_err(open_error(staging))?;
                let db = redb::Database::builder()
                    .create_with_backend(backend)
                    .map_err(open_error(staging))?;
                Self::init(db, None).map(drop)
            })?;
        } else if length(&FileIo, path)?.is_none_or(|len| len == 0) {
            return Err(MetaError::Missing {
                path: path.display().to_string(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_error(path)(e.into()))?;
        // redb's own file backend takes the file lock that keeps a second
        // broker out.
        let backend = redb::backends::FileBackend::new(file).map_err(open_error(path))?;
        let db = redb::Database::builder()
            .create_with_backend(backend)
            .map_err(open_error(path))?;
        Self::init(db, Some(path.to_path_buf()))
    }

    /// Opens (or, with `create`, creates as [`MetaStore::open`] does) the
    /// store at `path` on `io` rather than on the real file system: every
    /// read, write and sync of the database goes through `io`, so tests
    /// can run it on a simulated file system
    /// ([`PowerLossIo`](crate::io::PowerLossIo)) and cut the power under
    /// it. No file lock is taken.
    ///
    /// # Errors
    ///
    /// As [`MetaStore::open`] and [`MetaStore::open_existing`].
    pub fn open_with_io(
        io: Arc<dyn StorageIo>,
        path: impl AsRef<Path>,
        create: bool,
    ) -> Result<Self, MetaError> {
        let path = path.as_ref();
        let with_io = |p: &Path, mode| {
            io.open(p, mode)
                .map(IoBackend::new)
                .map_err(|e| open_error(p)(e.into()))
        };
        if create {
            create_if_missing(io.as_ref(), path, |staging| {
                let db = redb::Database::builder()
                    .create_with_backend(with_io(staging, OpenMode::CreateNew)?)
                    .map_err(open_error(staging))?;
                Self::init(db, None).map(drop)
            })?;
        } else if length(io.as_ref(), path)?.is_none_or(|len| len == 0) {
            return Err(MetaError::Missing {
                path: path.display().to_string(),
            });
        }
        let db = redb::Database::builder()
            .create_with_backend(with_io(path, OpenMode::ReadWrite)?)
            .map_err(open_error(path))?;
        Self::init(db, Some(path.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::PowerLossIo;

    #[test]
    fn a_power_cut_during_creation_leaves_no_store_or_a_whole_one() {
        // Every instant of the creation, with and without torn writes.
        let total = {
            let io = PowerLossIo::new();
            let _ =
                MetaStore::open_with_io(Arc::new(io.clone()), "/meta.redb", true).expect("create");
            io.ops()
        };
        for cut in 0..=total {
            for torn in [None, Some(cut)] {
                let io = PowerLossIo::new();
                io.cut_after(cut);
                let _ = MetaStore::open_with_io(Arc::new(io.clone()), "/meta.redb", true);
                let after = io.restart(torn);
                match MetaStore::open_with_io(Arc::new(after.clone()), "/meta.redb", false) {
                    Ok(store) => {
                        store.read(|r| r.topics()).expect("a whole store");
                    }
                    Err(MetaError::Missing { .. }) => {
                        MetaStore::open_with_io(Arc::new(after), "/meta.redb", true)
                            .expect("created again");
                    }
                    Err(e) => panic!("cut after {cut} ops ({torn:?}): {e}"),
                }
            }
        }
    }

    #[test]
    fn open_existing_never_creates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.redb");
        let e = MetaStore::open_existing(&path).expect_err("missing");
        assert!(matches!(e, MetaError::Missing { .. }), "{e}");
        assert!(!path.exists());
        std::fs::File::create(&path).expect("empty file");
        assert!(matches!(
            MetaStore::open_existing(&path),
            Err(MetaError::Missing { .. })
        ));
        drop(MetaStore::open(&path).expect("create over the empty file"));
        MetaStore::open_existing(&path).expect("now it exists");
        assert!(!dir.path().join("meta.redb.new").exists());
    }
}
