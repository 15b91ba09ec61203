//! The metadata store: every table round-trips, batches are atomic, data
//! survives reopening, and corrupt values are errors.

use bytes::Bytes;
use strongbox_protocol::model::KeyState;
use strongbox_protocol::model::{
    AccessRequestInfo, AccessState, AclEffect, AclRule, Durability, Operations, TopicConfig,
};
use strongbox_storage::keys::{KekId, KekScope, KekVersion, SegmentRef};
use strongbox_storage::meta::{
    AclEntry, AuditHead, MetaError, MetaStore, ProducerRecord, TopicEntry, tables,
};

fn topic(name: &str, id: u8, durability: Durability) -> TopicEntry {
    TopicEntry {
        name: name.to_owned(),
        topic_id: [id; 16],
        created_at: 1_700_000_000_000 + i64::from(id),
        config: TopicConfig {
            partitions: u32::from(id) + 1,
            durability,
            retention_ms: Some(86_400_000),
            retention_bytes: None,
            segment_bytes: Some(1 << 30),
            segment_ms: None,
            dedicated_kek: id.is_multiple_of(2),
        },
    }
}

fn rule(principal: &str, topic: &str, ops: Operations, effect: AclEffect) -> AclRule {
    AclRule {
        principal: principal.to_owned(),
        topic: topic.to_owned(),
        operations: ops,
        effect,
        expires_at: None,
    }
}

fn request(requester: &str, topic: &str) -> AccessRequestInfo {
    AccessRequestInfo {
        id: 0,
        requester: requester.to_owned(),
        topic: topic.to_owned(),
        operations: Operations::SUBSCRIBE,
        reason: "quarterly report".to_owned(),
        public_key: Some(Bytes::from_static(&[1, 2, 3, 255])),
        state: AccessState::Pending,
        created_at: 42,
        decided_by: None,
        decision_reason: None,
        decided_at: None,
        expires_at: None,
    }
}

fn kek(version: u32) -> KekId {
    KekId {
        scope: KekScope::Broker,
        version,
    }
}

fn version(version: u32, state: KeyState) -> KekVersion {
    KekVersion {
        id: kek(version),
        state,
        provider: "file".to_owned(),
        created_at: 10,
        state_changed_at: 20,
        segments: 0,
    }
}

fn seg(n: u8) -> SegmentRef {
    SegmentRef {
        topic_id: [9; 16],
        partition: u32::from(n) % 3,
        segment_id: [n; 16],
    }
}

#[test]
fn topics_round_trip_and_delete_cascades() {
    let meta = MetaStore::in_memory().unwrap();
    let a = topic("orders", 1, Durability::Fsync);
    let b = topic("orders.eu", 2, Durability::Interval { interval_ms: 250 });
    let c = topic("payments", 3, Durability::None);
    meta.write(|tx| {
        for t in [&a, &b, &c] {
            tx.create_topic(t)?;
        }
        tx.commit_offset("g", "orders", 0, 10)?;
        tx.commit_offset("g", "orders.eu", 0, 20)?;
        tx.put_recipient("orders", "alice", b"signed-a")?;
        tx.put_recipient("orders.eu", "bob", b"signed-b")?;
        Ok::<_, MetaError>(())
    })
    .unwrap();

    meta.read(|r| {
        assert_eq!(r.topic("orders")?.as_ref(), Some(&a));
        assert_eq!(r.topic("orders.eu")?.as_ref(), Some(&b));
        assert_eq!(r.topic("payments")?.as_ref(), Some(&c));
        assert_eq!(r.topic("nope")?, None);
        assert_eq!(r.topics()?, vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(r.topic_by_id(&[3; 16])?.as_ref(), Some(&c));
        assert_eq!(r.topic("orders")?.unwrap().to_info().config, a.config);
        Ok::<_, MetaError>(())
    })
    .unwrap();

    let err = meta.write(|tx| tx.create_topic(&a)).unwrap_err();
    assert!(
        matches!(err, MetaError::TopicExists(ref n) if n == "orders"),
        "{err}"
    );

    let gone = meta.write(|tx| tx.delete_topic("orders")).unwrap();
    assert_eq!(gone, Some(a));
    meta.read(|r| {
        assert_eq!(r.topic("orders")?, None);
        assert_eq!(r.offset("g", "orders", 0)?, None);
        assert!(r.recipients("orders")?.is_empty());
        // The topic whose name starts the same way is untouched.
        assert_eq!(r.offset("g", "orders.eu", 0)?, Some(20));
        assert_eq!(r.recipients("orders.eu")?.len(), 1);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    assert_eq!(meta.write(|tx| tx.delete_topic("orders")).unwrap(), None);
}

#[test]
fn group_offsets_round_trip() {
    let meta = MetaStore::in_memory().unwrap();
    meta.write(|tx| {
        tx.commit_offset("billing", "orders", 0, 5)?;
        tx.commit_offset("billing", "orders", 1, 6)?;
        tx.commit_offset("billing", "orders", 0, 7)?;
        tx.commit_offset("audit", "orders", 0, 1)?;
        tx.commit_offset("billing-2", "orders", 0, 9)?;
        Ok::<_, MetaError>(())
    })
    .unwrap();
    meta.read(|r| {
        assert_eq!(r.offset("billing", "orders", 0)?, Some(7));
        assert_eq!(r.offset("billing", "orders", 2)?, None);
        assert_eq!(
            r.group_offsets("billing")?,
            vec![("orders".to_owned(), 0, 7), ("orders".to_owned(), 1, 6)]
        );
        assert_eq!(r.groups()?, vec!["audit", "billing", "billing-2"]);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    assert_eq!(meta.write(|tx| tx.delete_group("billing")).unwrap(), 2);
    assert_eq!(
        meta.read(|r| r.groups()).unwrap(),
        vec!["audit", "billing-2"]
    );
}

#[test]
fn producer_state_round_trips_and_ids_are_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.redb");
    let meta = MetaStore::open(&path).unwrap();
    let ids: Vec<u64> = (0..3)
        .map(|_| meta.write(|tx| tx.allocate_producer_id()).unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    meta.write(|tx| {
        tx.put_producer(
            2,
            &ProducerRecord {
                epoch: 3,
                updated_at: 99,
                principal: Some("spiffe://test/alice".into()),
            },
        )?;
        Ok::<_, MetaError>(())
    })
    .unwrap();
    meta.read(|r| {
        assert_eq!(r.producer(2)?.unwrap().epoch, 3);
        // The id stays bound to the principal that obtained it.
        assert_eq!(
            r.producer(2)?.unwrap().principal.as_deref(),
            Some("spiffe://test/alice")
        );
        assert_eq!(r.producer(1)?, None);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    assert!(meta.write(|tx| tx.remove_producer(2)).unwrap());
    assert_eq!(meta.read(|r| r.producer(2)).unwrap(), None);
    assert!(!meta.write(|tx| tx.remove_producer(2)).unwrap());

    // A failed batch does not consume an id; a reopened store continues.
    let failed: Result<(), MetaError> = meta.write(|tx| {
        tx.allocate_producer_id()?;
        Err(MetaError::Conflict("abandoned".to_owned()))
    });
    assert!(failed.is_err());
    drop(meta);
    let meta = MetaStore::open(&path).unwrap();
    assert_eq!(meta.write(|tx| tx.allocate_producer_id()).unwrap(), 4);
}

#[test]
fn acl_rules_round_trip() {
    let meta = MetaStore::in_memory().unwrap();
    let allow = rule(
        "spiffe://prod/*",
        "orders.*",
        Operations::PUBLISH.union(Operations::DESCRIBE),
        AclEffect::Allow,
    );
    let deny = rule("bob", "orders.*", Operations::SUBSCRIBE, AclEffect::Deny);
    let mut granted = rule("carol", "payments", Operations::SUBSCRIBE, AclEffect::Allow);
    granted.expires_at = Some(1_000);
    meta.write(|tx| {
        tx.put_acl(&AclEntry {
            rule: allow.clone(),
            request_id: None,
            created_at: 1,
        })?;
        tx.put_acl(&AclEntry {
            rule: deny.clone(),
            request_id: None,
            created_at: 2,
        })?;
        tx.put_acl(&AclEntry {
            rule: granted.clone(),
            request_id: Some(17),
            created_at: 3,
        })?;
        Ok::<_, MetaError>(())
    })
    .unwrap();
    let all = meta.read(|r| r.acls()).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|e| e.rule == allow && e.created_at == 1));
    assert!(all.iter().any(|e| e.rule == deny));
    assert!(
        all.iter()
            .any(|e| e.rule == granted && e.request_id == Some(17))
    );

    // The same rule with another expiry replaces it.
    let mut extended = granted.clone();
    extended.expires_at = Some(5_000);
    let replaced = meta
        .write(|tx| {
            tx.put_acl(&AclEntry {
                rule: extended.clone(),
                request_id: Some(17),
                created_at: 4,
            })
        })
        .unwrap();
    assert!(replaced);
    assert_eq!(meta.read(|r| r.acls()).unwrap().len(), 3);

    // Expiry and revocation.
    assert!(
        meta.write(|tx| tx.remove_expired_acls(1_000))
            .unwrap()
            .is_empty()
    );
    let expired = meta.write(|tx| tx.remove_expired_acls(5_000)).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].rule, extended);
    assert!(meta.write(|tx| tx.remove_acl(&deny)).unwrap());
    assert!(!meta.write(|tx| tx.remove_acl(&deny)).unwrap());
    meta.write(|tx| {
        tx.put_acl(&AclEntry {
            rule: granted.clone(),
            request_id: Some(18),
            created_at: 5,
        })
    })
    .unwrap();
    assert_eq!(
        meta.write(|tx| tx.remove_acls_of_request(18)).unwrap(),
        vec![granted]
    );
    assert_eq!(
        meta.read(|r| r.acls())
            .unwrap()
            .iter()
            .map(|e| e.rule.clone())
            .collect::<Vec<_>>(),
        vec![allow]
    );
}

#[test]
fn access_requests_round_trip_with_increasing_ids() {
    let meta = MetaStore::in_memory().unwrap();
    let first = meta
        .write(|tx| tx.create_access_request(&request("alice", "orders")))
        .unwrap();
    let second = meta
        .write(|tx| tx.create_access_request(&request("bob", "orders")))
        .unwrap();
    assert!(second > first);
    let mut stored = meta.read(|r| r.access_request(first)).unwrap().unwrap();
    let mut expected = request("alice", "orders");
    expected.id = first;
    assert_eq!(stored, expected);

    stored.state = AccessState::Approved;
    stored.decided_by = Some("admin".to_owned());
    stored.decision_reason = Some("ok".to_owned());
    stored.decided_at = Some(50);
    stored.expires_at = Some(60);
    stored.public_key = None;
    meta.write(|tx| tx.update_access_request(&stored)).unwrap();
    assert_eq!(
        meta.read(|r| r.access_request(first)).unwrap(),
        Some(stored)
    );
    let all = meta.read(|r| r.access_requests()).unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![first, second]
    );

    let mut ghost = request("eve", "orders");
    ghost.id = 999;
    let err = meta
        .write(|tx| tx.update_access_request(&ghost))
        .unwrap_err();
    assert!(matches!(err, MetaError::Conflict(_)), "{err}");
}

#[test]
fn recipients_round_trip() {
    let meta = MetaStore::in_memory().unwrap();
    meta.write(|tx| {
        assert!(!tx.put_recipient("orders", "carol", b"c1")?);
        tx.put_recipient("orders", "alice", &[0, 159, 146, 150])?;
        assert!(tx.put_recipient("orders", "carol", b"c2")?);
        tx.put_recipient("orders2", "dave", b"d")?;
        tx.put_recipient("order", "erin", b"e")?;
        Ok::<_, MetaError>(())
    })
    .unwrap();
    let list = meta.read(|r| r.recipients("orders")).unwrap();
    assert_eq!(
        list.iter()
            .map(|e| (e.recipient.as_str(), e.entry.as_ref()))
            .collect::<Vec<_>>(),
        vec![("alice", &[0u8, 159, 146, 150][..]), ("carol", &b"c2"[..])]
    );
    assert_eq!(
        meta.read(|r| r.recipient("orders", "carol")).unwrap(),
        Some(Bytes::from_static(b"c2"))
    );
    assert!(
        meta.write(|tx| tx.remove_recipient("orders", "carol"))
            .unwrap()
    );
    assert_eq!(meta.read(|r| r.recipient("orders", "carol")).unwrap(), None);
}

#[test]
fn the_audit_head_only_moves_forward() {
    let meta = MetaStore::in_memory().unwrap();
    assert_eq!(meta.read(|r| r.audit_head()).unwrap(), None);
    let h1 = AuditHead {
        sequence: 1,
        hash: [0xab; 32],
    };
    let h2 = AuditHead {
        sequence: 2,
        hash: [0xcd; 32],
    };
    meta.write(|tx| tx.advance_audit_head(&h1)).unwrap();
    meta.write(|tx| tx.advance_audit_head(&h2)).unwrap();
    assert_eq!(meta.read(|r| r.audit_head()).unwrap(), Some(h2));
    for back in [h1, h2] {
        let err = meta.write(|tx| tx.advance_audit_head(&back)).unwrap_err();
        assert!(matches!(err, MetaError::Conflict(_)), "{err}");
    }
    assert_eq!(meta.read(|r| r.audit_head()).unwrap(), Some(h2));
}

#[test]
fn key_registry_tables_round_trip_and_keep_counts() {
    let meta = MetaStore::in_memory().unwrap();
    let topic_scope = KekScope::Topic("c0ffee".repeat(5) + "00");
    meta.write(|tx| {
        tx.put_kek_version(&version(1, KeyState::DecryptOnly))?;
        tx.put_kek_version(&version(2, KeyState::Active))?;
        tx.put_kek_version(&KekVersion {
            id: KekId {
                scope: topic_scope.clone(),
                version: 1,
            },
            ..version(1, KeyState::Compromised)
        })?;
        for n in 0..5 {
            tx.assign_segment_kek(&seg(n), &kek(1))?;
        }
        // Rewrap two of them to v2.
        assert_eq!(tx.assign_segment_kek(&seg(0), &kek(2))?, Some(kek(1)));
        assert_eq!(tx.assign_segment_kek(&seg(1), &kek(2))?, Some(kek(1)));
        // Assigning again is a no-op.
        tx.assign_segment_kek(&seg(1), &kek(2))?;
        assert_eq!(tx.remove_segment_kek(&seg(4))?, Some(kek(1)));
        assert_eq!(tx.remove_segment_kek(&seg(4))?, None);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    meta.read(|r| {
        let v1 = r.kek_version(&kek(1))?.unwrap();
        assert_eq!((v1.state, v1.segments), (KeyState::DecryptOnly, 2));
        assert_eq!(r.kek_version(&kek(2))?.unwrap().segments, 2);
        assert_eq!(r.kek_version(&kek(3))?, None);
        assert_eq!(r.kek_versions(Some(&KekScope::Broker))?.len(), 2);
        assert_eq!(r.kek_versions(None)?.len(), 3);
        assert_eq!(r.kek_scopes()?, vec![KekScope::Broker, topic_scope.clone()]);
        assert_eq!(r.segment_kek(&seg(0))?, Some(kek(2)));
        assert_eq!(r.segment_kek(&seg(4))?, None);
        let under1 = r.segments_under(&kek(1), None, 10)?;
        assert_eq!(under1.len(), 2);
        // Paging.
        let page = r.segments_under(&kek(1), None, 1)?;
        let rest = r.segments_under(&kek(1), page.last(), 10)?;
        assert_eq!([page, rest].concat(), under1);
        Ok::<_, MetaError>(())
    })
    .unwrap();

    // A segment cannot be recorded under a version the registry lacks, and
    // the failed batch leaves nothing.
    let err = meta
        .write(|tx| tx.assign_segment_kek(&seg(8), &kek(7)))
        .unwrap_err();
    assert!(matches!(err, MetaError::Conflict(_)), "{err}");
    assert_eq!(meta.read(|r| r.segment_kek(&seg(8))).unwrap(), None);
}

#[test]
fn a_failing_batch_leaves_nothing() {
    let meta = MetaStore::in_memory().unwrap();
    meta.write(|tx| tx.create_topic(&topic("kept", 1, Durability::Fsync)))
        .unwrap();
    let err = meta
        .write(|tx| {
            tx.create_topic(&topic("new", 2, Durability::Fsync))?;
            tx.commit_offset("g", "new", 0, 1)?;
            tx.put_recipient("new", "r", b"x")?;
            tx.create_access_request(&request("alice", "new"))?;
            tx.advance_audit_head(&AuditHead {
                sequence: 9,
                hash: [1; 32],
            })?;
            tx.delete_topic("kept")?;
            // Fails: created above.
            tx.create_topic(&topic("new", 3, Durability::None))?;
            Ok::<_, MetaError>(())
        })
        .unwrap_err();
    assert!(matches!(err, MetaError::TopicExists(_)));
    meta.read(|r| {
        assert_eq!(r.topics()?, vec![topic("kept", 1, Durability::Fsync)]);
        assert_eq!(r.offset("g", "new", 0)?, None);
        assert!(r.recipients("new")?.is_empty());
        assert!(r.access_requests()?.is_empty());
        assert_eq!(r.audit_head()?, None);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    // The next request still gets id 1.
    assert_eq!(
        meta.write(|tx| tx.create_access_request(&request("a", "b")))
            .unwrap(),
        1
    );
}

#[test]
fn everything_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.redb");
    let t = topic("orders", 1, Durability::Interval { interval_ms: 5 });
    let head = AuditHead {
        sequence: 77,
        hash: [7; 32],
    };
    let acl = AclEntry {
        rule: rule("alice", "orders", Operations::PUBLISH, AclEffect::Allow),
        request_id: None,
        created_at: 3,
    };
    {
        let meta = MetaStore::open(&path).unwrap();
        assert_eq!(meta.path(), Some(path.as_path()));
        meta.write(|tx| {
            tx.create_topic(&t)?;
            tx.commit_offset("g", "orders", 0, 11)?;
            tx.put_producer(
                1,
                &ProducerRecord {
                    epoch: 2,
                    updated_at: 3,
                    principal: Some("bob".into()),
                },
            )?;
            tx.put_acl(&acl)?;
            tx.create_access_request(&request("alice", "orders"))?;
            tx.put_recipient("orders", "alice", b"sig")?;
            tx.advance_audit_head(&head)?;
            tx.put_kek_version(&version(1, KeyState::Active))?;
            tx.assign_segment_kek(&seg(1), &kek(1))?;
            Ok::<_, MetaError>(())
        })
        .unwrap();
    }
    let meta = MetaStore::open(&path).unwrap();
    meta.read(|r| {
        assert_eq!(r.topic("orders")?, Some(t.clone()));
        assert_eq!(r.offset("g", "orders", 0)?, Some(11));
        assert_eq!(r.producer(1)?.unwrap().epoch, 2);
        assert_eq!(r.producer(1)?.unwrap().principal.as_deref(), Some("bob"));
        assert_eq!(r.acls()?, vec![acl.clone()]);
        assert_eq!(r.access_requests()?.len(), 1);
        assert_eq!(r.recipient("orders", "alice")?.unwrap().as_ref(), b"sig");
        assert_eq!(r.audit_head()?, Some(head));
        assert_eq!(r.kek_version(&kek(1))?.unwrap().segments, 1);
        assert_eq!(r.segment_kek(&seg(1))?, Some(kek(1)));
        Ok::<_, MetaError>(())
    })
    .unwrap();
}

#[test]
fn a_second_open_of_the_same_file_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.redb");
    let _first = MetaStore::open(&path).unwrap();
    let err = MetaStore::open(&path).unwrap_err();
    assert!(matches!(err, MetaError::Open { .. }), "{err}");
    assert!(err.to_string().contains("meta.redb"), "{err}");

    let garbage = tmp.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = MetaStore::open(&garbage).unwrap_err();
    assert!(matches!(err, MetaError::Open { .. }), "{err}");
}

/// A store written by an earlier version still holds the retired
/// `producer_partitions.v1` table (with a row, in case one was ever
/// written). It opens, keeps everything else, drops that table, and can
/// still be snapshotted (a snapshot refuses tables it does not know).
#[test]
fn a_store_with_the_retired_producer_partitions_table_opens_and_backs_up() {
    use redb::{ReadableDatabase, TableHandle};
    const OLD: redb::TableDefinition<'static, (u64, &str, u32), &[u8]> =
        redb::TableDefinition::new("producer_partitions.v1");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.redb");
    let orders = topic("orders", 1, Durability::Fsync);
    let meta = MetaStore::open(&path).unwrap();
    meta.write(|tx| tx.create_topic(&orders)).unwrap();
    drop(meta);
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(OLD)
            .unwrap()
            .insert(
                (7, "orders", 0),
                br#"{"epoch":1,"last_sequence":5,"base_offset":0,"last_offset":5}"#.as_slice(),
            )
            .unwrap();
        tx.commit().unwrap();
    }

    let meta = MetaStore::open(&path).unwrap();
    assert_eq!(meta.read(|r| r.topic("orders")).unwrap(), Some(orders));
    let copy = tmp.path().join("copy.redb");
    meta.snapshot().unwrap().write_to(&copy).unwrap();
    drop(meta);

    for file in [&path, &copy] {
        let db = redb::Database::open(file).unwrap();
        let names: Vec<String> = db
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(names.iter().any(|n| n == "topics.v1"), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "producer_partitions.v1"),
            "{}: {names:?}",
            file.display()
        );
    }
}

/// Writes `bytes` as the raw value of `key` in `table`, behind the store's
/// back (what a bit flip or a buggy older writer would leave).
fn corrupt<K: redb::Key + 'static>(
    path: &std::path::Path,
    table: redb::TableDefinition<'static, K, &'static [u8]>,
    key: K::SelfType<'_>,
    bytes: &[u8],
) {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(table).unwrap().insert(key, bytes).unwrap();
    tx.commit().unwrap();
}

#[test]
fn corrupt_values_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.redb");
    {
        let meta = MetaStore::open(&path).unwrap();
        meta.write(|tx| {
            tx.create_topic(&topic("good", 1, Durability::Fsync))?;
            tx.put_kek_version(&version(1, KeyState::Active))?;
            Ok::<_, MetaError>(())
        })
        .unwrap();
    }
    let garbage: [&[u8]; 5] = [b"", b"\xff\xfe\x00", b"{", b"[]", b"{}"];
    for (i, bad) in garbage.iter().enumerate() {
        corrupt(&path, tables::TOPICS, "bad", bad);
        corrupt(&path, tables::KEK_VERSIONS, ("broker", 9), bad);
        corrupt(&path, tables::ACCESS_REQUESTS, 5, bad);
        corrupt(&path, tables::PRODUCERS, 5, bad);
        corrupt(&path, tables::ACLS, ("p", "t", 1, 0), bad);
        corrupt(&path, tables::SEGMENT_KEYS, ([1; 16], 0, [2; 16]), bad);
        corrupt(&path, tables::SINGLETONS, "audit_head", bad);

        let meta = MetaStore::open(&path).unwrap();
        let check = |what: &str, r: Result<(), MetaError>| match r {
            Err(MetaError::Corrupt { table, key, .. }) => {
                assert!(!table.is_empty() && !key.is_empty(), "{what} #{i}");
            }
            other => panic!("{what} with garbage #{i}: expected Corrupt, got {other:?}"),
        };
        check("topic", meta.read(|r| r.topic("bad").map(drop)));
        check("topics", meta.read(|r| r.topics().map(drop)));
        check(
            "kek version",
            meta.read(|r| r.kek_version(&kek(9)).map(drop)),
        );
        check(
            "kek versions",
            meta.read(|r| r.kek_versions(None).map(drop)),
        );
        check(
            "access request",
            meta.read(|r| r.access_request(5).map(drop)),
        );
        check("producer", meta.read(|r| r.producer(5).map(drop)));
        check("acls", meta.read(|r| r.acls().map(drop)));
        check("segment keys", meta.read(|r| r.segment_keks().map(drop)));
        check("audit head", meta.read(|r| r.audit_head().map(drop)));
        // The good entries next to them still read.
        assert!(meta.read(|r| r.topic("good")).unwrap().is_some());
        assert!(meta.read(|r| r.kek_version(&kek(1))).unwrap().is_some());
        let msg = meta.read(|r| r.topic("bad")).unwrap_err().to_string();
        assert!(msg.contains("topics.v1") && msg.contains("bad"), "{msg}");
    }
    // Well-formed JSON with ill-typed or unknown values.
    corrupt(
        &path,
        tables::TOPICS,
        "bad",
        br#"{"topic_id":"zz","created_at":1,"config":{}}"#,
    );
    corrupt(
        &path,
        tables::KEK_VERSIONS,
        ("broker", 9),
        br#"{"state":"sleeping","provider":"file","created_at":1,"state_changed_at":1,"segments":0}"#,
    );
    let meta = MetaStore::open(&path).unwrap();
    assert!(matches!(
        meta.read(|r| r.topic("bad")),
        Err(MetaError::Corrupt { .. })
    ));
    assert!(matches!(
        meta.read(|r| r.kek_version(&kek(9))),
        Err(MetaError::Corrupt { .. })
    ));
}

#[test]
fn invalid_but_well_formed_values_are_corrupt_too() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.redb");
    drop(MetaStore::open(&path).unwrap());
    let id = "00".repeat(16);
    corrupt(
        &path,
        tables::TOPICS,
        "zero",
        format!(r#"{{"topic_id":"{id}","created_at":1,"config":{{"partitions":0,"durability":{{"mode":"fsync"}},"retention_ms":null,"retention_bytes":null,"segment_bytes":null,"segment_ms":null,"dedicated_kek":false}}}}"#).as_bytes(),
    );
    corrupt(
        &path,
        tables::KEK_VERSIONS,
        ("not-a-scope", 1),
        br#"{"state":"active","provider":"file","created_at":1,"state_changed_at":1,"segments":0}"#,
    );
    let meta = MetaStore::open(&path).unwrap();
    assert!(matches!(
        meta.read(|r| r.topic("zero")),
        Err(MetaError::Corrupt { .. })
    ));
    assert!(matches!(
        meta.read(|r| r.kek_versions(None)),
        Err(MetaError::Corrupt { .. })
    ));
}
