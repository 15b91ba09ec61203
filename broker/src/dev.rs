//! The material of `strongbox-broker dev`: a complete development setup in
//! one directory, created on first run and reused afterwards.
//!
//! ```text
//! strongbox-dev/                 0700
//!   broker.toml                  config, accepted by the normal loader
//!   ca/ca.pem  ca/ca.key         development CA (key 0600)
//!   ca/crl.pem                   its CRL (`strongbox-broker pki revoke`
//!                                writes the next one; it reloads)
//!   tls/broker.pem  broker.key   broker certificate: localhost, 127.0.0.1, ::1
//!   profiles/admin.toml .pem .key   superuser     spiffe://strongbox.dev/admin
//!   profiles/alice.toml .pem .key   publish, subscribe, describe on demo.*
//!   profiles/bob.toml   .pem .key   subscribe, describe on demo.*
//!   keys/                        file KEK directory (0700), and the
//!                                checkpoint signing key
//!   data/                        log and metadata (0700)
//!   checkpoints/                 signed checkpoints, outside data/ (made
//!                                at the first checkpoint)
//! ```
//!
//! The directory is built under a temporary name beside its final place and
//! renamed into place when complete, so it is either absent, complete, or
//! not ours: a directory with some of these files but not all (a crash of an
//! older version, a manual deletion) is refused with the list of what is
//! missing rather than half-overwritten.
//!
//! ## Profile format
//!
//! A profile is what a client needs to reach a broker as one principal,
//! read by the `strongbox` CLI from `--profile FILE` or `STRONGBOX_PROFILE`:
//!
//! ```toml
//! broker = "127.0.0.1:7443"    # the broker, host:port (UDP)
//! server_name = "localhost"     # optional: name the broker certificate must
//!                               # carry; default: the host part of `broker`
//! ca = "../ca/ca.pem"           # CA bundle that signed the broker certificate
//! cert = "alice.pem"            # client certificate chain, PEM, leaf first
//! key = "alice.key"             # client private key, PEM (0600)
//! client_name = "my-service/1"  # optional: shown in the broker's logs
//! key_exchange = "prefer-hybrid" # optional: TLS key exchange groups to offer
//! ```
//!
//! A profile of `dev --cluster N` has `brokers = ["127.0.0.1:7443", ...]`
//! (every node's client address) instead of `broker`; see [`cluster`].
//!
//! Relative paths resolve against the profile file's directory. Unknown
//! fields are errors. docs/PROFILES.md holds the same description for client
//! implementers.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use strongbox_storage::io::{FileIo, durable};

use crate::pki::{CertSpec, PkiError, TestCa, write_file};

pub mod cluster;
mod join;
mod revoke;

pub use cluster::{DevCluster, DevNode, PEER_PORT_OFFSET, ensure_cluster_dir, plan_nodes};
pub use join::{NewNode, new_node};
pub use revoke::{Revocation, revoke};

/// Where `dev` puts its directory unless told otherwise.
pub const DEFAULT_DEV_DIR: &str = "strongbox-dev";

/// Where `dev` listens unless told otherwise.
pub const DEFAULT_DEV_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7443);

/// The trust domain of the development principals.
pub const DEV_TRUST_DOMAIN: &str = "strongbox.dev";

/// A development profile: its name, principal and what the config grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileSpec {
    /// File stem under `profiles/`.
    pub name: &'static str,
    /// SAN URI of its certificate, which is also its principal.
    pub principal: &'static str,
    /// Operations allowed on `demo.*` (empty for the superuser).
    pub demo_operations: &'static [&'static str],
    /// Whether it is a superuser.
    pub superuser: bool,
}

/// The three development profiles.
pub const PROFILES: &[ProfileSpec] = &[
    ProfileSpec {
        name: "admin",
        principal: "spiffe://strongbox.dev/admin",
        demo_operations: &[],
        superuser: true,
    },
    ProfileSpec {
        name: "alice",
        principal: "spiffe://strongbox.dev/alice",
        demo_operations: &["publish", "subscribe", "describe"],
        superuser: false,
    },
    ProfileSpec {
        name: "bob",
        principal: "spiffe://strongbox.dev/bob",
        demo_operations: &["subscribe", "describe"],
        superuser: false,
    },
];

/// Files and directories of a complete development directory.
const REQUIRED_FILES: &[&str] = &[
    "broker.toml",
    "ca/ca.pem",
    "ca/ca.key",
    "ca/crl.pem",
    "tls/broker.pem",
    "tls/broker.key",
    "profiles/admin.toml",
    "profiles/admin.pem",
    "profiles/admin.key",
    "profiles/alice.toml",
    "profiles/alice.pem",
    "profiles/alice.key",
    "profiles/bob.toml",
    "profiles/bob.pem",
    "profiles/bob.key",
];
const REQUIRED_DIRS: &[&str] = &["keys", "data"];

/// An error preparing the development directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The directory exists but is not a complete development directory.
    #[error(
        "{dir} exists but is not a complete Strongbox development directory (missing: {missing}); remove it or choose another --data-dir, then run `strongbox-broker dev` again"
    )]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// What is missing, comma-separated.
        missing: String,
    },
    /// The generated `broker.toml` does not parse.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A profile file does not parse.
    #[error("profile {path}: {message}")]
    Profile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One profile in a development directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevProfile {
    /// `admin`, `alice` or `bob`.
    pub name: &'static str,
    /// Its principal.
    pub principal: &'static str,
    /// The profile file.
    pub path: PathBuf,
}

/// A ready development directory.
#[derive(Debug, Clone)]
pub struct DevLayout {
    /// The directory, as given.
    pub dir: PathBuf,
    /// `broker.toml`.
    pub config: PathBuf,
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CRL listed in the config.
    pub crl: PathBuf,
    /// The profiles.
    pub profiles: Vec<DevProfile>,
    /// True when this call created the directory, false when it reused it.
    pub created: bool,
}

impl DevLayout {
    fn at(dir: &Path, created: bool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            config: dir.join("broker.toml"),
            ca_cert: dir.join("ca/ca.pem"),
            crl: dir.join("ca/crl.pem"),
            profiles: PROFILES
                .iter()
                .map(|p| DevProfile {
                    name: p.name,
                    principal: p.principal,
                    path: dir.join("profiles").join(format!("{}.toml", p.name)),
                })
                .collect(),
            created,
        }
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&DevProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Rewrites every profile's `broker` address to `bound` (call it after
    /// binding, so that `--listen 127.0.0.1:0` yields usable profiles),
    /// keeping the rest of each file. An unspecified address (`0.0.0.0`,
    /// `::`) becomes loopback.
    ///
    /// # Errors
    ///
    /// A profile cannot be written.
    pub fn set_broker_addr(&self, bound: SocketAddr) -> Result<(), DevError> {
        let addr = connectable(bound).to_string();
        for p in &self.profiles {
            // Only `broker` changes: a `client_name` or other edit stays.
            let text = std::fs::read_to_string(&p.path).map_err(io_err(&p.path))?;
            let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| DevError::Profile {
                path: p.path.clone(),
                message: format!("{e}"),
            })?;
            if doc.get("broker").and_then(|v| v.as_str()) == Some(addr.as_str()) {
                continue;
            }
            doc.insert("broker", toml_edit::value(addr.clone()));
            let tmp = p.path.with_extension("toml.tmp");
            write_file(&tmp, doc.to_string().as_bytes(), false)?;
            durable::rename(&FileIo, &tmp, &p.path).map_err(|e| io_err(&p.path)(e.into()))?;
        }
        Ok(())
    }

    /// Writes `listen` and `metrics` into `broker.toml` (`[listener] addr`
    /// and `[metrics] listen`) when they differ from what it says, so the
    /// file describes the broker `dev` runs: every start applies its
    /// `--listen` and `--metrics-listen`. The rest of the file, comments and
    /// edits included, is kept as it is. Returns whether it changed.
    ///
    /// # Errors
    ///
    /// The file cannot be read, parsed or written.
    pub fn set_listen_addresses(
        &self,
        listen: SocketAddr,
        metrics: SocketAddr,
    ) -> Result<bool, DevError> {
        let path = &self.config;
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| DevError::Config {
            path: path.clone(),
            message: format!("{e}"),
        })?;
        let mut changed = false;
        for (section, key, addr) in [("listener", "addr", listen), ("metrics", "listen", metrics)] {
            let wanted = addr.to_string();
            let table = doc
                .entry(section)
                .or_insert_with(toml_edit::table)
                .as_table_like_mut()
                .ok_or_else(|| DevError::Config {
                    path: path.clone(),
                    message: format!("`{section}` is not a table"),
                })?;
            if table.get(key).and_then(|v| v.as_str()) != Some(wanted.as_str()) {
                table.insert(key, toml_edit::value(wanted));
                changed = true;
            }
        }
        if changed {
            let tmp = path.with_extension("toml.tmp");
            write_file(&tmp, doc.to_string().as_bytes(), false)?;
            durable::rename(&FileIo, &tmp, path).map_err(|e| io_err(path)(e.into()))?;
        }
        Ok(changed)
    }

    /// Copy-paste commands for the three profiles, for the broker to print.
    /// The development broker creates `demo.greetings` itself.
    pub fn quickstart(&self) -> String {
        let profile = |n: &str| self.dir.join("profiles").join(format!("{n}.toml"));
        let mut s = String::new();
        let lines = [
            (
                "alice",
                "publish demo.greetings hello",
                "alice may publish on demo.*",
            ),
            (
                "bob",
                "subscribe demo.greetings --from earliest --count 1",
                "bob may subscribe on demo.*",
            ),
            (
                "bob",
                "publish demo.greetings hi",
                "refused: bob may not publish",
            ),
            (
                "admin",
                "topic create demo.orders --partitions 3",
                "admin is a superuser",
            ),
        ];
        for (who, command, why) in lines {
            let _ = writeln!(s, "  # {why}");
            let _ = writeln!(
                s,
                "  STRONGBOX_PROFILE={} strongbox {command}",
                profile(who).display()
            );
        }
        s
    }
}

/// Writes `doc` over `path` (through a temporary file and a durable
/// rename) when it differs from `old`, the text it was parsed from.
fn write_toml(path: &Path, old: &str, doc: &toml_edit::DocumentMut) -> Result<(), DevError> {
    let new = doc.to_string();
    if new == old {
        return Ok(());
    }
    let tmp = path.with_extension("toml.tmp");
    write_file(&tmp, new.as_bytes(), false)?;
    durable::rename(&FileIo, &tmp, path).map_err(|e| io_err(path)(e.into()))
}

/// Maps an unspecified bind address to the loopback address clients use.
fn connectable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port())
        }
        _ => bound,
    }
}

/// Creates the development directory at `dir` if it does not exist (or is
/// empty), and reuses it if it is complete. `listen` goes into a new
/// `broker.toml`; an existing one is left as it is.
///
/// # Errors
///
/// The directory exists but is incomplete, or a file cannot be written.
pub fn ensure_dev_dir(dir: &Path, listen: SocketAddr) -> Result<DevLayout, DevError> {
    if let Some(missing) = missing_entries(dir)? {
        if missing.len() < REQUIRED_FILES.len() + REQUIRED_DIRS.len() || !is_empty_dir(dir)? {
            return Err(DevError::Incomplete {
                dir: dir.to_path_buf(),
                missing: missing.join(", "),
            });
        }
    } else {
        return Ok(DevLayout::at(dir, false));
    }

    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_DEV_DIR.to_string());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    durable::create_dir_all(&FileIo, &parent).map_err(|e| io_err(&parent)(e.into()))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let built = build(&staging, listen).and_then(|()| sync_tree(&staging));
    let placed = built.and_then(|()| {
        // rename(2) replaces an empty directory, so an empty `dir` made by
        // the user is fine. The rename is made durable: the broker keeps
        // its data and the file provider its keys under `dir`.
        durable::rename(&FileIo, &staging, dir).map_err(|e| io_err(dir)(e.into()))
    });
    match placed {
        Ok(()) => Ok(DevLayout::at(dir, true)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            // Another `dev` process may have won the race with a complete dir.
            if matches!(missing_entries(dir), Ok(None)) {
                Ok(DevLayout::at(dir, false))
            } else {
                Err(e)
            }
        }
    }
}

/// `None` when every required entry exists; otherwise what is missing.
fn missing_entries(dir: &Path) -> Result<Option<Vec<&'static str>>, DevError> {
    if !dir.exists() {
        return Ok(Some(
            REQUIRED_FILES
                .iter()
                .chain(REQUIRED_DIRS)
                .copied()
                .collect(),
        ));
    }
    if !dir.is_dir() {
        return Err(DevError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let missing: Vec<&'static str> = REQUIRED_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .chain(REQUIRED_DIRS.iter().filter(|d| !dir.join(d).is_dir()))
        .copied()
        .collect();
    Ok((!missing.is_empty()).then_some(missing))
}

fn is_empty_dir(dir: &Path) -> Result<bool, DevError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Makes the names of a freshly built tree durable (its files are synced
/// as they are written): each of its directories is synced.
fn sync_tree(root: &Path) -> Result<(), DevError> {
    for sub in ["ca", "tls", "profiles", "keys", "data"] {
        let d = root.join(sub);
        durable::sync_dir(&FileIo, &d).map_err(|e| io_err(&d)(e.into()))?;
    }
    durable::sync_dir(&FileIo, root).map_err(|e| io_err(root)(e.into()))
}

fn mkdir_private(path: &Path) -> Result<(), DevError> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(io_err(path))
}

/// Generates everything under `root`, which must not exist.
fn build(root: &Path, listen: SocketAddr) -> Result<(), DevError> {
    mkdir_private(root)?;
    for sub in ["ca", "tls", "profiles", "keys", "data"] {
        mkdir_private(&root.join(sub))?;
    }
    let ca = TestCa::new("Strongbox development CA")?;
    write_file(&root.join("ca/ca.pem"), ca.cert_pem().as_bytes(), false)?;
    write_file(&root.join("ca/ca.key"), ca.key_pem().as_bytes(), true)?;
    write_file(&root.join("ca/crl.pem"), ca.crl(&[], 1)?.as_bytes(), false)?;

    let server = ca.issue(&CertSpec::server(&["localhost", "127.0.0.1", "::1"]))?;
    server.write_to(&root.join("tls"), "broker")?;

    let addr = connectable(listen);
    for p in PROFILES {
        let mut spec = CertSpec::client_uri(p.principal);
        spec.common_name = Some(p.name.to_string());
        ca.issue(&spec)?.write_to(&root.join("profiles"), p.name)?;
        write_file(
            &root.join("profiles").join(format!("{}.toml", p.name)),
            profile_toml(p.name, addr).as_bytes(),
            false,
        )?;
    }
    write_file(
        &root.join("broker.toml"),
        broker_toml(listen).as_bytes(),
        false,
    )?;
    Ok(())
}

/// A TOML basic string with escapes.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn profile_toml(name: &str, broker: SocketAddr) -> String {
    format!(
        "# Strongbox client profile \"{name}\" (development). Paths are relative to this file.\n\
         broker = {}\n\
         server_name = \"localhost\"\n\
         ca = \"../ca/ca.pem\"\n\
         cert = \"{name}.pem\"\n\
         key = \"{name}.key\"\n",
        quoted(&broker.to_string())
    )
}

/// The metrics address `dev` uses without `--metrics-listen`: port 9644 on
/// the listener's IP, or a free port when the listener takes a free port
/// too (so that several development brokers can run side by side).
pub fn default_metrics_listen(listen: SocketAddr) -> SocketAddr {
    let port = if listen.port() == 0 { 0 } else { 9644 };
    SocketAddr::new(listen.ip(), port)
}

fn broker_toml(listen: SocketAddr) -> String {
    let metrics = default_metrics_listen(listen);
    let mut s = String::from(
        "# Strongbox development broker, generated by `strongbox-broker dev`.\n\
         # For development only: the CA key lies next to this file and the\n\
         # key-encryption key is a plain file. See deploy/broker.example.toml\n\
         # for every setting.\n\n\
         [broker]\nid = \"strongbox-dev\"\ndata_dir = \"data\"\n\n",
    );
    let _ = write!(s, "[listener]\naddr = {}\n\n", quoted(&listen.to_string()));
    s.push_str(
        "[tls]\ncert = \"tls/broker.pem\"\nkey = \"tls/broker.key\"\nclient_ca = \"ca/ca.pem\"\n\
         crls = [\"ca/crl.pem\"]\ncrl_reload = \"5s\"\n\n[acl]\n",
    );
    let supers: Vec<String> = PROFILES
        .iter()
        .filter(|p| p.superuser)
        .map(|p| quoted(p.principal))
        .collect();
    let _ = writeln!(s, "superusers = [{}]", supers.join(", "));
    for p in PROFILES.iter().filter(|p| !p.demo_operations.is_empty()) {
        let ops: Vec<String> = p.demo_operations.iter().map(|o| quoted(o)).collect();
        let _ = write!(
            s,
            "\n[[acl.rules]]\nprincipal = {}\ntopic = \"demo.*\"\noperations = [{}]\neffect = \"allow\"\n",
            quoted(p.principal),
            ops.join(", ")
        );
    }
    let _ = write!(
        s,
        "\n[keys]\nprovider = \"file\"\n\n[keys.file]\ndir = \"keys\"\n\n[metrics]\nenabled = true\nlisten = {}\n",
        quoted(&metrics.to_string())
    );
    s.push_str(
        "\n# Signed checkpoints, every interval and at shutdown, kept outside data/\n\
         # so that a data directory rolled back to an older copy is detected:\n\
         # strongbox-broker verify --checkpoint checkpoints/strongbox-dev.latest.json\n\
         [checkpoints]\ninterval = \"5m\"\nexport_dir = \"checkpoints\"\n",
    );
    s
}

/// A client profile, as described in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The broker, `host:port` (empty in a cluster profile, which has
    /// `brokers`).
    #[serde(default)]
    pub broker: String,
    /// Every node's client address, in a development cluster's profiles.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Name checked against the broker certificate; the host part of
    /// `broker` when absent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA bundle, resolved.
    pub ca: PathBuf,
    /// Client certificate chain, resolved.
    pub cert: PathBuf,
    /// Client private key, resolved.
    pub key: PathBuf,
    /// Name the client announces in its `Hello`, for the broker's logs.
    #[serde(default)]
    pub client_name: Option<String>,
    /// TLS key exchange groups the client offers (the client's default
    /// when absent).
    #[serde(default)]
    pub key_exchange: Option<crate::tls::KeyExchange>,
}

impl Profile {
    /// Reads a profile; relative paths resolve against its directory.
    ///
    /// # Errors
    ///
    /// The file cannot be read or does not parse.
    pub fn load(path: &Path) -> Result<Self, DevError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let mut p: Self = toml::from_str(&text).map_err(|e| DevError::Profile {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.ca, &mut p.cert, &mut p.key] {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        Ok(p)
    }
}
