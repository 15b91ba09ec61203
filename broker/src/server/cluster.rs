//! Joining the cluster's metadata group: a broker with `[cluster]` binds
//! its peer listener, starts its node of the metadata group (openraft, in
//! strongbox-cluster), routes its metadata writes through it, and follows
//! what the group applies: topics created or deleted through another node
//! are opened or shredded here, ACL changes are published at once.
//!
//! The node certificate is the broker's own (`[tls] cert`): it carries the
//! node URI `spiffe://<trust domain>/strongbox/node/<id>` beside the names
//! clients check. The cluster CA is the client CA bundle (`[tls]
//! client_ca`).

use std::collections::BTreeMap;
use std::sync::Arc;

use strongbox_cluster::groups::Routes;
use strongbox_cluster::net::{PeerNetwork, RaftService};
use strongbox_cluster::partition_groups::{PartitionGroupConfig, PartitionGroups};
use strongbox_cluster::{
    Directory, MetaChange, MetaCommand, MetaRaft, MetaRaftConfig, MetaResponse, NodeInfo,
    ProducerOutcome, raft_dir,
};
use strongbox_peer::{Denial, Direction, NodeTls, PeerConfig, PeerEndpoint, PeerObserver};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::audit::{AuditAction, AuditEvent};
use crate::config::{BrokerConfig, ClusterConfig};
use crate::services::metadata::ClusterLink;
use crate::services::{BrokerState, StartError};
use crate::tls::{load_certs, load_key};

/// A running node of the metadata group, and its replicas of the
/// partition groups.
#[derive(Debug)]
pub struct ClusterNode {
    raft: MetaRaft,
    partitions: Arc<PartitionGroups>,
    endpoint: PeerEndpoint,
}

impl ClusterNode {
    /// Leaves the groups: stops the partition replicas and the metadata
    /// group's raft node, then closes the peer listener.
    pub async fn stop(self) {
        self.partitions.stop_all().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata group node");
        }
        self.endpoint.close().await;
    }
}

fn start_err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> StartError + '_ {
    move |e| StartError::Other(format!("cluster: {what}: {e}"))
}

/// Starts this node of the metadata group and attaches the broker's
/// metadata writes to it; returns the node and the tasks that follow it.
///
/// # Errors
///
/// The node certificate cannot be loaded or does not name a node, the
/// peer listener cannot bind, or the group's files cannot be opened.
pub async fn start(
    state: &Arc<BrokerState>,
    config: &BrokerConfig,
    cluster: &ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(ClusterNode, Vec<JoinHandle<()>>), StartError> {
    let chain = load_certs("node certificate", &config.tls.cert)
        .map_err(|e| start_err("node certificate")(&e))?;
    let key = load_key("node key", &config.tls.key).map_err(|e| start_err("node key")(&e))?;
    let roots = crate::tls::reload::load_client_ca(&config.tls.client_ca)
        .map_err(|e| start_err("cluster CA")(&e))?;
    let tls = NodeTls::from_own_certificate(chain, key, roots, config.tls.key_exchange)
        .map_err(|e| start_err("node certificate")(&e))?;
    if tls.identity().node_id() != cluster.node_id {
        return Err(StartError::Other(format!(
            "cluster: the certificate {} names node {}, but [cluster] node_id is {}",
            config.tls.cert.display(),
            tls.identity().node_id(),
            cluster.node_id
        )));
    }
    let bootstrap: BTreeMap<_, _> = cluster
        .initial_members
        .iter()
        .map(|m| {
            (
                m.id,
                NodeInfo {
                    peer_addr: m.peer.clone(),
                    client_addr: m.client.clone(),
                },
            )
        })
        .collect();
    let directory = Arc::new(Directory::new(bootstrap.clone()));
    let peer_config = PeerConfig {
        call_timeout: cluster.rpc_timeout.0,
        ..PeerConfig::default()
    };
    let endpoint = PeerEndpoint::bind(
        cluster.peer_listen,
        tls,
        peer_config,
        directory.clone(),
        Arc::new(AuditedPeerDenials {
            state: state.clone(),
        }),
    )
    .map_err(|e| start_err("peer listener")(&e))?;
    let network = PeerNetwork::new(endpoint.client(directory.clone()));
    let raft_config = MetaRaftConfig {
        heartbeat_interval: cluster.heartbeat_interval.0,
        election_timeout_min: cluster.election_timeout_min.0,
        election_timeout_max: cluster.election_timeout_max.0,
        ..MetaRaftConfig::new(cluster.node_id)
    };
    let raft = MetaRaft::start(
        &raft_config,
        &raft_dir(&config.broker.data_dir),
        state.meta.clone(),
        network.clone(),
    )
    .await
    .map_err(|e| start_err("metadata group")(&e))?;
    directory.attach(raft.clone());
    // Subscribed before the node takes messages: nothing applied from now
    // on is missed, and the follower's first pass catches up on the rest.
    let changes = raft.subscribe_changes();
    // Partition groups share the endpoint: their methods go to their
    // router. The node runs no replica until the partition service starts
    // one; a group call meanwhile is answered "no group" (handler_failed).
    let partitions = Arc::new(
        PartitionGroups::new(
            cluster.node_id,
            endpoint.client(directory.clone()),
            &PartitionGroupConfig {
                heartbeat_interval: cluster.heartbeat_interval.0,
                election_timeout_min: cluster.election_timeout_min.0,
                election_timeout_max: cluster.election_timeout_max.0,
            },
        )
        .map_err(|e| start_err("partition groups")(&e))?,
    );
    endpoint.serve(Arc::new(Routes {
        meta: Arc::new(RaftService::new(raft.clone())),
        groups: partitions.router(),
    }));

    // A new cluster forms on the lowest id of its initial members, once:
    // a node whose files hold a group already rejoins it.
    let first = bootstrap.keys().next().copied();
    if first == Some(cluster.node_id) && raft.members().is_empty() {
        match raft.initialize(bootstrap).await {
            Ok(()) => tracing::info!(node_id = cluster.node_id, "metadata group formed"),
            Err(e) => tracing::info!(error = %e, "metadata group not formed here (it exists)"),
        }
    }
    state.metadata.attach(ClusterLink {
        raft: raft.clone(),
        network,
    });
    let leader = tokio::spawn(log_leader_changes(raft.clone(), shutdown.clone()));
    let follow = tokio::spawn(follow_changes(state.clone(), changes, shutdown));
    tracing::info!(
        node_id = cluster.node_id,
        peer = %cluster.peer_listen,
        "peer listener bound; metadata writes go through the cluster"
    );
    Ok((
        ClusterNode {
            raft,
            partitions,
            endpoint,
        },
        vec![follow, leader],
    ))
}

/// Logs each change of the metadata leader this node sees, with the term:
/// when an election ended, and who won it, for operators (and for the
/// failover tests, which time elections from these lines).
async fn log_leader_changes(raft: MetaRaft, mut shutdown: watch::Receiver<bool>) {
    let mut seen = (None, 0);
    loop {
        let now = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            now = raft.leader_change(seen) => match now {
                Ok(now) => now,
                Err(_) => return,
            },
        };
        match now.0 {
            Some(leader) if seen.0 != Some(leader) => {
                tracing::info!(leader, term = now.1, "metadata leader elected");
            }
            None if seen.0.is_some() => {
                tracing::warn!(term = now.1, "metadata leader lost; an election follows");
            }
            _ => {}
        }
        seen = now;
    }
}

/// Follows what the group applies on this node.
async fn follow_changes(
    state: Arc<BrokerState>,
    mut changes: broadcast::Receiver<MetaChange>,
    mut shutdown: watch::Receiver<bool>,
) {
    react(&state, None).await;
    loop {
        let change = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(MetaChange::Applied(applied)) => {
                note_producer(&state, &applied.command, &applied.response);
                if affects_serving(&applied.command) {
                    react(&state, Some(&applied.command)).await;
                }
            }
            Ok(MetaChange::SnapshotInstalled { .. }) => react(&state, None).await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "metadata changes missed; catching up from the store"
                );
                react(&state, None).await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Whether `command` changes what this node serves (topics) or allows (the
/// ACL). Offsets, access requests still pending, recipients and producer
/// ids need nothing more than the store they were applied to: the hot
/// path (consumer offset commits) takes no lock and reloads nothing.
fn affects_serving(command: &MetaCommand) -> bool {
    matches!(
        command,
        MetaCommand::CreateTopic { .. }
            | MetaCommand::DeleteTopic { .. }
            | MetaCommand::PutAcl { .. }
            | MetaCommand::RemoveAcl { .. }
            | MetaCommand::RevokeAcl { .. }
            | MetaCommand::ExpireGrants { .. }
            | MetaCommand::ApproveAccessRequest { .. }
    )
}

/// A producer id issued or re-epoched through any node: this node's cache
/// of epochs follows, so a fenced instance is fenced here too.
fn note_producer(state: &BrokerState, command: &MetaCommand, response: &MetaResponse) {
    if let (
        MetaCommand::InitProducer { principal, .. },
        MetaResponse::Producer(ProducerOutcome::Issued { producer_id, epoch }),
    ) = (command, response)
    {
        state
            .partitions
            .producer_epochs()
            .note_issued(*producer_id, *epoch, principal);
    }
}

/// Brings the served topics and the live ACL in line with the store after
/// `command` (`None`: after a snapshot or missed changes, everything).
async fn react(state: &Arc<BrokerState>, command: Option<&MetaCommand>) {
    let topics = matches!(
        command,
        None | Some(MetaCommand::CreateTopic { .. } | MetaCommand::DeleteTopic { .. })
    );
    // Under the admin lock: a handler of this node that made the change
    // holds it until it has served the topic itself.
    let _guard = state.admin_lock.lock().await;
    if topics {
        sync_topics(state).await;
    }
    if let Err(e) = state.reload_acl() {
        tracing::error!(error = %e.message, "ACL reload after a metadata change failed");
    }
}

/// Opens the topics the store has and this node does not serve, and
/// closes (shredding their data) those it serves that the store lost.
async fn sync_topics(state: &Arc<BrokerState>) {
    let stored = match state.meta.read(|r| r.topics()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "reading topics after a metadata change");
            return;
        }
    };
    for entry in &stored {
        if state.partitions.topics().get(&entry.name).is_none() {
            let name = entry.name.clone();
            match crate::transport::admin::open_topic(state, entry.clone()).await {
                Ok(_) => tracing::info!(topic = %name, "topic created through another node"),
                Err(e) => tracing::error!(topic = %name, error = %e.message, "opening a topic"),
            }
        }
    }
    for topic in state.partitions.topics().all() {
        let known = stored
            .iter()
            .any(|e| e.name == topic.name() && e.topic_id == topic.entry.topic_id);
        if !known && !strongbox_storage::meta::is_node_local_topic(topic.name()) {
            let name = topic.name().to_owned();
            match crate::transport::admin::close_topic(state, &topic).await {
                Ok(_) => tracing::info!(topic = %name, "topic deleted through another node"),
                Err(e) => tracing::error!(topic = %name, error = %e.message, "deleting a topic"),
            }
        }
    }
}

/// Reports the peer links' refusals: logged, counted in
/// `strongbox_peer_denials_total{reason}` and recorded as `peer.deny`.
struct AuditedPeerDenials {
    state: Arc<BrokerState>,
}

impl PeerObserver for AuditedPeerDenials {
    fn denied(&self, denial: &Denial) {
        let reason = denial.reason.name();
        self.state
            .metrics
            .peer_denials
            .with_label_values(&[reason])
            .inc();
        let who = denial
            .identity
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        tracing::warn!(target: "strongbox::audit", remote = %denial.remote, identity = %who, reason, detail = %denial.detail, "peer link refused");
        self.state.audit.record(
            AuditEvent::denied(AuditAction::PeerDeny, format!("peer:{}", denial.remote))
                .principal(&who)
                .detail("reason", reason)
                .detail(
                    "direction",
                    match denial.direction {
                        Direction::Inbound => "inbound",
                        Direction::Outbound => "outbound",
                    },
                )
                .detail("error", denial.detail.clone()),
        );
    }
}
