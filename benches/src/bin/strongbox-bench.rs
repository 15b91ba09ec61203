//! `strongbox-bench`: the load generator. See `strongbox-bench --help` and
//! docs/BENCHMARKS.md.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use strongbox_benches::cli::{AllArgs, Cli, Command, ConnectArgs};
use strongbox_benches::connect::client_config;
use strongbox_benches::fanout::FanoutOptions;
use strongbox_benches::handshake::HandshakeOptions;
use strongbox_benches::raw_quic::RawQuicOptions;
use strongbox_benches::report::{AllReport, Run};
use strongbox_benches::rows::{self, Sizes};
use strongbox_benches::spawn::DevBroker;
use strongbox_benches::{consume, fanout, handshake, produce, raw_quic};
use strongbox_client::ClientConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strongbox-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("strongbox-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; false when records failed.
async fn run(cli: Cli) -> Result<bool> {
    let json = cli.json;
    if let Command::RawQuic(a) = &cli.command {
        let report = raw_quic::run(RawQuicOptions {
            size: a.size,
            count: a.count,
            batch_bytes: a.batch_bytes,
            udp_payload: a.udp_payload,
            key_exchange: a.key_exchange,
        })
        .await?;
        print(json, &report, || report.text())?;
        return Ok(report.acked == report.sent);
    }
    if let Command::Handshake(a) = &cli.command {
        let report = handshake::run(HandshakeOptions {
            count: a.count,
            runs: a.runs,
            key_exchange: a.key_exchange,
        })
        .await?;
        print(json, &report, || report.text())?;
        return Ok(true);
    }
    let mut broker = spawn(&cli.connect)?;
    let profile = broker.as_ref().map(DevBroker::admin_profile);
    let config = client_config(&cli.connect, profile.as_deref())?;
    let outcome = measure(&cli.command, &config, json).await;
    if let Some(b) = broker.as_mut() {
        b.stop().context("stopping the broker")?;
    }
    outcome
}

async fn measure(command: &Command, config: &ClientConfig, json: bool) -> Result<bool> {
    match command {
        Command::Produce(a) => {
            let report = produce::run(config, a).await?;
            print(json, &report, || report.text())?;
            Ok(report.failed == 0)
        }
        Command::Consume(a) => {
            let report = consume::run(config, &a.topic, a.count, a.credit_window).await?;
            print(json, &report, || report.text())?;
            Ok(true)
        }
        Command::Fanout(a) => {
            let stamp = strongbox_protocol::clock::now_secs();
            let mut ok = true;
            let mut reports = Vec::new();
            for &subscribers in &a.subscribers {
                let report = fanout::run(
                    config,
                    &FanoutOptions {
                        topic: format!("{}-{stamp}-{subscribers}", a.topic),
                        subscribers,
                        rate: a.rate,
                        size: a.size,
                        duration: a.duration,
                        durability: a.durability,
                        linger: a.linger,
                    },
                )
                .await?;
                ok &= report.subscribers_complete == report.subscribers;
                if !json {
                    print!("{}", report.text());
                }
                reports.push(report);
            }
            if json {
                println!("{}", serde_json::to_string(&reports)?);
            }
            Ok(ok)
        }
        Command::All(a) => {
            let report = all(config, a, json).await?;
            print(json, &report, || report.text())?;
            Ok(report.runs.iter().all(|r| r.produce.failed == 0))
        }
        Command::RawQuic(_) | Command::Handshake(_) => {
            unreachable!("handled before connecting")
        }
    }
}

fn spawn(args: &ConnectArgs) -> Result<Option<DevBroker>> {
    if !args.spawn_dev {
        return Ok(None);
    }
    let binary = match &args.broker_bin {
        Some(b) => b.clone(),
        None => DevBroker::default_binary()?,
    };
    let broker = DevBroker::start(&binary, args.data_dir.as_deref())?;
    eprintln!(
        "started strongbox-broker dev (pid {}) on {}",
        broker.pid().unwrap_or_default(),
        broker.addr
    );
    Ok(Some(broker))
}

/// Records of the main produce row with `--quick`.
const QUICK_COUNT: u64 = 200_000;

/// raw-quic, produce to a fresh topic, and replay of that topic, then the
/// extra rows, `runs` times (once with `--quick`).
async fn all(config: &ClientConfig, args: &AllArgs, json: bool) -> Result<AllReport> {
    let stamp = strongbox_protocol::clock::now_secs();
    let mut runs = Vec::new();
    let mut quick_produce = args.produce.clone();
    let (total, sizes) = if args.quick {
        quick_produce.count = QUICK_COUNT;
        (1, Sizes::QUICK)
    } else {
        (args.runs, Sizes::FULL)
    };
    for run in 1..=total {
        let p = &quick_produce;
        let raw = raw_quic::run(RawQuicOptions {
            size: p.size,
            count: p.count,
            batch_bytes: p.batch_bytes,
            udp_payload: None,
            key_exchange: strongbox_broker::tls::KeyExchange::default(),
        })
        .await
        .context("raw-quic")?;
        let mut produce_args = p.clone();
        produce_args.topic = format!("{}-{stamp}-{run}", p.topic);
        let produced = produce::run(config, &produce_args)
            .await
            .context("produce")?;
        let consumed = consume::run(
            config,
            &produce_args.topic,
            Some(produced.throughput.messages),
            args.credit_window,
        )
        .await
        .context("consume")?;
        let ratio = produced.throughput.msgs_per_sec / raw.throughput.msgs_per_sec.max(1e-9);
        let extras = if args.no_extras {
            Vec::new()
        } else {
            rows::run(config, p, &format!("{}-{stamp}-{run}", p.topic), sizes)
                .await
                .context("extra rows")?
        };
        if !json {
            eprintln!(
                "run {run}/{}: raw-quic {:.0} msgs/s, produce {:.0} msgs/s ({ratio:.2}), replay {:.0} records/s",
                total,
                raw.throughput.msgs_per_sec,
                produced.throughput.msgs_per_sec,
                consumed.throughput.msgs_per_sec
            );
        }
        runs.push(Run {
            raw_quic: raw,
            produce: produced,
            consume: consumed,
            produce_to_raw_ratio: ratio,
            extras,
        });
    }
    Ok(AllReport::new(runs))
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}
