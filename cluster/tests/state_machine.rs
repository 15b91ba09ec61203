//! The state machine on real redb files: atomic, idempotent apply across a
//! reopen, and snapshots that carry exactly the replicated tables.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload, Membership};
use strongbox_cluster::{
    MetaChange, MetaCommand, MetaResponse, MetaStateMachine, ProducerOutcome, TypeConfig,
};
use strongbox_storage::meta::{AuditHead, MetaError, MetaStore};
use support::{allow, create_topic, info};

fn log_id(index: u64) -> strongbox_cluster::LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, index)
}

fn normal(index: u64, cmd: MetaCommand) -> strongbox_cluster::types::Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn membership(index: u64) -> strongbox_cluster::types::Entry {
    let m = Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([(1, info(1)), (2, info(2))]),
    )
    .expect("membership");
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(m),
    }
}

async fn apply(sm: &mut MetaStateMachine, entries: Vec<strongbox_cluster::types::Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}

fn open(dir: &std::path::Path) -> MetaStateMachine {
    let meta = MetaStore::open(dir.join("meta.redb")).expect("meta");
    MetaStateMachine::open(meta, &strongbox_cluster::raft_dir(dir)).expect("state machine")
}

fn new_producer(index: u64) -> strongbox_cluster::types::Entry {
    normal(
        index,
        MetaCommand::InitProducer {
            existing: None,
            principal: "alice".into(),
            now_ms: 1,
        },
    )
}

#[tokio::test]
async fn entries_applied_before_a_restart_are_not_applied_again() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let mut sm = open(dir.path());
        apply(
            &mut sm,
            vec![membership(1), new_producer(2), new_producer(3)],
        )
        .await;
        let (last, m) = sm.applied_state().await.expect("state");
        assert_eq!(last, Some(log_id(3)));
        assert_eq!(m.log_id(), &Some(log_id(1)));
    }
    // openraft may hand the same entries over again after a crash: only
    // the new one changes the store (ids are not handed out twice).
    let mut sm = open(dir.path());
    let mut changes = sm.subscribe_changes();
    let applied = sm.subscribe_applied();
    apply(
        &mut sm,
        vec![new_producer(2), new_producer(3), new_producer(4)],
    )
    .await;
    let Ok(MetaChange::Applied(change)) = changes.try_recv() else {
        panic!("one change announced");
    };
    assert_eq!(change.log_id, log_id(4));
    assert_eq!(
        change.response,
        MetaResponse::Producer(ProducerOutcome::Issued {
            producer_id: 3,
            epoch: 0
        })
    );
    assert!(
        changes.try_recv().is_err(),
        "the replayed entries are not announced"
    );
    assert_eq!(*applied.borrow(), Some(log_id(4)));
    let (last, m) = sm.applied_state().await.expect("state");
    assert_eq!(last, Some(log_id(4)));
    assert_eq!(m.membership().voter_ids().collect::<Vec<_>>(), vec![1, 2]);
}

#[tokio::test]
async fn a_snapshot_replaces_the_replicated_tables_and_nothing_else() {
    let (da, db) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let (mut a, mut b) = (open(da.path()), open(db.path()));
    apply(
        &mut a,
        vec![
            membership(1),
            normal(2, create_topic("orders", 1, &[1, 2])),
            normal(3, allow("alice", "orders")),
            normal(
                4,
                MetaCommand::CommitOffsets {
                    group: "billing".into(),
                    topic: "orders".into(),
                    offsets: vec![(0, 10)],
                },
            ),
            new_producer(5),
        ],
    )
    .await;
    // b has a replicated topic a does not, and node-local rows of its own.
    apply(&mut b, vec![normal(1, create_topic("stale", 9, &[2]))]).await;
    let head = AuditHead {
        sequence: 7,
        hash: [3; 32],
    };
    b.meta()
        .write(|w| {
            w.advance_audit_head(&head)?;
            w.raise_partition_end(&[9; 16], 0, 55, 1)?;
            Ok::<_, MetaError>(())
        })
        .expect("node-local rows");

    let snapshot = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(5)));
    let current = a
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("kept");
    assert_eq!(current.meta, snapshot.meta);

    // A damaged copy is refused and changes nothing.
    let mut damaged = snapshot.snapshot.clone();
    if let Some(byte) = damaged.last_mut() {
        *byte ^= 1;
    }
    assert!(b.install_snapshot(&snapshot.meta, damaged).await.is_err());
    assert!(b.meta().read(|r| r.topic("stale")).expect("read").is_some());

    let mut changes = b.subscribe_changes();
    b.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
        .await
        .expect("install");
    let export = |sm: &MetaStateMachine| sm.meta().read(|r| r.export_replicated()).expect("export");
    assert_eq!(export(&a), export(&b));
    assert_eq!(
        a.applied_state().await.expect("a"),
        b.applied_state().await.expect("b")
    );
    assert_eq!(
        b.get_current_snapshot()
            .await
            .expect("current")
            .expect("kept")
            .meta,
        snapshot.meta
    );
    // Node-local rows are b's own still.
    assert_eq!(b.meta().read(|r| r.audit_head()).expect("read"), Some(head));
    // The topic b lost is recorded for deletion, and announced.
    let deletions = b.meta().read(|r| r.topic_deletions()).expect("read");
    assert_eq!(deletions.first().map(|d| d.name.as_str()), Some("stale"));
    assert_eq!(
        b.meta()
            .read(|r| r.partition_end(&[9; 16], 0))
            .expect("read"),
        None
    );
    match changes.try_recv() {
        Ok(MetaChange::SnapshotInstalled {
            removed_topics,
            last_log_id,
        }) => {
            assert_eq!(last_log_id, Some(log_id(5)));
            assert_eq!(
                removed_topics.first().map(|t| t.name.as_str()),
                Some("stale")
            );
        }
        other => panic!("{other:?}"),
    }
    // Applying continues after the snapshot.
    apply(&mut b, vec![new_producer(6)]).await;
    assert_eq!(b.applied_state().await.expect("b").0, Some(log_id(6)));
}
