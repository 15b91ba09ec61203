//! Property tests of the metadata store's value encodings: whatever is
//! stored reads back equal.

use bytes::Bytes;
use proptest::prelude::*;
use strongbox_protocol::model::{
    AccessRequestInfo, AccessState, AclEffect, AclRule, Durability, KeyState, Operations,
    TopicConfig,
};
use strongbox_storage::keys::{KekId, KekScope, KekVersion};
use strongbox_storage::meta::{AclEntry, MetaStore, TopicEntry};

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Fsync),
        Just(Durability::None),
        (1..=u32::MAX).prop_map(|interval_ms| Durability::Interval { interval_ms }),
    ]
}

fn topic() -> impl Strategy<Value = TopicEntry> {
    (
        "\\PC{1,40}",
        any::<[u8; 16]>(),
        any::<i64>(),
        (1..=u32::MAX, durability()),
        proptest::collection::vec(proptest::option::of(any::<u64>()), 4),
        any::<bool>(),
    )
        .prop_map(
            |(name, topic_id, created_at, (partitions, durability), opts, dedicated_kek)| {
                TopicEntry {
                    name,
                    topic_id,
                    created_at,
                    config: TopicConfig {
                        partitions,
                        durability,
                        retention_ms: opts[0],
                        retention_bytes: opts[1],
                        segment_bytes: opts[2],
                        segment_ms: opts[3],
                        dedicated_kek,
                    },
                }
            },
        )
}

fn ops() -> impl Strategy<Value = Operations> {
    (0..=Operations::VALID).prop_map(Operations)
}

fn acl() -> impl Strategy<Value = AclEntry> {
    (
        "\\PC{0,30}",
        "\\PC{0,30}",
        ops(),
        any::<bool>(),
        proptest::option::of(any::<i64>()),
        proptest::option::of(any::<u64>()),
        any::<i64>(),
    )
        .prop_map(
            |(principal, topic, operations, deny, expires_at, request_id, created_at)| AclEntry {
                rule: AclRule {
                    principal,
                    topic,
                    operations,
                    effect: if deny {
                        AclEffect::Deny
                    } else {
                        AclEffect::Allow
                    },
                    expires_at,
                },
                request_id,
                created_at,
            },
        )
}

fn access() -> impl Strategy<Value = AccessRequestInfo> {
    (
        ("\\PC{0,20}", "\\PC{0,20}", ops(), "\\PC{0,60}"),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        prop_oneof![
            Just(AccessState::Pending),
            Just(AccessState::Approved),
            Just(AccessState::Denied),
            Just(AccessState::Expired)
        ],
        any::<i64>(),
        (
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
        ),
    )
        .prop_map(
            |((requester, topic, operations, reason), key, state, created_at, decision)| {
                AccessRequestInfo {
                    id: 0,
                    requester,
                    topic,
                    operations,
                    reason,
                    public_key: key.map(Bytes::from),
                    state,
                    created_at,
                    decided_by: decision.0,
                    decision_reason: decision.1,
                    decided_at: decision.2,
                    expires_at: decision.3,
                }
            },
        )
}

fn kek_version() -> impl Strategy<Value = KekVersion> {
    (
        prop_oneof![
            Just(KekScope::Broker),
            "[0-9a-f]{32}".prop_map(KekScope::Topic)
        ],
        1..=u32::MAX,
        prop_oneof![
            Just(KeyState::Active),
            Just(KeyState::DecryptOnly),
            Just(KeyState::Destroyed),
            Just(KeyState::Compromised)
        ],
        "[a-z0-9]{1,10}",
        any::<(i64, i64, u64)>(),
    )
        .prop_map(|(scope, version, state, provider, (c, s, n))| KekVersion {
            id: KekId { scope, version },
            state,
            provider,
            created_at: c,
            state_changed_at: s,
            segments: n,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn values_round_trip(
        t in topic(),
        a in acl(),
        mut r in access(),
        v in kek_version(),
    ) {
        let meta = MetaStore::in_memory().unwrap();
        let id = meta.write(|tx| {
            tx.create_topic(&t)?;
            tx.put_acl(&a)?;
            tx.put_kek_version(&v)?;
            tx.create_access_request(&r)
        }).unwrap();
        r.id = id;
        meta.read(|rd| {
            prop_assert_eq!(rd.topic(&t.name)?, Some(t.clone()));
            prop_assert_eq!(rd.acls()?, vec![a.clone()]);
            prop_assert_eq!(rd.kek_version(&v.id)?, Some(v.clone()));
            prop_assert_eq!(rd.access_request(id)?, Some(r.clone()));
            Ok(())
        })?;
    }
}
