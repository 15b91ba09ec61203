//! Several Raft groups over one peer endpoint per node, on real QUIC with
//! node certificates: the metadata group on its own methods, two more
//! groups multiplexed on the group methods, each led by another node. Each
//! group's writes reach its own stores only; a group that loses its leader
//! elects another while the others go on; a call for a group a node does
//! not run fails without disturbing it.
//!
//! The extra groups run the metadata state machine because it is the one
//! at hand: the transport is generic over the group's type configuration.

mod quic_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strongbox_cluster::command::{DurabilitySpec, TopicSpec};
use strongbox_cluster::groups::{GroupId, GroupNetwork, GroupRouter, METHOD_GROUP_VOTE, Routes};
use strongbox_cluster::net::{PeerNetwork, RaftService};
use strongbox_cluster::openraft::network::{NetSnapshot, RaftNetworkFactory};
use strongbox_cluster::{
    Directory, MetaCommand, MetaRaft, MetaRaftConfig, MetaResponse, MetaStateMachine, NodeId,
    NodeInfo, ProposeError, SnapshotData, TypeConfig,
};
use strongbox_peer::{LogObserver, PeerClient, PeerConfig, PeerEndpoint, PeerError};
use strongbox_storage::meta::MetaStore;

use quic_support::Pki;

const WAIT: Duration = Duration::from_secs(30);

/// The two multiplexed groups.
const A: GroupId = GroupId {
    topic: [0xA; 16],
    partition: 0,
};
const B: GroupId = GroupId {
    topic: [0xB; 16],
    partition: 7,
};

fn config(id: NodeId) -> MetaRaftConfig {
    MetaRaftConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(800),
        election_timeout_max: Duration::from_millis(1600),
        ..MetaRaftConfig::new(id)
    }
}

/// One group's member on one node: its `Raft` and its store.
struct Member {
    raft: MetaRaft,
    meta: MetaStore,
}

struct Node {
    endpoint: PeerEndpoint,
    client: PeerClient,
    router: Arc<GroupRouter<TypeConfig, MetaStateMachine>>,
    meta: Member,
    groups: BTreeMap<GroupId, Member>,
}

fn topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        topic_id: [1; 16],
        created_at: 1,
        partitions: 1,
        durability: DurabilitySpec::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    }
}

async fn start_member<N>(dir: &std::path::Path, id: NodeId, network: N) -> Member
where
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
{
    std::fs::create_dir_all(dir).expect("dir");
    let meta = MetaStore::open(dir.join("meta.redb")).expect("meta");
    let raft = MetaRaft::start(
        &config(id),
        &strongbox_cluster::raft_dir(dir),
        meta.clone(),
        network,
    )
    .await
    .expect("start");
    Member { raft, meta }
}

async fn three_nodes(pki: &Pki, dir: &std::path::Path) -> BTreeMap<NodeId, Node> {
    let mut bound = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3 {
        let directory = Arc::new(Directory::new(BTreeMap::new()));
        let endpoint = PeerEndpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            pki.node_tls(id),
            PeerConfig::default(),
            directory.clone(),
            Arc::new(LogObserver),
        )
        .expect("bind");
        members.insert(
            id,
            NodeInfo {
                peer_addr: endpoint.local_addr().expect("addr").to_string(),
                client_addr: format!("127.0.0.1:{}", 9000 + id),
            },
        );
        bound.push((id, endpoint, directory));
    }
    let mut nodes = BTreeMap::new();
    for (id, endpoint, directory) in bound {
        let base = dir.join(format!("node-{id}"));
        let client = endpoint.client(directory.clone());
        let meta = start_member(&base.join("meta"), id, PeerNetwork::new(client.clone())).await;
        directory.attach(meta.raft.clone());
        let router = Arc::new(GroupRouter::new());
        let mut groups = BTreeMap::new();
        for group in [A, B] {
            let member = start_member(
                &base.join(group.to_string().replace('/', "-")),
                id,
                GroupNetwork::new(client.clone(), group),
            )
            .await;
            router.insert(group, member.raft.raft().clone());
            groups.insert(group, member);
        }
        endpoint.serve(Arc::new(Routes {
            meta: Arc::new(RaftService::new(meta.raft.clone())),
            groups: router.clone(),
        }));
        nodes.insert(
            id,
            Node {
                endpoint,
                client,
                router,
                meta,
                groups,
            },
        );
    }
    // Each group formed by another node.
    nodes[&1]
        .meta
        .raft
        .initialize(members.clone())
        .await
        .expect("metadata group");
    nodes[&2].groups[&A]
        .raft
        .initialize(members.clone())
        .await
        .expect("group A");
    nodes[&3].groups[&B]
        .raft
        .initialize(members)
        .await
        .expect("group B");
    nodes
}

/// Proposes on the group's current leader, retrying while none is known.
async fn propose(members: &[&Member], command: MetaCommand) -> MetaResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for m in members {
            match m.raft.propose(command.clone()).await {
                Ok(answer) => return answer,
                Err(ProposeError::NotLeader { .. }) => {}
                Err(e) => panic!("propose: {e}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader took the proposal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    quic_support::wait_until(what, WAIT, ready).await;
}

fn has_topic(m: &Member, name: &str) -> bool {
    m.meta.read(|r| r.topic(name)).expect("read").is_some()
}

fn group_members(nodes: &BTreeMap<NodeId, Node>, group: GroupId) -> Vec<&Member> {
    nodes.values().map(|n| &n.groups[&group]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_one_endpoint_and_keep_their_writes_apart() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = three_nodes(&pki, dir.path()).await;

    let create = |name: &str| MetaCommand::CreateTopic {
        topic: topic(name),
        replicas: vec![vec![1, 2, 3]],
    };
    let metas: Vec<&Member> = nodes.values().map(|n| &n.meta).collect();
    let answer = propose(&metas, create("in.meta")).await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");
    let answer = propose(&group_members(&nodes, A), create("in.a")).await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");
    let answer = propose(&group_members(&nodes, B), create("in.b")).await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");

    // Every member of a group has its group's write and no other's.
    for (id, node) in &nodes {
        let stores = [
            ("meta", &node.meta),
            ("A", &node.groups[&A]),
            ("B", &node.groups[&B]),
        ];
        for (name, member) in stores {
            let own = match name {
                "meta" => "in.meta",
                "A" => "in.a",
                _ => "in.b",
            };
            wait_until(&format!("{own} on node {id}"), || has_topic(member, own)).await;
            for other in ["in.meta", "in.a", "in.b"].iter().filter(|t| **t != own) {
                assert!(
                    !has_topic(member, other),
                    "{other} reached group {name} on node {id}"
                );
            }
        }
    }

    // A call for a group node 1 does not run fails, and group A goes on.
    let stranger = GroupId {
        topic: [0xC; 16],
        partition: 1,
    };
    let mut payload = stranger.to_bytes().to_vec();
    payload.extend_from_slice(b"\xa0");
    let refused = nodes[&2]
        .client
        .call_raw(1, METHOD_GROUP_VOTE, Bytes::from(payload))
        .await;
    match refused {
        Err(PeerError::Remote { message, .. }) => {
            assert!(message.contains("no group"), "{message}");
        }
        other => panic!("a call for an unknown group: {other:?}"),
    }
    assert_eq!(nodes[&1].router.ids(), vec![A, B]);

    // Group A's leader stops (its node keeps the other groups): A elects a
    // new leader among the two others and takes writes; B and the
    // metadata group go on.
    let a_leader = nodes[&1].groups[&A]
        .raft
        .wait_for(WAIT, "a leader of A", |s| s.leader.is_some())
        .await
        .expect("leader")
        .leader
        .expect("leader");
    let node = nodes.get_mut(&a_leader).expect("node");
    let gone = node.groups.remove(&A).expect("member");
    node.router.remove(A).expect("registered");
    gone.raft.shutdown().await.expect("shutdown");
    let rest: Vec<&Member> = nodes.values().filter_map(|n| n.groups.get(&A)).collect();
    assert_eq!(rest.len(), 2);
    let answer = propose(&rest, create("in.a.later")).await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");
    for m in &rest {
        wait_until("the later write on both", || has_topic(m, "in.a.later")).await;
        assert_ne!(m.raft.status().leader, Some(a_leader));
    }
    let answer = propose(&group_members(&nodes, B), create("in.b.later")).await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");
    let metas: Vec<&Member> = nodes.values().map(|n| &n.meta).collect();
    let answer = propose(&metas, create("in.meta.later")).await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");

    for node in nodes.values() {
        for m in node.groups.values() {
            m.raft.shutdown().await.expect("shutdown");
        }
        node.meta.raft.shutdown().await.expect("shutdown");
        node.endpoint.close().await;
    }
}
