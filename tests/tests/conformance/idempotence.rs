//! docs/PROTOCOL.md, "Idempotent producers".

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::ProducerStamp;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::produce::ProduceAck;
use strongbox_protocol::frames::subscribe::StartPosition;

use crate::harness::*;

async fn init(session: &Session, previous: Option<u64>) -> Result<(u64, u16)> {
    match session
        .ok(AdminRequest::InitProducer {
            producer_id: previous,
        })
        .await?
    {
        AdminResponse::Producer { producer_id, epoch } => Ok((producer_id, epoch)),
        other => bail!("{other:?}"),
    }
}

fn stamp(producer_id: u64, epoch: u16, base_sequence: u32) -> ProducerStamp {
    ProducerStamp {
        producer_id,
        epoch,
        base_sequence,
    }
}

/// Sends a stamped batch of `count` records; the answer.
async fn send(session: &Session, s: ProducerStamp, count: u32) -> Result<Frame> {
    session
        .produce_one("demo.greetings", 0, stamped(s, count))
        .await
}

async fn ack(session: &Session, s: ProducerStamp, count: u32) -> Result<ProduceAck> {
    match send(session, s, count).await? {
        Frame::ProduceAck(a) => Ok(a),
        other => bail!("{s:?}: expected ProduceAck, got {other:?}"),
    }
}

async fn refused(session: &Session, s: ProducerStamp, count: u32, code: ErrorCode) -> Result<()> {
    match send(session, s, count).await? {
        Frame::Error(e) if e.code == code.as_u16() => Ok(()),
        other => bail!("{s:?}: expected Error {code}, got {other:?}"),
    }
}

/// The high watermark of demo.greetings/0.
async fn end_offset(session: &Session) -> Result<u64> {
    let mut sub = session
        .subscribe(subscribe_partition(
            "demo.greetings",
            0,
            StartPosition::Latest,
            1,
        ))
        .await?;
    match sub.next().await? {
        Frame::Assignment(a) => Ok(a.partitions[0].next_offset),
        other => bail!("{other:?}"),
    }
}

/// Waits until the audit trail holds a `producer.deny` record with
/// `reason`.
async fn audited(admin: &Session, reason: &str) -> Result<()> {
    admin
        .audited(&["\"producer.deny\"", &format!("\"reason\":\"{reason}\"")])
        .await
}

/// [I1] "Idempotent producers": `InitProducer` from a principal that may
/// publish on no topic is `not_authorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_init_producer_needs_publish_somewhere() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let bob = broker.session(BOB).await?;
        bob.refused(
            AdminRequest::InitProducer { producer_id: None },
            ErrorCode::NotAuthorized,
        )
        .await?;
        let alice = broker.session(ALICE).await?;
        init(&alice, None).await?;
        let admin = broker.session(ADMIN).await?;
        init(&admin, None).await.map(drop)
    })
    .await
}

/// [I2] "Idempotent producers": a batch stamped with another principal's
/// producer id is `producer_not_owned`, and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i2_another_principals_id_is_producer_not_owned() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        let admin = broker.session(ADMIN).await?;
        refused(&admin, stamp(id, epoch, 0), 1, ErrorCode::ProducerNotOwned).await?;
        // Its owner is unaffected.
        ack(&alice, stamp(id, epoch, 0), 1).await?;
        audited(&admin, "not_owned").await
    })
    .await
}

/// [I3] "Idempotent producers": `InitProducer` resuming another
/// principal's id is `producer_not_owned` and does not fence its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_resuming_another_principals_id_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        let admin = broker.session(ADMIN).await?;
        admin
            .refused(
                AdminRequest::InitProducer {
                    producer_id: Some(id),
                },
                ErrorCode::ProducerNotOwned,
            )
            .await?;
        // The epoch did not move: alice's batches are still accepted.
        ack(&alice, stamp(id, epoch, 0), 2).await?;
        ack(&alice, stamp(id, epoch, 2), 1).await?;
        Ok(())
    })
    .await
}

/// [I4] "Idempotent producers": an epoch newer than any issued is
/// `invalid_producer_epoch`, audited, and fences nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i4_an_epoch_never_issued_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        ack(&alice, stamp(id, epoch, 0), 1).await?;
        refused(
            &alice,
            stamp(id, epoch + 1, 0),
            1,
            ErrorCode::InvalidProducerEpoch,
        )
        .await?;
        refused(
            &alice,
            stamp(id, u16::MAX, 0),
            1,
            ErrorCode::InvalidProducerEpoch,
        )
        .await?;
        // The producer with the issued epoch goes on.
        ack(&alice, stamp(id, epoch, 1), 1).await?;
        let admin = broker.session(ADMIN).await?;
        audited(&admin, "epoch_not_issued").await
    })
    .await
}

/// [I5] "Idempotent producers": an unknown producer id is
/// `unknown_producer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i5_an_unknown_id_is_unknown_producer() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        refused(&alice, stamp(999_999, 0, 0), 1, ErrorCode::UnknownProducer).await?;
        alice
            .refused(
                AdminRequest::InitProducer {
                    producer_id: Some(999_999),
                },
                ErrorCode::UnknownProducer,
            )
            .await
            .map(drop)
    })
    .await
}

/// [I6] "Idempotent producers": an epoch older than the current one is
/// `producer_fenced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_an_older_epoch_is_fenced() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, old) = init(&alice, None).await?;
        ack(&alice, stamp(id, old, 0), 1).await?;
        let (_, new) = init(&alice, Some(id)).await?;
        ack(&alice, stamp(id, new, 0), 1).await?;
        refused(&alice, stamp(id, old, 1), 1, ErrorCode::ProducerFenced).await
    })
    .await
}

/// [I7] "Idempotent producers": the next expected sequence (or 0 in a new
/// epoch) is appended with `duplicate` = 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i7_the_next_sequence_is_appended() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        let first = ack(&alice, stamp(id, epoch, 0), 3).await?;
        let second = ack(&alice, stamp(id, epoch, 3), 2).await?;
        ensure!(!first.duplicate && !second.duplicate);
        ensure!(second.base_offset == first.base_offset + 3);
        Ok(())
    })
    .await
}

/// [I8] "Idempotent producers": a retry of an appended batch is
/// acknowledged with its original offset and `duplicate` = 1, and nothing
/// is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i8_a_retry_is_a_duplicate_not_a_second_copy() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        let first = ack(&alice, stamp(id, epoch, 0), 3).await?;
        ack(&alice, stamp(id, epoch, 3), 1).await?;
        let end = end_offset(&alice).await?;
        let retry = ack(&alice, stamp(id, epoch, 0), 3).await?;
        ensure!(
            retry.duplicate && retry.base_offset == first.base_offset,
            "{retry:?}"
        );
        ensure!(end_offset(&alice).await? == end, "nothing was appended");
        Ok(())
    })
    .await
}

/// [I9] "Idempotent producers": any other sequence is
/// `out_of_order_sequence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i9_a_gap_is_out_of_order() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        ack(&alice, stamp(id, epoch, 0), 3).await?;
        refused(
            &alice,
            stamp(id, epoch, 5),
            1,
            ErrorCode::OutOfOrderSequence,
        )
        .await?;
        refused(
            &alice,
            stamp(id, epoch, 1),
            3,
            ErrorCode::OutOfOrderSequence,
        )
        .await?;
        // A new epoch must start at 0.
        let (_, new) = init(&alice, Some(id)).await?;
        refused(&alice, stamp(id, new, 3), 1, ErrorCode::OutOfOrderSequence).await
    })
    .await
}

/// [I10] "Idempotent producers": `InitProducer` with a previous id returns
/// it with the next epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i10_resuming_bumps_the_epoch() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let (id, epoch) = init(&alice, None).await?;
        ensure!(epoch == 0);
        ensure!(init(&alice, Some(id)).await? == (id, 1));
        ensure!(init(&alice, Some(id)).await? == (id, 2));
        let (other, _) = init(&alice, None).await?;
        ensure!(other != id, "a new id each time none is given");
        Ok(())
    })
    .await
}

/// [I11] "Idempotent producers": the broker remembers at least the last
/// `max_in_flight` batches of a producer: with `max_in_flight` 4, a retry
/// of any of the last four is acknowledged as a duplicate with its
/// original offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i11_the_last_max_in_flight_batches_are_remembered() -> Result<()> {
    let broker = Broker::start_with(&[("max_in_flight", "4")])?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        ensure!(alice.welcome.max_in_flight == 4, "{:?}", alice.welcome);
        let (id, epoch) = init(&alice, None).await?;
        let mut offsets = Vec::new();
        for sequence in 0..8 {
            offsets.push(
                ack(&alice, stamp(id, epoch, sequence), 1)
                    .await?
                    .base_offset,
            );
        }
        let end = end_offset(&alice).await?;
        for sequence in (4..8).rev() {
            let retry = ack(&alice, stamp(id, epoch, sequence), 1).await?;
            ensure!(
                retry.duplicate && retry.base_offset == offsets[sequence as usize],
                "sequence {sequence}: {retry:?}"
            );
        }
        ensure!(end_offset(&alice).await? == end, "nothing was appended");
        Ok(())
    })
    .await
}
