//! The encrypted, append-only partition log.
//!
//! One [`PartitionLog`] per topic partition owns a directory of segments:
//!
//! ```text
//! 00000000000000000000.log     plaintext header, encrypted frames, a seal once rolled
//! 00000000000000000000.index   sparse index: offset → position, and time → offset
//! 00000000000000000000.key     the segment's data key, wrapped under a KEK
//! 00000000000000004096.log     the next segment ...
//! 00000000000000009000.gap     offsets before 9000 that were lost and accepted
//! 00000000000000004096.<id>.quarantine   a torn tail recovery cut, kept
//! ```
//!
//! Its owner needs no file name or layout: the log publishes its durable
//! high watermark to subscriptions ([`PartitionLog::subscribe_watermark`]),
//! scans the batches an idempotent-producer table is rebuilt from
//! ([`PartitionLog::scan_recent_batches`]) and reconciles key envelopes with
//! the key registry after an interrupted rewrap
//! ([`PartitionLog::reconcile_envelopes`]).
//!
//! Every file-system operation goes through a [`StorageIo`](crate::io::StorageIo)
//! ([`LogEnv`]); a failed write or sync fences the log until it resumes by
//! itself from its last durable point (`heal.rs`).
//!
//! Every segment has its own 256-bit data key (DEK), made and wrapped by
//! [`SegmentKeys::create`](crate::keys::SegmentKeys::create). Each record
//! batch is one frame, sealed with AES-256-GCM under that key; the nonce is
//! the batch's base offset and the AAD binds the frame to its topic,
//! partition, segment and offsets, so frames cannot be moved, reordered or
//! spliced unnoticed. A rolled segment ends with a seal (end offset, frame
//! count, HMAC under a key derived from the DEK), so cutting it short is
//! detected. [`format`](mod@format) and [`envelope`] document every byte; docs/STORAGE.md
//! has the reasoning (the nonce argument, recovery, the threat model).
//!
//! ```
//! use std::sync::Arc;
//!
//! use strongbox_protocol::batch::{BatchBuilder, RecordBatch};
//! use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
//! use strongbox_storage::log::{Durability, LogConfig, PartitionLog};
//! use strongbox_storage::meta::MetaStore;
//!
//! let dir = tempfile::tempdir()?;
//! // A development key provider; production uses PKCS#11.
//! let provider = FileKeyProvider::open(dir.path().join("keys"))?;
//! let meta = MetaStore::open(dir.path().join("meta.redb"))?;
//! let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 1024));
//!
//! let mut config = LogConfig::new([7; 16], 0, KekScope::Broker);
//! config.durability = Durability::Fsync;
//! let log = PartitionLog::open(dir.path().join("orders-0"), config, keys)?;
//!
//! let mut b = BatchBuilder::new(1_700_000_000_000);
//! b.push(1_700_000_000_000, None, &[], b"hello")?;
//! let batch = RecordBatch::parse(b.finish()?)?;
//! let appended = log.append(&batch)?;
//! appended.durable.wait()?; // or `.await` in async code
//!
//! let batches = log.read(appended.base_offset, 1 << 20)?;
//! assert_eq!(batches[0].1, *batch.as_bytes());
//! log.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backup;
mod check;
mod config;
mod create;
mod durability;
pub mod envelope;
mod error;
mod files;
pub mod format;
mod gap;
mod heal;
mod health;
mod index;
mod maintain;
mod offline;
mod partition;
mod producer_scan;
mod quarantine;
pub mod raft;
pub mod raft_format;
mod read;
mod read_buffer;
mod reconcile;
mod recovery;
mod scan;
mod segment;
mod shred;
mod truncate;
mod watermark;

pub use backup::{LogFreeze, PinnedFile, PinnedPartition};
pub use check::{CheckProgress, DirCheck, Finding, SegmentCheck, check_dir};
pub use config::{Clock, Durability, LogConfig, RetentionPolicy, SystemClock};
pub use durability::Durable;
pub use error::LogError;
pub use gap::{GAP_LEN, GAP_MAGIC, GapMarker};
pub use heal::RESUME_RETRY;
pub use health::{CutRange, LogEvent, LogHealth, WriteFault};
pub use partition::{Appended, LogEnv, PartitionLog, RollHook, SegmentInfo};
pub use quarantine::{QUARANTINE_HEADER_LEN, QUARANTINE_MAGIC, QuarantineHeader};
pub use read::VerifyReport;
pub use reconcile::Reconciled;
pub use scan::{Scanned, scan_dir};
pub use shred::remove_partition_dir;
pub use watermark::{Changed, WatermarkEnded, WatermarkSubscription};
