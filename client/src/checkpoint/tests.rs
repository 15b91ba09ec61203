use super::*;

/// The broker's golden checkpoint (broker/src/checkpoint/format/tests.rs)
/// and its key: both sides read the same bytes alike.
const GOLDEN_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZ3JBlENhgAhlgVfekJ8UisboiC03
2AmrGCo3ScF68CtdYfNC2bvn+YJ49qHZF+l4RysmSLIRt4pGEpPg20yRlQ==
-----END PUBLIC KEY-----
";
const GOLDEN_LINE: &str = r#"{"format":"strongbox-checkpoint","version":1,"broker_id":"b1","time":"2026-01-31T09:00:00.000Z","time_ms":1769850000000,"audit":{"sequence":42,"hash":"abababababababababababababababababababababababababababababababab"},"partitions":[{"topic":"orders","topic_id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","partition":0,"durability":"fsync","log_start_offset":100,"end_offset":1500,"last_seal":{"base_offset":100,"next_offset":1200,"mac":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"}},{"topic":"orders","topic_id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","partition":1,"durability":"none","log_start_offset":0,"end_offset":7,"last_seal":null}],"key_registry":{"digest":"208d9aab8a14cdce58a6190c74c482d26d43a3b01be4d9704cfd371a33fc0709","versions":[{"scope":"broker","version":1,"state":"decrypt-only","created_at":1},{"scope":"broker","version":2,"state":"active","created_at":3},{"scope":"topic-0f0f","version":1,"state":"active","created_at":5}]},"key_id":"2400d92be06bce65","signature":"ed5662a5d38e6fbbfb3ea99a3394e231844363b9ad3b5e05fd649a6e3a3ac5754e3a7bd09b8cfcaa0a6fad88466045a1fac31edb76af847a54fcd24ad21dec2a"}"#;

fn key() -> CheckpointKey {
    CheckpointKey::from_pem(GOLDEN_PEM).expect("golden key")
}

#[test]
fn the_golden_checkpoint_verifies_and_reads_as_the_broker_wrote_it() {
    assert_eq!(key().key_id(), "2400d92be06bce65");
    let c = verify_line(GOLDEN_LINE, &key()).expect("verifies");
    assert_eq!((c.broker_id.as_str(), c.audit.sequence), ("b1", 42));
    assert_eq!(c.partitions.len(), 2);
    assert_eq!(c.partitions[0].end_offset, 1500);
    assert_eq!(c.partitions[1].durability, "none");
    assert_eq!(
        hex::encode(registry_digest(&c.key_registry.versions)),
        "208d9aab8a14cdce58a6190c74c482d26d43a3b01be4d9704cfd371a33fc0709"
    );
}

#[test]
fn altered_and_forged_checkpoints_are_refused() {
    let altered = GOLDEN_LINE.replace("\"end_offset\":1500", "\"end_offset\":1400");
    assert!(matches!(
        verify_line(&altered, &key()),
        Err(CheckpointError::BadSignature(_))
    ));
    let other_id = GOLDEN_LINE.replace("2400d92be06bce65", "1111111111111111");
    assert!(matches!(
        verify_line(&other_id, &key()),
        Err(CheckpointError::OtherKey { .. })
    ));
    assert!(matches!(
        verify_line("{}", &key()),
        Err(CheckpointError::Malformed(_))
    ));
    assert!(
        CheckpointKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
            .is_err()
    );
}

fn observed_like(c: &Checkpoint) -> Observed {
    let mut topics = HashMap::new();
    topics.insert(
        "orders".to_owned(),
        Some((
            "0f".repeat(16),
            [(0u32, 1500u64), (1, 7)].into_iter().collect(),
        )),
    );
    Observed {
        audit_sequence: 42,
        audit_hash_at_checkpoint: Some([0xab; 32]),
        topics,
        registry: Ok(c.key_registry.versions.clone()),
        ..Observed::default()
    }
}

#[test]
fn a_broker_as_new_as_the_checkpoint_passes_and_an_older_one_does_not() {
    let c = verify_line(GOLDEN_LINE, &key()).expect("verifies");
    assert!(compare(&c, &observed_like(&c)).is_empty());

    let mut older = observed_like(&c);
    older.audit_sequence = 40;
    older.audit_hash_at_checkpoint = None;
    if let Some(Some((_, ends))) = older.topics.get_mut("orders") {
        ends.insert(0, 1450);
    }
    let found = compare(&c, &older);
    let kinds: Vec<&str> = found.iter().filter(|f| f.problem).map(|f| f.kind).collect();
    assert_eq!(kinds, ["rollback", "partition_behind"], "{found:?}");
    assert!(found[0].message.contains("ends at record 40"));
    assert!(
        found[1]
            .message
            .contains("orders/0 ends at offset 1450, before offset 1500")
    );

    let mut back = observed_like(&c);
    back.audit_sequence = 50;
    if let Ok(r) = back.registry.as_mut() {
        r[0].state = "active".into(); // was decrypt-only
    }
    let found = compare(&c, &back);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, "registry_differs");
    assert!(found[0].message.contains("broker/v1 was decrypt-only"));
}
