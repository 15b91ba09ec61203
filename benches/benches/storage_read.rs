//! Read throughput of the partition log, the path a replaying subscriber
//! takes: records of 1 KiB, 16 KiB and 256 KiB values in batches of about
//! 256 KiB (the client's default batch size), encrypted at rest under the
//! real key manager, read back in calls of 1 MiB (the broker's largest
//! `Records` frame) from the first offset to the last. A second group
//! reads one batch at a random offset per call: the cost of finding where
//! a read starts (index lookup, first frame authenticated).
//!
//! Run: `cargo bench -p strongbox-benches --bench storage_read`.
//! The data (64 MiB per row) sits in a temporary directory under the target
//! directory and is read from the page cache after the first pass: this
//! measures the CPU cost of the read path, not the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::{Durability, LogConfig, PartitionLog};
use strongbox_storage::meta::MetaStore;

const BATCH_BYTES: usize = 256 * 1024;
const LOG_BYTES: usize = 64 << 20;
const READ_BYTES: usize = 1 << 20;

/// Records of `value_len` bytes, as many as fit in 256 KiB (at least one).
fn batch(value_len: usize, ts: i64) -> RecordBatch {
    let value: Vec<u8> = (0..value_len).map(|i| (i * 31 % 251) as u8).collect();
    let mut b = BatchBuilder::with_capacity(ts, BATCH_BYTES + value_len);
    loop {
        b.push(ts, Some(b"key-0000"), &[], &value).expect("push");
        if b.encoded_len() + BatchBuilder::record_len(Some(b"key-0000"), &[], &value) > BATCH_BYTES
        {
            break;
        }
    }
    RecordBatch::parse(b.finish().expect("finish")).expect("parse")
}

struct Filled {
    _dir: tempfile::TempDir,
    log: PartitionLog,
    bytes: u64,
}

fn fill(root: &Path, value_len: usize) -> Filled {
    let dir = tempfile::tempdir_in(root).expect("tempdir");
    let provider = FileKeyProvider::open(dir.path().join("keys")).expect("key provider");
    let meta = MetaStore::open(dir.path().join("meta.redb")).expect("metadata store");
    let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 1024));
    let mut config = LogConfig::new([0x5B; 16], 0, KekScope::Broker);
    config.segment_bytes = 16 << 20;
    config.durability = Durability::None;
    let log = PartitionLog::open(dir.path().join("log"), config, keys).expect("open");
    let b = batch(value_len, 1_700_000_000_000);
    let mut bytes = 0u64;
    while (bytes as usize) < LOG_BYTES {
        let _ = log.append(&b).expect("append");
        bytes += b.len() as u64;
    }
    Filled {
        _dir: dir,
        log,
        bytes,
    }
}

fn replay(log: &PartitionLog) -> u64 {
    let end = log.high_watermark();
    let mut at = 0;
    let mut bytes = 0u64;
    while at < end {
        for (base, batch) in log.read(at, READ_BYTES).expect("read") {
            let header = strongbox_protocol::batch::parse_header(&batch).expect("header");
            at = base + u64::from(header.record_count);
            bytes += batch.len() as u64;
        }
    }
    bytes
}

fn benches(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut replays = c.benchmark_group("storage_read_replay_1MiB_calls");
    replays.sample_size(10);
    replays.measurement_time(Duration::from_secs(10));
    let sizes = [("1KiB", 1024), ("16KiB", 16 * 1024), ("256KiB", 256 * 1024)];
    let mut filled = Vec::new();
    for (name, value_len) in sizes {
        let f = fill(root, value_len);
        replays.throughput(Throughput::Bytes(f.bytes));
        replays.bench_function(name, |b| b.iter(|| replay(&f.log)));
        filled.push((name, f));
    }
    replays.finish();

    let mut lookups = c.benchmark_group("storage_read_random_offset");
    lookups.sample_size(20);
    lookups.measurement_time(Duration::from_secs(5));
    for (name, f) in &filled {
        let end = f.log.high_watermark();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        lookups.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % end
                },
                |offset| f.log.read(offset, 1).expect("read"),
                BatchSize::SmallInput,
            )
        });
    }
    lookups.finish();
}

criterion_group!(storage_read, benches);
criterion_main!(storage_read);
