//! Topics, consumer-group offsets, producer ids and the recipient
//! directory.

use bytes::Bytes;
use redb::TableHandle;
use serde::{Deserialize, Serialize};
use strongbox_protocol::model::{Durability, RecipientEntry, TopicConfig, TopicInfo};

use super::codec::{corrupt, decode, encode, hex_array};
use super::tables::{GROUP_OFFSETS, PRODUCERS, RECIPIENTS, TOPICS};
use super::{Batch, MetaError, MetaView};

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEntry {
    /// Its name.
    pub name: String,
    /// 128-bit id, never reused.
    pub topic_id: [u8; 16],
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Its configuration.
    pub config: TopicConfig,
}

impl TopicEntry {
    /// The topic as the admin protocol describes it (without partitions).
    pub fn to_info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            topic_id: self.topic_id,
            created_at: self.created_at,
            config: self.config.clone(),
            partitions: Vec::new(),
        }
    }
}

/// A producer id: its current epoch and the principal it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerRecord {
    /// Current epoch; older epochs are fenced, newer ones were never issued.
    pub epoch: u16,
    /// When it last changed, in milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// The principal that obtained the id through `InitProducer`: the only
    /// one that may write with it or bump its epoch. `None` for an id stored
    /// before ids were bound to principals; nobody may use such an id (its
    /// holder asks for a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct TopicJson {
    #[serde(with = "hex_array")]
    topic_id: [u8; 16],
    created_at: i64,
    config: ConfigJson,
}

#[derive(Serialize, Deserialize)]
struct ConfigJson {
    partitions: u32,
    durability: DurabilityJson,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_bytes: Option<u64>,
    segment_ms: Option<u64>,
    dedicated_kek: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
enum DurabilityJson {
    Fsync,
    Interval { interval_ms: u32 },
    None,
}

impl TopicJson {
    fn from_entry(e: &TopicEntry) -> Self {
        let c = &e.config;
        Self {
            topic_id: e.topic_id,
            created_at: e.created_at,
            config: ConfigJson {
                partitions: c.partitions,
                durability: match c.durability {
                    Durability::Fsync => DurabilityJson::Fsync,
                    Durability::Interval { interval_ms } => {
                        DurabilityJson::Interval { interval_ms }
                    }
                    Durability::None => DurabilityJson::None,
                },
                retention_ms: c.retention_ms,
                retention_bytes: c.retention_bytes,
                segment_bytes: c.segment_bytes,
                segment_ms: c.segment_ms,
                dedicated_kek: c.dedicated_kek,
            },
        }
    }

    fn into_entry(self, name: &str) -> Result<TopicEntry, MetaError> {
        let c = self.config;
        if c.partitions == 0 {
            return Err(corrupt(TOPICS.name(), name, "zero partitions"));
        }
        let durability = match c.durability {
            DurabilityJson::Fsync => Durability::Fsync,
            DurabilityJson::Interval { interval_ms: 0 } => {
                return Err(corrupt(TOPICS.name(), name, "durability interval of 0 ms"));
            }
            DurabilityJson::Interval { interval_ms } => Durability::Interval { interval_ms },
            DurabilityJson::None => Durability::None,
        };
        Ok(TopicEntry {
            name: name.to_owned(),
            topic_id: self.topic_id,
            created_at: self.created_at,
            config: TopicConfig {
                partitions: c.partitions,
                durability,
                retention_ms: c.retention_ms,
                retention_bytes: c.retention_bytes,
                segment_bytes: c.segment_bytes,
                segment_ms: c.segment_ms,
                dedicated_kek: c.dedicated_kek,
            },
        })
    }
}

impl MetaView<'_> {
    /// The topic `name`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn topic(&self, name: &str) -> Result<Option<TopicEntry>, MetaError> {
        match self.get_with(TOPICS, name, <[u8]>::to_vec)? {
            Some(bytes) => decode::<TopicJson>(TOPICS.name(), name, &bytes)?
                .into_entry(name)
                .map(Some),
            None => Ok(None),
        }
    }

    /// Every topic, by name.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn topics(&self) -> Result<Vec<TopicEntry>, MetaError> {
        let mut out = Vec::new();
        self.scan(TOPICS, None, |name, bytes| {
            out.push(decode::<TopicJson>(TOPICS.name(), name, bytes)?.into_entry(name)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The topic whose id is `topic_id`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn topic_by_id(&self, topic_id: &[u8; 16]) -> Result<Option<TopicEntry>, MetaError> {
        Ok(self.topics()?.into_iter().find(|t| &t.topic_id == topic_id))
    }

    /// The offset `group` committed for a partition.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, MetaError> {
        self.get_with(GROUP_OFFSETS, (group, topic, partition), |v| v)
    }

    /// Every offset `group` committed: (topic, partition, offset).
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn group_offsets(&self, group: &str) -> Result<Vec<(String, u32, u64)>, MetaError> {
        let mut out = Vec::new();
        self.scan(GROUP_OFFSETS, Some((group, "", 0)), |(g, t, p), off| {
            if g != group {
                return Ok(false);
            }
            out.push((t.to_owned(), p, off));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every consumer group with a committed offset.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn groups(&self) -> Result<Vec<String>, MetaError> {
        let mut out: Vec<String> = Vec::new();
        self.scan(GROUP_OFFSETS, None, |(g, _, _), _| {
            if out.last().map(String::as_str) != Some(g) {
                out.push(g.to_owned());
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The producer `producer_id`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn producer(&self, producer_id: u64) -> Result<Option<ProducerRecord>, MetaError> {
        self.get_with(PRODUCERS, producer_id, <[u8]>::to_vec)?
            .map(|b| decode(PRODUCERS.name(), producer_id, &b))
            .transpose()
    }

    /// The recipient directory of `topic`, by recipient.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn recipients(&self, topic: &str) -> Result<Vec<RecipientEntry>, MetaError> {
        let mut out = Vec::new();
        self.scan(RECIPIENTS, Some((topic, "")), |(t, r), entry| {
            if t != topic {
                return Ok(false);
            }
            out.push(RecipientEntry {
                recipient: r.to_owned(),
                entry: Bytes::copy_from_slice(entry),
            });
            Ok(true)
        })?;
        Ok(out)
    }

    /// One recipient entry of `topic`.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn recipient(&self, topic: &str, recipient: &str) -> Result<Option<Bytes>, MetaError> {
        self.get_with(RECIPIENTS, (topic, recipient), Bytes::copy_from_slice)
    }
}

impl Batch<'_> {
    /// Adds a topic.
    ///
    /// # Errors
    ///
    /// [`MetaError::TopicExists`]; [`MetaError::Db`].
    pub fn create_topic(&mut self, topic: &TopicEntry) -> Result<(), MetaError> {
        if self
            .get_with(TOPICS, topic.name.as_str(), |_| ())?
            .is_some()
        {
            return Err(MetaError::TopicExists(topic.name.clone()));
        }
        let value = encode("topic", &TopicJson::from_entry(topic))?;
        self.put(TOPICS, topic.name.as_str(), value.as_slice())?;
        Ok(())
    }

    /// Removes a topic with its group offsets, recipients, partition
    /// assignments and recorded durable ends, and records its deletion as started
    /// ([`super::TopicDeletion`]) until its files are gone; returns it when
    /// it existed. (ACL rules are patterns and stay; a dedicated KEK is
    /// destroyed through the key manager.)
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn delete_topic(&mut self, name: &str) -> Result<Option<TopicEntry>, MetaError> {
        let Some(topic) = self.topic(name)? else {
            return Ok(None);
        };
        self.delete(TOPICS, name)?;
        self.remove_partition_ends(&topic.topic_id)?;
        self.remove_partition_assignments(&topic.topic_id)?;
        self.start_topic_deletion(&topic)?;

        let mut offsets = Vec::new();
        self.scan(GROUP_OFFSETS, None, |(g, t, p), _| {
            if t == name {
                offsets.push((g.to_owned(), p));
            }
            Ok(true)
        })?;
        for (g, p) in offsets {
            self.delete(GROUP_OFFSETS, (g.as_str(), name, p))?;
        }

        for r in self.recipients(name)? {
            self.delete(RECIPIENTS, (name, r.recipient.as_str()))?;
        }
        Ok(Some(topic))
    }

    /// Records the offset `group` committed for a partition.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn commit_offset(
        &mut self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), MetaError> {
        self.put(GROUP_OFFSETS, (group, topic, partition), offset)?;
        Ok(())
    }

    /// Forgets every offset of `group`; returns how many there were.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn delete_group(&mut self, group: &str) -> Result<usize, MetaError> {
        let offsets = self.group_offsets(group)?;
        for (t, p, _) in &offsets {
            self.delete(GROUP_OFFSETS, (group, t.as_str(), *p))?;
        }
        Ok(offsets.len())
    }

    /// Hands out a new producer id (from 1; never reused).
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn allocate_producer_id(&mut self) -> Result<u64, MetaError> {
        self.next_id("producer_id")
    }

    /// Stores a producer's epoch.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_producer(
        &mut self,
        producer_id: u64,
        record: &ProducerRecord,
    ) -> Result<(), MetaError> {
        let value = encode("producer", record)?;
        self.put(PRODUCERS, producer_id, value.as_slice())?;
        Ok(())
    }

    /// Forgets a producer id's record.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn remove_producer(&mut self, producer_id: u64) -> Result<bool, MetaError> {
        self.delete(PRODUCERS, producer_id)
    }

    /// Stores a signed recipient entry for `topic`; returns true when it
    /// replaced one.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn put_recipient(
        &mut self,
        topic: &str,
        recipient: &str,
        entry: &[u8],
    ) -> Result<bool, MetaError> {
        self.put(RECIPIENTS, (topic, recipient), entry)
    }

    /// Removes a recipient of `topic`; returns true when it was there.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn remove_recipient(&mut self, topic: &str, recipient: &str) -> Result<bool, MetaError> {
        self.delete(RECIPIENTS, (topic, recipient))
    }
}

#[cfg(test)]
mod producer_record_tests {
    use super::ProducerRecord;
    use crate::meta::codec::{decode, encode};

    #[test]
    fn the_owner_round_trips_and_records_without_one_still_decode() {
        let owned = ProducerRecord {
            epoch: 4,
            updated_at: 9,
            principal: Some("spiffe://prod/payments".into()),
        };
        let bytes = encode("producer", &owned).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"epoch":4,"updated_at":9,"principal":"spiffe://prod/payments"}"#
        );
        assert_eq!(
            decode::<ProducerRecord>("producers.v1", 1, &bytes).unwrap(),
            owned
        );
        // The layout of records written before the binding existed.
        let legacy: ProducerRecord =
            decode("producers.v1", 1, br#"{"epoch":2,"updated_at":3}"#).unwrap();
        assert_eq!(legacy.principal, None);
        assert_eq!(legacy.epoch, 2);
    }
}
