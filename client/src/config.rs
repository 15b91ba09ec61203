//! Client configuration and the profile file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use strongbox_protocol::frame::DEFAULT_MAX_FRAME_SIZE;
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::tls::KeyExchange;

/// Where a PEM document (CA bundle, certificate chain or private key) comes
/// from.
///
/// `Debug` never shows the contents: it prints the path, or the length of
/// inline PEM.
#[derive(Clone)]
pub enum PemSource {
    /// A PEM file, read at every connection attempt (so a renewed
    /// certificate is picked up on reconnect).
    File(PathBuf),
    /// PEM text held in memory (zeroized when dropped).
    Pem(Zeroizing<Vec<u8>>),
}

impl PemSource {
    /// A PEM file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File(path.into())
    }

    /// PEM text held in memory.
    pub fn pem(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Pem(Zeroizing::new(bytes.into()))
    }

    /// Reads the PEM text.
    pub(crate) fn load(&self, what: &'static str) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        match self {
            Self::File(path) => {
                std::fs::read(path)
                    .map(Zeroizing::new)
                    .map_err(|e| ClientError::Credentials {
                        what,
                        source_name: path.display().to_string(),
                        message: e.to_string(),
                    })
            }
            Self::Pem(bytes) => Ok(bytes.clone()),
        }
    }

    /// A name for error messages: the path, or `inline PEM`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Pem(_) => "inline PEM".into(),
        }
    }
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Pem(bytes) => write!(f, "Pem(<{} bytes>)", bytes.len()),
        }
    }
}

impl From<PathBuf> for PemSource {
    fn from(path: PathBuf) -> Self {
        Self::File(path)
    }
}

impl From<&Path> for PemSource {
    fn from(path: &Path) -> Self {
        Self::File(path.to_owned())
    }
}

/// How producers and consumers reconnect after the connection drops.
///
/// Delays grow exponentially from `initial_backoff` to `max_backoff`; each
/// is drawn at random between half and all of its nominal value ("equal
/// jitter"), so clients that lost the same broker do not return in step.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Delay before the second attempt (the first is immediate).
    pub initial_backoff: Duration,
    /// Largest delay between attempts.
    pub max_backoff: Duration,
    /// Factor applied to the delay after each failed attempt (at least 1).
    pub multiplier: f64,
    /// Stop trying after this long and fail whatever waits on the
    /// connection; `None` retries until the client is closed.
    pub give_up_after: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            give_up_after: Some(Duration::from_secs(120)),
        }
    }
}

/// Everything [`Client::connect`](crate::Client::connect) needs.
///
/// Build one with [`ClientConfig::new`] or load a profile with
/// [`ClientConfig::from_profile`], then adjust the public fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The broker's address: `host:port` or an IP socket address; with
    /// several brokers, the first one tried.
    pub broker: String,
    /// Further brokers of the same cluster, tried in order after `broker`
    /// when it cannot be reached, and on reconnection (see
    /// [`ClientConfig::brokers`]).
    pub fallback_brokers: Vec<String>,
    /// The name the broker's certificate must carry; the host part of
    /// `broker` when `None`.
    pub server_name: Option<String>,
    /// CA certificates that sign the broker's certificate.
    pub ca: PemSource,
    /// This client's certificate chain, leaf first.
    pub cert: PemSource,
    /// This client's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PemSource,
    /// Name and version of the application, for the broker's logs.
    pub client_name: String,
    /// Keep-alive interval until the broker announces its own.
    pub keepalive: Duration,
    /// Limit on establishing a connection (QUIC, TLS and the Hello/Welcome
    /// handshake).
    pub connect_timeout: Duration,
    /// Limit on one admin request, from opening its stream to the answer.
    pub request_timeout: Duration,
    /// Reconnection after the connection drops.
    pub reconnect: ReconnectPolicy,
    /// Largest frame this client accepts from the broker.
    pub max_frame_size: u32,
    /// Key exchange groups offered in the TLS handshake.
    pub key_exchange: KeyExchange,
}

impl ClientConfig {
    /// A configuration with default timeouts.
    pub fn new(
        broker: impl Into<String>,
        ca: impl Into<PemSource>,
        cert: impl Into<PemSource>,
        key: impl Into<PemSource>,
    ) -> Self {
        Self {
            broker: broker.into(),
            fallback_brokers: Vec::new(),
            server_name: None,
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            client_name: concat!("strongbox-client/", env!("CARGO_PKG_VERSION")).into(),
            keepalive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            reconnect: ReconnectPolicy::default(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            key_exchange: KeyExchange::default(),
        }
    }

    /// Loads a profile file (see the [crate docs](crate#profiles) for the
    /// format). Relative paths in it are relative to the profile's folder.
    ///
    /// # Errors
    ///
    /// [`ClientError::Profile`] when the file cannot be read, is not valid
    /// TOML, lacks a field or has an unknown one.
    pub fn from_profile(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Profile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_profile_str(&text, path)
    }

    /// Parses the text of a profile as if read from `path`: relative paths
    /// in it resolve against `path`'s folder, and errors name `path`.
    ///
    /// # Errors
    ///
    /// As [`from_profile`](Self::from_profile), except reading.
    pub fn from_profile_str(text: &str, path: &Path) -> Result<Self, ClientError> {
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        Profile::parse(text)
            .map_err(|message| ClientError::Profile {
                path: path.to_owned(),
                message,
            })
            .map(|p| p.into_config(base))
    }

    /// A configuration for several brokers of one cluster, tried in order.
    ///
    /// # Panics
    ///
    /// Never; an empty list gives an empty `broker`, which fails to
    /// connect with a message saying so.
    pub fn with_brokers(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        ca: impl Into<PemSource>,
        cert: impl Into<PemSource>,
        key: impl Into<PemSource>,
    ) -> Self {
        let mut all = brokers.into_iter().map(Into::into);
        let first = all.next().unwrap_or_default();
        let mut config = Self::new(first, ca, cert, key);
        config.fallback_brokers = all.collect();
        config
    }

    /// Every broker address in the order tried: `broker`, then
    /// `fallback_brokers` (repeats left out).
    pub fn brokers(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![self.broker.as_str()];
        for b in &self.fallback_brokers {
            if !out.contains(&b.as_str()) {
                out.push(b);
            }
        }
        out
    }

    /// The TLS server name: `server_name`, or the host part of `broker`.
    pub fn effective_server_name(&self) -> String {
        self.server_name_for(&self.broker)
    }

    /// The TLS server name for the broker at `addr`: `server_name`, or the
    /// host part of `addr`.
    pub fn server_name_for(&self, addr: &str) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        host_of(addr).to_owned()
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn host_of(broker: &str) -> &str {
    if let Some(rest) = broker.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match broker.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => broker,
    }
}

/// True for `host:port` and `[v6]:port` with a port from 1 to 65535. A host
/// with a colon must be in brackets, or the port could not be told apart.
fn has_host_and_port(broker: &str) -> bool {
    broker.rsplit_once(':').is_some_and(|(host, port)| {
        !host.trim().is_empty()
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

/// Checks one broker address of a profile; `name` is how the message
/// names the setting.
fn check_address(name: &str, broker: &str) -> Result<(), String> {
    if broker.trim().is_empty() {
        return Err(format!(
            "{name} is empty; expected host:port such as 127.0.0.1:7443"
        ));
    }
    if !broker.contains(':') {
        return Err(format!(
            "{name} = {broker:?} has no port; expected host:port such as 127.0.0.1:7443"
        ));
    }
    if !has_host_and_port(broker) {
        return Err(format!(
            "{name} = {broker:?} is not host:port (a host, an IPv6 one in brackets, and a port \
             from 1 to 65535); expected host:port such as 127.0.0.1:7443 or [::1]:7443"
        ));
    }
    Ok(())
}

/// The profile file as written by `strongbox-broker dev`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    #[serde(default)]
    broker: Option<String>,
    #[serde(default)]
    brokers: Option<Vec<String>>,
    server_name: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_name: Option<String>,
    key_exchange: Option<KeyExchange>,
}

impl Profile {
    fn parse(text: &str) -> Result<Self, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.message().to_owned())?;
        // The path names the setting a type error is about; serde's own
        // message does not ("invalid type: integer `7443`, expected a string").
        let profile: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().message().to_owned();
            if path == "." {
                message
            } else {
                format!("`{path}`: {message}")
            }
        })?;
        match (&profile.broker, &profile.brokers) {
            (Some(_), Some(_)) => {
                return Err(
                    "both `broker` and `brokers` are set; give one broker as `broker = \
                     \"host:port\"` or several as `brokers = [\"host:port\", ...]`, not both"
                        .into(),
                );
            }
            (None, None) => return Err("missing field `broker` (or `brokers`)".into()),
            (None, Some(list)) if list.is_empty() => {
                return Err("`brokers` is empty; list at least one host:port".into());
            }
            _ => {}
        }
        for (i, b) in profile.addresses().iter().enumerate() {
            let name = match &profile.broker {
                Some(_) => "`broker`".to_owned(),
                None => format!("`brokers[{i}]`"),
            };
            check_address(&name, b)?;
        }
        Ok(profile)
    }

    /// The broker addresses, in order.
    fn addresses(&self) -> Vec<String> {
        match (&self.broker, &self.brokers) {
            (Some(b), _) => vec![b.clone()],
            (None, Some(list)) => list.clone(),
            (None, None) => Vec::new(),
        }
    }

    fn into_config(self, base: &Path) -> ClientConfig {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let mut config = ClientConfig::with_brokers(
            self.addresses(),
            resolve(self.ca),
            resolve(self.cert),
            resolve(self.key),
        );
        config.server_name = self.server_name;
        if let Some(name) = self.client_name {
            config.client_name = name;
        }
        if let Some(kx) = self.key_exchange {
            config.key_exchange = kx;
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_profile(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("profiles");
        std::fs::create_dir(&sub).expect("mkdir");
        let path = sub.join("alice.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn profile_paths_are_relative_to_the_profile() {
        let (dir, path) = write_profile(
            "broker = \"127.0.0.1:7443\"\nserver_name = \"localhost\"\n\
             ca = \"../ca.pem\"\ncert = \"alice.pem\"\nkey = \"/etc/strongbox/alice.key\"\n",
        );
        let config = ClientConfig::from_profile(&path).expect("valid profile");
        let profiles = dir.path().join("profiles");
        assert_eq!(config.broker, "127.0.0.1:7443");
        assert_eq!(config.effective_server_name(), "localhost");
        match (&config.ca, &config.cert, &config.key) {
            (PemSource::File(ca), PemSource::File(cert), PemSource::File(key)) => {
                assert_eq!(ca, &profiles.join("../ca.pem"));
                assert_eq!(cert, &profiles.join("alice.pem"));
                assert_eq!(key, Path::new("/etc/strongbox/alice.key"));
            }
            other => panic!("expected files, got {other:?}"),
        }
    }

    #[test]
    fn missing_field_names_the_field_and_the_file() {
        let (_dir, path) =
            write_profile("broker = \"127.0.0.1:7443\"\nca = \"ca.pem\"\ncert = \"a.pem\"\n");
        let err = ClientConfig::from_profile(&path).expect_err("no key");
        let text = err.to_string();
        assert!(text.contains("alice.toml"), "{text}");
        assert!(text.contains("missing field `key`"), "{text}");
    }

    #[test]
    fn key_exchange_is_read_from_the_profile() {
        let (_dir, path) = write_profile(
            "broker = \"h:1\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n\
             key_exchange = \"require-hybrid\"\n",
        );
        let config = ClientConfig::from_profile(&path).expect("valid profile");
        assert_eq!(config.key_exchange, KeyExchange::RequireHybrid);
        let (_dir, path) =
            write_profile("broker = \"h:1\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n");
        let config = ClientConfig::from_profile(&path).expect("valid profile");
        assert_eq!(config.key_exchange, KeyExchange::PreferHybrid);
        let (_dir, path) = write_profile(
            "broker = \"h:1\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nkey_exchange = \"pq\"\n",
        );
        let text = ClientConfig::from_profile(&path)
            .expect_err("unknown policy")
            .to_string();
        assert!(text.contains("unknown variant `pq`"), "{text}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let (_dir, path) = write_profile(
            "broker = \"h:1\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\npassword = \"x\"\n",
        );
        let text = ClientConfig::from_profile(&path)
            .expect_err("unknown field")
            .to_string();
        assert!(text.contains("unknown field `password`"), "{text}");
    }

    #[test]
    fn broker_without_port_is_refused() {
        let (_dir, path) =
            write_profile("broker = \"localhost\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n");
        let text = ClientConfig::from_profile(&path)
            .expect_err("no port")
            .to_string();
        assert!(text.contains("has no port"), "{text}");
    }

    /// Regression (found by `client/tests/fuzz_profile.rs`): a wrongly typed
    /// setting was refused without naming it, and a broker address with an
    /// empty, non-numeric or out-of-range port was accepted.
    #[test]
    fn wrong_types_and_unusable_ports_are_named() {
        let text = Profile::parse("broker = 7443\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n")
            .expect_err("integer broker");
        assert!(text.starts_with("`broker`: invalid type"), "{text}");
        let text = Profile::parse("broker = \"h:1\"\nca = \"c\"\ncert = [1]\nkey = \"k\"\n")
            .expect_err("list cert");
        assert!(text.starts_with("`cert`: invalid type"), "{text}");
        for broker in [
            "h:",
            "h:x",
            "h:0",
            "h:65536",
            "h: 80",
            "h:+80",
            ":80",
            "::1",
            "[::1]",
            "a:b:80",
            // Found by the cargo-fuzz target `client_profile`.
            "127.0.0.1:744:",
        ] {
            let text = Profile::parse(&format!(
                "broker = {broker:?}\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n"
            ))
            .expect_err(broker);
            assert!(text.contains("is not host:port"), "{broker}: {text}");
        }
        for broker in ["h:1", "10.0.0.1:65535", "[::1]:7443", "broker.example:7443"] {
            let text = format!("broker = {broker:?}\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n");
            assert!(Profile::parse(&text).is_ok(), "{broker}");
        }
    }

    #[test]
    fn several_brokers_are_tried_in_order() {
        let (_dir, path) = write_profile(
            "brokers = [\"127.0.0.1:7443\", \"127.0.0.1:7444\", \"[::1]:7445\"]\n\
             server_name = \"localhost\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n",
        );
        let config = ClientConfig::from_profile(&path).expect("valid profile");
        assert_eq!(config.broker, "127.0.0.1:7443");
        assert_eq!(
            config.brokers(),
            ["127.0.0.1:7443", "127.0.0.1:7444", "[::1]:7445"]
        );
        // One `broker` is one address.
        let config = Profile::parse("broker = \"h:1\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n")
            .expect("single")
            .into_config(Path::new("."));
        assert_eq!(config.brokers(), ["h:1"]);
        let c = ClientConfig::with_brokers(
            ["a:1", "b:2", "a:1"],
            PathBuf::new(),
            PathBuf::new(),
            PathBuf::new(),
        );
        assert_eq!(c.brokers(), ["a:1", "b:2"]);
        assert_eq!(c.server_name_for("b:2"), "b");
    }

    #[test]
    fn broker_and_brokers_together_or_neither_are_refused() {
        let text = Profile::parse(
            "broker = \"h:1\"\nbrokers = [\"h:2\"]\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n",
        )
        .expect_err("both");
        assert!(
            text.contains("both `broker` and `brokers` are set"),
            "{text}"
        );
        let text = Profile::parse("ca = \"c\"\ncert = \"c\"\nkey = \"k\"\n").expect_err("neither");
        assert!(
            text.contains("missing field `broker` (or `brokers`)"),
            "{text}"
        );
        let text = Profile::parse("brokers = []\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n")
            .expect_err("empty");
        assert!(text.contains("`brokers` is empty"), "{text}");
        let text =
            Profile::parse("brokers = [\"h:1\", \"h\"]\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n")
                .expect_err("no port");
        assert!(text.contains("`brokers[1]` = \"h\" has no port"), "{text}");
    }

    #[test]
    fn unreadable_profile_names_the_file() {
        let err = ClientConfig::from_profile("/nonexistent/strongbox/profile.toml")
            .expect_err("missing file");
        assert!(matches!(err, ClientError::Profile { .. }));
        assert!(
            err.to_string()
                .contains("/nonexistent/strongbox/profile.toml")
        );
    }

    #[test]
    fn server_name_defaults_to_the_broker_host() {
        let mut c = ClientConfig::new(
            "broker.example:7443",
            PathBuf::new(),
            PathBuf::new(),
            PathBuf::new(),
        );
        assert_eq!(c.effective_server_name(), "broker.example");
        c.broker = "[::1]:7443".into();
        assert_eq!(c.effective_server_name(), "::1");
        c.broker = "10.0.0.1:7443".into();
        assert_eq!(c.effective_server_name(), "10.0.0.1");
    }

    #[test]
    fn debug_never_shows_inline_pem() {
        let key = PemSource::pem(b"-----BEGIN PRIVATE KEY-----\nsecret\n".to_vec());
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret"));
        assert!(shown.contains("bytes"));
    }
}
