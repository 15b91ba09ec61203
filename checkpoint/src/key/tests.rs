use super::*;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

fn pair() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generates");
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("parses")
}

#[test]
fn pem_round_trips_and_signatures_verify() {
    let signer = pair();
    let key = CheckpointPublicKey::from_point(signer.public_key().as_ref()).expect("point");
    let pem = key.to_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(pem.ends_with("\n-----END PUBLIC KEY-----\n"));
    assert_eq!(CheckpointPublicKey::from_pem(&pem).expect("parses"), key);
    let rng = SystemRandom::new();
    let sig = signer.sign(&rng, b"checkpoint").expect("signs");
    assert_eq!(sig.as_ref().len(), SIGNATURE_LEN);
    assert!(key.verifies(b"checkpoint", sig.as_ref()));
    assert!(!key.verifies(b"checkpoinT", sig.as_ref()));
    let other = CheckpointPublicKey::from_point(pair().public_key().as_ref()).expect("point");
    assert!(!other.verifies(b"checkpoint", sig.as_ref()));
    assert_ne!(key.key_id(), other.key_id());
    assert_eq!(key.key_id().len(), 16);
}

#[test]
fn ec_point_attributes_in_both_forms() {
    let pair = pair();
    let point = pair.public_key().as_ref().to_vec();
    let mut der = vec![0x04, 0x41];
    der.extend_from_slice(&point);
    let a = CheckpointPublicKey::from_ec_point_attribute(&der).expect("DER");
    let b = CheckpointPublicKey::from_ec_point_attribute(&point).expect("bare");
    assert_eq!(a, b);
    assert_eq!(a.point().as_slice(), point.as_slice());
}

#[test]
fn points_off_the_curve_and_junk_are_refused() {
    let mut off = [0u8; POINT_LEN];
    off[0] = 4;
    off[1] = 1;
    assert_eq!(
        CheckpointPublicKey::from_point(&off),
        Err(PublicKeyError::OffCurve)
    );
    assert_eq!(
        CheckpointPublicKey::from_point(&[4; 64]),
        Err(PublicKeyError::PointLength(64))
    );
    assert!(matches!(
        CheckpointPublicKey::from_pem("hello"),
        Err(PublicKeyError::Pem(_))
    ));
    assert!(matches!(
        CheckpointPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----"),
        Err(PublicKeyError::Pem(_))
    ));
    assert!(matches!(
        CheckpointPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
        Err(PublicKeyError::Pem(_))
    ));
}

proptest::proptest! {
    #[test]
    fn from_pem_never_panics(text in ".{0,300}") {
        let _ = CheckpointPublicKey::from_pem(&format!("-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----"));
        let _ = CheckpointPublicKey::from_pem(&text);
    }
}
