//! Append throughput of the partition log with 64 KiB batches of 1 KiB
//! records: durability `none` and `fsync`, each encrypted and with
//! encryption switched off (a benchmark-only constructor), plus raw
//! AES-256-GCM sealing of the same bytes through the storage engine's AEAD
//! (`aws-lc-rs`) and with `ring` (its AEAD before), for comparison. The difference between
//! the encrypted and plaintext rows is what encryption at rest costs.
//!
//! Run: `cargo bench -p strongbox-benches --bench storage_append`.
//! Data goes to a temporary directory under the target directory (a real
//! disk, so `fsync` means something); retention keeps it under 256 MiB.
//! When `/dev/shm` exists, the `none` rows are run there too
//! (`storage_append_64KiB_tmpfs`): with storage at memory speed the
//! append path is pure CPU, the worst case for the share of encryption.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_storage::aead::Aes256Gcm;
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::{Durability, LogConfig, PartitionLog, RetentionPolicy};
use strongbox_storage::meta::MetaStore;

const RECORD_BYTES: usize = 1024;
const BATCH_BYTES: usize = 64 * 1024;
const SEGMENT_BYTES: u64 = 64 << 20;
/// Appends between retention passes (one segment's worth).
const RETENTION_EVERY: u64 = SEGMENT_BYTES / BATCH_BYTES as u64;
/// Outstanding appends under `fsync`: a producer pipelining its batches.
const FSYNC_WINDOW: usize = 16;

/// As many 1 KiB records as fit in 64 KiB.
fn batch() -> RecordBatch {
    let value: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let mut b = BatchBuilder::with_capacity(1_700_000_000_000, BATCH_BYTES);
    let mut i = 0i64;
    while b.encoded_len() + BatchBuilder::record_len(Some(b"key-0000"), &[], &value) <= BATCH_BYTES
    {
        let key = format!("key-{:04}", i % 10_000);
        b.push(1_700_000_000_000 + i, Some(key.as_bytes()), &[], &value)
            .expect("push");
        i += 1;
    }
    RecordBatch::parse(b.finish().expect("finish")).expect("parse")
}

fn config(durability: Durability) -> LogConfig {
    let mut c = LogConfig::new([0x5B; 16], 0, KekScope::Broker);
    c.segment_bytes = SEGMENT_BYTES;
    c.durability = durability;
    c
}

struct Bench {
    _dir: tempfile::TempDir,
    log: PartitionLog,
    appended: u64,
}

fn open(root: &Path, durability: Durability, encrypted: bool) -> Bench {
    let dir = tempfile::tempdir_in(root).expect("tempdir");
    let log = if encrypted {
        let provider = FileKeyProvider::open(dir.path().join("keys")).expect("key provider");
        let meta = MetaStore::open(dir.path().join("meta.redb")).expect("metadata store");
        let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 1024));
        PartitionLog::open(dir.path().join("log"), config(durability), keys).expect("open")
    } else {
        PartitionLog::dangerous_open_unencrypted_for_benchmarks(
            dir.path().join("log"),
            config(durability),
        )
        .expect("open")
    };
    Bench {
        _dir: dir,
        log,
        appended: 0,
    }
}

impl Bench {
    fn keep_disk_bounded(&mut self) {
        self.appended += 1;
        if self.appended.is_multiple_of(RETENTION_EVERY) {
            self.log
                .apply_retention(&RetentionPolicy {
                    max_age: None,
                    max_bytes: Some(4 * SEGMENT_BYTES),
                })
                .expect("retention");
        }
    }

    fn run_none(&mut self, batch: &RecordBatch, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let a = self.log.append(batch).expect("append");
            a.durable.wait().expect("durable");
            self.keep_disk_bounded();
        }
        start.elapsed()
    }

    fn run_fsync(&mut self, batch: &RecordBatch, iters: u64) -> Duration {
        let start = Instant::now();
        let mut window = VecDeque::with_capacity(FSYNC_WINDOW);
        for _ in 0..iters {
            if window.len() == FSYNC_WINDOW {
                let oldest: strongbox_storage::log::Durable =
                    window.pop_front().expect("non-empty window");
                oldest.wait().expect("durable");
            }
            window.push_back(self.log.append(batch).expect("append").durable);
            self.keep_disk_bounded();
        }
        for w in window {
            w.wait().expect("durable");
        }
        start.elapsed()
    }
}

fn storage_append(c: &mut Criterion) {
    let batch = batch();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut group = c.benchmark_group("storage_append_64KiB");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));

    // Raw AES-256-GCM sealing of the same bytes, in place, as the log does
    // (`storage::aead`: aws-lc-rs).
    let aead = Aes256Gcm::new(&[0x42; 32]);
    let mut buf = batch.as_bytes().to_vec();
    let mut counter = 0u64;
    group.bench_function("aws_lc_seal", |b| {
        b.iter(|| {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            aead.seal_in_place(&nonce, b"bench aad", &mut buf)
                .expect("seal")
        })
    });

    // The same sealing with ring, the storage engine's AEAD before
    // aws-lc-rs (docs/BENCHMARKS.md has the comparison).
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[0x42; 32]).expect("a 32-byte key"),
    );
    group.bench_function("ring_seal", |b| {
        b.iter(|| {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            ring_key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(b"bench aad"),
                    &mut buf,
                )
                .expect("seal")
        })
    });

    for (name, durability) in [("none", Durability::None), ("fsync", Durability::Fsync)] {
        for encrypted in [true, false] {
            run_log(&mut group, root, name, durability, encrypted, &batch);
        }
    }
    group.finish();

    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let mut group = c.benchmark_group("storage_append_64KiB_tmpfs");
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.sample_size(20);
        group.warm_up_time(Duration::from_secs(2));
        group.measurement_time(Duration::from_secs(8));
        for encrypted in [true, false] {
            run_log(&mut group, shm, "none", Durability::None, encrypted, &batch);
        }
        group.finish();
    } else {
        eprintln!("/dev/shm is missing: the tmpfs rows are not measured");
    }
}

fn run_log(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    root: &Path,
    name: &str,
    durability: Durability,
    encrypted: bool,
    batch: &RecordBatch,
) {
    let id = format!(
        "{name}/{}",
        if encrypted { "encrypted" } else { "plaintext" }
    );
    let mut bench = open(root, durability, encrypted);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| match durability {
            Durability::Fsync => bench.run_fsync(batch, iters),
            _ => bench.run_none(batch, iters),
        })
    });
    bench.log.close().expect("close");
}

criterion_group!(benches, storage_append);
criterion_main!(benches);
