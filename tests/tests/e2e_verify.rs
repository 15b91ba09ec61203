//! `strongbox-broker verify` against the real binary, with the broker's keys
//! in a SoftHSM2 token (`pkcs11`) and in the `file` provider: a dev broker's
//! data verifies intact (exit 0), through the provider the broker used;
//! each kind of damage (a flipped byte in a frame, a sealed segment cut
//! short, a deleted envelope, a corrupted envelope, a wrapped key altered
//! behind a valid CRC, which the provider's key unwrap rejects, the oldest
//! segment removed with its envelope, which the key registry still records)
//! makes it exit 1 naming the partition and the file while every other
//! partition is reported ok; it refuses to run on a directory a broker is
//! using, and cannot check one whose key provider is gone (exit 2).
//!
//! The test process never loads the PKCS#11 module: each SoftHSM2 test has
//! a token directory and configuration of its own ([`TokenDir`]), passed in
//! the environment of the broker and `verify` processes. A missing SoftHSM2
//! fails those tests; they are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strongbox_client::{ProducerConfig, ProducerRecord};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_tests::client::{connect, topic};
use strongbox_tests::softhsm::TokenDir;
use strongbox_tests::{BrokerProcess, binary, copy_dir, files_under};

const TOPIC: &str = "verify.orders";
/// One partition per kind of damage, and one left alone.
const PARTITIONS: u32 = 7;
const RECORDS_PER_PARTITION: usize = 10;
const SEGMENT_BYTES: u64 = 1024;

/// A kind of damage, done to one partition of a copy of the dev directory.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlippedFrameByte,
    TruncatedSealedSegment,
    DeletedEnvelope,
    CorruptedEnvelope,
    AlteredWrappedKey,
    RemovedOldestSegment,
}

impl Damage {
    const ALL: [Self; 6] = [
        Self::FlippedFrameByte,
        Self::TruncatedSealedSegment,
        Self::DeletedEnvelope,
        Self::CorruptedEnvelope,
        Self::AlteredWrappedKey,
        Self::RemovedOldestSegment,
    ];

    /// The partition it is done to (the last partition is never damaged).
    fn partition(self) -> u32 {
        match self {
            Self::FlippedFrameByte => 0,
            Self::TruncatedSealedSegment => 1,
            Self::DeletedEnvelope => 2,
            Self::CorruptedEnvelope => 3,
            Self::AlteredWrappedKey => 4,
            Self::RemovedOldestSegment => 5,
        }
    }

    /// The `kind` verify must report.
    fn kind(self) -> &'static str {
        match self {
            Self::FlippedFrameByte => "corrupt_frame",
            Self::TruncatedSealedSegment => "seal_missing",
            Self::DeletedEnvelope => "envelope_missing",
            Self::CorruptedEnvelope => "envelope_corrupt",
            Self::AlteredWrappedKey => "unwrap_rejected",
            Self::RemovedOldestSegment => "missing_segment",
        }
    }

    /// Damages partition `self.partition()` under `data`; returns the file
    /// verify must name.
    fn apply(self, data: &Path, topic_id: &str) -> Result<PathBuf> {
        let dir = data
            .join("log")
            .join(topic_id)
            .join(self.partition().to_string());
        let segments = segment_files(&dir)?;
        ensure!(segments.len() >= 3, "{}: too few segments", dir.display());
        // A segment in the middle: sealed, with neighbours on both sides.
        let victim = segments[1].clone();
        let envelope = victim.with_extension("key");
        match self {
            Self::FlippedFrameByte => {
                let mut bytes = std::fs::read(&victim)?;
                // Header (64), frame header (16), then ciphertext.
                bytes[64 + 16 + 3] ^= 0x20;
                std::fs::write(&victim, bytes)?;
                Ok(victim)
            }
            Self::TruncatedSealedSegment => {
                let len = std::fs::metadata(&victim)?.len();
                // The seal (80 bytes) and the end of the last frame.
                let file = std::fs::OpenOptions::new().write(true).open(&victim)?;
                file.set_len(len - 80 - 7)?;
                Ok(victim)
            }
            Self::DeletedEnvelope => {
                std::fs::remove_file(&envelope)?;
                Ok(envelope)
            }
            Self::CorruptedEnvelope => {
                let mut bytes = std::fs::read(&envelope)?;
                let last = bytes.len() - 1;
                bytes[last - 6] ^= 0x01;
                std::fs::write(&envelope, bytes)?;
                Ok(envelope)
            }
            Self::AlteredWrappedKey => {
                // A valid envelope (CRC and all) whose wrapped key was
                // changed: only the key wrap's integrity check can tell.
                let mut env = KeyEnvelope::decode(&std::fs::read(&envelope)?)?;
                env.wrapped.wrapped[12] ^= 0x01;
                std::fs::write(&envelope, env.encode()?)?;
                Ok(envelope)
            }
            Self::RemovedOldestSegment => {
                // All of it, as retention would (envelope first): the log
                // alone would take it for retention; the registry still
                // records the segment.
                let oldest = &segments[0];
                std::fs::remove_file(oldest.with_extension("key"))?;
                std::fs::remove_file(oldest)?;
                std::fs::remove_file(oldest.with_extension("index"))?;
                Ok(dir)
            }
        }
    }
}

/// Where the broker's keys are: a SoftHSM2 token of the test's own, or the
/// key directory of the dev directory.
#[derive(Debug)]
enum Keys {
    File,
    SoftHsm(TokenDir),
}

impl Keys {
    /// A fresh token under `root` for [`Keys::SoftHsm`].
    fn softhsm(root: &Path) -> Result<Self> {
        Ok(Self::SoftHsm(TokenDir::new(&root.join("softhsm"))?))
    }

    /// What `verify` reports as the provider's kind.
    fn kind(&self) -> &'static str {
        match self {
            Self::File => "file",
            Self::SoftHsm(_) => "pkcs11",
        }
    }

    /// The environment of broker and `verify` processes.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::File => Vec::new(),
            Self::SoftHsm(token) => vec![token.env()],
        }
    }

    /// Creates the dev directory `dev` (without starting a broker) and
    /// points its `[keys]` at this provider.
    fn create_dev(&self, dev: &Path) -> Result<()> {
        strongbox_broker::dev::ensure_dev_dir(dev, "127.0.0.1:0".parse()?)?;
        if let Self::SoftHsm(token) = self {
            token.configure_dev_broker(dev)?;
        }
        Ok(())
    }

    /// Starts (or restarts) the broker of `dev`.
    fn start(&self, dev: &Path) -> Result<BrokerProcess> {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        BrokerProcess::start_dev_with(dev, &env)
    }

    /// The broker of `dev` kept its KEKs where it should: files in the key
    /// directory for `file`, none there for `pkcs11`.
    fn check_in_use(&self, dev: &Path) -> Result<()> {
        let files = files_under(&dev.join("keys"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "kek"))
            .count();
        match self {
            Self::File => ensure!(files > 0, "no KEK file written"),
            Self::SoftHsm(_) => ensure!(files == 0, "the pkcs11 broker wrote {files} KEK file(s)"),
        }
        Ok(())
    }

    /// The provider goes away: the token's files, or the key directory.
    fn take_away(&self, dev: &Path) -> Result<()> {
        match self {
            Self::File => std::fs::rename(dev.join("keys"), dev.join("keys-away"))?,
            Self::SoftHsm(token) => token.take_away()?,
        }
        Ok(())
    }

    /// The provider is back.
    fn bring_back(&self, dev: &Path) -> Result<()> {
        match self {
            Self::File => std::fs::rename(dev.join("keys-away"), dev.join("keys"))?,
            Self::SoftHsm(token) => token.bring_back()?,
        }
        Ok(())
    }
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

fn verify(keys: &Keys, args: &[&str], data: &Path) -> Result<Output> {
    Command::new(binary("strongbox-broker"))
        .arg("verify")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .envs(keys.env())
        .output()
        .context("running strongbox-broker verify")
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> Result<Value> {
    serde_json::from_slice(&out.stdout).with_context(|| show(out))
}

/// The report of `topic/partition`.
fn partition<'a>(report: &'a Value, topic: &str, index: u32) -> Result<&'a Value> {
    report["partitions"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["topic"] == topic && p["partition"] == index)
        })
        .with_context(|| format!("no report for {topic}/{index}: {report:#}"))
}

/// Every partition but the damaged ones is ok, with frames authenticated
/// where it holds data.
fn others_ok(report: &Value, damaged: &[u32]) -> Result<()> {
    for p in report["partitions"].as_array().context("partitions")? {
        let is_damaged = p["topic"] == TOPIC
            && damaged
                .iter()
                .any(|d| p["partition"].as_u64() == Some(u64::from(*d)));
        if is_damaged {
            continue;
        }
        ensure!(p["status"] == "ok", "expected ok: {p:#}");
        if p["topic"] == TOPIC {
            ensure!(
                p["frames"].as_u64() > Some(0) && p["seals"] == p["segments"],
                "every frame and seal authenticated: {p:#}"
            );
        }
    }
    Ok(())
}

/// The damaged partition names `file` in a problem of `kind`.
fn names_damage(report: &Value, damage: Damage, file: &Path) -> Result<()> {
    let p = partition(report, TOPIC, damage.partition())?;
    ensure!(p["status"] == "problems", "{damage:?}: {p:#}");
    let findings = p["findings"].as_array().context("findings")?;
    let hit = findings.iter().any(|f| {
        f["severity"] == "problem"
            && f["kind"] == damage.kind()
            && f["file"].as_str().map(Path::new) == Some(file)
            && f["action"].as_str().is_some_and(|a| !a.is_empty())
    });
    ensure!(
        hit,
        "{damage:?}: no {} problem naming {}: {p:#}",
        damage.kind(),
        file.display()
    );
    Ok(())
}

/// A dev broker with `TOPIC` written in several segments per partition,
/// stopped gracefully. Returns the dev directory and the topic id.
async fn prepared(root: &Path, keys: &Keys) -> Result<(PathBuf, String)> {
    let dev = root.join("dev");
    keys.create_dev(&dev)?;
    let mut broker = keys.start(&dev)?;
    let admin = connect(&broker.profile("admin")).await?;
    let mut config = topic(PARTITIONS);
    config.segment_bytes = Some(SEGMENT_BYTES);
    let info = admin.admin().create_topic(TOPIC, config).await?;
    let producer = admin.producer(ProducerConfig::default()).await?;
    // One batch per record (each acknowledged before the next), so each
    // partition gets several frames and rolls several segments.
    for i in 0..RECORDS_PER_PARTITION {
        for p in 0..PARTITIONS {
            let value = format!("order {i} of partition {p}: {}", "x".repeat(200));
            producer
                .send(ProducerRecord::new(TOPIC, value).partition(p))
                .await?
                .await?;
        }
    }
    producer.close().await?;

    // While the broker runs, verify refuses.
    let out = verify(keys, &[], &broker.data_dir())?;
    ensure!(out.status.code() == Some(2), "{}", show(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("the broker is running"),
        "{}",
        show(&out)
    );

    ensure!(
        broker.terminate()? == Some(0),
        "graceful stop: {}",
        broker.log_text()
    );
    keys.check_in_use(&dev)?;
    Ok((dev, hex_id(&info.topic_id)))
}

fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_kind_of_damage_and_the_rest_ok_softhsm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let keys = Keys::softhsm(tmp.path())?;
    damage_reports(tmp.path(), &keys).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_kind_of_damage_and_the_rest_ok_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    damage_reports(tmp.path(), &Keys::File).await
}

async fn damage_reports(root: &Path, keys: &Keys) -> Result<()> {
    let (dev, topic_id) = prepared(root, keys).await?;

    // Intact: exit 0, as text and as JSON.
    let out = verify(keys, &[], &dev.join("data"))?;
    ensure!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("result: intact"), "{}", show(&out));
    ensure!(
        text.contains(&format!("key provider    {}: ", keys.kind())),
        "{}",
        show(&out)
    );
    // Progress: a line per partition (stderr is not a terminal here).
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in 0..PARTITIONS {
        ensure!(
            stderr.contains(&format!("{TOPIC}/{p}: ")),
            "progress for {TOPIC}/{p}: {}",
            show(&out)
        );
    }
    let out = verify(keys, &["--json"], &dev.join("data"))?;
    ensure!(out.status.success(), "{}", show(&out));
    let report = json(&out)?;
    ensure!(report["ok"] == true, "{report:#}");
    ensure!(report["provider"]["kind"] == keys.kind(), "{report:#}");
    ensure!(report["summary"]["problems"] == 0, "{report:#}");
    others_ok(&report, &[])?;
    for p in 0..PARTITIONS {
        let part = partition(&report, TOPIC, p)?;
        ensure!(
            part["segments"].as_u64() >= Some(3),
            "several segments: {part:#}"
        );
        ensure!(
            part["records"].as_u64() == Some(RECORDS_PER_PARTITION as u64),
            "{part:#}"
        );
    }
    ensure!(
        report["key_versions"]
            .as_array()
            .is_some_and(|v| !v.is_empty() && v.iter().all(|k| k["in_provider"] == true)),
        "{report:#}"
    );

    // Each damage alone, in its own copy.
    for damage in Damage::ALL {
        let copy = root.join(format!("copy-{damage:?}"));
        copy_dir(&dev, &copy)?;
        let file = damage.apply(&copy.join("data"), &topic_id)?;

        let out = verify(keys, &["--json"], &copy.join("data"))?;
        ensure!(out.status.code() == Some(1), "{damage:?}: {}", show(&out));
        let report = json(&out)?;
        ensure!(report["ok"] == false, "{damage:?}: {report:#}");
        names_damage(&report, damage, &file)?;
        others_ok(&report, &[damage.partition()])?;

        let out = verify(keys, &[], &copy.join("data"))?;
        ensure!(out.status.code() == Some(1), "{damage:?}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let name = file.file_name().context("name")?.to_string_lossy();
        ensure!(
            text.contains(&format!("{TOPIC}/{}", damage.partition()))
                && text.contains(name.as_ref())
                && text.contains("PROBLEMS FOUND"),
            "{damage:?}: {}",
            show(&out)
        );
    }

    // All of them at once: each reported, the untouched partition ok.
    let copy = root.join("copy-all");
    copy_dir(&dev, &copy)?;
    let mut files = Vec::new();
    for damage in Damage::ALL {
        files.push((damage, damage.apply(&copy.join("data"), &topic_id)?));
    }
    let out = verify(keys, &["--json"], &copy.join("data"))?;
    ensure!(out.status.code() == Some(1), "{}", show(&out));
    let report = json(&out)?;
    for (damage, file) in &files {
        names_damage(&report, *damage, file)?;
    }
    let damaged: Vec<u32> = Damage::ALL.iter().map(|d| d.partition()).collect();
    others_ok(&report, &damaged)?;
    ensure!(
        report["summary"]["partitions_with_problems"] == Damage::ALL.len(),
        "{report:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_usage_errors_exit_2_softhsm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let keys = Keys::softhsm(tmp.path())?;
    usage_errors(tmp.path(), &keys).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_usage_errors_exit_2_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    usage_errors(tmp.path(), &Keys::File).await
}

async fn usage_errors(root: &Path, keys: &Keys) -> Result<()> {
    let empty = root.join("empty");
    std::fs::create_dir(&empty)?;
    // Not a data directory.
    let out = verify(keys, &[], &empty)?;
    ensure!(out.status.code() == Some(2), "{}", show(&out));
    // Neither --data-dir nor --config.
    let out = Command::new(binary("strongbox-broker"))
        .arg("verify")
        .envs(keys.env())
        .output()?;
    ensure!(out.status.code() == Some(2), "{}", show(&out));
    // A directory that does not exist.
    let out = verify(keys, &[], &root.join("missing"))?;
    if out.status.code() != Some(2) {
        bail!("{}", show(&out));
    }

    // A stopped broker's data whose key provider is gone (the token's
    // files, or the key directory): verify cannot check it, and says so
    // rather than report the data intact or damaged.
    let dev = root.join("dev");
    keys.create_dev(&dev)?;
    let mut broker = keys.start(&dev)?;
    ensure!(
        broker.terminate()? == Some(0),
        "graceful stop: {}",
        broker.log_text()
    );
    keys.check_in_use(&dev)?;
    let out = verify(keys, &[], &dev.join("data"))?;
    ensure!(out.status.success(), "{}", show(&out));
    keys.take_away(&dev)?;
    let out = verify(keys, &[], &dev.join("data"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = match keys {
        Keys::File => "keys.file.dir",
        Keys::SoftHsm(_) => "cannot open the key provider",
    };
    ensure!(
        out.status.code() == Some(2) && stderr.contains(why) && out.stdout.is_empty(),
        "without its key provider: {}",
        show(&out)
    );
    keys.bring_back(&dev)?;
    let out = verify(keys, &[], &dev.join("data"))?;
    ensure!(out.status.success(), "{}", show(&out));
    Ok(())
}
