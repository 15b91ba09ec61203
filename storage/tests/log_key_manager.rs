//! The partition log with the real key manager: a file key provider and
//! the key registry in redb. Segments are recorded under the KEK version
//! that wraps them, a rotation puts new segments under the new version,
//! an online rewrap moves old segments over without touching their data,
//! the old version can then be destroyed while the log still reads
//! everything, and retention makes the registry forget deleted segments.

mod log_support;

use std::sync::Arc;

use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager, SegmentKeys};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::{Durability, LogError, PartitionLog, RetentionPolicy};
use strongbox_storage::meta::MetaStore;

use log_support::{config, segment_files, sized_batch};

const T0: i64 = 1_700_000_000_000;

fn key_manager(root: &std::path::Path) -> Arc<KeyManager> {
    let provider = FileKeyProvider::open(root.join("keys")).expect("key provider");
    let meta = MetaStore::open(root.join("meta.redb")).expect("metadata store");
    Arc::new(KeyManager::new(Arc::new(provider), meta, 4))
}

fn envelope_versions(dir: &std::path::Path) -> Vec<u32> {
    segment_files(dir)
        .iter()
        .map(|p| {
            KeyEnvelope::decode(&std::fs::read(p.with_extension("key")).expect("envelope"))
                .expect("decode")
                .wrapped
                .kek
                .version
        })
        .collect()
}

#[test]
fn rotation_rewrap_destruction_and_retention() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("orders-0");
    let km = key_manager(root.path());
    let log =
        PartitionLog::open(&dir, config(0, 2200, Durability::Fsync), km.clone()).expect("open");
    let mut expected = Vec::new();
    let mut append = |log: &PartitionLog, i: u8| {
        let b = sized_batch(T0 + i64::from(i), 2, 200, i);
        let a = log.append(&b).expect("append");
        a.durable.wait().expect("durable");
        expected.push((a.base_offset, b.as_bytes().clone()));
    };
    for i in 0..9 {
        append(&log, i);
    }
    let v1 = km
        .active_version(&KekScope::Broker)
        .expect("registry")
        .expect("a version was made on first use");
    assert_eq!(v1.id.version, 1);
    assert_eq!(
        km.segments_under(&v1.id, None, 100)
            .expect("segments")
            .len(),
        3
    );

    // Rotate: the next segment is wrapped under v2.
    let v2 = km.rotate(&KekScope::Broker).expect("rotate");
    log.roll().expect("roll");
    for i in 9..12 {
        append(&log, i);
    }
    assert_eq!(envelope_versions(&dir), vec![1, 1, 1, 2]);

    // Online rewrap: envelopes only, while the log stays open.
    let data_before: Vec<Vec<u8>> = segment_files(&dir)
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let n = log
        .rewrap_envelopes(
            &v1.id,
            |c, w| km.rewrap(c, w),
            |c, w| km.commit_rewrap(c, w),
        )
        .expect("rewrap");
    assert_eq!(n, 3);
    assert_eq!(envelope_versions(&dir), vec![2, 2, 2, 2]);
    let data_after: Vec<Vec<u8>> = segment_files(&dir)
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert_eq!(
        data_before, data_after,
        "rewrap does not touch segment data"
    );
    assert!(
        km.segments_under(&v1.id, None, 100)
            .expect("segments")
            .is_empty()
    );
    assert_eq!(
        km.segments_under(&v2.id, None, 100)
            .expect("segments")
            .len(),
        4
    );

    // v1 wraps nothing any more: destroying it loses nothing, even for the
    // open log and even with the key cache cold.
    km.destroy_version(&v1.id, false).expect("destroy v1");
    assert_eq!(log.read(0, usize::MAX).expect("read"), expected);
    log.close().expect("close");
    drop(km);
    let km = key_manager(root.path());
    let log =
        PartitionLog::open(&dir, config(0, 2200, Durability::Fsync), km.clone()).expect("reopen");
    assert_eq!(
        log.read(0, usize::MAX).expect("read after reopen"),
        expected
    );
    log.verify().expect("verify");

    // Retention: deleted segments are forgotten by the registry.
    let deleted = log
        .apply_retention(&RetentionPolicy {
            max_age: None,
            max_bytes: Some(4000),
        })
        .expect("retention");
    assert_eq!(deleted.len(), 2);
    assert_eq!(
        km.segments_under(&v2.id, None, 100)
            .expect("segments")
            .len(),
        2
    );
    log.close().expect("close");
}

#[test]
fn a_destroyed_key_version_makes_its_segments_unreadable_not_the_log() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("orders-0");
    let km = key_manager(root.path());
    let log =
        PartitionLog::open(&dir, config(0, 2200, Durability::None), km.clone()).expect("open");
    for i in 0..6 {
        log.append(&sized_batch(T0 + i64::from(i), 2, 200, i))
            .expect("append");
    }
    let v1 = km
        .active_version(&KekScope::Broker)
        .expect("registry")
        .expect("v1");
    km.rotate(&KekScope::Broker).expect("rotate");
    log.roll().expect("roll");
    let late = log
        .append(&sized_batch(T0 + 100, 2, 200, 9))
        .expect("append");
    log.close().expect("close");

    // Crypto-shred v1 with segments still under it.
    km.destroy_version(&v1.id, true)
        .expect("forced destruction");
    drop(km);
    let km = key_manager(root.path());
    let log = PartitionLog::open(&dir, config(0, 2200, Durability::None), km.clone())
        .expect("the log still opens");
    let e = log.read(0, usize::MAX).expect_err("old segments are gone");
    assert!(matches!(e, LogError::Key { .. }), "{e}");
    let newer = log
        .read(late.base_offset, usize::MAX)
        .expect("newer segments read");
    assert_eq!(newer.len(), 1);
    // The unwrap of a shredded segment key fails; the key manager says so.
    let env = KeyEnvelope::decode(
        &std::fs::read(segment_files(&dir)[0].with_extension("key")).expect("read"),
    )
    .expect("decode");
    assert!(km.open(&env.context(), &env.wrapped).is_err());
}

/// `keys destroy` on a running broker: the active segment, whose data key
/// the log holds in memory, is under the version. Stopping appends under
/// it seals that segment and drops the key, so that after the destruction
/// it reads as destroyed at once, and later appends go to a new segment
/// under the active version.
#[test]
fn stopping_appends_under_a_version_before_destroying_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("orders-0");
    let km = key_manager(root.path());
    let log =
        PartitionLog::open(&dir, config(0, 1 << 20, Durability::Fsync), km.clone()).expect("open");
    for i in 0..3 {
        let a = log
            .append(&sized_batch(T0 + i64::from(i), 2, 200, i))
            .expect("append");
        a.durable.wait().expect("durable");
    }
    assert_eq!(log.read(0, usize::MAX).expect("reads").len(), 3);
    let v1 = km
        .active_version(&KekScope::Broker)
        .expect("registry")
        .expect("v1");
    let v2 = km.rotate(&KekScope::Broker).expect("rotate");
    // The segment opened before the rotation is still under v1.
    assert!(!log.stop_appending_under(&v2.id).expect("not under v2"));
    assert!(log.stop_appending_under(&v1.id).expect("under v1"));
    assert!(!log.stop_appending_under(&v1.id).expect("not any more"));
    km.destroy_version(&v1.id, true)
        .expect("forced destruction");

    let e = log.read(0, usize::MAX).expect_err("destroyed at once");
    assert!(
        matches!(
            &e,
            LogError::Key {
                source: strongbox_storage::keys::KeyError::Destroyed(_),
                ..
            }
        ),
        "{e}"
    );
    let late = log
        .append(&sized_batch(T0 + 10, 2, 200, 9))
        .expect("appends go on");
    late.durable.wait().expect("durable");
    assert_eq!(late.base_offset, 6);
    assert_eq!(
        log.read(late.base_offset, usize::MAX)
            .expect("the new segment reads")
            .len(),
        1
    );
    assert_eq!(envelope_versions(&dir), vec![1, 2]);
    log.close().expect("close");
}
