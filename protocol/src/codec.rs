//! Primitive encoding shared by frames and record batches.
//!
//! Every integer is big-endian. Variable-length values carry their length
//! first:
//!
//! | type       | encoding                                             |
//! |------------|------------------------------------------------------|
//! | `string`   | `u16` byte length, then that many bytes of UTF-8     |
//! | `bytes`    | `u32` byte length, then the bytes                    |
//! | `list<T>`  | `u32` element count, then the elements               |
//! | `option<T>`| `u8` 0 (absent) or 1 (present), then `T` if present  |
//! | `bool`     | `u8` 0 or 1; any other value is malformed            |
//!
//! [`Reader`] never panics: every read checks the remaining length first and
//! reports `{offset, need, have}` when the input is short. Slices of the
//! input are returned as [`Bytes`] that share the input buffer, so a record
//! batch is never copied while a frame is decoded.

use bytes::{BufMut, Bytes};

use crate::error::{DecodeError, EncodeError};

/// A cursor over one frame body or one record batch.
///
/// Reads advance the cursor. [`Reader::finish`] fails when bytes are left
/// over, so trailing garbage after a well-formed value is rejected.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// Creates a reader over `buf`.
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the cursor from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless everything was read.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TrailingBytes`] when input is left over.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            remaining => Err(DecodeError::TrailingBytes {
                offset: self.pos,
                remaining,
            }),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let have = self.remaining();
        if n > have {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                need: n,
                have,
            });
        }
        let start = self.pos;
        self.pos += n;
        // `start + n <= buf.len()` was checked above.
        self.buf
            .get(start..start + n)
            .ok_or(DecodeError::Truncated {
                offset: start,
                need: n,
                have,
            })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `i32`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `i64`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// Reads a `bool` encoded as `u8` 0 or 1.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input,
    /// [`DecodeError::InvalidValue`] for any byte other than 0 or 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidValue { field, offset }),
        }
    }

    /// Returns the next `n` bytes without copying them.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn raw(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let have = self.remaining();
        if n > have {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                need: n,
                have,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.buf.slice(start..start + n))
    }

    /// Reads `u32` length-prefixed bytes without copying them.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input.
    pub fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.raw(len)
    }

    /// Reads a `u16` length-prefixed UTF-8 string.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] on short input,
    /// [`DecodeError::InvalidUtf8`] when the bytes are not UTF-8.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let offset = self.pos;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { offset })
    }

    /// Reads an `option<T>` presence byte.
    ///
    /// # Errors
    ///
    /// As [`Reader::bool`].
    pub fn present(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        self.bool(field)
    }

    /// Reads a list count and checks that at least `min_element_size` bytes
    /// per element remain, so a forged count cannot make the caller reserve
    /// memory the input does not back.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] when the input cannot hold `count`
    /// elements.
    pub fn count(&mut self, min_element_size: usize) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let count = self.u32()? as usize;
        let need = count.saturating_mul(min_element_size.max(1));
        let have = self.remaining();
        if need > have {
            return Err(DecodeError::Truncated { offset, need, have });
        }
        Ok(count)
    }
}

/// Appends primitive values to a buffer, checking the length prefixes.
pub(crate) trait WriteExt: BufMut {
    fn put_string(&mut self, field: &'static str, s: &str) -> Result<(), EncodeError> {
        let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong {
            field,
            len: s.len(),
            max: usize::from(u16::MAX),
        })?;
        self.put_u16(len);
        self.put_slice(s.as_bytes());
        Ok(())
    }

    fn put_bytes32(&mut self, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        self.put_u32(len32(field, b.len())?);
        self.put_slice(b);
        Ok(())
    }

    fn put_count(&mut self, field: &'static str, n: usize) -> Result<(), EncodeError> {
        self.put_u32(len32(field, n)?);
        Ok(())
    }

    fn put_bool(&mut self, b: bool) {
        self.put_u8(u8::from(b));
    }
}

impl<B: BufMut + ?Sized> WriteExt for B {}

/// Converts a length to the `u32` of a prefix.
pub(crate) fn len32(field: &'static str, len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooLong {
        field,
        len,
        max: u32::MAX as usize,
    })
}
