//! Pinning a partition's files for a backup of a running broker.
//!
//! A backup must see each partition at one instant that also matches the
//! metadata store's snapshot: the same segments the key registry records,
//! every acknowledged batch, nothing half-written. [`PartitionLog::freeze`]
//! holds the log's writer lock, so no append, roll, retention or rewrap
//! changes the partition while it is held (readers go on).
//! [`LogFreeze::link_into`] then records the partition as it stands by
//! hard-linking its files into a staging directory on the same file system:
//! a few `link` calls, however large the segments. Once the freeze is
//! released the log goes on, and the links keep the pinned files readable
//! (retention unlinks the log's names, not the backup's; a rewrap renames a
//! new envelope over the old name, leaving the linked one as it was).
//!
//! What is pinned, per segment:
//!
//! - a sealed segment: its `.log`, `.index` (when present) and `.key`, all
//!   immutable;
//! - the active segment: its `.key`, and its `.log` with the length of its
//!   complete frames at the freeze. The file keeps growing through the
//!   link; the copier takes only that many bytes. Restored, it is a newest
//!   segment that was not sealed, which the next start seals (recovery).
//!   Its index is left out: recovery rebuilds it.
//! - an active segment without frames: a copy of its 64-byte header (the
//!   file can be rewritten in place with a new header before its first
//!   frame, so it is not linked), and its `.key`;
//! - an empty newest file (after a crash or a dropped segment): an empty
//!   file of its name, which records where the log continues;
//! - every gap marker (`{offset}.gap`): the offsets the log gave up, which
//!   readers and recovery read across. Quarantine files are evidence for
//!   an operator, not part of the log, and are not pinned.
//!
//! The key envelopes hold data keys wrapped under a KEK that never leaves
//! the key provider: a backup holds no key material that opens anything
//! without that provider.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use super::error::LogError;
use super::files;
use super::format::{
    LogFile, SEGMENT_HEADER_LEN, index_file_name, key_file_name, parse_file_name, segment_file_name,
};
use super::partition::{PartitionLog, Writer};

/// A partition held still for a backup. Appends, rolls, retention and
/// rewraps of this partition wait until it is dropped: keep it briefly.
#[derive(Debug)]
pub struct LogFreeze<'a> {
    log: &'a PartitionLog,
    writer: MutexGuard<'a, Writer>,
}

/// One file pinned by [`LogFreeze::link_into`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedFile {
    /// Its name in the partition directory (and in the staging directory).
    pub name: String,
    /// How many bytes of it belong to the backup (the file may be longer:
    /// the active segment grows through its link).
    pub len: u64,
}

/// What [`LogFreeze::link_into`] pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPartition {
    /// The files, oldest segment first.
    pub files: Vec<PinnedFile>,
    /// The first offset the pinned log holds.
    pub start_offset: u64,
    /// The offset after the last record the pinned log holds.
    pub end_offset: u64,
}

impl PartitionLog {
    /// Holds the partition still (its writer lock) until the returned
    /// guard is dropped. See the module documentation.
    pub fn freeze(&self) -> LogFreeze<'_> {
        LogFreeze {
            log: self,
            writer: self.lock_writer(),
        }
    }
}

impl LogFreeze<'_> {
    /// Pins every file of the partition into `dest` (created if needed; on
    /// the same file system as the log), as it stands now.
    ///
    /// # Errors
    ///
    /// A file cannot be linked or written (`dest` on another file system,
    /// a file of the log missing); the error names it.
    pub fn link_into(&self, dest: &Path) -> Result<PinnedPartition, LogError> {
        crate::io::durable::create_dir_all(&crate::io::FileIo, dest).map_err(files::step_err)?;
        let dir = self.log.dir();
        let segments = self.log.read_segments().clone();
        let mut pinned = Vec::new();
        let newest_base = segments.last().map(|s| s.base);
        for seg in &segments {
            let log_name = segment_file_name(seg.base);
            let key_name = key_file_name(seg.base);
            if seg.is_sealed() {
                pinned.push(link(dir, dest, &log_name)?);
                let index_name = index_file_name(seg.base);
                if dir.join(&index_name).exists() {
                    pinned.push(link(dir, dest, &index_name)?);
                }
            } else {
                let end = seg.frames_end.load(std::sync::atomic::Ordering::Acquire);
                if end > SEGMENT_HEADER_LEN as u64 {
                    let mut file = link(dir, dest, &log_name)?;
                    file.len = end;
                    pinned.push(file);
                } else {
                    pinned.push(write_new(dest, &log_name, &seg.header_bytes)?);
                }
            }
            if seg.envelope().is_some() {
                pinned.push(link(dir, dest, &key_name)?);
            }
        }
        // Gap markers say which offsets were given up (accepted losses,
        // cuts after a storage fault): without them the restored log would
        // not open across its gaps. Each is written once, atomically.
        for name in files::list(self.log.ctx.io.as_ref(), dir)? {
            if matches!(parse_file_name(&name), Some(LogFile::Gap(_))) {
                pinned.push(link(dir, dest, &name)?);
            }
        }
        if let Some(base) = self.writer.placeholder
            && newest_base.is_none_or(|newest| base > newest)
        {
            pinned.push(write_new(dest, &segment_file_name(base), &[])?);
        }
        files::sync_dir(&crate::io::FileIo, dest)?;
        Ok(PinnedPartition {
            files: pinned,
            start_offset: self.log.log_start_offset(),
            end_offset: self.writer.next_offset,
        })
    }
}

/// Hard-links `dir/name` to `dest/name`.
fn link(dir: &Path, dest: &Path, name: &str) -> Result<PinnedFile, LogError> {
    let from = dir.join(name);
    let to: PathBuf = dest.join(name);
    std::fs::hard_link(&from, &to).map_err(files::io_err("linking for a backup", &from))?;
    let len = std::fs::metadata(&to)
        .map_err(files::io_err("reading the size of", &to))?
        .len();
    Ok(PinnedFile {
        name: name.to_owned(),
        len,
    })
}

/// Writes `bytes` as the new file `dest/name`.
fn write_new(dest: &Path, name: &str, bytes: &[u8]) -> Result<PinnedFile, LogError> {
    let to = dest.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&to)
        .map_err(files::io_err("creating", &to))?;
    f.write_all(bytes).map_err(files::io_err("writing", &to))?;
    f.sync_all().map_err(files::io_err("syncing", &to))?;
    Ok(PinnedFile {
        name: name.to_owned(),
        len: bytes.len() as u64,
    })
}
