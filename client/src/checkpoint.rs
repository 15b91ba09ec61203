//! Signed checkpoints of a broker's state, checked against what the broker
//! serves now: `strongbox audit verify --checkpoint FILE --checkpoint-key
//! KEY.pem`.
//!
//! The broker signs, every `checkpoints.interval` and at shutdown, a
//! checkpoint of its state with an ECDSA P-256 key its key provider holds
//! (in the HSM with PKCS#11), and writes it outside its data directory. The
//! format (one line of JSON, the signature over its bytes) is specified in
//! docs/SECURITY.md and by the broker's `checkpoint::format`; both sides
//! pin it with the same golden checkpoint.
//!
//! Against a checkpoint, a broker whose data directory is genuine holds the
//! audit record the checkpoint names with the same hash, ends every
//! partition at or after the checkpointed offset, and has every key
//! version of the checkpoint in the same or a later state of its
//! lifecycle. A broker serving a data directory restored from an older
//! copy fails at least one of these, and [`check`] says which. (Segment
//! seals, which the broker does not serve, are checked offline by
//! `strongbox-broker verify --checkpoint`.)
//!
//! ```
//! use strongbox_client::checkpoint::{CheckpointKey, verify_line};
//!
//! let key = CheckpointKey::from_pem("not a key");
//! assert!(key.is_err());
//! # let _ = verify_line;
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;

use crate::audit::{AuditRecord, ChainSummary, VerifyError, verify_trail_with};
use crate::connection::Client;
use crate::error::ClientError;

/// The `format` field.
pub const FORMAT: &str = "strongbox-checkpoint";
/// The `version` this client reads.
pub const VERSION: u32 = 1;
/// The first line of the key registry digest's input.
const REGISTRY_DIGEST_LABEL: &str = "strongbox-key-registry/v1\n";
/// `,"signature":"`.
const SIGNATURE_FIELD: &str = ",\"signature\":\"";
/// The DER of a P-256 `SubjectPublicKeyInfo` up to its point.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a checkpoint is refused or cannot be checked.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The public key file is not a P-256 public key.
    #[error("not a P-256 PUBLIC KEY PEM: {0}")]
    Key(String),
    /// The line is not a signed checkpoint.
    #[error("not a signed checkpoint: {0}")]
    Malformed(String),
    /// It names another signing key.
    #[error(
        "the checkpoint was signed by key {named}, not by the key given ({given}): check the \
         public key file, or the checkpoint is a forgery"
    )]
    OtherKey {
        /// The key id it names.
        named: String,
        /// The id of the key given.
        given: String,
    },
    /// The signature does not verify.
    #[error(
        "the checkpoint's signature does not verify under key {0}: it was altered after \
         signing, or forged"
    )]
    BadSignature(String),
    /// A format or version this client does not read.
    #[error("checkpoint format {0:?} version {1} is not one this client reads")]
    Unsupported(String, u32),
    /// The audit trail is not intact, or cannot be read.
    #[error(transparent)]
    Trail(#[from] VerifyError),
    /// The broker refused a request or the connection failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The checkpoint public key (from `strongbox-broker checkpoint
/// public-key`).
#[derive(Clone, PartialEq, Eq)]
pub struct CheckpointKey([u8; 65]);

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointKey({})", self.key_id())
    }
}

impl CheckpointKey {
    /// Reads a PEM `PUBLIC KEY` (P-256).
    ///
    /// # Errors
    ///
    /// [`CheckpointError::Key`].
    pub fn from_pem(text: &str) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::Key(why.to_owned());
        let body = text
            .trim()
            .strip_prefix("-----BEGIN PUBLIC KEY-----")
            .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
            .ok_or_else(|| bad("no BEGIN/END PUBLIC KEY lines"))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = unbase64(&b64).ok_or_else(|| bad("the body is not base64"))?;
        let point = der
            .strip_prefix(SPKI_PREFIX.as_slice())
            .ok_or_else(|| bad("not an id-ecPublicKey on prime256v1"))?;
        let point: [u8; 65] = point
            .try_into()
            .ok()
            .filter(|p: &[u8; 65]| p.first() == Some(&4))
            .ok_or_else(|| bad("not an uncompressed point"))?;
        Ok(Self(point))
    }

    /// 16 hex digits: the first 8 bytes of SHA-256 of the DER
    /// `SubjectPublicKeyInfo`, as the checkpoint's `key_id` names its key.
    pub fn key_id(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        hex::encode(digest.as_ref().get(..8).unwrap_or_default())
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.0.as_slice())
            .verify(message, signature)
            .is_ok()
    }
}

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
    /// The topic's durability.
    pub durability: String,
    /// The first offset the log held.
    pub log_start_offset: u64,
    /// The offset after the last record readers could see.
    pub end_offset: u64,
    /// The seal of the newest rolled segment, if any.
    pub last_seal: Option<SealMark>,
}

/// One KEK version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Scope label (`broker`, `topic-<hex id>`).
    pub scope: String,
    /// Version.
    pub version: u32,
    /// State.
    pub state: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
}

/// The key registry a checkpoint records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryMark {
    /// [`registry_digest`] of `versions`.
    #[serde(with = "hex32")]
    pub digest: [u8; 32],
    /// Every KEK version.
    pub versions: Vec<RegistryEntry>,
}

/// A verified checkpoint's content.
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

/// The digest of a key registry: SHA-256 of `strongbox-key-registry/v1\n`
/// and one line `scope \t version \t state \t created_at \n` per version,
/// sorted by scope and version.
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

/// Checks a checkpoint line's signature under `key`, then reads it.
///
/// # Errors
///
/// [`CheckpointError`] naming what is wrong.
pub fn verify_line(line: &str, key: &CheckpointKey) -> Result<Checkpoint, CheckpointError> {
    let line = line.trim();
    let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
    let at = line
        .rfind(SIGNATURE_FIELD)
        .ok_or_else(|| malformed("it has no signature field"))?;
    let (head, tail) = line.split_at(at);
    let sig_hex = tail
        .strip_prefix(SIGNATURE_FIELD)
        .and_then(|t| t.strip_suffix("\"}"))
        .filter(|h| h.len() == 128)
        .ok_or_else(|| malformed("it does not end with a 128-digit signature field"))?;
    let signature = hex::decode(sig_hex).map_err(|_| malformed("the signature is not hex"))?;
    let body = format!("{head}}}");
    let named = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("key_id").and_then(Value::as_str).map(str::to_owned));
    let given = key.key_id();
    if let Some(named) = named
        && named != given
    {
        return Err(CheckpointError::OtherKey { named, given });
    }
    if !key.verifies(body.as_bytes(), &signature) {
        return Err(CheckpointError::BadSignature(given));
    }
    let c: Checkpoint = serde_json::from_str(&body).map_err(|e| {
        CheckpointError::Malformed(format!("signed, but its JSON is not a checkpoint: {e}"))
    })?;
    if c.format != FORMAT || c.version != VERSION {
        return Err(CheckpointError::Unsupported(c.format, c.version));
    }
    if registry_digest(&c.key_registry.versions) != c.key_registry.digest {
        return Err(malformed(
            "signed, but its key registry digest does not match its versions",
        ));
    }
    Ok(c)
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `rollback`, `audit_rewritten`, `partition_behind`, `topic_missing`,
    /// `topic_recreated`, `registry_differs`; or, as notices, `ahead`,
    /// `topic_deleted`, `registry_changed`, `not_checked`.
    pub kind: &'static str,
    /// True for a problem, false for a notice.
    pub problem: bool,
    /// What was found.
    pub message: String,
}

/// A topic the broker serves: its id (hex) and each partition's end.
pub type ServedTopic = (String, HashMap<u32, u64>);

/// What a broker serves now, as far as a checkpoint speaks of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The newest audit record's sequence number.
    pub audit_sequence: u64,
    /// The hash of the audit record the checkpoint names, if the trail
    /// holds it.
    pub audit_hash_at_checkpoint: Option<[u8; 32]>,
    /// Topics whose deletion the trail records after the checkpoint.
    pub deleted_since: HashSet<String>,
    /// Topics by name: (topic id hex, end offset by partition); `None`
    /// for a topic the broker does not have.
    pub topics: HashMap<String, Option<ServedTopic>>,
    /// Why topics could not be described, when they could not.
    pub topics_unchecked: Option<String>,
    /// The key registry, or why it could not be read.
    pub registry: Result<Vec<RegistryEntry>, String>,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            audit_sequence: 0,
            audit_hash_at_checkpoint: None,
            deleted_since: HashSet::new(),
            topics: HashMap::new(),
            topics_unchecked: None,
            registry: Err("not read".into()),
        }
    }
}

/// The findings of `observed` against `checkpoint`.
pub fn compare(checkpoint: &Checkpoint, observed: &Observed) -> Vec<Finding> {
    let mut out = Vec::new();
    let name = format!(
        "checkpoint of {} at {}",
        checkpoint.broker_id, checkpoint.time
    );
    let s = checkpoint.audit.sequence;
    let h = observed.audit_sequence;
    let problem = |kind, message| Finding {
        kind,
        problem: true,
        message,
    };
    let notice = |kind, message| Finding {
        kind,
        problem: false,
        message,
    };
    if h < s {
        out.push(problem(
            "rollback",
            format!(
                "the audit trail ends at record {h}, but the {name} recorded record {s}: the \
                 broker's data directory is {} audit record(s) older than the checkpoint \
                 (rolled back or restored from an older copy)",
                s - h
            ),
        ));
    } else if s > 0 {
        match observed.audit_hash_at_checkpoint {
            Some(hash) if hash == checkpoint.audit.hash => {}
            Some(hash) => out.push(problem(
                "audit_rewritten",
                format!(
                    "audit record {s} has hash {}, but the {name} recorded {}: the trail was \
                     rewritten, or the data directory was rolled back and written to since",
                    hex::encode(hash),
                    hex::encode(checkpoint.audit.hash)
                ),
            )),
            None => out.push(problem(
                "audit_rewritten",
                format!("the audit trail has no record {s}, which the {name} recorded"),
            )),
        }
    }
    let quiet = h == s;
    match &observed.topics_unchecked {
        Some(why) => out.push(notice(
            "not_checked",
            format!("partition ends were not checked: {why}"),
        )),
        None => partitions(checkpoint, observed, quiet, &name, &mut out),
    }
    match &observed.registry {
        Err(why) => out.push(notice(
            "not_checked",
            format!("the key registry was not checked: {why}"),
        )),
        Ok(now) => registry(checkpoint, now, quiet, &name, &mut out),
    }
    if !out.iter().any(|f| f.problem) && h > s {
        out.push(notice(
            "ahead",
            format!("the audit trail is {} record(s) past the {name}", h - s),
        ));
    }
    out
}

fn partitions(
    checkpoint: &Checkpoint,
    observed: &Observed,
    quiet: bool,
    name: &str,
    out: &mut Vec<Finding>,
) {
    for mark in &checkpoint.partitions {
        let label = format!("{}/{}", mark.topic, mark.partition);
        let deleted = observed.deleted_since.contains(&mark.topic) && !quiet;
        match observed.topics.get(&mark.topic) {
            Some(Some((id, ends))) if *id == mark.topic_id => {
                if let Some(end) = ends.get(&mark.partition)
                    && *end < mark.end_offset
                {
                    out.push(Finding {
                        kind: "partition_behind",
                        problem: true,
                        message: format!(
                            "{label} ends at offset {end}, before offset {} that the {name} \
                             recorded: {} record(s) are missing from its end{}",
                            mark.end_offset,
                            mark.end_offset - end,
                            if mark.durability == "fsync" {
                                String::new()
                            } else {
                                format!(
                                    " (durability {}: a crash also loses unsynced records)",
                                    mark.durability
                                )
                            }
                        ),
                    });
                }
            }
            Some(Some(_)) if deleted => out.push(Finding {
                kind: "topic_deleted",
                problem: false,
                message: format!(
                    "{label}: the topic was deleted and created again since the {name}"
                ),
            }),
            Some(Some((id, _))) => out.push(Finding {
                kind: "topic_recreated",
                problem: true,
                message: format!(
                    "{} has topic id {id} now but {} in the {name}, and the audit trail records \
                     no deletion of it since",
                    mark.topic, mark.topic_id
                ),
            }),
            _ if deleted => out.push(Finding {
                kind: "topic_deleted",
                problem: false,
                message: format!(
                    "{label}: the audit trail records the topic's deletion since the {name}"
                ),
            }),
            _ => out.push(Finding {
                kind: "topic_missing",
                problem: true,
                message: format!(
                    "{label} was in the {name} at offset {}, but the broker does not have the \
                     topic and the audit trail records no deletion of it since",
                    mark.end_offset
                ),
            }),
        }
    }
}

fn rank(state: &str) -> u8 {
    match state {
        "active" => 0,
        "decrypt-only" => 1,
        "compromised" => 2,
        "destroyed" => 3,
        _ => 4,
    }
}

fn registry(
    checkpoint: &Checkpoint,
    now: &[RegistryEntry],
    quiet: bool,
    name: &str,
    out: &mut Vec<Finding>,
) {
    if registry_digest(now) == checkpoint.key_registry.digest {
        return;
    }
    let by_id: HashMap<(&str, u32), &RegistryEntry> = now
        .iter()
        .map(|v| ((v.scope.as_str(), v.version), v))
        .collect();
    let mut back = Vec::new();
    for then in &checkpoint.key_registry.versions {
        let id = format!("{}/v{}", then.scope, then.version);
        match by_id.get(&(then.scope.as_str(), then.version)) {
            None => back.push(format!("{id} ({} at the checkpoint) is not in the registry", then.state)),
            Some(v) if v.created_at != then.created_at => back.push(format!(
                "{id} was created at {} according to the checkpoint but at {} according to the registry",
                then.created_at, v.created_at
            )),
            Some(v) if rank(&v.state) < rank(&then.state) => back.push(format!(
                "{id} was {} at the checkpoint and is {} now, which no key operation does",
                then.state, v.state
            )),
            Some(_) => {}
        }
    }
    out.push(if !back.is_empty() {
        Finding {
            kind: "registry_differs",
            problem: true,
            message: format!(
                "the key registry went back since the {name}: {}",
                back.join("; ")
            ),
        }
    } else if quiet {
        Finding {
            kind: "registry_differs",
            problem: true,
            message: format!(
                "the key registry differs from the one the {name} saw, yet the audit trail \
                 records nothing since the checkpoint"
            ),
        }
    } else {
        Finding {
            kind: "registry_changed",
            problem: false,
            message: format!("the key registry moved forward since the {name}"),
        }
    });
}

/// The outcome of [`check`].
#[derive(Debug, Clone)]
pub struct CheckpointCheck {
    /// The checkpoints of the file that verified, oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// The audit trail's verification.
    pub trail: ChainSummary,
    /// The checkpoint the findings are against: the newest one the broker
    /// fails, or else the newest one.
    pub against: Checkpoint,
    /// How many checkpoints of the file the broker fails.
    pub failed: usize,
    /// Everything found against `against`; a problem means the broker's
    /// state is older than the checkpoint or lost what it saw.
    pub findings: Vec<Finding>,
}

impl CheckpointCheck {
    /// True when nothing is a problem.
    pub fn is_ok(&self) -> bool {
        self.failed == 0
    }
}

/// Verifies every line of `text` (one checkpoint per line, as the
/// broker's export files hold them) under `key`, reads and verifies the
/// broker's whole audit trail, describes the checkpoints' topics, reads
/// the key registry, and compares the broker with each checkpoint: a
/// broker rolled back and written to since passes the checkpoints it
/// signed after the rollback, but not the older, genuine ones. Needs
/// `audit` on `_audit`; `describe` on the topics and `keys` for the
/// partition and registry checks (without them those are reported as not
/// checked).
///
/// # Errors
///
/// A line that does not verify (named by its number), a file without
/// checkpoints, a trail that is not intact or cannot be read.
pub async fn check(
    client: &Client,
    text: &str,
    key: &CheckpointKey,
    progress: impl FnMut(u64, u64),
) -> Result<CheckpointCheck, CheckpointError> {
    let mut checkpoints = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match verify_line(line, key) {
            Ok(c) => checkpoints.push(c),
            Err(CheckpointError::Malformed(m)) => {
                return Err(CheckpointError::Malformed(format!("line {}: {m}", n + 1)));
            }
            Err(e) => return Err(e),
        }
    }
    if checkpoints.is_empty() {
        return Err(CheckpointError::Malformed(
            "the file holds no checkpoint".into(),
        ));
    }
    let wanted: HashSet<u64> = checkpoints.iter().map(|c| c.audit.sequence).collect();
    let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut deletions: Vec<(u64, String)> = Vec::new();
    let trail = verify_trail_with(client, progress, |r: &AuditRecord| {
        if wanted.contains(&r.seq) {
            hashes.insert(r.seq, r.hash);
        }
        if r.action == "topic.delete"
            && r.outcome == "success"
            && let Some(t) = r.resource.strip_prefix("topic:")
        {
            deletions.push((r.seq, t.to_owned()));
        }
    })
    .await?;
    let admin = client.admin();
    let mut base = Observed {
        audit_sequence: trail.last_sequence,
        ..Observed::default()
    };
    let names: HashSet<&str> = checkpoints
        .iter()
        .flat_map(|c| c.partitions.iter().map(|p| p.topic.as_str()))
        .collect();
    let mut ids: HashMap<String, String> = HashMap::new();
    for name in names {
        match admin.describe_topic(name).await {
            Ok(t) => {
                let ends = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.high_watermark))
                    .collect();
                ids.insert(name.to_owned(), hex::encode(t.topic_id));
                base.topics
                    .insert(name.to_owned(), Some((hex::encode(t.topic_id), ends)));
            }
            Err(ClientError::Broker {
                code: strongbox_protocol::ErrorCode::UnknownTopic,
                ..
            }) => {
                base.topics.insert(name.to_owned(), None);
            }
            Err(e) => {
                base.topics_unchecked = Some(e.to_string());
                break;
            }
        }
    }
    base.registry = registry_now(&admin, &ids).await;
    let mut failed = 0usize;
    let mut worst: Option<(usize, Vec<Finding>)> = None;
    let mut newest: Option<(usize, Vec<Finding>)> = None;
    for (i, c) in checkpoints.iter().enumerate() {
        let mut o = base.clone();
        o.audit_hash_at_checkpoint = hashes.get(&c.audit.sequence).copied();
        o.deleted_since = deletions
            .iter()
            .filter(|(seq, _)| *seq > c.audit.sequence)
            .map(|(_, t)| t.clone())
            .collect();
        let found = compare(c, &o);
        let later = |best: &Option<(usize, Vec<Finding>)>| {
            best.as_ref()
                .is_none_or(|(j, _)| c.time_ms >= checkpoints[*j].time_ms)
        };
        if found.iter().any(|f| f.problem) {
            failed += 1;
            if later(&worst) {
                worst = Some((i, found));
            }
        } else if later(&newest) {
            newest = Some((i, found));
        }
    }
    let (index, findings) = worst
        .or(newest)
        .ok_or_else(|| CheckpointError::Malformed("the file holds no checkpoint".into()))?;
    Ok(CheckpointCheck {
        against: checkpoints[index].clone(),
        checkpoints,
        trail,
        failed,
        findings,
    })
}

/// The broker's key registry, its scopes as labels (`broker`,
/// `topic-<id>`); `ids` maps the topics already described to their ids.
async fn registry_now(
    admin: &crate::Admin,
    ids: &HashMap<String, String>,
) -> Result<Vec<RegistryEntry>, String> {
    let status = admin.key_status(None).await.map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(status.versions.len());
    for v in status.versions {
        // `broker`, `topic:<name>` (a served topic) or `topic-<id>`.
        let scope = match v.scope.strip_prefix("topic:") {
            Some(topic) => match ids.get(topic) {
                Some(id) => format!("topic-{id}"),
                None => {
                    let t = admin
                        .describe_topic(topic)
                        .await
                        .map_err(|e| e.to_string())?;
                    format!("topic-{}", hex::encode(t.topic_id))
                }
            },
            None => v.scope.clone(),
        };
        out.push(RegistryEntry {
            scope,
            version: v.version,
            state: v.state.name().to_owned(),
            created_at: v.created_at,
        });
    }
    Ok(out)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn unbase64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0usize;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'=' if i >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return None,
                _ => u32::try_from(B64.iter().position(|&x| x == c)?).ok()?,
            };
            n = (n << 6) | v;
        }
        out.extend_from_slice(n.to_be_bytes().get(1..4 - pad)?);
    }
    Some(out)
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
mod tests;
