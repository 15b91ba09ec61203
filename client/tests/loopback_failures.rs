//! The client against the protocol test peer (see `peer/mod.rs`; it is not
//! the broker) when things go wrong: damaged partitions reported with
//! `PartitionError`, subscriptions that cannot be established, a broker
//! that never answers. Every wait is bounded: the calls under test must
//! return an error on their own; the guard only turns a hang into a test
//! failure.

mod peer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use peer::{Peer, PeerLimits, TestPki};
use strongbox_client::{
    Client, ClientError, Consumer, ConsumerConfig, ErrorCode, ProducerConfig, ProducerRecord,
    Subscription, Target,
};

/// Guards every test against a hang.
const GUARD: Duration = Duration::from_secs(60);

const TOPIC: &str = "demo.damaged";
const PARTITIONS: u32 = 3;
const PER_PARTITION: u64 = 20;
/// Partition 1's offsets 5..10 are reported damaged.
const DAMAGED: (u32, u64, u64) = (1, 5, 10);

async fn guarded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("test hung")
}

/// A peer with [`TOPIC`]: [`PER_PARTITION`] records in each partition, one
/// record per batch, and [`DAMAGED`] marked damaged.
async fn damaged_topic() -> (Peer, Client) {
    let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
    peer.create_topic(TOPIC, PARTITIONS);
    let client = Client::connect(peer.client_config(&peer.pki.alice))
        .await
        .expect("connects");
    let producer = client
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            producer
                .send_and_wait(ProducerRecord::new(TOPIC, format!("{p}:{i}")).partition(p))
                .await
                .expect("stored");
        }
    }
    producer.close().await.expect("closed");
    let (partition, first, end) = DAMAGED;
    peer.shared
        .damaged
        .lock()
        .expect("damaged")
        .push((TOPIC.into(), partition, first, end));
    (peer, client)
}

/// Reads items until `records` records and `errors` errors arrived;
/// returns the offsets per partition and the errors.
async fn collect(
    consumer: &mut Consumer,
    records: usize,
    errors: usize,
) -> (BTreeMap<u32, Vec<u64>>, Vec<ClientError>) {
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut seen_errors = Vec::new();
    let mut seen_records = 0;
    while seen_records < records || seen_errors.len() < errors {
        match consumer.next().await {
            Some(Ok(r)) => {
                offsets.entry(r.partition).or_default().push(r.offset);
                seen_records += 1;
            }
            Some(Err(e)) => seen_errors.push(e),
            None => panic!(
                "stream ended after {seen_records} records and {} errors",
                seen_errors.len()
            ),
        }
    }
    (offsets, seen_errors)
}

fn expect_damaged(e: &ClientError, skipped: bool) {
    let (partition, first, end) = DAMAGED;
    match e {
        ClientError::PartitionDamaged {
            topic,
            partition: p,
            code,
            first_offset,
            end_offset,
            skipped: s,
            message,
        } => {
            assert_eq!(
                (topic.as_str(), *p, *first_offset, *end_offset, *s),
                (TOPIC, partition, first, Some(end), skipped)
            );
            assert_eq!(*code, ErrorCode::DataDamaged.as_u16());
            assert!(message.contains("damaged"), "{message}");
        }
        other => panic!("expected a damaged partition, got {other}"),
    }
    assert_eq!(e.code(), Some(ErrorCode::DataDamaged));
    assert!(!e.is_retriable());
}

fn all(range: std::ops::Range<u64>) -> Vec<u64> {
    range.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_partition_is_reported_and_the_others_go_on() {
    guarded(async {
        let (_peer, client) = damaged_topic().await;
        let mut consumer = Consumer::subscribe(
            &client,
            Subscription::all_partitions(TOPIC),
            ConsumerConfig::default(),
        )
        .await
        .expect("subscribe");
        let (partition, first, _) = DAMAGED;
        let healthy = 2 * PER_PARTITION as usize;
        let (offsets, errors) = collect(&mut consumer, healthy + first as usize, 1).await;
        assert_eq!(errors.len(), 1);
        expect_damaged(&errors[0], false);
        assert_eq!(offsets[&0], all(0..PER_PARTITION));
        assert_eq!(offsets[&2], all(0..PER_PARTITION));
        assert_eq!(
            offsets[&partition],
            all(0..first),
            "records before the damage, then nothing"
        );
        consumer.close().await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_damaged_reads_past_the_range() {
    guarded(async {
        let (_peer, client) = damaged_topic().await;
        let mut consumer = Consumer::subscribe(
            &client,
            Subscription::all_partitions(TOPIC),
            ConsumerConfig {
                skip_damaged: true,
                ..ConsumerConfig::default()
            },
        )
        .await
        .expect("subscribe");
        let (partition, first, end) = DAMAGED;
        let total = (3 * PER_PARTITION - (end - first)) as usize;
        let (offsets, errors) = collect(&mut consumer, total, 1).await;
        expect_damaged(&errors[0], true);
        let expected: Vec<u64> = (0..first).chain(end..PER_PARTITION).collect();
        assert_eq!(offsets[&partition], expected);
        assert_eq!(offsets[&0], all(0..PER_PARTITION));
        consumer.close().await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reports_the_damaged_partition_and_serves_the_others() {
    guarded(async {
        let (_peer, client) = damaged_topic().await;
        let mut consumer = Consumer::subscribe(
            &client,
            Subscription::group(TOPIC, "readers"),
            ConsumerConfig::default(),
        )
        .await
        .expect("subscribe");
        assert_eq!(consumer.assignment(), vec![0, 1, 2]);
        let (partition, first, _) = DAMAGED;
        let healthy = 2 * PER_PARTITION as usize;
        let (offsets, errors) = collect(&mut consumer, healthy + first as usize, 1).await;
        expect_damaged(&errors[0], false);
        assert_eq!(offsets[&partition], all(0..first));
        assert_eq!(offsets[&2], all(0..PER_PARTITION));
        consumer.close().await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_damaged_partition_ends_after_the_report() {
    guarded(async {
        let (_peer, client) = damaged_topic().await;
        let (partition, first, _) = DAMAGED;
        let mut consumer = Consumer::subscribe(
            &client,
            Subscription {
                topic: TOPIC.into(),
                target: Target::Partition(partition),
                start: strongbox_client::StartPosition::Earliest,
            },
            ConsumerConfig::default(),
        )
        .await
        .expect("subscribe");
        let (offsets, errors) = collect(&mut consumer, first as usize, 1).await;
        assert_eq!(offsets[&partition], all(0..first));
        expect_damaged(&errors[0], false);
        // Reported once; then the subscription is over.
        assert!(consumer.next().await.is_none(), "the stream ends");
        consumer.close().await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_cannot_be_established_times_out() {
    guarded(async {
        let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
        peer.create_topic(TOPIC, 1);
        // The broker keeps refusing with a retriable code.
        peer.shared
            .refuse_subscribe
            .store(usize::MAX, Ordering::SeqCst);
        let client = Client::connect(peer.client_config(&peer.pki.alice))
            .await
            .expect("connects");
        let e = Consumer::subscribe(
            &client,
            Subscription::partition(TOPIC, 0),
            ConsumerConfig {
                subscribe_timeout: Duration::from_secs(1),
                ..ConsumerConfig::default()
            },
        )
        .await
        .expect_err("never established");
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        assert_eq!(e.code(), Some(ErrorCode::Timeout));
        let text = e.to_string();
        assert!(
            text.contains("could not subscribe to demo.damaged/0 within 1s")
                && text.contains("partition briefly unavailable"),
            "names the subscription and the last error: {text}"
        );
        assert!(
            peer.shared.refuse_subscribe.load(Ordering::SeqCst) < usize::MAX - 1,
            "retried before giving up"
        );
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_broker_never_answers_fail_with_a_timeout() {
    guarded(async {
        let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
        peer.create_topic(TOPIC, 1);
        peer.shared.swallow_produce.store(true, Ordering::SeqCst);
        let client = Client::connect(peer.client_config(&peer.pki.alice))
            .await
            .expect("connects");
        let producer = client
            .producer(ProducerConfig {
                delivery_timeout: Duration::from_secs(1),
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        let mut pending = Vec::new();
        for i in 0..10 {
            pending.push(
                producer
                    .send(ProducerRecord::new(TOPIC, format!("lost {i}")).partition(0))
                    .await
                    .expect("queued"),
            );
        }
        for delivery in pending {
            let e = delivery.await.expect_err("never acknowledged");
            assert!(matches!(e, ClientError::Timeout(_)), "{e}");
            assert_eq!(e.code(), Some(ErrorCode::Timeout));
            assert!(e.to_string().contains("delivery timeout of 1s"), "{e}");
        }
        assert!(peer.shared.stats.produce_frames.load(Ordering::SeqCst) >= 1);

        // The broker answers again: new records go through, under a new
        // epoch (the lost batches may have been stored).
        let before = producer.identity().expect("idempotent").epoch;
        peer.shared.swallow_produce.store(false, Ordering::SeqCst);
        let meta = producer
            .send_and_wait(ProducerRecord::new(TOPIC, "after").partition(0))
            .await
            .expect("acknowledged");
        assert_eq!(meta.partition, 0);
        assert!(producer.identity().expect("idempotent").epoch > before);
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_refusals_are_retried_until_the_timeout_then_name_their_cause() {
    guarded(async {
        let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
        peer.create_topic(TOPIC, 1);
        // `partition_unavailable` for ever: retried, never stored.
        peer.shared
            .refuse_produce
            .store(usize::MAX, Ordering::SeqCst);
        let client = Client::connect(peer.client_config(&peer.pki.alice))
            .await
            .expect("connects");
        let producer = client
            .producer(ProducerConfig {
                delivery_timeout: Duration::from_secs(1),
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        let e = producer
            .send_and_wait(ProducerRecord::new(TOPIC, "never").partition(0))
            .await
            .expect_err("refused until the timeout");
        assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
        assert!(
            e.to_string()
                .contains("last error: test peer: partition briefly unavailable"),
            "{e}"
        );
        let refused = usize::MAX - peer.shared.refuse_produce.load(Ordering::SeqCst);
        assert!(refused >= 2, "retried: {refused} attempts");
        assert!(peer.values(TOPIC, 0).is_empty());

        // A permanent refusal is not retried.
        peer.shared.refuse_produce.store(0, Ordering::SeqCst);
        peer.deny("spiffe://strongbox.dev/alice", "publish", TOPIC);
        let before = peer.shared.stats.produce_frames.load(Ordering::SeqCst);
        let e = producer
            .send_and_wait(ProducerRecord::new(TOPIC, "denied").partition(0))
            .await
            .expect_err("not authorized");
        assert_eq!(e.code(), Some(ErrorCode::NotAuthorized), "{e}");
        assert_eq!(
            peer.shared.stats.produce_frames.load(Ordering::SeqCst),
            before + 1,
            "sent once"
        );
        producer.close().await.expect("close");
        client.close().await;
    })
    .await;
}
