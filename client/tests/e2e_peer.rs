//! End-to-end encryption through real producers and consumers, against the
//! protocol test peer (see `peer/mod.rs`; it is not the broker) over QUIC
//! with mutual TLS on 127.0.0.1. Timeouts only guard against hangs.

mod peer;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use peer::{Peer, PeerLimits, TestPki};
use strongbox_client::e2e::{
    E2eError, E2eOpener, E2eSealer, EntryProblem, HEADER, Keyring, OwnerKey, RecipientSet,
    UnreadablePolicy,
};
use strongbox_client::{
    Client, ClientError, Consumer, ConsumerConfig, ProducerConfig, ProducerRecord, Subscription,
};

const GUARD: Duration = Duration::from_secs(60);

async fn guarded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("test hung")
}

async fn connect(peer: &Peer) -> Client {
    Client::connect(peer.client_config(&peer.pki.alice))
        .await
        .expect("connects")
}

/// Publishes `values` with `sealer`, in order, to partition 0.
async fn publish(client: &Client, sealer: Arc<E2eSealer>, topic: &str, values: &[String]) {
    let producer = client
        .producer(ProducerConfig {
            linger: Duration::from_millis(1),
            sealer: Some(sealer),
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let mut pending = Vec::new();
    for v in values {
        let record = ProducerRecord::new(topic, v.clone())
            .key("customer-7")
            .partition(0)
            .header("kind", "order");
        pending.push(producer.send(record).await.expect("queued"));
    }
    for p in pending {
        p.await.expect("acknowledged");
    }
    producer.close().await.expect("closes");
}

/// Reads `n` items (records or per-record errors) from partition 0.
async fn read(
    client: &Client,
    opener: E2eOpener,
    topic: &str,
    n: usize,
) -> Vec<Result<(u64, String), String>> {
    let mut consumer = Consumer::subscribe(
        client,
        Subscription::partition(topic, 0),
        ConsumerConfig {
            opener: Some(Arc::new(opener)),
            ..ConsumerConfig::default()
        },
    )
    .await
    .expect("subscribes");
    let mut out = Vec::new();
    while out.len() < n {
        let item = consumer.next().await.expect("stream open");
        out.push(match item {
            Ok(r) => {
                assert_eq!(r.header(HEADER), None);
                assert_eq!(r.header("kind").map(|v| &v[..]), Some(&b"order"[..]));
                Ok((
                    r.offset,
                    String::from_utf8(r.value.to_vec()).expect("utf-8"),
                ))
            }
            Err(ClientError::Transform(text)) => Err(text),
            Err(other) => panic!("the subscription failed: {other}"),
        });
    }
    consumer.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_values_are_opaque_at_the_peer_and_open_per_record_at_the_consumer() {
    guarded(async {
        let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
        peer.create_topic("demo.orders", 1);
        let client = connect(&peer).await;

        let mut keyring = Keyring::generate("orders-key").expect("keyring");
        let sealer = Arc::new(
            E2eSealer::keyring(keyring.export("orders-key", None).expect("copy"), None)
                .expect("sealer"),
        );
        let first: Vec<String> = (0..10).map(|i| format!("secret order {i}")).collect();
        publish(&client, sealer.clone(), "demo.orders", &first).await;
        keyring.rotate("orders-key").expect("rotates");
        sealer
            .set_keyring(keyring.export("orders-key", None).expect("copy"))
            .expect("rotated");
        let second: Vec<String> = (10..20).map(|i| format!("secret order {i}")).collect();
        publish(&client, sealer.clone(), "demo.orders", &second).await;

        // What the peer stored: ciphertext only.
        let stored = peer.shared.state.lock().expect("state").values("demo.orders", 0);
        assert_eq!(stored.len(), 20);
        for (_, value) in &stored {
            assert!(
                !value.windows(6).any(|w| w == b"secret"),
                "plaintext reached the broker"
            );
        }

        // A reader with every version reads everything, in order.
        let all = read(
            &client,
            E2eOpener::new(UnreadablePolicy::Fail)
                .with_keyring(keyring.export("orders-key", None).expect("copy")),
            "demo.orders",
            20,
        )
        .await;
        for (i, item) in all.iter().enumerate() {
            assert_eq!(item, &Ok((i as u64, format!("secret order {i}"))));
        }

        // A reader with only v2 gets an error item per v1 record, naming
        // the key, and the stream goes on to the v2 records.
        let partial = read(
            &client,
            E2eOpener::new(UnreadablePolicy::Fail)
                .with_keyring(keyring.export("orders-key", Some(2)).expect("v2")),
            "demo.orders",
            20,
        )
        .await;
        for (i, item) in partial.iter().enumerate() {
            if i < 10 {
                let text = item.as_ref().expect_err("v1 is missing");
                assert!(
                    text.ends_with(&format!(
                        "record demo.orders/0@{i}: e2e key orders-key v1 is not in the keyring (it holds v2)"
                    )),
                    "{text}"
                );
            } else {
                assert_eq!(item, &Ok((i as u64, format!("secret order {i}"))));
            }
        }

        // A subscriber with read permission but no key at all.
        let nothing = read(
            &client,
            E2eOpener::new(UnreadablePolicy::Fail),
            "demo.orders",
            20,
        )
        .await;
        assert!(nothing.iter().all(Result::is_err));
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_directory_entry_from_the_broker_is_refused() {
    guarded(async {
        let peer = Peer::start(Arc::new(TestPki::new()), PeerLimits::default()).await;
        let client = connect(&peer).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = OwnerKey::create(dir.path().join("owner.key")).expect("owner");
        // The test peer answers every RecipientList with one entry whose
        // bytes are not signed by anyone.
        let verified = RecipientSet::fetch(&client.admin(), "demo.x", &owner.public_key())
            .await
            .expect("the request succeeds");
        assert!(verified.set.recipients().is_empty());
        assert_eq!(verified.refused.len(), 1);
        assert!(matches!(
            &verified.refused[0],
            E2eError::Entry { recipient, problem: EntryProblem::Malformed(_) } if recipient == "reader-of-demo.x"
        ));
        let err = verified.strict().expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("recipient entry reader-of-demo.x refused: not a signed recipient entry"),
            "{err}"
        );
        client.close().await;
    })
    .await;
}
