//! The signed checkpoint: one line of compact JSON, fields in this order.
//!
//! ```text
//! {"format":"strongbox-checkpoint","version":1,"broker_id":"<id>",
//!  "time":"<RFC 3339 UTC, ms>","time_ms":<i64>,
//!  "audit":{"sequence":<u64>,"hash":"<64 hex>"},
//!  "partitions":[{"topic":"<name>","topic_id":"<32 hex>","partition":<u32>,
//!                 "durability":"fsync|interval|none","log_start_offset":<u64>,
//!                 "end_offset":<u64>,
//!                 "last_seal":{"base_offset":<u64>,"next_offset":<u64>,"mac":"<64 hex>"}|null}, ...],
//!  "key_registry":{"digest":"<64 hex>",
//!                  "versions":[{"scope":"<label>","version":<u32>,"state":"<state>",
//!                               "created_at":<i64>}, ...]},
//!  "key_id":"<16 hex>","signature":"<128 hex>"}
//! ```
//!
//! - `audit`: the newest record of `_audit` when the checkpoint was taken
//!   (sequence 0 and 64 zeros before the first).
//! - `partitions`: every partition the broker served, `_audit` included,
//!   sorted by topic and partition; `end_offset` is the offset after the
//!   last record readers could see, `last_seal` the seal of the newest
//!   rolled segment (its base and next offsets and its HMAC-SHA256, which
//!   binds the segment's header and facts; see docs/STORAGE.md).
//! - `key_registry.digest`: SHA-256 of `strongbox-key-registry/v1\n`
//!   followed by one line `scope \t version \t state \t created_at \n` per
//!   KEK version, sorted by scope and version ([`registry_digest`]).
//! - `key_id`: the first 8 bytes of SHA-256 of the signing key's DER
//!   `SubjectPublicKeyInfo`, in hex.
//! - `signature`: ECDSA P-256 with SHA-256, `r || s` in hex, over the
//!   line's bytes with its trailing `,"signature":"<128 hex>"}` replaced by
//!   `}` (the bytes written before the signature was known). A verifier
//!   checks the signature over those exact bytes, then reads the JSON:
//!   nothing is re-encoded, so no canonical form has to be agreed on.
//!
//! The broker writes the line with [`Unsigned::body`] and [`signed_line`]
//! (its key provider signs the body in between); the broker's `verify
//! --checkpoint` and the client's `strongbox audit verify --checkpoint`
//! read it with [`verify_line`](crate::verify_line). One golden checkpoint
//! pins the bytes (`format/tests.rs`).

use serde::Deserialize;
use serde_json::Value;

/// The `format` field.
pub const FORMAT: &str = "strongbox-checkpoint";
/// The `version` field this broker writes and reads.
pub const VERSION: u32 = 1;
/// The first line of the key registry digest's input.
pub const REGISTRY_DIGEST_LABEL: &str = "strongbox-key-registry/v1\n";

/// `,"signature":"`: what [`signed_line`] appends to the body, and where a
/// verifier splits the line.
pub(crate) const SIGNATURE_FIELD: &str = ",\"signature\":\"";
/// Hex digits of a signature.
pub(crate) const SIGNATURE_HEX: usize = 2 * crate::SIGNATURE_LEN;

/// The audit head a checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditMark {
    /// Sequence number of the newest record.
    pub sequence: u64,
    /// Its hash.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// The seal of a partition's newest rolled segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealMark {
    /// The segment's base offset.
    pub base_offset: u64,
    /// The offset after its last record.
    pub next_offset: u64,
    /// The seal's MAC.
    #[serde(with = "hex32")]
    pub mac: [u8; 32],
}

/// One partition, as the checkpoint saw it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionMark {
    /// The topic.
    pub topic: String,
    /// The topic's id (hex).
    pub topic_id: String,
    /// The partition.
    pub partition: u32,
    /// The topic's durability (`fsync`, `interval`, `none`).
    pub durability: String,
    /// The first offset the log held.
    pub log_start_offset: u64,
    /// The offset after the last record readers could see.
    pub end_offset: u64,
    /// The seal of the newest rolled segment, if any.
    pub last_seal: Option<SealMark>,
}

/// One KEK version of the registry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Its scope label (`broker`, `topic-<hex id>`).
    pub scope: String,
    /// Its version.
    pub version: u32,
    /// Its state (`active`, `decrypt-only`, `destroyed`, `compromised`).
    pub state: String,
    /// When it was created, ms since the Unix epoch.
    pub created_at: i64,
}

/// The key registry a checkpoint records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryMark {
    /// [`registry_digest`] of `versions`.
    #[serde(with = "hex32")]
    pub digest: [u8; 32],
    /// Every KEK version, sorted by scope and version.
    pub versions: Vec<RegistryEntry>,
}

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The broker that signed it.
    pub broker_id: String,
    /// When, as text.
    pub time: String,
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
    /// The audit head.
    pub audit: AuditMark,
    /// Every partition.
    pub partitions: Vec<PartitionMark>,
    /// The key registry.
    pub key_registry: RegistryMark,
    /// The signing key's id.
    pub key_id: String,
}

/// The digest of a key registry (see the module docs); `versions` in any
/// order.
pub fn registry_digest(versions: &[RegistryEntry]) -> [u8; 32] {
    let mut sorted: Vec<&RegistryEntry> = versions.iter().collect();
    sorted.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(REGISTRY_DIGEST_LABEL.as_bytes());
    for v in sorted {
        ctx.update(
            format!(
                "{}\t{}\t{}\t{}\n",
                v.scope, v.version, v.state, v.created_at
            )
            .as_bytes(),
        );
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What goes into a checkpoint, before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsigned {
    /// The broker's id.
    pub broker_id: String,
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
    /// `time_ms` as RFC 3339 UTC with milliseconds
    /// (`2026-01-31T09:00:00.000Z`), as the broker's audit records write
    /// times.
    pub time: String,
    /// The audit head.
    pub audit: AuditMark,
    /// Every partition, in any order (sorted on encoding).
    pub partitions: Vec<PartitionMark>,
    /// Every KEK version, in any order (sorted on encoding).
    pub registry: Vec<RegistryEntry>,
}

impl Unsigned {
    /// The bytes to sign: the checkpoint line without its signature
    /// field, for the key `key_id`.
    pub fn body(&self, key_id: &str) -> String {
        let mut partitions: Vec<&PartitionMark> = self.partitions.iter().collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut registry: Vec<&RegistryEntry> = self.registry.iter().collect();
        registry.sort();
        let owned: Vec<RegistryEntry> = registry.iter().map(|r| (*r).clone()).collect();
        let mut o = String::with_capacity(512 + 256 * partitions.len());
        o.push_str("{\"format\":");
        push_str(&mut o, FORMAT);
        o.push_str(&format!(",\"version\":{VERSION},\"broker_id\":"));
        push_str(&mut o, &self.broker_id);
        o.push_str(",\"time\":");
        push_str(&mut o, &self.time);
        o.push_str(&format!(
            ",\"time_ms\":{},\"audit\":{{\"sequence\":{},\"hash\":\"{}\"}},\"partitions\":[",
            self.time_ms,
            self.audit.sequence,
            hex::encode(self.audit.hash)
        ));
        for (i, p) in partitions.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"topic\":");
            push_str(&mut o, &p.topic);
            o.push_str(",\"topic_id\":");
            push_str(&mut o, &p.topic_id);
            o.push_str(&format!(",\"partition\":{},\"durability\":", p.partition));
            push_str(&mut o, &p.durability);
            o.push_str(&format!(
                ",\"log_start_offset\":{},\"end_offset\":{},\"last_seal\":",
                p.log_start_offset, p.end_offset
            ));
            match &p.last_seal {
                Some(s) => o.push_str(&format!(
                    "{{\"base_offset\":{},\"next_offset\":{},\"mac\":\"{}\"}}}}",
                    s.base_offset,
                    s.next_offset,
                    hex::encode(s.mac)
                )),
                None => o.push_str("null}"),
            }
        }
        o.push_str(&format!(
            "],\"key_registry\":{{\"digest\":\"{}\",\"versions\":[",
            hex::encode(registry_digest(&owned))
        ));
        for (i, r) in registry.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"scope\":");
            push_str(&mut o, &r.scope);
            o.push_str(&format!(",\"version\":{},\"state\":", r.version));
            push_str(&mut o, &r.state);
            o.push_str(&format!(",\"created_at\":{}}}", r.created_at));
        }
        o.push_str("]},\"key_id\":");
        push_str(&mut o, key_id);
        o.push('}');
        o
    }
}

/// The signed line (no newline): `body` with the signature appended.
pub fn signed_line(body: &str, signature: &[u8]) -> String {
    let mut line = body.strip_suffix('}').unwrap_or(body).to_owned();
    line.push_str(SIGNATURE_FIELD);
    line.push_str(&hex::encode(signature));
    line.push_str("\"}");
    line
}

/// A JSON string literal.
fn push_str(out: &mut String, s: &str) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// `[u8; 32]` as 64 hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|_| serde::de::Error::custom("expected 64 hex digits"))?;
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests;
