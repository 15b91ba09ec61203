//! Shared by the `e2e_keys_*` tests: a development broker whose keys live
//! in a SoftHSM2 token of its own or in the file provider, ways to take the
//! provider away and bring it back, and helpers to write, read and inspect
//! what is wrapped under which key version.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` when the broker initializes the module,
//! so each test gets its own token directory and configuration
//! ([`TokenDir`]), passed to the broker process in the environment. A
//! missing SoftHSM2 fails the test; it is never skipped.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use strongbox_client::protocol::model::{Durability, TopicConfig};
use strongbox_client::{
    Client, ConsumedRecord, ConsumerConfig, ProducerConfig, ProducerRecord, Subscription,
};
use strongbox_storage::log::envelope::KeyEnvelope;
use strongbox_tests::BrokerProcess;
use strongbox_tests::softhsm::{TokenDir, module_path};

/// Which key provider a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Key files in the development directory.
    File,
    /// A SoftHSM2 token of the test's own.
    SoftHsm,
}

/// A development directory set up for one provider.
#[derive(Debug)]
pub struct Setup {
    _tmp: tempfile::TempDir,
    /// The development directory.
    pub dir: PathBuf,
    /// Which provider.
    pub provider: Provider,
    /// The token, with [`Provider::SoftHsm`].
    pub hsm: Option<TokenDir>,
}

impl Setup {
    /// Creates the development directory and points its `[keys]` at
    /// `provider`, rewrapping at most `rewrap_rate` envelopes per second,
    /// before the broker first starts.
    pub fn new(provider: Provider, rewrap_rate: u32) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("dev");
        let listen: SocketAddr = "127.0.0.1:0".parse()?;
        strongbox_broker::dev::ensure_dev_dir(&dir, listen)?;
        let hsm = match provider {
            Provider::File => None,
            Provider::SoftHsm => Some(TokenDir::new(&tmp.path().join("softhsm"))?),
        };
        let keys = match &hsm {
            None => format!(
                "[keys]\nprovider = \"file\"\nrewrap_rate = {rewrap_rate}\n\n[keys.file]\ndir = \"keys\"\n"
            ),
            Some(h) => format!(
                "[keys]\nprovider = \"pkcs11\"\nrewrap_rate = {rewrap_rate}\n\n[keys.pkcs11]\n\
                 module = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n",
                module_path().display(),
                h.label,
                h.pin_file.display()
            ),
        };
        let config = dir.join("broker.toml");
        let text = std::fs::read_to_string(&config)?;
        let start = text
            .find("\n[keys]\n")
            .ok_or_else(|| anyhow!("no [keys] in {text}"))?;
        let end = text
            .find("\n[metrics]\n")
            .ok_or_else(|| anyhow!("no [metrics] in {text}"))?;
        ensure!(start < end, "[keys] after [metrics] in {text}");
        let rewritten = format!("{}\n{keys}{}", &text[..start], &text[end..]);
        std::fs::write(&config, rewritten)?;
        Ok(Self {
            _tmp: tmp,
            dir,
            provider,
            hsm,
        })
    }

    /// Starts (or restarts) the broker.
    pub fn start(&self) -> Result<BrokerProcess> {
        match &self.hsm {
            None => BrokerProcess::start_dev(&self.dir),
            Some(h) => {
                let (name, value) = h.env();
                BrokerProcess::start_dev_with(&self.dir, &[(name, value.as_str())])
            }
        }
    }

    /// The admin profile.
    pub fn admin(&self) -> PathBuf {
        self.dir.join("profiles/admin.toml")
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// An outage: the token's files, or the key directory, disappear (as
    /// when an HSM is unplugged or a key volume unmounted). The file
    /// provider's directory is moved rather than made unreadable: tests
    /// may run as root, for whom mode 000 changes nothing.
    pub fn take_provider_away(&self) -> Result<()> {
        match &self.hsm {
            Some(h) => h.take_away()?,
            None => std::fs::rename(self.dir.join("keys"), self.dir.join("keys-away"))?,
        }
        Ok(())
    }

    /// The end of the outage.
    pub fn bring_provider_back(&self) -> Result<()> {
        match &self.hsm {
            Some(h) => h.bring_back()?,
            None => std::fs::rename(self.dir.join("keys-away"), self.dir.join("keys"))?,
        }
        Ok(())
    }

    /// The provider name `keys status` shows.
    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            Provider::File => "file",
            Provider::SoftHsm => "pkcs11",
        }
    }
}

/// Runs the CLI as `profile`; its stdout, failing on a non-zero exit.
pub fn cli_ok(profile: &Path, args: &[&str]) -> Result<String> {
    let out = strongbox_tests::cli(profile, args)?;
    ensure!(
        out.status.success(),
        "strongbox {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `strongbox keys status --json` (of `topic`'s dedicated key when given).
pub fn status(profile: &Path, topic: Option<&str>) -> Result<Value> {
    let mut args = vec!["keys", "status", "--json"];
    if let Some(t) = topic {
        args.extend(["--topic", t]);
    }
    let out = cli_ok(profile, &args)?;
    serde_json::from_str(out.trim()).with_context(|| format!("keys status output: {out}"))
}

/// Version → (state, segments) of `scope` (`broker`, `topic:<name>`) in a
/// status object.
pub fn versions(status: &Value, scope: &str) -> BTreeMap<u64, (String, u64)> {
    status["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["scope"] == scope)
        .map(|v| {
            (
                v["version"].as_u64().unwrap_or(0),
                (
                    v["state"].as_str().unwrap_or_default().to_owned(),
                    v["segments"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// The rewrap progress of a status object: (running, total, done, failed).
pub fn rewrap(status: &Value) -> (bool, u64, u64, u64) {
    let r = &status["rewrap"];
    (
        r["running"].as_bool().unwrap_or(false),
        r["total"].as_u64().unwrap_or(0),
        r["done"].as_u64().unwrap_or(0),
        r["failed"].as_u64().unwrap_or(0),
    )
}

/// Waits for the rewrap job to stop running; returns the last status.
/// Fails after three minutes (a hang, not a slow machine).
pub async fn rewrap_finished(profile: &Path, topic: Option<&str>) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = status(profile, topic)?;
        if !rewrap(&s).0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("the rewrap job is still running: {s}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The KEK (scope label, version) named by every key envelope of a topic,
/// by partition and base offset.
pub fn envelopes(
    data_dir: &Path,
    topic_id: &[u8; 16],
) -> Result<BTreeMap<(u32, u64), (String, u32)>> {
    let mut out = BTreeMap::new();
    let topic = data_dir.join("log").join(hex(topic_id));
    for part in std::fs::read_dir(&topic).with_context(|| format!("{}", topic.display()))? {
        let part = part?.path();
        let Some(index) = part
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        for file in std::fs::read_dir(&part)? {
            let path = file?.path();
            if path.extension().is_none_or(|e| e != "key") {
                continue;
            }
            let env = KeyEnvelope::decode(&std::fs::read(&path)?)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            out.insert(
                (index, env.base_offset),
                (env.wrapped.kek.scope.label(), env.wrapped.kek.version),
            );
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A topic with `partitions` partitions whose segments roll every
/// `segment_bytes`, under the broker key or a dedicated one.
pub fn topic_config(partitions: u32, segment_bytes: u64, dedicated_kek: bool) -> TopicConfig {
    TopicConfig {
        partitions,
        durability: Durability::Fsync,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: Some(segment_bytes),
        segment_ms: None,
        dedicated_kek,
    }
}

/// The value of record `i` of a test: its number, then padding to `len`.
pub fn value(prefix: &str, i: usize, len: usize) -> String {
    let mut v = format!("{prefix}-{i:06}-");
    while v.len() < len {
        v.push('x');
    }
    v
}

/// One record per batch, sent without waiting: many small frames, so the
/// small test segments roll often.
pub fn small_batches() -> ProducerConfig {
    ProducerConfig {
        batch_bytes: 1,
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    }
}

/// Publishes records `range` of `prefix` (value length `len`) to `topic`,
/// record `i` to partition `i % partitions`, and waits for every
/// acknowledgement; any failed ack fails.
pub async fn publish(
    client: &Client,
    topic: &str,
    partitions: u32,
    prefix: &str,
    range: std::ops::Range<usize>,
    len: usize,
) -> Result<()> {
    let producer = client.producer(small_batches()).await?;
    let mut pending = Vec::new();
    for i in range {
        let p = u32::try_from(i)? % partitions;
        pending.push(
            producer
                .send(ProducerRecord::new(topic, value(prefix, i, len)).partition(p))
                .await?,
        );
    }
    for (n, p) in pending.into_iter().enumerate() {
        p.await.with_context(|| format!("ack of record {n}"))?;
    }
    producer.close().await?;
    Ok(())
}

/// Reads partition `partition` of `topic` from the earliest record: exactly
/// `n` records.
pub async fn read_partition(
    client: &Client,
    topic: &str,
    partition: u32,
    n: usize,
) -> Result<Vec<ConsumedRecord>> {
    let mut consumer = client
        .subscribe(
            Subscription::partition(topic, partition),
            ConsumerConfig::default(),
        )
        .await?;
    let records = strongbox_tests::client::read_n(&mut consumer, n).await;
    consumer.close().await;
    records
}

/// Checks that partition `p` of `topic` holds exactly the values `expected`
/// in order, from offset 0.
pub async fn assert_partition(
    client: &Client,
    topic: &str,
    p: u32,
    expected: &[String],
) -> Result<()> {
    let records = read_partition(client, topic, p, expected.len()).await?;
    for (i, (r, want)) in records.iter().zip(expected).enumerate() {
        ensure!(
            r.offset == i as u64,
            "{topic}/{p}: record {i} at offset {}",
            r.offset
        );
        ensure!(
            r.value == want.as_bytes(),
            "{topic}/{p} offset {i}: got {:?}, want {want:?}",
            String::from_utf8_lossy(&r.value)
        );
    }
    Ok(())
}

/// The values partition `p` of `partitions` gets from records `range` of
/// `prefix`, in order.
pub fn expected(
    prefix: &str,
    range: std::ops::Range<usize>,
    partitions: u32,
    p: u32,
    len: usize,
) -> Vec<String> {
    range
        .filter(|i| u32::try_from(*i).is_ok_and(|i| i % partitions == p))
        .map(|i| value(prefix, i, len))
        .collect()
}

/// A small deterministic generator for "random" moments, seeded from the
/// clock (the seed is printed, to replay a failure).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the time.
    pub fn from_time() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("random seed {seed}");
        Self(seed)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo).max(1)
    }
}
