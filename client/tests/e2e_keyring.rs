//! Keyrings: replay across rotations, readers holding only some versions
//! under each policy, files and secrets hygiene.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use strongbox_client::e2e::{
    E2eError, E2eOpener, E2eSealer, ERROR_HEADER, HEADER, Keyring, SealedWith, UnreadablePolicy,
    sealed_with,
};
use strongbox_client::{
    ClientError, ConsumedRecord, Opened, ProducerRecord, ValueOpener, ValueSealer,
};

const TOPIC: &str = "demo.orders";
const KEY: &str = "orders-key";

fn delivered(r: &ProducerRecord, offset: u64) -> ConsumedRecord {
    ConsumedRecord {
        topic: r.topic.as_str().into(),
        partition: 0,
        offset,
        timestamp: 0,
        key: r.key.clone(),
        headers: r.headers.clone(),
        value: r.value.clone(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Nine records: three under each of v1, v2 and v3 (rotating the keyring
/// file in between, as `strongbox keyring rotate` does), and the final
/// keyring file.
fn three_rotations(dir: &Path) -> (Vec<ConsumedRecord>, std::path::PathBuf) {
    let file = dir.join("orders.keyring");
    Keyring::generate(KEY)
        .expect("keyring")
        .create(&file)
        .expect("created");
    let sealer = E2eSealer::keyring(Keyring::load(&file).expect("loads"), None).expect("sealer");
    let mut records = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            let mut keyring = Keyring::load(&file).expect("loads");
            keyring.rotate(KEY).expect("rotates");
            keyring.save(&file).expect("saves");
            sealer
                .set_keyring(Keyring::load(&file).expect("loads"))
                .expect("same key id");
        }
        for i in 0..3u64 {
            let offset = round * 3 + i;
            let mut r = ProducerRecord::new(TOPIC, format!("order {offset}")).key("customer-7");
            sealer.seal(&mut r).expect("seals");
            records.push(delivered(&r, offset));
        }
    }
    (records, file)
}

fn version_of(r: &ConsumedRecord) -> u32 {
    match sealed_with(r.header(HEADER).expect("sealed")).expect("header") {
        SealedWith::Keyring { version, .. } => version,
        other => panic!("keyring header expected, got {other:?}"),
    }
}

#[test]
fn replay_reads_across_three_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, file) = three_rotations(dir.path());
    let versions: Vec<u32> = records.iter().map(version_of).collect();
    assert_eq!(versions, [1, 1, 1, 2, 2, 2, 3, 3, 3]);
    let keyring = Keyring::load(&file).expect("loads");
    assert_eq!(keyring.versions(KEY), [1, 2, 3]);
    assert_eq!(keyring.active_version(KEY), Some(3));
    let opener = E2eOpener::new(UnreadablePolicy::Fail).with_keyring(keyring);
    for (i, mut r) in records.into_iter().enumerate() {
        assert_eq!(opener.open(&mut r).expect("opens"), Opened::Deliver);
        assert_eq!(r.value, format!("order {i}").as_bytes());
        assert_eq!(r.header(HEADER), None, "the envelope header is removed");
    }
    assert!(opener.unreadable().is_empty());
}

fn v2_reader(dir: &Path, file: &Path, policy: UnreadablePolicy) -> E2eOpener {
    let exported = dir.join(format!("v2-{policy}.keyring"));
    Keyring::load(file)
        .expect("loads")
        .export(KEY, Some(2))
        .expect("exports")
        .create(&exported)
        .expect("created");
    assert_eq!(mode(&exported), 0o600);
    let keyring = Keyring::load(&exported).expect("loads");
    assert_eq!(keyring.versions(KEY), [2]);
    E2eOpener::new(policy).with_keyring(keyring)
}

#[test]
fn a_reader_with_only_v2_gets_per_record_errors_naming_v1_and_v3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, file) = three_rotations(dir.path());
    let opener = v2_reader(dir.path(), &file, UnreadablePolicy::Fail);
    let mut opened = Vec::new();
    let mut errors = Vec::new();
    for mut r in records {
        match opener.open(&mut r) {
            Ok(Opened::Deliver) => opened.push(r.offset),
            Ok(Opened::Skip) => panic!("fail never skips"),
            Err(ClientError::Transform(text)) => errors.push(text),
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(opened, [3, 4, 5]);
    assert_eq!(errors.len(), 6);
    assert_eq!(
        errors[0],
        "record demo.orders/0@0: e2e key orders-key v1 is not in the \
         keyring (it holds v2)"
    );
    for (e, offset) in errors.iter().zip([0, 1, 2, 6, 7, 8]) {
        let version = if offset < 3 { 1 } else { 3 };
        assert!(
            e.contains(&format!(
                "record demo.orders/0@{offset}: e2e key orders-key v{version} is not in the keyring"
            )),
            "{e}"
        );
    }
}

#[test]
fn a_reader_with_only_v2_skips_and_counts_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, file) = three_rotations(dir.path());
    let opener = v2_reader(dir.path(), &file, UnreadablePolicy::Skip);
    let mut delivered = Vec::new();
    for mut r in records {
        if opener.open(&mut r).expect("skip is not an error") == Opened::Deliver {
            delivered.push(String::from_utf8(r.value.to_vec()).expect("utf-8"));
        }
    }
    assert_eq!(delivered, ["order 3", "order 4", "order 5"]);
    let counts = opener.unreadable();
    assert_eq!(counts.get("orders-key v1"), Some(&3));
    assert_eq!(counts.get("orders-key v3"), Some(&3));
    assert_eq!(counts.len(), 2);
}

#[test]
fn a_reader_with_only_v2_gets_marked_ciphertext_for_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, file) = three_rotations(dir.path());
    let opener = v2_reader(dir.path(), &file, UnreadablePolicy::DeliverCiphertext);
    for r in records {
        let stored = r.clone();
        let mut r = r;
        assert_eq!(opener.open(&mut r).expect("delivers"), Opened::Deliver);
        if (3..6).contains(&r.offset) {
            assert_eq!(r.header(ERROR_HEADER), None);
            assert_eq!(r.value, format!("order {}", r.offset).as_bytes());
        } else {
            let version = if r.offset < 3 { 1 } else { 3 };
            assert_eq!(r.value, stored.value, "the value as stored");
            assert_eq!(r.header(HEADER), stored.header(HEADER), "envelope kept");
            let why =
                String::from_utf8(r.header(ERROR_HEADER).expect("marked").to_vec()).expect("utf-8");
            assert!(
                why.starts_with(&format!(
                    "e2e key orders-key v{version} is not in the keyring"
                )),
                "{why}"
            );
        }
    }
}

#[test]
fn a_different_key_under_the_same_id_and_version_is_a_wrong_key() {
    let (sealer_keys, other_keys) = (
        Keyring::generate(KEY).expect("keyring"),
        Keyring::generate(KEY).expect("keyring"),
    );
    let sealer = E2eSealer::keyring(sealer_keys, None).expect("sealer");
    let opener = E2eOpener::new(UnreadablePolicy::Fail).with_keyring(other_keys);
    let mut r = ProducerRecord::new(TOPIC, "x");
    sealer.seal(&mut r).expect("seals");
    let err = opener.open(&mut delivered(&r, 9)).expect_err("wrong key");
    assert!(
        err.to_string()
            .contains("record demo.orders/0@9: e2e key orders-key v1 in the keyring does not open"),
        "{err}"
    );
    let no_keyring = E2eOpener::new(UnreadablePolicy::Fail);
    let err = no_keyring.open(&mut delivered(&r, 9)).expect_err("no keys");
    assert!(
        err.to_string()
            .ends_with("e2e key orders-key v1 is not in the keyring")
    );
}

#[test]
fn keyring_files_are_private_and_replaced_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("k.keyring");
    let keyring = Keyring::generate(KEY).expect("keyring");
    keyring.create(&file).expect("created");
    assert_eq!(mode(&file), 0o600);
    assert!(matches!(
        keyring.create(&file),
        Err(E2eError::File { ref message, .. }) if message.contains("already exists")
    ));
    let mut loaded = Keyring::load(&file).expect("loads");
    loaded.rotate(KEY).expect("rotates");
    loaded.save(&file).expect("saves");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(Keyring::load(&file).expect("loads").versions(KEY), [1, 2]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = Keyring::load(&file).expect_err("readable by others");
    assert!(matches!(err, E2eError::Permissions { mode: 0o644, .. }));
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn key_bytes_never_appear_in_debug_output_or_listings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("k.keyring");
    let mut keyring = Keyring::generate(KEY).expect("keyring");
    keyring.rotate(KEY).expect("rotates");
    keyring.add_key("payments-key").expect("adds");
    keyring.create(&file).expect("created");
    let text = std::fs::read_to_string(&file).expect("reads");
    let secrets: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["key"].as_str().expect("hex").to_owned())
            .collect();
    assert_eq!(secrets.len(), 3);

    let keyring = Keyring::load(&file).expect("loads");
    let sealer =
        E2eSealer::keyring(Keyring::load(&file).expect("loads"), Some(KEY)).expect("sealer");
    let mut r = ProducerRecord::new(TOPIC, "x");
    sealer.seal(&mut r).expect("seals");
    let opener =
        E2eOpener::new(UnreadablePolicy::Fail).with_keyring(Keyring::load(&file).expect("loads"));
    let shown = [
        format!("{keyring:?}"),
        format!("{keyring:#?}"),
        format!("{sealer:?}"),
        format!("{opener:?}"),
        format!("{:?}", keyring.keys()),
    ];
    assert_eq!(shown[0], "[orders-key v1, orders-key v2, payments-key v1]");
    for s in &shown {
        for secret in &secrets {
            assert!(!s.contains(secret.as_str()), "key bytes in {s}");
            assert!(!s.contains(&secret[..16]), "key bytes in {s}");
            assert!(
                !s.contains(&secret.to_uppercase()[..16]),
                "key bytes in {s}"
            );
        }
    }
    // Nor in a per-record error.
    let mut c = delivered(&r, 0);
    c.value = Bytes::from_static(b"garbage that will not authenticate");
    let err = opener.open(&mut c).expect_err("fails").to_string();
    for secret in &secrets {
        assert!(!err.contains(&secret[..16]));
    }
}

#[test]
fn keyring_management_errors_name_what_is_wrong() {
    let mut keyring = Keyring::generate(KEY).expect("keyring");
    assert!(matches!(
        keyring.rotate("nope"),
        Err(E2eError::UnknownKeyId { ref ids, .. }) if ids == &[KEY.to_owned()]
    ));
    assert!(keyring.add_key(KEY).is_err(), "ids are unique");
    assert!(keyring.add_key("").is_err());
    assert!(keyring.export(KEY, Some(5)).is_err());
    keyring.add_key("second").expect("adds");
    assert!(
        E2eSealer::keyring(keyring, None)
            .expect_err("two ids")
            .to_string()
            .contains("name one")
    );
}
