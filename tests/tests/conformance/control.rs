//! docs/PROTOCOL.md, "Control stream".

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::{ABSOLUTE_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE, Frame};
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::frames::control::{Goodbye, Ping, Pong, Welcome};
use strongbox_protocol::session::control::min_client_frame_size;
use strongbox_tests::Signal;

use crate::harness::*;

/// Sends `first` as the first frame of a fresh connection's control stream
/// and expects the connection refused with `code`, the `Error` first.
async fn refused_at_hello(broker: &Broker, first: &Frame, code: ErrorCode) -> Result<String> {
    let conn = broker.connect(ALICE).await?;
    let mut control = Stream::open(&conn).await?;
    control.send(first).await?;
    let error = control.expect_error(code).await?;
    ensure!(error.correlation_id == 0);
    control.expect_finished().await?;
    let reason = closed_with(&conn, code).await?;
    ensure!(
        reason == error.message,
        "close reason {reason:?} vs Error {:?}",
        error.message
    );
    Ok(error.message)
}

/// [C1] "Control stream": the broker answers `Hello` with `Welcome` and
/// the highest version both sides speak, and its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_welcome_has_the_highest_common_version() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let conn = broker.connect(ALICE).await?;
        let s = Session::establish(conn, hello_with(vec![9, 1, 3], DEFAULT_MAX_FRAME_SIZE)).await?;
        let Welcome {
            version,
            principal,
            max_frame_size,
            max_batch_size,
            max_in_flight,
            keepalive_ms,
            ..
        } = s.welcome;
        ensure!(version == 1);
        ensure!(principal == ALICE_PRINCIPAL);
        ensure!(max_frame_size == DEFAULT_MAX_FRAME_SIZE);
        ensure!(max_batch_size == 1024 * 1024);
        ensure!(max_in_flight == 1024);
        ensure!(keepalive_ms == 10_000);
        Ok(())
    })
    .await
}

/// [C2] "Control stream": no version in common is `unsupported_version`,
/// delivered as `Error` before CONNECTION_CLOSE with the same code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_no_common_version_is_unsupported_version() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for versions in [vec![2, 3], vec![]] {
            refused_at_hello(
                &broker,
                &hello_with(versions, DEFAULT_MAX_FRAME_SIZE),
                ErrorCode::UnsupportedVersion,
            )
            .await?;
        }
        Ok(())
    })
    .await
}

/// [C3] "Control stream": a first frame other than `Hello`, whatever it
/// is, is `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_a_first_frame_other_than_hello_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for first in [
            Frame::Ping(Ping { nonce: 1 }),
            Frame::Pong(Pong { nonce: 1 }),
            Frame::Goodbye(Goodbye {
                code: 0,
                reason: String::new(),
            }),
            Frame::Request(AdminRequest::WhoAmI),
            produce(1, "demo.greetings", 0, batch(&["x"])),
        ] {
            refused_at_hello(&broker, &first, ErrorCode::ProtocolViolation).await?;
        }
        Ok(())
    })
    .await
}

/// [C4] "Control stream": a `Hello.max_frame_size` outside
/// [64 KiB, 64 MiB] is `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_max_frame_size_out_of_range_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for size in [0, 64 * 1024 - 1, ABSOLUTE_MAX_FRAME_SIZE + 1] {
            refused_at_hello(
                &broker,
                &hello_with(vec![1], size),
                ErrorCode::ProtocolViolation,
            )
            .await?;
        }
        Ok(())
    })
    .await
}

/// [C5] "Control stream": a `Hello.max_frame_size` below `max_batch_size`
/// + 30 is `frame_size_too_small`, whose message names the size needed;
/// exactly that size is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_a_frame_size_too_small_for_a_batch_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let needed = min_client_frame_size(1024 * 1024);
        ensure!(needed == 1024 * 1024 + 30);
        for size in [64 * 1024, needed - 1] {
            let message = refused_at_hello(
                &broker,
                &hello_with(vec![1], size),
                ErrorCode::FrameSizeTooSmall,
            )
            .await?;
            ensure!(message.contains(&needed.to_string()), "{message}");
        }
        let conn = broker.connect(ALICE).await?;
        Session::establish(conn, hello_with(vec![1], needed))
            .await
            .map(drop)
    })
    .await
}

/// [C6] "Control stream": no `Hello` within the handshake timeout is
/// `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_no_hello_in_time_is_timeout() -> Result<()> {
    let broker = Broker::start_with(&[("handshake_timeout", "\"500ms\"")])?;
    with_log(&broker, async {
        let conn = broker.connect(ALICE).await?;
        let mut control = Stream::open(&conn).await?;
        // Two bytes of a length prefix: the stream exists, no frame comes.
        control.send_raw(&[0, 0]).await?;
        control.expect_error(ErrorCode::Timeout).await?;
        control.expect_finished().await?;
        closed_with(&conn, ErrorCode::Timeout).await.map(drop)
    })
    .await
}

/// [C7] "Control stream": a client that opens no stream within the
/// handshake timeout gets CONNECTION_CLOSE with `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_no_control_stream_in_time_is_timeout() -> Result<()> {
    let broker = Broker::start_with(&[("handshake_timeout", "\"500ms\"")])?;
    with_log(&broker, async {
        let conn = broker.connect(ALICE).await?;
        closed_with(&conn, ErrorCode::Timeout).await.map(drop)
    })
    .await
}

/// [C10] "Control stream": `Ping` is answered with a `Pong` carrying the
/// same nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_ping_is_answered_with_the_same_nonce() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let mut alice = broker.session(ALICE).await?;
        for nonce in [0, 42, u64::MAX] {
            alice.control.send(&Frame::Ping(Ping { nonce })).await?;
            match alice.control.next().await? {
                Frame::Pong(p) => ensure!(p.nonce == nonce),
                other => bail!("{other:?}"),
            }
        }
        Ok(())
    })
    .await
}

/// [C11] "Control stream": a `Pong` that echoes no outstanding `Ping` of
/// the broker is `unexpected_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c11_a_pong_without_a_ping_is_unexpected() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let mut alice = broker.session(ALICE).await?;
        alice.control.send(&Frame::Pong(Pong { nonce: 77 })).await?;
        alice
            .control
            .expect_error(ErrorCode::UnexpectedFrame)
            .await?;
        alice.control.expect_finished().await?;
        closed_with(&alice.conn, ErrorCode::UnexpectedFrame)
            .await
            .map(drop)
    })
    .await
}

/// [C12] "Control stream": the sender of `Goodbye` closes the connection
/// after it with the Goodbye's code; on shutdown the broker says
/// `Goodbye` `shutting_down`, and it arrives before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_the_brokers_goodbye_precedes_a_close_with_its_code() -> Result<()> {
    let mut broker = Broker::start()?;
    let outcome = with_log(&broker, async {
        let mut alice = broker.session(ALICE).await?;
        broker.process.signal(Signal::SIGTERM)?;
        match alice.control.next().await? {
            Frame::Goodbye(g) => ensure!(g.code == ErrorCode::ShuttingDown.as_u16(), "{g:?}"),
            other => bail!("expected Goodbye, got {other:?}"),
        }
        alice.control.expect_finished().await?;
        closed_with(&alice.conn, ErrorCode::ShuttingDown)
            .await
            .map(drop)
    })
    .await;
    broker.process.terminate()?;
    outcome
}

/// [C13] "Control stream": a second `Hello`, or a `Welcome`, after the
/// handshake is `unexpected_frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c13_a_second_hello_is_unexpected() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let mut alice = broker.session(ALICE).await?;
        alice.control.send(&hello()).await?;
        alice
            .control
            .expect_error(ErrorCode::UnexpectedFrame)
            .await?;
        closed_with(&alice.conn, ErrorCode::UnexpectedFrame).await?;
        let mut alice = broker.session(ALICE).await?;
        let welcome = Frame::Welcome(alice.welcome.clone());
        alice.control.send(&welcome).await?;
        alice
            .control
            .expect_error(ErrorCode::UnexpectedFrame)
            .await?;
        closed_with(&alice.conn, ErrorCode::UnexpectedFrame)
            .await
            .map(drop)
    })
    .await
}

/// [C14] "Control stream": a frame of another stream kind on the control
/// stream is `protocol_violation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c14_another_kind_of_frame_on_control_is_a_violation() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for frame in [
            produce(1, "demo.greetings", 0, batch(&["x"])),
            Frame::Request(AdminRequest::WhoAmI),
        ] {
            let mut alice = broker.session(ALICE).await?;
            alice.control.send(&frame).await?;
            alice
                .control
                .expect_error(ErrorCode::ProtocolViolation)
                .await?;
            closed_with(&alice.conn, ErrorCode::ProtocolViolation).await?;
        }
        Ok(())
    })
    .await
}

/// [C15] "Control stream": the broker sends a `Ping` after `keepalive_ms`
/// of silence on its side, with at most one outstanding: a client that
/// answers keeps getting one `Ping` at a time; one that does not gets no
/// second `Ping` before the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c15_pings_come_one_at_a_time() -> Result<()> {
    let broker = Broker::start_with(&[("keepalive", "\"300ms\"")])?;
    with_log(&broker, async {
        let mut answering = broker.session(ALICE).await?;
        ensure!(answering.welcome.keepalive_ms == 300);
        for _ in 0..4 {
            match answering.control.next().await? {
                Frame::Ping(p) => {
                    answering
                        .control
                        .send(&Frame::Pong(Pong { nonce: p.nonce }))
                        .await?;
                }
                other => bail!("expected Ping, got {other:?}"),
            }
        }
        answering.ok(AdminRequest::WhoAmI).await?;
        let mut silent = broker.session(ALICE).await?;
        ensure!(matches!(silent.control.next().await?, Frame::Ping(_)));
        // No second Ping while the first is unanswered: the next frame is
        // the timeout.
        silent
            .control
            .expect_error(ErrorCode::Timeout)
            .await
            .map(drop)
    })
    .await
}

/// [C16] "Control stream": a client silent on the control stream for
/// 3 × `keepalive_ms` is closed with `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c16_a_silent_client_is_closed_with_timeout() -> Result<()> {
    let broker = Broker::start_with(&[("keepalive", "\"300ms\"")])?;
    with_log(&broker, async {
        let mut alice = broker.session(ALICE).await?;
        let started = std::time::Instant::now();
        ensure!(matches!(alice.control.next().await?, Frame::Ping(_)));
        alice.control.expect_error(ErrorCode::Timeout).await?;
        alice.control.expect_finished().await?;
        closed_with(&alice.conn, ErrorCode::Timeout).await?;
        // Not before three intervals (a lower bound: it cannot be flaky).
        ensure!(started.elapsed() >= std::time::Duration::from_millis(800));
        Ok(())
    })
    .await
}

/// [C17] "Control stream": a connection-level `Error` is delivered before
/// the close: a client that reads only after the connection is closed
/// still finds it, and the close carries the same code and the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c17_the_error_arrives_before_the_close() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        for (first, code) in [
            (
                hello_with(vec![7], DEFAULT_MAX_FRAME_SIZE),
                ErrorCode::UnsupportedVersion,
            ),
            (hello_with(vec![1], 64 * 1024), ErrorCode::FrameSizeTooSmall),
        ] {
            let conn = broker.connect(ALICE).await?;
            let mut control = Stream::open(&conn).await?;
            control.send(&first).await?;
            // Do not read until the broker has closed the connection.
            let reason = closed_with(&conn, code).await?;
            let error = control.expect_error(code).await?;
            ensure!(error.message == reason);
        }
        Ok(())
    })
    .await
}

/// [C9] "Control stream": the broker looks at no other stream before it
/// has sent `Welcome`; a stream opened earlier is served after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c9_no_stream_is_served_before_welcome() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let conn = broker.connect(ALICE).await?;
        let mut control = Stream::open(&conn).await?;
        let hello = hello().to_bytes(DEFAULT_MAX_FRAME_SIZE)?;
        // All of Hello but its last byte: the handshake is not done.
        control.send_raw(&hello[..hello.len() - 1]).await?;
        let mut early = Stream::open(&conn).await?;
        early.send(&Frame::Request(AdminRequest::WhoAmI)).await?;
        early.finish()?;
        early
            .expect_quiet(std::time::Duration::from_millis(300))
            .await?;
        control.send_raw(&hello[hello.len() - 1..]).await?;
        ensure!(matches!(control.next().await?, Frame::Welcome(_)));
        ensure!(matches!(early.next().await?, Frame::Response(_)));
        // Refused at the handshake: the early stream is never served.
        let conn = broker.connect(ALICE).await?;
        // The control stream is the first opened (id 0), even though its
        // Hello is written after the early stream's request.
        let mut control = Stream::open(&conn).await?;
        let mut early = Stream::open(&conn).await?;
        early.send(&Frame::Request(AdminRequest::WhoAmI)).await?;
        early.finish()?;
        control
            .send(&hello_with(vec![7], DEFAULT_MAX_FRAME_SIZE))
            .await?;
        match early.read().await {
            Err(End::Closed(Some(code), _)) => {
                ensure!(
                    code == u64::from(ErrorCode::UnsupportedVersion.as_u16()),
                    "{code}"
                );
                Ok(())
            }
            other => bail!("an early stream of a refused connection: {other:?}"),
        }
    })
    .await
}
