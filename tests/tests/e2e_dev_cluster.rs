//! `strongbox-broker dev --cluster 3` with real processes: three nodes
//! with PID files and logs, each answering on its own port; a node killed
//! by PID stays down while the others serve; SIGTERM to `dev` stops the
//! rest.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strongbox_tests::{binary, cli};

/// Generous bound for each wait; nothing asserts on timing.
const WAIT: Duration = Duration::from_secs(40);

/// A base port `P` with `P..P+3` and `P+100..P+103` free on UDP, and a
/// base `M` with `M..M+3` free on TCP: found by binding port 0 and
/// checking the neighbours, retried on a race.
fn free_ports() -> Result<(u16, u16)> {
    for _ in 0..200 {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        let p = probe.local_addr()?.port();
        drop(probe);
        if p > 60_000 {
            continue;
        }
        let udp_free = (0..3)
            .flat_map(|i| [p + i, p + 100 + i])
            .all(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok());
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let m = tcp.local_addr()?.port();
        drop(tcp);
        let tcp_free =
            m < 60_000 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", m + i)).is_ok());
        if udp_free && tcp_free {
            return Ok((p, m));
        }
    }
    bail!("no free port range found")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > WAIT {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie of ours is reaped by `dev`.
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

/// A profile that names only node `i`'s address, to ask that node.
fn profile_for(dir: &Path, port: u16) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("profiles/admin-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "broker = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca = \"../ca/ca.pem\"\n\
             cert = \"admin.pem\"\nkey = \"admin.key\"\n"
        ),
    )?;
    Ok(path)
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, p: u16, m: u16) -> Result<Dev> {
    let log = std::fs::File::create(dir.with_extension("dev.log"))?;
    let child = Command::new(binary("strongbox-broker"))
        .args(["dev", "--cluster", "3", "--listen"])
        .arg(format!("127.0.0.1:{p}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{m}"))
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dev --cluster 3")?;
    Ok(Dev(child))
}

#[test]
fn dev_cluster_runs_three_nodes_that_stay_down_when_killed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let (p, m) = free_ports()?;
    let mut dev = start(&dir, p, m)?;
    let pid_files: Vec<_> = (1..=3)
        .map(|i| dir.join(format!("node-{i}/broker.pid")))
        .collect();
    wait_until("three PID files", || {
        pid_files.iter().all(|f| read_pid(f).is_some())
    })?;
    let pids: Vec<i32> = pid_files.iter().filter_map(|f| read_pid(f)).collect();
    ensure!(
        pids.len() == 3 && pids.iter().all(|&p| alive(p)),
        "{pids:?}"
    );

    // Each node answers on its own port, as node i of the cluster.
    for (i, port) in (p..p + 3).enumerate() {
        let profile = profile_for(&dir, port)?;
        let mut last = String::new();
        wait_until(&format!("node {} to answer", i + 1), || {
            match cli(&profile, &["--json", "cluster", "status"]) {
                Ok(out) if out.status.success() => {
                    last = String::from_utf8_lossy(&out.stdout).into_owned();
                    true
                }
                Ok(out) => {
                    last = String::from_utf8_lossy(&out.stderr).into_owned();
                    false
                }
                Err(_) => false,
            }
        })
        .with_context(|| last.clone())?;
        let status: serde_json::Value = serde_json::from_str(&last)?;
        ensure!(status["node_id"] == i as u64 + 1, "{status}");
        ensure!(
            status["nodes"][0]["client_addr"] == format!("127.0.0.1:{port}"),
            "{status}"
        );
        let who = cli(&profile, &["whoami"])?;
        ensure!(who.status.success(), "{who:?}");
        ensure!(
            String::from_utf8_lossy(&who.stdout).contains("spiffe://strongbox.dev/admin"),
            "{who:?}"
        );
        let log = std::fs::read_to_string(dir.join(format!("node-{}/broker.log", i + 1)))?;
        ensure!(log.contains("node_id"), "node {} log: {log}", i + 1);
    }
    // The shared profile lists all three.
    let admin = std::fs::read_to_string(dir.join("profiles/admin.toml"))?;
    ensure!(admin.contains(&format!("127.0.0.1:{}", p + 2)), "{admin}");

    // A topic on node 1: each partition led by node 1, its only replica.
    let node1 = profile_for(&dir, p)?;
    let out = cli(
        &node1,
        &["topic", "create", "demo.placed", "--partitions", "2"],
    )?;
    ensure!(out.status.success(), "{out:?}");
    let out = cli(&node1, &["--json", "topic", "describe", "demo.placed"])?;
    ensure!(out.status.success(), "{out:?}");
    let topic: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let parts = topic["partition_state"].as_array().context("partitions")?;
    ensure!(parts.len() == 2, "{topic}");
    for part in parts {
        ensure!(part["leader"] == 1, "{topic}");
        ensure!(part["replicas"] == serde_json::json!([1]), "{topic}");
    }
    // Membership changes are refused, saying why.
    let out = cli(
        &node1,
        &["cluster", "add-node", "4", "127.0.0.1:1", "127.0.0.1:2"],
    )?;
    ensure!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("runs it as a single node"), "{err}");
    // `config check` reports the node's [cluster] section.
    let check = Command::new(binary("strongbox-broker"))
        .args(["config", "check"])
        .arg(dir.join("node-2/broker.toml"))
        .output()?;
    let text = String::from_utf8_lossy(&check.stdout);
    ensure!(
        text.contains("cluster: node 2 (spiffe://strongbox.dev/strongbox/node/2)"),
        "{text}"
    );

    // SIGKILL node 2: it stays down, the others serve.
    kill(Pid::from_raw(pids[1]), Signal::SIGKILL)?;
    wait_until("node 2 to be gone", || !alive(pids[1]))?;
    wait_until("dev to notice node 2 exited", || !pid_files[1].exists())?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(!pid_files[1].exists(), "node 2 was restarted");
    ensure!(alive(pids[0]) && alive(pids[2]), "the others died");
    let out = cli(&profile_for(&dir, p + 2)?, &["whoami"])?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(dev.0.try_wait()?.is_none(), "dev exited");

    // SIGTERM to dev stops the rest and dev exits.
    kill(Pid::from_raw(i32::try_from(dev.0.id())?), Signal::SIGTERM)?;
    let began = Instant::now();
    let status = loop {
        if let Some(s) = dev.0.try_wait()? {
            break s;
        }
        ensure!(began.elapsed() < WAIT, "dev did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(status.success(), "{status}");
    ensure!(!alive(pids[0]) && !alive(pids[2]), "nodes left running");
    ensure!(pid_files.iter().all(|f| !f.exists()), "PID files left");

    // A second run reuses the directory.
    let dev2 = start(&dir, p, m)?;
    wait_until("three PID files again", || {
        pid_files.iter().all(|f| read_pid(f).is_some())
    })?;
    drop(dev2);
    Ok(())
}
