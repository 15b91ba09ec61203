//! The systemd unit (`deploy/systemd/strongbox-broker.service`) and the
//! broker's side of `Type=notify`:
//!
//! - `systemd-analyze verify` accepts the units (the broker, and the
//!   backup service and its timer) without a warning (pointed at the built
//!   binary in copies, since verify checks that the commands exist), and
//!   the broker's unit holds the sandboxing the runbook promises;
//! - docs/OPERATIONS.md quotes exactly the exposure score that
//!   `systemd-analyze security --offline=true` gives it;
//! - the unit's paths agree with `deploy/systemd/broker.toml`;
//! - the broker sends READY=1 once it serves, RELOADING=1 and READY=1
//!   around a SIGHUP reload, and STOPPING=1 on SIGTERM, to the socket
//!   named by NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use strongbox_broker::config::BrokerConfig;
use strongbox_tests::{BrokerProcess, Signal, binary};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

const UNIT: &str = "deploy/systemd/strongbox-broker.service";
const INSTALLED_BINARY: &str = "/usr/local/bin/strongbox-broker";

/// The units of deploy/systemd/, with their commands pointing at the
/// built binary, in `dir`; the broker's unit first.
fn unit_copies(dir: &Path) -> Result<Vec<PathBuf>> {
    let built = binary("strongbox-broker");
    let mut out = Vec::new();
    for name in [
        "strongbox-broker.service",
        "strongbox-backup.service",
        "strongbox-backup.timer",
    ] {
        let text = std::fs::read_to_string(workspace().join("deploy/systemd").join(name))?;
        let path = dir.join(name);
        std::fs::write(
            &path,
            text.replace(INSTALLED_BINARY, &built.display().to_string()),
        )?;
        out.push(path);
    }
    Ok(out)
}

fn unit_copy(dir: &Path) -> Result<PathBuf> {
    unit_copies(dir)?
        .into_iter()
        .next()
        .context("the broker unit")
}

/// `key=value` settings of the unit, in order.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn setting<'a>(all: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    all.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_units() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let units = unit_copies(tmp.path())?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .context("systemd-analyze is not installed")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    ensure!(
        text.trim().is_empty(),
        "systemd-analyze verify warned:\n{text}"
    );
    Ok(())
}

#[test]
fn the_unit_is_sandboxed_and_agrees_with_its_configuration() -> Result<()> {
    let text = std::fs::read_to_string(workspace().join(UNIT))?;
    let s = settings(&text);
    let expect = [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("User", "strongbox"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("MemoryAccounting", "yes"),
        ("CPUAccounting", "yes"),
        ("StateDirectory", "strongbox"),
        ("StateDirectoryMode", "0700"),
        ("SystemCallArchitectures", "native"),
    ];
    for (key, value) in expect {
        ensure!(
            setting(&s, key) == [value],
            "{key} is {:?}, expected {value:?}",
            setting(&s, key)
        );
    }
    let filters = setting(&s, "SystemCallFilter");
    ensure!(filters.contains(&"@system-service"), "{filters:?}");
    ensure!(
        filters
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@privileged")),
        "{filters:?}"
    );
    // Nothing writable but the state directory.
    ensure!(setting(&s, "ReadWritePaths").is_empty());

    // The configuration the unit runs with: its data directory is the
    // state directory, the only one it may write.
    let exec = setting(&s, "ExecStart");
    ensure!(
        exec == [format!("{INSTALLED_BINARY} serve --config /etc/strongbox/broker.toml").as_str()],
        "{exec:?}"
    );
    let config = BrokerConfig::from_toml_str(
        &std::fs::read_to_string(workspace().join("deploy/systemd/broker.toml"))?,
        Path::new("/etc/strongbox"),
    )?;
    ensure!(config.broker.data_dir == Path::new("/var/lib/strongbox"));
    ensure!(setting(&s, "WorkingDirectory") == ["/var/lib/strongbox"]);
    ensure!(config.tls.cert.starts_with("/etc/strongbox"));
    Ok(())
}

#[test]
fn the_runbook_quotes_the_units_security_score() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let unit = unit_copy(tmp.path())?;
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .context("systemd-analyze is not installed")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let score = text
        .lines()
        .find_map(|l| l.split("strongbox-broker.service: ").nth(1))
        .context("no overall exposure level in the output")?
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let runbook = std::fs::read_to_string(workspace().join("docs/OPERATIONS.md"))?;
    ensure!(
        runbook.contains(&format!("exposure level {score}")),
        "docs/OPERATIONS.md does not quote the score {score:?}"
    );
    Ok(())
}

fn receive(socket: &UnixDatagram) -> Result<String> {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .context("no notification within the timeout")?;
    Ok(String::from_utf8_lossy(buf.get(..n).context("length")?).into_owned())
}

#[test]
fn the_broker_tells_systemd_when_it_is_ready_reloading_and_stopping() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    socket.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut broker = BrokerProcess::start_dev_with(
        &tmp.path().join("dev"),
        &[("NOTIFY_SOCKET", path.to_str().context("path")?)],
    )?;

    let ready = receive(&socket)?;
    ensure!(ready.starts_with("READY=1\n"), "{ready}");
    ensure!(
        ready.contains(&format!("STATUS=serving on {} (QUIC)", broker.addr)),
        "{ready}"
    );
    ensure!(
        ready.contains(&format!("MAINPID={}", broker.pid().context("pid")?)),
        "{ready}"
    );

    broker.signal(Signal::SIGHUP)?;
    let reloading = receive(&socket)?;
    ensure!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let again = receive(&socket)?;
    ensure!(again.starts_with("READY=1\n"), "{again}");

    let pid = broker.pid().context("pid")?;
    let stopping = std::thread::spawn(move || receive(&socket));
    ensure!(
        broker.terminate()? == Some(0),
        "the broker did not exit cleanly"
    );
    let stopping = stopping
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(
        stopping.starts_with("STOPPING=1\n"),
        "{stopping} (pid {pid})"
    );
    Ok(())
}
