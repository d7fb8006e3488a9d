//! The journal's life in a mount: replay at start, group commit of new records
//! (within a second, on sync, at unmount), reload of other mounts' batches.
//! Owns only `.cofferfs/journal/`; knows nothing of inodes or FUSE.

use super::error::{FsError, FsResult};
use super::journal::{
    batch_key, checkpoint_key, Batch, Checkpoint, JournalError, Overlay, Record, CHECKPOINT_PREFIX,
    JOURNAL_PREFIX,
};
use crate::protocol::{hex, md5};
use crate::store::{landed, ListAll, ObjectStore};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a record may wait before its batch goes up.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// A checkpoint is written after this many batches since the last one...
pub const CHECKPOINT_EVERY: u64 = 1000;
/// ...and at unmount after this many.
pub const CHECKPOINT_AT_UNMOUNT: u64 = 100;

/// Batches stored up to this long after a later one are still found by an
/// incremental reload (clock skew between mounts, slow commits).
const LATE_WINDOW: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    /// The newest checkpoint read or written: its overlay and the last batch
    /// key it covers (batches up to it are not read again).
    checkpoint: Overlay,
    floor: String,
    /// Batches applied since that checkpoint.
    since_checkpoint: u64,
    /// The coffer's batches replayed, in key order.
    base: Overlay,
    /// `base` plus the records not yet stored: what the mount shows.
    overlay: Overlay,
    applied: BTreeSet<String>,
    /// Batches that cannot be used (damaged, or gone between listing and
    /// reading): reported once, never fetched again by this mount.
    skipped: BTreeSet<String>,
    /// The first object of a later format met (a batch or checkpoint): the
    /// mount is read-only from then on and writes no checkpoint.
    newer: Option<String>,
    /// A batch of a later format was met: the view stays as of the batch
    /// before it and later batches are not read.
    halted: bool,
    /// Records being stored now, then those waiting, each with its number
    /// (records are numbered 1, 2, … in the order they were appended).
    in_flight: Vec<(u64, Record)>,
    pending: Vec<(u64, Record)>,
    appended: u64,
    /// Every record numbered up to this is stored or withdrawn.
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

impl State {
    /// Moves `committed` up to just before the oldest record still outstanding.
    fn advance_committed(&mut self) {
        self.committed = self
            .in_flight
            .iter()
            .chain(self.pending.iter())
            .map(|(n, _)| n - 1)
            .min()
            .unwrap_or(self.appended);
    }

    /// `base` plus the records not yet stored.
    fn rebuild_overlay(&mut self) {
        let mut overlay = self.base.clone();
        for (_, r) in self.in_flight.iter().chain(self.pending.iter()) {
            overlay.apply(r);
        }
        self.overlay = overlay;
    }

    /// The time of the newest batch applied (0 for none).
    fn last_micros(&self) -> u64 {
        self.applied.iter().next_back().map_or(0, |k| key_micros(k))
    }
}

pub struct Journal {
    store: Arc<dyn ObjectStore>,
    mount_id: String,
    checkpoint_every: u64,
    state: Mutex<State>,
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A ticket: the numbers of records appended together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    first: u64,
    last: u64,
}

/// Microseconds since the Unix epoch (0 before it): the time part of keys.
pub(crate) fn now_micros() -> u64 {
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
        Journal::open_with(store, CHECKPOINT_EVERY)
    }

    /// As `open`, writing a checkpoint every `checkpoint_every` batches.
    pub fn open_with(
        store: Arc<dyn ObjectStore>,
        checkpoint_every: u64,
    ) -> Result<Arc<Journal>, FsError> {
        use rand::Rng;
        let mount_id = format!("{:016x}", rand::rng().random::<u64>());
        let j = Arc::new(Journal {
            store,
            mount_id,
            checkpoint_every: checkpoint_every.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        j.load_checkpoint()?;
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
        let first = s.appended + 1;
        for r in records {
            s.overlay.apply(&r);
            s.appended += 1;
            let n = s.appended;
            s.pending.push((n, r));
        }
        self.changed.notify_all();
        Ticket {
            first,
            last: s.appended,
        }
    }

    /// Stores everything appended up to `ticket` now; fails when a batch attempt
    /// made after this call fails (the records stay queued and are retried).
    pub fn sync(&self, ticket: Ticket) -> FsResult<()> {
        self.wait_stored(ticket, false)
    }

    /// Stores the records of `ticket` now, or, when a batch attempt made after
    /// this call fails, withdraws them: they never land later and the view no
    /// longer shows them. For records whose failure the caller reports (close).
    pub fn store_or_withdraw(&self, ticket: Ticket) -> FsResult<()> {
        self.wait_stored(ticket, true)
    }

    fn wait_stored(&self, ticket: Ticket, withdraw: bool) -> FsResult<()> {
        let mut s = self.lock();
        let started = s.attempts;
        s.flush = true;
        self.changed.notify_all();
        let mine = |n: &u64| (ticket.first..=ticket.last).contains(n);
        while s.committed < ticket.last {
            // A batch holding some of these records is on its way: its outcome decides.
            let sending = withdraw && s.in_flight.iter().any(|(n, _)| mine(n));
            if s.last_failed > started && !sending {
                let why = s.failure.clone().unwrap_or_default();
                if withdraw {
                    s.pending.retain(|(n, _)| !mine(n));
                    s.advance_committed();
                    s.rebuild_overlay();
                    self.changed.notify_all();
                    log::warn!(
                        "metadata of a failed close withdrawn ({} records): {why}",
                        ticket.last + 1 - ticket.first
                    );
                }
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
        let last = self.lock().appended;
        self.sync(Ticket { first: 1, last })
    }

    fn commit_loop(self: Arc<Self>) {
        loop {
            let (batch, key) = {
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
                let key = batch_key(now_micros().max(s.last_micros() + 1), &self.mount_id, s.seq);
                let records = s.in_flight.iter().map(|(_, r)| r.clone()).collect();
                (Batch::new(&self.mount_id, s.seq, records), key)
            };
            let n = batch.records.len() as u64;
            let body = Bytes::from(batch.encode());
            let result = match self.store.put(&key, body.clone()) {
                // The request may have landed and only its answer been lost:
                // a batch that is there is stored, whatever the answer said.
                Err(e) => {
                    let md5 = hex(&md5(&body));
                    match landed(self.store.as_ref(), &key, body.len() as u64, Some(&md5)) {
                        Ok(Some(etag)) => Ok(etag),
                        _ => Err(e),
                    }
                }
                ok => ok,
            };
            let mut s = self.lock();
            let failed = match result {
                Ok(_) => {
                    for r in &batch.records {
                        s.base.apply(r);
                    }
                    s.applied.insert(key);
                    s.in_flight.clear();
                    s.advance_committed();
                    s.failure = None;
                    s.since_checkpoint += 1;
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
            let checkpoint_due = !failed && s.since_checkpoint >= self.checkpoint_every;
            drop(s);
            if checkpoint_due {
                self.write_checkpoint();
            }
            if failed {
                if stopping {
                    // Unmounting and the coffer refuses: the log said what is lost.
                    return;
                }
                std::thread::sleep(COMMIT_INTERVAL);
            }
        }
    }

    /// Starts from the newest readable checkpoint, if any.
    fn load_checkpoint(&self) -> FsResult<()> {
        let keys = self.list_keys(CHECKPOINT_PREFIX, "")?;
        for key in keys.iter().rev() {
            let got = match self.store.get(key, None) {
                Ok(g) => g,
                Err(e) => {
                    log::warn!("reading checkpoint {key:?}: {e}; trying an older one");
                    continue;
                }
            };
            match Checkpoint::decode(key, &got.data) {
                Ok(c) => {
                    let mut s = self.lock();
                    s.base = c.overlay.clone();
                    s.overlay = c.overlay.clone();
                    s.checkpoint = c.overlay;
                    s.floor = c.upto;
                    return Ok(());
                }
                Err(e @ JournalError::Version { .. }) => {
                    // Start from an older one; the batches after it say the rest,
                    // up to the first of the later format.
                    self.note_newer(&mut self.lock(), &e);
                }
                Err(e) => log::warn!("{e}; trying an older checkpoint"),
            }
        }
        Ok(())
    }

    /// Keys under `prefix` (journal batches or checkpoints) after `after`.
    fn list_keys(&self, prefix: &str, after: &str) -> FsResult<Vec<String>> {
        ListAll::after(self.store.as_ref(), prefix, after)
            .map(|r| r.map(|m| m.key))
            .collect::<Result<_, _>>()
            .map_err(|e| FsError::io(&format!("listing {prefix:?}"), &e))
    }

    /// Remembers that the coffer holds an object of a later format: from now on
    /// the mount is read-only. Logs one line, the first time only.
    fn note_newer(&self, s: &mut State, e: &JournalError) {
        if s.newer.is_some() {
            log::debug!("{e}");
            return;
        }
        let why = format!(
            "{e}: mounted read-only (writes fail with EROFS); the view shows the journal up to \
             the first batch of the later format; a newer cofferfs shows and changes the rest"
        );
        log::warn!("{why}");
        s.newer = Some(why);
    }

    /// Whether the mount must be read-only (`newer_format` says why).
    pub fn read_only(&self) -> bool {
        self.lock().newer.is_some()
    }

    /// Why the mount must be read-only: the coffer holds a journal object of a
    /// later format (see docs/journal.md). `None` while all is readable.
    pub fn newer_format(&self) -> Option<String> {
        self.lock().newer.clone()
    }

    /// Reads batches other mounts stored since the last look. Returns whether
    /// the overlay changed. A damaged batch is logged once and skipped; a batch
    /// of a later format ends replay for good (`newer_format`).
    pub fn reload(&self) -> FsResult<bool> {
        let (floor, window) = {
            let s = self.lock();
            if s.halted {
                return Ok(false);
            }
            let from = s
                .last_micros()
                .saturating_sub(LATE_WINDOW.as_micros() as u64);
            let window = format!("{JOURNAL_PREFIX}{from:020}");
            (s.floor.clone(), window.max(s.floor.clone()))
        };
        let keys = self.list_keys(JOURNAL_PREFIX, &window)?;
        let (new, rebuild) = {
            let s = self.lock();
            let last = s.applied.iter().next_back().cloned();
            let new: Vec<String> = keys
                .iter()
                .filter(|k| !s.applied.contains(*k) && !s.skipped.contains(*k))
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
        let wanted = if rebuild {
            self.list_keys(JOURNAL_PREFIX, &floor)?
        } else {
            new
        };
        let skipped = self.lock().skipped.clone();
        let mut batches = Vec::with_capacity(wanted.len());
        let mut bad = Vec::new();
        let mut newer = None;
        for key in wanted.iter().filter(|k| !skipped.contains(*k)) {
            let got = match self.store.get(key, None) {
                Ok(g) => g,
                Err(e) if e.is_not_found() => {
                    log::warn!("journal batch {key:?} is gone (expired?): {e}; skipped");
                    bad.push(key.clone());
                    continue;
                }
                Err(e) => {
                    return Err(FsError::io(&format!("reading journal batch {key:?}"), &e));
                }
            };
            match Batch::decode(key, &got.data) {
                Ok(b) => batches.push((key.clone(), b)),
                Err(e @ JournalError::Version { .. }) => {
                    // Later records may build on this batch's: applying them
                    // without it could show what never was. Stop here.
                    newer = Some(e);
                    break;
                }
                Err(e) => {
                    log::error!("{e}; skipped (this mount will not read it again)");
                    bad.push(key.clone());
                }
            }
        }
        let mut s = self.lock();
        s.skipped.extend(bad);
        if let Some(e) = &newer {
            self.note_newer(&mut s, e);
            s.halted = true;
        }
        if rebuild {
            // Another mount's batch sorts before one already applied: replay all
            // since the checkpoint, so every mount ends with the same overlay.
            s.base = s.checkpoint.clone();
            s.applied.clear();
            s.since_checkpoint = 0;
        }
        let mut changed = rebuild;
        for (key, b) in &batches {
            if s.applied.insert(key.clone()) {
                for r in &b.records {
                    s.base.apply(r);
                }
                s.since_checkpoint += 1;
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        s.rebuild_overlay();
        Ok(true)
    }

    /// Stores the replayed overlay as a checkpoint, so later mounts read it
    /// instead of every batch before it.
    fn write_checkpoint(&self) {
        let (upto, overlay) = {
            let s = self.lock();
            if s.newer.is_some() {
                // It would claim to cover batches of the later format that it
                // leaves out.
                return;
            }
            match s.applied.iter().next_back() {
                Some(k) => (k.clone(), s.base.clone()),
                None => return,
            }
        };
        let key = checkpoint_key(&upto, &self.mount_id);
        match self.store.put(
            &key,
            Bytes::from(Checkpoint::new(&upto, overlay.clone()).encode()),
        ) {
            Ok(_) => {
                let mut s = self.lock();
                s.checkpoint = overlay;
                s.floor = upto;
                s.since_checkpoint = 0;
                log::info!("journal checkpoint {key:?} written");
            }
            Err(e) => log::warn!("writing journal checkpoint {key:?}: {e}"),
        }
    }

    /// Stores what is left and stops the committer (unmount).
    /// `checkpoint`: whether this mount may write one (not when read-only).
    pub fn shutdown(&self, checkpoint: bool) {
        if let Err(e) = self.sync_all() {
            log::error!("unmount: {}", e.message);
        }
        let due = checkpoint
            && self.lock().since_checkpoint >= CHECKPOINT_AT_UNMOUNT.min(self.checkpoint_every);
        if due {
            self.write_checkpoint();
        }
        self.lock().stop = true;
        self.changed.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// Test seam (tests/model.rs models a crash with it): stops the committer at
    /// once and drops the records not yet stored, as a killed process would.
    pub fn abandon(&self) {
        {
            let mut s = self.lock();
            s.pending.clear();
            s.stop = true;
        }
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
        j.shutdown(true);
        other.shutdown(true);
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
        a.shutdown(true);
        b.shutdown(true);
    }

    #[test]
    fn a_checkpoint_bounds_what_the_next_mount_reads() {
        let store = Arc::new(MemoryStore::new());
        let j = Journal::open_with(store.clone(), 3).expect("open");
        for i in 0..7 {
            let t = j.record(vec![mkdir(&format!("d{i}"))]);
            j.sync(t).expect("sync");
        }
        j.shutdown(true);
        let gets_before = store.calls("GetObject");
        let again = Journal::open(store.clone()).expect("open");
        for i in 0..7 {
            assert!(
                again.with_overlay(|o| o.get(&format!("d{i}")).is_some()),
                "d{i}"
            );
        }
        // One checkpoint and the one batch after it, not all seven batches.
        assert_eq!(store.calls("GetObject") - gets_before, 2);
        again.shutdown(true);
    }

    fn put_raw(store: &MemoryStore, micros: u64, body: &str) -> String {
        let key = batch_key(micros, "00000000000000ff", 1);
        store.put(&key, Bytes::from(body.to_string())).expect("put");
        key
    }

    fn batch_of(records: Vec<Record>) -> String {
        String::from_utf8(Batch::new("00000000000000aa", 1, records).encode()).expect("utf-8")
    }

    #[test]
    fn a_damaged_batch_is_fetched_once_and_later_batches_still_apply() {
        let store = Arc::new(MemoryStore::new());
        let t0 = now_micros();
        put_raw(&store, t0, &batch_of(vec![mkdir("before")]));
        put_raw(&store, t0 + 1, "{not json");
        put_raw(&store, t0 + 2, &batch_of(vec![mkdir("after")]));
        let j = Journal::open(store.clone()).expect("open despite a damaged batch");
        assert!(j.with_overlay(|o| o.get("before").is_some() && o.get("after").is_some()));
        assert_eq!(j.newer_format(), None);
        let gets = store.calls("GetObject");
        assert_eq!(gets, 3, "each batch read once at open");
        for _ in 0..3 {
            assert!(!j.reload().expect("reload"), "nothing changed");
        }
        assert_eq!(
            store.calls("GetObject"),
            gets,
            "the damaged batch was read again"
        );
        // Another mount's batch still comes through, and alone.
        put_raw(&store, now_micros(), &batch_of(vec![mkdir("later")]));
        assert!(j.reload().expect("reload"));
        assert!(j.with_overlay(|o| o.get("later").is_some()));
        assert_eq!(store.calls("GetObject"), gets + 1);
        j.shutdown(true);
    }

    #[test]
    fn a_batch_of_a_later_version_opens_read_only_as_of_the_batch_before_it() {
        let store = Arc::new(MemoryStore::new());
        let t0 = now_micros();
        put_raw(&store, t0, &batch_of(vec![mkdir("before")]));
        let v2 = put_raw(
            &store,
            t0 + 1,
            r#"{"format":"cofferfs-journal","version":2,"mount":"m","seq":1,"records":[]}"#,
        );
        put_raw(&store, t0 + 2, &batch_of(vec![mkdir("after")]));
        let j = Journal::open(store.clone()).expect("open");
        let why = j.newer_format().expect("the later format is reported");
        assert!(why.contains(&v2) && why.contains("version 2"), "{why}");
        assert!(j.read_only());
        assert!(j.with_overlay(|o| o.get("before").is_some()));
        assert!(
            j.with_overlay(|o| o.get("after").is_none()),
            "a batch after the later-format one was applied"
        );
        // Reloads stop: nothing is read again, nothing fails.
        let gets = store.calls("GetObject");
        put_raw(&store, now_micros(), &batch_of(vec![mkdir("later")]));
        assert!(!j.reload().expect("reload"));
        assert_eq!(store.calls("GetObject"), gets);
        j.shutdown(true);
    }

    #[test]
    fn a_later_version_met_by_a_reload_turns_the_mount_read_only() {
        let store = Arc::new(MemoryStore::new());
        let j = Journal::open(store.clone()).expect("open");
        assert!(!j.read_only());
        put_raw(
            &store,
            now_micros(),
            r#"{"format":"cofferfs-journal","version":2}"#,
        );
        assert!(!j.reload().expect("a reload does not fail"));
        assert!(j.read_only());
        assert!(!j.reload().expect("nor does the next"));
        // What was recorded before still goes up; no checkpoint claims to
        // cover the later-format batch.
        let t = j.record(vec![mkdir("mine")]);
        j.sync(t).expect("sync");
        j.write_checkpoint();
        assert_eq!(ListAll::new(store.as_ref(), CHECKPOINT_PREFIX).count(), 0);
        j.shutdown(true);
    }

    #[test]
    fn a_checkpoint_of_a_later_version_falls_back_to_the_batches() {
        let store = Arc::new(MemoryStore::new());
        put_raw(&store, now_micros(), &batch_of(vec![mkdir("d")]));
        let cp = checkpoint_key(&batch_key(now_micros(), "00000000000000ff", 9), "ee");
        store
            .put(
                &cp,
                Bytes::from(r#"{"format":"cofferfs-checkpoint","version":2}"#),
            )
            .expect("put");
        let j = Journal::open(store.clone()).expect("open");
        assert!(j.read_only());
        assert!(j.with_overlay(|o| o.get("d").is_some()));
        j.shutdown(true);
    }

    #[test]
    fn unmount_stores_pending_records() {
        let store = Arc::new(MemoryStore::new());
        let j = Journal::open(store.clone()).expect("open");
        j.record(vec![mkdir("late")]);
        j.shutdown(true);
        let again = Journal::open(store.clone()).expect("open");
        assert!(again.with_overlay(|o| o.get("late").is_some()));
        again.shutdown(true);
    }
}
