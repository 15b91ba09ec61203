//! Admin requests and their responses.
//!
//! An admin stream carries exactly one request from the client and one
//! response (or `Error`) from the broker, then both sides finish it. Each
//! request and each response is a frame type of its own.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError};
use crate::frame::FrameType;
use crate::frames::fields::{
    Field, get_list, get_opt_bytes, get_opt_string, get_opt_u32, get_opt_u64, put_list,
    put_opt_bytes, put_opt_string, put_opt_u32, put_opt_u64,
};
use crate::model::{
    AccessRequestInfo, AclRule, ClusterMetadata, ClusterStatusInfo, KeyVersionInfo, Operations,
    RecipientEntry, RewrapProgress, TopicConfig, TopicInfo,
};

/// A request on an admin stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Who does the broker think I am?
    WhoAmI,
    /// Create a topic.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Its settings.
        config: TopicConfig,
    },
    /// Delete a topic and its data (crypto-shredding its keys).
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// A topic's configuration and partitions.
    DescribeTopic {
        /// Topic name.
        name: String,
    },
    /// Topics the caller may describe, optionally under a name prefix.
    ListTopics {
        /// Only topics whose names start with this.
        prefix: Option<String>,
    },
    /// Lets a read-only partition take writes again: the operator accepts
    /// that the records it lost are gone. Writing continues after the
    /// highest offset it ever acknowledged.
    TopicRecover {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Must be true: the request accepts the loss.
        accept_loss: bool,
    },
    /// Add an ACL rule.
    AclGrant {
        /// The rule.
        rule: AclRule,
    },
    /// Remove an ACL rule (matched on principal, topic, effect; the listed
    /// operations are removed from it).
    AclRevoke {
        /// The rule.
        rule: AclRule,
    },
    /// ACL rules, optionally filtered.
    AclList {
        /// Only rules whose principal pattern equals this.
        principal: Option<String>,
        /// Only rules whose topic pattern equals this.
        topic: Option<String>,
    },
    /// Get a producer id and epoch for idempotent produce.
    InitProducer {
        /// A previous id to resume; the broker bumps its epoch, fencing any
        /// older instance still using it.
        producer_id: Option<u64>,
    },
    /// Key versions and rewrap progress.
    KeyStatus {
        /// Only this topic's dedicated key; all scopes when absent.
        topic: Option<String>,
    },
    /// Create a new key version and make it active.
    KeyRotate {
        /// A topic's dedicated key; the broker key when absent.
        topic: Option<String>,
    },
    /// Start re-wrapping data keys under the active version.
    KeyRewrap {
        /// A topic's dedicated key; the broker key when absent.
        topic: Option<String>,
        /// Only envelopes under this version; every older version when absent.
        from_version: Option<u32>,
    },
    /// Make a version decrypt-only.
    KeyRetire {
        /// A topic's dedicated key; the broker key when absent.
        topic: Option<String>,
        /// The version.
        version: u32,
    },
    /// Destroy a version in the provider.
    KeyDestroy {
        /// A topic's dedicated key; the broker key when absent.
        topic: Option<String>,
        /// The version.
        version: u32,
        /// Destroy even though envelopes still need it.
        force: bool,
    },
    /// Mark a version compromised.
    KeyCompromised {
        /// A topic's dedicated key; the broker key when absent.
        topic: Option<String>,
        /// The version.
        version: u32,
    },
    /// The anchored head of the audit hash chain.
    AuditHead,
    /// Ask for operations on a topic.
    AccessRequest {
        /// The topic.
        topic: String,
        /// The operations.
        operations: Operations,
        /// Why.
        reason: String,
        /// A public key to be added as an end-to-end recipient on approval.
        public_key: Option<Bytes>,
    },
    /// Access requests the caller may see.
    AccessList {
        /// Only pending requests.
        pending_only: bool,
    },
    /// Approve a request.
    AccessApprove {
        /// The request.
        id: u64,
        /// How long the grant lasts, in milliseconds; unlimited when absent.
        ttl_ms: Option<u64>,
        /// The recipient entry, signed by the topic owner, to store when the
        /// request carried a public key.
        recipient_entry: Option<Bytes>,
    },
    /// Deny a request.
    AccessDeny {
        /// The request.
        id: u64,
        /// Why (required).
        reason: String,
    },
    /// A topic's end-to-end recipients.
    RecipientList {
        /// The topic.
        topic: String,
    },
    /// Add or replace a recipient of a topic.
    RecipientPut {
        /// The topic.
        topic: String,
        /// The signed entry.
        entry: RecipientEntry,
    },
    /// Remove a recipient of a topic.
    RecipientRemove {
        /// The topic.
        topic: String,
        /// The recipient id.
        recipient: String,
    },
    /// The cluster's nodes and where the partitions are served.
    Metadata {
        /// Only these topics; every topic the caller may describe when
        /// absent.
        topics: Option<Vec<String>>,
    },
    /// The members of the metadata group and their state.
    ClusterStatus,
    /// Add a node to the cluster.
    ClusterAddNode {
        /// Its id: non-zero and never used before.
        id: u64,
        /// Its peer address, `host:port`.
        peer_addr: String,
        /// Its client address, `host:port`.
        client_addr: String,
    },
    /// Remove a node from the cluster.
    ClusterRemoveNode {
        /// Its id.
        id: u64,
    },
}

impl AdminRequest {
    /// The frame type that carries this request.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::WhoAmI => FrameType::WhoAmI,
            Self::CreateTopic { .. } => FrameType::CreateTopic,
            Self::DeleteTopic { .. } => FrameType::DeleteTopic,
            Self::DescribeTopic { .. } => FrameType::DescribeTopic,
            Self::ListTopics { .. } => FrameType::ListTopics,
            Self::TopicRecover { .. } => FrameType::TopicRecover,
            Self::AclGrant { .. } => FrameType::AclGrant,
            Self::AclRevoke { .. } => FrameType::AclRevoke,
            Self::AclList { .. } => FrameType::AclList,
            Self::InitProducer { .. } => FrameType::InitProducer,
            Self::KeyStatus { .. } => FrameType::KeyStatus,
            Self::KeyRotate { .. } => FrameType::KeyRotate,
            Self::KeyRewrap { .. } => FrameType::KeyRewrap,
            Self::KeyRetire { .. } => FrameType::KeyRetire,
            Self::KeyDestroy { .. } => FrameType::KeyDestroy,
            Self::KeyCompromised { .. } => FrameType::KeyCompromised,
            Self::AuditHead => FrameType::AuditHead,
            Self::AccessRequest { .. } => FrameType::AccessRequest,
            Self::AccessList { .. } => FrameType::AccessList,
            Self::AccessApprove { .. } => FrameType::AccessApprove,
            Self::AccessDeny { .. } => FrameType::AccessDeny,
            Self::RecipientList { .. } => FrameType::RecipientList,
            Self::RecipientPut { .. } => FrameType::RecipientPut,
            Self::RecipientRemove { .. } => FrameType::RecipientRemove,
            Self::Metadata { .. } => FrameType::Metadata,
            Self::ClusterStatus => FrameType::ClusterStatus,
            Self::ClusterAddNode { .. } => FrameType::ClusterAddNode,
            Self::ClusterRemoveNode { .. } => FrameType::ClusterRemoveNode,
        }
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::WhoAmI | Self::AuditHead | Self::ClusterStatus => Ok(()),
            Self::CreateTopic { name, config } => {
                dst.put_string("name", name)?;
                config.put(dst)
            }
            Self::DeleteTopic { name } | Self::DescribeTopic { name } => {
                dst.put_string("name", name)
            }
            Self::ListTopics { prefix } => put_opt_string(dst, "prefix", prefix.as_deref()),
            Self::TopicRecover {
                topic,
                partition,
                accept_loss,
            } => {
                dst.put_string("topic", topic)?;
                dst.put_u32(*partition);
                dst.put_bool(*accept_loss);
                Ok(())
            }
            Self::AclGrant { rule } | Self::AclRevoke { rule } => rule.put(dst),
            Self::AclList { principal, topic } => {
                put_opt_string(dst, "principal", principal.as_deref())?;
                put_opt_string(dst, "topic", topic.as_deref())
            }
            Self::InitProducer { producer_id } => {
                put_opt_u64(dst, *producer_id);
                Ok(())
            }
            Self::KeyStatus { topic } | Self::KeyRotate { topic } => {
                put_opt_string(dst, "topic", topic.as_deref())
            }
            Self::KeyRewrap {
                topic,
                from_version,
            } => {
                put_opt_string(dst, "topic", topic.as_deref())?;
                put_opt_u32(dst, *from_version);
                Ok(())
            }
            Self::KeyRetire { topic, version } | Self::KeyCompromised { topic, version } => {
                put_opt_string(dst, "topic", topic.as_deref())?;
                dst.put_u32(*version);
                Ok(())
            }
            Self::KeyDestroy {
                topic,
                version,
                force,
            } => {
                put_opt_string(dst, "topic", topic.as_deref())?;
                dst.put_u32(*version);
                dst.put_bool(*force);
                Ok(())
            }
            Self::AccessRequest {
                topic,
                operations,
                reason,
                public_key,
            } => {
                dst.put_string("topic", topic)?;
                operations.put(dst)?;
                dst.put_string("reason", reason)?;
                put_opt_bytes(dst, "public_key", public_key.as_ref())
            }
            Self::AccessList { pending_only } => {
                dst.put_bool(*pending_only);
                Ok(())
            }
            Self::AccessApprove {
                id,
                ttl_ms,
                recipient_entry,
            } => {
                dst.put_u64(*id);
                put_opt_u64(dst, *ttl_ms);
                put_opt_bytes(dst, "recipient_entry", recipient_entry.as_ref())
            }
            Self::AccessDeny { id, reason } => {
                dst.put_u64(*id);
                dst.put_string("reason", reason)
            }
            Self::RecipientList { topic } => dst.put_string("topic", topic),
            Self::RecipientPut { topic, entry } => {
                dst.put_string("topic", topic)?;
                entry.put(dst)
            }
            Self::RecipientRemove { topic, recipient } => {
                dst.put_string("topic", topic)?;
                dst.put_string("recipient", recipient)
            }
            Self::Metadata { topics } => match topics {
                Some(names) => {
                    dst.put_u8(1);
                    dst.put_count("topics", names.len())?;
                    names.iter().try_for_each(|n| dst.put_string("topics", n))
                }
                None => {
                    dst.put_u8(0);
                    Ok(())
                }
            },
            Self::ClusterAddNode {
                id,
                peer_addr,
                client_addr,
            } => {
                dst.put_u64(*id);
                dst.put_string("peer_addr", peer_addr)?;
                dst.put_string("client_addr", client_addr)
            }
            Self::ClusterRemoveNode { id } => {
                dst.put_u64(*id);
                Ok(())
            }
        }
    }

    /// Decodes the body of a request frame of type `ty`; `None` when `ty`
    /// is not a request type.
    pub(crate) fn decode_body(ty: FrameType, r: &mut Reader) -> Result<Option<Self>, DecodeError> {
        Ok(Some(match ty {
            FrameType::WhoAmI => Self::WhoAmI,
            FrameType::CreateTopic => Self::CreateTopic {
                name: r.string()?,
                config: TopicConfig::get(r)?,
            },
            FrameType::DeleteTopic => Self::DeleteTopic { name: r.string()? },
            FrameType::DescribeTopic => Self::DescribeTopic { name: r.string()? },
            FrameType::ListTopics => Self::ListTopics {
                prefix: get_opt_string(r, "prefix")?,
            },
            FrameType::TopicRecover => Self::TopicRecover {
                topic: r.string()?,
                partition: r.u32()?,
                accept_loss: r.bool("accept_loss")?,
            },
            FrameType::AclGrant => Self::AclGrant {
                rule: AclRule::get(r)?,
            },
            FrameType::AclRevoke => Self::AclRevoke {
                rule: AclRule::get(r)?,
            },
            FrameType::AclList => Self::AclList {
                principal: get_opt_string(r, "principal")?,
                topic: get_opt_string(r, "topic")?,
            },
            FrameType::InitProducer => Self::InitProducer {
                producer_id: get_opt_u64(r, "producer_id")?,
            },
            FrameType::KeyStatus => Self::KeyStatus {
                topic: get_opt_string(r, "topic")?,
            },
            FrameType::KeyRotate => Self::KeyRotate {
                topic: get_opt_string(r, "topic")?,
            },
            FrameType::KeyRewrap => Self::KeyRewrap {
                topic: get_opt_string(r, "topic")?,
                from_version: get_opt_u32(r, "from_version")?,
            },
            FrameType::KeyRetire => Self::KeyRetire {
                topic: get_opt_string(r, "topic")?,
                version: r.u32()?,
            },
            FrameType::KeyDestroy => Self::KeyDestroy {
                topic: get_opt_string(r, "topic")?,
                version: r.u32()?,
                force: r.bool("force")?,
            },
            FrameType::KeyCompromised => Self::KeyCompromised {
                topic: get_opt_string(r, "topic")?,
                version: r.u32()?,
            },
            FrameType::AuditHead => Self::AuditHead,
            FrameType::AccessRequest => Self::AccessRequest {
                topic: r.string()?,
                operations: Operations::get(r)?,
                reason: r.string()?,
                public_key: get_opt_bytes(r, "public_key")?,
            },
            FrameType::AccessList => Self::AccessList {
                pending_only: r.bool("pending_only")?,
            },
            FrameType::AccessApprove => Self::AccessApprove {
                id: r.u64()?,
                ttl_ms: get_opt_u64(r, "ttl_ms")?,
                recipient_entry: get_opt_bytes(r, "recipient_entry")?,
            },
            FrameType::AccessDeny => Self::AccessDeny {
                id: r.u64()?,
                reason: r.string()?,
            },
            FrameType::RecipientList => Self::RecipientList { topic: r.string()? },
            FrameType::RecipientPut => Self::RecipientPut {
                topic: r.string()?,
                entry: RecipientEntry::get(r)?,
            },
            FrameType::RecipientRemove => Self::RecipientRemove {
                topic: r.string()?,
                recipient: r.string()?,
            },
            FrameType::Metadata => Self::Metadata {
                topics: if r.present("topics")? {
                    let n = r.count(2)?;
                    let mut names = Vec::with_capacity(n);
                    for _ in 0..n {
                        names.push(r.string()?);
                    }
                    Some(names)
                } else {
                    None
                },
            },
            FrameType::ClusterStatus => Self::ClusterStatus,
            FrameType::ClusterAddNode => Self::ClusterAddNode {
                id: r.u64()?,
                peer_addr: r.string()?,
                client_addr: r.string()?,
            },
            FrameType::ClusterRemoveNode => Self::ClusterRemoveNode { id: r.u64()? },
            _ => return Ok(None),
        }))
    }
}

/// The broker's answer on an admin stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminResponse {
    /// The request succeeded and has nothing more to say.
    Ok {
        /// What was done, for people.
        message: String,
    },
    /// Answer to `WhoAmI`.
    WhoAmI {
        /// The mapped principal.
        principal: String,
        /// The broker's id.
        broker_id: String,
        /// True when the principal is a configured superuser.
        superuser: bool,
    },
    /// Answer to `CreateTopic`, `DescribeTopic` and `TopicRecover`.
    Topic(TopicInfo),
    /// Answer to `ListTopics`.
    Topics(Vec<TopicInfo>),
    /// Answer to `AclList` (and to `AclGrant`/`AclRevoke`: the rules now in force
    /// for that principal pattern).
    Acls(Vec<AclRule>),
    /// Answer to `InitProducer`.
    Producer {
        /// The producer id.
        producer_id: u64,
        /// Its current epoch.
        epoch: u16,
    },
    /// Answer to `KeyStatus`.
    KeyStatus {
        /// Every key version in the requested scopes.
        versions: Vec<KeyVersionInfo>,
        /// The rewrap job.
        rewrap: RewrapProgress,
    },
    /// Answer to `KeyRotate`, `KeyRewrap`, `KeyRetire`, `KeyDestroy` and
    /// `KeyCompromised`.
    KeyChanged {
        /// The version acted on, in its new state.
        version: KeyVersionInfo,
        /// Segments affected (queued for rewrap, or left unreadable by a
        /// forced destroy).
        segments: u64,
        /// What was done, for people.
        message: String,
    },
    /// Answer to `AuditHead`.
    AuditHead {
        /// Sequence number of the newest audit record.
        sequence: u64,
        /// Its SHA-256 chain hash.
        hash: [u8; 32],
    },
    /// Answer to `AccessRequest`, `AccessApprove` and `AccessDeny`.
    Access(AccessRequestInfo),
    /// Answer to `AccessList`.
    AccessList(Vec<AccessRequestInfo>),
    /// Answer to `RecipientList`, `RecipientPut` and `RecipientRemove`: the
    /// topic's recipients now.
    Recipients(Vec<RecipientEntry>),
    /// Answer to `Metadata`.
    Metadata(ClusterMetadata),
    /// Answer to `ClusterStatus`.
    ClusterStatus(ClusterStatusInfo),
}

impl AdminResponse {
    /// The frame type that carries this response.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Ok { .. } => FrameType::AdminOk,
            Self::WhoAmI { .. } => FrameType::WhoAmIResult,
            Self::Topic(_) => FrameType::TopicResult,
            Self::Topics(_) => FrameType::TopicListResult,
            Self::Acls(_) => FrameType::AclListResult,
            Self::Producer { .. } => FrameType::ProducerResult,
            Self::KeyStatus { .. } => FrameType::KeyStatusResult,
            Self::KeyChanged { .. } => FrameType::KeyChangedResult,
            Self::AuditHead { .. } => FrameType::AuditHeadResult,
            Self::Access(_) => FrameType::AccessResult,
            Self::AccessList(_) => FrameType::AccessListResult,
            Self::Recipients(_) => FrameType::RecipientListResult,
            Self::Metadata(_) => FrameType::MetadataResult,
            Self::ClusterStatus(_) => FrameType::ClusterStatusResult,
        }
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Ok { message } => dst.put_string("message", message),
            Self::WhoAmI {
                principal,
                broker_id,
                superuser,
            } => {
                dst.put_string("principal", principal)?;
                dst.put_string("broker_id", broker_id)?;
                dst.put_bool(*superuser);
                Ok(())
            }
            Self::Topic(t) => t.put(dst),
            Self::Topics(ts) => put_list(dst, "topics", ts),
            Self::Acls(rules) => put_list(dst, "rules", rules),
            Self::Producer { producer_id, epoch } => {
                dst.put_u64(*producer_id);
                dst.put_u16(*epoch);
                Ok(())
            }
            Self::KeyStatus { versions, rewrap } => {
                put_list(dst, "versions", versions)?;
                rewrap.put(dst)
            }
            Self::KeyChanged {
                version,
                segments,
                message,
            } => {
                version.put(dst)?;
                dst.put_u64(*segments);
                dst.put_string("message", message)
            }
            Self::AuditHead { sequence, hash } => {
                dst.put_u64(*sequence);
                dst.put_slice(hash);
                Ok(())
            }
            Self::Access(a) => a.put(dst),
            Self::AccessList(list) => put_list(dst, "requests", list),
            Self::Recipients(list) => put_list(dst, "recipients", list),
            Self::Metadata(m) => m.put(dst),
            Self::ClusterStatus(c) => c.put(dst),
        }
    }

    /// Decodes the body of a response frame of type `ty`; `None` when `ty`
    /// is not a response type.
    pub(crate) fn decode_body(ty: FrameType, r: &mut Reader) -> Result<Option<Self>, DecodeError> {
        Ok(Some(match ty {
            FrameType::AdminOk => Self::Ok {
                message: r.string()?,
            },
            FrameType::WhoAmIResult => Self::WhoAmI {
                principal: r.string()?,
                broker_id: r.string()?,
                superuser: r.bool("superuser")?,
            },
            FrameType::TopicResult => Self::Topic(TopicInfo::get(r)?),
            FrameType::TopicListResult => Self::Topics(get_list(r, 2 + 16 + 8 + 4)?),
            FrameType::AclListResult => Self::Acls(get_list(r, 8)?),
            FrameType::ProducerResult => Self::Producer {
                producer_id: r.u64()?,
                epoch: r.u16()?,
            },
            FrameType::KeyStatusResult => Self::KeyStatus {
                versions: get_list(r, 2 + 4 + 1 + 2 + 8 + 8 + 8)?,
                rewrap: RewrapProgress::get(r)?,
            },
            FrameType::KeyChangedResult => Self::KeyChanged {
                version: KeyVersionInfo::get(r)?,
                segments: r.u64()?,
                message: r.string()?,
            },
            FrameType::AuditHeadResult => {
                let sequence = r.u64()?;
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&r.raw(32)?);
                Self::AuditHead { sequence, hash }
            }
            FrameType::AccessResult => Self::Access(AccessRequestInfo::get(r)?),
            FrameType::AccessListResult => Self::AccessList(get_list(r, 8 + 2 + 2 + 2 + 2)?),
            FrameType::RecipientListResult => Self::Recipients(get_list(r, 6)?),
            FrameType::MetadataResult => Self::Metadata(ClusterMetadata::get(r)?),
            FrameType::ClusterStatusResult => Self::ClusterStatus(ClusterStatusInfo::get(r)?),
            _ => return Ok(None),
        }))
    }
}
