//! `strongbox-broker dev --cluster N`: the nodes of a development cluster
//! as child processes of this one.
//!
//! Each node is this same binary running `serve --config
//! DIR/node-I/broker.toml`, its standard output and error appended to
//! DIR/node-I/broker.log and its PID written to DIR/node-I/broker.pid. A
//! node that exits is reported and left down (its PID file removed), so
//! that a test or a person can kill one and start it again by hand with
//! the printed serve command. SIGTERM or SIGINT stops every node still
//! running (SIGTERM by PID, then SIGKILL after a grace period) and exits.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strongbox_broker::dev::{self, DevNode};
use tokio::process::{Child, Command};
use tokio::signal::unix::Signal as SignalStream;

/// How long a node gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

struct Running {
    node: DevNode,
    child: Option<Child>,
}

/// `--no-start`: prepares the directory as [`run`] does and prints each
/// node's ports and serve command, starting nothing.
pub(crate) fn prepare(
    dir: &Path,
    count: u16,
    listen: SocketAddr,
    metrics: SocketAddr,
) -> anyhow::Result<()> {
    let nodes = dev::plan_nodes(dir, count, listen, metrics)?;
    let cluster = dev::ensure_cluster_dir(dir, &nodes)
        .with_context(|| format!("development cluster {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding this program's path")?;
    if cluster.created {
        println!("created development cluster directory {}", dir.display());
    }
    println!("development cluster of {count} nodes prepared; no node started");
    for n in &cluster.nodes {
        println!(
            "node {}: client {} (QUIC), peer {}, metrics http://{}/metrics",
            n.id, n.listen, n.peer, n.metrics
        );
        println!("  serve command: {}", n.serve_command(&exe));
    }
    Ok(())
}

/// Prepares the directory, starts the nodes and waits for a stop signal.
pub(crate) async fn run(
    dir: &Path,
    count: u16,
    listen: SocketAddr,
    metrics: SocketAddr,
    mut term: SignalStream,
    mut int: SignalStream,
) -> anyhow::Result<()> {
    strongbox_broker::logging::init_cli("info");
    // The error names the directory already.
    let nodes = dev::plan_nodes(dir, count, listen, metrics)?;
    let cluster = dev::ensure_cluster_dir(dir, &nodes)
        .with_context(|| format!("development cluster {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding this program's path")?;
    if cluster.created {
        println!("created development cluster directory {}", dir.display());
    }
    let mut running = Vec::new();
    for node in cluster.nodes {
        let child = start(&exe, &node).await;
        match child {
            Ok(child) => running.push(Running {
                node,
                child: Some(child),
            }),
            Err(e) => {
                stop_all(&mut running).await;
                return Err(e);
            }
        }
    }
    println!(
        "strongbox-broker (dev) cluster of {count} nodes; each checks its [cluster] section but \
         serves on its own in this version (no replication yet)"
    );
    for r in &running {
        let n = &r.node;
        println!(
            "node {}: client {} (QUIC), peer {}, metrics http://{}/metrics, pid {}, log {}",
            n.id,
            n.listen,
            n.peer,
            n.metrics,
            r.child.as_ref().and_then(Child::id).unwrap_or_default(),
            n.log_file().display()
        );
        println!("  serve command: {}", n.serve_command(&exe));
    }
    println!(
        "profiles listing every node: {}",
        dir.join("profiles").display()
    );
    println!(
        "try: STRONGBOX_PROFILE={} strongbox cluster status",
        dir.join("profiles/admin.toml").display()
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            (index, status) = next_exit(&mut running) => {
                if let Some(r) = running.get_mut(index) {
                    r.child = None;
                    let _ = std::fs::remove_file(r.node.pid_file());
                    tracing::warn!(
                        node = r.node.id,
                        status = %status,
                        "node exited; not restarting it (start it again with: {})",
                        r.node.serve_command(&exe)
                    );
                }
            }
        }
    }
    stop_all(&mut running).await;
    Ok(())
}

async fn start(exe: &Path, node: &DevNode) -> anyhow::Result<Child> {
    let log_path = node.log_file();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let err = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting node {}", node.id))?;
    let pid = child.id().context("the node exited at once")?;
    std::fs::write(node.pid_file(), format!("{pid}\n"))
        .with_context(|| format!("writing {}", node.pid_file().display()))?;
    Ok(child)
}

/// Waits for the first child to exit: its index and how it ended. Pends
/// forever when none is running.
async fn next_exit(running: &mut [Running]) -> (usize, String) {
    let waits: Vec<_> = running
        .iter_mut()
        .enumerate()
        .filter_map(|(i, r)| r.child.as_mut().map(|c| (i, c)))
        .map(|(i, c)| {
            Box::pin(async move {
                let status = c.wait().await;
                (i, status.map_or_else(|e| e.to_string(), |s| s.to_string()))
            })
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures_select_all(waits).await
}

/// The first of several futures to finish.
async fn futures_select_all<F: Future + Unpin>(mut futs: Vec<F>) -> F::Output {
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// SIGTERM to every running node by PID, then waits; SIGKILL after
/// [`STOP_GRACE`].
async fn stop_all(running: &mut [Running]) {
    for r in running.iter() {
        let pid = r.child.as_ref().and_then(Child::id);
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for r in running.iter_mut() {
        if let Some(child) = r.child.as_mut() {
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(node = r.node.id, "node did not stop in time; killing it");
                let _ = child.kill().await;
            }
            let _ = std::fs::remove_file(r.node.pid_file());
            r.child = None;
        }
    }
}
