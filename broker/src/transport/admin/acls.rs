//! Admin requests about the ACL: grant, revoke, list.

use std::sync::Arc;

use strongbox_cluster::command::{AclRuleSpec, AclSpec};
use strongbox_cluster::{MetaCommand, MetaResponse};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::{AclRule, Operations};
use strongbox_storage::meta::AclEntry;

use crate::audit::{AuditAction, AuditEvent, topic_resource};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;

use super::BROKER_WIDE;

/// Grants a runtime ACL rule.
pub(super) async fn grant(ctx: &ConnCtx, rule: AclRule) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authorize_rule_change(&mut authz, &rule)?;
    let event = rule_event(AuditAction::AclGrant, &rule).principal(&ctx.principal);
    let answer = acl_grant(state, rule).await?;
    state.audit.record(event);
    Ok(answer)
}

/// Revokes operations from runtime ACL rules.
pub(super) async fn revoke(ctx: &ConnCtx, rule: AclRule) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authorize_rule_change(&mut authz, &rule)?;
    let event = rule_event(AuditAction::AclRevoke, &rule).principal(&ctx.principal);
    let answer = acl_revoke(state, rule).await?;
    state.audit.record(event);
    Ok(answer)
}

/// Lists ACL rules (`grant` on the topic asked about, broker-wide without one).
pub(super) async fn list(
    ctx: &ConnCtx,
    principal: Option<String>,
    topic: Option<String>,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    let mut authz = Authorizer::new(ctx);
    authz.check(Operations::GRANT, topic.as_deref().unwrap_or(BROKER_WIDE))?;
    let rules = state
        .acl
        .snapshot()
        .rules()
        .filter(|r| principal.as_deref().is_none_or(|p| r.principal == p))
        .filter(|r| topic.as_deref().is_none_or(|t| r.topic == t))
        .cloned()
        .collect();
    Ok(AdminResponse::Acls(rules))
}

/// Granting data operations needs `grant` on the rule's topic pattern;
/// granting anything else (keys, audit, admin, create, ...) needs `admin`.
fn authorize_rule_change(authz: &mut Authorizer, rule: &AclRule) -> Result<(), BrokerError> {
    let data_ops = Operations::PUBLISH
        .union(Operations::SUBSCRIBE)
        .union(Operations::DESCRIBE);
    if rule.operations.0 & !data_ops.0 == 0 {
        authz.check(Operations::GRANT, &rule.topic)
    } else {
        authz.check(Operations::ADMIN, &rule.topic)
    }
}

/// The event of a rule granted or revoked.
fn rule_event(action: AuditAction, rule: &AclRule) -> AuditEvent {
    AuditEvent::success(action, topic_resource(&rule.topic))
        .detail("rule_principal", rule.principal.clone())
        .detail("operations", rule.operations.to_string())
        .detail("effect", format!("{:?}", rule.effect).to_lowercase())
        .detail("expires_at", rule.expires_at)
}

async fn acl_grant(state: &Arc<BrokerState>, rule: AclRule) -> Result<AdminResponse, BrokerError> {
    // Compile first: a bad pattern is refused before anything is stored.
    crate::acl::AclSnapshot::compile(0, std::iter::empty::<String>(), vec![rule.clone()])
        .map_err(|e| BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let entry = AclEntry {
        rule: rule.clone(),
        request_id: None,
        created_at: now_ms(),
    };
    // Proposed without the admin lock (a proposal can wait for a leader);
    // the live rules are rebuilt under it.
    state
        .metadata
        .submit(MetaCommand::PutAcl {
            acl: AclSpec::from(&entry),
        })
        .await?;
    let _guard = state.admin_lock.lock().await;
    state.reload_acl()?;
    tracing::info!(target: "strongbox::audit", principal = %rule.principal, topic = %rule.topic, operations = %rule.operations, effect = ?rule.effect, "ACL rule granted");
    Ok(AdminResponse::Acls(rules_for(state, &rule.principal)))
}

/// Takes `rule.operations` out of every rule granted at runtime with the
/// same principal pattern, topic pattern and effect, deleting a rule left
/// with none. Rules of the config file are not touched: the answer says to
/// edit the file when only they match.
async fn acl_revoke(state: &Arc<BrokerState>, rule: AclRule) -> Result<AdminResponse, BrokerError> {
    // As for a grant: proposed without the admin lock, applied under it.
    let answer = state
        .metadata
        .submit(MetaCommand::RevokeAcl {
            rule: AclRuleSpec::from(&rule),
        })
        .await?;
    let _guard = state.admin_lock.lock().await;
    let MetaResponse::AclRevoked { changed } = answer else {
        return Err(BrokerError::internal(
            "revoking the ACL rule",
            format!("unexpected answer {answer:?}"),
        ));
    };
    let changed: Vec<(AclRule, Option<AclRule>)> = changed
        .iter()
        .map(|(before, after)| (before.to_rule(), after.as_ref().map(AclRuleSpec::to_rule)))
        .collect();
    if changed.is_empty() {
        let from_config = state
            .config_acl_rules()
            .iter()
            .any(|r| covers_part_of(r, &rule));
        let effect = format!("{:?}", rule.effect).to_lowercase();
        return Err(if from_config {
            BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the {effect} rule for {} on {} comes from the broker's config file \
                     ([[acl.rules]]): remove the operations there and send the broker SIGHUP",
                    rule.principal, rule.topic
                ),
            )
        } else {
            BrokerError::new(
                ErrorCode::NotFound,
                format!(
                    "no ACL rule granted at runtime matches: no {effect} rule for {} on {} has \
                     any of {}",
                    rule.principal, rule.topic, rule.operations
                ),
            )
        });
    }
    state.reload_acl()?;
    for (before, after) in &changed {
        let left = after.as_ref().map_or_else(
            || "none (rule deleted)".to_owned(),
            |r| r.operations.to_string(),
        );
        tracing::info!(target: "strongbox::audit", principal = %before.principal, topic = %before.topic, revoked = %rule.operations, had = %before.operations, left = %left, "ACL rule revoked");
    }
    Ok(AdminResponse::Acls(rules_for(state, &rule.principal)))
}

/// True when `candidate` has `rule`'s principal, topic and effect and
/// grants at least one of its operations.
fn covers_part_of(candidate: &AclRule, rule: &AclRule) -> bool {
    candidate.principal == rule.principal
        && candidate.topic == rule.topic
        && candidate.effect == rule.effect
        && candidate.operations.0 & rule.operations.0 != 0
}

fn rules_for(state: &BrokerState, principal: &str) -> Vec<AclRule> {
    state
        .acl
        .snapshot()
        .rules()
        .filter(|r| r.principal == principal)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongbox_protocol::model::AclEffect;
    use strongbox_storage::meta::MetaError;

    fn stored(principal: &str, topic: &str, ops: Operations, expires_at: Option<i64>) -> AclEntry {
        AclEntry {
            rule: AclRule {
                principal: principal.into(),
                topic: topic.into(),
                operations: ops,
                effect: AclEffect::Allow,
                expires_at,
            },
            request_id: Some(7),
            created_at: 1,
        }
    }

    fn revoke(
        meta: &strongbox_storage::meta::MetaStore,
        principal: &str,
        topic: &str,
        ops: Operations,
    ) -> Vec<(AclRule, Option<AclRule>)> {
        let rule = AclRule {
            principal: principal.into(),
            topic: topic.into(),
            operations: ops,
            effect: AclEffect::Allow,
            expires_at: None,
        };
        let answer = strongbox_cluster::apply_local(
            meta,
            &MetaCommand::RevokeAcl {
                rule: AclRuleSpec::from(&rule),
            },
        )
        .expect("revoke");
        let MetaResponse::AclRevoked { changed } = answer else {
            panic!("unexpected answer {answer:?}");
        };
        changed
            .iter()
            .map(|(before, after)| (before.to_rule(), after.as_ref().map(AclRuleSpec::to_rule)))
            .collect()
    }

    #[test]
    fn revoking_operations_narrows_rules_and_deletes_empty_ones() {
        let meta = strongbox_storage::meta::MetaStore::in_memory().expect("meta");
        let all = Operations::PUBLISH
            .union(Operations::SUBSCRIBE)
            .union(Operations::DESCRIBE);
        meta.write(|b| {
            b.put_acl(&stored("alice", "demo.*", all, Some(99)))?;
            b.put_acl(&stored("alice", "other", Operations::PUBLISH, None))?;
            Ok::<_, MetaError>(())
        })
        .expect("seed");

        // Part of a rule: the rest stays, with its expiry and origin.
        let changed = revoke(&meta, "alice", "demo.*", Operations::PUBLISH);
        assert_eq!(changed.len(), 1);
        let left = changed[0].1.as_ref().expect("a remainder");
        assert_eq!(
            left.operations,
            Operations::SUBSCRIBE.union(Operations::DESCRIBE)
        );
        let acls = meta.read(|v| v.acls()).expect("acls");
        let demo: Vec<_> = acls.iter().filter(|e| e.rule.topic == "demo.*").collect();
        assert_eq!(demo.len(), 1);
        assert_eq!(demo[0].rule.operations, left.operations);
        assert_eq!(demo[0].rule.expires_at, Some(99));
        assert_eq!(demo[0].request_id, Some(7));

        // Operations the rule does not have: nothing matches.
        assert!(revoke(&meta, "alice", "demo.*", Operations::PUBLISH).is_empty());
        assert!(revoke(&meta, "bob", "demo.*", Operations::SUBSCRIBE).is_empty());

        // All that is left: the rule goes.
        let changed = revoke(&meta, "alice", "demo.*", all);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].1.is_none());
        let acls = meta.read(|v| v.acls()).expect("acls");
        assert_eq!(acls.len(), 1, "only the other topic's rule: {acls:?}");
    }

    #[test]
    fn a_remainder_never_shortens_an_equal_rule() {
        let meta = strongbox_storage::meta::MetaStore::in_memory().expect("meta");
        let both = Operations::PUBLISH.union(Operations::SUBSCRIBE);
        meta.write(|b| {
            b.put_acl(&stored("alice", "t", both, Some(5)))?;
            b.put_acl(&stored("alice", "t", Operations::SUBSCRIBE, None))?;
            Ok::<_, MetaError>(())
        })
        .expect("seed");
        revoke(&meta, "alice", "t", Operations::PUBLISH);
        let acls = meta.read(|v| v.acls()).expect("acls");
        assert_eq!(acls.len(), 1, "{acls:?}");
        assert_eq!(acls[0].rule.operations, Operations::SUBSCRIBE);
        assert_eq!(acls[0].rule.expires_at, None, "the lasting rule stays");
    }
}
