//! Applying one [`MetaCommand`] to a node's metadata store.
//!
//! The outcome depends only on the command and the store, so every node
//! that applies the same log to the same starting state reaches the same
//! state and answers the same. A command the state refuses changes nothing
//! and answers [`MetaResponse::Refused`]: every check is made before the
//! first write, because the commands of one batch of entries share one
//! transaction and a refused command must not leave half its changes in it.
//! Only a failing store (an I/O error, a value that does not decode) is an
//! error, which stops the state machine.

use std::collections::BTreeSet;

use strongbox_protocol::model::{AccessState, Operations};
use strongbox_storage::meta::{AclEntry, Batch, MetaError, is_node_local_topic};

use crate::command::{
    AccessRequestSpec, AccessStateSpec, AclRuleSpec, AclSpec, DurabilitySpec, MetaCommand,
    MetaResponse, ProducerOutcome, Refusal, TopicSpec,
};

/// Applies `cmd` inside the open transaction `b`.
///
/// # Errors
///
/// The store cannot be read or written.
pub(crate) fn apply_command(
    b: &mut Batch<'_>,
    cmd: &MetaCommand,
) -> Result<MetaResponse, MetaError> {
    match check(cmd) {
        Err(refusal) => Ok(MetaResponse::Refused(refusal)),
        Ok(()) => apply_checked(b, cmd),
    }
}

/// The checks that do not depend on the store.
fn check(cmd: &MetaCommand) -> Result<(), Refusal> {
    let invalid = |why: String| Err(Refusal::Invalid(why));
    let replicated = |topic: &str| {
        if is_node_local_topic(topic) {
            Err(Refusal::NodeLocalTopic(topic.to_owned()))
        } else {
            Ok(())
        }
    };
    let operations = |ops: u16| {
        if ops == 0 || ops & !Operations::VALID != 0 {
            Err(Refusal::Invalid(format!(
                "operation bits {ops:#x} are not valid"
            )))
        } else {
            Ok(())
        }
    };
    match cmd {
        MetaCommand::CreateTopic { topic, replicas } => {
            replicated(&topic.name)?;
            if topic.name.is_empty() {
                return invalid("a topic needs a name".into());
            }
            if topic.partitions == 0 {
                return invalid(format!("topic {} has no partitions", topic.name));
            }
            if topic.durability == (DurabilitySpec::Interval { interval_ms: 0 }) {
                return invalid(format!("topic {} syncs every 0 ms", topic.name));
            }
            if u32::try_from(replicas.len()).ok() != Some(topic.partitions) {
                return invalid(format!(
                    "topic {} has {} partitions but {} replica lists",
                    topic.name,
                    topic.partitions,
                    replicas.len()
                ));
            }
            replicas.iter().try_for_each(|r| check_replicas(r))
        }
        MetaCommand::DeleteTopic { name } => replicated(name),
        MetaCommand::AssignPartition {
            topic, replicas, ..
        } => {
            replicated(topic)?;
            check_replicas(replicas)
        }
        MetaCommand::PutAcl { acl } => operations(acl.rule.operations),
        MetaCommand::RevokeAcl { rule } | MetaCommand::RemoveAcl { rule } => {
            operations(rule.operations)
        }
        MetaCommand::CommitOffsets { topic, .. } => replicated(topic),
        MetaCommand::CreateAccessRequest { request, .. } => {
            replicated(&request.topic)?;
            operations(request.operations)
        }
        MetaCommand::ApproveAccessRequest { decided, acl, .. } => {
            operations(decided.operations)?;
            operations(acl.rule.operations)?;
            if decided.state != AccessStateSpec::Approved {
                return invalid(format!(
                    "approval of request {} is not approved",
                    decided.id
                ));
            }
            Ok(())
        }
        MetaCommand::DenyAccessRequest { decided } => {
            operations(decided.operations)?;
            if decided.state != AccessStateSpec::Denied {
                return invalid(format!("denial of request {} is not denied", decided.id));
            }
            Ok(())
        }
        MetaCommand::PutRecipient { topic, .. } | MetaCommand::RemoveRecipient { topic, .. } => {
            replicated(topic)
        }
        MetaCommand::ExpireGrants { .. }
        | MetaCommand::DeleteGroup { .. }
        | MetaCommand::InitProducer { .. }
        | MetaCommand::PutKeyPolicy { .. }
        | MetaCommand::RemoveKeyPolicy { .. } => Ok(()),
    }
}

fn check_replicas(replicas: &[u64]) -> Result<(), Refusal> {
    if replicas.is_empty() {
        return Err(Refusal::Invalid(
            "a partition needs at least one replica".into(),
        ));
    }
    if replicas.iter().collect::<BTreeSet<_>>().len() != replicas.len() {
        return Err(Refusal::Invalid(format!(
            "replicas {replicas:?} name a node twice"
        )));
    }
    Ok(())
}

fn apply_checked(b: &mut Batch<'_>, cmd: &MetaCommand) -> Result<MetaResponse, MetaError> {
    let existed = |existed| Ok(MetaResponse::Existed { existed });
    match cmd {
        MetaCommand::CreateTopic { topic, replicas } => create_topic(b, topic, replicas),
        MetaCommand::DeleteTopic { name } => {
            let topic = b.delete_topic(name)?;
            Ok(MetaResponse::TopicDeleted {
                topic: topic.as_ref().map(TopicSpec::from),
            })
        }
        MetaCommand::AssignPartition {
            topic,
            partition,
            replicas,
        } => {
            let Some(entry) = b.topic(topic)? else {
                return refused(Refusal::UnknownTopic(topic.clone()));
            };
            if *partition >= entry.config.partitions {
                return refused(Refusal::Invalid(format!(
                    "topic {topic} has no partition {partition}"
                )));
            }
            b.put_partition_assignment(&entry.topic_id, *partition, replicas)?;
            Ok(MetaResponse::Done)
        }
        MetaCommand::PutAcl { acl } => existed(b.put_acl(&acl.to_entry())?),
        MetaCommand::RemoveAcl { rule } => existed(b.remove_acl(&rule.to_rule())?),
        MetaCommand::RevokeAcl { rule } => revoke_acl(b, rule),
        MetaCommand::ExpireGrants { now_ms, recipients } => expire_grants(b, *now_ms, recipients),
        MetaCommand::CommitOffsets {
            group,
            topic,
            offsets,
        } => {
            for (partition, offset) in offsets {
                b.commit_offset(group, topic, *partition, *offset)?;
            }
            Ok(MetaResponse::Done)
        }
        MetaCommand::DeleteGroup { group } => Ok(MetaResponse::GroupDeleted {
            offsets: u64::try_from(b.delete_group(group)?).unwrap_or(u64::MAX),
        }),
        MetaCommand::CreateAccessRequest {
            request,
            max_pending,
        } => create_access_request(b, request, *max_pending),
        MetaCommand::ApproveAccessRequest {
            decided,
            acl,
            recipient_entry,
        } => approve(b, decided, acl, recipient_entry.as_deref()),
        MetaCommand::DenyAccessRequest { decided } => {
            if let Some(refusal) = still_pending(b, decided.id)? {
                return refused(refusal);
            }
            b.update_access_request(&decided.to_info())?;
            Ok(MetaResponse::Done)
        }
        MetaCommand::PutRecipient {
            topic,
            recipient,
            entry,
        } => existed(b.put_recipient(topic, recipient, entry)?),
        MetaCommand::RemoveRecipient { topic, recipient } => {
            existed(b.remove_recipient(topic, recipient)?)
        }
        MetaCommand::InitProducer {
            existing,
            principal,
            now_ms,
        } => init_producer(b, *existing, principal, *now_ms),
        MetaCommand::PutKeyPolicy { scope, policy } => {
            existed(b.put_key_policy(scope, &policy.to_policy())?)
        }
        MetaCommand::RemoveKeyPolicy { scope } => existed(b.remove_key_policy(scope)?),
    }
}

fn refused(refusal: Refusal) -> Result<MetaResponse, MetaError> {
    Ok(MetaResponse::Refused(refusal))
}

fn create_topic(
    b: &mut Batch<'_>,
    topic: &TopicSpec,
    replicas: &[Vec<u64>],
) -> Result<MetaResponse, MetaError> {
    if b.topic(&topic.name)?.is_some() {
        return refused(Refusal::TopicExists(topic.name.clone()));
    }
    b.create_topic(&topic.to_entry())?;
    for (partition, nodes) in (0u32..).zip(replicas) {
        b.put_partition_assignment(&topic.topic_id, partition, nodes)?;
    }
    Ok(MetaResponse::Done)
}

/// True when `candidate` has some of `rule`'s operations under the same
/// principal, topic and effect.
fn covers_part_of(candidate: &AclRuleSpec, rule: &AclRuleSpec) -> bool {
    candidate.principal == rule.principal
        && candidate.topic == rule.topic
        && candidate.effect == rule.effect
        && candidate.operations & rule.operations != 0
}

fn same_key(a: &AclRuleSpec, b: &AclRuleSpec) -> bool {
    a.principal == b.principal
        && a.topic == b.topic
        && a.operations == b.operations
        && a.effect == b.effect
}

/// True when `a` expires later than `b` (never counts as latest).
fn outlasts(a: &AclRuleSpec, b: &AclRuleSpec) -> bool {
    match (a.expires_at, b.expires_at) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
    }
}

fn revoke_acl(b: &mut Batch<'_>, rule: &AclRuleSpec) -> Result<MetaResponse, MetaError> {
    let entries: Vec<AclSpec> = b.acls()?.iter().map(AclSpec::from).collect();
    let mut changed = Vec::new();
    for entry in &entries {
        if !covers_part_of(&entry.rule, rule) {
            continue;
        }
        b.remove_acl(&entry.rule.to_rule())?;
        let left = entry.rule.operations & !rule.operations;
        let remainder = if left == 0 {
            None
        } else {
            let kept = AclSpec {
                rule: AclRuleSpec {
                    operations: left,
                    ..entry.rule.clone()
                },
                ..entry.clone()
            };
            // A rule with exactly the remaining operations may exist: it
            // stays unless this one lasts longer.
            let same = entries.iter().find(|e| same_key(&e.rule, &kept.rule));
            if same.is_none_or(|e| outlasts(&kept.rule, &e.rule)) {
                b.put_acl(&kept.to_entry())?;
            }
            Some(kept.rule)
        };
        changed.push((entry.rule.clone(), remainder));
    }
    Ok(MetaResponse::AclRevoked { changed })
}

fn expire_grants(
    b: &mut Batch<'_>,
    now_ms: i64,
    recipients: &[crate::command::RecipientRemoval],
) -> Result<MetaResponse, MetaError> {
    let mut rules: Vec<AclSpec> = b
        .remove_expired_acls(now_ms)?
        .iter()
        .map(AclSpec::from)
        .collect();
    let mut requests = Vec::new();
    for mut req in b.access_requests()? {
        if req.state != AccessState::Approved || req.expires_at.is_none_or(|t| t > now_ms) {
            continue;
        }
        for rule in b.remove_acls_of_request(req.id)? {
            rules.push(AclSpec::from(&AclEntry {
                rule,
                request_id: Some(req.id),
                created_at: now_ms,
            }));
        }
        let mut recipient_removed = false;
        for r in recipients.iter().filter(|r| r.request_id == req.id) {
            let stored = b.recipient(&r.topic, &r.recipient)?;
            if stored.is_some_and(|s| s.as_ref() == r.entry.as_slice()) {
                recipient_removed |= b.remove_recipient(&r.topic, &r.recipient)?;
            }
        }
        req.state = AccessState::Expired;
        b.update_access_request(&req)?;
        requests.push((AccessRequestSpec::from(&req), recipient_removed));
    }
    Ok(MetaResponse::GrantsExpired { rules, requests })
}

fn create_access_request(
    b: &mut Batch<'_>,
    request: &AccessRequestSpec,
    max_pending: u32,
) -> Result<MetaResponse, MetaError> {
    let pending: Vec<_> = b
        .access_requests()?
        .into_iter()
        .filter(|r| r.state == AccessState::Pending && r.requester == request.requester)
        .collect();
    if let Some(same) = pending
        .iter()
        .find(|r| r.topic == request.topic && r.operations.0 == request.operations)
    {
        return refused(Refusal::AlreadyPending {
            id: same.id,
            topic: same.topic.clone(),
            operations: same.operations.to_string(),
        });
    }
    if u32::try_from(pending.len()).unwrap_or(u32::MAX) >= max_pending {
        return refused(Refusal::TooManyPending {
            requester: request.requester.clone(),
            max: max_pending,
        });
    }
    let mut stored = request.to_info();
    stored.state = AccessState::Pending;
    let id = b.create_access_request(&stored)?;
    Ok(MetaResponse::AccessRequestCreated { id })
}

/// `Some(refusal)` unless request `id` exists and is pending.
fn still_pending(b: &Batch<'_>, id: u64) -> Result<Option<Refusal>, MetaError> {
    Ok(match b.access_request(id)? {
        None => Some(Refusal::UnknownAccessRequest(id)),
        Some(current) if current.state != AccessState::Pending => Some(Refusal::AlreadyDecided {
            id,
            state: current.state.name().to_owned(),
        }),
        Some(_) => None,
    })
}

fn approve(
    b: &mut Batch<'_>,
    decided: &AccessRequestSpec,
    acl: &AclSpec,
    recipient_entry: Option<&[u8]>,
) -> Result<MetaResponse, MetaError> {
    if let Some(refusal) = still_pending(b, decided.id)? {
        return refused(refusal);
    }
    // A stored rule with the same key would be replaced, and later removed
    // with this grant's expiry: refuse rather than take it over.
    if b.acls()?
        .iter()
        .any(|e| same_key(&AclRuleSpec::from(&e.rule), &acl.rule))
    {
        return refused(Refusal::AclExists {
            principal: acl.rule.principal.clone(),
            topic: acl.rule.topic.clone(),
            operations: Operations(acl.rule.operations).to_string(),
        });
    }
    if recipient_entry.is_some() && is_node_local_topic(&decided.topic) {
        return refused(Refusal::NodeLocalTopic(decided.topic.clone()));
    }
    b.put_acl(&acl.to_entry())?;
    if let Some(entry) = recipient_entry {
        b.put_recipient(&decided.topic, &decided.requester, entry)?;
    }
    b.update_access_request(&decided.to_info())?;
    Ok(MetaResponse::Done)
}

fn init_producer(
    b: &mut Batch<'_>,
    existing: Option<u64>,
    principal: &str,
    now_ms: i64,
) -> Result<MetaResponse, MetaError> {
    let (producer_id, epoch) = match existing {
        None => (b.allocate_producer_id()?, 0),
        Some(id) => match b.producer(id)? {
            None => return Ok(MetaResponse::Producer(ProducerOutcome::Unknown)),
            Some(record) if record.principal.as_deref() != Some(principal) => {
                return Ok(MetaResponse::Producer(ProducerOutcome::NotOwned));
            }
            Some(record) => match record.epoch.checked_add(1) {
                Some(epoch) => (id, epoch),
                None => return Ok(MetaResponse::Producer(ProducerOutcome::Exhausted)),
            },
        },
    };
    b.put_producer(
        producer_id,
        &strongbox_storage::meta::ProducerRecord {
            epoch,
            updated_at: now_ms,
            principal: Some(principal.to_owned()),
        },
    )?;
    Ok(MetaResponse::Producer(ProducerOutcome::Issued {
        producer_id,
        epoch,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use strongbox_storage::meta::{MetaStore, ReplicatedTables, TopicEntry};

    use super::*;
    use crate::command::strategies::command;
    use crate::command::{EffectSpec, KeyPolicySpec, RecipientRemoval};

    fn apply(meta: &MetaStore, cmd: &MetaCommand) -> MetaResponse {
        meta.write(|b| apply_command(b, cmd)).expect("apply")
    }

    fn replicated(meta: &MetaStore) -> ReplicatedTables {
        meta.read(|r| r.export_replicated()).expect("export")
    }

    /// A store with node-local rows of its own (`tag` makes them differ).
    fn node(tag: u8) -> MetaStore {
        let meta = MetaStore::in_memory().expect("store");
        meta.write(|b| {
            b.create_topic(&TopicEntry {
                name: "_audit".into(),
                topic_id: [tag; 16],
                created_at: i64::from(tag),
                config: strongbox_protocol::model::TopicConfig {
                    partitions: 1,
                    durability: strongbox_protocol::model::Durability::Fsync,
                    retention_ms: None,
                    retention_bytes: None,
                    segment_bytes: None,
                    segment_ms: None,
                    dedicated_kek: false,
                },
            })?;
            b.raise_partition_end(&[tag; 16], 0, u64::from(tag), 1)?;
            Ok::<_, MetaError>(())
        })
        .expect("node-local rows");
        meta
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Two nodes with different node-local rows that apply the same
        /// commands answer the same and hold the same replicated rows; a
        /// refused command changes nothing; no command breaks the store
        /// (every apply, and every read after it, succeeds).
        #[test]
        fn nodes_that_apply_the_same_log_agree(cmds in proptest::collection::vec(command(), 0..40)) {
            let (a, b) = (node(1), node(2));
            for cmd in &cmds {
                let before = replicated(&a);
                let ra = apply(&a, cmd);
                let rb = apply(&b, cmd);
                prop_assert_eq!(&ra, &rb, "{}", cmd);
                let after = replicated(&a);
                if matches!(ra, MetaResponse::Refused(_)) {
                    prop_assert_eq!(&before, &after, "refused {} changed the store", cmd);
                }
                prop_assert_eq!(&after, &replicated(&b));
            }
            // Node-local rows were never touched by a command.
            for (meta, tag) in [(&a, 1u8), (&b, 2u8)] {
                let audit = meta.read(|r| r.topic("_audit")).expect("read").expect("audit");
                prop_assert_eq!(audit.topic_id, [tag; 16]);
            }
        }
    }

    fn acl(principal: &str, ops: u16, expires_at: Option<i64>, request: Option<u64>) -> AclSpec {
        AclSpec {
            rule: AclRuleSpec {
                principal: principal.into(),
                topic: "orders".into(),
                operations: ops,
                effect: EffectSpec::Allow,
                expires_at,
            },
            request_id: request,
            created_at: 1,
        }
    }

    #[test]
    fn revoking_takes_out_operations_and_keeps_the_rest() {
        let meta = node(1);
        apply(
            &meta,
            &MetaCommand::PutAcl {
                acl: acl("alice", 0b111, None, None),
            },
        );
        let r = apply(
            &meta,
            &MetaCommand::RevokeAcl {
                rule: acl("alice", 0b010, None, None).rule,
            },
        );
        assert_eq!(
            r,
            MetaResponse::AclRevoked {
                changed: vec![(
                    acl("alice", 0b111, None, None).rule,
                    Some(acl("alice", 0b101, None, None).rule)
                )]
            }
        );
        let ops: Vec<u16> = meta
            .read(|r| r.acls())
            .expect("read")
            .iter()
            .map(|e| e.rule.operations.0)
            .collect();
        assert_eq!(ops, vec![0b101]);
    }

    fn pending(id: u64, key: Option<Vec<u8>>) -> AccessRequestSpec {
        AccessRequestSpec {
            id,
            requester: "bob".into(),
            topic: "orders".into(),
            operations: 0b1,
            reason: "audit".into(),
            public_key: key,
            state: AccessStateSpec::Pending,
            created_at: 1,
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn an_access_request_goes_from_pending_to_approved_to_expired() {
        let meta = node(1);
        let create = MetaCommand::CreateAccessRequest {
            request: pending(0, Some(vec![7; 4])),
            max_pending: 2,
        };
        assert_eq!(
            apply(&meta, &create),
            MetaResponse::AccessRequestCreated { id: 1 }
        );
        assert!(matches!(
            apply(&meta, &create),
            MetaResponse::Refused(Refusal::AlreadyPending { id: 1, .. })
        ));
        let mut decided = pending(1, Some(vec![7; 4]));
        decided.state = AccessStateSpec::Approved;
        decided.expires_at = Some(100);
        let approve = MetaCommand::ApproveAccessRequest {
            decided: decided.clone(),
            acl: acl("bob", 0b1, Some(100), Some(1)),
            recipient_entry: Some(b"entry".to_vec()),
        };
        assert_eq!(apply(&meta, &approve), MetaResponse::Done);
        assert_eq!(
            apply(&meta, &approve),
            MetaResponse::Refused(Refusal::AlreadyDecided {
                id: 1,
                state: "approved".into()
            })
        );
        // Not yet expired at 99; at 100 the rule, the request and the
        // recipient entry (still the approved one) go.
        let sweep = |now_ms| MetaCommand::ExpireGrants {
            now_ms,
            recipients: vec![RecipientRemoval {
                request_id: 1,
                topic: "orders".into(),
                recipient: "bob".into(),
                entry: b"entry".to_vec(),
            }],
        };
        assert_eq!(
            apply(&meta, &sweep(99)),
            MetaResponse::GrantsExpired {
                rules: vec![],
                requests: vec![]
            }
        );
        let MetaResponse::GrantsExpired { rules, requests } = apply(&meta, &sweep(100)) else {
            panic!("not a sweep answer");
        };
        assert_eq!(rules.len(), 1);
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests.first().map(|(r, removed)| (r.state, *removed)),
            Some((AccessStateSpec::Expired, true))
        );
        assert_eq!(
            meta.read(|r| r.recipient("orders", "bob")).expect("read"),
            None
        );
        assert!(meta.read(|r| r.acls()).expect("read").is_empty());
    }

    #[test]
    fn producer_ids_are_issued_bumped_and_guarded() {
        let meta = node(1);
        let init = |existing, principal: &str| MetaCommand::InitProducer {
            existing,
            principal: principal.into(),
            now_ms: 5,
        };
        assert_eq!(
            apply(&meta, &init(None, "alice")),
            MetaResponse::Producer(ProducerOutcome::Issued {
                producer_id: 1,
                epoch: 0
            })
        );
        assert_eq!(
            apply(&meta, &init(Some(1), "alice")),
            MetaResponse::Producer(ProducerOutcome::Issued {
                producer_id: 1,
                epoch: 1
            })
        );
        assert_eq!(
            apply(&meta, &init(Some(1), "mallory")),
            MetaResponse::Producer(ProducerOutcome::NotOwned)
        );
        assert_eq!(
            apply(&meta, &init(Some(9), "alice")),
            MetaResponse::Producer(ProducerOutcome::Unknown)
        );
    }

    #[test]
    fn node_local_topics_and_bad_topics_are_refused() {
        let meta = node(1);
        let mut t = TopicSpec::from(
            &meta
                .read(|r| r.topic("_audit"))
                .expect("read")
                .expect("audit"),
        );
        assert_eq!(
            apply(
                &meta,
                &MetaCommand::CreateTopic {
                    topic: t.clone(),
                    replicas: vec![vec![1]]
                }
            ),
            MetaResponse::Refused(Refusal::NodeLocalTopic("_audit".into()))
        );
        assert_eq!(
            apply(
                &meta,
                &MetaCommand::DeleteTopic {
                    name: "_audit".into()
                }
            ),
            MetaResponse::Refused(Refusal::NodeLocalTopic("_audit".into()))
        );
        t.name = "orders".into();
        assert!(matches!(
            apply(
                &meta,
                &MetaCommand::CreateTopic {
                    topic: t.clone(),
                    replicas: vec![]
                }
            ),
            MetaResponse::Refused(Refusal::Invalid(_))
        ));
        assert!(matches!(
            apply(
                &meta,
                &MetaCommand::CreateTopic {
                    topic: t.clone(),
                    replicas: vec![vec![1, 1]]
                }
            ),
            MetaResponse::Refused(Refusal::Invalid(_))
        ));
        assert_eq!(
            apply(
                &meta,
                &MetaCommand::PutKeyPolicy {
                    scope: "*".into(),
                    policy: KeyPolicySpec {
                        rotate_every_ms: Some(1000)
                    },
                }
            ),
            MetaResponse::Existed { existed: false }
        );
        assert_eq!(meta.read(|r| r.key_policies()).expect("read").len(), 1);
    }
}
