//! A bounded, proptest-driven fuzz run of the broker's config parser and
//! its validation (`BrokerConfig::from_toml_str`, `BrokerConfig::validate`),
//! so CI exercises them without cargo-fuzz (fuzz/README.md; the
//! coverage-guided target is `broker_config`).
//!
//! Inputs are configs rendered from a catalogue of every scalar setting
//! (its type and its valid range, as `deploy/broker.example.toml` documents
//! them), then changed in one place: a value of the wrong type, a value just
//! outside its range, an unknown setting, a secret written inline, PEM where
//! a path belongs, a bad entry at a random position of `[[acl.rules]]`,
//! `[[identity.rules]]` or `acl.superusers`. Whole configs are also mutated
//! byte by byte.
//!
//! Properties: parsing and validation never panic; a config of valid values
//! is accepted and reads back exactly those values; a config changed in one
//! place is refused with an error whose field is exactly that place; and
//! whatever the input, an error's field names settings that exist or that
//! the input wrote.
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property.

#[path = "../../fuzz/mutation.rs"]
mod mutation;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestCaseError};
use strongbox_broker::config::{BrokerConfig, ConfigError, Retention};

use mutation::{arb_mutation, fuzz_config, mutate_all};

const DEFAULT_CASES: u32 = 2000;

fn config() -> Config {
    fuzz_config(DEFAULT_CASES)
}

/// A directory holding the files the `[tls]` section names; validation
/// checks that they exist.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tls")).expect("mkdir");
        for f in ["broker.pem", "broker.key", "clients-ca.pem"] {
            std::fs::write(dir.path().join("tls").join(f), "x").expect("write");
        }
        dir
    })
    .path()
}

/// The three settings without a default.
const TLS: &[(&str, &str)] = &[
    ("cert", "\"tls/broker.pem\""),
    ("key", "\"tls/broker.key\""),
    ("client_ca", "\"tls/clients-ca.pem\""),
];

// ---------------------------------------------------------------------------
// the catalogue

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An integer, validated to `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A duration, validated to `min_ms..=max_ms` milliseconds.
    Dur {
        min_ms: u64,
        max_ms: u64,
    },
    Bool,
    Addr,
    /// A path (only its type is checked at parse time).
    Path,
    /// One of these words, and how `Debug` shows the parsed value.
    Enum(&'static [(&'static str, &'static str)]),
    /// `broker.id`: 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-'.
    Id,
    /// `log.level`: a level or `target=level` directives.
    Level,
}

/// One scalar setting: its dotted path, its kind, how to read it back.
#[derive(Debug, Clone, Copy)]
struct Field {
    path: &'static str,
    kind: Kind,
    get: fn(&BrokerConfig) -> String,
    /// Another setting its range check needs (the interval of `interval`
    /// durability is only checked under that mode).
    with: Option<(&'static str, &'static str)>,
}

const fn field(path: &'static str, kind: Kind, get: fn(&BrokerConfig) -> String) -> Field {
    Field {
        path,
        kind,
        get,
        with: None,
    }
}

fn dur(d: Duration) -> String {
    format!("{d:?}")
}

const SECOND: u64 = 1000;
const DAY: u64 = 24 * 3600 * SECOND;

/// Every scalar setting of the broker config except the three TLS paths
/// (always present) and the PKCS#11 section (which needs a module).
static FIELDS: &[Field] = &[
    field("broker.id", Kind::Id, |c| c.broker.id.clone()),
    field("broker.data_dir", Kind::Path, |c| {
        c.broker.data_dir.display().to_string()
    }),
    field("listener.addr", Kind::Addr, |c| c.listener.addr.to_string()),
    field(
        "listener.max_connections",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        |c| c.listener.max_connections.to_string(),
    ),
    field(
        "listener.max_bidi_streams_per_connection",
        Kind::Int {
            min: 2,
            max: 1 << 20,
        },
        |c| c.listener.max_bidi_streams_per_connection.to_string(),
    ),
    field(
        "listener.max_frame_size",
        Kind::Int {
            min: 64 * 1024,
            max: 64 * 1024 * 1024,
        },
        |c| c.listener.max_frame_size.to_string(),
    ),
    // At most max_frame_size - 4096; the default frame size is 4 MiB.
    field(
        "listener.max_batch_size",
        Kind::Int {
            min: 1024,
            max: 4 * 1024 * 1024 - 4096,
        },
        |c| c.listener.max_batch_size.to_string(),
    ),
    field(
        "listener.max_in_flight",
        Kind::Int {
            min: 1,
            max: 65_536,
        },
        |c| c.listener.max_in_flight.to_string(),
    ),
    // Shorter than idle_timeout, whose default is 30 s.
    field(
        "listener.keepalive",
        Kind::Dur {
            min_ms: 100,
            max_ms: 3600 * SECOND,
        },
        |c| dur(c.listener.keepalive.0),
    ),
    // Longer than keepalive, whose default is 10 s.
    field(
        "listener.idle_timeout",
        Kind::Dur {
            min_ms: SECOND,
            max_ms: 3600 * SECOND,
        },
        |c| dur(c.listener.idle_timeout.0),
    ),
    field(
        "listener.handshake_timeout",
        Kind::Dur {
            min_ms: 100,
            max_ms: 300 * SECOND,
        },
        |c| dur(c.listener.handshake_timeout.0),
    ),
    field(
        "listener.shutdown_grace",
        Kind::Dur {
            min_ms: 0,
            max_ms: 600 * SECOND,
        },
        |c| dur(c.listener.shutdown_grace.0),
    ),
    field(
        "listener.udp_recv_buffer",
        Kind::Int {
            min: 64 * 1024,
            max: 1 << 30,
        },
        |c| c.listener.udp_recv_buffer.to_string(),
    ),
    field(
        "listener.udp_send_buffer",
        Kind::Int {
            min: 64 * 1024,
            max: 1 << 30,
        },
        |c| c.listener.udp_send_buffer.to_string(),
    ),
    field(
        "tls.crl_reload",
        Kind::Dur {
            min_ms: 100,
            max_ms: DAY,
        },
        |c| dur(c.tls.crl_reload.0),
    ),
    field(
        "tls.crl_check",
        Kind::Enum(&[("chain", "Chain"), ("end-entity", "EndEntity")]),
        |c| format!("{:?}", c.tls.crl_check),
    ),
    field("tls.allow_unknown_revocation_status", Kind::Bool, |c| {
        c.tls.allow_unknown_revocation_status.to_string()
    }),
    field("tls.enforce_crl_expiry", Kind::Bool, |c| {
        c.tls.enforce_crl_expiry.to_string()
    }),
    field("identity.require_match", Kind::Bool, |c| {
        c.identity.require_match.to_string()
    }),
    field("keys.provider", Kind::Enum(&[("file", "File")]), |c| {
        format!("{:?}", c.keys.provider)
    }),
    field(
        "keys.rotate_every",
        Kind::Dur {
            min_ms: 3600 * SECOND,
            max_ms: 10 * 365 * DAY,
        },
        |c| c.keys.rotate_every.map_or("none".into(), |d| dur(d.0)),
    ),
    field(
        "keys.rewrap_rate",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
        |c| c.keys.rewrap_rate.to_string(),
    ),
    field("keys.file.dir", Kind::Path, |c| {
        c.keys.file.dir.display().to_string()
    }),
    field("metrics.enabled", Kind::Bool, |c| {
        c.metrics.enabled.to_string()
    }),
    field("metrics.listen", Kind::Addr, |c| {
        c.metrics.listen.to_string()
    }),
    field("topics.partitions", Kind::Int { min: 1, max: 4096 }, |c| {
        c.topics.partitions.to_string()
    }),
    field(
        "topics.durability",
        Kind::Enum(&[
            ("fsync", "Fsync"),
            ("interval", "Interval"),
            ("none", "None"),
        ]),
        |c| format!("{:?}", c.topics.durability),
    ),
    Field {
        path: "topics.durability_interval",
        kind: Kind::Dur {
            min_ms: 1,
            max_ms: 3600 * SECOND,
        },
        get: |c| dur(c.topics.durability_interval.0),
        with: Some(("topics.durability", "\"interval\"")),
    },
    field(
        "topics.segment_bytes",
        Kind::Int {
            min: 1 << 20,
            max: 1 << 40,
        },
        |c| c.topics.segment_bytes.to_string(),
    ),
    field(
        "topics.segment_age",
        Kind::Dur {
            min_ms: SECOND,
            max_ms: 10 * 365 * DAY,
        },
        |c| dur(c.topics.segment_age.0),
    ),
    field(
        "topics.retention",
        Kind::Dur {
            min_ms: SECOND,
            max_ms: 100 * 365 * DAY,
        },
        |c| match c.topics.retention {
            Retention::After(d) => dur(d.0),
            Retention::Forever => "forever".into(),
        },
    ),
    field(
        "topics.retention_bytes",
        Kind::Int {
            min: 1 << 20,
            max: i64::MAX,
        },
        |c| {
            c.topics
                .retention_bytes
                .map_or("none".into(), |b| b.to_string())
        },
    ),
    field(
        "log.format",
        Kind::Enum(&[("text", "Text"), ("json", "Json")]),
        |c| format!("{:?}", c.log.format),
    ),
    field("log.level", Kind::Level, |c| c.log.level.clone()),
];

/// The sections, in the order they are written.
const SECTIONS: &[&str] = &[
    "broker",
    "listener",
    "tls",
    "identity",
    "acl",
    "keys",
    "keys.file",
    "metrics",
    "topics",
    "log",
];

/// Names that are settings or sections somewhere in the config.
fn known_names() -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&str> = FIELDS
        .iter()
        .flat_map(|f| f.path.split('.'))
        .chain(SECTIONS.iter().flat_map(|s| s.split('.')))
        .collect();
    names.extend([
        "cert",
        "key",
        "client_ca",
        "crls",
        "rules",
        "match",
        "principal",
        "superusers",
        "topic",
        "operations",
        "effect",
        "expires_at",
        "pkcs11",
        "module",
        "token_label",
        "pin_file",
        "pin_env",
    ]);
    names
}

fn section_of(path: &str) -> (&str, &str) {
    path.rsplit_once('.').expect("dotted path")
}

/// Renders `settings` (dotted path, TOML literal) into a config, the TLS
/// paths included.
fn render(settings: &[(String, String)], extra: &str) -> String {
    let mut out = String::new();
    for section in SECTIONS {
        out.push_str(&format!("[{section}]\n"));
        if *section == "tls" {
            for (k, v) in TLS {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (path, literal) in settings {
            if section_of(path).0 == *section {
                out.push_str(&format!("{} = {literal}\n", section_of(path).1));
            }
        }
    }
    out.push_str(extra);
    out
}

// ---------------------------------------------------------------------------
// values

fn ms_literal(ms: u64) -> String {
    if ms.is_multiple_of(SECOND) && ms > 0 {
        format!("\"{}s\"", ms / SECOND)
    } else {
        format!("\"{ms}ms\"")
    }
}

/// A valid value: its TOML literal and what the field should read back.
/// Ranges are narrowed where settings depend on each other, so that any
/// combination is valid: keep-alives under a second, idle timeouts over the
/// default ten-second keep-alive, batches under the smallest frame limit,
/// frame limits with room for the default 1 MiB batch.
fn valid_value(f: &Field) -> BoxedStrategy<(String, String)> {
    match (f.path, f.kind) {
        ("listener.keepalive", _) => (100u64..SECOND)
            .prop_map(|ms| (ms_literal(ms), dur(Duration::from_millis(ms))))
            .boxed(),
        ("listener.max_batch_size", _) => (1024i64..=64 * 1024 - 4096)
            .prop_map(|n| (n.to_string(), n.to_string()))
            .boxed(),
        // Room for the default 1 MiB batch.
        ("listener.max_frame_size", _) => (1024 * 1024 + 4096i64..=64 * 1024 * 1024)
            .prop_map(|n| (n.to_string(), n.to_string()))
            .boxed(),
        // Longer than the default 10 s keep-alive.
        ("listener.idle_timeout", _) => (10 * SECOND + 1..=3600 * SECOND)
            .prop_map(|ms| (ms_literal(ms), dur(Duration::from_millis(ms))))
            .boxed(),
        (_, Kind::Int { min, max }) => prop_oneof![Just(min), Just(max), min..=max]
            .prop_map(|n| (n.to_string(), n.to_string()))
            .boxed(),
        (_, Kind::Dur { min_ms, max_ms }) => {
            prop_oneof![Just(min_ms), Just(max_ms), min_ms..=max_ms]
                .prop_map(|ms| (ms_literal(ms), dur(Duration::from_millis(ms))))
                .boxed()
        }
        (_, Kind::Bool) => any::<bool>()
            .prop_map(|b| (b.to_string(), b.to_string()))
            .boxed(),
        (_, Kind::Addr) => prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(SocketAddr::from),
            (any::<[u16; 8]>(), any::<u16>()).prop_map(SocketAddr::from),
        ]
        .prop_map(|a| (format!("\"{a}\""), a.to_string()))
        .boxed(),
        (_, Kind::Path) => "[a-z0-9_]{1,8}(/[a-z0-9_.]{1,8}){0,2}"
            .prop_map(|p| {
                let resolved = base_dir().join(&p).display().to_string();
                (format!("\"{p}\""), resolved)
            })
            .boxed(),
        (_, Kind::Enum(words)) => select(words)
            .prop_map(|(w, d)| (format!("\"{w}\""), d.to_string()))
            .boxed(),
        (_, Kind::Id) => "[A-Za-z0-9._-]{1,128}"
            .prop_map(|s| (format!("\"{s}\""), s))
            .boxed(),
        (_, Kind::Level) => prop_oneof![
            select(&["trace", "debug", "info", "warn", "error", "off"][..]).prop_map(str::to_owned),
            ("[a-z_]{1,12}", select(&["debug", "warn"][..]))
                .prop_map(|(t, l)| format!("info,{t}={l}")),
        ]
        .prop_map(|s| (format!("\"{s}\""), s))
        .boxed(),
    }
}

/// A literal of another TOML type than the field's.
fn wrong_type(kind: Kind) -> BoxedStrategy<String> {
    let others: &[&str] = match kind {
        Kind::Int { .. } => &["\"12\"", "1.5", "true", "[1]", "{ n = 1 }", "-1"],
        Kind::Dur { .. } | Kind::Addr | Kind::Path | Kind::Enum(_) | Kind::Id | Kind::Level => {
            &["12", "1.5", "true", "[\"a\"]", "{ a = \"b\" }"]
        }
        Kind::Bool => &["\"true\"", "1", "[true]"],
    };
    select(others).prop_map(str::to_owned).boxed()
}

/// A literal of the right type whose value is refused: outside the range,
/// or not a word, address or duration at all.
fn bad_value(f: &Field) -> Option<BoxedStrategy<String>> {
    Some(match (f.path, f.kind) {
        ("listener.max_batch_size", _) => select(&["1023", "0", "67108864"][..])
            .prop_map(str::to_owned)
            .boxed(),
        (_, Kind::Int { min, max }) => {
            let mut edges = vec![min - 1];
            if max < i64::MAX {
                edges.push(max + 1);
            }
            if min > 0 {
                edges.push(0);
            }
            select(edges).prop_map(|n| n.to_string()).boxed()
        }
        (_, Kind::Dur { min_ms, max_ms }) => {
            let mut edges = vec![
                ms_literal(max_ms + 1),
                "\"soon\"".to_owned(),
                "\"5 parsecs\"".to_owned(),
                "\"\"".to_owned(),
            ];
            if min_ms > 0 {
                edges.push(ms_literal(min_ms - 1));
            }
            select(edges).boxed()
        }
        (_, Kind::Addr) => select(
            &[
                "\"localhost\"",
                "\"1.2.3.4\"",
                "\"[::1]\"",
                "\"1.2.3.4:99999\"",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
        (_, Kind::Enum(_)) => select(&["\"\"", "\"FSYNC\"", "\"maybe\"", "\"pkcs12\""][..])
            .prop_map(str::to_owned)
            .boxed(),
        (_, Kind::Id) => prop_oneof![
            Just(String::new()),
            Just("a".repeat(129)),
            "[a-z]{0,4}[ /:*@\\n]{1,2}[a-z]{0,4}",
        ]
        .prop_map(|s| format!("{s:?}"))
        .boxed(),
        (_, Kind::Level) => select(&["\"\"", "\"loud\"", "\"info,x=shout\"", "\"=info\""][..])
            .prop_map(str::to_owned)
            .boxed(),
        (_, Kind::Bool | Kind::Path) => return None,
    })
}

/// The error of parsing and validating `text`.
fn outcome(text: &str) -> Result<BrokerConfig, ConfigError> {
    BrokerConfig::from_toml_str(text, base_dir()).and_then(BrokerConfig::validate)
}

/// Whatever the input: an error's field is a dotted path (with list
/// indices) whose every name is a setting or section of the config or a
/// word of the input, never the catch-all "(top level)".
fn check_error(text: &str, e: &ConfigError) -> Result<(), TestCaseError> {
    let Some(field) = e.field() else {
        return Ok(());
    };
    prop_assert!(!field.is_empty() && field != "(top level)", "{e}");
    let known = known_names();
    for part in field.split('.') {
        let name = part.split('[').next().unwrap_or_default();
        prop_assert!(
            known.contains(name) || text.contains(name),
            "{e}: {name:?} is neither a setting nor in the input"
        );
    }
    prop_assert!(e.to_string().starts_with(field), "{e}");
    Ok(())
}

/// The field an error must name, and how the config is changed.
#[derive(Debug, Clone)]
struct Change {
    settings: Vec<(String, String)>,
    extra: String,
    field: String,
}

/// One setting of the catalogue changed to a value of the wrong type or a
/// refused one.
fn arb_bad_setting() -> impl Strategy<Value = Change> {
    select(FIELDS)
        .prop_flat_map(|f| {
            let bad = match bad_value(&f) {
                Some(bad) => prop_oneof![wrong_type(f.kind), bad].boxed(),
                None => wrong_type(f.kind),
            };
            (Just(f), bad)
        })
        .prop_map(|(f, literal)| {
            let mut settings = vec![(f.path.to_owned(), literal)];
            if let Some((p, v)) = f.with {
                settings.push((p.to_owned(), v.to_owned()));
            }
            Change {
                settings,
                extra: String::new(),
                field: f.path.to_owned(),
            }
        })
}

/// A setting no section has, a secret written inline, or PEM in a path.
fn arb_foreign_setting() -> impl Strategy<Value = Change> {
    let secret = select(
        &[
            "pin",
            "user_pin",
            "so_pin",
            "password",
            "passphrase",
            "secret",
            "private_key",
            "key_pem",
            "kek",
        ][..],
    );
    let pem = select(
        &[
            "-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----\\nMIIB",
        ][..],
    );
    let path_fields = select(&["broker.data_dir", "keys.file.dir"][..]);
    prop_oneof![
        (select(SECTIONS), "[a-z][a-z_]{0,10}")
            .prop_filter("a setting that exists", |(s, name)| {
                !known_names().contains(name.as_str()) && !s.is_empty()
            })
            .prop_filter("not a secret name", |(_, name)| {
                !["pin", "secret", "password", "passphrase", "kek"].contains(&name.as_str())
                    && !name.ends_with("_pin")
                    && name != "private_key"
                    && name != "key_pem"
            })
            .prop_map(|(s, name)| Change {
                settings: vec![(format!("{s}.{name}"), "1".into())],
                extra: String::new(),
                field: format!("{s}.{name}"),
            }),
        (select(SECTIONS), secret).prop_map(|(s, name)| Change {
            settings: vec![(format!("{s}.{name}"), "\"1234\"".into())],
            extra: String::new(),
            field: format!("{s}.{name}"),
        }),
        (path_fields, pem).prop_map(|(path, pem)| Change {
            settings: vec![(path.to_owned(), format!("\"{pem}\""))],
            extra: String::new(),
            field: path.to_owned(),
        }),
    ]
}

/// A bad entry at a random position among good ones, in `[[acl.rules]]`,
/// `[[identity.rules]]` or `acl.superusers`.
fn arb_bad_entry() -> impl Strategy<Value = Change> {
    let acl_rule = |principal: &str, topic: &str, ops: &str, effect: &str, more: &str| {
        format!(
            "[[acl.rules]]\nprincipal = \"{principal}\"\ntopic = \"{topic}\"\noperations = {ops}\neffect = \"{effect}\"\n{more}"
        )
    };
    let good_acl = acl_rule("alice", "orders.*", "[\"publish\"]", "allow", "");
    let bad_acl: Vec<(String, &str)> =
        vec![
        (acl_rule("a", "t", "[\"fly\"]", "allow", ""), "operations"),
        (acl_rule("a", "t", "[]", "allow", ""), "operations"),
        (acl_rule("a", "t", "[\"publish\", 1]", "allow", ""), "operations[1]"),
        (acl_rule("a", "t", "[\"publish\"]", "maybe", ""), "effect"),
        (acl_rule("", "t", "[\"publish\"]", "allow", ""), "principal"),
        (acl_rule("a*b", "t", "[\"publish\"]", "allow", ""), "principal"),
        (acl_rule("a", "or*ders", "[\"publish\"]", "deny", ""), "topic"),
        (
            acl_rule("a", "t", "[\"publish\"]", "allow", "expires_at = \"soon\"\n"),
            "expires_at",
        ),
        (
            acl_rule("a", "t", "[\"publish\"]", "allow", "expires_at = \"1969-12-31T00:00:00Z\"\n"),
            "expires_at",
        ),
        (
            acl_rule("a", "t", "[\"publish\"]", "allow", "colour = \"red\"\n"),
            "colour",
        ),
        (
            "[[acl.rules]]\nprincipal = \"a\"\noperations = [\"publish\"]\neffect = \"allow\"\n"
                .to_owned(),
            "topic",
        ),
    ];
    let good_identity = "[[identity.rules]]\nmatch = \"spiffe://corp/*\"\nprincipal = \"{1}\"\n";
    let bad_identity: Vec<(String, &str)> = vec![
        (
            "[[identity.rules]]\nmatch = \"\"\nprincipal = \"x\"\n".to_owned(),
            "match",
        ),
        (
            "[[identity.rules]]\nmatch = \"a**\"\nprincipal = \"x\"\n".to_owned(),
            "match",
        ),
        (
            "[[identity.rules]]\nmatch = \"a*\"\nprincipal = \"{2}\"\n".to_owned(),
            "principal",
        ),
        (
            "[[identity.rules]]\nmatch = \"a*\"\nprincipal = \"{x\"\n".to_owned(),
            "principal",
        ),
        (
            "[[identity.rules]]\nmatch = \"a*\"\nprincipal = \"\"\n".to_owned(),
            "principal",
        ),
    ];
    let bad_superuser = select(&["\"\"", "\"admin*\"", "\"*\"", "7"][..]);
    prop_oneof![
        (0usize..4, 0usize..4, select(bad_acl)).prop_map(move |(before, after, (bad, name))| {
            let rules = [good_acl.repeat(before), bad, good_acl.repeat(after)].concat();
            Change {
                settings: Vec::new(),
                extra: rules,
                field: format!("acl.rules[{before}].{name}"),
            }
        }),
        (0usize..4, 0usize..4, select(bad_identity)).prop_map(
            move |(before, after, (bad, name))| Change {
                settings: Vec::new(),
                extra: [
                    good_identity.repeat(before),
                    bad,
                    good_identity.repeat(after)
                ]
                .concat(),
                field: format!("identity.rules[{before}].{name}"),
            }
        ),
        (
            vec("[a-z]{1,6}", 0..4),
            bad_superuser,
            vec("[a-z]{1,6}", 0..4)
        )
            .prop_map(|(before, bad, after)| {
                let list: Vec<String> = before
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .chain([bad.to_owned()])
                    .chain(after.iter().map(|s| format!("\"{s}\"")))
                    .collect();
                Change {
                    settings: vec![("acl.superusers".into(), format!("[{}]", list.join(", ")))],
                    extra: String::new(),
                    field: format!("acl.superusers[{}]", before.len()),
                }
            }),
    ]
}

fn arb_valid_settings() -> impl Strategy<Value = Vec<(Field, (String, String))>> {
    proptest::sample::subsequence(FIELDS.to_vec(), 0..=FIELDS.len())
        .prop_flat_map(|fields| {
            let values: Vec<_> = fields.iter().map(valid_value).collect();
            (Just(fields), values)
        })
        .prop_map(|(fields, values)| fields.into_iter().zip(values).collect())
}

proptest! {
    #![proptest_config(config())]

    /// A config of valid values is accepted and reads back exactly those
    /// values.
    #[test]
    fn valid_configs_read_back(chosen in arb_valid_settings()) {
        let settings: Vec<(String, String)> = chosen
            .iter()
            .map(|(f, (literal, _))| (f.path.to_owned(), literal.clone()))
            .collect();
        let text = render(&settings, "");
        let cfg = outcome(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\nin:\n{text}")))?;
        for (f, (_, expected)) in &chosen {
            prop_assert_eq!(&(f.get)(&cfg), expected, "{} in:\n{}", f.path, text);
        }
        prop_assert_eq!(&cfg.tls.cert, &base_dir().join("tls/broker.pem"));
    }

    /// One setting changed to a value of the wrong type, a refused value,
    /// an unknown setting, an inline secret or inline PEM, among valid
    /// others: refused, naming exactly that setting.
    #[test]
    fn one_bad_setting_is_named(
        change in prop_oneof![3 => arb_bad_setting(), 1 => arb_foreign_setting(), 1 => arb_bad_entry()],
        others in arb_valid_settings(),
    ) {
        let mut settings = change.settings.clone();
        for (f, (literal, _)) in &others {
            if settings.iter().all(|(p, _)| p != f.path) && f.path != "topics.durability" {
                settings.push((f.path.to_owned(), literal.clone()));
            }
        }
        let text = render(&settings, &change.extra);
        match outcome(&text) {
            Ok(_) => prop_assert!(false, "accepted, though {} is bad:\n{}", change.field, text),
            Err(e) => {
                prop_assert_eq!(e.field(), Some(change.field.as_str()), "{}\nin:\n{}", e, text);
                check_error(&text, &e)?;
            }
        }
    }

    /// Configs mutated byte by byte: no panic, and every error names a
    /// setting that exists or that the input wrote.
    #[test]
    fn mutated_configs(
        chosen in arb_valid_settings(),
        extra in select(&[
            "",
            "[[acl.rules]]\nprincipal = \"a\"\ntopic = \"t\"\noperations = [\"publish\"]\neffect = \"allow\"\n",
            "[[identity.rules]]\nmatch = \"spiffe://corp/*\"\nprincipal = \"{1}\"\n",
            "[keys.pkcs11]\nmodule = \"libsofthsm2.so\"\ntoken_label = \"t\"\npin_env = \"HOME\"\n",
        ][..]),
        mutations in vec(arb_mutation(), 1..6),
        donor in select(FIELDS).prop_flat_map(|f| valid_value(&f)),
    ) {
        let settings: Vec<(String, String)> = chosen
            .iter()
            .map(|(f, (literal, _))| (f.path.to_owned(), literal.clone()))
            .collect();
        let mut bytes = render(&settings, extra).into_bytes();
        mutate_all(&mut bytes, donor.0.as_bytes(), &mutations);
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = outcome(&text) {
            check_error(&text, &e)?;
        }
    }

    /// Random text made of TOML's own characters.
    #[test]
    fn random_text(text in "[\\[\\]a-z_.=\" \\n{},0-9-]{0,200}", cut in any::<Index>()) {
        if let Err(e) = outcome(&text) {
            check_error(&text, &e)?;
        }
        let tls = render(&[], "");
        let joined = format!("{}{}", &tls[..cut.index(tls.len())], text);
        if let Err(e) = outcome(&joined) {
            check_error(&joined, &e)?;
        }
    }
}

/// Each input in the cargo-fuzz seed corpus parses (the example config
/// among them), so the corpus keeps up with the format.
#[test]
fn seed_corpus_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/broker_config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.expect("seed entry").path();
        let text = std::fs::read_to_string(&path).expect("seed file");
        if let Err(e) = BrokerConfig::from_toml_str(&text, base_dir()) {
            panic!("{}: {e}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 2, "{seen} seeds in {}", dir.display());
}
