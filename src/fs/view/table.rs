//! The inode table: inode numbers ↔ (parent, name), and how listings and the
//! journal's overlay fill it; what the kernel holds is `forget`'s. Pure
//! bookkeeping: no network, no FUSE, no locks (the caller holds it under
//! `Fs::table`).

use super::node::{
    join, usable_name, Content, Kind, Node, Origin, Tick, ViewEntry, RESERVED, ROOT,
};
use crate::fs::journal::{Overlay, Shape};
use crate::store::{Child, ObjectMeta};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

mod forget;

/// A directory's entries by name, and its path, which every entry shares as
/// its `Node::dir`. A sorted vector, not a tree: 24 bytes an entry against a
/// B-tree's 40 to 80 in the small directories that hold most entries, and a
/// listing enters names in order (appends). Entering a new name into a
/// directory of n entries moves up to n of them (1 ms at a million).
#[derive(Debug, Default)]
struct Entries {
    path: Arc<str>,
    names: Vec<(Arc<str>, u64)>,
}

impl Entries {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.names.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&u64> {
        self.find(name).ok().map(|i| &self.names[i].1)
    }

    fn insert(&mut self, name: Arc<str>, ino: u64) {
        match self.find(&name) {
            Ok(i) => self.names[i] = (name, ino),
            Err(i) => self.names.insert(i, (name, ino)),
        }
    }

    fn remove(&mut self, name: &str) -> Option<u64> {
        let i = self.find(name).ok()?;
        let (_, ino) = self.names.remove(i);
        if self.names.capacity() > 2 * self.names.len() + 8 {
            self.names.shrink_to_fit();
        }
        Some(ino)
    }

    /// The entry's own name (shared, not copied).
    fn name(&self, name: &str) -> Option<Arc<str>> {
        self.find(name).ok().map(|i| Arc::clone(&self.names[i].0))
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &u64)> {
        self.names.iter().map(|(k, v)| (k, v))
    }

    fn values(&self) -> impl Iterator<Item = &u64> {
        self.names.iter().map(|(_, v)| v)
    }

    fn into_values(self) -> impl Iterator<Item = u64> {
        self.names.into_iter().map(|(_, v)| v)
    }
}

pub struct Table {
    /// Boxed: the map's slots stay small however large a node is.
    nodes: HashMap<u64, Box<Node>>,
    children: HashMap<u64, Entries>,
    /// How many of each directory's children are directories (its link
    /// count): kept as directories come and go, since every stat of a
    /// directory asks and a count would walk all its entries.
    subdirs: HashMap<u64, usize>,
    /// Open handles per file: a file removed while open stays, unlinked,
    /// until its last handle goes (POSIX: an open file outlives its name).
    open: HashMap<u64, u32>,
    /// Hard-linked files (`Attrs::link`) by identity: the inode of each.
    groups: HashMap<u64, u64>,
    /// Names the listing being applied placed: a hard-linked file seen under
    /// one name keeps only the names the listing showed.
    placed: HashSet<(u64, String)>,
    /// The kernel's references (FUSE's lookup count) to inodes whose entry
    /// is gone; those of entries in the table are in their nodes
    /// (`Node::kernel`). An entry made again at that number takes them back.
    ghosts: HashMap<u64, u64>,
    /// `hold`s in force, the inodes forgotten meanwhile, and how many
    /// entries left the table since `take_evicted`.
    holds: u32,
    deferred: Vec<u64>,
    evicted: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

impl Table {
    pub fn new() -> Table {
        let root = Node {
            ino: ROOT,
            parent: ROOT,
            dir: Arc::from(""),
            name: Arc::from(""),
            kind: Kind::Dir,
            origin: Origin::Stored,
            size: 0,
            content: Content::None,
            attrs: Default::default(),
            mtime: SystemTime::now(),
            seen: Tick::now(),
            listed: None,
            kernel: 0,
            unlinked: false,
            aliases: Default::default(),
        };
        Table {
            nodes: HashMap::from([(ROOT, Box::new(root))]),
            children: HashMap::from([(ROOT, Entries::default())]),
            subdirs: HashMap::new(),
            open: HashMap::new(),
            groups: HashMap::new(),
            placed: HashSet::new(),
            ghosts: HashMap::new(),
            holds: 0,
            deferred: Vec::new(),
            evicted: 0,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino).map(|n| &**n)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino).map(|n| &mut **n)
    }

    /// How many entries the table holds, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<&Node> {
        let ino = self.children.get(&parent)?.get(name)?;
        self.get(*ino)
    }

    /// Direct children, in name order.
    pub fn children(&self, parent: u64) -> Vec<&Node> {
        self.children
            .get(&parent)
            .map(|c| c.iter().filter_map(|(_, i)| self.get(*i)).collect())
            .unwrap_or_default()
    }

    /// Up to `n` subdirectories of `parent` that follow `name` in name
    /// order, looking at no more than the `scan` entries after it.
    pub fn next_subdirs(&self, parent: u64, name: &str, n: usize, scan: usize) -> Vec<u64> {
        let Some(c) = self.children.get(&parent) else {
            return Vec::new();
        };
        let after = c.find(name).map_or_else(|i| i, |i| i + 1);
        c.names[after..]
            .iter()
            .take(scan)
            .filter_map(|&(_, i)| self.get(i).filter(|k| k.kind == Kind::Dir))
            .map(|k| k.ino)
            .take(n)
            .collect()
    }

    /// Whether `name` is the first subdirectory of `parent` in name order,
    /// as far as the `scan` entries before it tell (more than that: no).
    pub fn is_first_subdir(&self, parent: u64, name: &str, scan: usize) -> bool {
        let Some(c) = self.children.get(&parent) else {
            return false;
        };
        let at = c.find(name).unwrap_or_else(|i| i);
        let mut before = c.names[..at].iter().rev();
        for _ in 0..scan {
            match before.next() {
                None => return true,
                Some(&(_, i)) if self.get(i).is_some_and(|k| k.kind == Kind::Dir) => return false,
                Some(_) => {}
            }
        }
        before.next().is_none()
    }

    /// How many direct children are directories.
    pub fn subdirs(&self, parent: u64) -> usize {
        self.subdirs.get(&parent).copied().unwrap_or(0)
    }

    fn count_subdir(&mut self, parent: u64, added: bool) {
        let n = self.subdirs.entry(parent).or_default();
        *n = if added { *n + 1 } else { n.saturating_sub(1) };
    }

    /// Direct children with the names they have here (a hard-linked file's
    /// node carries another of its names), in name order.
    pub fn entries(&self, parent: u64) -> Vec<(&str, &Node)> {
        self.children
            .get(&parent)
            .map(|c| {
                c.iter()
                    .filter_map(|(k, i)| Some((&**k, self.get(*i)?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every entry beneath `dir` (not `dir` itself) with its path there,
    /// parents before children.
    pub fn subtree(&self, dir: u64) -> Vec<(String, &Node)> {
        let mut out = Vec::new();
        let Some(top) = self.get(dir) else {
            return out;
        };
        let mut stack = vec![(dir, top.path())];
        while let Some((d, path)) = stack.pop() {
            for (name, c) in self.entries(d) {
                let p = join(&path, name);
                if c.kind == Kind::Dir {
                    stack.push((c.ino, p.clone()));
                }
                out.push((p, c));
            }
        }
        out
    }

    /// Directory `ino`'s path, shared by its entries; its map of names made
    /// on first use.
    fn dir_path(&mut self, ino: u64) -> Arc<str> {
        if let Some(c) = self.children.get(&ino) {
            return Arc::clone(&c.path);
        }
        let path: Arc<str> = self.get(ino).map(Node::path).unwrap_or_default().into();
        self.children.insert(
            ino,
            Entries {
                path: Arc::clone(&path),
                names: Vec::new(),
            },
        );
        path
    }

    /// Enters `name` → `ino` in directory `parent`, the name shared with the
    /// node when it is the node's own.
    fn enter(&mut self, parent: u64, name: Arc<str>, ino: u64) {
        self.dir_path(parent);
        if let Some(c) = self.children.get_mut(&parent) {
            c.insert(name, ino);
        }
    }

    /// The node of hard-linked file `g`, if it is in the table.
    fn group(&self, g: u64) -> Option<u64> {
        let ino = *self.groups.get(&g)?;
        let n = self.get(ino)?;
        (n.attrs.link == Some(g) && !n.unlinked).then_some(ino)
    }

    /// Makes `parent/name` another name of file `ino` (a hard link),
    /// replacing what was there.
    pub fn add_alias(&mut self, ino: u64, parent: u64, name: &str) {
        if let Some(&old) = self.children.get(&parent).and_then(|c| c.get(name)) {
            if old == ino {
                return;
            }
            self.unlink_name(parent, name);
        }
        let name: Arc<str> = name.into();
        let Some(n) = self.get_mut(ino) else {
            return;
        };
        n.aliases.push((parent, Arc::clone(&name)));
        if let Some(g) = n.attrs.link {
            self.groups.insert(g, ino);
        }
        self.enter(parent, name, ino);
    }

    /// Removes the name `parent/name`: a file with other names keeps them
    /// (one of them becomes its own); else the entry goes (`remove`).
    pub fn unlink_name(&mut self, parent: u64, name: &str) {
        let Some(&ino) = self.children.get(&parent).and_then(|c| c.get(name)) else {
            return;
        };
        let has_others = self.get(ino).is_some_and(|n| !n.aliases.is_empty());
        if !has_others {
            self.remove(ino);
            return;
        }
        if let Some(c) = self.children.get_mut(&parent) {
            c.remove(name);
        }
        let primary = self
            .get(ino)
            .is_some_and(|n| n.parent == parent && &*n.name == name);
        if primary {
            let (p, k) = match self.get_mut(ino) {
                Some(n) => n.aliases.remove(0),
                None => return,
            };
            let dir = self.dir_path(p);
            if let Some(n) = self.get_mut(ino) {
                n.keep_key();
                n.parent = p;
                n.name = k;
                n.dir = dir;
            }
        } else if let Some(n) = self.get_mut(ino) {
            n.aliases.retain(|(p, k)| !(*p == parent && &**k == name));
        }
    }

    /// Moves the name `from_parent/from_name` to `parent/name` (replacing
    /// what was there): the node's own name (`rename`) or another of its names.
    pub fn rename_name(&mut self, from_parent: u64, from_name: &str, parent: u64, name: &str) {
        let Some(&ino) = self
            .children
            .get(&from_parent)
            .and_then(|c| c.get(from_name))
        else {
            return;
        };
        let primary = self
            .get(ino)
            .is_some_and(|n| n.parent == from_parent && &*n.name == from_name);
        if primary {
            self.rename(ino, parent, name);
            return;
        }
        if let Some(&old) = self.children.get(&parent).and_then(|c| c.get(name)) {
            if old != ino {
                self.unlink_name(parent, name);
            }
        }
        if let Some(c) = self.children.get_mut(&from_parent) {
            c.remove(from_name);
        }
        let name: Arc<str> = name.into();
        if let Some(n) = self.get_mut(ino) {
            for a in n.aliases.iter_mut() {
                if a.0 == from_parent && &*a.1 == from_name {
                    *a = (parent, Arc::clone(&name));
                }
            }
        }
        self.enter(parent, name, ino);
    }

    /// Adds `parent/name`, or refreshes it when present. A file this mount is
    /// writing is never replaced by what the coffer says; a directory wins over
    /// a file of the same name (the file is shadowed, as in other S3 mounts).
    pub fn upsert(
        &mut self,
        parent: u64,
        name: &str,
        new: ViewEntry,
        origin: Origin,
        now: Instant,
    ) -> Option<u64> {
        self.get(parent)?;
        let link = new.attrs.link.filter(|_| new.kind != Kind::Dir);
        let here = self
            .children
            .get(&parent)
            .and_then(|c| c.get(name))
            .copied();
        if let Some(ino) = link.and_then(|g| self.group(g)) {
            if here != Some(ino) {
                // Another name of a hard-linked file already in the table.
                self.add_alias(ino, parent, name);
                let node = self.get_mut(ino)?;
                node.seen = now.into();
                if !(node.origin == Origin::Writing && origin == Origin::Stored) {
                    node.size = new.size;
                    node.set_data(new.data);
                    node.attrs = new.attrs.into();
                }
                return Some(ino);
            }
        }
        if let Some(ino) = here {
            // A name that leaves its hard-linked file names a file of its own.
            let leaves = self
                .get(ino)
                .is_some_and(|n| !n.aliases.is_empty() && n.attrs.link != link);
            if leaves {
                self.unlink_name(parent, name);
                return self.upsert(parent, name, new, origin, now);
            }
        }
        if let Some(ino) = here {
            let node = self.get_mut(ino)?;
            node.seen = now.into();
            if node.origin == Origin::Writing && origin == Origin::Stored {
                return Some(ino);
            }
            if node.kind == Kind::Dir && new.kind != Kind::Dir {
                log::warn!(
                    "{:?} is hidden by the directory of the same name",
                    node.path()
                );
                return Some(ino);
            }
            if node.kind != Kind::Dir && new.kind == Kind::Dir {
                if node.origin != Origin::Stored {
                    return Some(ino);
                }
                log::warn!(
                    "{:?} is hidden by the directory of the same name",
                    node.path()
                );
                self.count_subdir(parent, true);
            }
            let node = self.get_mut(ino)?;
            node.kind = new.kind;
            node.size = new.size;
            node.set_data_here(new.data);
            node.set_target(new.target.map(Into::into));
            node.attrs = new.attrs.into();
            node.mtime = new.mtime;
            node.origin = origin;
            if new.kind == Kind::Dir {
                self.dir_path(ino);
            }
            if let Some(g) = link {
                self.groups.insert(g, ino);
            }
            return Some(ino);
        }
        let dir = self.dir_path(parent);
        // A hard-linked file's number follows its identity, not a name.
        let ino = self.free_ino(match link {
            Some(g) => path_ino(&format!("\0link {g}")),
            None => path_ino(&join(&dir, name)),
        });
        if let Some(g) = link {
            self.groups.insert(g, ino);
        }
        let name: Arc<str> = name.into();
        let kind = new.kind;
        if kind == Kind::Dir {
            self.count_subdir(parent, true);
        }
        self.nodes.insert(
            ino,
            Box::new(Node {
                ino,
                parent,
                dir,
                name: Arc::clone(&name),
                kind,
                origin,
                size: new.size,
                content: Content::None,
                attrs: new.attrs.into(),
                mtime: new.mtime,
                seen: now.into(),
                listed: None,
                kernel: self.ghosts.remove(&ino).map_or(0, clamp_refs),
                unlinked: false,
                aliases: Default::default(),
            }),
        );
        if let Some(n) = self.get_mut(ino) {
            n.set_data_here(new.data);
            n.set_target(new.target.map(Into::into));
        }
        if kind == Kind::Dir {
            self.dir_path(ino);
        }
        self.enter(parent, name, ino);
        Some(ino)
    }

    /// `want` if no entry has it, else the next number no entry has; never
    /// 0, the root's 1, or `u32::MAX` (FUSE's "unknown inode"). Unlinked
    /// files still open keep theirs (they stay in `nodes`).
    fn free_ino(&self, want: u64) -> u64 {
        let mut ino = want;
        while ino <= ROOT || ino == u64::from(u32::MAX) || self.nodes.contains_key(&ino) {
            ino = ino.wrapping_add(1);
        }
        ino
    }

    /// A handle of `ino` opened.
    pub fn pin(&mut self, ino: u64) {
        *self.open.entry(ino).or_default() += 1;
    }

    /// A handle of `ino` was released; an unlinked file goes with its last.
    pub fn unpin(&mut self, ino: u64) {
        let Some(n) = self.open.get_mut(&ino) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.open.remove(&ino);
            if self.get(ino).is_some_and(|n| n.unlinked) {
                self.take_node(ino);
            }
        }
    }

    /// Takes `ino`'s node out of the table; what the kernel still holds of
    /// it stays counted (`ghosts`).
    fn take_node(&mut self, ino: u64) -> Option<Box<Node>> {
        let n = self.nodes.remove(&ino)?;
        if n.kernel > 0 {
            self.ghosts.insert(ino, u64::from(n.kernel));
        }
        Some(n)
    }

    /// Removes an entry and everything beneath it. A file with open handles
    /// only loses its name: it stays, unlinked, for them.
    pub fn remove(&mut self, ino: u64) {
        let pinned = self.open.contains_key(&ino);
        if let Some(n) = self.nodes.get(&ino).filter(|n| n.kind == Kind::Dir) {
            if self.children.get(&n.parent).and_then(|c| c.get(&n.name)) == Some(&ino) {
                let parent = n.parent;
                self.count_subdir(parent, false);
            }
            self.subdirs.remove(&ino);
        }
        // Every name it has goes.
        let names = match self.nodes.get_mut(&ino) {
            Some(n) if pinned && n.kind != Kind::Dir => {
                n.unlinked = true;
                let mut v = std::mem::take(&mut n.aliases);
                v.push((n.parent, Arc::clone(&n.name)));
                v
            }
            _ => match self.take_node(ino) {
                Some(n) => {
                    if let Some(g) = n.attrs.link {
                        if self.groups.get(&g) == Some(&ino) {
                            self.groups.remove(&g);
                        }
                    }
                    let n = *n;
                    let mut v = n.aliases;
                    v.push((n.parent, n.name));
                    v
                }
                None => return,
            },
        };
        for (p, k) in names {
            if let Some(c) = self.children.get_mut(&p) {
                if c.get(&k) == Some(&ino) {
                    c.remove(&k);
                }
            }
        }
        if let Some(kids) = self.children.remove(&ino) {
            for k in kids.into_values() {
                self.remove(k);
            }
        }
    }

    /// Moves `ino` to `parent/name` (replacing what was there), updating the paths
    /// of everything beneath it.
    pub fn rename(&mut self, ino: u64, parent: u64, name: &str) {
        if let Some(&old) = self.children.get(&parent).and_then(|c| c.get(name)) {
            if old != ino {
                self.unlink_name(parent, name);
            }
        }
        let Some(node) = self.get(ino) else {
            return;
        };
        let (old_parent, old_name, is_dir) =
            (node.parent, Arc::clone(&node.name), node.kind == Kind::Dir);
        if let Some(c) = self.children.get_mut(&old_parent) {
            if c.remove(&old_name).is_some() && is_dir {
                self.count_subdir(old_parent, false);
            }
        }
        if self.get(parent).is_none() {
            return;
        }
        let dir = self.dir_path(parent);
        let name: Arc<str> = name.into();
        if let Some(n) = self.get_mut(ino) {
            n.keep_key();
            n.parent = parent;
            n.name = Arc::clone(&name);
            n.dir = Arc::clone(&dir);
        }
        self.enter(parent, Arc::clone(&name), ino);
        if is_dir {
            self.count_subdir(parent, true);
        }
        self.repath(ino, join(&dir, &name).into());
    }

    /// Directory `ino` is at `path` now: its entries' shared path follows,
    /// down the subtree.
    fn repath(&mut self, ino: u64, path: Arc<str>) {
        let kids: Vec<u64> = match self.children.get_mut(&ino) {
            Some(c) => {
                c.path = Arc::clone(&path);
                c.values().copied().collect()
            }
            None => return,
        };
        for k in kids {
            let Some(n) = self.get_mut(k) else { continue };
            // A hard-linked file's own name may be in another directory.
            if n.parent != ino {
                continue;
            }
            n.keep_key();
            n.dir = Arc::clone(&path);
            let sub: Arc<str> = join(&path, &n.name).into();
            self.repath(k, sub);
        }
    }

    /// Marks `ino` as in the view, with its ancestors.
    pub fn mark_stored(&mut self, mut ino: u64, now: Instant) {
        while let Some(n) = self.get_mut(ino) {
            n.origin = Origin::Stored;
            n.seen = now.into();
            if ino == ROOT {
                break;
            }
            ino = n.parent;
        }
    }

    /// True when a listing filled this directory less than `ttl` ago.
    pub fn listed_within(&self, ino: u64, ttl: std::time::Duration) -> bool {
        self.get(ino)
            .and_then(|n| n.listed)
            .is_some_and(|t| t.elapsed() < ttl)
    }

    /// Forgets every listing and confirmation: the next lookups ask again.
    pub fn invalidate(&mut self) {
        for n in self.nodes.values_mut() {
            n.listed = None;
            n.seen = Tick::LONG_AGO;
        }
    }

    /// Another mount changed what `path` is (`entry`) or only its
    /// attributes: forgets the listing of the directory that holds it (or of
    /// the first directory on the way the table does not know the next step
    /// of: the new entry may be a new name there) and the confirmation of the
    /// entry itself; a changed entry, also what lies beneath it. Nothing else.
    pub fn invalidate_path(&mut self, path: &str, entry: bool) {
        if path.is_empty() {
            return;
        }
        let mut at = ROOT;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            let next = self.children.get(&at).and_then(|c| c.get(part)).copied();
            let Some(next) = next else {
                if let Some(d) = self.nodes.get_mut(&at) {
                    d.listed = None;
                }
                return;
            };
            if parts.peek().is_some() {
                at = next;
                continue;
            }
            if !entry {
                if let Some(n) = self.nodes.get_mut(&next) {
                    n.seen = Tick::LONG_AGO;
                }
                return;
            }
            if let Some(d) = self.nodes.get_mut(&at) {
                d.listed = None;
            }
            let mut stack = vec![next];
            while let Some(i) = stack.pop() {
                if let Some(n) = self.nodes.get_mut(&i) {
                    n.listed = None;
                    n.seen = Tick::LONG_AGO;
                }
                if let Some(c) = self.children.get(&i) {
                    stack.extend(c.values().copied().filter(|c| *c != i));
                }
            }
        }
    }

    /// Adds an entry at `path` below `dir`, creating the directories between.
    fn place(
        &mut self,
        dir: u64,
        rel: &str,
        entry: ViewEntry,
        overlay: &Overlay,
        now: Instant,
        deferred: &mut Vec<(String, ViewEntry)>,
    ) -> Option<u64> {
        let parts: Vec<&str> = rel.split('/').collect();
        let (leaf, dirs) = parts.split_last()?;
        let mut at = dir;
        for d in dirs {
            let path = self.get(at)?.child_path(d);
            let attrs = overlay.attrs(&path).unwrap_or_default();
            at = self.upsert(
                at,
                d,
                ViewEntry::dir(attrs, entry.mtime),
                Origin::Stored,
                now,
            )?;
        }
        if let Some(old) = self.child(at, leaf) {
            if old.kind == Kind::Dir && entry.kind != Kind::Dir && old.origin == Origin::Stored {
                // Decided once the whole listing is in: the directory may be
                // stale (renamed away elsewhere) or still hold entries.
                deferred.push((rel.to_string(), entry));
                return None;
            }
        }
        self.placed.insert((at, leaf.to_string()));
        self.upsert(at, leaf, entry, Origin::Stored, now)
    }

    /// The node at `rel` below `dir`.
    fn find(&self, dir: u64, rel: &str) -> Option<&Node> {
        let mut at = self.get(dir)?;
        for part in rel.split('/') {
            at = self.child(at.ino, part)?;
        }
        Some(at)
    }

    /// Fills directory `dir` with its direct children, as a child listing
    /// (`store::ListChildren`) showed them, merged with the journal's overlay:
    /// adds what is new, refreshes what is there, drops children the view no
    /// longer shows (but not files this mount is writing, nor a directory that
    /// holds one), and marks `dir` alone as listed. Subdirectories keep their
    /// own entries and listings; one whose every key the listing held
    /// (`Child::Dir::keys`) is filled whole (`apply_listing`). All at once:
    /// `ChildListing::begin` and what follows apply a listing page by page.
    pub fn apply_children(
        &mut self,
        dir: u64,
        children: &[Child],
        overlay: &Overlay,
        now: Instant,
    ) {
        let mut l = ChildListing::begin(dir, now);
        self.apply_children_page(&mut l, children, overlay);
        self.finish_children(l, overlay);
    }

    /// Applies one page of a child listing: the objects and subdirectories
    /// it shows, as the overlay has them. What the journal names itself
    /// comes in `finish_children`.
    pub fn apply_children_page(
        &mut self,
        l: &mut ChildListing,
        children: &[Child],
        overlay: &Overlay,
    ) {
        let (dir, now) = (l.dir, l.now);
        let Some(prefix) = self.get(dir).map(Node::prefix) else {
            return;
        };
        let usable = |name: &str| usable_name(name) && !(dir == ROOT && name == RESERVED);
        let mut files: BTreeMap<&str, ViewEntry> = BTreeMap::new();
        let mut dirs: BTreeMap<&str, (ViewEntry, Option<&[ObjectMeta]>)> = BTreeMap::new();
        for c in children {
            match c {
                Child::Object(obj) => {
                    let Some(name) = obj.key.strip_prefix(&prefix).filter(|n| usable(n)) else {
                        continue;
                    };
                    let named = overlay
                        .get(&obj.key)
                        .is_some_and(|e| e.shape != Shape::AttrsOnly);
                    if named || overlay.hides_object(&obj.key) {
                        continue;
                    }
                    let attrs = overlay.attrs(&obj.key).unwrap_or_default();
                    files.insert(name, ViewEntry::object(obj, attrs));
                }
                Child::Dir { name, mtime, keys } => {
                    if !usable(name) {
                        continue;
                    }
                    let attrs = overlay
                        .attrs(&format!("{prefix}{name}"))
                        .unwrap_or_default();
                    let mtime = mtime.unwrap_or(SystemTime::UNIX_EPOCH);
                    dirs.insert(name, (ViewEntry::dir(attrs, mtime), keys.as_deref()));
                }
            }
        }
        // Once a listing, not once an object: the children the journal shows
        // paths beneath (`finish_children` merges the journal as it is then).
        let journal_dirs = l.journal_dirs.take().unwrap_or_else(|| {
            overlay
                .children_under(&prefix)
                .filter(|&(_, _, below)| below)
                .map(|(name, _, _)| name.to_string())
                .collect()
        });
        for (name, entry) in files {
            // A directory of the same name wins: on this page, or in the journal.
            if dirs.contains_key(name) || journal_dirs.contains(name) {
                log::warn!("{prefix}{name:?} is hidden by the directory of the same name");
                continue;
            }
            self.place_file(l, name, entry);
        }
        l.journal_dirs = Some(journal_dirs);
        for (name, (entry, keys)) in dirs {
            let ino = self.upsert(dir, name, entry, Origin::Stored, now);
            self.mark_shown(l, name);
            let filled = ino.filter(|i| self.get(*i).is_some_and(|n| n.kind == Kind::Dir));
            if let (Some(ino), Some(keys)) = (filled, keys) {
                self.apply_listing(ino, keys, overlay, now);
            }
        }
    }

    /// A file a child listing shows: over a stored directory the listing
    /// showed nothing beneath, which gives way; one it showed wins.
    fn place_file(&mut self, l: &mut ChildListing, name: &str, entry: ViewEntry) {
        if let Some(old) = self.child(l.dir, name) {
            if old.kind == Kind::Dir && old.origin == Origin::Stored {
                if l.shown.contains(name) {
                    log::warn!(
                        "{:?} is hidden by the directory of the same name",
                        old.path()
                    );
                    return;
                }
                let ino = old.ino;
                self.remove(ino);
            }
        }
        self.upsert(l.dir, name, entry, Origin::Stored, l.now);
        self.mark_shown(l, name);
    }

    /// `name` in `l.dir` is one the listing shows (sharing the entry's name).
    fn mark_shown(&self, l: &mut ChildListing, name: &str) {
        if let Some(n) = self.children.get(&l.dir).and_then(|c| c.name(name)) {
            l.shown.insert(n);
        }
    }

    /// Ends a child listing: merges what the journal names beneath `dir`,
    /// drops the children the listing did not show and nothing confirmed
    /// since it began, and marks `dir` as listed.
    pub fn finish_children(&mut self, mut l: ChildListing, overlay: &Overlay) {
        let (dir, now) = (l.dir, l.now);
        let Some(prefix) = self.get(dir).map(Node::prefix) else {
            return;
        };
        let usable = |name: &str| usable_name(name) && !(dir == ROOT && name == RESERVED);
        for (name, own, below) in overlay.children_under(&prefix) {
            if !usable(name) {
                continue;
            }
            let own = own.and_then(|e| ViewEntry::from_journal(&e.shape, e.attrs));
            match own {
                Some(v) if v.kind == Kind::Dir => {
                    // The journal's directory, over one the keys imply.
                    self.upsert(dir, name, v, Origin::Stored, now);
                    self.mark_shown(&mut l, name);
                }
                Some(v) if !below => self.place_file(&mut l, name, v),
                _ => {
                    // Paths beneath it: a directory (over a file of the same
                    // name); one the listing showed keeps its attributes.
                    let shown = l.shown.contains(name)
                        && self.child(dir, name).is_some_and(|n| n.kind == Kind::Dir);
                    if !shown {
                        let attrs = overlay.attrs(&format!("{prefix}{name}"));
                        let epoch = SystemTime::UNIX_EPOCH;
                        let v = ViewEntry::dir(attrs.unwrap_or_default(), epoch);
                        self.upsert(dir, name, v, Origin::Stored, now);
                        self.mark_shown(&mut l, name);
                    }
                }
            }
        }
        let kids: Vec<(Arc<str>, u64)> = self
            .children
            .get(&dir)
            .map(|c| c.iter().map(|(n, i)| (Arc::clone(n), *i)).collect())
            .unwrap_or_default();
        let began = Tick::from(now);
        for (name, k) in kids {
            let Some(node) = self.get(k) else {
                continue;
            };
            // Shown, or confirmed since the listing began (a file this mount
            // stored meanwhile: the pages may predate it; the next listing
            // speaks for it). A hard-linked file's names count only if shown:
            // one shown name confirms the node of all.
            if l.shown.contains(&name) || (node.seen >= began && node.aliases.is_empty()) {
                continue;
            }
            let keep = match node.kind {
                Kind::Dir => self.holds_writing(k),
                // A hard-linked file's other names do not keep this one.
                _ if !node.aliases.is_empty() && node.origin == Origin::Stored => false,
                _ => node.origin == Origin::Writing,
            };
            if !keep {
                self.unlink_name(dir, &name);
            }
        }
        self.mark_listed(dir, now);
    }

    /// Whether a file this mount is writing lies beneath directory `dir`.
    fn holds_writing(&self, dir: u64) -> bool {
        self.subtree(dir)
            .iter()
            .any(|(_, n)| n.origin == Origin::Writing)
    }

    /// Fills the subtree of directory `dir` from a complete listing of its prefix
    /// merged with the journal's overlay: adds what is new, refreshes what is
    /// there, drops entries the view no longer shows, and marks every directory
    /// in it as listed.
    pub fn apply_listing(
        &mut self,
        dir: u64,
        objects: &[ObjectMeta],
        overlay: &Overlay,
        now: Instant,
    ) {
        let Some(prefix) = self.get(dir).map(Node::prefix) else {
            return;
        };
        self.placed.clear();
        let mut seen: HashSet<u64> = HashSet::from([dir]);
        let mut deferred = Vec::new();
        for obj in objects {
            let Some(rest) = obj.key.strip_prefix(&prefix) else {
                continue;
            };
            if (dir == ROOT && rest.split('/').next() == Some(RESERVED))
                || overlay.hides_object(&obj.key)
                || overlay
                    .get(&obj.key)
                    .is_some_and(|e| e.shape != Shape::AttrsOnly)
            {
                continue;
            }
            // `a/` markers made by other tools mean only "directory a".
            let (rel, entry) = match rest.strip_suffix('/') {
                Some(d) => (
                    d,
                    ViewEntry::dir(
                        overlay
                            .attrs(obj.key.trim_end_matches('/'))
                            .unwrap_or_default(),
                        SystemTime::UNIX_EPOCH,
                    ),
                ),
                None => (
                    rest,
                    ViewEntry::object(obj, overlay.attrs(&obj.key).unwrap_or_default()),
                ),
            };
            if !rel.split('/').all(usable_name) {
                log::debug!("listing: key {:?} has no path in the mount", obj.key);
                continue;
            }
            if let Some(i) = self.place(dir, rel, entry, overlay, now, &mut deferred) {
                self.mark_seen(i, dir, &mut seen);
            }
        }
        for (path, e) in overlay.entries_under(&prefix) {
            let Some(rest) = path.strip_prefix(&prefix) else {
                continue;
            };
            if rest.is_empty() || !rest.split('/').all(usable_name) {
                continue;
            }
            if let Some(v) = ViewEntry::from_journal(&e.shape, e.attrs) {
                if let Some(i) = self.place(dir, rest, v, overlay, now, &mut deferred) {
                    self.mark_seen(i, dir, &mut seen);
                }
            }
        }
        // A directory the listing gave no sign of gives way to the file or
        // link now shown at its name; one that still holds entries wins.
        for (rel, entry) in deferred {
            let Some(old) = self.find(dir, &rel) else {
                continue;
            };
            let ino = old.ino;
            if seen.contains(&ino) {
                log::warn!(
                    "{:?} is hidden by the directory of the same name",
                    old.path()
                );
                continue;
            }
            self.remove(ino);
            if let Some(i) = self.place(dir, &rel, entry, overlay, now, &mut Vec::new()) {
                self.mark_seen(i, dir, &mut seen);
            }
        }
        self.prune(dir, &seen, now);
        // Its memory too: it held a name per entry of the listing.
        self.placed = HashSet::new();
    }

    /// Records `ino` and its ancestors up to `top` as shown by a listing.
    fn mark_seen(&self, mut ino: u64, top: u64, seen: &mut HashSet<u64>) {
        while seen.insert(ino) && ino != top {
            match self.nodes.get(&ino) {
                Some(n) => ino = n.parent,
                None => break,
            }
        }
    }

    /// Drops entries under `dir` that a listing did not show, keeping files this
    /// mount is writing; marks directories as listed. Returns whether `dir`
    /// itself must stay.
    fn prune(&mut self, dir: u64, seen: &HashSet<u64>, now: Instant) -> bool {
        let kids: Vec<(Arc<str>, u64)> = self
            .children
            .get(&dir)
            .map(|c| c.iter().map(|(n, i)| (Arc::clone(n), *i)).collect())
            .unwrap_or_default();
        let mut keep_any = false;
        for (name, k) in kids {
            let Some(node) = self.nodes.get(&k) else {
                continue;
            };
            let (kind, origin) = (node.kind, node.origin);
            let linked = !node.aliases.is_empty();
            let keep = match kind {
                Kind::Dir => self.prune(k, seen, now) || seen.contains(&k),
                // A hard-linked file's other names do not keep this one.
                _ if linked && origin == Origin::Stored => {
                    self.placed.contains(&(dir, name.to_string()))
                }
                _ => origin == Origin::Writing || seen.contains(&k),
            };
            if keep {
                keep_any = true;
            } else {
                self.unlink_name(dir, &name);
            }
        }
        self.mark_listed(dir, now);
        keep_any || seen.contains(&dir)
    }
}

impl Table {
    /// A listing filled directory `dir` at `now`; its entries, complete,
    /// keep no spare room.
    fn mark_listed(&mut self, dir: u64, now: Instant) {
        if let Some(n) = self.nodes.get_mut(&dir) {
            n.listed = Some(now.into());
        }
        if let Some(c) = self.children.get_mut(&dir) {
            c.names.shrink_to_fit();
        }
    }
}

/// A child listing being applied page by page (`ChildListing::begin`,
/// `Table::apply_children_page`, `Table::finish_children`).
pub struct ChildListing {
    dir: u64,
    /// When the listing began: what it shows is confirmed from then.
    now: Instant,
    /// The names it showed, shared with their entries: one page at a time,
    /// only these stay of the whole listing.
    shown: HashSet<Arc<str>>,
    /// Children the journal shows paths beneath, read at the first page.
    journal_dirs: Option<HashSet<String>>,
}

impl ChildListing {
    /// Starts a listing of directory `dir`'s children made from `now` on.
    pub fn begin(dir: u64, now: Instant) -> ChildListing {
        ChildListing {
            dir,
            now,
            shown: HashSet::new(),
            journal_dirs: None,
        }
    }
}

/// The kernel's count of references as a node keeps it (see `Node::kernel`).
fn clamp_refs(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The inode number a path asks for: the first 8 bytes of its MD5, so a
/// path has the same number in every mount of the coffer and after a
/// remount (tar --listed-incremental, rsync and find compare them). Two live
/// paths never share one: `free_ino` moves the later to the next free number.
fn path_ino(path: &str) -> u64 {
    let d = crate::protocol::md5(path.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::journal::{Attrs, Record};

    fn obj(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: "e".into(),
            last_modified: None,
        }
    }

    fn names(t: &Table, ino: u64) -> Vec<String> {
        t.entries(ino).iter().map(|(n, _)| n.to_string()).collect()
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
            &Overlay::default(),
            now,
        );
        assert_eq!(names(&t, ROOT), ["a", "e"]);
        let a = t.child(ROOT, "a").expect("a").ino;
        assert_eq!(names(&t, a), ["b", "d"]);
        let b = t.child(a, "b").expect("b");
        assert_eq!(b.kind, Kind::Dir);
        assert_eq!(b.path(), "a/b");
        assert!(t.listed_within(b.ino, std::time::Duration::from_secs(5)));
        let c = t.child(b.ino, "c.txt").expect("c");
        assert_eq!((c.size, c.path().as_str()), (3, "a/b/c.txt"));
    }

    #[test]
    fn a_new_listing_drops_vanished_objects_but_keeps_files_being_written() {
        let mut t = Table::new();
        let now = Instant::now();
        let none = Overlay::default();
        t.apply_listing(ROOT, &[obj("gone", 1), obj("stays", 1)], &none, now);
        let writing = ViewEntry {
            kind: Kind::File,
            size: 0,
            data: None,
            target: None,
            attrs: Attrs::default(),
            mtime: SystemTime::now(),
        };
        t.upsert(ROOT, "writing", writing, Origin::Writing, now);
        t.apply_listing(ROOT, &[obj("stays", 1), obj("writing", 9)], &none, now);
        assert_eq!(names(&t, ROOT), ["stays", "writing"]);
        // The listing never overrides a file being written.
        assert_eq!(t.child(ROOT, "writing").map(|n| n.size), Some(0));
    }

    #[test]
    fn a_directory_shadows_an_object_of_the_same_name() {
        let mut t = Table::new();
        let none = Overlay::default();
        t.apply_listing(ROOT, &[obj("a", 1), obj("a/b", 2)], &none, Instant::now());
        assert_eq!(t.child(ROOT, "a").map(|n| n.kind), Some(Kind::Dir));
    }

    #[test]
    fn a_directory_only_the_journal_shows_paths_beneath_keeps_its_entries_over_an_object() {
        let mut t = Table::new();
        let now = Instant::now();
        let keys = vec![obj("x/k", 1)];
        t.apply_children(
            ROOT,
            &[dir_child("x", Some(keys))],
            &Overlay::default(),
            now,
        );
        // Now the listing shows only an object `x`; the journal has `x/y`.
        let mut o = Overlay::default();
        o.apply(&Record::Mkdir {
            path: "x/y".into(),
            attrs: Attrs::default(),
        });
        let later = now + std::time::Duration::from_millis(100);
        t.apply_children(ROOT, &[Child::Object(obj("x", 1))], &o, later);
        let x = t.child(ROOT, "x").expect("x");
        assert_eq!(x.kind, Kind::Dir);
        assert_eq!(
            names(&t, x.ino),
            ["k"],
            "its entries stay until it is listed"
        );
    }

    #[test]
    fn the_journal_adds_renames_hides_and_attributes() {
        let mut o = Overlay::default();
        let mode = |m| Attrs {
            mode: Some(m),
            ..Attrs::default()
        };
        o.apply(&Record::Mkdir {
            path: "empty/dir".into(),
            attrs: mode(0o700),
        });
        o.apply(&Record::Bind {
            path: "new".into(),
            key: "old".into(),
            size: 1,
            etag: "e".into(),
            attrs: mode(0o600),
        });
        o.apply(&Record::Hide { path: "old".into() });
        o.apply(&Record::Symlink {
            path: "link".into(),
            target: "new".into(),
            attrs: Attrs::default(),
        });
        o.apply(&Record::Attr {
            path: "kept".into(),
            attrs: mode(0o640),
        });
        let mut t = Table::new();
        t.apply_listing(ROOT, &[obj("kept", 2), obj("old", 1)], &o, Instant::now());
        assert_eq!(names(&t, ROOT), ["empty", "kept", "link", "new"]);
        let new = t.child(ROOT, "new").expect("new");
        assert_eq!(
            new.data().map(|d| d.key.to_string()).as_deref(),
            Some("old")
        );
        assert_eq!(new.attrs.mode, Some(0o600));
        assert_eq!(
            t.child(ROOT, "kept").and_then(|n| n.attrs.mode),
            Some(0o640)
        );
        assert_eq!(t.child(ROOT, "link").map(|n| n.kind), Some(Kind::Symlink));
        let empty = t.child(ROOT, "empty").expect("empty").ino;
        assert_eq!(
            t.child(empty, "dir").and_then(|n| n.attrs.mode),
            Some(0o700)
        );
    }

    #[test]
    fn a_path_has_the_same_inode_in_every_table_and_keeps_it_when_renamed() {
        let none = Overlay::default();
        let fill = |keys: &[&str]| {
            let mut t = Table::new();
            let objs: Vec<ObjectMeta> = keys.iter().map(|k| obj(k, 1)).collect();
            t.apply_listing(ROOT, &objs, &none, Instant::now());
            t
        };
        let ino = |t: &Table, dir: u64, name: &str| t.child(dir, name).expect(name).ino;
        let mut one = fill(&["a/b", "c"]);
        let two = fill(&["c", "x", "a/b"]);
        let a = ino(&one, ROOT, "a");
        assert_eq!(a, ino(&two, ROOT, "a"));
        assert_eq!(ino(&one, a, "b"), ino(&two, a, "b"));
        assert_eq!(ino(&one, ROOT, "c"), ino(&two, ROOT, "c"));
        assert_eq!(a, path_ino("a"));
        // Within the table a renamed entry keeps its number; the old path's
        // number is taken, so a new entry there gets another.
        let c = ino(&one, ROOT, "c");
        one.rename(c, ROOT, "d");
        assert_eq!(ino(&one, ROOT, "d"), c);
        let entry = ViewEntry::dir(Attrs::default(), SystemTime::UNIX_EPOCH);
        let again = one
            .upsert(ROOT, "c", entry, Origin::Stored, Instant::now())
            .expect("c");
        assert_ne!(again, c);
        assert!(again > ROOT);
    }

    #[test]
    fn an_inode_in_use_or_reserved_gives_way_to_the_next_free_one() {
        let mut t = Table::new();
        let entry = ViewEntry::dir(Attrs::default(), SystemTime::UNIX_EPOCH);
        let a = t
            .upsert(ROOT, "a", entry, Origin::Stored, Instant::now())
            .expect("a");
        assert_eq!(t.free_ino(a), a + 1);
        assert_eq!(t.free_ino(0), 2);
        assert_eq!(t.free_ino(ROOT), 2);
        assert_eq!(t.free_ino(u64::MAX), u64::MAX);
        assert_eq!(t.free_ino(u64::from(u32::MAX)), u64::from(u32::MAX) + 1);
    }

    /// Every directory's kept count of subdirectories, against a count.
    fn assert_subdirs_counted(t: &Table) {
        for (ino, n) in &t.nodes {
            if n.kind == Kind::Dir {
                let counted = t
                    .children(*ino)
                    .iter()
                    .filter(|c| c.kind == Kind::Dir)
                    .count();
                assert_eq!(t.subdirs(*ino), counted, "{:?}", n.path());
            }
        }
    }

    #[test]
    fn directories_keep_their_count_of_subdirectories_through_every_change() {
        let mut t = Table::new();
        let none = Overlay::default();
        let now = Instant::now();
        t.apply_listing(
            ROOT,
            &[obj("a/b/c", 1), obj("a/d/e", 1), obj("x", 1), obj("y/z", 1)],
            &none,
            now,
        );
        assert_eq!(t.subdirs(ROOT), 2);
        assert_subdirs_counted(&t);
        let a = t.child(ROOT, "a").expect("a").ino;
        let b = t.child(a, "b").expect("b").ino;
        let y = t.child(ROOT, "y").expect("y").ino;
        // Moved under another directory, renamed over a directory, removed.
        t.rename(b, y, "b");
        assert_eq!((t.subdirs(a), t.subdirs(y)), (1, 1));
        let d = t.child(a, "d").expect("d").ino;
        t.rename(d, y, "b");
        assert_eq!((t.subdirs(a), t.subdirs(y)), (0, 1));
        assert_subdirs_counted(&t);
        t.upsert(
            a,
            "new",
            ViewEntry::dir(Attrs::default(), SystemTime::now()),
            Origin::Stored,
            now,
        );
        assert_eq!(t.subdirs(a), 1);
        t.remove(y);
        assert_eq!(t.subdirs(ROOT), 1);
        assert_subdirs_counted(&t);
        // A listing that no longer shows them drops them, and their counts.
        t.apply_listing(ROOT, &[obj("x", 1)], &none, now);
        assert_subdirs_counted(&t);
        assert_eq!(t.subdirs(ROOT), 0);
    }

    #[test]
    fn rename_moves_a_subtree_and_its_paths() {
        let mut t = Table::new();
        let none = Overlay::default();
        t.apply_listing(ROOT, &[obj("a/b/c", 1), obj("x", 1)], &none, Instant::now());
        let a = t.child(ROOT, "a").expect("a").ino;
        t.rename(a, ROOT, "z");
        let z = t.child(ROOT, "z").expect("z").ino;
        let b = t.child(z, "b").expect("b").ino;
        assert_eq!(t.child(b, "c").map(Node::path).as_deref(), Some("z/b/c"));
        // Its bytes are still the object at its old path.
        let data = t.child(b, "c").and_then(Node::data).expect("data");
        assert_eq!(&*data.key, "a/b/c");
        let x = t.child(ROOT, "x").and_then(Node::data).expect("x");
        assert_eq!((&*x.key, x.etag.to_string().as_str()), ("x", "e"));
        assert!(t.child(ROOT, "a").is_none());
    }

    fn dir_child(name: &str, keys: Option<Vec<ObjectMeta>>) -> Child {
        Child::Dir {
            name: name.into(),
            mtime: None,
            keys,
        }
    }

    #[test]
    fn a_listing_applied_page_by_page_drops_only_what_no_page_showed() {
        let mut t = Table::new();
        let none = Overlay::default();
        let ttl = std::time::Duration::from_secs(5);
        let first: Vec<Child> = (0..5)
            .map(|i| Child::Object(obj(&format!("f{i}"), 1)))
            .chain([dir_child("d", None)])
            .collect();
        let now = Instant::now();
        t.apply_children(ROOT, &first, &none, now);
        // Again in two pages, without f1 and d, with a new g.
        let mut l = ChildListing::begin(ROOT, now + std::time::Duration::from_millis(100));
        let page1 = [Child::Object(obj("f0", 1)), Child::Object(obj("f2", 1))];
        t.apply_children_page(&mut l, &page1, &none);
        assert_eq!(
            names(&t, ROOT),
            ["d", "f0", "f1", "f2", "f3", "f4"],
            "nothing goes mid-listing"
        );
        let page2 = [
            Child::Object(obj("f3", 1)),
            Child::Object(obj("f4", 2)),
            Child::Object(obj("g", 1)),
        ];
        t.apply_children_page(&mut l, &page2, &none);
        t.finish_children(l, &none);
        assert_eq!(names(&t, ROOT), ["f0", "f2", "f3", "f4", "g"]);
        assert_eq!(t.child(ROOT, "f4").map(|n| n.size), Some(2));
        assert!(t.listed_within(ROOT, ttl));
        // An entry confirmed since a listing began (a file this mount stored
        // while the pages were read) stays, though no page showed it.
        let began = Instant::now() + std::time::Duration::from_millis(200);
        let l = ChildListing::begin(ROOT, began);
        let g = t.child(ROOT, "g").expect("g").ino;
        t.mark_stored(g, began + std::time::Duration::from_millis(100));
        t.finish_children(l, &none);
        assert_eq!(names(&t, ROOT), ["g"]);
    }

    #[test]
    fn a_child_listing_fills_and_marks_only_its_directory() {
        let mut t = Table::new();
        let none = Overlay::default();
        let now = Instant::now();
        let ttl = std::time::Duration::from_secs(5);
        let small = vec![obj("c/x", 1), obj("c/y/z", 2)];
        t.apply_children(
            ROOT,
            &[
                Child::Object(obj("a", 1)),
                dir_child("b", None),
                dir_child("c", Some(small)),
                dir_child(RESERVED, None),
            ],
            &none,
            now,
        );
        assert_eq!(names(&t, ROOT), ["a", "b", "c"]);
        assert!(t.listed_within(ROOT, ttl));
        let b = t.child(ROOT, "b").expect("b").ino;
        assert!(
            !t.listed_within(b, ttl),
            "a jumped-past directory is not listed"
        );
        let c = t.child(ROOT, "c").expect("c").ino;
        assert!(t.listed_within(c, ttl), "one the page held whole is");
        let y = t.child(c, "y").expect("y").ino;
        assert_eq!(names(&t, y), ["z"]);
        // b's own listing; then the root again: b keeps its entries and listing.
        // (A listing drops only entries confirmed before it began: later ones.)
        let later = now + std::time::Duration::from_millis(100);
        t.apply_children(b, &[Child::Object(obj("b/k", 1))], &none, later);
        t.apply_children(
            ROOT,
            &[Child::Object(obj("a", 1)), dir_child("b", None)],
            &none,
            later + std::time::Duration::from_millis(100),
        );
        assert_eq!(names(&t, ROOT), ["a", "b"], "c is gone");
        assert_eq!(names(&t, b), ["k"]);
        assert_eq!(t.get(b).and_then(|n| n.listed), Some(later.into()));
    }

    #[test]
    fn siblings_ahead_are_the_next_directories_in_name_order() {
        let mut t = Table::new();
        let keys = ["a/f", "b", "c/f", "d", "e/f", "f/f", "g/f"];
        let objs: Vec<ObjectMeta> = keys.iter().map(|k| obj(k, 1)).collect();
        t.apply_listing(ROOT, &objs, &Overlay::default(), Instant::now());
        let name = |i: u64| t.get(i).map(|n| n.name.to_string()).unwrap_or_default();
        let next = |after: &str, n, scan| -> Vec<String> {
            t.next_subdirs(ROOT, after, n, scan)
                .into_iter()
                .map(name)
                .collect()
        };
        assert_eq!(next("a", 2, 64), ["c", "e"], "files are passed over");
        assert_eq!(next("c", 2, 64), ["e", "f"]);
        assert_eq!(next("f", 2, 64), ["g"]);
        assert_eq!(next("g", 2, 64), Vec::<String>::new());
        assert_eq!(next("a", 2, 2), ["c"], "no further than the scan");
        assert!(t.is_first_subdir(ROOT, "a", 64));
        assert!(!t.is_first_subdir(ROOT, "c", 64));
        let c = t.child(ROOT, "c").expect("c").ino;
        assert!(t.is_first_subdir(c, "f", 64), "nothing before it");
        let b_first = ["a", "b/f", "c", "d", "e/f"].map(|k| obj(k, 1));
        let mut t = Table::new();
        t.apply_listing(ROOT, &b_first, &Overlay::default(), Instant::now());
        assert!(t.is_first_subdir(ROOT, "b", 64));
        assert!(!t.is_first_subdir(ROOT, "e", 64));
        assert!(
            !t.is_first_subdir(ROOT, "b", 0),
            "one entry before it, none scanned"
        );
    }

    #[test]
    fn a_child_listing_keeps_what_was_confirmed_after_it_started() {
        let mut t = Table::new();
        let none = Overlay::default();
        let ms = std::time::Duration::from_millis;
        let t0 = Instant::now();
        let both = [Child::Object(obj("old", 1)), Child::Object(obj("gone", 1))];
        t.apply_children(ROOT, &both, &none, t0);
        // A listing starts (a read-ahead); meanwhile this mount stores `new`,
        // which the listing's pages predate.
        let stored = ViewEntry::object(&obj("new", 1), Attrs::default());
        // (Times 20 ms apart: a node keeps them in 10 ms steps.)
        t.upsert(ROOT, "new", stored, Origin::Stored, t0 + ms(40));
        let old = [Child::Object(obj("old", 1))];
        t.apply_children(ROOT, &old, &none, t0 + ms(20));
        assert_eq!(names(&t, ROOT), ["new", "old"], "gone went, new stays");
        // A listing that started after speaks for it.
        t.apply_children(ROOT, &old, &none, t0 + ms(60));
        assert_eq!(names(&t, ROOT), ["old"]);
        // A hard-linked file: the listing shows one name, refreshing the
        // node; the other name, not shown, goes all the same.
        let ino = t.child(ROOT, "old").expect("old").ino;
        t.add_alias(ino, ROOT, "other");
        t.apply_children(ROOT, &old, &none, t0 + ms(80));
        assert_eq!(names(&t, ROOT), ["old"]);
    }

    #[test]
    fn a_child_listing_merges_the_journal_and_keeps_what_this_mount_writes() {
        let mut o = Overlay::default();
        o.apply(&Record::Mkdir {
            path: "d/made/deep".into(),
            attrs: Attrs::default(),
        });
        o.apply(&Record::Hide {
            path: "d/gone".into(),
        });
        o.apply(&Record::Symlink {
            path: "d/link".into(),
            target: "x".into(),
            attrs: Attrs::default(),
        });
        let mut t = Table::new();
        let now = Instant::now();
        t.apply_listing(ROOT, &[obj("d/old/f", 1), obj("d/w/f", 1)], &o, now);
        let d = t.child(ROOT, "d").expect("d").ino;
        let w = t.child(d, "w").expect("w").ino;
        let writing = ViewEntry {
            kind: Kind::File,
            size: 0,
            data: None,
            target: None,
            attrs: Attrs::default(),
            mtime: SystemTime::now(),
        };
        t.upsert(w, "new", writing, Origin::Writing, now);
        t.apply_children(
            d,
            &[Child::Object(obj("d/gone", 1)), dir_child("file", None)],
            &o,
            now + std::time::Duration::from_millis(100),
        );
        // "old" vanished; "w" holds a file being written, so it stays.
        assert_eq!(names(&t, d), ["file", "link", "made", "w"]);
        let made = t.child(d, "made").expect("made").ino;
        assert_eq!(t.child(made, "deep").map(|n| n.kind), Some(Kind::Dir));
        assert_eq!(t.child(d, "link").map(|n| n.kind), Some(Kind::Symlink));
    }

    #[test]
    fn a_path_another_mount_changed_invalidates_only_the_directory_holding_it() {
        let mut t = Table::new();
        let none = Overlay::default();
        let ttl = std::time::Duration::from_secs(5);
        t.apply_listing(
            ROOT,
            &[obj("a/b/f", 1), obj("a/c/g", 1), obj("x", 1)],
            &none,
            Instant::now(),
        );
        let a = t.child(ROOT, "a").expect("a").ino;
        let b = t.child(a, "b").expect("b").ino;
        let c = t.child(a, "c").expect("c").ino;
        let fresh = |t: &Table, i| t.listed_within(i, ttl);
        t.invalidate_path("a/b/new", true);
        assert!(!fresh(&t, b));
        assert!(fresh(&t, ROOT) && fresh(&t, a) && fresh(&t, c));
        // Attributes alone: only the entry's confirmation goes.
        t.invalidate_path("a/c/g", false);
        assert!(fresh(&t, c));
        let g = t.child(c, "g").expect("g");
        assert!(g.seen.elapsed() > ttl);
        // An entry that replaces a directory: its holder and what lay beneath it.
        t.invalidate_path("a/c", true);
        assert!(!fresh(&t, a) && !fresh(&t, c));
        assert!(fresh(&t, ROOT));
        // A path under a name the table does not know: where the way stops.
        t.invalidate_path("new/deep/f", true);
        assert!(!fresh(&t, ROOT));
    }

    #[test]
    fn a_hard_linked_file_is_one_node_under_every_name() {
        let mut t = Table::new();
        let now = Instant::now();
        let mut o = Overlay::default();
        let linked = Attrs {
            link: Some(9),
            ..Attrs::default()
        };
        for p in ["d/a", "b"] {
            o.apply(&Record::Bind {
                path: p.into(),
                key: "k".into(),
                size: 3,
                etag: "e".into(),
                attrs: linked,
            });
        }
        t.apply_listing(ROOT, &[], &o, now);
        let b = t.child(ROOT, "b").map(|n| n.ino).expect("b");
        let d = t.child(ROOT, "d").map(|n| n.ino).expect("d");
        assert_eq!(t.child(d, "a").map(|n| n.ino), Some(b));
        assert_eq!(names(&t, d), ["a"]);
        // Removing one name keeps the node under the other.
        t.unlink_name(ROOT, "b");
        assert_eq!(t.get(b).map(Node::path).as_deref(), Some("d/a"));
        assert!(t.child(ROOT, "b").is_none());
        // A rename moves only that name.
        t.add_alias(b, ROOT, "c");
        t.rename_name(ROOT, "c", ROOT, "e");
        assert_eq!(t.child(ROOT, "e").map(|n| n.ino), Some(b));
        assert_eq!(t.get(b).map(|n| n.aliases.len()), Some(1));
    }
}
