//! Value types of the config that are not plain numbers, strings or paths.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written the way people write them: `"30s"`, `"500ms"`,
/// `"90d"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Self).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write a number and a unit, like \"30s\", \"500ms\" or \"90d\""
            ))
        })
    }
}

/// Time-based retention of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Delete segments whose newest record is older than this.
    After(HumanDuration),
    /// Keep segments whatever their age (`"forever"`).
    Forever,
}

impl Retention {
    /// The retention in milliseconds, `None` for forever; saturates at
    /// `u64::MAX`.
    pub fn as_millis(self) -> Option<u64> {
        match self {
            Self::After(d) => Some(u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX)),
            Self::Forever => None,
        }
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "forever" {
            return Ok(Self::Forever);
        }
        humantime::parse_duration(s.trim())
            .map(|d| Self::After(HumanDuration(d)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid retention {s:?} ({e}); write a duration like \"7d\", or \"forever\""
                ))
            })
    }
}

/// When a topic acknowledges appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// After the data is on disk (group commit).
    Fsync,
    /// After the write; the log syncs at most every `durability_interval`.
    Interval,
    /// After the write; the operating system decides when to sync.
    None,
}

/// ACL rule effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Grants the operations.
    Allow,
    /// Refuses the operations whatever else allows them.
    Deny,
}

/// Which key provider holds the key-encryption keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProviderKind {
    /// A key file on disk, for development and for people without an HSM.
    #[default]
    File,
    /// An HSM through a PKCS#11 module.
    Pkcs11,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which certificates of a client chain are checked against the CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrlCheck {
    /// Every certificate below the trust anchor (the leaf and any
    /// intermediates); each needs a CRL from its issuer.
    #[default]
    Chain,
    /// The leaf certificate only.
    EndEntity,
}
