use super::*;
use crate::format::tests::{GOLDEN_LINE, golden_key};
use crate::format::{AuditMark, Checkpoint, RegistryMark, SealMark};
use crate::verify_line;

fn checkpoint() -> Checkpoint {
    let versions = vec![
        RegistryEntry {
            scope: "broker".into(),
            version: 1,
            state: "decrypt-only".into(),
            created_at: 1,
        },
        RegistryEntry {
            scope: "broker".into(),
            version: 2,
            state: "active".into(),
            created_at: 3,
        },
    ];
    Checkpoint {
        format: "strongbox-checkpoint".into(),
        version: 1,
        broker_id: "b1".into(),
        time: "2026-01-31T09:00:00.000Z".into(),
        time_ms: 1_769_850_000_000,
        audit: AuditMark {
            sequence: 10,
            hash: [1; 32],
        },
        partitions: vec![PartitionMark {
            topic: "orders".into(),
            topic_id: "aa".into(),
            partition: 0,
            durability: "fsync".into(),
            log_start_offset: 0,
            end_offset: 500,
            last_seal: Some(SealMark {
                base_offset: 0,
                next_offset: 400,
                mac: [7; 32],
            }),
        }],
        key_registry: RegistryMark {
            digest: registry_digest(&versions),
            versions,
        },
        key_id: "k".into(),
    }
}

/// A directory exactly as the checkpoint saw it.
fn same() -> Observed {
    let c = checkpoint();
    let partitions = [(
        0,
        ObservedPartition {
            log_start_offset: 0,
            end_offset: Some(500),
            seals: Some([(0, [7; 32])].into_iter().collect()),
        },
    )];
    let topic = ObservedTopic {
        topic_id: "aa".into(),
        partitions: partitions.into_iter().collect(),
    };
    Observed {
        audit_sequence: 10,
        audit_hash_at_checkpoint: Some([1; 32]),
        deleted_since: HashSet::new(),
        topics: Ok([("orders".to_owned(), topic)].into_iter().collect()),
        registry: Ok(c.key_registry.versions),
    }
}

/// The partition `orders/0` of `observed`.
fn orders0(observed: &mut Observed) -> &mut ObservedPartition {
    observed
        .topics
        .as_mut()
        .expect("topics")
        .get_mut("orders")
        .expect("orders")
        .partitions
        .get_mut(&0)
        .expect("orders/0")
}

/// The seals of `orders/0` of `observed`.
fn seals0(observed: &mut Observed) -> &mut HashMap<u64, [u8; 32]> {
    orders0(observed).seals.as_mut().expect("seals")
}

fn problems(found: &[Finding]) -> Vec<&'static str> {
    found.iter().filter(|f| f.problem).map(|f| f.kind).collect()
}

#[test]
fn the_same_state_and_a_newer_one_pass() {
    assert!(compare(&checkpoint(), &same()).is_empty());
    let mut newer = same();
    newer.audit_sequence = 25;
    orders0(&mut newer).end_offset = Some(900);
    seals0(&mut newer).insert(400, [8; 32]);
    if let Ok(r) = newer.registry.as_mut() {
        r[1].state = "decrypt-only".into();
        r.push(RegistryEntry {
            scope: "broker".into(),
            version: 3,
            state: "active".into(),
            created_at: 9,
        });
    }
    let found = compare(&checkpoint(), &newer);
    assert_eq!(problems(&found), Vec::<&str>::new(), "{found:?}");
    assert!(found.iter().any(|f| f.kind == "registry_changed"));
    assert!(
        found
            .iter()
            .any(|f| f.kind == "ahead" && f.message.contains("15 record"))
    );
}

#[test]
fn an_older_trail_is_a_rollback() {
    let mut older = same();
    older.audit_sequence = 7;
    older.audit_hash_at_checkpoint = None;
    let found = compare(&checkpoint(), &older);
    assert_eq!(problems(&found), ["rollback"]);
    assert!(
        found[0].message.contains("ends at record 7")
            && found[0].message.contains("recorded record 10")
            && found[0].message.contains("3 audit record(s) older"),
        "{}",
        found[0].message
    );
}

#[test]
fn a_rolled_back_copy_written_to_since_is_caught_by_the_hash() {
    let mut forked = same();
    forked.audit_sequence = 30;
    forked.audit_hash_at_checkpoint = Some([2; 32]);
    let found = compare(&checkpoint(), &forked);
    assert_eq!(problems(&found), ["audit_rewritten"]);
    assert!(found[0].message.contains("audit record 10 has hash 0202"));
}

#[test]
fn a_partition_behind_or_with_another_seal_is_named() {
    let mut behind = same();
    orders0(&mut behind).end_offset = Some(450);
    let found = compare(&checkpoint(), &behind);
    assert_eq!(problems(&found), ["partition_behind"]);
    assert!(
        found[0]
            .message
            .contains("orders/0 ends at offset 450, before offset 500")
            && found[0].message.contains("50 record(s) are missing"),
        "{}",
        found[0].message
    );

    let mut reseal = same();
    seals0(&mut reseal).insert(0, [9; 32]);
    assert_eq!(problems(&compare(&checkpoint(), &reseal)), ["seal_differs"]);

    let mut unsealed = same();
    seals0(&mut unsealed).clear();
    assert_eq!(
        problems(&compare(&checkpoint(), &unsealed)),
        ["seal_missing"]
    );

    // Retention deleting the sealed segment since is no problem.
    let mut retained = unsealed;
    orders0(&mut retained).log_start_offset = 400;
    retained.audit_sequence = 11;
    retained.audit_hash_at_checkpoint = Some([1; 32]);
    assert!(problems(&compare(&checkpoint(), &retained)).is_empty());
}

#[test]
fn a_missing_topic_needs_a_recorded_deletion() {
    let mut gone = same();
    gone.topics = Ok(HashMap::new());
    gone.audit_sequence = 12;
    assert_eq!(problems(&compare(&checkpoint(), &gone)), ["topic_missing"]);
    gone.deleted_since.insert("orders".into());
    let found = compare(&checkpoint(), &gone);
    assert!(problems(&found).is_empty(), "{found:?}");
    assert!(found.iter().any(|f| f.kind == "topic_deleted"));
}

#[test]
fn a_key_version_going_back_is_a_registry_problem() {
    for (i, (state, created)) in [("active", 1), ("decrypt-only", 2)].into_iter().enumerate() {
        let mut back = same();
        back.audit_sequence = 20;
        if let Ok(r) = back.registry.as_mut() {
            r[0].state = state.into();
            r[0].created_at = created;
        }
        let found = compare(&checkpoint(), &back);
        assert_eq!(problems(&found), ["registry_differs"], "case {i}");
        assert!(
            found[0].message.contains("broker/v1"),
            "{}",
            found[0].message
        );
    }
    // Removed.
    let mut removed = same();
    if let Ok(r) = removed.registry.as_mut() {
        r.remove(1);
    }
    let found = compare(&checkpoint(), &removed);
    assert_eq!(problems(&found), ["registry_differs"]);
    assert!(
        found[0]
            .message
            .contains("broker/v2 (active at the checkpoint) is not in")
    );
    // A forward change with no audit record since is suspicious too.
    let mut quiet = same();
    if let Ok(r) = quiet.registry.as_mut() {
        r[1].state = "destroyed".into();
    }
    let found = compare(&checkpoint(), &quiet);
    assert_eq!(problems(&found), ["registry_differs"]);
    assert!(found[0].message.contains("records nothing since"));
}

#[test]
fn a_topic_under_another_id_needs_a_recorded_deletion() {
    let mut recreated = same();
    recreated.audit_sequence = 12;
    if let Ok(t) = recreated.topics.as_mut() {
        t.get_mut("orders").expect("orders").topic_id = "bb".into();
    }
    let found = compare(&checkpoint(), &recreated);
    assert_eq!(problems(&found), ["topic_recreated"], "{found:?}");
    assert!(found[0].message.contains("topic id bb now but had aa"));
    recreated.deleted_since.insert("orders".into());
    let found = compare(&checkpoint(), &recreated);
    assert!(problems(&found).is_empty(), "{found:?}");
    assert!(found.iter().any(|f| f.kind == "topic_deleted"));
}

#[test]
fn what_could_not_be_read_is_a_notice_not_a_pass_or_a_problem() {
    let mut blind = same();
    blind.topics = Err("describe denied".into());
    blind.registry = Err("keys denied".into());
    let found = compare(&checkpoint(), &blind);
    assert!(problems(&found).is_empty(), "{found:?}");
    let unchecked: Vec<&str> = found
        .iter()
        .filter(|f| f.kind == "not_checked")
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(
        unchecked,
        [
            "partition ends were not checked: describe denied",
            "the key registry was not checked: keys denied"
        ]
    );
}

/// A running broker as the client sees it: partition ends from describing
/// the topic, no seals.
fn served_like(c: &Checkpoint) -> Observed {
    let partitions = [(0u32, 1500u64), (1, 7)].map(|(i, end)| {
        (
            i,
            ObservedPartition {
                log_start_offset: 0,
                end_offset: Some(end),
                seals: None,
            },
        )
    });
    let topic = ObservedTopic {
        topic_id: "0f".repeat(16),
        partitions: partitions.into_iter().collect(),
    };
    Observed {
        audit_sequence: 42,
        audit_hash_at_checkpoint: Some([0xab; 32]),
        topics: Ok([("orders".to_owned(), topic)].into_iter().collect()),
        registry: Ok(c.key_registry.versions.clone()),
        ..Observed::default()
    }
}

#[test]
fn a_broker_as_new_as_the_golden_checkpoint_passes_and_an_older_one_does_not() {
    let c = verify_line(GOLDEN_LINE, &golden_key()).expect("verifies");
    assert!(compare(&c, &served_like(&c)).is_empty());

    let mut older = served_like(&c);
    older.audit_sequence = 40;
    older.audit_hash_at_checkpoint = None;
    if let Ok(t) = older.topics.as_mut()
        && let Some(p) = t.get_mut("orders").and_then(|t| t.partitions.get_mut(&0))
    {
        p.end_offset = Some(1450);
    }
    let found = compare(&c, &older);
    assert_eq!(
        problems(&found),
        ["rollback", "partition_behind"],
        "{found:?}"
    );
    assert!(found[0].message.contains("ends at record 40"));
    assert!(
        found[1]
            .message
            .contains("orders/0 ends at offset 1450, before offset 1500")
    );

    let mut back = served_like(&c);
    back.audit_sequence = 50;
    if let Ok(r) = back.registry.as_mut() {
        r[0].state = "active".into(); // was decrypt-only
    }
    let found = compare(&c, &back);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, "registry_differs");
    assert!(found[0].message.contains("broker/v1 was decrypt-only"));
}
