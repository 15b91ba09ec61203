//! `produce`: publish through the client crate and time the acks.
//!
//! Each producer has its own connection and `Producer`. A sending task
//! calls `send` as fast as the producer's buffer lets it and hands each
//! delivery future, with the time `send` was called, to a collector task
//! that awaits them in order and records the ack latency. Throughput is
//! acknowledged records over the time from the first `send` to the last
//! acknowledgement.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use strongbox_client::protocol::model::{Durability, TopicConfig};
use strongbox_client::{Client, ClientConfig, DeliveryFuture, ErrorCode, Producer, ProducerConfig};
use strongbox_client::{ClientError, ProducerRecord};
use tokio::sync::{Barrier, mpsc};

use crate::cli::{DurabilityArg, ProduceArgs};
use crate::histogram::Histogram;
use crate::report::{Latency, ProduceReport, Throughput};

/// Record framing in a batch besides the value (no key, no headers).
const RECORD_OVERHEAD: usize = 18;

/// Makes sure `topic` exists, creating it with `partitions` and
/// `durability` when it does not. Returns the durability it has.
///
/// # Errors
///
/// The topic is missing and cannot be created (for example for lack of
/// the `create` permission).
pub async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
    durability: DurabilityArg,
) -> Result<Durability> {
    let admin = client.admin();
    match admin.describe_topic(topic).await {
        Ok(info) => return Ok(info.config.durability),
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {}
        Err(e) => return Err(e).with_context(|| format!("describing topic {topic}")),
    }
    let durability = match durability {
        DurabilityArg::Fsync => Durability::Fsync,
        DurabilityArg::Interval => Durability::Interval { interval_ms: 100 },
        DurabilityArg::None => Durability::None,
    };
    let config = TopicConfig {
        partitions,
        durability,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: None,
        segment_ms: None,
        dedicated_kek: false,
    };
    match admin.create_topic(topic, config).await {
        Ok(info) => Ok(info.config.durability),
        // Another producer of this run created it first.
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => Ok(durability),
        Err(e) => Err(e).with_context(|| format!("creating topic {topic}")),
    }
}

/// What one producer task found.
struct ProducerResult {
    latency: Histogram,
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    sent: u64,
    last_ack: Instant,
}

/// Runs `produce` against the broker `config` points at.
///
/// # Errors
///
/// Connecting, creating the topic or a producer fails.
pub async fn run(config: &ClientConfig, args: &ProduceArgs) -> Result<ProduceReport> {
    let admin_client = Client::connect(config.clone())
        .await
        .context("connecting to the broker")?;
    let durability =
        ensure_topic(&admin_client, &args.topic, args.partitions, args.durability).await?;
    let partitions = admin_client
        .admin()
        .describe_topic(&args.topic)
        .await?
        .config
        .partitions
        .max(1);
    admin_client.close().await;

    let producers = args.producers;
    let per_producer = args.count / u64::from(producers);
    let remainder = args.count % u64::from(producers);
    let barrier = std::sync::Arc::new(Barrier::new(producers as usize + 1));
    let mut tasks = Vec::new();
    for index in 0..producers {
        let client = Client::connect(config.clone())
            .await
            .context("connecting a producer")?;
        let producer = client
            .producer(producer_config(args))
            .await
            .context("creating a producer")?;
        let count = per_producer + u64::from(u64::from(index) < remainder);
        let job = Job {
            topic: args.topic.clone(),
            partitions,
            index,
            value: Bytes::from(vec![0x5A; args.size]),
            count,
            duration: args.duration,
            rate: args.rate.map(|r| r as f64 / f64::from(producers)),
            records_per_batch: (args.batch_bytes / (args.size + RECORD_OVERHEAD)).max(1) as u64,
        };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = job.run(&producer).await;
            let _ = producer.close().await;
            client.close().await;
            result
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latency = Histogram::new();
    let (mut acked, mut failed, mut sent) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut ended = started;
    for task in tasks {
        let r = task.await.context("a producer task panicked")??;
        latency.merge(&r.latency);
        acked += r.acked;
        failed += r.failed;
        sent += r.sent;
        ended = ended.max(r.last_ack);
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    if acked == 0 {
        bail!(
            "no record was acknowledged: {}",
            first_error.as_deref().unwrap_or("nothing was sent")
        );
    }
    Ok(ProduceReport {
        topic: args.topic.clone(),
        durability: durability_name(&durability),
        message_bytes: args.size,
        producers,
        window: args.window,
        batch_bytes: args.batch_bytes,
        linger_ms: producer_config(args).linger.as_secs_f64() * 1_000.0,
        rate: args.rate,
        sent,
        failed,
        first_error,
        throughput: Throughput::new(
            acked,
            acked.saturating_mul(args.size as u64),
            ended.saturating_duration_since(started),
        ),
        ack_latency: Latency::of(&latency),
    })
}

/// The producer settings of `args`: the client's defaults where not given.
fn producer_config(args: &ProduceArgs) -> ProducerConfig {
    let defaults = ProducerConfig::default();
    ProducerConfig {
        batch_bytes: args.batch_bytes,
        linger: args.linger.unwrap_or(defaults.linger),
        max_in_flight: Some(args.window),
        buffer_bytes: args.buffer_bytes.unwrap_or(defaults.buffer_bytes),
        partition_pipeline: args
            .partition_pipeline
            .unwrap_or(defaults.partition_pipeline),
        ..defaults
    }
}

/// The name of a durability in reports.
pub fn durability_name(d: &Durability) -> String {
    match d {
        Durability::Fsync => "fsync".into(),
        Durability::Interval { interval_ms } => format!("interval {interval_ms} ms"),
        Durability::None => "none".into(),
    }
}

/// One producer's share of the work.
struct Job {
    topic: String,
    partitions: u32,
    index: u32,
    value: Bytes,
    count: u64,
    duration: Option<Duration>,
    /// Records per second for this producer; as fast as possible if `None`.
    rate: Option<f64>,
    records_per_batch: u64,
}

impl Job {
    async fn run(self, producer: &Producer) -> Result<ProducerResult> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, DeliveryFuture)>();
        let collector = tokio::spawn(async move {
            let mut r = ProducerResult {
                latency: Histogram::new(),
                acked: 0,
                failed: 0,
                first_error: None,
                sent: 0,
                last_ack: Instant::now(),
            };
            while let Some((at, delivery)) = rx.recv().await {
                match delivery.await {
                    Ok(_) => {
                        let now = Instant::now();
                        r.latency.record_duration(now - at);
                        r.acked += 1;
                        r.last_ack = now;
                    }
                    Err(e) => {
                        r.failed += 1;
                        r.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            r
        });
        let started = Instant::now();
        let deadline = self.duration.map(|d| started + d);
        let mut sent = 0u64;
        let mut send_error: Option<ClientError> = None;
        loop {
            if deadline.is_none() && sent >= self.count {
                break;
            }
            if sent.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            // Sticky partitions: a batch's worth of records per partition,
            // producers starting on different partitions.
            let partition = ((sent / self.records_per_batch + u64::from(self.index))
                % u64::from(self.partitions)) as u32;
            let record = ProducerRecord {
                topic: self.topic.clone(),
                partition: Some(partition),
                value: self.value.clone(),
                ..ProducerRecord::default()
            };
            let at = match self.rate {
                // Paced: wait for this record's slot, and count latency
                // from the slot, so a stall that delays later sends shows.
                Some(rate) => {
                    let due = started + Duration::from_secs_f64(sent as f64 / rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    due
                }
                None => Instant::now(),
            };
            match producer.send(record).await {
                Ok(delivery) => {
                    let _ = tx.send((at, delivery));
                }
                Err(e) => {
                    send_error = Some(e);
                    break;
                }
            }
            sent += 1;
        }
        drop(tx);
        let _ = producer.flush().await;
        let mut r = collector.await.context("the ack collector panicked")?;
        r.sent = sent;
        if let Some(e) = send_error {
            r.first_error.get_or_insert_with(|| e.to_string());
            r.failed += 1;
        }
        Ok(r)
    }
}
