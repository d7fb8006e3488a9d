//! What the kernel holds (FUSE lookup counts) and what the table lets go of
//! when the kernel forgets: a directory the kernel no longer holds keeps its
//! own entry (part of its parent's listing) but drops everything beneath it,
//! unless something there is still held. Never drops an entry the kernel
//! holds, an open file or a file being written; never touches the network.

use super::{Table, ROOT};
use crate::fs::view::node::{Kind, Origin};

impl Table {
    /// The kernel was given entry `ino` (a reply to lookup, create, mkdir,
    /// mknod, symlink, link or readdirplus): one more reference it will
    /// `forget`.
    pub fn remember(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        match self.nodes.get_mut(&ino) {
            Some(n) => n.kernel = n.kernel.saturating_add(1),
            None => *self.ghosts.entry(ino).or_default() += 1,
        }
    }

    /// The kernel's references to `ino`.
    pub fn kernel_refs(&self, ino: u64) -> u64 {
        match self.nodes.get(&ino) {
            Some(n) => u64::from(n.kernel),
            None => self.ghosts.get(&ino).copied().unwrap_or(0),
        }
    }

    /// The kernel let go of `n` references to `ino`. Returns whether it
    /// holds none now. Entries it no longer needs leave the table, now or,
    /// while something holds the table still (`hold`), when that ends.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            if let Some(c) = self.ghosts.get_mut(&ino) {
                *c = c.saturating_sub(n);
                if *c == 0 {
                    self.ghosts.remove(&ino);
                }
            }
            return !self.ghosts.contains_key(&ino);
        };
        if node.kernel == 0 {
            return true;
        }
        // At u32::MAX the count is no longer exact: it stays.
        if node.kernel < u32::MAX {
            node.kernel = u32::try_from(u64::from(node.kernel).saturating_sub(n)).unwrap_or(0);
        }
        if node.kernel > 0 {
            return false;
        }
        if self.holds > 0 {
            self.deferred.push(ino);
        } else {
            self.evicted += self.let_go(ino);
        }
        true
    }

    /// After evictions: maps sized for the entries that left give their
    /// room back (a map never shrinks on its own; at a million entries the
    /// inode map alone is 34 MiB).
    pub fn shrink(&mut self) {
        let roomy = |len: usize, cap: usize| cap > 4 * len + 1024;
        if roomy(self.nodes.len(), self.nodes.capacity()) {
            self.nodes.shrink_to_fit();
        }
        if roomy(self.children.len(), self.children.capacity()) {
            self.children.shrink_to_fit();
        }
        if roomy(self.subdirs.len(), self.subdirs.capacity()) {
            self.subdirs.shrink_to_fit();
        }
    }

    /// Entries that left the table since the last call.
    pub fn take_evicted(&mut self) -> usize {
        std::mem::take(&mut self.evicted)
    }

    /// Nothing leaves the table until the matching `release`: for an
    /// operation that lists a subtree and then acts on all of it (a rename
    /// of a directory records every entry beneath it).
    pub fn hold(&mut self) {
        self.holds += 1;
    }

    /// Ends a `hold`; the last one lets go of what was forgotten meanwhile.
    pub fn release(&mut self) {
        self.holds = self.holds.saturating_sub(1);
        if self.holds == 0 {
            for ino in std::mem::take(&mut self.deferred) {
                if self.kernel_refs(ino) == 0 {
                    self.evicted += self.let_go(ino);
                }
            }
        }
    }

    /// Whether something needs entry `ino` in the table: the kernel holds it,
    /// a handle has it open, or this mount is writing it.
    fn needed(&self, ino: u64) -> bool {
        self.open.contains_key(&ino)
            || self
                .get(ino)
                .is_some_and(|n| n.kernel > 0 || n.origin == Origin::Writing)
    }

    /// Whether anything beneath directory `dir` is `needed`.
    fn needed_below(&self, dir: u64) -> bool {
        let Some(c) = self.children.get(&dir) else {
            return false;
        };
        c.iter().any(|(_, &k)| {
            self.needed(k)
                || (self.get(k).is_some_and(|n| n.kind == Kind::Dir) && self.needed_below(k))
        })
    }

    /// The kernel no longer holds `ino`: the subtree of the highest directory
    /// above it (or it) that nothing needs any more leaves the table.
    /// Returns how many entries left.
    fn let_go(&mut self, ino: u64) -> usize {
        let mut gone = 0;
        let mut at = ino;
        loop {
            if at == ROOT || self.needed(at) {
                break;
            }
            let Some(n) = self.get(at) else { break };
            let parent = n.parent;
            if n.kind == Kind::Dir {
                if self.needed_below(at) {
                    break;
                }
                gone += self.drop_below(at);
            }
            at = parent;
        }
        gone
    }

    /// Drops everything beneath directory `dir` (nothing there is needed): it
    /// is no longer listed, and a lookup asks the coffer again. A hard-linked
    /// file keeps its names elsewhere. Returns how many entries left.
    fn drop_below(&mut self, dir: u64) -> usize {
        let kids: Vec<(std::sync::Arc<str>, u64)> = match self.children.get(&dir) {
            Some(c) => c
                .iter()
                .map(|(k, &i)| (std::sync::Arc::clone(k), i))
                .collect(),
            None => return 0,
        };
        let mut gone = 0;
        for (name, k) in kids {
            let Some(n) = self.get(k) else { continue };
            if n.kind == Kind::Dir {
                gone += self.drop_below(k);
            }
            let before = self.nodes.len();
            self.unlink_name(dir, &name);
            gone += before - self.nodes.len();
        }
        if let Some(n) = self.get_mut(dir) {
            n.listed = None;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::super::Table;
    use crate::fs::journal::{Attrs, Overlay, Record};
    use crate::fs::view::node::{Kind, Origin, ViewEntry, ROOT};
    use crate::store::ObjectMeta;
    use std::time::{Duration, Instant};

    fn objects(keys: &[&str]) -> Vec<ObjectMeta> {
        keys.iter()
            .map(|k| ObjectMeta {
                key: k.to_string(),
                size: 1,
                etag: "e".into(),
                last_modified: None,
            })
            .collect()
    }

    fn listed(keys: &[&str]) -> Table {
        let mut t = Table::new();
        t.apply_listing(ROOT, &objects(keys), &Overlay::default(), Instant::now());
        t
    }

    fn ino(t: &Table, path: &str) -> Option<u64> {
        let mut at = ROOT;
        for part in path.split('/') {
            at = t.child(at, part)?.ino;
        }
        Some(at)
    }

    const KEYS: &[&str] = &["a/b/1", "a/b/2", "a/c/3", "a/4", "top"];

    #[test]
    fn a_directory_the_kernel_forgot_drops_its_subtree_and_keeps_its_own_entry() {
        let mut t = listed(KEYS);
        let a = ino(&t, "a").expect("a");
        let b1 = ino(&t, "a/b/1").expect("a/b/1");
        t.remember(a);
        t.remember(a);
        assert!(!t.forget(a, 1), "one reference is left");
        assert_eq!(t.len(), 9);
        assert!(t.forget(a, 1));
        assert_eq!(t.take_evicted(), 6, "b, c and what is in them, and a/4");
        assert_eq!(t.len(), 3, "the root, a and top");
        assert!(ino(&t, "a/b").is_none());
        // `a` is no longer listed: a lookup in it asks the coffer again.
        assert!(!t.listed_within(a, Duration::from_secs(60)));
        assert!(t.listed_within(ROOT, Duration::from_secs(60)));
        // A new listing gives every entry its number again.
        let again = listed(KEYS);
        t.apply_listing(ROOT, &objects(KEYS), &Overlay::default(), Instant::now());
        assert_eq!(ino(&t, "a/b/1"), Some(b1));
        assert_eq!(ino(&again, "a/b/1"), Some(b1));
    }

    #[test]
    fn nothing_the_kernel_holds_or_a_handle_has_open_leaves_the_table() {
        let mut t = listed(KEYS);
        let (a, b, b1, c3) = (
            ino(&t, "a").expect("a"),
            ino(&t, "a/b").expect("a/b"),
            ino(&t, "a/b/1").expect("a/b/1"),
            ino(&t, "a/c/3").expect("a/c/3"),
        );
        for i in [a, b, b1] {
            t.remember(i);
        }
        t.pin(c3);
        // The kernel forgets a first (it may: it holds b by number).
        t.forget(a, 1);
        assert_eq!(t.take_evicted(), 0, "b/1 is held, c/3 is open");
        t.forget(b1, 1);
        t.forget(b, 1);
        assert_eq!(t.take_evicted(), 2, "b/1 and b/2; b stays, an entry of a");
        assert!(
            ino(&t, "a/b").is_some(),
            "b is an entry of a, which still holds c/3"
        );
        assert!(ino(&t, "a/c/3").is_some());
        // The open file closes: the next forget above it lets all go.
        t.unpin(c3);
        t.remember(a);
        t.forget(a, 1);
        assert_eq!(ino(&t, "a/b"), None);
        assert_eq!(ino(&t, "a/c"), None);
        assert!(ino(&t, "a").is_some());
    }

    #[test]
    fn the_kernels_references_to_a_removed_entry_stay_counted_for_its_return() {
        let mut t = listed(KEYS);
        let top = ino(&t, "top").expect("top");
        t.remember(top);
        t.remember(top);
        t.remove(top);
        assert_eq!(t.kernel_refs(top), 2, "the kernel still holds it");
        assert!(!t.forget(top, 1));
        // The same path again: the same number, and the kernel's reference.
        let again = listed(KEYS);
        t.apply_listing(ROOT, &objects(KEYS), &Overlay::default(), Instant::now());
        assert_eq!(ino(&t, "top"), ino(&again, "top"));
        assert_eq!(t.kernel_refs(top), 1);
        let a = ino(&t, "a").expect("a");
        t.remember(a);
        t.forget(a, 1);
        assert_eq!(ino(&t, "top"), Some(top), "a held entry stays");
        assert!(t.forget(top, 1));
        assert_eq!(t.kernel_refs(top), 0);
    }

    #[test]
    fn a_file_being_written_keeps_its_directory() {
        let mut t = listed(KEYS);
        let a = ino(&t, "a").expect("a");
        let entry = ViewEntry {
            kind: Kind::File,
            size: 0,
            data: None,
            target: None,
            attrs: Attrs::default(),
            mtime: std::time::SystemTime::now(),
        };
        let w = t
            .upsert(a, "new", entry, Origin::Writing, Instant::now())
            .expect("new");
        t.remember(a);
        t.forget(a, 1);
        assert_eq!(t.take_evicted(), 0);
        assert_eq!(ino(&t, "a/new"), Some(w));
    }

    #[test]
    fn a_hold_keeps_every_entry_until_it_ends() {
        let mut t = listed(KEYS);
        let a = ino(&t, "a").expect("a");
        t.remember(a);
        t.hold();
        t.forget(a, 1);
        assert_eq!(t.len(), 9, "nothing leaves while held");
        t.release();
        assert_eq!(t.len(), 3);
        // Looked up again meanwhile: nothing to let go of.
        t.remember(a);
        t.hold();
        t.forget(a, 1);
        t.remember(a);
        t.release();
        assert_eq!(t.take_evicted(), 6);
    }

    #[test]
    fn a_hard_linked_file_keeps_its_names_outside_what_is_dropped() {
        let mut o = Overlay::default();
        let linked = Attrs {
            link: Some(7),
            ..Attrs::default()
        };
        for p in ["d/x", "e/y"] {
            o.apply(&Record::Bind {
                path: p.into(),
                key: "k".into(),
                size: 3,
                etag: "e".into(),
                attrs: linked,
            });
        }
        let mut t = Table::new();
        t.apply_listing(ROOT, &[], &o, Instant::now());
        let (d, f) = (ino(&t, "d").expect("d"), ino(&t, "d/x").expect("d/x"));
        assert_eq!(ino(&t, "e/y"), Some(f));
        t.remember(d);
        t.forget(d, 1);
        assert_eq!(ino(&t, "d/x"), None);
        assert_eq!(ino(&t, "e/y"), Some(f), "its other name stays");
        assert_eq!(t.get(f).map(|n| n.path()).as_deref(), Some("e/y"));
    }
}
