//! The material of `strongbox-broker dev --cluster N`: one development CA
//! and N node directories, created on first run and reused afterwards.
//!
//! ```text
//! DIR/                           0700
//!   ca/ca.pem  ca/ca.key         development CA (key 0600)
//!   ca/crl.pem                   its CRL, read by every node
//!   profiles/admin.toml .pem .key   as for `dev`, with `brokers` listing
//!   profiles/alice.toml ...         every node's client address
//!   profiles/bob.toml ...
//!   node-1/ .. node-N/
//!     broker.toml                the node's config, with its [cluster]
//!                                section listing every node
//!     tls/node.pem  tls/node.key node certificate: URI SAN
//!                                spiffe://strongbox.dev/strongbox/node/<id>,
//!                                DNS localhost, IP 127.0.0.1 and ::1;
//!                                server and client authentication
//!     keys/  data/               its file key store and data (0700)
//!     broker.pid  broker.log     written by `dev` while the node runs
//! ```
//!
//! Ports, from `--listen HOST:P`: node `i` (from 1) takes client port
//! `P + i - 1`, peer port `P + PEER_PORT_OFFSET + i - 1` and metrics port
//! `M + i - 1` (`M` from `--metrics-listen`, 9644 by default). Every run
//! writes the current ports into each node's config and the profiles,
//! keeping the rest of the files.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use strongbox_storage::io::{FileIo, durable};

use super::{
    DEV_TRUST_DOMAIN, DevError, PROFILES, broker_toml, io_err, is_empty_dir, mkdir_private, quoted,
    write_toml,
};
use crate::pki::{CertSpec, TestCa, write_file};

/// Peer port of node 1 is the client port of node 1 plus this.
pub const PEER_PORT_OFFSET: u16 = 100;

/// Most nodes `dev --cluster` runs.
pub const MAX_DEV_NODES: u16 = 9;

/// The addresses of one development node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevNode {
    /// Node id, from 1.
    pub id: u64,
    /// `DIR/node-<id>`.
    pub dir: PathBuf,
    /// `DIR/node-<id>/broker.toml`.
    pub config: PathBuf,
    /// Client (QUIC) address.
    pub listen: SocketAddr,
    /// Peer (QUIC) address.
    pub peer: SocketAddr,
    /// Metrics (HTTP) address.
    pub metrics: SocketAddr,
}

impl DevNode {
    /// `DIR/node-<id>/broker.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("broker.pid")
    }

    /// `DIR/node-<id>/broker.log`.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The command that runs this node (for people to copy).
    pub fn serve_command(&self, exe: &Path) -> String {
        format!("{} serve --config {}", exe.display(), self.config.display())
    }
}

/// A ready development cluster directory.
#[derive(Debug, Clone)]
pub struct DevCluster {
    /// The directory.
    pub dir: PathBuf,
    /// Its nodes, by id.
    pub nodes: Vec<DevNode>,
    /// True when this call created the directory.
    pub created: bool,
}

/// The addresses of `count` nodes for `--listen` and `--metrics-listen`.
///
/// # Errors
///
/// A port 0 (every node needs a port the others know in advance), or a
/// port range past 65535.
pub fn plan_nodes(
    dir: &Path,
    count: u16,
    listen: SocketAddr,
    metrics: SocketAddr,
) -> Result<Vec<DevNode>, DevError> {
    let bad = |message: String| DevError::Config {
        path: dir.to_path_buf(),
        message,
    };
    if !(1..=MAX_DEV_NODES).contains(&count) {
        return Err(bad(format!(
            "--cluster {count}: run 1 to {MAX_DEV_NODES} nodes"
        )));
    }
    if listen.port() == 0 || metrics.port() == 0 {
        return Err(bad(
            "--cluster needs fixed --listen and --metrics-listen ports (port 0 is for a single \
             node): each node's config names the others' addresses"
                .into(),
        ));
    }
    let port = |base: u16, add: u16, what: &str| {
        base.checked_add(add).ok_or_else(|| {
            bad(format!(
                "{what} port {base} + {add} is past 65535; choose a lower --listen or \
                 --metrics-listen port"
            ))
        })
    };
    (0..count)
        .map(|i| {
            let id = u64::from(i) + 1;
            let node_dir = dir.join(format!("node-{id}"));
            Ok(DevNode {
                id,
                config: node_dir.join("broker.toml"),
                dir: node_dir,
                listen: SocketAddr::new(listen.ip(), port(listen.port(), i, "client")?),
                peer: SocketAddr::new(
                    listen.ip(),
                    port(listen.port(), PEER_PORT_OFFSET.saturating_add(i), "peer")?,
                ),
                metrics: SocketAddr::new(metrics.ip(), port(metrics.port(), i, "metrics")?),
            })
        })
        .collect()
}

/// Creates the cluster directory at `dir` if it does not exist (or is
/// empty), reuses it if it holds `nodes.len()` nodes, and writes the
/// current addresses into every node's config and every profile.
///
/// # Errors
///
/// The directory holds something else (or another number of nodes), or a
/// file cannot be written.
pub fn ensure_cluster_dir(dir: &Path, nodes: &[DevNode]) -> Result<DevCluster, DevError> {
    let complete = |d: &Path| {
        d.join("ca/ca.pem").is_file()
            && PROFILES
                .iter()
                .all(|p| d.join(format!("profiles/{}.toml", p.name)).is_file())
            && nodes.iter().all(|n| {
                let rel = n.dir.strip_prefix(dir).unwrap_or(&n.dir);
                d.join(rel).join("broker.toml").is_file()
            })
    };
    let created = if complete(dir) {
        let extra = dir.join(format!("node-{}", nodes.len() + 1));
        // A node added later (`pki new-node`) is not one of dev's nodes.
        if extra.exists() && !super::join::is_added_node(&extra.join("broker.toml")) {
            return Err(DevError::Incomplete {
                dir: dir.to_path_buf(),
                missing: format!(
                    "nothing; it holds more than {} nodes ({} exists): run with the --cluster it \
                     was made with",
                    nodes.len(),
                    extra.display()
                ),
            });
        }
        false
    } else {
        if dir.exists() && !is_empty_dir(dir)? {
            return Err(DevError::Incomplete {
                dir: dir.to_path_buf(),
                missing: format!(
                    "a development cluster of {} nodes (ca/, profiles/, node-1/ ...)",
                    nodes.len()
                ),
            });
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| super::DEFAULT_DEV_DIR.to_string());
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        durable::create_dir_all(&FileIo, &parent).map_err(|e| io_err(&parent)(e.into()))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let built = build(&staging, dir, nodes);
        let placed = built.and_then(|()| {
            durable::sync_dir(&FileIo, &staging).map_err(|e| io_err(&staging)(e.into()))?;
            durable::rename(&FileIo, &staging, dir).map_err(|e| io_err(dir)(e.into()))
        });
        if let Err(e) = placed {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        true
    };
    for n in nodes {
        set_node_addresses(n, nodes)?;
    }
    let clients: Vec<String> = nodes.iter().map(|n| n.listen.to_string()).collect();
    for p in PROFILES {
        let path = dir.join("profiles").join(format!("{}.toml", p.name));
        set_profile_brokers(&path, &clients)?;
    }
    Ok(DevCluster {
        dir: dir.to_path_buf(),
        nodes: nodes.to_vec(),
        created,
    })
}

/// Generates everything under `root` (renamed to `dir` afterwards).
fn build(root: &Path, dir: &Path, nodes: &[DevNode]) -> Result<(), DevError> {
    mkdir_private(root)?;
    for sub in ["ca", "profiles"] {
        mkdir_private(&root.join(sub))?;
    }
    let ca = TestCa::new("Strongbox development CA")?;
    write_file(&root.join("ca/ca.pem"), ca.cert_pem().as_bytes(), false)?;
    write_file(&root.join("ca/ca.key"), ca.key_pem().as_bytes(), true)?;
    write_file(&root.join("ca/crl.pem"), ca.crl(&[], 1)?.as_bytes(), false)?;
    let clients: Vec<String> = nodes.iter().map(|n| n.listen.to_string()).collect();
    for p in PROFILES {
        let mut spec = CertSpec::client_uri(p.principal);
        spec.common_name = Some(p.name.to_string());
        ca.issue(&spec)?.write_to(&root.join("profiles"), p.name)?;
        write_file(
            &root.join("profiles").join(format!("{}.toml", p.name)),
            profile_toml(p.name, &clients).as_bytes(),
            false,
        )?;
    }
    for n in nodes {
        let rel = n.dir.strip_prefix(dir).unwrap_or(&n.dir);
        let node_dir = root.join(rel);
        mkdir_private(&node_dir)?;
        for sub in ["tls", "keys", "data"] {
            mkdir_private(&node_dir.join(sub))?;
        }
        ca.issue(&CertSpec::node(
            DEV_TRUST_DOMAIN,
            n.id,
            &["localhost", "127.0.0.1", "::1"],
        ))?
        .write_to(&node_dir.join("tls"), "node")?;
        write_file(
            &node_dir.join("broker.toml"),
            node_toml(n, Joining::Initial(nodes))?.as_bytes(),
            false,
        )?;
        for sub in ["tls", "keys", "data"] {
            let d = node_dir.join(sub);
            durable::sync_dir(&FileIo, &d).map_err(|e| io_err(&d)(e.into()))?;
        }
    }
    for sub in ["ca", "profiles"] {
        let d = root.join(sub);
        durable::sync_dir(&FileIo, &d).map_err(|e| io_err(&d)(e.into()))?;
    }
    Ok(())
}

fn profile_toml(name: &str, brokers: &[String]) -> String {
    let list: Vec<String> = brokers.iter().map(|b| quoted(b)).collect();
    format!(
        "# Strongbox client profile \"{name}\" (development cluster). Paths are relative to \
         this file.\n\
         brokers = [{}]\n\
         server_name = \"localhost\"\n\
         ca = \"../ca/ca.pem\"\n\
         cert = \"{name}.pem\"\n\
         key = \"{name}.key\"\n",
        list.join(", ")
    )
}

/// How a node's `[cluster]` section finds its cluster.
#[derive(Debug, Clone, Copy)]
pub(super) enum Joining<'a> {
    /// One of the nodes that form a new cluster together.
    Initial(&'a [DevNode]),
    /// A node added later: it joins through these peer addresses once a
    /// member adds it.
    Seeds(&'a [String]),
}

/// A node's config: the single-node development config with the node's
/// own certificate, the shared CA and CRL, and a `[cluster]` section.
pub(super) fn node_toml(node: &DevNode, joining: Joining<'_>) -> Result<String, DevError> {
    let base = broker_toml(node.listen);
    let mut doc: toml_edit::DocumentMut = base.parse().map_err(|e| DevError::Config {
        path: node.config.clone(),
        message: format!("{e}"),
    })?;
    let path = &node.config;
    set(
        &mut doc,
        path,
        "broker",
        "id",
        format!("strongbox-dev-node-{}", node.id),
    )?;
    set(&mut doc, path, "tls", "cert", "tls/node.pem")?;
    set(&mut doc, path, "tls", "key", "tls/node.key")?;
    set(&mut doc, path, "tls", "client_ca", "../ca/ca.pem")?;
    let mut crls = toml_edit::Array::new();
    crls.push("../ca/crl.pem");
    set(&mut doc, path, "tls", "crls", crls)?;
    let mut text = doc.to_string();
    let _ = write!(
        text,
        "\n# This node's place in the development cluster (docs/OPERATIONS.md,\n\
         # \"Running a cluster\"). Peer ports are client ports + {PEER_PORT_OFFSET}.\n\
         [cluster]\nnode_id = {}\npeer_listen = {}\ntrust_domain = {}\n",
        node.id,
        quoted(&node.peer.to_string()),
        quoted(DEV_TRUST_DOMAIN),
    );
    match joining {
        Joining::Initial(nodes) => {
            for n in nodes {
                let _ = write!(
                    text,
                    "\n[[cluster.initial_members]]\nid = {}\npeer = {}\nclient = {}\n",
                    n.id,
                    quoted(&n.peer.to_string()),
                    quoted(&n.listen.to_string())
                );
            }
        }
        Joining::Seeds(seeds) => {
            let list: Vec<String> = seeds.iter().map(|s| quoted(s)).collect();
            let _ = write!(
                text,
                "# A node added to a running cluster: it waits until a member adds it\n\
                 # (`strongbox cluster add-node`), then catches up.\nseeds = [{}]\n",
                list.join(", ")
            );
        }
    }
    Ok(text)
}

/// Writes the node's and its peers' current addresses into its config,
/// keeping everything else.
fn set_node_addresses(node: &DevNode, nodes: &[DevNode]) -> Result<(), DevError> {
    let path = &node.config;
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| DevError::Config {
        path: path.clone(),
        message: format!("{e}"),
    })?;
    let not_table = |what: &str| DevError::Config {
        path: path.clone(),
        message: format!("`{what}` is missing or not a table"),
    };
    set(&mut doc, path, "listener", "addr", node.listen.to_string())?;
    set(
        &mut doc,
        path,
        "metrics",
        "listen",
        node.metrics.to_string(),
    )?;
    let cluster = doc
        .get_mut("cluster")
        .and_then(|c| c.as_table_like_mut())
        .ok_or_else(|| not_table("cluster"))?;
    cluster.insert("peer_listen", toml_edit::value(node.peer.to_string()));
    let members = cluster
        .get_mut("initial_members")
        .and_then(|m| m.as_array_of_tables_mut())
        .ok_or_else(|| not_table("cluster.initial_members"))?;
    for table in members.iter_mut() {
        let id = table.get("id").and_then(|v| v.as_integer());
        if let Some(n) = nodes.iter().find(|n| id == i64::try_from(n.id).ok()) {
            table.insert("peer", toml_edit::value(n.peer.to_string()));
            table.insert("client", toml_edit::value(n.listen.to_string()));
        }
    }
    write_toml(path, &text, &doc)
}

/// Sets `section.key` in `doc` (the section made when missing), or says
/// that `section` is not a table, which an edit by hand may have done.
fn set(
    doc: &mut toml_edit::DocumentMut,
    path: &Path,
    section: &str,
    key: &str,
    value: impl Into<toml_edit::Value>,
) -> Result<(), DevError> {
    let table = doc
        .entry(section)
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or_else(|| DevError::Config {
            path: path.to_path_buf(),
            message: format!("`{section}` is not a table"),
        })?;
    table.insert(key, toml_edit::value(value));
    Ok(())
}

fn set_profile_brokers(path: &Path, brokers: &[String]) -> Result<(), DevError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| DevError::Profile {
        path: path.to_path_buf(),
        message: format!("{e}"),
    })?;
    let mut list = toml_edit::Array::new();
    for b in brokers {
        list.push(b.as_str());
    }
    doc.insert("brokers", toml_edit::value(list));
    write_toml(path, &text, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ports_follow_listen_and_metrics() {
        let nodes = plan_nodes(
            Path::new("d"),
            3,
            addr("127.0.0.1:7443"),
            addr("127.0.0.1:9644"),
        )
        .unwrap();
        let ports: Vec<(u64, u16, u16, u16)> = nodes
            .iter()
            .map(|n| (n.id, n.listen.port(), n.peer.port(), n.metrics.port()))
            .collect();
        assert_eq!(
            ports,
            [
                (1, 7443, 7543, 9644),
                (2, 7444, 7544, 9645),
                (3, 7445, 7545, 9646)
            ]
        );
        assert_eq!(nodes[1].config, Path::new("d/node-2/broker.toml"));
        assert!(plan_nodes(Path::new("d"), 3, addr("127.0.0.1:0"), addr("127.0.0.1:1")).is_err());
        assert!(
            plan_nodes(
                Path::new("d"),
                3,
                addr("127.0.0.1:65500"),
                addr("127.0.0.1:1")
            )
            .is_err()
        );
        assert!(plan_nodes(Path::new("d"), 0, addr("127.0.0.1:1"), addr("127.0.0.1:1")).is_err());
    }

    #[test]
    fn a_new_cluster_directory_holds_valid_node_configs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let nodes = plan_nodes(&dir, 3, addr("127.0.0.1:17443"), addr("127.0.0.1:19644")).unwrap();
        let cluster = ensure_cluster_dir(&dir, &nodes).unwrap();
        assert!(cluster.created);
        for n in &nodes {
            let cfg = crate::config::BrokerConfig::load(&n.config)
                .and_then(crate::config::BrokerConfig::validate)
                .unwrap_or_else(|e| panic!("node {}: {e}", n.id));
            let c = cfg.cluster.as_ref().unwrap();
            assert_eq!(c.node_id, n.id);
            assert_eq!(c.initial_members.len(), 3);
            assert_eq!(cfg.listener.addr, n.listen);
            assert_eq!(cfg.metrics.listen, n.metrics);
            let cert = std::fs::read_to_string(n.dir.join("tls/node.pem")).unwrap();
            let der = rustls::pki_types::CertificateDer::from(rustls_pemfile_der(&cert));
            let id = crate::identity::extract_identity(&der).unwrap();
            assert_eq!(id.name, c.node_uri());
        }
        let profile = std::fs::read_to_string(dir.join("profiles/alice.toml")).unwrap();
        assert!(
            profile.contains(
                "brokers = [\"127.0.0.1:17443\", \"127.0.0.1:17444\", \"127.0.0.1:17445\"]"
            ),
            "{profile}"
        );

        // A second run reuses it with new ports, written everywhere.
        let moved = plan_nodes(&dir, 3, addr("127.0.0.1:27443"), addr("127.0.0.1:29644")).unwrap();
        let again = ensure_cluster_dir(&dir, &moved).unwrap();
        assert!(!again.created);
        let cfg = crate::config::BrokerConfig::load(&moved[2].config)
            .and_then(crate::config::BrokerConfig::validate)
            .unwrap();
        assert_eq!(cfg.listener.addr, addr("127.0.0.1:27445"));
        let members: Vec<&str> = cfg
            .cluster
            .as_ref()
            .unwrap()
            .initial_members
            .iter()
            .map(|m| m.client.as_str())
            .collect();
        assert_eq!(
            members,
            ["127.0.0.1:27443", "127.0.0.1:27444", "127.0.0.1:27445"]
        );
        let profile = std::fs::read_to_string(dir.join("profiles/bob.toml")).unwrap();
        assert!(profile.contains("127.0.0.1:27445"), "{profile}");

        // Another node count is refused, not half-overwritten.
        let five = plan_nodes(&dir, 2, addr("127.0.0.1:27443"), addr("127.0.0.1:29644")).unwrap();
        let err = ensure_cluster_dir(&dir, &five).unwrap_err().to_string();
        assert!(err.contains("more than 2 nodes"), "{err}");
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
