//! A slow key provider at one partition's segment roll stalls only that
//! partition's writer: another partition, produced to and consumed from
//! meanwhile on the same runtime, keeps answering produces in well under
//! 50 ms.
//!
//! The key provider is the real file provider behind a wrapper that, once
//! armed, holds the next wrap for two seconds (an HSM that answers slowly:
//! the wrap of a new segment's data key happens inside the roll). A roll
//! run on an async worker (as the broker once did) blocks that worker for
//! the whole wrap; other workers steal what they can, so the stall shows
//! once every worker is held, by as many slow rolls as there are workers.
//! The runtime here has one worker, so one slow roll is enough: with the
//! append made on the async worker this test fails (every produce to the
//! other partition waits the two seconds); through the partition gateway
//! the roll runs on the blocking pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use strongbox_broker::services::partitions::partition::{Delivery, Partition};
use strongbox_broker::services::partitions::producers::ProducerTable;
use strongbox_protocol::batch::{BatchBuilder, RecordBatch, parse_header};
use strongbox_storage::keys::{
    Dek, FileKeyProvider, KekId, KekScope, KeyError, KeyManager, KeyProvider, ProviderInfo,
};
use strongbox_storage::log::{Durability, LogConfig, PartitionLog};
use strongbox_storage::meta::MetaStore;

/// How long the armed wrap takes.
const HSM_DELAY: Duration = Duration::from_secs(2);

/// The bound the issue asks for.
const MAX_LATENCY: Duration = Duration::from_millis(50);

/// Runs allowed for the 50 ms bound (see the test).
const ATTEMPTS: usize = 3;

/// Time between two produces to the other partition.
const PACE: Duration = Duration::from_millis(20);

/// Hang guard for the whole scenario.
const GUARD: Duration = Duration::from_secs(60);

/// A real key provider whose next wrap, once armed, takes [`HSM_DELAY`].
#[derive(Debug)]
struct SlowWrap {
    inner: FileKeyProvider,
    armed: AtomicBool,
    /// When the delayed wrap started and when it returned.
    window: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl SlowWrap {
    fn window(&self) -> (Option<Instant>, Option<Instant>) {
        *self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyProvider for SlowWrap {
    fn info(&self) -> ProviderInfo {
        self.inner.info()
    }

    fn generate_kek(&self, id: &KekId) -> Result<(), KeyError> {
        self.inner.generate_kek(id)
    }

    fn has_kek(&self, id: &KekId) -> Result<bool, KeyError> {
        self.inner.has_kek(id)
    }

    fn wrap(&self, id: &KekId, dek: &Dek) -> Result<Vec<u8>, KeyError> {
        if self.armed.swap(false, Ordering::AcqRel) {
            self.window.lock().unwrap_or_else(PoisonError::into_inner).0 = Some(Instant::now());
            std::thread::sleep(HSM_DELAY);
            let wrapped = self.inner.wrap(id, dek);
            self.window.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(Instant::now());
            return wrapped;
        }
        self.inner.wrap(id, dek)
    }

    fn unwrap(&self, id: &KekId, wrapped: &[u8]) -> Result<Dek, KeyError> {
        self.inner.unwrap(id, wrapped)
    }

    fn destroy_kek(&self, id: &KekId) -> Result<(), KeyError> {
        self.inner.destroy_kek(id)
    }
}

fn batch(ts: i64, value: &[u8]) -> RecordBatch {
    let mut b = BatchBuilder::new(ts);
    b.push(ts, None, &[], value).expect("record");
    RecordBatch::parse(b.finish().expect("batch")).expect("parse")
}

fn partition(
    dir: &std::path::Path,
    index: u32,
    config: LogConfig,
    keys: &Arc<KeyManager>,
) -> Arc<Partition> {
    let path = dir.join(index.to_string());
    let log = PartitionLog::open(&path, config, keys.clone()).expect("open log");
    Partition::new("orders".into(), index, path, log, ProducerTable::new())
}

/// Reads the partition through the gateway until `total` records arrived
/// (`total` is 0 while unknown); returns when each record was received.
async fn consume(p: Arc<Partition>, total: Arc<std::sync::atomic::AtomicU64>) -> Vec<Instant> {
    let mut hw = p.watch_high_watermark();
    let mut next = 0u64;
    let mut seen = Vec::new();
    loop {
        let want = total.load(Ordering::Acquire);
        if want > 0 && next >= want {
            return seen;
        }
        hw.mark_seen();
        if next >= p.high_watermark() {
            let _ = tokio::time::timeout(Duration::from_millis(100), hw.changed()).await;
            continue;
        }
        let Delivery::Batches(batches) = p
            .deliver("spiffe://test/consumer", next, 1 << 20)
            .await
            .expect("read")
        else {
            panic!("the partition reports damage");
        };
        for (base, bytes) in batches {
            let header = parse_header(&bytes).expect("header");
            next = base + u64::from(header.record_count);
            seen.extend(std::iter::repeat_n(
                Instant::now(),
                header.record_count as usize,
            ));
        }
    }
}

/// Produces one batch to `p` and waits for its acknowledgement.
async fn produce(p: &Arc<Partition>, ts: i64, value: &[u8]) {
    p.begin_append(&batch(ts, value), 0)
        .await
        .expect("produce")
        .complete()
        .await
        .expect("durable");
}

/// Produces to `p` every [`PACE`] until `stop` is set. Each produce is
/// timed from when it was due, not from when the task got to send it: a
/// runtime that cannot run the producer on time (a worker stalled by a
/// blocking call) shows in the latency, as it would for a client whose
/// request waits for the broker. Returns (due, acknowledged) per produce.
async fn produce_steadily(p: Arc<Partition>, stop: Arc<AtomicBool>) -> Vec<(Instant, Instant)> {
    let value = vec![0x42; 1024];
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    for i in 0u32.. {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let due = start + PACE * i;
        tokio::time::sleep_until(due).await;
        produce(&p, i64::from(i) + 2, &value).await;
        out.push((due.into_std(), Instant::now()));
    }
    out
}

/// A directory for the logs: in memory where the system has one, so the
/// bound measures the broker and not the fsyncs of whatever else shares
/// this machine's disk.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

/// What one run of the scenario measured.
struct Run {
    /// Latency of each produce to the other partition that overlapped the
    /// held wrap.
    during: Vec<Duration>,
    /// Records the consumer received while the wrap was held.
    read_during: usize,
    /// Whether the consumer received every record produced.
    read_all: bool,
}

impl Run {
    fn worst(&self) -> Duration {
        self.during.iter().max().copied().unwrap_or_default()
    }
}

/// One run: the slow partition rolls with its wrap held for `HSM_DELAY`
/// while the other partition is produced to and consumed from. Returns
/// what it measured.
fn run_once() -> Run {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = scratch_dir();
    let provider = Arc::new(SlowWrap {
        inner: FileKeyProvider::open(dir.path().join("keys")).expect("provider"),
        armed: AtomicBool::new(false),
        window: Mutex::new((None, None)),
    });
    let meta = MetaStore::open(dir.path().join("meta.redb")).expect("meta");
    let keys = Arc::new(KeyManager::new(provider.clone(), meta, 1024));

    // The slow partition: small segments, so its second batch rolls.
    let mut slow_config = LogConfig::new([7; 16], 0, KekScope::Broker);
    slow_config.durability = Durability::Fsync;
    slow_config.segment_bytes = 64 * 1024;
    let slow = partition(dir.path(), 0, slow_config, &keys);
    // The other partition: no roll in this test. Without fsyncs, so the
    // bound measures the broker, not the disk.
    let mut fast_config = LogConfig::new([7; 16], 1, KekScope::Broker);
    fast_config.durability = Durability::None;
    let fast = partition(dir.path(), 1, fast_config, &keys);

    let big = vec![0x5a; 40 * 1024];
    runtime.block_on(async {
        produce(&slow, 1, &big).await;
        produce(&fast, 1, b"warm-up").await;
    });

    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let consumer = runtime.spawn(consume(fast.clone(), total.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = runtime.spawn(produce_steadily(fast.clone(), stop.clone()));
    // Some produces before the roll, so the producer is in its stride.
    std::thread::sleep(PACE * 5);

    // The next batch does not fit the slow partition's segment: it rolls,
    // and the new segment's key wrap takes HSM_DELAY.
    provider.armed.store(true, Ordering::Release);
    let rolling = {
        let slow = slow.clone();
        let big = big.clone();
        runtime.spawn(async move {
            let started = Instant::now();
            produce(&slow, 2, &big).await;
            started.elapsed()
        })
    };
    let rolled_in = runtime
        .block_on(async { tokio::time::timeout(GUARD, rolling).await })
        .expect("the roll finished in time")
        .expect("rolling task");
    // A few more after it, then stop.
    std::thread::sleep(PACE * 5);
    stop.store(true, Ordering::Release);
    let produced = runtime
        .block_on(async { tokio::time::timeout(GUARD, producer).await })
        .expect("the producer finished in time")
        .expect("producer");
    total.store(
        u64::try_from(produced.len()).expect("count") + 1,
        Ordering::Release,
    );
    let consumed = runtime
        .block_on(async { tokio::time::timeout(GUARD, consumer).await })
        .expect("the consumer finished in time")
        .expect("consumer");

    let (Some(from), Some(to)) = provider.window() else {
        panic!("the delayed wrap never ran");
    };
    assert!(
        rolled_in >= HSM_DELAY,
        "the rolling batch took {rolled_in:?}: the delay did not hit the roll"
    );
    // Produces that overlapped the time the wrap was held.
    let during: Vec<Duration> = produced
        .iter()
        .filter(|(due, acked)| *acked > from && *due < to)
        .map(|(due, acked)| acked.duration_since(*due))
        .collect();
    // The consumer went on reading during the roll, and read everything.
    let read_during = consumed.iter().filter(|t| **t > from && **t < to).count();
    Run {
        during,
        read_during,
        read_all: consumed.len() == produced.len() + 1,
    }
}

#[test]
fn a_slow_key_provider_at_one_roll_does_not_slow_another_partition() {
    // A stall behind the held wrap lasts the whole HSM_DELAY; the noise of
    // a busy shared machine (other processes taking both cores) is far
    // shorter but can, rarely, push one produce past 50 ms. So: no run may
    // show anything like the stall, and the 50 ms bound must hold
    // over a whole run, allowing ATTEMPTS runs for the noise.
    let mut worst = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let run = run_once();
        eprintln!(
            "run {attempt}: {} produces to the other partition overlapped the held roll; the slowest took {:?}",
            run.during.len(),
            run.worst()
        );
        assert!(
            run.during.len() >= 20,
            "only {} produces overlapped the two-second roll",
            run.during.len()
        );
        assert!(
            run.worst() < HSM_DELAY / 4,
            "a produce to the other partition took {:?} while the roll was held: it waited for the roll",
            run.worst()
        );
        assert!(
            run.read_during > 0,
            "the consumer read nothing while the roll was held"
        );
        assert!(run.read_all, "the consumer did not read every record");
        if run.worst() < MAX_LATENCY {
            return;
        }
        worst.push(run.worst());
    }
    panic!(
        "in each of {ATTEMPTS} runs a produce to the other partition took 50 ms or more while the roll was held: {worst:?}"
    );
}
