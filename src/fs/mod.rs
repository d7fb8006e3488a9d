//! `Fs`: the filesystem a mount shows — the view of objects and journal, open
//! handles, and the write-once rules. Talks to the network only through
//! `ObjectStore` (and the journal through `journal::Committer`); knows no FUSE.

pub mod cache;
mod dir;
pub mod disk_cache;
pub mod error;
mod file_read;
mod file_write;
pub mod fuse;
mod handles;
pub mod journal;
pub mod private_dir;
pub mod upload;
pub mod view;

pub use view::Kind;

use crate::protocol::rules;
use crate::store::{ObjectStore, StoreError};

use cache::{BlockCache, CacheConfig, ObjectId};
use error::{FsError, FsResult};
use file_write::{End, Staging, WriteHandle, Writer};
use handles::{Handle, Handles};
use journal::{Attrs, Committer, Record, Timestamp, DATA_PREFIX};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use upload::{UploadConfig, Uploader};
use view::{join, NegativeCache, Node, Origin, Table, ViewEntry, RESERVED, ROOT};

/// How the mount presents the coffer.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long listings and lookups are trusted, and how often other mounts'
    /// journal batches are read.
    pub metadata_ttl: Duration,
    pub read_only: bool,
    /// unlink/rmdir hide paths (the bytes stay in the coffer).
    pub allow_delete: bool,
    pub upload: UploadConfig,
    /// This coffer's private directory (0700, see `private_dir`): staging files
    /// of non-sequential writes (in a subdirectory removed at unmount) and, with
    /// `cache_dir_size`, file blocks kept across mounts.
    pub cache_dir: PathBuf,
    /// Bytes of staging files at once.
    pub staging_limit: u64,
    pub cache: CacheConfig,
    /// Bytes of file blocks kept under `cache_dir` across mounts; 0 for none.
    pub cache_dir_size: u64,
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
            allow_delete: false,
            upload: UploadConfig::default(),
            cache_dir: private_dir::default_base().join("default"),
            staging_limit: 16 << 30,
            cache: CacheConfig::default(),
            cache_dir_size: 0,
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
    /// Last change of data or attributes.
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// True while the entry changes under its writer (the kernel must not cache it).
    pub volatile: bool,
}

/// Who asks for a new entry: the calling process's user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
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
}

const STAGING_PREFIX: &str = "cofferfs-staging-";

/// Removes staging directories of mounts that died without cleaning up
/// (their pid is gone). Their files were never reported as stored.
fn remove_stale_staging(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => log::info!("removed stale staging files {}", e.path().display()),
                Err(err) => log::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

/// Numbers for statfs: large, since a coffer has no fixed size.
pub const STATFS_BLOCKS: u64 = 1 << 40;
pub const STATFS_FILES: u64 = 1 << 32;
pub const BLOCK_SIZE: u32 = 4096;

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    uploader: Arc<Uploader>,
    cache: Arc<BlockCache>,
    /// Names recently found absent.
    negative: NegativeCache,
    /// The object version whose pages the kernel may keep, per inode.
    kernel_cached: Mutex<HashMap<u64, ObjectId>>,
    journal: Arc<Committer>,
    staging: Arc<Staging>,
    _staging_dir: tempfile::TempDir,
    cfg: FsConfig,
    table: Mutex<Table>,
    handles: Handles,
    next_data: AtomicU64,
    stopping: AtomicBool,
    /// Held while the namespace changes shape: a rename's records, and the
    /// creation or settling of a file, are made under it, so a file made in a
    /// directory that is being renamed lands at one path or the other, whole.
    ns: Mutex<()>,
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

pub fn to_timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            // Before 1970: keep nanoseconds non-negative.
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

pub fn from_timestamp((s, ns): Timestamp) -> SystemTime {
    let ns = Duration::from_nanos(u64::from(ns.min(999_999_999)));
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s as u64) + ns
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + ns
    }
}

/// Times for a change made now: mtime and ctime.
pub(crate) fn touched_now() -> Attrs {
    let now = Some(to_timestamp(SystemTime::now()));
    Attrs {
        mtime: now,
        ctime: now,
        ..Attrs::default()
    }
}

impl Fs {
    /// Replays the coffer's journal and prepares the staging directory.
    pub fn new(store: Arc<dyn ObjectStore>, cfg: FsConfig) -> FsResult<Arc<Fs>> {
        let journal = Committer::open(Arc::clone(&store))?;
        let cache_dir_err = |e: std::io::Error| {
            FsError::new(
                libc::EIO,
                format!("cache dir {}: {e}", cfg.cache_dir.display()),
            )
        };
        private_dir::ensure(&cfg.cache_dir)
            .map_err(|e| FsError::new(libc::EACCES, format!("cache dir {e}")))?;
        remove_stale_staging(&cfg.cache_dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{}-", std::process::id()))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&cfg.cache_dir)
            .map_err(cache_dir_err)?;
        let disk = match cfg.cache_dir_size {
            0 => None,
            n => Some(disk_cache::DiskTier::open(&cfg.cache_dir, n).map_err(cache_dir_err)?),
        };
        let fs = Arc::new(Fs {
            uploader: Uploader::with_spill_dir(Arc::clone(&store), cfg.upload, dir.path()),
            cache: BlockCache::new(Arc::clone(&store), cfg.cache, disk),
            negative: NegativeCache::default(),
            kernel_cached: Mutex::new(HashMap::new()),
            store,
            journal,
            staging: Staging::new(dir.path(), cfg.staging_limit),
            _staging_dir: dir,
            cfg,
            table: Mutex::new(Table::new()),
            handles: Handles::new(),
            next_data: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            ns: Mutex::new(()),
        });
        let weak = Arc::downgrade(&fs);
        let ttl = fs.cfg.metadata_ttl.max(Duration::from_millis(100));
        std::thread::Builder::new()
            .name("journal-reload".into())
            .spawn(move || loop {
                std::thread::sleep(ttl);
                let Some(fs) = weak.upgrade() else { return };
                if fs.stopping.load(Ordering::Relaxed) {
                    return;
                }
                fs.reload_journal();
            })
            .map_err(|e| FsError::new(libc::EIO, format!("cannot start a thread: {e}")))?;
        Ok(fs)
    }

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

    /// Mounted read-only, or turned read-only by a journal of a later format.
    pub fn read_only(&self) -> bool {
        self.cfg.read_only || self.journal.read_only()
    }

    fn writable(&self, op: &str, path: &str) -> FsResult<()> {
        // The journal turns the mount read-only when it meets a later format.
        if self.read_only() {
            return Err(FsError::new(
                libc::EROFS,
                format!("{op} {path:?}: mounted read-only"),
            ));
        }
        Ok(())
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

    /// A fresh key under `.cofferfs/data/` for bytes whose path key is taken.
    fn data_key(&self) -> String {
        let micros = journal::now_micros();
        let n = self.next_data.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let r: u32 = rand::random();
        format!("{DATA_PREFIX}{micros:020}-{pid:08x}{r:08x}-{n:010}")
    }

    /// Whether new bytes for `path` can go to the object of the same key: nothing
    /// was ever stored there and the journal does not speak of it.
    fn own_key_free(&self, path: &str) -> bool {
        self.journal.with_overlay(|o| {
            !o.hides_object(path)
                && o.get(path)
                    .is_none_or(|e| e.shape == journal::Shape::AttrsOnly)
        })
    }

    // ---- namespace -------------------------------------------------------

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
        self.writable("setattr", &node.path)?;
        if let Some(size) = set.size {
            self.truncate(&node, fh, size)?;
        }
        let attrs = Attrs {
            mode: set.mode.map(|m| m & 0o7777),
            uid: set.uid,
            gid: set.gid,
            mtime: set.mtime.map(to_timestamp),
            ctime: None,
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
                n.attrs = n.attrs.merged(attrs);
                n.path.clone()
            };
            if !self.being_written(ino) {
                self.journal.record(vec![Record::Attr { path, attrs }]);
            }
            // A file being written carries its attributes in the record its
            // close makes, so a failed close leaves no trace of them either.
        }
        self.getattr(ino)
    }

    /// Adds a new entry to the table and the journal.
    fn add_entry(
        &self,
        parent: u64,
        name: &str,
        record: Record,
        entry: ViewEntry,
    ) -> FsResult<Attr> {
        self.journal.record(vec![record]);
        let now = Instant::now();
        let mut t = lock(&self.table);
        let ino = t
            .upsert(parent, name, entry, Origin::Stored, now)
            .ok_or_else(FsError::not_found)?;
        if let Some(n) = t.get_mut(ino) {
            if n.kind == Kind::Dir {
                // Nothing lies beneath a directory made just now.
                n.listed = Some(now);
            }
        }
        t.mark_stored(ino, now);
        let n = t.get(ino).ok_or_else(FsError::not_found)?;
        Ok(self.attr(n))
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
        // The file's own key when the coffer has nothing there; if it turns out
        // taken (another client's object or open upload), a fresh key instead.
        let (key, fallback) = if self.own_key_free(&path) {
            (path.clone(), Some(self.data_key()))
        } else {
            (self.data_key(), None)
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
        let attr = t
            .get(ino)
            .map(|n| self.attr(n))
            .ok_or_else(FsError::not_found)?;
        drop(t);
        let w = WriteHandle::new(&self.uploader, &self.staging, &key, fallback);
        let fh = self.handles.add(Handle::Write(Box::new(Writer::new(
            ino,
            w,
            None,
            (mode & 0o7777) as u16,
            pid,
        ))));
        Ok((attr, fh))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let name = name_str(name)?;
        let a = self.lookup(parent, OsStr::new(name))?;
        let n = self.node(a.ino)?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("unlink {:?}: a directory", n.path),
            ));
        }
        self.may_delete(&n, "unlink")?;
        self.hide(&n, "unlink");
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let name = name_str(name)?;
        let a = self.lookup(parent, OsStr::new(name))?;
        let n = self.node(a.ino)?;
        if n.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("rmdir {:?}: not a directory", n.path),
            ));
        }
        // Refused before "not empty": without --allow-delete nothing is removed.
        self.may_delete(&n, "rmdir")?;
        self.ensure_empty(&n, "rmdir")?;
        self.hide(&n, "rmdir");
        Ok(())
    }

    /// ENOTEMPTY unless directory `dir` shows nothing.
    fn ensure_empty(&self, dir: &Node, op: &str) -> FsResult<()> {
        self.ensure_listed(dir)?;
        if !lock(&self.table).children(dir.ino).is_empty() {
            return Err(FsError::new(
                libc::ENOTEMPTY,
                format!("{op} {:?}: not empty", dir.path),
            ));
        }
        Ok(())
    }

    /// unlink/rmdir are allowed only on a writable mount started with
    /// --allow-delete, and not while the file is being written.
    fn may_delete(&self, n: &Node, op: &str) -> FsResult<()> {
        self.writable(op, &n.path)?;
        if !self.cfg.allow_delete {
            return Err(FsError::new(
                libc::EPERM,
                format!(
                    "{op} {:?}: the coffer is write-once and this mount was not started with \
                     --allow-delete (which hides paths; their bytes stay until the coffer's \
                     lifecycle rule expires them)",
                    n.path
                ),
            ));
        }
        if n.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!("{op} {:?}: being written", n.path),
            ));
        }
        Ok(())
    }

    /// Hides the path; its bytes stay in the coffer. A directory that only
    /// its entries implied is recorded first, so it stays when its last
    /// entry goes, as directories do.
    fn hide(&self, n: &Node, op: &str) {
        let mut records = Vec::new();
        if let Some(parent) = n.path.rsplit_once('/').map(|(p, _)| p) {
            let explicit = self.journal.with_overlay(|o| {
                o.get(parent)
                    .is_some_and(|e| e.shape == journal::Shape::Dir)
            });
            if !explicit {
                if let Some(p) = lock(&self.table).get(n.parent) {
                    records.push(p.view().record_at(parent));
                }
            }
        }
        records.push(Record::Hide {
            path: n.path.clone(),
        });
        self.journal.record(records);
        lock(&self.table).remove(n.ino);
        log::info!("{op} {:?}: hidden (its bytes stay in the coffer)", n.path);
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
        let newname_s = name_str(newname)?;
        let newdir = self.dir(newparent)?;
        let to = self.new_path(&newdir, newname_s, "rename")?;
        if src.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!("rename {:?}: still being written", src.path),
            ));
        }
        if to == src.path {
            return Ok(());
        }
        if to.starts_with(&format!("{}/", src.path)) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("rename {:?} into itself", src.path),
            ));
        }
        let replaces = self.lookup_opt(newparent, newname)?;
        if let Some(dst) = &replaces {
            let dst = self.node(dst.ino)?;
            if noreplace {
                return Err(FsError::new(libc::EEXIST, format!("rename: {to:?} exists")));
            }
            if dst.origin == Origin::Writing {
                return Err(FsError::new(
                    libc::EBUSY,
                    format!("rename: {to:?} being written"),
                ));
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
        let mut records = match replaces {
            Some(_) => vec![Record::Hide { path: to.clone() }],
            None => Vec::new(),
        };
        records.push(moved.record_at(&to));
        for n in t.subtree(src.ino) {
            let rel = n.path.strip_prefix(&src.path).unwrap_or(&n.path);
            let at = format!("{to}{rel}");
            // A path no object key can hold is refused before anything is
            // recorded: the records so far are only in this vector.
            if at.len() > rules::MAX_KEY_BYTES {
                return Err(FsError::new(
                    libc::ENAMETOOLONG,
                    format!(
                        "rename {:?} to {to:?}: {at:?} would be {} bytes; object keys \
                         are at most {}",
                        src.path,
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
        records.push(Record::Hide {
            path: src.path.clone(),
        });
        self.journal.record(records);
        t.rename(src.ino, newparent, newname_s);
        t.mark_stored(src.ino, Instant::now());
        if let Some(n) = t.get_mut(src.ino) {
            n.attrs = moved.attrs;
        }
        Ok(())
    }

    /// Hard links and device nodes have no place in a coffer.
    pub fn unsupported(&self, op: &str, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let dir = self.dir(parent)?;
        let path = join(&dir.path, &name.to_string_lossy());
        self.writable(op, &path)?;
        Err(FsError::new(
            libc::EPERM,
            format!("{op} {path:?}: a coffer holds no hard links or device nodes"),
        ))
    }

    /// Unmount: finishes what writers left open (the kernel has released every
    /// handle by now, so this only catches the abnormal cases), stores the
    /// journal's last records, then stops the upload workers.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let open: Vec<Arc<Handle>> = self.handles.drain();
        for h in open {
            if let Handle::Write(w) = &*h {
                if lock(&w.w).is_open() {
                    match self.finish_write(w, End::Release) {
                        Ok(()) => log::info!("unmount: stored {:?}", lock(&w.w).key()),
                        Err(e) => log::error!("unmount: {}", e.message),
                    }
                }
            }
        }
        // A read-only mount writes nothing to the coffer, not even a checkpoint.
        self.journal.shutdown(!self.read_only());
        self.uploader.shutdown();
        self.cache.shutdown();
    }
    /// Test seam (tests/model.rs models a crash with it): ends the mount as a
    /// killed process would. Open writers are dropped unfinished and journal
    /// records not yet stored are lost; the threads end. Pair it with a store
    /// that refuses every request from now on, so nothing the dying mount still
    /// sends can land.
    pub fn crash(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let open: Vec<Arc<Handle>> = self.handles.drain();
        drop(open);
        self.journal.abandon();
        self.uploader.shutdown();
        self.cache.shutdown();
    }
}
