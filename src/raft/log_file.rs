//! The Raft log as append-only segment files: an append is one `write` and one
//! `fdatasync`, where a B-tree store pays a whole transaction commit (page
//! allocation, checksums, copy-on-write of the pages it touches) per entry.
//!
//! A folder holds segments named by the index of their first entry. A segment
//! starts with a header (magic and format version); each record is the entry's
//! index, its length, a CRC-32 of both and the payload. Opening reads every
//! segment, checks each record and cuts a torn tail (a crash in the middle of
//! an append) at the last whole record. Purged entries are dropped a segment at
//! a time; the purge floor itself is kept by the caller.
//!
//! The segment taking appends keeps [`ROOM`] bytes of zeros (a sparse extension)
//! past its last record, so that an append writes inside the file: its
//! `fdatasync` then writes the data only, not the inode's new size as well,
//! which on this ext4 took an append's sync from ~73 to ~103 us alone and from
//! ~150 to ~205 us with three peers syncing at once. The room is extended when an
//! append reaches it, and cut off when the segment is closed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The first bytes of every segment: a magic and the format version.
const HEADER: [u8; 8] = *b"ICRLOG\x00\x01";
/// Bytes before each record's payload: index (8), length (4), CRC-32 (4).
const RECORD_HEAD: usize = 16;
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Zeros kept past the last segment's records, for the appends to come: one
/// file-size change every few thousand appends, and little to read at open.
const ROOM: u64 = 4 << 20;
/// A record larger than this is corrupt (no Raft entry is that large).
const MAX_RECORD: u32 = 1 << 30;

/// What went wrong with the log files.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// Reading or writing a segment failed; the caller may retry or give up.
    #[error("raft log {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A segment holds something other than whole records in index order
    /// before its last one: not a crash's torn tail; the peer must not go on.
    #[error("raft log {path}: {what}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An append that does not follow the last entry and is not after a purge
    /// of everything before it: a bug in the caller.
    #[error("raft log: entry {got} appended after {last:?}")]
    OutOfOrder {
        /// The index appended.
        got: u64,
        /// The last index held.
        last: Option<u64>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogFileError + '_ {
    move |source| LogFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    first: u64,
    /// Offset of each entry's record, the entry at `first + i` at `offsets[i]`.
    offsets: Vec<u64>,
    /// Bytes of whole records (and the header).
    len: u64,
    /// The file's size: `len` and the room after it.
    size: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }

    /// Where the record of `index` starts and ends.
    fn span(&self, index: u64) -> Option<(u64, u64)> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        let start = *self.offsets.get(i)?;
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.len);
        Some((start, end))
    }
}

struct Inner {
    /// By first index; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
}

/// A write of [`LogFile::write`] that may not be on the disk yet.
#[must_use = "entries are durable only once synced"]
pub struct Unsynced(Option<(Arc<File>, PathBuf)>);

impl Unsynced {
    /// Waits until the write, and every write before it, is on the disk.
    pub fn sync(self) -> Result<(), LogFileError> {
        match self.0 {
            Some((file, path)) => file.sync_data().map_err(io_err(&path)),
            None => Ok(()),
        }
    }
}

/// The Raft log's entries, as opaque payloads by index.
pub struct LogFile {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Past this size a segment is closed.
    segment_bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_be_bytes());
    h.update(&(payload.len() as u32).to_be_bytes());
    h.update(payload);
    h.finalize()
}

/// The whole, intact record at byte `at` of `bytes`: its index and payload.
/// `None` for a short, oversized or damaged one.
fn parse_record(bytes: &[u8], at: usize) -> Option<(u64, &[u8])> {
    let h = bytes.get(at..at.checked_add(RECORD_HEAD)?)?;
    let index = u64::from_be_bytes(h[0..8].try_into().ok()?);
    let len = u32::from_be_bytes(h[8..12].try_into().ok()?);
    let crc = u32::from_be_bytes(h[12..16].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let start = at + RECORD_HEAD;
    let payload = bytes.get(start..start.checked_add(len as usize)?)?;
    (record_crc(index, payload) == crc).then_some((index, payload))
}

/// Cuts `file` at `len` and puts [`ROOM`] of zeros after it, durably: nothing
/// that lay past `len` (a torn record, truncated entries) can read back after
/// a crash. Returns the file's new size.
fn make_room(file: &File, path: &Path, len: u64) -> Result<u64, LogFileError> {
    file.set_len(len).map_err(io_err(path))?;
    file.set_len(len + ROOM).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(len + ROOM)
}

fn sync_dir(dir: &Path) -> Result<(), LogFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl LogFile {
    /// Opens (creating if needed) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> Result<LogFile, LogFileError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: u64) -> Result<LogFile, LogFileError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let count = firsts.len();
        for (n, first) in firsts.into_iter().enumerate() {
            let is_last = n + 1 == count;
            // A gap between segments can only be below the purge floor (a
            // purge past the end, then appends from further on): the caller
            // purges again at open, which drops what lies before it.
            let seg = Self::load(&dir.join(segment_name(first)), first, is_last)?;
            segments.insert(first, seg);
        }
        Ok(LogFile {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner { segments }),
            segment_bytes,
        })
    }

    /// Reads a segment's records; in the last one, a torn tail is cut off and
    /// [`ROOM`] made again after the records.
    fn load(path: &Path, first: u64, is_last: bool) -> Result<Segment, LogFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(io_err(path))?;
        let corrupt = |what: String| LogFileError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let mut offsets = Vec::new();
        let mut at = HEADER.len();
        let mut torn = None;
        if bytes.len() < HEADER.len() {
            // A segment created by a crash before its header was written.
            torn = Some(0);
        } else if bytes[..HEADER.len()] != HEADER {
            return Err(corrupt("not a raft log segment of a known version".into()));
        } else {
            while at < bytes.len() {
                match parse_record(&bytes, at) {
                    Some((index, payload)) => {
                        let want = first + offsets.len() as u64;
                        if index != want {
                            return Err(corrupt(format!("entry {index} where {want} belongs")));
                        }
                        offsets.push(at as u64);
                        at += RECORD_HEAD + payload.len();
                    }
                    None => {
                        torn = Some(at);
                        break;
                    }
                }
            }
        }
        let mut len = at as u64;
        if let Some(cut) = torn {
            if !is_last {
                return Err(corrupt(format!("a broken record at byte {cut}")));
            }
            // Zeros are the room left for appends, not a torn record.
            if bytes[cut..].iter().any(|&b| b != 0) {
                tracing::warn!(
                    "raft log {}: cutting a torn tail at byte {cut} (a crash during an append)",
                    path.display()
                );
            }
            len = if cut == 0 {
                file.write_all_at(&HEADER, 0).map_err(io_err(path))?;
                HEADER.len() as u64
            } else {
                cut as u64
            };
        }
        let size = if is_last {
            make_room(&file, path, len)?
        } else {
            bytes.len() as u64
        };
        Ok(Segment {
            path: path.to_path_buf(),
            file: Arc::new(file),
            first,
            offsets,
            len,
            size,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change to the map is made whole under the lock, after its I/O.
        crate::sync::lock(&self.inner)
    }

    /// The first and last index held, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let inner = self.lock();
        let first = inner
            .segments
            .values()
            .find(|s| !s.offsets.is_empty())
            .map(|s| s.first)?;
        let last = inner.segments.values().rev().find_map(Segment::last)?;
        Some((first, last))
    }

    /// Appends `entries` (index, payload), consecutive and past the last entry,
    /// durably: one write, one sync.
    pub fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), LogFileError> {
        self.write(entries)?.sync()
    }

    /// Appends `entries` as [`LogFile::append`] does, without waiting for the
    /// disk: they are readable at once, durable once [`Unsynced::sync`]
    /// returns. A sync makes every earlier write durable as well, so that a
    /// caller may count the writes' syncs in whatever order they end.
    pub fn write(&self, entries: &[(u64, Vec<u8>)]) -> Result<Unsynced, LogFileError> {
        let Some(&(start, _)) = entries.first() else {
            return Ok(Unsynced(None));
        };
        let mut inner = self.lock();
        let last = inner.segments.values().rev().find_map(Segment::last);
        // Past the end is allowed (a new segment starts there, as after a
        // snapshot); over held entries is not: those are truncated first.
        if last.is_some_and(|l| start <= l) {
            return Err(LogFileError::OutOfOrder { got: start, last });
        }
        let mut buf = Vec::new();
        let mut rel = Vec::with_capacity(entries.len());
        for (n, (index, payload)) in entries.iter().enumerate() {
            if *index != start + n as u64 {
                return Err(LogFileError::OutOfOrder {
                    got: *index,
                    last: Some(start + n as u64 - 1),
                });
            }
            rel.push(buf.len() as u64);
            buf.extend_from_slice(&index.to_be_bytes());
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(&record_crc(*index, payload).to_be_bytes());
            buf.extend_from_slice(payload);
        }
        // A new segment when the last is full, or when it cannot continue
        // (empty log after a purge: the next index may be anywhere).
        let reuse = inner
            .segments
            .iter()
            .next_back()
            .filter(|(_, s)| {
                s.len < self.segment_bytes && s.first + s.offsets.len() as u64 == start
            })
            .map(|(k, _)| *k);
        let key = match reuse {
            Some(k) => k,
            None => {
                // A sync covers its own segment only: the one closed here is
                // made durable now, for the syncs of later writes to cover it,
                // and ends at its last record (only the last segment may hold
                // anything past its records).
                if let Some(prev) = inner.segments.values_mut().next_back() {
                    prev.file.set_len(prev.len).map_err(io_err(&prev.path))?;
                    prev.file.sync_data().map_err(io_err(&prev.path))?;
                    prev.size = prev.len;
                }
                // Segments left empty by a purge are of no use any more; gone
                // before the new one exists, so that no crash leaves both.
                let empty: Vec<u64> = inner
                    .segments
                    .iter()
                    .filter(|(_, s)| s.offsets.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                for k in empty {
                    if let Some(s) = inner.segments.remove(&k) {
                        std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
                    }
                }
                let path = self.dir.join(segment_name(start));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.write_all_at(&HEADER, 0).map_err(io_err(&path))?;
                let size = make_room(&file, &path, HEADER.len() as u64)?;
                sync_dir(&self.dir)?;
                inner.segments.insert(
                    start,
                    Segment {
                        path,
                        file: Arc::new(file),
                        first: start,
                        offsets: Vec::new(),
                        len: HEADER.len() as u64,
                        size,
                    },
                );
                start
            }
        };
        let Some(seg) = inner.segments.get_mut(&key) else {
            return Err(LogFileError::OutOfOrder { got: start, last });
        };
        let at = seg.len;
        let end = at + buf.len() as u64;
        if end > seg.size {
            // The sync after this write also writes the new size, once a ROOM.
            seg.file.set_len(end + ROOM).map_err(io_err(&seg.path))?;
            seg.size = end + ROOM;
        }
        seg.file.write_all_at(&buf, at).map_err(io_err(&seg.path))?;
        seg.offsets.extend(rel.into_iter().map(|r| at + r));
        seg.len = at + buf.len() as u64;
        Ok(Unsynced(Some((seg.file.clone(), seg.path.clone()))))
    }

    /// The payloads of the entries in `[from, to)` that the log holds, in order.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, LogFileError> {
        // The spans are taken under the lock, the reads done without it: a
        // purge meanwhile unlinks a file that the handle still reads.
        let mut plan = Vec::new();
        {
            let inner = self.lock();
            for seg in inner.segments.values() {
                let Some(last) = seg.last() else { continue };
                let (lo, hi) = (from.max(seg.first), to.min(last + 1));
                if lo >= hi {
                    continue;
                }
                // `lo..hi` lies within the segment's entries (clamped above).
                let (a, b) = ((lo - seg.first) as usize, (hi - seg.first) as usize);
                let (Some(offsets), Some((_, end))) = (seg.offsets.get(a..b), seg.span(hi - 1))
                else {
                    continue;
                };
                let start = offsets[0];
                plan.push((
                    seg.path.clone(),
                    seg.file.clone(),
                    lo,
                    start,
                    end,
                    offsets.to_vec(),
                ));
            }
        }
        let mut out = Vec::new();
        for (path, file, lo, start, end, offsets) in plan {
            let mut bytes = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
            file.read_exact_at(&mut bytes, start)
                .map_err(io_err(&path))?;
            for (n, off) in offsets.iter().enumerate() {
                let at = usize::try_from(off - start).unwrap_or(usize::MAX);
                let want = lo + n as u64;
                let rec = parse_record(&bytes, at)
                    .filter(|(index, _)| *index == want)
                    .map(|(_, payload)| payload.to_vec())
                    .ok_or_else(|| LogFileError::Corrupt {
                        path: path.clone(),
                        what: format!("entry {want} does not read back"),
                    })?;
                out.push((want, rec));
            }
        }
        Ok(out)
    }

    /// Removes the entries from `since` on, durably.
    pub fn truncate(&self, since: u64) -> Result<(), LogFileError> {
        let mut inner = self.lock();
        let later: Vec<u64> = inner.segments.range(since..).map(|(k, _)| *k).collect();
        let mut removed = false;
        for k in later {
            // A segment wholly from `since` on: gone.
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(seg) = inner.segments.values_mut().next_back()
            && let Some((cut, _)) = seg.span(since)
        {
            seg.size = make_room(&seg.file, &seg.path, cut)?;
            let keep = usize::try_from(since - seg.first).unwrap_or(0);
            seg.offsets.truncate(keep);
            seg.len = cut;
        }
        Ok(())
    }

    /// Forgets the entries up to `upto` (inclusive): segments holding only
    /// those are deleted; a segment holding later ones too keeps them all on
    /// disk and drops the purged ones from its index.
    pub fn purge(&self, upto: u64) -> Result<(), LogFileError> {
        let mut inner = self.lock();
        let whole: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(_, s)| s.last().is_none_or(|l| l <= upto))
            .map(|(k, _)| *k)
            .collect();
        let last_key = inner.segments.keys().next_back().copied();
        for k in whole {
            if Some(k) == last_key {
                // The segment taking appends stays (as an empty one), so that
                // an append right after the purged index continues it.
                if let Some(s) = inner.segments.get_mut(&k) {
                    let next = s.last().map_or(s.first, |l| l + 1);
                    s.first = next;
                    s.offsets.clear();
                }
                continue;
            }
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
            }
        }
        for s in inner.segments.values_mut() {
            if s.first <= upto
                && let Some(last) = s.last()
                && last > upto
            {
                let drop = usize::try_from(upto + 1 - s.first).unwrap_or(0);
                s.offsets.drain(..drop);
                s.first = upto + 1;
            }
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LogFile {
        /// Where the last segment's records end.
        fn end_of_records(&self) -> u64 {
            self.lock()
                .segments
                .values()
                .next_back()
                .map_or(0, |s| s.len)
        }
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i} ")
            .repeat((i % 7 + 1) as usize)
            .into_bytes()
    }

    fn entries(r: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        r.map(|i| (i, payload(i))).collect()
    }

    #[test]
    fn appends_read_back_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(log.bounds(), None);
        log.append(&entries(1..4)).unwrap();
        log.append(&entries(4..10)).unwrap();
        assert_eq!(log.bounds(), Some((1, 9)));
        assert_eq!(log.read(3, 6).unwrap(), entries(3..6));
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(log.bounds(), Some((1, 9)));
        assert_eq!(log.read(0, 100).unwrap(), entries(1..10));
        assert!(matches!(
            log.append(&entries(9..12)),
            Err(LogFileError::OutOfOrder { got: 9, .. })
        ));
        // A gap starts a new segment; reads skip what is not held.
        log.append(&entries(12..14)).unwrap();
        assert_eq!(log.read(8, 100).unwrap().len(), 4);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        log.append(&entries(1..6)).unwrap();
        let len = log.end_of_records();
        drop(log);
        let seg = dir.path().join(segment_name(1));
        // A crash in the middle of the next append: half a record, then
        // a record whose bytes did not all reach the disk.
        for cut in [len + 7, len + 30] {
            let log = LogFile::open(dir.path()).unwrap();
            log.append(&entries(6..8)).unwrap();
            drop(log);
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let log = LogFile::open(dir.path()).unwrap();
            assert_eq!(log.bounds(), Some((1, 5)), "cut at {cut}");
            assert_eq!(log.read(1, 6).unwrap(), entries(1..6));
            // Appends go on after the cut.
            log.append(&entries(6..7)).unwrap();
            assert_eq!(log.read(6, 7).unwrap(), entries(6..7));
            log.truncate(6).unwrap();
        }
        // A flipped byte inside the last record is also a torn tail.
        let log = LogFile::open(dir.path()).unwrap();
        log.append(&entries(6..7)).unwrap();
        let len = log.end_of_records();
        drop(log);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"X", len - 2).unwrap();
        drop(f);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(log.bounds(), Some((1, 5)));
    }

    #[test]
    fn the_last_segment_has_room_for_appends_and_closed_ones_end_at_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open_with(dir.path(), 4096).unwrap();
        let size = |first: u64| {
            std::fs::metadata(dir.path().join(segment_name(first)))
                .unwrap()
                .len()
        };
        log.append(&[(1, vec![7u8; 1500])]).unwrap();
        assert_eq!(size(1), HEADER.len() as u64 + ROOM, "created with room");
        log.append(&[(2, vec![7u8; 1500]), (3, vec![7u8; 1500])])
            .unwrap();
        let closed = log.end_of_records();
        log.append(&[(4, vec![7u8; 10])]).unwrap();
        assert_eq!(size(1), closed, "closed: cut to its records");
        assert_eq!(size(4), HEADER.len() as u64 + ROOM);
        // A crash leaves the zeros (and maybe half a record) after the last one:
        // neither is an entry, and the room is there again after the open.
        let end = log.end_of_records();
        drop(log);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(segment_name(4)))
            .unwrap();
        f.write_all_at(&5u64.to_be_bytes(), end).unwrap();
        drop(f);
        let log = LogFile::open_with(dir.path(), 4096).unwrap();
        assert_eq!(log.bounds(), Some((1, 4)));
        assert_eq!(size(4), log.end_of_records() + ROOM, "room made again");
        log.append(&[(5, vec![1u8; 3])]).unwrap();
        assert_eq!(
            log.read(4, 6).unwrap(),
            vec![(4, vec![7u8; 10]), (5, vec![1u8; 3])]
        );
        // A truncate zeroes what it cut: nothing of it reads back after a reopen.
        log.truncate(5).unwrap();
        assert_eq!(size(4), log.end_of_records() + ROOM);
        drop(log);
        let log = LogFile::open_with(dir.path(), 4096).unwrap();
        assert_eq!(log.bounds(), Some((1, 4)));
        assert_eq!(log.read(1, 10).unwrap().len(), 4);
        // An append past the room extends it.
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        let big = vec![1u8; ROOM as usize + 10];
        log.append(&[(1, big.clone())]).unwrap();
        let len = std::fs::metadata(dir.path().join(segment_name(1)))
            .unwrap()
            .len();
        assert_eq!(len, log.end_of_records() + ROOM);
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(log.read(1, 2).unwrap(), vec![(1, big)]);
    }

    #[test]
    fn truncate_and_purge_keep_the_rest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        log.append(&entries(1..20)).unwrap();
        log.truncate(15).unwrap();
        assert_eq!(log.bounds(), Some((1, 14)));
        log.append(&entries(15..17)).unwrap();
        log.purge(10).unwrap();
        assert_eq!(log.bounds(), Some((11, 16)));
        // Appends go on in the segment a purge cut the head off.
        log.append(&entries(17..18)).unwrap();
        log.truncate(17).unwrap();
        assert_eq!(log.read(0, 100).unwrap(), entries(11..17));
        // Purging past the end (a snapshot installed from ahead): the next
        // append starts anywhere.
        log.purge(40).unwrap();
        assert_eq!(log.bounds(), None);
        log.append(&entries(41..43)).unwrap();
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        // The purge floor is the caller's to keep: entries 11..17 still in
        // an older segment would show here, but none is left on disk.
        assert_eq!(log.bounds(), Some((41, 42)));
        assert_eq!(log.read(0, 100).unwrap(), entries(41..43));
        // Reopened after a purge past the end, the purged entries are back
        // until the caller's purge at open; then appends start past the floor.
        log.purge(60).unwrap();
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(log.bounds(), Some((41, 42)));
        log.purge(60).unwrap();
        assert_eq!(log.bounds(), None);
        log.append(&entries(61..63)).unwrap();
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(log.read(0, 100).unwrap(), entries(61..63));
    }

    #[test]
    fn full_segments_roll_over_and_are_purged_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open_with(dir.path(), 4096).unwrap();
        let big = vec![7u8; 1500];
        for i in 1..=16u64 {
            log.append(&[(i, big.clone())]).unwrap();
        }
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files() >= 2, "{} segment files", files());
        let before = files();
        log.purge(8).unwrap();
        assert!(files() < before);
        assert_eq!(log.bounds(), Some((9, 16)));
        drop(log);
        let log = LogFile::open_with(dir.path(), 4096).unwrap();
        let (first, last) = log.bounds().unwrap();
        assert!(first <= 9 && last == 16, "{first}..{last}");
        assert_eq!(log.read(9, 17).unwrap().len(), 8);
    }
}
