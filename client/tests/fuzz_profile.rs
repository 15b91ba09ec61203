//! A bounded, proptest-driven fuzz run of the client profile parser
//! (`ClientConfig::from_profile_str`, what `ClientConfig::from_profile`
//! runs on the file's text), so CI exercises it without cargo-fuzz
//! (fuzz/README.md; the coverage-guided target is `client_profile`).
//!
//! Inputs are profiles rendered from generated values (any text in the
//! string settings, TOML-escaped; relative and absolute paths; broker
//! addresses of every shape), then changed in one place (a missing, unknown
//! or wrongly typed setting, a broker address without a usable port), or
//! mutated byte by byte.
//!
//! Properties: the parser never panics; a valid profile reads back exactly
//! its values with relative paths resolved against the profile's folder; an
//! accepted broker address has a host and a port from 1 to 65535; and an
//! error names the profile file and the setting it is about.
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property.

#[path = "../../fuzz/mutation.rs"]
mod mutation;

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError};
use strongbox_client::{ClientConfig, ClientError, PemSource};

use mutation::{arb_mutation, fuzz_config, mutate_all};

const DEFAULT_CASES: u32 = 5000;

/// The settings of a profile.
const SETTINGS: &[&str] = &["broker", "server_name", "ca", "cert", "key", "client_name"];
/// The ones without a default.
const REQUIRED: &[&str] = &["broker", "ca", "cert", "key"];

fn config() -> Config {
    fuzz_config(DEFAULT_CASES)
}

fn profile_path() -> PathBuf {
    PathBuf::from("/etc/strongbox/profiles/alice.toml")
}

/// A TOML basic string holding exactly `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone)]
struct Profile {
    broker: String,
    server_name: Option<String>,
    ca: String,
    cert: String,
    key: String,
    client_name: Option<String>,
}

impl Profile {
    fn settings(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("broker".to_owned(), toml_string(&self.broker)),
            ("ca".to_owned(), toml_string(&self.ca)),
            ("cert".to_owned(), toml_string(&self.cert)),
            ("key".to_owned(), toml_string(&self.key)),
        ];
        if let Some(s) = &self.server_name {
            out.push(("server_name".to_owned(), toml_string(s)));
        }
        if let Some(s) = &self.client_name {
            out.push(("client_name".to_owned(), toml_string(s)));
        }
        out
    }
}

fn render(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect()
}

/// Characters of host names.
const HOST_CHARS: &[char] = &['a', 'b', 'k', 'r', 'z', '0', '1', '9', '-', '.'];

/// Text of `len` characters: mostly ASCII, sometimes any character at all
/// (control characters too; profiles escape them). Cheaper to draw than a
/// regex strategy, which matters at thousands of cases in a debug build.
fn arb_text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec(select(&['a', 'l', 'i', 'c', 'e', '-', '_', '.', '/', '0', '7'][..]), len.clone())
            .prop_map(String::from_iter),
        1 => vec(any::<char>(), len).prop_map(String::from_iter),
    ]
}

fn arb_broker() -> impl Strategy<Value = String> {
    let port = prop_oneof![Just(1u16), Just(7443), Just(u16::MAX), 1u16..];
    let host = prop_oneof![
        select(&["localhost", "broker.example", "b-1.strongbox.internal"][..])
            .prop_map(str::to_owned),
        vec(select(HOST_CHARS), 1..16).prop_map(|c| format!("h{}", String::from_iter(c))),
        any::<[u8; 4]>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
        any::<[u16; 8]>().prop_map(|ip| format!("[{}]", std::net::Ipv6Addr::from(ip))),
    ];
    (host, port).prop_map(|(h, p)| format!("{h}:{p}"))
}

fn arb_path() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "ca.pem",
                "../ca.pem",
                "certs/alice.pem",
                "/etc/strongbox/alice.key"
            ][..]
        )
        .prop_map(str::to_owned),
        arb_text(1..16),
    ]
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    (
        arb_broker(),
        option::of(arb_text(1..20)),
        arb_path(),
        arb_path(),
        arb_path(),
        option::of(arb_text(0..20)),
    )
        .prop_map(
            |(broker, server_name, ca, cert, key, client_name)| Profile {
                broker,
                server_name,
                ca,
                cert,
                key,
                client_name,
            },
        )
}

fn file_of(source: &PemSource) -> Option<PathBuf> {
    match source {
        PemSource::File(p) => Some(p.clone()),
        PemSource::Pem(_) => None,
    }
}

/// Checks the parser's answer for `text`; `Ok(Some(config))` when accepted.
fn check(text: &str) -> Result<Option<ClientConfig>, TestCaseError> {
    match ClientConfig::from_profile_str(text, &profile_path()) {
        Ok(config) => {
            // host:port or [v6]:port: a host, and a port a socket can use.
            let (host, port) = config
                .broker
                .rsplit_once(':')
                .ok_or_else(|| TestCaseError::fail(format!("{:?} accepted", config.broker)))?;
            prop_assert!(!host.trim().is_empty(), "{:?} accepted", config.broker);
            prop_assert!(
                !host.contains(':') || (host.starts_with('[') && host.ends_with(']')),
                "{:?} accepted",
                config.broker
            );
            prop_assert!(
                port.bytes().all(|b| b.is_ascii_digit())
                    && port.parse::<u16>().is_ok_and(|p| p > 0),
                "{:?} accepted",
                config.broker
            );
            Ok(Some(config))
        }
        Err(ClientError::Profile { path, message }) => {
            prop_assert_eq!(&path, &profile_path());
            prop_assert!(!message.is_empty());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("not a profile error: {other}"))),
    }
}

/// The error message for `text`, which must be refused.
fn refusal(text: &str) -> Result<String, TestCaseError> {
    match check(text)? {
        Some(_) => Err(TestCaseError::fail(format!("accepted:\n{text}"))),
        None => Ok(ClientConfig::from_profile_str(text, &profile_path())
            .expect_err("refused")
            .to_string()),
    }
}

proptest! {
    #![proptest_config(config())]

    /// A valid profile reads back exactly, with relative paths resolved
    /// against the profile's folder.
    #[test]
    fn valid_profiles_read_back(p in arb_profile()) {
        let text = render(&p.settings());
        let config = check(&text)?
            .ok_or_else(|| TestCaseError::fail(format!("refused:\n{text}")))?;
        let folder = profile_path().parent().expect("folder").to_owned();
        let resolved = |s: &str| folder.join(s);
        prop_assert_eq!(&config.broker, &p.broker);
        prop_assert_eq!(&config.server_name, &p.server_name);
        prop_assert_eq!(file_of(&config.ca), Some(resolved(&p.ca)));
        prop_assert_eq!(file_of(&config.cert), Some(resolved(&p.cert)));
        prop_assert_eq!(file_of(&config.key), Some(resolved(&p.key)));
        if let Some(name) = &p.client_name {
            prop_assert_eq!(&config.client_name, name);
        }
    }

    /// One setting missing, unknown, or of the wrong type: refused, naming
    /// that setting.
    #[test]
    fn one_bad_setting_is_named(
        p in arb_profile(),
        which in select(SETTINGS),
        how in 0u8..3,
        unknown in prop_oneof![
            select(&["brokers", "port", "ca_file", "password", "timeout", "Broker"][..])
                .prop_map(str::to_owned),
            vec(select(&['a', 'e', 'k', 'r', 's', 'y', '_'][..]), 1..12)
                .prop_map(|c| format!("x{}", String::from_iter(c))),
        ],
        wrong in select(&["7443", "true", "1.5", "[\"a\"]", "{ a = \"b\" }", "2024-01-01"][..]),
    ) {
        let mut settings = p.settings();
        let named = match how {
            0 if REQUIRED.contains(&which) => {
                settings.retain(|(k, _)| k != which);
                which.to_owned()
            }
            1 if !SETTINGS.contains(&unknown.as_str()) => {
                settings.push((unknown.clone(), "\"x\"".into()));
                unknown
            }
            _ => {
                settings.retain(|(k, _)| k != which);
                settings.push((which.to_owned(), wrong.to_owned()));
                which.to_owned()
            }
        };
        let text = render(&settings);
        let message = refusal(&text)?;
        prop_assert!(message.contains("alice.toml"), "{}", message);
        prop_assert!(message.contains(&format!("`{named}`")), "{} does not name `{}`", message, named);
    }

    /// Broker addresses without a usable port or host are refused, naming
    /// `broker`.
    #[test]
    fn broker_needs_host_and_port(
        p in arb_profile(),
        host in select(&["h", "localhost", "10.0.0.1", "[::1]"][..]),
        bad_port in select(&["", "x", "0", "00", "65536", "70000", "123456", "-1", " 80", "80 ", "0x50", "+80"][..]),
        whole in select(&["", "   ", "localhost", "::1", "[::1]", ":7443", " :7443", "a:b:7443"][..]),
        use_whole in any::<bool>(),
    ) {
        let broker = if use_whole { whole.to_owned() } else { format!("{host}:{bad_port}") };
        let mut settings = p.settings();
        settings.retain(|(k, _)| k != "broker");
        settings.push(("broker".to_owned(), toml_string(&broker)));
        let text = render(&settings);
        let message = refusal(&text)?;
        prop_assert!(message.contains("`broker`"), "{}", message);
    }

    /// Profiles mutated byte by byte: no panic; an accepted one has a usable
    /// broker address; an error names the file.
    #[test]
    fn mutated_profiles(
        p in arb_profile(),
        donor in arb_profile(),
        mutations in vec(arb_mutation(), 1..6),
    ) {
        let mut bytes = render(&p.settings()).into_bytes();
        mutate_all(&mut bytes, render(&donor.settings()).as_bytes(), &mutations);
        check(&String::from_utf8_lossy(&bytes))?;
    }

    /// Random text made of TOML's own characters.
    #[test]
    fn random_text(
        chars in vec(select(&['[', ']', 'a', 'b', 'k', 'e', 'y', '_', '.', '=', '"', ' ', '\n', '{', '}', ',', ':', '0', '7', '-', '\''][..]), 0..160),
    ) {
        let text = String::from_iter(chars);
        check(&text)?;
    }
}

/// Each input in the cargo-fuzz seed corpus is a valid profile, so the
/// corpus keeps up with the format.
#[test]
fn seed_corpus_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/client_profile");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.expect("seed entry").path();
        let text = std::fs::read_to_string(&path).expect("seed file");
        if let Err(e) = ClientConfig::from_profile_str(&text, &path) {
            panic!("{e}");
        }
        seen += 1;
    }
    assert!(seen >= 2, "{seen} seeds in {}", dir.display());
}
