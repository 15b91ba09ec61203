//! The replicated metadata writes ([`MetaCommand`]) and their answers
//! ([`MetaResponse`]).
//!
//! Every write a broker makes to metadata that all nodes share is one
//! command: the broker proposes it, the group orders it, and every node
//! applies it to its own store (`crate::apply`). A command carries
//! everything its outcome depends on besides the store (times, ids drawn by
//! the proposer), so every node computes the same outcome. Checks that
//! depend on the store (a topic that exists, a request already decided) are
//! made when the command is applied, not when it is proposed: two proposals
//! racing each other are ordered by the log, and the loser gets a
//! [`Refusal`] on every node alike.
//!
//! Commands are stored in the group's log as JSON (serde's externally
//! tagged enums, byte strings as lowercase hex); a field may be added with
//! a default, never renamed or removed.

use serde::{Deserialize, Serialize};
use strongbox_protocol::model::{
    AccessRequestInfo, AccessState, AclEffect, AclRule, Durability, Operations, TopicConfig,
};
use strongbox_storage::meta::{AclEntry, KeyPolicy, TopicEntry};

use crate::types::NodeId;

/// A replicated metadata write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaCommand {
    /// `CreateTopic`: adds a topic; `replicas` has one list of node ids per
    /// partition (the first is the preferred leader).
    CreateTopic {
        /// The topic, its id drawn by the proposer.
        topic: TopicSpec,
        /// The replicas of each partition.
        replicas: Vec<Vec<NodeId>>,
    },
    /// `DeleteTopic`: removes a topic with its offsets, recipients and
    /// assignments; each node then deletes its own files.
    DeleteTopic {
        /// The topic's name.
        name: String,
    },
    /// Moves a partition to other nodes.
    AssignPartition {
        /// The topic's name.
        topic: String,
        /// The partition.
        partition: u32,
        /// Its new replicas (the first is the preferred leader).
        replicas: Vec<NodeId>,
    },
    /// `AclGrant`: stores a rule, replacing one with the same principal,
    /// topic, operations and effect.
    PutAcl {
        /// The rule and where it came from.
        acl: AclSpec,
    },
    /// Removes the stored rule with exactly `rule`'s principal, topic,
    /// operations and effect (its expiry is not compared).
    RemoveAcl {
        /// The rule to remove.
        rule: AclRuleSpec,
    },
    /// `AclRevoke`: takes `rule.operations` out of every stored rule with
    /// the same principal, topic and effect; a rule left with none goes.
    RevokeAcl {
        /// What to revoke (its expiry is ignored).
        rule: AclRuleSpec,
    },
    /// The maintenance sweep: removes every rule expired at `now_ms`, and
    /// marks every approved request past its expiry `expired`, with its
    /// rules. A recipient entry listed in `recipients` goes too when its
    /// request expires here and the stored entry is still exactly the one
    /// listed (the proposer, which can read entries, lists those that name
    /// the request's key).
    ExpireGrants {
        /// The sweep's time, milliseconds since the Unix epoch.
        now_ms: i64,
        /// Recipient entries to remove with their request.
        recipients: Vec<RecipientRemoval>,
    },
    /// `CommitOffset`: records the offsets a consumer group committed.
    CommitOffsets {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// (partition, offset) pairs.
        offsets: Vec<(u32, u64)>,
    },
    /// Forgets every offset of a consumer group.
    DeleteGroup {
        /// The group.
        group: String,
    },
    /// `AccessRequest`: stores a new pending request under a fresh id,
    /// unless the requester has the same one pending or `max_pending`
    /// pending already.
    CreateAccessRequest {
        /// The request (`id` and `state` are ignored: it gets a new id and
        /// starts pending).
        request: AccessRequestSpec,
        /// Most pending requests one principal may have.
        max_pending: u32,
    },
    /// `AccessApprove`: stores the decided request, its rule and, for a
    /// request with a public key, the topic owner's recipient entry, if the
    /// request is still pending and no stored rule has the grant's key.
    ApproveAccessRequest {
        /// The request as decided (state `approved`).
        decided: AccessRequestSpec,
        /// The rule the grant creates.
        acl: AclSpec,
        /// The signed recipient entry for the requester's key, if any.
        #[serde(with = "opt_hex")]
        recipient_entry: Option<Vec<u8>>,
    },
    /// `AccessDeny`: stores the decided request if it is still pending.
    DenyAccessRequest {
        /// The request as decided (state `denied`).
        decided: AccessRequestSpec,
    },
    /// `RecipientPut`: stores a signed recipient entry.
    PutRecipient {
        /// The topic.
        topic: String,
        /// The recipient.
        recipient: String,
        /// The signed entry, stored as given.
        #[serde(with = "hex_bytes")]
        entry: Vec<u8>,
    },
    /// `RecipientRemove`.
    RemoveRecipient {
        /// The topic.
        topic: String,
        /// The recipient.
        recipient: String,
    },
    /// `InitProducer`: a new producer id bound to `principal` (epoch 0), or
    /// the next epoch of `existing` when `principal` owns it.
    InitProducer {
        /// The id to bump, or none for a new one.
        existing: Option<u64>,
        /// The principal asking.
        principal: String,
        /// The time of the request, milliseconds since the Unix epoch.
        now_ms: i64,
    },
    /// Sets the key policy of a KEK scope (`*`: every scope without its
    /// own).
    PutKeyPolicy {
        /// The scope label.
        scope: String,
        /// The policy.
        policy: KeyPolicySpec,
    },
    /// Removes the key policy of a KEK scope.
    RemoveKeyPolicy {
        /// The scope label.
        scope: String,
    },
}

impl std::fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CreateTopic { topic, .. } => write!(f, "create-topic {}", topic.name),
            Self::DeleteTopic { name } => write!(f, "delete-topic {name}"),
            Self::AssignPartition {
                topic, partition, ..
            } => write!(f, "assign-partition {topic}/{partition}"),
            Self::PutAcl { acl } => write!(f, "put-acl {} {}", acl.rule.principal, acl.rule.topic),
            Self::RemoveAcl { rule } => write!(f, "remove-acl {} {}", rule.principal, rule.topic),
            Self::RevokeAcl { rule } => write!(f, "revoke-acl {} {}", rule.principal, rule.topic),
            Self::ExpireGrants { now_ms, .. } => write!(f, "expire-grants at {now_ms}"),
            Self::CommitOffsets { group, topic, .. } => {
                write!(f, "commit-offsets {group} {topic}")
            }
            Self::DeleteGroup { group } => write!(f, "delete-group {group}"),
            Self::CreateAccessRequest { request, .. } => {
                write!(
                    f,
                    "create-access-request {} {}",
                    request.requester, request.topic
                )
            }
            Self::ApproveAccessRequest { decided, .. } => {
                write!(f, "approve-access-request {}", decided.id)
            }
            Self::DenyAccessRequest { decided } => write!(f, "deny-access-request {}", decided.id),
            Self::PutRecipient {
                topic, recipient, ..
            } => write!(f, "put-recipient {topic} {recipient}"),
            Self::RemoveRecipient { topic, recipient } => {
                write!(f, "remove-recipient {topic} {recipient}")
            }
            Self::InitProducer { existing, .. } => write!(f, "init-producer {existing:?}"),
            Self::PutKeyPolicy { scope, .. } => write!(f, "put-key-policy {scope}"),
            Self::RemoveKeyPolicy { scope } => write!(f, "remove-key-policy {scope}"),
        }
    }
}

/// The answer to an applied command. For entries that are not commands
/// (a new leader's blank entry, a membership change) it is [`MetaResponse::Done`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaResponse {
    /// Applied; nothing to report.
    Done,
    /// Applied; whether the row it put or removed was there before.
    Existed {
        /// It was.
        existed: bool,
    },
    /// `DeleteTopic` applied: the topic that was removed, if it existed.
    TopicDeleted {
        /// The removed topic.
        topic: Option<TopicSpec>,
    },
    /// `RevokeAcl` applied: each changed rule and what is left of it.
    AclRevoked {
        /// (rule before, rule after or none when deleted).
        changed: Vec<(AclRuleSpec, Option<AclRuleSpec>)>,
    },
    /// `ExpireGrants` applied.
    GrantsExpired {
        /// The rules removed.
        rules: Vec<AclSpec>,
        /// The requests marked expired, each with whether its recipient
        /// entry was removed.
        requests: Vec<(AccessRequestSpec, bool)>,
    },
    /// `DeleteGroup` applied: how many offsets the group had.
    GroupDeleted {
        /// The offsets forgotten.
        offsets: u64,
    },
    /// `CreateAccessRequest` applied: the new request's id.
    AccessRequestCreated {
        /// The id.
        id: u64,
    },
    /// `InitProducer` applied.
    Producer(ProducerOutcome),
    /// The command was valid to propose but the state refused it; every
    /// node refused it alike and nothing changed.
    Refused(Refusal),
}

/// The outcome of `InitProducer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProducerOutcome {
    /// An id and epoch were issued.
    Issued {
        /// The producer id.
        producer_id: u64,
        /// Its epoch.
        epoch: u16,
    },
    /// The id to bump was never issued.
    Unknown,
    /// The id to bump belongs to another principal.
    NotOwned,
    /// The id's epochs are used up.
    Exhausted,
}

/// Why an applied command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The topic exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// Topics starting with `_` are a node's own and never replicated.
    #[error("topic {0} is internal to each node and cannot be changed through the cluster")]
    NodeLocalTopic(String),
    /// The same request is pending already.
    #[error("access request {id} for {operations} on {topic} is already pending")]
    AlreadyPending {
        /// The pending request.
        id: u64,
        /// Its topic.
        topic: String,
        /// Its operations.
        operations: String,
    },
    /// The requester has too many pending requests.
    #[error("{requester} already has {max} pending access requests")]
    TooManyPending {
        /// The requester.
        requester: String,
        /// The limit.
        max: u32,
    },
    /// No such access request.
    #[error("access request {0} does not exist")]
    UnknownAccessRequest(u64),
    /// The request was decided already.
    #[error("access request {id} is already {state}")]
    AlreadyDecided {
        /// The request.
        id: u64,
        /// Its state.
        state: String,
    },
    /// A stored rule has the grant's principal, topic, operations and effect.
    #[error(
        "{principal} already holds a stored rule allowing {operations} on {topic}; revoke it \
         first, or deny this request"
    )]
    AclExists {
        /// The principal pattern.
        principal: String,
        /// The topic pattern.
        topic: String,
        /// The operations.
        operations: String,
    },
    /// The command breaks a rule no state can satisfy (zero partitions, a
    /// partition without replicas, unknown operation bits...).
    #[error("invalid metadata command: {0}")]
    Invalid(String),
}

/// A topic, as commands carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Its 128-bit id, drawn by the proposer, never reused.
    #[serde(with = "hex_id")]
    pub topic_id: [u8; 16],
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Partition count.
    pub partitions: u32,
    /// Durability: `fsync`, `interval` (with `interval_ms`) or `none`.
    pub durability: DurabilitySpec,
    /// Retention by age.
    pub retention_ms: Option<u64>,
    /// Retention by size.
    pub retention_bytes: Option<u64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// Segment age.
    pub segment_ms: Option<u64>,
    /// Whether the topic has its own KEK scope.
    pub dedicated_kek: bool,
}

/// A topic's durability mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum DurabilitySpec {
    /// Every acknowledged batch is fsynced.
    Fsync,
    /// Fsynced every `interval_ms`.
    Interval {
        /// The interval.
        interval_ms: u32,
    },
    /// Left to the page cache.
    None,
}

impl From<&TopicEntry> for TopicSpec {
    fn from(e: &TopicEntry) -> Self {
        let c = &e.config;
        Self {
            name: e.name.clone(),
            topic_id: e.topic_id,
            created_at: e.created_at,
            partitions: c.partitions,
            durability: match c.durability {
                Durability::Fsync => DurabilitySpec::Fsync,
                Durability::Interval { interval_ms } => DurabilitySpec::Interval { interval_ms },
                Durability::None => DurabilitySpec::None,
            },
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
            dedicated_kek: c.dedicated_kek,
        }
    }
}

impl TopicSpec {
    /// The topic as the store keeps it.
    pub fn to_entry(&self) -> TopicEntry {
        TopicEntry {
            name: self.name.clone(),
            topic_id: self.topic_id,
            created_at: self.created_at,
            config: TopicConfig {
                partitions: self.partitions,
                durability: match self.durability {
                    DurabilitySpec::Fsync => Durability::Fsync,
                    DurabilitySpec::Interval { interval_ms } => {
                        Durability::Interval { interval_ms }
                    }
                    DurabilitySpec::None => Durability::None,
                },
                retention_ms: self.retention_ms,
                retention_bytes: self.retention_bytes,
                segment_bytes: self.segment_bytes,
                segment_ms: self.segment_ms,
                dedicated_kek: self.dedicated_kek,
            },
        }
    }
}

/// An ACL rule, as commands carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRuleSpec {
    /// Principal pattern.
    pub principal: String,
    /// Topic pattern.
    pub topic: String,
    /// Operation bits (`strongbox_protocol::model::Operations`).
    pub operations: u16,
    /// `allow` or `deny`.
    pub effect: EffectSpec,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at: Option<i64>,
}

/// An ACL rule's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectSpec {
    /// Allows.
    Allow,
    /// Denies.
    Deny,
}

impl From<&AclRule> for AclRuleSpec {
    fn from(r: &AclRule) -> Self {
        Self {
            principal: r.principal.clone(),
            topic: r.topic.clone(),
            operations: r.operations.0,
            effect: match r.effect {
                AclEffect::Allow => EffectSpec::Allow,
                AclEffect::Deny => EffectSpec::Deny,
            },
            expires_at: r.expires_at,
        }
    }
}

impl AclRuleSpec {
    /// The rule as the protocol models it.
    pub fn to_rule(&self) -> AclRule {
        AclRule {
            principal: self.principal.clone(),
            topic: self.topic.clone(),
            operations: Operations(self.operations),
            effect: match self.effect {
                EffectSpec::Allow => AclEffect::Allow,
                EffectSpec::Deny => AclEffect::Deny,
            },
            expires_at: self.expires_at,
        }
    }
}

/// An ACL rule with where it came from, as commands carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSpec {
    /// The rule.
    pub rule: AclRuleSpec,
    /// The access request whose approval created it.
    pub request_id: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl From<&AclEntry> for AclSpec {
    fn from(e: &AclEntry) -> Self {
        Self {
            rule: AclRuleSpec::from(&e.rule),
            request_id: e.request_id,
            created_at: e.created_at,
        }
    }
}

impl AclSpec {
    /// The entry as the store keeps it.
    pub fn to_entry(&self) -> AclEntry {
        AclEntry {
            rule: self.rule.to_rule(),
            request_id: self.request_id,
            created_at: self.created_at,
        }
    }
}

/// An access request, as commands carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequestSpec {
    /// Its id (ignored by `CreateAccessRequest`).
    pub id: u64,
    /// Who asks.
    pub requester: String,
    /// For which topic.
    pub topic: String,
    /// Operation bits.
    pub operations: u16,
    /// Why.
    pub reason: String,
    /// The requester's public key, for end-to-end encrypted topics.
    #[serde(with = "opt_hex")]
    pub public_key: Option<Vec<u8>>,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: AccessStateSpec,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why.
    pub decision_reason: Option<String>,
    /// When.
    pub decided_at: Option<i64>,
    /// When the grant ends.
    pub expires_at: Option<i64>,
}

/// An access request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessStateSpec {
    /// Waiting for a decision.
    Pending,
    /// Granted.
    Approved,
    /// Refused.
    Denied,
    /// Granted, and over.
    Expired,
}

impl From<&AccessRequestInfo> for AccessRequestSpec {
    fn from(r: &AccessRequestInfo) -> Self {
        Self {
            id: r.id,
            requester: r.requester.clone(),
            topic: r.topic.clone(),
            operations: r.operations.0,
            reason: r.reason.clone(),
            public_key: r.public_key.as_ref().map(|k| k.to_vec()),
            state: match r.state {
                AccessState::Pending => AccessStateSpec::Pending,
                AccessState::Approved => AccessStateSpec::Approved,
                AccessState::Denied => AccessStateSpec::Denied,
                AccessState::Expired => AccessStateSpec::Expired,
            },
            created_at: r.created_at,
            decided_by: r.decided_by.clone(),
            decision_reason: r.decision_reason.clone(),
            decided_at: r.decided_at,
            expires_at: r.expires_at,
        }
    }
}

impl AccessRequestSpec {
    /// The request as the protocol models it.
    pub fn to_info(&self) -> AccessRequestInfo {
        AccessRequestInfo {
            id: self.id,
            requester: self.requester.clone(),
            topic: self.topic.clone(),
            operations: Operations(self.operations),
            reason: self.reason.clone(),
            public_key: self.public_key.clone().map(bytes::Bytes::from),
            state: match self.state {
                AccessStateSpec::Pending => AccessState::Pending,
                AccessStateSpec::Approved => AccessState::Approved,
                AccessStateSpec::Denied => AccessState::Denied,
                AccessStateSpec::Expired => AccessState::Expired,
            },
            created_at: self.created_at,
            decided_by: self.decided_by.clone(),
            decision_reason: self.decision_reason.clone(),
            decided_at: self.decided_at,
            expires_at: self.expires_at,
        }
    }
}

/// A recipient entry to remove with its expiring request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRemoval {
    /// The request.
    pub request_id: u64,
    /// The entry's topic.
    pub topic: String,
    /// The entry's recipient.
    pub recipient: String,
    /// The entry as stored; another stored entry stays.
    #[serde(with = "hex_bytes")]
    pub entry: Vec<u8>,
}

/// A key policy, as commands carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicySpec {
    /// Rotate the active KEK once it is this old (ms); never when `None`.
    pub rotate_every_ms: Option<u64>,
}

impl KeyPolicySpec {
    /// The policy as the store keeps it.
    pub fn to_policy(&self) -> KeyPolicy {
        KeyPolicy {
            rotate_every_ms: self.rotate_every_ms,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(String::deserialize(d)?, &mut out)
            .map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// proptest strategies for commands, shared by the codec and apply tests.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    use super::*;

    /// Few distinct names, so that commands collide (same topic, same
    /// requester) and the refusals are exercised.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("orders".to_owned()),
            Just("payments".to_owned()),
            Just("_audit".to_owned()),
            "[a-z]{1,3}",
            // Anything, for the codec.
            ".{0,8}",
        ]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..8)
    }

    fn ops() -> impl Strategy<Value = u16> {
        prop_oneof![Just(0b1u16), Just(0b11), Just(0b110), any::<u16>()]
    }

    fn topic() -> impl Strategy<Value = TopicSpec> {
        (
            name(),
            any::<[u8; 16]>(),
            any::<i64>(),
            0u32..4,
            prop_oneof![
                Just(DurabilitySpec::Fsync),
                Just(DurabilitySpec::None),
                (0u32..3).prop_map(|interval_ms| DurabilitySpec::Interval { interval_ms }),
            ],
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            any::<bool>(),
        )
            .prop_map(
                |(name, topic_id, created_at, partitions, durability, r, s, dedicated_kek)| {
                    TopicSpec {
                        name,
                        topic_id,
                        created_at,
                        partitions,
                        durability,
                        retention_ms: r,
                        retention_bytes: s,
                        segment_bytes: s,
                        segment_ms: r,
                        dedicated_kek,
                    }
                },
            )
    }

    fn rule() -> impl Strategy<Value = AclRuleSpec> {
        (
            name(),
            name(),
            ops(),
            prop_oneof![Just(EffectSpec::Allow), Just(EffectSpec::Deny)],
            option::of(0i64..10),
        )
            .prop_map(
                |(principal, topic, operations, effect, expires_at)| AclRuleSpec {
                    principal,
                    topic,
                    operations,
                    effect,
                    expires_at,
                },
            )
    }

    fn acl() -> impl Strategy<Value = AclSpec> {
        (rule(), option::of(1u64..4), any::<i64>()).prop_map(|(rule, request_id, created_at)| {
            AclSpec {
                rule,
                request_id,
                created_at,
            }
        })
    }

    fn state() -> impl Strategy<Value = AccessStateSpec> {
        prop_oneof![
            Just(AccessStateSpec::Pending),
            Just(AccessStateSpec::Approved),
            Just(AccessStateSpec::Denied),
            Just(AccessStateSpec::Expired),
        ]
    }

    fn request() -> impl Strategy<Value = AccessRequestSpec> {
        (
            (1u64..4, name(), name(), ops(), name(), option::of(bytes())),
            (
                state(),
                any::<i64>(),
                option::of(name()),
                option::of(name()),
                option::of(any::<i64>()),
                option::of(0i64..10),
            ),
        )
            .prop_map(
                |(
                    (id, requester, topic, operations, reason, public_key),
                    (state, created_at, decided_by, decision_reason, decided_at, expires_at),
                )| AccessRequestSpec {
                    id,
                    requester,
                    topic,
                    operations,
                    reason,
                    public_key,
                    state,
                    created_at,
                    decided_by,
                    decision_reason,
                    decided_at,
                    expires_at,
                },
            )
    }

    /// Any command.
    pub(crate) fn command() -> impl Strategy<Value = MetaCommand> {
        let replicas = || vec(0u64..5, 0..4);
        prop_oneof![
            (topic(), vec(replicas(), 0..4))
                .prop_map(|(topic, replicas)| MetaCommand::CreateTopic { topic, replicas }),
            // Well-formed creations, so that topics exist often.
            (topic(), 1u64..4).prop_map(|(mut topic, node)| {
                topic.partitions = 2;
                topic.durability = DurabilitySpec::Fsync;
                MetaCommand::CreateTopic {
                    topic,
                    replicas: vec![vec![node]; 2],
                }
            }),
            name().prop_map(|name| MetaCommand::DeleteTopic { name }),
            (name(), 0u32..3, replicas()).prop_map(|(topic, partition, replicas)| {
                MetaCommand::AssignPartition {
                    topic,
                    partition,
                    replicas,
                }
            }),
            acl().prop_map(|acl| MetaCommand::PutAcl { acl }),
            rule().prop_map(|rule| MetaCommand::RevokeAcl { rule }),
            rule().prop_map(|rule| MetaCommand::RemoveAcl { rule }),
            (
                0i64..12,
                vec(
                    (1u64..4, name(), name(), bytes()).prop_map(
                        |(request_id, topic, recipient, entry)| RecipientRemoval {
                            request_id,
                            topic,
                            recipient,
                            entry,
                        }
                    ),
                    0..3
                )
            )
                .prop_map(|(now_ms, recipients)| MetaCommand::ExpireGrants { now_ms, recipients }),
            (name(), name(), vec((0u32..3, any::<u64>()), 0..3)).prop_map(
                |(group, topic, offsets)| MetaCommand::CommitOffsets {
                    group,
                    topic,
                    offsets,
                }
            ),
            name().prop_map(|group| MetaCommand::DeleteGroup { group }),
            (request(), 0u32..3).prop_map(|(request, max_pending)| {
                MetaCommand::CreateAccessRequest {
                    request,
                    max_pending,
                }
            }),
            (request(), acl(), option::of(bytes())).prop_map(|(decided, acl, recipient_entry)| {
                MetaCommand::ApproveAccessRequest {
                    decided,
                    acl,
                    recipient_entry,
                }
            }),
            request().prop_map(|decided| MetaCommand::DenyAccessRequest { decided }),
            (name(), name(), bytes()).prop_map(|(topic, recipient, entry)| {
                MetaCommand::PutRecipient {
                    topic,
                    recipient,
                    entry,
                }
            }),
            (name(), name())
                .prop_map(|(topic, recipient)| MetaCommand::RemoveRecipient { topic, recipient }),
            (option::of(1u64..4), name(), any::<i64>()).prop_map(
                |(existing, principal, now_ms)| MetaCommand::InitProducer {
                    existing,
                    principal,
                    now_ms,
                }
            ),
            (name(), option::of(any::<u64>())).prop_map(|(scope, rotate_every_ms)| {
                MetaCommand::PutKeyPolicy {
                    scope,
                    policy: KeyPolicySpec { rotate_every_ms },
                }
            }),
            name().prop_map(|scope| MetaCommand::RemoveKeyPolicy { scope }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use proptest::prelude::*;

    use super::strategies::command;
    use super::*;
    use crate::types::Entry;

    proptest! {
        /// A command survives the log's encoding (JSON inside an entry),
        /// and garbage never decodes into one by panicking.
        #[test]
        fn commands_round_trip_through_log_entries(cmd in command(), index in 0u64..1000) {
            let json = serde_json::to_vec(&cmd).expect("encode");
            prop_assert_eq!(&serde_json::from_slice::<MetaCommand>(&json).expect("decode"), &cmd);
            let entry = Entry {
                log_id: openraft::testing::log_id::<crate::types::TypeConfig>(3, 2, index),
                payload: EntryPayload::Normal(cmd.clone()),
            };
            let bytes = serde_json::to_vec(&entry).expect("encode entry");
            let back: Entry = serde_json::from_slice(&bytes).expect("decode entry");
            prop_assert_eq!(back.log_id, entry.log_id);
            prop_assert!(matches!(back.payload, EntryPayload::Normal(c) if c == cmd));
            // Every truncation is an error, not a panic.
            for n in 0..bytes.len() {
                prop_assert!(serde_json::from_slice::<Entry>(bytes.get(..n).unwrap_or_default()).is_err());
            }
        }
    }

    #[test]
    fn a_command_is_stored_as_documented() {
        let cmd = MetaCommand::PutRecipient {
            topic: "orders".into(),
            recipient: "bob".into(),
            entry: vec![0xab, 0x01],
        };
        assert_eq!(
            serde_json::to_string(&cmd).expect("encode"),
            r#"{"put_recipient":{"topic":"orders","recipient":"bob","entry":"ab01"}}"#
        );
        let cmd = MetaCommand::DeleteTopic {
            name: "orders".into(),
        };
        assert_eq!(
            serde_json::to_string(&cmd).expect("encode"),
            r#"{"delete_topic":{"name":"orders"}}"#
        );
    }
}
