//! `consume`: replay a topic from its earliest offset through the client
//! crate's `Consumer`, every partition at once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use strongbox_client::{Client, ClientConfig, ConsumerConfig, Subscription};

use crate::report::{ConsumeReport, Throughput};

/// Give up when no record arrives for this long.
const STALL: Duration = Duration::from_secs(60);

/// Reads `count` records of `topic` (default: everything retained when it
/// starts) from the earliest offset.
///
/// # Errors
///
/// Connecting or subscribing fails, the topic is empty, a record fails,
/// or records stop arriving for a minute.
pub async fn run(
    config: &ClientConfig,
    topic: &str,
    count: Option<u64>,
    credit_window: usize,
) -> Result<ConsumeReport> {
    let client = Client::connect(config.clone())
        .await
        .context("connecting to the broker")?;
    let info = client
        .admin()
        .describe_topic(topic)
        .await
        .with_context(|| format!("describing topic {topic}"))?;
    let retained: u64 = info
        .partitions
        .iter()
        .map(|p| p.high_watermark.saturating_sub(p.log_start_offset))
        .sum();
    let target = count.unwrap_or(retained);
    if target == 0 {
        bail!("topic {topic} holds no records to replay");
    }
    let started = Instant::now();
    let mut consumer = client
        .subscribe(
            Subscription::all_partitions(topic),
            ConsumerConfig {
                credit_window: credit_window as u64,
                ..ConsumerConfig::default()
            },
        )
        .await
        .context("subscribing")?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut first = None;
    while records < target {
        let next = tokio::time::timeout(STALL, consumer.next()).await;
        let record = match next {
            Err(_) => bail!("no record for {STALL:?} after {records} of {target}"),
            Ok(None) => bail!("the subscription ended after {records} of {target} records"),
            Ok(Some(Err(e))) => bail!("record {records} of {target} failed: {e}"),
            Ok(Some(Ok(record))) => record,
        };
        first.get_or_insert_with(Instant::now);
        records += 1;
        bytes += record.value.len() as u64;
    }
    let elapsed = started.elapsed();
    consumer.close().await;
    client.close().await;
    Ok(ConsumeReport {
        topic: topic.to_owned(),
        records,
        first_record_ms: first.map_or(0.0, |f| (f - started).as_secs_f64() * 1_000.0),
        throughput: Throughput::new(records, bytes, elapsed),
    })
}
