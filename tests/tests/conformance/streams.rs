//! docs/PROTOCOL.md, "Stream kinds" and "Ending a stream with an error".

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::control::{ErrorFrame, Ping};
use strongbox_protocol::frames::produce::ProduceAck;
use strongbox_protocol::frames::subscribe::{
    AssignedPartition, Assignment, Commit, Credit, OffsetBatch, Records, StartPosition,
    SubscriptionEnd, Unsubscribe,
};

use crate::harness::*;

/// [S1] "Stream kinds": a first frame that cannot open a stream — a
/// subscription frame other than `Subscribe`, a control frame, any frame
/// the broker sends — is `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_a_stream_must_start_with_an_opening_frame() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let firsts = [
            Frame::Credit(Credit { bytes: 1 }),
            Frame::Commit(Commit {
                partition: 0,
                offset: 0,
            }),
            Frame::Unsubscribe(Unsubscribe),
            Frame::Ping(Ping { nonce: 1 }),
            hello(),
            Frame::ProduceAck(ProduceAck {
                correlation_id: 1,
                partition: 0,
                base_offset: 0,
                duplicate: false,
            }),
            Frame::Assignment(Assignment {
                generation: 0,
                partitions: vec![AssignedPartition {
                    partition: 0,
                    next_offset: 0,
                }],
            }),
            Frame::Records(Records {
                partition: 0,
                high_watermark: 1,
                batches: vec![OffsetBatch {
                    base_offset: 0,
                    batch: batch(&["r"]),
                }],
            }),
            Frame::SubscriptionEnd(SubscriptionEnd {
                code: 0,
                reason: String::new(),
            }),
            Frame::Error(ErrorFrame::new(0, ErrorCode::Internal, "x")),
            Frame::Response(AdminResponse::Ok {
                message: String::new(),
            }),
        ];
        for first in firsts {
            let name = first.frame_type().name();
            let mut s = alice.open().await?;
            s.send(&first).await?;
            s.expect_ended_with(ErrorCode::ProtocolViolation)
                .await
                .map_err(|e| e.context(format!("{name} as a first frame")))?;
        }
        Ok(())
    })
    .await
}

/// [S2] "Ending a stream with an error": STOP_SENDING with the code, the
/// `Error` (correlation id 0) as the broker's last frame, then a finish,
/// never a reset; the connection and its other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_an_error_ends_the_stream_with_a_finish_not_a_reset() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let mut admin_stream = alice.open().await?;
        // An admin stream whose request never completes stays open meanwhile.
        admin_stream.send_raw(&[0, 0, 0, 40, 0x01, 0x03]).await?;
        // Each kind of stream, ended by an error of its own.
        let mut producer = alice.open().await?;
        producer
            .send_all(&[produce(0, "demo.greetings", 0, batch(&["x"]))])
            .await?;
        let error = producer
            .expect_ended_with(ErrorCode::ProtocolViolation)
            .await?;
        ensure!(!error.message.is_empty());
        let mut sub = alice
            .subscribe(subscribe_partition(
                "demo.greetings",
                0,
                StartPosition::Offset(1 << 40),
                1,
            ))
            .await?;
        sub.expect_ended_with(ErrorCode::OffsetOutOfRange).await?;
        let mut admin = alice.open().await?;
        admin
            .send(&Frame::Request(AdminRequest::DescribeTopic {
                name: "demo.none".into(),
            }))
            .await?;
        // A refused admin request is an answer, not a stream error: the
        // stream finishes normally once the client finishes.
        admin.finish()?;
        match admin.next().await? {
            Frame::Error(e) => ensure!(e.code == ErrorCode::UnknownTopic.as_u16()),
            other => bail!("{other:?}"),
        }
        admin.expect_finished().await?;
        // The half-sent request's stream was not disturbed.
        admin_stream
            .expect_quiet(std::time::Duration::from_millis(200))
            .await?;
        // The connection still serves.
        alice
            .append("demo.greetings", 0, Bytes::from(batch(&["y"]).to_vec()))
            .await?;
        Ok(())
    })
    .await
}
