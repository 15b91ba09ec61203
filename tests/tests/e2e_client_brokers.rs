//! A client with several broker addresses, against real broker processes:
//! a dead address first is skipped, and a lost broker is replaced by the
//! next live one. Two independent single-node brokers stand in for a
//! cluster; only connection behaviour is checked.

use std::time::Duration;

use anyhow::{Result, ensure};
use strongbox_client::{Client, ClientConfig};
use strongbox_tests::BrokerProcess;

fn config_for(profile: &std::path::Path, brokers: &[String]) -> Result<ClientConfig> {
    let base = ClientConfig::from_profile(profile)?;
    let mut config =
        ClientConfig::with_brokers(brokers.iter().cloned(), base.ca, base.cert, base.key);
    config.server_name = Some("localhost".into());
    config.connect_timeout = Duration::from_secs(3);
    config.reconnect.initial_backoff = Duration::from_millis(50);
    config.reconnect.max_backoff = Duration::from_millis(500);
    config.reconnect.give_up_after = Some(Duration::from_secs(40));
    config.request_timeout = Duration::from_secs(5);
    Ok(config)
}

/// A UDP port nothing listens on (bound, then released).
fn dead_address() -> Result<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_skipped_and_a_lost_broker_is_replaced() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut a = BrokerProcess::start_dev(&tmp.path().join("a"))?;
    // The second broker shares the first one's CA, so one profile opens both.
    let b_dir = tmp.path().join("b");
    std::fs::create_dir(&b_dir)?;
    for sub in ["ca", "tls", "profiles", "keys"] {
        strongbox_tests::copy_dir(&tmp.path().join("a").join(sub), &b_dir.join(sub))?;
    }
    std::fs::copy(tmp.path().join("a/broker.toml"), b_dir.join("broker.toml"))?;
    std::fs::create_dir(b_dir.join("data"))?;
    let b = BrokerProcess::start_dev(&b_dir)?;
    let profile = a.profile("admin");

    let brokers = vec![dead_address()?, a.addr.to_string(), b.addr.to_string()];
    let client = Client::connect(config_for(&profile, &brokers)?).await?;
    ensure!(
        client.broker_addr() == a.addr.to_string(),
        "{}",
        client.broker_addr()
    );
    client.admin().whoami().await?;

    // Kill the broker it is connected to: once the client sees the
    // connection gone (keep-alives unanswered), it goes on at the next one.
    // Requests sent meanwhile may time out; they are sent again.
    a.crash()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(55);
    let who = loop {
        match client.admin().whoami().await {
            Ok(who) => break who,
            Err(e) if tokio::time::Instant::now() < deadline => {
                ensure!(e.is_retriable(), "{e}");
            }
            Err(e) => return Err(e.into()),
        }
    };
    ensure!(who.principal == "spiffe://strongbox.dev/admin", "{who:?}");
    ensure!(
        client.broker_addr() == b.addr.to_string(),
        "{}",
        client.broker_addr()
    );
    client.close().await;
    Ok(())
}
