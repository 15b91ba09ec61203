//! No plaintext at rest: records whose key, headers and value carry a
//! marker leave no trace of it in any file under the broker's data
//! directory (segments, indexes, key envelopes, the metadata store), nor in
//! its log.

use std::time::Duration;

use anyhow::Result;
use strongbox_client::{ConsumerConfig, ProducerConfig, ProducerRecord, Subscription};
use strongbox_tests::client::{connect, expect_quiet, read_n, topic};
use strongbox_tests::{BrokerProcess, contains, files_under};

/// Distinct markers per field, so a leak names the field that leaked.
const KEY_MARKER: &str = "sbx-key-Q7ZK4M2V";
const HEADER_MARKER: &str = "sbx-hdr-W3XJ8N5R";
const VALUE_MARKER: &str = "sbx-val-P9TB6L1C";
const RECORDS: usize = 300;

fn record(topic: &str, i: usize) -> ProducerRecord {
    // Some values are large (several frames' worth of repeated marker),
    // some tiny, so both full and partial batches are written.
    let value = if i.is_multiple_of(50) {
        VALUE_MARKER.repeat(4096)
    } else {
        format!("{VALUE_MARKER}-{i}")
    };
    ProducerRecord::new(topic, value)
        .key(format!("{KEY_MARKER}-{}", i % 7))
        .header("x-note", format!("{HEADER_MARKER}-{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_marker_in_any_file_after_a_graceful_stop() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    // Trace the broker's own crates: payloads must not reach its log even
    // at the most verbose level.
    let mut broker = BrokerProcess::start_dev_with(
        &dir,
        &[(
            "RUST_LOG",
            "info,strongbox_broker=trace,strongbox_storage=trace",
        )],
    )?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic("demo.secret", topic(2)).await?;
    // A topic with a dedicated key-encryption key, written the same way.
    let mut dedicated = topic(1);
    dedicated.dedicated_kek = true;
    admin
        .admin()
        .create_topic("demo.secret-dedicated", dedicated)
        .await?;

    let alice = connect(&broker.profile("alice")).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    let mut pending = Vec::new();
    for name in ["demo.secret", "demo.secret-dedicated"] {
        for i in 0..RECORDS {
            pending.push(producer.send(record(name, i)).await?);
        }
    }
    for p in pending {
        p.await?;
    }
    producer.close().await?;

    // The records are really there, marker and all, so the scan below is
    // not vacuous; a group commit puts a consumer offset in the store too.
    let mut consumer = alice
        .subscribe(
            Subscription::group("demo.secret", "at-rest-readers"),
            ConsumerConfig::default(),
        )
        .await?;
    let records = read_n(&mut consumer, RECORDS).await?;
    assert!(records.iter().all(|r| {
        contains(&r.value, VALUE_MARKER.as_bytes())
            && r.key
                .as_deref()
                .is_some_and(|k| contains(k, KEY_MARKER.as_bytes()))
            && r.header("x-note")
                .is_some_and(|h| contains(h, HEADER_MARKER.as_bytes()))
    }));
    expect_quiet(&mut consumer, Duration::from_millis(200)).await?;
    consumer.commit_consumed().await?;
    consumer.close().await;
    alice.close().await;
    admin.close().await;

    assert_eq!(
        broker.terminate()?,
        Some(0),
        "graceful exit:\n{}",
        broker.log_text()
    );

    let files = files_under(&broker.data_dir());
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    // 2 x 300 records, 6 of them ~64 KiB each: at least that much is on disk.
    assert!(
        total > 6 * 4096 * VALUE_MARKER.len() as u64,
        "{total} bytes in {} files: where did the records go?",
        files.len()
    );
    assert!(
        files.iter().any(|f| f.ends_with("meta.redb")),
        "the metadata store is among the files: {files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file)?;
        for marker in [KEY_MARKER, HEADER_MARKER, VALUE_MARKER] {
            assert!(
                !contains(&bytes, marker.as_bytes()),
                "{} holds {marker} in plaintext",
                file.display()
            );
        }
    }
    let log = broker.log_text();
    for marker in [KEY_MARKER, HEADER_MARKER, VALUE_MARKER] {
        assert!(!log.contains(marker), "the broker log holds {marker}");
    }
    Ok(())
}
