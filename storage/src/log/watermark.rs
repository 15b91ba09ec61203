//! The high watermark as something to wait on: a log publishes every move
//! of its high watermark here, and readers that are caught up (a live
//! subscription) wait for the next move through a
//! [`WatermarkSubscription`] instead of polling or keeping a copy of their
//! own.
//!
//! The log owns the only value: the flusher publishes it after each
//! fdatasync (`fsync` durability), the writer after each append (`interval`
//! and `none`), a roll, a truncation or a resume after a fault. A
//! subscription holds no value, only the version it has seen; it wakes on
//! every publication and its owner reads the value again
//! ([`PartitionLog::readable_end`]), so it can never be behind the log.
//!
//! This module knows no async runtime: a subscription is a plain
//! [`Future`], woken from whatever thread published.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::partition::PartitionLog;

/// The high watermark of one log and who waits for it to move.
#[derive(Debug)]
pub(crate) struct Watermark {
    value: AtomicU64,
    subs: Mutex<Subscribers>,
}

#[derive(Debug, Default)]
struct Subscribers {
    /// Bumped by every publication.
    version: u64,
    /// Set when the log is given up: subscriptions end.
    ended: bool,
    next_id: u64,
    /// The waker of each subscription that is waiting, by its id.
    waiting: HashMap<u64, Waker>,
}

impl Watermark {
    pub(crate) fn new(value: u64) -> Self {
        Self {
            value: AtomicU64::new(value),
            subs: Mutex::new(Subscribers::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // Each update is a plain store or a map operation: a panic while
        // the lock is held leaves nothing half done.
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Makes `value` the high watermark and wakes every subscription.
    pub(crate) fn publish(&self, value: u64) {
        let previous = self.value.swap(value, Ordering::AcqRel);
        if previous == value {
            return;
        }
        self.notify();
    }

    /// Wakes every subscription (the value may be unchanged).
    pub(crate) fn notify(&self) {
        let wakers: Vec<Waker> = {
            let mut subs = self.lock();
            subs.version = subs.version.wrapping_add(1);
            subs.waiting.drain().map(|(_, w)| w).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Ends every subscription, now and later ones.
    pub(crate) fn end(&self) {
        let wakers: Vec<Waker> = {
            let mut subs = self.lock();
            subs.ended = true;
            subs.waiting.drain().map(|(_, w)| w).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    fn subscribe(self: &Arc<Self>) -> WatermarkSubscription {
        let mut subs = self.lock();
        let id = subs.next_id;
        subs.next_id = subs.next_id.wrapping_add(1);
        let seen = subs.version;
        drop(subs);
        WatermarkSubscription {
            shared: Arc::clone(self),
            id,
            seen,
        }
    }
}

/// The log stopped publishing its high watermark: it was closed, dropped,
/// or its owner ended the subscriptions (its topic is being deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the partition log no longer publishes its high watermark (it was closed or deleted)")]
pub struct WatermarkEnded;

/// A wait for the next move of a log's high watermark. From
/// [`PartitionLog::subscribe_watermark`].
///
/// Use it as a `watch` receiver: [`WatermarkSubscription::mark_seen`],
/// then read [`PartitionLog::readable_end`], then, if nothing new is
/// readable, await [`WatermarkSubscription::changed`]. A publication
/// between the two is not missed: `changed` resolves at once for it.
#[derive(Debug)]
pub struct WatermarkSubscription {
    shared: Arc<Watermark>,
    id: u64,
    /// The last publication this subscription has seen.
    seen: u64,
}

impl WatermarkSubscription {
    /// The high watermark now.
    pub fn high_watermark(&self) -> u64 {
        self.shared.get()
    }

    /// Counts every publication so far as seen.
    pub fn mark_seen(&mut self) {
        self.seen = self.shared.lock().version;
    }

    /// Resolves at the first publication not yet seen (at once if there is
    /// one), and counts it as seen.
    ///
    /// # Errors
    ///
    /// [`WatermarkEnded`] once the log stopped publishing.
    pub fn changed(&mut self) -> Changed<'_> {
        Changed { sub: self }
    }
}

impl Drop for WatermarkSubscription {
    fn drop(&mut self) {
        self.shared.lock().waiting.remove(&self.id);
    }
}

/// The future of [`WatermarkSubscription::changed`].
#[derive(Debug)]
#[must_use = "a future does nothing unless awaited"]
pub struct Changed<'a> {
    sub: &'a mut WatermarkSubscription,
}

impl Future for Changed<'_> {
    type Output = Result<(), WatermarkEnded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sub = &mut *self.get_mut().sub;
        let mut subs = sub.shared.lock();
        if subs.ended {
            subs.waiting.remove(&sub.id);
            return Poll::Ready(Err(WatermarkEnded));
        }
        if subs.version != sub.seen {
            sub.seen = subs.version;
            subs.waiting.remove(&sub.id);
            return Poll::Ready(Ok(()));
        }
        match subs.waiting.get_mut(&sub.id) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => {
                subs.waiting.insert(sub.id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl PartitionLog {
    /// A subscription that wakes whenever the high watermark moves (see
    /// [`WatermarkSubscription`]). It ends when the log is closed or
    /// dropped, or after [`PartitionLog::end_subscriptions`].
    pub fn subscribe_watermark(&self) -> WatermarkSubscription {
        self.sync.watermark().subscribe()
    }

    /// The offset after the last record a reader can read now: the high
    /// watermark, or, when the log moved past lost offsets that no record
    /// follows yet (a cut after a failed sync, an accepted gap), the end
    /// of the records before them. A reader caught up to it waits for the
    /// next publication rather than reading an empty range.
    pub fn readable_end(&self) -> u64 {
        self.high_watermark().min(self.records_end())
    }

    /// Ends every watermark subscription, now and later ones: their
    /// `changed` returns [`WatermarkEnded`] (the owner is deleting the
    /// partition and its readers should notice). The log itself goes on.
    pub fn end_subscriptions(&self) {
        self.sync.watermark().end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_publication_before_the_wait_is_not_missed() {
        let w = Arc::new(Watermark::new(0));
        let mut sub = w.subscribe();
        sub.mark_seen();
        w.publish(5);
        assert_eq!(block_on(sub.changed()), Ok(()));
        assert_eq!(sub.high_watermark(), 5);
    }

    #[test]
    fn a_waiting_subscription_wakes_from_another_thread() {
        let w = Arc::new(Watermark::new(0));
        let mut sub = w.subscribe();
        let publisher = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                w.publish(7);
            })
        };
        assert_eq!(block_on(sub.changed()), Ok(()));
        assert_eq!(sub.high_watermark(), 7);
        publisher.join().expect("publisher");
    }

    #[test]
    fn publishing_the_same_value_wakes_nobody_and_end_ends() {
        let w = Arc::new(Watermark::new(3));
        let mut sub = w.subscribe();
        w.publish(3);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        {
            let mut fut = sub.changed();
            assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        }
        w.end();
        assert_eq!(block_on(sub.changed()), Err(WatermarkEnded));
        let mut later = w.subscribe();
        assert_eq!(block_on(later.changed()), Err(WatermarkEnded));
    }

    #[test]
    fn a_dropped_subscription_leaves_no_waker_behind() {
        let w = Arc::new(Watermark::new(0));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut sub = w.subscribe();
            let mut fut = sub.changed();
            assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        }
        assert!(w.lock().waiting.is_empty());
    }
}
