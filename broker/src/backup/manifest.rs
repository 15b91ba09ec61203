//! `backup.json`: what a backup holds, written last into the backup
//! directory (a directory without it is an unfinished backup). The same
//! document travels from the broker to `strongbox-broker backup` over the
//! control socket, naming the pinned files to copy.
//!
//! ```json
//! {
//!   "format": 1,
//!   "strongbox_version": "0.1.0",
//!   "broker_id": "strongbox",
//!   "created_at": "2025-03-01T12:00:00Z",
//!   "created_at_ms": 1740830400000,
//!   "key_provider": { "kind": "pkcs11", "location": "module /usr/lib/..., token strongbox" },
//!   "kek_versions": [ { "label": "strongbox/kek/broker/v1", "state": "active" } ],
//!   "metadata": { "file": "meta.redb", "bytes": 1048576, "entries": 42 },
//!   "partitions": [
//!     { "topic": "orders", "topic_id": "9f1c...", "partition": 0, "status": "ready",
//!       "start_offset": 0, "end_offset": 1200,
//!       "files": [ { "path": "log/9f1c.../0/00000000000000000000.log", "bytes": 65000 } ] }
//!   ]
//! }
//! ```
//!
//! Paths are relative to the backup directory, and equal to their place in
//! a data directory: a backup directory is laid out as a data directory
//! (plus this file).

use serde::{Deserialize, Serialize};

/// The format version of `backup.json`.
pub const FORMAT: u32 = 1;

/// The manifest's file name in a backup directory.
pub const MANIFEST_FILE: &str = "backup.json";

/// The metadata store's file name, in a data directory and in a backup.
pub const META_FILE: &str = "meta.redb";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The version of the broker that took it.
    pub strongbox_version: String,
    /// `broker.id` of the broker.
    pub broker_id: String,
    /// When the broker froze its state, RFC 3339.
    pub created_at: String,
    /// The same, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The key provider a restore needs: the same one, holding the same
    /// key-encryption keys. Never any key material.
    pub key_provider: KeyProviderNote,
    /// The key-encryption key versions the metadata knows, by label: the
    /// provider must still hold those not destroyed.
    pub kek_versions: Vec<KekNote>,
    /// The metadata store snapshot.
    pub metadata: MetadataFile,
    /// Every partition of every topic.
    pub partitions: Vec<PartitionEntry>,
}

/// Which key provider the data was sealed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProviderNote {
    /// `file` or `pkcs11`.
    pub kind: String,
    /// Where its keys live (a directory, or a module and token label).
    pub location: String,
}

/// One key-encryption key version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekNote {
    /// `strongbox/kek/<scope>/v<N>`.
    pub label: String,
    /// `active`, `decrypt-only`, `compromised` or `destroyed`.
    pub state: String,
}

/// The metadata store snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataFile {
    /// Its path in the backup ([`META_FILE`]).
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Entries copied, all tables together.
    pub entries: u64,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    /// Topic name.
    pub topic: String,
    /// Topic id, hex (the directory name under `log/`).
    pub topic_id: String,
    /// Partition index.
    pub partition: u32,
    /// `ready` (pinned at the freeze) or `unavailable` (its log could not
    /// be opened by the broker: its files are copied as they were found).
    pub status: String,
    /// First offset held (ready partitions).
    pub start_offset: Option<u64>,
    /// Offset after the last record held (ready partitions): every record
    /// acknowledged before the backup began is below it.
    pub end_offset: Option<u64>,
    /// Its files.
    pub files: Vec<FileEntry>,
}

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the backup (and staging) directory.
    pub path: String,
    /// Bytes of it that belong to the backup.
    pub bytes: u64,
}

impl Manifest {
    /// Files of all partitions.
    pub fn file_count(&self) -> usize {
        self.partitions.iter().map(|p| p.files.len()).sum()
    }

    /// Bytes of all files, the metadata store included.
    pub fn total_bytes(&self) -> u64 {
        self.partitions
            .iter()
            .flat_map(|p| &p.files)
            .fold(self.metadata.bytes, |acc, f| acc.saturating_add(f.bytes))
    }
}

/// True when `path` (from a manifest) is a relative path of plain names
/// separated by single `/`: no `..`, no `.`, no root, no empty segment, so
/// it stays inside the directory it is joined to.
pub fn is_contained(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        assert!(is_contained("meta.redb"));
        assert!(is_contained("log/ab/0/00000000000000000000.log"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "log/../../x",
            "./meta.redb",
            "log//./x",
        ] {
            assert!(!is_contained(bad), "{bad}");
        }
    }

    #[test]
    fn the_manifest_round_trips_and_refuses_unknown_fields() {
        let m = Manifest {
            format: FORMAT,
            strongbox_version: "0.1.0".into(),
            broker_id: "b".into(),
            created_at: "2025-03-01T12:00:00Z".into(),
            created_at_ms: 1,
            key_provider: KeyProviderNote {
                kind: "file".into(),
                location: "/k".into(),
            },
            kek_versions: vec![KekNote {
                label: "strongbox/kek/broker/v1".into(),
                state: "active".into(),
            }],
            metadata: MetadataFile {
                file: META_FILE.into(),
                bytes: 10,
                entries: 2,
            },
            partitions: vec![PartitionEntry {
                topic: "t".into(),
                topic_id: "00".into(),
                partition: 0,
                status: "ready".into(),
                start_offset: Some(0),
                end_offset: Some(5),
                files: vec![FileEntry {
                    path: "log/00/0/00000000000000000000.log".into(),
                    bytes: 100,
                }],
            }],
        };
        let text = serde_json::to_string(&m).expect("encode");
        assert_eq!(serde_json::from_str::<Manifest>(&text).expect("decode"), m);
        assert_eq!(m.total_bytes(), 110);
        assert_eq!(m.file_count(), 1);
        let extra = text.replacen("\"format\"", "\"extra\":1,\"format\"", 1);
        assert!(serde_json::from_str::<Manifest>(&extra).is_err());
    }
}
