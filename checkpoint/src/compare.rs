//! An observed state against a signed checkpoint: is it at least as new,
//! and does it hold what the checkpoint saw?
//!
//! Everything the broker does after a checkpoint only moves forward: the
//! audit trail grows from the recorded head, partitions grow (retention
//! removes from the start, never the end), a seal never changes, and key
//! versions only move along their lifecycle (active, decrypt-only,
//! compromised, destroyed). So against a checkpoint, a genuine state holds
//! the recorded audit record with the recorded hash, ends each partition
//! at or after the recorded offset with the recorded seal in place (or
//! deleted by retention), and has every recorded key version in the same
//! or a later state. An older copy fails at least one of these: the
//! findings name which, precisely.
//!
//! A topic deleted after the checkpoint is gone legitimately when the
//! audit trail after the checkpoint records its deletion.
//!
//! The observed state comes from a data directory (`strongbox-broker
//! verify --checkpoint`, which sees segment seals) or from a running broker
//! (`strongbox audit verify --checkpoint`, which does not): [`Observed`]
//! says what was seen and what could not be.

use std::collections::{HashMap, HashSet};

use crate::format::{Checkpoint, PartitionMark, RegistryEntry, registry_digest};

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A short kind: `rollback`, `audit_rewritten`, `partition_behind`,
    /// `seal_differs`, `seal_missing`, `topic_missing`, `topic_recreated`,
    /// `registry_differs`; or, as notices, `ahead`, `topic_deleted`,
    /// `registry_changed`, `not_checked`.
    pub kind: &'static str,
    /// True for a problem; false for a notice.
    pub problem: bool,
    /// What was found.
    pub message: String,
    /// What to do.
    pub action: &'static str,
}

/// What was seen of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPartition {
    /// The first offset it holds.
    pub log_start_offset: u64,
    /// Where it ends, when that could be determined.
    pub end_offset: Option<u64>,
    /// The MAC of each sealed segment, by base offset; `None` where seals
    /// cannot be seen (a running broker does not serve them).
    pub seals: Option<HashMap<u64, [u8; 32]>>,
}

/// What was seen of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedTopic {
    /// Its id (hex).
    pub topic_id: String,
    /// Its partitions, by index.
    pub partitions: HashMap<u32, ObservedPartition>,
}

/// What a data directory or a broker holds, as far as a checkpoint speaks
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The newest audit record's sequence number (0 without one).
    pub audit_sequence: u64,
    /// The hash of the audit record with the checkpoint's sequence number,
    /// when the trail holds that record.
    pub audit_hash_at_checkpoint: Option<[u8; 32]>,
    /// Topics whose deletion the trail records after the checkpoint's
    /// record.
    pub deleted_since: HashSet<String>,
    /// The topics there are, by name (a topic absent from the map does not
    /// exist); or why they could not be read.
    pub topics: Result<HashMap<String, ObservedTopic>, String>,
    /// The key registry, or why it could not be read.
    pub registry: Result<Vec<RegistryEntry>, String>,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            audit_sequence: 0,
            audit_hash_at_checkpoint: None,
            deleted_since: HashSet::new(),
            topics: Ok(HashMap::new()),
            registry: Err("not read".into()),
        }
    }
}

const ROLLBACK: &str = "the data directory is older than the checkpoint: it was rolled back or \
     restored from an older copy. Find out who replaced it and when (the HSM's and the \
     host's logs); restore the newest copy you trust; data written after that copy was \
     taken is lost";
const PARTITION_BEHIND: &str = "records the checkpoint saw are missing from the end of the \
     partition: restore the partition (or the whole data directory) from a copy at least as \
     new as the checkpoint";
const SEAL: &str = "a segment the checkpoint saw sealed is not the one on disk: restore it \
     from a copy at least as new as the checkpoint";
const REGISTRY: &str = "the key registry in the metadata store is not the one the checkpoint \
     saw: a key version was brought back or removed. Restore the metadata store from a copy at \
     least as new as the checkpoint, and check the HSM for the key versions it still holds";
const NOTHING: &str = "nothing: this is expected after the checkpoint";
const NOT_CHECKED: &str = "remove the cause named (a missing permission, an unreadable \
     metadata store) and check again to have this part compared";

/// The findings of `observed` against `checkpoint`.
pub fn compare(checkpoint: &Checkpoint, observed: &Observed) -> Vec<Finding> {
    let mut out = Vec::new();
    let name = format!(
        "checkpoint of {} at {}",
        checkpoint.broker_id, checkpoint.time
    );
    let s = checkpoint.audit.sequence;
    let quiet = audit(checkpoint, observed, &name, &mut out);
    match &observed.topics {
        Ok(topics) => {
            for mark in &checkpoint.partitions {
                partition(mark, topics, observed, quiet, &name, &mut out);
            }
        }
        Err(why) => out.push(not_checked(format!(
            "partition ends were not checked: {why}"
        ))),
    }
    match &observed.registry {
        Ok(now) => registry(checkpoint, now, quiet, &name, &mut out),
        Err(why) => out.push(not_checked(format!(
            "the key registry was not checked: {why}"
        ))),
    }
    if !out.iter().any(|f| f.problem) && observed.audit_sequence > s {
        out.push(Finding {
            kind: "ahead",
            problem: false,
            message: format!(
                "the audit trail is {} record(s) past the {name} (record {s})",
                observed.audit_sequence - s
            ),
            action: NOTHING,
        });
    }
    out
}

/// The audit head; returns true when nothing was recorded since the
/// checkpoint (so nothing may have changed).
fn audit(checkpoint: &Checkpoint, observed: &Observed, name: &str, out: &mut Vec<Finding>) -> bool {
    let s = checkpoint.audit.sequence;
    let h = observed.audit_sequence;
    if h < s {
        out.push(Finding {
            kind: "rollback",
            problem: true,
            message: format!(
                "the audit trail ends at record {h}, but the {name} recorded record {s}: the \
                 data directory is {} audit record(s) older than the checkpoint (rolled back \
                 or restored from an older copy)",
                s - h
            ),
            action: ROLLBACK,
        });
        return false;
    }
    if s == 0 {
        return h == 0;
    }
    match observed.audit_hash_at_checkpoint {
        Some(hash) if hash == checkpoint.audit.hash => {}
        Some(hash) => out.push(Finding {
            kind: "audit_rewritten",
            problem: true,
            message: format!(
                "audit record {s} has hash {}, but the {name} recorded {}: the trail was \
                 rewritten, or the data directory was rolled back and written to since",
                hex::encode(hash),
                hex::encode(checkpoint.audit.hash)
            ),
            action: ROLLBACK,
        }),
        None => out.push(Finding {
            kind: "audit_rewritten",
            problem: true,
            message: format!(
                "the audit trail has no readable record {s}, which the {name} recorded (hash {})",
                hex::encode(checkpoint.audit.hash)
            ),
            action: ROLLBACK,
        }),
    }
    h == s
}

fn not_checked(message: String) -> Finding {
    Finding {
        kind: "not_checked",
        problem: false,
        message,
        action: NOT_CHECKED,
    }
}

fn partition(
    mark: &PartitionMark,
    topics: &HashMap<String, ObservedTopic>,
    observed: &Observed,
    quiet: bool,
    name: &str,
    out: &mut Vec<Finding>,
) {
    let label = format!("{}/{}", mark.topic, mark.partition);
    let deleted = observed.deleted_since.contains(&mark.topic) && !quiet;
    let topic = match topics.get(&mark.topic) {
        Some(t) if t.topic_id == mark.topic_id => t,
        Some(_) if deleted => {
            out.push(Finding {
                kind: "topic_deleted",
                problem: false,
                message: format!(
                    "{label} (topic id {}) was in the {name}; the topic was deleted and \
                     created again since",
                    mark.topic_id
                ),
                action: NOTHING,
            });
            return;
        }
        Some(t) => {
            out.push(Finding {
                kind: "topic_recreated",
                problem: true,
                message: format!(
                    "{} has topic id {} now but had {} in the {name}, and the audit trail \
                     records no deletion of it since",
                    mark.topic, t.topic_id, mark.topic_id
                ),
                action: PARTITION_BEHIND,
            });
            return;
        }
        None if deleted => {
            out.push(Finding {
                kind: "topic_deleted",
                problem: false,
                message: format!(
                    "{label} (topic id {}) was in the {name}; the audit trail records the \
                     topic's deletion since",
                    mark.topic_id
                ),
                action: NOTHING,
            });
            return;
        }
        None => {
            out.push(Finding {
                kind: "topic_missing",
                problem: true,
                message: format!(
                    "{label} (topic id {}) was in the {name} at offset {}, but the topic is \
                     gone and the audit trail records no deletion of {} after the checkpoint",
                    mark.topic_id, mark.end_offset, mark.topic
                ),
                action: PARTITION_BEHIND,
            });
            return;
        }
    };
    // A partition that was not seen (its end unknown) cannot be checked.
    let Some(p) = topic.partitions.get(&mark.partition) else {
        return;
    };
    if let Some(end) = p.end_offset
        && end < mark.end_offset
    {
        let crash = if mark.durability == "fsync" {
            String::new()
        } else {
            format!(
                " (the topic's durability is {}: a crash also loses records not yet synced, \
                 so compare with a checkpoint taken at shutdown)",
                mark.durability
            )
        };
        out.push(Finding {
            kind: "partition_behind",
            problem: true,
            message: format!(
                "{label} ends at offset {end}, before offset {} that the {name} recorded: {} \
                 record(s) are missing from its end{crash}",
                mark.end_offset,
                mark.end_offset - end
            ),
            action: PARTITION_BEHIND,
        });
    }
    let (Some(seal), Some(seals)) = (&mark.last_seal, &p.seals) else {
        return;
    };
    match seals.get(&seal.base_offset) {
        Some(mac) if *mac == seal.mac => {}
        Some(mac) => out.push(Finding {
            kind: "seal_differs",
            problem: true,
            message: format!(
                "segment {label}@{} is sealed with MAC {}, but the {name} saw MAC {}: it is \
                 another copy of the segment",
                seal.base_offset,
                hex::encode(mac),
                hex::encode(seal.mac)
            ),
            action: SEAL,
        }),
        // Retention deletes whole segments from the start: fine.
        None if p.log_start_offset >= seal.next_offset => {}
        None => out.push(Finding {
            kind: "seal_missing",
            problem: true,
            message: format!(
                "segment {label}@{} (offsets {} to {}) was sealed when the {name} was taken, \
                 but the data directory has no sealed segment there",
                seal.base_offset,
                seal.base_offset,
                seal.next_offset.saturating_sub(1)
            ),
            action: SEAL,
        }),
    }
}

/// The position of a state in the lifecycle: a version's state only ever
/// moves to an equal or later one.
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
    let mut backwards = Vec::new();
    for then in &checkpoint.key_registry.versions {
        let id = format!("{}/v{}", then.scope, then.version);
        match by_id.get(&(then.scope.as_str(), then.version)) {
            None => backwards.push(format!(
                "{id} ({} at the checkpoint) is not in the registry",
                then.state
            )),
            Some(v) if v.created_at != then.created_at => backwards.push(format!(
                "{id} was created at {} according to the checkpoint but at {} according to \
                 the registry",
                then.created_at, v.created_at
            )),
            Some(v) if rank(&v.state) < rank(&then.state) => backwards.push(format!(
                "{id} was {} at the checkpoint and is {} now, which no key operation does",
                then.state, v.state
            )),
            Some(_) => {}
        }
    }
    if !backwards.is_empty() {
        out.push(Finding {
            kind: "registry_differs",
            problem: true,
            message: format!(
                "the key registry went back since the {name}: {}",
                backwards.join("; ")
            ),
            action: REGISTRY,
        });
    } else if quiet {
        out.push(Finding {
            kind: "registry_differs",
            problem: true,
            message: format!(
                "the key registry differs from the one the {name} saw (digest {} against {}), \
                 yet the audit trail records nothing since the checkpoint",
                hex::encode(registry_digest(now)),
                hex::encode(checkpoint.key_registry.digest)
            ),
            action: REGISTRY,
        });
    } else {
        out.push(Finding {
            kind: "registry_changed",
            problem: false,
            message: format!(
                "the key registry moved forward since the {name} (new versions or later \
                 states; the audit trail records the key operations)"
            ),
            action: NOTHING,
        });
    }
}

#[cfg(test)]
mod tests;
