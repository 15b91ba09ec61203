//! The audit trail against a real broker, with the broker's keys in a
//! SoftHSM2 token (`pkcs11`) and in the `file` provider: what it records,
//! who may read it, and that `strongbox audit verify` catches an attacker
//! who holds the keys and rewrites the `_audit` topic offline (edits,
//! deletes or reorders a record, or cuts the topic short). The attacker
//! opens the topic with the storage library and the provider the broker
//! used: the same token, or the same key directory.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, and the offline steps
//! load the module in the test process: each SoftHSM2 test runs in a child
//! process of its own with a token directory of its own
//! ([`in_own_process`]). A missing SoftHSM2 fails those tests; they are
//! never skipped.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use serde_json::Value;
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_client::{
    Client, ClientConfig, ClientError, ConsumerConfig, ErrorCode, PemSource, ProducerConfig,
    ProducerRecord, Subscription,
};
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_storage::data_dir::topic_dir;
use strongbox_storage::keys::{FileKeyProvider, KekId, KekScope, KeyManager, KeyProvider};
use strongbox_storage::log::{Durability, LogConfig, PartitionLog};
use strongbox_storage::meta::MetaStore;
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::softhsm::{Token, in_own_process};
use strongbox_tests::{BrokerProcess, START_TIMEOUT, cli, copy_dir, files_under};

const BOB: &str = "spiffe://strongbox.dev/bob";
const ADMIN: &str = "spiffe://strongbox.dev/admin";
const INTRUDER: &str = "spiffe://strongbox.dev/intruder";

/// Which key provider the broker uses.
#[derive(Debug, Clone)]
enum Keys {
    File,
    Pkcs11(Token),
}

impl Keys {
    /// Creates the development directory `dev` (without starting a broker)
    /// and points its `[keys]` at this provider.
    fn create_dev(&self, dev: &Path) -> Result<()> {
        strongbox_broker::dev::ensure_dev_dir(dev, "127.0.0.1:0".parse()?)?;
        if let Self::Pkcs11(token) = self {
            token.configure_dev_broker(dev)?;
        }
        Ok(())
    }

    /// Starts (or restarts) the broker of `dev`.
    fn start(&self, dev: &Path) -> Result<BrokerProcess> {
        match self {
            Self::File => BrokerProcess::start_dev(dev),
            Self::Pkcs11(token) => {
                let (name, value) = token.env();
                BrokerProcess::start_dev_with(dev, &[(name, value.as_str())])
            }
        }
    }

    /// The provider of the stopped broker of `dev`, in this process: the
    /// same token, or the same key directory.
    fn provider(&self, dev: &Path) -> Result<Arc<dyn KeyProvider>> {
        Ok(match self {
            Self::File => Arc::new(FileKeyProvider::open(dev.join("keys"))?),
            Self::Pkcs11(token) => Arc::new(token.provider()?),
        })
    }

    /// The broker of `dev` really used this provider: KEK files in the key
    /// directory for `file`, none there and the broker KEK in the token for
    /// `pkcs11`.
    fn check_in_use(&self, dev: &Path) -> Result<()> {
        let files = files_under(&dev.join("keys"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "kek"))
            .count();
        match self {
            Self::File => ensure!(files > 0, "no KEK file written"),
            Self::Pkcs11(_) => {
                ensure!(files == 0, "the pkcs11 broker wrote {files} KEK file(s)");
                let v1 = KekId {
                    scope: KekScope::Broker,
                    version: 1,
                };
                ensure!(
                    self.provider(dev)?.has_kek(&v1)?,
                    "broker KEK not in the token"
                );
            }
        }
        Ok(())
    }
}

fn block_on<F: Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the CLI and insists on success.
fn cli_ok(profile: &Path, args: &[&str]) -> Result<String> {
    let out = cli(profile, args)?;
    ensure!(
        out.status.success(),
        "strongbox {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    Ok(stdout(&out))
}

/// Runs the CLI and insists on exit status 1 with `needle` on stderr.
fn cli_fails(profile: &Path, args: &[&str], needle: &str) -> Result<String> {
    let out = cli(profile, args)?;
    let err = stderr(&out);
    ensure!(
        out.status.code() == Some(1) && err.contains(needle),
        "strongbox {args:?}: expected exit 1 with {needle:?}, got {:?}: {}{err}",
        out.status.code(),
        stdout(&out)
    );
    Ok(err)
}

/// Every audit record, as `audit tail --json` prints them.
fn audit_records(broker: &BrokerProcess) -> Result<Vec<Value>> {
    cli_ok(&broker.profile("admin"), &["audit", "tail", "--json"])?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Polls the trail until `wanted` holds (the writer appends in the
/// background), failing after [`START_TIMEOUT`].
async fn wait_for_records(
    broker: &BrokerProcess,
    what: &str,
    wanted: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let records = audit_records(broker)?;
        if wanted(&records) {
            return Ok(records);
        }
        if Instant::now() > deadline {
            bail!(
                "the audit trail never showed {what}; it holds:\n{}",
                records
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find(records: &[Value], f: impl Fn(&Value) -> bool) -> Option<&Value> {
    records.iter().find(|r| f(r))
}

fn is(r: &Value, action: &str, principal: Option<&str>, resource: &str) -> bool {
    r["action"] == action
        && r["resource"] == resource
        && match principal {
            Some(p) => r["principal"] == p,
            None => r["principal"].is_null(),
        }
}

/// A client certificate for `principal` from a CA the broker does not trust.
async fn failed_authentication(broker: &BrokerProcess) -> Result<()> {
    let other = TestCa::new("Not the broker's CA")?;
    let impostor = other.issue(&CertSpec::client_uri(INTRUDER))?;
    let mut config = ClientConfig::new(
        broker.addr.to_string(),
        PemSource::file(broker.dir.join("ca/ca.pem")),
        PemSource::pem(impostor.cert_pem.as_bytes().to_vec()),
        PemSource::pem(impostor.key_pem().as_bytes().to_vec()),
    );
    config.server_name = Some("localhost".into());
    match Client::connect(config).await {
        Ok(client) => bail!("an untrusted certificate got in as {}", client.principal()),
        Err(ClientError::Authentication(_)) => Ok(()),
        Err(e) => bail!("expected an authentication failure, got {e:?}"),
    }
}

#[test]
fn the_trail_records_security_events_and_only_audit_may_read_it_softhsm() {
    in_own_process(
        "the_trail_records_security_events_and_only_audit_may_read_it_softhsm",
        || {
            let token = Token::new("audit-trail").expect("token");
            block_on(the_trail(Keys::Pkcs11(token))).expect("the audit trail");
        },
    );
}

#[test]
fn the_trail_records_security_events_and_only_audit_may_read_it_file() -> Result<()> {
    block_on(the_trail(Keys::File))
}

async fn the_trail(keys: Keys) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    keys.create_dev(&dir)?;
    let mut broker = keys.start(&dir)?;
    let (admin, bob) = (broker.profile("admin"), broker.profile("bob"));

    // A denial by bob, a topic and a grant by admin, a failed authentication.
    cli_fails(&bob, &["publish", "demo.greetings", "hi"], "not authorized")?;
    let admin_client = connect(&admin).await?;
    let mut config = topic(1);
    config.segment_bytes = Some(8192);
    admin_client
        .admin()
        .create_topic("demo.unwrap", config)
        .await?;
    cli_ok(
        &admin,
        &[
            "acl",
            "grant",
            "--principal",
            "spiffe://strongbox.dev/carol",
            "--topic",
            "demo.unwrap",
            "--op",
            "subscribe",
        ],
    )?;
    failed_authentication(&broker).await?;

    // Nobody writes, deletes or creates the broker's own topics; reading the
    // trail needs `audit`, which bob and alice lack.
    cli_fails(&admin, &["publish", "_audit", "forged"], "not authorized")?;
    cli_fails(&admin, &["topic", "delete", "_audit"], "not authorized")?;
    cli_fails(&admin, &["topic", "create", "_mine"], "not authorized")?;
    for who in ["bob", "alice"] {
        let profile = broker.profile(who);
        cli_fails(&profile, &["audit", "tail"], "not authorized")?;
        cli_fails(&profile, &["audit", "verify"], "not authorized")?;
        cli_fails(
            &profile,
            &["subscribe", "_audit", "--partition", "0"],
            "not authorized",
        )?;
        cli_fails(&profile, &["topic", "describe", "_audit"], "not authorized")?;
        assert!(!cli_ok(&profile, &["topic", "list"])?.contains("_audit"));
    }
    assert!(cli_ok(&admin, &["topic", "list"])?.contains("_audit"));

    // Data in several segments, so that reading it after a restart needs
    // data keys that only bob's reads unwrap.
    let alice = connect(&broker.profile("alice")).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    for i in 0..40 {
        producer
            .send_and_wait(ProducerRecord::new("demo.unwrap", vec![b'x'; 1024]).key(format!("{i}")))
            .await?;
    }
    producer.close().await?;
    alice.close().await;
    admin_client.close().await;
    assert_eq!(broker.terminate()?, Some(0), "{}", broker.log_text());
    keys.check_in_use(&dir)?;

    let mut broker = keys.start(&dir)?;
    let bob_client = connect(&bob).await?;
    let mut consumer = bob_client
        .subscribe(
            Subscription::partition("demo.unwrap", 0),
            ConsumerConfig::default(),
        )
        .await?;
    read_n(&mut consumer, 40).await?;
    consumer.close().await;
    let refused = bob_client
        .subscribe(
            Subscription::partition("_audit", 0),
            ConsumerConfig::default(),
        )
        .await;
    assert!(
        matches!(
            &refused,
            Err(ClientError::Broker {
                code: ErrorCode::NotAuthorized,
                ..
            })
        ),
        "bob subscribing to _audit: {refused:?}"
    );
    bob_client.close().await;
    // Unwrap counts are written once a minute and at shutdown.
    assert_eq!(broker.terminate()?, Some(0), "{}", broker.log_text());
    let broker = keys.start(&dir)?;

    let records = wait_for_records(&broker, "bob's unwraps", |r| {
        find(r, |x| is(x, "key.unwrap", Some(BOB), "topic:demo.unwrap")).is_some()
    })
    .await?;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "contiguous from 1: {r}");
    }
    let first = &records[0];
    assert!(
        is(first, "topic.create", Some("broker"), "topic:_audit"),
        "{first}"
    );

    // bob may publish nowhere, so the CLI's first step, asking for a
    // producer id, is what is denied (a broker-wide check).
    let deny =
        find(&records, |r| is(r, "acl.deny", Some(BOB), "broker")).context("bob's denial")?;
    assert_eq!(deny["outcome"], "denied");
    assert_eq!(deny["details"]["operation"], "publish");
    assert_eq!(deny["details"]["reason"], "no_publish_anywhere");
    let created = find(&records, |r| {
        is(r, "topic.create", Some(ADMIN), "topic:demo.unwrap")
    })
    .context("the topic creation")?;
    assert_eq!(created["outcome"], "success");
    let granted = find(&records, |r| {
        is(r, "acl.grant", Some(ADMIN), "topic:demo.unwrap")
    })
    .context("the grant")?;
    assert_eq!(
        granted["details"]["rule_principal"],
        "spiffe://strongbox.dev/carol"
    );
    assert_eq!(granted["details"]["operations"], "subscribe");
    let auth = find(&records, |r| is(r, "auth.failure", None, "listener"))
        .context("the failed authentication")?;
    assert_eq!(auth["outcome"], "failure");
    assert_eq!(auth["details"]["claimed_principal"], INTRUDER);
    let internal = find(&records, |r| is(r, "acl.deny", Some(ADMIN), "topic:_audit"))
        .context("admin's publish to _audit")?;
    assert_eq!(internal["details"]["reason"], "internal_topic");
    assert!(
        find(&records, |r| is(r, "acl.deny", Some(BOB), "topic:_audit")
            && r["details"]["operation"] == "audit")
        .is_some(),
        "bob reading the trail is a denial"
    );
    let unwrap = find(&records, |r| {
        is(r, "key.unwrap", Some(BOB), "topic:demo.unwrap")
    })
    .context("bob's unwraps")?;
    assert!(
        unwrap["details"]["count"].as_u64().is_some_and(|n| n >= 1),
        "{unwrap}"
    );
    assert_eq!(unwrap["details"]["kek"], "kek:broker/v1");
    assert_eq!(unwrap["details"]["partition"], 0);

    // The table, and tailing from a sequence number.
    let admin = broker.profile("admin");
    let table = cli_ok(&admin, &["audit", "tail"])?;
    assert!(table.starts_with("   SEQ  TIME"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("acl.deny")
            && l.contains(BOB)
            && l.contains("no_publish_anywhere")),
        "{table}"
    );
    let from3 = cli_ok(&admin, &["audit", "tail", "--json", "--from", "3"])?;
    let seq3: Value = serde_json::from_str(from3.lines().next().context("records from 3")?)?;
    assert_eq!(seq3["seq"], 3);

    let verified = cli_ok(&admin, &["audit", "verify"])?;
    let n: u64 = verified
        .strip_prefix("audit trail intact: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected verify output: {verified}"))?;
    assert!(n >= records.len() as u64, "{verified}");
    assert!(verified.contains(" records, head "), "{verified}");
    let json: Value = serde_json::from_str(cli_ok(&admin, &["--json", "audit", "verify"])?.trim())?;
    assert_eq!(json["intact"], true);
    assert!(
        json["head_sequence"].as_u64().is_some_and(|h| h >= n),
        "{json}"
    );

    follow_shows_new_records(&broker).await
}

/// `audit tail --follow --json` prints the trail, then new records as they
/// come, until interrupted.
async fn follow_shows_new_records(broker: &BrokerProcess) -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(strongbox_tests::binary("strongbox"))
        .args(["audit", "tail", "--follow", "--json"])
        .env("STRONGBOX_PROFILE", broker.profile("admin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A denial made while following (alice may not publish outside demo.*).
    cli_fails(
        &broker.profile("alice"),
        &["publish", "followed.topic", "x"],
        "not authorized",
    )?;
    let deadline = Instant::now() + START_TIMEOUT;
    let seen = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("audit tail --follow never printed the new denial");
        };
        let record: Value = serde_json::from_str(&line)?;
        if is(
            &record,
            "acl.deny",
            Some("spiffe://strongbox.dev/alice"),
            "topic:followed.topic",
        ) {
            break record;
        }
    };
    assert_eq!(seen["outcome"], "denied");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    assert_eq!(
        status.code(),
        Some(0),
        "Ctrl-C ends audit tail --follow cleanly"
    );
    Ok(())
}

/// One record of the audit topic, as an attacker reads it.
#[derive(Debug, Clone)]
struct Stored {
    batch_base: u64,
    offset: u64,
    timestamp: i64,
    key: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
    value: Bytes,
}

/// Opens the `_audit` partition of a stopped broker's dev directory with
/// the storage API and the keys (the broker's provider), as an attacker
/// holding both could.
fn open_audit_log(dev: &Path, keys: &Keys) -> Result<PartitionLog> {
    let data = dev.join("data");
    let meta = MetaStore::open(data.join("meta.redb"))?;
    let entry = meta
        .read(|r| r.topic("_audit"))?
        .context("the broker created no _audit topic")?;
    let keys = Arc::new(KeyManager::new(keys.provider(dev)?, meta, 64));
    let mut config = LogConfig::new(entry.topic_id, 0, KekScope::Broker);
    config.durability = Durability::Fsync;
    Ok(PartitionLog::open(
        topic_dir(&data, &entry.topic_id).join("0"),
        config,
        keys,
    )?)
}

fn read_all(log: &PartitionLog) -> Result<Vec<Stored>> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.high_watermark() {
        let batches = log.read(next, 1 << 20)?;
        ensure!(!batches.is_empty(), "no progress at {next}");
        for (base, bytes) in batches {
            let batch = RecordBatch::parse(bytes)?;
            for r in batch.records() {
                let offset = base + u64::from(r.index);
                out.push(Stored {
                    batch_base: base,
                    offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    headers: r.headers.iter().collect(),
                    value: r.value,
                });
                next = offset + 1;
            }
        }
    }
    Ok(out)
}

/// Cuts the audit topic at the batch holding `offset` and appends what
/// `rewrite` makes of the records from there on, one record per batch.
fn tamper(
    dev: &Path,
    keys: &Keys,
    offset: u64,
    rewrite: impl FnOnce(Vec<Stored>) -> Vec<Stored>,
) -> Result<()> {
    let log = open_audit_log(dev, keys)?;
    let records = read_all(&log)?;
    let cut = records
        .iter()
        .find(|r| r.offset == offset)
        .with_context(|| format!("no audit record at offset {offset}"))?
        .batch_base;
    let tail: Vec<Stored> = records.into_iter().filter(|r| r.offset >= cut).collect();
    log.truncate(cut)?;
    for r in rewrite(tail) {
        let mut b = BatchBuilder::new(r.timestamp);
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
            .collect();
        b.push(r.timestamp, r.key.as_deref(), &headers, &r.value)?;
        log.append(&RecordBatch::parse(b.finish()?)?)?
            .durable
            .wait()?;
    }
    log.close()?;
    Ok(())
}

/// The value of the record at `offset`, as text.
fn value_at(records: &[Stored], offset: u64) -> String {
    records
        .iter()
        .find(|r| r.offset == offset)
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .unwrap_or_default()
}

/// Starts a broker on a copy of `base` rewritten by `attack`, runs
/// `audit verify` and returns its stderr (it must exit 1). With
/// `expect_alert`, waits for the broker's `audit.chain.broken` record first.
async fn verify_after(
    base: &Path,
    keys: &Keys,
    name: &str,
    expect_alert: bool,
    attack: impl FnOnce(&Path) -> Result<()>,
) -> Result<(BrokerProcess, String)> {
    let dir = base.with_file_name(name);
    copy_dir(base, &dir)?;
    attack(&dir)?;
    let broker = keys.start(&dir)?;
    if expect_alert {
        // The broker records it first thing, before the checkpoint it
        // signs as it starts serving.
        wait_for_records(&broker, "the chain-broken alert", |r| {
            r.iter().any(|x| x["action"] == "audit.chain.broken")
        })
        .await?;
    }
    let out = cli(&broker.profile("admin"), &["audit", "verify"])?;
    ensure!(
        out.status.code() == Some(1),
        "{name}: audit verify should fail, got {:?}: {}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    Ok((broker, stderr(&out).trim().to_owned()))
}

#[test]
fn verify_names_the_record_an_attacker_with_the_keys_rewrote_softhsm() {
    in_own_process(
        "verify_names_the_record_an_attacker_with_the_keys_rewrote_softhsm",
        || {
            let token = Token::new("audit-tamper").expect("token");
            block_on(rewritten(Keys::Pkcs11(token))).expect("audit tampering");
        },
    );
}

#[test]
fn verify_names_the_record_an_attacker_with_the_keys_rewrote_file() -> Result<()> {
    block_on(rewritten(Keys::File))
}

async fn rewritten(keys: Keys) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = tmp.path().join("base");
    keys.create_dev(&base)?;
    let mut broker = keys.start(&base)?;
    let admin = connect(&broker.profile("admin")).await?;
    for i in 0..8 {
        admin
            .admin()
            .create_topic(format!("audit.t{i}"), topic(1))
            .await?;
    }
    admin.close().await;
    wait_for_records(&broker, "the eight topics", |r| {
        find(r, |x| x["resource"] == "topic:audit.t7").is_some()
    })
    .await?;
    cli_ok(&broker.profile("admin"), &["audit", "verify"])?;
    assert_eq!(broker.terminate()?, Some(0), "{}", broker.log_text());
    keys.check_in_use(&base)?;

    let records = read_all(&open_audit_log(&base, &keys)?)?;
    let n = records.len() as u64;
    ensure!(n >= 10, "expected at least 10 audit records, found {n}");
    // A fresh trail: record k is at offset k - 1.
    for r in &records {
        let v: Value = serde_json::from_slice(&r.value)?;
        assert_eq!(v["seq"], r.offset + 1);
    }
    let k = 5u64;
    assert!(value_at(&records, k - 1).contains("\"seq\":5,"));

    // Record 5 edited in place; its hash no longer matches.
    let (mut b, err) = verify_after(&base, &keys, "edited", false, |dir| {
        tamper(dir, &keys, k - 1, |mut tail| {
            for r in &mut tail {
                if r.offset == k - 1 {
                    let text = String::from_utf8_lossy(&r.value).replace("topic:", "topic:x");
                    r.value = Bytes::from(text);
                }
            }
            tail
        })
    })
    .await?;
    assert_eq!(
        err,
        "error: audit record 5 (offset 4): hash does not match its contents"
    );
    b.terminate()?;

    // Record 5 deleted.
    let (mut b, err) = verify_after(&base, &keys, "deleted", false, |dir| {
        tamper(dir, &keys, k - 1, |tail| {
            tail.into_iter().filter(|r| r.offset != k - 1).collect()
        })
    })
    .await?;
    assert_eq!(
        err,
        "error: audit record 6 (offset 4) follows record 4: record 5 is missing"
    );
    b.terminate()?;

    // Records 5 and 6 swapped.
    let (mut b, err) = verify_after(&base, &keys, "swapped", false, |dir| {
        tamper(dir, &keys, k - 1, |mut tail| {
            let i = tail.iter().position(|r| r.offset == k - 1).unwrap_or(0);
            tail.swap(i, i + 1);
            tail
        })
    })
    .await?;
    assert_eq!(
        err,
        "error: audit record 6 (offset 4) follows record 4: record 5 is missing"
    );
    b.terminate()?;

    // The topic cut short, nothing appended: only the anchored head shows
    // it. The broker notices at start and raises an alert.
    let mut kept = 0;
    let (mut b, err) = verify_after(&base, &keys, "truncated", true, |dir| {
        tamper(dir, &keys, n - 3, |tail| {
            kept = tail.first().map_or(0, |r| r.offset);
            Vec::new()
        })
    })
    .await?;
    assert_eq!(
        err,
        format!(
            "error: audit topic ends at record {kept} but the anchored head is record {n}: \
             the topic was truncated (the broker found the gap and recorded \
             audit.chain.broken as record {})",
            n + 1
        )
    );
    let trail = audit_records(&b)?;
    let alert = trail
        .iter()
        .find(|r| r["action"] == "audit.chain.broken")
        .context("no chain-broken alert")?;
    assert_eq!(alert["outcome"], "alert");
    assert_eq!(alert["seq"], n + 1);
    assert_eq!(alert["details"]["reason"], "truncated");
    assert_eq!(alert["details"]["anchored_sequence"], n);
    assert_eq!(alert["details"]["topic_last_sequence"], kept);
    assert_eq!(b.metric_sum("strongbox_audit_chain_broken")?, 1.0);
    assert!(b.log_text().contains("audit chain broken"));
    b.terminate()?;

    // The untouched copy still verifies.
    let broker = keys.start(&base)?;
    cli_ok(&broker.profile("admin"), &["audit", "verify"])?;
    Ok(())
}
