//! ACL rules: principal pattern × topic pattern × operations, allow or deny.

use super::Operations;

/// Whether an ACL rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclEffect {
    /// Grants the operations.
    Allow,
    /// Refuses the operations, whatever else allows them.
    Deny,
}

/// One ACL rule: principal pattern × topic pattern × operations.
///
/// A pattern is `*` (anything), an exact name, or a prefix ending in `*`
/// (`orders.*`, `spiffe://prod/*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclRule {
    /// Principal pattern.
    pub principal: String,
    /// Topic pattern.
    pub topic: String,
    /// Operations the rule covers.
    pub operations: Operations,
    /// Allow or deny.
    pub effect: AclEffect,
    /// When the rule stops applying (milliseconds since the Unix epoch), for
    /// time-boxed grants.
    pub expires_at: Option<i64>,
}
