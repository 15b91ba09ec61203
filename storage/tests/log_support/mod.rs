//! Shared helpers of the partition-log tests: a key manager that really
//! wraps data keys (RFC 5649 under a random test KEK), a manual clock, batch
//! builders, and a raw reader of segment files that does not use the code
//! under test.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes_kw::KwpAes256;
use aes_kw::cipher::KeyInit;
use bytes::Bytes;
use ring::rand::SecureRandom;
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_storage::keys::{
    Dek, KekId, KekScope, KeyError, SegmentKeyContext, SegmentKeys, WrappedDek,
};
use strongbox_storage::log::{Clock, Durability, LogConfig};
use zeroize::Zeroizing;

/// A `SegmentKeys` for tests: fresh CSPRNG data keys, wrapped with AES-256
/// key wrap with padding under a random in-memory KEK.
pub struct TestKeys {
    kek: Zeroizing<[u8; 32]>,
    pub created: Mutex<Vec<[u8; 16]>>,
    pub forgotten: Mutex<Vec<[u8; 16]>>,
    pub opens: AtomicU64,
    pub fail_create: AtomicBool,
}

impl fmt::Debug for TestKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestKeys(<kek redacted>)")
    }
}

impl TestKeys {
    pub fn new() -> Arc<Self> {
        let mut kek = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut kek)
            .expect("random KEK");
        Self::with_kek(kek)
    }

    pub fn with_kek(kek: [u8; 32]) -> Arc<Self> {
        Arc::new(Self {
            kek: Zeroizing::new(kek),
            created: Mutex::new(Vec::new()),
            forgotten: Mutex::new(Vec::new()),
            opens: AtomicU64::new(0),
            fail_create: AtomicBool::new(false),
        })
    }

    pub fn kek_hex(&self) -> String {
        hex::encode(*self.kek)
    }

    fn cipher(&self) -> KwpAes256 {
        KwpAes256::new(&(*self.kek).into())
    }

    pub fn forgotten_ids(&self) -> HashSet<[u8; 16]> {
        self.forgotten.lock().unwrap().iter().copied().collect()
    }
}

impl SegmentKeys for TestKeys {
    fn create(&self, ctx: &SegmentKeyContext) -> Result<(Dek, WrappedDek), KeyError> {
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(KeyError::Unavailable(
                "test key provider switched off".into(),
            ));
        }
        let dek = Dek::generate()?;
        let mut buf = [0u8; 40];
        let wrapped = self
            .cipher()
            .wrap_key(dek.expose(), &mut buf)
            .map_err(|_| KeyError::Unavailable("wrap failed".into()))?
            .to_vec();
        assert_ne!(
            &wrapped[..32],
            dek.expose().as_slice(),
            "wrapping must change the key"
        );
        self.created.lock().unwrap().push(ctx.segment_id);
        Ok((
            dek,
            WrappedDek {
                kek: KekId {
                    scope: ctx.scope.clone(),
                    version: 1,
                },
                wrapped,
            },
        ))
    }

    fn open(&self, _ctx: &SegmentKeyContext, wrapped: &WrappedDek) -> Result<Dek, KeyError> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        let mut buf = Zeroizing::new([0u8; 40]);
        let key = self
            .cipher()
            .unwrap_key(&wrapped.wrapped, &mut buf[..])
            .map_err(|_| KeyError::UnwrapRejected {
                kek: wrapped.kek.label(),
            })?;
        let bytes: [u8; 32] = key.try_into().map_err(|_| KeyError::UnwrapRejected {
            kek: wrapped.kek.label(),
        })?;
        Ok(Dek::from_bytes(bytes))
    }

    fn forget(&self, ctx: &SegmentKeyContext) -> Result<(), KeyError> {
        self.forgotten.lock().unwrap().push(ctx.segment_id);
        Ok(())
    }
}

/// A clock the test moves.
#[derive(Debug)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(start_ms)))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub const TOPIC: [u8; 16] = *b"orders-topic-id!";

pub fn config(partition: u32, segment_bytes: u64, durability: Durability) -> LogConfig {
    let mut c = LogConfig::new(TOPIC, partition, KekScope::Broker);
    c.segment_bytes = segment_bytes;
    c.index_interval_bytes = 256;
    c.durability = durability;
    c
}

/// A batch of records with the given timestamps and values.
pub fn batch(records: &[(i64, &[u8])]) -> RecordBatch {
    let base_ts = records.first().map_or(0, |r| r.0);
    let mut b = BatchBuilder::new(base_ts);
    for (ts, value) in records {
        b.push(*ts, Some(b"key"), &[("h", b"v")], value)
            .expect("push");
    }
    RecordBatch::parse(b.finish().expect("finish")).expect("parse")
}

/// A batch of `count` records of `value_len` bytes each at time `ts`.
pub fn sized_batch(ts: i64, count: usize, value_len: usize, fill: u8) -> RecordBatch {
    let value = vec![fill; value_len];
    let records: Vec<(i64, &[u8])> = (0..count).map(|i| (ts + i as i64, &value[..])).collect();
    batch(&records)
}

/// The segment files in `dir`, oldest first; none when `dir` does not exist
/// yet (a crash test may kill its child before it created the directory).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        other => other.expect("list"),
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// A frame found by the raw reader.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub position: usize,
    pub len: usize,
    pub base_offset: u64,
    pub record_count: u32,
    /// Header, ciphertext and tag.
    pub bytes: Bytes,
}

/// A segment file parsed without the code under test (the layout from
/// docs/STORAGE.md).
#[derive(Debug, Clone)]
pub struct RawSegment {
    pub segment_id: [u8; 16],
    pub base_offset: u64,
    pub frames: Vec<RawFrame>,
    /// Position after the last complete frame.
    pub frames_end: usize,
    /// True when a complete seal follows the frames and ends the file.
    pub sealed: bool,
    pub file_len: usize,
}

pub fn raw_segment(path: &Path) -> Option<RawSegment> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 64 {
        return None;
    }
    let segment_id: [u8; 16] = data[28..44].try_into().ok()?;
    let base_offset = u64::from_be_bytes(data[44..52].try_into().ok()?);
    let mut pos = 64;
    let mut frames = Vec::new();
    let mut sealed = false;
    while pos + 16 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().ok()?);
        if len == u32::MAX {
            sealed = data.len() == pos + 80 && &data[pos + 4..pos + 8] == b"SBSL";
            break;
        }
        let end = pos + 16 + len as usize;
        if end > data.len() {
            break;
        }
        frames.push(RawFrame {
            position: pos,
            len: len as usize,
            base_offset: u64::from_be_bytes(data[pos + 4..pos + 12].try_into().ok()?),
            record_count: u32::from_be_bytes(data[pos + 12..pos + 16].try_into().ok()?),
            bytes: Bytes::copy_from_slice(&data[pos..end]),
        });
        pos = end;
    }
    Some(RawSegment {
        segment_id,
        base_offset,
        frames,
        frames_end: pos,
        sealed,
        file_len: data.len(),
    })
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("32 bytes")
}

/// A small deterministic generator (xorshift64*), so kill schedules can
/// be replayed from a seed without another crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// A frame of a Raft segment found by the raw reader.
#[derive(Debug, Clone)]
pub struct RawRaftFrame {
    pub position: usize,
    pub index: u64,
    pub term: u64,
    pub node_id: u64,
    pub kind: u8,
    pub base_offset: u64,
    pub record_count: u32,
    /// The 44 header bytes.
    pub header: Vec<u8>,
    /// Ciphertext and tag.
    pub sealed: Vec<u8>,
}

/// A Raft segment file parsed without the code under test (the layout
/// from docs/STORAGE.md, "Replicated segments").
#[derive(Debug, Clone)]
pub struct RawRaftSegment {
    pub flags: u16,
    pub segment_id: [u8; 16],
    pub first_index: u64,
    pub frames: Vec<RawRaftFrame>,
    pub frames_end: usize,
    pub sealed: bool,
    pub file_len: usize,
}

pub fn raw_raft_segment(path: &Path) -> Option<RawRaftSegment> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 64 {
        return None;
    }
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let mut pos = 64;
    let mut frames = Vec::new();
    let mut sealed = false;
    while pos + 44 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().ok()?);
        if len == u32::MAX {
            sealed = data.len() == pos + 80 && &data[pos + 4..pos + 8] == b"SBSL";
            break;
        }
        let end = pos + 44 + len as usize;
        if end > data.len() {
            break;
        }
        let h = &data[pos..pos + 44];
        frames.push(RawRaftFrame {
            position: pos,
            index: be64(&h[4..12]),
            term: be64(&h[12..20]),
            node_id: be64(&h[20..28]),
            kind: h[28],
            base_offset: be64(&h[32..40]),
            record_count: u32::from_be_bytes(h[40..44].try_into().ok()?),
            header: h.to_vec(),
            sealed: data[pos + 44..end].to_vec(),
        });
        pos = end;
    }
    Some(RawRaftSegment {
        flags: u16::from_be_bytes([data[6], data[7]]),
        segment_id: data[28..44].try_into().ok()?,
        first_index: be64(&data[44..52]),
        frames,
        frames_end: pos,
        sealed,
        file_len: data.len(),
    })
}

/// The documented nonce of a Raft frame: `00 00 00 01 ‖ index`.
pub fn raft_nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3] = 1;
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// The documented AAD of a Raft frame, from its raw header.
pub fn raft_aad(topic: &[u8; 16], partition: u32, segment_id: &[u8; 16], header: &[u8]) -> Vec<u8> {
    let mut aad = vec![0, 2];
    aad.extend_from_slice(topic);
    aad.extend_from_slice(&partition.to_be_bytes());
    aad.extend_from_slice(segment_id);
    aad.extend_from_slice(&header[4..28]); // index, term, node id
    aad.push(header[28]); // kind
    aad.extend_from_slice(&header[32..44]); // base offset, record count
    aad
}
