//! The journal's life in a mount: replay at start, group commit of new records
//! (within a second, on sync, at unmount), reload of other mounts' batches.
//! Owns only `.cofferfs/journal/`; knows nothing of inodes or FUSE.

use super::error::{FsError, FsResult};
use super::journal::{batch_key, Batch, JournalError, Overlay, Record, JOURNAL_PREFIX};
use crate::store::{ListAll, ObjectStore};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a record may wait before its batch goes up.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// The coffer's batches replayed, in key order.
    base: Overlay,
    /// `base` plus the records not yet stored: what the mount shows.
    overlay: Overlay,
    applied: BTreeSet<String>,
    /// Records being stored now, then those waiting.
    in_flight: Vec<Record>,
    pending: Vec<Record>,
    appended: u64,
    committed: u64,
    seq: u64,
    /// The last commit's failure, until a commit succeeds.
    failure: Option<String>,
    /// Batch attempts started, and the number of the last that failed.
    attempts: u64,
    last_failed: u64,
    flush: bool,
    stop: bool,
}

pub struct Journal {
    store: Arc<dyn ObjectStore>,
    mount_id: String,
    state: Mutex<State>,
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A ticket: the records appended up to some point.
pub type Ticket = u64;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The time part of a batch key.
fn key_micros(key: &str) -> u64 {
    key.strip_prefix(JOURNAL_PREFIX)
        .and_then(|r| r.split('-').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

impl Journal {
    /// Replays the coffer's journal and starts the committer.
    pub fn open(store: Arc<dyn ObjectStore>) -> Result<Arc<Journal>, FsError> {
        use rand::Rng;
        let mount_id = format!("{:016x}", rand::rng().random::<u64>());
        let j = Arc::new(Journal {
            store,
            mount_id,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        j.reload()?;
        let worker = Arc::clone(&j);
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || worker.commit_loop())
            .map_err(|e| {
                FsError::new(libc::EIO, format!("cannot start the journal thread: {e}"))
            })?;
        *j.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(j)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the overlay (the view's journal part, own unsaved records included).
    pub fn with_overlay<R>(&self, f: impl FnOnce(&Overlay) -> R) -> R {
        f(&self.lock().overlay)
    }

    /// Appends records: visible at once, stored within `COMMIT_INTERVAL`.
    pub fn record(&self, records: Vec<Record>) -> Ticket {
        let mut s = self.lock();
        for r in &records {
            s.overlay.apply(r);
        }
        s.appended += records.len() as u64;
        s.pending.extend(records);
        self.changed.notify_all();
        s.appended
    }

    /// Stores everything appended up to `ticket` now; fails when a batch attempt
    /// made after this call fails.
    pub fn sync(&self, ticket: Ticket) -> FsResult<()> {
        let mut s = self.lock();
        let started = s.attempts;
        s.flush = true;
        self.changed.notify_all();
        while s.committed < ticket {
            if s.last_failed > started {
                let why = s.failure.clone().unwrap_or_default();
                return Err(FsError::new(libc::EIO, format!("storing metadata: {why}")));
            }
            if s.stop && s.in_flight.is_empty() && s.pending.is_empty() {
                return Err(FsError::new(
                    libc::EIO,
                    "metadata journal stopped before storing",
                ));
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Stores everything appended so far.
    pub fn sync_all(&self) -> FsResult<()> {
        let ticket = self.lock().appended;
        self.sync(ticket)
    }

    fn commit_loop(self: Arc<Self>) {
        loop {
            let (records, key) = {
                let mut s = self.lock();
                while !s.stop && !s.flush && s.pending.is_empty() {
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if !s.flush && !s.stop {
                    // Group commit: let a second's worth of records gather.
                    let (g, _) = self
                        .changed
                        .wait_timeout_while(s, COMMIT_INTERVAL, |s| !s.flush && !s.stop)
                        .unwrap_or_else(|p| p.into_inner());
                    s = g;
                }
                s.flush = false;
                if s.pending.is_empty() {
                    self.changed.notify_all();
                    if s.stop {
                        return;
                    }
                    continue;
                }
                s.in_flight = std::mem::take(&mut s.pending);
                s.seq += 1;
                s.attempts += 1;
                let last = s
                    .applied
                    .iter()
                    .next_back()
                    .map(|k| key_micros(k))
                    .unwrap_or(0);
                let key = batch_key(now_micros().max(last + 1), &self.mount_id, s.seq);
                (s.in_flight.clone(), key)
            };
            let n = records.len() as u64;
            let seq = self.lock().seq;
            let batch = Batch::new(&self.mount_id, seq, records.clone());
            let result = self.store.put(&key, Bytes::from(batch.encode()));
            let mut s = self.lock();
            let failed = match result {
                Ok(_) => {
                    for r in &records {
                        s.base.apply(r);
                    }
                    s.applied.insert(key);
                    s.in_flight.clear();
                    s.committed += n;
                    s.failure = None;
                    false
                }
                Err(e) => {
                    log::error!("storing metadata batch {key:?} ({n} records): {e}; will retry");
                    let mut back = std::mem::take(&mut s.in_flight);
                    back.append(&mut s.pending);
                    s.pending = back;
                    s.failure = Some(e.to_string());
                    s.last_failed = s.attempts;
                    true
                }
            };
            self.changed.notify_all();
            let stopping = s.stop;
            drop(s);
            if failed {
                if stopping {
                    // Unmounting and the coffer refuses: the log said what is lost.
                    return;
                }
                std::thread::sleep(COMMIT_INTERVAL);
            }
        }
    }

    /// Reads batches other mounts stored since the last look. Returns whether
    /// the overlay changed.
    pub fn reload(&self) -> FsResult<bool> {
        let keys: Vec<String> = ListAll::new(self.store.as_ref(), JOURNAL_PREFIX)
            .map(|r| r.map(|m| m.key))
            .collect::<Result<_, _>>()
            .map_err(|e| FsError::io("listing the metadata journal", &e))?;
        let (new, rebuild) = {
            let s = self.lock();
            let last = s.applied.iter().next_back().cloned();
            let new: Vec<String> = keys
                .iter()
                .filter(|k| !s.applied.contains(*k))
                .cloned()
                .collect();
            let rebuild = match (&last, new.first()) {
                (Some(l), Some(f)) => f < l,
                _ => false,
            };
            (new, rebuild)
        };
        if new.is_empty() {
            return Ok(false);
        }
        let wanted = if rebuild { keys } else { new };
        let mut batches = Vec::with_capacity(wanted.len());
        for key in &wanted {
            let got = self
                .store
                .get(key, None)
                .map_err(|e| FsError::io(&format!("reading journal batch {key:?}"), &e))?;
            match Batch::decode(key, &got.data) {
                Ok(b) => batches.push((key.clone(), b)),
                Err(e @ JournalError::Version { .. }) => {
                    return Err(FsError::new(libc::EPROTO, e.to_string()))
                }
                Err(e) => log::error!("{e}; skipped"),
            }
        }
        let mut s = self.lock();
        if rebuild {
            // Another mount's batch sorts before one already applied: replay all,
            // so every mount ends with the same overlay.
            s.base = Overlay::default();
            s.applied.clear();
        }
        for (key, b) in &batches {
            if s.applied.insert(key.clone()) {
                for r in &b.records {
                    s.base.apply(r);
                }
            }
        }
        let mut overlay = s.base.clone();
        for r in s.in_flight.iter().chain(s.pending.iter()) {
            overlay.apply(r);
        }
        s.overlay = overlay;
        Ok(true)
    }

    /// Stores what is left and stops the committer (unmount).
    pub fn shutdown(&self) {
        if let Err(e) = self.sync_all() {
            log::error!("unmount: {}", e.message);
        }
        self.lock().stop = true;
        self.changed.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::journal::{Attrs, Shape};
    use crate::store::memory::MemoryStore;

    fn mkdir(p: &str) -> Record {
        Record::Mkdir {
            path: p.into(),
            attrs: Attrs::default(),
        }
    }

    #[test]
    fn records_are_visible_at_once_and_stored_by_sync() {
        let store = Arc::new(MemoryStore::new());
        let j = Journal::open(store.clone()).expect("open");
        let t = j.record(vec![mkdir("a"), mkdir("b")]);
        assert!(j.with_overlay(|o| o.get("a").is_some()));
        j.sync(t).expect("sync");
        assert_eq!(store.calls("PutObject"), 1, "one batch for both records");
        // A second mount replays them.
        let other = Journal::open(store.clone()).expect("open");
        assert_eq!(
            other.with_overlay(|o| o.get("b").map(|e| e.shape.clone())),
            Some(Shape::Dir)
        );
        j.shutdown();
        other.shutdown();
    }

    #[test]
    fn a_mount_sees_another_mounts_batches_after_reload() {
        let store = Arc::new(MemoryStore::new());
        let a = Journal::open(store.clone()).expect("open");
        let b = Journal::open(store.clone()).expect("open");
        let t = a.record(vec![mkdir("from-a")]);
        a.sync(t).expect("sync");
        assert!(b.with_overlay(|o| o.get("from-a").is_none()));
        assert!(b.reload().expect("reload"));
        assert!(b.with_overlay(|o| o.get("from-a").is_some()));
        assert!(!b.reload().expect("reload"), "nothing new the second time");
        a.shutdown();
        b.shutdown();
    }

    #[test]
    fn unmount_stores_pending_records() {
        let store = Arc::new(MemoryStore::new());
        let j = Journal::open(store.clone()).expect("open");
        j.record(vec![mkdir("late")]);
        j.shutdown();
        let again = Journal::open(store.clone()).expect("open");
        assert!(again.with_overlay(|o| o.get("late").is_some()));
        again.shutdown();
    }
}
