//! The PKCS#11 provider against a real SoftHSM2 token, one fresh token per
//! test, each test in its own process (see `keys_support`).

mod keys_support;

use std::sync::Arc;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use keys_support::{Token, USER_PIN, in_softhsm_process, module_path, write_private};
use strongbox_protocol::model::KeyState;
use strongbox_storage::keys::{
    Dek, KekId, KekScope, KeyError, KeyManager, KeyProvider, PinSource, Pkcs11Config,
    Pkcs11KeyProvider, SegmentKeyContext, SegmentKeys,
};
use strongbox_storage::meta::MetaStore;

fn v(version: u32) -> KekId {
    KekId {
        scope: KekScope::Broker,
        version,
    }
}

/// A session of the test's own, logged in as the user, on `label`'s token.
fn raw_session(label: &str) -> Session {
    let ctx = Pkcs11::new(module_path()).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == label)
        .expect("token slot");
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    session
}

#[test]
fn kek_is_sensitive_and_its_value_cannot_be_read() {
    in_softhsm_process("kek_is_sensitive_and_its_value_cannot_be_read", &[], || {
        let token = Token::new("attrs");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        p.generate_kek(&v(1)).unwrap();

        let s = raw_session(&token.label);
        let handles = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(v(1).label().into_bytes()),
            ])
            .unwrap();
        assert_eq!(handles.len(), 1, "exactly one KEK with the label");
        let kek = handles[0];

        let attrs = s
            .get_attributes(
                kek,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::ValueLen,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ],
            )
            .unwrap();
        let flag = |t: AttributeType| {
            attrs.iter().find_map(|a| match (a, t) {
                (Attribute::Sensitive(b), AttributeType::Sensitive)
                | (Attribute::Extractable(b), AttributeType::Extractable)
                | (Attribute::Token(b), AttributeType::Token)
                | (Attribute::Wrap(b), AttributeType::Wrap)
                | (Attribute::Unwrap(b), AttributeType::Unwrap)
                | (Attribute::Encrypt(b), AttributeType::Encrypt)
                | (Attribute::Decrypt(b), AttributeType::Decrypt)
                | (Attribute::NeverExtractable(b), AttributeType::NeverExtractable)
                | (Attribute::AlwaysSensitive(b), AttributeType::AlwaysSensitive) => Some(*b),
                _ => None,
            })
        };
        assert_eq!(flag(AttributeType::Sensitive), Some(true));
        assert_eq!(flag(AttributeType::Extractable), Some(false));
        assert_eq!(flag(AttributeType::NeverExtractable), Some(true));
        assert_eq!(flag(AttributeType::AlwaysSensitive), Some(true));
        assert_eq!(flag(AttributeType::Token), Some(true));
        assert_eq!(flag(AttributeType::Wrap), Some(true));
        assert_eq!(flag(AttributeType::Unwrap), Some(true));
        assert_eq!(flag(AttributeType::Encrypt), Some(false));
        assert_eq!(flag(AttributeType::Decrypt), Some(false));
        assert!(
            attrs
                .iter()
                .any(|a| matches!(a, Attribute::ValueLen(n) if u64::from(*n) == 32))
        );

        // CKA_VALUE is refused: either an error or no value at all.
        match s.get_attributes(kek, &[AttributeType::Value]) {
            Ok(attrs) => assert!(
                !attrs
                    .iter()
                    .any(|a| matches!(a, Attribute::Value(b) if !b.is_empty())),
                "the KEK's value was readable"
            ),
            Err(e) => assert!(e.to_string().contains("Sensitive"), "{e}"),
        }
        // Nor can it be wrapped out under another key.
        assert!(
            s.wrap_key(&cryptoki::mechanism::Mechanism::AesKeyWrapPad, kek, kek)
                .is_err()
        );
    });
}

#[test]
fn wrap_unwrap_round_trip() {
    in_softhsm_process("wrap_unwrap_round_trip", &[], || {
        let token = Token::new("rt");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        p.generate_kek(&v(1)).unwrap();
        for _ in 0..20 {
            let dek = Dek::generate().unwrap();
            let blob = p.wrap(&v(1), &dek).unwrap();
            assert_eq!(p.unwrap(&v(1), &blob).unwrap().expose(), dek.expose());
        }
        // A second provider on the same token (a restarted broker) unwraps
        // what the first wrapped.
        let dek = Dek::generate().unwrap();
        let blob = p.wrap(&v(1), &dek).unwrap();
        drop(p);
        let again = Pkcs11KeyProvider::open(&token.config()).unwrap();
        assert_eq!(again.unwrap(&v(1), &blob).unwrap().expose(), dek.expose());
    });
}

#[test]
fn wrong_pin_is_a_login_error() {
    in_softhsm_process("wrong_pin_is_a_login_error", &[], || {
        let token = Token::new("pin");
        let dir = tempfile::tempdir().unwrap();
        let wrong = dir.path().join("wrong.pin");
        write_private(&wrong, b"99999999\n");
        let config = Pkcs11Config {
            pin: PinSource::File(wrong),
            ..token.config()
        };
        let err = Pkcs11KeyProvider::open(&config).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KeyError::Login(_)), "{err:?}");
        assert!(msg.contains("PIN"), "{msg}");
        assert!(msg.contains(&token.label), "{msg}");
        assert!(!msg.contains("99999999"), "the PIN leaked into: {msg}");

        // The right PIN still works afterwards.
        Pkcs11KeyProvider::open(&token.config()).unwrap();
    });
}

#[test]
fn unknown_token_label_is_a_config_error_listing_labels() {
    in_softhsm_process(
        "unknown_token_label_is_a_config_error_listing_labels",
        &[],
        || {
            let token = Token::new("known");
            let config = Pkcs11Config {
                token_label: "no-such-token".to_owned(),
                ..token.config()
            };
            let err = Pkcs11KeyProvider::open(&config).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, KeyError::Config(_)), "{err:?}");
            assert!(msg.contains("\"no-such-token\""), "{msg}");
            assert!(msg.contains(&format!("\"{}\"", token.label)), "{msg}");
        },
    );
}

#[test]
fn missing_module_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    write_private(&pin, b"1234");
    let config = Pkcs11Config {
        module: dir.path().join("libnothing.so"),
        token_label: "t".to_owned(),
        pin: PinSource::File(pin),
    };
    let err = Pkcs11KeyProvider::open(&config).unwrap_err();
    assert!(matches!(err, KeyError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("libnothing.so"), "{err}");
}

#[test]
fn pin_sources_are_checked_and_never_shown() {
    in_softhsm_process(
        "pin_sources_are_checked_and_never_shown",
        &[("STRONGBOX_TEST_HSM_PIN", USER_PIN)],
        || {
            let token = Token::new("pinsrc");
            // From an environment variable.
            let from_env = Pkcs11Config {
                pin: PinSource::Env("STRONGBOX_TEST_HSM_PIN".to_owned()),
                ..token.config()
            };
            let p = Pkcs11KeyProvider::open(&from_env).unwrap();
            let shown = format!("{p:?} {:?} {:?}", from_env, p.info());
            assert!(!shown.contains(USER_PIN), "{shown}");

            // A missing variable names the variable.
            let missing = Pkcs11Config {
                pin: PinSource::Env("STRONGBOX_TEST_NO_SUCH_VAR".to_owned()),
                ..token.config()
            };
            let err = Pkcs11KeyProvider::open(&missing).unwrap_err();
            assert!(matches!(err, KeyError::Config(_)), "{err:?}");
            assert!(err.to_string().contains("STRONGBOX_TEST_NO_SUCH_VAR"));

            // A PIN file that others may read is refused.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token.pin_file, std::fs::Permissions::from_mode(0o644))
                .unwrap();
            let err = Pkcs11KeyProvider::open(&token.config()).unwrap_err();
            assert!(matches!(err, KeyError::Config(_)), "{err:?}");
            assert!(!err.to_string().contains(USER_PIN));
        },
    );
}

#[test]
fn tampered_wrapped_key_is_rejected() {
    in_softhsm_process("tampered_wrapped_key_is_rejected", &[], || {
        let token = Token::new("tamper");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        p.generate_kek(&v(1)).unwrap();
        let dek = Dek::generate().unwrap();
        let blob = p.wrap(&v(1), &dek).unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            let err = p.unwrap(&v(1), &bad).unwrap_err();
            assert!(
                matches!(&err, KeyError::UnwrapRejected { kek } if *kek == v(1).label()),
                "byte {i}: {err:?}"
            );
        }
        // The provider is still healthy after the rejections.
        assert_eq!(p.unwrap(&v(1), &blob).unwrap().expose(), dek.expose());
    });
}

fn ctx(seg: u8) -> SegmentKeyContext {
    SegmentKeyContext {
        topic_id: [1; 16],
        partition: 0,
        segment_id: [seg; 16],
        scope: KekScope::Broker,
    }
}

#[test]
fn rotation_creates_v2_and_v1_blobs_still_unwrap() {
    in_softhsm_process("rotation_creates_v2_and_v1_blobs_still_unwrap", &[], || {
        let token = Token::new("rotate");
        let p: Arc<dyn KeyProvider> = Arc::new(Pkcs11KeyProvider::open(&token.config()).unwrap());
        let meta = MetaStore::in_memory().unwrap();
        let km = KeyManager::new(p.clone(), meta.clone(), 0);
        let (d1, w1) = km.create(&ctx(1)).unwrap();
        assert_eq!(w1.kek, v(1));
        let rotated = km.rotate(&KekScope::Broker).unwrap();
        assert_eq!(rotated.id, v(2));
        assert!(p.has_kek(&v(2)).unwrap());
        let (d2, w2) = km.create(&ctx(2)).unwrap();
        assert_eq!(w2.kek, v(2));
        assert_eq!(km.open(&ctx(1), &w1).unwrap().expose(), d1.expose());
        assert_eq!(km.open(&ctx(2), &w2).unwrap().expose(), d2.expose());
        let states: Vec<_> = km
            .versions(Some(&KekScope::Broker))
            .unwrap()
            .into_iter()
            .map(|v| (v.id.version, v.state, v.provider, v.segments))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, KeyState::DecryptOnly, "pkcs11".to_owned(), 1),
                (2, KeyState::Active, "pkcs11".to_owned(), 1)
            ]
        );
    });
}

#[test]
fn destroy_makes_unwrap_fail() {
    in_softhsm_process("destroy_makes_unwrap_fail", &[], || {
        let token = Token::new("destroy");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        p.generate_kek(&v(1)).unwrap();
        let dek = Dek::generate().unwrap();
        let blob = p.wrap(&v(1), &dek).unwrap();
        p.destroy_kek(&v(1)).unwrap();
        assert!(matches!(
            p.unwrap(&v(1), &blob),
            Err(KeyError::KekNotFound(_))
        ));
        // Gone from the token, as another session sees it too.
        let s = raw_session(&token.label);
        assert!(
            s.find_objects(&[Attribute::Label(v(1).label().into_bytes())])
                .unwrap()
                .is_empty()
        );
        // A new key under the same label (never done by the registry, which
        // never reuses a version) does not bring the old data back.
        p.generate_kek(&v(1)).unwrap();
        assert!(matches!(
            p.unwrap(&v(1), &blob),
            Err(KeyError::UnwrapRejected { .. })
        ));
    });
}

#[test]
fn recovers_when_the_login_is_lost() {
    in_softhsm_process("recovers_when_the_login_is_lost", &[], || {
        let token = Token::new("relogin");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        p.generate_kek(&v(1)).unwrap();
        let dek = Dek::generate().unwrap();
        let blob = p.wrap(&v(1), &dek).unwrap();
        // Logging out any session logs the whole application out of the
        // token, the provider's pooled sessions included.
        let s = raw_session(&token.label);
        s.logout().unwrap();
        // The provider neither mistakes the invisible key for a missing one
        // nor stays broken: it logs in again.
        assert!(p.has_kek(&v(1)).unwrap());
        assert_eq!(p.unwrap(&v(1), &blob).unwrap().expose(), dek.expose());
    });
}

#[test]
fn recovers_when_the_token_comes_back() {
    in_softhsm_process("recovers_when_the_token_comes_back", &[], || {
        let token = Token::new("outage");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        p.generate_kek(&v(1)).unwrap();
        let dek = Dek::generate().unwrap();
        let blob = p.wrap(&v(1), &dek).unwrap();

        // Take the token's files away (an HSM outage) ...
        let dir = std::path::PathBuf::from(std::env::var_os("STRONGBOX_SOFTHSM_DIR").unwrap());
        let tokens = dir.join("tokens");
        let aside = dir.join("tokens-away");
        std::fs::rename(&tokens, &aside).unwrap();
        std::fs::create_dir(&tokens).unwrap();
        // While the token is away the provider says so: never "no such key"
        // (which the key manager would take for a destroyed key) and never a
        // rejected envelope.
        for _ in 0..2 {
            let err = p.unwrap(&v(1), &blob).unwrap_err();
            assert!(matches!(err, KeyError::Unavailable(_)), "{err:?}");
            let err = p.has_kek(&v(1)).unwrap_err();
            assert!(matches!(err, KeyError::Unavailable(_)), "{err:?}");
        }
        // ... put them back: the provider works again without being rebuilt.
        std::fs::remove_dir(&tokens).unwrap();
        std::fs::rename(&aside, &tokens).unwrap();
        let result = p.unwrap(&v(1), &blob);
        assert_eq!(result.unwrap().expose(), dek.expose());
    });
}

/// SoftHSM2 fails a `C_GenerateKey` now and then (`CKR_GENERAL_ERROR`)
/// when other sessions of the process search, wrap and unwrap meanwhile:
/// one generation in twenty did, before the provider made key creation
/// run alone. A rotation must not fail because appends are reading keys.
#[test]
fn generating_keys_while_others_use_the_token_never_fails() {
    in_softhsm_process(
        "generating_keys_while_others_use_the_token_never_fails",
        &[],
        || {
            use std::sync::atomic::{AtomicBool, Ordering};

            let token = Token::new("race");
            let p = Arc::new(Pkcs11KeyProvider::open(&token.config()).unwrap());
            p.generate_kek(&v(1)).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let users: Vec<_> = (0..3)
                .map(|t| {
                    let (p, stop) = (p.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let dek = Dek::generate().unwrap();
                        let mut failures = Vec::new();
                        let mut calls = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            calls += 1;
                            let r = if t == 0 {
                                p.has_kek(&v(1)).map(|_| ())
                            } else {
                                p.wrap(&v(1), &dek)
                                    .and_then(|w| p.unwrap(&v(1), &w))
                                    .map(|_| ())
                            };
                            if let Err(e) = r {
                                failures.push(e.to_string());
                            }
                        }
                        (calls, failures)
                    })
                })
                .collect();
            let failed: Vec<String> = (2..120u32)
                .filter_map(|i| p.generate_kek(&v(i)).err().map(|e| format!("v{i}: {e}")))
                .collect();
            stop.store(true, Ordering::Relaxed);
            for u in users {
                let (calls, failures) = u.join().unwrap();
                assert!(calls > 0);
                assert!(failures.is_empty(), "{failures:?}");
            }
            assert!(
                failed.is_empty(),
                "{} generations failed: {failed:?}",
                failed.len()
            );
            assert!(p.has_kek(&v(119)).unwrap());
        },
    );
}
