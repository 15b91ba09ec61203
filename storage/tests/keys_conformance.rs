//! The provider behaviour suite, run against both providers.

mod keys_support;

use std::sync::Arc;

use keys_support::{Token, in_softhsm_process, manager_conformance, provider_conformance};
use strongbox_storage::keys::{FileKeyProvider, Pkcs11KeyProvider};

#[test]
fn file_provider_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let p = FileKeyProvider::open(dir.path().join("keys")).unwrap();
    provider_conformance(&p);
}

#[test]
fn pkcs11_provider_conformance() {
    in_softhsm_process("pkcs11_provider_conformance", &[], || {
        let token = Token::new("conf");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        provider_conformance(&p);
    });
}

#[test]
fn file_key_manager_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let p = FileKeyProvider::open(dir.path().join("keys")).unwrap();
    manager_conformance(Arc::new(p));
}

#[test]
fn pkcs11_key_manager_conformance() {
    in_softhsm_process("pkcs11_key_manager_conformance", &[], || {
        let token = Token::new("mgr");
        let p = Pkcs11KeyProvider::open(&token.config()).unwrap();
        manager_conformance(Arc::new(p));
    });
}
