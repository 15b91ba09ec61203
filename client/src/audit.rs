//! The audit trail: its record format and the verification of its hash
//! chain.
//!
//! The broker writes every security-relevant event (authentication
//! failures, ACL denials, topic and ACL changes, key operations, data key
//! unwraps) as one record of the internal topic [`AUDIT_TOPIC`], readable by
//! principals with the `audit` permission. Each record's value is compact
//! JSON with these fields, in this order:
//!
//! ```text
//! {"seq":17,"time":"2026-01-31T09:00:00.123Z","principal":"spiffe://strongbox.dev/bob",
//!  "action":"acl.deny","resource":"topic:demo.x","outcome":"denied",
//!  "details":{"operation":"publish","reason":"no_matching_rule"},
//!  "prev_hash":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! `seq` counts from 1 with no gap; `prev_hash` is the previous record's
//! `hash` (64 zeros for record 1); `hash` is the SHA-256 of the record's own
//! bytes with the trailing `,"hash":"<64 hex>"}` replaced by `}`. Any tool
//! can check a record textually, without re-encoding the JSON. The broker
//! also anchors the newest record's sequence and hash in its metadata
//! store, served by the `AuditHead` admin request, so a topic cut short is
//! detected even though every record left in it is intact.
//!
//! [`ChainVerifier`] checks records one at a time and names the first bad
//! one; [`verify_trail`] reads the whole topic from a broker and checks it
//! against the anchored head, which is what `strongbox audit verify` does.
//!
//! ```
//! use strongbox_client::audit::{ChainError, ChainVerifier, StoredRecord};
//!
//! // No records and no anchored head: an empty, intact trail.
//! let summary = ChainVerifier::new(None).finish()?;
//! assert_eq!(summary.records, 0);
//!
//! // A record that is not JSON is named by its offset.
//! let mut v = ChainVerifier::new(None);
//! let bad = StoredRecord { offset: 0, seq_header: None, value: "oops".into() };
//! assert!(matches!(v.push(&bad), Err(ChainError::Malformed { offset: 0, .. })));
//! # Ok::<(), ChainError>(())
//! ```

use std::fmt;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use strongbox_protocol::frames::subscribe::StartPosition;
use strongbox_protocol::rfc3339;

use crate::admin::AuditHead;
use crate::connection::Client;
use crate::consumer::{ConsumedRecord, Consumer, ConsumerConfig, Subscription};
use crate::error::ClientError;

/// The internal topic that holds the audit trail (one partition).
pub const AUDIT_TOPIC: &str = "_audit";

/// The record header that repeats a record's `seq` (ASCII decimal), so a
/// scan can find a sequence number without parsing values.
pub const SEQ_HEADER: &str = "audit-seq";

/// The `prev_hash` of record 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The action of the record the broker appends when it finds its audit
/// topic shorter than, or different from, the anchored head.
pub const CHAIN_BROKEN_ACTION: &str = "audit.chain.broken";

/// The fields of a record, in the order they are written.
pub const FIELDS: [&str; 9] = [
    "seq",
    "time",
    "principal",
    "action",
    "resource",
    "outcome",
    "details",
    "prev_hash",
    "hash",
];

/// The outcomes a record may have.
pub const OUTCOMES: [&str; 4] = ["success", "denied", "failure", "alert"];

/// `,"hash":"` — what precedes the hash at the end of every record.
const HASH_FIELD: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The hash a record's value must carry: the SHA-256 of the value with its
/// trailing `,"hash":"<64 hex>"}` replaced by `}`. `None` when the value
/// does not end that way.
pub fn content_hash(value: &[u8]) -> Option<[u8; 32]> {
    let body_len = value.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (body, suffix) = value.split_at(body_len);
    let (field, rest) = suffix.split_at(HASH_FIELD.len());
    if field != HASH_FIELD || !rest.ends_with(b"\"}") {
        return None;
    }
    let hex_digits = rest.get(..64)?;
    if !hex_digits
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(body);
    ctx.update(b"}");
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Some(out)
}

/// An audit record as read from the topic: where it is and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset in the audit topic.
    pub offset: u64,
    /// The value of its [`SEQ_HEADER`] header, if it has one.
    pub seq_header: Option<Bytes>,
    /// The JSON value.
    pub value: Bytes,
}

impl StoredRecord {
    /// The stored form of a record a consumer read.
    pub fn from_consumed(record: &ConsumedRecord) -> Self {
        Self {
            offset: record.offset,
            seq_header: record.header(SEQ_HEADER).cloned(),
            value: record.value.clone(),
        }
    }
}

/// One audit record, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Sequence number, from 1.
    pub seq: u64,
    /// When it happened: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// Who caused it; `None` when nobody authenticated (an authentication
    /// failure).
    pub principal: Option<String>,
    /// What happened, dotted (`acl.deny`, `key.rotate`, ...).
    pub action: String,
    /// What it happened to (`topic:demo.x`, `kek:broker/v2`, ...).
    pub resource: String,
    /// `success`, `denied`, `failure` or `alert`.
    pub outcome: String,
    /// Everything else, by name.
    pub details: Map<String, Value>,
    /// The previous record's hash.
    pub prev_hash: [u8; 32],
    /// This record's hash, as stored.
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// Parses and checks the shape of a record's value: the nine fields
    /// and their types, and the hash field last. Does not check the hash
    /// (see [`content_hash`]).
    ///
    /// # Errors
    ///
    /// What is wrong with it, for people.
    pub fn parse(value: &[u8]) -> Result<Self, String> {
        let suffix_start = value
            .len()
            .checked_sub(HASH_SUFFIX_LEN)
            .ok_or("it is too short to be an audit record")?;
        if value.get(suffix_start..suffix_start + HASH_FIELD.len()) != Some(HASH_FIELD)
            || !value.ends_with(b"\"}")
        {
            return Err("it does not end with its hash field".into());
        }
        let json: Value =
            serde_json::from_slice(value).map_err(|e| format!("it is not valid JSON: {e}"))?;
        let Value::Object(mut fields) = json else {
            return Err("it is not a JSON object".into());
        };
        if fields.len() != FIELDS.len() || FIELDS.iter().any(|f| !fields.contains_key(*f)) {
            let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(format!(
                "it has the fields {} instead of {}",
                names.join(", "),
                FIELDS.join(", ")
            ));
        }
        let mut take = |name: &str| fields.remove(name).unwrap_or(Value::Null);
        let seq = take("seq")
            .as_u64()
            .filter(|s| *s >= 1)
            .ok_or("seq is not a whole number from 1")?;
        let time = string(take("time"), "time")?;
        if !is_rfc3339_millis(&time) {
            return Err(format!(
                "time {time:?} is not RFC 3339 UTC with milliseconds"
            ));
        }
        let principal = match take("principal") {
            Value::Null => None,
            Value::String(p) => Some(p),
            _ => return Err("principal is neither a string nor null".into()),
        };
        let action = string(take("action"), "action")?;
        if action.is_empty()
            || !action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        {
            return Err(format!("action {action:?} is not a dotted lowercase name"));
        }
        let resource = string(take("resource"), "resource")?;
        let outcome = string(take("outcome"), "outcome")?;
        if !OUTCOMES.contains(&outcome.as_str()) {
            return Err(format!(
                "outcome {outcome:?} is not one of {}",
                OUTCOMES.join(", ")
            ));
        }
        let Value::Object(details) = take("details") else {
            return Err("details is not a JSON object".into());
        };
        let prev_hash = hash_field(take("prev_hash"), "prev_hash")?;
        let hash = hash_field(take("hash"), "hash")?;
        Ok(Self {
            seq,
            time,
            principal,
            action,
            resource,
            outcome,
            details,
            prev_hash,
            hash,
        })
    }

    /// A detail as a whole number.
    pub fn detail_u64(&self, name: &str) -> Option<u64> {
        self.details.get(name).and_then(Value::as_u64)
    }
}

fn string(v: Value, name: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(format!("{name} is not a string")),
    }
}

fn hash_field(v: Value, name: &str) -> Result<[u8; 32], String> {
    let s = string(v, name)?;
    let lower = s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut out = [0u8; 32];
    match hex::decode_to_slice(&s, &mut out) {
        Ok(()) if lower => Ok(out),
        _ => Err(format!("{name} is not 64 lowercase hex digits")),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, a real instant, exactly as the broker
/// writes it ([`rfc3339::format_ms`]).
fn is_rfc3339_millis(s: &str) -> bool {
    rfc3339::parse_ms(s)
        .ok()
        .and_then(rfc3339::format_ms)
        .is_some_and(|canonical| canonical == s)
}

/// Why a trail is not intact. Each variant names the first bad record.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record is not a well-formed audit record.
    #[error("audit record at offset {offset} is not a valid audit record: {reason}")]
    Malformed {
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record's bytes do not hash to the hash it carries: it was edited.
    #[error("audit record {seq} (offset {offset}): hash does not match its contents")]
    HashMismatch {
        /// Its sequence number.
        seq: u64,
        /// Its offset.
        offset: u64,
    },
    /// A record's sequence number skips ahead: records before it are
    /// missing (deleted, or moved later).
    #[error("{}", missing_text(*seq, *offset, *previous, *expected))]
    Missing {
        /// The sequence number found.
        seq: u64,
        /// Its offset.
        offset: u64,
        /// The sequence number of the record before it, if any.
        previous: Option<u64>,
        /// The sequence number that should have come.
        expected: u64,
    },
    /// A record's sequence number goes back: it was moved or copied.
    #[error(
        "audit record {seq} (offset {offset}) is out of order: record {expected} should come here"
    )]
    OutOfOrder {
        /// The sequence number found.
        seq: u64,
        /// Its offset.
        offset: u64,
        /// The sequence number that should have come.
        expected: u64,
    },
    /// A record does not carry the previous record's hash: the chain was
    /// rebuilt from here on.
    #[error("audit record {seq} (offset {offset}): prev_hash is not the hash of {}", previous_name(*seq))]
    PrevHashMismatch {
        /// Its sequence number.
        seq: u64,
        /// Its offset.
        offset: u64,
    },
    /// The record at the anchored head's sequence number has another hash:
    /// the trail was rewritten up to there.
    #[error(
        "audit record {seq} (offset {offset}) is not the record anchored in the broker's \
         metadata store: the trail was rewritten"
    )]
    HeadMismatch {
        /// Its sequence number.
        seq: u64,
        /// Its offset.
        offset: u64,
    },
    /// The topic ends before the anchored head: records were cut off.
    #[error("{}", truncated_text(*last, *head, *alert))]
    Truncated {
        /// The last intact sequence number in the topic (0 for none).
        last: u64,
        /// The anchored head's sequence number.
        head: u64,
        /// The `audit.chain.broken` record the broker appended when it found
        /// the gap, if it did.
        alert: Option<u64>,
    },
}

fn missing_text(seq: u64, offset: u64, previous: Option<u64>, expected: u64) -> String {
    let gap = if seq.saturating_sub(expected) == 1 {
        format!("record {expected} is missing")
    } else {
        format!(
            "records {expected} to {} are missing",
            seq.saturating_sub(1)
        )
    };
    match previous {
        Some(p) => format!("audit record {seq} (offset {offset}) follows record {p}: {gap}"),
        None => format!("audit record {seq} (offset {offset}) is the first record: {gap}"),
    }
}

fn previous_name(seq: u64) -> String {
    match seq.checked_sub(1) {
        Some(p) if p > 0 => format!("record {p}"),
        _ => "the genesis (64 zeros)".into(),
    }
}

fn truncated_text(last: u64, head: u64, alert: Option<u64>) -> String {
    let mut text = if last == 0 {
        format!(
            "audit topic holds no record but the anchored head is record {head}: the topic was truncated"
        )
    } else {
        format!(
            "audit topic ends at record {last} but the anchored head is record {head}: the topic was truncated"
        )
    };
    if let Some(alert) = alert {
        text.push_str(&format!(
            " (the broker found the gap and recorded {CHAIN_BROKEN_ACTION} as record {alert})"
        ));
    }
    text
}

impl ChainError {
    /// The offset of the record it names, when it names one by offset.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Malformed { offset, .. }
            | Self::HashMismatch { offset, .. }
            | Self::Missing { offset, .. }
            | Self::OutOfOrder { offset, .. }
            | Self::PrevHashMismatch { offset, .. }
            | Self::HeadMismatch { offset, .. } => Some(*offset),
            Self::Truncated { .. } => None,
        }
    }
}

/// What an intact trail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records checked.
    pub records: u64,
    /// The newest record's sequence number (0 when there is none).
    pub last_sequence: u64,
    /// The newest record's hash.
    pub last_hash: [u8; 32],
    /// The anchored head it was compared with.
    pub anchored: Option<AuditHead>,
}

impl fmt::Display for ChainSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.records == 0 {
            return f.write_str("audit trail intact: 0 records");
        }
        let hex = hex::encode(self.last_hash);
        write!(
            f,
            "audit trail intact: {} records, head {}",
            self.records,
            hex.get(..16).unwrap_or(&hex)
        )
    }
}

/// Checks audit records in topic order, one at a time.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    anchored: Option<AuditHead>,
    records: u64,
    last: Option<(u64, [u8; 32])>,
}

impl ChainVerifier {
    /// A verifier that will compare the trail with `anchored` (the broker's
    /// `AuditHead`; a head with sequence 0 means none was anchored yet).
    pub fn new(anchored: Option<AuditHead>) -> Self {
        Self {
            anchored: anchored.filter(|h| h.sequence > 0),
            records: 0,
            last: None,
        }
    }

    /// Records checked so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Checks the next record.
    ///
    /// # Errors
    ///
    /// The [`ChainError`] that names this record. Once it failed, the
    /// verifier's verdict is that error; later records are not meaningful.
    pub fn push(&mut self, stored: &StoredRecord) -> Result<AuditRecord, ChainError> {
        let offset = stored.offset;
        let record = AuditRecord::parse(&stored.value)
            .map_err(|reason| ChainError::Malformed { offset, reason })?;
        let seq = record.seq;
        match &stored.seq_header {
            None => {
                return Err(ChainError::Malformed {
                    offset,
                    reason: format!("it has no {SEQ_HEADER} header"),
                });
            }
            Some(h) if h.as_ref() != seq.to_string().as_bytes() => {
                return Err(ChainError::Malformed {
                    offset,
                    reason: format!(
                        "its {SEQ_HEADER} header says {:?} but its seq is {seq}",
                        String::from_utf8_lossy(h)
                    ),
                });
            }
            Some(_) => {}
        }
        if content_hash(&stored.value) != Some(record.hash) {
            return Err(ChainError::HashMismatch { seq, offset });
        }
        let (previous, prev_hash) = match self.last {
            Some((s, h)) => (Some(s), h),
            None => (None, GENESIS_HASH),
        };
        let expected = previous.map_or(1, |p| p.saturating_add(1));
        if seq > expected {
            if let Some(e) = self.reported_truncation(&record, previous) {
                return Err(e);
            }
            return Err(ChainError::Missing {
                seq,
                offset,
                previous,
                expected,
            });
        }
        if seq < expected {
            return Err(ChainError::OutOfOrder {
                seq,
                offset,
                expected,
            });
        }
        if record.prev_hash != prev_hash {
            return Err(ChainError::PrevHashMismatch { seq, offset });
        }
        if let Some(head) = &self.anchored
            && head.sequence == seq
            && head.hash != record.hash
        {
            return Err(ChainError::HeadMismatch { seq, offset });
        }
        self.records += 1;
        self.last = Some((seq, record.hash));
        Ok(record)
    }

    /// The gap before `record` is one the broker found and reported: the
    /// topic was cut short after record `previous`, and the broker went on
    /// from the anchored head with an `audit.chain.broken` alert.
    fn reported_truncation(
        &self,
        record: &AuditRecord,
        previous: Option<u64>,
    ) -> Option<ChainError> {
        let reported = record.action == CHAIN_BROKEN_ACTION
            && record.details.get("reason").and_then(Value::as_str) == Some("truncated")
            && record.detail_u64("topic_last_sequence").unwrap_or(0) == previous.unwrap_or(0);
        let head = record.detail_u64("anchored_sequence")?;
        (reported && head.checked_add(1) == Some(record.seq)).then_some(ChainError::Truncated {
            last: previous.unwrap_or(0),
            head,
            alert: Some(record.seq),
        })
    }

    /// Ends the check: the trail must reach the anchored head.
    ///
    /// # Errors
    ///
    /// [`ChainError::Truncated`] when the topic ends before the head.
    pub fn finish(self) -> Result<ChainSummary, ChainError> {
        let (last_sequence, last_hash) = self.last.unwrap_or((0, GENESIS_HASH));
        if let Some(head) = &self.anchored
            && last_sequence < head.sequence
        {
            return Err(ChainError::Truncated {
                last: last_sequence,
                head: head.sequence,
                alert: None,
            });
        }
        Ok(ChainSummary {
            records: self.records,
            last_sequence,
            last_hash,
            anchored: self.anchored,
        })
    }
}

/// Checks `records` (in topic order) and compares the newest with
/// `anchored`.
///
/// # Errors
///
/// The [`ChainError`] naming the first bad record, or the truncation.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a StoredRecord>,
    anchored: Option<AuditHead>,
) -> Result<ChainSummary, ChainError> {
    let mut verifier = ChainVerifier::new(anchored);
    for record in records {
        verifier.push(record)?;
    }
    verifier.finish()
}

/// Why [`verify_trail`] did not vouch for the trail.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The trail is not intact.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The trail could not be read.
    #[error("cannot read the audit trail: {0}")]
    Client(#[from] ClientError),
}

/// Reads the audit topic in order.
///
/// Without `follow` it stops at the end the topic had when it was opened;
/// with `follow` it waits for new records until dropped.
#[derive(Debug)]
pub struct TrailReader {
    consumer: Option<Consumer>,
    end: Option<u64>,
}

impl TrailReader {
    /// Starts reading at `from_offset` (or the oldest retained record).
    ///
    /// # Errors
    ///
    /// The broker refuses (`not authorized` without the `audit`
    /// permission) or cannot be reached.
    pub async fn open(
        client: &Client,
        from_offset: u64,
        follow: bool,
    ) -> Result<Self, ClientError> {
        let info = client.admin().describe_topic(AUDIT_TOPIC).await?;
        let partition = info.partitions.first().ok_or_else(|| {
            ClientError::Protocol(format!(
                "the broker describes {AUDIT_TOPIC} without partitions"
            ))
        })?;
        let start = from_offset.max(partition.log_start_offset);
        let end = partition.high_watermark;
        if !follow && start >= end {
            return Ok(Self {
                consumer: None,
                end: Some(end),
            });
        }
        let subscription =
            Subscription::partition(AUDIT_TOPIC, 0).start(StartPosition::Offset(start.min(end)));
        let consumer = Consumer::subscribe(client, subscription, ConsumerConfig::default()).await?;
        Ok(Self {
            consumer: Some(consumer),
            end: (!follow).then_some(end),
        })
    }

    /// The offset it stops at (`None` when following).
    pub fn end_offset(&self) -> Option<u64> {
        self.end
    }

    /// The next record; `None` at the end.
    ///
    /// # Errors
    ///
    /// The subscription failed.
    pub async fn next(&mut self) -> Option<Result<StoredRecord, ClientError>> {
        let consumer = self.consumer.as_mut()?;
        let item = consumer.next().await;
        let record = match item {
            None => {
                self.close().await;
                return None;
            }
            Some(Err(e)) => return Some(Err(e)),
            Some(Ok(record)) => record,
        };
        if let Some(end) = self.end {
            if record.offset >= end {
                self.close().await;
                return None;
            }
            if record.offset.saturating_add(1) >= end {
                self.close().await;
            }
        }
        Some(Ok(StoredRecord::from_consumed(&record)))
    }

    /// Ends the subscription.
    pub async fn close(&mut self) {
        if let Some(mut consumer) = self.consumer.take() {
            consumer.close().await;
        }
    }
}

/// Reads the whole audit trail from the broker and verifies it: every
/// record, then the newest against the anchored head. `progress` is called
/// with the records checked so far and the topic's end offset.
///
/// # Errors
///
/// [`VerifyError::Chain`] naming the first bad record or the truncation;
/// [`VerifyError::Client`] when the trail cannot be read (without the
/// `audit` permission: `not authorized`).
pub async fn verify_trail(
    client: &Client,
    progress: impl FnMut(u64, u64),
) -> Result<ChainSummary, VerifyError> {
    verify_trail_with(client, progress, |_| {}).await
}

/// [`verify_trail`], handing every record that passed its checks to
/// `visit` as it goes (for [`crate::checkpoint`], which looks for the
/// record a checkpoint names and for deletions after it).
///
/// # Errors
///
/// As [`verify_trail`].
pub async fn verify_trail_with(
    client: &Client,
    mut progress: impl FnMut(u64, u64),
    mut visit: impl FnMut(&AuditRecord),
) -> Result<ChainSummary, VerifyError> {
    // The head first: the topic always holds at least what it anchors.
    let anchored = client.admin().audit_head().await?;
    let mut reader = TrailReader::open(client, 0, false).await?;
    let end = reader.end_offset().unwrap_or(0);
    let mut verifier = ChainVerifier::new(Some(anchored));
    let outcome = loop {
        match reader.next().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(VerifyError::Client(e)),
            Some(Ok(record)) => match verifier.push(&record) {
                Err(e) => break Err(VerifyError::Chain(e)),
                Ok(parsed) => {
                    visit(&parsed);
                    progress(verifier.records(), end);
                }
            },
        }
    };
    reader.close().await;
    outcome?;
    Ok(verifier.finish()?)
}

#[cfg(test)]
mod tests;
