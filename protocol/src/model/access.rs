//! Access requests: a principal asks for operations on a topic, and a
//! principal holding `grant` on it decides.

use bytes::Bytes;

use super::Operations;

/// Where an access request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessState {
    /// Waiting for a decision.
    Pending,
    /// Approved; the grant is in force until it expires.
    Approved,
    /// Denied.
    Denied,
    /// Approved once; the grant has expired and was removed.
    Expired,
}

impl AccessState {
    /// The state's name as shown by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }
}

/// A principal's request for operations on a topic, and its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequestInfo {
    /// Broker-assigned id.
    pub id: u64,
    /// Who asked.
    pub requester: String,
    /// The topic asked for.
    pub topic: String,
    /// The operations asked for.
    pub operations: Operations,
    /// Why, in the requester's words.
    pub reason: String,
    /// The requester's public key for end-to-end encryption, if given.
    pub public_key: Option<Bytes>,
    /// Where it stands.
    pub state: AccessState,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// The decider's reason (required for a denial).
    pub decision_reason: Option<String>,
    /// When it was decided.
    pub decided_at: Option<i64>,
    /// When an approved grant expires.
    pub expires_at: Option<i64>,
}
