//! The reference model: a plain in-memory tree of what a user of the mount may
//! expect (POSIX plus the README's write-once rules), the open write handles,
//! and what a crash may keep. It never looks at `Fs`; the harness feeds it
//! each operation's outcome and it says whether that outcome was allowed.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// An expected modification time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MTime {
    /// Exactly this (set by utimens, or seen once and kept since).
    Pinned(SystemTime),
    /// Changed by this mount just now: any time during the test.
    Fresh,
    /// Unchanged or changed just now (POSIX would change it; the product may not).
    FreshOr(SystemTime),
    /// Not modelled (directories implied by objects).
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    File(Bytes),
    Dir,
    Symlink(String),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub what: What,
    pub mode: u32,
    pub mtime: MTime,
    /// Hard links: every path with the same number is one file.
    pub link: Option<u64>,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.what == What::Dir
    }

    fn touched(&mut self) {
        if let MTime::Pinned(t) = self.mtime {
            self.mtime = MTime::FreshOr(t);
        }
    }
}

/// A path's stored version: what remounts and other mounts see.
pub type Tree = BTreeMap<String, Node>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HState {
    /// Taking writes; the path shows as being written.
    Open,
    /// A write or truncate failed: every later write and the close fail, and
    /// the path shows its previous version.
    Poisoned,
    /// fsync stored its bytes; a later write or truncate begins a new
    /// version (Open again), close succeeds.
    Completed,
}

/// How the bytes travel (README: sequential writes stream; others stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Opened for editing, nothing changed yet.
    Lazy,
    Stream,
    Staged,
}

#[derive(Debug, Clone)]
pub struct Handle {
    pub fh: u64,
    pub ino: u64,
    pub path: String,
    pub buf: Vec<u8>,
    /// The mode the file has once closed.
    pub mode: u32,
    pub state: HState,
    pub how: How,
    /// Closing changes the file (else it is an unchanged edit).
    pub dirty: bool,
    /// An fsync stored everything written so far.
    pub synced: bool,
    /// Writes changed the time.
    pub wrote: bool,
    /// A fault was armed while this handle was open: a part upload may have
    /// failed in the background, so its later writes and close may fail.
    pub tainted: bool,
    /// Its path was unlinked or renamed over: it goes on, but stores nothing.
    pub unlinked: bool,
    /// The store's ledger mark when it opened: objects written since may be its.
    pub mark: usize,
    /// The file's hard-link identity: its other names show what it writes.
    pub link: Option<u64>,
}

impl Handle {
    /// Shown as being written (EBUSY to other writers; readers read its bytes).
    pub fn live(&self) -> bool {
        self.state == HState::Open && !self.unlinked
    }
}

/// What the walk of a mount must find at a path.
#[derive(Debug, Clone)]
pub enum Want {
    Node(Node),
    /// A file being written: readers see its bytes so far, unless a background
    /// fault may have failed it (`tainted`: a read may fail instead).
    Writing {
        data: Bytes,
        mode: u32,
        tainted: bool,
    },
}

/// What the model makes of a lookup.
pub enum Found<'a> {
    Node(&'a Node),
    Writing,
}

/// An operation's expected result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exp {
    Ok,
    Err(i32),
    /// Any error (which one is not specified: a poisoned handle).
    Fail,
    /// Ok or any error (a fault was armed, or the outcome is the product's choice).
    Either,
}

pub struct Model {
    pub tree: Tree,
    pub handles: Vec<Handle>,
    /// Views since the last point where everything was stored, oldest first,
    /// with absolute step numbers: a crash may leave any of them.
    pub snaps: Vec<(u64, Tree)>,
    step: u64,
    /// Objects stored under their path's own key (by a close without waiting
    /// for a journal record, an fsync, or a read or write out of order that
    /// completed what went up): after a crash they may show where a view has
    /// nothing, until the mount is remounted.
    pub own: Vec<(String, Bytes)>,
    /// This step made everything so far durable (fsync, a close that waited).
    pub durable_after_step: bool,
    /// The last hard-link identity handed out.
    next_link: u64,
}

pub fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

pub fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// `path` is `dir` or beneath it.
pub fn within(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

impl Default for Model {
    fn default() -> Self {
        Model {
            tree: Tree::new(),
            handles: Vec::new(),
            snaps: vec![(0, Tree::new())],
            step: 0,
            own: Vec::new(),
            durable_after_step: false,
            next_link: 0,
        }
    }
}

impl Model {
    /// What a lookup of `path` finds, or its errno.
    pub fn find(&self, path: &str) -> Result<Found<'_>, i32> {
        if let Some(p) = parent_of(path) {
            match self.find(p)? {
                Found::Node(n) if n.is_dir() => {}
                _ => return Err(libc::ENOTDIR),
            }
        }
        if self
            .handles
            .iter()
            .any(|h| h.live() && self.names(h).contains(&path))
        {
            return Ok(Found::Writing);
        }
        self.tree.get(path).map(Found::Node).ok_or(libc::ENOENT)
    }

    /// The paths that name the file handle `h` writes: its own, and its hard links'.
    pub fn names<'a>(&'a self, h: &'a Handle) -> Vec<&'a str> {
        let mut v = vec![h.path.as_str()];
        if let Some(g) = h.link {
            v.extend(
                self.tree
                    .iter()
                    .filter(|(p, n)| n.link == Some(g) && **p != h.path)
                    .map(|(p, _)| p.as_str()),
            );
        }
        v
    }

    /// Other paths of the hard-linked file at `path`.
    fn others(&self, path: &str) -> Vec<String> {
        let Some(g) = self.tree.get(path).and_then(|n| n.link) else {
            return Vec::new();
        };
        self.tree
            .iter()
            .filter(|(p, n)| n.link == Some(g) && *p != path)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Copies the node at `path` to its file's other names.
    fn share(&mut self, path: &str) {
        let Some(n) = self.tree.get(path).cloned() else {
            return;
        };
        for q in self.others(path) {
            self.tree.insert(q, n.clone());
        }
    }

    /// Where a new entry `path` may go: its parent is a directory, the name is
    /// not reserved, and nothing is there.
    pub fn can_add(&self, path: &str) -> Result<(), i32> {
        if let Some(p) = parent_of(path) {
            match self.find(p)? {
                Found::Node(n) if n.is_dir() => {}
                _ => return Err(libc::ENOTDIR),
            }
        }
        if path == ".cofferfs" {
            return Err(libc::EPERM);
        }
        match self.find(path) {
            Ok(_) => Err(libc::EEXIST),
            Err(_) => Ok(()),
        }
    }

    /// The whole view this mount shows, writers included.
    pub fn live(&self) -> BTreeMap<String, Want> {
        let mut m: BTreeMap<String, Want> = self
            .tree
            .iter()
            .map(|(p, n)| (p.clone(), Want::Node(n.clone())))
            .collect();
        for h in self.handles.iter().filter(|h| h.live()) {
            for p in self.names(h) {
                m.insert(
                    p.to_string(),
                    Want::Writing {
                        data: Bytes::from(h.buf.clone()),
                        mode: h.mode,
                        tainted: h.tainted,
                    },
                );
            }
        }
        m
    }

    /// The parent directory of `path` had an entry added or removed.
    fn touch_parent(&mut self, path: &str) {
        if let Some(n) = parent_of(path).and_then(|p| self.tree.get_mut(p)) {
            n.touched();
        }
    }

    /// Ends a step: its view joins those a crash may leave.
    pub fn end_step(&mut self) {
        self.step += 1;
        if std::mem::take(&mut self.durable_after_step) {
            self.snaps.clear();
        }
        self.snaps.push((self.step, self.tree.clone()));
    }

    /// Replaces the state after a remount or crash.
    pub fn reset(&mut self, tree: Tree) {
        self.tree = tree;
        self.handles.clear();
        self.snaps = vec![(self.step, self.tree.clone())];
        self.own.clear();
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    // ---- handles ------------------------------------------------------------

    pub fn open_new(&mut self, fh: u64, ino: u64, path: &str, mode: u32, mark: usize) {
        // The directory gains the entry now (POSIX: create changes its times).
        self.touch_parent(path);
        self.handles.push(Handle {
            fh,
            ino,
            path: path.to_string(),
            buf: Vec::new(),
            mode,
            state: HState::Open,
            how: How::Stream,
            dirty: true,
            synced: false,
            wrote: true,
            tainted: false,
            unlinked: false,
            mark,
            link: None,
        });
    }

    pub fn open_existing(&mut self, fh: u64, ino: u64, path: &str, trunc: bool, mark: usize) {
        let Some(n) = self.tree.get(path) else { return };
        let old = match &n.what {
            What::File(b) => b.to_vec(),
            _ => Vec::new(),
        };
        self.handles.push(Handle {
            fh,
            ino,
            path: path.to_string(),
            buf: if trunc { Vec::new() } else { old },
            mode: n.mode,
            state: HState::Open,
            how: if trunc { How::Stream } else { How::Lazy },
            dirty: trunc,
            synced: false,
            wrote: false,
            tainted: false,
            unlinked: false,
            mark,
            link: n.link,
        });
    }

    /// The expected result of writing `len` bytes at `offset` through handle `i`.
    pub fn expect_write(&self, i: usize, offset: usize) -> Exp {
        let h = &self.handles[i];
        // Any offset: a seek back after parts left edits a version of them.
        let _ = offset;
        let exp = match h.state {
            HState::Poisoned => Exp::Fail,
            HState::Completed if self.other_writer(i) => Exp::Err(libc::EBUSY),
            HState::Completed | HState::Open => Exp::Ok,
        };
        if h.tainted && exp == Exp::Ok {
            Exp::Either
        } else {
            exp
        }
    }

    /// The expected result of ftruncate through handle `i`.
    pub fn expect_ftruncate(&self, i: usize, size: usize) -> Exp {
        let h = &self.handles[i];
        let exp = match h.state {
            HState::Poisoned => Exp::Fail,
            HState::Completed if size == h.buf.len() => Exp::Ok,
            HState::Completed if self.other_writer(i) => Exp::Err(libc::EBUSY),
            HState::Completed | HState::Open => Exp::Ok,
        };
        if h.tainted && exp == Exp::Ok {
            Exp::Either
        } else {
            exp
        }
    }

    /// Another handle writes the file handle `i` fsync'd: `i` cannot begin a
    /// new version (one writer at a time).
    fn other_writer(&self, i: usize) -> bool {
        let h = &self.handles[i];
        !h.unlinked
            && self.handles.iter().enumerate().any(|(j, o)| {
                j != i && o.live() && (o.path == h.path || (h.link.is_some() && o.link == h.link))
            })
    }

    /// A write or truncate through handle `i` succeeded.
    /// A write or truncate after fsync begins a new version of the file as it
    /// is now (a chmod since included).
    fn reopen(&mut self, i: usize) {
        let h = &self.handles[i];
        if h.state != HState::Completed {
            return;
        }
        let node = self.tree.get(&h.path).map(|n| (n.mode, n.link));
        let h = &mut self.handles[i];
        h.state = HState::Open;
        if let Some((m, link)) = node {
            h.mode = m;
            h.link = link;
        }
    }

    pub fn wrote(&mut self, i: usize, offset: usize, data: &[u8]) {
        self.reopen(i);
        let h = &mut self.handles[i];
        if !(h.how == How::Stream && offset == h.buf.len()) {
            h.how = How::Staged;
        }
        let end = offset + data.len();
        if h.buf.len() < end {
            h.buf.resize(end, 0);
        }
        h.buf[offset..end].copy_from_slice(data);
        h.dirty = true;
        h.synced = false;
        h.wrote = true;
    }

    pub fn truncated(&mut self, i: usize, size: usize) {
        if size == self.handles[i].buf.len() {
            return;
        }
        self.reopen(i);
        let h = &mut self.handles[i];
        h.how = How::Staged;
        h.buf.resize(size, 0);
        h.dirty = true;
        h.synced = false;
        h.wrote = true;
    }

    /// A write or truncate failed (or was refused): the handle is poisoned and
    /// the path shows its previous version (DESIGN: "a handle on which a write,
    /// truncate or copy-in failed is poisoned").
    pub fn poison(&mut self, i: usize) {
        self.handles[i].state = HState::Poisoned;
    }

    /// The expected result of close (flush) of handle `i`.
    pub fn expect_close(&self, i: usize) -> Exp {
        let h = &self.handles[i];
        if h.unlinked && h.state != HState::Poisoned {
            // Nothing is stored, so nothing can fail.
            return Exp::Ok;
        }
        match h.state {
            HState::Poisoned => Exp::Fail,
            HState::Completed => Exp::Ok,
            HState::Open if h.tainted && h.dirty => Exp::Either,
            HState::Open => Exp::Ok,
        }
    }

    /// The file's new stored version, as handle `i` leaves it.
    fn store_handle(&mut self, i: usize) {
        let h = &self.handles[i];
        let old = self.tree.get(&h.path).map(|n| n.mtime);
        let mtime = match (h.wrote, old) {
            (true, _) | (false, None) => MTime::Fresh,
            (false, Some(MTime::Pinned(t))) => MTime::FreshOr(t),
            (false, Some(m)) => m,
        };
        let node = Node {
            what: What::File(Bytes::from(h.buf.clone())),
            mode: h.mode,
            mtime,
            link: h.link,
        };
        let path = h.path.clone();
        let new = !self.tree.contains_key(&path);
        self.tree.insert(path.clone(), node);
        self.share(&path);
        if new {
            self.touch_parent(&path);
        }
    }

    /// Close of handle `i` returned `ok`. `own`: its bytes went to an object at
    /// the path's own key (no journal record waited for).
    pub fn closed(&mut self, i: usize, ok: bool, own: bool) {
        let h = self.handles.remove(i);
        if !ok || h.state != HState::Open || !h.dirty || h.unlinked {
            return;
        }
        let synced = h.synced;
        self.handles.insert(i, h);
        self.store_handle(i);
        self.handles.remove(i);
        if !own && !synced {
            // close waited for the file's journal record; records are stored in
            // order, so everything before it is stored too.
            self.durable_after_step = true;
        }
    }

    /// The expected result of fsync of handle `i`.
    pub fn expect_fsync(&self, i: usize) -> Exp {
        let h = &self.handles[i];
        if h.unlinked && h.state != HState::Poisoned {
            return Exp::Ok;
        }
        match h.state {
            HState::Poisoned => Exp::Fail,
            HState::Open if h.tainted && h.dirty => Exp::Either,
            _ => Exp::Ok,
        }
    }

    /// fsync of handle `i` succeeded: its bytes and all metadata are stored.
    pub fn fsynced(&mut self, i: usize) {
        let h = &self.handles[i];
        if h.state == HState::Open && h.dirty && !h.unlinked {
            let empty = h.buf.is_empty();
            self.store_handle(i);
            let h = &mut self.handles[i];
            h.synced = true;
            h.wrote = false;
            if !empty {
                // The object is complete; the coffer takes nothing more of it.
                h.state = HState::Completed;
            }
        }
        self.durable_after_step = true;
    }
}

impl Model {
    // ---- namespace ------------------------------------------------------------

    /// What rename and link check first, in `Fs`'s order: the source exists,
    /// the target's parent is a directory, the target is not the reserved name.
    fn source_and_target(&self, from: &str, to: &str) -> Result<Found<'_>, i32> {
        let src = self.find(from)?;
        if let Some(p) = parent_of(to) {
            match self.find(p)? {
                Found::Node(n) if n.is_dir() => {}
                _ => return Err(libc::ENOTDIR),
            }
        }
        if to == ".cofferfs" {
            return Err(libc::EPERM);
        }
        Ok(src)
    }

    /// rename(2), in the order `Fs` checks (a user sees one errno either way).
    pub fn expect_rename(&self, from: &str, to: &str, noreplace: bool) -> Exp {
        let src = match self.source_and_target(from, to) {
            Err(e) => return Exp::Err(e),
            Ok(f) => f,
        };
        let src = match src {
            Found::Node(n) => n.is_dir(),
            // A file being written moves; its close stores it where it is then.
            Found::Writing => false,
        };
        if to == from {
            return Exp::Ok;
        }
        if within(to, from) {
            return Exp::Err(libc::EINVAL);
        }
        match self.find(to) {
            Err(_) => {}
            Ok(_) if noreplace => return Exp::Err(libc::EEXIST),
            // Renamed over, a file being written loses its name.
            Ok(Found::Writing) if src => return Exp::Err(libc::ENOTDIR),
            Ok(Found::Writing) => {}
            Ok(Found::Node(dst)) => match (src, dst.is_dir()) {
                (true, false) => return Exp::Err(libc::ENOTDIR),
                (false, true) => return Exp::Err(libc::EISDIR),
                (true, true) if !self.is_empty_dir(to) => return Exp::Err(libc::ENOTEMPTY),
                _ => {}
            },
        }
        // Files being written inside a renamed directory move with it.
        Exp::Ok
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        !self.tree.keys().any(|p| p != dir && within(p, dir))
            && !self
                .handles
                .iter()
                .any(|h| h.live() && parent_of(&h.path) == Some(dir))
    }

    /// Whether `a` and `b` are names of one hard-linked file.
    fn same_file(&self, a: &str, b: &str) -> bool {
        let link = |p: &str| {
            self.tree.get(p).and_then(|n| n.link).or_else(|| {
                self.handles
                    .iter()
                    .find(|h| h.live() && h.path == p)
                    .and_then(|h| h.link)
            })
        };
        link(a).is_some() && link(a) == link(b)
    }

    /// rename succeeded: the subtree moves with its contents and times.
    pub fn renamed(&mut self, from: &str, to: &str) {
        if from == to || self.same_file(from, to) {
            // Two names of one file: nothing happens (POSIX).
            return;
        }
        let replaced = self.tree.get(to).and_then(|n| n.link);
        let moved: Vec<String> = self
            .tree
            .keys()
            .filter(|p| within(p, from))
            .cloned()
            .collect();
        let gone: Vec<String> = self
            .tree
            .keys()
            .filter(|p| within(p, to))
            .cloned()
            .collect();
        for p in gone {
            self.tree.remove(&p);
        }
        self.unlink_handles(to, replaced);
        for p in moved {
            if let Some(n) = self.tree.remove(&p) {
                let q = format!("{to}{}", &p[from.len()..]);
                self.tree.insert(q, n);
            }
        }
        for h in &mut self.handles {
            if within(&h.path, from) {
                h.path = format!("{to}{}", &h.path[from.len()..]);
            }
        }
        self.touch_parent(from);
        self.touch_parent(to);
    }

    /// mkdir or symlink at `path`.
    pub fn expect_add(&self, path: &str) -> Exp {
        match self.can_add(path) {
            Ok(()) => Exp::Ok,
            Err(e) => Exp::Err(e),
        }
    }

    pub fn added(&mut self, path: &str, what: What, mode: u32) {
        self.tree.insert(
            path.to_string(),
            Node {
                what,
                mode,
                mtime: MTime::Fresh,
                link: None,
            },
        );
        self.touch_parent(path);
    }

    /// link(2) of `from` to `to`, in the order `Fs` checks.
    pub fn expect_link(&self, from: &str, to: &str) -> Exp {
        let src = match self.source_and_target(from, to) {
            Err(e) => return Exp::Err(e),
            Ok(f) => f,
        };
        match src {
            Found::Node(n) if n.is_dir() => return Exp::Err(libc::EPERM),
            Found::Writing => return Exp::Err(libc::EBUSY),
            Found::Node(_) => {}
        }
        if self.find(to).is_ok() {
            return Exp::Err(libc::EEXIST);
        }
        Exp::Ok
    }

    /// link succeeded: `to` names the file at `from`.
    pub fn linked(&mut self, from: &str, to: &str) {
        let link = match self.tree.get(from).and_then(|n| n.link) {
            Some(g) => g,
            None => {
                self.next_link += 1;
                self.next_link
            }
        };
        let Some(n) = self.tree.get_mut(from) else {
            return;
        };
        n.link = Some(link);
        let n = n.clone();
        self.tree.insert(to.to_string(), n);
        for h in &mut self.handles {
            if h.path == from {
                h.link = Some(link);
            }
        }
        self.touch_parent(to);
    }

    pub fn expect_unlink(&self, path: &str) -> Exp {
        match self.find(path) {
            Err(e) => Exp::Err(e),
            Ok(Found::Writing) => Exp::Ok,
            Ok(Found::Node(n)) if n.is_dir() => Exp::Err(libc::EISDIR),
            Ok(_) => Exp::Ok,
        }
    }

    pub fn expect_rmdir(&self, path: &str) -> Exp {
        match self.find(path) {
            Err(e) => Exp::Err(e),
            Ok(Found::Node(n)) if n.is_dir() => {
                if self.is_empty_dir(path) {
                    Exp::Ok
                } else {
                    Exp::Err(libc::ENOTEMPTY)
                }
            }
            Ok(_) => Exp::Err(libc::ENOTDIR),
        }
    }

    pub fn removed(&mut self, path: &str) {
        let link = self.tree.remove(path).and_then(|n| n.link);
        let link = link.or_else(|| {
            self.handles
                .iter()
                .find(|h| h.live() && h.path == path)
                .and_then(|h| h.link)
        });
        self.unlink_handles(path, link);
        self.touch_parent(path);
    }

    /// The file at `path` (hard-linked file `link`) lost that name: its open
    /// handles go on through another name it has, or, when none is left,
    /// store nothing.
    fn unlink_handles(&mut self, path: &str, link: Option<u64>) {
        let other = link.and_then(|g| {
            self.tree
                .iter()
                .find(|(_, n)| n.link == Some(g))
                .map(|(p, _)| p.clone())
        });
        for h in &mut self.handles {
            if h.path == path {
                match &other {
                    Some(o) => h.path = o.clone(),
                    None => h.unlinked = true,
                }
            }
        }
    }

    /// A stored file, directory or symlink at `path` (not one being written).
    pub fn stored(&self, path: &str) -> Result<&Node, i32> {
        match self.find(path)? {
            Found::Node(n) => Ok(n),
            Found::Writing => Err(libc::EBUSY),
        }
    }

    pub fn chmodded(&mut self, path: &str, mode: u32) {
        if let Some(n) = self.tree.get_mut(path) {
            n.mode = mode;
        }
        self.share(path);
    }

    pub fn utimensed(&mut self, path: &str, t: SystemTime) {
        if let Some(n) = self.tree.get_mut(path) {
            n.mtime = MTime::Pinned(t);
        }
        self.share(path);
    }

    /// truncate(2) of a stored file succeeded.
    pub fn truncated_path(&mut self, path: &str, size: usize) {
        if let Some(n) = self.tree.get_mut(path) {
            if let What::File(b) = &n.what {
                if b.len() == size {
                    return;
                }
                let mut v = b.to_vec();
                v.resize(size, 0);
                n.what = What::File(Bytes::from(v));
                n.touched();
                // New bytes for an existing path are reachable only through a
                // journal record, and truncate waits for it.
                self.durable_after_step = true;
            }
        }
        self.share(path);
    }

    /// Marks every open handle as possibly hit by a background fault.
    pub fn taint_all(&mut self) {
        for h in &mut self.handles {
            h.tainted = true;
        }
    }
}
