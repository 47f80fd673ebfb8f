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
        let log = LogStore::open(tree("raft_log")?, dir.path())?;
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

#[test]
fn openraft_storage_suite_on_fjall() {
    Suite::test_all(Builder(Backend::Fjall)).unwrap();
}

/// The suite's snapshot transfer carries no pins (its entries are blank), and
/// it hands `install_snapshot` the leader's snapshot file in place of the one
/// `begin_receiving_snapshot` gave: the same check with pins in the snapshot.
async fn transfer_with_pins(backend: Backend) {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::types::{LogBatch, LogOp, Request};
    use crate::types::{Cid, Pin, PinOptions};

    let cid = |n: u64| {
        Cid(cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).expect("identity hash"),
        ))
    };
    let open = |dir: &std::path::Path| {
        let db = store::open(dir, backend).unwrap();
        let state = PinState::new(db.tree("state").unwrap());
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let sm = StateMachine::new(
            state.clone(),
            db.tree("snapshot").unwrap(),
            dir.join(super::SNAPSHOT_DIR),
            events,
        );
        (state, sm)
    };
    let (dl, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, mut leader) = open(dl.path());
    let (follower_state, mut follower) = open(df.path());
    let pins = LogBatch(
        (0..500)
            .map(|n| {
                Request::new(LogOp::Pin(Box::new(Pin::new(
                    cid(n),
                    PinOptions::default(),
                ))))
            })
            .collect(),
    );
    leader
        .apply(vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(pins),
        }])
        .await
        .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut rx = follower.begin_receiving_snapshot().await.unwrap();
    *rx = *snap.snapshot;
    follower.install_snapshot(&snap.meta, rx).await.unwrap();
    assert_eq!(follower_state.count().unwrap(), 500);
    assert!(follower_state.has(&cid(499)).unwrap());
    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied, snap.meta.last_log_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_handed_over_whole_installs_its_pins_sled() {
    transfer_with_pins(Backend::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_handed_over_whole_installs_its_pins_redb() {
    transfer_with_pins(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_handed_over_whole_installs_its_pins_fjall() {
    transfer_with_pins(Backend::Fjall).await;
}
