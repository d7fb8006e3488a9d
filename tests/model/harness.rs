//! The harness: runs each `Op` against `Fs` (over a `MemoryStore` behind a
//! `FaultyStore`) and the reference `Model`, and after every step walks the
//! whole mount and compares. Owns the mounts and ends every one it starts.

use super::reference::{
    name_of, parent_of, Exp, Found, HState, MTime, Model, Node, Tree, Want, What,
};
use super::{pattern, At, Op, P};
use bytes::Bytes;
use cofferfs::fs::{Attr, Fs, FsConfig, Kind, Owner, SetAttr};
use cofferfs::store::faulty::{FaultyStore, Ledger};
use cofferfs::store::memory::MemoryStore;
use cofferfs::store::ObjectStore;
use cofferfs::transfer::upload::UploadConfig;
use proptest::sample::Index;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROOT: u64 = 1;

/// One mount and the store wrapper only it uses.
struct Mount {
    fs: Arc<Fs>,
    store: Arc<FaultyStore>,
}

/// What a walk found at a path.
#[derive(Debug, Clone)]
pub struct Seen {
    pub what: SeenWhat,
    pub perm: u32,
    pub mtime: SystemTime,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SeenWhat {
    File(Bytes),
    /// A file whose read failed (one being written whose upload failed).
    Unreadable(i32),
    Dir,
    Symlink(String),
}

pub struct Harness {
    mem: Arc<MemoryStore>,
    ledger: Arc<Ledger>,
    /// How far `note_own_objects` has looked in the ledger.
    own_mark: usize,
    cfg: FsConfig,
    a: Option<Mount>,
    b: Option<Mount>,
    model: Model,
    started: SystemTime,
    _dir: tempfile::TempDir,
}

type R<T> = Result<T, String>;

fn errno<T>(r: cofferfs::fs::error::FsResult<T>) -> Result<T, i32> {
    r.map_err(|e| e.errno)
}

fn fmt_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(_) => "before 1970".into(),
    }
}

/// Outcomes per operation, for `MODEL_STATS=1` (is the test reaching deep states?).
pub static STATS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

thread_local! {
    /// Outcomes of the current step, for the trace.
    static OUTCOMES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn count(what: String) {
    OUTCOMES.with(|o| o.borrow_mut().push(what.clone()));
    *STATS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(what)
        .or_default() += 1;
}

/// Holds `got` to `exp`. Returns whether the operation succeeded.
fn check<T>(what: &str, exp: Exp, got: &Result<T, i32>) -> R<bool> {
    count(match got {
        Ok(_) => format!("{what} ok"),
        Err(e) => format!("{what} errno {e}"),
    });
    match (exp, got) {
        (Exp::Ok | Exp::Either, Ok(_)) => Ok(true),
        (Exp::Either | Exp::Fail, Err(_)) => Ok(false),
        (Exp::Fail, Ok(_)) => Err(format!("{what}: expected failure, got success")),
        (Exp::Err(e), Err(g)) if e == *g || (resolving(e) && resolving(*g)) => Ok(false),
        (Exp::Ok, Err(g)) => Err(format!("{what}: expected success, got errno {g}")),
        (Exp::Err(e), Err(g)) => Err(format!("{what}: expected errno {e}, got errno {g}")),
        (Exp::Err(e), Ok(_)) => Err(format!("{what}: expected errno {e}, got success")),
    }
}

/// Path resolution errors: which one a path through a symlink or a missing
/// parent gives depends on the order of lookups, not on the filesystem.
fn resolving(e: i32) -> bool {
    e == libc::ENOENT || e == libc::ENOTDIR
}

/// Under an armed fault any operation may fail instead.
fn loosen(exp: Exp, faulty: bool) -> Exp {
    match exp {
        Exp::Ok if faulty => Exp::Either,
        Exp::Err(_) | Exp::Fail if faulty => Exp::Either,
        e => e,
    }
}

impl Harness {
    pub fn new(ttl: Duration) -> R<Harness> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = FsConfig {
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: ttl,
            allow_delete: true,
            upload: UploadConfig {
                part_size: 1 << 20,
                // Room for two part buffers: a third writer must not wait forever
                // for the others (DESIGN: "writers continue through staging (or
                // are refused at open), never block forever").
                memory: 2 << 20,
                concurrency: 2,
            },
            // A fresh directory: the cache directory must be private (0700).
            cache_dir: dir.path().join("cache"),
            ..FsConfig::default()
        };
        let mut h = Harness {
            mem: Arc::new(MemoryStore::new()),
            ledger: Ledger::new(),
            own_mark: 0,
            cfg,
            a: None,
            b: None,
            model: Model::default(),
            started: SystemTime::now(),
            _dir: dir,
        };
        h.a = Some(h.mount()?);
        Ok(h)
    }

    fn mount(&self) -> R<Mount> {
        let inner: Arc<dyn ObjectStore> = self.mem.clone();
        let store = FaultyStore::new(inner, Arc::clone(&self.ledger));
        let fs = Fs::new(store.clone(), self.cfg.clone())
            .map_err(|e| format!("mount failed: {}", e.message))?;
        Ok(Mount { fs, store })
    }

    fn a(&self) -> &Arc<Fs> {
        &self.a.as_ref().expect("mounted").fs
    }

    /// The caller of every operation: the mount's own user, as on a mount
    /// without allow_other.
    fn caller(&self) -> Owner {
        Owner {
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    // ---- paths --------------------------------------------------------------

    fn resolve_in(fs: &Fs, path: &str) -> Result<Attr, i32> {
        let mut ino = ROOT;
        let mut attr = Err(libc::ENOENT);
        for c in path.split('/') {
            let a = errno(fs.lookup(ino, OsStr::new(c)))?;
            ino = a.ino;
            attr = Ok(a);
        }
        attr
    }

    fn resolve(&self, path: &str) -> Result<Attr, i32> {
        Self::resolve_in(self.a(), path)
    }

    /// The inode of `path`'s parent.
    fn parent(&self, path: &str) -> Result<u64, i32> {
        match parent_of(path) {
            None => Ok(ROOT),
            Some(p) => {
                let a = self.resolve(p)?;
                if a.kind != Kind::Dir {
                    return Err(libc::ENOTDIR);
                }
                Ok(a.ino)
            }
        }
    }

    // ---- steps ---------------------------------------------------------------

    /// Runs the ops, comparing after each; the error names the step.
    pub fn run(&mut self, ops: &[Op], progress: &AtomicUsize) -> R<()> {
        let mut trace = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            progress.store(i + 1, Ordering::SeqCst);
            let named = self.resolved(op);
            OUTCOMES.with(|o| o.borrow_mut().clear());
            let r = self.step(op, false).and_then(|()| self.after_step());
            let outcomes = OUTCOMES.with(|o| o.borrow().join(", "));
            trace.push(format!("  {i}: {named:?} -> {outcomes}"));
            r.map_err(|e| {
                format!(
                    "step {i}: {e}\nsteps with paths resolved:\n{}",
                    trace.join("\n")
                )
            })?;
        }
        Ok(())
    }

    /// `op` with the paths it names now.
    fn resolved(&self, op: &Op) -> Op {
        let n = |p: &P| P::Name(self.at(p));
        match op {
            Op::Create { path, mode } => Op::Create {
                path: n(path),
                mode: *mode,
            },
            Op::OpenTrunc { path } => Op::OpenTrunc { path: n(path) },
            Op::OpenEdit { path } => Op::OpenEdit { path: n(path) },
            Op::Truncate { path, size } => Op::Truncate {
                path: n(path),
                size: *size,
            },
            Op::Rename {
                from,
                to,
                noreplace,
            } => Op::Rename {
                from: n(from),
                to: n(to),
                noreplace: *noreplace,
            },
            Op::Mkdir { path, mode } => Op::Mkdir {
                path: n(path),
                mode: *mode,
            },
            Op::Symlink { path, target } => Op::Symlink {
                path: n(path),
                target: target.clone(),
            },
            Op::Chmod { path, mode } => Op::Chmod {
                path: n(path),
                mode: *mode,
            },
            Op::Utimens { path, secs, nanos } => Op::Utimens {
                path: n(path),
                secs: *secs,
                nanos: *nanos,
            },
            Op::Unlink { path } => Op::Unlink { path: n(path) },
            Op::Link { from, to } => Op::Link {
                from: n(from),
                to: n(to),
            },
            Op::Rmdir { path } => Op::Rmdir { path: n(path) },
            Op::Read { path, offset, len } => Op::Read {
                path: n(path),
                offset: *offset,
                len: *len,
            },
            Op::Faulty { faults, op } => Op::Faulty {
                faults: faults.clone(),
                op: Box::new(self.resolved(op)),
            },
            other => other.clone(),
        }
    }

    fn after_step(&mut self) -> R<()> {
        if let Some(m) = &self.a {
            m.store.disarm();
        }
        let v = self.ledger.violations();
        if !v.is_empty() {
            return Err(format!("an object was written twice: {v:?}"));
        }
        let seen = walk(self.a())?;
        let want = self.model.live();
        compare(&want, &seen, self.started)
            .map_err(|e| format!("mount differs from model: {e}"))?;
        // A read of a file being written that failed poisoned its writer.
        for (p, s) in &seen {
            if let SeenWhat::Unreadable(_) = s.what {
                if let Some(i) = self
                    .model
                    .handles
                    .iter()
                    .position(|h| h.live() && self.model.names(h).contains(&p.as_str()))
                {
                    self.model.poison(i);
                }
            }
        }
        self.note_own_objects();
        pin(&mut self.model.tree, &seen);
        self.model.end_step();
        Ok(())
    }

    /// Objects that landed under a path's own key since the last look: a crash
    /// may show them where no record says otherwise yet.
    fn note_own_objects(&mut self) {
        let keys = self.ledger.written_since(self.own_mark);
        self.own_mark = self.ledger.mark();
        for k in keys {
            if k.starts_with(".cofferfs/") {
                continue;
            }
            if let Some(b) = self.mem.object(&k) {
                self.model.own.push((k, b));
            }
        }
    }

    /// The path `p` names now.
    fn at(&self, p: &P) -> String {
        match p {
            P::Name(n) => n.clone(),
            P::Existing(i) => {
                let live = self.model.live();
                if live.is_empty() {
                    return "a".into();
                }
                live.keys()
                    .nth(i.index(live.len()))
                    .cloned()
                    .unwrap_or_default()
            }
        }
    }

    fn step(&mut self, op: &Op, faulty: bool) -> R<()> {
        match op {
            Op::Create { path, mode } => self.create(&self.at(path), *mode, faulty),
            Op::OpenTrunc { path } => self.open(&self.at(path), true, faulty),
            Op::OpenEdit { path } => self.open(&self.at(path), false, faulty),
            Op::Write { h, at, len, seed } => self.write(h, at, *len, *seed, faulty),
            Op::Ftruncate { h, size } => self.ftruncate(h, *size, faulty),
            Op::Close { h } => {
                let Some(i) = self.pick(h) else { return Ok(()) };
                self.close(i, faulty)
            }
            Op::Fsync { h } => self.fsync(h, faulty),
            Op::Truncate { path, size } => self.truncate(&self.at(path), *size, faulty),
            Op::Rename {
                from,
                to,
                noreplace,
            } => self.rename(&self.at(from), &self.at(to), *noreplace, faulty),
            Op::Mkdir { path, mode } => self.mkdir(&self.at(path), *mode, faulty),
            Op::Symlink { path, target } => self.symlink(&self.at(path), target, faulty),
            Op::Chmod { path, mode } => self.chmod(&self.at(path), *mode, faulty),
            Op::Utimens { path, secs, nanos } => {
                self.utimens(&self.at(path), *secs, *nanos, faulty)
            }
            Op::Unlink { path } => self.unlink(&self.at(path), false, faulty),
            Op::Link { from, to } => self.link(&self.at(from), &self.at(to), faulty),
            Op::Rmdir { path } => self.unlink(&self.at(path), true, faulty),
            Op::Read { path, offset, len } => self.read(&self.at(path), *offset, *len, faulty),
            Op::Remount => self.remount(),
            Op::Crash => self.crash(),
            Op::SecondMount => self.second_mount(),
            Op::Faulty { faults, op } => {
                let store = &self.a.as_ref().expect("mounted").store;
                for f in faults {
                    store.arm(*f);
                }
                // Parts upload in the background: a fault may hit any open file.
                self.model.taint_all();
                self.step(op, true)
            }
        }
    }

    /// The open handle `h` picks, if any is open.
    fn pick(&self, h: &Index) -> Option<usize> {
        let n = self.model.handles.len();
        (n > 0).then(|| h.index(n))
    }

    fn create(&mut self, path: &str, mode: u32, faulty: bool) -> R<()> {
        if self.model.handles.len() >= 4 {
            return Ok(());
        }
        let exp = loosen(self.model.expect_add(path), faulty);
        let got = self.parent(path).and_then(|p| {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            errno(
                self.a()
                    .create(p, OsStr::new(name_of(path)), mode, flags, 0, self.caller()),
            )
        });
        if check("create", exp, &got)? {
            let (attr, fh) = got.map_err(|e| e.to_string())?;
            let mark = self.ledger.mark();
            self.model.open_new(fh, attr.ino, path, mode, mark);
        }
        Ok(())
    }

    fn open(&mut self, path: &str, trunc: bool, faulty: bool) -> R<()> {
        if self.model.handles.len() >= 4 {
            return Ok(());
        }
        let exp = match self.model.find(path) {
            Err(e) => Exp::Err(e),
            Ok(Found::Writing) => Exp::Err(libc::EBUSY),
            Ok(Found::Node(n)) => match n.what {
                What::Dir => Exp::Err(libc::EISDIR),
                // The kernel follows symlinks; Fs never sees an open of one.
                What::Symlink(_) => return Ok(()),
                What::File(_) => Exp::Ok,
            },
        };
        let exp = loosen(exp, faulty);
        let flags = if trunc {
            libc::O_WRONLY | libc::O_TRUNC
        } else {
            libc::O_RDWR
        };
        let got = self
            .resolve(path)
            .and_then(|a| errno(self.a().open(a.ino, flags, 0)).map(|(fh, _)| (a.ino, fh)));
        if check("open", exp, &got)? {
            let (ino, fh) = got.map_err(|e| e.to_string())?;
            let mark = self.ledger.mark();
            self.model.open_existing(fh, ino, path, trunc, mark);
        }
        Ok(())
    }

    fn write(&mut self, h: &Index, at: &At, len: usize, seed: u8, faulty: bool) -> R<()> {
        let Some(i) = self.pick(h) else { return Ok(()) };
        let h = &self.model.handles[i];
        let offset = match at {
            At::End => h.buf.len(),
            At::Offset(o) => *o,
        };
        let data = pattern(offset, len, seed);
        let exp = loosen(self.model.expect_write(i, offset), faulty);
        let got = errno(self.a().write(h.fh, offset as u64, &data));
        if check("write", exp, &got)? {
            if got != Ok(len as u32) {
                return Err(format!("write returned {got:?}, not {len}"));
            }
            self.model.wrote(i, offset, &data);
        } else if got.is_err_and(|e| e != libc::EBUSY)
            && self.model.handles[i].state != HState::Poisoned
        {
            // EBUSY refused a new version; any other failure poisons.
            self.model.poison(i);
        }
        Ok(())
    }

    fn ftruncate(&mut self, h: &Index, size: usize, faulty: bool) -> R<()> {
        let Some(i) = self.pick(h) else { return Ok(()) };
        let h = &self.model.handles[i];
        let exp = loosen(self.model.expect_ftruncate(i, size), faulty);
        let set = SetAttr {
            size: Some(size as u64),
            ..SetAttr::default()
        };
        let got = errno(self.a().setattr(h.ino, Some(h.fh), set));
        if check("ftruncate", exp, &got)? {
            self.model.truncated(i, size);
        } else if got.is_err_and(|e| e != libc::EBUSY)
            && self.model.handles[i].state != HState::Poisoned
        {
            // EBUSY refused a new version; any other failure poisons.
            self.model.poison(i);
        }
        Ok(())
    }

    fn close(&mut self, i: usize, faulty: bool) -> R<()> {
        let mark = self.ledger.mark();
        self.close_since(i, faulty, mark)
    }

    /// close, counting as its own the objects written since `mark` (a failed
    /// fsync's object is the close's to settle) or since it opened (a read of
    /// what went up completes an object of it).
    fn close_since(&mut self, i: usize, faulty: bool, mark: usize) -> R<()> {
        let mark = mark.min(self.model.handles[i].mark);
        let fh = self.model.handles[i].fh;
        let exp = loosen(self.model.expect_close(i), faulty);
        let got = errno(self.a().flush(fh, 0));
        // release's answer reaches nobody (close(2) returned flush's).
        let _ = self.a().release(fh);
        let ok = check("close", exp, &got)?;
        let path = self.model.handles[i].path.clone();
        let own = self.ledger.written_since(mark).contains(&path);
        self.model.closed(i, ok, own);
        Ok(())
    }

    fn fsync(&mut self, h: &Index, faulty: bool) -> R<()> {
        let Some(i) = self.pick(h) else { return Ok(()) };
        let fh = self.model.handles[i].fh;
        let exp = loosen(self.model.expect_fsync(i), faulty);
        let mark = self.ledger.mark();
        let got = errno(self.a().fsync(fh));
        if check("fsync", exp, &got)? {
            self.model.fsynced(i);
        } else if self.model.handles[i].state != HState::Poisoned {
            // What a failed fsync left is for the close to settle: the bytes are
            // stored (close succeeds) or the previous version stands (it fails).
            // An object the fsync stored under the path's own key stays in the
            // coffer either way, like one a close stores there.
            self.close_since(i, true, mark)?;
        }
        Ok(())
    }

    fn truncate(&mut self, path: &str, size: usize, faulty: bool) -> R<()> {
        let exp = match self.model.stored(path) {
            Err(libc::EBUSY) => return Ok(()),
            Err(e) => Exp::Err(e),
            Ok(n) => match n.what {
                What::Dir => Exp::Err(libc::EISDIR),
                What::Symlink(_) => return Ok(()),
                What::File(_) => Exp::Ok,
            },
        };
        let exp = loosen(exp, faulty);
        let set = SetAttr {
            size: Some(size as u64),
            ..SetAttr::default()
        };
        let got = self
            .resolve(path)
            .and_then(|a| errno(self.a().setattr(a.ino, None, set)));
        if check("truncate", exp, &got)? {
            self.model.truncated_path(path, size);
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str, noreplace: bool, faulty: bool) -> R<()> {
        let exp = loosen(self.model.expect_rename(from, to, noreplace), faulty);
        let got = self.parent(from).and_then(|p| {
            let np = self.parent(to)?;
            errno(self.a().rename(
                p,
                OsStr::new(name_of(from)),
                np,
                OsStr::new(name_of(to)),
                noreplace,
            ))
        });
        if check("rename", exp, &got)? {
            self.model.renamed(from, to);
        }
        Ok(())
    }

    fn link(&mut self, from: &str, to: &str, faulty: bool) -> R<()> {
        let exp = loosen(self.model.expect_link(from, to), faulty);
        let got = self.resolve(from).and_then(|a| {
            let np = self.parent(to)?;
            errno(self.a().link(a.ino, np, OsStr::new(name_of(to))))
        });
        if check("link", exp, &got)? {
            self.model.linked(from, to);
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &str, mode: u32, faulty: bool) -> R<()> {
        let exp = loosen(self.model.expect_add(path), faulty);
        let got = self.parent(path).and_then(|p| {
            errno(
                self.a()
                    .mkdir(p, OsStr::new(name_of(path)), mode, self.caller()),
            )
        });
        if check("mkdir", exp, &got)? {
            self.model.added(path, What::Dir, mode);
        }
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str, faulty: bool) -> R<()> {
        let exp = loosen(self.model.expect_add(path), faulty);
        let got = self.parent(path).and_then(|p| {
            errno(self.a().symlink(
                p,
                OsStr::new(name_of(path)),
                std::path::Path::new(target),
                self.caller(),
            ))
        });
        if check("symlink", exp, &got)? {
            self.model
                .added(path, What::Symlink(target.to_string()), 0o777);
        }
        Ok(())
    }

    /// The node setattr may change: skipped for files being written (their
    /// attributes follow the writer) and, for chmod, symlinks (the kernel
    /// follows them).
    fn settable(&self, path: &str, symlinks: bool) -> Option<Exp> {
        match self.model.stored(path) {
            Err(libc::EBUSY) => None,
            Err(e) => Some(Exp::Err(e)),
            Ok(n) if !symlinks && matches!(n.what, What::Symlink(_)) => None,
            Ok(_) => Some(Exp::Ok),
        }
    }

    fn chmod(&mut self, path: &str, mode: u32, faulty: bool) -> R<()> {
        let set = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        if self.setattr_path("chmod", path, false, set, faulty)? {
            self.model.chmodded(path, mode);
        }
        Ok(())
    }

    fn utimens(&mut self, path: &str, secs: u64, nanos: u32, faulty: bool) -> R<()> {
        let t = UNIX_EPOCH + Duration::new(secs, nanos);
        let set = SetAttr {
            mtime: Some(t),
            ..SetAttr::default()
        };
        if self.setattr_path("utimens", path, true, set, faulty)? {
            self.model.utimensed(path, t);
        }
        Ok(())
    }

    /// setattr by path (no handle), checked against the model; whether it
    /// took effect. `symlinks`: as `settable` takes it.
    fn setattr_path(
        &mut self,
        what: &str,
        path: &str,
        symlinks: bool,
        set: SetAttr,
        faulty: bool,
    ) -> R<bool> {
        let Some(exp) = self.settable(path, symlinks) else {
            return Ok(false);
        };
        let got = self
            .resolve(path)
            .and_then(|a| errno(self.a().setattr(a.ino, None, set)));
        check(what, loosen(exp, faulty), &got)
    }

    fn unlink(&mut self, path: &str, dir: bool, faulty: bool) -> R<()> {
        let exp = if dir {
            self.model.expect_rmdir(path)
        } else {
            self.model.expect_unlink(path)
        };
        let got = self.parent(path).and_then(|p| {
            let name = OsStr::new(name_of(path));
            errno(if dir {
                self.a().rmdir(p, name)
            } else {
                self.a().unlink(p, name)
            })
        });
        if check(
            if dir { "rmdir" } else { "unlink" },
            loosen(exp, faulty),
            &got,
        )? {
            self.model.removed(path);
        }
        Ok(())
    }

    fn read(&mut self, path: &str, offset: usize, len: usize, faulty: bool) -> R<()> {
        let writer = self
            .model
            .handles
            .iter()
            .position(|h| h.live() && self.model.names(h).contains(&path));
        let (exp, want) = match self.model.stored(path) {
            // A file being written reads through its writer.
            Err(libc::EBUSY) => {
                let h = &self.model.handles[writer.unwrap_or_default()];
                let end = (offset + len).min(h.buf.len());
                let exp = if h.tainted { Exp::Either } else { Exp::Ok };
                (exp, Bytes::from(h.buf[offset.min(end)..end].to_vec()))
            }
            Err(e) => (Exp::Err(e), Bytes::new()),
            Ok(n) => match &n.what {
                What::Dir => (Exp::Err(libc::EISDIR), Bytes::new()),
                What::Symlink(_) => return Ok(()),
                What::File(b) => {
                    let end = (offset + len).min(b.len());
                    (Exp::Ok, b.slice(offset.min(end)..end))
                }
            },
        };
        let fs = Arc::clone(self.a());
        let got = self.resolve(path).and_then(|a| {
            let (fh, _) = errno(fs.open(a.ino, libc::O_RDONLY, 0))?;
            let r = errno(fs.read(fh, offset as u64, len as u32));
            let _ = fs.release(fh);
            r
        });
        let ok = check("read", loosen(exp, faulty), &got)?;
        if let (false, Some(i)) = (ok, writer) {
            // The read completed what went up, and that failed: the writer is poisoned.
            if got.is_err() {
                self.model.poison(i);
            }
        }
        if ok {
            let got = got.map_err(|e| e.to_string())?;
            if got != want {
                return Err(format!(
                    "read {path:?} at {offset}: got {} bytes, want {} (first difference at {:?})",
                    got.len(),
                    want.len(),
                    got.iter().zip(want.iter()).position(|(a, b)| a != b)
                ));
            }
        }
        Ok(())
    }

    // ---- mounts -------------------------------------------------------------

    fn end_second(&mut self) {
        if let Some(b) = self.b.take() {
            b.fs.shutdown();
        }
    }

    /// Unmount (closing what is open, as the kernel does) and mount again:
    /// everything shows as before, times to the nanosecond.
    fn remount(&mut self) -> R<()> {
        while !self.model.handles.is_empty() {
            self.close(0, false)?;
        }
        self.end_second();
        if let Some(a) = self.a.take() {
            a.fs.shutdown();
        }
        self.a = Some(self.mount()?);
        let seen = walk(self.a())?;
        let want = self
            .model
            .tree
            .iter()
            .map(|(p, n)| (p.clone(), Want::Node(n.clone())))
            .collect();
        compare(&want, &seen, self.started).map_err(|e| format!("after remount: {e}"))?;
        let tree = self.model.tree.clone();
        self.model.reset(tree);
        Ok(())
    }

    /// The mount dies (no unmount): open writers are lost, and so may be the
    /// metadata of the last second, but never what close or fsync acknowledged.
    fn crash(&mut self) -> R<()> {
        self.end_second();
        if let Some(a) = self.a.take() {
            a.store.kill();
            a.fs.crash();
        }
        self.a = Some(self.mount()?);
        let seen = walk(self.a())?;
        let mut why = Vec::new();
        for (k, snap) in self.model.snaps.iter().rev() {
            let extra = |p: &str, s: &Seen| self.own_extra(p, s, &seen);
            let want = snap
                .iter()
                .map(|(p, n)| (p.clone(), Want::Node(n.clone())))
                .collect();
            match compare_with(&want, &seen, self.started, &extra) {
                Ok(()) => {
                    count(format!(
                        "crash left a view {} steps old",
                        self.model.step() - k
                    ));
                    let tree = adopt(snap, &seen);
                    self.model.reset(tree);
                    return Ok(());
                }
                Err(e) => why.push(format!("view after step {k}: {e}")),
            }
        }
        Err(format!(
            "after crash the mount matches no view a crash may leave (newest first):\n  {}",
            why.join("\n  ")
        ))
    }

    /// After a crash, an entry the view of step `k` lacks may show anyway when
    /// it is an object stored under its own key with no record yet (or a directory
    /// holding only such).
    fn own_extra(&self, path: &str, s: &Seen, seen: &BTreeMap<String, Seen>) -> bool {
        match &s.what {
            SeenWhat::File(b) => self
                .model
                .own
                .iter()
                .any(|(p, bytes)| p == path && bytes == b),
            SeenWhat::Dir => {
                let mut below = seen
                    .iter()
                    .filter(|(p, _)| p.strip_prefix(path).is_some_and(|r| r.starts_with('/')))
                    .peekable();
                below.peek().is_some() && below.all(|(p, s)| self.own_extra(p, s, seen))
            }
            _ => false,
        }
    }

    /// A second mount of the same coffer, after the first stored its metadata
    /// and the second re-read the journal, shows the same stored tree.
    fn second_mount(&mut self) -> R<()> {
        check("sync_metadata", Exp::Ok, &errno(self.a().sync_metadata()))?;
        self.model.durable_after_step = true;
        match &self.b {
            Some(b) => b.fs.reload_journal(),
            None => self.b = Some(self.mount()?),
        }
        let b = &self.b.as_ref().expect("second mount").fs;
        let seen = walk(b)?;
        let want = self
            .model
            .tree
            .iter()
            .map(|(p, n)| (p.clone(), Want::Node(n.clone())))
            .collect();
        compare(&want, &seen, self.started).map_err(|e| format!("second mount differs: {e}"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Open writers would only be finished by shutdown; drop them first.
        if let Some(a) = &self.a {
            for h in &self.model.handles {
                let _ = a.fs.release(h.fh);
            }
        }
        self.end_second();
        if let Some(a) = self.a.take() {
            a.fs.shutdown();
        }
    }
}

// ---- walking and comparing ----------------------------------------------------

/// Everything `fs` shows, read through readdir, lookup, getattr, readlink and
/// open/read/release.
fn walk(fs: &Fs) -> R<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    match fs.lookup(ROOT, OsStr::new(".cofferfs")) {
        Err(e) if e.errno == libc::ENOENT => {}
        other => return Err(format!("lookup .cofferfs: {other:?}, want ENOENT")),
    }
    let mut dirs = vec![(ROOT, String::new())];
    while let Some((ino, dir)) = dirs.pop() {
        let fh = fs
            .opendir(ino)
            .map_err(|e| format!("opendir {dir:?}: {e}"))?;
        let mut entries = Vec::new();
        let r = fs.readdir(fh, 0, |e, _| {
            entries.push(e.clone());
            false
        });
        fs.releasedir(fh);
        r.map_err(|e| format!("readdir {dir:?}: {e}"))?;
        for e in entries {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if path == ".cofferfs" {
                return Err("readdir of the root lists .cofferfs".into());
            }
            let a = fs
                .lookup(ino, OsStr::new(&e.name))
                .map_err(|err| format!("lookup {path:?} (listed by readdir): {err}"))?;
            let g = fs
                .getattr(a.ino)
                .map_err(|err| format!("getattr {path:?}: {err}"))?;
            if a.kind != e.kind || g.kind != a.kind || g.size != a.size {
                return Err(format!(
                    "{path:?}: readdir says {:?}, lookup {a:?}, getattr {g:?}",
                    e.kind
                ));
            }
            let what = match a.kind {
                Kind::Dir => {
                    dirs.push((a.ino, path.clone()));
                    SeenWhat::Dir
                }
                Kind::Symlink => SeenWhat::Symlink(
                    fs.readlink(a.ino)
                        .map_err(|err| format!("readlink {path:?}: {err}"))?,
                ),
                Kind::Special { .. } => {
                    return Err(format!(
                        "{path:?}: a special file, which the model never makes"
                    ))
                }
                Kind::File => match fs.open(a.ino, libc::O_RDONLY, 0) {
                    Err(err) => return Err(format!("open {path:?}: {err}")),
                    Ok((fh, _)) => {
                        let r = read_all(fs, fh, a.size);
                        let _ = fs.release(fh);
                        match r {
                            Ok(b) => SeenWhat::File(b),
                            Err(e) => SeenWhat::Unreadable(e),
                        }
                    }
                },
            };
            out.insert(
                path,
                Seen {
                    what,
                    perm: u32::from(a.perm),
                    mtime: a.mtime,
                    size: a.size,
                },
            );
        }
    }
    Ok(out)
}

/// The whole file, or the errno of the read that failed.
fn read_all(fs: &Fs, fh: u64, size: u64) -> Result<Bytes, i32> {
    let mut out = Vec::with_capacity(size as usize);
    loop {
        let got = fs
            .read(fh, out.len() as u64, 1 << 20)
            .map_err(|e| e.errno)?;
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
        if out.len() as u64 > size + (4 << 20) {
            // Reads past the size never end.
            return Err(libc::EOVERFLOW);
        }
    }
    Ok(Bytes::from(out))
}

fn compare(
    want: &BTreeMap<String, Want>,
    seen: &BTreeMap<String, Seen>,
    started: SystemTime,
) -> R<()> {
    compare_with(want, seen, started, &|_, _| false)
}

/// Whether `t` is a time this test could have set by writing (not 1970, not
/// the future).
fn plausible(t: SystemTime, started: SystemTime) -> bool {
    t + Duration::from_secs(2) >= started && t <= SystemTime::now() + Duration::from_secs(2)
}

fn mtime_ok(m: MTime, t: SystemTime, started: SystemTime) -> bool {
    match m {
        MTime::Pinned(p) => p == t,
        MTime::Fresh => plausible(t, started),
        MTime::FreshOr(p) => p == t || plausible(t, started),
        MTime::Any => true,
    }
}

/// Compares a walk with the model. `extra` may excuse entries the model lacks.
fn compare_with(
    want: &BTreeMap<String, Want>,
    seen: &BTreeMap<String, Seen>,
    started: SystemTime,
    extra: &dyn Fn(&str, &Seen) -> bool,
) -> R<()> {
    let mut diffs = Vec::new();
    for (p, w) in want {
        let Some(s) = seen.get(p) else {
            diffs.push(format!("{p:?} missing (want {})", show_want(w)));
            continue;
        };
        match w {
            Want::Writing {
                data,
                mode,
                tainted,
            } => {
                let same = match &s.what {
                    SeenWhat::File(b) => b == data,
                    SeenWhat::Unreadable(_) => *tainted,
                    _ => false,
                };
                if !same || s.size != data.len() as u64 || s.perm != *mode {
                    diffs.push(format!(
                        "{p:?} is being written ({}, mode {mode:o}): seen {}",
                        show_bytes(data),
                        show_seen(s)
                    ));
                }
            }
            Want::Node(n) => {
                let same = match (&n.what, &s.what) {
                    (What::File(a), SeenWhat::File(b)) => a == b && s.size == a.len() as u64,
                    (What::Dir, SeenWhat::Dir) => true,
                    (What::Symlink(a), SeenWhat::Symlink(b)) => a == b,
                    _ => false,
                };
                if !same {
                    diffs.push(format!(
                        "{p:?}: want {}, seen {}",
                        show_want(w),
                        show_seen(s)
                    ));
                    continue;
                }
                if s.perm != n.mode {
                    diffs.push(format!("{p:?}: mode {:o}, want {:o}", s.perm, n.mode));
                }
                if !mtime_ok(n.mtime, s.mtime, started) {
                    diffs.push(format!(
                        "{p:?}: mtime {}, want {}",
                        fmt_time(s.mtime),
                        match n.mtime {
                            MTime::Pinned(t) => fmt_time(t),
                            MTime::FreshOr(t) =>
                                format!("{} or a time during the test", fmt_time(t)),
                            _ => "a time during the test".into(),
                        }
                    ));
                }
            }
        }
    }
    for (p, s) in seen {
        if !want.contains_key(p) && !extra(p, s) {
            diffs.push(format!("{p:?} should not exist: seen {}", show_seen(s)));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

fn show_bytes(b: &[u8]) -> String {
    format!(
        "{} bytes (md5 {})",
        b.len(),
        cofferfs::protocol::hex(&cofferfs::protocol::md5(b))
    )
}

fn show_want(w: &Want) -> String {
    match w {
        Want::Writing { data, .. } => format!("a file being written ({})", show_bytes(data)),
        Want::Node(n) => match &n.what {
            What::File(b) => format!("file of {}", show_bytes(b)),
            What::Dir => "directory".into(),
            What::Symlink(t) => format!("symlink to {t:?}"),
        },
    }
}

fn show_seen(s: &Seen) -> String {
    let what = match &s.what {
        SeenWhat::File(b) => format!("file of {}", show_bytes(b)),
        SeenWhat::Unreadable(e) => format!("a file of {} bytes whose read fails ({e})", s.size),
        SeenWhat::Dir => "directory".into(),
        SeenWhat::Symlink(t) => format!("symlink to {t:?}"),
    };
    format!("{what}, mode {:o}, mtime {}", s.perm, fmt_time(s.mtime))
}

/// Once seen, a time must stay what it is.
fn pin(tree: &mut Tree, seen: &BTreeMap<String, Seen>) {
    for (p, n) in tree.iter_mut() {
        if let (Some(s), MTime::Fresh | MTime::FreshOr(_)) = (seen.get(p), n.mtime) {
            n.mtime = MTime::Pinned(s.mtime);
        }
    }
}

/// The model's tree after a crash left `seen`, which matched `snap` plus
/// objects stored under their own keys.
fn adopt(snap: &Tree, seen: &BTreeMap<String, Seen>) -> Tree {
    seen.iter()
        .map(|(p, s)| {
            let n = snap.get(p).cloned().unwrap_or_else(|| Node {
                what: match &s.what {
                    SeenWhat::File(b) => What::File(b.clone()),
                    SeenWhat::Symlink(t) => What::Symlink(t.clone()),
                    _ => What::Dir,
                },
                mode: s.perm,
                link: None,
                mtime: match s.what {
                    // A directory only implied by objects has no time of its own.
                    SeenWhat::Dir => MTime::Any,
                    _ => MTime::Pinned(s.mtime),
                },
            });
            (p.clone(), n)
        })
        .collect()
}
