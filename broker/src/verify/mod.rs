//! `strongbox-broker verify`: an offline check of a stopped broker's data
//! directory.
//!
//! For every partition of every topic in the metadata store it
//! authenticates every frame, seal and key envelope with [`check_dir`],
//! which reads the files as they are and changes nothing (opening the log
//! would recover it, and so repair what should be reported), and reports
//! the quarantine files recovery left (torn tails kept as evidence). It
//! then checks each envelope against the key registry, the registry
//! against the key provider, the data directory for files of topics that
//! no longer exist, and each log's end against the durable end the broker
//! recorded and the offsets consumer groups committed. One damaged
//! partition never stops the others being checked.
//!
//! It refuses to run while a broker uses the directory: it opens the
//! metadata store, which a running broker holds locked (and, while verify
//! runs, a broker cannot start on it).
//!
//! Exit status: 0 when nothing is a problem, 1 when something is, 2 when
//! the check could not run (usage, configuration, key provider, a running
//! broker). docs/OPERATIONS.md, "Verifying a data directory", says what to
//! do with each kind of problem.

mod checkpoint;
pub(crate) mod keys;
mod progress;
mod registry;
mod report;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use strongbox_storage::keys::{KekId, KekVersion, SegmentKeys};
use strongbox_storage::log::check_dir;
use strongbox_storage::meta::{MetaError, MetaStore, TopicEntry};

use crate::config::{BrokerConfig, ConfigError, KeyProviderKind};
use strongbox_storage::data_dir::partition_dir;

use crate::services::partitions::topics::log_config;

pub use checkpoint::CheckpointArgs;
pub use report::{
    Item, KeyVersionReport, PartitionReport, ProviderReport, Report, Severity, Summary,
};

use keys::ReadOnlyKeys;
use progress::Progress;
use registry::{key_versions, registry_findings, stale_registry};
use report::from_finding;

/// Exit status when the check ran and found problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit status when the check could not run.
pub const EXIT_CANNOT_VERIFY: u8 = 2;

/// The arguments of `strongbox-broker verify`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("location")
        .required(true)
        .multiple(true)
        .args(["data_dir", "config"])
))]
pub struct VerifyArgs {
    /// The data directory to check: the broker's `broker.data_dir`, or a
    /// copy or restored backup of one.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The broker configuration whose `[keys]` section names the key
    /// provider. Default: DIR/../broker.toml, used only when its
    /// `broker.data_dir` is DIR (the layout `strongbox-broker dev`
    /// creates). Without --data-dir, its `broker.data_dir` is checked.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also compare the directory with every signed checkpoint in FILE,
    /// one per line (the broker's checkpoints.export_dir files): a problem
    /// when the directory is older (its audit trail ends before a
    /// checkpoint's record, or holds another record there), a partition
    /// ends before the checkpointed offset or lost a sealed segment, or a
    /// key version went back; a line whose signature does not verify is a
    /// problem too.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// The checkpoint public key (PEM, from `strongbox-broker checkpoint
    /// public-key`). Default: the key provider's own checkpoint key.
    #[arg(long, value_name = "KEY.pem", requires = "checkpoint")]
    pub checkpoint_key: Option<PathBuf>,
}

/// Why the check could not run (exit status 2).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The arguments do not say what to check, or point at the wrong place.
    #[error("{0}")]
    Usage(String),
    /// The configuration file is unreadable or invalid.
    #[error("config {}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ConfigError,
    },
    /// A broker holds the metadata store.
    #[error(
        "the broker is running on {} (it holds {} locked); stop it first",
        data_dir.display(), meta.display()
    )]
    BrokerRunning {
        /// The data directory.
        data_dir: PathBuf,
        /// Its metadata store.
        meta: PathBuf,
    },
    /// The metadata store cannot be opened for another reason.
    #[error("{0}")]
    Meta(MetaError),
    /// The key provider cannot be opened (HSM unreachable, wrong PIN,
    /// missing module).
    #[error("cannot open the key provider: {0}")]
    Provider(String),
}

/// What to check, resolved from the arguments.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The data directory (canonical path).
    pub data_dir: PathBuf,
    /// The configuration file used for the key provider.
    pub config_path: PathBuf,
    /// That configuration.
    pub config: BrokerConfig,
    /// The signed checkpoint to compare with, if any.
    pub checkpoint: Option<CheckpointArgs>,
}

impl Setup {
    /// Resolves the data directory and the configuration as `--help`
    /// describes.
    ///
    /// # Errors
    ///
    /// [`VerifyError::Usage`] and [`VerifyError::Config`], naming what is
    /// wrong.
    pub fn resolve(args: &VerifyArgs) -> Result<Self, VerifyError> {
        let data_dir = args
            .data_dir
            .as_deref()
            .map(|d| canonical(d, "data directory"))
            .transpose()?;
        let config_path = match (&args.config, &data_dir) {
            (Some(c), _) => c.clone(),
            (None, Some(d)) => {
                let implied = d
                    .parent()
                    .map_or_else(|| PathBuf::from("broker.toml"), |p| p.join("broker.toml"));
                if !implied.is_file() {
                    return Err(VerifyError::Usage(format!(
                        "no --config given and {} does not exist: pass --config FILE, the \
                         broker configuration that names the key provider",
                        implied.display()
                    )));
                }
                implied
            }
            (None, None) => {
                return Err(VerifyError::Usage(
                    "give --data-dir DIR, --config FILE, or both".into(),
                ));
            }
        };
        let config = BrokerConfig::load(&config_path).map_err(|source| VerifyError::Config {
            path: config_path.clone(),
            source,
        })?;
        let data_dir = match data_dir {
            Some(d) => {
                let configured = config.broker.data_dir.canonicalize().ok();
                if args.config.is_none() && configured.as_ref() != Some(&d) {
                    return Err(VerifyError::Usage(format!(
                        "{} is the configuration of data directory {}, not {}: pass \
                         --config {} to use its key provider for {} anyway",
                        config_path.display(),
                        config.broker.data_dir.display(),
                        d.display(),
                        config_path.display(),
                        d.display()
                    )));
                }
                d
            }
            None => canonical(&config.broker.data_dir, "broker.data_dir")?,
        };
        if !data_dir.join("meta.redb").is_file() {
            return Err(VerifyError::Usage(format!(
                "{} is not a Strongbox data directory: it has no meta.redb",
                data_dir.display()
            )));
        }
        if matches!(config.keys.provider, KeyProviderKind::File) && !config.keys.file.dir.is_dir() {
            return Err(VerifyError::Usage(format!(
                "keys.file.dir {} (from {}) does not exist: the file key provider keeps its \
                 key-encryption keys there",
                config.keys.file.dir.display(),
                config_path.display()
            )));
        }
        Ok(Self {
            data_dir,
            config_path,
            config,
            checkpoint: args.checkpoint.clone().map(|file| CheckpointArgs {
                file,
                key: args.checkpoint_key.clone(),
            }),
        })
    }
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf, VerifyError> {
    let p = path
        .canonicalize()
        .map_err(|e| VerifyError::Usage(format!("{what} {}: {e}", path.display())))?;
    if !p.is_dir() {
        return Err(VerifyError::Usage(format!(
            "{what} {} is not a directory",
            path.display()
        )));
    }
    Ok(p)
}

/// Runs `strongbox-broker verify`: progress on stderr, the report on
/// stdout, and the exit status (0 intact, 1 problems, 2 could not verify).
pub fn run_cli(args: &VerifyArgs) -> ExitCode {
    init_logging();
    let report = Setup::resolve(args).and_then(|setup| verify(&setup, true));
    match report {
        Ok(report) => {
            let text = if args.json {
                serde_json::to_string_pretty(&report)
                    .map(|mut s| {
                        s.push('\n');
                        s
                    })
                    .unwrap_or_else(|e| {
                        format!("{{\"error\": \"cannot encode the report: {e}\"}}\n")
                    })
            } else {
                report.to_text()
            };
            // A closed stdout (`| head`) must not turn into a panic.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PROBLEMS)
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            ExitCode::from(EXIT_CANNOT_VERIFY)
        }
    }
}

/// Warnings of the storage and key code are reported by `verify` itself;
/// only errors reach stderr unless `RUST_LOG` says otherwise.
fn init_logging() {
    crate::logging::init_cli("error");
}

/// Registry entries by (topic id, partition): segment id → KEK version.
type Recorded = HashMap<([u8; 16], u32), HashMap<[u8; 16], KekId>>;

/// What the metadata store says, read once.
#[derive(Debug, Default)]
struct Metadata {
    topics: Vec<TopicEntry>,
    /// `None` when the registry cannot be read.
    versions: Option<Vec<KekVersion>>,
    /// Recorded segments by (topic id, partition): segment id → KEK version.
    recorded: Option<Recorded>,
    /// Committed offsets by (topic, partition): (group, offset).
    committed: HashMap<(String, u32), Vec<(String, u64)>>,
    /// Recorded durable ends by (topic id, partition).
    ends: HashMap<([u8; 16], u32), u64>,
}

/// Checks the data directory of `setup`, with progress on stderr when
/// `show_progress`.
///
/// # Errors
///
/// [`VerifyError`] when the check cannot run: a broker holds the metadata
/// store, or the metadata store or the key provider cannot be opened.
/// Damage is not an error: it is in the [`Report`].
pub fn verify(setup: &Setup, show_progress: bool) -> Result<Report, VerifyError> {
    let meta_path = setup.data_dir.join("meta.redb");
    let meta = MetaStore::open_existing(&meta_path).map_err(|e| match e {
        MetaError::Open {
            source: redb::DatabaseError::DatabaseAlreadyOpen,
            ..
        } => VerifyError::BrokerRunning {
            data_dir: setup.data_dir.clone(),
            meta: meta_path.clone(),
        },
        other => VerifyError::Meta(other),
    })?;
    let provider = crate::services::open_provider(&setup.config)
        .map_err(|e| VerifyError::Provider(e.to_string()))?;
    let info = provider.info();
    let mut report = Report {
        data_dir: setup.data_dir.clone(),
        config: setup.config_path.clone(),
        provider: ProviderReport {
            kind: info.kind,
            location: info.location,
        },
        partitions: Vec::new(),
        key_versions: Vec::new(),
        findings: Vec::new(),
        summary: Summary::default(),
        ok: false,
    };
    let md = read_metadata(&meta, &meta_path, &mut report.findings);

    let states = md
        .versions
        .iter()
        .flatten()
        .map(|v| (v.id.clone(), v.state))
        .collect();
    let keys = Arc::new(ReadOnlyKeys::new("verify", provider.clone(), states));
    let versions: HashMap<KekId, KekVersion> = md
        .versions
        .iter()
        .flatten()
        .map(|v| (v.id.clone(), v.clone()))
        .collect();
    let total = md.topics.iter().map(|t| t.config.partitions as usize).sum();
    let mut progress = show_progress.then(|| Progress::new(total));
    for entry in &md.topics {
        for index in 0..entry.config.partitions {
            if let Some(p) = progress.as_mut() {
                p.start(format!("{}/{index}", entry.name));
            }
            let recorded = md
                .recorded
                .as_ref()
                .map(|r| r.get(&(entry.topic_id, index)).cloned().unwrap_or_default());
            let committed = md
                .committed
                .get(&(entry.name.clone(), index))
                .map_or(&[][..], Vec::as_slice);
            let recorded_end = md.ends.get(&(entry.topic_id, index)).copied();
            let part = check_partition(
                &setup.data_dir,
                entry,
                index,
                keys.clone(),
                recorded.as_ref(),
                &versions,
                committed,
                recorded_end,
                progress.as_mut(),
            );
            if let Some(p) = progress.as_mut() {
                p.done(&part);
            }
            report.partitions.push(part);
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    report
        .findings
        .extend(unknown_directories(&setup.data_dir, &md.topics));
    if let Some(recorded) = &md.recorded {
        report.findings.extend(stale_registry(recorded, &md.topics));
    }
    if let Some(v) = &md.versions {
        let (rows, items) = key_versions(v, provider.as_ref(), &md.topics);
        report.key_versions = rows;
        report.findings.extend(items);
    }
    if let Some(args) = &setup.checkpoint {
        let items = checkpoint::findings(
            args,
            &report,
            &meta,
            &md.topics,
            keys.clone(),
            provider.as_ref(),
        );
        report.findings.extend(items);
    }
    report.finish();
    tracing::debug!(unwraps = keys.unwraps(), "verify finished");
    Ok(report)
}

const RESTORE_META: &str = "restore the metadata store (meta.redb) from a backup taken together \
     with the data directory";

fn read_metadata(meta: &MetaStore, meta_path: &Path, findings: &mut Vec<Item>) -> Metadata {
    let mut md = Metadata::default();
    let mut unreadable = |what: &str, e: MetaError| {
        findings.push(Item::problem(
            "metadata_store",
            Some(meta_path.to_path_buf()),
            format!("the metadata store's {what} cannot be read: {e}"),
            RESTORE_META,
        ));
    };
    match meta.read(|v| v.topics()) {
        Ok(mut t) => {
            t.sort_by(|a, b| a.name.cmp(&b.name));
            md.topics = t;
        }
        Err(e) => unreadable("topics", e),
    }
    match meta.read(|v| Ok::<_, MetaError>((v.kek_versions(None)?, v.segment_keks()?))) {
        Ok((versions, segments)) => {
            let mut recorded = Recorded::new();
            for (seg, kek) in segments {
                recorded
                    .entry((seg.topic_id, seg.partition))
                    .or_default()
                    .insert(seg.segment_id, kek);
            }
            md.versions = Some(versions);
            md.recorded = Some(recorded);
        }
        Err(e) => unreadable("key registry", e),
    }
    let committed = meta.read(|v| {
        let mut out: HashMap<(String, u32), Vec<(String, u64)>> = HashMap::new();
        for group in v.groups()? {
            for (topic, partition, offset) in v.group_offsets(&group)? {
                out.entry((topic, partition))
                    .or_default()
                    .push((group.clone(), offset));
            }
        }
        Ok::<_, MetaError>(out)
    });
    match committed {
        Ok(c) => md.committed = c,
        Err(e) => unreadable("consumer group offsets", e),
    }
    let topics = md.topics.clone();
    let ends = meta.read(|v| {
        let mut out = HashMap::new();
        for t in &topics {
            for (p, end) in v.partition_ends(&t.topic_id)? {
                out.insert((t.topic_id, p), end.durable_end);
            }
        }
        Ok::<_, MetaError>(out)
    });
    match ends {
        Ok(e) => md.ends = e,
        Err(e) => unreadable("recorded durable ends", e),
    }
    md
}

const PARTITION_MISSING: &str = "restore the partition's directory from a backup; the broker \
     opens it read-only until then (or until an operator accepts the loss with strongbox topic \
     recover --accept-loss)";
const SHORTER: &str = "the log ends before offsets it acknowledged (the newest segment, or the \
     whole directory, was replaced by an older copy, or cut): restore it from a backup; the \
     broker opens it read-only until then (or until an operator accepts the loss with strongbox \
     topic recover --accept-loss)";
const LOST_END: &str = "records that consumers already received are gone from the end of the \
     log: the newest segment was cut (a crash under `none` or `interval` durability loses \
     unsynced records; otherwise the files were altered); restore from a backup if it was not a \
     crash";

/// Checks one partition: its files, its envelopes against the registry,
/// and committed offsets against its end.
#[allow(clippy::too_many_arguments)]
fn check_partition(
    data_dir: &Path,
    entry: &TopicEntry,
    index: u32,
    keys: Arc<ReadOnlyKeys>,
    recorded: Option<&HashMap<[u8; 16], KekId>>,
    versions: &HashMap<KekId, KekVersion>,
    committed: &[(String, u64)],
    recorded_end: Option<u64>,
    mut progress: Option<&mut Progress>,
) -> PartitionReport {
    let dir = partition_dir(data_dir, &entry.topic_id, index);
    let mut part = PartitionReport {
        topic: entry.name.clone(),
        topic_id: hex::encode(entry.topic_id),
        partition: index,
        dir: dir.clone(),
        status: "ok",
        segments: 0,
        frames: 0,
        seals: 0,
        records: 0,
        bytes: 0,
        end_offset: None,
        findings: Vec::new(),
        log_start_offset: 0,
        seal_macs: Vec::new(),
    };
    if !dir.is_dir() {
        let n = recorded.map_or(0, HashMap::len);
        let end = recorded_end.unwrap_or(0);
        part.findings.push(if n > 0 || end > 0 {
            Item::problem(
                "partition_missing",
                Some(dir),
                format!(
                    "the partition directory is missing, but the key registry records {n} \
                     segment(s) of it and offsets up to {end} were acknowledged"
                ),
                PARTITION_MISSING,
            )
        } else {
            Item::notice(
                "partition_missing",
                Some(dir),
                "the partition directory does not exist (the partition holds no data)".into(),
                "nothing, unless data was expected here: the broker creates the directory \
                 when it opens the partition",
            )
        });
        part.end_offset = Some(0);
        return finish_partition(part);
    }
    let keys: Arc<dyn SegmentKeys> = keys;
    let check = check_dir(&dir, &log_config(entry, index), keys, &mut |p| {
        if let Some(progress) = progress.as_deref_mut() {
            progress.update(p);
        }
    });
    part.segments = check.segments.len() as u64;
    for s in &check.segments {
        part.frames += s.frames;
        part.records += s.records;
        part.bytes += s.size_bytes;
        part.seals += u64::from(s.sealed);
    }
    part.end_offset = check.end_offset;
    part.log_start_offset = check.segments.first().map_or(0, |s| s.base_offset);
    part.seal_macs = check
        .segments
        .iter()
        .filter_map(|s| s.seal_mac.map(|mac| (s.base_offset, mac)))
        .collect();
    part.findings = check.findings.iter().map(from_finding).collect();
    if let Some(recorded) = recorded {
        part.findings
            .extend(registry_findings(&dir, &check, recorded, versions));
    }
    if let (Some(end), Some(recorded)) = (check.end_offset, recorded_end)
        && end < recorded
    {
        part.findings.push(Item::problem(
            "shorter_than_recorded",
            Some(dir.clone()),
            format!(
                "the log ends at offset {end}, but the broker recorded offsets up to {recorded} \
                 as durable"
            ),
            SHORTER,
        ));
    }
    if let Some(end) = check.end_offset {
        for (group, offset) in committed {
            if *offset > end {
                part.findings.push(Item::problem(
                    "committed_beyond_end",
                    Some(dir.clone()),
                    format!(
                        "consumer group {group} committed offset {offset}, but the log ends at \
                         offset {end}"
                    ),
                    LOST_END,
                ));
            }
        }
    }
    finish_partition(part)
}

fn finish_partition(mut part: PartitionReport) -> PartitionReport {
    part.status = if part.is_ok() { "ok" } else { "problems" };
    part
}

const UNKNOWN_DIR: &str = "if its topic was deleted, remove the directory, key envelopes first: \
     while a KEK that wraps them exists, its data can still be decrypted";
const UNKNOWN_DIR_NO_KEYS: &str = "remove it if its topic was deleted: without key envelopes \
     nobody can decrypt what it holds";

/// Directories under `log/` that belong to no topic or partition.
fn unknown_directories(data_dir: &Path, topics: &[TopicEntry]) -> Vec<Item> {
    let known: HashMap<String, u32> = topics
        .iter()
        .map(|t| (hex::encode(t.topic_id), t.config.partitions))
        .collect();
    let mut items = Vec::new();
    let mut report = |path: PathBuf, what: String| {
        let envelopes = count_envelopes(&path);
        items.push(if envelopes > 0 {
            Item::problem(
                "unknown_directory",
                Some(path),
                format!("{what}, and holds {envelopes} key envelope(s)"),
                UNKNOWN_DIR,
            )
        } else {
            Item::notice(
                "unknown_directory",
                Some(path),
                format!("{what}; it holds no key envelope"),
                UNKNOWN_DIR_NO_KEYS,
            )
        });
    };
    let log = data_dir.join("log");
    for entry in sorted_entries(&log) {
        if !entry.is_dir() {
            continue;
        }
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match known.get(&name) {
            None => report(
                entry,
                "this directory belongs to no topic in the metadata store (a deleted topic?)"
                    .into(),
            ),
            Some(&partitions) => {
                for sub in sorted_entries(&entry) {
                    let index = sub
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.parse::<u32>().ok());
                    if sub.is_dir() && index.is_none_or(|i| i >= partitions) {
                        report(
                            sub,
                            format!(
                                "this directory is not one of the topic's {partitions} partitions"
                            ),
                        );
                    }
                }
            }
        }
    }
    items
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn count_envelopes(dir: &Path) -> usize {
    let mut count = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for path in sorted_entries(&d) {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "key") {
                count += 1;
            }
        }
    }
    count
}
