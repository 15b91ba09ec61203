//! Access requests: a principal asks for data operations on a topic, a
//! principal holding `grant` on that topic approves (for a limited time or
//! not) or denies, approval creates the ACL rule, expiry removes it.
//!
//! ```text
//!   request ──► pending ──approve──► approved ──expiry──► expired
//!                  │
//!                  └──────deny─────► denied
//! ```
//!
//! - Anyone authenticated may ask, for `publish`, `subscribe` and
//!   `describe` on an existing topic (not the broker's own `_` topics),
//!   with a reason; an X25519 public key may come along, to be added to
//!   the topic's end-to-end recipient directory on approval.
//! - A decision needs `grant` on the request's topic; a request is decided
//!   once (`conflict` after). An approval of a request that carried a
//!   public key must carry the topic owner's signed recipient entry for
//!   exactly that key and the requester (the broker cannot sign one: see
//!   [`recipients`]); with a TTL, the entry must expire
//!   too.
//! - The approval's rule (requester × topic × operations, allow, expiring
//!   with the TTL), the recipient entry and the request's new state are
//!   committed in one metadata transaction, then the ACL is reloaded, so
//!   open connections see the grant at their next request.
//! - Maintenance ([`remove_expired`]) removes expired rules and, for each
//!   approved request past its expiry, its rules and its recipient entry,
//!   and marks it `expired`, again in one transaction.
//!
//! Every step is in the audit trail (`access.request`, `access.approve`,
//! `access.deny`, `access.expire`, `recipient.put`, `recipient.remove`);
//! a refused decision is `access.approve` or `access.deny` with outcome
//! `denied`, next to the `acl.deny` of the failed `grant` check.

use bytes::Bytes;
use strongbox_cluster::command::{AccessRequestSpec, AclSpec, RecipientRemoval};
use strongbox_cluster::{MetaCommand, MetaResponse, Refusal};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::{AccessRequestInfo, AccessState, AclEffect, AclRule, Operations};
use strongbox_storage::meta::{AclEntry, MetaError};

use crate::audit::{AuditAction, AuditEvent, BROKER_PRINCIPAL, topic_resource};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::access::recipients::{self, EntryFacts, KEY_LEN, key_fingerprint};
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;
use crate::services::caller::blocking;
use crate::services::metadata::refusal_error;

/// The operations a request may ask for; anything else is granted by an
/// administrator with `strongbox acl grant`.
pub const REQUESTABLE: Operations =
    Operations(Operations::PUBLISH.0 | Operations::SUBSCRIBE.0 | Operations::DESCRIBE.0);

/// Longest reason, in bytes (a reason is shown in listings and audited).
pub const MAX_REASON_LEN: usize = 1024;

/// Most pending requests one principal may have at a time.
pub const MAX_PENDING_PER_PRINCIPAL: u32 = 64;

/// How far a recipient entry's expiry may lie after the grant's, for the
/// clock difference between the approver's machine (which signs the entry)
/// and the broker (which computes the grant's expiry).
pub const ENTRY_EXPIRY_SLACK_MS: i64 = 5 * 60 * 1000;

fn invalid(message: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorCode::InvalidRequest, message)
}

fn reason_text(reason: &str, what: &str) -> Result<String, BrokerError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(invalid(format!("{what} is required")));
    }
    if reason.len() > MAX_REASON_LEN {
        return Err(invalid(format!(
            "{what} is {} bytes; at most {MAX_REASON_LEN}",
            reason.len()
        )));
    }
    Ok(reason.to_owned())
}

/// `AccessRequest`: any authenticated principal.
pub(crate) async fn request(
    ctx: &ConnCtx,
    topic: String,
    operations: Operations,
    reason: String,
    public_key: Option<Bytes>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let principal = ctx.principal.clone();
    if principal.contains('*') {
        return Err(invalid(format!(
            "principal {principal} contains `*`, so no ACL rule can name exactly it; ask an \
             administrator"
        )));
    }
    if operations.is_empty() || !REQUESTABLE.contains(operations) {
        return Err(invalid(format!(
            "access requests are for publish, subscribe and describe (asked: {operations}); \
             other operations are granted by an administrator"
        )));
    }
    if topic.starts_with('_') {
        return Err(invalid(format!(
            "{topic} is an internal topic of the broker; its access is not requested"
        )));
    }
    state.partitions.topics().require(&topic)?;
    let reason = reason_text(&reason, "a reason")?;
    if let Some(key) = &public_key {
        if recipients::RecipientKeyKind::of_len(key.len()).is_none() {
            return Err(invalid(format!(
                "the public key is {} bytes; an X25519 public key is {KEY_LEN} and an X-Wing \
                 one {}",
                key.len(),
                recipients::XWING_KEY_LEN
            )));
        }
        // Recipient ids are written with a one-byte length.
        if principal.is_empty() || principal.len() > 255 {
            return Err(invalid(format!(
                "principal {principal} is too long to be an end-to-end recipient id (255 bytes)"
            )));
        }
    }
    let mut info = AccessRequestInfo {
        id: 0,
        requester: principal.clone(),
        topic: topic.clone(),
        operations,
        reason,
        public_key,
        state: AccessState::Pending,
        created_at: now_ms(),
        decided_by: None,
        decision_reason: None,
        decided_at: None,
        expires_at: None,
    };
    let id = {
        let _guard = state.admin_lock.lock().await;
        let answer = state
            .metadata
            .submit(MetaCommand::CreateAccessRequest {
                request: AccessRequestSpec::from(&info),
                max_pending: MAX_PENDING_PER_PRINCIPAL,
            })
            .await?;
        let MetaResponse::AccessRequestCreated { id } = answer else {
            return Err(unexpected("storing the access request", &answer));
        };
        id
    };
    info.id = id;
    tracing::info!(target: "strongbox::audit", principal = %principal, request = id, topic = %topic, operations = %operations, "access requested");
    state
        .audit
        .record(request_event(AuditAction::AccessRequest, &info).principal(&principal));
    Ok(AdminResponse::Access(info))
}

/// `AccessList`: the caller's own requests and those on topics where it
/// holds `grant`.
pub(crate) async fn list(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    pending_only: bool,
) -> Result<AdminResponse, BrokerError> {
    let meta = ctx.state.meta.clone();
    let all = blocking(move || meta.read(|r| r.access_requests()))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("reading access requests", e))?;
    let visible = all
        .into_iter()
        .filter(|r| !pending_only || r.state == AccessState::Pending)
        .filter(|r| r.requester == ctx.principal || authz.allows(Operations::GRANT, &r.topic))
        .collect();
    Ok(AdminResponse::AccessList(visible))
}

/// Reads request `id`, or `not_found`.
async fn load(
    state: &std::sync::Arc<BrokerState>,
    id: u64,
) -> Result<AccessRequestInfo, BrokerError> {
    let meta = state.meta.clone();
    blocking(move || meta.read(|r| r.access_request(id)))
        .await?
        .map_err(|e: MetaError| BrokerError::internal("reading the access request", e))?
        .ok_or_else(|| {
            BrokerError::new(
                ErrorCode::NotFound,
                format!("access request {id} does not exist"),
            )
        })
}

/// Checks `grant` on the request's topic; a refusal is also recorded as a
/// refused decision.
fn authorize_decision(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    action: AuditAction,
    req: &AccessRequestInfo,
) -> Result<(), BrokerError> {
    authz.check(Operations::GRANT, &req.topic).inspect_err(|_| {
        ctx.state.audit.record(
            AuditEvent::denied(action, topic_resource(&req.topic))
                .principal(&ctx.principal)
                .detail("request_id", req.id)
                .detail("requester", req.requester.clone()),
        );
    })
}

fn already_decided(req: &AccessRequestInfo) -> BrokerError {
    BrokerError::new(
        ErrorCode::Conflict,
        format!(
            "access request {} is already {}{}",
            req.id,
            req.state.name(),
            req.decided_by
                .as_deref()
                .map(|p| format!(" (decided by {p})"))
                .unwrap_or_default()
        ),
    )
}

/// `AccessApprove`: needs `grant` on the request's topic.
pub(crate) async fn approve(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    id: u64,
    ttl_ms: Option<u64>,
    recipient_entry: Option<Bytes>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let req = load(state, id).await?;
    authorize_decision(ctx, authz, AuditAction::AccessApprove, &req)?;
    if req.state != AccessState::Pending {
        return Err(already_decided(&req));
    }
    state.partitions.topics().require(&req.topic)?;
    let now = now_ms();
    let expires_at = match ttl_ms {
        None => None,
        Some(0) => return Err(invalid("the TTL must be more than zero")),
        Some(ms) => Some(
            i64::try_from(ms)
                .ok()
                .and_then(|ms| now.checked_add(ms))
                .ok_or_else(|| invalid(format!("a TTL of {ms} ms is too long")))?,
        ),
    };
    let facts = check_recipient_entry(&req, recipient_entry.as_deref(), expires_at)?;
    let rule = AclRule {
        principal: req.requester.clone(),
        topic: req.topic.clone(),
        operations: req.operations,
        effect: AclEffect::Allow,
        expires_at,
    };
    crate::acl::AclSnapshot::compile(0, std::iter::empty::<String>(), vec![rule.clone()])
        .map_err(|e| invalid(e.to_string()))?;
    let mut decided = req.clone();
    decided.state = AccessState::Approved;
    decided.decided_by = Some(ctx.principal.clone());
    decided.decided_at = Some(now);
    decided.expires_at = expires_at;
    {
        let _guard = state.admin_lock.lock().await;
        let acl = AclEntry {
            rule: rule.clone(),
            request_id: Some(id),
            created_at: now,
        };
        let answer = state
            .metadata
            .submit_raw(MetaCommand::ApproveAccessRequest {
                decided: AccessRequestSpec::from(&decided),
                acl: AclSpec::from(&acl),
                recipient_entry: recipient_entry.as_ref().map(|e| e.to_vec()),
            })
            .await?;
        decision_outcome(state, answer, "storing the approval").await?;
        state.reload_acl()?;
    }
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, request = id, requester = %req.requester, topic = %req.topic, operations = %req.operations, expires_at = ?expires_at, "access approved");
    state
        .audit
        .record(request_event(AuditAction::AccessApprove, &decided).principal(&ctx.principal));
    if let Some(facts) = &facts {
        state
            .audit
            .record(recipients::put_event(&req.topic, facts, Some(id)).principal(&ctx.principal));
    }
    Ok(AdminResponse::Access(decided))
}

/// The recipient entry an approval must carry: for a request with a
/// public key, one for its topic, its requester and exactly that key,
/// expiring when the grant does (give or take the clock slack); for one
/// without, none.
fn check_recipient_entry(
    req: &AccessRequestInfo,
    entry: Option<&[u8]>,
    grant_expires_at: Option<i64>,
) -> Result<Option<EntryFacts>, BrokerError> {
    let (key, entry) = match (&req.public_key, entry) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(invalid(format!(
                "access request {} carries no public key: approve it without a recipient entry",
                req.id
            )));
        }
        (Some(_), None) => {
            return Err(invalid(format!(
                "access request {} carries a public key: the approval must carry the topic \
                 owner's signed recipient entry for it (strongbox access approve {} --owner-key \
                 FILE)",
                req.id, req.id
            )));
        }
        (Some(key), Some(entry)) => (key, entry),
    };
    let facts = recipients::check_entry(entry, &req.topic, &req.requester)?;
    if facts.public_key.as_slice() != key.as_ref() {
        return Err(invalid(format!(
            "the recipient entry is for key {}, the request's key is {}",
            key_fingerprint(&facts.public_key),
            key_fingerprint(key)
        )));
    }
    if let Some(grant) = grant_expires_at {
        match facts.expires_at {
            None => {
                return Err(invalid(
                    "the grant expires, so the recipient entry must expire too",
                ));
            }
            Some(at) if at > grant.saturating_add(ENTRY_EXPIRY_SLACK_MS) => {
                return Err(invalid(
                    "the recipient entry expires after the grant; sign it with the grant's TTL",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(Some(facts))
}

/// The outcome of a decision: done, or refused. A request decided in the
/// meantime is reported with who decided it.
async fn decision_outcome(
    state: &BrokerState,
    answer: MetaResponse,
    what: &str,
) -> Result<(), BrokerError> {
    match answer {
        MetaResponse::Done => Ok(()),
        MetaResponse::Refused(Refusal::AlreadyDecided { id, .. }) => {
            let meta = state.meta.clone();
            let current = blocking(move || meta.read(|r| r.access_request(id)))
                .await?
                .map_err(|e| BrokerError::internal(what, e))?;
            Err(current.map_or_else(
                || {
                    BrokerError::new(
                        ErrorCode::NotFound,
                        format!("access request {id} does not exist"),
                    )
                },
                |c| already_decided(&c),
            ))
        }
        MetaResponse::Refused(refusal) => Err(refusal_error(&refusal)),
        other => Err(unexpected(what, &other)),
    }
}

/// A metadata answer of the wrong kind: a bug, reported as internal.
fn unexpected(what: &str, answer: &MetaResponse) -> BrokerError {
    BrokerError::internal(what, format!("unexpected answer {answer:?}"))
}

/// `AccessDeny`: needs `grant` on the request's topic and a reason.
pub(crate) async fn deny(
    ctx: &ConnCtx,
    authz: &mut Authorizer,
    id: u64,
    reason: String,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let req = load(state, id).await?;
    authorize_decision(ctx, authz, AuditAction::AccessDeny, &req)?;
    let reason = reason_text(&reason, "a reason for the denial")?;
    if req.state != AccessState::Pending {
        return Err(already_decided(&req));
    }
    let mut decided = req.clone();
    decided.state = AccessState::Denied;
    decided.decided_by = Some(ctx.principal.clone());
    decided.decision_reason = Some(reason);
    decided.decided_at = Some(now_ms());
    {
        let _guard = state.admin_lock.lock().await;
        let answer = state
            .metadata
            .submit_raw(MetaCommand::DenyAccessRequest {
                decided: AccessRequestSpec::from(&decided),
            })
            .await?;
        decision_outcome(state, answer, "storing the denial").await?;
    }
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, request = id, requester = %req.requester, topic = %req.topic, "access denied by decision");
    state
        .audit
        .record(request_event(AuditAction::AccessDeny, &decided).principal(&ctx.principal));
    Ok(AdminResponse::Access(decided))
}

/// Removes every ACL rule expired at `now` and, for every approved request
/// past its expiry, its rules and its recipient entry (when the stored
/// entry still names the request's key), marking the request `expired`.
/// One transaction; the events are recorded once it is committed.
/// Returns the expired rules (the caller reloads the ACL when there are
/// any, and records their `acl.expire` events).
///
/// # Errors
///
/// The metadata store cannot be read or written; nothing is changed.
pub fn remove_expired(state: &BrokerState, now: i64) -> Result<Vec<AclEntry>, BrokerError> {
    // The recipient entries to remove with their grants: those that still
    // name the request's key. The command carries them as read, and one
    // replaced in the meantime stays.
    let read = state
        .meta
        .read(|v| {
            let rules_due = v
                .acls()?
                .iter()
                .any(|e| e.rule.expires_at.is_some_and(|t| t <= now));
            let mut requests_due = false;
            let mut removals = Vec::new();
            for req in v.access_requests()? {
                if req.state == AccessState::Approved && req.expires_at.is_some_and(|t| t <= now) {
                    requests_due = true;
                }
                if req.state != AccessState::Approved || req.expires_at.is_none_or(|t| t > now) {
                    continue;
                }
                let Some(key) = &req.public_key else { continue };
                let Some(stored) = v.recipient(&req.topic, &req.requester)? else {
                    continue;
                };
                if recipients::stored_key(&stored).is_some_and(|k| k.as_slice() == key.as_ref()) {
                    removals.push(RecipientRemoval {
                        request_id: req.id,
                        topic: req.topic.clone(),
                        recipient: req.requester.clone(),
                        entry: stored.to_vec(),
                    });
                }
            }
            Ok::<_, MetaError>((rules_due || requests_due, removals))
        })
        .map_err(|e| BrokerError::internal("reading expired grants", e))?;
    // Nothing due: no command, so a quiet cluster's metadata log does not
    // grow by one entry per node and maintenance pass.
    let (due, recipients) = read;
    if !due {
        return Ok(Vec::new());
    }
    let answer = state.metadata.submit_blocking(MetaCommand::ExpireGrants {
        now_ms: now,
        recipients,
    })?;
    let MetaResponse::GrantsExpired { rules, requests } = answer else {
        return Err(unexpected("removing expired grants", &answer));
    };
    let rules: Vec<AclEntry> = rules.iter().map(AclSpec::to_entry).collect();
    let expired: Vec<(AccessRequestInfo, bool)> = requests
        .iter()
        .map(|(req, removed)| (req.to_info(), *removed))
        .collect();
    for (req, recipient_removed) in &expired {
        tracing::info!(target: "strongbox::audit", request = req.id, requester = %req.requester, topic = %req.topic, recipient_removed, "access expired");
        state.audit.record(
            request_event(AuditAction::AccessExpire, req)
                .principal(BROKER_PRINCIPAL)
                .detail("recipient_removed", *recipient_removed),
        );
        if *recipient_removed {
            state.audit.record(
                recipients::remove_event(&req.topic, &req.requester, Some(req.id), "expired")
                    .principal(BROKER_PRINCIPAL),
            );
        }
    }
    Ok(rules)
}

/// The earliest time after `after` (ms since the epoch) at which a grant
/// ends: a stored rule's expiry, an approved request's, or a config rule's.
/// The maintenance task wakes then, so the grant's `acl.expire` and
/// `access.expire` records are written when it ends, not up to a
/// maintenance interval later.
///
/// # Errors
///
/// The metadata store cannot be read.
pub fn next_expiry(state: &BrokerState, after: i64) -> Result<Option<i64>, MetaError> {
    let (rules, requests) = state
        .meta
        .read(|v| Ok::<_, MetaError>((v.acls()?, v.access_requests()?)))?;
    let stored = rules.into_iter().filter_map(|e| e.rule.expires_at);
    let approved = requests
        .into_iter()
        .filter(|r| r.state == AccessState::Approved)
        .filter_map(|r| r.expires_at);
    let config = state
        .config_acl_rules()
        .into_iter()
        .filter_map(|r| r.expires_at);
    Ok(stored
        .chain(approved)
        .chain(config)
        .filter(|t| *t > after)
        .min())
}

/// The `success` event of a step of request `req`.
fn request_event(action: AuditAction, req: &AccessRequestInfo) -> AuditEvent {
    let mut event = AuditEvent::success(action, topic_resource(&req.topic))
        .detail("request_id", req.id)
        .detail("requester", req.requester.clone())
        .detail("operations", req.operations.to_string())
        .detail("reason", req.reason.clone())
        .detail("state", req.state.name())
        .detail(
            "public_key_fingerprint",
            req.public_key.as_deref().map(key_fingerprint),
        );
    if let Some(by) = &req.decided_by {
        event = event.detail("decided_by", by.clone());
    }
    if let Some(why) = &req.decision_reason {
        event = event.detail("decision_reason", why.clone());
    }
    if let Some(at) = req.expires_at {
        event = event.detail("expires_at", at);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(public_key: Option<[u8; 32]>) -> AccessRequestInfo {
        AccessRequestInfo {
            id: 7,
            requester: "bob".into(),
            topic: "demo.x".into(),
            operations: Operations::SUBSCRIBE,
            reason: "on call".into(),
            public_key: public_key.map(|k| Bytes::copy_from_slice(&k)),
            state: AccessState::Pending,
            created_at: 1,
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            expires_at: None,
        }
    }

    fn entry(topic: &str, recipient: &str, key: [u8; 32], expires: Option<i64>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"SBRE\x01\x00\x20");
        out.extend_from_slice(&u16::try_from(topic.len()).expect("short").to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.push(u8::try_from(recipient.len()).expect("short"));
        out.extend_from_slice(recipient.as_bytes());
        out.extend_from_slice(&key);
        out.extend_from_slice(&0i64.to_be_bytes());
        match expires {
            Some(at) => {
                out.push(1);
                out.extend_from_slice(&at.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&[0; 96]);
        out
    }

    #[test]
    fn an_approval_carries_an_entry_exactly_when_the_request_has_a_key() {
        assert_eq!(check_recipient_entry(&req(None), None, None), Ok(None));
        let e = entry("demo.x", "bob", [1; 32], None);
        assert!(
            check_recipient_entry(&req(None), Some(&e), None)
                .expect_err("unexpected entry")
                .message
                .contains("carries no public key")
        );
        let err = check_recipient_entry(&req(Some([1; 32])), None, None).expect_err("missing");
        assert!(err.message.contains("--owner-key"), "{}", err.message);
        assert!(
            check_recipient_entry(&req(Some([1; 32])), Some(&e), None)
                .expect("matching")
                .is_some()
        );
    }

    #[test]
    fn the_entry_must_match_key_requester_topic_and_expiry() {
        let r = req(Some([1; 32]));
        let wrong_key = entry("demo.x", "bob", [2; 32], None);
        assert!(
            check_recipient_entry(&r, Some(&wrong_key), None)
                .expect_err("key")
                .message
                .contains("the request's key is")
        );
        let wrong_recipient = entry("demo.x", "carol", [1; 32], None);
        assert!(check_recipient_entry(&r, Some(&wrong_recipient), None).is_err());
        let wrong_topic = entry("demo.y", "bob", [1; 32], None);
        assert!(check_recipient_entry(&r, Some(&wrong_topic), None).is_err());
        // A grant that expires needs an entry that expires no later.
        let forever = entry("demo.x", "bob", [1; 32], None);
        assert!(check_recipient_entry(&r, Some(&forever), Some(1_000_000)).is_err());
        let later = entry(
            "demo.x",
            "bob",
            [1; 32],
            Some(1_000_000 + ENTRY_EXPIRY_SLACK_MS + 1),
        );
        assert!(check_recipient_entry(&r, Some(&later), Some(1_000_000)).is_err());
        let with_grant = entry("demo.x", "bob", [1; 32], Some(999_000));
        assert!(check_recipient_entry(&r, Some(&with_grant), Some(1_000_000)).is_ok());
        let garbage = b"SBRE".to_vec();
        assert_eq!(
            check_recipient_entry(&r, Some(&garbage), None)
                .expect_err("malformed")
                .code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn requestable_operations_are_the_data_operations() {
        assert!(REQUESTABLE.contains(Operations::SUBSCRIBE.union(Operations::DESCRIBE)));
        assert!(!REQUESTABLE.contains(Operations::GRANT));
        assert!(!REQUESTABLE.contains(Operations::SUBSCRIBE.union(Operations::ADMIN)));
    }

    #[test]
    fn reasons_are_trimmed_and_bounded() {
        assert_eq!(
            reason_text("  on call \n", "a reason"),
            Ok("on call".into())
        );
        assert!(reason_text("   ", "a reason").is_err());
        assert!(reason_text(&"x".repeat(MAX_REASON_LEN + 1), "a reason").is_err());
    }
}
