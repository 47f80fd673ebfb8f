//! The Raft folder of a stopped peer: `ipfs-cluster-service state export`,
//! `state import` and `state cleanup`, and the backups of old raft folders.
//!
//! An import writes a store as a new cluster's would look once its first entry
//! (the membership, which `initialize` puts at the default log ID) had been
//! applied and compacted into a snapshot holding the imported pins. Peers that
//! import the same file therefore agree on the log up to that point, and the
//! first leader they elect carries on from there.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;

use openraft::{LogId, Membership};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::types::{ClusterNode, NodeId};
use crate::config::{Config, ConfigError, ExecutionLock, Identity, RAFT_DIR};
use crate::state::PinState;
use crate::store::{self, Backend, StoreError};
use crate::types::Pin;

/// Why a state command failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The peer is running, or the config folder cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the input or writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A pin of the input does not decode.
    #[error("pin {index} of the input (line {line}, column {column}): {reason}")]
    BadPin {
        /// 1-based position in the input.
        index: u64,
        /// 1-based line of the input where decoding stopped.
        line: u64,
        /// 1-based column (byte) of that line.
        column: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The Raft data is unreadable, or cannot be written.
    #[error("raft data: {0}")]
    Raft(String),
}

/// Changes applied to every imported pin (upstream's `state import` flags).
#[derive(Debug, Clone, Default)]
pub struct ImportOverrides {
    /// Replaces each pin's minimum replication when not 0.
    pub replication_min: i32,
    /// Replaces each pin's maximum replication when not 0.
    pub replication_max: i32,
    /// Replaces each pin's allocations when not empty.
    pub allocations: Vec<String>,
}

impl ImportOverrides {
    fn apply(&self, pin: &mut Pin) {
        if self.replication_min != 0 {
            pin.options.replication_factor_min = self.replication_min;
        }
        if self.replication_max != 0 {
            pin.options.replication_factor_max = self.replication_max;
        }
        if !self.allocations.is_empty() {
            pin.allocations = self.allocations.clone();
        }
    }
}

/// The state machine and the log of the store in `raft_dir` (with nobody to
/// tell of changes).
fn open_raft_store(
    raft_dir: &Path,
    backend: Backend,
) -> Result<(StateMachine, LogStore), OfflineError> {
    let db = store::open(raft_dir, backend)?;
    let (events, _) = tokio::sync::broadcast::channel(1);
    let sm = StateMachine::new(
        PinState::new(db.tree("state")?),
        db.tree("snapshot")?,
        raft_dir.join(super::SNAPSHOT_DIR),
        events,
    );
    let log = LogStore::open(db.tree("raft_log")?, raft_dir)
        .map_err(|e| OfflineError::Raft(e.to_string()))?;
    Ok((sm, log))
}

/// Writes the pinset this stopped peer last applied to `out`, one pin JSON per
/// line (upstream's export format). Returns how many pins.
pub fn export(dir: &Path, cfg: &Config, out: &mut dyn Write) -> Result<u64, OfflineError> {
    let _lock = ExecutionLock::acquire(dir)?;
    let raft_dir = dir.join(RAFT_DIR);
    if !raft_dir.exists() {
        return Ok(0);
    }
    let db = store::open(
        &raft_dir,
        store::choose(&raft_dir, cfg.consensus.raft.datastore),
    )?;
    let state = PinState::new(db.tree("state")?);
    let mut n = 0;
    for pin in state.list() {
        let pin = pin.map_err(|e| OfflineError::Raft(e.to_string()))?;
        serde_json::to_writer(&mut *out, &pin).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Replaces this stopped peer's state with the pins read from `input` (JSON
/// objects, one after another, as `export` writes them; pretty-printed and
/// partial objects are fine). The old raft folder is kept as a backup. The
/// voters stay those of the old Raft data, or are this peer and `init_peerset`
/// for a peer that has none. Returns how many pins.
pub fn import(
    dir: &Path,
    cfg: &Config,
    identity: &Identity,
    input: &mut dyn BufRead,
    overrides: &ImportOverrides,
) -> Result<u64, OfflineError> {
    let _lock = ExecutionLock::acquire(dir)?;
    let raft_dir = dir.join(RAFT_DIR);
    let backend = store::choose(&raft_dir, cfg.consensus.raft.datastore);
    let old_members = if raft_dir.exists() {
        open_raft_store(&raft_dir, backend)?
            .0
            .membership()
            .map_err(|e| OfflineError::Raft(e.to_string()))?
    } else {
        None
    };
    let membership = match old_members {
        Some(m) => m,
        None => {
            let me = ClusterNode {
                peer_id: identity.peer_id.to_string(),
                addr: String::new(),
                name: cfg.cluster.peername.clone(),
            };
            let members = super::initial_members(&me, &cfg.consensus.raft.init_peerset)
                .map_err(|e| OfflineError::Raft(e.to_string()))?;
            let voters: BTreeSet<NodeId> = members.keys().copied().collect();
            Membership::new(vec![voters], members)
        }
    };
    // The new store is written aside, so that a bad input changes nothing.
    let staging = staging_dir(dir)?;
    let (sm, log) = open_raft_store(staging.path(), backend)?;
    let mut bad = None;
    let pins = PinStream::new(input).map_while(|p| match p {
        Ok(mut pin) => {
            overrides.apply(&mut pin);
            Some(pin)
        }
        Err(e) => {
            bad = Some(e);
            None
        }
    });
    let log_id = LogId::<NodeId>::default();
    let n = sm
        .seed(log_id, membership, pins)
        .map_err(OfflineError::Raft)?;
    if let Some(e) = bad {
        return Err(e);
    }
    log.seed(log_id)
        .map_err(|e| OfflineError::Raft(e.to_string()))?;
    drop((sm, log));
    backup_raft_dir(dir, cfg.consensus.raft.backups_rotate)?;
    std::fs::rename(staging.keep(), &raft_dir)?;
    // The rename made durable: a crash from here on finds the new folder.
    std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    Ok(n)
}

/// The pins of an export, read a chunk at a time: JSON objects one after
/// another (one per line, pretty-printed, or run together). Parsing slices of a
/// buffer is several times faster than serde_json's byte-at-a-time reader, and
/// memory stays at one chunk (or one pin, if larger).
struct PinStream<'a> {
    input: &'a mut dyn BufRead,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    index: u64,
    /// The 1-based line of the input at `pos`.
    line: u64,
    /// Bytes from the start of that line to `pos`.
    column: u64,
    /// Set after an error: the input cannot be resynchronised.
    failed: bool,
}

/// How much more input is read when the buffer holds no whole pin.
const CHUNK: usize = 1 << 20;

impl<'a> PinStream<'a> {
    fn new(input: &'a mut dyn BufRead) -> Self {
        PinStream {
            input,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            index: 0,
            line: 1,
            column: 0,
            failed: false,
        }
    }

    /// Moves past a parsed pin to `end`, keeping count of lines.
    fn advance(&mut self, end: usize) {
        let parsed = &self.buf[self.pos..end];
        match parsed.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                self.line += parsed.iter().filter(|&&b| b == b'\n').count() as u64;
                self.column = (parsed.len() - last - 1) as u64;
            }
            None => self.column += parsed.len() as u64,
        }
        self.pos = end;
    }

    /// The error for the pin after `pos`, placed in the whole input (serde_json
    /// places it in the slice it was given).
    fn bad_pin(&self, e: &serde_json::Error) -> OfflineError {
        let (line, column) = match e.line() {
            0 => (self.line, self.column + 1),
            1 => (self.line, self.column + e.column() as u64),
            l => (self.line + l as u64 - 1, e.column() as u64),
        };
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let reason = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        OfflineError::BadPin {
            index: self.index + 1,
            line,
            column,
            reason,
        }
    }

    /// Drops what was parsed and appends up to [`CHUNK`] more bytes.
    fn refill(&mut self) -> std::io::Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let start = self.buf.len();
        self.buf.resize(start + CHUNK, 0);
        let mut filled = start;
        while filled < self.buf.len() {
            match self.input.read(&mut self.buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(filled);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(filled);
        Ok(())
    }
}

impl Iterator for PinStream<'_> {
    type Item = Result<Pin, OfflineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&self.buf[self.pos..]).into_iter::<Pin>();
            let incomplete = match values.next() {
                Some(Ok(pin)) => {
                    let end = self.pos + values.byte_offset();
                    self.advance(end);
                    self.index += 1;
                    return Some(Ok(pin));
                }
                Some(Err(e)) if e.is_eof() && !self.eof => true,
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(self.bad_pin(&e)));
                }
                None => !self.eof,
            };
            if !incomplete {
                return None;
            }
            if let Err(e) = self.refill() {
                self.failed = true;
                return Some(Err(e.into()));
            }
        }
    }
}

/// A folder inside `dir` for the new store, removed unless kept.
fn staging_dir(dir: &Path) -> Result<StagingDir, OfflineError> {
    let path = dir.join(format!("{RAFT_DIR}.import"));
    if path.exists() {
        std::fs::remove_dir_all(&path)?;
    }
    std::fs::create_dir_all(&path)?;
    Ok(StagingDir(Some(path)))
}

/// A folder removed on drop unless [`StagingDir::keep`] took it.
struct StagingDir(Option<std::path::PathBuf>);

impl StagingDir {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) -> std::path::PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Moves this stopped peer's raft folder aside (`state cleanup`): its next start
/// is a new peer's, which bootstraps or joins with `--bootstrap`. Returns
/// whether there was a folder.
pub fn cleanup(dir: &Path, cfg: &Config) -> Result<bool, OfflineError> {
    let _lock = ExecutionLock::acquire(dir)?;
    let existed = dir.join(RAFT_DIR).exists();
    backup_raft_dir(dir, cfg.consensus.raft.backups_rotate)?;
    Ok(existed)
}

/// Moves the raft folder aside as `raft.old.0`, keeping `keep` older ones
/// (`raft.old.1`, …), so that the peer's next start is clean.
pub fn backup_raft_dir(dir: &Path, keep: u32) -> std::io::Result<()> {
    let raft = dir.join(RAFT_DIR);
    if !raft.exists() {
        return Ok(());
    }
    let name = |n: u32| dir.join(format!("{RAFT_DIR}.old.{n}"));
    let keep = keep.max(1);
    let _ = std::fs::remove_dir_all(name(keep - 1));
    for n in (0..keep - 1).rev() {
        if name(n).exists() {
            std::fs::rename(name(n), name(n + 1))?;
        }
    }
    std::fs::rename(&raft, name(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Cid, PinOptions};

    fn cid(n: u64) -> Cid {
        crate::types::Cid(cid::Cid::new_v1(
            0x55,
            cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).unwrap(),
        ))
    }

    fn read_all(input: &[u8]) -> Vec<Result<Pin, OfflineError>> {
        let mut r = std::io::BufReader::with_capacity(4096, input);
        PinStream::new(&mut r).collect()
    }

    #[test]
    fn pins_stream_across_chunks_in_every_layout() {
        // Several chunks' worth, one per line, then pretty-printed, then run together.
        let mut input = Vec::new();
        let n = 12_000u64;
        for i in 0..n {
            let pin = Pin::new(cid(i), PinOptions::default());
            match i % 3 {
                0 => {
                    serde_json::to_writer(&mut input, &pin).unwrap();
                    input.push(b'\n');
                }
                1 => serde_json::to_writer_pretty(&mut input, &pin).unwrap(),
                _ => serde_json::to_writer(&mut input, &pin).unwrap(),
            }
        }
        input.extend_from_slice(b"\n  \n");
        assert!(input.len() > 2 * CHUNK);
        let pins = read_all(&input);
        assert_eq!(pins.len() as u64, n);
        for (i, p) in pins.into_iter().enumerate() {
            assert_eq!(p.unwrap().cid, cid(i as u64));
        }
        assert!(read_all(b"").is_empty());
        assert!(read_all(b" \n ").is_empty());
    }

    #[test]
    fn a_bad_or_truncated_pin_is_named_by_its_position() {
        let good = serde_json::to_string(&Pin::new(cid(1), PinOptions::default())).unwrap();
        let input = format!("{good}\n{good}\n{{\"cid\": 5}}\n{good}");
        let pins = read_all(input.as_bytes());
        assert_eq!(pins.len(), 3);
        assert!(matches!(
            pins[2],
            Err(OfflineError::BadPin {
                index: 3,
                line: 3,
                column: 9,
                ..
            })
        ));
        let msg = pins[2].as_ref().err().unwrap().to_string();
        assert_eq!(
            msg,
            "pin 3 of the input (line 3, column 9): invalid type: integer `5`, \
             expected a CID string or a {\"/\": \"<cid>\"} link"
        );
        // Pretty-printed: the line of the bad value, deep in the input.
        let pretty =
            serde_json::to_string_pretty(&Pin::new(cid(1), PinOptions::default())).unwrap();
        let lines = pretty.lines().count() as u64;
        let input = format!(
            "{pretty}\n{pretty}\n{}",
            pretty.replace("\"name\": \"\"", "\"name\": 7")
        );
        let name_line = pretty.lines().position(|l| l.contains("\"name\"")).unwrap() as u64 + 1;
        let pins = read_all(input.as_bytes());
        match &pins[2] {
            Err(OfflineError::BadPin { index, line, .. }) => {
                assert_eq!((*index, *line), (3, 2 * lines + name_line));
            }
            other => panic!("{other:?}"),
        }
        let truncated = format!("{good}\n{}", &good[..good.len() / 2]);
        let pins = read_all(truncated.as_bytes());
        assert!(matches!(
            pins[1],
            Err(OfflineError::BadPin { index: 2, .. })
        ));
    }
}
