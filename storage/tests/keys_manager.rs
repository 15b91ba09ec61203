//! The key manager's lifecycle rules, with the file provider.

use std::sync::Arc;

use strongbox_protocol::model::KeyState;
use strongbox_storage::keys::{
    FileKeyProvider, KekId, KekScope, KeyError, KeyManager, KeyProvider, SegmentKeyContext,
    SegmentKeys, SegmentRef,
};
use strongbox_storage::meta::MetaStore;

struct Fixture {
    _tmp: tempfile::TempDir,
    keys: std::path::PathBuf,
    provider: Arc<FileKeyProvider>,
    km: KeyManager,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let provider = Arc::new(FileKeyProvider::open(&keys).unwrap());
    let km = KeyManager::new(provider.clone(), MetaStore::in_memory().unwrap(), 16);
    Fixture {
        _tmp: tmp,
        keys,
        provider,
        km,
    }
}

fn ctx(seg: u8) -> SegmentKeyContext {
    SegmentKeyContext {
        topic_id: [5; 16],
        partition: 1,
        segment_id: [seg; 16],
        scope: KekScope::Broker,
    }
}

fn v(version: u32) -> KekId {
    KekId {
        scope: KekScope::Broker,
        version,
    }
}

fn state(km: &KeyManager, version: u32) -> KeyState {
    km.version(&v(version)).unwrap().unwrap().state
}

#[test]
fn retiring_the_active_version_starts_a_new_one_on_the_next_segment() {
    let f = fixture();
    f.km.create(&ctx(1)).unwrap();
    let retired = f.km.retire(&v(1)).unwrap();
    assert_eq!(retired.state, KeyState::DecryptOnly);
    assert!(f.km.active_version(&KekScope::Broker).unwrap().is_none());
    assert!(matches!(
        f.km.retire(&v(1)),
        Err(KeyError::InvalidTransition(_))
    ));
    let (_, w) = f.km.create(&ctx(2)).unwrap();
    assert_eq!(w.kek, v(2));
    assert_eq!(state(&f.km, 2), KeyState::Active);
    assert!(matches!(f.km.retire(&v(9)), Err(KeyError::KekNotFound(_))));
}

#[test]
fn compromised_versions_still_open_but_never_wrap() {
    let f = fixture();
    let (d1, w1) = f.km.create(&ctx(1)).unwrap();
    f.km.mark_compromised(&v(1)).unwrap();
    assert_eq!(state(&f.km, 1), KeyState::Compromised);
    assert_eq!(f.km.open(&ctx(1), &w1).unwrap().expose(), d1.expose());
    let (_, w2) = f.km.create(&ctx(2)).unwrap();
    assert_eq!(w2.kek, v(2), "a compromised version wrapped a new key");
    // Compromised cannot be undone or repeated.
    assert!(matches!(
        f.km.retire(&v(1)),
        Err(KeyError::InvalidTransition(_))
    ));
    assert!(matches!(
        f.km.mark_compromised(&v(1)),
        Err(KeyError::InvalidTransition(_))
    ));
    // Its segments are first in line for a rewrap.
    assert_eq!(
        f.km.segments_under(&v(1), None, 10).unwrap(),
        vec![SegmentRef::from(&ctx(1))]
    );
    let rewrapped = f.km.rewrap(&ctx(1), &w1).unwrap();
    f.km.commit_rewrap(&ctx(1), &rewrapped).unwrap();
    assert!(f.km.segments_under(&v(1), None, 10).unwrap().is_empty());
    f.km.destroy_version(&v(1), false).unwrap();
    assert_eq!(
        f.km.open(&ctx(1), &rewrapped).unwrap().expose(),
        d1.expose()
    );
}

#[test]
fn an_interrupted_rewrap_is_reconciled_on_open() {
    let f = fixture();
    let (d1, w1) = f.km.create(&ctx(1)).unwrap();
    f.km.rotate(&KekScope::Broker).unwrap();
    // The new envelope was written but the registry was not told (crash).
    let rewrapped = f.km.rewrap(&ctx(1), &w1).unwrap();
    assert_eq!(f.km.version(&v(1)).unwrap().unwrap().segments, 1);
    let cold = KeyManager::new(f.provider.clone(), f.km.meta().clone(), 0);
    assert_eq!(
        cold.open(&ctx(1), &rewrapped).unwrap().expose(),
        d1.expose()
    );
    assert_eq!(f.km.version(&v(1)).unwrap().unwrap().segments, 0);
    assert_eq!(f.km.version(&v(2)).unwrap().unwrap().segments, 1);
}

#[test]
fn a_forgotten_segment_is_not_registered_again_by_a_late_read() {
    let f = fixture();
    let (_, w1) = f.km.create(&ctx(1)).unwrap();
    f.km.forget(&ctx(1)).unwrap();
    let cold = KeyManager::new(f.provider.clone(), f.km.meta().clone(), 0);
    cold.open(&ctx(1), &w1).unwrap();
    assert_eq!(f.km.version(&v(1)).unwrap().unwrap().segments, 0);
    f.km.destroy_version(&v(1), false).unwrap();
}

#[test]
fn rotation_skips_keys_the_registry_did_not_create() {
    let f = fixture();
    f.km.create(&ctx(1)).unwrap();
    // A rotation that crashed after the provider made v2 but before the
    // registry recorded it left v2 behind in the provider.
    f.provider.generate_kek(&v(2)).unwrap();
    let rotated = f.km.rotate(&KekScope::Broker).unwrap();
    assert_eq!(rotated.id, v(3));
    assert!(f.km.version(&v(2)).unwrap().is_none());
    let (_, w) = f.km.create(&ctx(2)).unwrap();
    assert_eq!(w.kek, v(3));
}

#[test]
fn the_registry_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("meta.redb");
    let provider = Arc::new(FileKeyProvider::open(tmp.path().join("keys")).unwrap());
    let (d1, w1) = {
        let km = KeyManager::new(provider.clone(), MetaStore::open(&db).unwrap(), 16);
        let out = km.create(&ctx(1)).unwrap();
        km.rotate(&KekScope::Broker).unwrap();
        out
    };
    let km = KeyManager::new(provider, MetaStore::open(&db).unwrap(), 16);
    assert_eq!(km.open(&ctx(1), &w1).unwrap().expose(), d1.expose());
    assert_eq!(state(&km, 1), KeyState::DecryptOnly);
    assert_eq!(state(&km, 2), KeyState::Active);
    let (_, w2) = km.create(&ctx(2)).unwrap();
    assert_eq!(w2.kek, v(2));
}

#[test]
fn provider_outage_fails_closed_and_changes_nothing() {
    let f = fixture();
    let (d1, w1) = f.km.create(&ctx(1)).unwrap();
    let aside = f.keys.with_file_name("keys-away");
    std::fs::rename(&f.keys, &aside).unwrap();

    // New segments cannot get a key; rotation and destruction fail; cached
    // keys keep serving (appends to open segments go on).
    assert!(matches!(
        f.km.rotate(&KekScope::Broker),
        Err(KeyError::Unavailable(_))
    ));
    assert!(f.km.create(&ctx(2)).is_err());
    assert!(matches!(
        f.km.destroy_version(&v(1), true),
        Err(KeyError::Unavailable(_))
    ));
    assert_eq!(f.km.open(&ctx(1), &w1).unwrap().expose(), d1.expose());
    let versions = f.km.versions(None).unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].state, KeyState::Active);
    assert_eq!(versions[0].segments, 1);
    assert!(f.km.stats().provider_errors >= 2);

    // Back again: everything works with no restart.
    std::fs::rename(&aside, &f.keys).unwrap();
    let (_, w2) = f.km.create(&ctx(2)).unwrap();
    assert_eq!(w2.kek, v(1));
    f.km.rotate(&KekScope::Broker).unwrap();
}

#[test]
fn envelopes_from_another_scope_are_rejected() {
    let f = fixture();
    let (_, w1) = f.km.create(&ctx(1)).unwrap();
    let other = SegmentKeyContext {
        scope: KekScope::Topic("ab".repeat(16)),
        ..ctx(1)
    };
    assert!(matches!(
        f.km.open(&other, &w1),
        Err(KeyError::UnwrapRejected { .. })
    ));
}

#[test]
fn concurrent_creates_and_rotations_stay_consistent() {
    let f = fixture();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let km = &f.km;
            s.spawn(move || {
                for i in 0..10u8 {
                    let c = ctx(t * 10 + i);
                    let (d, w) = km.create(&c).unwrap();
                    assert_eq!(km.open(&c, &w).unwrap().expose(), d.expose());
                    if i % 4 == 0 {
                        km.rotate(&KekScope::Broker).unwrap();
                    }
                }
            });
        }
    });
    let versions = f.km.versions(None).unwrap();
    assert_eq!(
        versions
            .iter()
            .filter(|v| v.state == KeyState::Active)
            .count(),
        1
    );
    let total: u64 = versions.iter().map(|v| v.segments).sum();
    assert_eq!(total, 40);
    let recorded = f.km.meta().read(|r| r.segment_keks()).unwrap();
    assert_eq!(recorded.len(), 40);
    for v in &versions {
        let n = recorded.iter().filter(|(_, k)| *k == v.id).count() as u64;
        assert_eq!(n, v.segments, "{}", v.id);
    }
}

/// A clock the test sets by hand.
#[derive(Debug)]
struct ManualClock(std::sync::atomic::AtomicI64);

impl strongbox_storage::log::Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The registry's times come from the manager's clock, not the system's:
/// a version created at one instant and retired, compromised and destroyed
/// at others records exactly those instants.
#[test]
fn registry_times_come_from_the_injected_clock() {
    let f = fixture();
    let clock = Arc::new(ManualClock(std::sync::atomic::AtomicI64::new(1_000)));
    let km = KeyManager::new(f.provider.clone(), MetaStore::in_memory().unwrap(), 16)
        .with_clock(clock.clone());
    let set = |ms| clock.0.store(ms, std::sync::atomic::Ordering::SeqCst);

    let created = km.rotate(&KekScope::Broker).unwrap();
    assert_eq!(
        (created.created_at, created.state_changed_at),
        (1_000, 1_000)
    );
    set(2_000);
    let retired = km.retire(&created.id).unwrap();
    assert_eq!(
        (retired.created_at, retired.state_changed_at),
        (1_000, 2_000)
    );
    set(3_000);
    let compromised = km.mark_compromised(&created.id).unwrap();
    assert_eq!(compromised.state_changed_at, 3_000);
    set(4_000);
    km.destroy_version(&created.id, false).unwrap();
    let destroyed = km.version(&created.id).unwrap().unwrap();
    assert_eq!(destroyed.state, KeyState::Destroyed);
    assert_eq!(
        (destroyed.created_at, destroyed.state_changed_at),
        (1_000, 4_000)
    );
}
