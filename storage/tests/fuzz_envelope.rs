//! A bounded, proptest-driven fuzz run of the key envelope parser
//! (`KeyEnvelope::decode`, the wrapped data key of a segment), so CI
//! exercises it without cargo-fuzz (fuzz/README.md; the coverage-guided
//! target is `key_envelope`).
//!
//! Inputs are envelopes written by this file's own encoder, from the layout
//! documented in `storage/src/log/envelope.rs` and docs/STORAGE.md (scope
//! labels valid and not, wrapped keys from empty to past the 1024-byte
//! limit), then mutated, with the CRC-32C recomputed or not so that the
//! checks behind the CRC are reached.
//!
//! Properties: the parser never panics; it accepts exactly the envelopes
//! the layout allows and reads their fields back; what it accepts the
//! encoder writes back byte for byte; a change the CRC was not recomputed
//! for, a truncation and trailing bytes are refused; the wrapped key it
//! returns is within the 1024-byte limit, and so is the memory holding it.
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property.

#[path = "../../fuzz/mutation.rs"]
mod mutation;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use strongbox_storage::keys::{KekId, KekScope, WrappedDek};
use strongbox_storage::log::envelope::{ENVELOPE_MAGIC, KeyEnvelope, MAX_WRAPPED_LEN};
use strongbox_storage::log::format::FormatError;

use mutation::{arb_mutation, fuzz_config, mutate_all};

const DEFAULT_CASES: u32 = 5000;

fn config() -> Config {
    fuzz_config(DEFAULT_CASES)
}

/// The fields of an envelope, with a scope of any bytes and a wrapped key
/// of any length.
#[derive(Debug, Clone)]
struct Spec {
    topic_id: [u8; 16],
    partition: u32,
    segment_id: [u8; 16],
    base_offset: u64,
    kek_version: u32,
    scope: Vec<u8>,
    wrapped: Vec<u8>,
}

impl Spec {
    /// The scope, when it is a label the format allows: `broker` or
    /// `topic-` and one or more ASCII letters and digits.
    fn scope(&self) -> Option<KekScope> {
        let label = std::str::from_utf8(&self.scope).ok()?;
        if label == "broker" {
            return Some(KekScope::Broker);
        }
        let id = label.strip_prefix("topic-")?;
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| KekScope::Topic(id.to_owned()))
    }

    /// The envelope, when the layout allows this one.
    fn envelope(&self) -> Option<KeyEnvelope> {
        let scope = self.scope()?;
        (!self.wrapped.is_empty() && self.wrapped.len() <= MAX_WRAPPED_LEN).then(|| KeyEnvelope {
            topic_id: self.topic_id,
            partition: self.partition,
            segment_id: self.segment_id,
            base_offset: self.base_offset,
            wrapped: WrappedDek {
                kek: KekId {
                    scope,
                    version: self.kek_version,
                },
                wrapped: self.wrapped.clone(),
            },
        })
    }
}

/// The envelope's bytes, from the documented layout (the scope is at most
/// 255 bytes, the wrapped key at most 65535).
fn encode(spec: &Spec) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"SBKE");
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&spec.topic_id);
    out.extend_from_slice(&spec.partition.to_be_bytes());
    out.extend_from_slice(&spec.segment_id);
    out.extend_from_slice(&spec.base_offset.to_be_bytes());
    out.extend_from_slice(&spec.kek_version.to_be_bytes());
    out.push(u8::try_from(spec.scope.len()).expect("short scope"));
    out.extend_from_slice(&spec.scope);
    let wrapped_len = u16::try_from(spec.wrapped.len()).expect("short blob");
    out.extend_from_slice(&wrapped_len.to_be_bytes());
    out.extend_from_slice(&spec.wrapped);
    out.extend_from_slice(&crc32c(&out).to_be_bytes());
    out
}

/// CRC-32C (Castagnoli), bit by bit: independent of the crate's.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites the last four bytes as the CRC of everything before them.
fn fix_crc(bytes: &mut [u8]) {
    if let Some(body) = bytes.len().checked_sub(4) {
        let crc = crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_be_bytes());
    }
}

fn arb_scope() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"broker".to_vec()),
        3 => "topic-[0-9a-f]{32}".prop_map(String::into_bytes),
        2 => "topic-[A-Za-z0-9]{1,8}".prop_map(String::into_bytes),
        1 => Just(b"topic-".to_vec()),
        1 => "topic-[a-z0-9_./ -]{1,8}".prop_map(String::into_bytes),
        1 => "\\PC{0,12}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..16),
        1 => Just(vec![b'a'; 255]),
    ]
}

fn arb_wrapped() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 40..=40),
        2 => vec(any::<u8>(), 1..80),
        1 => Just(Vec::new()),
        1 => vec(any::<u8>(), MAX_WRAPPED_LEN..=MAX_WRAPPED_LEN + 1),
        1 => vec(any::<u8>(), 2000..2100),
    ]
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u32>(),
        arb_scope(),
        arb_wrapped(),
    )
        .prop_map(
            |(topic_id, partition, segment_id, base_offset, kek_version, scope, wrapped)| Spec {
                topic_id,
                partition,
                segment_id,
                base_offset,
                kek_version,
                scope,
                wrapped,
            },
        )
}

/// Checks the parser's answer for `bytes`; `Ok(true)` when it accepted.
fn check(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match KeyEnvelope::decode(bytes) {
        Ok(envelope) => {
            let blob = &envelope.wrapped.wrapped;
            prop_assert!(!blob.is_empty() && blob.len() <= MAX_WRAPPED_LEN);
            prop_assert!(
                blob.capacity() <= MAX_WRAPPED_LEN,
                "{} bytes held",
                blob.capacity()
            );
            let written = envelope.encode().map_err(|e| {
                TestCaseError::fail(format!("accepted envelope does not encode: {e}"))
            })?;
            prop_assert_eq!(
                &written[..],
                bytes,
                "accepted bytes are not the canonical encoding"
            );
            Ok(true)
        }
        Err(e) => {
            if let FormatError::Invalid { field, .. } = &e {
                prop_assert!(["scope", "wrapped", "length"].contains(field), "{e}");
            }
            prop_assert!(!e.to_string().is_empty());
            Ok(false)
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The parser accepts exactly the envelopes the layout allows, reads
    /// them back, and agrees byte for byte with the crate's encoder.
    #[test]
    fn encoded_envelopes(spec in arb_spec()) {
        let bytes = encode(&spec);
        let accepted = check(&bytes)?;
        let expected = spec.envelope();
        prop_assert_eq!(accepted, expected.is_some(), "acceptance of {:?}", spec);
        if let Some(envelope) = expected {
            prop_assert_eq!(KeyEnvelope::decode(&bytes).expect("accepted"), envelope.clone());
            prop_assert_eq!(envelope.encode().expect("encodes"), bytes);
        }
    }

    /// Every truncation of a valid envelope and any bytes after it are
    /// refused, the trailing bytes even when the CRC covers them.
    #[test]
    fn truncations_and_trailing_bytes(
        spec in arb_spec(),
        cut in any::<proptest::sample::Index>(),
        junk in vec(any::<u8>(), 1..16),
        recompute in any::<bool>(),
    ) {
        let bytes = encode(&spec);
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(KeyEnvelope::decode(short).is_err(), "{} of {} bytes accepted", short.len(), bytes.len());
        check(short)?;
        let mut long = bytes.clone();
        long.extend_from_slice(&junk);
        if recompute {
            fix_crc(&mut long);
        }
        let result = KeyEnvelope::decode(&long);
        prop_assert!(
            matches!(result, Err(FormatError::Invalid { field: "length", .. })),
            "{:?}", result
        );
    }

    /// Mutated envelopes, with the CRC recomputed or not; a forged wrapped
    /// length past the limit is refused even with a valid CRC.
    #[test]
    fn mutated_envelopes(
        spec in arb_spec(),
        donor in arb_spec(),
        mutations in vec(arb_mutation(), 1..4),
        recompute in any::<bool>(),
        forged in prop_oneof![Just(0u16), Just(1025), Just(u16::MAX), any::<u16>()],
    ) {
        let original = encode(&spec);
        let mut bytes = original.clone();
        mutate_all(&mut bytes, &encode(&donor), &mutations);
        if recompute {
            fix_crc(&mut bytes);
        }
        let accepted = check(&bytes)?;
        if bytes != original && !recompute {
            prop_assert!(!accepted, "change accepted without a new CRC");
        }

        // The wrapped length field sits after the scope.
        let at = 57 + spec.scope.len();
        let mut forged_bytes = original.clone();
        forged_bytes[at..at + 2].copy_from_slice(&forged.to_be_bytes());
        fix_crc(&mut forged_bytes);
        if usize::from(forged) != spec.wrapped.len() {
            prop_assert!(!check(&forged_bytes)?, "wrapped_len {} accepted", forged);
        }
    }

    /// Random bytes, alone and behind the magic and version.
    #[test]
    fn random_bytes(bytes in vec(any::<u8>(), 0..200), recompute in any::<bool>()) {
        check(&bytes)?;
        let mut prefixed = ENVELOPE_MAGIC.to_vec();
        prefixed.extend_from_slice(&[0, 1, 0, 0]);
        prefixed.extend_from_slice(&bytes);
        if recompute {
            fix_crc(&mut prefixed);
        }
        check(&prefixed)?;
    }
}

/// Each input in the cargo-fuzz seed corpus is an envelope the parser
/// accepts, so the corpus keeps up with the format.
#[test]
fn seed_corpus_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/key_envelope");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.expect("seed entry").path();
        let seed = std::fs::read(&path).expect("seed file");
        let envelope = KeyEnvelope::decode(&seed)
            .unwrap_or_else(|e| panic!("{} is refused: {e}", path.display()));
        assert_eq!(envelope.encode().expect("encodes"), seed);
        seen += 1;
    }
    assert!(seen >= 2, "{seen} seeds in {}", dir.display());
}
