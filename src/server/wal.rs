//! The small-put log: a PutObject small enough for the database is made
//! durable by one record in a preallocated log file and one `fdatasync` of
//! it (shared by concurrent puts), not by a database commit of its own; the
//! database takes small puts in batches (`small.rs`). A database commit
//! syncs many scattered pages and costs far more CPU than the put itself;
//! the log writes one run of bytes into blocks that already exist, so its
//! sync writes no metadata.
//!
//! Each batch commit records in the database the log's `Mark`: the last
//! sequence number it covers and where the next record goes. After a crash
//! `Wal::open` hands back the records after the mark, which the caller
//! applies. The log is a ring: it starts again at 0 once a batch commit
//! covered every record; until then a record that does not fit waits.
//!
//! Owns the log file's format and its syncs; must not know tables or HTTP.

use super::lock;
use md5::{Digest, Md5};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// The log's size, written with zeros once so that later writes and syncs
/// never change its metadata.
const LOG_SIZE: u64 = 8 << 20;
const MAGIC: &[u8; 4] = b"CWL1";
/// magic, payload length (u32), length of the payload before the bytes
/// (u32), sequence number (u64), MD5 of sequence and that part of the payload.
const HEADER: usize = 4 + 4 + 4 + 8 + 16;

/// A small PutObject as the log holds it: enough to redo its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub coffer: String,
    pub key: String,
    /// The object's record, as the database stores it (JSON).
    pub rec: Vec<u8>,
    pub bytes: Vec<u8>,
    /// The bytes' MD5, which the put computed as they came in: the record's
    /// checksum covers it, so the hot path hashes the bytes only once.
    pub md5: [u8; 16],
}

impl Entry {
    /// Coffer, key and record, each after its length (u32), the MD5, then
    /// the bytes; and where the bytes begin.
    fn encode(&self) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(
            28 + self.coffer.len() + self.key.len() + self.rec.len() + self.bytes.len(),
        );
        for field in [self.coffer.as_bytes(), self.key.as_bytes(), &self.rec] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.md5);
        let head = out.len();
        out.extend_from_slice(&self.bytes);
        (out, head)
    }

    /// The entry, if its bytes match their MD5.
    fn decode(mut b: &[u8]) -> Option<Entry> {
        let mut field = || {
            let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let f = b.get(4..4 + len)?.to_vec();
            b = &b[4 + len..];
            Some(f)
        };
        let coffer = String::from_utf8(field()?).ok()?;
        let key = String::from_utf8(field()?).ok()?;
        let rec = field()?;
        let md5: [u8; 16] = b.get(..16)?.try_into().ok()?;
        let bytes = b.get(16..)?.to_vec();
        let ok = <[u8; 16]>::from(Md5::digest(&bytes)) == md5;
        ok.then_some(Entry {
            coffer,
            key,
            rec,
            bytes,
            md5,
        })
    }
}

/// What a batch commit records: the last sequence number it covers and
/// where the record after it was to go (or 0, where the log started again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub seq: u64,
    pub next: u64,
}

impl Mark {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Mark> {
        let seq = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let next = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Mark { seq, next })
    }
}

struct State {
    /// The last sequence number given out and where the next record goes.
    seq: u64,
    head: u64,
    /// A record did not fit: nothing more goes in until `restart`, so no
    /// later record lands past one that waits.
    full: bool,
    /// The highest sequence number known on disk, and whether a sync runs.
    synced: u64,
    syncing: bool,
}

pub struct Wal {
    file: File,
    size: u64,
    state: Mutex<State>,
    synced: Condvar,
}

fn digest(seq: u64, payload: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(seq.to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

impl Wal {
    /// Opens (or creates) the log at `path`. `mark` is the database's: the
    /// records after it, in order, are returned for the caller to apply and
    /// commit durably with `Mark { seq: last, next: 0 }`, then `restart`,
    /// before any append.
    pub fn open(path: &Path, mark: Mark) -> io::Result<(Wal, Vec<(u64, Replayed)>)> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed || file.metadata()?.len() < LOG_SIZE {
            write_zeros(&file, LOG_SIZE)?;
        }
        let size = file.metadata()?.len();
        let pending = read_after(&file, size, mark)?;
        let seq = pending.last().map_or(mark.seq, |(s, _)| *s);
        let next = pending.last().map_or(mark.next, |(_, e)| e.end);
        let wal = Wal {
            file,
            size,
            state: Mutex::new(State {
                seq,
                head: next,
                full: false,
                synced: seq,
                syncing: false,
            }),
            synced: Condvar::new(),
        };
        Ok((wal, pending))
    }

    /// Writes `entry` into the log (not yet synced) and gives its sequence
    /// number; `None` when the log is full until the next `restart`.
    pub fn append(&self, entry: &Entry) -> io::Result<Option<u64>> {
        let (payload, head) = entry.encode();
        let len = (HEADER + payload.len()) as u64;
        let mut s = lock(&self.state);
        if s.full || s.head + len > self.size {
            s.full = true;
            return Ok(None);
        }
        let seq = s.seq + 1;
        let mut rec = Vec::with_capacity(len as usize);
        rec.extend_from_slice(MAGIC);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(head as u32).to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&digest(seq, &payload[..head]));
        rec.extend_from_slice(&payload);
        self.file.write_all_at(&rec, s.head)?;
        s.seq = seq;
        s.head += len;
        Ok(Some(seq))
    }

    /// The last record's sequence number and where the next goes.
    pub fn mark(&self) -> Mark {
        let s = lock(&self.state);
        Mark {
            seq: s.seq,
            next: s.head,
        }
    }

    /// A durable commit covers every record up to `seq`, the last one: the
    /// log starts again at 0.
    pub fn restart(&self, seq: u64) {
        let mut s = lock(&self.state);
        if s.seq != seq {
            return;
        }
        s.head = 0;
        s.full = false;
        s.synced = s.synced.max(seq);
        self.synced.notify_all();
    }

    /// Returns once record `seq` is on disk; one `fdatasync` serves every
    /// record appended before it began.
    pub fn sync(&self, seq: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        loop {
            if s.synced >= seq {
                return Ok(());
            }
            if s.syncing {
                s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.syncing = true;
            let target = s.seq;
            drop(s);
            let r = self.file.sync_data();
            s = lock(&self.state);
            s.syncing = false;
            if r.is_ok() {
                s.synced = s.synced.max(target);
            }
            self.synced.notify_all();
            r?;
        }
    }
}

/// Fills the log with zeros and syncs it, so its blocks are allocated and
/// written: later syncs then flush data only.
fn write_zeros(file: &File, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()
}

/// A record read back, and where the next one goes.
pub struct Replayed {
    pub entry: Entry,
    end: u64,
}

/// The records after `mark`: numbered `mark.seq + 1`, `+ 2`…, the first at
/// `mark.next`, or at 0 where the log started again after the mark; up to
/// the first that is missing, torn or of an earlier lap.
fn read_after(file: &File, size: u64, mark: Mark) -> io::Result<Vec<(u64, Replayed)>> {
    let first = match read_at(file, size, mark.next, mark.seq + 1)? {
        Some(r) => Some(r),
        None if mark.next != 0 => read_at(file, size, 0, mark.seq + 1)?,
        None => None,
    };
    let mut out = Vec::new();
    let mut want = mark.seq + 1;
    let mut next = first;
    while let Some(r) = next {
        let end = r.end;
        out.push((want, r));
        want += 1;
        next = read_at(file, size, end, want)?;
    }
    Ok(out)
}

/// Record `want` at `at`, if that is what is there, whole.
fn read_at(file: &File, size: u64, at: u64, want: u64) -> io::Result<Option<Replayed>> {
    let mut header = [0u8; HEADER];
    if at + HEADER as u64 > size
        || file.read_exact_at(&mut header, at).is_err()
        || &header[..4] != MAGIC
    {
        return Ok(None);
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (len, head) = (u64::from(u32_at(4)), u32_at(8) as usize);
    let seq = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
    if seq != want || at + HEADER as u64 + len > size || head as u64 > len {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, at + HEADER as u64)?;
    if digest(seq, &payload[..head])[..] != header[20..] {
        return Ok(None);
    }
    match Entry::decode(&payload) {
        Some(entry) => Ok(Some(Replayed {
            entry,
            end: at + HEADER as u64 + len,
        })),
        None => {
            log::error!("small-put log record {seq} is damaged: its bytes do not match their MD5");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> Entry {
        Entry {
            coffer: "c".into(),
            key: key.into(),
            rec: b"{}".to_vec(),
            bytes: vec![7; 100],
            md5: Md5::digest([7; 100]).into(),
        }
    }

    fn keys(pending: &[(u64, Replayed)]) -> Vec<(u64, &str)> {
        pending
            .iter()
            .map(|(s, r)| (*s, r.entry.key.as_str()))
            .collect()
    }

    #[test]
    fn records_after_the_databases_mark_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, pending) = Wal::open(&path, Mark::default()).unwrap();
        assert!(pending.is_empty());
        assert_eq!(wal.append(&entry("a")).unwrap(), Some(1));
        let m1 = wal.mark();
        wal.append(&entry("b")).unwrap();
        let s3 = wal.append(&entry("c")).unwrap().unwrap();
        wal.sync(s3).unwrap();
        let m3 = wal.mark();
        drop(wal);
        // The database durably holds up to record 1.
        let (wal, pending) = Wal::open(&path, m1).unwrap();
        assert_eq!(keys(&pending), [(2, "b"), (3, "c")]);
        // Appends go on after what was replayed.
        assert_eq!(wal.mark(), m3);
        drop(wal);
        let (_, pending) = Wal::open(&path, m3).unwrap();
        assert!(pending.is_empty());
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, _) = Wal::open(&path, Mark::default()).unwrap();
        wal.append(&entry("a")).unwrap();
        wal.append(&entry("b")).unwrap();
        wal.append(&entry("c")).unwrap();
        // The third record's bytes lose a byte: their MD5 no longer matches.
        wal.file.write_all_at(&[0xff], wal.mark().next - 1).unwrap();
        drop(wal);
        let (_, pending) = Wal::open(&path, Mark::default()).unwrap();
        assert_eq!(keys(&pending), [(1, "a"), (2, "b")]);
    }

    #[test]
    fn after_a_restart_records_are_found_at_0_and_old_laps_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, _) = Wal::open(&path, Mark::default()).unwrap();
        for k in ["a", "b", "c", "d"] {
            wal.append(&entry(k)).unwrap();
        }
        // A batch commit covered records 1-4 and recorded where 5 was to go.
        let m4 = wal.mark();
        wal.restart(4);
        assert_eq!(wal.append(&entry("e")).unwrap(), Some(5));
        drop(wal);
        let (_, pending) = Wal::open(&path, m4).unwrap();
        assert_eq!(keys(&pending), [(5, "e")]);
        // Nothing after the mark: record 2 of the earlier lap is not taken.
        let (_, pending) = Wal::open(&path, Mark { seq: 5, next: 0 }).unwrap();
        assert!(pending.is_empty());
    }

    #[test]
    fn a_full_log_takes_nothing_more_until_it_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("wal"), Mark::default()).unwrap();
        let big = Entry {
            bytes: vec![1; 60 << 10],
            md5: Md5::digest(vec![1; 60 << 10]).into(),
            ..entry("big")
        };
        let mut n = 0;
        while wal.append(&big).unwrap().is_some() {
            n += 1;
        }
        assert!(n > 10, "{n} records fit");
        // Not even a small record slips in after one that waits.
        assert_eq!(wal.append(&entry("small")).unwrap(), None);
        wal.restart(n);
        assert_eq!(wal.append(&entry("small")).unwrap(), Some(n + 1));
        assert_eq!(
            wal.mark().next,
            (HEADER + entry("small").encode().0.len()) as u64
        );
    }

    #[test]
    fn concurrent_syncs_all_return_once_their_record_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("wal"), Mark::default()).unwrap();
        let wal = std::sync::Arc::new(wal);
        let seqs: Vec<u64> = (0..16)
            .map(|i| wal.append(&entry(&format!("k{i}"))).unwrap().unwrap())
            .collect();
        let threads: Vec<_> = seqs
            .into_iter()
            .map(|seq| {
                let wal = wal.clone();
                std::thread::spawn(move || wal.sync(seq))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(lock(&wal.state).synced, 16);
    }
}
