//! A bounded, proptest-driven fuzz run of the `strongbox-e2e` record header
//! parser (`client/src/e2e/header.rs`, reached through
//! [`sealed_with`] and [`reencode_header`]), so CI exercises it without
//! cargo-fuzz (fuzz/README.md; the coverage-guided target is `e2e_header`).
//!
//! Inputs are headers written by this file's own encoder, straight from the
//! layout documented in `header.rs` and docs/SECURITY.md (key ids and
//! recipient ids of every kind: valid, empty, not UTF-8, with control
//! characters), headers written by the real sealer, and mutations of both.
//!
//! Properties: the parser never panics; what it accepts it writes back byte
//! for byte (one encoding per header, and nothing accepted that the writer
//! refuses to write); what the layout allows it reads back exactly; it
//! refuses trailing bytes and every truncation; and a refusal names the
//! field or says what is unsupported.
//!
//! `STRONGBOX_FUZZ_CASES` sets the number of cases per property.

#[path = "../../fuzz/mutation.rs"]
mod mutation;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError};
use strongbox_client::e2e::{
    E2eError, E2eSealer, Identity, Keyring, Recipient, RecipientSet, SealedWith, reencode_header,
    sealed_with,
};

use mutation::{arb_mutation, cases, fuzz_config, mutate_all};

const DEFAULT_CASES: u32 = 10_000;

fn config() -> Config {
    fuzz_config(DEFAULT_CASES)
}

/// The field names of the layout, as the parser's messages use them.
const FIELDS: &[&str] = &[
    "version",
    "value_aead",
    "key_source",
    "flags",
    "value_nonce",
    "key_id",
    "key_version",
    "wrap_nonce",
    "wrapped_key",
    "kem_id",
    "kdf_id",
    "aead_id",
    "recipient_count",
    "recipient",
    "key_fingerprint",
    "encapsulated_key",
    "sealed_key",
];

// ---------------------------------------------------------------------------
// an encoder written from the documented layout

/// A recipient slot, with an id of any bytes.
#[derive(Debug, Clone)]
struct SlotSpec {
    id: Vec<u8>,
    fingerprint: Vec<u8>,
    enc: Vec<u8>,
    sealed: Vec<u8>,
}

#[derive(Debug, Clone)]
enum SourceSpec {
    Keyring {
        id: Vec<u8>,
        version: u32,
        wrap_nonce: Vec<u8>,
        sealed: Vec<u8>,
    },
    Recipients(Vec<SlotSpec>),
}

#[derive(Debug, Clone)]
struct HeaderSpec {
    nonce: Vec<u8>,
    source: SourceSpec,
}

impl HeaderSpec {
    /// True when every name in it is what the format allows: 1 to 255
    /// bytes of UTF-8 without control characters (and key versions from 1).
    fn valid(&self) -> bool {
        let name_ok = |id: &[u8]| {
            !id.is_empty()
                && id.len() <= 255
                && std::str::from_utf8(id).is_ok_and(|s| !s.chars().any(char::is_control))
        };
        match &self.source {
            SourceSpec::Keyring { id, version, .. } => name_ok(id) && *version >= 1,
            SourceSpec::Recipients(slots) => {
                !slots.is_empty() && slots.len() <= 1024 && slots.iter().all(|s| name_ok(&s.id))
            }
        }
    }

    /// What `sealed_with` should say about a valid header.
    fn expected(&self) -> SealedWith {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("valid header");
        match &self.source {
            SourceSpec::Keyring { id, version, .. } => SealedWith::Keyring {
                id: text(id),
                version: *version,
            },
            SourceSpec::Recipients(slots) => SealedWith::Recipients(
                slots
                    .iter()
                    .map(|s| (text(&s.id), hex::encode(&s.fingerprint)))
                    .collect(),
            ),
        }
    }
}

fn encode(spec: &HeaderSpec) -> Vec<u8> {
    let mut out = vec![1, 1];
    let short = |out: &mut Vec<u8>, id: &[u8]| {
        out.push(u8::try_from(id.len()).expect("ids are at most 255 bytes"));
        out.extend_from_slice(id);
    };
    match &spec.source {
        SourceSpec::Keyring {
            id,
            version,
            wrap_nonce,
            sealed,
        } => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&spec.nonce);
            short(&mut out, id);
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(wrap_nonce);
            out.extend_from_slice(sealed);
        }
        SourceSpec::Recipients(slots) => {
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&spec.nonce);
            for id in [0x0020u16, 0x0001, 0x0002] {
                out.extend_from_slice(&id.to_be_bytes());
            }
            let count = u16::try_from(slots.len()).expect("few slots");
            out.extend_from_slice(&count.to_be_bytes());
            for s in slots {
                short(&mut out, &s.id);
                out.extend_from_slice(&s.fingerprint);
                out.extend_from_slice(&s.enc);
                out.extend_from_slice(&s.sealed);
            }
        }
    }
    out
}

/// Name characters the format allows: ASCII, multi-byte UTF-8.
const NAME_CHARS: &[char] = &[
    'o',
    'r',
    'd',
    'e',
    's',
    '-',
    '.',
    '/',
    '7',
    '\u{e9}',
    '\u{65e5}',
    '\u{1f511}',
];

/// Characters a name must not hold: C0 and C1 controls, DEL.
const CONTROL_CHARS: &[char] = &['\0', '\n', '\r', '\t', '\x1b', '\x7f', '\u{85}', '\u{9b}'];

/// Names the format allows (drawn without regex strategies, which are slow
/// at thousands of cases in a debug build).
fn arb_valid_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(select(NAME_CHARS), 1..40).prop_map(|c| String::from_iter(c).into_bytes()),
        1 => vec(any::<char>(), 1..20)
            .prop_map(|c| c.into_iter().filter(|c| !c.is_control()).collect::<String>())
            .prop_filter("not empty", |s| !s.is_empty())
            .prop_map(String::into_bytes),
        1 => Just(vec![b'k'; 255]),
    ]
}

/// Names: mostly valid, sometimes empty, not UTF-8, or carrying a control
/// character (a newline or an escape sequence in a key id would reach error
/// messages and logs).
fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => arb_valid_name(),
        1 => Just(Vec::new()),
        1 => vec(any::<u8>(), 1..24),
        1 => (vec(select(NAME_CHARS), 0..6), select(CONTROL_CHARS), vec(select(NAME_CHARS), 0..6))
            .prop_map(|(a, c, b)| a.into_iter().chain([c]).chain(b).collect::<String>().into_bytes()),
    ]
}

fn bytes_of(n: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), n..=n)
}

/// Headers of every kind.
fn arb_header() -> impl Strategy<Value = HeaderSpec> {
    header_of(
        arb_name().boxed(),
        prop_oneof![Just(1u32), Just(2), Just(0), Just(u32::MAX), any::<u32>()].boxed(),
    )
}

/// Headers the format allows.
fn arb_valid_header() -> impl Strategy<Value = HeaderSpec> {
    header_of(arb_valid_name().boxed(), (1u32..).boxed())
}

fn header_of(
    name: BoxedStrategy<Vec<u8>>,
    version: BoxedStrategy<u32>,
) -> impl Strategy<Value = HeaderSpec> {
    let slot = (name.clone(), bytes_of(8), bytes_of(32), bytes_of(48)).prop_map(
        |(id, fingerprint, enc, sealed)| SlotSpec {
            id,
            fingerprint,
            enc,
            sealed,
        },
    );
    let source = prop_oneof![
        (name, version, bytes_of(12), bytes_of(48)).prop_map(
            |(id, version, wrap_nonce, sealed)| SourceSpec::Keyring {
                id,
                version,
                wrap_nonce,
                sealed,
            }
        ),
        vec(slot, 1..4).prop_map(SourceSpec::Recipients),
    ];
    (bytes_of(12), source).prop_map(|(nonce, source)| HeaderSpec { nonce, source })
}

// ---------------------------------------------------------------------------
// the properties

/// Checks the parser's answer for `bytes`; `Ok(true)` when it accepted.
fn check(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let parsed = sealed_with(bytes);
    let again = reencode_header(bytes);
    prop_assert_eq!(
        parsed.is_ok(),
        again.is_ok(),
        "the two entry points disagree"
    );
    match again {
        Ok(written) => {
            prop_assert_eq!(
                &written[..],
                bytes,
                "accepted a header that is not the canonical encoding"
            );
            Ok(true)
        }
        Err(E2eError::MalformedHeader(m)) => {
            prop_assert!(
                FIELDS.iter().any(|f| m.contains(f)) || m.contains("trailing bytes"),
                "refusal names no field: {}",
                m
            );
            Ok(false)
        }
        Err(E2eError::UnsupportedHeader(_)) => Ok(false),
        Err(E2eError::Invalid(m)) => Err(TestCaseError::fail(format!(
            "accepted a header the writer refuses to write: {m}"
        ))),
        Err(other) => Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
    }
}

/// A real keyring header and a real recipients header, from the sealer.
fn sealer_headers() -> Vec<Vec<u8>> {
    let keyring = Keyring::generate("orders-key").expect("keyring");
    let by_keyring = E2eSealer::keyring(keyring, None).expect("sealer");
    let bob = Identity::generate(Some("bob")).expect("identity");
    let carol = Identity::generate(Some("carol")).expect("identity");
    let set = RecipientSet::from_trusted_keys(
        "demo.orders",
        [&bob, &carol]
            .iter()
            .map(|i| Recipient {
                id: i.recipient().expect("named").to_owned(),
                public_key: i.public_key(),
                expires_at: None,
            })
            .collect(),
    )
    .expect("recipient set");
    let by_recipients = E2eSealer::recipients([set]).expect("sealer");
    [by_keyring, by_recipients]
        .iter()
        .map(|s| {
            s.seal_value("demo.orders", Some(b"k"), b"v")
                .expect("seals")
                .0
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// A header the layout allows reads back exactly and writes back byte
    /// for byte; one it does not allow (an empty or overlong name, a name
    /// that is not UTF-8 or has a control character, key version 0) is
    /// refused.
    #[test]
    fn encoded_headers(spec in arb_header()) {
        let bytes = encode(&spec);
        let accepted = check(&bytes)?;
        prop_assert_eq!(accepted, spec.valid(), "acceptance of {:?}", spec);
        if accepted {
            prop_assert_eq!(sealed_with(&bytes).expect("accepted"), spec.expected());
        }
    }

    /// Every truncation of a valid header, and any bytes after it, are
    /// refused as malformed.
    #[test]
    fn truncations_and_trailing_bytes(
        spec in arb_valid_header(),
        cut in any::<proptest::sample::Index>(),
        junk in vec(any::<u8>(), 1..16),
    ) {
        prop_assert!(spec.valid());
        let bytes = encode(&spec);
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(
            matches!(sealed_with(short), Err(E2eError::MalformedHeader(_))),
            "{} of {} bytes accepted", short.len(), bytes.len()
        );
        check(short)?;
        let mut long = bytes.clone();
        long.extend_from_slice(&junk);
        prop_assert!(
            matches!(sealed_with(&long), Err(E2eError::MalformedHeader(ref m)) if m.contains("trailing")),
            "{:?}", sealed_with(&long)
        );
    }

    /// Mutated headers (encoded ones and the sealer's), and forged
    /// recipient counts: a count far above the slots present fails fast
    /// with a message naming the field.
    #[test]
    fn mutated_headers(
        spec in arb_header(),
        donor in arb_header(),
        mutations in vec(arb_mutation(), 1..4),
        count in prop_oneof![Just(0u16), Just(1024), Just(1025), Just(u16::MAX), any::<u16>()],
    ) {
        let mut bytes = encode(&spec);
        mutate_all(&mut bytes, &encode(&donor), &mutations);
        check(&bytes)?;

        if let SourceSpec::Recipients(slots) = &spec.source {
            let mut forged = encode(&spec);
            forged[22..24].copy_from_slice(&count.to_be_bytes());
            let accepted = check(&forged)?;
            prop_assert_eq!(
                accepted,
                spec.valid() && usize::from(count) == slots.len(),
                "count {} with {} slots", count, slots.len()
            );
        }
    }

    /// Random bytes, alone and behind a valid fixed part.
    #[test]
    fn random_bytes(bytes in vec(any::<u8>(), 0..300), source in 1u8..=2) {
        check(&bytes)?;
        let mut prefixed = vec![1, 1, source, 0];
        prefixed.extend_from_slice(&bytes);
        check(&prefixed)?;
    }
}

/// The sealer's own headers, and mutations of them.
#[test]
fn sealer_headers_and_their_mutations() {
    let headers = sealer_headers();
    for h in &headers {
        assert_eq!(reencode_header(h).as_deref(), Ok(&h[..]));
    }
    let mut runner = proptest::test_runner::TestRunner::new(Config {
        cases: cases(DEFAULT_CASES) / 3,
        ..config()
    });
    let strategy = (0..headers.len(), vec(arb_mutation(), 1..4));
    let result = runner.run(&strategy, |(which, mutations)| {
        let mut bytes = headers[which].clone();
        mutate_all(&mut bytes, &headers[1 - which], &mutations);
        check(&bytes)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The recipient limit of the format: 1024 slots are read, 1025 refused
/// by their count before any slot is read.
#[test]
fn recipient_count_limit() {
    let slot = |i: usize| SlotSpec {
        id: format!("r{i}").into_bytes(),
        fingerprint: vec![1; 8],
        enc: vec![2; 32],
        sealed: vec![3; 48],
    };
    let header = |n: usize| HeaderSpec {
        nonce: vec![0; 12],
        source: SourceSpec::Recipients((0..n).map(slot).collect()),
    };
    let most = header(1024);
    let bytes = encode(&most);
    assert_eq!(reencode_header(&bytes).as_deref(), Ok(&bytes[..]));
    assert_eq!(sealed_with(&bytes), Ok(most.expected()));
    let result = sealed_with(&encode(&header(1025)));
    assert!(
        matches!(&result, Err(E2eError::MalformedHeader(m)) if m.contains("recipient_count 1025")),
        "{result:?}"
    );
}

/// Each input in the cargo-fuzz seed corpus is a header this client
/// accepts, so the corpus keeps up with the format.
#[test]
fn seed_corpus_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/e2e_header");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.expect("seed entry").path();
        let seed = std::fs::read(&path).expect("seed file");
        assert_eq!(
            reencode_header(&seed).as_deref(),
            Ok(&seed[..]),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2, "{seen} seeds in {}", dir.display());
}
