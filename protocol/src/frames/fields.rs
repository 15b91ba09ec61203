//! The wire encoding of the model values that admin requests and responses
//! carry (topic configs, ACL rules, key versions, access requests,
//! recipients), and of the optional and list fields around them.
//!
//! The values themselves are defined in [`crate::model`]; this file is the
//! only place that knows their bytes. docs/PROTOCOL.md has the same layouts.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError};
use crate::model::{
    AccessRequestInfo, AccessState, AclEffect, AclRule, Durability, KeyState, KeyVersionInfo,
    Operations, PartitionInfo, PartitionState, RecipientEntry, RewrapProgress, TopicConfig,
    TopicInfo,
};

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
