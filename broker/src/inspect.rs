//! `strongbox-broker inspect`: the records of one partition of a stopped
//! broker, as the broker stores them.
//!
//! It decrypts the at-rest layer (segment data keys unwrapped through the
//! configured key provider) and prints each record's offset, timestamp,
//! key, headers and value: text when the bytes are UTF-8, hex otherwise.
//! What it shows is exactly what the broker holds in the clear once the
//! disk layer is peeled off, so for a topic written with end-to-end
//! encryption it shows the `strongbox-e2e` header and ciphertext values,
//! never the plaintext.
//!
//! It is read-only: the log is read with
//! [`scan_dir`], which changes nothing
//! (opening the log would recover it), and data keys are unwrapped after
//! the same key registry check the broker makes, without caching them or
//! writing to the registry. It refuses to run while a broker holds the
//! metadata store (and a broker cannot start while it runs). Its unwraps
//! happen outside any broker, so they are not in the audit trail: the
//! provider's own log (the HSM's) is where an offline read shows.
//!
//! ```text
//! strongbox-broker inspect --data-dir strongbox-dev/data --topic demo.orders --from 100 --count 10
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use strongbox_protocol::batch::RecordBatch;
use strongbox_storage::log::{LogError, scan_dir};
use strongbox_storage::meta::{MetaError, MetaStore};

use strongbox_storage::data_dir::partition_dir;

use crate::services::partitions::topics::log_config;
use crate::verify::keys::ReadOnlyKeys;
use crate::verify::{Setup, VerifyArgs, VerifyError};

/// The arguments of `strongbox-broker inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The broker's data directory (its `broker.data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The broker configuration whose `[keys]` section names the key
    /// provider. Default: DIR/../broker.toml (the layout `strongbox-broker
    /// dev` creates), used only when its `broker.data_dir` is DIR.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The topic.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// The partition.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub partition: u32,
    /// The first offset to show.
    #[arg(long, value_name = "OFFSET", default_value_t = 0)]
    pub from: u64,
    /// Show at most this many records.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per record instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why an inspection failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The data directory or the configuration is wrong.
    #[error(transparent)]
    Setup(Box<VerifyError>),
    /// A broker holds the metadata store.
    #[error(
        "a broker is running on {} (it holds {} locked); stop it first",
        data_dir.display(), meta.display()
    )]
    BrokerRunning {
        /// The data directory.
        data_dir: PathBuf,
        /// Its metadata store.
        meta: PathBuf,
    },
    /// The metadata store cannot be opened or read.
    #[error("{0}")]
    Meta(#[from] MetaError),
    /// No such topic in the metadata store.
    #[error("topic {topic} does not exist in {}", data_dir.display())]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The topic has fewer partitions.
    #[error("topic {topic} has {partitions} partition(s); there is no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// How many it has.
        partitions: u32,
        /// The one asked for.
        partition: u32,
    },
    /// The key provider cannot be opened.
    #[error("cannot open the key provider: {0}")]
    Provider(String),
    /// The log is damaged or a key cannot be unwrapped; the records before
    /// were shown.
    #[error("reading {topic}/{partition} stopped (the records before were shown): {source}")]
    Log {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What went wrong.
        source: Box<LogError>,
    },
    /// A batch that decrypted does not decode.
    #[error("{0}")]
    Batch(String),
    /// Standard output could not be written.
    #[error("cannot write to standard output: {0}")]
    Output(std::io::Error),
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// Headers in the order written.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The value.
    pub value: Vec<u8>,
}

/// How an inspection ended (the records went to its visitor).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The offset after the last record read.
    pub next_offset: u64,
    /// A torn tail at the end of the newest segment, if any.
    pub torn_tail: Option<String>,
}

/// Runs `strongbox-broker inspect`: records on stdout, a summary on
/// stderr.
///
/// # Errors
///
/// The data directory or configuration is wrong, a broker holds the data
/// directory, the topic or partition does not exist, the key provider
/// cannot be opened, or the log is damaged (what was read before is
/// printed first).
pub fn run_cli(args: &InspectArgs) -> Result<(), InspectError> {
    let mut out = std::io::stdout().lock();
    let mut shown = 0u64;
    let mut failed = None;
    let inspection = inspect(args, &mut |record| {
        let line = if args.json {
            record_json(&args.topic, args.partition, record).to_string()
        } else {
            record_text(&args.topic, args.partition, record)
        };
        if let Err(e) = writeln!(out, "{line}") {
            // A closed pipe (`| head`) ends the listing quietly.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                failed = Some(e);
            }
            return false;
        }
        shown += 1;
        true
    })?;
    if let Some(e) = failed {
        return Err(InspectError::Output(e));
    }
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{shown} record(s) of {}/{}; the log continues at offset {}",
        args.topic, args.partition, inspection.next_offset
    );
    if let Some(tail) = &inspection.torn_tail {
        let _ = writeln!(
            err,
            "warning: the newest segment ends in a torn tail the broker's next start cuts off: {tail}"
        );
    }
    Ok(())
}

/// Reads the records `args` selects and hands each to `show` (which
/// returns false to stop).
///
/// # Errors
///
/// As [`run_cli`].
pub fn inspect(
    args: &InspectArgs,
    show: &mut dyn FnMut(&StoredRecord) -> bool,
) -> Result<Inspection, InspectError> {
    let setup = Setup::resolve(&VerifyArgs {
        data_dir: Some(args.data_dir.clone()),
        config: args.config.clone(),
        json: false,
        checkpoint: None,
        checkpoint_key: None,
    })
    .map_err(|e| InspectError::Setup(Box::new(e)))?;
    let meta_path = setup.data_dir.join("meta.redb");
    let meta = MetaStore::open_existing(&meta_path).map_err(|e| match e {
        MetaError::Open {
            source: redb::DatabaseError::DatabaseAlreadyOpen,
            ..
        } => InspectError::BrokerRunning {
            data_dir: setup.data_dir.clone(),
            meta: meta_path.clone(),
        },
        other => InspectError::Meta(other),
    })?;
    let Some(entry) = meta.read(|r| r.topic(&args.topic))? else {
        return Err(InspectError::UnknownTopic {
            topic: args.topic.clone(),
            data_dir: setup.data_dir.clone(),
        });
    };
    if args.partition >= entry.config.partitions {
        return Err(InspectError::UnknownPartition {
            topic: args.topic.clone(),
            partitions: entry.config.partitions,
            partition: args.partition,
        });
    }
    let states = meta
        .read(|r| r.kek_versions(None))?
        .into_iter()
        .map(|v| (v.id, v.state))
        .collect();
    let provider = crate::services::open_provider(&setup.config)
        .map_err(|e| InspectError::Provider(e.to_string()))?;
    let keys = Arc::new(ReadOnlyKeys::new("inspect", provider, states));
    let dir = partition_dir(&setup.data_dir, &entry.topic_id, args.partition);
    let config = log_config(&entry, args.partition);
    let from = args.from;
    let mut left = args.count;
    let mut problem = None;
    let scanned = if dir.is_dir() {
        Some(scan_dir(&dir, &config, keys, from, &mut |base, batch| {
            visit_batch(base, &batch, from, &mut left, &mut problem, show)
        }))
    } else {
        None
    };
    if let Some(p) = problem {
        return Err(InspectError::Batch(p));
    }
    let scanned = match scanned {
        None => {
            return Ok(Inspection {
                next_offset: 0,
                torn_tail: None,
            });
        }
        Some(s) => s.map_err(|source| InspectError::Log {
            topic: args.topic.clone(),
            partition: args.partition,
            source: Box::new(source),
        })?,
    };
    Ok(Inspection {
        next_offset: scanned.next_offset,
        torn_tail: scanned.torn_tail,
    })
}

/// Hands the records of one batch at or after `from` to `show`; false to
/// stop the scan.
fn visit_batch(
    base: u64,
    batch: &RecordBatch,
    from: u64,
    left: &mut Option<u64>,
    problem: &mut Option<String>,
    show: &mut dyn FnMut(&StoredRecord) -> bool,
) -> bool {
    let mut seen = 0u32;
    for record in batch.records() {
        seen = seen.saturating_add(1);
        let offset = base.saturating_add(u64::from(record.index));
        if offset < from {
            continue;
        }
        if *left == Some(0) {
            return false;
        }
        let stored = StoredRecord {
            offset,
            timestamp: record.timestamp,
            key: record.key.as_deref().map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|(n, v)| (n, v.to_vec()))
                .collect(),
            value: record.value.to_vec(),
        };
        if !show(&stored) {
            return false;
        }
        if let Some(n) = left.as_mut() {
            *n = n.saturating_sub(1);
        }
    }
    if seen != batch.record_count() {
        *problem = Some(format!(
            "the batch at offset {base} holds {} records but only {seen} decode",
            batch.record_count()
        ));
        return false;
    }
    *left != Some(0)
}

/// Bytes for people: UTF-8 text with control characters, quotes and
/// backslashes escaped, in quotes; anything else as `hex:` and its digits.
pub fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("{:?}", s),
        Err(_) => format!("hex:{}", hex::encode(bytes)),
    }
}

/// One record on one line:
/// `topic/partition@offset time key=.. header=.. value=..`.
pub fn record_text(topic: &str, partition: u32, r: &StoredRecord) -> String {
    let mut line = format!(
        "{topic}/{partition}@{} {} key={}",
        r.offset,
        time_text(r.timestamp),
        r.key.as_deref().map_or_else(|| "-".to_owned(), bytes_text)
    );
    for (name, value) in &r.headers {
        line.push_str(&format!(
            " header:{}={}",
            bytes_text(name.as_bytes()),
            bytes_text(value)
        ));
    }
    line.push_str(" value=");
    line.push_str(&bytes_text(&r.value));
    line
}

fn put_bytes(o: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => o.insert(name.to_owned(), json!(s)),
        Err(_) => o.insert(format!("{name}_hex"), json!(hex::encode(bytes))),
    };
}

/// One record as a JSON object: `key`, header `value` and `value` as text
/// when UTF-8, else as `key_hex`, `value_hex`.
pub fn record_json(topic: &str, partition: u32, r: &StoredRecord) -> Value {
    let mut o = Map::new();
    o.insert("topic".into(), json!(topic));
    o.insert("partition".into(), json!(partition));
    o.insert("offset".into(), json!(r.offset));
    o.insert("timestamp".into(), json!(r.timestamp));
    o.insert("time".into(), json!(time_text(r.timestamp)));
    match &r.key {
        Some(k) => put_bytes(&mut o, "key", k),
        None => {
            o.insert("key".into(), Value::Null);
        }
    }
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(n, v)| {
            let mut h = Map::new();
            h.insert("name".into(), json!(n));
            put_bytes(&mut h, "value", v);
            Value::Object(h)
        })
        .collect();
    o.insert("headers".into(), Value::Array(headers));
    put_bytes(&mut o, "value", &r.value);
    Value::Object(o)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
fn time_text(ms: i64) -> String {
    strongbox_protocol::rfc3339::format_ms(ms).unwrap_or_else(|| format!("{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StoredRecord {
        StoredRecord {
            offset: 17,
            timestamp: 1_769_850_000_000,
            key: Some(b"customer-7".to_vec()),
            headers: vec![("strongbox-e2e".into(), vec![0x01, 0xff])],
            value: vec![0x9f, 0x00, 0x3c],
        }
    }

    #[test]
    fn text_shows_utf8_as_text_and_the_rest_as_hex() {
        assert_eq!(
            record_text("demo.x", 0, &record()),
            "demo.x/0@17 2026-01-31T09:00:00.000Z key=\"customer-7\" \
             header:\"strongbox-e2e\"=hex:01ff value=hex:9f003c"
        );
        assert_eq!(bytes_text(b"a\nb\"c"), "\"a\\nb\\\"c\"");
    }

    #[test]
    fn json_names_hex_fields() {
        let v = record_json("demo.x", 0, &record());
        assert_eq!(v["key"], "customer-7");
        assert_eq!(v["value_hex"], "9f003c");
        assert_eq!(v["headers"][0]["value_hex"], "01ff");
        assert!(v.get("value").is_none());
    }
}
