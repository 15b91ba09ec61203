//! Strategies and helpers shared by the integration tests.
//!
//! Every frame body, admin value and record batch has a proptest strategy
//! here, so each test file draws from the same definitions.

#![allow(dead_code)] // each test binary uses a different subset

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use strongbox_protocol::batch::{BatchBuilder, ProducerStamp};
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame};
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::control::{ErrorFrame, Goodbye, Hello, Ping, Pong, Welcome};
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::frames::subscribe::{
    AssignedPartition, Assignment, Commit, CommitAck, Credit, OffsetBatch, PartitionError, Records,
    StartPosition, Subscribe, SubscriptionEnd, SubscriptionTarget, Unsubscribe,
};
use strongbox_protocol::model::{
    AccessRequestInfo, AccessState, AclEffect, AclRule, ClusterMetadata, ClusterStatusInfo,
    Durability, KeyState, KeyVersionInfo, LeaderHint, NodeAddress, NodeRole, NodeStatus,
    Operations, PartitionInfo, PartitionPlacement, PartitionState, RecipientEntry, RewrapProgress,
    TopicConfig, TopicInfo, TopicPlacement,
};

/// Encodes `frame` under the default maximum; panics (failing the test) when
/// the frame does not encode.
pub(crate) fn encode(frame: &Frame) -> Bytes {
    frame
        .to_bytes(DEFAULT_MAX_FRAME_SIZE)
        .unwrap_or_else(|e| panic!("{:?} does not encode: {e}", frame.frame_type()))
}

/// Parses a hex string that may contain whitespace, `_` and `|` between
/// fields.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '|')
        .collect();
    hex::decode(&clean).unwrap_or_else(|e| panic!("bad hex in test: {e}: {clean}"))
}

// ---------------------------------------------------------------------------
// primitives

/// Short strings, including multi-byte UTF-8 and the empty string.
pub(crate) fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._/:-]{0,16}",
        1 => "\\PC{0,8}",
    ]
}

/// Bytes of up to `max` length.
pub(crate) fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Integers biased toward the edges of their range.
pub(crate) fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
}

pub(crate) fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(1u32), Just(u32::MAX), any::<u32>()]
}

pub(crate) fn arb_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1i64),
        any::<i64>()
    ]
}

// ---------------------------------------------------------------------------
// control stream

pub(crate) fn arb_hello() -> impl Strategy<Value = Hello> {
    (vec(any::<u16>(), 0..5), arb_string(), arb_u32(), arb_u64()).prop_map(
        |(versions, client_name, max_frame_size, features)| Hello {
            versions,
            client_name,
            max_frame_size,
            features,
        },
    )
}

pub(crate) fn arb_welcome() -> impl Strategy<Value = Welcome> {
    (
        any::<u16>(),
        arb_string(),
        arb_string(),
        arb_u32(),
        arb_u32(),
        arb_u32(),
        arb_u32(),
        arb_u64(),
    )
        .prop_map(
            |(
                version,
                broker_id,
                principal,
                max_frame_size,
                max_batch_size,
                max_in_flight,
                keepalive_ms,
                features,
            )| Welcome {
                version,
                broker_id,
                principal,
                max_frame_size,
                max_batch_size,
                max_in_flight,
                keepalive_ms,
                features,
            },
        )
}

pub(crate) fn arb_goodbye() -> impl Strategy<Value = Goodbye> {
    (any::<u16>(), arb_string()).prop_map(|(code, reason)| Goodbye { code, reason })
}

pub(crate) fn arb_error_frame() -> impl Strategy<Value = ErrorFrame> {
    (
        arb_u64(),
        any::<u16>(),
        arb_string(),
        option::of(option::of(arb_node_address())),
    )
        .prop_map(|(correlation_id, code, message, hint)| ErrorFrame {
            correlation_id,
            code,
            message,
            leader_hint: hint.map(|leader| LeaderHint { leader }),
        })
}

// ---------------------------------------------------------------------------
// cluster values

pub(crate) fn arb_node_address() -> impl Strategy<Value = NodeAddress> {
    (arb_u64(), arb_string()).prop_map(|(id, client_addr)| NodeAddress { id, client_addr })
}

pub(crate) fn arb_cluster_metadata() -> impl Strategy<Value = ClusterMetadata> {
    let partition = (arb_u32(), option::of(arb_u64()), vec(arb_u64(), 0..4)).prop_map(
        |(partition, leader, replicas)| PartitionPlacement {
            partition,
            leader,
            replicas,
        },
    );
    let topic = (arb_string(), vec(partition, 0..4))
        .prop_map(|(name, partitions)| TopicPlacement { name, partitions });
    (vec(arb_node_address(), 0..4), vec(topic, 0..3))
        .prop_map(|(nodes, topics)| ClusterMetadata { nodes, topics })
}

pub(crate) fn arb_node_role() -> impl Strategy<Value = NodeRole> {
    proptest::sample::select(NodeRole::ALL.to_vec())
}

pub(crate) fn arb_cluster_status() -> impl Strategy<Value = ClusterStatusInfo> {
    let node = (
        arb_u64(),
        arb_string(),
        arb_string(),
        arb_node_role(),
        arb_u64(),
        option::of(arb_u64()),
        option::of(arb_u64()),
    )
        .prop_map(
            |(id, peer_addr, client_addr, role, term, last_contact_ms, lag)| NodeStatus {
                id,
                peer_addr,
                client_addr,
                role,
                term,
                last_contact_ms,
                lag,
            },
        );
    (arb_u64(), option::of(arb_u64()), arb_u64(), vec(node, 0..4)).prop_map(
        |(node_id, leader, term, nodes)| ClusterStatusInfo {
            node_id,
            leader,
            term,
            nodes,
        },
    )
}

// ---------------------------------------------------------------------------
// producer stream

/// A `Produce` whose batch is either a valid batch or arbitrary bytes (the
/// frame does not look inside the batch).
pub(crate) fn arb_produce() -> impl Strategy<Value = Produce> {
    let batch = prop_oneof![
        arb_bytes(48),
        arb_batch_spec().prop_map(|s| build_batch(&s))
    ];
    (arb_u64(), arb_string(), arb_u32(), batch).prop_map(
        |(correlation_id, topic, partition, batch)| Produce {
            correlation_id,
            topic,
            partition,
            batch,
        },
    )
}

pub(crate) fn arb_produce_ack() -> impl Strategy<Value = ProduceAck> {
    (arb_u64(), arb_u32(), arb_u64(), any::<bool>()).prop_map(
        |(correlation_id, partition, base_offset, duplicate)| ProduceAck {
            correlation_id,
            partition,
            base_offset,
            duplicate,
        },
    )
}

// ---------------------------------------------------------------------------
// subscription stream

pub(crate) fn arb_start() -> impl Strategy<Value = StartPosition> {
    prop_oneof![
        Just(StartPosition::Earliest),
        Just(StartPosition::Latest),
        arb_u64().prop_map(StartPosition::Offset),
        arb_i64().prop_map(StartPosition::Timestamp),
    ]
}

pub(crate) fn arb_subscribe() -> impl Strategy<Value = Subscribe> {
    let target = prop_oneof![
        arb_u32().prop_map(SubscriptionTarget::Partition),
        arb_string().prop_map(SubscriptionTarget::Group),
    ];
    (arb_string(), target, arb_start(), arb_u64(), any::<bool>()).prop_map(
        |(topic, target, start, credit, skip_damaged)| Subscribe {
            topic,
            target,
            start,
            credit,
            skip_damaged,
        },
    )
}

pub(crate) fn arb_assignment() -> impl Strategy<Value = Assignment> {
    let part = (arb_u32(), arb_u64()).prop_map(|(partition, next_offset)| AssignedPartition {
        partition,
        next_offset,
    });
    (arb_u32(), vec(part, 0..5)).prop_map(|(generation, partitions)| Assignment {
        generation,
        partitions,
    })
}

pub(crate) fn arb_records() -> impl Strategy<Value = Records> {
    let batch = prop_oneof![
        arb_bytes(32),
        arb_batch_spec().prop_map(|s| build_batch(&s))
    ];
    let ob = (arb_u64(), batch).prop_map(|(base_offset, batch)| OffsetBatch { base_offset, batch });
    (arb_u32(), arb_u64(), vec(ob, 0..4)).prop_map(|(partition, high_watermark, batches)| Records {
        partition,
        high_watermark,
        batches,
    })
}

pub(crate) fn arb_subscription_end() -> impl Strategy<Value = SubscriptionEnd> {
    (any::<u16>(), arb_string()).prop_map(|(code, reason)| SubscriptionEnd { code, reason })
}

pub(crate) fn arb_partition_error() -> impl Strategy<Value = PartitionError> {
    (arb_u32(), any::<u16>(), arb_u64(), arb_u64(), arb_string()).prop_map(
        |(partition, code, first_offset, end_offset, message)| PartitionError {
            partition,
            code,
            first_offset,
            end_offset,
            message,
        },
    )
}

// ---------------------------------------------------------------------------
// admin values

pub(crate) fn arb_opt_string() -> impl Strategy<Value = Option<String>> {
    option::of(arb_string())
}

pub(crate) fn arb_durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Fsync),
        (1u32..).prop_map(|interval_ms| Durability::Interval { interval_ms }),
        Just(Durability::None),
    ]
}

pub(crate) fn arb_topic_config() -> impl Strategy<Value = TopicConfig> {
    (
        arb_u32(),
        arb_durability(),
        option::of(arb_u64()),
        option::of(arb_u64()),
        option::of(arb_u64()),
        option::of(arb_u64()),
        any::<bool>(),
    )
        .prop_map(
            |(
                partitions,
                durability,
                retention_ms,
                retention_bytes,
                segment_bytes,
                segment_ms,
                dedicated_kek,
            )| TopicConfig {
                partitions,
                durability,
                retention_ms,
                retention_bytes,
                segment_bytes,
                segment_ms,
                dedicated_kek,
            },
        )
}

pub(crate) fn arb_partition_info() -> impl Strategy<Value = PartitionInfo> {
    (
        arb_u32(),
        arb_u64(),
        arb_u64(),
        arb_u32(),
        arb_u64(),
        arb_opt_string(),
        prop::sample::select(PartitionState::ALL.to_vec()),
    )
        .prop_map(
            |(partition, log_start_offset, high_watermark, segments, size_bytes, error, state)| {
                PartitionInfo {
                    partition,
                    log_start_offset,
                    high_watermark,
                    segments,
                    size_bytes,
                    error,
                    state,
                }
            },
        )
}

pub(crate) fn arb_topic_info() -> impl Strategy<Value = TopicInfo> {
    (
        arb_string(),
        any::<[u8; 16]>(),
        arb_i64(),
        arb_topic_config(),
        vec(arb_partition_info(), 0..3),
    )
        .prop_map(
            |(name, topic_id, created_at, config, partitions)| TopicInfo {
                name,
                topic_id,
                created_at,
                config,
                partitions,
            },
        )
}

/// Any set of the defined operation bits.
pub(crate) fn arb_operations() -> impl Strategy<Value = Operations> {
    (0..=Operations::VALID).prop_map(Operations)
}

pub(crate) fn arb_acl_rule() -> impl Strategy<Value = AclRule> {
    (
        arb_string(),
        arb_string(),
        arb_operations(),
        prop_oneof![Just(AclEffect::Allow), Just(AclEffect::Deny)],
        option::of(arb_i64()),
    )
        .prop_map(
            |(principal, topic, operations, effect, expires_at)| AclRule {
                principal,
                topic,
                operations,
                effect,
                expires_at,
            },
        )
}

pub(crate) fn arb_key_state() -> impl Strategy<Value = KeyState> {
    prop_oneof![
        Just(KeyState::Active),
        Just(KeyState::DecryptOnly),
        Just(KeyState::Destroyed),
        Just(KeyState::Compromised),
    ]
}

pub(crate) fn arb_key_version() -> impl Strategy<Value = KeyVersionInfo> {
    (
        arb_string(),
        arb_u32(),
        arb_key_state(),
        arb_string(),
        arb_i64(),
        arb_i64(),
        arb_u64(),
    )
        .prop_map(
            |(scope, version, state, provider, created_at, state_changed_at, segments)| {
                KeyVersionInfo {
                    scope,
                    version,
                    state,
                    provider,
                    created_at,
                    state_changed_at,
                    segments,
                }
            },
        )
}

pub(crate) fn arb_rewrap() -> impl Strategy<Value = RewrapProgress> {
    (any::<bool>(), arb_u64(), arb_u64(), arb_u64()).prop_map(|(running, total, done, failed)| {
        RewrapProgress {
            running,
            total,
            done,
            failed,
        }
    })
}

pub(crate) fn arb_access_state() -> impl Strategy<Value = AccessState> {
    prop_oneof![
        Just(AccessState::Pending),
        Just(AccessState::Approved),
        Just(AccessState::Denied),
        Just(AccessState::Expired),
    ]
}

pub(crate) fn arb_access_info() -> impl Strategy<Value = AccessRequestInfo> {
    (
        (
            arb_u64(),
            arb_string(),
            arb_string(),
            arb_operations(),
            arb_string(),
            option::of(arb_bytes(16)),
        ),
        (
            arb_access_state(),
            arb_i64(),
            arb_opt_string(),
            arb_opt_string(),
            option::of(arb_i64()),
            option::of(arb_i64()),
        ),
    )
        .prop_map(
            |(
                (id, requester, topic, operations, reason, public_key),
                (state, created_at, decided_by, decision_reason, decided_at, expires_at),
            )| AccessRequestInfo {
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

pub(crate) fn arb_recipient() -> impl Strategy<Value = RecipientEntry> {
    (arb_string(), arb_bytes(24)).prop_map(|(recipient, entry)| RecipientEntry { recipient, entry })
}

// ---------------------------------------------------------------------------
// admin requests and responses

pub(crate) fn arb_admin_request() -> impl Strategy<Value = AdminRequest> {
    prop_oneof![
        Just(AdminRequest::WhoAmI),
        (arb_string(), arb_topic_config())
            .prop_map(|(name, config)| AdminRequest::CreateTopic { name, config }),
        arb_string().prop_map(|name| AdminRequest::DeleteTopic { name }),
        arb_string().prop_map(|name| AdminRequest::DescribeTopic { name }),
        arb_opt_string().prop_map(|prefix| AdminRequest::ListTopics { prefix }),
        (arb_string(), arb_u32(), any::<bool>()).prop_map(|(topic, partition, accept_loss)| {
            AdminRequest::TopicRecover {
                topic,
                partition,
                accept_loss,
            }
        }),
        arb_acl_rule().prop_map(|rule| AdminRequest::AclGrant { rule }),
        arb_acl_rule().prop_map(|rule| AdminRequest::AclRevoke { rule }),
        (arb_opt_string(), arb_opt_string())
            .prop_map(|(principal, topic)| AdminRequest::AclList { principal, topic }),
        option::of(arb_u64()).prop_map(|producer_id| AdminRequest::InitProducer { producer_id }),
        arb_opt_string().prop_map(|topic| AdminRequest::KeyStatus { topic }),
        arb_opt_string().prop_map(|topic| AdminRequest::KeyRotate { topic }),
        (arb_opt_string(), option::of(arb_u32())).prop_map(|(topic, from_version)| {
            AdminRequest::KeyRewrap {
                topic,
                from_version,
            }
        }),
        (arb_opt_string(), arb_u32())
            .prop_map(|(topic, version)| AdminRequest::KeyRetire { topic, version }),
        (arb_opt_string(), arb_u32(), any::<bool>()).prop_map(|(topic, version, force)| {
            AdminRequest::KeyDestroy {
                topic,
                version,
                force,
            }
        }),
        (arb_opt_string(), arb_u32())
            .prop_map(|(topic, version)| AdminRequest::KeyCompromised { topic, version }),
        Just(AdminRequest::AuditHead),
        (
            arb_string(),
            arb_operations(),
            arb_string(),
            option::of(arb_bytes(16))
        )
            .prop_map(|(topic, operations, reason, public_key)| {
                AdminRequest::AccessRequest {
                    topic,
                    operations,
                    reason,
                    public_key,
                }
            }),
        any::<bool>().prop_map(|pending_only| AdminRequest::AccessList { pending_only }),
        (arb_u64(), option::of(arb_u64()), option::of(arb_bytes(16))).prop_map(
            |(id, ttl_ms, recipient_entry)| AdminRequest::AccessApprove {
                id,
                ttl_ms,
                recipient_entry,
            }
        ),
        (arb_u64(), arb_string()).prop_map(|(id, reason)| AdminRequest::AccessDeny { id, reason }),
        arb_string().prop_map(|topic| AdminRequest::RecipientList { topic }),
        (arb_string(), arb_recipient())
            .prop_map(|(topic, entry)| AdminRequest::RecipientPut { topic, entry }),
        (arb_string(), arb_string())
            .prop_map(|(topic, recipient)| AdminRequest::RecipientRemove { topic, recipient }),
        option::of(vec(arb_string(), 0..4)).prop_map(|topics| AdminRequest::Metadata { topics }),
        Just(AdminRequest::ClusterStatus),
        (arb_u64(), arb_string(), arb_string()).prop_map(|(id, peer_addr, client_addr)| {
            AdminRequest::ClusterAddNode {
                id,
                peer_addr,
                client_addr,
            }
        }),
        arb_u64().prop_map(|id| AdminRequest::ClusterRemoveNode { id }),
    ]
}

pub(crate) fn arb_admin_response() -> impl Strategy<Value = AdminResponse> {
    prop_oneof![
        arb_string().prop_map(|message| AdminResponse::Ok { message }),
        (arb_string(), arb_string(), any::<bool>()).prop_map(
            |(principal, broker_id, superuser)| AdminResponse::WhoAmI {
                principal,
                broker_id,
                superuser,
            }
        ),
        arb_topic_info().prop_map(AdminResponse::Topic),
        vec(arb_topic_info(), 0..3).prop_map(AdminResponse::Topics),
        vec(arb_acl_rule(), 0..4).prop_map(AdminResponse::Acls),
        (arb_u64(), any::<u16>())
            .prop_map(|(producer_id, epoch)| AdminResponse::Producer { producer_id, epoch }),
        (vec(arb_key_version(), 0..3), arb_rewrap())
            .prop_map(|(versions, rewrap)| AdminResponse::KeyStatus { versions, rewrap }),
        (arb_key_version(), arb_u64(), arb_string()).prop_map(|(version, segments, message)| {
            AdminResponse::KeyChanged {
                version,
                segments,
                message,
            }
        }),
        (arb_u64(), any::<[u8; 32]>())
            .prop_map(|(sequence, hash)| AdminResponse::AuditHead { sequence, hash }),
        arb_access_info().prop_map(AdminResponse::Access),
        vec(arb_access_info(), 0..3).prop_map(AdminResponse::AccessList),
        vec(arb_recipient(), 0..4).prop_map(AdminResponse::Recipients),
        arb_cluster_metadata().prop_map(AdminResponse::Metadata),
        arb_cluster_status().prop_map(AdminResponse::ClusterStatus),
    ]
}

// ---------------------------------------------------------------------------
// frames

/// Any frame of any type.
pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        1 => arb_hello().prop_map(Frame::Hello),
        1 => arb_welcome().prop_map(Frame::Welcome),
        1 => arb_u64().prop_map(|nonce| Frame::Ping(Ping { nonce })),
        1 => arb_u64().prop_map(|nonce| Frame::Pong(Pong { nonce })),
        1 => arb_goodbye().prop_map(Frame::Goodbye),
        1 => arb_error_frame().prop_map(Frame::Error),
        1 => arb_produce().prop_map(Frame::Produce),
        1 => arb_produce_ack().prop_map(Frame::ProduceAck),
        1 => arb_subscribe().prop_map(Frame::Subscribe),
        1 => arb_assignment().prop_map(Frame::Assignment),
        1 => arb_u64().prop_map(|bytes| Frame::Credit(Credit { bytes })),
        1 => arb_records().prop_map(Frame::Records),
        1 => (arb_u32(), arb_u64())
            .prop_map(|(partition, offset)| Frame::Commit(Commit { partition, offset })),
        1 => (arb_u32(), arb_u64(), any::<u16>()).prop_map(|(partition, offset, code)| {
            Frame::CommitAck(CommitAck {
                partition,
                offset,
                code,
            })
        }),
        1 => Just(Frame::Unsubscribe(Unsubscribe)),
        1 => arb_subscription_end().prop_map(Frame::SubscriptionEnd),
        1 => arb_partition_error().prop_map(Frame::PartitionError),
        4 => arb_admin_request().prop_map(Frame::Request),
        3 => arb_admin_response().prop_map(Frame::Response),
    ]
}

// ---------------------------------------------------------------------------
// record batches

/// One record to push into a [`BatchBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct RecordSpec {
    /// Milliseconds from the batch's base timestamp.
    pub(crate) delta: i32,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) value: Vec<u8>,
}

/// The inputs of a batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchSpec {
    pub(crate) base_timestamp: i64,
    pub(crate) producer: Option<ProducerStamp>,
    pub(crate) records: Vec<RecordSpec>,
}

impl BatchSpec {
    /// The absolute timestamp of record `i`.
    pub(crate) fn timestamp(&self, i: usize) -> i64 {
        self.base_timestamp + i64::from(self.records[i].delta)
    }
}

pub(crate) fn arb_record_spec() -> impl Strategy<Value = RecordSpec> {
    let headers = prop_oneof![
        3 => vec((arb_string(), vec(any::<u8>(), 0..8)), 0..3),
        1 => vec((arb_string(), vec(any::<u8>(), 0..4)), 10..40),
    ];
    (
        any::<i32>(),
        option::of(vec(any::<u8>(), 0..16)),
        headers,
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(delta, key, headers, value)| RecordSpec {
            delta,
            key,
            headers,
            value,
        })
}

pub(crate) fn arb_producer_stamp() -> impl Strategy<Value = ProducerStamp> {
    // Keep room for the batch's records below u32::MAX.
    (arb_u64(), any::<u16>(), 0u32..=u32::MAX - 64).prop_map(
        |(producer_id, epoch, base_sequence)| ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        },
    )
}

pub(crate) fn arb_batch_spec() -> impl Strategy<Value = BatchSpec> {
    // Base timestamps far enough from the i64 edges that every delta fits.
    let base = prop_oneof![
        Just(0i64),
        Just(1_700_000_000_000i64),
        (i64::MIN / 2)..(i64::MAX / 2),
        Just(i64::MIN - i64::from(i32::MIN)),
        Just(i64::MAX - i64::from(i32::MAX)),
    ];
    (
        base,
        option::of(arb_producer_stamp()),
        vec(arb_record_spec(), 1..6),
    )
        .prop_map(|(base_timestamp, producer, records)| BatchSpec {
            base_timestamp,
            producer,
            records,
        })
}

/// Builds the batch described by `spec`.
pub(crate) fn build_batch(spec: &BatchSpec) -> Bytes {
    let mut b = BatchBuilder::new(spec.base_timestamp);
    if let Some(p) = spec.producer {
        b.producer(p);
    }
    for (i, r) in spec.records.iter().enumerate() {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        b.push(spec.timestamp(i), r.key.as_deref(), &headers, &r.value)
            .expect("record spec within limits");
    }
    b.finish().expect("batch spec within limits")
}

// ---------------------------------------------------------------------------
// raw bytes

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: an
/// implementation independent of the one the crate uses.
pub(crate) fn crc32c_reference(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites the CRC field (bytes 34..38) of a batch to match its contents,
/// so a test can reach the checks that come after the CRC.
pub(crate) fn fix_crc(batch: &mut [u8]) {
    let mut covered = batch[..34].to_vec();
    covered.extend_from_slice(&batch[38..]);
    let crc = crc32c_reference(&covered);
    batch[34..38].copy_from_slice(&crc.to_be_bytes());
}

/// Rewrites the `body_length` field (bytes 30..34) of a batch to match its
/// length.
pub(crate) fn fix_body_length(batch: &mut [u8]) {
    let len = u32::try_from(batch.len() - 38).expect("test batch under 4 GiB");
    batch[30..34].copy_from_slice(&len.to_be_bytes());
}

/// A frame of type `code` around `body`, with its length prefix.
pub(crate) fn raw_frame(code: u16, body: &[u8]) -> Bytes {
    let len = u32::try_from(body.len() + 2).expect("test frame under 4 GiB");
    let mut out = Vec::with_capacity(body.len() + 6);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}
