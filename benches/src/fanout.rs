//! `fanout`: one paced producer, N subscribers tailing the same topic live.
//!
//! Each subscriber has its own connection and reads every partition of a
//! fresh topic from its start, so nothing published is missed however long
//! subscribing takes. The producer starts once every subscriber has
//! subscribed and writes, into the first 8 bytes of each value, the time of
//! its `send` in nanoseconds since the Unix epoch; a subscriber's
//! publish-to-delivery latency is its clock at delivery minus that stamp
//! (both ends run on this machine, on the same clock).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde::Serialize;
use strongbox_client::{
    Client, ClientConfig, ConsumerConfig, DeliveryFuture, ProducerConfig, ProducerRecord,
    Subscription,
};
use tokio::sync::{mpsc, watch};

use crate::cli::DurabilityArg;
use crate::histogram::Histogram;
use crate::produce::{durability_name, ensure_topic};
use crate::report::{Latency, Throughput};

/// A subscriber gives up when no record arrives for this long.
const STALL: Duration = Duration::from_secs(10);

/// One fan-out measurement.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// The fresh topic.
    pub topic: String,
    /// Subscribers.
    pub subscribers: u32,
    /// Records per second published.
    pub rate: u64,
    /// Value bytes (at least 8).
    pub size: usize,
    /// How long the producer publishes.
    pub duration: Duration,
    /// Topic durability.
    pub durability: DurabilityArg,
    /// The producer's linger; the client's default when `None`.
    pub linger: Option<Duration>,
}

/// What a fan-out measurement found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutReport {
    /// Topic.
    pub topic: String,
    /// Topic durability as the broker reports it.
    pub durability: String,
    /// Record value size.
    pub message_bytes: usize,
    /// Subscribers.
    pub subscribers: u32,
    /// Target publish rate, records per second.
    pub rate: u64,
    /// Records published (acknowledged).
    pub published: u64,
    /// The producer's acknowledged rate.
    pub produce: Throughput,
    /// The producer's ack latency (from `send`).
    pub ack_latency: Latency,
    /// Each subscriber's records per second, from the producer's first
    /// `send` to the subscriber's last record.
    pub subscriber_records_per_sec: Vec<f64>,
    /// Subscribers that received every published record.
    pub subscribers_complete: u32,
    /// Publish-to-delivery latency over every record of every subscriber.
    pub delivery_latency: Latency,
}

impl FanoutReport {
    /// The slowest subscriber's records per second.
    pub fn slowest_subscriber(&self) -> f64 {
        self.subscriber_records_per_sec
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(f64::MAX)
    }

    /// Text for people.
    pub fn text(&self) -> String {
        let rates = &self.subscriber_records_per_sec;
        let max = rates.iter().copied().fold(0.0, f64::max);
        let mut each = String::new();
        if rates.len() <= 10 {
            let list: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
            each = format!(" [{}]", list.join(", "));
        }
        format!(
            "fanout    {} B records paced at {}/s, {} subscriber(s), topic {} ({}):\n          producer    {:>10.0} msgs/s, ack latency {}\n          subscribers {:>10.0} .. {:.0} recs/s (slowest .. fastest){each}, {} of {} received all {} records\n          delivery latency {}\n",
            self.message_bytes,
            self.rate,
            self.subscribers,
            self.topic,
            self.durability,
            self.produce.msgs_per_sec,
            crate::report::latency_line(&self.ack_latency),
            self.slowest_subscriber(),
            max,
            self.subscribers_complete,
            self.subscribers,
            self.published,
            crate::report::latency_line(&self.delivery_latency),
        )
    }
}

/// What one subscriber found.
struct Tail {
    records: u64,
    last: Option<Instant>,
    latency: Histogram,
}

/// Nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Runs one fan-out measurement against the broker `config` points at.
///
/// # Errors
///
/// Connecting, creating the topic, subscribing or producing fails.
pub async fn run(config: &ClientConfig, o: &FanoutOptions) -> Result<FanoutReport> {
    if o.size < 8 {
        bail!("fanout values need at least 8 bytes for the timestamp");
    }
    let admin = Client::connect(config.clone())
        .await
        .context("connecting to the broker")?;
    let durability = ensure_topic(&admin, &o.topic, 1, o.durability).await?;
    admin.close().await;

    // Subscribers: each reads until it has `target` records (known once the
    // producer is done) or nothing arrives for STALL.
    let (target_tx, target_rx) = watch::channel(u64::MAX);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(o.subscribers as usize);
    let mut tails = Vec::new();
    for _ in 0..o.subscribers {
        let client = Client::connect(config.clone())
            .await
            .context("connecting a subscriber")?;
        let mut consumer = client
            .subscribe(
                Subscription::all_partitions(o.topic.clone()),
                ConsumerConfig::default(),
            )
            .await
            .context("subscribing")?;
        let (ready, mut target) = (ready_tx.clone(), target_rx.clone());
        tails.push(tokio::spawn(async move {
            let _ = ready.send(()).await;
            let mut t = Tail {
                records: 0,
                last: None,
                latency: Histogram::new(),
            };
            loop {
                if t.records >= *target.borrow() {
                    break;
                }
                let next = tokio::select! {
                    next = tokio::time::timeout(STALL, consumer.next()) => next,
                    _ = target.changed() => continue,
                };
                match next {
                    Ok(Some(Ok(record))) => {
                        let at = now_ns();
                        let stamp = record
                            .value
                            .get(..8)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map_or(at, u64::from_be_bytes);
                        t.latency.record(at.saturating_sub(stamp));
                        t.records += 1;
                        t.last = Some(Instant::now());
                    }
                    _ => break,
                }
            }
            consumer.close().await;
            client.close().await;
            t
        }));
    }
    drop(ready_tx);
    for _ in 0..o.subscribers {
        ready_rx.recv().await.context("a subscriber ended early")?;
    }

    let client = Client::connect(config.clone())
        .await
        .context("connecting the producer")?;
    let defaults = ProducerConfig::default();
    let producer = client
        .producer(ProducerConfig {
            linger: o.linger.unwrap_or(defaults.linger),
            ..defaults
        })
        .await
        .context("creating a producer")?;
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<(Instant, DeliveryFuture)>();
    let collector = tokio::spawn(async move {
        let (mut h, mut acked, mut last) = (Histogram::new(), 0u64, None);
        while let Some((at, delivery)) = acks_rx.recv().await {
            if delivery.await.is_ok() {
                let now = Instant::now();
                h.record_duration(now - at);
                acked += 1;
                last = Some(now);
            }
        }
        (h, acked, last)
    });
    let started = Instant::now();
    let count = (o.rate as f64 * o.duration.as_secs_f64()).round() as u64;
    let mut value = BytesMut::with_capacity(o.size);
    for sent in 0..count {
        let due = started + Duration::from_secs_f64(sent as f64 / o.rate as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        value.clear();
        value.put_u64(now_ns());
        value.resize(o.size, 0x5A);
        let record =
            ProducerRecord::new(o.topic.clone(), Bytes::copy_from_slice(&value)).partition(0);
        let delivery = producer.send(record).await.context("sending")?;
        let _ = acks_tx.send((Instant::now(), delivery));
    }
    drop(acks_tx);
    producer.flush().await.context("flushing")?;
    let (ack_h, published, last_ack) = collector.await.context("the ack collector panicked")?;
    let _ = producer.close().await;
    client.close().await;
    let _ = target_tx.send(published);

    let mut delivery = Histogram::new();
    let mut rates = Vec::new();
    let mut complete = 0;
    for tail in tails {
        let t = tail.await.context("a subscriber panicked")?;
        delivery.merge(&t.latency);
        let elapsed = t.last.map_or(Duration::ZERO, |l| l - started);
        rates.push(Throughput::new(t.records, 0, elapsed).msgs_per_sec);
        if t.records >= published {
            complete += 1;
        }
    }
    Ok(FanoutReport {
        topic: o.topic.clone(),
        durability: durability_name(&durability),
        message_bytes: o.size,
        subscribers: o.subscribers,
        rate: o.rate,
        published,
        produce: Throughput::new(
            published,
            published.saturating_mul(o.size as u64),
            last_ack.map_or(Duration::ZERO, |l| l - started),
        ),
        ack_latency: Latency::of(&ack_h),
        subscriber_records_per_sec: rates,
        subscribers_complete: complete,
        delivery_latency: Latency::of(&delivery),
    })
}
