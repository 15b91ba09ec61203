//! The broker's configuration: one TOML file, read once at start.
//!
//! [`BrokerConfig::load`] parses the file strictly (unknown fields are
//! errors, so a typo never silently falls back to a default), refuses inline
//! secrets, and resolves relative paths against the file's own directory, so
//! a config and the files it names can be moved together.
//! [`BrokerConfig::validate`] then checks values and their relations and that
//! the files it names exist. Every error names the field it is about
//! (`listener.addr: invalid socket address syntax`), because the operator
//! reading it has the file open, not this code.
//!
//! `deploy/broker.example.toml` lists every field with its default.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use strongbox_broker::config::BrokerConfig;
//!
//! let cfg = BrokerConfig::from_toml_str(
//!     r#"
//!     [tls]
//!     cert = "tls/broker.pem"
//!     key = "tls/broker.key"
//!     client_ca = "tls/clients-ca.pem"
//!     "#,
//!     std::path::Path::new("/etc/strongbox"),
//! )?;
//! assert_eq!(cfg.listener.addr.port(), 7443);
//! assert_eq!(cfg.tls.cert, std::path::Path::new("/etc/strongbox/tls/broker.pem"));
//! # Ok(())
//! # }
//! ```

mod acl_seed;
pub mod cluster;
mod identity_rules;
pub mod log_filter;
mod secrets;
mod validate;
mod values;

pub use acl_seed::seed_rules;
pub use cluster::{ClusterConfig, MemberConfig, SINGLE_NODE_ID};
pub(crate) use validate::PRODUCE_FRAME_HEADROOM;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use strongbox_protocol::model::{Durability, TopicConfig};

pub use values::{
    CrlCheck, DurabilityMode, Effect, HumanDuration, KeyProviderKind, LogFormat, Retention,
};

/// Largest config file accepted; a config is a few kilobytes, anything
/// bigger is a mistake (a key or a log file given as the config).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// An error in the configuration, naming the field it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config is not valid TOML: {message}")]
    Syntax {
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a value that is not acceptable, or is unknown.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field (`listener.addr`, `acl.rules[2].effect`).
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A secret was written into the config instead of being referenced.
    #[error("{field}: inline secrets are not accepted; {hint}")]
    InlineSecret {
        /// Dotted path of the field.
        field: String,
        /// Where the secret belongs instead.
        hint: &'static str,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::InlineSecret { field, .. } => Some(field),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

/// The whole broker configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `[broker]`: identity of this broker and where it keeps data.
    #[serde(default)]
    pub broker: BrokerSection,
    /// `[listener]`: the QUIC listener and its limits.
    #[serde(default)]
    pub listener: ListenerConfig,
    /// `[tls]`: certificates, the client CA and revocation lists.
    pub tls: TlsConfig,
    /// `[identity]`: rules rewriting certificate identities into principals.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// `[acl]`: superusers and the ACL rules seeded at start.
    #[serde(default)]
    pub acl: AclConfig,
    /// `[keys]`: the key-encryption key provider.
    #[serde(default)]
    pub keys: KeysConfig,
    /// `[metrics]`: the Prometheus and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[topics]`: defaults for topics created without explicit settings.
    #[serde(default)]
    pub topics: TopicDefaults,
    /// `[log]`: log output.
    #[serde(default)]
    pub log: LogConfig,
    /// `[checkpoints]`: signed checkpoints of the broker's state.
    #[serde(default)]
    pub checkpoints: CheckpointsConfig,
    /// `[cluster]`: this node's place in a cluster; absent for a cluster of
    /// one.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// The file this config was loaded from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Stable identifier of this broker, shown to clients in `Welcome`.
    pub id: String,
    /// Directory of the log, the metadata store and the audit trail.
    pub data_dir: PathBuf,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            id: "strongbox".into(),
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `[listener]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// UDP address of the QUIC listener.
    pub addr: SocketAddr,
    /// Most connections open (or handshaking) at once; more are refused.
    pub max_connections: u32,
    /// Most bidirectional streams a client may have open at once (control,
    /// producers, subscriptions and admin requests together).
    pub max_bidi_streams_per_connection: u32,
    /// Largest frame accepted, in bytes (type and body).
    pub max_frame_size: u32,
    /// Largest record batch accepted in one `Produce` frame.
    pub max_batch_size: u32,
    /// Most unacknowledged `Produce` frames per producer stream.
    pub max_in_flight: u32,
    /// Interval of QUIC keep-alives, well under `idle_timeout`.
    pub keepalive: HumanDuration,
    /// A connection silent for this long is closed.
    pub idle_timeout: HumanDuration,
    /// A handshake (TLS and identity) not complete after this long is dropped.
    pub handshake_timeout: HumanDuration,
    /// On shutdown, how long open connections get to finish their work
    /// before they are closed.
    pub shutdown_grace: HumanDuration,
    /// Requested UDP receive buffer, in bytes.
    pub udp_recv_buffer: u32,
    /// Requested UDP send buffer, in bytes.
    pub udp_send_buffer: u32,
}

/// Default UDP socket buffer: small buffers drop packets under load on
/// loopback already (see DEPENDENCIES.md).
pub const DEFAULT_UDP_BUFFER: u32 = 4 * 1024 * 1024;

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 7443)),
            max_connections: 10_000,
            max_bidi_streams_per_connection: 1024,
            max_frame_size: strongbox_protocol::frame::DEFAULT_MAX_FRAME_SIZE,
            max_batch_size: 1024 * 1024,
            max_in_flight: 1024,
            keepalive: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(30)),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
            udp_recv_buffer: DEFAULT_UDP_BUFFER,
            udp_send_buffer: DEFAULT_UDP_BUFFER,
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The broker's certificate chain (PEM), leaf first; reloaded when it
    /// changes and on SIGHUP.
    pub cert: PathBuf,
    /// The broker's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA bundle (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER), reloaded when they change.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// How often the TLS files (certificate, key, client CA bundle, CRLs)
    /// are checked for changes.
    #[serde(default = "default_crl_reload")]
    pub crl_reload: HumanDuration,
    /// Which certificates of a client chain are checked against the CRLs.
    #[serde(default)]
    pub crl_check: CrlCheck,
    /// Accept a certificate whose revocation status no CRL covers. Off:
    /// with CRLs configured, a chain they say nothing about is refused.
    #[serde(default)]
    pub allow_unknown_revocation_status: bool,
    /// Refuse certificates when a CRL is past its `nextUpdate`.
    #[serde(default)]
    pub enforce_crl_expiry: bool,
    /// Key exchange groups of the TLS handshake: `prefer-hybrid` (the
    /// post-quantum hybrid X25519MLKEM768 first, classical groups for
    /// clients without it), `require-hybrid` (refuse classical-only
    /// clients) or `classical`.
    #[serde(default)]
    pub key_exchange: strongbox_tls::KeyExchange,
}

fn default_crl_reload() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Rules tried in order; the first that matches rewrites the identity.
    pub rules: Vec<IdentityRuleConfig>,
    /// Refuse a certificate whose identity no rule matches (otherwise it is
    /// used unchanged).
    pub require_match: bool,
}

/// One `[[identity.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRuleConfig {
    /// The pattern: literal text with `*` wildcards, each capturing what it
    /// matched (`spiffe://corp/ns/*/sa/*`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The principal to use: literal text with `{0}` (the whole identity)
    /// and `{1}`, `{2}`, ... (the wildcards' captures).
    pub principal: String,
}

/// `[acl]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Principals allowed everything, whatever the rules say.
    pub superusers: Vec<String>,
    /// Rules seeded into the ACL store at start.
    pub rules: Vec<AclRuleConfig>,
}

/// One `[[acl.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// Principal pattern: `*`, an exact principal, or a prefix ending in `*`.
    pub principal: String,
    /// Topic pattern: `*`, an exact topic, or a prefix ending in `*`.
    pub topic: String,
    /// Operation names (`publish`, `subscribe`, `describe`, `create`,
    /// `delete`, `alter`, `grant`, `keys`, `audit`, `admin`).
    pub operations: Vec<String>,
    /// `allow` or `deny`.
    pub effect: Effect,
    /// RFC 3339 time after which the rule no longer applies.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Which provider holds the key-encryption keys.
    #[serde(default)]
    pub provider: KeyProviderKind,
    /// Rotate every scope's active key-encryption key once it is this old
    /// (checked by the maintenance task); never when unset.
    #[serde(default)]
    pub rotate_every: Option<HumanDuration>,
    /// Most key envelopes the rewrap job rewraps per second.
    #[serde(default = "default_rewrap_rate")]
    pub rewrap_rate: u32,
    /// `[keys.file]`: the development file keystore.
    #[serde(default)]
    pub file: FileKeysConfig,
    /// `[keys.pkcs11]`: an HSM through PKCS#11.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
}

/// Envelopes per second when `keys.rewrap_rate` is not set.
const DEFAULT_REWRAP_RATE: u32 = 200;

fn default_rewrap_rate() -> u32 {
    DEFAULT_REWRAP_RATE
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: KeyProviderKind::File,
            rotate_every: None,
            rewrap_rate: default_rewrap_rate(),
            file: FileKeysConfig::default(),
            pkcs11: None,
        }
    }
}

/// `[keys.file]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileKeysConfig {
    /// Directory of the key files (created 0700 by the provider).
    pub dir: PathBuf,
}

impl Default for FileKeysConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("keys"),
        }
    }
}

/// `[keys.pkcs11]`. The PIN is given by file or environment variable only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`libsofthsm2.so`, the HSM vendor's).
    pub module: PathBuf,
    /// Label of the token holding the keys (slot ids get renumbered).
    pub token_label: String,
    /// File whose content is the user PIN.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Name of the environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`.
    pub enabled: bool,
    /// TCP address of that endpoint.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9644)),
        }
    }
}

/// `[topics]`: what a topic gets when its creator does not say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    /// Partitions of a new topic.
    pub partitions: u32,
    /// When appends are acknowledged.
    pub durability: DurabilityMode,
    /// With `durability = "interval"`: the longest time between syncs.
    pub durability_interval: HumanDuration,
    /// Roll the active segment at this size, in bytes.
    pub segment_bytes: u64,
    /// Roll the active segment at this age.
    pub segment_age: HumanDuration,
    /// Delete segments older than this (`forever` keeps them).
    pub retention: Retention,
    /// Delete the oldest segments while a partition is larger than this.
    pub retention_bytes: Option<u64>,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            partitions: 1,
            durability: DurabilityMode::Fsync,
            durability_interval: HumanDuration(Duration::from_millis(100)),
            segment_bytes: 256 * 1024 * 1024,
            segment_age: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            retention: Retention::After(HumanDuration(Duration::from_secs(7 * 24 * 3600))),
            retention_bytes: None,
        }
    }
}

impl TopicDefaults {
    /// The durability as the protocol states it.
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityMode::Fsync => Durability::Fsync,
            DurabilityMode::Interval => Durability::Interval {
                interval_ms: u32::try_from(self.durability_interval.0.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(1),
            },
            DurabilityMode::None => Durability::None,
        }
    }

    /// The configuration of a topic created with only a partition count
    /// (or not even that).
    pub fn topic_config(&self, partitions: Option<u32>) -> TopicConfig {
        TopicConfig {
            partitions: partitions.unwrap_or(self.partitions),
            durability: self.durability(),
            retention_ms: self.retention.as_millis(),
            retention_bytes: self.retention_bytes,
            segment_bytes: Some(self.segment_bytes),
            segment_ms: Some(u64::try_from(self.segment_age.0.as_millis()).unwrap_or(u64::MAX)),
            dedicated_kek: false,
        }
    }
}

/// `[checkpoints]`: at `interval` and at shutdown the broker signs a
/// checkpoint of its state (audit head, partition ends and seals, key
/// registry) with the key provider's checkpoint key, appends it to
/// `_audit`, and writes it where a rolled-back copy of the data directory
/// cannot take it back: `export_dir` and/or standard output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointsConfig {
    /// Sign checkpoints at all.
    pub enabled: bool,
    /// How often, besides at shutdown.
    pub interval: HumanDuration,
    /// A directory outside `broker.data_dir` (another disk or a mount that
    /// backups of the data directory do not restore): each checkpoint is
    /// appended to `<broker id>.checkpoints.jsonl` there and replaces
    /// `<broker id>.latest.json`.
    pub export_dir: Option<PathBuf>,
    /// Also print each checkpoint on standard output as one JSON line (for
    /// log shipping).
    pub stdout: bool,
}

impl Default for CheckpointsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: HumanDuration(Duration::from_secs(300)),
            export_dir: None,
            stdout: false,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines (see
    /// [`crate::logging`]).
    pub format: LogFormat,
    /// A level (`info`) or per-target directives
    /// (`info,strongbox_broker=debug`); `RUST_LOG` takes precedence when
    /// set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl BrokerConfig {
    /// Reads and parses the config file at `path`; relative paths in it
    /// resolve against its directory. Call [`validate`](Self::validate) next.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not TOML, has an unknown field, a value of
    /// the wrong type, or an inline secret.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Syntax {
                message: format!(
                    "{} is {} bytes, more than a config can be ({MAX_CONFIG_BYTES})",
                    path.display(),
                    meta.len()
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut cfg = Self::from_toml_str(&text, &base)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses a config from TOML text; relative paths resolve against
    /// `base_dir`.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), except reading.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        // Look for inline secrets first: a PIN or a key pasted into the file
        // must be reported as such, not as a generic unknown field.
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    message: syntax_message(&e, text),
                })?;
        secrets::reject_inline_secrets(&table)?;

        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            message: syntax_message(&e, text),
        })?;
        let mut cfg: Self = serde_path_to_error::deserialize(de).map_err(field_error)?;
        cfg.resolve_paths(base_dir);
        Ok(cfg)
    }

    /// Makes every relative path absolute against `base`.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.broker.data_dir);
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        resolve(&mut self.tls.client_ca);
        self.tls.crls.iter_mut().for_each(resolve);
        resolve(&mut self.keys.file.dir);
        if let Some(dir) = self.checkpoints.export_dir.as_mut() {
            resolve(dir);
        }
        if let Some(p) = self.keys.pkcs11.as_mut() {
            // A bare module name (`libsofthsm2.so`) is left for the dynamic
            // loader's search path; only paths with a directory resolve.
            if p.module.components().count() > 1 {
                resolve(&mut p.module);
            }
            if let Some(pin) = p.pin_file.as_mut() {
                resolve(pin);
            }
        }
    }

    /// This node's id: `cluster.node_id`, or 1 without `[cluster]`.
    pub fn node_id(&self) -> u64 {
        self.cluster.as_ref().map_or(SINGLE_NODE_ID, |c| c.node_id)
    }

    /// Checks values, their relations, and that the files named exist.
    ///
    /// # Errors
    ///
    /// The first problem found, naming its field.
    pub fn validate(self) -> Result<Self, ConfigError> {
        validate::validate(&self)?;
        Ok(self)
    }
}

/// A TOML syntax error, with its line and column when the parser gave a span.
fn syntax_message(e: &toml::de::Error, text: &str) -> String {
    match e.span().and_then(|s| line_col(text, s.start)) {
        Some((line, col)) => format!("{} (line {line}, column {col})", e.message().trim()),
        None => e.message().trim().to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

/// Turns a deserialization error into one naming the field. For a missing
/// field serde reports the enclosing table (and for an unknown one it may);
/// the field's own name is in the message, so it is appended when the path
/// does not already end with it.
fn field_error(e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = e.path().to_string();
    let message = e.inner().message().trim().to_string();
    let mut field = if path == "." { String::new() } else { path };
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    if let Some(name) = named {
        let last = field.rsplit('.').next().unwrap_or_default();
        if last != name {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
        }
    }
    if field.is_empty() {
        field.push_str("(top level)");
    }
    ConfigError::invalid(field, message)
}
