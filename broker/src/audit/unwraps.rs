//! Data key unwraps: who caused them, counted and flushed once a minute.
//!
//! The key manager calls [`UnwrapTally::observe`] on every unwrap that went
//! to the key provider (a cache miss; cache hits are not key operations).
//! The principal is the one whose request is being served on this thread:
//! a subscription runs its reads inside [`with_principal`]; anything else
//! (start-up recovery, maintenance, the rewrap job) is the broker's.
//!
//! A hot read path must not flood the trail, so unwraps are counted per
//! (principal, topic, partition, segment, KEK version) and the audit writer
//! turns each count into one `key.unwrap` record every
//! [`UNWRAP_FLUSH_INTERVAL`](super::UNWRAP_FLUSH_INTERVAL), at shutdown,
//! and early when the table reaches [`EARLY_FLUSH_KEYS`] entries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use strongbox_protocol::clock::now_ms;
use strongbox_storage::keys::{KekId, SegmentKeyContext};
use tokio::sync::Notify;

use super::event::{AuditAction, AuditEvent, BROKER_PRINCIPAL, kek_resource};
use super::record::record_time;

tokio::task_local! {
    static CURRENT_PRINCIPAL: Arc<str>;
}

/// Distinct keys after which the writer is asked to flush before the
/// minute is up.
pub const EARLY_FLUSH_KEYS: usize = 4096;

/// Runs `f` with any data key unwrap it causes attributed to `principal`.
pub fn with_principal<T>(principal: &str, f: impl FnOnce() -> T) -> T {
    CURRENT_PRINCIPAL.sync_scope(Arc::from(principal), f)
}

/// The principal unwraps are attributed to here.
fn current_principal() -> Arc<str> {
    CURRENT_PRINCIPAL
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::from(BROKER_PRINCIPAL))
}

/// What one count is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnwrapKey {
    /// Whose request caused it.
    pub principal: Arc<str>,
    /// The topic's id.
    pub topic_id: [u8; 16],
    /// The partition.
    pub partition: u32,
    /// The segment whose data key was unwrapped.
    pub segment_id: [u8; 16],
    /// The KEK version that wraps it.
    pub kek: KekId,
}

/// How many, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwrapCount {
    /// Unwraps.
    pub count: u64,
    /// First, ms since the Unix epoch.
    pub first_ms: i64,
    /// Last, ms since the Unix epoch.
    pub last_ms: i64,
}

/// Unwrap counts since the last flush.
#[derive(Debug, Default)]
pub struct UnwrapTally {
    counts: Mutex<BTreeMap<UnwrapKey, UnwrapCount>>,
    full: Notify,
}

impl UnwrapTally {
    /// Counts one unwrap of `ctx`'s data key under `kek`, attributed to the
    /// current principal. Cheap; never blocks on I/O.
    pub fn observe(&self, ctx: &SegmentKeyContext, kek: &KekId) {
        let key = UnwrapKey {
            principal: current_principal(),
            topic_id: ctx.topic_id,
            partition: ctx.partition,
            segment_id: ctx.segment_id,
            kek: kek.clone(),
        };
        let now = now_ms();
        let len = {
            let mut counts = self.lock();
            let entry = counts.entry(key).or_insert(UnwrapCount {
                count: 0,
                first_ms: now,
                last_ms: now,
            });
            entry.count = entry.count.saturating_add(1);
            entry.last_ms = now;
            counts.len()
        };
        if len >= EARLY_FLUSH_KEYS {
            self.full.notify_one();
        }
    }

    /// Takes every count.
    pub fn drain(&self) -> BTreeMap<UnwrapKey, UnwrapCount> {
        std::mem::take(&mut *self.lock())
    }

    /// Resolves when the table is big enough to flush early.
    pub async fn filled(&self) {
        self.full.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<UnwrapKey, UnwrapCount>> {
        // The map is consistent after every statement: usable if poisoned.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Names for the ids in unwrap keys.
pub trait Names {
    /// `topic:<name>` for a topic id, if the topic is known.
    fn topic(&self, topic_id: &[u8; 16]) -> Option<String>;
}

/// One `key.unwrap` event per count. A topic deleted since is named by its
/// id.
pub fn events(counts: BTreeMap<UnwrapKey, UnwrapCount>, names: &dyn Names) -> Vec<AuditEvent> {
    counts
        .into_iter()
        .map(|(key, count)| {
            let topic = names
                .topic(&key.topic_id)
                .unwrap_or_else(|| format!("topic-id:{}", hex::encode(key.topic_id)));
            let scope = match &key.kek.scope {
                strongbox_storage::keys::KekScope::Broker => "broker".to_owned(),
                strongbox_storage::keys::KekScope::Topic(_) => topic.clone(),
            };
            AuditEvent::success(AuditAction::KeyUnwrap, topic)
                .principal(key.principal.as_ref())
                .detail("count", count.count)
                .detail("partition", key.partition)
                .detail("segment", hex::encode(key.segment_id))
                .detail("kek", kek_resource(&scope, key.kek.version))
                .detail("first", record_time(count.first_ms))
                .detail("last", record_time(count.last_ms))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongbox_storage::keys::KekScope;

    struct Fixed;
    impl Names for Fixed {
        fn topic(&self, id: &[u8; 16]) -> Option<String> {
            (id[0] == 1).then(|| "topic:demo.x".to_owned())
        }
    }

    fn ctx(topic: u8, segment: u8) -> SegmentKeyContext {
        SegmentKeyContext {
            topic_id: [topic; 16],
            partition: 2,
            segment_id: [segment; 16],
            scope: KekScope::Broker,
        }
    }

    #[tokio::test]
    async fn counts_per_principal_and_segment() {
        let tally = UnwrapTally::default();
        let v1 = KekId {
            scope: KekScope::Broker,
            version: 1,
        };
        for _ in 0..500 {
            with_principal("spiffe://t/bob", || tally.observe(&ctx(1, 9), &v1));
        }
        with_principal("spiffe://t/alice", || tally.observe(&ctx(1, 9), &v1));
        tally.observe(&ctx(1, 9), &v1);
        // Inside a task-local scope set by a subscription task as well.
        tokio::spawn(async move {
            with_principal("spiffe://t/carol", || {
                let t = UnwrapTally::default();
                t.observe(
                    &ctx(1, 1),
                    &KekId {
                        scope: KekScope::Broker,
                        version: 1,
                    },
                );
                assert_eq!(
                    &*t.drain().into_keys().next().unwrap().principal,
                    "spiffe://t/carol"
                );
            });
        })
        .await
        .unwrap();
        let events = events(tally.drain(), &Fixed);
        assert_eq!(events.len(), 3, "one record per principal and key");
        let bob = events
            .iter()
            .find(|e| e.principal_name() == Some("spiffe://t/bob"))
            .unwrap();
        assert_eq!(bob.action(), AuditAction::KeyUnwrap);
        assert_eq!(bob.resource(), "topic:demo.x");
        assert_eq!(bob.detail_value("count"), Some(&500.into()));
        assert_eq!(bob.detail_value("partition"), Some(&2.into()));
        assert_eq!(bob.detail_value("kek"), Some(&"kek:broker/v1".into()));
        assert_eq!(
            bob.detail_value("segment"),
            Some(&hex::encode([9u8; 16]).into())
        );
        assert!(
            events
                .iter()
                .any(|e| e.principal_name() == Some(BROKER_PRINCIPAL))
        );
        assert!(tally.drain().is_empty(), "drained");
    }

    #[test]
    fn unknown_topics_and_dedicated_keys() {
        let tally = UnwrapTally::default();
        let kek = KekId {
            scope: KekScope::Topic("ab".into()),
            version: 3,
        };
        tally.observe(&ctx(2, 1), &kek);
        tally.observe(&ctx(1, 1), &kek);
        let events = events(tally.drain(), &Fixed);
        let unknown = format!("topic-id:{}", hex::encode([2u8; 16]));
        assert_eq!(events[0].resource(), "topic:demo.x");
        assert_eq!(
            events[0].detail_value("kek"),
            Some(&"kek:topic:demo.x/v3".into())
        );
        assert_eq!(events[1].resource(), unknown);
    }
}
