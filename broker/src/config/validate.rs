//! Value and relation checks of a parsed config, and existence of the files
//! it names. Each check reports the field it is about.

use std::path::Path;
use std::time::Duration;

use strongbox_protocol::frame::{ABSOLUTE_MAX_FRAME_SIZE, MIN_MAX_FRAME_SIZE};

use super::{BrokerConfig, ConfigError, DurabilityMode, KeyProviderKind, Retention};

/// Room `listener.max_frame_size` keeps above `listener.max_batch_size`, so
/// that a batch of the largest size fits in a `Produce` frame for any topic:
/// the frame's own fields
/// ([`PRODUCE_FRAMING`](strongbox_protocol::frames::produce::PRODUCE_FRAMING)) and the longest topic name,
/// rounded up to a figure operators can remember. The wire's size formulas
/// are the protocol crate's; this is only the broker's configuration rule.
pub(crate) const PRODUCE_FRAME_HEADROOM: u32 = 4096;

pub(super) fn validate(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    broker(cfg)?;
    listener(cfg)?;
    tls(cfg)?;
    crate::identity::IdentityMapper::from_config(&cfg.identity)?;
    crate::acl::Acl::from_config(&cfg.acl)?;
    keys(cfg)?;
    topics(cfg)?;
    checkpoints(cfg)?;
    if let Some(c) = &cfg.cluster {
        super::cluster::validate(c, &cfg.listener)?;
    }
    log(cfg)
}

fn checkpoints(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let c = &cfg.checkpoints;
    duration_range(
        "checkpoints.interval",
        c.interval.0,
        Duration::from_secs(10),
        Duration::from_secs(24 * 3600),
    )?;
    if let Some(dir) = &c.export_dir {
        // Lexically, and once both exist, as the file system sees them.
        let data = &cfg.broker.data_dir;
        let inside = dir.starts_with(data)
            || matches!(
                (dir.canonicalize(), data.canonicalize()),
                (Ok(d), Ok(data)) if d.starts_with(&data)
            );
        if inside {
            return Err(err(
                "checkpoints.export_dir",
                format!(
                    "{} is inside broker.data_dir ({}): a copy of the data directory restored \
                     from an old backup would bring its old checkpoints back with it; choose a \
                     directory on another disk or mount",
                    dir.display(),
                    data.display()
                ),
            ));
        }
    }
    Ok(())
}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, message)
}

fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(err(
            field,
            format!("{v} is out of range; use {min} to {max}"),
        ));
    }
    Ok(())
}

fn duration_range(
    field: &str,
    v: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(err(
            field,
            format!(
                "{} is out of range; use {} to {}",
                humantime::format_duration(v),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

fn readable_file(field: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(err(field, format!("{} is not a file", path.display()))),
        Err(e) => Err(err(field, format!("cannot read {}: {e}", path.display()))),
    }
}

fn broker(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let id = &cfg.broker.id;
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(err(
            "broker.id",
            format!("{id:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    if cfg.broker.data_dir.as_os_str().is_empty() {
        return Err(err("broker.data_dir", "must not be empty"));
    }
    Ok(())
}

fn listener(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let l = &cfg.listener;
    range("listener.max_connections", l.max_connections, 1, 1_000_000)?;
    range(
        "listener.max_bidi_streams_per_connection",
        l.max_bidi_streams_per_connection,
        2,
        1 << 20,
    )?;
    range(
        "listener.max_frame_size",
        l.max_frame_size,
        MIN_MAX_FRAME_SIZE,
        ABSOLUTE_MAX_FRAME_SIZE,
    )?;
    let batch_max = l.max_frame_size.saturating_sub(PRODUCE_FRAME_HEADROOM);
    if l.max_batch_size < 1024 || l.max_batch_size > batch_max {
        return Err(err(
            "listener.max_batch_size",
            format!(
                "{} is out of range; use 1024 to {batch_max} (listener.max_frame_size less {PRODUCE_FRAME_HEADROOM} bytes for the rest of the Produce frame)",
                l.max_batch_size
            ),
        ));
    }
    range("listener.max_in_flight", l.max_in_flight, 1, 65_536)?;
    let second = Duration::from_secs(1);
    duration_range(
        "listener.idle_timeout",
        l.idle_timeout.0,
        second,
        Duration::from_secs(3600),
    )?;
    duration_range(
        "listener.keepalive",
        l.keepalive.0,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )?;
    if l.keepalive.0 >= l.idle_timeout.0 {
        return Err(err(
            "listener.keepalive",
            format!(
                "{} must be shorter than listener.idle_timeout ({}), or idle connections are closed between keep-alives",
                l.keepalive, l.idle_timeout
            ),
        ));
    }
    duration_range(
        "listener.handshake_timeout",
        l.handshake_timeout.0,
        Duration::from_millis(100),
        Duration::from_secs(300),
    )?;
    duration_range(
        "listener.shutdown_grace",
        l.shutdown_grace.0,
        Duration::ZERO,
        Duration::from_secs(600),
    )?;
    range(
        "listener.udp_recv_buffer",
        l.udp_recv_buffer,
        64 * 1024,
        1 << 30,
    )?;
    range(
        "listener.udp_send_buffer",
        l.udp_send_buffer,
        64 * 1024,
        1 << 30,
    )?;
    Ok(())
}

fn tls(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let t = &cfg.tls;
    readable_file("tls.cert", &t.cert)?;
    readable_file("tls.key", &t.key)?;
    readable_file("tls.client_ca", &t.client_ca)?;
    for (i, crl) in t.crls.iter().enumerate() {
        readable_file(&format!("tls.crls[{i}]"), crl)?;
    }
    duration_range(
        "tls.crl_reload",
        t.crl_reload.0,
        Duration::from_millis(100),
        Duration::from_secs(24 * 3600),
    )
}

fn keys(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let k = &cfg.keys;
    if let Some(every) = k.rotate_every {
        duration_range(
            "keys.rotate_every",
            every.0,
            Duration::from_secs(3600),
            Duration::from_secs(10 * 365 * 24 * 3600),
        )?;
    }
    range("keys.rewrap_rate", k.rewrap_rate, 1, 100_000)?;
    match k.provider {
        KeyProviderKind::File => {
            if k.file.dir.as_os_str().is_empty() {
                return Err(err("keys.file.dir", "must not be empty"));
            }
            Ok(())
        }
        KeyProviderKind::Pkcs11 => {
            let p = k.pkcs11.as_ref().ok_or_else(|| {
                err(
                    "keys.pkcs11",
                    "keys.provider is \"pkcs11\" but there is no [keys.pkcs11] section",
                )
            })?;
            if p.module.as_os_str().is_empty() {
                return Err(err("keys.pkcs11.module", "must name the PKCS#11 module"));
            }
            if p.module.components().count() > 1 {
                readable_file("keys.pkcs11.module", &p.module)?;
            }
            if p.token_label.trim().is_empty() {
                return Err(err("keys.pkcs11.token_label", "must name the token"));
            }
            match (&p.pin_file, &p.pin_env) {
                (Some(_), Some(_)) => Err(err(
                    "keys.pkcs11.pin_file",
                    "give pin_file or pin_env, not both",
                )),
                (None, None) => Err(err(
                    "keys.pkcs11.pin_file",
                    "the token PIN is needed: give pin_file (a file readable only by the broker) or pin_env (an environment variable name)",
                )),
                (Some(file), None) => readable_file("keys.pkcs11.pin_file", file),
                (None, Some(var)) => {
                    let valid = var
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(err(
                            "keys.pkcs11.pin_env",
                            "is not an environment variable name; pin_env names the variable that holds the PIN, it is not the PIN",
                        ));
                    }
                    if std::env::var_os(var).is_none() {
                        return Err(err(
                            "keys.pkcs11.pin_env",
                            format!("the environment variable {var} is not set"),
                        ));
                    }
                    Ok(())
                }
            }
        }
    }
}

fn topics(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let t = &cfg.topics;
    range("topics.partitions", t.partitions, 1, 4096)?;
    if t.durability == DurabilityMode::Interval {
        duration_range(
            "topics.durability_interval",
            t.durability_interval.0,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
    }
    range("topics.segment_bytes", t.segment_bytes, 1 << 20, 1 << 40)?;
    duration_range(
        "topics.segment_age",
        t.segment_age.0,
        Duration::from_secs(1),
        Duration::from_secs(10 * 365 * 24 * 3600),
    )?;
    if let Retention::After(d) = t.retention {
        duration_range(
            "topics.retention",
            d.0,
            Duration::from_secs(1),
            Duration::from_secs(100 * 365 * 24 * 3600),
        )?;
    }
    if let Some(bytes) = t.retention_bytes {
        range("topics.retention_bytes", bytes, 1 << 20, u64::MAX)?;
    }
    Ok(())
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A level, or comma-separated `target=level` directives.
fn log(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    let level = cfg.log.level.trim();
    let bad = || {
        err(
            "log.level",
            format!(
                "{level:?} is not a level or a list of target=level directives; levels: {}",
                LEVELS.join(", ")
            ),
        )
    };
    if level.is_empty() {
        return Err(bad());
    }
    for directive in level.split(',') {
        let lvl =
            directive.rsplit_once('=').map_or(
                directive,
                |(target, lvl)| {
                    if target.is_empty() { "" } else { lvl }
                },
            );
        if !LEVELS.contains(&lvl.trim()) {
            return Err(bad());
        }
    }
    // What the log set-up will parse must parse.
    super::log_filter::parse_configured_filter(level).map_err(|e| err("log.level", e))?;
    Ok(())
}
