//! A file open for writing, as the mount sees it: the `Writer` around a
//! `WriteHandle`, and the operations that write, truncate, flush, fsync and
//! release it. Here a finished write becomes a journal record and the view's
//! entry; a failed one gives the path back its old version. Knows nothing of
//! FUSE; how the bytes reach the coffer is `handle`'s business.

use super::handle::{Finished, ReadFrom, Source, WriteHandle};
use crate::fs::cache::{ObjectId, ReadState};
use crate::fs::error::{FsError, FsResult};
use crate::fs::handles::Handle;
use crate::fs::journal::{Attrs, Record};
use crate::fs::view::{Data, Kind, Node, Origin, ViewEntry};
use crate::fs::{lock, touched_now, Fs};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What ends a round of writing: fsync(2) keeps the file open, a close by
/// its opener ends it for the user, the release ends the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::fs) enum End {
    Fsync,
    Close,
    Release,
}

/// A file open for writing, and what its path showed before (restored if the
/// write fails).
pub(in crate::fs) struct Writer {
    pub(in crate::fs) ino: u64,
    pub(in crate::fs) w: Mutex<WriteHandle>,
    /// The version a failure falls back to: what the path showed when the
    /// handle opened, or the version it last stored (a write after fsync or
    /// close goes on to a new one). A leaf lock.
    pub(in crate::fs) before: Mutex<Option<ViewEntry>>,
    /// Reads through this handle of versions it stored (O_RDWR).
    pub(in crate::fs) reading: Mutex<ReadState>,
    pub(in crate::fs) mode: u16,
    /// An empty close already recorded the file (a dup'd descriptor was closed
    /// while the writer goes on, as dd and shells do).
    /// With the attributes it was recorded with.
    pub(in crate::fs) empty_recorded: Mutex<Option<Attrs>>,
    /// ... and an fsync(2) then said it was stored, with these attributes:
    /// it is the version a failure of this handle falls back to.
    pub(in crate::fs) empty_synced: Mutex<Option<Attrs>>,
    /// The empty version of the file this handle put in the journal, while it
    /// stands: a rename of a directory above moves it. A leaf lock: taken
    /// alone or last, never while taking another.
    pub(in crate::fs) journal_version: Mutex<Option<Attrs>>,
    /// The thread that opened it (0: unknown). Only closes by its process
    /// store the file: a child that inherited the descriptor (`{ cat a; cat
    /// b; } > f`) closes its copy while the opener goes on writing. The
    /// process is looked up in /proc only when another thread closes: the
    /// look costs a tenth of the mount's CPU for many small files.
    pub(in crate::fs) opener_thread: u32,
    /// Its failure was handled: the path shows its old version again, and
    /// may since be another handle's to write.
    pub(in crate::fs) abandoned: AtomicBool,
    /// An fsync stored the bytes but failed to store the journal: the close
    /// must store it (and fail if it cannot), as a close that stored them would.
    pub(in crate::fs) unsynced: AtomicBool,
}

impl Writer {
    /// A writer of `ino` opened by thread `pid` (0: unknown), with `before`
    /// the version its path showed (`None`: a new file).
    pub(in crate::fs) fn new(
        ino: u64,
        w: WriteHandle,
        before: Option<ViewEntry>,
        mode: u16,
        pid: u32,
    ) -> Writer {
        Writer {
            ino,
            w: Mutex::new(w),
            before: Mutex::new(before),
            reading: Mutex::new(ReadState::default()),
            mode,
            empty_recorded: Mutex::new(None),
            empty_synced: Mutex::new(None),
            journal_version: Mutex::new(None),
            opener_thread: pid,
            abandoned: AtomicBool::new(false),
            unsynced: AtomicBool::new(false),
        }
    }
}

/// The process (thread group) of thread `pid`; 0 when unknown.
fn process_of(pid: u32) -> u32 {
    if pid == 0 {
        return 0;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The stored version a file's edit starts from.
fn source(n: &Node) -> Option<Source> {
    n.data().map(|d| Source {
        key: d.key.to_string(),
        etag: d.etag.to_string(),
        size: n.size,
    })
}

impl Fs {
    /// Opens stored file `n` for writing (`open` checked that it is a file no
    /// handle is writing).
    pub(in crate::fs) fn open_write(&self, n: Node, flags: i32, pid: u32) -> FsResult<(u64, bool)> {
        let ino = n.ino;
        self.writable("open for writing", &n.path())?;
        // New bytes for an existing path go to a fresh key; the old version stays.
        let key = crate::fs::data_key();
        let truncating = flags & libc::O_TRUNC != 0;
        let w = if truncating {
            WriteHandle::new(&self.uploader, &self.staging, &key, None)
        } else {
            WriteHandle::edit(&self.uploader, &self.staging, &key, source(&n))
        };
        let size = w.size();
        let mut t = lock(&self.table);
        let Some(node) = t.get_mut(ino) else {
            return Err(FsError::not_found());
        };
        if node.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!("open {:?}: being written", n.path()),
            ));
        }
        node.origin = Origin::Writing;
        node.size = size;
        if truncating {
            node.attrs = node.attrs.merged(touched_now()).into();
        }
        drop(t);
        lock(&self.kernel_cached).remove(&ino);
        let mode = self.attr(&n).perm;
        Ok((
            self.add_file_handle(
                ino,
                Handle::Write(Box::new(Writer::new(ino, w, Some(n.view()), mode, pid))),
            ),
            false,
        ))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handles.get(fh)?;
        let Handle::Write(w) = &*h else {
            return Err(FsError::new(libc::EBADF, "write: not open for writing"));
        };
        self.reopen_stored(w)?;
        let mut g = lock(&w.w);
        let was_open = g.is_open();
        let end = offset + data.len() as u64;
        let result = self
            .hide_before_completing(w, &g, g.would_complete(offset, end, false))
            .and_then(|()| g.write(offset, data));
        let size = g.size();
        drop(g);
        match result {
            Ok(()) => {
                if let Some(n) = lock(&self.table).get_mut(w.ino) {
                    n.size = size;
                    n.attrs = n.attrs.merged(touched_now()).into();
                }
                Ok(data.len() as u32)
            }
            // Only the failure that ends an open handle gives the path back;
            // a finished handle's refusals change nothing.
            Err(e) if was_open => Err(self.abandon_write(w, e, false)),
            Err(e) => Err(e),
        }
    }

    /// A write or truncate after an fsync or close stored the bytes: the handle
    /// goes on to a new version, and a failure now falls back to the stored
    /// one. EBUSY while another handle writes the file (one writer at a time).
    fn reopen_stored(&self, w: &Writer) -> FsResult<()> {
        let empty = {
            let g = lock(&w.w);
            if !g.is_completed() {
                return Ok(());
            }
            g.size() == 0
        };
        // The table before the handle: the documented lock order.
        if let Some(n) = lock(&self.table).get_mut(w.ino) {
            // (An unlinked file stores nothing: its writers cannot collide.)
            if n.origin == Origin::Writing && !n.unlinked {
                return Err(FsError::new(
                    libc::EBUSY,
                    format!("write {:?}: another handle is writing it", n.path()),
                ));
            }
            // A close that stored the file empty (a shell's or dd's dup'd
            // descriptor) does not end the write: a failure now still gives the
            // path back what it had before the handle opened, as one `cmd > f`.
            if !empty {
                *lock(&w.before) = Some(n.view());
            }
            n.origin = Origin::Writing;
        }
        lock(&w.w).reopen();
        if !empty {
            *lock(&w.empty_recorded) = None;
            *lock(&w.empty_synced) = None;
            *lock(&w.journal_version) = None;
        }
        lock(&self.kernel_cached).remove(&w.ino);
        Ok(())
    }

    /// A new file streams to its own key: before what went up is completed
    /// there as an object of its own (`completes`), a stored record hides the
    /// path, so no one — another mount, a crash — sees it half-written. Its
    /// close records the file again. `w` is the writer of the handle `g`.
    fn hide_before_completing(&self, w: &Writer, g: &WriteHandle, completes: bool) -> FsResult<()> {
        if !completes {
            return Ok(());
        }
        let ticket = {
            let _ns = lock(&self.ns);
            match self.live_path(w.ino)? {
                // Only where the object would show: a record of the path (an
                // empty version stored) already wins over it.
                Some(path) if path == g.key() && self.own_key_free(&path) => {
                    self.journal.record(vec![Record::Hide { path }])
                }
                _ => return Ok(()),
            }
        };
        self.journal.store_or_withdraw(ticket)
    }

    /// read(2) on a handle open for writing (O_RDWR): what the file holds,
    /// with what this handle wrote.
    pub(in crate::fs) fn read_written(
        &self,
        w: &Writer,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let mut g = lock(&w.w);
        let was_open = g.is_open();
        let end = offset + u64::from(size);
        let read = self
            .hide_before_completing(w, &g, g.would_complete(offset, end, true))
            .and_then(|()| g.read(offset, size));
        let from = match read {
            Ok(from) => from,
            Err(e) => {
                drop(g);
                return Err(if was_open {
                    self.abandon_write(w, e, false)
                } else {
                    e
                });
            }
        };
        drop(g);
        match from {
            ReadFrom::Bytes(b) => Ok(Bytes::from(b)),
            ReadFrom::Object(src) => {
                let o = ObjectId {
                    key: src.key.as_str().into(),
                    etag: src.etag.as_str().into(),
                    size: src.size,
                };
                self.cache.read(&o, &w.reading, offset, size)
            }
        }
    }

    /// Gives `w`'s path in the view the version a failure of `w` falls back to:
    /// what an fsync of it stored empty, else what it showed before (a new file
    /// goes). Returns the path and the record that says so in the journal.
    fn fall_back(&self, t: &mut crate::fs::view::Table, w: &Writer) -> Option<(String, Record)> {
        let n = t.get_mut(w.ino)?;
        let path = n.path();
        if n.unlinked {
            // Nothing of it is in the view or to be recorded any more.
            return None;
        }
        let synced = *lock(&w.empty_synced);
        // What this handle put in the journal no longer stands, but a synced
        // empty version does.
        *lock(&w.journal_version) = synced;
        let before = lock(&w.before).clone();
        let undo = match (synced, &before) {
            (Some(attrs), _) => {
                n.origin = Origin::Stored;
                n.size = 0;
                n.set_data(None);
                n.attrs = attrs.into();
                Record::File {
                    path: path.clone(),
                    attrs,
                }
            }
            (None, None) => {
                t.remove(w.ino);
                Record::Hide { path: path.clone() }
            }
            (None, Some(v)) => {
                n.origin = Origin::Stored;
                n.size = v.size;
                n.set_data(v.data.clone());
                n.attrs = v.attrs.into();
                n.mtime = v.mtime;
                v.record_at(&path)
            }
        };
        Some((path, undo))
    }

    /// After a write, truncate or close failed (the handle is poisoned): the
    /// path shows what it showed before, also in the journal when an earlier
    /// close of this handle recorded it empty. `finishing`: the failure came
    /// from storing the object, which may have landed all the same (a lost
    /// answer). Returns `e`.
    pub(in crate::fs) fn abandon_write(&self, w: &Writer, e: FsError, finishing: bool) -> FsError {
        if w.abandoned.swap(true, Ordering::SeqCst) {
            return e;
        }
        let (path, undo) = {
            let _ns = lock(&self.ns);
            let mut t = lock(&self.table);
            if t.get(w.ino).map(|n| n.origin) != Some(Origin::Writing) {
                return e;
            }
            match self.fall_back(&mut t, w) {
                Some(x) => x,
                None => return e,
            }
        };
        let synced = lock(&w.empty_synced).is_some();
        if lock(&w.empty_recorded).is_some() {
            if !synced {
                // A close of a dup'd descriptor stored this file empty; undo that.
                self.journal.record(vec![undo]);
            }
        } else if lock(&w.before).is_none() && !synced && {
            let g = lock(&w.w);
            (finishing && g.key() == path) || g.landed().any(|k| k == path)
        } {
            // A new file's object at its own path may have landed though the
            // answer said otherwise, or a version of it did before an edit:
            // keep it out of the view for good (`undo` hides it).
            self.journal.record(vec![undo]);
        }
        e
    }

    /// A close could not store the journal record of what a failed fsync
    /// stored: the close fails, so the path shows its old version again — in
    /// the view, and by a record queued after the unstored one. Returns `e`.
    fn withdraw_synced(&self, w: &Writer, e: FsError) -> FsError {
        if w.abandoned.swap(true, Ordering::SeqCst) {
            return e;
        }
        let undo = {
            let _ns = lock(&self.ns);
            self.fall_back(&mut lock(&self.table), w)
        };
        if let Some((_, undo)) = undo {
            self.journal.record(vec![undo]);
        }
        e
    }

    /// close(2) by thread `pid` (0: unknown): every byte written so far is
    /// stored, or an error. A close by another process than the opener (a
    /// child done with an inherited descriptor) stores nothing yet: the
    /// opener's close, or the release, does.
    pub fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let Handle::Write(w) = &*h else {
            return Ok(());
        };
        // The opening thread, or another thread of its process, closes as the
        // opener; when either process is unknown (a thread gone), so does it.
        if pid != 0 && w.opener_thread != 0 && pid != w.opener_thread {
            let (opener, closer) = (process_of(w.opener_thread), process_of(pid));
            if opener != 0 && closer != 0 && closer != opener {
                return Ok(());
            }
        }
        self.finish_write(w, End::Close)
    }

    /// fsync(2): the file's bytes and every metadata change so far are stored.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let Handle::Write(w) = &*h else {
            return self.journal.sync_all();
        };
        self.finish_write(w, End::Fsync)?;
        self.journal.sync_all().inspect_err(|_| {
            w.unsynced.store(true, Ordering::SeqCst);
        })
    }

    /// fsyncdir(2): all metadata so far is stored. sync(1) and syncfs(2) never
    /// get here: Linux sends FUSE_SYNCFS only to virtiofs, so for a FUSE mount
    /// they return at once (the group commit stores within a second anyway).
    pub fn sync_metadata(&self) -> FsResult<()> {
        self.journal.sync_all()
    }

    /// Stores what `w` wrote. `last`: the handle is being released, so an empty
    /// file stops being "being written". Any failure leaves the path as it was.
    pub(in crate::fs) fn finish_write(&self, w: &Writer, end: End) -> FsResult<()> {
        if self.unlinked(w.ino) && !w.abandoned.load(Ordering::SeqCst) {
            // Removed while open: its bytes are no one's, so nothing is stored.
            // (A failed handle's own file goes too; its close reports the failure.)
            if end == End::Release {
                lock(&w.w).abandon();
            }
            return Ok(());
        }
        let mut g = lock(&w.w);
        let was_open = g.is_open();
        let result = g.finish();
        drop(g);
        let result = match result {
            Ok(r) => r,
            Err(e) if was_open => return Err(self.abandon_write(w, e, true)),
            Err(e) => return Err(e),
        };
        if !was_open {
            if end != End::Fsync && w.unsynced.load(Ordering::SeqCst) {
                if let Err(e) = self.journal.sync_all() {
                    lock(&w.w).fail_with(e.clone());
                    return Err(self.withdraw_synced(w, e));
                }
                w.unsynced.store(false, Ordering::SeqCst);
            }
            return Ok(());
        }
        match self.settle_write(w, result, end) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Nothing of this version stands; a later close must fail too.
                lock(&w.w).fail_with(e.clone());
                Err(self.abandon_write(w, e, true))
            }
        }
    }

    /// Records what a finished write stored and marks the file stored.
    pub(in crate::fs) fn settle_write(
        &self,
        w: &Writer,
        result: Finished,
        end: End,
    ) -> FsResult<()> {
        let Some(node) = lock(&self.table).get(w.ino).cloned() else {
            return Err(FsError::new(libc::EIO, "the file's entry vanished"));
        };
        // The mode given at create stands unless one was set since.
        let attrs = Attrs {
            mode: node.attrs.mode.or(Some(u32::from(w.mode))),
            ..*node.attrs
        };
        let record = match result {
            Finished::Unchanged => {
                // Opened for writing, closed without a change: the old bytes stand.
                let before = lock(&w.before).clone();
                let v = before.as_ref().map(|v| v.attrs);
                if v.is_some_and(|v| v != *node.attrs) {
                    self.journal.record(vec![Record::Attr {
                        path: node.path(),
                        attrs: *node.attrs,
                    }]);
                }
                let mut t = lock(&self.table);
                if let Some(n) = t.get_mut(w.ino) {
                    // fsync leaves the file open for writing; a close ends it.
                    if n.origin == Origin::Writing && end != End::Fsync {
                        n.origin = Origin::Stored;
                        if let Some(v) = &before {
                            n.size = v.size;
                            n.set_data(v.data.clone());
                        }
                    }
                }
                return Ok(());
            }
            Finished::Empty => {
                let mut recorded = lock(&w.empty_recorded);
                // Recorded by an earlier close unless the attributes changed
                // since (written, then truncated back to empty).
                if *recorded != Some(attrs) {
                    let ticket = {
                        let _ns = lock(&self.ns);
                        let Some(path) = self.live_path(w.ino)? else {
                            return Ok(());
                        };
                        self.journal.record(vec![Record::File { path, attrs }])
                    };
                    self.journal.store_or_withdraw(ticket)?;
                    *recorded = Some(attrs);
                    *lock(&w.journal_version) = Some(attrs);
                    if let Some(n) = lock(&self.table).get_mut(w.ino) {
                        n.attrs = attrs.into();
                        n.size = 0;
                        n.set_data(None);
                    }
                }
                if end == End::Fsync {
                    *lock(&w.empty_synced) = Some(attrs);
                } else {
                    // Stored at close, not only at release (which the kernel
                    // sends later): `: > f; rm f` must find it stored.
                    lock(&w.w).complete_empty();
                    lock(&self.table).mark_stored(w.ino, Instant::now());
                }
                return Ok(());
            }
            Finished::Stored { key, etag, size } => {
                log::debug!("stored {:?}: {size} bytes, ETag {etag}", node.path());
                (key, etag, size)
            }
        };
        let (key, etag, size) = record;
        // Under the namespace lock: the path is the file's path now, and a
        // rename cannot slip between reading it and recording it.
        let (ticket, wait) = {
            let _ns = lock(&self.ns);
            let Some(path) = self.live_path(w.ino)? else {
                // Unlinked meanwhile: the object is no one's.
                return Ok(());
            };
            let own = key == path && lock(&w.before).is_none() && self.own_key_free(&path);
            let record = if own {
                // The object at its own path is the file; its mode is metadata.
                Record::Attr { path, attrs }
            } else {
                Record::Bind {
                    path,
                    key: key.clone(),
                    size,
                    etag: etag.clone(),
                    attrs,
                }
            };
            (self.journal.record(vec![record]), !own)
        };
        if wait {
            self.journal.store_or_withdraw(ticket)?;
        }
        let mut t = lock(&self.table);
        if let Some(n) = t.get_mut(w.ino) {
            n.attrs = attrs.into();
            n.size = size;
            n.set_data(Some(Data {
                key: key.into(),
                etag: etag.into(),
            }));
        }
        t.mark_stored(w.ino, Instant::now());
        Ok(())
    }

    /// The current path of `ino`; `None` once it was unlinked.
    fn live_path(&self, ino: u64) -> FsResult<Option<String>> {
        lock(&self.table)
            .get(ino)
            .map(|n| (!n.unlinked).then(|| n.path()))
            .ok_or_else(|| FsError::new(libc::EIO, "the file's entry vanished"))
    }

    /// Whether `ino` was unlinked while open.
    fn unlinked(&self, ino: u64) -> bool {
        lock(&self.table).get(ino).is_some_and(|n| n.unlinked)
    }

    pub(in crate::fs) fn truncate(&self, node: &Node, fh: Option<u64>, size: u64) -> FsResult<()> {
        if node.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?}: a directory", node.path()),
            ));
        }
        if size > crate::protocol::rules::MAX_OBJECT_SIZE {
            return Err(FsError::new(
                libc::EFBIG,
                format!(
                    "truncate {:?} to {size}: objects cannot exceed {} bytes",
                    node.path(),
                    crate::protocol::rules::MAX_OBJECT_SIZE
                ),
            ));
        }
        if let Some(h) = self.handles.writer_of(node.ino, fh) {
            if let Handle::Write(w) = &*h {
                let same = {
                    let g = lock(&w.w);
                    g.is_completed() && g.size() == size
                };
                if same {
                    return Ok(());
                }
                self.reopen_stored(w)?;
                let mut g = lock(&w.w);
                let changes = g.size() != size;
                let was_open = g.is_open();
                let result = self
                    .hide_before_completing(w, &g, g.would_complete(size, size, false))
                    .and_then(|()| g.truncate(size));
                drop(g);
                match result {
                    Err(e) if was_open => return Err(self.abandon_write(w, e, false)),
                    Err(e) => return Err(e),
                    Ok(()) => {}
                }
                if let Some(n) = lock(&self.table).get_mut(node.ino) {
                    n.size = size;
                    // As POSIX says: the times change when the size does.
                    if changes {
                        n.attrs = n.attrs.merged(touched_now()).into();
                    }
                }
                return Ok(());
            }
        }
        if node.size == size {
            return Ok(());
        }
        let attrs = node.attrs.merged(touched_now());
        if node.unlinked {
            // No path to record a version at; only its handles see it.
            if let Some(n) = lock(&self.table).get_mut(node.ino) {
                n.size = size;
                n.attrs = attrs.into();
            }
            return Ok(());
        }
        if size == 0 {
            // An empty file needs no object: the journal holds it. The old bytes
            // stay in the coffer.
            let record = Record::File {
                path: node.path(),
                attrs,
            };
            return self.settle(node.ino, attrs, record, None, 0);
        }
        // Any other size: a staged copy, stored under a fresh key.
        let key = crate::fs::data_key();
        let mut w = WriteHandle::edit(&self.uploader, &self.staging, &key, source(node));
        w.truncate(size)?;
        match w.finish()? {
            Finished::Stored { key, etag, size } => {
                let record = Record::Bind {
                    path: node.path(),
                    key: key.clone(),
                    size,
                    etag: etag.clone(),
                    attrs,
                };
                let data = Data {
                    key: key.into(),
                    etag: etag.into(),
                };
                self.settle(node.ino, attrs, record, Some(data), size)
            }
            Finished::Empty | Finished::Unchanged => Ok(()),
        }
    }

    /// Records what a file now is, waits until the record is stored (bytes
    /// reachable only through a record — empty files, new versions — are not
    /// stored until their batch is), and updates its entry. If the record
    /// cannot be stored it is withdrawn and the entry is left as it was.
    pub(in crate::fs) fn settle(
        &self,
        ino: u64,
        attrs: Attrs,
        record: Record,
        data: Option<Data>,
        size: u64,
    ) -> FsResult<()> {
        let ticket = {
            let _ns = lock(&self.ns);
            self.journal.record(vec![record])
        };
        self.journal.store_or_withdraw(ticket)?;
        if let Some(n) = lock(&self.table).get_mut(ino) {
            n.attrs = attrs.into();
            n.size = size;
            n.set_data(data);
        }
        Ok(())
    }

    /// The release of write handle `w`: stores what no close stored.
    pub(in crate::fs) fn release_write(&self, w: &Writer) -> FsResult<()> {
        if !lock(&w.w).is_open() {
            return Ok(());
        }
        // The kernel flushes on every close; this is the safety net.
        self.finish_write(w, End::Release)
    }
}
