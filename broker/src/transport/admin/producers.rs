//! Admin requests about idempotent producers: issuing ids and epochs.

use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::frames::admin::AdminResponse;

use crate::audit::{AuditAction, AuditEvent};
use crate::error::BrokerError;
use crate::services::authz::Authorizer;
use crate::services::caller::{ConnCtx, blocking};
use crate::services::partitions::producers::InitOutcome;

/// Issues a producer id and epoch, or bumps the epoch of one the caller owns
/// (`publish` on some topic).
pub(super) async fn init(
    ctx: &ConnCtx,
    producer_id: Option<u64>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authz.check_publish_anywhere(
        state
            .partitions
            .topics()
            .all()
            .iter()
            .map(|t| t.name().to_owned()),
    )?;
    let state2 = state.clone();
    let principal = ctx.principal.clone();
    let outcome = blocking(move || {
        state2.partitions.producer_epochs().init(
            &state2.metadata,
            producer_id,
            &principal,
            now_ms(),
        )
    })
    .await??;
    let id = producer_id.unwrap_or_default();
    match outcome {
        InitOutcome::Issued { producer_id, epoch } => {
            Ok(AdminResponse::Producer { producer_id, epoch })
        }
        InitOutcome::Unknown | InitOutcome::Exhausted => Err(BrokerError::new(
            ErrorCode::UnknownProducer,
            format!(
                "producer id {id} was not issued by this broker (or its epochs are exhausted); ask for a new one"
            ),
        )),
        InitOutcome::NotOwned => {
            tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, producer_id = id, "producer id refused");
            state.audit.record(
                AuditEvent::denied(AuditAction::ProducerDeny, format!("producer:{id}"))
                    .principal(&ctx.principal)
                    .detail("producer_id", id)
                    .detail("reason", "not_owned"),
            );
            Err(BrokerError::new(
                ErrorCode::ProducerNotOwned,
                format!(
                    "producer id {id} was issued to another principal; ask for a new one (InitProducer without an id)"
                ),
            ))
        }
    }
}
