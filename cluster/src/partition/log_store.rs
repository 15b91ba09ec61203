//! openraft's log storage over a partition's own log
//! ([`strongbox_storage::log::raft::RaftLog`]): the Raft log and the
//! partition log are one, so a batch is written and fsynced once.
//!
//! - `append` writes the entries' frames (readable when it returns) and
//!   hands the log's group-commit waiter to one completion task per store,
//!   which calls openraft's flush callback after the fdatasync that covers
//!   them, in append order.
//! - `truncate_after`, `purge`, `save_vote` map to the log's methods of the
//!   same names; `save_committed` only records the committed log id in
//!   memory (the log writes it with its state file when that is written
//!   for another reason), so a commit costs no fsync.
//!
//! Blocking storage calls run on tokio's blocking pool.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;

use bytes::Bytes;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use strongbox_storage::log::raft::{RaftEntry, RaftLog, StoredEntry};
use strongbox_storage::log::raft_format::{RaftFrameKind, RaftLogId, RaftVote};
use strongbox_storage::log::{Durable, LogError};
use tokio::sync::mpsc;

use super::types::{BatchBytes, PartitionConfig, PartitionEntry, PartitionLogId, PartitionVote};

/// A pending flush: the log's waiter and openraft's callback.
type Flush = (Durable, IOFlushed<PartitionConfig>);

/// A partition group's log storage. Cheap to clone; clones share the log.
#[derive(Clone)]
pub struct PartitionLogStore {
    log: Arc<RaftLog>,
    flushes: mpsc::UnboundedSender<Flush>,
}

impl Debug for PartitionLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLogStore")
            .field("dir", &self.log.dir())
            .finish()
    }
}

impl PartitionLogStore {
    /// The log storage over `log`. Must be called inside a tokio runtime:
    /// it starts the task that reports flushes to openraft, which ends when
    /// the last clone is dropped.
    pub fn new(log: Arc<RaftLog>) -> Self {
        let (flushes, mut rx) = mpsc::unbounded_channel::<Flush>();
        tokio::spawn(async move {
            // The log resolves its waiters in append order; awaiting them
            // one after the other reports them in that order too.
            while let Some((durable, callback)) = rx.recv().await {
                callback.io_completed(durable.await.map_err(log_io));
            }
        });
        Self { log, flushes }
    }

    /// The partition's log.
    pub fn log(&self) -> &Arc<RaftLog> {
        &self.log
    }
}

/// A storage error as openraft takes it.
pub(crate) fn log_io(e: LogError) -> io::Error {
    let kind = if e.is_damage() {
        io::ErrorKind::InvalidData
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, format!("partition log: {e}"))
}

/// Runs blocking log work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("partition log task: {e}")))?
        .map_err(log_io)
}

/// Runs blocking work that already speaks `io::Error` off the async
/// threads.
pub(crate) async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("partition storage task: {e}")))?
}

pub(crate) fn to_storage_id(id: &PartitionLogId) -> RaftLogId {
    RaftLogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub(crate) fn from_storage_id(id: RaftLogId) -> PartitionLogId {
    PartitionLogId::new(
        LeaderId {
            term: id.term,
            node_id: id.node_id,
        },
        id.index,
    )
}

/// The frame an entry is stored as.
fn to_frame(entry: PartitionEntry) -> io::Result<RaftEntry> {
    let log_id = to_storage_id(&entry.log_id);
    let (kind, payload) = match entry.payload {
        EntryPayload::Blank => (RaftFrameKind::Blank, Bytes::new()),
        EntryPayload::Normal(batch) => (RaftFrameKind::Records, batch.0),
        EntryPayload::Membership(m) => (
            RaftFrameKind::Membership,
            Bytes::from(serde_json::to_vec(&m).map_err(io::Error::other)?),
        ),
    };
    Ok(RaftEntry {
        log_id,
        kind,
        payload,
    })
}

/// The entry a frame holds.
fn from_frame(stored: StoredEntry) -> io::Result<PartitionEntry> {
    let payload = match stored.kind {
        RaftFrameKind::Blank => EntryPayload::Blank,
        RaftFrameKind::Records => EntryPayload::Normal(BatchBytes(stored.payload)),
        RaftFrameKind::Membership => {
            EntryPayload::Membership(serde_json::from_slice(&stored.payload).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "partition log: the membership at index {} does not decode ({e})",
                        stored.log_id.index
                    ),
                )
            })?)
        }
    };
    Ok(PartitionEntry {
        log_id: from_storage_id(stored.log_id),
        payload,
    })
}

fn index_range<RB: RangeBounds<u64>>(range: &RB) -> Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl RaftLogReader<PartitionConfig> for PartitionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<PartitionEntry>, io::Error> {
        let range = index_range(&range);
        let log = Arc::clone(&self.log);
        let stored = blocking(move || log.entries(range)).await?;
        stored.into_iter().map(from_frame).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<PartitionVote>, io::Error> {
        Ok(self.log.vote().map(|v| PartitionVote {
            leader_id: LeaderId {
                term: v.term,
                node_id: v.node_id,
            },
            committed: v.committed,
        }))
    }
}

impl RaftLogStorage<PartitionConfig> for PartitionLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<PartitionConfig>, io::Error> {
        let state = self.log.state();
        Ok(LogState {
            last_purged_log_id: state.last_purged.map(from_storage_id),
            last_log_id: state.last_log_id().map(from_storage_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &PartitionVote) -> Result<(), io::Error> {
        let vote = RaftVote {
            term: vote.leader_id.term,
            node_id: vote.leader_id.node_id,
            committed: vote.committed,
        };
        let log = Arc::clone(&self.log);
        blocking(move || log.save_vote(vote)).await
    }

    async fn save_committed(&mut self, committed: Option<PartitionLogId>) -> Result<(), io::Error> {
        self.log
            .set_committed(committed.as_ref().map(to_storage_id));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<PartitionLogId>, io::Error> {
        Ok(self.log.committed().map(from_storage_id))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<PartitionConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = PartitionEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let frames = entries
            .into_iter()
            .map(to_frame)
            .collect::<io::Result<Vec<_>>>()?;
        let log = Arc::clone(&self.log);
        match blocking(move || log.append(frames)).await {
            Ok(durable) => {
                // The entries are readable now; openraft hears of the
                // flush once the fdatasync that covers them returned.
                if let Err(mpsc::error::SendError((durable, callback))) =
                    self.flushes.send((durable, callback))
                {
                    callback.io_completed(durable.await.map_err(log_io));
                }
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<PartitionLogId>,
    ) -> Result<(), io::Error> {
        let keep = last_log_id.map(|l| l.index);
        let log = Arc::clone(&self.log);
        blocking(move || log.truncate_after(keep)).await
    }

    async fn purge(&mut self, log_id: PartitionLogId) -> Result<(), io::Error> {
        let id = to_storage_id(&log_id);
        let log = Arc::clone(&self.log);
        blocking(move || log.purge(id, None)).await
    }
}
