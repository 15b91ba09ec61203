//! A slow subscriber stalls only itself. While subscribers that never read
//! sit on the topic, a producer publishes a large volume: its
//! acknowledgements keep coming, a subscriber that reads gets everything,
//! and the broker's memory stays far below the volume published.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use strongbox_client::{ConsumerConfig, ProducerConfig, ProducerRecord, Subscription};
use strongbox_protocol::frame::Frame;
use strongbox_protocol::frames::subscribe::{StartPosition, Subscribe, SubscriptionTarget};
use strongbox_tests::client::{connect, read_n, topic};
use strongbox_tests::raw::{self, FrameStream};
use strongbox_tests::{BrokerProcess, rss_kib_of};

const TOPIC: &str = "demo.firehose";
const PARTITIONS: u32 = 2;
const VALUE_LEN: usize = 16 * 1024;
/// 128 MiB of values: the broker's memory levels off at about 20-30 MiB
/// above its idle size whatever the volume (QUIC windows, one frame per
/// subscription), so a third of the volume is a generous bound.
const RECORDS: usize = 8192;
/// Credit of the subscribers that do not keep up.
const SMALL_CREDIT: u64 = 64 * 1024;
const VOLUME_KIB: u64 = (RECORDS * VALUE_LEN / 1024) as u64;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:08}").into_bytes();
    v.resize(VALUE_LEN, (i % 251) as u8);
    v
}

fn check_value(v: &[u8]) -> Result<usize> {
    let i: usize = std::str::from_utf8(v.get(..8).unwrap_or_default())?.parse()?;
    ensure!(v.len() == VALUE_LEN, "record {i}: {} bytes", v.len());
    ensure!(
        v[8..].iter().all(|b| *b == (i % 251) as u8),
        "record {i} corrupted"
    );
    Ok(i)
}

/// A raw subscription that is opened and then never read from: its QUIC
/// stream fills and the broker must stop writing to it.
async fn raw_subscription(
    broker: &BrokerProcess,
    credit: u64,
) -> Result<(quinn::Connection, tokio::task::JoinHandle<()>, FrameStream)> {
    let conn = raw::connect(broker.addr, raw::profile_config(&broker.dir, "bob")?).await?;
    let (control, _welcome) = raw::handshake(&conn).await?;
    let keep_alive = raw::keep_alive(control);
    let mut s = FrameStream::open(&conn).await?;
    s.send(&Frame::Subscribe(Subscribe {
        topic: TOPIC.into(),
        target: SubscriptionTarget::Partition(0),
        start: StartPosition::Earliest,
        credit,
        skip_damaged: false,
    }))
    .await?;
    match s.next().await {
        Ok(Frame::Assignment(_)) => Ok((conn, keep_alive, s)),
        other => bail!("expected Assignment, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_stall_only_themselves() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let pid = broker.pid().expect("running");
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic(TOPIC, topic(PARTITIONS)).await?;

    // Three subscribers that do not keep up: a library consumer with a
    // small window that is never polled, a raw stream with a small credit
    // that never grants more, and a raw stream with plenty of credit that
    // never reads (QUIC flow control has to hold the broker back).
    let bob = connect(&broker.profile("bob")).await?;
    let mut idle_consumer = bob
        .subscribe(
            Subscription::all_partitions(TOPIC),
            ConsumerConfig {
                credit_window: SMALL_CREDIT,
                ..ConsumerConfig::default()
            },
        )
        .await?;
    let (_small_conn, _small_alive, mut small) = raw_subscription(&broker, SMALL_CREDIT).await?;
    let (_deaf_conn, _deaf_alive, mut deaf) = raw_subscription(&broker, 1 << 40).await?;

    // One subscriber that reads everything as it comes.
    let alice_reader = connect(&broker.profile("alice")).await?;
    let mut fast = alice_reader
        .subscribe(
            Subscription::all_partitions(TOPIC),
            ConsumerConfig::default(),
        )
        .await?;
    let fast_task = tokio::spawn(async move {
        let records = read_n(&mut fast, RECORDS).await?;
        let mut seen = vec![false; RECORDS];
        for r in &records {
            let i = check_value(&r.value)?;
            ensure!(!std::mem::replace(&mut seen[i], true), "record {i} twice");
        }
        fast.close().await;
        anyhow::Ok(records.len())
    });

    // Sample the broker's memory from now on.
    let baseline = rss_kib_of(pid)?;
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Ok(rss) = rss_kib_of(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // Publish; every acknowledgement must arrive.
    let alice = connect(&broker.profile("alice")).await?;
    let producer = alice.producer(ProducerConfig::default()).await?;
    let mut acks = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = ProducerRecord::new(TOPIC, value(i)).key(format!("k{}", i % 13));
        acks.push(producer.send(record).await?);
    }
    let mut acked = 0usize;
    for ack in acks {
        tokio::time::timeout(Duration::from_secs(120), ack).await??;
        acked += 1;
    }
    producer.close().await?;
    assert_eq!(acked, RECORDS);

    let read = tokio::time::timeout(Duration::from_secs(180), fast_task).await???;
    assert_eq!(read, RECORDS, "the reading subscriber got everything");
    sampling.store(false, Ordering::SeqCst);
    sampler.await?;
    let peak = peak.load(Ordering::SeqCst);
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "broker RSS: baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB for {VOLUME_KIB} KiB published"
    );
    assert!(
        growth < VOLUME_KIB / 3,
        "broker memory grew by {growth} KiB while {VOLUME_KIB} KiB were published"
    );

    // The stalled subscribers were only paused: they read correct records
    // from the start when they finally look.
    let first = read_n(&mut idle_consumer, 8).await?;
    for r in &first {
        check_value(&r.value)?;
    }
    match deaf.next().await {
        Ok(Frame::Records(records)) => {
            ensure!(records.partition == 0 && !records.batches.is_empty());
            ensure!(records.batches[0].base_offset == 0);
        }
        other => bail!("the deaf subscriber's first frame: {other:?}"),
    }

    // The raw subscriber that never granted more credit got what its
    // initial credit allowed and no more: frames only while the credit
    // was above zero.
    let mut costs = Vec::new();
    while let Ok(frame) =
        tokio::time::timeout(Duration::from_millis(500), small.next_unbounded()).await
    {
        match frame {
            Ok(Frame::Records(records)) => costs.push(records.credit_cost()),
            other => bail!("the small-credit subscriber got {other:?}"),
        }
    }
    let before_last: u64 = costs.iter().rev().skip(1).sum();
    assert!(!costs.is_empty(), "the small-credit subscriber got nothing");
    assert!(
        before_last < SMALL_CREDIT,
        "sent past the credit: frames of {costs:?} bytes for a credit of {SMALL_CREDIT}"
    );
    idle_consumer.close().await;
    Ok(())
}
