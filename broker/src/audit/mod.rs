//! The audit trail: security-relevant events as hash-chained records of
//! the internal topic `_audit`.
//!
//! - [`AuditEvent`] is what happened (built with [`AuditEvent::success`],
//!   [`AuditEvent::denied`], ...); [`AuditLog::record`] queues it without
//!   ever blocking the caller;
//! - the writer task ([`writer::ChainWriter`]) takes queued events in
//!   batches, gives each its sequence number and hashes ([`record`] has the
//!   byte format), appends the batch to `_audit` with one fsync, and only
//!   then anchors the new head in the metadata store, so a topic cut short
//!   is detected at the next start and by `strongbox audit verify`;
//! - data key unwraps are counted per principal, topic, partition, segment
//!   and KEK version ([`unwraps`]) and written once a minute.
//!
//! A full queue drops the event, counts it in
//! `strongbox_audit_dropped_total` and logs an error: request paths never
//! wait for the trail.
//!
//! ```no_run
//! # fn example(state: &strongbox_broker::services::BrokerState) {
//! use strongbox_broker::audit::{AuditAction, AuditEvent, kek_resource};
//!
//! state.audit.record(
//!     AuditEvent::success(AuditAction::KeyRewrapProgress, kek_resource("broker", 1))
//!         .principal("spiffe://strongbox.dev/admin")
//!         .detail("done", 120)
//!         .detail("total", 400),
//! );
//! # }
//! ```

pub mod event;
pub mod record;
pub mod topic;
pub mod unwraps;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use strongbox_storage::keys::{KekId, SegmentKeyContext, UnwrapObserver};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use event::{
    AuditAction, AuditEvent, BROKER_PRINCIPAL, Outcome, kek_resource, node_resource, topic_resource,
};
pub use topic::{AUDIT_TOPIC, read_operation};
pub use unwraps::with_principal;

use strongbox_storage::meta::MetaStore;

use crate::error::BrokerError;
use crate::tls::{AuthFailure, AuthFailureHook};
use unwraps::{Names, UnwrapTally};
use writer::{ChainWriter, TrailLog};

/// Events waiting for the writer; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 8192;

/// Most events in one record batch.
pub const MAX_BATCH_EVENTS: usize = 256;

/// How often unwrap counts become `key.unwrap` records.
pub const UNWRAP_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The audit trail's metrics.
#[derive(Debug, Clone)]
pub struct AuditMetrics {
    /// Records appended to `_audit`.
    pub records: IntCounter,
    /// Events lost: the queue was full, or their append failed.
    pub dropped: IntCounter,
    /// 1 when this broker found its audit chain broken at start.
    pub chain_broken: IntGauge,
}

impl AuditMetrics {
    /// The families, registered on `registry`.
    ///
    /// # Errors
    ///
    /// A family with the same name is already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let records = IntCounter::new(
            "strongbox_audit_records_total",
            "Records appended to the audit trail.",
        )?;
        let dropped = IntCounter::new(
            "strongbox_audit_dropped_total",
            "Audit events lost because the queue was full or their append failed.",
        )?;
        let chain_broken = IntGauge::new(
            "strongbox_audit_chain_broken",
            "1 when the broker found the audit topic cut short or rewritten at start.",
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(chain_broken.clone()))?;
        Ok(Self {
            records,
            dropped,
            chain_broken,
        })
    }
}

/// The broker's audit trail. Cheap to clone; clones share the queue.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: mpsc::Sender<AuditEvent>,
    inbox: Mutex<Option<mpsc::Receiver<AuditEvent>>>,
    unwraps: Arc<UnwrapTally>,
    metrics: AuditMetrics,
    stop: watch::Sender<bool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    warned_closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only `Option::take`s happen under these locks.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AuditLog {
    /// An audit log whose metrics live in `registry`. Events queue until
    /// [`AuditLog::start`].
    ///
    /// # Errors
    ///
    /// The metric families are already registered.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let (queue, inbox) = mpsc::channel(QUEUE_CAPACITY);
        let (stop, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                inbox: Mutex::new(Some(inbox)),
                unwraps: Arc::new(UnwrapTally::default()),
                metrics: AuditMetrics::new(registry)?,
                stop,
                writer: Mutex::new(None),
                warned_closed: AtomicBool::new(false),
            }),
        })
    }

    /// Queues `event` for the trail. Never blocks: when the queue is full
    /// the event is dropped, counted and logged.
    pub fn record(&self, event: AuditEvent) {
        match self.inner.queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.inner.metrics.dropped.inc();
                let dropped = self.inner.metrics.dropped.get();
                // One line per thousand under a flood, not one per event.
                if dropped == 1 || dropped.is_multiple_of(1000) {
                    tracing::error!(
                        target: "strongbox::audit",
                        action = event.action.as_str(),
                        dropped,
                        "audit queue full: event dropped (see strongbox_audit_dropped_total)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(event)) => {
                self.inner.metrics.dropped.inc();
                if !self.inner.warned_closed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "strongbox::audit",
                        action = event.action.as_str(),
                        "audit trail already stopped: event dropped"
                    );
                }
            }
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.inner.metrics
    }

    /// The observer to install in the key manager: counts each unwrap for
    /// the principal whose request is being served (see
    /// [`with_principal`]).
    pub fn unwrap_observer(&self) -> UnwrapObserver {
        let tally = self.inner.unwraps.clone();
        Arc::new(move |ctx: &SegmentKeyContext, kek: &KekId| tally.observe(ctx, kek))
    }

    /// A hook for authentication failures (chain it after the metrics'
    /// hook).
    pub fn auth_failure_hook(&self) -> AuthFailureHook {
        let log = self.clone();
        Arc::new(move |f: &AuthFailure| log.record(auth_failure_event(f)))
    }

    /// Starts the writer on `partition`, the `_audit` topic's (see
    /// `services::partitions::audit_topic::start_audit`), with the head
    /// anchored in `meta`; `names` gives topic names by id for unwrap
    /// counts. Must run inside the tokio runtime; a second call does
    /// nothing.
    pub fn start(
        &self,
        partition: Result<Arc<dyn TrailLog>, BrokerError>,
        meta: MetaStore,
        names: TopicNameSource,
    ) {
        let Some(inbox) = lock(&self.inner.inbox).take() else {
            return;
        };
        let names: NameSource = Arc::new(move || TopicNames(names()));
        let task = Task {
            inbox,
            unwraps: self.inner.unwraps.clone(),
            metrics: self.inner.metrics.clone(),
            stop: self.inner.stop.subscribe(),
            names,
        };
        let handle = tokio::spawn(async move {
            match partition {
                Ok(partition) => {
                    let metrics = task.metrics.clone();
                    let recovered = tokio::task::spawn_blocking(move || {
                        ChainWriter::recover(partition, meta, metrics)
                    })
                    .await;
                    match recovered {
                        Ok(Ok(r)) => task.run(Some(r.writer), r.alert).await,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e.message, "cannot open the audit trail; audit events are dropped");
                            task.run(None, None).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot open the audit trail; audit events are dropped");
                            task.run(None, None).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e.message, "the audit topic is unavailable; audit events are dropped");
                    task.run(None, None).await;
                }
            }
        });
        *lock(&self.inner.writer) = Some(handle);
    }

    /// Writes what is queued and the pending unwrap counts, then stops the
    /// writer. Events recorded afterwards are dropped.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let handle = lock(&self.inner.writer).take();
        if let Some(handle) = handle
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "the audit writer failed");
        }
    }
}

/// The `auth.failure` event of a refused authentication. The principal a
/// certificate claimed is not verified: it goes in the details, never in
/// `principal`.
fn auth_failure_event(f: &AuthFailure) -> AuditEvent {
    let mut event = AuditEvent::failure(AuditAction::AuthFailure, "listener")
        .detail("stage", f.stage.name())
        .detail("reason", f.reason.clone());
    if let Some(claimed) = &f.claimed {
        event = event.detail("claimed_principal", claimed.clone());
    }
    if let Some(remote) = f.remote {
        event = event.detail("remote", remote.to_string());
    }
    event
}

/// Topic names by id, read when unwrap counts are flushed.
pub type TopicNameSource = Arc<dyn Fn() -> HashMap<[u8; 16], String> + Send + Sync>;

/// [`TopicNameSource`] as the unwrap counts read it.
type NameSource = Arc<dyn Fn() -> TopicNames + Send + Sync>;

#[derive(Debug, Default)]
struct TopicNames(HashMap<[u8; 16], String>);

impl Names for TopicNames {
    fn topic(&self, topic_id: &[u8; 16]) -> Option<String> {
        self.0.get(topic_id).map(|n| topic_resource(n))
    }
}

/// The writer task's inputs.
struct Task {
    inbox: mpsc::Receiver<AuditEvent>,
    unwraps: Arc<UnwrapTally>,
    metrics: AuditMetrics,
    stop: watch::Receiver<bool>,
    names: NameSource,
}

impl Task {
    async fn run(mut self, mut writer: Option<ChainWriter>, alert: Option<AuditEvent>) {
        let mut flush = tokio::time::interval(UNWRAP_FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.reset();
        let mut batch: Vec<AuditEvent> = alert.into_iter().collect();
        let mut stopping = false;
        loop {
            if batch.is_empty() && !stopping {
                tokio::select! {
                    event = self.inbox.recv() => match event {
                        Some(event) => batch.push(event),
                        None => stopping = true,
                    },
                    _ = flush.tick() => batch.extend(self.unwrap_events()),
                    () = self.unwraps.filled() => batch.extend(self.unwrap_events()),
                    () = crate::shutdown::stopped(&mut self.stop) => stopping = true,
                }
            }
            while batch.len() < MAX_BATCH_EVENTS {
                match self.inbox.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            if stopping && batch.len() < MAX_BATCH_EVENTS {
                batch.extend(self.unwrap_events());
            }
            let done = stopping && batch.is_empty();
            for chunk in batch.chunks(MAX_BATCH_EVENTS) {
                self.write(writer.as_mut(), chunk).await;
            }
            batch.clear();
            if done {
                break;
            }
        }
        tracing::debug!("audit writer stopped");
    }

    fn unwrap_events(&self) -> Vec<AuditEvent> {
        let counts = self.unwraps.drain();
        if counts.is_empty() {
            return Vec::new();
        }
        unwraps::events(counts, &(self.names)())
    }

    async fn write(&self, writer: Option<&mut ChainWriter>, events: &[AuditEvent]) {
        let Some(writer) = writer else {
            self.metrics.dropped.inc_by(events.len() as u64);
            return;
        };
        if let Err(e) = writer.append(events).await {
            self.metrics.dropped.inc_by(events.len() as u64);
            tracing::error!(
                target: "strongbox::audit",
                error = %e.message,
                events = events.len(),
                "cannot append to the audit trail: events dropped"
            );
        }
    }
}
