//! This node's replicas of the partition groups: which run, how one
//! starts and forms its group, where a write goes.
//!
//! A node runs a group for every partition whose replicas include it. The
//! caller opens the replica's log (it owns the data directory and the key
//! manager) and hands it to [`PartitionGroups::start`]; the group then
//! answers its messages through the shared [`GroupRouter`] and sends its
//! own through the peer client ([`GroupNetwork`]). The first node of a
//! partition's replica list, its preferred leader, forms the group the
//! first time its replica starts with an empty log; every later start, on
//! any node, rejoins the group from the replica's own files.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver as _;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, SnapshotPolicy};
use strongbox_peer::PeerClient;
use strongbox_storage::log::raft::RaftLog;
use tokio::sync::watch;

use crate::groups::{GroupId, GroupNetwork, GroupRouter};
use crate::partition::{
    Appended, BatchBytes, PartitionConfig, PartitionLogStore, PartitionStateMachine,
};
use crate::types::{NodeId, NodeInfo};

/// A partition group's `Raft`.
pub type PartitionRaft = Raft<PartitionConfig, PartitionStateMachine>;

/// Timing of the partition groups (the same for all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionGroupConfig {
    /// How often a leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time between these two
    /// starts an election.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
}

impl Default for PartitionGroupConfig {
    /// The metadata group's defaults: heartbeats every 250 ms, elections
    /// after 1 to 2 s (a new leader within a few seconds of a node's loss).
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
        }
    }
}

impl PartitionGroupConfig {
    fn to_openraft(&self) -> Result<Config, PartitionGroupError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            cluster_name: "strongbox-partition".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            // The log is the partition's: retention decides what goes, not
            // a snapshot policy of openraft's.
            snapshot_policy: SnapshotPolicy::Never,
            ..Config::default()
        }
        .validate()
        .map_err(|e| PartitionGroupError::Config(e.to_string()))
    }
}

/// Errors of the partition groups.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionGroupError {
    /// The timing is not usable.
    #[error("partition group configuration: {0}")]
    Config(String),
    /// This node runs no replica of the group.
    #[error("this node runs no replica of partition group {0}")]
    NotRunning(GroupId),
    /// The replica's state machine cannot be opened from its log.
    #[error("partition group {group}: {message}")]
    Open {
        /// The group.
        group: GroupId,
        /// What failed.
        message: String,
    },
    /// This node's replica is not the leader; `leader` is the one it knows
    /// of.
    #[error("this node does not lead partition group {group}{}", match .leader {
        Some(l) => format!(" (node {l} does)"),
        None => " (no leader is known yet: retry shortly)".into(),
    })]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The group stopped (shutdown, or a storage failure that stopped
    /// it); the message says which.
    #[error("partition group {group} stopped: {message}")]
    Stopped {
        /// The group.
        group: GroupId,
        /// What happened.
        message: String,
    },
}

/// One replica this node runs.
#[derive(Clone)]
pub struct Replica {
    /// Its group's `Raft` on this node.
    pub raft: PartitionRaft,
    /// Its log.
    pub log: Arc<RaftLog>,
    /// The committed offset: records below it may be read.
    pub committed: watch::Receiver<u64>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("committed", &*self.committed.borrow())
            .finish_non_exhaustive()
    }
}

/// This node's replicas, by group.
pub struct PartitionGroups {
    node_id: NodeId,
    client: PeerClient,
    config: Arc<Config>,
    router: Arc<GroupRouter<PartitionConfig, PartitionStateMachine>>,
    running: Mutex<HashMap<GroupId, Replica>>,
}

impl std::fmt::Debug for PartitionGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionGroups")
            .field("node_id", &self.node_id)
            .field("running", &self.router.ids())
            .finish_non_exhaustive()
    }
}

impl PartitionGroups {
    /// Node `node_id`'s groups, sending through `client`.
    ///
    /// # Errors
    ///
    /// [`PartitionGroupError::Config`] for unusable timing.
    pub fn new(
        node_id: NodeId,
        client: PeerClient,
        config: &PartitionGroupConfig,
    ) -> Result<Self, PartitionGroupError> {
        Ok(Self {
            node_id,
            client,
            config: Arc::new(config.to_openraft()?),
            router: Arc::new(GroupRouter::new()),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The peer handler of the groups' messages (to serve, with the
    /// metadata group's, through [`crate::groups::Routes`]).
    pub fn router(&self) -> Arc<GroupRouter<PartitionConfig, PartitionStateMachine>> {
        self.router.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Replica>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts this node's replica of `group` on `log` and answers the
    /// group's messages from now on. `replicas` are the partition's
    /// replicas in order, this node among them: when this node is the
    /// first and the log has never belonged to a group, it forms the group
    /// with all of them as voters. A group already running is returned as
    /// it is.
    ///
    /// # Errors
    ///
    /// The state machine cannot be opened from the log, or openraft refuses
    /// to start.
    pub async fn start(
        &self,
        group: GroupId,
        replicas: &[(NodeId, NodeInfo)],
        log: Arc<RaftLog>,
    ) -> Result<Replica, PartitionGroupError> {
        if let Some(r) = self.get(group) {
            return Ok(r);
        }
        let open = |message: String| PartitionGroupError::Open { group, message };
        let fresh = log.vote().is_none() && log.state().last_log_id().is_none();
        let sm = PartitionStateMachine::open(log.clone()).map_err(|e| open(e.to_string()))?;
        let committed = sm.subscribe_committed();
        let raft = PartitionRaft::new(
            self.node_id,
            self.config.clone(),
            GroupNetwork::<PartitionConfig>::new(self.client.clone(), group),
            PartitionLogStore::new(log.clone()),
            sm,
        )
        .await
        .map_err(|e| open(e.to_string()))?;
        let replica = Replica {
            raft: raft.clone(),
            log,
            committed,
        };
        self.router.insert(group, raft.clone());
        self.lock().insert(group, replica.clone());
        if fresh && replicas.first().map(|(id, _)| *id) == Some(self.node_id) {
            let members: BTreeMap<NodeId, NodeInfo> = replicas.iter().cloned().collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(%group, "partition group formed"),
                // Formed already (a start that raced an earlier one).
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(open(format!("forming the group: {e}"))),
            }
        }
        Ok(replica)
    }

    /// This node's replica of `group`, when it runs one.
    pub fn get(&self, group: GroupId) -> Option<Replica> {
        self.lock().get(&group).cloned()
    }

    /// The groups this node runs, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.router.ids()
    }

    /// Stops this node's replica of `group` (its files stay as they are).
    ///
    /// # Errors
    ///
    /// [`PartitionGroupError::NotRunning`], or openraft failed to stop.
    pub async fn stop(&self, group: GroupId) -> Result<(), PartitionGroupError> {
        self.router.remove(group);
        let replica = self
            .lock()
            .remove(&group)
            .ok_or(PartitionGroupError::NotRunning(group))?;
        replica
            .raft
            .shutdown()
            .await
            .map_err(|e| PartitionGroupError::Stopped {
                group,
                message: e.to_string(),
            })
    }

    /// Stops every replica.
    pub async fn stop_all(&self) {
        for group in self.groups() {
            if let Err(e) = self.stop(group).await {
                tracing::warn!(%group, error = %e, "partition group did not stop cleanly");
            }
        }
    }

    /// The leader of `group` as this node knows it.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        let metrics = self.get(group)?.raft.metrics();
        metrics.borrow_watched().current_leader
    }

    /// Appends `batch` to `group` through this node, which must lead it;
    /// returns where its records are once a majority of the replicas,
    /// this one included, has it on disk.
    ///
    /// # Errors
    ///
    /// [`PartitionGroupError::NotLeader`] with the leader this node knows
    /// of; [`PartitionGroupError::NotRunning`]; [`PartitionGroupError::Stopped`].
    pub async fn write(
        &self,
        group: GroupId,
        batch: bytes::Bytes,
    ) -> Result<Appended, PartitionGroupError> {
        let replica = self
            .get(group)
            .ok_or(PartitionGroupError::NotRunning(group))?;
        match replica.raft.client_write(BatchBytes(batch)).await {
            Ok(done) => Ok(*done.response()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(PartitionGroupError::NotLeader {
                    group,
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(PartitionGroupError::Stopped {
                group,
                message: e.to_string(),
            }),
        }
    }
}
