//! Publish and replay against a real broker process: ordering, integrity,
//! restarts, replay by time, consumer groups.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use strongbox_client::{
    ConsumedRecord, ConsumerConfig, ProducerConfig, ProducerRecord, StartPosition, Subscription,
};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::{connect, expect_quiet, read_n, topic};

const N: usize = 1500;
const BASE_TS: i64 = 1_700_000_000_000;

fn record(i: usize) -> ProducerRecord {
    ProducerRecord::new("demo.replay", format!("value-{i:06}"))
        .key(format!("key-{}", i % 17))
        .header("seq", i.to_string())
        .header("kind", "test")
        .timestamp(BASE_TS + i as i64)
}

/// Every record is there once, intact, and each partition is in offset
/// order with no gap.
fn check_all(records: &[ConsumedRecord]) {
    assert_eq!(records.len(), N);
    let mut seen = HashSet::new();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for r in records {
        let seq: usize = std::str::from_utf8(r.header("seq").expect("seq header"))
            .expect("utf-8")
            .parse()
            .expect("number");
        assert!(seen.insert(seq), "record {seq} delivered twice");
        assert_eq!(&r.value[..], format!("value-{seq:06}").as_bytes());
        assert_eq!(
            r.key.as_deref(),
            Some(format!("key-{}", seq % 17).as_bytes())
        );
        assert_eq!(r.header("kind").map(|v| &v[..]), Some(&b"test"[..]));
        assert_eq!(r.timestamp, BASE_TS + seq as i64);
        if let Some(prev) = last.insert(r.partition, r.offset) {
            assert_eq!(
                r.offset,
                prev + 1,
                "partition {} has a gap or reorder",
                r.partition
            );
        } else {
            assert_eq!(r.offset, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_replay_restart_and_replay_by_time() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dir)?;

    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic("demo.replay", topic(3)).await?;

    let alice = connect(&broker.profile("alice")).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    let mut pending = Vec::new();
    for i in 0..N {
        pending.push(producer.send(record(i)).await?);
    }
    let mut offsets = HashSet::new();
    for p in pending {
        let meta = p.await?;
        assert!(
            offsets.insert((meta.partition, meta.offset)),
            "offset acknowledged twice"
        );
    }
    producer.close().await?;

    let bob = connect(&broker.profile("bob")).await?;
    let mut consumer = bob
        .subscribe(
            Subscription::all_partitions("demo.replay"),
            ConsumerConfig::default(),
        )
        .await?;
    check_all(&read_n(&mut consumer, N).await?);
    expect_quiet(&mut consumer, Duration::from_millis(300)).await?;
    consumer.close().await;
    bob.close().await;
    alice.close().await;
    admin.close().await;

    // A graceful restart keeps everything.
    assert_eq!(
        broker.terminate()?,
        Some(0),
        "graceful exit:\n{}",
        broker.log_text()
    );
    let broker = BrokerProcess::start_dev(&dir)?;
    let bob = connect(&broker.profile("bob")).await?;
    let mut consumer = bob
        .subscribe(
            Subscription::all_partitions("demo.replay"),
            ConsumerConfig::default(),
        )
        .await?;
    check_all(&read_n(&mut consumer, N).await?);
    consumer.close().await;

    // Replay from a time: exactly the records stamped at or after it.
    let cut = 1000usize;
    let mut consumer = bob
        .subscribe(
            Subscription::all_partitions("demo.replay")
                .start(StartPosition::Timestamp(BASE_TS + cut as i64)),
            ConsumerConfig::default(),
        )
        .await?;
    let records = read_n(&mut consumer, N - cut).await?;
    // Batches may start before the cut; the consumer delivers whole batches
    // from the one holding the found offset, so check what arrived.
    for r in &records {
        assert!(
            r.timestamp >= BASE_TS + cut as i64,
            "record at {} before the cut",
            r.timestamp
        );
    }
    expect_quiet(&mut consumer, Duration::from_millis(300)).await?;
    consumer.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_resume_from_commits_and_share_partitions() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let mut broker = BrokerProcess::start_dev(&dir)?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic("demo.groups", topic(4)).await?;
    let alice = connect(&broker.profile("alice")).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    let mut pending = Vec::new();
    for i in 0..400usize {
        pending.push(
            producer
                .send(ProducerRecord::new("demo.groups", format!("g-{i}")).key(format!("k{i}")))
                .await?,
        );
    }
    for p in pending {
        p.await?;
    }

    // One member reads 150 records, commits, leaves.
    let bob = connect(&broker.profile("bob")).await?;
    let mut member = bob
        .subscribe(
            Subscription::group("demo.groups", "audit"),
            ConsumerConfig::default(),
        )
        .await?;
    let first = read_n(&mut member, 150).await?;
    member.commit_consumed().await?;
    member.close().await;
    bob.close().await;

    // After a broker restart the group resumes after its commits: the
    // first batch read is exactly the rest.
    broker.terminate()?;
    let broker = BrokerProcess::start_dev(&dir)?;
    let bob = connect(&broker.profile("bob")).await?;
    let mut member = bob
        .subscribe(
            Subscription::group("demo.groups", "audit"),
            ConsumerConfig::default(),
        )
        .await?;
    let rest = read_n(&mut member, 250).await?;
    expect_quiet(&mut member, Duration::from_millis(500)).await?;
    let mut all: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        400,
        "every record exactly once across the restart"
    );
    member.close().await;

    // Two members of a group split a topic's partitions between them, and
    // no record is delivered to both.
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic("demo.pair", topic(4)).await?;
    let c1 = connect(&broker.profile("bob")).await?;
    let c2 = connect(&broker.profile("bob")).await?;
    let mut m1 = c1
        .subscribe(
            Subscription::group("demo.pair", "pair"),
            ConsumerConfig::default(),
        )
        .await?;
    let mut m2 = c2
        .subscribe(
            Subscription::group("demo.pair", "pair"),
            ConsumerConfig::default(),
        )
        .await?;
    // Wait until the rebalance reached both: two partitions each.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m1.assignment().len() != 2 || m2.assignment().len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no balanced assignment"
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            r = futures::StreamExt::next(&mut m1) => panic!("record before data: {r:?}"),
            r = futures::StreamExt::next(&mut m2) => panic!("record before data: {r:?}"),
        }
    }
    let p1: HashSet<u32> = m1.assignment().into_iter().collect();
    let p2: HashSet<u32> = m2.assignment().into_iter().collect();
    assert!(p1.is_disjoint(&p2), "partitions shared: {p1:?} {p2:?}");

    let alice = connect(&broker.profile("alice")).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    let mut pending = Vec::new();
    for i in 0..400usize {
        pending.push(
            producer
                .send(ProducerRecord::new("demo.pair", format!("p-{i}")).key(format!("k{i}")))
                .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    while got1.len() + got2.len() < 400 {
        let next = tokio::time::timeout(strongbox_tests::client::READ_TIMEOUT, async {
            tokio::select! {
                r = futures::StreamExt::next(&mut m1) => (1, r),
                r = futures::StreamExt::next(&mut m2) => (2, r),
            }
        })
        .await?;
        match next {
            (1, Some(Ok(r))) => got1.push(r),
            (2, Some(Ok(r))) => got2.push(r),
            (who, other) => anyhow::bail!("member {who}: {other:?}"),
        }
    }
    expect_quiet(&mut m1, Duration::from_millis(300)).await?;
    expect_quiet(&mut m2, Duration::from_millis(300)).await?;
    assert!(got1.iter().all(|r| p1.contains(&r.partition)));
    assert!(got2.iter().all(|r| p2.contains(&r.partition)));
    let mut values: Vec<_> = got1.iter().chain(&got2).map(|r| r.value.clone()).collect();
    values.sort();
    values.dedup();
    assert_eq!(
        values.len(),
        400,
        "a record went to both members or to none"
    );
    assert!(!got1.is_empty() && !got2.is_empty(), "both members read");
    Ok(())
}
