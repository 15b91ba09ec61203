//! The internal topic `_audit`: created by the broker at start when
//! missing, stored like any topic (sealed under the broker KEK).
//!
//! One partition, so the chain has one order; `fsync` durability, so a
//! record the head anchors is on disk; no retention, so `audit verify` can
//! always start from record 1 (operators archive and rotate the trail by
//! policy, not by a timer). Clients never publish to it, delete it or
//! create `_` topics (see `services::authz`, which
//! checks [`read_operation`]); reading it needs `audit`.

use strongbox_protocol::model::Operations;

/// The audit trail's topic.
pub const AUDIT_TOPIC: &str = "_audit";

/// The operation reading `topic` needs: `audit` for `_audit`, `default`
/// (`subscribe`, `describe`) for every other topic.
pub fn read_operation(topic: &str, default: Operations) -> Operations {
    if topic == AUDIT_TOPIC {
        Operations::AUDIT
    } else {
        default
    }
}
