//! Stopping the broker under load. Several producers publish without
//! pause; the broker gets SIGTERM (or SIGKILL) in the middle. Every record
//! a producer saw acknowledged must be there after a restart, intact, at
//! its acknowledged offset. After a graceful stop the broker has also
//! answered every append it made, so the log holds nothing unacknowledged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use strongbox_client::{
    Client, ClientConfig, ClientError, ConsumerConfig, ProducerConfig, ProducerRecord,
    RecordMetadata, Subscription,
};
use strongbox_tests::BrokerProcess;
use strongbox_tests::client::{connect, expect_quiet, read_n, topic};

const TOPIC: &str = "demo.shutdown";
const PARTITIONS: u32 = 3;
const PRODUCERS: usize = 4;
/// Acknowledged records to wait for before stopping the broker.
const ACKED_BEFORE_STOP: usize = 1500;
/// Unacknowledged records one producer keeps in flight.
const WINDOW: usize = 256;
/// After the broker is gone, how long a producer keeps collecting answers
/// already on their way. Only limits which acknowledgements are checked.
const DRAIN: Duration = Duration::from_secs(3);

type Acked = Arc<Mutex<Vec<(u32, u64, String)>>>;

async fn produce_until_stopped(
    profile: std::path::PathBuf,
    id: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
    count: Arc<AtomicUsize>,
) -> Result<usize> {
    let mut config = ClientConfig::from_profile(&profile)?;
    // Give up quickly once the broker is gone.
    config.reconnect.give_up_after = Some(Duration::from_secs(1));
    config.connect_timeout = Duration::from_secs(2);
    let client = Client::connect(config).await?;
    let producer = client
        .producer(ProducerConfig {
            delivery_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        })
        .await?;
    let mut in_flight = FuturesUnordered::new();
    let mut failed = 0usize;
    let mut record_outcome =
        |value: String, outcome: Result<RecordMetadata, ClientError>| match outcome {
            Ok(meta) => {
                if let Ok(mut a) = acked.lock() {
                    a.push((meta.partition, meta.offset, value));
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => failed += 1,
        };
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let value = format!("p{id}-{seq:08}");
        let record = ProducerRecord::new(TOPIC, value.clone()).key(format!("k{}", seq % 11));
        match producer.send(record).await {
            Ok(delivery) => in_flight.push(async move { (value, delivery.await) }),
            Err(_) => break,
        }
        seq += 1;
        while in_flight.len() >= WINDOW {
            match tokio::time::timeout(Duration::from_millis(200), in_flight.next()).await {
                Ok(Some((value, outcome))) => record_outcome(value, outcome),
                Ok(None) => break,
                Err(_) if stop.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        // Collect what is already answered without waiting.
        while let Some(Some((value, outcome))) = futures::FutureExt::now_or_never(in_flight.next())
        {
            record_outcome(value, outcome);
        }
    }
    // The broker is gone: take the answers that are already on their way.
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some((value, outcome)) = in_flight.next().await {
            record_outcome(value, outcome);
        }
    })
    .await;
    drop(in_flight);
    drop(producer);
    drop(client);
    Ok(failed)
}

/// What a restarted broker holds: (partition, offset) → value.
async fn read_everything(broker: &BrokerProcess) -> Result<BTreeMap<(u32, u64), String>> {
    let reader = connect(&broker.profile("bob")).await?;
    let info = reader.admin().describe_topic(TOPIC).await?;
    let total: u64 = info
        .partitions
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
    ensure!(
        info.partitions.iter().all(|p| p.error.is_none()),
        "a partition is unavailable: {:?}",
        info.partitions
    );
    let mut consumer = reader
        .subscribe(
            Subscription::all_partitions(TOPIC),
            ConsumerConfig::default(),
        )
        .await?;
    let records = read_n(&mut consumer, usize::try_from(total)?).await?;
    expect_quiet(&mut consumer, Duration::from_millis(300)).await?;
    consumer.close().await;
    reader.close().await;
    let mut log = BTreeMap::new();
    for r in records {
        let value = String::from_utf8(r.value.to_vec())?;
        if let Some(old) = log.insert((r.partition, r.offset), value) {
            bail!("{}@{} delivered twice ({old})", r.partition, r.offset);
        }
    }
    Ok(log)
}

/// Every acknowledged record is at its offset, intact; no value is stored
/// twice; each producer's records keep their order within a partition.
fn check(acked: &[(u32, u64, String)], log: &BTreeMap<(u32, u64), String>) -> Result<()> {
    for (partition, offset, value) in acked {
        match log.get(&(*partition, *offset)) {
            Some(stored) if stored == value => {}
            Some(stored) => bail!("{partition}@{offset}: acknowledged {value}, stored {stored}"),
            None => bail!("{partition}@{offset}: acknowledged {value}, missing after restart"),
        }
    }
    let mut seen: HashMap<&str, (u32, u64)> = HashMap::new();
    let mut last: HashMap<(u32, &str), &str> = HashMap::new();
    for ((partition, offset), value) in log {
        if let Some(first) = seen.insert(value, (*partition, *offset)) {
            bail!("{value} stored twice: {first:?} and {partition}@{offset}");
        }
        let producer = value.split('-').next().unwrap_or_default();
        if let Some(prev) = last.insert((*partition, producer), value) {
            ensure!(
                prev < value.as_str(),
                "partition {partition}: {value} stored after {prev}"
            );
        }
    }
    Ok(())
}

enum Stop {
    Term,
    Kill,
}

async fn stop_under_load(how: Stop) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let broker = BrokerProcess::start_dev(&dir)?;
    let admin = connect(&broker.profile("admin")).await?;
    admin.admin().create_topic(TOPIC, topic(PARTITIONS)).await?;
    admin.close().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            tokio::spawn(produce_until_stopped(
                broker.profile("alice"),
                id,
                stop.clone(),
                acked.clone(),
                count.clone(),
            ))
        })
        .collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < ACKED_BEFORE_STOP {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "only {} records acknowledged; broker log:\n{}",
                count.load(Ordering::SeqCst),
                broker.log_text()
            );
        }
        if producers.iter().any(tokio::task::JoinHandle::is_finished) {
            bail!("a producer stopped early");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stop the broker while the producers keep sending.
    let acked_at_signal = count.load(Ordering::SeqCst);
    let (mut broker, status) = tokio::task::spawn_blocking(move || {
        let mut broker = broker;
        let status = match how {
            Stop::Term => broker.terminate().map(Some),
            Stop::Kill => broker.crash().map(|()| None),
        };
        (broker, status)
    })
    .await?;
    let status = status?;
    stop.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for p in producers {
        failed += p.await?.context("producer")?;
    }
    let acked = std::mem::take(&mut *acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    assert!(acked.len() >= acked_at_signal);

    let log_text = broker.log_text();
    if let Some(status) = status {
        assert_eq!(status, Some(0), "graceful exit code; log:\n{log_text}");
        assert!(
            !log_text.contains("shutdown grace period over"),
            "connection handlers had to be aborted:\n{log_text}"
        );
    }

    broker = BrokerProcess::start_dev(&dir)?;
    let log = read_everything(&broker)
        .await
        .with_context(|| format!("after restart; log:\n{}", broker.log_text()))?;
    check(&acked, &log)?;
    eprintln!(
        "{} acknowledged ({} at the signal), {} stored, {} failed",
        acked.len(),
        acked_at_signal,
        log.len(),
        failed
    );
    if status.is_some() {
        // A graceful stop answers every append it made.
        let acked_places: HashSet<(u32, u64)> = acked.iter().map(|(p, o, _)| (*p, *o)).collect();
        let unanswered: Vec<_> = log
            .iter()
            .filter(|(place, _)| !acked_places.contains(place))
            .take(10)
            .collect();
        assert!(
            unanswered.is_empty(),
            "stored but never acknowledged: {unanswered:?} ({} of {})",
            log.len() - acked.len(),
            log.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_and_answers_every_append() -> Result<()> {
    stop_under_load(Stop::Term).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_keeps_every_acknowledged_fsync_append() -> Result<()> {
    stop_under_load(Stop::Kill).await
}

/// A SIGTERM sent the moment the broker reports its address (or earlier,
/// while it is still starting) is a graceful stop with exit status 0,
/// never the default action of the signal.
#[test]
fn sigterm_right_after_start_is_a_graceful_stop() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    for round in 0..20 {
        let mut broker = BrokerProcess::start_dev(&dir)?;
        let status = broker.terminate()?;
        ensure!(
            status == Some(0),
            "round {round}: exit status {status:?}; log:\n{}",
            broker.log_text()
        );
    }
    Ok(())
}
