//! Offsets are never reused and evidence is kept, with real broker
//! processes:
//!
//! - a partition whose directory is replaced by an older copy of itself
//!   (so its newest segment is older, and a segment the key registry knows
//!   is gone) opens read-only: `topic describe` (text and JSON) and
//!   `/metrics` say so, a publish is refused with `partition_read_only`, the
//!   trail has `partition.readonly`; `topic recover --accept-loss` lets it
//!   take writes again after the highest offset it ever acknowledged,
//!   audited, and readers read across the gap;
//! - a partition directory that vanished opens read-only too, and is not
//!   created again (not even by a second restart) until the loss is
//!   accepted;
//! - so does a partition missing a segment in the middle: readers get the
//!   records before the lost offsets and a report naming them, and after
//!   `topic recover --accept-loss` read across them;
//! - a consumer group cannot commit past a partition's end (which would
//!   make the next start take the log for one cut short);
//! - a torn tail cut at recovery is kept in a quarantine file, audited
//!   (offset and byte count), and reported by the offline `verify`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strongbox_tests::cli_checks::{cli_fails, cli_json, cli_ok, json_values, text};
use strongbox_tests::{BrokerProcess, START_TIMEOUT, binary, cli_with_stdin, copy_dir};

/// Publishes `values` (one record each) to partition 0 of `topic`.
fn publish(broker: &BrokerProcess, topic: &str, values: &[String]) -> Result<()> {
    let input = values.join("\n") + "\n";
    let out = cli_with_stdin(
        &broker.profile("admin"),
        &["publish", topic, "--partition", "0"],
        Some(input.as_bytes()),
    )?;
    ensure!(
        out.status.success(),
        "publish failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}

/// The values of partition 0 of `topic` from `from`, with their offsets.
fn read(
    broker: &BrokerProcess,
    topic: &str,
    from: u64,
    count: usize,
) -> Result<Vec<(u64, String)>> {
    let out = cli_ok(
        &broker.profile("admin"),
        &[
            "--json",
            "subscribe",
            topic,
            "--partition",
            "0",
            "--from",
            &from.to_string(),
            "--count",
            &count.to_string(),
        ],
    )?;
    let values = json_values(&out)?;
    let offsets: Vec<u64> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            v["offset"].as_u64().context("no offset")
        })
        .collect::<Result<_>>()?;
    Ok(offsets.into_iter().zip(values).collect())
}

fn describe(broker: &BrokerProcess, topic: &str) -> Result<Value> {
    cli_json(&broker.profile("admin"), &["topic", "describe", topic])
}

fn partition_dir(broker: &BrokerProcess, topic: &str) -> Result<PathBuf> {
    let id = describe(broker, topic)?["topic_id"]
        .as_str()
        .context("topic id")?
        .to_owned();
    Ok(broker.data_dir().join("log").join(id).join("0"))
}

/// Every audit record, as `audit tail --json` prints them.
fn audit_records(broker: &BrokerProcess) -> Result<Vec<Value>> {
    cli_ok(&broker.profile("admin"), &["audit", "tail", "--json"])?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Polls the trail until a record with `action` appears; returns it.
async fn wait_for_audit(broker: &BrokerProcess, action: &str) -> Result<Value> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(r) = audit_records(broker)?
            .into_iter()
            .rev()
            .find(|r| r["action"] == action)
        {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("no {action} record in the audit trail");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `/metrics` shows `line`.
async fn wait_for_metric(broker: &BrokerProcess, line: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = broker.metrics_text()?;
        if text.lines().any(|l| l.trim() == line) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("/metrics never showed {line}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn values(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("v{i}")).collect()
}

fn start(dir: &Path) -> Result<BrokerProcess> {
    BrokerProcess::start_dev(dir)
}

#[tokio::test]
async fn an_older_copy_opens_read_only_until_recovered_above_the_old_end() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dev = root.path().join("dev");
    let mut broker = start(&dev)?;
    let admin = broker.profile("admin");
    cli_ok(&admin, &["topic", "create", "ledger", "--partitions", "1"])?;
    publish(&broker, "ledger", &values(0..10))?;
    let dir = partition_dir(&broker, "ledger")?;
    broker.terminate()?;

    // An older copy of the whole partition directory: offsets 0..10.
    let older = root.path().join("older");
    copy_dir(&dir, &older)?;

    let mut broker = start(&dev)?;
    publish(&broker, "ledger", &values(10..25))?;
    ensure!(read(&broker, "ledger", 0, 25)?.len() == 25);
    broker.terminate()?;

    // The operator restores the older copy: the newest segment is older,
    // and the segment that held 10..25 is gone.
    std::fs::remove_dir_all(&dir)?;
    copy_dir(&older, &dir)?;
    let broker = start(&dev)?;

    let info = describe(&broker, "ledger")?;
    let p = &info["partition_state"][0];
    ensure!(p["state"] == "read_only", "{info:#}");
    let why = p["error"].as_str().unwrap_or_default();
    ensure!(
        why.contains("ends at offset 10") && why.contains("up to 25"),
        "the reason names both ends: {why}"
    );
    ensure!(
        why.contains("segment(s) the key registry knows are missing"),
        "{why}"
    );
    let table = cli_ok(&admin, &["topic", "describe", "ledger"])?;
    ensure!(table.contains("read-only"), "{table}");
    wait_for_metric(
        &broker,
        "strongbox_partition_state{partition=\"0\",state=\"read_only\",topic=\"ledger\"} 1",
    )
    .await?;

    // Writes are refused with the coded error, reads still work.
    cli_fails(
        &admin,
        1,
        &["publish", "ledger", "--partition", "0", "refused"],
        "read-only",
    )?;
    let client = strongbox_tests::client::connect(&admin).await?;
    let producer = client
        .producer(strongbox_client::ProducerConfig::default())
        .await?;
    let refused = producer
        .send_and_wait(strongbox_client::ProducerRecord {
            topic: "ledger".into(),
            partition: Some(0),
            value: "refused".into(),
            ..strongbox_client::ProducerRecord::default()
        })
        .await
        .expect_err("read-only");
    ensure!(
        refused.code() == Some(strongbox_protocol::ErrorCode::PartitionReadOnly),
        "refused with partition_read_only at once (not retried): {refused}"
    );
    drop(producer);
    client.close().await;
    ensure!(
        read(&broker, "ledger", 0, 10)?.len() == 10,
        "reads still work"
    );
    let readonly = wait_for_audit(&broker, "partition.readonly").await?;
    ensure!(readonly["outcome"] == "alert", "{readonly}");
    ensure!(readonly["details"]["partition"] == 0, "{readonly}");

    // The operator accepts the loss.
    cli_fails(
        &admin,
        1,
        &["topic", "recover", "ledger", "--partition", "0"],
        "--accept-loss",
    )?;
    let recovered = cli_json(
        &admin,
        &[
            "topic",
            "recover",
            "ledger",
            "--partition",
            "0",
            "--accept-loss",
        ],
    )?;
    ensure!(
        recovered["partition_state"][0]["state"] == "ok",
        "{recovered:#}"
    );
    let audit = wait_for_audit(&broker, "partition.recover").await?;
    ensure!(audit["details"]["resume_offset"] == 25, "{audit}");
    ensure!(audit["details"]["log_end"] == 10, "{audit}");
    wait_for_metric(
        &broker,
        "strongbox_partition_state{partition=\"0\",state=\"ok\",topic=\"ledger\"} 1",
    )
    .await?;

    // Writing continues above every offset ever acknowledged, never below.
    publish(&broker, "ledger", &["after".to_owned()])?;
    let all = read(&broker, "ledger", 0, 11)?;
    ensure!(all.len() == 11, "{all:?}");
    ensure!(all.last() == Some(&(25, "after".to_owned())), "{all:?}");
    ensure!(
        read(&broker, "ledger", 12, 1)? == vec![(25, "after".to_owned())],
        "a reader in the gap reads across it"
    );
    Ok(())
}

#[tokio::test]
async fn a_vanished_partition_directory_opens_read_only() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dev = root.path().join("dev");
    let mut broker = start(&dev)?;
    cli_ok(
        &broker.profile("admin"),
        &["topic", "create", "gone", "--partitions", "1"],
    )?;
    publish(&broker, "gone", &values(0..5))?;
    let dir = partition_dir(&broker, "gone")?;
    broker.terminate()?;
    std::fs::remove_dir_all(&dir)?;

    for _ in 0..2 {
        let mut broker = start(&dev)?;
        let info = describe(&broker, "gone")?;
        let p = &info["partition_state"][0];
        ensure!(p["state"] == "read_only", "{info:#}");
        ensure!(
            p["error"]
                .as_str()
                .is_some_and(|e| e.contains("directory is missing (it was not created again)")),
            "{info:#}"
        );
        cli_fails(
            &broker.profile("admin"),
            1,
            &["publish", "gone", "--partition", "0", "x"],
            "read-only",
        )?;
        ensure!(!dir.exists(), "the partition was not started again empty");
        broker.terminate()?;
    }

    // Accepting the loss brings the directory back; offsets go on after the
    // ones acknowledged before.
    let broker = start(&dev)?;
    cli_ok(
        &broker.profile("admin"),
        &[
            "topic",
            "recover",
            "gone",
            "--partition",
            "0",
            "--accept-loss",
        ],
    )?;
    ensure!(dir.is_dir(), "created again once the loss is accepted");
    publish(&broker, "gone", &["after".to_owned()])?;
    let info = describe(&broker, "gone")?;
    let p = &info["partition_state"][0];
    ensure!(
        p["state"] == "ok" && p["log_start_offset"] == 5 && p["high_watermark"] == 6,
        "no offset handed out twice: {info:#}"
    );
    ensure!(
        read(&broker, "gone", 5, 1)? == vec![(5, "after".to_owned())],
        "{info:#}"
    );
    Ok(())
}

#[tokio::test]
async fn a_segment_gone_from_the_middle_opens_read_only_and_readers_meet_the_range() -> Result<()> {
    const RECORDS: u64 = 30;
    let root = tempfile::tempdir()?;
    let dev = root.path().join("dev");
    let mut broker = start(&dev)?;
    let admin = broker.profile("admin");
    let client = strongbox_tests::client::connect(&admin).await?;
    let mut config = strongbox_tests::client::topic(1);
    config.segment_bytes = Some(1024);
    client.admin().create_topic("middle", config).await?;
    let producer = client
        .producer(strongbox_client::ProducerConfig::default())
        .await?;
    // One batch per record: segments of a few records each.
    for i in 0..RECORDS {
        producer
            .send_and_wait(
                strongbox_client::ProducerRecord::new(
                    "middle",
                    format!("v{i}-{}", "x".repeat(100)),
                )
                .partition(0),
            )
            .await?;
    }
    producer.close().await?;
    client.close().await;
    let dir = partition_dir(&broker, "middle")?;
    broker.terminate()?;

    // The second segment goes, with its index and key envelope.
    let mut segments: Vec<u64> = std::fs::read_dir(&dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    segments.sort_unstable();
    ensure!(segments.len() >= 4, "{segments:?}");
    let (from, to) = (segments[1], segments[2]);
    for ext in ["log", "index", "key"] {
        std::fs::remove_file(dir.join(format!("{from:020}.{ext}")))?;
    }

    let broker = start(&dev)?;
    let info = describe(&broker, "middle")?;
    let p = &info["partition_state"][0];
    ensure!(p["state"] == "read_only", "{info:#}");
    let why = p["error"].as_str().unwrap_or_default();
    ensure!(
        why.contains(&format!("offsets {from}..{to} are missing"))
            && why.contains("segment(s) the key registry knows are missing"),
        "the reason names the lost offsets and segment: {why}"
    );
    cli_fails(
        &admin,
        1,
        &["publish", "middle", "--partition", "0", "refused"],
        "read-only",
    )?;
    // A reader gets the records before the lost offsets, a warning naming
    // them, and exit status 1.
    let out = strongbox_tests::cli(
        &admin,
        &[
            "--json",
            "subscribe",
            "middle",
            "--partition",
            "0",
            "--from",
            "0",
            "--count",
            &RECORDS.to_string(),
        ],
    )?;
    let err = text(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit {:?}: {err}", out.status);
    ensure!(
        json_values(&text(&out.stdout))?.len() == usize::try_from(from)?,
        "the records before the lost offsets: {}",
        text(&out.stdout)
    );
    ensure!(
        err.contains(&format!("records {from}..{to} cannot be read")),
        "{err}"
    );

    // The operator accepts the loss; the end did not move, writes go on
    // there and readers read across the lost offsets.
    let recovered = cli_json(
        &admin,
        &[
            "topic",
            "recover",
            "middle",
            "--partition",
            "0",
            "--accept-loss",
        ],
    )?;
    ensure!(
        recovered["partition_state"][0]["state"] == "ok",
        "{recovered:#}"
    );
    let audit = wait_for_audit(&broker, "partition.recover").await?;
    ensure!(audit["details"]["resume_offset"] == RECORDS, "{audit}");
    publish(&broker, "middle", &["after".to_owned()])?;
    let across = read(&broker, "middle", from, 1)?;
    ensure!(
        across.first().is_some_and(|(o, _)| *o == to),
        "a reader at the lost offsets reads across them: {across:?}"
    );
    let last = read(&broker, "middle", RECORDS, 1)?;
    ensure!(last == vec![(RECORDS, "after".to_owned())], "{last:?}");
    Ok(())
}

#[tokio::test]
async fn a_commit_past_the_end_is_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    let broker = start(&root.path().join("dev"))?;
    let admin = broker.profile("admin");
    cli_ok(&admin, &["topic", "create", "commits", "--partitions", "1"])?;
    publish(&broker, "commits", &values(0..3))?;
    let client = strongbox_tests::client::connect(&admin).await?;
    let mut consumer = client
        .subscribe(
            strongbox_client::Subscription::group("commits", "g1"),
            strongbox_client::ConsumerConfig::default(),
        )
        .await?;
    strongbox_tests::client::read_n(&mut consumer, 3).await?;
    let e = consumer.commit(0, 1_000).await.expect_err("past the end");
    ensure!(
        e.code() == Some(strongbox_protocol::ErrorCode::OffsetOutOfRange),
        "{e}"
    );
    consumer.commit(0, 3).await?;
    drop(consumer);
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_torn_tail_is_quarantined_audited_and_reported_by_verify() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dev = root.path().join("dev");
    let mut broker = start(&dev)?;
    cli_ok(
        &broker.profile("admin"),
        &["topic", "create", "torn", "--partitions", "1"],
    )?;
    publish(&broker, "torn", &values(0..6))?;
    let dir = partition_dir(&broker, "torn")?;
    broker.crash()?;

    // A write the crash tore: bytes after the last frame of the active
    // segment that are not a frame.
    let newest = newest_segment(&dir)?;
    let mut bytes = std::fs::read(&newest)?;
    let intact = bytes.len();
    bytes.extend_from_slice(&[0x5A; 333]);
    std::fs::write(&newest, &bytes)?;

    let mut broker = start(&dev)?;
    let quarantined: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    let quarantined: Vec<PathBuf> = quarantined
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "quarantine"))
        .collect();
    ensure!(
        quarantined.len() == 1,
        "one quarantine file: {quarantined:?}"
    );
    let kept = std::fs::read(&quarantined[0])?;
    ensure!(kept.len() == 88 + 333 && kept[88..].iter().all(|b| *b == 0x5A));
    ensure!(
        std::fs::metadata(&newest)?.len() < (intact + 333) as u64,
        "the tail was cut from the segment"
    );
    let audit = wait_for_audit(&broker, "partition.quarantine").await?;
    ensure!(audit["details"]["bytes"] == 333, "{audit}");
    ensure!(audit["details"]["first_offset"] == 6, "{audit}");
    ensure!(
        read(&broker, "torn", 0, 6)?.len() == 6,
        "the intact records stay"
    );
    broker.terminate()?;

    let out = std::process::Command::new(binary("strongbox-broker"))
        .args(["verify", "--json", "--data-dir"])
        .arg(dev.join("data"))
        .output()?;
    ensure!(
        out.status.code() == Some(1),
        "verify must report the evidence: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let found = report["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["findings"].as_array().into_iter().flatten())
        .find(|f| f["kind"] == "quarantined_tail")
        .cloned();
    let found = found.context("no quarantined_tail finding")?;
    ensure!(found["severity"] == "problem", "{found}");
    ensure!(
        found["message"]
            .as_str()
            .is_some_and(|m| m.contains("333 bytes")),
        "{found}"
    );
    Ok(())
}

fn newest_segment(dir: &Path) -> Result<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    segments.retain(|p| p.extension().is_some_and(|x| x == "log"));
    segments.sort();
    // An empty newest file only records the next offset.
    while let Some(last) = segments.last() {
        if std::fs::metadata(last)?.len() > 0 {
            break;
        }
        segments.pop();
    }
    segments.pop().context("no segment")
}
