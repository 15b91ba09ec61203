//! The metadata store: topics, consumer-group offsets, producer state, the
//! key registry, ACLs, access requests, recipients and the audit head, in one
//! redb database file.
//!
//! Every change goes through a write transaction committed with
//! `Durability::Immediate` (one `fdatasync` per commit). Several changes can
//! be applied atomically in one transaction with [`MetaStore::write`]: if the
//! closure returns an error, nothing it did is kept.
//!
//! ```no_run
//! # fn main() -> Result<(), strongbox_storage::meta::MetaError> {
//! use strongbox_storage::meta::MetaStore;
//!
//! let meta = MetaStore::open("data/meta.redb")?;
//! meta.write(|tx| {
//!     tx.commit_offset("billing", "orders", 0, 42)?;
//!     tx.commit_offset("billing", "orders", 1, 17)?;
//!     Ok::<_, strongbox_storage::meta::MetaError>(())
//! })?;
//! assert_eq!(meta.read(|r| r.offset("billing", "orders", 1))?, Some(17));
//! # Ok(()) }
//! ```
//!
//! Values are JSON objects (UTF-8, byte strings as lowercase hex), except
//! where a table says otherwise; see [`tables`] for every table, its key and
//! its value. A value that does not decode is reported as
//! [`MetaError::Corrupt`] naming the table and key, never a panic.

mod access;
mod backend;
mod codec;
mod deletions;
mod ends;
mod jobs;
mod kek;
mod open;
mod replicated;
mod snapshot;
pub mod tables;
mod topics;

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Key, ReadableDatabase, ReadableTable, TableDefinition, TableError, Value};

pub use access::{AclEntry, AuditHead};
pub use deletions::TopicDeletion;
pub use ends::PartitionEnd;
pub use jobs::RewrapJobState;
pub use replicated::{KeyPolicy, ReplicatedTables, Row, is_node_local_topic};
pub use snapshot::{MetaSnapshot, SnapshotStats};
pub use topics::{ProducerRecord, TopicEntry};

/// Errors of the metadata store.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database file could not be opened or created.
    #[error("cannot open metadata store {path}: {source} (is another broker using it?)")]
    Open {
        /// The database file.
        path: String,
        /// The cause.
        #[source]
        source: redb::DatabaseError,
    },
    /// The database file could not be created, or its name made durable.
    #[error("cannot create metadata store {path}: {source}")]
    Create {
        /// The database file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database file does not exist (or is empty), and the caller
    /// asked not to create it.
    #[error(
        "metadata store {path} is missing or empty: it holds the topics, the key registry and \
         the partitions' durable ends, and a new, empty store would silently lose them \
         (restore it from a backup)"
    )]
    Missing {
        /// The database file.
        path: String,
    },
    /// A read, write or commit failed.
    #[error("metadata store: {0}")]
    Db(#[from] redb::Error),
    /// A stored value does not decode.
    #[error(
        "metadata store table {table}, key {key}: stored value is corrupt ({reason}); \
         restore the metadata store from a backup"
    )]
    Corrupt {
        /// The table.
        table: String,
        /// The key, for people.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("metadata store: cannot encode {what}: {reason}")]
    Encode {
        /// What was being stored.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The topic already exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// The change contradicts what is stored (for example a KEK version
    /// that is not registered, or an audit head that goes backwards).
    #[error("{0}")]
    Conflict(String),
}

macro_rules! redb_error {
    ($($t:ty),*) => {
        $(impl From<$t> for MetaError {
            fn from(e: $t) -> Self {
                Self::Db(redb::Error::from(e))
            }
        })*
    };
}
redb_error!(
    TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The metadata store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct MetaStore {
    db: Arc<redb::Database>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("path", &self.path)
            .finish()
    }
}

impl MetaStore {
    /// A store that lives in memory only, for tests.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn in_memory() -> Result<Self, MetaError> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| MetaError::Open {
                path: "<memory>".to_owned(),
                source,
            })?;
        Self::init(db, None)
    }

    pub(super) fn init(db: redb::Database, path: Option<PathBuf>) -> Result<Self, MetaError> {
        let store = Self {
            db: Arc::new(db),
            path,
        };
        store.write(|tx| tables::create_all(tx.txn))?;
        Ok(store)
    }

    /// The database file (none for an in-memory store).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on a consistent snapshot.
    ///
    /// # Errors
    ///
    /// What `f` returns; [`MetaError::Db`] when the snapshot cannot be taken.
    pub fn read<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&MetaView<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.db.begin_read().map_err(MetaError::from)?;
        f(&MetaView {
            txn: Txn::Read(&txn),
        })
    }

    /// Runs `f` in one write transaction and commits it durably
    /// (`Durability::Immediate`) when `f` returns `Ok`. When `f` returns an
    /// error nothing it changed is kept. Writers are serialized: a second
    /// `write` (or a key manager call) from inside `f` waits forever.
    ///
    /// # Errors
    ///
    /// What `f` returns; [`MetaError::Db`] when the commit fails (then
    /// nothing is kept either).
    pub fn write<T, E: From<MetaError>>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut txn = self.db.begin_write().map_err(MetaError::from)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(MetaError::from)?;
        let out = {
            let mut batch = Batch {
                view: MetaView {
                    txn: Txn::Write(&txn),
                },
                txn: &txn,
            };
            f(&mut batch)
        };
        match out {
            Ok(v) => {
                txn.commit().map_err(MetaError::from)?;
                Ok(v)
            }
            Err(e) => {
                txn.abort().map_err(MetaError::from)?;
                Err(e)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Txn<'a> {
    Read(&'a redb::ReadTransaction),
    Write(&'a redb::WriteTransaction),
}

/// Read access to the store, inside [`MetaStore::read`] or a [`Batch`].
pub struct MetaView<'a> {
    txn: Txn<'a>,
}

impl std::fmt::Debug for MetaView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaView")
    }
}

/// The changes of one write transaction; reads through it see them.
pub struct Batch<'a> {
    view: MetaView<'a>,
    txn: &'a redb::WriteTransaction,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batch")
    }
}

impl<'a> std::ops::Deref for Batch<'a> {
    type Target = MetaView<'a>;

    fn deref(&self) -> &MetaView<'a> {
        &self.view
    }
}

impl MetaView<'_> {
    /// Looks `key` up in `def` and maps the stored value with `map`.
    fn get_with<'k, K, V, R>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        map: impl FnOnce(V::SelfType<'_>) -> R,
    ) -> Result<Option<R>, MetaError>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        fn get_in<'k, K: Key + 'static, V: Value + 'static, R>(
            t: &impl ReadableTable<K, V>,
            key: impl Borrow<K::SelfType<'k>>,
            map: impl FnOnce(V::SelfType<'_>) -> R,
        ) -> Result<Option<R>, MetaError> {
            Ok(t.get(key)?.map(|g| map(g.value())))
        }
        match self.txn {
            Txn::Read(t) => match t.open_table(def) {
                Ok(table) => get_in(&table, key, map),
                Err(TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Txn::Write(t) => get_in(&t.open_table(def)?, key, map),
        }
    }

    /// Visits the entries of `def` in key order, from `from` (inclusive) or
    /// the start, until `visit` returns `false`.
    fn scan<K, V>(
        &self,
        def: TableDefinition<'static, K, V>,
        from: Option<K::SelfType<'_>>,
        mut visit: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<bool, MetaError>,
    ) -> Result<(), MetaError>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        fn scan_in<K: Key + 'static, V: Value + 'static>(
            t: &impl ReadableTable<K, V>,
            from: Option<K::SelfType<'_>>,
            visit: &mut impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<bool, MetaError>,
        ) -> Result<(), MetaError> {
            let range = match from {
                Some(start) => t.range(start..)?,
                None => t.iter()?,
            };
            for item in range {
                let (k, v) = item?;
                if !visit(k.value(), v.value())? {
                    break;
                }
            }
            Ok(())
        }
        match self.txn {
            Txn::Read(t) => match t.open_table(def) {
                Ok(table) => scan_in(&table, from, &mut visit),
                Err(TableError::TableDoesNotExist(_)) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Txn::Write(t) => scan_in(&t.open_table(def)?, from, &mut visit),
        }
    }
}

impl Batch<'_> {
    /// Stores `value` under `key` in `def`; returns true when it replaced a
    /// value.
    fn put<'k, 'v, K, V>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<bool, MetaError>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        let mut table = self.txn.open_table(def)?;
        let old = table.insert(key, value)?;
        Ok(old.is_some())
    }

    /// Removes `key` from `def`; returns true when it was there.
    fn delete<'k, K, V>(
        &self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<bool, MetaError>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        let mut table = self.txn.open_table(def)?;
        let old = table.remove(key)?;
        Ok(old.is_some())
    }

    /// Takes the next value of the counter `name` (the first is 1). Counters
    /// never go back, so ids are never reused.
    fn next_id(&self, name: &str) -> Result<u64, MetaError> {
        let current = self.get_with(tables::COUNTERS, name, |v| v)?.unwrap_or(0);
        let next = current
            .checked_add(1)
            .ok_or_else(|| MetaError::Conflict(format!("counter {name} is exhausted")))?;
        self.put(tables::COUNTERS, name, next)?;
        Ok(next)
    }
}
