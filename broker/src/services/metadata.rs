//! Metadata writes: every change the nodes of a cluster must agree on
//! (topics, ACL rules, offsets, access requests, recipients, producer ids)
//! is a [`MetaCommand`], applied by strongbox-cluster's rules.
//!
//! A broker without `[cluster]` is a cluster of one: [`Metadata::submit`]
//! applies the command to its own store, in one transaction, with the same
//! rules a cluster's state machine uses. Services never write those tables
//! themselves, so the rules live in one place. Node-local state (the key
//! registry, durable ends, the audit head, rewrap jobs) is still written
//! directly through [`strongbox_storage::meta::MetaStore::write`].

use strongbox_cluster::{MetaCommand, MetaResponse, NodeId, Refusal};
use strongbox_protocol::ErrorCode;
use strongbox_storage::meta::{MetaStore, is_node_local_topic};

use crate::error::BrokerError;
use crate::services::caller::blocking;

/// The node id of a broker without `[cluster]`.
pub const SINGLE_NODE_ID: NodeId = 1;

/// Where metadata commands go.
#[derive(Debug, Clone)]
pub struct Metadata {
    meta: MetaStore,
    node_id: NodeId,
}

impl Metadata {
    /// Commands applied to this node's own store (a cluster of one).
    pub fn local(meta: MetaStore) -> Self {
        Self {
            meta,
            node_id: SINGLE_NODE_ID,
        }
    }

    /// This node's id: where the partitions it creates live.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Applies `command` and returns the answer, or the refusal as an error
    /// with the wire code that names it.
    ///
    /// # Errors
    ///
    /// The command was refused ([`refusal_error`]), or the store failed.
    pub async fn submit(&self, command: MetaCommand) -> Result<MetaResponse, BrokerError> {
        match self.submit_raw(command).await? {
            MetaResponse::Refused(refusal) => Err(refusal_error(&refusal)),
            answer => Ok(answer),
        }
    }

    /// [`submit`](Self::submit) for callers on a blocking thread (the
    /// maintenance task).
    ///
    /// # Errors
    ///
    /// The command was refused, or the store failed.
    pub fn submit_blocking(&self, command: MetaCommand) -> Result<MetaResponse, BrokerError> {
        let what = command.to_string();
        match strongbox_cluster::apply_local(&self.meta, &command)
            .map_err(|e| BrokerError::internal(&format!("storing {what}"), e))?
        {
            MetaResponse::Refused(refusal) => Err(refusal_error(&refusal)),
            answer => Ok(answer),
        }
    }

    /// Like [`submit`](Self::submit), but hands a refusal back as an answer
    /// for callers that word it themselves.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn submit_raw(&self, command: MetaCommand) -> Result<MetaResponse, BrokerError> {
        let meta = self.meta.clone();
        let what = command.to_string();
        blocking(move || strongbox_cluster::apply_local(&meta, &command))
            .await?
            .map_err(|e| BrokerError::internal(&format!("storing {what}"), e))
    }
}

impl Metadata {
    /// Stores the offset `group` committed for a partition. Offsets of a
    /// node's own topics (`_audit`) stay on the node; the others are a
    /// [`MetaCommand::CommitOffsets`].
    ///
    /// # Errors
    ///
    /// The command was refused, or the store failed.
    pub async fn commit_offset(
        &self,
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
    ) -> Result<(), BrokerError> {
        if is_node_local_topic(&topic) {
            let meta = self.meta.clone();
            return blocking(move || {
                meta.write(|b| b.commit_offset(&group, &topic, partition, offset))
            })
            .await?
            .map_err(|e| BrokerError::internal("storing a committed offset", e));
        }
        self.submit(MetaCommand::CommitOffsets {
            group,
            topic,
            offsets: vec![(partition, offset)],
        })
        .await
        .map(drop)
    }
}

/// The wire error of a refused command.
pub fn refusal_error(refusal: &Refusal) -> BrokerError {
    let code = match refusal {
        Refusal::TopicExists(_) => ErrorCode::TopicExists,
        Refusal::UnknownTopic(_) => ErrorCode::UnknownTopic,
        Refusal::UnknownAccessRequest(_) => ErrorCode::NotFound,
        Refusal::AlreadyPending { .. }
        | Refusal::AlreadyDecided { .. }
        | Refusal::AclExists { .. } => ErrorCode::Conflict,
        Refusal::TooManyPending { .. } => ErrorCode::LimitExceeded,
        Refusal::NodeLocalTopic(_) | Refusal::Invalid(_) => ErrorCode::InvalidRequest,
    };
    BrokerError::new(code, refusal.to_string())
}
