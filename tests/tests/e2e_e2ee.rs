//! End-to-end payload encryption against a real broker: what the broker
//! stores (seen offline with `strongbox-broker inspect` and in the raw
//! files) is ciphertext only; readers open values with the right key and
//! get a per-record error naming the key without it, across keyring
//! rotations; the broker's check of recipient entries reads the client's
//! format alike; and a sealed record moved to another topic (or another
//! record key) no longer authenticates. HPKE recipients added by access
//! approval are tested in `e2e_recipients.rs`.

use std::process::{Command, Output};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use strongbox_broker::services::access::recipients::EntryFacts;
use strongbox_client::e2e::{
    E2eOpener, E2eSealer, Keyring, OwnerKey, RecipientGrant, RecipientKey, SignedRecipientEntry,
    UnreadablePolicy,
};
use strongbox_client::{ConsumerConfig, ProducerConfig, ProducerRecord, Subscription, ValueOpener};
use strongbox_tests::cli_checks::{cli_fails, cli_ok, json_values, path_arg, text};
use strongbox_tests::client::{READ_TIMEOUT, connect, read_n};
use strongbox_tests::{BrokerProcess, binary, contains, files_under};

const BOB: &str = "spiffe://strongbox.dev/bob";

/// `strongbox-broker inspect` with `args`.
fn inspect(args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary("strongbox-broker"))
        .arg("inspect")
        .args(args)
        .output()?)
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
    cli_ok(
        &alice,
        &["keyring", "new", path_arg(&keys), "--id", "vault-key"],
    )?;

    // One record under each of four key versions (three rotations).
    for version in 1..=4 {
        if version > 1 {
            cli_ok(&alice, &["keyring", "rotate", path_arg(&keys)])?;
        }
        let value = format!("VAULT-PLAINTEXT-v{version}");
        cli_ok(
            &alice,
            &[
                "publish",
                "demo.vault",
                "--e2e-keyring",
                path_arg(&keys),
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
            path_arg(&keys),
            "--id",
            "vault-key",
            "--out",
            path_arg(&reader),
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
            path_arg(&reader),
        ],
    )?;
    assert_eq!(
        json_values(&out)?,
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
            path_arg(&keys),
            "--id",
            "vault-key",
            "--version",
            "1",
            "--out",
            path_arg(&old),
        ],
    )?;
    cli_fails(
        &bob,
        1,
        &[
            "subscribe",
            "demo.vault",
            "--count",
            "4",
            "--e2e-keyring",
            path_arg(&old),
        ],
        "e2e key vault-key v2 is not in the keyring",
    )?;
    // Without any key, what bob gets is the ciphertext.
    let raw = cli_ok(&bob, &["subscribe", "demo.vault", "--count", "4"])?;
    assert!(!raw.contains("VAULT-PLAINTEXT"), "{raw}");

    // Offline inspection refuses while the broker runs.
    let data = dev.join("data");
    let running = inspect(&["--data-dir", path_arg(&data), "--topic", "demo.vault"])?;
    assert_eq!(running.status.code(), Some(1));
    assert!(
        text(&running.stderr).contains("a broker is running"),
        "{}",
        text(&running.stderr)
    );

    // After a graceful stop: the at-rest layer decrypted shows ciphertext.
    assert_eq!(broker.terminate()?, Some(0));
    let out = inspect(&[
        "--data-dir",
        path_arg(&data),
        "--topic",
        "demo.vault",
        "--json",
    ])?;
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
    let text_form = inspect(&["--data-dir", path_arg(&data), "--topic", "demo.vault"])?;
    assert!(text_form.status.success());
    assert!(!text(&text_form.stdout).contains("VAULT-PLAINTEXT"));
    assert_eq!(text(&text_form.stdout).lines().count(), 4);
    let one = inspect(&[
        "--data-dir",
        path_arg(&data),
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
    let control = inspect(&["--data-dir", path_arg(&data), "--topic", "demo.greetings"])?;
    assert!(
        text(&control.stdout).contains("PLAIN-CONTROL-MARKER"),
        "{}{}",
        text(&control.stdout),
        text(&control.stderr)
    );
    let missing = inspect(&["--data-dir", path_arg(&data), "--topic", "demo.none"])?;
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

/// A consumer of `topic` from offset 0 with `opener`.
async fn reader(
    client: &strongbox_client::Client,
    topic: &str,
    opener: Option<Arc<dyn ValueOpener>>,
) -> Result<strongbox_client::Consumer> {
    let config = ConsumerConfig {
        opener,
        ..ConsumerConfig::default()
    };
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
    let opener: Arc<dyn ValueOpener> = Arc::new(
        E2eOpener::new(UnreadablePolicy::Fail).with_keyring(keys.export("move-key", None)?),
    );

    // Sealed by a producer with the keyring.
    let sealing = ProducerConfig {
        sealer: Some(Arc::new(E2eSealer::keyring(keys, None)?)),
        ..ProducerConfig::default()
    };
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
