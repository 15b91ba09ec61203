//! docs/PROTOCOL.md, "Subscription stream" and the `Subscribe` layout.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::subscribe::{
    Assignment, Commit, CommitAck, Credit, Records, StartPosition, Subscribe, SubscriptionEnd,
    Unsubscribe,
};
use strongbox_protocol::session::subscribe::{SubscriberEvent, SubscriberSession};
use strongbox_tests::Signal;

use crate::harness::*;

async fn assignment(s: &mut Stream) -> Result<Assignment> {
    match s.next().await? {
        Frame::Assignment(a) => Ok(a),
        other => bail!("expected Assignment, got {other:?}"),
    }
}

async fn records(s: &mut Stream) -> Result<Records> {
    match s.next().await? {
        Frame::Records(r) => Ok(r),
        other => bail!("expected Records, got {other:?}"),
    }
}

async fn end(s: &mut Stream) -> Result<SubscriptionEnd> {
    match s.next().await? {
        Frame::SubscriptionEnd(e) => Ok(e),
        other => bail!("expected SubscriptionEnd, got {other:?}"),
    }
}

/// A batch of one record per timestamp.
fn batch_at(timestamps: &[i64]) -> Bytes {
    let mut b = BatchBuilder::new(timestamps[0]);
    for t in timestamps {
        b.push(*t, None, &[], b"v").expect("record fits");
    }
    b.finish().expect("batch encodes")
}

/// A topic `name` with `partitions` partitions, created by the admin.
async fn topic(broker: &Broker, name: &str, partitions: u32) -> Result<Session> {
    let admin = broker.session(ADMIN).await?;
    admin.create_topic(name, partitions).await?;
    Ok(admin)
}

/// [U1] "Subscription stream": `Subscribe` is answered with `Assignment`
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_subscribe_is_answered_with_assignment() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u1", 1).await?;
        admin.append("demo.u1", 0, batch(&["a"])).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.u1",
                0,
                StartPosition::Earliest,
                1 << 20,
            ))
            .await?;
        let a = assignment(&mut s).await?;
        ensure!(a.partitions.len() == 1 && a.partitions[0].partition == 0);
        records(&mut s).await.map(drop)
    })
    .await
}

/// Expects `subscribe` refused with `code`, ending the stream with an error.
async fn refused(session: &Session, subscribe: Subscribe, code: ErrorCode) -> Result<()> {
    let mut s = session.subscribe(subscribe).await?;
    s.expect_ended_with(code).await.map(drop)
}

/// [U2] "Subscription stream": a subscription the ACL does not allow is
/// refused with `not_authorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_not_authorized() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        topic(&broker, "other.u2", 1).await?;
        let alice = broker.session(ALICE).await?;
        refused(
            &alice,
            subscribe_partition("other.u2", 0, StartPosition::Earliest, 1),
            ErrorCode::NotAuthorized,
        )
        .await
    })
    .await
}

/// [U3] "Subscription stream": a topic that does not exist is
/// `unknown_topic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u3_unknown_topic() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        refused(
            &alice,
            subscribe_partition("demo.none", 0, StartPosition::Earliest, 1),
            ErrorCode::UnknownTopic,
        )
        .await?;
        refused(
            &alice,
            subscribe_group("demo.none", "g", StartPosition::Earliest, 1),
            ErrorCode::UnknownTopic,
        )
        .await
    })
    .await
}

/// [U4] "Subscription stream": a partition the topic does not have is
/// `unknown_partition`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u4_unknown_partition() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        topic(&broker, "demo.u4", 2).await?;
        let alice = broker.session(ALICE).await?;
        refused(
            &alice,
            subscribe_partition("demo.u4", 2, StartPosition::Earliest, 1),
            ErrorCode::UnknownPartition,
        )
        .await
    })
    .await
}

/// [U5] "Subscribe": a group name that is not 1 to 249 bytes of ASCII
/// letters, digits, `.`, `_`, `-`, `:` is `invalid_group`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u5_invalid_group_names() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        topic(&broker, "demo.u5", 1).await?;
        let alice = broker.session(ALICE).await?;
        let too_long = "g".repeat(250);
        for name in ["", "a b", "a/b", "é", "tab\t", too_long.as_str()] {
            refused(
                &alice,
                subscribe_group("demo.u5", name, StartPosition::Earliest, 1),
                ErrorCode::InvalidGroup,
            )
            .await?;
        }
        let longest = "g".repeat(249);
        for name in ["svc:payments.v2_-9", longest.as_str()] {
            let mut s = alice
                .subscribe(subscribe_group("demo.u5", name, StartPosition::Earliest, 1))
                .await?;
            assignment(&mut s).await?;
        }
        Ok(())
    })
    .await
}

/// [U6] "Subscription stream": a start offset outside the retained range
/// is `offset_out_of_range`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u6_offset_out_of_range() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u6", 1).await?;
        admin.append("demo.u6", 0, batch(&["a", "b"])).await?;
        let alice = broker.session(ALICE).await?;
        refused(
            &alice,
            subscribe_partition("demo.u6", 0, StartPosition::Offset(3), 1),
            ErrorCode::OffsetOutOfRange,
        )
        .await?;
        // The high watermark itself is in range (read what comes next).
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.u6",
                0,
                StartPosition::Offset(2),
                1,
            ))
            .await?;
        ensure!(assignment(&mut s).await?.partitions[0].next_offset == 2);
        Ok(())
    })
    .await
}

/// [U7] "Subscription stream": a single-partition subscription's one
/// `Assignment` has generation 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u7_a_single_partition_assignment_has_generation_0() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Latest,
                1,
            ))
            .await?;
        let a = assignment(&mut s).await?;
        ensure!(a.generation == 0, "{a:?}");
        Ok(())
    })
    .await
}

/// [U8] "Subscription stream": a group's `Assignment`s have a generation
/// of at least 1 that grows with every rebalance; each replaces the
/// previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u8_group_generations_grow_with_rebalances() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        topic(&broker, "demo.u8", 2).await?;
        let alice = broker.session(ALICE).await?;
        let mut first = alice
            .subscribe(subscribe_group("demo.u8", "g", StartPosition::Earliest, 1))
            .await?;
        let a1 = assignment(&mut first).await?;
        ensure!(a1.generation >= 1, "{a1:?}");
        ensure!(
            a1.partitions
                .iter()
                .map(|p| p.partition)
                .collect::<Vec<_>>()
                == vec![0, 1]
        );
        let mut second = alice
            .subscribe(subscribe_group("demo.u8", "g", StartPosition::Earliest, 1))
            .await?;
        let b = assignment(&mut second).await?;
        let a2 = assignment(&mut first).await?;
        ensure!(a2.generation > a1.generation, "{a1:?} then {a2:?}");
        ensure!(b.generation == a2.generation, "{b:?} vs {a2:?}");
        let mut owned: Vec<u32> = a2
            .partitions
            .iter()
            .chain(&b.partitions)
            .map(|p| p.partition)
            .collect();
        owned.sort_unstable();
        ensure!(
            owned == vec![0, 1],
            "each partition has one owner: {a2:?} {b:?}"
        );
        ensure!(
            a2.partitions.len() == 1,
            "the new assignment replaces the old: {a2:?}"
        );
        Ok(())
    })
    .await
}

/// [U9] "Subscription stream": a group resumes a partition from its
/// committed offset, whatever `start` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u9_a_group_resumes_from_its_committed_offset() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u9", 1).await?;
        admin
            .append("demo.u9", 0, batch(&["a", "b", "c", "d"]))
            .await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_group(
                "demo.u9",
                "resume",
                StartPosition::Earliest,
                1,
            ))
            .await?;
        ensure!(assignment(&mut s).await?.partitions[0].next_offset == 0);
        s.send(&Frame::Commit(Commit {
            partition: 0,
            offset: 3,
        }))
        .await?;
        loop {
            match s.next().await? {
                Frame::CommitAck(ack) => {
                    ensure!(ack.code == 0, "{ack:?}");
                    break;
                }
                Frame::Records(_) => {}
                other => bail!("{other:?}"),
            }
        }
        s.send(&Frame::Unsubscribe(Unsubscribe)).await?;
        s.finish()?;
        ensure!(end(&mut s).await?.code == 0);
        let mut again = alice
            .subscribe(subscribe_group(
                "demo.u9",
                "resume",
                StartPosition::Latest,
                1,
            ))
            .await?;
        // Until the first member has left, the partition may still be its.
        loop {
            let a = assignment(&mut again).await?;
            if let Some(p) = a.partitions.first() {
                ensure!(p.next_offset == 3, "{a:?}");
                return Ok(());
            }
        }
    })
    .await
}

/// [U10] "Subscription stream": where reading starts without a committed
/// offset: `earliest` the oldest record, `latest` the high watermark,
/// `offset` that offset, `timestamp` the first record at or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u10_start_positions() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u10", 1).await?;
        admin
            .append("demo.u10", 0, batch_at(&[1_000, 1_001]))
            .await?;
        admin.append("demo.u10", 0, batch_at(&[2_000])).await?;
        admin
            .append("demo.u10", 0, batch_at(&[3_000, 3_001, 3_002]))
            .await?;
        let alice = broker.session(ALICE).await?;
        for (start, expected) in [
            (StartPosition::Earliest, 0),
            (StartPosition::Latest, 6),
            (StartPosition::Offset(4), 4),
            (StartPosition::Timestamp(1_500), 2),
            (StartPosition::Timestamp(3_001), 4),
            (StartPosition::Timestamp(9_000), 6),
        ] {
            let mut s = alice
                .subscribe(subscribe_partition("demo.u10", 0, start, 1))
                .await?;
            let a = assignment(&mut s).await?;
            ensure!(a.partitions[0].next_offset == expected, "{start:?}: {a:?}");
        }
        Ok(())
    })
    .await
}

/// [U11] "Subscription stream": a start inside a batch gets the whole
/// batch that holds `next_offset`, unchanged, with its own base offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u11_a_start_inside_a_batch_sends_the_whole_batch() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u11", 1).await?;
        let written = batch(&["zero", "one", "two"]);
        admin.append("demo.u11", 0, written.clone()).await?;
        let alice = broker.session(ALICE).await?;
        for start in [
            StartPosition::Offset(1),
            StartPosition::Timestamp(1_700_000_000_002),
        ] {
            let mut s = alice
                .subscribe(subscribe_partition("demo.u11", 0, start, 1 << 20))
                .await?;
            let a = assignment(&mut s).await?;
            let next = a.partitions[0].next_offset;
            ensure!(next == 1 || next == 2, "{a:?}");
            let r = records(&mut s).await?;
            ensure!(r.batches[0].base_offset == 0, "{r:?}");
            ensure!(r.batches[0].batch == written, "the batch is sent unchanged");
        }
        Ok(())
    })
    .await
}

/// [U13] "Subscription stream": `Records` only while the credit is above
/// zero, each frame's whole encoded size subtracted; more after `Credit`,
/// whose sum saturates at 2^63 − 1. The client's own session machine
/// checks every frame against its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u13_records_only_within_credit() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u13", 1).await?;
        for i in 0..8 {
            admin.append("demo.u13", 0, batch_of_size(500 + i)).await?;
        }
        let alice = broker.session(ALICE).await?;
        let subscribe = subscribe_partition("demo.u13", 0, StartPosition::Earliest, 1);
        let (mut machine, _) = SubscriberSession::new(subscribe.clone());
        let mut s = alice.subscribe(subscribe).await?;
        let mut batches = 0;
        let feed = |frame: Frame, machine: &mut SubscriberSession| -> Result<usize> {
            match machine.handle_frame(frame) {
                Ok(SubscriberEvent::Records(r)) => Ok(r.batches.len()),
                Ok(_) => Ok(0),
                Err(v) => bail!("the broker broke the credit rules: {v}"),
            }
        };
        feed(s.next().await?, &mut machine)?;
        // One byte of credit: one frame, then nothing.
        batches += feed(s.next().await?, &mut machine)?;
        ensure!(machine.remaining_credit() <= 0);
        s.expect_quiet(Duration::from_millis(300)).await?;
        while batches < 8 {
            // Enough for about one frame at a time.
            let frame = machine.grant(600).expect("credit frame");
            s.send(&frame).await?;
            while machine.remaining_credit() > 0 && batches < 8 {
                batches += feed(s.next().await?, &mut machine)?;
            }
        }
        ensure!(batches == 8);
        s.send(&Frame::Credit(Credit { bytes: 1 << 20 })).await?;
        s.expect_quiet(Duration::from_millis(200)).await?;
        // Credit saturates at 2^63 − 1: two grants of 2^64 − 1 leave it
        // positive (a sum that wrapped would stop the records).
        s.send_all(&[
            Frame::Credit(Credit { bytes: u64::MAX }),
            Frame::Credit(Credit { bytes: u64::MAX }),
        ])
        .await?;
        for i in 0..3 {
            admin.append("demo.u13", 0, batch_of_size(500 + i)).await?;
            ensure!(matches!(s.next().await?, Frame::Records(_)));
        }
        Ok(())
    })
    .await
}

/// [U15] "Subscription stream": `Records` frames hold at least one batch
/// of an assigned partition, base offsets strictly increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u15_records_follow_the_assignment_in_offset_order() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u15", 3).await?;
        let mut producer = admin.open().await?;
        let frames: Vec<Frame> = (0..60u64)
            .map(|i| produce(i + 1, "demo.u15", (i % 3) as u32, batch(&["a", "b"])))
            .collect();
        producer.send_all(&frames).await?;
        for _ in 0..60 {
            ensure!(matches!(producer.next().await?, Frame::ProduceAck(_)));
        }
        let alice = broker.session(ALICE).await?;
        let subscribe = subscribe_group("demo.u15", "order", StartPosition::Earliest, 4096);
        let (mut machine, _) = SubscriberSession::new(subscribe.clone());
        let mut s = alice.subscribe(subscribe).await?;
        let mut per_partition = [0usize; 3];
        while per_partition.iter().sum::<usize>() < 60 {
            let frame = s.next().await?;
            if let Frame::Records(r) = &frame {
                per_partition[r.partition as usize] += r.batches.len();
            }
            // The client machine refuses empty frames, unassigned
            // partitions and offsets that do not increase.
            match machine.handle_frame(frame) {
                Ok(SubscriberEvent::Records(r)) => {
                    let cost = r.credit_cost();
                    if let Some(credit) = machine.grant(cost) {
                        s.send(&credit).await?;
                    }
                }
                Ok(_) => {}
                Err(v) => bail!("{v}"),
            }
        }
        ensure!(per_partition == [20, 20, 20], "{per_partition:?}");
        Ok(())
    })
    .await
}

async fn commit_ack(s: &mut Stream) -> Result<CommitAck> {
    loop {
        match s.next().await? {
            Frame::CommitAck(ack) => return Ok(ack),
            Frame::Records(_) => {}
            other => bail!("expected CommitAck, got {other:?}"),
        }
    }
}

/// [U35] "Subscription stream": the broker reads no further frame of the
/// stream before its answer to `Subscribe`: a `Commit` sent in the same
/// write as a group's `Subscribe` is handled after the `Assignment` (so the
/// partition is assigned), and `Unsubscribe` with the finish right behind
/// `Subscribe` still gets the `Assignment` first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u35_frames_after_subscribe_are_handled_after_the_answer() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u35", 1).await?;
        admin.append("demo.u35", 0, batch(&["a", "b"])).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send_all(&[
            Frame::Subscribe(subscribe_group(
                "demo.u35",
                "eager",
                StartPosition::Earliest,
                1,
            )),
            Frame::Commit(Commit {
                partition: 0,
                offset: 1,
            }),
        ])
        .await?;
        ensure!(assignment(&mut s).await?.partitions.len() == 1);
        let ack = commit_ack(&mut s).await?;
        ensure!(
            ack.code == 0,
            "the commit came after the assignment: {ack:?}"
        );

        let mut s = alice.open().await?;
        s.send_all(&[
            Frame::Subscribe(subscribe_partition("demo.u35", 0, StartPosition::Latest, 1)),
            Frame::Unsubscribe(Unsubscribe),
        ])
        .await?;
        s.finish()?;
        assignment(&mut s).await?;
        ensure!(end(&mut s).await?.code == 0);
        s.expect_finished().await
    })
    .await
}

/// [U36] "Subscription stream": a `Commit` of an offset past the
/// partition's high watermark is answered with `offset_out_of_range`, and
/// the stream goes on; the high watermark itself is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u36_a_commit_past_the_end_is_offset_out_of_range() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u36", 1).await?;
        admin.append("demo.u36", 0, batch(&["a", "b", "c"])).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_group("demo.u36", "c", StartPosition::Earliest, 1))
            .await?;
        assignment(&mut s).await?;
        s.send_all(&[
            Frame::Commit(Commit {
                partition: 0,
                offset: 4,
            }),
            Frame::Commit(Commit {
                partition: 0,
                offset: u64::MAX,
            }),
            Frame::Commit(Commit {
                partition: 0,
                offset: 3,
            }),
        ])
        .await?;
        for (offset, code) in [
            (4, ErrorCode::OffsetOutOfRange.as_u16()),
            (u64::MAX, ErrorCode::OffsetOutOfRange.as_u16()),
            (3, 0),
        ] {
            let ack = commit_ack(&mut s).await?;
            ensure!(ack.offset == offset && ack.code == code, "{ack:?}");
        }
        Ok(())
    })
    .await
}

/// [U17] "Subscription stream": each `Commit` is answered in order with a
/// `CommitAck` for the same partition and offset, code 0 once stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u17_commits_are_acknowledged_in_order() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u17", 2).await?;
        admin.append("demo.u17", 0, batch(&["a", "b", "c"])).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_group("demo.u17", "c", StartPosition::Earliest, 1))
            .await?;
        assignment(&mut s).await?;
        let commits = [(0u32, 1u64), (1, 0), (0, 3)];
        let frames: Vec<Frame> = commits
            .iter()
            .map(|&(partition, offset)| Frame::Commit(Commit { partition, offset }))
            .collect();
        s.send_all(&frames).await?;
        for (partition, offset) in commits {
            let ack = commit_ack(&mut s).await?;
            ensure!(
                ack == CommitAck {
                    partition,
                    offset,
                    code: 0
                },
                "{ack:?}"
            );
        }
        Ok(())
    })
    .await
}

/// [U18] "Subscription stream": a `Commit` on a subscription that is not a
/// group's is answered with `invalid_request`, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u18_commit_without_a_group_is_invalid_request() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Latest,
                1,
            ))
            .await?;
        assignment(&mut s).await?;
        s.send(&Frame::Commit(Commit {
            partition: 0,
            offset: 0,
        }))
        .await?;
        ensure!(commit_ack(&mut s).await?.code == ErrorCode::InvalidRequest.as_u16());
        s.send(&Frame::Unsubscribe(Unsubscribe)).await?;
        s.finish()?;
        ensure!(end(&mut s).await?.code == 0);
        Ok(())
    })
    .await
}

/// [U19] "Subscription stream": a `Commit` for a partition not assigned to
/// this member is answered with `not_assigned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u19_commit_for_an_unassigned_partition_is_not_assigned() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        topic(&broker, "demo.u19", 2).await?;
        let alice = broker.session(ALICE).await?;
        let mut first = alice
            .subscribe(subscribe_group("demo.u19", "c", StartPosition::Earliest, 1))
            .await?;
        assignment(&mut first).await?;
        let mut second = alice
            .subscribe(subscribe_group("demo.u19", "c", StartPosition::Earliest, 1))
            .await?;
        let mine = assignment(&mut second).await?;
        let now = assignment(&mut first).await?;
        let foreign = mine.partitions[0].partition;
        ensure!(now.partitions.iter().all(|p| p.partition != foreign));
        first
            .send(&Frame::Commit(Commit {
                partition: foreign,
                offset: 0,
            }))
            .await?;
        ensure!(commit_ack(&mut first).await?.code == ErrorCode::NotAssigned.as_u16());
        first
            .send(&Frame::Commit(Commit {
                partition: 9,
                offset: 0,
            }))
            .await?;
        ensure!(commit_ack(&mut first).await?.code == ErrorCode::NotAssigned.as_u16());
        Ok(())
    })
    .await
}

/// [U21] "Subscription stream": after `Unsubscribe`, `SubscriptionEnd`
/// code 0 comes once the client has finished its send side, then the
/// broker finishes. (That no `Records` follow a read `Unsubscribe` is the
/// broker session machine's rule, `broker_subscription_follows_the_rules`
/// in protocol/tests/session_props.rs: the wire gives no moment to test it
/// at.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u21_unsubscribe_then_finish_ends_with_code_0() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Latest,
                1 << 20,
            ))
            .await?;
        assignment(&mut s).await?;
        s.send(&Frame::Unsubscribe(Unsubscribe)).await?;
        // Not before the client's finish: the stream is still open.
        s.expect_quiet(Duration::from_millis(300)).await?;
        s.finish()?;
        let e = end(&mut s).await?;
        ensure!(e.code == 0, "{e:?}");
        s.expect_finished().await
    })
    .await
}

/// [U22] "Subscription stream": a frame after `Unsubscribe` is
/// `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u22_a_frame_after_unsubscribe_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Latest,
                1,
            ))
            .await?;
        assignment(&mut s).await?;
        s.send_all(&[
            Frame::Unsubscribe(Unsubscribe),
            Frame::Credit(Credit { bytes: 10 }),
        ])
        .await?;
        s.expect_ended_with(ErrorCode::ProtocolViolation)
            .await
            .map(drop)
    })
    .await
}

/// [U23] "Subscription stream": finishing the send side without
/// `Unsubscribe` ends the subscription the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u23_finishing_without_unsubscribe_ends_normally() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Latest,
                1,
            ))
            .await?;
        assignment(&mut s).await?;
        s.finish()?;
        ensure!(end(&mut s).await?.code == 0);
        s.expect_finished().await
    })
    .await
}

/// [U24] "Subscription stream": deleting the topic ends its subscriptions
/// with `SubscriptionEnd` `unknown_topic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u24_deleting_the_topic_ends_with_unknown_topic() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = topic(&broker, "demo.u24", 1).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice
            .subscribe(subscribe_partition("demo.u24", 0, StartPosition::Latest, 1))
            .await?;
        assignment(&mut s).await?;
        admin
            .ok(AdminRequest::DeleteTopic {
                name: "demo.u24".into(),
            })
            .await?;
        ensure!(end(&mut s).await?.code == ErrorCode::UnknownTopic.as_u16());
        s.expect_finished().await
    })
    .await
}

/// [U25] "Subscription stream": on shutdown every open subscription gets
/// `SubscriptionEnd` `shutting_down`, delivered before the connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u25_shutdown_ends_every_subscription_before_the_close() -> Result<()> {
    let mut broker = Broker::start()?;
    let outcome = with_log(&broker, async {
        let mut sessions = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..4 {
            let alice = broker.session(ALICE).await?;
            for p in 0..4 {
                let start = if p % 2 == 0 {
                    StartPosition::Latest
                } else {
                    StartPosition::Earliest
                };
                let mut s = alice
                    .subscribe(subscribe_partition("demo.greetings", 0, start, 1 << 20))
                    .await?;
                assignment(&mut s).await?;
                streams.push(s);
            }
            sessions.push(alice);
        }
        broker.process.signal(Signal::SIGTERM)?;
        for (i, s) in streams.iter_mut().enumerate() {
            let e = loop {
                match s.read().await {
                    Ok(Frame::SubscriptionEnd(e)) => break e,
                    Ok(Frame::Records(_)) => {}
                    other => bail!("subscription {i}: expected SubscriptionEnd, got {other:?}"),
                }
            };
            ensure!(
                e.code == ErrorCode::ShuttingDown.as_u16(),
                "subscription {i}: {e:?}"
            );
            s.expect_finished().await?;
        }
        for alice in &sessions {
            closed_with(&alice.conn, ErrorCode::ShuttingDown).await?;
        }
        Ok(())
    })
    .await;
    broker.process.terminate()?;
    outcome
}

/// [U26] "Subscription stream": a second `Subscribe` is `unexpected_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u26_a_second_subscribe_is_unexpected() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let subscribe = subscribe_partition("demo.greetings", 0, StartPosition::Latest, 1);
        let mut s = alice.subscribe(subscribe.clone()).await?;
        assignment(&mut s).await?;
        s.send(&Frame::Subscribe(subscribe)).await?;
        s.expect_ended_with(ErrorCode::UnexpectedFrame)
            .await
            .map(drop)
    })
    .await
}

/// [U27] "Subscription stream": a frame of another stream kind is
/// `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u27_another_kind_of_frame_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        for wrong in [
            produce(1, "demo.greetings", 0, batch(&["x"])),
            Frame::Request(AdminRequest::WhoAmI),
            hello(),
        ] {
            let mut s = alice
                .subscribe(subscribe_partition(
                    "demo.greetings",
                    0,
                    StartPosition::Latest,
                    1,
                ))
                .await?;
            assignment(&mut s).await?;
            s.send(&wrong).await?;
            s.expect_ended_with(ErrorCode::ProtocolViolation).await?;
        }
        Ok(())
    })
    .await
}

/// [B1] "Subscribe": a `start_value` other than 0 for `earliest` or
/// `latest` is `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_start_value_must_be_zero_for_earliest_and_latest() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        for start in [StartPosition::Earliest, StartPosition::Latest] {
            let mut body = body_of(&Frame::Subscribe(subscribe_partition(
                "demo.greetings",
                0,
                start,
                1,
            )));
            // topic 2 + 14, target 1, partition 4, start 1, then the value.
            let value_at = 2 + 14 + 1 + 4 + 1;
            body[value_at + 7] = 5;
            let mut s = alice.open().await?;
            s.send_raw(&raw_frame(0x0020, &body)).await?;
            s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        }
        Ok(())
    })
    .await
}

/// [B2] "Subscribe": `flags` bits other than bit 0 (`SKIP_DAMAGED`) MUST
/// be zero; a set bit is `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_unknown_subscribe_flags_are_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let body = body_of(&Frame::Subscribe(subscribe_partition(
            "demo.greetings",
            0,
            StartPosition::Latest,
            1,
        )));
        // The flags byte is the last one of the body.
        let flags_at = body.len() - 1;
        for flags in [0x02u8, 0x03, 0x80] {
            let mut bad = body.clone();
            bad[flags_at] = flags;
            let mut s = alice.open().await?;
            s.send_raw(&raw_frame(0x0020, &bad)).await?;
            s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        }
        // `SKIP_DAMAGED` alone is accepted.
        let mut good = body;
        good[flags_at] = 0x01;
        let mut s = alice.open().await?;
        s.send_raw(&raw_frame(0x0020, &good)).await?;
        assignment(&mut s).await.map(drop)
    })
    .await
}
