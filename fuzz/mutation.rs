//! Byte-string mutations for the bounded, proptest-driven fuzz tests.
//!
//! Every crate's `tests/fuzz_*.rs` includes this file with
//! `#[path = ...] mod mutation;`, so the parsers of all crates are fuzzed
//! with the same mutations: bit flips, byte overwrites, forged big-endian
//! lengths (often one near a limit), truncations, insertions, deletions and
//! splices from a donor input. The tests start from valid encodings and
//! mutate them, which reaches far deeper into a parser than random bytes.
//!
//! `STRONGBOX_FUZZ_CASES=<n>` sets the number of cases per property (see
//! [`cases`]); fuzz/README.md lists the tests and what they check.

#![allow(dead_code)] // each test binary uses a different subset

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm};

/// The number of cases per property: `STRONGBOX_FUZZ_CASES` when set,
/// otherwise `default`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("STRONGBOX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The proptest configuration of a bounded fuzz test: [`cases`] cases, no
/// failure-persistence files, and the XorShift generator, which in a debug
/// build costs a fraction of the default ChaCha (test inputs need no
/// cryptographic randomness). `PROPTEST_RNG_SEED` still fixes the seed to
/// replay a run.
pub(crate) fn fuzz_config(default_cases: u32) -> Config {
    Config {
        cases: cases(default_cases),
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    }
}

/// One change to a byte string.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrites four bytes with a big-endian length.
    ForgeLength(Index, u32),
    /// Overwrites two bytes with a big-endian length.
    ForgeShortLength(Index, u16),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Replaces a range with a range of the donor input.
    Splice(Index, Index, usize),
}

impl Mutation {
    /// True for the mutations that change at most one byte in place.
    pub(crate) fn is_single_byte(&self) -> bool {
        matches!(self, Self::FlipBit(..) | Self::SetByte(..))
    }
}

/// Lengths near the limits of the formats: 0 to 3, small ones, the edges of
/// one- and two-byte fields, the default frame limit and `u32::MAX`.
fn arb_length() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(3),
        0u32..512,
        Just(255),
        Just(256),
        Just(1024),
        Just(1025),
        Just(u32::from(u16::MAX)),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

/// Any one mutation, weighted toward the small ones.
pub(crate) fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => (any::<Index>(), arb_length()).prop_map(|(i, l)| Mutation::ForgeLength(i, l)),
        1 => (any::<Index>(), arb_length())
            .prop_map(|(i, l)| Mutation::ForgeShortLength(i, l as u16)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(i, j, n)| Mutation::Splice(i, j, n)),
    ]
}

/// Writes `value` at `at`, as far as it fits.
fn overwrite(bytes: &mut [u8], at: usize, value: &[u8]) {
    for (k, b) in value.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at + k) {
            *slot = *b;
        }
    }
}

/// Applies `mutation` to `bytes`; `donor` feeds splices.
pub(crate) fn mutate(bytes: &mut Vec<u8>, donor: &[u8], mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, v) => bytes[i.index(len)] = *v,
        Mutation::ForgeLength(i, l) => overwrite(bytes, i.index(len), &l.to_be_bytes()),
        Mutation::ForgeShortLength(i, l) => overwrite(bytes, i.index(len), &l.to_be_bytes()),
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i.index(len);
            let end = (at + n).min(len);
            bytes.drain(at..end);
        }
        Mutation::Splice(i, j, n) => {
            if donor.is_empty() {
                return;
            }
            let at = i.index(len);
            let end = (at + n).min(len);
            let from = j.index(donor.len());
            let to = (from + n).min(donor.len());
            bytes.splice(at..end, donor[from..to].iter().copied());
        }
    }
}

/// Applies every mutation in turn.
pub(crate) fn mutate_all(bytes: &mut Vec<u8>, donor: &[u8], mutations: &[Mutation]) {
    for m in mutations {
        mutate(bytes, donor, m);
    }
}
