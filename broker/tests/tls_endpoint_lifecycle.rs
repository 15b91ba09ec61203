//! The endpoint around the handshake: the connection limit, connection
//! metrics, and graceful shutdown (handlers finish, stuck ones are aborted,
//! clients learn why the connection closed).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{GUARD, Options, client_endpoint, good_client, request, start, start_with_ca};
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_broker::transport::endpoint::AcceptedConnection;
use strongbox_protocol::ErrorCode;
use tokio::sync::mpsc;

/// Connects, makes one request, and keeps the connection open.
async fn hold(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> quinn::Connection {
    tokio::time::timeout(GUARD, async {
        let conn = endpoint
            .connect_with(config, addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"whoami").await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(1024).await.unwrap();
        conn
    })
    .await
    .expect("connection hung")
}

async fn eventually(mut cond: impl FnMut() -> bool, what: &str) {
    tokio::time::timeout(GUARD, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never happened: {what}"));
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_until_one_closes() {
    let b = start(Options {
        max_connections: 1,
        ..Options::default()
    })
    .await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let endpoint = client_endpoint();
    let first = hold(&endpoint, b.addr, good_client(&b.ca, &cert)).await;

    let err = request(b.addr, good_client(&b.ca, &cert))
        .await
        .unwrap_err();
    assert!(err.connection_refused, "{err:?}");
    assert_eq!(
        b.metrics
            .connections_refused
            .with_label_values(&["limit"])
            .get(),
        1
    );

    first.close(0u32.into(), b"done");
    let mut admitted = false;
    tokio::time::timeout(GUARD, async {
        while !admitted {
            admitted = request(b.addr, good_client(&b.ca, &cert)).await.is_ok();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the freed slot was never reused");
    let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
    b.stop().await;
}

#[tokio::test]
async fn connection_metrics_follow_connections() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let endpoint = client_endpoint();
    let conn = hold(&endpoint, b.addr, good_client(&b.ca, &cert)).await;
    assert_eq!(b.metrics.connections_active.get(), 1);
    assert_eq!(b.metrics.connections_total.get(), 1);
    conn.close(0u32.into(), b"done");
    let m = b.metrics.clone();
    eventually(
        || m.connections_active.get() == 0,
        "active connections back to 0",
    )
    .await;
    assert_eq!(b.metrics.connections_total.get(), 1);
    let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
    let report = b.stop().await;
    assert_eq!(report.accepted, 1);
}

#[tokio::test]
async fn shutdown_lets_handlers_answer_then_closes_with_shutting_down() {
    let b = start(Options::default()).await;
    let cert =
        b.ca.issue(&CertSpec::client_uri("spiffe://corp/a"))
            .unwrap();
    let endpoint = client_endpoint();
    let conn = hold(&endpoint, b.addr, good_client(&b.ca, &cert)).await;

    b.shutdown.send_replace(true);
    // The handler's last word arrives before the connection closes.
    let bye = tokio::time::timeout(GUARD, async {
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        recv.read_to_end(16).await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(bye, b"bye");
    let closed = tokio::time::timeout(GUARD, conn.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(ErrorCode::ShuttingDown.as_u16())
            );
        }
        other => panic!("unexpected close: {other}"),
    }
    let report = tokio::time::timeout(GUARD, b.task).await.unwrap().unwrap();
    assert_eq!((report.accepted, report.aborted), (1, 0));

    // Nothing is accepted any more.
    let err = tokio::time::timeout(GUARD, async {
        let ep = client_endpoint();
        let mut cfg = good_client(&b.ca, &cert);
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(1).try_into().unwrap()));
        cfg.transport_config(std::sync::Arc::new(transport));
        ep.connect_with(cfg, b.addr, "localhost").unwrap().await
    })
    .await
    .unwrap();
    assert!(err.is_err());
    let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
}

/// A handler that ignores shutdown and never returns.
async fn stuck(conn: AcceptedConnection, seen: mpsc::UnboundedSender<String>) {
    let _ = seen.send(conn.principal.to_string());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn handlers_that_overrun_the_grace_period_are_aborted() {
    let ca = TestCa::new("Test CA").unwrap();
    let cert = ca.issue(&CertSpec::client_uri("spiffe://corp/a")).unwrap();
    let mut b = start_with_ca(
        ca,
        Options {
            shutdown_grace: "200ms",
            ..Options::default()
        },
        stuck,
    )
    .await;
    let endpoint = client_endpoint();
    let conn = endpoint
        .connect_with(good_client(&b.ca, &cert), b.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(GUARD, b.principals.recv())
            .await
            .unwrap()
            .as_deref(),
        Some("spiffe://corp/a")
    );
    let metrics = b.metrics.clone();
    let report = b.stop().await;
    assert_eq!(report.aborted, 1);
    // The aborted connection is no longer counted, and its client is told.
    assert_eq!(metrics.connections_active.get(), 0);
    let closed = tokio::time::timeout(GUARD, conn.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(ErrorCode::ShuttingDown.as_u16())),
        "{closed}"
    );
    let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
}
