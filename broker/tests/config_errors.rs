//! Every kind of bad config is refused with an error naming its field.

use std::path::Path;

use strongbox_broker::config::{BrokerConfig, ConfigError};

/// A valid `[tls]` section whose files exist in `dir`.
fn tls_section(dir: &Path) -> String {
    for f in ["cert.pem", "key.pem", "ca.pem", "crl.pem", "pin"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n".to_string()
}

/// Parses and validates `body` (with a valid `[tls]` prepended unless the
/// body has its own), returning the error.
fn error_of(body: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path());
    let text = if body.contains("[tls]") {
        body.to_string()
    } else {
        format!("{tls}\n{body}")
    };
    match BrokerConfig::from_toml_str(&text, dir.path()).and_then(BrokerConfig::validate) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_refused(body: &str, field: &str, needle: &str) {
    let e = error_of(body);
    assert_eq!(
        e.field(),
        Some(field),
        "wrong field for:\n{body}\nerror: {e}"
    );
    let text = e.to_string();
    assert!(text.starts_with(&format!("{field}: ")), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}

#[test]
fn unknown_fields_are_named() {
    assert_refused(
        "[listener]\nadress = \"127.0.0.1:1\"\n",
        "listener.adress",
        "unknown field",
    );
    assert_refused(
        "colour = \"blue\"\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n",
        "colour",
        "unknown field",
    );
    assert_refused(
        "[keys.file]\npath = \"k\"\n",
        "keys.file.path",
        "unknown field",
    );
    assert_refused(
        "[[acl.rules]]\nprincipal = \"a\"\ntopic = \"t\"\noperations = [\"publish\"]\neffect = \"allow\"\nexpiry = \"x\"\n",
        "acl.rules[0].expiry",
        "unknown field",
    );
    assert_refused("[surprise]\n", "surprise", "unknown field");
}

#[test]
fn inline_secrets_are_refused() {
    for (body, field) in [
        (
            "[keys.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\npin = \"1234\"\n",
            "keys.pkcs11.pin",
        ),
        (
            "[keys.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\nso_pin = \"1234\"\n",
            "keys.pkcs11.so_pin",
        ),
        (
            "[keys.file]\npassword = \"hunter2\"\n",
            "keys.file.password",
        ),
    ] {
        let e = error_of(body);
        assert!(matches!(e, ConfigError::InlineSecret { .. }), "{e}");
        assert_eq!(e.field(), Some(field));
        assert!(
            e.to_string().contains("inline secrets are not accepted"),
            "{e}"
        );
    }
    let e = error_of(
        "[tls]\ncert = \"cert.pem\"\nclient_ca = \"ca.pem\"\nkey = \"\"\"\n-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n\"\"\"\n",
    );
    assert!(matches!(e, ConfigError::InlineSecret { .. }), "{e}");
    assert_eq!(e.field(), Some("tls.key"));
}

#[test]
fn pin_env_must_name_a_variable_not_hold_the_pin() {
    assert_refused(
        "[keys]\nprovider = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\npin_env = \"1234\"\n",
        "keys.pkcs11.pin_env",
        "not an environment variable name",
    );
    assert_refused(
        "[keys]\nprovider = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\npin_env = \"STRONGBOX_TEST_PIN_THAT_IS_NOT_SET\"\n",
        "keys.pkcs11.pin_env",
        "is not set",
    );
    assert_refused(
        "[keys]\nprovider = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\npin_file = \"pin\"\npin_env = \"X\"\n",
        "keys.pkcs11.pin_file",
        "not both",
    );
    assert_refused(
        "[keys]\nprovider = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\n",
        "keys.pkcs11.pin_file",
        "PIN is needed",
    );
    assert_refused(
        "[keys]\nprovider = \"pkcs11\"\n",
        "keys.pkcs11",
        "no [keys.pkcs11] section",
    );
    assert_refused(
        "[keys]\nprovider = \"vault\"\n",
        "keys.provider",
        "unknown variant",
    );
}

#[test]
fn bad_durations_are_named() {
    assert_refused(
        "[listener]\nkeepalive = \"10 parsecs\"\n",
        "listener.keepalive",
        "invalid duration",
    );
    assert_refused(
        "[listener]\nidle_timeout = 30\n",
        "listener.idle_timeout",
        "invalid type",
    );
    assert_refused(
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\ncrl_reload = \"soon\"\n",
        "tls.crl_reload",
        "invalid duration",
    );
    assert_refused(
        "[topics]\nretention = \"a while\"\n",
        "topics.retention",
        "forever",
    );
    assert_refused(
        "[keys]\nrotate_every = \"5m\"\n",
        "keys.rotate_every",
        "out of range",
    );
    assert_refused(
        "[keys]\nrewrap_rate = 0\n",
        "keys.rewrap_rate",
        "out of range",
    );
    assert_refused(
        "[listener]\nkeepalive = \"40s\"\nidle_timeout = \"30s\"\n",
        "listener.keepalive",
        "shorter than listener.idle_timeout",
    );
}

#[test]
fn bad_addresses_are_named() {
    assert_refused(
        "[listener]\naddr = \"localhost:7443\"\n",
        "listener.addr",
        "invalid socket address",
    );
    assert_refused(
        "[listener]\naddr = \"127.0.0.1\"\n",
        "listener.addr",
        "invalid socket address",
    );
    assert_refused(
        "[metrics]\nlisten = \"127.0.0.1:99999\"\n",
        "metrics.listen",
        "invalid socket address",
    );
}

#[test]
fn out_of_range_numbers_are_named() {
    assert_refused(
        "[listener]\nmax_connections = 0\n",
        "listener.max_connections",
        "out of range",
    );
    assert_refused(
        "[listener]\nmax_connections = -1\n",
        "listener.max_connections",
        "invalid value",
    );
    assert_refused(
        "[listener]\nmax_connections = \"many\"\n",
        "listener.max_connections",
        "invalid type",
    );
    assert_refused(
        "[listener]\nmax_frame_size = 1024\n",
        "listener.max_frame_size",
        "out of range",
    );
    assert_refused(
        "[listener]\nmax_frame_size = 65536\nmax_batch_size = 65536\n",
        "listener.max_batch_size",
        "max_frame_size less 4096",
    );
    assert_refused(
        "[listener]\nudp_recv_buffer = 1024\n",
        "listener.udp_recv_buffer",
        "out of range",
    );
    assert_refused(
        "[topics]\npartitions = 0\n",
        "topics.partitions",
        "out of range",
    );
    assert_refused(
        "[topics]\nsegment_bytes = 10\n",
        "topics.segment_bytes",
        "out of range",
    );
    assert_refused(
        "[broker]\nid = \"has space\"\n",
        "broker.id",
        "must be 1 to 128",
    );
}

#[test]
fn bad_acl_seeds_are_named() {
    let rule = |p: &str, t: &str, ops: &str, effect: &str| {
        format!(
            "[[acl.rules]]\nprincipal = \"{p}\"\ntopic = \"{t}\"\noperations = {ops}\neffect = \"{effect}\"\n"
        )
    };
    assert_refused(
        &rule("a", "t", "[\"publish\", \"fly\"]", "allow"),
        "acl.rules[0].operations",
        "unknown operation \"fly\"",
    );
    assert_refused(
        &rule("a", "t", "[]", "allow"),
        "acl.rules[0].operations",
        "at least one",
    );
    assert_refused(
        &rule("a", "t", "[\"publish\"]", "maybe"),
        "acl.rules[0].effect",
        "unknown variant",
    );
    let two = format!(
        "{}{}",
        rule("a", "t", "[\"publish\"]", "allow"),
        rule("a", "or*ders", "[\"publish\"]", "deny")
    );
    assert_refused(&two, "acl.rules[1].topic", "`*` may only be");
    assert_refused(
        &rule("", "t", "[\"publish\"]", "allow"),
        "acl.rules[0].principal",
        "empty",
    );
    let expiring = "[[acl.rules]]\nprincipal = \"a\"\ntopic = \"t\"\noperations = [\"publish\"]\neffect = \"allow\"\nexpires_at = \"next tuesday\"\n";
    assert_refused(expiring, "acl.rules[0].expires_at", "RFC 3339");
    assert_refused(
        "[acl]\nsuperusers = [\"admin*\"]\n",
        "acl.superusers[0]",
        "exact principal",
    );
    assert_refused(
        "[acl]\nsuperusers = [\"ops\", \"\"]\n",
        "acl.superusers[1]",
        "exact principal",
    );
}

#[test]
fn bad_identity_rules_are_named() {
    assert_refused(
        "[[identity.rules]]\nmatch = \"spiffe://*/x\"\nprincipal = \"{2}\"\n",
        "identity.rules[0].principal",
        "does not have",
    );
    assert_refused(
        "[[identity.rules]]\nmatch = \"a**\"\nprincipal = \"x\"\n",
        "identity.rules[0].match",
        "ambiguous",
    );
    assert_refused(
        "[[identity.rules]]\npattern = \"a*\"\nprincipal = \"x\"\n",
        "identity.rules[0].pattern",
        "unknown field",
    );
}

#[test]
fn missing_files_and_sections_are_named() {
    assert_refused(
        "[listener]\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
        "tls.client_ca",
        "missing field",
    );
    assert_refused(
        "[listener]\n[tls]\ncert = \"nope.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n",
        "tls.cert",
        "nope.pem",
    );
    assert_refused(
        "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\ncrls = [\"crl.pem\", \"gone.crl\"]\n",
        "tls.crls[1]",
        "gone.crl",
    );
    let dir = tempfile::tempdir().unwrap();
    let e = BrokerConfig::from_toml_str("[broker]\n", dir.path()).unwrap_err();
    assert_eq!(e.field(), Some("tls"), "{e}");
}

#[test]
fn bad_log_settings_are_named() {
    assert_refused("[log]\nformat = \"xml\"\n", "log.format", "unknown variant");
    assert_refused("[log]\nlevel = \"loud\"\n", "log.level", "not a level");
    assert_refused(
        "[log]\nlevel = \"info,strongbox_broker=shout\"\n",
        "log.level",
        "not a level",
    );
}

#[test]
fn syntax_errors_give_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let e = BrokerConfig::from_toml_str("[listener]\naddr = \n", dir.path()).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn load_resolves_paths_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let tls = tls_section(&etc);
    let path = etc.join("broker.toml");
    std::fs::write(
        &path,
        format!("{tls}crls = [\"crl.pem\", \"/abs/olute.crl\"]\n[broker]\ndata_dir = \"../var\"\n[log]\nlevel = \"debug,quinn=warn\"\n"),
    )
    .unwrap();
    let cfg = BrokerConfig::load(&path).unwrap();
    assert_eq!(cfg.tls.cert, etc.join("cert.pem"));
    assert_eq!(cfg.tls.crls[0], etc.join("crl.pem"));
    assert_eq!(cfg.tls.crls[1], Path::new("/abs/olute.crl"));
    assert_eq!(cfg.broker.data_dir, etc.join("../var"));
    assert_eq!(cfg.keys.file.dir, etc.join("keys"));
    assert_eq!(cfg.source.as_deref(), Some(path.as_path()));
    // The absolute CRL does not exist, and validation says which one.
    assert_eq!(cfg.validate().unwrap_err().field(), Some("tls.crls[1]"));

    let e = BrokerConfig::load(&etc.join("missing.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path());
    let cfg = BrokerConfig::from_toml_str(&tls, dir.path())
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(cfg.listener.addr, "127.0.0.1:7443".parse().unwrap());
    assert_eq!(cfg.metrics.listen, "127.0.0.1:9644".parse().unwrap());
    assert!(cfg.metrics.enabled);
    assert_eq!(cfg.listener.udp_recv_buffer, 4 * 1024 * 1024);
    let topic = cfg.topics.topic_config(None);
    assert_eq!(topic.partitions, 1);
    assert_eq!(
        topic.durability,
        strongbox_protocol::model::Durability::Fsync
    );
    assert_eq!(topic.retention_ms, Some(7 * 24 * 3600 * 1000));
}

#[test]
fn pkcs11_with_a_pin_file_validates() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_section(dir.path());
    let text = format!(
        "{tls}[keys]\nprovider = \"pkcs11\"\nrotate_every = \"90d\"\n[keys.pkcs11]\nmodule = \"libsofthsm2.so\"\ntoken_label = \"strongbox\"\npin_file = \"pin\"\n[topics]\ndurability = \"interval\"\ndurability_interval = \"250ms\"\nretention = \"forever\"\n"
    );
    let cfg = BrokerConfig::from_toml_str(&text, dir.path())
        .unwrap()
        .validate()
        .unwrap();
    let p = cfg.keys.pkcs11.unwrap();
    // A bare module name is left for the dynamic loader.
    assert_eq!(p.module, Path::new("libsofthsm2.so"));
    assert_eq!(p.pin_file.unwrap(), dir.path().join("pin"));
    let topic = cfg.topics.topic_config(Some(3));
    assert_eq!(topic.partitions, 3);
    assert_eq!(
        topic.durability,
        strongbox_protocol::model::Durability::Interval { interval_ms: 250 }
    );
    assert_eq!(topic.retention_ms, None);
}

#[test]
fn bad_key_exchange_and_checkpoint_settings_are_named() {
    let tls = "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"ca.pem\"\n";
    assert_refused(
        &format!("{tls}key_exchange = \"post-quantum\"\n"),
        "tls.key_exchange",
        "unknown variant `post-quantum`",
    );
    assert_refused(
        "[checkpoints]\ninterval = \"1s\"\n",
        "checkpoints.interval",
        "out of range",
    );
    // Inside the data directory, a restored old copy would bring its old
    // checkpoints back: refused, lexically and through the file system.
    assert_refused(
        "[broker]\ndata_dir = \"data\"\n[checkpoints]\nexport_dir = \"data/checkpoints\"\n",
        "checkpoints.export_dir",
        "inside broker.data_dir",
    );
    assert_refused(
        "[checkpoints]\nsign = true\n",
        "checkpoints.sign",
        "unknown field",
    );
}

#[test]
fn key_exchange_and_checkpoints_default_to_hybrid_and_on() {
    let dir = tempfile::tempdir().unwrap();
    let text = tls_section(dir.path());
    let cfg = BrokerConfig::from_toml_str(&text, dir.path())
        .and_then(BrokerConfig::validate)
        .unwrap();
    assert_eq!(
        cfg.tls.key_exchange,
        strongbox_broker::tls::KeyExchange::PreferHybrid
    );
    assert!(cfg.checkpoints.enabled);
    assert_eq!(cfg.checkpoints.interval.0.as_secs(), 300);
    assert_eq!(cfg.checkpoints.export_dir, None);
    let text = format!(
        "{text}key_exchange = \"require-hybrid\"\n[checkpoints]\nexport_dir = \"../elsewhere\"\nstdout = true\n"
    );
    let cfg = BrokerConfig::from_toml_str(&text, dir.path())
        .and_then(BrokerConfig::validate)
        .unwrap();
    assert_eq!(
        cfg.tls.key_exchange,
        strongbox_broker::tls::KeyExchange::RequireHybrid
    );
    assert_eq!(
        cfg.checkpoints.export_dir,
        Some(dir.path().join("../elsewhere"))
    );
    assert!(cfg.checkpoints.stdout);
}
