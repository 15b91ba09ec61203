//! The sparse index of a segment: `{base:020}.index`.
//!
//! An entry every `index_interval_bytes` of frames (and always for the
//! first frame) maps a frame's base offset to its file position, and gives
//! the largest record timestamp before it, which makes the same entries a
//! time index: the running maximum never decreases, so a binary search
//! finds the last frame before which every record is older than a target.
//!
//! The index is a hint, never trusted: a reader checks that the frame at an
//! entry's position authenticates and has the entry's offset, and falls
//! back to scanning from the start of the segment otherwise. A damaged or
//! missing index therefore costs time, never correctness.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{IoFile, OpenMode, StorageIo};

use super::error::LogError;
use super::files;
use super::format::{INDEX_ENTRY_LEN, IndexEntry};

/// Appends entries to the active segment's index.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    file: Arc<dyn IoFile>,
    path: PathBuf,
    interval: u64,
    last_position: Option<u64>,
    /// Where the next entry goes.
    end: u64,
}

impl IndexWriter {
    /// Creates (or empties) the index at `path`.
    pub(crate) fn create(io: &dyn StorageIo, path: &Path, interval: u64) -> Result<Self, LogError> {
        let file = files::open(io, path, OpenMode::Truncate, "creating")?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            interval,
            last_position: None,
            end: 0,
        })
    }

    /// Adds an entry for the frame at `entry.position` when it is the first
    /// frame or the interval has passed since the last entry.
    pub(crate) fn observe(&mut self, entry: IndexEntry) -> Result<(), LogError> {
        let due = self
            .last_position
            .is_none_or(|last| entry.position.saturating_sub(last) >= self.interval);
        if due {
            let bytes = entry.encode();
            files::write_all_at(self.file.as_ref(), &bytes, self.end, &self.path)?;
            self.end = self.end.saturating_add(bytes.len() as u64);
            self.last_position = Some(entry.position);
        }
        Ok(())
    }

    /// Makes the entries durable.
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(files::io_err("syncing", &self.path))
    }
}

/// What to look up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup {
    /// The last entry whose frame starts at or before this offset.
    Offset(u64),
    /// The last entry before which every record is older than this time.
    Time(i64),
}

/// Finds the entry for `key` in the index at `path`. `None` when there is
/// no index, no matching entry, or the index cannot be read (the caller
/// then scans from the start of the segment).
pub(crate) fn lookup(io: &dyn StorageIo, path: &Path, key: Lookup) -> Option<IndexEntry> {
    let file = io.open(path, OpenMode::Read).ok()?;
    let entries = file.len().ok()? / INDEX_ENTRY_LEN as u64;
    let read = |i: u64| -> Option<IndexEntry> {
        let mut buf = [0u8; INDEX_ENTRY_LEN];
        file.read_exact_at(&mut buf, i.checked_mul(INDEX_ENTRY_LEN as u64)?)
            .ok()?;
        IndexEntry::decode(&buf).ok()
    };
    let before = |e: &IndexEntry| match key {
        Lookup::Offset(o) => e.offset <= o,
        Lookup::Time(t) => e.max_ts_before < t,
    };
    let (mut lo, mut hi) = (0u64, entries);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(&read(mid)?) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    read(lo.checked_sub(1)?)
}

/// Up to `limit` entries of the index at `path` whose offset is above
/// `offset`, in order: where reading may resume past a damaged frame.
/// Empty when there is none or the index cannot be read.
pub(crate) fn entries_after(
    io: &dyn StorageIo,
    path: &Path,
    offset: u64,
    limit: usize,
) -> Vec<IndexEntry> {
    let Ok(file) = io.open(path, OpenMode::Read) else {
        return Vec::new();
    };
    let Ok(len) = file.len() else {
        return Vec::new();
    };
    let entries = len / INDEX_ENTRY_LEN as u64;
    let read = |i: u64| -> Option<IndexEntry> {
        let mut buf = [0u8; INDEX_ENTRY_LEN];
        file.read_exact_at(&mut buf, i.checked_mul(INDEX_ENTRY_LEN as u64)?)
            .ok()?;
        IndexEntry::decode(&buf).ok()
    };
    // The first entry whose offset is above `offset`.
    let (mut lo, mut hi) = (0u64, entries);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match read(mid) {
            Some(e) if e.offset <= offset => lo = mid + 1,
            Some(_) => hi = mid,
            None => return Vec::new(),
        }
    }
    (lo..entries).take(limit).map_while(read).collect()
}

/// Rewrites the index at `path` with `entries`, durably.
pub(crate) fn rewrite(
    io: &dyn StorageIo,
    path: &Path,
    entries: &[IndexEntry],
) -> Result<(), LogError> {
    let mut bytes = Vec::with_capacity(entries.len().saturating_mul(INDEX_ENTRY_LEN));
    for e in entries {
        bytes.extend_from_slice(&e.encode());
    }
    let file = files::open(io, path, OpenMode::Truncate, "creating")?;
    files::write_all_at(file.as_ref(), &bytes, 0, path)?;
    file.sync_data().map_err(files::io_err("syncing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_last_entry_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.index");
        let io = crate::io::FileIo;
        let mut w = IndexWriter::create(&io, &path, 100).expect("create");
        // Frames every 60 bytes: entries at 64, 184, 304 (interval 100).
        let mut max = i64::MIN;
        for (i, pos) in (64..400).step_by(60).enumerate() {
            let offset = i as u64 * 10;
            w.observe(IndexEntry {
                offset,
                position: pos,
                max_ts_before: max,
            })
            .expect("observe");
            max = max.max(1000 + offset as i64);
        }
        let e = lookup(&io, &path, Lookup::Offset(0)).expect("first");
        assert_eq!((e.offset, e.position), (0, 64));
        let e = lookup(&io, &path, Lookup::Offset(25)).expect("mid");
        assert_eq!((e.offset, e.position), (20, 184));
        let e = lookup(&io, &path, Lookup::Offset(10_000)).expect("last");
        assert_eq!((e.offset, e.position), (40, 304));
        // Times: entry at offset 20 has max before = 1010, at 40: 1030.
        let e = lookup(&io, &path, Lookup::Time(1011)).expect("time");
        assert_eq!(e.offset, 20);
        let e = lookup(&io, &path, Lookup::Time(1010)).expect("time");
        assert_eq!(e.offset, 0);
        assert!(lookup(&io, &dir.path().join("missing"), Lookup::Offset(1)).is_none());
        let after: Vec<u64> = entries_after(&io, &path, 20, 10)
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(after, vec![40]);
        let after: Vec<u64> = entries_after(&io, &path, 19, 10)
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(after, vec![20, 40]);
        assert_eq!(entries_after(&io, &path, 0, 1).len(), 1, "limited");
        assert!(entries_after(&io, &path, 40, 10).is_empty());
        assert!(entries_after(&io, &dir.path().join("missing"), 0, 10).is_empty());
    }
}
