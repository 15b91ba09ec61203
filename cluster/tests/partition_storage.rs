//! A partition group's storage driven through openraft's traits with
//! record batches (the conformance suite only uses control entries):
//! append and read back, the flush reported after the fsync, truncation
//! then an append at the same index in a new segment under a new key,
//! purge, reopening after a drop, encryption at rest, and the state
//! machine's committed offset and snapshot ("the log starts here")
//! installed on a follower behind its leader.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream;
use openraft::EntryPayload;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::{blank_ent, membership_ent};
use openraft::type_config::TypeConfigExt;
use strongbox_cluster::partition::{
    BatchBytes, PartitionConfig, PartitionEntry, PartitionLogId, PartitionLogStore,
    PartitionStateMachine, PartitionVote,
};
use strongbox_protocol::batch::BatchBuilder;
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::raft::RaftLog;
use strongbox_storage::log::{LogConfig, LogEnv};
use strongbox_storage::meta::MetaStore;

const MARKER: &[u8] = b"PARTITION-PLAINTEXT-MARKER-51c0";

/// A node's keys and the partition's directory under `root`.
struct Node {
    keys: Arc<KeyManager>,
    dir: std::path::PathBuf,
}

impl Node {
    fn new(root: &Path) -> Self {
        let provider = FileKeyProvider::open(root.join("keys")).expect("key provider");
        let meta = MetaStore::open(root.join("meta.redb")).expect("meta store");
        Self {
            keys: Arc::new(KeyManager::new(Arc::new(provider), meta, 64)),
            dir: root.join("orders-0"),
        }
    }

    fn open(&self, segment_bytes: u64) -> (PartitionLogStore, PartitionStateMachine) {
        let mut config = LogConfig::new([9; 16], 0, KekScope::Broker);
        config.segment_bytes = segment_bytes;
        let log = Arc::new(
            RaftLog::open(&self.dir, config, self.keys.clone(), LogEnv::default())
                .expect("raft log"),
        );
        let sm = PartitionStateMachine::open(Arc::clone(&log)).expect("state machine");
        (PartitionLogStore::new(log), sm)
    }
}

fn log_id(term: u64, index: u64) -> PartitionLogId {
    PartitionLogId::new(LeaderId { term, node_id: 1 }, index)
}

fn batch(values: &[&[u8]]) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for (i, v) in values.iter().enumerate() {
        b.push(1_700_000_000_000 + i as i64, Some(b"k"), &[], v)
            .expect("push");
    }
    b.finish().expect("finish")
}

fn normal(term: u64, index: u64, values: &[&[u8]]) -> PartitionEntry {
    PartitionEntry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(BatchBytes(batch(values))),
    }
}

fn blank(term: u64, index: u64) -> PartitionEntry {
    blank_ent::<PartitionConfig>(term, 1, index)
}

/// Appends through openraft's trait and waits for the flush report.
async fn append(store: &mut PartitionLogStore, entries: Vec<PartitionEntry>) {
    let (tx, rx) = PartitionConfig::oneshot();
    store
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("flush reported").expect("flushed");
}

async fn read_all(store: &mut PartitionLogStore) -> Vec<PartitionEntry> {
    store.try_get_log_entries(0..).await.expect("read")
}

async fn apply(sm: &mut PartitionStateMachine, entries: Vec<PartitionEntry>) {
    sm.apply(stream::iter(entries.into_iter().map(|e| Ok((e, None)))))
        .await
        .expect("apply");
}

fn segment_ids(dir: &Path) -> Vec<[u8; 16]> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            KeyEnvelope::decode(&std::fs::read(p).expect("envelope"))
                .expect("decode")
                .segment_id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_batches_append_read_back_and_survive_a_reopen() {
    let root = tempfile::tempdir().expect("tmp");
    let node = Node::new(root.path());
    let entries = vec![
        membership_ent::<PartitionConfig>(1, 1, 0, vec![[1, 2, 3].into()]),
        blank(1, 1),
        normal(1, 2, &[b"a", b"b"]),
        normal(1, 3, &[b"c"]),
    ];
    let (got, vote) = {
        let (mut store, _sm) = node.open(1 << 20);
        let vote = PartitionVote {
            leader_id: LeaderId {
                term: 1,
                node_id: 1,
            },
            committed: true,
        };
        store.save_vote(&vote).await.expect("vote");
        append(&mut store, entries.clone()).await;
        let got = read_all(&mut store).await;
        assert_eq!(got, entries);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_purged_log_id, None);
        (got, vote)
        // dropped, not closed: the next open recovers the newest segment
    };
    let (mut store, _sm) = node.open(1 << 20);
    assert_eq!(read_all(&mut store).await, got);
    assert_eq!(store.read_vote().await.expect("vote"), Some(vote));
    append(&mut store, vec![normal(2, 4, &[b"d"])]).await;
    assert_eq!(read_all(&mut store).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_then_the_same_index_again_goes_to_a_new_segment_and_key() {
    let root = tempfile::tempdir().expect("tmp");
    let node = Node::new(root.path());
    let (mut store, _sm) = node.open(1 << 20);
    append(
        &mut store,
        vec![
            blank(1, 0),
            normal(1, 1, &[b"kept"]),
            normal(1, 2, &[b"old-2"]),
            normal(1, 3, &[b"old-3"]),
        ],
    )
    .await;
    assert_eq!(segment_ids(&node.dir).len(), 1);
    store
        .truncate_after(Some(log_id(1, 1)))
        .await
        .expect("truncate");
    append(
        &mut store,
        vec![normal(2, 2, &[b"new-2"]), normal(2, 3, &[b"new-3"])],
    )
    .await;
    let got = read_all(&mut store).await;
    assert_eq!(
        got.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        vec![log_id(1, 0), log_id(1, 1), log_id(2, 2), log_id(2, 3)]
    );
    assert_eq!(got[2], normal(2, 2, &[b"new-2"]));
    // The cut segment keeps indexes 0..=1 under its key; indexes 2 and 3
    // are sealed again in a segment of their own, under another key.
    let ids = segment_ids(&node.dir);
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert!(node.dir.join(format!("{:020}.log", 2)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_hides_entries_and_deletes_whole_segments() {
    let root = tempfile::tempdir().expect("tmp");
    let node = Node::new(root.path());
    let (mut store, _sm) = node.open(400);
    for i in 0..8 {
        append(&mut store, vec![normal(1, i, &[b"0123456789abcdef"])]).await;
    }
    let before = segment_ids(&node.dir).len();
    assert!(before > 2, "several segments");
    store.purge(log_id(1, 4)).await.expect("purge");
    let got = read_all(&mut store).await;
    assert_eq!(got.first().map(|e| e.log_id), Some(log_id(1, 5)));
    assert_eq!(got.len(), 3);
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert!(segment_ids(&node.dir).len() < before);
    drop(store);
    let (mut store, _sm) = node.open(400);
    assert_eq!(read_all(&mut store).await, got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_or_membership_is_plaintext_at_rest() {
    let root = tempfile::tempdir().expect("tmp");
    let node = Node::new(root.path());
    let (mut store, mut sm) = node.open(1 << 20);
    let mut value = b"value ".to_vec();
    value.extend_from_slice(MARKER);
    let entries = vec![blank(1, 0), normal(1, 1, &[&value])];
    append(&mut store, entries.clone()).await;
    apply(&mut sm, entries).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let mut files = 0;
    for entry in std::fs::read_dir(&node.dir).expect("list") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        assert!(
            !data.windows(MARKER.len()).any(|w| w == MARKER),
            "{} holds a record in the clear",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 3, "segment, envelope, state file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_moves_the_committed_offset_and_a_snapshot_resets_a_follower() {
    let root = tempfile::tempdir().expect("tmp");
    let leader = Node::new(&root.path().join("leader"));
    let (mut store, mut sm) = leader.open(1 << 20);
    let mut committed = sm.subscribe_committed();
    let entries = vec![
        blank(1, 0),
        normal(1, 1, &[b"a", b"b", b"c"]),
        blank(2, 2),
        normal(2, 3, &[b"d"]),
    ];
    append(&mut store, entries.clone()).await;
    assert_eq!(sm.committed_offset(), 0, "nothing applied yet");
    apply(&mut sm, entries[..2].to_vec()).await;
    assert_eq!(
        sm.committed_offset(),
        3,
        "after the first batch's three records"
    );
    apply(&mut sm, entries[2..].to_vec()).await;
    assert_eq!(sm.committed_offset(), 4);
    assert!(committed.has_changed().expect("watch"));
    assert_eq!(*committed.borrow_and_update(), 4);

    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 3)));

    // A follower with an older, shorter log, behind the leader's retention.
    let follower = Node::new(&root.path().join("follower"));
    let (mut f_store, mut f_sm) = follower.open(1 << 20);
    append(&mut f_store, vec![blank(1, 0)]).await;
    f_sm.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
        .await
        .expect("install");
    assert_eq!(f_sm.committed_offset(), 4);
    assert_eq!(
        f_sm.applied_state().await.expect("applied").0,
        Some(log_id(2, 3))
    );
    let state = f_store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
    assert!(read_all(&mut f_store).await.is_empty());
    // Replication continues after the snapshot, at the leader's offsets.
    append(&mut f_store, vec![normal(2, 4, &[b"e"])]).await;
    apply(&mut f_sm, vec![normal(2, 4, &[b"e"])]).await;
    assert_eq!(f_sm.committed_offset(), 5);
    // After a restart the follower stands at its snapshot, same log.
    drop((f_store, f_sm));
    let (mut f_store, mut f_sm) = follower.open(1 << 20);
    assert_eq!(
        f_sm.get_current_snapshot()
            .await
            .expect("current")
            .map(|s| s.meta),
        Some(snapshot.meta)
    );
    assert_eq!(f_sm.committed_offset(), 4);
    assert_eq!(read_all(&mut f_store).await, vec![normal(2, 4, &[b"e"])]);
}
