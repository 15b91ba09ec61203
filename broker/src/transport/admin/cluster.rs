//! Admin requests about the cluster: `Metadata`, `ClusterStatus`,
//! `ClusterAddNode`, `ClusterRemoveNode`.
//!
//! A broker without `[cluster]` answers as a cluster of one: itself the
//! only node, the leader of term 1 and the leader and only replica of every
//! partition; membership changes are refused with a message that says why.
//! A broker with `[cluster]` answers from its node of the metadata group:
//! the members, their roles and lag, and membership changes made by the
//! group's leader. Partition data is not replicated yet: every partition
//! is served by the node the client is connected to, which `Metadata`
//! reports as its leader.

use strongbox_cluster::{NodeInfo, ProposeError};
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_protocol::model::{
    ClusterMetadata, ClusterStatusInfo, NodeAddress, NodeRole, NodeStatus, Operations,
    PartitionPlacement, TopicPlacement,
};

use crate::audit::{self, AuditAction, AuditEvent, Outcome};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::services::authz::Authorizer;
use crate::services::caller::ConnCtx;

use super::BROKER_WIDE;

/// How long `ClusterAddNode` waits for the new node to catch up before it
/// becomes a voter.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The term a node reports while it runs alone: it leads the first term.
pub const SINGLE_NODE_TERM: u64 = 1;

/// Logs, at start, which node this is and what `[cluster]` does in this
/// version, so that no one takes a configured cluster for a replicated one.
pub fn log_cluster_role(config: &BrokerConfig) {
    match &config.cluster {
        None => tracing::info!(node_id = config.node_id(), "running as a cluster of one"),
        Some(c) => {
            let members: Vec<String> = c
                .initial_members
                .iter()
                .map(|m| format!("{}={}", m.id, m.client))
                .collect();
            tracing::warn!(
                node_id = c.node_id,
                members = %members.join(","),
                seeds = %c.seeds.join(","),
                "[cluster]: topics, ACL rules, offsets, access requests and recipients are \
                 replicated through the metadata group; partition data is not replicated yet \
                 (each node keeps its own log of every partition)"
            );
        }
    }
}

/// This node's id and the address clients reach it on.
fn this_node(ctx: &ConnCtx) -> NodeAddress {
    let config = &ctx.state.config;
    let client_addr = match &config.cluster {
        Some(c) => c.client_address(&config.listener),
        None => ctx
            .state
            .client_addr
            .get()
            .copied()
            .unwrap_or(config.listener.addr)
            .to_string(),
    };
    NodeAddress {
        id: config.node_id(),
        client_addr,
    }
}

/// The nodes and where each partition is served, for the topics asked
/// (those the caller may describe; others are left out, as if absent).
pub(super) async fn metadata(
    ctx: &ConnCtx,
    topics: Option<Vec<String>>,
) -> Result<AdminResponse, BrokerError> {
    let node = this_node(ctx);
    let mut authz = Authorizer::new(ctx);
    let all = ctx.state.partitions.topics().all();
    let placements = all
        .iter()
        .filter(|t| {
            topics
                .as_ref()
                .is_none_or(|wanted| wanted.iter().any(|w| w == t.name()))
        })
        .filter(|t| {
            authz.allows(
                audit::read_operation(t.name(), Operations::DESCRIBE),
                t.name(),
            )
        })
        .map(|t| TopicPlacement {
            name: t.name().to_owned(),
            partitions: (0..t.partition_count())
                .map(|partition| PartitionPlacement {
                    partition,
                    leader: Some(node.id),
                    replicas: vec![node.id],
                })
                .collect(),
        })
        .collect();
    let mut nodes = vec![node.clone()];
    if let Some(link) = ctx.state.metadata.cluster() {
        nodes.extend(
            link.raft
                .members()
                .into_iter()
                .filter(|(id, _)| *id != node.id)
                .map(|(id, info)| NodeAddress {
                    id,
                    client_addr: info.client_addr,
                }),
        );
    }
    Ok(AdminResponse::Metadata(ClusterMetadata {
        nodes,
        topics: placements,
    }))
}

/// The members of the metadata group (`describe` on `*`).
pub(super) async fn status(ctx: &ConnCtx) -> Result<AdminResponse, BrokerError> {
    Authorizer::new(ctx).check(Operations::DESCRIBE, BROKER_WIDE)?;
    let node = this_node(ctx);
    let config = &ctx.state.config;
    if let Some(link) = ctx.state.metadata.cluster() {
        let s = link.raft.status();
        let own_role = role(s.role);
        let nodes = s
            .members
            .iter()
            .map(|m| NodeStatus {
                id: m.id,
                peer_addr: m.info.peer_addr.clone(),
                client_addr: m.info.client_addr.clone(),
                role: if m.id == s.node_id {
                    own_role
                } else if Some(m.id) == s.leader {
                    NodeRole::Leader
                } else if !m.voter {
                    NodeRole::Learner
                } else if s.leader.is_some() {
                    NodeRole::Follower
                } else {
                    NodeRole::Unknown
                },
                term: s.term,
                last_contact_ms: m
                    .last_contact
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                lag: m.lag,
            })
            .collect();
        return Ok(AdminResponse::ClusterStatus(ClusterStatusInfo {
            node_id: s.node_id,
            leader: s.leader,
            term: s.term,
            nodes,
        }));
    }
    let peer_addr = config
        .cluster
        .as_ref()
        .map(|c| c.peer_address())
        .unwrap_or_default();
    Ok(AdminResponse::ClusterStatus(ClusterStatusInfo {
        node_id: node.id,
        leader: Some(node.id),
        term: SINGLE_NODE_TERM,
        nodes: vec![NodeStatus {
            id: node.id,
            peer_addr,
            client_addr: node.client_addr,
            role: NodeRole::Leader,
            term: SINGLE_NODE_TERM,
            last_contact_ms: Some(0),
            lag: Some(0),
        }],
    }))
}

/// The wire role of a group role.
fn role(r: strongbox_cluster::Role) -> NodeRole {
    match r {
        strongbox_cluster::Role::Leader => NodeRole::Leader,
        strongbox_cluster::Role::Follower => NodeRole::Follower,
        strongbox_cluster::Role::Candidate => NodeRole::Candidate,
        strongbox_cluster::Role::Learner => NodeRole::Learner,
        strongbox_cluster::Role::Shutdown => NodeRole::Unknown,
    }
}

/// A membership change made through the metadata group's leader.
async fn change_membership(
    ctx: &ConnCtx,
    verb: &str,
    id: u64,
    info: Option<NodeInfo>,
) -> Result<Option<bool>, BrokerError> {
    let Some(link) = ctx.state.metadata.cluster() else {
        return Err(membership_refusal(ctx, verb, id));
    };
    let done = match info {
        Some(info) => {
            match tokio::time::timeout(CATCH_UP_WAIT, link.raft.add_node(id, info)).await {
                Ok(done) => done.map(Some),
                Err(_) => {
                    return Err(BrokerError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "node {id} did not catch up within {} s: it stays a learner \
                             (check that it runs and that the leader reaches its peer address), \
                             then add it again or remove it",
                            CATCH_UP_WAIT.as_secs()
                        ),
                    ));
                }
            }
        }
        None => link.raft.remove_node(id).await.map(|()| None),
    };
    done.map_err(|e| match e {
        ProposeError::NotLeader { leader } => BrokerError::new(
            ErrorCode::NotLeader,
            match leader {
                Some((l, info)) => format!(
                    "membership changes are made by the metadata leader: node {l} at {}",
                    info.client_addr
                ),
                None => "no metadata leader is known right now; retry shortly".to_owned(),
            },
        ),
        other => BrokerError::new(
            ErrorCode::InvalidRequest,
            format!("cannot {verb} node {id}: {other}"),
        ),
    })
}

/// Adds a node (`admin` on `*`): as a learner that catches up, then a
/// voter; audited, refused or not.
pub(super) async fn add_node(
    ctx: &ConnCtx,
    id: u64,
    peer_addr: String,
    client_addr: String,
) -> Result<AdminResponse, BrokerError> {
    Authorizer::new(ctx).check(Operations::ADMIN, BROKER_WIDE)?;
    let info = NodeInfo {
        peer_addr: peer_addr.clone(),
        client_addr: client_addr.clone(),
    };
    let outcome = change_membership(ctx, "add", id, Some(info)).await;
    let done = match outcome {
        Ok(Some(false)) => format!(
            "node {id} added as a learner: it follows the metadata group without voting (the \
             group has {} voters already)",
            strongbox_cluster::MAX_VOTERS
        ),
        _ => format!("node {id} added as a voter"),
    };
    let outcome = outcome.map(drop);
    let event = AuditEvent::new(
        AuditAction::ClusterAddNode,
        if outcome.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        audit::node_resource(id),
    )
    .principal(&ctx.principal)
    .detail("peer_addr", peer_addr)
    .detail("client_addr", client_addr);
    membership_outcome(ctx, event, outcome, done)
}

/// Removes a node (`admin` on `*`); audited, refused or not.
pub(super) async fn remove_node(ctx: &ConnCtx, id: u64) -> Result<AdminResponse, BrokerError> {
    Authorizer::new(ctx).check(Operations::ADMIN, BROKER_WIDE)?;
    let outcome = change_membership(ctx, "remove", id, None).await.map(drop);
    let event = AuditEvent::new(
        AuditAction::ClusterRemoveNode,
        if outcome.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        audit::node_resource(id),
    )
    .principal(&ctx.principal);
    membership_outcome(ctx, event, outcome, format!("node {id} removed"))
}

/// Records a membership change's event and answers.
fn membership_outcome(
    ctx: &ConnCtx,
    event: AuditEvent,
    outcome: Result<(), BrokerError>,
    done: String,
) -> Result<AdminResponse, BrokerError> {
    match outcome {
        Ok(()) => {
            ctx.state.audit.record(event);
            tracing::info!(target: "strongbox::audit", principal = %ctx.principal, "{done}");
            Ok(AdminResponse::Ok { message: done })
        }
        Err(e) => {
            ctx.state
                .audit
                .record(event.detail("error", e.message.clone()));
            Err(e)
        }
    }
}

/// Why a membership change cannot be made by this broker.
fn membership_refusal(ctx: &ConnCtx, verb: &str, id: u64) -> BrokerError {
    let config = &ctx.state.config;
    let message = match &config.cluster {
        None => format!(
            "cannot {verb} node {id}: this broker runs as a single node (its config has no \
             [cluster] section); configure [cluster] on every node to run a cluster"
        ),
        Some(c) => format!(
            "cannot {verb} node {id}: node {} has not joined its metadata group yet",
            c.node_id
        ),
    };
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, node = id, "cluster membership change refused");
    BrokerError::new(ErrorCode::InvalidRequest, message)
}
