//! Golden byte layouts: one fixed value of every frame type and of the
//! record batch, with the exact bytes docs/PROTOCOL.md says it encodes to.
//!
//! The expected hex is written by hand from the specification, field by
//! field (`|` separates fields, spaces separate sub-fields), so a change to
//! the wire format fails here even when encoder and decoder change together.

mod common;

use bytes::Bytes;
use strongbox_protocol::batch::{BatchBuilder, ProducerStamp, RecordBatch};
use strongbox_protocol::frame::{
    DEFAULT_MAX_FRAME_SIZE, Decoded, Frame, FrameDecoder, FrameType, decode_frame,
};
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

use common::unhex;

/// Checks that `frame` encodes to exactly `hex` and that `hex` decodes back
/// to `frame`, both through `decode_frame` and through `FrameDecoder`.
fn check(name: &str, frame: &Frame, hex: &str) {
    let expected = unhex(hex);
    let wire = frame
        .to_bytes(DEFAULT_MAX_FRAME_SIZE)
        .unwrap_or_else(|e| panic!("{name}: does not encode: {e}"));
    assert_eq!(
        hex::encode(&wire),
        hex::encode(&expected),
        "{name}: encoding differs from the golden bytes"
    );
    assert_eq!(
        decode_frame(&Bytes::from(expected.clone()), DEFAULT_MAX_FRAME_SIZE),
        Ok(Decoded::Frame(frame.clone(), expected.len())),
        "{name}: golden bytes do not decode to the value"
    );
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.extend(&expected);
    assert_eq!(decoder.next_frame(), Ok(Some(frame.clone())), "{name}");
    assert_eq!(decoder.buffered(), 0, "{name}");
}

/// Defines one `#[test]` per golden case and `all_cases()` listing them.
macro_rules! golden_cases {
    ($( $test:ident: $frame:expr => $hex:expr; )*) => {
        fn all_cases() -> Vec<(&'static str, Frame, &'static str)> {
            vec![$( (stringify!($test), $frame, $hex), )*]
        }
        $(
            #[test]
            fn $test() {
                check(stringify!($test), &$frame, $hex);
            }
        )*
    };
}

// Shared values of the admin cases.

fn alice_rule() -> AclRule {
    AclRule {
        principal: "alice".into(),
        topic: "orders.*".into(),
        operations: Operations::PUBLISH.union(Operations::SUBSCRIBE),
        effect: AclEffect::Allow,
        expires_at: None,
    }
}

fn key_version(version: u32, state: KeyState, segments: u64) -> KeyVersionInfo {
    KeyVersionInfo {
        scope: "broker".into(),
        version,
        state,
        provider: "file".into(),
        created_at: 1000,
        state_changed_at: 2000,
        segments,
    }
}

fn access_info() -> AccessRequestInfo {
    AccessRequestInfo {
        id: 5,
        requester: "bob".into(),
        topic: "t".into(),
        operations: Operations::SUBSCRIBE,
        reason: "why".into(),
        public_key: None,
        state: AccessState::Approved,
        created_at: 1000,
        decided_by: Some("alice".into()),
        decision_reason: None,
        decided_at: Some(2000),
        expires_at: None,
    }
}

/// `access_info()` encoded: 52 bytes.
const ACCESS_INFO_HEX: &str = "0000000000000005 | 0003 626f62 | 0001 74 | 0002 | 0003 776879 | 00 \
     | 01 | 00000000000003e8 | 01 0005 616c696365 | 00 | 01 00000000000007d0 | 00";

fn config_minimal(partitions: u32, durability: Durability) -> TopicConfig {
    TopicConfig {
        partitions,
        durability,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    }
}

golden_cases! {
    // ---- control stream ----------------------------------------------------
    hello: Frame::Hello(Hello {
        versions: vec![1],
        client_name: "cli".into(),
        max_frame_size: 4 * 1024 * 1024,
        features: 0,
    }) => "00000019 | 0001 | 00000001 0001 | 0003 636c69 | 00400000 | 0000000000000000";

    welcome: Frame::Welcome(Welcome {
        version: 1,
        broker_id: "b1".into(),
        principal: "alice".into(),
        max_frame_size: 4 * 1024 * 1024,
        max_batch_size: 1024 * 1024,
        max_in_flight: 16,
        keepalive_ms: 10_000,
        features: 0,
    }) => "00000027 | 0002 | 0001 | 0002 6231 | 0005 616c696365 | 00400000 | 00100000 \
           | 00000010 | 00002710 | 0000000000000000";

    ping: Frame::Ping(Ping { nonce: 0x0102_0304_0506_0708 })
        => "0000000a | 0003 | 0102030405060708";

    pong: Frame::Pong(Pong { nonce: 0x0102_0304_0506_0708 })
        => "0000000a | 0004 | 0102030405060708";

    goodbye: Frame::Goodbye(Goodbye { code: 0, reason: "bye".into() })
        => "00000009 | 0005 | 0000 | 0003 627965";

    error: Frame::Error(ErrorFrame {
        correlation_id: 7,
        code: 32,
        message: "no".into(),
        leader_hint: None,
    }) => "00000010 | 0006 | 0000000000000007 | 0020 | 0002 6e6f";

    error_not_leader: Frame::Error(ErrorFrame {
        correlation_id: 0,
        code: 128,
        message: "no".into(),
        leader_hint: Some(LeaderHint {
            leader: Some(NodeAddress { id: 2, client_addr: "h:1".into() }),
        }),
    }) => "0000001e | 0006 | 0000000000000000 | 0080 | 0002 6e6f \
           | 01 0000000000000002 0003 683a31";

    error_not_leader_unknown: Frame::Error(ErrorFrame {
        correlation_id: 0,
        code: 128,
        message: "no".into(),
        leader_hint: Some(LeaderHint { leader: None }),
    }) => "00000011 | 0006 | 0000000000000000 | 0080 | 0002 6e6f | 00";

    // ---- producer stream ---------------------------------------------------
    produce: Frame::Produce(Produce {
        correlation_id: 1,
        topic: "t".into(),
        partition: 2,
        batch: Bytes::from_static(&[0xaa, 0xbb]),
    }) => "00000017 | 0010 | 0000000000000001 | 0001 74 | 00000002 | 00000002 aabb";

    produce_ack: Frame::ProduceAck(ProduceAck {
        correlation_id: 1,
        partition: 2,
        base_offset: 100,
        duplicate: true,
    }) => "00000017 | 0011 | 0000000000000001 | 00000002 | 0000000000000064 | 01";

    // ---- subscription stream -----------------------------------------------
    subscribe_group_timestamp: Frame::Subscribe(Subscribe {
        topic: "t".into(),
        target: SubscriptionTarget::Group("g".into()),
        start: StartPosition::Timestamp(1_700_000_000_000),
        credit: 65_536,
        skip_damaged: false,
    }) => "0000001b | 0020 | 0001 74 | 01 0001 67 | 03 0000018bcfe56800 | 0000000000010000 | 00";

    subscribe_partition_offset: Frame::Subscribe(Subscribe {
        topic: "t".into(),
        target: SubscriptionTarget::Partition(3),
        start: StartPosition::Offset(5),
        credit: 1024,
        skip_damaged: false,
    }) => "0000001c | 0020 | 0001 74 | 00 00000003 | 02 0000000000000005 | 0000000000000400 | 00";

    subscribe_partition_earliest: Frame::Subscribe(Subscribe {
        topic: "t".into(),
        target: SubscriptionTarget::Partition(0),
        start: StartPosition::Earliest,
        credit: 0,
        skip_damaged: false,
    }) => "0000001c | 0020 | 0001 74 | 00 00000000 | 00 0000000000000000 | 0000000000000000 | 00";

    subscribe_partition_latest: Frame::Subscribe(Subscribe {
        topic: "t".into(),
        target: SubscriptionTarget::Partition(0),
        start: StartPosition::Latest,
        credit: 0,
        skip_damaged: false,
    }) => "0000001c | 0020 | 0001 74 | 00 00000000 | 01 0000000000000000 | 0000000000000000 | 00";

    subscribe_skip_damaged: Frame::Subscribe(Subscribe {
        topic: "t".into(),
        target: SubscriptionTarget::Partition(1),
        start: StartPosition::Earliest,
        credit: 1024,
        skip_damaged: true,
    }) => "0000001c | 0020 | 0001 74 | 00 00000001 | 00 0000000000000000 | 0000000000000400 | 01";

    assignment: Frame::Assignment(Assignment {
        generation: 2,
        partitions: vec![
            AssignedPartition { partition: 0, next_offset: 10 },
            AssignedPartition { partition: 1, next_offset: 20 },
        ],
    }) => "00000022 | 0021 | 00000002 | 00000002 | 00000000 000000000000000a \
           | 00000001 0000000000000014";

    credit: Frame::Credit(Credit { bytes: 1024 * 1024 })
        => "0000000a | 0022 | 0000000000100000";

    records: Frame::Records(golden_records())
        => "00000021 | 0023 | 00000001 | 000000000000000c | 00000001 \
            | 000000000000000a 00000003 010203";

    commit: Frame::Commit(Commit { partition: 1, offset: 11 })
        => "0000000e | 0024 | 00000001 | 000000000000000b";

    commit_ack: Frame::CommitAck(CommitAck { partition: 1, offset: 11, code: 0 })
        => "00000010 | 0025 | 00000001 | 000000000000000b | 0000";

    commit_ack_refused: Frame::CommitAck(CommitAck { partition: 1, offset: 11, code: 65 })
        => "00000010 | 0025 | 00000001 | 000000000000000b | 0041";

    unsubscribe: Frame::Unsubscribe(Unsubscribe) => "00000002 | 0026";

    subscription_end: Frame::SubscriptionEnd(SubscriptionEnd {
        code: 112,
        reason: "bye".into(),
    }) => "00000009 | 0027 | 0070 | 0003 627965";

    partition_error: Frame::PartitionError(PartitionError {
        partition: 2,
        code: 86,
        first_offset: 350,
        end_offset: 400,
        message: "bad".into(),
    }) => "0000001d | 0028 | 00000002 | 0056 | 000000000000015e | 0000000000000190 | 0003 626164";

    partition_error_end_unknown: Frame::PartitionError(PartitionError {
        partition: 0,
        code: 86,
        first_offset: 0,
        end_offset: PartitionError::END_UNKNOWN,
        message: String::new(),
    }) => "0000001a | 0028 | 00000000 | 0056 | 0000000000000000 | ffffffffffffffff | 0000";

    // ---- admin requests ----------------------------------------------------
    who_am_i: Frame::Request(AdminRequest::WhoAmI) => "00000002 | 0100";

    create_topic: Frame::Request(AdminRequest::CreateTopic {
        name: "orders".into(),
        config: TopicConfig {
            partitions: 3,
            durability: Durability::Interval { interval_ms: 50 },
            retention_ms: Some(86_400_000),
            retention_bytes: None,
            segment_bytes: Some(1024 * 1024),
            segment_ms: None,
            dedicated_kek: true,
        },
    }) => "00000028 | 0101 | 0006 6f7264657273 | 00000003 | 01 00000032 | 01 0000000005265c00 \
           | 00 | 01 0000000000100000 | 00 | 01";

    create_topic_fsync: Frame::Request(AdminRequest::CreateTopic {
        name: "t".into(),
        config: config_minimal(1, Durability::Fsync),
    }) => "00000013 | 0101 | 0001 74 | 00000001 | 00 00000000 | 00 | 00 | 00 | 00 | 00";

    delete_topic: Frame::Request(AdminRequest::DeleteTopic { name: "orders".into() })
        => "0000000a | 0102 | 0006 6f7264657273";

    describe_topic: Frame::Request(AdminRequest::DescribeTopic { name: "orders".into() })
        => "0000000a | 0103 | 0006 6f7264657273";

    list_topics: Frame::Request(AdminRequest::ListTopics { prefix: Some("ord".into()) })
        => "00000008 | 0104 | 01 0003 6f7264";

    topic_recover: Frame::Request(AdminRequest::TopicRecover {
        topic: "orders".into(),
        partition: 2,
        accept_loss: true,
    }) => "0000000f | 0105 | 0006 6f7264657273 | 00000002 | 01";

    acl_grant: Frame::Request(AdminRequest::AclGrant { rule: alice_rule() })
        => "00000017 | 0110 | 0005 616c696365 | 0008 6f72646572732e2a | 0003 | 00 | 00";

    acl_revoke: Frame::Request(AdminRequest::AclRevoke {
        rule: AclRule {
            principal: "bob".into(),
            topic: "*".into(),
            operations: Operations::DESCRIBE,
            effect: AclEffect::Deny,
            expires_at: Some(1000),
        },
    }) => "00000016 | 0111 | 0003 626f62 | 0001 2a | 0004 | 01 | 01 00000000000003e8";

    acl_list: Frame::Request(AdminRequest::AclList {
        principal: Some("alice".into()),
        topic: None,
    }) => "0000000b | 0112 | 01 0005 616c696365 | 00";

    init_producer: Frame::Request(AdminRequest::InitProducer { producer_id: Some(42) })
        => "0000000b | 0120 | 01 000000000000002a";

    key_status: Frame::Request(AdminRequest::KeyStatus { topic: None }) => "00000003 | 0130 | 00";

    key_rotate: Frame::Request(AdminRequest::KeyRotate { topic: Some("t".into()) })
        => "00000006 | 0131 | 01 0001 74";

    key_rewrap: Frame::Request(AdminRequest::KeyRewrap { topic: None, from_version: Some(2) })
        => "00000008 | 0132 | 00 | 01 00000002";

    key_retire: Frame::Request(AdminRequest::KeyRetire { topic: None, version: 1 })
        => "00000007 | 0133 | 00 | 00000001";

    key_destroy: Frame::Request(AdminRequest::KeyDestroy {
        topic: Some("t".into()),
        version: 1,
        force: false,
    }) => "0000000b | 0134 | 01 0001 74 | 00000001 | 00";

    key_compromised: Frame::Request(AdminRequest::KeyCompromised { topic: None, version: 3 })
        => "00000007 | 0135 | 00 | 00000003";

    audit_head: Frame::Request(AdminRequest::AuditHead) => "00000002 | 0140";

    access_request: Frame::Request(AdminRequest::AccessRequest {
        topic: "t".into(),
        operations: Operations::SUBSCRIBE,
        reason: "why".into(),
        public_key: Some(Bytes::from_static(&[1, 2])),
    }) => "00000013 | 0150 | 0001 74 | 0002 | 0003 776879 | 01 00000002 0102";

    access_list: Frame::Request(AdminRequest::AccessList { pending_only: true })
        => "00000003 | 0151 | 01";

    access_approve: Frame::Request(AdminRequest::AccessApprove {
        id: 5,
        ttl_ms: Some(60_000),
        recipient_entry: None,
    }) => "00000014 | 0152 | 0000000000000005 | 01 000000000000ea60 | 00";

    access_deny: Frame::Request(AdminRequest::AccessDeny { id: 5, reason: "no".into() })
        => "0000000e | 0153 | 0000000000000005 | 0002 6e6f";

    recipient_list: Frame::Request(AdminRequest::RecipientList { topic: "t".into() })
        => "00000005 | 0160 | 0001 74";

    recipient_put: Frame::Request(AdminRequest::RecipientPut {
        topic: "t".into(),
        entry: RecipientEntry { recipient: "bob".into(), entry: Bytes::from_static(&[0xee]) },
    }) => "0000000f | 0161 | 0001 74 | 0003 626f62 00000001 ee";

    recipient_remove: Frame::Request(AdminRequest::RecipientRemove {
        topic: "t".into(),
        recipient: "bob".into(),
    }) => "0000000a | 0162 | 0001 74 | 0003 626f62";

    metadata: Frame::Request(AdminRequest::Metadata { topics: Some(vec!["t".into()]) })
        => "0000000a | 0170 | 01 00000001 0001 74";

    metadata_all_topics: Frame::Request(AdminRequest::Metadata { topics: None })
        => "00000003 | 0170 | 00";

    cluster_status: Frame::Request(AdminRequest::ClusterStatus) => "00000002 | 0171";

    cluster_add_node: Frame::Request(AdminRequest::ClusterAddNode {
        id: 4,
        peer_addr: "h:2".into(),
        client_addr: "h:1".into(),
    }) => "00000014 | 0172 | 0000000000000004 | 0003 683a32 | 0003 683a31";

    cluster_remove_node: Frame::Request(AdminRequest::ClusterRemoveNode { id: 4 })
        => "0000000a | 0173 | 0000000000000004";

    // ---- admin responses ---------------------------------------------------
    admin_ok: Frame::Response(AdminResponse::Ok { message: "ok".into() })
        => "00000006 | 0200 | 0002 6f6b";

    who_am_i_result: Frame::Response(AdminResponse::WhoAmI {
        principal: "alice".into(),
        broker_id: "b1".into(),
        superuser: false,
    }) => "0000000e | 0201 | 0005 616c696365 | 0002 6231 | 00";

    topic_result: Frame::Response(AdminResponse::Topic(TopicInfo {
        name: "t".into(),
        topic_id: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        created_at: 1000,
        config: config_minimal(1, Durability::Fsync),
        partitions: vec![PartitionInfo {
            partition: 0,
            log_start_offset: 0,
            high_watermark: 5,
            segments: 1,
            size_bytes: 4096,
            error: None,
            state: PartitionState::Ok,
        }],
    })) => "00000051 | 0202 | 0001 74 | 000102030405060708090a0b0c0d0e0f | 00000000000003e8 \
            | 00000001 00 00000000 00 00 00 00 00 \
            | 00000001 | 00000000 0000000000000000 0000000000000005 00000001 \
              0000000000001000 00 00";

    topic_result_read_only: Frame::Response(AdminResponse::Topic(TopicInfo {
        name: "t".into(),
        topic_id: [0; 16],
        created_at: 0,
        config: config_minimal(1, Durability::Fsync),
        partitions: vec![PartitionInfo {
            partition: 1,
            log_start_offset: 0,
            high_watermark: 7,
            segments: 2,
            size_bytes: 0,
            error: Some("cut".into()),
            state: PartitionState::ReadOnly,
        }],
    })) => "00000056 | 0202 | 0001 74 | 00000000000000000000000000000000 | 0000000000000000 \
            | 00000001 00 00000000 00 00 00 00 00 \
            | 00000001 | 00000001 0000000000000000 0000000000000007 00000002 \
              0000000000000000 01 0003 637574 02";

    topic_list_result: Frame::Response(AdminResponse::Topics(vec![TopicInfo {
        name: "t".into(),
        topic_id: [0; 16],
        created_at: 0,
        config: config_minimal(2, Durability::None),
        partitions: vec![],
    }])) => "00000033 | 0203 | 00000001 | 0001 74 | 00000000000000000000000000000000 \
             | 0000000000000000 | 00000002 02 00000000 00 00 00 00 00 | 00000000";

    acl_list_result: Frame::Response(AdminResponse::Acls(vec![AclRule {
        principal: "alice".into(),
        topic: "t".into(),
        operations: Operations::PUBLISH,
        effect: AclEffect::Allow,
        expires_at: None,
    }])) => "00000014 | 0204 | 00000001 | 0005 616c696365 | 0001 74 | 0001 | 00 | 00";

    producer_result: Frame::Response(AdminResponse::Producer { producer_id: 42, epoch: 3 })
        => "0000000c | 0205 | 000000000000002a | 0003";

    key_status_result: Frame::Response(AdminResponse::KeyStatus {
        versions: vec![key_version(1, KeyState::Active, 7)],
        rewrap: RewrapProgress { running: true, total: 10, done: 4, failed: 0 },
    }) => "0000004a | 0206 | 00000001 | 0006 62726f6b6572 00000001 00 0004 66696c65 \
           00000000000003e8 00000000000007d0 0000000000000007 \
           | 01 000000000000000a 0000000000000004 0000000000000000";

    key_changed_result: Frame::Response(AdminResponse::KeyChanged {
        version: key_version(2, KeyState::DecryptOnly, 0),
        segments: 5,
        message: "ok".into(),
    }) => "00000039 | 0207 | 0006 62726f6b6572 00000002 01 0004 66696c65 \
           00000000000003e8 00000000000007d0 0000000000000000 \
           | 0000000000000005 | 0002 6f6b";

    audit_head_result: Frame::Response(AdminResponse::AuditHead { sequence: 9, hash: [0x11; 32] })
        => "0000002a | 0208 | 0000000000000009 \
            | 1111111111111111111111111111111111111111111111111111111111111111";

    access_result: Frame::Response(AdminResponse::Access(access_info()))
        => const_format_access_result();

    access_list_result: Frame::Response(AdminResponse::AccessList(vec![access_info()]))
        => const_format_access_list_result();

    recipient_list_result: Frame::Response(AdminResponse::Recipients(vec![
        RecipientEntry { recipient: "bob".into(), entry: Bytes::from_static(&[0xee]) },
        RecipientEntry { recipient: "carol".into(), entry: Bytes::new() },
    ])) => "0000001b | 020b | 00000002 | 0003 626f62 00000001 ee | 0005 6361726f6c 00000000";

    metadata_result: Frame::Response(AdminResponse::Metadata(ClusterMetadata {
        nodes: vec![NodeAddress { id: 1, client_addr: "h:1".into() }],
        topics: vec![TopicPlacement {
            name: "t".into(),
            partitions: vec![PartitionPlacement { partition: 0, leader: Some(1), replicas: vec![1] }],
        }],
    })) => "00000037 | 0210 | 00000001 | 0000000000000001 0003 683a31 \
            | 00000001 | 0001 74 | 00000001 \
            | 00000000 01 0000000000000001 00000001 0000000000000001";

    cluster_status_result: Frame::Response(AdminResponse::ClusterStatus(ClusterStatusInfo {
        node_id: 1,
        leader: Some(1),
        term: 1,
        nodes: vec![NodeStatus {
            id: 1,
            peer_addr: "p:2".into(),
            client_addr: "h:1".into(),
            role: NodeRole::Leader,
            term: 1,
            last_contact_ms: Some(0),
            lag: None,
        }],
    })) => "00000044 | 0211 | 0000000000000001 | 01 0000000000000001 | 0000000000000001 \
            | 00000001 | 0000000000000001 0003 703a32 0003 683a31 01 0000000000000001 \
              01 0000000000000000 00";
}

/// `AccessResult`: length 0x36 = 2 + 52.
fn const_format_access_result() -> &'static str {
    leak(format!("00000036 | 0209 | {ACCESS_INFO_HEX}"))
}

/// `AccessListResult` with one entry: length 0x3a = 2 + 4 + 52.
fn const_format_access_list_result() -> &'static str {
    leak(format!("0000003a | 020a | 00000001 | {ACCESS_INFO_HEX}"))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn golden_records() -> Records {
    Records {
        partition: 1,
        high_watermark: 12,
        batches: vec![OffsetBatch {
            base_offset: 10,
            batch: Bytes::from_static(&[1, 2, 3]),
        }],
    }
}

#[test]
fn every_frame_type_has_a_golden_case() {
    let covered: Vec<FrameType> = all_cases().iter().map(|(_, f, _)| f.frame_type()).collect();
    let missing: Vec<FrameType> = FrameType::ALL
        .iter()
        .copied()
        .filter(|ty| !covered.contains(ty))
        .collect();
    assert!(
        missing.is_empty(),
        "frame types without a golden case: {missing:?}"
    );
}

#[test]
fn golden_case_codes_match_their_frame_type() {
    // The type field of every golden case is the code of the frame's type.
    for (name, frame, hex) in all_cases() {
        let bytes = unhex(hex);
        let code = u16::from_be_bytes([bytes[4], bytes[5]]);
        assert_eq!(code, frame.frame_type().as_u16(), "{name}");
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(len + 4, bytes.len(), "{name}: length prefix");
    }
}

#[test]
fn records_credit_cost_is_the_whole_encoded_frame() {
    let records = golden_records();
    // 4 (length) + 0x21 (type and body).
    assert_eq!(records.credit_cost(), 37);
    let wire = common::encode(&Frame::Records(records.clone()));
    assert_eq!(records.credit_cost(), wire.len() as u64);
}

// ---- record batch ------------------------------------------------------------

/// The golden batch: an idempotent batch of two records.
fn golden_batch() -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    b.producer(ProducerStamp {
        producer_id: 7,
        epoch: 1,
        base_sequence: 0,
    });
    b.push(1_700_000_000_000, Some(b"k"), &[("h", b"v")], b"hi")
        .unwrap();
    b.push(1_700_000_000_005, None, &[], b"").unwrap();
    b.finish().unwrap()
}

/// The golden batch, field by field. The CRC-32C was computed independently
/// of this crate over bytes 0..34 followed by the body.
const GOLDEN_BATCH_HEX: &str = "\
    5342 | 01 | 08 | 0000000000000007 | 0001 | 00000000 | 0000018bcfe56800 | 00000002 \
    | 0000002f | 52549593 \
    | 00000019 00000000 00000001 6b 0001 0001 68 00000001 76 00000002 6869 \
    | 0000000e 00000005 ffffffff 0000 00000000";

#[test]
fn golden_record_batch_layout() {
    let batch = golden_batch();
    assert_eq!(hex::encode(&batch), hex::encode(unhex(GOLDEN_BATCH_HEX)));
}

#[test]
fn golden_record_batch_parses() {
    let parsed = RecordBatch::parse(Bytes::from(unhex(GOLDEN_BATCH_HEX))).unwrap();
    let header = parsed.header();
    assert_eq!(
        header.producer,
        Some(ProducerStamp {
            producer_id: 7,
            epoch: 1,
            base_sequence: 0
        })
    );
    assert_eq!(header.base_timestamp, 1_700_000_000_000);
    assert_eq!(header.record_count, 2);
    assert_eq!(header.body_length, 47);
    assert_eq!(header.crc, 0x5254_9593);
    assert_eq!(header.last_sequence(), Some(1));
    assert_eq!(parsed.max_timestamp(), 1_700_000_000_005);
    let records: Vec<_> = parsed.records().collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].index, 0);
    assert_eq!(records[0].timestamp, 1_700_000_000_000);
    assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
    let headers: Vec<_> = records[0].headers.iter().collect();
    assert_eq!(headers, vec![("h".to_string(), Bytes::from_static(b"v"))]);
    assert_eq!(&records[0].value[..], b"hi");
    assert_eq!(records[1].index, 1);
    assert_eq!(records[1].timestamp, 1_700_000_000_005);
    assert_eq!(records[1].key, None);
    assert!(records[1].headers.is_empty());
    assert!(records[1].value.is_empty());
}

#[test]
fn golden_plain_batch_has_zero_producer_fields() {
    let mut b = BatchBuilder::new(-1);
    b.push(-2, None, &[], &[0x00]).unwrap();
    let batch = b.finish().unwrap();
    // Not idempotent: flags 0, producer id, epoch and sequence all zero.
    let expected_head = unhex(
        "5342 | 01 | 00 | 0000000000000000 | 0000 | 00000000 | ffffffffffffffff | 00000001 \
         | 00000013",
    );
    assert_eq!(hex::encode(&batch[..34]), hex::encode(&expected_head));
    assert_eq!(
        hex::encode(&batch[38..]),
        hex::encode(unhex("0000000f | ffffffff | ffffffff | 0000 | 00000001 00"))
    );
    let parsed = RecordBatch::parse(batch).unwrap();
    assert_eq!(parsed.header().producer, None);
    assert_eq!(parsed.records().next().unwrap().timestamp, -2);
}

/// The worked `Produce` example of docs/PROTOCOL.md: the golden batch sent
/// to partition 0 of `orders`.
#[test]
fn golden_produce_with_batch_matches_the_spec_example() {
    let frame = Frame::Produce(Produce {
        correlation_id: 1,
        topic: "orders".into(),
        partition: 0,
        batch: golden_batch(),
    });
    let hex = format!(
        "0000006f | 0010 | 0000000000000001 | 0006 6f7264657273 | 00000000 | 00000055 \
         | {GOLDEN_BATCH_HEX}"
    );
    check("produce_with_batch", &frame, &hex);
}

// ---- worked examples of docs/PROTOCOL.md -----------------------------------

fn spec() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The hex of each example block after `<!-- example: NAME -->`, with the
/// `#` commentary removed.
fn examples(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- example: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```text"), "{name}");
        let hex: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .map(|l| l.split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ");
        out.push((name.to_string(), unhex(&hex)));
    }
    out
}

/// The frame each worked example describes, built from its values (not
/// from its bytes).
fn example_frame(name: &str) -> Frame {
    match name {
        "ping" => Frame::Ping(Ping {
            nonce: 0x0102_0304_0506_0708,
        }),
        "hello" => Frame::Hello(Hello {
            versions: vec![1],
            client_name: "cli".into(),
            max_frame_size: 4 * 1024 * 1024,
            features: 0,
        }),
        "produce" => Frame::Produce(Produce {
            correlation_id: 1,
            topic: "orders".into(),
            partition: 0,
            batch: golden_batch(),
        }),
        "produce_ack" => Frame::ProduceAck(ProduceAck {
            correlation_id: 1,
            partition: 0,
            base_offset: 100,
            duplicate: false,
        }),
        "subscribe" => Frame::Subscribe(Subscribe {
            topic: "orders".into(),
            target: SubscriptionTarget::Partition(0),
            start: StartPosition::Offset(1),
            credit: 65_536,
            skip_damaged: false,
        }),
        "assignment" => Frame::Assignment(Assignment {
            generation: 0,
            partitions: vec![AssignedPartition {
                partition: 0,
                next_offset: 1,
            }],
        }),
        "records" => Frame::Records(Records {
            partition: 0,
            high_watermark: 2,
            batches: vec![OffsetBatch {
                base_offset: 0,
                batch: golden_batch(),
            }],
        }),
        "error" => Frame::Error(ErrorFrame {
            correlation_id: 0,
            code: strongbox_protocol::ErrorCode::UnexpectedFrame.as_u16(),
            message: "second Subscribe".into(),
            leader_hint: None,
        }),
        other => panic!("docs/PROTOCOL.md has an example {other:?} that no test checks"),
    }
}

#[test]
fn worked_examples_are_exactly_the_frames_they_describe() {
    let found = examples(&spec());
    let names: std::collections::BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    let expected: std::collections::BTreeSet<&str> = [
        "assignment",
        "error",
        "hello",
        "ping",
        "produce",
        "produce_ack",
        "records",
        "subscribe",
    ]
    .into();
    assert_eq!(names, expected, "worked examples in docs/PROTOCOL.md");
    for (name, bytes) in found {
        let frame = example_frame(&name);
        check(&format!("example {name}"), &frame, &hex::encode(&bytes));
    }
}

/// The worked example "Subscribing from inside a batch": the three frames
/// pass the client's session rules, and of the batch's two records only
/// the one at or past `next_offset` is for the application.
#[test]
fn the_inside_a_batch_example_delivers_only_offset_1() {
    use strongbox_protocol::session::subscribe::{SubscriberEvent, SubscriberSession};
    let doc = spec();
    let frame = |name: &str| {
        let bytes = examples(&doc)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no example {name}"))
            .1;
        match decode_frame(&Bytes::from(bytes), DEFAULT_MAX_FRAME_SIZE) {
            Ok(Decoded::Frame(frame, _)) => frame,
            other => panic!("{name}: {other:?}"),
        }
    };
    let Frame::Subscribe(subscribe) = frame("subscribe") else {
        panic!("not a Subscribe")
    };
    let (mut session, _) = SubscriberSession::new(subscribe);
    let SubscriberEvent::Assigned(assignment) = session
        .handle_frame(frame("assignment"))
        .expect("assignment")
    else {
        panic!("no assignment")
    };
    let next_offset = assignment.partitions[0].next_offset;
    let SubscriberEvent::Records(records) =
        session.handle_frame(frame("records")).expect("records")
    else {
        panic!("no records")
    };
    assert_eq!(records.credit_cost(), 119, "the cost the example states");
    let mut delivered = Vec::new();
    for b in &records.batches {
        let batch = RecordBatch::parse(b.batch.clone()).expect("valid batch");
        assert!(
            b.base_offset < next_offset,
            "the batch starts before next_offset"
        );
        for record in batch.records() {
            let offset = b.base_offset + u64::from(record.index);
            if offset >= next_offset {
                delivered.push((
                    offset,
                    record.key.clone(),
                    record.value.clone(),
                    record.timestamp,
                ));
            }
        }
    }
    assert_eq!(
        delivered,
        vec![(1, None, Bytes::new(), 1_700_000_000_005)],
        "only offset 1 is delivered"
    );
}

/// `RECORDS_FRAMING` is what a `Records` frame with one batch adds to the
/// batch, as the spec's frame-size rule uses it.
#[test]
fn records_framing_is_the_overhead_of_a_one_batch_frame() {
    use strongbox_protocol::frames::subscribe::{RECORDS_FRAMING, RECORDS_PER_BATCH_FRAMING};
    for len in [0usize, 1, 85, 4096] {
        let records = Records {
            partition: 1,
            high_watermark: 2,
            batches: vec![OffsetBatch {
                base_offset: 0,
                batch: Bytes::from(vec![0u8; len]),
            }],
        };
        let wire = Frame::Records(records.clone())
            .to_bytes(DEFAULT_MAX_FRAME_SIZE)
            .unwrap();
        let length = wire.len() - 4;
        assert_eq!(length, len + RECORDS_FRAMING as usize);
        assert_eq!(records.frame_length(), length as u64);
    }
    let two = Records {
        partition: 1,
        high_watermark: 2,
        batches: vec![
            OffsetBatch {
                base_offset: 0,
                batch: Bytes::from(vec![0u8; 10]),
            },
            OffsetBatch {
                base_offset: 5,
                batch: Bytes::from(vec![0u8; 20]),
            },
        ],
    };
    assert_eq!(
        two.frame_length(),
        u64::from(RECORDS_FRAMING + RECORDS_PER_BATCH_FRAMING) + 30
    );
}

/// `Produce::frame_length` and `Produce::max_batch_len`, which producers
/// size their batches with, match the frame the codec writes: a batch of
/// `max_batch_len` fills the frame limit exactly, one byte more is refused.
#[test]
fn produce_framing_is_the_overhead_of_a_produce_frame() {
    use strongbox_protocol::EncodeError;
    use strongbox_protocol::frames::produce::PRODUCE_FRAMING;
    let produce = |topic: &str, len: usize| {
        Frame::Produce(Produce {
            correlation_id: 7,
            topic: topic.into(),
            partition: 3,
            batch: Bytes::from(vec![0u8; len]),
        })
    };
    for (topic, len) in [
        ("", 0usize),
        ("orders", 1),
        ("orders", 85),
        (&"t".repeat(249), 4096),
    ] {
        let wire = produce(topic, len)
            .to_bytes(DEFAULT_MAX_FRAME_SIZE)
            .unwrap();
        let length = wire.len() - 4;
        assert_eq!(length, PRODUCE_FRAMING as usize + topic.len() + len);
        assert_eq!(Produce::frame_length(topic.len(), len), length as u64);
    }
    let max_frame_size = 65_536;
    let room = Produce::max_batch_len(max_frame_size, "orders".len());
    let full = produce("orders", room).to_bytes(max_frame_size).unwrap();
    assert_eq!(full.len() - 4, max_frame_size as usize);
    assert!(matches!(
        produce("orders", room + 1).to_bytes(max_frame_size),
        Err(EncodeError::FrameTooLarge { .. })
    ));
    assert_eq!(Produce::max_batch_len(10, "orders".len()), 0);
}
