//! `strongbox cluster ...`: the cluster's members and their state, and
//! membership changes.

use clap::Subcommand;
use serde_json::{Value, json};
use strongbox_client::protocol::model::ClusterStatusInfo;

use crate::cli::GlobalArgs;
use crate::commands::Out;
use crate::connect;

/// `strongbox cluster ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Show the cluster's nodes: address, role, term, last contact, lag.
    #[command(after_help = "\
Asks the broker of the profile (the first that answers of its brokers) for the
members of the metadata group as it sees them: each node's id, client and peer
address, role (leader, follower, candidate, learner, unknown), term, milliseconds
since it last heard from the node, and how many log entries the node is behind.
Needs `describe` on `*`. A broker without [cluster] (and, in this version, every
broker) reports a cluster of one: itself, leader of term 1.

With --json: {\"node_id\", \"leader\", \"term\", \"nodes\": [{\"id\",
\"client_addr\", \"peer_addr\", \"role\", \"term\", \"last_contact_ms\",
\"lag\"}]}.

Example:
  strongbox cluster status --json")]
    Status,
    /// Add a node to the cluster (`admin` on `*`; audited).
    #[command(after_help = "\
ID is the new node's id (never used before), PEER_ADDR and CLIENT_ADDR its peer
and client addresses (host:port). A broker that runs as a single node refuses
with invalid_request. Sent to a node that is not the leader, it follows the
leader hint.

Example:
  strongbox cluster add-node 4 10.0.0.4:7444 10.0.0.4:7443")]
    AddNode {
        /// The new node's id.
        id: u64,
        /// Its peer address, host:port.
        peer_addr: String,
        /// Its client address, host:port.
        client_addr: String,
    },
    /// Remove a node from the cluster (`admin` on `*`; audited).
    #[command(after_help = "\
A removed node's id is never used again. A broker that runs as a single node
refuses with invalid_request.

Example:
  strongbox cluster remove-node 4")]
    RemoveNode {
        /// The node's id.
        id: u64,
    },
}

pub(crate) async fn run(global: &GlobalArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let client = connect::connect(global).await?;
    let admin = client.admin();
    let mut out = Out::new();
    let result = async {
        match command {
            ClusterCommand::Status => {
                let status = admin.cluster_status().await?;
                if global.json {
                    out.json(&status_json(&status))?;
                } else {
                    out.write(&status_text(&status))?;
                }
            }
            ClusterCommand::AddNode {
                id,
                peer_addr,
                client_addr,
            } => {
                let message = admin.cluster_add_node(id, peer_addr, client_addr).await?;
                done(&mut out, global.json, "added", id, &message)?;
            }
            ClusterCommand::RemoveNode { id } => {
                let message = admin.cluster_remove_node(id).await?;
                done(&mut out, global.json, "removed", id, &message)?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    client.close().await;
    result
}

fn done(out: &mut Out, as_json: bool, what: &str, id: u64, message: &str) -> anyhow::Result<()> {
    if as_json {
        out.json(&json!({ what: id, "message": message }))?;
    } else if message.is_empty() {
        out.line(&format!("{what} node {id}"))?;
    } else {
        out.line(message)?;
    }
    Ok(())
}

fn status_json(s: &ClusterStatusInfo) -> Value {
    json!({
        "node_id": s.node_id,
        "leader": s.leader,
        "term": s.term,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "client_addr": n.client_addr,
            "peer_addr": n.peer_addr,
            "role": n.role.name(),
            "term": n.term,
            "last_contact_ms": n.last_contact_ms,
            "lag": n.lag,
        })).collect::<Vec<_>>(),
    })
}

fn status_text(s: &ClusterStatusInfo) -> String {
    let leader = s
        .leader
        .map_or_else(|| "none".to_owned(), |l| l.to_string());
    let mut text = format!(
        "answered by node {}; leader {leader}; term {}\n{:<6} {:<22} {:<22} {:<10} {:>6} {:>14} {:>6}\n",
        s.node_id, s.term, "ID", "CLIENT", "PEER", "ROLE", "TERM", "LAST CONTACT", "LAG"
    );
    for n in &s.nodes {
        let contact = n
            .last_contact_ms
            .map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms"));
        let lag = n.lag.map_or_else(|| "-".to_owned(), |l| l.to_string());
        let peer = if n.peer_addr.is_empty() {
            "-"
        } else {
            &n.peer_addr
        };
        text.push_str(&format!(
            "{:<6} {:<22} {:<22} {:<10} {:>6} {:>14} {:>6}\n",
            n.id,
            n.client_addr,
            peer,
            n.role.name(),
            n.term,
            contact,
            lag
        ));
    }
    text
}
