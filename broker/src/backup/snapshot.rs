//! The broker's side of a backup: one consistent instant of a running
//! broker, pinned into a staging directory inside its data directory.
//!
//! The instant must agree across the metadata store and every partition:
//! the key registry records exactly the segments that are pinned, the
//! audit head is no further than the audit topic, producer and group
//! states are no further than the logs. So, in order:
//!
//! 1. the caller holds the admin lock: no topic is created or deleted;
//! 2. every partition is frozen (its writer lock, in topic and partition
//!    order): no append, roll, retention or rewrap. Segment creation and
//!    deletion, the only changes to the segment set, happen under these
//!    locks, and each records or forgets its key registry entry before it
//!    releases its lock;
//! 3. a metadata snapshot (a redb read transaction) is opened: it sees the
//!    registry of exactly the frozen segment set;
//! 4. each partition's files are hard-linked into the staging directory
//!    with the length of their complete frames (see
//!    `strongbox_storage::log::LogFreeze`);
//! 5. the freezes end (appends resume: they waited for a few link calls),
//!    and the snapshot is written to `meta.redb` in the staging directory
//!    while the broker carries on.
//!
//! A partition whose log could not be opened is not written to by the
//! broker: its files are linked as they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strongbox_storage::data_dir::partition_dir;
use strongbox_storage::log::{LogFreeze, PinnedPartition};
use strongbox_storage::meta::MetaStore;

use super::BackupError;
use super::manifest::{
    FORMAT, FileEntry, KekNote, KeyProviderNote, META_FILE, Manifest, MetadataFile, PartitionEntry,
};
use crate::services::BrokerState;
use crate::services::partitions::partition::Partition;
use crate::services::partitions::topics::{PartitionSlot, Topic};

/// Pins the broker's state into `staging` (which must not exist) and
/// describes it. Blocking: run it on a blocking thread, holding the admin
/// lock.
///
/// # Errors
///
/// A file cannot be linked or written, or the metadata snapshot fails; the
/// staging directory may then hold part of the backup (the caller removes
/// it).
pub fn pin(state: &BrokerState, staging: &Path) -> Result<Manifest, BackupError> {
    let data_dir = state.config.broker.data_dir.clone();
    create_private_dir(staging)?;
    let topics: Vec<Arc<Topic>> = state.partitions.topics().all();
    let mut ready: Vec<(&Topic, u32, &Arc<Partition>)> = Vec::new();
    let mut unavailable: Vec<(&Topic, u32)> = Vec::new();
    for topic in &topics {
        for (index, slot) in (0u32..).zip(&topic.partitions) {
            match slot {
                PartitionSlot::Ready(p) => ready.push((topic, index, p)),
                PartitionSlot::Failed(_) => unavailable.push((topic, index)),
            }
        }
    }

    let created_at_ms = strongbox_protocol::clock::now_ms();
    let (snapshot, pinned) = {
        let freezes: Vec<LogFreeze<'_>> = ready.iter().map(|(_, _, p)| p.log().freeze()).collect();
        let snapshot = state.meta.snapshot()?;
        let mut pinned: Vec<PinnedPartition> = Vec::with_capacity(freezes.len());
        for ((topic, index, _), freeze) in ready.iter().zip(&freezes) {
            let rel = partition_rel(&topic.entry.topic_id, *index);
            pinned.push(freeze.link_into(&staging.join(&rel))?);
        }
        (snapshot, pinned)
        // The freezes end here: appends resume.
    };

    let mut partitions = Vec::new();
    for ((topic, index, _), p) in ready.iter().zip(pinned) {
        let rel = partition_rel(&topic.entry.topic_id, *index);
        partitions.push(PartitionEntry {
            topic: topic.name().to_owned(),
            topic_id: hex::encode(topic.entry.topic_id),
            partition: *index,
            status: "ready".into(),
            start_offset: Some(p.start_offset),
            end_offset: Some(p.end_offset),
            files: p
                .files
                .into_iter()
                .map(|f| FileEntry {
                    path: rel_path(&rel, &f.name),
                    bytes: f.len,
                })
                .collect(),
        });
    }
    for (topic, index) in unavailable {
        let rel = partition_rel(&topic.entry.topic_id, index);
        let source = partition_dir(&data_dir, &topic.entry.topic_id, index);
        let files = link_as_found(&source, &staging.join(&rel))?;
        partitions.push(PartitionEntry {
            topic: topic.name().to_owned(),
            topic_id: hex::encode(topic.entry.topic_id),
            partition: index,
            status: "unavailable".into(),
            start_offset: None,
            end_offset: None,
            files: files
                .into_iter()
                .map(|(name, bytes)| FileEntry {
                    path: rel_path(&rel, &name),
                    bytes,
                })
                .collect(),
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));

    let meta_path = staging.join(META_FILE);
    let stats = snapshot.write_to(&meta_path)?;
    drop(snapshot);
    let kek_versions = kek_notes(&meta_path)?;
    let bytes = std::fs::metadata(&meta_path)
        .map_err(|e| BackupError::io("reading the size of", &meta_path, e))?
        .len();
    sync_dir(staging)?;
    let info = state.keys.manager().provider().info();
    Ok(Manifest {
        format: FORMAT,
        strongbox_version: env!("CARGO_PKG_VERSION").to_owned(),
        broker_id: state.config.broker.id.clone(),
        created_at: strongbox_protocol::rfc3339::format_ms(created_at_ms).unwrap_or_default(),
        created_at_ms,
        key_provider: KeyProviderNote {
            kind: info.kind.to_owned(),
            location: info.location,
        },
        kek_versions,
        metadata: MetadataFile {
            file: META_FILE.into(),
            bytes,
            entries: stats.entries,
        },
        partitions,
    })
}

/// `log/<topic id hex>/<partition>`, as in the data directory.
fn partition_rel(topic_id: &[u8; 16], index: u32) -> PathBuf {
    // The data directory's layout, relative to it.
    partition_dir(Path::new(""), topic_id, index)
}

fn rel_path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// The KEK versions the snapshot's registry knows.
fn kek_notes(meta_path: &Path) -> Result<Vec<KekNote>, BackupError> {
    let meta = MetaStore::open_existing(meta_path)?;
    let versions = meta.read(|r| r.kek_versions(None))?;
    Ok(versions
        .into_iter()
        .map(|v| KekNote {
            label: v.id.label(),
            state: v.state.name().to_owned(),
        })
        .collect())
}

/// Links every regular file of `source` (but temporary ones) into `dest`,
/// as found; returns (name, size) of each.
fn link_as_found(source: &Path, dest: &Path) -> Result<Vec<(String, u64)>, BackupError> {
    create_private_dir(dest)?;
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(source) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(BackupError::io("reading", source, e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    for name in names {
        let from = source.join(&name);
        let to = dest.join(&name);
        std::fs::hard_link(&from, &to).map_err(|e| BackupError::io("linking", &from, e))?;
        let len = std::fs::metadata(&to)
            .map_err(|e| BackupError::io("reading the size of", &to, e))?
            .len();
        out.push((name, len));
    }
    sync_dir(dest)?;
    Ok(out)
}

/// Creates `dir` (and its parents) readable by the owner only, each new
/// name made durable in its parent.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    strongbox_storage::io::durable::create_private_dir_all(&strongbox_storage::io::FileIo, dir)
        .map(drop)
        .map_err(|e| BackupError::io("creating", dir, e.into()))
}

/// Makes the names created in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    strongbox_storage::io::durable::sync_dir(&strongbox_storage::io::FileIo, dir)
        .map_err(|e| BackupError::io("syncing", dir, e.into()))
}
