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

/// The checkpoint public key (from `strongbox-broker checkpoint
/// public-key`).
pub use strongbox_checkpoint::CheckpointPublicKey as CheckpointKey;
pub use strongbox_checkpoint::{
    AuditMark, Checkpoint, CheckpointError as LineError, FORMAT, Finding, Observed,
    ObservedPartition, ObservedTopic, PartitionMark, PublicKeyError, RegistryEntry, RegistryMark,
    SealMark, VERSION, compare, registry_digest, verify_line,
};

use crate::audit::{AuditRecord, ChainSummary, VerifyError, verify_trail_with};
use crate::connection::Client;
use crate::error::ClientError;

/// Why a checkpoint file is refused or cannot be checked.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The public key file is not a P-256 public key.
    #[error(transparent)]
    Key(#[from] PublicKeyError),
    /// A line of the file is not a checkpoint signed by the key.
    #[error("line {line}: {source}")]
    Line {
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        source: LineError,
    },
    /// The file holds no checkpoint.
    #[error("not a signed checkpoint: the file holds no checkpoint")]
    Empty,
    /// The audit trail is not intact, or cannot be read.
    #[error(transparent)]
    Trail(#[from] VerifyError),
    /// The broker refused a request or the connection failed.
    #[error(transparent)]
    Client(#[from] ClientError),
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
        let c = verify_line(line, key).map_err(|source| CheckpointError::Line {
            line: n + 1,
            source,
        })?;
        checkpoints.push(c);
    }
    if checkpoints.is_empty() {
        return Err(CheckpointError::Empty);
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
    let mut topics: HashMap<String, ObservedTopic> = HashMap::new();
    let mut unchecked: Option<String> = None;
    for name in names {
        match admin.describe_topic(name).await {
            Ok(t) => {
                // The broker does not serve seals: they are checked offline
                // by `strongbox-broker verify --checkpoint`.
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let seen = ObservedPartition {
                            log_start_offset: p.log_start_offset,
                            end_offset: Some(p.high_watermark),
                            seals: None,
                        };
                        (p.partition, seen)
                    })
                    .collect();
                ids.insert(name.to_owned(), hex::encode(t.topic_id));
                let topic_id = hex::encode(t.topic_id);
                topics.insert(
                    name.to_owned(),
                    ObservedTopic {
                        topic_id,
                        partitions,
                    },
                );
            }
            // Absent from the map: the broker does not have it.
            Err(ClientError::Broker {
                code: strongbox_protocol::ErrorCode::UnknownTopic,
                ..
            }) => {}
            Err(e) => {
                unchecked = Some(e.to_string());
                break;
            }
        }
    }
    base.topics = unchecked.map_or(Ok(topics), Err);
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
    let (index, findings) = worst.or(newest).ok_or(CheckpointError::Empty)?;
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
