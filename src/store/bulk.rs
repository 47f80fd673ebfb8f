//! Bulk loading of a tree too large to sort in memory (`state import`).
//!
//! Both backends write keys in ascending order several times faster than in
//! the order an export lists them (redb about 5x at a million pins), so the
//! entries are sorted first: in runs of bounded size, sorted and spilled to
//! files by a worker thread while the caller still produces entries, then
//! merged into the tree in key order. Memory stays at about two runs however
//! large the input is.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::{StoreError, Tree};

/// Entries handed to the worker at once.
const CHUNK: usize = 4096;
/// Chunks queued for the worker before the producer waits.
const QUEUED_CHUNKS: usize = 8;
/// Entries per write batch while merging into the tree (large batches are
/// several times faster per entry on redb).
const WRITE_BATCH: usize = 128 * 1024;

fn io_err(what: &str, e: std::io::Error) -> StoreError {
    StoreError(format!("bulk load, {what}: {e}"))
}

/// Sorts key-value pairs (a later pair with the same key replaces an earlier
/// one) and writes them to a tree in key order; see the module documentation.
pub struct SortedLoad {
    tx: Option<SyncSender<Vec<Pair>>>,
    chunk: Vec<Pair>,
    worker: Option<JoinHandle<Result<Runs, StoreError>>>,
}

/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);
/// Sees each pair as it is written.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;
/// Sorted pairs read back from one run.
type Pairs = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>>;

/// What the worker leaves: spilled runs (oldest first) and the last run, in memory.
struct Runs {
    files: Vec<PathBuf>,
    last: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SortedLoad {
    /// Starts a load whose runs hold up to `run_bytes` of keys and values each,
    /// spilling into new files in the folder `spill_dir` (the caller removes it).
    pub fn start(spill_dir: &Path, run_bytes: usize) -> Self {
        let (tx, rx) = sync_channel(QUEUED_CHUNKS);
        let dir = spill_dir.to_path_buf();
        let worker = std::thread::Builder::new()
            .name("bulk-sort".into())
            .spawn(move || sort_runs(rx, &dir, run_bytes.max(1)));
        match worker {
            Ok(w) => SortedLoad {
                tx: Some(tx),
                chunk: Vec::with_capacity(CHUNK),
                worker: Some(w),
            },
            // No worker: `finish` reports it.
            Err(_) => SortedLoad {
                tx: None,
                chunk: Vec::new(),
                worker: None,
            },
        }
    }

    /// Adds a pair. Fails only when the worker already failed (its error comes
    /// from [`Self::finish`]).
    pub fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.chunk.push((key, value));
        if self.chunk.len() >= CHUNK {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), StoreError> {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        match &self.tx {
            Some(tx) if tx.send(chunk).is_ok() => Ok(()),
            _ => Err(StoreError("bulk load: the sorting thread stopped".into())),
        }
    }

    /// Writes every pair to `tree` in key order, each passed to `visit` first
    /// (in the same order); returns how many distinct keys were written. Not
    /// flushed: the caller makes the tree durable.
    pub fn finish(
        mut self,
        tree: &Arc<dyn Tree>,
        visit: &mut Visit<'_>,
    ) -> Result<u64, StoreError> {
        let sent = if self.chunk.is_empty() {
            Ok(())
        } else {
            self.send()
        };
        self.tx = None;
        let runs = match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => {
                return Err(StoreError("bulk load: the sorting thread panicked".into()));
            }
            None => return Err(StoreError("bulk load: no sorting thread".into())),
        };
        sent?;
        let mut sources: Vec<Pairs> = Vec::with_capacity(runs.files.len() + 1);
        for f in &runs.files {
            sources.push(Box::new(RunReader::open(f)?));
        }
        sources.push(Box::new(runs.last.into_iter().map(Ok)));
        // The heap orders by key, then by the newest run first: of pairs with
        // the same key the newest comes out first and the others are skipped.
        let mut heap = BinaryHeap::new();
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(e) = s.next() {
                let (k, v) = e?;
                heap.push(Reverse((k, Reverse(i), v)));
            }
        }
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(WRITE_BATCH);
        let mut written = 0u64;
        // The last key written before the current batch (the batch's own last
        // key otherwise): a copy per batch, not per entry.
        let mut last_key: Option<Vec<u8>> = None;
        while let Some(Reverse((k, Reverse(i), v))) = heap.pop() {
            if let Some(e) = sources[i].next() {
                let (nk, nv) = e?;
                heap.push(Reverse((nk, Reverse(i), nv)));
            }
            let last = batch.last().map(|(k, _)| k).or(last_key.as_ref());
            if last == Some(&k) {
                continue;
            }
            visit(&k, &v)?;
            batch.push((k, Some(v)));
            written += 1;
            if batch.len() == WRITE_BATCH {
                last_key = batch.last().map(|(k, _)| k.clone());
                tree.apply(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(WRITE_BATCH),
                ))?;
            }
        }
        if !batch.is_empty() {
            tree.apply(batch)?;
        }
        for f in &runs.files {
            let _ = std::fs::remove_file(f);
        }
        Ok(written)
    }
}

impl Drop for SortedLoad {
    fn drop(&mut self) {
        // An abandoned load: let the worker see the end of its input and stop.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Sorts a run by key, keeping only the last pair of each key (a stable sort
/// keeps the input order among equal keys).
fn sort_run(run: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    run.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(run.len());
    for e in run.drain(..) {
        match out.last_mut() {
            Some(prev) if prev.0 == e.0 => *prev = e,
            _ => out.push(e),
        }
    }
    *run = out;
}

/// The worker: collects runs, spilling each full one sorted into a file.
fn sort_runs(rx: Receiver<Vec<Pair>>, dir: &Path, run_bytes: usize) -> Result<Runs, StoreError> {
    let mut files = Vec::new();
    let mut run: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0usize;
    for chunk in rx {
        for (k, v) in chunk {
            bytes += k.len() + v.len() + 48;
            run.push((k, v));
        }
        if bytes >= run_bytes {
            sort_run(&mut run);
            let path = dir.join(format!("run-{}.sort", files.len()));
            write_run(&path, &run)?;
            files.push(path);
            run.clear();
            bytes = 0;
        }
    }
    sort_run(&mut run);
    Ok(Runs { files, last: run })
}

fn write_run(path: &Path, run: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
    let f = File::create(path).map_err(|e| io_err("creating a run file", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    for (k, v) in run {
        let lens = [
            (k.len() as u32).to_le_bytes(),
            (v.len() as u32).to_le_bytes(),
        ];
        w.write_all(&lens[0])
            .and_then(|_| w.write_all(&lens[1]))
            .and_then(|_| w.write_all(k))
            .and_then(|_| w.write_all(v))
            .map_err(|e| io_err("writing a run file", e))?;
    }
    // Not synced: a run file only lives until the load ends.
    w.flush().map_err(|e| io_err("writing a run file", e))
}

/// The pairs of a spilled run, read back in order.
struct RunReader {
    r: BufReader<File>,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let f = File::open(path).map_err(|e| io_err("opening a run file", e))?;
        Ok(RunReader {
            r: BufReader::with_capacity(1 << 20, f),
        })
    }

    fn read_pair(&mut self) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut lens = [0u8; 8];
        match self.r.read_exact(&mut lens) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let kl = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]) as usize;
        let vl = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]) as usize;
        let mut k = vec![0u8; kl];
        let mut v = vec![0u8; vl];
        self.r.read_exact(&mut k)?;
        self.r.read_exact(&mut v)?;
        Ok(Some((k, v)))
    }
}

impl Iterator for RunReader {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_pair()
            .map_err(|e| io_err("reading a run file", e))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, open};

    /// Runs spilled and merged give every key once, the last value pushed for
    /// it, in key order, on both backends.
    #[test]
    fn spilled_runs_merge_in_order_and_the_last_value_wins() {
        for backend in [Backend::Sled, Backend::Redb, Backend::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("db")).unwrap();
            let store = open(&dir.path().join("db"), backend).unwrap();
            let tree = store.tree("t").unwrap();
            let spill = dir.path().join("spill");
            std::fs::create_dir_all(&spill).unwrap();
            // Small runs: many files.
            let mut load = SortedLoad::start(&spill, 2000);
            let n = 10_000u32;
            for i in 0..n {
                // Keys out of order; every 7th key comes again later with a new value.
                let k = (i.wrapping_mul(2_654_435_761) % 5000)
                    .to_be_bytes()
                    .to_vec();
                load.push(k, i.to_be_bytes().to_vec()).unwrap();
            }
            let mut seen = Vec::new();
            let written = load
                .finish(&tree, &mut |k, _| {
                    seen.push(k.to_vec());
                    Ok(())
                })
                .unwrap();
            let mut expected = std::collections::BTreeMap::new();
            for i in 0..n {
                let k = (i.wrapping_mul(2_654_435_761) % 5000)
                    .to_be_bytes()
                    .to_vec();
                expected.insert(k, i.to_be_bytes().to_vec());
            }
            assert_eq!(written as usize, expected.len());
            assert_eq!(seen, expected.keys().cloned().collect::<Vec<_>>());
            let stored: Vec<_> = tree.range(b"", None).map(|r| r.unwrap()).collect();
            assert_eq!(stored, expected.into_iter().collect::<Vec<_>>());
            // The run files are gone.
            assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
        }
    }
}
