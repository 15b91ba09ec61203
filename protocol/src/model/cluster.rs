//! The cluster as clients see it: nodes, their roles, and which node leads
//! each partition.

/// A node of the cluster and the address clients reach it on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// The node id: non-zero, never reused.
    pub id: u64,
    /// Its client address, `host:port` (UDP).
    pub client_addr: String,
}

/// Where one partition is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlacement {
    /// Partition index.
    pub partition: u32,
    /// The node that takes its writes, when one is known.
    pub leader: Option<u64>,
    /// The nodes holding a copy, the leader included.
    pub replicas: Vec<u64>,
}

/// Where the partitions of one topic are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlacement {
    /// Topic name.
    pub name: String,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionPlacement>,
}

/// The answer to a `Metadata` request: the nodes and where partitions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Every node of the cluster.
    pub nodes: Vec<NodeAddress>,
    /// The topics asked for (those the caller may describe).
    pub topics: Vec<TopicPlacement>,
}

impl ClusterMetadata {
    /// The client address of node `id`.
    pub fn address_of(&self, id: u64) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.client_addr.as_str())
    }

    /// Where `topic` is served.
    pub fn topic(&self, name: &str) -> Option<&TopicPlacement> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// What a node does in the metadata group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NodeRole {
    /// Not known to the node answering (it has not heard from it).
    #[default]
    Unknown,
    /// Leads the metadata group: takes its writes.
    Leader,
    /// A voter following the leader.
    Follower,
    /// Standing for election.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
}

impl NodeRole {
    /// Every role, in wire order.
    pub const ALL: [Self; 5] = [
        Self::Unknown,
        Self::Leader,
        Self::Follower,
        Self::Candidate,
        Self::Learner,
    ];

    /// The role's name as the CLI shows it (`leader`, `follower`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Candidate => "candidate",
            Self::Learner => "learner",
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One node in a `ClusterStatusResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node id.
    pub id: u64,
    /// Its peer address (`host:port`, where the other nodes reach it).
    pub peer_addr: String,
    /// Its client address (`host:port`).
    pub client_addr: String,
    /// Its role, as the answering node knows it.
    pub role: NodeRole,
    /// The term the answering node last saw it in.
    pub term: u64,
    /// Milliseconds since the answering node last heard from it; absent
    /// when it never has (and for the answering node itself: 0).
    pub last_contact_ms: Option<u64>,
    /// Log entries it is behind the leader; absent when unknown.
    pub lag: Option<u64>,
}

/// The answer to `ClusterStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatusInfo {
    /// The node that answered.
    pub node_id: u64,
    /// The current leader of the metadata group, when one is known.
    pub leader: Option<u64>,
    /// The current term of the metadata group.
    pub term: u64,
    /// Every member, the answering node included.
    pub nodes: Vec<NodeStatus>,
}

/// Where to send a request that reached a node which is not the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader, when the refusing node knows one.
    pub leader: Option<NodeAddress>,
}
