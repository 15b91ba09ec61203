//! The keyring: versioned symmetric topic keys shared by producers and
//! their readers.
//!
//! A keyring file is JSON, mode 0600:
//!
//! ```json
//! {"format":"strongbox-keyring","format_version":1,"keys":[
//!   {"id":"orders-key","version":1,"created_at":1769850000000,"key":"<64 hex digits>"}]}
//! ```
//!
//! `created_at` is milliseconds since the Unix epoch. A key id holds
//! versions 1, 2, ...; the highest is the *active* one, which producers
//! wrap new data keys under. Readers resolve each record's key by the id
//! and version in its header, so a keyring that keeps old versions reads
//! across every rotation.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;

use serde::Deserialize;
use strongbox_protocol::clock::now_ms;
use zeroize::Zeroizing;

use super::E2eError;
use super::cipher::{KEY_LEN, NONCE_LEN, SEALED_KEY_LEN, SecretKey, random};
use super::header::{KeyringSlot, check_short_name};
use super::secret_file;

/// The `format` field of a keyring file.
const FORMAT: &str = "strongbox-keyring";
/// The `format_version` this client writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Domain label of the data-key wrap's AAD.
const WRAP_LABEL: &[u8] = b"strongbox-e2e/1 keyring-wrap";

/// One key version, for listings. Never holds key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub id: String,
    /// The version.
    pub version: u32,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// True for the highest version of the id, which new data keys use.
    pub active: bool,
}

struct KeyringKey {
    created_at: i64,
    key: SecretKey,
}

/// Versioned AES-256 keys, by id.
///
/// The key bytes zeroize on drop and appear in no `Debug` output.
///
/// ```
/// use strongbox_client::e2e::Keyring;
///
/// let mut keyring = Keyring::generate("orders-key")?;
/// assert_eq!(keyring.rotate("orders-key")?, 2);
/// let reader = keyring.export("orders-key", Some(2))?; // only v2
/// assert_eq!(reader.keys().len(), 1);
/// # Ok::<(), strongbox_client::e2e::E2eError>(())
/// ```
#[derive(Default)]
pub struct Keyring {
    keys: BTreeMap<String, BTreeMap<u32, KeyringKey>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (id, versions) in &self.keys {
            for v in versions.keys() {
                list.entry(&format_args!("{id} v{v}"));
            }
        }
        list.finish()
    }
}

/// How a keyring key is written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    id: String,
    version: u32,
    created_at: i64,
    #[serde(deserialize_with = "super::cipher::hex_key")]
    key: Zeroizing<[u8; KEY_LEN]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeyring {
    format: String,
    format_version: u32,
    keys: Vec<FileKey>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// A keyring with one fresh random key, `id` version 1.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for an id outside 1..=255 bytes or with control
    /// characters; [`E2eError::Random`].
    pub fn generate(id: &str) -> Result<Self, E2eError> {
        let mut k = Self::new();
        k.add_key(id)?;
        Ok(k)
    }

    /// Adds a new key id with a fresh random version 1.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] when the id exists or is not a valid id;
    /// [`E2eError::Random`].
    pub fn add_key(&mut self, id: &str) -> Result<(), E2eError> {
        check_short_name("key id", id)?;
        if self.keys.contains_key(id) {
            return Err(E2eError::invalid(format!(
                "the keyring already has key {id} (rotate it instead)"
            )));
        }
        let key = SecretKey::random()?;
        self.keys.entry(id.to_owned()).or_default().insert(
            1,
            KeyringKey {
                created_at: now_ms(),
                key,
            },
        );
        Ok(())
    }

    /// Adds the next version of `id`, which becomes active; returns it.
    /// Older versions stay, so their records remain readable.
    ///
    /// # Errors
    ///
    /// [`E2eError::UnknownKeyId`]; [`E2eError::Invalid`] when the versions
    /// are exhausted; [`E2eError::Random`].
    pub fn rotate(&mut self, id: &str) -> Result<u32, E2eError> {
        let ids = self.ids();
        let versions = self
            .keys
            .get_mut(id)
            .ok_or_else(|| E2eError::UnknownKeyId {
                id: id.to_owned(),
                ids,
            })?;
        let next = versions
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| E2eError::invalid(format!("key {id} has no versions left")))?;
        versions.insert(
            next,
            KeyringKey {
                created_at: now_ms(),
                key: SecretKey::random()?,
            },
        );
        Ok(next)
    }

    /// The key ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// The versions of `id` held, ascending (empty when none).
    pub fn versions(&self, id: &str) -> Vec<u32> {
        self.keys
            .get(id)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The active (highest) version of `id`.
    pub fn active_version(&self, id: &str) -> Option<u32> {
        self.keys.get(id)?.keys().next_back().copied()
    }

    /// Every key version held, by id then version. No key bytes.
    pub fn keys(&self) -> Vec<KeyInfo> {
        let mut out = Vec::new();
        for (id, versions) in &self.keys {
            let active = versions.keys().next_back().copied();
            for (v, k) in versions {
                out.push(KeyInfo {
                    id: id.clone(),
                    version: *v,
                    created_at: k.created_at,
                    active: Some(*v) == active,
                });
            }
        }
        out
    }

    /// The id to use when none is named: the only one.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] when the keyring holds no id or several.
    pub fn sole_id(&self) -> Result<String, E2eError> {
        let ids = self.ids();
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(E2eError::invalid("the keyring holds no key")),
            _ => Err(E2eError::invalid(format!(
                "the keyring holds several keys ({}); name one",
                ids.join(", ")
            ))),
        }
    }

    /// A keyring holding only `id` (all its versions, or only `version`),
    /// to hand to a reader.
    ///
    /// # Errors
    ///
    /// [`E2eError::UnknownKeyId`], or [`E2eError::KeyNotInKeyring`] for a
    /// version it lacks.
    pub fn export(&self, id: &str, version: Option<u32>) -> Result<Keyring, E2eError> {
        let versions = self.keys.get(id).ok_or_else(|| E2eError::UnknownKeyId {
            id: id.to_owned(),
            ids: self.ids(),
        })?;
        let mut out = BTreeMap::new();
        for (v, k) in versions {
            if version.is_none_or(|want| want == *v) {
                out.insert(
                    *v,
                    KeyringKey {
                        created_at: k.created_at,
                        key: SecretKey::from_bytes(k.key.bytes()),
                    },
                );
            }
        }
        if out.is_empty() {
            return Err(E2eError::KeyNotInKeyring {
                id: id.to_owned(),
                version: version.unwrap_or(0),
                held: self.versions(id),
            });
        }
        let mut keys = BTreeMap::new();
        keys.insert(id.to_owned(), out);
        Ok(Keyring { keys })
    }

    /// Reads a keyring file. The file must not be readable by group or
    /// others.
    ///
    /// # Errors
    ///
    /// [`E2eError::File`], [`E2eError::Permissions`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, E2eError> {
        let path = path.as_ref();
        let bytes = secret_file::read_secret(path, "keyring")?;
        Self::from_json(&bytes).map_err(|message| E2eError::File {
            action: "read",
            what: "keyring",
            path: path.to_path_buf(),
            message,
        })
    }

    /// Writes a new keyring file with mode 0600; refuses to overwrite.
    ///
    /// # Errors
    ///
    /// [`E2eError::File`].
    pub fn create(&self, path: impl AsRef<Path>) -> Result<(), E2eError> {
        secret_file::create_secret(path.as_ref(), "keyring", self.to_json().as_bytes())
    }

    /// Replaces a keyring file atomically (mode 0600).
    ///
    /// # Errors
    ///
    /// [`E2eError::File`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), E2eError> {
        secret_file::replace_secret(path.as_ref(), "keyring", self.to_json().as_bytes())
    }

    /// The file form, in zeroizing memory.
    fn to_json(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(64 + 140 * self.keys().len()));
        let _ = write!(
            out,
            "{{\"format\":\"{FORMAT}\",\"format_version\":{FORMAT_VERSION},\"keys\":["
        );
        let mut first = true;
        for (id, versions) in &self.keys {
            for (v, k) in versions {
                if !first {
                    out.push(',');
                }
                first = false;
                let hex = Zeroizing::new(hex::encode(k.key.bytes()));
                let _ = write!(
                    out,
                    "\n  {{\"id\":{},\"version\":{v},\"created_at\":{},\"key\":\"{}\"}}",
                    serde_json::Value::String(id.clone()),
                    k.created_at,
                    hex.as_str()
                );
            }
        }
        out.push_str("\n]}\n");
        out
    }

    fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: FileKeyring = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.format != FORMAT || file.format_version != FORMAT_VERSION {
            return Err(format!(
                "not a keyring this client reads (format {:?} version {}; expected {FORMAT:?} version {FORMAT_VERSION})",
                file.format, file.format_version
            ));
        }
        let mut keys: BTreeMap<String, BTreeMap<u32, KeyringKey>> = BTreeMap::new();
        for k in file.keys {
            check_short_name("key id", &k.id).map_err(|e| e.to_string())?;
            if k.version == 0 {
                return Err(format!("key {} has version 0 (versions start at 1)", k.id));
            }
            let versions = keys.entry(k.id.clone()).or_default();
            if versions.contains_key(&k.version) {
                return Err(format!("key {} v{} appears twice", k.id, k.version));
            }
            versions.insert(
                k.version,
                KeyringKey {
                    created_at: k.created_at,
                    key: SecretKey::from_bytes(&k.key),
                },
            );
        }
        Ok(Self { keys })
    }

    /// A keyring holding one given key, for known-answer tests.
    #[cfg(test)]
    pub(crate) fn from_test_key(id: &str, version: u32, key: [u8; KEY_LEN]) -> Self {
        let mut versions = BTreeMap::new();
        versions.insert(
            version,
            KeyringKey {
                created_at: 0,
                key: SecretKey::from_bytes(&key),
            },
        );
        let mut keys = BTreeMap::new();
        keys.insert(id.to_owned(), versions);
        Self { keys }
    }

    fn key(&self, id: &str, version: u32) -> Option<&SecretKey> {
        self.keys.get(id)?.get(&version).map(|k| &k.key)
    }

    /// Wraps a data key under `id` v`version` for records of `topic`.
    pub(crate) fn wrap(
        &self,
        id: &str,
        version: u32,
        topic: &str,
        dek: &SecretKey,
    ) -> Result<KeyringSlot, E2eError> {
        let key = self
            .key(id, version)
            .ok_or_else(|| E2eError::KeyNotInKeyring {
                id: id.to_owned(),
                version,
                held: self.versions(id),
            })?;
        let wrap_nonce: [u8; NONCE_LEN] = random()?;
        let sealed = key
            .aead()
            .seal_key(wrap_nonce, &wrap_aad(topic, id, version), dek)?;
        Ok(KeyringSlot {
            key_id: id.to_owned(),
            version,
            wrap_nonce,
            sealed,
        })
    }

    /// Unwraps the data key of a record of `topic`.
    pub(crate) fn unwrap(&self, topic: &str, slot: &KeyringSlot) -> Result<SecretKey, E2eError> {
        let key =
            self.key(&slot.key_id, slot.version)
                .ok_or_else(|| E2eError::KeyNotInKeyring {
                    id: slot.key_id.clone(),
                    version: slot.version,
                    held: self.versions(&slot.key_id),
                })?;
        let sealed: &[u8; SEALED_KEY_LEN] = &slot.sealed;
        key.aead()
            .open_key(
                slot.wrap_nonce,
                &wrap_aad(topic, &slot.key_id, slot.version),
                sealed,
            )
            .ok_or_else(|| E2eError::WrongKey {
                id: slot.key_id.clone(),
                version: slot.version,
            })
    }
}

/// AAD of a data key's wrap: label, topic, key id and version, each
/// length-prefixed so no two contexts encode alike.
fn wrap_aad(topic: &str, id: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_LABEL.len() + topic.len() + id.len() + 12);
    aad.extend_from_slice(WRAP_LABEL);
    aad.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(topic.as_bytes());
    aad.extend_from_slice(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_form_round_trips_and_hides_nothing_it_should_keep() {
        let mut k = Keyring::generate("orders-key").expect("generates");
        k.rotate("orders-key").expect("rotates");
        k.add_key("other \"quoted\"").expect("adds");
        let json = k.to_json();
        let back = Keyring::from_json(json.as_bytes()).expect("parses");
        assert_eq!(back.keys(), k.keys());
        for info in k.keys() {
            assert_eq!(
                back.key(&info.id, info.version).map(|s| *s.bytes()),
                k.key(&info.id, info.version).map(|s| *s.bytes())
            );
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let good = r#"{"format":"strongbox-keyring","format_version":1,"keys":[{"id":"a","version":1,"created_at":0,"key":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
        assert!(Keyring::from_json(good.as_bytes()).is_ok());
        for (bad, why) in [
            (good.replace("\"key\":\"00", "\"key\":\"zz"), "hex"),
            (
                good.replace("\"version\":1,", "\"version\":0,"),
                "version 0",
            ),
            (good.replace("strongbox-keyring", "other"), "not a keyring"),
            (
                good.replace("\"created_at\"", "\"extra\":1,\"created_at\""),
                "unknown field",
            ),
            (good.replace("\"id\":\"a\"", "\"id\":\"\""), "1 to 255"),
        ] {
            let err = Keyring::from_json(bad.as_bytes()).expect_err(why);
            assert!(err.contains(why), "{err} should mention {why}");
            assert!(!err.contains("0000000000"), "no key bytes in {err}");
        }
    }

    #[test]
    fn wrap_binds_topic_id_and_version() {
        let k = Keyring::generate("k").expect("generates");
        let dek = SecretKey::random().expect("rng");
        let slot = k.wrap("k", 1, "demo.a", &dek).expect("wraps");
        assert_eq!(
            k.unwrap("demo.a", &slot).expect("unwraps").bytes(),
            dek.bytes()
        );
        assert!(matches!(
            k.unwrap("demo.b", &slot),
            Err(E2eError::WrongKey { .. })
        ));
        let mut other = slot.clone();
        other.version = 2;
        assert!(matches!(
            k.unwrap("demo.a", &other),
            Err(E2eError::KeyNotInKeyring { version: 2, ref held, .. }) if held == &[1]
        ));
    }
}
