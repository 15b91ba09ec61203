//! The record batch: the unit of append, encryption at rest and delivery.
//!
//! A producer builds a batch with [`BatchBuilder`]; the broker checks it with
//! [`RecordBatch::parse`] (magic, flags, lengths, record framing, CRC-32C),
//! assigns it a base offset, and stores and delivers the bytes unchanged. The
//! broker never interprets keys, headers or values.
//!
//! ```text
//! offset size field
//!      0    2 magic            0x5342 ("SB")
//!      2    1 version          1
//!      3    1 flags            bits 0-2 codec (0 = none), bit 3 idempotent,
//!                              bits 4-7 reserved (zero)
//!      4    8 producer_id      0 unless idempotent
//!     12    2 producer_epoch   0 unless idempotent
//!     14    4 base_sequence    sequence of the first record; 0 unless idempotent
//!     18    8 base_timestamp   i64 milliseconds since the Unix epoch
//!     26    4 record_count     at least 1
//!     30    4 body_length      bytes of records that follow the header
//!     34    4 crc32c           CRC-32C (Castagnoli) of bytes 0..34 and the body
//!     38    . body             record_count records
//!
//! record:
//!      u32 length           bytes of the record after this field
//!      i32 timestamp_delta  milliseconds from base_timestamp
//!      u32 key_length       0xFFFF_FFFF when the record has no key
//!      ..  key
//!      u16 header_count
//!          per header: u16 name_length, name (UTF-8), u32 value_length, value
//!      u32 value_length
//!      ..  value
//! ```
//!
//! Record `i` of a batch has offset `base_offset + i` once appended and, for
//! an idempotent producer, sequence `base_sequence + i`.
//!
//! ```
//! use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
//!
//! let mut builder = BatchBuilder::new(1_700_000_000_000);
//! builder.push(1_700_000_000_005, Some(b"user-7"), &[("kind", b"signup")], b"hello")?;
//! let bytes = builder.finish()?;
//!
//! let batch = RecordBatch::parse(bytes)?;
//! let record = batch.records().next().expect("one record");
//! assert_eq!(record.timestamp, 1_700_000_000_005);
//! assert_eq!(&record.value[..], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, WriteExt};
use crate::error::{DecodeError, EncodeError, ReadError};

/// `"SB"`: the first two bytes of every record batch.
pub const BATCH_MAGIC: u16 = 0x5342;
/// The batch format version this crate writes and reads.
pub const BATCH_VERSION: u8 = 1;
/// Bytes in the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 38;
/// Byte offset of the CRC field in the header.
const CRC_OFFSET: usize = 34;
/// The smallest encoded record: length, delta, key length, header count, value length.
pub const MIN_RECORD_LEN: usize = 4 + 4 + 4 + 2 + 4;
/// `key_length` value that marks a record without a key.
pub const NO_KEY: u32 = u32::MAX;
/// The largest record batch the wire can carry: a `Records` frame holding
/// one batch of this length is a frame of
/// [`ABSOLUTE_MAX_FRAME_SIZE`](crate::frame::ABSOLUTE_MAX_FRAME_SIZE). A
/// batch is never split, so a broker whose `max_batch_size` is larger could
/// not deliver its batches to any client, and the handshake refuses every
/// client of such a broker (`frame_size_too_small`).
pub const MAX_WIRE_BATCH_LEN: usize =
    (crate::frame::ABSOLUTE_MAX_FRAME_SIZE - crate::frames::subscribe::RECORDS_FRAMING) as usize;

/// Bytes one record adds to a batch, its length prefix included, given the
/// length of its key (0 for none), the `(name, value)` lengths of its
/// headers and the length of its value: [`MIN_RECORD_LEN`] plus the key, and
/// per header `u16` name length, name, `u32` value length, value, plus the
/// value.
///
/// The one size formula of the record layout above: the builder reserves
/// with it and producers size their batches and buffers with it.
pub fn record_len(
    key_len: usize,
    headers: impl IntoIterator<Item = (usize, usize)>,
    value_len: usize,
) -> usize {
    let headers: usize = headers
        .into_iter()
        .map(|(name, value)| 2 + name + 4 + value)
        .sum();
    MIN_RECORD_LEN + key_len + headers + value_len
}

const FLAG_CODEC_MASK: u8 = 0b0000_0111;
const FLAG_IDEMPOTENT: u8 = 0b0000_1000;
const FLAG_RESERVED: u8 = 0b1111_0000;

/// Compression codec of a batch body. Compression happens in the producer
/// before any end-to-end sealing; the broker never decompresses.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The body is stored as is.
    None = 0,
}

/// The idempotent-producer fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerStamp {
    /// Broker-assigned producer id.
    pub producer_id: u64,
    /// Producer epoch; a newer epoch fences older instances.
    pub epoch: u16,
    /// Sequence number of the first record of the batch.
    pub base_sequence: u32,
}

/// The fixed header of a record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Compression codec of the body.
    pub codec: Codec,
    /// Present when the batch comes from an idempotent producer.
    pub producer: Option<ProducerStamp>,
    /// Timestamp of the batch in milliseconds since the Unix epoch; record
    /// timestamps are deltas from it.
    pub base_timestamp: i64,
    /// Number of records, at least 1.
    pub record_count: u32,
    /// Bytes of the body.
    pub body_length: u32,
    /// CRC-32C over the header (without this field) and the body.
    pub crc: u32,
}

impl BatchHeader {
    /// Sequence of the last record, for an idempotent batch.
    pub fn last_sequence(&self) -> Option<u32> {
        let p = self.producer?;
        p.base_sequence
            .checked_add(self.record_count.checked_sub(1)?)
    }
}

/// A record batch whose framing and CRC have been checked.
///
/// Holds the batch's bytes (shared, not copied) and the facts the broker
/// needs without reading the records again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
    header: BatchHeader,
    max_timestamp: i64,
}

impl RecordBatch {
    /// Checks `bytes` as one complete record batch.
    ///
    /// Verifies magic, version, flags, the CRC-32C, that `body_length`
    /// covers exactly the rest of the input, and that the body holds exactly
    /// `record_count` well-framed records with UTF-8 header names.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming the first problem found;
    /// [`DecodeError::CrcMismatch`] when the contents do not match the CRC.
    pub fn parse(bytes: Bytes) -> Result<Self, DecodeError> {
        let header = parse_header(&bytes)?;
        let body = bytes.slice(BATCH_HEADER_LEN..);
        let computed = batch_crc(&bytes);
        if computed != header.crc {
            return Err(DecodeError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        let mut max_timestamp = i64::MIN;
        let mut records = RecordReader::new(body, header.base_timestamp);
        let mut count: u32 = 0;
        while records.reader.remaining() > 0 {
            let record = records.next_record()?;
            max_timestamp = max_timestamp.max(record.timestamp);
            count = count.checked_add(1).ok_or(DecodeError::InvalidValue {
                field: "record_count",
                offset: 26,
            })?;
        }
        if count != header.record_count {
            return Err(DecodeError::InvalidValue {
                field: "record_count",
                offset: 26,
            });
        }
        if header.last_sequence().is_none() && header.producer.is_some() {
            return Err(DecodeError::InvalidValue {
                field: "base_sequence",
                offset: 14,
            });
        }
        Ok(Self {
            bytes,
            header,
            max_timestamp,
        })
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch as received, header included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the batch, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// The largest record timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a valid batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Iterates the records without copying keys, headers or values.
    pub fn records(&self) -> Records {
        Records {
            inner: RecordReader::new(
                self.bytes.slice(BATCH_HEADER_LEN..),
                self.header.base_timestamp,
            ),
            index: 0,
        }
    }
}

/// Reads only the fixed header of `bytes` and checks magic, version, flags
/// and that `body_length` matches the input. Does not check the CRC.
///
/// # Errors
///
/// [`DecodeError`] for a short or inconsistent header.
pub fn parse_header(bytes: &[u8]) -> Result<BatchHeader, DecodeError> {
    let mut r = Reader::new(
        bytes
            .get(..BATCH_HEADER_LEN)
            .ok_or(DecodeError::Truncated {
                offset: 0,
                need: BATCH_HEADER_LEN,
                have: bytes.len(),
            })?,
    );
    if r.u16()? != BATCH_MAGIC {
        return Err(DecodeError::InvalidValue {
            field: "magic",
            offset: 0,
        });
    }
    if r.u8()? != BATCH_VERSION {
        return Err(DecodeError::InvalidValue {
            field: "version",
            offset: 2,
        });
    }
    let flags = r.u8()?;
    if flags & FLAG_RESERVED != 0 {
        return Err(DecodeError::InvalidValue {
            field: "flags",
            offset: 3,
        });
    }
    let codec = match flags & FLAG_CODEC_MASK {
        0 => Codec::None,
        other => return Err(DecodeError::UnsupportedCodec(other)),
    };
    let producer_id = r.u64()?;
    let epoch = r.u16()?;
    let base_sequence = r.u32()?;
    let producer = if flags & FLAG_IDEMPOTENT != 0 {
        Some(ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        })
    } else {
        if producer_id != 0 || epoch != 0 || base_sequence != 0 {
            return Err(DecodeError::InvalidValue {
                field: "producer_id",
                offset: 4,
            });
        }
        None
    };
    let base_timestamp = r.i64()?;
    let record_count = r.u32()?;
    if record_count == 0 {
        return Err(DecodeError::InvalidValue {
            field: "record_count",
            offset: 26,
        });
    }
    let body_length = r.u32()?;
    let crc = r.u32()?;
    let body_have = bytes.len() - BATCH_HEADER_LEN;
    match (body_length as usize).cmp(&body_have) {
        std::cmp::Ordering::Greater => {
            return Err(DecodeError::Truncated {
                offset: BATCH_HEADER_LEN,
                need: body_length as usize,
                have: body_have,
            });
        }
        std::cmp::Ordering::Less => {
            return Err(DecodeError::TrailingBytes {
                offset: BATCH_HEADER_LEN + body_length as usize,
                remaining: body_have - body_length as usize,
            });
        }
        std::cmp::Ordering::Equal => {}
    }
    Ok(BatchHeader {
        codec,
        producer,
        base_timestamp,
        record_count,
        body_length,
        crc,
    })
}

/// CRC-32C of a whole encoded batch: header bytes before the CRC field,
/// then everything after it.
fn batch_crc(bytes: &[u8]) -> u32 {
    let head = bytes.get(..CRC_OFFSET).unwrap_or(&[]);
    let tail = bytes.get(BATCH_HEADER_LEN..).unwrap_or(&[]);
    crc32c::crc32c_append(crc32c::crc32c(head), tail)
}

/// One record of a batch. Keys, header values and values share the batch's
/// buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the batch; its offset is the batch's base offset plus this.
    pub index: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The record key, used for partitioning and compaction.
    pub key: Option<Bytes>,
    /// Header entries in the order written.
    pub headers: Headers,
    /// The value; opaque to the broker (often an end-to-end envelope).
    pub value: Bytes,
}

/// The headers of one record, read lazily from the batch buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    raw: Bytes,
    count: u16,
}

impl Headers {
    /// Number of headers.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when the record has no headers.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates `(name, value)` pairs.
    pub fn iter(&self) -> HeaderIter {
        HeaderIter {
            reader: Reader::new(self.raw.clone()),
            left: self.count,
        }
    }

    /// The first header named `name`.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        self.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Iterator over a record's headers.
#[derive(Debug)]
pub struct HeaderIter {
    reader: Reader,
    left: u16,
}

impl Iterator for HeaderIter {
    type Item = (String, Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `RecordBatch::parse`; stop rather than panic if not.
        let name = self.reader.string().ok()?;
        let value = self.reader.bytes().ok()?;
        Some((name, value))
    }
}

/// Iterator over the records of a [`RecordBatch`].
#[derive(Debug)]
pub struct Records {
    inner: RecordReader,
    index: u32,
}

impl Iterator for Records {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.inner.reader.remaining() == 0 {
            return None;
        }
        // The batch was validated when parsed, so this cannot fail; stop
        // rather than panic if it somehow does.
        let mut record = self.inner.next_record().ok()?;
        record.index = self.index;
        self.index = self.index.saturating_add(1);
        Some(record)
    }
}

#[derive(Debug)]
struct RecordReader {
    reader: Reader,
    base_timestamp: i64,
}

impl RecordReader {
    fn new(body: Bytes, base_timestamp: i64) -> Self {
        Self {
            reader: Reader::new(body),
            base_timestamp,
        }
    }

    fn next_record(&mut self) -> Result<Record, DecodeError> {
        let start = self.reader.position() + BATCH_HEADER_LEN;
        // Both readers count from their own start; errors name batch bytes.
        let len = self.reader.u32().map_err(|e| shift(e, BATCH_HEADER_LEN))? as usize;
        let record = self
            .reader
            .raw(len)
            .map_err(|e| shift(e, BATCH_HEADER_LEN))?;
        let mut r = Reader::new(record.clone());
        let at = |r: &Reader| start + 4 + r.position();
        let delta = r.i32().map_err(|e| shift(e, start + 4))?;
        let timestamp =
            self.base_timestamp
                .checked_add(i64::from(delta))
                .ok_or(DecodeError::InvalidValue {
                    field: "timestamp_delta",
                    offset: start + 4,
                })?;
        let key_len = r.u32().map_err(|e| shift(e, start + 4))?;
        let key = if key_len == NO_KEY {
            None
        } else {
            Some(r.raw(key_len as usize).map_err(|e| shift(e, start + 4))?)
        };
        let count = r.u16().map_err(|e| shift(e, start + 4))?;
        let headers_start = r.position();
        for _ in 0..count {
            let offset = at(&r);
            r.string().map_err(|e| match e {
                ReadError::InvalidUtf8 { .. } => DecodeError::InvalidUtf8 { offset },
                e => shift(e, start + 4),
            })?;
            r.bytes().map_err(|e| shift(e, start + 4))?;
        }
        let headers_end = r.position();
        let value = r.bytes().map_err(|e| shift(e, start + 4))?;
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                offset: at(&r),
                remaining: r.remaining(),
            });
        }
        // Both positions come from the reader over `record`, so they are in
        // range; `slice_ref` would also work but needs the subslice.
        let raw_headers = record.slice(headers_start..headers_end);
        Ok(Record {
            index: 0,
            timestamp,
            key,
            headers: Headers {
                raw: raw_headers,
                count,
            },
            value,
        })
    }
}

fn shift(e: ReadError, by: usize) -> DecodeError {
    match e {
        ReadError::Truncated { offset, need, have } => DecodeError::Truncated {
            offset: offset + by,
            need,
            have,
        },
        other => other.into(),
    }
}

/// Builds a record batch.
///
/// Records are encoded as they are pushed, so [`BatchBuilder::encoded_len`]
/// is exact and the producer can close a batch before it would exceed the
/// broker's limit.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    base_timestamp: i64,
    producer: Option<ProducerStamp>,
    count: u32,
}

impl BatchBuilder {
    /// Starts a batch whose record timestamps are deltas from `base_timestamp`.
    pub fn new(base_timestamp: i64) -> Self {
        Self::with_capacity(base_timestamp, 16 * 1024)
    }

    /// Starts a batch with room for `capacity` bytes before reallocating.
    pub fn with_capacity(base_timestamp: i64, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(BATCH_HEADER_LEN));
        buf.put_bytes(0, BATCH_HEADER_LEN);
        Self {
            buf,
            base_timestamp,
            producer: None,
            count: 0,
        }
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn producer(&mut self, stamp: ProducerStamp) -> &mut Self {
        self.producer = Some(stamp);
        self
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The length of the batch if it were finished now.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes that pushing this record would add: [`record_len`] of its
    /// parts' lengths.
    pub fn record_len(key: Option<&[u8]>, headers: &[(&str, &[u8])], value: &[u8]) -> usize {
        record_len(
            key.map_or(0, <[u8]>::len),
            headers.iter().map(|(n, v)| (n.len(), v.len())),
            value.len(),
        )
    }

    /// Appends a record.
    ///
    /// # Errors
    ///
    /// [`EncodeError::OutOfRange`] when the timestamp is more than
    /// `i32::MAX` milliseconds from the base timestamp, or the batch already
    /// holds `u32::MAX` records; [`EncodeError::TooLong`] when a field is
    /// longer than its length prefix allows.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
    ) -> Result<(), EncodeError> {
        let delta = timestamp
            .checked_sub(self.base_timestamp)
            .and_then(|d| i32::try_from(d).ok())
            .ok_or_else(|| EncodeError::OutOfRange {
                field: "timestamp_delta",
                detail: format!(
                    "record timestamp {timestamp} is too far from batch base {}",
                    self.base_timestamp
                ),
            })?;
        let count = self
            .count
            .checked_add(1)
            .ok_or_else(|| EncodeError::OutOfRange {
                field: "record_count",
                detail: "a batch holds at most u32::MAX records".into(),
            })?;
        if key.is_some_and(|k| k.len() >= NO_KEY as usize) {
            return Err(EncodeError::TooLong {
                field: "key",
                len: key.map_or(0, <[u8]>::len),
                max: NO_KEY as usize - 1,
            });
        }
        let header_count = u16::try_from(headers.len()).map_err(|_| EncodeError::TooLong {
            field: "header_count",
            len: headers.len(),
            max: usize::from(u16::MAX),
        })?;
        let record_len = Self::record_len(key, headers, value) - 4;
        let record_len = crate::codec::len32("record", record_len)?;
        let mark = self.buf.len();
        let result = (|| {
            self.buf.put_u32(record_len);
            self.buf.put_i32(delta);
            match key {
                Some(k) => self.buf.put_bytes32("key", k)?,
                None => self.buf.put_u32(NO_KEY),
            }
            self.buf.put_u16(header_count);
            for (name, v) in headers {
                self.buf.put_string("header name", name)?;
                self.buf.put_bytes32("header value", v)?;
            }
            self.buf.put_bytes32("value", value)
        })();
        if let Err(e) = result {
            self.buf.truncate(mark);
            return Err(e);
        }
        self.count = count;
        Ok(())
    }

    /// Writes the header and CRC and returns the batch.
    ///
    /// # Errors
    ///
    /// [`EncodeError::OutOfRange`] for an empty batch, a body over 4 GiB, or
    /// an idempotent batch whose last sequence would overflow `u32`.
    pub fn finish(mut self) -> Result<Bytes, EncodeError> {
        if self.count == 0 {
            return Err(EncodeError::OutOfRange {
                field: "record_count",
                detail: "a batch needs at least one record".into(),
            });
        }
        // `RecordBatch::parse` refuses a batch whose last sequence overflows.
        if let Some(p) = self.producer
            && p.base_sequence.checked_add(self.count - 1).is_none()
        {
            return Err(EncodeError::OutOfRange {
                field: "base_sequence",
                detail: format!(
                    "base_sequence {} + {} records overflows u32",
                    p.base_sequence, self.count
                ),
            });
        }
        let body_length = crate::codec::len32("body", self.buf.len() - BATCH_HEADER_LEN)?;
        let mut header = [0u8; BATCH_HEADER_LEN];
        {
            let mut h = &mut header[..];
            h.put_u16(BATCH_MAGIC);
            h.put_u8(BATCH_VERSION);
            let (flags, stamp) = match self.producer {
                Some(p) => (FLAG_IDEMPOTENT, p),
                None => (
                    0,
                    ProducerStamp {
                        producer_id: 0,
                        epoch: 0,
                        base_sequence: 0,
                    },
                ),
            };
            h.put_u8(flags | Codec::None as u8);
            h.put_u64(stamp.producer_id);
            h.put_u16(stamp.epoch);
            h.put_u32(stamp.base_sequence);
            h.put_i64(self.base_timestamp);
            h.put_u32(self.count);
            h.put_u32(body_length);
        }
        if let Some(dst) = self.buf.get_mut(..BATCH_HEADER_LEN) {
            dst.copy_from_slice(&header);
        }
        let crc = batch_crc(&self.buf);
        if let Some(dst) = self.buf.get_mut(CRC_OFFSET..BATCH_HEADER_LEN) {
            dst.copy_from_slice(&crc.to_be_bytes());
        }
        Ok(self.buf.freeze())
    }
}
