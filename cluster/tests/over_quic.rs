//! The metadata group over the real peer transport: three nodes on
//! 127.0.0.1 talking QUIC with node certificates, a write sent to a
//! follower forwarded to the leader, and the group going on without its
//! leader.

mod quic_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strongbox_cluster::command::{AclRuleSpec, AclSpec, DurabilitySpec, EffectSpec, TopicSpec};
use strongbox_cluster::net::{Forwarded, PeerNetwork, RaftService};
use strongbox_cluster::{
    Directory, MetaCommand, MetaRaft, MetaRaftConfig, MetaResponse, NodeId, NodeInfo, ProposeError,
    Role,
};
use strongbox_peer::{LogObserver, PeerConfig, PeerEndpoint};
use strongbox_storage::meta::MetaStore;

use quic_support::Pki;

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    raft: MetaRaft,
    endpoint: PeerEndpoint,
    network: PeerNetwork,
    meta: MetaStore,
}

fn config(id: NodeId) -> MetaRaftConfig {
    MetaRaftConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(800),
        election_timeout_max: Duration::from_millis(1600),
        ..MetaRaftConfig::new(id)
    }
}

/// Binds three endpoints, then starts a node behind each.
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
        let addr = endpoint.local_addr().expect("local addr");
        members.insert(
            id,
            NodeInfo {
                peer_addr: addr.to_string(),
                client_addr: format!("127.0.0.1:{}", 9000 + id),
            },
        );
        bound.push((id, endpoint, directory));
    }
    let mut nodes = BTreeMap::new();
    for (id, endpoint, directory) in bound {
        let data = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let meta = MetaStore::open(data.join("meta.redb")).expect("meta");
        let network = PeerNetwork::new(endpoint.client(directory.clone()));
        let raft = MetaRaft::start(
            &config(id),
            &strongbox_cluster::raft_dir(&data),
            meta.clone(),
            network.clone(),
        )
        .await
        .expect("start");
        directory.attach(raft.clone());
        endpoint.serve(Arc::new(RaftService::new(raft.clone())));
        nodes.insert(
            id,
            Node {
                raft,
                endpoint,
                network,
                meta,
            },
        );
    }
    nodes
        .get(&1)
        .expect("node 1")
        .raft
        .initialize(members)
        .await
        .expect("initialize");
    nodes
}

async fn leader_of(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
    let any = nodes.values().next().expect("a node");
    let status = any
        .raft
        .wait_for(WAIT, "a leader", |s| {
            s.leader.is_some_and(|l| nodes.contains_key(&l))
        })
        .await
        .expect("a leader");
    status.leader.expect("leader")
}

/// Proposes through `via`, forwarding to the leader when `via` is not it
/// and waiting while no leader is known to it.
async fn propose_via(node: &Node, command: MetaCommand) -> MetaResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match node.raft.propose(command.clone()).await {
            Ok(answer) => return answer,
            Err(ProposeError::NotLeader {
                leader: Some((leader, _)),
            }) => match node.network.forward(leader, &command).await {
                Ok(Forwarded::Applied(answer)) => return answer,
                // A follower may know the leader before it has the
                // membership that holds its address.
                Ok(Forwarded::NotLeader { .. })
                | Err(strongbox_peer::PeerError::UnknownNode(_)) => {}
                other => panic!("forwarded proposal: {other:?}"),
            },
            Err(ProposeError::NotLeader { leader: None }) => {}
            Err(e) => panic!("propose: {e}"),
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

fn topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        topic_id: [7; 16],
        created_at: 1,
        partitions: 2,
        durability: DurabilitySpec::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_over_quic_and_outlive_their_leader() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = three_nodes(&pki, dir.path()).await;
    let leader = leader_of(&nodes).await;
    let follower = *nodes.keys().find(|id| **id != leader).expect("a follower");

    // A write sent to a follower reaches the leader and every store.
    let answer = propose_via(
        &nodes[&follower],
        MetaCommand::CreateTopic {
            topic: topic("orders"),
            replicas: vec![vec![1], vec![2]],
        },
    )
    .await;
    assert!(matches!(answer, MetaResponse::Done), "{answer:?}");
    for (id, node) in &nodes {
        wait_until(&format!("the topic on node {id}"), || {
            node.meta
                .read(|r| r.topic("orders"))
                .expect("read")
                .is_some()
        })
        .await;
    }

    // The leader goes away; the two others elect one and keep going.
    let old = nodes.remove(&leader).expect("leader");
    old.raft.shutdown().await.expect("shutdown");
    old.endpoint.close().await;
    let new_leader = leader_of(&nodes).await;
    assert_ne!(new_leader, leader);
    let survivor = nodes
        .values()
        .find(|n| n.raft.status().role != Role::Leader);
    let via = survivor.unwrap_or_else(|| nodes.values().next().expect("a node"));
    let answer = propose_via(
        via,
        MetaCommand::PutAcl {
            acl: AclSpec {
                rule: AclRuleSpec {
                    principal: "alice".into(),
                    topic: "orders".into(),
                    operations: 1,
                    effect: EffectSpec::Allow,
                    expires_at: None,
                },
                request_id: None,
                created_at: 2,
            },
        },
    )
    .await;
    assert!(matches!(answer, MetaResponse::Existed { .. }), "{answer:?}");
    for (id, node) in &nodes {
        wait_until(&format!("the ACL on node {id}"), || {
            node.meta.read(|r| r.acls()).expect("read").len() == 1
        })
        .await;
        assert!(
            node.meta
                .read(|r| r.topic("orders"))
                .expect("read")
                .is_some()
        );
    }
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
        node.endpoint.close().await;
    }
}
