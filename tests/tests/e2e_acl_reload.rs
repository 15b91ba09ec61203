//! ACL changes an operator makes take effect at once:
//!
//! - an edit of the config file's `[[acl.rules]]` applies on `SIGHUP`, to a
//!   connection already open and to new ones, and `acl list` shows it; a
//!   file that does not validate changes nothing, and the log says why;
//!   other changed sections are named as needing a restart;
//! - `acl revoke --op` takes operations out of a runtime rule (deleting it
//!   when none remain), and refuses a config rule, saying to edit the file.

use std::process::Output;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use strongbox_client::ErrorCode;
use strongbox_client::protocol::batch::BatchBuilder;
use strongbox_client::protocol::frame::Frame;
use strongbox_client::protocol::frames::produce::Produce;
use strongbox_tests::raw::{self, FrameStream};
use strongbox_tests::{BrokerProcess, Signal, cli};

const ALICE: &str = "spiffe://strongbox.dev/alice";
const BOB: &str = "spiffe://strongbox.dev/bob";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Exit `code` with `reason` on stderr.
fn fails(out: &Output, code: i32, reason: &str) -> Result<()> {
    let err = text(&out.stderr);
    ensure!(
        out.status.code() == Some(code) && err.contains(reason),
        "expected exit {code} with {reason:?}; got {:?}: {err}",
        out.status.code()
    );
    Ok(())
}

/// The code answering `Produce` number `id` on `stream`: 0 for an ack.
async fn produce_on(stream: &mut FrameStream, id: u64, topic: &str) -> Result<u16> {
    let mut batch = BatchBuilder::new(1_700_000_000_000);
    batch.push(1_700_000_000_000, None, &[], format!("raw-{id}").as_bytes())?;
    stream
        .send(&Frame::Produce(Produce {
            correlation_id: id,
            topic: topic.into(),
            partition: 0,
            batch: batch.finish()?,
        }))
        .await?;
    match stream.next().await {
        Ok(Frame::ProduceAck(ack)) if ack.correlation_id == id => Ok(0),
        Ok(Frame::Error(e)) if e.correlation_id == id => Ok(e.code),
        other => bail!("answer to Produce {id}: {other:?}"),
    }
}

/// The operations of `principal`'s rules on `topic`, as `acl list` shows
/// them.
fn listed_operations(admin: &std::path::Path, principal: &str, topic: &str) -> Result<Vec<Value>> {
    let out = ok(&cli(
        admin,
        &[
            "--json",
            "acl",
            "list",
            "--principal",
            principal,
            "--topic",
            topic,
        ],
    )?)?;
    let rules: Value = serde_json::from_str(out.trim()).context("acl list --json")?;
    Ok(rules
        .as_array()
        .context("an array")?
        .iter()
        .map(|r| r["operations"].clone())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_config_files_acl_rules() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let admin = broker.profile("admin");
    let refused = ErrorCode::NotAuthorized.as_u16();

    // Alice publishes on a connection she keeps open throughout.
    let conn = raw::connect(broker.addr, raw::profile_config(&dir, "alice")?).await?;
    let (_control, _) = raw::handshake(&conn).await?;
    let mut stream = FrameStream::open(&conn).await?;
    assert_eq!(produce_on(&mut stream, 1, "demo.greetings").await?, 0);

    // The operator takes `publish` out of her rule in the file.
    let config = dir.join("broker.toml");
    let before = std::fs::read_to_string(&config)?;
    let all = "operations = [\"publish\", \"subscribe\", \"describe\"]";
    ensure!(before.contains(all), "the generated rule: {before}");
    std::fs::write(
        &config,
        before.replacen(all, "operations = [\"subscribe\", \"describe\"]", 1),
    )?;
    broker.signal(Signal::SIGHUP)?;
    broker
        .wait_for_log("ACL reloaded from the config file", 1)
        .await?;

    // On the open connection, on the same stream...
    assert_eq!(produce_on(&mut stream, 2, "demo.greetings").await?, refused);
    assert!(conn.close_reason().is_none(), "the connection stays open");
    // ...on a new one...
    fails(
        &cli(
            &broker.profile("alice"),
            &["publish", "demo.greetings", "x"],
        )?,
        1,
        // With publish on no topic left, alice cannot even obtain a
        // producer id.
        &format!("not authorized: {ALICE} may not publish to any topic"),
    )?;
    // ...and `acl list` shows the rule as the file now has it.
    assert_eq!(
        listed_operations(&admin, ALICE, "demo.*")?,
        [serde_json::json!(["subscribe", "describe"])]
    );
    // What the rule still grants works.
    ok(&cli(
        &broker.profile("alice"),
        &["topic", "describe", "demo.greetings"],
    )?)?;

    // A file that does not validate changes nothing; the log names the
    // field.
    let edited = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        edited.replacen(
            "operations = [\"subscribe\", \"describe\"]",
            "operations = [\"subscribe\", \"fly\"]",
            1,
        ),
    )?;
    broker.signal(Signal::SIGHUP)?;
    broker.wait_for_log("config reload failed", 1).await?;
    let log = broker.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("config reload failed"))
        .context("the failure line")?;
    ensure!(
        line.contains("acl.rules[0].operations") && line.contains("\"fly\""),
        "the reason names the field: {line}"
    );
    ensure!(
        line.contains("keeping the previous ACL rules"),
        "and says what stays: {line}"
    );
    assert_eq!(
        listed_operations(&admin, ALICE, "demo.*")?,
        [serde_json::json!(["subscribe", "describe"])],
        "the rules in force stay"
    );

    // Fixed, with a change only a restart applies: the ACL reloads and the
    // log names the section that waits for the restart.
    std::fs::write(&config, format!("{edited}\n[log]\nlevel = \"debug\"\n"))?;
    broker.signal(Signal::SIGHUP)?;
    broker
        .wait_for_log("ACL reloaded from the config file", 2)
        .await?;
    broker
        .wait_for_log("restart the broker to apply them", 1)
        .await?;
    let log = broker.log_text();
    ensure!(
        log.lines()
            .any(|l| l.contains("restart the broker to apply them") && l.contains("log")),
        "{log}"
    );

    // Giving publish back in the file opens the door again, on the same
    // stream.
    std::fs::write(&config, &before)?;
    broker.signal(Signal::SIGHUP)?;
    broker
        .wait_for_log("ACL reloaded from the config file", 3)
        .await?;
    assert_eq!(produce_on(&mut stream, 3, "demo.greetings").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_revoke_takes_operations_out_of_a_rule() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let admin = broker.profile("admin");
    ok(&cli(&admin, &["topic", "create", "ops.revoke"])?)?;
    let rule = |ops: &'static str| ["--principal", BOB, "--topic", "ops.revoke", "--op", ops];
    let with = |command: &[&'static str], ops: &'static str| -> Vec<&'static str> {
        command.iter().copied().chain(rule(ops)).collect()
    };
    ok(&cli(
        &admin,
        &with(&["acl", "grant"], "publish,subscribe,describe"),
    )?)?;

    let conn = raw::connect(broker.addr, raw::profile_config(&dir, "bob")?).await?;
    let (_control, _) = raw::handshake(&conn).await?;
    let mut stream = FrameStream::open(&conn).await?;
    assert_eq!(produce_on(&mut stream, 1, "ops.revoke").await?, 0);

    // Part of the rule: the rest stays, on the open connection too.
    let out = ok(&cli(&admin, &with(&["acl", "revoke"], "publish"))?)?;
    ensure!(out.contains("subscribe,describe"), "what is left: {out}");
    assert_eq!(
        listed_operations(&admin, BOB, "ops.revoke")?,
        [serde_json::json!(["subscribe", "describe"])]
    );
    assert_eq!(
        produce_on(&mut stream, 2, "ops.revoke").await?,
        ErrorCode::NotAuthorized.as_u16()
    );
    ok(&cli(
        &broker.profile("bob"),
        &["topic", "describe", "ops.revoke"],
    )?)?;

    // Operations the rule no longer has: nothing matches.
    fails(
        &cli(&admin, &with(&["acl", "revoke"], "publish"))?,
        1,
        "no ACL rule granted at runtime matches",
    )?;
    // The rest: the rule goes.
    ok(&cli(
        &admin,
        &with(&["acl", "revoke"], "subscribe,describe"),
    )?)?;
    ensure!(
        listed_operations(&admin, BOB, "ops.revoke")?.is_empty(),
        "the rule is deleted"
    );

    // A rule from the config file is refused, with what to do instead.
    fails(
        &cli(
            &admin,
            &[
                "acl",
                "revoke",
                "--principal",
                ALICE,
                "--topic",
                "demo.*",
                "--op",
                "publish",
            ],
        )?,
        1,
        "comes from the broker's config file ([[acl.rules]]): remove the operations there and send the broker SIGHUP",
    )?;
    // --expires means nothing to a revocation: a usage error.
    fails(
        &cli(
            &admin,
            &[
                "acl",
                "revoke",
                "--principal",
                BOB,
                "--topic",
                "ops.revoke",
                "--op",
                "publish",
                "--expires",
                "1h",
            ],
        )?,
        2,
        "--expires",
    )?;
    Ok(())
}
