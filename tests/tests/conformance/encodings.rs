//! docs/PROTOCOL.md, "Primitive encodings".

use anyhow::Result;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::subscribe::StartPosition;

use crate::harness::*;

/// Sends `bytes` on a new stream and expects `malformed_frame`.
async fn malformed(session: &Session, bytes: &[u8]) -> Result<()> {
    let mut s = session.open().await?;
    s.send_raw(bytes).await?;
    s.finish()?;
    s.expect_ended_with(ErrorCode::MalformedFrame)
        .await
        .map(drop)
}

/// [E1] "Primitive encodings": a `bool` other than 0 or 1 is
/// `malformed_frame` (`AccessList.pending_only` = 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_a_bool_other_than_0_or_1_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        malformed(&alice, &raw_frame(0x0151, &[2])).await?;
        malformed(&alice, &raw_frame(0x0151, &[0xff])).await
    })
    .await
}

/// [E2] "Primitive encodings": a `string` that is not UTF-8 is
/// `malformed_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_a_string_that_is_not_utf8_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        // DescribeTopic { name: ff fe }.
        malformed(&alice, &raw_frame(0x0103, &[0, 2, 0xff, 0xfe])).await
    })
    .await
}

/// [E3] "Primitive encodings": an `option` tag other than 0 or 1 is
/// `malformed_frame` (`ListTopics.prefix`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_an_option_tag_other_than_0_or_1_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        malformed(&alice, &raw_frame(0x0104, &[2, 0, 1, b'd'])).await
    })
    .await
}

/// [E4] "Primitive encodings": an unknown enumeration tag is
/// `malformed_frame` (`Subscribe.target` and `Subscribe.start`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_an_unknown_enum_tag_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        let body = body_of(&Frame::Subscribe(subscribe_partition(
            "demo.greetings",
            0,
            StartPosition::Offset(0),
            100,
        )));
        // topic (2 + 14), target at 16, partition 17..21, start at 21.
        let target_at = 2 + "demo.greetings".len();
        let start_at = target_at + 1 + 4;
        for (at, tag) in [(target_at, 2u8), (start_at, 4), (start_at, 0xff)] {
            let mut bad = body.clone();
            bad[at] = tag;
            malformed(&alice, &raw_frame(0x0020, &bad)).await?;
        }
        Ok(())
    })
    .await
}

/// [E5] "Primitive encodings": a `list` count the body cannot hold is
/// refused with `malformed_frame`, without reserving memory for it
/// (`Hello.versions` with four billion elements in a short body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e5_a_list_count_the_body_cannot_hold_is_malformed() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let conn = broker.connect(ALICE).await?;
        let mut control = Stream::open(&conn).await?;
        let mut body = u32::MAX.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 1, 0, 0]);
        control.send_raw(&raw_frame(0x0001, &body)).await?;
        control.expect_error(ErrorCode::MalformedFrame).await?;
        closed_with(&conn, ErrorCode::MalformedFrame)
            .await
            .map(drop)
    })
    .await
}
