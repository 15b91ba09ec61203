//! The access request flow against a real broker with real certificates:
//! bob asks for `subscribe` on a topic he cannot read, alice (no `grant`)
//! cannot approve it, the admin (superuser, so `grant` everywhere) does,
//! bob reads on the connection he already had open, the grant expires
//! (short TTL, maintenance triggered with SIGHUP) and bob is refused again.
//! Denials, double decisions and bad requests are refused with the right
//! codes, and every step is in an `audit verify`-clean audit trail.
//!
//! Approvals of requests with a public key (end-to-end recipients) are
//! tested in `e2e_recipients.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use strongbox_client::{ConsumerConfig, ErrorCode, Subscription};
use strongbox_tests::access::{expire_request, listed_request};
use strongbox_tests::cli_checks::{cli_fails, cli_json, cli_ok, text};
use strongbox_tests::client::{connect, read_n};
use strongbox_tests::{BrokerProcess, START_TIMEOUT, cli};

const BOB: &str = "spiffe://strongbox.dev/bob";
const ALICE: &str = "spiffe://strongbox.dev/alice";
const ADMIN: &str = "spiffe://strongbox.dev/admin";
const TOPIC: &str = "ledger.secret";

/// Long enough for bob to read on his open connection, short enough to
/// wait out: the only wait in this file.
const TTL_SECS: u64 = 20;

/// Every audit record, as `audit tail --json` prints them.
fn audit_records(admin: &Path) -> Result<Vec<Value>> {
    cli_ok(admin, &["--json", "audit", "tail"])?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Polls the trail (written in the background) until every `wanted`
/// (action, principal, outcome) is there, for request `id`.
async fn wait_for_audit(admin: &Path, id: u64, wanted: &[(&str, &str, &str)]) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let records = audit_records(admin)?;
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(action, principal, outcome)| {
                !records.iter().any(|r| {
                    r["action"] == *action
                        && r["principal"] == *principal
                        && r["outcome"] == *outcome
                        && r["resource"] == format!("topic:{TOPIC}")
                        && r["details"]["request_id"] == id
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the audit trail lacks {missing:?} for request {id}; it holds:\n{}",
                records
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_approve_read_expire_with_real_certificates() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let (admin, alice, bob) = (
        broker.profile("admin"),
        broker.profile("alice"),
        broker.profile("bob"),
    );
    cli_ok(&admin, &["topic", "create", TOPIC])?;
    cli_ok(&admin, &["publish", TOPIC, "entry-1", "entry-2"])?;

    // Bob's connection, open for the whole test.
    let bob_client = connect(&bob).await?;
    let subscribe =
        || bob_client.subscribe(Subscription::partition(TOPIC, 0), ConsumerConfig::default());
    let refused = subscribe().await.expect_err("bob may not read yet");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthorized), "{refused}");

    // Bad requests are refused by the broker (exit 1) or by the CLI (2).
    cli_fails(
        &bob,
        1,
        &[
            "access",
            "request",
            "--topic",
            "ledger.none",
            "--op",
            "subscribe",
            "--reason",
            "x",
        ],
        "topic ledger.none does not exist",
    )?;
    cli_fails(
        &bob,
        1,
        &[
            "access",
            "request",
            "--topic",
            TOPIC,
            "--op",
            "subscribe,grant",
            "--reason",
            "x",
        ],
        "access requests are for publish, subscribe and describe",
    )?;
    cli_fails(
        &bob,
        1,
        &[
            "access",
            "request",
            "--topic",
            TOPIC,
            "--op",
            "subscribe",
            "--reason",
            "   ",
        ],
        "a reason is required",
    )?;
    cli_fails(
        &bob,
        1,
        &[
            "access",
            "request",
            "--topic",
            "_audit",
            "--op",
            "subscribe",
            "--reason",
            "x",
        ],
        "internal topic",
    )?;
    cli_fails(
        &bob,
        2,
        &["access", "request", "--topic", TOPIC, "--op", "subscribe"],
        "--reason",
    )?;

    // The request.
    let request = cli_json(
        &bob,
        &[
            "access",
            "request",
            "--topic",
            TOPIC,
            "--op",
            "subscribe",
            "--reason",
            "INC-4711 on call",
        ],
    )?;
    let id = request["id"].as_u64().context("an id")?;
    assert_eq!(request["state"], "pending");
    assert_eq!(request["requester"], BOB);
    assert_eq!(request["reason"], "INC-4711 on call");
    cli_fails(
        &bob,
        1,
        &[
            "access",
            "request",
            "--topic",
            TOPIC,
            "--op",
            "subscribe",
            "--reason",
            "again",
        ],
        &format!("access request {id} for subscribe on {TOPIC} is already pending"),
    )?;
    // Bob sees his own request, the admin sees it (grant), alice does not.
    assert!(listed_request(&bob, id)?.is_some());
    assert!(listed_request(&admin, id)?.is_some());
    assert!(
        listed_request(&alice, id)?.is_none(),
        "alice holds no grant on {TOPIC}"
    );
    let table = cli_ok(&admin, &["access", "list", "--pending"])?;
    assert!(
        table.starts_with("ID") && table.contains("INC-4711 on call"),
        "{table}"
    );

    // Alice may not decide; the request stays pending.
    let out = cli_fails(
        &alice,
        1,
        &["access", "approve", &id.to_string(), "--ttl", "1h"],
        &format!("not authorized: {ALICE} may not grant {TOPIC}"),
    )?;
    assert!(out.stdout.is_empty());
    cli_fails(
        &alice,
        1,
        &["access", "deny", &id.to_string(), "--reason", "no"],
        "not authorized",
    )?;
    assert_eq!(
        listed_request(&admin, id)?.context("listed")?["state"],
        "pending"
    );

    // The admin approves with a TTL: bob reads on his open connection.
    let approved = cli_json(
        &admin,
        &[
            "access",
            "approve",
            &id.to_string(),
            "--ttl",
            &format!("{TTL_SECS}s"),
        ],
    )?;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], ADMIN);
    let expires_at = approved["expires_at"].as_i64().context("an expiry")?;
    let mut consumer = subscribe().await?;
    let records = read_n(&mut consumer, 2).await?;
    assert_eq!(&records[0].value[..], b"entry-1");
    assert_eq!(&records[1].value[..], b"entry-2");
    drop(consumer);
    assert!(bob_client.is_connected(), "the same connection all along");
    let rules = cli_json(
        &admin,
        &["acl", "list", "--principal", BOB, "--topic", TOPIC],
    )?;
    assert_eq!(rules[0]["operations"], serde_json::json!(["subscribe"]));
    assert_eq!(rules[0]["expires_at"], expires_at);

    // Decided once.
    cli_fails(
        &admin,
        1,
        &["access", "approve", &id.to_string()],
        &format!("access request {id} is already approved (decided by {ADMIN})"),
    )?;
    cli_fails(
        &admin,
        1,
        &[
            "access",
            "deny",
            &id.to_string(),
            "--reason",
            "changed my mind",
        ],
        "is already approved",
    )?;

    // Expiry: once the TTL is over, a maintenance pass (SIGHUP runs one)
    // removes the rule and marks the request expired.
    expire_request(&broker, &bob, id, expires_at).await?;
    let refused = subscribe().await.expect_err("the grant expired");
    assert_eq!(refused.code(), Some(ErrorCode::NotAuthorized), "{refused}");
    cli_fails(
        &bob,
        1,
        &["subscribe", TOPIC, "--count", "1"],
        // The CLI describes the topic first.
        &format!("not authorized: {BOB} may not describe {TOPIC}"),
    )?;
    let rules = cli_json(
        &admin,
        &["acl", "list", "--principal", BOB, "--topic", TOPIC],
    )?;
    assert_eq!(rules, serde_json::json!([]), "the rule is gone");

    // A denial needs a reason; it is shown to the requester; a denied
    // request cannot be approved.
    let second = cli_json(
        &bob,
        &[
            "access",
            "request",
            "--topic",
            TOPIC,
            "--op",
            "describe",
            "--reason",
            "dashboards",
        ],
    )?;
    let id2 = second["id"].as_u64().context("an id")?;
    cli_fails(&admin, 2, &["access", "deny", &id2.to_string()], "--reason")?;
    let denied = cli_json(
        &admin,
        &[
            "access",
            "deny",
            &id2.to_string(),
            "--reason",
            "use ledger.summary",
        ],
    )?;
    assert_eq!(denied["state"], "denied");
    let seen = listed_request(&bob, id2)?.context("bob sees it")?;
    assert_eq!(seen["decision_reason"], "use ledger.summary");
    cli_fails(
        &admin,
        1,
        &["access", "approve", &id2.to_string()],
        "is already denied",
    )?;
    cli_fails(
        &admin,
        1,
        &["access", "approve", "999999"],
        "does not exist",
    )?;

    // Every step is in the trail, and the trail verifies.
    wait_for_audit(
        &admin,
        id,
        &[
            ("access.request", BOB, "success"),
            ("access.approve", ALICE, "denied"),
            ("access.deny", ALICE, "denied"),
            ("access.approve", ADMIN, "success"),
            ("access.expire", "broker", "success"),
        ],
    )
    .await?;
    wait_for_audit(
        &admin,
        id2,
        &[
            ("access.request", BOB, "success"),
            ("access.deny", ADMIN, "success"),
        ],
    )
    .await?;
    let records = audit_records(&admin)?;
    assert!(
        records.iter().any(|r| r["action"] == "acl.deny"
            && r["principal"] == ALICE
            && r["details"]["operation"] == "grant"),
        "alice's failed grant check is an acl.deny record"
    );
    let approve = records
        .iter()
        .find(|r| r["action"] == "access.approve" && r["outcome"] == "success")
        .context("approve record")?;
    assert_eq!(approve["details"]["requester"], BOB);
    assert_eq!(approve["details"]["expires_at"], expires_at);
    let verify = cli(&admin, &["audit", "verify"])?;
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
    bob_client.close().await;
    Ok(())
}

/// How long after a grant's end its audit record may appear: the broker
/// wakes for it, rather than at its next maintenance pass (30 s apart).
const EXPIRY_RECORDED_WITHIN: Duration = Duration::from_secs(15);

/// Polls the trail, without nudging the broker, until a record matches
/// `pred`; fails once `deadline` is past.
async fn audited_by(
    admin: &Path,
    what: &str,
    deadline: Instant,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    loop {
        if let Some(r) = audit_records(admin)?.into_iter().find(|r| pred(r)) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!(
                "no {what} in the audit trail within {EXPIRY_RECORDED_WITHIN:?} of the expiry:\n{}",
                audit_records(admin)?
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A grant that ends is audited when it ends, with no signal to the
/// broker: an approved request's `access.expire` and `acl.expire`, and the
/// `acl.expire` of a config-file rule whose `expires_at` passes while the
/// broker runs (the rule stays in the file; it stops applying).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_audited_when_they_expire() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    strongbox_broker::dev::ensure_dev_dir(&dir, "127.0.0.1:0".parse()?)?;
    let config_expiry = std::time::SystemTime::now() + Duration::from_secs(6);
    let config = dir.join("broker.toml");
    let mut toml = std::fs::read_to_string(&config)?;
    toml.push_str(&format!(
        "\n[[acl.rules]]\nprincipal = \"{BOB}\"\ntopic = \"ledger.config\"\n\
         operations = [\"describe\"]\neffect = \"allow\"\nexpires_at = \"{}\"\n",
        humantime::format_rfc3339_millis(config_expiry)
    ));
    std::fs::write(&config, toml)?;
    let broker = BrokerProcess::start_dev(&dir)?;
    let (admin, bob) = (broker.profile("admin"), broker.profile("bob"));
    cli_ok(&admin, &["topic", "create", TOPIC])?;

    let request = cli_json(
        &bob,
        &[
            "access", "request", "--topic", TOPIC, "--op", "describe", "--reason", "short",
        ],
    )?;
    let id = request["id"].as_u64().context("an id")?;
    let approved = cli_json(
        &admin,
        &["access", "approve", &id.to_string(), "--ttl", "3s"],
    )?;
    let expires_at = approved["expires_at"].as_i64().context("an expiry")?;
    let ends = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(expires_at)?);
    let deadline = Instant::now()
        + ends
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
        + EXPIRY_RECORDED_WITHIN;
    let expired = audited_by(&admin, "access.expire", deadline, |r| {
        r["action"] == "access.expire" && r["details"]["request_id"] == id
    })
    .await?;
    assert_eq!(expired["principal"], "broker");
    audited_by(&admin, "acl.expire of the approved rule", deadline, |r| {
        r["action"] == "acl.expire"
            && r["details"]["rule_principal"] == BOB
            && r["details"]["expires_at"] == expires_at
    })
    .await?;
    assert_eq!(
        listed_request(&bob, id)?.context("listed")?["state"],
        "expired"
    );

    let deadline = Instant::now()
        + config_expiry
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
        + EXPIRY_RECORDED_WITHIN;
    let config_rule = audited_by(&admin, "acl.expire of the config rule", deadline, |r| {
        r["action"] == "acl.expire" && r["details"]["source"] == "config"
    })
    .await?;
    assert_eq!(config_rule["resource"], "topic:ledger.config");
    assert_eq!(config_rule["details"]["rule_principal"], BOB);
    let verify = cli(&admin, &["audit", "verify"])?;
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    Ok(())
}
