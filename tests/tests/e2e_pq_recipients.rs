//! Post-quantum end-to-end recipients against a real broker: an X-Wing
//! (X25519 + ML-KEM-768) identity made by `strongbox e2e identity new --kem
//! x-wing` is signed into a topic's recipient directory next to an X25519
//! one, producers seal each record to both (a version 2 header, one KEM per
//! recipient), and each reader opens it with its own key; records sealed
//! before, to X25519 recipients only, keep their version 1 header and stay
//! readable; an X-Wing key travels through an access request and its
//! approval like an X25519 one.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use strongbox_client::{ConsumerConfig, Subscription};
use strongbox_tests::cli_checks::{cli_json, cli_ok, json_values, path_arg, text};
use strongbox_tests::client::{connect, read_n};
use strongbox_tests::{BrokerProcess, cli};

const TOPIC: &str = "demo.pq";
const BOB: &str = "spiffe://strongbox.dev/bob";

fn new_identity(profile: &Path, file: &Path, recipient: &str, kem: &str) -> Result<String> {
    let v = cli_json(
        profile,
        &[
            "e2e",
            "identity",
            "new",
            path_arg(file),
            "--recipient",
            recipient,
            "--kem",
            kem,
        ],
    )?;
    assert_eq!(v["kem"], kem, "{v}");
    v["public_key"]
        .as_str()
        .map(str::to_owned)
        .context("a public key")
}

fn put_entry(admin: &Path, owner: &Path, recipient: &str, key: &str) -> Result<()> {
    let entry = cli_ok(
        admin,
        &[
            "e2e",
            "recipient",
            "sign",
            "--owner-key",
            path_arg(owner),
            "--topic",
            TOPIC,
            "--recipient",
            recipient,
            "--public-key",
            key,
        ],
    )?;
    cli_ok(admin, &["recipients", "put", TOPIC, entry.trim()])?;
    Ok(())
}

fn publish_sealed(alice: &Path, pinned: &Path, value: &str) -> Result<String> {
    let out = cli(
        alice,
        &[
            "publish",
            TOPIC,
            "--e2e-recipients",
            TOPIC,
            "--e2e-owner-key",
            path_arg(pinned),
            value,
        ],
    )?;
    ensure!(out.status.success(), "publish: {}", text(&out.stderr));
    Ok(text(&out.stderr))
}

fn read_as(profile: &Path, identity: &Path, at: u64) -> Result<Output> {
    cli(
        profile,
        &[
            "--json",
            "subscribe",
            TOPIC,
            "--from",
            &at.to_string(),
            "--count",
            "1",
            "--e2e-identity",
            path_arg(identity),
        ],
    )
}

fn reads(profile: &Path, identity: &Path, at: u64) -> Result<String> {
    let out = read_as(profile, identity, at)?;
    ensure!(out.status.success(), "read {at}: {}", text(&out.stderr));
    let values = json_values(&text(&out.stdout))?;
    values.into_iter().next().context("one value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_wing_and_x25519_recipients_share_a_topic() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let (admin, alice, bob) = (
        broker.profile("admin"),
        broker.profile("alice"),
        broker.profile("bob"),
    );
    let file = |name: &str| tmp.path().join(name);
    cli_ok(&admin, &["topic", "create", TOPIC])?;
    let (owner, pinned) = (file("owner.key"), file("owner.key.pub"));
    cli_ok(&admin, &["e2e", "owner", "new", path_arg(&owner)])?;

    // An X25519 archive reader first: records keep the version 1 header.
    let archive_id = file("archive.identity");
    let archive_key = new_identity(&admin, &archive_id, "archive", "x25519")?;
    assert_eq!(archive_key.len(), 64, "X25519 keys print as before");
    put_entry(&admin, &owner, "archive", &archive_key)?;
    let sealed = publish_sealed(&alice, &pinned, "PQ-R0-classical")?;
    assert!(
        sealed.contains("sealing to 1 recipient(s): archive"),
        "{sealed}"
    );

    // Bob reads with an X-Wing key pair; its entry is signed from the
    // identity file (the key is too long to be worth typing).
    let bob_id = file("bob.identity");
    let bob_key = new_identity(&bob, &bob_id, BOB, "x-wing")?;
    assert!(bob_key.starts_with("x-wing:") && bob_key.len() == 7 + 2432);
    put_entry(&admin, &owner, BOB, path_arg(&bob_id))?;
    let listed = cli_json(
        &admin,
        &[
            "recipients",
            "list",
            TOPIC,
            "--owner-key",
            path_arg(&pinned),
        ],
    )?;
    let statuses: Vec<(String, String)> = listed
        .as_array()
        .context("a list")?
        .iter()
        .map(|e| {
            (
                e["recipient"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("archive".to_owned(), "verified".to_owned()),
            (BOB.to_owned(), "verified".to_owned())
        ]
    );

    let sealed = publish_sealed(&alice, &pinned, "PQ-R1-mixed")?;
    assert!(sealed.contains("sealing to 2 recipient(s)"), "{sealed}");

    // Each reader opens the mixed record with its own kind of key.
    assert_eq!(reads(&bob, &bob_id, 1)?, "PQ-R1-mixed");
    assert_eq!(reads(&admin, &archive_id, 1)?, "PQ-R1-mixed");
    // The record from before stays readable to its X25519 recipient, and
    // not to bob, who was not one.
    assert_eq!(reads(&admin, &archive_id, 0)?, "PQ-R0-classical");
    let out = read_as(&bob, &bob_id, 0)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("is sealed to recipients archive"),
        "{}",
        text(&out.stderr)
    );

    // On the wire: version 1 for the X25519-only record, version 2 (a KEM
    // id per recipient, X-Wing's 1120-byte encapsulated key) for the mixed
    // one. The broker stored both as opaque bytes.
    let client = connect(&admin).await?;
    let mut consumer = client
        .subscribe(Subscription::partition(TOPIC, 0), ConsumerConfig::default())
        .await?;
    let records = read_n(&mut consumer, 2).await?;
    consumer.close().await;
    client.close().await;
    let header = |i: usize| -> Result<Vec<u8>> {
        records[i]
            .headers
            .iter()
            .find(|(n, _)| n == "strongbox-e2e")
            .map(|(_, v)| v.to_vec())
            .context("an e2e header")
    };
    let (v1, v2) = (header(0)?, header(1)?);
    assert_eq!(v1[0], 1, "X25519-only: version 1");
    assert_eq!(v2[0], 2, "with an X-Wing recipient: version 2");
    assert!(v2.len() > 1120 + 32, "{} bytes", v2.len());
    assert!(
        v2.windows(2).any(|w| w == [0x64, 0x7a]),
        "the X-Wing KEM id is in the header"
    );
    assert!(!records[1].value.windows(11).any(|w| w == b"PQ-R1-mixed"));
    Ok(())
}

#[test]
fn an_x_wing_key_goes_through_an_access_request_and_approval() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let (admin, alice, bob) = (
        broker.profile("admin"),
        broker.profile("alice"),
        broker.profile("bob"),
    );
    let file = |name: &str| tmp.path().join(name);
    cli_ok(&admin, &["topic", "create", TOPIC])?;
    let (owner, pinned) = (file("owner.key"), file("owner.key.pub"));
    cli_ok(&admin, &["e2e", "owner", "new", path_arg(&owner)])?;

    let bob_id = file("bob.identity");
    let bob_key = new_identity(&bob, &bob_id, BOB, "x-wing")?;
    let asked = cli_json(
        &bob,
        &[
            "access",
            "request",
            "--topic",
            TOPIC,
            "--op",
            "subscribe",
            "--reason",
            "post-quantum reader",
            "--public-key",
            path_arg(&bob_id),
        ],
    )?;
    let id = asked["id"].as_u64().context("an id")?;
    // The request carries the whole 1216-byte key.
    let carried = asked["public_key"].as_str().context("a key")?;
    assert_eq!(format!("x-wing:{carried}"), bob_key);
    let approved = cli_json(
        &admin,
        &[
            "access",
            "approve",
            &id.to_string(),
            "--owner-key",
            path_arg(&owner),
        ],
    )?;
    assert_eq!(approved["state"], "approved");
    let sealed = publish_sealed(&alice, &pinned, "PQ-approved")?;
    assert!(sealed.contains(BOB), "{sealed}");
    assert_eq!(reads(&bob, &bob_id, 0)?, "PQ-approved");
    Ok(())
}
