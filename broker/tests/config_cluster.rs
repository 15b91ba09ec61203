//! `[cluster]`: what a valid section gives, and every mistake refused with
//! a message naming its field.

use std::path::Path;
use std::time::Duration;

use strongbox_broker::config::{BrokerConfig, ConfigError};

fn tls_section(dir: &Path) -> String {
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n".to_string()
}

/// A three-node `[cluster]` for node 2, with `extra` lines appended to the
/// section (before the members) and `listener` as the client address.
fn three_nodes(extra: &str) -> String {
    format!(
        "[listener]\naddr = \"127.0.0.1:7001\"\n\n[cluster]\nnode_id = 2\n\
         peer_listen = \"127.0.0.1:8001\"\ntrust_domain = \"strongbox.dev\"\n{extra}\n\
         [[cluster.initial_members]]\nid = 1\npeer = \"127.0.0.1:8000\"\nclient = \"127.0.0.1:7000\"\n\
         [[cluster.initial_members]]\nid = 2\npeer = \"127.0.0.1:8001\"\nclient = \"127.0.0.1:7001\"\n\
         [[cluster.initial_members]]\nid = 3\npeer = \"127.0.0.1:8002\"\nclient = \"127.0.0.1:7002\"\n"
    )
}

fn parse(body: &str) -> Result<BrokerConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}\n{body}", tls_section(dir.path()));
    BrokerConfig::from_toml_str(&text, dir.path()).and_then(BrokerConfig::validate)
}

#[track_caller]
fn assert_refused(body: &str, field: &str, needle: &str) {
    let e = match parse(body) {
        Ok(_) => panic!("accepted:\n{body}"),
        Err(e) => e,
    };
    assert_eq!(
        e.field(),
        Some(field),
        "wrong field for:\n{body}\nerror: {e}"
    );
    let text = e.to_string();
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}

#[test]
fn without_the_section_the_broker_is_node_1_of_a_cluster_of_one() {
    let cfg = parse("").expect("valid");
    assert!(cfg.cluster.is_none());
    assert_eq!(cfg.node_id(), 1);
}

#[test]
fn a_three_node_section_parses_with_its_defaults() {
    let cfg = parse(&three_nodes("")).expect("valid");
    assert_eq!(cfg.node_id(), 2);
    let c = cfg.cluster.as_ref().expect("section");
    assert_eq!(c.initial_members.len(), 3);
    assert_eq!(c.peer_address(), "127.0.0.1:8001");
    assert_eq!(c.client_address(&cfg.listener), "127.0.0.1:7001");
    assert_eq!(c.node_uri(), "spiffe://strongbox.dev/strongbox/node/2");
    assert_eq!(c.heartbeat_interval.0, Duration::from_millis(250));
    assert_eq!(c.election_timeout_min.0, Duration::from_secs(1));
    assert_eq!(c.election_timeout_max.0, Duration::from_secs(2));
    assert_eq!(c.rpc_timeout.0, Duration::from_secs(1));

    let cfg = parse(&three_nodes(
        "heartbeat_interval = \"100ms\"\nelection_timeout_min = \"500ms\"\n\
         election_timeout_max = \"900ms\"\nrpc_timeout = \"300ms\"\n",
    ))
    .expect("valid");
    let c = cfg.cluster.as_ref().expect("section");
    assert_eq!(c.heartbeat_interval.0, Duration::from_millis(100));
    assert_eq!(c.election_timeout_max.0, Duration::from_millis(900));
}

#[test]
fn joining_through_seeds_needs_no_members() {
    let body = "[listener]\naddr = \"10.0.0.4:7443\"\n[cluster]\nnode_id = 4\n\
                peer_listen = \"0.0.0.0:7444\"\npeer_advertise = \"node4.example:7444\"\n\
                trust_domain = \"prod\"\nseeds = [\"node1.example:7444\", \"10.0.0.2:7444\"]\n";
    let cfg = parse(body).expect("valid");
    let c = cfg.cluster.as_ref().expect("section");
    assert_eq!(c.peer_address(), "node4.example:7444");
    assert_eq!(c.seeds.len(), 2);
}

#[test]
fn unknown_keys_are_named() {
    assert_refused(
        &three_nodes("nodeid = 3\n"),
        "cluster.nodeid",
        "unknown field",
    );
    assert_refused(
        &three_nodes("").replace("id = 3\n", "id = 3\nrole = \"voter\"\n"),
        "cluster.initial_members[2].role",
        "unknown field",
    );
}

#[test]
fn node_id_zero_is_refused() {
    assert_refused(
        &three_nodes("").replace("node_id = 2", "node_id = 0"),
        "cluster.node_id",
        "must not be 0",
    );
    assert_refused(
        &three_nodes("").replace("id = 1\n", "id = 0\n"),
        "cluster.initial_members[0].id",
        "must not be 0",
    );
}

#[test]
fn duplicate_members_are_refused() {
    assert_refused(
        &three_nodes("").replace("id = 3\n", "id = 1\n"),
        "cluster.initial_members[2].id",
        "node id 1 is listed twice",
    );
    assert_refused(
        &three_nodes("").replace("peer = \"127.0.0.1:8002\"", "peer = \"127.0.0.1:8000\""),
        "cluster.initial_members[2].peer",
        "peer address of an earlier member",
    );
    assert_refused(
        &three_nodes("").replace("client = \"127.0.0.1:7002\"", "client = \"127.0.0.1:7000\""),
        "cluster.initial_members[2].client",
        "client address of an earlier member",
    );
}

#[test]
fn this_node_must_be_among_the_initial_members() {
    let body = three_nodes("")
        .replace("node_id = 2", "node_id = 9")
        .replace(
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"127.0.0.1:8009\"",
        );
    assert_refused(
        &body,
        "cluster.initial_members",
        "cluster.node_id = 9) is not among them",
    );
}

#[test]
fn this_nodes_entry_must_match_its_addresses() {
    assert_refused(
        &three_nodes("").replace(
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"127.0.0.1:8005\"",
        ),
        "cluster.initial_members[1].peer",
        "advertises 127.0.0.1:8005",
    );
    assert_refused(
        &three_nodes("").replace("addr = \"127.0.0.1:7001\"", "addr = \"127.0.0.1:7005\""),
        "cluster.initial_members[1].client",
        "clients reach it on 127.0.0.1:7005",
    );
}

#[test]
fn members_or_seeds_but_not_both_nor_neither() {
    let base = "[listener]\naddr = \"127.0.0.1:7001\"\n[cluster]\nnode_id = 2\n\
                peer_listen = \"127.0.0.1:8001\"\ntrust_domain = \"t\"\n";
    assert_refused(base, "cluster.initial_members", "or seeds");
    assert_refused(
        &three_nodes("seeds = [\"127.0.0.1:8000\"]\n"),
        "cluster.seeds",
        "not both",
    );
    assert_refused(
        &format!("{base}seeds = [\"127.0.0.1:8001\"]\n"),
        "cluster.seeds[0]",
        "own peer address",
    );
    assert_refused(
        &format!("{base}seeds = [\"127.0.0.1:8000\", \"127.0.0.1:8000\"]\n"),
        "cluster.seeds[1]",
        "listed twice",
    );
    assert_refused(
        &format!("{base}seeds = [\"127.0.0.1\"]\n"),
        "cluster.seeds[0]",
        "is not host:port",
    );
}

#[test]
fn addresses_are_checked() {
    assert_refused(
        &three_nodes("").replace("peer = \"127.0.0.1:8000\"", "peer = \"127.0.0.1:0\""),
        "cluster.initial_members[0].peer",
        "is not host:port",
    );
    assert_refused(
        &three_nodes("").replace(
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"127.0.0.1:7001\"",
        ),
        "cluster.peer_listen",
        "client listener's UDP port",
    );
    assert_refused(
        &three_nodes("").replace(
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"127.0.0.1:0\"",
        ),
        "cluster.peer_listen",
        "fixed port",
    );
    assert_refused(
        &three_nodes("").replace(
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"0.0.0.0:8001\"",
        ),
        "cluster.peer_advertise",
        "binds every address",
    );
    assert_refused(
        &three_nodes("peer_advertise = \"node 2:8001\"\n"),
        "cluster.peer_advertise",
        "is not host:port",
    );
    assert_refused(
        &three_nodes("").replace("addr = \"127.0.0.1:7001\"", "addr = \"0.0.0.0:7001\""),
        "cluster.client_advertise",
        "not an address clients can use",
    );
    assert_refused(
        &three_nodes("").replace(
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"127.0.0.1\"",
        ),
        "cluster.peer_listen",
        "invalid socket address",
    );
}

#[test]
fn trust_domain_must_be_a_spiffe_trust_domain() {
    for bad in ["", "Strongbox.Dev", "a/b", "x y"] {
        assert_refused(
            &three_nodes("").replace("\"strongbox.dev\"", &format!("{bad:?}")),
            "cluster.trust_domain",
            "is not a trust domain",
        );
    }
}

#[test]
fn timeouts_are_checked() {
    assert_refused(
        &three_nodes("election_timeout_min = \"3s\"\n"),
        "cluster.election_timeout_min",
        "must be shorter than election_timeout_max (2s)",
    );
    assert_refused(
        &three_nodes("heartbeat_interval = \"600ms\"\n"),
        "cluster.heartbeat_interval",
        "at most half of election_timeout_min",
    );
    assert_refused(
        &three_nodes("rpc_timeout = \"5s\"\n"),
        "cluster.rpc_timeout",
        "must not exceed election_timeout_max",
    );
    assert_refused(
        &three_nodes("heartbeat_interval = \"1ms\"\n"),
        "cluster.heartbeat_interval",
        "out of range",
    );
    assert_refused(
        &three_nodes("rpc_timeout = \"soon\"\n"),
        "cluster.rpc_timeout",
        "invalid duration",
    );
}
