//! Admin requests: one stream per request, one answer per stream.

use std::time::Duration;

use bytes::Bytes;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::admin::{AdminRequest, AdminResponse};
use strongbox_protocol::frames::control::ErrorFrame;
use strongbox_protocol::model::{
    AccessRequestInfo, AclRule, ClusterMetadata, ClusterStatusInfo, KeyVersionInfo, Operations,
    RecipientEntry, RewrapProgress, TopicConfig, TopicInfo,
};
use strongbox_protocol::session::admin::AdminCall;

use crate::connection::{Client, Session};
use crate::error::ClientError;
use crate::wire::{FrameReader, write_frame};

/// The broker's answer to [`Admin::whoami`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The principal the broker mapped this client's certificate to.
    pub principal: String,
    /// The broker's id.
    pub broker_id: String,
    /// True when the principal is a configured superuser.
    pub superuser: bool,
}

/// An idempotent producer identity from [`Admin::init_producer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// The producer id.
    pub producer_id: u64,
    /// Its current epoch; a newer one fences older instances.
    pub epoch: u16,
}

/// Key versions and rewrap progress from [`Admin::key_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Every key version in the requested scopes.
    pub versions: Vec<KeyVersionInfo>,
    /// The background rewrap job.
    pub rewrap: RewrapProgress,
}

/// The result of a key lifecycle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The version acted on, in its new state.
    pub version: KeyVersionInfo,
    /// Segments affected.
    pub segments: u64,
    /// What was done, for people.
    pub message: String,
}

/// The head of the audit hash chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number of the newest audit record.
    pub sequence: u64,
    /// Its SHA-256 chain hash.
    pub hash: [u8; 32],
}

/// Typed admin requests.
///
/// Each call opens one stream, sends one request and reads one answer.
/// Read-only requests are retried once on a new connection when the
/// connection drops mid-call; requests that change state are not, since
/// the broker may already have applied them.
///
/// ```no_run
/// use strongbox_client::{Client, ClientConfig};
/// use strongbox_client::protocol::model::{Durability, TopicConfig};
///
/// # async fn run() -> Result<(), strongbox_client::ClientError> {
/// let client = Client::connect(ClientConfig::from_profile("strongbox-dev/profiles/admin.toml")?).await?;
/// let admin = client.admin();
/// println!("I am {}", admin.whoami().await?.principal);
/// let topic = admin
///     .create_topic(
///         "demo.orders",
///         TopicConfig {
///             partitions: 3,
///             durability: Durability::Fsync,
///             retention_ms: Some(7 * 24 * 3600 * 1000),
///             retention_bytes: None,
///             segment_bytes: None,
///             segment_ms: None,
///             dedicated_kek: false,
///         },
///     )
///     .await?;
/// println!("created {} with {} partitions", topic.name, topic.config.partitions);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

macro_rules! expect_response {
    ($response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err(unexpected(&other)),
        }
    };
}

fn unexpected(response: &AdminResponse) -> ClientError {
    ClientError::Protocol(format!(
        "the broker answered with an unexpected {}",
        response.frame_type().name()
    ))
}

impl Admin {
    /// Admin requests over `client`'s connection.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Sends any admin request and returns the raw answer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Broker`] when the broker refuses the request (for
    /// example `NotAuthorized`), connection errors, or
    /// [`ClientError::Timeout`] after
    /// [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout).
    ///
    /// A `not_leader` refusal that names the leader is followed: the client
    /// moves its connection to the leader's client address and sends the
    /// request again, at most [`LEADER_HOPS`] times (a refused request was
    /// not applied, so sending it again is safe). Without a hint, or after
    /// that many hops, the `not_leader` error is returned (retriable).
    pub async fn request(&self, request: AdminRequest) -> Result<AdminResponse, ClientError> {
        let read_only = is_read_only(&request);
        let mut session = self.client.session().await?;
        let mut hops = 0;
        loop {
            let answer = match self.call_on(&session, request.clone()).await {
                Err(Refusal::Other(e)) if read_only && e.is_retriable() && !session.is_alive() => {
                    session = self.client.reconnect(session.generation).await?;
                    self.call_on(&session, request.clone()).await
                }
                other => other,
            };
            match answer {
                Ok(response) => return Ok(response),
                Err(Refusal::Other(e)) => return Err(e),
                Err(Refusal::NotLeader(error)) => {
                    let leader = error.leader_hint.as_ref().and_then(|h| h.leader.as_ref());
                    let Some(leader) = leader.filter(|_| hops < LEADER_HOPS) else {
                        return Err(ClientError::from_error_frame(&error));
                    };
                    hops += 1;
                    tracing::info!(
                        leader = leader.id,
                        addr = %leader.client_addr,
                        request = request.frame_type().name(),
                        "not the leader; following the hint"
                    );
                    session = self.client.connect_to(&leader.client_addr).await?;
                }
            }
        }
    }

    async fn call_on(
        &self,
        session: &Session,
        request: AdminRequest,
    ) -> Result<AdminResponse, Refusal> {
        let timeout = self.client.config().request_timeout;
        let name = request.frame_type().name();
        let call = async {
            let (mut send, recv) = session.open_bi().await?;
            let (mut call, frame) = AdminCall::new(request);
            write_frame(&mut send, &frame, session.send_max_frame())
                .await
                .map_err(|e| session.close_error().unwrap_or(e))?;
            let _ = send.finish();
            let mut reader = FrameReader::new(recv, session.recv_max_frame);
            let frame = reader
                .next()
                .await
                .map_err(|e| session.close_error().unwrap_or(e))?
                .ok_or_else(|| {
                    session.close_error().unwrap_or_else(|| {
                        ClientError::Protocol(format!(
                            "the broker finished the admin stream without answering {name}"
                        ))
                    })
                })?;
            match call.handle_frame(frame) {
                Ok(response) => Ok(response),
                Err(Ok(error)) if error.error_code() == Some(ErrorCode::NotLeader) => {
                    Err(Refusal::NotLeader(error))
                }
                Err(Ok(error)) => Err(ClientError::from_error_frame(&error).into()),
                Err(Err(violation)) => Err(ClientError::from_violation(violation).into()),
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(
                    ClientError::Timeout(format!("no answer to {name} within {timeout:.0?}"))
                        .into(),
                )
            })
    }

    /// The cluster's nodes and, for `topics` (every topic this client may
    /// describe when `None`), each partition's leader and replicas.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn metadata(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<ClusterMetadata, ClientError> {
        expect_response!(self.request(AdminRequest::Metadata { topics }).await?,
            AdminResponse::Metadata(m) => m)
    }

    /// The members of the cluster's metadata group: address, role, term,
    /// last contact and lag of each.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn cluster_status(&self) -> Result<ClusterStatusInfo, ClientError> {
        expect_response!(self.request(AdminRequest::ClusterStatus).await?,
            AdminResponse::ClusterStatus(c) => c)
    }

    /// Adds node `id` with its peer and client addresses (`host:port`).
    ///
    /// # Errors
    ///
    /// As [`Admin::request`]; `invalid_request` from a broker that runs as
    /// a single node.
    pub async fn cluster_add_node(
        &self,
        id: u64,
        peer_addr: impl Into<String>,
        client_addr: impl Into<String>,
    ) -> Result<String, ClientError> {
        let request = AdminRequest::ClusterAddNode {
            id,
            peer_addr: peer_addr.into(),
            client_addr: client_addr.into(),
        };
        expect_response!(self.request(request).await?, AdminResponse::Ok { message } => message)
    }

    /// Removes node `id` from the cluster.
    ///
    /// # Errors
    ///
    /// As [`Admin::cluster_add_node`].
    pub async fn cluster_remove_node(&self, id: u64) -> Result<String, ClientError> {
        expect_response!(self.request(AdminRequest::ClusterRemoveNode { id }).await?,
            AdminResponse::Ok { message } => message)
    }

    /// The principal the broker sees for this client.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        expect_response!(self.request(AdminRequest::WhoAmI).await?,
            AdminResponse::WhoAmI { principal, broker_id, superuser } => WhoAmI { principal, broker_id, superuser })
    }

    /// Creates a topic.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`]; `TopicExists`, `InvalidTopicName` and
    /// `InvalidConfig` from the broker.
    pub async fn create_topic(
        &self,
        name: impl Into<String>,
        config: TopicConfig,
    ) -> Result<TopicInfo, ClientError> {
        let request = AdminRequest::CreateTopic {
            name: name.into(),
            config,
        };
        expect_response!(self.request(request).await?, AdminResponse::Topic(t) => t)
    }

    /// A topic's configuration and partitions.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`]; `UnknownTopic` from the broker.
    pub async fn describe_topic(&self, name: impl Into<String>) -> Result<TopicInfo, ClientError> {
        let request = AdminRequest::DescribeTopic { name: name.into() };
        expect_response!(self.request(request).await?, AdminResponse::Topic(t) => t)
    }

    /// Lets a read-only partition take writes again, accepting the loss of
    /// the records it no longer has; writing continues after the highest
    /// offset it ever acknowledged. Needs `admin` on the topic. Returns the
    /// topic as it is now.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`]; `Conflict` when the partition is not
    /// read-only, `InvalidRequest` without `accept_loss`.
    pub async fn recover_partition(
        &self,
        topic: impl Into<String>,
        partition: u32,
        accept_loss: bool,
    ) -> Result<TopicInfo, ClientError> {
        let request = AdminRequest::TopicRecover {
            topic: topic.into(),
            partition,
            accept_loss,
        };
        expect_response!(self.request(request).await?, AdminResponse::Topic(t) => t)
    }

    /// Topics this principal may describe, optionally under a name prefix.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn list_topics(&self, prefix: Option<&str>) -> Result<Vec<TopicInfo>, ClientError> {
        let request = AdminRequest::ListTopics {
            prefix: prefix.map(str::to_owned),
        };
        expect_response!(self.request(request).await?, AdminResponse::Topics(t) => t)
    }

    /// Deletes a topic and crypto-shreds its data; returns the broker's
    /// message.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn delete_topic(&self, name: impl Into<String>) -> Result<String, ClientError> {
        let request = AdminRequest::DeleteTopic { name: name.into() };
        expect_response!(self.request(request).await?, AdminResponse::Ok { message } => message)
    }

    /// Adds an ACL rule; returns the rules now in force for its principal
    /// pattern.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn acl_grant(&self, rule: AclRule) -> Result<Vec<AclRule>, ClientError> {
        expect_response!(self.request(AdminRequest::AclGrant { rule }).await?, AdminResponse::Acls(r) => r)
    }

    /// Removes the rule's operations from the matching rule; returns the
    /// rules now in force for its principal pattern.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn acl_revoke(&self, rule: AclRule) -> Result<Vec<AclRule>, ClientError> {
        expect_response!(self.request(AdminRequest::AclRevoke { rule }).await?, AdminResponse::Acls(r) => r)
    }

    /// ACL rules, optionally only those with this principal or topic
    /// pattern.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn acl_list(
        &self,
        principal: Option<&str>,
        topic: Option<&str>,
    ) -> Result<Vec<AclRule>, ClientError> {
        let request = AdminRequest::AclList {
            principal: principal.map(str::to_owned),
            topic: topic.map(str::to_owned),
        };
        expect_response!(self.request(request).await?, AdminResponse::Acls(r) => r)
    }

    /// Gets an idempotent producer id, or a new epoch for `producer_id`
    /// (fencing older instances that use it).
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn init_producer(
        &self,
        producer_id: Option<u64>,
    ) -> Result<ProducerIdentity, ClientError> {
        expect_response!(self.request(AdminRequest::InitProducer { producer_id }).await?,
            AdminResponse::Producer { producer_id, epoch } => ProducerIdentity { producer_id, epoch })
    }

    /// Key versions and rewrap progress, for one topic's dedicated key or
    /// every scope.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn key_status(&self, topic: Option<&str>) -> Result<KeyStatus, ClientError> {
        let request = AdminRequest::KeyStatus {
            topic: topic.map(str::to_owned),
        };
        expect_response!(self.request(request).await?,
            AdminResponse::KeyStatus { versions, rewrap } => KeyStatus { versions, rewrap })
    }

    async fn key_change(&self, request: AdminRequest) -> Result<KeyChange, ClientError> {
        expect_response!(self.request(request).await?,
            AdminResponse::KeyChanged { version, segments, message } => KeyChange { version, segments, message })
    }

    /// Creates a new key version and makes it active (the broker key when
    /// `topic` is `None`).
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn key_rotate(&self, topic: Option<&str>) -> Result<KeyChange, ClientError> {
        self.key_change(AdminRequest::KeyRotate {
            topic: topic.map(str::to_owned),
        })
        .await
    }

    /// Starts re-wrapping data keys under the active version.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn key_rewrap(
        &self,
        topic: Option<&str>,
        from_version: Option<u32>,
    ) -> Result<KeyChange, ClientError> {
        self.key_change(AdminRequest::KeyRewrap {
            topic: topic.map(str::to_owned),
            from_version,
        })
        .await
    }

    /// Makes a key version decrypt-only.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn key_retire(
        &self,
        topic: Option<&str>,
        version: u32,
    ) -> Result<KeyChange, ClientError> {
        self.key_change(AdminRequest::KeyRetire {
            topic: topic.map(str::to_owned),
            version,
        })
        .await
    }

    /// Destroys a key version in the provider; `force` even though data
    /// keys still need it (that data becomes unreadable).
    ///
    /// # Errors
    ///
    /// As [`Admin::request`]; `KeyInUse` when not forced and still needed.
    pub async fn key_destroy(
        &self,
        topic: Option<&str>,
        version: u32,
        force: bool,
    ) -> Result<KeyChange, ClientError> {
        self.key_change(AdminRequest::KeyDestroy {
            topic: topic.map(str::to_owned),
            version,
            force,
        })
        .await
    }

    /// Marks a key version compromised.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn key_compromised(
        &self,
        topic: Option<&str>,
        version: u32,
    ) -> Result<KeyChange, ClientError> {
        self.key_change(AdminRequest::KeyCompromised {
            topic: topic.map(str::to_owned),
            version,
        })
        .await
    }

    /// The head of the audit hash chain.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn audit_head(&self) -> Result<AuditHead, ClientError> {
        expect_response!(self.request(AdminRequest::AuditHead).await?,
            AdminResponse::AuditHead { sequence, hash } => AuditHead { sequence, hash })
    }

    /// Asks for operations on a topic.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn access_request(
        &self,
        topic: impl Into<String>,
        operations: Operations,
        reason: impl Into<String>,
        public_key: Option<Bytes>,
    ) -> Result<AccessRequestInfo, ClientError> {
        let request = AdminRequest::AccessRequest {
            topic: topic.into(),
            operations,
            reason: reason.into(),
            public_key,
        };
        expect_response!(self.request(request).await?, AdminResponse::Access(a) => a)
    }

    /// Access requests this principal may see.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn access_list(
        &self,
        pending_only: bool,
    ) -> Result<Vec<AccessRequestInfo>, ClientError> {
        expect_response!(self.request(AdminRequest::AccessList { pending_only }).await?,
            AdminResponse::AccessList(list) => list)
    }

    /// Approves an access request, for `ttl` or without limit.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn access_approve(
        &self,
        id: u64,
        ttl: Option<Duration>,
        recipient_entry: Option<Bytes>,
    ) -> Result<AccessRequestInfo, ClientError> {
        let request = AdminRequest::AccessApprove {
            id,
            ttl_ms: ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            recipient_entry,
        };
        expect_response!(self.request(request).await?, AdminResponse::Access(a) => a)
    }

    /// Denies an access request.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn access_deny(
        &self,
        id: u64,
        reason: impl Into<String>,
    ) -> Result<AccessRequestInfo, ClientError> {
        let request = AdminRequest::AccessDeny {
            id,
            reason: reason.into(),
        };
        expect_response!(self.request(request).await?, AdminResponse::Access(a) => a)
    }

    /// A topic's end-to-end recipients.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn recipients_list(
        &self,
        topic: impl Into<String>,
    ) -> Result<Vec<RecipientEntry>, ClientError> {
        let request = AdminRequest::RecipientList {
            topic: topic.into(),
        };
        expect_response!(self.request(request).await?, AdminResponse::Recipients(r) => r)
    }

    /// Adds or replaces a recipient; returns the topic's recipients now.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn recipients_put(
        &self,
        topic: impl Into<String>,
        entry: RecipientEntry,
    ) -> Result<Vec<RecipientEntry>, ClientError> {
        let request = AdminRequest::RecipientPut {
            topic: topic.into(),
            entry,
        };
        expect_response!(self.request(request).await?, AdminResponse::Recipients(r) => r)
    }

    /// Removes a recipient; returns the topic's recipients now.
    ///
    /// # Errors
    ///
    /// As [`Admin::request`].
    pub async fn recipients_remove(
        &self,
        topic: impl Into<String>,
        recipient: impl Into<String>,
    ) -> Result<Vec<RecipientEntry>, ClientError> {
        let request = AdminRequest::RecipientRemove {
            topic: topic.into(),
            recipient: recipient.into(),
        };
        expect_response!(self.request(request).await?, AdminResponse::Recipients(r) => r)
    }
}

/// Most `not_leader` hints one request follows.
pub const LEADER_HOPS: usize = 2;

/// Why an admin call did not answer: a `not_leader` refusal (with its
/// hint) is told apart so that [`Admin::request`] can follow it.
enum Refusal {
    NotLeader(ErrorFrame),
    Other(ClientError),
}

impl From<ClientError> for Refusal {
    fn from(e: ClientError) -> Self {
        Self::Other(e)
    }
}

/// Requests that change nothing, and so may be retried after a drop.
fn is_read_only(request: &AdminRequest) -> bool {
    matches!(
        request,
        AdminRequest::WhoAmI
            | AdminRequest::DescribeTopic { .. }
            | AdminRequest::ListTopics { .. }
            | AdminRequest::AclList { .. }
            | AdminRequest::KeyStatus { .. }
            | AdminRequest::AuditHead
            | AdminRequest::AccessList { .. }
            | AdminRequest::RecipientList { .. }
            | AdminRequest::Metadata { .. }
            | AdminRequest::ClusterStatus
    )
}
