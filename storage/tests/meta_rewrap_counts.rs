//! The rewrap job's `done` count is kept by the key registry, in the
//! transaction that moves each segment to the new KEK version, whoever
//! moves it: the job, or a reader that finds an envelope ahead of the
//! registry after a crash. So the count is exact across a crash and never
//! goes back, and a stale copy of the job's state cannot lower it.

use std::sync::Arc;

use strongbox_storage::keys::{
    FileKeyProvider, KekId, KekScope, KeyManager, SegmentKeyContext, SegmentKeys, WrappedDek,
};
use strongbox_storage::meta::{MetaStore, RewrapJobState};

fn ctx(seg: u8, scope: KekScope) -> SegmentKeyContext {
    SegmentKeyContext {
        topic_id: [9; 16],
        partition: 0,
        segment_id: [seg; 16],
        scope,
    }
}

fn job(scope: KekScope, from_version: Option<u32>) -> RewrapJobState {
    RewrapJobState {
        scope,
        from_version,
        principal: "admin".into(),
        started_at: 100,
        updated_at: 100,
        finished_at: None,
        done: 0,
        failed: 0,
    }
}

fn done(meta: &MetaStore) -> u64 {
    meta.read(|r| r.rewrap_job())
        .expect("read")
        .expect("job")
        .done
}

#[test]
fn every_move_counts_once_whoever_makes_it_and_a_stale_state_cannot_lower_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let provider = Arc::new(FileKeyProvider::open(tmp.path().join("keys")).expect("provider"));
    let meta = MetaStore::in_memory().expect("meta");
    let km = KeyManager::new(provider, meta.clone(), 16);
    let broker = KekScope::Broker;
    let other = KekScope::Topic("ab".repeat(16));

    // Four segments under broker v1, one under another scope.
    let wrapped: Vec<(SegmentKeyContext, WrappedDek)> = (1..=4)
        .map(|s| {
            let c = ctx(s, broker.clone());
            let (_, w) = km.create(&c).expect("create");
            (c, w)
        })
        .collect();
    let (_, other_v1) = km.create(&ctx(9, other.clone())).expect("create");
    km.rotate(&broker).expect("v2");
    km.rotate(&other).expect("other v2");
    meta.write(|b| b.put_rewrap_job(&job(broker.clone(), None)))
        .expect("start");

    // The job rewraps two envelopes and records them.
    for (c, w) in &wrapped[..2] {
        let new = km.rewrap(c, w).expect("rewrap");
        km.commit_rewrap(c, &new).expect("commit");
    }
    assert_eq!(done(&meta), 2);

    // The job's own copy of its state, saved before those moves, cannot
    // lower the count.
    let stale = job(broker.clone(), None);
    meta.write(|b| b.put_rewrap_job(&stale)).expect("persist");
    assert_eq!(done(&meta), 2, "never goes back");

    // A crash between writing the third envelope and recording it: the
    // next reader of that segment finds the envelope ahead of the registry
    // and records it. That move was the job's work and counts.
    let (c3, w3) = &wrapped[2];
    let new3 = km.rewrap(c3, w3).expect("rewrap");
    let fresh = KeyManager::new(km.provider().clone(), meta.clone(), 16);
    fresh
        .open(c3, &new3)
        .expect("a reader opens the rewrapped envelope");
    assert_eq!(
        fresh
            .meta()
            .read(|r| r.segment_kek(&c3.into()))
            .expect("read"),
        Some(new3.kek.clone()),
        "the registry caught up"
    );
    assert_eq!(done(&meta), 3, "and the job counted it");

    // Recording the same move again (the job's reconciliation after the
    // restart) changes nothing.
    km.commit_rewrap(c3, &new3).expect("commit again");
    assert_eq!(done(&meta), 3);

    // Moves in another scope are not this job's work.
    let other_new = km
        .rewrap(&ctx(9, other.clone()), &other_v1)
        .expect("rewrap");
    km.commit_rewrap(&ctx(9, other), &other_new)
        .expect("commit");
    assert_eq!(done(&meta), 3);

    // Once the job is finished, nothing counts towards it.
    let mut finished = meta.read(|r| r.rewrap_job()).expect("read").expect("job");
    finished.finished_at = Some(200);
    meta.write(|b| b.put_rewrap_job(&finished)).expect("finish");
    let (c4, w4) = &wrapped[3];
    let new4 = km.rewrap(c4, w4).expect("rewrap");
    km.commit_rewrap(c4, &new4).expect("commit");
    assert_eq!(done(&meta), 3);
}

#[test]
fn a_job_limited_to_one_version_counts_only_moves_off_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let provider = Arc::new(FileKeyProvider::open(tmp.path().join("keys")).expect("provider"));
    let meta = MetaStore::in_memory().expect("meta");
    let km = KeyManager::new(provider, meta.clone(), 16);
    let scope = KekScope::Broker;
    let (_, a) = km.create(&ctx(1, scope.clone())).expect("v1 segment");
    km.rotate(&scope).expect("v2");
    let (_, b) = km.create(&ctx(2, scope.clone())).expect("v2 segment");
    km.rotate(&scope).expect("v3");
    assert_eq!(
        a.kek,
        KekId {
            scope: scope.clone(),
            version: 1
        }
    );
    meta.write(|w| w.put_rewrap_job(&job(scope.clone(), Some(2))))
        .expect("start");
    let nb = km.rewrap(&ctx(2, scope.clone()), &b).expect("rewrap");
    km.commit_rewrap(&ctx(2, scope.clone()), &nb)
        .expect("commit");
    assert_eq!(done(&meta), 1);
    let na = km.rewrap(&ctx(1, scope.clone()), &a).expect("rewrap");
    km.commit_rewrap(&ctx(1, scope), &na).expect("commit");
    assert_eq!(done(&meta), 1, "v1 is not this job's");
}
