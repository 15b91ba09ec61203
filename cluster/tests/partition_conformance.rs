//! openraft's storage conformance suite on a partition group's storage:
//! the log store and the state machine over a real `RaftLog` (encrypted
//! segments, keys from a real key manager), each case on a fresh
//! directory.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use strongbox_cluster::partition::{PartitionConfig, PartitionLogStore, PartitionStateMachine};
use strongbox_storage::keys::{FileKeyProvider, KekScope, KeyManager};
use strongbox_storage::log::raft::RaftLog;
use strongbox_storage::log::{LogConfig, LogEnv};
use strongbox_storage::meta::MetaStore;

struct Builder;

impl StoreBuilder<PartitionConfig, PartitionLogStore, PartitionStateMachine, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<
        (tempfile::TempDir, PartitionLogStore, PartitionStateMachine),
        StorageError<PartitionConfig>,
    > {
        let dir = tempfile::tempdir().expect("tempdir");
        let provider = FileKeyProvider::open(dir.path().join("keys")).expect("key provider");
        let meta = MetaStore::open(dir.path().join("meta.redb")).expect("meta store");
        let keys = Arc::new(KeyManager::new(Arc::new(provider), meta, 64));
        let log = RaftLog::open(
            dir.path().join("orders-0"),
            LogConfig::new([7; 16], 0, KekScope::Broker),
            keys,
            LogEnv::default(),
        )
        .expect("raft log");
        let log = Arc::new(log);
        let sm = PartitionStateMachine::open(Arc::clone(&log)).expect("state machine");
        Ok((dir, PartitionLogStore::new(log), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_the_partition_log()
-> Result<(), StorageError<PartitionConfig>> {
    Suite::test_all(Builder).await
}
