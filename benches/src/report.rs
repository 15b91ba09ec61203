//! What a measurement found, as text for people and JSON for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::histogram::Histogram;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest value.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// The percentiles of `h` (recorded in nanoseconds); zeros when empty.
    pub fn of(h: &Histogram) -> Self {
        let us = |v: Option<u64>| v.map_or(0.0, |ns| ns as f64 / 1_000.0);
        Self {
            samples: h.len(),
            p50_us: us(h.quantile(0.5)),
            p99_us: us(h.quantile(0.99)),
            p999_us: us(h.quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean().map_or(0.0, |ns| ns / 1_000.0),
        }
    }
}

/// Throughput of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    /// Messages (records) counted.
    pub messages: u64,
    /// Bytes of message values (record values), excluding framing.
    pub value_bytes: u64,
    /// Seconds from the first send (or subscribe) to the last ack (or
    /// record).
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Value megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
}

impl Throughput {
    /// Rates for `messages` of `value_bytes` in total over `elapsed`.
    pub fn new(messages: u64, value_bytes: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Self {
            messages,
            value_bytes,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: value_bytes as f64 / seconds / 1e6,
        }
    }
}

/// `raw-quic`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RawQuicReport {
    /// The TLS key exchange group negotiated.
    pub key_exchange: String,
    /// Message size.
    pub message_bytes: usize,
    /// Messages sent.
    pub sent: u64,
    /// Messages the server acknowledged.
    pub acked: u64,
    /// Rates.
    pub throughput: Throughput,
    /// From handing a write to the stream to the ack that covers it.
    pub ack_latency: Latency,
}

/// `produce`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProduceReport {
    /// Topic.
    pub topic: String,
    /// Topic durability as the broker reports it.
    pub durability: String,
    /// Record value size.
    pub message_bytes: usize,
    /// Producers (connections).
    pub producers: u32,
    /// In-flight window, batches per producer.
    pub window: u32,
    /// Batch size target.
    pub batch_bytes: usize,
    /// Linger, milliseconds.
    pub linger_ms: f64,
    /// Target send rate, records per second; `None` for as fast as possible.
    pub rate: Option<u64>,
    /// Records sent.
    pub sent: u64,
    /// Records whose delivery failed.
    pub failed: u64,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
    /// Rates of acknowledged records.
    pub throughput: Throughput,
    /// From `send` to the acknowledgement of the record.
    pub ack_latency: Latency,
}

/// `consume`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumeReport {
    /// Topic.
    pub topic: String,
    /// Records read.
    pub records: u64,
    /// Milliseconds from subscribing to the first record.
    pub first_record_ms: f64,
    /// Rates.
    pub throughput: Throughput,
}

/// Median, min and max of one figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; zeros when there are none.
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// One run of `all`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// The baseline.
    pub raw_quic: RawQuicReport,
    /// Through the broker.
    pub produce: ProduceReport,
    /// Replay of what `produce` wrote.
    pub consume: ConsumeReport,
    /// produce msgs/s ÷ raw-quic msgs/s.
    pub produce_to_raw_ratio: f64,
    /// The extra rows (paced latency, large records, many partitions,
    /// fan-out); empty with `--no-extras`.
    pub extras: Vec<crate::rows::ExtraRow>,
}

/// One figure of an extra row over the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtraSpread {
    /// The row.
    pub row: String,
    /// The figure.
    pub figure: String,
    /// Its spread over the runs.
    pub spread: Spread,
}

/// `all`: every run and the spread of each figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllReport {
    /// Each run.
    pub runs: Vec<Run>,
    /// raw-quic msgs/s.
    pub raw_quic_msgs_per_sec: Spread,
    /// produce msgs/s.
    pub produce_msgs_per_sec: Spread,
    /// produce MB/s.
    pub produce_mb_per_sec: Spread,
    /// produce ack latency p50, µs.
    pub produce_p50_us: Spread,
    /// produce ack latency p99, µs.
    pub produce_p99_us: Spread,
    /// produce ack latency p99.9, µs.
    pub produce_p999_us: Spread,
    /// Ratio of produce to raw-quic msgs/s, per run.
    pub produce_to_raw_ratio: Spread,
    /// Replay records/s.
    pub consume_records_per_sec: Spread,
    /// Replay MB/s.
    pub consume_mb_per_sec: Spread,
    /// The extra rows' figures.
    pub extras: Vec<ExtraSpread>,
}

impl AllReport {
    /// Summarizes `runs`.
    pub fn new(runs: Vec<Run>) -> Self {
        let spread = |f: &dyn Fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        Self {
            raw_quic_msgs_per_sec: spread(&|r| r.raw_quic.throughput.msgs_per_sec),
            produce_msgs_per_sec: spread(&|r| r.produce.throughput.msgs_per_sec),
            produce_mb_per_sec: spread(&|r| r.produce.throughput.mb_per_sec),
            produce_p50_us: spread(&|r| r.produce.ack_latency.p50_us),
            produce_p99_us: spread(&|r| r.produce.ack_latency.p99_us),
            produce_p999_us: spread(&|r| r.produce.ack_latency.p999_us),
            produce_to_raw_ratio: spread(&|r| r.produce_to_raw_ratio),
            consume_records_per_sec: spread(&|r| r.consume.throughput.msgs_per_sec),
            consume_mb_per_sec: spread(&|r| r.consume.throughput.mb_per_sec),
            extras: extra_spreads(&runs),
            runs,
        }
    }
}

/// Each (row, figure) of the runs' extra rows, in the order of the first
/// run, with its spread.
fn extra_spreads(runs: &[Run]) -> Vec<ExtraSpread> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in &first.extras {
        for f in &row.figures {
            let values: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.extras.iter().filter(|x| x.row == row.row))
                .flat_map(|x| x.figures.iter().filter(|g| g.name == f.name))
                .map(|g| g.value)
                .collect();
            out.push(ExtraSpread {
                row: row.row.clone(),
                figure: f.name.clone(),
                spread: Spread::of(&values),
            });
        }
    }
    out
}

/// "p50 .. p99 .. p99.9 .. max .." of `l`, for text reports.
pub fn latency_line(l: &Latency) -> String {
    format!(
        "p50 {} p99 {} p99.9 {} max {}",
        ms(l.p50_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us)
    )
}

fn ms(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn rate_line(t: &Throughput, unit: &str) -> String {
    format!(
        "{:>10.0} {unit}/s {:>8.1} MB/s  ({} in {:.2} s)",
        t.msgs_per_sec, t.mb_per_sec, t.messages, t.seconds
    )
}

impl RawQuicReport {
    /// Text for people.
    pub fn text(&self) -> String {
        format!(
            "raw-quic  {} B messages ({}): {}\n          ack latency {}\n",
            self.message_bytes,
            self.key_exchange,
            rate_line(&self.throughput, "msgs"),
            latency_line(&self.ack_latency)
        )
    }
}

impl ProduceReport {
    /// Text for people.
    pub fn text(&self) -> String {
        let rate = self
            .rate
            .map_or_else(String::new, |r| format!(", paced at {r}/s"));
        let mut s = format!(
            "produce   {} B records, {} producer(s), window {}, batch {} B, linger {} ms{rate}, topic {} ({}):\n          {}\n          ack latency {}\n",
            self.message_bytes,
            self.producers,
            self.window,
            self.batch_bytes,
            self.linger_ms,
            self.topic,
            self.durability,
            rate_line(&self.throughput, "msgs"),
            latency_line(&self.ack_latency)
        );
        if self.failed > 0 {
            let _ = writeln!(
                s,
                "          {} of {} records FAILED: {}",
                self.failed,
                self.sent,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        s
    }
}

impl ConsumeReport {
    /// Text for people.
    pub fn text(&self) -> String {
        format!(
            "consume   replay of {} from earliest: {}\n          first record after {:.1} ms\n",
            self.topic,
            rate_line(&self.throughput, "recs"),
            self.first_record_ms
        )
    }
}

impl AllReport {
    /// Text for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (i, run) in self.runs.iter().enumerate() {
            let _ = writeln!(s, "run {}:", i + 1);
            s.push_str(&run.raw_quic.text());
            s.push_str(&run.produce.text());
            s.push_str(&run.consume.text());
            for extra in &run.extras {
                s.push_str(&extra.text);
            }
            let _ = writeln!(
                s,
                "          produce / raw-quic = {:.2}\n",
                run.produce_to_raw_ratio
            );
        }
        let _ = writeln!(
            s,
            "summary over {} run(s): median (min .. max)",
            self.runs.len()
        );
        let row = |s: &mut String, name: &str, sp: &Spread, digits: usize| {
            let _ = writeln!(
                s,
                "  {name:<28} {:>12.digits$}  ({:.digits$} .. {:.digits$})",
                sp.median, sp.min, sp.max
            );
        };
        row(&mut s, "raw-quic msgs/s", &self.raw_quic_msgs_per_sec, 0);
        row(&mut s, "produce msgs/s", &self.produce_msgs_per_sec, 0);
        row(&mut s, "produce MB/s", &self.produce_mb_per_sec, 1);
        row(&mut s, "produce / raw-quic", &self.produce_to_raw_ratio, 3);
        row(&mut s, "ack latency p50 (µs)", &self.produce_p50_us, 0);
        row(&mut s, "ack latency p99 (µs)", &self.produce_p99_us, 0);
        row(&mut s, "ack latency p99.9 (µs)", &self.produce_p999_us, 0);
        row(&mut s, "replay records/s", &self.consume_records_per_sec, 0);
        row(&mut s, "replay MB/s", &self.consume_mb_per_sec, 1);
        for e in &self.extras {
            let digits = if e.figure.ends_with("ms") { 2 } else { 0 };
            let _ = writeln!(
                s,
                "  {:<48} {:>12.digits$}  ({:.digits$} .. {:.digits$})",
                format!("{}: {}", e.row, e.figure),
                e.spread.median,
                e.spread.min,
                e.spread.max
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_even_and_empty_lists() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Spread::of(&[]).median, 0.0);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).median, 5.0);
    }

    #[test]
    fn throughput_rates() {
        let t = Throughput::new(300_000, 300_000 * 1024, Duration::from_secs(2));
        assert_eq!(t.msgs_per_sec, 150_000.0);
        assert!((t.mb_per_sec - 153.6).abs() < 1e-9);
        // A zero duration does not divide by zero.
        assert!(
            Throughput::new(1, 1, Duration::ZERO)
                .msgs_per_sec
                .is_finite()
        );
    }

    #[test]
    fn latency_in_microseconds() {
        let mut h = Histogram::new();
        h.record_n(100_000, 99); // 100 µs
        h.record(10_000_000); // 10 ms
        let l = Latency::of(&h);
        assert_eq!(l.samples, 100);
        assert!((100.0..=101.0).contains(&l.p50_us), "{l:?}");
        assert!((10_000.0..=10_100.0).contains(&l.p999_us), "{l:?}");
        assert_eq!(l.max_us, 10_000.0);
        assert_eq!(Latency::of(&Histogram::new()).p50_us, 0.0);
    }
}
