//! Three openraft nodes of one partition group in one process, each with
//! its own keys and a real encrypted `RaftLog`, talking through direct
//! calls: produced batches are committed with the same offsets on every
//! replica, the leader's loss elects another that keeps them, a restarted
//! node catches up from its files, a node behind its leader's purged log
//! is reset to the leader's log start by a snapshot, and no replica holds a
//! record in the clear or shares a data key with another.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogReader;
use strongbox_cluster::NodeInfo;
use strongbox_cluster::partition::{
    Appended, BatchBytes, PartitionConfig, PartitionLogStore, PartitionSnapshot,
    PartitionStateMachine, PartitionVote,
};
use strongbox_protocol::batch::BatchBuilder;
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::raft::RaftLog;
use strongbox_storage::log::{LogConfig, LogEnv};
use strongbox_storage::meta::MetaStore;
use tokio::time::timeout;

type Raft = openraft::Raft<PartitionConfig, PartitionStateMachine>;

/// Generous bound for elections and catch-up on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);
const MARKER: &[u8] = b"GROUP-PLAINTEXT-MARKER-9d2e";

#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, Raft>>>,
}

impl Router {
    fn get(&self, id: u64) -> Option<Raft> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
    fn set(&self, id: u64, raft: Option<Raft>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        match raft {
            Some(r) => nodes.insert(id, r),
            None => nodes.remove(&id),
        };
    }
}

struct Connection {
    router: Router,
    target: u64,
}

impl Connection {
    fn raft(&self) -> Result<Raft, Unreachable<PartitionConfig>> {
        self.router
            .get(self.target)
            .ok_or_else(|| Unreachable::from_string(format!("node {} is down", self.target)))
    }
}

impl RaftNetworkFactory<PartitionConfig> for Router {
    type Network = Connection;
    async fn new_client(&mut self, target: u64, _node: &NodeInfo) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetworkV2<PartitionConfig> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<PartitionConfig>, RPCError<PartitionConfig>> {
        self.raft()?
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<PartitionConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<PartitionConfig>, RPCError<PartitionConfig>> {
        self.raft()?
            .vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: PartitionVote,
        snapshot: PartitionSnapshot,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<PartitionConfig>, StreamingError<PartitionConfig>> {
        self.raft()?
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

/// One replica: its own key provider and store, its partition directory.
struct Replica {
    root: PathBuf,
    keys: Arc<KeyManager>,
    running: Option<(Raft, PartitionStateMachine, Arc<RaftLog>)>,
}

impl Replica {
    fn new(root: &Path) -> Self {
        let provider = FileKeyProvider::open(root.join("keys")).expect("keys");
        let meta = MetaStore::open(root.join("meta.redb")).expect("meta");
        Self {
            root: root.to_path_buf(),
            keys: Arc::new(KeyManager::new(Arc::new(provider), meta, 64)),
            running: None,
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("orders-0")
    }

    async fn start(&mut self, id: u64, router: &Router) -> Raft {
        let log = Arc::new(
            RaftLog::open(
                self.dir(),
                LogConfig::new([5; 16], 0, KekScope::Broker),
                self.keys.clone(),
                LogEnv::default(),
            )
            .expect("log"),
        );
        let sm = PartitionStateMachine::open(Arc::clone(&log)).expect("state machine");
        let config = openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 800,
            election_timeout_max: 1600,
            // Purges go as far as the snapshot (retention decides).
            max_in_snapshot_log_to_keep: 0,
            ..openraft::Config::default()
        }
        .validate()
        .expect("config");
        let raft = Raft::new(
            id,
            Arc::new(config),
            router.clone(),
            PartitionLogStore::new(Arc::clone(&log)),
            sm.clone(),
        )
        .await
        .expect("raft");
        router.set(id, Some(raft.clone()));
        self.running = Some((raft.clone(), sm, log));
        raft
    }

    async fn stop(&mut self, id: u64, router: &Router) {
        router.set(id, None);
        if let Some((raft, _, _)) = self.running.take() {
            raft.shutdown().await.expect("shutdown");
        }
    }

    fn sm(&self) -> &PartitionStateMachine {
        &self.running.as_ref().expect("running").1
    }

    async fn records(&self) -> Vec<(u64, Appended, Bytes)> {
        let (_, _, log) = self.running.as_ref().expect("running");
        let mut store = PartitionLogStore::new(Arc::clone(log));
        let entries = store.try_get_log_entries(0..).await.expect("read");
        entries
            .into_iter()
            .filter_map(|e| match e.payload {
                openraft::EntryPayload::Normal(b) => {
                    let (base_offset, record_count) =
                        log.offsets_of(e.log_id.index).expect("offsets");
                    Some((
                        e.log_id.index,
                        Appended {
                            base_offset,
                            record_count,
                        },
                        b.0,
                    ))
                }
                _ => None,
            })
            .collect()
    }
}

fn batch(n: usize, i: usize) -> BatchBytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for r in 0..n {
        let mut value = format!("record {i}.{r} ").into_bytes();
        value.extend_from_slice(MARKER);
        b.push(1_700_000_000_000, None, &[], &value).expect("push");
    }
    BatchBytes(b.finish().expect("finish"))
}

async fn leader_of(raft: &Raft) -> u64 {
    timeout(WAIT, async {
        let mut m = raft.metrics();
        loop {
            if let Some(l) = m.borrow_watched().current_leader {
                return l;
            }
            m.changed().await.expect("metrics");
        }
    })
    .await
    .expect("a leader within the bound")
}

/// Writes through `raft`, retrying while it answers that it cannot lead
/// yet (a new leader's lease, an election in progress): nothing was
/// proposed then.
async fn write(raft: &Raft, b: BatchBytes) -> Appended {
    timeout(WAIT, async {
        loop {
            match raft.client_write(b.clone()).await {
                Ok(resp) => return resp.data,
                Err(openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ForwardToLeader(_),
                )) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("write: {e}"),
            }
        }
    })
    .await
    .expect("written within the bound")
}

async fn committed_reaches(sm: &PartitionStateMachine, offset: u64) {
    let mut rx = sm.subscribe_committed();
    timeout(WAIT, async {
        while *rx.borrow_and_update() < offset {
            rx.changed().await.expect("watch");
        }
    })
    .await
    .expect("the committed offset reaches its target within the bound");
}

fn segment_ids(dir: &Path) -> BTreeSet<[u8; 16]> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .map(|p| {
            KeyEnvelope::decode(&std::fs::read(&p).expect("read"))
                .expect("envelope")
                .segment_id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commits_batches_with_the_same_offsets_on_every_replica_across_a_failover() {
    let root = tempfile::tempdir().expect("tmp");
    let router = Router::default();
    let mut replicas: BTreeMap<u64, Replica> = (1..=3)
        .map(|id| (id, Replica::new(&root.path().join(format!("node-{id}")))))
        .collect();
    for (id, r) in replicas.iter_mut() {
        r.start(*id, &router).await;
    }
    let members: BTreeMap<u64, NodeInfo> = (1..=3).map(|id| (id, NodeInfo::default())).collect();
    let first = replicas[&1].running.as_ref().expect("running").0.clone();
    first.initialize(members).await.expect("initialize");
    let leader = leader_of(&first).await;

    // Produce through the leader: each answer is the batch's offsets, given
    // once a majority has it on disk.
    let mut offset = 0u64;
    for i in 0..10 {
        let raft = replicas[&leader]
            .running
            .as_ref()
            .expect("running")
            .0
            .clone();
        let n = 1 + i % 3;
        assert_eq!(
            write(&raft, batch(n, i)).await,
            Appended {
                base_offset: offset,
                record_count: n as u32
            }
        );
        offset += n as u64;
    }
    for r in replicas.values() {
        committed_reaches(r.sm(), offset).await;
    }
    let on_leader = replicas[&leader].records().await;
    assert_eq!(on_leader.len(), 10);
    for r in replicas.values() {
        assert_eq!(
            r.records().await,
            on_leader,
            "the same log on every replica"
        );
    }

    // The leader goes away: another is elected and keeps everything.
    replicas
        .get_mut(&leader)
        .expect("leader")
        .stop(leader, &router)
        .await;
    let survivor = *replicas.keys().find(|id| **id != leader).expect("survivor");
    let raft = replicas[&survivor]
        .running
        .as_ref()
        .expect("running")
        .0
        .clone();
    let new_leader = timeout(WAIT, async {
        loop {
            let l = leader_of(&raft).await;
            if l != leader {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a new leader within the bound");
    let raft = replicas[&new_leader]
        .running
        .as_ref()
        .expect("running")
        .0
        .clone();
    assert_eq!(
        write(&raft, batch(2, 10)).await,
        Appended {
            base_offset: offset,
            record_count: 2
        }
    );
    offset += 2;

    // The old leader comes back on its files and catches up.
    replicas
        .get_mut(&leader)
        .expect("old leader")
        .start(leader, &router)
        .await;
    for r in replicas.values() {
        committed_reaches(r.sm(), offset).await;
    }
    let reference = replicas[&new_leader].records().await;
    assert_eq!(reference.len(), 11);
    assert_eq!(&reference[..10], &on_leader[..]);
    for r in replicas.values() {
        assert_eq!(r.records().await, reference);
    }

    // Each replica sealed under its own keys, and nothing is in the clear.
    let ids: Vec<BTreeSet<[u8; 16]>> = replicas.values().map(|r| segment_ids(&r.dir())).collect();
    for (i, a) in ids.iter().enumerate() {
        for b in ids.iter().skip(i + 1) {
            assert!(a.is_disjoint(b), "replicas share no segment or key");
        }
    }
    for (id, r) in replicas.iter_mut() {
        r.stop(*id, &router).await;
        for entry in std::fs::read_dir(r.dir()).expect("list") {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read");
            assert!(
                !data.windows(MARKER.len()).any(|w| w == MARKER),
                "{} holds a record in the clear",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_is_reset_to_the_leaders_log_start() {
    let root = tempfile::tempdir().expect("tmp");
    let router = Router::default();
    let mut replicas: BTreeMap<u64, Replica> = (1..=3)
        .map(|id| (id, Replica::new(&root.path().join(format!("node-{id}")))))
        .collect();
    for (id, r) in replicas.iter_mut() {
        r.start(*id, &router).await;
    }
    let members: BTreeMap<u64, NodeInfo> = (1..=3).map(|id| (id, NodeInfo::default())).collect();
    let first = replicas[&1].running.as_ref().expect("running").0.clone();
    first.initialize(members).await.expect("initialize");
    let leader = leader_of(&first).await;
    let raft = replicas[&leader]
        .running
        .as_ref()
        .expect("running")
        .0
        .clone();
    let follower = *replicas.keys().find(|id| **id != leader).expect("follower");

    let mut offset = 0;
    for i in 0..4 {
        offset += u64::from(write(&raft, batch(2, i)).await.record_count);
    }
    for r in replicas.values() {
        committed_reaches(r.sm(), offset).await;
    }
    replicas
        .get_mut(&follower)
        .expect("follower")
        .stop(follower, &router)
        .await;
    for i in 4..8 {
        offset += u64::from(write(&raft, batch(2, i)).await.record_count);
    }

    // The leader snapshots ("the log starts here") and purges its log.
    let applied = raft
        .metrics()
        .borrow_watched()
        .last_applied
        .expect("applied");
    raft.trigger().snapshot().await.expect("snapshot");
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
            "snapshot built",
        )
        .await
        .expect("snapshot within the bound");
    let snapshot = raft.metrics().borrow_watched().snapshot.expect("snapshot");
    raft.trigger()
        .purge_log(applied.index)
        .await
        .expect("purge");
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= applied.index),
            "log purged",
        )
        .await
        .expect("purged within the bound");

    // The follower's log ends before the leader's starts: it gets the
    // snapshot, its log restarts at the leader's log start offset.
    replicas
        .get_mut(&follower)
        .expect("follower")
        .start(follower, &router)
        .await;
    committed_reaches(replicas[&follower].sm(), offset).await;
    {
        let (_, _, log) = replicas[&follower].running.as_ref().expect("running");
        let state = log.state();
        assert_eq!(
            state.log_start_offset, offset,
            "reset to the leader's log start"
        );
        assert_eq!(
            state.last_purged.map(|p| p.index),
            Some(snapshot.index),
            "the snapshot's last entry is where its log starts"
        );
    }
    for i in 8..10 {
        offset += u64::from(write(&raft, batch(2, i)).await.record_count);
    }
    for r in replicas.values() {
        committed_reaches(r.sm(), offset).await;
    }
    let on_leader = replicas[&leader].records().await;
    assert_eq!(
        on_leader.len(),
        2,
        "the leader reads past its purged entries"
    );
    assert_eq!(replicas[&follower].records().await, on_leader);
    for (id, r) in replicas.iter_mut() {
        r.stop(*id, &router).await;
    }
}
