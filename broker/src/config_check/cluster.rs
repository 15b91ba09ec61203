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
            "run as node {} of a cluster (trust domain {}): peer listener on {}, metadata \
             replicated through the cluster; partition data stays on each node (not replicated \
             in this version)",
            c.node_id, c.trust_domain, c.peer_listen
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: &str) -> BrokerConfig {
        let text = format!(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n\
             [listener]\naddr = \"127.0.0.1:7443\"\n{cluster}"
        );
        BrokerConfig::from_toml_str(&text, std::path::Path::new("/")).expect("parses")
    }

    #[test]
    fn the_report_names_the_node_its_addresses_and_members() {
        let mut r = Report::default();
        check_cluster(&config(""), &mut r);
        assert_eq!(r.items.len(), 1);
        assert!(r.items[0].message.contains("a cluster of one, node id 1"));

        let two = "[cluster]\nnode_id = 2\npeer_listen = \"127.0.0.1:7543\"\n\
                   trust_domain = \"t\"\n\
                   initial_members = [{ id = 1, peer = \"h1:7543\", client = \"h1:7443\" }, \
                   { id = 2, peer = \"127.0.0.1:7543\", client = \"127.0.0.1:7443\" }]\n";
        let mut r = Report::default();
        let c = config(two);
        check_cluster(&c, &mut r);
        let ok = &r.items[0];
        assert_eq!(ok.level, Level::Ok);
        for needle in [
            "node 2 (spiffe://t/strongbox/node/2)",
            "peer address 127.0.0.1:7543",
            "client address 127.0.0.1:7443",
            "1 (peer h1:7543, client h1:7443)",
        ] {
            assert!(ok.message.contains(needle), "{needle}: {}", ok.message);
        }
        assert_eq!(
            r.items[1].level,
            Level::Warning,
            "two voters: {:?}",
            r.items
        );
        assert!(plan_line(&c).contains("peer listener on"));

        let seeds = "[cluster]\nnode_id = 4\npeer_listen = \"127.0.0.1:7543\"\n\
                     trust_domain = \"t\"\nseeds = [\"h1:7543\"]\n";
        let mut r = Report::default();
        check_cluster(&config(seeds), &mut r);
        assert_eq!(r.items.len(), 1);
        assert!(r.items[0].message.contains("joins through seeds h1:7543"));
    }
}
