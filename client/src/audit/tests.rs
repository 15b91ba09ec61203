//! Chain verification: a valid chain passes; editing any byte, deleting,
//! swapping or cutting off records fails, naming the first bad record.

use proptest::prelude::*;

use super::*;

/// The example of docs/SECURITY.md, byte for byte, with its hash computed
/// independently (`sha256sum` of the value without its hash field).
const GOLDEN: &str = concat!(
    r#"{"seq":1,"time":"2026-01-31T09:00:00.123Z","principal":"spiffe://strongbox.dev/bob","#,
    r#""action":"acl.deny","resource":"topic:demo.x","outcome":"denied","#,
    r#""details":{"operation":"publish","reason":"no_matching_rule"},"#,
    r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
    r#""hash":"74ce49f49d42148198e1b4e8b492a719729031e53436df0a479ddbeb53c2c29b"}"#
);

fn stored(offset: u64, seq: u64, value: String) -> StoredRecord {
    StoredRecord {
        offset,
        seq_header: Some(Bytes::from(seq.to_string())),
        value: Bytes::from(value),
    }
}

/// A valid record `seq` after `prev`.
fn record(seq: u64, prev: &[u8; 32], action: &str, details: &str) -> (String, [u8; 32]) {
    let body = format!(
        r#"{{"seq":{seq},"time":"2026-01-31T09:00:{:02}.{:03}Z","principal":"spiffe://strongbox.dev/p{}","action":"{action}","resource":"topic:demo.x","outcome":"success","details":{details},"prev_hash":"{}"}}"#,
        seq % 60,
        seq % 1000,
        seq % 7,
        hex::encode(prev)
    );
    let hash = sha256(body.as_bytes());
    let value = format!(
        "{},\"hash\":\"{}\"}}",
        &body[..body.len() - 1],
        hex::encode(hash)
    );
    (value, hash)
}

/// Records 1..=n at offsets 0..n, and the head a broker would anchor.
fn chain(n: u64) -> (Vec<StoredRecord>, AuditHead) {
    let mut prev = GENESIS_HASH;
    let mut out = Vec::new();
    for seq in 1..=n {
        let (value, hash) = record(seq, &prev, "topic.create", &format!(r#"{{"n":{seq}}}"#));
        out.push(stored(seq - 1, seq, value));
        prev = hash;
    }
    (
        out,
        AuditHead {
            sequence: n,
            hash: prev,
        },
    )
}

/// The records as found at their new offsets after an attacker rewrote the
/// topic: offsets are positions, whatever the records say.
fn renumber(mut records: Vec<StoredRecord>) -> Vec<StoredRecord> {
    for (i, r) in records.iter_mut().enumerate() {
        r.offset = i as u64;
    }
    records
}

#[test]
fn golden_record_verifies_and_parses() {
    let record = AuditRecord::parse(GOLDEN.as_bytes()).expect("parses");
    assert_eq!(record.seq, 1);
    assert_eq!(
        record.principal.as_deref(),
        Some("spiffe://strongbox.dev/bob")
    );
    assert_eq!(record.action, "acl.deny");
    assert_eq!(record.outcome, "denied");
    assert_eq!(
        record.details.get("operation"),
        Some(&Value::from("publish"))
    );
    assert_eq!(record.prev_hash, GENESIS_HASH);
    assert_eq!(content_hash(GOLDEN.as_bytes()), Some(record.hash));
    assert_eq!(
        hex::encode(record.hash),
        "74ce49f49d42148198e1b4e8b492a719729031e53436df0a479ddbeb53c2c29b"
    );
    let head = AuditHead {
        sequence: 1,
        hash: record.hash,
    };
    let summary = verify_chain(&[stored(0, 1, GOLDEN.into())], Some(head)).expect("intact");
    assert_eq!(
        summary.to_string(),
        "audit trail intact: 1 records, head 74ce49f49d421481"
    );
}

#[test]
fn a_valid_chain_passes_with_and_without_its_head() {
    let (records, head) = chain(25);
    let summary = verify_chain(&records, Some(head)).expect("intact");
    assert_eq!(summary.records, 25);
    assert_eq!(summary.last_sequence, 25);
    assert_eq!(summary.last_hash, head.hash);
    assert!(verify_chain(&records, None).is_ok());
    // A head with sequence 0 is the broker's "nothing anchored yet".
    let none = AuditHead {
        sequence: 0,
        hash: GENESIS_HASH,
    };
    assert!(verify_chain(&records, Some(none)).is_ok());
    assert_eq!(verify_chain(&[], Some(none)).expect("empty").records, 0);
}

#[test]
fn the_head_may_lag_behind_the_topic() {
    // The broker anchors a record only once it is durable in the topic.
    let (records, _) = chain(10);
    let (_, head7) = chain(7);
    assert!(verify_chain(&records, Some(head7)).is_ok());
}

#[test]
fn messages_name_the_record() {
    let (records, head) = chain(20);
    let mut edited = records.clone();
    edited[16].value = Bytes::from(
        String::from_utf8(edited[16].value.to_vec())
            .unwrap()
            .replace("topic:demo.x", "topic:demo.y"),
    );
    assert_eq!(
        verify_chain(&edited, Some(head)).unwrap_err().to_string(),
        "audit record 17 (offset 16): hash does not match its contents"
    );

    let mut skipped = records.clone();
    skipped.remove(16);
    assert_eq!(
        verify_chain(&renumber(skipped), Some(head))
            .unwrap_err()
            .to_string(),
        "audit record 18 (offset 16) follows record 16: record 17 is missing"
    );

    let mut gap = records.clone();
    gap.drain(3..6);
    assert_eq!(
        verify_chain(&renumber(gap), Some(head))
            .unwrap_err()
            .to_string(),
        "audit record 7 (offset 3) follows record 3: records 4 to 6 are missing"
    );

    let cut = records[..12].to_vec();
    assert_eq!(
        verify_chain(&cut, Some(head)).unwrap_err().to_string(),
        "audit topic ends at record 12 but the anchored head is record 20: the topic was truncated"
    );
    assert_eq!(
        verify_chain(&[], Some(head)).unwrap_err().to_string(),
        "audit topic holds no record but the anchored head is record 20: the topic was truncated"
    );

    let mut swapped = records.clone();
    swapped.swap(4, 9);
    let swapped = renumber(swapped);
    let err = verify_chain(&swapped, Some(head)).unwrap_err();
    assert_eq!(err.offset(), Some(4));
    assert_eq!(
        err.to_string(),
        "audit record 10 (offset 4) follows record 4: records 5 to 9 are missing"
    );

    let mut back = records[..6].to_vec();
    back.push(records[2].clone());
    let err = verify_chain(&renumber(back), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "audit record 3 (offset 6) is out of order: record 7 should come here"
    );
}

#[test]
fn a_rebuilt_chain_is_caught_by_the_anchor() {
    // An attacker who holds the keys rewrites record 5 and recomputes every
    // hash after it: the chain is consistent, but no longer ends at the
    // anchored head.
    let (records, head) = chain(8);
    let mut forged = records[..4].to_vec();
    let mut prev = AuditRecord::parse(&records[3].value).unwrap().hash;
    for seq in 5..=8 {
        let (value, hash) = record(seq, &prev, "topic.delete", "{}");
        forged.push(stored(seq - 1, seq, value));
        prev = hash;
    }
    assert!(verify_chain(&forged, None).is_ok());
    let err = verify_chain(&forged, Some(head)).unwrap_err();
    assert_eq!(err, ChainError::HeadMismatch { seq: 8, offset: 7 });
    assert_eq!(
        err.to_string(),
        "audit record 8 (offset 7) is not the record anchored in the broker's metadata store: the trail was rewritten"
    );
}

#[test]
fn a_relinked_record_fails_on_prev_hash() {
    // Record 3 replaced by a self-consistent record that links elsewhere.
    let (mut records, head) = chain(5);
    let (value, _) = record(3, &[7; 32], "topic.create", r#"{"n":3}"#);
    records[2] = stored(2, 3, value);
    let err = verify_chain(&records, Some(head)).unwrap_err();
    assert_eq!(err, ChainError::PrevHashMismatch { seq: 3, offset: 2 });
    assert_eq!(
        err.to_string(),
        "audit record 3 (offset 2): prev_hash is not the hash of record 2"
    );
    let (value, _) = record(1, &[7; 32], "topic.create", "{}");
    assert_eq!(
        verify_chain(&[stored(0, 1, value)], None)
            .unwrap_err()
            .to_string(),
        "audit record 1 (offset 0): prev_hash is not the hash of the genesis (64 zeros)"
    );
}

#[test]
fn the_brokers_truncation_alert_is_reported_as_truncation() {
    let (records, head8) = chain(8);
    // The topic lost records 6 to 8; the broker went on from the anchored
    // head (8) with an alert as record 9.
    let mut kept = records[..5].to_vec();
    let details = r#"{"anchored_hash":"00","anchored_sequence":8,"reason":"truncated","topic_last_sequence":5}"#;
    let (alert, _) = record(9, &head8.hash, "audit.chain.broken", details);
    kept.push(stored(5, 9, alert.clone()));
    let (alert_record, _) = (AuditRecord::parse(alert.as_bytes()).unwrap(), ());
    let head9 = AuditHead {
        sequence: 9,
        hash: alert_record.hash,
    };
    let err = verify_chain(&kept, Some(head9)).unwrap_err();
    assert_eq!(
        err,
        ChainError::Truncated {
            last: 5,
            head: 8,
            alert: Some(9)
        }
    );
    assert_eq!(
        err.to_string(),
        "audit topic ends at record 5 but the anchored head is record 8: the topic was truncated \
         (the broker found the gap and recorded audit.chain.broken as record 9)"
    );
    // An alert that does not describe this gap is just a gap.
    let mut other = records[..4].to_vec();
    other.push(stored(4, 9, alert));
    assert!(matches!(
        verify_chain(&renumber(other), None),
        Err(ChainError::Missing { seq: 9, .. })
    ));
}

#[test]
fn malformed_records_are_named_by_offset() {
    let (records, _) = chain(3);
    let good = String::from_utf8(records[0].value.to_vec()).unwrap();
    let cases: Vec<(StoredRecord, &str)> = vec![
        (stored(0, 1, "not json".into()), "too short"),
        (
            stored(0, 1, "x".repeat(200)),
            "does not end with its hash field",
        ),
        (
            stored(
                0,
                1,
                good.replace("\"outcome\":\"success\"", "\"outcome\":\"maybe\""),
            ),
            "outcome",
        ),
        (
            stored(0, 1, good.replace("\"resource\"", "\"rsrc\"")),
            "has the fields",
        ),
        (stored(0, 1, good.replace("\"seq\":1", "\"seq\":0")), "seq"),
        (
            stored(0, 1, good.replace("2026-01-31T", "2026-01-31 ")),
            "time",
        ),
        (
            stored(
                0,
                1,
                good.replace("\"details\":{\"n\":1}", "\"details\":[1]"),
            ),
            "details",
        ),
        (
            stored(
                0,
                1,
                good.replace("\"principal\":\"", "\"principal\":7,\"x\":\""),
            ),
            "has the fields",
        ),
        (
            StoredRecord {
                seq_header: None,
                ..records[0].clone()
            },
            "no audit-seq header",
        ),
        (
            StoredRecord {
                seq_header: Some(Bytes::from_static(b"2")),
                ..records[0].clone()
            },
            "header says \"2\"",
        ),
    ];
    for (record, expect) in cases {
        let err = verify_chain(&[record], None).unwrap_err();
        let ChainError::Malformed { offset, reason } = &err else {
            panic!("{expect}: {err}");
        };
        assert_eq!(*offset, 0);
        assert!(reason.contains(expect), "{expect}: {reason}");
        assert!(
            err.to_string()
                .starts_with("audit record at offset 0 is not a valid audit record: ")
        );
    }
    // Upper-case hex in the hash field is not the format.
    let upper = {
        let at = good.len() - 66;
        let (head, tail) = good.split_at(at);
        format!("{head}{}", tail.to_uppercase())
    };
    assert!(matches!(
        verify_chain(&[stored(0, 1, upper)], None),
        Err(ChainError::Malformed { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn editing_any_byte_names_that_record(
        n in 1u64..12,
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (mut records, head) = chain(n);
        let i = pick.index(records.len());
        let mut value = records[i].value.to_vec();
        let j = at.index(value.len());
        value[j] ^= xor;
        records[i].value = Bytes::from(value);
        let err = verify_chain(&records, Some(head)).unwrap_err();
        prop_assert_eq!(err.offset(), Some(i as u64), "{}", err);
        prop_assert!(
            matches!(err, ChainError::HashMismatch { .. } | ChainError::Malformed { .. }),
            "{}", err
        );
    }

    #[test]
    fn deleting_any_record_names_its_place(n in 1u64..15, pick in any::<prop::sample::Index>()) {
        let (mut records, head) = chain(n);
        let i = pick.index(records.len());
        records.remove(i);
        let records = renumber(records);
        let err = verify_chain(&records, Some(head)).unwrap_err();
        if i + 1 == n as usize {
            // The newest record: only the anchored head shows it is gone.
            prop_assert_eq!(err, ChainError::Truncated { last: n - 1, head: n, alert: None });
            prop_assert!(verify_chain(&records, None).is_ok());
        } else {
            prop_assert_eq!(err, ChainError::Missing {
                seq: i as u64 + 2,
                offset: i as u64,
                previous: (i > 0).then_some(i as u64),
                expected: i as u64 + 1,
            });
        }
    }

    #[test]
    fn swapping_any_two_records_names_the_first(
        n in 2u64..15,
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let (mut records, head) = chain(n);
        let (i, j) = (a.index(records.len()), b.index(records.len()));
        prop_assume!(i != j);
        let (i, j) = (i.min(j), i.max(j));
        records.swap(i, j);
        let err = verify_chain(&renumber(records), Some(head)).unwrap_err();
        prop_assert_eq!(err, ChainError::Missing {
            seq: j as u64 + 1,
            offset: i as u64,
            previous: (i > 0).then_some(i as u64),
            expected: i as u64 + 1,
        });
    }

    #[test]
    fn truncating_the_tail_is_caught(n in 1u64..15, keep in any::<prop::sample::Index>()) {
        let (records, head) = chain(n);
        let keep = keep.index(records.len());
        let err = verify_chain(&records[..keep], Some(head)).unwrap_err();
        prop_assert_eq!(err, ChainError::Truncated { last: keep as u64, head: n, alert: None });
    }
}
