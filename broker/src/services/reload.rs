//! Reloading the configuration file while the broker runs (`SIGHUP`).
//!
//! A reload reads and validates the whole file exactly as a start does, then
//! applies the part that can change without a restart: the `[acl]` section
//! (`superusers` and `[[acl.rules]]`), published as a new ACL generation
//! that new and open connections use from their next request. (The CRL
//! files are re-read by the TLS verifier on the same signal.) Every other
//! section is read only at start: a reload that finds one changed says
//! which, and that a restart applies it.
//!
//! A file that does not load or validate changes nothing: the rules in
//! force stay, and the error names the file and the field.

use std::path::PathBuf;

use strongbox_protocol::model::AclRule;

use crate::config::seed_rules;
use crate::config::{AclConfig, BrokerConfig, ConfigError};
use crate::services::BrokerState;

/// The `[acl]` section in force: its superusers and its rules.
#[derive(Debug, Clone, Default)]
pub struct AclSeed {
    /// `acl.superusers`.
    pub superusers: Vec<String>,
    /// `[[acl.rules]]`, converted.
    pub rules: Vec<AclRule>,
}

impl AclSeed {
    /// The seed a config's `[acl]` describes.
    ///
    /// # Errors
    ///
    /// A rule that does not convert, naming its field.
    pub fn from_config(cfg: &AclConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            superusers: cfg.superusers.clone(),
            rules: seed_rules(cfg)?,
        })
    }
}

/// What a successful reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The ACL generation now in force.
    pub generation: u64,
    /// Rules from the config file now in force.
    pub config_rules: usize,
    /// Superusers now in force.
    pub superusers: usize,
    /// Sections of the file that differ from those in force and that only
    /// a restart applies.
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file does not load or validate.
    #[error("config {path}: {error}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        error: ConfigError,
    },
    /// The rules could not be published (the metadata store could not be
    /// read, or a stored rule does not compile).
    #[error("{0}")]
    Acl(String),
}

impl BrokerState {
    /// Re-reads the config file this broker started with and applies its
    /// `[acl]` section (see the module docs). A broker started without a
    /// file only republishes its rules. Call it under `admin_lock`, so a
    /// grant committing at the same moment is not lost.
    ///
    /// # Errors
    ///
    /// [`ReloadError`]; the rules in force are then unchanged.
    pub fn reload_config(&self) -> Result<Reloaded, ReloadError> {
        let Some(path) = self.config.source.clone() else {
            let generation = self.reload_acl().map_err(|e| ReloadError::Acl(e.message))?;
            let seed = self.current_seed();
            return Ok(Reloaded {
                generation,
                config_rules: seed.rules.len(),
                superusers: seed.superusers.len(),
                restart_needed: Vec::new(),
            });
        };
        let config_error = |error| ReloadError::Config {
            path: path.clone(),
            error,
        };
        let fresh = BrokerConfig::load(&path)
            .and_then(BrokerConfig::validate)
            .map_err(config_error)?;
        let seed = AclSeed::from_config(&fresh.acl).map_err(config_error)?;
        let generation = self
            .publish_acl(&seed)
            .map_err(|e| ReloadError::Acl(e.message))?;
        let reloaded = Reloaded {
            generation,
            config_rules: seed.rules.len(),
            superusers: seed.superusers.len(),
            restart_needed: restart_only_changes(&self.config, &fresh),
        };
        *self
            .acl_seed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = seed;
        Ok(reloaded)
    }

    fn current_seed(&self) -> AclSeed {
        self.acl_seed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The sections other than `[acl]` in which `fresh` differs from
/// `running`: a reload does not apply them.
pub fn restart_only_changes(running: &BrokerConfig, fresh: &BrokerConfig) -> Vec<&'static str> {
    // The sections hold no floats or maps, so their `Debug` text is equal
    // exactly when they are.
    fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut changed = Vec::new();
    let sections: [(&'static str, bool); 10] = [
        ("broker", differ(&running.broker, &fresh.broker)),
        ("listener", differ(&running.listener, &fresh.listener)),
        ("tls", differ(&running.tls, &fresh.tls)),
        ("identity", differ(&running.identity, &fresh.identity)),
        ("keys", differ(&running.keys, &fresh.keys)),
        ("metrics", differ(&running.metrics, &fresh.metrics)),
        ("topics", differ(&running.topics, &fresh.topics)),
        ("log", differ(&running.log, &fresh.log)),
        (
            "checkpoints",
            differ(&running.checkpoints, &fresh.checkpoints),
        ),
        ("cluster", differ(&running.cluster, &fresh.cluster)),
    ];
    for (name, differs) in sections {
        if differs {
            changed.push(name);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> BrokerConfig {
        BrokerConfig::from_toml_str(
            &format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n{extra}"),
            std::path::Path::new("/etc/strongbox"),
        )
        .expect("config")
    }

    #[test]
    fn only_sections_other_than_acl_need_a_restart() {
        let running = config("[acl]\nsuperusers = [\"root\"]\n");
        let fresh = config(
            "[acl]\nsuperusers = [\"admin\"]\n[listener]\naddr = \"127.0.0.1:7000\"\n\
             [log]\nlevel = \"debug\"\n",
        );
        assert_eq!(
            restart_only_changes(&running, &fresh),
            vec!["listener", "log"]
        );
        assert!(restart_only_changes(&running, &running.clone()).is_empty());
    }
}
