//! openraft's own storage test suite (`openraft::testing::Suite`) run on the
//! log store and state machine over every store backend a peer can use.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::types::{NodeId, TypeConfig};
use crate::state::PinState;
use crate::store::{self, Backend};

/// Builds a fresh log store and state machine in a temporary folder, laid out
/// as `Consensus::start` lays out a raft folder.
struct Builder(Backend);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        let db = store::open(dir.path(), self.0).map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        let tree = |name: &str| -> Result<Arc<dyn store::Tree>, StorageError<NodeId>> {
            db.tree(name).map_err(|e| {
                StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
            })
        };
        let log = LogStore::new(tree("raft_log")?);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let sm = StateMachine::new(
            PinState::new(tree("state")?),
            tree("snapshot")?,
            dir.path().join(super::SNAPSHOT_DIR),
            events,
        );
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_on_sled() {
    Suite::test_all(Builder(Backend::Sled)).unwrap();
}

#[test]
fn openraft_storage_suite_on_redb() {
    Suite::test_all(Builder(Backend::Redb)).unwrap();
}
