//! Model-based test of the key registry's state machine: random sequences
//! of create, forget, open, rotate, retire, compromise, destroy and scope
//! destruction against a plain model, through the key manager with a real
//! (file) provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use strongbox_protocol::model::KeyState;
use strongbox_storage::keys::{
    FileKeyProvider, KekId, KekScope, KeyError, KeyManager, SegmentKeyContext, SegmentKeys,
    WrappedDek,
};
use strongbox_storage::meta::MetaStore;

#[derive(Debug, Clone)]
enum Op {
    Create {
        scope: usize,
        seg: u8,
    },
    Forget {
        seg: u8,
    },
    Open {
        seg: u8,
    },
    Rotate {
        scope: usize,
    },
    Retire {
        scope: usize,
        version: u32,
    },
    Compromise {
        scope: usize,
        version: u32,
    },
    Destroy {
        scope: usize,
        version: u32,
        force: bool,
    },
    DestroyScope {
        scope: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let scope = 0..2usize;
    let seg = 0..10u8;
    let version = 1..6u32;
    prop_oneof![
        4 => (scope.clone(), seg.clone()).prop_map(|(scope, seg)| Op::Create { scope, seg }),
        2 => seg.clone().prop_map(|seg| Op::Forget { seg }),
        3 => seg.prop_map(|seg| Op::Open { seg }),
        2 => scope.clone().prop_map(|scope| Op::Rotate { scope }),
        1 => (scope.clone(), version.clone()).prop_map(|(scope, version)| Op::Retire { scope, version }),
        1 => (scope.clone(), version.clone())
            .prop_map(|(scope, version)| Op::Compromise { scope, version }),
        2 => (scope.clone(), version, any::<bool>())
            .prop_map(|(scope, version, force)| Op::Destroy { scope, version, force }),
        1 => scope.prop_map(|scope| Op::DestroyScope { scope }),
    ]
}

fn scopes() -> [KekScope; 2] {
    [KekScope::Broker, KekScope::Topic("5e".repeat(16))]
}

/// The model: versions per scope with state and segment count; segments
/// with their scope, version, key and envelope.
#[derive(Default)]
struct Model {
    versions: BTreeMap<(usize, u32), (KeyState, u64)>,
    segments: BTreeMap<u8, (usize, u32, [u8; 32], WrappedDek)>,
}

impl Model {
    fn newest(&self, scope: usize) -> u32 {
        self.versions
            .keys()
            .filter(|(s, _)| *s == scope)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0)
    }

    fn active(&self, scope: usize) -> Option<u32> {
        self.versions
            .iter()
            .find(|((s, _), (st, _))| *s == scope && *st == KeyState::Active)
            .map(|((_, v), _)| *v)
    }

    fn add_active(&mut self, scope: usize) -> u32 {
        let next = self.newest(scope) + 1;
        for ((s, _), (st, _)) in self.versions.iter_mut() {
            if *s == scope && *st == KeyState::Active {
                *st = KeyState::DecryptOnly;
            }
        }
        self.versions.insert((scope, next), (KeyState::Active, 0));
        next
    }
}

fn ctx(scope: usize, seg: u8) -> SegmentKeyContext {
    SegmentKeyContext {
        topic_id: [scope as u8; 16],
        partition: 0,
        segment_id: [seg; 16],
        scope: scopes()[scope].clone(),
    }
}

fn id(scope: usize, version: u32) -> KekId {
    KekId {
        scope: scopes()[scope].clone(),
        version,
    }
}

fn check_transition(
    model: &mut Model,
    scope: usize,
    version: u32,
    to: KeyState,
    got: Result<KeyState, KeyError>,
) {
    match model.versions.get_mut(&(scope, version)) {
        None => assert!(matches!(got, Err(KeyError::KekNotFound(_))), "{got:?}"),
        Some((st, _)) => {
            let allowed = matches!(
                (*st, to),
                (
                    KeyState::Active,
                    KeyState::DecryptOnly | KeyState::Compromised
                ) | (KeyState::DecryptOnly, KeyState::Compromised)
            );
            if allowed {
                assert_eq!(got.unwrap(), to);
                *st = to;
            } else {
                assert!(
                    matches!(got, Err(KeyError::InvalidTransition(_))),
                    "{got:?}"
                );
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(FileKeyProvider::open(tmp.path().join("keys")).unwrap());
    let km = KeyManager::new(provider, MetaStore::in_memory().unwrap(), 4);
    let mut model = Model::default();

    for op in ops {
        let before = model.versions.clone();
        match op {
            Op::Create { scope, seg } => {
                if model.segments.contains_key(&seg) {
                    continue; // segment ids are unique; the log never reuses one
                }
                let version = match model.active(scope) {
                    Some(v) => v,
                    None => model.add_active(scope),
                };
                let (dek, wrapped) = km.create(&ctx(scope, seg)).unwrap();
                assert_eq!(wrapped.kek, id(scope, version));
                if let Some(entry) = model.versions.get_mut(&(scope, version)) {
                    entry.1 += 1;
                }
                model
                    .segments
                    .insert(seg, (scope, version, *dek.expose(), wrapped));
            }
            Op::Forget { seg } => {
                let scope = model.segments.get(&seg).map_or(0, |s| s.0);
                km.forget(&ctx(scope, seg)).unwrap();
                if let Some((scope, version, _, _)) = model.segments.remove(&seg)
                    && let Some(entry) = model.versions.get_mut(&(scope, version))
                {
                    entry.1 -= 1;
                }
            }
            Op::Open { seg } => {
                let Some((scope, version, key, wrapped)) = model.segments.get(&seg) else {
                    continue;
                };
                let got = km.open(&ctx(*scope, seg), wrapped);
                if model.versions[&(*scope, *version)].0 == KeyState::Destroyed {
                    assert!(matches!(got, Err(KeyError::Destroyed(_))), "{got:?}");
                } else {
                    assert_eq!(got.unwrap().expose(), key);
                }
            }
            Op::Rotate { scope } => {
                let version = model.add_active(scope);
                let v = km.rotate(&scopes()[scope]).unwrap();
                assert_eq!(v.id, id(scope, version));
            }
            Op::Retire { scope, version } => {
                let got = km.retire(&id(scope, version)).map(|v| v.state);
                check_transition(&mut model, scope, version, KeyState::DecryptOnly, got);
            }
            Op::Compromise { scope, version } => {
                let got = km.mark_compromised(&id(scope, version)).map(|v| v.state);
                check_transition(&mut model, scope, version, KeyState::Compromised, got);
            }
            Op::Destroy {
                scope,
                version,
                force,
            } => {
                let got = km.destroy_version(&id(scope, version), force);
                match model.versions.get_mut(&(scope, version)) {
                    None => assert!(matches!(got, Err(KeyError::KekNotFound(_))), "{got:?}"),
                    Some((KeyState::Destroyed, _)) => {
                        assert!(
                            matches!(got, Err(KeyError::InvalidTransition(_))),
                            "{got:?}"
                        );
                    }
                    Some((_, n)) if *n > 0 && !force => match got {
                        Err(KeyError::InUse { segments, .. }) => assert_eq!(segments, *n),
                        other => panic!("expected InUse, got {other:?}"),
                    },
                    Some((st, n)) => {
                        assert_eq!(got.unwrap().segments_lost, *n);
                        *st = KeyState::Destroyed;
                    }
                }
            }
            Op::DestroyScope { scope } => {
                let live = model
                    .versions
                    .iter()
                    .filter(|((s, _), (st, _))| *s == scope && *st != KeyState::Destroyed)
                    .count();
                let done = km.destroy_scope(&scopes()[scope]).unwrap();
                assert_eq!(done.len(), live);
                for ((s, _), (st, _)) in model.versions.iter_mut() {
                    if *s == scope {
                        *st = KeyState::Destroyed;
                    }
                }
            }
        }

        // The registry equals the model.
        let registry: BTreeMap<(usize, u32), (KeyState, u64)> = km
            .versions(None)
            .unwrap()
            .into_iter()
            .map(|v| {
                let scope = scopes().iter().position(|s| *s == v.id.scope).unwrap();
                ((scope, v.id.version), (v.state, v.segments))
            })
            .collect();
        assert_eq!(registry, model.versions);

        // At most one active version per scope.
        for scope in 0..2 {
            let active = registry
                .iter()
                .filter(|((s, _), (st, _))| *s == scope && *st == KeyState::Active)
                .count();
            assert!(active <= 1, "scope {scope} has {active} active versions");
        }
        // Destroyed is terminal.
        for (k, (st, _)) in &before {
            if *st == KeyState::Destroyed {
                assert_eq!(registry[k].0, KeyState::Destroyed);
            }
        }
        // Counts agree with the segment table and its index.
        let recorded = km.meta().read(|r| r.segment_keks()).unwrap();
        assert_eq!(recorded.len(), model.segments.len());
        for ((scope, version), (_, n)) in &registry {
            let kek = id(*scope, *version);
            let in_table = recorded.iter().filter(|(_, k)| *k == kek).count() as u64;
            let in_index = km.segments_under(&kek, None, usize::MAX).unwrap().len() as u64;
            assert_eq!((in_table, in_index), (*n, *n), "{kek}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn registry_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
