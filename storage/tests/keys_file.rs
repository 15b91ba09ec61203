//! The file key provider's own rules: permissions, file format, refusals.

use std::os::unix::fs::PermissionsExt;

use strongbox_storage::keys::{Dek, FileKeyProvider, KekId, KekScope, KeyError, KeyProvider};

fn v(version: u32) -> KekId {
    KekId {
        scope: KekScope::Broker,
        version,
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn creates_private_directory_and_key_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("keys");
    let p = FileKeyProvider::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    p.generate_kek(&v(1)).unwrap();
    let file = p.key_path(&v(1));
    assert_eq!(file.parent().unwrap(), dir);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32);
    // One file per label; no temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["strongbox%2Fkek%2Fbroker%2Fv1.kek".to_owned()]);
    // Two generated keys differ.
    p.generate_kek(&v(2)).unwrap();
    assert_ne!(
        std::fs::read(p.key_path(&v(1))).unwrap(),
        std::fs::read(p.key_path(&v(2))).unwrap()
    );
    let info = p.info();
    assert_eq!(info.kind, "file");
    assert!(info.location.contains("keys"));
}

#[test]
fn refuses_key_files_others_can_read() {
    let tmp = tempfile::tempdir().unwrap();
    let p = FileKeyProvider::open(tmp.path().join("keys")).unwrap();
    p.generate_kek(&v(1)).unwrap();
    let blob = p.wrap(&v(1), &Dek::generate().unwrap()).unwrap();
    for bad in [0o640, 0o604, 0o644, 0o660] {
        std::fs::set_permissions(p.key_path(&v(1)), std::fs::Permissions::from_mode(bad)).unwrap();
        let err = p.unwrap(&v(1), &blob).unwrap_err();
        assert!(matches!(err, KeyError::Config(_)), "{bad:o}: {err:?}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(matches!(
            p.wrap(&v(1), &Dek::generate().unwrap()),
            Err(KeyError::Config(_))
        ));
    }
    std::fs::set_permissions(p.key_path(&v(1)), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(p.unwrap(&v(1), &blob).is_ok());
    // 0400 is fine too.
    std::fs::set_permissions(p.key_path(&v(1)), std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(p.unwrap(&v(1), &blob).is_ok());
}

#[test]
fn refuses_a_directory_others_can_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = FileKeyProvider::open(&dir).unwrap_err();
    assert!(matches!(err, KeyError::Config(_)), "{err:?}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    FileKeyProvider::open(&dir).unwrap();
}

#[test]
fn refuses_short_long_and_linked_key_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = FileKeyProvider::open(tmp.path().join("keys")).unwrap();
    p.generate_kek(&v(1)).unwrap();
    let path = p.key_path(&v(1));
    for len in [0usize, 16, 31, 33, 64] {
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let err = p.wrap(&v(1), &Dek::generate().unwrap()).unwrap_err();
        assert!(matches!(err, KeyError::Config(_)), "{len}: {err:?}");
        assert!(err.to_string().contains(&format!("{len} bytes")), "{err}");
    }
    // A symbolic link in place of the key file is refused.
    std::fs::remove_file(&path).unwrap();
    let elsewhere = tmp.path().join("elsewhere.kek");
    std::fs::write(&elsewhere, [1u8; 32]).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let err = p.wrap(&v(1), &Dek::generate().unwrap()).unwrap_err();
    assert!(matches!(err, KeyError::Config(_)), "{err:?}");
}

#[test]
fn keys_survive_reopening_and_destroy_removes_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let dek = Dek::generate().unwrap();
    let blob = {
        let p = FileKeyProvider::open(&dir).unwrap();
        p.generate_kek(&v(1)).unwrap();
        p.wrap(&v(1), &dek).unwrap()
    };
    let p = FileKeyProvider::open(&dir).unwrap();
    assert_eq!(p.unwrap(&v(1), &blob).unwrap().expose(), dek.expose());
    let path = p.key_path(&v(1));
    p.destroy_kek(&v(1)).unwrap();
    assert!(!path.exists());
    assert!(matches!(
        p.unwrap(&v(1), &blob),
        Err(KeyError::KekNotFound(_))
    ));
}

#[test]
fn a_missing_directory_is_not_a_missing_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let p = FileKeyProvider::open(&dir).unwrap();
    p.generate_kek(&v(1)).unwrap();
    let blob = p.wrap(&v(1), &Dek::generate().unwrap()).unwrap();
    std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
    for err in [
        p.unwrap(&v(1), &blob).unwrap_err(),
        p.has_kek(&v(1)).unwrap_err(),
        p.destroy_kek(&v(1)).unwrap_err(),
    ] {
        assert!(matches!(err, KeyError::Unavailable(_)), "{err:?}");
    }
}

#[test]
fn labels_map_to_distinct_files_inside_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let p = FileKeyProvider::open(tmp.path().join("keys")).unwrap();
    let ids = [
        v(1),
        v(11),
        KekId {
            scope: KekScope::Topic("0a".repeat(16)),
            version: 1,
        },
        KekId {
            scope: KekScope::Topic("0A".repeat(16)),
            version: 1,
        },
    ];
    let mut paths: Vec<_> = ids.iter().map(|id| p.key_path(id)).collect();
    for path in &paths {
        assert_eq!(path.parent().unwrap(), p.dir());
    }
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), ids.len());
}
