//! `Fs`: the filesystem a mount shows. This file owns the struct, its
//! configuration, start-up and shutdown, and the few rules every part shares
//! (read-only, fresh data keys); the operations live by concern, each an
//! `impl Fs` of its own:
//! - `view/`: what the mount believes exists — inode table, negative cache,
//!   lookup and listing;
//! - `namespace`: mkdir, mknod, symlink, create, rename, unlink, rmdir, setattr;
//! - `xattr`: extended attributes;
//! - `privs`: setuid/setgid bits a write takes away;
//! - `handles`: the handle table, open and release;
//! - `file_write/`, `file_read`, `dir`: what open files and directories do;
//! - `journal/`: the metadata journal's format, commit and replay;
//! - `memory`: what the kernel holds, what it forgot, memory given back;
//! - `as_of`: mounts of the coffer as it stood at a past time (`--as-of`).
//!
//! Talks to the network only through `ObjectStore` (and the journal through
//! `journal::Committer`); knows no FUSE (`fuse` adapts it).

mod as_of;
pub mod cache;
mod dir;
pub mod disk_cache;
pub mod error;
mod file_read;
mod file_write;
pub mod fuse;
mod handles;
pub mod journal;
pub mod memory;
mod namespace;
pub mod private_dir;
mod privs;
pub mod view;
mod xattr;

pub use view::Kind;

use crate::store::ObjectStore;
use crate::transfer::upload::{UploadConfig, Uploader};
use cache::{BlockCache, CacheConfig, ObjectId};
use error::{FsError, FsResult};
use file_write::{End, Staging};
use handles::{Handle, Handles};
use journal::{Attrs, Committer, Timestamp, DATA_PREFIX};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use view::{Flights, NegativeCache, ReadAhead, Table};

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
    /// unlink/rmdir hide paths (the bytes stay in the coffer); false
    /// (--no-delete) refuses them for files that hold coffer bytes.
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
    /// Show the coffer as it stood at this time (microseconds since the
    /// epoch), read-only: `--as-of`.
    pub as_of: Option<u64>,
}

impl Default for FsConfig {
    fn default() -> Self {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        FsConfig {
            uid,
            gid,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(10),
            read_only: false,
            allow_delete: true,
            upload: UploadConfig::default(),
            cache_dir: private_dir::default_base().join("default"),
            staging_limit: 16 << 30,
            cache: CacheConfig::default(),
            cache_dir_size: 0,
            as_of: None,
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
    /// As set by `touch -a`/utimensat, else the mtime; reads never move it.
    pub atime: SystemTime,
    /// Directories: 2 + subdirectories once listed, 1 ("unknown") before.
    pub nlink: u32,
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
    pub atime: Option<SystemTime>,
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

/// statfs's block size (`f_bsize`, `f_frsize`).
pub const BLOCK_SIZE: u32 = 4096;

/// What `df` and `stat -f` show (`Fs::statfs`), in `BLOCK_SIZE` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub blocks: u64,
    /// Free blocks, all of them available to unprivileged users too.
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
}

pub struct Fs {
    /// This `Fs`, for the jobs of its background workers.
    me: Weak<Fs>,
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
    /// Directories being listed (one listing of each at a time).
    flights: Flights,
    /// Listings ahead of directory walkers.
    ahead: ReadAhead,
    handles: Handles,
    stopping: AtomicBool,
    /// Entries evicted from the table since memory was last given back.
    evicted: std::sync::atomic::AtomicUsize,
    /// Listing pages applied since the last `settle_memory`: what they held
    /// while applied goes back to the system too.
    listed_pages: std::sync::atomic::AtomicUsize,
    /// Held while the namespace changes shape: a rename's records, and the
    /// creation or settling of a file, are made under it, so a file made in a
    /// directory that is being renamed lands at one path or the other, whole.
    ns: Mutex<()>,
    /// As-of mounts: whether each bound object checked is still there.
    versions_there: Mutex<HashMap<String, bool>>,
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
        Ok(d) => Timestamp::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            // Before 1970: keep nanoseconds non-negative.
            if d.subsec_nanos() == 0 {
                Timestamp::new(-(d.as_secs() as i64), 0)
            } else {
                Timestamp::new(-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

pub fn from_timestamp(t: Timestamp) -> SystemTime {
    let (s, ns) = (t.secs(), t.nanos());
    let ns = Duration::from_nanos(u64::from(ns));
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s as u64) + ns
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + ns
    }
}

/// A fresh key under `.cofferfs/data/` for bytes whose path key is taken (a
/// new version of a path): never used before, by this or any mount.
pub(crate) fn data_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let micros = journal::now_micros();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let r: u32 = rand::random();
    format!("{DATA_PREFIX}{micros:020}-{pid:08x}{r:08x}-{n:010}")
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
        let (store, journal) = match cfg.as_of {
            Some(t) => {
                let store: Arc<dyn ObjectStore> = Arc::new(as_of::AsOfStore::new(store, t));
                let journal = Committer::open_as_of(Arc::clone(&store), t)?;
                (store, journal)
            }
            None => {
                let journal = Committer::open(Arc::clone(&store))?;
                (store, journal)
            }
        };
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
        let fs = Arc::new_cyclic(|me| Fs {
            me: me.clone(),
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
            flights: Flights::default(),
            ahead: ReadAhead::default(),
            handles: Handles::new(),
            stopping: AtomicBool::new(false),
            evicted: std::sync::atomic::AtomicUsize::new(0),
            listed_pages: std::sync::atomic::AtomicUsize::new(0),
            ns: Mutex::new(()),
            versions_there: Mutex::new(HashMap::new()),
        });
        fs.load_root();
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
                fs.settle_memory();
            })
            .map_err(|e| FsError::new(libc::EIO, format!("cannot start a thread: {e}")))?;
        Ok(fs)
    }

    /// Mounted read-only (or as of a past time), or turned read-only by a
    /// journal of a later format.
    pub fn read_only(&self) -> bool {
        self.cfg.read_only || self.cfg.as_of.is_some() || self.journal.read_only()
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

    /// Whether new bytes for `path` can go to the object of the same key: nothing
    /// was ever stored there and the journal does not speak of it.
    fn own_key_free(&self, path: &str) -> bool {
        self.journal.with_overlay(|o| {
            !o.hides_object(path)
                && o.get(path)
                    .is_none_or(|e| e.shape == journal::Shape::AttrsOnly)
        })
    }

    /// Unmount: finishes what writers left open (the kernel has released every
    /// handle by now, so this only catches the abnormal cases), stores the
    /// journal's last records, then stops the upload workers.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Listings ahead of walkers nobody will read any more.
        self.ahead.shutdown();
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
        self.ahead.shutdown();
        let open: Vec<Arc<Handle>> = self.handles.drain();
        drop(open);
        self.journal.abandon();
        self.uploader.shutdown();
        self.cache.shutdown();
    }
}
