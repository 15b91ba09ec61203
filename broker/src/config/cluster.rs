//! `[cluster]`: this node's place in a cluster of brokers.
//!
//! A config without the section is a cluster of one: node id 1, no peer
//! listener, every partition led here. With it, the node has a numeric id
//! (never reused: a new node always gets a new id), a peer address the
//! other nodes reach it on, the trust domain of node certificates, and
//! either the initial members (to bootstrap a new cluster, all nodes with
//! the same list) or seeds (peer addresses of running members, to join an
//! existing one).
//!
//! Checked once at start with precise messages: a wrong cluster config is
//! caught before a node joins the wrong cluster or bootstraps a second one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, HumanDuration, ListenerConfig};

/// The node id of a broker without `[cluster]`.
pub const SINGLE_NODE_ID: u64 = 1;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: non-zero, unique in the cluster and never reused.
    pub node_id: u64,
    /// UDP address of the peer (node-to-node) QUIC listener.
    pub peer_listen: SocketAddr,
    /// `host:port` other nodes reach the peer listener on; `peer_listen`
    /// when absent.
    #[serde(default)]
    pub peer_advertise: Option<String>,
    /// `host:port` clients reach this node on; `listener.addr` when absent.
    #[serde(default)]
    pub client_advertise: Option<String>,
    /// Trust domain of node certificates: a node's certificate carries the
    /// URI `spiffe://<trust_domain>/strongbox/node/<id>`.
    pub trust_domain: String,
    /// The members of a new cluster, this node included; used only to
    /// bootstrap it (the same list on every initial node).
    #[serde(default)]
    pub initial_members: Vec<MemberConfig>,
    /// Peer addresses of running members to join through.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// How often the leader sends heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: HumanDuration,
    /// Shortest time without a heartbeat before a follower stands for
    /// election.
    #[serde(default = "default_election_min")]
    pub election_timeout_min: HumanDuration,
    /// Longest such time (each follower draws its own in between, so that
    /// elections rarely collide).
    #[serde(default = "default_election_max")]
    pub election_timeout_max: HumanDuration,
    /// Limit on one request to a peer.
    #[serde(default = "default_rpc_timeout")]
    pub rpc_timeout: HumanDuration,
}

/// One `[[cluster.initial_members]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Its node id.
    pub id: u64,
    /// Its peer address, `host:port`.
    pub peer: String,
    /// Its client address, `host:port`.
    pub client: String,
}

fn default_heartbeat() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}

fn default_election_min() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_election_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_rpc_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

impl ClusterConfig {
    /// The peer address other nodes use: `peer_advertise`, or
    /// `peer_listen`.
    pub fn peer_address(&self) -> String {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.to_string())
    }

    /// The client address clients use: `client_advertise`, or the
    /// listener's address.
    pub fn client_address(&self, listener: &ListenerConfig) -> String {
        self.client_advertise
            .clone()
            .unwrap_or_else(|| listener.addr.to_string())
    }

    /// The URI SAN of this node's certificate.
    pub fn node_uri(&self) -> String {
        node_uri(&self.trust_domain, self.node_id)
    }
}

/// `spiffe://<trust_domain>/strongbox/node/<id>`: the URI SAN of a node
/// certificate.
pub fn node_uri(trust_domain: &str, id: u64) -> String {
    format!("spiffe://{trust_domain}/strongbox/node/{id}")
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, message)
}

/// True for `host:port` and `[v6]:port` with a port from 1 to 65535.
pub(crate) fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.trim().is_empty()
            && !host.contains(char::is_whitespace)
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn host_port(field: &str, value: &str) -> Result<(), ConfigError> {
    if is_host_port(value) {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "{value:?} is not host:port (a host name or IP, an IPv6 one in brackets, and a \
                 port from 1 to 65535), such as 10.0.0.2:7444"
            ),
        ))
    }
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`.
fn trust_domain(value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            "cluster.trust_domain",
            format!(
                "{value:?} is not a trust domain: use 1 to 255 lowercase letters, digits, '.', '-' \
                 and '_' (the host part of spiffe://<trust_domain>/strongbox/node/<id>)"
            ),
        ))
    }
}

fn duration(field: &str, v: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(err(
            field,
            format!(
                "{} is out of range; use {} to {}",
                humantime::format_duration(v),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// Checks the section and its relations to `[listener]`.
pub(super) fn validate(c: &ClusterConfig, listener: &ListenerConfig) -> Result<(), ConfigError> {
    if c.node_id == 0 {
        return Err(err(
            "cluster.node_id",
            "must not be 0; give each node its own id from 1 up, never reusing the id of a \
             removed node",
        ));
    }
    trust_domain(&c.trust_domain)?;
    peer_addresses(c, listener)?;
    if let Some(a) = &c.client_advertise {
        host_port("cluster.client_advertise", a)?;
    } else if listener.addr.ip().is_unspecified() || listener.addr.port() == 0 {
        return Err(err(
            "cluster.client_advertise",
            format!(
                "is needed because listener.addr ({}) is not an address clients can use; set the \
                 host:port clients reach this node on",
                listener.addr
            ),
        ));
    }
    membership(c, listener)?;
    timeouts(c)
}

fn peer_addresses(c: &ClusterConfig, listener: &ListenerConfig) -> Result<(), ConfigError> {
    if c.peer_listen.port() == 0 {
        return Err(err(
            "cluster.peer_listen",
            "needs a fixed port: the other nodes find this one at the address they were given",
        ));
    }
    let l = listener.addr;
    let overlap = l.ip() == c.peer_listen.ip()
        || l.ip().is_unspecified()
        || c.peer_listen.ip().is_unspecified();
    if l.port() == c.peer_listen.port() && overlap {
        return Err(err(
            "cluster.peer_listen",
            format!(
                "{} is the client listener's UDP port (listener.addr = {l}); give the peer \
                 listener a port of its own",
                c.peer_listen
            ),
        ));
    }
    match &c.peer_advertise {
        Some(a) => host_port("cluster.peer_advertise", a),
        None if c.peer_listen.ip().is_unspecified() => Err(err(
            "cluster.peer_advertise",
            format!(
                "is needed because peer_listen ({}) binds every address; set the host:port the \
                 other nodes reach this node on",
                c.peer_listen
            ),
        )),
        None => Ok(()),
    }
}

fn membership(c: &ClusterConfig, listener: &ListenerConfig) -> Result<(), ConfigError> {
    match (c.initial_members.is_empty(), c.seeds.is_empty()) {
        (true, true) => {
            return Err(err(
                "cluster.initial_members",
                "give initial_members to bootstrap a new cluster (every initial node with the \
                 same list), or seeds (peer addresses of running members) to join an existing one",
            ));
        }
        (false, false) => {
            return Err(err(
                "cluster.seeds",
                "give initial_members (to bootstrap a new cluster) or seeds (to join an existing \
                 one), not both",
            ));
        }
        _ => {}
    }
    let own_peer = c.peer_address();
    let mut ids = HashSet::new();
    let mut peers = HashSet::new();
    let mut clients = HashSet::new();
    for (i, m) in c.initial_members.iter().enumerate() {
        let field = |f: &str| format!("cluster.initial_members[{i}].{f}");
        if m.id == 0 {
            return Err(err(field("id"), "must not be 0"));
        }
        if !ids.insert(m.id) {
            return Err(err(
                field("id"),
                format!(
                    "node id {} is listed twice; each member needs its own id",
                    m.id
                ),
            ));
        }
        host_port(&field("peer"), &m.peer)?;
        host_port(&field("client"), &m.client)?;
        if !peers.insert(m.peer.as_str()) {
            return Err(err(
                field("peer"),
                format!("{} is the peer address of an earlier member too", m.peer),
            ));
        }
        if !clients.insert(m.client.as_str()) {
            return Err(err(
                field("client"),
                format!(
                    "{} is the client address of an earlier member too",
                    m.client
                ),
            ));
        }
        if m.id == c.node_id {
            if m.peer != own_peer {
                return Err(err(
                    field("peer"),
                    format!(
                        "this node ({}) is listed with peer {} but advertises {own_peer} \
                         (cluster.peer_advertise, or peer_listen); make them the same",
                        m.id, m.peer
                    ),
                ));
            }
            let own_client = c.client_address(listener);
            if m.client != own_client {
                return Err(err(
                    field("client"),
                    format!(
                        "this node ({}) is listed with client {} but clients reach it on \
                         {own_client} (cluster.client_advertise, or listener.addr); make them \
                         the same",
                        m.id, m.client
                    ),
                ));
            }
        }
    }
    if !c.initial_members.is_empty() && !ids.contains(&c.node_id) {
        return Err(err(
            "cluster.initial_members",
            format!(
                "this node (cluster.node_id = {}) is not among them; list every initial node, \
                 this one included, or use seeds to join an existing cluster",
                c.node_id
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, s) in c.seeds.iter().enumerate() {
        let field = format!("cluster.seeds[{i}]");
        host_port(&field, s)?;
        if *s == own_peer {
            return Err(err(
                field,
                format!("{s} is this node's own peer address; seeds are other, running members"),
            ));
        }
        if !seen.insert(s.as_str()) {
            return Err(err(field, format!("{s} is listed twice")));
        }
    }
    Ok(())
}

fn timeouts(c: &ClusterConfig) -> Result<(), ConfigError> {
    let ms = Duration::from_millis;
    let minute = Duration::from_secs(60);
    duration(
        "cluster.heartbeat_interval",
        c.heartbeat_interval.0,
        ms(10),
        Duration::from_secs(10),
    )?;
    duration(
        "cluster.election_timeout_min",
        c.election_timeout_min.0,
        ms(50),
        minute,
    )?;
    duration(
        "cluster.election_timeout_max",
        c.election_timeout_max.0,
        ms(50),
        minute,
    )?;
    duration("cluster.rpc_timeout", c.rpc_timeout.0, ms(10), minute)?;
    if c.election_timeout_min.0 >= c.election_timeout_max.0 {
        return Err(err(
            "cluster.election_timeout_min",
            format!(
                "{} must be shorter than election_timeout_max ({}): each node draws its timeout \
                 between the two, so that elections rarely collide",
                c.election_timeout_min, c.election_timeout_max
            ),
        ));
    }
    if c.heartbeat_interval.0.saturating_mul(2) > c.election_timeout_min.0 {
        return Err(err(
            "cluster.heartbeat_interval",
            format!(
                "{} must be at most half of election_timeout_min ({}), or one late heartbeat \
                 starts an election",
                c.heartbeat_interval, c.election_timeout_min
            ),
        ));
    }
    if c.rpc_timeout.0 > c.election_timeout_max.0 {
        return Err(err(
            "cluster.rpc_timeout",
            format!(
                "{} must not exceed election_timeout_max ({}): a peer that answers that late \
                 is as good as down",
                c.rpc_timeout, c.election_timeout_max
            ),
        ));
    }
    Ok(())
}
