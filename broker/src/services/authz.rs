//! Per-stream authorization: the connection's ACL view, denials counted,
//! logged and recorded in the audit trail.

use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::model::{AclEffect, Operations};

use crate::acl::{AclCache, DecisionReason};
use crate::audit::{AuditAction, AuditEvent, topic_resource};
use crate::error::BrokerError;
use crate::services::caller::ConnCtx;

/// Checks a principal's requests against the live ACL.
#[derive(Debug)]
pub struct Authorizer {
    cache: AclCache,
    ctx: ConnCtx,
}

impl Authorizer {
    /// An authorizer for the connection's principal.
    pub fn new(ctx: &ConnCtx) -> Self {
        let cache = if ctx.node_certificate {
            ctx.acl().cache_for_node(ctx.principal.clone())
        } else {
            ctx.acl().cache_for(ctx.principal.clone())
        };
        Self {
            cache,
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
        if let Some(denial) = internal_topic_denial(self.cache.principal(), op, topic) {
            return Err(self.deny(op, topic, "internal_topic", denial));
        }
        let now = now_ms();
        let decision = self.cache.check(op, topic, now);
        if !decision.allowed && self.implied(op, topic, now) {
            return Ok(());
        }
        match decision.denial(self.cache.principal(), op, topic) {
            None => Ok(()),
            Some(denial) => {
                let (reason, message) = match decision.reason {
                    DecisionReason::DeniedByRule => ("denied_by_rule", denial.to_string()),
                    _ if self.cache.is_node() => (
                        "node_certificate",
                        format!(
                            "{denial} (a node certificate: only ACL rules naming {} exactly apply to it)",
                            self.cache.principal()
                        ),
                    ),
                    _ => ("no_matching_rule", denial.to_string()),
                };
                Err(self.deny(op, topic, reason, message))
            }
        }
    }

    /// True when `op` on `topic` would be allowed; nothing is counted,
    /// logged or audited (for filtering listings).
    pub fn allows(&mut self, op: Operations, topic: &str) -> bool {
        let now = now_ms();
        internal_topic_denial(self.cache.principal(), op, topic).is_none()
            && (self.cache.check(op, topic, now).allowed || self.implied(op, topic, now))
    }

    /// Allows `InitProducer`: a producer id is only for a principal that
    /// holds `publish` on at least one topic, one of `existing` or a name
    /// that an allow rule's pattern covers. A refusal is counted, logged
    /// and audited like any denial.
    ///
    /// # Errors
    ///
    /// `not_authorized` naming the missing permission.
    pub fn check_publish_anywhere(
        &mut self,
        existing: impl IntoIterator<Item = String>,
    ) -> Result<(), BrokerError> {
        let snapshot = self.ctx.acl().snapshot();
        if snapshot.is_superuser(self.cache.principal()) {
            return Ok(());
        }
        // A pattern's prefix stands for the names it covers: a deny rule
        // that covers the prefix covers every name the allow rule does.
        let from_rules: Vec<String> = snapshot
            .rules()
            .filter(|r| r.effect == AclEffect::Allow && r.operations.contains(Operations::PUBLISH))
            .map(|r| r.topic.strip_suffix('*').unwrap_or(&r.topic).to_owned())
            .collect();
        if existing
            .into_iter()
            .chain(from_rules)
            .any(|topic| self.allows(Operations::PUBLISH, &topic))
        {
            return Ok(());
        }
        let principal = self.cache.principal().to_owned();
        let (reason, note) = if self.cache.is_node() {
            (
                "node_certificate",
                format!(
                    " (a node certificate: only ACL rules naming {principal} exactly apply to it)"
                ),
            )
        } else {
            ("no_publish_anywhere", String::new())
        };
        Err(self.deny(
            Operations::PUBLISH,
            "*",
            reason,
            format!(
                "not authorized: {principal} may not publish to any topic, so it may not hold a producer id{note}"
            ),
        ))
    }

    /// See [`describe_implied`].
    fn implied(&mut self, op: Operations, topic: &str, now: i64) -> bool {
        op == Operations::DESCRIBE && describe_implied(|o| self.cache.check(o, topic, now))
    }

    /// Counts, logs and audits a denial; returns the client's error.
    fn deny(
        &self,
        op: Operations,
        topic: &str,
        reason: &'static str,
        message: String,
    ) -> BrokerError {
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
            reason,
            "access denied"
        );
        self.ctx.state.audit.record(
            AuditEvent::denied(AuditAction::AclDeny, resource_of(topic))
                .principal(self.cache.principal())
                .detail("operation", op.to_string())
                .detail("reason", reason),
        );
        BrokerError::new(ErrorCode::NotAuthorized, message)
    }
}

/// `describe` is implied by `publish` or `subscribe` on the same topic (a
/// producer needs the partition count, a consumer the partitions), unless a
/// rule denies `describe` itself.
fn describe_implied(mut check: impl FnMut(Operations) -> crate::acl::Decision) -> bool {
    if check(Operations::DESCRIBE).reason == DecisionReason::DeniedByRule {
        return false;
    }
    check(Operations::PUBLISH).allowed || check(Operations::SUBSCRIBE).allowed
}

/// Operations no client may perform on the broker's own (`_`) topics,
/// whatever the ACL says: only the broker writes, creates, alters or
/// deletes them.
fn internal_topic_denial(principal: &str, op: Operations, topic: &str) -> Option<String> {
    let writes = Operations::PUBLISH
        .union(Operations::CREATE)
        .union(Operations::DELETE)
        .union(Operations::ALTER);
    (topic.starts_with('_') && op.0 & writes.0 != 0).then(|| {
        format!(
            "not authorized: {principal} may not {op} {topic} (an internal topic of the broker)"
        )
    })
}

/// The audit resource of a check: `broker` for broker-wide permissions.
fn resource_of(topic: &str) -> String {
    if topic == "*" {
        "broker".to_owned()
    } else {
        topic_resource(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::Acl;
    use strongbox_protocol::model::AclRule;

    fn rule(principal: &str, topic: &str, ops: Operations, effect: AclEffect) -> AclRule {
        AclRule {
            principal: principal.into(),
            topic: topic.into(),
            operations: ops,
            effect,
            expires_at: None,
        }
    }

    #[test]
    fn publish_or_subscribe_implies_describe_unless_denied() {
        let acl = Acl::new(
            Vec::<String>::new(),
            vec![
                rule("writer", "t.*", Operations::PUBLISH, AclEffect::Allow),
                rule("reader", "t.*", Operations::SUBSCRIBE, AclEffect::Allow),
                rule("hidden", "t.*", Operations::SUBSCRIBE, AclEffect::Allow),
                rule("hidden", "t.*", Operations::DESCRIBE, AclEffect::Deny),
            ],
        )
        .expect("rules compile");
        let implied = |p: &str, topic: &str| describe_implied(|op| acl.check(p, op, topic, 0));
        assert!(implied("writer", "t.x"));
        assert!(implied("reader", "t.x"));
        assert!(
            !implied("hidden", "t.x"),
            "an explicit deny of describe wins"
        );
        assert!(!implied("writer", "u.x"), "nothing on other topics");
        assert!(!implied("stranger", "t.x"));
    }

    #[test]
    fn internal_topics_are_read_only_for_everyone() {
        for op in [
            Operations::PUBLISH,
            Operations::CREATE,
            Operations::DELETE,
            Operations::ALTER,
            Operations::PUBLISH.union(Operations::SUBSCRIBE),
        ] {
            let denial = internal_topic_denial("admin", op, "_audit").expect("denied");
            assert!(
                denial.starts_with("not authorized: admin may not "),
                "{denial}"
            );
        }
        for op in [
            Operations::SUBSCRIBE,
            Operations::AUDIT,
            Operations::DESCRIBE,
        ] {
            assert_eq!(internal_topic_denial("admin", op, "_audit"), None);
        }
        assert_eq!(
            internal_topic_denial("admin", Operations::PUBLISH, "demo.x"),
            None
        );
        assert_eq!(resource_of("*"), "broker");
        assert_eq!(resource_of("demo.*"), "topic:demo.*");
    }
}
