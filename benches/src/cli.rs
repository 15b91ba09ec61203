//! The command line of `strongbox-bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use strongbox_broker::tls::KeyExchange;

const AFTER_HELP: &str = "\
Connection:
  Give a profile (--profile FILE or STRONGBOX_PROFILE, as for the strongbox CLI), or
  --broker, --ca, --cert and --key, or --spawn-dev to start `strongbox-broker dev`
  (the binary next to this one) in a temporary directory and stop it at the end.

Units:
  MB/s counts record values only, in 10^6 bytes. Sizes take KiB, MiB, GiB, kB, MB
  or plain bytes; durations take 5ms, 2s, 1m.

Examples:
  strongbox-bench all --spawn-dev --runs 3
  strongbox-bench all --spawn-dev --quick
  strongbox-bench fanout --spawn-dev --subscribers 1,10,50
  strongbox-bench produce --spawn-dev --rate 100000 --count 1000000
  strongbox-bench raw-quic --size 1KiB --count 1000000
  strongbox-bench handshake --count 1000 --runs 5
  strongbox-bench --profile strongbox-dev/profiles/admin.toml produce --topic demo.bench
  strongbox-bench --profile strongbox-dev/profiles/admin.toml consume --topic demo.bench";

/// `strongbox-bench`: load generator for a Strongbox broker.
#[derive(Debug, Parser)]
#[command(name = "strongbox-bench", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Connection settings.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// The measurements.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish records; report acknowledged msgs/s, MB/s and ack latency.
    Produce(ProduceArgs),
    /// Replay a topic from its earliest offset; report records/s and MB/s.
    Consume(ConsumeArgs),
    /// The transport baseline: a QUIC server and client in this process on
    /// 127.0.0.1 with mutual TLS, one stream, length-prefixed messages
    /// acknowledged in batches. No broker, no storage.
    RawQuic(RawQuicArgs),
    /// Connection set-up cost: full QUIC + TLS 1.3 handshakes with mutual
    /// TLS, one after the other, between a server and a client in this
    /// process on 127.0.0.1 (each followed by one byte each way). No
    /// broker.
    Handshake(HandshakeArgs),
    /// Fan-out: one producer paced at --rate publishes to a fresh topic
    /// while N subscribers (each on its own connection) tail it live, for
    /// each N of --subscribers. Reports each subscriber's records/s and
    /// the publish-to-delivery latency, from a timestamp the producer
    /// writes into the first 8 bytes of each value.
    Fanout(FanoutArgs),
    /// raw-quic, produce (to a fresh topic) and consume (of that topic),
    /// repeated --runs times; then the rows of issue-13 targets (paced ack
    /// latency, large records, many partitions and producers, fan-out),
    /// each also --runs times; reports each run and the median, min and
    /// max. --quick runs everything once with short counts.
    All(AllArgs),
}

/// Where the broker is and who we are.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// Profile file with the broker address and credentials.
    #[arg(long, global = true, env = "STRONGBOX_PROFILE", value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Broker address, HOST:PORT (overrides the profile).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// CA certificate(s) that sign the broker's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This client's certificate chain (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Name expected in the broker's certificate (default: the broker host).
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Start `strongbox-broker dev` on 127.0.0.1 in a temporary directory,
    /// use its admin profile (ignoring any other profile), and stop it (by
    /// PID) at the end.
    #[arg(long, global = true, conflicts_with = "broker")]
    pub spawn_dev: bool,
    /// With --spawn-dev: the parent directory of the broker's temporary
    /// directory (default: the system's temporary directory). Put it on
    /// the disk you want to measure: fsync on tmpfs proves nothing.
    #[arg(long, global = true, value_name = "DIR", requires = "spawn_dev")]
    pub data_dir: Option<PathBuf>,
    /// With --spawn-dev: the strongbox-broker binary (default: next to
    /// this one).
    #[arg(long, global = true, value_name = "FILE", requires = "spawn_dev")]
    pub broker_bin: Option<PathBuf>,
}

/// Durability of a topic the benchmark creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledge after fdatasync (group commit).
    Fsync,
    /// Acknowledge at once; sync every 100 ms.
    Interval,
    /// Acknowledge at once; never sync explicitly.
    None,
}

/// What `produce` sends and how.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to publish to; created when missing (needs `create`).
    #[arg(long, default_value = "demo.bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Durability of the topic when it is created.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// Bytes of each record value.
    #[arg(long, visible_alias = "value-size", default_value = "1KiB", value_parser = parse_size)]
    pub size: usize,
    /// Records to send, over all producers.
    #[arg(long, default_value_t = 1_000_000, conflicts_with = "duration")]
    pub count: u64,
    /// Send for this long instead of a fixed count.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Concurrent producers, each on its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub producers: u32,
    /// Unacknowledged batches per producer (the in-flight window).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// How long a batch that is not full waits for more records (default:
    /// the client's, zero: adaptive batching, a batch goes as soon as the
    /// partition's pipeline has room and grows while it has none).
    #[arg(long, value_parser = parse_duration)]
    pub linger: Option<Duration>,
    /// With adaptive batching: a batch that is not full goes out while
    /// fewer than this many batches of its partition are queued or in
    /// flight (default: the client's, 2).
    #[arg(long, value_name = "BATCHES", value_parser = clap::value_parser!(u32).range(1..))]
    pub partition_pipeline: Option<u32>,
    /// Close a batch at this size.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub batch_bytes: usize,
    /// Producer memory for records not yet acknowledged; `send` waits
    /// when it is full. Ack latency includes that wait. Default: the
    /// client's (8 MiB).
    #[arg(long, value_parser = parse_size)]
    pub buffer_bytes: Option<usize>,
    /// Send at this many records per second over all producers instead of
    /// as fast as the buffer allows; ack latency is then measured from each
    /// record's scheduled time, so falling behind shows as latency.
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
}

/// What `consume` reads.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Topic to replay.
    #[arg(long, default_value = "demo.bench")]
    pub topic: String,
    /// Records to read (default: everything in the topic when it starts).
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes the broker may send ahead of the application, per partition.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub credit_window: usize,
}

/// What `raw-quic` sends.
#[derive(Debug, Clone, Args)]
pub struct RawQuicArgs {
    /// Bytes of each message.
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    pub size: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Bytes handed to the stream per write (messages are packed into
    /// writes of about this size, as the producer packs batches).
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub batch_bytes: usize,
    /// Largest UDP payload both ends accept and probe for with MTU
    /// discovery (1200 to 65527; loopback carries 65527). Default: quinn's
    /// Ethernet-sized 1452, which is what the broker and client use.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(1200..=65527))]
    pub udp_payload: Option<u16>,
    /// TLS key exchange groups of both ends, as the broker's
    /// `tls.key_exchange`: prefer-hybrid (X25519MLKEM768), require-hybrid,
    /// or classical (X25519).
    #[arg(long, value_name = "POLICY", default_value = "prefer-hybrid", value_parser = parse_key_exchange)]
    pub key_exchange: KeyExchange,
}

/// What `handshake` measures.
#[derive(Debug, Clone, Args)]
pub struct HandshakeArgs {
    /// Handshakes per run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Runs; the summary gives the median, min and max of each figure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// TLS key exchange groups of both ends, as the broker's
    /// `tls.key_exchange`: prefer-hybrid (X25519MLKEM768), require-hybrid,
    /// or classical (X25519).
    #[arg(long, value_name = "POLICY", default_value = "prefer-hybrid", value_parser = parse_key_exchange)]
    pub key_exchange: KeyExchange,
}

/// What `fanout` measures.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Prefix of the fresh topic made for each subscriber count.
    #[arg(long, default_value = "demo.fanout")]
    pub topic: String,
    /// Subscriber counts to measure, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers: Vec<u32>,
    /// Records per second the producer publishes.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Bytes of each record value (at least 8, for the timestamp).
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    pub size: usize,
    /// How long the producer publishes, per subscriber count.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Durability of the topics.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// The producer's linger (default: the client's, zero: adaptive
    /// batching).
    #[arg(long, value_parser = parse_duration)]
    pub linger: Option<Duration>,
}

/// What `all` runs.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// The produce settings; --topic is the prefix of one fresh topic per
    /// run.
    #[command(flatten)]
    pub produce: ProduceArgs,
    /// Consumer credit window, per partition.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub credit_window: usize,
    /// Times to repeat raw-quic, produce and consume (and the extra rows).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Everything once, with short counts (200,000 records for the main
    /// row, 2 s per paced row, 1 s per fan-out row; under two minutes on
    /// two cores): for comparisons before and after a change. Overrides
    /// --runs and --count.
    #[arg(long)]
    pub quick: bool,
    /// Only raw-quic, produce and consume, without the extra rows.
    #[arg(long, conflicts_with = "quick")]
    pub no_extras: bool,
}

/// Parses a byte size: `1024`, `1KiB`, `64KiB`, `4MiB`, `1GiB`, `10kB`,
/// `1MB`. Zero is refused.
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size (use 1024, 64KiB, 4MiB, 1GiB, 10kB or 1MB)");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = n
        .checked_mul(multiplier)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("a size must be at least one byte".into());
    }
    Ok(bytes)
}

/// Parses a key exchange policy: `prefer-hybrid`, `require-hybrid`,
/// `classical`.
///
/// # Errors
///
/// A message naming the accepted values.
pub fn parse_key_exchange(text: &str) -> Result<KeyExchange, String> {
    KeyExchange::ALL
        .into_iter()
        .find(|p| p.name() == text.trim())
        .ok_or_else(|| {
            format!(
                "{text:?} is not a key exchange policy (prefer-hybrid, require-hybrid, classical)"
            )
        })
}

/// Parses a duration: `0`, `5ms`, `2s`, `1m`.
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration (use 0, 5ms, 2s or 1m): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strongbox-bench").chain(args.iter().copied()))
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("64kib"), Ok(65_536));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10kB"), Ok(10_000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size(" 2 MiB "), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn produce_defaults_match_the_documented_benchmark() {
        let cli = parse(&["--profile", "p.toml", "produce"]).expect("parses");
        let Command::Produce(a) = cli.command else {
            panic!("not produce");
        };
        assert_eq!(a.size, 1024);
        assert_eq!(a.count, 1_000_000);
        assert_eq!(a.duration, None);
        assert_eq!(a.producers, 1);
        assert_eq!(a.window, 256);
        assert_eq!(a.linger, None, "the client's default");
        assert_eq!(a.durability, DurabilityArg::Fsync);
        assert_eq!(a.partitions, 1);
        assert_eq!(a.topic, "demo.bench");
        assert_eq!(a.rate, None);
        assert_eq!(a.buffer_bytes, None, "the client's default");
        assert_eq!(a.partition_pipeline, None, "the client's default");
        assert_eq!(cli.connect.profile, Some(PathBuf::from("p.toml")));
        assert!(!cli.json);
    }

    #[test]
    fn produce_options_and_global_flags_in_any_position() {
        let cli = parse(&[
            "produce",
            "--size",
            "4KiB",
            "--count",
            "5000",
            "--producers",
            "4",
            "--window",
            "32",
            "--linger",
            "0",
            "--batch-bytes",
            "64KiB",
            "--topic",
            "demo.x",
            "--partitions",
            "3",
            "--durability",
            "none",
            "--rate",
            "100000",
            "--json",
            "--broker",
            "127.0.0.1:7443",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
        ])
        .expect("parses");
        assert!(cli.json);
        assert_eq!(cli.connect.broker.as_deref(), Some("127.0.0.1:7443"));
        assert_eq!(cli.connect.key, Some(PathBuf::from("c.key")));
        let Command::Produce(a) = cli.command else {
            panic!("not produce");
        };
        assert_eq!(
            (a.size, a.count, a.producers, a.window, a.batch_bytes),
            (4096, 5000, 4, 32, 65_536)
        );
        assert_eq!(a.linger, Some(Duration::ZERO));
        assert_eq!(a.topic, "demo.x");
        assert_eq!(a.partitions, 3);
        assert_eq!(a.durability, DurabilityArg::None);
        assert_eq!(a.rate, Some(100_000));
    }

    #[test]
    fn duration_replaces_count() {
        let cli = parse(&["produce", "--duration", "10s"]).expect("parses");
        let Command::Produce(a) = cli.command else {
            panic!("not produce");
        };
        assert_eq!(a.duration, Some(Duration::from_secs(10)));
        assert!(parse(&["produce", "--duration", "10s", "--count", "5"]).is_err());
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        assert!(parse(&["produce", "--producers", "0"]).is_err());
        assert!(parse(&["produce", "--window", "0"]).is_err());
        assert!(parse(&["produce", "--size", "0"]).is_err());
        assert!(parse(&["produce", "--durability", "sometimes"]).is_err());
        assert!(parse(&["produce", "--rate", "0"]).is_err());
        assert!(parse(&["raw-quic", "--udp-payload", "1000"]).is_err());
        assert!(parse(&["all", "--runs", "0"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&[]).is_err(), "a command is required");
    }

    #[test]
    fn spawn_dev_excludes_a_broker_and_data_dir_needs_it() {
        let cli = parse(&["all", "--spawn-dev", "--data-dir", "/var/tmp"]).expect("parses");
        assert!(cli.connect.spawn_dev);
        assert_eq!(cli.connect.data_dir, Some(PathBuf::from("/var/tmp")));
        assert!(parse(&["all", "--spawn-dev", "--broker", "127.0.0.1:1"]).is_err());
        assert!(parse(&["all", "--data-dir", "/var/tmp"]).is_err());
    }

    #[test]
    fn consume_raw_and_all() {
        let cli = parse(&["consume", "--topic", "demo.y", "--count", "10"]).expect("parses");
        let Command::Consume(c) = cli.command else {
            panic!("not consume");
        };
        assert_eq!((c.topic.as_str(), c.count), ("demo.y", Some(10)));
        assert_eq!(c.credit_window, 8 << 20);

        let cli = parse(&["raw-quic", "--count", "100", "--size", "512"]).expect("parses");
        let Command::RawQuic(r) = cli.command else {
            panic!("not raw-quic");
        };
        assert_eq!((r.count, r.size, r.batch_bytes), (100, 512, 256 << 10));

        let cli = parse(&["all", "--runs", "5", "--count", "1000"]).expect("parses");
        let Command::All(a) = cli.command else {
            panic!("not all");
        };
        assert_eq!((a.runs, a.produce.count), (5, 1000));

        assert!(!a.quick);
        let cli = parse(&["all", "--quick"]).expect("parses");
        let Command::All(a) = cli.command else {
            panic!("not all");
        };
        assert!(a.quick);

        let cli = parse(&["fanout"]).expect("parses");
        let Command::Fanout(f) = cli.command else {
            panic!("not fanout");
        };
        assert_eq!(f.subscribers, vec![1, 10, 50]);
        assert_eq!(
            (f.rate, f.size, f.duration),
            (50_000, 1024, Duration::from_secs(10))
        );
        let cli = parse(&["fanout", "--subscribers", "2,5"]).expect("parses");
        let Command::Fanout(f) = cli.command else {
            panic!("not fanout");
        };
        assert_eq!(f.subscribers, vec![2, 5]);
        assert!(parse(&["fanout", "--subscribers", "0"]).is_err());

        let cli = parse(&["handshake", "--count", "50"]).expect("parses");
        let Command::Handshake(h) = cli.command else {
            panic!("not handshake");
        };
        assert_eq!((h.count, h.runs), (50, 5));
        assert_eq!(h.key_exchange, KeyExchange::PreferHybrid);
        let cli = parse(&["raw-quic", "--key-exchange", "classical"]).expect("parses");
        let Command::RawQuic(r) = cli.command else {
            panic!("not raw-quic");
        };
        assert_eq!(r.key_exchange, KeyExchange::Classical);
        assert!(parse(&["handshake", "--key-exchange", "pq"]).is_err());
        assert!(parse(&["handshake", "--count", "0"]).is_err());
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
