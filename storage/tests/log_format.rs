//! Golden byte layouts of every on-disk structure of the partition log,
//! written out by hand from docs/STORAGE.md (CRCs and the seal MAC were
//! computed independently of this code), and an end-to-end check that a
//! real log file is exactly that layout: its frame opens with RustCrypto's
//! AES-GCM, given only the documented key, nonce and AAD.

mod log_support;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use strongbox_storage::aead::SealKey;
use strongbox_storage::keys::{KekId, KekScope, WrappedDek};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_storage::log::format::{
    FrameHeader, IndexEntry, Seal, SegmentHeader, frame_aad, frame_nonce,
};
use strongbox_storage::log::{Durability, PartitionLog};

use log_support::{TestKeys, config, raw_segment, segment_files, sized_batch};

const TOPIC: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const SEG: [u8; 16] = [
    0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF,
];

fn h(s: &str) -> Vec<u8> {
    let clean: String = s.split_whitespace().collect();
    hex::decode(clean).expect("hex")
}

fn header() -> SegmentHeader {
    SegmentHeader {
        flags: 0,
        topic_id: TOPIC,
        partition: 3,
        segment_id: SEG,
        base_offset: 4096,
        created_at_ms: 1_700_000_000_000,
    }
}

#[test]
fn segment_header_layout() {
    let expected = h("
        53424c47                            magic SBLG
        0001 0000                           version 1, flags 0
        000102030405060708090a0b0c0d0e0f    topic id
        00000003                            partition
        a0a1a2a3a4a5a6a7a8a9aaabacadaeaf    segment id
        0000000000001000                    base offset 4096
        0000018bcfe56800                    created at 1700000000000
        bc99113e                            crc32c
    "
    .lines()
    .map(|l| {
        l.split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_hexdigit()))
            .collect::<String>()
    })
    .collect::<String>()
    .as_str());
    assert_eq!(header().encode().to_vec(), expected);
    assert_eq!(SegmentHeader::decode(&expected), Ok(header()));
}

#[test]
fn frame_header_nonce_and_aad_layout() {
    let f = FrameHeader {
        len: 0x210,
        base_offset: 4096,
        record_count: 3,
    };
    assert_eq!(f.encode().to_vec(), h("00000210 0000000000001000 00000003"));
    assert_eq!(FrameHeader::decode(&f.encode()), Ok(f));
    assert_eq!(f.frame_len(), 16 + 0x210);
    assert_eq!(f.batch_len(), 0x210 - 16);
    assert_eq!(frame_nonce(4096).to_vec(), h("00000000 0000000000001000"));
    assert_eq!(
        frame_aad(&TOPIC, 3, &SEG, 4096, 3).to_vec(),
        h("0001
           000102030405060708090a0b0c0d0e0f
           00000003
           a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
           0000000000001000
           00000003")
    );
}

#[test]
fn seal_layout_and_mac() {
    let dek = [0x42u8; 32];
    let mut seal = Seal {
        next_offset: 4099,
        frame_count: 1,
        frames_end: 0x250,
        max_timestamp: 1_700_000_000_123,
        sealed_at_ms: 1_700_000_000_999,
        mac: [0; 32],
    };
    seal.mac = SealKey::derive(&dek, &SEG).sign(&[&header().encode(), &seal.signed_bytes()]);
    let expected = h("
        ffffffff 5342534c
        0000000000001003
        0000000000000001
        0000000000000250
        0000018bcfe5687b
        0000018bcfe56be7
        a2dec4db087ca1294277e424793232c9d513c24d6fc7219f5eb719bde35b331a");
    assert_eq!(seal.encode().to_vec(), expected);
    assert_eq!(Seal::decode(&expected), Ok(seal));
}

#[test]
fn index_entry_layout() {
    let e = IndexEntry {
        offset: 4096,
        position: 64,
        max_ts_before: i64::MIN,
    };
    assert_eq!(
        e.encode().to_vec(),
        h("0000000000001000 0000000000000040 8000000000000000")
    );
    assert_eq!(IndexEntry::decode(&e.encode()), Ok(e));
}

#[test]
fn envelope_layout() {
    let env = KeyEnvelope {
        topic_id: TOPIC,
        partition: 3,
        segment_id: SEG,
        base_offset: 4096,
        wrapped: WrappedDek {
            kek: KekId {
                scope: KekScope::Broker,
                version: 2,
            },
            wrapped: vec![0x5A; 40],
        },
    };
    let expected = h("
        53424b45 0001 0000
        000102030405060708090a0b0c0d0e0f
        00000003
        a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
        0000000000001000
        00000002
        06 62726f6b6572
        0028 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
        c346e650");
    assert_eq!(env.encode().expect("encode"), expected);
    assert_eq!(KeyEnvelope::decode(&expected).expect("decode"), env);
}

/// A file written by the log, read back with nothing but the documented
/// layout and an independent AES-GCM.
#[test]
fn a_written_segment_is_the_documented_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let log = PartitionLog::open(
        dir.path(),
        config(5, 1 << 20, Durability::Fsync),
        keys.clone(),
    )
    .expect("open");
    let batches = [
        sized_batch(1_700_000_000_000, 3, 50, 1),
        sized_batch(1_700_000_000_100, 2, 70, 2),
    ];
    for b in &batches {
        log.append(b)
            .expect("append")
            .durable
            .wait()
            .expect("durable");
    }
    log.close().expect("close");

    let path = segment_files(dir.path()).pop().expect("segment");
    let data = std::fs::read(&path).expect("read");
    let header = SegmentHeader::decode(&data[..64]).expect("header");
    assert_eq!(
        (header.topic_id, header.partition, header.base_offset),
        (log_support::TOPIC, 5, 0)
    );
    assert!(header.encrypted());

    // The DEK, from the envelope, through the test key manager.
    let env = KeyEnvelope::decode(&std::fs::read(path.with_extension("key")).expect("key"))
        .expect("envelope");
    assert_eq!(env.segment_id, header.segment_id);
    let dek = strongbox_storage::keys::SegmentKeys::open(&*keys, &env.context(), &env.wrapped)
        .expect("unwrap");
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(dek.expose()).expect("key");

    let raw = raw_segment(&path).expect("raw");
    assert!(raw.sealed);
    assert_eq!(raw.frames.len(), 2);
    let mut offset = 0u64;
    for (frame, batch) in raw.frames.iter().zip(&batches) {
        assert_eq!(frame.base_offset, offset);
        assert_eq!(frame.record_count, batch.record_count());
        assert_eq!(frame.len, batch.len() + 16);
        let nonce = aes_gcm::Nonce::try_from(&frame_nonce(offset)[..]).expect("nonce");
        let aad = frame_aad(
            &header.topic_id,
            5,
            &header.segment_id,
            offset,
            batch.record_count(),
        );
        let plain = gcm
            .decrypt(
                &nonce,
                Payload {
                    msg: &frame.bytes[16..],
                    aad: &aad,
                },
            )
            .expect("the frame opens with the documented nonce and AAD");
        assert_eq!(&plain[..], &batch.as_bytes()[..]);
        offset += u64::from(batch.record_count());
    }

    let seal = Seal::decode(&data[data.len() - 80..]).expect("seal");
    assert_eq!(seal.next_offset, 5);
    assert_eq!(seal.frame_count, 2);
    assert_eq!(seal.frames_end as usize, raw.frames_end);
    assert_eq!(seal.max_timestamp, 1_700_000_000_101);
    assert!(
        SealKey::derive(dek.expose(), &header.segment_id)
            .verify(&[&data[..64], &seal.signed_bytes()], &seal.mac)
    );

    // The index has an entry for the first frame.
    let index = std::fs::read(path.with_extension("index")).expect("index");
    assert_eq!(index.len() % 24, 0);
    let first = IndexEntry::decode(&index[..24]).expect("entry");
    assert_eq!(
        (first.offset, first.position, first.max_ts_before),
        (0, 64, i64::MIN)
    );
}
