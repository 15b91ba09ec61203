//! The identity mapper a configuration's `[identity]` section describes,
//! each error naming its field.

use super::{ConfigError, IdentityConfig};
use crate::identity::{IdentityMapper, MappingRule, RuleError};

impl IdentityMapper {
    /// The mapper described by `[identity]`.
    ///
    /// # Errors
    ///
    /// A rule that does not parse, naming its field.
    pub fn from_config(cfg: &IdentityConfig) -> Result<Self, ConfigError> {
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                MappingRule::parse(&r.pattern, &r.principal).map_err(|e| {
                    let field = match e {
                        RuleError::EmptyPattern | RuleError::AdjacentWildcards => "match",
                        _ => "principal",
                    };
                    ConfigError::invalid(format!("identity.rules[{i}].{field}"), e.to_string())
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(rules, cfg.require_match))
    }
}
