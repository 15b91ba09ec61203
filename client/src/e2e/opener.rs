//! The consumer side: resolves each record's key and opens its value.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cipher::{Aead, SecretKey};
use super::header::{Envelope, FIXED_LEN, NONCE_AT, Source};
use super::sealer::nonce_of;
use super::{E2eError, ERROR_HEADER, HEADER, Identity, Keyring, value_aad};
use crate::consumer::ConsumedRecord;
use crate::error::ClientError;
use crate::transform::{Opened, ValueOpener};

/// Data keys kept unwrapped, so a record does not cost an HPKE
/// decapsulation (or a keyring unwrap) when its data key was seen before.
const CACHED_KEYS: usize = 256;

/// What a consumer does with a record it cannot open: its key is missing
/// or wrong, it fails authentication, or it is not sealed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnreadablePolicy {
    /// Yield an `Err` item for the record, naming its key; the stream goes
    /// on with the next record.
    #[default]
    Fail,
    /// Leave the record out, count it per key
    /// ([`E2eOpener::unreadable`]) and log the first one of each key.
    Skip,
    /// Deliver the record as stored (ciphertext value, `strongbox-e2e`
    /// header kept) with a `strongbox-e2e-error` header saying why.
    DeliverCiphertext,
}

impl FromStr for UnreadablePolicy {
    type Err = String;

    /// `fail`, `skip`, or `ciphertext` (also `deliver-ciphertext`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            "ciphertext" | "deliver-ciphertext" => Ok(Self::DeliverCiphertext),
            other => Err(format!("expected fail, skip or ciphertext, got {other:?}")),
        }
    }
}

impl fmt::Display for UnreadablePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::DeliverCiphertext => "ciphertext",
        })
    }
}

/// Unwrapped data keys by (topic, header without its nonce), oldest first
/// out.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<Vec<u8>, Arc<Aead>>,
    order: VecDeque<Vec<u8>>,
}

impl KeyCache {
    fn get(&self, id: &[u8]) -> Option<Arc<Aead>> {
        self.keys.get(id).cloned()
    }

    fn insert(&mut self, id: Vec<u8>, aead: Arc<Aead>) {
        if self.keys.insert(id.clone(), aead).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > CACHED_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

/// Opens end-to-end encrypted records; set it as
/// [`ConsumerConfig::opener`](crate::ConsumerConfig::opener).
///
/// Each record's key is resolved from its own header: a keyring key by id
/// and version (so one keyring with every version reads across
/// rotations), or this reader's slot among the recipients, found by its
/// public key's fingerprint. A record delivered without a
/// `strongbox-e2e-error` header was sealed and authenticated; its value is
/// the plaintext and its `strongbox-e2e` header is removed.
///
/// ```no_run
/// use std::sync::Arc;
/// use strongbox_client::e2e::{E2eOpener, Keyring, UnreadablePolicy};
/// use strongbox_client::ConsumerConfig;
///
/// let opener = E2eOpener::new(UnreadablePolicy::Fail).with_keyring(Keyring::load("orders.keyring")?);
/// let config = ConsumerConfig {
///     opener: Some(Arc::new(opener)),
///     ..ConsumerConfig::default()
/// };
/// # Ok::<(), strongbox_client::e2e::E2eError>(())
/// ```
pub struct E2eOpener {
    keyring: Option<Keyring>,
    identities: Vec<Identity>,
    policy: UnreadablePolicy,
    cache: Mutex<KeyCache>,
    unreadable: Mutex<BTreeMap<String, u64>>,
}

impl fmt::Debug for E2eOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2eOpener")
            .field("keyring", &self.keyring)
            .field("identities", &self.identities)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl E2eOpener {
    /// An opener with no keys yet.
    pub fn new(policy: UnreadablePolicy) -> Self {
        Self {
            keyring: None,
            identities: Vec::new(),
            policy,
            cache: Mutex::new(KeyCache::default()),
            unreadable: Mutex::new(BTreeMap::new()),
        }
    }

    /// Opens keyring-sealed records with `keyring`.
    #[must_use]
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Opens records sealed to `identity`'s public key; may be given
    /// several (for example the key before a change and the one after).
    #[must_use]
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identities.push(identity);
        self
    }

    /// The policy for records it cannot open.
    pub fn policy(&self) -> UnreadablePolicy {
        self.policy
    }

    /// Records not opened so far, by the key they name (`orders-key v3`,
    /// `recipients bob (…)`, `not sealed`).
    pub fn unreadable(&self) -> BTreeMap<String, u64> {
        self.unreadable
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Opens one value given its topic, record key and `strongbox-e2e`
    /// header; returns the plaintext.
    ///
    /// # Errors
    ///
    /// An [`E2eError`] naming the key: [`E2eError::KeyNotInKeyring`],
    /// [`E2eError::WrongKey`], [`E2eError::NotARecipient`],
    /// [`E2eError::RecipientKeyMismatch`], [`E2eError::Authentication`],
    /// or a malformed or unsupported header.
    pub fn open_value(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        header: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        let cache_id = cache_id(topic, header);
        let cached = self.cache.lock().ok().and_then(|c| c.get(&cache_id));
        // A cache hit means these exact header bytes (but the nonce) were
        // parsed and unwrapped before, so they need no second parse.
        let (aead, nonce) = match cached {
            Some(aead) => (aead, nonce_of(header)?),
            None => {
                let envelope = Envelope::decode(header)?;
                let aead = Arc::new(self.data_key(topic, &envelope.source)?.aead());
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(cache_id, aead.clone());
                }
                (aead, envelope.nonce)
            }
        };
        aead.open(nonce, &value_aad(topic, key, header)?, value)
            .ok_or_else(|| E2eError::Authentication {
                key: Envelope::decode(header)
                    .map(|e| source_label(&e.source))
                    .unwrap_or_else(|_| "an unreadable header".into()),
            })
    }

    fn data_key(&self, topic: &str, source: &Source) -> Result<SecretKey, E2eError> {
        match source {
            Source::Keyring(slot) => match &self.keyring {
                Some(k) => k.unwrap(topic, slot),
                None => Err(E2eError::KeyNotInKeyring {
                    id: slot.key_id.clone(),
                    version: slot.version,
                    held: Vec::new(),
                }),
            },
            Source::Recipients(slots) => {
                let mut last = None;
                for slot in slots {
                    for id in &self.identities {
                        if id.fingerprint() == slot.fingerprint {
                            match id.open(topic, slot) {
                                Ok(k) => return Ok(k),
                                Err(e) => last = Some(e),
                            }
                        }
                    }
                }
                Err(last.unwrap_or_else(|| E2eError::NotARecipient {
                    recipients: slot_list(slots),
                    mine: if self.identities.is_empty() {
                        "none".into()
                    } else {
                        self.identities
                            .iter()
                            .map(|i| {
                                format!(
                                    "{} ({})",
                                    i.recipient().unwrap_or("unnamed"),
                                    hex::encode(i.fingerprint())
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                }))
            }
        }
    }

    /// Opens a record's value in place of its ciphertext.
    fn open_record(&self, record: &ConsumedRecord) -> Result<Vec<u8>, E2eError> {
        let mut headers = record.headers.iter().filter(|(n, _)| n == HEADER);
        let header = headers.next().ok_or(E2eError::NotSealed)?;
        if headers.next().is_some() {
            return Err(E2eError::malformed(
                "the record has more than one strongbox-e2e header",
            ));
        }
        self.open_value(
            &record.topic,
            record.key.as_deref(),
            &header.1,
            &record.value,
        )
    }

    fn count(&self, e: &E2eError, record: &ConsumedRecord) {
        let label = e.key_label();
        let first = match self.unreadable.lock() {
            Ok(mut m) => {
                let n = m.entry(label.clone()).or_insert(0);
                *n += 1;
                *n == 1
            }
            Err(_) => false,
        };
        if first && self.policy == UnreadablePolicy::Skip {
            tracing::warn!(
                topic = %record.topic,
                partition = record.partition,
                offset = record.offset,
                key = %label,
                "skipping end-to-end records this reader cannot open (logged once per key): {e}"
            );
        }
    }
}

impl ValueOpener for E2eOpener {
    fn open(&self, record: &mut ConsumedRecord) -> Result<Opened, ClientError> {
        // Only this opener writes the error header: one that arrives with
        // the record is not ours and must not mislead the application.
        record.headers.retain(|(n, _)| n != ERROR_HEADER);
        match self.open_record(record) {
            Ok(plain) => {
                record.value = Bytes::from(plain);
                record.headers.retain(|(n, _)| n != HEADER);
                Ok(Opened::Deliver)
            }
            Err(e) => {
                self.count(&e, record);
                match self.policy {
                    UnreadablePolicy::Fail => Err(ClientError::Transform(format!(
                        "record {}/{}@{}: {e}",
                        record.topic, record.partition, record.offset
                    ))),
                    UnreadablePolicy::Skip => Ok(Opened::Skip),
                    UnreadablePolicy::DeliverCiphertext => {
                        record
                            .headers
                            .push((ERROR_HEADER.to_owned(), Bytes::from(e.to_string())));
                        Ok(Opened::Deliver)
                    }
                }
            }
        }
    }
}

/// The cache id of a data key: the topic and every header byte but the
/// nonce.
fn cache_id(topic: &str, header: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(4 + topic.len() + header.len());
    id.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes());
    id.extend_from_slice(topic.as_bytes());
    id.extend_from_slice(header.get(..NONCE_AT).unwrap_or_default());
    id.extend_from_slice(header.get(FIXED_LEN..).unwrap_or_default());
    id
}

/// The key a header names, for messages.
pub(crate) fn source_label(source: &Source) -> String {
    match source {
        Source::Keyring(k) => format!("{} v{}", k.key_id, k.version),
        Source::Recipients(slots) => format!("recipients {}", slot_list(slots)),
    }
}

fn slot_list(slots: &[super::header::RecipientSlot]) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<String> = slots
        .iter()
        .take(SHOWN)
        .map(|s| format!("{} ({})", s.recipient, hex::encode(s.fingerprint)))
        .collect();
    if slots.len() > SHOWN {
        names.push(format!("and {} more", slots.len() - SHOWN));
    }
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::header::{KeyringSlot, SOURCE_KEYRING};
    use aes_gcm::aead::{Aead as _, KeyInit, Payload};

    /// A record built with RustCrypto's AES-GCM alone, following the
    /// documented format, opens with the opener (which uses ring).
    #[test]
    fn an_independently_built_envelope_opens() {
        let keyring_key = [0x11u8; 32];
        let dek = [0x22u8; 32];
        let keyring = Keyring::from_test_key("orders-key", 3, keyring_key);
        let topic = "demo.orders";

        let kek = aes_gcm::Aes256Gcm::new_from_slice(&keyring_key).expect("key");
        let wrap_nonce = [0x33u8; 12];
        let mut wrap_aad = b"strongbox-e2e/1 keyring-wrap".to_vec();
        wrap_aad.extend_from_slice(&(topic.len() as u32).to_be_bytes());
        wrap_aad.extend_from_slice(topic.as_bytes());
        wrap_aad.extend_from_slice(&10u32.to_be_bytes());
        wrap_aad.extend_from_slice(b"orders-key");
        wrap_aad.extend_from_slice(&3u32.to_be_bytes());
        let wrapped = kek
            .encrypt(
                (&wrap_nonce).into(),
                Payload {
                    msg: &dek,
                    aad: &wrap_aad,
                },
            )
            .expect("wraps");

        let value_nonce = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let mut header = vec![1, 1, SOURCE_KEYRING, 0];
        header.extend_from_slice(&value_nonce);
        header.push(10);
        header.extend_from_slice(b"orders-key");
        header.extend_from_slice(&3u32.to_be_bytes());
        header.extend_from_slice(&wrap_nonce);
        header.extend_from_slice(&wrapped);
        assert_eq!(
            Envelope::decode(&header).expect("valid").source,
            Source::Keyring(KeyringSlot {
                key_id: "orders-key".into(),
                version: 3,
                wrap_nonce,
                sealed: wrapped.as_slice().try_into().expect("48 bytes"),
            })
        );

        let mut aad = b"strongbox-e2e/1 value".to_vec();
        aad.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        aad.extend_from_slice(topic.as_bytes());
        aad.push(1);
        aad.extend_from_slice(&3u32.to_be_bytes());
        aad.extend_from_slice(b"c-7");
        aad.extend_from_slice(&(header.len() as u32).to_be_bytes());
        aad.extend_from_slice(&header);
        let value = aes_gcm::Aes256Gcm::new_from_slice(&dek)
            .expect("key")
            .encrypt(
                (&value_nonce).into(),
                Payload {
                    msg: b"plain text",
                    aad: &aad,
                },
            )
            .expect("seals");

        let opener = E2eOpener::new(UnreadablePolicy::Fail).with_keyring(keyring);
        assert_eq!(
            opener
                .open_value(topic, Some(b"c-7"), &header, &value)
                .expect("opens"),
            b"plain text"
        );
        // And the second time through the data key cache.
        assert_eq!(
            opener
                .open_value(topic, Some(b"c-7"), &header, &value)
                .expect("opens"),
            b"plain text"
        );
        assert!(matches!(
            opener.open_value(topic, Some(b"c-8"), &header, &value),
            Err(E2eError::Authentication { key }) if key == "orders-key v3"
        ));
    }

    #[test]
    fn the_key_cache_is_bounded() {
        let mut cache = KeyCache::default();
        let aead = Arc::new(SecretKey::from_bytes(&[1; 32]).aead());
        for i in 0..(CACHED_KEYS + 10) {
            cache.insert(i.to_be_bytes().to_vec(), aead.clone());
        }
        assert_eq!(cache.keys.len(), CACHED_KEYS);
        assert!(cache.get(&0usize.to_be_bytes()).is_none(), "oldest evicted");
        assert!(cache.get(&(CACHED_KEYS + 9).to_be_bytes()).is_some());
    }
}
