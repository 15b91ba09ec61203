//! docs/PROTOCOL.md, "Subscription stream", "Damaged partitions": real
//! damage (see `damage.rs`) met by subscriptions. Every frame the broker
//! sends is also checked by the reference client's session machine, which
//! enforces the client's side of the rules ([U32c]).

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::RecordBatch;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::subscribe::{
    Assignment, PartitionError, Records, StartPosition, Subscribe,
};
use strongbox_protocol::model::TopicConfig;
use strongbox_protocol::session::subscribe::SubscriberSession;

use crate::damage::{Damage, RECORDS, damaged_topic, record, value};
use crate::harness::*;

/// Credit that never runs out in these tests.
const PLENTY: u64 = 1 << 30;

/// How long a stopped partition is watched for frames that must not come.
const QUIET: Duration = Duration::from_millis(500);

/// A subscription stream whose every frame the client machine checks.
struct Checked {
    stream: Stream,
    machine: SubscriberSession,
}

impl Checked {
    async fn open(session: &Session, subscribe: Subscribe) -> Result<Self> {
        let (machine, _) = SubscriberSession::new(subscribe.clone());
        let stream = session.subscribe(subscribe).await?;
        Ok(Self { stream, machine })
    }

    async fn next(&mut self) -> Result<Frame> {
        let frame = self.stream.next().await?;
        if let Err(v) = self.machine.handle_frame(frame.clone()) {
            bail!("the client refuses {frame:?}: {v}");
        }
        Ok(frame)
    }

    async fn assignment(&mut self) -> Result<Assignment> {
        match self.next().await? {
            Frame::Assignment(a) => Ok(a),
            other => bail!("expected Assignment, got {other:?}"),
        }
    }

    async fn partition_error(&mut self) -> Result<PartitionError> {
        match self.next().await? {
            Frame::PartitionError(e) => Ok(e),
            other => bail!("expected PartitionError, got {other:?}"),
        }
    }

    async fn end_code(&mut self) -> Result<u16> {
        match self.next().await? {
            Frame::SubscriptionEnd(e) => {
                self.stream.expect_finished().await?;
                Ok(e.code)
            }
            other => bail!("expected SubscriptionEnd, got {other:?}"),
        }
    }
}

/// The offsets a `Records` frame delivers (one record per batch here),
/// each checked to hold the record written there.
fn offsets(r: &Records) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for b in &r.batches {
        let batch = RecordBatch::parse(b.batch.clone())?;
        let first = batch.records().next();
        let expected = value(r.partition, b.base_offset);
        ensure!(
            first.is_some_and(|rec| rec.value == expected.as_bytes()),
            "{}@{} holds another record",
            r.partition,
            b.base_offset
        );
        out.push(b.base_offset);
    }
    Ok(out)
}

/// Reads `Records` of `partition` until its `PartitionError`; the offsets
/// delivered before it, and the error.
async fn read_to_error(s: &mut Checked, partition: u32) -> Result<(Vec<u64>, PartitionError)> {
    let mut delivered = Vec::new();
    loop {
        match s.next().await? {
            Frame::Records(r) if r.partition == partition => delivered.extend(offsets(&r)?),
            Frame::PartitionError(e) if e.partition == partition => return Ok((delivered, e)),
            other => bail!("partition {partition}: {other:?}"),
        }
    }
}

fn partition_subscribe(topic: &str, partition: u32, skip_damaged: bool) -> Subscribe {
    Subscribe {
        skip_damaged,
        ..subscribe_partition(topic, partition, StartPosition::Earliest, PLENTY)
    }
}

/// Checks a `PartitionError`: its partition, code, range and a reason.
fn ensure_reported(e: &PartitionError, partition: u32, first: u64, end: u64) -> Result<()> {
    ensure!(
        e.partition == partition
            && e.code == ErrorCode::DataDamaged.as_u16()
            && e.first_offset == first
            && e.end_offset == end
            && !e.message.is_empty(),
        "expected {partition}: data_damaged [{first}, {end}), got {e:?}"
    );
    Ok(())
}

/// [U29] "Damaged partitions": the broker delivers every batch before a
/// damaged range, then sends `PartitionError` for the partition, naming the
/// range `[first_offset, end_offset)` that cannot be delivered, with
/// `data_damaged` and a reason; a partition whose log could not be opened
/// is reported from its start with the end unknown (2^64 − 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u29_the_readable_records_then_the_damaged_range() -> Result<()> {
    let d = damaged_topic("demo.u29", &[Damage::FlippedByte, Damage::NoEnvelope]).await?;
    with_log(&d.broker, async {
        let alice = d.broker.session(ALICE).await?;
        let mut s = Checked::open(&alice, partition_subscribe("demo.u29", 0, false)).await?;
        ensure!(s.assignment().await?.partitions[0].next_offset == 0);
        let (delivered, e) = read_to_error(&mut s, 0).await?;
        ensure!(
            delivered == (0..d.first).collect::<Vec<_>>(),
            "the batches before the damage: {delivered:?}"
        );
        ensure_reported(&e, 0, d.first, d.end)?;

        let mut s = Checked::open(&alice, partition_subscribe("demo.u29", 1, false)).await?;
        let a = s.assignment().await?;
        ensure!(a.partitions.len() == 1 && a.partitions[0].partition == 1);
        let e = s.partition_error().await?;
        ensure_reported(&e, 1, 0, PartitionError::END_UNKNOWN)
    })
    .await
}

/// [U33] "Damaged partitions": the other partitions of the subscription
/// are not affected: a group subscription delivers every record of a
/// healthy partition beside two damaged ones, and goes on delivering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u33_the_other_partitions_are_not_affected() -> Result<()> {
    let layout = [Damage::Healthy, Damage::FlippedByte, Damage::NoEnvelope];
    let d = damaged_topic("demo.u33", &layout).await?;
    with_log(&d.broker, async {
        let alice = d.broker.session(ALICE).await?;
        let mut s = Checked::open(
            &alice,
            subscribe_group("demo.u33", "readers", StartPosition::Earliest, PLENTY),
        )
        .await?;
        ensure!(s.assignment().await?.partitions.len() == 3);
        let mut delivered = [Vec::new(), Vec::new(), Vec::new()];
        let mut reported = Vec::new();
        while delivered[0].len() < RECORDS as usize || reported.len() < 2 {
            match s.next().await? {
                Frame::Records(r) => delivered[r.partition as usize].extend(offsets(&r)?),
                Frame::PartitionError(e) => reported.push(e),
                other => bail!("{other:?}"),
            }
        }
        ensure!(delivered[0] == (0..RECORDS).collect::<Vec<_>>());
        ensure!(delivered[1] == (0..d.first).collect::<Vec<_>>());
        ensure!(delivered[2].is_empty());
        reported.sort_by_key(|e| e.partition);
        ensure_reported(&reported[0], 1, d.first, d.end)?;
        ensure_reported(&reported[1], 2, 0, PartitionError::END_UNKNOWN)?;
        // The subscription goes on: a new record of the healthy partition
        // is the next frame.
        let admin = d.broker.session(ADMIN).await?;
        admin.append("demo.u33", 0, record(0, RECORDS)).await?;
        match s.next().await? {
            Frame::Records(r) if r.partition == 0 => {
                ensure!(offsets(&r)? == vec![RECORDS]);
                Ok(())
            }
            other => bail!("expected the new record, got {other:?}"),
        }
    })
    .await
}

/// [U34] "Damaged partitions": without `SKIP_DAMAGED` a reported partition
/// stops: nothing more is sent for it on the stream, also after a later
/// `Assignment` that still lists it; a single-partition subscription then
/// ends with `SubscriptionEnd` carrying the `PartitionError`'s code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u34_a_reported_partition_stops() -> Result<()> {
    let layout = [Damage::FlippedByte, Damage::NoEnvelope, Damage::Healthy];
    let d = damaged_topic("demo.u34", &layout).await?;
    with_log(&d.broker, async {
        let alice = d.broker.session(ALICE).await?;
        let mut single = Checked::open(&alice, partition_subscribe("demo.u34", 0, false)).await?;
        single.assignment().await?;
        let (_, e) = read_to_error(&mut single, 0).await?;
        ensure_reported(&e, 0, d.first, d.end)?;
        let code = single.end_code().await?;
        ensure!(code == ErrorCode::DataDamaged.as_u16(), "ended with {code}");

        // A group member reads everything it can of its three partitions.
        let group = subscribe_group("demo.u34", "stop", StartPosition::Earliest, PLENTY);
        let mut first = Checked::open(&alice, group.clone()).await?;
        let a1 = first.assignment().await?;
        let (mut healthy, mut reported) = (0, 0);
        while healthy < RECORDS as usize || reported < 2 {
            match first.next().await? {
                Frame::Records(r) if r.partition == 2 => healthy += r.batches.len(),
                Frame::Records(r) if r.partition == 0 => {}
                Frame::PartitionError(_) => reported += 1,
                other => bail!("{other:?}"),
            }
        }
        // A second member joins: the first keeps the stopped partition 0
        // (and 2), the second gets partition 1.
        let mut second = Checked::open(&alice, group).await?;
        let a2 = first.assignment().await?;
        ensure!(a2.generation > a1.generation, "{a1:?} then {a2:?}");
        let kept: Vec<u32> = a2.partitions.iter().map(|p| p.partition).collect();
        ensure!(kept == vec![0, 2], "{a2:?}");
        ensure!(
            a2.partitions[0].next_offset == d.first,
            "partition 0 is listed where it stopped: {a2:?}"
        );
        // Nothing more for partition 0: no records, no second report.
        first.stream.expect_quiet(QUIET).await?;
        // The new member, for which partition 1 is new, is told.
        let b = second.assignment().await?;
        ensure!(b.partitions.len() == 1 && b.partitions[0].partition == 1);
        let e = second.partition_error().await?;
        ensure_reported(&e, 1, 0, PartitionError::END_UNKNOWN)
    })
    .await
}

/// [U30] "Damaged partitions": with `SKIP_DAMAGED` and a known end, the
/// partition goes on from `end_offset` after the `PartitionError`; with an
/// unknown end it stops as without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u30_skip_damaged_goes_on_after_a_known_end() -> Result<()> {
    let d = damaged_topic("demo.u30", &[Damage::FlippedByte, Damage::NoEnvelope]).await?;
    with_log(&d.broker, async {
        let alice = d.broker.session(ALICE).await?;
        let mut s = Checked::open(&alice, partition_subscribe("demo.u30", 0, true)).await?;
        s.assignment().await?;
        let (before, e) = read_to_error(&mut s, 0).await?;
        ensure!(before == (0..d.first).collect::<Vec<_>>(), "{before:?}");
        ensure_reported(&e, 0, d.first, d.end)?;
        let mut after = Vec::new();
        while after.len() < (RECORDS - d.end) as usize {
            match s.next().await? {
                Frame::Records(r) => after.extend(offsets(&r)?),
                other => bail!("{other:?}"),
            }
        }
        ensure!(after == (d.end..RECORDS).collect::<Vec<_>>(), "{after:?}");
        // Still open: it ends when the client finishes.
        s.stream.finish()?;
        ensure!(s.end_code().await? == 0);

        let mut s = Checked::open(&alice, partition_subscribe("demo.u30", 1, true)).await?;
        s.assignment().await?;
        let e = s.partition_error().await?;
        ensure_reported(&e, 1, 0, PartitionError::END_UNKNOWN)?;
        let code = s.end_code().await?;
        ensure!(code == ErrorCode::DataDamaged.as_u16(), "ended with {code}");
        Ok(())
    })
    .await
}

/// [U31] "Damaged partitions": `PartitionError` is not charged against the
/// credit, and may be sent while the credit is ≤ 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u31_partition_error_costs_no_credit() -> Result<()> {
    let d = damaged_topic("demo.u31", &[Damage::FlippedByte, Damage::NoEnvelope]).await?;
    with_log(&d.broker, async {
        let alice = d.broker.session(ALICE).await?;
        // One byte of credit, starting in the damaged range: the report
        // leaves the byte, which buys the first frame after the range.
        let subscribe = Subscribe {
            skip_damaged: true,
            ..subscribe_partition("demo.u31", 0, StartPosition::Offset(d.first), 1)
        };
        let mut s = Checked::open(&alice, subscribe).await?;
        s.assignment().await?;
        let e = s.partition_error().await?;
        ensure_reported(&e, 0, d.first, d.end)?;
        match s.next().await? {
            Frame::Records(r) => ensure!(offsets(&r)? == vec![d.end], "{r:?}"),
            other => bail!("expected the records after the range, got {other:?}"),
        }
        ensure!(s.machine.remaining_credit() <= 0);
        s.stream.expect_quiet(QUIET).await?;

        // No credit at all: the report still comes.
        let subscribe = subscribe_partition("demo.u31", 1, StartPosition::Earliest, 0);
        let mut s = Checked::open(&alice, subscribe).await?;
        s.assignment().await?;
        ensure!(s.machine.remaining_credit() <= 0);
        let e = s.partition_error().await?;
        ensure_reported(&e, 1, 0, PartitionError::END_UNKNOWN)
    })
    .await
}

/// [U38] "Damaged partitions": records in a segment whose data key was
/// destroyed are reported like damage, with `key_destroyed`, for that
/// partition only. Partition 0 of a topic with its own key has records
/// under version 1 only; version 2 becomes active and version 1 is
/// destroyed (its segment is sealed), then both partitions take records
/// under version 2. A group subscription from the earliest offset
/// delivers every record of partition 1, reports `[0, 5)` of partition 0
/// with `key_destroyed`, and with `SKIP_DAMAGED` goes on at offset 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u38_records_of_a_destroyed_key_are_reported_per_partition() -> Result<()> {
    const TOPIC: &str = "demo.u38";
    const SHREDDED: u64 = 5;
    const LATER: u64 = 3;
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let config = TopicConfig {
            dedicated_kek: true,
            ..topic_config(2)
        };
        admin.create_topic_with(TOPIC, config).await?;
        for offset in 0..SHREDDED {
            admin.append(TOPIC, 0, record(0, offset)).await?;
        }
        let topic = Some(TOPIC.to_owned());
        admin
            .ok(AdminRequest::KeyRotate {
                topic: topic.clone(),
            })
            .await?;
        admin
            .ok(AdminRequest::KeyDestroy {
                topic,
                version: 1,
                force: true,
            })
            .await?;
        for offset in 0..LATER {
            admin.append(TOPIC, 1, record(1, offset)).await?;
            admin.append(TOPIC, 0, record(0, SHREDDED + offset)).await?;
        }

        let alice = broker.session(ALICE).await?;
        let mut s = Checked::open(
            &alice,
            Subscribe {
                skip_damaged: true,
                ..subscribe_group(TOPIC, "readers", StartPosition::Earliest, PLENTY)
            },
        )
        .await?;
        ensure!(s.assignment().await?.partitions.len() == 2);
        let mut delivered = [Vec::new(), Vec::new()];
        let mut reported = Vec::new();
        while delivered[0].len() < LATER as usize || delivered[1].len() < LATER as usize {
            match s.next().await? {
                Frame::Records(r) => delivered[r.partition as usize].extend(offsets(&r)?),
                Frame::PartitionError(e) => reported.push(e),
                other => bail!("{other:?}"),
            }
        }
        ensure!(
            delivered[1] == (0..LATER).collect::<Vec<_>>(),
            "{delivered:?}"
        );
        ensure!(
            delivered[0] == (SHREDDED..SHREDDED + LATER).collect::<Vec<_>>(),
            "{delivered:?}"
        );
        ensure!(reported.len() == 1, "{reported:?}");
        let e = &reported[0];
        ensure!(
            e.partition == 0
                && e.code == ErrorCode::KeyDestroyed.as_u16()
                && e.first_offset == 0
                && e.end_offset == SHREDDED
                && !e.message.is_empty(),
            "expected 0: key_destroyed [0, {SHREDDED}), got {e:?}"
        );
        Ok(())
    })
    .await
}
