//! The Raft state machine: applies [`LogOp`]s to the pinset, records how far the log
//! was applied in the same atomic batch, builds and installs snapshots, and tells the
//! pin tracker what changed.

use std::io::{BufRead, Cursor};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, Membership, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::types::{ApplyResult, ClusterNode, LogOp, NodeId, TypeConfig};
use crate::state::PinState;
use crate::store::Tree;
use crate::types::{Cid, Pin};

const APPLIED_KEY: &[u8] = b"m/applied";
const MEMBERSHIP_KEY: &[u8] = b"m/membership";
const SNAPSHOT_META_KEY: &[u8] = b"snapshot/meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot/data";

/// A change of the pinset, as the tracker needs to hear of it.
#[derive(Debug, Clone)]
pub enum StateEvent {
    /// A pin was added or updated.
    Pinned(Box<Pin>),
    /// A pin was removed.
    Unpinned(Cid),
    /// The whole pinset was replaced by a snapshot: resynchronise.
    Reset,
    /// Every change up to this log index has been announced.
    Applied(u64),
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn read_sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

/// The last applied log ID and membership.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>);

/// The pinset state machine of one peer.
#[derive(Clone)]
pub struct StateMachine {
    state: PinState,
    snapshots: Arc<dyn Tree>,
    events: broadcast::Sender<StateEvent>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, ClusterNode>,
}

impl StateMachine {
    /// A state machine over `state`, keeping snapshots in `snapshots`.
    pub fn new(
        state: PinState,
        snapshots: Arc<dyn Tree>,
        events: broadcast::Sender<StateEvent>,
    ) -> Self {
        StateMachine {
            state,
            snapshots,
            events,
        }
    }

    fn read_meta(&self) -> Result<AppliedState, StorageError<NodeId>> {
        let tree = self.state.tree();
        let applied = match tree.get(APPLIED_KEY).map_err(read_sm_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(read_sm_err)?,
            None => None,
        };
        let membership = match tree.get(MEMBERSHIP_KEY).map_err(read_sm_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(read_sm_err)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// The membership this peer last applied, if it ever applied one.
    pub fn membership(
        &self,
    ) -> Result<Option<Membership<NodeId, ClusterNode>>, StorageError<NodeId>> {
        let (_, stored) = self.read_meta()?;
        let m = stored.membership();
        Ok((m.voter_ids().next().is_some()).then(|| m.clone()))
    }

    /// Fills an empty store with `pins` alone, applied and snapshotted at
    /// `log_id` with `membership` (`state import`). Returns how many pins the
    /// pinset holds then.
    pub fn seed(
        &self,
        log_id: LogId<NodeId>,
        membership: Membership<NodeId, ClusterNode>,
        pins: impl Iterator<Item = Pin>,
    ) -> Result<u64, String> {
        const BATCH: usize = 10_000;
        let tree = self.state.tree();
        let mut data = Vec::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut n = 0u64;
        for pin in pins {
            serde_json::to_writer(&mut data, &pin).map_err(|e| e.to_string())?;
            data.push(b'\n');
            batch.push(PinState::add_entry(&pin).map_err(|e| e.to_string())?);
            n += 1;
            if batch.len() == BATCH {
                tree.apply(std::mem::take(&mut batch))
                    .map_err(|e| e.to_string())?;
            }
        }
        let stored = StoredMembership::new(Some(log_id), membership);
        batch.push((
            APPLIED_KEY.to_vec(),
            Some(serde_json::to_vec(&Some(log_id)).map_err(|e| e.to_string())?),
        ));
        batch.push((
            MEMBERSHIP_KEY.to_vec(),
            Some(serde_json::to_vec(&stored).map_err(|e| e.to_string())?),
        ));
        tree.apply(batch).map_err(|e| e.to_string())?;
        tree.flush().map_err(|e| e.to_string())?;
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: stored,
            snapshot_id: format!("import-{n}"),
        };
        self.store_snapshot(&meta, &data)
            .map_err(|e| e.to_string())?;
        // The input may name a CID twice; the pinset holds it once.
        self.state.count().map_err(|e| e.to_string())
    }

    async fn notify(&self, events: Vec<StateEvent>) {
        // Never waits: a tracker that lags behind is told so and catches up from the state.
        for e in events {
            let _ = self.events.send(e);
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // Meta and pins must be read consistently: apply() runs on the same
            // openraft task that calls us, so nothing is applied meanwhile.
            let (last_log_id, last_membership) = this.read_meta()?;
            let mut data = Vec::new();
            for pin in this.state.list() {
                serde_json::to_writer(&mut data, &pin.map_err(read_sm_err)?)
                    .map_err(read_sm_err)?;
                data.push(b'\n');
            }
            let snapshot_id = match &last_log_id {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
                None => format!("0-0-{}", rand::random::<u32>()),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            this.store_snapshot(&meta, &data)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
        .map_err(sm_err)?
    }
}

impl StateMachine {
    fn store_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let m = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() }).map_err(sm_err)?;
        self.snapshots
            .apply(vec![
                (SNAPSHOT_META_KEY.to_vec(), Some(m)),
                (SNAPSHOT_DATA_KEY.to_vec(), Some(data.to_vec())),
            ])
            .map_err(sm_err)?;
        self.snapshots.flush().map_err(sm_err)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError<NodeId>> {
        self.read_meta()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let this = self.clone();
        let (results, events) = tokio::task::spawn_blocking(move || {
            let mut results = Vec::with_capacity(entries.len());
            let mut events = Vec::new();
            let mut batch = Vec::new();
            // Entries of one batch may touch the same CID: track what earlier
            // entries did so `existed` reflects the log order, not the store.
            let mut pending: std::collections::HashMap<Cid, bool> = Default::default();
            let mut last = None;
            let mut membership = None;
            for entry in entries {
                last = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(ApplyResult::default()),
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        results.push(ApplyResult::default());
                    }
                    EntryPayload::Normal(LogOp::Pin(pin)) => {
                        let existed = match pending.get(&pin.cid) {
                            Some(e) => *e,
                            None => this.state.has(&pin.cid).map_err(read_sm_err)?,
                        };
                        pending.insert(pin.cid, true);
                        batch.push(PinState::add_entry(&pin).map_err(sm_err)?);
                        results.push(ApplyResult { existed });
                        events.push(StateEvent::Pinned(pin));
                    }
                    EntryPayload::Normal(LogOp::Unpin(cid)) => {
                        let existed = match pending.get(&cid) {
                            Some(e) => *e,
                            None => this.state.has(&cid).map_err(read_sm_err)?,
                        };
                        pending.insert(cid, false);
                        batch.push(PinState::rm_entry(&cid));
                        results.push(ApplyResult { existed });
                        if existed {
                            events.push(StateEvent::Unpinned(cid));
                        }
                    }
                }
            }
            batch.push((
                APPLIED_KEY.to_vec(),
                Some(serde_json::to_vec(&last).map_err(sm_err)?),
            ));
            if let Some(m) = membership {
                batch.push((
                    MEMBERSHIP_KEY.to_vec(),
                    Some(serde_json::to_vec(&m).map_err(sm_err)?),
                ));
            }
            if let Some(l) = last {
                events.push(StateEvent::Applied(l.index));
            }
            let tree = this.state.tree();
            tree.apply(batch).map_err(sm_err)?;
            tree.flush().map_err(sm_err)?;
            Ok::<_, StorageError<NodeId>>((results, events))
        })
        .await
        .map_err(sm_err)??;
        self.notify(events).await;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let this = self.clone();
        let owned_meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let meta = owned_meta;
            let data = snapshot.into_inner();
            let mut batch = this.state.clear_entries().map_err(sm_err)?;
            for line in Cursor::new(&data).lines() {
                let line = line.map_err(sm_err)?;
                if line.trim().is_empty() {
                    continue;
                }
                let pin: Pin = serde_json::from_str(&line).map_err(sm_err)?;
                batch.push(PinState::add_entry(&pin).map_err(sm_err)?);
            }
            batch.push((
                APPLIED_KEY.to_vec(),
                Some(serde_json::to_vec(&meta.last_log_id).map_err(sm_err)?),
            ));
            batch.push((
                MEMBERSHIP_KEY.to_vec(),
                Some(serde_json::to_vec(&meta.last_membership).map_err(sm_err)?),
            ));
            let tree = this.state.tree();
            tree.apply(batch).map_err(sm_err)?;
            tree.flush().map_err(sm_err)?;
            this.store_snapshot(&meta, &data)
        })
        .await
        .map_err(sm_err)??;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.notify(vec![StateEvent::Reset, StateEvent::Applied(index)])
            .await;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let meta = self.snapshots.get(SNAPSHOT_META_KEY).map_err(read_sm_err)?;
        let data = self.snapshots.get(SNAPSHOT_DATA_KEY).map_err(read_sm_err)?;
        match (meta, data) {
            (Some(m), Some(d)) => {
                let m: StoredSnapshotMeta = serde_json::from_slice(&m).map_err(read_sm_err)?;
                Ok(Some(Snapshot {
                    meta: m.meta,
                    snapshot: Box::new(Cursor::new(d)),
                }))
            }
            _ => Ok(None),
        }
    }
}
