//! Applying commands on a node that is not part of a raft group.
//!
//! A broker without `[cluster]` is a cluster of one. Its metadata writes go
//! through the same [`MetaCommand`]s and the same rules as a cluster's
//! state machine, applied directly to its store: one set of rules for both,
//! so a topic, an ACL or an access request behaves the same whether one node
//! or five agree on it.

use strongbox_storage::meta::{MetaError, MetaStore};

use crate::apply::apply_command;
use crate::command::{MetaCommand, MetaResponse};

/// Applies `command` to `meta` in one write transaction and answers as the
/// state machine would. A [`MetaResponse::Refused`] command changes nothing.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use strongbox_cluster::{MetaCommand, MetaResponse, apply_local};
/// use strongbox_storage::meta::MetaStore;
///
/// let meta = MetaStore::in_memory()?;
/// let answer = apply_local(&meta, &MetaCommand::DeleteGroup { group: "billing".into() })?;
/// assert!(matches!(answer, MetaResponse::GroupDeleted { offsets: 0 }));
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The store cannot be read or written.
pub fn apply_local(meta: &MetaStore, command: &MetaCommand) -> Result<MetaResponse, MetaError> {
    meta.write(|b| apply_command(b, command))
}
