//! The world of the power-loss tests: a data directory on a simulated file
//! system (`PowerLossIo`), with the metadata store, the key registry and
//! the partition logs on it, driven the way the broker drives them, and a
//! model of what must survive a power cut.
//!
//! The key provider is a file provider on the real disk, outside the
//! simulation: it stands for the HSM, whose keys do not depend on the data
//! disk.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
use strongbox_protocol::model::KeyState;
use strongbox_protocol::model::{Durability as TopicDurability, TopicConfig};
use strongbox_storage::data_dir;
use strongbox_storage::io::{PowerLossIo, StorageIo, durable};
use strongbox_storage::keys::{
    Dek, FileKeyProvider, KekId, KekScope, KeyError, KeyManager, KeyProvider, ProviderInfo,
};
use strongbox_storage::log::{Durability, LogConfig, LogEnv, PartitionLog, RetentionPolicy};
use strongbox_storage::meta::{MetaError, MetaStore, TopicDeletion, TopicEntry};

/// The data directory on the simulated disk.
pub const DATA: &str = "/data";

/// The consumer group whose offsets are committed.
pub const GROUP: &str = "g";

/// Smallest segments the log takes a few frames into, so rolls are frequent.
const SEGMENT_BYTES: u64 = 1024;

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Op {
    /// Creates a topic (metadata commit, then its partition directories).
    CreateTopic {
        partitions: u32,
        fsync: bool,
        dedicated: bool,
    },
    /// Appends one batch and waits for it to be durable (under `none`
    /// durability the wait returns at once).
    Append {
        topic: usize,
        partition: u32,
        records: u8,
        size: u16,
    },
    /// Rolls a partition's active segment.
    Roll { topic: usize, partition: u32 },
    /// Retention by size.
    Retention {
        topic: usize,
        partition: u32,
        keep: u16,
    },
    /// Rotates the topic's KEK scope.
    Rotate { topic: usize },
    /// Rewraps every envelope of the topic under the active version.
    Rewrap { topic: usize },
    /// Destroys every version of the topic's KEK scope that the key
    /// registry counts no segment under (what an operator does after a
    /// rewrap; a version still in use is refused and kept).
    Destroy { topic: usize },
    /// Deletes (shreds) a topic.
    Delete { topic: usize },
    /// Commits a group offset and records the durable end.
    Commit { topic: usize, partition: u32 },
    /// Hands out a producer id (a metadata-only commit).
    ProducerId,
    /// Truncates a partition to the base of its newest segment (what a
    /// follower does to match its leader): that segment is deleted, and the
    /// next append makes a new one at the same base.
    Truncate { topic: usize, partition: u32 },
    /// Moves a partition's next offset forward past "lost" offsets (the
    /// operator's accept-loss: a gap marker, an empty segment file).
    Skip {
        topic: usize,
        partition: u32,
        by: u8,
    },
}

/// What must hold of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartModel {
    /// Records known durable, by offset: acknowledged (covered by a durable
    /// end seen while the power was on) or found after a restart.
    pub known: BTreeMap<u64, Vec<u8>>,
    /// Every offset below this (and at or above `start_bound`) must be
    /// present and equal to `known`.
    pub required_end: u64,
    /// Retention may have removed the records below this.
    pub start_bound: u64,
    /// Records appended this epoch, not yet known durable.
    pub written: BTreeMap<u64, Vec<u8>>,
    /// The group offset last committed while the power was on.
    pub committed: Option<u64>,
    /// The log must end at or after this (a move past lost offsets was
    /// acknowledged): those offsets are never handed out again.
    pub min_end: u64,
    /// The log must start at or after this: retention acknowledged
    /// removing the records below it (or a restart found it there), and
    /// they must not come back.
    pub acked_start: u64,
}

/// What must hold of one topic.
#[derive(Debug, Clone)]
pub struct TopicModel {
    pub entry: TopicEntry,
    /// Its creation was acknowledged (it must exist unless deleted).
    pub created: bool,
    /// Its deletion was acknowledged (it must be gone, with its files).
    pub deleted: bool,
    /// A deletion started (it may be gone).
    pub deleting: bool,
    pub parts: Vec<PartModel>,
}

/// The model of a whole run.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub topics: Vec<TopicModel>,
    /// The largest producer id handed out while the power was on.
    pub producer_id: u64,
    /// Topics created so far (for fresh ids and names).
    pub made: u32,
    /// A note per step, for failure messages.
    pub trace: Vec<String>,
}

/// The key provider as the broker's host reaches it: the keys live
/// outside the simulated disk (an HSM), but once the power is off the host
/// can no longer ask it to make or destroy a key.
#[derive(Debug)]
struct HostProvider {
    inner: FileKeyProvider,
    io: PowerLossIo,
}

impl HostProvider {
    fn powered(&self) -> Result<(), KeyError> {
        if self.io.is_powered() {
            Ok(())
        } else {
            Err(KeyError::Unavailable("the host lost power".into()))
        }
    }
}

impl KeyProvider for HostProvider {
    fn info(&self) -> ProviderInfo {
        self.inner.info()
    }

    fn generate_kek(&self, id: &KekId) -> Result<(), KeyError> {
        self.powered()?;
        self.inner.generate_kek(id)
    }

    fn has_kek(&self, id: &KekId) -> Result<bool, KeyError> {
        self.inner.has_kek(id)
    }

    fn wrap(&self, id: &KekId, dek: &Dek) -> Result<Vec<u8>, KeyError> {
        self.inner.wrap(id, dek)
    }

    fn unwrap(&self, id: &KekId, wrapped: &[u8]) -> Result<Dek, KeyError> {
        self.inner.unwrap(id, wrapped)
    }

    fn destroy_kek(&self, id: &KekId) -> Result<(), KeyError> {
        self.powered()?;
        self.inner.destroy_kek(id)
    }
}

/// An open topic.
pub struct OpenTopic {
    pub entry: TopicEntry,
    pub logs: Vec<PartitionLog>,
}

/// The running system.
pub struct World {
    pub io: PowerLossIo,
    pub meta: MetaStore,
    pub keys: Arc<KeyManager>,
    pub open: BTreeMap<[u8; 16], OpenTopic>,
}

fn data() -> &'static Path {
    Path::new(DATA)
}

fn log_config(entry: &TopicEntry, partition: u32) -> LogConfig {
    let mut c = LogConfig::new(entry.topic_id, partition, scope_of(entry));
    c.segment_bytes = SEGMENT_BYTES;
    c.segment_age = Duration::from_secs(365 * 24 * 3600);
    c.index_interval_bytes = 128;
    c.durability = match entry.config.durability {
        TopicDurability::Fsync => Durability::Fsync,
        _ => Durability::None,
    };
    c
}

pub fn scope_of(entry: &TopicEntry) -> KekScope {
    if entry.config.dedicated_kek {
        KekScope::Topic(hex::encode(entry.topic_id))
    } else {
        KekScope::Broker
    }
}

fn env(io: &PowerLossIo) -> LogEnv {
    LogEnv {
        io: Arc::new(io.clone()) as Arc<dyn StorageIo>,
        ..LogEnv::default()
    }
}

/// A failure of the run: what broke, as text.
pub type Outcome<T> = Result<T, String>;

fn fail<T>(what: impl Into<String>) -> Outcome<T> {
    Err(what.into())
}

impl World {
    /// Starts the system on `io` the way the broker starts: the data
    /// directory (created durably), the metadata store (never created anew
    /// beside partition logs), unfinished topic deletions, then every topic
    /// with its partitions.
    pub fn boot(io: PowerLossIo, keys_dir: &Path) -> Outcome<Self> {
        durable::create_private_dir_all(&io, data()).map_err(|e| format!("data dir: {e}"))?;
        let shared: Arc<dyn StorageIo> = Arc::new(io.clone());
        let meta = data_dir::open_meta_with_io(shared, data())
            .map_err(|e| format!("the metadata store does not open: {e}"))?;
        let provider = HostProvider {
            inner: FileKeyProvider::open(keys_dir).map_err(|e| format!("provider: {e}"))?,
            io: io.clone(),
        };
        let keys = Arc::new(KeyManager::new(Arc::new(provider), meta.clone(), 64));
        data_dir::finish_topic_deletions(&io, data(), &keys)
            .map_err(|e| format!("finishing topic deletions: {e}"))?;
        let mut world = Self {
            io,
            meta,
            keys,
            open: BTreeMap::new(),
        };
        let entries = world
            .meta
            .read(|r| r.topics())
            .map_err(|e: MetaError| format!("topics: {e}"))?;
        for entry in entries {
            let mut logs = Vec::new();
            for p in 0..entry.config.partitions {
                logs.push(world.open_partition(&entry, p)?);
            }
            world.open.insert(entry.topic_id, OpenTopic { entry, logs });
        }
        Ok(world)
    }

    /// Opens a partition of a topic that existed at start, with the
    /// broker's rule: a partition with records (registry or durable end)
    /// never starts again from a missing directory.
    fn open_partition(&self, entry: &TopicEntry, p: u32) -> Outcome<PartitionLog> {
        let dir = data_dir::partition_dir(data(), &entry.topic_id, p);
        let (recorded, known) = self
            .meta
            .read(|r| {
                Ok::<_, MetaError>((
                    r.partition_end(&entry.topic_id, p)?,
                    r.partition_segment_keks(&entry.topic_id, p)?,
                ))
            })
            .map_err(|e| format!("records of {}: {e}", dir.display()))?;
        let has_records = recorded.is_some_and(|r| r.durable_end > 0) || !known.is_empty();
        let config = log_config(entry, p);
        let log = if has_records {
            PartitionLog::open_recorded(&dir, config, self.keys.clone(), env(&self.io))
        } else {
            PartitionLog::open_with_env(&dir, config, self.keys.clone(), env(&self.io))
        }
        .map_err(|e| format!("partition {} does not open: {e}", dir.display()))?;
        if log.directory_missing() {
            return fail(format!(
                "partition directory {} is gone although the registry knows {} segment(s) and \
                 the recorded durable end is {:?}",
                dir.display(),
                known.len(),
                recorded.map(|r| r.durable_end)
            ));
        }
        Ok(log)
    }

    /// Stops everything as a power cut would: nothing is closed.
    pub fn crash(self) -> PowerLossIo {
        let io = self.io.clone();
        drop(self);
        io
    }

    fn log(&self, id: &[u8; 16], p: u32) -> Option<&PartitionLog> {
        self.open.get(id)?.logs.get(p as usize)
    }
}

/// Builds a batch of `records` values.
fn make_batch(values: &[Vec<u8>]) -> RecordBatch {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for v in values {
        b.push(1_700_000_000_000, None, &[], v).expect("push");
    }
    RecordBatch::parse(b.finish().expect("finish")).expect("parse")
}

/// Every record of a log, by offset.
pub fn contents(log: &PartitionLog) -> Outcome<BTreeMap<u64, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut next = log.log_start_offset();
    let end = log.high_watermark();
    let gaps = log.gaps();
    while next < end {
        if let Some((_, to)) = gaps.iter().find(|(from, to)| *from <= next && next < *to) {
            next = *to;
            continue;
        }
        let batches = log
            .read(next, 1 << 16)
            .map_err(|e| format!("{}: read at {next}: {e}", log.dir().display()))?;
        let before = next;
        for (base, bytes) in batches {
            let b = RecordBatch::parse(bytes).map_err(|e| format!("batch at {base}: {e}"))?;
            for r in b.records() {
                let o = base + u64::from(r.index);
                out.insert(o, r.value.to_vec());
                next = next.max(o + 1);
            }
        }
        if next == before {
            return fail(format!(
                "{}: reading at {next} made no progress",
                log.dir().display()
            ));
        }
    }
    Ok(out)
}

impl Model {
    /// Live topics (created, acknowledged or not, and not deleted), in
    /// creation order.
    fn live(&self) -> Vec<usize> {
        self.topics
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.deleted && !t.deleting)
            .map(|(i, _)| i)
            .collect()
    }

    fn pick(&self, topic: usize) -> Option<usize> {
        let live = self.live();
        if live.is_empty() {
            None
        } else {
            live.get(topic % live.len()).copied()
        }
    }
}

/// Runs `op`. Acknowledgements count only while the power is on.
pub fn step(world: &mut World, model: &mut Model, op: &Op) -> Outcome<()> {
    model
        .trace
        .push(format!("{op:?} (ops so far: {})", world.io.ops()));
    match op {
        Op::CreateTopic {
            partitions,
            fsync,
            dedicated,
        } => create_topic(world, model, *partitions, *fsync, *dedicated),
        Op::Append {
            topic,
            partition,
            records,
            size,
        } => {
            let Some(t) = model.pick(*topic) else {
                return Ok(());
            };
            let tm = &mut model.topics[t];
            let Some(log) = world.log(&tm.entry.topic_id, *partition % tm.entry.config.partitions)
            else {
                return Ok(());
            };
            let p = (*partition % tm.entry.config.partitions) as usize;
            let base = log.log_end_offset();
            let values: Vec<Vec<u8>> = (0..u64::from(*records).max(1))
                .map(|i| {
                    let mut v = format!("{}/{p}/{}/", tm.entry.name, base + i).into_bytes();
                    v.resize(usize::from(*size).max(v.len()), b'.');
                    v
                })
                .collect();
            let appended = match log.append(&make_batch(&values)) {
                Ok(a) => a,
                Err(e) if !world.io.is_powered() => {
                    model.trace.push(format!("append after the cut: {e}"));
                    return Ok(());
                }
                Err(e) => return fail(format!("append: {e}")),
            };
            if appended.base_offset != base {
                return fail(format!(
                    "append got offset {} but the log end was {base}",
                    appended.base_offset
                ));
            }
            let waited = appended.durable.wait();
            for (i, v) in values.into_iter().enumerate() {
                tm.parts[p].written.insert(base + i as u64, v);
            }
            if let Err(e) = waited
                && world.io.is_powered()
            {
                return fail(format!("durable wait: {e}"));
            }
            Ok(())
        }
        Op::Roll { topic, partition } => with_log(world, model, *topic, *partition, |log, _| {
            log.roll().map(|_| ()).map_err(|e| format!("roll: {e}"))
        }),
        Op::Truncate { topic, partition } => {
            with_log(world, model, *topic, *partition, |log, pm| {
                let Some(to) = log.segments().last().map(|s| s.base_offset) else {
                    return Ok(());
                };
                // Only where the owner may: above the log start, and not
                // below a committed offset or a move past lost offsets.
                if to <= log.log_start_offset()
                    || to >= log.log_end_offset()
                    || pm.committed.is_some_and(|c| c > to)
                    || pm.min_end > to
                {
                    return Ok(());
                }
                // The owner drops these records: none is required any
                // more, and their offsets are handed out again.
                drop(pm.known.split_off(&to));
                drop(pm.written.split_off(&to));
                pm.required_end = pm.required_end.min(to);
                log.truncate(to).map_err(|e| format!("truncate({to}): {e}"))
            })
        }
        Op::Retention {
            topic,
            partition,
            keep,
        } => with_log(world, model, *topic, *partition, |log, pm| {
            let policy = RetentionPolicy {
                max_age: None,
                max_bytes: Some(u64::from(*keep) * 4),
            };
            let powered = world.io.is_powered();
            let r = log.apply_retention(&policy).map(|_| ());
            // Whatever happened on disk, nothing below the new start is
            // required any more.
            pm.start_bound = pm.start_bound.max(log.log_start_offset());
            if powered && r.is_ok() && world.io.is_powered() {
                // Acknowledged: what it removed stays removed.
                pm.acked_start = pm.acked_start.max(log.log_start_offset());
            }
            r.map_err(|e| format!("retention: {e}"))
        }),
        Op::Rotate { topic } => {
            let Some(t) = model.pick(*topic) else {
                return Ok(());
            };
            let scope = scope_of(&model.topics[t].entry);
            world
                .keys
                .rotate(&scope)
                .map(|_| ())
                .map_err(|e| format!("rotate: {e}"))
        }
        Op::Rewrap { topic } => rewrap(world, model, *topic),
        Op::Destroy { topic } => destroy_unused(world, model, *topic),
        Op::Delete { topic } => delete_topic(world, model, *topic),
        Op::Commit { topic, partition } => {
            let Some(t) = model.pick(*topic) else {
                return Ok(());
            };
            let tm = &mut model.topics[t];
            let p = *partition % tm.entry.config.partitions;
            let Some(log) = world.log(&tm.entry.topic_id, p) else {
                return Ok(());
            };
            let durable_end = log.durable_end_offset();
            let offset = log.high_watermark().min(durable_end);
            let name = tm.entry.name.clone();
            let id = tm.entry.topic_id;
            world
                .meta
                .write(|b| {
                    b.commit_offset(GROUP, &name, p, offset)?;
                    b.raise_partition_end(&id, p, durable_end, 0)?;
                    Ok::<_, MetaError>(())
                })
                .map_err(|e| format!("commit: {e}"))?;
            if world.io.is_powered() {
                tm.parts[p as usize].committed = Some(offset);
            }
            Ok(())
        }
        Op::Skip {
            topic,
            partition,
            by,
        } => {
            let Some(t) = model.pick(*topic) else {
                return Ok(());
            };
            let tm = &mut model.topics[t];
            let p = *partition % tm.entry.config.partitions;
            let Some(log) = world.log(&tm.entry.topic_id, p) else {
                return Ok(());
            };
            let to = log.log_end_offset() + u64::from(*by) + 1;
            let r = log.skip_to(to);
            if world.io.is_powered() {
                r.map_err(|e| format!("skip_to({to}): {e}"))?;
                let pm = &mut tm.parts[p as usize];
                pm.min_end = pm.min_end.max(to);
            }
            Ok(())
        }
        Op::ProducerId => {
            let id = world
                .meta
                .write(|b| b.allocate_producer_id())
                .map_err(|e| format!("producer id: {e}"))?;
            if id <= model.producer_id {
                return fail(format!(
                    "producer id {id} handed out again (had {})",
                    model.producer_id
                ));
            }
            if world.io.is_powered() {
                model.producer_id = id;
            }
            Ok(())
        }
    }
}

/// After each step while the power is on: what the logs say is durable
/// becomes required.
pub fn note_durable(world: &World, model: &mut Model) {
    for tm in &mut model.topics {
        let Some(open) = world.open.get(&tm.entry.topic_id) else {
            continue;
        };
        for (p, log) in open.logs.iter().enumerate() {
            let end = log.durable_end_offset();
            if !world.io.is_powered() {
                return;
            }
            let pm = &mut tm.parts[p];
            if end > pm.required_end {
                let moved: Vec<u64> = pm.written.range(..end).map(|(o, _)| *o).collect();
                for o in moved {
                    if let Some(v) = pm.written.remove(&o) {
                        pm.known.insert(o, v);
                    }
                }
                pm.required_end = end;
            }
        }
    }
}

fn with_log(
    world: &World,
    model: &mut Model,
    topic: usize,
    partition: u32,
    f: impl FnOnce(&PartitionLog, &mut PartModel) -> Outcome<()>,
) -> Outcome<()> {
    let Some(t) = model.pick(topic) else {
        return Ok(());
    };
    let tm = &mut model.topics[t];
    let p = partition % tm.entry.config.partitions;
    let Some(log) = world.log(&tm.entry.topic_id, p) else {
        return Ok(());
    };
    let powered = world.io.is_powered();
    match f(log, &mut tm.parts[p as usize]) {
        Err(e) if powered && world.io.is_powered() => Err(e),
        _ => Ok(()),
    }
}

fn create_topic(
    world: &mut World,
    model: &mut Model,
    partitions: u32,
    fsync: bool,
    dedicated: bool,
) -> Outcome<()> {
    model.made += 1;
    let n = model.made;
    let mut topic_id = [0u8; 16];
    topic_id[12..].copy_from_slice(&n.to_be_bytes());
    topic_id[0] = 0x70;
    let entry = TopicEntry {
        name: format!("t{n}"),
        topic_id,
        created_at: 0,
        config: TopicConfig {
            partitions,
            durability: if fsync {
                TopicDurability::Fsync
            } else {
                TopicDurability::None
            },
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: Some(SEGMENT_BYTES),
            segment_ms: None,
            dedicated_kek: dedicated,
        },
    };
    model.topics.push(TopicModel {
        entry: entry.clone(),
        created: false,
        deleted: false,
        deleting: false,
        parts: vec![PartModel::default(); partitions as usize],
    });
    world
        .meta
        .write(|b| b.create_topic(&entry))
        .map_err(|e| format!("create topic: {e}"))?;
    let mut logs = Vec::new();
    for p in 0..partitions {
        let dir = data_dir::partition_dir(data(), &entry.topic_id, p);
        logs.push(
            PartitionLog::open_with_env(
                &dir,
                log_config(&entry, p),
                world.keys.clone(),
                env(&world.io),
            )
            .map_err(|e| format!("create partition {}: {e}", dir.display()))?,
        );
    }
    world.open.insert(topic_id, OpenTopic { entry, logs });
    if world.io.is_powered()
        && let Some(t) = model.topics.last_mut()
    {
        t.created = true;
    }
    Ok(())
}

fn rewrap(world: &World, model: &mut Model, topic: usize) -> Outcome<()> {
    let Some(t) = model.pick(topic) else {
        return Ok(());
    };
    let entry = &model.topics[t].entry;
    let scope = scope_of(entry);
    let Some(open) = world.open.get(&entry.topic_id) else {
        return Ok(());
    };
    let versions = world
        .keys
        .versions(Some(&scope))
        .map_err(|e| format!("versions: {e}"))?;
    let keys = world.keys.clone();
    for v in versions
        .iter()
        .filter(|v| v.state != KeyState::Active && v.state != KeyState::Destroyed)
    {
        for log in &open.logs {
            let r = log.rewrap_envelopes(
                &v.id,
                |ctx, w| keys.rewrap(ctx, w),
                |ctx, w| keys.commit_rewrap(ctx, w),
            );
            if let Err(e) = r
                && world.io.is_powered()
            {
                return fail(format!("rewrap: {e}"));
            }
        }
    }
    Ok(())
}

/// Destroys the versions of the topic's scope that no segment is under by
/// the registry's count. A rewrap whose envelope is not durable when the
/// registry moves its segment makes the count wrong, and a power cut then
/// leaves a segment under a destroyed key: its acknowledged records are
/// lost, which the check after the restart reports.
fn destroy_unused(world: &World, model: &mut Model, topic: usize) -> Outcome<()> {
    let Some(t) = model.pick(topic) else {
        return Ok(());
    };
    let scope = scope_of(&model.topics[t].entry);
    let versions = world
        .keys
        .versions(Some(&scope))
        .map_err(|e| format!("versions: {e}"))?;
    for v in versions.iter().filter(|v| {
        v.segments == 0 && v.state != KeyState::Active && v.state != KeyState::Destroyed
    }) {
        match world.keys.destroy_version(&v.id, false) {
            Ok(_) | Err(KeyError::InUse { .. }) => {}
            Err(e) if world.io.is_powered() => return fail(format!("destroy {}: {e}", v.id)),
            Err(_) => {}
        }
    }
    Ok(())
}

fn delete_topic(world: &mut World, model: &mut Model, topic: usize) -> Outcome<()> {
    let Some(t) = model.pick(topic) else {
        return Ok(());
    };
    let tm = &mut model.topics[t];
    let name = tm.entry.name.clone();
    let removed = world
        .meta
        .write(|b| b.delete_topic(&name))
        .map_err(|e| format!("delete topic: {e}"))?;
    if removed.is_none() {
        return fail(format!("topic {name} was not in the store"));
    }
    tm.deleting = true;
    if let Some(open) = world.open.remove(&tm.entry.topic_id) {
        for log in open.logs {
            let _ = log.close();
        }
    }
    let deletion = TopicDeletion {
        topic_id: tm.entry.topic_id,
        name,
        partitions: tm.entry.config.partitions,
        dedicated_kek: tm.entry.config.dedicated_kek,
    };
    let r = data_dir::finish_topic_deletion(&world.io, data(), &world.keys, &deletion);
    if world.io.is_powered() {
        r.map_err(|e| format!("shredding: {e}"))?;
        tm.deleted = true;
    }
    Ok(())
}

/// After a restart: checks everything the model requires, then takes the
/// restarted state as the new baseline.
pub fn check_after_restart(world: &mut World, model: &mut Model) -> Outcome<()> {
    let stored: BTreeMap<[u8; 16], TopicEntry> = world
        .meta
        .read(|r| r.topics())
        .map_err(|e: MetaError| format!("topics: {e}"))?
        .into_iter()
        .map(|e| (e.topic_id, e))
        .collect();
    let registry = world
        .meta
        .read(|r| r.segment_keks())
        .map_err(|e: MetaError| format!("registry: {e}"))?;
    let pending = world
        .meta
        .read(|r| r.topic_deletions())
        .map_err(|e: MetaError| format!("deletions: {e}"))?;
    if !pending.is_empty() {
        return fail(format!("deletions left unfinished: {pending:?}"));
    }
    for (seg, _) in &registry {
        if !stored.contains_key(&seg.topic_id) {
            return fail(format!(
                "the key registry still holds segment {} of topic {} that does not exist",
                hex::encode(seg.segment_id),
                hex::encode(seg.topic_id)
            ));
        }
    }
    let on_disk: BTreeSet<PathBuf> = world
        .io
        .list_dir(&data_dir::log_dir(data()))
        .unwrap_or_default()
        .into_iter()
        .map(|n| data_dir::log_dir(data()).join(n))
        .collect();

    let mut kept = Vec::new();
    for mut tm in std::mem::take(&mut model.topics) {
        let id = tm.entry.topic_id;
        let exists = stored.get(&id).is_some_and(|e| e.name == tm.entry.name);
        if tm.deleted && exists {
            return fail(format!(
                "topic {} came back after its deletion",
                tm.entry.name
            ));
        }
        if !exists {
            if tm.created && !tm.deleting {
                return fail(format!("topic {} was lost", tm.entry.name));
            }
            if on_disk.contains(&data_dir::topic_dir(data(), &id)) {
                return fail(format!(
                    "files of topic {} remain after it was deleted",
                    tm.entry.name
                ));
            }
            continue;
        }
        tm.created = true;
        tm.deleting = false;
        let Some(open) = world.open.get(&id) else {
            return fail(format!("topic {} is stored but not open", tm.entry.name));
        };
        for (p, log) in open.logs.iter().enumerate() {
            let pm = &mut tm.parts[p];
            let what = format!("{}/{p}", tm.entry.name);
            let have = contents(log)?;
            for (o, v) in pm.known.range(pm.start_bound..pm.required_end) {
                match have.get(o) {
                    Some(got) if got == v => {}
                    Some(got) => {
                        return fail(format!(
                            "{what}: offset {o} holds {:?}, acknowledged as {:?}",
                            String::from_utf8_lossy(got),
                            String::from_utf8_lossy(v)
                        ));
                    }
                    None => {
                        return fail(format!(
                            "{what}: acknowledged record at offset {o} is gone (log {}..{}, \
                             required {}..{})",
                            log.log_start_offset(),
                            log.log_end_offset(),
                            pm.start_bound,
                            pm.required_end
                        ));
                    }
                }
            }
            for (o, v) in &have {
                if let Some(k) = pm.known.get(o)
                    && k != v
                {
                    return fail(format!("{what}: offset {o} was reused"));
                }
            }
            if log.log_end_offset() < pm.min_end {
                return fail(format!(
                    "{what}: the log ends at {}, but offsets up to {} were handed out and \
                     skipped: they would be handed out again",
                    log.log_end_offset(),
                    pm.min_end
                ));
            }
            if log.log_end_offset() < pm.required_end {
                return fail(format!(
                    "{what}: the log ends at {}, before {}",
                    log.log_end_offset(),
                    pm.required_end
                ));
            }
            if log.log_start_offset() < pm.acked_start {
                return fail(format!(
                    "{what}: the log starts at {}, but retention acknowledged removing every \
                     record below {}: they came back",
                    log.log_start_offset(),
                    pm.acked_start
                ));
            }
            let in_log: BTreeSet<[u8; 16]> = log.segments().iter().map(|s| s.segment_id).collect();
            let in_registry: BTreeSet<[u8; 16]> = registry
                .iter()
                .filter(|(s, _)| s.topic_id == id && s.partition == p as u32)
                .map(|(s, _)| s.segment_id)
                .collect();
            if in_log != in_registry {
                return fail(format!(
                    "{what}: the key registry and the log disagree: log {:?}, registry {:?}",
                    in_log.iter().map(hex::encode).collect::<Vec<_>>(),
                    in_registry.iter().map(hex::encode).collect::<Vec<_>>()
                ));
            }
            let (recorded, committed) = world
                .meta
                .read(|r| {
                    Ok::<_, MetaError>((
                        r.partition_end(&id, p as u32)?,
                        r.offset(GROUP, &tm.entry.name, p as u32)?,
                    ))
                })
                .map_err(|e| format!("{what}: records: {e}"))?;
            if let Some(r) = recorded
                && r.durable_end > log.log_end_offset()
            {
                return fail(format!(
                    "{what}: recorded durable end {} is past the log's end {}",
                    r.durable_end,
                    log.log_end_offset()
                ));
            }
            if let Some(c) = pm.committed
                && committed.is_none_or(|have| have < c)
            {
                return fail(format!(
                    "{what}: committed offset {c} lost (store has {committed:?})"
                ));
            }
            if committed.is_some_and(|c| c > log.log_end_offset()) {
                return fail(format!("{what}: committed offset past the log's end"));
            }
            // The restarted log is the new baseline: everything in it is
            // durable now (recovery sealed and synced it).
            pm.known = have;
            pm.required_end = log.log_end_offset();
            pm.start_bound = pm.start_bound.max(log.log_start_offset());
            pm.acked_start = pm.acked_start.max(log.log_start_offset());
            pm.known = pm.known.split_off(&pm.start_bound);
            pm.written.clear();
        }
        kept.push(tm);
    }
    // Topics whose creation was committed but not acknowledged, and not in
    // the model as created: adopt them.
    model.topics = kept;
    check_envelopes(&world.io, "after the restart")?;
    let id = world
        .meta
        .write(|b| b.allocate_producer_id())
        .map_err(|e| format!("producer id: {e}"))?;
    if id <= model.producer_id {
        return fail(format!(
            "producer id {id} handed out again after a restart (had {})",
            model.producer_id
        ));
    }
    if world.io.is_powered() {
        model.producer_id = id;
    }
    Ok(())
}

/// What the disk holds right after a cut, before anything runs on it (a
/// copy of the disk taken then would hold the same): no key envelope
/// whose shredding has begun ([`check_envelopes`]), no segment beside an
/// unfinished deletion of its name ([`check_reused_names`]), and nothing
/// of a topic whose deletion was acknowledged.
pub fn check_disk_after_cut(io: &PowerLossIo, model: &Model) -> Outcome<()> {
    check_envelopes(io, "on the disk the cut left")?;
    check_reused_names(io)?;
    for tm in model.topics.iter().filter(|t| t.deleted) {
        let dir = data_dir::topic_dir(data(), &tm.entry.topic_id);
        if io.metadata(&dir).is_ok() {
            return fail(format!(
                "on the disk the cut left: {} of topic {} is back after its deletion was \
                 acknowledged",
                dir.display(),
                tm.entry.name
            ));
        }
    }
    Ok(())
}

/// No `{base}.log` beside a `{base}.log.deleted`: a segment's deletion is
/// durable before a new segment can take its base (after a truncation), so
/// both at once are a removal that a cut undid under a new segment, which
/// recovery would then take for the deleted one.
pub fn check_reused_names(io: &PowerLossIo) -> Outcome<()> {
    for part in partition_dirs(io) {
        let names = file_names(io, &part);
        for stem in names.iter().filter_map(|n| n.strip_suffix(".log.deleted")) {
            if names.contains(&format!("{stem}.log")) {
                return fail(format!(
                    "on the disk the cut left: {} is beside {stem}.log.deleted: a new segment \
                     took the name of one whose deletion a cut undid",
                    part.join(format!("{stem}.log")).display()
                ));
            }
        }
    }
    Ok(())
}

fn partition_dirs(io: &PowerLossIo) -> Vec<PathBuf> {
    let log = data_dir::log_dir(data());
    let mut out = Vec::new();
    for topic in io.list_dir(&log).unwrap_or_default() {
        let topic = log.join(topic);
        for part in io.list_dir(&topic).unwrap_or_default() {
            out.push(topic.join(part));
        }
    }
    out
}

fn file_names(io: &PowerLossIo, dir: &Path) -> BTreeSet<String> {
    io.list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .collect()
}

/// Every key envelope (`{base}.key`) in a partition directory sits beside
/// its segment (`{base}.log`, or `{base}.log.deleted` while retention
/// removes it). Crypto-shredding removes the envelope before the data and
/// makes that removal durable first (retention, topic deletion, recovery),
/// so an envelope alone is one whose shredding was done, and came back: a
/// shredded key readable again from the disk, or a copy of it.
pub fn check_envelopes(io: &PowerLossIo, when: &str) -> Outcome<()> {
    for part in partition_dirs(io) {
        let names = file_names(io, &part);
        for stem in names.iter().filter_map(|n| n.strip_suffix(".key")) {
            if !names.contains(&format!("{stem}.log"))
                && !names.contains(&format!("{stem}.log.deleted"))
            {
                return fail(format!(
                    "{when}: key envelope {} is there without its segment: a shredded key came \
                     back",
                    part.join(format!("{stem}.key")).display()
                ));
            }
        }
    }
    Ok(())
}

/// The whole tree of the simulated disk, for failure messages.
pub fn describe(io: &PowerLossIo) -> String {
    io.tree()
        .into_iter()
        .map(|(p, k, len)| format!("  {} {k:?} {len}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}
