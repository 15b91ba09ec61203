//! What `config check` says about `[cluster]`.

use crate::config::BrokerConfig;

use super::{Level, Report};

/// One item for the section: a cluster of one, or this node, its
/// addresses and its members; a warning for an even number of initial
/// members (four voters survive no more failures than three).
pub(super) fn check_cluster(config: &BrokerConfig, r: &mut Report) {
    let Some(c) = &config.cluster else {
        r.push(
            Level::Ok,
            "cluster",
            "no [cluster] section: a cluster of one, node id 1",
        );
        return;
    };
    let how = if c.initial_members.is_empty() {
        format!("joins through seeds {}", c.seeds.join(", "))
    } else {
        let members: Vec<String> = c
            .initial_members
            .iter()
            .map(|m| format!("{} (peer {}, client {})", m.id, m.peer, m.client))
            .collect();
        format!("bootstraps with initial members {}", members.join(", "))
    };
    r.push(
        Level::Ok,
        "cluster",
        format!(
            "node {} ({}), peer address {}, client address {}, {how}",
            c.node_id,
            c.node_uri(),
            c.peer_address(),
            c.client_address(&config.listener)
        ),
    );
    let n = c.initial_members.len();
    if n > 0 && n.is_multiple_of(2) {
        r.push(
            Level::Warning,
            "cluster",
            format!(
                "{n} initial members: a majority of {n} survives no more failures than a majority \
                 of {}; use an odd number of voters",
                n - 1
            ),
        );
    }
}

/// The plan's line for the section.
pub(super) fn plan_line(config: &BrokerConfig) -> String {
    match &config.cluster {
        None => "run as a cluster of one (node id 1): no peer listener".into(),
        Some(c) => format!(
            "run as node {} of a cluster (trust domain {}); this version checks [cluster] and \
             reports the node in Metadata and cluster status, and does not yet open the peer \
             listener on {} or replicate",
            c.node_id, c.trust_domain, c.peer_listen
        ),
    }
}
