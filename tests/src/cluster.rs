//! Helpers of the tests that run a development cluster as real processes
//! (`dev --cluster N`, nodes started with their serve command): free port
//! ranges, bounded waits, node processes stopped by PID, and the nodes'
//! own log lines about elections.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::binary;

/// Generous bound for each wait of these tests; nothing asserts on it.
pub const WAIT: Duration = Duration::from_secs(40);

/// A base port `P` with `P..P+nodes` and `P+100..P+100+nodes` free on UDP
/// (client and peer ports), and a base `M` with `M..M+nodes` free on TCP
/// (metrics): found by binding port 0 and checking the neighbours, retried
/// on a race.
///
/// # Errors
///
/// No such range found in 200 tries.
pub fn free_ports(nodes: u16) -> Result<(u16, u16)> {
    for _ in 0..200 {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        let p = probe.local_addr()?.port();
        drop(probe);
        if p > 60_000 {
            continue;
        }
        let udp_free = (0..nodes)
            .flat_map(|i| [p + i, p + 100 + i])
            .all(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok());
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let m = tcp.local_addr()?.port();
        drop(tcp);
        let tcp_free = m < 60_000
            && (0..nodes).all(|i| std::net::TcpListener::bind(("127.0.0.1", m + i)).is_ok());
        if udp_free && tcp_free {
            return Ok((p, m));
        }
    }
    bail!("no free port range found")
}

/// Polls `done` every 100 ms until it holds, for at most [`WAIT`].
///
/// # Errors
///
/// It did not hold in time.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > WAIT {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A process of ours (`dev`, or a node started with its serve command),
/// sent SIGTERM by its PID and reaped when dropped.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Starts `strongbox-broker serve --config CONFIG` with its output in
/// `log` (created, or truncated).
///
/// # Errors
///
/// The log cannot be created or the binary not started.
pub fn serve(config: &Path, log: &Path) -> Result<Process> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(binary("strongbox-broker"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting the node of {}", config.display()))?;
    Ok(Process(child))
}

/// `who`'s profile (admin, alice, bob) of the development cluster in `dir`
/// naming only the node whose client port is `port`: to ask that node.
///
/// # Errors
///
/// The file cannot be written.
pub fn profile_of(dir: &Path, who: &str, port: u16) -> Result<PathBuf> {
    let path = dir.join(format!("profiles/{who}-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "broker = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca = \"../ca/ca.pem\"\n\
             cert = \"{who}.pem\"\nkey = \"{who}.key\"\n"
        ),
    )?;
    Ok(path)
}

/// When the node writing `log` first logged `leader` as the metadata
/// leader at or after `since` (the line `metadata leader elected
/// leader=<id>`, stamped RFC 3339): elections timed by the nodes' own
/// clocks, not by a test's polling.
pub fn elected_at(log: &Path, leader: u64, since: SystemTime) -> Option<SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    let mark = format!("leader={leader}");
    text.lines()
        .filter(|l| l.contains("metadata leader elected"))
        .filter(|l| l.split_whitespace().any(|w| w == mark))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .find(|at| *at >= since)
}
