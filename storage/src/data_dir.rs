//! The broker's data directory: where the metadata store and the partition
//! logs live, the rule that keeps a lost metadata store from being replaced
//! by an empty one, and finishing topic deletions.
//!
//! ```text
//! <data dir>/meta.redb                      the metadata store (crate::meta)
//! <data dir>/log/<topic id hex>/<partition>/  one partition log (crate::log)
//! ```
//!
//! Every directory on the way is created with
//! [`durable::create_dir_all`](crate::io::durable::create_dir_all), so a
//! partition's directory is durable in `log/<topic id>`, that one in `log`,
//! and `log` in the data directory before a record in it is acknowledged.

use std::path::{Path, PathBuf};

use crate::io::{EntryKind, StorageIo, durable};
use crate::keys::{KekScope, KeyError, KeyManager, SegmentKeyContext, SegmentKeys};
use crate::log::{LogError, remove_partition_dir};
use crate::meta::{MetaError, MetaStore, TopicDeletion};

/// The metadata store's file name in the data directory.
pub const META_FILE: &str = "meta.redb";

/// The directory of the partition logs in the data directory.
pub const LOG_DIR: &str = "log";

/// Errors of the data directory as a whole.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Partition logs exist but the metadata store does not.
    #[error(
        "the data directory {data_dir} holds partition logs ({logs}) but its metadata store \
         {meta} is missing or empty. It held the topics, the key registry and every \
         partition's durable end; starting with a new, empty store would hide what was lost \
         and hand out offsets again. Restore {meta} from a backup of this data directory \
         (docs/OPERATIONS.md, \"Backup and restore\"); the broker does not create a new one \
         while partition logs exist"
    )]
    MetaStoreMissing {
        /// The data directory.
        data_dir: PathBuf,
        /// Its log directory.
        logs: PathBuf,
        /// The metadata store that is missing.
        meta: PathBuf,
    },
    /// Looking at the data directory failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A partition log step failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The key manager failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// The metadata store's path.
pub fn meta_path(data_dir: &Path) -> PathBuf {
    data_dir.join(META_FILE)
}

/// The directory holding every topic's partitions.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(LOG_DIR)
}

/// The directory of a topic's partitions, named by its random id (so a
/// topic deleted and created again never meets the old files).
pub fn topic_dir(data_dir: &Path, topic_id: &[u8; 16]) -> PathBuf {
    log_dir(data_dir).join(hex::encode(topic_id))
}

/// The directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic_id: &[u8; 16], partition: u32) -> PathBuf {
    topic_dir(data_dir, topic_id).join(partition.to_string())
}

/// Whether the metadata store of `data_dir` may be created. It may when it
/// is missing (or empty) and the data directory holds no partition logs: a
/// new broker. When it exists the answer is `false` (open it, never make a
/// new one).
///
/// # Errors
///
/// [`DataDirError::MetaStoreMissing`] when `log/` exists but the store is
/// missing or empty; [`DataDirError::Io`] when the directory cannot be
/// read.
pub fn may_create_meta(io: &dyn StorageIo, data_dir: &Path) -> Result<bool, DataDirError> {
    let meta = meta_path(data_dir);
    let present = match io.metadata(&meta) {
        Ok(m) => m.len > 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => return Err(DataDirError::Io { path: meta, source }),
    };
    if present {
        return Ok(false);
    }
    let logs = log_dir(data_dir);
    match io.metadata(&logs) {
        Ok(_) => Err(DataDirError::MetaStoreMissing {
            data_dir: data_dir.to_path_buf(),
            logs,
            meta,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(DataDirError::Io { path: logs, source }),
    }
}

/// Finishes the deletion of one topic (recorded by
/// [`Batch::delete_topic`](crate::meta::Batch::delete_topic)): removes its
/// files ([`remove_topic_files`]), forgets every key registry entry of its
/// segments, destroys its own KEK scope when it had one, and only then
/// forgets the record. Every step is idempotent, so calling it again after
/// a failure or a crash finishes the job. Returns the KEK versions
/// destroyed.
///
/// # Errors
///
/// The step that failed.
pub fn finish_topic_deletion(
    io: &dyn StorageIo,
    data_dir: &Path,
    keys: &KeyManager,
    deletion: &TopicDeletion,
) -> Result<usize, DataDirError> {
    remove_topic_files(io, data_dir, &deletion.topic_id)?;
    let registered = keys.meta().read(|r| r.segment_keks())?;
    for (segment, kek) in registered
        .into_iter()
        .filter(|(s, _)| s.topic_id == deletion.topic_id)
    {
        keys.forget(&SegmentKeyContext {
            topic_id: segment.topic_id,
            partition: segment.partition,
            segment_id: segment.segment_id,
            scope: kek.scope,
        })?;
    }
    let destroyed = if deletion.dedicated_kek {
        keys.destroy_scope(&KekScope::Topic(hex::encode(deletion.topic_id)))?
            .len()
    } else {
        0
    };
    keys.meta()
        .write(|b| b.finish_topic_deletion(&deletion.topic_id))?;
    Ok(destroyed)
}

/// Finishes every topic deletion the metadata store records (a broker that
/// stopped, or lost power, while deleting). Returns the deletions finished.
///
/// # Errors
///
/// As [`finish_topic_deletion`].
pub fn finish_topic_deletions(
    io: &dyn StorageIo,
    data_dir: &Path,
    keys: &KeyManager,
) -> Result<Vec<TopicDeletion>, DataDirError> {
    let pending = keys.meta().read(|r| r.topic_deletions())?;
    for deletion in &pending {
        tracing::warn!(topic = %deletion.name, topic_id = %hex::encode(deletion.topic_id), "finishing an interrupted topic deletion");
        finish_topic_deletion(io, data_dir, keys, deletion)?;
    }
    Ok(pending)
}

/// Removes a topic's directory durably: each partition directory with
/// [`remove_partition_dir`] (key envelopes first), then the topic's own
/// directory, whose removal is made durable in `log/`. A topic whose
/// directory is gone is not an error.
///
/// # Errors
///
/// A listing, removal or sync failed.
pub fn remove_topic_files(
    io: &dyn StorageIo,
    data_dir: &Path,
    topic_id: &[u8; 16],
) -> Result<(), DataDirError> {
    let dir = topic_dir(data_dir, topic_id);
    let names = match io.list_dir(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(DataDirError::Io { path: dir, source }),
    };
    for name in names {
        let path = dir.join(name);
        let is_dir = io
            .metadata(&path)
            .map(|m| m.kind == EntryKind::Dir)
            .unwrap_or(false);
        if is_dir {
            remove_partition_dir(io, &path)?;
        }
    }
    durable::remove_dir_all(io, &dir).map_err(|e| {
        DataDirError::Log(LogError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    })?;
    Ok(())
}

/// Opens the metadata store of `data_dir` on `io` with the rule of
/// [`may_create_meta`] (for tests on a simulated file system; the broker
/// opens the real file with [`MetaStore::open`] or
/// [`MetaStore::open_existing`] so that redb takes its file lock).
///
/// # Errors
///
/// As [`may_create_meta`] and [`MetaStore::open_with_io`].
pub fn open_meta_with_io(
    io: std::sync::Arc<dyn StorageIo>,
    data_dir: &Path,
) -> Result<MetaStore, DataDirError> {
    let create = may_create_meta(io.as_ref(), data_dir)?;
    Ok(MetaStore::open_with_io(io, meta_path(data_dir), create)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::io::{OpenMode, PowerLossIo};

    #[test]
    fn a_store_may_be_created_only_beside_no_logs() {
        let io = PowerLossIo::new();
        let data = Path::new("/data");
        durable::create_dir_all(&io, data).expect("data");
        assert!(may_create_meta(&io, data).expect("fresh"));
        drop(
            io.open(&meta_path(data), OpenMode::CreateNew)
                .expect("empty file"),
        );
        assert!(may_create_meta(&io, data).expect("empty, no logs"));
        durable::create_dir_all(&io, &log_dir(data)).expect("log");
        let e = may_create_meta(&io, data).expect_err("empty store beside logs");
        assert!(matches!(e, DataDirError::MetaStoreMissing { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("/data/meta.redb is missing or empty"),
            "{text}"
        );
        assert!(
            text.contains("Restore /data/meta.redb from a backup"),
            "{text}"
        );

        io.remove_file(&meta_path(data)).expect("remove");
        assert!(matches!(
            open_meta_with_io(Arc::new(io.clone()), data),
            Err(DataDirError::MetaStoreMissing { .. })
        ));
        assert!(
            io.metadata(&meta_path(data)).is_err(),
            "the refusal created nothing"
        );
    }

    #[test]
    fn layout() {
        let d = Path::new("/d");
        assert_eq!(
            partition_dir(d, &[0xab; 16], 3),
            PathBuf::from("/d/log/abababababababababababababababab/3")
        );
        assert_eq!(meta_path(d), PathBuf::from("/d/meta.redb"));
    }
}
