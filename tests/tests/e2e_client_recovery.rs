//! Clients recover or fail, never hang: `strongbox publish` fed from
//! standard input keeps going across a SIGKILL and restart of its broker
//! (same data directory, same address) and stores every line exactly once;
//! against a broker that never comes back it exits 1 with a one-line
//! reason within its delivery timeout; a subscriber resumes after the
//! restart without losing or repeating records.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use strongbox_client::{Consumer, ConsumerConfig, Subscription};
use strongbox_tests::client::{connect, topic};
use strongbox_tests::running_cli::RunningCli;
use strongbox_tests::{BrokerProcess, cli_with_stdin};

const PARTITIONS: u32 = 3;
/// Lines fed to `publish`, in chunks, at a steady pace.
const LINES: usize = 12_000;
const CHUNK: usize = 200;
const PACE: Duration = Duration::from_millis(40);
/// Every wait on a process is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);

fn line(i: usize) -> String {
    format!("line-{i:06}")
}

/// A dev broker with a topic `name` of [`PARTITIONS`] partitions.
async fn broker_with_topic(dir: &std::path::Path, name: &str) -> Result<BrokerProcess> {
    let broker = BrokerProcess::start_dev(dir)?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic(name, topic(PARTITIONS)).await?;
    admin.close().await;
    Ok(broker)
}

/// Every value stored in `name`, read with a consumer from the start.
async fn stored_values(broker: &BrokerProcess, name: &str, expected: usize) -> Result<Vec<String>> {
    let client = connect(&broker.profile("admin")).await?;
    let info = client.admin().describe_topic(name).await?;
    let stored: u64 = info
        .partitions
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
    ensure!(
        stored == expected as u64,
        "{stored} records stored, {expected} lines published"
    );
    let mut consumer = Consumer::subscribe(
        &client,
        Subscription::all_partitions(name),
        ConsumerConfig::default(),
    )
    .await?;
    let mut values = Vec::with_capacity(expected);
    while values.len() < expected {
        match tokio::time::timeout(LIMIT, consumer.next()).await {
            Ok(Some(Ok(r))) => values.push(String::from_utf8(r.value.to_vec())?),
            Ok(Some(Err(e))) => bail!("after {} records: {e}", values.len()),
            Ok(None) => bail!("stream ended after {} records", values.len()),
            Err(_) => bail!("no record for {LIMIT:?} after {}", values.len()),
        }
    }
    consumer.close().await;
    client.close().await;
    Ok(values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_stdin_survives_a_broker_sigkill_and_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let name = "demo.recovery";
    let mut broker = broker_with_topic(&dir, name).await?;
    let addr = broker.addr;
    let mut publish = RunningCli::start(
        &broker.profile("alice"),
        // Short enough that waiting out the QUIC idle timeout (30 s) to
        // notice the restart would fail the records.
        &["--json", "publish", name, "--timeout", "15s"],
    )?;

    // Feed a third of the lines, wait for some acknowledgements, kill the
    // broker while lines keep coming, and bring it back a second later on
    // the same address and data directory.
    let mut fed = 0;
    let mut feed = |publish: &mut RunningCli, upto: usize| -> Result<()> {
        while fed < upto {
            let chunk: String = (fed..(fed + CHUNK).min(upto))
                .map(|i| line(i) + "\n")
                .collect();
            publish.write(chunk.as_bytes())?;
            fed = (fed + CHUNK).min(upto);
            std::thread::sleep(PACE);
        }
        Ok(())
    };
    feed(&mut publish, LINES / 3)?;
    publish.wait_until(LIMIT, |p| p.stdout.len() >= 1_000)?;
    broker.crash()?;
    publish.drain();
    let acked_at_kill = publish.stdout.len();
    feed(&mut publish, LINES / 2)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut broker = BrokerProcess::start_dev_on(&dir, addr)
        .context("restarting the broker on the same address")?;
    feed(&mut publish, LINES)?;
    publish.close_stdin();
    let code = publish.wait(LIMIT)?;
    ensure!(
        code == 0,
        "publish exited {code}; stderr:\n{}\nbroker log:\n{}",
        publish.stderr.join("\n"),
        broker.log_text()
    );
    eprintln!("{acked_at_kill} of {LINES} lines acknowledged when the broker was killed");

    // Every line was acknowledged once, at a distinct place.
    let mut places = BTreeMap::new();
    for out in &publish.stdout {
        let v: serde_json::Value = serde_json::from_str(out)?;
        let place = (v["partition"].as_u64(), v["offset"].as_u64());
        ensure!(
            places.insert(place, ()).is_none(),
            "acknowledged twice: {out}"
        );
    }
    ensure!(
        places.len() == LINES,
        "{} acknowledgements for {LINES} lines",
        places.len()
    );

    // Read back: every line stored, none twice.
    let mut values = stored_values(&broker, name, LINES).await?;
    values.sort();
    let expected: Vec<String> = (0..LINES).map(line).collect();
    ensure!(
        values == expected,
        "the stored values differ from the lines"
    );
    broker.terminate()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_within_its_timeout_when_the_broker_never_returns() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let name = "demo.gone";
    let mut broker = broker_with_topic(&dir, name).await?;
    let timeout = Duration::from_secs(3);
    let mut publish = RunningCli::start(
        &broker.profile("alice"),
        &["publish", name, "--timeout", "3s"],
    )?;
    for i in 0..500 {
        publish.write(format!("{}\n", line(i)).as_bytes())?;
    }
    publish.wait_until(LIMIT, |p| p.stdout.len() >= 500)?;
    broker.crash()?;
    let killed = Instant::now();
    // Lines keep coming; none can be acknowledged any more.
    let mut written = 500;
    while publish
        .write(format!("{}\n", line(written)).as_bytes())
        .is_ok()
        && killed.elapsed() < LIMIT
    {
        written += 1;
        std::thread::sleep(Duration::from_millis(5));
        publish.drain();
        if written >= 2_000 {
            break;
        }
    }
    let code = publish.wait(LIMIT)?;
    let took = killed.elapsed();
    ensure!(code == 1, "exit status {code}");
    // Generous: the timeout, plus the time to wind down on a loaded machine.
    ensure!(
        took < timeout + Duration::from_secs(15),
        "took {took:?} to fail with a {timeout:?} delivery timeout"
    );
    ensure!(
        publish.stderr.len() == 1,
        "one line of reason: {:?}",
        publish.stderr
    );
    let reason = &publish.stderr[0];
    ensure!(
        reason.starts_with("error: timed out: ") && reason.contains("delivery timeout of 3s"),
        "{reason}"
    );
    ensure!(
        publish.stdout.len() < written,
        "lines written after the kill were not reported as published"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_after_the_broker_restarts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let name = "demo.tail";
    let mut broker = broker_with_topic(&dir, name).await?;
    let addr = broker.addr;
    let total = 2 * 300;
    let mut subscribe = RunningCli::start(
        &broker.profile("bob"),
        &[
            "--json",
            "subscribe",
            name,
            "--from",
            "earliest",
            "--count",
            &total.to_string(),
            "--timeout",
            "30s",
        ],
    )?;
    let input: String = (0..300).map(|i| line(i) + "\n").collect();
    let out = cli_with_stdin(
        &broker.profile("alice"),
        &["publish", name],
        Some(input.as_bytes()),
    )?;
    ensure!(out.status.success(), "{out:?}");
    subscribe.wait_until(LIMIT, |s| s.stdout.len() >= 300)?;
    broker.crash()?;
    std::thread::sleep(Duration::from_secs(1));
    let broker = BrokerProcess::start_dev_on(&dir, addr)?;
    let input: String = (300..600).map(|i| line(i) + "\n").collect();
    let out = cli_with_stdin(
        &broker.profile("alice"),
        &["publish", name],
        Some(input.as_bytes()),
    )?;
    ensure!(out.status.success(), "{out:?}");
    let code = subscribe.wait(LIMIT)?;
    ensure!(code == 0, "subscribe exited {code}: {:?}", subscribe.stderr);
    let mut values: Vec<String> = subscribe
        .stdout
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["value"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<Result<_>>()?;
    values.sort();
    let expected: Vec<String> = (0..total).map(line).collect();
    ensure!(values == expected, "every record once, across the restart");
    Ok(())
}
