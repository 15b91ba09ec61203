//! Strongbox benchmarks and load generator.
//!
//! - `benches/`: criterion micro-benchmarks (the storage log's append path).
//! - `strongbox-bench` (this library and `src/bin/strongbox-bench.rs`): the
//!   end-to-end load generator. `produce` publishes through the client
//!   crate and reports acknowledged msgs/s, MB/s and ack latency
//!   percentiles; `consume` replays a topic from its earliest offset;
//!   `raw-quic` measures one QUIC stream with mutual TLS and no broker, the
//!   ceiling the others are compared with; `handshake` measures full QUIC +
//!   TLS handshakes (connection set-up cost) the same way; `all` runs the three in turn,
//!   several times, optionally against a `strongbox-broker dev` it starts
//!   and stops itself (`--spawn-dev`).
//!
//! docs/BENCHMARKS.md records the figures and the commands that produced
//! them.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use strongbox_benches::raw_quic::{RawQuicOptions, run};
//!
//! let report = run(RawQuicOptions { size: 1024, count: 100_000, batch_bytes: 256 * 1024, udp_payload: None, key_exchange: Default::default() }).await?;
//! println!("{:.0} msgs/s", report.throughput.msgs_per_sec);
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod connect;
pub mod consume;
pub mod fanout;
pub mod handshake;
pub mod histogram;
pub mod produce;
pub mod raw_quic;
pub mod report;
pub mod rows;
pub mod spawn;
