//! A data directory whose metadata store is gone (or empty) beside its
//! partition logs, as after a power cut that took `meta.redb`'s name: a
//! real broker refuses to start, with exit status 1 and a message that
//! says what is missing and what to do, and creates nothing. A new, empty
//! store would lose the topics, the key registry and the partitions'
//! durable ends without a trace, and hand out offsets again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strongbox_tests::cli_checks::cli_ok;
use strongbox_tests::{BrokerProcess, START_TIMEOUT, binary, cli_with_stdin};

/// Runs `strongbox-broker dev` on `dir` and expects it to exit by itself;
/// returns its exit code and stderr. Kills it (by its own handle) when it
/// is still running after the start timeout.
fn start_expecting_exit(dir: &Path) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(binary("strongbox-broker"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning strongbox-broker")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            return Ok((
                status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the broker started although its metadata store is missing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_missing_metadata_store_beside_partition_logs_refuses_to_start() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dev = root.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dev)?;
    let admin = broker.profile("admin");
    cli_ok(&admin, &["topic", "create", "orders", "--partitions", "1"])?;
    let out = cli_with_stdin(
        &admin,
        &["publish", "orders", "--partition", "0"],
        Some(b"a\nb\nc\n"),
    )?;
    ensure!(out.status.success(), "publish: {out:?}");
    let data = broker.data_dir();
    ensure!(broker.terminate()? == Some(0), "clean stop");
    let meta = data.join("meta.redb");
    ensure!(data.join("log").is_dir(), "partition logs exist");

    std::fs::remove_file(&meta)?;
    let (code, stderr) = start_expecting_exit(&dev)?;
    ensure!(code == Some(1), "exit status {code:?}: {stderr}");
    for needle in [
        "holds partition logs",
        &format!("{} is missing or empty", meta.display()),
        &format!("Restore {} from a backup", meta.display()),
        "does not create a new one while partition logs exist",
    ] {
        ensure!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    ensure!(!meta.exists(), "no new store was created");

    // An empty file (what `redb` would turn into a new database) is refused
    // the same way, and left as it is.
    std::fs::write(&meta, b"")?;
    let (code, stderr) = start_expecting_exit(&dev)?;
    ensure!(code == Some(1), "exit status {code:?}: {stderr}");
    ensure!(stderr.contains("is missing or empty"), "{stderr}");
    ensure!(std::fs::metadata(&meta)?.len() == 0, "left empty");
    Ok(())
}

#[test]
fn a_new_data_directory_gets_a_new_metadata_store() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dev = root.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dev)?;
    let data = broker.data_dir();
    ensure!(data.join("meta.redb").is_file(), "created at first start");
    ensure!(
        !data.join("meta.redb.new").exists(),
        "the staging file is renamed into place"
    );
    ensure!(broker.terminate()? == Some(0), "clean stop");
    Ok(())
}
