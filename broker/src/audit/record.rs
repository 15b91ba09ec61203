//! The stored form of an audit record and its hash chain.
//!
//! A record's value is compact JSON, fields in this order:
//!
//! ```text
//! {"seq":<u64 from 1>,"time":"<RFC 3339 UTC, ms>","principal":<string|null>,
//!  "action":"<dotted>","resource":"<string>","outcome":"success|denied|failure|alert",
//!  "details":{<keys sorted, nested objects too>},"prev_hash":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! `hash` is the SHA-256 of the value with its trailing
//! `,"hash":"<64 hex>"}` replaced by `}` (the bytes written before the hash
//! was known), lowercase hex. `prev_hash` is the previous record's `hash`,
//! 64 zeros for record 1. A verifier checks a record textually and never
//! re-encodes JSON. The record's key is its action; its `audit-seq` header
//! repeats `seq` in ASCII decimal.
//!
//! The client library (`strongbox_client::audit`) verifies this format;
//! both sides pin it with the same golden record.

use serde_json::Value;
use strongbox_protocol::rfc3339;
use strongbox_storage::meta::AuditHead;

use super::event::AuditEvent;

/// The `prev_hash` of record 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The header that repeats a record's `seq`.
pub const SEQ_HEADER: &str = "audit-seq";

/// `,"hash":"`.
const HASH_FIELD: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// One record, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRecord {
    /// Its sequence number.
    pub seq: u64,
    /// The JSON value, hash included.
    pub value: Vec<u8>,
    /// Its hash.
    pub hash: [u8; 32],
}

/// SHA-256 of `parts`, concatenated.
fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Encodes `event` as record `seq` following the record whose hash is
/// `prev`.
pub fn encode(seq: u64, prev: &[u8; 32], event: &AuditEvent) -> EncodedRecord {
    let mut out = String::with_capacity(320);
    out.push_str("{\"seq\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"time\":");
    push_str(&mut out, &record_time(event.time_ms));
    out.push_str(",\"principal\":");
    match &event.principal {
        Some(p) => push_str(&mut out, p),
        None => out.push_str("null"),
    }
    out.push_str(",\"action\":");
    push_str(&mut out, event.action.as_str());
    out.push_str(",\"resource\":");
    push_str(&mut out, &event.resource);
    out.push_str(",\"outcome\":");
    push_str(&mut out, event.outcome.as_str());
    out.push_str(",\"details\":{");
    for (i, (name, value)) in event.details.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, name);
        out.push(':');
        push_value(&mut out, value);
    }
    out.push_str("},\"prev_hash\":\"");
    out.push_str(&hex::encode(prev));
    out.push_str("\"}");
    let hash = sha256(&[out.as_bytes()]);
    out.pop();
    out.push_str(",\"hash\":\"");
    out.push_str(&hex::encode(hash));
    out.push_str("\"}");
    EncodedRecord {
        seq,
        value: out.into_bytes(),
        hash,
    }
}

/// A JSON string literal.
fn push_str(out: &mut String, s: &str) {
    // Display of a JSON string value is its escaped literal.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// Compact JSON with object keys sorted, whatever order the map keeps.
fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, k);
                out.push(':');
                push_value(out, v);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, v);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The `time` of a record: `time_ms` in RFC 3339 UTC with milliseconds
/// ([`rfc3339::format_ms`]); the epoch itself for a time RFC 3339 cannot
/// write, so every record's time is one `strongbox audit verify` accepts.
pub fn record_time(time_ms: i64) -> String {
    rfc3339::format_ms(time_ms)
        .or_else(|| rfc3339::format_ms(0))
        .unwrap_or_default()
}

/// What the chain needs of a stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    /// Its sequence number.
    pub seq: u64,
    /// The hash it says precedes it.
    pub prev_hash: [u8; 32],
    /// Its hash, checked against its bytes.
    pub hash: [u8; 32],
}

impl StoredLink {
    /// The head this record would anchor.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            sequence: self.seq,
            hash: self.hash,
        }
    }
}

/// Reads `seq`, `prev_hash` and `hash` of a stored record and checks that
/// its bytes hash to its `hash`.
///
/// # Errors
///
/// What is wrong with it, for the operator's log.
pub fn parse_link(value: &[u8]) -> Result<StoredLink, String> {
    let body_len = value
        .len()
        .checked_sub(HASH_SUFFIX_LEN)
        .ok_or("too short to be an audit record")?;
    let (body, suffix) = value.split_at(body_len);
    if !suffix.starts_with(HASH_FIELD) || !suffix.ends_with(b"\"}") {
        return Err("it does not end with its hash field".into());
    }
    let json: Value = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let seq = json
        .get("seq")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .ok_or("no valid seq")?;
    let hex_field = |name: &str| -> Result<[u8; 32], String> {
        let s = json
            .get(name)
            .and_then(Value::as_str)
            .ok_or(format!("no {name}"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| format!("{name} is not 64 hex digits"))?;
        Ok(out)
    };
    let prev_hash = hex_field("prev_hash")?;
    let hash = hex_field("hash")?;
    if sha256(&[body, b"}"]) != hash {
        return Err(format!("record {seq}: hash does not match its contents"));
    }
    Ok(StoredLink {
        seq,
        prev_hash,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{AuditAction, AuditEvent};

    /// The golden record of docs/SECURITY.md (also pinned by the client's
    /// verifier tests).
    const GOLDEN: &str = concat!(
        r#"{"seq":1,"time":"2026-01-31T09:00:00.123Z","principal":"spiffe://strongbox.dev/bob","#,
        r#""action":"acl.deny","resource":"topic:demo.x","outcome":"denied","#,
        r#""details":{"operation":"publish","reason":"no_matching_rule"},"#,
        r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
        r#""hash":"74ce49f49d42148198e1b4e8b492a719729031e53436df0a479ddbeb53c2c29b"}"#
    );

    #[test]
    fn golden_record() {
        let event = AuditEvent::denied(AuditAction::AclDeny, "topic:demo.x")
            .principal("spiffe://strongbox.dev/bob")
            // Inserted out of order: written sorted.
            .detail("reason", "no_matching_rule")
            .detail("operation", "publish")
            .at(1_769_850_000_123);
        let encoded = encode(1, &GENESIS_HASH, &event);
        assert_eq!(String::from_utf8(encoded.value.clone()).unwrap(), GOLDEN);
        assert_eq!(
            hex::encode(encoded.hash),
            "74ce49f49d42148198e1b4e8b492a719729031e53436df0a479ddbeb53c2c29b"
        );
        let link = parse_link(&encoded.value).unwrap();
        assert_eq!(link.seq, 1);
        assert_eq!(link.prev_hash, GENESIS_HASH);
        assert_eq!(link.hash, encoded.hash);
    }

    #[test]
    fn null_principal_escapes_and_nested_details() {
        let mut nested = serde_json::Map::new();
        nested.insert("z".into(), Value::from(1));
        nested.insert("a".into(), Value::from(vec![Value::from("x\"y")]));
        let event = AuditEvent::failure(AuditAction::AuthFailure, "connection")
            .detail("reason", "bad \"cert\"\n")
            .detail("nested", Value::Object(nested))
            .at(0);
        let encoded = encode(7, &[0xab; 32], &event);
        let text = String::from_utf8(encoded.value.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"seq":7,"time":"1970-01-01T00:00:00.000Z","principal":null,"action":"auth.failure","#
        ));
        assert!(text.contains(
            r#""details":{"nested":{"a":["x\"y"],"z":1},"reason":"bad \"cert\"\n"},"prev_hash":"abab"#
        ));
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["details"]["reason"], "bad \"cert\"\n");
        let link = parse_link(&encoded.value).unwrap();
        assert_eq!((link.seq, link.prev_hash), (7, [0xab; 32]));
    }

    #[test]
    fn an_edited_record_does_not_parse_as_a_link() {
        let event = AuditEvent::success(AuditAction::TopicCreate, "topic:a").at(1);
        let mut value = encode(3, &GENESIS_HASH, &event).value;
        let at = value.iter().position(|b| *b == b'a').unwrap();
        value[at] = b'b';
        assert!(
            parse_link(&value)
                .unwrap_err()
                .contains("hash does not match")
        );
        assert!(parse_link(b"{}").is_err());
        assert!(parse_link(&[b'x'; 100]).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(record_time(1_769_850_000_123), "2026-01-31T09:00:00.123Z");
        assert_eq!(record_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(record_time(i64::MAX), "1970-01-01T00:00:00.000Z");
    }
}
