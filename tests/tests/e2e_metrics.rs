//! `/metrics` tells the truth an alerting setup relies on: every series of
//! the connection and authentication families is there from start-up, at
//! zero; `strongbox_connections_active` counts each connection once;
//! `strongbox_subscriptions_active` falls back when a subscription's task
//! is aborted with its connection; a refused certificate counts in
//! `strongbox_connections_refused_total{reason}` and
//! `strongbox_auth_failures_total{stage}`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_client::protocol::frame::Frame;
use strongbox_client::protocol::frames::subscribe::{StartPosition, Subscribe, SubscriptionTarget};
use strongbox_client::{ConsumerConfig, Subscription};
use strongbox_protocol::ALPN;
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::connect;
use strongbox_tests::raw::{self, FrameStream, Identity};

/// How long a gauge gets to settle after the event that moves it (the
/// broker updates it when a task ends, which is asynchronous to the
/// client).
const SETTLE: Duration = Duration::from_secs(20);

/// The value of the series `series` (name and labels, exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `series` reads `want`, then checks it once more: a gauge
/// that overshoots or never gets there fails.
async fn settles_at(broker: &BrokerProcess, series: &str, want: f64) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = broker.metrics_text()?;
        let got = value(&text, series);
        if got == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{series} is {got:?}, not {want}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exactly(text: &str, series: &str, want: f64) -> Result<()> {
    let got = value(text, series);
    ensure!(
        got == Some(want),
        "{series} is {got:?}, not {want}:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_refusals_and_aborted_subscriptions() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;

    // At start-up, before any client: every series at zero.
    let start = broker.metrics_text()?;
    for series in [
        "strongbox_connections_active",
        "strongbox_connections_total",
        "strongbox_subscriptions_active",
        "strongbox_connections_refused_total{reason=\"limit\"}",
        "strongbox_connections_refused_total{reason=\"certificate\"}",
        "strongbox_connections_refused_total{reason=\"handshake\"}",
        "strongbox_connections_refused_total{reason=\"identity\"}",
        "strongbox_auth_failures_total{stage=\"certificate\"}",
        "strongbox_auth_failures_total{stage=\"handshake\"}",
        "strongbox_auth_failures_total{stage=\"identity\"}",
        "strongbox_acl_denials_total{operation=\"publish\"}",
        "strongbox_hsm_errors_total{operation=\"unwrap\"}",
        "strongbox_messages_in_total{topic=\"demo.greetings\"}",
        "strongbox_audit_dropped_total",
    ] {
        exactly(&start, series, 0.0)?;
    }

    // Three clients: three connections, each counted once.
    let mut clients = Vec::new();
    for name in ["admin", "alice", "bob"] {
        clients.push(connect(&broker.profile(name)).await?);
    }
    let text = broker.metrics_text()?;
    exactly(&text, "strongbox_connections_active", 3.0)?;
    exactly(&text, "strongbox_connections_total", 3.0)?;

    // A subscription through the library, closed by its client.
    let mut consumer = clients[1]
        .subscribe(
            Subscription::partition("demo.greetings", 0),
            ConsumerConfig::default(),
        )
        .await?;
    settles_at(&broker, "strongbox_subscriptions_active", 1.0).await?;
    consumer.close().await;
    settles_at(&broker, "strongbox_subscriptions_active", 0.0).await?;

    // Two subscriptions on a raw connection that then breaks the protocol
    // on its control stream: the broker ends the connection and aborts
    // its stream tasks.
    let conn = raw::connect(broker.addr, raw::profile_config(&dir, "alice")?).await?;
    let (mut control, _) = raw::handshake(&conn).await?;
    let mut subscriptions = Vec::new();
    for _ in 0..2 {
        let mut s = FrameStream::open(&conn).await?;
        s.send(&Frame::Subscribe(Subscribe {
            topic: "demo.greetings".into(),
            target: SubscriptionTarget::Partition(0),
            start: StartPosition::Latest,
            credit: 1 << 20,
            skip_damaged: false,
        }))
        .await?;
        match s.next().await {
            Ok(Frame::Assignment(_)) => {}
            other => bail!("expected Assignment, got {other:?}"),
        }
        subscriptions.push(s);
    }
    exactly(
        &broker.metrics_text()?,
        "strongbox_subscriptions_active",
        2.0,
    )?;
    exactly(&broker.metrics_text()?, "strongbox_connections_active", 4.0)?;
    control.send(&raw::hello()).await?;
    let closed = tokio::time::timeout(SETTLE, conn.closed())
        .await
        .context("the broker closes the connection")?;
    ensure!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    settles_at(&broker, "strongbox_connections_active", 3.0).await?;
    settles_at(&broker, "strongbox_subscriptions_active", 0.0).await?;
    drop(subscriptions);

    // A certificate of another CA: refused, and counted as such.
    let stranger = TestCa::new("not the broker's CA")?
        .issue(&CertSpec::client_uri("spiffe://elsewhere/mallory"))?;
    let ca_pem = std::fs::read(dir.join("ca/ca.pem"))?;
    let config = raw::client_config(
        &ca_pem,
        Some(Identity::from_pem(
            stranger.cert_pem.as_bytes(),
            stranger.key_pem().as_bytes(),
        )?),
        &[ALPN],
    )?;
    if let Ok(conn) = raw::connect(broker.addr, config).await {
        // With TLS 1.3 the refusal may only show on the first stream.
        let _ = raw::handshake(&conn).await;
    }
    settles_at(
        &broker,
        "strongbox_connections_refused_total{reason=\"certificate\"}",
        1.0,
    )
    .await?;
    let text = broker.metrics_text()?;
    exactly(
        &text,
        "strongbox_auth_failures_total{stage=\"certificate\"}",
        1.0,
    )?;
    exactly(
        &text,
        "strongbox_connections_refused_total{reason=\"handshake\"}",
        0.0,
    )?;
    exactly(&text, "strongbox_connections_active", 3.0)?;
    exactly(&text, "strongbox_connections_total", 4.0)?;

    // Every client gone: nothing open.
    for client in clients {
        client.close().await;
    }
    settles_at(&broker, "strongbox_connections_active", 0.0).await?;
    exactly(
        &broker.metrics_text()?,
        "strongbox_subscriptions_active",
        0.0,
    )?;
    Ok(())
}
