//! docs/PROTOCOL.md, "Producer stream" (storage errors), "PartitionState"
//! and "TopicRecover", against partitions made `read_only` and
//! `unavailable` by real damage (see `damage.rs`).

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::subscribe::StartPosition;
use strongbox_protocol::model::{AclEffect, AclRule, Operations, PartitionState};

use crate::damage::{Damage, Damaged, OLDER_COPY_END, RECORDS, damaged_topic, record};
use crate::harness::*;

/// Partition 0 healthy, 1 `read_only` (an older copy of itself), 2
/// `unavailable` (a key envelope gone).
const LAYOUT: [Damage; 3] = [Damage::Healthy, Damage::OlderCopy, Damage::NoEnvelope];

async fn fixture(topic: &str) -> Result<Damaged> {
    damaged_topic(topic, &LAYOUT).await
}

/// The answers of a producer stream to `count` requests: correlation id and
/// code (0 for a `ProduceAck`, with its base offset).
async fn answers(s: &mut Stream, count: usize) -> Result<Vec<(u64, u16, Option<u64>)>> {
    let mut out = Vec::new();
    for _ in 0..count {
        match s.next().await? {
            Frame::ProduceAck(a) => out.push((a.correlation_id, 0, Some(a.base_offset))),
            Frame::Error(e) => out.push((e.correlation_id, e.code, None)),
            other => bail!("{other:?}"),
        }
    }
    Ok(out)
}

/// The base offsets of the batches a subscription of `partition` from
/// `start` delivers, until `count` have come.
async fn read(
    session: &Session,
    topic: &str,
    partition: u32,
    start: StartPosition,
    count: usize,
) -> Result<Vec<u64>> {
    let mut s = session
        .subscribe(subscribe_partition(topic, partition, start, 1 << 30))
        .await?;
    let mut offsets = Vec::new();
    while offsets.len() < count {
        match s.next().await? {
            Frame::Assignment(_) => {}
            Frame::Records(r) => offsets.extend(r.batches.iter().map(|b| b.base_offset)),
            other => bail!("reading {topic}/{partition}: {other:?}"),
        }
    }
    Ok(offsets)
}

/// [P11] "Producer stream", per-request failures: a `Produce` to a
/// `read_only` partition is answered with `partition_read_only`, one to a
/// partition whose log could not be opened because its files are damaged
/// with `data_damaged`; the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p11_read_only_and_damaged_partitions_refuse_each_batch() -> Result<()> {
    let d = fixture("demo.p11").await?;
    with_log(&d.broker, async {
        let alice = d.broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send_all(&[
            produce(1, "demo.p11", 1, record(1, RECORDS)),
            produce(2, "demo.p11", 2, record(2, RECORDS)),
            produce(3, "demo.p11", 0, record(0, RECORDS)),
        ])
        .await?;
        let got = answers(&mut s, 3).await?;
        ensure!(
            got == vec![
                (1, ErrorCode::PartitionReadOnly.as_u16(), None),
                (2, ErrorCode::DataDamaged.as_u16(), None),
                (3, 0, Some(RECORDS)),
            ],
            "{got:?}"
        );
        s.send(&produce(4, "demo.p11", 1, record(1, RECORDS)))
            .await?;
        let got = answers(&mut s, 1).await?;
        ensure!(
            got == vec![(4, ErrorCode::PartitionReadOnly.as_u16(), None)],
            "{got:?}"
        );
        Ok(())
    })
    .await
}

/// [V7] "PartitionState": `DescribeTopic` reports each partition's state,
/// with `error` present exactly when it is not `ok`; a `read_only`
/// partition serves reads, an `unavailable` one serves none (its
/// subscription gets `PartitionError`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v7_describe_reports_each_partition_state() -> Result<()> {
    let d = fixture("demo.v7").await?;
    with_log(&d.broker, async {
        let admin = d.broker.session(ADMIN).await?;
        let info = admin.describe("demo.v7").await?;
        let p = &info.partitions;
        ensure!(p.len() == 3, "{info:?}");
        ensure!(
            p[0].state == PartitionState::Ok
                && p[0].error.is_none()
                && p[0].high_watermark == RECORDS,
            "{:?}",
            p[0]
        );
        ensure!(
            p[1].state == PartitionState::ReadOnly
                && p[1].error.as_ref().is_some_and(|e| !e.is_empty())
                && p[1].high_watermark == OLDER_COPY_END,
            "{:?}",
            p[1]
        );
        ensure!(
            p[2].state == PartitionState::Unavailable
                && p[2].error.as_ref().is_some_and(|e| !e.is_empty()),
            "{:?}",
            p[2]
        );
        let alice = d.broker.session(ALICE).await?;
        let offsets = read(&alice, "demo.v7", 1, StartPosition::Earliest, 3).await?;
        ensure!(offsets == (0..OLDER_COPY_END).collect::<Vec<_>>());
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.v7",
                2,
                StartPosition::Earliest,
                1 << 20,
            ))
            .await?;
        ensure!(matches!(s.next().await?, Frame::Assignment(_)));
        match s.next().await? {
            Frame::PartitionError(e) => {
                ensure!(e.code == ErrorCode::DataDamaged.as_u16(), "{e:?}");
                Ok(())
            }
            other => bail!("an unavailable partition served {other:?}"),
        }
    })
    .await
}

fn recover(topic: &str, partition: u32, accept_loss: bool) -> AdminRequest {
    AdminRequest::TopicRecover {
        topic: topic.into(),
        partition,
        accept_loss,
    }
}

fn admin_on(topic: &str) -> AclRule {
    AclRule {
        principal: ALICE_PRINCIPAL.into(),
        topic: topic.into(),
        operations: Operations::ADMIN,
        effect: AclEffect::Allow,
        expires_at: None,
    }
}

/// [V9] "TopicRecover": needs the `admin` operation on the topic
/// (`not_authorized`); `invalid_request` when `accept_loss` is false;
/// `conflict` when the partition is not `read_only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v9_recover_needs_admin_and_a_read_only_partition() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let alice = broker.session(ALICE).await?;
        // Publish, subscribe and describe are not enough, nor `admin` on
        // another topic.
        alice
            .refused(recover("demo.greetings", 0, true), ErrorCode::NotAuthorized)
            .await?;
        admin
            .ok(AdminRequest::AclGrant {
                rule: admin_on("demo.other"),
            })
            .await?;
        alice
            .refused(recover("demo.greetings", 0, true), ErrorCode::NotAuthorized)
            .await?;
        admin
            .ok(AdminRequest::AclGrant {
                rule: admin_on("demo.greetings"),
            })
            .await?;
        alice
            .refused(
                recover("demo.greetings", 0, false),
                ErrorCode::InvalidRequest,
            )
            .await?;
        alice
            .refused(recover("demo.greetings", 0, true), ErrorCode::Conflict)
            .await
            .map(drop)
    })
    .await
}

/// [V10] "TopicRecover": an `unavailable` partition is not recovered (the
/// answer is its error, `data_damaged`); a `read_only` one is answered
/// with `TopicResult` showing it `ok`, takes writes again after the
/// highest offset it ever acknowledged, never below, is read across the
/// gap, and the recovery is audited (`partition.recover`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v10_recover_resumes_writes_after_every_acknowledged_offset() -> Result<()> {
    let d = fixture("demo.v10").await?;
    with_log(&d.broker, async {
        let admin = d.broker.session(ADMIN).await?;
        admin
            .refused(recover("demo.v10", 2, true), ErrorCode::DataDamaged)
            .await?;
        let info = match admin.ok(recover("demo.v10", 1, true)).await? {
            AdminResponse::Topic(info) => info,
            other => bail!("TopicRecover answered {other:?}"),
        };
        let p = &info.partitions[1];
        ensure!(p.state == PartitionState::Ok && p.error.is_none(), "{p:?}");
        let base = admin.append("demo.v10", 1, record(1, RECORDS)).await?;
        ensure!(
            base == RECORDS,
            "the first write after recovery lands at {base}, not after {RECORDS}"
        );
        let all = read(&admin, "demo.v10", 1, StartPosition::Earliest, 4).await?;
        ensure!(all == vec![0, 1, 2, RECORDS], "{all:?}");
        let in_gap = read(&admin, "demo.v10", 1, StartPosition::Offset(5), 1).await?;
        ensure!(in_gap == vec![RECORDS], "{in_gap:?}");
        admin
            .audited(&["\"partition.recover\"", "\"resume_offset\":9"])
            .await
    })
    .await
}
