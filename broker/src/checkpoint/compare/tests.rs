use super::*;
use crate::checkpoint::format::{AuditMark, Checkpoint, RegistryMark, SealMark};

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
    let mut partitions = HashMap::new();
    partitions.insert(
        ("aa".to_owned(), 0),
        ObservedPartition {
            log_start_offset: 0,
            end_offset: Some(500),
            seals: [(0, [7; 32])].into_iter().collect(),
        },
    );
    Observed {
        audit_sequence: 10,
        audit_hash_at_checkpoint: Some([1; 32]),
        deleted_since: HashSet::new(),
        partitions,
        registry: Some(c.key_registry.versions),
    }
}

fn problems(found: &[Finding]) -> Vec<&'static str> {
    found.iter().filter(|f| f.problem).map(|f| f.kind).collect()
}

#[test]
fn the_same_state_and_a_newer_one_pass() {
    assert!(compare(&checkpoint(), &same()).is_empty());
    let mut newer = same();
    newer.audit_sequence = 25;
    let p = newer.partitions.get_mut(&("aa".to_owned(), 0)).expect("p");
    p.end_offset = Some(900);
    p.seals.insert(400, [8; 32]);
    if let Some(r) = newer.registry.as_mut() {
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
    let p = behind.partitions.get_mut(&("aa".to_owned(), 0)).expect("p");
    p.end_offset = Some(450);
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
    reseal
        .partitions
        .get_mut(&("aa".to_owned(), 0))
        .expect("p")
        .seals
        .insert(0, [9; 32]);
    assert_eq!(problems(&compare(&checkpoint(), &reseal)), ["seal_differs"]);

    let mut unsealed = same();
    unsealed
        .partitions
        .get_mut(&("aa".to_owned(), 0))
        .expect("p")
        .seals
        .clear();
    assert_eq!(
        problems(&compare(&checkpoint(), &unsealed)),
        ["seal_missing"]
    );

    // Retention deleting the sealed segment since is no problem.
    let mut retained = unsealed;
    let p = retained
        .partitions
        .get_mut(&("aa".to_owned(), 0))
        .expect("p");
    p.log_start_offset = 400;
    retained.audit_sequence = 11;
    retained.audit_hash_at_checkpoint = Some([1; 32]);
    assert!(problems(&compare(&checkpoint(), &retained)).is_empty());
}

#[test]
fn a_missing_topic_needs_a_recorded_deletion() {
    let mut gone = same();
    gone.partitions.clear();
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
        if let Some(r) = back.registry.as_mut() {
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
    if let Some(r) = removed.registry.as_mut() {
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
    if let Some(r) = quiet.registry.as_mut() {
        r[1].state = "destroyed".into();
    }
    let found = compare(&checkpoint(), &quiet);
    assert_eq!(problems(&found), ["registry_differs"]);
    assert!(found[0].message.contains("records nothing since"));
}
