//! The namespace: operations that make, rename, hide and change entries —
//! mkdir, symlink, create, rename, unlink, rmdir, setattr — and the write-once
//! rules they follow (no deletes without --allow-delete, nothing renamed or
//! hidden while being written, `.cofferfs` reserved). Each change is a journal
//! record and a change of the view's table. Never moves or deletes bytes in the
//! coffer; knows nothing of FUSE or of how a file's bytes are written.

use super::error::{FsError, FsResult};
use super::file_write::{WriteHandle, Writer};
use super::handles::Handle;
use super::journal::{self, Attrs, Record, SpecialKind};
use super::view::{Kind, Node, Origin, Table, ViewEntry, RESERVED, ROOT};
use super::{lock, name_str, to_timestamp, touched_now, Attr, Fs, Owner, SetAttr};
use crate::protocol::rules;
use crate::store::StoreError;
use std::ffi::OsStr;
use std::time::{Instant, SystemTime};

impl Fs {
    /// The owner of a new entry in `dir` made by `by`, and whether `dir` is
    /// setgid. Recorded only where it differs from the mount's own uid/gid: an
    /// unrecorded owner shows as the mount's, so what a mount's user makes stays
    /// theirs on a machine where they have another uid. As Linux does, a setgid
    /// directory gives its group instead of the creator's.
    fn owner_attrs(&self, dir: &Node, by: Owner) -> (Attrs, bool) {
        let d = self.attr(dir);
        let setgid = u32::from(d.perm) & libc::S_ISGID != 0;
        let gid = if setgid { d.gid } else { by.gid };
        let attrs = Attrs {
            uid: (by.uid != self.cfg.uid).then_some(by.uid),
            gid: (gid != self.cfg.gid).then_some(gid),
            ..Attrs::default()
        };
        (attrs, setgid)
    }

    /// Checks a new entry's name: valid as a key, not the reserved prefix.
    fn new_path(&self, parent: &Node, name: &str, op: &str) -> FsResult<String> {
        if parent.ino == ROOT && name == RESERVED {
            return Err(FsError::new(
                libc::EPERM,
                format!("{op} {name:?}: reserved for cofferfs's own records"),
            ));
        }
        let path = parent.child_path(name);
        rules::validate_key(&path).map_err(|reason| {
            FsError::from(StoreError::InvalidKey {
                key: path.clone(),
                reason,
            })
        })?;
        self.writable(op, &path)?;
        Ok(path)
    }

    /// Adds a new entry to the table and the journal.
    fn add_entry(
        &self,
        parent: u64,
        name: &str,
        record: Record,
        entry: ViewEntry,
    ) -> FsResult<Attr> {
        let mut records = self.stale_xattrs(record.path());
        records.push(record);
        self.journal.record(records);
        let now = Instant::now();
        let mut t = lock(&self.table);
        let ino = t
            .upsert(parent, name, entry, Origin::Stored, now)
            .ok_or_else(FsError::not_found)?;
        if let Some(n) = t.get_mut(ino) {
            if n.kind == Kind::Dir {
                // Nothing lies beneath a directory made just now.
                n.listed = Some(now.into());
            }
        }
        t.mark_stored(ino, now);
        self.entries_changed(&mut t, &[parent]);
        let n = t.get(ino).ok_or_else(FsError::not_found)?;
        Ok(self.shown(&t, n))
    }

    /// The entries of directories `dirs` changed: their mtime and ctime are
    /// now, in the table and in the journal (one waiting record per directory
    /// at most, see `Committer::record_times`). Called under `table`, so the
    /// journal gets the times in the order the table does.
    pub(in crate::fs) fn entries_changed(&self, t: &mut Table, dirs: &[u64]) {
        let times = touched_now();
        for (i, d) in dirs.iter().enumerate() {
            if dirs[..i].contains(d) {
                continue;
            }
            let Some(n) = t.get_mut(*d).filter(|n| n.kind == Kind::Dir) else {
                continue;
            };
            n.attrs = n.attrs.merged(times).into();
            self.journal.record_times(&n.path(), times);
        }
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, by: Owner) -> FsResult<Attr> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        let path = self.new_path(&dir, name, "mkdir")?;
        if self.exists(parent, name)? {
            return Err(FsError::new(
                libc::EEXIST,
                format!("mkdir {path:?}: exists"),
            ));
        }
        let (owner, setgid) = self.owner_attrs(&dir, by);
        // A subdirectory of a setgid directory is setgid too (Linux).
        let inherited = if setgid { libc::S_ISGID } else { 0 };
        let attrs = Attrs {
            mode: Some(mode & 0o7777 | inherited),
            mtime: Some(to_timestamp(SystemTime::now())),
            ..owner
        };
        self.add_entry(
            parent,
            name,
            Record::Mkdir { path, attrs },
            ViewEntry::dir(attrs, SystemTime::now()),
        )
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        by: Owner,
    ) -> FsResult<Attr> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        let path = self.new_path(&dir, name, "symlink")?;
        let target = target
            .to_str()
            .ok_or_else(|| {
                FsError::new(
                    libc::EINVAL,
                    format!("symlink {path:?}: target is not UTF-8"),
                )
            })?
            .to_string();
        if self.exists(parent, name)? {
            return Err(FsError::new(
                libc::EEXIST,
                format!("symlink {path:?}: exists"),
            ));
        }
        let attrs = Attrs {
            mtime: Some(to_timestamp(SystemTime::now())),
            ..self.owner_attrs(&dir, by).0
        };
        let entry = ViewEntry::from_journal(
            &journal::Shape::Symlink {
                target: target.clone(),
            },
            attrs,
        )
        .ok_or_else(FsError::not_found)?;
        self.add_entry(
            parent,
            name,
            Record::Symlink {
                path,
                target,
                attrs,
            },
            entry,
        )
    }

    /// mknod: a FIFO, socket or device node (a journal record only; the
    /// kernel does their I/O and never asks the mount), or an empty file.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        by: Owner,
    ) -> FsResult<Attr> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        let path = self.new_path(&dir, name, "mknod")?;
        let special = match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(SpecialKind::Fifo),
            libc::S_IFSOCK => Some(SpecialKind::Socket),
            libc::S_IFCHR => Some(SpecialKind::Char),
            libc::S_IFBLK => Some(SpecialKind::Block),
            0 | libc::S_IFREG => None,
            other => {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!("mknod {path:?}: file type {other:o}"),
                ))
            }
        };
        if self.exists(parent, name)? {
            return Err(FsError::new(
                libc::EEXIST,
                format!("mknod {path:?}: exists"),
            ));
        }
        let attrs = Attrs {
            mode: Some(mode & 0o7777),
            ..touched_now().merged(self.owner_attrs(&dir, by).0)
        };
        let (record, shape) = match special {
            Some(special) => {
                // Only devices have a number.
                let rdev = match special {
                    SpecialKind::Char | SpecialKind::Block => rdev,
                    SpecialKind::Fifo | SpecialKind::Socket => 0,
                };
                let record = Record::Special {
                    path,
                    special,
                    rdev,
                    attrs,
                };
                (record, journal::Shape::Special { special, rdev })
            }
            None => (Record::File { path, attrs }, journal::Shape::Empty),
        };
        let entry = ViewEntry::from_journal(&shape, attrs).ok_or_else(FsError::not_found)?;
        self.add_entry(parent, name, record, entry)
    }

    /// Creates and opens a file; `pid` is the calling thread (0: unknown).
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        pid: u32,
        by: Owner,
    ) -> FsResult<(Attr, u64)> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        let path = self.new_path(&dir, name, "create")?;
        if let Some(a) = self.lookup_opt(parent, OsStr::new(name))? {
            if flags & libc::O_EXCL != 0 {
                return Err(FsError::new(
                    libc::EEXIST,
                    format!("create {path:?}: exists"),
                ));
            }
            if a.kind == Kind::Dir {
                return Err(FsError::new(libc::EISDIR, format!("{path:?}: a directory")));
            }
            let (fh, _) = self.open(a.ino, flags, pid)?;
            return Ok((self.getattr(a.ino)?, fh));
        }
        let stale = self.stale_xattrs(&path);
        if !stale.is_empty() {
            self.journal.record(stale);
        }
        // The file's own key when the coffer has nothing there; if it turns out
        // taken (another client's object or open upload), a fresh key instead.
        let (key, fallback) = if self.own_key_free(&path) {
            (path.clone(), Some(crate::fs::data_key()))
        } else {
            (crate::fs::data_key(), None)
        };
        let now = Instant::now();
        let _ns = lock(&self.ns);
        let mut t = lock(&self.table);
        if t.child(parent, name).is_some() {
            return Err(FsError::new(
                libc::EEXIST,
                format!("create {path:?}: exists"),
            ));
        }
        // The owner goes into the record the file's close makes.
        let attrs = Attrs {
            mode: Some(mode & 0o7777),
            ..touched_now().merged(self.owner_attrs(&dir, by).0)
        };
        let entry = ViewEntry {
            kind: Kind::File,
            size: 0,
            data: None,
            target: None,
            attrs,
            mtime: SystemTime::now(),
        };
        let ino = t
            .upsert(parent, name, entry, Origin::Writing, now)
            .ok_or_else(FsError::not_found)?;
        self.entries_changed(&mut t, &[parent]);
        let attr = t
            .get(ino)
            .map(|n| self.attr(n))
            .ok_or_else(FsError::not_found)?;
        drop(t);
        let w = WriteHandle::new(&self.uploader, &self.staging, &key, fallback);
        let fh = self.add_file_handle(
            ino,
            Handle::Write(Box::new(Writer::new(
                ino,
                w,
                None,
                (mode & 0o7777) as u16,
                pid,
            ))),
        );
        Ok((attr, fh))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let name = name_str(name)?;
        let a = self.lookup(parent, OsStr::new(name))?;
        let n = self.node(a.ino)?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("unlink {:?}: a directory", n.path()),
            ));
        }
        self.may_delete(&n, "unlink")?;
        self.hide(&n, parent, name, "unlink");
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let name = name_str(name)?;
        let a = self.lookup(parent, OsStr::new(name))?;
        let n = self.node(a.ino)?;
        if n.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("rmdir {:?}: not a directory", n.path()),
            ));
        }
        // Refused before "not empty": without --allow-delete nothing is removed.
        self.may_delete(&n, "rmdir")?;
        self.ensure_empty(&n, "rmdir")?;
        self.hide(&n, parent, name, "rmdir");
        Ok(())
    }

    /// ENOTEMPTY unless directory `dir` shows nothing.
    fn ensure_empty(&self, dir: &Node, op: &str) -> FsResult<()> {
        self.ensure_listed(dir)?;
        if !lock(&self.table).children(dir.ino).is_empty() {
            return Err(FsError::new(
                libc::ENOTEMPTY,
                format!("{op} {:?}: not empty", dir.path()),
            ));
        }
        Ok(())
    }

    /// unlink/rmdir hide the path on a writable mount (the bytes stay in the
    /// coffer). With --no-delete, an entry that holds coffer bytes (a file
    /// with data) is refused with EPERM; one that holds none (an empty file,
    /// a symlink, a directory) can always go. A file being written may go too:
    /// its handles keep it, unlinked (`Table::remove`).
    fn may_delete(&self, n: &Node, op: &str) -> FsResult<()> {
        self.writable(op, &n.path())?;
        if !self.cfg.allow_delete && n.kind == Kind::File && n.has_data() {
            return Err(FsError::new(
                libc::EPERM,
                format!(
                    "{op} {:?}: this mount was started with --no-delete and the file holds \
                     bytes of the write-once coffer (without --no-delete, rm hides the path; \
                     the bytes stay in the coffer)",
                    n.path()
                ),
            ));
        }
        Ok(())
    }

    /// Hides the path; its bytes stay in the coffer. A directory that only
    /// its entries implied is recorded first, so it stays when its last
    /// entry goes, as directories do.
    /// `n` is the entry at `dir`/`name` (a hard-linked file keeps its other
    /// names).
    fn hide(&self, n: &Node, dir: u64, name: &str, op: &str) {
        let mut t = lock(&self.table);
        let Some(dir_node) = t.get(dir).cloned() else {
            return;
        };
        let path = dir_node.child_path(name);
        let mut records: Vec<Record> = self.keep_dir(&dir_node).into_iter().collect();
        records.push(Record::Hide { path: path.clone() });
        self.journal.record(records);
        t.unlink_name(dir, name);
        self.links_changed(&mut t, n.ino);
        self.entries_changed(&mut t, &[dir]);
        drop(t);
        log::info!("{op} {path:?}: hidden (its bytes stay in the coffer)");
    }

    /// The record that keeps directory `dir` when only its entries imply it,
    /// so it stays when one of them goes (rm, mv out), as directories do.
    fn keep_dir(&self, dir: &Node) -> Option<Record> {
        if dir.ino == ROOT {
            return None;
        }
        let explicit = self.journal.with_overlay(|o| {
            o.get(&dir.path())
                .is_some_and(|e| e.shape == journal::Shape::Dir)
        });
        (!explicit).then(|| dir.view().record_at(&dir.path()))
    }

    /// A hard-linked file lost a name and keeps others: its ctime changes
    /// (POSIX), recorded at a name it still has.
    fn links_changed(&self, t: &mut Table, ino: u64) {
        let Some(n) = t
            .get_mut(ino)
            .filter(|n| !n.unlinked && n.kind != Kind::Dir)
        else {
            return;
        };
        let ctime = touched_now().ctime;
        n.attrs.ctime = ctime;
        self.journal.record(vec![Record::Attr {
            path: n.path(),
            attrs: Attrs {
                ctime,
                ..Attrs::default()
            },
        }]);
    }

    /// link(2): `newparent/newname` becomes another name of file `ino`. Both
    /// names are recorded with the file's identity (`Attrs::link`); what is
    /// recorded at either applies to both.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Attr> {
        let newname = name_str(newname)?;
        let n = self.node(ino)?;
        let dir = self.dir(newparent)?;
        let to = self.new_path(&dir, newname, "link")?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EPERM,
                format!("link {:?}: a directory", n.path()),
            ));
        }
        if n.unlinked {
            return Err(FsError::not_found());
        }
        if n.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!(
                    "link {:?}: being written; link it once it is closed",
                    n.path()
                ),
            ));
        }
        if self.exists(newparent, newname)? {
            return Err(FsError::new(libc::EEXIST, format!("link: {to:?} exists")));
        }
        let _ns = lock(&self.ns);
        let mut t = lock(&self.table);
        let n = t.get(ino).cloned().ok_or_else(FsError::not_found)?;
        if t.child(newparent, newname).is_some() {
            return Err(FsError::new(libc::EEXIST, format!("link: {to:?} exists")));
        }
        let link = n.attrs.link.unwrap_or_else(|| rand::random::<u64>().max(1));
        let mut v = n.view();
        v.attrs.link = Some(link);
        v.attrs.ctime = touched_now().ctime;
        let mut records = Vec::new();
        if n.attrs.link.is_none() {
            // The first link: the existing name joins the identity too.
            records.push(v.record_at(&n.path()));
        }
        records.push(v.record_at(&to));
        self.journal.record(records);
        if let Some(m) = t.get_mut(ino) {
            m.attrs = v.attrs.into();
        }
        t.add_alias(ino, newparent, newname);
        self.entries_changed(&mut t, &[newparent]);
        drop(t);
        self.getattr(ino)
    }

    /// rename: the new path is bound to the same bytes (and attributes), the old
    /// one hidden. No bytes move; nothing is deleted.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> FsResult<()> {
        let src = self.lookup(parent, name)?;
        let src = self.node(src.ino)?;
        let name_s = name_str(name)?;
        // The name renamed: a hard-linked file's node may carry another.
        let from = self.dir(parent)?.child_path(name_s);
        let newname_s = name_str(newname)?;
        let newdir = self.dir(newparent)?;
        let to = self.new_path(&newdir, newname_s, "rename")?;
        if to == from {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("rename {from:?} into itself"),
            ));
        }
        let replaces = self.lookup_opt(newparent, newname)?;
        let replaced_ino = replaces.as_ref().map(|a| a.ino);
        if let Some(dst) = &replaces {
            let dst = self.node(dst.ino)?;
            if noreplace {
                return Err(FsError::new(libc::EEXIST, format!("rename: {to:?} exists")));
            }
            if dst.ino == src.ino {
                // Two names of one file: POSIX says nothing happens.
                return Ok(());
            }
            match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                (true, false) => {
                    return Err(FsError::new(
                        libc::ENOTDIR,
                        format!("rename: {to:?} not a directory"),
                    ))
                }
                (false, true) => {
                    return Err(FsError::new(
                        libc::EISDIR,
                        format!("rename: {to:?} is a directory"),
                    ))
                }
                (true, true) => self.ensure_empty(&dst, "rename")?,
                (false, false) => {}
            }
        }
        // Every entry beneath a directory is recorded at its new path: none
        // may leave the table between the listing and the records.
        let _hold = self.hold_table();
        if src.kind == Kind::Dir {
            self.list_subtree(&src)?;
        }
        // From here to the table's change, nothing else reshapes the namespace:
        // a file created or closed inside the directory meanwhile is recorded
        // either before (and moved with it) or after (at its new path).
        let _ns = lock(&self.ns);
        let writers = self.handles.overwritten_versions();
        let mut t = lock(&self.table);
        let src = t.get(src.ino).cloned().ok_or_else(FsError::not_found)?;
        let mut moved = src.view();
        moved.attrs = moved.attrs.merged(Attrs {
            ctime: touched_now().ctime,
            ..Attrs::default()
        });
        // What was at the new path goes first, attributes and all: the moved
        // entry keeps only its own.
        let mut records: Vec<Record> = t
            .get(parent)
            .and_then(|d| self.keep_dir(d))
            .into_iter()
            .collect();
        if replaces.is_some() {
            records.push(Record::Hide { path: to.clone() });
        }
        match (src.origin, writers.get(&src.ino)) {
            (Origin::Stored, _) => records.push(moved.record_at(&to)),
            // Being overwritten: the version it had moves; its close records
            // the new one at the path it has then.
            (Origin::Writing, Some(Some(before))) => {
                let mut before = before.clone();
                before.attrs.ctime = moved.attrs.ctime;
                records.push(before.record_at(&to));
            }
            (Origin::Writing, _) => {}
        }
        for (p, n) in t.subtree(src.ino) {
            let rel = p.strip_prefix(&from).unwrap_or(&p);
            let at = format!("{to}{rel}");
            // A path no object key can hold is refused before anything is
            // recorded: the records so far are only in this vector.
            if at.len() > rules::MAX_KEY_BYTES {
                return Err(FsError::new(
                    libc::ENAMETOOLONG,
                    format!(
                        "rename {from:?} to {to:?}: {at:?} would be {} bytes; object keys \
                         are at most {}",
                        at.len(),
                        rules::MAX_KEY_BYTES
                    ),
                ));
            }
            match (n.origin, writers.get(&n.ino)) {
                (Origin::Stored, _) => records.push(n.view().record_at(&at)),
                // Being overwritten: the version it had stands at the new path
                // until its close records the new one there.
                (Origin::Writing, Some(Some(before))) => records.push(before.record_at(&at)),
                // New and being written: its close records it where it is then.
                (Origin::Writing, _) => {}
            }
        }
        // Extended attributes go with every path moved (a bind does not carry them).
        records.extend(
            self.journal
                .with_overlay(|o| super::xattr::moved_xattrs(o, &from, &to)),
        );
        records.push(Record::Hide { path: from.clone() });
        self.journal.record(records);
        t.rename_name(parent, name_s, newparent, newname_s);
        if let Some(dst) = replaced_ino {
            // A hard-linked file renamed over keeps its other names.
            self.links_changed(&mut t, dst);
        }
        match src.origin {
            Origin::Stored => t.mark_stored(src.ino, Instant::now()),
            Origin::Writing => t.mark_stored(newparent, Instant::now()),
        }
        if let Some(n) = t.get_mut(src.ino) {
            n.attrs = moved.attrs.into();
        }
        self.entries_changed(&mut t, &[parent, newparent]);
        Ok(())
    }

    /// fallocate(2) on write handle `fh`: mode 0 makes the file at least
    /// `offset + length` bytes long, as an ftruncate up would (zeros; a
    /// coffer has no space to reserve); it never shrinks it. Every other mode
    /// (keep size, punch hole, collapse, zero or insert range) is EOPNOTSUPP.
    pub fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        if mode != 0 {
            return Err(FsError::new(
                libc::EOPNOTSUPP,
                format!("fallocate mode {mode:#x}: only mode 0 (extend) is supported"),
            ));
        }
        let h = self.handles.get(fh)?;
        let Handle::Write(w) = &*h else {
            return Err(FsError::new(libc::EBADF, "fallocate: not open for writing"));
        };
        if w.ino != ino {
            return Err(FsError::new(
                libc::EBADF,
                "fallocate: another file's handle",
            ));
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| FsError::new(libc::EFBIG, "fallocate: beyond 2^64 bytes"))?;
        if end <= lock(&w.w).size() {
            return Ok(());
        }
        let node = self.node(ino)?;
        self.writable("fallocate", &node.path())?;
        self.truncate(&node, Some(fh), end)
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, set: SetAttr) -> FsResult<Attr> {
        let node = match self.node(ino) {
            Ok(n) => n,
            // ftruncate on a finished handle of a file since removed: the
            // handle's own answer (EPERM after fsync, or its first error).
            Err(e) => match (set.size, fh.map(|f| self.handles.get(f))) {
                (Some(size), Some(Ok(h))) => match &*h {
                    Handle::Write(w) if w.ino == ino => {
                        lock(&w.w).truncate(size)?;
                        return Err(e);
                    }
                    _ => return Err(e),
                },
                _ => return Err(e),
            },
        };
        self.writable("setattr", &node.path())?;
        if let Some(size) = set.size {
            self.truncate(&node, fh, size)?;
        }
        let attrs = Attrs {
            mode: set.mode.map(|m| m & 0o7777),
            uid: set.uid,
            gid: set.gid,
            mtime: set.mtime.map(to_timestamp),
            ctime: None,
            atime: set.atime.map(to_timestamp),
            link: None,
        };
        if attrs != Attrs::default() {
            let attrs = Attrs {
                ctime: touched_now().ctime,
                ..attrs
            };
            // Metadata returns at once; the batch goes up within a second.
            let path = {
                let _ns = lock(&self.ns);
                let mut t = lock(&self.table);
                let Some(n) = t.get_mut(ino) else {
                    return Err(FsError::not_found());
                };
                n.attrs = n.attrs.merged(attrs).into();
                n.path()
            };
            if !self.being_written(ino) && !node.unlinked {
                self.journal.record(vec![Record::Attr { path, attrs }]);
            }
            // A file being written carries its attributes in the record its
            // close makes, so a failed close leaves no trace of them either.
        }
        self.getattr(ino)
    }
}

#[cfg(test)]
mod tests;
