//! `Fs`: the filesystem a mount shows — the view of objects and journal, open
//! handles, and the write-once rules. Talks to the network only through
//! `ObjectStore` (and the journal through `commit::Journal`); knows no FUSE.

pub mod cache;
pub mod commit;
pub mod disk_cache;
pub mod error;
pub mod fuse;
pub mod inode;
pub mod journal;
pub mod private_dir;
pub mod write;

use crate::protocol::rules;
use crate::store::{ListAll, ObjectMeta, ObjectStore, StoreError};
use crate::transfer::upload::{UploadConfig, Uploader};
use bytes::Bytes;
use cache::{BlockCache, CacheConfig, ObjectId, ReadState};
use commit::Journal;
use error::{FsError, FsResult};
use inode::{join, Data, Kind, Node, Origin, Table, ViewEntry, RESERVED, ROOT};
use journal::{Attrs, Record, Timestamp, DATA_PREFIX};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use write::{Finished, Source, Staging, WriteHandle};

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

/// What ends a round of writing: fsync(2) keeps the file open, a close by
/// its opener ends it for the user, the release ends the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Fsync,
    Close,
    Release,
}

/// A file open for writing, and what its path showed before (restored if the
/// write fails).
struct Writer {
    ino: u64,
    w: Mutex<WriteHandle>,
    before: Option<ViewEntry>,
    mode: u16,
    /// An empty close already recorded the file (a dup'd descriptor was closed
    /// while the writer goes on, as dd and shells do).
    /// With the attributes it was recorded with.
    empty_recorded: Mutex<Option<Attrs>>,
    /// ... and an fsync(2) then said it was stored, with these attributes:
    /// it is the version a failure of this handle falls back to.
    empty_synced: Mutex<Option<Attrs>>,
    /// The process that opened it (0: unknown). Only its closes store the
    /// file: a child that inherited the descriptor (`{ cat a; cat b; } > f`)
    /// closes its copy while the opener goes on writing.
    opener: u32,
    /// Its failure was handled: the path shows its old version again, and
    /// may since be another handle's to write.
    abandoned: AtomicBool,
}

enum Handle {
    Write(Box<Writer>),
    Read {
        object: Option<ObjectId>,
        state: Mutex<ReadState>,
    },
    Dir(Vec<DirEntry>),
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

/// How long a name the coffer does not have is believed absent.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    uploader: Arc<Uploader>,
    cache: Arc<BlockCache>,
    /// Names recently found absent, with when.
    negative: Mutex<HashMap<(u64, String), Instant>>,
    /// The object version whose pages the kernel may keep, per inode.
    kernel_cached: Mutex<HashMap<u64, ObjectId>>,
    journal: Arc<Journal>,
    staging: Arc<Staging>,
    _staging_dir: tempfile::TempDir,
    cfg: FsConfig,
    table: Mutex<Table>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
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

fn is_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
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

/// The journal record that recreates `n` at `path`, with its times (the
/// object's own time when none was recorded).
fn record_for(n: &ViewEntry, path: &str) -> Record {
    let path = path.to_string();
    let attrs = Attrs {
        mtime: Some(n.attrs.mtime.unwrap_or_else(|| to_timestamp(n.mtime))),
        ..n.attrs
    };
    match (n.kind, &n.data, &n.target) {
        (Kind::Dir, _, _) => Record::Mkdir { path, attrs },
        (Kind::Symlink, _, t) => Record::Symlink {
            path,
            target: t.clone().unwrap_or_default(),
            attrs,
        },
        (Kind::File, Some(d), _) => Record::Bind {
            path,
            key: d.key.clone(),
            size: n.size,
            etag: d.etag.clone(),
            attrs,
        },
        (Kind::File, None, _) => Record::File { path, attrs },
    }
}

/// Times for a change made now: mtime and ctime.
fn touched_now() -> Attrs {
    let now = Some(to_timestamp(SystemTime::now()));
    Attrs {
        mtime: now,
        ctime: now,
        ..Attrs::default()
    }
}

/// The stored version a file's edit starts from.
fn source(n: &Node) -> Option<Source> {
    n.data.as_ref().map(|d| Source {
        key: d.key.clone(),
        etag: d.etag.clone(),
        size: n.size,
    })
}

fn view_of(n: &Node) -> ViewEntry {
    ViewEntry {
        kind: n.kind,
        size: n.size,
        data: n.data.clone(),
        target: n.target.clone(),
        attrs: n.attrs,
        mtime: n.mtime,
    }
}

impl Fs {
    /// Replays the coffer's journal and prepares the staging directory.
    pub fn new(store: Arc<dyn ObjectStore>, cfg: FsConfig) -> FsResult<Arc<Fs>> {
        let journal = Journal::open(Arc::clone(&store))?;
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
            negative: Mutex::new(HashMap::new()),
            kernel_cached: Mutex::new(HashMap::new()),
            store,
            journal,
            staging: Staging::new(dir.path(), cfg.staging_limit),
            _staging_dir: dir,
            cfg,
            table: Mutex::new(Table::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
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

    /// Reads other mounts' journal batches; what changed is asked for again.
    pub fn reload_journal(&self) {
        match self.journal.reload() {
            Ok(true) => lock(&self.table).invalidate(),
            Ok(false) => {}
            Err(e) => log::warn!("reloading the journal: {}", e.message),
        }
    }

    fn attr(&self, n: &Node) -> Attr {
        let (default_perm, volatile) = match n.kind {
            Kind::Dir => (self.cfg.dir_mode, false),
            Kind::File => (self.cfg.file_mode, n.origin == Origin::Writing),
            Kind::Symlink => (0o777, false),
        };
        let mtime = n.attrs.mtime.map(from_timestamp).unwrap_or(n.mtime);
        Attr {
            ino: n.ino,
            kind: n.kind,
            size: n.size,
            mtime,
            ctime: n.attrs.ctime.map(from_timestamp).unwrap_or(mtime),
            perm: n.attrs.mode.map_or(default_perm, |m| (m & 0o7777) as u16),
            uid: n.attrs.uid.unwrap_or(self.cfg.uid),
            gid: n.attrs.gid.unwrap_or(self.cfg.gid),
            volatile,
        }
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
                format!("{:?}: not a directory", n.path),
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
        let micros = commit::now_micros();
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
                Some(n) if n.origin == Origin::Writing || n.seen.elapsed() < ttl => {
                    return Ok(self.attr(n))
                }
                None if t.listed_within(parent, ttl) => return Err(FsError::not_found()),
                _ => {}
            }
        }
        let neg_key = (parent, name.to_string());
        if lock(&self.negative)
            .get(&neg_key)
            .is_some_and(|t| t.elapsed() < NEGATIVE_TTL.min(ttl))
        {
            return Err(FsError::not_found());
        }
        let path = dir.child_path(name);
        if rules::validate_key(&path).is_err() {
            return Err(FsError::not_found());
        }
        let found = self.probe(&path)?;
        let now = Instant::now();
        let mut t = lock(&self.table);
        let Some(entry) = found else {
            let mut neg = lock(&self.negative);
            if neg.len() > 100_000 {
                neg.retain(|_, t| t.elapsed() < NEGATIVE_TTL);
            }
            neg.insert(neg_key, now);
            drop(neg);
            // Not in the view; but this mount may be writing it.
            return match t.child(parent, name) {
                Some(n) if n.origin == Origin::Writing => Ok(self.attr(n)),
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
        let n = t.get(ino).ok_or_else(FsError::not_found)?;
        Ok(self.attr(n))
    }

    /// What the view has at `path`: the journal first, else HEAD `path` and
    /// LIST `path/` side by side.
    fn probe(&self, path: &str) -> FsResult<Option<ViewEntry>> {
        let (journal, attrs, hidden, dir_below) = self.journal.with_overlay(|o| {
            let e = o
                .get(path)
                .and_then(|e| ViewEntry::from_journal(&e.shape, e.attrs));
            (
                e,
                o.attrs(path).unwrap_or_default(),
                o.hides_object(path),
                o.has_entries_under(path),
            )
        });
        if let Some(e) = journal {
            return Ok(Some(e));
        }
        if dir_below {
            return Ok(Some(ViewEntry::dir(attrs, SystemTime::now())));
        }
        let prefix = format!("{path}/");
        let (head, list) = std::thread::scope(|s| {
            let list = s.spawn(|| self.store.list(&prefix, "", 100));
            let head = self.store.head(path);
            let list = list
                .join()
                .unwrap_or_else(|_| Err(StoreError::Invalid("listing thread panicked".into())));
            (head, list)
        });
        let is_dir = match list {
            Ok(page) => {
                let visible = self
                    .journal
                    .with_overlay(|o| page.objects.iter().any(|m| !o.hides_object(&m.key)));
                // A full page of hidden keys may hide visible ones after it.
                visible || (page.next_marker.is_some() && !hidden)
            }
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if is_dir {
            return Ok(Some(ViewEntry::dir(attrs, SystemTime::now())));
        }
        match head {
            Ok(Some(meta)) if !hidden => Ok(Some(ViewEntry::object(&meta, attrs))),
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = lock(&self.table);
        t.get(ino)
            .map(|n| self.attr(n))
            .ok_or_else(FsError::not_found)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<String> {
        let n = self.node(ino)?;
        n.target
            .ok_or_else(|| FsError::new(libc::EINVAL, format!("{:?}: not a symlink", n.path)))
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, set: SetAttr) -> FsResult<Attr> {
        let node = match self.node(ino) {
            Ok(n) => n,
            // ftruncate on a finished handle of a file since removed: the
            // handle's own answer (EPERM after fsync, or its first error).
            Err(e) => match (set.size, fh.map(|f| self.handle(f))) {
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

    fn truncate(&self, node: &Node, fh: Option<u64>, size: u64) -> FsResult<()> {
        if node.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?}: a directory", node.path),
            ));
        }
        if let Some(h) = self.writer_of(node.ino, fh) {
            if let Handle::Write(w) = &*h {
                let mut g = lock(&w.w);
                let changes = g.size() != size;
                let was_open = g.is_open();
                let result = g.truncate(size);
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
                        n.attrs = n.attrs.merged(touched_now());
                    }
                }
                return Ok(());
            }
        }
        if node.size == size {
            return Ok(());
        }
        let attrs = node.attrs.merged(touched_now());
        if size == 0 {
            // An empty file needs no object: the journal holds it. The old bytes
            // stay in the coffer.
            let record = Record::File {
                path: node.path.clone(),
                attrs,
            };
            return self.settle(node.ino, attrs, record, None, 0);
        }
        // Any other size: a staged copy, stored under a fresh key.
        let key = self.data_key();
        let mut w = WriteHandle::edit(&self.uploader, &self.staging, &key, source(node));
        w.truncate(size)?;
        match w.finish()? {
            Finished::Stored { key, etag, size } => {
                let record = Record::Bind {
                    path: node.path.clone(),
                    key: key.clone(),
                    size,
                    etag: etag.clone(),
                    attrs,
                };
                let data = Data { key, etag };
                self.settle(node.ino, attrs, record, Some(data), size)
            }
            Finished::Empty | Finished::Unchanged => Ok(()),
        }
    }

    /// Whether an open, unfailed write handle holds `ino`.
    fn being_written(&self, ino: u64) -> bool {
        self.writer_of(ino, None).is_some()
    }

    fn writer_of(&self, ino: u64, fh: Option<u64>) -> Option<Arc<Handle>> {
        let hs = lock(&self.handles);
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

    /// Records what a file now is, waits until the record is stored (bytes
    /// reachable only through a record — empty files, new versions — are not
    /// stored until their batch is), and updates its entry. If the record
    /// cannot be stored it is withdrawn and the entry is left as it was.
    fn settle(
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
            n.attrs = attrs;
            n.size = size;
            n.data = data;
        }
        Ok(())
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

    /// `parent/name` if it exists (asking the coffer when the table cannot tell);
    /// `None` where lookup says ENOENT.
    fn lookup_opt(&self, parent: u64, name: &OsStr) -> FsResult<Option<Attr>> {
        match self.lookup(parent, name) {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn exists(&self, parent: u64, name: &str) -> FsResult<bool> {
        Ok(self.lookup_opt(parent, OsStr::new(name))?.is_some())
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
        let fh = self.add_handle(Handle::Write(Box::new(Writer {
            ino,
            w: Mutex::new(w),
            before: None,
            mode: (mode & 0o7777) as u16,
            empty_recorded: Mutex::new(None),
            empty_synced: Mutex::new(None),
            opener: process_of(pid),
            abandoned: AtomicBool::new(false),
        })));
        Ok((attr, fh))
    }

    /// Opens a file; the flag says whether the kernel may keep pages it cached
    /// from an earlier open (the same object version).
    pub fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<(u64, bool)> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?}: a directory", n.path),
            ));
        }
        if n.origin == Origin::Writing {
            return Err(FsError::new(
                libc::EBUSY,
                format!(
                    "open {:?}: this mount is still writing it; it can be opened once its \
                     writer has closed it",
                    n.path
                ),
            ));
        }
        if !is_write(flags) && flags & libc::O_TRUNC == 0 {
            let object = n.data.as_ref().map(|d| ObjectId {
                key: d.key.as_str().into(),
                etag: d.etag.as_str().into(),
                size: n.size,
            });
            let keep = match &object {
                Some(o) => lock(&self.kernel_cached).insert(ino, o.clone()).as_ref() == Some(o),
                None => false,
            };
            let fh = self.add_handle(Handle::Read {
                object,
                state: Mutex::new(ReadState::default()),
            });
            return Ok((fh, keep));
        }
        self.writable("open for writing", &n.path)?;
        // New bytes for an existing path go to a fresh key; the old version stays.
        let key = self.data_key();
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
                format!("open {:?}: being written", n.path),
            ));
        }
        node.origin = Origin::Writing;
        node.size = size;
        if truncating {
            node.attrs = node.attrs.merged(touched_now());
        }
        drop(t);
        lock(&self.kernel_cached).remove(&ino);
        Ok((
            self.add_handle(Handle::Write(Box::new(Writer {
                ino,
                w: Mutex::new(w),
                before: Some(view_of(&n)),
                mode: self.attr(&n).perm,
                empty_recorded: Mutex::new(None),
                empty_synced: Mutex::new(None),
                opener: process_of(pid),
                abandoned: AtomicBool::new(false),
            }))),
            false,
        ))
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
                    records.push(record_for(&view_of(p), parent));
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

    fn ensure_listed(&self, dir: &Node) -> FsResult<()> {
        if !lock(&self.table).listed_within(dir.ino, self.cfg.metadata_ttl) {
            self.list_subtree(dir)?;
        }
        Ok(())
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
        let writers = self.overwritten_versions();
        let mut t = lock(&self.table);
        let src = t.get(src.ino).cloned().ok_or_else(FsError::not_found)?;
        let mut moved = view_of(&src);
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
        records.push(record_for(&moved, &to));
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
                (Origin::Stored, _) => records.push(record_for(&view_of(n), &at)),
                // Being overwritten: the version it had stands at the new path
                // until its close records the new one there.
                (Origin::Writing, Some(Some(before))) => records.push(record_for(before, &at)),
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

    /// Files being written, with the version each showed before (`None`: new).
    fn overwritten_versions(&self) -> HashMap<u64, Option<ViewEntry>> {
        lock(&self.handles)
            .values()
            .filter_map(|h| match &**h {
                Handle::Write(w) => Some((w.ino, w.before.clone())),
                _ => None,
            })
            .collect()
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

    // ---- file data -------------------------------------------------------

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let Handle::Write(w) = &*h else {
            return Err(FsError::new(libc::EBADF, "write: not open for writing"));
        };
        let mut g = lock(&w.w);
        let was_open = g.is_open();
        let result = g.write(offset, data);
        let size = g.size();
        drop(g);
        match result {
            Ok(()) => {
                if let Some(n) = lock(&self.table).get_mut(w.ino) {
                    n.size = size;
                    n.attrs = n.attrs.merged(touched_now());
                }
                Ok(data.len() as u32)
            }
            // Only the failure that ends an open handle gives the path back;
            // a finished handle's refusals change nothing.
            Err(e) if was_open => Err(self.abandon_write(w, e, false)),
            Err(e) => Err(e),
        }
    }

    /// After a write, truncate or close failed (the handle is poisoned): the
    /// path shows what it showed before, also in the journal when an earlier
    /// close of this handle recorded it empty. `finishing`: the failure came
    /// from storing the object, which may have landed all the same (a lost
    /// answer). Returns `e`.
    fn abandon_write(&self, w: &Writer, e: FsError, finishing: bool) -> FsError {
        if w.abandoned.swap(true, Ordering::SeqCst) {
            return e;
        }
        let path = {
            let _ns = lock(&self.ns);
            let mut t = lock(&self.table);
            let Some(n) = t.get_mut(w.ino) else {
                return e;
            };
            if n.origin != Origin::Writing {
                return e;
            }
            let path = n.path.clone();
            let synced = *lock(&w.empty_synced);
            match &w.before {
                _ if synced.is_some() => {
                    n.origin = Origin::Stored;
                    n.size = 0;
                    n.data = None;
                    n.attrs = synced.unwrap_or_default();
                }
                None => t.remove(w.ino),
                Some(v) => {
                    n.origin = Origin::Stored;
                    n.size = v.size;
                    n.data = v.data.clone();
                    n.attrs = v.attrs;
                    n.mtime = v.mtime;
                }
            }
            path
        };
        if lock(&w.empty_recorded).is_some() {
            if lock(&w.empty_synced).is_none() {
                // A close of a dup'd descriptor stored this file empty; undo that.
                let undo = match &w.before {
                    None => Record::Hide { path },
                    Some(v) => record_for(v, &path),
                };
                self.journal.record(vec![undo]);
            }
        } else if finishing && w.before.is_none() && lock(&w.w).key() == path {
            // A new file's object at its own path may have landed though the
            // answer said otherwise: keep it out of the view for good.
            self.journal.record(vec![Record::Hide { path }]);
        }
        e
    }

    /// close(2) by thread `pid` (0: unknown): every byte written so far is
    /// stored, or an error. A close by another process than the opener (a
    /// child done with an inherited descriptor) stores nothing yet: the
    /// opener's close, or the release, does.
    pub fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handle(fh)?;
        let Handle::Write(w) = &*h else {
            return Ok(());
        };
        if w.opener != 0 && pid != 0 {
            let closer = process_of(pid);
            if closer != 0 && closer != w.opener {
                return Ok(());
            }
        }
        self.finish_write(w, End::Close)
    }

    /// fsync(2): the file's bytes and every metadata change so far are stored.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if let Handle::Write(w) = &*h {
            self.finish_write(w, End::Fsync)?;
        }
        self.journal.sync_all()
    }

    /// fsyncdir(2): all metadata so far is stored. sync(1) and syncfs(2) never
    /// get here: Linux sends FUSE_SYNCFS only to virtiofs, so for a FUSE mount
    /// they return at once (the group commit stores within a second anyway).
    pub fn sync_metadata(&self) -> FsResult<()> {
        self.journal.sync_all()
    }

    /// Stores what `w` wrote. `last`: the handle is being released, so an empty
    /// file stops being "being written". Any failure leaves the path as it was.
    fn finish_write(&self, w: &Writer, end: End) -> FsResult<()> {
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
    fn settle_write(&self, w: &Writer, result: Finished, end: End) -> FsResult<()> {
        let last = end == End::Release;
        let Some(node) = lock(&self.table).get(w.ino).cloned() else {
            return Err(FsError::new(libc::EIO, "the file's entry vanished"));
        };
        // The mode given at create stands unless one was set since.
        let attrs = Attrs {
            mode: node.attrs.mode.or(Some(u32::from(w.mode))),
            ..node.attrs
        };
        let record = match result {
            Finished::Unchanged => {
                // Opened for writing, closed without a change: the old bytes stand.
                let v = w.before.as_ref().map(|v| v.attrs);
                if v.is_some_and(|v| v != node.attrs) {
                    self.journal.record(vec![Record::Attr {
                        path: node.path.clone(),
                        attrs: node.attrs,
                    }]);
                }
                let mut t = lock(&self.table);
                if let Some(n) = t.get_mut(w.ino) {
                    // fsync leaves the file open for writing; a close ends it.
                    if n.origin == Origin::Writing && end != End::Fsync {
                        n.origin = Origin::Stored;
                        if let Some(v) = &w.before {
                            n.size = v.size;
                            n.data = v.data.clone();
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
                        let path = self.path_of(w.ino)?;
                        self.journal.record(vec![Record::File { path, attrs }])
                    };
                    self.journal.store_or_withdraw(ticket)?;
                    *recorded = Some(attrs);
                    if let Some(n) = lock(&self.table).get_mut(w.ino) {
                        n.attrs = attrs;
                        n.size = 0;
                        n.data = None;
                    }
                }
                if end == End::Fsync {
                    *lock(&w.empty_synced) = Some(attrs);
                }
                if last {
                    lock(&self.table).mark_stored(w.ino, Instant::now());
                }
                return Ok(());
            }
            Finished::Stored { key, etag, size } => {
                log::debug!("stored {:?}: {size} bytes, ETag {etag}", node.path);
                (key, etag, size)
            }
        };
        let (key, etag, size) = record;
        // Under the namespace lock: the path is the file's path now, and a
        // rename cannot slip between reading it and recording it.
        let (ticket, wait) = {
            let _ns = lock(&self.ns);
            let path = self.path_of(w.ino)?;
            let own = key == path && w.before.is_none() && self.own_key_free(&path);
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
            n.attrs = attrs;
            n.size = size;
            n.data = Some(Data { key, etag });
        }
        t.mark_stored(w.ino, Instant::now());
        Ok(())
    }

    /// The current path of `ino`.
    fn path_of(&self, ino: u64) -> FsResult<String> {
        lock(&self.table)
            .get(ino)
            .map(|n| n.path.clone())
            .ok_or_else(|| FsError::new(libc::EIO, "the file's entry vanished"))
    }

    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return Ok(());
        };
        let Handle::Write(w) = &*h else {
            return Ok(());
        };
        if !lock(&w.w).is_open() {
            return Ok(());
        }
        // The kernel flushes on every close; this is the safety net.
        self.finish_write(w, End::Release)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let Handle::Read { object, state } = &*h else {
            return Err(FsError::new(libc::EBADF, "read: not open for reading"));
        };
        match object {
            Some(o) => self.cache.read(o, &mut lock(state), offset, size),
            None => Ok(Bytes::new()),
        }
    }

    // ---- directories -----------------------------------------------------

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let dir = self.dir(ino)?;
        self.ensure_listed(&dir)?;
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
        let now = Instant::now();
        let mut t = lock(&self.table);
        self.journal
            .with_overlay(|o| t.apply_listing(dir.ino, &objects, o, now));
        Ok(())
    }

    /// Hands the entries from `offset` on to `add` (with the offset of the next
    /// one) until it says its buffer is full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        let Handle::Dir(entries) = &*h else {
            return Err(FsError::new(libc::EBADF, "readdir: not a directory handle"));
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if add(e, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// Unmount: finishes what writers left open (the kernel has released every
    /// handle by now, so this only catches the abnormal cases), stores the
    /// journal's last records, then stops the upload workers.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let open: Vec<Arc<Handle>> = lock(&self.handles).drain().map(|(_, h)| h).collect();
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
        let open: Vec<Arc<Handle>> = lock(&self.handles).drain().map(|(_, h)| h).collect();
        drop(open);
        self.journal.abandon();
        self.uploader.shutdown();
        self.cache.shutdown();
    }
}
