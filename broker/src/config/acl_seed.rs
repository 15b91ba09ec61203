//! The ACL a configuration's `[acl]` section describes: its rules as
//! protocol rules, each error naming its field.

use strongbox_protocol::model::{AclEffect, AclRule, Operations};

use super::{AclConfig, ConfigError, Effect};
use crate::acl::{Acl, AclError, Pattern};

impl Acl {
    /// The ACL seeded from `[acl]`.
    ///
    /// # Errors
    ///
    /// A rule that does not convert, naming its field.
    pub fn from_config(cfg: &AclConfig) -> Result<Self, ConfigError> {
        let rules = seed_rules(cfg)?;
        Self::new(cfg.superusers.iter().cloned(), rules).map_err(|e| {
            // The rules were checked above, so this is about a superuser:
            // name its entry.
            let field = match &e {
                AclError::InvalidSuperuser(bad) => cfg
                    .superusers
                    .iter()
                    .position(|s| s == bad)
                    .map_or("acl.superusers".into(), |i| format!("acl.superusers[{i}]")),
                _ => "acl".into(),
            };
            ConfigError::invalid(field, e.to_string())
        })
    }
}

/// The `[[acl.rules]]` of a config as protocol rules.
///
/// # Errors
///
/// An unknown operation, an empty list, a bad pattern or expiry time,
/// naming the field.
pub fn seed_rules(cfg: &AclConfig) -> Result<Vec<AclRule>, ConfigError> {
    cfg.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = |f: &str| format!("acl.rules[{i}].{f}");
            let mut operations = Operations::default();
            for name in &r.operations {
                let op = Operations::from_name(name).ok_or_else(|| {
                    let known: Vec<_> = Operations::NAMED.iter().map(|(_, n)| *n).collect();
                    ConfigError::invalid(
                        field("operations"),
                        format!("unknown operation {name:?}; known: {}", known.join(", ")),
                    )
                })?;
                operations = operations.union(op);
            }
            if operations.is_empty() {
                return Err(ConfigError::invalid(
                    field("operations"),
                    "name at least one operation",
                ));
            }
            Pattern::parse("principal", &r.principal)
                .map_err(|e| ConfigError::invalid(field("principal"), e.to_string()))?;
            Pattern::parse("topic", &r.topic)
                .map_err(|e| ConfigError::invalid(field("topic"), e.to_string()))?;
            let expires_at = r
                .expires_at
                .as_deref()
                .map(|t| parse_expiry(t).map_err(|m| ConfigError::invalid(field("expires_at"), m)))
                .transpose()?;
            Ok(AclRule {
                principal: r.principal.clone(),
                topic: r.topic.clone(),
                operations,
                effect: match r.effect {
                    Effect::Allow => AclEffect::Allow,
                    Effect::Deny => AclEffect::Deny,
                },
                expires_at,
            })
        })
        .collect()
}

/// Milliseconds since the Unix epoch of an RFC 3339 time.
fn parse_expiry(text: &str) -> Result<i64, String> {
    let ms = strongbox_protocol::rfc3339::parse_ms(text.trim()).map_err(|e| e.to_string())?;
    if ms < 0 {
        return Err(format!("{text:?} is before 1970"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_parses() {
        assert_eq!(parse_expiry("1970-01-01T00:00:01Z"), Ok(1000));
        assert!(parse_expiry("yesterday").is_err());
    }
}
