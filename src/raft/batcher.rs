//! Group commit: writes that arrive together share one Raft entry.
//!
//! Every peer runs one batcher. A write waits in its queue only while the peer
//! already has `in_flight` batches on their way; the next batch then takes
//! everything that queued meanwhile. An idle peer therefore sends a lone write at
//! once (no timer), and a busy one sends fewer, larger entries: one append, one
//! replication round and one fsync per batch instead of per write. Followers'
//! batches go to the leader as one forward, where the leader's batcher merges them
//! with its own writes.
//!
//! The writes a peer's own clients asked for get consecutive request IDs in
//! each batch (a forwarded batch keeps the IDs its sender gave, which its
//! retries carry again): the state machine keeps one record for a run of
//! consecutive IDs instead of one per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::types::{Request, new_run_base};
use super::{Committed, ConsensusError};

/// How a batch is committed: one answer per request, in order.
pub type SubmitFn = Arc<
    dyn Fn(
            Vec<Request>,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<Committed>, ConsensusError>> + Send>>
        + Send
        + Sync,
>;

struct Job {
    ops: Vec<Request>,
    /// Asked for at this peer: its requests are numbered with the batch's run.
    local: bool,
    reply: oneshot::Sender<Result<Vec<Committed>, ConsensusError>>,
}

/// The queue of writes waiting to be committed together.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    stop: CancellationToken,
}

impl Batcher {
    /// Starts the batching task: at most `in_flight` batches at once, each of at
    /// most about `max_ops` requests (a larger group is never split). The task
    /// ends on [`Self::stop`] or when the batcher is dropped.
    pub fn start(submit: SubmitFn, in_flight: usize, max_ops: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(16 * 1024);
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                // Wait for a free slot first: whatever queues meanwhile joins the
                // next batch.
                let slot = tokio::select! {
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    _ = cancel.cancelled() => return,
                };
                let first = tokio::select! {
                    j = rx.recv() => j,
                    _ = cancel.cancelled() => None,
                };
                let Some(first) = first else { return };
                let mut n = first.ops.len();
                let mut jobs = vec![first];
                while n < max_ops {
                    match rx.try_recv() {
                        Ok(j) => {
                            n += j.ops.len();
                            jobs.push(j);
                        }
                        Err(_) => break,
                    }
                }
                let submit = submit.clone();
                // Owned by the in-flight batch: it ends when its commit does
                // (bounded by the submit's own wait for a leader).
                tokio::spawn(async move {
                    let _slot = slot;
                    let mut ops = Vec::with_capacity(n);
                    let mut waiters = Vec::with_capacity(jobs.len());
                    // Numbered once, before the first attempt: a retry of this
                    // batch carries the same IDs.
                    let mut next_id = None;
                    for j in jobs {
                        waiters.push((j.ops.len(), j.reply));
                        let first = ops.len();
                        ops.extend(j.ops);
                        if j.local {
                            let id = next_id.get_or_insert_with(new_run_base);
                            for r in ops[first..].iter_mut().filter(|r| r.id.is_some()) {
                                r.id = Some(*id);
                                *id += 1;
                            }
                        }
                    }
                    match submit(ops).await {
                        Ok(results) if results.len() == n => {
                            let mut results = results.into_iter();
                            for (len, reply) in waiters {
                                // A waiter that gave up is no reason to stop.
                                let _ = reply.send(Ok(results.by_ref().take(len).collect()));
                            }
                        }
                        Ok(results) => {
                            let e = ConsensusError::Raft(format!(
                                "a batch of {n} writes got {} results",
                                results.len()
                            ));
                            for (_, reply) in waiters {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for (_, reply) in waiters {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Batcher { tx, stop }
    }

    /// Commits `ops`, asked for at this peer, together with whatever else is
    /// queued; one answer per request, in order. Requests that carry an ID get
    /// a new one, consecutive with the others of the batch.
    pub async fn commit(&self, ops: Vec<Request>) -> Result<Vec<Committed>, ConsensusError> {
        self.queue(ops, true).await
    }

    /// [`Self::commit`] of another peer's batch: its requests keep their IDs.
    pub async fn commit_forwarded(
        &self,
        ops: Vec<Request>,
    ) -> Result<Vec<Committed>, ConsensusError> {
        self.queue(ops, false).await
    }

    async fn queue(
        &self,
        ops: Vec<Request>,
        local: bool,
    ) -> Result<Vec<Committed>, ConsensusError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { ops, local, reply })
            .await
            .map_err(|_| ConsensusError::ShuttingDown)?;
        rx.await.map_err(|_| ConsensusError::ShuttingDown)?
    }

    /// Stops taking batches; queued writes fail with [`ConsensusError::ShuttingDown`].
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{LogOp, Outcome};
    use crate::types::Cid;
    use std::sync::Mutex;
    use std::time::Duration;

    fn cid(n: u32) -> Cid {
        crate::types::Cid(cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).unwrap(),
        ))
    }

    fn unpin(n: u32) -> Request {
        Request::new(LogOp::Unpin(cid(n)))
    }

    /// A fake commit: each batch is one "entry"; `existed` is true for odd CIDs.
    fn recording(sizes: Arc<Mutex<Vec<usize>>>, fail: Arc<Mutex<bool>>) -> SubmitFn {
        let index = Arc::new(Mutex::new(0u64));
        Arc::new(move |ops: Vec<Request>| {
            let (sizes, fail, index) = (sizes.clone(), fail.clone(), index.clone());
            Box::pin(async move {
                // Long enough that concurrent writers queue behind the first batch.
                tokio::time::sleep(Duration::from_millis(20)).await;
                sizes.lock().unwrap().push(ops.len());
                if *fail.lock().unwrap() {
                    return Err(ConsensusError::Raft("disk on fire".into()));
                }
                let i = {
                    let mut i = index.lock().unwrap();
                    *i += 1;
                    *i
                };
                Ok(ops
                    .iter()
                    .map(|r| match &r.op {
                        LogOp::Unpin(c) => Committed {
                            outcome: Outcome::Applied {
                                existed: c.0.hash().digest()[3] % 2 == 1,
                            },
                            index: i,
                        },
                        LogOp::Pin(_) => Committed {
                            outcome: Outcome::Applied { existed: false },
                            index: i,
                        },
                    })
                    .collect())
            })
        })
    }

    #[tokio::test]
    async fn concurrent_writers_share_batches_and_get_their_own_results() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(false));
        let b = Arc::new(Batcher::start(recording(sizes.clone(), fail), 1, 1000));
        let mut writers = Vec::new();
        for n in 0..200u32 {
            let b = b.clone();
            writers.push(tokio::spawn(async move {
                let r = b.commit(vec![unpin(n)]).await.unwrap();
                (n, r)
            }));
        }
        for w in writers {
            let (n, r) = w.await.unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!(
                r[0].existed(),
                n % 2 == 1,
                "writer {n} got another's result"
            );
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        // One slot: the first batch goes alone, the rest queue behind it.
        assert!(sizes.len() < 20, "{} batches: {sizes:?}", sizes.len());
        // A group of several requests gets its answers in order.
        let r = b.commit(vec![unpin(1), unpin(2), unpin(3)]).await.unwrap();
        assert_eq!(
            r.iter().map(|c| c.existed()).collect::<Vec<_>>(),
            vec![true, false, true]
        );
    }

    /// The requests asked for at this peer get consecutive IDs in each batch
    /// (the state machine records a run at once); another peer's batch keeps
    /// its IDs, and a request without one stays without.
    #[tokio::test]
    async fn a_batch_numbers_its_own_requests_and_keeps_forwarded_ids() {
        let batches: Arc<Mutex<Vec<Vec<Option<u128>>>>> = Arc::default();
        let seen = batches.clone();
        let submit: SubmitFn = Arc::new(move |ops: Vec<Request>| {
            let seen = seen.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                seen.lock()
                    .unwrap()
                    .push(ops.iter().map(|r| r.id).collect());
                Ok(ops
                    .iter()
                    .map(|_| Committed {
                        outcome: Outcome::Applied { existed: false },
                        index: 1,
                    })
                    .collect())
            })
        });
        let b = Arc::new(Batcher::start(submit, 1, 1000));
        // The first batch holds the only slot while the others queue.
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.commit(vec![unpin(0)]).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut forwarded = vec![unpin(1), unpin(2)];
        forwarded[0].id = Some(7);
        forwarded[1].id = Some(8);
        let mut anonymous = unpin(3);
        anonymous.id = None;
        let mut waiting = Vec::new();
        for job in [
            (vec![unpin(4)], true),
            (forwarded, false),
            (vec![unpin(5), anonymous, unpin(6)], true),
            (vec![unpin(7)], true),
        ] {
            let b = b.clone();
            waiting.push(tokio::spawn(async move {
                match job {
                    (ops, true) => b.commit(ops).await,
                    (ops, false) => b.commit_forwarded(ops).await,
                }
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first.await.unwrap().unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        let ids = &batches[1];
        assert_eq!(ids.len(), 7);
        assert_eq!((ids[1], ids[2], ids[4]), (Some(7), Some(8), None));
        let own: Vec<u128> = [ids[0], ids[3], ids[5], ids[6]]
            .iter()
            .map(|id| id.unwrap())
            .collect();
        assert!(own.windows(2).all(|w| w[1] == w[0] + 1), "{own:?}");
        // A batch starts a run of its own.
        assert_ne!(batches[0][0].map(|id| id + 1), Some(own[0]));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_waiter() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(true));
        let b = Arc::new(Batcher::start(
            recording(sizes.clone(), fail.clone()),
            2,
            1000,
        ));
        let mut writers = Vec::new();
        for n in 0..50u32 {
            let b = b.clone();
            writers.push(tokio::spawn(async move { b.commit(vec![unpin(n)]).await }));
        }
        for w in writers {
            let e = w.await.unwrap().unwrap_err();
            assert!(
                matches!(e, ConsensusError::Raft(ref m) if m == "disk on fire"),
                "{e}"
            );
        }
        assert!(sizes.lock().unwrap().len() < 50);
        // The batcher keeps working after a failure.
        *fail.lock().unwrap() = false;
        assert_eq!(b.commit(vec![unpin(7)]).await.unwrap().len(), 1);
        b.stop();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(matches!(
            b.commit(vec![unpin(8)]).await,
            Err(ConsensusError::ShuttingDown)
        ));
    }
}
