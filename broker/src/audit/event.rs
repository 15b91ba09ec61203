//! What happened: the typed event handed to [`AuditLog::record`].
//!
//! ```
//! use strongbox_broker::audit::{AuditAction, AuditEvent};
//!
//! let event = AuditEvent::success(AuditAction::KeyRewrapProgress, "kek:broker/v2")
//!     .principal("spiffe://strongbox.dev/admin")
//!     .detail("done", 120)
//!     .detail("total", 400);
//! assert_eq!(event.action(), AuditAction::KeyRewrapProgress);
//! ```
//!
//! [`AuditLog::record`]: super::AuditLog::record

use std::collections::BTreeMap;

use serde_json::Value;

/// What an audit record is about. Its name is the record's `action` and
/// its key in the audit topic.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditAction {
    /// A client failed to authenticate (certificate, handshake, identity).
    AuthFailure,
    /// The ACL refused a request.
    AclDeny,
    /// A topic was created.
    TopicCreate,
    /// A topic was deleted (and its data crypto-shredded).
    TopicDelete,
    /// Retention deleted segments of a topic.
    TopicRetention,
    /// An ACL rule was granted.
    AclGrant,
    /// An ACL rule was revoked.
    AclRevoke,
    /// Time-limited ACL rules expired and were removed.
    AclExpire,
    /// A KEK was rotated: a new version is active.
    KeyRotate,
    /// A KEK version became decrypt-only.
    KeyRetire,
    /// A KEK version was destroyed.
    KeyDestroy,
    /// A KEK version was marked compromised.
    KeyCompromised,
    /// Data keys were unwrapped through the key provider (aggregated).
    KeyUnwrap,
    /// The rewrap job made progress (or finished).
    KeyRewrapProgress,
    /// A principal asked for access to a topic.
    AccessRequest,
    /// An access request was approved.
    AccessApprove,
    /// An access request was denied.
    AccessDeny,
    /// An approved access expired.
    AccessExpire,
    /// A topic's end-to-end recipient directory gained or replaced an entry.
    RecipientPut,
    /// An entry was removed from a topic's end-to-end recipient directory.
    RecipientRemove,
    /// The broker found its audit topic cut short or rewritten.
    AuditChainBroken,
    /// A producer id was refused: `InitProducer` without `publish` anywhere,
    /// another principal's id, or an epoch never issued.
    ProducerDeny,
    /// A partition opened read-only: its log is shorter than what it
    /// acknowledged, or misses segments.
    PartitionReadOnly,
    /// An operator let a read-only partition take writes again, accepting
    /// the loss.
    PartitionRecover,
    /// A storage fault (full disk, failed write or sync) fenced a partition.
    PartitionFence,
    /// A fenced partition resumed taking writes.
    PartitionResume,
    /// Recovery cut a torn tail and kept the bytes in a quarantine file.
    PartitionQuarantine,
    /// The broker signed a checkpoint of its state (or failed to).
    CheckpointSigned,
    /// An operator asked to add a node to the cluster.
    ClusterAddNode,
    /// An operator asked to remove a node from the cluster.
    ClusterRemoveNode,
    /// The peer listener, or a node dialing a peer, refused a certificate
    /// or a request.
    PeerDeny,
}

impl AuditAction {
    /// The dotted name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailure => "auth.failure",
            Self::AclDeny => "acl.deny",
            Self::TopicCreate => "topic.create",
            Self::TopicDelete => "topic.delete",
            Self::TopicRetention => "topic.retention",
            Self::AclGrant => "acl.grant",
            Self::AclRevoke => "acl.revoke",
            Self::AclExpire => "acl.expire",
            Self::KeyRotate => "key.rotate",
            Self::KeyRetire => "key.retire",
            Self::KeyDestroy => "key.destroy",
            Self::KeyCompromised => "key.compromised",
            Self::KeyUnwrap => "key.unwrap",
            Self::KeyRewrapProgress => "key.rewrap.progress",
            Self::AccessRequest => "access.request",
            Self::AccessApprove => "access.approve",
            Self::AccessDeny => "access.deny",
            Self::AccessExpire => "access.expire",
            Self::RecipientPut => "recipient.put",
            Self::RecipientRemove => "recipient.remove",
            Self::AuditChainBroken => "audit.chain.broken",
            Self::ProducerDeny => "producer.deny",
            Self::PartitionReadOnly => "partition.readonly",
            Self::PartitionRecover => "partition.recover",
            Self::PartitionFence => "partition.fence",
            Self::PartitionResume => "partition.resume",
            Self::PartitionQuarantine => "partition.quarantine",
            Self::CheckpointSigned => "checkpoint.signed",
            Self::ClusterAddNode => "cluster.add_node",
            Self::ClusterRemoveNode => "cluster.remove_node",
            Self::PeerDeny => "peer.deny",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused by policy (ACL).
    Denied,
    /// Failed (authentication, a provider error).
    Failure,
    /// Something an operator must look at now.
    Alert,
}

impl Outcome {
    /// The name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
            Self::Alert => "alert",
        }
    }
}

/// The principal written for what the broker does on its own (start-up
/// reads, maintenance, the rewrap job).
pub const BROKER_PRINCIPAL: &str = "broker";

/// One event for the audit trail. Build it with [`AuditEvent::new`] or one
/// of the outcome shortcuts, then add the principal and details.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub(crate) time_ms: i64,
    pub(crate) principal: Option<String>,
    pub(crate) action: AuditAction,
    pub(crate) resource: String,
    pub(crate) outcome: Outcome,
    pub(crate) details: BTreeMap<String, Value>,
}

impl AuditEvent {
    /// An event happening now, with no principal and no details.
    pub fn new(action: AuditAction, outcome: Outcome, resource: impl Into<String>) -> Self {
        Self {
            time_ms: strongbox_protocol::clock::now_ms(),
            principal: None,
            action,
            resource: resource.into(),
            outcome,
            details: BTreeMap::new(),
        }
    }

    /// A successful action.
    pub fn success(action: AuditAction, resource: impl Into<String>) -> Self {
        Self::new(action, Outcome::Success, resource)
    }

    /// A request refused by policy.
    pub fn denied(action: AuditAction, resource: impl Into<String>) -> Self {
        Self::new(action, Outcome::Denied, resource)
    }

    /// A failure.
    pub fn failure(action: AuditAction, resource: impl Into<String>) -> Self {
        Self::new(action, Outcome::Failure, resource)
    }

    /// Something an operator must look at.
    pub fn alert(action: AuditAction, resource: impl Into<String>) -> Self {
        Self::new(action, Outcome::Alert, resource)
    }

    /// Who caused it.
    #[must_use]
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// Adds (or replaces) a detail. Details are written sorted by name.
    #[must_use]
    pub fn detail(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.details.insert(name.into(), value.into());
        self
    }

    /// Sets when it happened, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn at(mut self, time_ms: i64) -> Self {
        self.time_ms = time_ms;
        self
    }

    /// The action.
    pub fn action(&self) -> AuditAction {
        self.action
    }

    /// The outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The principal, if set.
    pub fn principal_name(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// A detail.
    pub fn detail_value(&self, name: &str) -> Option<&Value> {
        self.details.get(name)
    }
}

/// `topic:<name>`.
pub fn topic_resource(name: &str) -> String {
    format!("topic:{name}")
}

/// `node:<id>`, a node of the cluster.
pub fn node_resource(id: u64) -> String {
    format!("node:{id}")
}

/// `kek:<scope>/v<version>`, the scope as people read it (`broker`,
/// `topic:<name>`).
pub fn kek_resource(scope: &str, version: u32) -> String {
    format!("kek:{scope}/v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dotted_lowercase_and_unique() {
        let all = [
            AuditAction::AuthFailure,
            AuditAction::AclDeny,
            AuditAction::TopicCreate,
            AuditAction::TopicDelete,
            AuditAction::TopicRetention,
            AuditAction::AclGrant,
            AuditAction::AclRevoke,
            AuditAction::AclExpire,
            AuditAction::KeyRotate,
            AuditAction::KeyRetire,
            AuditAction::KeyDestroy,
            AuditAction::KeyCompromised,
            AuditAction::KeyUnwrap,
            AuditAction::KeyRewrapProgress,
            AuditAction::AccessRequest,
            AuditAction::AccessApprove,
            AuditAction::AccessDeny,
            AuditAction::AccessExpire,
            AuditAction::RecipientPut,
            AuditAction::RecipientRemove,
            AuditAction::AuditChainBroken,
            AuditAction::PartitionReadOnly,
            AuditAction::PartitionRecover,
            AuditAction::PartitionFence,
            AuditAction::PartitionResume,
            AuditAction::PartitionQuarantine,
        ];
        let mut seen = std::collections::HashSet::new();
        for a in all {
            let name = a.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(name.contains('.'), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'.'),
                "{name}"
            );
        }
    }

    #[test]
    fn builder_sets_fields() {
        let e = AuditEvent::denied(AuditAction::AclDeny, topic_resource("demo.x"))
            .principal("p")
            .detail("operation", "publish")
            .detail("operation", "subscribe")
            .at(5);
        assert_eq!(e.resource(), "topic:demo.x");
        assert_eq!(e.principal_name(), Some("p"));
        assert_eq!(e.outcome(), Outcome::Denied);
        assert_eq!(e.detail_value("operation"), Some(&Value::from("subscribe")));
        assert_eq!(e.time_ms, 5);
        assert_eq!(kek_resource("broker", 2), "kek:broker/v2");
    }
}
