//! A partition group's state machine: the committed offset.
//!
//! Applying a committed entry writes nothing: its records are in the log
//! already (the log is the Raft log). It moves the committed offset, the
//! end of the records consumers may read, to the end of the entry's
//! records, publishes it on a watch, and answers the proposer with the
//! entry's offsets. The last applied log id and membership are kept in
//! memory.
//!
//! A snapshot is "the log starts here": its meta (last log id, membership)
//! and the committed offset at that point, kept in the log's state file
//! (`RaftLog::save_snapshot_meta`). Building one reads no record. A
//! follower that installs one (it is behind its leader's retention) has
//! its log emptied and restarted at that offset; the records after it come
//! by ordinary replication. At open the state machine stands at its last
//! snapshot, and openraft applies the entries after it again up to the
//! committed log id the log kept.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use strongbox_storage::log::raft::RaftLog;
use tokio::sync::watch;

use super::log_store::{blocking_io, to_storage_id};
use super::types::{
    Appended, PartitionConfig, PartitionLogId, PartitionMembership, PartitionSnapshotMeta,
};

/// A partition snapshot's bytes: the JSON of `{"log_start_offset": N}`.
pub type PartitionSnapshotData = Vec<u8>;
/// A partition snapshot with its meta.
pub type PartitionSnapshot =
    openraft::type_config::alias::SnapshotOf<PartitionConfig, PartitionSnapshotData>;

/// What a snapshot holds besides its meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    /// The offset of the first record after the snapshot's last entry.
    log_start_offset: u64,
}

/// What the state file keeps of the current snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: PartitionSnapshotMeta,
    log_start_offset: u64,
}

#[derive(Debug)]
struct Applied {
    last_applied: Option<PartitionLogId>,
    membership: PartitionMembership,
    committed_offset: u64,
    snapshot: Option<StoredSnapshot>,
}

/// A partition group's state machine. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct PartitionStateMachine {
    log: Arc<RaftLog>,
    applied: Arc<Mutex<Applied>>,
    committed: Arc<watch::Sender<u64>>,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("partition state machine: {what}: {e}"),
    )
}

impl PartitionStateMachine {
    /// The state machine of the partition whose log is `log`, standing at
    /// the log's current snapshot (or at its start when it has none).
    ///
    /// # Errors
    ///
    /// The snapshot meta kept in the log's state file does not decode.
    pub fn open(log: Arc<RaftLog>) -> io::Result<Self> {
        let stored = log.snapshot_meta();
        let snapshot: Option<StoredSnapshot> = if stored.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&stored).map_err(|e| invalid("stored snapshot", e))?)
        };
        let applied = match &snapshot {
            Some(s) => Applied {
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                committed_offset: s.log_start_offset,
                snapshot: snapshot.clone(),
            },
            None => Applied {
                last_applied: None,
                membership: PartitionMembership::default(),
                committed_offset: log.state().log_start_offset,
                snapshot: None,
            },
        };
        let (committed, _) = watch::channel(applied.committed_offset);
        Ok(Self {
            log,
            applied: Arc::new(Mutex::new(applied)),
            committed: Arc::new(committed),
        })
    }

    /// The committed offset: records below it are committed and may be
    /// read. Its receiver wakes on every change.
    pub fn subscribe_committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The committed offset now.
    pub fn committed_offset(&self) -> u64 {
        self.lock().committed_offset
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves a snapshot of the state now in the log's state file.
    fn build(&self) -> io::Result<PartitionSnapshot> {
        let (meta, log_start_offset) = {
            let a = self.lock();
            (
                PartitionSnapshotMeta {
                    last_log_id: a.last_applied,
                    last_membership: a.membership.clone(),
                },
                a.committed_offset,
            )
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            log_start_offset,
        };
        let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        self.log
            .save_snapshot_meta(bytes)
            .map_err(super::log_store::log_io)?;
        self.lock().snapshot = Some(stored);
        Ok(PartitionSnapshot {
            meta,
            snapshot: body_bytes(log_start_offset)?,
        })
    }

    /// Installs a snapshot: the log restarts after its last entry at its
    /// log start offset, and the state machine stands there.
    fn install(&self, meta: &PartitionSnapshotMeta, bytes: &[u8]) -> io::Result<()> {
        let body: SnapshotBody =
            serde_json::from_slice(bytes).map_err(|e| invalid("snapshot", e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            log_start_offset: body.log_start_offset,
        };
        let encoded = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        if let Some(last) = &meta.last_log_id {
            // openraft purges the log up to the snapshot next; doing it here
            // first gives the log the offset it restarts at when the
            // snapshot reaches past its end.
            self.log
                .purge(to_storage_id(last), Some(body.log_start_offset))
                .map_err(super::log_store::log_io)?;
        }
        self.log
            .save_snapshot_meta(encoded)
            .map_err(super::log_store::log_io)?;
        {
            let mut a = self.lock();
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.committed_offset = body.log_start_offset;
            a.snapshot = Some(stored);
        }
        self.committed.send_replace(body.log_start_offset);
        Ok(())
    }

    fn current(&self) -> io::Result<Option<PartitionSnapshot>> {
        let Some(s) = self.lock().snapshot.clone() else {
            return Ok(None);
        };
        Ok(Some(PartitionSnapshot {
            meta: s.meta,
            snapshot: body_bytes(s.log_start_offset)?,
        }))
    }
}

fn body_bytes(log_start_offset: u64) -> io::Result<Vec<u8>> {
    serde_json::to_vec(&SnapshotBody { log_start_offset }).map_err(io::Error::other)
}

impl RaftSnapshotBuilder<PartitionConfig> for PartitionStateMachine {
    type SnapshotData = PartitionSnapshotData;

    async fn build_snapshot(&mut self) -> Result<PartitionSnapshot, io::Error> {
        let this = self.clone();
        blocking_io(move || this.build()).await
    }
}

impl RaftStateMachine<PartitionConfig> for PartitionStateMachine {
    type SnapshotData = PartitionSnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<PartitionLogId>, PartitionMembership), io::Error> {
        let a = self.lock();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<PartitionConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index;
            let answer = {
                let mut a = self.lock();
                let answer = match &entry.payload {
                    EntryPayload::Normal(_) => {
                        let (base_offset, record_count) =
                            self.log.offsets_of(index).ok_or_else(|| {
                                io::Error::other(format!(
                                    "partition state machine: entry {index} is committed but \
                                     not in the log"
                                ))
                            })?;
                        Appended {
                            base_offset,
                            record_count,
                        }
                    }
                    EntryPayload::Blank | EntryPayload::Membership(_) => Appended {
                        base_offset: a.committed_offset,
                        record_count: 0,
                    },
                };
                if let EntryPayload::Membership(m) = &entry.payload {
                    a.membership = PartitionMembership::new(Some(entry.log_id), m.clone());
                }
                a.last_applied = Some(entry.log_id);
                a.committed_offset = answer
                    .base_offset
                    .saturating_add(u64::from(answer.record_count));
                self.committed.send_replace(a.committed_offset);
                answer
            };
            if let Some(r) = responder {
                r.send(answer);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &PartitionSnapshotMeta,
        snapshot: PartitionSnapshotData,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        blocking_io(move || this.install(&meta, &snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<PartitionSnapshot>, io::Error> {
        self.current()
    }
}
