//! The raw-QUIC baseline end to end, on a tiny count: every message is
//! acknowledged. No timing is asserted.

use strongbox_benches::raw_quic::{RawQuicOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_quic_acknowledges_every_message() {
    // 1,000 messages of 1 KiB in writes of 16 KiB, the last one partial.
    let report = run(RawQuicOptions {
        size: 1024,
        count: 1_000,
        batch_bytes: 16 * 1024,
        udp_payload: None,
    })
    .await
    .expect("raw-quic run");
    assert_eq!(report.sent, 1_000);
    assert_eq!(report.acked, 1_000);
    assert_eq!(report.throughput.messages, 1_000);
    assert_eq!(report.throughput.value_bytes, 1_000 * 1024);
    assert_eq!(report.ack_latency.samples, 1_000, "one latency per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_quic_handles_messages_larger_than_a_write() {
    let report = run(RawQuicOptions {
        size: 100_000,
        count: 7,
        batch_bytes: 1024,
        udp_payload: Some(9000),
    })
    .await
    .expect("raw-quic run");
    assert_eq!(report.acked, 7);
}
