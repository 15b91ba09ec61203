//! `strongbox-broker dev --cluster 3` with real processes: three nodes
//! with PID files and logs, each answering on its own port; metadata made
//! through one node seen on the others; the metadata leader SIGKILLed and a
//! new one elected within 5 s with nothing acknowledged lost; a revoke
//! through one node enforced on every node within a second; a fourth node
//! added and removed; the peer listener's mutual-TLS refusals; SIGTERM to
//! `dev` stops the rest.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_tests::cluster::{
    Process, WAIT, elected_at, free_ports, profile_of, serve, wait_until,
};
use strongbox_tests::{binary, cli, metrics_text_at, raw};

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

type Dev = Process;

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
    Ok(Process(child))
}

/// Starts `dev --cluster 3` on `dir` and waits until each node wrote its
/// PID file.
fn start_three(dir: &Path, p: u16, m: u16) -> Result<Dev> {
    let dev = start(dir, p, m)?;
    wait_until("three PID files", || {
        (1..=3).all(|i| read_pid(&dir.join(format!("node-{i}/broker.pid"))).is_some())
    })?;
    Ok(dev)
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
    let (p, m) = free_ports(4)?;
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
    let killed = SystemTime::now();
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
    let new_leader = wait_for_leader(&first, 3, Some(leader))?;
    // Timed by the survivors' own log lines, not by this test's polling: the
    // new leader was elected within 5 s of the kill.
    let elected = survivors
        .iter()
        .filter_map(|port| {
            let id = u64::from(port - p) + 1;
            elected_at(
                &dir.join(format!("node-{id}/broker.log")),
                new_leader,
                killed,
            )
        })
        .min()
        .context("no survivor logged the new leader")?;
    let took = elected.duration_since(killed).unwrap_or_default();
    ensure!(
        took <= Duration::from_secs(5),
        "node {new_leader} became the metadata leader {took:?} after the kill"
    );
    // Everything acknowledged before the kill is still there on both.
    for survivor in [&first, &second] {
        let out = cli(survivor, &["topic", "describe", "demo.placed"])?;
        ensure!(out.status.success(), "{out:?}");
        let out = cli(survivor, &["acl", "list"])?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("spiffe://strongbox.dev/reader"),
            "{out:?}"
        );
    }
    create_topic_seen(&first, "demo.after", &second)?;
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

/// An ACL rule revoked through node 1 refuses a produce on every node
/// within a second of the revoke being acknowledged.
#[test]
fn a_revoke_through_one_node_refuses_produce_on_every_node_within_a_second() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let (p, m) = free_ports(4)?;
    let _dev = start_three(&dir, p, m)?;
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

    // Bob may publish on every node once the grant has reached it.
    let bobs: Vec<std::path::PathBuf> = (p..p + 3)
        .map(|port| profile_of(&dir, "bob", port))
        .collect::<Result<_>>()?;
    for (i, bob) in bobs.iter().enumerate() {
        let mut last = String::new();
        wait_until(&format!("bob's grant on node {}", i + 1), || {
            match cli(bob, &["publish", "demo.revoke", "allowed"]) {
                Ok(o) if o.status.success() => true,
                Ok(o) => {
                    last = String::from_utf8_lossy(&o.stderr).into_owned();
                    false
                }
                Err(_) => false,
            }
        })
        .with_context(|| last.clone())?;
    }

    // Revoked through node 1: a produce on any node that starts a second
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
    for (i, bob) in bobs.iter().enumerate() {
        let out = cli(bob, &["publish", "demo.revoke", "refused"])?;
        ensure!(
            !out.status.success(),
            "published on node {} after the revoke: {out:?}",
            i + 1
        );
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(err.contains("not authorized"), "node {}: {err}", i + 1);
    }
    Ok(())
}

/// Creates topic `name` through the node of profile `via`, and waits until
/// the node of profile `on` serves it.
fn create_topic_seen(via: &Path, name: &str, on: &Path) -> Result<()> {
    let out = cli(via, &["topic", "create", name, "--partitions", "1"])?;
    ensure!(out.status.success(), "{out:?}");
    wait_until(&format!("{name} on the other node"), || {
        cli(on, &["topic", "describe", name]).is_ok_and(|o| o.status.success())
    })
}

/// The metadata group's members as node `profile` reports them: id → role.
fn members(profile: &Path) -> Result<Vec<(u64, String)>> {
    let out = cli(profile, &["--json", "cluster", "status"])?;
    ensure!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(status["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| Some((n["id"].as_u64()?, n["role"].as_str()?.to_owned())))
        .collect())
}

/// A fourth node made with `pki new-node`, started with its serve command
/// and added through a running node, catches up on the metadata, follows
/// later changes and votes; removed again, it leaves the group, which keeps
/// working. Both changes are audited on the node that made them.
#[test]
fn a_node_is_added_to_a_running_cluster_and_removed_again() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let (p, m) = free_ports(4)?;
    let _dev = start_three(&dir, p, m)?;
    let node1 = profile_for(&dir, p)?;
    wait_until("node 1 to answer", || {
        cli(&node1, &["whoami"]).is_ok_and(|o| o.status.success())
    })?;
    let leader = wait_for_leader(&node1, 3, None)?;
    let out = cli(
        &node1,
        &["topic", "create", "demo.before", "--partitions", "1"],
    )?;
    ensure!(out.status.success(), "{out:?}");

    // Node 4: made beside the running cluster, its ports next in line.
    let made = Command::new(binary("strongbox-broker"))
        .args(["pki", "new-node", "--data-dir"])
        .arg(&dir)
        .arg("4")
        .output()?;
    let text = String::from_utf8_lossy(&made.stdout).into_owned();
    ensure!(made.status.success(), "{made:?}");
    let config = dir.join("node-4/broker.toml");
    ensure!(
        text.contains(&format!("serve --config {}", config.display())),
        "{text}"
    );
    let add_args = format!(
        "cluster add-node 4 127.0.0.1:{} 127.0.0.1:{}",
        p + 103,
        p + 3
    );
    ensure!(text.contains(&add_args), "{text}");
    let again = Command::new(binary("strongbox-broker"))
        .args(["pki", "new-node", "--data-dir"])
        .arg(&dir)
        .arg("4")
        .output()?;
    ensure!(!again.status.success(), "node 4 made twice: {again:?}");

    let _node4 = serve(&config, &dir.join("node-4/broker.log"))?;
    let node4 = profile_for(&dir, p + 3)?;
    wait_until("node 4 to answer", || {
        cli(&node4, &["whoami"]).is_ok_and(|o| o.status.success())
    })?;
    // Not added yet: no member knows it, and it holds no metadata.
    ensure!(
        !members(&node1)?.iter().any(|(id, _)| *id == 4),
        "node 4 is a member before it was added"
    );

    // Added through the metadata leader, with the command `new-node`
    // printed.
    let through = profile_for(&dir, p + u16::try_from(leader - 1)?)?;
    let add: Vec<&str> = add_args.split(' ').collect();
    let out = cli(&through, &add)?;
    ensure!(out.status.success(), "{out:?}");
    let mut last = Vec::new();
    wait_until("node 4 as a voting member, seen from node 4", || {
        last = members(&node4).unwrap_or_default();
        last.len() == 4
            && last
                .iter()
                .any(|(id, role)| *id == 4 && (role == "follower" || role == "leader"))
    })
    .with_context(|| format!("{last:?}"))?;
    // It caught up on what was there before, and follows what comes after.
    let out = cli(&node4, &["topic", "describe", "demo.before"])?;
    ensure!(out.status.success(), "{out:?}");
    create_topic_seen(&node1, "demo.with-four", &node4)?;

    // Removed: the group is three again and keeps administering.
    let out = cli(&through, &["cluster", "remove-node", "4"])?;
    ensure!(out.status.success(), "{out:?}");
    let mut last = Vec::new();
    wait_until("three members again, seen from node 1", || {
        last = members(&node1).unwrap_or_default();
        last.iter().map(|(id, _)| *id).collect::<Vec<_>>() == [1, 2, 3]
    })
    .with_context(|| format!("{last:?}"))?;
    let node2 = profile_for(&dir, p + 1)?;
    create_topic_seen(&node1, "demo.after-four", &node2)?;

    // Both changes are in the audit trail of the node that made them.
    let out = cli(&through, &["--json", "audit", "tail"])?;
    ensure!(out.status.success(), "{out:?}");
    let trail = String::from_utf8_lossy(&out.stdout);
    ensure!(
        trail.contains("cluster.add_node") && trail.contains("cluster.remove_node"),
        "{trail}"
    );
    Ok(())
}

/// `strongbox_peer_denials_total{reason="<reason>"}` on the node whose
/// metrics listen at `addr` (0 before the first such denial).
fn peer_denials(addr: std::net::SocketAddr, reason: &str) -> Result<f64> {
    let sample = format!("strongbox_peer_denials_total{{reason=\"{reason}\"}} ");
    Ok(metrics_text_at(addr)?
        .lines()
        .find_map(|l| l.strip_prefix(sample.as_str())?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Connects to a peer listener presenting `identity` and sends one request
/// frame of `method` with `payload`, claiming to come from node `claimed`;
/// `Ok` with the answer's bytes when the node served the stream.
async fn peer_call(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
    identity: raw::Identity,
    claimed: u64,
    method: u16,
    payload: bytes::Bytes,
) -> std::result::Result<Vec<u8>, String> {
    let config = raw::client_config(ca_pem, Some(identity), &[strongbox_peer::ALPN])
        .map_err(|e| e.to_string())?;
    let conn = raw::connect(addr, config)
        .await
        .map_err(|e| e.to_string())?;
    let frame = strongbox_peer::frame::Frame::request(method, claimed, payload)
        .map_err(|e| e.to_string())?
        .encode();
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let _ = send.write_all(&frame).await;
        let _ = send.finish();
        recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "no answer in 20 s".to_owned())?
}

/// The peer listener of a real node refuses, each with its reason counted
/// in `/metrics` and audited: a client certificate, a node certificate
/// whose request claims another node, a node certificate from a foreign
/// CA, and an expired node certificate. The cluster keeps its leader.
#[test]
fn the_peer_port_of_a_running_node_refuses_the_mtls_matrix() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let (p, m) = free_ports(4)?;
    let _dev = start_three(&dir, p, m)?;
    let node2 = profile_for(&dir, p + 1)?;
    wait_until("node 2 to answer", || {
        cli(&node2, &["whoami"]).is_ok_and(|o| o.status.success())
    })?;
    let leader = wait_for_leader(&node2, 3, None)?;

    let peer: std::net::SocketAddr = format!("127.0.0.1:{}", p + 101).parse()?;
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", m + 1).parse()?;
    let ca_pem = std::fs::read(dir.join("ca/ca.pem"))?;
    let ca = TestCa::load(
        &String::from_utf8(ca_pem.clone())?,
        &std::fs::read_to_string(dir.join("ca/ca.key"))?,
    )?;
    let node_cert = |ca: &TestCa, id: u64, expired: bool| -> Result<raw::Identity> {
        let mut spec = CertSpec::node("strongbox.dev", id, &["localhost"]);
        if expired {
            spec = spec.expired();
        }
        let issued = ca.issue(&spec)?;
        raw::Identity::from_pem(issued.cert_pem.as_bytes(), issued.key_pem().as_bytes())
    };
    let foreign = TestCa::new("not the cluster CA")?;
    let cases: Vec<(&str, raw::Identity, u64)> = vec![
        (
            "client_certificate",
            raw::Identity::profile(&dir, "alice")?,
            1,
        ),
        ("identity_mismatch", node_cert(&ca, 1, false)?, 3),
        ("foreign_ca", node_cert(&foreign, 1, false)?, 1),
        ("expired", node_cert(&ca, 1, true)?, 1),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (reason, identity, claimed) in cases {
        let before = peer_denials(metrics, reason)?;
        let answer = rt.block_on(peer_call(
            peer,
            &ca_pem,
            identity,
            claimed,
            2,
            bytes::Bytes::from_static(b"{}"),
        ));
        match (&answer, reason) {
            (Err(_), _) => {}
            // The refusal of a forged sender may come as an error frame
            // before the close.
            (Ok(bytes), "identity_mismatch") => {
                let f = strongbox_peer::frame::Frame::decode(bytes, 1 << 20)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let (code, message) = f.error_parts().context("an error frame")?;
                ensure!(
                    code == strongbox_peer::ErrorCode::IdentityMismatch.as_u16(),
                    "{message}"
                );
            }
            (Ok(bytes), _) => bail!("{reason}: served, {} bytes", bytes.len()),
        }
        let mut now = before;
        wait_until(&format!("a counted {reason} denial"), || {
            now = peer_denials(metrics, reason).unwrap_or(before);
            now > before
        })
        .with_context(|| format!("{reason}: {now} after {before}"))?;
    }

    // Every refusal is in node 2's audit trail as a peer denial.
    let mut trail = String::new();
    wait_until("four audited peer denials on node 2", || {
        trail = cli(&node2, &["--json", "audit", "tail"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        [
            "client_certificate",
            "identity_mismatch",
            "foreign_ca",
            "expired",
        ]
        .iter()
        .all(|r| {
            trail
                .lines()
                .any(|l| l.contains("\"peer.deny\"") && l.contains(&format!("\"reason\":\"{r}\"")))
        })
    })
    .with_context(|| trail.clone())?;
    // An honest member's call for a partition group the node does not run
    // reaches the node's group router, which says so.
    let mut group_call = [0x42u8; 21];
    group_call[20] = 0xA0; // an empty CBOR map after the 20-byte group id
    let answer = rt
        .block_on(peer_call(
            peer,
            &ca_pem,
            node_cert(&ca, 1, false)?,
            1,
            strongbox_cluster::groups::METHOD_GROUP_VOTE,
            bytes::Bytes::copy_from_slice(&group_call),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let f = strongbox_peer::frame::Frame::decode(&answer, 1 << 20)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (code, message) = f.error_parts().context("an error frame")?;
    ensure!(
        code == strongbox_peer::ErrorCode::HandlerFailed.as_u16() && message.contains("no group"),
        "{code}: {message}"
    );
    // None of it disturbed the group.
    ensure!(
        wait_for_leader(&node2, 3, None)? == leader,
        "the leader changed"
    );
    Ok(())
}
