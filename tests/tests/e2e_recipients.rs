//! HPKE recipients of a topic against a real broker: a recipient added by
//! an access approval (the approver signs its entry with the topic owner's
//! key) reads what is written from then on; a removed or expired one
//! cannot read records written afterwards; an entry not signed by the
//! owner key the producer pinned stops the producer, naming the entry; and
//! the broker refuses entries that are malformed, for another topic, or
//! stored under another recipient id, from principals without `grant`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use serde_json::Value;
use strongbox_client::ErrorCode;
use strongbox_client::protocol::model::RecipientEntry;
use strongbox_tests::access::expire_request;
use strongbox_tests::cli_checks::{cli_fails, cli_json, cli_ok, json_values, path_arg, text};
use strongbox_tests::client::connect;
use strongbox_tests::{BrokerProcess, START_TIMEOUT, cli};

const BOB: &str = "spiffe://strongbox.dev/bob";

/// Signs an entry for `topic`/`recipient`/`key` with the owner key file.
fn sign(profile: &Path, owner: &Path, topic: &str, recipient: &str, key: &str) -> Result<String> {
    Ok(cli_ok(
        profile,
        &[
            "e2e",
            "recipient",
            "sign",
            "--owner-key",
            path_arg(owner),
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
    let v = cli_json(profile, &["e2e", "identity", "show", path_arg(identity)])?;
    v["public_key"]
        .as_str()
        .map(str::to_owned)
        .context("a public key")
}

/// The recipients the directory lists, with their verification status.
fn directory(profile: &Path, pinned: &Path) -> Result<Vec<(String, String)>> {
    let list = cli_json(
        profile,
        &[
            "recipients",
            "list",
            "demo.health",
            "--owner-key",
            path_arg(pinned),
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
            path_arg(pinned),
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
            path_arg(identity),
        ],
    )
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
    cli_ok(&admin, &["e2e", "owner", "new", path_arg(&owner)])?;
    cli_ok(
        &admin,
        &[
            "e2e",
            "identity",
            "new",
            path_arg(&file("archive.identity")),
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
        &[
            "e2e",
            "identity",
            "new",
            path_arg(&bob_id),
            "--recipient",
            BOB,
        ],
    )?;
    let asked = cli_json(
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
            path_arg(&bob_id),
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
        1,
        &["access", "approve", &id.to_string()],
        "carries a public key",
    )?;
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
        json_values(&text(&out.stdout))?,
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
        json_values(&text(&archived.stdout))?,
        vec!["HEALTH-R2-after-removal"]
    );

    // Approved again with a short TTL: the entry expires with the grant,
    // and maintenance removes both.
    let again = cli_json(
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
            path_arg(&bob_id),
        ],
    )?;
    let id2 = again["id"].as_u64().context("an id")?;
    let approved = cli_json(
        &admin,
        &[
            "access",
            "approve",
            &id2.to_string(),
            "--ttl",
            "2s",
            "--owner-key",
            path_arg(&owner),
        ],
    )?;
    let expires_at = approved["expires_at"].as_i64().context("an expiry")?;
    assert!(directory(&admin, &pinned)?.iter().any(|(r, _)| r == BOB));
    expire_request(&broker, &bob, id2, expires_at).await?;
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
    cli_ok(&admin, &["e2e", "owner", "new", path_arg(&other)])?;
    cli_ok(
        &admin,
        &[
            "e2e",
            "identity",
            "new",
            path_arg(&file("mallory.identity")),
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
        1,
        &[
            "publish",
            "demo.health",
            "--e2e-recipients",
            "demo.health",
            "--e2e-owner-key",
            path_arg(&pinned),
            "HEALTH-R4-refused",
        ],
        "recipient entry mallory refused",
    )?;

    // What the broker itself checks: a grant holder only, entries that
    // are entries, for this topic, under the id they name.
    cli_fails(
        &alice,
        1,
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
