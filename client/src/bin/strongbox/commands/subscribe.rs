//! `strongbox subscribe`.

use std::time::Duration;

use futures::StreamExt;
use strongbox_client::{Client, ClientError, Consumer, ConsumerConfig, Subscription, Target};

use crate::cli::{GlobalArgs, SubscribeArgs};
use crate::commands::{Out, e2e};
use crate::{connect, output};

/// A group member commits after this many records, and when idle.
const COMMIT_EVERY: u64 = 100;
const COMMIT_IDLE: Duration = Duration::from_secs(1);

pub(crate) async fn run(global: &GlobalArgs, args: SubscribeArgs) -> anyhow::Result<()> {
    let opener = e2e::opener(&args.e2e)?;
    let config = ConsumerConfig {
        opener: opener
            .clone()
            .map(|o| o as std::sync::Arc<dyn strongbox_client::ValueOpener>),
        subscribe_timeout: args.timeout,
        skip_damaged: args.skip_damaged,
        ..ConsumerConfig::default()
    };
    let mut client_config = connect::config(global)?;
    client_config.connect_timeout = client_config.connect_timeout.min(args.timeout);
    let client = Client::connect(client_config).await?;
    let target = match (args.partition, &args.group) {
        (Some(p), _) => Target::Partition(p),
        (None, Some(g)) => Target::Group(g.clone()),
        (None, None) => Target::AllPartitions,
    };
    let subscription = Subscription {
        topic: args.topic.clone(),
        target,
        start: args.from,
    };
    let mut consumer = match Consumer::subscribe(&client, subscription, config).await {
        Ok(c) => c,
        Err(e) => {
            client.close().await;
            return Err(e.into());
        }
    };
    let group = args.group.is_some();
    let mut out = Out::new();
    let mut printed = 0u64;
    let mut last_error = None;
    // Partitions reported damaged: a warning each, and status 1 at the end.
    let mut damaged = std::collections::BTreeSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut idle = tokio::time::interval(COMMIT_IDLE);
    let result: anyhow::Result<()> = loop {
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            _ = idle.tick(), if group => {
                if let Err(e) = consumer.commit_consumed().await {
                    eprintln!("warning: commit failed: {e}");
                }
            }
            item = consumer.next() => match item {
                None => break last_error.take().map_or(Ok(()), |e| Err(anyhow::Error::from(e))),
                Some(Err(e)) if e2e::is_fatal(&e, opener.as_ref()) => break Err(e.into()),
                Some(Err(e @ ClientError::PartitionDamaged { .. })) => {
                    eprintln!("warning: {e}");
                    if let ClientError::PartitionDamaged { partition, .. } = e {
                        damaged.insert(partition);
                    }
                }
                Some(Err(e)) => {
                    eprintln!("warning: {e}");
                    last_error = Some(e);
                }
                Some(Ok(record)) => {
                    last_error = None;
                    let written = if global.json {
                        out.json(&output::record_json(&record))
                    } else {
                        out.line(&output::record_line(&record))
                    };
                    match written {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                    printed += 1;
                    if group
                        && printed.is_multiple_of(COMMIT_EVERY)
                        && let Err(e) = consumer.commit_consumed().await
                    {
                        eprintln!("warning: commit failed: {e}");
                    }
                }
            },
        }
    };
    let committed = if group {
        consumer.commit_consumed().await
    } else {
        Ok(())
    };
    consumer.close().await;
    client.close().await;
    e2e::report_unreadable(opener.as_ref());
    result?;
    committed?;
    if !damaged.is_empty() {
        let list: Vec<String> = damaged.iter().map(u32::to_string).collect();
        let hint = if args.skip_damaged {
            "restore the partition from backup"
        } else {
            "restore the partition from backup, or read past the damage with --skip-damaged"
        };
        anyhow::bail!(
            "damaged records of {} partition {} were not delivered (see the warnings above; {hint})",
            args.topic,
            list.join(", ")
        );
    }
    Ok(())
}
