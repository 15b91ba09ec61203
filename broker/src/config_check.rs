//! `strongbox-broker config check FILE`: everything a start would check,
//! and what the broker would do, without starting it.
//!
//! Beyond parsing and validating the file (as `serve` does first), it opens
//! what the file points to: the certificate and key (do they match, are
//! they valid now, for how long), the client CA bundle and the CRLs (as the
//! TLS verifier would build them), the identity rules and ACL rules, the
//! data directory (usable; a broker already running on it), the key
//! provider (the key directory, or the PKCS#11 module, token and PIN:
//! a login proves it reachable), and the listen addresses (free, or taken).
//!
//! Each check prints one line, `ok`, `warning` or `error`; then what the
//! broker would do. Exit status 0 without errors (warnings allowed), 1
//! with any.

mod cluster;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use strongbox_protocol::model::Durability;

use crate::config::{BrokerConfig, KeyProviderKind, LogFormat};
use crate::tls::reload::{CertSummary, cert_time};

/// Warn when the broker's certificate expires sooner than this.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// `strongbox-broker config check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but deserves attention.
    Warning,
    /// A start would fail, or the broker would not work.
    Error,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// How it went.
    pub level: Level,
    /// What was checked (`tls.cert`, `keys`).
    pub subject: String,
    /// What was found.
    pub message: String,
}

/// Everything found, and what the broker would do.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks, in order.
    pub items: Vec<Item>,
    /// What a start would do, one line each (empty when the file does not
    /// even load).
    pub plan: Vec<String>,
}

impl Report {
    fn push(&mut self, level: Level, subject: impl Into<String>, message: impl Into<String>) {
        self.items.push(Item {
            level,
            subject: subject.into(),
            message: message.into(),
        });
    }

    /// Items at `level`.
    pub fn count(&self, level: Level) -> usize {
        self.items.iter().filter(|i| i.level == level).count()
    }

    /// The report as printed.
    pub fn to_text(&self, file: &Path) -> String {
        let mut out = format!("config {}\n", file.display());
        for i in &self.items {
            let _ = writeln!(out, "  {:<8} {}: {}", i.level.label(), i.subject, i.message);
        }
        if !self.plan.is_empty() {
            out.push_str("would:\n");
            for line in &self.plan {
                let _ = writeln!(out, "  {line}");
            }
        }
        let errors = self.count(Level::Error);
        let warnings = self.count(Level::Warning);
        let _ = writeln!(
            out,
            "result: {} ({errors} error(s), {warnings} warning(s))",
            if errors == 0 { "ok" } else { "errors" }
        );
        out
    }
}

/// Runs the command.
pub fn run_cli(args: &CheckArgs) -> ExitCode {
    crate::logging::init_cli("off");
    let report = check(&args.file);
    print!("{}", report.to_text(&args.file));
    if report.count(Level::Error) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Checks the configuration file at `path`. Never fails: problems are
/// items of the report.
pub fn check(path: &Path) -> Report {
    let mut r = Report::default();
    let config = match BrokerConfig::load(path).and_then(BrokerConfig::validate) {
        Ok(c) => c,
        Err(e) => {
            r.push(Level::Error, "file", e.to_string());
            return r;
        }
    };
    r.push(
        Level::Ok,
        "file",
        "parses, every value is valid and every named file exists",
    );
    check_tls(&config, &mut r);
    check_rules(&config, &mut r);
    check_data_dir(&config, &mut r);
    check_keys(&config, &mut r);
    check_addresses(&config, &mut r);
    check_log(&config, &mut r);
    cluster::check_cluster(&config, &mut r);
    r.plan = plan(&config);
    r
}

fn check_tls(config: &BrokerConfig, r: &mut Report) {
    let tls = &config.tls;
    match crate::tls::ServerCertResolver::load(
        tls.cert.clone(),
        tls.key.clone(),
        crate::tls::crypto_provider(tls.key_exchange),
    ) {
        Ok(resolver) => {
            let c = resolver.summary();
            cert_items(&c, &tls.cert, r);
            r.push(
                Level::Ok,
                "tls.key",
                format!("{} matches the certificate", tls.key.display()),
            );
        }
        Err(e) => r.push(Level::Error, "tls.cert/tls.key", e.to_string()),
    }
    match crate::tls::load_client_ca(&tls.client_ca) {
        Ok(roots) => r.push(
            Level::Ok,
            "tls.client_ca",
            format!(
                "{}: {} certificate authorit{} trusted for client certificates",
                tls.client_ca.display(),
                roots.len(),
                if roots.len() == 1 { "y" } else { "ies" }
            ),
        ),
        Err(e) => r.push(Level::Error, "tls.client_ca", e.to_string()),
    }
    if tls.crls.is_empty() {
        r.push(
            Level::Warning,
            "tls.crls",
            "none: revoked client certificates are accepted until they expire",
        );
    } else {
        match crate::tls::read_crl_files(&tls.crls) {
            Ok(crls) => {
                for crl in &crls {
                    r.push(
                        Level::Ok,
                        "tls.crls",
                        format!(
                            "{}: issuer {}, {}",
                            crl.path.display(),
                            crl.issuer_name,
                            crl.describe()
                        ),
                    );
                }
            }
            Err(e) => r.push(Level::Error, "tls.crls", e.to_string()),
        }
    }
    // Everything together, as the listener builds it (a CRL that webpki
    // refuses for these roots shows here).
    if let Err(e) = crate::tls::server_tls(tls, None) {
        r.push(Level::Error, "tls", e.to_string());
    }
}

fn cert_items(c: &CertSummary, path: &Path, r: &mut Report) {
    let now = strongbox_protocol::clock::now_secs();
    let text = format!(
        "{}: subject {}, serial {}, valid until {}",
        path.display(),
        c.subject,
        c.serial,
        cert_time(c.not_after)
    );
    if let Some(why) = c.invalid_at(now) {
        r.push(Level::Error, "tls.cert", format!("{text}: {why}"));
        return;
    }
    let days = c.not_after.saturating_sub(now) / 86_400;
    if days < EXPIRY_WARNING_DAYS {
        r.push(
            Level::Warning,
            "tls.cert",
            format!("{text}: expires in {days} day(s); renew it (a SIGHUP loads the new one)"),
        );
    } else {
        r.push(Level::Ok, "tls.cert", format!("{text} ({days} days)"));
    }
}

fn check_rules(config: &BrokerConfig, r: &mut Report) {
    match crate::identity::IdentityMapper::from_config(&config.identity) {
        Ok(_) => r.push(
            Level::Ok,
            "identity",
            format!(
                "{} rule(s){}",
                config.identity.rules.len(),
                if config.identity.require_match {
                    ", an identity no rule matches is refused"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => r.push(Level::Error, "identity", e.to_string()),
    }
    match crate::acl::Acl::from_config(&config.acl) {
        Ok(_) => r.push(
            Level::Ok,
            "acl",
            format!(
                "{} superuser(s), {} rule(s) from the file (rules granted at run time live in \
                 the metadata store)",
                config.acl.superusers.len(),
                config.acl.rules.len()
            ),
        ),
        Err(e) => r.push(Level::Error, "acl", e.to_string()),
    }
}

fn check_data_dir(config: &BrokerConfig, r: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    let dir = &config.broker.data_dir;
    let Ok(meta) = std::fs::metadata(dir) else {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let level = if writable(parent) {
            Level::Ok
        } else {
            Level::Error
        };
        r.push(
            level,
            "broker.data_dir",
            format!(
                "{} does not exist; the broker creates it (mode 0700) at start{}",
                dir.display(),
                if level == Level::Error {
                    format!(", but cannot write to {}", parent.display())
                } else {
                    String::new()
                }
            ),
        );
        return;
    };
    if !meta.is_dir() {
        r.push(
            Level::Error,
            "broker.data_dir",
            format!("{} is not a directory", dir.display()),
        );
        return;
    }
    if !writable(dir) {
        r.push(
            Level::Error,
            "broker.data_dir",
            format!("{} is not writable by this user", dir.display()),
        );
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    // The block counts and sizes are 32 bits wide on some targets.
    #[allow(clippy::useless_conversion)]
    let free = nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|s| u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())));
    let free_text = free.map_or_else(String::new, |b| format!(", {} free", human_bytes(b)));
    if mode & 0o077 != 0 {
        r.push(
            Level::Warning,
            "broker.data_dir",
            format!(
                "{} has mode {mode:o}: other users can reach it; chmod 700 it{free_text}",
                dir.display()
            ),
        );
    } else {
        r.push(
            Level::Ok,
            "broker.data_dir",
            format!("{} (mode {mode:o}{free_text})", dir.display()),
        );
    }
    let meta_file = dir.join("meta.redb");
    if !meta_file.exists() {
        r.push(
            Level::Ok,
            "metadata store",
            "none yet: a first start creates it",
        );
        return;
    }
    match redb::ReadOnlyDatabase::open(&meta_file) {
        Ok(db) => {
            let topics = count_topics(&db);
            r.push(
                Level::Ok,
                "metadata store",
                format!("{} opens; {topics} topic(s)", meta_file.display()),
            );
        }
        Err(e) if is_locked(&e) => r.push(
            Level::Ok,
            "metadata store",
            format!(
                "{} is held by a running broker (stop it before starting another on this directory)",
                meta_file.display()
            ),
        ),
        Err(e) => r.push(
            Level::Error,
            "metadata store",
            format!("{} does not open: {e}", meta_file.display()),
        ),
    }
}

fn count_topics(db: &redb::ReadOnlyDatabase) -> String {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    db.begin_read()
        .ok()
        .and_then(|t| t.open_table(strongbox_storage::meta::tables::TOPICS).ok())
        .and_then(|t| t.len().ok())
        .map_or_else(|| "an unknown number of".into(), |n| n.to_string())
}

fn is_locked(e: &redb::DatabaseError) -> bool {
    matches!(e, redb::DatabaseError::DatabaseAlreadyOpen)
        || e.to_string().to_lowercase().contains("lock")
}

fn check_keys(config: &BrokerConfig, r: &mut Report) {
    match config.keys.provider {
        KeyProviderKind::File => {
            let dir = &config.keys.file.dir;
            r.push(
                Level::Warning,
                "keys",
                "provider \"file\": key-encryption keys are plain files on this host; use an HSM \
                 (provider \"pkcs11\") in production",
            );
            if !dir.exists() {
                r.push(
                    Level::Ok,
                    "keys.file.dir",
                    format!(
                        "{} does not exist; the first start creates it (mode 0700)",
                        dir.display()
                    ),
                );
                return;
            }
            match crate::services::open_provider(config) {
                Ok(p) => r.push(
                    Level::Ok,
                    "keys.file.dir",
                    format!("{}: usable", p.info().location),
                ),
                Err(e) => r.push(Level::Error, "keys.file.dir", e.to_string()),
            }
        }
        KeyProviderKind::Pkcs11 => match crate::services::open_provider(config) {
            Ok(p) => r.push(
                Level::Ok,
                "keys.pkcs11",
                format!(
                    "{}: module loaded, token found, logged in, key wrapping supported",
                    p.info().location
                ),
            ),
            Err(e) => r.push(Level::Error, "keys.pkcs11", e.to_string()),
        },
    }
}

fn check_addresses(config: &BrokerConfig, r: &mut Report) {
    if config.listener.addr.port() == 0 {
        r.push(
            Level::Ok,
            "listener.addr",
            format!(
                "{}: port 0, a free port is chosen at start",
                config.listener.addr
            ),
        );
    } else {
        check_udp(config, r);
    }
    if !config.metrics.enabled {
        return;
    }
    if config.metrics.listen.port() == 0 {
        r.push(
            Level::Ok,
            "metrics.listen",
            format!(
                "{}: port 0, a free port is chosen at start",
                config.metrics.listen
            ),
        );
        return;
    }
    match TcpListener::bind(config.metrics.listen) {
        Ok(_) => r.push(
            Level::Ok,
            "metrics.listen",
            format!("{} (TCP) is free", config.metrics.listen),
        ),
        Err(e) => r.push(
            address_level(&e),
            "metrics.listen",
            address_message(config.metrics.listen, "TCP", &e),
        ),
    }
}

fn check_udp(config: &BrokerConfig, r: &mut Report) {
    match UdpSocket::bind(config.listener.addr) {
        Ok(_) => r.push(
            Level::Ok,
            "listener.addr",
            format!("{} (UDP) is free", config.listener.addr),
        ),
        Err(e) => r.push(
            address_level(&e),
            "listener.addr",
            address_message(config.listener.addr, "UDP", &e),
        ),
    }
}

/// An address in use is likely the broker itself (a warning); anything
/// else (no permission, no such address) stops a start.
fn address_level(e: &std::io::Error) -> Level {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        Level::Warning
    } else {
        Level::Error
    }
}

fn address_message(addr: SocketAddr, proto: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!("{addr} ({proto}) is in use: is the broker already running? A start would fail")
    } else {
        format!("{addr} ({proto}) cannot be bound: {e}")
    }
}

fn check_log(config: &BrokerConfig, r: &mut Report) {
    let env = std::env::var(crate::logging::FILTER_ENV).ok();
    match crate::logging::choose_filter(env.as_deref(), &config.log.level) {
        Ok((_, source)) => {
            let from = match &source {
                crate::logging::FilterSource::Env(_) => "RUST_LOG, which overrides log.level",
                crate::logging::FilterSource::Config(_) => {
                    "log.level (RUST_LOG overrides it when set)"
                }
                crate::logging::FilterSource::ConfigAfterBadEnv { .. } => {
                    "log.level: RUST_LOG is set but does not parse, so it is ignored"
                }
            };
            let level = if matches!(
                source,
                crate::logging::FilterSource::ConfigAfterBadEnv { .. }
            ) {
                Level::Warning
            } else {
                Level::Ok
            };
            r.push(
                level,
                "log",
                format!(
                    "format {}, filter {:?} from {from}",
                    format_name(config.log.format),
                    source.filter()
                ),
            );
        }
        Err(e) => r.push(Level::Error, "log.level", e),
    }
}

fn format_name(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Json => "json (one JSON object per line)",
        LogFormat::Text => "text",
    }
}

/// What a start would do.
fn plan(config: &BrokerConfig) -> Vec<String> {
    let mut p = vec![
        format!(
            "serve as broker {:?} on {} (UDP, QUIC, TLS 1.3 with client certificates, ALPN strongbox/1)",
            config.broker.id, config.listener.addr
        ),
        format!(
            "accept at most {} connections, frames up to {} bytes, batches up to {} bytes",
            config.listener.max_connections,
            config.listener.max_frame_size,
            config.listener.max_batch_size
        ),
    ];
    if config.metrics.enabled {
        p.push(format!(
            "serve /metrics, /healthz and /readyz on http://{}",
            config.metrics.listen
        ));
    } else {
        p.push("serve no metrics or health endpoint (metrics.enabled = false)".into());
    }
    p.push(format!(
        "keep its metadata store and encrypted log in {} and answer `strongbox-broker backup` on {}",
        config.broker.data_dir.display(),
        crate::backup::socket_path(&config.broker.data_dir).display()
    ));
    p.push(match config.keys.provider {
        KeyProviderKind::File => format!(
            "wrap data keys with key-encryption keys from files in {}",
            config.keys.file.dir.display()
        ),
        KeyProviderKind::Pkcs11 => match &config.keys.pkcs11 {
            Some(k) => format!(
                "wrap data keys in the HSM: module {}, token {:?}",
                k.module.display(),
                k.token_label
            ),
            None => "wrap data keys in an HSM (keys.pkcs11 missing)".into(),
        },
    });
    if let Some(every) = &config.keys.rotate_every {
        p.push(format!(
            "rotate key-encryption keys every {}",
            humantime::format_duration(every.0)
        ));
    }
    p.push(format!(
        "reload tls.cert, tls.key, tls.client_ca and {} CRL file(s) when they change (checked every {}) and on SIGHUP",
        config.tls.crls.len(),
        humantime::format_duration(config.tls.crl_reload.0)
    ));
    p.push(format!(
        "create topics with {} partition(s), durability {}, retention {}",
        config.topics.partitions,
        match config.topics.durability() {
            Durability::Fsync => "fsync".to_owned(),
            Durability::Interval { interval_ms } => format!("interval:{interval_ms}ms"),
            Durability::None => "none".to_owned(),
        },
        match config.topics.retention.as_millis() {
            Some(ms) =>
                humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
            None => "forever".into(),
        }
    ));
    p.push(cluster::plan_line(config));
    p.push(format!(
        "log to stderr as {}",
        format_name(config.log.format)
    ));
    p
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0usize;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
}
