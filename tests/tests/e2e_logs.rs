//! The broker's log as a log shipper or an operator reading a file sees
//! it: no terminal colour codes when stderr is not a terminal, each
//! connection's span once per line, `log.format = "json"` giving one JSON
//! object per line with the documented keys, and `RUST_LOG` overriding
//! `log.level`.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::connect;

/// Starts the dev directory once (so it exists), stops it, and adds a
/// `[log]` section to its broker.toml.
fn dev_with_log_section(dir: &Path, section: &str) -> Result<()> {
    let mut first = BrokerProcess::start_dev(dir)?;
    first.terminate()?;
    let config = dir.join("broker.toml");
    let mut text = std::fs::read_to_string(&config)?;
    ensure!(
        !text.contains("\n[log]"),
        "the dev config already has [log]"
    );
    text.push_str("\n[log]\n");
    text.push_str(section);
    std::fs::write(&config, text)?;
    // Only what the next start writes is looked at.
    std::fs::remove_file(dir.with_extension("broker.log"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_has_no_colour_codes_and_one_connection_span_per_line() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start_dev(&tmp.path().join("dev"))?;
    let alice = connect(&broker.profile("alice")).await?;
    alice.admin().whoami().await?;
    alice.close().await;
    broker.wait_for_log("connection established", 1).await?;
    broker.terminate()?;
    let log = broker.log_text();
    ensure!(
        !log.contains('\u{1b}'),
        "escape sequences in a log file:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("connection established"))
        .context("no connection line")?;
    ensure!(
        line.matches("connection{").count() == 1,
        "the connection span appears more than once: {line}"
    );
    ensure!(
        line.contains("principal=spiffe://strongbox.dev/alice"),
        "{line}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_stable_keys() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    dev_with_log_section(&dir, "format = \"json\"\nlevel = \"info\"\n")?;
    let mut broker = BrokerProcess::start_dev_with(&dir, &[("RUST_LOG", "")])?;
    let alice = connect(&broker.profile("alice")).await?;
    alice.admin().whoami().await?;
    alice.close().await;
    broker.wait_for_log("connection established", 1).await?;
    broker.terminate()?;

    let log = broker.log_text();
    let mut lines = 0;
    let mut connection = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
        let object = value.as_object().context("not an object")?;
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        ensure!(
            keys == ["fields", "level", "message", "spans", "target", "timestamp"],
            "keys {keys:?} in {line}"
        );
        ensure!(
            ["error", "warn", "info"].contains(&object["level"].as_str().unwrap_or("")),
            "{line}"
        );
        if object["message"] == "connection established" {
            connection = Some(value.clone());
        }
        lines += 1;
    }
    ensure!(lines > 3, "too few lines:\n{log}");
    let connection = connection.context("no connection line")?;
    ensure!(
        connection["spans"]["connection"]["principal"] == "spiffe://strongbox.dev/alice",
        "{connection}"
    );
    ensure!(connection["fields"]["version"] == 1, "{connection}");
    Ok(())
}

#[test]
fn rust_log_overrides_log_level_and_a_bad_one_is_ignored() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    dev_with_log_section(&dir, "level = \"warn\"\n")?;
    let log_path = dir.with_extension("broker.log");

    // log.level = warn: no INFO line.
    let mut broker = BrokerProcess::start_dev_with(&dir, &[("RUST_LOG", "")])?;
    broker.terminate()?;
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(
        !log.contains(" INFO "),
        "log.level = warn wrote INFO lines:\n{log}"
    );
    ensure!(log.contains(" WARN "), "{log}");
    std::fs::remove_file(&log_path)?;

    // RUST_LOG wins.
    let mut broker =
        BrokerProcess::start_dev_with(&dir, &[("RUST_LOG", "info,strongbox_storage=debug")])?;
    broker.terminate()?;
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(log.contains(" INFO ") && log.contains(" DEBUG "), "{log}");
    std::fs::remove_file(&log_path)?;

    // A RUST_LOG that does not parse is reported and log.level applies.
    let mut broker = BrokerProcess::start_dev_with(&dir, &[("RUST_LOG", "info,[=bad")])?;
    broker.terminate()?;
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(log.contains("RUST_LOG does not parse"), "{log}");
    ensure!(!log.contains(" INFO "), "{log}");
    Ok(())
}
