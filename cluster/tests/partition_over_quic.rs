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
use strongbox_cluster::groups::GroupId;
use strongbox_cluster::partition_groups::{
    PartitionGroupConfig, PartitionGroupError, PartitionGroups, Replica,
};
use strongbox_cluster::{NodeId, NodeInfo};
use strongbox_peer::{LogObserver, PeerConfig, PeerEndpoint};
use strongbox_protocol::batch::BatchBuilder;
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::raft::RaftLog;
use strongbox_storage::log::{LogConfig, LogEnv};
use strongbox_storage::meta::MetaStore;

use quic_support::Pki;

const WAIT: Duration = Duration::from_secs(30);
const GROUP: GroupId = GroupId {
    topic: [0x51; 16],
    partition: 0,
};
const MARKER: &str = "REPLICATED-PLAINTEXT-MARKER-7f3a";
const RECORDS_PER_BATCH: u32 = 10;

/// Peer addresses by node id, filled once every endpoint is bound.
type Addresses = Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>;

struct Node {
    id: NodeId,
    root: PathBuf,
    keys: Arc<KeyManager>,
    endpoint: PeerEndpoint,
    groups: PartitionGroups,
}

impl Node {
    fn replica(&self, group: GroupId) -> Replica {
        self.groups.get(group).expect("a replica of the group")
    }
}

fn timing() -> PartitionGroupConfig {
    PartitionGroupConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(800),
        election_timeout_max: Duration::from_millis(1600),
    }
}

/// What every node of a test cluster shares.
struct Env<'a> {
    pki: &'a Pki,
    addresses: &'a Addresses,
    peer: &'a PeerConfig,
}

/// Binds node `id`'s endpoint at `addr` (port 0 for any) and starts its
/// replicas of `groups` (each with its replica list) from the files under
/// `root` (new, or left by an earlier run).
async fn start_node(
    env: &Env<'_>,
    id: NodeId,
    addr: SocketAddr,
    root: &Path,
    keys: Arc<KeyManager>,
    groups: &[(GroupId, Vec<NodeId>)],
) -> Node {
    let (pki, addresses, peer) = (env.pki, env.addresses, env.peer);
    let known = addresses.clone();
    let endpoint = PeerEndpoint::bind(
        addr,
        pki.node_tls(id),
        peer.clone(),
        Arc::new(|peer: NodeId| (1..=3).contains(&peer)),
        Arc::new(LogObserver),
    )
    .expect("bind");
    let client = endpoint.client(Arc::new(move |peer: NodeId| {
        known.lock().expect("addresses").get(&peer).copied()
    }));
    let runtime = PartitionGroups::new(id, client, &timing()).expect("groups");
    endpoint.serve(runtime.router());
    let node = Node {
        id,
        root: root.to_path_buf(),
        keys,
        endpoint,
        groups: runtime,
    };
    for (group, replicas) in groups {
        if replicas.contains(&id) {
            start_replica(&node, *group, replicas, addresses).await;
        }
    }
    node
}

async fn start_replica(node: &Node, group: GroupId, replicas: &[NodeId], addresses: &Addresses) {
    let log = Arc::new(
        RaftLog::open(
            node.root.join(group.to_string().replace('/', "-")),
            LogConfig::new(group.topic, group.partition, KekScope::Broker),
            node.keys.clone(),
            LogEnv::default(),
        )
        .expect("raft log"),
    );
    let members: Vec<(NodeId, NodeInfo)> = {
        let known = addresses.lock().expect("addresses");
        replicas
            .iter()
            .map(|id| {
                (
                    *id,
                    NodeInfo {
                        peer_addr: known.get(id).map(ToString::to_string).unwrap_or_default(),
                        client_addr: String::new(),
                    },
                )
            })
            .collect()
    };
    node.groups
        .start(group, &members, log)
        .await
        .expect("start the replica");
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

/// Writes `batch` to `group` through node `via`, following `NotLeader`
/// answers to the leader they name and retrying while none is known;
/// returns the batch's base offset.
async fn write(nodes: &BTreeMap<NodeId, Node>, group: GroupId, batch: Bytes) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut via = *nodes.keys().next().expect("a node");
    loop {
        let node = nodes.get(&via).expect("a running node");
        match node.groups.write(group, batch.clone()).await {
            Ok(appended) => return appended.base_offset,
            Err(PartitionGroupError::NotLeader {
                leader: Some(leader),
                ..
            }) if nodes.contains_key(&leader) => via = leader,
            Err(PartitionGroupError::NotLeader { .. } | PartitionGroupError::NotRunning(_)) => {
                // No leader known here yet, or a node that holds no
                // replica: try the next node after a pause.
                via = nodes
                    .keys()
                    .copied()
                    .find(|id| *id > via)
                    .unwrap_or(*nodes.keys().next().expect("a node"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write through node {via}: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader took the write"
        );
    }
}

async fn wait_committed(node: &Node, group: GroupId, offset: u64) {
    let mut rx = node.replica(group).committed;
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= offset))
        .await
        .unwrap_or_else(|_| panic!("node {} did not commit up to {offset}", node.id))
        .expect("committed offset");
}

/// The committed record batches of a replica, in order, with their
/// offsets: what a consumer of that replica reads.
fn batches(node: &Node, group: GroupId) -> Vec<(u64, Bytes)> {
    let replica = node.replica(group);
    let committed = *replica.committed.borrow();
    replica
        .log
        .records(0, committed, usize::MAX)
        .expect("records")
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

/// Binds three nodes and starts their replicas of `groups`.
async fn three_nodes(
    pki: &Pki,
    root: &Path,
    addresses: &Addresses,
    groups: &[(GroupId, Vec<NodeId>)],
    peer: &PeerConfig,
) -> BTreeMap<NodeId, Node> {
    let mut nodes = BTreeMap::new();
    // Every endpoint is bound (and its address known) before any group
    // starts, so that a group formed at once reaches all its members.
    for id in 1..=3 {
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("root");
        let env = Env {
            pki,
            addresses,
            peer,
        };
        let node = start_node(
            &env,
            id,
            "127.0.0.1:0".parse().expect("addr"),
            &dir,
            node_keys(&dir),
            &[],
        )
        .await;
        addresses
            .lock()
            .expect("addresses")
            .insert(id, node.endpoint.local_addr().expect("addr"));
        nodes.insert(id, node);
    }
    for node in nodes.values() {
        for (group, replicas) in groups {
            if replicas.contains(&node.id) {
                start_replica(node, *group, replicas, addresses).await;
            }
        }
    }
    nodes
}

fn no_plaintext_under(root: &Path) {
    for file in files_under(root) {
        let bytes = std::fs::read(&file).expect("read");
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "plaintext in {}",
            file.display()
        );
    }
}

async fn stop(nodes: BTreeMap<NodeId, Node>) {
    for node in nodes.values() {
        node.groups.stop_all().await;
        node.endpoint.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_partition_keeps_every_acknowledged_batch_across_a_leader_loss() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let addresses: Addresses = Arc::default();
    let layout = [(GROUP, vec![1, 2, 3])];
    let mut nodes = three_nodes(
        &pki,
        tmp.path(),
        &addresses,
        &layout,
        &PeerConfig::default(),
    )
    .await;

    // Acknowledged batches, with the offsets the leader gave them.
    let mut acknowledged = Vec::new();
    for seq in 0..40 {
        let b = batch(seq);
        acknowledged.push((write(&nodes, GROUP, b.clone()).await, b));
    }
    let end = 40 * u64::from(RECORDS_PER_BATCH);
    assert_eq!(
        acknowledged
            .last()
            .map(|(base, _)| base + u64::from(RECORDS_PER_BATCH)),
        Some(end)
    );
    for node in nodes.values() {
        wait_committed(node, GROUP, end).await;
        assert_eq!(
            batches(node, GROUP),
            acknowledged,
            "replica of node {}",
            node.id
        );
    }

    // The leader's node goes away.
    let leader = nodes[&1].groups.leader(GROUP).expect("a leader");
    let gone = nodes.remove(&leader).expect("leader node");
    let gone_addr = gone.endpoint.local_addr().expect("addr");
    gone.groups.stop_all().await;
    gone.endpoint.close().await;
    let (gone_root, gone_keys) = (gone.root.clone(), gone.keys.clone());
    drop(gone);

    // The two others elect a leader and take more writes.
    for seq in 40..60 {
        let b = batch(seq);
        acknowledged.push((write(&nodes, GROUP, b.clone()).await, b));
    }
    let end = 60 * u64::from(RECORDS_PER_BATCH);
    for node in nodes.values() {
        wait_committed(node, GROUP, end).await;
        assert_ne!(node.groups.leader(GROUP), Some(leader));
        assert_eq!(
            batches(node, GROUP),
            acknowledged,
            "replica of node {}",
            node.id
        );
    }

    // It comes back from its own files and catches up.
    let env = Env {
        pki: &pki,
        addresses: &addresses,
        peer: &PeerConfig::default(),
    };
    let back = start_node(&env, leader, gone_addr, &gone_root, gone_keys, &layout).await;
    wait_committed(&back, GROUP, end).await;
    assert_eq!(batches(&back, GROUP), acknowledged, "the returned replica");
    nodes.insert(leader, back);

    // Each node sealed its replica under its own keys: the published
    // values appear in no file of any node.
    no_plaintext_under(tmp.path());
    stop(nodes).await;
}

/// Two partitions with different replica sets on the same three nodes:
/// each runs exactly where it is placed, a write through a node that does
/// not lead is answered with the leader to go to, and the two logs stay
/// apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_run_where_they_are_placed_and_writes_find_their_leader() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let addresses: Addresses = Arc::default();
    let wide = GROUP;
    let narrow = GroupId {
        topic: GROUP.topic,
        partition: 1,
    };
    let layout = [(wide, vec![1, 2, 3]), (narrow, vec![3, 2])];
    let nodes = three_nodes(
        &pki,
        tmp.path(),
        &addresses,
        &layout,
        &PeerConfig::default(),
    )
    .await;
    assert_eq!(nodes[&1].groups.groups(), vec![wide]);
    assert_eq!(nodes[&2].groups.groups(), vec![wide, narrow]);
    assert_eq!(nodes[&3].groups.groups(), vec![wide, narrow]);

    let mut in_wide = Vec::new();
    let mut in_narrow = Vec::new();
    for seq in 0..10 {
        let b = batch(seq);
        in_wide.push((write(&nodes, wide, b.clone()).await, b));
        let b = batch(100 + seq);
        in_narrow.push((write(&nodes, narrow, b.clone()).await, b));
    }
    // Node 3 formed the narrow group (first of its replicas); whoever
    // leads it, node 1 does not run it.
    let narrow_leader = nodes[&3].groups.leader(narrow).expect("a leader");
    assert!([2, 3].contains(&narrow_leader));
    assert!(matches!(
        nodes[&1].groups.write(narrow, batch(999)).await,
        Err(PartitionGroupError::NotRunning(g)) if g == narrow
    ));
    let follower = if narrow_leader == 2 { 3 } else { 2 };
    match nodes[&follower].groups.write(narrow, batch(998)).await {
        Err(PartitionGroupError::NotLeader { leader, .. }) => {
            assert_eq!(leader, Some(narrow_leader));
        }
        other => panic!("a write through the narrow group's follower: {other:?}"),
    }
    let end = 10 * u64::from(RECORDS_PER_BATCH);
    for id in [2, 3] {
        wait_committed(&nodes[&id], narrow, end).await;
        assert_eq!(batches(&nodes[&id], narrow), in_narrow, "node {id}");
    }
    for node in nodes.values() {
        wait_committed(node, wide, end).await;
        assert_eq!(batches(node, wide), in_wide, "node {}", node.id);
    }
    no_plaintext_under(tmp.path());
    stop(nodes).await;
}

/// A follower behind by more than one peer call can carry catches up: the
/// leader's entries go out in prefixes that fit (each a partial success to
/// openraft), not in one call the transport refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_one_peer_call_reaches_a_returning_follower() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let addresses: Addresses = Arc::default();
    let layout = [(GROUP, vec![1, 2, 3])];
    // Calls of at most 64 KiB; batches of about 12 KiB.
    let small = PeerConfig {
        max_payload: 64 * 1024,
        ..PeerConfig::default()
    };
    let nodes = three_nodes(&pki, tmp.path(), &addresses, &layout, &small).await;
    let big = |seq: u32| {
        let mut b = BatchBuilder::new(1_700_000_000_000);
        let value = format!("{MARKER} {seq} {}", "x".repeat(1000));
        for i in 0..12 {
            b.push(1_700_000_000_000 + i, None, &[], value.as_bytes())
                .expect("push");
        }
        b.finish().expect("finish")
    };
    write(&nodes, GROUP, big(0)).await;
    // Node 3's replica stops (its node stays up) while 40 batches, about
    // 480 KiB, are written; then it starts again from its files.
    let leader = nodes[&1].groups.leader(GROUP).expect("a leader");
    let lagging = if leader == 3 { 2 } else { 3 };
    nodes[&lagging].groups.stop(GROUP).await.expect("stop");
    let mut acknowledged = vec![];
    for seq in 1..=40 {
        let b = big(seq);
        acknowledged.push((write(&nodes, GROUP, b.clone()).await, b));
    }
    start_replica(&nodes[&lagging], GROUP, &[1, 2, 3], &addresses).await;
    let end = 41 * 12;
    wait_committed(&nodes[&lagging], GROUP, end).await;
    let held = batches(&nodes[&lagging], GROUP);
    assert_eq!(held.len(), 41);
    assert_eq!(&held[1..], &acknowledged[..]);
    stop(nodes).await;
}
