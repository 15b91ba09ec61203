//! The AEAD interface against NIST AES-256-GCM vectors, and the storage
//! AEAD (`aws-lc-rs`) against RustCrypto's `aes-gcm`: each opens what the
//! other sealed.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm as RustCryptoGcm, Nonce};
use proptest::prelude::*;
use strongbox_storage::aead::{AeadError, Aes256Gcm, TAG_LEN};

struct Vector {
    key: &'static str,
    iv: &'static str,
    aad: &'static str,
    pt: &'static str,
    ct: &'static str,
    tag: &'static str,
}

/// AES-256 test cases 13, 14, 15 and 16 of the GCM specification
/// (McGrew and Viega), which NIST's validation program reuses.
const VECTORS: &[Vector] = &[
    Vector {
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        pt: "",
        ct: "",
        tag: "530f8afbc74536b9a963b4f1c4cb738b",
    },
    Vector {
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        pt: "00000000000000000000000000000000",
        ct: "cea7403d4d606b6e074ec5d3baf39d18",
        tag: "d0d1c8a799996bf0265b98b5d48ab919",
    },
    Vector {
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        aad: "",
        pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    Vector {
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
];

fn unhex(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(clean).expect("hex")
}

#[test]
fn nist_vectors_through_the_interface() {
    for (i, v) in VECTORS.iter().enumerate() {
        let key: [u8; 32] = unhex(v.key).try_into().expect("key");
        let nonce: [u8; 12] = unhex(v.iv).try_into().expect("iv");
        let aad = unhex(v.aad);
        let aead = Aes256Gcm::new(&key);
        let mut buf = unhex(v.pt);
        let tag = aead.seal_in_place(&nonce, &aad, &mut buf).expect("seal");
        assert_eq!(buf, unhex(v.ct), "vector {i} ciphertext");
        assert_eq!(hex::encode(tag), v.tag, "vector {i} tag");
        buf.extend_from_slice(&tag);
        let plain = aead.open_in_place(&nonce, &aad, &mut buf).expect("open");
        assert_eq!(plain, &unhex(v.pt)[..], "vector {i} round trip");

        let mut bad = unhex(v.ct);
        let mut bad_tag = unhex(v.tag);
        bad_tag[0] ^= 1;
        bad.extend_from_slice(&bad_tag);
        assert_eq!(
            aead.open_in_place(&nonce, &aad, &mut bad),
            Err(AeadError::Authentication),
            "vector {i} bad tag"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn storage_aead_and_rustcrypto_open_each_other(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        aad in prop::collection::vec(any::<u8>(), 0..80),
        pt in prop::collection::vec(any::<u8>(), 0..3000),
        flip in any::<prop::sample::Index>(),
    ) {
        let ours = Aes256Gcm::new(&key);
        let theirs = RustCryptoGcm::new_from_slice(&key).expect("key");
        let n = Nonce::try_from(&nonce[..]).expect("nonce");

        // The storage AEAD seals, aes-gcm opens.
        let mut sealed = pt.clone();
        let tag = ours.seal_in_place(&nonce, &aad, &mut sealed).expect("seal");
        sealed.extend_from_slice(&tag);
        let opened = theirs
            .decrypt(&n, Payload { msg: &sealed, aad: &aad })
            .expect("aes-gcm opens the storage AEAD's output");
        prop_assert_eq!(&opened, &pt);

        // aes-gcm seals, the storage AEAD opens; both produce the same bytes.
        let mut theirs_sealed = theirs
            .encrypt(&n, Payload { msg: &pt, aad: &aad })
            .expect("encrypt");
        prop_assert_eq!(&theirs_sealed, &sealed);
        let plain = ours.open_in_place(&nonce, &aad, &mut theirs_sealed).expect("the storage AEAD opens aes-gcm's output");
        prop_assert_eq!(&plain[..], &pt[..]);

        // A flipped bit is rejected by both.
        let i = flip.index(pt.len() + TAG_LEN);
        let mut bad = sealed.clone();
        bad[i] ^= 0x04;
        let rejected = theirs.decrypt(&n, Payload { msg: &bad, aad: &aad }).is_err();
        prop_assert!(rejected, "aes-gcm accepted a flipped bit");
        prop_assert_eq!(ours.open_in_place(&nonce, &aad, &mut bad), Err(AeadError::Authentication));
    }
}
