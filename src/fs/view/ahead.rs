//! Listing read-ahead for directory walkers (`find`, `du`, `rsync`): opening a
//! directory soon after a sibling before it in name order (or opening the
//! first subdirectory of a directory just opened) lists the next few sibling
//! directories in the background, and the first few subdirectories of the
//! one opened, where the walk goes down next; so the coffer's listing
//! overlaps the walker's own work, as the block cache reads ahead for a
//! sequential reader. Owns the detection, the workers and the bounds on
//! speculation; a lone `ls` triggers nothing, and no FUSE thread waits here.

use super::node::{Kind, Node, ROOT};
use super::Table;
use crate::fs::{lock, Fs};
use crate::transfer::pool::Pool;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::flight::Claim;

/// How recently a sibling must have been opened for an open to be a walk.
const WALK_WINDOW: Duration = Duration::from_secs(5);

/// Directories listed ahead of a walker, per level.
const AHEAD: usize = 2;

/// Entries looked at around the opened one to find sibling directories:
/// a directory of many files is not scanned through.
const SCAN: usize = 64;

/// Listings queued or running at once; more are dropped, never waited for.
const MAX_PENDING: usize = 4;

/// Worker threads: listings ahead of two levels of a walk at once.
const THREADS: usize = 2;

/// Directories whose last opened child `Walks` remembers; past it the
/// stale ones go, and all of them if none is stale.
const WALKS_KEPT: usize = 1024;

/// Which child of each directory was opened last, and when.
#[derive(Default)]
struct Walks {
    last: HashMap<u64, (Arc<str>, Instant)>,
    root: Option<Instant>,
}

impl Walks {
    /// Whether `name` of `parent` is the child opened last there, recently.
    fn just_opened(&self, parent: u64, name: &str, now: Instant) -> bool {
        self.last
            .get(&parent)
            .is_some_and(|(n, at)| &**n == name && now.duration_since(*at) < WALK_WINDOW)
    }

    /// Directory `name` of `parent` is being opened: records it, and says
    /// whether a sibling before it was opened recently (a walk over them).
    fn open(&mut self, parent: u64, name: &Arc<str>, now: Instant) -> bool {
        let walk = self
            .last
            .get(&parent)
            .is_some_and(|(n, at)| **n < **name && now.duration_since(*at) < WALK_WINDOW);
        if self.last.len() >= WALKS_KEPT && !self.last.contains_key(&parent) {
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) < WALK_WINDOW);
            if self.last.len() >= WALKS_KEPT {
                self.last.clear();
            }
        }
        self.last.insert(parent, (Arc::clone(name), now));
        walk
    }
}

/// The read-ahead workers and what they are asked to do.
pub struct ReadAhead {
    pool: Pool,
    walks: Mutex<Walks>,
    /// Directories queued or being listed ahead.
    pending: Mutex<HashSet<u64>>,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead {
            pool: Pool::new("list-ahead", THREADS),
            walks: Mutex::default(),
            pending: Mutex::default(),
        }
    }
}

impl ReadAhead {
    /// Unmount: listings still queued end at once (they find the mount
    /// stopping), one in progress at its next child; then the workers end.
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }
}

impl Fs {
    /// Directory `dir` is being opened: if that continues a walk over its
    /// siblings (one before it was opened recently) or starts one (it is
    /// the first subdirectory of a directory just opened), the next `AHEAD`
    /// sibling directories not listed within the TTL are listed in the
    /// background. Returns whether it is a walk.
    pub(in crate::fs) fn walking(&self, dir: &Node) -> bool {
        let now = Instant::now();
        if dir.ino == ROOT {
            lock(&self.ahead.walks).root = Some(now);
            return false;
        }
        let ahead: Vec<u64> = {
            let t = lock(&self.table);
            let mut w = lock(&self.ahead.walks);
            let siblings = w.open(dir.parent, &dir.name, now);
            let down = || {
                let parent_just_opened = match t.get(dir.parent) {
                    Some(p) if p.ino == ROOT => w
                        .root
                        .is_some_and(|at| now.duration_since(at) < WALK_WINDOW),
                    Some(p) => w.just_opened(p.parent, &p.name, now),
                    None => false,
                };
                parent_just_opened && t.is_first_subdir(dir.parent, &dir.name, SCAN)
            };
            if !(siblings || down()) {
                return false;
            }
            self.unlisted(&t, t.next_subdirs(dir.parent, &dir.name, AHEAD, SCAN))
        };
        for ino in ahead {
            self.list_ahead(ino);
        }
        true
    }

    /// A walker is in directory `dir`, listed now: it goes down into its
    /// first subdirectories next, so the first `AHEAD` of them not listed
    /// within the TTL are listed in the background (what a walk would
    /// otherwise wait for each time it goes down into a new subtree).
    pub(in crate::fs) fn walked_into(&self, dir: &Node) {
        let ahead = {
            let t = lock(&self.table);
            // Most directories a walk enters are leaves: no scan of their files.
            if t.subdirs(dir.ino) == 0 {
                return;
            }
            self.unlisted(&t, t.next_subdirs(dir.ino, "", AHEAD, SCAN))
        };
        for ino in ahead {
            self.list_ahead(ino);
        }
    }

    /// Those of `dirs` not listed within the TTL.
    fn unlisted(&self, t: &Table, dirs: Vec<u64>) -> Vec<u64> {
        let ttl = self.cfg.metadata_ttl;
        dirs.into_iter()
            .filter(|&i| !t.listed_within(i, ttl))
            .collect()
    }

    /// Queues a background listing of directory `ino`, unless it is queued
    /// already or the queue is full (then it is dropped: a walker that gets
    /// there first lists it itself).
    fn list_ahead(&self, ino: u64) {
        {
            let mut pending = lock(&self.ahead.pending);
            if pending.contains(&ino) {
                return;
            }
            if pending.len() >= MAX_PENDING {
                log::debug!("read-ahead: {MAX_PENDING} listings pending; not listing {ino}");
                return;
            }
            pending.insert(ino);
        }
        let me = self.me.clone();
        let queued = self.ahead.pool.submit(move || {
            if let Some(fs) = me.upgrade() {
                fs.listed_ahead(ino);
                lock(&fs.ahead.pending).remove(&ino);
            }
        });
        if queued.is_err() {
            lock(&self.ahead.pending).remove(&ino);
        }
    }

    /// A worker's listing of directory `ino`: none if the mount is stopping,
    /// the directory is gone, listed within the TTL, or being listed (a
    /// walker got there first). Errors are only logged: the walker's own
    /// listing retries and reports.
    fn listed_ahead(&self, ino: u64) {
        let stopping = || self.stopping.load(Ordering::Relaxed);
        if stopping() {
            return;
        }
        let ttl = self.cfg.metadata_ttl;
        let fresh = || lock(&self.table).listed_within(ino, ttl);
        let dir = {
            let t = lock(&self.table);
            match t.get(ino) {
                Some(n) if n.kind == Kind::Dir && !t.listed_within(ino, ttl) => n.clone(),
                _ => return,
            }
        };
        let Claim::Mine(_mine) = self.flights.claim(ino) else {
            return;
        };
        if fresh() {
            return;
        }
        match self.list_dir_unless(&dir, stopping) {
            Ok(()) => log::debug!("read-ahead: listed {:?}", dir.path()),
            Err(e) => log::debug!("read-ahead: {}", e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_after_an_earlier_sibling_is_a_walk_and_a_lone_one_is_not() {
        let mut w = Walks::default();
        let t0 = Instant::now();
        let name = |s: &str| -> Arc<str> { Arc::from(s) };
        assert!(!w.open(1, &name("b"), t0), "the first open in 1");
        assert!(w.just_opened(1, "b", t0));
        assert!(!w.open(1, &name("b"), t0), "the same one again");
        assert!(!w.open(1, &name("a"), t0), "one before it");
        assert!(w.open(1, &name("c"), t0), "one after a: a walk");
        assert!(!w.open(2, &name("d"), t0), "another directory's children");
        let later = t0 + WALK_WINDOW;
        assert!(!w.open(1, &name("d"), later), "too long after c");
        assert!(!w.just_opened(2, "d", later));
    }

    #[test]
    fn walks_forget_old_directories_past_their_bound() {
        let mut w = Walks::default();
        let t0 = Instant::now();
        let x: Arc<str> = Arc::from("x");
        for d in 0..WALKS_KEPT as u64 {
            w.open(d, &x, t0);
        }
        let later = t0 + WALK_WINDOW;
        w.open(WALKS_KEPT as u64, &x, later);
        assert_eq!(w.last.len(), 1, "only the fresh one stays");
        for d in 0..2 * WALKS_KEPT as u64 {
            w.open(d, &x, later);
        }
        assert!(w.last.len() <= WALKS_KEPT);
    }
}
