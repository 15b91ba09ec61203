//! The topics a broker serves and their partitions.
//!
//! A topic's partitions live under `<data_dir>/log/<topic id>/<partition>/`,
//! named by the topic's random id rather than its name, so a topic deleted
//! and created again never meets the old files and names need no escaping.
//!
//! A partition whose log cannot be opened (a corrupt segment, a missing key
//! envelope, a destroyed key) is kept as [`PartitionSlot::Failed`] with the
//! storage error's message: requests for it get `data_damaged` (its files
//! are damaged) or `partition_unavailable` (anything else) with that
//! message, and every other partition keeps serving. A log that opens but
//! fails the checks of `integrity.rs` (shorter than its recorded durable
//! end, missing segments, committed offsets past its end) is served
//! read-only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use strongbox_protocol::ErrorCode;
use strongbox_protocol::model::{
    Durability, PartitionInfo, PartitionState, TopicConfig, TopicInfo,
};
use strongbox_storage::io::StorageIo;
use strongbox_storage::keys::{KekScope, SegmentKeys};
use strongbox_storage::log::{
    self as storage_log, LogConfig, LogEnv, PartitionLog, RetentionPolicy, RollHook,
};
use strongbox_storage::meta::{MetaError, MetaStore, TopicEntry};

use crate::config::TopicDefaults;
use crate::error::BrokerError;
use crate::services::partitions::integrity;
use crate::services::partitions::partition::Partition;
use crate::services::partitions::producers::ProducerTable;

/// Longest topic name.
pub const MAX_TOPIC_NAME: usize = 249;

// A `Produce` frame for the longest topic name fits the headroom the
// configuration leaves between `max_batch_bytes` and `max_frame_size`.
const _: () = assert!(
    strongbox_protocol::frames::produce::Produce::frame_length(MAX_TOPIC_NAME, 0)
        <= crate::config::PRODUCE_FRAME_HEADROOM as u64
);

/// Checks a topic name: 1 to 249 characters from `[A-Za-z0-9._-]`, not
/// `.` or `..`. Names starting with `_` are reserved for the broker's own
/// topics unless `internal` is set.
///
/// # Errors
///
/// `invalid_topic_name` saying what is wrong.
pub fn validate_topic_name(name: &str, internal: bool) -> Result<(), BrokerError> {
    let bad = |why: &str| {
        Err(BrokerError::new(
            ErrorCode::InvalidTopicName,
            format!("topic name {name:?} {why}"),
        ))
    };
    if name.is_empty() || name.len() > MAX_TOPIC_NAME {
        return bad("must be 1 to 249 characters long");
    }
    if name == "." || name == ".." {
        return bad("is reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may only contain letters, digits, '.', '_' and '-'");
    }
    if name.starts_with('_') && !internal {
        return bad("starts with '_', which is reserved for the broker's own topics");
    }
    Ok(())
}

/// A partition as served: open, or failed with a reason.
#[derive(Debug, Clone)]
pub enum PartitionSlot {
    /// Serving.
    Ready(Arc<Partition>),
    /// Its log could not be opened; the message says why and what to do.
    Failed(FailedPartition),
}

/// Why a partition is not served.
#[derive(Debug, Clone)]
pub struct FailedPartition {
    /// `data_damaged` when its files are damaged, else
    /// `partition_unavailable`.
    pub code: ErrorCode,
    /// The storage error's message.
    pub reason: String,
}

impl FailedPartition {
    /// The slot of a partition whose log failed to open with `e`.
    fn slot(e: &storage_log::LogError) -> PartitionSlot {
        let code = if e.is_damage() {
            ErrorCode::DataDamaged
        } else {
            ErrorCode::PartitionUnavailable
        };
        PartitionSlot::Failed(Self {
            code,
            reason: e.to_string(),
        })
    }
}

/// A topic being served.
#[derive(Debug)]
pub struct Topic {
    /// Its stored entry (id, config, creation time).
    pub entry: TopicEntry,
    /// One slot per partition.
    pub partitions: Vec<PartitionSlot>,
}

impl Topic {
    /// Topic name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.entry.config.partitions
    }

    /// The serving partition `index`.
    ///
    /// # Errors
    ///
    /// `unknown_partition`, or `data_damaged` / `partition_unavailable`
    /// with the storage error that took it down.
    pub fn partition(&self, index: u32) -> Result<&Arc<Partition>, BrokerError> {
        match self.partitions.get(index as usize) {
            Some(PartitionSlot::Ready(p)) => Ok(p),
            Some(PartitionSlot::Failed(failed)) => Err(BrokerError::redacted(
                failed.code,
                &format!(
                    "{}/{index} is unavailable: {}",
                    self.entry.name, failed.reason
                ),
            )),
            None => Err(BrokerError::new(
                ErrorCode::UnknownPartition,
                format!(
                    "topic {} has {} partitions; there is no partition {index}",
                    self.entry.name,
                    self.partitions.len()
                ),
            )),
        }
    }

    /// The KEK scope of the topic's data keys.
    pub fn kek_scope(&self) -> KekScope {
        kek_scope(&self.entry)
    }

    /// The topic as the admin protocol describes it, with partitions.
    pub fn describe(&self) -> TopicInfo {
        let mut info = self.entry.to_info();
        info.partitions = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let partition = u32::try_from(i).unwrap_or(u32::MAX);
                match slot {
                    PartitionSlot::Ready(p) => {
                        let segments = p.log().segments();
                        let (state, reason) = p.state();
                        PartitionInfo {
                            partition,
                            log_start_offset: p.log_start_offset(),
                            high_watermark: p.high_watermark(),
                            segments: u32::try_from(segments.len()).unwrap_or(u32::MAX),
                            size_bytes: segments.iter().map(|s| s.size_bytes).sum(),
                            error: reason.map(|r| crate::error::redact_paths(&r)),
                            state,
                        }
                    }
                    PartitionSlot::Failed(FailedPartition { reason, .. }) => PartitionInfo {
                        partition,
                        log_start_offset: 0,
                        high_watermark: 0,
                        segments: 0,
                        size_bytes: 0,
                        error: Some(crate::error::redact_paths(reason)),
                        state: PartitionState::Unavailable,
                    },
                }
            })
            .collect();
        info
    }

    /// Partitions that are serving.
    pub fn ready_partitions(&self) -> impl Iterator<Item = &Arc<Partition>> {
        self.partitions.iter().filter_map(|s| match s {
            PartitionSlot::Ready(p) => Some(p),
            PartitionSlot::Failed(_) => None,
        })
    }
}

/// The KEK scope of a topic: its own key when `dedicated_kek` is set.
pub fn kek_scope(entry: &TopicEntry) -> KekScope {
    if entry.config.dedicated_kek {
        KekScope::Topic(hex::encode(entry.topic_id))
    } else {
        KekScope::Broker
    }
}

/// Fills the optional settings of a requested topic config from the
/// broker's defaults, so the stored config says exactly what applies.
pub fn resolve_config(
    mut config: TopicConfig,
    defaults: &TopicDefaults,
) -> Result<TopicConfig, BrokerError> {
    let invalid = |m: String| Err(BrokerError::new(ErrorCode::InvalidConfig, m));
    if config.partitions == 0 {
        config.partitions = defaults.partitions;
    }
    if config.partitions > 10_000 {
        return invalid(format!(
            "{} partitions is more than the limit of 10000",
            config.partitions
        ));
    }
    config.segment_bytes.get_or_insert(defaults.segment_bytes);
    config
        .segment_ms
        .get_or_insert(u64::try_from(defaults.segment_age.0.as_millis()).unwrap_or(u64::MAX));
    // Absent: the broker's default. 0: no limit, stored (and described) as
    // absent. docs/PROTOCOL.md, "TopicConfig".
    config.retention_ms = match config.retention_ms {
        None => defaults.retention.as_millis(),
        Some(0) => None,
        Some(ms) => Some(ms),
    };
    config.retention_bytes = match config.retention_bytes {
        None => defaults.retention_bytes,
        Some(0) => None,
        Some(bytes) => Some(bytes),
    };
    if config.segment_ms == Some(0) {
        return invalid("segment_ms must be above zero".into());
    }
    Ok(config)
}

/// The log settings of partition `index` of a topic.
pub fn log_config(entry: &TopicEntry, index: u32) -> LogConfig {
    let mut config = LogConfig::new(entry.topic_id, index, kek_scope(entry));
    if let Some(bytes) = entry.config.segment_bytes {
        config.segment_bytes = bytes;
    }
    if let Some(ms) = entry.config.segment_ms {
        config.segment_age = Duration::from_millis(ms);
    }
    config.durability = match entry.config.durability {
        Durability::Fsync => storage_log::Durability::Fsync,
        Durability::Interval { interval_ms } => {
            storage_log::Durability::Interval(Duration::from_millis(u64::from(interval_ms)))
        }
        Durability::None => storage_log::Durability::None,
    };
    config
}

/// The retention policy of a topic.
pub fn retention(entry: &TopicEntry) -> RetentionPolicy {
    RetentionPolicy {
        max_age: entry.config.retention_ms.map(Duration::from_millis),
        max_bytes: entry.config.retention_bytes,
    }
}

/// What opening a partition needs besides its topic.
#[derive(Debug, Clone)]
pub struct OpenEnv {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The metadata store (durable ends, the key registry).
    pub meta: MetaStore,
    /// Data keys.
    pub keys: Arc<dyn SegmentKeys>,
    /// The file system the logs use.
    pub io: Arc<dyn StorageIo>,
    /// Called after each segment roll (records the durable end).
    pub on_roll: Option<RollHook>,
}

/// Opens partition `index` of a topic, checks it against what the metadata
/// store recorded (`committed`: the groups' offsets for it) and rebuilds
/// its producer table.
fn open_partition(
    env: &OpenEnv,
    entry: &TopicEntry,
    index: u32,
    committed: &[(String, u64)],
) -> PartitionSlot {
    let dir = strongbox_storage::data_dir::partition_dir(&env.data_dir, &entry.topic_id, index);
    // A partition the store has records of (segments in the key registry,
    // a recorded durable end) is never started again from a missing
    // directory: that would hand out its offsets a second time. Its log
    // opens empty, without creating the directory, and the checks below
    // make it read-only.
    let has_records = env
        .meta
        .read(|r| {
            Ok::<_, MetaError>(
                r.partition_end(&entry.topic_id, index)?
                    .is_some_and(|e| e.durable_end > 0)
                    || !r.partition_segment_keks(&entry.topic_id, index)?.is_empty(),
            )
        })
        .unwrap_or(true);
    let log_env = LogEnv {
        io: env.io.clone(),
        on_roll: env.on_roll.clone(),
        ..LogEnv::default()
    };
    let opened = log_config(entry, index).validate().and_then(|config| {
        if has_records {
            PartitionLog::open_recorded(dir.clone(), config, env.keys.clone(), log_env)
        } else {
            PartitionLog::open_with_env(dir.clone(), config, env.keys.clone(), log_env)
        }
    });
    let dir_existed = !opened.as_ref().is_ok_and(PartitionLog::directory_missing);
    match opened {
        Ok(log) => match rebuild_producers(&log) {
            Ok(producers) => {
                let losses =
                    integrity::check(&env.meta, entry, index, &log, dir_existed, committed);
                let p = Partition::new(entry.name.clone(), index, dir, log, producers);
                match losses {
                    Ok(l) if l.is_empty() => {}
                    Ok(l) if entry.name == crate::audit::AUDIT_TOPIC => {
                        // The trail must go on recording: its hash chain and
                        // anchored head detect the cut and the audit writer
                        // records `audit.chain.broken` first. Offsets still
                        // move only forward.
                        match integrity::accept_loss(
                            &env.meta,
                            env.keys.as_ref(),
                            entry,
                            index,
                            p.log(),
                        ) {
                            Ok(done) => {
                                tracing::error!(topic = %entry.name, partition = index, losses = ?done.losses, resume_offset = done.resume_offset, "the audit topic lost records; writing continues after them");
                            }
                            Err(e) => {
                                let reason = integrity::read_only_reason(&entry.name, index, &l);
                                tracing::error!(topic = %entry.name, partition = index, error = %e.message, "cannot move the audit topic past its lost records; it is read-only");
                                p.set_read_only(Some(reason));
                            }
                        }
                    }
                    Ok(l) => {
                        let reason = integrity::read_only_reason(&entry.name, index, &l);
                        tracing::error!(topic = %entry.name, partition = index, %reason, "partition opened read-only");
                        p.set_read_only(Some(reason));
                    }
                    Err(e) => {
                        // Without its records the partition cannot be
                        // checked: it must not take writes blind.
                        let reason = format!(
                            "read-only: its records in the metadata store cannot be read ({e}); \
                             restart the broker once the store is readable"
                        );
                        tracing::error!(topic = %entry.name, partition = index, %reason, "partition opened read-only");
                        p.set_read_only(Some(reason));
                    }
                }
                PartitionSlot::Ready(p)
            }
            Err(e) => {
                tracing::error!(topic = %entry.name, partition = index, error = %e, "cannot rebuild producer state");
                FailedPartition::slot(&e)
            }
        },
        Err(e) => {
            tracing::error!(topic = %entry.name, partition = index, error = %e, "cannot open partition");
            FailedPartition::slot(&e)
        }
    }
}

/// Rebuilds the idempotent-producer table from the batches the log's
/// producer scan visits (the newest two segments: a producer retries only
/// batches it sent moments ago, which are always there).
pub(crate) fn rebuild_producers(
    log: &PartitionLog,
) -> Result<ProducerTable, storage_log::LogError> {
    let mut table = ProducerTable::new();
    log.scan_recent_batches(|base, header| {
        if let Some(stamp) = header.producer {
            table.record(&stamp, header.record_count, base);
        }
    })?;
    Ok(table)
}

/// Every topic the broker serves.
#[derive(Debug)]
pub struct TopicTable {
    env: OpenEnv,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
}

impl TopicTable {
    /// Opens every topic in the metadata store. Partitions that fail to open
    /// are served as failed; the broker still starts.
    ///
    /// # Errors
    ///
    /// Only when the metadata store cannot be read.
    pub fn load(env: OpenEnv) -> Result<Self, BrokerError> {
        let meta = &env.meta;
        let entries = meta
            .read(|view| view.topics())
            .map_err(|e: MetaError| BrokerError::internal("reading topics", e))?;
        let committed = all_committed(meta)
            .map_err(|e| BrokerError::internal("reading committed offsets", e))?;
        let mut topics = HashMap::new();
        for entry in entries {
            let partitions = (0..entry.config.partitions)
                .map(|i| {
                    let c = committed
                        .get(&(entry.name.clone(), i))
                        .map_or(&[][..], Vec::as_slice);
                    open_partition(&env, &entry, i, c)
                })
                .collect();
            tracing::info!(topic = %entry.name, partitions = entry.config.partitions, "topic opened");
            topics.insert(entry.name.clone(), Arc::new(Topic { entry, partitions }));
        }
        Ok(Self {
            env,
            topics: RwLock::new(topics),
        })
    }

    /// The topic named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    /// The topic named `name`.
    ///
    /// # Errors
    ///
    /// `unknown_topic`.
    pub fn require(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.get(name).ok_or_else(|| {
            BrokerError::new(
                ErrorCode::UnknownTopic,
                format!("topic {name} does not exist"),
            )
        })
    }

    /// Every topic, by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Opens the partitions of a topic just stored in the metadata store and
    /// starts serving it.
    pub fn add(&self, entry: TopicEntry, keys: Arc<dyn SegmentKeys>) -> Arc<Topic> {
        let env = OpenEnv {
            keys,
            ..self.env.clone()
        };
        let partitions = (0..entry.config.partitions)
            .map(|i| open_partition(&env, &entry, i, &[]))
            .collect();
        let topic = Arc::new(Topic { entry, partitions });
        self.write().insert(topic.name().to_owned(), topic.clone());
        topic
    }

    /// Stops serving a topic; returns it so the caller can delete its data.
    pub fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        self.write().remove(name)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.env.data_dir
    }

    /// The file system the logs use.
    pub fn io(&self) -> &Arc<dyn StorageIo> {
        &self.env.io
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        // Writers replace whole entries; a poisoned map is still consistent.
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Committed offsets by (topic, partition): (group, offset).
type Committed = HashMap<(String, u32), Vec<(String, u64)>>;

/// Every committed offset, by (topic, partition).
fn all_committed(meta: &MetaStore) -> Result<Committed, MetaError> {
    meta.read(|v| {
        let mut out = Committed::new();
        for group in v.groups()? {
            for (topic, partition, offset) in v.group_offsets(&group)? {
                out.entry((topic, partition))
                    .or_default()
                    .push((group.clone(), offset));
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["demo.greetings", "a", "orders-2024_v1", &"x".repeat(249)] {
            assert!(validate_topic_name(ok, false).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250), "_audit"] {
            let err = validate_topic_name(bad, false).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidTopicName);
        }
        assert!(validate_topic_name("_audit", true).is_ok());
    }

    #[test]
    fn absent_retention_is_the_default_and_zero_is_no_limit() {
        let defaults = TopicDefaults::default();
        let config = |retention_ms, retention_bytes| TopicConfig {
            partitions: 1,
            durability: Durability::Fsync,
            retention_ms,
            retention_bytes,
            segment_bytes: None,
            segment_ms: None,
            dedicated_kek: false,
        };
        let resolved = resolve_config(config(None, None), &defaults).expect("valid");
        assert_eq!(resolved.retention_ms, defaults.retention.as_millis());
        assert_eq!(resolved.retention_bytes, defaults.retention_bytes);
        let forever = resolve_config(config(Some(0), Some(0)), &defaults).expect("valid");
        assert_eq!(forever.retention_ms, None);
        assert_eq!(forever.retention_bytes, None);
        let set = resolve_config(config(Some(60_000), Some(1 << 20)), &defaults).expect("valid");
        assert_eq!(set.retention_ms, Some(60_000));
        assert_eq!(set.retention_bytes, Some(1 << 20));
    }
}
