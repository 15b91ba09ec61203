//! What the transport asks of its caller: who is a member, where nodes
//! are, and who hears about refusals.

use std::fmt;
use std::net::SocketAddr;

use crate::identity::{NodeId, NodeIdentity};

/// The cluster's current members, as the caller knows them. Asked at every
/// handshake and again for every request, so a node removed while its
/// connection is open is refused at its next request. Learners and nodes
/// being added count as members: whoever must be able to call this node.
/// Called on the handshake and request paths: must be cheap and must not
/// block.
pub trait Membership: Send + Sync {
    /// True when `id` is a current member.
    fn is_member(&self, id: NodeId) -> bool;
}

impl<F> Membership for F
where
    F: Fn(NodeId) -> bool + Send + Sync,
{
    fn is_member(&self, id: NodeId) -> bool {
        self(id)
    }
}

/// Where each node's peer listener is. Asked whenever a connection to a
/// node has to be (re)established, on a blocking thread: an implementation
/// may resolve host names.
pub trait AddressBook: Send + Sync {
    /// The peer address of node `id`, `None` when it is unknown.
    fn address_of(&self, id: NodeId) -> Option<SocketAddr>;
}

impl<F> AddressBook for F
where
    F: Fn(NodeId) -> Option<SocketAddr> + Send + Sync,
{
    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self(id)
    }
}

/// Why the transport refused a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// A valid certificate that names no node: a client's certificate on
    /// the peer port.
    ClientCertificate,
    /// A certificate whose node URI is malformed, ambiguous or of another
    /// trust domain.
    BadIdentity,
    /// A certificate that does not chain to the cluster CA.
    ForeignCa,
    /// An expired certificate.
    Expired,
    /// A certificate not valid yet.
    NotYetValid,
    /// A certificate refused for another reason (bad signature, wrong key
    /// usage, a malformed chain).
    BadCertificate,
    /// The handshake failed before any certificate was checked (no
    /// certificate presented, no common ALPN or key exchange group).
    Handshake,
    /// A node that is not (or no longer) a member.
    NotAMember,
    /// A request whose claimed sender id is not its certificate's node id.
    IdentityMismatch,
    /// Dialing: the remote's certificate names another node than the one
    /// dialed.
    WrongNode,
}

impl DenyReason {
    /// Every reason, for metric series created at zero.
    pub const ALL: [Self; 10] = [
        Self::ClientCertificate,
        Self::BadIdentity,
        Self::ForeignCa,
        Self::Expired,
        Self::NotYetValid,
        Self::BadCertificate,
        Self::Handshake,
        Self::NotAMember,
        Self::IdentityMismatch,
        Self::WrongNode,
    ];

    /// A short lowercase name, for metric labels and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientCertificate => "client_certificate",
            Self::BadIdentity => "bad_identity",
            Self::ForeignCa => "foreign_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadCertificate => "bad_certificate",
            Self::Handshake => "handshake",
            Self::NotAMember => "not_a_member",
            Self::IdentityMismatch => "identity_mismatch",
            Self::WrongNode => "wrong_node",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which way the refused connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A remote connected to this node's peer listener.
    Inbound,
    /// This node dialed the remote.
    Outbound,
}

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The remote's address.
    pub remote: SocketAddr,
    /// The node identity its certificate names, when it names a valid one.
    /// Verified only when the chain was (every reason but the certificate
    /// ones).
    pub identity: Option<NodeIdentity>,
    /// Why.
    pub reason: DenyReason,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Details for the operator (the TLS error, the claimed id, ...).
    pub detail: String,
}

/// Hears every refusal, to audit and count it. Called inside the TLS
/// handshake and the request path: must be cheap and must not block.
pub trait PeerObserver: Send + Sync {
    /// A peer was refused.
    fn denied(&self, denial: &Denial);
}

/// An observer that only logs (at `warn`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogObserver;

impl PeerObserver for LogObserver {
    fn denied(&self, d: &Denial) {
        tracing::warn!(
            target: "strongbox::audit",
            remote = %d.remote,
            identity = d.identity.as_ref().map(ToString::to_string),
            reason = d.reason.name(),
            direction = ?d.direction,
            detail = %d.detail,
            "peer refused"
        );
    }
}
