//! Values carried by admin requests and responses: topic configs, ACL rules,
//! key versions, access requests.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError};

/// Reads and writes one value inside a frame body.
pub(crate) trait Field: Sized {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;
    fn get(r: &mut Reader) -> Result<Self, DecodeError>;
}

pub(crate) fn put_list<T: Field>(
    dst: &mut BytesMut,
    field: &'static str,
    items: &[T],
) -> Result<(), EncodeError> {
    dst.put_count(field, items.len())?;
    items.iter().try_for_each(|i| i.put(dst))
}

/// Reads a list whose elements each take at least `min` bytes.
pub(crate) fn get_list<T: Field>(r: &mut Reader, min: usize) -> Result<Vec<T>, DecodeError> {
    let n = r.count(min)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(T::get(r)?);
    }
    Ok(out)
}

pub(crate) fn put_opt_u64(dst: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            dst.put_u8(1);
            dst.put_u64(v);
        }
        None => dst.put_u8(0),
    }
}

pub(crate) fn get_opt_u64(r: &mut Reader, field: &'static str) -> Result<Option<u64>, DecodeError> {
    Ok(if r.present(field)? {
        Some(r.u64()?)
    } else {
        None
    })
}

pub(crate) fn put_opt_i64(dst: &mut BytesMut, v: Option<i64>) {
    match v {
        Some(v) => {
            dst.put_u8(1);
            dst.put_i64(v);
        }
        None => dst.put_u8(0),
    }
}

pub(crate) fn get_opt_i64(r: &mut Reader, field: &'static str) -> Result<Option<i64>, DecodeError> {
    Ok(if r.present(field)? {
        Some(r.i64()?)
    } else {
        None
    })
}

pub(crate) fn put_opt_u32(dst: &mut BytesMut, v: Option<u32>) {
    match v {
        Some(v) => {
            dst.put_u8(1);
            dst.put_u32(v);
        }
        None => dst.put_u8(0),
    }
}

pub(crate) fn get_opt_u32(r: &mut Reader, field: &'static str) -> Result<Option<u32>, DecodeError> {
    Ok(if r.present(field)? {
        Some(r.u32()?)
    } else {
        None
    })
}

pub(crate) fn put_opt_string(
    dst: &mut BytesMut,
    field: &'static str,
    v: Option<&str>,
) -> Result<(), EncodeError> {
    match v {
        Some(v) => {
            dst.put_u8(1);
            dst.put_string(field, v)
        }
        None => {
            dst.put_u8(0);
            Ok(())
        }
    }
}

pub(crate) fn get_opt_string(
    r: &mut Reader,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    Ok(if r.present(field)? {
        Some(r.string()?)
    } else {
        None
    })
}

pub(crate) fn put_opt_bytes(
    dst: &mut BytesMut,
    field: &'static str,
    v: Option<&Bytes>,
) -> Result<(), EncodeError> {
    match v {
        Some(v) => {
            dst.put_u8(1);
            dst.put_bytes32(field, v)
        }
        None => {
            dst.put_u8(0);
            Ok(())
        }
    }
}

pub(crate) fn get_opt_bytes(
    r: &mut Reader,
    field: &'static str,
) -> Result<Option<Bytes>, DecodeError> {
    Ok(if r.present(field)? {
        Some(r.bytes()?)
    } else {
        None
    })
}

/// How a topic makes appends durable before acknowledging them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Acknowledge after `fdatasync`; concurrent appends share one sync
    /// (group commit).
    Fsync,
    /// Acknowledge after the write; sync at most every `interval_ms`.
    Interval {
        /// Milliseconds between syncs.
        interval_ms: u32,
    },
    /// Acknowledge after the write; the operating system decides when to
    /// sync.
    None,
}

impl Field for Durability {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let (tag, ms) = match *self {
            Self::Fsync => (0, 0),
            // The decoder refuses an interval of 0; refuse to write one.
            Self::Interval { interval_ms: 0 } => {
                return Err(EncodeError::OutOfRange {
                    field: "durability",
                    detail: "interval_ms must be at least 1".into(),
                });
            }
            Self::Interval { interval_ms } => (1, interval_ms),
            Self::None => (2, 0),
        };
        dst.put_u8(tag);
        dst.put_u32(ms);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        let tag = r.u8()?;
        let ms = r.u32()?;
        match (tag, ms) {
            (0, 0) => Ok(Self::Fsync),
            (1, ms) if ms > 0 => Ok(Self::Interval { interval_ms: ms }),
            (2, 0) => Ok(Self::None),
            _ => Err(DecodeError::InvalidValue {
                field: "durability",
                offset,
            }),
        }
    }
}

/// Settings of a topic, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions, at least 1.
    pub partitions: u32,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while a partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Roll the active segment at this size; broker default when absent.
    pub segment_bytes: Option<u64>,
    /// Roll the active segment at this age; broker default when absent.
    pub segment_ms: Option<u64>,
    /// Wrap this topic's data keys under a key-encryption key of its own,
    /// destroyed with the topic (crypto-shredding).
    pub dedicated_kek: bool,
}

impl Field for TopicConfig {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partitions);
        self.durability.put(dst)?;
        put_opt_u64(dst, self.retention_ms);
        put_opt_u64(dst, self.retention_bytes);
        put_opt_u64(dst, self.segment_bytes);
        put_opt_u64(dst, self.segment_ms);
        dst.put_bool(self.dedicated_kek);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            partitions: r.u32()?,
            durability: Durability::get(r)?,
            retention_ms: get_opt_u64(r, "retention_ms")?,
            retention_bytes: get_opt_u64(r, "retention_bytes")?,
            segment_bytes: get_opt_u64(r, "segment_bytes")?,
            segment_ms: get_opt_u64(r, "segment_ms")?,
            dedicated_kek: r.bool("dedicated_kek")?,
        })
    }
}

/// The state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Oldest retained offset.
    pub log_start_offset: u64,
    /// Offset the next appended record will get.
    pub high_watermark: u64,
    /// Segments on disk.
    pub segments: u32,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Present when the partition is not `ok`: what is wrong and what to
    /// do.
    pub error: Option<String>,
    /// Whether the partition serves reads and writes.
    pub state: PartitionState,
}

impl Field for PartitionInfo {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u32(self.partition);
        dst.put_u64(self.log_start_offset);
        dst.put_u64(self.high_watermark);
        dst.put_u32(self.segments);
        dst.put_u64(self.size_bytes);
        put_opt_string(dst, "error", self.error.as_deref())?;
        self.state.put(dst)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            partition: r.u32()?,
            log_start_offset: r.u64()?,
            high_watermark: r.u64()?,
            segments: r.u32()?,
            size_bytes: r.u64()?,
            error: get_opt_string(r, "error")?,
            state: PartitionState::get(r)?,
        })
    }
}

/// Whether a partition serves reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PartitionState {
    /// Reads and writes.
    #[default]
    Ok,
    /// Neither: its log cannot be opened (corruption, a missing key).
    Unavailable,
    /// Reads only: its log is shorter than the offsets it acknowledged, or
    /// misses a segment the broker knows of. Writes resume when an
    /// operator accepts the loss.
    ReadOnly,
    /// Reads only for now: a write or sync failed (a full disk, an I/O
    /// error). Writes resume by themselves once the disk accepts them.
    Fenced,
}

impl PartitionState {
    /// Every state, in wire order.
    pub const ALL: [Self; 4] = [Self::Ok, Self::Unavailable, Self::ReadOnly, Self::Fenced];

    /// The state's name as shown by the CLI and in metrics (`ok`,
    /// `unavailable`, `read_only`, `fenced`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unavailable => "unavailable",
            Self::ReadOnly => "read_only",
            Self::Fenced => "fenced",
        }
    }
}

impl Field for PartitionState {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u8(match self {
            Self::Ok => 0,
            Self::Unavailable => 1,
            Self::ReadOnly => 2,
            Self::Fenced => 3,
        });
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        match r.u8()? {
            0 => Ok(Self::Ok),
            1 => Ok(Self::Unavailable),
            2 => Ok(Self::ReadOnly),
            3 => Ok(Self::Fenced),
            _ => Err(DecodeError::InvalidValue {
                field: "partition_state",
                offset,
            }),
        }
    }
}

/// A topic, its configuration and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// 128-bit identifier, stable for the topic's life and never reused.
    pub topic_id: [u8; 16],
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Its configuration.
    pub config: TopicConfig,
    /// One entry per partition (empty in `TopicList`).
    pub partitions: Vec<PartitionInfo>,
}

impl Field for TopicInfo {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_string("name", &self.name)?;
        dst.put_slice(&self.topic_id);
        dst.put_i64(self.created_at);
        self.config.put(dst)?;
        put_list(dst, "partitions", &self.partitions)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.string()?;
        let mut topic_id = [0u8; 16];
        topic_id.copy_from_slice(&r.raw(16)?);
        Ok(Self {
            name,
            topic_id,
            created_at: r.i64()?,
            config: TopicConfig::get(r)?,
            partitions: get_list(r, 34)?,
        })
    }
}

/// A set of ACL operations, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Operations(pub u16);

impl Operations {
    /// Append to a topic.
    pub const PUBLISH: Self = Self(1 << 0);
    /// Read a topic.
    pub const SUBSCRIBE: Self = Self(1 << 1);
    /// See a topic's configuration and state.
    pub const DESCRIBE: Self = Self(1 << 2);
    /// Create topics.
    pub const CREATE: Self = Self(1 << 3);
    /// Delete topics.
    pub const DELETE: Self = Self(1 << 4);
    /// Change a topic's settings, recipients and ACLs bound to it.
    pub const ALTER: Self = Self(1 << 5);
    /// Decide access requests for a topic and grant its permissions.
    pub const GRANT: Self = Self(1 << 6);
    /// Manage encryption keys.
    pub const KEYS: Self = Self(1 << 7);
    /// Read the audit trail.
    pub const AUDIT: Self = Self(1 << 8);
    /// Every operation, including broker-wide administration.
    pub const ADMIN: Self = Self(1 << 9);
    /// Bits that name an operation.
    pub const VALID: u16 = (1 << 10) - 1;

    /// Every operation with its name, in bit order.
    pub const NAMED: &'static [(Self, &'static str)] = &[
        (Self::PUBLISH, "publish"),
        (Self::SUBSCRIBE, "subscribe"),
        (Self::DESCRIBE, "describe"),
        (Self::CREATE, "create"),
        (Self::DELETE, "delete"),
        (Self::ALTER, "alter"),
        (Self::GRANT, "grant"),
        (Self::KEYS, "keys"),
        (Self::AUDIT, "audit"),
        (Self::ADMIN, "admin"),
    ];

    /// True when every operation of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no operation is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of both sets.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The operation named `name` (`publish`, `subscribe`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(op, _)| *op)
    }

    /// The names of the operations in the set.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMED
            .iter()
            .filter(|(op, _)| self.contains(*op))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::fmt::Display for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Field for Operations {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        // The decoder refuses bits that name no operation; refuse to write them.
        if self.0 & !Self::VALID != 0 {
            return Err(EncodeError::OutOfRange {
                field: "operations",
                detail: format!("bits {:#06x} name no operation", self.0 & !Self::VALID),
            });
        }
        dst.put_u16(self.0);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        let bits = r.u16()?;
        if bits & !Self::VALID != 0 {
            return Err(DecodeError::InvalidValue {
                field: "operations",
                offset,
            });
        }
        Ok(Self(bits))
    }
}

/// Whether an ACL rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclEffect {
    /// Grants the operations.
    Allow,
    /// Refuses the operations, whatever else allows them.
    Deny,
}

/// One ACL rule: principal pattern × topic pattern × operations.
///
/// A pattern is `*` (anything), an exact name, or a prefix ending in `*`
/// (`orders.*`, `spiffe://prod/*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclRule {
    /// Principal pattern.
    pub principal: String,
    /// Topic pattern.
    pub topic: String,
    /// Operations the rule covers.
    pub operations: Operations,
    /// Allow or deny.
    pub effect: AclEffect,
    /// When the rule stops applying (milliseconds since the Unix epoch), for
    /// time-boxed grants.
    pub expires_at: Option<i64>,
}

impl Field for AclRule {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_string("principal", &self.principal)?;
        dst.put_string("topic", &self.topic)?;
        self.operations.put(dst)?;
        dst.put_u8(match self.effect {
            AclEffect::Allow => 0,
            AclEffect::Deny => 1,
        });
        put_opt_i64(dst, self.expires_at);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let principal = r.string()?;
        let topic = r.string()?;
        let operations = Operations::get(r)?;
        let offset = r.position();
        let effect = match r.u8()? {
            0 => AclEffect::Allow,
            1 => AclEffect::Deny,
            _ => {
                return Err(DecodeError::InvalidValue {
                    field: "effect",
                    offset,
                });
            }
        };
        Ok(Self {
            principal,
            topic,
            operations,
            effect,
            expires_at: get_opt_i64(r, "expires_at")?,
        })
    }
}

/// NIST SP 800-57 state of a key-encryption key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Wraps new data keys.
    Active,
    /// Unwraps existing data keys only.
    DecryptOnly,
    /// Gone from the provider; data under it cannot be read.
    Destroyed,
    /// Suspected exposed; still unwraps, first in the rewrap queue.
    Compromised,
}

impl KeyState {
    /// The state's name as shown by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::DecryptOnly => "decrypt-only",
            Self::Destroyed => "destroyed",
            Self::Compromised => "compromised",
        }
    }
}

impl Field for KeyState {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u8(match self {
            Self::Active => 0,
            Self::DecryptOnly => 1,
            Self::Destroyed => 2,
            Self::Compromised => 3,
        });
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        match r.u8()? {
            0 => Ok(Self::Active),
            1 => Ok(Self::DecryptOnly),
            2 => Ok(Self::Destroyed),
            3 => Ok(Self::Compromised),
            _ => Err(DecodeError::InvalidValue {
                field: "key_state",
                offset,
            }),
        }
    }
}

/// One version of a key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionInfo {
    /// `broker`, or `topic:<name>` for a dedicated key.
    pub scope: String,
    /// Version number, from 1.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// Which provider holds it (`file`, `pkcs11`).
    pub provider: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the state last changed.
    pub state_changed_at: i64,
    /// Segment keys wrapped under this version.
    pub segments: u64,
}

impl Field for KeyVersionInfo {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_string("scope", &self.scope)?;
        dst.put_u32(self.version);
        self.state.put(dst)?;
        dst.put_string("provider", &self.provider)?;
        dst.put_i64(self.created_at);
        dst.put_i64(self.state_changed_at);
        dst.put_u64(self.segments);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            scope: r.string()?,
            version: r.u32()?,
            state: KeyState::get(r)?,
            provider: r.string()?,
            created_at: r.i64()?,
            state_changed_at: r.i64()?,
            segments: r.u64()?,
        })
    }
}

/// Progress of the background rewrap job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewrapProgress {
    /// True while the job runs.
    pub running: bool,
    /// Envelopes the job must rewrap.
    pub total: u64,
    /// Envelopes rewrapped so far.
    pub done: u64,
    /// Envelopes it could not rewrap (their key version is destroyed, or
    /// the envelope is corrupt).
    pub failed: u64,
}

impl Field for RewrapProgress {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_bool(self.running);
        dst.put_u64(self.total);
        dst.put_u64(self.done);
        dst.put_u64(self.failed);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            running: r.bool("running")?,
            total: r.u64()?,
            done: r.u64()?,
            failed: r.u64()?,
        })
    }
}

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

impl Field for AccessState {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u8(match self {
            Self::Pending => 0,
            Self::Approved => 1,
            Self::Denied => 2,
            Self::Expired => 3,
        });
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.position();
        match r.u8()? {
            0 => Ok(Self::Pending),
            1 => Ok(Self::Approved),
            2 => Ok(Self::Denied),
            3 => Ok(Self::Expired),
            _ => Err(DecodeError::InvalidValue {
                field: "access_state",
                offset,
            }),
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

impl Field for AccessRequestInfo {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_u64(self.id);
        dst.put_string("requester", &self.requester)?;
        dst.put_string("topic", &self.topic)?;
        self.operations.put(dst)?;
        dst.put_string("reason", &self.reason)?;
        put_opt_bytes(dst, "public_key", self.public_key.as_ref())?;
        self.state.put(dst)?;
        dst.put_i64(self.created_at);
        put_opt_string(dst, "decided_by", self.decided_by.as_deref())?;
        put_opt_string(dst, "decision_reason", self.decision_reason.as_deref())?;
        put_opt_i64(dst, self.decided_at);
        put_opt_i64(dst, self.expires_at);
        Ok(())
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64()?,
            requester: r.string()?,
            topic: r.string()?,
            operations: Operations::get(r)?,
            reason: r.string()?,
            public_key: get_opt_bytes(r, "public_key")?,
            state: AccessState::get(r)?,
            created_at: r.i64()?,
            decided_by: get_opt_string(r, "decided_by")?,
            decision_reason: get_opt_string(r, "decision_reason")?,
            decided_at: get_opt_i64(r, "decided_at")?,
            expires_at: get_opt_i64(r, "expires_at")?,
        })
    }
}

/// A reader of a topic's end-to-end encrypted records, as stored in the
/// topic's recipient directory.
///
/// `entry` is the signed recipient record defined by the client's
/// end-to-end layer; the broker stores and returns it unchanged and cannot
/// forge one, because producers check it against the topic owner's pinned
/// public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientEntry {
    /// The recipient's id (usually its principal).
    pub recipient: String,
    /// The signed entry.
    pub entry: Bytes,
}

impl Field for RecipientEntry {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.put_string("recipient", &self.recipient)?;
        dst.put_bytes32("entry", &self.entry)
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            recipient: r.string()?,
            entry: r.bytes()?,
        })
    }
}
