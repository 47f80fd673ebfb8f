//! Writes answered by the apply itself, on whichever peer they were asked.
//!
//! openraft answers `client_write` from its core once the state machine task
//! reports back: the apply's blocking thread wakes the state machine task, which
//! wakes the core, which wakes the writer — three hand-offs after the work is
//! done, each a wake-up on a busy machine. A follower's forwarded batch waits
//! for the leader's reply, which comes after the leader's own apply and a trip
//! back, while this peer applies the same entry on its own. A writer may
//! register its batch here; the state machine then hands that entry's outcomes
//! over straight from the blocking thread, once the state is written, and the
//! writer takes whichever answer comes first. All say the same: an applied
//! entry is committed, and every peer's apply computes the same outcomes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::types::{ApplyResult, LogBatch, Request, RequestId};

/// Writers waiting for their entries' outcomes, by the first request's ID.
#[derive(Default)]
pub struct ApplyWaiters {
    waiting: Mutex<HashMap<RequestId, Waiter>>,
    next_token: AtomicU64,
}

struct Waiter {
    token: u64,
    /// The entry's request IDs: a retry may put the first ID at the head of
    /// another entry, whose outcomes are not this one's.
    ids: Vec<Option<RequestId>>,
    tx: oneshot::Sender<ApplyResult>,
}

/// A writer's place in [`ApplyWaiters`]; dropping it gives the place up.
pub struct Registration {
    waiters: Arc<ApplyWaiters>,
    key: RequestId,
    token: u64,
    /// The entry's outcomes, once applied.
    pub rx: oneshot::Receiver<ApplyResult>,
}

impl ApplyWaiters {
    /// Waits for `batch`'s outcomes; `None` when its first request has no ID,
    /// or another writer already waits for an entry that begins with it (a
    /// retry): those writers have only openraft's answer.
    pub fn register(self: &Arc<Self>, batch: &LogBatch) -> Option<Registration> {
        let key = batch.0.first()?.id?;
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut waiting = crate::sync::lock(&self.waiting);
        if waiting.contains_key(&key) {
            return None;
        }
        let ids = batch.0.iter().map(|r| r.id).collect();
        waiting.insert(key, Waiter { token, ids, tx });
        Some(Registration {
            waiters: self.clone(),
            key,
            token,
            rx,
        })
    }

    /// The writer waiting for the entry of `requests`, if one is.
    pub fn take(&self, requests: &[Request]) -> Option<oneshot::Sender<ApplyResult>> {
        let key = requests.first()?.id?;
        let mut waiting = crate::sync::lock(&self.waiting);
        let w = waiting.get(&key)?;
        if !requests.iter().map(|r| r.id).eq(w.ids.iter().copied()) {
            return None;
        }
        waiting.remove(&key).map(|w| w.tx)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = crate::sync::lock(&self.waiters.waiting);
        if waiting
            .get(&self.key)
            .is_some_and(|w| w.token == self.token)
        {
            waiting.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogOp;
    use crate::raft::types::Committed;

    fn req(id: Option<RequestId>, n: u64) -> Request {
        let cid = crate::types::Cid(cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).unwrap(),
        ));
        Request {
            id,
            op: LogOp::Unpin(cid),
            expect: Vec::new(),
        }
    }

    fn result() -> ApplyResult {
        ApplyResult {
            outcomes: vec![Committed {
                outcome: crate::raft::Outcome::Applied { existed: true },
                index: 7,
            }],
        }
    }

    #[tokio::test]
    async fn the_entry_a_writer_registered_reaches_it() {
        let w = Arc::new(ApplyWaiters::default());
        let batch = LogBatch(vec![req(Some(10), 1), req(Some(11), 2)]);
        let mut reg = w.register(&batch).unwrap();
        w.take(&batch.0).unwrap().send(result()).unwrap();
        assert_eq!((&mut reg.rx).await.unwrap(), result());
        assert!(w.take(&batch.0).is_none(), "taken once");
    }

    #[test]
    fn another_entry_that_begins_with_the_same_id_is_not_the_writers() {
        let w = Arc::new(ApplyWaiters::default());
        let batch = LogBatch(vec![req(Some(10), 1), req(Some(11), 2)]);
        let _reg = w.register(&batch).unwrap();
        assert!(w.take(&[req(Some(10), 1)]).is_none());
        assert!(w.take(&[req(Some(10), 1), req(Some(12), 2)]).is_none());
        assert!(w.take(&batch.0).is_some());
    }

    #[test]
    fn a_second_writer_of_the_same_first_id_and_unnumbered_entries_are_not_registered() {
        let w = Arc::new(ApplyWaiters::default());
        let batch = LogBatch(vec![req(Some(10), 1)]);
        let reg = w.register(&batch).unwrap();
        assert!(w.register(&batch).is_none());
        assert!(w.register(&LogBatch(vec![req(None, 1)])).is_none());
        assert!(w.register(&LogBatch(vec![])).is_none());
        drop(reg);
        assert!(w.take(&batch.0).is_none(), "given up on drop");
        let again = w.register(&batch);
        assert!(again.is_some(), "the place is free again");
    }

    #[test]
    fn an_old_registration_dropped_late_leaves_the_new_one_in_place() {
        let w = Arc::new(ApplyWaiters::default());
        let batch = LogBatch(vec![req(Some(10), 1)]);
        let old = w.register(&batch).unwrap();
        let tx = w.take(&batch.0).unwrap();
        let _new = w.register(&batch).unwrap();
        drop(old);
        drop(tx);
        assert!(w.take(&batch.0).is_some());
    }
}
