//! The producer side: seals record values before they are batched.
//!
//! # Data keys and nonces
//!
//! A sealer keeps one *data key epoch* per topic: a fresh 256-bit data key
//! from the OS CSPRNG, wrapped once for the readers (under the keyring key,
//! or by HPKE to each recipient), and a 64-bit counter. Record `i` of the
//! epoch is sealed with the nonce `0x00000000 || i` (big-endian). The
//! counter only grows, under the epoch's lock, and the epoch ends before
//! it reaches [`DataKeyLimits::max_records`] (at most 2^32), after
//! [`DataKeyLimits::max_age`], when a recipient in it expires, or when the
//! key source changes; the next record then starts a new epoch with a new
//! data key. The data key never leaves the process unwrapped and is never
//! reused after its epoch, so no (data key, nonce) pair repeats, including
//! across restarts (a restarted producer draws a new key).
//!
//! One wrap per epoch, not per record, keeps HPKE off the hot path: a
//! record costs one AES-256-GCM seal of its value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strongbox_protocol::clock::now_ms;

use super::cipher::{Aead, NONCE_LEN, SecretKey};
use super::header::{Envelope, NONCE_AT, Source};
use super::{E2eError, HEADER, Keyring, RESERVED_PREFIX, RecipientSet, value_aad};
use crate::error::ClientError;
use crate::producer::ProducerRecord;
use crate::transform::ValueSealer;

/// When a sealer replaces a topic's data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataKeyLimits {
    /// Records sealed under one data key, at most 2^32 (larger values are
    /// capped there).
    pub max_records: u64,
    /// Age of a data key after which the next record gets a new one.
    pub max_age: Duration,
}

impl Default for DataKeyLimits {
    fn default() -> Self {
        Self {
            max_records: 1 << 24,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Hard cap on records per data key, so the counter nonce is far from
/// wrapping and GCM's per-key limits are respected with a wide margin.
const MAX_RECORDS_PER_KEY: u64 = 1 << 32;

/// Where data keys are wrapped.
#[derive(Debug)]
enum KeySource {
    Keyring {
        keyring: RwLock<Arc<Keyring>>,
        key_id: String,
    },
    Recipients(RwLock<HashMap<String, Arc<RecipientSet>>>),
}

/// One topic's current data key.
struct Epoch {
    aead: Arc<Aead>,
    /// The header with a zero nonce; each record patches its own in.
    header: Vec<u8>,
    next: u64,
    made: Instant,
    /// The earliest expiry of a recipient in this epoch.
    not_after_ms: Option<i64>,
    generation: u64,
}

/// Seals record values for end-to-end encryption; set it as
/// [`ProducerConfig::sealer`](crate::ProducerConfig::sealer).
///
/// Each sealed record gets a `strongbox-e2e` header naming the key it was
/// sealed under, and its value becomes AES-256-GCM ciphertext whose AAD
/// binds the topic, the record key and that header.
///
/// ```no_run
/// use std::sync::Arc;
/// use strongbox_client::e2e::{E2eSealer, Keyring};
/// use strongbox_client::ProducerConfig;
///
/// let keyring = Keyring::load("orders.keyring")?;
/// let config = ProducerConfig {
///     sealer: Some(Arc::new(E2eSealer::keyring(keyring, Some("orders-key"))?)),
///     ..ProducerConfig::default()
/// };
/// # Ok::<(), strongbox_client::e2e::E2eError>(())
/// ```
#[derive(Debug)]
pub struct E2eSealer {
    source: KeySource,
    limits: DataKeyLimits,
    generation: AtomicU64,
    epochs: Mutex<HashMap<String, Epoch>>,
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("records", &self.next)
            .finish_non_exhaustive()
    }
}

impl E2eSealer {
    /// Seals under the active version of `key_id` in `keyring` (or of its
    /// only key when `None`).
    ///
    /// # Errors
    ///
    /// [`E2eError::UnknownKeyId`], or [`E2eError::Invalid`] when no id is
    /// named and the keyring holds none or several.
    pub fn keyring(keyring: Keyring, key_id: Option<&str>) -> Result<Self, E2eError> {
        let key_id = match key_id {
            Some(id) => id.to_owned(),
            None => keyring.sole_id()?,
        };
        if keyring.active_version(&key_id).is_none() {
            return Err(E2eError::UnknownKeyId {
                id: key_id,
                ids: keyring.ids(),
            });
        }
        Ok(Self::new(KeySource::Keyring {
            keyring: RwLock::new(Arc::new(keyring)),
            key_id,
        }))
    }

    /// Seals each record to the recipients of its topic. A record for a
    /// topic without a set fails to send.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] when no set is given or two are for one topic.
    pub fn recipients(sets: impl IntoIterator<Item = RecipientSet>) -> Result<Self, E2eError> {
        let mut map = HashMap::new();
        for set in sets {
            let topic = set.topic().to_owned();
            if map.insert(topic.clone(), Arc::new(set)).is_some() {
                return Err(E2eError::invalid(format!(
                    "two recipient sets for topic {topic}"
                )));
            }
        }
        if map.is_empty() {
            return Err(E2eError::invalid("no recipient set given"));
        }
        Ok(Self::new(KeySource::Recipients(RwLock::new(map))))
    }

    fn new(source: KeySource) -> Self {
        Self {
            source,
            limits: DataKeyLimits::default(),
            generation: AtomicU64::new(0),
            epochs: Mutex::new(HashMap::new()),
        }
    }

    /// Sets when data keys are replaced.
    #[must_use]
    pub fn with_limits(mut self, limits: DataKeyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces the keyring (after a rotation); the next record of each
    /// topic starts a data key under the new active version.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a recipients sealer;
    /// [`E2eError::UnknownKeyId`] when the keyring lacks this sealer's key.
    pub fn set_keyring(&self, new: Keyring) -> Result<(), E2eError> {
        let KeySource::Keyring { keyring, key_id } = &self.source else {
            return Err(E2eError::invalid(
                "this sealer seals to recipients, not a keyring",
            ));
        };
        if new.active_version(key_id).is_none() {
            return Err(E2eError::UnknownKeyId {
                id: key_id.clone(),
                ids: new.ids(),
            });
        }
        if let Ok(mut k) = keyring.write() {
            *k = Arc::new(new);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Replaces the recipients of `set`'s topic (after the directory
    /// changed); the next record of the topic starts a new data key, so a
    /// removed recipient cannot read records sealed from then on.
    ///
    /// # Errors
    ///
    /// [`E2eError::Invalid`] for a keyring sealer.
    pub fn set_recipients(&self, set: RecipientSet) -> Result<(), E2eError> {
        let KeySource::Recipients(sets) = &self.source else {
            return Err(E2eError::invalid(
                "this sealer seals under a keyring, not to recipients",
            ));
        };
        if let Ok(mut s) = sets.write() {
            s.insert(set.topic().to_owned(), Arc::new(set));
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Seals one value: returns the `strongbox-e2e` header and the
    /// ciphertext (value and tag).
    ///
    /// # Errors
    ///
    /// [`E2eError::NoRecipients`] when the topic has no current recipient;
    /// [`E2eError::Random`]; [`E2eError::Invalid`] for a topic name over
    /// 65535 bytes.
    pub fn seal_value(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), E2eError> {
        let (aead, header) = self.next_nonce(topic)?;
        let nonce = nonce_of(&header)?;
        let sealed = aead.seal(nonce, &value_aad(topic, key, &header)?, value)?;
        Ok((header, sealed))
    }

    /// The data key and the header (with its nonce) for the next record.
    fn next_nonce(&self, topic: &str) -> Result<(Arc<Aead>, Vec<u8>), E2eError> {
        let max_records = self.limits.max_records.clamp(1, MAX_RECORDS_PER_KEY);
        let generation = self.generation.load(Ordering::SeqCst);
        let mut epochs = self
            .epochs
            .lock()
            .map_err(|_| E2eError::invalid("the sealer's state is poisoned"))?;
        let fresh = match epochs.get(topic) {
            None => true,
            Some(e) => {
                e.next >= max_records
                    || e.generation != generation
                    || e.made.elapsed() >= self.limits.max_age
                    || e.not_after_ms.is_some_and(|t| now_ms() >= t)
            }
        };
        if fresh {
            let epoch = self.new_epoch(topic, generation)?;
            epochs.insert(topic.to_owned(), epoch);
        }
        let epoch = epochs
            .get_mut(topic)
            .ok_or_else(|| E2eError::invalid("no data key epoch"))?;
        let counter = epoch.next;
        epoch.next += 1;
        let mut header = epoch.header.clone();
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        if let Some(slot) = header.get_mut(NONCE_AT..NONCE_AT + NONCE_LEN) {
            slot.copy_from_slice(&nonce);
        }
        Ok((epoch.aead.clone(), header))
    }

    fn new_epoch(&self, topic: &str, generation: u64) -> Result<Epoch, E2eError> {
        let dek = SecretKey::random()?;
        let (source, not_after_ms) = match &self.source {
            KeySource::Keyring { keyring, key_id } => {
                let keyring = keyring
                    .read()
                    .map_err(|_| E2eError::invalid("the sealer's keyring is poisoned"))?
                    .clone();
                let version =
                    keyring
                        .active_version(key_id)
                        .ok_or_else(|| E2eError::UnknownKeyId {
                            id: key_id.clone(),
                            ids: keyring.ids(),
                        })?;
                (
                    Source::Keyring(keyring.wrap(key_id, version, topic, &dek)?),
                    None,
                )
            }
            KeySource::Recipients(sets) => {
                let set = {
                    let sets = sets
                        .read()
                        .map_err(|_| E2eError::invalid("the sealer's recipients are poisoned"))?;
                    match sets.get(topic) {
                        Some(s) => s.clone(),
                        None => {
                            let mut have: Vec<&str> = sets.keys().map(String::as_str).collect();
                            have.sort_unstable();
                            return Err(E2eError::NoRecipients {
                                topic: topic.to_owned(),
                                detail: format!(
                                    "this producer has recipients for {} only",
                                    have.join(", ")
                                ),
                            });
                        }
                    }
                };
                let now = now_ms();
                let mut slots = Vec::new();
                let mut not_after: Option<i64> = None;
                for r in set.current(now) {
                    slots.push(r.public_key.seal(&r.id, topic, &dek)?);
                    if let Some(at) = r.expires_at {
                        not_after = Some(not_after.map_or(at, |t| t.min(at)));
                    }
                }
                if slots.is_empty() {
                    return Err(E2eError::NoRecipients {
                        topic: topic.to_owned(),
                        detail: "every recipient entry has expired".into(),
                    });
                }
                (Source::Recipients(slots), not_after)
            }
        };
        let header = Envelope {
            nonce: [0; NONCE_LEN],
            source,
        }
        .encode()?;
        Ok(Epoch {
            aead: Arc::new(dek.aead()),
            header,
            next: 0,
            made: Instant::now(),
            not_after_ms,
            generation,
        })
    }
}

/// The nonce written in a header.
pub(crate) fn nonce_of(header: &[u8]) -> Result<[u8; NONCE_LEN], E2eError> {
    header
        .get(NONCE_AT..NONCE_AT + NONCE_LEN)
        .and_then(|n| <[u8; NONCE_LEN]>::try_from(n).ok())
        .ok_or_else(|| E2eError::malformed("too short for a nonce"))
}

impl ValueSealer for E2eSealer {
    fn seal(&self, record: &mut ProducerRecord) -> Result<(), ClientError> {
        if let Some((name, _)) = record
            .headers
            .iter()
            .find(|(n, _)| n.starts_with(RESERVED_PREFIX))
        {
            return Err(ClientError::Transform(format!(
                "cannot seal a record for {}: it already has a header named {name} \
                 (names starting with {RESERVED_PREFIX} are reserved for end-to-end encryption)",
                record.topic
            )));
        }
        let (header, value) = self
            .seal_value(&record.topic, record.key.as_deref(), &record.value)
            .map_err(|e| {
                ClientError::Transform(format!("cannot seal a record for {}: {e}", record.topic))
            })?;
        record
            .headers
            .push((HEADER.to_owned(), Bytes::from(header)));
        record.value = Bytes::from(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::{Identity, Recipient, sealed_with};

    fn body(header: &[u8]) -> Vec<u8> {
        header[super::super::header::FIXED_LEN..].to_vec()
    }

    #[test]
    fn nonces_count_up_and_the_data_key_changes_at_the_limit() {
        let sealer = E2eSealer::keyring(Keyring::generate("k").expect("keyring"), None)
            .expect("sealer")
            .with_limits(DataKeyLimits {
                max_records: 3,
                max_age: Duration::from_secs(3600),
            });
        let headers: Vec<Vec<u8>> = (0..7)
            .map(|_| sealer.seal_value("t", None, b"v").expect("seals").0)
            .collect();
        let nonces: Vec<[u8; NONCE_LEN]> = headers
            .iter()
            .map(|h| nonce_of(h).expect("nonce"))
            .collect();
        let counter = |n: &[u8; NONCE_LEN]| {
            assert_eq!(n[..4], [0, 0, 0, 0]);
            u64::from_be_bytes(n[4..].try_into().expect("8 bytes"))
        };
        let counters: Vec<u64> = nonces.iter().map(counter).collect();
        assert_eq!(counters, [0, 1, 2, 0, 1, 2, 0]);
        // Same epoch: same wrapped key; new epoch: a new one.
        assert_eq!(body(&headers[0]), body(&headers[2]));
        assert_ne!(body(&headers[2]), body(&headers[3]));
        assert_ne!(body(&headers[3]), body(&headers[6]));
        assert_ne!(body(&headers[0]), body(&headers[6]));
    }

    #[test]
    fn topics_get_their_own_data_keys() {
        let sealer =
            E2eSealer::keyring(Keyring::generate("k").expect("keyring"), None).expect("sealer");
        let a = sealer.seal_value("a", None, b"v").expect("seals").0;
        let b = sealer.seal_value("b", None, b"v").expect("seals").0;
        assert_eq!(nonce_of(&a).expect("nonce"), nonce_of(&b).expect("nonce"));
        assert_ne!(body(&a), body(&b), "a data key is never shared by topics");
    }

    #[test]
    fn age_and_key_source_changes_start_a_new_data_key() {
        let mut keyring = Keyring::generate("k").expect("keyring");
        let sealer = E2eSealer::keyring(keyring.export("k", None).expect("copy"), None)
            .expect("sealer")
            .with_limits(DataKeyLimits {
                max_records: 1000,
                max_age: Duration::ZERO,
            });
        let a = sealer.seal_value("t", None, b"v").expect("seals").0;
        let b = sealer.seal_value("t", None, b"v").expect("seals").0;
        assert_ne!(body(&a), body(&b), "max_age 0 renews every record");

        let sealer =
            E2eSealer::keyring(keyring.export("k", None).expect("copy"), None).expect("sealer");
        let first = sealer.seal_value("t", None, b"v").expect("seals").0;
        keyring.rotate("k").expect("rotates");
        sealer.set_keyring(keyring).expect("same id");
        let second = sealer.seal_value("t", None, b"v").expect("seals").0;
        assert_eq!(
            sealed_with(&first).expect("header"),
            crate::e2e::SealedWith::Keyring {
                id: "k".into(),
                version: 1
            }
        );
        assert_eq!(
            sealed_with(&second).expect("header"),
            crate::e2e::SealedWith::Keyring {
                id: "k".into(),
                version: 2
            }
        );
        assert_eq!(
            nonce_of(&second).expect("nonce"),
            [0; NONCE_LEN],
            "a new data key starts its counter at 0"
        );
        assert!(matches!(
            sealer.set_keyring(Keyring::generate("other").expect("keyring")),
            Err(E2eError::UnknownKeyId { .. })
        ));
    }

    #[test]
    fn an_expiring_recipient_is_dropped_from_the_next_data_key() {
        let bob = Identity::generate(Some("bob")).expect("bob");
        let carol = Identity::generate(Some("carol")).expect("carol");
        let soon = now_ms() + 300;
        let set = RecipientSet::from_trusted_keys(
            "t",
            vec![
                Recipient {
                    id: "bob".into(),
                    public_key: bob.public_key(),
                    expires_at: None,
                },
                Recipient {
                    id: "carol".into(),
                    public_key: carol.public_key(),
                    expires_at: Some(soon),
                },
            ],
        )
        .expect("set");
        let sealer = E2eSealer::recipients([set]).expect("sealer");
        let before = sealer.seal_value("t", None, b"v").expect("seals").0;
        let crate::e2e::SealedWith::Recipients(names) = sealed_with(&before).expect("header")
        else {
            panic!("recipients header")
        };
        assert_eq!(names.len(), 2);
        while now_ms() <= soon {
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = sealer.seal_value("t", None, b"v").expect("seals").0;
        let crate::e2e::SealedWith::Recipients(names) = sealed_with(&after).expect("header") else {
            panic!("recipients header")
        };
        assert_eq!(
            names,
            vec![("bob".to_owned(), bob.public_key().fingerprint_hex())]
        );
        assert!(matches!(
            sealer.seal_value("other", None, b"v"),
            Err(E2eError::NoRecipients { .. })
        ));
    }
}
