//! Watching the partitions: what each log did on its own goes to the audit
//! trail, fenced logs are asked to resume, each partition's state is
//! published as a metric, and each partition's durable end is recorded in
//! the metadata store.
//!
//! The durable end is recorded after every segment roll (the log calls the
//! hook this module gives it, which wakes the watch at once), every
//! [`WATCH_INTERVAL`] otherwise, and at a clean stop (after the logs are
//! closed, see `run.rs`). A record only moves forward, is written only when
//! it changed, and all partitions that changed share one commit. It is what
//! [`super::integrity`] checks at the next open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, Registry};
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::model::PartitionState;
use strongbox_storage::log::{LogEvent, LogHealth, RollHook};
use strongbox_storage::meta::MetaError;
use tokio::sync::{Notify, watch};

use crate::audit::{AuditAction, AuditEvent, BROKER_PRINCIPAL, topic_resource};
use crate::services::BrokerState;
use crate::services::partitions::partition::Partition;
use crate::services::partitions::topics::PartitionSlot;

/// How often the watch runs when no segment rolls.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The partition watch: one per broker.
pub struct PartitionWatch {
    /// Woken after a segment roll.
    rolled: Arc<Notify>,
    /// The durable end last recorded, per (topic id, partition).
    recorded: Mutex<HashMap<([u8; 16], u32), u64>>,
    /// `strongbox_partition_state{topic, partition, state}`: 1 for the
    /// partition's state, 0 for the others.
    gauge: IntGaugeVec,
}

impl std::fmt::Debug for PartitionWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWatch").finish_non_exhaustive()
    }
}

impl PartitionWatch {
    /// A watch whose state gauge is registered on `registry`.
    ///
    /// # Errors
    ///
    /// The gauge cannot be registered (a name clash).
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "strongbox_partition_state",
                "1 for the state each partition is in (ok, unavailable, read_only, fenced), \
                 0 for the others.",
            ),
            &["topic", "partition", "state"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(Self {
            rolled: Arc::new(Notify::new()),
            recorded: Mutex::new(HashMap::new()),
            gauge,
        })
    }

    /// The hook each log calls after a segment roll.
    pub fn roll_hook(&self) -> RollHook {
        let rolled = Arc::clone(&self.rolled);
        RollHook(Arc::new(move |_end| rolled.notify_one()))
    }

    /// Publishes `state` as the state of `topic`/`partition`.
    pub fn set_state(&self, topic: &str, partition: u32, state: PartitionState) {
        let p = partition.to_string();
        for s in PartitionState::ALL {
            self.gauge
                .with_label_values(&[topic, &p, s.name()])
                .set(i64::from(s == state));
        }
    }

    /// Drops the series of a deleted topic.
    pub fn forget_topic(&self, topic: &str, partitions: u32) {
        for p in 0..partitions {
            let p = p.to_string();
            for s in PartitionState::ALL {
                let _ = self.gauge.remove_label_values(&[topic, &p, s.name()]);
            }
        }
    }

    /// One pass over every partition. Blocking: run it on the blocking pool.
    pub fn pass(&self, state: &BrokerState) {
        let mut ends = Vec::new();
        for topic in state.partitions.topics().all() {
            for (i, slot) in topic.partitions.iter().enumerate() {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let p = match slot {
                    PartitionSlot::Ready(p) => p,
                    PartitionSlot::Failed(_) => {
                        self.set_state(topic.name(), index, PartitionState::Unavailable);
                        continue;
                    }
                };
                if !matches!(p.log().health(), LogHealth::Ok)
                    && let Err(e) = p.log().resume()
                {
                    tracing::debug!(topic = %p.topic, partition = p.index, error = %e, "cannot resume the partition log now");
                }
                p.resync();
                audit_events(state, p);
                self.set_state(topic.name(), index, p.state().0);
                if p.read_only_reason().is_none() {
                    ends.push((topic.entry.topic_id, index, p.log().durable_end_offset()));
                }
            }
        }
        self.record(state, ends);
    }

    /// Records the durable ends that moved since the last record.
    pub fn record(&self, state: &BrokerState, ends: Vec<([u8; 16], u32, u64)>) {
        let changed: Vec<_> = {
            let recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
            ends.into_iter()
                .filter(|(t, p, end)| recorded.get(&(*t, *p)).is_none_or(|r| end > r))
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let now = now_ms();
        let written = state.meta.write(|b| {
            let mut out = Vec::with_capacity(changed.len());
            for (t, p, end) in &changed {
                out.push((*t, *p, b.raise_partition_end(t, *p, *end, now)?.durable_end));
            }
            Ok::<_, MetaError>(out)
        });
        match written {
            Ok(now_recorded) => {
                let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
                for (t, p, end) in now_recorded {
                    recorded.insert((t, p), end);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the partitions' durable ends; retrying at the next pass")
            }
        }
    }
}

/// Writes what a partition's log did on its own to the audit trail.
pub fn audit_events(state: &BrokerState, p: &Partition) {
    for event in p.log().take_events() {
        let base = |action, alert: bool| {
            let e = if alert {
                AuditEvent::alert(action, topic_resource(&p.topic))
            } else {
                AuditEvent::success(action, topic_resource(&p.topic))
            };
            e.principal(BROKER_PRINCIPAL).detail("partition", p.index)
        };
        let record = match event {
            LogEvent::TailQuarantined {
                segment,
                quarantine,
                first_offset,
                position,
                bytes,
                reason,
            } => {
                tracing::warn!(target: "strongbox::audit", topic = %p.topic, partition = p.index, first_offset, bytes, quarantine = %quarantine.display(), "torn tail cut at recovery and kept in a quarantine file");
                base(AuditAction::PartitionQuarantine, true)
                    .detail("segment", file_name(&segment))
                    .detail("quarantine_file", file_name(&quarantine))
                    .detail("first_offset", first_offset)
                    .detail("position", position)
                    .detail("bytes", bytes)
                    .detail("reason", reason)
            }
            LogEvent::Fenced { fault, reason } => {
                tracing::warn!(target: "strongbox::audit", topic = %p.topic, partition = p.index, fault = fault.name(), "partition fenced by a storage fault");
                base(AuditAction::PartitionFence, true)
                    .detail("fault", fault.name())
                    .detail("reason", crate::error::redact_paths(&reason))
            }
            LogEvent::Resumed { cut, next_offset } => {
                tracing::info!(target: "strongbox::audit", topic = %p.topic, partition = p.index, next_offset, "partition resumed after a storage fault");
                let mut e =
                    base(AuditAction::PartitionResume, false).detail("next_offset", next_offset);
                if let Some(c) = cut {
                    e = e
                        .detail("cut_from_offset", c.from_offset)
                        .detail("cut_to_offset", c.to_offset)
                        .detail("cut_bytes", c.bytes);
                }
                e
            }
            other => {
                tracing::info!(topic = %p.topic, partition = p.index, event = ?other, "partition log event");
                continue;
            }
        };
        state.audit.record(record);
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs the watch until the broker shuts down.
pub async fn run(state: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let rolled = Arc::clone(&state.partitions.watch().rolled);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = rolled.notified() => {}
            () = crate::shutdown::stopped(&mut shutdown) => return,
        }
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.partitions.watch().pass(&s)).await;
    }
}
