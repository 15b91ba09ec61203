//! Hooks that let the process hosting the storage engine (the broker) see
//! what storage does, for its metrics: how long each log fsync takes, how
//! many bytes AES-GCM seals and opens, and every call to the key provider
//! with its latency and outcome.
//!
//! One [`StorageObserver`] per process, installed once with [`install`]
//! (the broker does it when it opens its state). Until then, and in
//! processes that never install one, every hook is a single atomic load
//! and nothing else: no clock is read, nothing is allocated. With an
//! observer installed a hook reads the clock at most twice and makes one
//! dynamic call; the observer must be as cheap (counters, histograms) and
//! must never block or call back into storage.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Duration;
//! use strongbox_storage::keys::KeyError;
//! use strongbox_storage::observe::{self, AeadOp, KeyOp, StorageObserver};
//!
//! #[derive(Debug, Default)]
//! struct Sealed(AtomicU64);
//!
//! impl StorageObserver for Sealed {
//!     fn fsync(&self, _: Duration) {}
//!     fn aead(&self, op: AeadOp, bytes: u64) {
//!         if op == AeadOp::Seal {
//!             self.0.fetch_add(bytes, Ordering::Relaxed);
//!         }
//!     }
//!     fn key_operation(&self, _: KeyOp, _: &'static str, _: Duration, _: Option<&KeyError>) {}
//! }
//!
//! // Only the first installation in a process takes effect.
//! let _ = observe::install(Box::new(Sealed::default()));
//! ```

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::keys::KeyError;

/// An AES-GCM operation on log frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadOp {
    /// A batch sealed on append.
    Seal,
    /// A frame opened (authenticated and decrypted) on read or recovery.
    Open,
}

impl AeadOp {
    /// `seal` or `open`, as metric labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seal => "seal",
            Self::Open => "open",
        }
    }
}

/// A call the key manager makes to its key provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOp {
    /// A new KEK version generated in the provider.
    Generate,
    /// Whether the provider holds a KEK (before generating one, and the
    /// broker's health probe).
    Lookup,
    /// A new segment's data key wrapped.
    Wrap,
    /// A data key unwrapped (a DEK cache miss).
    Unwrap,
    /// A data key wrapped again under the active version by the rewrap job.
    Rewrap,
    /// A KEK version destroyed in the provider.
    Destroy,
}

impl KeyOp {
    /// Every operation, for pre-registering metric series.
    pub const ALL: [Self; 6] = [
        Self::Generate,
        Self::Lookup,
        Self::Wrap,
        Self::Unwrap,
        Self::Rewrap,
        Self::Destroy,
    ];

    /// The operation's name, as metric labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Lookup => "lookup",
            Self::Wrap => "wrap",
            Self::Unwrap => "unwrap",
            Self::Rewrap => "rewrap",
            Self::Destroy => "destroy",
        }
    }
}

/// Receives what storage does. Implementations must be cheap and must not
/// block: the hooks run on the append and read paths and inside the key
/// manager's locks.
pub trait StorageObserver: Send + Sync + std::fmt::Debug {
    /// A log `fdatasync` (group commit, interval flush, or a segment seal)
    /// took `elapsed`, whether or not it succeeded.
    fn fsync(&self, elapsed: Duration);

    /// `bytes` of record batches went through AES-256-GCM (`op`); the tag
    /// is not counted.
    fn aead(&self, op: AeadOp, bytes: u64);

    /// The key provider (`provider`: `file`, `pkcs11`) answered `op` after
    /// `elapsed`; `error` is its error, if it failed.
    fn key_operation(
        &self,
        op: KeyOp,
        provider: &'static str,
        elapsed: Duration,
        error: Option<&KeyError>,
    );
}

static OBSERVER: OnceLock<Box<dyn StorageObserver>> = OnceLock::new();

/// Installs the process's observer. Returns false (and drops `observer`)
/// when one is installed already: the first installation stays for the
/// life of the process.
pub fn install(observer: Box<dyn StorageObserver>) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// True once an observer is installed.
pub fn installed() -> bool {
    OBSERVER.get().is_some()
}

/// A start time, read only when someone will look at the duration.
pub(crate) fn start() -> Option<Instant> {
    OBSERVER.get().map(|_| Instant::now())
}

/// Runs `f` (an fsync) and reports how long it took.
pub(crate) fn timed_fsync<T>(f: impl FnOnce() -> T) -> T {
    let started = start();
    let out = f();
    if let (Some(o), Some(t)) = (OBSERVER.get(), started) {
        o.fsync(t.elapsed());
    }
    out
}

/// Reports `bytes` through AES-GCM.
pub(crate) fn aead(op: AeadOp, bytes: usize) {
    if let Some(o) = OBSERVER.get() {
        o.aead(op, u64::try_from(bytes).unwrap_or(u64::MAX));
    }
}

/// Reports a provider call that started at `started` (from [`start`]).
pub(crate) fn key_operation(
    op: KeyOp,
    provider: &'static str,
    started: Option<Instant>,
    error: Option<&KeyError>,
) {
    if let (Some(o), Some(t)) = (OBSERVER.get(), started) {
        o.key_operation(op, provider, t.elapsed(), error);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use strongbox_protocol::batch::{BatchBuilder, RecordBatch};

    use super::*;
    use crate::keys::{FileKeyProvider, KekScope, KeyManager};
    use crate::log::{Durability, LogConfig, PartitionLog};
    use crate::meta::MetaStore;

    /// Counts everything; shared with the test through an `Arc`.
    #[derive(Debug, Default)]
    struct Counting {
        fsyncs: Mutex<u64>,
        aead: Mutex<HashMap<AeadOp, u64>>,
        keys: Mutex<Vec<(KeyOp, &'static str, bool)>>,
    }

    #[derive(Debug)]
    struct Shared(Arc<Counting>);

    impl StorageObserver for Shared {
        fn fsync(&self, _: Duration) {
            *self.0.fsyncs.lock().expect("lock") += 1;
        }
        fn aead(&self, op: AeadOp, bytes: u64) {
            *self.0.aead.lock().expect("lock").entry(op).or_default() += bytes;
        }
        fn key_operation(
            &self,
            op: KeyOp,
            provider: &'static str,
            _: Duration,
            error: Option<&KeyError>,
        ) {
            self.0
                .keys
                .lock()
                .expect("lock")
                .push((op, provider, error.is_none()));
        }
    }

    fn batch(n: i64) -> RecordBatch {
        let ts = 1_700_000_000_000;
        let mut b = BatchBuilder::new(ts);
        for i in 0..n {
            b.push(ts + i, None, &[], b"observed value").expect("push");
        }
        RecordBatch::parse(b.finish().expect("finish")).expect("parse")
    }

    /// The only test in this crate that installs an observer: other unit
    /// tests running at the same time feed it too, so it asserts lower
    /// bounds.
    #[test]
    fn hooks_report_fsyncs_aead_bytes_and_provider_calls() {
        let counting = Arc::new(Counting::default());
        assert!(install(Box::new(Shared(counting.clone()))));
        assert!(installed());
        assert!(!install(Box::new(Shared(Arc::new(Counting::default())))));

        let dir = tempfile::tempdir().expect("tempdir");
        let provider = Arc::new(FileKeyProvider::open(dir.path().join("keys")).expect("keys"));
        let keys = Arc::new(KeyManager::new(
            provider,
            MetaStore::in_memory().expect("meta"),
            16,
        ));
        let mut config = LogConfig::new([9; 16], 0, KekScope::Broker);
        config.durability = Durability::Fsync;
        let log = PartitionLog::open(dir.path().join("p0"), config, keys.clone()).expect("open");
        let b = batch(3);
        log.append(&b)
            .expect("append")
            .durable
            .wait()
            .expect("durable");
        log.roll().expect("roll");
        // A key manager with an empty cache reads it back through the
        // provider.
        let read = log.read(0, usize::MAX).expect("read");
        assert_eq!(read.len(), 1);
        keys.rotate(&KekScope::Broker).expect("rotate");

        let sealed = counting
            .aead
            .lock()
            .expect("lock")
            .get(&AeadOp::Seal)
            .copied();
        assert!(sealed.unwrap_or(0) >= b.len() as u64, "{sealed:?}");
        assert!(
            *counting.fsyncs.lock().expect("lock") >= 2,
            "group commit and seal"
        );
        let calls = counting.keys.lock().expect("lock").clone();
        for op in [KeyOp::Generate, KeyOp::Wrap, KeyOp::Lookup] {
            assert!(
                calls
                    .iter()
                    .any(|(o, p, ok)| *o == op && *p == "file" && *ok),
                "{op:?} not reported: {calls:?}"
            );
        }
    }
}
