//! `--spawn-dev`: a `strongbox-broker dev` process for the length of one
//! benchmark, in a temporary directory, stopped by its PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the broker gets to start, and to stop after SIGTERM.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A running development broker; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct DevBroker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The QUIC address it bound.
    pub addr: SocketAddr,
}

impl DevBroker {
    /// The `strongbox-broker` binary next to the running executable.
    ///
    /// # Errors
    ///
    /// The executable's path is unknown, or the binary is not there.
    pub fn default_binary() -> Result<PathBuf> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let path = exe
            .parent()
            .ok_or_else(|| anyhow!("this executable has no directory"))?
            .join("strongbox-broker");
        if !path.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release --workspace --bins`, \
                 or pass --broker-bin",
                path.display()
            );
        }
        Ok(path)
    }

    /// Starts `binary dev --listen 127.0.0.1:0` in a new temporary directory
    /// under `parent` (the system's temporary directory when `None`) and
    /// waits until it reports its address.
    ///
    /// # Errors
    ///
    /// The directory cannot be made, the process does not start, or it
    /// does not report its address within a minute.
    pub fn start(binary: &Path, parent: Option<&Path>) -> Result<Self> {
        let dir = match parent {
            Some(p) => tempfile::Builder::new()
                .prefix("strongbox-bench-")
                .tempdir_in(p),
            None => tempfile::Builder::new()
                .prefix("strongbox-bench-")
                .tempdir(),
        }
        .context("creating the broker's temporary directory")?;
        let log_path = dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(binary)
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("dev"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end so the broker never blocks on stdout.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        let mut broker = Self {
            child: Some(child),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                anyhow!("the broker did not report its address; its log:\n{log}")
            })?;
            if let Some(addr) = parse_listening(&line) {
                broker.addr = addr;
                return Ok(broker);
            }
        }
    }

    /// The profile of the development superuser.
    pub fn admin_profile(&self) -> PathBuf {
        self.dir.path().join("dev/profiles/admin.toml")
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it has not exited within
    /// a minute. Returns its exit code.
    ///
    /// # Errors
    ///
    /// The signal cannot be sent or the process cannot be reaped.
    pub fn stop(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to the broker")?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the broker")? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let status = child.wait().context("reaping the broker")?;
                bail!("the broker did not stop within {TIMEOUT:?} of SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(raw) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// The address in the broker's `... listening on ADDR (QUIC...)` line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.split("listening on ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_line_of_dev_mode() {
        assert_eq!(
            parse_listening(
                "strongbox-broker (dev) listening on 127.0.0.1:40123 (QUIC, mutual TLS)"
            ),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(
            parse_listening("metrics on http://127.0.0.1:9/metrics"),
            None
        );
        assert_eq!(parse_listening("listening on nowhere"), None);
    }
}
