//! `strongbox-broker pki new-node`: one more node for a development
//! cluster, to be added to the running cluster with `strongbox cluster
//! add-node`.
//!
//! The node gets `DIR/node-<id>/` like the nodes `dev --cluster N` made: a
//! node certificate from the development CA, a key store, a data directory
//! and a `broker.toml`, whose `[cluster]` section lists the running nodes'
//! peer addresses as `seeds` instead of `initial_members`: it forms no
//! cluster of its own and waits until a member adds it. Its ports follow
//! the cluster's numbering (node `i` on client port `P + i - 1`, peer port
//! `Q + i - 1` and metrics port `M + i - 1`, where node 1 has `P`, `Q` and
//! `M`), taken from node 1's config when the node is made;
//! `dev` does not start it or rewrite its ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use strongbox_storage::io::{FileIo, durable};

use super::cluster::{Joining, node_toml};
use super::{DEV_TRUST_DOMAIN, DevError, DevNode, io_err, mkdir_private};
use crate::config::BrokerConfig;
use crate::pki::{CertSpec, TestCa, write_file};

/// What [`new_node`] made.
#[derive(Debug, Clone)]
pub struct NewNode {
    /// The node, its directory and addresses.
    pub node: DevNode,
    /// The peer addresses of the nodes it was made beside.
    pub seeds: Vec<String>,
}

fn bad(path: &Path, message: impl Into<String>) -> DevError {
    DevError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The nodes of the development cluster in `dir`, by id, with their
/// configs (every `node-<id>/broker.toml`).
fn existing_nodes(dir: &Path) -> Result<Vec<(u64, BrokerConfig)>, DevError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let config = entry.path().join("broker.toml");
        if !config.is_file() {
            continue;
        }
        let parsed = BrokerConfig::load(&config).map_err(|e| bad(&config, e.to_string()))?;
        found.push((id, parsed));
    }
    found.sort_by_key(|(id, _)| *id);
    Ok(found)
}

/// True when the node config at `path` joins a running cluster (it has
/// `seeds` and no `initial_members`): a node [`new_node`] made, which
/// `dev --cluster N` leaves alone.
pub(super) fn is_added_node(path: &Path) -> bool {
    BrokerConfig::load(path)
        .ok()
        .and_then(|c| c.cluster)
        .is_some_and(|c| c.initial_members.is_empty() && !c.seeds.is_empty())
}

/// `base` moved by `add`, or an error naming what overflowed.
fn shifted(path: &Path, base: SocketAddr, add: u64, what: &str) -> Result<SocketAddr, DevError> {
    u16::try_from(add)
        .ok()
        .and_then(|a| base.port().checked_add(a))
        .map(|port| SocketAddr::new(base.ip(), port))
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "the {what} port of this node would be {} + {add}, past 65535",
                    base.port()
                ),
            )
        })
}

/// Makes `DIR/node-<id>/` for a node that joins the development cluster in
/// `dir`: its certificate from the cluster's CA, its key store and data
/// directories, and its `broker.toml`.
///
/// # Errors
///
/// `dir` is not a development cluster (no CA, no node 1), `id` is 0 or
/// taken, a port would pass 65535, or a file cannot be written.
pub fn new_node(dir: &Path, id: u64) -> Result<NewNode, DevError> {
    let ca_cert = dir.join("ca/ca.pem");
    let ca_key = dir.join("ca/ca.key");
    let first = dir.join("node-1/broker.toml");
    if !ca_cert.is_file() || !ca_key.is_file() || !first.is_file() {
        return Err(DevError::Incomplete {
            dir: dir.to_path_buf(),
            missing: "a development cluster (ca/ca.pem, ca/ca.key, node-1/broker.toml): make \
                      one with `strongbox-broker dev --cluster 3`"
                .into(),
        });
    }
    if id == 0 {
        return Err(bad(dir, "node ids start at 1"));
    }
    let nodes = existing_nodes(dir)?;
    if nodes.iter().any(|(n, _)| *n == id) {
        return Err(bad(
            &dir.join(format!("node-{id}")),
            format!(
                "node {id} exists already; a node id is never reused, choose one no node ever had"
            ),
        ));
    }
    let Some((_, one)) = nodes.iter().find(|(n, _)| *n == 1) else {
        return Err(bad(&first, "node 1's config does not load"));
    };
    let Some(one_cluster) = one.cluster.as_ref() else {
        return Err(bad(&first, "has no [cluster] section"));
    };
    let step = id - 1;
    let node_dir = dir.join(format!("node-{id}"));
    let node = DevNode {
        id,
        config: node_dir.join("broker.toml"),
        dir: node_dir.clone(),
        listen: shifted(&first, one.listener.addr, step, "client")?,
        peer: shifted(&first, one_cluster.peer_listen, step, "peer")?,
        metrics: shifted(&first, one.metrics.listen, step, "metrics")?,
    };
    let seeds: Vec<String> = nodes
        .iter()
        .filter_map(|(_, c)| c.cluster.as_ref().map(|c| c.peer_address()))
        .collect();

    let ca_pem = std::fs::read_to_string(&ca_cert).map_err(io_err(&ca_cert))?;
    let key_pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&ca_key).map_err(io_err(&ca_key))?);
    let ca = TestCa::load(&ca_pem, &key_pem)?;

    let staging = dir.join(format!(".node-{id}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let built = build(&staging, &node, &seeds, &ca);
    let placed = built.and_then(|()| {
        durable::sync_dir(&FileIo, &staging).map_err(|e| io_err(&staging)(e.into()))?;
        durable::rename(&FileIo, &staging, &node_dir).map_err(|e| io_err(&node_dir)(e.into()))
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(NewNode { node, seeds })
}

fn build(root: &Path, node: &DevNode, seeds: &[String], ca: &TestCa) -> Result<(), DevError> {
    mkdir_private(root)?;
    for sub in ["tls", "keys", "data"] {
        mkdir_private(&root.join(sub))?;
    }
    ca.issue(&CertSpec::node(
        DEV_TRUST_DOMAIN,
        node.id,
        &["localhost", "127.0.0.1", "::1"],
    ))?
    .write_to(&root.join("tls"), "node")?;
    let config: PathBuf = root.join("broker.toml");
    write_file(
        &config,
        node_toml(node, Joining::Seeds(seeds))?.as_bytes(),
        false,
    )?;
    for sub in ["tls", "keys", "data"] {
        let d = root.join(sub);
        durable::sync_dir(&FileIo, &d).map_err(|e| io_err(&d)(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{ensure_cluster_dir, plan_nodes};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_node_joins_through_the_running_nodes_and_dev_leaves_it_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let nodes = plan_nodes(&dir, 3, addr("127.0.0.1:17443"), addr("127.0.0.1:19644")).unwrap();
        ensure_cluster_dir(&dir, &nodes).unwrap();

        let made = new_node(&dir, 4).unwrap();
        assert_eq!(made.node.listen, addr("127.0.0.1:17446"));
        assert_eq!(made.node.peer, addr("127.0.0.1:17546"));
        assert_eq!(made.node.metrics, addr("127.0.0.1:19647"));
        assert_eq!(
            made.seeds,
            ["127.0.0.1:17543", "127.0.0.1:17544", "127.0.0.1:17545"]
        );
        let cfg = BrokerConfig::load(&made.node.config)
            .and_then(BrokerConfig::validate)
            .unwrap();
        let c = cfg.cluster.as_ref().unwrap();
        assert_eq!(c.node_id, 4);
        assert!(c.initial_members.is_empty());
        assert_eq!(c.seeds, made.seeds);
        assert_eq!(c.peer_listen, made.node.peer);
        assert_eq!(cfg.listener.addr, made.node.listen);
        let cert = std::fs::read(made.node.dir.join("tls/node.pem")).unwrap();
        let der = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(&cert).unwrap()
        };
        let identity = crate::identity::extract_identity(&der).unwrap();
        assert_eq!(identity.name, "spiffe://strongbox.dev/strongbox/node/4");
        assert!(is_added_node(&made.node.config));
        assert!(!is_added_node(&nodes[0].config));

        // Taken and zero ids are refused, and nothing is left behind.
        let err = new_node(&dir, 4).unwrap_err().to_string();
        assert!(err.contains("node 4 exists already"), "{err}");
        let err = new_node(&dir, 2).unwrap_err().to_string();
        assert!(err.contains("node 2 exists already"), "{err}");
        assert!(new_node(&dir, 0).is_err());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // `dev --cluster 3` runs again beside it.
        let again = ensure_cluster_dir(&dir, &nodes).unwrap();
        assert!(!again.created);

        // Not a development cluster: refused.
        let err = new_node(tmp.path(), 4).unwrap_err().to_string();
        assert!(err.contains("dev --cluster 3"), "{err}");
    }
}
