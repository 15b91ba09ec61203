//! The peer's stream handlers: control, producer, subscription, admin.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::control::ErrorFrame;
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::frames::subscribe::{
    AssignedPartition, Assignment, OffsetBatch, PartitionError, Records, StartPosition,
    SubscriptionTarget,
};
use strongbox_protocol::model::{
    AccessRequestInfo, AccessState, AclRule, KeyState, KeyVersionInfo, PartitionInfo,
    RecipientEntry, RewrapProgress, TopicConfig, TopicInfo,
};
use strongbox_protocol::session::admin::BrokerAdminStream;
use strongbox_protocol::session::control::ControlEvent;
use strongbox_protocol::session::produce::{BrokerProducerStream, ProduceOutcome, ProduceRequest};
use strongbox_protocol::session::subscribe::{BrokerSubscription, SubscriptionRequest};

use super::{Reader, Shared, State, StoredBatch, new_control, write};

pub async fn control(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    principal: String,
    shared: Arc<Shared>,
) {
    let mut reader = Reader::new(recv);
    let mut machine = new_control(&shared.limits, &principal);
    loop {
        while let Some(frame) = machine.poll_transmit() {
            if !write(&mut send, &frame).await {
                return;
            }
        }
        while let Some(event) = machine.poll_event() {
            if let ControlEvent::Goodbye(_) = event {
                conn.close(0u32.into(), b"goodbye");
                return;
            }
        }
        let deadline = machine.poll_timeout().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(60),
            tokio::time::Instant::from_std,
        );
        tokio::select! {
            frame = reader.next() => {
                let Some(frame) = frame else { return };
                let now = tokio::time::Instant::now().into_std();
                if let Err(v) = machine.handle_frame(frame, now) {
                    write(&mut send, &v.to_frame()).await;
                    conn.close(u32::from(v.code.as_u16()).into(), v.message.as_bytes());
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if let Err(v) = machine.handle_timeout(tokio::time::Instant::now().into_std()) {
                    conn.close(u32::from(v.code.as_u16()).into(), v.message.as_bytes());
                    return;
                }
            }
        }
    }
}

/// Routes a stream by its first frame.
pub async fn dispatch(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    principal: String,
    shared: Arc<Shared>,
) {
    let mut reader = Reader::new(recv);
    let Some(first) = reader.next().await else {
        return;
    };
    match first {
        Frame::Produce(_) => producer(conn, send, reader, first, principal, shared).await,
        Frame::Subscribe(_) => subscription(conn, send, reader, first, principal, shared).await,
        Frame::Request(_) => admin(send, first, principal, shared).await,
        _ => {}
    }
}

fn not_authorized(principal: &str, op: &str, topic: &str) -> (ErrorCode, String) {
    (
        ErrorCode::NotAuthorized,
        format!("not authorized: {principal} may not {op} {topic}"),
    )
}

async fn producer(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut reader: Reader,
    first: Frame,
    principal: String,
    shared: Arc<Shared>,
) {
    let mut machine =
        BrokerProducerStream::new(shared.limits.max_in_flight, shared.limits.max_batch_size);
    let mut next = Some(first);
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => match reader.next().await {
                Some(f) => f,
                None => {
                    let _ = send.finish();
                    return;
                }
            },
        };
        let outcome = match machine.handle_frame(frame) {
            Err(v) => {
                write(&mut send, &v.to_frame()).await;
                return;
            }
            Ok(ProduceRequest::Reject(error)) => ProduceOutcome::Failed(error),
            Ok(ProduceRequest::Append(_)) if shared.swallow_produce.load(Ordering::SeqCst) => {
                shared.stats.produce_frames.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Ok(ProduceRequest::Append(produce)) => {
                let seen = shared.stats.produce_frames.fetch_add(1, Ordering::SeqCst) + 1;
                let outcome = append(&shared, &principal, produce);
                let drop_at = shared.drop_after_produce.load(Ordering::SeqCst);
                if drop_at != 0 && seen >= drop_at {
                    shared.drop_after_produce.store(0, Ordering::SeqCst);
                    conn.close(0u32.into(), b"test peer: dropped on purpose");
                    return;
                }
                outcome
            }
        };
        let Ok(answer) = machine.answer(outcome) else {
            return;
        };
        if !write(&mut send, &answer).await {
            return;
        }
    }
}

fn append(shared: &Shared, principal: &str, p: Produce) -> ProduceOutcome {
    let fail = |(code, message): (ErrorCode, String)| {
        ProduceOutcome::Failed(ErrorFrame::new(p.correlation_id, code, message))
    };
    if shared
        .refuse_produce
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return fail((
            ErrorCode::PartitionUnavailable,
            "test peer: partition briefly unavailable".into(),
        ));
    }
    let mut state = shared.state.lock().expect("state");
    if state.is_denied(principal, "publish", &p.topic) {
        return fail(not_authorized(principal, "publish", &p.topic));
    }
    let Some(&partitions) = state.topics.get(&p.topic) else {
        return fail((
            ErrorCode::UnknownTopic,
            format!("unknown topic {}", p.topic),
        ));
    };
    if p.partition >= partitions {
        return fail((
            ErrorCode::UnknownPartition,
            format!("{} has {partitions} partitions", p.topic),
        ));
    }
    let batch = match RecordBatch::parse(p.batch.clone()) {
        Ok(b) => b,
        Err(e) => return fail((e.code(), e.to_string())),
    };
    let count = batch.record_count();
    let offset = state.end_offset(&p.topic, p.partition);
    if let Some(stamp) = batch.header().producer {
        match state.producers.get(&stamp.producer_id) {
            None => return fail((ErrorCode::UnknownProducer, "unknown producer".into())),
            Some(epoch) if stamp.epoch < *epoch => {
                return fail((ErrorCode::ProducerFenced, "fenced".into()));
            }
            Some(_) => {}
        }
        let key = (stamp.producer_id, p.topic.clone(), p.partition);
        let seq = state.sequences.entry(key).or_default();
        let expected = seq.last.map_or(0, |l| l.wrapping_add(1));
        if stamp.base_sequence != expected {
            if let Some((_, original)) = seq
                .batches
                .iter()
                .find(|(base, _)| *base == stamp.base_sequence)
            {
                let original = *original;
                shared.stats.duplicates.fetch_add(1, Ordering::SeqCst);
                return ProduceOutcome::Acked(ProduceAck {
                    correlation_id: p.correlation_id,
                    partition: p.partition,
                    base_offset: original,
                    duplicate: true,
                });
            }
            return fail((
                ErrorCode::OutOfOrderSequence,
                format!("expected sequence {expected}, got {}", stamp.base_sequence),
            ));
        }
        seq.last = Some(stamp.base_sequence + count - 1);
        seq.batches.push((stamp.base_sequence, offset));
    }
    state
        .logs
        .entry((p.topic.clone(), p.partition))
        .or_default()
        .push(StoredBatch {
            base_offset: offset,
            count,
            max_timestamp: batch.max_timestamp(),
            bytes: p.batch,
        });
    drop(state);
    shared.appended.notify_waiters();
    ProduceOutcome::Acked(ProduceAck {
        correlation_id: p.correlation_id,
        partition: p.partition,
        base_offset: offset,
        duplicate: false,
    })
}

fn resolve_start(state: &State, topic: &str, partition: u32, start: StartPosition) -> u64 {
    match start {
        StartPosition::Earliest => 0,
        StartPosition::Latest => state.end_offset(topic, partition),
        StartPosition::Offset(o) => o,
        StartPosition::Timestamp(t) => state
            .logs
            .get(&(topic.to_owned(), partition))
            .into_iter()
            .flatten()
            .find(|b| b.max_timestamp >= t)
            .map_or_else(|| state.end_offset(topic, partition), |b| b.base_offset),
    }
}

async fn subscription(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut reader: Reader,
    first: Frame,
    principal: String,
    shared: Arc<Shared>,
) {
    let mut machine = BrokerSubscription::new();
    let subscribe = match machine.handle_frame(first) {
        Ok(SubscriptionRequest::Open(s)) => s,
        Ok(_) => return,
        Err(v) => {
            write(&mut send, &v.to_frame()).await;
            return;
        }
    };
    shared
        .stats
        .credit_granted
        .fetch_add(subscribe.credit, Ordering::SeqCst);
    let topic = subscribe.topic.clone();
    let refused = shared
        .refuse_subscribe
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let opened = {
        let state = shared.state.lock().expect("state");
        if refused {
            Err((
                ErrorCode::PartitionUnavailable,
                "test peer: partition briefly unavailable".to_owned(),
            ))
        } else if state.is_denied(&principal, "subscribe", &topic) {
            Err(not_authorized(&principal, "subscribe", &topic))
        } else if let Some(&n) = state.topics.get(&topic) {
            match &subscribe.target {
                SubscriptionTarget::Partition(p) if *p < n => Ok((
                    0,
                    None,
                    vec![(*p, resolve_start(&state, &topic, *p, subscribe.start))],
                )),
                SubscriptionTarget::Partition(p) => Err((
                    ErrorCode::UnknownPartition,
                    format!("{topic} has no partition {p}"),
                )),
                SubscriptionTarget::Group(g) => Ok((
                    1,
                    Some(g.clone()),
                    (0..n)
                        .map(|p| {
                            let committed = state.commits.get(&(g.clone(), topic.clone(), p));
                            (
                                p,
                                committed.copied().unwrap_or_else(|| {
                                    resolve_start(&state, &topic, p, subscribe.start)
                                }),
                            )
                        })
                        .collect(),
                )),
            }
        } else {
            Err((ErrorCode::UnknownTopic, format!("unknown topic {topic}")))
        }
    };
    let (generation, group, mut positions) = match opened {
        Ok(o) => o,
        Err((code, message)) => {
            write(&mut send, &machine.fail(code, message)).await;
            let _ = send.finish();
            return;
        }
    };
    let assignment = Assignment {
        generation,
        partitions: positions
            .iter()
            .map(|(p, o)| AssignedPartition {
                partition: *p,
                next_offset: *o,
            })
            .collect(),
    };
    let Ok(frame) = machine.assign(assignment) else {
        return;
    };
    if !write(&mut send, &frame).await {
        return;
    }
    let mut sent_frames = 0usize;
    // Partitions a `PartitionError` stopped.
    let mut stopped: Vec<u32> = Vec::new();
    loop {
        // Send what the credit allows.
        loop {
            let next = {
                let state = shared.state.lock().expect("state");
                positions.iter().enumerate().find_map(|(i, (p, pos))| {
                    if stopped.contains(p) {
                        return None;
                    }
                    let log = state.logs.get(&(topic.clone(), *p))?;
                    let batch = log
                        .iter()
                        .find(|b| b.base_offset + u64::from(b.count) > *pos)?;
                    Some((i, *p, batch.clone(), state.end_offset(&topic, *p)))
                })
            };
            let Some((i, partition, batch, high_watermark)) = next else {
                break;
            };
            let damage = shared
                .damaged
                .lock()
                .expect("damaged")
                .iter()
                .find(|(t, p, first, end)| {
                    *t == topic && *p == partition && (*first..*end).contains(&batch.base_offset)
                })
                .map(|(_, _, first, end)| (*first, *end));
            if let Some((first, end)) = damage {
                let Ok((frame, continues)) = machine.partition_error(PartitionError {
                    partition,
                    code: ErrorCode::DataDamaged.as_u16(),
                    first_offset: first,
                    end_offset: end,
                    message: format!("test peer: offsets {first}..{end} are damaged"),
                }) else {
                    return;
                };
                if !write(&mut send, &frame).await {
                    return;
                }
                if continues {
                    positions[i].1 = end;
                    continue;
                }
                stopped.push(partition);
                if group.is_none() {
                    let end = machine.end(Some(ErrorCode::DataDamaged), "partition damaged");
                    write(&mut send, &end).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    return;
                }
                continue;
            }
            if !machine.can_send() {
                shared.stalled.notify_waiters();
                break;
            }
            let records = Records {
                partition,
                high_watermark,
                batches: vec![OffsetBatch {
                    base_offset: batch.base_offset,
                    batch: batch.bytes.clone(),
                }],
            };
            let cost = records.credit_cost();
            let Ok(frame) = machine.records(records) else {
                return;
            };
            if !write(&mut send, &frame).await {
                return;
            }
            let sent = shared
                .stats
                .records_bytes_sent
                .fetch_add(cost, Ordering::SeqCst)
                + cost;
            let granted = shared.stats.credit_granted.load(Ordering::SeqCst);
            shared
                .stats
                .max_overdraft
                .fetch_max(sent.saturating_sub(granted), Ordering::SeqCst);
            positions[i].1 = batch.base_offset + u64::from(batch.count);
            sent_frames += 1;
            let drop_at = shared.drop_after_records.load(Ordering::SeqCst);
            if drop_at != 0 && sent_frames >= drop_at {
                shared.drop_after_records.store(0, Ordering::SeqCst);
                conn.close(0u32.into(), b"test peer: dropped on purpose");
                return;
            }
        }
        let appended = shared.appended.notified();
        tokio::select! {
            frame = reader.next() => {
                let Some(frame) = frame else { return };
                if let Frame::Credit(c) = &frame {
                    shared.stats.credit_granted.fetch_add(c.bytes, Ordering::SeqCst);
                }
                match machine.handle_frame(frame) {
                    Ok(SubscriptionRequest::CreditAdded | SubscriptionRequest::Open(_)) => {}
                    Ok(SubscriptionRequest::Commit(c)) => {
                        if let Some(g) = &group {
                            shared.state.lock().expect("state").commits.insert((g.clone(), topic.clone(), c.partition), c.offset);
                        }
                        shared.stats.commits.fetch_add(1, Ordering::SeqCst);
                        let ack = machine.commit_done(c, Ok(()));
                        if !write(&mut send, &ack).await { return; }
                    }
                    Ok(SubscriptionRequest::Reply(f)) => {
                        if !write(&mut send, &f).await { return; }
                    }
                    Ok(SubscriptionRequest::Unsubscribe) => {
                        write(&mut send, &machine.end(None, "unsubscribed")).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                        return;
                    }
                    Err(v) => {
                        write(&mut send, &v.to_frame()).await;
                        return;
                    }
                }
            }
            () = appended => {}
            // New data may have been appended between the send loop and
            // the wait above; look again now and then.
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

fn topic_info(state: &State, name: &str, partitions: u32) -> TopicInfo {
    TopicInfo {
        name: name.to_owned(),
        topic_id: [7; 16],
        created_at: 1_769_850_000_000,
        config: TopicConfig {
            partitions,
            durability: strongbox_protocol::model::Durability::Fsync,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: None,
            segment_ms: None,
            dedicated_kek: false,
        },
        partitions: (0..partitions)
            .map(|p| PartitionInfo {
                partition: p,
                log_start_offset: 0,
                high_watermark: state.end_offset(name, p),
                segments: 1,
                size_bytes: 0,
                error: None,
                state: Default::default(),
            })
            .collect(),
    }
}

fn key_version() -> KeyVersionInfo {
    KeyVersionInfo {
        scope: "broker".into(),
        version: 2,
        state: KeyState::Active,
        provider: "file".into(),
        created_at: 1,
        state_changed_at: 2,
        segments: 3,
    }
}

fn access_info(id: u64, state: AccessState, principal: &str) -> AccessRequestInfo {
    AccessRequestInfo {
        id,
        requester: principal.to_owned(),
        topic: "demo.x".into(),
        operations: strongbox_protocol::model::Operations::SUBSCRIBE,
        reason: "testing".into(),
        public_key: None,
        state,
        created_at: 5,
        decided_by: None,
        decision_reason: None,
        decided_at: None,
        expires_at: None,
    }
}

/// Answers one admin request. Topics, ACL rules and producer ids are
/// kept; key, audit, access and recipient requests get canned answers
/// that echo their arguments, so tests can check what was sent.
fn answer(
    shared: &Shared,
    principal: &str,
    request: AdminRequest,
) -> Result<AdminResponse, (ErrorCode, String)> {
    let mut state = shared.state.lock().expect("state");
    let deny = |state: &State, op: &str, topic: &str| {
        if state.is_denied(principal, op, topic) {
            Err(not_authorized(principal, op, topic))
        } else {
            Ok(())
        }
    };
    Ok(match request {
        AdminRequest::WhoAmI => AdminResponse::WhoAmI {
            principal: principal.to_owned(),
            broker_id: "test-peer".into(),
            superuser: principal.ends_with("/admin"),
        },
        AdminRequest::CreateTopic { name, config } => {
            deny(&state, "create", &name)?;
            if state.topics.contains_key(&name) {
                return Err((
                    ErrorCode::TopicExists,
                    format!("topic {name} already exists"),
                ));
            }
            state.topics.insert(name.clone(), config.partitions);
            let mut info = topic_info(&state, &name, config.partitions);
            info.config = config;
            AdminResponse::Topic(info)
        }
        AdminRequest::DescribeTopic { name } => {
            deny(&state, "describe", &name)?;
            let n = *state
                .topics
                .get(&name)
                .ok_or((ErrorCode::UnknownTopic, format!("unknown topic {name}")))?;
            AdminResponse::Topic(topic_info(&state, &name, n))
        }
        AdminRequest::ListTopics { prefix } => AdminResponse::Topics(
            state
                .topics
                .iter()
                .filter(|(n, _)| prefix.as_deref().is_none_or(|p| n.starts_with(p)))
                .map(|(n, p)| {
                    let mut t = topic_info(&state, n, *p);
                    t.partitions.clear();
                    t
                })
                .collect(),
        ),
        AdminRequest::DeleteTopic { name } => {
            deny(&state, "delete", &name)?;
            state
                .topics
                .remove(&name)
                .ok_or((ErrorCode::UnknownTopic, format!("unknown topic {name}")))?;
            AdminResponse::Ok {
                message: format!("deleted topic {name}"),
            }
        }
        AdminRequest::AclGrant { rule } => {
            let p = rule.principal.clone();
            state.acls.push(rule);
            AdminResponse::Acls(rules_for(&state, &p))
        }
        AdminRequest::AclRevoke { rule } => {
            state
                .acls
                .retain(|r| !(r.principal == rule.principal && r.topic == rule.topic));
            AdminResponse::Acls(rules_for(&state, &rule.principal))
        }
        AdminRequest::AclList { principal, topic } => AdminResponse::Acls(
            state
                .acls
                .iter()
                .filter(|r| principal.as_deref().is_none_or(|p| r.principal == p))
                .filter(|r| topic.as_deref().is_none_or(|t| r.topic == t))
                .cloned()
                .collect(),
        ),
        AdminRequest::InitProducer { producer_id } => {
            let id = producer_id.unwrap_or_else(|| {
                state.next_producer += 1;
                state.next_producer
            });
            let epoch = state.producers.get(&id).map_or(0, |e| e + 1);
            state.producers.insert(id, epoch);
            AdminResponse::Producer {
                producer_id: id,
                epoch,
            }
        }
        AdminRequest::KeyStatus { .. } => AdminResponse::KeyStatus {
            versions: vec![key_version()],
            rewrap: RewrapProgress {
                running: true,
                total: 10,
                done: 4,
                failed: 0,
            },
        },
        AdminRequest::KeyRotate { topic }
        | AdminRequest::KeyRewrap { topic, .. }
        | AdminRequest::KeyRetire { topic, .. }
        | AdminRequest::KeyCompromised { topic, .. } => AdminResponse::KeyChanged {
            version: key_version(),
            segments: 3,
            message: format!("done for {}", topic.as_deref().unwrap_or("broker")),
        },
        AdminRequest::KeyDestroy { version, force, .. } => AdminResponse::KeyChanged {
            version: KeyVersionInfo {
                version,
                state: KeyState::Destroyed,
                ..key_version()
            },
            segments: 0,
            message: format!("destroyed, force={force}"),
        },
        AdminRequest::AuditHead => AdminResponse::AuditHead {
            sequence: 77,
            hash: [0x5a; 32],
        },
        AdminRequest::AccessRequest {
            topic,
            operations,
            reason,
            public_key,
        } => AdminResponse::Access(AccessRequestInfo {
            topic,
            operations,
            reason,
            public_key,
            ..access_info(1, AccessState::Pending, principal)
        }),
        AdminRequest::AccessList { pending_only } => AdminResponse::AccessList(vec![access_info(
            if pending_only { 1 } else { 2 },
            AccessState::Pending,
            principal,
        )]),
        AdminRequest::AccessApprove { id, ttl_ms, .. } => {
            AdminResponse::Access(AccessRequestInfo {
                expires_at: ttl_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                decided_by: Some(principal.to_owned()),
                ..access_info(id, AccessState::Approved, "spiffe://strongbox.dev/carol")
            })
        }
        AdminRequest::AccessDeny { id, reason } => AdminResponse::Access(AccessRequestInfo {
            decision_reason: Some(reason),
            ..access_info(id, AccessState::Denied, "spiffe://strongbox.dev/carol")
        }),
        AdminRequest::RecipientList { topic } => AdminResponse::Recipients(vec![RecipientEntry {
            recipient: format!("reader-of-{topic}"),
            entry: Bytes::from_static(b"signed"),
        }]),
        AdminRequest::RecipientPut { entry, .. } => AdminResponse::Recipients(vec![entry]),
        AdminRequest::RecipientRemove { .. } => AdminResponse::Recipients(Vec::new()),
        _ => {
            return Err((
                ErrorCode::InvalidRequest,
                "not supported by the test peer".into(),
            ));
        }
    })
}

fn rules_for(state: &State, principal: &str) -> Vec<AclRule> {
    state
        .acls
        .iter()
        .filter(|r| r.principal == principal)
        .cloned()
        .collect()
}

async fn admin(mut send: quinn::SendStream, first: Frame, principal: String, shared: Arc<Shared>) {
    let mut machine = BrokerAdminStream::new();
    let hint = shared.not_leader.lock().expect("hint").clone();
    let frame = match machine.handle_frame(first) {
        Ok(request) if hint.is_some() && request != AdminRequest::WhoAmI => {
            let leader = hint.and_then(|h| h.leader);
            machine.respond(Err(ErrorFrame::not_leader(0, "not the leader", leader)))
        }
        Ok(request) => machine.respond(
            answer(&shared, &principal, request)
                .map_err(|(code, message)| ErrorFrame::new(0, code, message)),
        ),
        Err(v) => v.to_frame(),
    };
    write(&mut send, &frame).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}
