//! The checkpoint signing key held by each key provider: made once, inside
//! the token for PKCS#11 (a real SoftHSM2 token per test) and never
//! extractable, in a 0600 file for the file provider; its signatures verify
//! under the public key it exports, and under no other.

mod keys_support;

use std::os::unix::fs::PermissionsExt;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keys_support::{Token, USER_PIN, in_softhsm_process, module_path};
use strongbox_storage::keys::{
    CHECKPOINT_KEY_LABEL, CheckpointPublicKey, FileKeyProvider, KeyError, KeyProvider,
    Pkcs11KeyProvider,
};

/// Signs and checks the signature, a forgery and an altered message.
fn signs_and_verifies(p: &dyn KeyProvider, key: &CheckpointPublicKey) {
    let message = b"{\"format\":\"strongbox-checkpoint\"}";
    let sig = p.sign_checkpoint(message).expect("signs");
    assert!(key.verifies(message, &sig), "its own signature verifies");
    assert!(!key.verifies(b"{\"format\":\"strongbox-checkpoinT\"}", &sig));
    let mut flipped = sig;
    flipped[10] ^= 1;
    assert!(!key.verifies(message, &flipped));
    // The exported PEM carries the same key.
    let pem = key.to_pem();
    assert!(
        CheckpointPublicKey::from_pem(&pem)
            .expect("PEM")
            .verifies(message, &sig)
    );
}

#[test]
fn pkcs11_checkpoint_key_is_made_in_the_token_and_signs() {
    in_softhsm_process(
        "pkcs11_checkpoint_key_is_made_in_the_token_and_signs",
        &[],
        || {
            let token = Token::new("ckpt");
            let p = Pkcs11KeyProvider::open(&token.config()).expect("opens");
            assert_eq!(p.checkpoint_key(false).expect("asks"), None);
            assert!(matches!(
                p.sign_checkpoint(b"x"),
                Err(KeyError::KekNotFound(l)) if l == CHECKPOINT_KEY_LABEL
            ));
            let key = p.checkpoint_key(true).expect("makes").expect("a key");
            assert_eq!(p.checkpoint_key(true).expect("finds"), Some(key.clone()));
            signs_and_verifies(&p, &key);
            // ECDSA is randomized: two signatures of one message differ,
            // and both verify.
            let a = p.sign_checkpoint(b"m").expect("signs");
            let b = p.sign_checkpoint(b"m").expect("signs");
            assert_ne!(a, b);
            assert!(key.verifies(b"m", &a) && key.verifies(b"m", &b));
            drop(p);
            // Another provider on the token finds the same key.
            let again = Pkcs11KeyProvider::open(&token.config()).expect("reopens");
            assert_eq!(again.checkpoint_key(false).expect("finds"), Some(key));

            // In the token: one private key, sensitive and never
            // extractable, for signing only.
            let ctx = Pkcs11::new(module_path()).expect("module");
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
                .expect("slots")
                .into_iter()
                .find(|s| ctx.get_token_info(*s).expect("info").label() == token.label)
                .expect("token slot");
            // What this token offers for signing keys (docs/SECURITY.md
            // names the choice): ECDSA on P-256 is required.
            for m in [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA] {
                assert!(
                    ctx.get_mechanism_info(slot, m).is_ok(),
                    "the token lacks {m}"
                );
            }
            let s = ctx.open_rw_session(slot).expect("session");
            match s.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                )) => {}
                Err(e) => panic!("login: {e}"),
            }
            let privates = s
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(CHECKPOINT_KEY_LABEL.as_bytes().to_vec()),
                ])
                .expect("find");
            assert_eq!(privates.len(), 1, "exactly one checkpoint private key");
            let attrs = s
                .get_attributes(
                    privates[0],
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                        AttributeType::Token,
                        AttributeType::Sign,
                        AttributeType::Decrypt,
                        AttributeType::Derive,
                    ],
                )
                .expect("attributes");
            let flag = |t: AttributeType| {
                attrs.iter().find_map(|a| match (a, t) {
                    (Attribute::Sensitive(b), AttributeType::Sensitive)
                    | (Attribute::Extractable(b), AttributeType::Extractable)
                    | (Attribute::NeverExtractable(b), AttributeType::NeverExtractable)
                    | (Attribute::Token(b), AttributeType::Token)
                    | (Attribute::Sign(b), AttributeType::Sign)
                    | (Attribute::Decrypt(b), AttributeType::Decrypt)
                    | (Attribute::Derive(b), AttributeType::Derive) => Some(*b),
                    _ => None,
                })
            };
            assert_eq!(flag(AttributeType::Sensitive), Some(true));
            assert_eq!(flag(AttributeType::Extractable), Some(false));
            assert_eq!(flag(AttributeType::NeverExtractable), Some(true));
            assert_eq!(flag(AttributeType::Token), Some(true));
            assert_eq!(flag(AttributeType::Sign), Some(true));
            assert_eq!(flag(AttributeType::Decrypt), Some(false));
            assert_eq!(flag(AttributeType::Derive), Some(false));
            match s.get_attributes(privates[0], &[AttributeType::Value]) {
                Ok(attrs) => assert!(
                    !attrs
                        .iter()
                        .any(|a| matches!(a, Attribute::Value(b) if !b.is_empty())),
                    "the private key's value was readable"
                ),
                Err(e) => assert!(e.to_string().contains("Sensitive"), "{e}"),
            }
        },
    );
}

#[test]
fn file_checkpoint_key_is_a_private_file_and_signs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = FileKeyProvider::open(dir.path().join("keys")).expect("opens");
    assert_eq!(p.checkpoint_key(false).expect("asks"), None);
    let key = p.checkpoint_key(true).expect("makes").expect("a key");
    let file = p.checkpoint_key_path();
    let mode = std::fs::metadata(&file).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    signs_and_verifies(&p, &key);
    let again = FileKeyProvider::open(dir.path().join("keys")).expect("reopens");
    assert_eq!(again.checkpoint_key(true).expect("finds"), Some(key));
    // A key file others may read is refused, never used.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(matches!(
        again.sign_checkpoint(b"x"),
        Err(KeyError::Config(m)) if m.contains("chmod 600")
    ));
    // Junk in the file is an error naming it, not a new key.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&file, b"not a key").expect("write");
    assert!(matches!(
        again.checkpoint_key(true),
        Err(KeyError::Config(m)) if m.contains("PKCS#8")
    ));
}
