//! The small-put log: a PutObject small enough for the database is made
//! durable by one record in a preallocated log file and one `fdatasync` of
//! it, and its database commit is not synced. A database commit syncs many
//! scattered pages (its fsync costs 3–4 times the log's); the log writes one
//! run of bytes into blocks that already exist, so syncing it writes no
//! metadata. Concurrent puts share a sync (group commit).
//!
//! Every small-put transaction records in the database the sequence number
//! of its log record and where the next record goes (`Mark`). A durable
//! commit, of any transaction, therefore covers every record appended before
//! it; after a crash the database is as of its last durable commit, and
//! `Wal::open` hands back the records after that commit's mark, which the
//! caller applies. The log is a ring: when a record does not fit, or after
//! `DURABLE_EVERY` records, the put commits durably instead (that frees the
//! pages unsynced commits leave, and lets the log start again at 0).
//!
//! Owns the log file's format and its syncs; must not know tables or HTTP.

use md5::{Digest, Md5};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

/// The log's size, written with zeros once so that later writes and syncs
/// never change its metadata.
const LOG_SIZE: u64 = 8 << 20;
/// A durable commit at least this often keeps the database file from growing
/// (redb frees pages only in synced commits) and bounds replay.
const DURABLE_EVERY: u64 = 1024;
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

/// What a small-put transaction records beside its object: its record's
/// sequence number and where the next record goes.
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

/// Where an append went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// In the log: the transaction records `mark`, commits unsynced, then
    /// waits for `sync(mark.seq)`.
    Logged { mark: Mark, at: u64 },
    /// Not in the log: the transaction records `mark` (next = 0) and commits
    /// durably, then calls `restart(mark.seq)`.
    Durable { mark: Mark },
}

struct State {
    /// The last sequence number given out and where the next record goes.
    seq: u64,
    head: u64,
    /// Records since the last durable small put.
    since_durable: u64,
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

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// commit durably with `Mark { seq: last, next: 0 }` (or with `mark`
    /// when there are none) before any append.
    pub fn open(path: &Path, mark: Mark) -> io::Result<(Wal, Vec<(u64, Entry)>)> {
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
        let wal = Wal {
            file,
            size,
            state: Mutex::new(State {
                seq,
                head: 0,
                since_durable: 0,
                synced: seq,
                syncing: false,
            }),
            synced: Condvar::new(),
        };
        Ok((wal, pending))
    }

    /// Writes `entry` into the log (not yet synced), or says it must go by a
    /// durable commit instead. Call only inside the database's write
    /// transaction, which orders appends as it orders commits.
    pub fn append(&self, entry: &Entry) -> io::Result<Placed> {
        let (payload, head) = entry.encode();
        let len = (HEADER + payload.len()) as u64;
        let mut s = lock(&self.state);
        let seq = s.seq + 1;
        if s.head + len > self.size || s.since_durable >= DURABLE_EVERY {
            return Ok(Placed::Durable {
                mark: Mark { seq, next: 0 },
            });
        }
        let mut rec = Vec::with_capacity(len as usize);
        rec.extend_from_slice(MAGIC);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(head as u32).to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&digest(seq, &payload[..head]));
        rec.extend_from_slice(&payload);
        let at = s.head;
        self.file.write_all_at(&rec, at)?;
        s.seq = seq;
        s.head = at + len;
        s.since_durable += 1;
        Ok(Placed::Logged {
            mark: Mark {
                seq,
                next: at + len,
            },
            at,
        })
    }

    /// Takes back a logged record whose transaction did not commit: its
    /// header is cleared, so replay stops before it, and the next record
    /// takes its place.
    pub fn undo(&self, placed: Placed) {
        let Placed::Logged { mark, at } = placed else {
            return;
        };
        let mut s = lock(&self.state);
        if s.seq == mark.seq {
            if let Err(e) = self.file.write_all_at(&[0u8; HEADER], at) {
                log::error!("clearing an uncommitted small-put record: {e}");
            }
            s.seq -= 1;
            s.head = at;
            s.since_durable = s.since_durable.saturating_sub(1);
        }
    }

    /// A durable commit recorded `mark` (from `Placed::Durable`): it covers
    /// every record before it, so the log starts again at 0.
    pub fn restart(&self, mark: Mark) {
        let mut s = lock(&self.state);
        s.seq = mark.seq;
        s.head = 0;
        s.since_durable = 0;
        s.synced = s.synced.max(mark.seq);
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

/// The records after `mark`: from `mark.next`, numbered `mark.seq + 1`, `+ 2`…,
/// up to the first that is missing, torn or of an earlier lap.
fn read_after(file: &File, size: u64, mark: Mark) -> io::Result<Vec<(u64, Entry)>> {
    let mut out = Vec::new();
    let mut at = mark.next;
    let mut want = mark.seq + 1;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        if file.read_exact_at(&mut header, at).is_err() || &header[..4] != MAGIC {
            break;
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (len, head) = (u64::from(u32_at(4)), u32_at(8) as usize);
        let seq = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
        if seq != want || at + HEADER as u64 + len > size || head as u64 > len {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, at + HEADER as u64)?;
        if digest(seq, &payload[..head])[..] != header[20..] {
            break;
        }
        match Entry::decode(&payload) {
            Some(e) => out.push((seq, e)),
            None => {
                log::error!("small-put log record {seq} does not parse");
                break;
            }
        }
        at += HEADER as u64 + len;
        want += 1;
    }
    Ok(out)
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

    fn logged(p: Placed) -> Mark {
        match p {
            Placed::Logged { mark, .. } => mark,
            Placed::Durable { .. } => panic!("expected a logged record"),
        }
    }

    #[test]
    fn records_after_the_databases_mark_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, pending) = Wal::open(&path, Mark::default()).unwrap();
        assert!(pending.is_empty());
        let m1 = logged(wal.append(&entry("a")).unwrap());
        let m2 = logged(wal.append(&entry("b")).unwrap());
        let m3 = logged(wal.append(&entry("c")).unwrap());
        wal.sync(m3.seq).unwrap();
        assert_eq!((m1.seq, m2.seq, m3.seq), (1, 2, 3));
        drop(wal);
        // The database durably holds up to record 1.
        let (_, pending) = Wal::open(&path, m1).unwrap();
        let keys: Vec<_> = pending.iter().map(|(s, e)| (*s, e.key.as_str())).collect();
        assert_eq!(keys, [(2, "b"), (3, "c")]);
        let (_, pending) = Wal::open(&path, m3).unwrap();
        assert!(pending.is_empty());
    }

    #[test]
    fn an_undone_or_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, _) = Wal::open(&path, Mark::default()).unwrap();
        logged(wal.append(&entry("a")).unwrap());
        let p = wal.append(&entry("b")).unwrap();
        wal.undo(p);
        let m = logged(wal.append(&entry("b2")).unwrap());
        assert_eq!(m.seq, 2);
        let Placed::Logged { at, .. } = wal.append(&entry("c")).unwrap() else {
            panic!("expected a logged record");
        };
        // A torn third record: a byte of its payload lost.
        wal.file
            .write_all_at(&[0xff], at + HEADER as u64 + 3)
            .unwrap();
        drop(wal);
        let (_, pending) = Wal::open(&path, Mark::default()).unwrap();
        let keys: Vec<_> = pending.iter().map(|(_, e)| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b2"]);
    }

    #[test]
    fn a_durable_commit_starts_the_log_again_and_old_laps_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, _) = Wal::open(&path, Mark::default()).unwrap();
        for k in ["a", "b", "c"] {
            logged(wal.append(&entry(k)).unwrap());
        }
        wal.restart(Mark { seq: 4, next: 0 });
        let m5 = logged(wal.append(&entry("e")).unwrap());
        assert_eq!(
            m5,
            Mark {
                seq: 5,
                next: m5.next
            }
        );
        drop(wal);
        // The database is as of the durable commit of record 4: record 5 is
        // replayed, then the stale record 2 of the earlier lap stops it.
        let (_, pending) = Wal::open(&path, Mark { seq: 4, next: 0 }).unwrap();
        let keys: Vec<_> = pending.iter().map(|(_, e)| e.key.as_str()).collect();
        assert_eq!(keys, ["e"]);
    }

    #[test]
    fn a_full_log_asks_for_a_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("wal"), Mark::default()).unwrap();
        let big = Entry {
            bytes: vec![1; 60 << 10],
            md5: Md5::digest(vec![1; 60 << 10]).into(),
            ..entry("big")
        };
        let mut n = 0;
        let mark = loop {
            match wal.append(&big).unwrap() {
                Placed::Logged { .. } => n += 1,
                Placed::Durable { mark } => break mark,
            }
        };
        assert!(n > 10, "{n} records fit");
        assert_eq!(
            mark,
            Mark {
                seq: n + 1,
                next: 0
            }
        );
    }

    #[test]
    fn concurrent_syncs_all_return_once_their_record_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("wal"), Mark::default()).unwrap();
        let wal = std::sync::Arc::new(wal);
        let marks: Vec<Mark> = (0..16)
            .map(|i| logged(wal.append(&entry(&format!("k{i}"))).unwrap()))
            .collect();
        let threads: Vec<_> = marks
            .into_iter()
            .map(|m| {
                let wal = wal.clone();
                std::thread::spawn(move || wal.sync(m.seq))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(lock(&wal.state).synced, 16);
    }
}
