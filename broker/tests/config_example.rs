//! deploy/broker.example.toml stays true: as shipped it is a valid config,
//! every setting it shows exists, and the defaults it claims are the real
//! ones.

use std::path::{Path, PathBuf};

use strongbox_broker::config::BrokerConfig;
use strongbox_broker::pki::{CertSpec, TestCa};
use strongbox_broker::tls::server_tls;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/broker.example.toml")
}

fn example() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

/// The example with every `#name = value` and `#[section]` line
/// uncommented (prose comments start with `# `, with a space).
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the TLS files the example names, with real certificates.
fn materialise_tls(dir: &Path) {
    let ca = TestCa::new("Example CA").unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("tls/clients-ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("tls/clients-ca.crl.pem"), ca.crl(&[], 1).unwrap()).unwrap();
    ca.issue(&CertSpec::server(&["broker.example"]))
        .unwrap()
        .write_to(&dir.join("tls"), "broker")
        .unwrap();
}

#[test]
fn the_example_as_shipped_is_valid_and_builds_tls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, example()).unwrap();
    materialise_tls(dir.path());
    let cfg = BrokerConfig::load(&path).unwrap().validate().unwrap();
    server_tls(&cfg.tls, None).unwrap();
}

#[test]
fn every_setting_shown_exists_and_parses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig::from_toml_str(&uncommented(&example()), dir.path())
        .unwrap_or_else(|e| panic!("the uncommented example does not parse: {e}"));
    assert_eq!(cfg.identity.rules.len(), 1);
    assert_eq!(cfg.acl.rules.len(), 1);
    assert!(cfg.keys.pkcs11.is_some());
    // The sample rules are valid too.
    strongbox_broker::identity::IdentityMapper::from_config(&cfg.identity).unwrap();
    strongbox_broker::acl::Acl::from_config(&cfg.acl).unwrap();
}

#[test]
fn the_defaults_shown_are_the_real_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = BrokerConfig::from_toml_str(&example(), dir.path()).unwrap();
    let all = BrokerConfig::from_toml_str(&uncommented(&example()), dir.path()).unwrap();
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    assert_eq!(dbg(&shipped.broker), dbg(&all.broker));
    assert_eq!(dbg(&shipped.listener), dbg(&all.listener));
    assert_eq!(dbg(&shipped.metrics), dbg(&all.metrics));
    assert_eq!(dbg(&shipped.log), dbg(&all.log));
    assert_eq!(shipped.keys.provider, all.keys.provider);
    assert_eq!(shipped.keys.file.dir, all.keys.file.dir);
    assert_eq!(shipped.keys.rewrap_rate, all.keys.rewrap_rate);
    assert_eq!(shipped.tls.crl_reload, all.tls.crl_reload);
    assert_eq!(shipped.tls.crl_check, all.tls.crl_check);
    assert_eq!(
        shipped.tls.allow_unknown_revocation_status,
        all.tls.allow_unknown_revocation_status
    );
    assert_eq!(shipped.tls.enforce_crl_expiry, all.tls.enforce_crl_expiry);
    assert_eq!(shipped.tls.key_exchange, all.tls.key_exchange);
    // export_dir has no default; the example shows a sample value.
    let (mut a, b) = (shipped.checkpoints.clone(), all.checkpoints.clone());
    a.export_dir.clone_from(&b.export_dir);
    assert_eq!(dbg(&a), dbg(&b));
    assert_eq!(shipped.identity.require_match, all.identity.require_match);
    assert_eq!(shipped.acl.superusers, all.acl.superusers);
    // [cluster] is absent as shipped (a cluster of one); its timeouts shown
    // are the defaults a section without them gets.
    assert!(shipped.cluster.is_none());
    let c = all.cluster.as_ref().expect("the example shows [cluster]");
    let defaults = BrokerConfig::from_toml_str(
        "[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"a\"\n[cluster]\nnode_id = 1\n\
         peer_listen = \"127.0.0.1:2\"\ntrust_domain = \"t\"\n",
        dir.path(),
    )
    .unwrap();
    let d = defaults.cluster.as_ref().unwrap();
    assert_eq!(
        (
            c.heartbeat_interval,
            c.election_timeout_min,
            c.election_timeout_max,
            c.rpc_timeout
        ),
        (
            d.heartbeat_interval,
            d.election_timeout_min,
            d.election_timeout_max,
            d.rpc_timeout
        )
    );
    // retention_bytes has no default; the example shows a sample value.
    let (mut a, b) = (shipped.topics.clone(), all.topics.clone());
    a.retention_bytes = b.retention_bytes;
    assert_eq!(dbg(&a), dbg(&b));
}

#[test]
fn every_setting_is_documented() {
    let text = example();
    let sections: &[(&str, &[&str])] = &[
        ("[broker]", &["id", "data_dir"]),
        (
            "[listener]",
            &[
                "addr",
                "max_connections",
                "max_bidi_streams_per_connection",
                "max_frame_size",
                "max_batch_size",
                "max_in_flight",
                "keepalive",
                "idle_timeout",
                "handshake_timeout",
                "shutdown_grace",
                "udp_recv_buffer",
                "udp_send_buffer",
            ],
        ),
        (
            "[tls]",
            &[
                "cert",
                "key",
                "client_ca",
                "crls",
                "crl_reload",
                "crl_check",
                "allow_unknown_revocation_status",
                "enforce_crl_expiry",
                "key_exchange",
            ],
        ),
        ("[identity]", &["require_match", "match", "principal"]),
        (
            "[acl]",
            &[
                "superusers",
                "principal",
                "topic",
                "operations",
                "effect",
                "expires_at",
            ],
        ),
        (
            "[keys]",
            &[
                "provider",
                "rotate_every",
                "rewrap_rate",
                "dir",
                "module",
                "token_label",
                "pin_file",
                "pin_env",
            ],
        ),
        ("[metrics]", &["enabled", "listen"]),
        (
            "[cluster]",
            &[
                "node_id",
                "peer_listen",
                "peer_advertise",
                "client_advertise",
                "trust_domain",
                "initial_members",
                "seeds",
                "heartbeat_interval",
                "election_timeout_min",
                "election_timeout_max",
                "rpc_timeout",
            ],
        ),
        (
            "[topics]",
            &[
                "partitions",
                "durability",
                "durability_interval",
                "segment_bytes",
                "segment_age",
                "retention",
                "retention_bytes",
            ],
        ),
        (
            "[checkpoints]",
            &["enabled", "interval", "export_dir", "stdout"],
        ),
        ("[log]", &["format", "level"]),
    ];
    let all = uncommented(&text);
    for (section, fields) in sections {
        let header = format!("\n{section}\n");
        let start = all
            .find(&header)
            .unwrap_or_else(|| panic!("{section} missing"));
        let rest = &all[start + header.len()..];
        // The section runs to the next top-level section of the list.
        let end = sections
            .iter()
            .filter_map(|(s, _)| rest.find(&format!("\n{s}\n")))
            .min()
            .unwrap_or(rest.len());
        let body = &rest[..end];
        for f in *fields {
            assert!(
                body.lines().any(|l| l.starts_with(&format!("{f} = "))),
                "{section} {f} is not documented in the example"
            );
        }
    }
}
