//! What `strongbox-broker verify` reports: per partition, per key version
//! and for the data directory as a whole; as text for people and as JSON
//! for scripts. Every problem names its file and says what to do.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use strongbox_storage::keys::KeyError;
use strongbox_storage::log::{Finding, LogError};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data is damaged, missing, unreadable or not shredded as it should
    /// be: `verify` exits 1.
    Problem,
    /// A state a crash leaves behind that the broker's next start resolves,
    /// or something to look at that loses no data.
    Notice,
}

/// One finding, with the file it is about and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Problem or notice.
    pub severity: Severity,
    /// A stable name for scripts (`corrupt_frame`, `envelope_missing`, ...).
    pub kind: &'static str,
    /// The file (or directory) it is about.
    pub file: Option<PathBuf>,
    /// What was found.
    pub message: String,
    /// What to do about it.
    pub action: &'static str,
}

impl Item {
    pub(crate) fn problem(
        kind: &'static str,
        file: Option<PathBuf>,
        message: String,
        action: &'static str,
    ) -> Self {
        Self {
            severity: Severity::Problem,
            kind,
            file,
            message,
            action,
        }
    }

    pub(crate) fn notice(
        kind: &'static str,
        file: Option<PathBuf>,
        message: String,
        action: &'static str,
    ) -> Self {
        Self {
            severity: Severity::Notice,
            kind,
            file,
            message,
            action,
        }
    }

    /// True for a problem.
    pub fn is_problem(&self) -> bool {
        self.severity == Severity::Problem
    }
}

/// The result for one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Topic name.
    pub topic: String,
    /// Topic id, hex (the name of its directory).
    pub topic_id: String,
    /// Partition index.
    pub partition: u32,
    /// The partition directory.
    pub dir: PathBuf,
    /// `ok` or `problems`.
    pub status: &'static str,
    /// Segment files.
    pub segments: u64,
    /// Frames authenticated.
    pub frames: u64,
    /// Seals whose MAC and facts verified.
    pub seals: u64,
    /// Records in the authenticated frames.
    pub records: u64,
    /// Bytes of segment files on disk.
    pub bytes: u64,
    /// Offset after the last intact record, when known.
    pub end_offset: Option<u64>,
    /// Problems and notices, in the order found.
    pub findings: Vec<Item>,
    /// The base offset of its oldest segment (0 without one).
    #[serde(skip)]
    pub log_start_offset: u64,
    /// The MAC of each verified seal, by segment base offset (what a
    /// checkpoint compares).
    #[serde(skip)]
    pub seal_macs: Vec<(u64, [u8; 32])>,
}

impl PartitionReport {
    /// `topic/partition`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    /// True when no finding is a problem.
    pub fn is_ok(&self) -> bool {
        !self.findings.iter().any(Item::is_problem)
    }
}

/// One KEK version of the registry, and whether the provider holds it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyVersionReport {
    /// `broker` or `topic:<name>`.
    pub scope: String,
    /// The provider label (`strongbox/kek/<scope>/v<N>`).
    pub kek: String,
    /// Version number.
    pub version: u32,
    /// Registry state.
    pub state: &'static str,
    /// Segments the registry records under it.
    pub segments: u64,
    /// Whether the provider holds it (`null` when it could not say).
    pub in_provider: Option<bool>,
}

/// Totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Partitions checked.
    pub partitions: u64,
    /// Partitions without problems.
    pub partitions_ok: u64,
    /// Partitions with at least one problem.
    pub partitions_with_problems: u64,
    /// Problems, everywhere.
    pub problems: u64,
    /// Notices, everywhere.
    pub notices: u64,
    /// Segment files.
    pub segments: u64,
    /// Frames authenticated.
    pub frames: u64,
    /// Seals verified.
    pub seals: u64,
    /// Records in the authenticated frames.
    pub records: u64,
    /// Bytes of segment files.
    pub bytes: u64,
}

/// The key provider, as shown in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderReport {
    /// `file` or `pkcs11`.
    pub kind: &'static str,
    /// Where its keys are.
    pub location: String,
}

/// Everything `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The data directory checked.
    pub data_dir: PathBuf,
    /// The configuration its key provider came from.
    pub config: PathBuf,
    /// The key provider.
    pub provider: ProviderReport,
    /// Every partition of every topic, by topic name then partition.
    pub partitions: Vec<PartitionReport>,
    /// Every KEK version in the registry.
    pub key_versions: Vec<KeyVersionReport>,
    /// Findings not about one partition: the metadata store, the key
    /// registry and provider, files of unknown topics.
    pub findings: Vec<Item>,
    /// Totals.
    pub summary: Summary,
    /// True when nothing is a problem (exit status 0).
    pub ok: bool,
}

impl Report {
    /// Fills `summary` and `ok` from the rest.
    pub(crate) fn finish(&mut self) {
        let mut s = Summary::default();
        for p in &self.partitions {
            s.partitions += 1;
            if p.is_ok() {
                s.partitions_ok += 1;
            } else {
                s.partitions_with_problems += 1;
            }
            s.segments += p.segments;
            s.frames += p.frames;
            s.seals += p.seals;
            s.records += p.records;
            s.bytes += p.bytes;
        }
        for item in self
            .partitions
            .iter()
            .flat_map(|p| p.findings.iter())
            .chain(self.findings.iter())
        {
            if item.is_problem() {
                s.problems += 1;
            } else {
                s.notices += 1;
            }
        }
        self.ok = s.problems == 0;
        self.summary = s;
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "data directory  {}", self.data_dir.display());
        let _ = writeln!(out, "configuration   {}", self.config.display());
        let _ = write!(
            out,
            "key provider    {}: {}",
            self.provider.kind, self.provider.location
        );
        if self.provider.kind == "file" {
            out.push_str(" (development only: the keys are files on this machine)");
        }
        out.push_str("\n\n");

        let width = self
            .partitions
            .iter()
            .map(|p| p.label().chars().count())
            .max()
            .unwrap_or(0)
            .max("PARTITION".len());
        let _ = writeln!(
            out,
            "{:<width$}  {:<8}  {:>8}  {:>8}  {:>9}  {:>10}",
            "PARTITION", "RESULT", "SEGMENTS", "FRAMES", "RECORDS", "SIZE"
        );
        for p in &self.partitions {
            let result = if p.is_ok() { "ok" } else { "PROBLEMS" };
            let _ = writeln!(
                out,
                "{:<width$}  {:<8}  {:>8}  {:>8}  {:>9}  {:>10}",
                p.label(),
                result,
                p.segments,
                p.frames,
                p.records,
                human_bytes(p.bytes)
            );
            for item in &p.findings {
                write_item(&mut out, item);
            }
        }
        if self.partitions.is_empty() {
            out.push_str("(no topics)\n");
        }

        if !self.key_versions.is_empty() {
            out.push_str(
                "\nKEY VERSION                          STATE         SEGMENTS  IN PROVIDER\n",
            );
            for k in &self.key_versions {
                let held = match k.in_provider {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "unknown",
                };
                let _ = writeln!(
                    out,
                    "{:<36} {:<12}  {:>8}  {held}",
                    format!("{} v{}", k.scope, k.version),
                    k.state,
                    k.segments
                );
            }
        }
        if !self.findings.is_empty() {
            out.push_str("\nDATA DIRECTORY AND KEY REGISTRY\n");
            for item in &self.findings {
                write_item(&mut out, item);
            }
        }

        let s = &self.summary;
        let _ = write!(
            out,
            "\n{} partition{}: {} ok, {} with problems; {} problem{}, {} notice{}\n\
             {} segments, {} frames and {} seals authenticated, {} records, {}\n",
            s.partitions,
            plural(s.partitions),
            s.partitions_ok,
            s.partitions_with_problems,
            s.problems,
            plural(s.problems),
            s.notices,
            plural(s.notices),
            s.segments,
            s.frames,
            s.seals,
            s.records,
            human_bytes(s.bytes)
        );
        out.push_str(if self.ok {
            "result: intact\n"
        } else {
            "result: PROBLEMS FOUND\n"
        });
        out
    }
}

fn write_item(out: &mut String, item: &Item) {
    let tag = match item.severity {
        Severity::Problem => "problem",
        Severity::Notice => "notice",
    };
    let _ = writeln!(out, "  {tag} [{}]: {}", item.kind, item.message);
    if let Some(file) = &item.file {
        let _ = writeln!(out, "      file: {}", file.display());
    }
    let _ = writeln!(out, "      what to do: {}", item.action);
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `1.5 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut unit = "KiB";
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

// What to do, by kind of problem.
const RESTORE_PARTITION: &str = "stop the broker, restore this partition's directory from a backup \
     taken while the broker was stopped, and run verify again; until then the damaged records \
     cannot be served";
const RESTORE_ENVELOPE: &str = "restore this key envelope from a backup of the data directory: \
     without it nobody can ever decrypt the segment";
const FOREIGN: &str = "this segment belongs to another topic or partition (was it copied \
     here?): move it out, or restore this partition from a backup";
const KEY_DESTROYED: &str = "the KEK version that wraps this segment's key has been destroyed: \
     the segment is crypto-shredded and can never be read again; retention or deleting the \
     topic removes it";
const KEK_NOT_FOUND: &str = "the key provider does not hold this KEK: check that the \
     configuration names the right HSM token or key directory; if the key was destroyed, the \
     segment can never be read again";
const UNWRAP_REJECTED: &str = "the wrapped data key was altered or belongs to another KEK: \
     restore the key envelope from a backup";
const PROVIDER_FAILED: &str = "the key provider failed: check the HSM (or the key directory) \
     and run verify again";
const CHECK_FILE: &str = "check the file's permissions and the disk, then run verify again";
const TORN_TAIL: &str = "if the broker crashed, these are writes that never completed (under \
     fsync durability none of them was acknowledged): its next start cuts them off and seals \
     the segment. If it did not crash, the file was altered: restore it from a backup before \
     starting the broker";
const ORPHAN_ENVELOPE: &str = "a segment file was removed but not its key (retention and \
     deletion remove the key first): if the segment is meant to be gone, delete this envelope, \
     which shreds its data key; otherwise restore the segment from a backup";
const UNSEALED: &str = "nothing: the broker's next start seals it and continues in a new segment";
const PENDING_DELETION: &str = "nothing: the broker's next start finishes the deletion, key \
     envelope first";
const LEFTOVER: &str = "nothing: the broker's next start removes it";
const QUARANTINED: &str = "recovery cut these bytes off the newest segment and kept them here \
     as evidence. After a crash or power cut they are writes that never completed (under fsync \
     durability none was acknowledged); otherwise the segment was damaged or altered. Look at \
     the audit trail (partition.quarantine) and the system log, keep a copy if needed, then \
     delete the file: verify reports it until then";
const ACCEPTED_GAP: &str = "nothing: an operator accepted the loss of these offsets (strongbox \
     topic recover --accept-loss), or a failed sync under interval or none durability lost \
     them; readers read across the gap";

/// The item for a finding of the partition log's check.
pub(crate) fn from_finding(finding: &Finding) -> Item {
    let message = finding.to_string();
    match finding {
        Finding::Damaged(e) => from_log_error(e, message),
        Finding::TornTail { segment, .. } => {
            Item::problem("torn_tail", Some(segment.clone()), message, TORN_TAIL)
        }
        Finding::OrphanEnvelope { envelope } => Item::problem(
            "orphan_envelope",
            Some(envelope.clone()),
            message,
            ORPHAN_ENVELOPE,
        ),
        Finding::Unsealed { segment, .. } => {
            Item::notice("unsealed", Some(segment.clone()), message, UNSEALED)
        }
        Finding::PendingDeletion { segment, .. } => Item::notice(
            "pending_deletion",
            Some(segment.clone()),
            message,
            PENDING_DELETION,
        ),
        Finding::TemporaryFile { path } => {
            Item::notice("temporary_file", Some(path.clone()), message, LEFTOVER)
        }
        Finding::OrphanIndex { path } => {
            Item::notice("orphan_index", Some(path.clone()), message, LEFTOVER)
        }
        Finding::Quarantined { path, .. } => {
            Item::problem("quarantined_tail", Some(path.clone()), message, QUARANTINED)
        }
        Finding::AcceptedGap { marker, .. } => {
            Item::notice("accepted_gap", Some(marker.clone()), message, ACCEPTED_GAP)
        }
        Finding::OrphanGap { path } => {
            Item::notice("orphan_gap", Some(path.clone()), message, LEFTOVER)
        }
        other => Item::problem("damaged", None, other.to_string(), RESTORE_PARTITION),
    }
}

fn envelope_of(segment: &Path) -> PathBuf {
    segment.with_extension("key")
}

fn from_log_error(e: &LogError, message: String) -> Item {
    let message = without_advice(message);
    match e {
        LogError::Io { path, .. } => Item::problem("io", Some(path.clone()), message, CHECK_FILE),
        LogError::EnvelopeMissing { segment } => Item::problem(
            "envelope_missing",
            Some(envelope_of(segment)),
            message,
            RESTORE_ENVELOPE,
        ),
        LogError::EnvelopeEmpty { envelope, .. } => Item::problem(
            "envelope_empty",
            Some(envelope.clone()),
            message,
            RESTORE_ENVELOPE,
        ),
        LogError::EnvelopeCorrupt { envelope, .. } => Item::problem(
            "envelope_corrupt",
            Some(envelope.clone()),
            message,
            RESTORE_ENVELOPE,
        ),
        LogError::EnvelopeMismatch { envelope, .. } => Item::problem(
            "envelope_mismatch",
            Some(envelope.clone()),
            message,
            RESTORE_ENVELOPE,
        ),
        LogError::Key { segment, source } => {
            let (kind, action) = match source {
                KeyError::Destroyed(_) => ("key_destroyed", KEY_DESTROYED),
                KeyError::KekNotFound(_) => ("kek_not_found", KEK_NOT_FOUND),
                KeyError::UnwrapRejected { .. } => ("unwrap_rejected", UNWRAP_REJECTED),
                _ => ("key_provider", PROVIDER_FAILED),
            };
            Item::problem(kind, Some(envelope_of(segment)), message, action)
        }
        LogError::CorruptHeader { segment, .. } => Item::problem(
            "corrupt_header",
            Some(segment.clone()),
            message,
            RESTORE_PARTITION,
        ),
        LogError::ForeignSegment { segment, .. } => {
            Item::problem("foreign_segment", Some(segment.clone()), message, FOREIGN)
        }
        LogError::SealMissing { segment, .. } => Item::problem(
            "seal_missing",
            Some(segment.clone()),
            message,
            RESTORE_PARTITION,
        ),
        LogError::SealInvalid { segment, .. } => Item::problem(
            "seal_invalid",
            Some(segment.clone()),
            message,
            RESTORE_PARTITION,
        ),
        LogError::CorruptFrame { segment, .. } => Item::problem(
            "corrupt_frame",
            Some(segment.clone()),
            message,
            RESTORE_PARTITION,
        ),
        LogError::Gap { next, .. } => {
            Item::problem("gap", Some(next.clone()), message, RESTORE_PARTITION)
        }
        _ => Item::problem("damaged", None, message, RESTORE_PARTITION),
    }
}

/// Storage errors end with advice for the broker's log ("restore it from
/// backup or run strongbox-broker verify"); the report gives its own.
fn without_advice(message: String) -> String {
    const ADVICE: &str = " (restore it from backup or run strongbox-broker verify)";
    match message.strip_suffix(ADVICE) {
        Some(m) => m.to_owned(),
        None => match message.find(", or restore it from backup or run strongbox-broker verify)") {
            Some(i) => format!("{})", message.get(..i).unwrap_or_default()),
            None => message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn storage_advice_is_replaced() {
        let e = LogError::SealMissing {
            segment: PathBuf::from("/d/00000000000000000007.log"),
            reason: "x".into(),
        };
        let item = from_log_error(&e, e.to_string());
        assert!(
            !item.message.contains("strongbox-broker verify"),
            "{}",
            item.message
        );
        assert!(item.message.contains("00000000000000000007.log"));
        assert_eq!(item.kind, "seal_missing");
        let e = LogError::ForeignSegment {
            segment: PathBuf::from("/d/00000000000000000007.log"),
            topic: "aa".into(),
            partition: 1,
            found_topic: "bb".into(),
            found_partition: 2,
        };
        let item = from_log_error(&e, e.to_string());
        assert!(
            item.message.ends_with("(was it copied here? remove it)"),
            "{}",
            item.message
        );
    }

    #[test]
    fn a_missing_envelope_names_the_envelope() {
        let e = LogError::EnvelopeMissing {
            segment: PathBuf::from("/d/00000000000000000007.log"),
        };
        let item = from_log_error(&e, e.to_string());
        assert_eq!(
            item.file.as_deref(),
            Some(Path::new("/d/00000000000000000007.key"))
        );
        assert!(item.is_problem());
    }
}
