//! The chain writer against a real encrypted partition log and metadata
//! store: sequence numbers, links and hashes; recovery from the head, from
//! a tail ahead of the head, and from a cut or rewritten topic.

use prometheus::Registry;
use serde_json::Value;
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::{Durability, LogConfig, PartitionLog};

use super::*;
use crate::services::partitions::audit_topic::AuditPartition;
use crate::services::partitions::partition::Partition;
use crate::services::partitions::producers::ProducerTable;

struct Fixture {
    dir: tempfile::TempDir,
    meta: MetaStore,
    keys: Arc<KeyManager>,
    registry: Registry,
    metrics: AuditMetrics,
    /// The partition the last recovered writer appends to, closed by
    /// [`Fixture::finish`].
    open: std::sync::Mutex<Option<Arc<Partition>>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path().join("meta.redb")).unwrap();
        let provider = Arc::new(FileKeyProvider::open(dir.path().join("keys")).unwrap());
        let keys = Arc::new(KeyManager::new(provider, meta.clone(), 64));
        let registry = Registry::new();
        let metrics = AuditMetrics::new(&registry).unwrap();
        Self {
            dir,
            meta,
            keys,
            registry,
            metrics,
            open: std::sync::Mutex::new(None),
        }
    }

    fn log_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("audit-0")
    }

    fn open_log(&self) -> PartitionLog {
        let mut config = LogConfig::new([0xa5; 16], 0, KekScope::Broker);
        config.durability = Durability::Fsync;
        PartitionLog::open(self.log_dir(), config, self.keys.clone()).unwrap()
    }

    fn partition(&self) -> Arc<Partition> {
        Partition::new(
            AUDIT_TOPIC.into(),
            0,
            self.log_dir(),
            self.open_log(),
            ProducerTable::new(),
        )
    }

    fn recover(&self) -> Recovered {
        let p = self.partition();
        *self.open.lock().unwrap() = Some(p.clone());
        ChainWriter::recover(
            Arc::new(AuditPartition(p)),
            self.meta.clone(),
            self.metrics.clone(),
        )
        .unwrap()
    }

    /// Drops `w` and closes its partition's log.
    fn finish(&self, w: ChainWriter) {
        drop(w);
        close(
            self.open
                .lock()
                .unwrap()
                .take()
                .expect("a recovered writer"),
        );
    }

    fn head(&self) -> Option<AuditHead> {
        self.meta.read(|r| r.audit_head()).unwrap()
    }

    /// Every record in the topic: (offset, key, audit-seq header, value).
    fn records(&self) -> Vec<(u64, String, String, Bytes)> {
        let p = self.partition();
        let mut out = Vec::new();
        let mut next = p.log_start_offset();
        while next < p.high_watermark() {
            for (base, bytes) in p.read(next, 1 << 20).unwrap() {
                let batch = RecordBatch::parse(bytes).unwrap();
                for r in batch.records() {
                    let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                    let seq =
                        String::from_utf8(r.headers.get(SEQ_HEADER).unwrap().to_vec()).unwrap();
                    out.push((base + u64::from(r.index), key, seq, r.value));
                    next = base + u64::from(r.index) + 1;
                }
            }
        }
        close(p);
        out
    }
}

fn close(p: Arc<Partition>) {
    Arc::try_unwrap(p)
        .expect("no other handle")
        .into_log()
        .close()
        .unwrap();
}

fn event(n: u64) -> AuditEvent {
    AuditEvent::success(AuditAction::TopicCreate, topic_resource(&format!("t{n}")))
        .principal("spiffe://strongbox.dev/admin")
        .detail("n", n)
        .at(1_769_850_000_000 + n as i64)
}

fn json(value: &[u8]) -> Value {
    serde_json::from_slice(value).unwrap()
}

/// Truncates the topic's log at `offset` as an attacker with the files and
/// the keys could.
fn truncate(f: &Fixture, offset: u64) {
    let log = f.open_log();
    log.truncate(offset).unwrap();
    log.close().unwrap();
}

#[tokio::test]
async fn sequences_links_and_hashes() {
    let f = Fixture::new();
    let r = f.recover();
    assert!(r.alert.is_none());
    let mut w = r.writer;
    assert_eq!(w.last().sequence, 0);
    w.append(&[event(1), event(2), event(3)]).await.unwrap();
    let head = w.append(&[event(4), event(5)]).await.unwrap();
    assert_eq!(head.sequence, 5);
    assert_eq!(f.head(), Some(head), "anchored after the append");
    f.finish(w);

    let records = f.records();
    assert_eq!(records.len(), 5);
    let mut prev = GENESIS_HASH;
    for (i, (offset, key, seq, value)) in records.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(*offset, i as u64);
        assert_eq!(key, "topic.create");
        assert_eq!(seq, &n.to_string());
        let link = parse_link(value).unwrap();
        assert_eq!(link.seq, n);
        assert_eq!(link.prev_hash, prev);
        let v = json(value);
        assert_eq!(v["resource"], format!("topic:t{n}"));
        assert_eq!(v["details"]["n"], n);
        let keys: Vec<&str> = {
            let text = std::str::from_utf8(value).unwrap();
            [
                "seq",
                "time",
                "principal",
                "action",
                "resource",
                "outcome",
                "details",
                "prev_hash",
                "hash",
            ]
            .into_iter()
            .inspect(|k| assert!(text.contains(&format!("\"{k}\":")), "{k}"))
            .collect()
        };
        assert_eq!(keys.len(), 9);
        prev = link.hash;
    }
    assert_eq!(prev, head.hash);
    assert_eq!(f.metrics.records.get(), 5);
}

#[tokio::test]
async fn continues_from_the_anchored_head_after_a_restart() {
    let f = Fixture::new();
    let mut w = f.recover().writer;
    let head = w.append(&[event(1), event(2)]).await.unwrap();
    f.finish(w);

    let r = f.recover();
    assert!(r.alert.is_none());
    assert_eq!(r.writer.last(), head);
    let mut w = r.writer;
    w.append(&[event(3)]).await.unwrap();
    f.finish(w);
    let records = f.records();
    let third = parse_link(&records[2].3).unwrap();
    assert_eq!((third.seq, third.prev_hash), (3, head.hash));
    assert_eq!(f.metrics.chain_broken.get(), 0);
}

#[tokio::test]
async fn continues_from_a_tail_ahead_of_the_head() {
    // The broker stopped after records 3 and 4 were durable but before they
    // were anchored.
    let f = Fixture::new();
    let mut w = f.recover().writer;
    let head2 = w.append(&[event(1), event(2)]).await.unwrap();
    let mut prev = head2.hash;
    let mut b = BatchBuilder::new(0);
    for seq in 3..=4 {
        let e = encode(seq, &prev, &event(seq));
        b.push(
            0,
            Some(b"topic.create"),
            &[(SEQ_HEADER, seq.to_string().as_bytes())],
            &e.value,
        )
        .unwrap();
        prev = e.hash;
    }
    let batch = RecordBatch::parse(b.finish().unwrap()).unwrap();
    w.partition.append(&batch).await.unwrap();
    f.finish(w);
    assert_eq!(f.head(), Some(head2));

    let r = f.recover();
    assert!(r.alert.is_none());
    let tail = AuditHead {
        sequence: 4,
        hash: prev,
    };
    assert_eq!(r.writer.last(), tail);
    assert_eq!(f.head(), Some(tail), "the tail is anchored at start");
    let mut w = r.writer;
    assert_eq!(w.append(&[event(5)]).await.unwrap().sequence, 5);
    f.finish(w);
}

#[tokio::test]
async fn a_tail_that_does_not_link_to_the_head_is_an_alert() {
    let f = Fixture::new();
    let mut w = f.recover().writer;
    let head = w.append(&[event(1), event(2)]).await.unwrap();
    // Record 3 claims a predecessor that is not record 2.
    let e = encode(3, &[9; 32], &event(3));
    let mut b = BatchBuilder::new(0);
    b.push(0, Some(b"topic.create"), &[(SEQ_HEADER, b"3")], &e.value)
        .unwrap();
    let batch = RecordBatch::parse(b.finish().unwrap()).unwrap();
    w.partition.append(&batch).await.unwrap();
    f.finish(w);

    let r = f.recover();
    let alert = r.alert.expect("alert");
    assert_eq!(alert.detail_value("reason"), Some(&"unlinked".into()));
    assert_eq!(r.writer.last(), head, "goes on from the anchored head");
    f.finish(r.writer);
}

#[tokio::test]
async fn a_truncated_topic_raises_an_alert_naming_the_gap() {
    let f = Fixture::new();
    let mut w = f.recover().writer;
    w.append(&[event(1), event(2), event(3)]).await.unwrap();
    let head = w.append(&[event(4), event(5)]).await.unwrap();
    f.finish(w);
    truncate(&f, 3);

    let r = f.recover();
    assert_eq!(f.metrics.chain_broken.get(), 1);
    assert!(
        f.registry
            .gather()
            .iter()
            .any(|m| m.name() == "strongbox_audit_chain_broken")
    );
    let alert = r.alert.clone().expect("alert");
    assert_eq!(alert.action(), AuditAction::AuditChainBroken);
    assert_eq!(alert.outcome(), super::super::Outcome::Alert);
    assert_eq!(alert.resource(), "topic:_audit");
    assert_eq!(alert.detail_value("reason"), Some(&"truncated".into()));
    assert_eq!(alert.detail_value("anchored_sequence"), Some(&5.into()));
    assert_eq!(alert.detail_value("topic_last_sequence"), Some(&3.into()));
    assert_eq!(r.writer.last(), head);

    let mut w = r.writer;
    w.append(&[alert]).await.unwrap();
    f.finish(w);
    let records = f.records();
    assert_eq!(records.len(), 4);
    let link = parse_link(&records[3].3).unwrap();
    assert_eq!((link.seq, link.prev_hash), (6, head.hash));
    assert_eq!(json(&records[3].3)["outcome"], "alert");
    assert_eq!(f.head().unwrap().sequence, 6);

    // The next start finds the chain consistent with its head again.
    let r = f.recover();
    assert!(r.alert.is_none());
    f.finish(r.writer);
}

#[tokio::test]
async fn an_emptied_topic_and_a_rewritten_tail_are_alerts() {
    let f = Fixture::new();
    let mut w = f.recover().writer;
    w.append(&[event(1)]).await.unwrap();
    let head = w.append(&[event(2)]).await.unwrap();
    f.finish(w);

    // Record 2 replaced by another, correctly linked, record 2.
    truncate(&f, 1);
    let records = f.records();
    let one = parse_link(&records[0].3).unwrap();
    let p = f.partition();
    let forged = encode(2, &one.hash, &event(99));
    let mut b = BatchBuilder::new(0);
    b.push(
        0,
        Some(b"topic.create"),
        &[(SEQ_HEADER, b"2")],
        &forged.value,
    )
    .unwrap();
    let batch = RecordBatch::parse(b.finish().unwrap()).unwrap();
    p.begin_append(&batch, 0)
        .await
        .unwrap()
        .complete()
        .await
        .unwrap();
    close(p);
    let r = f.recover();
    let alert = r.alert.expect("alert");
    assert_eq!(alert.detail_value("reason"), Some(&"rewritten".into()));
    assert_eq!(r.writer.last(), head);
    f.finish(r.writer);

    // Nothing left at all.
    let log = f.open_log();
    let start = log.log_start_offset();
    log.truncate(start).unwrap();
    log.close().unwrap();
    let r = f.recover();
    let alert = r.alert.expect("alert");
    assert_eq!(alert.detail_value("reason"), Some(&"truncated".into()));
    assert_eq!(alert.detail_value("topic_last_sequence"), Some(&0.into()));
    f.finish(r.writer);
}

#[tokio::test]
async fn an_unreadable_last_record_is_an_alert() {
    let f = Fixture::new();
    let mut w = f.recover().writer;
    let head = w.append(&[event(1)]).await.unwrap();
    let mut b = BatchBuilder::new(0);
    b.push(0, Some(b"x"), &[(SEQ_HEADER, b"2")], b"not a record")
        .unwrap();
    let batch = RecordBatch::parse(b.finish().unwrap()).unwrap();
    w.partition.append(&batch).await.unwrap();
    f.finish(w);
    let r = f.recover();
    let alert = r.alert.expect("alert");
    assert_eq!(alert.detail_value("reason"), Some(&"unreadable".into()));
    assert_eq!(alert.detail_value("topic_last_offset"), Some(&1.into()));
    assert_eq!(r.writer.last(), head);
    f.finish(r.writer);
}

#[tokio::test]
async fn the_audit_log_batches_queued_events_and_flushes_unwraps_at_shutdown() {
    use strongbox_storage::keys::SegmentKeyContext;

    let f = Fixture::new();
    let log = crate::audit::AuditLog::new(&Registry::new()).unwrap();
    let inbox = crate::audit::lock(&log.inner.inbox).take().unwrap();
    let task = crate::audit::Task {
        inbox,
        unwraps: log.inner.unwraps.clone(),
        metrics: log.inner.metrics.clone(),
        stop: log.inner.stop.subscribe(),
        names: Arc::new(|| crate::audit::TopicNames(Default::default())),
    };
    let r = f.recover();
    for n in 1..=40 {
        log.record(event(n));
    }
    let observe = log.unwrap_observer();
    let ctx = SegmentKeyContext {
        topic_id: [4; 16],
        partition: 1,
        segment_id: [5; 16],
        scope: KekScope::Broker,
    };
    let kek = strongbox_storage::keys::KekId {
        scope: KekScope::Broker,
        version: 2,
    };
    for _ in 0..1000 {
        crate::audit::with_principal("spiffe://strongbox.dev/bob", || observe(&ctx, &kek));
    }
    let handle = tokio::spawn(task.run(Some(r.writer), None));
    *crate::audit::lock(&log.inner.writer) = Some(handle);
    log.shutdown().await;
    log.record(event(99));
    assert_eq!(log.metrics().dropped.get(), 1, "recorded after shutdown");

    let records = f.records();
    assert_eq!(records.len(), 41, "40 events and one unwrap count");
    let last = json(&records[40].3);
    assert_eq!(last["action"], "key.unwrap");
    assert_eq!(last["principal"], "spiffe://strongbox.dev/bob");
    assert_eq!(last["details"]["count"], 1000);
    assert_eq!(last["details"]["kek"], "kek:broker/v2");
    assert_eq!(
        last["resource"],
        format!("topic-id:{}", hex::encode([4u8; 16]))
    );
    assert_eq!(last["seq"], 41);
    assert_eq!(f.head().unwrap().sequence, 41);
    assert_eq!(f.metrics.records.get(), 41);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let log = crate::audit::AuditLog::new(&Registry::new()).unwrap();
    for n in 0..(crate::audit::QUEUE_CAPACITY as u64 + 25) {
        log.record(event(n));
    }
    assert_eq!(log.metrics().dropped.get(), 25);
}
