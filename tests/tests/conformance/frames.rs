//! docs/PROTOCOL.md, "Frames".

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame};
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::produce::ProduceAck;
use strongbox_protocol::frames::subscribe::{StartPosition, Unsubscribe};
use strongbox_protocol::model::{AclEffect, AclRule, Operations};
use strongbox_protocol::session::control::min_client_frame_size;

use crate::harness::*;

/// Reads `Records` until `batches` batches have arrived; every frame was
/// decoded with `max` as the limit, so a larger one fails the test.
async fn read_batches(sub: &mut Stream, batches: usize) -> Result<Vec<u64>> {
    let mut offsets = Vec::new();
    while offsets.len() < batches {
        match sub.next().await? {
            Frame::Records(r) => offsets.extend(r.batches.iter().map(|b| b.base_offset)),
            Frame::Assignment(_) => {}
            other => bail!("while reading records: {other:?}"),
        }
    }
    Ok(offsets)
}

/// [F1] "Frames": the broker never sends a frame longer than the client's
/// `Hello.max_frame_size`, even when a batch is nearly as large as that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_no_frame_exceeds_the_clients_maximum() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("demo.f1", 1).await?;
        let max_batch = admin.welcome.max_batch_size;
        let smallest = min_client_frame_size(max_batch);
        // Batches as large as the broker takes, and small ones between.
        for size in [max_batch as usize, 200, max_batch as usize - 10, 300] {
            admin.append("demo.f1", 0, batch_of_size(size)).await?;
        }
        let conn = broker.connect(ALICE).await?;
        let alice = Session::establish(conn, hello_with(vec![1], smallest)).await?;
        let mut sub = alice
            .subscribe(subscribe_partition(
                "demo.f1",
                0,
                StartPosition::Earliest,
                u64::MAX / 2,
            ))
            .await?;
        sub.set_max_frame_size(smallest);
        let offsets = read_batches(&mut sub, 4).await?;
        ensure!(offsets == vec![0, 1, 2, 3], "{offsets:?}");
        Ok(())
    })
    .await
}

/// [F2] "Frames": negotiation cannot fail later. With the smallest frame
/// size the broker accepts, `Records` frames are cut to fit (never an
/// `internal` error) and an admin answer too long for it is refused with
/// `frame_too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_records_are_cut_to_fit_and_long_answers_are_refused() -> Result<()> {
    // Batches of at most 1 KiB: a client may announce the 64 KiB minimum.
    let broker = Broker::start_with(&[("max_batch_size", "1024")])?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("demo.f2", 1).await?;
        let mut producer = admin.open().await?;
        let frames: Vec<Frame> = (1..=150)
            .map(|i| produce(i, "demo.f2", 0, batch_of_size(900)))
            .collect();
        producer.send_all(&frames).await?;
        for i in 1..=150 {
            match producer.next().await? {
                Frame::ProduceAck(ack) if ack.correlation_id == i => {}
                other => bail!("Produce {i}: {other:?}"),
            }
        }
        let min = 64 * 1024;
        let conn = broker.connect(ADMIN).await?;
        let small = Session::establish(conn, hello_with(vec![1], min)).await?;
        // 150 batches of 900 bytes (about 135 KiB) in frames of at most 64 KiB.
        let mut sub = small
            .subscribe(subscribe_partition(
                "demo.f2",
                0,
                StartPosition::Earliest,
                u64::MAX / 2,
            ))
            .await?;
        sub.set_max_frame_size(min);
        let offsets = read_batches(&mut sub, 150).await?;
        ensure!(offsets == (0..150).collect::<Vec<u64>>(), "{offsets:?}");
        sub.send(&Frame::Unsubscribe(Unsubscribe)).await?;
        sub.finish()?;
        // An ACL rule longer than 64 KiB cannot come back in AclListResult.
        let rule = AclRule {
            principal: "p".repeat(40_000),
            topic: "t".repeat(30_000),
            operations: Operations::SUBSCRIBE,
            effect: AclEffect::Allow,
            expires_at: None,
        };
        let mut s = small.open().await?;
        s.set_max_frame_size(min);
        s.send(&Frame::Request(AdminRequest::AclGrant { rule }))
            .await?;
        s.finish()?;
        let error = s.expect_error(ErrorCode::FrameTooLarge).await?;
        ensure!(
            error.message.contains("max_frame_size"),
            "{}",
            error.message
        );
        s.expect_finished().await
    })
    .await
}

/// [F3] "Frames": a length over the receiver's maximum is refused with
/// `frame_too_large` as soon as the four length bytes have arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_an_oversize_length_is_refused_before_the_body() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        for length in [DEFAULT_MAX_FRAME_SIZE + 1, u32::MAX] {
            let mut s = alice.open().await?;
            // The length and the type only: the body never comes, and the
            // stream stays open.
            let mut bytes = length.to_be_bytes().to_vec();
            bytes.extend_from_slice(&0x0010u16.to_be_bytes());
            s.send_raw(&bytes).await?;
            s.expect_ended_with(ErrorCode::FrameTooLarge).await?;
        }
        Ok(())
    })
    .await
}

/// [F4] "Frames": a `length` below 2 is `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_a_length_below_two_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        for bytes in [&[0u8, 0, 0, 0][..], &[0, 0, 0, 1, 0x01]] {
            let mut s = alice.open().await?;
            s.send_raw(bytes).await?;
            s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        }
        Ok(())
    })
    .await
}

/// [F5] "Frames": bytes after the last field are `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_trailing_bytes_are_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        // WhoAmI has an empty body; DescribeTopic one string.
        let mut describe = body_of(&Frame::Request(AdminRequest::DescribeTopic {
            name: "demo.greetings".into(),
        }));
        describe.push(0);
        for bytes in [raw_frame(0x0100, &[0]), raw_frame(0x0103, &describe)] {
            let mut s = alice.open().await?;
            s.send_raw(&bytes).await?;
            s.finish()?;
            s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        }
        Ok(())
    })
    .await
}

/// [F6] "Frames": a body that ends before its last field, or a stream that
/// ends inside a frame, is `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_a_truncated_body_or_stream_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        // A string that claims 10 bytes and has 3.
        let mut s = alice.open().await?;
        s.send_raw(&raw_frame(0x0103, &[0, 10, b'a', b'b', b'c']))
            .await?;
        s.finish()?;
        s.expect_ended_with(ErrorCode::MalformedFrame).await?;
        // Half a frame, then the end of the stream.
        let whole =
            produce(1, "demo.greetings", 0, batch(&["x"])).to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
        let mut s = alice.open().await?;
        s.send_raw(&whole[..whole.len() / 2]).await?;
        s.finish()?;
        s.expect_error(ErrorCode::MalformedFrame).await?;
        s.expect_finished().await
    })
    .await
}

/// [F7] "Frames": an unknown frame type is `unknown_frame_type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_an_unknown_type_is_unknown_frame_type() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        for ty in [0x0007u16, 0x00ff, 0x7777, 0xffff] {
            let mut s = alice.open().await?;
            s.send_raw(&raw_frame(ty, &[1, 2, 3])).await?;
            s.expect_ended_with(ErrorCode::UnknownFrameType).await?;
        }
        Ok(())
    })
    .await
}

/// [F8] "Frames": a frame that cannot be decoded ends only the stream it
/// arrived on; the connection and its other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_a_bad_frame_ends_only_its_stream() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut sub = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Latest,
                1 << 20,
            ))
            .await?;
        ensure!(matches!(sub.next().await?, Frame::Assignment(_)));
        let mut bad = alice.open().await?;
        bad.send_raw(&raw_frame(0x0010, &[0xde, 0xad])).await?;
        bad.expect_ended_with(ErrorCode::MalformedFrame).await?;
        // The subscription still delivers, and new streams are served.
        let offset = alice.append("demo.greetings", 0, batch(&["after"])).await?;
        match sub.next().await? {
            Frame::Records(r) => ensure!(r.batches[0].base_offset == offset),
            other => bail!("{other:?}"),
        }
        alice.ok(AdminRequest::WhoAmI).await.map(drop)
    })
    .await
}

/// [F9] "Frames": a frame on a stream it does not belong to, or in the
/// wrong direction, is `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_a_frame_on_the_wrong_stream_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let ack = Frame::ProduceAck(ProduceAck {
            correlation_id: 2,
            partition: 0,
            base_offset: 0,
            duplicate: false,
        });
        let subscribe = Frame::Subscribe(subscribe_partition(
            "demo.greetings",
            0,
            StartPosition::Latest,
            1,
        ));
        // A broker frame, and a subscription frame, on a producer stream.
        for wrong in [ack, subscribe] {
            let mut s = alice.open().await?;
            s.send_all(&[produce(1, "demo.greetings", 0, batch(&["x"])), wrong])
                .await?;
            ensure!(matches!(s.next().await?, Frame::ProduceAck(_)));
            s.expect_ended_with(ErrorCode::ProtocolViolation).await?;
        }
        Ok(())
    })
    .await
}
