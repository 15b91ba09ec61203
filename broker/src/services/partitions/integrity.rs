//! Offsets are never reused: the checks a partition's log passes at open
//! before it takes writes, and the operator's way back when it does not.
//!
//! The metadata store records each partition's durable end (see
//! [`super::partition_watch`]). At open the log is compared with that
//! record, with the key registry (the segments it knows for the partition)
//! and with the offsets consumer groups committed. A log that ends before
//! its record, lacks a segment the registry knows, or ends before a
//! committed offset was cut short, replaced by an older copy, or lost its
//! directory: appending to it would hand out offsets that were already
//! acknowledged and read. Such a partition opens **read-only** (reads work,
//! appends get `partition_read_only`), and the broker audits it.
//!
//! An operator who accepts the loss runs `strongbox topic recover TOPIC
//! --partition P --accept-loss` ([`recover`]): the registry forgets the
//! missing segments, offsets missing from the middle of the log become
//! accepted gaps (gap markers), the log moves its next offset past every offset it
//! ever acknowledged (and every committed offset), the record is raised to
//! match, and writes resume. The offsets in between are a gap that readers
//! read across.
//!
//! The broker's own audit topic cannot wait for an operator: the trail must
//! go on recording, and its hash chain and anchored head already detect a
//! cut and record it (`audit.chain.broken`, see `audit/writer.rs`). Its loss
//! is accepted at open, the same way: offsets still move only forward.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use strongbox_protocol::ErrorCode;
use strongbox_protocol::clock::now_ms;
use strongbox_protocol::frames::admin::AdminResponse;
use strongbox_storage::keys::{SegmentKeyContext, SegmentKeys};
use strongbox_storage::log::PartitionLog;
use strongbox_storage::meta::{MetaError, MetaStore, TopicEntry};

use crate::audit::{AuditAction, AuditEvent, topic_resource};
use crate::error::BrokerError;
use crate::services::BrokerState;
use crate::services::caller::ConnCtx;
use crate::services::partitions::partition::Partition;
use crate::services::partitions::topics::{Topic, kek_scope};

/// The audit event of a loss accepted for partition `index` of `topic`.
pub fn recovered_event(topic: &str, index: u32, done: &Recovered) -> AuditEvent {
    AuditEvent::success(AuditAction::PartitionRecover, topic_resource(topic))
        .detail("partition", index)
        .detail("log_end", done.end)
        .detail("resume_offset", done.resume_offset)
        .detail("forgotten_segments", done.forgotten_segments.clone())
        .detail(
            "losses",
            done.losses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        )
}

/// What a partition lost, as found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The partition's directory was gone. It is not created again until
    /// the loss is accepted: the partition serves nothing and takes no
    /// writes.
    DirectoryMissing,
    /// The log ends before the durable end on record.
    Shorter {
        /// Where the log ends.
        end: u64,
        /// The recorded durable end.
        recorded: u64,
    },
    /// Segments the key registry knows for the partition are not in the log.
    MissingSegments {
        /// Their ids, hex.
        ids: Vec<String>,
    },
    /// Offsets are missing from the middle of the log: the segment(s)
    /// holding them are gone.
    MissingOffsets {
        /// The first missing offset.
        from: u64,
        /// The base offset of the segment after them.
        to: u64,
    },
    /// A consumer group committed an offset past the log's end.
    CommittedBeyondEnd {
        /// The group.
        group: String,
        /// Its committed offset.
        offset: u64,
        /// Where the log ends.
        end: u64,
    },
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DirectoryMissing => {
                f.write_str("its directory is missing (it was not created again)")
            }
            Self::Shorter { end, recorded } => write!(
                f,
                "its log ends at offset {end}, but offsets up to {recorded} were acknowledged"
            ),
            Self::MissingSegments { ids } => write!(
                f,
                "{} segment(s) the key registry knows are missing ({})",
                ids.len(),
                ids.join(", ")
            ),
            Self::MissingOffsets { from, to } => {
                write!(f, "offsets {from}..{to} are missing (a segment is gone)")
            }
            Self::CommittedBeyondEnd { group, offset, end } => write!(
                f,
                "consumer group {group} committed offset {offset}, past the log's end {end}"
            ),
        }
    }
}

/// The read-only status message for `losses`, with what to do.
pub fn read_only_reason(topic: &str, partition: u32, losses: &[Loss]) -> String {
    let what: Vec<String> = losses.iter().map(ToString::to_string).collect();
    format!(
        "read-only: {} (restore the partition from a backup, or accept the loss with \
         `strongbox topic recover {topic} --partition {partition} --accept-loss`)",
        what.join("; ")
    )
}

/// Compares an opened log with what the metadata store says about its
/// partition. `dir_existed` tells whether the partition directory was there
/// before the log opened (and created it); `committed` are the groups'
/// committed offsets for the partition.
///
/// # Errors
///
/// The metadata store cannot be read.
pub fn check(
    meta: &MetaStore,
    entry: &TopicEntry,
    index: u32,
    log: &PartitionLog,
    dir_existed: bool,
    committed: &[(String, u64)],
) -> Result<Vec<Loss>, MetaError> {
    let (recorded, known) = meta.read(|r| {
        Ok::<_, MetaError>((
            r.partition_end(&entry.topic_id, index)?,
            r.partition_segment_keks(&entry.topic_id, index)?,
        ))
    })?;
    let end = log.log_end_offset();
    let mut losses = Vec::new();
    let recorded_end = recorded.map_or(0, |r| r.durable_end);
    if !dir_existed && (recorded_end > 0 || !known.is_empty()) {
        losses.push(Loss::DirectoryMissing);
    }
    if end < recorded_end {
        losses.push(Loss::Shorter {
            end,
            recorded: recorded_end,
        });
    }
    let missing = missing_segments(log, known.iter().map(|(id, _)| *id));
    if !missing.is_empty() {
        losses.push(Loss::MissingSegments {
            ids: missing.iter().map(hex::encode).collect(),
        });
    }
    for (from, to) in log.missing_ranges() {
        losses.push(Loss::MissingOffsets { from, to });
    }
    for (group, offset) in committed {
        if *offset > end {
            losses.push(Loss::CommittedBeyondEnd {
                group: group.clone(),
                offset: *offset,
                end,
            });
        }
    }
    Ok(losses)
}

/// The segment ids of `known` that `log` does not hold.
fn missing_segments(log: &PartitionLog, known: impl Iterator<Item = [u8; 16]>) -> Vec<[u8; 16]> {
    let present: HashSet<[u8; 16]> = log.segments().iter().map(|s| s.segment_id).collect();
    known.filter(|id| !present.contains(id)).collect()
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Where the log ended.
    pub end: u64,
    /// Where writing continues.
    pub resume_offset: u64,
    /// Registry entries of missing segments that were forgotten.
    pub forgotten_segments: Vec<String>,
    /// What was lost, as checked just before.
    pub losses: Vec<Loss>,
}

/// Lets read-only partition `p` of `topic` take writes again, accepting
/// the loss (see [`accept_loss`]). Runs on the blocking pool, under the
/// admin lock.
///
/// # Errors
///
/// `conflict` when the partition is not read-only; storage and metadata
/// failures.
pub fn recover(
    state: &BrokerState,
    topic: &Topic,
    p: &Arc<Partition>,
) -> Result<Recovered, BrokerError> {
    if p.read_only_reason().is_none() {
        return Err(BrokerError::new(
            ErrorCode::Conflict,
            format!(
                "{}/{} is not read-only; there is nothing to recover",
                topic.name(),
                p.index
            ),
        ));
    }
    let done = accept_loss(
        &state.meta,
        state.keys.manager().as_ref(),
        &topic.entry,
        p.index,
        p.log(),
    )?;
    p.set_read_only(None);
    Ok(done)
}

/// Accepts what partition `index` of `entry` lost: forgets the registry
/// entries of its missing segments, moves the log past the highest offset
/// it ever acknowledged or a group committed, and raises the record to
/// match.
///
/// # Errors
///
/// Storage and metadata failures.
pub fn accept_loss(
    meta: &MetaStore,
    keys: &dyn SegmentKeys,
    entry: &TopicEntry,
    index: u32,
    log: &PartitionLog,
) -> Result<Recovered, BrokerError> {
    let committed = committed_offsets(meta, &entry.name, index)
        .map_err(|e| BrokerError::internal("reading committed offsets", e))?;
    let losses = check(meta, entry, index, log, true, &committed)
        .map_err(|e| BrokerError::internal("reading the partition's records", e))?;
    let recorded = meta
        .read(|r| r.partition_end(&entry.topic_id, index))
        .map_err(|e: MetaError| BrokerError::internal("reading the partition's durable end", e))?
        .map_or(0, |r| r.durable_end);
    let end = log.log_end_offset();
    let resume_offset = committed
        .iter()
        .map(|(_, o)| *o)
        .chain([recorded, end])
        .max()
        .unwrap_or(end);

    let known = meta
        .read(|r| r.partition_segment_keks(&entry.topic_id, index))
        .map_err(|e: MetaError| BrokerError::internal("reading the key registry", e))?;
    let missing = missing_segments(log, known.iter().map(|(id, _)| *id));
    let scope = kek_scope(entry);
    for id in &missing {
        let ctx = SegmentKeyContext {
            topic_id: entry.topic_id,
            partition: index,
            segment_id: *id,
            scope: scope.clone(),
        };
        keys.forget(&ctx)
            .map_err(|e| BrokerError::internal("forgetting a lost segment's key", e))?;
    }
    log.accept_missing()
        .map_err(|e| BrokerError::internal("accepting the offsets missing from the log", e))?;
    // A log whose directory vanished gets it back here, durably, even when
    // nothing moves (skip_to creates it).
    if resume_offset > end || log.directory_missing() {
        log.skip_to(resume_offset)
            .map_err(|e| BrokerError::internal("moving the log past the lost offsets", e))?;
    }
    meta.write(|b| b.raise_partition_end(&entry.topic_id, index, resume_offset, now_ms()))
        .map_err(|e: MetaError| BrokerError::internal("recording the partition's new end", e))?;
    Ok(Recovered {
        end,
        resume_offset,
        forgotten_segments: missing.iter().map(hex::encode).collect(),
        losses,
    })
}

/// Serves `TopicRecover` (the caller holds `admin` on the topic): checks
/// the request, recovers the partition under the admin lock, audits it,
/// and answers with the topic as it is now.
///
/// # Errors
///
/// `invalid_request` without `accept_loss`; `unknown_topic`,
/// `unknown_partition`, `partition_unavailable`; as [`recover`].
pub async fn handle_recover(
    ctx: &ConnCtx,
    topic: &str,
    partition: u32,
    accept_loss: bool,
) -> Result<AdminResponse, BrokerError> {
    let state = &ctx.state;
    if !accept_loss {
        return Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!(
                "recovering {topic}/{partition} accepts the loss of the records it no longer \
                 has; pass --accept-loss to confirm"
            ),
        ));
    }
    let _guard = state.admin_lock.lock().await;
    let t = state.partitions.topics().require(topic)?;
    let p = t.partition(partition)?.clone();
    let (state2, t2, p2) = (state.clone(), t.clone(), p.clone());
    let done = tokio::task::spawn_blocking(move || recover(&state2, &t2, &p2))
        .await
        .map_err(|e| BrokerError::internal("recovering a partition", e))??;
    tracing::warn!(target: "strongbox::audit", principal = %ctx.principal, topic, partition, end = done.end, resume_offset = done.resume_offset, "read-only partition recovered; the loss was accepted");
    state
        .audit
        .record(recovered_event(topic, partition, &done).principal(&ctx.principal));
    state
        .partitions
        .watch()
        .set_state(topic, partition, p.state().0);
    Ok(AdminResponse::Topic(t.describe()))
}

/// The offsets consumer groups committed for one partition.
///
/// # Errors
///
/// The metadata store cannot be read.
pub fn committed_offsets(
    meta: &MetaStore,
    topic: &str,
    partition: u32,
) -> Result<Vec<(String, u64)>, MetaError> {
    meta.read(|r| {
        let mut out = Vec::new();
        for group in r.groups()? {
            if let Some(offset) = r.offset(&group, topic, partition)? {
                out.push((group, offset));
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
    use strongbox_protocol::model::{Durability, TopicConfig};
    use strongbox_storage::keys::{FileKeyProvider, KeyManager};

    struct Fixture {
        _tmp: tempfile::TempDir,
        meta: MetaStore,
        keys: Arc<KeyManager>,
        entry: TopicEntry,
        dir: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let meta = MetaStore::open(tmp.path().join("meta.redb")).expect("meta");
        let provider = FileKeyProvider::open(tmp.path().join("keys")).expect("provider");
        let keys = Arc::new(KeyManager::new(Arc::new(provider), meta.clone(), 16));
        let entry = TopicEntry {
            name: "orders".into(),
            topic_id: [3; 16],
            created_at: 0,
            config: TopicConfig {
                partitions: 1,
                durability: Durability::Fsync,
                retention_ms: None,
                retention_bytes: None,
                segment_bytes: None,
                segment_ms: None,
                dedicated_kek: false,
            },
        };
        let dir = tmp.path().join("p0");
        Fixture {
            _tmp: tmp,
            meta,
            keys,
            entry,
            dir,
        }
    }

    fn open(f: &Fixture) -> PartitionLog {
        let config = crate::services::partitions::topics::log_config(&f.entry, 0);
        PartitionLog::open(&f.dir, config, f.keys.clone()).expect("open")
    }

    fn append(log: &PartitionLog, n: u64) {
        for i in 0..n {
            let mut b = BatchBuilder::new(1);
            b.push(1, None, &[], format!("{i}").as_bytes())
                .expect("push");
            let batch = RecordBatch::parse(b.finish().expect("finish")).expect("parse");
            log.append(&batch)
                .expect("append")
                .durable
                .wait()
                .expect("durable");
        }
    }

    #[test]
    fn each_kind_of_loss_is_found_and_accepting_it_moves_past_all_of_them() {
        let f = fixture();
        let log = open(&f);
        append(&log, 5);
        log.roll().expect("roll");
        append(&log, 2);
        let ids: Vec<[u8; 16]> = log.segments().iter().map(|s| s.segment_id).collect();
        log.close().expect("close");
        let log = open(&f);
        assert_eq!(
            check(&f.meta, &f.entry, 0, &log, true, &[]).expect("check"),
            vec![],
            "an intact log with no record"
        );

        // What the broker recorded, and what consumers committed, beyond
        // what the log now holds; the newest segment lost.
        f.meta
            .write(|b| b.raise_partition_end(&f.entry.topic_id, 0, 9, 1))
            .expect("record");
        drop(log);
        let newest = f.dir.join("00000000000000000005.log");
        std::fs::remove_file(&newest).expect("remove");
        std::fs::remove_file(newest.with_extension("key")).expect("remove");
        std::fs::remove_file(newest.with_extension("index")).expect("remove");
        let log = open(&f);
        assert_eq!(log.log_end_offset(), 5);
        let committed = vec![("billing".to_owned(), 7)];
        let losses = check(&f.meta, &f.entry, 0, &log, false, &committed).expect("check");
        assert_eq!(
            losses,
            vec![
                Loss::DirectoryMissing,
                Loss::Shorter {
                    end: 5,
                    recorded: 9
                },
                Loss::MissingSegments {
                    ids: vec![hex::encode(ids[1])]
                },
                Loss::CommittedBeyondEnd {
                    group: "billing".into(),
                    offset: 7,
                    end: 5
                },
            ]
        );

        f.meta
            .write(|b| b.commit_offset("billing", "orders", 0, 12))
            .expect("commit");
        let done = accept_loss(&f.meta, f.keys.as_ref(), &f.entry, 0, &log).expect("accept");
        assert_eq!(done.resume_offset, 12, "after every committed offset too");
        assert_eq!(done.forgotten_segments, vec![hex::encode(ids[1])]);
        assert_eq!(log.log_end_offset(), 12);
        append(&log, 1);
        assert_eq!(log.log_end_offset(), 13);
        let committed = committed_offsets(&f.meta, "orders", 0).expect("offsets");
        assert_eq!(
            check(&f.meta, &f.entry, 0, &log, true, &committed).expect("check"),
            vec![],
            "nothing is lost any more"
        );
        log.close().expect("close");
        let log = open(&f);
        assert_eq!(
            check(&f.meta, &f.entry, 0, &log, true, &committed).expect("check"),
            vec![],
            "and stays so after a restart"
        );
    }

    #[test]
    fn a_segment_gone_from_the_middle_is_a_loss_readers_meet_until_it_is_accepted() {
        let f = fixture();
        let log = open(&f);
        for _ in 0..3 {
            append(&log, 4);
            log.roll().expect("roll");
        }
        append(&log, 1);
        let ids: Vec<[u8; 16]> = log.segments().iter().map(|s| s.segment_id).collect();
        log.close().expect("close");
        for ext in ["log", "key", "index"] {
            std::fs::remove_file(f.dir.join(format!("00000000000000000004.{ext}")))
                .expect("remove");
        }

        let log = open(&f);
        assert_eq!(log.log_end_offset(), 13, "the log opens, its end intact");
        assert_eq!(log.missing_ranges(), vec![(4, 8)]);
        let losses = check(&f.meta, &f.entry, 0, &log, true, &[]).expect("check");
        assert_eq!(
            losses,
            vec![
                Loss::MissingSegments {
                    ids: vec![hex::encode(ids[1])]
                },
                Loss::MissingOffsets { from: 4, to: 8 },
            ]
        );
        // The records before the gap read; a read into it names the range;
        // the records after it read.
        let before = log.read(0, 1 << 20).expect("read before");
        assert_eq!(
            before.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        for from in [4, 6] {
            match log.read(from, 1 << 20) {
                Err(e) => assert_eq!(e.damaged_range(), Some((from, Some(8))), "{e}"),
                Ok(b) => panic!(
                    "read {} batches from {from} across the lost segment",
                    b.len()
                ),
            }
        }
        assert_eq!(
            log.read(8, 1 << 20)
                .expect("read after")
                .first()
                .map(|(o, _)| *o),
            Some(8)
        );

        let done = accept_loss(&f.meta, f.keys.as_ref(), &f.entry, 0, &log).expect("accept");
        assert_eq!(
            done.resume_offset, 13,
            "the end did not move: nothing past it was lost"
        );
        assert_eq!(done.forgotten_segments, vec![hex::encode(ids[1])]);
        assert_eq!(log.gaps(), vec![(4, 8)]);
        assert!(log.missing_ranges().is_empty());
        assert_eq!(
            log.read(4, 1 << 20)
                .expect("read across")
                .first()
                .map(|(o, _)| *o),
            Some(8)
        );
        append(&log, 1);
        assert_eq!(log.log_end_offset(), 14);
        log.close().expect("close");
        let log = open(&f);
        assert_eq!(
            check(&f.meta, &f.entry, 0, &log, true, &[]).expect("check"),
            vec![],
            "the accepted gap holds after a restart"
        );
        assert_eq!(log.gaps(), vec![(4, 8)]);
    }

    #[test]
    fn the_reason_names_every_loss_and_the_command() {
        let text = read_only_reason(
            "orders",
            2,
            &[
                Loss::Shorter {
                    end: 10,
                    recorded: 40,
                },
                Loss::CommittedBeyondEnd {
                    group: "billing".into(),
                    offset: 30,
                    end: 10,
                },
            ],
        );
        assert!(
            text.starts_with("read-only: its log ends at offset 10"),
            "{text}"
        );
        assert!(text.contains("up to 40 were acknowledged"), "{text}");
        assert!(text.contains("billing committed offset 30"), "{text}");
        assert!(
            text.contains("strongbox topic recover orders --partition 2 --accept-loss"),
            "{text}"
        );
    }
}
