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
