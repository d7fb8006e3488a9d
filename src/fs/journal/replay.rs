//! The journal's life in a mount, the reading half: the newest checkpoint and
//! the batches after it at start, other mounts' batches on reload, and writing
//! checkpoints. A batch of a later format turns the mount read-only. Knows
//! nothing of inodes or FUSE; appending and committing live in `committer`.

use super::committer::{Committer, State};
use super::fetch::{fetch_in_order, Fetched};
use super::format::{
    checkpoint_key, Checkpoint, JournalError, Overlay, Record, CHECKPOINT_PREFIX, JOURNAL_PREFIX,
};
use crate::fs::error::{FsError, FsResult};
use crate::store::ListAll;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a reload changed in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Nothing,
    /// The paths other mounts' new records name.
    Paths {
        /// What these paths are changed (made, bound, hidden…).
        entries: BTreeSet<String>,
        /// Only attributes or extended attributes of these changed.
        attrs: BTreeSet<String>,
    },
    /// Anything may have changed: batches were replayed from the checkpoint.
    All,
}

impl Touched {
    fn note(&mut self, r: &Record) {
        let Touched::Paths { entries, attrs } = self else {
            return;
        };
        match r {
            Record::Unknown => {}
            Record::Attr { path, .. } | Record::Xattr { path, .. } => {
                attrs.insert(path.clone());
            }
            _ => {
                entries.insert(r.path().to_string());
            }
        }
    }
}

/// Batches stored up to this long after a later one are still found by an
/// incremental reload (clock skew between mounts, slow commits).
const LATE_WINDOW: Duration = Duration::from_secs(300);

impl Committer {
    /// Replays the coffer's journal at a mount's start: the newest readable
    /// checkpoint, then every batch after it.
    pub(super) fn start(&self) -> FsResult<()> {
        let started = Instant::now();
        let (overlay, floor, key) = match self.load_checkpoint()? {
            Some((key, c)) => (c.overlay, c.upto, Some(key)),
            None => (Overlay::default(), String::new(), None),
        };
        let loaded = started.elapsed();
        {
            let mut s = self.lock();
            s.checkpoint = key.clone();
            s.floor = floor.clone();
        }
        self.replay_after(overlay, &floor)?;
        let s = self.lock();
        log::info!(
            "journal: checkpoint {key:?} ({loaded:?}), then {} batches, {} records, up to {:?} \
             ({:?})",
            s.since_checkpoint,
            s.records_since_checkpoint,
            s.applied.iter().next_back(),
            started.elapsed()
        );
        Ok(())
    }

    /// The newest readable checkpoint, if any, with its key.
    fn load_checkpoint(&self) -> FsResult<Option<(String, Checkpoint)>> {
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
                Ok(c) => return Ok(Some((key.clone(), c))),
                Err(e @ JournalError::Version { .. }) => {
                    // Start from an older one; the batches after it say the rest,
                    // up to the first of the later format.
                    self.note_newer(&mut self.lock(), &e);
                }
                Err(e) => log::warn!("{e}; trying an older checkpoint"),
            }
        }
        Ok(None)
    }

    /// Applies to `start`, the overlay of the checkpoint whose last batch is
    /// `floor` (none: empty, ""), every batch after `floor` in key order, and
    /// makes the result the mount's base: what a fresh mount would build.
    /// Batches are fetched in parallel, a window ahead of applying, and moved
    /// into the overlay as they come (not held all at once). Batches this
    /// mount found unusable before are not read again.
    fn replay_after(&self, mut start: Overlay, floor: &str) -> FsResult<()> {
        let skipped = self.lock().skipped.clone();
        let keys = ListAll::after(self.store.as_ref(), JOURNAL_PREFIX, floor)
            .map(|r| {
                r.map(|m| m.key)
                    .map_err(|e| FsError::io(&format!("listing {JOURNAL_PREFIX:?}"), &e))
            })
            .filter(|r| r.as_ref().map_or(true, |k| !skipped.contains(k)));
        let mut applied = BTreeSet::new();
        let (mut bad, mut newer, mut records) = (Vec::new(), None, 0);
        fetch_in_order(self.store.as_ref(), keys, |key, got| {
            match got {
                Fetched::Batch(b) => {
                    records += b.records.len() as u64;
                    for r in b.records {
                        start.apply_owned(r);
                    }
                    applied.insert(key);
                }
                Fetched::Skipped => bad.push(key),
                Fetched::Newer(e) => {
                    // Later records may build on this batch's: applying them
                    // without it could show what never was. Stop here.
                    newer = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        let mut s = self.lock();
        s.skipped.extend(bad);
        if let Some(e) = &newer {
            self.note_newer(&mut s, e);
            s.halted = true;
        }
        s.since_checkpoint = applied.len() as u64;
        s.records_since_checkpoint = records;
        s.applied = applied;
        s.out_of_order = false;
        s.base = start;
        // The view: the base and what this mount has not stored yet.
        s.rebuild_overlay();
        Ok(())
    }

    /// The overlay of checkpoint `key` (none: the empty one), read again from
    /// the coffer for a replay from it: a mount keeps no copy in memory.
    fn checkpoint_overlay(&self, key: Option<&str>) -> FsResult<Overlay> {
        let Some(key) = key else {
            return Ok(Overlay::default());
        };
        let got = self
            .store
            .get(key, None)
            .map_err(|e| FsError::io(&format!("reading checkpoint {key:?}"), &e))?;
        Checkpoint::decode(key, &got.data)
            .map(|c| c.overlay)
            .map_err(|e| FsError::new(libc::EIO, e.to_string()))
    }

    /// Keys under `prefix` (journal batches or checkpoints) after `after`.
    pub(super) fn list_keys(&self, prefix: &str, after: &str) -> FsResult<Vec<String>> {
        ListAll::after(self.store.as_ref(), prefix, after)
            .map(|r| r.map(|m| m.key))
            .collect::<Result<_, _>>()
            .map_err(|e| FsError::io(&format!("listing {prefix:?}"), &e))
    }

    /// Remembers that the coffer holds an object of a later format: from now on
    /// the mount is read-only. Logs one line, the first time only.
    pub(super) fn note_newer(&self, s: &mut State, e: &JournalError) {
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
        Ok(self.reload_touched()? != Touched::Nothing)
    }

    /// `reload`, saying which paths the new records name.
    pub fn reload_touched(&self) -> FsResult<Touched> {
        let (floor, window, checkpoint) = {
            let s = self.lock();
            if s.halted {
                return Ok(Touched::Nothing);
            }
            let from = s
                .last_micros()
                .saturating_sub(LATE_WINDOW.as_micros() as u64);
            let window = format!("{JOURNAL_PREFIX}{from:020}");
            (
                s.floor.clone(),
                window.max(s.floor.clone()),
                s.checkpoint.clone(),
            )
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
            let rebuild = s.out_of_order
                || match (&last, new.first()) {
                    (Some(l), Some(f)) => f < l,
                    _ => false,
                };
            (new, rebuild)
        };
        if new.is_empty() && !rebuild {
            return Ok(Touched::Nothing);
        }
        if rebuild {
            // Another mount's batch sorts before one already applied: replay all
            // since the checkpoint, so every mount ends with the same overlay.
            let start = self.checkpoint_overlay(checkpoint.as_deref())?;
            self.replay_after(start, &floor)?;
            return Ok(Touched::All);
        }
        let mut batches = Vec::with_capacity(new.len());
        let (mut bad, mut newer) = (Vec::new(), None);
        fetch_in_order(self.store.as_ref(), new.into_iter().map(Ok), |key, got| {
            match got {
                Fetched::Batch(b) => batches.push((key, b)),
                Fetched::Skipped => bad.push(key),
                Fetched::Newer(e) => {
                    newer = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        let mut guard = self.lock();
        let s = &mut *guard;
        s.skipped.extend(bad);
        if let Some(e) = &newer {
            self.note_newer(s, e);
            s.halted = true;
        }
        let mut touched = Touched::Paths {
            entries: BTreeSet::new(),
            attrs: BTreeSet::new(),
        };
        // With nothing of this mount's waiting, the overlay is the base: the
        // batches go into both, and nothing is copied.
        let same = s.in_flight.is_empty() && s.pending.is_empty();
        let mut changed = false;
        for (key, b) in batches {
            // The committer may have applied its own batch meanwhile.
            if s.applied.insert(key) {
                s.since_checkpoint += 1;
                s.records_since_checkpoint += b.records.len() as u64;
                for r in b.records {
                    touched.note(&r);
                    if same {
                        s.base.apply(&r);
                        s.overlay.apply_owned(r);
                    } else {
                        s.base.apply_owned(r);
                    }
                }
                changed = true;
            }
        }
        if !changed {
            return Ok(Touched::Nothing);
        }
        if !same {
            s.rebuild_overlay();
        }
        Ok(touched)
    }

    /// Starts writing a checkpoint on a thread of its own, unless one is
    /// being written (a later batch asks again).
    pub(super) fn start_checkpoint(self: &Arc<Self>) {
        let mut slot = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Some(t) = slot.take() {
            let _ = t.join();
        }
        let me = Arc::clone(self);
        match std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || me.write_checkpoint())
        {
            Ok(t) => *slot = Some(t),
            Err(e) => log::warn!("cannot start a thread to write a journal checkpoint: {e}"),
        }
    }

    /// Waits for the checkpoint being written, if any.
    pub(super) fn await_checkpoint(&self) {
        let t = self
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// Stores the replayed overlay as a checkpoint, so later mounts read it
    /// instead of every batch before it.
    pub(super) fn write_checkpoint(&self) {
        // Encoded under the lock, not copied: a copy would hold it about as
        // long (and cost the memory). The lock is held for time linear in the
        // overlay, logged below.
        let started = Instant::now();
        let (upto, body, batches, records) = {
            let s = self.lock();
            if s.newer.is_some() {
                // It would claim to cover batches of the later format that it
                // leaves out.
                return;
            }
            match s.applied.iter().next_back() {
                Some(k) => (
                    k.clone(),
                    Checkpoint::encode_of(k, &s.base),
                    s.since_checkpoint,
                    s.records_since_checkpoint,
                ),
                None => return,
            }
        };
        let encoded = started.elapsed();
        let key = checkpoint_key(&upto, &self.mount_id);
        let size = body.len();
        match self.store.put(&key, Bytes::from(body)) {
            Ok(_) => {
                let mut s = self.lock();
                if upto > s.floor {
                    s.checkpoint = Some(key.clone());
                    s.floor = upto;
                }
                // What was applied while it was written counts towards the next.
                s.since_checkpoint = s.since_checkpoint.saturating_sub(batches);
                s.records_since_checkpoint = s.records_since_checkpoint.saturating_sub(records);
                log::info!(
                    "journal checkpoint {key:?} written: {size} bytes, encoded in {encoded:?} \
                     holding the journal lock, stored in {:?}",
                    started.elapsed() - encoded
                );
            }
            Err(e) => log::warn!("writing journal checkpoint {key:?}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_records::mkdir;
    use super::*;
    use crate::fs::journal::CheckpointRule;
    use crate::fs::journal::{batch_key, now_micros, Attrs, Batch, Record};
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;

    fn file(p: &str, mode: u32) -> Record {
        Record::File {
            path: p.into(),
            attrs: Attrs {
                mode: Some(mode),
                ..Attrs::default()
            },
        }
    }

    #[test]
    fn a_batch_a_reload_found_before_its_answer_is_applied_once_in_key_order() {
        use crate::store::faulty::{FaultyStore, Ledger};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{OnceLock, Weak};
        let mem = Arc::new(MemoryStore::new());
        let faulty = FaultyStore::new(mem.clone(), Ledger::new());
        let a_cell: Arc<OnceLock<Weak<Committer>>> = Arc::new(OnceLock::new());
        let b = Committer::open(mem.clone()).expect("open b");
        let fired = AtomicBool::new(false);
        let (cell, other) = (Arc::clone(&a_cell), Arc::clone(&b));
        // When a's batch has landed, before a hears so: another mount stores a
        // later batch for the same path, and a reloads (finding both).
        faulty.after_put(move |key| {
            if key.starts_with(JOURNAL_PREFIX) && !fired.swap(true, Ordering::SeqCst) {
                let t = other.record(vec![file("x", 0o644)]);
                other.sync(t).expect("b stores");
                if let Some(a) = cell.get().and_then(Weak::upgrade) {
                    a.reload().expect("a reloads");
                }
            }
        });
        let a = Committer::open(faulty.clone()).expect("open a");
        let _ = a_cell.set(Arc::downgrade(&a));
        let t = a.record(vec![file("x", 0o600)]);
        a.sync(t).expect("a stores");
        let mode = |j: &Committer| j.with_overlay(|o| o.get("x").and_then(|e| e.attrs.mode));
        // b's batch sorts after a's: every mount ends with b's mode.
        assert_eq!(mode(&a), Some(0o644), "a applied its own batch again, last");
        let fresh = Committer::open(mem.clone()).expect("open fresh");
        assert_eq!(mode(&fresh), Some(0o644));
        a.shutdown(false);
        b.shutdown(false);
        fresh.shutdown(false);
    }

    #[test]
    fn a_mount_sees_another_mounts_batches_after_reload() {
        let store = Arc::new(MemoryStore::new());
        let a = Committer::open(store.clone()).expect("open");
        let b = Committer::open(store.clone()).expect("open");
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
    fn a_reload_says_which_paths_the_new_records_name() {
        let store = Arc::new(MemoryStore::new());
        let a = Committer::open(store.clone()).expect("open");
        let b = Committer::open(store.clone()).expect("open");
        let t = a.record(vec![
            mkdir("d/made"),
            Record::Hide {
                path: "gone".into(),
            },
            Record::Attr {
                path: "d".into(),
                attrs: crate::fs::journal::Attrs::default(),
            },
        ]);
        a.sync(t).expect("sync");
        let set = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            b.reload_touched().expect("reload"),
            Touched::Paths {
                entries: set(&["d/made", "gone"]),
                attrs: set(&["d"]),
            }
        );
        assert_eq!(b.reload_touched().expect("reload"), Touched::Nothing);
        a.shutdown(true);
        b.shutdown(true);
    }

    #[test]
    fn a_checkpoint_bounds_what_the_next_mount_reads() {
        let store = Arc::new(MemoryStore::new());
        let j = Committer::open_with(store.clone(), every(3)).expect("open");
        for i in 0..7 {
            let t = j.record(vec![mkdir(&format!("d{i}"))]);
            j.sync(t).expect("sync");
            j.await_checkpoint();
        }
        j.shutdown(true);
        let gets_before = store.calls("GetObject");
        let again = Committer::open(store.clone()).expect("open");
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

    #[test]
    fn a_replay_from_the_checkpoint_reads_it_again_and_keeps_no_copy() {
        let store = Arc::new(MemoryStore::new());
        let j = Committer::open_with(store.clone(), every(2)).expect("open");
        let mut times = Vec::new();
        for i in 0..3 {
            let t = j.record(vec![mkdir(&format!("d{i}"))]);
            j.sync(t).expect("sync");
            j.await_checkpoint();
            times.push(j.lock().last_micros());
            // Batch keys apart by more than a microsecond: one fits between.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let floor = j.lock().floor.clone();
        assert!(!floor.is_empty(), "a checkpoint was written");
        // Another mount's batch that sorts between the checkpoint's last batch
        // and a later one: the view is replayed from the checkpoint.
        let between = times[1] + (times[2] - times[1]) / 2;
        assert!(between > times[1] && between < times[2], "{times:?}");
        put_raw(&store, between, &batch_of(vec![mkdir("other")]));
        let gets = store.calls("GetObject");
        assert!(j.reload().expect("reload"));
        for p in ["d0", "d1", "d2", "other"] {
            assert!(j.with_overlay(|o| o.get(p).is_some()), "{p}");
        }
        assert!(
            store.calls("GetObject") > gets + 1,
            "the checkpoint was read again"
        );
        let fresh = Committer::open(store.clone()).expect("open");
        assert_eq!(fresh.lock().overlay, j.lock().overlay);
        j.shutdown(false);
        fresh.shutdown(false);
    }

    /// A checkpoint after `batches` batches, whatever their records.
    fn every(batches: u64) -> CheckpointRule {
        CheckpointRule {
            batches,
            records: u64::MAX,
        }
    }

    fn checkpoints(store: &dyn ObjectStore) -> Vec<String> {
        ListAll::new(store, CHECKPOINT_PREFIX)
            .map(|m| m.expect("list").key)
            .collect()
    }

    /// Records of many kinds about `n` paths: new ones, rebinds, attributes,
    /// xattrs, hard links, hides.
    fn varied(round: u64, n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let path = format!("d{}/f{}", i % 3, (round * 7 + i) % 11);
                let attrs = Attrs {
                    mode: Some(0o600 + (round as u32 % 8)),
                    mtime: Some((round as i64, i as u32).into()),
                    ..Attrs::default()
                };
                match (round + i) % 6 {
                    0 => Record::Hide { path },
                    1 => Record::Attr { path, attrs },
                    2 => Record::Xattr {
                        path,
                        name: "user.k".into(),
                        value: Some(format!("{round:02x}")),
                    },
                    3 => Record::Bind {
                        key: format!(".cofferfs/data/{round}-{i}"),
                        size: i,
                        etag: "e".into(),
                        attrs: Attrs {
                            link: Some(1 + i % 2),
                            ..attrs
                        },
                        path,
                    },
                    _ => Record::Bind {
                        key: path.clone(),
                        path,
                        size: round,
                        etag: "e".into(),
                        attrs,
                    },
                }
            })
            .collect()
    }

    /// Every batch in the coffer, replayed from the first.
    fn full_replay(store: &dyn ObjectStore) -> Overlay {
        let batches: Vec<Batch> = ListAll::new(store, JOURNAL_PREFIX)
            .map(|m| {
                let key = m.expect("list").key;
                let got = store.get(&key, None).expect("get");
                Batch::decode(&key, &got.data).expect("decode")
            })
            .collect();
        Overlay::replay(&batches)
    }

    #[test]
    fn a_checkpoint_is_written_after_enough_records_however_few_the_batches() {
        let store = Arc::new(MemoryStore::new());
        let rule = CheckpointRule {
            batches: 1000,
            records: 10,
        };
        let j = Committer::open_with(store.clone(), rule).expect("open");
        let stored = |round: u64, n: u64| {
            let t = j.record(varied(round, n));
            j.sync(t).expect("sync");
            j.await_checkpoint();
        };
        stored(1, 4);
        stored(2, 4);
        assert_eq!(
            checkpoints(store.as_ref()),
            Vec::<String>::new(),
            "8 records"
        );
        stored(3, 4);
        let written = checkpoints(store.as_ref());
        assert_eq!(written.len(), 1, "12 records in 3 batches: {written:?}");
        let upto = j
            .lock()
            .applied
            .iter()
            .next_back()
            .cloned()
            .expect("applied");
        assert_eq!(written[0], checkpoint_key(&upto, &j.mount_id));
        // The count starts again from it: 6 more records write none, at
        // unmount neither (fewer than the rule's 10).
        stored(4, 3);
        stored(5, 3);
        j.shutdown(true);
        assert_eq!(checkpoints(store.as_ref()).len(), 1);
        // A mount reads the checkpoint and the two batches after it, and
        // shows what a replay of every batch from the first shows.
        let gets = store.calls("GetObject");
        let again = Committer::open(store.clone()).expect("open");
        assert_eq!(store.calls("GetObject") - gets, 3);
        let full = full_replay(store.as_ref());
        assert!(full.entries().count() > 3, "{full:?}");
        assert_eq!(again.lock().overlay, full);
        assert_eq!(again.lock().base, full);
        // Hard links are rebuilt from the checkpoint too.
        let links = |o: &Overlay| (o.links(1), o.links(2));
        assert_eq!(links(&again.lock().overlay), links(&full));
        again.shutdown(false);
    }

    #[test]
    fn a_mount_replaying_from_a_record_checkpoint_matches_a_full_replay() {
        let store = Arc::new(MemoryStore::new());
        let rule = CheckpointRule {
            batches: 1000,
            records: 25,
        };
        let j = Committer::open_with(store.clone(), rule).expect("open");
        for round in 0..20 {
            let t = j.record(varied(round, 1 + round % 9));
            j.sync(t).expect("sync");
            j.await_checkpoint();
        }
        j.shutdown(false);
        let written = checkpoints(store.as_ref());
        assert!(written.len() >= 3, "{written:?}");
        let full = full_replay(store.as_ref());
        assert_eq!(j.lock().base, full, "the writer's own view");
        let again = Committer::open(store.clone()).expect("open");
        assert_eq!(again.lock().checkpoint.as_ref(), written.last());
        assert_eq!(again.lock().overlay, full);
        assert_eq!(again.lock().records_since_checkpoint, {
            let s = j.lock();
            s.records_since_checkpoint
        });
        again.shutdown(false);
    }

    #[test]
    fn a_batch_is_stored_while_a_checkpoint_is_still_on_its_way() {
        use crate::store::faulty::{FaultyStore, Ledger};
        use std::sync::{Condvar, Mutex};
        let mem = Arc::new(MemoryStore::new());
        let faulty = FaultyStore::new(mem.clone(), Ledger::new());
        // A checkpoint's PUT lands, then its answer waits for the gate.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = Arc::clone(&gate);
        faulty.after_put(move |key| {
            if key.starts_with(CHECKPOINT_PREFIX) {
                let (open, cv) = &*g;
                let open = open.lock().unwrap_or_else(|p| p.into_inner());
                let _ = cv.wait_timeout_while(open, Duration::from_secs(10), |o| !*o);
            }
        });
        let j = Committer::open_with(faulty.clone(), every(1)).expect("open");
        let t = j.record(vec![mkdir("a")]);
        j.sync(t).expect("sync");
        let deadline = Instant::now() + Duration::from_secs(10);
        while checkpoints(mem.as_ref()).is_empty() {
            assert!(Instant::now() < deadline, "no checkpoint was written");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The checkpoint waits at the gate: a close's batch does not.
        let started = Instant::now();
        let t = j.record(vec![mkdir("b")]);
        j.store_or_withdraw(t).expect("stored");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!*gate.0.lock().expect("gate"), "the gate opened");
        *gate.0.lock().expect("gate") = true;
        gate.1.notify_all();
        j.shutdown(false);
        assert_eq!(
            j.lock().floor,
            checkpoint_upto(&checkpoints(mem.as_ref())[0])
        );
    }

    /// The batch key a checkpoint key covers up to.
    fn checkpoint_upto(key: &str) -> String {
        let stem = key
            .strip_prefix(CHECKPOINT_PREFIX)
            .and_then(|k| k.strip_suffix(".json"))
            .and_then(|k| k.rsplit_once('-'))
            .map(|(s, _)| s)
            .expect("a checkpoint key");
        format!("{JOURNAL_PREFIX}{stem}.json")
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
        let j = Committer::open(store.clone()).expect("open despite a damaged batch");
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
        let v3 = put_raw(
            &store,
            t0 + 1,
            r#"{"format":"cofferfs-journal","version":3,"mount":"m","seq":1,"records":[]}"#,
        );
        put_raw(&store, t0 + 2, &batch_of(vec![mkdir("after")]));
        let j = Committer::open(store.clone()).expect("open");
        let why = j.newer_format().expect("the later format is reported");
        assert!(why.contains(&v3) && why.contains("version 3"), "{why}");
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
        let j = Committer::open(store.clone()).expect("open");
        assert!(!j.read_only());
        put_raw(
            &store,
            now_micros(),
            r#"{"format":"cofferfs-journal","version":3}"#,
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
                Bytes::from(r#"{"format":"cofferfs-checkpoint","version":3}"#),
            )
            .expect("put");
        let j = Committer::open(store.clone()).expect("open");
        assert!(j.read_only());
        assert!(j.with_overlay(|o| o.get("d").is_some()));
        j.shutdown(true);
    }
}
