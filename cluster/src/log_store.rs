//! The metadata group's log and vote, in their own redb file.
//!
//! `<data dir>/raft/log.redb` holds two tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `entries.v1` | log index `u64` | the entry as JSON: `{log_id: {leader_id: {term, node_id}, index}, payload}`, the payload `"Blank"`, `{"Normal": command}` or `{"Membership": {configs, nodes}}` |
//! | `log_state.v1` | name | JSON: `vote` (`{leader_id: {term, node_id}, committed}`), `committed` and `last_purged` (log ids) |
//!
//! Every change is one write transaction committed with
//! `Durability::Immediate`: when [`RaftLogStorage::append`] calls its flush
//! callback, the commit that holds the entries has returned, so they are on
//! disk. Entries are kept contiguous: a truncation removes a suffix, a
//! purge a prefix (recording the purged log id in the same transaction).
//! A stored value that does not decode is an [`io::ErrorKind::InvalidData`]
//! error naming the table and key, never a panic.
//!
//! The file is built as `log.redb.new` and renamed into place with its
//! directory synced (`strongbox_storage::io::durable`), like the metadata
//! store, so a power cut never leaves a half-made log under the real name.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strongbox_storage::io::{FileIo, durable};

use crate::types::{Entry, LogId, TypeConfig, Vote};

const ENTRIES_NAME: &str = "entries.v1";
const LOG_STATE_NAME: &str = "log_state.v1";
/// Log index → entry (JSON).
const ENTRIES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new(ENTRIES_NAME);
/// Name → JSON: `vote`, `committed`, `last_purged`.
const LOG_STATE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new(LOG_STATE_NAME);

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The file name of the log inside the raft directory.
pub const LOG_FILE: &str = "log.redb";

/// The group's log store: cheap to clone, clones share the file. It is its
/// own [`RaftLogReader`].
#[derive(Clone)]
pub struct MetaLogStore {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl Debug for MetaLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaLogStore")
            .field("path", &self.path)
            .finish()
    }
}

fn db_error(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("raft log: {what}: {e}"))
}

fn corrupt(table: &str, key: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "raft log table {table}, key {key}: stored value is corrupt ({e}); the node cannot \
             trust its log: remove its data directory and add it back under a new node id"
        ),
    )
}

fn encode<T: Serialize>(what: &str, v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| db_error(&format!("encoding {what}"), e))
}

fn decode<T: DeserializeOwned>(
    table: &str,
    key: impl std::fmt::Display,
    b: &[u8],
) -> io::Result<T> {
    serde_json::from_slice(b).map_err(|e| corrupt(table, key, e))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| db_error("storage task", e))?
}

impl MetaLogStore {
    /// Opens the log in `dir` (the node's `raft` directory), creating the
    /// directory and the file, durably, when they are missing.
    ///
    /// # Errors
    ///
    /// The directory or file cannot be created, or the file is not a log
    /// (or is in use by another process).
    pub fn open(dir: &Path) -> io::Result<Self> {
        durable::create_dir_all(&FileIo, dir)?;
        let path = dir.join(LOG_FILE);
        let exists = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if !exists {
            let staging = dir.join(format!("{LOG_FILE}.new"));
            durable::remove_file(&FileIo, &staging)?;
            {
                let db = redb::Database::create(&staging)
                    .map_err(|e| db_error(&format!("creating {}", staging.display()), e))?;
                Self::create_tables(&db)?;
            }
            durable::rename(&FileIo, &staging, &path)?;
        }
        let db = redb::Database::create(&path)
            .map_err(|e| db_error(&format!("opening {}", path.display()), e))?;
        Self::create_tables(&db)?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    fn create_tables(db: &redb::Database) -> io::Result<()> {
        Self::write_txn(db, |txn| {
            txn.open_table(ENTRIES).map_err(|e| db_error("tables", e))?;
            txn.open_table(LOG_STATE)
                .map_err(|e| db_error("tables", e))?;
            Ok(())
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction committed durably.
    fn write_txn<T>(
        db: &redb::Database,
        f: impl FnOnce(&redb::WriteTransaction) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut txn = db.begin_write().map_err(|e| db_error("begin", e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| db_error("durability", e))?;
        let out = f(&txn)?;
        txn.commit().map_err(|e| db_error("commit", e))?;
        Ok(out)
    }

    fn read_state<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| db_error("begin", e))?;
        let table = txn.open_table(LOG_STATE).map_err(|e| db_error("open", e))?;
        let value = table.get(name).map_err(|e| db_error("read", e))?;
        value
            .map(|v| decode(LOG_STATE_NAME, name, v.value()))
            .transpose()
    }

    async fn write_state<T: Serialize>(&self, name: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(name, value)?;
        let db = self.db.clone();
        blocking(move || {
            Self::write_txn(&db, |txn| {
                let mut t = txn.open_table(LOG_STATE).map_err(|e| db_error("open", e))?;
                t.insert(name, bytes.as_slice())
                    .map_err(|e| db_error("write", e))?;
                Ok(())
            })
        })
        .await
    }

    fn entries_in(&self, range: (Bound<u64>, Bound<u64>)) -> io::Result<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(|e| db_error("begin", e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
        let mut out = Vec::new();
        let mut expected: Option<u64> = None;
        for item in table.range(range).map_err(|e| db_error("read", e))? {
            let (k, v) = item.map_err(|e| db_error("read", e))?;
            let index = k.value();
            let entry: Entry = decode(ENTRIES_NAME, index, v.value())?;
            if entry.log_id.index != index {
                return Err(corrupt(
                    ENTRIES_NAME,
                    index,
                    format!("the entry says it is index {}", entry.log_id.index),
                ));
            }
            if expected.is_some_and(|e| e != index) {
                return Err(corrupt(ENTRIES_NAME, index, "a hole before this entry"));
            }
            expected = index.checked_add(1);
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let txn = self.db.begin_read().map_err(|e| db_error("begin", e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
        let last = table.last().map_err(|e| db_error("read", e))?;
        match last {
            None => Ok(None),
            Some((k, v)) => {
                let entry: Entry = decode(ENTRIES_NAME, k.value(), v.value())?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

fn owned_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for MetaLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds = owned_bounds(&range);
        let this = self.clone();
        blocking(move || this.entries_in(bounds)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_state(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for MetaLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_state(LAST_PURGED)?;
        let last = self.last_entry_log_id()?;
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_state(VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write_state(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_state::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((entry.log_id.index, encode("entry", &entry)?));
        }
        let db = self.db.clone();
        // The commit is durable when it returns (`Durability::Immediate`),
        // so the entries are both readable and flushed at once.
        let result = blocking(move || {
            Self::write_txn(&db, |txn| {
                let mut t = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
                for (index, bytes) in &rows {
                    t.insert(*index, bytes.as_slice())
                        .map_err(|e| db_error("append", e))?;
                }
                Ok(())
            })
        })
        .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(l) => l.index.checked_add(1),
            None => Some(0),
        };
        let Some(from) = from else { return Ok(()) };
        let db = self.db.clone();
        blocking(move || {
            Self::write_txn(&db, |txn| {
                let mut t = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
                t.retain_in(from.., |_, _| false)
                    .map_err(|e| db_error("truncate", e))?;
                Ok(())
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = encode(LAST_PURGED, &log_id)?;
        let upto = log_id.index;
        let db = self.db.clone();
        blocking(move || {
            Self::write_txn(&db, |txn| {
                let mut state = txn.open_table(LOG_STATE).map_err(|e| db_error("open", e))?;
                state
                    .insert(LAST_PURGED, bytes.as_slice())
                    .map_err(|e| db_error("write", e))?;
                let mut t = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
                t.retain_in(..=upto, |_, _| false)
                    .map_err(|e| db_error("purge", e))?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = MetaLogStore::open(dir.path()).expect("open");
        MetaLogStore::write_txn(&store.db, |txn| {
            let mut t = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
            t.insert(3, b"{\"log_id\": 7".as_slice())
                .map_err(|e| db_error("write", e))?;
            Ok(())
        })
        .expect("write");
        let e = store
            .entries_in((Bound::Unbounded, Bound::Unbounded))
            .expect_err("corrupt");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("entries.v1, key 3"), "{e}");
        let e = store.last_entry_log_id().expect_err("corrupt");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_entry_stored_under_another_index_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = MetaLogStore::open(dir.path()).expect("open");
        let entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, 5);
        let bytes = encode("entry", &entry).expect("encode");
        MetaLogStore::write_txn(&store.db, |txn| {
            let mut t = txn.open_table(ENTRIES).map_err(|e| db_error("open", e))?;
            t.insert(6, bytes.as_slice())
                .map_err(|e| db_error("write", e))?;
            Ok(())
        })
        .expect("write");
        let e = store
            .entries_in((Bound::Unbounded, Bound::Unbounded))
            .expect_err("moved");
        assert!(e.to_string().contains("index 5"), "{e}");
    }

    #[test]
    fn reopening_keeps_the_file_and_leaves_no_staging_copy() {
        let dir = tempfile::tempdir().expect("tmp");
        let raft = dir.path().join("raft");
        drop(MetaLogStore::open(&raft).expect("create"));
        assert!(raft.join(LOG_FILE).exists());
        assert!(!raft.join("log.redb.new").exists());
        drop(MetaLogStore::open(&raft).expect("reopen"));
    }
}
