//! The inode table: inode numbers ↔ (parent, name, key), kinds, sizes, and when the
//! coffer last confirmed each entry. Pure bookkeeping: no network, no FUSE.

use crate::store::ObjectMeta;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Instant, SystemTime};

pub const ROOT: u64 = 1;

/// The prefix cofferfs keeps for itself; never shown in the mount.
pub const RESERVED: &str = ".cofferfs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Where an entry's existence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An object in the coffer (or a directory implied by one).
    Remote,
    /// A file this mount is writing: not an object until its close succeeds.
    Writing,
    /// A directory made in this mount that holds no object yet.
    Local,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    /// The object key (files) or key prefix without the trailing `/` (dirs);
    /// empty for the root.
    pub key: String,
    pub kind: Kind,
    pub origin: Origin,
    pub size: u64,
    pub etag: Option<String>,
    pub mtime: SystemTime,
    /// Permission bits set in this mount (create/mkdir); `None` uses the mount's.
    pub perm: Option<u16>,
    /// Owner set in this mount (chown); `None` uses the mount's.
    pub owner: Option<(u32, u32)>,
    /// When the coffer last confirmed this entry (listing or HEAD).
    pub seen: Instant,
    /// Directories: when a listing last filled this subtree.
    pub listed: Option<Instant>,
}

impl Node {
    /// The key of a child called `name`.
    pub fn child_key(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.key)
        }
    }

    /// The listing prefix of this directory's subtree.
    pub fn prefix(&self) -> String {
        if self.key.is_empty() {
            String::new()
        } else {
            format!("{}/", self.key)
        }
    }
}

/// What a new entry starts as.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub kind: Kind,
    pub origin: Origin,
    pub size: u64,
    pub etag: Option<String>,
    pub mtime: SystemTime,
    pub perm: Option<u16>,
}

pub struct Table {
    nodes: HashMap<u64, Node>,
    children: HashMap<u64, BTreeMap<String, u64>>,
    next_ino: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

impl Table {
    pub fn new() -> Table {
        let now = Instant::now();
        let root = Node {
            ino: ROOT,
            parent: ROOT,
            name: String::new(),
            key: String::new(),
            kind: Kind::Dir,
            origin: Origin::Remote,
            size: 0,
            etag: None,
            mtime: SystemTime::now(),
            perm: None,
            owner: None,
            seen: now,
            listed: None,
        };
        Table {
            nodes: HashMap::from([(ROOT, root)]),
            children: HashMap::from([(ROOT, BTreeMap::new())]),
            next_ino: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<&Node> {
        let ino = self.children.get(&parent)?.get(name)?;
        self.nodes.get(ino)
    }

    /// Direct children, in name order.
    pub fn children(&self, parent: u64) -> Vec<&Node> {
        self.children
            .get(&parent)
            .map(|c| c.values().filter_map(|i| self.nodes.get(i)).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds `parent/name`, or refreshes it when present. A file this mount is
    /// writing is never replaced by what the coffer says; a directory wins over
    /// a file of the same name (the file is shadowed, as in other S3 mounts).
    pub fn upsert(&mut self, parent: u64, name: &str, new: NewNode, now: Instant) -> Option<u64> {
        let parent_key = self.nodes.get(&parent)?.child_key(name);
        if let Some(&ino) = self.children.get(&parent).and_then(|c| c.get(name)) {
            let node = self.nodes.get_mut(&ino)?;
            if node.origin == Origin::Writing && new.origin == Origin::Remote {
                return Some(ino);
            }
            if node.kind == Kind::Dir && new.kind == Kind::File {
                log::warn!(
                    "object {:?} is hidden by the directory of the same name",
                    node.key
                );
                node.seen = now;
                return Some(ino);
            }
            if node.kind == Kind::File && new.kind == Kind::Dir && node.origin != Origin::Writing {
                log::warn!(
                    "object {:?} is hidden by the directory of the same name",
                    node.key
                );
                node.kind = Kind::Dir;
                node.size = 0;
                node.etag = None;
                self.children.entry(ino).or_default();
            }
            if node.kind == Kind::File {
                node.size = new.size;
                node.etag = new.etag;
                node.mtime = new.mtime;
            }
            if !(node.origin == Origin::Local && new.origin == Origin::Local) {
                node.origin = new.origin;
            }
            node.seen = now;
            return Some(ino);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        if new.kind == Kind::Dir {
            self.children.insert(ino, BTreeMap::new());
        }
        self.nodes.insert(
            ino,
            Node {
                ino,
                parent,
                name: name.to_string(),
                key: parent_key,
                kind: new.kind,
                origin: new.origin,
                size: new.size,
                etag: new.etag,
                mtime: new.mtime,
                perm: new.perm,
                owner: None,
                seen: now,
                listed: None,
            },
        );
        self.children
            .entry(parent)
            .or_default()
            .insert(name.to_string(), ino);
        Some(ino)
    }

    /// Removes an entry and everything beneath it.
    pub fn remove(&mut self, ino: u64) {
        let Some(node) = self.nodes.remove(&ino) else {
            return;
        };
        if let Some(c) = self.children.get_mut(&node.parent) {
            if c.get(&node.name) == Some(&ino) {
                c.remove(&node.name);
            }
        }
        if let Some(kids) = self.children.remove(&ino) {
            for k in kids.into_values() {
                self.remove(k);
            }
        }
    }

    /// Marks `ino` and its ancestors as held by the coffer (an object now lies
    /// beneath them).
    pub fn mark_remote(&mut self, mut ino: u64, now: Instant) {
        while let Some(n) = self.nodes.get_mut(&ino) {
            n.origin = Origin::Remote;
            n.seen = now;
            if ino == ROOT {
                break;
            }
            ino = n.parent;
        }
    }

    /// True when a listing filled this directory less than `ttl` ago.
    pub fn listed_within(&self, ino: u64, ttl: std::time::Duration) -> bool {
        self.nodes
            .get(&ino)
            .and_then(|n| n.listed)
            .is_some_and(|t| t.elapsed() < ttl)
    }

    /// Fills the subtree of directory `dir` from a complete listing of its prefix:
    /// adds what is new, refreshes what is there, drops coffer entries the listing
    /// no longer shows, and marks every directory in it as listed.
    pub fn apply_listing(&mut self, dir: u64, objects: &[ObjectMeta], now: Instant) {
        let Some(prefix) = self.nodes.get(&dir).map(Node::prefix) else {
            return;
        };
        let mut seen: HashSet<u64> = HashSet::from([dir]);
        for obj in objects {
            let Some(rest) = obj.key.strip_prefix(&prefix) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            // `a/` markers made by other tools mean only "directory a".
            let (dirs, leaf) = match parts.split_last() {
                Some((&"", dirs)) => (dirs, None),
                Some((last, dirs)) => (dirs, Some(*last)),
                None => continue,
            };
            if dirs.iter().chain(leaf.iter()).any(|p| !usable_name(p))
                || (dir == ROOT && parts.first() == Some(&RESERVED))
            {
                log::debug!("listing: key {:?} has no path in the mount", obj.key);
                continue;
            }
            let mut at = dir;
            for d in dirs {
                let new = NewNode {
                    kind: Kind::Dir,
                    origin: Origin::Remote,
                    size: 0,
                    etag: None,
                    mtime: obj.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                    perm: None,
                };
                match self.upsert(at, d, new, now) {
                    Some(i) => {
                        seen.insert(i);
                        at = i;
                    }
                    None => break,
                }
            }
            if let Some(name) = leaf {
                let new = NewNode {
                    kind: Kind::File,
                    origin: Origin::Remote,
                    size: obj.size,
                    etag: Some(obj.etag.clone()),
                    mtime: obj.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                    perm: None,
                };
                if let Some(i) = self.upsert(at, name, new, now) {
                    seen.insert(i);
                }
            }
        }
        self.prune(dir, &seen, now);
    }

    /// Drops coffer-origin entries under `dir` that a listing did not show,
    /// keeping what this mount made; marks directories as listed. Returns
    /// whether `dir` itself must stay.
    fn prune(&mut self, dir: u64, seen: &HashSet<u64>, now: Instant) -> bool {
        let kids: Vec<u64> = self
            .children
            .get(&dir)
            .map(|c| c.values().copied().collect())
            .unwrap_or_default();
        let mut keep_any = false;
        for k in kids {
            let Some(node) = self.nodes.get(&k) else {
                continue;
            };
            let (kind, origin) = (node.kind, node.origin);
            let keep = match kind {
                Kind::Dir => {
                    let below = self.prune(k, seen, now);
                    below || origin != Origin::Remote || seen.contains(&k)
                }
                Kind::File => origin != Origin::Remote || seen.contains(&k),
            };
            if keep {
                keep_any = true;
            } else {
                self.remove(k);
            }
        }
        if let Some(n) = self.nodes.get_mut(&dir) {
            n.listed = Some(now);
        }
        keep_any || seen.contains(&dir)
    }
}

/// A key segment that can be a file name here.
pub fn usable_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.len() <= 255 && !s.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: "e".into(),
            last_modified: None,
        }
    }

    fn names(t: &Table, ino: u64) -> Vec<String> {
        t.children(ino).iter().map(|n| n.name.clone()).collect()
    }

    #[test]
    fn one_listing_fills_a_whole_subtree_with_implicit_directories() {
        let mut t = Table::new();
        let now = Instant::now();
        t.apply_listing(
            ROOT,
            &[
                obj("a/b/c.txt", 3),
                obj("a/d", 4),
                obj("e", 5),
                obj(".cofferfs/journal/1", 1),
                obj("x//y", 1),
            ],
            now,
        );
        assert_eq!(names(&t, ROOT), ["a", "e"]);
        let a = t.child(ROOT, "a").expect("a").ino;
        assert_eq!(names(&t, a), ["b", "d"]);
        let b = t.child(a, "b").expect("b");
        assert_eq!(b.kind, Kind::Dir);
        assert_eq!(b.key, "a/b");
        assert!(t.listed_within(b.ino, std::time::Duration::from_secs(5)));
        let c = t.child(b.ino, "c.txt").expect("c");
        assert_eq!((c.size, c.key.as_str()), (3, "a/b/c.txt"));
    }

    #[test]
    fn a_new_listing_drops_vanished_objects_but_keeps_what_this_mount_made() {
        let mut t = Table::new();
        let now = Instant::now();
        t.apply_listing(ROOT, &[obj("gone", 1), obj("stays", 1)], now);
        let new = |kind, origin| NewNode {
            kind,
            origin,
            size: 0,
            etag: None,
            mtime: SystemTime::now(),
            perm: None,
        };
        t.upsert(ROOT, "writing", new(Kind::File, Origin::Writing), now);
        t.upsert(ROOT, "made", new(Kind::Dir, Origin::Local), now);
        t.apply_listing(ROOT, &[obj("stays", 1), obj("writing", 9)], now);
        assert_eq!(names(&t, ROOT), ["made", "stays", "writing"]);
        // The listing never overrides a file being written.
        assert_eq!(t.child(ROOT, "writing").map(|n| n.size), Some(0));
    }

    #[test]
    fn a_directory_shadows_an_object_of_the_same_name() {
        let mut t = Table::new();
        t.apply_listing(ROOT, &[obj("a", 1), obj("a/b", 2)], Instant::now());
        assert_eq!(t.child(ROOT, "a").map(|n| n.kind), Some(Kind::Dir));
    }
}
