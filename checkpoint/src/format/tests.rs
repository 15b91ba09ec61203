use super::*;
use crate::{CheckpointError, CheckpointPublicKey, verify_line};

/// A fixed test key (PKCS#8, ECDSA P-256): for these tests only.
const GOLDEN_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420e146bfa9abe45fdbe62a5ac346e36bb28d04b797f0327f401ebcb2e8b24d4a86a144034200046772419443618008658157de909f148ac6e8882d37d809ab182a3749c17af02b5d61f342d9bbe7f98278f6a1d917e978472b2648b211b78a461293e0db4c9195";

/// Its public key, as `strongbox-broker checkpoint public-key` prints it.
pub(crate) const GOLDEN_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZ3JBlENhgAhlgVfekJ8UisboiC03
2AmrGCo3ScF68CtdYfNC2bvn+YJ49qHZF+l4RysmSLIRt4pGEpPg20yRlQ==
-----END PUBLIC KEY-----
";

/// [`example`] signed by the golden key: the one golden checkpoint, which
/// the broker writes and both the broker and the client read.
pub(crate) const GOLDEN_LINE: &str = r#"{"format":"strongbox-checkpoint","version":1,"broker_id":"b1","time":"2026-01-31T09:00:00.000Z","time_ms":1769850000000,"audit":{"sequence":42,"hash":"abababababababababababababababababababababababababababababababab"},"partitions":[{"topic":"orders","topic_id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","partition":0,"durability":"fsync","log_start_offset":100,"end_offset":1500,"last_seal":{"base_offset":100,"next_offset":1200,"mac":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"}},{"topic":"orders","topic_id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","partition":1,"durability":"none","log_start_offset":0,"end_offset":7,"last_seal":null}],"key_registry":{"digest":"208d9aab8a14cdce58a6190c74c482d26d43a3b01be4d9704cfd371a33fc0709","versions":[{"scope":"broker","version":1,"state":"decrypt-only","created_at":1},{"scope":"broker","version":2,"state":"active","created_at":3},{"scope":"topic-0f0f","version":1,"state":"active","created_at":5}]},"key_id":"2400d92be06bce65","signature":"ed5662a5d38e6fbbfb3ea99a3394e231844363b9ad3b5e05fd649a6e3a3ac5754e3a7bd09b8cfcaa0a6fad88466045a1fac31edb76af847a54fcd24ad21dec2a"}"#;

pub(crate) fn golden_key() -> CheckpointPublicKey {
    CheckpointPublicKey::from_pem(GOLDEN_PEM).expect("golden PEM")
}

pub(crate) fn example() -> Unsigned {
    Unsigned {
        broker_id: "b1".into(),
        time_ms: 1_769_850_000_000,
        time: "2026-01-31T09:00:00.000Z".into(),
        audit: AuditMark {
            sequence: 42,
            hash: [0xab; 32],
        },
        // Out of order on purpose: the encoding sorts.
        partitions: vec![
            PartitionMark {
                topic: "orders".into(),
                topic_id: "0f".repeat(16),
                partition: 1,
                durability: "none".into(),
                log_start_offset: 0,
                end_offset: 7,
                last_seal: None,
            },
            PartitionMark {
                topic: "orders".into(),
                topic_id: "0f".repeat(16),
                partition: 0,
                durability: "fsync".into(),
                log_start_offset: 100,
                end_offset: 1500,
                last_seal: Some(SealMark {
                    base_offset: 100,
                    next_offset: 1200,
                    mac: [0xcd; 32],
                }),
            },
        ],
        registry: vec![
            RegistryEntry {
                scope: "topic-0f0f".into(),
                version: 1,
                state: "active".into(),
                created_at: 5,
            },
            RegistryEntry {
                scope: "broker".into(),
                version: 2,
                state: "active".into(),
                created_at: 3,
            },
            RegistryEntry {
                scope: "broker".into(),
                version: 1,
                state: "decrypt-only".into(),
                created_at: 1,
            },
        ],
    }
}

fn body_of(line: &str) -> String {
    let at = line.rfind(",\"signature\"").expect("a signature field");
    format!("{}}}", &line[..at])
}

#[test]
fn the_body_is_the_golden_line_without_its_signature() {
    let key = golden_key();
    assert_eq!(key.key_id(), "2400d92be06bce65");
    assert_eq!(key.to_pem(), GOLDEN_PEM);
    assert_eq!(example().body(&key.key_id()), body_of(GOLDEN_LINE));
}

#[test]
fn the_golden_line_verifies_and_reads_back() {
    let c = verify_line(GOLDEN_LINE, &golden_key()).expect("verifies");
    assert_eq!(c.broker_id, "b1");
    assert_eq!(c.time, "2026-01-31T09:00:00.000Z");
    assert_eq!(c.audit.sequence, 42);
    assert_eq!(c.audit.hash, [0xab; 32]);
    assert_eq!(c.partitions.len(), 2);
    assert_eq!(c.partitions[0].partition, 0);
    assert_eq!(c.partitions[0].last_seal.map(|s| s.mac), Some([0xcd; 32]));
    assert_eq!(c.partitions[1].last_seal, None);
    assert_eq!(c.key_registry.versions[0].state, "decrypt-only");
    assert_eq!(
        hex::encode(c.key_registry.digest),
        "208d9aab8a14cdce58a6190c74c482d26d43a3b01be4d9704cfd371a33fc0709"
    );
    // A trailing newline (as the export files hold it) is fine.
    assert!(verify_line(&format!("{GOLDEN_LINE}\n"), &golden_key()).is_ok());
}

#[test]
fn a_fresh_signature_by_the_same_key_verifies() {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = hex::decode(GOLDEN_PKCS8).expect("hex");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
        .expect("golden key");
    let body = example().body("2400d92be06bce65");
    let sig = pair.sign(&rng, body.as_bytes()).expect("signs");
    let line = signed_line(&body, sig.as_ref());
    assert_eq!(
        verify_line(&line, &golden_key()).expect("verifies"),
        verify_line(GOLDEN_LINE, &golden_key()).expect("verifies")
    );
}

#[test]
fn any_altered_byte_is_refused() {
    let key = golden_key();
    let bytes = GOLDEN_LINE.as_bytes();
    // Every digit of the numbers and hashes, and every letter: changing
    // one to another of its kind keeps the JSON valid, so only the
    // signature can catch it.
    let mut checked = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let swapped = match b {
            b'0'..=b'8' => b + 1,
            b'9' => b'0',
            b'a'..=b'y' => b + 1,
            _ => continue,
        };
        let mut altered = bytes.to_vec();
        altered[i] = swapped;
        let text = String::from_utf8(altered).expect("ASCII");
        assert!(
            verify_line(&text, &key).is_err(),
            "byte {i} ({}) altered went unnoticed",
            char::from(b)
        );
        checked += 1;
    }
    assert!(checked > 500, "{checked}");
}

#[test]
fn a_forgery_under_another_key_is_refused() {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let mallory = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let mallory_key =
        CheckpointPublicKey::from_point(mallory.public_key().as_ref()).expect("point");
    // Mallory writes a checkpoint claiming the real key id.
    let mut forged = example();
    forged.audit.sequence = 1_000_000;
    let body = forged.body(&golden_key().key_id());
    let sig = mallory.sign(&rng, body.as_bytes()).expect("signs");
    let line = signed_line(&body, sig.as_ref());
    assert_eq!(
        verify_line(&line, &golden_key()),
        Err(CheckpointError::BadSignature {
            key_id: golden_key().key_id()
        })
    );
    // Under its own key id it names another key.
    let body = forged.body(&mallory_key.key_id());
    let sig = mallory.sign(&rng, body.as_bytes()).expect("signs");
    assert!(matches!(
        verify_line(&signed_line(&body, sig.as_ref()), &golden_key()),
        Err(CheckpointError::OtherKey { .. })
    ));
}

#[test]
fn junk_and_truncations_are_malformed_never_a_panic() {
    let key = golden_key();
    for text in ["", "{}", "hello", "{\"signature\":\"00\"}"] {
        assert!(matches!(
            verify_line(text, &key),
            Err(CheckpointError::Malformed(_))
        ));
    }
    for n in (0..GOLDEN_LINE.len()).step_by(7) {
        assert!(verify_line(&GOLDEN_LINE[..n], &key).is_err(), "{n}");
    }
}

#[test]
fn the_registry_digest_ignores_order_and_sees_every_field() {
    let v = example().registry;
    let mut reversed = v.clone();
    reversed.reverse();
    assert_eq!(registry_digest(&v), registry_digest(&reversed));
    for change in 0..4 {
        let mut w = v.clone();
        match change {
            0 => w[0].scope.push('x'),
            1 => w[0].version += 1,
            2 => w[0].state = "destroyed".into(),
            _ => w[0].created_at += 1,
        }
        assert_ne!(registry_digest(&v), registry_digest(&w), "change {change}");
    }
}

proptest::proptest! {
    #[test]
    fn verify_line_never_panics(text in ".{0,400}") {
        let _ = verify_line(&text, &golden_key());
    }
}
