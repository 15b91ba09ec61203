//! Test harness: an in-process network that delivers each openraft message
//! by calling the target node's `Raft` handle directly, and a cluster of
//! nodes with real files in temporary directories. It exists for tests
//! only; nodes talk over the peer QUIC transport in production.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use strongbox_cluster::command::{AclRuleSpec, AclSpec, DurabilitySpec, EffectSpec, TopicSpec};
use strongbox_cluster::{
    MetaCommand, MetaRaft, MetaRaftConfig, MetaResponse, NodeId, NodeInfo, ProposeError, Raft,
    RaftSnapshot, Role, TypeConfig,
};
use strongbox_storage::meta::MetaStore;

/// Generous bound for anything a test waits on (elections, catch-up) on a
/// loaded machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The nodes a message can reach: those registered and not cut off.
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Option<Raft> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub fn add(&self, id: NodeId, raft: Raft) {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, raft);
    }

    pub fn remove(&self, id: NodeId) {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// A connection from one node to `target`.
pub struct Connection {
    router: Router,
    target: NodeId,
}

impl Connection {
    fn raft(&self) -> Result<Raft, Unreachable<TypeConfig>> {
        self.router
            .get(self.target)
            .ok_or_else(|| Unreachable::from_string(format!("node {} is down", self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.raft()?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.raft()?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::type_config::alias::VoteOf<TypeConfig>,
        snapshot: RaftSnapshot,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let raft = self.raft()?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

/// A node of a test cluster: its data directory and, while it runs, its
/// handle.
pub struct TestNode {
    pub id: NodeId,
    pub data: PathBuf,
    pub node: Option<MetaRaft>,
}

/// Nodes with real files in one temporary directory, talking through a
/// [`Router`].
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub router: Router,
    pub nodes: BTreeMap<NodeId, TestNode>,
    pub config: fn(NodeId) -> MetaRaftConfig,
}

pub fn info(id: NodeId) -> NodeInfo {
    NodeInfo {
        peer_addr: format!("127.0.0.1:{}", 7000 + id),
        client_addr: format!("127.0.0.1:{}", 9000 + id),
    }
}

/// Short timeouts, still generous enough for a loaded 2-core machine.
pub fn fast_config(id: NodeId) -> MetaRaftConfig {
    MetaRaftConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(800),
        election_timeout_max: Duration::from_millis(1600),
        ..MetaRaftConfig::new(id)
    }
}

impl TestCluster {
    pub fn new(config: fn(NodeId) -> MetaRaftConfig) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            router: Router::default(),
            nodes: BTreeMap::new(),
            config,
        }
    }

    /// Starts node `id` on its files (new or existing).
    pub async fn start(&mut self, id: NodeId) -> MetaRaft {
        let data = self.dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let meta = MetaStore::open(data.join("meta.redb")).expect("meta store");
        let node = MetaRaft::start(
            &(self.config)(id),
            &strongbox_cluster::raft_dir(&data),
            meta,
            self.router.clone(),
        )
        .await
        .expect("start");
        self.router.add(id, node.raft().clone());
        self.nodes.insert(
            id,
            TestNode {
                id,
                data,
                node: Some(node.clone()),
            },
        );
        node
    }

    /// Starts nodes `ids` and forms a group of them, initialized on the first.
    pub async fn start_group(config: fn(NodeId) -> MetaRaftConfig, ids: &[NodeId]) -> Self {
        let mut c = Self::new(config);
        for id in ids {
            c.start(*id).await;
        }
        let members: BTreeMap<_, _> = ids.iter().map(|id| (*id, info(*id))).collect();
        let first = ids.first().copied().expect("a node");
        c.node(first).initialize(members).await.expect("initialize");
        c.leader().await;
        c
    }

    pub fn node(&self, id: NodeId) -> &MetaRaft {
        self.nodes
            .get(&id)
            .and_then(|n| n.node.as_ref())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn running(&self) -> impl Iterator<Item = &MetaRaft> {
        self.nodes.values().filter_map(|n| n.node.as_ref())
    }

    /// Stops node `id` (cut off, tasks ended, files closed); its files stay.
    pub async fn stop(&mut self, id: NodeId) {
        self.router.remove(id);
        let node = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.node.take())
            .expect("running");
        node.shutdown().await.expect("shutdown");
        drop(node);
    }

    /// The leader the running nodes agree on, waiting up to [`WAIT`].
    pub async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for n in self.running() {
                let s = n.status();
                if s.role == Role::Leader && s.leader == Some(s.node_id) {
                    return s.node_id;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {WAIT:?}: {:?}",
                self.running().map(MetaRaft::status).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes `cmd` through the leader, following `NotLeader` hints.
    pub async fn propose(&self, cmd: MetaCommand) -> MetaResponse {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut target = self.leader().await;
        loop {
            match self.node(target).propose(cmd.clone()).await {
                Ok(r) => return r,
                Err(ProposeError::NotLeader { leader }) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no leader took {cmd}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    target = match leader {
                        Some((id, _)) if self.nodes.get(&id).is_some_and(|n| n.node.is_some()) => {
                            id
                        }
                        _ => self.leader().await,
                    };
                }
                Err(e) => panic!("proposing {cmd}: {e}"),
            }
        }
    }

    /// Waits until every running node applied every entry `id` has in its
    /// log. (Not `id`'s applied index: openraft updates it in its metrics
    /// a moment after a proposal's answer.)
    pub async fn converge(&self, id: NodeId) {
        let target = self.node(id).status().last_log_index;
        for n in self.running() {
            n.wait_for(WAIT, "catching up", |s| s.applied_index >= target)
                .await
                .expect("caught up");
        }
    }
}

pub fn topic(name: &str, id: u8, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        topic_id: [id; 16],
        created_at: 1_700_000_000_000,
        partitions,
        durability: DurabilitySpec::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    }
}

pub fn create_topic(name: &str, id: u8, replicas: &[NodeId]) -> MetaCommand {
    MetaCommand::CreateTopic {
        topic: topic(name, id, 2),
        replicas: vec![replicas.to_vec(); 2],
    }
}

pub fn allow(principal: &str, topic: &str) -> MetaCommand {
    MetaCommand::PutAcl {
        acl: AclSpec {
            rule: AclRuleSpec {
                principal: principal.to_owned(),
                topic: topic.to_owned(),
                operations: 0b11,
                effect: EffectSpec::Allow,
                expires_at: None,
            },
            request_id: None,
            created_at: 5,
        },
    }
}
