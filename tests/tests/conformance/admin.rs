//! docs/PROTOCOL.md, "Admin stream", "Shared admin values" and "Admin
//! requests".

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::{Frame, FrameType};
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::model::{
    AccessState, AclEffect, AclRule, Operations, RecipientEntry, TopicConfig,
};

use strongbox_client::e2e::{OwnerKey, RecipientGrant, RecipientKey};

use crate::harness::*;

fn rule(principal: &str, topic: &str, operations: Operations) -> AclRule {
    AclRule {
        principal: principal.into(),
        topic: topic.into(),
        operations,
        effect: AclEffect::Allow,
        expires_at: None,
    }
}

/// [A1] "Admin stream": each request is answered with exactly the response
/// the table names (or `Error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_each_request_gets_its_response() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let bob = broker.session(BOB).await?;
        let grant = rule(
            "spiffe://strongbox.dev/carol",
            "demo.*",
            Operations::SUBSCRIBE,
        );
        let cases: Vec<(&Session, AdminRequest, FrameType)> = vec![
            (&admin, AdminRequest::WhoAmI, FrameType::WhoAmIResult),
            (
                &admin,
                AdminRequest::CreateTopic {
                    name: "demo.a1".into(),
                    config: topic_config(1),
                },
                FrameType::TopicResult,
            ),
            (
                &admin,
                AdminRequest::DescribeTopic {
                    name: "demo.a1".into(),
                },
                FrameType::TopicResult,
            ),
            (
                &admin,
                AdminRequest::ListTopics { prefix: None },
                FrameType::TopicListResult,
            ),
            (
                &admin,
                AdminRequest::AclGrant {
                    rule: grant.clone(),
                },
                FrameType::AclListResult,
            ),
            (
                &admin,
                AdminRequest::AclRevoke { rule: grant },
                FrameType::AclListResult,
            ),
            (
                &admin,
                AdminRequest::AclList {
                    principal: None,
                    topic: None,
                },
                FrameType::AclListResult,
            ),
            (
                &admin,
                AdminRequest::InitProducer { producer_id: None },
                FrameType::ProducerResult,
            ),
            (
                &admin,
                AdminRequest::KeyStatus { topic: None },
                FrameType::KeyStatusResult,
            ),
            (
                &admin,
                AdminRequest::KeyRotate { topic: None },
                FrameType::KeyChangedResult,
            ),
            (
                &admin,
                AdminRequest::KeyRewrap {
                    topic: None,
                    from_version: None,
                },
                FrameType::KeyChangedResult,
            ),
            (&admin, AdminRequest::AuditHead, FrameType::AuditHeadResult),
            (
                &bob,
                AdminRequest::AccessRequest {
                    topic: "demo.a1".into(),
                    operations: Operations::PUBLISH,
                    reason: "load tests".into(),
                    public_key: None,
                },
                FrameType::AccessResult,
            ),
            (
                &admin,
                AdminRequest::AccessList { pending_only: true },
                FrameType::AccessListResult,
            ),
            (
                &admin,
                AdminRequest::RecipientList {
                    topic: "demo.a1".into(),
                },
                FrameType::RecipientListResult,
            ),
        ];
        for (session, request, expected) in cases {
            let name = request.frame_type().name();
            match session.request(request).await? {
                Frame::Response(r) => ensure!(r.frame_type() == expected, "{name}: {r:?}"),
                other => bail!("{name}: {other:?}"),
            }
        }
        // Approve and deny answer with the request as it now stands.
        let AdminResponse::AccessList(pending) = admin
            .ok(AdminRequest::AccessList { pending_only: true })
            .await?
        else {
            bail!("no access list")
        };
        let id = pending
            .first()
            .map(|r| r.id)
            .ok_or_else(|| anyhow::anyhow!("none pending"))?;
        match admin
            .ok(AdminRequest::AccessApprove {
                id,
                ttl_ms: None,
                recipient_entry: None,
            })
            .await?
        {
            AdminResponse::Access(info) => ensure!(info.state == AccessState::Approved),
            other => bail!("{other:?}"),
        }
        let AdminResponse::Access(second) = bob
            .ok(AdminRequest::AccessRequest {
                topic: "demo.a1".into(),
                operations: Operations::DESCRIBE,
                reason: "dashboards".into(),
                public_key: None,
            })
            .await?
        else {
            bail!("no access result")
        };
        match admin
            .ok(AdminRequest::AccessDeny {
                id: second.id,
                reason: "not needed".into(),
            })
            .await?
        {
            AdminResponse::Access(info) => ensure!(info.state == AccessState::Denied),
            other => bail!("{other:?}"),
        }
        match admin
            .ok(AdminRequest::DeleteTopic {
                name: "demo.a1".into(),
            })
            .await?
        {
            AdminResponse::Ok { .. } => Ok(()),
            other => bail!("{other:?}"),
        }
    })
    .await
}

/// [A2] "Admin stream": the broker finishes its send side once it has
/// read the end of the client's (the answer comes before that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_the_broker_finishes_after_the_client() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send(&Frame::Request(AdminRequest::WhoAmI)).await?;
        ensure!(matches!(
            s.next().await?,
            Frame::Response(AdminResponse::WhoAmI { .. })
        ));
        s.expect_quiet(Duration::from_millis(300)).await?;
        s.finish()?;
        s.expect_finished().await
    })
    .await
}

/// [A3] "Admin stream": a second request on an admin stream is
/// `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_a_second_request_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send_all(&[
            Frame::Request(AdminRequest::WhoAmI),
            Frame::Request(AdminRequest::WhoAmI),
        ])
        .await?;
        ensure!(matches!(
            s.next().await?,
            Frame::Response(AdminResponse::WhoAmI { .. })
        ));
        s.expect_ended_with(ErrorCode::ProtocolViolation).await?;
        // Any further frame, too.
        let mut s = alice.open().await?;
        s.send(&Frame::Request(AdminRequest::WhoAmI)).await?;
        ensure!(matches!(s.next().await?, Frame::Response(_)));
        s.send(&hello()).await?;
        s.expect_ended_with(ErrorCode::ProtocolViolation)
            .await
            .map(drop)
    })
    .await
}

/// [A4] "Admin requests": a request the principal's ACL does not allow is
/// `not_authorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_requests_the_acl_forbids_are_not_authorized() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        alice
            .refused(
                AdminRequest::CreateTopic {
                    name: "demo.a4".into(),
                    config: topic_config(1),
                },
                ErrorCode::NotAuthorized,
            )
            .await?;
        alice
            .refused(
                AdminRequest::DeleteTopic {
                    name: "demo.greetings".into(),
                },
                ErrorCode::NotAuthorized,
            )
            .await?;
        let bob = broker.session(BOB).await?;
        bob.refused(
            AdminRequest::KeyRotate { topic: None },
            ErrorCode::NotAuthorized,
        )
        .await?;
        bob.refused(
            AdminRequest::AclGrant {
                rule: rule("x", "demo.*", Operations::PUBLISH),
            },
            ErrorCode::NotAuthorized,
        )
        .await
        .map(drop)
    })
    .await
}

/// [V1] "Durability": a tag and value outside the table are
/// `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_durability_outside_the_table_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let body = body_of(&Frame::Request(AdminRequest::CreateTopic {
            name: "demo.v1".into(),
            config: topic_config(1),
        }));
        // name 2 + 7, partitions 4, then the tag and the value.
        let tag_at = 2 + 7 + 4;
        for (tag, value) in [(0u8, 7u32), (1, 0), (2, 1), (3, 0)] {
            let mut bad = body.clone();
            bad[tag_at] = tag;
            bad[tag_at + 1..tag_at + 5].copy_from_slice(&value.to_be_bytes());
            let mut s = admin.open().await?;
            s.send_raw(&raw_frame(0x0101, &bad)).await?;
            s.finish()?;
            s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        }
        Ok(())
    })
    .await
}

/// [V2] "TopicConfig": an absent retention takes the broker's default; 0
/// means no limit, reported as absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_retention_absent_is_the_default_and_zero_is_no_limit() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let configs = [
            (
                "demo.v2.default",
                None,
                None,
                Some(7 * 24 * 3_600_000),
                None,
            ),
            ("demo.v2.forever", Some(0), Some(0), None, None),
            (
                "demo.v2.set",
                Some(60_000),
                Some(1 << 30),
                Some(60_000),
                Some(1 << 30),
            ),
        ];
        for (name, ms, bytes, want_ms, want_bytes) in configs {
            let config = TopicConfig {
                retention_ms: ms,
                retention_bytes: bytes,
                ..topic_config(1)
            };
            for response in [
                admin
                    .ok(AdminRequest::CreateTopic {
                        name: name.into(),
                        config,
                    })
                    .await?,
                admin
                    .ok(AdminRequest::DescribeTopic { name: name.into() })
                    .await?,
            ] {
                let AdminResponse::Topic(info) = response else {
                    bail!("{response:?}")
                };
                ensure!(
                    info.config.retention_ms == want_ms,
                    "{name}: {:?}",
                    info.config
                );
                ensure!(
                    info.config.retention_bytes == want_bytes,
                    "{name}: {:?}",
                    info.config
                );
            }
        }
        Ok(())
    })
    .await
}

/// [V3] "TopicConfig": more than 10 000 partitions, `segment_ms` 0 or a
/// `segment_bytes` too small for a segment are `invalid_config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_out_of_range_configs_are_invalid_config() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        for config in [
            topic_config(10_001),
            TopicConfig {
                segment_ms: Some(0),
                ..topic_config(1)
            },
            TopicConfig {
                segment_bytes: Some(10),
                ..topic_config(1)
            },
        ] {
            admin
                .refused(
                    AdminRequest::CreateTopic {
                        name: "demo.v3".into(),
                        config,
                    },
                    ErrorCode::InvalidConfig,
                )
                .await?;
        }
        // Partitions 0: the broker's default.
        match admin
            .ok(AdminRequest::CreateTopic {
                name: "demo.v3".into(),
                config: topic_config(0),
            })
            .await?
        {
            AdminResponse::Topic(info) => ensure!(info.config.partitions >= 1),
            other => bail!("{other:?}"),
        }
        Ok(())
    })
    .await
}

/// [V4] "Operations": bits 10 to 15 set are `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_unknown_operation_bits_are_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let body = body_of(&Frame::Request(AdminRequest::AclGrant {
            rule: rule("p", "t", Operations::PUBLISH),
        }));
        // principal 2 + 1, topic 2 + 1, then the operations.
        let ops_at = 3 + 3;
        for bits in [0x0400u16, 0x8001] {
            let mut bad = body.clone();
            bad[ops_at..ops_at + 2].copy_from_slice(&bits.to_be_bytes());
            let mut s = admin.open().await?;
            s.send_raw(&raw_frame(0x0110, &bad)).await?;
            s.finish()?;
            s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        }
        Ok(())
    })
    .await
}

/// [V5] "CreateTopic": a name outside the naming rules is
/// `invalid_topic_name`; a `_` name is the broker's (`not_authorized`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_bad_topic_names_are_refused() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let too_long = "t".repeat(250);
        for name in ["", ".", "..", "a b", "a/b", "é", "a:b", too_long.as_str()] {
            admin
                .refused(
                    AdminRequest::CreateTopic {
                        name: name.into(),
                        config: topic_config(1),
                    },
                    ErrorCode::InvalidTopicName,
                )
                .await?;
        }
        // The broker's own names: no one may create them, not even a
        // superuser.
        admin
            .refused(
                AdminRequest::CreateTopic {
                    name: "_mine".into(),
                    config: topic_config(1),
                },
                ErrorCode::NotAuthorized,
            )
            .await?;
        admin.create_topic(&"t".repeat(249), 1).await?;
        admin.create_topic("A-z_0.9", 1).await
    })
    .await
}

/// [V6] "CreateTopic": a name already in use is `topic_exists`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v6_an_existing_name_is_topic_exists() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin
            .refused(
                AdminRequest::CreateTopic {
                    name: "demo.greetings".into(),
                    config: topic_config(1),
                },
                ErrorCode::TopicExists,
            )
            .await
            .map(drop)
    })
    .await
}

/// [Q1] "KeyDestroy": destroying a version envelopes still need, without
/// `force`, is `key_in_use`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q1_destroying_a_key_in_use_is_key_in_use() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.append("demo.greetings", 0, batch(&["kept"])).await?;
        admin.ok(AdminRequest::KeyRotate { topic: None }).await?;
        admin
            .refused(
                AdminRequest::KeyDestroy {
                    topic: None,
                    version: 1,
                    force: false,
                },
                ErrorCode::KeyInUse,
            )
            .await
            .map(drop)
    })
    .await
}

fn access_request(topic: &str, operations: Operations, reason: &str) -> AdminRequest {
    AdminRequest::AccessRequest {
        topic: topic.into(),
        operations,
        reason: reason.into(),
        public_key: None,
    }
}

/// bob asks for `operations` on `topic`; the request's id.
async fn ask(bob: &Session, topic: &str, operations: Operations) -> Result<u64> {
    match bob.ok(access_request(topic, operations, "needed")).await? {
        AdminResponse::Access(info) => Ok(info.id),
        other => bail!("{other:?}"),
    }
}

/// [Q2] "AccessRequest": other operations than publish, subscribe and
/// describe, `_` topics, an empty reason, a public key that is not 32
/// bytes are `invalid_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q2_invalid_access_requests() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        for request in [
            access_request("demo.greetings", Operations::GRANT, "please"),
            access_request("demo.greetings", Operations::DELETE, "please"),
            access_request("_audit", Operations::SUBSCRIBE, "please"),
            access_request("demo.greetings", Operations::PUBLISH, ""),
            AdminRequest::AccessRequest {
                topic: "demo.greetings".into(),
                operations: Operations::PUBLISH,
                reason: "please".into(),
                public_key: Some(Bytes::from(vec![7u8; 31])),
            },
        ] {
            bob.refused(request, ErrorCode::InvalidRequest).await?;
        }
        Ok(())
    })
    .await
}

/// [Q3] "AccessRequest": a topic that does not exist is `unknown_topic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q3_access_to_an_unknown_topic() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        bob.refused(
            access_request("demo.none", Operations::PUBLISH, "please"),
            ErrorCode::UnknownTopic,
        )
        .await
        .map(drop)
    })
    .await
}

/// [Q4] "AccessRequest": the same request already pending is `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q4_the_same_request_pending_is_conflict() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        bob.refused(
            access_request("demo.greetings", Operations::PUBLISH, "again"),
            ErrorCode::Conflict,
        )
        .await
        .map(drop)
    })
    .await
}

/// [Q5] "AccessApprove": approving without `grant` on the topic is
/// `not_authorized`, and the request stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q5_approving_without_grant_is_not_authorized() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        let id = ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        let alice = broker.session(ALICE).await?;
        alice
            .refused(
                AdminRequest::AccessApprove {
                    id,
                    ttl_ms: None,
                    recipient_entry: None,
                },
                ErrorCode::NotAuthorized,
            )
            .await?;
        let admin = broker.session(ADMIN).await?;
        match admin
            .ok(AdminRequest::AccessList { pending_only: true })
            .await?
        {
            AdminResponse::AccessList(list) => ensure!(list.iter().any(|r| r.id == id)),
            other => bail!("{other:?}"),
        }
        Ok(())
    })
    .await
}

/// [Q6] "AccessApprove": approving a decided request is `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q6_approving_a_decided_request_is_conflict() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        let id = ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        let admin = broker.session(ADMIN).await?;
        let approve = AdminRequest::AccessApprove {
            id,
            ttl_ms: None,
            recipient_entry: None,
        };
        admin.ok(approve.clone()).await?;
        admin.refused(approve, ErrorCode::Conflict).await.map(drop)
    })
    .await
}

/// [Q7] "AccessApprove": a `recipient_entry` for a request without a
/// public key is `invalid_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q7_a_recipient_entry_without_a_key_is_invalid() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        let id = ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        let admin = broker.session(ADMIN).await?;
        admin
            .refused(
                AdminRequest::AccessApprove {
                    id,
                    ttl_ms: None,
                    recipient_entry: Some(Bytes::from_static(b"entry")),
                },
                ErrorCode::InvalidRequest,
            )
            .await
            .map(drop)
    })
    .await
}

/// [Q8] "AccessDeny": denying without `grant` on the topic is
/// `not_authorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q8_denying_without_grant_is_not_authorized() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        let id = ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        let alice = broker.session(ALICE).await?;
        alice
            .refused(
                AdminRequest::AccessDeny {
                    id,
                    reason: "no".into(),
                },
                ErrorCode::NotAuthorized,
            )
            .await
            .map(drop)
    })
    .await
}

/// [Q9] "AccessDeny": denying a decided request is `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q9_denying_a_decided_request_is_conflict() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        let id = ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        let admin = broker.session(ADMIN).await?;
        let deny = AdminRequest::AccessDeny {
            id,
            reason: "no".into(),
        };
        admin.ok(deny.clone()).await?;
        admin.refused(deny, ErrorCode::Conflict).await.map(drop)
    })
    .await
}

/// [Q10] "RecipientList": without `describe` or `subscribe` on the topic,
/// `not_authorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q10_listing_recipients_needs_describe_or_subscribe() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("other.q10", 1).await?;
        let alice = broker.session(ALICE).await?;
        alice
            .refused(
                AdminRequest::RecipientList {
                    topic: "other.q10".into(),
                },
                ErrorCode::NotAuthorized,
            )
            .await?;
        alice
            .ok(AdminRequest::RecipientList {
                topic: "demo.greetings".into(),
            })
            .await
            .map(drop)
    })
    .await
}

/// [Q11] "RecipientPut": an entry that is not a signed recipient entry for
/// this topic and recipient is `invalid_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q11_a_bad_recipient_entry_is_invalid() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin
            .refused(
                AdminRequest::RecipientPut {
                    topic: "demo.greetings".into(),
                    entry: RecipientEntry {
                        recipient: "bob".into(),
                        entry: Bytes::from_static(b"not an entry"),
                    },
                },
                ErrorCode::InvalidRequest,
            )
            .await
            .map(drop)
    })
    .await
}

/// [Q12] "RecipientRemove": a recipient the topic does not have is
/// `not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q12_removing_an_unknown_recipient_is_not_found() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin
            .refused(
                AdminRequest::RecipientRemove {
                    topic: "demo.greetings".into(),
                    recipient: "nobody".into(),
                },
                ErrorCode::NotFound,
            )
            .await
            .map(drop)
    })
    .await
}

/// The names `ListTopics` with `prefix` answers `session` with, each
/// checked to carry no partitions.
async fn listed(session: &Session, prefix: Option<&str>) -> Result<Vec<String>> {
    match session
        .ok(AdminRequest::ListTopics {
            prefix: prefix.map(Into::into),
        })
        .await?
    {
        AdminResponse::Topics(topics) => {
            ensure!(topics.iter().all(|t| t.partitions.is_empty()), "{topics:?}");
            let mut names: Vec<String> = topics.into_iter().map(|t| t.name).collect();
            names.sort();
            Ok(names)
        }
        other => bail!("{other:?}"),
    }
}

/// [V11] "ListTopics": the topics the caller may describe, only those
/// whose names start with `prefix` when it is given, without partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v11_list_topics_shows_what_the_caller_may_describe() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        for name in ["demo.v11a", "demo.v11b", "other.v11"] {
            admin.create_topic(name, 2).await?;
        }
        let alice = broker.session(ALICE).await?;
        let all = listed(&alice, None).await?;
        ensure!(
            all == ["demo.greetings", "demo.v11a", "demo.v11b"],
            "alice describes demo.* only: {all:?}"
        );
        let some = listed(&alice, Some("demo.v11")).await?;
        ensure!(some == ["demo.v11a", "demo.v11b"], "{some:?}");
        ensure!(listed(&alice, Some("other")).await?.is_empty());
        let everything = listed(&admin, None).await?;
        ensure!(
            everything.contains(&"other.v11".to_owned())
                && everything.contains(&"_audit".to_owned()),
            "{everything:?}"
        );
        Ok(())
    })
    .await
}

/// [V12] "TopicInfo": a topic id is never reused: a topic created again
/// under the name of a deleted one gets a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v12_a_topic_id_is_never_reused() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let first = admin.create_topic_with("demo.v12", topic_config(1)).await?;
        ensure!(admin.describe("demo.v12").await?.topic_id == first.topic_id);
        admin
            .ok(AdminRequest::DeleteTopic {
                name: "demo.v12".into(),
            })
            .await?;
        let again = admin.create_topic_with("demo.v12", topic_config(1)).await?;
        ensure!(again.topic_id != first.topic_id, "{first:?} then {again:?}");
        ensure!(admin.describe("demo.v12").await?.topic_id == again.topic_id);
        Ok(())
    })
    .await
}

/// The code a one-batch `Produce` of `session` to `topic` is answered
/// with (0: acknowledged).
async fn publish_code(session: &Session, topic: &str) -> Result<u16> {
    match session.produce_one(topic, 0, batch(&["x"])).await? {
        Frame::ProduceAck(_) => Ok(0),
        Frame::Error(e) => Ok(e.code),
        other => bail!("{other:?}"),
    }
}

/// [V13] "AclRule": patterns are `*`, an exact name or a prefix ending in
/// `*`; a matching deny wins over any allow; without a matching allow,
/// access is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v13_deny_wins_and_no_allow_is_no_access() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        for name in ["demo.v13", "shared.v13", "shared.v13x", "sharedv13"] {
            admin.create_topic(name, 1).await?;
        }
        let alice = broker.session(ALICE).await?;
        let bob = broker.session(BOB).await?;
        let denied = ErrorCode::NotAuthorized.as_u16();
        // No allow matches: denied.
        ensure!(publish_code(&bob, "shared.v13").await? == denied);
        // A prefix principal pattern and a prefix topic pattern.
        let grant = |principal: &str, topic: &str, effect| AdminRequest::AclGrant {
            rule: AclRule {
                effect,
                ..rule(principal, topic, Operations::PUBLISH)
            },
        };
        admin
            .ok(grant(
                "spiffe://strongbox.dev/*",
                "shared.*",
                AclEffect::Allow,
            ))
            .await?;
        for topic in ["shared.v13", "shared.v13x"] {
            ensure!(publish_code(&bob, topic).await? == 0, "{topic}");
        }
        ensure!(
            publish_code(&bob, "sharedv13").await? == denied,
            "the prefix is `shared.`"
        );
        // An exact deny wins over the allow of demo.* and of shared.*.
        for topic in ["demo.v13", "shared.v13"] {
            admin
                .ok(grant(ALICE_PRINCIPAL, topic, AclEffect::Deny))
                .await?;
            ensure!(publish_code(&alice, topic).await? == denied, "{topic}");
        }
        ensure!(publish_code(&alice, "demo.greetings").await? == 0);
        ensure!(publish_code(&alice, "shared.v13x").await? == 0);
        // A deny for every principal (`*`) wins too.
        admin.ok(grant("*", "shared.v13x", AclEffect::Deny)).await?;
        ensure!(publish_code(&bob, "shared.v13x").await? == denied);
        Ok(())
    })
    .await
}

/// The ids of the requests `AccessList` shows `session`, in its order.
async fn access_list(session: &Session) -> Result<Vec<u64>> {
    match session
        .ok(AdminRequest::AccessList {
            pending_only: false,
        })
        .await?
    {
        AdminResponse::AccessList(list) => Ok(list.into_iter().map(|r| r.id).collect()),
        other => bail!("{other:?}"),
    }
}

/// [Q13] "AccessList": the caller's own requests and those on topics where
/// it holds `grant`, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q13_access_list_shows_own_requests_and_granted_topics() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("other.q13", 1).await?;
        let bob = broker.session(BOB).await?;
        let alice = broker.session(ALICE).await?;
        let bobs = ask(&bob, "demo.greetings", Operations::PUBLISH).await?;
        let alices = match alice
            .ok(access_request(
                "other.q13",
                Operations::SUBSCRIBE,
                "reports",
            ))
            .await?
        {
            AdminResponse::Access(info) => info.id,
            other => bail!("{other:?}"),
        };
        ensure!(access_list(&bob).await? == vec![bobs]);
        ensure!(access_list(&alice).await? == vec![alices]);
        ensure!(access_list(&admin).await? == vec![bobs, alices]);
        admin
            .ok(AdminRequest::AclGrant {
                rule: rule(ALICE_PRINCIPAL, "demo.*", Operations::GRANT),
            })
            .await?;
        ensure!(access_list(&alice).await? == vec![bobs, alices]);
        ensure!(access_list(&bob).await? == vec![bobs]);
        Ok(())
    })
    .await
}

/// The recipients a recipient request answers `session` with.
async fn recipients(session: &Session, request: AdminRequest) -> Result<Vec<RecipientEntry>> {
    match session.ok(request).await? {
        AdminResponse::Recipients(list) => Ok(list),
        other => bail!("{other:?}"),
    }
}

/// [Q14] "RecipientEntry": the broker stores `entry` and returns it
/// unchanged: `RecipientPut` answers with the topic's recipients holding
/// the exact bytes, `RecipientList` returns them to any reader of the
/// topic, `RecipientRemove` answers without them. (The entry is signed with
/// the reference client's end-to-end module: to the broker it is payload.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q14_recipient_entries_come_back_unchanged() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let owner = OwnerKey::create(broker.scratch("owner.key"))?;
        let entry = RecipientGrant {
            topic: "demo.greetings".into(),
            recipient: "bob".into(),
            public_key: RecipientKey::from_bytes([7; 32]),
            created_at: 1_700_000_000_000,
            expires_at: None,
        }
        .sign_entry(&owner)?;
        let admin = broker.session(ADMIN).await?;
        let put = recipients(
            &admin,
            AdminRequest::RecipientPut {
                topic: "demo.greetings".into(),
                entry: entry.clone(),
            },
        )
        .await?;
        ensure!(put == vec![entry.clone()], "{put:?}");
        let bob = broker.session(BOB).await?;
        let list = AdminRequest::RecipientList {
            topic: "demo.greetings".into(),
        };
        ensure!(recipients(&bob, list.clone()).await? == vec![entry]);
        let left = recipients(
            &admin,
            AdminRequest::RecipientRemove {
                topic: "demo.greetings".into(),
                recipient: "bob".into(),
            },
        )
        .await?;
        ensure!(left.is_empty(), "{left:?}");
        ensure!(recipients(&bob, list).await?.is_empty());
        Ok(())
    })
    .await
}
