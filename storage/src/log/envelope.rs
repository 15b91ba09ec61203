//! Key envelopes: the wrapped data key of one segment, in its own small
//! file `{base:020}.key` beside the segment.
//!
//! ```text
//! offset size field
//!      0    4 magic          "SBKE"
//!      4    2 version        1
//!      6    2 reserved       0
//!      8   16 topic_id       \
//!     24    4 partition       | must equal the segment header's fields:
//!     28   16 segment_id      | an envelope cannot be moved to another
//!     44    8 base_offset    /  segment unnoticed
//!     52    4 kek_version    version of the KEK that wraps the key
//!     56    1 scope_len      n, 1..=255
//!     57    n scope          KEK scope label, UTF-8 ("broker", "topic-<hex>")
//!   57+n    2 wrapped_len    m, 1..=1024
//!   59+n    m wrapped        the RFC 5649 blob from the key provider
//! 59+n+m    4 crc32c         CRC-32C of every byte before it
//! ```
//!
//! The file is written atomically (a temporary file, fsync, rename, fsync of
//! the directory), so a crash leaves the old envelope or the new one, never
//! a mix. The background rewrap job uses [`write_envelope`] to replace an
//! envelope with one wrapped under a newer KEK version.

use std::fmt;
use std::path::Path;

use crate::io::StorageIo;
use crate::keys::{KekId, KekScope, SegmentKeyContext, WrappedDek};

use super::error::LogError;
use super::files;
use super::format::{FORMAT_VERSION, FormatError, Reader, key_file_name};

/// First four bytes of every key envelope.
pub const ENVELOPE_MAGIC: [u8; 4] = *b"SBKE";
/// The longest wrapped key an envelope holds.
pub const MAX_WRAPPED_LEN: usize = 1024;

/// The contents of a key envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEnvelope {
    /// The topic's 128-bit id.
    pub topic_id: [u8; 16],
    /// Partition index.
    pub partition: u32,
    /// The segment's 128-bit id.
    pub segment_id: [u8; 16],
    /// The segment's base offset.
    pub base_offset: u64,
    /// The data key, wrapped, and the KEK version that wraps it.
    pub wrapped: WrappedDek,
}

impl fmt::Debug for KeyEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped blob is not secret, but it is noise in logs.
        f.debug_struct("KeyEnvelope")
            .field("topic_id", &hex::encode(self.topic_id))
            .field("partition", &self.partition)
            .field("segment_id", &hex::encode(self.segment_id))
            .field("base_offset", &self.base_offset)
            .field("kek", &self.wrapped.kek.label())
            .field("wrapped_len", &self.wrapped.wrapped.len())
            .finish()
    }
}

impl KeyEnvelope {
    /// The key context of the segment this envelope belongs to.
    pub fn context(&self) -> SegmentKeyContext {
        SegmentKeyContext {
            topic_id: self.topic_id,
            partition: self.partition,
            segment_id: self.segment_id,
            scope: self.wrapped.kek.scope.clone(),
        }
    }

    /// The envelope's bytes.
    ///
    /// # Errors
    ///
    /// [`FormatError::Invalid`] when the scope label or the wrapped key is
    /// empty or too long for its length field.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let scope = self.wrapped.kek.scope.label();
        let scope_len = u8::try_from(scope.len())
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| FormatError::Invalid {
                field: "scope",
                detail: format!("{} bytes, allowed 1..=255", scope.len()),
            })?;
        let blob = &self.wrapped.wrapped;
        let wrapped_len = u16::try_from(blob.len())
            .ok()
            .filter(|l| *l > 0 && usize::from(*l) <= MAX_WRAPPED_LEN)
            .ok_or_else(|| FormatError::Invalid {
                field: "wrapped",
                detail: format!("{} bytes, allowed 1..={MAX_WRAPPED_LEN}", blob.len()),
            })?;
        let mut out = Vec::with_capacity(63 + scope.len() + blob.len());
        out.extend_from_slice(&ENVELOPE_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&self.topic_id);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.segment_id);
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&self.wrapped.kek.version.to_be_bytes());
        out.push(scope_len);
        out.extend_from_slice(scope.as_bytes());
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(blob);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Decodes and checks an envelope: magic, version, CRC, lengths, no
    /// trailing bytes.
    ///
    /// # Errors
    ///
    /// [`FormatError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>()?;
        if magic != ENVELOPE_MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let reserved = r.u16()?;
        if reserved != 0 {
            return Err(FormatError::UnknownFlags(reserved));
        }
        let topic_id = r.array()?;
        let partition = r.u32()?;
        let segment_id = r.array()?;
        let base_offset = r.u64()?;
        let kek_version = r.u32()?;
        let scope_len = usize::from(r.u8()?);
        let scope_bytes = r.raw(scope_len)?;
        let wrapped_len = usize::from(r.u16()?);
        let wrapped = r.raw(wrapped_len)?.to_vec();
        let body_len = bytes.len().saturating_sub(r.remaining());
        let stored = r.u32()?;
        if r.remaining() != 0 {
            return Err(FormatError::Invalid {
                field: "length",
                detail: format!("{} trailing bytes", r.remaining()),
            });
        }
        let computed = crc32c::crc32c(bytes.get(..body_len).unwrap_or_default());
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let scope = std::str::from_utf8(scope_bytes)
            .ok()
            .and_then(KekScope::parse)
            .ok_or_else(|| FormatError::Invalid {
                field: "scope",
                detail: "not a KEK scope label".into(),
            })?;
        if wrapped.is_empty() || wrapped.len() > MAX_WRAPPED_LEN {
            return Err(FormatError::Invalid {
                field: "wrapped",
                detail: format!("{} bytes", wrapped.len()),
            });
        }
        Ok(Self {
            topic_id,
            partition,
            segment_id,
            base_offset,
            wrapped: WrappedDek {
                kek: KekId {
                    scope,
                    version: kek_version,
                },
                wrapped,
            },
        })
    }
}

/// Why an envelope file could not be used.
#[derive(Debug)]
pub(crate) enum EnvelopeProblem {
    Missing,
    Empty,
    Corrupt(String),
}

/// Reads and decodes the envelope of segment `base` in `dir`.
pub(crate) fn read_envelope(
    io: &dyn StorageIo,
    dir: &Path,
    base: u64,
) -> Result<KeyEnvelope, EnvelopeProblem> {
    let path = dir.join(key_file_name(base));
    let bytes = match io.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnvelopeProblem::Missing);
        }
        Err(e) => return Err(EnvelopeProblem::Corrupt(format!("cannot be read: {e}"))),
    };
    if bytes.is_empty() {
        return Err(EnvelopeProblem::Empty);
    }
    KeyEnvelope::decode(&bytes).map_err(|e| EnvelopeProblem::Corrupt(e.to_string()))
}

/// Writes the envelope of segment `envelope.base_offset` into `dir`
/// atomically: a temporary file, fsync, rename over the old envelope,
/// fsync of the directory.
///
/// # Errors
///
/// [`LogError::Io`] when a step fails (the old envelope, if any, is then
/// still in place); [`LogError::Config`] when the envelope cannot be
/// encoded.
pub fn write_envelope(
    io: &dyn StorageIo,
    dir: &Path,
    envelope: &KeyEnvelope,
) -> Result<(), LogError> {
    let bytes = envelope
        .encode()
        .map_err(|e| LogError::Config(format!("key envelope cannot be encoded: {e}")))?;
    files::write_atomic(io, dir, &key_file_name(envelope.base_offset), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> KeyEnvelope {
        KeyEnvelope {
            topic_id: [0xAB; 16],
            partition: 7,
            segment_id: [0xCD; 16],
            base_offset: 4096,
            wrapped: WrappedDek {
                kek: KekId {
                    scope: KekScope::Topic("00ff".into()),
                    version: 3,
                },
                wrapped: vec![0x11; 40],
            },
        }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let env = sample();
        let bytes = env.encode().expect("encode");
        assert_eq!(KeyEnvelope::decode(&bytes).expect("decode"), env);
        for cut in 0..bytes.len() {
            assert!(KeyEnvelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(KeyEnvelope::decode(&bad).is_err(), "flip at {i}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(KeyEnvelope::decode(&long).is_err());
    }

    #[test]
    fn refuses_to_encode_empty_blob() {
        let mut env = sample();
        env.wrapped.wrapped.clear();
        assert!(env.encode().is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = KeyEnvelope::decode(&bytes);
        }
    }
}
