//! Golden byte layouts of a replicated partition's on-disk structures (Raft
//! frames, their nonce and AAD, the state file, the header flag), written
//! out by hand from docs/STORAGE.md ("Replicated segments"; the CRCs were
//! computed independently of this code), a frame sealed by the storage
//! crate's AEAD and opened with RustCrypto's AES-GCM given only the
//! documented nonce and AAD, and a single-node log refusing a directory
//! that holds a Raft segment.

mod log_support;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use strongbox_storage::aead::Aes256Gcm;
use strongbox_storage::log::format::{FormatError, SegmentHeader};
use strongbox_storage::log::raft_format::{
    FLAG_RAFT_FRAMES, RaftFrameHeader, RaftFrameKind, RaftLogId, RaftState, RaftVote,
    raft_frame_aad, raft_frame_nonce,
};
use strongbox_storage::log::{Durability, LogError, PartitionLog};

use log_support::{TestKeys, config, segment_files, sized_batch};

const TOPIC: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const SEG: [u8; 16] = [
    0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF,
];

/// Hex with spaces, newlines and trailing comments (after two spaces).
fn h(s: &str) -> Vec<u8> {
    let clean: String = s
        .lines()
        .map(|l| l.trim_start().split("  ").next().unwrap_or_default())
        .flat_map(|l| l.split_whitespace())
        .collect();
    hex::decode(clean).expect("hex")
}

fn log_id(term: u64, node_id: u64, index: u64) -> RaftLogId {
    RaftLogId {
        term,
        node_id,
        index,
    }
}

#[test]
fn a_raft_segment_header_sets_flag_bit_1_and_keeps_version_1() {
    let header = SegmentHeader {
        flags: FLAG_RAFT_FRAMES,
        topic_id: TOPIC,
        partition: 3,
        segment_id: SEG,
        base_offset: 7,
        created_at_ms: 1_700_000_000_000,
    };
    let expected = h("
        53424c47 0001 0002                   magic, version 1, flags: Raft frames
        000102030405060708090a0b0c0d0e0f     topic id
        00000003                             partition
        a0a1a2a3a4a5a6a7a8a9aaabacadaeaf     segment id
        0000000000000007                     first Raft index 7 (the file name)
        0000018bcfe56800                     created at
        61bb991d                             crc32c
    ");
    assert_eq!(header.encode().to_vec(), expected);
    let decoded = SegmentHeader::decode(&expected).expect("decode");
    assert_eq!(decoded, header);
    assert!(decoded.raft_frames() && decoded.encrypted());

    let both = SegmentHeader {
        flags: FLAG_RAFT_FRAMES | 0x0001,
        ..header
    };
    assert!(matches!(
        SegmentHeader::decode(&both.encode()),
        Err(FormatError::Invalid { field: "flags", .. })
    ));
}

#[test]
fn record_frame_header_nonce_and_aad_layout() {
    let f = RaftFrameHeader::new(RaftFrameKind::Records, 0x200, log_id(5, 2, 4097), 4096, 3)
        .expect("records");
    assert_eq!(f.len, 0x210);
    assert_eq!(
        f.encode().to_vec(),
        h("
        00000210            len: batch + tag
        0000000000001001    index 4097
        0000000000000005    term 5
        0000000000000002    node 2
        00 000000           kind records, reserved
        0000000000001000    base offset 4096
        00000003            record count 3
    ")
    );
    assert_eq!(RaftFrameHeader::decode(&f.encode()), Ok(f));
    assert_eq!(f.frame_len(), 44 + 0x210);
    assert_eq!(f.next_offset(), Some(4099));
    assert_eq!(
        raft_frame_nonce(4097).to_vec(),
        h("00000001 0000000000001001")
    );
    assert_eq!(
        raft_frame_aad(&TOPIC, 3, &SEG, &f).to_vec(),
        h("
        0002                                 AAD version 2
        000102030405060708090a0b0c0d0e0f     topic id
        00000003                             partition
        a0a1a2a3a4a5a6a7a8a9aaabacadaeaf     segment id
        0000000000001001                     index
        0000000000000005                     term
        0000000000000002                     node id
        00                                   kind
        0000000000001000                     base offset
        00000003                             record count
    ")
    );
}

#[test]
fn control_frame_layouts() {
    let blank =
        RaftFrameHeader::new(RaftFrameKind::Blank, 0, log_id(6, 1, 4098), 4099, 0).expect("blank");
    assert_eq!(
        blank.encode().to_vec(),
        h("
        00000010            len: the tag alone
        0000000000001002    index 4098
        0000000000000006    term 6
        0000000000000001    node 1
        01 000000           kind blank
        0000000000001003    base offset: the next record's, 4099
        00000000            no records
    ")
    );
    assert_eq!(blank.next_offset(), Some(4099));
    let membership =
        RaftFrameHeader::new(RaftFrameKind::Membership, 7, log_id(6, 1, 4099), 4099, 0)
            .expect("membership");
    assert_eq!(
        membership.encode().to_vec(),
        h(
            "00000017 0000000000001003 0000000000000006 0000000000000001 02 000000
           0000000000001003 00000000"
        )
    );
    // Two control frames and the batch after them share a base offset, so
    // the nonce is the index, which they never share.
    assert_ne!(
        raft_frame_nonce(blank.log_id.index),
        raft_frame_nonce(membership.log_id.index)
    );
}

#[test]
fn state_file_layout() {
    let state = RaftState {
        topic_id: TOPIC,
        partition: 3,
        vote: Some(RaftVote {
            term: 5,
            node_id: 2,
            committed: true,
        }),
        committed: None,
        last_purged: Some(log_id(4, 1, 99)),
        log_start_offset: 4096,
        written_at_ms: 1_700_000_000_000,
        snapshot_meta: br#"{"m":1}"#.to_vec(),
    };
    let expected = h("
        53425253 0001 000b                   magic SBRS, version 1, flags: vote, committed vote, purged
        000102030405060708090a0b0c0d0e0f     topic id
        00000003                             partition
        0000000000000005 0000000000000002    vote: term 5, node 2
        0000000000000000 0000000000000000 0000000000000000    committed: absent
        0000000000000004 0000000000000001 0000000000000063    last purged: term 4, node 1, index 99
        0000000000001000                     log start offset 4096
        0000018bcfe56800                     written at
        00000007 7b226d223a317d              snapshot meta, 7 bytes
        3441c617                             crc32c
    ");
    assert_eq!(state.encode().expect("encode"), expected);
    assert_eq!(RaftState::decode(&expected), Ok(state));
}

/// A Raft frame sealed with the storage crate's AEAD (ring) opens with
/// RustCrypto's AES-GCM under exactly the documented nonce and AAD, and
/// fails when any header field the AAD binds is changed.
#[test]
fn a_sealed_raft_frame_opens_with_the_documented_nonce_and_aad() {
    let dek = [0x42u8; 32];
    let batch = sized_batch(1_700_000_000_000, 3, 40, 7);
    let header = RaftFrameHeader::new(
        RaftFrameKind::Records,
        batch.len(),
        log_id(5, 2, 4097),
        4096,
        batch.record_count(),
    )
    .expect("header");
    let mut body = batch.as_bytes().to_vec();
    let tag = Aes256Gcm::new(&dek)
        .seal_in_place(
            &raft_frame_nonce(4097),
            &raft_frame_aad(&TOPIC, 3, &SEG, &header),
            &mut body,
        )
        .expect("seal");
    body.extend_from_slice(&tag);
    assert_eq!(body.len(), header.len as usize);

    let gcm = aes_gcm::Aes256Gcm::new_from_slice(&dek).expect("key");
    let open = |h: &RaftFrameHeader, index: u64| {
        let nonce = aes_gcm::Nonce::try_from(&raft_frame_nonce(index)[..]).expect("nonce");
        gcm.decrypt(
            &nonce,
            Payload {
                msg: &body,
                aad: &raft_frame_aad(&TOPIC, 3, &SEG, h),
            },
        )
    };
    assert_eq!(
        open(&header, 4097).expect("opens").as_slice(),
        &batch.as_bytes()[..]
    );
    let other_term = RaftFrameHeader {
        log_id: log_id(6, 2, 4097),
        ..header
    };
    assert!(open(&other_term, 4097).is_err(), "another term");
    let other_node = RaftFrameHeader {
        log_id: log_id(5, 3, 4097),
        ..header
    };
    assert!(open(&other_node, 4097).is_err(), "another leader");
    let other_offset = RaftFrameHeader {
        base_offset: 4095,
        ..header
    };
    assert!(open(&other_offset, 4097).is_err(), "another offset");
    let moved = RaftFrameHeader {
        log_id: log_id(5, 2, 4098),
        ..header
    };
    assert!(open(&moved, 4098).is_err(), "another index");
}

/// A directory holding a Raft segment is not read as a single-node log: a
/// misread would take Raft frame headers for version-1 ones.
#[test]
fn a_single_node_log_refuses_a_raft_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let log = PartitionLog::open(
        dir.path(),
        config(0, 1 << 20, Durability::Fsync),
        keys.clone(),
    )
    .expect("open");
    log.append(&sized_batch(1_700_000_000_000, 2, 30, 1))
        .expect("append")
        .durable
        .wait()
        .expect("durable");
    log.close().expect("close");

    let path = segment_files(dir.path()).pop().expect("segment");
    let mut data = std::fs::read(&path).expect("read");
    let mut header = SegmentHeader::decode(&data[..64]).expect("header");
    header.flags |= FLAG_RAFT_FRAMES;
    data[..64].copy_from_slice(&header.encode());
    std::fs::write(&path, &data).expect("write");

    let err = PartitionLog::open(dir.path(), config(0, 1 << 20, Durability::Fsync), keys)
        .expect_err("a Raft segment");
    assert!(matches!(err, LogError::RaftSegment { .. }), "{err}");
    assert!(!err.is_damage());
    assert!(err.to_string().contains("replicated partition"), "{err}");
}
