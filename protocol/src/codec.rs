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
//!
//! It is the one byte reader of the workspace: storage reads its segment
//! headers, seals, index entries and key envelopes with it, and the client
//! its end-to-end headers and recipient entries, each mapping
//! [`ReadError`] into its own error type.

use bytes::{BufMut, Bytes};

use crate::error::{EncodeError, ReadError};

/// A cursor over untrusted bytes: one frame body, one record batch, or any
/// other big-endian layout (the storage crate's on-disk structures, the
/// client's end-to-end headers).
///
/// `B` is the input: [`Bytes`] (the default) for frames and batches, whose
/// slices are returned as `Bytes` sharing the input buffer, or `&[u8]` for
/// layouts parsed in place. Reads advance the cursor; a short input is a
/// [`ReadError::Truncated`] naming `{offset, need, have}`, never a panic.
/// [`Reader::finish`] fails when bytes are left over, so trailing garbage
/// after a well-formed value is rejected.
///
/// ```
/// use strongbox_protocol::codec::Reader;
/// use strongbox_protocol::error::ReadError;
///
/// let mut r = Reader::new(&[0x00, 0x2a, 0x01][..]);
/// assert_eq!(r.u16()?, 42);
/// assert_eq!(
///     r.u32(),
///     Err(ReadError::Truncated { offset: 2, need: 4, have: 1 })
/// );
/// # Ok::<(), ReadError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Reader<B = Bytes> {
    buf: B,
    pos: usize,
}

impl<B: AsRef<[u8]>> Reader<B> {
    /// Creates a reader over `buf`.
    pub fn new(buf: B) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.as_ref().len().saturating_sub(self.pos)
    }

    /// Offset of the cursor from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Fails with [`ReadError::TrailingBytes`] unless everything was read.
    ///
    /// # Errors
    ///
    /// [`ReadError::TrailingBytes`] when input is left over.
    pub fn finish(self) -> Result<(), ReadError> {
        match self.remaining() {
            0 => Ok(()),
            remaining => Err(ReadError::TrailingBytes {
                offset: self.pos,
                remaining,
            }),
        }
    }

    /// The range of the next `n` bytes, after checking they are there;
    /// advances past them.
    fn advance(&mut self, n: usize) -> Result<std::ops::Range<usize>, ReadError> {
        let have = self.remaining();
        if n > have {
            return Err(ReadError::Truncated {
                offset: self.pos,
                need: n,
                have,
            });
        }
        let start = self.pos;
        // `n <= remaining`, so `start + n <= len` and cannot overflow.
        self.pos = start + n;
        Ok(start..self.pos)
    }

    /// Returns the next `n` bytes, borrowed from the reader.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn take(&mut self, n: usize) -> Result<&[u8], ReadError> {
        let offset = self.pos;
        let range = self.advance(n)?;
        let have = self.buf.as_ref().len().saturating_sub(offset);
        // The range was checked against the input's length above.
        self.buf.as_ref().get(range).ok_or(ReadError::Truncated {
            offset,
            need: n,
            have,
        })
    }

    /// Reads `N` bytes into an array.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn u16(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `i32`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn i32(&mut self) -> Result<i32, ReadError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `i64`.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn i64(&mut self) -> Result<i64, ReadError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// Reads a `bool` encoded as `u8` 0 or 1.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input,
    /// [`ReadError::InvalidValue`] for any byte other than 0 or 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, ReadError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ReadError::InvalidValue { field, offset }),
        }
    }

    /// Reads `n` bytes of UTF-8.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input,
    /// [`ReadError::InvalidUtf8`] when the bytes are not UTF-8.
    pub fn utf8(&mut self, n: usize) -> Result<String, ReadError> {
        let offset = self.pos;
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| ReadError::InvalidUtf8 { offset })
    }

    /// Reads a `u16` length-prefixed UTF-8 string.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input,
    /// [`ReadError::InvalidUtf8`] when the bytes are not UTF-8.
    pub fn string(&mut self) -> Result<String, ReadError> {
        let len = usize::from(self.u16()?);
        self.utf8(len)
    }

    /// Reads an `option<T>` presence byte.
    ///
    /// # Errors
    ///
    /// As [`Reader::bool`].
    pub fn present(&mut self, field: &'static str) -> Result<bool, ReadError> {
        self.bool(field)
    }

    /// Reads a list count and checks that at least `min_element_size` bytes
    /// per element remain, so a forged count cannot make the caller reserve
    /// memory the input does not back.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] when the input cannot hold `count`
    /// elements.
    pub fn count(&mut self, min_element_size: usize) -> Result<usize, ReadError> {
        let offset = self.pos;
        let count = self.u32()? as usize;
        let need = count.saturating_mul(min_element_size.max(1));
        let have = self.remaining();
        if need > have {
            return Err(ReadError::Truncated { offset, need, have });
        }
        Ok(count)
    }
}

impl Reader<Bytes> {
    /// Returns the next `n` bytes without copying them.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn raw(&mut self, n: usize) -> Result<Bytes, ReadError> {
        let range = self.advance(n)?;
        Ok(self.buf.slice(range))
    }

    /// Reads `u32` length-prefixed bytes without copying them.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn bytes(&mut self) -> Result<Bytes, ReadError> {
        let len = self.u32()? as usize;
        self.raw(len)
    }
}

impl<'a> Reader<&'a [u8]> {
    /// Returns the next `n` bytes, borrowed from the input (not from the
    /// reader, so the reader can go on while they are held).
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let offset = self.pos;
        let have = self.remaining();
        let range = self.advance(n)?;
        let buf: &'a [u8] = self.buf;
        buf.get(range).ok_or(ReadError::Truncated {
            offset,
            need: n,
            have,
        })
    }

    /// Reads `u32` length-prefixed bytes, borrowed from the input.
    ///
    /// # Errors
    ///
    /// [`ReadError::Truncated`] on short input.
    pub fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let len = self.u32()? as usize;
        self.raw(len)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_big_endian_primitives_and_strings() {
        let bytes = [
            0x01, // u8
            0x01, 0x02, // u16
            0x01, 0x02, 0x03, 0x04, // u32
            0xff, 0xff, 0xff, 0xfe, // i32 -2
            0, 0, 0, 0, 0, 0, 0, 9, // u64
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // i64 -1
            1,    // bool
            0, 2, b'h', b'i', // string
        ];
        let mut r = Reader::new(&bytes[..]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u32(), Ok(0x0102_0304));
        assert_eq!(r.i32(), Ok(-2));
        assert_eq!(r.u64(), Ok(9));
        assert_eq!(r.i64(), Ok(-1));
        assert_eq!(r.bool("flag"), Ok(true));
        assert_eq!(r.string().as_deref(), Ok("hi"));
        assert_eq!(r.position(), bytes.len());
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn errors_name_offset_need_and_have() {
        let mut r = Reader::new(&[1, 2, 3][..]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(
            r.u32(),
            Err(ReadError::Truncated {
                offset: 1,
                need: 4,
                have: 2
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.position(), 1);
        assert_eq!(
            r.clone().finish(),
            Err(ReadError::TrailingBytes {
                offset: 1,
                remaining: 2
            })
        );
        assert_eq!(
            r.bool("flag"),
            Err(ReadError::InvalidValue {
                field: "flag",
                offset: 1
            })
        );
        let mut r = Reader::new(&[0xff, 0xfe][..]);
        assert_eq!(r.utf8(2), Err(ReadError::InvalidUtf8 { offset: 0 }));
        // A length near usize::MAX is a short read, not an overflow.
        let mut r = Reader::new(Bytes::from_static(b"abc"));
        assert!(matches!(
            r.raw(usize::MAX),
            Err(ReadError::Truncated {
                need: usize::MAX,
                have: 3,
                ..
            })
        ));
    }

    #[test]
    fn slices_outlive_the_borrowed_reader() {
        let input = [0, 0, 0, 2, 7, 8, 9];
        let mut r = Reader::new(&input[..]);
        let held = r.bytes().unwrap();
        // The reader goes on while `held` is alive.
        assert_eq!(r.u8(), Ok(9));
        assert_eq!(held, &[7, 8]);
    }

    /// One step of a random walk over the reader's operations.
    #[derive(Debug, Clone)]
    enum Op {
        U8,
        U16,
        U32,
        I32,
        U64,
        I64,
        Bool,
        Utf8(usize),
        Str,
        Raw(usize),
        Bytes,
        Count(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::U8),
            Just(Op::U16),
            Just(Op::U32),
            Just(Op::I32),
            Just(Op::U64),
            Just(Op::I64),
            Just(Op::Bool),
            (0usize..12).prop_map(Op::Utf8),
            Just(Op::Str),
            (0usize..40).prop_map(Op::Raw),
            Just(Op::Bytes),
            (0usize..8).prop_map(Op::Count),
        ]
    }

    /// What an operation read, as comparable text.
    fn apply<B: AsRef<[u8]>>(
        r: &mut Reader<B>,
        op: &Op,
        slice: impl Fn(&mut Reader<B>, usize) -> Result<Vec<u8>, ReadError>,
    ) -> Result<String, ReadError> {
        Ok(match op {
            Op::U8 => r.u8()?.to_string(),
            Op::U16 => r.u16()?.to_string(),
            Op::U32 => r.u32()?.to_string(),
            Op::I32 => r.i32()?.to_string(),
            Op::U64 => r.u64()?.to_string(),
            Op::I64 => r.i64()?.to_string(),
            Op::Bool => r.bool("b")?.to_string(),
            Op::Utf8(n) => r.utf8(*n)?,
            Op::Str => r.string()?,
            Op::Raw(n) => format!("{:?}", slice(r, *n)?),
            Op::Bytes => {
                let n = r.u32()? as usize;
                format!("{:?}", slice(r, n)?)
            }
            Op::Count(min) => r.count(*min)?.to_string(),
        })
    }

    proptest! {
        /// The zero-copy reader over `Bytes` and the in-place reader over a
        /// slice read the same values and fail alike; a short read names
        /// where it started and the bytes left after that point (a count
        /// names its own start and the bytes after it), a failed fixed-size
        /// read consumes nothing, and nothing panics.
        #[test]
        fn bytes_and_slice_readers_agree(
            input in proptest::collection::vec(any::<u8>(), 0..64),
            ops in proptest::collection::vec(op(), 0..24),
        ) {
            let mut owned = Reader::new(Bytes::from(input.clone()));
            let mut borrowed = Reader::new(&input[..]);
            for op in &ops {
                let before = owned.position();
                let a = apply(&mut owned, op, |r, n| r.raw(n).map(|b| b.to_vec()));
                let b = apply(&mut borrowed, op, |r, n| r.raw(n).map(<[u8]>::to_vec));
                prop_assert_eq!(&a, &b);
                prop_assert_eq!(owned.position(), borrowed.position());
                prop_assert!(owned.position() <= input.len());
                if let Err(ReadError::Truncated { offset, have, need }) = a {
                    prop_assert!(need > have);
                    prop_assert!(offset >= before);
                    // A count that was read but cannot be backed counts
                    // `have` from after its own four bytes.
                    let after_count = matches!(op, Op::Count(_)) && offset + 4 + have == input.len();
                    prop_assert!(offset + have == input.len() || after_count);
                    if matches!(op, Op::U8 | Op::U16 | Op::U32 | Op::I32 | Op::U64 | Op::I64) {
                        prop_assert_eq!(owned.position(), before);
                    }
                }
            }
            prop_assert_eq!(owned.remaining(), input.len() - owned.position());
        }
    }
}
