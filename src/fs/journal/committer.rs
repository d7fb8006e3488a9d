//! The journal's life in a mount, the writing half: records appended now are
//! visible at once and stored by group commit (within a second, on sync, at
//! unmount). Owns the committer thread and the shared state; reading other
//! mounts' batches and checkpoints lives in `replay`. Owns only
//! `.cofferfs/journal/` and `.cofferfs/checkpoint/`; knows nothing of inodes or FUSE.

use super::format::{batch_key, Attrs, Batch, Overlay, Record, JOURNAL_PREFIX};
use crate::fs::error::{FsError, FsResult};
use crate::protocol::{hex, md5};
use crate::store::{landed, ObjectStore};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a record may wait before its batch goes up.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// A checkpoint is written after this many batches since the last one, or
/// this many records, whichever comes first: a replay after the newest
/// checkpoint reads at most so many batches and so many records...
pub const CHECKPOINT_EVERY: u64 = 1000;
pub const CHECKPOINT_RECORDS: u64 = 100_000;
/// ...and at unmount after this many batches or records.
pub const CHECKPOINT_AT_UNMOUNT: u64 = 100;
pub const CHECKPOINT_RECORDS_AT_UNMOUNT: u64 = 10_000;

/// When a mount writes a checkpoint: after `batches` batches or `records`
/// records applied since the last one (read or written), whichever comes
/// first; at unmount after `CHECKPOINT_AT_UNMOUNT` batches or
/// `CHECKPOINT_RECORDS_AT_UNMOUNT` records (or the rule's own, when lower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRule {
    pub batches: u64,
    pub records: u64,
}

impl CheckpointRule {
    pub const DEFAULT: CheckpointRule = CheckpointRule {
        batches: CHECKPOINT_EVERY,
        records: CHECKPOINT_RECORDS,
    };

    /// Never (a mount that writes none).
    pub const NEVER: CheckpointRule = CheckpointRule {
        batches: u64::MAX,
        records: u64::MAX,
    };

    fn due(&self, batches: u64, records: u64) -> bool {
        batches >= self.batches || records >= self.records
    }

    fn due_at_unmount(&self, batches: u64, records: u64) -> bool {
        batches >= CHECKPOINT_AT_UNMOUNT.min(self.batches)
            || records >= CHECKPOINT_RECORDS_AT_UNMOUNT.min(self.records)
    }
}

#[derive(Default)]
pub(super) struct State {
    /// The newest checkpoint read or written (its key; a replay from it reads
    /// it again) and the last batch key it covers (batches up to it are not
    /// read again).
    pub(super) checkpoint: Option<String>,
    pub(super) floor: String,
    /// Batches, and their records, applied since that checkpoint.
    pub(super) since_checkpoint: u64,
    pub(super) records_since_checkpoint: u64,
    /// The coffer's batches replayed, in key order.
    pub(super) base: Overlay,
    /// `base` plus the records not yet stored: what the mount shows.
    pub(super) overlay: Overlay,
    pub(super) applied: BTreeSet<String>,
    /// `base` applied a batch of this mount's after a later one: the next
    /// reload replays from the checkpoint in key order.
    pub(super) out_of_order: bool,
    /// Batches that cannot be used (damaged, or gone between listing and
    /// reading): reported once, never fetched again by this mount.
    pub(super) skipped: BTreeSet<String>,
    /// The first object of a later format met (a batch or checkpoint): the
    /// mount is read-only from then on and writes no checkpoint.
    pub(super) newer: Option<String>,
    /// A batch of a later format was met: the view stays as of the batch
    /// before it and later batches are not read.
    pub(super) halted: bool,
    /// Records being stored now, then those waiting, each with its number
    /// (records are numbered 1, 2, … in the order they were appended).
    pub(super) in_flight: Vec<(u64, Record)>,
    pub(super) pending: Vec<(u64, Record)>,
    pub(super) appended: u64,
    /// Every record numbered up to this is stored or withdrawn.
    pub(super) committed: u64,
    pub(super) seq: u64,
    /// The last commit's failure, until a commit succeeds.
    pub(super) failure: Option<String>,
    /// Batch attempts started, and the number of the last that failed.
    pub(super) attempts: u64,
    pub(super) last_failed: u64,
    pub(super) flush: bool,
    pub(super) stop: bool,
    /// `record_times`: the number of each path's waiting times record it
    /// may still update in place. Forgotten when `pending` leaves for a batch.
    pub(super) times_at: BTreeMap<String, u64>,
}

impl State {
    /// Numbers and queues `records`, showing them in the overlay at once. A
    /// record that names a path, or hides it or a path above it, ends
    /// `record_times`'s folding into that path's waiting record.
    fn append(&mut self, records: Vec<Record>) -> Ticket {
        let first = self.appended + 1;
        for r in records {
            if let Some(p) = record_path(&r) {
                self.times_at.remove(p);
            }
            if let Record::Hide { path: h } = &r {
                let below: Vec<String> = self
                    .times_at
                    .range::<str, _>((Bound::Excluded(h.as_str()), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(h.as_str()))
                    .filter(|(k, _)| is_under(k, h))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in below {
                    self.times_at.remove(&k);
                }
            }
            self.overlay.apply(&r);
            self.appended += 1;
            let n = self.appended;
            self.pending.push((n, r));
        }
        Ticket {
            first,
            last: self.appended,
        }
    }

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
    pub(super) fn rebuild_overlay(&mut self) {
        let mut overlay = self.base.clone();
        for (_, r) in self.in_flight.iter().chain(self.pending.iter()) {
            overlay.apply(r);
        }
        self.overlay = overlay;
    }

    /// The time of the newest batch applied (0 for none).
    pub(super) fn last_micros(&self) -> u64 {
        self.applied.iter().next_back().map_or(0, |k| key_micros(k))
    }
}

pub struct Committer {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) mount_id: String,
    pub(super) checkpoints: CheckpointRule,
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    pub(super) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The thread writing a checkpoint, if one was started.
    pub(super) checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A ticket: the numbers of records appended together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    first: u64,
    last: u64,
}

pub(crate) use crate::protocol::time::now_micros;

/// The time part of a batch key.
fn key_micros(key: &str) -> u64 {
    key.strip_prefix(JOURNAL_PREFIX)
        .and_then(|r| r.split('-').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

impl Committer {
    /// Replays the coffer's journal and starts the committer.
    pub fn open(store: Arc<dyn ObjectStore>) -> Result<Arc<Committer>, FsError> {
        Committer::open_with(store, CheckpointRule::DEFAULT)
    }

    /// As `open`, writing checkpoints by `rule`.
    pub fn open_with(
        store: Arc<dyn ObjectStore>,
        rule: CheckpointRule,
    ) -> Result<Arc<Committer>, FsError> {
        use rand::Rng;
        let mount_id = format!("{:016x}", rand::rng().random::<u64>());
        let j = Arc::new(Committer {
            store,
            mount_id,
            checkpoints: CheckpointRule {
                batches: rule.batches.max(1),
                records: rule.records.max(1),
            },
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
            checkpointer: Mutex::new(None),
        });
        j.start()?;
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the overlay (the view's journal part, own unsaved records included).
    pub fn with_overlay<R>(&self, f: impl FnOnce(&Overlay) -> R) -> R {
        f(&self.lock().overlay)
    }

    /// Appends records: visible at once, stored within `COMMIT_INTERVAL`.
    pub fn record(&self, records: Vec<Record>) -> Ticket {
        let mut s = self.lock();
        let ticket = s.append(records);
        self.changed.notify_all();
        ticket
    }

    /// Appends `attr` of `path` setting `attrs` (a directory's times when its
    /// entries change). If an earlier call's record for `path` still waits,
    /// no record since names the path or hides it, and `attrs` sets every
    /// field it set, that record is updated in place instead: the effect is
    /// the same, and a directory that gains 1000 files in one batch costs one
    /// record, not 1000. It keeps its number, so whoever waits for it waits
    /// for the new times.
    pub fn record_times(&self, path: &str, attrs: Attrs) -> Ticket {
        let record = Record::Attr {
            path: path.to_string(),
            attrs,
        };
        let mut s = self.lock();
        let slot = s.times_at.get(path).and_then(|&n| {
            let i = s.pending.binary_search_by_key(&n, |(m, _)| *m).ok()?;
            match &s.pending[i].1 {
                Record::Attr {
                    path: p,
                    attrs: old,
                } if p == path && covers(&attrs, old) => Some(i),
                _ => None,
            }
        });
        let ticket = match slot {
            Some(i) => {
                s.overlay.apply(&record);
                let n = s.pending[i].0;
                s.pending[i].1 = record;
                Ticket { first: n, last: n }
            }
            None => {
                let t = s.append(vec![record]);
                s.times_at.insert(path.to_string(), t.last);
                t
            }
        };
        self.changed.notify_all();
        ticket
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
        let mine = |n: &u64| (ticket.first..=ticket.last).contains(n);
        // Only records still waiting need a batch now; those in flight are on
        // their way, and other records wait for the group commit.
        if s.pending.iter().any(|(n, _)| mine(n)) {
            s.flush = true;
            self.changed.notify_all();
        }
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
                s.times_at.clear();
                s.seq += 1;
                s.attempts += 1;
                let key = batch_key(now_micros().max(s.last_micros() + 1), &self.mount_id, s.seq);
                let records = s.in_flight.iter().map(|(_, r)| r.clone()).collect();
                let mut batch = Batch::new(&self.mount_id, s.seq, records);
                batch.writer = Some(super::writer::this_process().clone());
                (batch, key)
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
                    // A reload may have applied this batch already (it found it
                    // stored before its answer came back): never apply it twice.
                    let in_order = if s.applied.insert(key.clone()) {
                        for r in &batch.records {
                            s.base.apply(r);
                        }
                        s.since_checkpoint += 1;
                        s.records_since_checkpoint += n;
                        // Applied after a later batch of another mount, out of the
                        // key order every mount replays in: the next reload
                        // replays everything in that order.
                        let last = s.applied.iter().next_back() == Some(&key);
                        s.out_of_order |= !last;
                        last
                    } else {
                        false
                    };
                    s.in_flight.clear();
                    if !in_order {
                        // The overlay showed these records on top of batches
                        // that in fact came after them.
                        s.rebuild_overlay();
                    }
                    s.advance_committed();
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
            if !failed
                && self
                    .checkpoints
                    .due(s.since_checkpoint, s.records_since_checkpoint)
            {
                // On a thread of its own: closes waiting for their batches
                // do not wait for a checkpoint's upload. Started before they
                // hear of this batch, so a sync is followed by the checkpoint
                // it made due (`await_checkpoint`).
                self.start_checkpoint();
            }
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

    /// Stores what is left and stops the committer (unmount).
    /// `checkpoint`: whether this mount may write one (not when read-only).
    pub fn shutdown(&self, checkpoint: bool) {
        if let Err(e) = self.sync_all() {
            log::error!("unmount: {}", e.message);
        }
        self.await_checkpoint();
        let due = checkpoint && {
            let s = self.lock();
            self.checkpoints
                .due_at_unmount(s.since_checkpoint, s.records_since_checkpoint)
        };
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
        // A checkpoint already on its way covers stored batches only: it
        // may land, as it could before a crash.
        self.await_checkpoint();
    }
}

/// Whether `new` sets every field `old` sets.
fn covers(new: &Attrs, old: &Attrs) -> bool {
    (old.mode.is_none() || new.mode.is_some())
        && (old.uid.is_none() || new.uid.is_some())
        && (old.gid.is_none() || new.gid.is_some())
        && (old.mtime.is_none() || new.mtime.is_some())
        && (old.ctime.is_none() || new.ctime.is_some())
        && (old.atime.is_none() || new.atime.is_some())
        && (old.link.is_none() || new.link.is_some())
}

/// Whether `path` is `top` or beneath it.
fn is_under(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The path a record is about.
fn record_path(r: &Record) -> Option<&str> {
    match r {
        Record::Attr { path, .. }
        | Record::Mkdir { path, .. }
        | Record::File { path, .. }
        | Record::Symlink { path, .. }
        | Record::Bind { path, .. }
        | Record::Special { path, .. }
        | Record::Xattr { path, .. }
        | Record::Hide { path } => Some(path),
        Record::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_records::mkdir;
    use super::*;
    use crate::fs::journal::Shape;
    use crate::store::memory::MemoryStore;

    #[test]
    fn records_are_visible_at_once_and_stored_by_sync() {
        let store = Arc::new(MemoryStore::new());
        let j = Committer::open(store.clone()).expect("open");
        let t = j.record(vec![mkdir("a"), mkdir("b")]);
        assert!(j.with_overlay(|o| o.get("a").is_some()));
        j.sync(t).expect("sync");
        assert_eq!(store.calls("PutObject"), 1, "one batch for both records");
        // A second mount replays them.
        let other = Committer::open(store.clone()).expect("open");
        assert_eq!(
            other.with_overlay(|o| o.get("b").map(|e| e.shape.clone())),
            Some(Shape::Dir)
        );
        j.shutdown(true);
        other.shutdown(true);
    }

    /// A committer with no thread: what `record` leaves waiting stays put.
    fn idle() -> Committer {
        Committer {
            store: Arc::new(MemoryStore::new()),
            mount_id: "0".repeat(16),
            checkpoints: CheckpointRule::DEFAULT,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
            checkpointer: Mutex::new(None),
        }
    }

    #[test]
    fn a_directorys_times_fold_into_one_waiting_record_unless_the_path_changed_between() {
        let j = idle();
        let times = |t| Attrs {
            mtime: Some((t, 0).into()),
            ctime: Some((t, 0).into()),
            ..Attrs::default()
        };
        j.record(vec![mkdir("d/a")]);
        let first = j.record_times("d", times(1));
        j.record(vec![mkdir("d/b")]);
        assert_eq!(j.record_times("d", times(2)), first, "updated in place");
        assert_eq!(j.lock().pending.len(), 3);
        // A hide of the path (or above it) in between: a record of its own.
        j.record(vec![Record::Hide { path: "d".into() }]);
        j.record(vec![mkdir("d")]);
        let after_hide = j.record_times("d", times(3));
        assert_ne!(after_hide, first);
        // So does a hide above it.
        let below = j.record_times("d/x", times(3));
        j.record(vec![Record::Hide { path: "d".into() }]);
        assert_ne!(j.record_times("d/x", times(3)), below);
        j.record(vec![mkdir("d")]);
        // An earlier record that sets more than times is never folded into.
        let mode = Attrs {
            mode: Some(0o700),
            ..times(4)
        };
        j.record(vec![Record::Attr {
            path: "d".into(),
            attrs: mode,
        }]);
        j.record_times("d", times(5));
        j.record_times("d/b", times(6));
        j.record_times("d", times(7));
        let s = j.lock();
        let attrs_of_d: Vec<Attrs> = s
            .pending
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Attr { path, attrs } if path == "d" => Some(*attrs),
                _ => None,
            })
            .collect();
        assert_eq!(attrs_of_d, [times(2), times(3), mode, times(7)]);
        // What is stored replays to what the mount showed.
        let records: Vec<Record> = s.pending.iter().map(|(_, r)| r.clone()).collect();
        let stored = Overlay::replay([&Batch::new("m", 1, records)]);
        assert_eq!(stored, s.overlay);
        assert_eq!(
            stored.attrs("d").map(|a| (a.mode, a.mtime)),
            Some((Some(0o700), Some((7, 0).into())))
        );
    }

    #[test]
    fn unmount_stores_pending_records() {
        let store = Arc::new(MemoryStore::new());
        let j = Committer::open(store.clone()).expect("open");
        j.record(vec![mkdir("late")]);
        j.shutdown(true);
        let again = Committer::open(store.clone()).expect("open");
        assert!(again.with_overlay(|o| o.get("late").is_some()));
        again.shutdown(true);
    }
}
