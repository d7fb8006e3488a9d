//! Lookup and listing: how the mount finds out what exists — the table first,
//! then the journal's overlay, then HEAD and LIST on the coffer — and how an
//! entry is shown (`Attr`). Changes nothing in the coffer or the journal.

use super::flight::Claim;
use super::node::{Kind, Node, Origin, ViewEntry, RESERVED, ROOT};
use super::table::ChildListing;
use super::Table;
use crate::fs::error::{FsError, FsResult};
use crate::fs::journal::{Overlay, Shape, Touched};
use crate::fs::{from_timestamp, lock, name_str, Attr, Fs, FsStats, BLOCK_SIZE};
use crate::protocol::rules;
use crate::store::{Child, KeyView, ListAll, ListChildren, ObjectMeta};
use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// How long a caller waits for another's listing of the same directory
/// before it lists the directory itself: a big directory's listing takes
/// seconds; one still running after this has likely stalled.
const LISTING_WAIT: Duration = Duration::from_secs(60);

impl Fs {
    /// Reads other mounts' journal batches; what they changed is asked for
    /// again: the directories holding the paths their records name.
    pub fn reload_journal(&self) {
        match self.journal.reload_touched() {
            Ok(Touched::Nothing) => {}
            Ok(Touched::Paths { entries, attrs }) => {
                let mut t = lock(&self.table);
                for p in &entries {
                    t.invalidate_path(p, true);
                }
                for p in attrs.iter().filter(|p| !entries.contains(*p)) {
                    t.invalidate_path(p, false);
                }
                self.journal.with_overlay(|o| root_from_journal(&mut t, o));
            }
            Ok(Touched::All) => {
                let mut t = lock(&self.table);
                t.invalidate();
                self.journal.with_overlay(|o| root_from_journal(&mut t, o));
            }
            Err(e) => log::warn!("reloading the journal: {}", e.message),
        }
    }

    pub(in crate::fs) fn attr(&self, n: &Node) -> Attr {
        let (default_perm, volatile) = match n.kind {
            Kind::Dir => (self.cfg.dir_mode, false),
            Kind::File => (self.cfg.file_mode, n.origin == Origin::Writing),
            Kind::Symlink => (0o777, false),
            Kind::Special { .. } => (self.cfg.file_mode, false),
        };
        let mtime = n.attrs.mtime.map(from_timestamp).unwrap_or(n.mtime);
        Attr {
            ino: n.ino,
            kind: n.kind,
            size: n.size,
            mtime,
            ctime: n.attrs.ctime.map(from_timestamp).unwrap_or(mtime),
            atime: n.attrs.atime.map(from_timestamp).unwrap_or(mtime),
            // A directory's links are counted by `shown`, which sees the table;
            // an open file whose name was removed has none.
            nlink: u32::from(!n.unlinked),
            perm: n.attrs.mode.map_or(default_perm, |m| (m & 0o7777) as u16),
            uid: n.attrs.uid.unwrap_or(self.cfg.uid),
            gid: n.attrs.gid.unwrap_or(self.cfg.gid),
            volatile,
        }
    }

    /// `attr` with its link count. A directory's: 2 + its subdirectories
    /// once a listing filled it (or it was made here); before that 1, which
    /// `find` and fts read as "unknown" (as on btrfs) rather than as "no
    /// subdirectories". A stat never lists a subtree to count. A file's: its
    /// names (hard links), 0 once unlinked while open.
    pub(in crate::fs) fn shown(&self, t: &Table, n: &Node) -> Attr {
        let mut a = self.attr(n);
        if n.kind != Kind::Dir && !n.unlinked {
            // A hard-linked file: its names in the journal, some perhaps in
            // directories not listed yet.
            let names = match n.attrs.link {
                Some(g) => self.journal.with_overlay(|o| o.links(g)),
                None => 1,
            };
            a.nlink = u32::try_from(names.max(n.aliases.len() + 1)).unwrap_or(u32::MAX);
        }
        if n.kind == Kind::Dir && n.listed.is_some() {
            let subdirs = t.subdirs(n.ino);
            a.nlink = u32::try_from(subdirs.saturating_add(2)).unwrap_or(u32::MAX);
        }
        a
    }

    pub(in crate::fs) fn node(&self, ino: u64) -> FsResult<Node> {
        lock(&self.table)
            .get(ino)
            .cloned()
            .ok_or_else(FsError::not_found)
    }

    pub(in crate::fs) fn dir(&self, ino: u64) -> FsResult<Node> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{:?}: not a directory", n.path()),
            ));
        }
        Ok(n)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let a = self.lookup_view(parent, name)?;
        // As of a past time, a version since expired is not there.
        self.check_version(a.ino)?;
        Ok(a)
    }

    fn lookup_view(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        if parent == ROOT && name == RESERVED {
            return Err(FsError::not_found());
        }
        let ttl = self.cfg.metadata_ttl;
        {
            let t = lock(&self.table);
            match t.child(parent, name) {
                Some(n) if n.origin == Origin::Writing || n.seen.elapsed() < ttl => {
                    return Ok(self.shown(&t, n))
                }
                None if t.listed_within(parent, ttl) => return Err(FsError::not_found()),
                _ => {}
            }
        }
        if self.negative.absent(parent, name, ttl) {
            return Err(FsError::not_found());
        }
        let path = dir.child_path(name);
        if rules::validate_key(&path).is_err() {
            return Err(FsError::not_found());
        }
        let (found, keys) = self.probe(&dir, name)?;
        let now = Instant::now();
        let mut t = lock(&self.table);
        let Some(entry) = found else {
            self.negative.insert(parent, name, now);
            // Not in the view; but this mount may be writing it.
            return match t.child(parent, name) {
                Some(n) if n.origin == Origin::Writing => Ok(self.shown(&t, n)),
                Some(n) => {
                    let ino = n.ino;
                    t.remove(ino);
                    Err(FsError::not_found())
                }
                None => Err(FsError::not_found()),
            };
        };
        // The view's answer stands over what the table remembers: a directory
        // renamed away elsewhere must not shadow what took its name.
        if let Some(old) = t.child(parent, name) {
            if old.kind != entry.kind && old.origin == Origin::Stored {
                let ino = old.ino;
                t.remove(ino);
            }
        }
        let ino = t
            .upsert(parent, name, entry, Origin::Stored, now)
            .ok_or_else(FsError::not_found)?;
        if let Some(keys) = keys.filter(|_| t.get(ino).is_some_and(|n| n.kind == Kind::Dir)) {
            // The page held the whole directory: it is listed too.
            self.journal
                .with_overlay(|o| t.apply_listing(ino, &keys, o, now));
        }
        let n = t.get(ino).ok_or_else(FsError::not_found)?;
        Ok(self.shown(&t, n))
    }

    /// What the view has at `dir/name`: the journal first, else one LIST
    /// of prefix `dir/name` (`ListChildren::named`; rarely two). With a
    /// directory, its keys when that page held all of them.
    pub(in crate::fs) fn probe(
        &self,
        dir: &Node,
        name: &str,
    ) -> FsResult<(Option<ViewEntry>, Option<Vec<ObjectMeta>>)> {
        let path = dir.child_path(name);
        let (journal, attrs, dir_below) = self.journal.with_overlay(|o| {
            let e = o
                .get(&path)
                .and_then(|e| ViewEntry::from_journal(&e.shape, e.attrs));
            (
                e,
                o.attrs(&path).unwrap_or_default(),
                o.has_entries_under(&path),
            )
        });
        if let Some(e) = journal {
            return Ok((Some(e), None));
        }
        if dir_below {
            return Ok((Some(ViewEntry::dir(attrs, SystemTime::now())), None));
        }
        let prefix = dir.prefix();
        let view = |page: &[ObjectMeta]| self.key_views(page);
        let mut object = None;
        for c in ListChildren::named(self.store.as_ref(), &prefix, name, view) {
            match c? {
                Child::Object(meta) => object = Some(meta),
                Child::Dir { mtime, keys, .. } => {
                    let mtime = mtime.unwrap_or(SystemTime::UNIX_EPOCH);
                    return Ok((Some(ViewEntry::dir(attrs, mtime)), keys));
                }
            }
        }
        Ok((object.map(|m| ViewEntry::object(&m, attrs)), None))
    }

    /// What the view makes of each key of a listed page (one overlay lock).
    fn key_views(&self, page: &[ObjectMeta]) -> Vec<KeyView> {
        self.journal
            .with_overlay(|o| page.iter().map(|m| key_view(o, &m.key)).collect())
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = lock(&self.table);
        t.get(ino)
            .map(|n| self.shown(&t, n))
            .ok_or_else(FsError::not_found)
    }

    /// statfs: a coffer has no fixed size, so the total is 1 PiB (or what is
    /// used plus 1 TiB, if more); used is the size of the files the table
    /// knows of (what lookups and listings have found, not a count of the
    /// coffer); inodes are as many as known entries plus 2^32 free.
    pub fn statfs(&self) -> FsStats {
        const PIB: u64 = 1 << 50;
        const TIB: u64 = 1 << 40;
        let block = u64::from(BLOCK_SIZE);
        let (used, entries) = {
            let t = lock(&self.table);
            let all = t.subtree(ROOT);
            let used = all
                .iter()
                .filter(|(_, n)| n.kind == Kind::File)
                .fold(0u64, |sum, (_, n)| {
                    sum.saturating_add(n.size.div_ceil(block))
                });
            (used, all.len() as u64 + 1)
        };
        let blocks = (PIB / block).max(used.saturating_add(TIB / block));
        let ffree = 1 << 32;
        FsStats {
            blocks,
            bfree: blocks - used,
            files: entries.saturating_add(ffree),
            ffree,
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<String> {
        let n = self.node(ino)?;
        match n.target() {
            Some(t) => Ok(t.into()),
            None => Err(FsError::new(
                libc::EINVAL,
                format!("{:?}: not a symlink", n.path()),
            )),
        }
    }

    /// `parent/name` if it exists (asking the coffer when the table cannot tell);
    /// `None` where lookup says ENOENT.
    pub(in crate::fs) fn lookup_opt(&self, parent: u64, name: &OsStr) -> FsResult<Option<Attr>> {
        match self.lookup(parent, name) {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(in crate::fs) fn exists(&self, parent: u64, name: &str) -> FsResult<bool> {
        Ok(self.lookup_opt(parent, OsStr::new(name))?.is_some())
    }

    /// Lists directory `dir` unless a listing within the TTL filled it. One
    /// listing of a directory at a time: while another caller (a FUSE thread
    /// or a read-ahead worker, neither of which waits for a FUSE request)
    /// lists it, this one waits for that listing, at most `LISTING_WAIT`, and
    /// lists it itself only if that left it unlisted (it failed, or took
    /// longer).
    pub(in crate::fs) fn ensure_listed(&self, dir: &Node) -> FsResult<()> {
        let fresh = || lock(&self.table).listed_within(dir.ino, self.cfg.metadata_ttl);
        if fresh() {
            return Ok(());
        }
        let _mine = match self.flights.claim(dir.ino) {
            Claim::Mine(mine) => Some(mine),
            Claim::Busy(theirs) => {
                theirs.wait(LISTING_WAIT);
                if fresh() {
                    return Ok(());
                }
                match self.flights.claim(dir.ino) {
                    Claim::Mine(mine) => Some(mine),
                    // Another waiter took it over: no second wait.
                    Claim::Busy(_) => None,
                }
            }
        };
        // Listed between the check and the claim.
        if fresh() {
            return Ok(());
        }
        self.list_dir(dir)
    }

    /// Lists the directory's children (`ListChildren`: its objects, and its
    /// subdirectories' names, jumping past big ones) into the table.
    /// Children go into the table a page at a time (`ChildListing::begin`):
    /// a directory of a million names never holds them all in a `Vec`.
    pub(in crate::fs) fn list_dir(&self, dir: &Node) -> FsResult<()> {
        self.list_dir_unless(dir, || false)
    }

    /// `list_dir`, given up (an error) as soon as `stop` says so between
    /// children: a read-ahead ends at unmount without finishing its listing.
    pub(in crate::fs) fn list_dir_unless(
        &self,
        dir: &Node,
        stop: impl Fn() -> bool,
    ) -> FsResult<()> {
        const PAGE: usize = 1000;
        let prefix = dir.prefix();
        let view = |page: &[ObjectMeta]| self.key_views(page);
        let mut listing = ChildListing::begin(dir.ino, Instant::now());
        let mut page: Vec<Child> = Vec::with_capacity(PAGE);
        let mut children = ListChildren::new(self.store.as_ref(), &prefix, view).peekable();
        while let Some(c) = children.next() {
            if stop() {
                return Err(FsError::new(
                    libc::EINTR,
                    format!("listing {prefix:?}: stopped"),
                ));
            }
            page.push(c.map_err(|e| FsError::io(&format!("listing {prefix:?}"), &e))?);
            if page.len() == PAGE || children.peek().is_none() {
                let mut t = lock(&self.table);
                self.journal
                    .with_overlay(|o| t.apply_children_page(&mut listing, &page, o));
                page.clear();
                self.listed_pages.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut t = lock(&self.table);
        self.journal.with_overlay(|o| {
            t.finish_children(listing, o);
            if dir.ino == ROOT {
                root_from_journal(&mut t, o);
            }
        });
        Ok(())
    }

    /// One listing of the directory's prefix fills its whole subtree (what
    /// a directory rename must know).
    pub(in crate::fs) fn list_subtree(&self, dir: &Node) -> FsResult<()> {
        let prefix = dir.prefix();
        let objects: Vec<ObjectMeta> = ListAll::new(self.store.as_ref(), &prefix)
            .collect::<Result<_, _>>()
            .map_err(|e| FsError::io(&format!("listing {prefix:?}"), &e))?;
        let now = Instant::now();
        let mut t = lock(&self.table);
        self.journal.with_overlay(|o| {
            t.apply_listing(dir.ino, &objects, o, now);
            if dir.ino == ROOT {
                root_from_journal(&mut t, o);
            }
        });
        Ok(())
    }

    /// The root's attributes as the journal has them (its times change as
    /// entries come and go; nothing lists the root from above).
    pub(in crate::fs) fn load_root(&self) {
        let mut t = lock(&self.table);
        self.journal.with_overlay(|o| root_from_journal(&mut t, o));
    }
}

/// What a listing makes of the object at `key`: shown; skipped (hidden, or
/// the journal shows something else at its path); or hidden with every key
/// beneath the shortest hidden path above it, which a listing jumps past.
fn key_view(o: &Overlay, key: &str) -> KeyView {
    if o.get(key).is_some_and(|e| e.shape != Shape::AttrsOnly) {
        return KeyView::Skipped;
    }
    if !o.hides_object(key) {
        return KeyView::Shown;
    }
    let mut end = 0;
    loop {
        let next = key[end..].find('/').map_or(key.len(), |i| end + i);
        if hides_beneath(o, &key[..next]) {
            return KeyView::HiddenBelow(next);
        }
        if next >= key.len() {
            return KeyView::Skipped;
        }
        end = next + 1;
    }
}

/// Whether a hide covers `path` or a path above it, so that no key beneath
/// `path/` shows as an object. Asked as `hides_object` of a key beneath it
/// that no journal path can be (keys hold no control characters).
fn hides_beneath(o: &Overlay, path: &str) -> bool {
    o.hides_object(&format!("{path}/\u{0}"))
}

fn root_from_journal(t: &mut Table, o: &Overlay) {
    if let (Some(root), Some(attrs)) = (t.get_mut(ROOT), o.attrs("")) {
        root.attrs = attrs.into();
    }
}
