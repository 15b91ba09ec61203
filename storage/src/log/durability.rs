//! Durability: the waiter an append returns, and the background flusher
//! that implements group commit (`fsync`) and periodic syncs (`interval`).
//!
//! Group commit: appends record how far the log has been written
//! (`written_seq`) and queue a waiter; the flusher takes a snapshot of
//! `written_seq`, runs one fdatasync without holding any lock, then marks
//! everything up to the snapshot durable and wakes those waiters. Appends
//! that arrive during the fdatasync are covered by the next one. A roll,
//! a truncation and `close` sync the file themselves and mark everything
//! written so far durable.
//!
//! An fdatasync that fails fences the log: the kernel may have dropped the
//! dirty pages, so a later successful fsync of the same file descriptor
//! would prove nothing. The flusher lets go of that descriptor, every
//! waiter not yet durable gets the error, and appends are refused until the
//! writer heals the log (`heal.rs`): it cuts the active segment back to the
//! last point an fsync confirmed (tracked here as `durable_pos` and
//! `durable_end`) through a new descriptor, seals it, and continues in a
//! new segment.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::oneshot;

use crate::io::IoFile;

use super::error::LogError;
use super::health::WriteFault;
use super::watermark::Watermark;

type Waiter = oneshot::Sender<Result<(), LogError>>;

/// Resolves when an append is as durable as the log's [`Durability`]
/// promises. Await it from async code, or call [`Durable::wait`].
///
/// Under `fsync` durability it resolves once an fdatasync covering the
/// batch has returned; under `interval` and `none` it is ready at once.
///
/// [`Durability`]: super::Durability
#[must_use = "an append is not durable until its waiter resolves"]
pub struct Durable(State);

enum State {
    Ready(Option<Result<(), LogError>>),
    Pending {
        rx: oneshot::Receiver<Result<(), LogError>>,
        dir: Arc<PathBuf>,
    },
}

impl fmt::Debug for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            State::Ready(_) => f.write_str("Durable(ready)"),
            State::Pending { .. } => f.write_str("Durable(pending)"),
        }
    }
}

impl Durable {
    pub(crate) fn ready() -> Self {
        Self(State::Ready(Some(Ok(()))))
    }

    /// Blocks the calling thread until the append is durable.
    ///
    /// # Errors
    ///
    /// [`LogError::Failed`] when the fdatasync that would have covered the
    /// batch failed; [`LogError::Closed`] when the log was dropped first.
    pub fn wait(self) -> Result<(), LogError> {
        futures::executor::block_on(self)
    }
}

impl Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            State::Pending { rx, dir } => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(LogError::Closed {
                    dir: dir.as_ref().clone(),
                })),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// State shared by the writer, the flusher and readers.
#[derive(Debug)]
pub(crate) struct SyncShared {
    state: Mutex<SyncState>,
    cv: Condvar,
    /// The offset after the last batch readers may see, and who waits for
    /// it to move.
    watermark: Arc<Watermark>,
    dir: Arc<PathBuf>,
}

#[derive(Default)]
struct SyncState {
    /// The active segment file, when it has unsynced writes.
    file: Option<Arc<dyn IoFile>>,
    written_seq: u64,
    written_end: u64,
    /// File position after the last frame written to `file`.
    written_pos: u64,
    durable_seq: u64,
    /// Offset after the last record known to be on disk.
    durable_end: u64,
    /// File position in the active segment up to which an fsync confirmed
    /// the data.
    durable_pos: u64,
    /// Bumped by truncation, so a flush that started before it cannot move
    /// the high watermark afterwards.
    epoch: u64,
    waiters: VecDeque<(u64, Waiter)>,
    failed: Option<SyncFailure>,
    shutdown: bool,
    /// The flusher is in an fsync of `file` (taken without the lock).
    syncing: bool,
}

/// Why the log stopped syncing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncFailure {
    pub(crate) fault: WriteFault,
    pub(crate) reason: String,
}

impl SyncState {
    /// Nothing to sync, nothing worth syncing after a failure, or no file
    /// the flusher may sync (the writer took it to sync it itself).
    fn idle(&self) -> bool {
        self.failed.is_some() || self.written_seq == self.durable_seq || self.file.is_none()
    }
}

impl fmt::Debug for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncState")
            .field("written_seq", &self.written_seq)
            .field("durable_seq", &self.durable_seq)
            .field("waiters", &self.waiters.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl SyncShared {
    pub(crate) fn new(dir: Arc<PathBuf>, high_watermark: u64) -> Self {
        Self {
            state: Mutex::new(SyncState {
                written_end: high_watermark,
                durable_end: high_watermark,
                ..SyncState::default()
            }),
            cv: Condvar::new(),
            watermark: Arc::new(Watermark::new(high_watermark)),
            dir,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        // A panic while holding this lock cannot leave the counters
        // inconsistent (each update is a plain store), so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn high_watermark(&self) -> u64 {
        self.watermark.get()
    }

    /// The high watermark's publications.
    pub(crate) fn watermark(&self) -> &Arc<Watermark> {
        &self.watermark
    }

    /// Why the log stopped syncing, if it did.
    pub(crate) fn failure(&self) -> Option<SyncFailure> {
        self.lock().failed.clone()
    }

    /// The offset after the last record known to be on disk.
    pub(crate) fn durable_end(&self) -> u64 {
        self.lock().durable_end
    }

    /// Where the last confirmed fsync left the active segment: (offset
    /// after its last durable record, file position after its last durable
    /// frame).
    pub(crate) fn durable_point(&self) -> (u64, u64) {
        let st = self.lock();
        (st.durable_end, st.durable_pos)
    }

    /// Starts syncing `file`, a new active segment whose frames begin at
    /// `position` (everything before it is durable already).
    pub(crate) fn start_file(&self, file: Arc<dyn IoFile>, position: u64) {
        let mut st = self.lock();
        st.file = Some(file);
        st.written_pos = position;
        st.durable_pos = position;
    }

    /// Stops syncing the active segment (it was sealed or abandoned).
    pub(crate) fn stop_file(&self) {
        self.lock().file = None;
    }

    /// Takes the active segment away from the flusher so the writer can
    /// sync it itself, and waits for a sync of it already in flight: two
    /// syncs of one descriptor at once could not tell which saw a failure.
    /// Returns the failure the flusher reported, if any (then the
    /// descriptor must not be synced again).
    pub(crate) fn detach_file(&self) -> Option<SyncFailure> {
        let mut st = self.lock();
        st.file = None;
        while st.syncing {
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.failed.clone()
    }

    /// Gives the active segment back to the flusher (the writer could not
    /// seal it and will try again).
    pub(crate) fn reattach_file(&self, file: Arc<dyn IoFile>) {
        let mut st = self.lock();
        if st.failed.is_none() {
            st.file = Some(file);
        }
        drop(st);
        self.cv.notify_all();
    }

    /// Forgets a sync failure whose descriptor is gone (nothing is active).
    pub(crate) fn clear_failure(&self) {
        self.lock().failed = None;
    }

    /// Records an append under `fsync` durability and returns its waiter.
    /// `pos` is the file position after its frame.
    pub(crate) fn register_fsync(&self, end: u64, pos: u64) -> Durable {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if let Some(failure) = st.failed.clone() {
            drop(st);
            return Durable(State::Ready(Some(Err(self.failed_error(&failure)))));
        }
        st.written_seq = st.written_seq.saturating_add(1);
        st.written_end = end;
        st.written_pos = pos;
        let seq = st.written_seq;
        st.waiters.push_back((seq, tx));
        drop(st);
        self.cv.notify_all();
        Durable(State::Pending {
            rx,
            dir: Arc::clone(&self.dir),
        })
    }

    /// Records an append under `interval` or `none` durability: readers
    /// see it at once, and the interval flusher has something to sync.
    pub(crate) fn register_written(&self, end: u64, pos: u64) -> Durable {
        let mut st = self.lock();
        st.written_seq = st.written_seq.saturating_add(1);
        st.written_end = end;
        st.written_pos = pos;
        drop(st);
        self.watermark.publish(end);
        Durable::ready()
    }

    /// Everything written so far has been synced by the caller.
    pub(crate) fn all_durable(&self) {
        let mut st = self.lock();
        st.durable_seq = st.written_seq;
        st.durable_end = st.written_end;
        st.durable_pos = st.written_pos;
        self.watermark.publish(st.written_end);
        let upto = st.durable_seq;
        let ready = drain_up_to(&mut st, upto);
        drop(st);
        resolve(ready, || Ok(()));
    }

    /// The log now ends at `end` (truncated, healed, or moved past lost
    /// offsets), with nothing unsynced; the failure, if any, is over.
    pub(crate) fn truncated(&self, end: u64) {
        let mut st = self.lock();
        st.epoch = st.epoch.wrapping_add(1);
        st.durable_seq = st.written_seq;
        st.written_end = end;
        st.durable_end = end;
        st.file = None;
        st.failed = None;
        self.watermark.publish(end);
        let upto = st.durable_seq;
        let ready = drain_up_to(&mut st, upto);
        drop(st);
        resolve(ready, || Ok(()));
    }

    /// An fsync of the active segment failed: never sync that descriptor
    /// again, fail every waiter that is not durable, refuse writes until
    /// the log heals.
    pub(crate) fn fail(&self, fault: WriteFault, reason: String) {
        let mut st = self.lock();
        let failure = match &st.failed {
            Some(f) => f.clone(),
            None => {
                tracing::error!(dir = %self.dir.display(), %reason, "a sync of the partition log failed; writes are refused until the log resumes from its last durable point");
                let f = SyncFailure { fault, reason };
                st.failed = Some(f.clone());
                f
            }
        };
        st.file = None;
        let waiters: Vec<Waiter> = st.waiters.drain(..).map(|(_, w)| w).collect();
        drop(st);
        resolve(waiters, || Err(self.failed_error(&failure)));
    }

    fn failed_error(&self, failure: &SyncFailure) -> LogError {
        failure
            .fault
            .error(self.dir.as_ref().clone(), failure.reason.clone())
    }

    /// Asks the flusher to finish: it syncs what is pending, then exits.
    pub(crate) fn shutdown(&self) {
        self.lock().shutdown = true;
        self.cv.notify_all();
    }
}

fn drain_up_to(st: &mut SyncState, seq: u64) -> Vec<Waiter> {
    let mut out = Vec::new();
    while st.waiters.front().is_some_and(|(s, _)| *s <= seq) {
        if let Some((_, w)) = st.waiters.pop_front() {
            out.push(w);
        }
    }
    out
}

fn resolve(waiters: Vec<Waiter>, mut result: impl FnMut() -> Result<(), LogError>) {
    for w in waiters {
        // A waiter whose receiver was dropped does not care.
        let _ = w.send(result());
    }
}

/// The flusher's loop. `interval` is `None` for group commit (sync as soon
/// as something is written) and the period for `interval` durability.
pub(crate) fn run_flusher(shared: Arc<SyncShared>, interval: Option<Duration>) {
    loop {
        let (file, seq, end, pos, epoch) = {
            let mut st = shared.lock();
            match interval {
                None => {
                    while !st.shutdown && st.idle() {
                        st = shared.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
                    }
                }
                Some(period) => {
                    if !st.shutdown {
                        st = shared
                            .cv
                            .wait_timeout(st, period)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
            if st.idle() {
                if st.shutdown {
                    return;
                }
                continue;
            }
            let Some(file) = st.file.clone() else {
                continue;
            };
            st.syncing = true;
            (
                file,
                st.written_seq,
                st.written_end,
                st.written_pos,
                st.epoch,
            )
        };
        let result = crate::observe::timed_fsync(|| file.sync_data());
        let mut st = shared.lock();
        st.syncing = false;
        shared.cv.notify_all();
        match result {
            Ok(()) => {
                if st.epoch == epoch && seq > st.durable_seq && st.failed.is_none() {
                    st.durable_seq = seq;
                    st.durable_end = end;
                    st.durable_pos = pos;
                    if interval.is_none() {
                        shared.watermark.publish(end);
                    }
                    let ready = drain_up_to(&mut st, seq);
                    drop(st);
                    resolve(ready, || Ok(()));
                }
            }
            Err(e) => {
                // A failure that arrives after a heal or truncation moved
                // the log on concerns a descriptor already given up.
                let current = st.epoch == epoch;
                drop(st);
                if current {
                    shared.fail(WriteFault::of(&e), format!("fdatasync: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waiter_resolves() {
        assert!(Durable::ready().wait().is_ok());
    }

    #[test]
    fn group_commit_resolves_in_order_and_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file: Arc<dyn IoFile> =
            Arc::new(std::fs::File::create(dir.path().join("f")).expect("file"));
        let shared = Arc::new(SyncShared::new(Arc::new(dir.path().to_path_buf()), 0));
        shared.start_file(file, 0);
        let flusher = {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || run_flusher(s, None))
        };
        let waiters: Vec<Durable> = (1..=50).map(|i| shared.register_fsync(i, i)).collect();
        for w in waiters {
            w.wait().expect("durable");
        }
        assert_eq!(shared.high_watermark(), 50);
        assert_eq!(shared.durable_point(), (50, 50));
        shared.fail(WriteFault::StorageFailed, "disk on fire".into());
        let late = shared.register_fsync(51, 51);
        assert!(matches!(late.wait(), Err(LogError::Failed { .. })));
        assert_eq!(shared.high_watermark(), 50);
        shared.shutdown();
        flusher.join().expect("flusher exits");
    }

    #[test]
    fn dropped_log_cancels_waiters() {
        let shared = Arc::new(SyncShared::new(Arc::new(PathBuf::from("x")), 0));
        let w = shared.register_fsync(1, 1);
        drop(shared);
        assert!(matches!(w.wait(), Err(LogError::Closed { .. })));
    }
}
