//! Harness for the workspace-level end-to-end tests.
//!
//! [`BrokerProcess`] runs the real `strongbox-broker` binary in `dev` mode
//! on `127.0.0.1:0` in a temporary directory, reads the address it bound
//! from its output, and stops it by PID (SIGTERM for a graceful stop,
//! SIGKILL for a crash, SIGKILL on drop). [`cli`] runs the real `strongbox`
//! binary against it.
//!
//! The binaries are looked up next to the test executable's profile
//! directory (`target/<profile>/`); build them first with
//! `cargo build --workspace --bins` (the test script does).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a broker gets to start or stop before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRONGBOX_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target/<profile> directory")
}

/// The path of the workspace binary `name`, which must have been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (scripts/test-all does), or point STRONGBOX_BIN_DIR at them",
        path.display()
    );
    path
}

/// A running `strongbox-broker dev` process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    /// The development directory.
    pub dir: PathBuf,
    /// The QUIC address it bound.
    pub addr: SocketAddr,
    /// The metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl BrokerProcess {
    /// Starts a dev broker in `dir` (created on first use) on a free port.
    ///
    /// # Errors
    ///
    /// The process does not start or does not report its address in time.
    pub fn start_dev(dir: &Path) -> Result<Self> {
        Self::start_dev_with(dir, &[])
    }

    /// As [`BrokerProcess::start_dev`], with extra environment variables.
    ///
    /// # Errors
    ///
    /// As [`BrokerProcess::start_dev`].
    pub fn start_dev_with(dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let log = dir.with_extension("broker.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(binary("strongbox-broker"));
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning strongbox-broker")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the broker never blocks on stdout.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut metrics = None;
        while addr.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                    if let Some(rest) = line.strip_prefix("metrics on http://") {
                        metrics = rest.trim_end_matches("/metrics").parse().ok();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "broker did not report its address; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Ok(Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            addr: addr.ok_or_else(|| anyhow!("no address"))?,
            metrics,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The profile file of `name` (`admin`, `alice`, `bob`).
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.join("profiles").join(format!("{name}.toml"))
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Resident memory of the process, in KiB.
    ///
    /// # Errors
    ///
    /// The process is gone.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))
    }

    /// Sends SIGTERM and waits for a graceful exit; returns its status code.
    ///
    /// # Errors
    ///
    /// The process does not exit within [`START_TIMEOUT`].
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        self.signal_and_wait(Signal::SIGTERM)
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    ///
    /// # Errors
    ///
    /// The signal cannot be sent.
    pub fn crash(&mut self) -> Result<()> {
        self.signal_and_wait(Signal::SIGKILL).map(|_| ())
    }

    fn signal_and_wait(&mut self, signal: Signal) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        kill(pid, signal).context("sending the signal")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit after {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the `strongbox` CLI with `args` and `STRONGBOX_PROFILE=profile`.
///
/// # Errors
///
/// The binary cannot be run.
pub fn cli(profile: &Path, args: &[&str]) -> Result<Output> {
    cli_with_stdin(profile, args, None)
}

/// As [`cli`], feeding `stdin`.
///
/// # Errors
///
/// The binary cannot be run.
pub fn cli_with_stdin(profile: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    use std::io::Write;
    let mut child = Command::new(binary("strongbox"))
        .args(args)
        .env("STRONGBOX_PROFILE", profile)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning strongbox")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// True when `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Async helpers over the client library.
pub mod client {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::{Context, Result, bail};
    use futures::StreamExt;
    use strongbox_client::{Client, ClientConfig, ConsumedRecord, Consumer};
    use strongbox_protocol::frames::admin_types::{Durability, TopicConfig};

    /// How long a test waits for records before failing.
    pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects with a profile file.
    ///
    /// # Errors
    ///
    /// Connection failures.
    pub async fn connect(profile: &Path) -> Result<Client> {
        let config = ClientConfig::from_profile(profile)
            .with_context(|| format!("profile {}", profile.display()))?;
        Client::connect(config).await.context("connecting")
    }

    /// A topic config with `partitions` partitions and `fsync` durability.
    pub fn topic(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            durability: Durability::Fsync,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: None,
            segment_ms: None,
            dedicated_kek: false,
        }
    }

    /// Reads exactly `n` records, failing on an error item, on the end of
    /// the stream, or after [`READ_TIMEOUT`] without progress.
    ///
    /// # Errors
    ///
    /// As described.
    pub async fn read_n(consumer: &mut Consumer, n: usize) -> Result<Vec<ConsumedRecord>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(READ_TIMEOUT, consumer.next()).await {
                Ok(Some(Ok(record))) => out.push(record),
                Ok(Some(Err(e))) => bail!("after {} records: {e}", out.len()),
                Ok(None) => bail!("stream ended after {} of {n} records", out.len()),
                Err(_) => bail!("no record for {READ_TIMEOUT:?} after {} of {n}", out.len()),
            }
        }
        Ok(out)
    }

    /// Asserts that nothing more arrives within `quiet`.
    ///
    /// # Errors
    ///
    /// A record arrived.
    pub async fn expect_quiet(consumer: &mut Consumer, quiet: Duration) -> Result<()> {
        match tokio::time::timeout(quiet, consumer.next()).await {
            Err(_) => Ok(()),
            Ok(Some(Ok(r))) => bail!("unexpected record {}@{}", r.partition, r.offset),
            Ok(Some(Err(e))) => bail!("unexpected error {e}"),
            Ok(None) => Ok(()),
        }
    }
}
