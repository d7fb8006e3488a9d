//! The handle table: what each open file handle (`fh`) is — a writer, a reader
//! or a directory listing — and the operations that open and release them.
//! What a handle does with its bytes lives in `file_write`, `file_read` and
//! `dir`; this module knows only which handles exist and which file each holds.

use super::cache::{ObjectId, ReadState};
use super::error::{FsError, FsResult};
use super::file_write::Writer;
use super::view::{Kind, Origin, ViewEntry};
use super::{lock, DirEntry, Fs};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(super) enum Handle {
    Write(Box<Writer>),
    Read {
        ino: u64,
        object: Option<ObjectId>,
        state: Mutex<ReadState>,
    },
    Dir(Vec<DirEntry>),
}

/// Open handles by number.
pub(super) struct Handles {
    open: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
}

impl Handles {
    pub(super) fn new() -> Handles {
        Handles {
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub(super) fn get(&self, fh: u64) -> FsResult<Arc<Handle>> {
        lock(&self.open)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, format!("no open handle {fh}")))
    }

    pub(super) fn add(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(fh, Arc::new(h));
        fh
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        lock(&self.open).remove(&fh)
    }

    /// Every handle, taken out of the table (unmount).
    pub(super) fn drain(&self) -> Vec<Arc<Handle>> {
        lock(&self.open).drain().map(|(_, h)| h).collect()
    }

    /// The write handle `fh` if it writes `ino`, else an open, unfailed
    /// writer of `ino`.
    pub(super) fn writer_of(&self, ino: u64, fh: Option<u64>) -> Option<Arc<Handle>> {
        let hs = lock(&self.open);
        if let Some(h) = fh.and_then(|f| hs.get(&f)) {
            if matches!(&**h, Handle::Write(w) if w.ino == ino) {
                return Some(Arc::clone(h));
            }
        }
        // Otherwise an open, unfailed writer of the file (a completed or
        // failed handle says nothing about the path any more). Checked after
        // the table of handles is let go: a writer's lock may be held by a
        // close that waits on the network.
        let writers: Vec<Arc<Handle>> = hs
            .values()
            .filter(|h| matches!(&***h, Handle::Write(w) if w.ino == ino))
            .cloned()
            .collect();
        drop(hs);
        writers
            .into_iter()
            .find(|h| matches!(&**h, Handle::Write(w) if lock(&w.w).is_open()))
    }

    /// Files being written, with the version of each the journal holds: an
    /// empty one the handle stored, else what the path showed before (`None`: new).
    pub(super) fn overwritten_versions(&self) -> HashMap<u64, Option<ViewEntry>> {
        lock(&self.open)
            .values()
            .filter_map(|h| match &**h {
                Handle::Write(w) => {
                    // An empty version this handle stored stands in the journal.
                    let stored = lock(&w.journal_version).map(|attrs| ViewEntry {
                        kind: Kind::File,
                        size: 0,
                        data: None,
                        target: None,
                        attrs,
                        mtime: std::time::SystemTime::now(),
                    });
                    Some((w.ino, stored.or_else(|| lock(&w.before).clone())))
                }
                _ => None,
            })
            .collect()
    }
}

fn is_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

impl Fs {
    /// Opens a file; the flag says whether the kernel may keep pages it cached
    /// from an earlier open (the same object version).
    pub fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<(u64, bool)> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?}: a directory", n.path()),
            ));
        }
        if !is_write(flags) && flags & libc::O_TRUNC == 0 {
            // A file being written reads through its writer (`read`).
            return Ok(self.open_read(&n));
        }
        if n.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!(
                    "open {:?} for writing: another handle is writing it; it can be opened \
                     once that one is closed",
                    n.path()
                ),
            ));
        }
        self.open_write(n, flags, pid)
    }

    /// Adds a handle of file `ino`: the file stays, even unlinked, while it is open.
    pub(super) fn add_file_handle(&self, ino: u64, h: Handle) -> u64 {
        lock(&self.table).pin(ino);
        self.handles.add(h)
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.remove(fh) else {
            return Ok(());
        };
        let (ino, result) = match &*h {
            Handle::Write(w) => (w.ino, self.release_write(w)),
            Handle::Read { ino, .. } => (*ino, Ok(())),
            Handle::Dir(_) => return Ok(()),
        };
        lock(&self.table).unpin(ino);
        result
    }

    /// Whether an open, unfailed write handle holds `ino`.
    pub(super) fn being_written(&self, ino: u64) -> bool {
        self.handles.writer_of(ino, None).is_some()
    }
}
