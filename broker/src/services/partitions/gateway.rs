//! The gateway between async code and partition storage: the one place
//! where the broker's tasks reach a [`PartitionLog`] and the place that
//! keeps blocking storage work off the async worker threads.
//!
//! Every `PartitionLog` method blocks: an append may roll the segment
//! (seal, fdatasync, a new data key wrapped by the key provider, which for
//! an HSM is a network round trip, then the envelope's fsyncs), a read may
//! unwrap a data key and reads files. Run on an async worker, one slow
//! call stalls every connection scheduled on that worker. So:
//!
//! - **Appends** go to the partition's writer queue ([`AppendQueue`]). A
//!   drain task on tokio's blocking pool takes *everything* queued, writes
//!   it in order under the partition's producer table, and answers each
//!   append; it loops while appends keep arriving and ends when the queue
//!   is empty. One task per partition at a time, started by the first
//!   append to an idle queue: appends to one partition keep their order,
//!   an idle partition costs no thread, and under load the task stays on
//!   its thread, so an append costs a queue push and a wake, never a
//!   thread start, and a burst of appends shares one wake (the batching
//!   that keeps group commit intact: the fsync a batch waits for is still
//!   the log's flusher's, shared by every batch written meanwhile). A
//!   dedicated thread per partition would give the same order but hold a
//!   thread for every idle partition; `spawn_blocking` per append would
//!   pay a thread hop per batch and could reorder a stream's batches.
//! - **Everything else** (reads for subscribers, timestamp lookups,
//!   opening a topic's logs) runs through [`blocking`], one blocking-pool
//!   task per call: reads run side by side, and never wait behind the
//!   writer (the log's readers take no writer lock).
//!
//! Callers in blocking contexts (the partition watch's pass, maintenance,
//! the rewrap job's slices, shutdown) are already off the async threads and
//! call the log directly.
//!
//! Replication will plug in here: a partition's writer is the single
//! place where a batch becomes an offset, so a replicated partition
//! replaces the drain's `append` with "propose, then apply the committed
//! entry", and nothing above the gateway changes.
//!
//! [`PartitionLog`]: strongbox_storage::log::PartitionLog

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::RecordBatch;
use tokio::sync::oneshot;

use crate::error::BrokerError;
use crate::services::partitions::partition::{Partition, Written};

/// Runs blocking storage work (a read, a lookup, opening logs) on the
/// blocking pool and waits for it.
///
/// # Errors
///
/// `internal` when the task panicked or the runtime is shutting down.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::internal("a partition storage task", e))
}

/// One append waiting for the partition's writer.
#[derive(Debug)]
pub(crate) struct AppendJob {
    pub(crate) batch: RecordBatch,
    /// The producer's current epoch (0 for batches without a stamp).
    pub(crate) min_epoch: u16,
    pub(crate) reply: oneshot::Sender<Result<Written, BrokerError>>,
}

/// The answer to one job, delivered once its drain round is over.
pub(crate) type AppendDone = (
    oneshot::Sender<Result<Written, BrokerError>>,
    Result<Written, BrokerError>,
);

/// A partition's queue of appends and whether a drain task runs for it.
#[derive(Debug, Default)]
pub(crate) struct AppendQueue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    jobs: Vec<AppendJob>,
    /// A drain task owns the queue: submitters only push.
    draining: bool,
}

impl AppendQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Pushes and takes of whole vectors: nothing is left half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An append on its way through the writer: resolves once it is written
/// (not yet durable).
pub(crate) type QueuedAppend = oneshot::Receiver<Result<Written, BrokerError>>;

/// Queues `batch` for `partition`'s writer, starting a drain task when
/// none runs. Appends queued by one caller are written in the order queued.
/// Must be called from within a tokio runtime.
pub(crate) fn submit_append(
    partition: &Arc<Partition>,
    batch: RecordBatch,
    min_epoch: u16,
) -> QueuedAppend {
    let (reply, rx) = oneshot::channel();
    let start = {
        let mut q = partition.appends().lock();
        q.jobs.push(AppendJob {
            batch,
            min_epoch,
            reply,
        });
        !std::mem::replace(&mut q.draining, true)
    };
    if start {
        let drain = Drain {
            partition: Some(Arc::clone(partition)),
        };
        // A task the runtime drops unrun (it is shutting down) drops the
        // drain, which hands the queue back and fails what it held.
        drop(tokio::task::spawn_blocking(move || drain.run()));
    }
    rx
}

/// What a queued append resolves to when the writer dropped it unanswered.
pub(crate) fn dropped() -> BrokerError {
    BrokerError::new(
        ErrorCode::ShuttingDown,
        "the partition's writer stopped before this batch was written",
    )
}

/// The drain task of one partition.
struct Drain {
    /// `None` once the drain handed the queue back.
    partition: Option<Arc<Partition>>,
}

impl Drain {
    fn run(mut self) {
        loop {
            let Some(p) = self.partition.as_ref() else {
                return;
            };
            let jobs = std::mem::take(&mut p.appends().lock().jobs);
            let done = p.write_appends(jobs);
            let idle = {
                let mut q = p.appends().lock();
                if q.jobs.is_empty() {
                    q.draining = false;
                }
                !q.draining
            };
            if idle {
                // Let go of the partition before anyone hears back: a
                // caller that owns the last other reference (a clean stop
                // closing the log) must find it free.
                self.partition = None;
                deliver(done);
                return;
            }
            deliver(done);
        }
    }
}

impl Drop for Drain {
    /// Only when the drain did not finish (the task was dropped unrun, or
    /// an append panicked): hands the queue back, failing what it holds.
    fn drop(&mut self) {
        if let Some(p) = self.partition.take() {
            let abandoned = {
                let mut q = p.appends().lock();
                q.draining = false;
                std::mem::take(&mut q.jobs)
            };
            // Dropping the replies tells their callers.
            drop(abandoned);
        }
    }
}

fn deliver(done: Vec<AppendDone>) {
    for (reply, result) in done {
        // A caller that went away does not care.
        let _ = reply.send(result);
    }
}
