//! `verify --checkpoint FILE`: the data directory against a signed
//! checkpoint (see [`crate::checkpoint`]).
//!
//! FILE holds one checkpoint per line: the export directory's
//! `.latest.json` (one) or `.checkpoints.jsonl` (the history), or lines
//! copied from the logs. Every line is checked, because a directory rolled
//! back and then written to for a while passes the checkpoints its broker
//! signed since, but not the older genuine ones. Signatures are checked
//! with `--checkpoint-key KEY.pem`, or else with the key provider's own
//! checkpoint key; a line that does not verify is a problem and nothing is
//! compared with it. The directory is read once, as
//! [`strongbox_checkpoint::compare`] needs: the `_audit` records (through the
//! same read-only reader as `inspect`), each partition's end and seals
//! (from the check `verify` already made) and the key registry. The report
//! gives the findings against the newest checkpoint the directory fails,
//! or says that it matches them all.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use strongbox_checkpoint::{
    Checkpoint, Finding, Observed, ObservedPartition, ObservedTopic, compare, verify_line,
};
use strongbox_storage::keys::{CheckpointPublicKey, KeyProvider, SegmentKeys};
use strongbox_storage::log::scan_dir;
use strongbox_storage::meta::{MetaStore, TopicEntry};

use super::report::{Item, Report};
use crate::audit::AUDIT_TOPIC;
use crate::audit::record::parse_link;
use crate::checkpoint::registry_entries;
use strongbox_storage::data_dir::partition_dir;

use crate::services::partitions::topics::log_config;

const REFUSED: &str = "do not trust this checkpoint: use the export directory's own copy, \
     check that --checkpoint-key is the broker's public key (strongbox-broker checkpoint \
     public-key), and find out who changed the file";
const UNREADABLE_TRAIL: &str = "the audit trail could not be read to the end: see the \
     findings of the _audit partition";

/// What `--checkpoint` and `--checkpoint-key` give.
#[derive(Debug, Clone)]
pub struct CheckpointArgs {
    /// The checkpoint file.
    pub file: PathBuf,
    /// The public key file, if given.
    pub key: Option<PathBuf>,
}

/// The checkpoints' findings about the directory of `report`.
pub(crate) fn findings(
    args: &CheckpointArgs,
    report: &Report,
    meta: &MetaStore,
    topics: &[TopicEntry],
    keys: Arc<dyn SegmentKeys>,
    provider: &dyn KeyProvider,
) -> Vec<Item> {
    let file = Some(args.file.clone());
    let (checkpoints, mut items) = match load(args, provider) {
        Ok(loaded) => loaded,
        Err(message) => {
            return vec![Item::problem("checkpoint_refused", file, message, REFUSED)];
        }
    };
    if checkpoints.is_empty() {
        return items;
    }
    let wanted: HashSet<u64> = checkpoints.iter().map(|c| c.audit.sequence).collect();
    let base = observe(report, meta, topics, keys, &wanted, &mut items);
    // The newest checkpoint the directory fails says how far back it went.
    let mut failing: Option<(&Checkpoint, Vec<Finding>)> = None;
    let mut failed = 0usize;
    let mut newest_ok: Option<(&Checkpoint, Vec<Finding>)> = None;
    for c in &checkpoints {
        let observed = base.for_checkpoint(c.audit.sequence);
        let found = compare(c, &observed);
        if found.iter().any(|f| f.problem) {
            failed += 1;
            if failing.as_ref().is_none_or(|(f, _)| c.time_ms >= f.time_ms) {
                failing = Some((c, found));
            }
        } else if newest_ok
            .as_ref()
            .is_none_or(|(n, _)| c.time_ms >= n.time_ms)
        {
            newest_ok = Some((c, found));
        }
    }
    let total = checkpoints.len();
    match failing {
        Some((c, found)) => {
            for f in found {
                items.push(to_item(f, &file));
            }
            if total > 1 {
                items.push(Item::problem(
                    "checkpoint_failed",
                    file,
                    format!(
                        "the data directory fails {failed} of the {total} checkpoints in the file; \
                         the findings above are against the newest of them ({})",
                        c.time
                    ),
                    ROLLBACK_SUMMARY,
                ));
            }
        }
        None => {
            if let Some((c, found)) = newest_ok {
                for f in found {
                    items.push(to_item(f, &file));
                }
                items.push(Item::notice(
                    "checkpoint_matched",
                    file,
                    format!(
                        "the data directory is at least as new as all {total} checkpoint(s) in \
                         the file; the newest: {} at {} (audit record {}, {} partitions), \
                         signed by key {}",
                        c.broker_id,
                        c.time,
                        c.audit.sequence,
                        c.partitions.len(),
                        c.key_id
                    ),
                    "nothing",
                ));
            }
        }
    }
    items
}

const ROLLBACK_SUMMARY: &str = "see the findings above";

fn to_item(f: Finding, file: &Option<PathBuf>) -> Item {
    if f.problem {
        Item::problem(f.kind, file.clone(), f.message, f.action)
    } else {
        Item::notice(f.kind, file.clone(), f.message, f.action)
    }
}

/// Reads every line of the file and checks its signature: the checkpoints
/// that verify, and a problem for each line that does not.
fn load(
    args: &CheckpointArgs,
    provider: &dyn KeyProvider,
) -> Result<(Vec<Checkpoint>, Vec<Item>), String> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read checkpoint file {}: {e}", args.file.display()))?;
    let key = match &args.key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --checkpoint-key {}: {e}", path.display()))?;
            CheckpointPublicKey::from_pem(&pem)
                .map_err(|e| format!("--checkpoint-key {}: {e}", path.display()))?
        }
        None => provider
            .checkpoint_key(false)
            .map_err(|e| format!("cannot read the key provider's checkpoint key: {e}"))?
            .ok_or_else(|| {
                "the key provider holds no checkpoint key to check the checkpoint with: give \
                 --checkpoint-key KEY.pem"
                    .to_owned()
            })?,
    };
    let mut checkpoints = Vec::new();
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match verify_line(line, &key) {
            Ok(c) => checkpoints.push(c),
            Err(e) => items.push(Item::problem(
                "checkpoint_refused",
                Some(args.file.clone()),
                format!("{} line {}: {e}", args.file.display(), n + 1),
                REFUSED,
            )),
        }
    }
    if checkpoints.is_empty() && items.is_empty() {
        return Err(format!(
            "checkpoint file {} holds no checkpoint (it is empty)",
            args.file.display()
        ));
    }
    Ok((checkpoints, items))
}

/// What the directory holds, read once for every checkpoint.
struct Base {
    observed: Observed,
    /// Hashes of the audit records the checkpoints name.
    hashes: HashMap<u64, [u8; 32]>,
    /// (sequence, topic) of every topic deletion in the trail.
    deletions: Vec<(u64, String)>,
}

impl Base {
    /// The observation as [`compare`] takes it for a checkpoint of audit
    /// record `at`.
    fn for_checkpoint(&self, at: u64) -> Observed {
        let mut o = self.observed.clone();
        o.audit_hash_at_checkpoint = self.hashes.get(&at).copied();
        o.deleted_since = self
            .deletions
            .iter()
            .filter(|(seq, _)| *seq > at)
            .map(|(_, t)| t.clone())
            .collect();
        o
    }
}

/// What the directory holds, as far as checkpoints speak of it.
fn observe(
    report: &Report,
    meta: &MetaStore,
    topics: &[TopicEntry],
    keys: Arc<dyn SegmentKeys>,
    wanted: &HashSet<u64>,
    items: &mut Vec<Item>,
) -> Base {
    let mut observed = Observed::default();
    let mut by_name: HashMap<String, ObservedTopic> = HashMap::new();
    for p in &report.partitions {
        let topic = by_name
            .entry(p.topic.clone())
            .or_insert_with(|| ObservedTopic {
                topic_id: p.topic_id.clone(),
                partitions: HashMap::new(),
            });
        topic.partitions.insert(
            p.partition,
            ObservedPartition {
                log_start_offset: p.log_start_offset,
                end_offset: p.end_offset,
                seals: Some(p.seal_macs.iter().copied().collect()),
            },
        );
    }
    observed.topics = Ok(by_name);
    observed.registry = meta
        .read(|r| r.kek_versions(None))
        .map(registry_entries)
        .map_err(|e| format!("cannot read the key registry from the metadata store: {e}"));
    let anchored = meta
        .read(|r| r.audit_head())
        .ok()
        .flatten()
        .map_or(0, |h| h.sequence);
    let mut base = Base {
        observed,
        hashes: HashMap::new(),
        deletions: Vec::new(),
    };
    match topics.iter().find(|t| t.name == AUDIT_TOPIC) {
        Some(entry) => {
            let dir = partition_dir(&report.data_dir, &entry.topic_id, 0);
            match read_trail(&dir, entry, keys, wanted) {
                Ok(trail) => {
                    base.observed.audit_sequence = trail.last_sequence;
                    base.hashes = trail.hashes;
                    base.deletions = trail.deletions;
                }
                Err(why) => {
                    // What the metadata store anchors, then.
                    base.observed.audit_sequence = anchored;
                    items.push(Item::problem(
                        "checkpoint_trail_unreadable",
                        Some(dir),
                        format!(
                            "the audit trail cannot be read to compare it with the checkpoint: {why}"
                        ),
                        UNREADABLE_TRAIL,
                    ));
                }
            }
        }
        None => base.observed.audit_sequence = anchored,
    }
    base
}

/// What the trail says, as far as the checkpoints need.
struct Trail {
    last_sequence: u64,
    hashes: HashMap<u64, [u8; 32]>,
    deletions: Vec<(u64, String)>,
}

/// Reads every record of `_audit` (offline, read-only), keeping the hashes
/// of the records in `wanted`.
fn read_trail(
    dir: &Path,
    entry: &TopicEntry,
    keys: Arc<dyn SegmentKeys>,
    wanted: &HashSet<u64>,
) -> Result<Trail, String> {
    let mut trail = Trail {
        last_sequence: 0,
        hashes: HashMap::new(),
        deletions: Vec::new(),
    };
    if !dir.is_dir() {
        return Ok(trail);
    }
    let mut bad: Option<String> = None;
    scan_dir(dir, &log_config(entry, 0), keys, 0, &mut |base, batch| {
        for record in batch.records() {
            match parse_link(&record.value) {
                Ok(link) => {
                    trail.last_sequence = trail.last_sequence.max(link.seq);
                    if wanted.contains(&link.seq) {
                        trail.hashes.insert(link.seq, link.hash);
                    }
                    if let Some(topic) = deleted_topic(&record.value) {
                        trail.deletions.push((link.seq, topic));
                    }
                }
                Err(why) => {
                    bad = Some(format!(
                        "record at offset {} is not an audit record: {why}",
                        base.saturating_add(u64::from(record.index))
                    ));
                    return false;
                }
            }
        }
        true
    })
    .map_err(|e| e.to_string())?;
    match bad {
        Some(why) => Err(why),
        None => Ok(trail),
    }
}

/// The topic a `topic.delete` record deleted.
fn deleted_topic(value: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(value).ok()?;
    if v.get("action")?.as_str()? != "topic.delete" || v.get("outcome")?.as_str()? != "success" {
        return None;
    }
    v.get("resource")?
        .as_str()?
        .strip_prefix("topic:")
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_deletions_are_read_from_records() {
        let record = br#"{"seq":9,"time":"t","principal":"p","action":"topic.delete","resource":"topic:demo.x","outcome":"success","details":{},"prev_hash":"00","hash":"00"}"#;
        assert_eq!(deleted_topic(record).as_deref(), Some("demo.x"));
        let denied = br#"{"action":"topic.delete","resource":"topic:demo.x","outcome":"denied"}"#;
        assert_eq!(deleted_topic(denied), None);
        let other = br#"{"action":"topic.create","resource":"topic:demo.x","outcome":"success"}"#;
        assert_eq!(deleted_topic(other), None);
    }
}
