//! The key manager: ties a [`KeyProvider`], the key registry in the
//! metadata store and the DEK cache together, and is what the partition log
//! uses as its [`SegmentKeys`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use strongbox_protocol::model::KeyState;

use super::cache::{CacheStats, DekCache};
use super::registry::{self, KekVersion, SegmentRef};
use super::{
    Dek, KekId, KekScope, KeyError, KeyProvider, SegmentKeyContext, SegmentKeys, WrappedDek,
};
use crate::meta::MetaStore;
use crate::observe::{self, KeyOp};
use strongbox_protocol::clock::{Clock, SystemClock};

/// How many version numbers [`KeyManager::rotate`] skips at most when the
/// provider already holds keys the registry does not know (left by a
/// rotation that crashed between the provider and the registry).
const MAX_ORPHAN_SKIP: u32 = 16;

/// Counters of key operations, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyManagerStats {
    /// Data keys wrapped (new segments, rewraps).
    pub wraps: u64,
    /// Data keys unwrapped by the provider (cache misses).
    pub unwraps: u64,
    /// Provider calls that failed.
    pub provider_errors: u64,
    /// The DEK cache.
    pub cache: CacheStats,
}

/// Called after each data key the provider unwrapped (not on cache hits),
/// with the segment and the KEK version that wrapped it: the audit trail
/// counts unwraps with it. Must be cheap and must not call back into the
/// key manager.
pub type UnwrapObserver = Arc<dyn Fn(&SegmentKeyContext, &KekId) + Send + Sync>;

/// What [`KeyManager::destroy_version`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestroyOutcome {
    /// The version, now destroyed.
    pub version: KekVersion,
    /// Segments whose data key it wrapped: now unreadable.
    pub segments_lost: u64,
}

/// Creates, opens and forgets segment data keys; rotates, retires and
/// destroys KEK versions.
///
/// # To ensure correctness
///
/// - New data keys are wrapped only under the scope's `active` version; a
///   scope without one (first use, or after its active version was retired,
///   compromised or destroyed) gets a new version first.
/// - Lifecycle changes and segment creation are serialized, so a segment is
///   never recorded under a version that a concurrent call destroyed.
/// - A version is destroyed in the provider before the registry says so:
///   the registry never claims a key is gone while the provider still holds
///   it. Destroying again after a failure in between completes the job.
/// - It opens write transactions of its own on the metadata store: never
///   call it from inside a [`MetaStore::write`] closure (redb runs one writer
///   at a time, so that would wait for itself).
pub struct KeyManager {
    provider: Arc<dyn KeyProvider>,
    /// The provider's kind, for the storage observer (read once).
    provider_kind: &'static str,
    meta: MetaStore,
    cache: Mutex<DekCache>,
    lifecycle: Mutex<()>,
    wraps: AtomicU64,
    unwraps: AtomicU64,
    provider_errors: AtomicU64,
    unwrap_observer: RwLock<Option<UnwrapObserver>>,
    /// Stamps the registry's `created_at` and `state_changed_at`.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("provider", &self.provider)
            .field("meta", &self.meta)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their data half
    // changed (the cache's operations do not panic midway, and the
    // lifecycle lock guards nothing), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KeyManager {
    /// A key manager over `provider` and the registry in `meta`, caching at
    /// most `cache_capacity` unwrapped data keys.
    pub fn new(provider: Arc<dyn KeyProvider>, meta: MetaStore, cache_capacity: usize) -> Self {
        Self {
            provider_kind: provider.info().kind,
            provider,
            meta,
            cache: Mutex::new(DekCache::new(cache_capacity)),
            lifecycle: Mutex::new(()),
            wraps: AtomicU64::new(0),
            unwraps: AtomicU64::new(0),
            provider_errors: AtomicU64::new(0),
            unwrap_observer: RwLock::new(None),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same manager reading the time from `clock` instead of the
    /// system clock (for the registry's `created_at` and
    /// `state_changed_at`).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Installs (or replaces) the observer told about every unwrap that
    /// goes to the provider.
    pub fn set_unwrap_observer(&self, observer: UnwrapObserver) {
        *self
            .unwrap_observer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(observer);
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The metadata store that holds the registry.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// Operation counters.
    pub fn stats(&self) -> KeyManagerStats {
        KeyManagerStats {
            wraps: self.wraps.load(Ordering::Relaxed),
            unwraps: self.unwraps.load(Ordering::Relaxed),
            provider_errors: self.provider_errors.load(Ordering::Relaxed),
            cache: lock(&self.cache).stats(),
        }
    }

    fn provider_call<T>(&self, r: Result<T, KeyError>) -> Result<T, KeyError> {
        if r.is_err() {
            self.provider_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Calls the provider: reports the call to the storage observer
    /// ([`crate::observe`]) and counts a failure.
    fn call<T>(
        &self,
        op: KeyOp,
        f: impl FnOnce(&dyn KeyProvider) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let started = observe::start();
        let r = f(self.provider.as_ref());
        observe::key_operation(op, self.provider_kind, started, r.as_ref().err());
        self.provider_call(r)
    }

    /// The registry record of `id`.
    ///
    /// # Errors
    ///
    /// Registry failures.
    pub fn version(&self, id: &KekId) -> Result<Option<KekVersion>, KeyError> {
        Ok(self.meta.read(|r| r.kek_version(id))?)
    }

    /// Every version of `scope` (of every scope when `None`).
    ///
    /// # Errors
    ///
    /// Registry failures.
    pub fn versions(&self, scope: Option<&KekScope>) -> Result<Vec<KekVersion>, KeyError> {
        Ok(self.meta.read(|r| r.kek_versions(scope))?)
    }

    /// The active version of `scope`, if it has one.
    ///
    /// # Errors
    ///
    /// Registry failures.
    pub fn active_version(&self, scope: &KekScope) -> Result<Option<KekVersion>, KeyError> {
        Ok(self.meta.read(|r| registry::active_version(r, scope))?)
    }

    /// Up to `limit` segments wrapped under `id`, after `after` (the rewrap
    /// queue).
    ///
    /// # Errors
    ///
    /// Registry failures.
    pub fn segments_under(
        &self,
        id: &KekId,
        after: Option<&SegmentRef>,
        limit: usize,
    ) -> Result<Vec<SegmentRef>, KeyError> {
        Ok(self.meta.read(|r| r.segments_under(id, after, limit))?)
    }

    /// Generates a new version of `scope` in the provider and registers it
    /// as active. Caller holds the lifecycle lock.
    fn new_active_version(&self, scope: &KekScope) -> Result<KekVersion, KeyError> {
        let newest = self
            .meta
            .read(|r| r.kek_versions(Some(scope)))?
            .iter()
            .map(|v| v.id.version)
            .max()
            .unwrap_or(0);
        let mut id = KekId {
            scope: scope.clone(),
            version: newest.checked_add(1).ok_or_else(|| {
                KeyError::InvalidTransition(format!("scope {scope} has no version numbers left"))
            })?,
        };
        // Never adopt a key the registry did not create: skip past it.
        let mut skipped = 0;
        while self.call(KeyOp::Lookup, |p| p.has_kek(&id))? {
            tracing::warn!(
                key = %id,
                "the key provider holds a key the registry does not know (left by an \
                 interrupted rotation?); skipping that version number"
            );
            skipped += 1;
            if skipped > MAX_ORPHAN_SKIP {
                return Err(KeyError::KekExists(id.label()));
            }
            id.version = id.version.checked_add(1).ok_or_else(|| {
                KeyError::InvalidTransition(format!("scope {scope} has no version numbers left"))
            })?;
        }
        self.call(KeyOp::Generate, |p| p.generate_kek(&id))?;
        let kind = self.provider.info().kind;
        let v = self
            .meta
            .write(|tx| registry::add_active_version(tx, &id, kind, self.clock.now_ms()))?;
        tracing::info!(key = %id, "new active key-encryption key version");
        Ok(v)
    }

    /// Rotates `scope`: a new KEK version is generated in the provider and
    /// becomes active; the previous active version becomes decrypt-only and
    /// keeps unwrapping the data keys it wraps.
    ///
    /// # Errors
    ///
    /// Provider failures (nothing changes in the registry); registry
    /// failures.
    pub fn rotate(&self, scope: &KekScope) -> Result<KekVersion, KeyError> {
        let _guard = lock(&self.lifecycle);
        self.new_active_version(scope)
    }

    /// Makes `id` decrypt-only: it stops wrapping new data keys (the scope
    /// gets a new version on its next segment).
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidTransition`] unless `id` is active;
    /// [`KeyError::KekNotFound`]; registry failures.
    pub fn retire(&self, id: &KekId) -> Result<KekVersion, KeyError> {
        let _guard = lock(&self.lifecycle);
        self.meta
            .write(|tx| registry::set_state(tx, id, KeyState::DecryptOnly, self.clock.now_ms()))
    }

    /// Marks `id` compromised: it never wraps again, still unwraps (so its
    /// segments can be rewrapped first).
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidTransition`] when it is destroyed or already
    /// compromised; [`KeyError::KekNotFound`]; registry failures.
    pub fn mark_compromised(&self, id: &KekId) -> Result<KekVersion, KeyError> {
        let _guard = lock(&self.lifecycle);
        self.meta
            .write(|tx| registry::set_state(tx, id, KeyState::Compromised, self.clock.now_ms()))
    }

    /// Destroys `id` in the provider and marks it destroyed. Refused while
    /// segments still need it, unless `force`; then those segments become
    /// unreadable.
    ///
    /// # Errors
    ///
    /// [`KeyError::InUse`] with the count; [`KeyError::InvalidTransition`]
    /// when already destroyed; [`KeyError::KekNotFound`]; provider and
    /// registry failures.
    pub fn destroy_version(&self, id: &KekId, force: bool) -> Result<DestroyOutcome, KeyError> {
        let _guard = lock(&self.lifecycle);
        let v = self
            .version(id)?
            .ok_or_else(|| KeyError::KekNotFound(id.label()))?;
        if !registry::transition_allowed(v.state, KeyState::Destroyed) {
            return Err(KeyError::InvalidTransition(format!(
                "key {id} is {} and cannot be destroyed",
                v.state.name()
            )));
        }
        if v.segments > 0 && !force {
            return Err(KeyError::InUse {
                kek: id.label(),
                segments: v.segments,
            });
        }
        self.destroy_in_provider(id)?;
        lock(&self.cache).remove_kek(id);
        let version = self
            .meta
            .write(|tx| registry::set_state(tx, id, KeyState::Destroyed, self.clock.now_ms()))?;
        tracing::warn!(key = %id, segments = version.segments, "key-encryption key destroyed");
        Ok(DestroyOutcome {
            segments_lost: version.segments,
            version,
        })
    }

    fn destroy_in_provider(&self, id: &KekId) -> Result<(), KeyError> {
        // Gone already: an earlier destruction got this far.
        self.call(KeyOp::Destroy, |p| match p.destroy_kek(id) {
            Err(KeyError::KekNotFound(_)) => Ok(()),
            other => other,
        })
    }

    /// Destroys every version of `scope` (deleting a topic with a dedicated
    /// KEK: crypto-shredding), whatever segments remain; returns the versions
    /// destroyed now.
    ///
    /// # Errors
    ///
    /// Provider and registry failures; versions destroyed before the failure
    /// stay destroyed, and calling again finishes the job.
    pub fn destroy_scope(&self, scope: &KekScope) -> Result<Vec<KekVersion>, KeyError> {
        let _guard = lock(&self.lifecycle);
        let mut done = Vec::new();
        for v in self.versions(Some(scope))? {
            if v.state == KeyState::Destroyed {
                continue;
            }
            self.destroy_in_provider(&v.id)?;
            lock(&self.cache).remove_kek(&v.id);
            let v = self.meta.write(|tx| {
                registry::set_state(tx, &v.id, KeyState::Destroyed, self.clock.now_ms())
            })?;
            done.push(v);
        }
        lock(&self.cache).remove_scope(scope);
        if !done.is_empty() {
            tracing::warn!(scope = %scope, versions = done.len(), "key scope destroyed");
        }
        Ok(done)
    }

    /// Unwraps `wrapped` and wraps the data key again under the scope's
    /// active version. The caller writes the new envelope atomically, then
    /// calls [`KeyManager::commit_rewrap`].
    ///
    /// # Errors
    ///
    /// As [`SegmentKeys::open`] and [`SegmentKeys::create`].
    pub fn rewrap(
        &self,
        ctx: &SegmentKeyContext,
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, KeyError> {
        let dek = self.open(ctx, wrapped)?;
        let _guard = lock(&self.lifecycle);
        let active = match self.active_version(&ctx.scope)? {
            Some(v) => v,
            None => self.new_active_version(&ctx.scope)?,
        };
        let blob = self.call(KeyOp::Rewrap, |p| p.wrap(&active.id, &dek))?;
        self.wraps.fetch_add(1, Ordering::Relaxed);
        Ok(WrappedDek {
            kek: active.id,
            wrapped: blob,
        })
    }

    /// Records that the segment's envelope now holds `wrapped` (after a
    /// rewrap).
    ///
    /// # Errors
    ///
    /// Registry failures; [`KeyError::Destroyed`] when `wrapped.kek` is.
    pub fn commit_rewrap(
        &self,
        ctx: &SegmentKeyContext,
        wrapped: &WrappedDek,
    ) -> Result<(), KeyError> {
        let _guard = lock(&self.lifecycle);
        self.record(ctx, &wrapped.kek)
    }

    /// Records the segment under `kek` unless it already is.
    fn record(&self, ctx: &SegmentKeyContext, kek: &KekId) -> Result<(), KeyError> {
        let seg = SegmentRef::from(ctx);
        self.meta.write(|tx| {
            match tx.kek_version(kek)? {
                Some(v) if v.state == KeyState::Destroyed => {
                    return Err(KeyError::Destroyed(kek.label()));
                }
                Some(_) => {}
                None => return Err(KeyError::KekNotFound(kek.label())),
            }
            tx.assign_segment_kek(&seg, kek)?;
            Ok(())
        })
    }

    /// Unwraps through the provider, checking the registry first.
    fn unwrap_checked(
        &self,
        ctx: &SegmentKeyContext,
        wrapped: &WrappedDek,
    ) -> Result<Dek, KeyError> {
        let kek = &wrapped.kek;
        let (state, recorded) = self.meta.read(|r| {
            let state = r.kek_version(kek)?.map(|v| v.state);
            let recorded = r.segment_kek(&SegmentRef::from(ctx))?;
            Ok::<_, KeyError>((state, recorded))
        })?;
        match state {
            Some(s) if !registry::can_unwrap(s) => return Err(KeyError::Destroyed(kek.label())),
            Some(_) => {}
            None => tracing::warn!(
                key = %kek,
                "opening a segment whose key version the registry does not know \
                 (metadata store restored from an older backup?)"
            ),
        }
        let dek = self.call(KeyOp::Unwrap, |p| p.unwrap(kek, &wrapped.wrapped))?;
        self.unwraps.fetch_add(1, Ordering::Relaxed);
        let observer = self
            .unwrap_observer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(ctx, kek);
        }
        // Keep the registry in step with the envelope (an interrupted rewrap
        // leaves the envelope one version ahead of the registry). A segment
        // with no record is not added back: it was forgotten (deleted).
        if state.is_some() && recorded.as_ref().is_some_and(|r| r != kek) {
            let _guard = lock(&self.lifecycle);
            self.record(ctx, kek)?;
        }
        Ok(dek)
    }
}

impl SegmentKeys for KeyManager {
    fn create(&self, ctx: &SegmentKeyContext) -> Result<(Dek, WrappedDek), KeyError> {
        let _guard = lock(&self.lifecycle);
        let active = match self.active_version(&ctx.scope)? {
            Some(v) => v,
            None => self.new_active_version(&ctx.scope)?,
        };
        let dek = Dek::generate()?;
        let blob = self.call(KeyOp::Wrap, |p| p.wrap(&active.id, &dek))?;
        self.wraps.fetch_add(1, Ordering::Relaxed);
        self.record(ctx, &active.id)?;
        lock(&self.cache).insert(ctx.segment_id, active.id.clone(), dek.duplicate());
        Ok((
            dek,
            WrappedDek {
                kek: active.id,
                wrapped: blob,
            },
        ))
    }

    fn open(&self, ctx: &SegmentKeyContext, wrapped: &WrappedDek) -> Result<Dek, KeyError> {
        // An envelope wrapped under another scope's key does not belong to
        // this segment (a segment copied in from another topic).
        if wrapped.kek.scope != ctx.scope {
            return Err(KeyError::UnwrapRejected {
                kek: wrapped.kek.label(),
            });
        }
        let generation = {
            let mut cache = lock(&self.cache);
            if let Some(dek) = cache.get(&ctx.segment_id, &wrapped.kek) {
                return Ok(dek);
            }
            cache.generation()
        };
        let dek = self.unwrap_checked(ctx, wrapped)?;
        lock(&self.cache).insert_if_generation(
            generation,
            ctx.segment_id,
            wrapped.kek.clone(),
            dek.duplicate(),
        );
        Ok(dek)
    }

    fn forget(&self, ctx: &SegmentKeyContext) -> Result<(), KeyError> {
        lock(&self.cache).remove_segment(&ctx.segment_id);
        let _guard = lock(&self.lifecycle);
        self.meta
            .write(|tx| tx.remove_segment_kek(&SegmentRef::from(ctx)))?;
        Ok(())
    }
}

#[cfg(test)]
mod unwrap_observer_tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::keys::FileKeyProvider;

    #[test]
    fn observes_provider_unwraps_not_cache_hits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let provider =
            Arc::new(FileKeyProvider::open(dir.path().join("keys")).expect("file provider"));
        let meta = MetaStore::in_memory().expect("meta");
        let ctx = SegmentKeyContext {
            topic_id: [1; 16],
            partition: 3,
            segment_id: [2; 16],
            scope: KekScope::Broker,
        };
        let (_, envelope) = KeyManager::new(provider.clone(), meta.clone(), 8)
            .create(&ctx)
            .expect("create");

        // A fresh manager (empty cache) over the same provider and registry.
        let keys = KeyManager::new(provider, meta, 8);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (seen2, calls2) = (seen.clone(), calls.clone());
        keys.set_unwrap_observer(Arc::new(move |c: &SegmentKeyContext, k: &KekId| {
            calls2.fetch_add(1, Ordering::Relaxed);
            lock(&seen2).push((c.partition, c.segment_id, k.clone()));
        }));
        keys.open(&ctx, &envelope).expect("unwrap");
        keys.open(&ctx, &envelope).expect("cache hit");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(
            *lock(&seen),
            vec![(3, [2; 16], envelope.kek.clone())],
            "the segment and the KEK version that wrapped it"
        );
        assert_eq!(keys.stats().unwraps, 1);
    }
}
