//! Admin streams: one request, authorized, acted on, answered.
//!
//! Changes to topics and ACLs are serialized by the broker's admin lock and
//! committed durably to the metadata store before the answer is sent.
//! Metadata writes (each an fsync) run on the blocking pool.

use std::sync::Arc;

use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::model::{
    AclRule, Durability, KeyVersionInfo, Operations, TopicConfig, TopicInfo,
};
use strongbox_protocol::session::admin::BrokerAdminStream;
use strongbox_storage::keys::{KekId, KekScope, KekVersion, SegmentKeys};
use strongbox_storage::meta::{AclEntry, MetaError, TopicEntry};

use crate::audit::{self, AUDIT_TOPIC, AuditAction, AuditEvent, Outcome, topic_resource};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::access::{access, recipients};
use crate::services::authz::Authorizer;
use crate::services::caller::{ConnCtx, blocking};
use crate::services::keys::key_lifecycle::{self, scope_name};
use crate::services::keys::rewrap::RewrapRequest;
use crate::services::partitions::producers::InitOutcome;
use crate::services::partitions::topics::{self, Topic, resolve_config, validate_topic_name};
use crate::transport::stream_io::{FrameReader, FrameWriter, StreamError, end_with_error};

/// The topic name checked for broker-wide permissions (keys, ACL listing):
/// a rule must name `*` to grant them.
const BROKER_WIDE: &str = "*";

/// Serves an admin stream whose first frame was `request`.
///
/// The answer goes out as soon as it is ready; the stream then stays open
/// until the client finishes its send side, so that a second frame on it
/// is answered with `Error` `protocol_violation` (an admin stream carries
/// one request) rather than silently dropped.
pub async fn serve(
    ctx: ConnCtx,
    request: AdminRequest,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) {
    let mut session = BrokerAdminStream::new();
    if let Err(v) = session.handle_frame(strongbox_protocol::frame::Frame::Request(request.clone()))
    {
        end_with_error(&mut writer, &mut reader, v.code, &v.message).await;
        return;
    }
    let kind = request.frame_type().name();
    let answer = handle(&ctx, request).await;
    if let Err(e) = &answer {
        tracing::info!(request = kind, code = %e.code, error = %e.message, "admin request refused");
    }
    let frame = session.respond(answer.map_err(|e| e.to_frame(0)));
    match writer.send(&frame).await {
        Ok(()) => {}
        Err(StreamError::Encode(e)) => {
            // An answer larger than the client accepts (a long listing):
            // say so with a code rather than leave the client without one.
            let message = format!(
                "the answer to {kind} does not fit the client's max_frame_size ({e}); \
                 narrow the request or connect with a larger max_frame_size"
            );
            tracing::info!(request = kind, "{message}");
            end_with_error(&mut writer, &mut reader, ErrorCode::FrameTooLarge, &message).await;
            return;
        }
        Err(_) => return,
    }
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        next = reader.next() => match next {
            Ok(None) => {}
            Ok(Some(frame)) => {
                if let Err(v) = session.handle_frame(frame) {
                    end_with_error(&mut writer, &mut reader, v.code, &v.message).await;
                    return;
                }
            }
            Err(e) => {
                if let Some(code) = e.code() {
                    end_with_error(&mut writer, &mut reader, code, &e.to_string()).await;
                }
                return;
            }
        },
        () = crate::shutdown::stopped(&mut shutdown) => {}
    }
    writer
        .finish_delivered(ctx.state.config.listener.shutdown_grace.0)
        .await;
}

async fn handle(ctx: &ConnCtx, request: AdminRequest) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    match request {
        AdminRequest::WhoAmI => Ok(AdminResponse::WhoAmI {
            principal: ctx.principal.clone(),
            broker_id: state.config.broker.id.clone(),
            superuser: state.acl.snapshot().is_superuser(&ctx.principal),
        }),
        AdminRequest::CreateTopic { name, config } => {
            authz.check(Operations::CREATE, &name)?;
            let answer = create_topic(state, &name, config).await?;
            if let AdminResponse::Topic(info) = &answer {
                state
                    .audit
                    .record(topic_created(&name, info).principal(&ctx.principal));
            }
            Ok(answer)
        }
        AdminRequest::DeleteTopic { name } => {
            authz.check(Operations::DELETE, &name)?;
            let dedicated = state
                .topics
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
        AdminRequest::DescribeTopic { name } => {
            authz.check(audit::read_operation(&name, Operations::DESCRIBE), &name)?;
            Ok(AdminResponse::Topic(
                state.topics.require(&name)?.describe(),
            ))
        }
        AdminRequest::ListTopics { prefix } => {
            let topics = state
                .topics
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
        AdminRequest::AclGrant { rule } => {
            authorize_rule_change(&mut authz, &rule)?;
            let event = rule_event(AuditAction::AclGrant, &rule).principal(&ctx.principal);
            let answer = acl_grant(state, rule).await?;
            state.audit.record(event);
            Ok(answer)
        }
        AdminRequest::AclRevoke { rule } => {
            authorize_rule_change(&mut authz, &rule)?;
            let event = rule_event(AuditAction::AclRevoke, &rule).principal(&ctx.principal);
            let answer = acl_revoke(state, rule).await?;
            state.audit.record(event);
            Ok(answer)
        }
        AdminRequest::AclList { principal, topic } => {
            authz.check(Operations::GRANT, topic.as_deref().unwrap_or(BROKER_WIDE))?;
            let rules = state
                .acl
                .snapshot()
                .rules()
                .filter(|r| principal.as_deref().is_none_or(|p| r.principal == p))
                .filter(|r| topic.as_deref().is_none_or(|t| r.topic == t))
                .cloned()
                .collect();
            Ok(AdminResponse::Acls(rules))
        }
        AdminRequest::InitProducer { producer_id } => {
            authz.check_publish_anywhere(state.topics.all().iter().map(|t| t.name().to_owned()))?;
            let meta = state.meta.clone();
            let state2 = state.clone();
            let principal = ctx.principal.clone();
            let outcome = blocking(move || {
                state2
                    .producer_epochs
                    .init(&meta, producer_id, &principal, now_ms())
            })
            .await?
            .map_err(|e| BrokerError::internal("issuing a producer id", e))?;
            let id = producer_id.unwrap_or_default();
            match outcome {
                InitOutcome::Issued { producer_id, epoch } => {
                    Ok(AdminResponse::Producer { producer_id, epoch })
                }
                InitOutcome::Unknown | InitOutcome::Exhausted => Err(BrokerError::new(
                    ErrorCode::UnknownProducer,
                    format!(
                        "producer id {id} was not issued by this broker (or its epochs are exhausted); ask for a new one"
                    ),
                )),
                InitOutcome::NotOwned => {
                    tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, producer_id = id, "producer id refused");
                    state.audit.record(
                        AuditEvent::denied(AuditAction::ProducerDeny, format!("producer:{id}"))
                            .principal(&ctx.principal)
                            .detail("producer_id", id)
                            .detail("reason", "not_owned"),
                    );
                    Err(BrokerError::new(
                        ErrorCode::ProducerNotOwned,
                        format!(
                            "producer id {id} was issued to another principal; ask for a new one (InitProducer without an id)"
                        ),
                    ))
                }
            }
        }
        AdminRequest::KeyStatus { topic } => {
            let scope = key_scope(state, &mut authz, topic.as_deref())?;
            let keys = state.keys.clone();
            let scope2 = scope.clone();
            let versions = blocking(move || keys.versions(scope2.as_ref())).await??;
            Ok(AdminResponse::KeyStatus {
                versions: versions.iter().map(|v| version_info(state, v)).collect(),
                rewrap: state.rewrap.progress(scope.as_ref()),
            })
        }
        AdminRequest::KeyRotate { topic } => {
            let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
            let keys = state.keys.clone();
            let version = blocking(move || keys.rotate(&scope)).await??;
            key_lifecycle::record_rotation(state, &version, &ctx.principal, None);
            Ok(AdminResponse::KeyChanged {
                message: format!("{} is now active for new segments", version.id),
                version: version_info(state, &version),
                segments: 0,
            })
        }
        AdminRequest::KeyRetire { topic, version } => {
            let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
            let keys = state.keys.clone();
            let id = KekId { scope, version };
            let v = blocking(move || keys.retire(&id)).await??;
            tracing::info!(target: "strongbox::audit", principal = %ctx.principal, kek = %v.id, "key retired");
            state.audit.record(
                key_event(state, AuditAction::KeyRetire, Outcome::Success, &v)
                    .principal(&ctx.principal),
            );
            Ok(AdminResponse::KeyChanged {
                message: format!("{} is now decrypt-only", v.id),
                segments: v.segments,
                version: version_info(state, &v),
            })
        }
        AdminRequest::KeyCompromised { topic, version } => {
            let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
            let keys = state.keys.clone();
            let id = KekId { scope, version };
            let v = blocking(move || keys.mark_compromised(&id)).await??;
            tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, kek = %v.id, segments = v.segments, "key marked compromised");
            state.audit.record(
                key_event(state, AuditAction::KeyCompromised, Outcome::Alert, &v)
                    .principal(&ctx.principal),
            );
            key_lifecycle::refresh_compromised(state);
            Ok(AdminResponse::KeyChanged {
                message: format!(
                    "{} is marked compromised; {} segments still use it and go first in the \
                     rewrap queue: rewrap them (strongbox keys rewrap), then destroy it",
                    v.id, v.segments
                ),
                segments: v.segments,
                version: version_info(state, &v),
            })
        }
        AdminRequest::KeyDestroy {
            topic,
            version,
            force,
        } => {
            let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
            let id = KekId { scope, version };
            // Takes effect before the answer: see `destroy_version`.
            let state2 = state.clone();
            let key_lifecycle::Destroyed { outcome, lost } = blocking(move || {
                key_lifecycle::destroy_version(&state2, &id, force, LISTED_SEGMENTS)
            })
            .await??;
            key_lifecycle::refresh_compromised(state);
            tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, kek = %outcome.version.id, segments_lost = outcome.segments_lost, "key destroyed");
            state.audit.record(
                key_event(
                    state,
                    AuditAction::KeyDestroy,
                    Outcome::Success,
                    &outcome.version,
                )
                .principal(&ctx.principal)
                .detail("segments_lost", outcome.segments_lost)
                .detail("forced", force),
            );
            Ok(AdminResponse::KeyChanged {
                message: destroyed_message(
                    &outcome.version.id,
                    outcome.segments_lost,
                    &key_lifecycle::segment_names(state, &lost),
                ),
                segments: outcome.segments_lost,
                version: version_info(state, &outcome.version),
            })
        }
        AdminRequest::AuditHead => {
            authz.check(Operations::AUDIT, AUDIT_TOPIC)?;
            let meta = state.meta.clone();
            let head = blocking(move || meta.read(|r| r.audit_head()))
                .await?
                .map_err(|e: MetaError| BrokerError::internal("reading the audit head", e))?;
            // Sequence 0: nothing anchored yet.
            Ok(head.map_or(
                AdminResponse::AuditHead {
                    sequence: 0,
                    hash: [0; 32],
                },
                |h| AdminResponse::AuditHead {
                    sequence: h.sequence,
                    hash: h.hash,
                },
            ))
        }
        AdminRequest::AccessRequest {
            topic,
            operations,
            reason,
            public_key,
        } => access::request(ctx, topic, operations, reason, public_key).await,
        AdminRequest::AccessList { pending_only } => {
            access::list(ctx, &mut authz, pending_only).await
        }
        AdminRequest::AccessApprove {
            id,
            ttl_ms,
            recipient_entry,
        } => access::approve(ctx, &mut authz, id, ttl_ms, recipient_entry).await,
        AdminRequest::AccessDeny { id, reason } => access::deny(ctx, &mut authz, id, reason).await,
        AdminRequest::RecipientList { topic } => recipients::list(ctx, &mut authz, topic).await,
        AdminRequest::RecipientPut { topic, entry } => {
            recipients::put(ctx, &mut authz, topic, entry).await
        }
        AdminRequest::RecipientRemove { topic, recipient } => {
            recipients::remove(ctx, &mut authz, topic, recipient).await
        }
        AdminRequest::KeyRewrap {
            topic,
            from_version,
        } => {
            let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
            let request = RewrapRequest {
                scope,
                from_version,
                principal: ctx.principal.clone(),
            };
            let started = state.rewrap.start(state, request).await?;
            Ok(AdminResponse::KeyChanged {
                version: version_info(state, &started.target),
                segments: started.queued,
                message: started.message,
            })
        }
        AdminRequest::TopicRecover {
            topic,
            partition,
            accept_loss,
        } => {
            authz.check(Operations::ADMIN, &topic)?;
            crate::services::partitions::integrity::handle_recover(
                ctx,
                &topic,
                partition,
                accept_loss,
            )
            .await
        }
        other => Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{} is not supported by this broker version",
                other.frame_type().name()
            ),
        )),
    }
}

/// Segments a forced destruction names in its answer.
const LISTED_SEGMENTS: usize = 20;

/// The answer to a destruction: how many segments became unreadable and
/// which (the first [`LISTED_SEGMENTS`]).
fn destroyed_message(id: &KekId, lost: u64, names: &[String]) -> String {
    if lost == 0 {
        return format!("{id} destroyed; no segment needed it");
    }
    let more = lost.saturating_sub(names.len() as u64);
    let mut listed = names.join(", ");
    if more > 0 {
        listed.push_str(&format!(" and {more} more"));
    }
    format!("{id} destroyed; {lost} segments are now unreadable: {listed}")
}

/// The KEK scope a key request is about, after checking the `keys`
/// permission on it. `None` for every scope (status only).
fn key_scope(
    state: &BrokerState,
    authz: &mut Authorizer,
    topic: Option<&str>,
) -> Result<Option<KekScope>, BrokerError> {
    match topic {
        None => {
            authz.check(Operations::KEYS, BROKER_WIDE)?;
            Ok(None)
        }
        Some(name) => {
            authz.check(Operations::KEYS, name)?;
            let topic = state.topics.require(name)?;
            if !topic.entry.config.dedicated_kek {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "topic {name} has no dedicated key; its data keys are wrapped by the broker key"
                    ),
                ));
            }
            Ok(Some(topic.kek_scope()))
        }
    }
}

fn version_info(state: &BrokerState, v: &KekVersion) -> KeyVersionInfo {
    v.to_info(scope_name(state, &v.id.scope))
}

/// Granting data operations needs `grant` on the rule's topic pattern;
/// granting anything else (keys, audit, admin, create, ...) needs `admin`.
fn authorize_rule_change(authz: &mut Authorizer, rule: &AclRule) -> Result<(), BrokerError> {
    let data_ops = Operations::PUBLISH
        .union(Operations::SUBSCRIBE)
        .union(Operations::DESCRIBE);
    if rule.operations.0 & !data_ops.0 == 0 {
        authz.check(Operations::GRANT, &rule.topic)
    } else {
        authz.check(Operations::ADMIN, &rule.topic)
    }
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
    if state.topics.get(name).is_some() {
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

/// The event of a rule granted or revoked.
fn rule_event(action: AuditAction, rule: &AclRule) -> AuditEvent {
    AuditEvent::success(action, topic_resource(&rule.topic))
        .detail("rule_principal", rule.principal.clone())
        .detail("operations", rule.operations.to_string())
        .detail("effect", format!("{:?}", rule.effect).to_lowercase())
        .detail("expires_at", rule.expires_at)
}

/// The event of a KEK lifecycle change.
fn key_event(
    state: &BrokerState,
    action: AuditAction,
    outcome: Outcome,
    v: &KekVersion,
) -> AuditEvent {
    let scope = scope_name(state, &v.id.scope);
    AuditEvent::new(action, outcome, audit::kek_resource(&scope, v.id.version))
        .detail("kek", v.id.label())
        .detail("state", v.state.name())
        .detail("segments", v.segments)
}

async fn create_topic(
    state: &Arc<BrokerState>,
    name: &str,
    config: TopicConfig,
) -> Result<AdminResponse, BrokerError> {
    validate_topic_name(name, false)?;
    let config = resolve_config(config, &state.config.topics)?;
    let _guard = state.admin_lock.lock().await;
    if state.topics.get(name).is_some() {
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
    let meta = state.meta.clone();
    let stored = entry.clone();
    blocking(move || meta.write(|b| b.create_topic(&stored)))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("storing the topic", e))?;
    let keys: Arc<dyn SegmentKeys> = state.keys.clone();
    // Opening the partition logs creates files: off the async threads.
    let state2 = state.clone();
    let topic = blocking(move || state2.topics.add(entry, keys)).await?;
    state.metrics.touch_topic(name);
    tracing::info!(target: "strongbox::audit", topic = %name, partitions = topic.partition_count(), dedicated_kek = topic.entry.config.dedicated_kek, "topic created");
    Ok(AdminResponse::Topic(topic.describe()))
}

async fn delete_topic(state: &Arc<BrokerState>, name: &str) -> Result<AdminResponse, BrokerError> {
    let _guard = state.admin_lock.lock().await;
    let topic = state.topics.require(name)?;
    let meta = state.meta.clone();
    let stored_name = name.to_owned();
    blocking(move || meta.write(|b| b.delete_topic(&stored_name)))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("deleting the topic", e))?;
    state.topics.remove(name);
    for p in topic.ready_partitions() {
        p.close();
    }
    state
        .partition_watch
        .forget_topic(name, topic.partition_count());
    let state2 = state.clone();
    let topic2 = topic.clone();
    let shredded = blocking(move || shred_topic(&state2, &topic2)).await??;
    state.metrics.forget_topic(name);
    tracing::info!(target: "strongbox::audit", topic = %name, keys_destroyed = shredded, "topic deleted");
    Ok(AdminResponse::Ok {
        message: if shredded > 0 {
            format!("topic {name} deleted; its dedicated key ({shredded} versions) was destroyed")
        } else {
            format!("topic {name} deleted")
        },
    })
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
        state.topics.io().as_ref(),
        state.topics.data_dir(),
        &state.keys,
        &deletion,
    )
    .map_err(|e| BrokerError::internal("deleting the topic's files and keys", e))
}

async fn acl_grant(state: &Arc<BrokerState>, rule: AclRule) -> Result<AdminResponse, BrokerError> {
    // Compile first: a bad pattern is refused before anything is stored.
    crate::acl::AclSnapshot::compile(0, std::iter::empty::<String>(), vec![rule.clone()])
        .map_err(|e| BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let _guard = state.admin_lock.lock().await;
    let meta = state.meta.clone();
    let entry = AclEntry {
        rule: rule.clone(),
        request_id: None,
        created_at: now_ms(),
    };
    blocking(move || meta.write(|b| b.put_acl(&entry)))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("storing the ACL rule", e))?;
    state.reload_acl()?;
    tracing::info!(target: "strongbox::audit", principal = %rule.principal, topic = %rule.topic, operations = %rule.operations, effect = ?rule.effect, "ACL rule granted");
    Ok(AdminResponse::Acls(rules_for(state, &rule.principal)))
}

/// Takes `rule.operations` out of every rule granted at runtime with the
/// same principal pattern, topic pattern and effect, deleting a rule left
/// with none. Rules of the config file are not touched: the answer says to
/// edit the file when only they match.
async fn acl_revoke(state: &Arc<BrokerState>, rule: AclRule) -> Result<AdminResponse, BrokerError> {
    let _guard = state.admin_lock.lock().await;
    let meta = state.meta.clone();
    let target = rule.clone();
    let changed = blocking(move || meta.write(|b| revoke_operations(b, &target)))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("removing the ACL rule", e))?;
    if changed.is_empty() {
        let from_config = state
            .config_acl_rules()
            .iter()
            .any(|r| covers_part_of(r, &rule));
        let effect = format!("{:?}", rule.effect).to_lowercase();
        return Err(if from_config {
            BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the {effect} rule for {} on {} comes from the broker's config file \
                     ([[acl.rules]]): remove the operations there and send the broker SIGHUP",
                    rule.principal, rule.topic
                ),
            )
        } else {
            BrokerError::new(
                ErrorCode::NotFound,
                format!(
                    "no ACL rule granted at runtime matches: no {effect} rule for {} on {} has \
                     any of {}",
                    rule.principal, rule.topic, rule.operations
                ),
            )
        });
    }
    state.reload_acl()?;
    for (before, after) in &changed {
        let left = after.as_ref().map_or_else(
            || "none (rule deleted)".to_owned(),
            |r| r.operations.to_string(),
        );
        tracing::info!(target: "strongbox::audit", principal = %before.principal, topic = %before.topic, revoked = %rule.operations, had = %before.operations, left = %left, "ACL rule revoked");
    }
    Ok(AdminResponse::Acls(rules_for(state, &rule.principal)))
}

/// True when `candidate` has `rule`'s principal, topic and effect and
/// grants at least one of its operations.
fn covers_part_of(candidate: &AclRule, rule: &AclRule) -> bool {
    candidate.principal == rule.principal
        && candidate.topic == rule.topic
        && candidate.effect == rule.effect
        && candidate.operations.0 & rule.operations.0 != 0
}

/// The stored side of `acl revoke`: each stored rule that `covers_part_of`
/// `rule` loses those operations, keeping its expiry and origin; one left
/// with none is deleted. Returns each changed rule and what is left of it.
fn revoke_operations(
    b: &mut strongbox_storage::meta::Batch<'_>,
    rule: &AclRule,
) -> Result<Vec<(AclRule, Option<AclRule>)>, MetaError> {
    let mut changed = Vec::new();
    let entries = b.acls()?;
    for entry in entries.iter().cloned() {
        if !covers_part_of(&entry.rule, rule) {
            continue;
        }
        b.remove_acl(&entry.rule)?;
        let left = Operations(entry.rule.operations.0 & !rule.operations.0);
        let remainder = if left.is_empty() {
            None
        } else {
            let kept = AclEntry {
                rule: AclRule {
                    operations: left,
                    ..entry.rule.clone()
                },
                ..entry.clone()
            };
            // A rule with exactly the remaining operations may exist: it
            // stays unless this one lasts longer.
            let same = entries.iter().find(|e| acl_key_eq(&e.rule, &kept.rule));
            if same.is_none_or(|e| outlasts(&kept.rule, &e.rule)) {
                b.put_acl(&kept)?;
            }
            Some(kept.rule)
        };
        changed.push((entry.rule, remainder));
    }
    Ok(changed)
}

/// True when the store keys `a` and `b` alike (its expiry is not part of
/// the key).
fn acl_key_eq(a: &AclRule, b: &AclRule) -> bool {
    a.principal == b.principal
        && a.topic == b.topic
        && a.operations == b.operations
        && a.effect == b.effect
}

/// True when `a` expires later than `b` (never counts as latest).
fn outlasts(a: &AclRule, b: &AclRule) -> bool {
    match (a.expires_at, b.expires_at) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
    }
}

fn rules_for(state: &BrokerState, principal: &str) -> Vec<AclRule> {
    state
        .acl
        .snapshot()
        .rules()
        .filter(|r| r.principal == principal)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongbox_protocol::model::AclEffect;

    fn stored(principal: &str, topic: &str, ops: Operations, expires_at: Option<i64>) -> AclEntry {
        AclEntry {
            rule: AclRule {
                principal: principal.into(),
                topic: topic.into(),
                operations: ops,
                effect: AclEffect::Allow,
                expires_at,
            },
            request_id: Some(7),
            created_at: 1,
        }
    }

    fn revoke(
        meta: &strongbox_storage::meta::MetaStore,
        principal: &str,
        topic: &str,
        ops: Operations,
    ) -> Vec<(AclRule, Option<AclRule>)> {
        let rule = AclRule {
            principal: principal.into(),
            topic: topic.into(),
            operations: ops,
            effect: AclEffect::Allow,
            expires_at: None,
        };
        meta.write(|b| revoke_operations(b, &rule)).expect("revoke")
    }

    #[test]
    fn revoking_operations_narrows_rules_and_deletes_empty_ones() {
        let meta = strongbox_storage::meta::MetaStore::in_memory().expect("meta");
        let all = Operations::PUBLISH
            .union(Operations::SUBSCRIBE)
            .union(Operations::DESCRIBE);
        meta.write(|b| {
            b.put_acl(&stored("alice", "demo.*", all, Some(99)))?;
            b.put_acl(&stored("alice", "other", Operations::PUBLISH, None))?;
            Ok::<_, MetaError>(())
        })
        .expect("seed");

        // Part of a rule: the rest stays, with its expiry and origin.
        let changed = revoke(&meta, "alice", "demo.*", Operations::PUBLISH);
        assert_eq!(changed.len(), 1);
        let left = changed[0].1.as_ref().expect("a remainder");
        assert_eq!(
            left.operations,
            Operations::SUBSCRIBE.union(Operations::DESCRIBE)
        );
        let acls = meta.read(|v| v.acls()).expect("acls");
        let demo: Vec<_> = acls.iter().filter(|e| e.rule.topic == "demo.*").collect();
        assert_eq!(demo.len(), 1);
        assert_eq!(demo[0].rule.operations, left.operations);
        assert_eq!(demo[0].rule.expires_at, Some(99));
        assert_eq!(demo[0].request_id, Some(7));

        // Operations the rule does not have: nothing matches.
        assert!(revoke(&meta, "alice", "demo.*", Operations::PUBLISH).is_empty());
        assert!(revoke(&meta, "bob", "demo.*", Operations::SUBSCRIBE).is_empty());

        // All that is left: the rule goes.
        let changed = revoke(&meta, "alice", "demo.*", all);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].1.is_none());
        let acls = meta.read(|v| v.acls()).expect("acls");
        assert_eq!(acls.len(), 1, "only the other topic's rule: {acls:?}");
    }

    #[test]
    fn a_remainder_never_shortens_an_equal_rule() {
        let meta = strongbox_storage::meta::MetaStore::in_memory().expect("meta");
        let both = Operations::PUBLISH.union(Operations::SUBSCRIBE);
        meta.write(|b| {
            b.put_acl(&stored("alice", "t", both, Some(5)))?;
            b.put_acl(&stored("alice", "t", Operations::SUBSCRIBE, None))?;
            Ok::<_, MetaError>(())
        })
        .expect("seed");
        revoke(&meta, "alice", "t", Operations::PUBLISH);
        let acls = meta.read(|v| v.acls()).expect("acls");
        assert_eq!(acls.len(), 1, "{acls:?}");
        assert_eq!(acls[0].rule.operations, Operations::SUBSCRIBE);
        assert_eq!(acls[0].rule.expires_at, None, "the lasting rule stays");
    }
}
