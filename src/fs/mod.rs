//! `Fs`: the filesystem a mount shows — inode table, open handles, listings and the
//! write-once rules. Talks to the network only through `ObjectStore`; knows no FUSE.

pub mod error;
pub mod fuse;
pub mod inode;
pub mod journal;
pub mod upload;
pub mod write;

use crate::protocol::rules;
use crate::store::{ListAll, ObjectMeta, ObjectStore, Range, StoreError};
use bytes::Bytes;
use error::{FsError, FsResult};
use inode::{Kind, NewNode, Node, Origin, Table, RESERVED, ROOT};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use upload::{UploadConfig, Uploader};
use write::{Finished, WriteHandle};

/// How the mount presents the coffer.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long listings and lookups are trusted before asking the coffer again.
    pub metadata_ttl: Duration,
    pub read_only: bool,
    pub upload: UploadConfig,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig {
            uid,
            gid,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(10),
            read_only: false,
            upload: UploadConfig::default(),
        }
    }
}

/// Attributes of one entry, as `stat` shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// True while the entry changes under its writer (the kernel must not cache it).
    pub volatile: bool,
}

/// One directory entry for readdir.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// What `setattr` asks for.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub atime: bool,
}

enum Handle {
    Write { ino: u64, w: Mutex<WriteHandle> },
    Read { key: String, size: u64 },
    Dir(Vec<DirEntry>),
}

/// Numbers for statfs: large, since a coffer has no fixed size.
pub const STATFS_BLOCKS: u64 = 1 << 40;
pub const STATFS_FILES: u64 = 1 << 32;
pub const BLOCK_SIZE: u32 = 4096;

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    uploader: Arc<Uploader>,
    cfg: FsConfig,
    table: Mutex<Table>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name as a key segment, or why it cannot be one.
fn name_str(name: &OsStr) -> FsResult<&str> {
    let s = name.to_str().ok_or_else(|| {
        FsError::new(
            libc::EINVAL,
            format!("{name:?}: object keys are UTF-8; this name is not"),
        )
    })?;
    if s.len() > 255 {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!("{s:?}: names are at most 255 bytes"),
        ));
    }
    Ok(s)
}

fn is_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

impl Fs {
    pub fn new(store: Arc<dyn ObjectStore>, cfg: FsConfig) -> Fs {
        let uploader = Uploader::new(Arc::clone(&store), cfg.upload);
        Fs {
            store,
            uploader,
            cfg,
            table: Mutex::new(Table::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    fn attr(&self, n: &Node) -> Attr {
        let (default_perm, volatile) = match n.kind {
            Kind::Dir => (self.cfg.dir_mode, false),
            Kind::File => (self.cfg.file_mode, n.origin == Origin::Writing),
        };
        Attr {
            ino: n.ino,
            kind: n.kind,
            size: n.size,
            mtime: n.mtime,
            perm: n.perm.unwrap_or(default_perm),
            uid: n.owner.map_or(self.cfg.uid, |o| o.0),
            gid: n.owner.map_or(self.cfg.gid, |o| o.1),
            volatile,
        }
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        lock(&self.table)
            .get(ino)
            .cloned()
            .ok_or_else(FsError::not_found)
    }

    fn dir(&self, ino: u64) -> FsResult<Node> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{:?}: not a directory", n.key),
            ));
        }
        Ok(n)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, format!("no open handle {fh}")))
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        fh
    }

    fn read_only(&self, op: &str, key: &str) -> FsResult<()> {
        if self.cfg.read_only {
            return Err(FsError::new(
                libc::EROFS,
                format!("{op} {key:?}: mounted read-only"),
            ));
        }
        Ok(())
    }

    /// Checks a new entry's name: valid as a key, not the reserved prefix.
    fn new_key(&self, parent: &Node, name: &str, op: &str) -> FsResult<String> {
        if parent.ino == ROOT && name == RESERVED {
            return Err(FsError::new(
                libc::EPERM,
                format!("{op} {name:?}: reserved for cofferfs's own records"),
            ));
        }
        let key = parent.child_key(name);
        rules::validate_key(&key).map_err(|reason| {
            FsError::from(StoreError::InvalidKey {
                key: key.clone(),
                reason,
            })
        })?;
        Ok(key)
    }

    // ---- namespace -------------------------------------------------------

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        if parent == ROOT && name == RESERVED {
            return Err(FsError::not_found());
        }
        let ttl = self.cfg.metadata_ttl;
        {
            let t = lock(&self.table);
            match t.child(parent, name) {
                Some(n) if n.origin != Origin::Remote || n.seen.elapsed() < ttl => {
                    return Ok(self.attr(n))
                }
                None if t.listed_within(parent, ttl) => return Err(FsError::not_found()),
                _ => {}
            }
        }
        let key = dir.child_key(name);
        if rules::validate_key(&key).is_err() {
            return Err(FsError::not_found());
        }
        let found = self.probe(&key)?;
        let now = Instant::now();
        let mut t = lock(&self.table);
        let new = match found {
            Probe::Dir => NewNode {
                kind: Kind::Dir,
                origin: Origin::Remote,
                size: 0,
                etag: None,
                mtime: SystemTime::now(),
                perm: None,
            },
            Probe::File(meta) => NewNode {
                kind: Kind::File,
                origin: Origin::Remote,
                size: meta.size,
                etag: Some(meta.etag),
                mtime: meta.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                perm: None,
            },
            Probe::Nothing => {
                // Not in the coffer; but this mount may have made it meanwhile.
                return match t.child(parent, name) {
                    Some(n) if n.origin != Origin::Remote => Ok(self.attr(n)),
                    Some(n) => {
                        let ino = n.ino;
                        t.remove(ino);
                        Err(FsError::not_found())
                    }
                    None => Err(FsError::not_found()),
                };
            }
        };
        let ino = t
            .upsert(parent, name, new, now)
            .ok_or_else(FsError::not_found)?;
        let n = t.get(ino).ok_or_else(FsError::not_found)?;
        Ok(self.attr(n))
    }

    /// HEAD `key` and LIST `key/` side by side: is it a file, a directory or nothing?
    fn probe(&self, key: &str) -> FsResult<Probe> {
        let prefix = format!("{key}/");
        let (head, list) = std::thread::scope(|s| {
            let list = s.spawn(|| self.store.list(&prefix, "", 1));
            let head = self.store.head(key);
            let list = list
                .join()
                .unwrap_or_else(|_| Err(StoreError::Invalid("listing thread panicked".into())));
            (head, list)
        });
        let is_dir = match list {
            Ok(page) => !page.objects.is_empty(),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if is_dir {
            return Ok(Probe::Dir);
        }
        match head {
            Ok(Some(meta)) => Ok(Probe::File(meta)),
            Ok(None) => Ok(Probe::Nothing),
            Err(e) if e.is_not_found() => Ok(Probe::Nothing),
            Err(e) => Err(e.into()),
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = lock(&self.table);
        t.get(ino)
            .map(|n| self.attr(n))
            .ok_or_else(FsError::not_found)
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, set: SetAttr) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.read_only("setattr", &node.key)?;
        if let Some(size) = set.size {
            let written = self.writer_of(ino, fh).map(|h| match &*h {
                Handle::Write { w, .. } => lock(w).written(),
                _ => u64::MAX,
            });
            // Truncating a file being written to its current length (as `dd` and
            // O_TRUNC on a new file do) changes nothing; anything else would.
            if node.kind != Kind::File || written != Some(size) {
                return Err(FsError::write_once("truncate", &node.key));
            }
        }
        let changes_meta =
            set.mode.is_some() || set.uid.is_some() || set.gid.is_some() || set.mtime.is_some();
        if changes_meta {
            // A stored object's attributes cannot change until the metadata journal
            // keeps them. Directories are not objects, and a file still being
            // written is not one yet: their attributes live in this mount.
            if node.kind == Kind::File && node.origin == Origin::Remote {
                return Err(FsError::write_once("chmod/chown/utimens", &node.key));
            }
            let mut t = lock(&self.table);
            if let Some(n) = t.get_mut(ino) {
                if let Some(m) = set.mode {
                    n.perm = Some((m & 0o7777) as u16);
                }
                if let Some(m) = set.mtime {
                    n.mtime = m;
                }
                if set.uid.is_some() || set.gid.is_some() {
                    let (u, g) = n.owner.unwrap_or((self.cfg.uid, self.cfg.gid));
                    n.owner = Some((set.uid.unwrap_or(u), set.gid.unwrap_or(g)));
                }
            }
        }
        self.getattr(ino)
    }

    fn writer_of(&self, ino: u64, fh: Option<u64>) -> Option<Arc<Handle>> {
        let hs = lock(&self.handles);
        if let Some(h) = fh.and_then(|f| hs.get(&f)) {
            if matches!(&**h, Handle::Write { ino: i, .. } if *i == ino) {
                return Some(Arc::clone(h));
            }
        }
        hs.values()
            .find(|h| matches!(&***h, Handle::Write { ino: i, .. } if *i == ino))
            .cloned()
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> FsResult<Attr> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        let key = self.new_key(&dir, name, "mkdir")?;
        self.read_only("mkdir", &key)?;
        if self.exists(parent, name)? {
            return Err(FsError::new(libc::EEXIST, format!("mkdir {key:?}: exists")));
        }
        let now = Instant::now();
        let mut t = lock(&self.table);
        let ino = t
            .upsert(
                parent,
                name,
                NewNode {
                    kind: Kind::Dir,
                    origin: Origin::Local,
                    size: 0,
                    etag: None,
                    mtime: SystemTime::now(),
                    perm: Some((mode & 0o7777) as u16),
                },
                now,
            )
            .ok_or_else(FsError::not_found)?;
        if let Some(n) = t.get_mut(ino) {
            // Nothing lies beneath a directory made just now.
            n.listed = Some(now);
        }
        let n = t.get(ino).ok_or_else(FsError::not_found)?;
        log::info!("mkdir {key:?}: kept in this mount until a file is written beneath it");
        Ok(self.attr(n))
    }

    /// Whether `parent/name` exists, asking the coffer when the table cannot tell.
    fn exists(&self, parent: u64, name: &str) -> FsResult<bool> {
        match self.lookup(parent, OsStr::new(name)) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> FsResult<(Attr, u64)> {
        let name = name_str(name)?;
        let dir = self.dir(parent)?;
        let key = self.new_key(&dir, name, "create")?;
        self.read_only("create", &key)?;
        match self.lookup(parent, OsStr::new(name)) {
            Ok(a) => {
                if flags & libc::O_EXCL != 0 {
                    return Err(FsError::new(
                        libc::EEXIST,
                        format!("create {key:?}: exists"),
                    ));
                }
                if a.kind == Kind::Dir {
                    return Err(FsError::new(libc::EISDIR, format!("{key:?}: a directory")));
                }
                let fh = self.open(a.ino, flags)?;
                return Ok((a, fh));
            }
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let mut t = lock(&self.table);
        if t.child(parent, name).is_some() {
            return Err(FsError::new(
                libc::EEXIST,
                format!("create {key:?}: exists"),
            ));
        }
        let ino = t
            .upsert(
                parent,
                name,
                NewNode {
                    kind: Kind::File,
                    origin: Origin::Writing,
                    size: 0,
                    etag: None,
                    mtime: SystemTime::now(),
                    perm: Some((mode & 0o7777) as u16),
                },
                now,
            )
            .ok_or_else(FsError::not_found)?;
        let attr = t
            .get(ino)
            .map(|n| self.attr(n))
            .ok_or_else(FsError::not_found)?;
        drop(t);
        let fh = self.add_handle(Handle::Write {
            ino,
            w: Mutex::new(WriteHandle::new(&self.uploader, &key)),
        });
        Ok((attr, fh))
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?}: a directory", n.key),
            ));
        }
        if n.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!(
                    "open {:?}: this mount is still writing it; it can be opened once its \
                     writer has closed it",
                    n.key
                ),
            ));
        }
        if is_write(flags) || flags & libc::O_TRUNC != 0 {
            self.read_only("open for writing", &n.key)?;
            return Err(FsError::write_once("open for writing", &n.key));
        }
        Ok(self.add_handle(Handle::Read {
            key: n.key.clone(),
            size: n.size,
        }))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let name = name_str(name)?;
        let a = self.lookup(parent, OsStr::new(name))?;
        let n = self.node(a.ino)?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("unlink {:?}: a directory", n.key),
            ));
        }
        self.read_only("unlink", &n.key)?;
        Err(FsError::write_once("unlink", &n.key))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let name = name_str(name)?;
        let a = self.lookup(parent, OsStr::new(name))?;
        let n = self.node(a.ino)?;
        if n.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("rmdir {:?}: not a directory", n.key),
            ));
        }
        self.read_only("rmdir", &n.key)?;
        if n.origin != Origin::Local {
            return Err(FsError::write_once("rmdir", &n.key));
        }
        let mut t = lock(&self.table);
        if !t.children(n.ino).is_empty() {
            return Err(FsError::new(
                libc::ENOTEMPTY,
                format!("rmdir {:?}: not empty", n.key),
            ));
        }
        // A directory that exists only in this mount can go: nothing is stored.
        t.remove(n.ino);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        _newparent: u64,
        _newname: &OsStr,
    ) -> FsResult<()> {
        let a = self.lookup(parent, name)?;
        let n = self.node(a.ino)?;
        self.read_only("rename", &n.key)?;
        Err(FsError::write_once("rename", &n.key))
    }

    /// Hard links, symlinks and device nodes have no place in a coffer yet.
    pub fn unsupported(&self, op: &str, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let dir = self.dir(parent)?;
        let key = dir.child_key(&name.to_string_lossy());
        self.read_only(op, &key)?;
        Err(FsError::new(
            libc::EPERM,
            format!("{op} {key:?}: the coffer holds only regular files and directories"),
        ))
    }

    // ---- file data -------------------------------------------------------

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let Handle::Write { ino, w } = &*h else {
            return Err(FsError::new(libc::EBADF, "write: not open for writing"));
        };
        let mut w = lock(w);
        let result = w.write(offset, data);
        let written = w.written();
        drop(w);
        match result {
            Ok(()) => {
                if let Some(n) = lock(&self.table).get_mut(*ino) {
                    n.size = written;
                    n.mtime = SystemTime::now();
                }
                Ok(data.len() as u32)
            }
            Err(e) => {
                if e.errno == libc::EIO {
                    self.forget_failed(*ino);
                }
                Err(e)
            }
        }
    }

    /// A file whose upload failed never becomes visible.
    fn forget_failed(&self, ino: u64) {
        let mut t = lock(&self.table);
        if t.get(ino).is_some_and(|n| n.origin == Origin::Writing) {
            t.remove(ino);
        }
    }

    /// close(2) and fsync(2): every byte written so far is stored, or an error.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        match &*h {
            Handle::Write { ino, w } => self.finish_write(*ino, w),
            _ => Ok(()),
        }
    }

    fn finish_write(&self, ino: u64, w: &Mutex<WriteHandle>) -> FsResult<()> {
        let mut w = lock(w);
        let result = w.finish();
        let key = w.key().to_string();
        drop(w);
        match result {
            Ok(Finished::Stored { etag, size }) => {
                let now = Instant::now();
                let mut t = lock(&self.table);
                if let Some(n) = t.get_mut(ino) {
                    if n.origin == Origin::Writing {
                        log::info!("stored {key:?}: {size} bytes, ETag {etag}");
                    }
                    n.size = size;
                    n.etag = Some(etag);
                }
                t.mark_remote(ino, now);
                Ok(())
            }
            Ok(Finished::Empty) => Err(FsError::new(
                libc::EIO,
                format!(
                    "{key:?}: an empty file cannot be stored (the coffer holds no empty \
                     objects, ObjectEmpty); it exists only until it is closed"
                ),
            )),
            Err(e) => {
                self.forget_failed(ino);
                Err(e)
            }
        }
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return Ok(());
        };
        let Handle::Write { ino, w } = &*h else {
            return Ok(());
        };
        let mut guard = lock(w);
        if !guard.is_open() {
            return Ok(());
        }
        if guard.written() == 0 {
            // Never stored (flush already said so): it disappears.
            guard.abandon();
            drop(guard);
            self.forget_failed(*ino);
            return Ok(());
        }
        drop(guard);
        // No flush came (the kernel sends one on every close; this is the safety net).
        self.finish_write(*ino, w)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let Handle::Read { key, size: fsize } = &*h else {
            return Err(FsError::new(libc::EBADF, "read: not open for reading"));
        };
        if offset >= *fsize || size == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + size as u64).min(*fsize);
        let got = self
            .store
            .get(key, Some(Range::Bounded(offset, end - 1)))
            .map_err(|e| FsError::io(&format!("GetObject {key:?}"), &e))?;
        if got.start != offset || got.data.len() as u64 != end - offset {
            return Err(FsError::new(
                libc::EIO,
                format!(
                    "GetObject {key:?}: asked for bytes {offset}..{end}, got {} at {}",
                    got.data.len(),
                    got.start
                ),
            ));
        }
        Ok(got.data)
    }

    // ---- directories -----------------------------------------------------

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let dir = self.dir(ino)?;
        if !lock(&self.table).listed_within(ino, self.cfg.metadata_ttl) {
            self.list_subtree(&dir)?;
        }
        let t = lock(&self.table);
        let me = t.get(ino).ok_or_else(FsError::not_found)?;
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: me.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        entries.extend(t.children(ino).into_iter().map(|n| DirEntry {
            ino: n.ino,
            kind: n.kind,
            name: n.name.clone(),
        }));
        drop(t);
        Ok(self.add_handle(Handle::Dir(entries)))
    }

    /// One listing of the directory's prefix fills its whole subtree.
    fn list_subtree(&self, dir: &Node) -> FsResult<()> {
        let prefix = dir.prefix();
        let objects: Vec<ObjectMeta> = ListAll::new(self.store.as_ref(), &prefix)
            .collect::<Result<_, _>>()
            .map_err(|e| FsError::io(&format!("listing {prefix:?}"), &e))?;
        lock(&self.table).apply_listing(dir.ino, &objects, Instant::now());
        Ok(())
    }

    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let h = self.handle(fh)?;
        let Handle::Dir(entries) = &*h else {
            return Err(FsError::new(libc::EBADF, "readdir: not a directory handle"));
        };
        Ok(entries.iter().skip(offset as usize).cloned().collect())
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// Unmount: finishes what writers left open (the kernel has released every
    /// handle by now, so this only catches the abnormal cases), then stops the
    /// upload workers.
    pub fn shutdown(&self) {
        let open: Vec<Arc<Handle>> = lock(&self.handles).drain().map(|(_, h)| h).collect();
        for h in open {
            if let Handle::Write { w, .. } = &*h {
                let mut w = lock(w);
                if w.is_open() && w.written() > 0 {
                    match w.finish() {
                        Ok(_) => log::info!("unmount: stored {:?}", w.key()),
                        Err(e) => log::error!("unmount: {}", e.message),
                    }
                } else {
                    w.abandon();
                }
            }
        }
        self.uploader.shutdown();
    }
}

enum Probe {
    File(ObjectMeta),
    Dir,
    Nothing,
}
