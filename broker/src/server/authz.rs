//! Per-stream authorization: the connection's ACL view, denials counted
//! and logged as audit events.

use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::admin_types::Operations;

use crate::acl::AclCache;
use crate::server::connection::ConnCtx;
use crate::server::error::BrokerError;
use crate::server::now_ms;

/// Checks a principal's requests against the live ACL.
#[derive(Debug)]
pub struct Authorizer {
    cache: AclCache,
    ctx: ConnCtx,
}

impl Authorizer {
    /// An authorizer for the connection's principal.
    pub fn new(ctx: &ConnCtx) -> Self {
        Self {
            cache: ctx.acl().cache_for(ctx.principal.clone()),
            ctx: ctx.clone(),
        }
    }

    /// The principal.
    pub fn principal(&self) -> &str {
        self.cache.principal()
    }

    /// Allows `op` on `topic`, or explains the denial.
    ///
    /// # Errors
    ///
    /// `not_authorized` with `not authorized: <principal> may not <op> <topic>`.
    pub fn check(&mut self, op: Operations, topic: &str) -> Result<(), BrokerError> {
        let decision = self.cache.check(op, topic, now_ms());
        match decision.denial(self.cache.principal(), op, topic) {
            None => Ok(()),
            Some(denial) => {
                self.ctx
                    .state
                    .metrics
                    .acl_denials
                    .with_label_values(&[&op.to_string()])
                    .inc();
                tracing::warn!(
                    target: "strongbox::audit",
                    principal = %self.cache.principal(),
                    operation = %op,
                    topic = %topic,
                    reason = ?decision.reason,
                    "access denied"
                );
                Err(BrokerError::new(
                    ErrorCode::NotAuthorized,
                    denial.to_string(),
                ))
            }
        }
    }
}
