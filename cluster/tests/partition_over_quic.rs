//! One replicated partition on three nodes over the real peer transport:
//! each node's replica is the partition's own encrypted log under that
//! node's own keys, the group's messages travel on the group methods of
//! one QUIC endpoint per node. Every acknowledged batch is on every
//! replica with the same offsets and bytes; the leader's node goes away,
//! another leads and takes writes; the node comes back from its files and
//! catches up. No replica's files hold a published plaintext.

mod quic_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use strongbox_cluster::groups::{GroupId, GroupNetwork, GroupRouter};
use strongbox_cluster::partition::{
    BatchBytes, PartitionConfig, PartitionLogStore, PartitionStateMachine,
};
use strongbox_cluster::{NodeId, NodeInfo};
use strongbox_peer::{LogObserver, PeerConfig, PeerEndpoint};
use strongbox_protocol::batch::BatchBuilder;
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::raft::RaftLog;
use strongbox_storage::log::raft_format::RaftFrameKind;
use strongbox_storage::log::{LogConfig, LogEnv};
use strongbox_storage::meta::MetaStore;
use tokio::sync::watch;

use quic_support::Pki;

const WAIT: Duration = Duration::from_secs(30);
const GROUP: GroupId = GroupId {
    topic: [0x51; 16],
    partition: 0,
};
const MARKER: &str = "REPLICATED-PLAINTEXT-MARKER-7f3a";
const RECORDS_PER_BATCH: u32 = 10;

type PartitionRaft = openraft::Raft<PartitionConfig, PartitionStateMachine>;

/// Peer addresses by node id, filled once every endpoint is bound.
type Addresses = Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>;

struct Replica {
    raft: PartitionRaft,
    log: Arc<RaftLog>,
    committed: watch::Receiver<u64>,
}

struct Node {
    id: NodeId,
    root: PathBuf,
    keys: Arc<KeyManager>,
    endpoint: PeerEndpoint,
    router: Arc<GroupRouter<PartitionConfig, PartitionStateMachine>>,
    replica: Replica,
}

fn raft_config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            cluster_name: "partition-test".into(),
            heartbeat_interval: 100,
            election_timeout_min: 800,
            election_timeout_max: 1600,
            ..Default::default()
        }
        .validate()
        .expect("config"),
    )
}

/// Binds node `id`'s endpoint at `addr` (port 0 for any) and starts its
/// replica from the files under `root` (new or left by an earlier run).
async fn start_node(
    pki: &Pki,
    id: NodeId,
    addr: SocketAddr,
    root: &Path,
    keys: Arc<KeyManager>,
    addresses: &Addresses,
) -> Node {
    let known = addresses.clone();
    let endpoint = PeerEndpoint::bind(
        addr,
        pki.node_tls(id),
        PeerConfig::default(),
        Arc::new(|peer: NodeId| (1..=3).contains(&peer)),
        Arc::new(LogObserver),
    )
    .expect("bind");
    let client = endpoint.client(Arc::new(move |peer: NodeId| {
        known.lock().expect("addresses").get(&peer).copied()
    }));
    let log = Arc::new(
        RaftLog::open(
            root.join("orders-0"),
            LogConfig::new(GROUP.topic, GROUP.partition, KekScope::Broker),
            keys.clone(),
            LogEnv::default(),
        )
        .expect("raft log"),
    );
    let sm = PartitionStateMachine::open(log.clone()).expect("state machine");
    let committed = sm.subscribe_committed();
    let raft = PartitionRaft::new(
        id,
        raft_config(),
        GroupNetwork::<PartitionConfig>::new(client, GROUP),
        PartitionLogStore::new(log.clone()),
        sm,
    )
    .await
    .expect("raft");
    let router = Arc::new(GroupRouter::new());
    router.insert(GROUP, raft.clone());
    endpoint.serve(router.clone());
    Node {
        id,
        root: root.to_path_buf(),
        keys,
        endpoint,
        router,
        replica: Replica {
            raft,
            log,
            committed,
        },
    }
}

/// The node's own keys: a file key provider and metadata store of its own.
fn node_keys(root: &Path) -> Arc<KeyManager> {
    let provider = FileKeyProvider::open(root.join("keys")).expect("key provider");
    let meta = MetaStore::open(root.join("meta.redb")).expect("meta store");
    Arc::new(KeyManager::new(Arc::new(provider), meta, 64))
}

fn batch(seq: u32) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for i in 0..RECORDS_PER_BATCH {
        let value = format!("{MARKER} batch {seq} record {i}");
        b.push(
            1_700_000_000_000 + i64::from(i),
            Some(b"k"),
            &[],
            value.as_bytes(),
        )
        .expect("push");
    }
    b.finish().expect("finish")
}

/// Writes `batch` through whichever node leads now, retrying while the
/// group has no leader; returns the batch's base offset.
async fn write(nodes: &BTreeMap<NodeId, Node>, batch: Bytes) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for node in nodes.values() {
            match node
                .replica
                .raft
                .client_write(BatchBytes(batch.clone()))
                .await
            {
                Ok(done) => return done.response().base_offset,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                Err(e) => panic!("write through node {}: {e}", node.id),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader took the write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_committed(node: &Node, offset: u64) {
    let mut rx = node.replica.committed.clone();
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= offset))
        .await
        .unwrap_or_else(|_| panic!("node {} did not commit up to {offset}", node.id))
        .expect("committed offset");
}

/// The record batches of a replica's log, in order, with their offsets.
fn batches(node: &Node) -> Vec<(u64, Bytes)> {
    node.replica
        .log
        .entries(0..u64::MAX)
        .expect("entries")
        .into_iter()
        .filter(|e| e.kind == RaftFrameKind::Records)
        .map(|e| (e.base_offset, e.payload))
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_partition_keeps_every_acknowledged_batch_across_a_leader_loss() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let addresses: Addresses = Arc::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let root = tmp.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&root).expect("root");
        let node = start_node(
            &pki,
            id,
            "127.0.0.1:0".parse().expect("addr"),
            &root,
            node_keys(&root),
            &addresses,
        )
        .await;
        addresses
            .lock()
            .expect("addresses")
            .insert(id, node.endpoint.local_addr().expect("addr"));
        nodes.insert(id, node);
    }
    let members: BTreeMap<NodeId, NodeInfo> = addresses
        .lock()
        .expect("addresses")
        .iter()
        .map(|(id, addr)| {
            (
                *id,
                NodeInfo {
                    peer_addr: addr.to_string(),
                    client_addr: String::new(),
                },
            )
        })
        .collect();
    nodes[&1]
        .replica
        .raft
        .initialize(members)
        .await
        .expect("initialize");

    // Acknowledged batches, with the offsets the leader gave them.
    let mut acknowledged = Vec::new();
    for seq in 0..40 {
        let b = batch(seq);
        acknowledged.push((write(&nodes, b.clone()).await, b));
    }
    let end = acknowledged
        .last()
        .map(|(base, _)| base + u64::from(RECORDS_PER_BATCH))
        .expect("written");
    assert_eq!(end, 40 * u64::from(RECORDS_PER_BATCH));
    for node in nodes.values() {
        wait_committed(node, end).await;
        assert_eq!(batches(node), acknowledged, "replica of node {}", node.id);
    }

    // The leader's node goes away.
    let leader = nodes[&1]
        .replica
        .raft
        .current_leader()
        .await
        .expect("a leader");
    let gone = nodes.remove(&leader).expect("leader node");
    let gone_addr = gone.endpoint.local_addr().expect("addr");
    gone.router.remove(GROUP);
    gone.replica.raft.shutdown().await.expect("shutdown");
    gone.endpoint.close().await;
    let (gone_root, gone_keys) = (gone.root.clone(), gone.keys.clone());
    drop(gone);

    // The two others elect a leader and take more writes.
    for seq in 40..60 {
        let b = batch(seq);
        acknowledged.push((write(&nodes, b.clone()).await, b));
    }
    let end = 60 * u64::from(RECORDS_PER_BATCH);
    for node in nodes.values() {
        wait_committed(node, end).await;
        assert_ne!(node.replica.raft.current_leader().await, Some(leader));
        assert_eq!(batches(node), acknowledged, "replica of node {}", node.id);
    }

    // It comes back from its own files and catches up.
    let back = start_node(&pki, leader, gone_addr, &gone_root, gone_keys, &addresses).await;
    wait_committed(&back, end).await;
    assert_eq!(batches(&back), acknowledged, "the returned replica");
    nodes.insert(leader, back);

    // Each node sealed its replica under its own keys: the published
    // values appear in no file of any node.
    for node in nodes.values() {
        for file in files_under(&node.root) {
            let bytes = std::fs::read(&file).expect("read");
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                "plaintext in {}",
                file.display()
            );
        }
    }
    for node in nodes.values() {
        node.replica.raft.shutdown().await.expect("shutdown");
        node.endpoint.close().await;
    }
}
