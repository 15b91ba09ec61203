//! One damaged partition never blocks a topic, and never hangs a client.
//!
//! A dev broker's topic is written (several sealed segments per
//! partition), the broker is stopped, and its files are damaged the way an
//! operator or a failing disk would: partition 1 gets a flipped ciphertext
//! byte in the middle of a sealed segment, partition 2 loses a key
//! envelope, partition 3 has a sealed segment cut short; partition 0 is
//! left alone. After a restart:
//!
//! - `strongbox subscribe` to a damaged partition prints what it can read,
//!   one warning naming the damaged offsets, and exits 1 with a one-line
//!   reason, within its timeout;
//! - a whole-topic subscription delivers every record of the healthy
//!   partition and the records before the damaged frame, warns once per
//!   damaged partition, and exits 1 at the end;
//! - `--skip-damaged` goes on after the damaged range;
//! - a group subscription reports each damaged partition (topic, partition,
//!   offset range) and serves the others;
//! - publishing to a partition whose files are damaged fails at once with
//!   `data_damaged`, without retrying until the timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use nix::sys::signal::Signal;
use strongbox_client::{
    ClientError, Consumer, ConsumerConfig, ErrorCode, ProducerConfig, ProducerRecord, Subscription,
};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::{connect, topic};
use strongbox_tests::running_cli::RunningCli;

const TOPIC: &str = "demo.damaged";
const PARTITIONS: u32 = 4;
const RECORDS: u64 = 30;
const SEGMENT_BYTES: u64 = 1024;
/// Every wait on a process is bounded by this.
const LIMIT: Duration = Duration::from_secs(60);

const HEALTHY: u32 = 0;
const FLIPPED: u32 = 1;
const NO_ENVELOPE: u32 = 2;
const TRUNCATED: u32 = 3;

/// A restarted broker whose topic has damaged partitions.
struct Damaged {
    _tmp: tempfile::TempDir,
    broker: BrokerProcess,
    /// The offsets partition [`FLIPPED`] cannot deliver: `[first, end)`.
    first: u64,
    end: u64,
}

fn value(partition: u32, i: u64) -> String {
    format!("p{partition}-{i:03}-{}", "x".repeat(150))
}

fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    Ok(v)
}

/// `(position, ciphertext length, base offset)` of each frame of a sealed
/// segment file, read with the layout of docs/STORAGE.md.
fn frames(path: &Path) -> Result<Vec<(usize, usize, u64)>> {
    let data = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut pos = 64;
    while pos + 16 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into()?);
        if len == u32::MAX {
            break;
        }
        let base = u64::from_be_bytes(data[pos + 4..pos + 12].try_into()?);
        out.push((pos, len as usize, base));
        pos += 16 + len as usize;
    }
    Ok(out)
}

async fn prepared() -> Result<Damaged> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dir)?;
    let admin = connect(&broker.profile("admin")).await?;
    let mut config = topic(PARTITIONS);
    config.segment_bytes = Some(SEGMENT_BYTES);
    let info = admin.admin().create_topic(TOPIC, config).await?;
    let producer = admin.producer(ProducerConfig::default()).await?;
    // One batch (one frame) per record, so each partition rolls several
    // segments of a few frames each.
    for i in 0..RECORDS {
        for p in 0..PARTITIONS {
            producer
                .send_and_wait(ProducerRecord::new(TOPIC, value(p, i)).partition(p))
                .await?;
        }
    }
    producer.close().await?;
    admin.close().await;
    ensure!(broker.terminate()? == Some(0), "graceful stop");

    let topic_dir = broker.data_dir().join("log").join(
        info.topic_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let segments = |p: u32| segment_files(&topic_dir.join(p.to_string()));

    // A flipped ciphertext byte in the middle frame of a sealed segment.
    let victim = segments(FLIPPED)?[1].clone();
    let f = frames(&victim)?;
    ensure!(f.len() >= 3, "{} has {} frames", victim.display(), f.len());
    let (pos, len, first) = f[1];
    let end = f[2].2;
    let mut bytes = std::fs::read(&victim)?;
    bytes[pos + 16 + len / 2] ^= 0x20;
    std::fs::write(&victim, bytes)?;
    // A key envelope gone.
    std::fs::remove_file(segments(NO_ENVELOPE)?[1].with_extension("key"))?;
    // A sealed segment cut short (its seal and the end of its last frame).
    let cut = segments(TRUNCATED)?[1].clone();
    let size = std::fs::metadata(&cut)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)?
        .set_len(size - 80 - 7)?;

    let broker = BrokerProcess::start_dev(&dir)?;
    Ok(Damaged {
        _tmp: tmp,
        broker,
        first,
        end,
    })
}

/// `(partition, offset)` of each JSON record line.
fn places(lines: &[String]) -> Result<Vec<(u32, u64)>> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let p = v["partition"].as_u64().context("partition")?;
            let o = v["offset"].as_u64().context("offset")?;
            Ok((u32::try_from(p)?, o))
        })
        .collect()
}

fn offsets_of(places: &[(u32, u64)], partition: u32) -> Vec<u64> {
    places
        .iter()
        .filter(|(p, _)| *p == partition)
        .map(|(_, o)| *o)
        .collect()
}

/// Runs `strongbox ARGS` as bob to completion, bounded.
fn subscribe(d: &Damaged, args: &[&str]) -> Result<(i32, RunningCli)> {
    let mut full = vec!["--json", "subscribe", TOPIC];
    full.extend_from_slice(args);
    let mut cli = RunningCli::start(&d.broker.profile("bob"), &full)?;
    let code = cli.wait(LIMIT)?;
    Ok((code, cli))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_damaged_partition_exits_1_with_the_reason() -> Result<()> {
    let d = prepared().await?;
    let log = || d.broker.log_text();

    // Partitions whose files kept them from opening: nothing to print, one
    // warning, one reason, exit 1, well within the timeout.
    for (partition, cause) in [
        (NO_ENVELOPE, "key envelope missing"),
        (TRUNCATED, "truncated or damaged"),
    ] {
        let p = partition.to_string();
        let (code, cli) = subscribe(&d, &["--partition", &p, "--timeout", "10s"])?;
        ensure!(
            code == 1,
            "partition {p}: exit {code}; {:?}\n{}",
            cli.stderr,
            log()
        );
        ensure!(cli.stdout.is_empty(), "{:?}", cli.stdout);
        ensure!(
            cli.stderr.len() == 2,
            "warning and reason: {:?}",
            cli.stderr
        );
        let warning = &cli.stderr[0];
        ensure!(
            warning.starts_with(&format!(
                "warning: {TOPIC}/{p}: records from 0 on cannot be read; the partition is stopped: "
            )) && warning.contains(cause),
            "{warning}"
        );
        let reason = &cli.stderr[1];
        ensure!(
            reason.starts_with(&format!(
                "error: damaged records of {TOPIC} partition {p} were not delivered"
            )),
            "{reason}"
        );
    }

    // The flipped byte: the records before it, then the warning naming the
    // damaged offsets.
    let p = FLIPPED.to_string();
    let (code, cli) = subscribe(&d, &["--partition", &p, "--timeout", "10s"])?;
    ensure!(code == 1, "exit {code}; {:?}", cli.stderr);
    let got = places(&cli.stdout)?;
    ensure!(
        offsets_of(&got, FLIPPED) == (0..d.first).collect::<Vec<_>>(),
        "records before the damaged frame: {got:?}"
    );
    ensure!(cli.stderr.len() == 2, "{:?}", cli.stderr);
    ensure!(
        cli.stderr[0].starts_with(&format!(
            "warning: {TOPIC}/{p}: records {}..{} cannot be read; the partition is stopped: ",
            d.first, d.end
        )) && cli.stderr[0].contains("fails authentication"),
        "{}",
        cli.stderr[0]
    );

    // --skip-damaged: the same warning, then the records after the range.
    let readable = RECORDS - (d.end - d.first);
    let count = readable.to_string();
    let (code, cli) = subscribe(
        &d,
        &["--partition", &p, "--skip-damaged", "--count", &count],
    )?;
    ensure!(code == 1, "exit {code}; {:?}", cli.stderr);
    let got = places(&cli.stdout)?;
    let expected: Vec<u64> = (0..d.first).chain(d.end..RECORDS).collect();
    ensure!(
        offsets_of(&got, FLIPPED) == expected,
        "every record but the damaged ones: {got:?}"
    );
    ensure!(
        cli.stderr[0].starts_with(&format!(
            "warning: {TOPIC}/{p}: records {}..{} were skipped: ",
            d.first, d.end
        )),
        "{:?}",
        cli.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_topic_subscription_serves_the_healthy_partition_and_warns_once_per_damaged_one()
-> Result<()> {
    let d = prepared().await?;
    let mut cli = RunningCli::start(
        &d.broker.profile("bob"),
        &["--json", "subscribe", TOPIC, "--from", "earliest"],
    )?;
    let expected_records = (RECORDS + d.first) as usize;
    cli.wait_until(LIMIT, |c| {
        c.stdout.len() >= expected_records && c.stderr.len() >= 3
    })
    .with_context(|| d.broker.log_text())?;
    // A healthy live tail: it keeps running until stopped.
    std::thread::sleep(Duration::from_millis(500));
    cli.signal(Signal::SIGINT)?;
    let code = cli.wait(LIMIT)?;
    ensure!(code == 1, "exit {code}; {:?}", cli.stderr);
    let got = places(&cli.stdout)?;
    ensure!(
        got.len() == expected_records,
        "{} records: {got:?}",
        got.len()
    );
    ensure!(offsets_of(&got, HEALTHY) == (0..RECORDS).collect::<Vec<_>>());
    ensure!(offsets_of(&got, FLIPPED) == (0..d.first).collect::<Vec<_>>());
    let warnings: Vec<&String> = cli
        .stderr
        .iter()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    ensure!(
        warnings.len() == 3,
        "one warning per damaged partition: {warnings:?}"
    );
    for p in [FLIPPED, NO_ENVELOPE, TRUNCATED] {
        ensure!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("warning: {TOPIC}/{p}: records "))),
            "no warning for partition {p}: {warnings:?}"
        );
    }
    let reason = cli.stderr.last().context("a reason")?;
    ensure!(
        reason.starts_with(&format!(
            "error: damaged records of {TOPIC} partition 1, 2, 3 were not delivered"
        )),
        "{reason}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_reports_each_damaged_partition_and_serves_the_others() -> Result<()> {
    let d = prepared().await?;
    let client = connect(&d.broker.profile("bob")).await?;
    let mut consumer = Consumer::subscribe(
        &client,
        Subscription::group(TOPIC, "auditors"),
        ConsumerConfig::default(),
    )
    .await?;
    let expected_records = (RECORDS + d.first) as usize;
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut damaged = BTreeMap::new();
    let deadline = Instant::now() + LIMIT;
    while offsets.values().map(Vec::len).sum::<usize>() < expected_records || damaged.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(r))) => {
                ensure!(
                    r.value == value(r.partition, r.offset).into_bytes(),
                    "{}@{} holds another record",
                    r.partition,
                    r.offset
                );
                offsets.entry(r.partition).or_default().push(r.offset);
            }
            Ok(Some(Err(ClientError::PartitionDamaged {
                topic,
                partition,
                code,
                first_offset,
                end_offset,
                skipped,
                message,
            }))) => {
                ensure!(topic == TOPIC && !skipped, "{topic} {skipped}");
                ensure!(code == ErrorCode::DataDamaged.as_u16(), "{code}: {message}");
                ensure!(
                    damaged
                        .insert(partition, (first_offset, end_offset))
                        .is_none(),
                    "partition {partition} reported twice"
                );
            }
            Ok(Some(Err(e))) => bail!("unexpected error: {e}"),
            Ok(None) => bail!("the group subscription ended"),
            Err(_) => bail!(
                "stuck with {offsets:?} and {damaged:?}; broker log:\n{}",
                d.broker.log_text()
            ),
        }
    }
    ensure!(offsets[&HEALTHY] == (0..RECORDS).collect::<Vec<_>>());
    ensure!(offsets[&FLIPPED] == (0..d.first).collect::<Vec<_>>());
    ensure!(damaged[&FLIPPED] == (d.first, Some(d.end)), "{damaged:?}");
    ensure!(damaged[&NO_ENVELOPE] == (0, None), "{damaged:?}");
    ensure!(damaged[&TRUNCATED] == (0, None), "{damaged:?}");
    let reported: BTreeSet<u32> = damaged.keys().copied().collect();
    ensure!(reported == [FLIPPED, NO_ENVELOPE, TRUNCATED].into());
    consumer.close().await;
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_damaged_partition_fails_at_once() -> Result<()> {
    let d = prepared().await?;
    let started = Instant::now();
    let out = strongbox_tests::cli(
        &d.broker.profile("alice"),
        &[
            "publish",
            TOPIC,
            "--partition",
            &NO_ENVELOPE.to_string(),
            "--timeout",
            "60s",
            "lost",
        ],
    )?;
    let took = started.elapsed();
    ensure!(out.status.code() == Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.starts_with("error: ") && stderr.contains("key envelope missing"),
        "{stderr}"
    );
    // Not retried until the 60 s timeout: a damaged partition is permanent.
    ensure!(took < Duration::from_secs(30), "took {took:?}");
    // The healthy partition takes records as before.
    let out = strongbox_tests::cli(
        &d.broker.profile("alice"),
        &["publish", TOPIC, "--partition", "0", "fine"],
    )?;
    ensure!(out.status.success(), "{out:?}");
    Ok(())
}
