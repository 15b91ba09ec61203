//! Where the broker's log goes and what it looks like.
//!
//! Every line goes to stderr (systemd's journal, a container runtime or a
//! file collects it from there), in one of two formats chosen by
//! `log.format`:
//!
//! - `text`, for people: tracing's usual line. Colour codes are written
//!   only when stderr is a terminal and `NO_COLOR` is unset, so a file, a
//!   pipe or the journal never receives escape sequences;
//! - `json`, for log shippers: one JSON object per line with the stable
//!   fields of [`json`] (documented in docs/OPERATIONS.md, "Logs").
//!
//! Which events are written is a `RUST_LOG`-style filter (`info`,
//! `warn,strongbox_broker::server=debug`): the `RUST_LOG` environment
//! variable when it is set and not empty, else `log.level` from the
//! configuration. An invalid `RUST_LOG` is not fatal (the configured filter
//! applies and the first log line says so); an invalid `log.level` is a
//! configuration error, caught by `validate` before anything starts.

pub mod json;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use crate::config::log_filter::{parse_configured_filter, parse_filter};
use crate::config::{LogConfig, LogFormat};

/// The environment variable that overrides `log.level`.
pub const FILTER_ENV: &str = "RUST_LOG";

/// Where the filter in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSource {
    /// The `RUST_LOG` environment variable.
    Env(String),
    /// `log.level` from the configuration.
    Config(String),
    /// `RUST_LOG` was set but does not parse: `log.level` applies.
    ConfigAfterBadEnv {
        /// The configured filter in force.
        filter: String,
        /// The value of `RUST_LOG` that was ignored.
        ignored: String,
        /// Why it does not parse.
        error: String,
    },
}

impl FilterSource {
    /// The filter text in force.
    pub fn filter(&self) -> &str {
        match self {
            Self::Env(f) | Self::Config(f) | Self::ConfigAfterBadEnv { filter: f, .. } => f,
        }
    }
}

/// Chooses the filter: `RUST_LOG` when set and valid, else `configured`.
/// `env` is the value of `RUST_LOG` (passed in, so tests need not touch
/// the process environment).
///
/// # Errors
///
/// `configured` does not parse (and `RUST_LOG` does not replace it).
pub fn choose_filter(
    env: Option<&str>,
    configured: &str,
) -> Result<(EnvFilter, FilterSource), String> {
    let env = env.map(str::trim).filter(|v| !v.is_empty());
    if let Some(value) = env {
        match parse_filter(value) {
            Ok(filter) => return Ok((filter, FilterSource::Env(value.to_owned()))),
            Err(error) => {
                let filter = parse_configured_filter(configured)
                    .map_err(|e| format!("log.level {configured:?}: {e}"))?;
                return Ok((
                    filter,
                    FilterSource::ConfigAfterBadEnv {
                        filter: configured.to_owned(),
                        ignored: value.to_owned(),
                        error,
                    },
                ));
            }
        }
    }
    let filter = parse_configured_filter(configured)
        .map_err(|e| format!("log.level {configured:?}: {e}"))?;
    Ok((filter, FilterSource::Config(configured.to_owned())))
}

/// True when text output may carry colour codes: stderr is a terminal and
/// `NO_COLOR` (<https://no-color.org>) is unset or empty.
pub fn stderr_wants_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the broker's log output as `config` describes (the first call
/// wins; later calls change nothing) and returns where the filter came
/// from. Call it once the configuration is validated.
pub fn init(config: &LogConfig) -> FilterSource {
    let env = std::env::var(FILTER_ENV).ok();
    let (filter, source) = match choose_filter(env.as_deref(), &config.level) {
        Ok(chosen) => chosen,
        // `validate` rejects such a config; a caller that skipped it still
        // gets a log.
        Err(_) => (EnvFilter::new("info"), FilterSource::Config("info".into())),
    };
    let installed = match config.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .fmt_fields(json::span_fields())
            .event_format(json::JsonLines)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(stderr_wants_colour())
            .try_init(),
    };
    if installed.is_ok()
        && let FilterSource::ConfigAfterBadEnv {
            filter,
            ignored,
            error,
        } = &source
    {
        tracing::warn!(
            rust_log = %ignored,
            error = %error,
            filter = %filter,
            "RUST_LOG does not parse; using log.level from the configuration"
        );
    }
    source
}

/// Log output of the offline commands (`verify`, `inspect`, `backup`,
/// `config check`): text on stderr, `RUST_LOG` when set and valid, else
/// `default`; colour only on a terminal.
pub fn init_cli(default: &str) {
    let env = std::env::var(FILTER_ENV).ok();
    let filter = choose_filter(env.as_deref(), default)
        .map(|(f, _)| f)
        .unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_wants_colour())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_filter() {
        let (_, source) = choose_filter(Some("debug"), "info").expect("filter");
        assert_eq!(source, FilterSource::Env("debug".into()));
        let (_, source) = choose_filter(None, "warn,strongbox_broker=debug").expect("filter");
        assert_eq!(
            source,
            FilterSource::Config("warn,strongbox_broker=debug".into())
        );
        // Empty counts as unset.
        let (_, source) = choose_filter(Some("  "), "info").expect("filter");
        assert_eq!(source, FilterSource::Config("info".into()));
    }

    #[test]
    fn a_bad_rust_log_falls_back_to_the_configuration() {
        let (_, source) = choose_filter(Some("info,=[x"), "warn").expect("filter");
        match source {
            FilterSource::ConfigAfterBadEnv {
                filter, ignored, ..
            } => {
                assert_eq!(filter, "warn");
                assert_eq!(ignored, "info,=[x");
            }
            other => panic!("expected a fallback, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_configured_filter_is_an_error() {
        let e = choose_filter(None, "loud").expect_err("not a level");
        assert!(e.contains("log.level"), "{e}");
        assert!(parse_configured_filter("INFO,strongbox_broker::server=debug").is_ok());
        assert!(parse_configured_filter("strongbox=verbose").is_err());
        // RUST_LOG keeps its own syntax: a bare word is a target.
        assert!(parse_filter("strongbox_broker").is_ok());
        assert!(parse_configured_filter("strongbox_broker").is_err());
    }
}
