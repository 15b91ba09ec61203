//! A bounded, proptest-driven fuzz run of the frame decoder and the batch
//! parser, so CI exercises them without cargo-fuzz (see fuzz/README.md for
//! the coverage-guided target).
//!
//! Inputs are valid frame streams and batches that are then mutated: bit
//! flips, byte overwrites, forged length prefixes, truncations, insertions,
//! deletions and splices from another stream. Whatever comes out, the
//! decoders must not panic, must keep their memory bound, must agree with
//! each other, and anything they accept must be the canonical encoding of
//! what they return.
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property (default
//! below, about ten seconds in a debug build on two cores).

mod common;
#[path = "../../fuzz/mutation.rs"]
mod mutation;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_protocol::error::DecodeError;
use strongbox_protocol::frame::{Decoded, FRAME_HEADER_LEN, Frame, FrameDecoder, decode_frame};

use common::{arb_batch_spec, arb_frame, build_batch, encode};
use mutation::{arb_mutation, fuzz_config, mutate};

const DEFAULT_CASES: u32 = 3000;

/// Decodes `stream` with `decode_frame`, returning the frames, the bytes
/// they took, and whether decoding stopped on an error.
fn decode_all(stream: &Bytes, max: u32) -> (Vec<Frame>, usize, Option<DecodeError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match decode_frame(&stream.slice(at..), max) {
            Ok(Decoded::Frame(frame, used)) => {
                frames.push(frame);
                at += used;
            }
            Ok(Decoded::NeedMore(_)) => return (frames, at, None),
            Err(e) => return (frames, at, Some(e)),
        }
    }
}

/// Feeds `stream` to a `FrameDecoder` in reads of the given sizes.
fn decode_streaming(
    stream: &[u8],
    max: u32,
    reads: &[usize],
) -> Result<(Vec<Frame>, Option<DecodeError>), TestCaseError> {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut reads = reads.iter().copied().cycle();
    let largest = reads.clone().take(64).max().unwrap_or(1);
    let bound = max as usize + FRAME_HEADER_LEN + largest;
    while !rest.is_empty() {
        let n = reads.next().unwrap_or(1).clamp(1, rest.len());
        decoder.extend(&rest[..n]);
        rest = &rest[n..];
        prop_assert!(
            decoder.capacity() <= bound,
            "capacity {} > {}",
            decoder.capacity(),
            bound
        );
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return Ok((frames, Some(e))),
            }
        }
    }
    Ok((frames, None))
}

/// A batch the parser accepted must be exactly what the builder makes of
/// its records.
fn check_batch(bytes: Bytes) -> Result<(), TestCaseError> {
    let Ok(batch) = RecordBatch::parse(bytes.clone()) else {
        return Ok(());
    };
    let header = *batch.header();
    let mut builder = BatchBuilder::new(header.base_timestamp);
    if let Some(p) = header.producer {
        builder.producer(p);
    }
    let mut count = 0u32;
    for record in batch.records() {
        let headers: Vec<(String, Bytes)> = record.headers.iter().collect();
        let headers: Vec<(&str, &[u8])> =
            headers.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
        builder
            .push(
                record.timestamp,
                record.key.as_deref(),
                &headers,
                &record.value,
            )
            .map_err(|e| TestCaseError::fail(format!("accepted record does not rebuild: {e}")))?;
        count += 1;
    }
    prop_assert_eq!(count, header.record_count);
    let rebuilt = builder
        .finish()
        .map_err(|e| TestCaseError::fail(format!("accepted batch does not rebuild: {e}")))?;
    prop_assert_eq!(rebuilt, bytes);
    Ok(())
}

/// Batches carried inside decoded frames.
fn batches_in(frames: &[Frame]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for frame in frames {
        match frame {
            Frame::Produce(p) => out.push(p.batch.clone()),
            Frame::Records(r) => out.extend(r.batches.iter().map(|b| b.batch.clone())),
            _ => {}
        }
    }
    out
}

proptest! {
    #![proptest_config(fuzz_config(DEFAULT_CASES))]

    /// Mutated frame streams through both decoders.
    #[test]
    fn mutated_frame_streams(
        frames in vec(arb_frame(), 1..5),
        donor in vec(arb_frame(), 1..3),
        mutations in vec(arb_mutation(), 0..5),
        max in prop_oneof![Just(1024u32), Just(64 * 1024), 2u32..600],
        reads in vec(1usize..96, 1..8),
    ) {
        let mut stream: Vec<u8> = frames.iter().flat_map(|f| encode(f).to_vec()).collect();
        let donor: Vec<u8> = donor.iter().flat_map(|f| encode(f).to_vec()).collect();
        for m in &mutations {
            mutate(&mut stream, &donor, m);
        }
        let stream = Bytes::from(stream);

        let (whole, used, whole_err) = decode_all(&stream, max);
        let (streamed, streamed_err) = decode_streaming(&stream, max, &reads)?;
        // Both decoders see the same frames and stop on the same error.
        prop_assert_eq!(&whole, &streamed);
        prop_assert_eq!(&whole_err, &streamed_err);
        // Whatever was accepted is the canonical encoding of what came out.
        let reencoded: Vec<u8> = whole.iter().flat_map(|f| encode(f).to_vec()).collect();
        prop_assert_eq!(&reencoded[..], &stream[..used]);
        for batch in batches_in(&whole) {
            check_batch(batch)?;
        }
    }

    /// Mutated record batches through the batch parser.
    #[test]
    fn mutated_batches(
        spec in arb_batch_spec(),
        donor in arb_batch_spec(),
        mutations in vec(arb_mutation(), 1..4),
    ) {
        let original = build_batch(&spec);
        let mut bytes = original.to_vec();
        let donor = build_batch(&donor);
        for m in &mutations {
            mutate(&mut bytes, &donor, m);
        }
        let changed = bytes != original[..];
        let bytes = Bytes::from(bytes);
        let result = RecordBatch::parse(bytes.clone());
        // One flipped bit or byte anywhere is always caught.
        if changed && mutations.len() == 1 && mutations[0].is_single_byte() {
            prop_assert!(result.is_err(), "single-byte change accepted");
        }
        check_batch(bytes)?;
    }
}
