//! The read path's memory: index entries kept in memory instead of read
//! from the `.index` file on every read, and read buffers reused across
//! reads. What must hold: lookups stay right across rolls, retention,
//! truncation and reopening; a sealed segment's index file is read at most
//! once while it stays cached; and a reused buffer never lets the bytes of
//! one read show up in another.

mod log_support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use strongbox_storage::io::{EntryMeta, FileIo, IoFile, OpenMode, StorageIo};
use strongbox_storage::log::{Durability, LogEnv, PartitionLog, RetentionPolicy};

use log_support::{Rng, TestKeys, config, sized_batch};

const T0: i64 = 1_700_000_000_000;

/// The real file system, counting how often an index file is opened to be
/// read, and the positional reads of segment files.
#[derive(Debug, Default)]
struct CountingIo {
    index_reads: AtomicU64,
    segment_reads: Arc<AtomicU64>,
}

/// A segment file whose positional reads are counted.
#[derive(Debug)]
struct CountedFile {
    inner: Arc<dyn IoFile>,
    reads: Arc<AtomicU64>,
}

impl IoFile for CountedFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        self.inner.write_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl StorageIo for CountingIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        if matches!(mode, OpenMode::Read) && path.extension().is_some_and(|e| e == "index") {
            self.index_reads.fetch_add(1, Ordering::SeqCst);
        }
        let file = FileIo.open(path, mode)?;
        if path.extension().is_some_and(|e| e == "log") {
            return Ok(Arc::new(CountedFile {
                inner: file,
                reads: Arc::clone(&self.segment_reads),
            }));
        }
        Ok(file)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FileIo.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        FileIo.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        FileIo.create_dir(path)
    }
    fn create_private_dir(&self, path: &Path) -> io::Result<()> {
        FileIo.create_private_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        FileIo.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        FileIo.sync_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        FileIo.list_dir(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        FileIo.metadata(path)
    }
}

/// What the log should hold: base offset of each batch → its bytes.
type Model = BTreeMap<u64, Bytes>;

fn append(log: &PartitionLog, model: &mut Model, count: usize, value_len: usize, fill: u8) {
    let batch = sized_batch(T0, count, value_len, fill);
    let a = log.append(&batch).expect("append");
    a.durable.wait().expect("durable");
    model.insert(a.base_offset, batch.as_bytes().clone());
}

/// Reads from `offset` and checks the first batch returned is the one of
/// the model that holds it, byte for byte.
fn check_read_at(log: &PartitionLog, model: &Model, offset: u64) {
    let (&base, want) = model.range(..=offset).next_back().expect("modelled");
    let got = log.read(offset, 1).expect("read");
    let (got_base, got_batch) = got.first().expect("a batch");
    assert_eq!(*got_base, base, "the batch holding offset {offset}");
    assert_eq!(got_batch, want, "the bytes of the batch at {base}");
}

fn check_all(log: &PartitionLog, model: &Model, rng: &mut Rng) {
    let start = log.log_start_offset();
    let end = log.high_watermark();
    for _ in 0..60 {
        let offset = start + rng.below(end - start);
        check_read_at(log, model, offset);
    }
    // And everything in one pass, in order.
    let mut at = start;
    while at < end {
        let batches = log.read(at, 64 * 1024).expect("read");
        for (base, batch) in batches {
            assert_eq!(Some(&batch), model.get(&base), "batch at {base}");
            at = base
                + u64::from(
                    strongbox_protocol::batch::parse_header(&batch)
                        .expect("header")
                        .record_count,
                );
        }
    }
}

fn open(dir: &Path, io: Arc<CountingIo>, keys: &Arc<TestKeys>) -> PartitionLog {
    let env = LogEnv {
        io,
        ..LogEnv::default()
    };
    PartitionLog::open_with_env(
        dir,
        config(0, 16 * 1024, Durability::Fsync),
        keys.clone(),
        env,
    )
    .expect("open")
}

#[test]
fn a_sealed_index_is_read_from_disk_at_most_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let mut model = Model::new();
    {
        let log = open(dir.path(), Arc::default(), &keys);
        for i in 0..120u8 {
            append(&log, &mut model, 3, 300, i);
        }
        log.close().expect("close");
    }
    let io = Arc::new(CountingIo::default());
    let log = open(dir.path(), Arc::clone(&io), &keys);
    let segments = log.segments().len() as u64;
    assert!(segments >= 4, "several sealed segments: {segments}");
    let opened_at_start = io.index_reads.load(Ordering::SeqCst);
    let mut rng = Rng::new(7);
    for _ in 0..5 {
        check_all(&log, &model, &mut rng);
    }
    let index_reads = io.index_reads.load(Ordering::SeqCst) - opened_at_start;
    assert!(
        index_reads <= segments,
        "{index_reads} index reads for {segments} segments over hundreds of reads"
    );
}

#[test]
fn a_replay_reads_many_frames_per_positional_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let mut model = Model::new();
    let io = Arc::new(CountingIo::default());
    let log = open(dir.path(), Arc::clone(&io), &keys);
    for i in 0..200u8 {
        append(&log, &mut model, 1, 40, i);
    }
    let before = io.segment_reads.load(Ordering::SeqCst);
    let mut at = 0;
    let mut frames = 0u64;
    while at < log.high_watermark() {
        let batches = log.read(at, 1 << 20).expect("read");
        for (base, batch) in batches {
            assert_eq!(Some(&batch), model.get(&base), "batch at {base}");
            at = base + 1;
            frames += 1;
        }
    }
    assert_eq!(frames, 200);
    let reads = io.segment_reads.load(Ordering::SeqCst) - before;
    // Two reads (header, then everything up to the budget) per segment
    // and call, not two per frame.
    let segments = log.segments().len() as u64;
    assert!(
        reads <= 4 * segments,
        "{reads} positional reads of segment files for {frames} frames in {segments} segments"
    );
}

#[test]
fn lookups_stay_right_across_roll_truncation_retention_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let mut model = Model::new();
    let mut rng = Rng::new(42);
    let mut log = open(dir.path(), Arc::default(), &keys);
    for i in 0..80u8 {
        append(
            &log,
            &mut model,
            1 + (i as usize % 4),
            200 + 37 * (i as usize % 9),
            i,
        );
    }
    check_all(&log, &model, &mut rng);

    for round in 0..6u8 {
        // Truncate into the middle of a sealed segment whose index is
        // cached, then write different batches at the same offsets.
        let end = log.log_end_offset();
        let start = log.log_start_offset();
        let cut_base = *model
            .range(start + (end - start) / 3..)
            .next()
            .expect("a batch to cut at")
            .0;
        log.truncate(cut_base).expect("truncate");
        model.retain(|base, _| *base < cut_base);
        check_all(&log, &model, &mut rng);
        for i in 0..30u8 {
            append(
                &log,
                &mut model,
                2,
                500 + usize::from(i) * 11,
                (round * 30 + i).wrapping_add(100),
            );
        }
        check_all(&log, &model, &mut rng);

        // Retention removes the oldest segments.
        let size: u64 = log.segments().iter().map(|s| s.size_bytes).sum();
        log.apply_retention(&RetentionPolicy {
            max_age: None,
            max_bytes: Some(size * 3 / 4),
        })
        .expect("retention");
        let start = log.log_start_offset();
        model.retain(|base, batch| {
            let count = strongbox_protocol::batch::parse_header(batch)
                .expect("header")
                .record_count;
            base + u64::from(count) > start
        });
        check_all(&log, &model, &mut rng);

        // Reopen: the indexes are read from disk again.
        if round % 2 == 1 {
            log.close().expect("close");
            log = open(dir.path(), Arc::default(), &keys);
            check_all(&log, &model, &mut rng);
        }
    }
}

#[test]
fn reused_read_buffers_never_mix_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = TestKeys::new();
    let mut model = Model::new();
    let log = open(dir.path(), Arc::default(), &keys);
    // Large batches and small ones, each filled with its own byte.
    for i in 0..40u8 {
        let value_len = if i % 3 == 0 { 6000 } else { 90 };
        append(&log, &mut model, 2, value_len, i);
    }
    let end = log.high_watermark();
    // Hold the result of one read while many others run: it never
    // changes, and every other read returns exactly its own batches.
    let held = log.read(0, 1 << 20).expect("read");
    let held_copy: Vec<(u64, Vec<u8>)> = held.iter().map(|(b, v)| (*b, v.to_vec())).collect();
    let mut rng = Rng::new(3);
    for _ in 0..300 {
        let from = rng.below(end);
        let max = 1 + rng.below(20_000) as usize;
        for (base, batch) in log.read(from, max).expect("read") {
            assert_eq!(Some(&batch), model.get(&base), "batch at {base}");
        }
    }
    let now: Vec<(u64, Vec<u8>)> = held.iter().map(|(b, v)| (*b, v.to_vec())).collect();
    assert_eq!(now, held_copy, "bytes handed out earlier stay as they were");
    for (base, batch) in &held {
        assert_eq!(Some(batch), model.get(base));
    }
}
