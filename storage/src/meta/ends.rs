//! The durable end of every partition (`partition_ends.v1`): the offset
//! after the last record the partition is known to have made durable, as
//! the broker recorded it (at segment roll, at a bounded interval, at a
//! clean stop, after an operator accepted a loss).
//!
//! At open the broker compares each log with its record: a log that ends
//! before it was cut short or replaced by an older copy, and writing to it
//! would hand out acknowledged offsets a second time. The record only ever
//! moves forward; it goes with the topic.

use redb::TableHandle;
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::tables::PARTITION_ENDS;
use super::{Batch, MetaError, MetaView};

/// A partition's recorded durable end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionEnd {
    /// Offset after the last record known durable.
    pub durable_end: u64,
    /// When it was last raised, ms since the Unix epoch.
    pub updated_at: i64,
}

#[derive(Serialize, Deserialize)]
struct EndJson {
    durable_end: u64,
    updated_at: i64,
}

impl MetaView<'_> {
    /// The recorded durable end of a partition, if one was recorded.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn partition_end(
        &self,
        topic_id: &[u8; 16],
        partition: u32,
    ) -> Result<Option<PartitionEnd>, MetaError> {
        let Some(bytes) = self.get_with(PARTITION_ENDS, (*topic_id, partition), <[u8]>::to_vec)?
        else {
            return Ok(None);
        };
        let key = format_args!("({}, {partition})", hex::encode(topic_id));
        let j: EndJson = decode(PARTITION_ENDS.name(), key, &bytes)?;
        Ok(Some(PartitionEnd {
            durable_end: j.durable_end,
            updated_at: j.updated_at,
        }))
    }

    /// The recorded durable ends of a topic's partitions, by partition.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn partition_ends(
        &self,
        topic_id: &[u8; 16],
    ) -> Result<Vec<(u32, PartitionEnd)>, MetaError> {
        let mut out = Vec::new();
        self.scan(PARTITION_ENDS, Some((*topic_id, 0)), |(t, p), bytes| {
            if t != *topic_id {
                return Ok(false);
            }
            let key = format_args!("({}, {p})", hex::encode(t));
            let j: EndJson = decode(PARTITION_ENDS.name(), key, bytes)?;
            out.push((
                p,
                PartitionEnd {
                    durable_end: j.durable_end,
                    updated_at: j.updated_at,
                },
            ));
            Ok(true)
        })?;
        Ok(out)
    }
}

impl Batch<'_> {
    /// Raises a partition's recorded durable end to `durable_end`; a lower
    /// value changes nothing (the record never goes back). Returns the
    /// record as it is now.
    ///
    /// # Errors
    ///
    /// [`MetaError::Corrupt`]; [`MetaError::Db`].
    pub fn raise_partition_end(
        &mut self,
        topic_id: &[u8; 16],
        partition: u32,
        durable_end: u64,
        now_ms: i64,
    ) -> Result<PartitionEnd, MetaError> {
        if let Some(old) = self.partition_end(topic_id, partition)?
            && old.durable_end >= durable_end
        {
            return Ok(old);
        }
        let value = encode(
            "partition end",
            &EndJson {
                durable_end,
                updated_at: now_ms,
            },
        )?;
        self.put(PARTITION_ENDS, (*topic_id, partition), value.as_slice())?;
        Ok(PartitionEnd {
            durable_end,
            updated_at: now_ms,
        })
    }

    /// Forgets the records of a topic's partitions (the topic is deleted).
    ///
    /// # Errors
    ///
    /// [`MetaError::Db`].
    pub fn remove_partition_ends(&mut self, topic_id: &[u8; 16]) -> Result<(), MetaError> {
        let mut partitions = Vec::new();
        self.scan(PARTITION_ENDS, Some((*topic_id, 0)), |(t, p), _| {
            if t != *topic_id {
                return Ok(false);
            }
            partitions.push(p);
            Ok(true)
        })?;
        for p in partitions {
            self.delete(PARTITION_ENDS, (*topic_id, p))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::meta::MetaStore;

    #[test]
    fn only_moves_forward_and_goes_with_the_topic() {
        let meta = MetaStore::in_memory().expect("meta");
        let t = [5u8; 16];
        let other = [6u8; 16];
        assert_eq!(meta.read(|r| r.partition_end(&t, 0)).expect("read"), None);
        meta.write(|b| {
            b.raise_partition_end(&t, 0, 100, 1)?;
            b.raise_partition_end(&t, 1, 7, 1)?;
            b.raise_partition_end(&other, 0, 9, 1)
        })
        .expect("write");
        let lowered = meta
            .write(|b| b.raise_partition_end(&t, 0, 50, 2))
            .expect("write");
        assert_eq!(lowered.durable_end, 100, "never goes back");
        let raised = meta
            .write(|b| b.raise_partition_end(&t, 0, 150, 3))
            .expect("write");
        assert_eq!((raised.durable_end, raised.updated_at), (150, 3));
        let ends = meta.read(|r| r.partition_ends(&t)).expect("read");
        assert_eq!(
            ends.iter()
                .map(|(p, e)| (*p, e.durable_end))
                .collect::<Vec<_>>(),
            vec![(0, 150), (1, 7)]
        );
        meta.write(|b| b.remove_partition_ends(&t)).expect("remove");
        assert!(
            meta.read(|r| r.partition_ends(&t))
                .expect("read")
                .is_empty()
        );
        assert_eq!(
            meta.read(|r| r.partition_end(&other, 0))
                .expect("read")
                .map(|e| e.durable_end),
            Some(9),
            "other topics keep theirs"
        );
    }
}
