//! `strongbox publish`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use strongbox_client::{Client, DeliveryFuture, ProducerConfig, ProducerRecord, RecordMetadata};
use tokio::io::AsyncBufReadExt;

use crate::cli::{GlobalArgs, PublishArgs};
use crate::commands::Out;
use crate::{connect, output};

/// Records sent but not yet reported; reading stdin pauses beyond this.
const WINDOW: usize = 10_000;

/// After a failure, how long the producer and the connection get to wind
/// down before the command exits anyway: the broker may be gone, and the
/// failure is already decided.
const FAILED_CLOSE: Duration = Duration::from_secs(1);

pub(crate) async fn run(global: &GlobalArgs, args: PublishArgs) -> anyhow::Result<()> {
    let mut config = connect::config(global)?;
    config.connect_timeout = config.connect_timeout.min(args.timeout);
    let client = Client::connect(config).await?;
    let result = publish(global, &client, args).await;
    if result.is_ok() {
        client.close().await;
    } else {
        let _ = tokio::time::timeout(FAILED_CLOSE, client.close()).await;
    }
    result
}

async fn publish(global: &GlobalArgs, client: &Client, args: PublishArgs) -> anyhow::Result<()> {
    let sealer = crate::commands::e2e::sealer(client, &args.topic, &args.e2e).await?;
    let producer = client
        .producer(ProducerConfig {
            linger: Duration::from_millis(2),
            delivery_timeout: args.timeout,
            sealer,
            ..ProducerConfig::default()
        })
        .await?;
    let mut out = Out::new();
    let headers: Vec<(String, Bytes)> = args
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), Bytes::from(v.clone())))
        .collect();
    let record = |value: String| ProducerRecord {
        topic: args.topic.clone(),
        partition: args.partition,
        key: args.key.clone().map(Bytes::from),
        headers: headers.clone(),
        value: Bytes::from(value),
        timestamp: None,
    };
    // Every record read is in `pending` until its acknowledgement is
    // printed; the first failure ends the command with status 1, so status
    // 0 means every record was acknowledged.
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let result = async {
        if args.messages.is_empty() {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut eof = false;
            while !eof || !pending.is_empty() {
                tokio::select! {
                    biased;
                    meta = async { pending.front_mut().expect("guarded: not empty").await }, if !pending.is_empty() => {
                        pending.pop_front();
                        report(&mut out, global.json, &meta?)?;
                    }
                    line = lines.next_line(), if !eof && pending.len() < WINDOW => match line? {
                        Some(line) => {
                            let line = line.strip_suffix('\r').map(str::to_owned).unwrap_or(line);
                            pending.push_back(producer.send(record(line)).await?);
                        }
                        None => eof = true,
                    },
                }
            }
        } else {
            for message in &args.messages {
                pending.push_back(producer.send(record(message.clone())).await?);
            }
            while let Some(delivery) = pending.pop_front() {
                report(&mut out, global.json, &delivery.await?)?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        // Records still pending fail on their own; do not wait for them.
        let _ = tokio::time::timeout(FAILED_CLOSE, producer.close()).await;
        return result;
    }
    Ok(producer.close().await?)
}

fn report(out: &mut Out, json: bool, meta: &RecordMetadata) -> anyhow::Result<()> {
    if json {
        out.json(&output::published_json(meta))?;
    } else {
        out.line(&output::published_line(meta))?;
    }
    Ok(())
}
