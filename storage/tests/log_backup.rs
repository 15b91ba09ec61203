//! Pinning a live partition for a backup: what `LogFreeze::link_into`
//! records is a log that opens, verifies and reads back exactly the
//! records appended before the freeze, whatever the live log does after it
//! (more appends, rolls, retention deleting the pinned segments).

mod log_support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strongbox_storage::log::{
    Durability, PartitionLog, PinnedPartition, RetentionPolicy, check_dir,
};

use log_support::{TestKeys, config, sized_batch};

const SEGMENT_BYTES: u64 = 2200;
const T0: i64 = 1_700_000_000_000;

/// Copies what was pinned from `staging` to `dest`, `len` bytes of each
/// file, as `strongbox-broker backup` does.
fn copy_pinned(pinned: &PinnedPartition, staging: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("dest");
    for f in &pinned.files {
        let bytes = std::fs::read(staging.join(&f.name)).expect("read pinned");
        let len = usize::try_from(f.len).expect("len");
        assert!(bytes.len() >= len, "{} shorter than pinned", f.name);
        std::fs::write(dest.join(&f.name), &bytes[..len]).expect("write");
    }
}

fn append_n(log: &PartitionLog, from: u8, n: u8) {
    for i in from..from + n {
        log.append(&sized_batch(T0 + i64::from(i), 2, 200, i))
            .expect("append")
            .durable
            .wait()
            .expect("durable");
    }
}

#[test]
fn a_frozen_partition_restores_to_exactly_what_it_held() {
    let root = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let cfg = config(0, SEGMENT_BYTES, Durability::Fsync);
    let live =
        PartitionLog::open(root.path().join("live"), cfg.clone(), keys.clone()).expect("open");
    append_n(&live, 0, 9);
    assert!(
        live.segments().len() >= 3,
        "sealed segments and an active one"
    );
    assert!(!live.segments().last().expect("segment").sealed);
    let expected: Vec<(u64, Bytes)> = live.read(0, usize::MAX).expect("read");

    let staging = root.path().join("staging");
    let pinned = {
        let freeze = live.freeze();
        freeze.link_into(&staging).expect("link")
    };
    assert_eq!(pinned.start_offset, 0);
    assert_eq!(pinned.end_offset, live.log_end_offset());
    let names: Vec<&str> = pinned.files.iter().map(|f| f.name.as_str()).collect();
    assert!(names.iter().any(|n| n.ends_with(".key")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "only the log's own files: {names:?}"
    );

    // The live log goes on: appends into the pinned active segment, rolls,
    // then retention deletes every pinned segment but the newest.
    append_n(&live, 9, 12);
    let deleted = live
        .apply_retention(&RetentionPolicy {
            max_age: None,
            max_bytes: Some(1),
        })
        .expect("retention");
    assert!(!deleted.is_empty());

    let restored_dir = root.path().join("restored");
    copy_pinned(&pinned, &staging, &restored_dir);
    // Offline check first: every frame authenticates; the newest segment is
    // only unsealed, which the next open seals.
    let check = check_dir(&restored_dir, &cfg, keys.clone(), &mut |_| {});
    assert!(check.is_intact(), "{:#?}", check.findings);
    assert_eq!(check.end_offset, Some(pinned.end_offset));

    let restored = PartitionLog::open(&restored_dir, cfg, keys).expect("open restored");
    assert_eq!(restored.log_end_offset(), pinned.end_offset);
    assert_eq!(restored.read(0, usize::MAX).expect("read"), expected);
    restored.verify().expect("verify");
    // It takes appends again, in a new segment.
    append_n(&restored, 30, 1);
    live.close().expect("close");
}

#[test]
fn a_partition_whose_segments_are_all_sealed_keeps_its_next_offset() {
    let root = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let cfg = config(0, SEGMENT_BYTES, Durability::Fsync);
    let live =
        PartitionLog::open(root.path().join("live"), cfg.clone(), keys.clone()).expect("open");
    append_n(&live, 0, 3);
    live.roll().expect("roll");
    let end = live.log_end_offset();
    let staging = root.path().join("staging");
    let pinned = live.freeze().link_into(&staging).expect("link");
    assert_eq!(pinned.end_offset, end);

    let restored_dir = root.path().join("restored");
    copy_pinned(&pinned, &staging, &restored_dir);
    let restored = PartitionLog::open(&restored_dir, cfg, keys).expect("open");
    assert_eq!(restored.log_end_offset(), end);
    append_n(&restored, 3, 1);
    assert_eq!(restored.read(end, usize::MAX).expect("read").len(), 1);
    live.close().expect("close");
}

#[test]
fn an_empty_partition_pins_nothing() {
    let root = tempfile::tempdir().expect("tmp");
    let keys: Arc<TestKeys> = TestKeys::new();
    let live = PartitionLog::open(
        root.path().join("live"),
        config(0, SEGMENT_BYTES, Durability::Fsync),
        keys,
    )
    .expect("open");
    let pinned = live
        .freeze()
        .link_into(&root.path().join("staging"))
        .expect("link");
    assert!(pinned.files.is_empty());
    assert_eq!((pinned.start_offset, pinned.end_offset), (0, 0));
    assert!(root.path().join("staging").is_dir());
}
