//! Metadata writes: every change the nodes of a cluster must agree on
//! (topics, ACL rules, offsets, access requests, recipients, producer ids)
//! is a [`MetaCommand`], applied by strongbox-cluster's rules.
//!
//! A broker without `[cluster]` is a cluster of one: [`Metadata::submit`]
//! applies the command to its own store, in one transaction, with the same
//! rules a cluster's state machine uses. With `[cluster]`, once the node has
//! joined its metadata group ([`Metadata::attach`]), a command is proposed
//! to the group: directly on the leader, forwarded to it from a follower;
//! every node applies it to its own store. Services never write those tables
//! themselves, so the rules live in one place. Node-local state (the key
//! registry, durable ends, the audit head, rewrap jobs) is still written
//! directly through [`strongbox_storage::meta::MetaStore::write`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use strongbox_cluster::net::{Forwarded, PeerNetwork};
use strongbox_cluster::{MetaCommand, MetaRaft, MetaResponse, NodeId, ProposeError, Refusal};
use strongbox_peer::PeerError;
use strongbox_protocol::ErrorCode;
use strongbox_storage::meta::{MetaStore, is_node_local_topic};

use crate::error::BrokerError;
use crate::services::caller::blocking;

/// The node id of a broker without `[cluster]`.
pub const SINGLE_NODE_ID: NodeId = 1;

/// How long a proposal waits for a leader (an election, a follower that
/// has not learned the leader's address yet) before it is refused
/// `no_leader`.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A node's way into its metadata group.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    /// The node's handle on the group.
    pub raft: MetaRaft,
    /// Its network, for forwarding proposals to the leader.
    pub network: PeerNetwork,
}

/// Where metadata commands go.
#[derive(Debug, Clone)]
pub struct Metadata {
    meta: MetaStore,
    node_id: NodeId,
    cluster: Arc<OnceLock<ClusterLink>>,
}

impl Metadata {
    /// Commands applied to this node's own store (a cluster of one).
    pub fn local(meta: MetaStore) -> Self {
        Self::new(meta, SINGLE_NODE_ID)
    }

    /// Commands applied to this node's own store until [`attach`](Self::attach).
    pub fn new(meta: MetaStore, node_id: NodeId) -> Self {
        Self {
            meta,
            node_id,
            cluster: Arc::new(OnceLock::new()),
        }
    }

    /// From now on, commands go to the metadata group. A second call is
    /// ignored.
    pub fn attach(&self, link: ClusterLink) {
        let _ = self.cluster.set(link);
    }

    /// The metadata group, once attached.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.get()
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
    /// maintenance pass, producer-id requests run through `blocking`). In
    /// a cluster it waits for the proposal on the runtime, which tokio
    /// allows on its blocking threads only: never call it from async code.
    ///
    /// # Errors
    ///
    /// The command was refused, or the store failed.
    pub fn submit_blocking(&self, command: MetaCommand) -> Result<MetaResponse, BrokerError> {
        let what = command.to_string();
        let answer = if self.cluster.get().is_some() {
            tokio::runtime::Handle::current().block_on(self.submit_raw(command))?
        } else {
            strongbox_cluster::apply_local(&self.meta, &command)
                .map_err(|e| BrokerError::internal(&format!("storing {what}"), e))?
        };
        match answer {
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
        if let Some(link) = self.cluster.get() {
            return link.propose(command).await;
        }
        let meta = self.meta.clone();
        let what = command.to_string();
        blocking(move || strongbox_cluster::apply_local(&meta, &command))
            .await?
            .map_err(|e| BrokerError::internal(&format!("storing {what}"), e))
    }
}

impl ClusterLink {
    /// Proposes `command` to the group through the leader, waiting up to
    /// [`LEADER_WAIT`] for one.
    ///
    /// # Errors
    ///
    /// `no_leader` when none answered in time; `internal` when the
    /// proposal failed otherwise (its outcome may be unknown).
    pub async fn propose(&self, command: MetaCommand) -> Result<MetaResponse, BrokerError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut last = String::from("no leader is known");
        // The leader a forward went to without an answer, if one did.
        let mut unanswered = None;
        loop {
            match self.raft.propose(command.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(ProposeError::NotLeader {
                    leader: Some((leader, _)),
                }) => match self.network.forward(leader, &command).await {
                    Ok(Forwarded::Applied(answer)) => {
                        return match (unanswered, answer) {
                            (Some(first), MetaResponse::Refused(refusal)) => {
                                self.repeat_refused(&command, &refusal, first)
                            }
                            (_, answer) => Ok(answer),
                        };
                    }
                    Ok(Forwarded::NotLeader { .. }) => {
                        last = format!("node {leader} is no longer the leader");
                    }
                    Ok(Forwarded::OutcomeUnknown(message)) => {
                        return Err(outcome_unknown(&command, &message));
                    }
                    Ok(Forwarded::Failed(message)) => {
                        return Err(BrokerError::internal(
                            &format!("the leader (node {leader}) proposing {command}"),
                            message,
                        ));
                    }
                    // The leader may have taken the command: it is sent again
                    // (a cut link is the usual cause, and the command did not
                    // get through), but a refusal of the repeat may be the
                    // first copy's doing, and the answer must say so.
                    Err(e @ (PeerError::Timeout { .. } | PeerError::ConnectionLost { .. })) => {
                        last = format!("the leader, node {leader}, did not answer: {e}");
                        unanswered = Some(leader);
                    }
                    Err(e) => last = format!("cannot reach the leader, node {leader}: {e}"),
                },
                Err(ProposeError::NotLeader { leader: None }) => {}
                Err(e @ ProposeError::OutcomeUnknown { .. }) => {
                    return Err(outcome_unknown(&command, &e.to_string()));
                }
                Err(e @ ProposeError::NoQuorum(_)) => last = e.to_string(),
                Err(e) => return Err(BrokerError::internal(&format!("proposing {command}"), e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::new(
                    ErrorCode::NoLeader,
                    format!(
                        "the cluster's metadata has no leader that answers ({last}); retry \
                         once a majority of the nodes is up"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl ClusterLink {
    /// The answer when a command sent again, after its first forward got
    /// no answer, is refused: the first copy may have been applied. A topic
    /// created by the first copy (same name and id) is that command's
    /// success; any other refusal says that it may be the first copy's doing.
    fn repeat_refused(
        &self,
        command: &MetaCommand,
        refusal: &Refusal,
        first: NodeId,
    ) -> Result<MetaResponse, BrokerError> {
        if let (MetaCommand::CreateTopic { topic, .. }, Refusal::TopicExists(_)) =
            (command, refusal)
        {
            let stored = self.raft.meta().read(|r| r.topic(&topic.name));
            if let Ok(Some(entry)) = stored
                && entry.topic_id == topic.topic_id
            {
                return Ok(MetaResponse::Done);
            }
        }
        let plain = refusal_error(refusal);
        Err(BrokerError::new(
            plain.code,
            format!(
                "{}; the first attempt, forwarded to node {first}, got no answer and may have \
                 made this change: check before sending it again",
                plain.message
            ),
        ))
    }
}

/// The answer to a write whose fate is unknown: `timeout`, with what to do.
fn outcome_unknown(command: &MetaCommand, why: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::Timeout,
        format!(
            "{command}: {why}; it may or may not have been applied: check (describe or list) \
             before sending it again"
        ),
    )
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
