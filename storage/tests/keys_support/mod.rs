//! Shared by the key tests: a real SoftHSM2 token per test, and the
//! behavioural suite every key provider must pass.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, at `C_Initialize`, for the whole
//! process, and `cargo test` runs the tests of one binary as threads of one
//! process. So each PKCS#11 test re-runs itself in a child process of the
//! test binary (`--exact <name>`) whose environment points at a token
//! directory of its own; the parent checks that the child ran exactly that
//! one test and that it passed.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use strongbox_storage::keys::{
    Dek, KekId, KekScope, KeyError, KeyProvider, PinSource, Pkcs11Config,
};

/// Set in the child: the test it must run.
const CHILD_VAR: &str = "STRONGBOX_SOFTHSM_CHILD";
/// Set in the child: its token directory.
const DIR_VAR: &str = "STRONGBOX_SOFTHSM_DIR";

pub const USER_PIN: &str = "31415926";
pub const SO_PIN: &str = "27182818";

/// The SoftHSM2 module: `$STRONGBOX_PKCS11_MODULE`, or Debian's path. Fails
/// the test (never skips it) when it is missing.
pub fn module_path() -> PathBuf {
    let path = std::env::var_os("STRONGBOX_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        path.exists(),
        "PKCS#11 module {} not found: install softhsm2 (apt-get install softhsm2) or set \
         STRONGBOX_PKCS11_MODULE to the module's path",
        path.display()
    );
    path
}

/// Runs `body` in a child process with its own SoftHSM2 configuration.
/// `name` is the test's path inside its binary; `env` is extra environment
/// for the child.
pub fn in_softhsm_process(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    if std::env::var(CHILD_VAR).as_deref() == Ok(name) {
        body();
        return;
    }
    module_path();
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("token dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_VAR, name)
        .env(DIR_VAR, dir.path())
        .envs(env.iter().copied())
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child process for {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "child process did not run {name}:\n{stdout}\n{stderr}"
    );
}

/// A freshly initialised SoftHSM2 token in the child's token directory.
#[derive(Debug)]
pub struct Token {
    pub label: String,
    pub pin_file: PathBuf,
}

impl Token {
    /// Initialises a token with a unique label on a free slot, and writes
    /// the user PIN to a `0600` file.
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(
            std::env::var_os(DIR_VAR).expect("Token::new runs inside in_softhsm_process"),
        );
        let n = N.fetch_add(1, Ordering::Relaxed);
        let label = format!("{prefix}-{}-{n}", std::process::id());
        assert!(label.len() <= 32, "token label {label} is over 32 bytes");
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .expect("softhsm2-util (install softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join(format!("{label}.pin"));
        write_private(&pin_file, format!("{USER_PIN}\n").as_bytes());
        Self { label, pin_file }
    }

    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config {
            module: module_path(),
            token_label: self.label.clone(),
            pin: PinSource::File(self.pin_file.clone()),
        }
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("write private file");
    f.write_all(bytes).expect("write private file");
}

fn kek(scope: KekScope, version: u32) -> KekId {
    KekId { scope, version }
}

fn dek(fill: u8) -> Dek {
    Dek::from_bytes([fill; 32])
}

/// What every [`KeyProvider`] must do. `p` must hold no keys yet.
pub fn provider_conformance(p: &dyn KeyProvider) {
    let v1 = kek(KekScope::Broker, 1);
    let v2 = kek(KekScope::Broker, 2);
    let topic = kek(
        KekScope::Topic("00112233445566778899aabbccddeeff".into()),
        1,
    );

    // Nothing exists yet.
    assert!(!p.has_kek(&v1).unwrap());
    assert!(matches!(p.wrap(&v1, &dek(1)), Err(KeyError::KekNotFound(l)) if l == v1.label()));
    assert!(matches!(
        p.unwrap(&v1, &[0u8; 40]),
        Err(KeyError::KekNotFound(_))
    ));
    assert!(matches!(p.destroy_kek(&v1), Err(KeyError::KekNotFound(_))));

    // Generate; a second time is refused.
    p.generate_kek(&v1).unwrap();
    assert!(p.has_kek(&v1).unwrap());
    assert!(!p.has_kek(&v2).unwrap());
    assert!(matches!(p.generate_kek(&v1), Err(KeyError::KekExists(l)) if l == v1.label()));
    p.generate_kek(&v2).unwrap();
    p.generate_kek(&topic).unwrap();

    // Round trip; the blob is RFC 5649 of a 32-byte key (40 bytes) and
    // does not contain the key.
    let key = Dek::generate().unwrap();
    let blob = p.wrap(&v1, &key).unwrap();
    assert_eq!(blob.len(), 40);
    assert!(!blob.windows(32).any(|w| w == key.expose()));
    assert_eq!(p.unwrap(&v1, &blob).unwrap().expose(), key.expose());

    // Distinct keys wrap differently; distinct KEKs wrap differently.
    let other = Dek::generate().unwrap();
    assert_ne!(p.wrap(&v1, &other).unwrap(), blob);
    let blob_v2 = p.wrap(&v2, &key).unwrap();
    assert_ne!(blob_v2, blob);
    assert_eq!(p.unwrap(&v2, &blob_v2).unwrap().expose(), key.expose());

    // The wrong KEK rejects the blob.
    for wrong in [&v2, &topic] {
        assert!(
            matches!(p.unwrap(wrong, &blob), Err(KeyError::UnwrapRejected { kek }) if kek == wrong.label())
        );
    }

    // Every flipped bit position in every byte is rejected.
    for i in 0..blob.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = blob.clone();
            bad[i] ^= bit;
            assert!(
                matches!(p.unwrap(&v1, &bad), Err(KeyError::UnwrapRejected { .. })),
                "tampered byte {i} was accepted"
            );
        }
    }
    // Truncated, extended, empty and odd-sized blobs are rejected, never a
    // panic.
    for bad in [
        &blob[..32],
        &blob[..39],
        &[][..],
        &[0u8; 8][..],
        &[0u8; 16][..],
        &[0u8; 48][..],
    ] {
        assert!(matches!(
            p.unwrap(&v1, bad),
            Err(KeyError::UnwrapRejected { .. })
        ));
    }
    let mut longer = blob.clone();
    longer.extend_from_slice(&[0u8; 8]);
    assert!(matches!(
        p.unwrap(&v1, &longer),
        Err(KeyError::UnwrapRejected { .. })
    ));

    // Destroy is final: the blob cannot be unwrapped, the label is gone,
    // other versions are untouched.
    p.destroy_kek(&v1).unwrap();
    assert!(!p.has_kek(&v1).unwrap());
    assert!(matches!(
        p.unwrap(&v1, &blob),
        Err(KeyError::KekNotFound(_))
    ));
    assert!(matches!(p.destroy_kek(&v1), Err(KeyError::KekNotFound(_))));
    assert_eq!(p.unwrap(&v2, &blob_v2).unwrap().expose(), key.expose());

    // Concurrent use from several threads (the provider serializes its
    // handles internally).
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let v2 = &v2;
            s.spawn(move || {
                for i in 0..25u8 {
                    let k = dek(t.wrapping_mul(31).wrapping_add(i));
                    let b = p.wrap(v2, &k).unwrap();
                    assert_eq!(p.unwrap(v2, &b).unwrap().expose(), k.expose());
                }
            });
        }
    });

    let info = p.info();
    assert!(info.kind == "file" || info.kind == "pkcs11");
    assert!(!info.location.is_empty());
}

/// What the key manager must do over any provider. `provider` must hold no
/// keys yet.
pub fn manager_conformance(provider: std::sync::Arc<dyn KeyProvider>) {
    use strongbox_protocol::model::KeyState;
    use strongbox_storage::keys::{KeyManager, SegmentKeyContext, SegmentKeys};
    use strongbox_storage::meta::MetaStore;

    let meta = MetaStore::in_memory().unwrap();
    let km = KeyManager::new(provider.clone(), meta.clone(), 64);
    // A second manager on the same registry with no cache: every open goes
    // to the provider.
    let cold = KeyManager::new(provider.clone(), meta, 0);
    let topic_scope = KekScope::Topic("aa".repeat(16));
    let ctx = |seg: u8, scope: &KekScope| SegmentKeyContext {
        topic_id: [7; 16],
        partition: 3,
        segment_id: [seg; 16],
        scope: scope.clone(),
    };
    let broker = KekScope::Broker;

    // First use creates version 1, active, in the provider.
    let (d1, w1) = km.create(&ctx(1, &broker)).unwrap();
    assert_eq!(w1.kek, kek(KekScope::Broker, 1));
    assert!(provider.has_kek(&w1.kek).unwrap());
    let v1 = km.version(&w1.kek).unwrap().unwrap();
    assert_eq!(v1.state, KeyState::Active);
    assert_eq!(v1.segments, 1);
    assert_eq!(v1.provider, provider.info().kind);

    // Open gives back the same key, from the cache or from the provider.
    assert_eq!(
        km.open(&ctx(1, &broker), &w1).unwrap().expose(),
        d1.expose()
    );
    assert_eq!(
        cold.open(&ctx(1, &broker), &w1).unwrap().expose(),
        d1.expose()
    );
    assert_eq!(cold.stats().unwraps, 1);
    assert_eq!(km.stats().unwraps, 0);
    assert!(km.stats().cache.hits >= 1);

    // Two segments never share a key.
    let (d2, w2) = km.create(&ctx(2, &broker)).unwrap();
    assert_ne!(d1.expose(), d2.expose());
    assert_eq!(
        cold.open(&ctx(2, &broker), &w2).unwrap().expose(),
        d2.expose()
    );
    assert_eq!(km.version(&w1.kek).unwrap().unwrap().segments, 2);

    // A tampered envelope is rejected.
    let mut bad = w1.clone();
    bad.wrapped[5] ^= 1;
    assert!(matches!(
        cold.open(&ctx(1, &broker), &bad),
        Err(KeyError::UnwrapRejected { .. })
    ));

    // Rotation: v2 wraps new segments, v1 still opens old ones.
    let v2 = km.rotate(&broker).unwrap();
    assert_eq!(v2.id, kek(KekScope::Broker, 2));
    assert_eq!(v2.state, KeyState::Active);
    assert_eq!(
        km.version(&w1.kek).unwrap().unwrap().state,
        KeyState::DecryptOnly
    );
    let (d3, w3) = km.create(&ctx(3, &broker)).unwrap();
    assert_eq!(w3.kek, v2.id);
    assert_eq!(
        cold.open(&ctx(1, &broker), &w1).unwrap().expose(),
        d1.expose()
    );
    assert_eq!(
        cold.open(&ctx(3, &broker), &w3).unwrap().expose(),
        d3.expose()
    );

    // A dedicated topic scope is independent of the broker scope.
    let (dt, wt) = km.create(&ctx(9, &topic_scope)).unwrap();
    assert_eq!(wt.kek, kek(topic_scope.clone(), 1));
    assert!(matches!(
        cold.open(&ctx(9, &broker), &wt),
        Err(KeyError::UnwrapRejected { .. })
    ));
    assert_eq!(
        cold.open(&ctx(9, &topic_scope), &wt).unwrap().expose(),
        dt.expose()
    );

    // Rewrap moves segment 1 from v1 to v2.
    let rewrapped = km.rewrap(&ctx(1, &broker), &w1).unwrap();
    assert_eq!(rewrapped.kek, v2.id);
    km.commit_rewrap(&ctx(1, &broker), &rewrapped).unwrap();
    assert_eq!(
        cold.open(&ctx(1, &broker), &rewrapped).unwrap().expose(),
        d1.expose()
    );
    assert_eq!(km.version(&w1.kek).unwrap().unwrap().segments, 1);
    assert_eq!(km.version(&v2.id).unwrap().unwrap().segments, 2);

    // v1 still wraps segment 2: destroying it is refused with the count.
    match km.destroy_version(&w1.kek, false) {
        Err(KeyError::InUse { segments, .. }) => assert_eq!(segments, 1),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(provider.has_kek(&w1.kek).unwrap());
    // Forget segment 2 (retention deleted it); now v1 can go.
    km.forget(&ctx(2, &broker)).unwrap();
    km.forget(&ctx(2, &broker)).unwrap();
    let out = km.destroy_version(&w1.kek, false).unwrap();
    assert_eq!(out.segments_lost, 0);
    assert_eq!(out.version.state, KeyState::Destroyed);
    assert!(!provider.has_kek(&w1.kek).unwrap());
    // The old envelope of segment 1 cannot be opened any more, cached or not.
    assert!(matches!(
        km.open(&ctx(1, &broker), &w1),
        Err(KeyError::Destroyed(_))
    ));
    assert!(matches!(
        cold.open(&ctx(1, &broker), &w1),
        Err(KeyError::Destroyed(_))
    ));
    assert!(matches!(
        km.destroy_version(&w1.kek, true),
        Err(KeyError::InvalidTransition(_))
    ));

    // Forcing the destruction of the active version loses its segments and
    // makes the next segment start version 3.
    assert!(km.open(&ctx(3, &broker), &w3).is_ok());
    let out = km.destroy_version(&v2.id, true).unwrap();
    assert_eq!(out.segments_lost, 2);
    assert!(matches!(
        km.open(&ctx(3, &broker), &w3),
        Err(KeyError::Destroyed(_))
    ));
    let (_, w4) = km.create(&ctx(4, &broker)).unwrap();
    assert_eq!(w4.kek, kek(KekScope::Broker, 3));

    // Destroying a topic's scope shreds all of it.
    km.rotate(&topic_scope).unwrap();
    let gone = km.destroy_scope(&topic_scope).unwrap();
    assert_eq!(gone.len(), 2);
    assert!(matches!(
        km.open(&ctx(9, &topic_scope), &wt),
        Err(KeyError::Destroyed(_))
    ));
    assert!(!provider.has_kek(&wt.kek).unwrap());
    assert!(km.destroy_scope(&topic_scope).unwrap().is_empty());
}
