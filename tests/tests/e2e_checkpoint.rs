//! Signed checkpoints against real broker processes, with the checkpoint key
//! in the file provider and in a SoftHSM2 token: the broker signs one when
//! it starts serving and one at shutdown, appends each to `_audit` and to
//! the export directory outside its data directory; a whole data
//! directory restored from an older copy is reported by `strongbox-broker
//! verify --checkpoint` (the audit trail ends before the checkpoint's
//! record, the partition before the checkpointed offset) and by `strongbox
//! audit verify --checkpoint` once a broker serves it; an altered or forged
//! checkpoint is refused; `strongbox-broker checkpoint public-key` exports
//! the key anyone can check with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strongbox_tests::cli_checks::{cli_ok, path_arg, text};
use strongbox_tests::softhsm::TokenDir;
use strongbox_tests::{BrokerProcess, binary, cli, copy_dir};

const TOPIC: &str = "demo.ckpt";
const BROKER_ID: &str = "strongbox-dev";

fn history(dev: &Path) -> PathBuf {
    dev.join("checkpoints")
        .join(format!("{BROKER_ID}.checkpoints.jsonl"))
}

fn latest(dev: &Path) -> PathBuf {
    dev.join("checkpoints")
        .join(format!("{BROKER_ID}.latest.json"))
}

/// `strongbox-broker ARGS` with `env`.
fn broker_cmd(args: &[&str], env: &[(&str, String)]) -> Result<Output> {
    let mut cmd = Command::new(binary("strongbox-broker"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

/// `verify --json --data-dir DEV/data --checkpoint FILE [--checkpoint-key
/// KEY]`: exit code and report.
fn verify(
    dev: &Path,
    file: &Path,
    key: Option<&Path>,
    env: &[(&str, String)],
) -> Result<(Option<i32>, Value)> {
    let data = dev.join("data");
    let mut args = vec![
        "verify",
        "--json",
        "--data-dir",
        path_arg(&data),
        "--checkpoint",
        path_arg(file),
    ];
    if let Some(k) = key {
        args.extend(["--checkpoint-key", path_arg(k)]);
    }
    let out = broker_cmd(&args, env)?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("verify printed no report: {}", text(&out.stderr)))?;
    Ok((out.status.code(), report))
}

/// The findings of a verify report's data directory section, by kind.
fn kinds(report: &Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["kind"].as_str().unwrap_or_default().to_owned(),
                        f["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn finding<'a>(found: &'a [(String, String)], kind: &str) -> Option<&'a str> {
    found
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, m)| m.as_str())
}

fn publish(alice: &Path, from: usize, count: usize) -> Result<()> {
    let values: Vec<String> = (from..from + count).map(|i| format!("ckpt-{i}")).collect();
    let mut args = vec!["publish", TOPIC];
    args.extend(values.iter().map(String::as_str));
    cli_ok(alice, &args)?;
    Ok(())
}

/// The public key, exported as an operator would.
fn export_key(dev: &Path, out: &Path, env: &[(&str, String)]) -> Result<String> {
    let config = dev.join("broker.toml");
    let o = broker_cmd(
        &[
            "checkpoint",
            "public-key",
            "--config",
            path_arg(&config),
            "--out",
            path_arg(out),
        ],
        env,
    )?;
    ensure!(o.status.success(), "public-key: {}", text(&o.stderr));
    let pem = std::fs::read_to_string(out)?;
    ensure!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    Ok(text(&o.stderr))
}

/// Starts, writes `count` records from `from`, stops: the broker signs a
/// checkpoint when it starts serving and another at shutdown.
fn session(dev: &Path, env: &[(&str, String)], from: usize, count: usize) -> Result<()> {
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut broker = BrokerProcess::start_dev_with(dev, &env_ref)?;
    if from == 0 {
        cli_ok(&broker.profile("admin"), &["topic", "create", TOPIC])?;
    }
    publish(&broker.profile("alice"), from, count)?;
    ensure!(
        broker.terminate()? == Some(0),
        "the broker did not stop cleanly"
    );
    Ok(())
}

/// The rollback scenario, for one key provider.
fn rollback_is_caught(dev: &Path, root: &Path, env: &[(&str, String)]) -> Result<()> {
    // Twenty records, stop; keep a copy of the data directory as it is.
    session(dev, env, 0, 20)?;
    let first = std::fs::read_to_string(history(dev))?;
    ensure!(first.lines().count() >= 2, "start and shutdown: {first}");
    let old = root.join("old-data");
    copy_dir(&dev.join("data"), &old)?;
    // Twenty more.
    session(dev, env, 20, 20)?;
    let key = root.join("checkpoint-key.pem");
    let shown = export_key(dev, &key, env)?;
    assert!(shown.contains("checkpoint key "), "{shown}");

    // The directory as it is matches every checkpoint ever signed.
    let (code, report) = verify(dev, &history(dev), Some(&key), env)?;
    let found = kinds(&report);
    assert_eq!(code, Some(0), "{found:?}");
    assert!(finding(&found, "checkpoint_matched").is_some(), "{found:?}");

    // Restore the older copy over the whole data directory.
    std::fs::remove_dir_all(dev.join("data"))?;
    copy_dir(&old, &dev.join("data"))?;
    let (code, report) = verify(dev, &latest(dev), Some(&key), env)?;
    let found = kinds(&report);
    assert_eq!(code, Some(1), "{found:?}");
    let rollback = finding(&found, "rollback").context("no rollback finding")?;
    assert!(
        rollback.contains("older than the checkpoint") && rollback.contains("ends at record"),
        "{rollback}"
    );
    // The topic, and the audit trail's own partition, lost their ends.
    let behind: Vec<&str> = found
        .iter()
        .filter(|(k, _)| k == "partition_behind")
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        behind
            .iter()
            .any(|m| m.contains("demo.ckpt/0 ends at offset 20, before offset 40")),
        "{behind:?}"
    );
    assert!(
        behind
            .iter()
            .any(|m| m.starts_with("_audit/0 ends at offset")),
        "{behind:?}"
    );
    // Without --checkpoint-key, the provider's own key checks it alike.
    let (code, _) = verify(dev, &latest(dev), None, env)?;
    assert_eq!(code, Some(1));

    // A broker serves the restored copy and goes on signing checkpoints
    // of it; the older genuine ones still tell.
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut broker = BrokerProcess::start_dev_with(dev, &env_ref)?;
    let admin = broker.profile("admin");
    let out = cli(
        &admin,
        &[
            "audit",
            "verify",
            "--checkpoint",
            path_arg(&history(dev)),
            "--checkpoint-key",
            path_arg(&key),
        ],
    )?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    // The broker wrote audit records since the restore: its trail now
    // reaches past the newest checkpoint's record, with another record
    // there.
    assert!(
        stdout.contains("problem [audit_rewritten]")
            && stdout.contains("rolled back and written to since"),
        "{stdout}"
    );
    assert!(
        stdout.contains("demo.ckpt/0 ends at offset 20, before offset 40"),
        "{stdout}"
    );
    assert!(stderr.contains("older than the checkpoint"), "{stderr}");
    // The trail itself is intact: only the checkpoint tells.
    cli_ok(&admin, &["audit", "verify"])?;
    // Each checkpoint is in the trail too, as signed.
    let tail = cli_ok(&admin, &["audit", "tail", "--json"])?;
    let signed: Vec<String> = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["action"] == "checkpoint.signed" && r["outcome"] == "success")
        .filter_map(|r| r["details"]["checkpoint"].as_str().map(str::to_owned))
        .collect();
    ensure!(!signed.is_empty(), "no checkpoint.signed record");
    let exported = std::fs::read_to_string(history(dev))?;
    assert!(
        signed.iter().all(|line| exported.contains(line.as_str())),
        "the trail's checkpoints are the exported ones"
    );
    broker.terminate()?;
    Ok(())
}

#[test]
fn a_restored_older_data_directory_is_caught_with_the_file_provider() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    rollback_is_caught(&tmp.path().join("dev"), tmp.path(), &[])
}

#[test]
fn a_restored_older_data_directory_is_caught_with_an_hsm_signing_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let token = TokenDir::new(&tmp.path().join("softhsm"))?;
    let dev = tmp.path().join("dev");
    strongbox_broker::dev::ensure_dev_dir(&dev, "127.0.0.1:0".parse()?)?;
    token.configure_dev_broker(&dev)?;
    rollback_is_caught(&dev, tmp.path(), &[token.env()])?;
    // The key lives in the token: no signing key file next to the config.
    let files: Vec<PathBuf> = strongbox_tests::files_under(&dev.join("keys"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "p8"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
    Ok(())
}

#[test]
fn altered_and_forged_checkpoints_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = tmp.path().join("dev");
    session(&dev, &[], 0, 5)?;
    let key = tmp.path().join("key.pem");
    export_key(&dev, &key, &[])?;
    let genuine = std::fs::read_to_string(latest(&dev))?;
    let (code, _) = verify(&dev, &latest(&dev), Some(&key), &[])?;
    assert_eq!(code, Some(0));

    // One number changed after signing: the signature no longer verifies.
    let altered = tmp.path().join("altered.json");
    let changed = genuine.replacen("\"end_offset\":5", "\"end_offset\":4", 1);
    ensure!(changed != genuine, "no end_offset 5 in {genuine}");
    std::fs::write(&altered, &changed)?;
    let (code, report) = verify(&dev, &altered, Some(&key), &[])?;
    let found = kinds(&report);
    assert_eq!(code, Some(1), "{found:?}");
    let refused = finding(&found, "checkpoint_refused").context("not refused")?;
    assert!(refused.contains("does not verify"), "{refused}");

    // Another broker's key signs a checkpoint of its own: checked with
    // this broker's key, it is refused as signed by another key.
    let other = tmp.path().join("other");
    session(&other, &[], 0, 1)?;
    let (code, report) = verify(&dev, &latest(&other), Some(&key), &[])?;
    let found = kinds(&report);
    assert_eq!(code, Some(1), "{found:?}");
    let refused = finding(&found, "checkpoint_refused").context("not refused")?;
    assert!(refused.contains("signed by key"), "{refused}");

    // The CLI refuses the altered line as well.
    let broker = BrokerProcess::start_dev(&dev)?;
    let out = cli(
        &broker.profile("admin"),
        &[
            "audit",
            "verify",
            "--checkpoint",
            path_arg(&altered),
            "--checkpoint-key",
            path_arg(&key),
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("signature does not verify"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
