//! Admin requests about the audit trail: its anchored head.

use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::Operations;
use strongbox_storage::meta::MetaError;

use crate::audit::AUDIT_TOPIC;
use crate::error::BrokerError;
use crate::services::authz::Authorizer;
use crate::services::caller::{ConnCtx, blocking};

/// The anchored head of the audit trail (`audit` on `_audit`).
pub(super) async fn head(ctx: &ConnCtx) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authz.check(Operations::AUDIT, AUDIT_TOPIC)?;
    let meta = state.meta.clone();
    let head = blocking(move || meta.read(|r| r.audit_head()))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("reading the audit head", e))?;
    // Sequence 0: nothing anchored yet.
    Ok(head.map_or(
        AdminResponse::AuditHead {
            sequence: 0,
            hash: [0; 32],
        },
        |h| AdminResponse::AuditHead {
            sequence: h.sequence,
            hash: h.hash,
        },
    ))
}
