//! A bounded, proptest-driven fuzz run of the record batch parser
//! (`RecordBatch::parse`) and of record iteration, so CI exercises them
//! without cargo-fuzz (fuzz/README.md; the coverage-guided target is
//! `record_batch`).
//!
//! `fuzz_decoder.rs` mutates batches with their CRC left alone, so nearly
//! every mutation stops at the CRC check. Here the mutated batch can also
//! get its `body_length` and CRC-32C recomputed, which carries it past the
//! header into record framing, and the mutations can target the fields of
//! the documented layout (record lengths, key, header and value lengths,
//! header counts, timestamp deltas) with values at their edges.
//!
//! Properties: the parser never panics; a batch it accepts is exactly what
//! the builder makes of its records (so nothing unread, no second encoding),
//! iterates `record_count` records with their indices and timestamps and
//! shares the input buffer instead of copying it; bytes after the body are
//! refused; an error past the header names a byte inside the batch; and a
//! change the CRC was not recomputed for is always caught.
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property.

mod common;
#[path = "../../fuzz/mutation.rs"]
mod mutation;

use std::cell::Cell;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use strongbox_protocol::batch::{self, BATCH_HEADER_LEN, BatchBuilder, NO_KEY, RecordBatch};
use strongbox_protocol::error::DecodeError;

use common::{BatchSpec, RecordSpec, arb_producer_stamp, build_batch, fix_crc};
use mutation::{Mutation, arb_mutation, fuzz_config, mutate};

const DEFAULT_CASES: u32 = 10_000;

fn config() -> Config {
    fuzz_config(DEFAULT_CASES)
}

// ---------------------------------------------------------------------------
// batches to start from

/// Header names: ASCII, multi-byte UTF-8, empty, and any characters.
/// (Cheaper to draw than `common`'s regex strings, which matters at
/// thousands of cases in a debug build.)
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&["kind", "trace-id", "content-type", "", "a/b:c", "\u{e9}t\u{e9}", "\u{65e5}\u{672c}", "\u{1f389}"][..])
            .prop_map(str::to_owned),
        1 => vec(any::<char>(), 0..6).prop_map(String::from_iter),
    ]
}

fn arb_record() -> impl Strategy<Value = RecordSpec> {
    let headers = prop_oneof![
        4 => vec((arb_name(), vec(any::<u8>(), 0..8)), 0..3),
        1 => vec((arb_name(), vec(any::<u8>(), 0..4)), 8..16),
    ];
    (
        prop_oneof![Just(0i32), Just(i32::MIN), Just(i32::MAX), any::<i32>()],
        option::of(vec(any::<u8>(), 0..16)),
        headers,
        vec(any::<u8>(), 0..48),
    )
        .prop_map(|(delta, key, headers, value)| RecordSpec {
            delta,
            key,
            headers,
            value,
        })
}

/// Batch specs whose every record timestamp fits (base timestamps far
/// enough from the `i64` edges), with or without a producer stamp.
fn arb_batch_spec() -> impl Strategy<Value = BatchSpec> {
    let base = prop_oneof![
        Just(0i64),
        Just(1_700_000_000_000i64),
        (i64::MIN / 2)..(i64::MAX / 2),
        Just(i64::MIN - i64::from(i32::MIN)),
        Just(i64::MAX - i64::from(i32::MAX)),
    ];
    (
        base,
        option::of(arb_producer_stamp()),
        vec(arb_record(), 1..5),
    )
        .prop_map(|(base_timestamp, producer, records)| BatchSpec {
            base_timestamp,
            producer,
            records,
        })
}

// ---------------------------------------------------------------------------
// the layout, walked independently of the parser

/// `(offset, width)` of every fixed-width field of a valid batch, from the
/// layout documented in `protocol/src/batch.rs`: the header fields, then
/// per record its length, timestamp delta, key length, header count, each
/// header's name and value lengths, and the value length.
fn fields(batch: &[u8]) -> Vec<(usize, usize)> {
    let be16 = |at: usize| usize::from(u16::from_be_bytes([batch[at], batch[at + 1]]));
    let be32 = |at: usize| {
        u32::from_be_bytes([batch[at], batch[at + 1], batch[at + 2], batch[at + 3]]) as usize
    };
    let mut out = vec![
        (0, 2),
        (2, 1),
        (3, 1),
        (4, 8),
        (12, 2),
        (14, 4),
        (18, 8),
        (26, 4),
        (30, 4),
        (34, 4),
    ];
    let mut at = BATCH_HEADER_LEN;
    while at < batch.len() {
        out.push((at, 4));
        let end = at + 4 + be32(at);
        out.push((at + 4, 4));
        let mut p = at + 8;
        out.push((p, 4));
        let key_len = be32(p);
        p += 4;
        if key_len != NO_KEY as usize {
            p += key_len;
        }
        out.push((p, 2));
        let headers = be16(p);
        p += 2;
        for _ in 0..headers {
            out.push((p, 2));
            p += 2 + be16(p);
            out.push((p, 4));
            p += 4 + be32(p);
        }
        out.push((p, 4));
        at = end;
    }
    out
}

/// A new value for a field, relative to its current one where that makes
/// an off-by-one.
#[derive(Debug, Clone)]
enum FieldValue {
    Zero,
    One,
    Plus(u8),
    Minus(u8),
    Max,
    /// `0xFFFF_FFFF`, the key length of a record without a key.
    NoKey,
    Any(u64),
}

fn arb_field_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        Just(FieldValue::Zero),
        Just(FieldValue::One),
        (1u8..8).prop_map(FieldValue::Plus),
        (1u8..8).prop_map(FieldValue::Minus),
        Just(FieldValue::Max),
        Just(FieldValue::NoKey),
        any::<u64>().prop_map(FieldValue::Any),
    ]
}

/// Overwrites the field at `(at, width)` (as far as it is still inside
/// `bytes`).
fn set_field(bytes: &mut [u8], (at, width): (usize, usize), value: &FieldValue) {
    let Some(slot) = bytes.get_mut(at..at + width) else {
        return;
    };
    let current = slot.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
    let new = match value {
        FieldValue::Zero => 0,
        FieldValue::One => 1,
        FieldValue::Plus(d) => current.wrapping_add(u64::from(*d)),
        FieldValue::Minus(d) => current.wrapping_sub(u64::from(*d)),
        FieldValue::Max => u64::MAX,
        FieldValue::NoKey => u64::from(NO_KEY),
        FieldValue::Any(v) => *v,
    };
    let be = new.to_be_bytes();
    slot.copy_from_slice(&be[8 - width..]);
}

/// One edit: a field of the layout set to an edge value, or a blind byte
/// mutation.
#[derive(Debug, Clone)]
enum Edit {
    Field(Index, FieldValue),
    Bytes(Mutation),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<Index>(), arb_field_value()).prop_map(|(i, v)| Edit::Field(i, v)),
        1 => arb_mutation().prop_map(Edit::Bytes),
    ]
}

/// What is recomputed after the edits, so the parser gets past its first
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fixup {
    Nothing,
    Crc,
    LengthAndCrc,
}

fn arb_fixup() -> impl Strategy<Value = Fixup> {
    prop_oneof![
        1 => Just(Fixup::Nothing),
        2 => Just(Fixup::Crc),
        3 => Just(Fixup::LengthAndCrc),
    ]
}

fn apply_fixup(bytes: &mut [u8], fixup: Fixup) {
    if bytes.len() < BATCH_HEADER_LEN {
        return;
    }
    if fixup == Fixup::LengthAndCrc {
        let body = u32::try_from(bytes.len() - BATCH_HEADER_LEN).expect("small test batch");
        bytes[30..34].copy_from_slice(&body.to_be_bytes());
    }
    if fixup != Fixup::Nothing {
        fix_crc(bytes);
    }
}

// ---------------------------------------------------------------------------
// the properties of an accepted batch

/// True when `part` (non-empty) lies inside `whole`'s buffer: the parser
/// handed out a view of the input, not a copy.
fn inside(whole: &Bytes, part: &Bytes) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= start + whole.len())
}

/// Checks everything an accepted batch promises; `Ok(true)` when `bytes`
/// was accepted.
fn check(bytes: &Bytes) -> Result<bool, TestCaseError> {
    let batch = match RecordBatch::parse(bytes.clone()) {
        Ok(batch) => batch,
        Err(e) => {
            check_error(bytes, &e)?;
            return Ok(false);
        }
    };
    let header = *batch.header();
    prop_assert_eq!(batch.as_bytes(), bytes);
    prop_assert_eq!(batch.len(), bytes.len());
    prop_assert!(header.record_count >= 1);
    if let Some(p) = header.producer {
        prop_assert!(header.last_sequence().is_some());
        prop_assert!(
            p.base_sequence
                .checked_add(header.record_count - 1)
                .is_some()
        );
    }
    let mut builder = BatchBuilder::new(header.base_timestamp);
    if let Some(p) = header.producer {
        builder.producer(p);
    }
    let mut max_timestamp = i64::MIN;
    let mut index = 0u32;
    for record in batch.records() {
        prop_assert_eq!(record.index, index);
        index += 1;
        max_timestamp = max_timestamp.max(record.timestamp);
        prop_assert!(inside(bytes, &record.value), "value copied");
        if let Some(key) = &record.key {
            prop_assert!(inside(bytes, key), "key copied");
        }
        let headers: Vec<(String, Bytes)> = record.headers.iter().collect();
        prop_assert_eq!(headers.len(), record.headers.len());
        for (name, value) in &headers {
            prop_assert!(inside(bytes, value), "header value copied");
            prop_assert_eq!(record.headers.get(name).map(|v| v.len()).is_some(), true);
        }
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
    }
    prop_assert_eq!(
        index,
        header.record_count,
        "records() and record_count disagree"
    );
    prop_assert_eq!(batch.max_timestamp(), max_timestamp);
    let rebuilt = builder
        .finish()
        .map_err(|e| TestCaseError::fail(format!("accepted batch does not rebuild: {e}")))?;
    prop_assert_eq!(
        &rebuilt,
        bytes,
        "accepted bytes are not the canonical encoding"
    );
    Ok(true)
}

/// An error about the records (past the header and the CRC) names a byte
/// inside the body, and every error names a byte inside the input.
fn check_error(bytes: &[u8], e: &DecodeError) -> Result<(), TestCaseError> {
    let len = bytes.len();
    match *e {
        DecodeError::Truncated { offset, need, have } => {
            prop_assert!(need > have, "{e}");
            prop_assert!(offset + have <= len, "{e} in {len} bytes");
            if offset > 0 || len >= BATCH_HEADER_LEN {
                // Past the header, so about a record.
                prop_assert!(offset >= BATCH_HEADER_LEN, "{e} points into the header");
            }
        }
        DecodeError::TrailingBytes { offset, remaining } => {
            prop_assert!(offset >= BATCH_HEADER_LEN, "{e} points into the header");
            prop_assert!(offset + remaining <= len, "{e} in {len} bytes");
        }
        DecodeError::InvalidUtf8 { offset } => {
            prop_assert!(
                offset >= BATCH_HEADER_LEN && offset < len,
                "{e} in {len} bytes"
            );
        }
        DecodeError::InvalidValue { offset, .. } => prop_assert!(offset < len, "{e}"),
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// the runs

/// Builds `spec` and appends the records of `extra` (re-based onto the
/// batch's timestamp), returning the expected bytes.
fn build_with(spec: &BatchSpec, extra: &BatchSpec) -> Bytes {
    let mut all = spec.clone();
    for r in &extra.records {
        all.records.push(r.clone());
    }
    build_batch(&all)
}

proptest! {
    #![proptest_config(config())]

    /// A valid batch parses to exactly the records it was built from.
    #[test]
    fn valid_batches_round_trip(spec in arb_batch_spec()) {
        let bytes = build_batch(&spec);
        let batch = RecordBatch::parse(bytes.clone())
            .map_err(|e| TestCaseError::fail(format!("valid batch refused: {e}")))?;
        prop_assert_eq!(batch.header().producer, spec.producer);
        prop_assert_eq!(batch.header().base_timestamp, spec.base_timestamp);
        prop_assert_eq!(batch.record_count() as usize, spec.records.len());
        let records: Vec<_> = batch.records().collect();
        prop_assert_eq!(records.len(), spec.records.len());
        for (i, (got, want)) in records.iter().zip(&spec.records).enumerate() {
            prop_assert_eq!(got.timestamp, spec.timestamp(i));
            prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
            prop_assert_eq!(&got.value[..], &want.value[..]);
            let headers: Vec<(String, Vec<u8>)> =
                got.headers.iter().map(|(n, v)| (n, v.to_vec())).collect();
            prop_assert_eq!(&headers, &want.headers);
        }
        prop_assert!(check(&bytes)?);
    }

    /// `batch::record_len`, the formula producers size their batches and
    /// buffers with, is exactly what each record adds to a batch.
    #[test]
    fn record_len_is_what_a_record_adds(spec in arb_batch_spec()) {
        let mut builder = BatchBuilder::new(spec.base_timestamp);
        for (i, r) in spec.records.iter().enumerate() {
            let before = builder.encoded_len();
            let headers: Vec<(&str, &[u8])> =
                r.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
            builder
                .push(spec.timestamp(i), r.key.as_deref(), &headers, &r.value)
                .map_err(|e| TestCaseError::fail(format!("push refused: {e}")))?;
            let want = batch::record_len(
                r.key.as_ref().map_or(0, Vec::len),
                r.headers.iter().map(|(n, v)| (n.len(), v.len())),
                r.value.len(),
            );
            prop_assert_eq!(builder.encoded_len() - before, want);
            prop_assert_eq!(
                BatchBuilder::record_len(r.key.as_deref(), &headers, &r.value),
                want
            );
        }
    }

    /// Bytes after the body are refused: as trailing bytes when the header
    /// is left alone, and as a record count mismatch or a broken record when
    /// `body_length` and the CRC are made to cover them. Covering a whole
    /// extra record and counting it makes the batch valid again, which shows
    /// the fix-up itself is right.
    #[test]
    fn bytes_after_the_body_are_refused(
        spec in arb_batch_spec(),
        extra in arb_batch_spec(),
        junk in vec(any::<u8>(), 1..32),
        whole_record in any::<bool>(),
        fixup in arb_fixup(),
    ) {
        let original = build_batch(&spec);
        let mut bytes = original.to_vec();
        let appended = if whole_record {
            let one = BatchSpec { records: extra.records[..1].to_vec(), ..extra.clone() };
            build_batch(&one)[BATCH_HEADER_LEN..].to_vec()
        } else {
            junk
        };
        bytes.extend_from_slice(&appended);
        apply_fixup(&mut bytes, fixup);
        let bytes = Bytes::from(bytes);
        let result = RecordBatch::parse(bytes.clone());
        match fixup {
            Fixup::Nothing | Fixup::Crc => prop_assert!(
                matches!(result, Err(DecodeError::TrailingBytes { offset, remaining })
                    if offset == original.len() && remaining == appended.len()),
                "{:?}", result
            ),
            Fixup::LengthAndCrc => prop_assert!(result.is_err(), "uncounted bytes accepted"),
        }
        prop_assert!(!check(&bytes)?);

        if whole_record && fixup == Fixup::LengthAndCrc {
            let mut counted = bytes.to_vec();
            let count = u32::try_from(spec.records.len() + 1).expect("few records");
            counted[26..30].copy_from_slice(&count.to_be_bytes());
            fix_crc(&mut counted);
            let extra_one = BatchSpec { records: extra.records[..1].to_vec(), ..extra };
            prop_assert_eq!(&counted[..], &build_with(&spec, &extra_one)[..]);
            prop_assert!(check(&Bytes::from(counted))?);
        }
    }

    /// Random bytes, and random bytes behind a valid header prefix.
    #[test]
    fn random_bytes(
        bytes in vec(any::<u8>(), 0..256),
        spec in arb_batch_spec(),
        keep in 0usize..=BATCH_HEADER_LEN,
        fixup in arb_fixup(),
    ) {
        check(&Bytes::from(bytes.clone()))?;
        let mut prefixed = build_batch(&spec)[..keep].to_vec();
        prefixed.extend_from_slice(&bytes);
        apply_fixup(&mut prefixed, fixup);
        check(&Bytes::from(prefixed))?;
    }
}

/// Mutated batches, with the CRC (and `body_length`) recomputed or not.
/// Counts outcomes, and fails if the run did not reach the record checks:
/// a fuzz test that only ever hits the CRC check proves little.
#[test]
fn mutated_batches_with_fixups() {
    let accepted_changed = Cell::new(0u32);
    let rejected_past_crc = Cell::new(0u32);
    let strategy = (
        arb_batch_spec(),
        arb_batch_spec(),
        vec(arb_edit(), 1..4),
        arb_fixup(),
    );
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(spec, donor, edits, fixup)| {
        let original = build_batch(&spec);
        let donor = build_batch(&donor);
        let layout = fields(&original);
        let mut bytes = original.to_vec();
        for edit in &edits {
            match edit {
                Edit::Field(i, v) => set_field(&mut bytes, layout[i.index(layout.len())], v),
                Edit::Bytes(m) => mutate(&mut bytes, &donor, m),
            }
        }
        apply_fixup(&mut bytes, fixup);
        let changed = bytes != original[..];
        let bytes = Bytes::from(bytes);
        let accepted = check(&bytes)?;
        if changed && fixup == Fixup::Nothing {
            // CRC-32C catches every change of up to 32 bits, and any other
            // with odds of 2^-32.
            prop_assert!(!accepted, "change accepted without a new CRC");
        }
        if changed && accepted {
            accepted_changed.set(accepted_changed.get() + 1);
        }
        if !accepted
            && fixup != Fixup::Nothing
            && !matches!(
                RecordBatch::parse(bytes.clone()),
                Err(DecodeError::CrcMismatch { .. })
            )
        {
            rejected_past_crc.set(rejected_past_crc.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let cases = config().cases;
    // With the default weights about a third of the cases change a value
    // the CRC then covers, and most fixed-up cases fail a later check; the
    // bounds are far below that so only a broken harness trips them.
    assert!(
        accepted_changed.get() * 50 >= cases,
        "only {} of {cases} changed batches were accepted",
        accepted_changed.get()
    );
    assert!(
        rejected_past_crc.get() * 5 >= cases,
        "only {} of {cases} cases got past the CRC check",
        rejected_past_crc.get()
    );
}

/// Each input in the cargo-fuzz seed corpus is a valid batch behind the
/// target's control byte, so the corpus keeps up with the format.
#[test]
fn seed_corpus_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/record_batch");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.expect("seed entry").path();
        let seed = std::fs::read(&path).expect("seed file");
        let batch = Bytes::copy_from_slice(&seed[1..]);
        assert!(
            RecordBatch::parse(batch).is_ok(),
            "{} is not a valid batch",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 3, "{seen} seeds in {}", dir.display());
}

/// Regression (found by this file's properties): errors in record framing
/// named offsets counted from the start of the body or of the record, not
/// of the batch, so "truncated at byte 18" pointed into the header.
#[test]
fn record_errors_name_batch_offsets() {
    let mut builder = BatchBuilder::new(0);
    builder.push(0, None, &[], b"").expect("record");
    let batch = builder.finish().expect("batch");
    assert_eq!(batch.len(), 56);

    // One byte after the only record, covered by body_length and the CRC:
    // the next record's length field is cut at byte 56.
    let mut longer = batch.to_vec();
    longer.push(0);
    longer[30..34].copy_from_slice(&19u32.to_be_bytes());
    fix_crc(&mut longer);
    assert_eq!(
        RecordBatch::parse(Bytes::from(longer)),
        Err(DecodeError::Truncated {
            offset: 56,
            need: 4,
            have: 1
        })
    );

    // A record length of 2 leaves no room for the timestamp delta, which
    // starts at byte 42; the record's last 16 bytes are then trailing.
    let mut short = batch.to_vec();
    short[38..42].copy_from_slice(&2u32.to_be_bytes());
    fix_crc(&mut short);
    assert_eq!(
        RecordBatch::parse(Bytes::from(short)),
        Err(DecodeError::Truncated {
            offset: 42,
            need: 4,
            have: 2
        })
    );

    // A record length past the body: the record starts at byte 42.
    let mut long = batch.to_vec();
    long[38..42].copy_from_slice(&100u32.to_be_bytes());
    fix_crc(&mut long);
    assert_eq!(
        RecordBatch::parse(Bytes::from(long)),
        Err(DecodeError::Truncated {
            offset: 42,
            need: 100,
            have: 14
        })
    );
}
