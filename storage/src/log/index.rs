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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::io::{IoFile, OpenMode, StorageIo};

use super::error::LogError;
use super::files;
use super::format::{INDEX_ENTRY_LEN, IndexEntry};
use super::segment::{LogCtx, Segment};

/// The entries of the active segment's index, shared by its writer (which
/// appends) and readers (which search it in place).
pub(crate) type LiveIndex = RwLock<Vec<IndexEntry>>;

/// Appends entries to the active segment's index: to its file and to the
/// copy in memory that readers search.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    file: Arc<dyn IoFile>,
    path: PathBuf,
    interval: u64,
    last_position: Option<u64>,
    /// Where the next entry goes.
    end: u64,
    live: Arc<LiveIndex>,
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
            live: Arc::default(),
        })
    }

    /// The entries written so far, as readers see them.
    pub(crate) fn live(&self) -> Arc<LiveIndex> {
        Arc::clone(&self.live)
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
            // Published after the frame it names: the writer observes an
            // entry once the frame is written, and readers check an entry's
            // position against the readable end anyway.
            self.live
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entry);
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

/// The last entry of `entries` for `key`.
fn search(entries: &[IndexEntry], key: Lookup) -> Option<IndexEntry> {
    let before = entries.partition_point(|e| match key {
        Lookup::Offset(o) => e.offset <= o,
        Lookup::Time(t) => e.max_ts_before < t,
    });
    entries.get(before.checked_sub(1)?).copied()
}

/// Up to `limit` entries of `entries` whose offset is above `offset`.
fn after(entries: &[IndexEntry], offset: u64, limit: usize) -> Vec<IndexEntry> {
    let first = entries.partition_point(|e| e.offset <= offset);
    entries.iter().skip(first).take(limit).copied().collect()
}

/// Most index entries of sealed segments one log keeps in memory (6 MiB):
/// the index of a full 1 GiB segment at the default interval fits. The
/// entry just loaded is kept even past the bound, so a reader of a
/// segment with a larger index still loads it once, not once per read.
pub(crate) const CACHED_ENTRIES: usize = 256 * 1024;

/// The indexes of a log's sealed segments, loaded from their files on first
/// use and kept, least recently used first out, up to [`CACHED_ENTRIES`].
/// Keyed by segment id, which no other segment ever has: a segment that
/// replaces another under the same file name (after a truncation, or an
/// empty newest segment recycled) has a new id, and the one case that keeps
/// an id while its index changes (a cut by recovery, truncation or a
/// resume after a fault) goes through [`rewrite`], which replaces the
/// cached entries.
#[derive(Debug, Default)]
pub(crate) struct IndexCache {
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Most recently used last.
    entries: Vec<([u8; 16], Arc<[IndexEntry]>)>,
    total: usize,
    /// Bumped by every rewrite and removal: a load that read the file
    /// before one of them does not put what it read in the cache.
    generation: u64,
}

impl IndexCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Every change leaves the state whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &[u8; 16]) -> Result<Arc<[IndexEntry]>, u64> {
        let mut s = self.lock();
        match s.entries.iter().position(|(k, _)| k == id) {
            Some(i) => {
                let hit = s.entries.remove(i);
                let found = Arc::clone(&hit.1);
                s.entries.push(hit);
                Ok(found)
            }
            None => Err(s.generation),
        }
    }

    fn insert_locked(s: &mut CacheState, id: [u8; 16], entries: Arc<[IndexEntry]>) {
        if let Some(i) = s.entries.iter().position(|(k, _)| *k == id) {
            let (_, old) = s.entries.remove(i);
            s.total = s.total.saturating_sub(old.len());
        }
        s.total = s.total.saturating_add(entries.len());
        s.entries.push((id, entries));
        while s.total > CACHED_ENTRIES && s.entries.len() > 1 {
            let (_, old) = s.entries.remove(0);
            s.total = s.total.saturating_sub(old.len());
        }
    }

    /// Puts the entries of segment `id` in the cache (its index was just
    /// written or rewritten with exactly these).
    pub(crate) fn replace(&self, id: [u8; 16], entries: Arc<[IndexEntry]>) {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        Self::insert_locked(&mut s, id, entries);
    }

    /// Forgets segment `id` (its files are gone).
    pub(crate) fn remove(&self, id: &[u8; 16]) {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        if let Some(i) = s.entries.iter().position(|(k, _)| k == id) {
            let (_, old) = s.entries.remove(i);
            s.total = s.total.saturating_sub(old.len());
        }
    }

    /// The entries of the sealed segment `seg`, from the cache or read from
    /// its file. `None` when the file cannot be read (the caller scans).
    fn sealed(&self, io: &dyn StorageIo, seg: &Segment) -> Option<Arc<[IndexEntry]>> {
        let id = seg.header.segment_id;
        let generation = match self.get(&id) {
            Ok(found) => return Some(found),
            Err(generation) => generation,
        };
        // Read without holding the lock: other segments' readers go on.
        let bytes = io.read(&seg.index_path).ok()?;
        let entries: Arc<[IndexEntry]> = bytes
            .chunks_exact(INDEX_ENTRY_LEN)
            .map_while(|c| IndexEntry::decode(c).ok())
            .collect();
        let mut s = self.lock();
        if s.generation == generation {
            Self::insert_locked(&mut s, id, Arc::clone(&entries));
        }
        Some(entries)
    }

    /// How many entries are cached (for tests).
    #[cfg(test)]
    pub(crate) fn cached_entries(&self) -> usize {
        self.lock().total
    }
}

/// Finds the entry for `key` in the index of `seg`: the active segment's in
/// memory, a sealed segment's from the cache (loaded once). `None` when
/// there is no matching entry or the index cannot be read (the caller then
/// scans from the start of the segment).
pub(crate) fn lookup(ctx: &LogCtx, seg: &Segment, key: Lookup) -> Option<IndexEntry> {
    if let Some(live) = seg.live_index() {
        return search(&live.read().unwrap_or_else(PoisonError::into_inner), key);
    }
    search(&ctx.indexes.sealed(ctx.io.as_ref(), seg)?, key)
}

/// Up to `limit` entries of the index of `seg` whose offset is above
/// `offset`, in order: where reading may resume past a damaged frame.
/// Empty when there is none or the index cannot be read.
pub(crate) fn entries_after(
    ctx: &LogCtx,
    seg: &Segment,
    offset: u64,
    limit: usize,
) -> Vec<IndexEntry> {
    if let Some(live) = seg.live_index() {
        return after(
            &live.read().unwrap_or_else(PoisonError::into_inner),
            offset,
            limit,
        );
    }
    match ctx.indexes.sealed(ctx.io.as_ref(), seg) {
        Some(entries) => after(&entries, offset, limit),
        None => Vec::new(),
    }
}

/// Rewrites the index of `seg` with `entries`, durably, and makes readers
/// use exactly these entries from now on (the active segment's entries in
/// memory are dropped: a rewritten segment is about to be sealed or
/// replaced).
pub(crate) fn rewrite(ctx: &LogCtx, seg: &Segment, entries: &[IndexEntry]) -> Result<(), LogError> {
    // Readers stop trusting the old entries before the file changes.
    seg.take_live_index();
    ctx.indexes.remove(&seg.header.segment_id);
    let path = &seg.index_path;
    let mut bytes = Vec::with_capacity(entries.len().saturating_mul(INDEX_ENTRY_LEN));
    for e in entries {
        bytes.extend_from_slice(&e.encode());
    }
    let file = files::open(ctx.io.as_ref(), path, OpenMode::Truncate, "creating")?;
    files::write_all_at(file.as_ref(), &bytes, 0, path)?;
    file.sync_data().map_err(files::io_err("syncing", path))?;
    ctx.indexes
        .replace(seg.header.segment_id, Arc::from(entries));
    Ok(())
}

/// Moves the entries of `seg`, just sealed, from the writer's memory into
/// the log's cache of sealed indexes (they are complete: the seal's sync
/// covered them).
pub(crate) fn adopt_sealed(ctx: &LogCtx, seg: &Segment) {
    if let Some(live) = seg.take_live_index() {
        let entries: Arc<[IndexEntry]> = Arc::from(
            live.read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_slice(),
        );
        ctx.indexes.replace(seg.header.segment_id, entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<IndexEntry> {
        // Frames every 60 bytes, an entry every other one; the largest
        // timestamp before entry i is 1000 + 10 i.
        (0..4u64)
            .map(|i| IndexEntry {
                offset: i * 20,
                position: 64 + i * 120,
                max_ts_before: if i == 0 {
                    i64::MIN
                } else {
                    990 + 20 * i as i64
                },
            })
            .collect()
    }

    #[test]
    fn searches_find_the_last_entry_before() {
        let e = entries();
        let at = |key| search(&e, key).map(|e| e.offset);
        assert_eq!(at(Lookup::Offset(0)), Some(0));
        assert_eq!(at(Lookup::Offset(25)), Some(20));
        assert_eq!(at(Lookup::Offset(10_000)), Some(60));
        // Entry 2 (offset 40) has 1030 as the largest time before it.
        assert_eq!(at(Lookup::Time(1031)), Some(40));
        assert_eq!(at(Lookup::Time(1030)), Some(20));
        assert_eq!(at(Lookup::Time(i64::MIN)), None);
        assert_eq!(search(&[], Lookup::Offset(5)), None);
        let offsets = |v: Vec<IndexEntry>| v.iter().map(|e| e.offset).collect::<Vec<_>>();
        assert_eq!(offsets(after(&e, 20, 10)), vec![40, 60]);
        assert_eq!(offsets(after(&e, 19, 10)), vec![20, 40, 60]);
        assert_eq!(offsets(after(&e, 0, 1)), vec![20]);
        assert!(after(&e, 60, 10).is_empty());
    }

    #[test]
    fn the_writer_publishes_each_entry_it_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.index");
        let io = crate::io::FileIo;
        let mut w = IndexWriter::create(&io, &path, 100).expect("create");
        let live = w.live();
        for (i, pos) in (64..400u64).step_by(60).enumerate() {
            w.observe(IndexEntry {
                offset: i as u64 * 10,
                position: pos,
                max_ts_before: i64::MIN,
            })
            .expect("observe");
        }
        let in_memory = live.read().expect("lock").clone();
        let positions: Vec<u64> = in_memory.iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![64, 184, 304], "an entry every 100 bytes");
        let on_disk: Vec<IndexEntry> = std::fs::read(&path)
            .expect("read")
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(|c| IndexEntry::decode(c).expect("decode"))
            .collect();
        assert_eq!(on_disk, in_memory, "memory and file hold the same entries");
    }

    #[test]
    fn the_cache_stays_within_its_bound_and_keeps_the_newest() {
        let cache = IndexCache::default();
        let big: Arc<[IndexEntry]> = vec![entries()[0]; CACHED_ENTRIES / 2 + 1].into();
        cache.replace([1; 16], Arc::clone(&big));
        cache.replace([2; 16], Arc::clone(&big));
        assert!(cache.get(&[1; 16]).is_err(), "the oldest was evicted");
        assert!(cache.get(&[2; 16]).is_ok());
        assert_eq!(cache.cached_entries(), big.len());
        // A single index over the bound is still kept.
        let huge: Arc<[IndexEntry]> = vec![entries()[0]; CACHED_ENTRIES + 1].into();
        cache.replace([3; 16], huge);
        assert!(cache.get(&[3; 16]).is_ok());
        assert!(cache.get(&[2; 16]).is_err());
        cache.remove(&[3; 16]);
        assert_eq!(cache.cached_entries(), 0);
    }
}
