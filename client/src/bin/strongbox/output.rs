//! What the CLI prints: aligned tables for people, JSON for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use strongbox_client::protocol::model::{AclEffect, AclRule, Durability, TopicInfo};
use strongbox_client::protocol::rfc3339;
use strongbox_client::{ConsumedRecord, RecordMetadata, WhoAmI};

/// A table with a header row and columns padded to their widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, each line ending in a newline; the last column is not
    /// padded.
    pub(crate) fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines, keys padded.
pub(crate) fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// Milliseconds since the Unix epoch as `2026-01-31T09:00:00.000Z`.
pub(crate) fn time_ms(ms: i64) -> String {
    rfc3339::format_ms(ms).unwrap_or_else(|| format!("{ms}ms"))
}

/// Bytes as text: UTF-8 as is, with control characters and invalid bytes
/// escaped so a record cannot garble the terminal.
pub(crate) fn escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Adds `name` (UTF-8 text) or `name_hex` (anything else) to a JSON object.
fn put_bytes(object: &mut serde_json::Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    match bytes {
        None => {
            object.insert(name.to_owned(), Value::Null);
        }
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => {
                object.insert(name.to_owned(), Value::String(s.to_owned()));
            }
            Err(_) => {
                object.insert(format!("{name}_hex"), Value::String(hex::encode(b)));
            }
        },
    }
}

/// One consumed record on one line, for people:
/// `topic[partition]@offset time key {headers} value`.
pub(crate) fn record_line(r: &ConsumedRecord) -> String {
    let mut line = format!(
        "{}[{}]@{} {} {}",
        r.topic,
        r.partition,
        r.offset,
        time_ms(r.timestamp),
        r.key.as_deref().map_or_else(|| "-".to_owned(), escaped)
    );
    if !r.headers.is_empty() {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(n, v)| format!("{}={}", escaped(n.as_bytes()), escaped(v)))
            .collect();
        let _ = write!(line, " {{{}}}", headers.join(","));
    }
    line.push(' ');
    line.push_str(&escaped(&r.value));
    line
}

/// One consumed record as a JSON object.
pub(crate) fn record_json(r: &ConsumedRecord) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("topic".into(), json!(&*r.topic));
    o.insert("partition".into(), json!(r.partition));
    o.insert("offset".into(), json!(r.offset));
    o.insert("timestamp".into(), json!(r.timestamp));
    o.insert("time".into(), json!(time_ms(r.timestamp)));
    put_bytes(&mut o, "key", r.key.as_deref());
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(n, v)| {
            let mut h = serde_json::Map::new();
            h.insert("name".into(), json!(n));
            put_bytes(&mut h, "value", Some(v));
            Value::Object(h)
        })
        .collect();
    o.insert("headers".into(), Value::Array(headers));
    put_bytes(&mut o, "value", Some(&r.value));
    Value::Object(o)
}

/// Where a published record went, for people.
pub(crate) fn published_line(m: &RecordMetadata) -> String {
    format!("{}[{}]@{}", m.topic, m.partition, m.offset)
}

/// Where a published record went, as JSON.
pub(crate) fn published_json(m: &RecordMetadata) -> Value {
    json!({"topic": &*m.topic, "partition": m.partition, "offset": m.offset})
}

/// `key_exchange` is the TLS key exchange group of the connection the
/// answer came on, as this client negotiated it.
pub(crate) fn whoami_text(w: &WhoAmI, key_exchange: Option<&str>) -> String {
    key_values(&[
        ("principal", w.principal.clone()),
        ("broker", w.broker_id.clone()),
        (
            "superuser",
            if w.superuser { "yes" } else { "no" }.to_owned(),
        ),
        ("key exchange", key_exchange.unwrap_or("unknown").to_owned()),
    ])
}

pub(crate) fn whoami_json(w: &WhoAmI, key_exchange: Option<&str>) -> Value {
    json!({
        "principal": w.principal,
        "broker_id": w.broker_id,
        "superuser": w.superuser,
        "key_exchange": key_exchange,
    })
}

fn durability_text(d: Durability) -> String {
    match d {
        Durability::Fsync => "fsync".into(),
        Durability::Interval { interval_ms } => format!("interval:{interval_ms}"),
        Durability::None => "none".into(),
    }
}

fn retention_text(t: &TopicInfo) -> String {
    let age = t
        .config
        .retention_ms
        .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string());
    let size = t.config.retention_bytes.map(|b| format!("{b} bytes"));
    match (age, size) {
        (None, None) => "forever".into(),
        (Some(a), None) => a,
        (None, Some(s)) => s,
        (Some(a), Some(s)) => format!("{a} or {s}"),
    }
}

pub(crate) fn topics_table(topics: &[TopicInfo]) -> String {
    let mut table = Table::new(&["NAME", "PARTITIONS", "DURABILITY", "RETENTION", "CREATED"]);
    for t in topics {
        table.row(vec![
            t.name.clone(),
            t.config.partitions.to_string(),
            durability_text(t.config.durability),
            retention_text(t),
            time_ms(t.created_at),
        ]);
    }
    table.render()
}

pub(crate) fn topic_text(t: &TopicInfo) -> String {
    let mut out = key_values(&[
        ("name", t.name.clone()),
        ("id", hex::encode(t.topic_id)),
        ("created", time_ms(t.created_at)),
        ("partitions", t.config.partitions.to_string()),
        ("durability", durability_text(t.config.durability)),
        ("retention", retention_text(t)),
        (
            "dedicated kek",
            if t.config.dedicated_kek { "yes" } else { "no" }.to_owned(),
        ),
    ]);
    if !t.partitions.is_empty() {
        out.push('\n');
        let mut table = Table::new(&["PARTITION", "START", "END", "SEGMENTS", "BYTES", "STATUS"]);
        for p in &t.partitions {
            table.row(vec![
                p.partition.to_string(),
                p.log_start_offset.to_string(),
                p.high_watermark.to_string(),
                p.segments.to_string(),
                p.size_bytes.to_string(),
                // The broker's reason starts with the state ("read-only:
                // ...", "fenced (storage_full): ...").
                p.error.clone().unwrap_or_else(|| p.state.name().to_owned()),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

pub(crate) fn topic_json(t: &TopicInfo) -> Value {
    let durability = match t.config.durability {
        Durability::Fsync => json!({"mode": "fsync"}),
        Durability::Interval { interval_ms } => {
            json!({"mode": "interval", "interval_ms": interval_ms})
        }
        Durability::None => json!({"mode": "none"}),
    };
    let partitions: Vec<Value> = t
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
                "segments": p.segments,
                "size_bytes": p.size_bytes,
                "state": p.state.name(),
                "error": p.error,
            })
        })
        .collect();
    json!({
        "name": t.name,
        "topic_id": hex::encode(t.topic_id),
        "created_at": t.created_at,
        "partitions": t.config.partitions,
        "durability": durability,
        "retention_ms": t.config.retention_ms,
        "retention_bytes": t.config.retention_bytes,
        "segment_bytes": t.config.segment_bytes,
        "segment_ms": t.config.segment_ms,
        "dedicated_kek": t.config.dedicated_kek,
        "partition_state": partitions,
    })
}

fn effect_text(e: AclEffect) -> &'static str {
    match e {
        AclEffect::Allow => "allow",
        AclEffect::Deny => "deny",
    }
}

pub(crate) fn acl_table(rules: &[AclRule]) -> String {
    let mut table = Table::new(&["PRINCIPAL", "TOPIC", "OPERATIONS", "EFFECT", "EXPIRES"]);
    for r in rules {
        table.row(vec![
            r.principal.clone(),
            r.topic.clone(),
            r.operations.to_string(),
            effect_text(r.effect).to_owned(),
            r.expires_at.map_or_else(|| "never".into(), time_ms),
        ]);
    }
    table.render()
}

pub(crate) fn acl_json(r: &AclRule) -> Value {
    json!({
        "principal": r.principal,
        "topic": r.topic,
        "operations": r.operations.names(),
        "effect": effect_text(r.effect),
        "expires_at": r.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use strongbox_client::protocol::model::{
        Operations, PartitionInfo, PartitionState, TopicConfig,
    };

    fn topic() -> TopicInfo {
        TopicInfo {
            name: "demo.greetings".into(),
            topic_id: [0xab; 16],
            created_at: 1_769_850_000_000,
            config: TopicConfig {
                partitions: 2,
                durability: Durability::Interval { interval_ms: 100 },
                retention_ms: Some(7 * 86_400_000),
                retention_bytes: None,
                segment_bytes: None,
                segment_ms: None,
                dedicated_kek: true,
            },
            partitions: vec![
                PartitionInfo {
                    partition: 0,
                    log_start_offset: 0,
                    high_watermark: 1234,
                    segments: 2,
                    size_bytes: 56_789,
                    error: None,
                    state: PartitionState::Ok,
                },
                PartitionInfo {
                    partition: 1,
                    log_start_offset: 10,
                    high_watermark: 11,
                    segments: 1,
                    size_bytes: 99,
                    error: Some("key envelope missing".into()),
                    state: PartitionState::Unavailable,
                },
            ],
        }
    }

    #[test]
    fn table_columns_align() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        t.row(vec!["b".into(), "last column is not padded".into()]);
        assert_eq!(
            t.render(),
            "A          LONGER\nwide cell  x\nb          last column is not padded\n"
        );
    }

    #[test]
    fn topics_table_golden() {
        assert_eq!(
            topics_table(&[topic()]),
            "NAME            PARTITIONS  DURABILITY    RETENTION  CREATED\n\
             demo.greetings  2           interval:100  7days      2026-01-31T09:00:00.000Z\n"
        );
    }

    #[test]
    fn topic_describe_golden() {
        assert_eq!(
            topic_text(&topic()),
            "name           demo.greetings\n\
             id             abababababababababababababababab\n\
             created        2026-01-31T09:00:00.000Z\n\
             partitions     2\n\
             durability     interval:100\n\
             retention      7days\n\
             dedicated kek  yes\n\
             \n\
             PARTITION  START  END   SEGMENTS  BYTES  STATUS\n\
             0          0      1234  2         56789  ok\n\
             1          10     11    1         99     key envelope missing\n"
        );
    }

    #[test]
    fn acl_table_and_json_golden() {
        let rules = vec![
            AclRule {
                principal: "spiffe://strongbox.dev/alice".into(),
                topic: "demo.*".into(),
                operations: Operations::PUBLISH.union(Operations::SUBSCRIBE),
                effect: AclEffect::Allow,
                expires_at: None,
            },
            AclRule {
                principal: "*".into(),
                topic: "payments".into(),
                operations: Operations::SUBSCRIBE,
                effect: AclEffect::Deny,
                expires_at: Some(1_769_850_000_000),
            },
        ];
        assert_eq!(
            acl_table(&rules),
            "PRINCIPAL                     TOPIC     OPERATIONS         EFFECT  EXPIRES\n\
             spiffe://strongbox.dev/alice  demo.*    publish,subscribe  allow   never\n\
             *                             payments  subscribe          deny    2026-01-31T09:00:00.000Z\n"
        );
        assert_eq!(
            acl_json(&rules[1]).to_string(),
            r#"{"effect":"deny","expires_at":1769850000000,"operations":["subscribe"],"principal":"*","topic":"payments"}"#
        );
    }

    fn record() -> ConsumedRecord {
        ConsumedRecord {
            topic: "demo.greetings".into(),
            partition: 1,
            offset: 42,
            timestamp: 1_769_850_000_005,
            key: Some(Bytes::from_static(b"user-7")),
            headers: vec![
                ("kind".into(), Bytes::from_static(b"signup")),
                ("raw".into(), Bytes::from_static(&[0xff, 0x00])),
            ],
            value: Bytes::from_static(b"hello\nworld"),
        }
    }

    #[test]
    fn record_line_golden() {
        assert_eq!(
            record_line(&record()),
            "demo.greetings[1]@42 2026-01-31T09:00:00.005Z user-7 {kind=signup,raw=\\xff\\u{0}} hello\\nworld"
        );
        let mut keyless = record();
        keyless.key = None;
        keyless.headers.clear();
        assert_eq!(
            record_line(&keyless),
            "demo.greetings[1]@42 2026-01-31T09:00:00.005Z - hello\\nworld"
        );
    }

    #[test]
    fn record_json_golden() {
        assert_eq!(
            record_json(&record()).to_string(),
            r#"{"headers":[{"name":"kind","value":"signup"},{"name":"raw","value_hex":"ff00"}],"key":"user-7","offset":42,"partition":1,"time":"2026-01-31T09:00:00.005Z","timestamp":1769850000005,"topic":"demo.greetings","value":"hello\nworld"}"#
        );
    }

    #[test]
    fn published_and_whoami_golden() {
        let m = RecordMetadata {
            topic: "t".into(),
            partition: 0,
            offset: 7,
        };
        assert_eq!(published_line(&m), "t[0]@7");
        assert_eq!(
            published_json(&m).to_string(),
            r#"{"offset":7,"partition":0,"topic":"t"}"#
        );
        let w = WhoAmI {
            principal: "spiffe://strongbox.dev/alice".into(),
            broker_id: "dev-1".into(),
            superuser: false,
        };
        assert_eq!(
            whoami_text(&w, Some("X25519MLKEM768")),
            "principal     spiffe://strongbox.dev/alice\nbroker        dev-1\nsuperuser     no\n\
             key exchange  X25519MLKEM768\n"
        );
        assert_eq!(
            whoami_json(&w, Some("X25519MLKEM768")).to_string(),
            r#"{"broker_id":"dev-1","key_exchange":"X25519MLKEM768","principal":"spiffe://strongbox.dev/alice","superuser":false}"#
        );
        assert_eq!(whoami_json(&w, None)["key_exchange"], Value::Null);
    }
}
