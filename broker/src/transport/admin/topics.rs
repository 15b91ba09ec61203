//! Admin requests about topics: create, delete, describe, list, recover.

use std::sync::Arc;

use strongbox_cluster::MetaCommand;
use strongbox_cluster::command::TopicSpec;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::{Durability, Operations, TopicConfig, TopicInfo};
use strongbox_storage::keys::SegmentKeys;
use strongbox_storage::meta::TopicEntry;

use crate::audit::{self, AuditAction, AuditEvent, topic_resource};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::authz::Authorizer;
use crate::services::caller::{ConnCtx, blocking};
use crate::services::partitions::topics::{self, Topic, resolve_config, validate_topic_name};

/// Creates a topic (`create` on its name).
pub(super) async fn create(
    ctx: &ConnCtx,
    name: String,
    config: TopicConfig,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authz.check(Operations::CREATE, &name)?;
    let answer = create_topic(state, &name, config).await?;
    if let AdminResponse::Topic(info) = &answer {
        state
            .audit
            .record(topic_created(&name, info).principal(&ctx.principal));
    }
    Ok(answer)
}

/// Deletes a topic and shreds its data (`delete` on its name).
pub(super) async fn delete(ctx: &ConnCtx, name: String) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authz.check(Operations::DELETE, &name)?;
    let dedicated = state
        .partitions
        .topics()
        .get(&name)
        .is_some_and(|t| t.entry.config.dedicated_kek);
    let answer = delete_topic(state, &name).await?;
    state.audit.record(
        AuditEvent::success(AuditAction::TopicDelete, topic_resource(&name))
            .principal(&ctx.principal)
            .detail("dedicated_kek_destroyed", dedicated),
    );
    Ok(answer)
}

/// Describes a topic (`describe`; `audit` for `_audit`).
pub(super) async fn describe(ctx: &ConnCtx, name: String) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authz.check(audit::read_operation(&name, Operations::DESCRIBE), &name)?;
    Ok(AdminResponse::Topic(
        state.partitions.topics().require(&name)?.describe(),
    ))
}

/// Lists the topics the caller may describe.
pub(super) async fn list(
    ctx: &ConnCtx,
    prefix: Option<String>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let topics = state
        .partitions
        .topics()
        .all()
        .into_iter()
        .filter(|t| prefix.as_deref().is_none_or(|p| t.name().starts_with(p)))
        .filter(|t| {
            authz.allows(
                audit::read_operation(t.name(), Operations::DESCRIBE),
                t.name(),
            )
        })
        .map(|t| t.entry.to_info())
        .collect();
    Ok(AdminResponse::Topics(topics))
}

/// Accepts a partition's lost offsets and resumes writes (`admin` on the
/// topic).
pub(super) async fn recover(
    ctx: &ConnCtx,
    topic: String,
    partition: u32,
    accept_loss: bool,
) -> Result<AdminResponse, BrokerError> {
    let mut authz = Authorizer::new(ctx);
    authz.check(Operations::ADMIN, &topic)?;
    crate::services::partitions::integrity::handle_recover(ctx, &topic, partition, accept_loss)
        .await
}

/// Creates `name` unless it exists (for the development broker's demo
/// topic).
///
/// # Errors
///
/// As topic creation.
pub async fn ensure_topic(
    state: &Arc<BrokerState>,
    name: &str,
    config: TopicConfig,
) -> Result<(), BrokerError> {
    if state.partitions.topics().get(name).is_some() {
        return Ok(());
    }
    let answer = create_topic(state, name, config).await?;
    if let AdminResponse::Topic(info) = &answer {
        state
            .audit
            .record(topic_created(name, info).principal(audit::BROKER_PRINCIPAL));
    }
    Ok(())
}

/// The `topic.create` event of a topic just created.
fn topic_created(name: &str, info: &TopicInfo) -> AuditEvent {
    AuditEvent::success(AuditAction::TopicCreate, topic_resource(name))
        .detail("partitions", info.config.partitions)
        .detail("dedicated_kek", info.config.dedicated_kek)
        .detail("durability", durability_name(info.config.durability))
}

/// `fsync`, `interval:<ms>` or `none`, as the CLI spells it.
fn durability_name(d: Durability) -> String {
    match d {
        Durability::Fsync => "fsync".into(),
        Durability::Interval { interval_ms } => format!("interval:{interval_ms}"),
        Durability::None => "none".into(),
    }
}

async fn create_topic(
    state: &Arc<BrokerState>,
    name: &str,
    config: TopicConfig,
) -> Result<AdminResponse, BrokerError> {
    validate_topic_name(name, false)?;
    let config = resolve_config(config, &state.config.topics)?;
    if state.partitions.topics().get(name).is_some() {
        return Err(BrokerError::new(
            ErrorCode::TopicExists,
            format!("topic {name} already exists"),
        ));
    }
    let mut topic_id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut topic_id).map_err(
        |_| BrokerError::internal("drawing a topic id", "the system random generator failed"),
    )?;
    let entry = TopicEntry {
        name: name.to_owned(),
        topic_id,
        created_at: now_ms(),
        config,
    };
    // Check the log settings before storing anything.
    topics::log_config(&entry, 0)
        .validate()
        .map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, e.to_string()))?;
    let partitions = usize::try_from(entry.config.partitions).unwrap_or(usize::MAX);
    // Proposed without the admin lock: a proposal can wait (for a leader,
    // for a majority) and must not hold up every other admin write and
    // the node's following of the group. The group refuses a second topic
    // of the same name, so the check above needs no lock.
    state
        .metadata
        .submit(MetaCommand::CreateTopic {
            topic: TopicSpec::from(&entry),
            replicas: vec![vec![state.metadata.node_id()]; partitions],
        })
        .await?;
    let _guard = state.admin_lock.lock().await;
    // In a cluster the node may already serve it: it follows what the
    // group applies, this command included.
    let topic = match state.partitions.topics().get(name) {
        Some(served) if served.entry.topic_id == entry.topic_id => served,
        _ => open_topic(state, entry).await?,
    };
    tracing::info!(target: "strongbox::audit", topic = %name, partitions = topic.partition_count(), dedicated_kek = topic.entry.config.dedicated_kek, "topic created");
    Ok(AdminResponse::Topic(topic.describe()))
}

async fn delete_topic(state: &Arc<BrokerState>, name: &str) -> Result<AdminResponse, BrokerError> {
    let _guard = state.admin_lock.lock().await;
    let topic = state.partitions.topics().require(name)?;
    state
        .metadata
        .submit(MetaCommand::DeleteTopic {
            name: name.to_owned(),
        })
        .await?;
    let shredded = close_topic(state, &topic).await?;
    tracing::info!(target: "strongbox::audit", topic = %name, keys_destroyed = shredded, "topic deleted");
    Ok(AdminResponse::Ok {
        message: if shredded > 0 {
            format!("topic {name} deleted; its dedicated key ({shredded} versions) was destroyed")
        } else {
            format!("topic {name} deleted")
        },
    })
}

/// Serves a topic the metadata now holds: opens its partition logs on this
/// node. Callers hold `admin_lock` and have checked it is not served yet.
///
/// # Errors
///
/// The blocking task failed.
pub(crate) async fn open_topic(
    state: &Arc<BrokerState>,
    entry: TopicEntry,
) -> Result<Arc<Topic>, BrokerError> {
    let keys: Arc<dyn SegmentKeys> = state.keys.manager().clone();
    let name = entry.name.clone();
    // Opening the partition logs creates files: off the async threads.
    let state2 = state.clone();
    let topic = blocking(move || state2.partitions.topics().add(entry, keys)).await?;
    state.metrics.touch_topic(&name);
    Ok(topic)
}

/// Stops serving a topic the metadata no longer holds and shreds its data
/// on this node; returns the number of KEK versions destroyed. Callers
/// hold `admin_lock`.
///
/// # Errors
///
/// Shredding failed (the deletion stays recorded and is finished at the
/// next start).
pub(crate) async fn close_topic(
    state: &Arc<BrokerState>,
    topic: &Arc<Topic>,
) -> Result<usize, BrokerError> {
    let name = topic.name().to_owned();
    state.partitions.topics().remove(&name);
    for p in topic.ready_partitions() {
        p.close();
    }
    state
        .partitions
        .watch()
        .forget_topic(&name, topic.partition_count());
    let state2 = state.clone();
    let topic2 = topic.clone();
    let shredded = blocking(move || shred_topic(&state2, &topic2)).await??;
    state.metrics.forget_topic(&name);
    Ok(shredded)
}

/// Deletes a topic's data, key envelopes first (crypto-shredding: once the
/// wrapped data keys are gone the segments cannot be decrypted, even from a
/// copy), forgets its keys in the registry, then destroys its dedicated KEK
/// if it has one. Every step is made durable in order, and the metadata
/// store keeps the deletion recorded until the last one is done, so a stop
/// or a power cut in between is finished at the next start. Returns the
/// number of KEK versions destroyed.
fn shred_topic(state: &BrokerState, topic: &Topic) -> Result<usize, BrokerError> {
    let deletion = strongbox_storage::meta::TopicDeletion {
        topic_id: topic.entry.topic_id,
        name: topic.entry.name.clone(),
        partitions: topic.entry.config.partitions,
        dedicated_kek: topic.entry.config.dedicated_kek,
    };
    strongbox_storage::data_dir::finish_topic_deletion(
        state.partitions.topics().io().as_ref(),
        state.partitions.topics().data_dir(),
        state.keys.manager(),
        &deletion,
    )
    .map_err(|e| BrokerError::internal("deleting the topic's files and keys", e))
}
