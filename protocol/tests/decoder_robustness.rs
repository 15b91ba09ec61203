//! The decoders against hostile and broken input: no panics, bounded
//! memory, truncation asks for more, every corruption is caught.

mod common;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use strongbox_protocol::ErrorCode;
use strongbox_protocol::batch::{
    BATCH_HEADER_LEN, BatchBuilder, ProducerStamp, RecordBatch, parse_header,
};
use strongbox_protocol::codec::Reader;
use strongbox_protocol::error::ReadError;
use strongbox_protocol::error::{DecodeError, EncodeError};
use strongbox_protocol::frame::{
    DEFAULT_MAX_FRAME_SIZE, Decoded, FRAME_HEADER_LEN, Frame, FrameDecoder, FrameType, decode_frame,
};
use strongbox_protocol::frames::admin::AdminRequest;
use strongbox_protocol::model::{Durability, Operations, TopicConfig};

use common::{
    arb_batch_spec, arb_frame, build_batch, crc32c_reference, encode, fix_body_length, fix_crc,
    raw_frame, unhex,
};

/// Drains `decoder`, returning the frames and the error that stopped it.
fn drain(decoder: &mut FrameDecoder) -> (Vec<Frame>, Option<DecodeError>) {
    let mut frames = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Concatenated encodings of `frames`.
fn stream_of(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| encode(f).to_vec()).collect()
}

// ---- arbitrary input ---------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Whatever the bytes, `decode_frame` returns; a frame it accepts is the
    /// canonical encoding of what it returns.
    #[test]
    fn decode_frame_never_panics(
        bytes in vec(any::<u8>(), 0..600),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME_SIZE), 2u32..1024],
    ) {
        let bytes = Bytes::from(bytes);
        match decode_frame(&bytes, max) {
            Ok(Decoded::Frame(frame, used)) => {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(encode(&frame), bytes.slice(..used));
            }
            Ok(Decoded::NeedMore(n)) => prop_assert!(n > 0),
            Err(_) => {}
        }
    }

    /// Bytes that start like a frame of a known type (a plausible length
    /// and a real type code) reach the body decoders.
    #[test]
    fn frame_bodies_never_panic(
        ty in proptest::sample::select(FrameType::ALL),
        body in vec(any::<u8>(), 0..300),
    ) {
        let wire = raw_frame(ty.as_u16(), &body);
        match decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE) {
            Ok(Decoded::Frame(frame, used)) => {
                prop_assert_eq!(used, wire.len());
                prop_assert_eq!(frame.frame_type(), ty);
                prop_assert_eq!(encode(&frame), wire);
            }
            Ok(Decoded::NeedMore(_)) => prop_assert!(false, "a whole frame needs no more"),
            Err(e) => prop_assert_eq!(e.code(), ErrorCode::MalformedFrame, "{}", e),
        }
    }

    /// The streaming decoder never panics and its buffer stays within one
    /// maximum frame plus one read, whatever arrives.
    #[test]
    fn frame_decoder_never_panics(
        chunks in vec(vec(any::<u8>(), 0..128), 0..24),
        max in 2u32..2048,
    ) {
        let mut decoder = FrameDecoder::new(max);
        let largest_read = chunks.iter().map(Vec::len).max().unwrap_or(0);
        let bound = max as usize + FRAME_HEADER_LEN + largest_read;
        for chunk in &chunks {
            decoder.extend(chunk);
            prop_assert!(decoder.capacity() <= bound);
            let (_, error) = drain(&mut decoder);
            prop_assert!(decoder.capacity() <= bound);
            if error.is_some() {
                break;
            }
        }
    }

    /// Arbitrary bytes, and arbitrary bytes behind a valid magic and
    /// version, never panic the batch parser; whatever it accepts agrees
    /// with its header.
    #[test]
    fn batch_parse_never_panics(
        bytes in vec(any::<u8>(), 0..300),
        prefixed in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if prefixed {
            bytes.splice(0..0, [0x53, 0x42, 0x01]);
        }
        let bytes = Bytes::from(bytes);
        let header = parse_header(&bytes);
        if let Ok(batch) = RecordBatch::parse(bytes) {
            prop_assert_eq!(header, Ok(*batch.header()));
            prop_assert_eq!(batch.records().count() as u32, batch.record_count());
        }
    }

    /// A valid header and CRC around an arbitrary body: the record framing
    /// checks run on every input and never panic; a body they accept holds
    /// exactly `record_count` records.
    #[test]
    fn batch_bodies_never_panic(
        body in vec(any::<u8>(), 0..300),
        record_count in 1u32..6,
        idempotent in any::<bool>(),
    ) {
        let mut bytes = unhex("5342 01 00 0000000000000000 0000 00000000 0000000000000000");
        if idempotent {
            bytes[3] = 0x08;
            bytes[11] = 9;
        }
        bytes.extend_from_slice(&record_count.to_be_bytes());
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&body);
        fix_body_length(&mut bytes);
        fix_crc(&mut bytes);
        if let Ok(batch) = RecordBatch::parse(Bytes::from(bytes)) {
            prop_assert_eq!(batch.records().count() as u32, record_count);
            for record in batch.records() {
                prop_assert_eq!(record.headers.iter().count(), record.headers.len());
            }
        }
    }
}

// ---- length prefix -------------------------------------------------------------

proptest! {
    /// A declared length over the limit fails as soon as the four length
    /// bytes are in, before any of the body is buffered or reserved.
    #[test]
    fn oversized_length_fails_before_buffering(
        max in 2u32..(64 * 1024 * 1024),
        over in 1u32..u32::MAX,
        tail in vec(any::<u8>(), 0..16),
    ) {
        let len = max.saturating_add(over);
        prop_assume!(len > max);
        let mut wire = len.to_be_bytes().to_vec();
        let expected = DecodeError::FrameTooLarge { len: len as usize, max: max as usize };
        prop_assert_eq!(decode_frame(&Bytes::from(wire.clone()), max), Err(expected.clone()));
        prop_assert_eq!(expected.code(), ErrorCode::FrameTooLarge);
        wire.extend_from_slice(&tail);
        let mut decoder = FrameDecoder::new(max);
        decoder.extend(&wire);
        prop_assert_eq!(decoder.next_frame(), Err(expected));
        prop_assert!(decoder.capacity() <= 64, "capacity {}", decoder.capacity());
    }
}

#[test]
fn length_shorter_than_the_type_is_refused() {
    for len in [0u32, 1] {
        let wire = Bytes::from(len.to_be_bytes().to_vec());
        assert_eq!(
            decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE),
            Err(DecodeError::FrameTooShort(len as usize))
        );
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        decoder.extend(&wire);
        assert_eq!(
            decoder.next_frame(),
            Err(DecodeError::FrameTooShort(len as usize))
        );
    }
}

#[test]
fn a_frame_exactly_at_the_limit_is_accepted() {
    let frame = Frame::Ping(strongbox_protocol::frames::control::Ping { nonce: 3 });
    let wire = encode(&frame);
    let limit = (wire.len() - FRAME_HEADER_LEN) as u32;
    assert_eq!(
        decode_frame(&wire, limit),
        Ok(Decoded::Frame(frame.clone(), wire.len()))
    );
    assert_eq!(
        decode_frame(&wire, limit - 1),
        Err(DecodeError::FrameTooLarge {
            len: limit as usize,
            max: limit as usize - 1
        })
    );
}

/// Back-to-back maximum-size frames read in pieces that straddle frame
/// boundaries: the buffer holds at most one maximum frame plus one read.
#[test]
fn capacity_stays_within_one_frame_while_max_size_frames_stream_in() {
    let max: u32 = 64 * 1024;
    // An AdminOk whose message fills the frame: type 2 + length 2 + text.
    let text = "a".repeat(max as usize - 4);
    let frame =
        Frame::Response(strongbox_protocol::frames::admin::AdminResponse::Ok { message: text });
    let wire = frame.to_bytes(max).unwrap();
    assert_eq!(wire.len(), max as usize + FRAME_HEADER_LEN);
    let stream: Vec<u8> = wire
        .iter()
        .copied()
        .cycle()
        .take(wire.len() * 4 + 77)
        .collect();
    for chunk in [1usize, 7, 1000, 4096, 16 * 1024, 70_000] {
        let mut decoder = FrameDecoder::new(max);
        let mut decoded = 0;
        let mut held = Vec::new();
        // One maximum frame plus one read.
        let bound = max as usize + FRAME_HEADER_LEN + chunk;
        for piece in stream.chunks(chunk) {
            decoder.extend(piece);
            assert!(
                decoder.capacity() <= bound,
                "chunk {chunk}: capacity {} over {bound}",
                decoder.capacity()
            );
            let (frames, error) = drain(&mut decoder);
            assert_eq!(error, None);
            decoded += frames.len();
            // Keep the frames alive, as a broker handing batches to storage
            // would: the decoder must not rely on reclaiming their memory.
            held.extend(frames);
            assert!(decoder.capacity() <= bound);
        }
        assert_eq!(decoded, 4, "chunk {chunk}");
        assert_eq!(decoder.buffered(), 77);
        assert!(held.iter().all(|f| *f == frame));
    }
}

// ---- truncation and chunking ----------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every strict prefix of a valid frame asks for more bytes, and says
    /// how many without overshooting.
    #[test]
    fn every_strict_prefix_needs_more(frame in arb_frame()) {
        let wire = encode(&frame);
        for cut in 0..wire.len() {
            let prefix = wire.slice(..cut);
            match decode_frame(&prefix, DEFAULT_MAX_FRAME_SIZE) {
                Ok(Decoded::NeedMore(n)) => {
                    prop_assert!(n > 0);
                    prop_assert!(cut + n <= wire.len(), "cut {} asks for {}", cut, n);
                    if cut >= FRAME_HEADER_LEN {
                        prop_assert_eq!(cut + n, wire.len());
                    }
                }
                other => prop_assert!(false, "prefix of {} bytes gave {:?}", cut, other),
            }
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
            decoder.extend(&prefix);
            prop_assert_eq!(decoder.next_frame(), Ok(None));
        }
    }

    /// Feeding a stream one byte at a time decodes the same frames.
    #[test]
    fn byte_at_a_time_decodes_the_same_frames(frames in vec(arb_frame(), 1..6)) {
        let stream = stream_of(&frames);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut decoded = Vec::new();
        for byte in &stream {
            decoder.extend(std::slice::from_ref(byte));
            let (mut got, error) = drain(&mut decoder);
            prop_assert_eq!(error, None);
            decoded.append(&mut got);
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    /// Any split of the stream into reads decodes the same frames.
    #[test]
    fn any_chunking_decodes_the_same_frames(
        frames in vec(arb_frame(), 1..8),
        cuts in vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let stream = stream_of(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut decoded = Vec::new();
        for pair in cuts.windows(2) {
            decoder.extend(&stream[pair[0]..pair[1]]);
            let (mut got, error) = drain(&mut decoder);
            prop_assert_eq!(error, None);
            decoded.append(&mut got);
        }
        prop_assert_eq!(decoded, frames);
    }
}

// ---- trailing bytes -------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Bytes after a body's last field make the frame malformed, even when
    /// the length prefix covers them.
    #[test]
    fn trailing_bytes_in_a_body_are_rejected(
        frame in arb_frame(),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let wire = encode(&frame);
        let mut body = wire[FRAME_HEADER_LEN + 2..].to_vec();
        let body_len = body.len();
        body.extend_from_slice(&extra);
        let padded = raw_frame(frame.frame_type().as_u16(), &body);
        if matches!(&frame, Frame::Error(e) if e.leader_hint.is_none()) {
            // The one optional field: what follows an `Error`'s message is
            // read as a leader hint. It decodes only when it is one,
            // canonically; anything else is malformed.
            match decode_frame(&padded, DEFAULT_MAX_FRAME_SIZE) {
                Ok(Decoded::Frame(f, n)) => {
                    prop_assert_eq!(n, padded.len());
                    prop_assert_eq!(encode(&f), padded);
                }
                Ok(other) => prop_assert!(false, "{:?}", other),
                Err(e) => prop_assert_eq!(e.code(), ErrorCode::MalformedFrame),
            }
            return Ok(());
        }
        let expected = DecodeError::TrailingBytes { offset: body_len, remaining: extra.len() };
        prop_assert_eq!(decode_frame(&padded, DEFAULT_MAX_FRAME_SIZE), Err(expected.clone()));
        prop_assert_eq!(expected.code(), ErrorCode::MalformedFrame);
    }

    /// Bytes after a batch's body are rejected, whether or not
    /// `body_length` was adjusted to cover them.
    #[test]
    fn trailing_bytes_after_a_batch_are_rejected(
        spec in arb_batch_spec(),
        extra in vec(any::<u8>(), 1..40),
    ) {
        let mut bytes = build_batch(&spec).to_vec();
        let len = bytes.len();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(
            RecordBatch::parse(Bytes::from(bytes.clone())),
            Err(DecodeError::TrailingBytes { offset: len, remaining: extra.len() })
        );
        fix_body_length(&mut bytes);
        fix_crc(&mut bytes);
        prop_assert!(RecordBatch::parse(Bytes::from(bytes)).is_err());
    }
}

#[test]
fn trailing_bytes_inside_a_record_are_rejected() {
    let mut b = BatchBuilder::new(0);
    b.push(0, None, &[], b"v").unwrap();
    let mut bytes = b.finish().unwrap().to_vec();
    // Grow the record's length by one and append a byte inside it.
    let record_len = u32::from_be_bytes(bytes[38..42].try_into().unwrap());
    bytes[38..42].copy_from_slice(&(record_len + 1).to_be_bytes());
    bytes.push(0xAB);
    fix_body_length(&mut bytes);
    fix_crc(&mut bytes);
    assert!(matches!(
        RecordBatch::parse(Bytes::from(bytes)),
        Err(DecodeError::TrailingBytes { remaining: 1, .. })
    ));
}

// ---- corruption of batches ------------------------------------------------------

fn sample_batch() -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    b.producer(ProducerStamp {
        producer_id: 77,
        epoch: 2,
        base_sequence: 10,
    });
    b.push(
        1_700_000_000_000,
        Some(b"key"),
        &[("a", b"1"), ("b", b"")],
        b"value",
    )
    .unwrap();
    b.push(1_699_999_999_000, None, &[], b"").unwrap();
    b.push(1_700_000_000_001, Some(b""), &[("c", b"xyz")], b"v")
        .unwrap();
    b.finish().unwrap()
}

/// Every single-byte change anywhere in a batch is detected: by the header
/// checks, the framing or the CRC.
#[test]
fn flipping_any_byte_of_a_batch_is_caught() {
    let batch = sample_batch();
    assert!(RecordBatch::parse(batch.clone()).is_ok());
    for pos in 0..batch.len() {
        for mask in 1..=255u8 {
            let mut bytes = batch.to_vec();
            bytes[pos] ^= mask;
            let result = RecordBatch::parse(Bytes::from(bytes));
            assert!(result.is_err(), "byte {pos} ^ {mask:#04x} went unnoticed");
        }
    }
}

#[test]
fn a_corrupted_body_is_reported_as_a_crc_mismatch() {
    let batch = sample_batch();
    let mut bytes = batch.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = RecordBatch::parse(Bytes::from(bytes)).unwrap_err();
    assert!(matches!(err, DecodeError::CrcMismatch { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::CorruptBatch);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn flipping_a_byte_of_any_batch_is_caught(
        spec in arb_batch_spec(),
        pos in any::<prop::sample::Index>(),
        mask in 1..=255u8,
    ) {
        let batch = build_batch(&spec);
        let mut bytes = batch.to_vec();
        let pos = pos.index(bytes.len());
        bytes[pos] ^= mask;
        prop_assert!(RecordBatch::parse(Bytes::from(bytes)).is_err());
    }

    #[test]
    fn truncating_a_batch_is_caught(
        spec in arb_batch_spec(),
        cut in any::<prop::sample::Index>(),
    ) {
        let batch = build_batch(&spec);
        let cut = cut.index(batch.len());
        prop_assert!(RecordBatch::parse(batch.slice(..cut)).is_err());
    }

    /// The CRC field holds CRC-32C of bytes 0..34 followed by the body,
    /// computed here by an independent implementation.
    #[test]
    fn crc_covers_the_header_and_the_body(spec in arb_batch_spec()) {
        let batch = build_batch(&spec);
        let mut covered = batch[..34].to_vec();
        covered.extend_from_slice(&batch[BATCH_HEADER_LEN..]);
        let stored = u32::from_be_bytes(batch[34..38].try_into().unwrap());
        prop_assert_eq!(stored, crc32c_reference(&covered));
    }
}

/// Header fields that are checked before (or regardless of) the CRC.
#[test]
fn batch_header_violations_are_refused() {
    let good = sample_batch().to_vec();
    let invalid = |field: &'static str, offset: usize| DecodeError::InvalidValue { field, offset };
    // (what to change, expected error), each with the CRC fixed afterwards.
    type Change = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Change, DecodeError)> = vec![
        ("magic", Box::new(|b| b[0] = b'X'), invalid("magic", 0)),
        ("version", Box::new(|b| b[2] = 2), invalid("version", 2)),
        (
            "reserved flag bits",
            Box::new(|b| b[3] |= 0x10),
            invalid("flags", 3),
        ),
        (
            "codec",
            Box::new(|b| b[3] |= 0x01),
            DecodeError::UnsupportedCodec(1),
        ),
        (
            "producer fields without the idempotent flag",
            Box::new(|b| b[3] &= !0x08),
            invalid("producer_id", 4),
        ),
        (
            "record_count 0",
            Box::new(|b| b[26..30].copy_from_slice(&0u32.to_be_bytes())),
            invalid("record_count", 26),
        ),
        (
            "record_count larger than the records",
            Box::new(|b| b[26..30].copy_from_slice(&4u32.to_be_bytes())),
            invalid("record_count", 26),
        ),
        (
            "record_count smaller than the records",
            Box::new(|b| b[26..30].copy_from_slice(&2u32.to_be_bytes())),
            invalid("record_count", 26),
        ),
        (
            "last sequence overflows",
            Box::new(|b| b[14..18].copy_from_slice(&(u32::MAX - 1).to_be_bytes())),
            invalid("base_sequence", 14),
        ),
        (
            // The third record (at byte 97) is 1 ms after the base.
            "timestamp delta overflows",
            Box::new(|b| b[18..26].copy_from_slice(&i64::MAX.to_be_bytes())),
            invalid("timestamp_delta", 101),
        ),
    ];
    for (what, change, expected) in cases {
        let mut bytes = good.clone();
        change(&mut bytes);
        fix_crc(&mut bytes);
        assert_eq!(
            RecordBatch::parse(Bytes::from(bytes)),
            Err(expected),
            "{what}"
        );
    }
    assert_eq!(
        DecodeError::UnsupportedCodec(1).code(),
        ErrorCode::UnsupportedCodec
    );
}

// ---- counts, tags, strings, types ---------------------------------------------

#[test]
fn reader_count_refuses_counts_the_input_cannot_back() {
    // A count of 3 elements of at least 4 bytes needs 12 bytes after it.
    let mut body = 3u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0; 11]);
    let mut r = Reader::new(Bytes::from(body.clone()));
    assert_eq!(
        r.count(4),
        Err(ReadError::Truncated {
            offset: 0,
            need: 12,
            have: 11
        })
    );
    body.push(0);
    let mut r = Reader::new(Bytes::from(body));
    assert_eq!(r.count(4), Ok(3));
    assert_eq!(r.remaining(), 12);
    // The largest count with elements of the largest size does not overflow.
    let mut r = Reader::new(Bytes::from(u32::MAX.to_be_bytes().to_vec()));
    assert!(matches!(
        r.count(usize::MAX),
        Err(ReadError::Truncated { .. })
    ));
    // A minimum size of 0 still requires a byte per element.
    let mut r = Reader::new(Bytes::from(vec![0, 0, 0, 2, 9]));
    assert!(matches!(
        r.count(0),
        Err(ReadError::Truncated {
            need: 2,
            have: 1,
            ..
        })
    ));
}

/// A forged element count in every list-carrying frame fails as truncated
/// input instead of reserving memory for it.
#[test]
fn forged_counts_fail_without_allocating() {
    let huge = "ffffffff";
    let cases: &[(FrameType, String)] = &[
        (FrameType::Hello, huge.to_string()),
        (FrameType::Assignment, format!("00000001 {huge}")),
        (
            FrameType::Records,
            format!("00000001 0000000000000000 {huge}"),
        ),
        (FrameType::TopicListResult, huge.to_string()),
        (FrameType::AclListResult, huge.to_string()),
        (FrameType::KeyStatusResult, huge.to_string()),
        (FrameType::AccessListResult, huge.to_string()),
        (FrameType::RecipientListResult, huge.to_string()),
        (
            FrameType::TopicResult,
            format!(
                "0001 74 {} 0000000000000000 00000001 00 00000000 00 00 00 00 00 {huge}",
                "00".repeat(16)
            ),
        ),
    ];
    for (ty, body) in cases {
        let wire = raw_frame(ty.as_u16(), &unhex(body));
        let result = decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE);
        assert!(
            matches!(result, Err(DecodeError::Truncated { .. })),
            "{ty}: {result:?}"
        );
    }
}

#[test]
fn values_outside_their_domain_are_malformed() {
    let cases: &[(FrameType, &str, &str)] = &[
        (
            FrameType::ProduceAck,
            "0000000000000001 00000000 0000000000000000 02",
            "duplicate",
        ),
        (FrameType::Subscribe, "0001 74 | 02 00000000", "target"),
        (
            FrameType::Subscribe,
            "0001 74 | 00 00000000 | 04 0000000000000000 | 0000000000000000",
            "start",
        ),
        (
            FrameType::Subscribe,
            "0001 74 | 00 00000000 | 00 0000000000000001 | 0000000000000000",
            "start",
        ),
        (
            FrameType::Subscribe,
            "0001 74 | 00 00000000 | 01 0000000000000001 | 0000000000000000",
            "start",
        ),
        // Flags other than SKIP_DAMAGED (bit 0) are reserved.
        (
            FrameType::Subscribe,
            "0001 74 | 00 00000000 | 00 0000000000000000 | 0000000000000000 | 02",
            "flags",
        ),
        (
            FrameType::Subscribe,
            "0001 74 | 01 0001 67 | 00 0000000000000000 | 0000000000000000 | 81",
            "flags",
        ),
        (
            FrameType::CreateTopic,
            "0001 74 | 00000001 | 00 00000005 | 00 00 00 00 | 00",
            "durability",
        ),
        (
            FrameType::CreateTopic,
            "0001 74 | 00000001 | 01 00000000 | 00 00 00 00 | 00",
            "durability",
        ),
        (
            FrameType::CreateTopic,
            "0001 74 | 00000001 | 03 00000000 | 00 00 00 00 | 00",
            "durability",
        ),
        (
            FrameType::CreateTopic,
            "0001 74 | 00000001 | 00 00000000 | 00 00 00 00 | 02",
            "dedicated_kek",
        ),
        (
            FrameType::CreateTopic,
            "0001 74 | 00000001 | 00 00000000 | 07",
            "retention_ms",
        ),
        (
            FrameType::AclGrant,
            "0001 61 | 0001 74 | 0400 | 00 | 00",
            "operations",
        ),
        (
            FrameType::AclGrant,
            "0001 61 | 0001 74 | 0001 | 02 | 00",
            "effect",
        ),
        (
            FrameType::AclRevoke,
            "0001 61 | 0001 74 | 0001 | 00 | 02",
            "expires_at",
        ),
        (FrameType::KeyDestroy, "00 | 00000001 | 02", "force"),
        (FrameType::ListTopics, "02", "prefix"),
        (FrameType::AccessList, "02", "pending_only"),
        (
            FrameType::WhoAmIResult,
            "0001 61 | 0001 62 | 02",
            "superuser",
        ),
        (
            FrameType::KeyChangedResult,
            "0001 62 00000001 04 0001 66 0000000000000000 0000000000000000 0000000000000000 | 0000000000000000 | 0000",
            "key_state",
        ),
        (
            FrameType::KeyStatusResult,
            "00000000 | 02 0000000000000000 0000000000000000 0000000000000000",
            "running",
        ),
        (
            FrameType::AccessResult,
            "0000000000000001 0001 62 0001 74 0002 0000 00 04 0000000000000000 00 00 00 00",
            "access_state",
        ),
    ];
    for (ty, body, field) in cases {
        let wire = raw_frame(ty.as_u16(), &unhex(body));
        let result = decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE);
        match result {
            Err(ref e @ DecodeError::InvalidValue { field: got, .. }) => {
                assert_eq!(got, *field, "{ty} {body}");
                assert_eq!(e.code(), ErrorCode::MalformedFrame);
            }
            other => panic!("{ty} {body}: expected an invalid {field}, got {other:?}"),
        }
    }
}

/// A `Subscribe` of an older layout (without `flags`) and a
/// `PartitionError` cut short are truncated input, never a default value.
#[test]
fn subscription_frames_cut_short_are_truncated() {
    let cases: &[(FrameType, &str)] = &[
        (
            FrameType::Subscribe,
            "0001 74 | 00 00000000 | 00 0000000000000000 | 0000000000000000",
        ),
        (
            FrameType::PartitionError,
            "00000001 | 0056 | 0000000000000001",
        ),
        (
            FrameType::PartitionError,
            "00000001 | 0056 | 0000000000000001 | 0000000000000002 | 0005 6162",
        ),
    ];
    for (ty, body) in cases {
        let wire = raw_frame(ty.as_u16(), &unhex(body));
        let result = decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE);
        assert!(
            matches!(result, Err(DecodeError::Truncated { .. })),
            "{ty}: {result:?}"
        );
    }
}

#[test]
fn strings_must_be_utf8() {
    // Goodbye { code 0, reason: 0xC3 0x28 } (an invalid two-byte sequence).
    let wire = raw_frame(FrameType::Goodbye.as_u16(), &unhex("0000 0002 c328"));
    assert_eq!(
        decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE),
        Err(DecodeError::InvalidUtf8 { offset: 4 })
    );
    // Header names inside a batch too.
    let mut b = BatchBuilder::new(0);
    b.push(0, None, &[("ab", b"")], b"").unwrap();
    let mut bytes = b.finish().unwrap().to_vec();
    // record: len(4) delta(4) key_len(4) header_count(2) name_len(2) name...
    let name_at = BATCH_HEADER_LEN + 4 + 4 + 4 + 2 + 2;
    bytes[name_at] = 0xFF;
    fix_crc(&mut bytes);
    assert!(matches!(
        RecordBatch::parse(Bytes::from(bytes)),
        Err(DecodeError::InvalidUtf8 { .. })
    ));
}

#[test]
fn unknown_frame_types_are_refused() {
    let mut unknown = 0;
    for code in 0..=u16::MAX {
        let known = FrameType::from_u16(code);
        assert_eq!(known.map(FrameType::as_u16), known.map(|_| code));
        if known.is_some() {
            continue;
        }
        unknown += 1;
        let result = Frame::decode_body(code, Bytes::new());
        assert_eq!(result, Err(DecodeError::UnknownFrameType(code)));
    }
    assert_eq!(unknown, 65_536 - FrameType::ALL.len());
    assert_eq!(
        DecodeError::UnknownFrameType(0x7777).code(),
        ErrorCode::UnknownFrameType
    );
    // Through the decoder, with a body.
    let wire = raw_frame(0x0300, b"whatever");
    assert_eq!(
        decode_frame(&wire, DEFAULT_MAX_FRAME_SIZE),
        Err(DecodeError::UnknownFrameType(0x0300))
    );
}

#[test]
fn frame_type_codes_are_unique_and_named() {
    let mut codes: Vec<u16> = FrameType::ALL.iter().map(|t| t.as_u16()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), FrameType::ALL.len());
    for ty in FrameType::ALL {
        assert_eq!(FrameType::from_u16(ty.as_u16()), Some(*ty));
        assert!(!ty.name().is_empty());
        assert_eq!(ty.is_admin_request(), ty.as_u16() >> 8 == 1, "{ty}");
        assert_eq!(ty.is_admin_response(), ty.as_u16() >> 8 == 2, "{ty}");
    }
}

#[test]
fn error_codes_are_unique_and_round_trip() {
    let mut seen = std::collections::BTreeSet::new();
    for code in ErrorCode::ALL {
        assert!(seen.insert(code.as_u16()), "{code} reused");
        assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(*code));
        assert!(
            code.name()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
        );
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert!(
        ErrorCode::ALL.windows(2).all(|w| w[0] < w[1]),
        "ALL in numeric order"
    );
}

// ---- the encoder refuses what the decoder would refuse ---------------------------

#[test]
fn encoder_refuses_values_the_decoder_would_refuse() {
    let config = |durability| TopicConfig {
        partitions: 1,
        durability,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    };
    let zero_interval = Frame::Request(AdminRequest::CreateTopic {
        name: "t".into(),
        config: config(Durability::Interval { interval_ms: 0 }),
    });
    assert!(matches!(
        zero_interval.to_bytes(DEFAULT_MAX_FRAME_SIZE),
        Err(EncodeError::OutOfRange {
            field: "durability",
            ..
        })
    ));

    let bad_ops = Frame::Request(AdminRequest::AccessRequest {
        topic: "t".into(),
        operations: Operations(1 << 12),
        reason: String::new(),
        public_key: None,
    });
    assert!(matches!(
        bad_ops.to_bytes(DEFAULT_MAX_FRAME_SIZE),
        Err(EncodeError::OutOfRange {
            field: "operations",
            ..
        })
    ));

    let long_topic = Frame::Request(AdminRequest::DeleteTopic {
        name: "x".repeat(usize::from(u16::MAX) + 1),
    });
    assert!(matches!(
        long_topic.to_bytes(DEFAULT_MAX_FRAME_SIZE),
        Err(EncodeError::TooLong { field: "name", .. })
    ));

    let mut b = BatchBuilder::new(0);
    b.producer(ProducerStamp {
        producer_id: 1,
        epoch: 0,
        base_sequence: u32::MAX,
    });
    b.push(0, None, &[], b"").unwrap();
    b.push(0, None, &[], b"").unwrap();
    assert!(matches!(
        b.finish(),
        Err(EncodeError::OutOfRange {
            field: "base_sequence",
            ..
        })
    ));

    let mut b = BatchBuilder::new(0);
    assert!(matches!(
        b.push(i64::from(i32::MAX) + 1, None, &[], b""),
        Err(EncodeError::OutOfRange {
            field: "timestamp_delta",
            ..
        })
    ));
    assert!(matches!(
        BatchBuilder::new(0).finish(),
        Err(EncodeError::OutOfRange {
            field: "record_count",
            ..
        })
    ));
}
