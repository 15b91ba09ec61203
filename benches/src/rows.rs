//! The extra rows of `all`: the figures of the "fast by default" targets,
//! each measured on a fresh topic of the same broker.
//!
//! - `paced 10000/s`, `paced 100000/s`: ack latency of one producer with
//!   default settings, 1 KiB records, paced.
//! - `value 16384 B`, `value 262144 B`: produce and replay MB/s of values.
//! - `64 partitions x 64 producers`, `1000 partitions x 10 producers`:
//!   produce records/s, 1 KiB records.
//! - `fanout N subscribers` for 1, 10 and 50: one producer paced at 50,000
//!   1 KiB records/s; the slowest subscriber's records/s and the
//!   publish-to-delivery latency.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use strongbox_client::ClientConfig;

use crate::cli::{DurabilityArg, ProduceArgs};
use crate::fanout::{self, FanoutOptions};
use crate::{consume, produce};

/// One figure of an extra row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// What it is, with its unit.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// One extra row of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtraRow {
    /// The row's name.
    pub row: String,
    /// Its figures.
    pub figures: Vec<Figure>,
    /// The full report, as text.
    #[serde(skip)]
    pub text: String,
}

fn figure(name: &str, value: f64) -> Figure {
    Figure {
        name: name.to_owned(),
        value,
    }
}

/// How long the extra rows run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Seconds of each paced row.
    pub paced: Duration,
    /// Seconds of each fan-out row (50 subscribers of 50,000 records/s
    /// are 2.5 million deliveries a second to make, well beyond two
    /// cores: the row takes many times this long).
    pub fanout: Duration,
    /// Records of 16 KiB.
    pub count_16k: u64,
    /// Records of 256 KiB.
    pub count_256k: u64,
    /// Records of each many-partitions row.
    pub count_partitions: u64,
}

impl Sizes {
    /// The full rows.
    pub const FULL: Self = Self {
        paced: Duration::from_secs(10),
        fanout: Duration::from_secs(10),
        count_16k: 40_000,
        count_256k: 2_500,
        count_partitions: 1_000_000,
    };
    /// `--quick`.
    pub const QUICK: Self = Self {
        paced: Duration::from_secs(2),
        fanout: Duration::from_secs(1),
        count_16k: 6_000,
        count_256k: 400,
        count_partitions: 200_000,
    };
}

/// Runs every extra row once; `base` gives the connection-independent
/// produce settings, `prefix` the topics' prefix.
///
/// # Errors
///
/// A row fails to run.
pub async fn run(
    config: &ClientConfig,
    base: &ProduceArgs,
    prefix: &str,
    sizes: Sizes,
) -> Result<Vec<ExtraRow>> {
    let mut rows = Vec::new();
    let fresh = |name: &str| ProduceArgs {
        topic: format!("{prefix}-{name}"),
        partitions: 1,
        producers: 1,
        size: 1024,
        rate: None,
        duration: None,
        ..base.clone()
    };
    for rate in [10_000u64, 100_000] {
        let mut a = fresh(&format!("paced{rate}"));
        a.rate = Some(rate);
        a.count = (rate as f64 * sizes.paced.as_secs_f64()) as u64;
        let r = produce::run(config, &a).await.context("paced produce")?;
        rows.push(ExtraRow {
            row: format!("paced {rate}/s"),
            figures: vec![
                figure("ack p50 ms", r.ack_latency.p50_us / 1e3),
                figure("ack p99 ms", r.ack_latency.p99_us / 1e3),
                figure("acked msgs/s", r.throughput.msgs_per_sec),
            ],
            text: r.text(),
        });
    }
    for (size, count) in [(16_384usize, sizes.count_16k), (262_144, sizes.count_256k)] {
        let mut a = fresh(&format!("value{size}"));
        a.size = size;
        a.count = count;
        let p = produce::run(config, &a).await.context("large produce")?;
        let c = consume::run(config, &a.topic, Some(p.throughput.messages), 8 << 20)
            .await
            .context("large replay")?;
        rows.push(ExtraRow {
            row: format!("value {size} B"),
            figures: vec![
                figure("produce MB/s", p.throughput.mb_per_sec),
                figure("replay MB/s", c.throughput.mb_per_sec),
            ],
            text: format!("{}{}", p.text(), c.text()),
        });
    }
    for (partitions, producers) in [(64u32, 64u32), (1_000, 10)] {
        let mut a = fresh(&format!("p{partitions}x{producers}"));
        a.partitions = partitions;
        a.producers = producers;
        a.count = sizes.count_partitions;
        let p = produce::run(config, &a).await.context("many partitions")?;
        rows.push(ExtraRow {
            row: format!("{partitions} partitions x {producers} producers"),
            figures: vec![
                figure("produce msgs/s", p.throughput.msgs_per_sec),
                figure("ack p99 ms", p.ack_latency.p99_us / 1e3),
            ],
            text: p.text(),
        });
    }
    for subscribers in [1u32, 10, 50] {
        let r = fanout::run(
            config,
            &FanoutOptions {
                topic: format!("{prefix}-fanout{subscribers}"),
                subscribers,
                rate: 50_000,
                size: 1024,
                duration: sizes.fanout,
                durability: DurabilityArg::Fsync,
                linger: None,
            },
        )
        .await
        .context("fanout")?;
        rows.push(ExtraRow {
            row: format!("fanout {subscribers} subscribers"),
            figures: vec![
                figure("slowest subscriber recs/s", r.slowest_subscriber()),
                figure("delivery p50 ms", r.delivery_latency.p50_us / 1e3),
                figure("delivery p99 ms", r.delivery_latency.p99_us / 1e3),
                figure("delivery max ms", r.delivery_latency.max_us / 1e3),
            ],
            text: r.text(),
        });
    }
    Ok(rows)
}
