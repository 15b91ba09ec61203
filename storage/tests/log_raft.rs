//! A replicated partition's log (`RaftLog`) on real files: record and
//! control entries read back; truncation then appends at the same index in
//! a new segment under a new key; purges; recovery after a drop and after
//! a torn tail gives the same log; nothing is plaintext at rest; the vote
//! and the committed log id survive a restart. The files are also read
//! with a parser written from docs/STORAGE.md and RustCrypto's AES-GCM.

mod log_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use bytes::Bytes;
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::raft::{RaftEntry, RaftLog, StoredEntry};
use strongbox_storage::log::raft_format::{RaftFrameKind, RaftLogId, RaftVote};
use strongbox_storage::log::{Durability, LogEnv, LogError, PartitionLog};

use log_support::{TestKeys, batch, config};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a9c";

fn id(term: u64, index: u64) -> RaftLogId {
    RaftLogId {
        term,
        node_id: 1,
        index,
    }
}

fn records(term: u64, index: u64, values: &[&[u8]]) -> RaftEntry {
    let recs: Vec<(i64, &[u8])> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (1_700_000_000_000 + i as i64, *v))
        .collect();
    RaftEntry {
        log_id: id(term, index),
        kind: RaftFrameKind::Records,
        payload: batch(&recs).as_bytes().clone(),
    }
}

fn blank(term: u64, index: u64) -> RaftEntry {
    RaftEntry {
        log_id: id(term, index),
        kind: RaftFrameKind::Blank,
        payload: Bytes::new(),
    }
}

fn membership(term: u64, index: u64, body: &[u8]) -> RaftEntry {
    RaftEntry {
        log_id: id(term, index),
        kind: RaftFrameKind::Membership,
        payload: Bytes::copy_from_slice(body),
    }
}

fn open(dir: &Path, keys: &Arc<TestKeys>, segment_bytes: u64) -> RaftLog {
    RaftLog::open(
        dir,
        config(0, segment_bytes, Durability::Fsync),
        keys.clone(),
        LogEnv::default(),
    )
    .expect("open")
}

fn append(log: &RaftLog, entries: Vec<RaftEntry>) {
    log.append(entries)
        .expect("append")
        .wait()
        .expect("durable");
}

/// The log as (log id, kind, base offset, count, payload), for comparing.
fn all(log: &RaftLog) -> Vec<StoredEntry> {
    log.entries(0..u64::MAX).expect("read")
}

#[test]
fn record_and_control_entries_read_back_with_their_offsets() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    append(
        &log,
        vec![
            membership(1, 0, b"{\"voters\":[1]}"),
            blank(1, 1),
            records(1, 2, &[b"a", b"b", b"c"]),
            blank(2, 3),
            records(2, 4, &[b"d"]),
        ],
    );
    let got = all(&log);
    let summary: Vec<(u64, RaftFrameKind, u64, u32)> = got
        .iter()
        .map(|e| (e.log_id.index, e.kind, e.base_offset, e.record_count))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, RaftFrameKind::Membership, 0, 0),
            (1, RaftFrameKind::Blank, 0, 0),
            (2, RaftFrameKind::Records, 0, 3),
            (3, RaftFrameKind::Blank, 3, 0),
            (4, RaftFrameKind::Records, 3, 1),
        ]
    );
    assert_eq!(&got[0].payload[..], b"{\"voters\":[1]}");
    assert_eq!(got[2].payload, records(1, 2, &[b"a", b"b", b"c"]).payload);
    assert_eq!(got[3].log_id, id(2, 3));
    let state = log.state();
    assert_eq!(state.last_entry, Some(id(2, 4)));
    assert_eq!(state.next_offset, 4);
    assert_eq!(log.entries(2..4).expect("range").len(), 2);
    log.close().expect("close");
}

#[test]
fn consumers_read_record_batches_by_offset_up_to_an_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    let a = records(1, 2, &[b"a", b"b", b"c"]);
    let d = records(2, 4, &[b"d"]);
    let e = records(2, 5, &[b"e", b"f"]);
    append(
        &log,
        vec![
            membership(1, 0, b"{\"voters\":[1]}"),
            blank(1, 1),
            a.clone(),
            blank(2, 3),
            d.clone(),
            e.clone(),
        ],
    );
    let read = |from, end, max| log.records(from, end, max).expect("records");
    let everything = vec![
        (0, a.payload.clone()),
        (3, d.payload.clone()),
        (4, e.payload),
    ];
    // From the start, from inside a batch (its whole batch), control
    // frames left out.
    assert_eq!(read(0, u64::MAX, usize::MAX), everything);
    assert_eq!(read(1, u64::MAX, usize::MAX), everything);
    assert_eq!(read(3, u64::MAX, usize::MAX), everything[1..].to_vec());
    // Up to an end: the batch starting at it is not read.
    assert_eq!(read(0, 4, usize::MAX), everything[..2].to_vec());
    assert_eq!(read(0, 3, usize::MAX), everything[..1].to_vec());
    // A byte budget takes at least one batch.
    assert_eq!(read(0, u64::MAX, 1), everything[..1].to_vec());
    // Nothing at or past the end, or past the last batch.
    assert!(read(4, 4, usize::MAX).is_empty());
    assert!(read(6, u64::MAX, usize::MAX).is_empty());
    // Purged entries are not read.
    log.purge(id(2, 4), None).expect("purge");
    assert_eq!(read(0, u64::MAX, usize::MAX), everything[2..].to_vec());
    log.close().expect("close");
}

#[test]
fn entries_out_of_place_or_of_the_wrong_shape_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    append(&log, vec![blank(1, 5)]);
    let gap = log.append(vec![blank(1, 7)]).expect_err("a hole");
    assert!(
        matches!(gap, LogError::InvalidRaftAppend { index: 7, .. }),
        "{gap}"
    );
    let again = log.append(vec![blank(1, 5)]).expect_err("index taken");
    assert!(
        matches!(again, LogError::InvalidRaftAppend { .. }),
        "{again}"
    );
    let not_a_batch = RaftEntry {
        log_id: id(1, 6),
        kind: RaftFrameKind::Records,
        payload: Bytes::from_static(b"not a record batch at all, but long enough to be one.."),
    };
    assert!(matches!(
        log.append(vec![not_a_batch]),
        Err(LogError::InvalidRaftAppend { index: 6, .. })
    ));
    let blank_with_payload = RaftEntry {
        payload: Bytes::from_static(b"x"),
        ..blank(1, 6)
    };
    assert!(log.append(vec![blank_with_payload]).is_err());
    assert_eq!(log.state().last_entry, Some(id(1, 5)));
    append(&log, vec![blank(1, 6)]);
}

#[test]
fn reopening_after_a_drop_gives_the_same_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let (before, state) = {
        // Small segments: several rolls, the newest left unsealed.
        let log = open(dir.path(), &keys, 600);
        for i in 0..12u64 {
            let e = if i % 3 == 0 {
                blank(1, i)
            } else {
                records(1, i, &[b"value-one", b"value-two"])
            };
            append(&log, vec![e]);
        }
        assert!(log.segment_paths().len() > 2, "rolled");
        (all(&log), log.state())
        // dropped without close: the newest segment is recovered
    };
    let log = open(dir.path(), &keys, 600);
    assert_eq!(all(&log), before);
    assert_eq!(log.state(), state);
    append(&log, vec![records(2, 12, &[b"after"])]);
    assert_eq!(log.state().next_offset, state.next_offset + 1);
    log.close().expect("close");
    let log = open(dir.path(), &keys, 600);
    assert_eq!(all(&log).len(), 13);
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let before = {
        let log = open(dir.path(), &keys, 1 << 20);
        append(&log, vec![blank(1, 0), records(1, 1, &[b"kept"])]);
        all(&log)
    };
    // Half a frame after the last one, as a crash mid-write leaves it.
    let seg = raw_segments(dir.path()).pop().expect("segment").0;
    let mut data = std::fs::read(&seg).expect("read");
    data.extend_from_slice(&[0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]);
    std::fs::write(&seg, &data).expect("write");
    let log = open(dir.path(), &keys, 1 << 20);
    assert_eq!(all(&log), before);
    append(&log, vec![records(1, 2, &[b"next"])]);
    assert_eq!(all(&log).len(), 3);
}

#[test]
fn truncation_then_append_at_the_same_index_uses_a_new_segment_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    append(
        &log,
        vec![
            blank(1, 0),
            records(1, 1, &[b"a"]),
            records(1, 2, &[b"b", b"c"]),
            records(1, 3, &[b"d"]),
        ],
    );
    let seen_before = frames_on_disk(dir.path(), &keys);
    log.truncate_after(Some(1)).expect("truncate");
    assert_eq!(log.state().last_entry, Some(id(1, 1)));
    assert_eq!(log.state().next_offset, 1);
    append(
        &log,
        vec![records(2, 2, &[b"x"]), records(2, 3, &[b"y", b"z"])],
    );
    let got = all(&log);
    assert_eq!(
        got.iter()
            .map(|e| (e.log_id, e.base_offset))
            .collect::<Vec<_>>(),
        vec![(id(1, 0), 0), (id(1, 1), 0), (id(2, 2), 1), (id(2, 3), 2)]
    );
    assert_eq!(
        log.segment_paths().len(),
        2,
        "the cut segment and a new one"
    );

    let seen_after = frames_on_disk(dir.path(), &keys);
    // Index 2 was sealed before and after the truncation, under two keys.
    let before2 = seen_before.iter().find(|f| f.index == 2).expect("old 2");
    let after2 = seen_after.iter().find(|f| f.index == 2).expect("new 2");
    assert_ne!(before2.segment_id, after2.segment_id);
    assert_ne!(before2.dek, after2.dek);
    // No (key, nonce) pair sealed two different frames.
    let mut pairs: HashMap<([u8; 32], [u8; 12]), Vec<u8>> = HashMap::new();
    for f in seen_before.iter().chain(&seen_after) {
        let prev = pairs.insert((f.dek, f.nonce), f.sealed.clone());
        assert!(
            prev.is_none_or(|p| p == f.sealed),
            "nonce reused at {}",
            f.index
        );
    }
    log.close().expect("close");
    let log = open(dir.path(), &keys, 1 << 20);
    assert_eq!(all(&log), got);

    // Truncating everything leaves an empty log that takes the index again.
    log.truncate_after(None).expect("truncate all");
    assert_eq!(log.state().last_entry, None);
    assert_eq!(log.state().next_offset, 0);
    append(&log, vec![blank(3, 0)]);
    assert_eq!(all(&log).len(), 1);
}

#[test]
fn purges_hide_entries_delete_whole_segments_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 600);
    for i in 0..10u64 {
        append(&log, vec![records(1, i, &[b"0123456789"])]);
    }
    let segments = log.segment_paths().len();
    assert!(segments > 2);
    log.purge(id(1, 5), None).expect("purge");
    let got = all(&log);
    assert_eq!(got.first().map(|e| e.log_id.index), Some(6));
    assert_eq!(log.state().last_purged, Some(id(1, 5)));
    assert_eq!(log.state().log_start_offset, 6);
    assert!(
        log.segment_paths().len() < segments,
        "whole segments deleted"
    );
    drop(log);
    let log = open(dir.path(), &keys, 600);
    assert_eq!(all(&log), got);
    assert_eq!(log.state().last_purged, Some(id(1, 5)));

    // Past the end: a follower reset to its leader's log start.
    log.purge(id(3, 40), Some(1000))
        .expect("purge past the end");
    assert!(all(&log).is_empty());
    assert!(log.segment_paths().is_empty());
    assert_eq!(log.state().last_log_id(), Some(id(3, 40)));
    assert!(log.append(vec![blank(3, 40)]).is_err(), "purged index");
    append(&log, vec![records(3, 41, &[b"v"])]);
    assert_eq!(all(&log)[0].base_offset, 1000);
    drop(log);
    let log = open(dir.path(), &keys, 600);
    assert_eq!(log.state().next_offset, 1001);
    assert_eq!(log.state().last_purged, Some(id(3, 40)));
}

#[test]
fn vote_and_committed_survive_a_restart_without_a_write_per_commit() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    assert_eq!(log.vote(), None);
    let vote = RaftVote {
        term: 4,
        node_id: 2,
        committed: true,
    };
    log.save_vote(vote).expect("vote");
    append(&log, vec![blank(4, 0), records(4, 1, &[b"a"])]);
    let state_file = dir.path().join("raft.state");
    let written = std::fs::read(&state_file).expect("state");
    log.set_committed(Some(id(4, 1)));
    assert_eq!(
        std::fs::read(&state_file).expect("state"),
        written,
        "committing writes nothing"
    );
    log.close().expect("close");
    let log = open(dir.path(), &keys, 1 << 20);
    assert_eq!(log.vote(), Some(vote));
    assert_eq!(log.committed(), Some(id(4, 1)));
}

#[test]
fn nothing_is_plaintext_at_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    let mut value = b"value with ".to_vec();
    value.extend_from_slice(MARKER);
    let mut member = b"{\"note\":\"".to_vec();
    member.extend_from_slice(MARKER);
    member.extend_from_slice(b"\"}");
    append(
        &log,
        vec![membership(1, 0, &member), records(1, 1, &[&value])],
    );
    log.close().expect("close");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        assert!(
            !data.windows(MARKER.len()).any(|w| w == MARKER),
            "{} holds the marker in the clear",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "segment, envelope and state file");
    let log = open(dir.path(), &keys, 1 << 20);
    assert!(
        all(&log)[1]
            .payload
            .windows(MARKER.len())
            .any(|w| w == MARKER)
    );
}

#[test]
fn a_single_node_log_refuses_a_replicated_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    append(&log, vec![blank(1, 0), records(1, 1, &[b"a"])]);
    log.close().expect("close");
    let err = PartitionLog::open(dir.path(), config(0, 1 << 20, Durability::Fsync), keys)
        .expect_err("replicated");
    assert!(matches!(err, LogError::RaftSegment { .. }), "{err}");
}

/// A frame as found on disk by a parser written from docs/STORAGE.md.
struct SeenFrame {
    index: u64,
    segment_id: [u8; 16],
    dek: [u8; 32],
    nonce: [u8; 12],
    sealed: Vec<u8>,
}

/// The segment files of `dir` with their raw bytes.
fn raw_segments(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    log_support::segment_files(dir)
        .into_iter()
        .map(|p| {
            let d = std::fs::read(&p).expect("read");
            (p, d)
        })
        .collect()
}

/// Every frame of every segment in `dir`, each opened with RustCrypto's
/// AES-GCM under the documented nonce and AAD.
fn frames_on_disk(dir: &Path, keys: &Arc<TestKeys>) -> Vec<SeenFrame> {
    let mut out = Vec::new();
    for (path, data) in raw_segments(dir) {
        assert_eq!(&data[..4], b"SBLG");
        assert_eq!(u16::from_be_bytes([data[6], data[7]]), 2, "Raft flag");
        let topic: [u8; 16] = data[8..24].try_into().expect("topic");
        let partition: [u8; 4] = data[24..28].try_into().expect("partition");
        let segment_id: [u8; 16] = data[28..44].try_into().expect("id");
        let env = KeyEnvelope::decode(&std::fs::read(path.with_extension("key")).expect("key"))
            .expect("envelope");
        let dek = strongbox_storage::keys::SegmentKeys::open(&**keys, &env.context(), &env.wrapped)
            .expect("unwrap");
        let gcm = aes_gcm::Aes256Gcm::new_from_slice(dek.expose()).expect("key");
        let mut pos = 64;
        while pos + 44 <= data.len() {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("len")) as usize;
            if len == u32::MAX as usize {
                break;
            }
            let head = &data[pos..pos + 44];
            let index = u64::from_be_bytes(head[4..12].try_into().expect("index"));
            let mut nonce = [0u8; 12];
            nonce[3] = 1;
            nonce[4..].copy_from_slice(&head[4..12]);
            let mut aad = Vec::new();
            aad.extend_from_slice(&[0, 2]);
            aad.extend_from_slice(&topic);
            aad.extend_from_slice(&partition);
            aad.extend_from_slice(&segment_id);
            aad.extend_from_slice(&head[4..28]); // index, term, node id
            aad.push(head[28]); // kind
            aad.extend_from_slice(&head[32..44]); // base offset, record count
            let sealed = data[pos + 44..pos + 44 + len].to_vec();
            gcm.decrypt(
                &aes_gcm::Nonce::try_from(&nonce[..]).expect("nonce"),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .expect("the frame opens with the documented nonce and AAD");
            out.push(SeenFrame {
                index,
                segment_id,
                dek: *dek.expose(),
                nonce,
                sealed,
            });
            pos += 44 + len;
        }
    }
    out
}

#[test]
fn an_altered_seal_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 600);
    for i in 0..8u64 {
        append(&log, vec![records(1, i, &[b"value-one", b"value-two"])]);
    }
    log.close().expect("close");
    let segments = raw_segments(dir.path());
    assert!(segments.len() > 1);
    let flip_mac = |path: &Path| {
        let mut data = std::fs::read(path).expect("read");
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(path, &data).expect("write");
    };
    // The oldest segment's seal: the log opens, reading it fails.
    flip_mac(&segments[0].0);
    let log = open(dir.path(), &keys, 600);
    let err = log.entries(0..1).expect_err("altered seal");
    assert!(matches!(err, LogError::SealInvalid { .. }), "{err}");
    drop(log);
    flip_mac(&segments[0].0);
    // The newest seal says where the log ends: checked at open.
    flip_mac(&segments.last().expect("newest").0);
    let err = RaftLog::open(
        dir.path(),
        config(0, 600, Durability::Fsync),
        keys.clone(),
        LogEnv::default(),
    )
    .expect_err("altered newest seal");
    assert!(matches!(err, LogError::SealInvalid { .. }), "{err}");
}

/// openraft reads entries while its core truncates: a read sees the log
/// before or after a truncation, never a frame cut under it.
#[test]
fn reads_running_beside_truncations_never_fail() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = Arc::new(open(dir.path(), &keys, 600));
    append(&log, vec![blank(1, 0)]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let got = log
                    .entries(0..u64::MAX)
                    .expect("a read beside a truncation");
                for pair in got.windows(2) {
                    assert_eq!(pair[0].log_id.index + 1, pair[1].log_id.index);
                }
                reads += 1;
            }
            reads
        })
    };
    for term in 1..=40 {
        let last = log.state().last_entry.map_or(0, |l| l.index);
        for i in 1..=3 {
            append(&log, vec![records(term, last + i, &[b"0123456789abcdef"])]);
        }
        log.truncate_after(Some(last + 1)).expect("truncate");
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let reads = reader.join().expect("reader");
    assert!(reads > 0);
}

/// A follower whose log diverged from its new leader's installs the
/// leader's snapshot: its entries that contradict the snapshot go, and its
/// records continue at the snapshot's offsets, not at its own.
#[test]
fn a_snapshot_over_a_diverged_log_keeps_the_snapshots_offsets() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    for i in 0..6u64 {
        append(&log, vec![records(1, i, &[b"old-history"])]);
    }
    // The snapshot ends at index 3 in term 2: this log's index 3 is term 1.
    log.purge(id(2, 3), Some(1000)).expect("install");
    assert!(
        all(&log).is_empty(),
        "the diverged entries after it are gone"
    );
    assert_eq!(log.state().next_offset, 1000);
    append(&log, vec![records(2, 4, &[b"new"])]);
    assert_eq!(all(&log)[0].base_offset, 1000);

    // Entries after the snapshot whose offsets disagree with it go too,
    // even when the entry at its index matches.
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), &keys, 1 << 20);
    for i in 0..6u64 {
        append(&log, vec![records(1, i, &[b"a", b"b"])]);
    }
    log.purge(id(1, 2), Some(50)).expect("install");
    assert!(all(&log).is_empty());
    assert_eq!(log.state().next_offset, 50);

    // And ones that agree stay.
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), &keys, 1 << 20);
    for i in 0..6u64 {
        append(&log, vec![records(1, i, &[b"a", b"b"])]);
    }
    log.purge(id(1, 2), Some(6)).expect("install");
    assert_eq!(all(&log).len(), 3);
    assert_eq!(log.state().next_offset, 12);
}

/// A truncation that leaves no entry after a purge or a reset continues
/// at the log start, not at the offset of a removed entry.
#[test]
fn truncating_everything_after_a_reset_continues_at_the_log_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    append(&log, vec![records(1, 0, &[b"a"])]);
    log.purge(id(2, 40), Some(1000)).expect("reset");
    append(
        &log,
        vec![records(2, 41, &[b"x", b"y"]), records(2, 42, &[b"z"])],
    );
    log.truncate_after(Some(40)).expect("truncate all");
    assert_eq!(log.state().next_offset, 1000);
    drop(log);
    let log = open(dir.path(), &keys, 1 << 20);
    assert_eq!(log.state().next_offset, 1000);
    append(&log, vec![records(3, 41, &[b"w"])]);
    assert_eq!(all(&log)[0].base_offset, 1000);
}

#[test]
fn entries_never_show_their_records_in_debug_output() {
    let mut value = b"value ".to_vec();
    value.extend_from_slice(MARKER);
    let entry = records(1, 0, &[&value]);
    let shown = format!("{entry:?}");
    assert!(!shown.contains("PLAINTEXT-MARKER"), "{shown}");
    let dir = tempfile::tempdir().expect("tmp");
    let keys = TestKeys::new();
    let log = open(dir.path(), &keys, 1 << 20);
    append(&log, vec![entry]);
    let shown = format!("{:?}", all(&log));
    assert!(!shown.contains("PLAINTEXT-MARKER"), "{shown}");
    assert!(shown.contains("payload_len"), "{shown}");
}
