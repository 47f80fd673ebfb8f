//! The thread that writes the Raft log: appends in the order they were made,
//! synced in groups, each append's flush reported to openraft when its sync
//! is done.
//!
//! An append returns as soon as it is queued, so that the leader's core goes
//! on to replicate the entries while they are written and synced here (see
//! vendor/openraft/PATCHES.md); a follower's core still waits for the flush
//! before it answers. Appends queued while a sync runs share the next one.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use openraft::storage::LogFlushed;

use super::log_file::{LogFile, Unsynced};
use super::types::TypeConfig;

/// The writer thread has stopped: no write is taken any more; the peer's log
/// cannot go on (give up).
#[derive(Debug, thiserror::Error)]
#[error("the raft log writer has stopped")]
pub struct WriterGone;

enum Op {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// Runs on the thread once every op before it is written and synced.
    Run(Box<dyn FnOnce() + Send>),
}

/// A handle on the writer thread of one log; the thread ends once every
/// handle is dropped and what they queued is done, and the last handle's drop
/// waits for that: a peer opened again on the same files finds them settled.
#[derive(Clone)]
pub struct LogWriter {
    // Dropped before `_thread`: the last handle's drop ends the queue, then
    // joins.
    tx: Sender<Op>,
    _thread: Arc<Joined>,
    /// While set, the thread holds back its syncs (tests of who waits for them).
    #[cfg(test)]
    held: Arc<std::sync::atomic::AtomicBool>,
}

/// Joins the writer thread when dropped, unless dropped on that thread (by
/// a queued op holding the last handle).
struct Joined(Option<std::thread::JoinHandle<()>>);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(t) = self.0.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl LogWriter {
    /// Starts the writer thread of `log`.
    pub fn start(log: Arc<LogFile>) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        #[cfg(test)]
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut group = Group {
            #[cfg(test)]
            held: held.clone(),
            ..Group::default()
        };
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&log, &rx, &mut group))?;
        Ok(LogWriter {
            tx,
            _thread: Arc::new(Joined(Some(thread))),
            #[cfg(test)]
            held,
        })
    }

    /// Queues `batch` (index, payload) after everything queued before;
    /// `flushed` hears when it is on the disk, or why it is not.
    pub fn append(
        &self,
        batch: Vec<(u64, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    ) -> Result<(), WriterGone> {
        self.tx
            .send(Op::Append(batch, flushed))
            .map_err(|_| WriterGone)
    }

    /// Holds back every sync until called again with `false` (tests only).
    #[cfg(test)]
    pub fn hold_syncs(&self, hold: bool) {
        self.held.store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs `f` on the writer thread once every write queued before is on
    /// the disk: a truncate or purge in order with the appends, or a barrier
    /// before reading the files.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WriterGone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Op::Run(Box::new(move || {
                let _ = tx.send(f());
            })))
            .map_err(|_| WriterGone)?;
        rx.await.map_err(|_| WriterGone)
    }
}

fn write_loop(log: &LogFile, rx: &Receiver<Op>, group: &mut Group) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Append(batch, flushed) => group.write(log, &batch, flushed),
                Op::Run(f) => {
                    group.sync();
                    f();
                }
            }
            next = rx.try_recv().ok();
        }
        group.sync();
    }
}

/// Appends written and not yet synced.
#[derive(Default)]
struct Group {
    /// The newest write: its sync covers the others.
    last: Option<Unsynced>,
    waiting: Vec<LogFlushed<TypeConfig>>,
    /// A write of this group failed: the later ones would leave a gap.
    failed: Option<String>,
    #[cfg(test)]
    held: Arc<std::sync::atomic::AtomicBool>,
}

impl Group {
    fn write(&mut self, log: &LogFile, batch: &[(u64, Vec<u8>)], flushed: LogFlushed<TypeConfig>) {
        if let Some(why) = &self.failed {
            flushed.log_io_completed(Err(std::io::Error::other(why.clone())));
            return;
        }
        match log.write(batch) {
            Ok(unsynced) => {
                self.last = Some(unsynced);
                self.waiting.push(flushed);
            }
            Err(e) => {
                let why = e.to_string();
                flushed.log_io_completed(Err(std::io::Error::other(why.clone())));
                self.failed = Some(why);
            }
        }
    }

    /// Syncs what the group wrote and reports it to each append's waiter.
    fn sync(&mut self) {
        #[cfg(test)]
        while self.held.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let synced = self.last.take().map_or(Ok(()), Unsynced::sync);
        for flushed in self.waiting.drain(..) {
            flushed.log_io_completed(match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            });
        }
        self.failed = None;
    }
}
