//! Topic deletions in progress (`topic_deletions.v1`).
//!
//! Deleting a topic removes its entry from the store first (from then on it
//! does not exist for anyone), then shreds its files: key envelopes, then
//! data, then directories, and forgets its keys in the registry. A power
//! cut in between must not leave the envelopes behind for good: the
//! transaction that removes the topic records its id here, and the record
//! goes only once every file and registry entry of the topic is gone. A
//! broker that starts with records here finishes those deletions first.
//! Only recorded ids are ever finished this way: a directory the store
//! knows nothing about is never deleted on a guess.

use redb::TableHandle;
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::TOPIC_DELETIONS;
use super::{Batch, MetaError, MetaView, TopicEntry};

/// A topic whose deletion has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDeletion {
    /// The topic's id (its directory's name).
    pub topic_id: [u8; 16],
    /// Its name when it was deleted.
    pub name: String,
    /// How many partitions it had.
    pub partitions: u32,
    /// Whether it had its own KEK scope, to destroy with it.
    pub dedicated_kek: bool,
}

#[derive(Serialize, Deserialize)]
struct DeletionJson {
    name: String,
    partitions: u32,
    dedicated_kek: bool,
}

impl MetaView<'_> {
    /// Every topic deletion that has not finished, by topic id.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn topic_deletions(&self) -> Result<Vec<TopicDeletion>, MetaError> {
        let mut out = Vec::new();
        self.scan(TOPIC_DELETIONS, None, |id, bytes| {
            let j: DeletionJson = decode(TOPIC_DELETIONS.name(), hex::encode(id), bytes)?;
            out.push(TopicDeletion {
                topic_id: id,
                name: j.name,
                partitions: j.partitions,
                dedicated_kek: j.dedicated_kek,
            });
            Ok(true)
        })?;
        Ok(out)
    }
}

impl Batch<'_> {
    /// Records that `topic`'s files are being deleted (in the transaction
    /// that removes it from the topics table).
    pub(super) fn start_topic_deletion(&mut self, topic: &TopicEntry) -> Result<(), MetaError> {
        let value = encode(
            "topic deletion",
            &DeletionJson {
                name: topic.name.clone(),
                partitions: topic.config.partitions,
                dedicated_kek: topic.config.dedicated_kek,
            },
        )?;
        self.put(TOPIC_DELETIONS, topic.topic_id, value.as_slice())?;
        Ok(())
    }

    /// Forgets a finished topic deletion; returns whether it was recorded.
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn finish_topic_deletion(&mut self, topic_id: &[u8; 16]) -> Result<bool, MetaError> {
        self.delete(TOPIC_DELETIONS, *topic_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaStore;
    use strongbox_protocol::model::{Durability, TopicConfig};

    #[test]
    fn deleting_a_topic_records_it_until_finished() {
        let meta = MetaStore::in_memory().expect("meta");
        let entry = TopicEntry {
            name: "orders".into(),
            topic_id: [9; 16],
            created_at: 1,
            config: TopicConfig {
                partitions: 3,
                durability: Durability::Fsync,
                retention_ms: None,
                retention_bytes: None,
                segment_bytes: None,
                segment_ms: None,
                dedicated_kek: true,
            },
        };
        meta.write(|b| b.create_topic(&entry)).expect("create");
        assert!(meta.read(|r| r.topic_deletions()).expect("read").is_empty());
        meta.write(|b| b.delete_topic("orders")).expect("delete");
        let pending = meta.read(|r| r.topic_deletions()).expect("read");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].topic_id, [9; 16]);
        assert_eq!(pending[0].name, "orders");
        assert_eq!(pending[0].partitions, 3);
        assert!(pending[0].dedicated_kek);
        assert!(
            meta.write(|b| b.finish_topic_deletion(&[9; 16]))
                .expect("finish")
        );
        assert!(
            !meta
                .write(|b| b.finish_topic_deletion(&[9; 16]))
                .expect("again")
        );
        assert!(meta.read(|r| r.topic_deletions()).expect("read").is_empty());
    }
}
