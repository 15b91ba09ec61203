//! The client against the protocol test peer (see `peer/mod.rs`; it is not
//! the broker) over real QUIC with mutual TLS on 127.0.0.1. Timeouts here
//! only guard against hangs; no assertion depends on timing.

mod peer;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use peer::{Peer, PeerLimits, TestPki};
use strongbox_client::partitioner::partition_for_key;
use strongbox_client::protocol::model::{
    AccessState, AclEffect, AclRule, Durability, KeyState, Operations, RecipientEntry, TopicConfig,
};
use strongbox_client::{
    Client, ClientError, ConsumedRecord, Consumer, ConsumerConfig, ErrorCode, ProducerConfig,
    ProducerRecord, StartPosition, Subscription, Target,
};

/// Guards every test against a hang.
const GUARD: Duration = Duration::from_secs(60);

async fn guarded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("test hung")
}

async fn setup(limits: PeerLimits) -> Peer {
    Peer::start(Arc::new(TestPki::new()), limits).await
}

async fn connect(peer: &Peer, who: &peer::certs::CertPem) -> Client {
    Client::connect(peer.client_config(who))
        .await
        .expect("connects")
}

fn small_batches() -> ProducerConfig {
    ProducerConfig {
        batch_bytes: 600,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    }
}

async fn read(consumer: &mut Consumer, n: usize) -> Vec<ConsumedRecord> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let item = consumer.next().await.expect("stream open");
        out.push(item.expect("a record"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_exposes_principal_and_limits() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        let client = connect(&peer, &peer.pki.alice).await;
        assert_eq!(client.principal(), "spiffe://strongbox.dev/alice");
        assert_eq!(client.broker_id(), "test-peer");
        let limits = client.limits();
        assert_eq!(limits.max_in_flight, 8);
        assert_eq!(limits.max_batch_size, 1 << 20);
        assert_eq!(limits.version, 1);
        assert!(client.is_connected());
        let me = client.admin().whoami().await.expect("whoami");
        assert_eq!(me.principal, "spiffe://strongbox.dev/alice");
        assert!(!me.superuser);
        client.close().await;
        assert!(!client.is_connected());
        assert!(matches!(
            client.admin().whoami().await,
            Err(ClientError::Closed(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_certificate_is_an_authentication_error() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        let err = Client::connect(peer.client_config(&peer.pki.stranger))
            .await
            .expect_err("a certificate from another CA is refused");
        assert!(matches!(err, ClientError::Authentication(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("the broker rejected this client's certificate: "),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_is_acked_in_order_and_reads_back() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.orders", 3);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client
            .producer(ProducerConfig {
                max_in_flight: Some(4),
                ..small_batches()
            })
            .await
            .expect("producer");
        assert!(producer.identity().is_some(), "idempotent by default");
        let mut pending = Vec::new();
        for i in 0..600u32 {
            let key = format!("k{}", i % 17);
            let record = ProducerRecord::new("demo.orders", format!("v{i}"))
                .key(key.clone())
                .header("i", i.to_string());
            pending.push((key, i, producer.send(record).await.expect("queued")));
        }
        let mut per_partition: [Vec<(u64, u32)>; 3] = Default::default();
        for (key, i, delivery) in pending {
            let meta = delivery.await.expect("acked");
            assert_eq!(meta.partition, partition_for_key(key.as_bytes(), 3));
            per_partition[meta.partition as usize].push((meta.offset, i));
        }
        for (p, acked) in per_partition.iter().enumerate() {
            // Offsets are 0..n in send order: pipelining kept the order.
            let offsets: Vec<u64> = acked.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, (0..acked.len() as u64).collect::<Vec<_>>());
            let stored = peer.values("demo.orders", p as u32);
            let expected: Vec<(u64, Bytes)> = acked
                .iter()
                .map(|(o, i)| (*o, Bytes::from(format!("v{i}"))))
                .collect();
            assert_eq!(stored, expected);
        }
        assert!(
            peer.shared.stats.produce_frames.load(Ordering::SeqCst) > 10,
            "many batches"
        );
        producer.close().await.expect("close");

        let mut consumer = Consumer::subscribe(
            &client,
            Subscription::all_partitions("demo.orders"),
            ConsumerConfig::default(),
        )
        .await
        .expect("subscribe");
        assert_eq!(consumer.assignment(), vec![0, 1, 2]);
        let records = read(&mut consumer, 600).await;
        for p in 0..3u32 {
            let got: Vec<(u64, Bytes)> = records
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| (r.offset, r.value.clone()))
                .collect();
            assert_eq!(got, peer.values("demo.orders", p), "partition {p} in order");
        }
        let r = &records[0];
        assert_eq!(&*r.topic, "demo.orders");
        assert_eq!(
            r.header("i")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            String::from_utf8_lossy(&r.value)
                .strip_prefix('v')
                .map(str::to_owned)
        );
        consumer.close().await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resends_unacked_batches_without_duplicates() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.retry", 1);
        // The fifth Produce frame is appended, then the connection drops
        // before its acknowledgement.
        peer.shared.drop_after_produce.store(5, Ordering::SeqCst);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client.producer(small_batches()).await.expect("producer");
        let mut pending = Vec::new();
        for i in 0..300u32 {
            pending.push(
                producer
                    .send(ProducerRecord::new("demo.retry", format!("r{i:03}")))
                    .await
                    .expect("queued"),
            );
        }
        let mut acked = Vec::new();
        for delivery in pending {
            acked.push(delivery.await.expect("delivered despite the drop").offset);
        }
        assert_eq!(acked, (0..300).collect::<Vec<u64>>(), "each once, in order");
        let stored = peer.values("demo.retry", 0);
        assert_eq!(stored.len(), 300, "nothing stored twice");
        for (i, (offset, value)) in stored.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(value, &Bytes::from(format!("r{i:03}")));
        }
        assert!(
            peer.shared.stats.duplicates.load(Ordering::SeqCst) >= 1,
            "the appended-but-unacked batch came back as a duplicate"
        );
        assert!(peer.shared.stats.connections.load(Ordering::SeqCst) >= 2);
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_refusals_are_retried_in_order_without_gaps() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.flaky", 1);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client
            .producer(ProducerConfig {
                linger: Duration::ZERO,
                ..small_batches()
            })
            .await
            .expect("producer");
        // Pipelined batches: the first refusals leave later batches in
        // flight past a sequence gap; the peer refuses those as out of
        // order, and the producer must re-send everything in order.
        peer.shared.refuse_produce.store(3, Ordering::SeqCst);
        let mut pending = Vec::new();
        for i in 0..120u32 {
            pending.push(
                producer
                    .send(ProducerRecord::new("demo.flaky", format!("f{i:03}")))
                    .await
                    .expect("queued"),
            );
        }
        let mut offsets = Vec::new();
        for d in pending {
            offsets.push(d.await.expect("retried until stored").offset);
        }
        assert_eq!(offsets, (0..120).collect::<Vec<u64>>());
        let stored: Vec<Bytes> = peer
            .values("demo.flaky", 0)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let expected: Vec<Bytes> = (0..120).map(|i| Bytes::from(format!("f{i:03}"))).collect();
        assert_eq!(stored, expected);
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_authorized_reads_as_the_broker_says_and_a_later_grant_works() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.greetings", 1);
        peer.deny("spiffe://strongbox.dev/bob", "publish", "demo.greetings");
        let client = connect(&peer, &peer.pki.bob).await;
        let producer = client
            .producer(ProducerConfig {
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        // Several batches in flight, all refused.
        let mut pending = Vec::new();
        for i in 0..20 {
            pending.push(
                producer
                    .send(ProducerRecord::new("demo.greetings", format!("x{i}")))
                    .await
                    .expect("queued"),
            );
        }
        for delivery in pending {
            let err = delivery.await.expect_err("refused");
            assert_eq!(err.code(), Some(ErrorCode::NotAuthorized));
            assert_eq!(
                err.to_string(),
                "not authorized: spiffe://strongbox.dev/bob may not publish demo.greetings"
            );
        }
        // The sequences of the refused batches were given back: once the
        // permission arrives, the same producer publishes from sequence 0.
        peer.allow_all();
        let meta = producer
            .send_and_wait(ProducerRecord::new("demo.greetings", "finally"))
            .await
            .expect("allowed now");
        assert_eq!(meta.offset, 0);
        let meta = producer
            .send_and_wait(ProducerRecord::new("demo.greetings", "again"))
            .await
            .expect("allowed now");
        assert_eq!(meta.offset, 1);
        producer.close().await.expect("close");

        peer.deny("spiffe://strongbox.dev/bob", "subscribe", "demo.greetings");
        let err = Consumer::subscribe(
            &client,
            Subscription::partition("demo.greetings", 0),
            ConsumerConfig::default(),
        )
        .await
        .expect_err("subscribe refused");
        assert_eq!(
            err.to_string(),
            "not authorized: spiffe://strongbox.dev/bob may not subscribe demo.greetings"
        );
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_limits_delivery_and_memory_stays_bounded() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.slow", 1);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client
            .producer(ProducerConfig {
                batch_bytes: 2 * 1024,
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        for i in 0..200u32 {
            let value = format!("{i:04}{}", "x".repeat(1000));
            drop(
                producer
                    .send(ProducerRecord::new("demo.slow", value))
                    .await
                    .expect("queued"),
            );
        }
        producer.flush().await.expect("flushed");
        let largest_batch = {
            let state = peer.shared.state.lock().expect("state");
            state.logs[&("demo.slow".to_owned(), 0)]
                .iter()
                .map(|b| b.bytes.len() as u64)
                .max()
                .expect("batches")
        };
        let window = 8 * 1024;
        let mut consumer = Consumer::subscribe(
            &client,
            Subscription::partition("demo.slow", 0),
            ConsumerConfig {
                credit_window: window,
                ..ConsumerConfig::default()
            },
        )
        .await
        .expect("subscribe");
        // Without reading, the peer runs out of credit and stalls.
        loop {
            let stalled = peer.shared.stalled.notified();
            if peer.shared.stats.records_bytes_sent.load(Ordering::SeqCst) >= window {
                stalled.await;
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), stalled).await;
        }
        let sent = peer.shared.stats.records_bytes_sent.load(Ordering::SeqCst);
        let frame_overhead = 4 + 2 + 4 + 8 + 4 + 8 + 4;
        assert!(
            sent <= window + largest_batch + frame_overhead,
            "sent {sent} bytes on a window of {window}"
        );
        // Reading gives credit back and everything arrives, in order.
        let records = read(&mut consumer, 200).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            assert!(r.value.starts_with(format!("{i:04}").as_bytes()));
        }
        assert!(
            peer.shared.stats.max_overdraft.load(Ordering::SeqCst)
                <= largest_batch + frame_overhead,
            "the broker side never went more than one frame past the credit"
        );
        consumer.close().await;
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_resumes_after_a_dropped_connection_without_gaps_or_duplicates() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.resume", 1);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client
            .producer(ProducerConfig {
                batch_bytes: 200,
                ..small_batches()
            })
            .await
            .expect("producer");
        for i in 0..150u32 {
            drop(
                producer
                    .send(ProducerRecord::new("demo.resume", format!("m{i}")))
                    .await
                    .expect("queued"),
            );
        }
        producer.close().await.expect("flushed and closed");
        peer.shared.drop_after_records.store(3, Ordering::SeqCst);
        let mut consumer = Consumer::subscribe(
            &client,
            Subscription::partition("demo.resume", 0).start(StartPosition::Earliest),
            ConsumerConfig {
                credit_window: 4 * 1024,
                ..ConsumerConfig::default()
            },
        )
        .await
        .expect("subscribe");
        let records = read(&mut consumer, 150).await;
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..150).collect::<Vec<_>>());
        assert!(
            peer.shared.stats.connections.load(Ordering::SeqCst) >= 2,
            "reconnected"
        );
        assert_eq!(consumer.positions().get(&0), Some(&150));
        consumer.close().await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_offset_inside_a_batch_skips_earlier_records() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.skip", 1);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client
            .producer(ProducerConfig {
                linger: Duration::from_secs(30),
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        let mut pending = Vec::new();
        for i in 0..10 {
            pending.push(
                producer
                    .send(ProducerRecord::new("demo.skip", format!("s{i}")).partition(0))
                    .await
                    .expect("queued"),
            );
        }
        // A long linger holds the batch until flush.
        producer.flush().await.expect("flush");
        for d in pending {
            d.await.expect("acked");
        }
        assert_eq!(
            peer.shared.stats.produce_frames.load(Ordering::SeqCst),
            1,
            "one batch"
        );
        let mut consumer = client
            .subscribe(
                Subscription::partition("demo.skip", 0).start(StartPosition::Offset(4)),
                ConsumerConfig::default(),
            )
            .await
            .expect("subscribe");
        let records = read(&mut consumer, 6).await;
        assert_eq!(records[0].offset, 4);
        assert_eq!(records[0].value, Bytes::from_static(b"s4"));
        assert_eq!(records[5].offset, 9);
        consumer.close().await;
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commits_and_a_new_member_resumes_from_them() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.group", 2);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client.producer(small_batches()).await.expect("producer");
        for i in 0..40u32 {
            drop(
                producer
                    .send(ProducerRecord::new("demo.group", format!("g{i}")).partition(i % 2))
                    .await
                    .expect("queued"),
            );
        }
        producer.close().await.expect("close");

        let mut first = Consumer::subscribe(
            &client,
            Subscription::group("demo.group", "billing"),
            ConsumerConfig::default(),
        )
        .await
        .expect("join");
        assert_eq!(first.assignment(), vec![0, 1]);
        let records = read(&mut first, 10).await;
        let mut expected = std::collections::BTreeMap::new();
        for r in &records {
            expected.insert(r.partition, r.offset + 1);
        }
        first.commit_consumed().await.expect("committed");
        assert_eq!(first.positions(), expected);
        // A commit for a partition the group does not hold is refused by
        // the session rules, not sent.
        assert!(first.commit(9, 1).await.is_err());
        first.close().await;

        let mut second = Consumer::subscribe(
            &client,
            Subscription::group("demo.group", "billing"),
            ConsumerConfig::default(),
        )
        .await
        .expect("rejoin");
        let records = read(&mut second, 40 - 10).await;
        let mut seen = BTreeSet::new();
        for r in &records {
            assert!(
                r.offset >= expected.get(&r.partition).copied().unwrap_or(0),
                "resumed after the commit"
            );
            assert!(seen.insert((r.partition, r.offset)), "no duplicates");
        }
        second.close().await;

        let partition_consumer = Consumer::subscribe(
            &client,
            Subscription::partition("demo.group", 0),
            ConsumerConfig::default(),
        )
        .await
        .expect("subscribe");
        let err = partition_consumer
            .commit(0, 1)
            .await
            .expect_err("not a group");
        assert!(err.to_string().contains("consumer-group"), "{err}");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_request_round_trips() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        let client = connect(&peer, &peer.pki.admin).await;
        let admin = client.admin();
        assert!(admin.whoami().await.expect("whoami").superuser);

        let config = TopicConfig {
            partitions: 4,
            durability: Durability::Interval { interval_ms: 20 },
            retention_ms: Some(1000),
            retention_bytes: Some(2000),
            segment_bytes: None,
            segment_ms: None,
            dedicated_kek: true,
        };
        let created = admin
            .create_topic("demo.admin", config.clone())
            .await
            .expect("create");
        assert_eq!(created.config, config);
        let err = admin
            .create_topic("demo.admin", config)
            .await
            .expect_err("exists");
        assert_eq!(err.code(), Some(ErrorCode::TopicExists));
        assert_eq!(
            admin
                .describe_topic("demo.admin")
                .await
                .expect("describe")
                .partitions
                .len(),
            4
        );
        assert_eq!(
            admin.list_topics(Some("demo.")).await.expect("list").len(),
            1
        );
        assert!(
            admin
                .list_topics(Some("other."))
                .await
                .expect("list")
                .is_empty()
        );

        let rule = AclRule {
            principal: "spiffe://strongbox.dev/bob".into(),
            topic: "demo.*".into(),
            operations: Operations::SUBSCRIBE,
            effect: AclEffect::Allow,
            expires_at: Some(99),
        };
        assert_eq!(
            admin.acl_grant(rule.clone()).await.expect("grant"),
            vec![rule.clone()]
        );
        assert_eq!(
            admin.acl_list(None, Some("demo.*")).await.expect("list"),
            vec![rule.clone()]
        );
        assert!(admin.acl_revoke(rule).await.expect("revoke").is_empty());

        let id = admin.init_producer(None).await.expect("init");
        let again = admin
            .init_producer(Some(id.producer_id))
            .await
            .expect("bump");
        assert_eq!(again.producer_id, id.producer_id);
        assert_eq!(again.epoch, id.epoch + 1);

        let status = admin.key_status(None).await.expect("status");
        assert_eq!(status.versions[0].state, KeyState::Active);
        assert_eq!(status.rewrap.done, 4);
        assert_eq!(
            admin
                .key_rotate(Some("demo.admin"))
                .await
                .expect("rotate")
                .message,
            "done for demo.admin"
        );
        assert_eq!(
            admin
                .key_rewrap(None, Some(1))
                .await
                .expect("rewrap")
                .message,
            "done for broker"
        );
        admin.key_retire(None, 1).await.expect("retire");
        admin.key_compromised(None, 1).await.expect("compromised");
        let destroyed = admin.key_destroy(None, 1, true).await.expect("destroy");
        assert_eq!(destroyed.version.state, KeyState::Destroyed);
        assert_eq!(destroyed.message, "destroyed, force=true");
        let head = admin.audit_head().await.expect("audit head");
        assert_eq!((head.sequence, head.hash), (77, [0x5a; 32]));

        let request = admin
            .access_request(
                "demo.admin",
                Operations::SUBSCRIBE,
                "read it",
                Some(Bytes::from_static(b"pk")),
            )
            .await
            .expect("request");
        assert_eq!(request.topic, "demo.admin");
        assert_eq!(request.public_key, Some(Bytes::from_static(b"pk")));
        assert_eq!(request.state, AccessState::Pending);
        assert_eq!(admin.access_list(true).await.expect("list")[0].id, 1);
        let approved = admin
            .access_approve(3, Some(Duration::from_secs(60)), None)
            .await
            .expect("approve");
        assert_eq!(approved.expires_at, Some(60_000));
        let denied = admin.access_deny(4, "no").await.expect("deny");
        assert_eq!(denied.decision_reason.as_deref(), Some("no"));

        assert_eq!(
            admin.recipients_list("demo.admin").await.expect("list")[0].recipient,
            "reader-of-demo.admin"
        );
        let entry = RecipientEntry {
            recipient: "carol".into(),
            entry: Bytes::from_static(b"sig"),
        };
        assert_eq!(
            admin
                .recipients_put("demo.admin", entry.clone())
                .await
                .expect("put"),
            vec![entry]
        );
        assert!(
            admin
                .recipients_remove("demo.admin", "carol")
                .await
                .expect("remove")
                .is_empty()
        );
        assert_eq!(
            admin.delete_topic("demo.admin").await.expect("delete"),
            "deleted topic demo.admin"
        );
        let err = admin.describe_topic("demo.admin").await.expect_err("gone");
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_are_spread_over_partitions() {
    guarded(async {
        let peer = setup(PeerLimits::default()).await;
        peer.create_topic("demo.spread", 3);
        let client = connect(&peer, &peer.pki.alice).await;
        let producer = client.producer(small_batches()).await.expect("producer");
        let mut pending = Vec::new();
        for i in 0..300 {
            pending.push(
                producer
                    .send(ProducerRecord::new("demo.spread", format!("{i:05}")))
                    .await
                    .expect("queued"),
            );
        }
        let mut partitions = BTreeSet::new();
        for d in pending {
            partitions.insert(d.await.expect("acked").partition);
        }
        assert_eq!(partitions.len(), 3, "sticky batches rotate");
        let consumer = Consumer::subscribe(
            &client,
            Subscription {
                topic: "demo.spread".into(),
                target: Target::Partitions(vec![0, 2]),
                start: StartPosition::Latest,
            },
            ConsumerConfig::default(),
        )
        .await
        .expect("subscribe");
        assert_eq!(consumer.assignment(), vec![0, 2]);
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}

/// Rule M4c of docs/PROTOCOL.md: a `not_leader` refusal that names the
/// leader moves the client there and the request is sent again; without
/// a hint, or when hints go round in circles, the retriable `not_leader`
/// reaches the caller after at most `LEADER_HOPS` moves. (The broker does
/// not produce `not_leader` yet, so the test peer plays a follower.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_follow_not_leader_hints() {
    use strongbox_client::protocol::model::{LeaderHint, NodeAddress};
    guarded(async {
        let pki = Arc::new(TestPki::new());
        let follower = Peer::start(pki.clone(), PeerLimits::default()).await;
        let leader = Peer::start(pki.clone(), PeerLimits::default()).await;
        *follower.shared.not_leader.lock().unwrap() = Some(LeaderHint {
            leader: Some(NodeAddress {
                id: 2,
                client_addr: leader.addr.to_string(),
            }),
        });
        let client = connect(&follower, &pki.alice).await;
        let admin = client.admin();
        let info = admin
            .create_topic(
                "demo.led",
                TopicConfig {
                    partitions: 2,
                    durability: Durability::Fsync,
                    retention_ms: None,
                    retention_bytes: None,
                    segment_bytes: None,
                    segment_ms: None,
                    dedicated_kek: false,
                },
            )
            .await
            .expect("created at the leader");
        assert_eq!(info.partitions.len(), 2);
        assert_eq!(client.broker_addr(), leader.addr.to_string());
        assert!(
            leader
                .shared
                .state
                .lock()
                .unwrap()
                .topics
                .contains_key("demo.led")
        );
        assert!(
            !follower
                .shared
                .state
                .lock()
                .unwrap()
                .topics
                .contains_key("demo.led")
        );

        // No leader known: the retriable error, and the client stays.
        *leader.shared.not_leader.lock().unwrap() = Some(LeaderHint { leader: None });
        let err = admin.list_topics(None).await.expect_err("no leader");
        assert_eq!(err.code(), Some(ErrorCode::NotLeader));
        assert!(err.is_retriable());
        assert_eq!(client.broker_addr(), leader.addr.to_string());

        // Two nodes naming each other: bounded, then the error.
        *leader.shared.not_leader.lock().unwrap() = Some(LeaderHint {
            leader: Some(NodeAddress {
                id: 1,
                client_addr: follower.addr.to_string(),
            }),
        });
        let err = admin.list_topics(None).await.expect_err("a cycle");
        assert_eq!(err.code(), Some(ErrorCode::NotLeader));
        let before = follower.shared.stats.connections.load(Ordering::SeqCst)
            + leader.shared.stats.connections.load(Ordering::SeqCst);
        assert!(
            before <= 1 + 1 + strongbox_client::LEADER_HOPS * 2,
            "{before}"
        );
        client.close().await;
    })
    .await;
}
