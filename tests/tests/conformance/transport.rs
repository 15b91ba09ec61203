//! docs/PROTOCOL.md, "Transport".

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::subscribe::{Credit, StartPosition};
use strongbox_tests::raw::{Identity, client_config};

use crate::harness::*;

/// [T1] "Transport": a broker MUST refuse a handshake that does not offer
/// the ALPN `strongbox/1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_a_handshake_without_the_alpn_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let ca = std::fs::read(broker.dir().join("ca/ca.pem"))?;
        for alpn in [&b"h3"[..], b"strongbox/2"] {
            let config =
                client_config(&ca, Some(Identity::profile(broker.dir(), ALICE)?), &[alpn])?;
            let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
            let connecting = endpoint.connect_with(config, broker.process.addr, "localhost")?;
            match tokio::time::timeout(WAIT, connecting).await? {
                Err(quinn::ConnectionError::ConnectionClosed(close)) => {
                    // TLS alert 120, no_application_protocol (0x100 + 120).
                    ensure!(
                        u64::from(close.error_code) == 0x178,
                        "{alpn:?}: refused with {close}"
                    );
                }
                other => bail!("{alpn:?}: the handshake was not refused: {other:?}"),
            }
        }
        // The same certificate with the right ALPN is served.
        broker.session(ALICE).await.map(drop)
    })
    .await
}

/// [T2] "Transport": a connection without a valid client certificate fails
/// in the TLS handshake; no Strongbox frame is exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_no_client_certificate_no_frame() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let ca = std::fs::read(broker.dir().join("ca/ca.pem"))?;
        let config = client_config(&ca, None, &[strongbox_protocol::ALPN])?;
        // With TLS 1.3 the client may think the handshake is done; the
        // broker's refusal then ends the connection at the first use.
        let conn = match broker.connect_with(config).await {
            Ok(conn) => conn,
            Err(_) => return Ok(()),
        };
        let mut control = match Stream::open(&conn).await {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        let _ = control.send(&hello()).await;
        match control.read().await {
            Err(End::Closed(code, reason)) => {
                // A transport-level (TLS) close, not an application close
                // with a Strongbox code: no frame was exchanged.
                ensure!(
                    code.is_none(),
                    "closed with application code {code:?}: {reason}"
                );
                Ok(())
            }
            other => bail!("a connection without a certificate got {other:?}"),
        }
    })
    .await
}

/// [T3] "Transport": the principal is mapped from the certificate (first
/// SAN URI) and reported in `Welcome.principal` and `WhoAmIResult`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_the_principal_comes_from_the_certificate() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        ensure!(
            alice.welcome.principal == ALICE_PRINCIPAL,
            "{:?}",
            alice.welcome
        );
        match alice.ok(AdminRequest::WhoAmI).await? {
            AdminResponse::WhoAmI {
                principal,
                superuser,
                ..
            } => {
                ensure!(principal == ALICE_PRINCIPAL, "{principal}");
                ensure!(!superuser);
            }
            other => bail!("{other:?}"),
        }
        let bob = broker.session(BOB).await?;
        ensure!(bob.welcome.principal == "spiffe://strongbox.dev/bob");
        Ok(())
    })
    .await
}

/// [T4] "Transport": the broker opens no stream of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_the_broker_opens_no_streams() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let admin = broker.session(ADMIN).await?;
        admin.create_topic("demo.t4", 1).await?;
        admin.append("demo.t4", 0, batch(&["a"])).await?;
        let mut sub = admin
            .subscribe(subscribe_partition(
                "demo.t4",
                0,
                StartPosition::Earliest,
                1 << 20,
            ))
            .await?;
        ensure!(matches!(sub.next().await?, Frame::Assignment(_)));
        ensure!(matches!(sub.next().await?, Frame::Records(_)));
        sub.send(&Frame::Credit(Credit { bytes: 1 })).await?;
        let quiet = Duration::from_millis(500);
        ensure!(
            tokio::time::timeout(quiet, admin.conn.accept_bi())
                .await
                .is_err(),
            "the broker opened a bidirectional stream"
        );
        ensure!(
            tokio::time::timeout(quiet, admin.conn.accept_uni())
                .await
                .is_err(),
            "the broker opened a unidirectional stream"
        );
        Ok(())
    })
    .await
}

/// [T5] "Transport": the application error code of STOP_SENDING and
/// CONNECTION_CLOSE is the error code's number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5_quic_codes_are_error_codes() -> Result<()> {
    let broker = Broker::start()?;
    with_log(&broker, async {
        let alice = broker.session(ALICE).await?;
        // A stream-level error: STOP_SENDING with protocol_violation (1).
        let mut s = alice.open().await?;
        s.send(&Frame::Credit(Credit { bytes: 1 })).await?;
        s.expect_ended_with(ErrorCode::ProtocolViolation).await?;
        // A connection-level error: CONNECTION_CLOSE with unexpected_frame (6).
        let mut alice = alice;
        alice.control.send(&hello()).await?;
        closed_with(&alice.conn, ErrorCode::UnexpectedFrame)
            .await
            .map(drop)
    })
    .await
}

/// [T6] "Transport": a broker that restarted (here after SIGKILL, on the
/// same directory and address) answers the next packet of a connection it
/// lost with a QUIC stateless reset under a key that survived the restart:
/// the client's connection fails with a reset at once, not after its idle
/// timeout (two minutes here), and a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_a_restarted_broker_resets_the_connections_it_lost() -> Result<()> {
    let mut broker = Broker::start()?;
    let mut config = broker.client_config(ALICE)?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(120).try_into()?));
    transport.keep_alive_interval(None);
    config.transport_config(std::sync::Arc::new(transport));
    let conn = broker.connect_with(config).await?;
    let mut session = Session::establish(conn, hello()).await?;
    ensure!(matches!(
        session.ok(AdminRequest::WhoAmI).await?,
        AdminResponse::WhoAmI { .. }
    ));

    broker.crash_and_restart_in_place()?;
    with_log(&broker, async {
        // The client's next packet: a Ping on its control stream (unless
        // a packet it still had to send, an acknowledgement say, already
        // drew the reset: then the write fails with it).
        let ping = Frame::Ping(strongbox_protocol::frames::control::Ping { nonce: 6 });
        let _ = session.control.send(&ping).await;
        let lost = tokio::time::timeout(WAIT, session.conn.closed())
            .await
            .map_err(|_| anyhow::anyhow!("no reset within {WAIT:?}"))?;
        ensure!(
            matches!(lost, quinn::ConnectionError::Reset),
            "expected a stateless reset, got {lost}"
        );
        broker.session(ALICE).await.map(drop)
    })
    .await
}
