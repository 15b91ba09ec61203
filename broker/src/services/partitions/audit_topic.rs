//! The internal topic `_audit` as the partition service serves it:
//! created at start when missing (see `crate::audit::topic` for its
//! settings), and the partition the audit trail's writer appends to.

use std::sync::Arc;

use bytes::Bytes;
use strongbox_protocol::batch::RecordBatch;

use strongbox_protocol::clock::now_ms;
use strongbox_protocol::model::{Durability, TopicConfig};
use strongbox_storage::keys::SegmentKeys;
use strongbox_storage::meta::{MetaError, MetaStore, TopicEntry};

use super::topics::{self, TopicTable, resolve_config, validate_topic_name};
use crate::audit::writer::AppendFuture;
use crate::audit::writer::TrailLog;
use crate::audit::{AUDIT_TOPIC, AuditAction, AuditEvent, BROKER_PRINCIPAL, topic_resource};
use crate::config::TopicDefaults;
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::partitions::partition::Partition;

/// Creates `_audit` unless it exists. Returns the `topic.create` event to
/// record when it was created.
///
/// # Errors
///
/// The metadata store cannot be written, or the broker's topic defaults
/// give an invalid log configuration.
pub fn ensure_audit_topic(
    defaults: &TopicDefaults,
    meta: &MetaStore,
    table: &TopicTable,
    keys: Arc<dyn SegmentKeys>,
) -> Result<Option<AuditEvent>, BrokerError> {
    if table.get(AUDIT_TOPIC).is_some() {
        return Ok(None);
    }
    validate_topic_name(AUDIT_TOPIC, true)?;
    let requested = TopicConfig {
        partitions: 1,
        durability: Durability::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    };
    let mut config = resolve_config(requested, defaults)?;
    // Never expire audit records, whatever the defaults say.
    config.retention_ms = None;
    config.retention_bytes = None;
    let mut topic_id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut topic_id).map_err(
        |_| BrokerError::internal("drawing a topic id", "the system random generator failed"),
    )?;
    let entry = TopicEntry {
        name: AUDIT_TOPIC.to_owned(),
        topic_id,
        created_at: now_ms(),
        config,
    };
    topics::log_config(&entry, 0)
        .validate()
        .map_err(|e| BrokerError::internal("configuring the audit topic", e))?;
    meta.write(|b| b.create_topic(&entry))
        .map_err(|e: MetaError| BrokerError::internal("storing the audit topic", e))?;
    table.add(entry, keys);
    tracing::info!(target: "strongbox::audit", topic = AUDIT_TOPIC, "audit topic created");
    Ok(Some(
        AuditEvent::success(AuditAction::TopicCreate, topic_resource(AUDIT_TOPIC))
            .principal(BROKER_PRINCIPAL)
            .detail("partitions", 1)
            .detail("internal", true),
    ))
}

/// Starts the audit trail's writer on `_audit` (inside the tokio runtime;
/// a second call does nothing). Topic names for the unwrap counts are read
/// from `state`'s topic table when the counts are flushed.
pub fn start_audit(state: &Arc<BrokerState>) {
    let partition = state
        .partitions
        .topics()
        .require(AUDIT_TOPIC)
        .and_then(|t| t.partition(0).cloned())
        .map(|p| Arc::new(AuditPartition(p)) as Arc<dyn TrailLog>);
    let weak = Arc::downgrade(state);
    let names = Arc::new(move || {
        weak.upgrade()
            .map(|s| {
                s.partitions
                    .topics()
                    .all()
                    .into_iter()
                    .map(|t| (t.entry.topic_id, t.entry.name.clone()))
                    .collect()
            })
            .unwrap_or_default()
    });
    state.audit.start(partition, state.meta.clone(), names);
}

/// `_audit`'s partition, as the trail's writer sees it.
#[derive(Debug)]
pub struct AuditPartition(pub Arc<Partition>);

impl TrailLog for AuditPartition {
    fn high_watermark(&self) -> u64 {
        self.0.high_watermark()
    }

    fn log_start_offset(&self) -> u64 {
        self.0.log_start_offset()
    }

    fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<(u64, Bytes)>, BrokerError> {
        self.0.read(from, max_bytes)
    }

    fn append<'a>(&'a self, batch: &'a RecordBatch) -> AppendFuture<'a> {
        Box::pin(async move {
            let pending = self.0.begin_append(batch, 0).await?;
            pending.complete().await.map(|_| ())
        })
    }
}
