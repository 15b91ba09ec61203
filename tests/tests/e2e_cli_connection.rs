//! How the `strongbox` CLI connects, seen from the broker:
//!
//! - the profile's `client_name` reaches the broker, which logs it with
//!   each connection (without one, the CLI names itself);
//! - the connection options work after the command name;
//! - a private key file others can read is used with a warning.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use anyhow::{Result, ensure};
use strongbox_tests::{BrokerProcess, cli};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> Result<(String, String)> {
    ensure!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok((text(&out.stdout), text(&out.stderr)))
}

/// The broker's "connection established" lines.
fn connections(broker: &BrokerProcess) -> Vec<String> {
    broker
        .log_text()
        .lines()
        .filter(|l| l.contains("connection established"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_logs_the_profiles_client_name() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;

    // Without a client_name, the CLI names itself.
    ok(&cli(&broker.profile("bob"), &["whoami"])?)?;
    broker.wait_for_log("connection established", 1).await?;
    let lines = connections(&broker);
    ensure!(
        lines.iter().any(|l| l.contains("strongbox-cli/")),
        "{lines:#?}"
    );

    // With one, the broker logs it for that connection.
    let alice = broker.profile("alice");
    let mut profile = std::fs::read_to_string(&alice)?;
    profile.push_str("client_name = \"billing/1.4\"\n");
    std::fs::write(&alice, profile)?;
    let (out, _) = ok(&cli(&alice, &["whoami"])?)?;
    ensure!(out.contains("spiffe://strongbox.dev/alice"), "{out}");
    broker.wait_for_log("billing/1.4", 1).await?;
    let lines = connections(&broker);
    ensure!(
        lines
            .iter()
            .any(|l| l.contains("billing/1.4") && l.contains("spiffe://strongbox.dev/alice")),
        "{lines:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_options_after_the_command_and_key_file_modes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let profiles = dir.join("profiles");
    let path = |f: &str| profiles.join(f).display().to_string();
    let addr = broker.addr.to_string();
    let (ca, cert, key) = (
        dir.join("ca/ca.pem").display().to_string(),
        path("bob.pem"),
        path("bob.key"),
    );

    // Everything after the command name, no profile.
    let args = [
        "whoami",
        "--broker",
        addr.as_str(),
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--client-key",
        key.as_str(),
        "--server-name",
        "localhost",
    ];
    let out = std::process::Command::new(strongbox_tests::binary("strongbox"))
        .args(args)
        .env_remove("STRONGBOX_PROFILE")
        .output()?;
    let (stdout, stderr) = ok(&out)?;
    ensure!(stdout.contains("spiffe://strongbox.dev/bob"), "{stdout}");
    ensure!(
        !stderr.contains("warning"),
        "a 0600 key: no warning: {stderr}"
    );

    // A key others can read: used, with a warning saying what to do.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let (stdout, stderr) = ok(&cli(&broker.profile("bob"), &["whoami"])?)?;
    ensure!(stdout.contains("spiffe://strongbox.dev/bob"), "{stdout}");
    ensure!(
        stderr.contains("warning: private key")
            && stderr.contains("bob.key")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
    Ok(())
}
