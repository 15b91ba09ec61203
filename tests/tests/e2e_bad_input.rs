//! Bad input over real QUIC connections: random bytes, oversize lengths,
//! frames out of order, corrupt batches. Each gets the coded error
//! docs/PROTOCOL.md documents, on its stream or its connection, while
//! another client goes on publishing and reading as if nothing happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use strongbox_client::{ConsumerConfig, ProducerConfig, ProducerRecord, Subscription};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::BatchBuilder;
use strongbox_protocol::frame::{DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder};
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::control::Ping;
use strongbox_protocol::frames::produce::{Produce, ProduceAck};
use strongbox_protocol::frames::subscribe::{
    Credit, OffsetBatch, Records, StartPosition, Subscribe, SubscriptionTarget,
};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::raw::{self, FrameStream};

const TOPIC: &str = "demo.bad";
/// Where the well-behaved client publishes meanwhile.
const STEADY_TOPIC: &str = "demo.steady";

fn code(c: ErrorCode) -> u64 {
    u64::from(c.as_u16())
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure can be
/// replayed exactly.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The code the reference decoder gives `bytes`: what the broker must
/// answer.
fn reference_code(bytes: &[u8]) -> Result<ErrorCode> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    decoder.extend(bytes);
    match decoder.next_frame() {
        Err(e) => Ok(e.code()),
        Ok(other) => bail!("the input decodes ({other:?}); pick other bytes"),
    }
}

fn batch(values: &[&str]) -> Result<Bytes> {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for (i, v) in values.iter().enumerate() {
        b.push(
            1_700_000_000_000 + i as i64,
            Some(b"k"),
            &[("h", b"v")],
            v.as_bytes(),
        )?;
    }
    Ok(b.finish()?)
}

fn produce(correlation_id: u64, batch: Bytes) -> Frame {
    Frame::Produce(Produce {
        correlation_id,
        topic: TOPIC.into(),
        partition: 0,
        batch,
    })
}

/// A fresh raw connection as alice, past the handshake.
async fn alice_raw(broker: &BrokerProcess) -> Result<(quinn::Connection, FrameStream)> {
    let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "alice")?).await?;
    let (control, welcome) = raw::handshake(&conn).await?;
    ensure!(welcome.principal == "spiffe://strongbox.dev/alice");
    Ok((conn, control))
}

/// Sends `bytes` as the start of a new stream and returns the code the
/// broker refused it with.
async fn refuse_stream(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> Result<u64> {
    let mut s = FrameStream::open(conn).await?;
    s.send_raw(bytes).await?;
    if finish {
        s.send.finish()?;
    }
    let (code, before) = s.refusal().await?;
    ensure!(before.is_empty(), "frames before the refusal: {before:?}");
    Ok(code)
}

/// The connection is closed by the broker with `expected` as its code.
async fn closed_with(conn: &quinn::Connection, expected: ErrorCode) -> Result<()> {
    let reason = tokio::time::timeout(raw::RAW_TIMEOUT, conn.closed())
        .await
        .context("the broker did not close the connection")?;
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            ensure!(
                c.error_code.into_inner() == code(expected),
                "closed with {c:?}, expected {expected}"
            );
            Ok(())
        }
        other => bail!("closed otherwise: {other:?}, expected {expected}"),
    }
}

/// A stream-level refusal leaves the connection usable: a whoami on a new
/// stream is answered.
async fn connection_still_works(conn: &quinn::Connection) -> Result<()> {
    let mut s = FrameStream::open(conn).await?;
    s.send(&Frame::Request(AdminRequest::WhoAmI)).await?;
    s.send.finish()?;
    match s.next().await {
        Ok(Frame::Response(_)) => Ok(()),
        other => bail!("whoami after a stream refusal: {other:?}"),
    }
}

async fn garbage_streams(broker: &BrokerProcess) -> Result<()> {
    let (conn, _control) = alice_raw(broker).await?;

    // Random bytes, length prefix and all.
    for seed in [1u64, 0xdead_beef, 42] {
        let bytes = random_bytes(seed, 4096);
        let expected = reference_code(&bytes)?;
        let got = refuse_stream(&conn, &bytes, true).await?;
        assert_eq!(got, code(expected), "random bytes, seed {seed}");
    }
    // A plausible length prefix around random type and body. The stream
    // gets the code and the connection goes on (docs/PROTOCOL.md, "Frames");
    // a connection of its own keeps the cases apart.
    let (unknown_conn, _unknown_control) = alice_raw(broker).await?;
    for seed in [7u64, 8, 9] {
        let body = random_bytes(seed, 1000);
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let expected = reference_code(&bytes)?;
        assert!(
            matches!(
                expected,
                ErrorCode::UnknownFrameType | ErrorCode::MalformedFrame
            ),
            "{expected}"
        );
        let got = refuse_stream(&unknown_conn, &bytes, true).await?;
        assert_eq!(got, code(expected), "random frame, seed {seed}");
    }

    // An oversize length is refused as soon as the length has arrived:
    // the rest is never sent, and the stream is left open.
    let just_over = DEFAULT_MAX_FRAME_SIZE + 1;
    for length in [just_over, u32::MAX] {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.extend_from_slice(&0x0010u16.to_be_bytes());
        let got = refuse_stream(&conn, &bytes, false).await?;
        assert_eq!(got, code(ErrorCode::FrameTooLarge), "length {length}");
    }
    // A length with no room for the type.
    for bytes in [&[0u8, 0, 0, 0][..], &[0, 0, 0, 1, 0x10]] {
        let got = refuse_stream(&conn, bytes, false).await?;
        assert_eq!(got, code(ErrorCode::MalformedFrame), "{bytes:?}");
    }
    // A stream that ends inside a frame.
    let whole = produce(1, batch(&["x"])?).to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
    let got = refuse_stream(&conn, &whole[..whole.len() - 3], true).await?;
    assert_eq!(got, code(ErrorCode::MalformedFrame), "truncated frame");
    // A body with a field that overruns it (topic length past the end).
    let mut bad = whole.to_vec();
    bad[14] = 0xff;
    let got = refuse_stream(&conn, &bad, true).await?;
    assert_eq!(got, code(ErrorCode::MalformedFrame), "field overrun");

    connection_still_works(&conn).await
}

async fn out_of_order_streams(broker: &BrokerProcess) -> Result<()> {
    let (conn, _control) = alice_raw(broker).await?;

    // Frames that cannot start a stream: the broker's own frames, and
    // subscription frames before any Subscribe.
    let records = Frame::Records(Records {
        partition: 0,
        high_watermark: 1,
        batches: vec![OffsetBatch {
            base_offset: 0,
            batch: batch(&["r"])?,
        }],
    });
    let ack = Frame::ProduceAck(ProduceAck {
        correlation_id: 1,
        partition: 0,
        base_offset: 0,
        duplicate: false,
    });
    for frame in [
        records,
        Frame::Credit(Credit { bytes: 1 << 20 }),
        ack,
        raw::hello(),
        Frame::Ping(Ping { nonce: 1 }),
    ] {
        let name = frame.frame_type().name();
        let bytes = frame.to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
        let got = refuse_stream(&conn, &bytes, false).await?;
        assert_eq!(
            got,
            code(ErrorCode::ProtocolViolation),
            "{name} as a first frame"
        );
    }

    // A second Subscribe on a subscription stream.
    let subscribe = Frame::Subscribe(Subscribe {
        topic: TOPIC.into(),
        target: SubscriptionTarget::Partition(0),
        start: StartPosition::Latest,
        credit: 1 << 20,
        skip_damaged: false,
    });
    let mut s = FrameStream::open(&conn).await?;
    s.send(&subscribe).await?;
    match s.next().await {
        Ok(Frame::Assignment(_)) => {}
        other => bail!("expected Assignment, got {other:?}"),
    }
    s.send(&subscribe).await?;
    let (got, _) = s.refusal().await?;
    assert_eq!(got, code(ErrorCode::UnexpectedFrame), "second Subscribe");

    // A Produce on a subscription stream.
    let mut s = FrameStream::open(&conn).await?;
    s.send(&subscribe).await?;
    match s.next().await {
        Ok(Frame::Assignment(_)) => {}
        other => bail!("expected Assignment, got {other:?}"),
    }
    s.send(&produce(1, batch(&["p"])?)).await?;
    let (got, _) = s.refusal().await?;
    assert_eq!(
        got,
        code(ErrorCode::ProtocolViolation),
        "Produce on a subscription"
    );

    connection_still_works(&conn).await
}

async fn producer_stream_errors(broker: &BrokerProcess) -> Result<()> {
    let (conn, _control) = alice_raw(broker).await?;
    let mut s = FrameStream::open(&conn).await?;

    // A batch whose CRC does not match: that request fails, the stream
    // goes on.
    let good = batch(&["one", "two"])?;
    let mut corrupt = good.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    s.send(&produce(1, Bytes::from(corrupt))).await?;
    match s.next().await {
        Ok(Frame::Error(e)) => {
            assert_eq!(e.correlation_id, 1);
            assert_eq!(e.code, ErrorCode::CorruptBatch.as_u16(), "{e:?}");
        }
        other => bail!("bad CRC: {other:?}"),
    }
    // A batch with a bad magic number.
    let mut bad_magic = good.to_vec();
    bad_magic[0] = 0;
    s.send(&produce(2, Bytes::from(bad_magic))).await?;
    match s.next().await {
        Ok(Frame::Error(e)) => {
            assert_eq!(e.correlation_id, 2);
            assert_eq!(e.code, ErrorCode::InvalidBatch.as_u16(), "{e:?}");
        }
        other => bail!("bad magic: {other:?}"),
    }
    // The same stream still appends.
    s.send(&produce(3, good.clone())).await?;
    match s.next().await {
        Ok(Frame::ProduceAck(ack)) => assert_eq!(ack.correlation_id, 3),
        other => bail!("good batch after bad ones: {other:?}"),
    }
    // A correlation id that does not increase ends the stream.
    s.send(&produce(3, good.clone())).await?;
    let (got, _) = s.refusal().await?;
    assert_eq!(
        got,
        code(ErrorCode::ProtocolViolation),
        "repeated correlation id"
    );

    // A correlation id of 0 ends its stream too.
    let mut s = FrameStream::open(&conn).await?;
    s.send(&produce(0, good.clone())).await?;
    let (got, _) = s.refusal().await?;
    assert_eq!(got, code(ErrorCode::ProtocolViolation), "correlation id 0");

    // A subscription frame on a producer stream.
    let mut s = FrameStream::open(&conn).await?;
    s.send(&produce(1, good)).await?;
    match s.next().await {
        Ok(Frame::ProduceAck(_)) => {}
        other => bail!("{other:?}"),
    }
    s.send(&Frame::Credit(Credit { bytes: 1 })).await?;
    let (got, _) = s.refusal().await?;
    assert_eq!(
        got,
        code(ErrorCode::ProtocolViolation),
        "Credit on a producer stream"
    );

    connection_still_works(&conn).await
}

async fn control_stream_errors(broker: &BrokerProcess) -> Result<()> {
    // A second Hello after Welcome ends the connection.
    let (conn, mut control) = alice_raw(broker).await?;
    control.send(&raw::hello()).await?;
    let (got, _) = control.refusal().await?;
    assert_eq!(got, code(ErrorCode::UnexpectedFrame), "second Hello");
    closed_with(&conn, ErrorCode::UnexpectedFrame).await?;

    // A producer frame on the control stream.
    let (conn, mut control) = alice_raw(broker).await?;
    control.send(&produce(1, batch(&["c"])?)).await?;
    let (got, _) = control.refusal().await?;
    assert_eq!(
        got,
        code(ErrorCode::ProtocolViolation),
        "Produce on control"
    );
    closed_with(&conn, ErrorCode::ProtocolViolation).await?;

    // Garbage on the control stream after the handshake.
    let (conn, mut control) = alice_raw(broker).await?;
    control.send_raw(&u32::MAX.to_be_bytes()).await?;
    let (got, _) = control.refusal().await?;
    assert_eq!(got, code(ErrorCode::FrameTooLarge), "oversize on control");
    closed_with(&conn, ErrorCode::FrameTooLarge).await?;

    // Before the handshake: a first frame other than Hello, whatever it is.
    for (frame, expected) in [
        (Frame::Ping(Ping { nonce: 9 }), ErrorCode::ProtocolViolation),
        (produce(1, batch(&["h"])?), ErrorCode::ProtocolViolation),
    ] {
        let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "alice")?).await?;
        let mut control = FrameStream::open(&conn).await?;
        control.send(&frame).await?;
        let (got, before) = control.refusal().await?;
        ensure!(before.is_empty(), "{before:?}");
        assert_eq!(got, code(expected), "{} before Hello", frame.frame_type());
        closed_with(&conn, expected).await?;
    }
    // Random bytes instead of Hello.
    let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "alice")?).await?;
    let bytes = random_bytes(3, 512);
    let expected = reference_code(&bytes)?;
    let got = refuse_stream(&conn, &bytes, false).await?;
    assert_eq!(got, code(expected), "random bytes instead of Hello");
    closed_with(&conn, expected).await
}

/// alice publishes and reads on her own connections while the raw cases
/// run; returns how many records she published.
async fn steady_client(broker_profile: std::path::PathBuf, stop: Arc<AtomicBool>) -> Result<usize> {
    let alice = connect(&broker_profile).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    let reader = connect(&broker_profile).await?;
    let mut consumer = reader
        .subscribe(
            Subscription::partition(STEADY_TOPIC, 0),
            ConsumerConfig::default(),
        )
        .await?;
    let mut sent = 0usize;
    while !stop.load(Ordering::SeqCst) || sent < 200 {
        let mut acks = Vec::new();
        for _ in 0..20 {
            let record = ProducerRecord::new(STEADY_TOPIC, format!("steady-{sent:06}"))
                .partition(0)
                .key("steady");
            acks.push(producer.send(record).await?);
            sent += 1;
        }
        for ack in acks {
            ack.await?;
        }
        // Read what was just acknowledged, in order.
        let got = read_n(&mut consumer, 20).await?;
        for (i, r) in got.iter().enumerate() {
            let n = sent - 20 + i;
            ensure!(
                r.value == format!("steady-{n:06}").as_bytes(),
                "record {n} is {:?}",
                r.value
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producer.close().await?;
    consumer.close().await;
    alice.close().await;
    reader.close().await;
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_coded_errors_and_hurts_no_one_else() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dir)?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic(TOPIC, topic(1)).await?;
    admin.admin().create_topic(STEADY_TOPIC, topic(1)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let steady = tokio::spawn(steady_client(broker.profile("alice"), stop.clone()));

    let cases = async {
        garbage_streams(&broker).await.context("garbage streams")?;
        out_of_order_streams(&broker)
            .await
            .context("out-of-order streams")?;
        producer_stream_errors(&broker)
            .await
            .context("producer streams")?;
        control_stream_errors(&broker)
            .await
            .context("control streams")?;
        anyhow::Ok(())
    };
    let outcome = cases.await;
    stop.store(true, Ordering::SeqCst);
    let steady = steady.await?;
    outcome.with_context(|| format!("broker log:\n{}", broker.log_text()))?;
    let sent = steady.context("the steady client")?;
    assert!(sent >= 200, "{sent}");

    // Still up: running, and a fresh handshake works.
    assert!(broker.is_running(), "the broker is still running");
    let (conn, _control) = alice_raw(&broker).await?;
    connection_still_works(&conn).await?;
    let log = broker.log_text();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
    Ok(())
}
