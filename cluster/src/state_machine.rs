//! The metadata group's state machine: the node's own metadata store.
//!
//! Each batch of committed entries is applied in one write transaction of
//! the store, together with the log id of the last entry and the newest
//! membership (`raft_state.v1`). A crash before the commit loses the whole
//! batch and the entries are applied again at restart; after it, all of it
//! is there and the entries at or below the stored last-applied id are
//! skipped when openraft hands them over again. So applying is atomic and
//! idempotent, and the store is the state machine's only copy (no replay of
//! the log from a snapshot at start).
//!
//! Clients waiting on a proposal are answered only after the commit
//! returned, so an answer means the change is durable on this node.
//!
//! Snapshots: [`MetaStateMachine`] builds one from a single read
//! transaction of the store (the replicated tables and the raft state as of
//! the same commit), writes it to `<raft dir>/snapshot.v1` (atomically,
//! directory synced) and keeps it there as the current snapshot; installing
//! one writes that file first, then replaces the replicated tables and the
//! raft state in one transaction. See `crate::snapshot_format`.

use std::io;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strongbox_storage::io::{FileIo, durable};
use strongbox_storage::meta::{MetaError, MetaStore, MetaView};
use tokio::sync::{broadcast, watch};

use crate::apply::apply_command;
use crate::command::{MetaCommand, MetaResponse, TopicSpec};
use crate::snapshot_format::{self, SnapshotBody};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The current snapshot's file name inside the raft directory.
pub const SNAPSHOT_FILE: &str = "snapshot.v1";
/// How many changes a [`MetaChange`] receiver may fall behind before it
/// misses some (it then sees `RecvError::Lagged` and must reread the store).
pub const CHANGES_CAPACITY: usize = 1024;

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";

/// The snapshot's bytes (see `crate::snapshot_format`).
pub type SnapshotData = Vec<u8>;
/// A snapshot with its meta.
pub type RaftSnapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// What changed in the store, in the order it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaChange {
    /// A command was applied (refused ones too: their response says so).
    Applied(Box<AppliedCommand>),
    /// A snapshot replaced the replicated tables: reread everything.
    SnapshotInstalled {
        /// The snapshot's last log id.
        last_log_id: Option<LogId>,
        /// The topics that are gone (their files are recorded for deletion).
        removed_topics: Vec<TopicSpec>,
    },
}

/// A command as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedCommand {
    /// Its log id.
    pub log_id: LogId,
    /// The command.
    pub command: MetaCommand,
    /// What it answered.
    pub response: MetaResponse,
}

/// The state machine over a node's metadata store. Cheap to clone.
#[derive(Clone)]
pub struct MetaStateMachine {
    meta: MetaStore,
    dir: PathBuf,
    applied: watch::Sender<Option<LogId>>,
    changes: broadcast::Sender<MetaChange>,
}

impl std::fmt::Debug for MetaStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStateMachine")
            .field("meta", &self.meta)
            .field("dir", &self.dir)
            .finish()
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("metadata state machine: {what}: {e}"))
}

fn meta_err(what: &str) -> impl FnOnce(MetaError) -> io::Error + '_ {
    move |e| match e {
        MetaError::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        e => io_err(what, e),
    }
}

fn to_json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, MetaError> {
    serde_json::to_vec(v).map_err(|e| MetaError::Conflict(format!("cannot encode {what}: {e}")))
}

fn from_json<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
        table: "raft_state.v1".into(),
        key: name.into(),
        reason: e.to_string(),
    })
}

/// The last applied log id and membership recorded in the store.
fn read_applied(r: &MetaView<'_>) -> Result<(Option<LogId>, StoredMembership), MetaError> {
    let last = r
        .raft_state(LAST_APPLIED)?
        .map(|b| from_json::<Option<LogId>>(LAST_APPLIED, &b))
        .transpose()?
        .flatten();
    let membership = r
        .raft_state(MEMBERSHIP)?
        .map(|b| from_json::<StoredMembership>(MEMBERSHIP, &b))
        .transpose()?
        .unwrap_or_default();
    Ok((last, membership))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err("storage task", e))?
}

impl MetaStateMachine {
    /// The state machine over `meta`, keeping its snapshot in `dir` (the
    /// node's raft directory, created durably when missing).
    ///
    /// # Errors
    ///
    /// The directory cannot be created, or the store's raft state does not
    /// decode.
    pub fn open(meta: MetaStore, dir: &Path) -> io::Result<Self> {
        durable::create_dir_all(&FileIo, dir)?;
        let (last, _) = meta.read(read_applied).map_err(meta_err("reading"))?;
        let (applied, _) = watch::channel(last);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Ok(Self {
            meta,
            dir: dir.to_path_buf(),
            applied,
            changes,
        })
    }

    /// The store it applies to.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The last applied log id, updated after each committed batch.
    pub fn subscribe_applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied.subscribe()
    }

    /// Every change from now on (see [`CHANGES_CAPACITY`]).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<MetaChange> {
        self.changes.subscribe()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Builds a snapshot of the store as of its last commit and makes it
    /// the current one.
    fn build(&self) -> io::Result<RaftSnapshot> {
        let (meta, body) = self
            .meta
            .read(|r| {
                let (last_log_id, last_membership) = read_applied(r)?;
                let tables = r.export_replicated()?;
                Ok::<_, MetaError>((
                    SnapshotMeta {
                        last_log_id,
                        last_membership,
                    },
                    SnapshotBody { tables },
                ))
            })
            .map_err(meta_err("reading for a snapshot"))?;
        let bytes = snapshot_format::encode(&meta, &body).map_err(|e| io_err("snapshot", e))?;
        durable::write_atomic(&FileIo, &self.dir, SNAPSHOT_FILE, &bytes)?;
        Ok(RaftSnapshot {
            meta,
            snapshot: bytes,
        })
    }

    /// Applies `entries` (already in log order) in one transaction.
    fn apply_batch(&self, entries: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let (answers, changes, last) = self
            .meta
            .write(|b| {
                let (mut last, _) = read_applied(b)?;
                let mut answers = Vec::with_capacity(entries.len());
                let mut changes = Vec::new();
                for (entry, responder) in entries {
                    if last.as_ref().is_some_and(|l| entry.log_id.index <= l.index) {
                        // Applied before a crash that lost the answer:
                        // the store has it already.
                        answers.push((responder, MetaResponse::Done));
                        continue;
                    }
                    let response = match &entry.payload {
                        EntryPayload::Blank => MetaResponse::Done,
                        EntryPayload::Normal(command) => {
                            let response = apply_command(b, command)?;
                            changes.push(MetaChange::Applied(Box::new(AppliedCommand {
                                log_id: entry.log_id,
                                command: command.clone(),
                                response: response.clone(),
                            })));
                            response
                        }
                        EntryPayload::Membership(m) => {
                            let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                            b.put_raft_state(MEMBERSHIP, &to_json("membership", &stored)?)?;
                            MetaResponse::Done
                        }
                    };
                    last = Some(entry.log_id);
                    answers.push((responder, response));
                }
                b.put_raft_state(LAST_APPLIED, &to_json("log id", &last)?)?;
                Ok::<_, MetaError>((answers, changes, last))
            })
            .map_err(meta_err("applying entries"))?;
        // Durable now: tell the waiting clients and the watchers.
        for (responder, response) in answers {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        self.applied.send_replace(last);
        for c in changes {
            // No receiver is not an error.
            let _ = self.changes.send(c);
        }
        Ok(())
    }

    fn install(&self, meta: &SnapshotMeta, bytes: &[u8]) -> io::Result<()> {
        let (in_file, body) = snapshot_format::decode(bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if &in_file != meta {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "metadata snapshot: its meta differs from the one it was sent with",
            ));
        }
        // The file first: a crash after it and before the store's commit
        // leaves a current snapshot newer than the store, which openraft
        // installs again at start.
        durable::write_atomic(&FileIo, &self.dir, SNAPSHOT_FILE, bytes)?;
        let removed = self
            .meta
            .write(|b| {
                let removed = b.replace_replicated(&body.tables)?;
                b.put_raft_state(LAST_APPLIED, &to_json("log id", &meta.last_log_id)?)?;
                b.put_raft_state(MEMBERSHIP, &to_json("membership", &meta.last_membership)?)?;
                Ok::<_, MetaError>(removed)
            })
            .map_err(meta_err("installing a snapshot"))?;
        self.applied.send_replace(meta.last_log_id);
        let _ = self.changes.send(MetaChange::SnapshotInstalled {
            last_log_id: meta.last_log_id,
            removed_topics: removed.iter().map(TopicSpec::from).collect(),
        });
        Ok(())
    }

    fn current(&self) -> io::Result<Option<RaftSnapshot>> {
        let bytes = match std::fs::read(self.snapshot_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = snapshot_format::decode_meta(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some(RaftSnapshot {
            meta,
            snapshot: bytes,
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<RaftSnapshot, io::Error> {
        let this = self.clone();
        blocking(move || this.build()).await
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let this = self.clone();
        blocking(move || this.meta.read(read_applied).map_err(meta_err("reading"))).await
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut failed = None;
        while let Some(item) = entries.next().await {
            match item {
                Ok(e) => batch.push(e),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // What arrived before a read error is still applied, in order.
        let this = self.clone();
        blocking(move || this.apply_batch(batch)).await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || this.install(&meta, &snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<RaftSnapshot>, io::Error> {
        let this = self.clone();
        blocking(move || this.current()).await
    }
}
