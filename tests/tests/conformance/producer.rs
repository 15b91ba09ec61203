//! docs/PROTOCOL.md, "Producer stream".

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::{BatchBuilder, ProducerStamp};
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::subscribe::{Credit, StartPosition};
use strongbox_protocol::model::TopicConfig;
use strongbox_tests::Signal;

use crate::damage::{Damage, damaged_topic, record};
use crate::harness::*;

/// Reads answers until `count` have arrived; (correlation id, error code
/// or 0) each.
async fn answers(s: &mut Stream, count: usize) -> Result<Vec<(u64, u16)>> {
    let mut out = Vec::new();
    while out.len() < count {
        match s.next().await? {
            Frame::ProduceAck(a) => out.push((a.correlation_id, 0)),
            Frame::Error(e) => out.push((e.correlation_id, e.code)),
            other => bail!("on a producer stream: {other:?}"),
        }
    }
    Ok(out)
}

/// Counts the records stored in `topic`/`partition`.
async fn stored(session: &Session, topic: &str, partition: u32) -> Result<u64> {
    let mut sub = session
        .subscribe(subscribe_partition(
            topic,
            partition,
            StartPosition::Latest,
            1,
        ))
        .await?;
    match sub.next().await? {
        Frame::Assignment(a) => Ok(a.partitions[0].next_offset),
        other => bail!("{other:?}"),
    }
}

/// [P1] "Producer stream": every `Produce` is answered with `ProduceAck`
/// or `Error` carrying its correlation id, in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_answers_come_in_request_order() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("demo.p1", 3).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        let mut corrupt = batch(&["bad"]).to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let frames: Vec<Frame> = (1..=30u64)
            .map(|i| {
                let b = if i % 7 == 0 {
                    corrupt.clone().into()
                } else {
                    batch(&[&format!("r{i}")])
                };
                produce(i * 3, "demo.p1", (i % 3) as u32, b)
            })
            .collect();
        s.send_all(&frames).await?;
        let got = answers(&mut s, 30).await?;
        let expected: Vec<(u64, u16)> = (1..=30u64)
            .map(|i| {
                (
                    i * 3,
                    if i % 7 == 0 {
                        ErrorCode::CorruptBatch.as_u16()
                    } else {
                        0
                    },
                )
            })
            .collect();
        ensure!(got == expected, "{got:?}");
        Ok(())
    })
    .await
}

/// [P2] "Producer stream": a correlation id of 0 is `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_correlation_id_zero_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send(&produce(0, "demo.greetings", 0, batch(&["x"])))
            .await?;
        s.expect_ended_with(ErrorCode::ProtocolViolation)
            .await
            .map(drop)
    })
    .await
}

/// [P3] "Producer stream": a correlation id that does not increase is
/// `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_a_correlation_id_that_does_not_increase_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        for (first, second) in [(5, 5), (7, 6)] {
            let mut s = alice.open().await?;
            s.send_all(&[
                produce(first, "demo.greetings", 0, batch(&["a"])),
                produce(second, "demo.greetings", 0, batch(&["b"])),
            ])
            .await?;
            ensure!(answers(&mut s, 1).await? == vec![(first, 0)]);
            s.expect_ended_with(ErrorCode::ProtocolViolation).await?;
        }
        Ok(())
    })
    .await
}

/// [P4] "Producer stream": a `Produce` that arrives while `max_in_flight`
/// earlier ones are unanswered is `limit_exceeded`; the broker keeps
/// reading while its answers wait for the client's flow control, and
/// answers every `Produce` it read before the violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4_more_than_max_in_flight_is_limit_exceeded() -> Result<()> {
    let broker = Broker::start_with(&[("max_in_flight", "4")])?;
    with_log(&broker, async {
        let mut config = broker.client_config(ALICE)?;
        // A client that reads slowly: a stream window of about two answers.
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(60));
        config.transport_config(Arc::new(transport));
        let conn = broker.connect_with(config).await?;
        let alice = Session::establish(conn, hello()).await?;
        ensure!(alice.welcome.max_in_flight == 4);
        let mut s = alice.open().await?;
        let frames: Vec<Frame> = (1..=40)
            .map(|i| produce(i, "demo.greetings", 0, batch(&["x"])))
            .collect();
        // Written without reading a single answer.
        s.send_all(&frames).await?;
        let mut acked = Vec::new();
        let error = loop {
            match s.next().await? {
                Frame::ProduceAck(a) => acked.push(a.correlation_id),
                Frame::Error(e) => break e,
                other => bail!("{other:?}"),
            }
        };
        ensure!(
            error.correlation_id == 0 && error.code == ErrorCode::LimitExceeded.as_u16(),
            "{error:?}"
        );
        // Every Produce read before the violation was answered, in order,
        // and at least max_in_flight were in flight.
        ensure!(acked.len() >= 4 && acked.len() < 40, "{acked:?}");
        ensure!(
            acked == (1..=acked.len() as u64).collect::<Vec<_>>(),
            "{acked:?}"
        );
        s.expect_finished().await?;
        s.expect_stopped(ErrorCode::LimitExceeded).await?;
        // Exactly those were stored.
        ensure!(stored(&alice, "demo.greetings", 0).await? == acked.len() as u64);
        Ok(())
    })
    .await
}

/// [P5] "Producer stream": a per-request failure answers that correlation
/// id with `Error`, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_a_per_request_failure_leaves_the_stream_open() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("other.p5", 1).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send_all(&[
            produce(1, "other.p5", 0, batch(&["a"])),
            produce(2, "demo.none", 0, batch(&["b"])),
            produce(3, "demo.greetings", 7, batch(&["c"])),
            produce(4, "demo.greetings", 0, batch(&["d"])),
        ])
        .await?;
        let got = answers(&mut s, 4).await?;
        ensure!(
            got == vec![
                (1, ErrorCode::NotAuthorized.as_u16()),
                (2, ErrorCode::UnknownTopic.as_u16()),
                (3, ErrorCode::UnknownPartition.as_u16()),
                (4, 0),
            ],
            "{got:?}"
        );
        s.send(&produce(5, "demo.greetings", 0, batch(&["e"])))
            .await?;
        ensure!(answers(&mut s, 1).await? == vec![(5, 0)]);
        Ok(())
    })
    .await
}

/// [P6] "Producer stream": a stream-level violation is reported after
/// every `Produce` read before it is answered (none stored unanswered),
/// with `Error` correlation id 0, and the stream ends with a finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p6_a_violation_answers_every_batch_read_before_it() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("demo.p6", 1).await?;
        let alice = broker.session(ALICE).await?;
        // A wrong frame after five batches.
        let mut s = alice.open().await?;
        let mut frames: Vec<Frame> = (1..=5)
            .map(|i| produce(i, "demo.p6", 0, batch(&["x", "y"])))
            .collect();
        frames.push(Frame::Credit(Credit { bytes: 1 }));
        s.send_all(&frames).await?;
        ensure!(answers(&mut s, 5).await? == (1..=5).map(|i| (i, 0)).collect::<Vec<_>>());
        s.expect_ended_with(ErrorCode::ProtocolViolation).await?;
        // Undecodable bytes after three more.
        let mut s = alice.open().await?;
        let mut bytes = Vec::new();
        for i in 1..=3 {
            bytes.extend_from_slice(&produce(i, "demo.p6", 0, batch(&["z"])).to_bytes(1 << 22)?);
        }
        bytes.extend_from_slice(&raw_frame(0x0010, &[1, 2, 3]));
        s.send_raw(&bytes).await?;
        ensure!(answers(&mut s, 3).await? == vec![(1, 0), (2, 0), (3, 0)]);
        s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        // Everything acknowledged is stored, nothing else.
        ensure!(stored(&alice, "demo.p6", 0).await? == 5 * 2 + 3);
        Ok(())
    })
    .await
}

/// [P7] "Producer stream": when the client finishes its send side, the
/// broker answers what is in flight and finishes its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p7_finishing_answers_what_is_in_flight() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        let frames: Vec<Frame> = (1..=10)
            .map(|i| produce(i, "demo.greetings", 0, batch(&["x"])))
            .collect();
        s.send_all(&frames).await?;
        s.finish()?;
        ensure!(answers(&mut s, 10).await? == (1..=10).map(|i| (i, 0)).collect::<Vec<_>>());
        s.expect_finished().await
    })
    .await
}

/// [P8] "Producer stream": on shutdown the broker stops reading, answers
/// every `Produce` it read, and finishes the stream before the connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p8_shutdown_answers_every_batch_read() -> Result<()> {
    let mut broker = Broker::start()?;
    let outcome = with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        let frames: Vec<Frame> = (1..=50)
            .map(|i| produce(i, "demo.greetings", 0, batch(&["x"])))
            .collect();
        s.send_all(&frames).await?;
        ensure!(answers(&mut s, 1).await? == vec![(1, 0)]);
        broker.process.signal(Signal::SIGTERM)?;
        let mut acked = vec![1u64];
        loop {
            match s.read().await {
                Ok(Frame::ProduceAck(a)) => acked.push(a.correlation_id),
                Err(End::Finished) => break,
                other => bail!("expected answers, then the end of the stream: {other:?}"),
            }
        }
        ensure!(
            acked == (1..=acked.len() as u64).collect::<Vec<_>>(),
            "{acked:?}"
        );
        Ok(())
    })
    .await;
    broker.process.terminate()?;
    outcome
}

/// [P13] "Producer stream", per-request failures: a batch that needs a new
/// segment while the key provider cannot wrap its data key (here the file
/// provider's key directory moved away) is answered with
/// `key_unavailable`, and the stream goes on; once the provider is back
/// the same batch is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p13_a_segment_without_a_key_is_key_unavailable() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        let config = TopicConfig {
            segment_bytes: Some(1024),
            ..topic_config(1)
        };
        admin.create_topic_with("demo.p13", config).await?;
        let alice = broker.session(ALICE).await?;
        let mut s = alice.open().await?;
        s.send(&produce(1, "demo.p13", 0, record(0, 0))).await?;
        ensure!(answers(&mut s, 1).await? == vec![(1, 0)]);

        let keys = broker.dir().join("keys");
        let away = broker.dir().join("keys-away");
        std::fs::rename(&keys, &away)?;
        // The active segment's key is in memory; a few records in, the
        // segment is full and the next one needs a key.
        let mut refused = None;
        for id in 2..12 {
            s.send(&produce(id, "demo.p13", 0, record(0, id - 1)))
                .await?;
            match answers(&mut s, 1).await?[..] {
                [(_, 0)] => {}
                [(at, code)] => {
                    refused = Some(at);
                    ensure!(code == ErrorCode::KeyUnavailable.as_u16(), "{code}");
                    break;
                }
                ref other => bail!("{other:?}"),
            }
        }
        let refused = refused.context("no batch needed a new segment")?;
        std::fs::rename(&away, &keys)?;
        s.send(&produce(100, "demo.p13", 0, record(0, refused - 1)))
            .await?;
        ensure!(answers(&mut s, 1).await? == vec![(100, 0)]);
        Ok(())
    })
    .await
}

/// [B3] "Error": an `Error`'s message never contains payload bytes or key
/// material: refusals of batches whose key and value carry a marker (bad
/// CRC, bad framing, not authorized, unknown topic and partition, unknown
/// producer, too large) and the reports of a partition whose key envelope
/// is gone hold neither the marker nor the key-encryption key (raw or in
/// hex).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_error_messages_hold_no_payload_or_key_material() -> Result<()> {
    const MARKER: &str = "PAYLOAD-MARKER-0b3";
    let d = damaged_topic("demo.b3", &[Damage::NoEnvelope]).await?;
    with_log(&d.broker, async {
        let marked = |stamp: Option<ProducerStamp>| -> Result<Vec<u8>> {
            let mut b = BatchBuilder::new(1_700_000_000_000);
            if let Some(stamp) = stamp {
                b.producer(stamp);
            }
            b.push(
                1_700_000_000_000,
                Some(MARKER.as_bytes()),
                &[(MARKER, MARKER.as_bytes())],
                MARKER.repeat(4).as_bytes(),
            )?;
            Ok(b.finish()?.to_vec())
        };
        let plain = marked(None)?;
        let mut bad_crc = plain.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        let mut bad_count = plain.clone();
        bad_count[29] = 2;
        reseal(&mut bad_count);
        let unknown_producer = marked(Some(ProducerStamp {
            producer_id: 0xdead,
            epoch: 0,
            base_sequence: 0,
        }))?;
        let mut too_large = plain.clone();
        too_large.extend(std::iter::repeat_n(b'x', 2 << 20));
        let alice = d.broker.session(ALICE).await?;
        let bob = d.broker.session(BOB).await?;
        let mut messages = Vec::new();
        use ErrorCode::*;
        for (session, topic, partition, batch, code) in [
            (&alice, "demo.greetings", 0, bad_crc, CorruptBatch),
            (&alice, "demo.greetings", 0, bad_count, InvalidBatch),
            (&bob, "demo.greetings", 0, plain.clone(), NotAuthorized),
            (&alice, "demo.none", 0, plain.clone(), UnknownTopic),
            (&alice, "demo.greetings", 9, plain.clone(), UnknownPartition),
            (
                &alice,
                "demo.greetings",
                0,
                unknown_producer,
                UnknownProducer,
            ),
            (&alice, "demo.greetings", 0, too_large, FrameTooLarge),
            (&alice, "demo.b3", 0, plain.clone(), DataDamaged),
        ] {
            match session.produce_one(topic, partition, batch.into()).await? {
                Frame::Error(e) if e.code == code.as_u16() => messages.push(e.message),
                other => bail!("{topic}/{partition}: expected {code}, got {other:?}"),
            }
        }
        let mut s = alice
            .subscribe(subscribe_partition(
                "demo.b3",
                0,
                StartPosition::Earliest,
                1,
            ))
            .await?;
        ensure!(matches!(s.next().await?, Frame::Assignment(_)));
        match s.next().await? {
            Frame::PartitionError(e) => messages.push(e.message),
            other => bail!("expected PartitionError, got {other:?}"),
        }
        let mut secrets: Vec<Vec<u8>> = vec![MARKER.as_bytes().to_vec()];
        for kek in std::fs::read_dir(d.broker.dir().join("keys"))? {
            let kek = std::fs::read(kek?.path())?;
            let hex: String = kek.iter().map(|b| format!("{b:02x}")).collect();
            secrets.push(hex.into_bytes());
            secrets.push(kek);
        }
        for message in &messages {
            ensure!(!message.is_empty());
            for secret in &secrets {
                ensure!(
                    !message
                        .as_bytes()
                        .windows(secret.len())
                        .any(|w| w == secret.as_slice()),
                    "a message holds a secret: {message}"
                );
            }
        }
        Ok(())
    })
    .await
}
