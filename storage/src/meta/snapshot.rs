//! A consistent copy of the metadata store, taken while the broker runs.
//!
//! [`MetaStore::snapshot`] opens a redb read transaction: a view of the
//! store as of its last commit that later commits do not change (redb's
//! copy-on-write pages keep it intact for as long as the transaction
//! lives). [`MetaSnapshot::write_to`] then copies every table of that view,
//! entry by entry, into a new database file, committed durably. Writers
//! are not held up: they commit beside the snapshot.
//!
//! Copying the file's bytes instead would not be consistent: a commit that
//! lands during the copy rewrites the header that says which pages are
//! live.
//!
//! Every table the store defines is copied. A table found in the source
//! that the copy does not know (a newer table added without extending the
//! list below) fails the snapshot rather than leaving it out silently.

use std::collections::BTreeSet;
use std::path::Path;

use redb::{Key, ReadableDatabase, ReadableTable, TableDefinition, TableError, TableHandle, Value};

use super::{MetaError, MetaStore, tables};

/// A point-in-time view of the metadata store. Hold it only as long as
/// needed: the pages it sees cannot be reused while it lives.
pub struct MetaSnapshot {
    txn: redb::ReadTransaction,
}

impl std::fmt::Debug for MetaSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaSnapshot")
    }
}

/// What [`MetaSnapshot::write_to`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Tables copied.
    pub tables: usize,
    /// Entries copied, all tables together.
    pub entries: u64,
}

impl MetaStore {
    /// The store as of its last commit. See the module documentation.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`] when the read transaction cannot be opened.
    pub fn snapshot(&self) -> Result<MetaSnapshot, MetaError> {
        Ok(MetaSnapshot {
            txn: self.db.begin_read().map_err(MetaError::from)?,
        })
    }
}

impl MetaSnapshot {
    /// Writes the snapshot as a new redb database at `dest` (which must
    /// not exist), committed with `Durability::Immediate`. The caller
    /// syncs `dest`'s directory when the new name must be durable.
    ///
    /// # Errors
    ///
    /// `dest` exists or cannot be created, a read or the commit fails, or
    /// the source holds a table the copy does not know.
    pub fn write_to(&self, dest: &Path) -> Result<SnapshotStats, MetaError> {
        if dest.exists() {
            return Err(MetaError::Conflict(format!(
                "cannot write the metadata snapshot to {}: the file exists",
                dest.display()
            )));
        }
        let db = redb::Database::create(dest).map_err(|source| MetaError::Open {
            path: dest.display().to_string(),
            source,
        })?;
        let mut out = db.begin_write().map_err(MetaError::from)?;
        out.set_durability(redb::Durability::Immediate)
            .map_err(MetaError::from)?;
        let mut copy = Copier {
            from: &self.txn,
            to: &out,
            names: BTreeSet::new(),
            entries: 0,
        };
        copy.table(tables::TOPICS)?;
        copy.table(tables::GROUP_OFFSETS)?;
        copy.table(tables::PRODUCERS)?;
        copy.table(tables::KEK_VERSIONS)?;
        copy.table(tables::SEGMENT_KEYS)?;
        copy.table(tables::SEGMENTS_BY_KEK)?;
        copy.table(tables::ACLS)?;
        copy.table(tables::ACCESS_REQUESTS)?;
        copy.table(tables::RECIPIENTS)?;
        copy.table(tables::SINGLETONS)?;
        copy.table(tables::COUNTERS)?;
        copy.table(tables::PARTITION_ENDS)?;
        copy.table(tables::TOPIC_DELETIONS)?;
        copy.table(tables::PARTITION_ASSIGNMENTS)?;
        copy.table(tables::KEY_POLICIES)?;
        copy.table(tables::RAFT_STATE)?;
        let Copier { names, entries, .. } = copy;
        for handle in self.txn.list_tables().map_err(MetaError::from)? {
            if !names.contains(handle.name()) {
                return Err(MetaError::Conflict(format!(
                    "metadata table {} is not known to the snapshot copy; this broker \
                     cannot back up its own metadata store (a bug: report it)",
                    handle.name()
                )));
            }
        }
        out.commit().map_err(MetaError::from)?;
        Ok(SnapshotStats {
            tables: names.len(),
            entries,
        })
    }
}

struct Copier<'a> {
    from: &'a redb::ReadTransaction,
    to: &'a redb::WriteTransaction,
    names: BTreeSet<String>,
    entries: u64,
}

impl Copier<'_> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<(), MetaError> {
        self.names.insert(def.name().to_owned());
        let mut dst = self.to.open_table(def)?;
        let src = match self.from.open_table(def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for item in src.iter()? {
            let (k, v) = item?;
            dst.insert(k.value(), v.value())?;
            self.entries = self.entries.saturating_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of every table, as text, for comparing two stores.
    fn dump(path: &Path) -> Vec<String> {
        let db = redb::Database::open(path).expect("open");
        let txn = db.begin_read().expect("read");
        let mut out = Vec::new();
        for handle in txn.list_tables().expect("tables") {
            out.push(format!("table {}", handle.name()));
        }
        fn rows<K: Key + 'static, V: Value + 'static>(
            txn: &redb::ReadTransaction,
            def: TableDefinition<'static, K, V>,
            out: &mut Vec<String>,
        ) {
            let Ok(t) = txn.open_table(def) else { return };
            for item in t.iter().expect("iter") {
                let (k, v) = item.expect("row");
                out.push(format!("{} {:?} => {:?}", def.name(), k.value(), v.value()));
            }
        }
        rows(&txn, tables::TOPICS, &mut out);
        rows(&txn, tables::GROUP_OFFSETS, &mut out);
        rows(&txn, tables::PRODUCERS, &mut out);
        rows(&txn, tables::KEK_VERSIONS, &mut out);
        rows(&txn, tables::SEGMENT_KEYS, &mut out);
        rows(&txn, tables::SEGMENTS_BY_KEK, &mut out);
        rows(&txn, tables::ACLS, &mut out);
        rows(&txn, tables::ACCESS_REQUESTS, &mut out);
        rows(&txn, tables::RECIPIENTS, &mut out);
        rows(&txn, tables::SINGLETONS, &mut out);
        rows(&txn, tables::COUNTERS, &mut out);
        rows(&txn, tables::PARTITION_ENDS, &mut out);
        rows(&txn, tables::PARTITION_ASSIGNMENTS, &mut out);
        rows(&txn, tables::KEY_POLICIES, &mut out);
        rows(&txn, tables::RAFT_STATE, &mut out);
        out.sort();
        out
    }

    #[test]
    fn the_copy_holds_the_snapshot_not_later_commits() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("meta.redb");
        let meta = MetaStore::open(&src).expect("open");
        meta.write(|tx| {
            tx.commit_offset("billing", "orders", 0, 42)?;
            tx.commit_offset("billing", "orders", 1, 17)?;
            Ok::<_, MetaError>(())
        })
        .expect("write");
        let producer = meta
            .write(|tx| tx.allocate_producer_id())
            .expect("producer");
        assert_eq!(producer, 1);

        let snapshot = meta.snapshot().expect("snapshot");
        // Commits after the snapshot are not in the copy.
        meta.write(|tx| tx.commit_offset("billing", "orders", 0, 99))
            .expect("later commit");
        let copy = dir.path().join("copy.redb");
        let stats = snapshot.write_to(&copy).expect("write");
        assert_eq!(stats.tables, 16);
        drop(snapshot);

        let copied = dump(&copy);
        assert!(
            copied
                .iter()
                .any(|r| r.contains("group_offsets.v1") && r.ends_with("=> 42")),
            "{copied:#?}"
        );
        assert!(!copied.iter().any(|r| r.ends_with("=> 99")), "{copied:#?}");
        // Everything else is identical to the source with that commit undone.
        meta.write(|tx| tx.commit_offset("billing", "orders", 0, 42))
            .expect("undo");
        drop(meta);
        assert_eq!(copied, dump(&src));
        assert!(stats.entries >= 3, "{stats:?}");

        // The copy is a store the broker opens.
        let reopened = MetaStore::open(&copy).expect("open copy");
        assert_eq!(
            reopened
                .read(|r| r.offset("billing", "orders", 1))
                .expect("read"),
            Some(17)
        );
    }

    #[test]
    fn an_existing_destination_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = MetaStore::open(dir.path().join("meta.redb")).expect("open");
        let dest = dir.path().join("taken.redb");
        std::fs::write(&dest, b"x").expect("write");
        let e = meta
            .snapshot()
            .expect("snapshot")
            .write_to(&dest)
            .expect_err("exists");
        assert!(e.to_string().contains("taken.redb"), "{e}");
        assert_eq!(std::fs::read(&dest).expect("read"), b"x");
    }

    #[test]
    fn a_table_the_copy_does_not_know_fails_the_snapshot() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = MetaStore::open(dir.path().join("meta.redb")).expect("open");
        const EXTRA: TableDefinition<'static, u64, u64> = TableDefinition::new("future.v1");
        meta.write(|tx| {
            tx.txn.open_table(EXTRA)?.insert(1, 2)?;
            Ok::<_, MetaError>(())
        })
        .expect("write");
        let e = meta
            .snapshot()
            .expect("snapshot")
            .write_to(&dir.path().join("copy.redb"))
            .expect_err("unknown table");
        assert!(e.to_string().contains("future.v1"), "{e}");
    }
}
