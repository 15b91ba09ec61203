//! The raw-QUIC baseline and the handshake measurement end to end, on tiny
//! counts: every message is acknowledged, each key exchange policy
//! negotiates its group. No timing is asserted.

use strongbox_benches::handshake::{self, HandshakeOptions};
use strongbox_benches::raw_quic::{RawQuicOptions, run};
use strongbox_broker::tls::KeyExchange;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_quic_acknowledges_every_message() {
    // 1,000 messages of 1 KiB in writes of 16 KiB, the last one partial.
    let report = run(RawQuicOptions {
        size: 1024,
        count: 1_000,
        batch_bytes: 16 * 1024,
        udp_payload: None,
        key_exchange: KeyExchange::PreferHybrid,
    })
    .await
    .expect("raw-quic run");
    assert_eq!(report.sent, 1_000);
    assert_eq!(report.acked, 1_000);
    assert_eq!(report.throughput.messages, 1_000);
    assert_eq!(report.throughput.value_bytes, 1_000 * 1024);
    assert_eq!(report.ack_latency.samples, 1_000, "one latency per message");
    assert_eq!(report.key_exchange, "X25519MLKEM768");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_quic_handles_messages_larger_than_a_write() {
    let report = run(RawQuicOptions {
        size: 100_000,
        count: 7,
        batch_bytes: 1024,
        udp_payload: Some(9000),
        key_exchange: KeyExchange::Classical,
    })
    .await
    .expect("raw-quic run");
    assert_eq!(report.acked, 7);
    assert_eq!(report.key_exchange, "X25519");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_counted_and_negotiate_the_policys_group() {
    for (policy, group) in [
        (KeyExchange::PreferHybrid, "X25519MLKEM768"),
        (KeyExchange::RequireHybrid, "X25519MLKEM768"),
        (KeyExchange::Classical, "X25519"),
    ] {
        let report = handshake::run(HandshakeOptions {
            count: 5,
            runs: 2,
            key_exchange: policy,
        })
        .await
        .expect("handshake run");
        assert_eq!(report.key_exchange, group);
        assert_eq!(report.runs.len(), 2);
        assert!(report.runs.iter().all(|r| r.handshakes == 5));
        // The hybrid key shares make the client's first flight bigger.
        assert!(report.runs[0].client_sent_bytes > 1200.0);
    }
}
