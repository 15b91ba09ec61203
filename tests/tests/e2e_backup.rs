//! Backup and restore, end to end, as docs/OPERATIONS.md ("Backup and
//! restore") tells an operator to do it:
//!
//! - `strongbox-broker backup --config FILE --to DIR` copies a running
//!   broker while a producer keeps writing to it (segments rolling under
//!   it), and the broker keeps acknowledging throughout;
//! - the backup holds the metadata store and the encrypted segments and
//!   nothing of the key directory;
//! - restored into a fresh data directory with the same key provider, it
//!   passes `strongbox-broker verify`, a broker serves it, every record
//!   acknowledged before the backup began is there at its offset with its
//!   value, the audit chain verifies, and the restored broker takes new
//!   records;
//! - the command refuses cleanly when no broker runs or DIR is not empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use strongbox_client::{ConsumerConfig, ProducerConfig, ProducerRecord, Subscription};
use strongbox_protocol::model::TopicConfig;
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::{BrokerProcess, binary, cli, copy_dir, files_under};

const TOPIC: &str = "demo.backup";
const PARTITIONS: u32 = 2;
/// Small segments, so the load rolls several while the backup runs.
const SEGMENT_BYTES: u64 = 4096;

/// What the load generator saw acknowledged: (partition, offset) → value.
type Acked = Arc<Mutex<BTreeMap<(u32, u64), String>>>;

fn backup_cmd(config: &Path, to: &Path) -> Result<std::process::Output> {
    Command::new(binary("strongbox-broker"))
        .args(["backup", "--config"])
        .arg(config)
        .arg("--to")
        .arg(to)
        .output()
        .context("running strongbox-broker backup")
}

/// A copy of the dev broker.toml that serves `data_dir` with the dev key
/// directory (the same key provider), on free ports.
fn restore_config(dev: &Path, data_dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(dev.join("broker.toml"))?;
    let keys = dev.join("keys");
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("data_dir = ") {
            format!("data_dir = {:?}", data_dir.display().to_string())
        } else if line.starts_with("dir = ") {
            format!("dir = {:?}", keys.display().to_string())
        } else if line.starts_with("addr = ") {
            "addr = \"127.0.0.1:0\"".to_owned()
        } else if line.starts_with("listen = ") {
            "listen = \"127.0.0.1:0\"".to_owned()
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    ensure!(
        out.contains("data_dir = "),
        "the dev config names no data_dir"
    );
    let path = dev.join("restore.toml");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// A profile of `name` for the broker at `addr` (the dev profiles name the
/// original broker).
fn profile_for(dev: &Path, name: &str, addr: std::net::SocketAddr) -> Result<PathBuf> {
    let text = std::fs::read_to_string(dev.join("profiles").join(format!("{name}.toml")))?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("broker = ") {
                format!("broker = \"{addr}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = dev.join("profiles").join(format!("{name}-restored.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Publishes numbered records until `stop`, recording each acknowledgement.
async fn load(profile: PathBuf, acked: Acked, stop: Arc<tokio::sync::Notify>) -> Result<u64> {
    let client = connect(&profile).await?;
    let producer = client.producer(ProducerConfig::default()).await?;
    let mut n = 0u64;
    loop {
        let value = format!("rec-{n:08}");
        let record = ProducerRecord::new(TOPIC, value.clone()).key(format!("k{}", n % 7));
        let ack = tokio::select! {
            () = stop.notified() => break,
            sent = producer.send(record) => sent?,
        };
        let stored = ack.await?;
        acked
            .lock()
            .expect("lock")
            .insert((stored.partition, stored.offset), value);
        n += 1;
    }
    producer.close().await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_record() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dev)?;
    let admin = connect(&broker.profile("admin")).await?;
    admin
        .admin()
        .create_topic(
            TOPIC,
            TopicConfig {
                segment_bytes: Some(SEGMENT_BYTES),
                ..topic(PARTITIONS)
            },
        )
        .await?;

    let acked: Acked = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let loader = tokio::spawn(load(broker.profile("alice"), acked.clone(), stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 400 {
        ensure!(
            tokio::time::Instant::now() < deadline && !loader.is_finished(),
            "the load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Everything acknowledged up to here must be in the backup.
    let before: BTreeMap<(u32, u64), String> = acked.lock().expect("lock").clone();
    let backup_dir = tmp.path().join("backup");
    let config = dev.join("broker.toml");
    let out = {
        let (config, to) = (config.clone(), backup_dir.clone());
        tokio::task::spawn_blocking(move || backup_cmd(&config, &to)).await??
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "backup failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("backed up broker"), "{stdout}");
    // The load went on during and after the backup.
    let during = acked.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    let sent = loader.await??;
    ensure!(
        acked.lock().expect("lock").len() > during || sent as usize > before.len(),
        "the broker stopped acknowledging during the backup"
    );

    // What the backup holds: the layout of a data directory, no key file.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup_dir.join("backup.json"))?)?;
    let keys: Vec<Vec<u8>> = files_under(&dev.join("keys"))
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    ensure!(!keys.is_empty(), "the dev key directory holds the KEK");
    for file in files_under(&backup_dir) {
        let rel = file
            .strip_prefix(&backup_dir)?
            .to_string_lossy()
            .into_owned();
        let allowed = rel == "meta.redb"
            || rel == "backup.json"
            || (rel.starts_with("log/")
                && [".log", ".index", ".key"].iter().any(|x| rel.ends_with(x)));
        ensure!(allowed, "unexpected file in the backup: {rel}");
        let bytes = std::fs::read(&file)?;
        ensure!(!keys.contains(&bytes), "{rel} is a copy of a key file");
    }
    let mut end_offsets = BTreeMap::new();
    for p in manifest["partitions"].as_array().context("partitions")? {
        if p["topic"] == TOPIC {
            let partition = u32::try_from(p["partition"].as_u64().context("partition")?)?;
            end_offsets.insert(partition, p["end_offset"].as_u64().context("end")?);
        }
    }
    ensure!(end_offsets.len() == PARTITIONS as usize, "{manifest}");
    let segments = manifest["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["topic"] == TOPIC)
        .flat_map(|p| p["files"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["path"].as_str().is_some_and(|p| p.ends_with(".log")))
        .count();
    eprintln!(
        "acknowledged before the backup: {}, in the backup: {end_offsets:?} in {segments} \
         segments, sent in all: {sent}",
        before.len()
    );
    ensure!(
        segments > 2 * PARTITIONS as usize,
        "the load should have rolled segments: {segments}"
    );

    // Restore into a fresh data directory, as OPERATIONS.md says: copy, then
    // verify, then serve. The original broker keeps running meanwhile.
    let restored = tmp.path().join("restored");
    copy_dir(&backup_dir, &restored)?;
    let restore_toml = restore_config(&dev, &restored)?;
    let verify = Command::new(binary("strongbox-broker"))
        .args(["verify", "--config"])
        .arg(&restore_toml)
        .output()?;
    ensure!(
        verify.status.success(),
        "verify of the restored directory failed:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    broker.terminate()?;

    let mut restored_broker = BrokerProcess::start_serve(&restore_toml, &dev, &[])?;
    let bob = profile_for(&dev, "bob", restored_broker.addr)?;
    let client = connect(&bob).await?;
    for partition in 0..PARTITIONS {
        let end = end_offsets[&partition];
        let mut consumer = client
            .subscribe(
                Subscription::partition(TOPIC, partition),
                ConsumerConfig::default(),
            )
            .await?;
        let records = read_n(&mut consumer, usize::try_from(end)?).await?;
        consumer.close().await;
        let got: BTreeMap<u64, String> = records
            .iter()
            .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
            .collect();
        ensure!(got.len() == records.len(), "an offset came twice");
        for ((p, offset), value) in before.iter().filter(|((p, _), _)| *p == partition) {
            ensure!(
                got.get(offset) == Some(value),
                "record {p}@{offset} ({value}) acknowledged before the backup is not in the restore"
            );
        }
    }
    // The audit chain of the restored broker links from its first record.
    let admin_profile = profile_for(&dev, "admin", restored_broker.addr)?;
    let audit = cli(&admin_profile, &["audit", "verify"])?;
    ensure!(
        audit.status.success(),
        "audit verify on the restored broker: {}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    // And it takes new records.
    let alice = profile_for(&dev, "alice", restored_broker.addr)?;
    let out = cli(
        &alice,
        &["publish", TOPIC, "--partition", "0", "after-restore"],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restored_broker.terminate()?;
    Ok(())
}

#[test]
fn without_a_running_broker_or_with_a_used_directory_the_backup_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dev)?;
    let config = dev.join("broker.toml");

    let used = tmp.path().join("used");
    std::fs::create_dir(&used)?;
    std::fs::write(used.join("something"), b"x")?;
    let out = backup_cmd(&config, &used)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a non-empty directory was used");
    ensure!(err.contains("is not empty"), "{err}");
    ensure!(std::fs::read(used.join("something"))? == b"x");

    broker.terminate()?;
    let to = tmp.path().join("none");
    let out = backup_cmd(&config, &to)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a backup without a broker succeeded");
    ensure!(err.contains("no broker is running"), "{err}");
    ensure!(
        files_under(&to).is_empty(),
        "a failed backup left files behind"
    );
    Ok(())
}
