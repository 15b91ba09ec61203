//! A bounded LRU cache of unwrapped data keys, so reads do not ask the
//! provider (an HSM round trip) for every batch.
//!
//! Entries are keyed by (segment id, KEK version): after a rewrap the same
//! segment is found under its new version. An evicted or removed [`Dek`] is
//! dropped, which zeroizes it. The cache is not synchronized; the key manager
//! holds it behind a mutex.

use std::collections::{BTreeMap, HashMap};

use super::{Dek, KekId};

/// What the cache is keyed by.
pub type CacheKey = ([u8; 16], KekId);

/// Counters of a [`DekCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups that found the key.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries dropped to stay within the capacity.
    pub evictions: u64,
    /// Entries held now.
    pub len: usize,
    /// Most entries it holds.
    pub capacity: usize,
}

/// A bounded, zeroizing LRU cache of data keys.
pub struct DekCache {
    capacity: usize,
    /// Entry → (key, last-use tick).
    entries: HashMap<CacheKey, (Dek, u64)>,
    /// Last-use tick → entry, oldest first.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    /// Bumped whenever entries are removed for a reason other than space,
    /// so that a key unwrapped before a destruction is not cached after it.
    generation: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl std::fmt::Debug for DekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("capacity", &self.capacity)
            .field("len", &self.entries.len())
            .finish()
    }
}

impl DekCache {
    /// An empty cache holding at most `capacity` keys (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            generation: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    /// A copy of the cached key, marking it most recently used.
    pub fn get(&mut self, segment_id: &[u8; 16], kek: &KekId) -> Option<Dek> {
        let key = (*segment_id, kek.clone());
        let tick = self.next_tick();
        match self.entries.get_mut(&key) {
            Some((dek, used)) => {
                self.order.remove(used);
                *used = tick;
                self.order.insert(tick, key);
                self.hits = self.hits.saturating_add(1);
                Some(dek.duplicate())
            }
            None => {
                self.misses = self.misses.saturating_add(1);
                None
            }
        }
    }

    /// Caches `dek`, evicting the least recently used keys beyond the
    /// capacity.
    pub fn insert(&mut self, segment_id: [u8; 16], kek: KekId, dek: Dek) {
        if self.capacity == 0 {
            return;
        }
        let tick = self.next_tick();
        let key = (segment_id, kek);
        if let Some((_, old)) = self.entries.insert(key.clone(), (dek, tick)) {
            self.order.remove(&old);
        }
        self.order.insert(tick, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.evictions = self.evictions.saturating_add(1);
        }
    }

    /// The current generation; see [`DekCache::insert_if_generation`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Caches `dek` only if nothing was removed since `generation` was
    /// read: a key unwrapped while its KEK was being destroyed stays out.
    pub fn insert_if_generation(
        &mut self,
        generation: u64,
        segment_id: [u8; 16],
        kek: KekId,
        dek: Dek,
    ) {
        if generation == self.generation {
            self.insert(segment_id, kek, dek);
        }
    }

    fn remove_where(&mut self, pred: impl Fn(&CacheKey) -> bool) -> usize {
        self.generation = self.generation.wrapping_add(1);
        let before = self.entries.len();
        self.entries.retain(|k, _| !pred(k));
        self.order.retain(|_, k| !pred(k));
        before - self.entries.len()
    }

    /// Drops every cached key of a segment; returns how many.
    pub fn remove_segment(&mut self, segment_id: &[u8; 16]) -> usize {
        self.remove_where(|(s, _)| s == segment_id)
    }

    /// Drops every key wrapped under `kek`; returns how many.
    pub fn remove_kek(&mut self, kek: &KekId) -> usize {
        self.remove_where(|(_, k)| k == kek)
    }

    /// Drops every key wrapped under any version of `scope`.
    pub fn remove_scope(&mut self, scope: &super::KekScope) -> usize {
        self.remove_where(|(_, k)| &k.scope == scope)
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.remove_where(|_| true);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when the cache holds a key for the segment under `kek` (does not
    /// count as a use).
    pub fn contains(&self, segment_id: &[u8; 16], kek: &KekId) -> bool {
        self.entries.contains_key(&(*segment_id, kek.clone()))
    }

    /// Its counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            len: self.entries.len(),
            capacity: self.capacity,
        }
    }
}
