//! End-to-end payload encryption against a real broker: what the broker
//! stores (seen offline with `strongbox-broker inspect` and in the raw
//! files) is ciphertext only; readers open values with the right key and
//! get a per-record error naming the key without it, across keyring
//! rotations; HPKE recipients follow access approvals, removals and
//! expiry; an entry not signed by the pinned owner key stops a producer;
//! and a sealed record moved to another topic (or another record key) no
//! longer authenticates.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use strongbox_broker::server::recipients::EntryFacts;
use strongbox_client::e2e::{
    E2eOpener, E2eSealer, Keyring, OwnerKey, RecipientGrant, RecipientKey, SignedRecipientEntry,
    UnreadablePolicy,
};
use strongbox_client::protocol::frames::admin_types::RecipientEntry;
use strongbox_client::{
    ConsumerConfig, ErrorCode, ProducerConfig, ProducerRecord, Subscription, ValueTransformer,
};
use strongbox_tests::client::{READ_TIMEOUT, connect, read_n};
use strongbox_tests::{BrokerProcess, START_TIMEOUT, Signal, binary, cli, contains, files_under};

const BOB: &str = "spiffe://strongbox.dev/bob";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs the CLI and insists on success; returns stdout.
fn cli_ok(profile: &Path, args: &[&str]) -> Result<String> {
    let out = cli(profile, args)?;
    ensure!(
        out.status.success(),
        "strongbox {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Runs the CLI and insists on exit status 1 with `needle` on stderr.
fn cli_fails(profile: &Path, args: &[&str], needle: &str) -> Result<String> {
    let out = cli(profile, args)?;
    let err = text(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains(needle),
        "strongbox {args:?}: expected exit 1 with {needle:?}, got {:?}: {}{err}",
        out.status.code(),
        text(&out.stdout)
    );
    Ok(err)
}

fn json(profile: &Path, args: &[&str]) -> Result<Value> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = cli_ok(profile, &full)?;
    serde_json::from_str(out.trim()).with_context(|| format!("not JSON: {out}"))
}

/// `strongbox-broker inspect` with `args`.
fn inspect(args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary("strongbox-broker"))
        .arg("inspect")
        .args(args)
        .output()?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The values `subscribe --json` printed, in order.
fn values(stdout: &str) -> Result<Vec<String>> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
            v["value"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no text value: {l}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_values_are_ciphertext_at_the_broker_and_replay_crosses_rotations() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dev)?;
    let (admin, alice, bob) = (
        broker.profile("admin"),
        broker.profile("alice"),
        broker.profile("bob"),
    );
    cli_ok(&admin, &["topic", "create", "demo.vault"])?;
    let keys = tmp.path().join("vault.keyring");
    cli_ok(&alice, &["keyring", "new", s(&keys), "--id", "vault-key"])?;

    // One record under each of four key versions (three rotations).
    for version in 1..=4 {
        if version > 1 {
            cli_ok(&alice, &["keyring", "rotate", s(&keys)])?;
        }
        let value = format!("VAULT-PLAINTEXT-v{version}");
        cli_ok(
            &alice,
            &[
                "publish",
                "demo.vault",
                "--e2e-keyring",
                s(&keys),
                "--key",
                "acct-9",
                &value,
            ],
        )?;
    }
    // A plaintext record elsewhere, so the offline view is seen to work.
    cli_ok(
        &alice,
        &["publish", "demo.greetings", "PLAIN-CONTROL-MARKER"],
    )?;

    // Replay across every rotation with the whole key.
    let reader = tmp.path().join("reader.keyring");
    cli_ok(
        &alice,
        &[
            "keyring",
            "export",
            s(&keys),
            "--id",
            "vault-key",
            "--out",
            s(&reader),
        ],
    )?;
    let out = cli_ok(
        &bob,
        &[
            "--json",
            "subscribe",
            "demo.vault",
            "--count",
            "4",
            "--e2e-keyring",
            s(&reader),
        ],
    )?;
    assert_eq!(
        values(&out)?,
        (1..=4)
            .map(|v| format!("VAULT-PLAINTEXT-v{v}"))
            .collect::<Vec<_>>()
    );

    // Read permission without the key: a per-record error naming it.
    let old = tmp.path().join("v1.keyring");
    cli_ok(
        &alice,
        &[
            "keyring",
            "export",
            s(&keys),
            "--id",
            "vault-key",
            "--version",
            "1",
            "--out",
            s(&old),
        ],
    )?;
    cli_fails(
        &bob,
        &[
            "subscribe",
            "demo.vault",
            "--count",
            "4",
            "--e2e-keyring",
            s(&old),
        ],
        "e2e key vault-key v2 is not in the keyring",
    )?;
    // Without any key, what bob gets is the ciphertext.
    let raw = cli_ok(&bob, &["subscribe", "demo.vault", "--count", "4"])?;
    assert!(!raw.contains("VAULT-PLAINTEXT"), "{raw}");

    // Offline inspection refuses while the broker runs.
    let data = dev.join("data");
    let running = inspect(&["--data-dir", s(&data), "--topic", "demo.vault"])?;
    assert_eq!(running.status.code(), Some(1));
    assert!(
        text(&running.stderr).contains("a broker is running"),
        "{}",
        text(&running.stderr)
    );

    // After a graceful stop: the at-rest layer decrypted shows ciphertext.
    assert_eq!(broker.terminate()?, Some(0));
    let out = inspect(&["--data-dir", s(&data), "--topic", "demo.vault", "--json"])?;
    ensure!(out.status.success(), "inspect: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("VAULT-PLAINTEXT"), "{stdout}");
    let records: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 4, "{stdout}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["offset"], i, "{r}");
        assert_eq!(r["key"], "acct-9", "keys are metadata: not sealed");
        assert!(r["value"].is_null() && r["value_hex"].is_string(), "{r}");
        let header = r["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == "strongbox-e2e"))
            .with_context(|| format!("no e2e header: {r}"))?;
        assert!(header["value_hex"].is_string(), "{header}");
    }
    let text_form = inspect(&["--data-dir", s(&data), "--topic", "demo.vault"])?;
    assert!(text_form.status.success());
    assert!(!text(&text_form.stdout).contains("VAULT-PLAINTEXT"));
    assert_eq!(text(&text_form.stdout).lines().count(), 4);
    let one = inspect(&[
        "--data-dir",
        s(&data),
        "--topic",
        "demo.vault",
        "--from",
        "2",
        "--count",
        "1",
        "--json",
    ])?;
    let one = text(&one.stdout);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains("\"offset\":2"), "{one}");
    // The control: a plaintext value is shown as text.
    let control = inspect(&["--data-dir", s(&data), "--topic", "demo.greetings"])?;
    assert!(
        text(&control.stdout).contains("PLAIN-CONTROL-MARKER"),
        "{}{}",
        text(&control.stdout),
        text(&control.stderr)
    );
    let missing = inspect(&["--data-dir", s(&data), "--topic", "demo.none"])?;
    assert!(text(&missing.stderr).contains("topic demo.none does not exist"));

    // No file under the data directory holds either marker.
    for file in files_under(&data) {
        let bytes = std::fs::read(&file)?;
        assert!(!contains(&bytes, b"VAULT-PLAINTEXT"), "{}", file.display());
        assert!(
            !contains(&bytes, b"PLAIN-CONTROL-MARKER"),
            "{}",
            file.display()
        );
    }
    Ok(())
}

/// Signs an entry for `topic`/`recipient`/`key` with the owner key file.
fn sign(profile: &Path, owner: &Path, topic: &str, recipient: &str, key: &str) -> Result<String> {
    Ok(cli_ok(
        profile,
        &[
            "e2e",
            "recipient",
            "sign",
            "--owner-key",
            s(owner),
            "--topic",
            topic,
            "--recipient",
            recipient,
            "--public-key",
            key,
        ],
    )?
    .trim()
    .to_owned())
}

fn public_key(profile: &Path, identity: &Path) -> Result<String> {
    let v = json(profile, &["e2e", "identity", "show", s(identity)])?;
    v["public_key"]
        .as_str()
        .map(str::to_owned)
        .context("a public key")
}

/// The recipients the directory lists, with their verification status.
fn directory(profile: &Path, pinned: &Path) -> Result<Vec<(String, String)>> {
    let list = json(
        profile,
        &[
            "recipients",
            "list",
            "demo.health",
            "--owner-key",
            s(pinned),
        ],
    )?;
    Ok(list
        .as_array()
        .context("a list")?
        .iter()
        .map(|e| {
            (
                e["recipient"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Publishes `value` sealed to the directory; returns stderr (which names
/// the recipients sealed to).
fn publish_sealed(alice: &Path, pinned: &Path, value: &str) -> Result<String> {
    let out = cli(
        alice,
        &[
            "publish",
            "demo.health",
            "--e2e-recipients",
            "demo.health",
            "--e2e-owner-key",
            s(pinned),
            value,
        ],
    )?;
    ensure!(out.status.success(), "publish: {}", text(&out.stderr));
    Ok(text(&out.stderr))
}

/// Bob reads offset `at` with `identity`.
fn read_as(bob: &Path, identity: &Path, at: u64) -> Result<Output> {
    cli(
        bob,
        &[
            "--json",
            "subscribe",
            "demo.health",
            "--from",
            &at.to_string(),
            "--count",
            "1",
            "--e2e-identity",
            s(identity),
        ],
    )
}

async fn expire(broker: &BrokerProcess, bob: &Path, id: u64, expires_at: i64) -> Result<()> {
    let wait = u64::try_from(expires_at.saturating_sub(now_ms()).max(0)).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait + 200)).await;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        broker.signal(Signal::SIGHUP)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let list = json(bob, &["access", "list"])?;
        let state = list
            .as_array()
            .and_then(|l| l.iter().find(|r| r["id"] == id))
            .map(|r| r["state"].clone());
        if state == Some(Value::from("expired")) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "request {id} never expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_follow_approval_removal_expiry_and_the_owner_signature() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let (admin, alice, bob) = (
        broker.profile("admin"),
        broker.profile("alice"),
        broker.profile("bob"),
    );
    let file = |name: &str| tmp.path().join(name);
    cli_ok(&admin, &["topic", "create", "demo.health"])?;

    // The topic owner's key (held by the approver); producers pin its
    // public half. An archive reader is in the directory from the start.
    let (owner, pinned) = (file("owner.key"), file("owner.key.pub"));
    cli_ok(&admin, &["e2e", "owner", "new", s(&owner)])?;
    cli_ok(
        &admin,
        &[
            "e2e",
            "identity",
            "new",
            s(&file("archive.identity")),
            "--recipient",
            "archive",
        ],
    )?;
    let archive_key = public_key(&admin, &file("archive.identity"))?;
    let entry = sign(&admin, &owner, "demo.health", "archive", &archive_key)?;
    cli_ok(&admin, &["recipients", "put", "demo.health", &entry])?;

    // Bob asks for access with his public key.
    let bob_id = file("bob.identity");
    cli_ok(
        &bob,
        &["e2e", "identity", "new", s(&bob_id), "--recipient", BOB],
    )?;
    let asked = json(
        &bob,
        &[
            "access",
            "request",
            "--topic",
            "demo.health",
            "--op",
            "subscribe,describe",
            "--reason",
            "care team",
            "--public-key",
            s(&bob_id),
        ],
    )?;
    let id = asked["id"].as_u64().context("an id")?;
    assert_eq!(asked["public_key"], public_key(&bob, &bob_id)?);

    // Before approval: sealed to the archive only; bob cannot open it.
    let sealed = publish_sealed(&alice, &pinned, "HEALTH-R0-before")?;
    assert!(
        sealed.contains("sealing to 1 recipient(s): archive"),
        "{sealed}"
    );
    let out = read_as(&bob, &bob_id, 0)?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is sealed to recipients archive"),
        "{}",
        text(&out.stderr)
    );

    // An approval must carry the owner's entry for the request's key.
    cli_fails(
        &admin,
        &["access", "approve", &id.to_string()],
        "carries a public key",
    )?;
    let approved = json(
        &admin,
        &[
            "access",
            "approve",
            &id.to_string(),
            "--owner-key",
            s(&owner),
        ],
    )?;
    assert_eq!(approved["state"], "approved");
    assert_eq!(
        directory(&bob, &pinned)?,
        vec![
            ("archive".to_owned(), "verified".to_owned()),
            (BOB.to_owned(), "verified".to_owned())
        ]
    );

    // From then on bob reads what is written; not what came before.
    let sealed = publish_sealed(&alice, &pinned, "HEALTH-R1-after-approval")?;
    assert!(sealed.contains("sealing to 2 recipient(s)"), "{sealed}");
    let out = read_as(&bob, &bob_id, 1)?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        values(&text(&out.stdout))?,
        vec!["HEALTH-R1-after-approval"]
    );

    // Removed: records written afterwards are not sealed to bob.
    cli_ok(&admin, &["recipients", "remove", "demo.health", BOB])?;
    let sealed = publish_sealed(&alice, &pinned, "HEALTH-R2-after-removal")?;
    assert!(
        sealed.contains("sealing to 1 recipient(s): archive"),
        "{sealed}"
    );
    let out = read_as(&bob, &bob_id, 2)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("not one of them"),
        "{}",
        text(&out.stderr)
    );
    let archived = read_as(&bob, &file("archive.identity"), 2)?;
    assert_eq!(
        values(&text(&archived.stdout))?,
        vec!["HEALTH-R2-after-removal"]
    );

    // Approved again with a short TTL: the entry expires with the grant,
    // and maintenance removes both.
    let again = json(
        &bob,
        &[
            "access",
            "request",
            "--topic",
            "demo.health",
            "--op",
            "subscribe",
            "--reason",
            "night shift",
            "--public-key",
            s(&bob_id),
        ],
    )?;
    let id2 = again["id"].as_u64().context("an id")?;
    let approved = json(
        &admin,
        &[
            "access",
            "approve",
            &id2.to_string(),
            "--ttl",
            "2s",
            "--owner-key",
            s(&owner),
        ],
    )?;
    let expires_at = approved["expires_at"].as_i64().context("an expiry")?;
    assert!(directory(&admin, &pinned)?.iter().any(|(r, _)| r == BOB));
    expire(&broker, &bob, id2, expires_at).await?;
    assert_eq!(
        directory(&bob, &pinned)?,
        vec![("archive".to_owned(), "verified".to_owned())]
    );
    let sealed = publish_sealed(&alice, &pinned, "HEALTH-R3-after-expiry")?;
    assert!(
        sealed.contains("sealing to 1 recipient(s): archive"),
        "{sealed}"
    );
    let out = read_as(&bob, &bob_id, 3)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // An entry the owner did not sign: the broker stores it (it cannot
    // tell), producers refuse to seal and name it.
    let other = file("other.key");
    cli_ok(&admin, &["e2e", "owner", "new", s(&other)])?;
    cli_ok(
        &admin,
        &[
            "e2e",
            "identity",
            "new",
            s(&file("mallory.identity")),
            "--recipient",
            "mallory",
        ],
    )?;
    let mallory_key = public_key(&admin, &file("mallory.identity"))?;
    let forged = sign(&admin, &other, "demo.health", "mallory", &mallory_key)?;
    cli_ok(&admin, &["recipients", "put", "demo.health", &forged])?;
    let statuses = directory(&bob, &pinned)?;
    let mallory = statuses
        .iter()
        .find(|(r, _)| r == "mallory")
        .context("listed")?;
    assert!(mallory.1.starts_with("refused"), "{mallory:?}");
    cli_fails(
        &alice,
        &[
            "publish",
            "demo.health",
            "--e2e-recipients",
            "demo.health",
            "--e2e-owner-key",
            s(&pinned),
            "HEALTH-R4-refused",
        ],
        "recipient entry mallory refused",
    )?;

    // What the broker itself checks: a grant holder only, entries that
    // are entries, for this topic, under the id they name.
    cli_fails(
        &alice,
        &["recipients", "put", "demo.health", &entry],
        "not authorized",
    )?;
    let admin_client = connect(&admin).await?;
    let admin_api = admin_client.admin();
    let put = |recipient: &str, bytes: Vec<u8>| {
        admin_api.recipients_put(
            "demo.health",
            RecipientEntry {
                recipient: recipient.to_owned(),
                entry: Bytes::from(bytes),
            },
        )
    };
    let e = put("archive", b"not an entry".to_vec())
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    assert!(e.to_string().contains("malformed"), "{e}");
    let e = put("carol", hex_bytes(&entry)?)
        .await
        .expect_err("stored under another id");
    assert!(e.to_string().contains("names recipient archive"), "{e}");
    let elsewhere = sign(&admin, &owner, "demo.other", "archive", &archive_key)?;
    let e = put("archive", hex_bytes(&elsewhere)?)
        .await
        .expect_err("another topic");
    assert!(e.to_string().contains("signed for topic demo.other"), "{e}");
    admin_client.close().await;

    // The trail has the directory changes of the approvals and the expiry.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let records: Vec<Value> = cli_ok(&admin, &["--json", "audit", "tail"])?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let has = |action: &str, f: &dyn Fn(&Value) -> bool| {
            records
                .iter()
                .any(|r| r["action"] == action && r["resource"] == "topic:demo.health" && f(r))
        };
        let complete = has("recipient.put", &|r| r["details"]["request_id"] == id)
            && has("recipient.put", &|r| r["details"]["recipient"] == "mallory")
            && has("recipient.remove", &|r| r["details"]["reason"] == "removed")
            && has("recipient.remove", &|r| {
                r["details"]["reason"] == "expired" && r["details"]["request_id"] == id2
            })
            && has("access.expire", &|r| r["details"]["request_id"] == id2);
        if complete {
            break;
        }
        if Instant::now() > deadline {
            bail!("the audit trail lacks recipient events:\n{records:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verify = cli(&admin, &["audit", "verify"])?;
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    Ok(())
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .context("hex")
        })
        .collect()
}

/// The broker's structural reading of recipient entries agrees with the
/// client's format: the same fields from entries the client signs, and
/// the same refusals of malformed bytes.
#[test]
fn the_brokers_entry_check_reads_client_entries_alike() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let owner = OwnerKey::create(dir.path().join("owner.key"))?;
    for expires_at in [None, Some(1_772_442_000_000)] {
        let grant = RecipientGrant {
            topic: "demo.health".into(),
            recipient: BOB.into(),
            public_key: RecipientKey::from_bytes([7; 32]),
            created_at: 1_769_850_000_000,
            expires_at,
        };
        let bytes = grant.sign(&owner)?;
        let facts = EntryFacts::parse(&bytes).map_err(anyhow::Error::msg)?;
        assert_eq!(facts.topic, grant.topic);
        assert_eq!(facts.recipient, grant.recipient);
        assert_eq!(&facts.public_key, grant.public_key.as_bytes());
        assert_eq!(facts.created_at, grant.created_at);
        assert_eq!(facts.expires_at, grant.expires_at);
        assert_eq!(&facts.signer, owner.public_key().as_bytes());
        // Every truncation and one extra byte: both refuse.
        for n in 0..bytes.len() {
            let cut = bytes.slice(..n);
            assert!(SignedRecipientEntry::decode(cut.clone()).is_err());
            assert!(EntryFacts::parse(&cut).is_err(), "{n}");
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(SignedRecipientEntry::decode(Bytes::from(long.clone())).is_err());
        assert!(EntryFacts::parse(&long).is_err());
        // Structural bytes: magic, version, key type.
        for at in [0usize, 4, 6] {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x40;
            assert!(SignedRecipientEntry::decode(Bytes::from(bad.clone())).is_err());
            assert!(EntryFacts::parse(&bad).is_err(), "byte {at}");
        }
    }
    Ok(())
}

/// A consumer of `topic` from offset 0 with `transformer`.
async fn reader(
    client: &strongbox_client::Client,
    topic: &str,
    transformer: Option<Arc<dyn ValueTransformer>>,
) -> Result<strongbox_client::Consumer> {
    let mut config = ConsumerConfig::default();
    config.transformer = transformer;
    Ok(client
        .subscribe(Subscription::partition(topic, 0), config)
        .await?)
}

async fn next_item(
    consumer: &mut strongbox_client::Consumer,
) -> Result<Result<strongbox_client::ConsumedRecord, strongbox_client::ClientError>> {
    match tokio::time::timeout(READ_TIMEOUT, consumer.next()).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => bail!("the subscription ended"),
        Err(_) => bail!("nothing within {READ_TIMEOUT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_record_moved_to_another_topic_fails_authentication() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let admin = connect(&broker.profile("admin")).await?;
    for t in ["demo.src", "demo.dst"] {
        admin
            .admin()
            .create_topic(t, strongbox_tests::client::topic(1))
            .await?;
    }
    let alice = connect(&broker.profile("alice")).await?;
    let keys = Keyring::generate("move-key")?;
    let opener: Arc<dyn ValueTransformer> = Arc::new(
        E2eOpener::new(UnreadablePolicy::Fail).with_keyring(keys.export("move-key", None)?),
    );

    // Sealed by a producer with the keyring.
    let mut sealing = ProducerConfig::default();
    sealing.transformer = Some(Arc::new(E2eSealer::keyring(keys, None)?));
    let producer = alice.producer(sealing).await?;
    producer
        .send_and_wait(
            ProducerRecord::new("demo.src", "MOVE-PLAINTEXT")
                .key("k1")
                .partition(0),
        )
        .await?;
    producer.close().await?;

    // Captured as stored: value and headers, sealed.
    let mut raw = reader(&alice, "demo.src", None).await?;
    let captured = read_n(&mut raw, 1).await?.remove(0);
    assert!(captured.header("strongbox-e2e").is_some());
    assert!(!contains(&captured.value, b"MOVE-PLAINTEXT"));
    drop(raw);

    // Re-published byte for byte by a plain producer: to another topic,
    // and to the same topic under another record key.
    let plain = alice.producer(ProducerConfig::default()).await?;
    let copy = |topic: &str, key: &'static str| {
        let mut record = ProducerRecord::new(topic, captured.value.clone())
            .key(key)
            .partition(0);
        for (name, value) in &captured.headers {
            record = record.header(name.clone(), value.clone());
        }
        record
    };
    plain.send_and_wait(copy("demo.dst", "k1")).await?;
    plain.send_and_wait(copy("demo.src", "k2")).await?;
    plain.close().await?;

    // The original opens; the moved copies do not, each with an error
    // naming the key.
    let mut src = reader(&alice, "demo.src", Some(opener.clone())).await?;
    let first = next_item(&mut src).await??;
    assert_eq!(&first.value[..], b"MOVE-PLAINTEXT");
    let rekeyed = next_item(&mut src).await?.expect_err("another record key");
    let message = rekeyed.to_string();
    assert!(
        message.contains("failed authentication") && message.contains("move-key v1"),
        "{message}"
    );
    let mut dst = reader(&alice, "demo.dst", Some(opener)).await?;
    let moved = next_item(&mut dst).await?.expect_err("another topic");
    let message = moved.to_string();
    assert!(
        message.contains("move-key v1") && message.contains("does not open this record's data key"),
        "{message}"
    );
    assert!(!message.contains("MOVE-PLAINTEXT"));
    alice.close().await;
    admin.close().await;
    Ok(())
}
