//! The internal topic `_audit`: created by the broker at start when
//! missing, stored like any topic (sealed under the broker KEK).
//!
//! One partition, so the chain has one order; `fsync` durability, so a
//! record the head anchors is on disk; no retention, so `audit verify` can
//! always start from record 1 (operators archive and rotate the trail by
//! policy, not by a timer). Clients never publish to it, delete it or
//! create `_` topics (see `services::authz`); reading it needs `audit`.

use std::sync::Arc;

use strongbox_protocol::clock::now_ms;
use strongbox_protocol::model::{Durability, Operations, TopicConfig};
use strongbox_storage::keys::SegmentKeys;
use strongbox_storage::meta::{MetaError, MetaStore, TopicEntry};

use super::event::{AuditAction, AuditEvent, BROKER_PRINCIPAL, topic_resource};
use crate::config::TopicDefaults;
use crate::error::BrokerError;
use crate::services::partitions::topics::{self, TopicTable, resolve_config, validate_topic_name};

/// The audit trail's topic.
pub const AUDIT_TOPIC: &str = "_audit";

/// The operation reading `topic` needs: `audit` for `_audit`, `default`
/// (`subscribe`, `describe`) for every other topic.
pub fn read_operation(topic: &str, default: Operations) -> Operations {
    if topic == AUDIT_TOPIC {
        Operations::AUDIT
    } else {
        default
    }
}

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
