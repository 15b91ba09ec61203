//! [`MetaRaft`]: a node's handle on the metadata group.
//!
//! It builds the openraft node from a [`MetaRaftConfig`], the node's files
//! and a network, and offers what a broker needs: propose a command and get
//! its answer (or the leader to send it to), change the membership, read
//! the group's status, and make sure a read is not stale. The network is
//! any `openraft::network::RaftNetworkFactory`: the glue over the peer
//! transport in production, direct calls in tests. The receiving side of
//! that network calls [`MetaRaft::raft`]'s `append_entries`, `vote`,
//! `pre_vote` and `install_full_snapshot`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::{ChangeMembers, Instant as _, ReadPolicy, ServerState, SnapshotPolicy};
use strongbox_storage::meta::MetaStore;
use tokio::sync::{broadcast, watch};

use crate::command::{MetaCommand, MetaResponse};
use crate::log_store::MetaLogStore;
use crate::state_machine::{MetaChange, MetaStateMachine, SnapshotData};
use crate::types::{LogId, NodeId, NodeInfo, Raft, TypeConfig};

/// Most voters of the metadata group: `cluster add-node` makes a node a
/// voter up to this many, and a learner beyond. Five voters survive two
/// failures; more would slow every commit and survive no more in practice.
pub const MAX_VOTERS: usize = 5;

/// The directory of the group's files inside a node's data directory.
pub const RAFT_DIR: &str = "raft";

/// The raft directory of the data directory `data_dir`.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(RAFT_DIR)
}

/// How a node takes part in the metadata group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRaftConfig {
    /// This node's id (never reused).
    pub node_id: NodeId,
    /// A name shared by the whole cluster, in openraft's logs.
    pub cluster_name: String,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time between these two
    /// starts an election. Both must exceed the heartbeat interval.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log before it) after this many
    /// entries since the last one; never when `None`.
    pub snapshot_after_entries: Option<u64>,
    /// Entries kept in the log behind a snapshot, so that a follower a
    /// little behind catches up from the log rather than a snapshot.
    pub keep_entries_after_snapshot: u64,
}

impl MetaRaftConfig {
    /// Defaults for a node on a LAN: heartbeats every 250 ms, elections
    /// after 1 to 2 s, a snapshot every 10 000 entries, 1 000 kept.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            cluster_name: "strongbox".into(),
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_after_entries: Some(10_000),
            keep_entries_after_snapshot: 1_000,
        }
    }

    fn to_openraft(&self) -> Result<openraft::Config, ClusterError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            snapshot_policy: match self.snapshot_after_entries {
                Some(n) => SnapshotPolicy::LogsSinceLast(n),
                None => SnapshotPolicy::Never,
            },
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            ..openraft::Config::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::Config(e.to_string()))
    }
}

/// Errors starting or stopping a node.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration is not usable.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// The node's raft files cannot be opened or created.
    #[error("cannot open the cluster state in {path}: {source}")]
    Storage {
        /// The raft directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// openraft stopped (a storage failure, or a shutdown).
    #[error("the metadata group stopped on this node: {0}")]
    Stopped(String),
    /// `initialize` was refused (the node already has a log or a vote, or
    /// is not among the members).
    #[error("cannot initialize the cluster: {0}")]
    Initialize(String),
}

/// Why a proposal, membership change or linearizable read did not happen.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader: send it to `leader` (when known).
    #[error("this node is not the metadata leader{}", leader_hint(.leader))]
    NotLeader {
        /// The leader's id and addresses, when known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The entry was appended, then this node lost its leadership before
    /// it committed: it may or may not be applied. Retry only a command
    /// whose repetition is harmless, or read the state first.
    #[error(
        "leadership changed before the change committed: it may or may not be applied \
         (check the state before retrying){}",
        leader_hint(.leader)
    )]
    OutcomeUnknown {
        /// The new leader, when known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// A membership change was refused (another one in progress, an
    /// unknown node, a learner not caught up...).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The leader could not reach a quorum to confirm it is still leader.
    #[error("the metadata leader cannot reach a quorum: {0}")]
    NoQuorum(String),
    /// The node stopped.
    #[error("the metadata group stopped on this node: {0}")]
    Stopped(String),
}

fn leader_hint(leader: &Option<(NodeId, NodeInfo)>) -> String {
    match leader {
        Some((id, info)) => format!(" (the leader is node {id} at {})", info.client_addr),
        None => " (no leader is known yet: retry shortly)".into(),
    }
}

fn forward(f: &ForwardToLeader<TypeConfig>) -> Option<(NodeId, NodeInfo)> {
    match (&f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => Some((*id, node.clone())),
        _ => None,
    }
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: forward(&f),
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            ProposeError::OutcomeUnknown {
                leader: forward(&f),
            }
        }
        RaftError::APIError(other) => ProposeError::Membership(other.to_string()),
        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
    }
}

/// A node's role in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Orders the writes.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter asking for votes.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Stopped.
    Shutdown,
}

/// One member as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// Its addresses.
    pub info: NodeInfo,
    /// Whether it votes.
    pub voter: bool,
    /// The highest log index known to be on it (leader only).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's last one (leader only).
    pub lag: Option<u64>,
    /// Time since it last acknowledged the leader (leader only; the leader
    /// itself is 0).
    pub last_contact: Option<Duration>,
}

/// The group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The last index known committed.
    pub committed_index: Option<u64>,
    /// The last index applied to its store.
    pub applied_index: Option<u64>,
    /// The last index in its current snapshot.
    pub snapshot_index: Option<u64>,
    /// The last index removed from its log (covered by a snapshot).
    pub purged_index: Option<u64>,
    /// Every member, by id.
    pub members: Vec<MemberStatus>,
}

/// A node's handle on the metadata group. Cheap to clone.
#[derive(Clone)]
pub struct MetaRaft {
    node_id: NodeId,
    raft: Raft,
    state_machine: MetaStateMachine,
    dir: Arc<PathBuf>,
}

impl std::fmt::Debug for MetaRaft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaRaft")
            .field("node_id", &self.node_id)
            .field("dir", &self.dir)
            .finish()
    }
}

impl MetaRaft {
    /// Opens the node's log in `raft_dir` (see [`raft_dir`]) and its state
    /// machine over `meta`, and starts the node. A node whose files hold a
    /// log or vote rejoins the group; a new one waits to be initialized
    /// ([`MetaRaft::initialize`]) or added by the leader.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Config`], [`ClusterError::Storage`],
    /// [`ClusterError::Stopped`].
    pub async fn start<N>(
        config: &MetaRaftConfig,
        raft_dir: &Path,
        meta: MetaStore,
        network: N,
    ) -> Result<Self, ClusterError>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        let raft_config = Arc::new(config.to_openraft()?);
        let storage_err = |source| ClusterError::Storage {
            path: raft_dir.display().to_string(),
            source,
        };
        let dir = raft_dir.to_path_buf();
        let (log, state_machine) = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((
                MetaLogStore::open(&dir)?,
                MetaStateMachine::open(meta, &dir)?,
            ))
        })
        .await
        .map_err(|e| ClusterError::Stopped(e.to_string()))?
        .map_err(storage_err)?;
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log,
            state_machine.clone(),
        )
        .await
        .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        Ok(Self {
            node_id: config.node_id,
            raft,
            state_machine,
            dir: Arc::new(raft_dir.to_path_buf()),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The openraft node, for the receiving side of the network
    /// (`append_entries`, `vote`, `pre_vote`, `install_full_snapshot`).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The node's metadata store (the state machine). Read it freely;
    /// write replicated tables only through [`MetaRaft::propose`].
    pub fn meta(&self) -> &MetaStore {
        self.state_machine.meta()
    }

    /// The last applied log id, updated after every applied batch or
    /// installed snapshot: wait on it to refresh caches (ACLs, topics).
    pub fn subscribe_applied(&self) -> watch::Receiver<Option<LogId>> {
        self.state_machine.subscribe_applied()
    }

    /// Every applied command and installed snapshot from now on, in order.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<MetaChange> {
        self.state_machine.subscribe_changes()
    }

    /// Forms a new group of `members` (voters). Call it once, on one node of
    /// a new cluster whose nodes all started empty; the others learn the
    /// membership from the leader.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Initialize`] when the node has a log or vote already
    /// or is not among `members`; [`ClusterError::Stopped`].
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<(), ClusterError> {
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => ClusterError::Initialize(e.to_string()),
            RaftError::Fatal(f) => ClusterError::Stopped(f.to_string()),
        })
    }

    /// Proposes `command`; returns its answer once it is committed by a
    /// quorum and applied (durably) to this node's store.
    ///
    /// # Errors
    ///
    /// [`ProposeError::NotLeader`] (with the leader to send it to, when
    /// known); [`ProposeError::OutcomeUnknown`]; [`ProposeError::Stopped`].
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaResponse, ProposeError> {
        let written = self.raft.client_write(command).await.map_err(write_error)?;
        Ok(written.data)
    }

    /// Adds `id` as a learner (it receives the log but does not vote) and
    /// waits until it has caught up.
    ///
    /// # Errors
    ///
    /// As [`MetaRaft::propose`]; [`ProposeError::Membership`].
    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), ProposeError> {
        self.raft
            .add_learner(id, info, true)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Makes the learner `id` a voter.
    ///
    /// # Errors
    ///
    /// As [`MetaRaft::add_learner`].
    pub async fn promote(&self, id: NodeId) -> Result<(), ProposeError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// `cluster add-node`: adds `id` as a learner and waits for it to catch
    /// up; then makes it a voter while the group has fewer than
    /// [`MAX_VOTERS`] voters, and otherwise leaves it a learner (it follows
    /// the group and serves, without voting). Adding a learner again
    /// promotes it once there is room. Returns true when `id` votes.
    ///
    /// # Errors
    ///
    /// As [`MetaRaft::add_learner`].
    pub async fn add_node(&self, id: NodeId, info: NodeInfo) -> Result<bool, ProposeError> {
        self.add_learner(id, info).await?;
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            return Ok(true);
        }
        if voters.len() >= MAX_VOTERS {
            return Ok(false);
        }
        self.promote(id).await?;
        Ok(true)
    }

    /// `cluster remove-node`: removes `id` from the group, voter or learner.
    /// Its id must never be used again.
    ///
    /// # Errors
    ///
    /// As [`MetaRaft::add_learner`]; [`ProposeError::Membership`] when `id`
    /// is not a member.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ProposeError> {
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let m = membership.membership();
        let change = if m.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if m.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ProposeError::Membership(format!(
                "node {id} is not a member of the cluster"
            )));
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Returns once this node's store holds every change committed before
    /// the call (confirming with a quorum that this node is still the
    /// leader): a read of the store after it is linearizable.
    ///
    /// # Errors
    ///
    /// [`ProposeError::NotLeader`]; [`ProposeError::NoQuorum`];
    /// [`ProposeError::Stopped`].
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        use openraft::error::LinearizableReadError;
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| match e {
                RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
                    ProposeError::NotLeader {
                        leader: forward(&f),
                    }
                }
                RaftError::APIError(other) => ProposeError::NoQuorum(other.to_string()),
                RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
            })?;
        Ok(())
    }

    /// The leader this node knows of, with its addresses: the hint for a
    /// client that must go to the leader.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    /// Every member (voters and learners, both sides of a membership
    /// change) with its addresses, as this node knows them; empty on a node
    /// that has not joined a group yet.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    /// The group as this node sees it (from openraft's metrics; lag and
    /// last contact are known on the leader only).
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let now = openraft::TokioInstant::now();
        let members = membership
            .nodes()
            .map(|(id, info)| {
                let matched_index = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map(|l| l.index));
                let last_contact = m.heartbeat.as_ref().and_then(|h| h.get(id)).map(|t| {
                    t.as_ref()
                        .map(|t| now.saturating_duration_since((*t).into_inner()))
                });
                let (matched_index, last_contact) = if *id == m.id && role == Role::Leader {
                    (Some(m.last_log_index), Some(Some(Duration::ZERO)))
                } else {
                    (matched_index, last_contact)
                };
                let matched = matched_index.flatten();
                let lag = match (role, m.last_log_index) {
                    (Role::Leader, Some(last)) => Some(last.saturating_sub(matched.unwrap_or(0))),
                    _ => None,
                };
                MemberStatus {
                    id: *id,
                    info: info.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag,
                    last_contact: last_contact.flatten(),
                }
            })
            .collect();
        ClusterStatus {
            node_id: m.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed_index: m.cluster_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            purged_index: m.purged.as_ref().map(|l| l.index),
            members,
        }
    }

    /// Waits until this node's metrics satisfy `ready` or `timeout` passes;
    /// returns the status that satisfied it.
    ///
    /// # Errors
    ///
    /// [`ProposeError::Stopped`] when the node stopped or the time ran out
    /// (the message says which).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, ProposeError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status();
            if ready(&status) {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ProposeError::Stopped("metrics closed".into())),
                Err(_) => {
                    return Err(ProposeError::Stopped(format!(
                        "timed out after {timeout:?} waiting for {what}; last status: {status:?}"
                    )));
                }
            }
        }
    }

    /// Waits until the leader this node knows, or the term, differs from
    /// `seen` (`(leader, term)`), and returns the new pair; at once when
    /// it differs already.
    ///
    /// # Errors
    ///
    /// [`ProposeError::Stopped`] when the node stopped.
    pub async fn leader_change(
        &self,
        seen: (Option<NodeId>, u64),
    ) -> Result<(Option<NodeId>, u64), ProposeError> {
        let mut rx = self.raft.metrics();
        loop {
            let now = {
                let m = rx.borrow_watched();
                (m.current_leader, m.current_term)
            };
            if now != seen {
                return Ok(now);
            }
            rx.changed()
                .await
                .map_err(|_| ProposeError::Stopped("metrics closed".into()))?;
        }
    }

    /// Builds a snapshot now (and purges the log behind it as the policy
    /// allows), instead of waiting for the snapshot policy.
    ///
    /// # Errors
    ///
    /// [`ProposeError::Stopped`].
    pub async fn snapshot_now(&self) -> Result<(), ProposeError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))
    }

    /// Stops the node: no more elections, replication or applying. Its
    /// files stay; [`MetaRaft::start`] on them rejoins the group.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Stopped`] when its tasks did not end cleanly.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))
    }
}
