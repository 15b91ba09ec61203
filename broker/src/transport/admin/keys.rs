//! Admin requests about key encryption keys: status, rotate, rewrap,
//! retire, mark compromised, destroy.

use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::{KeyVersionInfo, Operations};
use strongbox_storage::keys::{KekId, KekScope, KekVersion};

use crate::audit::{self, AuditAction, AuditEvent, Outcome};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::authz::Authorizer;
use crate::services::caller::{ConnCtx, blocking};
use crate::services::keys::key_lifecycle::{self, scope_name};
use crate::services::keys::rewrap::RewrapRequest;

use super::BROKER_WIDE;

/// The KEK versions of a scope and its rewrap progress (`keys`).
pub(super) async fn status(
    ctx: &ConnCtx,
    topic: Option<String>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let scope = key_scope(state, &mut authz, topic.as_deref())?;
    let keys = state.keys.manager().clone();
    let scope2 = scope.clone();
    let versions = blocking(move || keys.versions(scope2.as_ref())).await??;
    Ok(AdminResponse::KeyStatus {
        versions: versions.iter().map(|v| version_info(state, v)).collect(),
        rewrap: state.keys.rewrap().progress(scope.as_ref()),
    })
}

/// Activates a new KEK version for a scope (`keys`).
pub(super) async fn rotate(
    ctx: &ConnCtx,
    topic: Option<String>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
    let keys = state.keys.manager().clone();
    let version = blocking(move || keys.rotate(&scope)).await??;
    key_lifecycle::record_rotation(state, &version, &ctx.principal, None);
    Ok(AdminResponse::KeyChanged {
        message: format!("{} is now active for new segments", version.id),
        version: version_info(state, &version),
        segments: 0,
    })
}

/// Makes a KEK version decrypt-only (`keys`).
pub(super) async fn retire(
    ctx: &ConnCtx,
    topic: Option<String>,
    version: u32,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
    let keys = state.keys.manager().clone();
    let id = KekId { scope, version };
    let v = blocking(move || keys.retire(&id)).await??;
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, kek = %v.id, "key retired");
    state.audit.record(
        key_event(state, AuditAction::KeyRetire, Outcome::Success, &v).principal(&ctx.principal),
    );
    Ok(AdminResponse::KeyChanged {
        message: format!("{} is now decrypt-only", v.id),
        segments: v.segments,
        version: version_info(state, &v),
    })
}

/// Marks a KEK version compromised (`keys`).
pub(super) async fn compromised(
    ctx: &ConnCtx,
    topic: Option<String>,
    version: u32,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
    let keys = state.keys.manager().clone();
    let id = KekId { scope, version };
    let v = blocking(move || keys.mark_compromised(&id)).await??;
    tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, kek = %v.id, segments = v.segments, "key marked compromised");
    state.audit.record(
        key_event(state, AuditAction::KeyCompromised, Outcome::Alert, &v).principal(&ctx.principal),
    );
    key_lifecycle::refresh_compromised(state);
    Ok(AdminResponse::KeyChanged {
        message: format!(
            "{} is marked compromised; {} segments still use it and go first in the \
             rewrap queue: rewrap them (strongbox keys rewrap), then destroy it",
            v.id, v.segments
        ),
        segments: v.segments,
        version: version_info(state, &v),
    })
}

/// Destroys a KEK version (`keys`); takes effect before the answer.
pub(super) async fn destroy(
    ctx: &ConnCtx,
    topic: Option<String>,
    version: u32,
    force: bool,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
    let id = KekId { scope, version };
    // Takes effect before the answer: see `destroy_version`.
    let state2 = state.clone();
    let key_lifecycle::Destroyed { outcome, lost } =
        blocking(move || key_lifecycle::destroy_version(&state2, &id, force, LISTED_SEGMENTS))
            .await??;
    key_lifecycle::refresh_compromised(state);
    tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, kek = %outcome.version.id, segments_lost = outcome.segments_lost, "key destroyed");
    state.audit.record(
        key_event(
            state,
            AuditAction::KeyDestroy,
            Outcome::Success,
            &outcome.version,
        )
        .principal(&ctx.principal)
        .detail("segments_lost", outcome.segments_lost)
        .detail("forced", force),
    );
    Ok(AdminResponse::KeyChanged {
        message: destroyed_message(
            &outcome.version.id,
            outcome.segments_lost,
            &key_lifecycle::segment_names(state, &lost),
        ),
        segments: outcome.segments_lost,
        version: version_info(state, &outcome.version),
    })
}

/// Starts rewrapping a scope's segment keys to its active KEK version (`keys`).
pub(super) async fn rewrap(
    ctx: &ConnCtx,
    topic: Option<String>,
    from_version: Option<u32>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    let scope = key_scope(state, &mut authz, topic.as_deref())?.unwrap_or(KekScope::Broker);
    let request = RewrapRequest {
        scope,
        from_version,
        principal: ctx.principal.clone(),
    };
    let started = state.keys.rewrap().start(state, request).await?;
    Ok(AdminResponse::KeyChanged {
        version: version_info(state, &started.target),
        segments: started.queued,
        message: started.message,
    })
}

/// Segments a forced destruction names in its answer.
const LISTED_SEGMENTS: usize = 20;

/// The answer to a destruction: how many segments became unreadable and
/// which (the first [`LISTED_SEGMENTS`]).
fn destroyed_message(id: &KekId, lost: u64, names: &[String]) -> String {
    if lost == 0 {
        return format!("{id} destroyed; no segment needed it");
    }
    let more = lost.saturating_sub(names.len() as u64);
    let mut listed = names.join(", ");
    if more > 0 {
        listed.push_str(&format!(" and {more} more"));
    }
    format!("{id} destroyed; {lost} segments are now unreadable: {listed}")
}

/// The KEK scope a key request is about, after checking the `keys`
/// permission on it. `None` for every scope (status only).
fn key_scope(
    state: &BrokerState,
    authz: &mut Authorizer,
    topic: Option<&str>,
) -> Result<Option<KekScope>, BrokerError> {
    match topic {
        None => {
            authz.check(Operations::KEYS, BROKER_WIDE)?;
            Ok(None)
        }
        Some(name) => {
            authz.check(Operations::KEYS, name)?;
            let topic = state.partitions.topics().require(name)?;
            if !topic.entry.config.dedicated_kek {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "topic {name} has no dedicated key; its data keys are wrapped by the broker key"
                    ),
                ));
            }
            Ok(Some(topic.kek_scope()))
        }
    }
}

fn version_info(state: &BrokerState, v: &KekVersion) -> KeyVersionInfo {
    v.to_info(scope_name(state, &v.id.scope))
}

/// The event of a KEK lifecycle change.
fn key_event(
    state: &BrokerState,
    action: AuditAction,
    outcome: Outcome,
    v: &KekVersion,
) -> AuditEvent {
    let scope = scope_name(state, &v.id.scope);
    AuditEvent::new(action, outcome, audit::kek_resource(&scope, v.id.version))
        .detail("kek", v.id.label())
        .detail("state", v.state.name())
        .detail("segments", v.segments)
}
