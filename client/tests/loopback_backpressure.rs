//! The producer's back-pressure against the protocol test peer (see
//! `peer/mod.rs`; it is not the broker): a full buffer makes `try_send`
//! hand the record back and `send` wait for room. The peer is told to
//! swallow `Produce` frames, so nothing is acknowledged and the buffer
//! stays full until the records' delivery timeout frees it. Timeouts here
//! only guard against hangs.

mod peer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use peer::{Peer, PeerLimits, TestPki};
use strongbox_client::{
    Client, ClientError, ErrorCode, Producer, ProducerConfig, ProducerRecord, TrySendError,
};

/// Guards every test against a hang.
const GUARD: Duration = Duration::from_secs(60);

const TOPIC: &str = "demo.pressure";

/// Each test record: 1,000 value bytes and 18 of framing.
const VALUE: usize = 1_000;

async fn guarded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("test hung")
}

fn record(i: usize) -> ProducerRecord {
    let mut value = vec![b'v'; VALUE];
    value[..8].copy_from_slice(&(i as u64).to_be_bytes());
    ProducerRecord::new(TOPIC, Bytes::from(value)).partition(0)
}

/// A peer that never answers `Produce`, and a producer with room for four
/// test records.
async fn stalled(delivery_timeout: Duration) -> (Peer, Client, Producer) {
    let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
    peer.create_topic(TOPIC, 1);
    peer.shared.swallow_produce.store(true, Ordering::SeqCst);
    let client = Client::connect(peer.client_config(&peer.pki.alice))
        .await
        .expect("connects");
    let producer = client
        .producer(ProducerConfig {
            buffer_bytes: 4 * 1024,
            delivery_timeout,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    (peer, client, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_hands_the_record_back_and_send_waits_for_room() {
    guarded(async {
        let (_peer, client, producer) = stalled(Duration::from_secs(2)).await;
        let producer = Arc::new(producer);
        // Four records fit (4 × 1,018 bytes); the fifth would have to wait.
        let mut queued = Vec::new();
        for i in 0..4 {
            queued.push(producer.try_send(record(i)).expect("room for it"));
        }
        let refused = producer
            .try_send(record(4))
            .expect_err("the buffer is full");
        assert!(refused.to_string().contains("buffer is full"), "{refused}");
        let TrySendError::WouldBlock(back) = refused else {
            panic!("not WouldBlock: {refused}");
        };
        assert_eq!(*back, record(4), "the record comes back unchanged");
        // As a `ClientError` (for `?`), it is a timeout.
        let as_client: ClientError = TrySendError::WouldBlock(back).into();
        assert_eq!(as_client.code(), Some(ErrorCode::Timeout));

        // `send` waits for room instead. (It starts well after the queued
        // records, so they reach their delivery timeout, and free their
        // room, well before its own wait would time out.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waiting = {
            let producer = producer.clone();
            tokio::spawn(async move { producer.send(record(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "send waits while the buffer is full"
        );
        // The unanswered records fail at their delivery timeout, which
        // frees their room: the waiting `send` then queues its record.
        for delivery in queued {
            let e = delivery.await.expect_err("never acknowledged");
            assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
        }
        let queued = waiting
            .await
            .expect("task")
            .expect("queued once room freed");
        drop(queued);
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_refuses_what_waiting_cannot_fix() {
    guarded(async {
        let (_peer, client, producer) = stalled(Duration::from_secs(30)).await;
        // Larger than the whole buffer: never sendable.
        let huge = ProducerRecord::new(TOPIC, vec![0u8; 8 * 1024]).partition(0);
        match producer.try_send(huge) {
            Err(TrySendError::Failed(ClientError::InvalidRecord(text))) => {
                assert!(text.contains("larger than the producer's buffer"), "{text}");
            }
            other => panic!("expected InvalidRecord, got {other:?}"),
        }
        producer.close().await.expect("closes");
        match producer.try_send(record(0)) {
            Err(TrySendError::Failed(ClientError::Closed(_))) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_without_a_partition_goes_through_once_the_partition_count_is_known() {
    guarded(async {
        let (peer, client, producer) = stalled(Duration::from_secs(30)).await;
        peer.shared.swallow_produce.store(false, Ordering::SeqCst);
        let keyless = || ProducerRecord::new(TOPIC, "no partition chosen");
        // The first try starts the lookup and cannot wait for it.
        let first = producer.try_send(keyless()).expect_err("count unknown");
        assert_eq!(first.into_record(), Some(keyless()));
        let delivery = loop {
            match producer.try_send(keyless()) {
                Ok(delivery) => break delivery,
                Err(TrySendError::WouldBlock(_)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let meta = delivery.await.expect("acknowledged");
        assert_eq!(meta.partition, 0);
        assert_eq!(peer.values(TOPIC, 0).len(), 1);
        producer.close().await.expect("closes");
        client.close().await;
    })
    .await;
}
