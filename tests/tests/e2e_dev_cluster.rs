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
    profile_of(dir, "admin", port)
}

/// `who`'s profile (admin, alice, bob) naming only the node at `port`.
fn profile_of(dir: &Path, who: &str, port: u16) -> Result<std::path::PathBuf> {
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

/// Waits until the node behind `profile` reports a leader among `nodes`
/// members, other than `not`; returns the leader's id.
fn wait_for_leader(profile: &Path, nodes: usize, not: Option<u64>) -> Result<u64> {
    let mut leader = None;
    let mut last = String::new();
    wait_until("a metadata leader", || {
        let Ok(out) = cli(profile, &["--json", "cluster", "status"]) else {
            return false;
        };
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let members = status["nodes"].as_array().map_or(0, Vec::len);
        leader = status["leader"].as_u64();
        members == nodes && leader.is_some() && leader != not
    })
    .with_context(|| last.clone())?;
    leader.context("no leader")
}

#[test]
fn dev_cluster_shares_its_metadata_and_outlives_its_leader() -> Result<()> {
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
        let me = status["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == i as u64 + 1))
            .cloned()
            .unwrap_or_default();
        ensure!(me["client_addr"] == format!("127.0.0.1:{port}"), "{status}");
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

    // The three form one metadata group with a leader.
    let node1 = profile_for(&dir, p)?;
    let leader = wait_for_leader(&node1, 3, None)?;

    // A topic and an ACL rule made through node 1 reach the others.
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
    let out = cli(
        &node1,
        &[
            "acl",
            "grant",
            "--principal",
            "spiffe://strongbox.dev/reader",
            "--topic",
            "demo.placed",
            "--op",
            "subscribe",
        ],
    )?;
    ensure!(out.status.success(), "{out:?}");
    for port in [p + 1, p + 2] {
        let profile = profile_for(&dir, port)?;
        wait_until(&format!("the topic on the node at {port}"), || {
            cli(&profile, &["topic", "describe", "demo.placed"]).is_ok_and(|o| o.status.success())
        })?;
        wait_until(&format!("the ACL rule on the node at {port}"), || {
            cli(&profile, &["acl", "list"]).is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains("spiffe://strongbox.dev/reader")
            })
        })?;
    }
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

    // SIGKILL the metadata leader: it stays down, the two others elect a
    // new one and keep administering the cluster.
    let gone = usize::try_from(leader - 1)?;
    let victim = pids[gone];
    kill(Pid::from_raw(victim), Signal::SIGKILL)?;
    wait_until("the leader to be gone", || !alive(victim))?;
    wait_until("dev to notice the leader exited", || {
        !pid_files[gone].exists()
    })?;
    let survivors: Vec<u16> = (0..3u16)
        .filter(|i| usize::from(*i) != gone)
        .map(|i| p + i)
        .collect();
    let first = profile_for(&dir, survivors[0])?;
    let second = profile_for(&dir, survivors[1])?;
    wait_for_leader(&first, 3, Some(leader))?;
    let out = cli(
        &first,
        &["topic", "create", "demo.after", "--partitions", "1"],
    )?;
    ensure!(out.status.success(), "{out:?}");
    wait_until("the new topic on the other survivor", || {
        cli(&second, &["topic", "describe", "demo.after"]).is_ok_and(|o| o.status.success())
    })?;
    ensure!(!pid_files[gone].exists(), "the killed node was restarted");
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
    ensure!(pids.iter().all(|p| !alive(*p)), "nodes left running");
    ensure!(pid_files.iter().all(|f| !f.exists()), "PID files left");

    // A second run reuses the directory.
    let dev2 = start(&dir, p, m)?;
    wait_until("three PID files again", || {
        pid_files.iter().all(|f| read_pid(f).is_some())
    })?;
    drop(dev2);
    Ok(())
}

/// An ACL rule revoked through node 1 refuses a produce on node 3 within a
/// second of the revoke being acknowledged.
#[test]
fn a_revoke_through_one_node_refuses_produce_on_another_within_a_second() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let (p, m) = free_ports()?;
    let _dev = start(&dir, p, m)?;
    wait_until("three PID files", || {
        (1..=3).all(|i| read_pid(&dir.join(format!("node-{i}/broker.pid"))).is_some())
    })?;
    let node1 = profile_for(&dir, p)?;
    for port in [p, p + 2] {
        let profile = profile_for(&dir, port)?;
        wait_until(&format!("the node at {port} to answer"), || {
            cli(&profile, &["whoami"]).is_ok_and(|o| o.status.success())
        })?;
    }
    wait_for_leader(&node1, 3, None)?;
    let out = cli(
        &node1,
        &["topic", "create", "demo.revoke", "--partitions", "1"],
    )?;
    ensure!(out.status.success(), "{out:?}");
    let rule = [
        "--principal",
        "spiffe://strongbox.dev/bob",
        "--topic",
        "demo.revoke",
        "--op",
        "publish",
    ];
    let grant: Vec<&str> = ["acl", "grant"]
        .iter()
        .chain(rule.iter())
        .copied()
        .collect();
    let out = cli(&node1, &grant)?;
    ensure!(out.status.success(), "{out:?}");

    // Bob may publish on node 3 once the grant has reached it.
    let bob3 = profile_of(&dir, "bob", p + 2)?;
    let mut last = String::new();
    wait_until("bob's grant on node 3", || {
        match cli(&bob3, &["publish", "demo.revoke", "allowed"]) {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                last = String::from_utf8_lossy(&o.stderr).into_owned();
                false
            }
            Err(_) => false,
        }
    })
    .with_context(|| last.clone())?;

    // Revoked through node 1: a produce on node 3 that starts a second
    // after the revoke was acknowledged is refused.
    let revoke: Vec<&str> = ["acl", "revoke"]
        .iter()
        .chain(rule.iter())
        .copied()
        .collect();
    let out = cli(&node1, &revoke)?;
    ensure!(out.status.success(), "{out:?}");
    let acknowledged = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(acknowledged.elapsed()));
    let out = cli(&bob3, &["publish", "demo.revoke", "refused"])?;
    ensure!(!out.status.success(), "published after the revoke: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("not authorized"), "{err}");
    Ok(())
}
