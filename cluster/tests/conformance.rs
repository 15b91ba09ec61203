//! openraft's storage conformance suite on our log store and state machine,
//! each case on a fresh directory with real redb files.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use strongbox_cluster::{MetaLogStore, MetaStateMachine, TypeConfig};
use strongbox_storage::meta::MetaStore;

struct Builder;

impl StoreBuilder<TypeConfig, MetaLogStore, MetaStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, MetaLogStore, MetaStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let raft = strongbox_cluster::raft_dir(dir.path());
        let log = MetaLogStore::open(&raft).expect("log store");
        let meta = MetaStore::open(dir.path().join("meta.redb")).expect("meta store");
        let sm = MetaStateMachine::open(meta, &raft).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
