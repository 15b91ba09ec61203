//! The partition service: the topics served, their partitions and the
//! gateway to storage, idempotent producers, consumer groups and the
//! integrity of each partition's log.

pub mod audit_topic;
mod gateway;
pub mod groups;
pub mod integrity;
pub mod partition;
pub mod partition_watch;
pub mod producers;
pub mod topics;

use std::sync::Arc;

use groups::Groups;
use partition_watch::PartitionWatch;
use producers::ProducerEpochs;
use topics::TopicTable;

/// The partition service's state: what it serves and who produces to and
/// consumes from it.
#[derive(Debug)]
pub struct Partitions {
    /// The topics being served.
    topics: TopicTable,
    /// Consumer group memberships.
    groups: Groups,
    /// Idempotent producer ids and epochs.
    producer_epochs: ProducerEpochs,
    /// Durable ends, fenced logs, partition states and log events.
    watch: Arc<PartitionWatch>,
}

impl Partitions {
    /// The service over `topics`, with no group member and no producer yet.
    pub fn new(topics: TopicTable, watch: Arc<PartitionWatch>) -> Self {
        Self {
            topics,
            groups: Groups::new(),
            producer_epochs: ProducerEpochs::new(),
            watch,
        }
    }

    /// The topics being served.
    pub fn topics(&self) -> &TopicTable {
        &self.topics
    }

    /// Consumer group memberships.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Idempotent producer ids and epochs.
    pub fn producer_epochs(&self) -> &ProducerEpochs {
        &self.producer_epochs
    }

    /// Durable ends, fenced logs, partition states and log events.
    pub fn watch(&self) -> &Arc<PartitionWatch> {
        &self.watch
    }
}
