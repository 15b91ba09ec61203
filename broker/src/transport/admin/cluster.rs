//! Admin requests about the cluster: `Metadata`, `ClusterStatus`,
//! `ClusterAddNode`, `ClusterRemoveNode`.
//!
//! Until the consensus layer is connected, every broker answers as a
//! cluster of one: itself the only node, the leader of term 1 and the
//! leader and only replica of every partition. A broker with `[cluster]`
//! reports its configured id and advertised address; membership changes
//! are refused with a message that says why.

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
                "[cluster] is checked but not yet acted on: this node serves alone (no peer \
                 listener, no replication) and reports itself as the only node"
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
    Ok(AdminResponse::Metadata(ClusterMetadata {
        nodes: vec![node],
        topics: placements,
    }))
}

/// The members of the metadata group (`describe` on `*`).
pub(super) async fn status(ctx: &ConnCtx) -> Result<AdminResponse, BrokerError> {
    Authorizer::new(ctx).check(Operations::DESCRIBE, BROKER_WIDE)?;
    let node = this_node(ctx);
    let config = &ctx.state.config;
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

/// Adds a node (`admin` on `*`); audited, refused or not.
pub(super) async fn add_node(
    ctx: &ConnCtx,
    id: u64,
    peer_addr: String,
    client_addr: String,
) -> Result<AdminResponse, BrokerError> {
    Authorizer::new(ctx).check(Operations::ADMIN, BROKER_WIDE)?;
    let refusal = membership_refusal(ctx, "add", id);
    ctx.state.audit.record(
        AuditEvent::new(
            AuditAction::ClusterAddNode,
            Outcome::Failure,
            audit::node_resource(id),
        )
        .principal(&ctx.principal)
        .detail("peer_addr", peer_addr)
        .detail("client_addr", client_addr)
        .detail("error", refusal.message.clone()),
    );
    Err(refusal)
}

/// Removes a node (`admin` on `*`); audited, refused or not.
pub(super) async fn remove_node(ctx: &ConnCtx, id: u64) -> Result<AdminResponse, BrokerError> {
    Authorizer::new(ctx).check(Operations::ADMIN, BROKER_WIDE)?;
    let refusal = membership_refusal(ctx, "remove", id);
    ctx.state.audit.record(
        AuditEvent::new(
            AuditAction::ClusterRemoveNode,
            Outcome::Failure,
            audit::node_resource(id),
        )
        .principal(&ctx.principal)
        .detail("error", refusal.message.clone()),
    );
    Err(refusal)
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
            "cannot {verb} node {id}: node {} has [cluster] configured but this version runs it \
             as a single node, without the consensus layer that changes membership",
            c.node_id
        ),
    };
    tracing::info!(target: "strongbox::audit", principal = %ctx.principal, node = id, "cluster membership change refused");
    BrokerError::new(ErrorCode::InvalidRequest, message)
}
