//! Three nodes in one process, real files, direct-call network: leader
//! election, replication to every store, leader loss, restart and catch-up
//! (also through a snapshot), learners, removal.

mod support;

use std::collections::BTreeSet;

use strongbox_cluster::{MetaCommand, MetaRaftConfig, MetaResponse, NodeId, Refusal, Role};
use support::{TestCluster, WAIT, allow, create_topic, fast_config, info};

fn has_topic(c: &TestCluster, id: NodeId, name: &str) -> bool {
    c.node(id)
        .meta()
        .read(|r| r.topic(name))
        .expect("read")
        .is_some()
}

fn acl_principals(c: &TestCluster, id: NodeId) -> Vec<String> {
    c.node(id)
        .meta()
        .read(|r| r.acls())
        .expect("read")
        .into_iter()
        .map(|e| e.rule.principal)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_every_store_and_survive_the_leader() {
    let mut c = TestCluster::start_group(fast_config, &[1, 2, 3]).await;
    let leader = c.leader().await;

    assert_eq!(
        c.propose(create_topic("orders", 1, &[leader])).await,
        MetaResponse::Done
    );
    assert_eq!(
        c.propose(allow("alice", "orders")).await,
        MetaResponse::Existed { existed: false }
    );
    assert_eq!(
        c.propose(MetaCommand::CommitOffsets {
            group: "billing".into(),
            topic: "orders".into(),
            offsets: vec![(0, 42), (1, 7)],
        })
        .await,
        MetaResponse::Done
    );
    // A refused command is refused on every node alike and changes nothing.
    assert_eq!(
        c.propose(create_topic("orders", 9, &[leader])).await,
        MetaResponse::Refused(Refusal::TopicExists("orders".into()))
    );
    c.converge(leader).await;
    for id in [1, 2, 3] {
        let (topic, assignments, offset) = c
            .node(id)
            .meta()
            .read(|r| {
                let t = r.topic("orders")?.expect("topic");
                let a = r.partition_assignments(&t.topic_id)?;
                Ok::<_, strongbox_storage::meta::MetaError>((
                    t,
                    a,
                    r.offset("billing", "orders", 0)?,
                ))
            })
            .expect("read");
        assert_eq!(topic.topic_id, [1; 16], "node {id}");
        assert_eq!(
            assignments,
            vec![(0, vec![leader]), (1, vec![leader])],
            "node {id}"
        );
        assert_eq!(offset, Some(42), "node {id}");
        assert_eq!(
            acl_principals(&c, id),
            vec!["alice".to_owned()],
            "node {id}"
        );
    }

    // The leader goes away: another is elected, the survivors keep every
    // committed change, and proposals continue.
    c.stop(leader).await;
    let next = c.leader().await;
    assert_ne!(next, leader);
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        assert!(has_topic(&c, id, "orders"), "node {id}");
    }
    assert_eq!(
        c.propose(create_topic("payments", 2, &[next])).await,
        MetaResponse::Done
    );
    c.converge(next).await;
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        assert!(has_topic(&c, id, "payments"), "node {id}");
    }

    // The old leader restarts from its files and catches up.
    c.start(leader).await;
    c.converge(next).await;
    assert!(has_topic(&c, leader, "payments"));
    assert!(has_topic(&c, leader, "orders"));
}

fn snapshot_often(id: NodeId) -> MetaRaftConfig {
    MetaRaftConfig {
        snapshot_after_entries: Some(5),
        keep_entries_after_snapshot: 0,
        ..fast_config(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_catches_up_through_a_snapshot() {
    let mut c = TestCluster::start_group(snapshot_often, &[1, 2, 3]).await;
    let leader = c.leader().await;
    let down = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    c.propose(create_topic("before", 1, &[leader])).await;
    c.converge(leader).await;
    let stopped_at = c.node(down).status().last_log_index.expect("has a log");
    c.stop(down).await;

    for i in 0..20u8 {
        c.propose(allow(&format!("user-{i}"), "before")).await;
    }
    c.propose(MetaCommand::DeleteTopic {
        name: "before".into(),
    })
    .await;
    c.propose(create_topic("after", 2, &[leader])).await;
    let leader = c.leader().await;
    c.node(leader).snapshot_now().await.expect("snapshot");
    // The leader's log no longer holds what the stopped node lacks, so it
    // can only catch up from a snapshot.
    let m = c
        .node(leader)
        .wait_for(WAIT, "the log purged past the stopped node", |s| {
            s.purged_index.is_some_and(|p| p > stopped_at)
        })
        .await
        .expect("purged");
    assert!(m.snapshot_index >= m.purged_index, "{m:?}");

    c.start(down).await;
    c.converge(leader).await;
    let restarted = c.node(down).status();
    assert!(
        restarted.snapshot_index >= m.purged_index,
        "it installed the leader's snapshot: {restarted:?}"
    );
    assert!(has_topic(&c, down, "after"));
    assert!(!has_topic(&c, down, "before"), "the deletion reached it");
    assert_eq!(acl_principals(&c, down).len(), 20);
    // The topic it missed the deletion of is recorded for file deletion.
    let deletions = c
        .node(down)
        .meta()
        .read(|r| r.topic_deletions())
        .expect("read");
    assert_eq!(deletions.len(), 1);
    assert_eq!(deletions.first().map(|d| d.topic_id), Some([1; 16]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_and_a_node_removed() {
    let mut c = TestCluster::start_group(fast_config, &[1, 2, 3]).await;
    let leader = c.leader().await;
    c.propose(create_topic("orders", 1, &[leader])).await;

    c.start(4).await;
    c.node(leader)
        .add_learner(4, info(4))
        .await
        .expect("add learner");
    c.converge(leader).await;
    assert!(has_topic(&c, 4, "orders"));
    let s = c.node(4).status();
    assert_eq!(s.role, Role::Learner);
    assert!(s.members.iter().any(|m| m.id == 4 && !m.voter));

    c.node(leader).promote(4).await.expect("promote");
    let voters = |c: &TestCluster| -> BTreeSet<NodeId> {
        let leader = c.node(
            c.nodes
                .keys()
                .copied()
                .find(|id| c.nodes.get(id).is_some_and(|n| n.node.is_some()))
                .expect("a node"),
        );
        leader
            .status()
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    };
    assert_eq!(voters(&c), BTreeSet::from([1, 2, 3, 4]));

    let gone = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    c.node(leader).remove_node(gone).await.expect("remove");
    let status = c
        .node(leader)
        .wait_for(WAIT, "the removal", |s| {
            s.members.iter().all(|m| m.id != gone)
        })
        .await
        .expect("removed");
    assert_eq!(
        status.members.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
        [1, 2, 3, 4].into_iter().filter(|id| *id != gone).collect()
    );
    c.stop(gone).await;
    assert_eq!(
        c.propose(create_topic("later", 2, &[leader])).await,
        MetaResponse::Done
    );
    c.converge(leader).await;
    assert!(
        has_topic(&c, 4, "later"),
        "{:?}\n{:?}\n{:?}",
        c.node(4).status(),
        c.node(leader).status(),
        c.node(4).meta().read(|r| r.topics()).expect("read")
    );

    // Status on the leader reports every member with its lag.
    let status = c.node(leader).status();
    assert_eq!(status.role, Role::Leader);
    for m in &status.members {
        assert!(m.lag.is_some(), "{m:?}");
        assert_eq!(m.info, info(m.id));
    }
    for n in c.running() {
        n.wait_for(WAIT, "knowing the leader", |s| s.leader == Some(leader))
            .await
            .expect("leader known");
        assert_eq!(
            n.leader(),
            Some((leader, info(leader))),
            "node {}",
            n.node_id()
        );
    }
    // Linearizable reads work on the leader and are refused elsewhere.
    c.node(leader)
        .ensure_linearizable()
        .await
        .expect("leader read");
    let follower = c
        .running()
        .find(|n| n.node_id() != leader)
        .expect("follower");
    assert!(matches!(
        follower.ensure_linearizable().await,
        Err(strongbox_cluster::ProposeError::NotLeader { leader: Some((id, _)) }) if id == leader
    ));
    assert!(matches!(
        follower.propose(MetaCommand::DeleteGroup { group: "x".into() }).await,
        Err(strongbox_cluster::ProposeError::NotLeader { leader: Some((id, _)) }) if id == leader
    ));
}

/// `add_node` makes voters up to five and learners beyond; adding a
/// learner again promotes it once a voter has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_makes_five_voters_and_learners_beyond() {
    let mut c = TestCluster::start_group(fast_config, &[1, 2, 3]).await;
    let leader = c.leader().await;
    for id in [4, 5] {
        c.start(id).await;
        assert!(
            c.node(leader).add_node(id, info(id)).await.expect("add"),
            "node {id} votes"
        );
    }
    c.start(6).await;
    assert!(
        !c.node(leader).add_node(6, info(6)).await.expect("add"),
        "a sixth node stays a learner"
    );
    let voters = |c: &TestCluster| -> BTreeSet<NodeId> {
        c.node(leader)
            .status()
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    };
    assert_eq!(voters(&c), BTreeSet::from([1, 2, 3, 4, 5]));
    let gone = [1, 2, 3, 4, 5]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    c.node(leader).remove_node(gone).await.expect("remove");
    c.node(leader)
        .wait_for(WAIT, "the removal", |s| {
            s.members.iter().all(|m| m.id != gone)
        })
        .await
        .expect("removed");
    assert!(
        c.node(leader)
            .add_node(6, info(6))
            .await
            .expect("add again"),
        "the learner is promoted once there is room"
    );
    let mut expected: BTreeSet<NodeId> = BTreeSet::from([1, 2, 3, 4, 5, 6]);
    expected.remove(&gone);
    assert_eq!(voters(&c), expected);
}
