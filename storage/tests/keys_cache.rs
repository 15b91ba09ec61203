//! The DEK cache: bounded, least recently used out first, counted.

use strongbox_storage::keys::{Dek, DekCache, KekId, KekScope};

fn kek(version: u32) -> KekId {
    KekId {
        scope: KekScope::Broker,
        version,
    }
}

fn seg(n: u8) -> [u8; 16] {
    [n; 16]
}

fn dek(n: u8) -> Dek {
    Dek::from_bytes([n; 32])
}

#[test]
fn never_holds_more_than_its_capacity() {
    let mut c = DekCache::new(8);
    for n in 0..100u8 {
        c.insert(seg(n), kek(1), dek(n));
        assert!(c.len() <= 8);
    }
    assert_eq!(c.len(), 8);
    let s = c.stats();
    assert_eq!(s.evictions, 92);
    assert_eq!(s.capacity, 8);
    // The newest eight remain.
    for n in 92..100u8 {
        assert!(c.contains(&seg(n), &kek(1)), "{n}");
    }
    assert!(!c.contains(&seg(91), &kek(1)));
}

#[test]
fn evicts_the_least_recently_used() {
    let mut c = DekCache::new(3);
    c.insert(seg(1), kek(1), dek(1));
    c.insert(seg(2), kek(1), dek(2));
    c.insert(seg(3), kek(1), dek(3));
    // Use 1, so 2 is now the oldest.
    assert_eq!(c.get(&seg(1), &kek(1)).unwrap().expose(), &[1; 32]);
    c.insert(seg(4), kek(1), dek(4));
    assert!(c.contains(&seg(1), &kek(1)));
    assert!(!c.contains(&seg(2), &kek(1)));
    assert!(c.contains(&seg(3), &kek(1)));
    assert!(c.contains(&seg(4), &kek(1)));
    // Replacing an entry does not grow the cache and refreshes it.
    c.insert(seg(3), kek(1), dek(33));
    assert_eq!(c.len(), 3);
    c.insert(seg(5), kek(1), dek(5));
    assert!(!c.contains(&seg(1), &kek(1)));
    assert_eq!(c.get(&seg(3), &kek(1)).unwrap().expose(), &[33; 32]);
}

#[test]
fn counts_hits_and_misses() {
    let mut c = DekCache::new(4);
    assert!(c.get(&seg(1), &kek(1)).is_none());
    c.insert(seg(1), kek(1), dek(1));
    assert!(c.get(&seg(1), &kek(1)).is_some());
    assert!(c.get(&seg(1), &kek(1)).is_some());
    // Same segment under another KEK version is another entry.
    assert!(c.get(&seg(1), &kek(2)).is_none());
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.len), (2, 2, 1));
}

#[test]
fn removal_by_segment_kek_and_scope() {
    let topic = KekScope::Topic("ff".repeat(16));
    let tk = KekId {
        scope: topic.clone(),
        version: 1,
    };
    let mut c = DekCache::new(16);
    c.insert(seg(1), kek(1), dek(1));
    c.insert(seg(1), kek(2), dek(2));
    c.insert(seg(2), kek(1), dek(3));
    c.insert(seg(3), tk.clone(), dek(4));
    assert_eq!(c.remove_segment(&seg(1)), 2);
    assert_eq!(c.remove_kek(&kek(1)), 1);
    assert_eq!(c.len(), 1);
    assert_eq!(c.remove_scope(&topic), 1);
    assert!(c.is_empty());
    // Evicted entries are gone for good.
    assert!(c.get(&seg(1), &kek(1)).is_none());
}

#[test]
fn a_removal_in_between_keeps_a_stale_key_out() {
    let mut c = DekCache::new(4);
    let generation = c.generation();
    // ... an unwrap happens; meanwhile the KEK is destroyed ...
    c.remove_kek(&kek(1));
    c.insert_if_generation(generation, seg(1), kek(1), dek(1));
    assert!(c.is_empty());
    let generation = c.generation();
    c.insert_if_generation(generation, seg(1), kek(1), dek(1));
    assert_eq!(c.len(), 1);
}

#[test]
fn zero_capacity_caches_nothing() {
    let mut c = DekCache::new(0);
    c.insert(seg(1), kek(1), dek(1));
    assert!(c.is_empty());
    assert!(c.get(&seg(1), &kek(1)).is_none());
}

#[test]
fn cached_keys_zeroize_on_drop() {
    // Eviction drops the `Dek`; its type guarantees the bytes are wiped.
    fn assert_zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    assert_zeroize_on_drop::<Dek>();
}
